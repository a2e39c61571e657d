//! Scopes outside guard's parent cgroup (issue 13), through the library: a
//! `Kernel` of the test's own (parent cgroup, bpffs pins), and scopes made by
//! hand under another cgroup tree, as a container runtime's would be
//! (`<v2>/guard-test-sa-…-outer/pod/agent-1`, one level deeper than the
//! scopes under the parent). A python3 process the test moves from cgroup to
//! cgroup (its pid written to `cgroup.procs` before it does anything) runs
//! the operations; the test's own listeners on loopback answer them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::{fs::MetadataExt, net::UnixListener},
    },
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use aya_obj::generated::{
    BPF_F_ALLOW_MULTI, BPF_F_ALLOW_OVERRIDE, bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn,
};
use common::*;
use guard_common::{
    AgentInfo, HOOK_CONNECT4, HOOK_EGRESS, HOOK_INGRESS, NetValue, PROTO_TCP, PROTO_UDP, PortRange,
    REASON_UNKNOWN_SCOPE, VERDICT_DENIED,
};
use guard_daemon::{
    host::{CgroupLayout, ensure_bpffs},
    kernel::{
        AgentKeys, Kernel, KernelError, KernelOptions, NetEntries, events, remove_pins, scopes, sys,
    },
};
use serde_json::Value;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Runs one operation per line of its standard input and prints one JSON
/// line per operation: the errno, if it failed.
const AGENT: &str = r#"
import errno, json, socket, sys, time
keep = []
for line in sys.stdin:
    op, _, arg = line.strip().partition(' ')
    r = {'op': line.strip()}
    s = None
    try:
        if op == 'tcp4':
            host, port = arg.rsplit(':', 1)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(3)
            s.connect((host, int(port)))
        elif op == 'unix':
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(3)
            s.connect(arg)
        elif op == 'raw':
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        elif op == 'listen':
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(('127.0.0.1', int(arg)))
            s.listen()
            r['port'] = s.getsockname()[1]
            keep.append(s)
            s = None
        elif op == 'lsrr':
            # A datagram to HOST:PORT with a loose source route via VIA, as a
            # control message (no socket option, no address hook sees it).
            dest, via = arg.split('@')
            host, port = dest.rsplit(':', 1)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            route = bytes([0x83, 7, 4]) + socket.inet_aton(via) + bytes([1])
            s.sendmsg([b'routed'], [(socket.IPPROTO_IP, 7, route)], 0, (host, int(port)))
        elif op == 'ipopt':
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, b'\x01\x01\x01\x01')
        elif op == 'hammer':
            # Connects to the address until a line comes (or stdin closes),
            # then says how many connects were made and how many got through.
            host, port = arg.rsplit(':', 1)
            import select
            tries = passed = 0
            while not select.select([sys.stdin], [], [], 0)[0]:
                c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                c.settimeout(3)
                try:
                    c.connect((host, int(port)))
                    passed += 1
                except OSError:
                    pass
                c.close()
                tries += 1
                time.sleep(0.002)
            sys.stdin.readline()
            r.update(tries=tries, passed=passed)
    except socket.timeout:
        r['errno'] = 'TIMEOUT'
    except OSError as e:
        r['errno'] = errno.errorcode.get(e.errno, str(e.errno))
    if s is not None:
        s.close()
    print(json.dumps(r), flush=True)
"#;

/// A python3 process the test moves between cgroups and gives operations.
struct Proc {
    child: Child,
    stdin: ChildStdin,
    out: BufReader<ChildStdout>,
}

