//! The kernel side of per-agent DNS redirection (issue 12), through the
//! library: a `Kernel` of the test's own (parent cgroup, bpffs pins), agents
//! added with `AGENT_DNS`, python3 in their scopes, resolvers played by the
//! test's own sockets on loopback. Nothing is sent off loopback: every port
//! 53 destination below is a loopback address, and is redirected anyway.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{IpAddr, Ipv6Addr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use common::*;
use guard_common::{
    AF_INET6, AGENT_AUDIT, AGENT_DNS, AgentInfo, HOOK_CONNECT4, HOOK_CONNECT6, HOOK_SENDMSG4,
    NO_RULE, NetEvent, NetValue, PROTO_TCP, PROTO_UDP, PortRange, RANGE_NAME, REASON_DNS_PROXY,
    REASON_NO_RULE, VERDICT_ALLOWED, VERDICT_DENIED,
};
use guard_daemon::{
    host::{CgroupLayout, ensure_bpffs},
    kernel::{
        AgentKeys, Kernel, KernelOptions, NetEntries, dynamic::DynamicNet, events, remove_pins,
    },
};
use serde_json::Value;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Sends each operation named on its command line and prints one JSON line
/// per operation: what came back and from where, or the errno.
/// `kind|host|port`: `udp4`/`udp6` (sendto, recvfrom), `udpc4` (connect,
/// send, recvfrom), `tcp4`/`tcp6` (connect, send, recv), `conn4`/`conn6`
/// (connect only).
const PROBE: &str = r#"
import errno, json, socket, sys
for spec in sys.argv[1:]:
    kind, host, port = spec.split('|')
    port = int(port)
    fam = socket.AF_INET6 if kind.endswith('6') else socket.AF_INET
    udp = kind.startswith('udp')
    s = socket.socket(fam, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
    s.settimeout(3)
    r = {'op': spec}
    try:
        if kind in ('udp4', 'udp6'):
            s.sendto(spec.encode(), (host, port))
            data, src = s.recvfrom(512)
            r.update(data=data.decode(), src=[src[0], src[1]])
        elif kind == 'udpc4':
            s.connect((host, port))
            s.send(spec.encode())
            data, src = s.recvfrom(512)
            r.update(data=data.decode(), src=[src[0], src[1]])
        elif kind in ('tcp4', 'tcp6'):
            s.connect((host, port))
            s.sendall(spec.encode())
            r.update(data=s.recv(512).decode())
        else:
            s.connect((host, port))
    except socket.timeout:
        r['errno'] = 'TIMEOUT'
    except OSError as e:
        r['errno'] = errno.errorcode.get(e.errno, str(e.errno))
    s.close()
    print(json.dumps(r), flush=True)
"#;

/// A resolver stand-in: UDP and TCP on 127.0.0.1 and [::1], all on one
/// port, answering `R:` + the query.
struct Resolver {
    port: u16,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Queries received (all four sockets).
    queries: Arc<AtomicUsize>,
}

impl Resolver {
    fn start() -> Resolver {
        for _ in 0..50 {
            let u4 = UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = u4.local_addr().unwrap().port();
            let (Ok(u6), Ok(t4), Ok(t6)) = (
                UdpSocket::bind(("::1", port)),
                TcpListener::bind(("127.0.0.1", port)),
                TcpListener::bind(("::1", port)),
            ) else {
                continue;
            };
            let stop = Arc::new(AtomicBool::new(false));
            let queries = Arc::new(AtomicUsize::new(0));
            let mut threads = Vec::new();
            for u in [u4, u6] {
                let (stop, queries) = (stop.clone(), queries.clone());
                u.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                threads.push(std::thread::spawn(move || {
                    let mut buf = [0u8; 512];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((n, from)) = u.recv_from(&mut buf) {
                            queries.fetch_add(1, Ordering::Relaxed);
                            let mut reply = b"R:".to_vec();
                            reply.extend_from_slice(&buf[..n]);
                            let _ = u.send_to(&reply, from);
                        }
                    }
                }));
            }
            for t in [t4, t6] {
                let (stop, queries) = (stop.clone(), queries.clone());
                t.set_nonblocking(true).unwrap();
                threads.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match t.accept() {
                            Ok((mut c, _)) => {
                                queries.fetch_add(1, Ordering::Relaxed);
                                c.set_nonblocking(false).unwrap();
                                c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                                let mut buf = [0u8; 512];
                                let n = c.read(&mut buf).unwrap_or(0);
                                let mut reply = b"R:".to_vec();
                                reply.extend_from_slice(&buf[..n]);
                                let _ = c.write_all(&reply);
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(5)),
                        }
                    }
                }));
            }
            return Resolver {
                port,
                stop,
                threads,
                queries,
            };
        }
        panic!("no port free on UDP and TCP, 127.0.0.1 and [::1]");
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A `Kernel` on its own parent cgroup and pins, with agent scopes under
/// it. `Drop` kills what runs in the scopes and removes the cgroups and
/// pins, whether the test passed or not.
struct Fixture {
    parent: PathBuf,
    pin_dir: PathBuf,
    scopes: Vec<PathBuf>,
    kernel: Option<Kernel>,
    ring: Option<RingBuf<MapData>>,
}

