//! `guardctl logs [filters] [--follow] [--json]` and `guardctl logs verify`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use guard_daemon::{
    api::{LogsRequest, Request},
    journal::{self, Record},
};

use super::{connect, describe, fail};
use crate::{Cli, EXIT_GUARD, EXIT_USAGE};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LogsArgs {
    #[command(subcommand)]
    cmd: Option<LogsCmd>,
    /// Agent id or name.
    #[arg(long)]
    agent: Option<String>,
    /// network, dns, file, exec, syscall, lifecycle, policy or gap.
    #[arg(long)]
    kind: Option<String>,
    /// denied, allowed or audit.
    #[arg(long)]
    verdict: Option<String>,
    /// RFC 3339 time or a duration back from now (30s, 10m, 2h, 1d).
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    until: Option<String>,
    #[arg(long)]
    pid: Option<u32>,
    /// Substring of the target (address, path, program).
    #[arg(long)]
    target: Option<String>,
    /// Only the newest N records.
    #[arg(long, short = 'n')]
    limit: Option<usize>,
    /// Keep printing new records as they are journaled.
    #[arg(long, short = 'f')]
    follow: bool,
    /// One JSON record per line (exact; untrusted text unescaped).
    #[arg(long, conflicts_with = "ocsf")]
    json: bool,
    /// One OCSF 1.3 event per line (mapping in docs/journal.md).
    #[arg(long)]
    ocsf: bool,
}

#[derive(Subcommand, Debug)]
enum LogsCmd {
    /// Check the journal's hash chain and checkpoints (reads the file
    /// directly; needs read access to it).
    Verify {
        #[arg(long, default_value = "/var/lib/guard/journal.db")]
        journal: PathBuf,
    },
}

pub fn run(cli: &Cli, args: &LogsArgs) -> i32 {
    if let Some(LogsCmd::Verify { journal }) = &args.cmd {
        return verify(journal);
    }
    let mut conn = match connect(&cli.socket) {
        Ok(c) => c,
        Err(e) => {
            fail(e);
            return EXIT_GUARD;
        }
    };
    let req = Request::Logs(LogsRequest {
        agent: args.agent.clone(),
        kind: args.kind.clone(),
        verdict: args.verdict.clone(),
        since: args.since.clone(),
        until: args.until.clone(),
        pid: args.pid,
        target: args.target.clone(),
        follow: args.follow,
        limit: args.limit,
    });
    let line = match guard_daemon::api::encode_request(1, &req) {
        Ok(l) => l,
        Err(e) => {
            fail(e);
            return EXIT_GUARD;
        }
    };
    if let Err(e) = conn.send(&line) {
        fail(e);
        return EXIT_GUARD;
    }
    let mut header = !args.json && !args.ocsf;
    loop {
        let line = match conn.read_line() {
            Ok(Some(l)) => l,
            Ok(None) => return if args.follow { 0 } else { EXIT_GUARD },
            Err(e) => {
                fail(describe(&e));
                return EXIT_GUARD;
            }
        };
        let map = match guard_daemon::api::parse_response(&line) {
            Ok(m) => m,
            Err(e) => {
                fail(describe(&e));
                return if matches!(e, guard_daemon::api::ApiError::Remote { ref code, .. } if code == "bad_request")
                {
                    EXIT_USAGE
                } else {
                    EXIT_GUARD
                };
            }
        };
        if map.get("done").and_then(|v| v.as_bool()) == Some(true) {
            return 0;
        }
        if let Some(gap) = map.get("gap") {
            // Records the follower could not deliver: say so where a person
            // or a pipeline sees it, with where to pick up again.
            eprintln!(
                "guardctl: warning: records after seq {} were not delivered ({}); query them again with `guardctl logs`",
                gap.get("after_seq").and_then(|v| v.as_u64()).unwrap_or(0),
                gap.get("why")
                    .and_then(|v| v.as_str())
                    .unwrap_or("unknown reason"),
            );
            continue;
        }
        let Some(value) = map.get("record") else {
            continue;
        };
        // Bidi and C1 characters stay in the JSON as `\uXXXX` escapes: the
        // same value for a parser, no reordered line on a terminal.
        if args.json {
            println!(
                "{}",
                journal::to_safe_json(value).unwrap_or_else(|_| value.to_string())
            );
            continue;
        }
        let rec = match serde_json::from_value::<Record>(value.clone()) {
            Ok(rec) => rec,
            Err(e) => {
                // Said, not skipped: a record this guardctl cannot read is
                // still a record.
                eprintln!(
                    "guardctl: warning: record seq {} cannot be shown ({}); see it with --json",
                    value.get("seq").and_then(|v| v.as_u64()).unwrap_or(0),
                    journal::escape_str(&e.to_string()),
                );
                continue;
            }
        };
        if args.ocsf {
            let ev = journal::ocsf::to_ocsf(&rec);
            println!(
                "{}",
                journal::to_safe_json(&ev).unwrap_or_else(|_| ev.to_string())
            );
            continue;
        }
        if header {
            println!("{}", journal::human::table_header());
            header = false;
        }
        println!("{}", journal::human::table_row(&rec));
    }
}

fn verify(path: &PathBuf) -> i32 {
    match journal::verify(path) {
        Ok(report) => {
            if report.ok {
                println!(
                    "journal {}: intact — {} records, chain head {}{}",
                    path.display(),
                    report.records,
                    report.head_seq,
                    report
                        .checkpoint_seq
                        .map(|c| format!(", newest checkpoint {c}"))
                        .unwrap_or_default()
                );
                0
            } else {
                let problem = report
                    .first_problem
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "unknown problem".into());
                println!("journal {}: NOT intact — {problem}", path.display());
                1
            }
        }
        Err(e) => {
            fail(format!("{}: {e}", path.display()));
            EXIT_GUARD
        }
    }
}
