//! Files, programs, system calls, privileges and limits: the rest of the
//! agent's scope, end to end, each refusal asserted in the journal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

/// A workspace the agent may read (and write in `out/`), holding the probe
/// script.
fn workspace(g: &Guardd) -> PathBuf {
    let w = g.dir.path().join("work");
    std::fs::create_dir_all(w.join("out")).unwrap();
    std::fs::copy(repo().join("tests/agents/probe.py"), w.join("probe.py")).unwrap();
    w
}

const FILES: &str = r#"[policy]
name = "files"
include = ["base", "python"]

[filesystem]
read = ["{workdir}"]
write = ["{workdir}/out", "{tmp}"]
exec = ["/bin/true", "/usr/bin/true"]

[process]
max_processes = 16
"#;

fn probe(
    g: &Guardd,
    policy: &Path,
    work: &Path,
    ops: &[&str],
) -> (std::process::Output, Vec<Value>) {
    let mut cmd = vec![PYTHON, "probe.py"];
    cmd.extend_from_slice(ops);
    let out = g.run_in(policy, &[], &cmd, work);
    let res = probe_results(&out);
    (out, res)
}

fn refusal<'a>(recs: &'a [Value], target: &str) -> &'a Value {
    recs.iter()
        .find(|r| r["verdict"] == "denied" && r["target"] == target)
        .unwrap_or_else(|| panic!("no refusal of {target} in {recs:#?}"))
}

#[test]
fn file_access_outside_the_policy_is_refused_and_journaled() {
    let g = Guardd::start();
    let work = workspace(&g);
    std::fs::create_dir_all(work.join("out")).unwrap();
    std::fs::write(work.join("notes.txt"), "workspace notes\n").unwrap();
    // A secret outside every grant.
    let secret_dir = g.dir.path().join("secret");
    std::fs::create_dir_all(&secret_dir).unwrap();
    let secret = secret_dir.join("key.txt");
    std::fs::write(&secret, "TOP SECRET\n").unwrap();
    let p = g.write_policy("files", FILES);
    let s = secret.display().to_string();
    let ops = [
        "read:notes.txt".to_owned(),
        "write:out/result.txt".to_owned(),
        format!("read:{s}"),
        "write:notes.txt".to_owned(),
        "read:/etc/shadow".to_owned(),
        format!("read:/proc/self/root{s}"),
        // A symlink planted in the writable directory leads nowhere new:
        // Landlock judges the file it reaches.
        format!("symlink:{s}:out/link"),
        "read:out/link".to_owned(),
        // So does a hard link (refused outright: it would carry the file
        // into a granted tree).
        format!("hardlink:{s}:out/hard"),
    ];
    let opv: Vec<&str> = ops.iter().map(String::as_str).collect();
    let (out, res) = probe(&g, &p, &work, &opv);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(errno_of(&res, &ops[0]), None, "{res:?}");
    assert_eq!(errno_of(&res, &ops[1]), None, "{res:?}");
    // Writing where only reading is granted meets the read-only view first
    // (issue 8), Landlock behind it.
    assert_eq!(errno_of(&res, &ops[3]).as_deref(), Some("EROFS"), "{res:?}");
    for op in [&ops[2], &ops[4], &ops[5], &ops[7]] {
        assert_eq!(
            errno_of(&res, op).as_deref(),
            Some("EACCES"),
            "{op}: {res:?}"
        );
    }
    assert_eq!(
        errno_of(&res, &ops[6]),
        None,
        "creating the symlink itself is allowed: {res:?}"
    );
    assert!(
        errno_of(&res, &ops[8]).is_some(),
        "hard link must be refused: {res:?}"
    );

    let recs = g.logs(&["--agent", &Guardd::agent_id(&out)]);
    let r = refusal(&recs, &s);
    assert_eq!(r["kind"], "file");
    assert_eq!(r["layer"], "landlock");
    assert_eq!(r["rule"], "filesystem.default-deny");
    assert_eq!(r["detail"]["access"], "read");
    assert_eq!(r["process"]["comm"], "python3");
    let w = refusal(&recs, &work.join("notes.txt").display().to_string());
    assert_eq!(w["detail"]["access"], "write");
    assert_eq!(w["layer"], "mount-readonly");
    assert_eq!(w["rule"], "filesystem.default-deny");
    assert!(
        !w["detail"]["granted_by"].as_array().unwrap().is_empty(),
        "{w}"
    );
    assert_eq!(refusal(&recs, "/etc/shadow")["layer"], "landlock");
    let via_proc = refusal(&recs, &format!("/proc/self/root{s}"));
    assert_eq!(via_proc["detail"]["resolved"], s);
    let via_link = refusal(&recs, &work.join("out/link").display().to_string());
    assert_eq!(via_link["detail"]["resolved"], s);
    assert_eq!(via_link["layer"], "landlock");
}

