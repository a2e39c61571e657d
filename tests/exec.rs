//! Issue 7: no program runs unless `exec` grants it, by any route. Each
//! route around the exec grants is tried by a real agent on the real kernel,
//! refused, and journaled exactly once (kind `exec`, the deciding layer
//! named); ordinary work (python with C extensions, git, shell pipelines)
//! still runs. Also: the agent dies with a killed guardctl, whoever it runs
//! as.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

/// Python, the loader (from `base`), `/bin/true`; `/usr/bin/id` readable
/// but not executable; the workspace readable, `out/` and `{tmp}` writable.
const POLICY: &str = r#"[policy]
name = "exec-routes"
include = ["base", "python"]

[filesystem]
read = ["{workdir}", "/usr/bin/id"]
write = ["{workdir}/out", "{tmp}"]
exec = ["/bin/true", "/usr/bin/true"]
"#;

const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";

/// Helpers every route script starts with. `hold()` keeps the process a
/// moment after a refusal so guardd can still read its descriptors when it
/// names the refused file.
const PRELUDE: &str = r#"
import ctypes, os, shutil, subprocess, sys, time
def hold():
    time.sleep(0.5)
def memfd_with(path):
    fd = os.memfd_create("payload", 0)
    with open(path, "rb") as f:
        os.write(fd, f.read())
    return fd
"#;

fn workspace(g: &Guardd) -> PathBuf {
    let w = g.dir.path().join("work");
    std::fs::create_dir_all(w.join("out")).unwrap();
    w
}

/// Runs `script` (after `PRELUDE`) as the agent under `POLICY`; returns the
/// output and the agent's journal records.
fn route(g: &Guardd, work: &Path, script: &str) -> (std::process::Output, Vec<Value>) {
    let p = g.write_policy("exec-routes", POLICY);
    let code = format!("{PRELUDE}\n{script}");
    let out = g.run_in(&p, &[], &[PYTHON, "-c", &code], work);
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out)]);
    (out, recs)
}

/// The one refused exec record of a route: exactly one, with its layer.
fn one_refusal<'a>(recs: &'a [Value], layer: &str) -> &'a Value {
    let refused: Vec<&Value> = recs
        .iter()
        .filter(|r| r["kind"] == "exec" && r["verdict"] == "denied")
        .collect();
    assert_eq!(refused.len(), 1, "expected one refused exec: {refused:#?}");
    assert_eq!(refused[0]["layer"], layer, "{:#}", refused[0]);
    assert!(
        refused[0]["rule"].as_str().is_some_and(|r| !r.is_empty()),
        "{:#}",
        refused[0]
    );
    refused[0]
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_loader_cannot_run_a_file_the_agent_wrote() {
    let g = Guardd::start();
    let work = workspace(&g);
    let (out, recs) = route(
        &g,
        &work,
        &format!(
            "shutil.copyfile('/usr/bin/id', 'out/prog')\n\
             r = subprocess.run(['{LOADER}', 'out/prog'], capture_output=True)\n\
             print('rc', r.returncode)"
        ),
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains("rc -9"), "{}", describe(&out));
    let r = one_refusal(&recs, "exec-tracepoint");
    assert_eq!(r["rule"], "exec.loader-direct");
    assert_eq!(r["detail"]["argv"][1], "out/prog");
}

#[test]
fn the_loader_cannot_run_a_readable_program_outside_exec() {
    let g = Guardd::start();
    let work = workspace(&g);
    let (out, recs) = route(
        &g,
        &work,
        &format!(
            "r = subprocess.run(['{LOADER}', '/usr/bin/id'], capture_output=True)\n\
             print('rc', r.returncode, r.stdout)"
        ),
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains("rc -9 b''"), "{}", describe(&out));
    let r = one_refusal(&recs, "exec-tracepoint");
    assert_eq!(r["detail"]["argv"][1], "/usr/bin/id");
}

#[test]
fn a_memfd_cannot_be_executed_by_descriptor() {
    let g = Guardd::start();
    let work = workspace(&g);
    // execveat(fd, "", AT_EMPTY_PATH), which os.execve(fd) is.
    let (out, recs) = route(
        &g,
        &work,
        "fd = memfd_with('/usr/bin/id')\n\
         try:\n    os.execve(fd, ['id'], {})\n\
         except OSError as e:\n    print('errno', e.errno)\n\
         hold()",
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains("errno 13"), "{}", describe(&out));
    let r = one_refusal(&recs, "memfd-noexec");
    assert_eq!(r["rule"], "exec.memfd-noexec");
    assert!(
        r["target"].as_str().unwrap().starts_with("/memfd:payload"),
        "{r:#}"
    );
}

