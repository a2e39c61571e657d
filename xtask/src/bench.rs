//! `cargo xtask bench`: performance figures, each against a baseline
//! measured in the same run, printed as a table with the targets.
//!
//! Nothing here asserts timings: the figures are for reading and comparing.

use std::{
    io::Read,
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::workspace_root;

struct Row {
    what: String,
    value: String,
    baseline: String,
    ratio: String,
    target: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn time_cmd(cmd: &mut Command) -> anyhow::Result<f64> {
    let t = Instant::now();
    let st = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status()?;
    let dt = t.elapsed().as_secs_f64() * 1e3;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(dt)
}

/// A private guardd for the benchmark, stopped on drop.
struct Daemon {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(bin: &Path) -> anyhow::Result<Daemon> {
        let dir = tempfile::Builder::new().prefix("guard-bench").tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let socket = dir.path().join("guard.sock");
        let child = Command::new(bin.join("guardd"))
            .args(["--instance", "guard-bench", "--metrics", "off", "--socket"])
            .arg(&socket)
            .arg("--journal")
            .arg(dir.path().join("journal.db"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let d = Daemon {
            child,
            socket,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !Command::new(bin.join("guardctl"))
            .env("GUARD_SOCKET", &d.socket)
            .arg("ps")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success()
        {
            if Instant::now() > deadline {
                bail!("guardd did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling the guardd this benchmark started, by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(quick: bool) -> anyhow::Result<()> {
    let root = workspace_root();
    let bin = root.join("target/release");
    let daemon = Daemon::start(&bin)?;
    let work = tempfile::Builder::new()
        .prefix("guard-bench-work")
        .tempdir()?;
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755))?;
    let mut rows = Vec::new();
    launch(&bin, &daemon, work.path(), quick, &mut rows)?;
    connect(&bin, &daemon, work.path(), quick, &mut rows)?;

    println!();
    println!(
        "{:<52} {:>12} {:>14} {:>8}  target",
        "measure", "value", "baseline", "ratio"
    );
    for r in rows {
        println!(
            "{:<52} {:>12} {:>14} {:>8}  {}",
            r.what, r.value, r.baseline, r.ratio, r.target
        );
    }
    Ok(())
}

fn launch(
    bin: &Path,
    d: &Daemon,
    work: &Path,
    quick: bool,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let n = if quick { 30 } else { 200 };
    let policy = work.join("launch.toml");
    // All layers on: network rules, files (base), limits.
    std::fs::write(
        &policy,
        "[policy]\nname = \"bench-launch\"\ninclude = [\"base\"]\n\n[network]\nallow = [ { cidr = \"127.0.0.1/32\", ports = [9] } ]\n\n[filesystem]\nread = [\"{workdir}\"]\nexec = [\"/bin/true\", \"/usr/bin/true\"]\n\n[process]\nmax_processes = 8\n",
    )?;
    let guard = || {
        let mut c = Command::new(bin.join("guardctl"));
        c.env("GUARD_SOCKET", &d.socket)
            .current_dir(work)
            .arg("run")
            .arg("--policy")
            .arg(&policy)
            .args(["--", "/bin/true"]);
        c
    };
    let bwrap = Path::new("/usr/bin/bwrap").exists();
    // Warm up caches (page cache, the daemon's first scope).
    for _ in 0..5 {
        time_cmd(&mut guard())?;
        time_cmd(&mut Command::new("/bin/true"))?;
    }
    let (mut bare, mut guarded, mut bw) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        bare.push(time_cmd(&mut Command::new("/bin/true"))?);
        guarded.push(time_cmd(&mut guard())?);
        if bwrap {
            bw.push(time_cmd(Command::new("/usr/bin/bwrap").args([
                "--unshare-all",
                "--ro-bind",
                "/",
                "/",
                "/bin/true",
            ]))?);
        }
    }
    let (b, g) = (median(bare), median(guarded));
    rows.push(Row {
        what: format!("launch: guardctl run /bin/true, median of {n}"),
        value: format!("{g:.2} ms"),
        baseline: format!("{b:.2} ms bare"),
        ratio: format!("{:.1}x", g / b),
        target: "<= 1.5 ms".into(),
    });
    if bwrap {
        let w = median(bw);
        rows.push(Row {
            what: "launch: guardctl run vs bwrap --unshare-all".into(),
            value: format!("{g:.2} ms"),
            baseline: format!("{w:.2} ms bwrap"),
            ratio: format!("{:.2}x", g / w),
            target: "<= 0.5x bwrap".into(),
        });
    } else {
        rows.push(Row {
            what: "launch: vs bwrap".into(),
            value: "-".into(),
            baseline: "not installed".into(),
            ratio: "-".into(),
            target: "<= 0.5x bwrap".into(),
        });
    }
    Ok(())
}

/// A loopback listener that accepts and drops connections until stopped.
struct Sink {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    fn start() -> anyhow::Result<Sink> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        l.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_micros(50)),
                }
            }
        });
        Ok(Sink {
            port,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs the connect loop (this binary's hidden `connect-loop`) and returns
/// the median nanoseconds per connect.
fn connect_loop(cmd: &mut Command) -> anyhow::Result<f64> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut out = String::new();
    child
        .stdout
        .take()
        .context("no stdout")?
        .read_to_string(&mut out)?;
    let st = child.wait()?;
    if !st.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        bail!("connect loop failed ({st}): {err}");
    }
    out.trim()
        .parse::<f64>()
        .with_context(|| format!("bad connect-loop output {out:?}"))
}

fn connect(
    bin: &Path,
    d: &Daemon,
    work: &Path,
    quick: bool,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let sink = Sink::start()?;
    let me = std::env::current_exe()?;
    // The loop binary must be reachable by the agent: copy it into the work
    // directory (the policies here do not restrict files).
    let probe = work.join("xtask-connect");
    std::fs::copy(&me, &probe)?;
    let per_batch = if quick { 500 } else { 2000 };
    let rounds = if quick { 3 } else { 9 };
    let loop_args = |c: &mut Command| {
        c.arg("connect-loop")
            .arg(sink.port.to_string())
            .arg(per_batch.to_string());
    };
    for rules in [1usize, 1000, 10_000] {
        let policy = work.join(format!("connect-{rules}.toml"));
        let mut text = String::from("[policy]\nname = \"bench-connect\"\n\n[network]\nallow = [\n");
        text.push_str(&format!(
            "  {{ cidr = \"127.0.0.1/32\", ports = [{}], protocol = \"tcp\" }},\n",
            sink.port
        ));
        for i in 1..rules {
            // Filler rules elsewhere in the address space.
            text.push_str(&format!(
                "  {{ cidr = \"10.{}.{}.{}/32\", ports = [443] }},\n",
                (i >> 16) & 0xff,
                (i >> 8) & 0xff,
                i & 0xff
            ));
        }
        text.push_str("]\n");
        std::fs::write(&policy, text)?;
        let (mut inside, mut outside) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let mut c = Command::new(&probe);
            loop_args(&mut c);
            outside.push(connect_loop(&mut c)?);
            let mut c = Command::new(bin.join("guardctl"));
            c.env("GUARD_SOCKET", &d.socket)
                .current_dir(work)
                .arg("run")
                .arg("--policy")
                .arg(&policy)
                .arg("--")
                .arg(&probe);
            loop_args(&mut c);
            inside.push(connect_loop(&mut c)?);
        }
        let (i, o) = (median(inside), median(outside));
        rows.push(Row {
            what: format!("connect(): scope with {rules} CIDR rules"),
            value: format!("{:.2} us", i / 1e3),
            baseline: format!("{:.2} us outside", o / 1e3),
            ratio: format!("{:+.1}%", (i / o - 1.0) * 100.0),
            target: if rules == 10_000 {
                "<= +5%".into()
            } else {
                "".into()
            },
        });
    }
    Ok(())
}

/// The hidden `connect-loop PORT N` subcommand: N TCP connects to
/// 127.0.0.1:PORT, printing the median ns per connect over 10 slices.
pub fn connect_loop_main(port: u16, n: usize) -> anyhow::Result<()> {
    let slices = 10;
    let per = (n / slices).max(1);
    let mut times = Vec::new();
    for _ in 0..slices {
        let t = Instant::now();
        for _ in 0..per {
            let s = std::net::TcpStream::connect(("127.0.0.1", port)).context("connect")?;
            drop(s);
        }
        times.push(t.elapsed().as_nanos() as f64 / per as f64);
    }
    println!("{}", median(times));
    Ok(())
}