#[test]
fn programs_outside_exec_cannot_run_not_even_a_copy() {
    let g = Guardd::start();
    let work = workspace(&g);
    std::fs::create_dir_all(work.join("out")).unwrap();
    let p = g.write_policy("files", FILES);
    let ops = [
        "exec:/bin/true",
        "exec:/usr/bin/id",
        "copy:/bin/true:out/true",
        "exec:out/true",
    ];
    let (out, res) = probe(&g, &p, &work, &ops);
    assert!(out.status.success(), "{}", describe(&out));
    let r0 = res.iter().find(|r| r["op"] == ops[0]).unwrap();
    assert_eq!(r0["value"], 0, "{res:?}");
    assert_eq!(errno_of(&res, ops[1]).as_deref(), Some("EACCES"), "{res:?}");
    assert_eq!(
        errno_of(&res, ops[2]),
        None,
        "copying is a write, allowed in out/: {res:?}"
    );
    assert_eq!(errno_of(&res, ops[3]).as_deref(), Some("EACCES"), "{res:?}");
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out)]);
    let id = refusal(&recs, "/usr/bin/id");
    assert_eq!(
        (id["kind"].as_str(), id["action"].as_str()),
        (Some("exec"), Some("exec"))
    );
    assert_eq!(id["layer"], "landlock");
    // The copy ran in a subprocess that has exited by the time the record is
    // written: its working directory is taken as the agent's, and said so.
    let copy = refusal(&recs, &work.join("out/true").display().to_string());
    assert_eq!(copy["kind"], "exec");
    assert_eq!(copy["layer"], "landlock");
    // Every exec in the scope is a record too, with its arguments.
    let execs: Vec<&Value> = recs
        .iter()
        .filter(|r| r["kind"] == "exec" && r["verdict"] == "allowed")
        .collect();
    assert!(
        execs.iter().any(|r| r["target"] == "/bin/true"),
        "{execs:#?}"
    );
    let py = execs.iter().find(|r| r["target"] == PYTHON).unwrap();
    assert_eq!(py["detail"]["argv"][0], PYTHON);
    assert_eq!(py["detail"]["argv"][1], "probe.py");
}

#[test]
fn write_plus_exec_is_refused_at_load() {
    let g = Guardd::start();
    let p = g.write_policy(
        "wx",
        "[policy]\nname = \"wx\"\n[filesystem]\nwrite = [\"{workdir}\"]\nexec = [\"{workdir}/bin\"]\n",
    );
    let out = g.run(&p, &[], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("both writable and executable"));
}

