//! The journal a reviewer trusts and the controls an operator needs:
//! queries, follow, integrity, loss accounting, safe printing, kill switch,
//! doctor, metrics, OCSF, retention.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
// The journal bench's measurements, run small here so the bench target
// cannot rot between `cargo xtask bench` runs.
#[path = "../guard-daemon/benches/support/mod.rs"]
mod bench_support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::Path,
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

use common::*;
use serde_json::Value;

fn connects(g: &Guardd, policy: &Path, targets: &[String]) -> std::process::Output {
    let mut cmd = vec![PYTHON.to_owned(), agent_script("netprobe.py")];
    cmd.extend(targets.iter().cloned());
    g.run(
        policy,
        &[],
        &cmd.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

/// Refusals the records stand for: each is itself plus `detail.repeated`
/// identical ones folded into it.
fn refusals(recs: &[Value]) -> u64 {
    recs.iter()
        .map(|r| 1 + r["detail"]["repeated"].as_u64().unwrap_or(0))
        .sum()
}

/// Events the kernel could not queue, from the agent's gap records.
fn lost(recs: &[Value]) -> u64 {
    recs.iter()
        .filter(|r| r["kind"] == "gap" && r["action"] == "lost")
        .map(|r| r["detail"]["lost"].as_u64().unwrap())
        .sum()
}

/// Main file plus WAL.
fn store_bytes(journal: &Path) -> u64 {
    let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    len(journal) + len(Path::new(&format!("{}-wal", journal.display())))
}

#[test]
fn queries_return_exactly_the_matching_records() {
    let g = Guardd::start();
    let (pa, pb) = (closed_port(), closed_port());
    let qa = net_policy(&g, "qa");
    let qb = net_policy(&g, "qb");
    let out_a = connects(
        &g,
        &qa,
        &[
            format!("tcp:127.0.0.1:{pa}"),
            format!("tcp:127.0.0.1:{pa}"),
            format!("tcp:127.0.0.1:{pa}"),
        ],
    );
    std::thread::sleep(Duration::from_millis(20));
    let out_b = connects(
        &g,
        &qb,
        &[format!("udp:127.0.0.1:{pb}"), format!("udp:127.0.0.1:{pb}")],
    );
    let (ida, idb) = (Guardd::agent_id(&out_a), Guardd::agent_id(&out_b));
    let all = g.logs(&[]);
    let expect = |pred: &dyn Fn(&Value) -> bool| -> Vec<u64> {
        all.iter()
            .filter(|r| pred(r))
            .map(|r| r["seq"].as_u64().unwrap())
            .collect()
    };
    let agent_is = |r: &Value, id: &str| r["agent"]["id"] == id;

    let got = g.logs(&["--agent", "qa", "--kind", "network"]);
    assert_eq!(
        seqs(&got),
        expect(&|r| agent_is(r, &ida) && r["kind"] == "network")
    );
    // Three identical refusals: the first in full, the two others folded
    // into one record.
    assert_eq!(refusals(&got), 3, "{got:#?}");
    // By id as well as by name.
    assert_eq!(
        seqs(&g.logs(&["--agent", &idb, "--kind", "network"])),
        expect(&|r| agent_is(r, &idb) && r["kind"] == "network")
    );
    assert_eq!(g.logs(&["--agent", &idb, "--kind", "network"]).len(), 2);
    assert_eq!(
        seqs(&g.logs(&["--verdict", "denied", "--agent", "qb"])),
        expect(&|r| agent_is(r, &idb) && r["verdict"] == "denied")
    );
    let port_a = format!(":{pa}/");
    assert_eq!(
        seqs(&g.logs(&["--target", &port_a])),
        expect(&|r| r["target"].as_str().is_some_and(|t| t.contains(&port_a)))
    );
    let pid = got[0]["process"]["pid"].as_u64().unwrap().to_string();
    assert_eq!(
        seqs(&g.logs(&["--pid", &pid])),
        expect(&|r| r["process"]["pid"].as_u64().map(|p| p.to_string()) == Some(pid.clone()))
    );
    assert_eq!(
        seqs(&g.logs(&["--kind", "lifecycle", "--verdict", "allowed"])),
        expect(&|r| r["kind"] == "lifecycle" && r["verdict"] == "allowed")
    );
    // Time windows: since the first record of qb, until the last of qa.
    let first_b = all.iter().find(|r| agent_is(r, &idb)).unwrap();
    let since = first_b["time"].as_str().unwrap();
    assert_eq!(
        seqs(&g.logs(&["--since", since])),
        expect(&|r| r["time"].as_str().unwrap() >= since)
    );
    let last_a = all.iter().rev().find(|r| agent_is(r, &ida)).unwrap();
    let until = last_a["time"].as_str().unwrap();
    assert_eq!(
        seqs(&g.logs(&["--until", until])),
        expect(&|r| r["time"].as_str().unwrap() <= until)
    );
    assert!(g.logs(&["--since", "1d"]).len() == all.len());
    // The newest N.
    let tail = g.logs(&["-n", "2"]);
    assert_eq!(seqs(&tail), seqs(&all[all.len() - 2..]));
    // A bad filter is a precise error, exit 2.
    let bad = g.ctl(&["logs", "--kind", "nonsense"]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nonsense"));
}

#[test]
fn follow_sees_a_new_denial_within_a_second() {
    let g = Guardd::start();
    let p = net_policy(&g, "fol");
    let mut follower = g
        .ctl_cmd()
        .args([
            "logs", "--follow", "--json", "--agent", "fol", "--kind", "network",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((line, SystemTime::now()));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let port = closed_port();
    let out = connects(&g, &p, &[format!("tcp:127.0.0.1:{port}")]);
    let (line, arrived) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("follow printed nothing");
    let _ = follower.kill();
    let _ = follower.wait();
    let rec: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(rec["target"], format!("127.0.0.1:{port}/tcp"));
    assert_eq!(rec["agent"]["id"], Guardd::agent_id(&out));
    let when = guard_daemon::journal::parse_record_time(rec["time"].as_str().unwrap()).unwrap();
    let lag = arrived.duration_since(when).unwrap_or_default();
    assert!(
        lag < Duration::from_secs(1),
        "seen {lag:?} after the denial"
    );
}

/// A copy of the journal (and its checkpoint file) to tamper with.
fn copy_journal(src: &Path, dir: &Path, name: &str) -> std::path::PathBuf {
    let dst = dir.join(name);
    std::fs::copy(src, &dst).unwrap();
    let cp = guard_daemon::journal::checkpoint_path(src);
    if cp.exists() {
        std::fs::copy(&cp, guard_daemon::journal::checkpoint_path(&dst)).unwrap();
    }
    dst
}

#[test]
fn verify_detects_edits_deletions_reordering_and_truncation() {
    // Every refusal its own record, so there are records to tamper with.
    let mut g = Guardd::start_with(&["--coalesce-interval", "0"]);
    let p = net_policy(&g, "ver");
    let port = closed_port();
    let targets: Vec<String> = (0..20).map(|_| format!("tcp:127.0.0.1:{port}")).collect();
    connects(&g, &p, &targets);
    g.stop();
    let (code, text) = verify_journal(&g.journal);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("intact"), "{text}");
    let n: i64 = rusqlite::Connection::open(&g.journal)
        .unwrap()
        .query_row("select max(seq) from records", [], |r| r.get(0))
        .unwrap();
    assert!(n > 20);
    let dir = tempfile::tempdir().unwrap();

    let edited = copy_journal(&g.journal, dir.path(), "edited.db");
    sqlite(
        &edited,
        &format!(
            "update records set json = replace(json, '127.0.0.1:{port}', '10.9.9.9:{port}'), target = replace(target, '127.0.0.1', '10.9.9.9') where seq = 10"
        ),
    );
    let (code, text) = verify_journal(&edited);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("record 10 was altered"), "{text}");

    let deleted = copy_journal(&g.journal, dir.path(), "deleted.db");
    sqlite(&deleted, "delete from records where seq = 12");
    let (code, text) = verify_journal(&deleted);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("record 12 is missing"), "{text}");

    let swapped = copy_journal(&g.journal, dir.path(), "swapped.db");
    sqlite(
        &swapped,
        "create temp table a as select * from records where seq = 5;
         create temp table b as select * from records where seq = 6;
         delete from records where seq in (5, 6);
         insert into records select 5, ts_us, agent_id, agent_name, pid, kind, verdict, target, json, hash from b;
         insert into records select 6, ts_us, agent_id, agent_name, pid, kind, verdict, target, json, hash from a;",
    );
    let (code, text) = verify_journal(&swapped);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("position 5"), "{text}");

    let truncated = copy_journal(&g.journal, dir.path(), "truncated.db");
    sqlite(
        &truncated,
        &format!("delete from records where seq > {}", n - 3),
    );
    let (code, text) = verify_journal(&truncated);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("truncated"), "{text}");
}

