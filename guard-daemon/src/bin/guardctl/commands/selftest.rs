//! `guardctl selftest [--policy FILE] [--json] [--only NAME...] [--list]`:
//! the battery of escape attempts (`guard_daemon::selftest`), each a real
//! agent on this host; one line per attempt and a summary. Exit 0 when
//! every attempt held and was recorded, 1 when one escaped, went
//! unrecorded or could not be tested, 2 when selftest itself could not run.
//!
//! `guardctl selftest-probe ATTEMPT [ARGS]` (hidden) is the probe the
//! battery runs inside each scope.

use std::path::PathBuf;

use clap::Args;
use guard_daemon::{journal, selftest};

use super::fail;
use crate::Cli;

/// selftest itself could not run (no guardd, a policy the probe cannot run
/// under): distinct from 1, a wall that did not hold.
const EXIT_CANNOT_RUN: i32 = 2;

#[derive(Args, Debug)]
pub struct SelftestArgs {
    /// Confine the attempts by this policy instead of the default strict
    /// one (no network, files in a private work directory, exec of
    /// guardctl only, 8 processes).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// One JSON object per attempt, then the summary.
    #[arg(long)]
    json: bool,
    /// Only these attempts (names as `--list` prints them).
    #[arg(long, num_args = 1.., value_name = "NAME")]
    only: Vec<String>,
    /// List the attempts and exit.
    #[arg(long)]
    list: bool,
}

#[derive(Args, Debug)]
pub struct ProbeArgs {
    attempt: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(cli: &Cli, args: &SelftestArgs) -> i32 {
    if args.list {
        for a in selftest::BATTERY {
            println!(
                "{:<22} {:<9} {}",
                a.name,
                format!("{:?}", a.family).to_lowercase(),
                a.what
            );
        }
        return 0;
    }
    let guardctl = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            fail(format!("cannot find guardctl's own binary: {e}"));
            return EXIT_CANNOT_RUN;
        }
    };
    let opts = selftest::Options {
        guardctl,
        socket: cli.socket.clone(),
        policy: args.policy.clone(),
        only: args.only.clone(),
    };
    let json = args.json;
    let results = selftest::run(&opts, |r| {
        if json {
            println!("{}", journal::to_safe_json(r).unwrap_or_default());
        } else {
            println!("{}", r.line());
        }
    });
    match results {
        Ok(results) => {
            let summary = selftest::Summary::of(&results);
            if json {
                let v = serde_json::json!({"summary": summary, "passed": summary.passed()});
                println!("{}", journal::to_safe_json(&v).unwrap_or_default());
            } else {
                println!("{}", summary.line());
            }
            if summary.passed() { 0 } else { 1 }
        }
        Err(e) => {
            fail(format!("selftest could not run: {e}"));
            EXIT_CANNOT_RUN
        }
    }
}

pub fn probe(args: &ProbeArgs) -> i32 {
    let r = selftest::probe::run(&args.attempt, &args.args);
    println!("{}", serde_json::to_string(&r).unwrap_or_default());
    0
}
