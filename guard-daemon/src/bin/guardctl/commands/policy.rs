//! `guardctl policy check [--paths] FILE`: validate a policy, report every
//! problem (the same host checks `guardctl run` makes) and dangerous
//! grants, and show how this host will enforce it.
//!
//! `guardctl policy draft --agent ID|NAME [--from POLICY] [-o FILE]
//! [--journal FILE]`: draft a policy from what an agent's runs were seen
//! doing (`policy::draft`), from guardd's journal or a journal file.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use clap::{Args, Subcommand};
use guard_daemon::{
    api::{self, LogsRequest, Request},
    doctor::{self, Status},
    journal::{self, JournalError, Record, Store},
    launch::{
        builder::home_dir,
        preflight::{self, PolicyFile, PolicyFileError},
    },
    policy::{
        Access, Origin, Plan, Vars, dangerous_grants,
        draft::{self, DraftError, FromPolicy, LocalHost},
        host::{DOH_RESOLVERS, DOT_PORT},
    },
};

use super::{connect, describe, fail};
use crate::{Cli, EXIT_GUARD, EXIT_USAGE};

/// Records read per query when reading a journal file directly.
const PAGE: usize = 1000;

/// `writeln!` into a `String`, which cannot fail.
macro_rules! out {
    ($o:expr) => {{
        $o.push('\n');
    }};
    ($o:expr, $($t:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($o, $($t)*);
    }};
}

#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    cmd: PolicyCmd,
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Validate a policy, report every problem, and summarise how this host
    /// enforces it.
    Check {
        file: PathBuf,
        /// List every file and program rule (bases included), not only a
        /// count per source.
        #[arg(long, visible_alias = "paths", short = 'v')]
        verbose: bool,
    },
    /// Draft a policy from what an agent was seen doing (best after
    /// `guardctl run --learn`); what needs a decision is left commented
    /// out under REVIEW.
    Draft(DraftArgs),
}

#[derive(Args, Debug)]
struct DraftArgs {
    /// Agent id or unambiguous id prefix (that run), or name (every run of
    /// that name, merged).
    #[arg(long)]
    agent: String,
    /// The policy the runs learned on top of: its rules are kept, and what
    /// it grants is not drafted again.
    #[arg(long, value_name = "POLICY")]
    from: Option<PathBuf>,
    /// Write the draft to FILE instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Read this journal file directly, read-only, instead of asking guardd.
    #[arg(long, value_name = "FILE")]
    journal: Option<PathBuf>,
}

pub fn run(cli: &Cli, args: &PolicyArgs) -> i32 {
    match &args.cmd {
        PolicyCmd::Check { file, verbose } => check(file, *verbose),
        PolicyCmd::Draft(a) => draft_cmd(cli, a),
    }
}

/// A failure of `policy draft`: the exit status and what to say.
struct Failed(i32, String);

fn draft_cmd(cli: &Cli, args: &DraftArgs) -> i32 {
    match draft_to(cli, args) {
        Ok(()) => 0,
        Err(Failed(code, msg)) => {
            fail(msg);
            code
        }
    }
}

fn draft_to(cli: &Cli, args: &DraftArgs) -> Result<(), Failed> {
    // The policy first: a mistake in it is found before the journal is read.
    let from = match &args.from {
        Some(path) => {
            let label = path.display().to_string();
            let f =
                PolicyFile::read(path, &label).map_err(|e| Failed(EXIT_USAGE, e.to_string()))?;
            Some(FromPolicy {
                label,
                text: f.text,
                policy: f.policy,
            })
        }
        None => None,
    };
    let records = match &args.journal {
        Some(path) => records_from_file(path, &args.agent)?,
        None => records_from_guardd(cli, &args.agent)?,
    };
    let usage = |e: DraftError| {
        let code = match e {
            DraftError::NotFound { .. }
            | DraftError::Ambiguous { .. }
            | DraftError::From { .. } => EXIT_USAGE,
            _ => EXIT_GUARD,
        };
        Failed(code, e.to_string())
    };
    let records = draft::select(records, &args.agent).map_err(usage)?;
    let d = draft::draft(&records, from.as_ref(), &LocalHost).map_err(usage)?;
    let shown = match &args.output {
        Some(path) => {
            std::fs::write(path, &d.text)
                .map_err(|e| Failed(EXIT_GUARD, format!("writing {}: {e}", path.display())))?;
            path.display().to_string()
        }
        None => {
            let mut out = std::io::stdout().lock();
            // A closed pipe (`| head`) is the reader's choice, not an error.
            if let Err(e) = out.write_all(d.text.as_bytes()).and_then(|()| out.flush())
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                return Err(Failed(EXIT_GUARD, format!("writing output: {e}")));
            }
            "standard output".to_owned()
        }
    };
    eprintln!(
        "guardctl: drafted policy {:?} from {} run{} of {:?} to {shown}; {}",
        d.name,
        d.runs,
        if d.runs == 1 { "" } else { "s" },
        journal::escape_str(&args.agent),
        if d.review == 0 {
            "nothing left to review".to_owned()
        } else {
            format!(
                "{} item{} to review (lines marked REVIEW)",
                d.review,
                if d.review == 1 { "" } else { "s" }
            )
        }
    );
    Ok(())
}

