//! Agent policies: parse and validate a TOML policy, then compile it into a
//! [`Plan`] that the launcher and the kernel maps consume.
//!
//! Parsing validates everything that does not depend on where the agent
//! runs (names, CIDRs, ports, variables, limits) and already folds the
//! network rules into LPM trie values, so that a policy that parses can only
//! fail to compile because of the [`Vars`] it is expanded with.
//!
//! Everything here is pure computation: no privileges and no kernel calls.

mod base;
#[cfg(test)]
mod dns_tests;
pub mod draft;
mod floor;
#[cfg(test)]
mod floor_tests;
mod fs;
pub mod grant;
pub mod host;
mod net;
mod parse;
mod process;

use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub use base::BASE_NAMES;
pub use floor::{FloorError, check_within};
pub use fs::{Access, FsPlan, FsRule, resolve};
pub use net::{NameValueError, NetPlan, port_allowed};
pub use process::{CAPABILITIES, ProcPlan, UserSpec, capability_number};

use parse::Doc;

/// A 1-based position in a policy source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub line: u32,
    pub col: u32,
}

/// The first problem found in a policy. Displays as
/// `{file}:{line}:{col}: {message}`, or `{file}: {message}` when the policy
/// could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", LocSuffix(*.location))]
pub struct PolicyError {
    /// The path given to [`Policy::parse`] or [`Policy::load`], or
    /// `base:<name>` for a problem inside a built-in base.
    pub file: String,
    pub location: Option<Location>,
    pub message: String,
}

struct LocSuffix(Option<Location>);

impl fmt::Display for LocSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(l) => write!(f, ":{}:{}", l.line, l.col),
            None => Ok(()),
        }
    }
}

/// Values of the path variables `{workdir}`, `{home}` and `{tmp}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vars {
    pub workdir: PathBuf,
    pub home: PathBuf,
    pub tmp: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Deny what the policy does not allow.
    #[default]
    Enforce,
    /// Allow everything but report what enforce mode would have denied.
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// Where a rule came from. The launcher refuses a missing path that the
/// policy names itself but skips missing paths of a base, since bases list
/// paths for several distributions at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    Policy,
    Base(&'static str),
}

/// The source position of one policy item, kept after parsing so that
/// compile-time errors can still point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Src {
    pub origin: Origin,
    pub loc: Location,
    /// The include file the item was written in (its rules count as the
    /// policy's own); `None` for the policy file itself and for bases.
    pub file: Option<std::sync::Arc<str>>,
}

impl Src {
    pub fn error(&self, policy_file: &str, message: String) -> PolicyError {
        let file = match (&self.file, self.origin) {
            (Some(f), _) => f.to_string(),
            (None, Origin::Policy) => policy_file.to_owned(),
            (None, Origin::Base(name)) => format!("base:{name}"),
        };
        PolicyError {
            file,
            location: Some(self.loc),
            message,
        }
    }
}

/// Human-readable description of one network rule, for logs and denials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    /// `network.allow[3]`, or `base:<name> network.allow[0]`.
    pub id: String,
    /// `10.20.0.0/16 tcp 443,8000-8100`, `unix /run/app/api.sock`.
    pub text: String,
}

/// A parsed and validated policy whose paths still hold their variables.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    pub mode: Mode,
    /// Bases included, in the order given.
    pub includes: Vec<String>,
    /// Include files read, as (resolved path, text), in the order read.
    pub sources: Vec<(String, String)>,
    /// The file name used in error messages.
    pub file: String,
    network: NetPlan,
    rules: Vec<RuleInfo>,
    fs: Vec<fs::FsEntry>,
    /// A `[filesystem]` table exists (in the policy or an included base):
    /// file access is then default-deny. Without one, files are not
    /// restricted, and the launcher says so.
    fs_restricted: bool,
    allow_write_exec: bool,
    process: ProcPlan,
}

/// A compiled policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub name: String,
    pub mode: Mode,
    pub network: NetPlan,
    pub filesystem: FsPlan,
    pub process: ProcPlan,
    /// Every network rule, indexed by the rule numbers stored in the maps.
    pub rules: Vec<RuleInfo>,
}

impl Policy {
    /// Parse and validate; `file` is used only in error messages. Returns
    /// the first problem; [`Policy::parse_all`] returns every one.
    pub fn parse(text: &str, file: &str) -> Result<Policy, PolicyError> {
        Policy::parse_all(text, file).map_err(|errs| first_error(errs, file))
    }

    /// Parse and validate, collecting every problem found (in the order
    /// they were found: the [policy] table, then the network, filesystem
    /// and process tables). A TOML syntax or type error stops there: what
    /// follows it cannot be read reliably.
    ///
    /// Include files are read from the file system, relative to the
    /// directory of `file`.
    pub fn parse_all(text: &str, file: &str) -> Result<Policy, Vec<PolicyError>> {
        Policy::parse_all_granted(text, file, &[])
    }

    /// Parses a policy whose include files come with it, as (resolved path,
    /// text) pairs, never from this host's file system: what guardctl sent
    /// guardd, or a named policy guardd sent guardctl.
    pub fn parse_sent_all(
        text: &str,
        path: &str,
        includes: &[(String, String)],
    ) -> Result<Policy, Vec<PolicyError>> {
        Policy::parse_sent_granted(text, path, includes, &[])
    }

