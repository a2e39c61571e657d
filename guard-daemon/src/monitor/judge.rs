//! Which layer refused a system call, and by which rule.
//!
//! The kernel reports only that a call failed (for example `openat` with
//! EACCES). guardd knows the agent's compiled policy: its seccomp filter (as
//! data), its Landlock grants and the capabilities it kept. Replaying the
//! call against them tells a seccomp refusal from a Landlock one from an
//! ordinary permission error, and names the rule.

use std::{
    os::unix::ffi::OsStrExt,
    path::{Component, Path, PathBuf},
};

use guard_common::syscalls::{
    NR_CLONE, NR_CONNECT, NR_CREAT, NR_EXECVE, NR_EXECVEAT, NR_FORK, NR_GETPRIORITY,
    NR_INOTIFY_ADD_WATCH, NR_IOCTL, NR_KILL, NR_LINK, NR_LINKAT, NR_LISTEN, NR_MEMFD_CREATE,
    NR_MMAP, NR_MPROTECT, NR_PIDFD_SEND_SIGNAL, NR_RENAME, NR_RENAMEAT, NR_RENAMEAT2, NR_SENDMMSG,
    NR_SENDMSG, NR_SENDTO, NR_SETPRIORITY, NR_SETSOCKOPT, NR_SOCKET, NR_TGKILL, NR_TKILL,
    NR_TRUNCATE, NR_UNSHARE, NR_VFORK, names_a_process,
};
use serde_json::{Value, json};

use crate::{
    journal::{Kind, Text},
    launch::seccomp::Program,
    policy::FsPlan,
    syscalls::{self, Access},
};

/// An agent's policy, as the monitor needs it to attribute refusals.
pub struct Judge {
    pub fs: Option<FsPlan>,
    /// Where the agent was started: relative paths of a process that has
    /// already exited (so its cwd cannot be read) are taken from here.
    pub workdir: PathBuf,
    pub seccomp: Program,
    /// Capabilities kept (numbers).
    pub caps: Vec<u32>,
    /// The policy allows inotify watches (`[process] inotify`).
    pub inotify: bool,
}

/// How a refused call is journaled.
#[derive(Debug, PartialEq)]
pub struct Verdict {
    pub kind: Kind,
    pub action: String,
    pub target: Text,
    pub rule: String,
    pub layer: &'static str,
    pub detail: Value,
}

const EPERM: i32 = 1;
const EAGAIN: i32 = 11;
const EACCES: i32 = 13;
const ENOSYS: i32 = 38;
const EAFNOSUPPORT: i32 = 97;
const EXDEV: i32 = 18;
const ESRCH: i32 = 3;
const EROFS: i32 = 30;
const CAP_NET_RAW: u32 = 13;
const SOCK_RAW: u64 = 3;

fn errno_name(e: i32) -> &'static str {
    match e {
        EPERM => "EPERM",
        EAGAIN => "EAGAIN",
        EACCES => "EACCES",
        ENOSYS => "ENOSYS",
        EAFNOSUPPORT => "EAFNOSUPPORT",
        EXDEV => "EXDEV",
        ESRCH => "ESRCH",
        EROFS => "EROFS",
        _ => "error",
    }
}

/// Lexically normalises an absolute path (`.`, `..`, repeated slashes).
fn normalise(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// What the kernel reported about a refused call's path argument.
#[derive(Clone, Copy, Debug, Default)]
pub struct PathFacts<'a> {
    /// Read from the caller's memory at the call's exit.
    pub exit: Option<&'a [u8]>,
    /// Read at the call's entry; `None` when no entry reading was kept.
    pub entry: Option<&'a [u8]>,
    /// Kernel `dev_t` and inode number of the directory a relative path
    /// starts from (the directory descriptor's file, or the working
    /// directory), as the kernel saw it at the call's exit.
    pub base: Option<(u32, u64)>,
}

impl<'a> PathFacts<'a> {
    /// One path known to be what the kernel judged (tests, and callers
    /// that established it otherwise).
    pub fn trusted(path: Option<&'a [u8]>) -> Self {
        PathFacts {
            exit: path,
            entry: path,
            base: None,
        }
    }
}

/// Where a refused call's path leads, and how sure guardd is of it.
#[derive(Debug, Default)]
pub struct Target {
    /// What the record shows: the absolute path when established, else a
    /// description that says what is known and that it is unverified.
    pub text: Vec<u8>,
    /// The absolute path, when both the argument and the directory it
    /// starts from are established.
    pub abs: Option<PathBuf>,
    /// Where `abs` really leads (symlinks and `/proc/self` followed), when
    /// that differs.
    pub real: Option<PathBuf>,
    /// Why the target is not verified; empty when it is.
    pub doubts: Vec<String>,
    /// Facts for the record's detail (readings, descriptor, base).
    pub detail: serde_json::Map<String, Value>,
}

/// The kernel's encoding of a `dev_t` (what `super_block.s_dev` holds).
fn kernel_dev(dev: u64) -> u32 {
    (libc::major(dev) << 20) | libc::minor(dev)
}

/// Identity of what a path (or a procfs magic link) names now.
pub(crate) fn identity(p: &Path) -> Option<(u32, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((kernel_dev(m.dev()), m.ino()))
}

fn quoted(raw: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(raw))
}

/// Makes `abs` absolute-normalised and follows it from the agent's point
/// of view (`/proc/self` is the agent, not guardd).
fn follow(tgid: u32, abs: &Path) -> Option<PathBuf> {
    let lookup = match abs.strip_prefix("/proc/self") {
        Ok(rest) => PathBuf::from(format!("/proc/{tgid}")).join(rest),
        Err(_) => abs.to_owned(),
    };
    let real = std::fs::canonicalize(&lookup).ok().or_else(|| {
        let parent = lookup.parent()?;
        Some(
            std::fs::canonicalize(parent)
                .ok()?
                .join(lookup.file_name()?),
        )
    });
    real.filter(|r| r != abs)
}

