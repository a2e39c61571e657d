//! `guardctl logs [filters] [--follow] [--json] [--journal FILE]`,
//! `guardctl logs verify` and `guardctl logs export`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use guard_daemon::{
    api::{self, LogsRequest, Request},
    journal::{self, ChainHead, JournalError, Record, Store},
};

use super::{connect, describe, fail};
use crate::{Cli, EXIT_GUARD, EXIT_USAGE};

/// Records read per query when reading a store directly, so memory stays
/// bounded however large the journal is.
const PAGE: usize = 1000;
const FOLLOW_POLL: Duration = Duration::from_millis(250);

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LogsArgs {
    #[command(subcommand)]
    cmd: Option<LogsCmd>,
    /// Agent id, unambiguous id prefix, or name.
    #[arg(long)]
    agent: Option<String>,
    /// network, dns, file, exec, syscall, lifecycle, policy, gap or escalation.
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
    /// Read this journal file directly, read-only, instead of asking guardd
    /// (an exported copy, or when guardd is down).
    #[arg(long)]
    journal: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum LogsCmd {
    /// Check the journal's hash chain and checkpoints (reads the file
    /// directly and read-only; needs read access to it).
    Verify {
        /// The store to check; default: the running guardd's journal, or
        /// /var/lib/guard/journal.db when guardd cannot be reached.
        #[arg(long)]
        journal: Option<PathBuf>,
        /// A chain head kept off this host, SEQ:HASH: the store must hold
        /// record SEQ with this hash (detects rollback). Repeatable.
        #[arg(long, value_name = "SEQ:HASH")]
        head: Vec<String>,
        /// A JSON-lines mirror kept off this host: its newest record must
        /// be in the store with the same hash. Repeatable.
        #[arg(long, value_name = "FILE")]
        mirror: Vec<PathBuf>,
    },
    /// Write a consistent, verifiable copy of the journal (store and
    /// checkpoint side file) to FILE and FILE.checkpoint; reads the journal
    /// read-only, while guardd runs or not.
    Export {
        /// Where to write the copy; must not exist.
        file: PathBuf,
        /// The store to copy; default: the running guardd's journal, or
        /// /var/lib/guard/journal.db when guardd cannot be reached.
        #[arg(long)]
        journal: Option<PathBuf>,
    },
}

/// The store `verify` and `export` read: the one named, else the one the
/// running guardd writes (it says in its hello), else the default path.
fn journal_of(cli: &Cli, named: &Option<PathBuf>) -> PathBuf {
    if let Some(p) = named {
        return p.clone();
    }
    let from_guardd = connect(&cli.socket).ok().and_then(|mut conn| {
        let reply = conn
            .call(1, &Request::Hello(guard_daemon::api::Empty {}))
            .ok()?;
        reply
            .get("journal")
            .and_then(serde_json::Value::as_str)
            .map(PathBuf::from)
    });
    from_guardd.unwrap_or_else(|| PathBuf::from(guard_daemon::journal::DEFAULT_PATH))
}

/// Why printing stopped early.
enum Stop {
    /// The reader went away (`| head`): a normal end.
    Closed,
    Failed(io::Error),
}

/// Standard output that treats a closed pipe as the end of the listing
/// instead of a panic.
struct Out {
    out: io::StdoutLock<'static>,
}

impl Out {
    fn new() -> Out {
        Out {
            out: io::stdout().lock(),
        }
    }

    fn line(&mut self, text: impl std::fmt::Display) -> Result<(), Stop> {
        writeln!(self.out, "{text}").map_err(stop)
    }

    fn flush(&mut self) -> Result<(), Stop> {
        self.out.flush().map_err(stop)
    }
}

fn stop(e: io::Error) -> Stop {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Stop::Closed
    } else {
        Stop::Failed(e)
    }
}

fn exit_of(s: Stop) -> i32 {
    match s {
        Stop::Closed => 0,
        Stop::Failed(e) => {
            fail(format!("writing output: {e}"));
            EXIT_GUARD
        }
    }
}

