//! `guardctl selftest`: a battery of escape attempts, each a real agent
//! confined on this host, judged from outside.
//!
//! Each attempt is started exactly as users start agents (`guardctl run`),
//! runs one probe ([`probe`]) inside its scope, and is judged here, outside
//! the scope, from three sources: what the probe reported, what the
//! targets selftest set up saw (listeners, a secret file, marker files an
//! escaped program would leave), and guardd's journal. An attempt HELD if
//! the probe was refused and no target saw anything; it is RECORDED if the
//! journal holds a refusal of the agent that matches it (kind and target
//! or rule). The probe alone is never trusted: a target that saw the
//! attempt makes it an escape whatever the probe said.
//!
//! The judging ([`judge`], [`record_matches`], [`Summary`]) and the report
//! lines are pure and unit-tested; [`run`] does the I/O.

pub mod probe;

use std::{
    ffi::OsString,
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use thiserror::Error;

use crate::{
    api::{self, LineConn, LogsRequest, Request},
    journal::{Kind, Record, Verdict, escape_str},
    policy::{Mode, Plan, Policy, Vars, grant::GrantItem, port_allowed},
};
pub use probe::{ProbeOutcome, ProbeReport};

/// How long the journal is polled for an attempt's refusal record: records
/// arrive asynchronously from the kernel's ring buffer.
const RECORD_WAIT: Duration = Duration::from_secs(2);
const RECORD_POLL: Duration = Duration::from_millis(50);
/// An attempt that has not ended by then is killed and could not be tested.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// The process limit of the default policy.
const DEFAULT_MAX_PROCESSES: u32 = 8;
/// The dynamic loader the loader route runs.
const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";
/// A program `exec` does not grant.
const FORBIDDEN_PROGRAM: &str = "/bin/sh";

#[derive(Debug, Error)]
pub enum SelftestError {
    #[error("cannot reach guardd at {socket}: {source}")]
    Guardd {
        socket: String,
        source: std::io::Error,
    },
    #[error("guardd at {socket} does not answer: {message}")]
    Hello { socket: String, message: String },
    #[error("{0}")]
    Policy(String),
    #[error("cannot set up {what}: {source}")]
    Setup {
        what: String,
        source: std::io::Error,
    },
    #[error("unknown attempt {0:?} (see `guardctl selftest --list`)")]
    UnknownAttempt(String),
}

fn setup(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SelftestError {
    let what = what.into();
    move |source| SelftestError::Setup { what, source }
}

/// Which wall an attempt tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Network,
    Abi,
    File,
    Exec,
    Control,
    Privilege,
    Limits,
}

/// One attempt of the battery: its name and what it tries.
pub struct AttemptInfo {
    pub name: &'static str,
    pub family: Family,
    pub what: &'static str,
}

/// The battery, in the order it runs.
pub const BATTERY: &[AttemptInfo] = &[
    AttemptInfo {
        name: "net.connect.v4",
        family: Family::Network,
        what: "TCP connect to a loopback port the policy does not allow",
    },
    AttemptInfo {
        name: "net.connect.v6",
        family: Family::Network,
        what: "TCP connect to ::1",
    },
    AttemptInfo {
        name: "net.connect.v4-mapped",
        family: Family::Network,
        what: "TCP connect to ::ffff:127.0.0.1 (IPv4 through an IPv6 socket)",
    },
    AttemptInfo {
        name: "net.connect.any",
        family: Family::Network,
        what: "TCP connect to 0.0.0.0, which the kernel sends to loopback",
    },
    AttemptInfo {
        name: "net.udp.sendto",
        family: Family::Network,
        what: "UDP sendto an address",
    },
    AttemptInfo {
        name: "net.udp.connect",
        family: Family::Network,
        what: "UDP connect, then send",
    },
    AttemptInfo {
        name: "net.udp.sendmsg",
        family: Family::Network,
        what: "UDP sendmsg with the address in the message",
    },
    AttemptInfo {
        name: "net.tcp.fastopen",
        family: Family::Network,
        what: "TCP fast open: sendto(MSG_FASTOPEN) without connect",
    },
    AttemptInfo {
        name: "net.raw-socket",
        family: Family::Network,
        what: "a raw IPv4 socket",
    },
    AttemptInfo {
        name: "net.packet-socket",
        family: Family::Network,
        what: "a packet socket (AF_PACKET)",
    },
    AttemptInfo {
        name: "net.inherited-socket",
        family: Family::Network,
        what: "a connected socket the caller left open across guardctl run",
    },
    AttemptInfo {
        name: "abi.i386-socketcall",
        family: Family::Abi,
        what: "socketcall through int 0x80 (the 32-bit table)",
    },
    AttemptInfo {
        name: "abi.i386-open",
        family: Family::Abi,
        what: "open of the secret through int 0x80",
    },
    AttemptInfo {
        name: "abi.x32-socket",
        family: Family::Abi,
        what: "socket through the x32 ABI (number | 0x40000000)",
    },
    AttemptInfo {
        name: "file.read",
        family: Family::File,
        what: "read a secret outside every grant",
    },
    AttemptInfo {
        name: "file.write",
        family: Family::File,
        what: "append to the secret",
    },
    AttemptInfo {
        name: "file.symlink",
        family: Family::File,
        what: "read the secret through a symlink placed in the work directory",
    },
    AttemptInfo {
        name: "file.hardlink",
        family: Family::File,
        what: "hard-link the secret into the work directory",
    },
    AttemptInfo {
        name: "file.proc-self-root",
        family: Family::File,
        what: "read the secret through /proc/self/root",
    },
    AttemptInfo {
        name: "file.proc-outsider",
        family: Family::File,
        what: "read the secret through /proc/1/root (pid 1: guard's reaper, outside the agent's Landlock domain)",
    },
    AttemptInfo {
        name: "file.handle",
        family: Family::File,
        what: "open the secret by file handle (open_by_handle_at)",
    },
    AttemptInfo {
        name: "exec.program",
        family: Family::Exec,
        what: "run a program exec does not grant (/bin/sh)",
    },
    AttemptInfo {
        name: "exec.memfd-exec-flag",
        family: Family::Exec,
        what: "create an executable memfd (MFD_EXEC)",
    },
    AttemptInfo {
        name: "exec.memfd",
        family: Family::Exec,
        what: "write a program into a memfd and fexecve it",
    },
    AttemptInfo {
        name: "exec.copy",
        family: Family::Exec,
        what: "copy a granted program to the work directory and execveat the copy",
    },
    AttemptInfo {
        name: "exec.loader",
        family: Family::Exec,
        what: "run a copy through the dynamic loader (ld.so FILE)",
    },
    AttemptInfo {
        name: "exec.mmap-noexec",
        family: Family::Exec,
        what: "mmap(PROT_EXEC) a file the agent wrote",
    },
    AttemptInfo {
        name: "ctl.socket",
        family: Family::Control,
        what: "talk to guardd's socket (hello, ps, kill, open)",
    },
    AttemptInfo {
        name: "ctl.request-channel",
        family: Family::Control,
        what: "speak guardd's control protocol (ps, kill, grant) on the agent's request channel",
    },
    AttemptInfo {
        name: "priv.setuid",
        family: Family::Privilege,
        what: "setresuid(0, 0, 0) to get capabilities back",
    },
    AttemptInfo {
        name: "priv.ptrace",
        family: Family::Privilege,
        what: "ptrace(PTRACE_ATTACH) pid 1, guard's reaper",
    },
    AttemptInfo {
        name: "ns.user",
        family: Family::Privilege,
        what: "unshare(CLONE_NEWUSER)",
    },
    AttemptInfo {
        name: "ns.mount",
        family: Family::Privilege,
        what: "unshare(CLONE_NEWNS) and mount a tmpfs",
    },
    AttemptInfo {
        name: "ns.setns",
        family: Family::Privilege,
        what: "setns into a network namespace",
    },
    AttemptInfo {
        name: "limits.fork",
        family: Family::Limits,
        what: "fork past the policy's process limit",
    },
];

/// What an attempt must leave in the journal when it is held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A refusal of the agent of one of `kinds` (any kind if empty) whose
    /// target contains one of `targets` or whose rule is one of `rules`.
    Record {
        kinds: Vec<Kind>,
        targets: Vec<String>,
        rules: Vec<&'static str>,
    },
    /// Nothing reaches a refusing layer, by design: why.
    Nothing(&'static str),
}

impl Expect {
    fn record(kinds: &[Kind], targets: &[&str], rules: &[&'static str]) -> Expect {
        Expect::Record {
            kinds: kinds.to_vec(),
            targets: targets.iter().map(|t| (*t).to_owned()).collect(),
            rules: rules.to_vec(),
        }
    }
}

/// Whether `rec` is the refusal `expect` asks for. In an audit-mode policy
/// the would-be refusal (`audit`) counts.
pub fn record_matches(expect: &Expect, rec: &Record, mode: Mode) -> bool {
    let Expect::Record {
        kinds,
        targets,
        rules,
    } = expect
    else {
        return false;
    };
    let verdict_ok = match mode {
        Mode::Enforce => rec.verdict == Verdict::Denied,
        Mode::Audit => matches!(rec.verdict, Verdict::Denied | Verdict::Audit),
    };
    if !verdict_ok || rec.kind == Kind::Lifecycle || rec.layer == crate::journal::LEARN_LAYER {
        return false;
    }
    if !kinds.is_empty() && !kinds.contains(&rec.kind) {
        return false;
    }
    let target = rec.target.to_string_lossy();
    targets
        .iter()
        .any(|t| !t.is_empty() && target.contains(t.as_str()))
        || rules.contains(&rec.rule.as_str())
}

/// Whether the wall held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Held {
    Held,
    Escaped,
    /// The attempt could not be made: it proves nothing, and fails the run.
    CouldNotTest,
    /// Not applicable to the policy under test (it allows what the attempt
    /// tries); said with the reason, does not fail the run.
    Skipped,
}

impl Held {
    fn label(self) -> &'static str {
        match self {
            Held::Held => "held",
            Held::Escaped => "ESCAPED",
            Held::CouldNotTest => "UNTESTED",
            Held::Skipped => "skipped",
        }
    }
}