/// The target of a refused path call. The argument is taken from the
/// caller's memory, which another thread can rewrite while the call runs:
/// it counts as what the kernel judged only when the readings at entry and
/// exit agree. A relative path starts at the call's directory descriptor
/// (`*at` calls) or the working directory, which guardd can only read
/// after the call (`/proc/<pid>/fd/N`, `/proc/<pid>/cwd`): that reading
/// counts only when it names the directory the kernel saw at exit (same
/// device and inode).
pub fn resolve(
    nr: u32,
    args: &[u64; 6],
    tgid: u32,
    facts: &PathFacts<'_>,
    workdir: &Path,
) -> Target {
    let mut t = Target::default();
    let exit = facts.exit.unwrap_or_default();
    let raw = match facts.entry {
        Some(entry) if entry == exit => exit,
        Some(entry) => {
            t.doubts.push(
                "the path argument changed while the call ran (another thread rewrote the buffer): \
                 the path the kernel judged is not known"
                    .into(),
            );
            t.detail.insert(
                "readings".into(),
                json!({"entry": Text::new(entry.to_vec()), "exit": Text::new(exit.to_vec())}),
            );
            t.text = format!(
                "<unverified: {} at entry, {} at exit>",
                quoted(entry),
                quoted(exit)
            )
            .into_bytes();
            return t;
        }
        None => {
            t.doubts.push(
                "the path argument was read only at the call's exit (no reading from its entry was kept), \
                 so a rewrite of the buffer while the call ran cannot be ruled out"
                    .into(),
            );
            t.detail
                .insert("readings".into(), json!({"exit": Text::new(exit.to_vec())}));
            exit
        }
    };
    let p = Path::new(std::ffi::OsStr::from_bytes(raw));
    if p.is_absolute() {
        let abs = normalise(p);
        t.real = follow(tgid, &abs);
        t.text = abs.as_os_str().as_bytes().to_vec();
        t.abs = Some(abs);
        if !t.doubts.is_empty() {
            t.text = format!("<unverified: {} at exit>", quoted(raw)).into_bytes();
        }
        return t;
    }
    let dirfd = syscalls::dirfd_arg(nr)
        .map(|i| args[i] as i32)
        .filter(|&fd| fd != guard_common::AT_FDCWD);
    // Where the relative path starts, as guardd can read it now.
    let (label, link, seen) = match dirfd {
        Some(fd) => {
            let magic = PathBuf::from(format!("/proc/{tgid}/fd/{fd}"));
            t.detail.insert("dirfd".into(), json!(fd));
            (
                format!("dirfd {fd}"),
                std::fs::read_link(&magic).ok(),
                identity(&magic),
            )
        }
        None => {
            let magic = PathBuf::from(format!("/proc/{tgid}/cwd"));
            match std::fs::read_link(&magic) {
                Ok(l) => ("cwd".to_owned(), Some(l), identity(&magic)),
                // The process is gone: the scope's working directory is a
                // candidate, accepted only if it is the directory the
                // kernel saw.
                Err(_) => (
                    "cwd".to_owned(),
                    Some(workdir.to_owned()),
                    identity(workdir),
                ),
            }
        }
    };
    let base_ok = link.is_some() && seen.is_some() && seen == facts.base;
    if let Some((dev, ino)) = facts.base {
        t.detail
            .insert("base_inode".into(), json!(format!("{dev:#x}:{ino}")));
    }
    match (&link, base_ok) {
        (Some(l), true) => {
            let abs = normalise(&l.join(p));
            t.real = follow(tgid, &abs);
            t.text = abs.as_os_str().as_bytes().to_vec();
            t.abs = Some(abs);
            if !t.doubts.is_empty() {
                t.text = format!("<unverified: {} at exit>", quoted(&t.text)).into_bytes();
            }
        }
        (Some(l), false) => {
            t.doubts.push(format!(
                "{label} was read by guardd after the call ({}); the kernel's record of the directory the call \
                 used {}",
                l.display(),
                if facts.base.is_some() {
                    "names another one"
                } else {
                    "is missing"
                }
            ));
            t.detail
                .insert("base".into(), json!(l.display().to_string()));
            t.text = format!(
                "<{label}: {} (read by guardd after the call, unverified)>/{}",
                l.display(),
                String::from_utf8_lossy(raw)
            )
            .into_bytes();
        }
        (None, _) => {
            t.doubts.push(format!(
                "{label} could not be read after the call (closed, or the process exited)"
            ));
            t.text = format!(
                "<{label}: unknown (gone before guardd could read it)>/{}",
                String::from_utf8_lossy(raw)
            )
            .into_bytes();
        }
    }
    t
}

/// The credentials a process acts with on files: fsuid, fsgid and groups.
fn fs_creds(tgid: u32) -> Option<(u32, u32, Vec<u32>)> {
    let status = std::fs::read_to_string(format!("/proc/{tgid}/status")).ok()?;
    let field = |name: &str| -> Option<Vec<u32>> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        Some(
            line[name.len()..]
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect(),
        )
    };
    let uid = *field("Uid:")?.get(3)?;
    let gid = *field("Gid:")?.get(3)?;
    Some((uid, gid, field("Groups:").unwrap_or_default()))
}

const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;

/// Whether the file mode bits refuse `want` (r = 4, w = 2, x = 1) on `m`
/// to these credentials, given the capabilities the agent kept.
fn mode_refuses(
    m: &std::fs::Metadata,
    creds: &(u32, u32, Vec<u32>),
    want: u32,
    caps: &[u32],
) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (uid, gid, groups) = creds;
    let mode = m.mode();
    let bits = if *uid == m.uid() {
        mode >> 6
    } else if *gid == m.gid() || groups.contains(&m.gid()) {
        mode >> 3
    } else {
        mode
    } & 7;
    let mut missing = want & !bits;
    if caps.contains(&CAP_DAC_OVERRIDE) {
        // Execute still needs some execute bit on a file.
        missing &= if m.is_dir() || mode & 0o111 != 0 {
            0
        } else {
            1
        };
    }
    if caps.contains(&CAP_DAC_READ_SEARCH) {
        missing &= if m.is_dir() { 2 } else { 3 };
    }
    missing != 0
}

/// Whether the kernel's own permission checks (mode bits along the path)
/// explain a refusal of `path` for the process `tgid`: `None` when that
/// cannot be told (the process is gone).
fn dac_explains(
    tgid: u32,
    path: &Path,
    r: bool,
    w: bool,
    x: bool,
    on_parent: bool,
    caps: &[u32],
) -> Option<bool> {
    let creds = fs_creds(tgid)?;
    let parent = path.parent().unwrap_or(Path::new("/"));
    for dir in parent.ancestors() {
        if let Ok(m) = std::fs::metadata(dir)
            && mode_refuses(&m, &creds, 1, caps)
        {
            return Some(true);
        }
    }
    let want = u32::from(r) * 4 + u32::from(w) * 2 + u32::from(x);
    let (subject, want) = match std::fs::metadata(path) {
        Ok(m) if !on_parent => (m, want),
        // Reading or running a file that is not there is ENOENT, not a
        // refusal.
        Err(_) if !on_parent && !w => return Some(false),
        // Creating, removing or renaming: write on the directory.
        _ => match std::fs::metadata(parent) {
            Ok(m) => (m, 2),
            Err(_) => return Some(false),
        },
    };
    Some(mode_refuses(&subject, &creds, want, caps))
}

/// Which rights a call asked for on its path.
fn need(access: Access, args: &[u64; 6]) -> (bool, bool, bool, &'static str) {
    match access {
        Access::OpenFlags(i) => {
            let flags = args[i];
            let write = flags & 3 != 0 || flags & 0x40 != 0 || flags & 0x200 != 0;
            let read = flags & 3 != 1;
            (read, write, false, if write { "write" } else { "read" })
        }
        Access::Open => (true, false, false, "open"),
        Access::Read | Access::Meta => (true, false, false, "read"),
        Access::Write => (false, true, false, "write"),
        Access::Exec => (false, false, true, "exec"),
    }
}

/// The union of what the policy grants on `path` (rights are inherited down
/// a tree), and the rules that grant something there.
fn granted(fs: &FsPlan, path: &Path) -> ((bool, bool, bool), Vec<String>) {
    let mut g = (false, false, false);
    let mut rules = Vec::new();
    for r in &fs.rules {
        if path.starts_with(&r.path) {
            g.0 |= r.access.read;
            g.1 |= r.access.write;
            g.2 |= r.access.exec;
            rules.push(r.rule.clone());
        }
    }
    (g, rules)
}