fn safe_json(value: &serde_json::Value) -> String {
    journal::to_safe_json(value).unwrap_or_else(|_| value.to_string())
}

/// Prints records in the chosen format.
struct Printer {
    out: Out,
    json: bool,
    ocsf: bool,
    header: bool,
}

impl Printer {
    fn new(args: &LogsArgs) -> Printer {
        Printer {
            out: Out::new(),
            json: args.json,
            ocsf: args.ocsf,
            header: !args.json && !args.ocsf,
        }
    }

    /// A record as received from guardd; `--json` prints it untouched.
    fn value(&mut self, value: &serde_json::Value) -> Result<(), Stop> {
        if self.json {
            // Bidi and C1 characters stay in the JSON as `\uXXXX` escapes:
            // the same value for a parser, no reordered line on a terminal.
            return self.out.line(safe_json(value));
        }
        match serde_json::from_value::<Record>(value.clone()) {
            Ok(rec) => self.record(&rec),
            Err(e) => {
                // Said, not skipped: a record this guardctl cannot read is
                // still a record.
                eprintln!(
                    "guardctl: warning: record seq {} cannot be shown ({}); see it with --json",
                    value.get("seq").and_then(|v| v.as_u64()).unwrap_or(0),
                    journal::escape_str(&e.to_string()),
                );
                Ok(())
            }
        }
    }

    fn record(&mut self, rec: &Record) -> Result<(), Stop> {
        if self.json {
            let value = serde_json::to_value(rec).map_err(|e| Stop::Failed(e.into()))?;
            return self.out.line(safe_json(&value));
        }
        if self.ocsf {
            return self.out.line(safe_json(&journal::ocsf::to_ocsf(rec)));
        }
        if self.header {
            self.out.line(journal::human::table_header())?;
            self.header = false;
        }
        self.out.line(journal::human::table_row(rec))
    }
}

pub fn run(cli: &Cli, args: &LogsArgs) -> i32 {
    match &args.cmd {
        Some(LogsCmd::Verify {
            journal,
            head,
            mirror,
        }) => return verify(&journal_of(cli, journal), head, mirror),
        Some(LogsCmd::Export { file, journal }) => {
            return export(&journal_of(cli, journal), file);
        }
        None => {}
    }
    if let Some(path) = &args.journal {
        return offline(path, args);
    }
    let mut conn = match connect(&cli.socket) {
        Ok(c) => c,
        Err(e) => {
            fail(e);
            return EXIT_GUARD;
        }
    };
    let req = Request::Logs(request_of(args));
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
    let mut printer = Printer::new(args);
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
                return if matches!(e, api::ApiError::Remote { ref code, .. } if [api::code::BAD_REQUEST, api::code::NOT_FOUND, api::code::AMBIGUOUS].contains(&code.as_str()))
                {
                    EXIT_USAGE
                } else {
                    EXIT_GUARD
                };
            }
        };
        if map.get("done").and_then(|v| v.as_bool()) == Some(true) {
            return printer.out.flush().map_or_else(exit_of, |()| 0);
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
        if let Err(s) = printer.value(value) {
            return exit_of(s);
        }
    }
}

/// The request `guardctl logs` sends guardd; read directly from a file,
/// the same request gives the same filter.
fn request_of(args: &LogsArgs) -> LogsRequest {
    LogsRequest {
        agent: args.agent.clone(),
        kind: args.kind.clone(),
        verdict: args.verdict.clone(),
        since: args.since.clone(),
        until: args.until.clone(),
        pid: args.pid,
        target: args.target.clone(),
        follow: args.follow,
        limit: args.limit,
    }
}

