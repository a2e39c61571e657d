//! Network egress, end to end: real guardd, real kernel, real clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;

fn policy_allowing(g: &Guardd, name: &str, rules: &str) -> std::path::PathBuf {
    g.write_policy(
        name,
        &format!("[policy]\nname = \"{name}\"\n\n[network]\nallow = [\n{rules}\n]\n"),
    )
}

fn net_denials(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["kind"] == "network" && r["verdict"] == "denied")
        .collect()
}

#[test]
fn allowed_connect_works_and_every_denied_path_is_eperm_and_journaled_once() {
    // Each path its own record, even the identical ones (no coalescing), so
    // each can be checked.
    let g = Guardd::start_with(&["--coalesce-interval", "0"]);
    let allowed = Listener::tcp("127.0.0.1");
    let denied = Listener::tcp("127.0.0.1");
    let denied6 = Listener::tcp("[::1]");
    let (_udp, udp_port) = udp_sink("127.0.0.1");
    let policy = policy_allowing(
        &g,
        "net",
        &format!(
            "  {{ cidr = \"127.0.0.1/32\", ports = [{}], protocol = \"tcp\" }},",
            allowed.port
        ),
    );
    let d = denied.port;
    let d6 = denied6.port;
    let ops = [
        format!("tcp:127.0.0.1:{}", allowed.port),
        format!("tcp:127.0.0.1:{d}"),
        format!("tcp:[::1]:{d6}"),
        format!("tcp6:[::ffff:127.0.0.1]:{d}"),
        format!("tfo:127.0.0.1:{d}"),
        format!("udp:127.0.0.1:{udp_port}"),
        format!("udpc:127.0.0.1:{udp_port}"),
    ];
    let mut cmd = vec![PYTHON.to_owned(), agent_script("netprobe.py")];
    cmd.extend(ops.iter().cloned());
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let out = g.run(&policy, &[], &cmd);
    assert!(out.status.success(), "{}", describe(&out));
    let res = probe_results(&out);
    assert_eq!(
        errno_of(&res, &ops[0]),
        None,
        "allowed connect must work: {res:?}"
    );
    for op in &ops[1..] {
        assert_eq!(
            errno_of(&res, op).as_deref(),
            Some("EPERM"),
            "{op}: {res:?}"
        );
    }
    assert_eq!(
        denied.accepted.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(
        denied6.accepted.load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    let id = Guardd::agent_id(&out);
    let recs = g.logs(&["--agent", &id]);
    let denials = net_denials(&recs);
    // Exactly one record per denied operation.
    let expect = [
        (format!("127.0.0.1:{d}/tcp"), "connect"),
        (format!("[::1]:{d6}/tcp"), "connect"),
        (format!("127.0.0.1:{d}/tcp"), "connect"), // mapped: judged as IPv4
        (format!("127.0.0.1:{d}/tcp"), "connect"), // fast open goes through connect
        (format!("127.0.0.1:{udp_port}/udp"), "sendmsg"),
        (format!("127.0.0.1:{udp_port}/udp"), "connect"),
    ];
    assert_eq!(denials.len(), expect.len(), "records: {denials:#?}");
    for (rec, (target, action)) in denials.iter().zip(expect.iter()) {
        assert_eq!(rec["target"], *target, "{rec}");
        assert_eq!(rec["action"], *action, "{rec}");
        assert_eq!(rec["rule"], "network.default-deny", "{rec}");
        assert_eq!(rec["layer"], "cgroup-bpf", "{rec}");
        assert_eq!(rec["agent"]["name"], "net");
        assert_eq!(rec["agent"]["policy"], "net");
        assert!(rec["process"]["pid"].as_u64().unwrap() > 0);
        assert_eq!(rec["process"]["comm"], "python3");
        assert!(
            rec["process"]["exe"].as_str().unwrap().contains("python"),
            "{rec}"
        );
        assert!(rec["seq"].as_u64().unwrap() > 0 && !rec["hash"].as_str().unwrap().is_empty());
    }
    // The mapped address is reported as what the caller wrote, too.
    assert_eq!(denials[2]["detail"]["requested"], "::ffff:127.0.0.1");
    // The summary counts them.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("6 denied"), "{err}");
}

#[test]
fn port_outside_an_allowed_cidr_names_the_nearest_rule() {
    let g = Guardd::start();
    let l = Listener::tcp("127.0.0.1");
    let p = g.write_policy(
        "near",
        "[policy]\nname = \"near\"\n[network]\nallow = [ { cidr = \"127.0.0.0/8\", ports = [1], protocol = \"udp\" } ]\n",
    );
    let out = g.run(
        &p,
        &[],
        &[
            PYTHON,
            &agent_script("netprobe.py"),
            &format!("tcp:127.0.0.1:{}", l.port),
        ],
    );
    assert_eq!(
        errno_of(&probe_results(&out), &format!("tcp:127.0.0.1:{}", l.port)).as_deref(),
        Some("EPERM")
    );
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out), "--kind", "network"]);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["detail"]["nearest_rule"], "network.allow[0]");
}