const PROT_EXEC: u64 = 4;
const O_DIRECTORY: u64 = 0o200_000;
const AT_EMPTY_PATH: u64 = 0x1000;

/// What descriptor `fd` of process `tgid` names, if it can still be read.
fn fd_target(tgid: u32, fd: u64) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{tgid}/fd/{}", fd as i32)).ok()
}

/// Whether `path` (as the agent named it) is a descriptor link in procfs:
/// `/proc/self/fd/N`, `/proc/thread-self/fd/N` or `/proc/PID/fd/N`. Returns
/// N.
fn proc_fd(path: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(path).ok()?;
    let rest = s.strip_prefix("/proc/")?;
    let (_, fd) = rest.split_once("/fd/")?;
    fd.parse().ok()
}

/// Refusals of the routes around `exec` that are not Landlock's: a mapping
/// made executable from a noexec mount (the loader or `dlopen` on a file
/// outside the exec grants), and a memfd executed or created executable
/// (`vm.memfd_noexec = 2` in the agent's pid namespace).
fn exec_route(
    nr: u32,
    errno: i32,
    args: &[u64; 6],
    tgid: u32,
    path: Option<&[u8]>,
) -> Option<Verdict> {
    let memfd = |p: &Path| p.as_os_str().as_bytes().starts_with(b"/memfd:");
    match nr {
        NR_MMAP | NR_MPROTECT if errno == EPERM && args[2] & PROT_EXEC != 0 => {
            let target = if nr == NR_MMAP {
                fd_target(tgid, args[4])
                    .map(|p| Text::new(p.as_os_str().as_bytes().to_vec()))
                    .unwrap_or_else(|| Text::new(format!("fd {}", args[4] as i32)))
            } else {
                Text::new(format!("mapping at {:#x}", args[0]))
            };
            Some(Verdict {
                kind: Kind::Exec,
                action: "map-exec".into(),
                target,
                rule: "exec.noexec-mapping".into(),
                layer: "mount-noexec",
                detail: json!({
                    "syscall": syscalls::name(nr),
                    "errno": "EPERM",
                    "prot": args[2],
                    "why": "only the exec grants and the library directories may be mapped executable; \
                            every other mount is noexec in the agent's mount namespace",
                }),
            })
        }
        NR_MEMFD_CREATE if errno == EACCES => Some(Verdict {
            kind: Kind::Exec,
            action: "memfd_create".into(),
            target: Text::new("memfd_create(MFD_EXEC)"),
            rule: "exec.memfd-noexec".into(),
            layer: "memfd-noexec",
            detail: json!({"syscall": "memfd_create", "errno": "EACCES", "flags": args[1],
                           "why": "vm.memfd_noexec = 2 in the agent's pid namespace"}),
        }),
        NR_EXECVE | NR_EXECVEAT if errno == EACCES => {
            let raw = path.unwrap_or_default();
            let fd = if nr == NR_EXECVEAT && raw.is_empty() && args[4] & AT_EMPTY_PATH != 0 {
                Some(args[0])
            } else {
                proc_fd(raw)
            }?;
            let target = fd_target(tgid, fd).filter(|t| memfd(t))?;
            Some(Verdict {
                kind: Kind::Exec,
                action: "exec".into(),
                target: Text::new(target.as_os_str().as_bytes().to_vec()),
                rule: "exec.memfd-noexec".into(),
                layer: "memfd-noexec",
                detail: json!({
                    "syscall": syscalls::name(nr),
                    "errno": "EACCES",
                    "fd": fd as i32,
                    "path": Text::new(raw.to_vec()),
                    "why": "memfds are created non-executable and sealed so (vm.memfd_noexec = 2 in the agent's pid namespace)",
                }),
            })
        }
        _ => None,
    }
}

/// Where guard's read-only cgroup views are (the usual mount point).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Calls that change metadata: Landlock does not govern them, the
/// read-only views do (issue 8).
fn changes_metadata(name: &str) -> bool {
    matches!(
        name,
        "chmod"
            | "fchmod"
            | "fchmodat"
            | "fchmodat2"
            | "chown"
            | "fchown"
            | "lchown"
            | "fchownat"
            | "utime"
            | "utimes"
            | "futimesat"
            | "utimensat"
            | "setxattr"
            | "lsetxattr"
            | "fsetxattr"
            | "removexattr"
            | "lremovexattr"
            | "fremovexattr"
    )
}

fn priority_which(w: u64) -> &'static str {
    match w {
        0 => "process",
        1 => "process-group",
        2 => "user",
        _ => "which?",
    }
}

impl Judge {
    /// An EROFS: the agent's read-only view refused a write outside the
    /// write grants, or any write to a cgroup file system. A path under a
    /// write grant that is read-only for its own reasons is the kernel's.
    fn read_only(
        &self,
        name: String,
        args: &[u64; 6],
        tgid: u32,
        nr: u32,
        facts: &PathFacts<'_>,
        base: Value,
    ) -> Verdict {
        let mut base = base;
        let (abs, real) = match facts.exit {
            Some(_) => {
                let t = resolve(nr, args, tgid, facts, &self.workdir);
                base["target_verified"] = json!(t.doubts.is_empty());
                if !t.doubts.is_empty() {
                    base["unverified_because"] = json!(t.doubts);
                }
                for (k, v) in t.detail {
                    base[k] = v;
                }
                (t.abs, t.real)
            }
            // fchmod, fchown, fsetxattr, ftruncate...: the descriptor names
            // the file while the process still exists.
            None => (fd_target(tgid, args[0]), None),
        };
        let mut detail = base;
        detail["access"] = json!(if changes_metadata(&name) {
            "metadata"
        } else {
            "write"
        });
        if let Some(real) = &real {
            detail["resolved"] = json!(real.display().to_string());
        }
        let judged = real.or_else(|| abs.clone());
        let in_cgroupfs = judged
            .as_deref()
            .is_some_and(|p| p.starts_with(CGROUP_ROOT));
        let (layer, rule) = match (&self.fs, &judged) {
            _ if in_cgroupfs => ("mount-readonly", "process.cgroup-scope"),
            (Some(fs), Some(p)) if fs.restricted => {
                let ((_, gw, _), rules) = granted(fs, p);
                if !rules.is_empty() {
                    detail["granted_by"] = json!(rules);
                }
                if gw {
                    ("kernel", "os.permissions")
                } else {
                    ("mount-readonly", "filesystem.default-deny")
                }
            }
            (Some(fs), None) if fs.restricted => ("mount-readonly", "filesystem.default-deny"),
            _ => ("kernel", "os.permissions"),
        };
        if layer == "kernel" {
            detail["why"] = json!("the file system is read-only for reasons of its own");
        }
        Verdict {
            kind: Kind::File,
            action: name.clone(),
            target: Text::new(
                abs.map(|p| p.as_os_str().as_bytes().to_vec())
                    .unwrap_or_else(|| name.into_bytes()),
            ),
            rule: rule.into(),
            layer,
            detail,
        }
    }