/// `guardctl logs --journal FILE`: the query guardd would run, against the
/// file itself, opened read-only.
fn offline(path: &Path, args: &LogsArgs) -> i32 {
    let mut filter = match request_of(args).filter(SystemTime::now()) {
        Ok(f) => f,
        Err(e) => {
            fail(e);
            return EXIT_USAGE;
        }
    };
    let store = match Store::open_for_reading(path) {
        Ok(s) => s,
        Err(e) => return journal_failed(path.display(), &e),
    };
    if let Some(key) = &filter.agent {
        match store.resolve_agent(key) {
            Ok(id) => filter.agent = Some(id),
            // A follower may name an agent that has not started yet.
            Err(JournalError::UnknownAgent { .. }) if args.follow => {}
            Err(e @ (JournalError::UnknownAgent { .. } | JournalError::AmbiguousAgent { .. })) => {
                fail(e);
                return EXIT_USAGE;
            }
            Err(e) => return journal_failed(path.display(), &e),
        }
    }
    let mut printer = Printer::new(args);
    let mut last = 0;
    let mut page = filter.clone();
    if !page.tail {
        page.limit = Some(PAGE);
    }
    let result = (|| -> Result<(), PrintError> {
        // Read before the query: every record up to it is committed, so the
        // query has seen all of them and a follower need not scan them again
        // when none matched.
        let head = newest(&store)?;
        loop {
            let recs = store.query(&page)?;
            for rec in &recs {
                last = rec.seq;
                printer.record(rec)?;
            }
            if page.tail || recs.len() < PAGE {
                break;
            }
            page.after_seq = Some(last);
        }
        last = last.max(head);
        printer.out.flush()?;
        if !args.follow {
            return Ok(());
        }
        drop(store);
        let mut follow = filter.clone();
        follow.limit = Some(PAGE);
        follow.tail = false;
        loop {
            std::thread::sleep(FOLLOW_POLL);
            // Reopened each time: a store without a WAL is read as an
            // immutable file, which would not show guardd starting on it.
            let store = Store::open_for_reading(path)?;
            let head = newest(&store)?;
            follow.after_seq = Some(last);
            let recs = store.query(&follow)?;
            for rec in &recs {
                last = rec.seq;
                printer.record(rec)?;
            }
            if recs.len() < PAGE {
                last = last.max(head);
            }
            printer.out.flush()?;
        }
    })();
    match result {
        Ok(()) => 0,
        Err(PrintError::Out(s)) => exit_of(s),
        Err(PrintError::Journal(e)) => journal_failed(path.display(), &e),
    }
}

/// The newest record's seq, 0 for an empty store.
fn newest(store: &Store) -> Result<u64, JournalError> {
    Ok(store.head()?.map_or(0, |h| h.seq))
}

enum PrintError {
    Out(Stop),
    Journal(JournalError),
}

impl From<Stop> for PrintError {
    fn from(s: Stop) -> Self {
        PrintError::Out(s)
    }
}

impl From<JournalError> for PrintError {
    fn from(e: JournalError) -> Self {
        PrintError::Journal(e)
    }
}

fn verify(path: &Path, head: &[String], mirror: &[PathBuf]) -> i32 {
    let mut heads: Vec<ChainHead> = Vec::new();
    for h in head {
        match journal::parse_head(h) {
            Ok(h) => heads.push(h),
            Err(e) => {
                fail(format!("--head: {e}"));
                return EXIT_USAGE;
            }
        }
    }
    for m in mirror {
        match journal::mirror_head(m) {
            Ok(Some(h)) => heads.push(h),
            Ok(None) => {
                fail(format!(
                    "--mirror {}: holds no record, so it vouches for nothing",
                    m.display()
                ));
                return EXIT_USAGE;
            }
            Err(e) => return journal_failed("--mirror", &e),
        }
    }
    let (code, text) = match journal::verify_against(path, &heads) {
        Ok(report) => {
            if report.ok {
                (
                    0,
                    format!(
                        "journal {}: intact — {} records, chain head {}{}{}",
                        path.display(),
                        report.records,
                        report.head_seq,
                        report
                            .checkpoint_seq
                            .map(|c| format!(", newest checkpoint {c}"))
                            .unwrap_or_default(),
                        report
                            .external_head_seq
                            .map(|s| format!(", matches the off-host head {s}"))
                            .unwrap_or_default(),
                    ),
                )
            } else {
                (
                    1,
                    format!(
                        "journal {}: NOT intact — {}",
                        path.display(),
                        problem_of(&report)
                    ),
                )
            }
        }
        Err(e) => return journal_failed(path.display(), &e),
    };
    print_verdict(code, text)
}