#[test]
fn unspecified_addresses_are_judged_as_loopback() {
    let g = Guardd::start();
    let l = Listener::tcp("127.0.0.1");
    let l6 = Listener::tcp("[::1]");
    let allow = policy_allowing(
        &g,
        "lo",
        &format!(
            "  {{ cidr = \"127.0.0.1\", ports = [{}] }},\n  {{ cidr = \"::1\", ports = [{}] }},",
            l.port, l6.port
        ),
    );
    let deny = policy_allowing(&g, "nolo", "  { cidr = \"10.0.0.0/8\" },");
    let ops = [
        format!("tcp:0.0.0.0:{}", l.port),
        format!("tcp:[::]:{}", l6.port),
    ];
    let args = |ops: &[String]| {
        let mut v = vec![PYTHON.to_owned(), agent_script("netprobe.py")];
        v.extend(ops.iter().cloned());
        v
    };
    let a = args(&ops);
    let out = g.run(
        &allow,
        &[],
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let res = probe_results(&out);
    assert_eq!(errno_of(&res, &ops[0]), None, "{res:?}");
    assert_eq!(errno_of(&res, &ops[1]), None, "{res:?}");
    let out = g.run(
        &deny,
        &[],
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let res = probe_results(&out);
    assert_eq!(errno_of(&res, &ops[0]).as_deref(), Some("EPERM"));
    assert_eq!(errno_of(&res, &ops[1]).as_deref(), Some("EPERM"));
    let recs = net_denials(&g.logs(&["--agent", &Guardd::agent_id(&out)]))
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0]["target"], format!("127.0.0.1:{}/tcp", l.port));
    assert_eq!(recs[0]["detail"]["requested"], "0.0.0.0");
    assert_eq!(recs[1]["target"], format!("[::1]:{}/tcp", l6.port));
    assert_eq!(recs[1]["detail"]["requested"], "::");
}

#[test]
fn loopback_is_denied_unless_allowed_and_real_clients_see_it() {
    let g = Guardd::start();
    let web = Listener::tcp("127.0.0.1");
    let url = format!("http://127.0.0.1:{}/", web.port);
    let none = policy_allowing(&g, "none", "");
    let out = g.run(&none, &[], &["curl", "-sS", "--max-time", "5", &url]);
    // curl: "Couldn't connect to server".
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    // curl's resolver may also try nscd's socket: only the web port counts.
    let target = format!(":{}/", web.port);
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out), "--target", &target]);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["verdict"], "denied");
    assert_eq!(recs[0]["process"]["comm"], "curl");
    assert_eq!(recs[0]["target"], format!("127.0.0.1:{}/tcp", web.port));

    let allow = policy_allowing(
        &g,
        "web",
        &format!(
            "  {{ cidr = \"127.0.0.1/32\", ports = [{}], protocol = \"tcp\" }},",
            web.port
        ),
    );
    let out = g.run(&allow, &[], &["curl", "-sS", "--max-time", "5", &url]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
}