/// Whether the journal has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "detail")]
pub enum Recorded {
    /// The matching record, summarised.
    Recorded(String),
    /// Held, but no matching refusal arrived in time.
    Missing,
    /// Nothing can reach a refusing layer, by design: why.
    NotExpected(String),
    /// Not looked for (the attempt escaped, could not be tested or was
    /// skipped).
    NotChecked,
}

impl Recorded {
    fn label(&self) -> &'static str {
        match self {
            Recorded::Recorded(_) => "recorded",
            Recorded::Missing => "UNRECORDED",
            Recorded::NotExpected(_) => "no-record",
            Recorded::NotChecked => "-",
        }
    }
}

/// What the guardctl run of an attempt ended with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// guardctl run's exit status: the agent's, 128+signal when it died of
    /// one, or guardctl's own failure codes.
    Exit(i32),
    /// Killed by selftest after the attempt timed out.
    TimedOut,
}

/// Judges one attempt from the probe's report, the end of its run, what
/// the targets saw (`observed`, outside the scope) and the signal whose
/// death is itself the refusal (seccomp's SIGSYS for a foreign ABI).
pub fn judge(
    report: Option<&ProbeReport>,
    end: RunEnd,
    observed: Option<&str>,
    killed_by: Option<i32>,
) -> (Held, String) {
    if let Some(seen) = observed {
        let probe = report.map_or_else(String::new, |r| format!(" (probe: {})", r.detail));
        return (
            Held::Escaped,
            format!("seen outside the scope: {seen}{probe}"),
        );
    }
    match report {
        Some(r) => match r.outcome {
            ProbeOutcome::Succeeded => (Held::Escaped, r.detail.clone()),
            ProbeOutcome::Refused => (Held::Held, r.detail.clone()),
            ProbeOutcome::Error => (Held::CouldNotTest, format!("could not test: {}", r.detail)),
        },
        None => match (end, killed_by) {
            (RunEnd::Exit(code), Some(sig)) if code == 128 + sig => (
                Held::Held,
                format!("killed by signal {sig} before it could report, which is the refusal"),
            ),
            (RunEnd::Exit(code), _) => (
                Held::CouldNotTest,
                format!("could not test: the probe reported nothing (guardctl run exited {code})"),
            ),
            (RunEnd::TimedOut, _) => (
                Held::CouldNotTest,
                "could not test: the attempt did not end in time and was killed".to_owned(),
            ),
        },
    }
}

