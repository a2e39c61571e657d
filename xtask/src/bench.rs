//! `cargo xtask bench`: performance figures, each against a baseline
//! measured in the same run, printed as a table with the targets.
//!
//! Nothing here asserts timings: the figures are for reading and comparing.

use std::{
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

pub(crate) struct Row {
    pub what: String,
    pub value: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
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
pub(crate) struct Daemon {
    child: Child,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

impl Daemon {
    fn start(bin: &Path) -> anyhow::Result<Daemon> {
        Self::start_with_journal(bin, None)
    }

    fn start_with_journal(bin: &Path, journal: Option<&Path>) -> anyhow::Result<Daemon> {
        Self::start_with(bin, journal, &[])
    }

    /// With more guardd arguments (`extra`).
    pub(crate) fn start_with(
        bin: &Path,
        journal: Option<&Path>,
        extra: &[&str],
    ) -> anyhow::Result<Daemon> {
        let dir = tempfile::Builder::new().prefix("guard-bench").tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let socket = dir.path().join("guard.sock");
        let prepared = journal.is_some();
        let journal = journal
            .map(Path::to_owned)
            .unwrap_or_else(|| dir.path().join("journal.db"));
        let mut cmd = Command::new(bin.join("guardd"));
        // The ingest bench measures the journal path for every refusal:
        // coalescing would fold its single-target loop into a few records.
        cmd.args(["--coalesce-interval", "0"]);
        if prepared {
            // A prepared store is measured as it is, whatever its size.
            cmd.args(["--journal-max-bytes", "off"]);
        }
        let child = cmd
            .args(extra)
            .args(["--instance", "guard-bench", "--metrics", "off", "--socket"])
            .arg(&socket)
            .arg("--journal")
            .arg(&journal)
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
        crate::child::terminate(&mut self.child, Duration::from_secs(10));
    }
}

pub fn run(quick: bool) -> anyhow::Result<()> {
    // Where cargo put the build (CARGO_TARGET_DIR is honoured).
    let bin = crate::image::release_dir()?;
    let daemon = Daemon::start(&bin)?;
    let work = tempfile::Builder::new()
        .prefix("guard-bench-work")
        .tempdir()?;
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755))?;
    let mut rows = Vec::new();
    eprintln!("bench: launch");
    launch(&bin, &daemon, work.path(), quick, &mut rows)?;
    eprintln!("bench: connect");
    connect(&bin, &daemon, work.path(), quick, &mut rows)?;
    eprintln!("bench: files, system calls, exec");
    confined_ops(&bin, &daemon, work.path(), quick, &mut rows)?;
    eprintln!("bench: journal ingest and daemon memory");
    ingest(&bin, &daemon, work.path(), quick, &mut rows)?;
    drop(daemon);
    eprintln!("bench: journal query over a large store");
    query(&bin, work.path(), quick, &mut rows)?;
    eprintln!("bench: DNS through the agents' resolvers");
    crate::dnsbench::run(&bin, work.path(), quick, &mut rows)?;

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
    let out = crate::child::output_of(cmd).context("connect loop failed")?;
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

fn ctl(bin: &Path, d: &Daemon) -> Command {
    let mut c = Command::new(bin.join("guardctl"));
    c.env("GUARD_SOCKET", &d.socket);
    c
}

/// Runs a probe loop (this binary, copied to `probe`) inside a scope of
/// `policy` and outside any scope, alternating, and returns the medians.
fn inside_outside(
    bin: &Path,
    d: &Daemon,
    work: &Path,
    policy: &Path,
    probe: &Path,
    args: &[String],
    rounds: usize,
) -> anyhow::Result<(f64, f64)> {
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        outside.push(connect_loop(
            Command::new(probe).args(args).current_dir(work),
        )?);
        let mut c = ctl(bin, d);
        c.current_dir(work)
            .arg("run")
            .arg("--policy")
            .arg(policy)
            .arg("--")
            .arg(probe)
            .args(args);
        inside.push(connect_loop(&mut c)?);
    }
    Ok((median(inside), median(outside)))
}

fn confined_ops(
    bin: &Path,
    d: &Daemon,
    work: &Path,
    quick: bool,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let probe = work.join("xtask-probe");
    std::fs::copy(std::env::current_exe()?, &probe)?;
    let file = work.join("data.txt");
    std::fs::write(&file, "x")?;
    // All layers: Landlock with the base grants, seccomp, no capabilities.
    let policy = work.join("ops.toml");
    std::fs::write(
        &policy,
        "[policy]\nname = \"bench-ops\"\ninclude = [\"base\"]\n\n[filesystem]\nread = [\"{workdir}\"]\nexec = [\"{workdir}/xtask-probe\", \"/bin/true\", \"/usr/bin/true\"]\n",
    )?;
    let rounds = if quick { 3 } else { 7 };
    let n = if quick { 20_000 } else { 200_000 };
    let s = |v: &str| v.to_owned();
    let open_loop = [s("open-loop"), file.display().to_string(), n.to_string()];
    let (i, o) = inside_outside(bin, d, work, &policy, &probe, &open_loop, rounds)?;
    rows.push(Row {
        what: "open()+close() of a permitted file".into(),
        value: format!("{:.0} ns", i),
        baseline: format!("{:.0} ns outside", o),
        ratio: format!("{:+.1}%", (i / o - 1.0) * 100.0),
        target: "<= +25%".into(),
    });
    let (i, o) = inside_outside(
        bin,
        d,
        work,
        &policy,
        &probe,
        &[s("syscall-loop"), (n * 5).to_string()],
        rounds,
    )?;
    rows.push(Row {
        what: "getppid() with the seccomp filter".into(),
        value: format!("{:.0} ns", i),
        baseline: format!("{:.0} ns without", o),
        ratio: format!("{:+.1}%", (i / o - 1.0) * 100.0),
        target: "<= +10%".into(),
    });
    // Learn mode turns on the successful-call path of `sys_exit` for the
    // whole host: what that costs a process outside every scope, against
    // the same loop while no agent learns (measured alternately).
    let (mut learning, mut idle) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let outside = || connect_loop(Command::new(&probe).args(&open_loop).current_dir(work));
        idle.push(outside()?);
        let mut learner = ctl(bin, d)
            .current_dir(work)
            .args([
                "run",
                "--learn",
                "--name",
                "bench-learner",
                "--",
                "/bin/sleep",
                "30",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        // Learning once the agent's sleep runs (its start is journaled
        // before the exec).
        std::thread::sleep(std::time::Duration::from_millis(300));
        let r = outside();
        // SAFETY: signalling the guardctl this loop started, by its pid.
        unsafe { libc::kill(learner.id() as i32, libc::SIGTERM) };
        let _ = learner.wait();
        learning.push(r?);
    }
    let (i, o) = (median(learning), median(idle));
    rows.push(Row {
        what: "open()+close() outside any scope while an agent learns".into(),
        value: format!("{:.0} ns", i),
        baseline: format!("{:.0} ns while none learns", o),
        ratio: format!("{:+.1}%", (i / o - 1.0) * 100.0),
        target: "<= +10%".into(),
    });
    let execs = if quick { 100 } else { 1000 };
    let (i, o) = inside_outside(
        bin,
        d,
        work,
        &policy,
        &probe,
        &[s("exec-loop"), s("/bin/true"), execs.to_string()],
        rounds,
    )?;
    rows.push(Row {
        what: "fork+exec of an allowed program".into(),
        value: format!("{:.0} us", i / 1e3),
        baseline: format!("{:.0} us outside", o / 1e3),
        ratio: format!("{:+.1}%", (i / o - 1.0) * 100.0),
        target: "".into(),
    });
    Ok(())
}

/// Refusals from a tight loop in a scope, through the kernel, the monitor
/// and the journal. guardctl returns only when everything the kernel wrote
/// for the agent is committed, so its wall time covers the whole pipeline.
fn ingest(
    bin: &Path,
    d: &Daemon,
    work: &Path,
    quick: bool,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let probe = work.join("xtask-probe");
    let policy = work.join("deny.toml");
    std::fs::write(
        &policy,
        "[policy]\nname = \"bench-ingest\"\n[network]\nallow = []\n",
    )?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let n: u64 = if quick { 50_000 } else { 300_000 };
    // guardd keeps a closed agent's metadata for 5 s so late kernel events
    // stay attributable: let the earlier benchmarks' agents (10,000-rule
    // policies among them) be forgotten before sampling "idle".
    std::thread::sleep(Duration::from_secs(6));
    let idle = rss_mib(d.child.id());
    let pid = d.child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0f64;
        while !st.load(Ordering::Relaxed) {
            peak = peak.max(rss_mib(pid));
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    });
    let t = Instant::now();
    let out = ctl(bin, d)
        .current_dir(work)
        .arg("run")
        .arg("--policy")
        .arg(&policy)
        .arg("--")
        .arg(&probe)
        .args(["deny-loop", &port.to_string(), &n.to_string()])
        .output()?;
    let elapsed = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap_or(0.0);
    let err = String::from_utf8_lossy(&out.stderr);
    let id = err
        .split("--agent ")
        .nth(1)
        .map(|s| s.trim().to_owned())
        .context("no agent id in guardctl's summary")?;
    let recs = ctl(bin, d)
        .args(["logs", "--json", "--agent", &id])
        .output()?;
    let (mut journaled, mut lost) = (0u64, 0u64);
    for line in String::from_utf8_lossy(&recs.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if v["kind"] == "network" {
            // A coalesced record stands for itself and `repeated` more.
            journaled += 1 + v["detail"]["repeated"].as_u64().unwrap_or(0);
        }
        if v["kind"] == "gap" && v["action"] == "lost" {
            lost += v["detail"]["lost"].as_u64().unwrap_or(0);
        }
    }
    let unaccounted = n as i64 - journaled as i64 - lost as i64;
    let journal_only = journal_bench(&["ingest".into(), n.to_string()])?;
    let base = journal_only["ingest_per_sec"].as_f64().unwrap_or(0.0);
    let rate = journaled as f64 / elapsed;
    rows.push(Row {
        what: format!("ingest kernel -> store ({n} refusals)"),
        value: format!("{:.0}/s", rate),
        baseline: format!("{:.0}/s journal only", base),
        ratio: format!("{:.2}x", rate / base),
        target: ">= 100000/s".into(),
    });
    rows.push(Row {
        what: "  of which journaled / lost (gap records) / unaccounted".into(),
        value: format!("{journaled}"),
        baseline: format!("{lost} lost"),
        ratio: format!("{unaccounted}"),
        target: "unaccounted = 0".into(),
    });
    rows.push(Row {
        what: "guardd resident memory, idle / under that load".into(),
        value: format!("{idle:.1} MiB"),
        baseline: format!("{peak:.1} MiB peak"),
        ratio: "".into(),
        target: "< 50 MiB".into(),
    });
    Ok(())
}

/// A filtered `guardctl logs` over a store of a million records, end to end
/// (socket, daemon, store, JSON), against the same query on the store alone.
fn query(bin: &Path, work: &Path, quick: bool, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let n: u64 = if quick { 200_000 } else { 1_000_000 };
    let store = work.join("big.db");
    let v = journal_bench(&["store".into(), store.display().to_string(), n.to_string()])?;
    let store_ms = v["query_ms"].as_f64().unwrap_or(0.0);
    let expected = v["rows"].as_u64().unwrap_or(0);
    let d = Daemon::start_with_journal(bin, Some(&store))?;
    let mut times = Vec::new();
    let mut got = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let out = ctl(bin, &d)
            .args(["logs", "--json", "--agent", "agent-7", "--kind", "network"])
            .output()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        got = String::from_utf8_lossy(&out.stdout).lines().count() as u64;
    }
    if got != expected {
        bail!("guardctl logs returned {got} records, the store query {expected}");
    }
    let e2e = median(times);
    rows.push(Row {
        what: format!("guardctl logs --agent --kind over {n} records ({got} rows)"),
        value: format!("{e2e:.1} ms"),
        baseline: format!("{store_ms:.1} ms store only"),
        ratio: format!("{:.1}x", e2e / store_ms.max(0.001)),
        target: "< 200 ms".into(),
    });
    Ok(())
}

