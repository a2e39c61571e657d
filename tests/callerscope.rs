//! Scopes under the launcher's own cgroup (`guardd --scopes-under caller`,
//! issue 13): what a pod's container gets, tried here with a cgroup made
//! the way a container runtime makes one (named like podman's), on the
//! real kernel. `tests/pods.rs` does the same with real containers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

/// A cgroup standing for a container's: `<root>/guard-test-<pid>-<tag>/
/// libpod-<16 hex>` in the v2 tree and in every v1 hierarchy, removed (with
/// whatever is left in it) on drop.
struct CallerCgroup {
    top: Vec<PathBuf>,
    v2: PathBuf,
    v1: Vec<PathBuf>,
    id: String,
}

impl CallerCgroup {
    fn new(tag: &str) -> CallerCgroup {
        let id = format!(
            "{:016x}",
            std::process::id() as u64 * 7919 + tag.len() as u64
        );
        let top_name = format!("guard-test-{}-{tag}", std::process::id());
        let mut top = vec![v2_root().join(&top_name)];
        let v2 = top[0].join(format!("libpod-{id}"));
        std::fs::create_dir_all(&v2).unwrap();
        let mut v1 = Vec::new();
        for root in v1_roots() {
            // The hierarchies guardd places limits in (cpuset would need
            // its cpus and mems set before a task may join).
            let name = root.file_name().unwrap().to_string_lossy().into_owned();
            if !["pids", "memory", "cpu"].contains(&name.as_str()) {
                continue;
            }
            let t = root.join(&top_name);
            let d = t.join(format!("libpod-{id}"));
            if std::fs::create_dir_all(&d).is_ok() {
                top.push(t);
                v1.push(d);
            }
        }
        CallerCgroup { top, v2, v1, id }
    }

    /// The cgroup path as /proc/<pid>/cgroup shows it.
    fn path(&self) -> String {
        format!("/{}", self.v2.strip_prefix(v2_root()).unwrap().display())
    }

    /// `sh -c` that moves itself into this cgroup, then execs `cmd`.
    fn command(&self, g: &Guardd, cmd: &[String]) -> Command {
        let mut script = format!("echo $$ > {}/cgroup.procs", self.v2.display());
        for d in &self.v1 {
            script.push_str(&format!(" && echo $$ > {}/cgroup.procs", d.display()));
        }
        script.push_str(" && exec \"$@\"");
        let mut c = Command::new("sh");
        c.env("GUARD_SOCKET", &g.socket)
            .current_dir(g.dir.path())
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(cmd);
        c
    }
}

impl Drop for CallerCgroup {
    fn drop(&mut self) {
        for t in &self.top {
            kill_and_remove(t);
        }
    }
}

fn kill_and_remove(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                kill_and_remove(&e.path());
            }
        }
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..100 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_args(policy: &Path, cmd: &[&str]) -> Vec<String> {
    let mut a = vec![
        GUARDCTL.to_owned(),
        "run".into(),
        "--policy".into(),
        policy.display().to_string(),
        "--".into(),
    ];
    a.extend(cmd.iter().map(|s| s.to_string()));
    a
}

#[test]
fn the_scope_is_made_under_the_launchers_cgroup_and_confines_it() {
    let g = Guardd::start_with(&["--scopes-under", "caller"]);
    let c = CallerCgroup::new("one");
    let open = Listener::tcp("127.0.0.1");
    let closed = closed_port();
    let p = g.write_policy(
        "pod",
        &format!(
            "[policy]\nname = \"pod\"\n[[network.allow]]\ncidr = \"127.0.0.1/32\"\nports = [{}]\nprotocol = \"tcp\"\n[process]\nmax_processes = 20\n",
            open.port
        ),
    );
    let script = agent_script("netprobe.py");
    let ok = format!("tcp:127.0.0.1:{}", open.port);
    let refused = format!("tcp:127.0.0.1:{closed}");
    let out: Output = c
        .command(&g, &run_args(&p, &[PYTHON, &script, &ok, &refused]))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", describe(&out), g.log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = Guardd::agent_id(&out);
    let res = probe_results(&out);
    assert_eq!(errno_of(&res, &ok), None, "{stdout}");
    assert_eq!(
        errno_of(&res, &refused).as_deref(),
        Some("EPERM"),
        "{stdout}"
    );

    // The journal names the container, from what guardd read of the peer.
    let start = g.start_record(&id);
    assert_eq!(start["agent"]["container"]["id"], c.id.as_str(), "{start}");
    assert_eq!(start["agent"]["container"]["cgroup"], c.path(), "{start}");
    // The scope was made under the launcher's cgroup.
    assert_eq!(
        start["detail"]["cgroup"],
        c.v2.join(format!("agent-{id}")).display().to_string(),
        "{start}"
    );
    let recs = g.logs(&["--agent", &id]);
    let denial = recs
        .iter()
        .find(|r| r["verdict"] == "denied" && r["target"] == format!("127.0.0.1:{closed}/tcp"))
        .unwrap_or_else(|| panic!("{recs:#?}"));
    assert_eq!(
        denial["agent"]["container"]["id"],
        c.id.as_str(),
        "{denial}"
    );

    // The scope is gone with the agent: the runtime can remove its
    // container's cgroup.
    let leftovers: Vec<_> = std::fs::read_dir(&c.v2)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir(&c.v2).unwrap();
}

