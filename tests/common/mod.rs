//! Harness for guard's privileged integration tests.
//!
//! Each test starts its own guardd on a fresh socket, journal and instance
//! name (so its parent cgroup and bpffs directory are its own), and `Drop`
//! stops it and removes anything left — cgroups, pins, processes — even when
//! the test panics. Tests run as root on the real kernel; there is no mock.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::{
    ffi::{OsStr, OsString},
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, UdpSocket},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

pub const GUARDD: &str = env!("CARGO_BIN_EXE_guardd");
pub const GUARDCTL: &str = env!("CARGO_BIN_EXE_guardctl");
/// The system interpreter: not a pyenv shim (those live under /root and
/// re-exec through bash, which policies and other users cannot follow).
pub const PYTHON: &str = "/usr/bin/python3";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn agent_script(name: &str) -> String {
    repo().join("tests/agents").join(name).display().to_string()
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "guard's integration tests load BPF programs and create cgroups: run them as root (cargo xtask test)"
    );
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Where the cgroup2 hierarchy is mounted.
pub fn v2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in info.lines() {
        if let Some((pre, post)) = line.split_once(" - ")
            && post.starts_with("cgroup2 ")
        {
            return PathBuf::from(pre.split(' ').nth(4).unwrap());
        }
    }
    panic!("no cgroup2 mount");
}

/// The v1 hierarchies (hybrid hosts), where guardd makes a parent cgroup
/// per controller it cannot use in v2.
pub fn v1_roots() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            post.starts_with("cgroup ")
                .then(|| PathBuf::from(pre.split(' ').nth(4).unwrap()))
        })
        .collect()
}

/// The bpffs directory of guardd `instance`'s pins.
pub fn pins(instance: &str) -> PathBuf {
    Path::new("/sys/fs/bpf").join(instance)
}

/// The v2 parent cgroup of guardd `instance`.
pub fn parent_cgroup(instance: &str) -> PathBuf {
    v2_root().join(instance)
}