#[test]
fn sockets_that_bypass_the_address_hooks_are_refused() {
    let g = Guardd::start();
    let _ping = PingSockets::open();
    let p = policy_allowing(&g, "raw", "  { cidr = \"0.0.0.0/0\" },");
    let out = g.run(
        &p,
        &[],
        &[
            PYTHON,
            &agent_script("netprobe.py"),
            "raw",
            "ping",
            "packet",
        ],
    );
    let res = probe_results(&out);
    // Without CAP_NET_RAW the kernel refuses raw and packet sockets before
    // any hook; the ICMP "ping" socket needs no capability and is refused by
    // guard's sock_create program; AF_PACKET is also refused by seccomp.
    assert_eq!(errno_of(&res, "raw").as_deref(), Some("EPERM"), "{res:?}");
    assert_eq!(errno_of(&res, "ping").as_deref(), Some("EPERM"), "{res:?}");
    assert_eq!(
        errno_of(&res, "packet").as_deref(),
        Some("EAFNOSUPPORT"),
        "{res:?}"
    );
    // Each refusal is journaled once, by the layer that made it.
    let id = Guardd::agent_id(&out);
    let recs = g.logs(&["--agent", &id, "--kind", "network"]);
    assert_eq!(recs.len(), 2, "{recs:#?}");
    assert_eq!(recs[0]["action"], "socket");
    assert_eq!(recs[0]["layer"], "capabilities", "{recs:#?}");
    assert_eq!(recs[0]["rule"], "process.capabilities");
    assert_eq!(recs[1]["target"], "inet icmp");
    assert_eq!(recs[1]["layer"], "cgroup-bpf");
    assert_eq!(recs[1]["rule"], "network.socket-types");
    let sys = g.logs(&["--agent", &id, "--kind", "syscall"]);
    let packet: Vec<_> = sys.iter().filter(|r| r["action"] == "socket").collect();
    assert_eq!(packet.len(), 1, "{sys:#?}");
    assert_eq!(packet[0]["layer"], "seccomp");
    assert_eq!(packet[0]["rule"], "syscalls.socket-families");
    assert_eq!(packet[0]["detail"]["family"], 17);

    // With CAP_NET_RAW kept, the raw socket reaches the hook, which refuses
    // it on its own; AF_PACKET still meets seccomp.
    let p = g.write_policy(
        "rawcap",
        "[policy]\nname = \"rawcap\"\n[network]\nallow = [ { cidr = \"0.0.0.0/0\" } ]\n[process]\ncapabilities = [\"CAP_NET_RAW\"]\n",
    );
    let out = g.run(
        &p,
        &[],
        &[PYTHON, &agent_script("netprobe.py"), "raw", "packet"],
    );
    let res = probe_results(&out);
    assert_eq!(errno_of(&res, "raw").as_deref(), Some("EPERM"), "{res:?}");
    assert_eq!(
        errno_of(&res, "packet").as_deref(),
        Some("EAFNOSUPPORT"),
        "{res:?}"
    );
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out), "--kind", "network"]);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["target"], "inet raw");
}