#[test]
fn a_flood_of_denials_cannot_hide_a_later_violation() {
    let g = Guardd::start();
    let flood = closed_port();
    let marker = closed_port();
    let p = net_policy(&g, "flood100k");
    let out = connects(
        &g,
        &p,
        &[
            format!("loop:100000:127.0.0.1:{flood}"),
            format!("tcp:127.0.0.1:{marker}"),
        ],
    );
    let res = probe_results(&out);
    assert_eq!(res[0]["codes"]["EPERM"], 100000, "{res:?}");
    let id = Guardd::agent_id(&out);
    let flood_target = format!("127.0.0.1:{flood}/tcp");
    let floods = refusals(&g.logs(&["--agent", &id, "--target", &flood_target]));
    let lost = lost(&g.logs(&["--agent", &id, "--kind", "gap"]));
    let marker_seen = !g
        .logs(&[
            "--agent",
            &id,
            "--target",
            &format!("127.0.0.1:{marker}/tcp"),
        ])
        .is_empty();
    // Every refusal is either a record or counted in a gap record.
    let expected = 100_000 + u64::from(!marker_seen);
    assert_eq!(
        floods + lost,
        expected,
        "records {floods}, lost {lost}, marker seen {marker_seen}"
    );
    assert!(
        marker_seen || lost > 0,
        "the marker must be journaled, or a gap record must account for it"
    );
}

