//! Drafting a policy from what agents were seen doing (issue 14): journal
//! records of one or more runs in, policy TOML out.
//!
//! Pure: the only facts taken from outside the records are file facts
//! (what a path resolves to, whether it is a directory, a script's first
//! line), and they come through a [`HostView`], so tests run on temporary
//! directories. The rules the draft follows (variables, bases, grouping
//! G1-G3, what is flagged for review) are documented in `docs/policy.md`,
//! "Learning a policy".
//!
//! The draft is closed by construction: what a reviewer must decide is
//! written as commented-out lines under a `# REVIEW:` heading, never as a
//! grant, and the text is parsed and compiled before it is returned.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Component, Path, PathBuf};

use guard_common::{PROTO_TCP, PROTO_UDP};
use serde_json::Value;

use super::host::{HostPattern, is_internal, normalize_name};
use super::parse::{Doc, PathList, RawDns, RawListenRule, RawNetRule, RawProcess, Scalar};
use super::{Access, BASE_NAMES, Origin, Plan, Policy, Vars, port_allowed};
use crate::journal::{Kind, Record, Verdict};

/// G2: this many distinct files of one access directly in one directory
/// become a rule on the directory.
const GROUP_MIN: usize = 4;
/// `max_processes` is drafted in steps of this size, and never below it:
/// identical runs peak a little differently and must draft the same text.
const PROCESS_STEP: u64 = 16;
/// The highest `max_processes` a policy accepts.
const MAX_PROCESSES: u64 = 1_000_000;
const MIB: u64 = 1 << 20;
/// Memory limits are drafted in steps of this size: a peak varies a little
/// from run to run, and two runs of the same workload must draft the same
/// text.
const MEMORY_STEP: u64 = 64 * MIB;

/// The drafted memory limit for a peak: twice the peak, rounded up to a
/// whole `MEMORY_STEP`.
fn memory_limit(peak: u64) -> u64 {
    peak.saturating_mul(2)
        .div_ceil(MEMORY_STEP)
        .max(1)
        .saturating_mul(MEMORY_STEP)
}
/// The drafted process limit for a peak: twice the peak, rounded up to a
/// whole `PROCESS_STEP`, at least one step.
fn process_limit(peak: u64) -> u64 {
    peak.saturating_mul(2)
        .div_ceil(PROCESS_STEP)
        .max(1)
        .saturating_mul(PROCESS_STEP)
        .min(MAX_PROCESSES)
}

/// `{home}` when a start record names none: the git base's `{home}` rule
/// then grants nothing, and no path is written with `{home}`.
const NO_HOME: &str = "/nonexistent-home";

/// Credential locations under the home directory (a path under one, or the
/// file itself, is flagged).
const HOME_CREDENTIALS: [&str; 12] = [
    ".ssh",
    ".aws",
    ".azure",
    ".config/gcloud",
    ".config/gh",
    ".kube",
    ".docker/config.json",
    ".netrc",
    ".git-credentials",
    ".npmrc",
    ".pypirc",
    ".gnupg",
];
/// Credential locations of the host (Kubernetes service-account tokens
/// and the SSH host keys among them).
const HOST_CREDENTIALS: [&str; 6] = [
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/ssl/private",
    "/etc/ssh",
    "/run/secrets",
    "/var/run/secrets",
];
/// Directories and files that hold credentials wherever they lie (under
/// any user's home directory, in a container's root, in a backup), as one
/// path component.
const CREDENTIAL_NAMES: [&str; 9] = [
    ".ssh",
    ".aws",
    ".gnupg",
    ".kube",
    ".azure",
    ".netrc",
    ".git-credentials",
    ".npmrc",
    ".pypirc",
];
/// The same, as two components.
const CREDENTIAL_PAIRS: [(&str, &str); 3] = [
    (".config", "gcloud"),
    (".config", "gh"),
    (".docker", "config.json"),
];
/// SSH private keys by their file names' beginnings (`id_rsa`,
/// `id_ed25519_deploy`).
const KEY_FILES: [&str; 4] = ["id_rsa", "id_dsa", "id_ecdsa", "id_ed25519"];
/// Key stores by extension (PKCS#12, KeePass).
const KEY_STORES: [&str; 3] = ["p12", "pfx", "kdbx"];
/// Directories a grant on which, or on one of whose ancestors, covers
/// home directories or the host's SSH keys.
const HOME_ROOTS: [(&str, &str); 3] = [
    ("/home", "home directories"),
    ("/root", "root's home directory"),
    ("/etc/ssh", "the host's SSH keys"),
];
/// A directory grant is checked for credentials below it on the host, up
/// to this many entries; a larger tree is for review.
const WALK_LIMIT: usize = 50_000;
/// A path component holding one of these (ASCII case ignored) is flagged.
const CREDENTIAL_WORDS: [&str; 3] = ["token", "secret", "credential"];
/// `.pem` and `.key` files here are public certificates, not keys.
const CERT_DIRS: [&str; 2] = ["/etc/ssl/certs", "/usr/share/ca-certificates"];

/// Why a path is a credential location by its names alone, wherever it
/// lies: a credential directory or file as a component, an SSH key's file
/// name, a key store's extension, a process's environment.
fn credential_location(p: &Path) -> Option<String> {
    let names: Vec<&str> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_str().unwrap_or("")),
            _ => None,
        })
        .collect();
    for (k, n) in names.iter().enumerate() {
        if let Some(c) = CREDENTIAL_NAMES.iter().find(|c| *c == n) {
            return Some(format!("credentials (a {c} in the path)"));
        }
        let next = names.get(k + 1).copied().unwrap_or("");
        if let Some((a, b)) = CREDENTIAL_PAIRS.iter().find(|(a, b)| a == n && *b == next) {
            return Some(format!("credentials (a {a}/{b} in the path)"));
        }
    }
    let file = names.last().copied().unwrap_or("");
    if p.starts_with("/proc") && file == "environ" {
        return Some(
            "a process's environment (/proc/*/environ): it holds what the process was given, \
             secrets among them"
                .into(),
        );
    }
    if let Some(k) = KEY_FILES.iter().find(|k| file.starts_with(*k)) {
        return Some(format!("private key (a file named {k}*)"));
    }
    if let Some(e) = p.extension().and_then(|e| e.to_str())
        && let Some(k) = KEY_STORES.iter().find(|k| e.eq_ignore_ascii_case(k))
    {
        return Some(format!("private key or key store (.{k})"));
    }
    None
}

/// A private key by extension, outside the certificate directories.
fn key_file(real: &Path) -> bool {
    real.extension().is_some_and(|e| e == "pem" || e == "key")
        && !CERT_DIRS.iter().any(|d| real.starts_with(d))
}

/// Why no draft could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DraftError {
    #[error(
        "no runs found for {key}: the journal holds no record of an agent with that id or name"
    )]
    NotFound { key: String },
    #[error("{key} is ambiguous: it starts the ids {candidates}; give more of the id, or the name")]
    Ambiguous { key: String, candidates: String },
    #[error("no records to draft from")]
    NoRecords,
    #[error(
        "run {agent}: no start record in the journal (removed by retention?), so its work \
         and temporary directories are unknown; draft from the other runs by id"
    )]
    NoStart { agent: String },
    #[error("run {agent}: the start record's `{field}` is {why}")]
    BadStart {
        agent: String,
        field: &'static str,
        why: String,
    },
    #[error("the runs belong to different agent names ({names}): draft one name at a time")]
    MixedNames { names: String },
    #[error("--from {file}: {message}")]
    From { file: String, message: String },
    #[error("the drafted policy does not compile: {message}")]
    Invalid { message: String },
}

/// File facts of the host the runs happened on, as they are now. Nothing
/// here reads a file's contents (the agent can rewrite its files, and a
/// FIFO would block the reader): paths are resolved and directories
/// listed, no more.
pub trait HostView {
    /// The path with every symlink resolved, if it exists.
    fn canonical(&self, path: &Path) -> Option<PathBuf>;
    /// Whether the path is a directory (following symlinks).
    fn is_dir(&self, path: &Path) -> bool;
    /// The first entry below the directory `dir` (walked without following
    /// symlinks, each directory's entries in name order) whose path `hit`
    /// matches, looking at no more than `limit` entries.
    fn find_below(&self, dir: &Path, hit: &dyn Fn(&Path) -> bool, limit: usize) -> Below;
}

/// A path's components to walk, `..` kept and `.` dropped, last first.
fn parts_of(p: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<std::ffi::OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    v.reverse();
    v
}

/// What [`HostView::find_below`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Below {
    /// No entry matched (or the directory is gone).
    Clean,
    Found(PathBuf),
    /// The tree holds more entries than the limit.
    TooLarge,
    /// A directory of the tree could not be read.
    Unreadable(PathBuf),
}

/// This host's file system.
pub struct LocalHost;

/// Symlinks followed in one path at most, as the kernel does.
const MAX_LINKS: usize = 40;

impl HostView for LocalHost {
    /// Resolved by hand (lstat and readlink, nothing opened): from where a
    /// path enters `/proc` (`/dev/stdout`, `/dev/fd/3`, `/etc/mtab` lead
    /// there) the rest is taken as written, since resolving it here would
    /// name guardctl's own descriptors and process.
    fn canonical(&self, path: &Path) -> Option<PathBuf> {
        if !path.is_absolute() {
            return None;
        }
        // What is left to walk, last component first.
        let mut todo: Vec<std::ffi::OsString> = parts_of(path);
        let mut real = PathBuf::from("/");
        let mut links = 0;
        while let Some(name) = todo.pop() {
            if name == ".." {
                real.pop();
                continue;
            }
            let next = real.join(&name);
            if next.starts_with("/proc") {
                let mut out = next;
                while let Some(n) = todo.pop() {
                    if n == ".." {
                        out.pop();
                    } else {
                        out.push(n);
                    }
                }
                return Some(out);
            }
            let meta = std::fs::symlink_metadata(&next).ok()?;
            if meta.file_type().is_symlink() {
                links += 1;
                if links > MAX_LINKS {
                    return None;
                }
                let target = std::fs::read_link(&next).ok()?;
                if target.is_absolute() {
                    real = PathBuf::from("/");
                }
                todo.extend(parts_of(&target));
            } else if !todo.is_empty() && !meta.is_dir() {
                return None;
            } else {
                real = next;
            }
        }
        Some(real)
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn find_below(&self, dir: &Path, hit: &dyn Fn(&Path) -> bool, limit: usize) -> Below {
        let mut todo = vec![dir.to_owned()];
        let mut seen = 0usize;
        while let Some(d) = todo.pop() {
            // glibc opens a directory with O_NONBLOCK | O_DIRECTORY: a FIFO
            // put in its place fails instead of blocking.
            let entries = match std::fs::read_dir(&d) {
                Ok(e) => e,
                Err(e) if d == dir && e.kind() == std::io::ErrorKind::NotFound => {
                    return Below::Clean;
                }
                Err(_) => return Below::Unreadable(d),
            };
            let mut names = Vec::new();
            for e in entries {
                let Ok(e) = e else {
                    return Below::Unreadable(d);
                };
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                names.push((e.path(), is_dir));
            }
            names.sort();
            let mut sub = Vec::new();
            for (p, is_dir) in names {
                seen += 1;
                if seen > limit {
                    return Below::TooLarge;
                }
                if hit(&p) {
                    return Below::Found(p);
                }
                if is_dir {
                    sub.push(p);
                }
            }
            // The first in name order is walked first.
            todo.extend(sub.into_iter().rev());
        }
        Below::Clean
    }
}

/// A policy the runs learned on top of (`--from`): its rules are kept, and
/// what it already grants is not drafted again.
pub struct FromPolicy {
    /// How the draft names it in comments (`# from POLICY`).
    pub label: String,
    /// The policy file's text; its rules are re-emitted from its parsed
    /// form, those of its include files from [`Policy::sources`].
    pub text: String,
    pub policy: Policy,
}

/// A drafted policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    pub text: String,
    /// `[policy] name`.
    pub name: String,
    /// How many runs (agent ids) it was drafted from.
    pub runs: usize,
    /// Lines and notes left for a reviewer (`# REVIEW`).
    pub review: usize,
}

/// The records of the runs `key` names: every run of the agent name `key`
/// (merged), or the one run whose id is `key` or starts with it. Records
/// without an agent are left out.
pub fn select(records: Vec<Record>, key: &str) -> Result<Vec<Record>, DraftError> {
    let ids: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r.agent.as_ref())
        .map(|a| a.id.as_str())
        .collect();
    let by_name = records
        .iter()
        .filter_map(|r| r.agent.as_ref())
        .any(|a| a.name == key);
    let keep: Box<dyn Fn(&Record) -> bool> = if ids.contains(key) {
        Box::new(|r: &Record| r.agent.as_ref().is_some_and(|a| a.id == key))
    } else if by_name {
        Box::new(|r: &Record| r.agent.as_ref().is_some_and(|a| a.name == key))
    } else {
        let prefixed: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !key.is_empty() && id.starts_with(key))
            .collect();
        match prefixed.as_slice() {
            [] => return Err(DraftError::NotFound { key: key.into() }),
            [one] => {
                let one = (*one).to_owned();
                Box::new(move |r: &Record| r.agent.as_ref().is_some_and(|a| a.id == one))
            }
            many => {
                return Err(DraftError::Ambiguous {
                    key: key.into(),
                    candidates: many.join(", "),
                });
            }
        }
    };
    Ok(records.into_iter().filter(|r| keep(r)).collect())
}