#[test]
fn outside_the_scope_nothing_changes() {
    let g = Guardd::start();
    let l = Listener::tcp("127.0.0.1");
    let p = policy_allowing(&g, "sleeper", "");
    // An agent is live while the test process itself connects.
    let mut child = g.spawn_run(&p, &[], &["sleep", "2"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let s = std::net::TcpStream::connect(("127.0.0.1", l.port));
    assert!(
        s.is_ok(),
        "a process outside every scope must be unaffected: {s:?}"
    );
    let status = child.wait().unwrap();
    assert!(status.success());
}

#[test]
fn audit_mode_allows_and_records() {
    let g = Guardd::start();
    let _ping = PingSockets::open();
    let l = Listener::tcp("127.0.0.1");
    let p = policy_allowing(&g, "aud", "");
    let op = format!("tcp:127.0.0.1:{}", l.port);
    for extra in [vec!["--audit"], vec![]] {
        let audit = !extra.is_empty();
        let p2 = if audit {
            p.clone()
        } else {
            g.write_policy(
                "aud2",
                "[policy]\nname = \"aud2\"\nmode = \"audit\"\n[network]\nallow = []\n",
            )
        };
        let out = g.run(
            &p2,
            &extra,
            &[PYTHON, &agent_script("netprobe.py"), &op, "ping"],
        );
        let res = probe_results(&out);
        assert_eq!(errno_of(&res, &op), None, "audit must allow: {res:?}");
        assert_eq!(errno_of(&res, "ping"), None, "audit must allow: {res:?}");
        let recs = g.logs(&["--agent", &Guardd::agent_id(&out), "--kind", "network"]);
        assert_eq!(recs.len(), 2, "{recs:#?}");
        assert!(recs.iter().all(|r| r["verdict"] == "audit"));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("2 would have been denied (audit mode)")
        );
    }
}

#[test]
fn two_agents_do_not_see_each_others_rules() {
    let g = Guardd::start();
    let a = Listener::tcp("127.0.0.1");
    let b = Listener::tcp("127.0.0.1");
    let pa = policy_allowing(
        &g,
        "agent-a",
        &format!("  {{ cidr = \"127.0.0.1/32\", ports = [{}] }},", a.port),
    );
    let pb = policy_allowing(
        &g,
        "agent-b",
        &format!("  {{ cidr = \"127.0.0.1/32\", ports = [{}] }},", b.port),
    );
    let (oa, ob) = (
        format!("tcp:127.0.0.1:{}", a.port),
        format!("tcp:127.0.0.1:{}", b.port),
    );
    // Both live at the same time: each sleeps before probing, so their
    // scopes overlap.
    let script = format!(
        "import time, subprocess, sys; time.sleep(0.5); sys.exit(subprocess.call(['/usr/bin/python3', '{}', '{oa}', '{ob}']))",
        agent_script("netprobe.py")
    );
    let ca = g.spawn_run(&pa, &[], &[PYTHON, "-c", &script]);
    let cb = g.spawn_run(&pb, &[], &[PYTHON, "-c", &script]);
    let ra = ca.wait_with_output().unwrap();
    let rb = cb.wait_with_output().unwrap();
    let (xa, xb) = (probe_results(&ra), probe_results(&rb));
    assert_eq!(errno_of(&xa, &oa), None, "{xa:?}");
    assert_eq!(errno_of(&xa, &ob).as_deref(), Some("EPERM"), "{xa:?}");
    assert_eq!(errno_of(&xb, &oa).as_deref(), Some("EPERM"), "{xb:?}");
    assert_eq!(errno_of(&xb, &ob), None, "{xb:?}");
    let la = g.logs(&["--agent", "agent-a", "--kind", "network"]);
    let lb = g.logs(&["--agent", "agent-b", "--kind", "network"]);
    assert_eq!(la.len(), 1);
    assert_eq!(lb.len(), 1);
    assert_eq!(la[0]["target"], format!("127.0.0.1:{}/tcp", b.port));
    assert_eq!(lb[0]["target"], format!("127.0.0.1:{}/tcp", a.port));
}

#[test]
fn ten_thousand_denials_then_a_marker_are_all_accounted_for() {
    let g = Guardd::start();
    let flood = closed_port();
    let marker = Listener::tcp("127.0.0.1");
    let p = policy_allowing(&g, "flood", "");
    let out = g.run(
        &p,
        &[],
        &[
            PYTHON,
            &agent_script("netprobe.py"),
            &format!("loop:10000:127.0.0.1:{flood}"),
            &format!("tcp:127.0.0.1:{}", marker.port),
        ],
    );
    let res = probe_results(&out);
    assert_eq!(res[0]["failed"], 10000, "{res:?}");
    assert_eq!(res[0]["codes"]["EPERM"], 10000, "{res:?}");
    let id = Guardd::agent_id(&out);
    let recs = g.logs(&["--agent", &id]);
    // Identical refusals are coalesced: a record stands for itself and
    // `detail.repeated` more.
    let flood_recs: u64 = recs
        .iter()
        .filter(|r| r["kind"] == "network" && r["target"] == format!("127.0.0.1:{flood}/tcp"))
        .map(|r| 1 + r["detail"]["repeated"].as_u64().unwrap_or(0))
        .sum();
    let lost: u64 = recs
        .iter()
        .filter(|r| r["kind"] == "gap" && r["action"] == "lost")
        .map(|r| r["detail"]["lost"].as_u64().unwrap())
        .sum();
    assert_eq!(
        flood_recs + lost,
        10000,
        "records {flood_recs}, lost {lost}"
    );
    let marker_seen = recs
        .iter()
        .any(|r| r["target"] == format!("127.0.0.1:{}/tcp", marker.port));
    assert!(
        marker_seen || lost > 0,
        "the marker must be journaled or covered by a gap record"
    );
    let exit = recs.iter().find(|r| r["action"] == "exit").unwrap();
    assert_eq!(exit["detail"]["denied"], 10001);
}

#[test]
fn unix_sockets_are_denied_unless_named() {
    let g = Guardd::start();
    let dir = g.dir.path();
    let ok_path = dir.join("ok.sock");
    let no_path = dir.join("no.sock");
    let _ok = std::os::unix::net::UnixListener::bind(&ok_path).unwrap();
    let _no = std::os::unix::net::UnixListener::bind(&no_path).unwrap();
    let abs_name = format!("guard-test-{}", std::process::id());
    let _abs = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abs_name.as_bytes()).unwrap();
        std::os::unix::net::UnixListener::bind_addr(&addr).unwrap()
    };
    // A Unix rule needs restricted files (so the agent cannot redirect the
    // path); the socket's directory is not writable by the agent.
    let p = g.write_policy(
        "unix",
        &format!(
            "[policy]\nname = \"unix\"\ninclude = [\"base\", \"python\"]\n[network]\nallow = [{{ unix = {:?} }}]\n\
             [filesystem]\nread = [{:?}]\n",
            ok_path.display().to_string(),
            repo().join("tests/agents").display().to_string()
        ),
    );
    let ops = [
        format!("unix:{}", ok_path.display()),
        format!("unix:{}", no_path.display()),
        format!("unix:@{abs_name}"),
    ];
    let mut cmd = vec![PYTHON.to_owned(), agent_script("netprobe.py")];
    cmd.extend(ops.iter().cloned());
    let out = g.run(&p, &[], &cmd.iter().map(String::as_str).collect::<Vec<_>>());
    let res = probe_results(&out);
    assert_eq!(errno_of(&res, &ops[0]), None, "{res:?}\n{}", describe(&out));
    assert_eq!(errno_of(&res, &ops[1]).as_deref(), Some("EPERM"), "{res:?}");
    // Abstract sockets outside the agent are refused (the unix hook, and
    // Landlock scoping where the kernel has it).
    assert!(errno_of(&res, &ops[2]).is_some(), "{res:?}");
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out), "--kind", "network"]);
    assert!(
        recs.iter()
            .any(|r| r["target"] == no_path.display().to_string() && r["action"] == "connect"),
        "{recs:#?}"
    );
}

