//! A launcher in another mount namespace than guardd, as a container's is:
//! its agent's `{tmp}` is made in the launcher's own `/tmp` (through the
//! launcher's root, never a directory shared with other containers), and a
//! launcher that sees a cgroup file system writable is refused, because
//! its agent could move itself out of its scope. `unshare -m` stands in
//! for the container here; `tests/pods.rs` does the same with real ones.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::MetadataExt,
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// `guardctl run --policy POLICY -- AGENT...` from a shell in a mount
/// namespace of its own with a tmpfs on `/tmp` (where the test's directory
/// is bound again), after `prepare` (shell text). The shell prints `launcher-tmp-dev=N` (its `/tmp`'s device)
/// before and `left=...` (what remains in its `/tmp` once the agent's
/// removal had time to run) after guardctl. The namespace, its tmpfs and
/// everything in it go when the shell exits.
fn in_own_mount_namespace(g: &Guardd, prepare: &str, policy: &Path, agent: &str) -> Output {
    launcher_in_own_mount_namespace(g, prepare, policy, agent)
        .output()
        .unwrap()
}

/// The command [`in_own_mount_namespace`] runs.
fn launcher_in_own_mount_namespace(
    g: &Guardd,
    prepare: &str,
    policy: &Path,
    agent: &str,
) -> Command {
    let script = format!(
        r#"set -e
# A tmpfs for /tmp that still holds this test's directory (guardd's
# socket and the policy) at its own path: made beside it, the directory
# bound into it, then moved over /tmp.
# guardctl too: the build may live under /tmp (a clone in /tmp), which the
# new /tmp hides.
cp "$GUARDCTL" "$DIR/guardctl"
GUARDCTL="$DIR/guardctl"
mkdir -p "$DIR/ns-tmp"
mount -t tmpfs guard-test-tmp "$DIR/ns-tmp"
mkdir "$DIR/ns-tmp/$(basename "$DIR")"
mount --bind "$DIR" "$DIR/ns-tmp/$(basename "$DIR")"
mount --move "$DIR/ns-tmp" /tmp
{prepare}
echo "launcher-tmp-dev=$(stat -c %d /tmp)"
set +e
"$GUARDCTL" run --policy "$POLICY" -- /bin/sh -c '{agent}'
rc=$?
for i in $(seq 100); do
  set -- /tmp/guard-????????????
  [ -e "$1" ] || break
  sleep 0.1
done
echo "left=$(cd /tmp && ls -A | grep -vx "$(basename "$DIR")")"
exit $rc
"#
    );
    let mut c = Command::new("unshare");
    // A pid namespace of its own too, as a container has: the launcher is
    // then a workload (a tenant) to guardd.
    c.args([
        "-m",
        "-p",
        "-f",
        "--mount-proc",
        "--propagation",
        "private",
        "/bin/sh",
        "-c",
        &script,
    ])
    .env("GUARD_SOCKET", &g.socket)
    .env("GUARDCTL", GUARDCTL)
    .env("POLICY", policy)
    .env("DIR", g.dir.path())
    .current_dir(g.dir.path());
    c
}

/// Remounts every cgroup file system read-only in the shell's namespace,
/// as unprivileged containers get them.
const CGROUPFS_READ_ONLY: &str = r#"for m in $(findmnt -rn -t cgroup,cgroup2 -o TARGET); do mount -o remount,bind,ro "$m"; done"#;

fn value_of<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in:\n{text}"))
}