/// Drafts a policy from the records of one or more runs (grouped by agent
/// id; every run must have its start record). The same records, in any
/// order and under any agent ids, give the same text.
pub fn draft(
    records: &[Record],
    from: Option<&FromPolicy>,
    host: &dyn HostView,
) -> Result<Draft, DraftError> {
    let mut by_run: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        if let Some(a) = &r.agent {
            by_run.entry(a.id.as_str()).or_default().push(r);
        }
    }
    if by_run.is_empty() {
        return Err(DraftError::NoRecords);
    }
    let names: BTreeSet<&str> = by_run
        .values()
        .flatten()
        .filter_map(|r| r.agent.as_ref())
        .map(|a| a.name.as_str())
        .collect();
    if names.len() > 1 {
        return Err(DraftError::MixedNames {
            names: names
                .iter()
                .map(|n| quote(n))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let agent_name = names.into_iter().next().unwrap_or_default();
    let mut runs = Vec::new();
    for (id, recs) in &by_run {
        runs.push(Run::new(id, recs, from, host)?);
    }
    let mut seen = Seen::default();
    for (i, run) in runs.iter().enumerate() {
        seen.read(i, run);
        let missing = missing(run.records);
        if !missing.is_empty() {
            seen.header.insert(format!(
                "run {}: records may be missing ({}), and what they held is not in this draft.",
                safe(&run.id),
                missing.join("; ")
            ));
        }
    }
    let d = Drafter::new(&runs, from, host, seen);
    let (text, review, meant) = d.render(agent_name)?;
    verify(&text, &meant)?;
    check(&text, &runs)?;
    Ok(Draft {
        text,
        name: policy_name(agent_name),
        runs: runs.len(),
        review,
    })
}

/// Why a run's records may be incomplete: events lost or still pending at
/// its exit, a gap the journal recorded for it, no exit record at all.
fn missing(records: &[&Record]) -> Vec<String> {
    let mut why = Vec::new();
    let exit = records
        .iter()
        .find(|r| r.kind == Kind::Lifecycle && r.action == "exit");
    match exit {
        None => why.push(
            "no exit record: it was still running, or guardd restarted while it ran".to_owned(),
        ),
        Some(r) => {
            let n = |k: &str| detail(r, k).and_then(Value::as_u64).unwrap_or(0);
            if n("lost") > 0 {
                why.push(format!(
                    "{} lost when the kernel's ring buffer was full",
                    events_text(n("lost"))
                ));
            }
            if n("events_pending") > 0 {
                why.push(format!(
                    "{} still pending when it exited",
                    events_text(n("events_pending"))
                ));
            }
        }
    }
    let gaps: BTreeSet<String> = records
        .iter()
        .filter(|r| r.kind == Kind::Gap)
        .map(|r| safe(&r.action))
        .collect();
    if !gaps.is_empty() {
        why.push(format!(
            "the journal records a gap ({})",
            gaps.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    why
}

fn events_text(n: u64) -> String {
    if n == 1 {
        "1 event".into()
    } else {
        format!("{n} events")
    }
}

/// The parsed draft compiles with every run's variables.
fn check(text: &str, runs: &[Run]) -> Result<(), DraftError> {
    let invalid = |e: &dyn std::fmt::Display| DraftError::Invalid {
        message: e.to_string(),
    };
    let policy = Policy::parse(text, "draft").map_err(|e| invalid(&e))?;
    for run in runs {
        policy.compile(&run.vars).map_err(|e| invalid(&e))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Runs: their variables, credentials and what bases and --from grant there.

/// What a set of rules grants, resolved on the host.
struct Grants {
    /// (resolved path, access, origin); paths missing on the host grant
    /// nothing (the launcher skips a base's and refuses a policy's).
    fs: Vec<(PathBuf, Access, Origin)>,
    plan: Plan,
}

impl Grants {
    fn new(plan: Plan, host: &dyn HostView) -> Grants {
        let fs = plan
            .filesystem
            .rules
            .iter()
            .filter(|r| exists(host, &r.path))
            .map(|r| (resolve(host, &r.path), r.access, r.origin))
            .collect();
        Grants { fs, plan }
    }

    /// The origin of the first rule granting `acc` on `real`; exec
    /// implies read, as Landlock is told.
    fn covers(&self, real: &Path, acc: Acc) -> Option<Origin> {
        let want = acc.access();
        self.fs
            .iter()
            .find(|(p, a, _)| {
                (a.contains(want) || (acc == Acc::Read && a.exec)) && real.starts_with(p)
            })
            .map(|(_, _, o)| *o)
    }

    fn covers_unix(&self, addr: &str) -> bool {
        self.plan.network.unix_rule(addr).is_some()
    }

    /// Whether the policy lets the agent reach `ip` (by one of `names`, or
    /// by address) on `port`.
    fn covers_inet(&self, ip: IpAddr, names: &BTreeSet<String>, port: u16, proto: u8) -> bool {
        let by_name = self.plan.network.dns.as_ref().is_some_and(|d| {
            names.iter().any(|n| {
                d.rules_for(n).any(|h| {
                    h.ranges()
                        .iter()
                        .any(|r| r.protos & proto != 0 && r.lo <= port && port <= r.hi)
                })
            })
        });
        by_name
            || self
                .plan
                .network
                .lookup(ip)
                .and_then(|v| port_allowed(v, port, proto))
                .is_some()
    }

    fn covers_listen(&self, ip: IpAddr, port: u16, proto: u8) -> bool {
        self.plan
            .network
            .listen_lookup(ip)
            .and_then(|v| port_allowed(v, port, proto))
            .is_some()
    }

    /// Resolved paths of the exec and write grants.
    fn with(&self, f: fn(Access) -> bool) -> impl Iterator<Item = &Path> {
        self.fs
            .iter()
            .filter(move |(_, a, _)| f(*a))
            .map(|(p, _, _)| p.as_path())
    }
}

/// A directory a variable stands for.
struct VarDir {
    var: &'static str,
    value: PathBuf,
    real: PathBuf,
}

/// A credential location, as the draft shows it and as it is on the host.
struct Cred {
    shown: String,
    path: PathBuf,
    real: PathBuf,
}

struct Run<'a> {
    id: String,
    records: &'a [&'a Record],
    mode: String,
    /// Who started it and where, as the header's run line says it.
    origin: String,
    vars: Vars,
    /// Longest value first; `{tmp}` before `{workdir}` before `{home}`
    /// when equal.
    dirs: Vec<VarDir>,
    creds: Vec<Cred>,
    /// Every base, compiled with this run's variables.
    bases: Vec<(&'static str, Grants)>,
    from: Option<Grants>,
}

impl<'a> Run<'a> {
    fn new(
        id: &str,
        records: &'a [&'a Record],
        from: Option<&FromPolicy>,
        host: &dyn HostView,
    ) -> Result<Run<'a>, DraftError> {
        let start = records
            .iter()
            .find(|r| r.kind == Kind::Lifecycle && r.action == "start")
            .ok_or_else(|| DraftError::NoStart { agent: id.into() })?;
        let detail = start.detail.as_ref();
        let dir = |field: &'static str, required: bool| -> Result<Option<PathBuf>, DraftError> {
            let bad = |why: &str| DraftError::BadStart {
                agent: id.into(),
                field,
                why: why.into(),
            };
            match detail.and_then(|d| d.get(field)) {
                None | Some(Value::Null) if required => Err(bad("missing")),
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.is_empty() && !required => Ok(None),
                Some(Value::String(s)) => {
                    let p = Path::new(s);
                    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
                        return Err(bad(&format!("{} (not an absolute path)", quote(s))));
                    }
                    Ok(Some(p.components().collect()))
                }
                Some(_) => Err(bad("not a string")),
            }
        };
        let workdir = dir("workdir", true)?.unwrap_or_default();
        let tmp = dir("tmp", true)?.unwrap_or_default();
        let home = dir("home", false)?;
        let mode = detail
            .and_then(|d| d.get("mode"))
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned();
        let origin = run_origin(start);
        let vars = Vars {
            workdir: workdir.clone(),
            home: home.clone().unwrap_or_else(|| PathBuf::from(NO_HOME)),
            tmp: tmp.clone(),
        };
        let mut dirs: Vec<VarDir> = [
            ("tmp", Some(tmp)),
            ("workdir", Some(workdir)),
            ("home", home),
        ]
        .into_iter()
        .filter_map(|(var, v)| v.map(|v| (var, v)))
        // A variable for `/` would turn every path into it.
        .filter(|(_, v)| v.parent().is_some())
        .map(|(var, value)| VarDir {
            var,
            real: resolve(host, &value),
            value,
        })
        .collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.value.components().count()));
        let mut creds: Vec<Cred> = HOST_CREDENTIALS
            .iter()
            .map(|p| Cred {
                shown: (*p).to_owned(),
                path: PathBuf::from(p),
                real: resolve(host, Path::new(p)),
            })
            .collect();
        if let Some(home) = dirs.iter().find(|d| d.var == "home") {
            for c in HOME_CREDENTIALS {
                let path = home.value.join(c);
                creds.push(Cred {
                    shown: format!("{{home}}/{c}"),
                    real: resolve(host, &path),
                    path,
                });
            }
        }
        let mut bases = Vec::new();
        for b in BASE_NAMES {
            let text = format!("[policy]\nname = \"b\"\ninclude = [\"{b}\"]\n");
            let plan = Policy::parse(&text, "base")
                .and_then(|p| p.compile(&vars))
                .map_err(|e| DraftError::Invalid {
                    message: format!("base {b}: {e}"),
                })?;
            bases.push((b, Grants::new(plan, host)));
        }
        let from = match from {
            Some(f) => Some(Grants::new(
                f.policy.compile(&vars).map_err(|e| DraftError::From {
                    file: f.label.clone(),
                    message: format!("with run {id}'s directories: {e}"),
                })?,
                host,
            )),
            None => None,
        };
        Ok(Run {
            id: id.to_owned(),
            records,
            mode,
            origin,
            vars,
            dirs,
            creds,
            bases,
            from,
        })
    }

    fn base(&self, name: &str) -> Option<&Grants> {
        self.bases.iter().find(|(b, _)| *b == name).map(|(_, g)| g)
    }

    /// The template of a path: the longest variable directory holding it
    /// replaced by the variable. A path named under a variable's directory
    /// that resolves out of it is written as it resolves: a rule on the
    /// name would be a rule on the link, in a tree the next run may not
    /// have.
    fn template(&self, named: &Path, real: &Path) -> Option<String> {
        let under = |p: &Path, d: &VarDir| p.starts_with(&d.value) || p.starts_with(&d.real);
        let best = self.dirs.iter().find(|d| named.starts_with(&d.value));
        let path = match best {
            Some(d) if under(real, d) => return self.with_var(named, d),
            Some(_) => real,
            None => named,
        };
        match self.dirs.iter().find(|d| path.starts_with(&d.value)) {
            Some(d) => self.with_var(path, d),
            None => match self.dirs.iter().find(|d| path.starts_with(&d.real)) {
                Some(d) => {
                    let rest = path.strip_prefix(&d.real).ok()?;
                    join_var(d.var, rest)
                }
                None => path.to_str().map(str::to_owned),
            },
        }
    }

    fn with_var(&self, p: &Path, d: &VarDir) -> Option<String> {
        join_var(d.var, p.strip_prefix(&d.value).ok()?)
    }

    /// A template as a path of this run.
    fn expand(&self, template: &str) -> PathBuf {
        let mut s = template.to_owned();
        for (var, v) in [
            ("{workdir}", &self.vars.workdir),
            ("{home}", &self.vars.home),
            ("{tmp}", &self.vars.tmp),
        ] {
            s = s.replace(var, &v.to_string_lossy());
        }
        Path::new(&s).components().collect()
    }

    fn var_dir(&self, var: &str) -> Option<&VarDir> {
        self.dirs.iter().find(|d| d.var == var)
    }

    /// Why a path is a credential, judged on each of its spellings
    /// (`.pem`/`.key` on the file it resolves to; the words on the part of
    /// the path below `{workdir}`, `{tmp}` or `{home}`).
    fn credential(&self, paths: &[&Path], real: &Path) -> Option<String> {
        for p in paths {
            for c in &self.creds {
                if p.starts_with(&c.path) || p.starts_with(&c.real) {
                    return Some(format!("credentials ({})", safe(&c.shown)));
                }
            }
        }
        if let Some(why) = paths.iter().find_map(|p| credential_location(p)) {
            return Some(why);
        }
        for p in paths {
            // The names below the run's directories: a work directory
            // called `tokenizer` holds no token.
            let below = self
                .dirs
                .iter()
                .find_map(|d| {
                    p.strip_prefix(&d.value)
                        .or_else(|_| p.strip_prefix(&d.real))
                        .ok()
                })
                .unwrap_or(p);
            for comp in below.components() {
                let Component::Normal(s) = comp else { continue };
                let lower = s.to_string_lossy().to_ascii_lowercase();
                if let Some(w) = CREDENTIAL_WORDS.iter().find(|w| lower.contains(*w)) {
                    return Some(format!(
                        "credential-like name (a path component holds {w:?})"
                    ));
                }
            }
        }
        if key_file(real) {
            return Some("private key (.pem/.key outside the certificate directories)".into());
        }
        None
    }

    /// The credential location a directory grant on `dir` would cover.
    fn holds_credentials(&self, dir: &Path, real: &Path) -> Option<&str> {
        self.creds
            .iter()
            .find(|c| {
                c.path.starts_with(dir) || c.real.starts_with(real) || c.path.starts_with(real)
            })
            .map(|c| c.shown.as_str())
    }
}

/// Who started a run and where, from its start record: the launcher's
/// uid and pid as guardd read them from the socket peer, and the
/// container it was launched from.
fn run_origin(start: &Record) -> String {
    let launcher = start.detail.as_ref().and_then(|d| d.get("launcher"));
    let num = |k: &str| {
        launcher
            .and_then(|l| l.get(k))
            .and_then(Value::as_u64)
            .map_or_else(|| "?".to_owned(), |n| n.to_string())
    };
    let by = if launcher.is_some() {
        format!("started by uid {} (pid {})", num("uid"), num("pid"))
    } else {
        "started by a launcher the start record does not name".to_owned()
    };
    let place = match start.agent.as_ref().and_then(|a| a.container.as_ref()) {
        None => "on the host".to_owned(),
        Some(c) => match &c.id {
            Some(id) => format!("in container {}", safe(id)),
            None => format!("in the container of cgroup {}", quote(&c.cgroup)),
        },
    };
    format!("{by}, {place}")
}

