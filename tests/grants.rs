//! Live grants (issue 15): an operator widens a running agent's network
//! scope for a while. The same agent process is asked to connect before,
//! during and after a grant, so only the kernel's maps change in between.
//! Root, real kernel, loopback listeners.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::process::CommandExt,
    process::{Child, ChildStdin, ChildStdout, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

/// A live agent running tests/agents/grantprobe.py, asked line by line.
struct Probe {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Probe {
    fn start(g: &Guardd, name: &str, extra: &[&str]) -> Probe {
        let policy = g.write_policy(
            name,
            &format!("[policy]\nname = \"{name}\"\n[network]\nallow = []\n"),
        );
        let mut args = vec!["--name", name];
        args.extend_from_slice(extra);
        let script = agent_script("grantprobe.py");
        let mut child = g
            .run_cmd(&policy, &args, &[PYTHON, script.as_str()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut p = Probe {
            child,
            stdin,
            stdout,
        };
        // Answers once it runs inside its scope.
        assert!(!p.ask("tcp 127.0.0.1 1")["ok"].as_bool().unwrap());
        p
    }

    fn ask(&mut self, line: &str) -> Value {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut out = String::new();
        self.stdout.read_line(&mut out).unwrap();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    }

    fn ok(&mut self, line: &str) -> bool {
        self.ask(line)["ok"].as_bool().unwrap()
    }

    /// Ends the agent (end of input) and returns its guardctl output.
    fn finish(self) -> std::process::Output {
        drop(self.stdin);
        let mut child = self.child;
        wait_or_kill(&mut child, Duration::from_secs(10));
        child.wait_with_output().unwrap()
    }
}

fn grant(g: &Guardd, args: &[&str]) -> std::process::Output {
    g.ctl(&[&["grant"], args].concat())
}

/// The journal number of the first `kind` record with `target`, once it
/// is there: what `guardctl grant --request N` takes.
fn request_number(g: &Guardd, kind: &str, target: &str) -> String {
    let recs = g.logs_until(1, |r| r["kind"] == kind && r["target"] == target);
    recs.iter()
        .find(|r| r["kind"] == kind && r["target"] == target)
        .unwrap()["seq"]
        .as_u64()
        .unwrap()
        .to_string()
}

fn grants_json(g: &Guardd) -> Vec<Value> {
    let out = g.ctl(&["grants", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_grant_lets_exactly_its_destination_through_and_ends_on_time() {
    let g = Guardd::start();
    let a = Listener::tcp("127.0.0.1");
    let b = Listener::tcp("127.0.0.1");
    let (_u, uport) = udp_sink("127.0.0.1");
    let mut p = Probe::start(&g, "granted", &[]);
    let mut other = Probe::start(&g, "bystander", &[]);
    let to_a = format!("tcp 127.0.0.1 {}", a.port);
    let to_b = format!("tcp 127.0.0.1 {}", b.port);
    assert!(!p.ok(&to_a), "refused before any grant");

    let dest = format!("127.0.0.1:{}/tcp", a.port);
    let out = grant(
        &g,
        &[
            "granted",
            "--allow",
            &dest,
            "--for",
            "3s",
            "--reason",
            "ticket 42",
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let t0 = Instant::now();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("grant 1"),
        "{}",
        describe(&out)
    );
    // Exactly the destination: this port over TCP, for this agent.
    assert!(p.ok(&to_a), "the grant lets the destination through");
    assert!(!p.ok(&to_b), "another port stays refused");
    assert!(
        !p.ok(&format!("udp 127.0.0.1 {}", a.port)),
        "UDP to the port stays refused"
    );
    assert!(
        !p.ok(&format!("udp 127.0.0.1 {uport}")),
        "UDP elsewhere stays refused"
    );
    assert!(
        !p.ok(&format!("tcp 127.0.0.2 {}", a.port)),
        "another address stays refused"
    );
    assert!(
        !p.ok(&format!("tcp ::1 {}", a.port)),
        "IPv6 loopback is another address"
    );
    // The v4-mapped form is the same IPv4 address to the kernel.
    assert!(p.ok(&format!("tcp ::ffff:127.0.0.1 {}", a.port)));
    assert!(!other.ok(&to_a), "another agent gets nothing of it");
    let listed = grants_json(&g);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["agent"]["name"], "granted");
    assert_eq!(listed[0]["grant"], 1);
    assert_eq!(listed[0]["reason"], "ticket 42");
    assert_eq!(listed[0]["rule"], format!("127.0.0.1/32 tcp {}", a.port));

    // It ends on its own, and is journaled with who, what and why.
    while t0.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.ok(&to_a) {
        assert!(Instant::now() < deadline, "the grant did not expire");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(grants_json(&g).is_empty());
    let recs = g.logs_until(1, |r| r["action"] == "grant-expired");
    let granted: Vec<&Value> = recs.iter().filter(|r| r["action"] == "grant").collect();
    assert_eq!(granted.len(), 1, "{recs:#?}");
    let r = granted[0];
    assert_eq!(r["kind"], "policy");
    assert_eq!(r["agent"]["name"], "granted");
    assert_eq!(r["target"], dest);
    assert_eq!(r["rule"], "grant:1");
    assert_eq!(r["detail"]["granted_by"]["uid"], 0);
    assert_eq!(r["detail"]["reason"], "ticket 42");
    let expired = recs
        .iter()
        .find(|r| r["action"] == "grant-expired")
        .unwrap();
    assert_eq!(expired["agent"]["name"], "granted");
    assert_eq!(expired["target"], dest);
    // Refusals before and after the grant are journaled as any other.
    let refused = g.logs(&["--agent", "granted", "--verdict", "denied"]);
    assert!(
        refused
            .iter()
            .any(|r| r["kind"] == "network" && r["target"] == format!("127.0.0.1:{}/tcp", b.port)),
        "{refused:#?}"
    );
    let accepted = a.accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(accepted >= 2, "the listener saw the granted connections");
    p.finish();
    other.finish();
}

#[test]
fn revoke_ends_a_grant_early_and_a_grant_never_outlives_its_agent() {
    let g = Guardd::start();
    let a = Listener::tcp("127.0.0.1");
    let b = Listener::tcp("127.0.0.1");
    let mut p = Probe::start(&g, "revoked", &[]);
    let to_a = format!("tcp 127.0.0.1 {}", a.port);
    let to_b = format!("tcp 127.0.0.1 {}", b.port);
    for (port, why) in [(a.port, "first"), (b.port, "second")] {
        let out = grant(
            &g,
            &[
                "revoked",
                "--allow",
                &format!("127.0.0.1:{port}"),
                "--reason",
                why,
            ],
        );
        assert!(out.status.success(), "{}", describe(&out));
    }
    assert!(p.ok(&to_a) && p.ok(&to_b));
    let out = g.ctl(&["revoke", "revoked", "1", "--reason", "done with it"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(!p.ok(&to_a), "revoked at once");
    assert!(p.ok(&to_b), "the other grant stays");
    let out = g.ctl(&["revoke", "revoked", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no live grant 1"));
    let recs = g.logs_until(1, |r| r["action"] == "revoke");
    let rv = recs.iter().find(|r| r["action"] == "revoke").unwrap();
    assert_eq!(rv["rule"], "grant:1");
    assert_eq!(rv["detail"]["revoked_by"]["uid"], 0);
    assert_eq!(rv["detail"]["revoke_reason"], "done with it");

    // The agent ends: so does the grant it still had, journaled.
    p.finish();
    assert!(grants_json(&g).is_empty());
    let recs = g.logs_until(1, |r| r["action"] == "grant-ended");
    let ended = recs.iter().find(|r| r["action"] == "grant-ended").unwrap();
    assert_eq!(ended["rule"], "grant:2");
    // A new agent of the same name starts with nothing granted.
    let mut again = Probe::start(&g, "revoked", &[]);
    assert!(!again.ok(&to_b));
    again.finish();
}

#[test]
fn a_request_is_approved_by_its_number() {
    let g = Guardd::start();
    let a = Listener::tcp("127.0.0.1");
    let mut p = Probe::start(&g, "asker", &[]);
    let to_a = format!("tcp 127.0.0.1 {}", a.port);
    assert!(!p.ok(&to_a));
    let target = format!("127.0.0.1:{}/tcp", a.port);
    let seq = request_number(&g, "network", &target);
    let out = grant(&g, &["--request", &seq, "--reason", "approved"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(p.ok(&to_a));
    let listed = grants_json(&g);
    assert_eq!(listed[0]["request"].as_u64().unwrap().to_string(), seq);
    // A record that is not a refused destination is no request to grant.
    let start = g
        .logs(&["--agent", "asker"])
        .into_iter()
        .find(|r| r["action"] == "start")
        .unwrap();
    let out = grant(
        &g,
        &[
            "--request",
            &start["seq"].as_u64().unwrap().to_string(),
            "--reason",
            "x",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let out = grant(&g, &["--request", "999999", "--reason", "x"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));

    // The agent asks on purpose, through its request channel: the request
    // grants nothing until an operator approves it by its number.
    let b = Listener::tcp("127.0.0.1");
    let to_b = format!("tcp 127.0.0.1 {}", b.port);
    let want = format!("127.0.0.1:{}/tcp", b.port);
    let reply = p.ask(&format!("ask {want} need the second service"));
    assert_eq!(reply["reply"]["ok"], true, "{reply}");
    assert!(!p.ok(&to_b), "a request grants nothing by itself");
    let n = request_number(&g, "escalation", &want);
    let out = grant(&g, &["--request", &n, "--reason", "ok, for the ticket"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(p.ok(&to_b));
    // An agent's words cannot turn an approval by number into a wide grant.
    for wide in [
        "127.0.0.0/8:1-65535/tcp",
        "127.0.0.3",
        "0.0.0.0/0:443",
        "127.0.0.1:1-65535/tcp",
    ] {
        assert_eq!(
            p.ask(&format!("ask {wide} everything please"))["reply"]["ok"],
            true
        );
        let n = request_number(&g, "escalation", wide);
        let out = grant(&g, &["--request", &n, "--reason", "sure"]);
        assert_eq!(out.status.code(), Some(2), "{wide}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("wider than one address"),
            "{}",
            describe(&out)
        );
    }
    // Nor into name resolution past guardd: port 53 or DNS over TLS, even
    // as one address and port.
    for (line, target) in [
        ("udp 127.0.0.1 53", "127.0.0.1:53/udp"),
        ("tcp 127.0.0.1 853", "127.0.0.1:853/tcp"),
    ] {
        assert!(!p.ok(line));
        let n = request_number(&g, "network", target);
        let out = grant(&g, &["--request", &n, "--reason", "sure"]);
        assert_eq!(out.status.code(), Some(2), "{target}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("name resolution"),
            "{}",
            describe(&out)
        );
    }
    assert_eq!(grants_json(&g).len(), 2);
    p.finish();
}

#[test]
fn only_an_operator_outside_every_scope_grants() {
    // A group that may read every record: still no grant.
    let g = Guardd::start_with(&["--group", "nogroup", "--group-reads-all"]);
    let a = Listener::tcp("127.0.0.1");
    let mut p = Probe::start(&g, "target", &[]);
    let to_a = format!("tcp 127.0.0.1 {}", a.port);
    let dest = format!("127.0.0.1:{}", a.port);

    // Another uid, outside every scope: refused and journaled.
    let out = g
        .ctl_cmd()
        .args(["grant", "target", "--allow", &dest, "--reason", "me"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only root on the host"),
        "{}",
        describe(&out)
    );
    let recs = g.logs_until(1, |r| r["rule"] == "control.grant-not-operator");
    assert!(
        recs.iter()
            .any(|r| r["rule"] == "control.grant-not-operator"
                && r["detail"]["requested_by"]["uid"] == 65534)
    );
    // Nor can it read other agents' records through `--request N`: refused
    // before the journal is read, so the answer names nothing of record N.
    assert_eq!(p.ask(&format!("tcp 127.0.0.9 {}", a.port))["ok"], false);
    let target = format!("127.0.0.9:{}/tcp", a.port);
    let n = request_number(&g, "network", &target);
    // (A record that is no refused destination was described to anyone.)
    let start = g
        .logs(&["--agent", "target"])
        .into_iter()
        .find(|r| r["action"] == "start")
        .unwrap()["seq"]
        .as_u64()
        .unwrap()
        .to_string();
    for args in [
        vec!["grant", "--request", n.as_str(), "--reason", "peek"],
        vec!["grant", "--request", start.as_str(), "--reason", "peek"],
        vec!["revoke", "target", "1"],
    ] {
        let out = g
            .ctl_cmd()
            .args(&args)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {}", describe(&out));
        assert!(err.contains("only root on the host"), "{args:?}: {err}");
        assert!(
            !err.contains("127.0.0.9") && !err.contains("lifecycle"),
            "{args:?} leaked the record: {err}"
        );
    }

    // From inside a scope, even one whose policy names guardd's socket:
    // refused before the request is read.
    let attacker = g.write_policy(
        "attacker",
        &format!(
            "[policy]\nname = \"attacker\"\ninclude = [\"base\", \"python\"]\n[network]\nallow = [{{ unix = {:?} }}]\n\
             [filesystem]\nread = [\"/usr\"]\n",
            g.socket.display().to_string()
        ),
    );
    let req = format!(
        r#"{{"v":1,"id":1,"op":"grant","agent":"target","allow":"{dest}","reason":"let me"}}"#
    );
    let script = client_script(&g.socket, &[&req]);
    let out = g.run(&attacker, &[], &[PYTHON, "-c", &script]);
    let res = last_json(&out);
    assert_eq!(res["connected"], true, "{res}\n{}", describe(&out));
    assert!(
        res["replies"][0]
            .as_str()
            .is_some_and(|r| r.contains("permission_denied")),
        "{res}"
    );
    assert!(grants_json(&g).is_empty());
    assert!(!p.ok(&to_a), "nothing was granted");
    p.finish();
}

#[test]
fn a_grant_that_cannot_sit_beside_the_others_is_refused_alone() {
    let g = Guardd::start();
    let a = Listener::tcp("127.0.0.1");
    let mut p = Probe::start(&g, "crowded", &[]);
    let to_a = format!("tcp 127.0.0.1 {}", a.port);
    // 20 separate ports, then 20 more on the same address: 40 port ranges
    // on one address is more than a map value holds.
    let ports =
        |base: u16| -> Vec<String> { (0..20u16).map(|k| (base + 4 * k).to_string()).collect() };
    let mut first = ports(50001);
    first.pop();
    first.push(a.port.to_string());
    let first = format!("127.0.0.1:{}/tcp", first.join(","));
    let second = format!("127.0.0.1:{}/tcp", ports(51001).join(","));
    let out = grant(&g, &["crowded", "--allow", &first, "--reason", "many"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(p.ok(&to_a));
    let out = grant(&g, &["crowded", "--allow", &second, "--reason", "more"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be added beside"),
        "{}",
        describe(&out)
    );
    // The first grant stays, in the list and in the kernel.
    assert!(p.ok(&to_a), "the refused grant took the first one with it");
    let listed = grants_json(&g);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["grant"], 1);
    p.finish();
}

#[test]
fn bad_grants_get_precise_errors_and_files_point_to_the_next_start() {
    let g = Guardd::start();
    let p = Probe::start(&g, "picky", &[]);
    let cases: &[(&[&str], &str)] = &[
        (
            &["picky", "--allow", "read:/etc/passwd", "--reason", "x"],
            "guardctl run --grant",
        ),
        (
            &[
                "picky",
                "--allow",
                "api.example.com:443/tcp",
                "--reason",
                "x",
            ],
            "guardctl run --grant net:api.example.com:443/tcp",
        ),
        (
            &["picky", "--allow", "127.0.0.1:99999", "--reason", "x"],
            "99999",
        ),
        (
            &["picky", "--allow", "127.0.0.1:443/sctp", "--reason", "x"],
            "unknown protocol",
        ),
        (
            &["picky", "--allow", "127.0.0.1:443", "--reason", " "],
            "needs a reason",
        ),
        (
            &[
                "picky",
                "--allow",
                "127.0.0.1:443",
                "--for",
                "30d",
                "--reason",
                "x",
            ],
            "at most 7 days",
        ),
        (
            &["nobody-here", "--allow", "127.0.0.1:443", "--reason", "x"],
            "no live agent",
        ),
    ];
    for (args, want) in cases {
        let out = grant(&g, args);
        assert!(!out.status.success(), "{args:?}: {}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(want),
            "{args:?}: want {want:?} in {}",
            describe(&out)
        );
    }
    assert!(grants_json(&g).is_empty());
    assert!(g.ctl(&["grant", "picky", "--reason", "x"]).status.code() == Some(2));
    p.finish();
}

#[test]
fn run_grant_adds_to_the_policy_at_start() {
    let g = Guardd::start();
    let a = Listener::tcp("127.0.0.1");
    let secret = g.dir.path().join("granted.txt");
    std::fs::write(&secret, "granted file\n").unwrap();
    let policy = g.write_policy(
        "start",
        "[policy]\nname = \"start\"\ninclude = [\"base\", \"python\"]\n[filesystem]\nread = [\"/usr\"]\n",
    );
    let script = format!(
        r#"
import json, socket
res = {{}}
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close(); res["net"] = True
except OSError: res["net"] = False
try:
    open({path:?}).read(); res["file"] = True
except OSError: res["file"] = False
print(json.dumps(res))
"#,
        port = a.port,
        path = secret.display().to_string()
    );
    let out = g.run(&policy, &[], &[PYTHON, "-c", &script]);
    let res = last_json(&out);
    assert_eq!(res, serde_json::json!({"net": false, "file": false}));
    let net = format!("net:127.0.0.1:{}/tcp", a.port);
    let read = format!("read:{}", secret.display());
    let out = g.run(
        &policy,
        &["--grant", &net, "--grant", &read],
        &[PYTHON, "-c", &script],
    );
    let res = last_json(&out);
    assert_eq!(
        res,
        serde_json::json!({"net": true, "file": true}),
        "{}",
        describe(&out)
    );
    let start = g.start_record(&Guardd::agent_id(&out));
    assert_eq!(start["detail"]["grants"], serde_json::json!([net, read]));
    // A bad item is refused before anything starts.
    let out = g.run(&policy, &["--grant", "mount:/x"], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown grant kind"));
    // A file grant under a policy that does not restrict files changes
    // nothing, and says so.
    let open = g.write_policy("open", "[policy]\nname = \"open\"\n");
    let out = g.run(&open, &["--grant", &read], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not restrict files"));
}

#[test]
fn a_grant_survives_a_guardd_restart_and_still_ends_on_time() {
    let mut g = Guardd::start();
    let a = Listener::tcp("127.0.0.1");
    let mut p = Probe::start(&g, "durable", &[]);
    let to_a = format!("tcp 127.0.0.1 {}", a.port);
    let out = grant(
        &g,
        &[
            "durable",
            "--allow",
            &format!("127.0.0.1:{}/tcp", a.port),
            "--for",
            "4s",
            "--reason",
            "x",
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let t0 = Instant::now();
    g.restart();
    assert!(p.ok(&to_a), "kept across the restart");
    assert_eq!(grants_json(&g).len(), 1);
    while t0.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.ok(&to_a) {
        assert!(Instant::now() < deadline, "the grant outlived its time");
        std::thread::sleep(Duration::from_millis(200));
    }
    g.logs_until(1, |r| r["action"] == "grant-expired");
    p.finish();
}
