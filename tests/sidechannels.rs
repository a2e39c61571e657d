//! Issue 8: routes out of the scope that do not go through the network,
//! file or exec grants. Outside processes (pid namespace), metadata outside
//! the write grants (read-only views), host IPC (IPC namespace) and the
//! agent's own cgroup (read-only cgroup file systems, cgroup namespace).
//! Each route is tried by a real agent against real host objects, refused,
//! the host object checked unchanged, and the refusal found in the journal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

/// Python with a workspace; `out/` and `{tmp}` writable.
const POLICY: &str = r#"[policy]
name = "sidechannels"
include = ["base", "python"]

[filesystem]
read = ["{workdir}"]
write = ["{workdir}/out", "{tmp}"]
"#;

/// Every script starts with these: `t(op, f)` runs `f` and prints one JSON
/// line with the errno it failed with (null on success).
const PRELUDE: &str = r#"
import ctypes, errno, json, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r
def t(op, f):
    try:
        v = f()
        print(json.dumps({"op": op, "errno": None, "value": str(v)}), flush=True)
    except OSError as e:
        print(json.dumps({"op": op, "errno": errno.errorcode.get(e.errno, str(e.errno))}), flush=True)
"#;

fn workspace(g: &Guardd) -> PathBuf {
    let w = g.dir.path().join("work");
    std::fs::create_dir_all(w.join("out")).unwrap();
    w
}

fn script(
    g: &Guardd,
    policy: &Path,
    work: &Path,
    body: &str,
) -> (std::process::Output, Vec<Value>) {
    let code = format!("{PRELUDE}\n{body}\ntime.sleep(0.3)\n");
    let out = g.run_in(policy, &[], &[PYTHON, "-c", &code], work);
    assert!(out.status.success(), "{}", describe(&out));
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out)]);
    (out, recs)
}