/// One attempt's result.
#[derive(Clone, Debug, Serialize)]
pub struct AttemptResult {
    pub attempt: String,
    pub family: Family,
    pub held: Held,
    pub recorded: Recorded,
    pub agent: String,
    pub detail: String,
}

impl AttemptResult {
    /// Held and recorded (or nothing to record), or skipped.
    pub fn passed(&self) -> bool {
        match self.held {
            Held::Skipped => true,
            Held::Held => matches!(
                self.recorded,
                Recorded::Recorded(_) | Recorded::NotExpected(_)
            ),
            Held::Escaped | Held::CouldNotTest => false,
        }
    }

    /// One line for people: every piece of text that came from inside the
    /// scope or the journal is escaped, so it cannot forge a line.
    pub fn line(&self) -> String {
        let why = match &self.recorded {
            Recorded::Recorded(s) => format!("{}; {}", self.detail, s),
            Recorded::NotExpected(s) => format!("{}; nothing to record: {}", self.detail, s),
            _ => self.detail.clone(),
        };
        format!(
            "{:<9} {:<10} {:<22} {}",
            self.held.label(),
            self.recorded.label(),
            escape_str(&self.attempt),
            escape_str(&why)
        )
    }
}

/// The whole run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub attempts: usize,
    pub held: usize,
    pub escaped: usize,
    pub unrecorded: usize,
    pub untested: usize,
    pub skipped: usize,
}

impl Summary {
    pub fn of(results: &[AttemptResult]) -> Summary {
        let mut s = Summary {
            attempts: results.len(),
            ..Summary::default()
        };
        for r in results {
            match r.held {
                Held::Held => {
                    s.held += 1;
                    if r.recorded == Recorded::Missing {
                        s.unrecorded += 1;
                    }
                }
                Held::Escaped => s.escaped += 1,
                Held::CouldNotTest => s.untested += 1,
                Held::Skipped => s.skipped += 1,
            }
        }
        s
    }

    /// Nothing escaped, went unrecorded or could not be tested, and at
    /// least one attempt held: a run that skipped everything proves nothing.
    pub fn passed(&self) -> bool {
        self.escaped == 0 && self.unrecorded == 0 && self.untested == 0 && self.held > 0
    }

