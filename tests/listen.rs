//! Inbound, end to end: nothing binds, listens or accepts unless a `listen`
//! rule says so. Real guardd, real kernel, real python3 servers, clients
//! from the host.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Child, Output},
    time::Duration,
};

use common::*;
use serde_json::Value;

fn policy(g: &Guardd, name: &str, network: &str) -> PathBuf {
    g.write_policy(
        name,
        &format!("[policy]\nname = \"{name}\"\n\n[network]\n{network}\n"),
    )
}

fn probe(ops: &[String]) -> Vec<String> {
    let mut v = vec![PYTHON.to_owned(), agent_script("listenprobe.py")];
    v.extend(ops.iter().cloned());
    v
}

fn run_probe(g: &Guardd, p: &std::path::Path, extra: &[&str], ops: &[String]) -> Output {
    let cmd = probe(ops);
    g.run(
        p,
        extra,
        &cmd.iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

/// Network records (any verdict but allowed) of an agent.
fn refusals(g: &Guardd, id: &str) -> Vec<Value> {
    g.logs(&["--agent", id, "--kind", "network"])
        .into_iter()
        .filter(|r| r["verdict"] != "allowed")
        .collect()
}

/// A server agent that prints `{"ready": port}` before it waits for a
/// client. Dropping it before `finish` kills the launcher (by pid), which
/// takes the agent with it.
struct Server {
    child: Option<Child>,
    lines: BufReader<std::process::ChildStdout>,
    stdout: Vec<u8>,
}

impl Server {
    fn start(g: &Guardd, p: &std::path::Path, extra: &[&str], ops: &[String]) -> (Server, u16) {
        let cmd = probe(ops);
        let mut child = g.spawn_run(
            p,
            extra,
            &cmd.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let lines = BufReader::new(child.stdout.take().unwrap());
        let mut server = Server {
            child: Some(child),
            lines,
            stdout: Vec::new(),
        };
        let port = server.next_ready();
        (server, port)
    }

    /// Waits for the next `{"ready": port}` line.
    fn next_ready(&mut self) -> u16 {
        let server = self;
        loop {
            let mut line = String::new();
            let n = server.lines.read_line(&mut line).unwrap();
            assert!(
                n > 0,
                "the agent ended before it was ready:\n{}",
                String::from_utf8_lossy(&server.stdout)
            );
            server.stdout.extend_from_slice(line.as_bytes());
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && let Some(p) = v["ready"].as_u64()
            {
                return u16::try_from(p).unwrap();
            }
        }
    }

    fn finish(mut self) -> Output {
        let mut rest = Vec::new();
        self.lines.read_to_end(&mut rest).unwrap();
        self.stdout.extend_from_slice(&rest);
        let mut child = self.child.take().unwrap();
        let mut stderr = Vec::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_end(&mut stderr)
            .unwrap();
        let status = child.wait().unwrap();
        Output {
            status,
            stdout: std::mem::take(&mut self.stdout),
            stderr,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Connects from the host, sends `msg` and returns the echo; `None` when
/// the connection or the echo does not come within `timeout`.
fn echo(addr: &str, msg: &str, timeout: Duration) -> Option<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(msg.as_bytes()).ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn result<'a>(res: &'a [Value], op: &str) -> &'a Value {
    res.iter()
        .find(|r| r["op"] == op)
        .unwrap_or_else(|| panic!("no result for {op} in {res:?}"))
}

#[test]
fn nothing_listens_by_default_on_any_route() {
    // One record per route: identical refusals (the same bind target by
    // several routes) are not folded here.
    let g = Guardd::start_with(&["--coalesce-interval", "0"]);
    let p = policy(&g, "quiet", "allow = [ { cidr = \"10.0.0.0/8\" } ]");
    let port = closed_port();
    let ops = [
        format!("tcp:127.0.0.1:{port}"),
        format!("tcp:0.0.0.0:{port}"),
        format!("tcp:[::1]:{port}"),
        format!("tcp:[::]:{port}"),
        format!("tcp:[::ffff:127.0.0.1]:{port}"),
        format!("tcp6only:[::]:{port}"),
        format!("reuse:127.0.0.1:{port}"),
        "tcp:127.0.0.1:0".to_owned(),
        format!("udp:127.0.0.1:{port}"),
        format!("udp:[::1]:{port}"),
        format!("udp:[::]:{port}"),
        "autolisten:4".to_owned(),
        "autolisten:6".to_owned(),
    ];
    // An ephemeral port (port 0) is what any client socket gets: binding
    // it is allowed; listening on it is what is refused (seccomp, here).
    let ephemeral = "udp:0.0.0.0:0".to_owned();
    let out = run_probe(
        &g,
        &p,
        &[],
        &[&ops[..], std::slice::from_ref(&ephemeral)].concat(),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let res = probe_results(&out);
    assert_eq!(errno_of(&res, &ephemeral), None, "{res:?}");
    for op in &ops {
        assert_eq!(
            errno_of(&res, op).as_deref(),
            Some("EPERM"),
            "{op} must be refused: {res:?}"
        );
    }
    let recs = refusals(&g, &Guardd::agent_id(&out));
    // Exactly one record per refused operation, in order, with the port.
    let expect: Vec<(String, &str, &str)> = vec![
        (format!("127.0.0.1:{port}/tcp"), "bind", "cgroup-bpf"),
        (format!("0.0.0.0:{port}/tcp"), "bind", "cgroup-bpf"),
        (format!("[::1]:{port}/tcp"), "bind", "cgroup-bpf"),
        (format!("[::]:{port}/tcp"), "bind", "cgroup-bpf"),
        (format!("127.0.0.1:{port}/tcp"), "bind", "cgroup-bpf"),
        (format!("[::]:{port}/tcp"), "bind", "cgroup-bpf"),
        (format!("127.0.0.1:{port}/tcp"), "bind", "cgroup-bpf"),
        (String::new(), "listen", "seccomp"),
        (format!("127.0.0.1:{port}/udp"), "bind", "cgroup-bpf"),
        (format!("[::1]:{port}/udp"), "bind", "cgroup-bpf"),
        (format!("[::]:{port}/udp"), "bind", "cgroup-bpf"),
        (String::new(), "listen", "seccomp"),
        (String::new(), "listen", "seccomp"),
    ];
    assert_eq!(recs.len(), expect.len(), "records: {recs:#?}");
    for (rec, (target, action, layer)) in recs.iter().zip(&expect) {
        if !target.is_empty() {
            assert_eq!(rec["target"], *target, "{rec}");
        }
        assert_eq!(rec["action"], *action, "{rec}");
        assert_eq!(rec["layer"], *layer, "{rec}");
        assert_eq!(rec["verdict"], "denied", "{rec}");
        assert_eq!(rec["rule"], "network.listen-default-deny", "{rec}");
        assert_eq!(rec["kind"], "network", "{rec}");
        assert_eq!(rec["process"]["comm"], "python3", "{rec}");
    }
    for (rec, _) in recs
        .iter()
        .zip(&expect)
        .filter(|(_, (target, _, _))| !target.is_empty())
    {
        let want = rec["target"].as_str().unwrap().rsplit_once(':').unwrap().1;
        let want: u64 = want.split('/').next().unwrap().parse().unwrap();
        assert_eq!(rec["detail"]["port"], want, "{rec}");
    }
    // The mapped address is judged as IPv4 and reported as written.
    assert_eq!(recs[4]["detail"]["requested"], "::ffff:127.0.0.1");
    // Nothing else recorded them a second time (no syscall records).
    let sys = g.logs(&["--agent", &Guardd::agent_id(&out), "--kind", "syscall"]);
    assert!(
        sys.iter()
            .all(|r| r["action"] != "bind" && r["action"] != "listen"),
        "{sys:#?}"
    );
}

#[test]
fn a_listen_rule_opens_its_port_and_nothing_else() {
    let g = Guardd::start();
    let port = closed_port();
    let other = closed_port();
    let p = policy(
        &g,
        "web",
        &format!(
            "listen = [ {{ cidr = \"127.0.0.1/32\", ports = [{port}], protocol = \"tcp\" }} ]"
        ),
    );
    let refused = [
        format!("tcp:127.0.0.1:{other}"),
        format!("udp:127.0.0.1:{port}"),
        format!("tcp:0.0.0.0:{port}"),
        format!("tcp:[::1]:{port}"),
    ];
    // A listener on an ephemeral port binds and listens (the policy has
    // listen rules); the ingress program drops what is sent to it (see
    // listen_without_bind_cannot_accept_even_when_some_port_may_listen).
    let mut ops = refused.to_vec();
    ops.push(format!("serve:127.0.0.1:{port}"));
    let (server, ready) = Server::start(&g, &p, &[], &ops);
    assert_eq!(ready, port);
    assert_eq!(
        echo(&format!("127.0.0.1:{port}"), "ping", Duration::from_secs(5)).as_deref(),
        Some("ping")
    );
    let out = server.finish();
    assert!(out.status.success(), "{}", describe(&out));
    let res = probe_results(&out);
    for op in &refused {
        assert_eq!(
            errno_of(&res, op).as_deref(),
            Some("EPERM"),
            "{op}: {res:?}"
        );
    }
    let served = result(&res, &format!("serve:127.0.0.1:{port}"));
    assert_eq!(served["accepted"], true, "{res:?}");
    assert_eq!(served["echoed"], "ping", "{res:?}");

    let recs = refusals(&g, &Guardd::agent_id(&out));
    let targets: Vec<&str> = recs.iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(
        targets,
        [
            format!("127.0.0.1:{other}/tcp"),
            format!("127.0.0.1:{port}/udp"),
            format!("0.0.0.0:{port}/tcp"),
            format!("[::1]:{port}/tcp"),
        ],
        "{recs:#?}"
    );
    // The address is the rule's: the record names it.
    assert_eq!(recs[1]["detail"]["nearest_rule"], "network.listen[0]");
    assert!(
        recs.iter()
            .all(|r| r["rule"] == "network.listen-default-deny")
    );
}

#[test]
fn listen_without_bind_cannot_accept_even_when_some_port_may_listen() {
    let g = Guardd::start();
    let port = closed_port();
    let p = policy(
        &g,
        "auto",
        &format!("listen = [ {{ cidr = \"127.0.0.1/32\", ports = [{port}] }} ]"),
    );
    for fam in ["4", "6"] {
        let op = format!("autoserve:{fam}:4");
        let (server, ephemeral) = Server::start(&g, &p, &[], std::slice::from_ref(&op));
        assert_ne!(ephemeral, port);
        let addr = if fam == "4" {
            format!("127.0.0.1:{ephemeral}")
        } else {
            format!("[::1]:{ephemeral}")
        };
        // Twice: the second attempt must not add a record either.
        for _ in 0..2 {
            let t = std::time::Instant::now();
            assert_eq!(
                echo(&addr, "x", Duration::from_millis(1500)),
                None,
                "{addr} accepted"
            );
            assert!(t.elapsed() < Duration::from_secs(3));
        }
        let out = server.finish();
        let res = probe_results(&out);
        assert_eq!(result(&res, &op)["accepted"], false, "{res:?}");
        let recs = refusals(&g, &Guardd::agent_id(&out));
        assert_eq!(recs.len(), 1, "{recs:#?}");
        let r = &recs[0];
        let wild = if fam == "4" { "0.0.0.0" } else { "[::]" };
        assert_eq!(r["target"], format!("{wild}:{ephemeral}/tcp"), "{r}");
        assert_eq!(r["action"], "listen");
        assert_eq!(r["layer"], "cgroup-bpf");
        assert_eq!(r["verdict"], "denied");
        assert_eq!(r["rule"], "network.listen-default-deny");
        assert_eq!(r["detail"]["hook"], "cgroup_skb/ingress");
        assert_eq!(r["detail"]["port"], u64::from(ephemeral));
    }
}

#[test]
fn dual_stack_wildcard_needs_both_families_and_port_zero_needs_any_port() {
    let g = Guardd::start();
    let port = closed_port();
    let v6_only = policy(
        &g,
        "six",
        &format!("listen = [ {{ cidr = \"::/0\", ports = [{port}] }} ]"),
    );
    let op = format!("tcp:[::]:{port}");
    let out = run_probe(&g, &v6_only, &[], std::slice::from_ref(&op));
    assert_eq!(
        errno_of(&probe_results(&out), &op).as_deref(),
        Some("EPERM")
    );
    let recs = refusals(&g, &Guardd::agent_id(&out));
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["target"], format!("0.0.0.0:{port}/tcp"));
    assert_eq!(recs[0]["detail"]["requested"], "::");

    let both = policy(
        &g,
        "both",
        &format!(
            "listen = [ {{ cidr = \"::/0\", ports = [{port}] }}, {{ cidr = \"0.0.0.0/32\", ports = [{port}] }},\n\
             {{ cidr = \"127.0.0.1/32\", protocol = \"udp\" }} ]"
        ),
    );
    let ops = ["udp:127.0.0.1:0".to_owned(), format!("serve:[::]:{port}")];
    let (server, _) = Server::start(&g, &both, &[], &ops);
    // An IPv4 client reaches the dual-stack socket.
    assert_eq!(
        echo(&format!("127.0.0.1:{port}"), "v4", Duration::from_secs(5)).as_deref(),
        Some("v4")
    );
    let out = server.finish();
    let res = probe_results(&out);
    assert_eq!(errno_of(&res, &ops[0]), None, "{res:?}");
    assert_eq!(result(&res, &ops[1])["echoed"], "v4", "{res:?}");
    assert!(refusals(&g, &Guardd::agent_id(&out)).is_empty());
}

#[test]
fn audit_mode_allows_and_records() {
    let g = Guardd::start();
    let p = policy(&g, "aud", "allow = []");
    let port = closed_port();
    let op = format!("serve:127.0.0.1:{port}");
    let (server, _) = Server::start(&g, &p, &["--audit"], std::slice::from_ref(&op));
    assert_eq!(
        echo(&format!("127.0.0.1:{port}"), "hi", Duration::from_secs(5)).as_deref(),
        Some("hi")
    );
    let out = server.finish();
    assert_eq!(result(&probe_results(&out), &op)["echoed"], "hi");
    let recs = refusals(&g, &Guardd::agent_id(&out));
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["verdict"], "audit");
    assert_eq!(recs[0]["action"], "bind");
    assert_eq!(recs[0]["target"], format!("127.0.0.1:{port}/tcp"));

    // listen() without bind: allowed, and the first inbound connection is
    // what reveals it.
    let op = "autoserve:4:5".to_owned();
    let (server, ephemeral) = Server::start(&g, &p, &["--audit"], std::slice::from_ref(&op));
    assert_eq!(
        echo(
            &format!("127.0.0.1:{ephemeral}"),
            "audit",
            Duration::from_secs(5)
        )
        .as_deref(),
        Some("audit")
    );
    let out = server.finish();
    assert_eq!(result(&probe_results(&out), &op)["echoed"], "audit");
    let recs = refusals(&g, &Guardd::agent_id(&out));
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["verdict"], "audit");
    assert_eq!(recs[0]["action"], "listen");
    assert_eq!(recs[0]["target"], format!("0.0.0.0:{ephemeral}/tcp"));
}

#[test]
fn udp_and_tcp_clients_still_get_their_replies() {
    let g = Guardd::start();
    // A DNS-like UDP server on the host: answers every request.
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let uport = server.local_addr().unwrap().port();
    let answer = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        if let Ok((_, from)) = server.recv_from(&mut buf) {
            let _ = server.send_to(b"answer", from);
        }
    });
    let web = Listener::tcp("127.0.0.1");
    let p = policy(
        &g,
        "client",
        &format!(
            "allow = [ {{ cidr = \"127.0.0.1/32\", ports = [{uport}], protocol = \"udp\" }},\n\
             {{ cidr = \"127.0.0.1/32\", ports = [{}], protocol = \"tcp\" }} ]",
            web.port
        ),
    );
    let op = format!("udpclient:127.0.0.1:{uport}");
    let out = run_probe(&g, &p, &[], std::slice::from_ref(&op));
    answer.join().unwrap();
    let res = probe_results(&out);
    assert_eq!(result(&res, &op)["reply"], "answer", "{res:?}");
    let out = g.run(
        &p,
        &[],
        &[
            PYTHON,
            &agent_script("netprobe.py"),
            &format!("tcp:127.0.0.1:{}", web.port),
        ],
    );
    assert_eq!(
        errno_of(&probe_results(&out), &format!("tcp:127.0.0.1:{}", web.port)),
        None
    );
    assert!(refusals(&g, &Guardd::agent_id(&out)).is_empty());
}