impl Fixture {
    fn load() -> Fixture {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let instance = format!("guard-dnsk-{}-{n}", std::process::id());
        let bpffs = Path::new("/sys/fs/bpf");
        ensure_bpffs(bpffs).unwrap();
        let layout = CgroupLayout::detect().unwrap();
        let parent = layout.v2.join(&instance);
        let mut f = Fixture {
            parent: parent.clone(),
            pin_dir: bpffs.join(&instance),
            scopes: Vec::new(),
            kernel: None,
            ring: None,
        };
        std::fs::create_dir(&parent).unwrap();
        let (kernel, ring) = Kernel::load(&KernelOptions {
            parent_cgroup: parent.clone(),
            agent_level: layout.level_of(&parent) + 1,
            pin_dir: f.pin_dir.clone(),
        })
        .unwrap();
        f.kernel = Some(kernel);
        f.ring = Some(ring);
        f
    }

    fn kernel(&mut self) -> &mut Kernel {
        self.kernel.as_mut().unwrap()
    }

    /// A scope whose agent has `flags` (`AGENT_DNS` added), the resolver
    /// on `dns_port`, and `v4` as its IPv4 rules.
    fn agent(
        &mut self,
        slot: u32,
        flags: u32,
        dns_port: u16,
        v4: &[(u32, [u8; 4], NetValue)],
    ) -> (PathBuf, AgentKeys) {
        use std::os::unix::fs::MetadataExt;
        let scope = self.parent.join(format!("agent-{slot}"));
        std::fs::create_dir(&scope).unwrap();
        self.scopes.push(scope.clone());
        let cgroup_id = std::fs::metadata(&scope).unwrap().ino();
        let info = AgentInfo {
            slot,
            flags: flags | AGENT_DNS,
            dns_port: u32::from(dns_port),
            ..AgentInfo::default()
        };
        let keys = self
            .kernel()
            .add_agent(
                cgroup_id,
                info,
                &NetEntries {
                    v4,
                    v6: &[],
                    unix: &[],
                    listen4: &[],
                    listen6: &[],
                },
            )
            .unwrap();
        (scope, keys)
    }

    /// The network events waiting in the ring buffer.
    fn net_events(&mut self) -> Vec<NetEvent> {
        let ring = self.ring.as_mut().unwrap();
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(events::KernelEvent::Net(e)) = events::decode(&item) {
                out.push(e);
            }
        }
        out
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for scope in &self.scopes {
            let _ = std::fs::write(scope.join("cgroup.kill"), "1");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if std::fs::remove_dir(scope).is_ok() || !scope.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(k) = self.kernel.take() {
            k.unpin_all();
        }
        self.ring = None;
        remove_pins(&self.pin_dir);
        let _ = std::fs::remove_dir(&self.parent);
    }
}