impl Proc {
    fn spawn() -> Proc {
        let mut child = Command::new(PYTHON)
            .args(["-c", AGENT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Proc { child, stdin, out }
    }

    fn move_to(&self, cgroup: &Path) {
        std::fs::write(cgroup.join("cgroup.procs"), self.child.id().to_string()).unwrap();
    }

    fn send(&mut self, op: &str) {
        writeln!(self.stdin, "{op}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn reply(&mut self) -> Value {
        let mut line = String::new();
        let n = self.out.read_line(&mut line).unwrap();
        assert!(n > 0, "the python process ended");
        serde_json::from_str(&line).unwrap()
    }

    fn op(&mut self, op: &str) -> Value {
        self.send(op);
        self.reply()
    }

    /// The errno of `op`, or `None` when it worked.
    fn errno(&mut self, op: &str) -> Option<String> {
        let r = self.op(op);
        r["errno"].as_str().map(str::to_owned)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `Kernel` on its own parent cgroup and pins, and a second cgroup tree
/// (`outer`) for scopes outside the parent. `Drop` kills whatever runs in
/// either tree and removes the cgroups and pins, whether the test passed or
/// not.
struct Fixture {
    layout: CgroupLayout,
    opts: KernelOptions,
    outer: PathBuf,
    kernel: Option<Kernel>,
    ring: Option<RingBuf<MapData>>,
}

impl Fixture {
    fn load() -> Fixture {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("guard-test-sa-{}-{n}", std::process::id());
        let bpffs = Path::new("/sys/fs/bpf");
        ensure_bpffs(bpffs).unwrap();
        let layout = CgroupLayout::detect().unwrap();
        let parent = layout.v2.join(&name);
        let outer = layout.v2.join(format!("{name}-outer"));
        let opts = KernelOptions {
            parent_cgroup: parent.clone(),
            agent_level: layout.level_of(&parent) + 1,
            pin_dir: bpffs.join(&name),
        };
        let mut f = Fixture {
            layout,
            opts,
            outer: outer.clone(),
            kernel: None,
            ring: None,
        };
        std::fs::create_dir(&parent).unwrap();
        std::fs::create_dir(&outer).unwrap();
        f.start_kernel();
        f
    }

    fn start_kernel(&mut self) {
        let (kernel, ring) = Kernel::load(&self.opts).unwrap();
        self.kernel = Some(kernel);
        self.ring = Some(ring);
    }

    /// A guardd restart: the old `Kernel` goes without unpinning anything,
    /// a new generation loads on the same pins.
    fn restart(&mut self) {
        self.ring = None;
        self.kernel = None;
        self.start_kernel();
    }

    fn kernel(&mut self) -> &mut Kernel {
        self.kernel.as_mut().unwrap()
    }

    /// `rel` under the outer tree, created with its parents.
    fn outer_dir(&self, rel: &str) -> PathBuf {
        let d = self.outer.join(rel);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// `rel` under guard's parent cgroup.
    fn parent_dir(&self, rel: &str) -> PathBuf {
        let d = self.opts.parent_cgroup.join(rel);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// An agent in `slot` whose scope is `scope`, allowed TCP and UDP to
    /// 127.0.0.1:`port` only.
    fn agent(&mut self, slot: u32, scope: &Path, port: u16) -> (u64, AgentKeys) {
        self.agent_listening(slot, scope, port, &[])
    }

    /// As [`Fixture::agent`], also allowed to listen on the `listen` ports
    /// of 127.0.0.1.
    fn agent_listening(
        &mut self,
        slot: u32,
        scope: &Path,
        port: u16,
        listen: &[u16],
    ) -> (u64, AgentKeys) {
        let cgroup_id = std::fs::metadata(scope).unwrap().ino();
        let v4 = [(32, [127, 0, 0, 1], only_port(port))];
        let listen4: Vec<(u32, [u8; 4], NetValue)> = listen
            .iter()
            .map(|p| (32, [127, 0, 0, 1], only_port(*p)))
            .collect();
        let keys = self
            .kernel()
            .add_agent(
                cgroup_id,
                AgentInfo {
                    slot,
                    ..AgentInfo::default()
                },
                &NetEntries {
                    v4: &v4,
                    v6: &[],
                    unix: &[],
                    listen4: &listen4,
                    listen6: &[],
                },
            )
            .unwrap();
        (cgroup_id, keys)
    }

    fn denied(&mut self, cgroup_id: u64) -> u64 {
        self.kernel().agent_info(cgroup_id).unwrap().denied
    }

    /// The events waiting in the ring buffer.
    fn events(&mut self) -> Vec<events::KernelEvent> {
        let ring = self.ring.as_mut().unwrap();
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(e) = events::decode(&item) {
                out.push(e);
            }
        }
        out
    }

    fn scope_pins(&self, key: &str) -> Vec<String> {
        let dir = self.opts.pin_dir.join("links/scopes").join(key);
        let mut names: Vec<String> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    /// The cgroup programs every scope gets: 12, and the two Unix hooks
    /// when they loaded.
    fn programs_per_scope(&mut self) -> usize {
        if self.kernel().layers.unix_hooks {
            14
        } else {
            12
        }
    }

    fn level_bit(&self, dir: &Path) -> u64 {
        1 << self.layout.level_of(dir)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for tree in [&self.outer, &self.opts.parent_cgroup] {
            // Kills every process in the tree, descendants included.
            let _ = std::fs::write(tree.join("cgroup.kill"), "1");
        }
        for tree in [self.outer.clone(), self.opts.parent_cgroup.clone()] {
            remove_cgroups(&tree);
        }
        if let Some(k) = self.kernel.take() {
            k.unpin_all();
        }
        self.ring = None;
        remove_pins(&self.opts.pin_dir);
    }
}

/// Removes a cgroup tree, deepest first, waiting for killed processes to go.
fn remove_cgroups(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroups(&e.path());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// TCP and UDP on `port` only, rule 0.
fn only_port(port: u16) -> NetValue {
    let mut v = NetValue {
        count: 1,
        cidr_rule: 0,
        ..NetValue::default()
    };
    v.ranges[0] = PortRange {
        lo: port,
        hi: port,
        protos: PROTO_TCP | PROTO_UDP,
        flags: 0,
        rule: 0,
    };
    v
}

/// Connects refused by guard's connect4 program, as (cgroup id, slot, port).
fn refused_connects(evs: &[events::KernelEvent]) -> Vec<(u64, u32, u16)> {
    evs.iter()
        .filter_map(|e| match e {
            events::KernelEvent::Net(n) if n.hook == HOOK_CONNECT4 => {
                assert_eq!(n.hdr.verdict, VERDICT_DENIED, "{n:?}");
                Some((n.hdr.cgroup_id, n.hdr.slot, n.port))
            }
            _ => None,
        })
        .collect()
}

/// Polls `f` until it holds, for up to five seconds: links whose pins are
/// removed are released by the kernel shortly after, not at once.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Programs of `attach_type` attached to `cgroup` itself (or, `effective`,
/// running for it).
fn attached(cgroup: &Path, attach_type: bpf_attach_type, effective: bool) -> Vec<u32> {
    let f = std::fs::File::open(cgroup).unwrap();
    sys::prog_query(f.as_fd(), attach_type as u32, effective).unwrap()
}

#[test]
fn a_scope_outside_the_parent_is_enforced_where_it_lives() {
    let mut f = Fixture::load();
    let allowed = Listener::tcp("127.0.0.1");
    let other = Listener::tcp("127.0.0.1");
    let sock_dir = tempfile::tempdir().unwrap();
    let sock_path = sock_dir.path().join("s");
    let _unix = UnixListener::bind(&sock_path).unwrap();
    let (a, b) = (allowed.port, other.port);

    let pod = f.outer_dir("pod");
    let scope = f.outer_dir("pod/agent-1");
    // One level deeper than the scopes under the parent: found through the
    // mask, not the agent level.
    assert_eq!(f.layout.level_of(&scope), f.opts.agent_level + 1);
    let listen_port = closed_port();
    let (id, keys) = f.agent_listening(1, &scope, a, &[listen_port]);
    f.kernel().attach_scope(&scope, "agent-1").unwrap();
    let parent_bit = 1u64 << f.opts.agent_level;
    let scope_bit = f.level_bit(&scope);
    assert_eq!(f.kernel().scope_levels().unwrap(), parent_bit | scope_bit);
    let pins = f.scope_pins("agent-1");
    let per_scope = f.programs_per_scope();
    assert_eq!(pins.len(), per_scope, "{pins:?}");
    for name in ["guard_connect4-", "guard_ingress-", "guard_setsockopt-"] {
        assert!(pins.iter().any(|p| p.starts_with(name)), "{pins:?}");
    }
    assert_eq!(f.kernel().missing_links(), Vec::<String>::new());
    assert_eq!(
        attached(&scope, bpf_attach_type::BPF_CGROUP_INET4_CONNECT, false).len(),
        1
    );
    assert_eq!(scopes::pinned_scopes(&f.opts.pin_dir), vec!["agent-1"]);

    let mut p = Proc::spawn();
    p.move_to(&scope);
    assert_eq!(
        p.errno(&format!("tcp4 127.0.0.1:{b}")).as_deref(),
        Some("EPERM")
    );
    assert_eq!(p.errno(&format!("tcp4 127.0.0.1:{a}")), None);
    assert_eq!(f.denied(id), 1);
    assert_eq!(refused_connects(&f.events()), vec![(id, 1, b)]);
    // The socket and option programs hold there too (the test runs as root
    // with CAP_NET_RAW: only guard refuses these).
    assert_eq!(p.errno("raw").as_deref(), Some("EPERM"));
    assert_eq!(p.errno("ipopt").as_deref(), Some("EPERM"));
    if f.kernel().layers.unix_hooks {
        let op = format!("unix {}", sock_path.display());
        assert_eq!(p.errno(&op).as_deref(), Some("EPERM"));
    }
    let _ = f.events();
    // The packet programs find the agent through the socket's cgroup: a
    // listener on a port a rule allows accepts, one on an ephemeral port
    // does not (its SYN is dropped and reported), and a datagram carrying a
    // source route is dropped and reported with the process that sent it.
    let r = p.op(&format!("listen {listen_port}"));
    assert_eq!(r["errno"], Value::Null, "{r}");
    let to = |port: u64| std::net::SocketAddr::from(([127, 0, 0, 1], port as u16));
    std::net::TcpStream::connect_timeout(&to(u64::from(listen_port)), Duration::from_secs(3))
        .unwrap();
    let r = p.op("listen 0");
    assert_eq!(r["errno"], Value::Null, "{r}");
    let ephemeral = r["port"].as_u64().unwrap();
    assert!(
        std::net::TcpStream::connect_timeout(&to(ephemeral), Duration::from_millis(500)).is_err()
    );
    assert_eq!(
        p.errno(&format!("lsrr 127.0.0.1:{a}@127.0.0.2")).as_deref(),
        Some("EPERM")
    );
    let evs = f.events();
    let ingress = evs.iter().any(|e| {
        matches!(e, events::KernelEvent::Net(n) if n.hook == HOOK_INGRESS
            && n.hdr.cgroup_id == id && n.hdr.slot == 1 && u64::from(n.port) == ephemeral)
    });
    assert!(ingress, "{evs:?}");
    let egress = evs.iter().any(|e| {
        matches!(e, events::KernelEvent::Net(n) if n.hook == HOOK_EGRESS
            && n.hdr.cgroup_id == id && n.hdr.slot == 1 && n.hdr.tgid == p.child.id())
    });
    assert!(egress, "{evs:?}");

    // A cgroup below the scope is still the agent.
    let deeper = f.outer_dir("pod/agent-1/sub/deeper");
    p.move_to(&deeper);
    let denied = f.denied(id);
    assert_eq!(
        p.errno(&format!("tcp4 127.0.0.1:{b}")).as_deref(),
        Some("EPERM")
    );
    assert_eq!(p.errno(&format!("tcp4 127.0.0.1:{a}")), None);
    assert_eq!(f.denied(id), denied + 1);
    assert_eq!(refused_connects(&f.events()), vec![(id, 1, b)]);

    // The container's own cgroup, around the scope, is not guard's.
    p.move_to(&pod);
    let denied = f.denied(id);
    assert_eq!(p.errno(&format!("tcp4 127.0.0.1:{b}")), None);
    assert_eq!(p.errno("raw"), None);
    assert_eq!(p.errno("ipopt"), None);
    let op = format!("unix {}", sock_path.display());
    assert_eq!(p.errno(&op), None);
    assert_eq!(f.denied(id), denied);
    assert!(f.events().is_empty());

    // Scopes under the parent keep the single lookup, and a task there in
    // no known scope is still refused, with another level in the mask.
    let inside = f.parent_dir("agent-2");
    let (id2, _) = f.agent(2, &inside, b);
    p.move_to(&inside);
    assert_eq!(
        p.errno(&format!("tcp4 127.0.0.1:{a}")).as_deref(),
        Some("EPERM")
    );
    assert_eq!(p.errno(&format!("tcp4 127.0.0.1:{b}")), None);
    assert_eq!(refused_connects(&f.events()), vec![(id2, 2, a)]);
    let stray = f.parent_dir("stray");
    p.move_to(&stray);
    assert_eq!(
        p.errno(&format!("tcp4 127.0.0.1:{b}")).as_deref(),
        Some("EPERM")
    );
    // (refused at socket creation already)
    let evs = f.events();
    let unknown = evs
        .iter()
        .any(|e| e.header().slot == u32::MAX && e.header().reason == REASON_UNKNOWN_SCOPE);
    assert!(unknown, "{evs:?}");

    // Detached: the pins and the level go, and so do the programs.
    f.kernel().detach_scope("agent-1");
    f.kernel().remove_agent(&keys);
    assert!(!f.opts.pin_dir.join("links/scopes/agent-1").exists());
    assert!(scopes::pinned_scopes(&f.opts.pin_dir).is_empty());
    assert_eq!(f.kernel().scope_levels().unwrap(), parent_bit);
    assert_eq!(f.kernel().missing_links(), Vec::<String>::new());
    eventually("the scope's programs are detached", || {
        attached(&scope, bpf_attach_type::BPF_CGROUP_INET4_CONNECT, false).is_empty()
    });
    p.move_to(&scope);
    assert_eq!(p.errno(&format!("tcp4 127.0.0.1:{b}")), None);
    // Detaching again, or a key never attached, is no error.
    f.kernel().detach_scope("agent-1");
    f.kernel().detach_scope("never");
    f.kernel().detach_scope("../maps");
    assert!(f.opts.pin_dir.join("maps/AGENTS").exists());
}

#[test]
fn a_new_generation_takes_a_scope_over_without_a_gap() {
    let mut f = Fixture::load();
    let allowed = Listener::tcp("127.0.0.1");
    let other = Listener::tcp("127.0.0.1");
    let (a, b) = (allowed.port, other.port);
    let scope = f.outer_dir("pod/agent-1");
    let (id, _) = f.agent(1, &scope, a);
    f.kernel().attach_scope(&scope, "agent-1").unwrap();
    let first = f.scope_pins("agent-1");
    let per_scope = f.programs_per_scope();
    assert_eq!(first.len(), per_scope);

    // Again in the same generation: nothing changes.
    f.kernel().attach_scope(&scope, "agent-1").unwrap();
    assert_eq!(f.scope_pins("agent-1"), first);
    assert_eq!(
        attached(&scope, bpf_attach_type::BPF_CGROUP_INET4_CONNECT, false).len(),
        1
    );
    // A pin that vanished is missing for readiness, and attached again.
    let lost = first
        .iter()
        .find(|p| p.starts_with("guard_connect4-"))
        .unwrap();
    std::fs::remove_file(f.opts.pin_dir.join("links/scopes/agent-1").join(lost)).unwrap();
    assert_eq!(
        f.kernel().missing_links(),
        vec![format!("scopes/agent-1/{lost}")]
    );
    f.kernel().attach_scope(&scope, "agent-1").unwrap();
    assert_eq!(f.kernel().missing_links(), Vec::<String>::new());
    assert_eq!(f.scope_pins("agent-1"), first);
    eventually("one connect4 program on the scope", || {
        attached(&scope, bpf_attach_type::BPF_CGROUP_INET4_CONNECT, false).len() == 1
    });
    // The same key for another cgroup is a caller's mistake.
    let elsewhere = f.outer_dir("pod2/agent-1");
    let e = f.kernel().attach_scope(&elsewhere, "agent-1").unwrap_err();
    assert!(matches!(e, KernelError::ScopeInUse { .. }), "{e}");

    // A process connecting to the refused port all along: none may pass
    // while guardd restarts and re-attaches the scope.
    let mut hammer = Proc::spawn();
    hammer.move_to(&scope);
    hammer.send(&format!("hammer 127.0.0.1:{b}"));
    let mut p = Proc::spawn();
    p.move_to(&scope);

    f.restart();
    // The old generation's links still hold the scope, and its level stayed
    // in the mask: the agent is found and judged.
    let scope_bit = f.level_bit(&scope);
    assert_ne!(f.kernel().scope_levels().unwrap() & scope_bit, 0);
    assert_eq!(f.scope_pins("agent-1"), first);
    assert_eq!(
        p.errno(&format!("tcp4 127.0.0.1:{b}")).as_deref(),
        Some("EPERM")
    );
    assert_eq!(p.errno(&format!("tcp4 127.0.0.1:{a}")), None);

    // Re-adoption: the new generation's links replace the old ones.
    f.kernel().attach_scope(&scope, "agent-1").unwrap();
    let second = f.scope_pins("agent-1");
    assert_eq!(second.len(), per_scope, "{second:?}");
    assert!(second.iter().all(|p| !first.contains(p)), "{second:?}");
    let suffixes: std::collections::HashSet<&str> = second
        .iter()
        .map(|p| p.rsplit_once('-').unwrap().1)
        .collect();
    assert_eq!(suffixes.len(), 1, "{second:?}");
    assert_eq!(f.kernel().missing_links(), Vec::<String>::new());
    for t in [
        bpf_attach_type::BPF_CGROUP_INET4_CONNECT,
        bpf_attach_type::BPF_CGROUP_INET_EGRESS,
        bpf_attach_type::BPF_CGROUP_SETSOCKOPT,
    ] {
        eventually("exactly one program of each type on the scope", || {
            attached(&scope, t, false).len() == 1
        });
    }
    f.kernel().settle_scope_levels().unwrap();
    assert_eq!(
        f.kernel().scope_levels().unwrap(),
        (1 << f.opts.agent_level) | scope_bit
    );
    assert_eq!(
        p.errno(&format!("tcp4 127.0.0.1:{b}")).as_deref(),
        Some("EPERM")
    );
    assert_eq!(p.errno(&format!("tcp4 127.0.0.1:{a}")), None);

    hammer.send("stop");
    let r = hammer.reply();
    assert!(r["tries"].as_u64().unwrap() > 10, "{r}");
    assert_eq!(r["passed"], 0, "{r}");
    assert!(f.denied(id) > 10);

    f.kernel().detach_scope("agent-1");
    assert!(f.scope_pins("agent-1").is_empty());
}

/// `r0 = 0; exit`: a connect4 program that refuses every connect.
fn refuse_all_connect4() -> OwnedFd {
    let insn = |code: u8, imm: i32| bpf_insn {
        code,
        _bitfield_align_1: [],
        _bitfield_1: bpf_insn::new_bitfield_1(0, 0),
        off: 0,
        imm,
    };
    const PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
    sys::prog_load(
        PROG_TYPE_CGROUP_SOCK_ADDR,
        bpf_attach_type::BPF_CGROUP_INET4_CONNECT as u32,
        &[insn(0xb7, 0), insn(0x95, 0)],
        "guard_test_deny",
    )
    .map_err(|(e, log)| format!("{e}: {log}"))
    .unwrap()
}

/// `BPF_PROG_ATTACH` with `flags`, as a container runtime would attach.
fn prog_attach(prog: BorrowedFd<'_>, cgroup: &Path, flags: u32) {
    let cg = std::fs::File::open(cgroup).unwrap();
    // SAFETY: all-zero is a valid `bpf_attr`.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the `BPF_PROG_ATTACH` member of the union we own.
    let u = unsafe { &mut attr.__bindgen_anon_5 };
    u.__bindgen_anon_1.target_fd = cg.as_raw_fd() as u32;
    u.attach_bpf_fd = prog.as_raw_fd() as u32;
    u.attach_type = bpf_attach_type::BPF_CGROUP_INET4_CONNECT as u32;
    u.attach_flags = flags;
    // SAFETY: `attr` is a valid `bpf_attr` for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_PROG_ATTACH as libc::c_long,
            &mut attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn what_ancestors_attached_decides_whether_a_scope_can_be_attached() {
    let mut f = Fixture::load();
    let allowed = Listener::tcp("127.0.0.1");
    let a = allowed.port;
    let deny = refuse_all_connect4();
    let before = f.kernel().scope_levels().unwrap();

    // An ancestor's exclusive program allows nothing below it: refused,
    // naming the program and the cgroup, and nothing is left behind.
    let excl = f.outer_dir("excl");
    prog_attach(deny.as_fd(), &excl, 0);
    let scope = f.outer_dir("excl/agent-e");
    let e = f.kernel().attach_scope(&scope, "agent-e").unwrap_err();
    assert!(
        matches!(
            e,
            KernelError::ScopeAttach {
                name: "guard_connect4",
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains(&scope.display().to_string()), "{msg}");
    assert!(msg.contains("BPF_F_ALLOW_MULTI"), "{msg}");
    assert!(!f.opts.pin_dir.join("links/scopes/agent-e").exists());
    assert_eq!(f.kernel().scope_levels().unwrap(), before);
    assert_eq!(f.kernel().missing_links(), Vec::<String>::new());

    // One attached with BPF_F_ALLOW_OVERRIDE would stop running in the
    // scope: refused too, rather than switched off.
    let over = f.outer_dir("over");
    prog_attach(deny.as_fd(), &over, BPF_F_ALLOW_OVERRIDE);
    let scope = f.outer_dir("over/agent-o");
    let e = f.kernel().attach_scope(&scope, "agent-o").unwrap_err();
    assert!(
        matches!(
            e,
            KernelError::ScopeOverride {
                name: "guard_connect4",
                ..
            }
        ),
        "{e}"
    );
    assert!(f.scope_pins("agent-o").is_empty());
    assert!(attached(&scope, bpf_attach_type::BPF_CGROUP_INET4_CONNECT, false).is_empty());
    assert_eq!(f.kernel().scope_levels().unwrap(), before);

    // With BPF_F_ALLOW_MULTI, both run: the ancestor's program refuses what
    // guard's rules allow.
    let multi = f.outer_dir("multi");
    prog_attach(deny.as_fd(), &multi, BPF_F_ALLOW_MULTI);
    let theirs = attached(&multi, bpf_attach_type::BPF_CGROUP_INET4_CONNECT, false);
    let scope = f.outer_dir("multi/agent-m");
    let (id, _) = f.agent(3, &scope, a);
    f.kernel().attach_scope(&scope, "agent-m").unwrap();
    let running = attached(&scope, bpf_attach_type::BPF_CGROUP_INET4_CONNECT, true);
    // Ours and theirs (and whatever the host attached to the root).
    assert!(running.len() >= 2, "{running:?}");
    assert!(running.contains(&theirs[0]), "{running:?} {theirs:?}");
    let mut p = Proc::spawn();
    p.move_to(&scope);
    assert_eq!(
        p.errno(&format!("tcp4 127.0.0.1:{a}")).as_deref(),
        Some("EPERM")
    );
    assert_eq!(f.denied(id), 0);
    f.kernel().detach_scope("agent-m");

    // What cannot be a scope outside the parent, or a key.
    let inside = f.parent_dir("agent-x");
    let e = f.kernel().attach_scope(&inside, "agent-x").unwrap_err();
    assert!(matches!(e, KernelError::ScopeCgroup { .. }), "{e}");
    let e = f
        .kernel()
        .attach_scope(Path::new("/tmp"), "tmp")
        .unwrap_err();
    assert!(matches!(e, KernelError::ScopeCgroup { .. }), "{e}");
    let nope = f.outer.join("nope");
    let e = f.kernel().attach_scope(&nope, "nope").unwrap_err();
    assert!(matches!(e, KernelError::Cgroup { .. }), "{e}");
    let e = f.kernel().attach_scope(&scope, "a/b").unwrap_err();
    assert!(matches!(e, KernelError::ScopeKey(_)), "{e}");
    assert_eq!(f.kernel().scope_levels().unwrap(), before);
    assert_eq!(f.kernel().missing_links(), Vec::<String>::new());
}