/// Waits up to `within` for `child` to end; past that, kills and reaps it
/// and returns `None`.
pub fn wait_or_kill(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops a guardd this test started with SIGTERM and waits for it (15 s,
/// then SIGKILL).
pub fn terminate(mut c: Child) {
    terminate_within(&mut c, Duration::from_secs(15));
}

/// Sends `c` SIGTERM and waits up to `within` for it to exit: its exit
/// status, or `None` if it had to be killed.
fn terminate_within(c: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    // SAFETY: signalling the guardd this test started, by pid.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    wait_or_kill(c, within)
}

/// Removes whatever guardd `instance` did not clean up (it crashed, or the
/// test did): kills processes left in its cgroups, removes cgroups and pins.
pub fn remove_instance(instance: &str) {
    let v2 = parent_cgroup(instance);
    if v2.exists() {
        if let Ok(entries) = std::fs::read_dir(&v2) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        remove_tree(&v2);
    }
    for root in v1_roots() {
        let d = root.join(instance);
        if d.exists() {
            remove_tree(&d);
        }
    }
    let pins = pins(instance);
    if pins.exists() {
        let _ = std::fs::remove_dir_all(&pins);
    }
}

/// `guardctl logs verify --journal path`: its exit code and output.
pub fn verify_journal(path: &Path) -> (i32, String) {
    let out = Command::new(GUARDCTL)
        .args(["logs", "verify", "--journal", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Runs `sql` on a journal file directly, as someone tampering with it
/// would.
pub fn sqlite(path: &Path, sql: &str) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(sql).unwrap();
}

/// The `seq` of each record.
pub fn seqs(recs: &[Value]) -> Vec<u64> {
    recs.iter().map(|r| r["seq"].as_u64().unwrap()).collect()
}

/// A policy named `name` that allows no network.
pub fn net_policy(g: &Guardd, name: &str) -> PathBuf {
    g.write_policy(
        name,
        &format!("[policy]\nname = \"{name}\"\n[network]\nallow = []\n"),
    )
}

pub struct Guardd {
    child: Option<Child>,
    /// Extra guardd arguments, kept for restarts.
    extra: Vec<String>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub journal: PathBuf,
    pub instance: String,
}

impl Guardd {
    pub fn start() -> Guardd {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Guardd {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let instance = format!("guard-test-{}-{n}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix("guard-test")
            .tempdir()
            .unwrap();
        // World-traversable so agents running as another user can reach
        // policy files and probes.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("guard.sock");
        let journal = dir.path().join("journal.db");
        let mut g = Guardd {
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            socket,
            journal,
            instance,
            dir,
        };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("guardd.log")).unwrap();
        let mut cmd = Command::new(GUARDD);
        cmd.args(["--socket", self.socket.to_str().unwrap()])
            .args([
                "--state-dir",
                self.dir.path().join("state").to_str().unwrap(),
            ])
            .args(["--journal", self.journal.to_str().unwrap()])
            .args(["--instance", &self.instance])
            .args(["--metrics", "127.0.0.1:0"])
            .args(&self.extra);
        // Policies with host rules need an upstream; the host's resolv.conf
        // may have none. Tests that resolve names give their own server.
        if !self.extra.iter().any(|a| a == "--dns-upstream") {
            cmd.args(["--dns-upstream", "127.0.77.254:53"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                // The socket is bound before start-up finishes; a hello
                // round trip means guardd serves.
                if self.ctl(&["ps"]).status.success() {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("guardd exited during start-up ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "guardd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where guardd serves its metrics.
    pub fn metrics_addr(&self) -> String {
        let f = self.dir.path().join("state/metrics.addr");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(a) = std::fs::read_to_string(&f) {
                return a;
            }
            assert!(Instant::now() < deadline, "guardd wrote no metrics address");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("guardd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Stops guardd with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            terminate(c);
        }
    }

    /// Sends guardd SIGTERM and waits up to `within` for it to exit: its
    /// exit status, or `None` if it had to be killed.
    pub fn stop_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        terminate_within(&mut self.child.take()?, within)
    }

    /// Kills guardd abruptly (SIGKILL), as a crash would.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn restart_after_crash(&mut self) {
        self.spawn();
    }

    pub fn ctl_cmd(&self) -> Command {
        let mut c = Command::new(GUARDCTL);
        c.env("GUARD_SOCKET", &self.socket);
        c
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_cmd().args(args).output().unwrap()
    }

    pub fn write_policy(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `guardctl run --policy P [extra] -- cmd...` in `workdir` (the test's
    /// temporary directory unless given).
    pub fn run(&self, policy: &Path, extra: &[&str], cmd: &[&str]) -> Output {
        self.run_in(policy, extra, cmd, self.dir.path())
    }

    pub fn run_in(&self, policy: &Path, extra: &[&str], cmd: &[&str], workdir: &Path) -> Output {
        self.run_cmd(policy, extra, cmd)
            .current_dir(workdir)
            .output()
            .unwrap()
    }

    pub fn spawn_run(&self, policy: &Path, extra: &[&str], cmd: &[&str]) -> Child {
        self.run_cmd(policy, extra, cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// The `guardctl run --policy P [extra] -- cmd...` command for this
    /// guardd, in the test's temporary directory, for a test to adjust
    /// (working directory, standard streams, ...) before running it.
    pub fn run_cmd<S: AsRef<OsStr>>(&self, policy: &Path, extra: &[&str], cmd: &[S]) -> Command {
        let mut c = self.ctl_cmd();
        c.current_dir(self.dir.path())
            .args(run_args(policy, extra, cmd));
        c
    }

    /// Journal records as JSON (`guardctl logs --json` with `args`).
    pub fn logs(&self, args: &[&str]) -> Vec<Value> {
        let out = self.ctl(&[&["logs", "--json"], args].concat());
        assert!(
            out.status.success(),
            "guardctl logs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Every journal record, once at least `n` of them match `pred`
    /// (records after a refusal are appended asynchronously); fails after
    /// 10 s with what was there.
    pub fn logs_until(&self, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let recs = self.logs(&[]);
            if recs.iter().filter(|r| pred(r)).count() >= n {
                return recs;
            }
            assert!(Instant::now() < deadline, "{recs:#?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The start record of agent `id`.
    pub fn start_record(&self, id: &str) -> Value {
        self.logs(&["--agent", id])
            .into_iter()
            .find(|r| r["action"] == "start")
            .unwrap()
    }

    /// The agent id from guardctl's summary line.
    pub fn agent_id(out: &Output) -> String {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .find(|l| l.starts_with("guard: agent"))
            .unwrap_or_else(|| panic!("no summary line in:\n{err}"));
        line.split("--agent ").nth(1).unwrap().trim().to_owned()
    }
}

/// The arguments of `guardctl run --policy P [extra] -- cmd...`, for
/// commands the harness does not build itself (another guardctl, another
/// user, a wrapper program).
pub fn run_args<S: AsRef<OsStr>>(policy: &Path, extra: &[&str], cmd: &[S]) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["run".into(), "--policy".into(), policy.into()];
    a.extend(extra.iter().map(OsString::from));
    a.push("--".into());
    a.extend(cmd.iter().map(|c| c.as_ref().to_owned()));
    a
}

impl Drop for Guardd {
    fn drop(&mut self) {
        self.stop();
        remove_instance(&self.instance);
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP listener on loopback that accepts and closes connections until
/// dropped.
pub struct Listener {
    pub port: u16,
    stop: Arc<AtomicBool>,
    pub accepted: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
    addr: String,
}

impl Listener {
    pub fn tcp(addr: &str) -> Listener {
        let l = TcpListener::bind(format!("{addr}:0")).unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (s, a) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        a.fetch_add(1, Ordering::Relaxed);
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                        let mut buf = [0u8; 512];
                        let n = c.read(&mut buf).unwrap_or(0);
                        if buf[..n].starts_with(b"GET ") {
                            let _ =
                                c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Listener {
            port,
            stop,
            accepted,
            thread: Some(thread),
            addr: addr.to_owned(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = &self.addr;
    }
}

/// A UDP socket bound on loopback (so sends to it are not refused by the
/// network stack) that counts datagrams.
pub fn udp_sink(addr: &str) -> (UdpSocket, u16) {
    let s = UdpSocket::bind(format!("{addr}:0")).unwrap();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

/// A free TCP port on 127.0.0.1 that nothing listens on.
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Parses the probe's JSON lines.
pub fn probe_results(out: &Output) -> Vec<Value> {
    BufReader::new(&out.stdout[..])
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect()
}

pub fn errno_of(results: &[Value], op: &str) -> Option<String> {
    let r = results
        .iter()
        .find(|r| r["op"] == op)
        .unwrap_or_else(|| panic!("no result for {op} in {results:?}"));
    r["errno"].as_str().map(str::to_owned)
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Records of `kind` for `agent`.
pub fn of_kind<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["kind"] == kind).collect()
}

/// Opens `net.ipv4.ping_group_range` to everyone while held, so that ICMP
/// "ping" sockets get past the kernel's own group check and reach guard's
/// `sock_create` hook. Reference-counted across the tests of one binary and
/// restored when the last holder drops.
pub struct PingSockets;

static PING_STATE: std::sync::Mutex<(usize, Option<String>)> = std::sync::Mutex::new((0, None));
const PING_RANGE: &str = "/proc/sys/net/ipv4/ping_group_range";

impl PingSockets {
    pub fn open() -> PingSockets {
        let mut st = PING_STATE.lock().unwrap_or_else(|e| e.into_inner());
        if st.0 == 0 {
            st.1 = Some(std::fs::read_to_string(PING_RANGE).unwrap());
            std::fs::write(PING_RANGE, "0 2147483647").unwrap();
        }
        st.0 += 1;
        PingSockets
    }
}

impl Drop for PingSockets {
    fn drop(&mut self) {
        let mut st = PING_STATE.lock().unwrap_or_else(|e| e.into_inner());
        st.0 -= 1;
        if st.0 == 0
            && let Some(old) = st.1.take()
        {
            let _ = std::fs::write(PING_RANGE, old.trim());
        }
    }
}

/// A policy directory laid out as kubelet mounts a ConfigMap: the files
/// live in a versioned directory, `..data` links to it and each key links
/// through `..data`; an update is one rename of `..data`.
pub struct ConfigMapDir {
    pub dir: tempfile::TempDir,
    version: u32,
}

impl ConfigMapDir {
    pub fn new(files: &[(&str, &str)]) -> ConfigMapDir {
        let mut c = ConfigMapDir::empty();
        c.update(files);
        c
    }

    /// No version yet (an empty directory).
    pub fn empty() -> ConfigMapDir {
        let dir = tempfile::Builder::new()
            .prefix("guard-test-policies")
            .tempdir()
            .unwrap();
        // Readable by guardd in a container whatever the umask.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        ConfigMapDir { dir, version: 0 }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn update(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let v = format!("..v{}", self.version);
        let vdir = self.path().join(&v);
        std::fs::create_dir(&vdir).unwrap();
        for (name, text) in files {
            std::fs::write(vdir.join(name), text).unwrap();
        }
        let tmp = self.path().join("..data_tmp");
        std::os::unix::fs::symlink(&v, &tmp).unwrap();
        std::fs::rename(&tmp, self.path().join("..data")).unwrap();
        for (name, _) in files {
            let link = self.path().join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
    }
}

/// A python agent that connects to `socket`, sends each request line, and
/// prints one JSON line per reply (or the errno of the connect).
pub fn client_script(socket: &std::path::Path, requests: &[&str]) -> String {
    format!(
        r#"
import errno, json, socket, sys
out = []
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect({sock:?})
except OSError as e:
    print(json.dumps({{"connected": False, "errno": errno.errorcode.get(e.errno, str(e.errno))}}))
    sys.exit(0)
f = s.makefile("rwb")
for line in {reqs:?}:
    try:
        f.write(line.encode() + b"\n"); f.flush()
        out.append(f.readline().decode().strip())
    except OSError as e:
        # guardd may have answered and closed before the request was sent:
        # its answer is still in the receive queue.
        try:
            pending = s.recv(65536).decode().strip()
        except OSError:
            pending = ""
        out.append(pending or "closed: " + errno.errorcode.get(e.errno, str(e.errno)))
print(json.dumps({{"connected": True, "replies": out}}))
"#,
        sock = socket.display().to_string(),
        reqs = requests,
    )
}

pub fn last_json(out: &std::process::Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON from the agent: {}", describe(out)));
    serde_json::from_str(line).unwrap()
}