    /// [`Policy::parse_all`] with include files resolved against `dir` (the
    /// directory of the policy file) and read by `read`, which gets the
    /// resolved path (`dir` joined with the entry, `.` and `..` removed
    /// lexically). The texts read are kept in [`Policy::sources`], so that
    /// guardd compiles exactly what guardctl read (it reads nothing itself).
    pub fn parse_all_with(
        text: &str,
        file: &str,
        dir: &Path,
        read: &dyn Fn(&Path) -> Result<String, String>,
    ) -> Result<Policy, Vec<PolicyError>> {
        Policy::parse_granted_with(text, file, dir, read, &[])
    }

    /// [`Policy::parse_all`] with `guardctl run --grant` items added after
    /// the policy's own rules.
    pub fn parse_all_granted(
        text: &str,
        file: &str,
        grants: &[grant::GrantItem],
    ) -> Result<Policy, Vec<PolicyError>> {
        let dir = Path::new(file)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Policy::parse_granted_with(text, file, dir, &read_include, grants)
    }

    /// [`Policy::parse_sent_all`] with `guardctl run --grant` items.
    pub fn parse_sent_granted(
        text: &str,
        path: &str,
        includes: &[(String, String)],
        grants: &[grant::GrantItem],
    ) -> Result<Policy, Vec<PolicyError>> {
        let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
        Policy::parse_granted_with(
            text,
            path,
            dir,
            &|p: &Path| sent_include(includes, p),
            grants,
        )
    }

    /// [`Policy::parse_all_with`], then each grant item read as an include
    /// file of its own (rules named `--grant SPEC ...`), after the policy's
    /// own rules. A file grant needs a policy that restricts files: without
    /// a `[filesystem]` table it would turn file access default-deny.
    pub fn parse_granted_with(
        text: &str,
        file: &str,
        dir: &Path,
        read: &dyn Fn(&Path) -> Result<String, String>,
        grants: &[grant::GrantItem],
    ) -> Result<Policy, Vec<PolicyError>> {
        let doc = Doc::new(text, file.to_owned());
        let raw = doc.parse_policy().map_err(|e| vec![e])?;
        let Some(head) = raw.policy else {
            let message =
                if raw.network.is_none() && raw.filesystem.is_none() && raw.process.is_none() {
                    "policy is empty: expected a [policy] table with name"
                } else {
                    "missing [policy] table: expected a [policy] table with name"
                };
            return Err(vec![doc.error_at(0, message)]);
        };
        let head_span = head.span();
        let head = head.into_inner();
        let mut errs = Vec::new();

        let name = match head.name {
            None => {
                errs.push(doc.error_at(
                    head_span.start,
                    "missing `name` in [policy]: expected name = \"...\"",
                ));
                String::new()
            }
            Some(name) if !valid_name(name.get_ref()) => {
                errs.push(doc.error_at(
                    name.span().start,
                    format!(
                        "invalid policy name {:?}: expected 1-64 characters of A-Z a-z 0-9 . _ -",
                        name.get_ref()
                    ),
                ));
                String::new()
            }
            Some(name) => name.into_inner(),
        };
        let mode = match &head.mode {
            None => Mode::Enforce,
            Some(m) => match m.get_ref().as_str() {
                "enforce" => Mode::Enforce,
                "audit" => Mode::Audit,
                other => {
                    errs.push(doc.error_at(
                        m.span().start,
                        format!("unknown mode {other:?}: expected \"enforce\" or \"audit\""),
                    ));
                    Mode::Enforce
                }
            },
        };

        let mut c = Collect {
            read,
            stack: vec![normal(
                &dir.join(Path::new(file).file_name().unwrap_or_default()),
            )],
            rules: Rules::default(),
            includes: Vec::new(),
            sources: Vec::new(),
            errs,
        };
        for inc in head.include.unwrap_or_default() {
            c.include(&doc, dir, &inc);
        }
        let Collect {
            mut rules,
            includes,
            sources,
            mut errs,
            ..
        } = c;

        let mut allow_write_exec = false;
        let filesystem = raw.filesystem.map(|f| {
            allow_write_exec = f.allow_write_exec.unwrap_or(false);
            parse::RawBaseFs {
                read: f.read,
                write: f.write,
                exec: f.exec,
            }
        });
        rules.add(&doc, Origin::Policy, raw.network, filesystem, &mut errs);
        for g in grants {
            let name = format!("--grant {}", g.spec());
            if g.is_file() && !rules.has_fs {
                errs.push(PolicyError {
                    file: file.to_owned(),
                    location: None,
                    message: format!(
                        "{name}: the policy does not restrict files (it has no [filesystem] \
                         table), so a file grant would change nothing"
                    ),
                });
                continue;
            }
            let text = g.fragment();
            let mut sub = Doc::new(&text, name.clone());
            sub.include = Some(name);
            match sub.parse_include() {
                Ok(raw) => rules.add(&sub, Origin::Policy, raw.network, raw.filesystem, &mut errs),
                Err(e) => errs.push(e),
            }
        }
        let process = match raw.process {
            Some(p) => process::validate(&doc, p, &mut errs),
            None => ProcPlan::default(),
        };
        if !errs.is_empty() {
            return Err(errs);
        }
        let (network, net_rules) =
            net::compile(&rules.net, &rules.listen, rules.dns.as_ref(), file)
                .map_err(|e| vec![e])?;

        Ok(Policy {
            name,
            mode,
            includes,
            sources,
            file: file.to_owned(),
            network,
            rules: net_rules,
            fs: rules.fs,
            fs_restricted: rules.has_fs,
            allow_write_exec,
            process,
        })
    }