fn join_var(var: &str, rest: &Path) -> Option<String> {
    let rest = rest.to_str()?;
    Some(if rest.is_empty() {
        format!("{{{var}}}")
    } else {
        format!("{{{var}}}/{rest}")
    })
}

/// Whether the literal part of a template (after its variable) holds `{`
/// or `}`: a policy would read a variable there, in a path that was a
/// directory's name on the host.
fn braces(template: &str) -> bool {
    let literal = ["{workdir}", "{tmp}", "{home}"]
        .iter()
        .find_map(|v| template.strip_prefix(v))
        .unwrap_or(template);
    literal.contains(['{', '}'])
}

/// Paths of the agent's own `/proc` are compared as written: resolving
/// them here would name the drafting process.
fn proc_self(p: &Path) -> bool {
    p.starts_with("/proc/self") || p.starts_with("/proc/thread-self")
}

/// Why a path naming the agent's descriptors or processes is for review.
const AGENT_HANDLE: &str = "names a descriptor or process of the agent, which guardctl does not \
                            resolve (in its own process it names its own)";

/// A path naming one of the agent's descriptors (`/dev/fd/N`,
/// `/dev/stdin`, `/proc/self/fd/N`) or a process (`/proc/PID/...`):
/// resolved in guardctl's own process it would name guardctl's.
fn agent_handle(p: &Path) -> bool {
    if ["/dev/fd", "/dev/stdin", "/dev/stdout", "/dev/stderr"]
        .iter()
        .any(|d| p.starts_with(d))
    {
        return true;
    }
    let Ok(rest) = p.strip_prefix("/proc") else {
        return false;
    };
    let mut parts = rest.components().filter_map(|c| match c {
        Component::Normal(s) => Some(s.to_string_lossy()),
        _ => None,
    });
    match parts.next() {
        Some(first) if !first.is_empty() && first.bytes().all(|b| b.is_ascii_digit()) => true,
        Some(first) if first == "self" || first == "thread-self" => {
            parts.any(|n| n == "fd" || n == "fdinfo")
        }
        _ => false,
    }
}

fn exists(host: &dyn HostView, p: &Path) -> bool {
    if agent_handle(p) {
        return false;
    }
    proc_self(p) || host.canonical(p).is_some()
}

/// What a path names on the host: symlinks resolved as far as it exists,
/// the rest appended as written. `/proc` and the agent's descriptors are
/// taken as written.
fn resolve(host: &dyn HostView, p: &Path) -> PathBuf {
    if p.starts_with("/proc") || agent_handle(p) {
        return p.to_owned();
    }
    let mut rest = Vec::new();
    let mut cur = p;
    loop {
        if let Some(mut real) = host.canonical(cur) {
            real.extend(rest.iter().rev());
            return real;
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                cur = parent;
            }
            _ => return p.to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------
// What the records show.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Acc {
    Read,
    Write,
    Exec,
}

impl Acc {
    fn access(self) -> Access {
        match self {
            Acc::Read => Access::READ,
            Acc::Write => Access::WRITE,
            Acc::Exec => Access::EXEC,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Acc::Read => "read",
            Acc::Write => "write",
            Acc::Exec => "exec",
        }
    }
}

#[derive(Default)]
struct FileSeen {
    count: u64,
    dir: bool,
    recorded_real: Option<PathBuf>,
    /// Scripts (named paths) this program is the interpreter of.
    via: BTreeSet<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct NetKey {
    run: usize,
    ip: IpAddr,
    port: u16,
    proto: u8,
    names: BTreeSet<String>,
}

#[derive(Default)]
struct Seen {
    files: BTreeMap<(usize, PathBuf, Acc), FileSeen>,
    /// Outbound inet traffic, and binds/listens apart.
    connects: BTreeMap<NetKey, u64>,
    listens: BTreeMap<NetKey, u64>,
    /// Programs named relative to a working directory, as guardd found
    /// them after the exec.
    unverified: BTreeMap<(usize, PathBuf), u64>,
    unix: BTreeMap<(usize, String), u64>,
    /// Names asked, per run.
    queried: BTreeMap<(usize, String), u64>,
    syscalls: BTreeMap<String, u64>,
    watches: u64,
    refused_watches: u64,
    /// Peaks of the runs that reported them.
    peak_procs: Vec<u64>,
    peak_memory: Vec<u64>,
    /// Runs that learned on top of a policy (file records judged by one).
    on_policy: bool,
    /// Observations no rule can grant, for review.
    notes: BTreeSet<String>,
    /// How the draft departs from its rules, for the header.
    header: BTreeSet<String>,
}

fn detail<'r>(r: &'r Record, key: &str) -> Option<&'r Value> {
    r.detail.as_ref()?.get(key)
}

fn uses(r: &Record) -> u64 {
    1 + r.repeated().unwrap_or(0)
}

/// An absolute path without `.` and `..`, as a policy can name it; the
/// reason otherwise.
fn clean_path(s: &str) -> Result<PathBuf, String> {
    if s.starts_with('<') {
        return Err("unresolved path".into());
    }
    let p = Path::new(s);
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err("not an absolute, normalised path".into());
    }
    if s.contains(['{', '}']) {
        return Err("holds `{` or `}`, which a policy reads as a variable".into());
    }
    Ok(p.components().collect())
}

/// Splits `IP:PORT/proto` and `[IPV6]:PORT/proto`; IPv4-mapped addresses
/// are IPv4, as the kernel judges them.
fn parse_inet(target: &str) -> Option<(IpAddr, u16, u8)> {
    let (addr, proto) = target.rsplit_once('/')?;
    let proto = match proto {
        "tcp" => PROTO_TCP,
        "udp" => PROTO_UDP,
        _ => return None,
    };
    let (host, port) = addr.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: IpAddr = host.parse().ok()?;
    Some((ip.to_canonical(), port.parse().ok()?, proto))
}

fn str_list(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

impl Seen {
    fn note(&mut self, text: String) {
        self.notes.insert(text);
    }

    fn read(&mut self, run: usize, r: &Run) {
        // Names first: a connection is "by name" if an answer of the run
        // listed its address (one the agent was given: an answer dropped
        // in an enforcing run named nothing to it).
        let mut names: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
        for rec in r.records.iter().filter(|x| x.kind == Kind::Dns) {
            let name = detail(rec, "name")
                .and_then(Value::as_str)
                .or_else(|| rec.target.as_str());
            let Some(name) = name.and_then(normalize_name) else {
                continue;
            };
            if rec.verdict != Verdict::Denied {
                for a in str_list(detail(rec, "addresses"))
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                {
                    names
                        .entry(a.to_canonical())
                        .or_default()
                        .insert(name.clone());
                }
            }
            if rec.action == "query" {
                *self.queried.entry((run, name)).or_default() += uses(rec);
            }
        }
        for rec in r.records {
            match rec.kind {
                Kind::File => self.file(run, rec),
                Kind::Exec => self.exec(run, rec),
                Kind::Network => self.network(run, rec, &names),
                Kind::Syscall => self.syscall(rec),
                Kind::Lifecycle if rec.action == "exit" => {
                    let peak = detail(rec, "peak");
                    let get = |k: &str| peak.and_then(|p| p.get(k)).and_then(Value::as_u64);
                    if let Some(n) = get("processes") {
                        self.peak_procs.push(n);
                    }
                    if let Some(n) = get("memory_bytes") {
                        self.peak_memory.push(n);
                    }
                }
                _ => {}
            }
        }
    }

    fn path_of(&mut self, rec: &Record, target: Option<&str>, what: &str) -> Option<PathBuf> {
        let shown = || quote(&rec.target.to_string_lossy());
        let Some(t) = target else {
            self.note(format!(
                "{what} {}: not UTF-8, a policy cannot name it",
                shown()
            ));
            return None;
        };
        match clean_path(t) {
            Ok(p) => Some(p),
            Err(why) => {
                self.note(format!("{what} {}: {why}", quote(t)));
                None
            }
        }
    }

    /// An inotify watch: one placed while learning (verdict audit) is
    /// drafted as `inotify = true`; one refused (an enforcing run's
    /// seccomp) only noted.
    fn watch(&mut self, rec: &Record) {
        match rec.verdict {
            Verdict::Audit => self.watches += uses(rec),
            Verdict::Denied => self.refused_watches += uses(rec),
            Verdict::Allowed => {}
        }
    }

    fn file(&mut self, run: usize, rec: &Record) {
        if rec.action == "inotify_add_watch" {
            self.watch(rec);
            return;
        }
        if rec.verdict == Verdict::Denied {
            return;
        }
        if rec.rule == "filesystem.default-deny" {
            self.on_policy = true;
        }
        let access = detail(rec, "access").and_then(Value::as_str).unwrap_or("");
        let read = access.contains("read") || rec.action == "read";
        let write = access.contains("write") || rec.action == "write";
        let Some(named) = self.path_of(
            rec,
            rec.target.as_str(),
            &format!("{} of", safe(&rec.action)),
        ) else {
            return;
        };
        let dir = detail(rec, "directory").and_then(Value::as_bool) == Some(true);
        let recorded_real = detail(rec, "real")
            .and_then(Value::as_str)
            .and_then(|s| clean_path(s).ok());
        for (on, acc) in [(read, Acc::Read), (write, Acc::Write)] {
            if on {
                let f = self.files.entry((run, named.clone(), acc)).or_default();
                f.count += uses(rec);
                f.dir |= dir;
                if f.recorded_real.is_none() {
                    f.recorded_real.clone_from(&recorded_real);
                }
            }
        }
    }

    fn exec(&mut self, run: usize, rec: &Record) {
        if rec.verdict == Verdict::Denied {
            return;
        }
        let target = rec.target.as_str();
        // A program named relative to the working directory: guardd read
        // the directory after the exec, and the agent may have moved it
        // since, so the path is a guess.
        let relative = target.is_some_and(|t| !t.starts_with('/'));
        let unverified =
            relative || detail(rec, "path_unverified").and_then(Value::as_bool) == Some(true);
        let target = match target {
            Some(t) if relative => detail(rec, "path").and_then(Value::as_str).or(Some(t)),
            other => other,
        };
        let Some(named) = self.path_of(rec, target, "exec of") else {
            return;
        };
        if unverified {
            *self.unverified.entry((run, named.clone())).or_default() += uses(rec);
        } else {
            self.files
                .entry((run, named.clone(), Acc::Exec))
                .or_default()
                .count += uses(rec);
        }
        // A script's interpreter, as the kernel ran it (`bprm->interp`);
        // the script's `#!` line is not read here: the agent can rewrite
        // it. `env`'s own exec of the program it starts is a record of
        // its own.
        let interp = match detail(rec, "interpreter") {
            None | Some(Value::Null) => return,
            Some(v) => v.as_str(),
        };
        let what = format!("interpreter of {}", quote(&named.to_string_lossy()));
        let Some(interp) = self.path_of(rec, interp, &what) else {
            return;
        };
        if interp != named {
            let e = self.files.entry((run, interp, Acc::Exec)).or_default();
            e.count += uses(rec);
            e.via.insert(named);
        }
    }

    fn network(&mut self, run: usize, rec: &Record, names: &BTreeMap<IpAddr, BTreeSet<String>>) {
        let n = uses(rec);
        if detail(rec, "family").and_then(Value::as_str) == Some("unix") {
            if !matches!(rec.action.as_str(), "connect" | "sendmsg") {
                return;
            }
            match rec.target.as_str() {
                Some(t) if t.starts_with('/') || t.starts_with('@') => {
                    *self.unix.entry((run, t.to_owned())).or_default() += n;
                }
                _ => self.note(format!(
                    "Unix socket {}: not an absolute path or @name, a policy cannot name it",
                    quote(&rec.target.to_string_lossy())
                )),
            }
            return;
        }
        // Refusals that really happened (a source route, another agent's
        // resolver) are not what the agent needs.
        if rec.verdict == Verdict::Denied {
            return;
        }
        let Some((ip, port, proto)) = rec.target.as_str().and_then(parse_inet) else {
            return;
        };
        match rec.action.as_str() {
            "connect" | "sendmsg" => {
                // DNS: the names it asked for are drafted instead.
                if port == 53 {
                    return;
                }
                let mut set = names.get(&ip).cloned().unwrap_or_default();
                // The name guardd's resolver gave this address to, as the
                // kernel record names it: an answer listing it too.
                if let Some(name) = detail(rec, "name")
                    .and_then(Value::as_str)
                    .and_then(normalize_name)
                {
                    set.insert(name);
                }
                let key = NetKey {
                    run,
                    ip,
                    port,
                    proto,
                    names: set,
                };
                *self.connects.entry(key).or_default() += n;
            }
            "bind" | "listen" if port != 0 => {
                let key = NetKey {
                    run,
                    ip,
                    port,
                    proto,
                    names: BTreeSet::new(),
                };
                *self.listens.entry(key).or_default() += n;
            }
            _ => {}
        }
    }

    fn syscall(&mut self, rec: &Record) {
        if rec.action == "inotify_add_watch" {
            self.watch(rec);
        } else if rec.verdict == Verdict::Denied && rec.layer == "seccomp" {
            *self.syscalls.entry(rec.action.clone()).or_default() += uses(rec);
        }
    }
}

// ---------------------------------------------------------------------------
// From observations to rules.

/// One path of one run with one access.
struct Inst {
    run: usize,
    named: PathBuf,
    real: PathBuf,
    acc: Acc,
    dir: bool,
    count: u64,
    exists: bool,
    via: BTreeSet<PathBuf>,
    recorded_real: Option<PathBuf>,
}

/// What became of an observation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    /// Granted by an included base.
    Base(&'static str),
    /// Granted by a rule of `--from`.
    From,
    /// A credential: for review.
    Cred(String),
    /// A descriptor or process of the agent: for review.
    Agent(String),
    /// To be drafted.
    Learned,
}

/// Paths of the same template and access, merged over runs.
struct Entry {
    template: String,
    dir: bool,
    count: u64,
    insts: Vec<usize>,
}

/// A rule line (or a commented one) of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    value: String,
    comment: String,
}

