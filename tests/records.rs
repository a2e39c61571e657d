//! Every refusal is in the journal, with its layer and rule, including the
//! ones that leave no failed system call behind (a process seccomp kills),
//! errors other than EPERM/EACCES (Landlock's EXDEV), and refusals of
//! options and control messages of an allowed address. Root, real kernel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;

fn policy(g: &Guardd, name: &str, extra: &str) -> std::path::PathBuf {
    g.write_policy(
        name,
        &format!(
            "[policy]\nname = \"{name}\"\ninclude = [\"base\", \"python\"]\n{extra}\n[filesystem]\nread = [{:?}]\n",
            repo().join("tests/agents").display().to_string()
        ),
    )
}

/// A 32-bit system call (`int 0x80`, getpid in the i386 table) from
/// executable memory: seccomp kills the whole process for it.
const I386_SYSCALL: &str = r#"
import ctypes, mmap
code = bytes([0xb8, 0x14, 0, 0, 0, 0xcd, 0x80, 0xc3])  # mov eax,20; int 0x80; ret
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(code)
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
print("calling", flush=True)
ctypes.CFUNCTYPE(ctypes.c_int)(addr)()
print("survived", flush=True)
"#;

#[test]
fn a_process_killed_by_seccomp_is_journaled() {
    let g = Guardd::start();
    let p = policy(&g, "arch", "");
    let out = g.run(&p, &[], &[PYTHON, "-c", I386_SYSCALL]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("calling"), "{}", describe(&out));
    assert!(!stdout.contains("survived"), "{}", describe(&out));
    // SIGSYS: 128 + 31.
    assert_eq!(out.status.code(), Some(128 + 31), "{}", describe(&out));
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out), "--kind", "syscall"]);
    let kills: Vec<&Value> = recs.iter().filter(|r| r["action"] == "killed").collect();
    assert_eq!(kills.len(), 1, "{recs:#?}");
    let k = kills[0];
    assert_eq!(k["layer"], "seccomp");
    assert_eq!(k["rule"], "syscalls.architecture");
    assert_eq!(k["verdict"], "denied");
    assert_eq!(k["detail"]["arch"], "i386");
    assert_eq!(k["detail"]["syscall"], 20);
    assert!(
        k["process"]["exe"]
            .as_str()
            .is_some_and(|e| e.contains("python")),
        "{k}"
    );
}

#[test]
fn a_sigsys_the_agent_sends_itself_is_not_a_seccomp_kill() {
    let g = Guardd::start();
    let p = policy(&g, "forge", "");
    // rt_sigqueueinfo to itself with si_code SYS_SECCOMP: the kernel lets
    // a process do this to itself, so only the seccomp state can tell.
    let script = r#"
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
info = (ctypes.c_int * 32)()
info[0] = signal.SIGSYS; info[1] = 0; info[2] = 1   # si_signo, si_errno, si_code = SYS_SECCOMP
info[6] = 20; info[7] = 0x40000003                    # _syscall, _arch
signal.signal(signal.SIGSYS, lambda *a: print("handled", flush=True))
print(libc.syscall(129, os.getpid(), signal.SIGSYS, ctypes.byref(info)), flush=True)
"#;
    let out = g.run(&p, &[], &[PYTHON, "-c", script]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("handled"),
        "{}",
        describe(&out)
    );
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out)]);
    assert!(
        recs.iter().all(|r| r["action"] != "killed"),
        "a forged SIGSYS must not read as a seccomp kill: {recs:#?}"
    );
}