    /// `judge_facts` for a path known to be what the kernel judged.
    pub fn judge(
        &self,
        nr: u32,
        ret: i32,
        args: &[u64; 6],
        tgid: u32,
        path: Option<&[u8]>,
    ) -> Option<Verdict> {
        self.judge_facts(nr, ret, args, tgid, &PathFacts::trusted(path))
    }

    /// How a successful call of an agent in learn mode (issue 14) is
    /// journaled: the file access it made (kind `file`, action `read` or
    /// `write`, the absolute path as target) or the inotify watch it placed,
    /// with verdict `audit` and layer `learn`. `None` when the agent's
    /// policy (`--learn --policy FILE`) already grants the access: what the
    /// policy allows is not recorded again.
    pub fn observe(
        &self,
        nr: u32,
        args: &[u64; 6],
        tgid: u32,
        facts: &PathFacts<'_>,
    ) -> Option<Verdict> {
        let (_, _, access) = syscalls::path_call(nr)?;
        let name = syscalls::name(nr);
        let t = resolve(nr, args, tgid, facts, &self.workdir);
        let mut detail = json!({"syscall": name});
        if nr == NR_INOTIFY_ADD_WATCH {
            if self.inotify {
                return None;
            }
            detail["why"] = json!("an inotify watch: a policy needs `[process] inotify = true`");
            if !t.doubts.is_empty() {
                detail["doubts"] = json!(t.doubts);
            }
            return Some(Verdict {
                kind: Kind::Syscall,
                action: name,
                target: Text::new(t.text),
                rule: "learn.observed".into(),
                layer: crate::journal::LEARN_LAYER,
                detail,
            });
        }
        let (read, write, _, _) = need(access, args);
        // An open of a directory lists it: a grant on a directory covers
        // its tree, which the draft must say.
        let directory = match access {
            Access::OpenFlags(i) => {
                args[i] & O_DIRECTORY != 0
                    || t.real
                        .as_ref()
                        .or(t.abs.as_ref())
                        .is_some_and(|p| p.is_dir())
            }
            _ => false,
        };
        let rule = match (&self.fs, &t.abs) {
            (Some(fs), Some(abs)) if fs.restricted => {
                let real = t.real.as_deref().unwrap_or(abs);
                let ((r, w, _), _) = granted(fs, real);
                if (!read || r) && (!write || w) {
                    return None;
                }
                "filesystem.default-deny"
            }
            _ => "learn.observed",
        };
        detail["access"] = json!(match (read, write) {
            (true, true) => "read+write",
            (false, true) => "write",
            _ => "read",
        });
        detail["directory"] = json!(directory);
        if let Some(real) = &t.real {
            detail["real"] = json!(real.display().to_string());
        }
        if !t.doubts.is_empty() {
            detail["doubts"] = json!(t.doubts);
        }
        for (k, v) in t.detail {
            detail[k] = v;
        }
        Some(Verdict {
            kind: Kind::File,
            action: if write { "write" } else { "read" }.to_owned(),
            target: Text::new(t.text),
            rule: rule.into(),
            layer: crate::journal::LEARN_LAYER,
            detail,
        })
    }