/// One array of the draft: `--from`'s entries in their order, then the
/// drafted ones and the REVIEW ones, each sorted by a key.
#[derive(Default)]
struct List {
    from: Vec<Item>,
    active: BTreeMap<String, Item>,
    review: BTreeMap<String, Item>,
}

impl List {
    fn is_empty(&self) -> bool {
        self.from.is_empty() && self.active.is_empty() && self.review.is_empty()
    }

    /// Sorted by the value itself (paths).
    fn add(&mut self, review: bool, item: Item) {
        let key = item.value.clone();
        self.add_by(review, key, item);
    }

    /// Two items of one key are one line: the second adds nothing.
    fn add_by(&mut self, review: bool, key: String, item: Item) {
        let set = if review {
            &mut self.review
        } else {
            &mut self.active
        };
        set.entry(key).or_insert(item);
    }
}

/// A rule the draft grants on a path, and what it absorbed.
struct FsRule {
    acc: Acc,
    template: String,
    uses: u64,
    note: Option<String>,
    /// Directories cover their tree.
    tree: bool,
}

/// The file part of a draft while it is made.
struct Files {
    /// `--from` allows writing where programs run.
    allow_write_exec: bool,
    reads: Vec<Entry>,
    writes: Vec<Entry>,
    execs: Vec<Entry>,
    /// Entries a rule (or a REVIEW line) already accounts for.
    taken_reads: Vec<bool>,
    taken_writes: Vec<bool>,
    /// Path rules granted.
    rules: Vec<FsRule>,
    /// Programs granted: uses, and the scripts they interpret.
    programs: BTreeMap<String, (u64, String)>,
    read: List,
    write: List,
    exec: List,
}

impl Files {
    fn list(&mut self, acc: Acc) -> &mut List {
        match acc {
            Acc::Read => &mut self.read,
            Acc::Write => &mut self.write,
            Acc::Exec => &mut self.exec,
        }
    }
}

fn grouped(n: usize, dir: &str) -> String {
    format!(
        "{n} files in {}, grouped (rule: {GROUP_MIN} or more files of one directory)",
        quote(dir)
    )
}

struct Drafter<'a> {
    runs: &'a [Run<'a>],
    from: Option<&'a FromPolicy>,
    host: &'a dyn HostView,
    seen: Seen,
    insts: Vec<Inst>,
    fates: Vec<Fate>,
    /// Bases included, with the uses they grant.
    bases: BTreeMap<&'static str, u64>,
    /// [`Drafter::place`]'s memory.
    places: RefCell<HashMap<(usize, String), (bool, PathBuf)>>,
    /// [`Drafter::walk`]'s memory.
    walks: RefCell<HashMap<PathBuf, Option<String>>>,
}

fn uses_text(n: u64) -> String {
    if n == 1 {
        "1 use".into()
    } else {
        format!("{n} uses")
    }
}

fn paths_text(n: usize) -> String {
    if n == 1 {
        "1 path".into()
    } else {
        format!("{n} paths")
    }
}

fn ip_cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// Link-local addresses and the cloud metadata services.
fn metadata(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local() || a == Ipv4Addr::new(100, 100, 100, 200),
        IpAddr::V6(a) => {
            (a.segments()[0] & 0xffc0) == 0xfe80
                || a == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
        }
    }
}

/// The REVIEW reason of a rule that reached link-local or metadata
/// addresses.
fn metadata_text(addrs: &BTreeSet<IpAddr>) -> String {
    let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    format!(
        "link-local or cloud metadata address ({}): it hands out credentials",
        addrs.join(", ")
    )
}

fn host_rule(name: &str, ports: &BTreeSet<u16>, proto: u8) -> String {
    format!(
        "{{ host = {}, ports = {}, protocol = \"{}\" }}",
        quote(name),
        ports_text(ports),
        proto_name(proto)
    )
}

fn proto_name(p: u8) -> &'static str {
    if p == PROTO_UDP { "udp" } else { "tcp" }
}

