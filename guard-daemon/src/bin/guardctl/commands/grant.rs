//! `guardctl grant AGENT --allow DEST [--for 15m] --reason TEXT`,
//! `guardctl grant --request N --reason TEXT`, `guardctl revoke AGENT N|--all`,
//! `guardctl grants [--agent A] [--json]`: time-boxed widenings of a live
//! agent's network scope, made by an operator, journaled, revocable.

use clap::Args;
use guard_daemon::api::{
    ApiError, GrantEntry, GrantRequest, GrantsRequest, Request, RevokeRequest, code,
};

use super::{connect, describe, fail};
use crate::{Cli, EXIT_GUARD, EXIT_USAGE};

#[derive(Args, Debug)]
pub struct GrantArgs {
    /// Agent id or name (with --request, the request's agent by default).
    agent: Option<String>,
    /// The destination, as in policy rules: `10.0.0.5:443/tcp`,
    /// `10.0.0.0/24:443,8000-8100`, `[2001:db8::1]:443/tcp`. Files and
    /// programs cannot be widened for a running agent: use `guardctl run
    /// --grant` at its next start.
    #[arg(long, value_name = "DEST", conflicts_with = "request")]
    allow: Option<String>,
    /// Approve request N of `guardctl requests` (its destination).
    #[arg(long, value_name = "N")]
    request: Option<u64>,
    /// How long (`90s`, `15m`, `2h`, `1d`; default 15m, at most 7d).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    for_secs: Option<u64>,
    /// Why (journaled with the grant and who made it).
    #[arg(long, required = true)]
    reason: String,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// Agent id or name.
    agent: String,
    /// The grant's number (`guardctl grants`).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    grant: Option<u64>,
    /// Every live grant of the agent.
    #[arg(long)]
    all: bool,
    /// Why (journaled).
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Args, Debug)]
pub struct GrantsArgs {
    /// Only this agent's grants.
    #[arg(long)]
    agent: Option<String>,
    /// One JSON object per grant.
    #[arg(long)]
    json: bool,
}

/// `90`, `90s`, `15m`, `2h`, `1d` as seconds.
fn parse_duration(s: &str) -> Result<u64, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit, such as 90s, 15m, 2h or 1d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?}: expected s, m, h or d"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: too long"))
}

fn exit_of(e: &ApiError) -> i32 {
    match e {
        ApiError::Remote { code: c, .. } if c == code::NOT_FOUND => 1,
        ApiError::Remote { code: c, .. } if c == code::BAD_REQUEST => EXIT_USAGE,
        _ => EXIT_GUARD,
    }
}

fn call(cli: &Cli, req: &Request) -> Result<serde_json::Map<String, serde_json::Value>, i32> {
    let mut conn = connect(&cli.socket).map_err(|e| {
        fail(e);
        EXIT_GUARD
    })?;
    conn.call(1, req).map_err(|e| {
        fail(describe(&e));
        exit_of(&e)
    })
}

pub fn grant(cli: &Cli, args: &GrantArgs) -> i32 {
    if args.allow.is_none() && args.request.is_none() {
        fail("give --allow DEST or --request N");
        return EXIT_USAGE;
    }
    let req = Request::Grant(GrantRequest {
        agent: args.agent.clone(),
        allow: args.allow.clone(),
        request: args.request,
        for_secs: args.for_secs,
        reason: args.reason.clone(),
    });
    match call(cli, &req) {
        Ok(r) => {
            match serde_json::from_value::<GrantEntry>(serde_json::Value::Object(r)) {
                Ok(g) => eprintln!(
                    "guardctl: granted {} to agent {} ({}) until {}: grant {} (guardctl revoke {} {})",
                    g.rule,
                    g.agent.id,
                    guard_daemon::journal::escape_str(&g.agent.name),
                    g.until,
                    g.grant,
                    g.agent.id,
                    g.grant
                ),
                Err(e) => eprintln!("guardctl: granted (the answer does not parse: {e})"),
            }
            0
        }
        Err(code) => code,
    }
}

pub fn revoke(cli: &Cli, args: &RevokeArgs) -> i32 {
    let req = Request::Revoke(RevokeRequest {
        agent: args.agent.clone(),
        grant: args.grant,
        all: args.all,
        reason: args.reason.clone(),
    });
    match call(cli, &req) {
        Ok(r) => {
            let n = r
                .get("revoked")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .unwrap_or(0);
            eprintln!("guardctl: revoked {n} grant(s) of agent {}", args.agent);
            0
        }
        Err(code) => code,
    }
}

pub fn grants(cli: &Cli, args: &GrantsArgs) -> i32 {
    let req = Request::Grants(GrantsRequest {
        agent: args.agent.clone(),
    });
    let r = match call(cli, &req) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let list: Vec<GrantEntry> = r
        .get("grants")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    if args.json {
        for g in &list {
            println!("{}", serde_json::to_string(g).unwrap_or_default());
        }
        return 0;
    }
    println!(
        "{:<14} {:<16} {:>5} {:<30} {:<27} REASON",
        "AGENT", "NAME", "GRANT", "RULE", "UNTIL"
    );
    for g in &list {
        println!(
            "{:<14} {:<16} {:>5} {:<30} {:<27} {}",
            g.agent.id,
            guard_daemon::journal::escape_str(&g.agent.name),
            g.grant,
            g.rule,
            g.until,
            guard_daemon::journal::escape_str(&g.reason)
        );
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("2h"), Ok(7200));
        assert_eq!(parse_duration("1d"), Ok(86400));
        assert!(parse_duration("15x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