#[test]
fn a_memfd_cannot_be_executed_by_proc_path() {
    let g = Guardd::start();
    let work = workspace(&g);
    let (out, recs) = route(
        &g,
        &work,
        "fd = memfd_with('/usr/bin/id')\n\
         try:\n    os.execv(f'/proc/self/fd/{fd}', ['id'])\n\
         except OSError as e:\n    print('errno', e.errno)\n\
         hold()",
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains("errno 13"), "{}", describe(&out));
    let r = one_refusal(&recs, "memfd-noexec");
    assert!(
        r["target"].as_str().unwrap().starts_with("/memfd:payload"),
        "{r:#}"
    );
}

#[test]
fn the_loader_cannot_run_a_memfd() {
    let g = Guardd::start();
    let work = workspace(&g);
    let (out, recs) = route(
        &g,
        &work,
        &format!(
            "fd = memfd_with('/usr/bin/id')\n\
             r = subprocess.run(['{LOADER}', f'/proc/self/fd/{{fd}}'], pass_fds=[fd], capture_output=True)\n\
             print('rc', r.returncode, r.stdout)"
        ),
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains("rc -9 b''"), "{}", describe(&out));
    one_refusal(&recs, "exec-tracepoint");
}

#[test]
fn an_executable_memfd_cannot_be_created() {
    let g = Guardd::start();
    let work = workspace(&g);
    let (out, recs) = route(
        &g,
        &work,
        "libc = ctypes.CDLL(None, use_errno=True)\n\
         fd = libc.memfd_create(b'x', 0x10)\n\
         print('fd', fd, ctypes.get_errno())\n\
         # Without flags a memfd is created sealed non-executable.\n\
         fd = os.memfd_create('y', 0)\n\
         print('mode', oct(os.fstat(fd).st_mode & 0o777))",
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains("fd -1 1"), "{}", describe(&out));
    assert!(stdout(&out).contains("mode 0o666"), "{}", describe(&out));
    let r = one_refusal(&recs, "seccomp");
    assert_eq!(r["rule"], "syscalls.memfd-exec");
}

#[test]
fn a_copy_of_a_granted_program_cannot_run() {
    let g = Guardd::start();
    let work = workspace(&g);
    let (out, recs) = route(
        &g,
        &work,
        "shutil.copy2('/usr/bin/python3.11', 'out/py')\n\
         try:\n    subprocess.run(['out/py', '-c', '1'])\n\
         except OSError as e:\n    print('errno', e.errno)",
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains("errno 13"), "{}", describe(&out));
    let r = one_refusal(&recs, "landlock");
    assert!(r["target"].as_str().unwrap().ends_with("out/py"), "{r:#}");
}

#[test]
fn a_copy_in_tmp_or_an_unlinked_tmpfile_cannot_run() {
    let g = Guardd::start();
    let work = workspace(&g);
    // O_TMPFILE in {tmp}: never linked, then run through /proc/self/fd.
    let (out, recs) = route(
        &g,
        &work,
        "fd = os.open(os.environ['TMPDIR'], os.O_TMPFILE | os.O_WRONLY, 0o755)\n\
         os.write(fd, open('/usr/bin/id', 'rb').read())\n\
         try:\n    os.execv(f'/proc/self/fd/{fd}', ['id'])\n\
         except OSError as e:\n    print('errno', e.errno)\n\
         hold()",
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains("errno 13"), "{}", describe(&out));
    one_refusal(&recs, "landlock");
}

#[test]
fn a_shared_object_the_agent_wrote_cannot_be_loaded() {
    let g = Guardd::start();
    let work = workspace(&g);
    // dlopen maps it executable: refused on the noexec mount.
    let (out, recs) = route(
        &g,
        &work,
        "shutil.copyfile('/usr/lib/x86_64-linux-gnu/libz.so.1', 'out/libevil.so')\n\
         fd = os.open('out/libevil.so', os.O_RDONLY)\n\
         try:\n    ctypes.CDLL(f'/proc/self/fd/{fd}')\n    print('loaded')\n\
         except OSError as e:\n    print('refused', e)\n\
         hold()",
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains("refused"), "{}", describe(&out));
    let r = one_refusal(&recs, "mount-noexec");
    assert_eq!(r["rule"], "exec.noexec-mapping");
    assert_eq!(r["action"], "map-exec");
}