/// `[443, 8000, "9000-9010"]`: runs of three or more ports as a range.
fn ports_text(ports: &BTreeSet<u16>) -> String {
    let mut runs: Vec<(u16, u16)> = Vec::new();
    for &p in ports {
        match runs.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(p) => *hi = p,
            _ => runs.push((p, p)),
        }
    }
    let parts: Vec<String> = runs
        .iter()
        .flat_map(|&(lo, hi)| {
            if hi - lo >= 2 {
                vec![format!("\"{lo}-{hi}\"")]
            } else {
                (lo..=hi).map(|p| p.to_string()).collect()
            }
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// A policy name from an agent name: characters a policy name may not
/// hold become `-`.
pub fn policy_name(agent: &str) -> String {
    let s: String = agent
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() { "draft".into() } else { s }
}

impl<'a> Drafter<'a> {
    fn new(
        runs: &'a [Run<'a>],
        from: Option<&'a FromPolicy>,
        host: &'a dyn HostView,
        mut seen: Seen,
    ) -> Drafter<'a> {
        let insts: Vec<Inst> = std::mem::take(&mut seen.files)
            .into_iter()
            .map(|((run, named, acc), f)| {
                let real = resolve(host, &named);
                Inst {
                    run,
                    exists: exists(host, &named),
                    real,
                    named,
                    acc,
                    dir: f.dir,
                    count: f.count,
                    via: f.via,
                    recorded_real: f.recorded_real,
                }
            })
            .collect();
        let mut d = Drafter {
            runs,
            from,
            host,
            seen,
            fates: Vec::new(),
            insts,
            bases: BTreeMap::new(),
            places: RefCell::new(HashMap::new()),
            walks: RefCell::new(HashMap::new()),
        };
        d.judge();
        d
    }

    fn run(&self, i: &Inst) -> &Run<'a> {
        &self.runs[i.run]
    }

    /// What flags an observation for review, if anything.
    fn flag(&self, i: &Inst) -> Option<Fate> {
        let mut paths = vec![i.named.as_path(), i.real.as_path()];
        if let Some(r) = &i.recorded_real {
            paths.push(r);
        }
        if let Some(why) = self.run(i).credential(&paths, &i.real) {
            return Some(Fate::Cred(why));
        }
        paths
            .iter()
            .any(|p| agent_handle(p))
            .then(|| Fate::Agent(AGENT_HANDLE.into()))
    }

    /// Which base or `--from` rule grants an observation, and which bases
    /// are included: `--from`'s, `base` whenever a program ran, then each
    /// other base (in [`BASE_NAMES`] order) that grants something no
    /// included one does.
    fn judge(&mut self) {
        let flags: Vec<Option<Fate>> = self.insts.iter().map(|i| self.flag(i)).collect();
        let mut included: Vec<&'static str> = Vec::new();
        if let Some(f) = self.from {
            included.extend(
                BASE_NAMES
                    .iter()
                    .filter(|b| f.policy.includes.iter().any(|i| i == *b)),
            );
        }
        let ran = self.insts.iter().any(|i| i.acc == Acc::Exec);
        if ran && !included.contains(&"base") {
            included.push("base");
        }
        let from_grants = |i: &Inst| {
            self.run(i)
                .from
                .as_ref()
                .and_then(|g| g.covers(&i.real, i.acc))
        };
        let by_base = |i: &Inst, b: &str| {
            self.run(i)
                .base(b)
                .is_some_and(|g| g.covers(&i.real, i.acc).is_some())
        };
        let unix_by_base =
            |run: &Run, addr: &str, b: &str| run.base(b).is_some_and(|g| g.covers_unix(addr));
        let unix_from =
            |run: &Run, addr: &str| run.from.as_ref().is_some_and(|g| g.covers_unix(addr));
        for b in BASE_NAMES {
            if included.contains(&b) {
                continue;
            }
            let needed = self.insts.iter().zip(&flags).any(|(i, c)| {
                c.is_none()
                    && from_grants(i).is_none()
                    && !included.iter().any(|inc| by_base(i, inc))
                    && by_base(i, b)
            }) || self.seen.unix.keys().any(|(r, addr)| {
                let run = &self.runs[*r];
                !unix_from(run, addr)
                    && !included.iter().any(|inc| unix_by_base(run, addr, inc))
                    && unix_by_base(run, addr, b)
            });
            if needed {
                included.push(b);
            }
        }
        let mut counts: BTreeMap<&'static str, u64> = included.iter().map(|b| (*b, 0)).collect();
        let mut fates = Vec::new();
        for (i, c) in self.insts.iter().zip(flags) {
            let fate = if let Some(flagged) = c {
                flagged
            } else if let Some(o) = from_grants(i) {
                match o {
                    Origin::Base(b) => Fate::Base(b),
                    Origin::Policy => Fate::From,
                }
            } else if let Some(b) = BASE_NAMES
                .iter()
                .find(|b| included.contains(b) && by_base(i, b))
            {
                Fate::Base(b)
            } else {
                Fate::Learned
            };
            if let Fate::Base(b) = fate {
                *counts.entry(b).or_default() += i.count;
            }
            fates.push(fate);
        }
        for ((r, addr), n) in &self.seen.unix {
            let run = &self.runs[*r];
            if unix_from(run, addr) {
                continue;
            }
            if let Some(b) = BASE_NAMES
                .iter()
                .find(|b| included.contains(b) && unix_by_base(run, addr, b))
            {
                *counts.entry(b).or_default() += n;
            }
        }
        // Every program start goes through the loader `base` grants.
        if let Some(n) = counts.get_mut("base") {
            *n += self
                .insts
                .iter()
                .filter(|i| i.acc == Acc::Exec && i.via.is_empty())
                .map(|i| i.count)
                .sum::<u64>();
        }
        self.fates = fates;
        self.bases = counts;
    }

    /// Learned observations of `acc`, merged by template.
    fn entries(&mut self, acc: Acc) -> Vec<Entry> {
        let mut by: BTreeMap<String, Entry> = BTreeMap::new();
        for (k, i) in self.insts.iter().enumerate() {
            if i.acc != acc || self.fates[k] != Fate::Learned {
                continue;
            }
            let t = match self.run(i).template(&i.named, &i.real) {
                Some(t) if braces(&t) => {
                    self.seen.notes.insert(format!(
                        "{} of {}: resolves to {}, which holds `{{` or `}}` (a policy reads it \
                         as a variable)",
                        acc.key(),
                        quote(&i.named.to_string_lossy()),
                        quote(&t)
                    ));
                    continue;
                }
                Some(t) => t,
                None => {
                    self.seen.notes.insert(format!(
                        "{} of {}: not UTF-8 once resolved, a policy cannot name it",
                        acc.key(),
                        quote(&i.named.to_string_lossy())
                    ));
                    continue;
                }
            };
            let e = by.entry(t.clone()).or_insert_with(|| Entry {
                template: t,
                dir: false,
                count: 0,
                insts: Vec::new(),
            });
            e.dir |= i.dir;
            e.count += i.count;
            e.insts.push(k);
        }
        by.into_values().collect()
    }

    fn entry_exists(&self, e: &Entry) -> bool {
        e.insts.iter().any(|&k| self.insts[k].exists)
    }

    /// A directory the agent opened, or one on the host now: a rule on it
    /// covers its tree, whatever the record said.
    fn entry_is_dir(&self, e: &Entry) -> bool {
        e.dir
            || e.insts
                .iter()
                .any(|&k| self.host.is_dir(&self.insts[k].real))
    }

    /// Whether a rule on `template` covers every path of `e` on the host.
    fn covers(&self, template: &str, e: &Entry) -> bool {
        e.insts.iter().all(|&k| {
            let i = &self.insts[k];
            i.real.starts_with(self.place(i.run, template).1)
        })
    }

    /// A template in run `run`: whether it exists, and what it resolves
    /// to. Remembered: the same few rules are asked about for every path.
    fn place(&self, run: usize, template: &str) -> (bool, PathBuf) {
        let key = (run, template.to_owned());
        if let Some(v) = self.places.borrow().get(&key) {
            return v.clone();
        }
        let p = self.runs[run].expand(template);
        let v = (exists(self.host, &p), resolve(self.host, &p));
        self.places.borrow_mut().insert(key, v.clone());
        v
    }

    /// Why a directory grant on `template` would be too wide, in any run:
    /// it would cover a credential location (of the run's home or the
    /// host, home directories, or one found below it on the host), or a
    /// credential the agent used in any run. (The least reason, so that
    /// the text does not depend on run order.)
    fn dir_unsafe(&self, template: &str) -> Option<String> {
        let mut why = BTreeSet::new();
        for (r, run) in self.runs.iter().enumerate() {
            let dir = run.expand(template);
            let real = self.place(r, template).1;
            if let Some(c) = run.holds_credentials(&dir, &real) {
                why.insert(format!("it holds credentials ({})", safe(c)));
            }
            for (root, what) in HOME_ROOTS {
                let root = Path::new(root);
                if root.starts_with(&dir) || root.starts_with(&real) {
                    why.insert(format!("it covers {} ({what})", root.display()));
                }
            }
        }
        // The walk last: a tree already refused need not be read.
        if why.is_empty() {
            for r in 0..self.runs.len() {
                if let Some(w) = self.walk(&self.place(r, template).1) {
                    why.insert(w);
                }
            }
        }
        if let Some(w) = why.into_iter().next() {
            return Some(w);
        }
        self.used_credential_under(template)
            .map(|c| format!("it holds {c}, a credential the agent used"))
    }

    /// A credential the agent used (in any run) that a grant on `template`
    /// would cover, quoted.
    fn used_credential_under(&self, template: &str) -> Option<String> {
        self.insts
            .iter()
            .zip(&self.fates)
            .filter(|(_, f)| matches!(f, Fate::Cred(_)))
            .filter(|(i, _)| i.real.starts_with(self.place(i.run, template).1))
            .map(|(i, _)| {
                let t = self.run(i).template(&i.named, &i.real);
                quote(&t.unwrap_or_else(|| i.named.to_string_lossy().into_owned()))
            })
            .min()
    }

    /// A credential location below `real` on the host, or why the tree
    /// could not be checked whole.
    fn walk(&self, real: &Path) -> Option<String> {
        if let Some(w) = self.walks.borrow().get(real) {
            return w.clone();
        }
        let hit = |p: &Path| credential_location(p).is_some() || key_file(p);
        let w = match self.host.find_below(real, &hit, WALK_LIMIT) {
            Below::Clean => None,
            Below::Found(p) => Some(format!(
                "it holds {} ({})",
                quote(&p.to_string_lossy()),
                credential_location(&p).unwrap_or_else(|| "a private key".into())
            )),
            Below::TooLarge => Some(format!(
                "it holds more than {WALK_LIMIT} entries, too many to check for credentials"
            )),
            Below::Unreadable(p) => Some(format!(
                "{} below it could not be read to check for credentials",
                quote(&p.to_string_lossy())
            )),
        };
        self.walks.borrow_mut().insert(real.to_owned(), w.clone());
        w
    }

    fn entry_runs(&self, e: &Entry) -> BTreeSet<usize> {
        e.insts.iter().map(|&k| self.insts[k].run).collect()
    }

    fn render(mut self, agent: &str) -> Result<(String, usize, toml::Table), DraftError> {
        let mut f = Files {
            allow_write_exec: self.from.is_some_and(|f| {
                f.policy
                    .compile(&self.runs[0].vars)
                    .is_ok_and(|p| p.filesystem.allow_write_exec)
            }),
            taken_reads: Vec::new(),
            taken_writes: Vec::new(),
            reads: self.entries(Acc::Read),
            writes: self.entries(Acc::Write),
            execs: self.entries(Acc::Exec),
            rules: Vec::new(),
            programs: BTreeMap::new(),
            read: List::default(),
            write: List::default(),
            exec: List::default(),
        };
        f.taken_reads = vec![false; f.reads.len()];
        f.taken_writes = vec![false; f.writes.len()];
        self.g1(&mut f);
        self.inside_writes(&mut f);
        self.programs(&mut f);
        self.directories(&mut f);
        self.other_reads(&mut f);
        self.other_writes(&mut f);
        self.withhold(&mut f);
        self.credentials(&mut f);
        for r in std::mem::take(&mut f.rules) {
            let comment = match &r.note {
                Some(n) => format!("{}; {n}", uses_text(r.uses)),
                None => uses_text(r.uses),
            };
            let item = Item {
                value: quote(&r.template),
                comment,
            };
            f.list(r.acc).add(false, item);
        }
        for (t, (n, via)) in &f.programs {
            f.exec.add(
                false,
                Item {
                    value: quote(t),
                    comment: format!("{}{via}", uses_text(*n)),
                },
            );
        }
        let net = self.network();
        self.write(agent, f.read, f.write, f.exec, net)
    }

    /// G1: `{workdir}` and `{tmp}` are one rule per access (write taking
    /// read in), unless the tree holds credentials, or writing there would
    /// meet a program a base or `--from` grants.
    fn g1(&mut self, f: &mut Files) {
        for var in ["workdir", "tmp"] {
            let t = format!("{{{var}}}");
            let holds = self
                .runs
                .iter()
                .filter_map(|run| {
                    let d = run.var_dir(var)?;
                    run.holds_credentials(&d.value, &d.real)
                        .map(|c| format!("credentials ({})", safe(c)))
                })
                .min()
                .or_else(|| {
                    self.used_credential_under(&t)
                        .map(|c| format!("{c}, a credential the agent used"))
                });
            if let Some(c) = holds {
                self.seen.header.insert(format!(
                    "{t} holds {c}, so it is not granted as a whole (G1):\n\
                     the files the agent used there are listed like any other."
                ));
                continue;
            }
            let under = |e: &Entry| e.template == t || e.template.starts_with(&format!("{t}/"));
            let w: Vec<usize> = (0..f.writes.len())
                .filter(|&k| under(&f.writes[k]))
                .collect();
            let r: Vec<usize> = (0..f.reads.len()).filter(|&k| under(&f.reads[k])).collect();
            for &k in &w {
                f.taken_writes[k] = true;
            }
            for &k in &r {
                f.taken_reads[k] = true;
            }
            let write_uses: u64 = w.iter().map(|&k| f.writes[k].count).sum();
            let read_uses: u64 = r.iter().map(|&k| f.reads[k].count).sum();
            let meets = if w.is_empty() || f.allow_write_exec {
                None
            } else {
                self.exec_grant_meeting(&t)
            };
            if let Some(p) = &meets {
                f.write.add(
                    true,
                    Item {
                        value: quote(&t),
                        comment: format!(
                            "{}; writes under {t} (G1), but {} may be run there: granting both \
                             needs allow_write_exec = true",
                            uses_text(write_uses),
                            quote(p)
                        ),
                    },
                );
            }
            if !w.is_empty() && meets.is_none() {
                f.rules.push(FsRule {
                    acc: Acc::Write,
                    template: t.clone(),
                    uses: write_uses + read_uses,
                    note: Some(format!(
                        "every path the agent wrote or read under {t}, one rule (G1: {})",
                        paths_text(w.len() + r.len())
                    )),
                    tree: true,
                });
            } else if !r.is_empty() {
                f.rules.push(FsRule {
                    acc: Acc::Read,
                    template: t.clone(),
                    uses: read_uses,
                    note: Some(format!(
                        "every path the agent read under {t}, one rule (G1: {})",
                        paths_text(r.len())
                    )),
                    tree: true,
                });
            }
        }
    }

    /// Writes under `{workdir}` or `{tmp}` when G1 could not take them
    /// (the tree holds credentials): granted one by one, G2 applying.
    fn inside_writes(&mut self, f: &mut Files) {
        let inside =
            |e: &Entry| e.template.starts_with("{workdir}") || e.template.starts_with("{tmp}");
        let others: Vec<bool> = f
            .writes
            .iter()
            .zip(&f.taken_writes)
            .map(|(e, t)| *t || !inside(e))
            .collect();
        for (dir, members) in self.groups(&f.writes, &others) {
            for &k in &members {
                f.taken_writes[k] = true;
            }
            f.rules.push(FsRule {
                acc: Acc::Write,
                template: dir.clone(),
                uses: members.iter().map(|&k| f.writes[k].count).sum(),
                note: Some(grouped(members.len(), &dir)),
                tree: true,
            });
        }
        for (k, e) in f.writes.iter().enumerate() {
            if f.taken_writes[k] || !inside(e) {
                continue;
            }
            f.taken_writes[k] = true;
            if self.entry_exists(e) {
                f.rules.push(FsRule {
                    acc: Acc::Write,
                    template: e.template.clone(),
                    uses: e.count,
                    note: None,
                    tree: self.entry_is_dir(e),
                });
            } else {
                self.seen.note(format!(
                    "write of {} ({}): gone at draft time, a policy can only name an existing path",
                    quote(&e.template),
                    uses_text(e.count)
                ));
            }
        }
    }

    /// Programs, one by one; a program the agent wrote, or one in a tree
    /// it may write, for review. G3: reading a granted program is granted
    /// with it.
    fn programs(&mut self, f: &mut Files) {
        let written: BTreeSet<&str> = f.writes.iter().map(|e| e.template.as_str()).collect();
        for e in &f.execs {
            let via: BTreeSet<String> = e
                .insts
                .iter()
                .flat_map(|&k| {
                    let i = &self.insts[k];
                    i.via
                        .iter()
                        .filter_map(|s| self.run(i).template(s, &resolve(self.host, s)))
                        .collect::<Vec<_>>()
                })
                .collect();
            let via_text = if via.is_empty() {
                String::new()
            } else {
                format!(
                    "; interpreter of {}",
                    via.iter().map(|v| quote(v)).collect::<Vec<_>>().join(", ")
                )
            };
            let writable = f
                .rules
                .iter()
                .find(|r| r.acc == Acc::Write && self.covers(&r.template, e))
                .map(|r| r.template.clone())
                .or_else(|| self.write_grant_over(e));
            let why = if written.contains(e.template.as_str()) {
                Some("written and executed by the agent: a program it wrote".to_owned())
            } else if let (Some(w), false) = (writable, f.allow_write_exec) {
                Some(format!(
                    "under the writable {}: granting it needs allow_write_exec = true, and then \
                     anything written there can be run",
                    quote(&w)
                ))
            } else {
                None
            };
            if let Some(why) = why {
                f.exec.add(
                    true,
                    Item {
                        value: quote(&e.template),
                        comment: format!("{}{via_text}; {why}", uses_text(e.count)),
                    },
                );
            } else if self.entry_exists(e) {
                f.programs.insert(e.template.clone(), (e.count, via_text));
            } else {
                self.seen.note(format!(
                    "exec of {} ({}): gone at draft time, a policy can only name an existing path",
                    quote(&e.template),
                    uses_text(e.count)
                ));
            }
        }
        for (k, e) in f.reads.iter().enumerate() {
            if f.taken_reads[k] {
                continue;
            }
            if let Some((n, _)) = f.programs.get_mut(&e.template) {
                *n += e.count;
                f.taken_reads[k] = true;
            }
        }
        let mut unverified: BTreeMap<String, u64> = BTreeMap::new();
        for ((r, named), n) in &self.seen.unverified {
            let run = &self.runs[*r];
            match run.template(named, &resolve(self.host, named)) {
                Some(t) if !braces(&t) => *unverified.entry(t).or_default() += n,
                _ => {
                    self.seen.notes.insert(format!(
                        "exec of {} ({}): named relative to a working directory, and a policy \
                         cannot name where it leads",
                        quote(&named.to_string_lossy()),
                        uses_text(*n)
                    ));
                }
            }
        }
        for (t, n) in unverified {
            if f.programs.contains_key(&t) {
                continue;
            }
            f.exec.add(
                true,
                Item {
                    value: quote(&t),
                    comment: format!(
                        "{}; program named relative to a working directory guardd read after \
                         the exec: which file ran is not certain",
                        uses_text(n)
                    ),
                },
            );
        }
    }

    /// Directories the agent opened, and G2 groups; a directory inside
    /// another folds into it.
    fn directories(&self, f: &mut Files) {
        let mut dirs: Vec<FsRule> = Vec::new();
        for (k, e) in f.reads.iter().enumerate() {
            // A gone directory is reported with the other gone paths.
            if f.taken_reads[k] || !self.entry_is_dir(e) || !self.entry_exists(e) {
                continue;
            }
            f.taken_reads[k] = true;
            let what = if e.dir {
                "a directory the agent opened"
            } else {
                "a directory (on this host; the record did not say so)"
            };
            match self.dir_unsafe(&e.template) {
                Some(why) => f.read.add(
                    true,
                    Item {
                        value: quote(&e.template),
                        comment: format!(
                            "{}; {what}, but a grant on it covers its whole tree and {why}: \
                             grant the files inside it instead",
                            uses_text(e.count)
                        ),
                    },
                ),
                None => dirs.push(FsRule {
                    acc: Acc::Read,
                    template: e.template.clone(),
                    uses: e.count,
                    note: Some(format!("{what}; a directory grant covers its whole tree")),
                    tree: true,
                }),
            }
        }
        for (dir, members) in self.groups(&f.reads, &f.taken_reads) {
            for &k in &members {
                f.taken_reads[k] = true;
            }
            dirs.push(FsRule {
                acc: Acc::Read,
                template: dir.clone(),
                uses: members.iter().map(|&k| f.reads[k].count).sum(),
                note: Some(grouped(members.len(), &dir)),
                tree: true,
            });
        }
        dirs.sort_by(|a, b| a.template.cmp(&b.template));
        let mut kept: Vec<FsRule> = Vec::new();
        for r in dirs {
            let outer = kept.iter_mut().find(|o| {
                r.template == o.template || r.template.starts_with(&format!("{}/", o.template))
            });
            match outer {
                Some(o) => o.uses += r.uses,
                None => kept.push(r),
            }
        }
        f.rules.extend(kept);
    }

    /// The remaining reads: absorbed by a rule covering them, else listed
    /// one by one if they still exist.
    fn other_reads(&mut self, f: &mut Files) {
        for (k, e) in f.reads.iter().enumerate() {
            if f.taken_reads[k] {
                continue;
            }
            // G3: a write rule on the path itself, or any directory rule.
            if let Some(r) = f.rules.iter_mut().find(|r| {
                (r.acc == Acc::Write && r.template == e.template)
                    || (r.tree && self.covers(&r.template, e))
            }) {
                r.uses += e.count;
            } else if self.entry_exists(e) {
                f.rules.push(FsRule {
                    acc: Acc::Read,
                    template: e.template.clone(),
                    uses: e.count,
                    note: None,
                    tree: false,
                });
            } else {
                self.seen.note(format!(
                    "read of {} ({}): gone at draft time, a policy can only name an existing path",
                    quote(&e.template),
                    uses_text(e.count)
                ));
            }
        }
    }

    /// Writes outside `{workdir}` and `{tmp}`: for review, G2 applying.
    fn other_writes(&self, f: &mut Files) {
        for (dir, members) in self.groups(&f.writes, &f.taken_writes) {
            for &k in &members {
                f.taken_writes[k] = true;
            }
            f.write.add(
                true,
                Item {
                    value: quote(&dir),
                    comment: format!(
                        "{}; write outside {{workdir}} and {{tmp}}: {}",
                        uses_text(members.iter().map(|&k| f.writes[k].count).sum()),
                        grouped(members.len(), &dir)
                    ),
                },
            );
        }
        for (k, e) in f.writes.iter().enumerate() {
            if f.taken_writes[k] {
                continue;
            }
            let gone = if self.entry_exists(e) {
                ""
            } else {
                " (gone at draft time: name an existing parent)"
            };
            f.write.add(
                true,
                Item {
                    value: quote(&e.template),
                    comment: format!(
                        "{}; write outside {{workdir}} and {{tmp}}{gone}",
                        uses_text(e.count)
                    ),
                },
            );
        }
    }

    /// Credentials: never granted by the draft itself (no rule it makes
    /// covers one: [`Drafter::withhold`]); the comment says what grants
    /// one anyway (an included base, `--from`).
    fn credentials(&mut self, f: &mut Files) {
        #[derive(Default)]
        struct Cr {
            uses: u64,
            why: BTreeSet<String>,
            by: BTreeSet<String>,
        }
        let mut creds: BTreeMap<(Acc, String), Cr> = BTreeMap::new();
        for (k, i) in self.insts.iter().enumerate() {
            let (Fate::Cred(why) | Fate::Agent(why)) = &self.fates[k] else {
                continue;
            };
            let run = self.run(i);
            let t = run
                .template(&i.named, &i.real)
                .unwrap_or_else(|| i.named.to_string_lossy().into_owned());
            if braces(&t) {
                self.seen.notes.insert(format!(
                    "{} of {} ({why}): resolves to {}, which holds `{{` or `}}` (a policy reads \
                     it as a variable)",
                    i.acc.key(),
                    quote(&i.named.to_string_lossy()),
                    quote(&t)
                ));
                continue;
            }
            let c = creds.entry((i.acc, t)).or_default();
            c.uses += i.count;
            c.why.insert(why.clone());
            if let Some(o) = run.from.as_ref().and_then(|g| g.covers(&i.real, i.acc)) {
                c.by.insert(match o {
                    Origin::Base(b) => format!("base {b:?}"),
                    Origin::Policy => self.from.map_or(String::new(), |f| safe(&f.label)),
                });
            }
            for b in self.bases.keys() {
                if run
                    .base(b)
                    .is_some_and(|g| g.covers(&i.real, i.acc).is_some())
                {
                    c.by.insert(format!("base {b:?}"));
                }
            }
        }
        for ((acc, t), c) in creds {
            let why = c.why.into_iter().next().unwrap_or_default();
            let granted = if c.by.is_empty() {
                String::new()
            } else {
                format!(
                    "; NOTE: granted anyway by {}, narrow that to keep it out",
                    c.by.into_iter().collect::<Vec<_>>().join(", ")
                )
            };
            f.list(acc).add(
                true,
                Item {
                    value: quote(&t),
                    comment: format!("{}; {why}{granted}", uses_text(c.uses)),
                },
            );
        }
    }

    /// No drafted rule may grant what is flagged: a rule whose path, as it
    /// compiles in any run, is a credential, or that would cover a
    /// credential the agent used, is for review instead.
    fn withhold(&self, f: &mut Files) {
        for r in std::mem::take(&mut f.rules) {
            match self.rule_problem(&r.template) {
                Some(why) => f.list(r.acc).add(
                    true,
                    Item {
                        value: quote(&r.template),
                        comment: format!("{}; {why}: not granted", uses_text(r.uses)),
                    },
                ),
                None => f.rules.push(r),
            }
        }
        for (t, (n, via)) in std::mem::take(&mut f.programs) {
            match self.rule_problem(&t) {
                Some(why) => f.exec.add(
                    true,
                    Item {
                        value: quote(&t),
                        comment: format!("{}{via}; {why}: not granted", uses_text(n)),
                    },
                ),
                None => {
                    f.programs.insert(t, (n, via));
                }
            }
        }
    }

    /// Why a rule on `template` must not be granted (the least reason).
    fn rule_problem(&self, template: &str) -> Option<String> {
        let mut why = BTreeSet::new();
        for (r, run) in self.runs.iter().enumerate() {
            let named = run.expand(template);
            let real = self.place(r, template).1;
            if let Some(c) = run.credential(&[&named, &real], &real) {
                why.insert(format!("its path is flagged: {c}"));
            }
            if agent_handle(&named) || agent_handle(&real) {
                why.insert(format!("its path {AGENT_HANDLE}"));
            }
        }
        why.into_iter().next().or_else(|| {
            self.used_credential_under(template)
                .map(|c| format!("it would grant {c}, a credential the agent used"))
        })
    }

    /// An exec grant of an included base or of `--from` inside or above
    /// the tree `template` names (in any run), as the policy names it.
    /// (The least path, so that the text does not depend on run order.)
    fn exec_grant_meeting(&self, template: &str) -> Option<String> {
        let mut found = BTreeSet::new();
        for run in self.runs {
            let w = resolve(self.host, &run.expand(template));
            for g in self.grants_of(run) {
                found.extend(
                    g.with(|a| a.exec)
                        .filter(|p| p.starts_with(&w) || w.starts_with(p))
                        .map(|p| p.to_string_lossy().into_owned()),
                );
            }
        }
        found.into_iter().next()
    }

    /// The included bases and `--from`, compiled for `run`.
    fn grants_of<'r>(&'r self, run: &'r Run) -> impl Iterator<Item = &'r Grants> {
        run.bases
            .iter()
            .filter(|(b, _)| self.bases.contains_key(b))
            .map(|(_, g)| g)
            .chain(run.from.as_ref())
    }

    /// A write grant of an included base or of `--from` over a program
    /// (the least, as above).
    fn write_grant_over(&self, e: &Entry) -> Option<String> {
        let mut found = BTreeSet::new();
        for &k in &e.insts {
            let i = &self.insts[k];
            for g in self.grants_of(self.run(i)) {
                found.extend(
                    g.with(|a| a.write)
                        .filter(|p| i.real.starts_with(p))
                        .map(|p| p.to_string_lossy().into_owned()),
                );
            }
        }
        found.into_iter().next()
    }

    /// G2: directories holding [`GROUP_MIN`] or more of the untaken
    /// files, that exist, are directories and are safe to grant whole;
    /// with the entries each takes.
    fn groups(&self, entries: &[Entry], taken: &[bool]) -> Vec<(String, Vec<usize>)> {
        let mut by_dir: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (k, e) in entries.iter().enumerate() {
            if taken[k] || self.entry_is_dir(e) {
                continue;
            }
            if let Some(parent) = parent_template(&e.template) {
                by_dir.entry(parent).or_default().push(k);
            }
        }
        let mut out = Vec::new();
        for (dir, members) in by_dir {
            let members: Vec<usize> = members
                .into_iter()
                .filter(|&k| self.covers(&dir, &entries[k]))
                .collect();
            if members.len() < GROUP_MIN {
                continue;
            }
            let runs: BTreeSet<usize> = members
                .iter()
                .flat_map(|&k| self.entry_runs(&entries[k]))
                .collect();
            let is_dir = runs.iter().all(|&r| {
                let p = self.runs[r].expand(&dir);
                exists(self.host, &p) && self.host.is_dir(&p)
            });
            if !is_dir || self.dir_unsafe(&dir).is_some() {
                continue;
            }
            out.push((dir, members));
        }
        out
    }

    /// Network rules: allow (by name where reached by name), listen and
    /// Unix sockets for review, `[network.dns] answers_allowed`.
    fn network(&mut self) -> NetOut {
        let mut out = NetOut::default();
        #[derive(Default)]
        struct Agg {
            ports: BTreeSet<u16>,
            uses: u64,
            metadata: BTreeSet<IpAddr>,
            /// Internal addresses the name was connected to.
            internal: BTreeSet<IpAddr>,
            /// For a name that shared an address with others: the
            /// address and the other names.
            shared: BTreeMap<IpAddr, BTreeSet<String>>,
        }
        // Target: Ok(name) or Err(address).
        let mut allow: BTreeMap<(Result<String, IpAddr>, u8), Agg> = BTreeMap::new();
        let mut shared: BTreeMap<(String, u8), Agg> = BTreeMap::new();
        let mut from_internal: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
        let mut connected: BTreeSet<String> = BTreeSet::new();
        for (k, n) in &self.seen.connects {
            let run = &self.runs[k.run];
            for name in &k.names {
                connected.insert(name.clone());
            }
            let covered = run
                .from
                .as_ref()
                .is_some_and(|g| g.covers_inet(k.ip, &k.names, k.port, k.proto));
            if covered {
                // A name --from allows may still need the internal address
                // it was connected to allowed as an answer.
                if is_internal(k.ip)
                    && !run
                        .from
                        .as_ref()
                        .and_then(|g| g.plan.network.dns.as_ref())
                        .is_some_and(|d| d.answer_allowed(k.ip))
                    && !k.names.is_empty()
                {
                    from_internal
                        .entry(k.ip)
                        .or_default()
                        .extend(k.names.iter().cloned());
                }
                continue;
            }
            // Several names answered with this address: which one the agent
            // reached is unknown, so none is granted by it.
            if k.names.len() > 1 {
                for name in &k.names {
                    let a = shared.entry((name.clone(), k.proto)).or_default();
                    a.ports.insert(k.port);
                    a.uses += n;
                    if metadata(k.ip) {
                        a.metadata.insert(k.ip);
                    }
                    a.shared
                        .entry(k.ip)
                        .or_default()
                        .extend(k.names.iter().filter(|o| *o != name).cloned());
                }
                continue;
            }
            let t = match k.names.iter().next() {
                Some(name) => Ok(name.clone()),
                None => Err(k.ip),
            };
            let by_name = t.is_ok();
            let a = allow.entry((t, k.proto)).or_default();
            a.ports.insert(k.port);
            a.uses += n;
            if metadata(k.ip) {
                a.metadata.insert(k.ip);
            }
            if by_name && is_internal(k.ip) {
                a.internal.insert(k.ip);
            }
        }
        let mut answers: BTreeMap<IpAddr, (BTreeSet<String>, bool)> = BTreeMap::new();
        // A name is flagged with every address it reached: its rule would
        // reach the metadata service again.
        let mut flagged_names: BTreeSet<String> = BTreeSet::new();
        for ((t, _), a) in &allow {
            if let Ok(name) = t
                && !a.metadata.is_empty()
            {
                flagged_names.insert(name.clone());
            }
        }
        for ((t, proto), a) in &allow {
            let (value, sort) = match t {
                Ok(name) => (
                    host_rule(name, &a.ports, *proto),
                    format!("0 {name} {proto}"),
                ),
                Err(ip) => (
                    format!(
                        "{{ cidr = \"{}\", ports = {}, protocol = \"{}\" }}",
                        ip_cidr(*ip),
                        ports_text(&a.ports),
                        proto_name(*proto)
                    ),
                    format!("1 {} {proto}", sort_ip(*ip)),
                ),
            };
            let review = match t {
                Ok(name) => flagged_names.contains(name),
                Err(ip) => metadata(*ip),
            };
            let by = match t {
                Ok(_) => "; reached by name".to_owned(),
                Err(_) => String::new(),
            };
            if review {
                out.allow.add_by(
                    true,
                    sort,
                    Item {
                        value,
                        comment: format!(
                            "{}{by}; {}",
                            uses_text(a.uses),
                            metadata_text(&a.metadata)
                        ),
                    },
                );
            } else {
                out.allow.add_by(
                    false,
                    sort,
                    Item {
                        value,
                        comment: format!("{}{by}", uses_text(a.uses)),
                    },
                );
            }
            if let Ok(name) = t {
                for ip in &a.internal {
                    let e = answers.entry(*ip).or_default();
                    e.0.insert(name.clone());
                    e.1 |= review;
                }
            }
        }
        for ((name, proto), a) in &shared {
            let addrs: Vec<String> = a.shared.keys().map(ToString::to_string).collect();
            let others: BTreeSet<&String> = a.shared.values().flatten().collect();
            let mut comment = format!(
                "{}; shared the address{} {} with {}: the records cannot tell which name was \
                 reached, so neither is granted",
                uses_text(a.uses),
                if addrs.len() == 1 { "" } else { "es" },
                addrs.join(", "),
                others
                    .iter()
                    .map(|n| quote(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if !a.metadata.is_empty() {
                comment = format!("{comment}; {}", metadata_text(&a.metadata));
            }
            out.allow.add_by(
                true,
                format!("0 {name} {proto}"),
                Item {
                    value: host_rule(name, &a.ports, *proto),
                    comment,
                },
            );
        }
        for (ip, names) in from_internal {
            answers.entry(ip).or_default().0.extend(names);
        }
        for (ip, (names, review)) in answers {
            let names = names
                .iter()
                .map(|n| quote(n))
                .collect::<Vec<_>>()
                .join(", ");
            // The metadata service answers with credentials: never let a
            // name resolve to it unreviewed.
            let item = if metadata(ip) {
                Item {
                    value: quote(&ip_cidr(ip)),
                    comment: format!(
                        "{names} resolved here and was connected to; {}",
                        metadata_text(&BTreeSet::from([ip]))
                    ),
                }
            } else {
                Item {
                    value: quote(&ip_cidr(ip)),
                    comment: format!(
                        "{names} resolved here (loopback or private) and was connected to: \
                         allowed so the name keeps working; answers into this range are not \
                         treated as DNS rebinding"
                    ),
                }
            };
            out.answers
                .add_by(review || metadata(ip), sort_ip(ip), item);
        }
        // Names asked and never connected to.
        let mut unused: BTreeMap<String, u64> = BTreeMap::new();
        for ((r, name), n) in &self.seen.queried {
            if connected.contains(name) {
                continue;
            }
            let by_from = self.runs[*r]
                .from
                .as_ref()
                .and_then(|g| g.plan.network.dns.as_ref())
                .is_some_and(|d| d.rules_for(name).next().is_some());
            if !by_from {
                *unused.entry(name.clone()).or_default() += n;
            }
        }
        for (name, n) in unused {
            out.allow.add_by(
                true,
                format!("2 {name}"),
                Item {
                    value: format!("{{ host = {} }}", quote(&name)),
                    comment: format!(
                        "{n} quer{}; asked for but never connected to: uncommented, every \
                         port of both protocols (narrow it)",
                        if n == 1 { "y" } else { "ies" }
                    ),
                },
            );
        }
        // Listening: always for review.
        let mut listen: BTreeMap<(IpAddr, u8), (BTreeSet<u16>, u64)> = BTreeMap::new();
        for (k, n) in &self.seen.listens {
            let covered = self.runs[k.run]
                .from
                .as_ref()
                .is_some_and(|g| g.covers_listen(k.ip, k.port, k.proto));
            if covered {
                continue;
            }
            let e = listen.entry((k.ip, k.proto)).or_default();
            e.0.insert(k.port);
            e.1 += n;
            // `::` also accepts IPv4: binding it needs 0.0.0.0 too.
            if k.ip == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
                let e = listen
                    .entry((IpAddr::V4(Ipv4Addr::UNSPECIFIED), k.proto))
                    .or_default();
                e.0.insert(k.port);
                e.1 += n;
            }
        }
        for ((ip, proto), (ports, n)) in listen {
            let wild = if ip.is_unspecified() {
                "; the wildcard address: every interface of the host"
            } else {
                ""
            };
            out.listen.add_by(
                true,
                format!("{} {proto}", sort_ip(ip)),
                Item {
                    value: format!(
                        "{{ cidr = \"{}\", ports = {}, protocol = \"{}\" }}",
                        ip_cidr(ip),
                        ports_text(&ports),
                        proto_name(proto)
                    ),
                    comment: format!(
                        "{}; the agent listened here: anyone who can reach the port can talk to it{wild}",
                        uses_text(n)
                    ),
                },
            );
        }
        // Unix sockets: refused in learn mode, for review.
        let mut unix: BTreeMap<String, u64> = BTreeMap::new();
        for ((r, addr), n) in &self.seen.unix {
            let run = &self.runs[*r];
            let covered = run.from.as_ref().is_some_and(|g| g.covers_unix(addr))
                || self
                    .bases
                    .keys()
                    .any(|b| run.base(b).is_some_and(|g| g.covers_unix(addr)));
            if !covered {
                *unix.entry(addr.clone()).or_default() += n;
            }
        }
        for (addr, n) in unix {
            out.allow.add_by(
                true,
                format!("3 {addr}"),
                Item {
                    value: format!("{{ unix = {} }}", quote(&addr)),
                    comment: format!(
                        "{}; a Unix socket (refused while learning): it reaches a local daemon, with that daemon's powers",
                        uses_text(n)
                    ),
                },
            );
        }
        out
    }

    /// The whole text, and the document it is meant to parse to.
    fn write(
        &mut self,
        agent: &str,
        read: List,
        write: List,
        exec: List,
        net: NetOut,
    ) -> Result<(String, usize, toml::Table), DraftError> {
        let from = match self.from {
            Some(f) => Some(FromRaw::new(f, self)?),
            None => None,
        };
        let mut read = read;
        let mut write = write;
        let mut exec = exec;
        let NetOut {
            mut allow,
            mut listen,
            mut answers,
        } = net;
        let mut dns_keys: Vec<KeyLine> = Vec::new();
        let mut process_from: Vec<KeyLine> = Vec::new();
        let mut allow_write_exec = None;
        if let Some(f) = &from {
            read.from.clone_from(&f.read);
            write.from.clone_from(&f.write);
            exec.from.clone_from(&f.exec);
            allow.from.clone_from(&f.allow);
            listen.from.clone_from(&f.listen);
            answers.from.clone_from(&f.answers);
            dns_keys.clone_from(&f.dns_keys);
            process_from.clone_from(&f.process);
            allow_write_exec.clone_from(&f.allow_write_exec);
        }
        let process = self.process(from.as_ref());
        let notes = self.notes();
        let review = [&read, &write, &exec, &allow, &listen, &answers]
            .iter()
            .map(|l| l.review.len())
            .sum::<usize>()
            + notes.len();

        let mut o = Out::default();
        let name = policy_name(agent);
        let runs = self.runs.len();
        let modes: BTreeSet<&str> = self.runs.iter().map(|r| r.mode.as_str()).collect();
        o.comment(&format!(
            "Drafted by `guardctl policy draft` from {runs} run{} of agent {} (mode: {}).",
            if runs == 1 { "" } else { "s" },
            quote(agent),
            safe(&modes.into_iter().collect::<Vec<_>>().join(", "))
        ));
        // Which runs were merged, so that a reviewer sees whose work the
        // draft grants; a draft of one run stays the same under any id.
        if runs > 1 {
            for r in self.runs {
                o.comment(&format!(
                    "run {}: mode {}, {}",
                    safe(&r.id),
                    safe(&r.mode),
                    r.origin
                ));
            }
        }
        if name != agent {
            o.comment(
                "The policy name is the agent's name with the characters a policy name cannot hold replaced by `-`.",
            );
        }
        o.comment(
            "It grants what the runs were seen doing and nothing more; each rule says how\n\
             often it was used. Grouping (docs/policy.md, \"Learning a policy\"):\n  \
             G1 every path under {workdir}, and under {tmp}, is one rule per access;\n  \
             G2 elsewhere, 4 or more files of one access directly in one directory\n     \
             become that directory; programs are always listed one by one;\n  \
             G3 exec implies read, and write implies read.",
        );
        if let Some(f) = self.from {
            o.comment(&format!(
                "The rules of {} are kept (marked `from`); what they grant is not drafted again.",
                safe(&f.label)
            ));
        } else if self.seen.on_policy {
            o.comment(
                "WARNING: these runs learned on top of a policy, so what that policy allowed\n\
                 was not recorded: draft again with --from POLICY to keep its rules.",
            );
        }
        for n in &self.seen.header {
            o.comment(&format!("NOTE: {n}"));
        }
        if self.runs.iter().any(|r| r.mode != "learn") {
            o.comment(
                "NOTE: not every run was in learn mode; outside it, files and programs are not\n\
                 observed, only refused.",
            );
        }
        if review > 0 {
            o.comment(&format!(
                "REVIEW: {review} item{} observed but not granted: the lines marked REVIEW below.\n\
                 Uncomment a rule line only after deciding the agent needs it.",
                if review == 1 { " is" } else { "s are" }
            ));
        }
        o.table("policy");
        o.value("name", &quote(&name), "")?;
        if !self.bases.is_empty() {
            let mut include = List::default();
            for (k, b) in BASE_NAMES.iter().enumerate() {
                let Some(n) = self.bases.get(b) else { continue };
                let kept = self
                    .from
                    .is_some_and(|f| f.policy.includes.iter().any(|i| i == b));
                let mut c = uses_text(*n);
                if kept {
                    c = format!(
                        "from {}; {c}",
                        safe(self.from.map_or("", |f| f.label.as_str()))
                    );
                } else if *b == "base" {
                    c.push_str("; the dynamic loader of every program start counts as one");
                }
                include.add_by(
                    false,
                    format!("{k:02}"),
                    Item {
                        value: quote(b),
                        comment: c,
                    },
                );
            }
            o.list("include", &include)?;
        }
        // Always a [filesystem] table: without one, files are not restricted.
        o.table("filesystem");
        if let Some(c) = &allow_write_exec {
            o.value("allow_write_exec", "true", c)?;
        }
        o.list("read", &read)?;
        o.list("write", &write)?;
        o.list("exec", &exec)?;
        if !allow.is_empty() || !listen.is_empty() || !answers.is_empty() || !dns_keys.is_empty() {
            o.table("network");
            o.list("allow", &allow)?;
            o.list("listen", &listen)?;
            if !answers.is_empty() || !dns_keys.is_empty() {
                o.table("network.dns");
                for k in &dns_keys {
                    o.value(&k.key, &k.value, &k.comment)?;
                }
                o.list("answers_allowed", &answers)?;
            }
        }
        if !process.is_empty() || !process_from.is_empty() {
            o.table("process");
            for k in process_from.iter().chain(&process) {
                o.value(&k.key, &k.value, &k.comment)?;
            }
        }
        if !notes.is_empty() {
            o.text.push('\n');
            o.comment("REVIEW: observed, and not drafted as a rule:");
            for n in &notes {
                o.comment(&format!("  {n}"));
            }
        }
        Ok((o.text, review, o.doc))
    }

    /// `[process]` lines learned (those `--from` sets are kept from it,
    /// unless the runs needed more).
    fn process(&self, from: Option<&FromRaw>) -> Vec<KeyLine> {
        let mut out = Vec::new();
        let set = |k: &str| from.is_some_and(|f| f.process_keys.contains(k));
        let fp = self.from.map(|f| &f.policy.process);
        let raised = |k: &str| {
            if set(k) {
                format!(
                    " (raised from the value of {})",
                    self.from.map_or(String::new(), |f| safe(&f.label))
                )
            } else {
                String::new()
            }
        };
        let runs = self.runs.len();
        let of_runs = |n: usize| {
            if n == runs {
                String::new()
            } else {
                format!(" (of the {n} of {runs} runs that reported one)")
            }
        };
        if let Some(&peak) = self.seen.peak_procs.iter().max() {
            let want = process_limit(peak);
            let have = fp.and_then(|p| p.max_processes).map(u64::from);
            if !set("max_processes") || have.is_some_and(|h| h < want) {
                out.push(KeyLine {
                    key: "max_processes".into(),
                    value: want.to_string(),
                    comment: format!(
                        "peak at most {} processes{}: twice the peak, rounded up to a multiple \
                         of {PROCESS_STEP}{}",
                        want / 2,
                        of_runs(self.seen.peak_procs.len()),
                        raised("max_processes")
                    ),
                });
            }
        }
        if let Some(&peak) = self.seen.peak_memory.iter().max() {
            let limit = memory_limit(peak);
            let mib = limit / MIB;
            let have = fp.and_then(|p| p.memory_bytes);
            if !set("memory") || have.is_some_and(|h| h < limit) {
                out.push(KeyLine {
                    key: "memory".into(),
                    value: format!("\"{mib}M\""),
                    comment: format!(
                        "peak at most {} MiB{}: twice the peak, rounded up to a multiple of {} MiB{}",
                        mib / 2,
                        of_runs(self.seen.peak_memory.len()),
                        MEMORY_STEP / MIB,
                        raised("memory")
                    ),
                });
            }
        }
        if self.seen.watches > 0 && !fp.is_some_and(|p| p.inotify) {
            out.push(KeyLine {
                key: "inotify".into(),
                value: "true".into(),
                comment: format!(
                    "{} placed; a watch reports the names of files in any directory it can reach",
                    if self.seen.watches == 1 {
                        "1 inotify watch".to_owned()
                    } else {
                        format!("{} inotify watches", self.seen.watches)
                    }
                ),
            });
        }
        out
    }

    fn notes(&self) -> Vec<String> {
        // Notes quote what they cite already.
        let mut notes: Vec<String> = self.seen.notes.iter().cloned().collect();
        if !self.seen.syscalls.is_empty() {
            let calls: Vec<String> = self
                .seen
                .syscalls
                .iter()
                .map(|(c, n)| format!("{} ({})", safe(c), uses_text(*n)))
                .collect();
            notes.push(format!(
                "system calls refused by seccomp: {}; no policy key allows them",
                calls.join(", ")
            ));
        }
        if self.seen.refused_watches > 0 {
            notes.push(format!(
                "inotify watches refused ({}, by seccomp in an enforcing run): not drafted; \
                 `[process] inotify = true` would allow them, and a watch reports the names of \
                 files in any directory it can reach",
                uses_text(self.seen.refused_watches)
            ));
        }
        notes
    }
}

fn parent_template(t: &str) -> Option<String> {
    let (parent, _) = t.rsplit_once('/')?;
    Some(if parent.is_empty() {
        "/".into()
    } else {
        parent.into()
    })
}

fn sort_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("4 {:010}", u32::from(a)),
        IpAddr::V6(a) => format!("6 {:039}", u128::from(a)),
    }
}