#[test]
fn dangerous_system_calls_are_refused_and_journaled() {
    let g = Guardd::start();
    let work = workspace(&g);
    // A process outside the scope to try ptrace and kill on.
    let mut outsider = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = outsider.id().to_string();
    let p = g.write_policy(
        "sys",
        "[policy]\nname = \"sys\"\ninclude = [\"base\", \"python\"]\n[filesystem]\nread = [\"{workdir}\"]\nexec = [\"/usr/bin/unshare\"]\n",
    );
    let ptrace = format!("syscall:ptrace:{pid}");
    // The agent has its own pid namespace, so the outsider has no pid there
    // (ESRCH). Pid 1 is the launcher's reaper, outside the agent's Landlock
    // domain: the signal scope refuses it.
    let kill = "syscall:kill:1".to_owned();
    let ops = [
        "syscall:unshare_user",
        "syscall:unshare_net",
        "syscall:mount",
        ptrace.as_str(),
        "syscall:io_uring",
        "syscall:bpf",
        kill.as_str(),
        "status",
    ];
    let (out, res) = probe(&g, &p, &work, &ops);
    // The real unshare(1) too.
    let out2 = g.run_in(&p, &[], &["/usr/bin/unshare", "-U", "/bin/true"], &work);
    let _ = outsider.kill();
    let _ = outsider.wait();
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        errno_of(&res, "syscall:unshare_user").as_deref(),
        Some("EPERM")
    );
    assert_eq!(
        errno_of(&res, "syscall:unshare_net").as_deref(),
        Some("EPERM")
    );
    assert_eq!(errno_of(&res, "syscall:mount").as_deref(), Some("EPERM"));
    assert_eq!(errno_of(&res, &ptrace).as_deref(), Some("EPERM"));
    assert_eq!(
        errno_of(&res, "syscall:io_uring").as_deref(),
        Some("ENOSYS")
    );
    assert_eq!(errno_of(&res, "syscall:bpf").as_deref(), Some("EPERM"));
    // Signals to processes outside the agent's domain (Landlock scoping).
    assert_eq!(errno_of(&res, &kill).as_deref(), Some("EPERM"));
    assert!(
        !out2.status.success(),
        "unshare -U must fail:\n{}",
        describe(&out2)
    );
    let status = &res.iter().find(|r| r["op"] == "status").unwrap()["value"];
    assert_eq!(status["NoNewPrivs"], "1");
    assert_eq!(status["CapEff"], "0000000000000000");
    assert_eq!(status["CapPrm"], "0000000000000000");
    assert_eq!(status["Seccomp"], "2");

    let recs = g.logs(&["--agent", &Guardd::agent_id(&out), "--kind", "syscall"]);
    let by = |action: &str| {
        recs.iter()
            .find(|r| r["action"] == action)
            .unwrap_or_else(|| panic!("no {action} in {recs:#?}"))
    };
    assert_eq!(by("unshare")["rule"], "syscalls.namespaces");
    assert_eq!(by("unshare")["layer"], "seccomp");
    assert_eq!(by("mount")["rule"], "syscalls.default-deny");
    assert_eq!(by("ptrace")["layer"], "seccomp");
    assert_eq!(by("io_uring_setup")["rule"], "syscalls.enosys-fallback");
    assert_eq!(by("bpf")["layer"], "seccomp");
    assert_eq!(by("signal")["rule"], "process.signal-scope");
    let recs2 = g.logs(&["--agent", &Guardd::agent_id(&out2), "--kind", "syscall"]);
    assert!(
        recs2
            .iter()
            .any(|r| r["action"] == "unshare" && r["layer"] == "seccomp"),
        "{recs2:#?}"
    );
}

