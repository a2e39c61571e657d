//! Issue 8, sections 4 and 6, end to end on the real kernel: packets go
//! where the hooks judged or nowhere, and bases and checks grant what they
//! say.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{net::UdpSocket, path::Path, process::Output, time::Duration};

use common::*;
use serde_json::Value;

fn run_probe(g: &Guardd, p: &Path, ops: &[String]) -> (Output, Vec<Value>) {
    let script = agent_script("routeprobe.py");
    let mut cmd = vec![PYTHON, script.as_str()];
    cmd.extend(ops.iter().map(String::as_str));
    let out = g.run(p, &[], &cmd);
    let res = probe_results(&out);
    (out, res)
}

/// Refusals a set of records stands for: identical refusals are coalesced
/// into one record with `detail.repeated` more.
fn refusals(recs: &[Value]) -> u64 {
    recs.iter()
        .map(|r| 1 + r["detail"]["repeated"].as_u64().unwrap_or(0))
        .sum()
}

fn source_route_records(g: &Guardd, id: &str) -> Vec<Value> {
    g.logs(&["--agent", id])
        .into_iter()
        .filter(|r| r["rule"] == "network.source-route")
        .collect()
}

/// Datagrams waiting on `s`, without blocking for long.
fn drain(s: &UdpSocket) -> Vec<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = s.recv(&mut buf) {
        got.push(buf[..n].to_vec());
    }
    got
}

