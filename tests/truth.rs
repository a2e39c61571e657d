//! A record says what the kernel refused, not what the agent wants it to
//! say (issue 8, section 7): a path relative to a directory descriptor is
//! resolved against that directory, never the working directory, and a
//! path buffer another thread rewrites while the call runs never shows up
//! as a verified target. Root, real kernel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use serde_json::Value;

fn policy(g: &Guardd, name: &str) -> std::path::PathBuf {
    g.write_policy(
        name,
        &format!(
            "[policy]\nname = \"{name}\"\ninclude = [\"base\", \"python\"]\n\
             [filesystem]\nread = [\"{{workdir}}\"]\nwrite = [\"{{workdir}}/out\"]\n"
        ),
    )
}

/// A workdir the agent may read, with a readable `notes.txt`, and a
/// directory outside every grant with a file owned by another user.
fn workspace(g: &Guardd) -> (std::path::PathBuf, std::path::PathBuf) {
    let work = g.dir.path().join("work");
    std::fs::create_dir_all(work.join("out")).unwrap();
    std::fs::write(work.join("notes.txt"), "notes\n").unwrap();
    let secret = g.dir.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o755)).unwrap();
    let f = secret.join("f");
    std::fs::write(&f, "x").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    // Owned by nobody: a chmod by the agent (root without CAP_FOWNER) is
    // refused by the kernel's own checks.
    std::os::unix::fs::chown(&f, Some(65534), Some(65534)).unwrap();
    (work, secret)
}

fn denied_of<'a>(recs: &'a [Value], action: &str) -> Vec<&'a Value> {
    recs.iter()
        .filter(|r| r["verdict"] == "denied" && r["action"] == action)
        .collect()
}

#[test]
fn a_path_relative_to_a_directory_descriptor_is_resolved_against_it() {
    let g = Guardd::start();
    let (work, secret) = workspace(&g);
    let p = policy(&g, "dirfd");
    let script = format!(
        r#"
import errno, json, os, time
res = {{}}
def attempt(name, f):
    try:
        f(); res[name] = None
    except OSError as e:
        res[name] = errno.errorcode.get(e.errno, str(e.errno))
etc = os.open("/etc", os.O_PATH | os.O_DIRECTORY)
sec = os.open({secret:?}, os.O_PATH | os.O_DIRECTORY)
attempt("openat", lambda: os.close(os.open("shadow", os.O_RDONLY, dir_fd=etc)))
attempt("mkdirat", lambda: os.mkdir("d", dir_fd=sec))
attempt("unlinkat", lambda: os.unlink("f", dir_fd=sec))
attempt("fchmodat", lambda: os.chmod("f", 0o600, dir_fd=sec))
print(json.dumps(res), flush=True)
"#,
        secret = secret.display().to_string()
    );
    let out = g.run_in(&p, &[], &[PYTHON, "-c", &script], &work);
    let text = String::from_utf8_lossy(&out.stdout);
    let res: Value = serde_json::from_str(text.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|_| panic!("{}", describe(&out)));
    assert_eq!(res["openat"], "EACCES", "{res}\n{}", describe(&out));
    // Outside the write grants the agent's view is read-only: data and
    // metadata changes fail with EROFS before Landlock or the mode bits.
    assert_eq!(res["mkdirat"], "EROFS", "{res}");
    assert_eq!(res["unlinkat"], "EROFS", "{res}");
    assert_eq!(res["fchmodat"], "EROFS", "{res}");
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out)]);
    let wd = work.display().to_string();
    for r in &recs {
        let t = r["target"].as_str().unwrap_or_default();
        assert!(
            !t.starts_with(&wd) || r["verdict"] != "denied",
            "a path relative to a descriptor must never be resolved against the working directory: {r}"
        );
    }
    let s = secret.display().to_string();
    let cases = [
        ("openat", "/etc/shadow".to_owned(), "landlock"),
        ("mkdirat", format!("{s}/d"), "mount-readonly"),
        ("unlinkat", format!("{s}/f"), "mount-readonly"),
        ("fchmodat", format!("{s}/f"), "mount-readonly"),
    ];
    for (action, target, layer) in cases {
        let found = denied_of(&recs, action);
        assert_eq!(found.len(), 1, "{action}: {recs:#?}");
        let r = found[0];
        assert_eq!(r["target"], target.as_str(), "{r}");
        assert_eq!(r["layer"], layer, "{r}");
        assert_eq!(r["detail"]["target_verified"], true, "{r}");
        assert!(r["detail"]["dirfd"].is_i64(), "{r}");
    }
}