/// Network lists before rendering.
#[derive(Default)]
struct NetOut {
    allow: List,
    listen: List,
    answers: List,
}

/// A `key = value  # comment` line of a table.
#[derive(Debug, Clone)]
struct KeyLine {
    key: String,
    value: String,
    comment: String,
}

/// The draft's text as it is written, and the document it is meant to
/// parse to: every active value is parsed on its own as it is written, so
/// that the whole text can be checked to hold exactly these values and no
/// other ([`verify`]).
#[derive(Default)]
struct Out {
    text: String,
    doc: toml::Table,
    /// The table being written (`network.dns`).
    table: Vec<String>,
}

impl Out {
    /// Comment lines: each line of `s` becomes one `# ` line, so nothing in
    /// it can start a line of its own.
    fn comment(&mut self, s: &str) {
        for line in s.split('\n') {
            let line = one_line(line);
            if line.is_empty() {
                self.text.push_str("#\n");
            } else {
                let _ = writeln!(self.text, "# {line}");
            }
        }
    }

    fn table(&mut self, path: &str) {
        if self.text.is_empty() || self.text.ends_with("\n\n") {
            let _ = writeln!(self.text, "[{path}]");
        } else {
            let _ = writeln!(self.text, "\n[{path}]");
        }
        self.table = path.split('.').map(str::to_owned).collect();
        let _ = self.current();
    }