#[test]
fn the_agents_tmp_is_made_in_the_launchers_own_tmp_and_removed_there() {
    let g = Guardd::start();
    let p = g.write_policy(
        "mnt",
        "[policy]\nname = \"mnt\"\ninclude = [\"base\", \"shell\"]\n[filesystem]\nwrite = [\"{tmp}\"]\nexec = [\"/usr/bin/stat\"]\n",
    );
    let agent = r#"echo hello > "$TMPDIR/f" && echo "tmp=$TMPDIR" && echo "tmp-dev=$(stat -c %d "$TMPDIR")" && echo "tmp-mode=$(stat -c %a "$TMPDIR")""#;
    let out = in_own_mount_namespace(&g, CGROUPFS_READ_ONLY, &p, agent);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}\n{}", describe(&out), g.log());
    let id = Guardd::agent_id(&out);
    // The container-side path, on the launcher's own tmpfs (not the
    // host's /tmp, which is another file system here).
    let tmp = value_of(&stdout, "tmp");
    assert_eq!(tmp, format!("/tmp/guard-{id}"), "{stdout}");
    assert_eq!(
        value_of(&stdout, "tmp-dev"),
        value_of(&stdout, "launcher-tmp-dev"),
        "{stdout}"
    );
    let host_tmp_dev = std::fs::metadata("/tmp").unwrap().dev().to_string();
    assert_ne!(value_of(&stdout, "tmp-dev"), host_tmp_dev, "{stdout}");
    assert_eq!(value_of(&stdout, "tmp-mode"), "700", "{stdout}");
    assert!(!Path::new(tmp).exists(), "made in guardd's /tmp too");
    // Removed at the agent's end, through the launcher's /tmp.
    assert_eq!(value_of(&stdout, "left"), "", "{stdout}");
    let start = g
        .logs(&["--agent", &id])
        .into_iter()
        .find(|r| r["action"] == "start")
        .unwrap();
    assert_eq!(start["detail"]["tmp"], tmp, "{start}");
}

#[test]
fn a_launcher_that_sees_a_writable_cgroupfs_is_refused_and_journaled() {
    let g = Guardd::start();
    let p = g.write_policy("mnt", "[policy]\nname = \"mnt\"\n");
    // The host's cgroup file systems, writable as they are on the host.
    let out = in_own_mount_namespace(&g, "", &p, "echo ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(!stdout.contains("ran"), "{}", describe(&out));
    let v2 = v2_root().display().to_string();
    assert!(
        stderr.contains("writable cgroup file system") && stderr.contains(&v2),
        "{stderr}"
    );
    assert!(stderr.contains("read-only cgroupfs"), "{stderr}");
    // Nothing was made: no {tmp} left in the launcher's /tmp.
    assert_eq!(value_of(&stdout, "left"), "", "{stdout}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let rec = loop {
        if let Some(r) = g
            .logs(&[])
            .into_iter()
            .find(|r| r["rule"] == "control.writable-cgroupfs")
        {
            break r;
        }
        assert!(Instant::now() < deadline, "no refusal record:\n{}", g.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(rec["verdict"], "denied", "{rec}");
    assert_eq!(rec["layer"], "guardd", "{rec}");
    assert_eq!(rec["action"], "open", "{rec}");
    assert_eq!(rec["target"], "/bin/sh", "{rec}");
    assert!(
        rec["detail"]["why"].as_str().unwrap().contains(&v2),
        "{rec}"
    );

    // The same launcher with its cgroup file systems read-only runs.
    let out = in_own_mount_namespace(&g, CGROUPFS_READ_ONLY, &p, "echo ran");
    assert!(out.status.success(), "{}\n{}", describe(&out), g.log());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ran"));
}

#[test]
fn a_restarted_guardd_removes_the_readopted_agents_tmp_in_the_launchers_tmp() {
    let mut g = Guardd::start();
    let p = g.write_policy("mnt", "[policy]\nname = \"mnt\"\n");
    let fifo = g.dir.path().join("go.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let agent = format!(
        r#"echo x > "$TMPDIR/f" && echo ready && read -r go < {} && echo "tmp=$TMPDIR""#,
        fifo.display()
    );
    let mut child = launcher_in_own_mount_namespace(&g, CGROUPFS_READ_ONLY, &p, &agent)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    for l in lines.by_ref() {
        let l = l.unwrap();
        seen.push_str(&l);
        seen.push('\n');
        if l == "ready" {
            break;
        }
    }
    assert!(seen.ends_with("ready\n"), "{seen}\n{}", g.log());
    // guardd dies and comes back: it re-adopts the agent and reaches its
    // {tmp} again through the launcher.
    g.crash();
    g.restart_after_crash();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&g.ctl(&["ps", "--json"]).stdout).contains("mnt") {
        assert!(Instant::now() < deadline, "not re-adopted:\n{}", g.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(&fifo, "go\n").unwrap();
    assert!(
        wait_or_kill(&mut child, Duration::from_secs(30)).is_some(),
        "the launcher did not end"
    );
    for l in lines {
        seen.push_str(&l.unwrap());
        seen.push('\n');
    }
    assert!(seen.contains("tmp=/tmp/guard-"), "{seen}\n{}", g.log());
    assert_eq!(value_of(&seen, "left"), "", "{seen}\n{}", g.log());
}
