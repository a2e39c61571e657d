//! guardd as a service, and counting (issue 10): refusals counted whatever
//! layer refused them and real apart from would-be ones, start-up that
//! fails leaves nothing behind and readiness is announced only when true,
//! SIGHUP does not kill, logs carry no colour off a terminal, the readiness
//! endpoint, bounded metric labels, and errors without protocol tags.
//! Root, real kernel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::{fd::FromRawFd, unix::net::UnixDatagram},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

// ---------------------------------------------------------------- helpers

/// `GET path` on guardd's metrics address: status code and body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr.trim()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {resp:?}"));
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// A guardd started directly (not through the harness), for start-ups
/// the harness cannot express: failing ones, a notify socket, a terminal.
/// `Drop` ends it by pid and removes whatever it left.
struct Direct {
    child: Option<Child>,
    dir: tempfile::TempDir,
    instance: String,
    journal: PathBuf,
}

static DIRECT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Direct {
    fn new() -> Direct {
        require_root();
        let n = DIRECT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = tempfile::Builder::new()
            .prefix("guard-service")
            .tempdir()
            .unwrap();
        Direct {
            child: None,
            journal: dir.path().join("journal.db"),
            dir,
            instance: format!("guard-svc-{}-{n}", std::process::id()),
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("guard.sock")
    }

    fn journal(&self) -> PathBuf {
        self.journal.clone()
    }

    fn command(&self, metrics: &str) -> Command {
        let mut c = Command::new(GUARDD);
        c.args(["--socket", self.socket().to_str().unwrap()])
            .args([
                "--state-dir",
                self.dir.path().join("state").to_str().unwrap(),
            ])
            .args(["--journal", self.journal().to_str().unwrap()])
            .args(["--instance", &self.instance])
            .args(["--metrics", metrics])
            .stdin(Stdio::null());
        c
    }

    /// Runs a guardd that must fail to start; its output.
    fn run_failing(&mut self, mut cmd: Command) -> Output {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().unwrap();
        let pid = child.id();
        self.child = None;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(out) => out.unwrap(),
            Err(_) => {
                // SAFETY: signalling the guardd this test started, by pid.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                panic!("guardd did not give up starting within 30 s");
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(GUARDCTL)
            .env("GUARD_SOCKET", self.socket())
            .args(args)
            .output()
            .unwrap()
    }

    fn metrics_addr(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("state/metrics.addr")).ok()
    }

    fn assert_nothing_left(&self) {
        assert!(
            !pins(&self.instance).exists(),
            "pins left behind: {:?}",
            std::fs::read_dir(pins(&self.instance))
                .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        );
        assert!(
            !parent_cgroup(&self.instance).exists(),
            "cgroup left behind: {}",
            parent_cgroup(&self.instance).display()
        );
        for root in v1_roots() {
            let d = root.join(&self.instance);
            assert!(!d.exists(), "v1 cgroup left behind: {}", d.display());
        }
        assert!(!self.socket().exists(), "socket left behind");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("guardd.log")
    }

    /// Starts `cmd` (from [`Direct::command`]) as this guardd, its output
    /// in [`Direct::log_path`].
    fn spawn_logged(&mut self, mut cmd: Command) {
        let log = std::fs::File::create(self.log_path()).unwrap();
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            terminate(c);
        }
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        self.stop();
        remove_instance(&self.instance);
    }
}

/// Whether `pid` is running (not gone, not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().chars().next())
        })
        .flatten()
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// The agent's refusals in `recs` by verdict, each record standing for
/// `1 + detail.repeated` of them. Gap records are losses, lifecycle records
/// no action of the agent, and guardd's refusals of other people's requests
/// about the agent no refusal of the agent.
fn journal_counts(recs: &[Value]) -> (u64, u64) {
    let weight = |r: &Value| 1 + r["detail"]["repeated"].as_u64().unwrap_or(0);
    let sum = |v: &str| {
        recs.iter()
            .filter(|r| {
                r["verdict"] == v
                    && r["kind"] != "gap"
                    && r["kind"] != "lifecycle"
                    && (r["layer"] != "guardd" || r["rule"] == "control.confined-peer")
            })
            .map(weight)
            .sum()
    };
    (sum("denied"), sum("audit"))
}