/// Every record of the agent (id, id prefix or name), as `guardctl logs
/// --agent` gets them from guardd.
fn records_from_guardd(cli: &Cli, key: &str) -> Result<Vec<Record>, Failed> {
    let guard = |m: String| Failed(EXIT_GUARD, m);
    let mut conn = connect(&cli.socket).map_err(guard)?;
    let req = Request::Logs(LogsRequest {
        agent: Some(key.to_owned()),
        ..LogsRequest::default()
    });
    let line = api::encode_request(1, &req).map_err(|e| guard(e.to_string()))?;
    conn.send(&line).map_err(|e| guard(e.to_string()))?;
    let mut records = Vec::new();
    loop {
        let line = conn
            .read_line()
            .map_err(|e| guard(describe(&e)))?
            .ok_or_else(|| {
                guard("guardd closed the connection before the end of the records".into())
            })?;
        let map = match api::parse_response(&line) {
            Ok(m) => m,
            Err(e) => {
                let code = match &e {
                    api::ApiError::Remote { code, .. } if code == api::code::NOT_FOUND => {
                        let e = DraftError::NotFound { key: key.into() };
                        return Err(Failed(EXIT_USAGE, e.to_string()));
                    }
                    api::ApiError::Remote { code, .. }
                        if code == api::code::AMBIGUOUS || code == api::code::BAD_REQUEST =>
                    {
                        EXIT_USAGE
                    }
                    _ => EXIT_GUARD,
                };
                return Err(Failed(code, describe(&e)));
            }
        };
        if map.get("done").and_then(|v| v.as_bool()) == Some(true) {
            return Ok(records);
        }
        let Some(value) = map.get("record") else {
            continue;
        };
        // A record this guardctl cannot read would be missing from the
        // draft: refuse rather than draft from part of the runs.
        let rec: Record = serde_json::from_value(value.clone()).map_err(|e| {
            guard(format!(
                "record seq {} cannot be read ({}); update guardctl",
                value.get("seq").and_then(|v| v.as_u64()).unwrap_or(0),
                journal::escape_str(&e.to_string())
            ))
        })?;
        records.push(rec);
    }
}

/// The same, read from a journal file directly (read-only).
fn records_from_file(path: &Path, key: &str) -> Result<Vec<Record>, Failed> {
    let failed = |e: &JournalError| {
        Failed(
            EXIT_GUARD,
            format!("{}: {}", path.display(), journal::error_chain(e)),
        )
    };
    let store = Store::open_for_reading(path).map_err(|e| failed(&e))?;
    let id = match store.resolve_agent(key) {
        Ok(id) => id,
        Err(JournalError::UnknownAgent { .. }) => {
            return Err(Failed(
                EXIT_USAGE,
                DraftError::NotFound { key: key.into() }.to_string(),
            ));
        }
        Err(e @ JournalError::AmbiguousAgent { .. }) => {
            return Err(Failed(EXIT_USAGE, e.to_string()));
        }
        Err(e) => return Err(failed(&e)),
    };
    let mut filter = LogsRequest {
        agent: Some(id),
        ..LogsRequest::default()
    }
    .filter(SystemTime::now())
    .map_err(|e| failed(&e))?;
    filter.limit = Some(PAGE);
    let mut records = Vec::new();
    loop {
        let page = store.query(&filter).map_err(|e| failed(&e))?;
        let full = page.len() == PAGE;
        filter.after_seq = page.last().map(|r| r.seq).or(filter.after_seq);
        records.extend(page);
        if !full {
            return Ok(records);
        }
    }
}