#[test]
fn routing_socket_options_are_refused_and_journaled() {
    let g = Guardd::start();
    let p = g.write_policy(
        "opts",
        "[policy]\nname = \"opts\"\n[network]\nallow = [ { cidr = \"127.0.0.1\" }, { cidr = \"::1\" } ]\n",
    );
    let ops: Vec<String> = [
        "opt:6:udp:rthdr",
        "opt:6:tcp:rthdr",
        "opt:6:udp:rthdr2292",
        "opt:6:udp:pktopts",
        "opt:6:udp:hopopts",
        "opt:6:udp:dstopts",
        "opt:6:udp:rthdrdstopts",
        "opt:4:udp:ipopts",
        "opt:4:tcp:ipopts",
        // An IPv6 socket sends IPv4 to mapped addresses: its IPv4 options too.
        "opt:6:udp:ipopts",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (out, res) = run_probe(&g, &p, &ops);
    for op in &ops {
        assert_eq!(
            errno_of(&res, op).as_deref(),
            Some("EPERM"),
            "{op}: {}",
            describe(&out)
        );
    }
    let id = Guardd::agent_id(&out);
    let recs = source_route_records(&g, &id);
    assert_eq!(refusals(&recs), ops.len() as u64, "{recs:#?}");
    for r in &recs {
        assert_eq!(r["kind"], "network");
        assert_eq!(r["action"], "setsockopt");
        assert_eq!(r["layer"], "cgroup-bpf");
        assert_eq!(r["verdict"], "denied");
    }
    assert!(recs.iter().any(|r| r["detail"]["optname"] == 57));
    assert!(
        recs.iter()
            .any(|r| r["detail"]["level"] == 0 && r["detail"]["optname"] == 4)
    );
}

/// An agent sends datagrams to its allowed address with a loose source
/// route through a forbidden one.
/// What `send_routed` saw.
struct Routed {
    out: Output,
    port: u16,
    /// Datagrams the allowed and the forbidden listener received.
    allowed: Vec<Vec<u8>>,
    forbidden: Vec<Vec<u8>>,
}

fn send_routed(g: &Guardd, name: &str, process: &str) -> Routed {
    // The allowed destination and a forbidden one on the same port: a
    // source route takes the packet to its first hop, the port unchanged.
    let allowed = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = allowed.local_addr().unwrap().port();
    let forbidden = UdpSocket::bind(("127.0.0.2", port)).unwrap();
    let p = g.write_policy(
        name,
        &format!(
            "[policy]\nname = \"{name}\"\n[network]\nallow = [ {{ cidr = \"127.0.0.1\", ports = [{port}], protocol = \"udp\" }}, {{ cidr = \"::1\", ports = [{port}], protocol = \"udp\" }} ]\n{process}"
        ),
    );
    let routed = vec![
        format!("lsrr:127.0.0.1:{port}@127.0.0.2"),
        format!("lsrrc:127.0.0.1:{port}@127.0.0.2"),
        format!("lsrr:[::ffff:127.0.0.1]:{port}@127.0.0.2"),
    ];
    let mut ops = routed.clone();
    // IPV6_RTHDR as a control message: this kernel (no CONFIG_IPV6_MIP6)
    // refuses it itself with EINVAL; with it, the egress program drops it.
    ops.push(format!("srh:[::1]:{port}@::1"));
    ops.push(format!("udp:127.0.0.1:{port}"));
    let (out, res) = run_probe(g, &p, &ops);
    for op in &routed {
        assert_eq!(
            errno_of(&res, op).as_deref(),
            Some("EPERM"),
            "{op}: {}",
            describe(&out)
        );
    }
    let srh = errno_of(&res, &ops[3]);
    assert!(
        matches!(srh.as_deref(), Some("EPERM" | "EINVAL")),
        "{srh:?} {}",
        describe(&out)
    );
    assert_eq!(errno_of(&res, &ops[4]), None, "{}", describe(&out));
    Routed {
        out,
        port,
        allowed: drain(&allowed),
        forbidden: drain(&forbidden),
    }
}

#[test]
fn source_routed_datagrams_are_refused_without_net_raw() {
    // Without CAP_NET_RAW (the default) the kernel itself refuses IPv4
    // source-route options; guard journals the refusal once per call.
    let g = Guardd::start();
    let Routed {
        out,
        allowed,
        forbidden,
        ..
    } = send_routed(&g, "noraw", "");
    assert!(forbidden.is_empty());
    assert_eq!(allowed, vec![b"plain".to_vec()]);
    let id = Guardd::agent_id(&out);
    let recs: Vec<Value> = g
        .logs(&["--agent", &id, "--kind", "network"])
        .into_iter()
        .filter(|r| r["verdict"] == "denied")
        .collect();
    assert!(!recs.is_empty(), "{}", describe(&out));
    assert!(
        recs.iter().all(|r| r["rule"] == "process.capabilities"),
        "{recs:#?}"
    );
}

#[test]
fn source_routed_datagrams_never_reach_the_wire_and_are_journaled_once() {
    // With CAP_NET_RAW kept, the kernel accepts the options: the egress
    // program is what stops the packets.
    let g = Guardd::start();
    let Routed {
        out,
        port,
        allowed,
        forbidden,
    } = send_routed(&g, "raw", "[process]\ncapabilities = [\"CAP_NET_RAW\"]\n");
    assert!(forbidden.is_empty());
    assert_eq!(allowed, vec![b"plain".to_vec()]);
    let id = Guardd::agent_id(&out);
    let recs = source_route_records(&g, &id);
    // Two unconnected sockets, three sends each: one refusal journaled per
    // socket. (On the connected socket a source route makes the kernel run
    // the sendmsg4 hook without an address, which judges the unspecified
    // address and port 0 and refuses the send before any packet exists.)
    assert_eq!(refusals(&recs), 2, "{:#?}", g.logs(&["--agent", &id]));
    for r in &recs {
        assert_eq!(r["kind"], "network");
        assert_eq!(r["layer"], "cgroup-bpf");
        assert_eq!(r["verdict"], "denied");
        assert_eq!(r["target"], format!("127.0.0.1:{port}/udp"));
        assert_eq!(r["detail"]["hook"], "cgroup_skb/egress");
        assert_eq!(r["detail"]["wire_destination"], "127.0.0.2");
        assert!(
            r["detail"]["dropped"]
                .as_str()
                .unwrap()
                .contains("loose source route"),
            "{r:#?}"
        );
    }
    // The failed sends are the egress program's, not journaled again as
    // some other refusal; the connected socket's are the sendmsg4 hook's.
    let others: Vec<Value> = g
        .logs(&["--agent", &id, "--kind", "network"])
        .into_iter()
        .filter(|r| r["verdict"] == "denied" && r["rule"] != "network.source-route")
        .collect();
    assert_eq!(refusals(&others), 3, "{others:#?}");
    assert!(
        others
            .iter()
            .all(|r| r["detail"]["hook"] == "sendmsg4" && r["target"] == "127.0.0.1:0/udp"),
        "{others:#?}"
    );
}

/// A file under /etc/ssl/private for the test, removed even on failure.
struct PrivateKey(std::path::PathBuf);

impl Drop for PrivateKey {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn base_grants_trust_anchors_and_never_private_keys() {
    let g = Guardd::start();
    std::fs::create_dir_all("/etc/ssl/private").unwrap();
    let key = PrivateKey(
        Path::new("/etc/ssl/private").join(format!("guard-test-{}.key", std::process::id())),
    );
    std::fs::write(&key.0, "secret\n").unwrap();
    let p = g.write_policy(
        "tls",
        "[policy]\nname = \"tls\"\ninclude = [\"base\", \"python\"]\n",
    );
    let script = format!(
        "import ssl\n\
         c = ssl.create_default_context()\n\
         c.load_default_certs()\n\
         print('cas', c.cert_store_stats()['x509_ca'])\n\
         try:\n    open({:?}).read()\n    print('read')\n\
         except PermissionError:\n    print('refused')\n",
        key.0.display().to_string()
    );
    let out = g.run(&p, &[], &[PYTHON, "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("refused"), "{}", describe(&out));
    let cas: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("cas "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(cas > 0, "no trust anchors loaded: {}", describe(&out));
    let id = Guardd::agent_id(&out);
    let recs = g.logs(&["--agent", &id, "--kind", "file"]);
    assert!(
        recs.iter().any(|r| r["verdict"] == "denied"
            && r["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("/etc/ssl/private/"))),
        "{recs:#?}"
    );
}

#[test]
fn write_and_exec_through_a_symlink_is_refused_at_check_and_run() {
    let g = Guardd::start();
    let dir = g.dir.path().join("x");
    std::fs::create_dir_all(dir.join("wx")).unwrap();
    std::os::unix::fs::symlink(dir.join("wx"), dir.join("wxlink")).unwrap();
    let p = g.write_policy(
        "wxlink",
        &format!(
            "[policy]\nname = \"wxlink\"\n[filesystem]\nwrite = [\"{d}/wx\"]\nexec = [\"{d}/wxlink\"]\n",
            d = dir.display()
        ),
    );
    let want = format!(
        "\"{d}/wxlink\" (resolving to \"{d}/wx\", under \"{d}/wx\" which resolves to \"{d}/wx\") is both writable and executable",
        d = dir.display()
    );
    let check = g.ctl(&["policy", "check", p.to_str().unwrap()]);
    assert!(!check.status.success(), "{}", describe(&check));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(text.contains(&want), "{text}");
    assert!(text.contains("wxlink.toml:5:"), "{text}");
    let out = g.run(&p, &[], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&want),
        "{}",
        describe(&out)
    );
}

#[test]
fn watching_needs_the_inotify_opt_in() {
    let g = Guardd::start();
    let secret = g.dir.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    let script = format!(
        "import ctypes, os\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         fd = libc.inotify_init1(0)\n\
         wd = libc.inotify_add_watch(fd, {:?}.encode(), 0x100)\n\
         print('wd', wd, os.strerror(ctypes.get_errno()) if wd < 0 else '')\n",
        secret.display().to_string()
    );
    let body = "[policy]\nname = \"{n}\"\ninclude = [\"base\", \"python\"]\n";
    let off = g.write_policy("watch", &body.replace("{n}", "watch"));
    let out = g.run(&off, &[], &[PYTHON, "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("wd -1 Operation not permitted"),
        "{}",
        describe(&out)
    );
    let id = Guardd::agent_id(&out);
    let recs: Vec<Value> = g
        .logs(&["--agent", &id])
        .into_iter()
        .filter(|r| r["rule"] == "syscalls.inotify")
        .collect();
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["kind"], "file");
    assert_eq!(recs[0]["layer"], "seccomp");
    assert_eq!(recs[0]["target"], secret.display().to_string());

    let on = g.write_policy(
        "watchon",
        &format!(
            "{}[process]\ninotify = true\n",
            body.replace("{n}", "watchon")
        ),
    );
    let out = g.run(&on, &[], &[PYTHON, "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("wd ") && !l.starts_with("wd -")),
        "{}",
        describe(&out)
    );
}