#[test]
fn enforcement_outlives_the_daemon() {
    let mut g = Guardd::start();
    let l = Listener::tcp("127.0.0.1");
    let p = policy_allowing(&g, "survivor", "");
    // The agent probes after guardd has been killed.
    let script = format!(
        "import time, subprocess, sys; time.sleep(1.5); sys.exit(subprocess.call(['/usr/bin/python3', '{}', 'tcp:127.0.0.1:{}']))",
        agent_script("netprobe.py"),
        l.port
    );
    let child = g.spawn_run(&p, &[], &[PYTHON, "-c", &script]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    g.crash();
    let out = child.wait_with_output().unwrap();
    let res = probe_results(&out);
    assert_eq!(
        errno_of(&res, &format!("tcp:127.0.0.1:{}", l.port)).as_deref(),
        Some("EPERM"),
        "with guardd dead the pinned programs must still deny: {res:?}"
    );
    assert_eq!(l.accepted.load(std::sync::atomic::Ordering::Relaxed), 0);
    // A restarted guardd records the gap and finds the denial that happened
    // while it was down (it waited in the pinned ring buffer).
    g.restart_after_crash();
    std::thread::sleep(std::time::Duration::from_millis(800));
    let recs = g.logs(&["--agent", "survivor"]);
    assert!(
        recs.iter()
            .any(|r| r["kind"] == "gap" && r["action"] == "daemon-restart"),
        "{recs:#?}"
    );
    assert!(
        recs.iter()
            .any(|r| r["kind"] == "network" && r["target"] == format!("127.0.0.1:{}/tcp", l.port)),
        "{recs:#?}"
    );
}