fn check(file: &Path, verbose: bool) -> i32 {
    let name = file.display().to_string();
    // Read as `guardctl run` reads it (includes beside the real file).
    let policy = match PolicyFile::read(file, &name) {
        Ok(f) => f.policy,
        Err(PolicyFileError::Invalid(errs)) => return report_errors(&name, &errs),
        Err(e) => {
            eprintln!("{e}");
            return EXIT_USAGE;
        }
    };
    // {home} and {tmp} as `guardctl run` expands them before it starts.
    let tmp = PathBuf::from(preflight::TMP_PLACEHOLDER);
    let vars = Vars {
        workdir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
        home: home_dir(),
        tmp: tmp.clone(),
    };
    let plan = match policy.compile_all(&vars) {
        Ok(p) => p,
        Err(errs) => return report_errors(&name, &errs),
    };
    // The checks `guardctl run` makes before it starts anything.
    let problems = preflight::host_problems(&plan, &name, Some(&tmp));
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("{p}");
        }
        eprintln!(
            "{name}: {} error(s); guardctl run would refuse this policy here",
            problems.len()
        );
        return EXIT_USAGE;
    }
    let warnings = dangerous_grants(&plan);
    // Written at once, and a closed pipe (`| head`) is not an error.
    let mut o = String::new();
    let landlock = doctor::landlock_layer();
    let seccomp = doctor::seccomp_layer();
    out!(
        o,
        "{name}: ok — policy {:?}, mode {}{}",
        plan.name,
        plan.mode.as_str(),
        if warnings.is_empty() {
            String::new()
        } else {
            format!(", {} warning(s)", warnings.len())
        }
    );
    for w in &warnings {
        out!(o, "  warning: {w}");
    }
    out!(o);
    out!(
        o,
        "network (default deny, loopback included; enforced by cgroup BPF connect/sendmsg hooks, Unix sockets by the cgroup BPF connect_unix/sendmsg_unix hooks):"
    );
    let hosts: Vec<usize> = plan
        .network
        .dns
        .iter()
        .flat_map(|d| &d.hosts)
        .map(|h| usize::from(h.rule))
        .collect();
    let (listen, allow): (Vec<_>, Vec<_>) = plan
        .rules
        .iter()
        .enumerate()
        .filter(|(i, _)| !hosts.contains(i))
        .map(|(_, r)| r)
        .partition(|r| r.id.contains("network.listen["));
    if allow.is_empty() && hosts.is_empty() {
        out!(
            o,
            "  (no rules: every connection and datagram is refused, loopback included)"
        );
    } else if allow.is_empty() {
        out!(
            o,
            "  (no address rules: only the host names below are reachable)"
        );
    }
    for r in &allow {
        out!(o, "  {:<22} {}", r.id, r.text);
    }
    out!(
        o,
        "  raw, packet and ICMP sockets: refused (cgroup sock_create + seccomp socket families + no CAP_NET_RAW)"
    );
    print_names(&mut o, &plan);
    out!(o);
    out!(
        o,
        "inbound (default deny; enforced by cgroup BPF bind hooks, and by dropping packets for listening sockets on unlisted ports):"
    );
    if listen.is_empty() {
        out!(
            o,
            "  (no listen rules: bind and listen are refused on every address and port, loopback included; listen() by seccomp)"
        );
    }
    for r in &listen {
        out!(o, "  {:<22} {}", r.id, r.text);
    }
    out!(o);
    if plan.filesystem.restricted {
        out!(
            o,
            "files and programs (default deny; {}: {}; write implies read of the same tree, exec implies read):",
            landlock.layer,
            status(landlock.status)
        );
        print_files(&mut o, &plan, verbose);
    } else {
        out!(
            o,
            "files and programs: NOT restricted (no [filesystem] table)"
        );
    }
    out!(o, "  {}", landlock.detail);
    out!(o);
    out!(o, "processes:");
    let p = &plan.process;
    out!(
        o,
        "  max_processes {}, memory {}, cpu {}",
        p.max_processes
            .map(|n| n.to_string())
            .unwrap_or_else(|| "unlimited".into()),
        p.memory_bytes
            .map(|n| format!("{n} bytes"))
            .unwrap_or_else(|| "unlimited".into()),
        p.cpu_millicores
            .map(|n| format!("{:.3} cores", f64::from(n) / 1000.0))
            .unwrap_or_else(|| "unlimited".into()),
    );
    out!(
        o,
        "  capabilities kept: {}",
        if p.capabilities.is_empty() {
            "none".to_owned()
        } else {
            p.capabilities.join(", ")
        }
    );
    out!(
        o,
        "  system calls: default-deny allowlist ({}: {})",
        seccomp.layer,
        status(seccomp.status)
    );
    let _ = std::io::stdout().write_all(o.as_bytes());
    0
}