/// Runs guard-daemon's `journal` bench target with `args` and returns the
/// JSON object it prints.
fn journal_bench(args: &[String]) -> anyhow::Result<serde_json::Value> {
    let o = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace_root())
        .args([
            "bench",
            "-q",
            "-p",
            "guard-daemon",
            "--bench",
            "journal",
            "--",
        ])
        .args(args)
        .output()?;
    if !o.status.success() {
        bail!(
            "journal bench {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    serde_json::from_slice(&o.stdout).context("journal bench output")
}

fn per_op(t: Instant, n: usize) -> f64 {
    t.elapsed().as_nanos() as f64 / n.max(1) as f64
}

/// Median over 10 slices of `n` operations, in ns per operation.
fn sliced(n: usize, mut op: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let per = (n / 10).max(1);
    let mut times = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        for _ in 0..per {
            op()?;
        }
        times.push(per_op(t, per));
    }
    println!("{}", median(times));
    Ok(())
}

pub fn open_loop_main(path: &str, n: usize) -> anyhow::Result<()> {
    sliced(n, || {
        drop(std::fs::File::open(path).with_context(|| format!("open {path}"))?);
        Ok(())
    })
}

pub fn syscall_loop_main(n: usize) -> anyhow::Result<()> {
    sliced(n, || {
        // SAFETY: getppid has no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
        Ok(())
    })
}

pub fn exec_loop_main(path: &str, n: usize) -> anyhow::Result<()> {
    sliced(n, || {
        let st = Command::new(path)
            .status()
            .with_context(|| format!("running {path}"))?;
        if !st.success() {
            bail!("{path} failed");
        }
        Ok(())
    })
}

pub fn deny_loop_main(port: u16, n: usize) -> anyhow::Result<()> {
    let mut refused = 0;
    for _ in 0..n {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            refused += 1;
        }
    }
    println!("{refused}");
    Ok(())
}