#[test]
fn inherited_descriptors_do_not_reach_the_agent() {
    let g = Guardd::start();
    let work = workspace(&g);
    let p = g.write_policy("fds", FILES);
    let secret = std::fs::File::open("/etc/hostname").unwrap();
    use std::os::fd::AsRawFd;
    let raw = secret.as_raw_fd();
    let mut cmd = g.run_cmd(&p, &[], &[PYTHON, "probe.py", "fds"]);
    cmd.current_dir(&work);
    // SAFETY: dup2 in the child before exec, onto a fixed number, without
    // CLOEXEC: guardctl inherits fd 7 as any launcher-side descriptor.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 7) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let res = probe_results(&out);
    let fds: Vec<u64> = res[0]["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    // stdin, stdout, stderr, the request channel guardd gives every agent
    // (3, `GUARD_REQUEST_FD`), and the descriptor listdir itself holds.
    assert!(fds.iter().all(|&fd| fd <= 4), "{fds:?}\n{}", describe(&out));
    assert!(fds.contains(&3), "{fds:?}\n{}", describe(&out));
    drop(secret);
}

#[test]
fn a_fork_bomb_stops_at_the_limit_and_the_host_stays_responsive() {
    let g = Guardd::start();
    let work = workspace(&g);
    let p = g.write_policy("files", FILES);
    let child = g
        .run_cmd(&p, &[], &[PYTHON, "probe.py", "forkbomb:100000"])
        .current_dir(&work)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While it runs, the host can still start processes.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let st = std::process::Command::new("/bin/true").status().unwrap();
    assert!(st.success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "host unresponsive"
    );
    let out = child.wait_with_output().unwrap();
    let res = probe_results(&out);
    assert_eq!(
        errno_of(&res, "forkbomb:100000").as_deref(),
        Some("EAGAIN"),
        "{}",
        describe(&out)
    );
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out)]);
    let fork = recs
        .iter()
        .find(|r| r["action"] == "fork")
        .unwrap_or_else(|| panic!("{recs:#?}"));
    assert_eq!(fork["rule"], "process.max_processes");
    assert_eq!(fork["layer"], "cgroup-pids");
    // The sleeping children were killed with the scope.
    let exit = recs.iter().find(|r| r["action"] == "exit").unwrap();
    assert!(
        exit["detail"]["leftover_killed"].as_u64().unwrap() >= 10,
        "{exit}"
    );
}

fn processes_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn a_daemonised_child_does_not_outlive_the_agent() {
    let g = Guardd::start();
    let p = g.write_policy(
        "daemon",
        "[policy]\nname = \"daemon\"\ninclude = [\"base\", \"shell\"]\n[filesystem]\nexec = [\"/usr/bin/setsid\", \"/usr/bin/sleep\", \"/bin/sleep\"]\n",
    );
    let marker = format!(
        "{}.{}",
        4000 + std::process::id() % 1000,
        std::process::id() % 997
    );
    // Double fork + setsid: the classic way out of a process tree.
    let script = format!("( setsid sleep {marker} & ) ; exit 0");
    let out = g.run(&p, &[], &["/bin/sh", "-c", &script]);
    assert!(out.status.success(), "{}", describe(&out));
    // guardctl has returned: the scope was killed and removed already.
    let left = processes_with(&marker);
    assert!(left.is_empty(), "still running: {left:?}");
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out)]);
    let exit = recs.iter().find(|r| r["action"] == "exit").unwrap();
    assert!(
        exit["detail"]["leftover_killed"].as_u64().unwrap() >= 1,
        "{exit}"
    );
}

#[test]
fn memory_and_cpu_limits_apply() {
    let g = Guardd::start();
    let work = workspace(&g);
    let p = g.write_policy(
        "limits",
        "[policy]\nname = \"limits\"\ninclude = [\"base\", \"python\"]\n[filesystem]\nread = [\"{workdir}\"]\n[process]\nmemory = \"64M\"\ncpu = 0.25\n",
    );
    // Allocating far beyond the limit ends in the OOM killer.
    let out = g.run_in(
        &p,
        &[],
        &[PYTHON, "-c", "b = bytearray(512 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('survived')"],
        &work,
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("survived"),
        "{}",
        describe(&out)
    );
    assert_eq!(out.status.code(), Some(128 + 9), "{}", describe(&out));
    // The CPU quota is on the scope while it runs.
    let mut child = g.spawn_run(&p, &[], &[PYTHON, "-c", "import time; time.sleep(2)"]);
    std::thread::sleep(Duration::from_millis(500));
    let quota =
        find_limit(&g.instance, "cpu.max").or_else(|| find_limit(&g.instance, "cpu.cfs_quota_us"));
    let _ = child.wait();
    let quota = quota.expect("no CPU limit file found for the scope");
    assert!(quota.starts_with("25000"), "{quota}");
}

