//! The hand-off to a person (issue 15): what agents tried outside their
//! scope and what they asked for on purpose, as `guardctl requests` lists
//! it, and the request channel every agent gets at descriptor 3. A request
//! is journaled (with the agent's identity, taken from the channel, and its
//! words exact in JSON, escaped on a terminal), mirrored and counted, and
//! grants nothing; the channel serves nothing else of guardd, and a flood
//! is limited and summarised. Root, real kernel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

const POLICY: &str = r#"[policy]
name = "asker"
include = ["base", "python"]

[network]
allow = []

[filesystem]
read = ["{workdir}"]
"#;

/// A working directory holding the agent, which the policy lets it read.
fn workspace(g: &Guardd) -> PathBuf {
    let w = g.dir.path().join("work");
    std::fs::create_dir_all(&w).unwrap();
    std::fs::copy(repo().join("tests/agents/ask.py"), w.join("ask.py")).unwrap();
    w
}

/// Runs ask.py with `ops` as agent `name`.
fn ask(g: &Guardd, name: &str, ops: &[&str]) -> Output {
    let work = workspace(g);
    let p = g.write_policy("asker", POLICY);
    let mut cmd = vec![PYTHON, "ask.py"];
    cmd.extend_from_slice(ops);
    g.run_in(&p, &["--name", name], &cmd, &work)
}

fn results(out: &Output) -> Vec<Value> {
    let r = probe_results(out);
    assert!(
        !r.is_empty(),
        "the agent printed nothing: {}",
        describe(out)
    );
    r
}