    /// The record for a refused call, or `None` when another layer has
    /// journaled it already (the network hooks record their own refusals).
    pub fn judge_facts(
        &self,
        nr: u32,
        ret: i32,
        args: &[u64; 6],
        tgid: u32,
        facts: &PathFacts<'_>,
    ) -> Option<Verdict> {
        let path = facts.exit;
        let errno = -ret;
        let name = syscalls::name(nr);
        let base = json!({"syscall": name, "errno": errno_name(errno), "args": args});
        // 1. seccomp: replay the call against the agent's filter.
        if nr == NR_LISTEN && errno == EPERM && self.seccomp.denies(nr, *args) == Some(EPERM) {
            return Some(Verdict {
                kind: Kind::Network,
                action: "listen".into(),
                target: Text::new(format!("fd {}", args[0] as i32)),
                rule: "network.listen-default-deny".into(),
                layer: "seccomp",
                detail: json!({
                    "syscall": "listen", "errno": "EPERM", "fd": args[0] as i32,
                    "why": "the policy has no listen rules, so nothing may listen (listen() without bind() would take an ephemeral port no bind hook sees)",
                }),
            });
        }
        if let Some(e) = self.seccomp.denies(nr, *args)
            && e == errno
        {
            let rule = match nr {
                NR_MEMFD_CREATE => "syscalls.memfd-exec",
                NR_SOCKET => "syscalls.socket-families",
                NR_CLONE | NR_UNSHARE => "syscalls.namespaces",
                NR_IOCTL => "syscalls.terminal-injection",
                NR_INOTIFY_ADD_WATCH => "syscalls.inotify",
                _ if errno == ENOSYS => "syscalls.enosys-fallback",
                _ => "syscalls.default-deny",
            };
            let mut detail = base;
            if nr == NR_SOCKET {
                detail["family"] = json!(args[0] as u32);
            }
            if nr == NR_INOTIFY_ADD_WATCH {
                detail["path"] = json!(path.map(|p| Text::new(p.to_vec())));
                detail["why"] = json!(
                    "Landlock does not mediate inotify watches, which report the names of files under the watched \
                     directory: watching needs `[process] inotify = true`"
                );
            }
            // An executable memfd is a route to run a program `exec` does
            // not grant: journaled as an exec refusal.
            let kind = match nr {
                NR_MEMFD_CREATE => Kind::Exec,
                // A watch reveals names like a directory read would.
                NR_INOTIFY_ADD_WATCH => Kind::File,
                _ => Kind::Syscall,
            };
            let target = match (nr, path) {
                (NR_INOTIFY_ADD_WATCH, Some(p)) => Text::new(p.to_vec()),
                _ => Text::new(name.clone()),
            };
            return Some(Verdict {
                kind,
                action: name.clone(),
                target,
                rule: rule.to_owned(),
                layer: "seccomp",
                detail,
            });
        }
        // Executable code around the exec grants (issue 7).
        if let Some(v) = exec_route(nr, errno, args, tgid, path) {
            return Some(v);
        }
        // A socket option that would install a routing header or IPv4
        // options, refused by `cgroup/setsockopt` (issue 8, section 4).
        if nr == NR_SETSOCKOPT
            && errno == EPERM
            && guard_common::is_route_option(args[1] as i32, args[2] as i32)
        {
            return Some(Verdict {
                kind: Kind::Network,
                action: "setsockopt".into(),
                target: Text::new(format!(
                    "fd {} level {} option {}",
                    args[0] as i32, args[1] as i32, args[2] as i32
                )),
                rule: "network.source-route".into(),
                layer: "cgroup-bpf",
                detail: json!({
                    "syscall": "setsockopt", "errno": "EPERM", "fd": args[0] as i32,
                    "level": args[1] as i32, "optname": args[2] as i32,
                    "why": "the option sets a routing header or IP options, which send packets to another address than the one connect/sendmsg judged",
                }),
            });
        }
        // 2. Network calls refused by the cgroup hooks are journaled there
        // (the kernel program drops those); an EPERM that reaches here was
        // not the hook's: the kernel refused an option or control message
        // of an allowed address (IPv4 source routing, for one, needs
        // CAP_NET_RAW).
        if matches!(nr, NR_CONNECT | NR_SENDTO | NR_SENDMSG | NR_SENDMMSG) && errno == EPERM {
            return Some(Verdict {
                kind: Kind::Network,
                action: name.clone(),
                target: Text::new(name),
                rule: "process.capabilities".into(),
                layer: "capabilities",
                detail: json!({
                    "syscall": syscalls::name(nr),
                    "errno": "EPERM",
                    "why": "the address was allowed; the kernel refused an option or control message of the call, which needs a capability the agent does not keep",
                }),
            });
        }
        // Landlock answers EXDEV to a rename or link between directories
        // whose grants differ (guard never grants the REFER right); with
        // unrestricted files EXDEV can only be the kernel's cross-filesystem
        // answer, which is no refusal.
        if errno == EXDEV {
            let restricted = self.fs.as_ref().is_some_and(|f| f.restricted);
            if !restricted
                || !matches!(
                    nr,
                    NR_RENAME | NR_LINK | NR_RENAMEAT | NR_LINKAT | NR_RENAMEAT2
                )
            {
                return None;
            }
            let mut detail = base;
            detail["why"] = json!(
                "Landlock refuses to move or link a file into a directory with other grants than its own; \
                 programs fall back to copying (if both paths are on different filesystems the kernel \
                 refuses too)"
            );
            let target = match path {
                Some(_) => {
                    let t = resolve(nr, args, tgid, facts, &self.workdir);
                    if !t.doubts.is_empty() {
                        detail["target_verified"] = json!(false);
                        detail["unverified_because"] = json!(t.doubts);
                    }
                    for (k, v) in t.detail {
                        detail[k] = v;
                    }
                    Text::new(t.text)
                }
                None => Text::new(name.clone()),
            };
            return Some(Verdict {
                kind: Kind::File,
                action: name,
                target,
                rule: "filesystem.refer".into(),
                layer: "landlock",
                detail,
            });
        }
        if nr == NR_SOCKET && errno == EPERM {
            // Raw sockets need CAP_NET_RAW before any hook runs; everything
            // else refused at creation was journaled by sock_create.
            if args[1] & 0xf == SOCK_RAW && !self.caps.contains(&CAP_NET_RAW) {
                return Some(Verdict {
                    kind: Kind::Network,
                    action: "socket".into(),
                    target: Text::new(format!("family {} raw", args[0])),
                    rule: "process.capabilities".into(),
                    layer: "capabilities",
                    detail: json!({"syscall": "socket", "errno": "EPERM", "why": "CAP_NET_RAW is not kept"}),
                });
            }
            return None;
        }
        // 3. Fork refused by the pids limit.
        if errno == EAGAIN {
            return Some(Verdict {
                kind: Kind::Syscall,
                action: "fork".into(),
                target: Text::new(name),
                rule: "process.max_processes".into(),
                layer: "cgroup-pids",
                detail: json!({"syscall": syscalls::name(nr), "errno": "EAGAIN"}),
            })
            .filter(|_| matches!(nr, NR_CLONE | NR_FORK | NR_VFORK));
        }
        // 4. Signals to processes outside the agent (Landlock scoping).
        if matches!(nr, NR_KILL | NR_TKILL | NR_TGKILL | NR_PIDFD_SEND_SIGNAL) && errno == EPERM {
            return Some(Verdict {
                kind: Kind::Syscall,
                action: "signal".into(),
                target: Text::new(format!("pid {}", args[0] as i32)),
                rule: "process.signal-scope".into(),
                layer: "landlock",
                detail: json!({"syscall": name, "signal": args[1] as i32, "errno": "EPERM"}),
            });
        }
        // 4b. Calls that name a process the agent's pid namespace does not
        // hold (the kernel program passes ESRCH for these calls only).
        if errno == ESRCH && names_a_process(nr) {
            let target = if matches!(nr, NR_GETPRIORITY | NR_SETPRIORITY) {
                format!("{} {}", priority_which(args[0]), args[1] as i32)
            } else {
                format!("pid {}", args[0] as i32)
            };
            return Some(Verdict {
                kind: Kind::Syscall,
                action: name,
                target: Text::new(target),
                rule: "process.outside-pid".into(),
                layer: "pid-namespace",
                detail: base,
            });
        }
        // 4c. Read-only views: a write (data or metadata) outside the write
        // grants, or to a cgroup file system.
        if errno == EROFS {
            return Some(self.read_only(name, args, tgid, nr, facts, base));
        }
        // 5. Files and programs.
        if let (Some((_, _, access)), Some(_)) = (syscalls::path_call(nr), path) {
            let t = resolve(nr, args, tgid, facts, &self.workdir);
            let (r, w, x, what) = need(access, args);
            let kind = if access == Access::Exec {
                Kind::Exec
            } else {
                Kind::File
            };
            let mut detail = base;
            detail["access"] = json!(what);
            for (k, v) in t.detail {
                detail[k] = v;
            }
            if let Some(real) = &t.real {
                detail["resolved"] = json!(real.display().to_string());
            }
            let mut doubts = t.doubts;
            let mut layer_rule = ("kernel", "os.permissions");
            if let (Some(abs), true) = (&t.abs, doubts.is_empty()) {
                let judged = t.real.clone().unwrap_or_else(|| abs.clone());
                if let Some(fs) = self.fs.as_ref().filter(|f| f.restricted)
                    && access != Access::Meta
                {
                    let ((gr, gw, gx), rules) = granted(fs, &judged);
                    let ok = (!r || gr) && (!w || gw) && (!x || gx);
                    if !rules.is_empty() {
                        detail["granted_by"] = json!(rules);
                    }
                    if !ok {
                        layer_rule = ("landlock", "filesystem.default-deny");
                    }
                }
                // The policy allows what the readings name, yet the call
                // was refused: the kernel's own checks must explain it, or
                // the path the kernel judged was not the one read (the
                // buffer rewritten and restored while the call ran).
                if layer_rule.0 == "kernel" && access != Access::Meta {
                    let on_parent =
                        access == Access::Write && !matches!(nr, NR_TRUNCATE | NR_CREAT);
                    match dac_explains(tgid, &judged, r, w, x, on_parent, &self.caps) {
                        Some(true) => {}
                        Some(false) => doubts.push(
                            "the policy and the file's permissions allow this access to the path as read, \
                             yet the kernel refused it: the path it judged was another one (the buffer can \
                             be rewritten and restored while the call runs)"
                                .into(),
                        ),
                        None => doubts.push(
                            "the policy allows this access to the path as read, and the process exited \
                             before its permissions could be checked"
                                .into(),
                        ),
                    }
                }
            }
            let (layer, rule) = if doubts.is_empty() {
                detail["target_verified"] = json!(true);
                layer_rule
            } else {
                // Never "the policy allows this" (nor any other rule) from
                // a path the kernel may not have judged.
                detail["target_verified"] = json!(false);
                detail["unverified_because"] = json!(doubts);
                if detail.get("readings").is_none() {
                    detail["readings"] = json!({
                        "entry": facts.entry.map(|e| Text::new(e.to_vec())),
                        "exit": Text::new(facts.exit.unwrap_or_default().to_vec()),
                    });
                }
                detail["why"] = json!(
                    "the refused path could not be established, so neither the layer nor the rule can be named"
                );
                ("unverified", "filesystem.unverified-target")
            };
            if layer == "kernel" {
                detail["why"] = json!(if access == Access::Meta {
                    "Landlock does not govern this call; the kernel's own permission checks refused it"
                } else {
                    "the policy allows this; the kernel's own permission checks refused it"
                });
            }
            let target = if doubts.is_empty() || t.abs.is_none() {
                Text::new(t.text)
            } else {
                Text::new(
                    format!(
                        "<unverified: {}>",
                        quoted(
                            t.abs
                                .as_deref()
                                .unwrap_or(Path::new(""))
                                .as_os_str()
                                .as_bytes()
                        )
                    )
                    .into_bytes(),
                )
            };
            return Some(Verdict {
                kind,
                action: if access == Access::Exec {
                    "exec".into()
                } else {
                    name
                },
                target,
                rule: rule.into(),
                layer,
                detail,
            });
        }
        // 6. Anything else: refused because capabilities were dropped (EPERM)
        // or by the kernel for its own reasons.
        let (layer, rule) = if errno == EPERM {
            ("capabilities", "process.capabilities")
        } else {
            ("kernel", "os.permissions")
        };
        Some(Verdict {
            kind: Kind::Syscall,
            action: name.clone(),
            target: Text::new(name),
            rule: rule.into(),
            layer,
            detail: base,
        })
    }
}