#[test]
fn python_with_c_extensions_and_its_children_work() {
    let g = Guardd::start();
    let work = workspace(&g);
    let (out, recs) = route(
        &g,
        &work,
        "import _ssl, json, sqlite3, hashlib, zlib\n\
         print('imports ok')\n\
         # A child process reads its own /proc/self.\n\
         r = subprocess.run([sys.executable, '-c', \"print(open('/proc/self/status').readline().strip())\"],\n\
                            capture_output=True, text=True)\n\
         print('child', r.returncode, r.stdout.strip(), r.stderr.strip())\n\
         print('self', open('/proc/self/status').readline().strip())\n\
         print('true', subprocess.run(['/bin/true']).returncode)\n\
         # Only the agent's processes and its pid-1 reaper.\n\
         print('pids', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))",
    );
    assert!(out.status.success(), "{}", describe(&out));
    let s = stdout(&out);
    assert!(s.contains("imports ok"), "{}", describe(&out));
    assert!(s.contains("child 0 Name:\tpython3"), "{}", describe(&out));
    assert!(s.contains("self Name:\tpython3"), "{}", describe(&out));
    assert!(s.contains("true 0"), "{}", describe(&out));
    let pids = s.lines().find(|l| l.starts_with("pids ")).unwrap();
    assert!(pids.starts_with("pids [1, 2"), "{pids}");
    let denied: Vec<&Value> = recs.iter().filter(|r| r["verdict"] == "denied").collect();
    assert!(denied.is_empty(), "{denied:#?}");
}

#[test]
fn git_and_shell_pipelines_work_under_the_example_policy() {
    let g = Guardd::start();
    let work = g.dir.path().join("repo");
    std::fs::create_dir_all(&work).unwrap();
    let policy = repo().join("policies/coding-agent.toml");
    let script = "printf 'b\\na\\n' | sort | head -1 > first.txt && \
                  git init -q . && git add first.txt && \
                  git -c user.name=agent -c user.email=agent@example.com commit -qm first && \
                  git log --oneline | wc -l && cat first.txt && \
                  /usr/bin/python3 -c 'import sqlite3, _ssl; print(\"py\")'";
    let out = g.run_in(&policy, &[], &["/bin/sh", "-c", script], &work);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out).trim(), "1\na\npy", "{}", describe(&out));
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out), "--verdict", "denied"]);
    assert!(recs.is_empty(), "{recs:#?}");
}

/// `sleep` processes whose arguments hold `marker` (not guardctl, whose
/// command line holds it too).
fn processes_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .collect()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// guardd is gone (so it cannot end the scope), then guardctl is killed:
/// only the death signal can take the agent with it.
fn agent_dies_with_guardctl(policy: &str, n: u32) {
    let mut g = Guardd::start();
    let p = g.write_policy("pdeath", policy);
    let marker = format!("{}.{n}", 5000 + std::process::id() % 1000);
    let mut ctl = g.spawn_run(&p, &[], &["/usr/bin/sleep", &marker]);
    wait_until("the agent runs", || !processes_with(&marker).is_empty());
    let agent = processes_with(&marker)[0];
    let uid = std::fs::read_to_string(format!("/proc/{agent}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    assert_ne!(uid, "0", "the agent should run as nobody");
    g.crash();
    let _ = ctl.kill();
    let _ = ctl.wait();
    wait_until("the agent is gone", || processes_with(&marker).is_empty());
}

#[test]
fn the_agent_dies_with_guardctl_when_it_runs_as_another_user() {
    // With exec confinement (a [filesystem] table): the pid-1 reaper.
    agent_dies_with_guardctl(
        "[policy]\nname = \"pdeath\"\ninclude = [\"base\", \"shell\"]\n[filesystem]\nread = [\"/tmp\"]\n[process]\nuser = \"nobody\"\n",
        1,
    );
    // Without (files unrestricted): the agent is the launcher's child.
    agent_dies_with_guardctl(
        "[policy]\nname = \"pdeath\"\n[process]\nuser = \"nobody\"\n",
        2,
    );
}

/// Through the pid-1 reaper: a signal sent to guardctl reaches the agent,
/// and guardctl exits with the agent's status (a code, or 128 + the signal
/// that killed it).
#[test]
fn signals_and_exit_status_pass_through_the_reaper() {
    let g = Guardd::start();
    let work = workspace(&g);
    let p = g.write_policy("exec-routes", POLICY);
    let wait_ready = |ctl: &mut std::process::Child| {
        use std::io::Read;
        let mut b = [0u8; 6];
        ctl.stdout.as_mut().unwrap().read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ready\n");
    };
    for (handler, want) in [(true, 7), (false, 128 + libc::SIGTERM)] {
        let script = format!(
            "import signal, sys, time\n\
             if {}: signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n\
             print('ready', flush=True)\n\
             time.sleep(30)",
            if handler { "True" } else { "False" }
        );
        let mut ctl = g
            .run_cmd(&p, &[], &[PYTHON, "-c", script.as_str()])
            .current_dir(&work)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_ready(&mut ctl);
        // SAFETY: signalling the guardctl this test started, by pid.
        unsafe { libc::kill(ctl.id() as i32, libc::SIGTERM) };
        let out = ctl.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(want), "{}", describe(&out));
    }
    let out = g.run_in(&p, &[], &[PYTHON, "-c", "raise SystemExit(42)"], &work);
    assert_eq!(out.status.code(), Some(42), "{}", describe(&out));
}

/// A policy without a `[filesystem]` table restricts no program: the loader
/// may be run directly there (`ldd` works), and the agent shares the host's
/// views.
#[test]
fn unrestricted_policies_keep_the_loader() {
    let g = Guardd::start();
    let p = g.write_policy("open", "[policy]\nname = \"open\"\n");
    let out = g.run(&p, &[], &[LOADER, "/bin/true"]);
    assert!(out.status.success(), "{}", describe(&out));
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out), "--verdict", "denied"]);
    assert!(recs.is_empty(), "{recs:#?}");
}

