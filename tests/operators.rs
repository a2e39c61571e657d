//! guardd's local users (issue 9): every agent belongs to whoever started
//! it, a member of the operators' group cannot act on others' agents or on
//! host processes, files at rest are not world-readable, and no client can
//! exhaust the daemon. The group member here is `nobody` in `nogroup`.
//! Root, real kernel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    os::unix::{fs::MetadataExt, process::CommandExt},
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;

fn as_nobody<S: AsRef<std::ffi::OsStr>>(g: &Guardd, args: &[S]) -> Output {
    g.ctl_cmd()
        .args(args)
        .uid(NOBODY)
        .gid(NOGROUP)
        .current_dir("/")
        .output()
        .unwrap()
}

/// Sends raw request lines on guardd's socket as `nobody`; one reply line
/// per request.
fn raw_as_nobody(g: &Guardd, lines: &[String]) -> Vec<Value> {
    let script = r#"
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
f = s.makefile("rwb")
for line in sys.argv[2:]:
    f.write(line.encode() + b"\n"); f.flush()
    print(f.readline().decode().strip(), flush=True)
"#;
    let out = Command::new(PYTHON)
        .arg("-c")
        .arg(script)
        .arg(&g.socket)
        .args(lines)
        .uid(NOBODY)
        .gid(NOGROUP)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
        .collect()
}