#[cfg(test)]
mod tests {
    use guard_common::syscalls::NR_IO_URING_SETUP;

    use super::*;
    use crate::policy::{Policy, Vars};

    fn judge(policy: &str) -> Judge {
        let p = Policy::parse(policy, "t.toml").unwrap();
        let plan = p
            .compile(&Vars {
                workdir: "/work".into(),
                home: "/root".into(),
                tmp: "/tmp/x".into(),
            })
            .unwrap();
        Judge {
            fs: Some(plan.filesystem),
            workdir: "/work".into(),
            seccomp: crate::launch::seccomp::build(&crate::launch::seccomp::Options::default()),
            caps: vec![],
            inotify: false,
        }
    }

    const P: &str = "[policy]\nname = \"t\"\n[filesystem]\nread = [\"/work\"]\nwrite = [\"/work/out\"]\nexec = [\"/bin/true\"]\n";

    #[test]
    fn seccomp_refusals_name_their_rule() {
        let j = judge(P);
        let v = j.judge(321, -EPERM, &[0; 6], 1, None).unwrap();
        assert_eq!(
            (v.layer, v.rule.as_str(), v.kind),
            ("seccomp", "syscalls.default-deny", Kind::Syscall)
        );
        assert_eq!(v.target.as_str(), Some("bpf"));
        let v = j
            .judge(NR_IO_URING_SETUP, -ENOSYS, &[0; 6], 1, None)
            .unwrap();
        assert_eq!(v.rule, "syscalls.enosys-fallback");
        let v = j
            .judge(NR_SOCKET, -EAFNOSUPPORT, &[17, 3, 0, 0, 0, 0], 1, None)
            .unwrap();
        assert_eq!(v.rule, "syscalls.socket-families");
        let v = j
            .judge(272, -EPERM, &[0x1000_0000, 0, 0, 0, 0, 0], 1, None)
            .unwrap();
        assert_eq!(v.rule, "syscalls.namespaces");
    }

    #[test]
    fn route_options_and_watches_name_their_rule() {
        let j = judge(P);
        let v = j
            .judge(NR_SETSOCKOPT, -EPERM, &[3, 41, 57, 0, 0, 0], 1, None)
            .unwrap();
        assert_eq!(
            (v.kind, v.layer, v.rule.as_str()),
            (Kind::Network, "cgroup-bpf", "network.source-route")
        );
        // Other options refused EPERM are not source routing.
        let v = j
            .judge(NR_SETSOCKOPT, -EPERM, &[3, 1, 2, 0, 0, 0], 1, None)
            .unwrap();
        assert_ne!(v.rule, "network.source-route");
        let v = j
            .judge(
                NR_INOTIFY_ADD_WATCH,
                -EPERM,
                &[3, 0, 0x100, 0, 0, 0],
                1,
                Some(b"/etc/secret"),
            )
            .unwrap();
        assert_eq!(
            (v.kind, v.layer, v.rule.as_str(), v.target.as_bytes()),
            (
                Kind::File,
                "seccomp",
                "syscalls.inotify",
                &b"/etc/secret"[..]
            )
        );
    }

    #[test]
    fn listen_refused_by_seccomp_and_bind_left_to_the_hooks() {
        let j = judge(P);
        let v = j
            .judge(NR_LISTEN, -EPERM, &[3, 5, 0, 0, 0, 0], 1, None)
            .unwrap();
        assert_eq!(
            (v.kind, v.action.as_str(), v.layer, v.rule.as_str()),
            (
                Kind::Network,
                "listen",
                "seccomp",
                "network.listen-default-deny"
            )
        );
        assert_eq!(v.target.as_str(), Some("fd 3"));
        // A bind EPERM reaches the judge only when the bind hooks did not
        // cause it (they mark the thread and the kernel program drops
        // theirs): a capability the agent lacks.
        use guard_common::syscalls::NR_BIND;
        let v = j
            .judge(NR_BIND, -EPERM, &[3, 0, 0, 0, 0, 0], 1, None)
            .unwrap();
        assert_eq!(v.layer, "capabilities");
        // With listen allowed, an EPERM from listen is not seccomp's.
        let open = Judge {
            seccomp: crate::launch::seccomp::build(&crate::launch::seccomp::Options {
                listen: true,
                ..crate::launch::seccomp::Options::default()
            }),
            ..judge(P)
        };
        let v = open
            .judge(NR_LISTEN, -EPERM, &[3, 5, 0, 0, 0, 0], 1, None)
            .unwrap();
        assert_ne!(v.layer, "seccomp");
    }

    #[test]
    fn read_only_views_and_outside_pids_name_their_layer() {
        let j = judge(P);
        // fchmodat(AT_FDCWD, "/etc/passwd", 04755): metadata outside the
        // write grants.
        let v = j
            .judge(
                268,
                -EROFS,
                &[0, 0, 0o4755, 0, 0, 0],
                1,
                Some(b"/etc/passwd"),
            )
            .unwrap();
        assert_eq!(
            (v.kind, v.action.as_str(), v.layer, v.rule.as_str()),
            (
                Kind::File,
                "fchmodat",
                "mount-readonly",
                "filesystem.default-deny"
            )
        );
        assert_eq!(v.detail["access"], "metadata");
        // A cgroup file, whatever the file policy.
        let v = j
            .judge(
                257,
                -EROFS,
                &[0, 0, 1, 0, 0, 0],
                1,
                Some(b"/sys/fs/cgroup/unified/cgroup.procs"),
            )
            .unwrap();
        assert_eq!(
            (v.layer, v.rule.as_str()),
            ("mount-readonly", "process.cgroup-scope")
        );
        // prlimit64 of a pid outside the agent's pid namespace.
        let v = j
            .judge(302, -ESRCH, &[4242, 7, 0, 0, 0, 0], 1, None)
            .unwrap();
        assert_eq!(
            (v.kind, v.layer, v.rule.as_str()),
            (Kind::Syscall, "pid-namespace", "process.outside-pid")
        );
        assert_eq!(v.target.as_str(), Some("pid 4242"));
    }