    pub fn line(&self) -> String {
        format!(
            "selftest: {} attempts: {} held, {} escaped, {} unrecorded, {} could not be tested, {} skipped — {}",
            self.attempts,
            self.held,
            self.escaped,
            self.unrecorded,
            self.untested,
            self.skipped,
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

/// What `run` is asked to do.
pub struct Options {
    /// The guardctl binary: it launches the attempts and is their probe.
    pub guardctl: PathBuf,
    pub socket: PathBuf,
    /// A user policy instead of the default strict one.
    pub policy: Option<PathBuf>,
    /// Only these attempts (all when empty).
    pub only: Vec<String>,
}

/// The default policy: no network, files limited to a private work
/// directory (and the agent's `{tmp}`), exec of the probe binary only, a
/// small process limit.
pub fn default_policy(guardctl: &Path) -> String {
    format!(
        "# Written by guardctl selftest: the strictest useful policy.\n\
         [policy]\nname = \"selftest\"\ninclude = [\"base\"]\n\n\
         [network]\nallow = []\n\n\
         [filesystem]\nread = [\"{{workdir}}\"]\nwrite = [\"{{workdir}}\", \"{{tmp}}\"]\nexec = [{exe}]\n\n\
         [process]\nmax_processes = {DEFAULT_MAX_PROCESSES}\n",
        exe = toml_string(&guardctl.display().to_string()),
    )
}

/// A TOML basic string holding `s` exactly.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The arguments that let the probe binary run under a user's policy.
///
/// What a user policy needs added so the probe binary runs under it: exec
/// of this guardctl, when the policy restricts programs and does not grant
/// it already (`guardctl run --grant exec:PATH`). The default policy grants
/// it itself.
fn probe_grant(guardctl: &Path, plan: &Plan, user_policy: bool) -> Option<GrantItem> {
    (user_policy && plan.filesystem.restricted && !grants(plan, guardctl, true))
        .then(|| GrantItem::Exec(guardctl.display().to_string()))
}

/// A private directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Result<TempDir, SelftestError> {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(|e| SelftestError::Setup {
            what: "a random directory name".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let p = std::env::temp_dir().join(format!("{prefix}-{}", hex::encode(b)));
        std::fs::create_dir(&p).map_err(setup(p.display().to_string()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))
            .map_err(setup(p.display().to_string()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback TCP listener that counts connections and bytes until
/// dropped.
struct TcpTarget {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpTarget {
    fn bind(ip: IpAddr, plan: &Plan) -> Result<Option<TcpTarget>, SelftestError> {
        let Some(l) = bind_unallowed(plan, guard_common::PROTO_TCP, |p| {
            TcpListener::bind(SocketAddr::new(ip, p))
        })?
        else {
            return Ok(None);
        };
        let addr = l.local_addr().map_err(setup("a TCP target"))?;
        l.set_nonblocking(true).map_err(setup("a TCP target"))?;
        let (accepted, bytes, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (a, b, s) = (accepted.clone(), bytes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut conns: Vec<TcpStream> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                if let Ok((c, _)) = l.accept() {
                    a.fetch_add(1, Ordering::Relaxed);
                    if c.set_nonblocking(true).is_ok() {
                        conns.push(c);
                    }
                }
                let mut buf = [0u8; 512];
                conns.retain_mut(|c| match c.read(&mut buf) {
                    Ok(0) => false,
                    Ok(n) => {
                        b.fetch_add(n, Ordering::Relaxed);
                        true
                    }
                    Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                });
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Ok(Some(TcpTarget {
            addr,
            accepted,
            bytes,
            stop,
            thread: Some(thread),
        }))
    }

    fn seen(&self) -> (usize, usize) {
        (
            self.accepted.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for TcpTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A loopback UDP socket that counts datagrams.
struct UdpTarget {
    sock: UdpSocket,
    addr: SocketAddr,
}

impl UdpTarget {
    fn bind(ip: IpAddr, plan: &Plan) -> Result<Option<UdpTarget>, SelftestError> {
        let Some(sock) = bind_unallowed(plan, guard_common::PROTO_UDP, |p| {
            UdpSocket::bind(SocketAddr::new(ip, p))
        })?
        else {
            return Ok(None);
        };
        sock.set_nonblocking(true).map_err(setup("a UDP target"))?;
        let addr = sock.local_addr().map_err(setup("a UDP target"))?;
        Ok(Some(UdpTarget { sock, addr }))
    }

    /// Datagrams received since the last call.
    fn drain(&self) -> usize {
        let mut n = 0;
        let mut buf = [0u8; 512];
        while self.sock.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    }
}

/// Binds on an ephemeral port the policy does not allow (the kernel
/// picks; a port the policy allows is given back and another taken).
/// `None` when no unallowed port turns up: the policy allows (nearly)
/// every port there.
fn bind_unallowed<T: HasPort>(
    plan: &Plan,
    proto: u8,
    bind: impl Fn(u16) -> std::io::Result<T>,
) -> Result<Option<T>, SelftestError> {
    for _ in 0..32 {
        let s = bind(0).map_err(setup("a loopback target"))?;
        let addr = s.port_addr().map_err(setup("a loopback target"))?;
        let allowed = plan
            .network
            .lookup(addr.ip())
            .and_then(|v| port_allowed(v, addr.port(), proto))
            .is_some();
        if !allowed {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

trait HasPort {
    fn port_addr(&self) -> std::io::Result<SocketAddr>;
}
impl HasPort for TcpListener {
    fn port_addr(&self) -> std::io::Result<SocketAddr> {
        self.local_addr()
    }
}
impl HasPort for UdpSocket {
    fn port_addr(&self) -> std::io::Result<SocketAddr> {
        self.local_addr()
    }
}

/// What the outside watches for an attempt.
enum Observe {
    Tcp4,
    Tcp6,
    Udp4,
    Inherited,
    /// A file an escaped program would create.
    Marker(PathBuf),
    /// The secret's content.
    Secret,
    /// A path that must not come to exist (a hard link).
    Absent(PathBuf),
    Nothing,
}

/// One attempt, planned for this host and policy.
struct Planned {
    info: &'static AttemptInfo,
    args: Vec<String>,
    expect: Expect,
    observe: Observe,
    killed_by: Option<i32>,
    skip: Option<String>,
}

/// Everything the battery runs against.
struct Targets {
    tcp4: Option<TcpTarget>,
    tcp6: Option<TcpTarget>,
    udp4: Option<UdpTarget>,
    inherit: Option<TcpTarget>,
    secret: PathBuf,
    secret_text: Vec<u8>,
    work: PathBuf,
    /// `name_to_handle_at` of the secret: (type, bytes as hex).
    handle: Option<(i32, String)>,
}

/// The file handle of `path`, taken outside the scope.
fn file_handle(path: &Path) -> Option<(i32, String)> {
    const MAX_HANDLE: usize = 128;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut buf = vec![0u8; 8 + MAX_HANDLE];
    buf[..4].copy_from_slice(&(MAX_HANDLE as u32).to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    // SAFETY: the buffer holds a struct file_handle with room for
    // MAX_HANDLE bytes, as its first field says; the path is a C string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            buf.as_mut_ptr(),
            &raw mut mount_id,
            0,
        )
    };
    if r != 0 {
        return None;
    }
    let len = u32::from_ne_bytes(buf[..4].try_into().ok()?) as usize;
    let ty = i32::from_ne_bytes(buf[4..8].try_into().ok()?);
    Some((ty, hex::encode(buf.get(8..8 + len)?)))
}

/// Whether the plan grants `access` (`"write"`, `"exec"`) on `path` or an
/// ancestor, as Landlock would.
fn grants(plan: &Plan, path: &Path, exec: bool) -> bool {
    let path = crate::policy::resolve(path);
    plan.filesystem
        .rules
        .iter()
        .any(|r| path.starts_with(&r.path) && if exec { r.access.exec } else { r.access.write })
}

fn reads(plan: &Plan, path: &Path) -> bool {
    let path = crate::policy::resolve(path);
    plan.filesystem
        .rules
        .iter()
        .any(|r| path.starts_with(&r.path) && r.access.read)
}

fn plan_battery(t: &Targets, plan: &Plan, socket: &Path) -> Vec<Planned> {
    use Kind::*;
    let secret = t.secret.display().to_string();
    let work = |n: &str| t.work.join(n).display().to_string();
    let tcp = |target: &Option<TcpTarget>, f: &dyn Fn(SocketAddr) -> String| {
        target
            .as_ref()
            .map(|t| (f(t.addr), format!(":{}/tcp", t.addr.port())))
    };
    let mut out = Vec::new();
    for info in BATTERY {
        let mut args = Vec::new();
        let mut observe = Observe::Nothing;
        let mut killed_by = None;
        let mut skip = None;
        let no_port =
            "the policy allows (nearly) every port on loopback, or the address is missing here";
        let expect = match info.name {
            "net.connect.v4" | "net.connect.v4-mapped" | "net.connect.any" | "net.tcp.fastopen" => {
                observe = Observe::Tcp4;
                let form = |a: SocketAddr| match info.name {
                    "net.connect.v4-mapped" => {
                        format!("[::ffff:127.0.0.1]:{}", a.port())
                    }
                    "net.connect.any" => format!("0.0.0.0:{}", a.port()),
                    _ => a.to_string(),
                };
                match tcp(&t.tcp4, &form) {
                    Some((a, target)) => {
                        args.push(a);
                        Expect::record(&[Network], &[&target], &[])
                    }
                    None => {
                        skip = Some(no_port.to_owned());
                        Expect::Nothing("skipped")
                    }
                }
            }
            "net.connect.v6" => {
                observe = Observe::Tcp6;
                match tcp(&t.tcp6, &|a| a.to_string()) {
                    Some((a, target)) => {
                        args.push(a);
                        Expect::record(&[Network], &[&target], &[])
                    }
                    None => {
                        skip = Some(no_port.to_owned());
                        Expect::Nothing("skipped")
                    }
                }
            }
            "net.udp.sendto" | "net.udp.connect" | "net.udp.sendmsg" => {
                observe = Observe::Udp4;
                match &t.udp4 {
                    Some(u) => {
                        args.push(u.addr.to_string());
                        Expect::record(&[Network], &[&format!(":{}/udp", u.addr.port())], &[])
                    }
                    None => {
                        skip = Some(no_port.to_owned());
                        Expect::Nothing("skipped")
                    }
                }
            }
            "net.raw-socket" | "net.packet-socket" => Expect::record(
                &[Network, Syscall],
                &[],
                &[
                    "process.capabilities",
                    "network.socket-types",
                    "syscalls.socket-families",
                ],
            ),
            "net.inherited-socket" => {
                observe = Observe::Inherited;
                if t.inherit.is_none() {
                    skip = Some(no_port.to_owned());
                }
                Expect::Nothing(
                    "the launcher closes every descriptor it did not open before the program starts, so nothing reaches a hook",
                )
            }
            "abi.i386-socketcall" | "abi.i386-open" | "abi.x32-socket" => {
                if info.name == "abi.i386-open" {
                    args.push(secret.clone());
                }
                if info.name != "abi.x32-socket" {
                    killed_by = Some(libc::SIGSYS);
                }
                if !cfg!(target_arch = "x86_64") {
                    skip = Some("x86_64 only".to_owned());
                }
                Expect::record(
                    &[Syscall, Network],
                    &[],
                    &[
                        "syscalls.architecture",
                        "syscalls.enosys-fallback",
                        "syscalls.default-deny",
                    ],
                )
            }
            "file.read" | "file.write" | "file.proc-self-root" | "file.proc-outsider" => {
                args.push(match info.name {
                    "file.proc-self-root" => format!("/proc/self/root{secret}"),
                    "file.proc-outsider" => format!("/proc/1/root{secret}"),
                    _ => secret.clone(),
                });
                if info.name == "file.write" {
                    observe = Observe::Secret;
                }
                Expect::record(&[File], &[&secret], &[])
            }
            "file.symlink" => {
                args.push(work("selftest-link"));
                Expect::record(&[File], &[&secret, &work("selftest-link")], &[])
            }
            "file.hardlink" => {
                args.push(secret.clone());
                args.push(work("selftest-hardlink"));
                observe = Observe::Absent(t.work.join("selftest-hardlink"));
                Expect::record(&[File], &[&secret, &work("selftest-hardlink")], &[])
            }
            "file.handle" => {
                match &t.handle {
                    Some((ty, h)) => {
                        args.push(ty.to_string());
                        args.push(h.clone());
                    }
                    None => {
                        skip = Some("this file system gives no file handles".to_owned());
                    }
                }
                Expect::record(&[Syscall, File], &["open_by_handle_at"], &[])
            }
            "exec.program" => {
                let marker = t.work.join("marker-program");
                args.push(FORBIDDEN_PROGRAM.to_owned());
                args.push(marker.display().to_string());
                observe = Observe::Marker(marker);
                if grants(plan, Path::new(FORBIDDEN_PROGRAM), true) {
                    skip = Some(format!("the policy grants exec of {FORBIDDEN_PROGRAM}"));
                }
                let real = std::fs::canonicalize(FORBIDDEN_PROGRAM)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| FORBIDDEN_PROGRAM.to_owned());
                Expect::record(&[Exec], &[FORBIDDEN_PROGRAM, &real], &[])
            }
            "exec.memfd-exec-flag" => {
                Expect::record(&[Exec, Syscall], &[], &["syscalls.memfd-exec"])
            }
            "exec.memfd" => {
                let marker = t.work.join("marker-memfd");
                args.push(marker.display().to_string());
                observe = Observe::Marker(marker);
                Expect::record(
                    &[Exec],
                    &["/memfd:selftest-payload"],
                    &["exec.memfd-noexec"],
                )
            }
            "exec.copy" => {
                let marker = t.work.join("marker-copy");
                args.push(work("selftest-copy"));
                args.push(marker.display().to_string());
                observe = Observe::Marker(marker);
                Expect::record(&[Exec], &[&work("selftest-copy")], &[])
            }
            "exec.loader" => {
                let marker = t.work.join("marker-loader");
                args.push(LOADER.to_owned());
                args.push(work("selftest-loaded"));
                args.push(marker.display().to_string());
                observe = Observe::Marker(marker);
                if !Path::new(LOADER).exists() {
                    skip = Some(format!("no {LOADER} on this host"));
                }
                Expect::record(&[Exec], &[], &["exec.loader-direct"])
            }
            "exec.mmap-noexec" => {
                args.push(work("selftest-mapped"));
                Expect::record(&[Exec], &[], &["exec.noexec-mapping"])
            }
            "ctl.socket" => {
                let s = socket.display().to_string();
                args.push(s.clone());
                Expect::record(&[Network, Policy], &[&s], &["control.confined-peer"])
            }
            "ctl.request-channel" => {
                Expect::record(&[Escalation], &[], &[crate::daemon::requests::INVALID_RULE])
            }
            "priv.setuid" => Expect::Nothing(
                "setresuid(0, 0, 0) is allowed and changes nothing for an agent started as root; the wall is that no capability comes back",
            ),
            "priv.ptrace" => Expect::record(&[Syscall], &["ptrace"], &[]),
            "ns.user" => Expect::record(&[Syscall], &[], &["syscalls.namespaces"]),
            "ns.mount" => {
                args.push(t.work.display().to_string());
                Expect::record(&[Syscall], &["unshare", "mount"], &["syscalls.namespaces"])
            }
            "ns.setns" => Expect::record(&[Syscall], &["setns"], &[]),
            "limits.fork" => {
                match plan.process.max_processes {
                    Some(n) => args.push(n.to_string()),
                    None => skip = Some("the policy sets no process limit".to_owned()),
                }
                Expect::record(&[], &[], &["process.max_processes"])
            }
            _ => Expect::Nothing("unknown"),
        };
        // Attempts that write a payload or a link need the work directory
        // writable; reading the secret needs it outside every grant.
        let writes = matches!(
            info.name,
            "file.hardlink"
                | "exec.copy"
                | "exec.loader"
                | "exec.mmap-noexec"
                | "exec.program"
                | "exec.memfd"
        );
        if skip.is_none() && writes && !grants(plan, &t.work, false) {
            skip = Some(
                "the policy does not grant {workdir} write, where this attempt writes its payload"
                    .to_owned(),
            );
        }
        if skip.is_none() && info.family == Family::File && reads(plan, &t.secret) {
            skip = Some("the policy grants the place of the secret".to_owned());
        }
        out.push(Planned {
            info,
            args,
            expect,
            observe,
            killed_by,
            skip,
        });
    }
    out
}

/// guardd answers hello.
fn hello(socket: &Path) -> Result<(), SelftestError> {
    let mut c = connect(socket)?;
    c.call(1, &Request::Hello(api::Empty {}))
        .map(|_| ())
        .map_err(|e| SelftestError::Hello {
            socket: socket.display().to_string(),
            message: e.to_string(),
        })
}

fn connect(socket: &Path) -> Result<LineConn, SelftestError> {
    std::os::unix::net::UnixStream::connect(socket)
        .map(|s| LineConn::new(std::os::fd::OwnedFd::from(s)))
        .map_err(|source| SelftestError::Guardd {
            socket: socket.display().to_string(),
            source,
        })
}

/// Every record of `agent` (its unique name), from guardd.
fn records_of(socket: &Path, agent: &str) -> Result<Vec<Record>, String> {
    let mut conn = connect(socket).map_err(|e| e.to_string())?;
    let req = Request::Logs(LogsRequest {
        agent: Some(agent.to_owned()),
        ..LogsRequest::default()
    });
    conn.send_request(1, &req).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    loop {
        let Some(line) = conn.read_line().map_err(|e| e.to_string())? else {
            return Ok(out);
        };
        let map = api::parse_response(&line).map_err(|e| e.to_string())?;
        if map.get("done").and_then(|v| v.as_bool()) == Some(true) {
            return Ok(out);
        }
        if let Some(v) = map.get("record")
            && let Ok(r) = serde_json::from_value::<Record>(v.clone())
        {
            out.push(r);
        }
    }
}

fn summarise(rec: &Record) -> String {
    format!(
        "journal: {} {} refused by {} ({})",
        rec.action,
        rec.target.escaped(),
        rec.rule,
        rec.layer
    )
}

/// Polls the journal for the refusal `expect` names.
fn find_record(socket: &Path, agent: &str, expect: &Expect, mode: Mode) -> Recorded {
    if let Expect::Nothing(why) = expect {
        return Recorded::NotExpected((*why).to_owned());
    }
    let deadline = Instant::now() + RECORD_WAIT;
    loop {
        if let Ok(recs) = records_of(socket, agent)
            && let Some(r) = recs.iter().find(|r| record_matches(expect, r, mode))
        {
            return Recorded::Recorded(summarise(r));
        }
        if Instant::now() >= deadline {
            return Recorded::Missing;
        }
        std::thread::sleep(RECORD_POLL);
    }
}

/// The probe's line among guardctl run's output.
fn probe_line(stdout: &[u8]) -> Option<ProbeReport> {
    String::from_utf8_lossy(stdout)
        .lines()
        .rev()
        .filter(|l| l.starts_with('{'))
        .find_map(|l| serde_json::from_str(l).ok())
}

/// Runs `cmd`, killing it past the timeout.
fn run_bounded(mut cmd: Command) -> std::io::Result<(RunEnd, Vec<u8>, Vec<u8>)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Both pipes drained while the run goes on, so a chatty run cannot
    // block on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut b);
            }
            b
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + ATTEMPT_TIMEOUT;
    let end = loop {
        if let Some(status) = child.try_wait()? {
            break RunEnd::Exit(status.code().unwrap_or(125));
        }
        if Instant::now() > deadline {
            // Our own child, by its pid.
            let _ = child.kill();
            let _ = child.wait();
            break RunEnd::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    Ok((end, stdout, stderr))
}

/// Runs the battery. Each result is handed to `report` as it is made.
pub fn run(
    opts: &Options,
    mut report: impl FnMut(&AttemptResult),
) -> Result<Vec<AttemptResult>, SelftestError> {
    for name in &opts.only {
        if !BATTERY.iter().any(|a| a.name == name) {
            return Err(SelftestError::UnknownAttempt(name.clone()));
        }
    }
    hello(&opts.socket)?;
    let base = TempDir::new("guard-selftest")?;
    let work = base.0.join("work");
    let secret_dir = base.0.join("secret");
    for d in [&work, &secret_dir] {
        std::fs::create_dir(d).map_err(setup(d.display().to_string()))?;
    }
    // The agent's working directory must be reachable whoever it runs as.
    for d in [&base.0, &work] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
            .map_err(setup(d.display().to_string()))?;
    }
    let mut nonce = [0u8; 4];
    getrandom::fill(&mut nonce).map_err(|e| SelftestError::Setup {
        what: "a random nonce".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let nonce = hex::encode(nonce);
    let secret = secret_dir.join("secret.txt");
    let secret_text = format!("guard selftest secret {nonce}\n").into_bytes();
    std::fs::write(&secret, &secret_text).map_err(setup("the secret file"))?;

    let (policy_path, policy_text) = match &opts.policy {
        Some(p) => (
            p.clone(),
            std::fs::read_to_string(p)
                .map_err(|e| SelftestError::Policy(format!("{}: {e}", p.display())))?,
        ),
        None => {
            let p = base.0.join("selftest.toml");
            let text = default_policy(&opts.guardctl);
            std::fs::write(&p, &text).map_err(setup("the default policy"))?;
            (p, text)
        }
    };
    let file = policy_path.display().to_string();
    let vars = Vars {
        workdir: work.clone(),
        home: crate::launch::builder::home_dir(),
        tmp: base.0.join("tmp-placeholder"),
    };
    let compile = |grants: &[GrantItem]| {
        Policy::parse_all_granted(&policy_text, &file, grants)
            .map_err(|errs| crate::policy::first_error(errs, &file))
            .and_then(|p| p.compile(&vars))
            .map_err(|e| SelftestError::Policy(e.to_string()))
    };
    let mut plan = compile(&[])?;
    // A user policy that restricts programs gets the probe binary added for
    // the run (`guardctl run --grant exec:...`), and the attempts are judged
    // against exactly that plan.
    let run_extra = probe_grant(&opts.guardctl, &plan, opts.policy.is_some());
    if let Some(item) = &run_extra {
        plan = compile(std::slice::from_ref(item))?;
    }
    let run_extra: Vec<OsString> = run_extra
        .iter()
        .flat_map(|g| [OsString::from("--grant"), OsString::from(g.spec())])
        .collect();

    let targets = Targets {
        tcp4: TcpTarget::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), &plan)?,
        // A host without IPv6 loopback skips the v6 attempt.
        tcp6: TcpTarget::bind(IpAddr::V6(Ipv6Addr::LOCALHOST), &plan).unwrap_or(None),
        udp4: UdpTarget::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), &plan)?,
        inherit: TcpTarget::bind(IpAddr::V4(Ipv4Addr::LOCALHOST), &plan)?,
        handle: file_handle(&secret),
        secret,
        secret_text,
        work: work.clone(),
    };
    std::os::unix::fs::symlink(&targets.secret, work.join("selftest-link"))
        .map_err(setup("the symlink to the secret"))?;

    let mut results = Vec::new();
    for p in plan_battery(&targets, &plan, &opts.socket) {
        if !opts.only.is_empty() && !opts.only.iter().any(|n| n == p.info.name) {
            continue;
        }
        let agent = format!("selftest-{}-{nonce}", p.info.name);
        let r = match &p.skip {
            Some(why) => AttemptResult {
                attempt: p.info.name.to_owned(),
                family: p.info.family,
                held: Held::Skipped,
                recorded: Recorded::NotChecked,
                agent: String::new(),
                detail: why.clone(),
            },
            None => attempt(opts, &policy_path, &run_extra, &plan, &targets, &p, &agent)?,
        };
        report(&r);
        results.push(r);
    }
    Ok(results)
}

fn attempt(
    opts: &Options,
    policy_path: &Path,
    run_extra: &[OsString],
    plan: &Plan,
    t: &Targets,
    p: &Planned,
    agent: &str,
) -> Result<AttemptResult, SelftestError> {
    let before_tcp4 = t.tcp4.as_ref().map(TcpTarget::seen);
    let before_tcp6 = t.tcp6.as_ref().map(TcpTarget::seen);
    if let Some(u) = &t.udp4 {
        u.drain();
    }
    // The inherited socket: connected outside the scope and left open
    // (not close-on-exec) across guardctl run, as a careless caller would.
    let inherited = match (&p.observe, &t.inherit) {
        (Observe::Inherited, Some(target)) => {
            let s = TcpStream::connect(target.addr).map_err(setup("the inherited socket"))?;
            // SAFETY: clearing FD_CLOEXEC on a descriptor we own.
            unsafe { libc::fcntl(s.as_raw_fd(), libc::F_SETFD, 0) };
            Some(s)
        }
        _ => None,
    };
    let before_inherit = t.inherit.as_ref().map(TcpTarget::seen);

    let mut cmd = Command::new(&opts.guardctl);
    cmd.arg("--socket")
        .arg(&opts.socket)
        .arg("run")
        .arg("--policy")
        .arg(policy_path)
        .arg("--name")
        .arg(agent);
    cmd.args(run_extra);
    cmd.arg("--")
        .arg(&opts.guardctl)
        .arg("selftest-probe")
        .arg(p.info.name)
        .args(&p.args)
        .current_dir(&t.work)
        .env_remove("GUARD_SOCKET");
    let ran = run_bounded(cmd);
    drop(inherited);
    let (end, stdout, stderr) = ran.map_err(setup("guardctl run"))?;
    // Give the targets a moment: a datagram or connection in flight.
    std::thread::sleep(Duration::from_millis(20));

    let observed = match &p.observe {
        Observe::Tcp4 => seen_tcp(t.tcp4.as_ref(), before_tcp4),
        Observe::Tcp6 => seen_tcp(t.tcp6.as_ref(), before_tcp6),
        Observe::Udp4 => t
            .udp4
            .as_ref()
            .map(UdpTarget::drain)
            .filter(|n| *n > 0)
            .map(|n| format!("{n} datagram(s) arrived")),
        Observe::Inherited => t.inherit.as_ref().zip(before_inherit).and_then(|(x, b)| {
            let now = x.seen();
            (now.1 > b.1).then(|| {
                format!(
                    "{} byte(s) arrived on the inherited connection",
                    now.1 - b.1
                )
            })
        }),
        Observe::Marker(m) => m
            .exists()
            .then(|| format!("{} was created by the payload", m.display())),
        Observe::Secret => (std::fs::read(&t.secret).ok().as_deref() != Some(&t.secret_text[..]))
            .then(|| "the secret's content changed".to_owned()),
        Observe::Absent(path) => std::fs::symlink_metadata(path)
            .is_ok()
            .then(|| format!("{} exists", path.display())),
        Observe::Nothing => None,
    };
    let report = probe_line(&stdout);
    let (held, mut detail) = judge(report.as_ref(), end, observed.as_deref(), p.killed_by);
    if held == Held::CouldNotTest {
        let err = String::from_utf8_lossy(&stderr);
        if let Some(l) = err.lines().find(|l| l.starts_with("guardctl:")) {
            detail = format!("{detail}; {l}");
        }
    }
    let recorded = if held == Held::Held {
        find_record(&opts.socket, agent, &p.expect, plan.mode)
    } else {
        Recorded::NotChecked
    };
    Ok(AttemptResult {
        attempt: p.info.name.to_owned(),
        family: p.info.family,
        held,
        recorded,
        agent: agent.to_owned(),
        detail,
    })
}

fn seen_tcp(t: Option<&TcpTarget>, before: Option<(usize, usize)>) -> Option<String> {
    let (t, b) = t.zip(before)?;
    let now = t.seen();
    (now != b).then(|| {
        format!(
            "{} connection(s), {} byte(s) reached {}",
            now.0 - b.0,
            now.1 - b.1,
            t.addr
        )
    })
}

#[cfg(test)]
mod tests;
