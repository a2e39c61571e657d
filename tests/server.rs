//! guardd's socket server (issue 11): on SIGTERM it stops accepting, lets
//! each open connection finish the request it is serving (a followed log
//! ends with a `done` line, a launcher's agent is left for re-adoption) and
//! exits cleanly; and it serves at most so many connections per uid at once,
//! serving again as soon as one closes. Root, real kernel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::{net::UnixStream, process::CommandExt},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;

/// A raw protocol client: one request line out, response lines back.
struct Client {
    reader: BufReader<UnixStream>,
}

impl Client {
    fn connect(g: &Guardd) -> Client {
        let s = UnixStream::connect(&g.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client {
            reader: BufReader::new(s),
        }
    }

    fn send(&mut self, line: &str) {
        let s = self.reader.get_mut();
        s.write_all(line.as_bytes()).unwrap();
        s.write_all(b"\n").unwrap();
    }

    /// The next response line, or `None` at a clean end of the stream (a
    /// reset or a timeout fails the test).
    fn next(&mut self) -> Option<Value> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).unwrap();
        (n > 0).then(|| serde_json::from_str(&line).unwrap())
    }
}

#[test]
fn sigterm_lets_connections_finish_and_guardd_exits_cleanly() {
    let mut g = Guardd::start();
    // A launcher whose agent is live: its connection is mid-session.
    let p = net_policy(&g, "drain");
    let mut launcher = g
        .ctl_cmd()
        .current_dir(g.dir.path())
        .args(["run", "--policy", p.to_str().unwrap(), "--name", "drain"])
        .args(["--", "/bin/sleep", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let agent_pid = loop {
        let out = g.ctl(&["ps", "--json"]);
        let entry = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["name"] == "drain");
        if let Some(pid) = entry.as_ref().and_then(|e| e["main_pid"].as_i64()) {
            break pid;
        }
        assert!(Instant::now() < deadline, "the agent did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    // A client between requests.
    let mut idle = Client::connect(&g);
    idle.send(r#"{"v":1,"id":1,"op":"hello"}"#);
    let hello = idle.next().unwrap();
    assert_eq!(hello["ok"], true, "{hello}");
    // A follower: its request lasts until guardd stops.
    let mut follower = Client::connect(&g);
    follower.send(r#"{"v":1,"id":7,"op":"logs","follow":true}"#);
    let first = follower.next().unwrap();
    assert!(first["record"].is_object(), "{first}");
    // And guardctl's own follower.
    let mut ctl_follow = g
        .ctl_cmd()
        .args(["logs", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ctl_out = BufReader::new(ctl_follow.stdout.take().unwrap());
    let mut line = String::new();
    ctl_out.read_line(&mut line).unwrap();
    assert!(!line.is_empty(), "guardctl logs --follow printed nothing");

    let t = Instant::now();
    let status = g
        .stop_within(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("guardd did not stop on SIGTERM:\n{}", g.log()));
    let took = t.elapsed();
    assert!(
        status.success(),
        "guardd exited with {status}:\n{}",
        g.log()
    );
    assert!(
        took < Duration::from_secs(8),
        "stopping took {took:?} with only idle connections:\n{}",
        g.log()
    );
    // The follower's stream ends with `done` for its request, then the
    // connection closes cleanly.
    let mut last = None;
    while let Some(v) = follower.next() {
        last = Some(v);
    }
    let last = last.expect("the follower got no end of its stream");
    assert_eq!(last["id"], 7, "{last}");
    assert_eq!(last["ok"], true, "{last}");
    assert_eq!(last["done"], true, "{last}");
    // The client between requests sees the connection closed, not reset.
    assert!(idle.next().is_none());
    // guardctl's follower ends successfully.
    let mut rest = String::new();
    ctl_out.read_to_string(&mut rest).unwrap();
    let st = wait_or_kill(&mut ctl_follow, Duration::from_secs(10))
        .expect("guardctl logs --follow did not end when guardd stopped");
    let mut err = String::new();
    ctl_follow
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(st.success(), "guardctl logs --follow: {st}: {err}");
    // The launcher's agent was not ended by the stop: the pinned programs
    // still confine it, and the next guardd re-adopts it.
    assert!(
        std::path::Path::new(&format!("/proc/{agent_pid}")).exists(),
        "the agent was ended when guardd stopped"
    );
    // The journal is whole, its stop record last.
    let (code, text) = verify_journal(&g.journal);
    assert_eq!(code, 0, "{text}");
    let out = Command::new(GUARDCTL)
        .args(["logs", "--journal", g.journal.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let recs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let stop = recs.last().unwrap_or_else(|| panic!("{}", describe(&out)));
    assert_eq!(stop["action"], "daemon-stop", "{stop}");
    assert_eq!(stop["detail"]["live_agents"], 1, "{stop}");

    g.restart();
    let out = g.ctl(&["ps", "--json"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"drain\""),
        "not re-adopted: {}",
        describe(&out)
    );
    assert!(g.ctl(&["kill", "drain"]).status.success());
    let _ = wait_or_kill(&mut launcher, Duration::from_secs(20));
}

#[test]
fn a_uid_at_its_connection_cap_is_refused_busy_and_served_once_one_closes() {
    let g = Guardd::start_with(&["--group", "nogroup"]);
    // nobody holds 32 served connections, is refused a 33rd with `busy`,
    // closes one, and is served again.
    let script = r#"
import json, socket, sys, time
def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sys.argv[1])
    return s
def hello(s):
    s.sendall(b'{"v":1,"id":1,"op":"hello"}\n')
    return json.loads(s.makefile().readline())
held = [connect() for _ in range(32)]
served = sum(1 for s in held if hello(s).get("ok") is True)
extra = connect()
refused = json.loads(extra.makefile().readline() or "null")
extra.close()
held.pop().close()
again, attempts = None, 0
deadline = time.time() + 10
while time.time() < deadline:
    attempts += 1
    s = connect()
    try:
        again = hello(s)
    except (ValueError, OSError):
        again = None
    if again and again.get("ok") is True:
        break
    s.close()
    time.sleep(0.05)
print(json.dumps({"served": served, "refused": refused, "again": again, "attempts": attempts}), flush=True)
"#;
    let out = Command::new(PYTHON)
        .arg("-c")
        .arg(script)
        .arg(&g.socket)
        .uid(NOBODY)
        .gid(NOGROUP)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["served"], 32, "{v}");
    assert_eq!(v["refused"]["ok"], false, "{v}");
    assert_eq!(v["refused"]["error"]["code"], "busy", "{v}");
    assert!(
        v["refused"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("32 per uid"),
        "{v}"
    );
    assert_eq!(v["again"]["ok"], true, "not served after closing one: {v}");
}

#[test]
fn a_long_answer_in_flight_at_sigterm_is_sent_in_full() {
    let mut g = Guardd::start_with(&["--coalesce-interval", "0"]);
    let port = closed_port();
    let p = net_policy(&g, "many");
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for i in range(5000):\n    try: s.sendto(b'x', ('127.0.0.1', {port}))\n    except OSError: pass\n"
    );
    let out = g.run(&p, &[], &[PYTHON, "-c", &script]);
    assert!(out.status.success(), "{}", describe(&out));
    // A reader asks for every record (several pages, far more than the
    // socket buffer holds) and stalls after the first line: guardd is
    // blocked writing its answer when the stop comes.
    let mut reader = Client::connect(&g);
    reader.send(r#"{"v":1,"id":3,"op":"logs"}"#);
    let first = reader.next().unwrap();
    assert!(first["record"].is_object(), "{first}");
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling the guardd this test started, by pid.
    unsafe { libc::kill(g.pid() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(500));
    // The whole answer still comes, ended by `done` with its count.
    let mut records = 1u64;
    let done = loop {
        let v = reader
            .next()
            .unwrap_or_else(|| panic!("the answer was cut after {records} records"));
        if v["done"] == true {
            break v;
        }
        assert!(v["record"].is_object(), "{v}");
        records += 1;
    };
    assert_eq!(done["id"], 3, "{done}");
    assert_eq!(done["count"], records, "{done}");
    assert!(records > 2000, "only {records} records");
    assert!(reader.next().is_none());
    let status = g
        .stop_within(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("guardd did not stop:\n{}", g.log()));
    assert!(
        status.success(),
        "guardd exited with {status}:\n{}",
        g.log()
    );
    let (code, text) = verify_journal(&g.journal);
    assert_eq!(code, 0, "{text}");
}
