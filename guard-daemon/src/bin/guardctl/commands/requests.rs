//! `guardctl requests [--agent ID|NAME] [--follow] [--json] [--journal FILE]`:
//! the queue a person works through — what agents tried outside their
//! scope, grouped by agent and target, and what they asked for on purpose.
//!
//! Computed here from guardd's `logs` stream, so who sees what is exactly
//! what `guardctl logs` shows them; the grouping itself is
//! `journal::requests`.

use std::io::{self, Write};
use std::path::Path;
use std::time::SystemTime;

use clap::Args;
use guard_daemon::{
    api::{self, LineConn, LogsRequest, Request},
    journal::{
        self, JournalError, Record, Store,
        requests::{Group, Grouper, table_header, table_row},
    },
};

use super::{connect, describe, fail};
use crate::{Cli, EXIT_GUARD, EXIT_USAGE};

#[derive(Args, Debug)]
pub struct RequestsArgs {
    /// Agent id, unambiguous id prefix, or name.
    #[arg(long)]
    agent: Option<String>,
    /// Only what happened since: RFC 3339 time or a duration back from now
    /// (30s, 10m, 2h, 1d).
    #[arg(long)]
    since: Option<String>,
    /// Keep printing groups as they appear or grow (one line per change).
    #[arg(long, short = 'f', conflicts_with = "journal")]
    follow: bool,
    /// One JSON object per group and line (untrusted text exact).
    #[arg(long)]
    json: bool,
    /// Read this journal file directly, read-only, instead of asking guardd.
    #[arg(long)]
    journal: Option<std::path::PathBuf>,
}

/// Prints groups, the table's header once.
struct Printer {
    out: io::StdoutLock<'static>,
    json: bool,
    header: bool,
}

impl Printer {
    fn group(&mut self, g: &Group) -> io::Result<()> {
        if self.json {
            let v = serde_json::to_value(g).map_err(io::Error::other)?;
            let line = journal::to_safe_json(&v).unwrap_or_else(|_| v.to_string());
            return writeln!(self.out, "{line}");
        }
        if self.header {
            writeln!(self.out, "{}", table_header())?;
            self.header = false;
        }
        writeln!(self.out, "{}", table_row(g))
    }
}

/// A closed pipe (`| head`) ends the listing normally.
fn out_failed(e: &io::Error) -> i32 {
    if e.kind() == io::ErrorKind::BrokenPipe {
        0
    } else {
        fail(format!("writing output: {e}"));
        EXIT_GUARD
    }
}

pub fn run(cli: &Cli, args: &RequestsArgs) -> i32 {
    let mut printer = Printer {
        out: io::stdout().lock(),
        json: args.json,
        header: !args.json,
    };
    let mut grouper = Grouper::new();
    if let Some(path) = &args.journal {
        return offline(path, args, &mut grouper, &mut printer);
    }
    let request = LogsRequest {
        agent: args.agent.clone(),
        since: args.since.clone(),
        ..Default::default()
    };
    // The journal so far, grouped whole, then (with --follow) every record
    // after it, each change printed as it comes.
    let last = match stream(cli, &request, 0, |rec| {
        grouper.add(rec);
        Ok(())
    }) {
        Ok(last) => last,
        Err(code) => return code,
    };
    for g in grouper.groups() {
        if let Err(e) = printer.group(g) {
            return out_failed(&e);
        }
    }
    if let Err(e) = printer.out.flush() {
        return out_failed(&e);
    }
    if !args.follow {
        return 0;
    }
    let follow = LogsRequest {
        follow: true,
        ..request
    };
    match stream(cli, &follow, last, |rec| {
        if let Some(g) = grouper.add(rec) {
            printer.group(g)?;
            printer.out.flush()?;
        }
        Ok(())
    }) {
        Ok(_) => 0,
        Err(code) => code,
    }
}

