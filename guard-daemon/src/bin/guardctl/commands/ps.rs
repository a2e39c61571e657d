//! `guardctl ps`: live agents.

use clap::Args;
use guard_daemon::api::{PsEntry, Request};

use super::{connect, describe, fail};
use crate::{Cli, EXIT_GUARD};

#[derive(Args, Debug)]
pub struct PsArgs {
    /// One JSON object per agent.
    #[arg(long)]
    json: bool,
}

pub fn run(cli: &Cli, args: &PsArgs) -> i32 {
    let mut conn = match connect(&cli.socket) {
        Ok(c) => c,
        Err(e) => {
            fail(e);
            return EXIT_GUARD;
        }
    };
    let reply = match conn.call(1, &Request::Ps(Default::default())) {
        Ok(r) => r,
        Err(e) => {
            fail(describe(&e));
            return EXIT_GUARD;
        }
    };
    let agents: Vec<PsEntry> = reply
        .get("agents")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    if args.json {
        for a in &agents {
            println!("{}", serde_json::to_string(a).unwrap_or_default());
        }
        return 0;
    }
    println!(
        "{:<14} {:<20} {:<20} {:<8} {:>8} {:>6} {:>9} {:>7} {:>7} STATE",
        "ID", "NAME", "POLICY", "MODE", "PID", "PROCS", "UPTIME", "DENIED", "AUDITED"
    );
    for a in &agents {
        println!(
            "{:<14} {:<20} {:<20} {:<8} {:>8} {:>6} {:>9} {:>7} {:>7} {}",
            a.id,
            guard_daemon::journal::escape_str(&a.name),
            guard_daemon::journal::escape_str(&a.policy),
            a.mode,
            a.main_pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            a.processes,
            uptime(a.uptime_secs),
            a.denied,
            a.audited,
            if a.frozen { "frozen" } else { "running" }
        );
    }
    0
}

fn uptime(s: u64) -> String {
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}