/// A second writer flips the path buffer between a forbidden file and a
/// permitted one while the main thread opens it, until both outcomes
/// were seen 200 times. Python's GIL
/// would keep a writer thread from running while the call is in the
/// kernel, so the writer is a forked process sharing the page: for the
/// kernel it is the same, another task rewriting the caller's memory.
const RACE: &str = r#"
import ctypes, mmap, os, signal
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
A = b"/etc/shadow\0\0\0\0\0"
B = b"notes.txt\0\0\0\0\0\0\0"
m = mmap.mmap(-1, 4096, flags=mmap.MAP_SHARED)
m[0:16] = A
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
pid = os.fork()
if pid == 0:
    # A random choice each time, so that the buffer's state when the call
    # reads it does not depend on where the two loops happen to meet.
    import random
    bits = random.getrandbits
    m[100] = 1
    while True:
        m[0:16] = A if bits(1) else B
while m[100] != 1:
    pass
refused = opened = 0
# Until both outcomes were seen often enough to show the race ran.
for i in range(200000):
    fd = libc.syscall(257, -100, ctypes.c_void_p(addr), os.O_RDONLY, 0)
    if fd >= 0:
        os.close(fd); opened += 1
    elif ctypes.get_errno() in (1, 13):
        refused += 1
    # Any other error (ENOENT) is a torn path: the writer's copy was caught
    # halfway, naming a file that does not exist. The kernel refused
    # nothing, so there is no record to expect.
    if i >= 1000 and opened >= 200 and refused >= 200:
        break
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
print(f"refused={refused} opened={opened}", flush=True)
"#;

#[test]
fn a_rewritten_path_buffer_never_shows_as_a_verified_target() {
    let g = Guardd::start_with(&["--coalesce-interval", "0"]);
    let (work, _) = workspace(&g);
    let p = policy(&g, "race");
    let out = g.run_in(&p, &[], &[PYTHON, "-c", RACE], &work);
    let text = String::from_utf8_lossy(&out.stdout);
    let refused: usize = text
        .split("refused=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", describe(&out)));
    let opened: usize = text
        .split("opened=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    // Both outcomes: the buffer really changed under the calls.
    assert!(refused > 0 && opened > 0, "{}", describe(&out));
    let recs = g.logs(&["--agent", &Guardd::agent_id(&out), "--kind", "file"]);
    let opens = denied_of(&recs, "openat");
    assert_eq!(opens.len(), refused, "one record per refusal");
    let (mut verified, mut unverified) = (0, 0);
    for r in &opens {
        if r["detail"]["target_verified"] == true {
            verified += 1;
            assert_eq!(r["target"], "/etc/shadow", "{r}");
            assert_eq!(r["layer"], "landlock", "{r}");
        } else {
            if unverified == 0 {
                eprintln!("first unverified record: {r}");
            }
            unverified += 1;
            assert_eq!(r["detail"]["target_verified"], false, "{r}");
            assert_ne!(r["layer"], "kernel", "{r}");
            assert_eq!(r["rule"], "filesystem.unverified-target", "{r}");
            let readings = &r["detail"]["readings"];
            assert!(readings["exit"].is_string(), "{r}");
            assert!(
                r["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("<unverified")),
                "{r}"
            );
        }
    }
    eprintln!("{refused} refused: {verified} verified, {unverified} unverified");
}