/// Streams guardd's records for `req` with a seq above `after` into `each`;
/// the newest seq seen, or the exit code to leave with.
fn stream(
    cli: &Cli,
    req: &LogsRequest,
    after: u64,
    mut each: impl FnMut(&Record) -> io::Result<()>,
) -> Result<u64, i32> {
    let mut conn: LineConn = connect(&cli.socket).map_err(|e| {
        fail(e);
        EXIT_GUARD
    })?;
    let line = api::encode_request(1, &Request::Logs(req.clone())).map_err(|e| {
        fail(e);
        EXIT_GUARD
    })?;
    conn.send(&line).map_err(|e| {
        fail(e);
        EXIT_GUARD
    })?;
    let mut last = after;
    loop {
        let line = match conn.read_line() {
            Ok(Some(l)) => l,
            Ok(None) => {
                return if req.follow {
                    Ok(last)
                } else {
                    Err(EXIT_GUARD)
                };
            }
            Err(e) => {
                fail(describe(&e));
                return Err(EXIT_GUARD);
            }
        };
        let map = match api::parse_response(&line) {
            Ok(m) => m,
            Err(e) => {
                fail(describe(&e));
                let usage = matches!(&e, api::ApiError::Remote { code, .. }
                    if [api::code::BAD_REQUEST, api::code::NOT_FOUND, api::code::AMBIGUOUS]
                        .contains(&code.as_str()));
                return Err(if usage { EXIT_USAGE } else { EXIT_GUARD });
            }
        };
        if map.get("done").and_then(|v| v.as_bool()) == Some(true) {
            if let Some(note) = map.get("note").and_then(|v| v.as_str()) {
                eprintln!("guardctl: {}", journal::escape_str(note));
            }
            return Ok(last);
        }
        if let Some(gap) = map.get("gap") {
            eprintln!(
                "guardctl: warning: records after seq {} were not delivered ({}); counts may be short",
                gap.get("after_seq").and_then(|v| v.as_u64()).unwrap_or(0),
                journal::escape_str(gap.get("why").and_then(|v| v.as_str()).unwrap_or("unknown")),
            );
            continue;
        }
        let Some(value) = map.get("record") else {
            continue;
        };
        let rec: Record = match serde_json::from_value(value.clone()) {
            Ok(r) => r,
            Err(e) => {
                eprintln!(
                    "guardctl: warning: record seq {} cannot be read ({}); see it with guardctl logs --json",
                    value.get("seq").and_then(|v| v.as_u64()).unwrap_or(0),
                    journal::escape_str(&e.to_string()),
                );
                continue;
            }
        };
        // The follower's stream starts with records already grouped.
        if rec.seq <= last {
            continue;
        }
        last = rec.seq;
        if let Err(e) = each(&rec) {
            return Err(out_failed(&e));
        }
    }
}

/// `--journal FILE`: the same grouping over the file itself, read-only.
fn offline(path: &Path, args: &RequestsArgs, grouper: &mut Grouper, printer: &mut Printer) -> i32 {
    const PAGE: usize = 1000;
    let request = LogsRequest {
        agent: args.agent.clone(),
        since: args.since.clone(),
        ..Default::default()
    };
    let mut filter = match request.filter(SystemTime::now()) {
        Ok(f) => f,
        Err(e) => {
            fail(e);
            return EXIT_USAGE;
        }
    };
    let failed = |e: &JournalError| {
        fail(format!("{}: {}", path.display(), journal::error_chain(e)));
        EXIT_GUARD
    };
    let store = match Store::open_for_reading(path) {
        Ok(s) => s,
        Err(e) => return failed(&e),
    };
    if let Some(key) = &filter.agent {
        match store.resolve_agent(key) {
            Ok(id) => filter.agent = Some(id),
            Err(e @ (JournalError::UnknownAgent { .. } | JournalError::AmbiguousAgent { .. })) => {
                fail(e);
                return EXIT_USAGE;
            }
            Err(e) => return failed(&e),
        }
    }
    filter.limit = Some(PAGE);
    loop {
        let recs = match store.query(&filter) {
            Ok(r) => r,
            Err(e) => return failed(&e),
        };
        for r in &recs {
            grouper.add(r);
        }
        match recs.last() {
            Some(last) if recs.len() == PAGE => filter.after_seq = Some(last.seq),
            _ => break,
        }
    }
    for g in grouper.groups() {
        if let Err(e) = printer.group(g) {
            return out_failed(&e);
        }
    }
    printer.out.flush().map_or_else(|e| out_failed(&e), |()| 0)
}