/// All ports of TCP and UDP from `rule`.
fn allow_all(rule: u16) -> NetValue {
    let mut v = NetValue {
        count: 1,
        cidr_rule: u32::from(rule),
        ..NetValue::default()
    };
    v.ranges[0] = PortRange {
        lo: 1,
        hi: u16::MAX,
        protos: PROTO_TCP | PROTO_UDP,
        flags: 0,
        rule,
    };
    v
}

/// Runs the probe in `scope` (the shell joins it before python starts) and
/// returns its results in order.
fn probe<S: AsRef<str>>(scope: &Path, ops: &[S]) -> Vec<Value> {
    let procs = scope.join("cgroup.procs");
    let mut child = Command::new("sh")
        .args(["-c", "echo $$ > \"$1\" && shift && exec \"$@\"", "sh"])
        .arg(&procs)
        .args([PYTHON, "-c", PROBE])
        .args(ops.iter().map(AsRef::as_ref))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_or_kill(&mut child, Duration::from_secs(60));
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "probe failed ({status:?}):\n{out}\n{err}"
    );
    let res: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(res.len(), ops.len(), "{out}\n{err}");
    res
}

fn errno(r: &Value) -> Option<&str> {
    r["errno"].as_str()
}

#[test]
fn every_port_53_query_reaches_the_agents_resolver_and_replies_show_the_server_asked() {
    let mut f = Fixture::load();
    // The recvmsg programs are attached and pinned like the others, and
    // count in readiness.
    let links: Vec<String> = std::fs::read_dir(f.pin_dir.join("links"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for name in ["guard_recvmsg4-", "guard_recvmsg6-"] {
        assert!(links.iter().any(|l| l.starts_with(name)), "{links:?}");
    }
    assert_eq!(f.kernel().missing_links(), Vec::<String>::new());
    let resolver = Resolver::start();
    let p = resolver.port;
    f.kernel().set_dns_port(p, 1).unwrap();
    let (scope, _) = f.agent(1, 0, p, &[(8, [127, 0, 0, 0], allow_all(0))]);

    // (operation, the source its reply must show)
    let cases: Vec<(String, Option<(&str, u16)>)> = vec![
        ("udp4|127.0.0.53|53".into(), Some(("127.0.0.53", 53))),
        ("udp4|0.0.0.0|53".into(), Some(("127.0.0.1", 53))),
        ("udpc4|127.0.0.53|53".into(), Some(("127.0.0.53", 53))),
        ("udp6|::1|53".into(), Some(("::1", 53))),
        (
            "udp6|::ffff:127.9.9.9|53".into(),
            Some(("::ffff:127.9.9.9", 53)),
        ),
        ("tcp4|127.0.0.53|53".into(), None),
        ("tcp6|::1|53".into(), None),
        ("tcp6|::ffff:127.0.0.53|53".into(), None),
        // The agent's own resolver port, straight: judged by its rules
        // (127.0.0.0/8 allows it), and the reply is not rewritten.
        (format!("udp4|127.0.0.1|{p}"), Some(("127.0.0.1", p))),
    ];
    let ops: Vec<String> = cases.iter().map(|(op, _)| op.clone()).collect();
    let res = probe(&scope, &ops);
    for ((op, src), r) in cases.iter().zip(&res) {
        assert_eq!(errno(r), None, "{op}: {r}");
        assert_eq!(r["data"], format!("R:{op}"), "{op}: {r}");
        if let Some((host, port)) = src {
            assert_eq!(r["src"][0], *host, "{op}: {r}");
            assert_eq!(r["src"][1], *port, "{op}: {r}");
        }
    }
    assert_eq!(resolver.queries.load(Ordering::Relaxed), cases.len());
    // Redirection is silent: nothing to journal.
    assert_eq!(f.net_events(), vec![]);
}

#[test]
fn another_agents_resolver_is_refused_whatever_the_policy_and_mode() {
    let mut f = Fixture::load();
    let mine = Resolver::start();
    let audited = Resolver::start();
    let theirs = Resolver::start();
    f.kernel().set_dns_port(mine.port, 1).unwrap();
    f.kernel().set_dns_port(audited.port, 3).unwrap();
    f.kernel().set_dns_port(theirs.port, 2).unwrap();
    let (enforced, _) = f.agent(1, 0, mine.port, &[(8, [127, 0, 0, 0], allow_all(0))]);
    // Audit mode with no rules at all: everything would be allowed.
    let (audit, _) = f.agent(3, AGENT_AUDIT, audited.port, &[]);
    let q = theirs.port;
    let refused = [
        format!("conn4|127.0.0.1|{q}"),
        format!("udp4|127.0.0.1|{q}"),
        format!("conn6|::1|{q}"),
        format!("conn6|::ffff:127.0.0.1|{q}"),
        format!("conn4|0.0.0.0|{q}"),
    ];
    for scope in [&enforced, &audit] {
        let res = probe(scope, &refused);
        for (op, r) in refused.iter().zip(&res) {
            assert_eq!(errno(r), Some("EPERM"), "{op}: {r}");
        }
        // Its own resolver, redirected, still answers.
        let res = probe(scope, &["udp4|127.0.0.53|53"]);
        assert_eq!(res[0]["src"][0], "127.0.0.53", "{}", res[0]);
    }
    assert_eq!(theirs.queries.load(Ordering::Relaxed), 0);
    let evs = f.net_events();
    assert_eq!(evs.len(), 2 * refused.len(), "{evs:#?}");
    for e in &evs {
        assert_eq!(e.hdr.verdict, VERDICT_DENIED, "{e:?}");
        assert_eq!(e.hdr.reason, REASON_DNS_PROXY, "{e:?}");
        assert_eq!(e.port, q);
        assert_eq!(e.rule, NO_RULE);
    }
    assert_eq!(evs[0].hook, HOOK_CONNECT4);
    assert_eq!(evs[1].hook, HOOK_SENDMSG4);
    assert_eq!(evs[2].hook, HOOK_CONNECT6);
    assert_eq!(evs[2].family, AF_INET6 as u8);
    // A v4-mapped or unspecified address is judged as the loopback it is.
    assert_eq!(&evs[3].addr[..4], &[127, 0, 0, 1]);
    assert_eq!(&evs[4].addr[..4], &[127, 0, 0, 1]);
    assert_eq!(evs[4].rewritten, 1);
    assert_eq!(
        evs.iter().map(|e| e.hdr.slot).collect::<Vec<_>>(),
        [1, 1, 1, 1, 1, 3, 3, 3, 3, 3]
    );

    // Without the entry, the port is judged like any other.
    f.kernel().clear_dns_port(q, 1);
    // Another slot's clear leaves the entry alone.
    let res = probe(&enforced, &[format!("udp4|127.0.0.1|{q}")]);
    assert_eq!(errno(&res[0]), Some("EPERM"), "{}", res[0]);
    f.kernel().clear_dns_port(q, 2);
    let res = probe(&enforced, &[format!("udp4|127.0.0.1|{q}")]);
    assert_eq!(
        res[0]["data"],
        format!("R:udp4|127.0.0.1|{q}"),
        "{}",
        res[0]
    );
}

#[test]
fn host_rule_entries_open_report_once_close_again_and_are_purged() {
    let mut f = Fixture::load();
    let resolver = Resolver::start();
    let web6 = Listener::tcp("[::1]");
    let web4 = Listener::tcp("127.0.0.1");
    let stale_port = closed_port();
    f.kernel().set_dns_port(resolver.port, 1).unwrap();
    // A port of a resolver whose agent is gone (no live slot 9).
    f.kernel().set_dns_port(stale_port, 9).unwrap();
    let (scope, keys) = f.agent(1, 0, resolver.port, &[(8, [127, 0, 0, 0], allow_all(0))]);
    let conn6 = format!("conn6|::1|{}", web6.port);
    let conn4 = format!("conn4|127.0.0.1|{}", web4.port);
    let loopback6 = IpAddr::V6(Ipv6Addr::LOCALHOST);

    // No IPv6 rule: refused.
    assert_eq!(errno(&probe(&scope, &[&conn6])[0]), Some("EPERM"));

    // As guardd's resolver would, after an answer: a /128 with the name
    // rule's range.
    let mut value = NetValue {
        count: 1,
        cidr_rule: 5,
        ..NetValue::default()
    };
    value.ranges[0] = PortRange {
        lo: web6.port,
        hi: web6.port,
        protos: PROTO_TCP,
        flags: RANGE_NAME,
        rule: 5,
    };
    let dynamic = f.kernel().dynamic_net().unwrap();
    dynamic.put(1, loopback6, &value).unwrap();
    let res = probe(&scope, &[&conn6, &conn6]);
    assert_eq!(errno(&res[0]), None, "{}", res[0]);
    assert_eq!(errno(&res[1]), None, "{}", res[1]);

    dynamic.remove(1, loopback6).unwrap();
    // Removing it again is no error.
    dynamic.remove(1, loopback6).unwrap();
    assert_eq!(errno(&probe(&scope, &[&conn6])[0]), Some("EPERM"));

    let evs = f.net_events();
    assert_eq!(evs.len(), 3, "{evs:#?}");
    assert_eq!(evs[0].hdr.verdict, VERDICT_DENIED);
    // Two connections, one record: the first, naming the host rule.
    let allowed = &evs[1];
    assert_eq!(allowed.hdr.verdict, VERDICT_ALLOWED, "{allowed:?}");
    assert_eq!(allowed.hdr.reason, REASON_NO_RULE);
    assert_eq!(allowed.rule, 5);
    assert_eq!(allowed.hook, HOOK_CONNECT6);
    assert_eq!(allowed.port, web6.port);
    assert_eq!(allowed.addr, Ipv6Addr::LOCALHOST.octets());
    assert_eq!(allowed.hdr.slot, 1);
    assert_eq!(evs[2].hdr.verdict, VERDICT_DENIED);
    assert_eq!(evs[2].hdr.reason, REASON_NO_RULE);
    // An allowed record is no denial in the agent's counters (`events`
    // counts the exec records of the probes too).
    let info = f.kernel().agent_info(keys.cgroup_id).unwrap();
    assert_eq!((info.denied, info.lost), (2, 0));
    assert!(info.events >= 3, "{info:?}");

    // A restarted guardd knows nothing of what the last one's resolver
    // wrote: written through the pins here, purged there; the static rule
    // stays.
    let pinned = DynamicNet::open(&f.pin_dir).unwrap();
    pinned.put(1, loopback6, &value).unwrap();
    // v4-mapped goes to NET4 as a /32.
    pinned
        .put(1, "::ffff:127.0.0.9".parse().unwrap(), &value)
        .unwrap();
    assert_eq!(errno(&probe(&scope, &[&conn6])[0]), None);
    let live = HashMap::from([(1, keys.clone())]);
    assert_eq!(f.kernel().purge_stale(&live), 2);
    assert_eq!(f.kernel().purge_stale(&live), 0);
    let stale = format!("conn4|127.0.0.1|{stale_port}");
    let res = probe(&scope, &[&conn6, &conn4, &stale]);
    assert_eq!(errno(&res[0]), Some("EPERM"), "{}", res[0]);
    assert_eq!(errno(&res[1]), None, "{}", res[1]);
    // The dead slot's resolver port is forgotten: nothing listens there.
    assert_eq!(errno(&res[2]), Some("ECONNREFUSED"), "{}", res[2]);
    // The live agent's redirection is untouched.
    let res = probe(&scope, &["udp4|127.0.0.53|53"]);
    assert_eq!(res[0]["src"][0], "127.0.0.53", "{}", res[0]);
}