/// Copies the store (one consistent snapshot, `VACUUM INTO`) and its side
/// file, then verifies the copy.
fn export(journal_path: &Path, dest: &Path) -> i32 {
    let side_dest = journal::checkpoint_path(dest);
    for p in [dest, side_dest.as_path()] {
        if p.exists() {
            fail(format!("{} exists; export writes a new file", p.display()));
            return EXIT_USAGE;
        }
    }
    let store = match Store::open_read_only(journal_path) {
        Ok(s) => s,
        Err(e) => return journal_failed(journal_path.display(), &e),
    };
    // Side file first, then the snapshot: guardd appends a checkpoint only
    // after committing what it names, so the copy holds every record the
    // copied side file vouches for.
    let side_src = journal::checkpoint_path(journal_path);
    let side = match std::fs::read(&side_src) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            fail(format!("reading {}: {e}", side_src.display()));
            return EXIT_GUARD;
        }
    };
    // The copy holds what the journal holds (paths, arguments, who ran
    // what): readable by its owner only, like the journal, from the moment
    // it exists. SQLite creates the file, hence the umask around it.
    // SAFETY: umask has no preconditions; guardctl has no other threads
    // creating files meanwhile.
    let old_mask = unsafe { libc::umask(0o077) };
    let exported = store.export_to(dest);
    // SAFETY: as above.
    unsafe { libc::umask(old_mask) };
    if let Err(e) = exported {
        return journal_failed(format_args!("exporting to {}", dest.display()), &e);
    }
    drop(store);
    if let Some(bytes) = side {
        use std::os::unix::fs::OpenOptionsExt as _;
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&side_dest)
            .and_then(|mut f| {
                let w = f.write_all(&bytes).and_then(|()| f.sync_all());
                if w.is_err() {
                    // Ours (create_new): a torn side file goes too.
                    let _ = std::fs::remove_file(&side_dest);
                }
                w
            });
        if let Err(e) = written {
            // Half an export (a store without the side file that vouches
            // for it) is not left behind to be mistaken for one.
            let _ = std::fs::remove_file(dest);
            fail(format!("writing {}: {e}", side_dest.display()));
            return EXIT_GUARD;
        }
    } else {
        eprintln!(
            "guardctl: warning: {} has no checkpoint side file ({}); the copy cannot show truncation",
            journal_path.display(),
            side_src.display()
        );
    }
    let report = match journal::verify(dest) {
        Ok(r) => r,
        Err(e) => return journal_failed(format_args!("verifying {}", dest.display()), &e),
    };
    let text = if report.ok {
        format!(
            "exported {} to {} (and {}): intact — {} records, chain head {}",
            journal_path.display(),
            dest.display(),
            side_dest.display(),
            report.records,
            report.head_seq
        )
    } else {
        format!(
            "exported {} to {}: NOT intact — {}",
            journal_path.display(),
            dest.display(),
            problem_of(&report)
        )
    };
    print_verdict(if report.ok { 0 } else { 1 }, text)
}

/// Why a journal is not intact, for the one-line verdict.
fn problem_of(report: &journal::VerifyReport) -> String {
    report
        .first_problem
        .as_ref()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "unknown problem".into())
}

/// Prints the verdict of `verify` or `export`; the exit code is the
/// verdict's even when the reader has gone (`| head`).
fn print_verdict(code: i32, text: String) -> i32 {
    let mut out = Out::new();
    match out.line(text).and_then(|()| out.flush()) {
        Ok(()) | Err(Stop::Closed) => code,
        Err(s) => exit_of(s),
    }
}

/// Says why reading or writing `what` (a journal, an export) failed, with
/// every cause.
fn journal_failed(what: impl std::fmt::Display, e: &JournalError) -> i32 {
    fail(format!("{what}: {}", journal::error_chain(e)));
    EXIT_GUARD
}