/// Reads a limit file of the (single) live scope of `instance`, wherever the
/// host keeps that controller.
fn find_limit(instance: &str, file: &str) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in info.lines() {
        let (pre, post) = line.split_once(" - ")?;
        if !post.starts_with("cgroup") {
            continue;
        }
        let mp = pre.split(' ').nth(4)?;
        let dir = Path::new(mp).join(instance);
        if let Ok(d) = std::fs::read_dir(&dir) {
            for e in d.flatten() {
                if let Ok(v) = std::fs::read_to_string(e.path().join(file)) {
                    return Some(v.trim().to_owned());
                }
            }
        }
    }
    None
}

#[test]
fn python_and_git_work_under_the_example_policy() {
    let g = Guardd::start();
    let work = g.dir.path().join("repo");
    std::fs::create_dir_all(&work).unwrap();
    let policy = repo().join("policies/coding-agent.toml");
    let script = "import json, sqlite3, hashlib, csv, email.message, urllib.parse, subprocess, os\n\
                  db = sqlite3.connect('data.db'); db.execute('create table t(x)'); db.commit()\n\
                  open('report.json', 'w').write(json.dumps({'sha': hashlib.sha256(b'x').hexdigest()}))\n\
                  print('python ok')";
    let out = g.run_in(&policy, &[], &[PYTHON, "-c", script], &work);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("python ok"));
    assert!(work.join("report.json").exists());
    let git = "git init -q . && git add report.json && \
               git -c user.name=agent -c user.email=agent@example.com commit -qm 'first' && \
               git log --oneline | wc -l";
    let out = g.run_in(&policy, &[], &["/bin/sh", "-c", git], &work);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    // No refusals were needed for any of it.
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out), "--verdict", "denied"]);
    let real: Vec<&Value> = recs
        .iter()
        .filter(|r| r["layer"] == "landlock" || r["layer"] == "seccomp")
        .collect();
    assert!(real.is_empty(), "{real:#?}");
}

#[test]
fn the_agent_can_run_as_another_user() {
    let g = Guardd::start();
    let p = g.write_policy(
        "nobody",
        "[policy]\nname = \"nobody\"\ninclude = [\"base\"]\n[filesystem]\nexec = [\"/usr/bin/id\"]\n[process]\nuser = \"nobody\"\n",
    );
    let out = g.run(&p, &[], &["/usr/bin/id", "-u"]);
    assert!(out.status.success(), "{}", describe(&out));
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let want = String::from_utf8_lossy(
        &std::process::Command::new("id")
            .args(["-u", "nobody"])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .to_owned();
    assert_eq!(uid, want);
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out), "--kind", "lifecycle"]);
    assert!(recs.iter().any(|r| r["action"] == "start"));
    // Its private {tmp} belongs to that user: the agent sees itself as the
    // owner of $TMPDIR (mode 0700, so no other user could use it) and,
    // granted it, can write there.
    let p = g.write_policy(
        "nobody-tmp",
        "[policy]\nname = \"nobody-tmp\"\ninclude = [\"base\", \"shell\"]\n[filesystem]\nwrite = [\"{tmp}\"]\n[process]\nuser = \"nobody\"\n",
    );
    let script = "id -u; stat -c '%u %a' \"$TMPDIR\"; echo x > \"$TMPDIR/mine\" && echo wrote";
    let out = g.run(&p, &[], &["/bin/sh", "-c", script]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let owned = format!("{want} 700");
    assert_eq!(
        lines,
        [want.as_str(), owned.as_str(), "wrote"],
        "{}",
        describe(&out)
    );
}