#[test]
fn landlock_exdev_and_refused_control_messages_are_journaled() {
    let g = Guardd::start();
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    let b = work.path().join("b");
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    // b is read-write (write implies read), a read-write-exec: a file moved
    // or linked from b into a would gain exec, which Landlock refuses with
    // EXDEV.
    std::fs::write(b.join("f"), "x").unwrap();
    let (_sink, port) = udp_sink("[::1]");
    let p = g.write_policy(
        "exdev",
        &format!(
            "[policy]\nname = \"exdev\"\ninclude = [\"base\", \"python\"]\n\
             [network]\nallow = [{{ cidr = \"::1/128\", ports = [{port}], protocol = \"udp\" }}]\n\
             [filesystem]\nread = [{agents:?}, {a:?}]\nwrite = [{a:?}, {b:?}]\n\
             exec = [{a:?}]\nallow_write_exec = true\n",
            agents = repo().join("tests/agents").display().to_string(),
            a = a.display().to_string(),
            b = b.display().to_string(),
        ),
    );
    let script = format!(
        r#"
import errno, json, os, socket
res = {{}}
def attempt(name, f):
    try:
        f(); res[name] = None
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e.errno))
attempt("rename", lambda: os.rename({b:?} + "/f", {a:?} + "/f"))
attempt("link", lambda: os.link({b:?} + "/f", {a:?} + "/g"))
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
attempt("plain", lambda: s.sendto(b"x", ("::1", {port})))
hop = bytes([0, 0, 1, 4, 0, 0, 0, 0])   # hop-by-hop header with a PadN option
attempt("hopopts", lambda: s.sendmsg([b"x"], [(socket.IPPROTO_IPV6, socket.IPV6_HOPOPTS, hop)], 0, ("::1", {port})))
attempt("mark", lambda: s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 7))
import subprocess
attempt("exec", lambda: subprocess.call(["/usr/bin/id"]))
print(json.dumps(res))
"#,
        a = a.display().to_string(),
        b = b.display().to_string(),
    );
    let out = g.run(&p, &[], &[PYTHON, "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout);
    let res: Value = serde_json::from_str(text.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|_| panic!("{}", describe(&out)));
    assert_eq!(res["rename"], "EXDEV", "{res}\n{}", describe(&out));
    assert_eq!(res["link"], "EXDEV", "{res}");
    assert_eq!(res["plain"], Value::Null, "{res}");
    assert_eq!(res["hopopts"], "EPERM", "{res}");
    assert_eq!(res["mark"], "EPERM", "{res}");
    assert_eq!(res["exec"], "EACCES", "{res}");
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out), "--verdict", "denied"]);
    let refer: Vec<&Value> = recs
        .iter()
        .filter(|r| r["rule"] == "filesystem.refer")
        .collect();
    assert_eq!(refer.len(), 2, "{recs:#?}");
    assert!(refer.iter().all(|r| r["layer"] == "landlock"));
    assert!(refer.iter().any(|r| r["action"] == "rename"));
    let cmsg: Vec<&Value> = recs
        .iter()
        .filter(|r| r["kind"] == "network" && r["action"] == "sendmsg")
        .collect();
    assert_eq!(cmsg.len(), 1, "{recs:#?}");
    assert_eq!(cmsg[0]["layer"], "capabilities");
    assert!(
        recs.iter()
            .any(|r| r["action"] == "setsockopt" && r["layer"] == "capabilities"),
        "{recs:#?}"
    );
    // Every refusal names the program that made it.
    for r in &recs {
        assert!(
            r["process"]["exe"]
                .as_str()
                .is_some_and(|e| e.contains("python")),
            "process.exe must be filled: {r}"
        );
    }
    // The summary counts them all.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("{} denied", recs.len())),
        "{}\n{recs:#?}",
        describe(&out)
    );
}

#[test]
fn a_hook_refusal_is_journaled_once() {
    // The hook records a refused connect; sys_exit must not record it again,
    // and an allowed connect after it must not inherit its mark.
    let g = Guardd::start();
    let ok = Listener::tcp("127.0.0.1");
    let p = policy(
        &g,
        "once",
        &format!(
            "[network]\nallow = [{{ cidr = \"127.0.0.1/32\", ports = [{}], protocol = \"tcp\" }}]",
            ok.port
        ),
    );
    let bad = closed_port();
    let out = g.run(
        &p,
        &[],
        &[
            PYTHON,
            &agent_script("netprobe.py"),
            &format!("tcp:127.0.0.1:{bad}"),
            &format!("tcp:127.0.0.1:{}", ok.port),
        ],
    );
    let res = probe_results(&out);
    assert_eq!(
        errno_of(&res, &format!("tcp:127.0.0.1:{bad}")).as_deref(),
        Some("EPERM")
    );
    assert_eq!(errno_of(&res, &format!("tcp:127.0.0.1:{}", ok.port)), None);
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out), "--verdict", "denied"]);
    let connects: Vec<&Value> = recs.iter().filter(|r| r["action"] == "connect").collect();
    assert_eq!(connects.len(), 1, "{recs:#?}");
    assert_eq!(connects[0]["layer"], "cgroup-bpf");
}
