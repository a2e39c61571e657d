//! `guardctl kill|freeze|thaw AGENT`: the operator's kill switch.

use clap::Args;
use guard_daemon::api::{ControlAction, ControlRequest, Request};

use super::{connect, describe, fail};
use crate::{Cli, EXIT_GUARD};

#[derive(Args, Debug)]
pub struct ControlArgs {
    /// Agent id or name.
    agent: String,
    /// Why (recorded in the journal with who asked).
    #[arg(long)]
    reason: Option<String>,
}

pub fn run(cli: &Cli, args: &ControlArgs, action: ControlAction) -> i32 {
    let mut conn = match connect(&cli.socket) {
        Ok(c) => c,
        Err(e) => {
            fail(e);
            return EXIT_GUARD;
        }
    };
    let req = Request::Control(ControlRequest {
        agent: args.agent.clone(),
        action,
        reason: args.reason.clone(),
    });
    match conn.call(1, &req) {
        Ok(r) => {
            let verb = r.get("action").and_then(|v| v.as_str()).unwrap_or("done");
            let n = r.get("processes").and_then(|v| v.as_u64()).unwrap_or(0);
            eprintln!("guardctl: {verb}: agent {} ({n} processes)", args.agent);
            0
        }
        Err(e) => {
            fail(describe(&e));
            if matches!(e, guard_daemon::api::ApiError::Remote { ref code, .. } if code == guard_daemon::api::code::NOT_FOUND)
            {
                1
            } else {
                EXIT_GUARD
            }
        }
    }
}