fn ps(g: &Guardd) -> Vec<Value> {
    let out = g.ctl(&["ps", "--json"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn wait_for_agent(g: &Guardd, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(a) = ps(g)
            .into_iter()
            .find(|a| a["name"] == name && a["main_pid"].is_number())
        {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "agent {name} never showed up in ps"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn freeze_stops_a_busy_agent_thaw_resumes_it_kill_ends_it() {
    let g = Guardd::start();
    let work = g.dir.path().join("busy");
    std::fs::create_dir_all(&work).unwrap();
    let p = g.write_policy("busy", "[policy]\nname = \"busy\"\n");
    let tick = work.join("tick");
    // The agent appends to `tick` as fast as it can: its size is progress.
    let script = "import subprocess\n\
                  subprocess.Popen(['sleep', '300'])\n\
                  f = open('tick', 'a', buffering=1)\n\
                  while True:\n    f.write('.\\n')\n";
    let mut child = g
        .run_cmd(&p, &[], &[PYTHON, "-c", script])
        .current_dir(&work)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the agent has started its child too.
    let deadline = Instant::now() + Duration::from_secs(10);
    let a = loop {
        let a = wait_for_agent(&g, "busy");
        // python, its sleep, and the pid-1 reaper of the agent's namespace.
        if a["processes"] == 3 {
            break a;
        }
        assert!(Instant::now() < deadline, "{a}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = || std::fs::metadata(&tick).map(|m| m.len()).unwrap_or(0);
    std::thread::sleep(Duration::from_millis(200));
    assert!(read() > 0, "the agent is not running");
    let out = g.ctl(&["freeze", "busy", "--reason", "suspicious burst"]);
    assert!(out.status.success(), "{}", describe(&out));
    let t1 = read();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(read(), t1, "a frozen agent must not run");
    assert_eq!(wait_for_agent(&g, "busy")["frozen"], true);
    let out = g.ctl(&["thaw", "busy"]);
    assert!(out.status.success(), "{}", describe(&out));
    std::thread::sleep(Duration::from_millis(300));
    assert_ne!(read(), t1, "a thawed agent runs again");
    let out = g.ctl(&["kill", "busy", "--reason", "incident 42"]);
    assert!(out.status.success(), "{}", describe(&out));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 9));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let id = err.split("--agent ").nth(1).unwrap().trim().to_owned();
    // No process of the scope survives (the sleep child included).
    assert!(ps(&g).is_empty());
    let pid = a["main_pid"].as_i64().unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    let recs = g.logs(&["--agent", &id, "--kind", "lifecycle"]);
    let by = |action: &str| {
        recs.iter()
            .find(|r| r["action"] == action)
            .unwrap_or_else(|| panic!("{recs:#?}"))
    };
    assert_eq!(by("freeze")["detail"]["reason"], "suspicious burst");
    assert_eq!(by("freeze")["detail"]["requested_by"]["uid"], 0);
    assert!(
        by("freeze")["detail"]["requested_by"]["pid"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(by("thaw")["action"], "thaw");
    assert_eq!(by("kill")["detail"]["reason"], "incident 42");
    assert_eq!(
        by("kill")["detail"]["processes"],
        3,
        "python, sleep and the reaper"
    );
    assert_eq!(by("exit")["target"], "signal 9");
}

#[test]
fn doctor_reports_what_this_host_enforces() {
    let g = Guardd::start();
    let out = g.ctl(&["doctor", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = v["layers"].as_array().unwrap();
    let status = |name: &str| {
        layers
            .iter()
            .find(|l| l["layer"] == name)
            .unwrap_or_else(|| panic!("no {name} in {layers:#?}"))["status"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(status("bpf-lsm"), "unavailable");
    for l in layers {
        if l["layer"] != "bpf-lsm" {
            assert_eq!(l["status"], "enforced", "{l}");
        }
    }
    for name in [
        "cgroup-bpf network",
        "cgroup-bpf unix",
        "landlock",
        "seccomp",
        "cgroup pids",
        "cgroup memory",
        "cgroup cpu",
    ] {
        assert_eq!(status(name), "enforced");
    }
    let text = g.ctl(&["doctor"]);
    let t = String::from_utf8_lossy(&text.stdout);
    assert!(
        t.lines().any(|l| l.starts_with("bpf-lsm")
            && l.contains("unavailable")
            && l.contains("cannot load")),
        "{t}"
    );
}

#[test]
fn untrusted_names_stay_one_escaped_record() {
    let g = Guardd::start();
    let work = g.dir.path().join("w");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::copy(repo().join("tests/agents/probe.py"), work.join("probe.py")).unwrap();
    let p = g.write_policy(
        "names",
        "[policy]\nname = \"names\"\ninclude = [\"base\", \"python\"]\n[filesystem]\nread = [\"{workdir}\"]\n",
    );
    let evil = "/tmp/a\nb\u{1b}[31mc";
    let out = g.run_in(
        &p,
        &[],
        &[PYTHON, "probe.py", &format!("write:{evil}")],
        &work,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let id = Guardd::agent_id(&out);
    let recs = g.logs(&["--agent", &id, "--kind", "file"]);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["target"], evil, "JSON keeps the exact name");
    let table = g.ctl(&["logs", "--agent", &id, "--kind", "file"]);
    let text = table.stdout;
    assert!(!text.contains(&0x1b), "no escape byte may reach a terminal");
    let lines: Vec<String> = String::from_utf8_lossy(&text)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 2, "header and one row: {lines:?}");
    assert!(lines[1].contains(r"/tmp/a\nb\x1b[31mc"), "{}", lines[1]);
}

#[test]
fn metrics_parse_with_the_reference_parser() {
    let g = Guardd::start();
    let p = net_policy(&g, "metered");
    connects(&g, &p, &[format!("tcp:127.0.0.1:{}", closed_port())]);
    let addr = g.metrics_addr();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"));
    let parser = "import sys, json\nfrom prometheus_client.parser import text_string_to_metric_families\n\
                  out = {}\n\
                  for f in text_string_to_metric_families(sys.stdin.read()):\n\
                  \x20   out[f.name] = [[s.name, s.labels, s.value] for s in f.samples]\n\
                  print(json.dumps(out))";
    let mut child = std::process::Command::new(PYTHON)
        .args(["-c", parser])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the reference parser rejected the page:\n{body}"
    );
    let fams: Value = serde_json::from_slice(&out.stdout).unwrap();
    let refusals = fams["guard_refusals"].as_array().unwrap();
    assert!(
        refusals.iter().any(|s| s[1]["policy"] == "metered"
            && s[1]["layer"] == "cgroup-bpf"
            && s[2].as_f64().unwrap() >= 1.0),
        "{fams:#}"
    );
    for f in [
        "guard_kernel_events",
        "guard_lost_events",
        "guard_agents_live",
        "guard_journal_commit_latency_seconds",
        "guard_refusals_coalesced",
        "guard_journal_bytes",
        "guard_journal_retention_removed",
    ] {
        assert!(fams.get(f).is_some(), "missing {f} in {fams:#}");
    }
}

#[test]
fn ocsf_and_mirror_outputs() {
    let mirror_dir = tempfile::tempdir().unwrap();
    let mirror = mirror_dir.path().join("guard.jsonl");
    let g = Guardd::start_with(&["--mirror", mirror.to_str().unwrap()]);
    let p = net_policy(&g, "ocsf");
    let port = closed_port();
    let out = connects(&g, &p, &[format!("tcp:127.0.0.1:{port}")]);
    let id = Guardd::agent_id(&out);
    let o = g.ctl(&["logs", "--ocsf", "--agent", &id, "--kind", "network"]);
    let ev: Value =
        serde_json::from_slice(o.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(ev["class_uid"], 4001);
    assert_eq!(ev["disposition"], "Blocked");
    assert_eq!(ev["dst_endpoint"]["port"], port);
    // The mirror holds exactly the committed records, as JSON lines.
    let recs = g.logs(&[]);
    let lines: Vec<Value> = std::fs::read_to_string(&mirror)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, recs);
}

#[test]
fn retention_summarises_what_it_removes() {
    let mut g = Guardd::start_with(&["--retain-records", "5", "--coalesce-interval", "0"]);
    let p = net_policy(&g, "ret");
    let port = closed_port();
    let targets: Vec<String> = (0..12).map(|_| format!("tcp:127.0.0.1:{port}")).collect();
    connects(&g, &p, &targets);
    // Retention runs at start-up (and then every minute).
    g.stop();
    let out = g.ctl(&["logs"]);
    assert!(!out.status.success());
    g.restart_after_crash();
    // The writer thread runs it as it starts, which on a loaded machine can
    // be after guardd already answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    let is_summary = |r: &Value| r["kind"] == "gap" && r["action"] == "retention";
    let mut recs = g.logs(&[]);
    while !recs.iter().any(is_summary) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        recs = g.logs(&[]);
    }
    let summary = recs
        .iter()
        .find(|r| is_summary(r))
        .unwrap_or_else(|| panic!("{recs:#?}"));
    assert!(
        summary["detail"]["removed"].as_u64().unwrap() >= 10,
        "{summary}"
    );
    assert!(recs.len() <= 8, "{}", recs.len());
    g.stop();
    let (code, text) = verify_journal(&g.journal);
    assert_eq!(code, 0, "retention must not break the chain: {text}");
}

/// An agent that sends `n` UDP datagrams to one forbidden address as fast as
/// Python can, then (after the monitor has had time to drain) one to a
/// second port, and prints how many sends were refused.
const UDP_FLOOD: &str = r#"
import json, socket, sys, time
host, port, n, marker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
send = s.sendto
addr = (host, port)
denied = 0
for _ in range(n):
    try:
        send(b"x", addr)
    except PermissionError:
        denied += 1
time.sleep(1.0)
try:
    send(b"x", (host, marker))
    marked = "sent"
except PermissionError:
    marked = "denied"
print(json.dumps({"denied": denied, "marker": marked}), flush=True)
"#;

/// A distinct forbidden destination per send: ports `1..=n`.
const UDP_SPREAD: &str = r#"
import json, socket, sys
host, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
denied = 0
for port in range(1, n + 1):
    try:
        s.sendto(b"x", (host, port))
    except PermissionError:
        denied += 1
print(json.dumps({"denied": denied}), flush=True)
"#;

fn agent_json(out: &std::process::Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("agent printed no result: {}", describe(out)));
    serde_json::from_str(line).unwrap()
}

#[test]
fn a_million_identical_refusals_stay_small_and_add_up() {
    let mut g = Guardd::start();
    let p = net_policy(&g, "flood1m");
    let (flood, marker) = (closed_port(), closed_port());
    let before = store_bytes(&g.journal);
    let started = Instant::now();
    let out = g.run(
        &p,
        &[],
        &[
            PYTHON,
            "-c",
            UDP_FLOOD,
            "127.0.0.1",
            &flood.to_string(),
            "1000000",
            &marker.to_string(),
        ],
    );
    let took = started.elapsed();
    assert!(out.status.success(), "{}", describe(&out));
    let res = agent_json(&out);
    assert_eq!(res["denied"], 1_000_000, "{res}");
    assert_eq!(res["marker"], "denied", "{res}");
    let growth = store_bytes(&g.journal).saturating_sub(before);
    eprintln!("1,000,000 refusals in {took:?}: journal grew by {growth} bytes");
    assert!(growth < 10_000_000, "journal grew by {growth} bytes");

    let id = Guardd::agent_id(&out);
    let recs = g.logs(&["--agent", &id]);
    let flood_recs: Vec<Value> = recs
        .iter()
        .filter(|r| r["target"] == format!("127.0.0.1:{flood}/udp"))
        .cloned()
        .collect();
    let marker_recs: Vec<&Value> = recs
        .iter()
        .filter(|r| r["target"] == format!("127.0.0.1:{marker}/udp"))
        .collect();
    assert_eq!(marker_recs.len(), 1, "the distinct refusal is journaled");
    let lost = lost(&recs);
    let journaled = refusals(&flood_recs);
    eprintln!(
        "{} flood records stand for {journaled} refusals; {lost} lost in the kernel",
        flood_recs.len()
    );
    assert_eq!(
        journaled + lost,
        1_000_000,
        "journaled {journaled} in {} records, lost {lost}",
        flood_recs.len()
    );
    // Folded, not one record per refusal.
    assert!(flood_recs.len() < 1000, "{} records", flood_recs.len());
    let summary = flood_recs
        .iter()
        .find(|r| r["detail"]["repeated"].as_u64().unwrap_or(0) > 0)
        .expect("a summary record");
    assert!(summary["detail"]["first_time"].is_string(), "{summary}");
    assert!(!summary["detail"]["pids"].as_array().unwrap().is_empty());
    // The exit record and guardctl's summary count every refusal the
    // monitor saw, folded or not.
    let exit = recs.iter().find(|r| r["action"] == "exit").unwrap();
    let denied = exit["detail"]["denied"].as_u64().unwrap();
    let others: Vec<&Value> = recs
        .iter()
        .filter(|r| {
            r["verdict"] == "denied"
                && r["target"] != format!("127.0.0.1:{flood}/udp")
                && r["target"] != format!("127.0.0.1:{marker}/udp")
        })
        .collect();
    assert_eq!(
        denied + lost,
        1_000_001,
        "{exit}\nother refusals: {others:#?}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{denied} denied")), "{err}");
    // The exit record comes after every record of the flood.
    let exit_seq = exit["seq"].as_u64().unwrap();
    assert!(
        flood_recs
            .iter()
            .all(|r| r["seq"].as_u64().unwrap() < exit_seq)
    );
    // The table shows the count.
    let table = g.ctl(&["logs", "--agent", &id, "--target", &format!(":{flood}/udp")]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains('×'), "{text}");

    g.stop();
    let (code, text) = verify_journal(&g.journal);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("intact"), "{text}");
}

#[test]
fn a_disk_budget_keeps_the_store_small_and_verifiable() {
    const BUDGET: u64 = 2 << 20;
    let mut g = Guardd::start_with(&["--journal-max-bytes", "2M"]);
    let p = net_policy(&g, "spread");
    let n = 20_000u64;
    let out = g.run(
        &p,
        &[],
        &[PYTHON, "-c", UDP_SPREAD, "127.0.0.1", &n.to_string()],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(agent_json(&out)["denied"], n);
    let id = Guardd::agent_id(&out);
    let size = store_bytes(&g.journal);
    let wal = store_bytes(&g.journal) - std::fs::metadata(&g.journal).unwrap().len();
    eprintln!(
        "{n} distinct refusals under a {BUDGET}-byte budget: store is {size} bytes ({wal} in the WAL)"
    );
    assert!(size <= BUDGET + BUDGET / 4, "store is {size} bytes");

    let recs = g.logs(&[]);
    let retention: Vec<&Value> = recs
        .iter()
        .filter(|r| r["kind"] == "gap" && r["action"] == "retention")
        .collect();
    assert!(!retention.is_empty(), "no retention record");
    for r in &retention {
        assert_eq!(r["rule"], "retention.max_bytes", "{r}");
        assert_eq!(r["detail"]["max_bytes"], BUDGET, "{r}");
        assert!(r["detail"]["removed"].as_u64().unwrap() > 0, "{r}");
    }
    // Every refusal is kept, counted in the running totals of the newest
    // retention record, or lost in the kernel (gap records).
    let kept = refusals(
        &recs
            .iter()
            .filter(|r| r["kind"] == "network" && r["agent"]["id"] == id)
            .cloned()
            .collect::<Vec<_>>(),
    );
    let removed = retention.last().unwrap()["detail"]["total_by_kind"]["network"]
        .as_u64()
        .unwrap_or(0);
    let lost = lost(&recs);
    assert_eq!(
        kept + removed + lost,
        n,
        "kept {kept}, removed {removed}, lost {lost}"
    );
    // The newest refusals and the exit record are kept.
    assert!(
        recs.iter()
            .any(|r| r["target"] == format!("127.0.0.1:{n}/udp") && r["agent"]["id"] == id),
        "the last refusal is kept"
    );
    assert!(
        recs.iter()
            .any(|r| r["action"] == "exit" && r["agent"]["id"] == id)
    );

    g.stop();
    assert!(store_bytes(&g.journal) <= BUDGET + BUDGET / 4);
    let (code, text) = verify_journal(&g.journal);
    assert_eq!(code, 0, "budget retention must not break the chain: {text}");
    assert!(text.contains("intact"), "{text}");
}

#[test]
fn bench_ingest_runs() {
    assert!(bench_support::ingest(2000, 4).unwrap() > 0.0);
    assert!(bench_support::ingest(500, 125).unwrap() > 0.0);
}

#[test]
fn bench_query_runs_small_and_reuses_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let (_, rows) = bench_support::query(&path, 2000).unwrap();
    // agent-7's network records: one in every 1000.
    assert_eq!(rows, 2);
    let head = |p: &Path| {
        guard_daemon::journal::Store::open_read_only(p)
            .unwrap()
            .head()
            .unwrap()
            .unwrap()
            .seq
    };
    assert_eq!(head(&path), 2000);
    // Reuses the existing data instead of appending again.
    let (_, rows) = bench_support::query(&path, 2000).unwrap();
    assert_eq!(rows, 2);
    assert_eq!(head(&path), 2000);
    // Built through the writer, so it is a journal guardd would accept.
    let report = guard_daemon::journal::verify(&path).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.records, 2000);
    // Topped up, not rebuilt.
    let (_, rows) = bench_support::query(&path, 3000).unwrap();
    assert_eq!(rows, 3);
    assert_eq!(head(&path), 3000);
}