/// The `ps --json` entry of the agent named `name`, or what ps said.
fn ps_entry(g: &Guardd, name: &str) -> Result<Value, String> {
    let out = g.ctl(&["ps", "--json"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["name"] == name)
        .ok_or_else(|| describe(&out))
}

// ----------------------------------------------------------- 1. counting

#[test]
fn audit_summary_counts_real_refusals_apart_from_would_be_ones() {
    let g = Guardd::start();
    let closed = closed_port();
    let p = g.write_policy(
        "aud",
        "[policy]\nname = \"aud\"\nmode = \"audit\"\n[network]\nallow = []\n",
    );
    // In audit mode the TCP connect is only recorded (would be refused),
    // while guardd's socket (a Unix rule) and mount(2) (seccomp) are really
    // refused.
    let script = format!(
        r#"
import ctypes, socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try: s.connect(("127.0.0.1", {closed}))
except OSError as e: print("tcp", e.errno)
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try: u.connect({sock:?})
except OSError as e: print("unix", e.errno)
libc = ctypes.CDLL(None, use_errno=True)
print("mount", libc.syscall(165, 0, 0, 0, 0, 0), ctypes.get_errno())
"#,
        sock = g.socket.display().to_string()
    );
    let out = g.run(&p, &[], &[PYTHON, "-c", &script]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("unix 1"), "EPERM expected: {stdout}");
    assert!(stdout.contains("mount -1 1"), "EPERM expected: {stdout}");
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out)]);
    let (denied, audited) = journal_counts(&recs);
    assert!(denied >= 2, "unix and mount really refused: {recs:#?}");
    assert!(audited >= 1, "the TCP connect would have been: {recs:#?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let summary = err
        .lines()
        .find(|l| l.starts_with("guard: agent"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        summary.contains(&format!("; {denied} denied, ")),
        "{summary} (journal: {denied} denied, {audited} audit)"
    );
    assert!(
        summary.contains(&format!("{audited} would have been denied (audit mode)")),
        "{summary} (journal: {denied} denied, {audited} audit)"
    );
    // The exit record says the same.
    let exit = recs
        .iter()
        .find(|r| r["kind"] == "lifecycle" && r["action"] == "exit")
        .unwrap();
    assert_eq!(exit["detail"]["denied"], denied, "{exit}");
    assert_eq!(exit["detail"]["audited"], audited, "{exit}");
}

#[test]
fn ps_counts_refusals_of_every_layer() {
    let mut g = Guardd::start();
    let work = g.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let secret_dir = g.dir.path().join("secret");
    std::fs::create_dir_all(&secret_dir).unwrap();
    let secret = secret_dir.join("key.txt");
    std::fs::write(&secret, "TOP SECRET\n").unwrap();
    let closed = closed_port();
    let p = g.write_policy(
        "layers",
        "[policy]\nname = \"layers\"\ninclude = [\"base\", \"python\"]\n\
         [filesystem]\nread = [\"{workdir}\"]\nexec = [\"/bin/true\", \"/usr/bin/true\"]\n\
         [network]\nallow = []\n",
    );
    // A file refusal (Landlock), a program refusal, a connect refusal
    // (cgroup BPF) and a system call refusal (seccomp), then it waits.
    let script = format!(
        r#"
import ctypes, socket, subprocess, sys, time
try: open({secret:?}).read()
except OSError as e: print("read", e.errno)
try: subprocess.run(["/usr/bin/id"])
except OSError as e: print("exec", e.errno)
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try: s.connect(("127.0.0.1", {closed}))
except OSError as e: print("tcp", e.errno)
libc = ctypes.CDLL(None, use_errno=True)
print("mount", libc.syscall(165, 0, 0, 0, 0, 0), ctypes.get_errno())
print("done", flush=True)
time.sleep(60)
"#,
        secret = secret.display().to_string()
    );
    let mut child = g
        .run_cmd(&p, &["--name", "layers"], &[PYTHON, "-c", script.as_str()])
        .current_dir(&work)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.contains("done") {
        let mut buf = [0u8; 256];
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0 && Instant::now() < deadline, "agent ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    for op in ["read 13", "exec 13", "tcp 1", "mount -1 1"] {
        assert!(seen.contains(op), "{op} expected in {seen}");
    }
    // The monitor journals asynchronously: wait until ps and the journal
    // agree, and check the layers are all there.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (entry, recs) = loop {
        let entry = ps_entry(&g, "layers").unwrap_or_else(|e| panic!("{e}"));
        let recs = g.logs(&["--agent", "layers"]);
        let (denied, _) = journal_counts(&recs);
        let layers: std::collections::BTreeSet<&str> = recs
            .iter()
            .filter(|r| r["verdict"] == "denied")
            .filter_map(|r| r["layer"].as_str())
            .collect();
        if entry["denied"] == denied && layers.contains("landlock") && layers.contains("seccomp") {
            break (entry, recs);
        }
        assert!(
            Instant::now() < deadline,
            "ps says {} denied, the journal {denied} ({layers:?}):\n{recs:#?}",
            entry["denied"]
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (denied, audited) = journal_counts(&recs);
    assert!(denied >= 4, "{recs:#?}");
    assert_eq!(entry["audited"], audited);
    assert_eq!(audited, 0);
    let landlock = recs
        .iter()
        .filter(|r| r["verdict"] == "denied" && r["layer"] == "landlock")
        .count();
    assert!(landlock >= 1, "{recs:#?}");
    // The table shows the same count.
    let table = String::from_utf8_lossy(&g.ctl(&["ps"]).stdout).into_owned();
    let row = table.lines().find(|l| l.contains("layers")).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[cols.len() - 3], denied.to_string(), "{table}");
    assert!(table.lines().next().unwrap().contains("DENIED"));
    // The count carries over a restart of guardd (the agent is re-adopted).
    g.restart();
    let entry = ps_entry(&g, "layers").unwrap_or_else(|e| panic!("not re-adopted: {e}"));
    assert_eq!(entry["denied"], denied, "after a restart: {entry}");
    assert!(g.ctl(&["kill", "layers"]).status.success());
    let _ = child.wait();
}

// ----------------------------------------------- 3. start-up and readiness

#[test]
fn a_corrupt_journal_fails_start_up_and_leaves_nothing_behind() {
    let mut d = Direct::new();
    std::fs::write(d.journal(), "this is not a journal\n".repeat(500)).unwrap();
    let notify = UnixDatagram::bind(d.dir.path().join("notify")).unwrap();
    notify.set_nonblocking(true).unwrap();
    let mut cmd = d.command("127.0.0.1:0");
    cmd.env("NOTIFY_SOCKET", d.dir.path().join("notify"));
    let out = d.run_failing(cmd);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("guardd cannot start"), "{err}");
    assert!(
        !err.contains("guardd ready"),
        "said ready before failing: {err}"
    );
    let mut buf = [0u8; 256];
    assert!(notify.recv(&mut buf).is_err(), "READY sent before failing");
    d.assert_nothing_left();
}