    /// Read and parse a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Policy::parse(&text, &file),
            Err(e) => Err(PolicyError {
                file,
                location: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }

    /// Expand variables and compile to a plan.
    pub fn compile(&self, vars: &Vars) -> Result<Plan, PolicyError> {
        self.compile_all(vars)
            .map_err(|errs| first_error(errs, &self.file))
    }

    /// Expand variables and compile to a plan, reporting every path that
    /// cannot be expanded (or else the first write-and-exec conflict or
    /// Unix-socket problem).
    pub fn compile_all(&self, vars: &Vars) -> Result<Plan, Vec<PolicyError>> {
        let mut filesystem = fs::compile(&self.fs, self.allow_write_exec, vars, &self.file)?;
        filesystem.restricted = self.fs_restricted;
        self.check_unix_pinned(&filesystem).map_err(|e| vec![e])?;
        Ok(Plan {
            name: self.name.clone(),
            mode: self.mode,
            network: self.network.clone(),
            filesystem,
            process: self.process.clone(),
            rules: self.rules.clone(),
        })
    }
}

impl Plan {
    /// Whether the policy itself (or an include file) names a Unix socket.
    /// A base's Unix rules (nscd's socket) are conveniences: a host that
    /// cannot enforce Unix rules refuses every Unix socket instead, which
    /// those programs survive, so they do not make the policy need the
    /// Unix layer.
    pub fn names_unix_sockets(&self) -> bool {
        self.network.unix.iter().any(|(_, rule)| {
            self.rules
                .get(*rule as usize)
                .is_none_or(|r| !r.id.starts_with("base:"))
        })
    }
}

impl Policy {
    /// A Unix rule names a socket, but the kernel hook sees only the path
    /// string the agent passes. The two stay the same socket only if the
    /// agent cannot change any directory on the way: otherwise it could
    /// replace the socket (or a directory above it) with a symlink to
    /// another socket, guardd's own among them. So every directory that
    /// holds a component of the path, as written and as it resolves now,
    /// must be outside the agent's write grants, and files must be
    /// restricted at all.
    fn check_unix_pinned(&self, fs: &FsPlan) -> Result<(), PolicyError> {
        for (key, rule) in &self.network.unix {
            if key[0] != b'/' {
                continue; // abstract names have no path to redirect
            }
            let end = key.iter().position(|&b| b == 0).unwrap_or(key.len());
            let path = Path::new(std::ffi::OsStr::from_bytes(&key[..end]));
            let id = self
                .rules
                .get(*rule as usize)
                .map(|r| r.id.as_str())
                .unwrap_or("network.allow");
            let err = |message: String| PolicyError {
                file: self.file.clone(),
                location: None,
                message: format!("{id} (unix {}): {message}", path.display()),
            };
            if !fs.restricted {
                return Err(err(
                    "files are unrestricted (no [filesystem] table), so the agent could replace \
                     this socket with a link to any other; add a [filesystem] table"
                        .into(),
                ));
            }
            let resolved = path
                .parent()
                .and_then(|p| std::fs::canonicalize(p).ok())
                .and_then(|p| Some(p.join(path.file_name()?)));
            for p in std::iter::once(path).chain(resolved.as_deref()) {
                for dir in p.ancestors().skip(1) {
                    if let Some(w) = fs
                        .rules
                        .iter()
                        .find(|r| r.access.write && dir.starts_with(&r.path))
                    {
                        return Err(err(format!(
                            "the agent may write {} ({}), so it could replace the socket with a \
                             link to another one; name a socket in a directory the agent cannot write",
                            dir.display(),
                            w.rule
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// An include file from the ones guardctl sent, never from this host.
fn sent_include(includes: &[(String, String)], p: &Path) -> Result<String, String> {
    includes
        .iter()
        .find(|(k, _)| Path::new(k) == p)
        .map(|(_, t)| t.clone())
        .ok_or_else(|| "not sent by guardctl".to_owned())
}

/// Reads an include file from this host's file system, for
/// [`Policy::parse_all_with`] in guardctl (guardd reads none: it compiles
/// the texts guardctl read).
pub fn read_include(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

/// What the policy and its includes add up to while they are read.
struct Collect<'r> {
    read: &'r dyn Fn(&Path) -> Result<String, String>,
    /// Files being included, outermost (the policy itself) first.
    stack: Vec<PathBuf>,
    rules: Rules,
    includes: Vec<String>,
    sources: Vec<(String, String)>,
    errs: Vec<PolicyError>,
}

/// Rules in the order read (bases and include files, then the policy's
/// own), or one built-in base's rules, parsed once.
#[derive(Default)]
struct Rules {
    net: Vec<net::NetRule>,
    listen: Vec<net::NetRule>,
    fs: Vec<fs::FsEntry>,
    /// A `[filesystem]` table was read: files and programs are default-deny.
    has_fs: bool,
    /// The policy file's `[network.dns]` table (no other file may hold one).
    dns: Option<host::DnsPlan>,
}

impl Rules {
    fn add(
        &mut self,
        doc: &Doc,
        origin: Origin,
        network: Option<parse::RawNetwork>,
        filesystem: Option<parse::RawBaseFs>,
        errs: &mut Vec<PolicyError>,
    ) {
        if let Some(n) = network {
            net::validate(
                doc,
                n,
                origin,
                &mut self.net,
                &mut self.listen,
                &mut self.dns,
                errs,
            );
        }
        if let Some(f) = filesystem {
            self.has_fs = true;
            fs::validate(doc, f.read, f.write, f.exec, origin, &mut self.fs, errs);
        }
    }

    fn extend(&mut self, other: &Rules) {
        self.net.extend(other.net.iter().cloned());
        self.listen.extend(other.listen.iter().cloned());
        self.fs.extend(other.fs.iter().cloned());
        self.has_fs |= other.has_fs;
    }
}

/// An include entry names a file (rather than a base) when it holds a `/`
/// or ends in `.toml`.
fn is_file_include(s: &str) -> bool {
    s.contains('/') || s.ends_with(".toml")
}

/// `.` and `..` removed without touching the file system, so that guardctl
/// and guardd resolve an include to the same path.
fn normal(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

impl Collect<'_> {
    fn include(&mut self, doc: &Doc, dir: &Path, inc: &toml::Spanned<String>) {
        let wanted = inc.get_ref();
        let at = inc.span().start;
        if let Some((base_name, _)) = base::lookup(wanted) {
            if self.includes.iter().any(|i| i == base_name) {
                self.errs
                    .push(doc.error_at(at, format!("base {wanted:?} is included twice")));
                return;
            }
            self.includes.push(base_name.to_owned());
            match parsed_base(base_name) {
                Ok(parsed) => self.rules.extend(parsed),
                Err(e) => self.errs.push(e),
            }
            return;
        }
        if !is_file_include(wanted) {
            self.errs.push(doc.error_at(
                at,
                format!(
                    "unknown include {wanted:?}: expected one of: {}, or a file such as \
                     \"./team-base.toml\" (relative to this file)",
                    BASE_NAMES.join(", ")
                ),
            ));
            return;
        }
        let path = normal(&dir.join(wanted));
        let shown = path.display().to_string();
        if let Some(k) = self.stack.iter().position(|p| *p == path) {
            let cycle: Vec<String> = self.stack[k..]
                .iter()
                .chain(std::iter::once(&path))
                .map(|p| p.display().to_string())
                .collect();
            self.errs
                .push(doc.error_at(at, format!("include cycle: {}", cycle.join(" includes "))));
            return;
        }
        if self.sources.iter().any(|(p, _)| *p == shown) {
            self.errs
                .push(doc.error_at(at, format!("include file {shown} is included twice")));
            return;
        }
        let text = match (self.read)(&path) {
            Ok(t) => t,
            Err(e) => {
                self.errs.push(doc.error_at(
                    at,
                    format!("cannot read include file {wanted:?} ({shown}): {e}"),
                ));
                return;
            }
        };
        self.sources.push((shown.clone(), text.clone()));
        let mut sub = Doc::new(&text, shown);
        sub.include = Some(wanted.clone());
        let raw = match sub.parse_include() {
            Ok(r) => r,
            Err(e) => {
                self.errs.push(e);
                return;
            }
        };
        let sub_dir = path.parent().unwrap_or(Path::new("/")).to_owned();
        self.stack.push(path);
        for i in raw.include.unwrap_or_default() {
            self.include(&sub, &sub_dir, &i);
        }
        self.stack.pop();
        self.rules.add(
            &sub,
            Origin::Policy,
            raw.network,
            raw.filesystem,
            &mut self.errs,
        );
    }
}

/// Bases are compiled into the binary, so each is parsed once per process
/// (guardd compiles a policy for every agent it starts).
fn parsed_base(name: &'static str) -> Result<&'static Rules, PolicyError> {
    use std::{collections::HashMap, sync::OnceLock};
    type Cache = HashMap<&'static str, Result<Rules, PolicyError>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| {
        base::all()
            .map(|(n, t)| {
                let parse = || -> Result<Rules, PolicyError> {
                    let doc = Doc::new(t, format!("base:{n}"));
                    let raw = doc.parse_base()?;
                    let mut out = Rules::default();
                    let mut errs = Vec::new();
                    out.add(
                        &doc,
                        Origin::Base(n),
                        raw.network,
                        raw.filesystem,
                        &mut errs,
                    );
                    match errs.into_iter().next() {
                        Some(e) => Err(e),
                        None => Ok(out),
                    }
                };
                (n, parse())
            })
            .collect()
    });
    match cache.get(name) {
        Some(Ok(p)) => Ok(p),
        Some(Err(e)) => Err(e.clone()),
        None => Err(PolicyError {
            file: format!("base:{name}"),
            location: None,
            message: "unknown base".into(),
        }),
    }
}

/// Capabilities that let a process step around the other layers (or the
/// kernel itself), with what each gives.
const DANGEROUS_CAPS: [(&str, &str); 14] = [
    ("CAP_SYS_ADMIN", "mounts, namespaces, BPF and much more"),
    ("CAP_SYS_PTRACE", "tracing and reading other processes"),
    ("CAP_SYS_MODULE", "loading kernel modules"),
    ("CAP_SYS_RAWIO", "raw I/O ports and device memory"),
    ("CAP_SYS_BOOT", "rebooting the host"),
    ("CAP_DAC_OVERRIDE", "ignoring file permissions"),
    (
        "CAP_DAC_READ_SEARCH",
        "reading any file by handle, around path rules",
    ),
    ("CAP_NET_ADMIN", "changing the host's network configuration"),
    ("CAP_NET_RAW", "raw sockets"),
    ("CAP_BPF", "loading BPF programs"),
    ("CAP_PERFMON", "performance monitoring of other processes"),
    ("CAP_SETUID", "becoming any user"),
    ("CAP_SETFCAP", "giving files capabilities"),
    ("CAP_MAC_ADMIN", "changing the security modules' policy"),
];

/// Directories whose writing changes the host for everyone (or the
/// kernel's view of it).
const SYSTEM_DIRS: [&str; 11] = [
    "/", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/boot", "/proc", "/sys", "/var/lib",
];

/// Grants that are valid but almost certainly a mistake, one warning each:
/// kept capabilities that step around confinement, and write grants on
/// system directories (or anything under /etc, /usr, /boot, /sys, or
/// system-wide /proc). Device nodes and `/proc/self` are not warned about.
pub fn dangerous_grants(plan: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    for cap in &plan.process.capabilities {
        if let Some((_, what)) = DANGEROUS_CAPS.iter().find(|(c, _)| c == cap) {
            out.push(format!(
                "process.capabilities keeps {cap} ({what}): it lets the agent step around \
                 the other layers; keep it only if you must"
            ));
        }
    }
    for r in plan.filesystem.rules.iter().filter(|r| r.access.write) {
        let real = resolve(&r.path);
        let under_proc_self = ["/proc/self", "/proc/thread-self"]
            .iter()
            .any(|p| r.path.starts_with(p));
        let system = SYSTEM_DIRS.iter().any(|d| {
            let d = Path::new(d);
            real == d || (d != Path::new("/") && d != Path::new("/var/lib") && real.starts_with(d))
        });
        if system && !under_proc_self && !real.starts_with("/dev") {
            out.push(format!(
                "{} grants write on {} (a system directory): the agent could change the host \
                 for every program",
                r.rule,
                if real == r.path {
                    r.path.display().to_string()
                } else {
                    format!("{} (resolving to {})", r.path.display(), real.display())
                }
            ));
        }
    }
    out
}

/// The first of the problems `parse_all` found, for callers that report
/// one (an empty list cannot come from it; it still yields an error).
pub fn first_error(errs: Vec<PolicyError>, file: &str) -> PolicyError {
    errs.into_iter().next().unwrap_or_else(|| PolicyError {
        file: file.to_owned(),
        location: None,
        message: "invalid policy".into(),
    })
}

/// A policy name: 1-64 characters of A-Z a-z 0-9 . _ - (also the file
/// name, without `.toml`, of a policy in guardd's policy directory).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[policy]
name = "coding-agent"      # required
mode = "enforce"
include = ["base", "python"]

[network]
allow = [
  { cidr = "10.20.0.0/16", ports = [443, "8000-8100"], protocol = "tcp" },
  { cidr = "2001:db8::/32", ports = [53], protocol = "udp" },
  { cidr = "127.0.0.1/32", ports = [8080] },
  { cidr = "127.0.0.1" },
  { unix = "/run/app/api.sock" },
  { unix = "@my-abstract" },
]

[filesystem]
read  = ["{workdir}", "/usr/share/zoneinfo"]
write = ["{workdir}", "{tmp}"]
exec  = ["/usr/bin/python3", "/usr/bin/git"]
allow_write_exec = false

[process]
max_processes = 64
memory = "512M"
cpu = 0.5
user = "nobody"
capabilities = []
"#;

    fn vars() -> Vars {
        Vars {
            workdir: "/home/u/proj".into(),
            home: "/home/u".into(),
            tmp: "/tmp/agent".into(),
        }
    }

    fn err(text: &str) -> String {
        Policy::parse(text, "p.toml").unwrap_err().to_string()
    }

    #[test]
    fn example_policy_compiles() {
        let policy = Policy::parse(EXAMPLE, "p.toml").unwrap();
        assert_eq!(policy.name, "coding-agent");
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.includes, ["base", "python"]);
        let plan = policy.compile(&vars()).unwrap();
        assert_eq!(plan.name, "coding-agent");
        // Six of the policy, two of `base` (nscd's socket).
        assert_eq!(plan.rules.len(), 8);
        assert_eq!(plan.rules[0].id, "base:base network.allow[0]");
        assert_eq!(plan.network.v4.len(), 2);
        assert_eq!(plan.network.v6.len(), 1);
        assert_eq!(plan.network.unix.len(), 4);
        let fs = &plan.filesystem;
        let find = |p: &str| fs.rules.iter().find(|r| r.path == Path::new(p)).unwrap();
        assert_eq!(find("/home/u/proj").access, Access::READ | Access::WRITE);
        assert_eq!(find("/home/u/proj").rule, "filesystem.read[0]");
        // Named by the python base and by the policy.
        let py = find("/usr/bin/python3");
        assert_eq!(py.origin, Origin::Policy);
        assert_eq!(py.rule, "base:python filesystem.exec[0]");
        assert_eq!(find("/usr/lib/python3.11").origin, Origin::Base("python"));
        assert_eq!(find("/usr/share/zoneinfo").origin, Origin::Policy);
        assert_eq!(fs.rules[0].origin, Origin::Base("base"));
        assert_eq!(plan.process.memory_bytes, Some(512 << 20));
        assert_eq!(plan.process.cpu_millicores, Some(500));
        assert_eq!(plan.process.user, Some(UserSpec::Name("nobody".into())));
        assert!(plan.process.capabilities.is_empty());
    }

    #[test]
    fn base_unix_rules_do_not_make_a_policy_need_the_unix_layer() {
        let base_only = Policy::parse("[policy]\nname = \"t\"\ninclude = [\"base\"]\n", "p")
            .unwrap()
            .compile(&vars())
            .unwrap();
        assert!(!base_only.network.unix.is_empty());
        assert!(!base_only.names_unix_sockets());
        let own = Policy::parse(EXAMPLE, "p")
            .unwrap()
            .compile(&vars())
            .unwrap();
        assert!(own.names_unix_sockets());
    }

    #[test]
    fn minimal_policy() {
        let p = Policy::parse("[policy]\nname = \"a.b_c-1\"\nmode = \"audit\"", "p.toml").unwrap();
        assert_eq!(p.mode, Mode::Audit);
        assert_eq!(Mode::Audit.as_str(), "audit");
        let plan = p.compile(&vars()).unwrap();
        assert_eq!(plan.network, NetPlan::default());
        assert!(plan.filesystem.rules.is_empty());
        assert_eq!(plan.process, ProcPlan::default());
    }

    #[test]
    fn head_errors() {
        let empty = "p.toml:1:1: policy is empty: expected a [policy] table with name";
        assert_eq!(err(""), empty);
        assert_eq!(err("\n# nothing\n\n"), empty);
        assert_eq!(
            err("[network]\nallow = []\n"),
            "p.toml:1:1: missing [policy] table: expected a [policy] table with name"
        );
        assert_eq!(
            err("\n[policy]\nmode = \"audit\"\n"),
            "p.toml:2:1: missing `name` in [policy]: expected name = \"...\""
        );
        assert_eq!(
            err("[policy]\nname = \"a b\"\n"),
            "p.toml:2:8: invalid policy name \"a b\": expected 1-64 characters of A-Z a-z 0-9 . _ -"
        );
        assert!(err("[policy]\nname = \"\"\n").contains("invalid policy name"));
        let long = "x".repeat(65);
        assert!(err(&format!("[policy]\nname = \"{long}\"\n")).contains("invalid policy name"));
        assert!(Policy::parse(&format!("[policy]\nname = \"{}\"\n", &long[1..]), "p").is_ok());
        assert!(err("[policy]\nname = \"é\"\n").contains("invalid policy name"));
        assert_eq!(
            err("[policy]\nname = \"x\"\nmode = \"strict\"\n"),
            "p.toml:3:8: unknown mode \"strict\": expected \"enforce\" or \"audit\""
        );
        assert_eq!(
            err("[policy]\nname = \"x\"\ninclude = [\"base\", \"rust\"]\n"),
            "p.toml:3:20: unknown include \"rust\": expected one of: base, shell, python, git, \
             or a file such as \"./team-base.toml\" (relative to this file)"
        );
        assert!(
            err("[policy]\nname = \"x\"\ninclude = [\"git\", \"git\"]\n")
                .contains("included twice")
        );
        assert_eq!(
            err("[policy]\nname = 5\n"),
            "p.toml:2:8: invalid type: integer `5`, expected a string"
        );
        assert!(err("policy = 1").contains("expected a [policy] table"));
    }

    #[test]
    fn parse_all_reports_every_error() {
        let text = "[policy]\nname = \"a b\"\nmode = \"x\"\ninclude = [\"nope\", \"base\"]\n\
                    [network]\nallow = [{ cidr = \"1.2.3.300\" }, { cidr = \"1.2.3.4\", ports = [0] }]\n\
                    [filesystem]\nread = [\"rel\", \"/ok\", \"{x}\"]\n\
                    [process]\ncpu = \"lots\"\ncapabilities = [\"CAP_FLY\"]\n";
        let errs = Policy::parse_all(text, "p.toml").unwrap_err();
        let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(errs.len(), 9, "{shown:#?}");
        for (e, want) in errs.iter().zip([
            "invalid policy name",
            "unknown mode",
            "unknown include \"nope\"",
            "invalid",
            "port",
            "not absolute",
            "unknown variable",
            "invalid cpu",
            "unknown capability",
        ]) {
            assert!(e.message.contains(want), "{want:?} in {shown:#?}");
        }
        // `parse` returns the first of them.
        assert_eq!(Policy::parse(text, "p.toml").unwrap_err(), errs[0]);
        // A syntax error stops there.
        assert_eq!(
            Policy::parse_all("[policy\nname = 1", "p.toml")
                .unwrap_err()
                .len(),
            1
        );
    }

    fn with_files(files: &[(&str, &str)], policy: &str) -> Result<Policy, Vec<PolicyError>> {
        let files: Vec<(String, String)> = files
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect();
        Policy::parse_all_with(policy, "/p/pol.toml", Path::new("/p"), &|p: &Path| {
            files
                .iter()
                .find(|(k, _)| Path::new(k) == p)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| "No such file or directory (os error 2)".to_owned())
        })
    }

    #[test]
    fn include_files_add_rules_beside_bases() {
        let files = [
            (
                "/p/team.toml",
                "include = [\"./sub/more.toml\", \"shell\"]\n[filesystem]\nread = [\"/data\"]\n",
            ),
            (
                "/p/sub/more.toml",
                "[network]\nallow = [{ cidr = \"10.0.0.1\" }]\n[filesystem]\nexec = [\"/opt/x\"]\n",
            ),
        ];
        let p = with_files(
            &files,
            "[policy]\nname = \"t\"\ninclude = [\"base\", \"./team.toml\"]\n",
        )
        .unwrap();
        assert_eq!(p.includes, ["base", "shell"]);
        let read: Vec<&str> = p.sources.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(read, ["/p/team.toml", "/p/sub/more.toml"]);
        let plan = p.compile(&vars()).unwrap();
        let find = |path: &str| {
            plan.filesystem
                .rules
                .iter()
                .find(|r| r.path == Path::new(path))
                .unwrap()
        };
        assert_eq!(find("/data").rule, "./team.toml filesystem.read[0]");
        assert_eq!(find("/data").origin, Origin::Policy);
        assert_eq!(find("/opt/x").rule, "./sub/more.toml filesystem.exec[0]");
        assert!(find("/usr/bin/ls").rule.starts_with("base:shell "));
        assert!(
            plan.rules
                .iter()
                .any(|r| r.id == "./sub/more.toml network.allow[0]")
        );
    }

    #[test]
    fn include_cycles_missing_files_and_their_errors_are_precise() {
        let files = [
            ("/p/a.toml", "include = [\"./b.toml\"]\n"),
            ("/p/b.toml", "\ninclude = [\"../p/a.toml\"]\n"),
            ("/p/self.toml", "include = [\"./pol.toml\"]\n"),
            ("/p/bad.toml", "[filesystem]\nread = [\"rel\"]\n[process]\n"),
            ("/p/wx.toml", "[filesystem]\nexec = [\"/w/bin\"]\n"),
        ];
        let one = |inc: &str| -> Vec<String> {
            with_files(
                &files,
                &format!("[policy]\nname = \"t\"\ninclude = [\"{inc}\"]\n"),
            )
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
        };
        assert_eq!(
            one("./a.toml"),
            ["/p/b.toml:2:12: include cycle: /p/a.toml includes /p/b.toml includes /p/a.toml"]
        );
        assert_eq!(
            one("self.toml"),
            [
                "/p/self.toml:1:12: include cycle: /p/pol.toml includes /p/self.toml includes /p/pol.toml"
            ]
        );
        assert_eq!(
            one("./nope.toml"),
            [
                "/p/pol.toml:3:12: cannot read include file \"./nope.toml\" (/p/nope.toml): No such file or directory (os error 2)"
            ]
        );
        let bad = one("./bad.toml");
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(
            bad[0].starts_with(
                "/p/bad.toml:3:2: unknown key `process` at the top level of an include file"
            ),
            "{bad:?}"
        );
        // A conflict found at compile time points into the include file.
        let e = with_files(
            &files,
            "[policy]\nname = \"t\"\ninclude = [\"./wx.toml\"]\n[filesystem]\nwrite = [\"/w\"]\n",
        )
        .unwrap()
        .compile(&vars())
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("/p/pol.toml:5:10: \"/w/bin\" is both writable"),
            "{e}"
        );
        assert!(e.contains("exec: ./wx.toml filesystem.exec[0]"), "{e}");
        let twice = one("./a.toml\", \"./a.toml");
        assert!(twice.iter().any(|e| e.contains("cycle")), "{twice:?}");
    }

    #[test]
    fn compile_all_reports_every_bad_path() {
        let p = Policy::parse(
            "[policy]\nname = \"t\"\n[filesystem]\nread = [\"{workdir}/a\", \"/ok\", \"{home}/b\"]\n",
            "p.toml",
        )
        .unwrap();
        let mut v = vars();
        v.workdir = "rel".into();
        v.home = "also-rel".into();
        let errs = p.compile_all(&v).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[1].to_string().starts_with("p.toml:4:31: "), "{errs:?}");
    }

    #[test]
    fn dangerous_grants_are_warned_about() {
        let plan = Policy::parse(
            "[policy]\nname = \"t\"\n[filesystem]\nwrite = [\"/etc/app\", \"/\", \"/srv/x\", \"/dev/null\", \"/proc/self/attr\"]\n\
             [process]\ncapabilities = [\"sys_admin\", \"CAP_NET_BIND_SERVICE\", \"CAP_SYS_PTRACE\"]\n",
            "p.toml",
        )
        .unwrap()
        .compile(&vars())
        .unwrap();
        let w = dangerous_grants(&plan);
        assert_eq!(w.len(), 4, "{w:#?}");
        assert!(w[0].contains("keeps CAP_SYS_ADMIN"), "{w:#?}");
        assert!(w[1].contains("keeps CAP_SYS_PTRACE"), "{w:#?}");
        assert!(
            w[2].starts_with("filesystem.write[0] grants write on /etc/app"),
            "{w:#?}"
        );
        assert!(
            w[3].starts_with("filesystem.write[1] grants write on /"),
            "{w:#?}"
        );
        let quiet = Policy::parse(
            "[policy]\nname = \"t\"\n[filesystem]\nwrite = [\"{tmp}\", \"{workdir}\"]\n",
            "p.toml",
        )
        .unwrap()
        .compile(&vars())
        .unwrap();
        assert!(dangerous_grants(&quiet).is_empty());
    }

    #[test]
    fn load_reports_io_errors_without_location() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.toml");
        let e = Policy::load(&missing).unwrap_err();
        assert_eq!(e.location, None);
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("{}: cannot read: ", missing.display())),
            "{shown}"
        );
        let good = dir.path().join("p.toml");
        std::fs::write(&good, "[policy]\nname = \"x\"\n").unwrap();
        assert_eq!(Policy::load(&good).unwrap().name, "x");
        std::fs::write(&good, "[policy]\nname = 1\n").unwrap();
        let e = Policy::load(&good).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}:2:8: invalid type: integer `1`, expected a string",
                good.display()
            )
        );
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const TOKENS: &[&str] = &[
        "\"",
        "'",
        "[",
        "]",
        "{",
        "}",
        "=",
        ",",
        "\n",
        "/",
        "-",
        ".",
        ":",
        "@",
        "%",
        "#",
        "0",
        "1",
        "65536",
        "99999999999999999999",
        "-1",
        "1e400",
        "nan",
        "inf",
        "true",
        "é",
        "\\u0000",
        "::ffff:",
        "/0",
        "/128",
        "/33",
        "{workdir}",
        "{home}/..",
        "{foo}",
        "{",
        "tcp",
        "udp",
        "\"x\"",
        "[[network.allow]]\n",
        "cidr = ",
        "unix = \"@\"",
        "ports = [",
        "\"1-2\"",
        "\"2-1\"",
        "protocol = ",
        "include = [\"git\"]",
        "[process]\n",
        "memory = ",
        "cpu = ",
        "\"50%\"",
        "\"1T\"",
        "user = ",
        "capabilities = [",
        "allow_write_exec = true\n",
        "1979-05-27T07:32:00Z",
        "0x10",
        "+5",
        "\r\n",
        "\t",
        "\"\"\"",
    ];

    /// Replacements for a whole string or number, to reach the validators
    /// rather than the TOML syntax checks.
    const VALUES: &[&str] = &[
        "\"10.0.0.300/8\"",
        "\"10.20.1.0/16\"",
        "\"::ffff:1.2.3.4\"",
        "\"0.0.0.0/0\"",
        "\"::/0\"",
        "\"9000-8000\"",
        "\"80-\"",
        "\"icmp\"",
        "\"@\"",
        "\"/x\\u0000\"",
        "\"rel/path\"",
        "\"{foo}\"",
        "\"{workdir}/../x\"",
        "\"CAP_FLY\"",
        "\"net_admin\"",
        "\"50%\"",
        "\"0%\"",
        "\"5MB\"",
        "\"\"",
        "\"é\"",
        "\"/\"",
        "\"audit\"",
        "\"base\"",
        "\"nope\"",
        "\"1-65535\"",
        "\"65536\"",
        "0",
        "-1",
        "65536",
        "nan",
        "-inf",
        "1.5",
        "9223372036854775807",
        "true",
        "[]",
        "{}",
        "\"443\"",
        "[\"{home}\"]",
        "{ unix = \"@a\" }",
        "{ cidr = \"1.2.3.4\", ports = [0] }",
    ];

    fn replace_value(rng: &mut XorShift, text: &str) -> String {
        // Byte offsets of quotes; every char boundary is safe to split at.
        let quotes: Vec<usize> = text.match_indices('"').map(|(i, _)| i).collect();
        if quotes.len() < 2 {
            return text.to_owned();
        }
        // Quotes pair up in the example, which has no escaped quotes.
        let k = 2 * rng.below(quotes.len() / 2);
        let (a, b) = (quotes[k], quotes[k + 1] + 1);
        let value = VALUES[rng.below(VALUES.len())];
        format!("{}{value}{}", &text[..a], &text[b..])
    }

    fn mutate(rng: &mut XorShift, text: &str) -> String {
        if rng.below(2) == 0 {
            let once = replace_value(rng, text);
            return if rng.below(2) == 0 {
                replace_value(rng, &once)
            } else {
                once
            };
        }
        let mut chars: Vec<char> = text.chars().collect();
        for _ in 0..1 + rng.below(2) {
            let at = rng.below(chars.len() + 1);
            match rng.below(4) {
                0 => {
                    let end = (at + 1 + rng.below(6)).min(chars.len());
                    chars.drain(at..end);
                }
                1 | 2 => {
                    let token = TOKENS[rng.below(TOKENS.len())];
                    chars.splice(at..at, token.chars());
                }
                _ => {
                    // Duplicate a stretch, which tends to create repeated keys.
                    let end = (at + rng.below(40)).min(chars.len());
                    let copy: Vec<char> = chars[at..end].to_vec();
                    let to = rng.below(chars.len() + 1);
                    chars.splice(to..to, copy);
                }
            }
        }
        chars.into_iter().collect()
    }

    #[test]
    fn mutated_policies_never_panic() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let (mut parsed, mut compiled, mut failed) = (0, 0, 0);
        for _ in 0..800 {
            let text = mutate(&mut rng, EXAMPLE);
            match Policy::parse(&text, "fuzz.toml") {
                Ok(p) => {
                    parsed += 1;
                    if p.compile(&vars()).is_ok() {
                        compiled += 1;
                    }
                }
                Err(e) => {
                    failed += 1;
                    let loc = e.location.unwrap();
                    assert!(loc.line >= 1 && loc.col >= 1);
                    assert!(e.to_string().starts_with("fuzz.toml:"));
                    let lines = u32::try_from(text.lines().count()).unwrap();
                    assert!(loc.line <= lines + 1, "{e} in {text}");
                }
            }
        }
        assert!(
            parsed > 30 && failed > 30,
            "parsed {parsed}, failed {failed}"
        );
        assert!(compiled > 0);
    }
}