fn results(out: &std::process::Output) -> BTreeMap<String, Option<String>> {
    probe_results(out)
        .into_iter()
        .map(|r| {
            (
                r["op"].as_str().unwrap().to_owned(),
                r["errno"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn denied<'a>(recs: &'a [Value], action: &str) -> Vec<&'a Value> {
    recs.iter()
        .filter(|r| r["verdict"] == "denied" && r["action"] == action)
        .collect()
}

/// A host process the agent must not reach; killed and reaped on drop.
struct Outside(Child);

impl Outside {
    fn start() -> Outside {
        use std::os::unix::process::CommandExt;
        Outside(
            Command::new("sleep")
                .arg("120")
                .process_group(0)
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn limits(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap()
}

/// Nice value (field 19 of /proc/PID/stat) and I/O priority.
fn nice(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(16).unwrap().to_owned()
}

fn affinity(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("Cpus_allowed_list") || l.starts_with("Mems_allowed_list"))
        .collect::<Vec<_>>()
        .join(";")
}

#[test]
fn outside_processes_cannot_be_reached() {
    let g = Guardd::start();
    let work = workspace(&g);
    let p = g.write_policy("sidechannels", POLICY);
    let sleep = Outside::start();
    let guardd = g.pid();
    let before: Vec<(String, String, String)> = [sleep.pid(), guardd]
        .iter()
        .map(|&p| (limits(p), nice(p), affinity(p)))
        .collect();
    let mut body = String::new();
    for (who, pid) in [("sleep", sleep.pid()), ("guardd", guardd)] {
        body += &format!(
            r#"
pid = {pid}
lim = (ctypes.c_ulong * 2)(3, 3)
old = (ctypes.c_ulong * 2)()
t("{who}:prlimit-read", lambda: sc(302, pid, 7, None, old))
t("{who}:prlimit-nofile", lambda: sc(302, pid, 7, lim, None))
t("{who}:prlimit-cpu", lambda: sc(302, pid, 0, (ctypes.c_ulong * 2)(1, 1), None))
t("{who}:getpgid", lambda: os.getpgid(pid))
t("{who}:getsid", lambda: os.getsid(pid))
mask = (ctypes.c_ulong * 1)(1)
t("{who}:sched_setaffinity", lambda: sc(203, pid, 8, mask))
t("{who}:sched_getaffinity", lambda: sc(204, pid, 8, mask))
param = (ctypes.c_int * 1)(0)
t("{who}:sched_setscheduler", lambda: sc(144, pid, 5, param))
t("{who}:sched_getparam", lambda: sc(143, pid, param))
t("{who}:setpriority-process", lambda: sc(141, 0, pid, 19))
t("{who}:setpriority-pgrp", lambda: sc(141, 1, pid, 19))
t("{who}:ioprio_set", lambda: sc(251, 1, pid, (3 << 13)))
t("{who}:ioprio_get", lambda: sc(252, 1, pid))
buf = ctypes.create_string_buffer(16)
iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 16)
t("{who}:process_vm_readv", lambda: sc(310, pid, iov, 1, iov, 1, 0))
t("{who}:pidfd_open", lambda: sc(434, pid, 0))
t("{who}:kcmp", lambda: sc(312, pid, os.getpid(), 0, 0, 0))
head = (ctypes.c_void_p * 1)()
ln = (ctypes.c_size_t * 1)()
t("{who}:get_robust_list", lambda: sc(274, pid, head, ln))
nodes = (ctypes.c_ulong * 1)(1)
t("{who}:migrate_pages", lambda: sc(256, pid, 64, nodes, nodes))
t("{who}:move_pages", lambda: sc(279, pid, 0, None, None, None, 0))
"#
        );
    }
    // PRIO_USER names every process of a uid: only the agent's own are in
    // its pid namespace, so the outside ones keep their nice value.
    body += r#"
t("prio-user", lambda: sc(141, 2, os.getuid(), 19))
me = sc(434, os.getpid(), 0)
t("pidfd_getfd", lambda: sc(438, me, 0, 0))
"#;
    let (out, recs) = script(&g, &p, &work, &body);
    let res = results(&out);
    for (op, e) in &res {
        if op == "prio-user" {
            continue;
        }
        assert!(
            matches!(e.as_deref(), Some("ESRCH" | "EPERM")),
            "{op} was not refused: {e:?}\n{}",
            describe(&out)
        );
    }
    // Nothing outside changed.
    let after: Vec<(String, String, String)> = [sleep.pid(), guardd]
        .iter()
        .map(|&p| (limits(p), nice(p), affinity(p)))
        .collect();
    assert_eq!(before, after);
    // Every call is journaled; those the pid namespace answered name it.
    for op in res.keys().filter(|o| o.starts_with("sleep:")) {
        let call = op
            .trim_start_matches("sleep:")
            .split('-')
            .next()
            .unwrap()
            .replace("prlimit", "prlimit64");
        assert!(
            !denied(&recs, &call).is_empty(),
            "no refusal of {call} in {recs:#?}"
        );
    }
    let pr = denied(&recs, "prlimit64");
    let target = format!("pid {}", sleep.pid());
    let r = pr
        .iter()
        .find(|r| r["target"] == target.as_str())
        .unwrap_or_else(|| panic!("{pr:#?}"));
    assert_eq!(r["layer"], "pid-namespace");
    assert_eq!(r["rule"], "process.outside-pid");
    assert_eq!(r["kind"], "syscall");
    assert_eq!(denied(&recs, "process_vm_readv")[0]["layer"], "seccomp");
}

#[test]
fn metadata_outside_the_write_grants_does_not_change() {
    let g = Guardd::start();
    let work = workspace(&g);
    let p = g.write_policy("sidechannels", POLICY);
    // Root-owned files outside every grant: the agent runs as root without
    // capabilities, so it owns them as far as DAC is concerned.
    let outside = g.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let tool = outside.join("tool");
    let secret = outside.join("secret");
    std::fs::write(&tool, "#!/bin/sh\n").unwrap();
    std::fs::write(&secret, "TOP SECRET\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let stat = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.mode(), m.uid(), m.gid(), m.mtime(), m.size())
    };
    let (tool0, secret0) = (stat(&tool), stat(&secret));
    let (t, s) = (tool.display(), secret.display());
    let body = format!(
        r#"
t("chmod-setuid", lambda: os.chmod("{t}", 0o4755))
t("chmod-secret", lambda: os.chmod("{s}", 0o666))
t("chown", lambda: os.chown("{t}", 1000, 1000))
t("utime", lambda: os.utime("{t}", (0, 0)))
t("setxattr", lambda: os.setxattr("{t}", "user.guard", b"x"))
t("truncate", lambda: os.truncate("{t}", 0))
t("open-write", lambda: open("{t}", "a").close())
t("read-secret", lambda: open("{s}").read())
t("devnull", lambda: open("/dev/null", "w").write("x"))
t("granted-write", lambda: open("out/x", "w").write("x"))
t("granted-chmod", lambda: os.chmod("out/x", 0o600))
"#
    );
    let (out, recs) = script(&g, &p, &work, &body);
    let res = results(&out);
    for op in [
        "chmod-setuid",
        "chmod-secret",
        "chown",
        "utime",
        "truncate",
        "open-write",
    ] {
        assert_eq!(res[op].as_deref(), Some("EROFS"), "{op}: {res:?}");
    }
    // The xattr family is not in the seccomp allowlist; the read-only view
    // would refuse it next.
    assert_eq!(res["setxattr"].as_deref(), Some("EPERM"), "{res:?}");
    assert_eq!(res["read-secret"].as_deref(), Some("EACCES"), "{res:?}");
    for op in ["devnull", "granted-write", "granted-chmod"] {
        assert_eq!(res[op], None, "{op}: {res:?}");
    }
    assert_eq!(stat(&tool), tool0);
    assert_eq!(stat(&secret), secret0);
    assert!(xattr_absent(&tool));
    // One record per refused call, each naming the read-only view.
    let tool_recs: Vec<&Value> = recs
        .iter()
        .filter(|r| r["verdict"] == "denied" && r["target"] == t.to_string().as_str())
        .collect();
    let actions: Vec<&str> = tool_recs
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(tool_recs.len(), 5, "{tool_recs:#?}");
    for r in &tool_recs {
        assert_eq!(r["layer"], "mount-readonly", "{r:#}");
        assert_eq!(r["rule"], "filesystem.default-deny", "{r:#}");
        assert_eq!(r["kind"], "file", "{r:#}");
    }
    for a in ["chmod", "chown", "utimensat", "truncate", "openat"] {
        assert!(actions.contains(&a), "{a} not in {actions:?}");
    }
    // setxattr: seccomp's record names the call, not the file.
    assert!(
        recs.iter()
            .any(|r| r["action"] == "setxattr" && r["layer"] == "seccomp"),
        "{recs:#?}"
    );
    let chmod = tool_recs.iter().find(|r| r["action"] == "chmod").unwrap();
    assert_eq!(chmod["detail"]["access"], "metadata");
    assert!(
        recs.iter()
            .any(|r| r["target"] == s.to_string().as_str() && r["action"] == "chmod"),
        "{recs:#?}"
    );
}

fn xattr_absent(p: &Path) -> bool {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path and name; no buffer (size query).
    let n = unsafe { libc::getxattr(c.as_ptr(), c"user.guard".as_ptr(), std::ptr::null_mut(), 0) };
    n < 0
}

/// SysV and POSIX IPC objects the host created; removed on drop.
struct HostIpc {
    shm: i32,
    msq: i32,
    mq: Option<std::ffi::CString>,
}

impl Drop for HostIpc {
    fn drop(&mut self) {
        // SAFETY: removing the objects this test created, by id and name.
        unsafe {
            if self.shm >= 0 {
                libc::shmctl(self.shm, libc::IPC_RMID, std::ptr::null_mut());
            }
            if self.msq >= 0 {
                libc::msgctl(self.msq, libc::IPC_RMID, std::ptr::null_mut());
            }
            if let Some(n) = &self.mq {
                libc::mq_unlink(n.as_ptr());
            }
        }
    }
}

#[test]
fn host_ipc_is_not_reachable() {
    let g = Guardd::start();
    let work = workspace(&g);
    let p = g.write_policy("sidechannels", POLICY);
    let key = 0x6775_0000 + (std::process::id() as i32 & 0xffff);
    let mq_name = std::ffi::CString::new(format!("/guard-test-{}", std::process::id())).unwrap();
    // SAFETY: creating IPC objects with constant sizes and modes; the ids
    // are recorded for removal before anything can fail.
    let host = unsafe {
        let mut h = HostIpc {
            shm: libc::shmget(key, 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o600),
            msq: libc::msgget(key, libc::IPC_CREAT | libc::IPC_EXCL | 0o600),
            mq: None,
        };
        let q = libc::mq_open(
            mq_name.as_ptr(),
            libc::O_CREAT | libc::O_RDWR,
            0o600,
            std::ptr::null_mut::<libc::mq_attr>(),
        );
        if q >= 0 {
            libc::mq_close(q);
            h.mq = Some(mq_name.clone());
        }
        h
    };
    assert!(
        host.shm >= 0 && host.msq >= 0,
        "cannot create host IPC objects"
    );
    let body = format!(
        r#"
t("shmget", lambda: sc(29, {key}, 0, 0))
t("shmat-by-id", lambda: sc(30, {shm}, 0, 0))
t("msgget", lambda: sc(68, {key}, 0))
msg = ctypes.create_string_buffer(b"\x01\x00\x00\x00\x00\x00\x00\x00hi")
t("msgsnd-by-id", lambda: sc(69, {msq}, msg, 2, 0o4000))
t("mq_open", lambda: sc(240, b"{mq}", 2, 0, None))
"#,
        shm = host.shm,
        msq = host.msq,
        mq = mq_name.to_str().unwrap().trim_start_matches('/'),
    );
    let (out, recs) = script(&g, &p, &work, &body);
    let res = results(&out);
    assert_eq!(res["shmget"].as_deref(), Some("ENOENT"), "{res:?}");
    assert_eq!(res["msgget"].as_deref(), Some("ENOENT"), "{res:?}");
    assert!(
        matches!(res["shmat-by-id"].as_deref(), Some("EINVAL" | "EIDRM")),
        "{res:?}"
    );
    assert!(
        matches!(res["msgsnd-by-id"].as_deref(), Some("EINVAL" | "EIDRM")),
        "{res:?}"
    );
    // POSIX queues: refused by seccomp, and another mqueue instance
    // besides.
    assert!(
        matches!(res["mq_open"].as_deref(), Some("EPERM" | "ENOENT")),
        "{res:?}"
    );
    if res["mq_open"].as_deref() == Some("EPERM") {
        assert!(!denied(&recs, "mq_open").is_empty(), "{recs:#?}");
    }
    // The host queue is still empty.
    // SAFETY: msqid_ds is plain data; all-zero is a valid value.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: reading the queue's state into a struct we own.
    let rc = unsafe { libc::msgctl(host.msq, libc::IPC_STAT, &mut ds) };
    assert_eq!(rc, 0);
    assert_eq!(ds.msg_qnum, 0);

    // Two agents with one key: the first creates and holds a segment, the
    // second does not find it.
    let other = key ^ 0x5a5a;
    let holder = format!(
        "{PRELUDE}\nt('create', lambda: sc(29, {other}, 4096, 0o1000 | 0o600))\ntime.sleep(4)\n"
    );
    // spawn_run starts in the test's directory: its `out/` must exist.
    std::fs::create_dir_all(g.dir.path().join("out")).unwrap();
    let first = g.spawn_run(&p, &[], &[PYTHON, "-c", &holder]);
    std::thread::sleep(Duration::from_millis(1500));
    let (out2, _) = script(
        &g,
        &p,
        &work,
        &format!("t('find', lambda: sc(29, {other}, 0, 0))"),
    );
    let first_out = first.wait_with_output().unwrap();
    assert_eq!(
        results(&first_out).get("create"),
        Some(&None),
        "{}",
        describe(&first_out)
    );
    assert_eq!(results(&out2)["find"].as_deref(), Some("ENOENT"));
    // Nor did the agent's segment land in the host's namespace.
    // SAFETY: a lookup by key, no creation.
    assert!(unsafe { libc::shmget(other, 0, 0) } < 0);
}

/// A policy without a [filesystem] table: guard's own enforcement must not
/// depend on it.
const NO_FILES: &str = r#"[policy]
name = "no-files"

[process]
max_processes = 64
memory = "512M"
"#;

#[test]
fn the_agent_cannot_leave_its_cgroup_under_any_policy() {
    let g = Guardd::start();
    let p = g.write_policy("no-files", NO_FILES);
    let port = closed_port();
    let body = format!(
        r#"
def own(ctl):
    me = str(os.getpid())
    for d, _, files in os.walk("/sys/fs/cgroup/" + ctl):
        if "cgroup.procs" in files and d != "/sys/fs/cgroup/" + ctl:
            if me in open(d + "/cgroup.procs").read().split():
                return d
    return None
def write(path, text):
    with open(path, "w") as f:
        f.write(text)
t("v2-root", lambda: write("/sys/fs/cgroup/unified/cgroup.procs", str(os.getpid())))
t("v1-pids-root", lambda: write("/sys/fs/cgroup/pids/cgroup.procs", str(os.getpid())))
t("mkdir-root", lambda: os.mkdir("/sys/fs/cgroup/unified/guard-escape"))
pids = own("pids")
print(json.dumps({{"op": "own-pids", "errno": None, "value": pids}}), flush=True)
t("pids.max", lambda: write(pids + "/pids.max", "max"))
mem = own("memory")
t("memory.limit", lambda: write(mem + "/memory.limit_in_bytes", "-1"))
import socket
def conn():
    s = socket.socket()
    s.connect(("127.0.0.1", {port}))
t("connect", conn)
print("READY", flush=True)
time.sleep(60)
"#
    );
    let code = format!("{PRELUDE}\n{body}");
    let mut child = g.spawn_run(&p, &["--name", "cg-escape"], &[PYTHON, "-c", &code]);
    // Wait for the attempts, then end the agent through guardd.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ended = false;
    while Instant::now() < deadline {
        let ps = g.ctl(&["ps"]);
        if String::from_utf8_lossy(&ps.stdout).contains("cg-escape") {
            let recs = g.logs(&["--kind", "network"]);
            if !recs.is_empty() {
                let k = g.ctl(&["kill", "cg-escape"]);
                assert!(k.status.success(), "{}", describe(&k));
                ended = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let done = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > done {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        ended,
        "the agent never reached its connect: {}",
        describe(&out)
    );
    assert!(!out.status.success(), "guardctl kill did not end it");
    let res = results(&out);
    for op in [
        "v2-root",
        "v1-pids-root",
        "mkdir-root",
        "pids.max",
        "memory.limit",
    ] {
        assert!(
            matches!(res[op].as_deref(), Some("EROFS" | "EPERM")),
            "{op}: {res:?}\n{}",
            describe(&out)
        );
    }
    assert_eq!(res["connect"].as_deref(), Some("EPERM"), "{res:?}");
    let recs = g.logs(&["--agent", "cg-escape"]);
    let cg: Vec<&Value> = recs
        .iter()
        .filter(|r| r["rule"] == "process.cgroup-scope")
        .collect();
    assert_eq!(cg.len(), 5, "{cg:#?}");
    assert!(cg.iter().all(|r| r["layer"] == "mount-readonly"));
    assert!(
        recs.iter()
            .any(|r| r["kind"] == "network" && r["verdict"] == "denied"),
        "{recs:#?}"
    );
    assert!(!Path::new("/sys/fs/cgroup/unified/guard-escape").exists());
}