    #[test]
    fn learn_mode_records_only_what_the_policy_would_refuse() {
        let j = judge(P);
        let facts = |p: &'static [u8]| PathFacts::trusted(Some(p));
        // openat(AT_FDCWD, "/work/in", O_RDONLY): granted, not recorded again.
        assert!(j.observe(257, &[0; 6], 1, &facts(b"/work/in")).is_none());
        // Writing there is not granted: recorded, as the rule it breaks.
        let v = j
            .observe(257, &[0, 0, 0o1 | 0o100, 0, 0, 0], 1, &facts(b"/work/in"))
            .unwrap();
        assert_eq!(
            (v.kind, v.action.as_str(), v.layer, v.rule.as_str()),
            (Kind::File, "write", "learn", "filesystem.default-deny")
        );
        assert_eq!(v.detail["access"], "write");
        assert_eq!(v.detail["syscall"], "openat");
        // O_RDWR needs both.
        let v = j
            .observe(257, &[0, 0, 0o2, 0, 0, 0], 1, &facts(b"/etc/hostname"))
            .unwrap();
        assert_eq!(v.detail["access"], "read+write");
        // A removal is a write; a directory opened is a listing.
        let v = j.observe(87, &[0; 6], 1, &facts(b"/work/x")).unwrap();
        assert_eq!(v.action, "write");
        // Granted writes (the policy writes /work/out) are not recorded.
        assert!(
            j.observe(87, &[0; 6], 1, &facts(b"/work/out/x/y"))
                .is_none()
        );
        let v = j
            .observe(257, &[0, 0, 0o200_000, 0, 0, 0], 1, &facts(b"/usr"))
            .unwrap();
        assert_eq!(v.detail["directory"], true);
        // Without a policy every access is recorded as observed.
        let none = Judge {
            fs: None,
            ..judge(P)
        };
        let v = none.observe(257, &[0; 6], 1, &facts(b"/work/in")).unwrap();
        assert_eq!(v.rule, "learn.observed");
        // A watch: recorded unless the policy allows watches.
        let v = none
            .observe(
                NR_INOTIFY_ADD_WATCH,
                &[3, 0, 0, 0, 0, 0],
                1,
                &facts(b"/work"),
            )
            .unwrap();
        assert_eq!(
            (v.kind, v.action.as_str()),
            (Kind::Syscall, "inotify_add_watch")
        );
        let watching = Judge {
            inotify: true,
            ..judge(P)
        };
        assert!(
            watching
                .observe(
                    NR_INOTIFY_ADD_WATCH,
                    &[3, 0, 0, 0, 0, 0],
                    1,
                    &facts(b"/work")
                )
                .is_none()
        );
    }

    #[test]
    fn files_are_landlock_unless_granted() {
        let j = judge(P);
        // openat(AT_FDCWD, "/etc/shadow", O_RDONLY)
        let v = j
            .judge(257, -EACCES, &[0, 0, 0, 0, 0, 0], 1, Some(b"/etc/shadow"))
            .unwrap();
        assert_eq!(
            (v.layer, v.rule.as_str(), v.kind),
            ("landlock", "filesystem.default-deny", Kind::File)
        );
        assert_eq!(v.target.as_str(), Some("/etc/shadow"));
        assert_eq!(v.detail["access"], "read");
        // Writing where only reading is granted.
        let v = j
            .judge(
                257,
                -EACCES,
                &[0, 0, 0o1 | 0o100, 0, 0, 0],
                1,
                Some(b"/work/x"),
            )
            .unwrap();
        assert_eq!(v.layer, "landlock");
        assert_eq!(v.detail["access"], "write");
        // Reading a granted file that does not exist cannot have been
        // refused: the path the kernel judged was another one.
        let v = j
            .judge(
                257,
                -EACCES,
                &[0; 6],
                1,
                Some(b"/work/../work/no-such-file"),
            )
            .unwrap();
        assert_eq!(
            (v.layer, v.rule.as_str()),
            ("unverified", "filesystem.unverified-target")
        );
        assert_eq!(v.detail["target_verified"], false);
        // exec outside the exec list.
        let v = j
            .judge(NR_EXECVE, -EACCES, &[0; 6], 1, Some(b"/usr/bin/curl"))
            .unwrap();
        assert_eq!(
            (v.kind, v.action.as_str(), v.layer),
            (Kind::Exec, "exec", "landlock")
        );
    }

    #[test]
    fn routes_around_exec_name_their_layer() {
        let j = judge(P);
        // mmap(PROT_READ|PROT_EXEC) of a file on a noexec mount.
        let v = j
            .judge(NR_MMAP, -EPERM, &[0, 4096, 5, 2, 987_654, 0], 1, None)
            .unwrap();
        assert_eq!(
            (v.kind, v.layer, v.rule.as_str()),
            (Kind::Exec, "mount-noexec", "exec.noexec-mapping")
        );
        assert_eq!(v.target.as_str(), Some("fd 987654"));
        // Without PROT_EXEC an EPERM mmap is not about exec.
        let v = j.judge(NR_MMAP, -EPERM, &[0, 4096, 3, 2, 3, 0], 1, None);
        assert_ne!(v.map(|v| v.layer), Some("mount-noexec"));
        // memfd_create(MFD_EXEC): seccomp first, the sysctl behind it.
        let v = j
            .judge(NR_MEMFD_CREATE, -EPERM, &[0, 0x11, 0, 0, 0, 0], 1, None)
            .unwrap();
        assert_eq!(
            (v.kind, v.layer, v.rule.as_str()),
            (Kind::Exec, "seccomp", "syscalls.memfd-exec")
        );
        let v = j
            .judge(NR_MEMFD_CREATE, -EACCES, &[0, 0, 0, 0, 0, 0], 1, None)
            .unwrap();
        assert_eq!((v.kind, v.layer), (Kind::Exec, "memfd-noexec"));
        assert_eq!(proc_fd(b"/proc/self/fd/12"), Some(12));
        assert_eq!(proc_fd(b"/proc/77/fd/3"), Some(3));
        assert_eq!(proc_fd(b"/usr/bin/id"), None);
    }

