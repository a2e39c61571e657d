//! `guardctl selftest`: the battery passes on this host under the default
//! policy and under a user's policy, its agents are in the journal, and it
//! fails, naming the attempt, when one kernel layer is taken away. The
//! layer is taken away by this test alone (it detaches the test guardd's
//! own connect4 link), never by a switch in the binaries users get.
//! Root, real kernel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{ffi::CString, os::fd::FromRawFd, path::Path};

use common::*;

/// The attempt lines of selftest's output (everything before the summary).
fn attempt_lines(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| !l.starts_with("selftest:"))
        .collect()
}

fn line_of<'a>(stdout: &'a str, attempt: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some(attempt))
        .unwrap_or_else(|| panic!("no line for {attempt} in:\n{stdout}"))
}

fn selftest(g: &Guardd, extra: &[&str]) -> std::process::Output {
    g.ctl(&[&["selftest"], extra].concat())
}

#[test]
fn selftest_passes_on_this_host_and_journals_its_agents() {
    let g = Guardd::start();
    let started = std::time::Instant::now();
    let out = selftest(&g, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let lines = attempt_lines(&stdout);
    assert!(lines.len() >= 30, "{stdout}");
    for l in &lines {
        assert!(
            l.starts_with("held      recorded   ") || l.starts_with("held      no-record  "),
            "every attempt held and was recorded: {l}\n{stdout}"
        );
    }
    // The headline attempts were made and refused by the layer meant.
    for (attempt, needle) in [
        ("net.connect.v4", "network.default-deny"),
        ("net.connect.v4-mapped", "network.default-deny"),
        ("abi.i386-socketcall", "syscalls.architecture"),
        ("exec.loader", "exec.loader-direct"),
        ("limits.fork", "process.max_processes"),
    ] {
        let l = line_of(&stdout, attempt);
        assert!(l.contains(needle), "{attempt}: {l}");
    }
    assert!(
        stdout.contains("0 escaped, 0 unrecorded, 0 could not be tested")
            && stdout.ends_with("PASS\n"),
        "{stdout}"
    );
    // Cheap enough for a readiness check.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );

    // Every attempt was a real agent, in the journal with its start, its
    // refusals and its exit.
    let recs = g.logs(&[]);
    let of = |name: &str| {
        recs.iter()
            .filter(|r| {
                r["agent"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&format!("selftest-{name}-")))
            })
            .collect::<Vec<_>>()
    };
    let v4 = of("net.connect.v4");
    assert!(v4.iter().any(|r| r["action"] == "start"), "{v4:#?}");
    assert!(v4.iter().any(|r| r["action"] == "exit"), "{v4:#?}");
    assert!(
        v4.iter().any(|r| r["kind"] == "network"
            && r["verdict"] == "denied"
            && r["layer"] == "cgroup-bpf"),
        "{v4:#?}"
    );
    assert_eq!(v4[0]["agent"]["policy"], "selftest");
    // No agent is left behind.
    let ps = g.ctl(&["ps"]);
    assert!(
        !String::from_utf8_lossy(&ps.stdout).contains("selftest-"),
        "{}",
        describe(&ps)
    );

    // JSON output: one object per attempt, then the summary.
    let out = selftest(&g, &["--json", "--only", "net.connect.v6", "file.read"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let vals = probe_results(&out);
    assert_eq!(vals.len(), 3, "{}", describe(&out));
    assert_eq!(vals[0]["attempt"], "net.connect.v6");
    assert_eq!(vals[0]["held"], "held");
    assert_eq!(vals[0]["recorded"]["state"], "recorded");
    assert_eq!(vals[2]["passed"], true);
}

#[test]
fn selftest_runs_under_a_user_policy() {
    let g = Guardd::start();
    // A user's policy: some loopback ports allowed, a bigger process
    // limit; it does not name guardctl, which selftest adds for the run
    // (`guardctl run --grant exec:...`).
    let p = g.write_policy(
        "user-selftest",
        "[policy]\nname = \"user-selftest\"\ninclude = [\"base\"]\n\
         [network]\nallow = [{ cidr = \"127.0.0.1/32\", ports = [\"1-1023\"], protocol = \"tcp\" }]\n\
         [filesystem]\nread = [\"{workdir}\"]\nwrite = [\"{workdir}\", \"{tmp}\"]\n\
         [process]\nmax_processes = 12\n",
    );
    let out = selftest(&g, &["--policy", p.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        line_of(&stdout, "limits.fork").contains("process.max_processes"),
        "{stdout}"
    );
    let recs = g.logs(&[]);
    let starts: Vec<_> = recs
        .iter()
        .filter(|r| {
            r["action"] == "start"
                && r["agent"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("selftest-"))
        })
        .collect();
    assert!(!starts.is_empty());
    assert!(
        starts
            .iter()
            .all(|r| r["agent"]["policy"] == "user-selftest"),
        "{starts:#?}"
    );

    // The probe ran by a grant for the run, which the start records show.
    assert!(
        starts
            .iter()
            .all(|r| r["detail"]["grants"] == serde_json::json!([format!("exec:{GUARDCTL}")])),
        "{starts:#?}"
    );
    // A policy that does not restrict programs needs no grant.
    let open = g.write_policy(
        "open-files",
        "[policy]\nname = \"open-files\"\n[network]\nallow = []\n",
    );
    let out = selftest(
        &g,
        &[
            "--policy",
            open.to_str().unwrap(),
            "--only",
            "net.connect.v4",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[test]
fn selftest_cannot_run_without_guardd() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(GUARDCTL)
        .args([
            "--socket",
            dir.path().join("none.sock").to_str().unwrap(),
            "selftest",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let out = std::process::Command::new(GUARDCTL)
        .args(["selftest", "--only", "no.such.attempt"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Detaches the pinned link at `pin` (the link object stays, pointing at
/// nothing): the test's stand-in for a layer left out.
fn detach_link(pin: &Path) {
    let path = CString::new(pin.to_str().unwrap()).unwrap();
    // union bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags.
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    // SAFETY: bpf(BPF_OBJ_GET) reads a zeroed attr holding a valid path
    // pointer, alive for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert!(
        fd >= 0,
        "BPF_OBJ_GET {}: {}",
        pin.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor we own.
    let link = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let mut attr = [0u64; 16];
    attr[0] = std::os::fd::AsRawFd::as_raw_fd(&link) as u64;
    // SAFETY: bpf(BPF_LINK_DETACH) reads the link descriptor from a zeroed
    // attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert_eq!(r, 0, "BPF_LINK_DETACH: {}", std::io::Error::last_os_error());
}

#[test]
fn selftest_fails_and_names_the_attempt_when_a_layer_is_left_out() {
    let mut g = Guardd::start();
    // First the same battery passes against this guardd.
    let only = ["--only", "net.connect.v4", "net.connect.v6", "file.read"];
    let out = selftest(&g, &only);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let links = pins(&g.instance).join("links");
    let connect4: Vec<_> = std::fs::read_dir(&links)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("guard_connect4-"))
        })
        .collect();
    assert_eq!(connect4.len(), 1, "{connect4:?}");
    detach_link(&connect4[0]);

    let out = selftest(&g, &only);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let v4 = line_of(&stdout, "net.connect.v4");
    assert!(v4.starts_with("ESCAPED"), "{stdout}");
    assert!(
        v4.contains("seen outside the scope"),
        "the listener saw it: {v4}"
    );
    // The other layers still hold.
    assert!(
        line_of(&stdout, "net.connect.v6").starts_with("held      recorded"),
        "{stdout}"
    );
    assert!(
        line_of(&stdout, "file.read").starts_with("held      recorded"),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 escaped") && stdout.ends_with("FAIL\n"),
        "{stdout}"
    );

    // Restore: this guardd is the test's own; stopping it removes its
    // pins and cgroup, detached link included.
    g.stop();
    assert!(!pins(&g.instance).exists(), "pins left behind");
    assert!(!parent_cgroup(&g.instance).exists(), "cgroup left behind");
}