fn wait_for_agent(g: &Guardd, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = g.ctl(&["ps", "--json"]);
        if let Some(id) = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["name"] == name)
            .and_then(|e| e["id"].as_str().map(str::to_owned))
        {
            return id;
        }
        assert!(Instant::now() < deadline, "agent {name} did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_group_member_cannot_act_on_roots_agents() {
    let g = Guardd::start_with(&["--group", "nogroup"]);
    let p = g.write_policy("own", "[policy]\nname = \"own\"\n[network]\nallow = []\n");
    let mut victim = g.spawn_run(&p, &["--name", "victim"], &["/bin/sleep", "30"]);
    let id = wait_for_agent(&g, "victim");

    // Starting an agent is root's.
    let out = as_nobody(&g, &run_args(&p, &[], &["/bin/true"]));
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only root can start agents"),
        "{}",
        describe(&out)
    );
    // Controls, reports and reads on root's agent are refused.
    let out = as_nobody(&g, &["kill", &id, "--reason", "x"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to uid 0"));
    let replies = raw_as_nobody(
        &g,
        &[
            format!(r#"{{"v":1,"id":1,"op":"started","agent":"{id}","pid":1}}"#),
            format!(
                r#"{{"v":1,"id":2,"op":"exited","agent":"{id}","status":{{"how":"code","value":0}}}}"#
            ),
        ],
    );
    assert_eq!(replies.len(), 2, "{replies:?}");
    for r in &replies {
        assert_eq!(r["error"]["code"], "permission_denied", "{r}");
    }
    assert!(victim.try_wait().unwrap().is_none(), "the victim must live");
    let ps = as_nobody(&g, &["ps"]);
    assert!(!String::from_utf8_lossy(&ps.stdout).contains("victim"));
    let logs = as_nobody(&g, &["logs", "--json"]);
    assert!(
        String::from_utf8_lossy(&logs.stdout).trim().is_empty(),
        "{}",
        describe(&logs)
    );

    // Each refusal is journaled with the caller.
    let recs = g.logs(&["--kind", "policy", "--verdict", "denied"]);
    for rule in ["control.open-root-only", "control.not-owner"] {
        let r = recs
            .iter()
            .find(|r| r["rule"] == rule)
            .unwrap_or_else(|| panic!("no {rule} record: {recs:#?}"));
        assert_eq!(r["detail"]["requested_by"]["uid"], NOBODY, "{r}");
    }
    assert_eq!(
        recs.iter()
            .filter(|r| r["rule"] == "control.not-owner")
            .count(),
        3,
        "kill, started and exited: {recs:#?}"
    );
    // SAFETY: signalling the guardctl this test started, by pid.
    unsafe { libc::kill(victim.id() as i32, libc::SIGTERM) };
    let _ = victim.wait();
}

#[test]
fn a_reviewers_group_reads_everything_and_controls_nothing() {
    let g = Guardd::start_with(&["--group", "nogroup", "--group-reads-all"]);
    let p = g.write_policy("rev", "[policy]\nname = \"rev\"\n[network]\nallow = []\n");
    let mut a = g.spawn_run(&p, &["--name", "reviewed"], &["/bin/sleep", "30"]);
    let id = wait_for_agent(&g, "reviewed");
    let ps = as_nobody(&g, &["ps"]);
    assert!(String::from_utf8_lossy(&ps.stdout).contains("reviewed"));
    let logs = as_nobody(&g, &["logs", "--agent", &id, "--json"]);
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("\"start\""),
        "{}",
        describe(&logs)
    );
    let out = as_nobody(&g, &["freeze", &id, "--reason", "x"]);
    assert!(!out.status.success());
    // SAFETY: signalling the guardctl this test started, by pid.
    unsafe { libc::kill(a.id() as i32, libc::SIGTERM) };
    let _ = a.wait();
}

#[test]
fn files_at_rest_are_not_world_readable() {
    for (extra, mode) in [(vec![], 0o600), (vec!["--group", "nogroup"], 0o640)] {
        let mut g = Guardd::start_with(&extra);
        let p = g.write_policy(
            "modes",
            "[policy]\nname = \"modes\"\n[network]\nallow = []\n",
        );
        let out = g.run(&p, &[], &["/bin/true"]);
        assert!(out.status.success(), "{}", describe(&out));
        let mut files = vec![g.journal.clone()];
        let mut wal = g.journal.as_os_str().to_owned();
        wal.push("-wal");
        files.push(wal.into());
        for f in files.iter().filter(|f| f.exists()) {
            let m = std::fs::metadata(f).unwrap();
            assert_eq!(m.mode() & 0o777, mode, "{}", f.display());
            if mode == 0o640 {
                assert_eq!(m.gid(), NOGROUP, "{}", f.display());
            }
        }
        let state = g.dir.path().join("state");
        assert_eq!(
            std::fs::metadata(&state).unwrap().mode() & 0o777,
            0o700,
            "{}",
            state.display()
        );
        g.stop();
    }
}

#[test]
fn the_connection_cap_holds_and_root_is_still_served() {
    let g = Guardd::start_with(&["--group", "nogroup"]);
    // nobody opens 40 connections and holds them.
    let script = r#"
import socket, sys, time
held, busy = [], 0
for _ in range(40):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    held.append(s)
time.sleep(0.5)
for s in held:
    s.setblocking(False)
    try:
        if b"busy" in s.recv(4096):
            busy += 1
    except BlockingIOError:
        pass
print(busy, flush=True)
time.sleep(3)
"#;
    let mut holder = Command::new(PYTHON)
        .arg("-c")
        .arg(script)
        .arg(&g.socket)
        .uid(NOBODY)
        .gid(NOGROUP)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let busy: usize = line.trim().parse().unwrap_or(0);
    assert_eq!(busy, 40 - 32, "connections beyond 32 per uid are refused");
    // Root is served while nobody holds its 32.
    let t = Instant::now();
    let out = g.ctl(&["ps"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(t.elapsed() < Duration::from_secs(5));
    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn logs_stream_with_bounded_memory_under_slow_readers() {
    let g = Guardd::start_with(&["--coalesce-interval", "0"]);
    let port = closed_port();
    let p = g.write_policy("many", "[policy]\nname = \"many\"\n[network]\nallow = []\n");
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for i in range(30000):\n    try: s.sendto(b'x', ('127.0.0.1', {port}))\n    except OSError: pass\n"
    );
    let out = g.run(&p, &[], &[PYTHON, "-c", &script]);
    assert!(out.status.success(), "{}", describe(&out));
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let before = rss(g.pid());
    // 16 readers ask for everything and never read.
    let mut conns = Vec::new();
    for _ in 0..16 {
        let mut s = std::os::unix::net::UnixStream::connect(&g.socket).unwrap();
        std::io::Write::write_all(&mut s, b"{\"v\":1,\"id\":1,\"op\":\"logs\"}\n").unwrap();
        conns.push(s);
    }
    std::thread::sleep(Duration::from_secs(3));
    let during = rss(g.pid());
    // Root is still served meanwhile.
    assert!(g.ctl(&["ps"]).status.success());
    drop(conns);
    assert!(
        during < before + 64 * 1024,
        "guardd grew from {before} kB to {during} kB under 16 stalled readers"
    );
}

#[test]
fn a_policy_over_its_share_of_a_rule_map_gets_a_quota_error() {
    let g = Guardd::start();
    let rules: Vec<String> = (0..16_500u32)
        .map(|i| format!("  {{ cidr = \"10.{}.{}.1\" }},", i / 256, i % 256))
        .collect();
    let p = g.write_policy(
        "big",
        &format!(
            "[policy]\nname = \"big\"\n[network]\nallow = [\n{}\n]\n",
            rules.join("\n")
        ),
    );
    let out = g.run(&p, &[], &["/bin/true"]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("one agent may use at most 16384") && err.contains("IPv4 rule"),
        "{err}"
    );
    // The maps were left as they were: a small agent still starts.
    let small = g.write_policy(
        "small",
        "[policy]\nname = \"small\"\n[network]\nallow = []\n",
    );
    assert!(g.run(&small, &[], &["/bin/true"]).status.success());
}