    #[test]
    fn network_refusals_are_left_to_the_hooks_and_forks_to_pids() {
        let j = judge(P);
        assert!(
            j.judge(NR_SOCKET, -EPERM, &[2, 2, 1, 0, 0, 0], 1, None)
                .is_none()
        );
        let v = j
            .judge(NR_SOCKET, -EPERM, &[2, 3, 1, 0, 0, 0], 1, None)
            .unwrap();
        assert_eq!(v.layer, "capabilities");
        let v = j
            .judge(NR_CLONE, -EAGAIN, &[17, 0, 0, 0, 0, 0], 1, None)
            .unwrap();
        assert_eq!(
            (v.layer, v.rule.as_str()),
            ("cgroup-pids", "process.max_processes")
        );
        assert!(j.judge(0, -EAGAIN, &[0; 6], 1, None).is_none());
        let v = j
            .judge(NR_KILL, -EPERM, &[1, 9, 0, 0, 0, 0], 1, None)
            .unwrap();
        assert_eq!(v.rule, "process.signal-scope");
        // An EPERM of a send that the hook did not cause.
        let v = j.judge(NR_SENDMSG, -EPERM, &[0; 6], 1, None).unwrap();
        assert_eq!((v.kind, v.layer), (Kind::Network, "capabilities"));
        // Landlock's EXDEV for a rename between directories; other EXDEVs
        // are no refusal.
        let v = j
            .judge(NR_RENAME, -EXDEV, &[0; 6], 1, Some(b"/work/out/a"))
            .unwrap();
        assert_eq!((v.rule.as_str(), v.layer), ("filesystem.refer", "landlock"));
        assert!(j.judge(0, -EXDEV, &[0; 6], 1, None).is_none());
    }

    /// A judge granting read on `dir`, for the tests that need real files
    /// and this process as the caller.
    fn judge_of(dir: &Path) -> Judge {
        let policy = format!(
            "[policy]\nname = \"t\"\n[filesystem]\nread = [{:?}]\n",
            dir.display().to_string()
        );
        Judge {
            workdir: dir.to_owned(),
            ..judge(&policy)
        }
    }

    fn scratch() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("closed"), "x").unwrap();
        std::fs::set_permissions(
            d.path().join("closed"),
            std::fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        std::fs::write(d.path().join("open"), "x").unwrap();
        d
    }

    #[test]
    fn a_granted_path_refused_is_the_kernels_only_when_its_permissions_explain_it() {
        let d = scratch();
        let j = judge_of(d.path());
        let me = std::process::id();
        // Mode 000: the kernel's own checks refuse (no capability is kept).
        let closed = d.path().join("closed");
        let v = j
            .judge(
                257,
                -EACCES,
                &[0; 6],
                me,
                Some(closed.as_os_str().as_bytes()),
            )
            .unwrap();
        assert_eq!((v.layer, v.rule.as_str()), ("kernel", "os.permissions"));
        assert_eq!(v.detail["target_verified"], true);
        assert_eq!(v.target.as_bytes(), closed.as_os_str().as_bytes());
        // Readable by everyone and granted, yet refused: whatever the
        // kernel judged, it was not this path. Never "the policy allows".
        let open = d.path().join("open");
        let v = j
            .judge(257, -EACCES, &[0; 6], me, Some(open.as_os_str().as_bytes()))
            .unwrap();
        assert_eq!(
            (v.layer, v.rule.as_str()),
            ("unverified", "filesystem.unverified-target")
        );
        assert_eq!(v.detail["target_verified"], false);
        assert!(v.target.as_str().unwrap().starts_with("<unverified"));
        assert!(
            v.detail["why"]
                .as_str()
                .unwrap()
                .contains("could not be established")
        );
    }

    #[test]
    fn readings_that_differ_or_are_missing_are_unverified() {
        let j = judge(P);
        let facts = PathFacts {
            exit: Some(b"notes.txt"),
            entry: Some(b"/etc/shadow"),
            base: None,
        };
        let v = j.judge_facts(257, -EACCES, &[0; 6], 1, &facts).unwrap();
        assert_eq!(v.layer, "unverified");
        assert_eq!(v.detail["target_verified"], false);
        assert_eq!(v.detail["readings"]["entry"], "/etc/shadow");
        assert_eq!(v.detail["readings"]["exit"], "notes.txt");
        let t = v.target.as_str().unwrap();
        assert!(t.contains("/etc/shadow") && t.contains("notes.txt"), "{t}");
        assert!(t.starts_with("<unverified"), "{t}");
        // Only the exit reading: never a verified target either.
        let facts = PathFacts {
            exit: Some(b"/etc/shadow"),
            entry: None,
            base: None,
        };
        let v = j.judge_facts(257, -EACCES, &[0; 6], 1, &facts).unwrap();
        assert_eq!(v.detail["target_verified"], false);
        assert_eq!(v.layer, "unverified");
        assert_eq!(v.target.as_str(), Some("<unverified: \"/etc/shadow\">"));
    }

    #[test]
    fn a_relative_path_starts_at_its_directory_descriptor_never_the_cwd() {
        use std::os::fd::AsRawFd;
        let d = scratch();
        let j = judge_of(d.path());
        let me = std::process::id();
        let dir = std::fs::File::open(d.path()).unwrap();
        let fd = dir.as_raw_fd() as u64;
        let id = identity(d.path()).unwrap();
        // openat(dirfd, "closed"): the kernel saw this directory.
        let facts = PathFacts {
            exit: Some(b"closed"),
            entry: Some(b"closed"),
            base: Some(id),
        };
        let v = j
            .judge_facts(257, -EACCES, &[fd, 0, 0, 0, 0, 0], me, &facts)
            .unwrap();
        let want = d.path().join("closed");
        assert_eq!(v.target.as_bytes(), want.as_os_str().as_bytes());
        assert_eq!(v.detail["dirfd"], fd as i32);
        assert_eq!(v.detail["target_verified"], true);
        // The kernel saw another directory (the descriptor was replaced
        // after the call): guardd's reading is shown as unverified.
        let facts = PathFacts {
            base: Some((id.0, id.1 + 1)),
            ..facts
        };
        let v = j
            .judge_facts(257, -EACCES, &[fd, 0, 0, 0, 0, 0], me, &facts)
            .unwrap();
        let t = v.target.as_str().unwrap();
        assert!(
            t.starts_with(&format!("<dirfd {fd}: {}", d.path().display())),
            "{t}"
        );
        assert!(t.contains("unverified") && t.ends_with(">/closed"), "{t}");
        assert_eq!(v.layer, "unverified");
        // A closed descriptor: unknown, and still not the working directory.
        let facts = PathFacts {
            base: None,
            ..facts
        };
        let v = j
            .judge_facts(257, -EACCES, &[999_999, 0, 0, 0, 0, 0], me, &facts)
            .unwrap();
        let t = v.target.as_str().unwrap();
        assert!(t.starts_with("<dirfd 999999: unknown"), "{t}");
        // AT_FDCWD: the working directory, checked the same way.
        let cwd = std::env::current_dir().unwrap();
        let facts = PathFacts {
            exit: Some(b"x"),
            entry: Some(b"x"),
            base: identity(&cwd),
        };
        let at_fdcwd = guard_common::AT_FDCWD as i64 as u64;
        let v = j
            .judge_facts(257, -EACCES, &[at_fdcwd, 0, 0, 0, 0, 0], me, &facts)
            .unwrap();
        assert_eq!(v.target.as_bytes(), cwd.join("x").as_os_str().as_bytes());
    }
}