#[test]
fn limits_land_under_the_callers_cgroup_and_a_restart_readopts_the_scope() {
    let mut g = Guardd::start_with(&["--scopes-under", "caller"]);
    let c = CallerCgroup::new("two");
    let closed = closed_port();
    let p = g.write_policy(
        "pod",
        "[policy]\nname = \"pod\"\n[network]\nallow = []\n[process]\nmax_processes = 20\n",
    );
    // Runs until its stdin closes; on each line, tries a refused connect.
    let loop_py = format!(
        "import socket,sys\nprint('ready', flush=True)\nfor line in sys.stdin:\n    s=socket.socket()\n    try:\n        s.connect(('127.0.0.1',{closed})); print('connected', flush=True)\n    except OSError as e:\n        print('errno', e.errno, flush=True)\n"
    );
    let mut child: Child = c
        .command(&g, &run_args(&p, &[PYTHON, "-c", &loop_py]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::{BufRead, BufReader, Write};
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let scope = std::fs::read_dir(&c.v2)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("agent-"))
        .unwrap()
        .path();
    // On this host's v1 pids hierarchy the limit sits under the caller's
    // own pids cgroup (on pure v2 it would need the caller to delegate the
    // controller).
    let pids_limit =
        c.v1.iter()
            .map(|d| d.join(scope.file_name().unwrap()).join("pids.max"))
            .find(|f| f.exists());
    if let Some(f) = pids_limit {
        assert_eq!(std::fs::read_to_string(&f).unwrap().trim(), "20");
    } else {
        assert!(
            std::fs::read_to_string(scope.join("pids.max")).is_ok_and(|s| s.trim() == "20"),
            "no pids limit under the caller's cgroups"
        );
    }
    let mut stdin = child.stdin.take().unwrap();
    let mut ask = |lines: &mut std::io::Lines<_>| {
        writeln!(stdin, "go").unwrap();
        let l: String = lines.next().unwrap().unwrap();
        l
    };
    assert_eq!(ask(&mut lines), "errno 1");
    // guardd dies: the scope's own program links keep it confined.
    g.crash();
    assert_eq!(ask(&mut lines), "errno 1");
    g.restart_after_crash();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ps = g.ctl(&["ps", "--json"]);
        if String::from_utf8_lossy(&ps.stdout).contains("pod") {
            break;
        }
        assert!(Instant::now() < deadline, "not re-adopted:\n{}", g.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ask(&mut lines), "errno 1");
    drop(stdin);
    let status = wait_or_kill(&mut child, Duration::from_secs(20));
    assert!(status.is_some(), "the launcher did not end");
    // The re-adopted agent's refusals after the restart are journaled
    // under its container.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let recs = g.logs(&[]);
        let denials: Vec<&Value> = recs
            .iter()
            .filter(|r| {
                r["verdict"] == "denied" && r["target"] == format!("127.0.0.1:{closed}/tcp")
            })
            .collect();
        if denials.len() >= 2 {
            assert!(
                denials
                    .iter()
                    .all(|r| r["agent"]["container"]["id"] == c.id.as_str()),
                "{denials:#?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{recs:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn host_rules_are_refused_for_a_launcher_in_another_network_namespace() {
    let g = Guardd::start_with(&["--scopes-under", "caller"]);
    let p = g.write_policy(
        "named",
        "[policy]\nname = \"named\"\n[[network.allow]]\nhost = \"api.example.com\"\nports = [443]\n",
    );
    // unshare -n: the launcher in a network namespace of its own, as a
    // pod's is.
    let out = g
        .ctl_cmd()
        .current_dir(g.dir.path())
        .args(["run", "--policy"])
        .arg(&p)
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "same namespace: {}", describe(&out));
    let out = Command::new("unshare")
        .args(["-n", "--"])
        .arg(GUARDCTL)
        .env("GUARD_SOCKET", &g.socket)
        .current_dir(g.dir.path())
        .args(["run", "--policy"])
        .arg(&p)
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("network namespace"), "{err}");
}