/// `GET /metrics` on guardd's metrics address.
fn metrics(g: &Guardd) -> String {
    let mut s = TcpStream::connect(g.metrics_addr().trim()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp
}

fn counter(page: &str, name: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{page}"))
}

/// `guardctl requests --json` with `args`.
fn requests(g: &Guardd, args: &[&str]) -> Vec<Value> {
    let out = g.ctl(&[&["requests", "--json"], args].concat());
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Records of `id`, once `pred` holds for them (records arrive
/// asynchronously); fails after 15 s with what was there.
fn records_until(g: &Guardd, id: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let recs = g.logs(&["--agent", id]);
        if pred(&recs) {
            return recs;
        }
        assert!(Instant::now() < deadline, "{recs:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn escalations<'a>(recs: &'a [Value], action: &str) -> Vec<&'a Value> {
    recs.iter()
        .filter(|r| r["kind"] == "escalation" && r["action"] == action)
        .collect()
}

#[test]
fn a_request_from_inside_is_journaled_listed_mirrored_counted_and_grants_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mirror = dir.path().join("mirror.jsonl");
    let g = Guardd::start_with(&["--mirror", mirror.to_str().unwrap()]);
    let listener = Listener::tcp("127.0.0.1");
    let port = listener.port.to_string();
    let want = format!("127.0.0.1:{port}/tcp");
    // Hostile words: a terminal escape, a newline, a bidi override.
    let why = "need the build cache\x1b[31m\nnow\u{202e}txt";
    let out = ask(
        &g,
        "asker",
        &[
            "env",
            "tcp",
            "127.0.0.1",
            &port,
            "tcp",
            "127.0.0.1",
            &port,
            "read",
            "/etc/shadow",
            "ask",
            &want,
            why,
            "tcp",
            "127.0.0.1",
            &port,
        ],
    );
    let res = results(&out);
    let id = Guardd::agent_id(&out);
    // The channel is there by construction: descriptor 3, named in the
    // environment.
    assert_eq!(res[0]["reply"]["env"], "3", "{res:#?}");
    assert_eq!(res[0]["reply"]["socket"], true, "{res:#?}");
    // Refused before, answered "journaled, grants nothing", and still
    // refused after: the request changed nothing.
    for i in [1, 2, 5] {
        assert_eq!(res[i]["errno"], "EPERM", "{res:#?}");
    }
    assert_eq!(res[3]["errno"], "EACCES", "{res:#?}");
    let reply = &res[4]["reply"];
    assert_eq!(reply["ok"], true, "{res:#?}");
    assert_eq!(reply["request"], "journaled", "{res:#?}");
    assert_eq!(reply["grants"], "nothing", "{res:#?}");
    assert_eq!(
        listener.accepted.load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // One escalation record: the agent's identity from the channel, its
    // words exact.
    let recs = records_until(&g, &id, |r| {
        !escalations(r, "request").is_empty()
            && r.iter()
                .filter(|x| x["kind"] == "network")
                .map(|x| 1 + x["detail"]["repeated"].as_u64().unwrap_or(0))
                .sum::<u64>()
                >= 3
    });
    let esc = escalations(&recs, "request");
    assert_eq!(esc.len(), 1, "{recs:#?}");
    let e = esc[0];
    assert_eq!(e["agent"]["id"], id.as_str());
    assert_eq!(e["agent"]["name"], "asker");
    assert_eq!(e["target"], want.as_str());
    assert_eq!(e["verdict"], "allowed");
    assert_eq!(e["rule"], "escalation.request");
    assert_eq!(e["layer"], "agent");
    assert_eq!(e["detail"]["want"], want.as_str());
    assert_eq!(e["detail"]["why"], why);
    let seq = e["seq"].as_u64().unwrap();
    // A request is no refusal: the summary counts the three connects and
    // the read, not the request.
    let denied = recs
        .iter()
        .filter(|r| r["verdict"] == "denied")
        .map(|r| 1 + r["detail"]["repeated"].as_u64().unwrap_or(0))
        .sum::<u64>();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("; {denied} denied")),
        "{denied}: {}",
        describe(&out)
    );

    // The queue: the request as #seq with its words, the refusals grouped
    // with counts, times and the rule that refused them.
    let groups = requests(&g, &["--agent", &id]);
    let req = groups
        .iter()
        .find(|x| x["kind"] == "escalation")
        .unwrap_or_else(|| panic!("{groups:#?}"));
    assert_eq!(req["request"], seq);
    assert_eq!(req["want"], want.as_str());
    assert_eq!(req["why"], why);
    assert_eq!(req["agent"]["id"], id.as_str());
    assert_eq!(req["agent"]["name"], "asker");
    assert_eq!(req["count"], 1);
    let net: Vec<&Value> = groups.iter().filter(|x| x["kind"] == "network").collect();
    assert_eq!(net.len(), 1, "{groups:#?}");
    let net = net[0];
    assert_eq!(net["target"], want.as_str());
    assert_eq!(net["count"], 3, "{groups:#?}");
    assert_eq!(net["rule"], "network.default-deny");
    assert_eq!(net["layer"], "cgroup-bpf");
    assert_eq!(net["verdict"], "denied");
    assert!(net["first"].as_str().unwrap() < net["last"].as_str().unwrap());
    // Its number is the seq of its first record, which holds that target.
    let first_net = recs
        .iter()
        .find(|r| r["kind"] == "network" && r["target"] == want.as_str())
        .unwrap();
    assert_eq!(net["request"], first_net["seq"]);
    let file = groups
        .iter()
        .find(|x| x["kind"] == "file")
        .unwrap_or_else(|| panic!("{groups:#?}"));
    assert_eq!(file["target"], "/etc/shadow");
    assert_eq!(file["verdict"], "denied");
    // Nothing else: the start, exit and allowed execs are not requests.
    assert!(
        groups
            .iter()
            .all(|x| ["escalation", "network", "file"].contains(&x["kind"].as_str().unwrap())),
        "{groups:#?}"
    );
    // The table: one line per group, hostile bytes escaped, never raw.
    let table = g.ctl(&["requests", "--agent", &id]);
    assert!(table.status.success(), "{}", describe(&table));
    let text = String::from_utf8(table.stdout.clone()).unwrap();
    assert_eq!(text.lines().count(), groups.len() + 1, "{text}");
    assert!(!text.contains(['\x1b', '\u{202e}']), "{text:?}");
    assert!(
        text.contains(&format!("#{seq} "))
            && text.contains("need the build cache\\x1b[31m\\nnow\\u{202E}txt"),
        "{text}"
    );
    // Offline, from the file itself: the same groups.
    let offline = requests(
        &g,
        &["--agent", &id, "--journal", g.journal.to_str().unwrap()],
    );
    assert_eq!(offline, groups);

    // The mirror carries it, and the metrics count it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = std::fs::read_to_string(&mirror).unwrap_or_default();
        let found = lines
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|r| r["seq"] == seq && r["kind"] == "escalation" && r["detail"]["why"] == why);
        if found {
            break;
        }
        assert!(Instant::now() < deadline, "not on the mirror:\n{lines}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let page = metrics(&g);
    assert_eq!(counter(&page, "guard_escalations_total"), 1, "{page}");
    assert_eq!(counter(&page, "guard_escalations_limited_total"), 0);
    assert_eq!(counter(&page, "guard_escalations_invalid_total"), 0);
}

#[test]
fn the_channel_serves_nothing_else_and_bad_lines_get_precise_errors() {
    let g = Guardd::start();
    // A victim the asker will try to kill through the channel.
    let vp = net_policy(&g, "victim");
    let mut victim = g.spawn_run(&vp, &["--name", "victim"], &["/bin/sleep", "30"]);
    std::thread::sleep(Duration::from_millis(500));
    let out = ask(
        &g,
        "asker",
        &[
            "raw",
            r#"{"v":1,"id":2,"op":"ps"}"#,
            "raw",
            r#"{"v":1,"id":3,"op":"control","agent":"victim","action":"kill"}"#,
            "raw",
            r#"{"v":1,"id":4,"op":"open","policy_path":"x","policy_text":"","argv":["/bin/sh"],"workdir":"/","home":"/"}"#,
            "long",
            "5000",
            // The channel stays usable, and only the channel's own identity
            // counts: a request naming another agent is refused.
            "raw",
            r#"{"v":1,"id":5,"op":"request","want":"x","agent":"victim"}"#,
        ],
    );
    let res = results(&out);
    let id = Guardd::agent_id(&out);
    let code = |i: usize| res[i]["reply"]["error"]["code"].clone();
    assert_eq!(code(0), "permission_denied", "{res:#?}");
    assert_eq!(res[0]["reply"]["id"], 2);
    assert!(
        res[0]["reply"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("takes op \"request\" only"),
        "{res:#?}"
    );
    assert_eq!(code(1), "permission_denied", "{res:#?}");
    assert_eq!(code(2), "permission_denied", "{res:#?}");
    assert_eq!(code(3), "too_long", "{res:#?}");
    assert_eq!(code(4), "bad_request", "{res:#?}");
    assert!(
        res[4]["reply"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `agent`"),
        "{res:#?}"
    );
    // Nothing was done: the victim lives, no agent was opened.
    assert!(
        victim.try_wait().unwrap().is_none(),
        "the victim was killed"
    );
    let ps = String::from_utf8_lossy(&g.ctl(&["ps"]).stdout).into_owned();
    assert!(ps.contains("victim"), "{ps}");
    // Each refusal is journaled as guardd's (not a request, not the
    // agent's refusal), and counted.
    let recs = records_until(&g, &id, |r| escalations(r, "invalid").len() >= 5);
    let invalid = escalations(&recs, "invalid");
    assert_eq!(invalid.len(), 5, "{recs:#?}");
    for r in &invalid {
        assert_eq!(r["verdict"], "denied");
        assert_eq!(r["rule"], "escalation.invalid");
        assert_eq!(r["layer"], "guardd");
        assert_eq!(r["agent"]["id"], id.as_str());
    }
    let targets: Vec<&str> = invalid
        .iter()
        .map(|r| r["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["ps", "control", "open", "", "request"]);
    assert!(escalations(&recs, "request").is_empty());
    assert!(
        requests(&g, &["--agent", &id])
            .iter()
            .all(|x| x["kind"] != "escalation")
    );
    assert_eq!(counter(&metrics(&g), "guard_escalations_invalid_total"), 5);
    // SAFETY: signalling the guardctl this test started, by pid.
    unsafe { libc::kill(victim.id() as i32, libc::SIGTERM) };
    let _ = victim.wait();
}

#[test]
fn a_flood_is_limited_summarised_and_guardd_stays_healthy() {
    let g = Guardd::start();
    let out = ask(&g, "flooder", &["flood", "40", "127.0.0.1:1/tcp"]);
    let res = results(&out);
    let id = Guardd::agent_id(&out);
    let replies = res[0]["reply"].as_array().unwrap();
    assert_eq!(replies.len(), 40, "{res:#?}");
    let ok = replies.iter().filter(|r| r["ok"] == true).count();
    let busy = replies
        .iter()
        .filter(|r| r["error"]["code"] == "busy")
        .count();
    // The burst goes through (one more if the flood spans a refill).
    assert!((5..=6).contains(&ok), "{res:#?}");
    assert_eq!(ok + busy, 40, "{res:#?}");
    // What was suppressed is journaled as one summary, not lost.
    let recs = records_until(&g, &id, |r| !escalations(r, "rate-limit").is_empty());
    assert_eq!(escalations(&recs, "request").len(), ok);
    let limited = escalations(&recs, "rate-limit");
    let suppressed: u64 = limited
        .iter()
        .map(|r| r["detail"]["suppressed"].as_u64().unwrap())
        .sum();
    assert_eq!(suppressed, busy as u64, "{recs:#?}");
    assert_eq!(limited[0]["rule"], "escalation.rate-limited");
    assert_eq!(limited[0]["verdict"], "denied");
    let page = metrics(&g);
    assert_eq!(counter(&page, "guard_escalations_total"), ok as u64);
    assert_eq!(
        counter(&page, "guard_escalations_limited_total"),
        busy as u64
    );
    // guardd still serves, and the next agent has its own full bucket.
    assert!(g.ctl(&["ps"]).status.success());
    let out = ask(&g, "next", &["ask", "127.0.0.1:2/tcp", "after the flood"]);
    assert_eq!(results(&out)[0]["reply"]["ok"], true, "{}", describe(&out));
}

/// The host pid of the agent's main process (the child of the pid-1
/// reaper `guardctl ps` names).
fn agent_pid(g: &Guardd, name: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = g.ctl(&["ps", "--json"]);
        let reaper = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|a| a["name"] == name)
            .and_then(|a| a["main_pid"].as_u64());
        if let Some(r) = reaper {
            let children =
                std::fs::read_to_string(format!("/proc/{r}/task/{r}/children")).unwrap_or_default();
            if let Some(c) = children.split_whitespace().next() {
                return c.parse().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "no agent {name}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_agent_cannot_reach_another_agents_channel() {
    let g = Guardd::start();
    let work = workspace(&g);
    let p = g.write_policy("asker", POLICY);
    // The first agent holds its channel open.
    let mut first = g
        .run_cmd(
            &p,
            &["--name", "first"],
            &[PYTHON, "-c", "import time; time.sleep(30)"],
        )
        .current_dir(&work)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = agent_pid(&g, "first");
    assert!(Path::new(&format!("/proc/{pid}/fd/3")).exists());
    // The route exists: outside every scope, root takes the first's
    // channel with pidfd_getfd.
    // SAFETY: plain system calls on a pid this test started; the
    // descriptors returned are closed right away.
    unsafe {
        let pfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        assert!(pfd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        let fd = libc::syscall(libc::SYS_pidfd_getfd, pfd, 3, 0) as i32;
        assert!(fd >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
        libc::close(fd);
        libc::close(pfd);
    }
    // The second tries it from its scope, and through /proc; it lives in
    // another pid namespace, with its own /proc.
    let theirs = format!("/proc/{pid}/fd/3");
    let pid_s = pid.to_string();
    let out = ask(
        &g,
        "second",
        &[
            "pidfd",
            &pid_s,
            "3",
            "read",
            &theirs,
            "ask",
            "127.0.0.1:3/tcp",
            "mine",
        ],
    );
    let res = results(&out);
    let id = Guardd::agent_id(&out);
    assert_eq!(res[0]["ok"], false, "{res:#?}");
    assert_eq!(res[1]["ok"], false, "{res:#?}");
    assert_eq!(res[2]["reply"]["ok"], true, "{res:#?}");
    // Its request is its own, whatever it might claim.
    let recs = records_until(&g, &id, |r| !escalations(r, "request").is_empty());
    let esc = escalations(&recs, "request");
    assert_eq!(esc[0]["agent"]["name"], "second");
    // SAFETY: signalling the guardctl this test started, by pid.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let _ = first.wait();
    // The first asked nothing.
    let all = requests(&g, &["--agent", "first"]);
    assert!(all.iter().all(|x| x["kind"] != "escalation"), "{all:#?}");
}

#[test]
fn a_follower_sees_requests_as_they_come() {
    let g = Guardd::start();
    let mut follower = g
        .ctl_cmd()
        .args(["requests", "--follow", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str(&line)
                && tx.send(v).is_err()
            {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let out = ask(
        &g,
        "followed",
        &[
            "read",
            "/etc/shadow",
            "read",
            "/etc/shadow",
            "ask",
            "127.0.0.1:4/tcp",
            "later",
        ],
    );
    let id = Guardd::agent_id(&out);
    // The file group appears, grows (or arrives folded, counting 2), and
    // the request appears on its own.
    let mut seen: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let done = |seen: &[Value]| {
        seen.iter()
            .any(|v| v["kind"] == "escalation" && v["why"] == "later")
            && seen.iter().any(|v| v["kind"] == "file" && v["count"] == 2)
    };
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) => seen.push(v),
            Err(_) => panic!("the follower printed {seen:#?}"),
        }
    }
    assert!(
        seen.iter().all(|v| v["agent"]["id"] == id.as_str()),
        "{seen:#?}"
    );
    // SAFETY: signalling the guardctl this test started, by pid.
    unsafe { libc::kill(follower.id() as i32, libc::SIGTERM) };
    let _ = follower.wait();
    let _ = reader.join();
}

#[test]
fn after_a_restart_a_readopted_agents_channel_is_closed() {
    let mut g = Guardd::start();
    let work = workspace(&g);
    let p = g.write_policy("asker", POLICY);
    // Blocks reading its channel: guardd never writes unasked, so only the
    // end of the channel wakes it.
    let script = "import os, socket\n\
                  s = socket.socket(fileno=int(os.environ['GUARD_REQUEST_FD']))\n\
                  s.settimeout(40)\n\
                  print('eof' if s.recv(1) == b'' else 'data', flush=True)\n";
    let mut child = g
        .run_cmd(&p, &["--name", "waiter"], &[PYTHON, "-c", script])
        .current_dir(&work)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    agent_pid(&g, "waiter");
    // Open while guardd runs: the agent is still waiting.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the channel ended early"
    );
    g.restart();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "eof",
        "{}",
        describe(&out)
    );
}

#[test]
fn another_uid_sees_no_one_elses_requests_unless_it_reads_all() {
    use std::os::unix::process::CommandExt;
    const NOBODY: u32 = 65534;
    for (extra, sees) in [
        (vec!["--group", "nogroup"], false),
        (vec!["--group", "nogroup", "--group-reads-all"], true),
    ] {
        let g = Guardd::start_with(&extra);
        let out = ask(
            &g,
            "rooted",
            &["read", "/etc/shadow", "ask", "x:1/tcp", "y"],
        );
        let id = Guardd::agent_id(&out);
        records_until(&g, &id, |r| !escalations(r, "request").is_empty());
        assert_eq!(requests(&g, &["--agent", &id]).len(), 2);
        let theirs = g
            .ctl_cmd()
            .args(["requests", "--json"])
            .uid(NOBODY)
            .gid(NOBODY)
            .current_dir("/")
            .output()
            .unwrap();
        assert!(theirs.status.success(), "{}", describe(&theirs));
        let listed = String::from_utf8_lossy(&theirs.stdout).lines().count();
        if sees {
            assert_eq!(listed, 2, "{}", describe(&theirs));
        } else {
            assert_eq!(listed, 0, "{}", describe(&theirs));
            assert!(
                String::from_utf8_lossy(&theirs.stderr).contains("owns no agents"),
                "{}",
                describe(&theirs)
            );
        }
    }
}