    /// The document's table being written, made where missing.
    fn current(&mut self) -> Result<&mut toml::Table, DraftError> {
        let mut t = &mut self.doc;
        for k in &self.table {
            let v = t
                .entry(k.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            t = match v {
                toml::Value::Table(inner) => inner,
                _ => {
                    return Err(DraftError::Invalid {
                        message: format!("[{}] is not a table", self.table.join(".")),
                    });
                }
            };
        }
        Ok(t)
    }

    fn value(&mut self, key: &str, value: &str, comment: &str) -> Result<(), DraftError> {
        let v = parse_value(value)?;
        self.current()?.insert(key.to_owned(), v);
        if comment.is_empty() {
            let _ = writeln!(self.text, "{key} = {value}");
        } else {
            let _ = writeln!(self.text, "{key} = {value}  # {}", one_line(comment));
        }
        Ok(())
    }

    /// One array, multi-line: `--from`'s entries, the drafted ones, then
    /// the REVIEW ones commented out.
    fn list(&mut self, key: &str, l: &List) -> Result<(), DraftError> {
        if l.is_empty() {
            return Ok(());
        }
        let mut values = Vec::new();
        let _ = writeln!(self.text, "{key} = [");
        for i in l.from.iter().chain(l.active.values()) {
            values.push(parse_value(&i.value)?);
            let _ = writeln!(self.text, "  {},  # {}", i.value, one_line(&i.comment));
        }
        if !l.review.is_empty() {
            self.text
                .push_str("  # REVIEW: not granted; uncomment a line to grant it.\n");
            for i in l.review.values() {
                let _ = writeln!(
                    self.text,
                    "  # {},  # {}",
                    one_line(&i.value),
                    one_line(&i.comment)
                );
            }
        }
        self.text.push_str("]\n");
        self.current()?
            .insert(key.to_owned(), toml::Value::Array(values));
        Ok(())
    }
}

/// A value as it is written into the draft, parsed on its own.
fn parse_value(value: &str) -> Result<toml::Value, DraftError> {
    let invalid = |why: String| DraftError::Invalid {
        message: format!("the value {} {why}", quote(value)),
    };
    let mut t: toml::Table = toml::from_str(&format!("v = {value}\n"))
        .map_err(|e| invalid(format!("is not TOML: {e}")))?;
    t.remove("v")
        .ok_or_else(|| invalid("is not one value".into()))
        .and_then(|v| {
            if t.is_empty() {
                Ok(v)
            } else {
                Err(invalid("is more than one value".into()))
            }
        })
}

/// The second line of defence against text the agent chose (file and host
/// names) becoming a rule: the draft, parsed whole, holds exactly the
/// values it was written with.
fn verify(text: &str, meant: &toml::Table) -> Result<(), DraftError> {
    let invalid = |message: String| DraftError::Invalid { message };
    let parsed: toml::Table =
        toml::from_str(text).map_err(|e| invalid(format!("the drafted text is not TOML: {e}")))?;
    if &parsed != meant {
        return Err(invalid(
            "the drafted text holds other values than the ones drafted (text in a comment or a \
             value ended its line?); no draft is written"
                .into(),
        ));
    }
    Ok(())
}

/// Text for the end of a comment line: line breaks and the other
/// characters [`quote`] hides are escaped (backslashes are left as they
/// are: what [`safe`] made stays as it is).
fn one_line(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if hidden(c) => {
                let _ = write!(o, "\\u{:04X}", u32::from(c));
            }
            c => o.push(c),
        }
    }
    o
}