#[test]
fn policy_check_and_doctor_show_the_inbound_layer() {
    let g = Guardd::start();
    let p = policy(
        &g,
        "shown",
        "listen = [ { cidr = \"127.0.0.1/32\", ports = [8000], protocol = \"tcp\" } ]",
    );
    let out = g.ctl(&["policy", "check", p.to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("network.listen[0]") && l.contains("127.0.0.1/32 tcp 8000")),
        "{text}"
    );
    let none = policy(&g, "none", "allow = []");
    let out = g.ctl(&["policy", "check", none.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("no listen rules"),
        "{}",
        describe(&out)
    );
    // A listen rule is checked like an allow rule, with file:line:col.
    let bad = policy(&g, "bad", "listen = [ { cidr = \"127.0.0.1\", port = 1 } ]");
    let out = g.ctl(&["policy", "check", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:5:34: unknown key `port` in a [network] listen rule"),
        "{err}"
    );

    let out = g.ctl(&["doctor", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let inbound = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["layer"] == "cgroup-bpf inbound")
        .cloned()
        .unwrap_or_else(|| panic!("{v:#}"));
    assert_eq!(inbound["status"], "enforced");
}

#[test]
fn inbound_stays_closed_while_guardd_is_down() {
    let mut g = Guardd::start();
    let port = closed_port();
    let other = closed_port();
    let p = policy(
        &g,
        "survivor",
        &format!(
            "listen = [ {{ cidr = \"127.0.0.1/32\", ports = [{port}], protocol = \"tcp\" }} ]"
        ),
    );
    let ops = [
        format!("serve:127.0.0.1:{port}"),
        format!("tcp:127.0.0.1:{other}"),
        "autoserve:4:3".to_owned(),
    ];
    let (mut server, _) = Server::start(&g, &p, &[], &ops);
    g.crash();
    // Everything below is decided by the pinned programs alone.
    assert_eq!(
        echo(
            &format!("127.0.0.1:{port}"),
            "still",
            Duration::from_secs(5)
        )
        .as_deref(),
        Some("still")
    );
    let ephemeral = server.next_ready();
    assert_eq!(
        echo(
            &format!("127.0.0.1:{ephemeral}"),
            "x",
            Duration::from_millis(1500)
        ),
        None
    );
    let out = server.finish();
    let res = probe_results(&out);
    assert_eq!(result(&res, &ops[0])["echoed"], "still", "{res:?}");
    assert_eq!(errno_of(&res, &ops[1]).as_deref(), Some("EPERM"), "{res:?}");
    assert_eq!(result(&res, &ops[2])["accepted"], false, "{res:?}");
    // The restarted guardd finds both refusals in the pinned ring buffer.
    g.restart_after_crash();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let recs: Vec<Value> = g
            .logs(&["--agent", "survivor", "--kind", "network"])
            .into_iter()
            .filter(|r| r["verdict"] == "denied")
            .collect();
        let targets: Vec<&str> = recs.iter().map(|r| r["target"].as_str().unwrap()).collect();
        if targets
            == [
                format!("127.0.0.1:{other}/tcp"),
                format!("0.0.0.0:{ephemeral}/tcp"),
            ]
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{recs:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