/// Fail closed: a launcher that cannot create the namespaces (root without
/// CAP_SYS_ADMIN) refuses to start the agent and names the step; with
/// `--allow-degraded exec` it runs without them and the start record says so.
#[test]
fn without_namespaces_the_launch_fails_closed_unless_accepted() {
    let g = Guardd::start();
    let work = workspace(&g);
    let p = g.write_policy("exec-routes", POLICY);
    let run = |extra: &[&str]| {
        let mut c = std::process::Command::new("/usr/bin/setpriv");
        c.args(["--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--"])
            .arg(GUARDCTL)
            .env("GUARD_SOCKET", &g.socket)
            .current_dir(&work)
            .args(run_args(&p, extra, &["/bin/true"]));
        c.output().unwrap()
    };
    let out = run(&[]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exec confinement: creating the agent's mount and pid namespaces")
            && err.contains("--allow-degraded exec"),
        "{}",
        describe(&out)
    );
    let out = run(&["--allow-degraded", "exec"]);
    assert!(out.status.success(), "{}", describe(&out));
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out), "--kind", "lifecycle"]);
    let start = recs.iter().find(|r| r["action"] == "start").unwrap();
    assert!(
        start["detail"]["launcher_notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n
                .as_str()
                .unwrap()
                .starts_with("exec confinement unavailable")),
        "{start:#}"
    );
}

#[test]
fn doctor_reports_the_exec_confinement() {
    let g = Guardd::start();
    let out = g.ctl(&["doctor", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let l = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["layer"] == "exec confinement")
        .unwrap_or_else(|| panic!("{v:#}"));
    assert_eq!(l["status"], "enforced", "{l}");
}

#[test]
fn the_loader_cannot_be_run_under_another_name() {
    let g = Guardd::start();
    let work = workspace(&g);
    // A symlink the agent plants: the exec tracepoint compares inodes.
    let (out, recs) = route(
        &g,
        &work,
        &format!(
            "os.symlink('{LOADER}', 'out/ld')\n\
             r = subprocess.run(['out/ld', '/usr/bin/id'], capture_output=True)\n\
             print('rc', r.returncode, r.stdout)"
        ),
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(stdout(&out).contains("rc -9 b''"), "{}", describe(&out));
    one_refusal(&recs, "exec-tracepoint");
}

#[test]
fn a_preloaded_library_the_agent_wrote_is_not_mapped() {
    let g = Guardd::start();
    let work = workspace(&g);
    // The granted program runs; the library is refused (the loader ignores
    // a preload it cannot map).
    let (out, recs) = route(
        &g,
        &work,
        "shutil.copyfile('/usr/lib/x86_64-linux-gnu/libz.so.1', 'out/libpre.so')\n\
         r = subprocess.run(['/bin/true'], env={'LD_PRELOAD': os.path.abspath('out/libpre.so')},\n\
                            capture_output=True, text=True)\n\
         print('rc', r.returncode, r.stderr.strip())",
    );
    assert!(out.status.success(), "{}", describe(&out));
    let s = stdout(&out);
    assert!(
        s.contains("rc 0") && s.contains("cannot be preloaded"),
        "{}",
        describe(&out)
    );
    one_refusal(&recs, "mount-noexec");
}