/// A TOML basic string. Control and bidirectional-formatting characters
/// are escaped, so an agent's file name cannot end a comment line or
/// reorder what a reviewer reads.
fn quote(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            '\r' => o.push_str("\\r"),
            c if hidden(c) => {
                let _ = write!(o, "\\u{:04X}", u32::from(c));
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Text for a comment: as [`quote`] escapes it, without the quotes.
fn safe(s: &str) -> String {
    let q = quote(s);
    q.get(1..q.len().saturating_sub(1))
        .unwrap_or_default()
        .to_owned()
}

fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{FEFF}'
        )
}

// ---------------------------------------------------------------------------
// --from: the policy's own rules, re-emitted from its parsed form.

struct FromRaw {
    read: Vec<Item>,
    write: Vec<Item>,
    exec: Vec<Item>,
    allow: Vec<Item>,
    listen: Vec<Item>,
    answers: Vec<Item>,
    /// `key = value  # from POLICY` lines of `[network.dns]` and
    /// `[process]`.
    dns_keys: Vec<KeyLine>,
    process: Vec<KeyLine>,
    process_keys: BTreeSet<String>,
    allow_write_exec: Option<String>,
}

fn scalar(s: &Scalar) -> String {
    match s {
        Scalar::Int(n) => n.to_string(),
        Scalar::Float(x) => format!("{x:?}"),
        Scalar::Str(s) => quote(s),
        Scalar::Bool(b) => b.to_string(),
    }
}

fn spanned_list(v: &[toml::Spanned<String>]) -> String {
    let items: Vec<String> = v.iter().map(|s| quote(s.get_ref())).collect();
    format!("[{}]", items.join(", "))
}

impl FromRaw {
    fn new(f: &FromPolicy, d: &Drafter) -> Result<FromRaw, DraftError> {
        let err = |e: super::PolicyError| DraftError::From {
            file: f.label.clone(),
            message: e.to_string(),
        };
        let doc = Doc::new(&f.text, f.policy.file.clone());
        let raw = doc.parse_policy().map_err(err)?;
        let mut out = FromRaw {
            read: Vec::new(),
            write: Vec::new(),
            exec: Vec::new(),
            allow: Vec::new(),
            listen: Vec::new(),
            answers: Vec::new(),
            dns_keys: Vec::new(),
            process: Vec::new(),
            process_keys: BTreeSet::new(),
            allow_write_exec: None,
        };
        let label = safe(&f.label);
        let mut files: Vec<(
            String,
            Option<super::parse::RawBaseFs>,
            Option<super::parse::RawNetwork>,
        )> = Vec::new();
        if let Some(fs) = raw.filesystem {
            if fs.allow_write_exec == Some(true) {
                out.allow_write_exec = Some(format!("from {label}"));
            }
            files.push((
                format!("from {label}"),
                Some(super::parse::RawBaseFs {
                    read: fs.read,
                    write: fs.write,
                    exec: fs.exec,
                }),
                None,
            ));
        }
        let mut dns: Option<RawDns> = None;
        if let Some(n) = raw.network {
            dns = n.dns.map(toml::Spanned::into_inner);
            files.push((
                format!("from {label}"),
                None,
                Some(super::parse::RawNetwork {
                    allow: n.allow,
                    listen: n.listen,
                    dns: None,
                }),
            ));
        }
        for (path, text) in &f.policy.sources {
            let sub = Doc::new(text, path.clone());
            let inc = sub.parse_include().map_err(err)?;
            let tag = format!("from {label} via {}", safe(path));
            files.push((tag, inc.filesystem, inc.network));
        }
        for (tag, fs, net) in files {
            if let Some(fs) = fs {
                for (list, acc, into) in [
                    (fs.read, Acc::Read, &mut out.read),
                    (fs.write, Acc::Write, &mut out.write),
                    (fs.exec, Acc::Exec, &mut out.exec),
                ] {
                    push_paths(into, list, acc, &tag, d);
                }
            }
            if let Some(net) = net {
                for r in net.allow.unwrap_or_default() {
                    let r = r.into_inner();
                    out.allow.push(Item {
                        comment: format!("{tag}; {}", uses_text(d.net_uses(&r))),
                        value: net_rule(&r),
                    });
                }
                for r in net.listen.unwrap_or_default() {
                    let r = r.into_inner();
                    out.listen.push(Item {
                        comment: format!("{tag}; {}", uses_text(d.listen_uses(&r))),
                        value: listen_rule(&r),
                    });
                }
            }
        }
        if let Some(dns) = dns {
            for (k, v) in [
                ("ttl_floor", &dns.ttl_floor),
                ("ttl_ceiling", &dns.ttl_ceiling),
                ("max_addresses", &dns.max_addresses),
            ] {
                if let Some(v) = v {
                    out.dns_keys.push(KeyLine {
                        key: k.to_owned(),
                        value: scalar(v.get_ref()),
                        comment: format!("from {label}"),
                    });
                }
            }
            for a in dns.answers_allowed.unwrap_or_default() {
                out.answers.push(Item {
                    value: quote(a.get_ref()),
                    comment: format!("from {label}"),
                });
            }
        }
        if let Some(p) = raw.process {
            out.process(p, &label, d);
        }
        Ok(out)
    }

    fn process(&mut self, p: RawProcess, label: &str, d: &Drafter) {
        let learned_more = |k: &str| -> bool {
            let fp = &d.from.map(|f| &f.policy.process);
            match k {
                "max_processes" => d.seen.peak_procs.iter().max().is_some_and(|&peak| {
                    fp.and_then(|p| p.max_processes)
                        .is_some_and(|h| u64::from(h) < process_limit(peak))
                }),
                "memory" => d.seen.peak_memory.iter().max().is_some_and(|&peak| {
                    fp.and_then(|p| p.memory_bytes)
                        .is_some_and(|h| h < memory_limit(peak))
                }),
                "inotify" => d.seen.watches > 0 && !fp.is_some_and(|p| p.inotify),
                _ => false,
            }
        };
        let mut push = |k: &str, v: String| {
            self.process_keys.insert(k.to_owned());
            if !learned_more(k) {
                self.process.push(KeyLine {
                    key: k.to_owned(),
                    value: v,
                    comment: format!("from {label}"),
                });
            }
        };
        for (k, v) in [
            ("max_processes", &p.max_processes),
            ("memory", &p.memory),
            ("cpu", &p.cpu),
            ("user", &p.user),
        ] {
            if let Some(v) = v {
                push(k, scalar(v.get_ref()));
            }
        }
        if let Some(c) = &p.capabilities {
            push("capabilities", spanned_list(c));
        }
        if let Some(i) = p.inotify {
            push("inotify", i.to_string());
        }
    }
}

fn push_paths(into: &mut Vec<Item>, list: PathList, acc: Acc, tag: &str, d: &Drafter) {
    for p in list.unwrap_or_default() {
        let t = p.into_inner();
        into.push(Item {
            comment: format!("{tag}; {}", uses_text(d.path_uses(&t, acc))),
            value: quote(&t),
        });
    }
}

fn net_rule(r: &RawNetRule) -> String {
    let mut parts = Vec::new();
    if let Some(c) = &r.cidr {
        parts.push(format!("cidr = {}", quote(c.get_ref())));
    }
    if let Some(h) = &r.host {
        parts.push(format!("host = {}", quote(h.get_ref())));
    }
    if let Some(u) = &r.unix {
        parts.push(format!("unix = {}", quote(u.get_ref())));
    }
    ports_and_proto(&mut parts, r.ports.as_ref(), r.protocol.as_ref());
    format!("{{ {} }}", parts.join(", "))
}

fn listen_rule(r: &RawListenRule) -> String {
    let mut parts = Vec::new();
    if let Some(c) = &r.cidr {
        parts.push(format!("cidr = {}", quote(c.get_ref())));
    }
    ports_and_proto(&mut parts, r.ports.as_ref(), r.protocol.as_ref());
    format!("{{ {} }}", parts.join(", "))
}

type RawPorts = toml::Spanned<Vec<toml::Spanned<Scalar>>>;

fn ports_and_proto(
    parts: &mut Vec<String>,
    ports: Option<&RawPorts>,
    proto: Option<&toml::Spanned<String>>,
) {
    if let Some(p) = ports {
        let items: Vec<String> = p.get_ref().iter().map(|s| scalar(s.get_ref())).collect();
        parts.push(format!("ports = [{}]", items.join(", ")));
    }
    if let Some(p) = proto {
        parts.push(format!("protocol = {}", quote(p.get_ref())));
    }
}

/// Ports and protocols of a validated raw rule, for counting its uses.
fn raw_ports(
    ports: Option<&RawPorts>,
    proto: Option<&toml::Spanned<String>>,
) -> (Vec<(u16, u16)>, u8) {
    let ports = match ports {
        None => vec![(0, u16::MAX)],
        Some(list) => list
            .get_ref()
            .iter()
            .filter_map(|p| match p.get_ref() {
                Scalar::Int(n) => u16::try_from(*n).ok().map(|p| (p, p)),
                Scalar::Str(s) => match s.split_once('-') {
                    Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
                    None => s.parse().ok().map(|p| (p, p)),
                },
                _ => None,
            })
            .collect(),
    };
    let protos = match proto.map(|p| p.get_ref().as_str()) {
        Some("tcp") => PROTO_TCP,
        Some("udp") => PROTO_UDP,
        _ => PROTO_TCP | PROTO_UDP,
    };
    (ports, protos)
}

fn in_cidr(cidr: &str, ip: IpAddr) -> bool {
    let (addr, len) = match cidr.split_once('/') {
        Some((a, l)) => (a, l.parse::<u32>().ok()),
        None => (cidr, None),
    };
    let Ok(net) = addr.parse::<IpAddr>() else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let len = len.unwrap_or(32).min(32);
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let len = len.unwrap_or(128).min(128);
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

impl Drafter<'_> {
    /// Uses of the observations under a `--from` path entry.
    fn path_uses(&self, template: &str, list: Acc) -> u64 {
        self.insts
            .iter()
            .filter(|i| match list {
                Acc::Read => i.acc == Acc::Read,
                Acc::Write => i.acc != Acc::Exec,
                Acc::Exec => i.acc != Acc::Write,
            })
            .filter(|i| {
                let (there, real) = self.place(i.run, template);
                there && i.real.starts_with(real)
            })
            .map(|i| i.count)
            .sum()
    }

    fn net_uses(&self, r: &RawNetRule) -> u64 {
        if let Some(u) = &r.unix {
            return self
                .seen
                .unix
                .iter()
                .filter(|((_, a), _)| a == u.get_ref())
                .map(|(_, n)| n)
                .sum();
        }
        let (ports, protos) = raw_ports(r.ports.as_ref(), r.protocol.as_ref());
        let pattern = r
            .host
            .as_ref()
            .and_then(|h| HostPattern::parse(h.get_ref()).ok());
        self.seen
            .connects
            .iter()
            .filter(|(k, _)| {
                k.proto & protos != 0 && ports.iter().any(|&(lo, hi)| lo <= k.port && k.port <= hi)
            })
            .filter(|(k, _)| match (&r.cidr, &pattern) {
                (Some(c), _) => in_cidr(c.get_ref(), k.ip),
                (None, Some(p)) => k.names.iter().any(|n| p.matches(n)),
                _ => false,
            })
            .map(|(_, n)| n)
            .sum()
    }

    fn listen_uses(&self, r: &RawListenRule) -> u64 {
        let (ports, protos) = raw_ports(r.ports.as_ref(), r.protocol.as_ref());
        self.seen
            .listens
            .iter()
            .filter(|(k, _)| {
                k.proto & protos != 0
                    && ports.iter().any(|&(lo, hi)| lo <= k.port && k.port <= hi)
                    && r.cidr.as_ref().is_some_and(|c| in_cidr(c.get_ref(), k.ip))
            })
            .map(|(_, n)| n)
            .sum()
    }
}

#[cfg(test)]
#[path = "draft_tests.rs"]
mod tests;