#[test]
fn a_taken_metrics_port_fails_start_up_and_leaves_nothing_behind() {
    let mut d = Direct::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let cmd = d.command(&addr);
    let out = d.run_failing(cmd);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("binding the metrics address"), "{err}");
    assert!(!err.contains("guardd ready"), "{err}");
    d.assert_nothing_left();
    // The journal was not touched either.
    assert!(!d.journal().exists());
}

#[test]
fn readiness_is_announced_only_when_everything_serves() {
    let mut d = Direct::new();
    let notify_path = d.dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut cmd = d.command("127.0.0.1:0");
    cmd.env("NOTIFY_SOCKET", &notify_path);
    d.spawn_logged(cmd);
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("no READY=1 within 30 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    // At the moment of READY: the socket serves, the metrics address is
    // known and ready, and the log says so.
    let addr = d
        .metrics_addr()
        .expect("metrics address not written before READY");
    let (code, body) = http_get(&addr, "/readyz");
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    let ps = d.ctl(&["ps"]);
    assert!(ps.status.success(), "{}", describe(&ps));
    let logged = std::fs::read_to_string(d.log_path()).unwrap();
    assert!(logged.contains("guardd ready"), "{logged}");
    assert!(pins(&d.instance).join("links").is_dir());
    // A clean stop says STOPPING and removes everything.
    let pid = d.pid();
    d.stop();
    let n = notify.recv(&mut buf).expect("no STOPPING=1");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(!running(pid));
    d.assert_nothing_left();
}

// ---------------------------------------------------------------- 4. SIGHUP

#[test]
fn sighup_does_not_kill_guardd() {
    let mut g = Guardd::start();
    let p = g.write_policy("hup", "[policy]\nname = \"hup\"\n[network]\nallow = []\n");
    let mut agent = g.spawn_run(&p, &["--name", "hup"], &["/bin/sleep", "30"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&g.ctl(&["ps"]).stdout).contains("hup") {
        assert!(Instant::now() < deadline, "agent did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = g.pid();
    for _ in 0..3 {
        // SAFETY: signalling the guardd this test started, by pid.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(running(pid), "guardd died of SIGHUP:\n{}", g.log());
    assert!(g.log().contains("SIGHUP"), "{}", g.log());
    // Still serving, the agent still confined and listed.
    let ps = g.ctl(&["ps"]);
    assert!(ps.status.success(), "{}", describe(&ps));
    assert!(String::from_utf8_lossy(&ps.stdout).contains("hup"));
    assert!(g.ctl(&["kill", "hup"]).status.success());
    let _ = agent.wait();
    // A later SIGTERM still stops it cleanly: pins and cgroups removed.
    let instance = g.instance.clone();
    g.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pins(&instance).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !pins(&instance).exists(),
        "pins left after SIGHUP then SIGTERM"
    );
    assert!(!parent_cgroup(&instance).exists());
}

// ------------------------------------------------------------ 5. no colour

/// Starts guardd with stderr on a new terminal; everything it wrote there
/// until it said it was ready.
fn log_on_a_terminal(no_color: bool) -> String {
    let mut d = Direct::new();
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors into the given integers; the
    // name, termios and window size are optional.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: both descriptors are fresh from openpty and owned here only.
    let (master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    };
    let mut cmd = d.command("off");
    cmd.env_remove("NO_COLOR");
    if no_color {
        cmd.env("NO_COLOR", "1");
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::from(slave));
    d.child = Some(cmd.spawn().unwrap());
    drop(cmd);
    let text = Arc::new(Mutex::new(String::new()));
    let t2 = text.clone();
    let mut m = master;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = m.read(&mut buf) {
            if n == 0 {
                break;
            }
            t2.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text.lock().unwrap().contains("guardd ready") {
        assert!(
            Instant::now() < deadline,
            "not ready: {}",
            text.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d.stop();
    text.lock().unwrap().clone()
}

#[test]
fn logs_carry_no_colour_off_a_terminal_or_with_no_color() {
    // Off a terminal (the harness logs to a file).
    let g = Guardd::start();
    let p = g.write_policy("c", "[policy]\nname = \"c\"\n[network]\nallow = []\n");
    let out = g.run(&p, &[], &["/bin/sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(!out.stderr.contains(&0x1b), "{}", describe(&out));
    let bad = g.ctl(&["kill", "nobody-here"]);
    assert!(!bad.stderr.contains(&0x1b) && !bad.stdout.contains(&0x1b));
    let log = g.log();
    assert!(log.contains("guardd ready"), "{log}");
    assert!(!log.contains('\x1b'), "{log:?}");
    // On a terminal: colour, unless NO_COLOR says otherwise.
    let coloured = log_on_a_terminal(false);
    assert!(
        coloured.contains('\x1b'),
        "a terminal gets colour: {coloured:?}"
    );
    let plain = log_on_a_terminal(true);
    assert!(!plain.contains('\x1b'), "NO_COLOR: {plain:?}");
}

// ------------------------------------------------------ 6. readiness endpoint

#[test]
fn healthz_and_readyz_report_liveness_and_readiness() {
    let g = Guardd::start();
    let addr = g.metrics_addr();
    assert_eq!(http_get(&addr, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(http_get(&addr, "/readyz"), (200, "ready\n".to_owned()));
    assert_eq!(http_get(&addr, "/nothing").0, 404);
    assert_eq!(http_get(&addr, "/metrics").0, 200);
    // Take one program off: its link pin removed, the link detaches.
    let links = pins(&g.instance).join("links");
    let victim = std::fs::read_dir(&links)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("guard_connect4"))
        .expect("a connect4 link pin");
    std::fs::remove_file(&victim).unwrap();
    let (code, body) = http_get(&addr, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("not ready: programs not attached"),
        "{body}"
    );
    assert!(body.contains("guard_connect4"), "{body}");
    // Alive all the same.
    assert_eq!(http_get(&addr, "/healthz").0, 200);
}

/// A small tmpfs, unmounted on drop (after the guardd using it is gone:
/// declare it before the `Direct`).
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let d = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "guard-test",
            ])
            .arg(d.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        SmallFs(d)
    }

    /// Fills the filesystem up; the file that did it, to free the room.
    fn fill(&self) -> PathBuf {
        let filler = self.0.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.0.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: unmounting the tmpfs this test mounted, by its path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A guardd whose journal is on a 16 MiB tmpfs, every refusal its own
/// record and no size budget; serving, with its metrics address. (The
/// filesystem comes first so that it outlives the guardd.)
fn on_a_small_fs() -> (SmallFs, Direct, String) {
    let fs = SmallFs::mount("16m");
    let mut d = Direct::new();
    d.journal = fs.0.path().join("journal.db");
    let mut cmd = d.command("127.0.0.1:0");
    cmd.args(["--journal-max-bytes", "off", "--coalesce-interval", "0"]);
    d.spawn_logged(cmd);
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        if let Some(a) = d.metrics_addr()
            && d.ctl(&["ps"]).status.success()
        {
            break a;
        }
        assert!(Instant::now() < deadline, "guardd did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    (fs, d, addr)
}

impl Direct {
    /// Runs an agent that is refused `n` connections in a loop (each its
    /// own record with `--coalesce-interval 0`).
    fn flood(&self, n: usize) -> Child {
        let p = self.dir.path().join("flood.toml");
        std::fs::write(&p, "[policy]\nname = \"flood\"\n[network]\nallow = []\n").unwrap();
        let op = format!("loop:{n}:127.0.0.1:{}", closed_port());
        Command::new(GUARDCTL)
            .env("GUARD_SOCKET", self.socket())
            .args(run_args(
                &p,
                &[],
                &[PYTHON, agent_script("netprobe.py").as_str(), op.as_str()],
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

#[test]
fn readyz_says_when_the_journal_cannot_be_written() {
    let (fs, mut d, addr) = on_a_small_fs();
    assert_eq!(http_get(&addr, "/readyz").0, 200);
    // Fill the journal's filesystem, then make records.
    let filler = fs.fill();
    let mut agent = d.flood(3000);
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let (code, body) = http_get(&addr, "/readyz");
        if code == 503 {
            break body;
        }
        assert_eq!(code, 200, "{body}");
        assert!(
            Instant::now() < deadline,
            "the journal's filesystem is full, yet ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        body.starts_with("not ready: journal not writable"),
        "{body}"
    );
    assert_eq!(http_get(&addr, "/healthz").0, 200, "alive all the same");
    // Room again (far more than the agent's records need): the commit
    // retried succeeds and guardd is ready again.
    std::fs::remove_file(&filler).unwrap();
    let ended = wait_or_kill(&mut agent, Duration::from_secs(60));
    assert!(
        ended.is_some(),
        "the agent's run did not end once space was freed"
    );
    let (code, body) = http_get(&addr, "/readyz");
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    d.stop();
}

/// SIGTERM stops guardd even when its journal cannot be written and a flood
/// of refusals has filled the queue in front of the writer (the monitor
/// then waits on that queue): the writer gives up after a few attempts,
/// says how many records it could not commit, and guardd exits.
#[test]
fn sigterm_stops_guardd_whose_journal_is_full_behind_a_flood() {
    let (fs, mut d, addr) = on_a_small_fs();
    let filler = fs.fill();
    // More distinct refusals than the writer's queue holds (64 Ki).
    let mut agent = d.flood(150000);
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(&addr, "/readyz").0 != 503 {
        assert!(
            Instant::now() < deadline,
            "the journal's filesystem is full, yet ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let the flood fill the queue (the agent's own run may then wait on
    // the journal to record its exit: backpressure, not loss).
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut c = d.child.take().unwrap();
    // SAFETY: signalling the guardd this test started, by pid.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let stopped = wait_or_kill(&mut c, Duration::from_secs(60));
    let _ = agent.kill();
    let _ = agent.wait();
    let text = std::fs::read_to_string(d.log_path()).unwrap();
    let tail: String = text.lines().rev().take(20).collect::<Vec<_>>().join("\n");
    assert!(
        stopped.is_some(),
        "SIGTERM did not stop guardd with a full journal; its log ends:\n{tail}"
    );
    // What could not be committed is said, not silently dropped.
    assert!(
        text.contains("could not be committed"),
        "no account of the uncommitted records:\n{tail}"
    );
    std::fs::remove_file(&filler).unwrap();
}

// ------------------------------------------------------ 7. bounded labels

fn refusal_series(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|l| l.starts_with("guard_refusals_total{"))
        .collect()
}

#[test]
fn metric_labels_stay_bounded_over_many_run_names() {
    let g = Guardd::start_with(&["--coalesce-interval", "0"]);
    let addr = g.metrics_addr();
    let port = closed_port();
    let p = g.write_policy(
        "bounded",
        "[policy]\nname = \"bounded\"\n[network]\nallow = []\n",
    );
    let op = format!("tcp:127.0.0.1:{port}");
    let run = |i: usize| {
        let name = format!("run-{i}");
        let out = g.run(
            &p,
            &["--name", &name],
            &[PYTHON, &agent_script("netprobe.py"), &op],
        );
        assert_eq!(
            errno_of(&probe_results(&out), &op).as_deref(),
            Some("EPERM"),
            "{}",
            describe(&out)
        );
    };
    for i in 0..3 {
        run(i);
    }
    let (_, first) = http_get(&addr, "/metrics");
    let before = refusal_series(&first).len();
    for i in 3..15 {
        run(i);
    }
    let (_, text) = http_get(&addr, "/metrics");
    let series = refusal_series(&text);
    assert_eq!(series.len(), before, "series grew with run names:\n{text}");
    assert!(!text.contains("run-"), "a run name is a label:\n{text}");
    let ours: Vec<&&str> = series
        .iter()
        .filter(|l| l.contains("policy=\"bounded\""))
        .collect();
    let total: u64 = ours
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(total, 15, "one refusal per run: {ours:?}");
    assert!(
        ours.iter()
            .all(|l| l.contains("kind=\"network\"") && l.contains("verdict=\"denied\"")),
        "{ours:?}"
    );
}

// ------------------------------------------------ 8. errors without tags

#[test]
fn errors_shown_to_people_carry_no_protocol_tags() {
    let g = Guardd::start();
    let out = g.ctl(&["kill", "no-such-agent"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no live agent"), "{err}");
    assert!(
        !err.contains("[not_found]") && !err.contains("not_found"),
        "{err}"
    );
    let out = g.ctl(&["freeze", "no-such-agent"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains('['),
        "{}",
        describe(&out)
    );
    // A request guardd refuses as malformed: the message, no code.
    let out = g.ctl(&["logs", "--kind", "nonsense"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(!err.contains("bad_request"), "{err}");
    // The protocol still carries the machine-readable code.
    let mut s = std::os::unix::net::UnixStream::connect(&g.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"{\"v\":1,\"id\":7,\"op\":\"control\",\"agent\":\"no-such-agent\",\"action\":\"kill\"}\n",
    )
    .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["error"]["code"], "not_found", "{v}");
}