/// Host rules, what enforces them, the `[network.dns]` settings, and what
/// routing DNS through guardd closes (DNS over TLS, DNS over HTTPS).
fn print_names(o: &mut String, plan: &Plan) {
    let Some(dns) = &plan.network.dns else {
        return;
    };
    out!(o);
    out!(
        o,
        "host names (every DNS query of the agent, port 53 to any address, goes to guardd):"
    );
    if dns.hosts.is_empty() {
        out!(
            o,
            "  (no host rules: every name is refused; [network.dns] alone sends the agent's DNS to guardd)"
        );
    }
    for h in &dns.hosts {
        match plan.rules.get(usize::from(h.rule)) {
            Some(r) => out!(o, "  {:<22} {}", r.id, r.text),
            None => out!(o, "  rule {:<17} host {}", h.rule, h.pattern),
        }
    }
    out!(
        o,
        "  by name: guardd's resolver for the agent answers only these names and opens each \
         answer's addresses for its TTL (floor {} s, ceiling {} s, at most {} addresses per name); \
         other names are refused and no query leaves the host; every DNS query of the agent goes \
         to that resolver",
        dns.ttl_floor.as_secs(),
        dns.ttl_ceiling.as_secs(),
        dns.max_addresses
    );
    let except = if dns.answers_allowed.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = dns
            .answers_allowed
            .iter()
            .map(ToString::to_string)
            .collect();
        format!(
            ", except into [network.dns] answers_allowed: {}",
            list.join(", ")
        )
    };
    out!(
        o,
        "  answers pointing into loopback, link-local or private ranges are dropped (DNS rebinding; 169.254.169.254 among them){except}"
    );
    out!(
        o,
        "  DNS over TLS/QUIC: port {DOT_PORT} only where a rule lists {DOT_PORT} by itself; other rules have it cut out"
    );
    let (mut closed, mut named) = (Vec::new(), Vec::new());
    for (_, ip) in DOH_RESOLVERS {
        match plan.network.exact(ip) {
            Some(v) if v.cidr_rule == guard_common::RULE_DOH => closed.push(ip.to_string()),
            Some(v) => {
                let id = plan
                    .rules
                    .get(usize::try_from(v.cidr_rule).unwrap_or(usize::MAX))
                    .map_or("?", |r| r.id.as_str());
                named.push(format!("{ip} ({id})"));
            }
            None => {}
        }
    }
    out!(
        o,
        "  DNS-over-HTTPS resolvers (Google, Cloudflare, Quad9, OpenDNS, AdGuard): only rules naming the exact address reach them"
    );
    if !closed.is_empty() {
        out!(
            o,
            "    closed although a broader rule covers them: {}",
            closed.join(", ")
        );
    }
    if !named.is_empty() {
        out!(o, "    opened by an exact rule: {}", named.join(", "));
    }
}

fn report_errors(name: &str, errs: &[impl std::fmt::Display]) -> i32 {
    for e in errs {
        eprintln!("{e}");
    }
    eprintln!("{name}: {} error(s)", errs.len());
    EXIT_USAGE
}

fn access_text(a: Access) -> String {
    let mut v = Vec::new();
    if a.read {
        v.push("read");
    }
    if a.write {
        v.push("write");
    }
    if a.exec {
        v.push("exec");
    }
    v.join("+")
}

/// The policy's own rules always; base rules as one line per base unless
/// `verbose` (they run to well over a hundred paths).
fn print_files(o: &mut String, plan: &guard_daemon::policy::Plan, verbose: bool) {
    let line = |o: &mut String, r: &guard_daemon::policy::FsRule| {
        let missing = if r.path.exists() {
            ""
        } else if r.origin == Origin::Policy {
            "  (created by guardd at start)"
        } else {
            "  (missing on this host: skipped)"
        };
        out!(
            o,
            "  {:<40} {:<16} {}{missing}",
            r.path.display(),
            access_text(r.access),
            r.rule
        );
    };
    let mut bases: Vec<(&str, usize, usize)> = Vec::new();
    for r in &plan.filesystem.rules {
        match r.origin {
            Origin::Policy => line(o, r),
            Origin::Base(_) if verbose => line(o, r),
            Origin::Base(b) => {
                let present = usize::from(r.path.exists());
                match bases.iter_mut().find(|(n, _, _)| *n == b) {
                    Some(e) => {
                        e.1 += 1;
                        e.2 += present;
                    }
                    None => bases.push((b, 1, present)),
                }
            }
        }
    }
    for (b, n, present) in bases {
        out!(
            o,
            "  base {b:<35} {n} paths ({present} on this host); --paths lists them"
        );
    }
}

fn status(s: Status) -> &'static str {
    match s {
        Status::Enforced => "enforced",
        Status::Degraded => "degraded",
        Status::Unavailable => "UNAVAILABLE",
    }
}
