use guard_common::*;
use guard_daemon::kernel::*;
use std::os::unix::process::CommandExt;
fn main() {
    let parent = std::path::PathBuf::from("/sys/fs/cgroup/unified/guard-smoke");
    std::fs::create_dir_all(&parent).unwrap();
    let opts = KernelOptions {
        parent_cgroup: parent.clone(),
        agent_level: 2,
        pin_dir: "/sys/fs/bpf/guard-smoke".into(),
    };
    let (mut k, mut ring) = Kernel::load(&opts).unwrap();
    let agent = parent.join("a1");
    std::fs::create_dir_all(&agent).unwrap();
    use std::os::unix::fs::MetadataExt;
    let cg = std::fs::metadata(&agent).unwrap().ino();
    let mut v = NetValue::default();
    v.count = 1;
    v.cidr_rule = 0;
    v.ranges[0] = PortRange {
        lo: 8080,
        hi: 8080,
        protos: PROTO_TCP,
        _pad: 0,
        rule: 0,
    };
    let mut path = [0u8; UNIX_PATH_MAX];
    path[..14].copy_from_slice(b"/tmp/smoke.ok\0");
    let keys = k
        .add_agent(
            cg,
            AgentInfo {
                slot: 7,
                flags: 0,
                denied: 0,
                lost: 0,
            },
            &NetEntries {
                v4: &[(32, [127, 0, 0, 1], v)],
                v6: &[],
                unix: &[(path, 0)],
            },
        )
        .unwrap();
    let procs = agent.join("cgroup.procs");
    let script = r#"
import socket, errno
def t(name, f):
    try:
        f(); print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
srv = None
t("tcp 8080", lambda: socket.create_connection(("127.0.0.1", 8080), timeout=1))
t("tcp 8081", lambda: socket.create_connection(("127.0.0.1", 8081), timeout=1))
t("tcp6 mapped 8081", lambda: socket.socket(socket.AF_INET6).connect(("::ffff:127.0.0.1", 8081)))
t("udp send", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", 9999)))
t("raw", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
t("unix ok", lambda: socket.socket(socket.AF_UNIX).connect("/tmp/smoke.ok"))
t("unix no", lambda: socket.socket(socket.AF_UNIX).connect("/tmp/smoke.no"))
t("unix abstract", lambda: socket.socket(socket.AF_UNIX).connect("\0abs"))
"#;
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c").arg(script);
    unsafe {
        cmd.pre_exec(move || {
            std::fs::write(&procs, "0")?;
            Ok(())
        })
    };
    let out = cmd.output().unwrap();
    println!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut n = 0;
    while let Some(item) = ring.next() {
        println!(
            "event {:?}",
            events::decode(&item).map(|e| (e.header().kind, e.header().reason))
        );
        n += 1;
    }
    println!("{n} events; info {:?}", k.agent_info(cg));
    k.remove_agent(&keys);
    std::fs::remove_dir(&agent).unwrap();
    k.unpin_all();
    std::fs::remove_dir(&parent).unwrap();
}
