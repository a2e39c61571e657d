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

use serde_json::{Value, json};

use crate::{
    journal::{Kind, Text},
    launch::seccomp::{self, NR_CLONE, NR_SOCKET, Program},
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
const NR_RENAME: u32 = 82;
const NR_LINK: u32 = 86;
const NR_RENAMEAT: u32 = 264;
const NR_LINKAT: u32 = 265;
const NR_RENAMEAT2: u32 = 316;
const NR_CONNECT: u32 = 42;
const NR_SENDTO: u32 = 44;
const NR_SENDMSG: u32 = 46;
const NR_SENDMMSG: u32 = 307;
const NR_SETSOCKOPT: u32 = 54;
const NR_FORK: u32 = 57;
const NR_VFORK: u32 = 58;
const NR_KILL: u32 = 62;
const NR_TKILL: u32 = 200;
const NR_TGKILL: u32 = 234;
const NR_PIDFD_SEND_SIGNAL: u32 = 424;
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

/// The path as the agent named it, made absolute; where it really leads
/// (symlinks and `/proc/self` followed from the agent's point of view); and
/// whether the working directory had to be assumed (the process is gone).
pub fn resolve(tgid: u32, raw: &[u8], workdir: &Path) -> (PathBuf, Option<PathBuf>, bool) {
    let p = Path::new(std::ffi::OsStr::from_bytes(raw));
    let mut assumed = false;
    let abs = if p.is_absolute() {
        normalise(p)
    } else {
        let cwd = std::fs::read_link(format!("/proc/{tgid}/cwd")).unwrap_or_else(|_| {
            assumed = true;
            workdir.to_owned()
        });
        normalise(&cwd.join(p))
    };
    // /proc/self inside the agent is the agent, not guardd.
    let lookup = match abs.strip_prefix("/proc/self") {
        Ok(rest) => PathBuf::from(format!("/proc/{tgid}")).join(rest),
        Err(_) => abs.clone(),
    };
    let real = std::fs::canonicalize(&lookup).ok().or_else(|| {
        let parent = lookup.parent()?;
        Some(
            std::fs::canonicalize(parent)
                .ok()?
                .join(lookup.file_name()?),
        )
    });
    let real = real.filter(|r| *r != abs);
    (abs, real, assumed)
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

const NR_MMAP: u32 = 9;
const NR_MPROTECT: u32 = 10;
const NR_EXECVE: u32 = 59;
const NR_EXECVEAT: u32 = 322;
const PROT_EXEC: u64 = 4;
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
        seccomp::NR_MEMFD_CREATE if errno == EACCES => Some(Verdict {
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

/// prlimit64, getpgid, getsid, getpriority, setpriority, sched_getparam,
/// sched_setscheduler, sched_getscheduler, sched_rr_get_interval,
/// sched_setaffinity, sched_getaffinity, get_robust_list, pidfd_open,
/// setpgid (the same list as guard-ebpf's `names_a_process`).
const NAMES_A_PROCESS: [u32; 14] = [
    302, 121, 124, 140, 141, 143, 144, 145, 148, 203, 204, 274, 434, 109,
];
const NR_GETPRIORITY: u32 = 140;
const NR_SETPRIORITY: u32 = 141;
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
        path: Option<&[u8]>,
        base: Value,
    ) -> Verdict {
        let (abs, real) = match path {
            Some(raw) => {
                let (abs, real, _) = resolve(tgid, raw, &self.workdir);
                (Some(abs), real)
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

    /// The record for a refused call, or `None` when another layer has
    /// journaled it already (the network hooks record their own refusals).
    pub fn judge(
        &self,
        nr: u32,
        ret: i32,
        args: &[u64; 6],
        tgid: u32,
        path: Option<&[u8]>,
    ) -> Option<Verdict> {
        let errno = -ret;
        let name = syscalls::name(nr);
        let base = json!({"syscall": name, "errno": errno_name(errno), "args": args});
        // 1. seccomp: replay the call against the agent's filter.
        if nr == seccomp::NR_LISTEN
            && errno == EPERM
            && self.seccomp.denies(nr, *args) == Some(EPERM)
        {
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
                seccomp::NR_MEMFD_CREATE => "syscalls.memfd-exec",
                NR_SOCKET => "syscalls.socket-families",
                NR_CLONE | seccomp::NR_UNSHARE => "syscalls.namespaces",
                seccomp::NR_IOCTL => "syscalls.terminal-injection",
                seccomp::NR_INOTIFY_ADD_WATCH => "syscalls.inotify",
                _ if errno == ENOSYS => "syscalls.enosys-fallback",
                _ => "syscalls.default-deny",
            };
            let mut detail = base;
            if nr == NR_SOCKET {
                detail["family"] = json!(args[0] as u32);
            }
            if nr == seccomp::NR_INOTIFY_ADD_WATCH {
                detail["path"] = json!(path.map(|p| Text::new(p.to_vec())));
                detail["why"] = json!(
                    "Landlock does not mediate inotify watches, which report the names of files under the watched \
                     directory: watching needs `[process] inotify = true`"
                );
            }
            // An executable memfd is a route to run a program `exec` does
            // not grant: journaled as an exec refusal.
            let kind = match nr {
                seccomp::NR_MEMFD_CREATE => Kind::Exec,
                // A watch reveals names like a directory read would.
                seccomp::NR_INOTIFY_ADD_WATCH => Kind::File,
                _ => Kind::Syscall,
            };
            let target = match (nr, path) {
                (seccomp::NR_INOTIFY_ADD_WATCH, Some(p)) => Text::new(p.to_vec()),
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
                Some(raw) => {
                    let (abs, _, _) = resolve(tgid, raw, &self.workdir);
                    Text::new(abs.as_os_str().as_bytes().to_vec())
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
        if errno == ESRCH && NAMES_A_PROCESS.contains(&nr) {
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
            return Some(self.read_only(name, args, tgid, path, base));
        }
        // 5. Files and programs.
        if let (Some((_, _, access)), Some(raw)) = (syscalls::path_call(nr), path) {
            let (abs, real, assumed) = resolve(tgid, raw, &self.workdir);
            let (r, w, x, what) = need(access, args);
            let kind = if access == Access::Exec {
                Kind::Exec
            } else {
                Kind::File
            };
            let mut detail = base;
            detail["access"] = json!(what);
            if assumed {
                detail["cwd"] = json!(format!(
                    "{} (assumed: the process had exited before its working directory could be read)",
                    self.workdir.display()
                ));
            }
            if let Some(real) = &real {
                detail["resolved"] = json!(real.display().to_string());
            }
            let judged = real.clone().unwrap_or_else(|| abs.clone());
            let (layer, rule) = match &self.fs {
                Some(fs) if fs.restricted && access != Access::Meta => {
                    let ((gr, gw, gx), rules) = granted(fs, &judged);
                    let ok = (!r || gr) && (!w || gw) && (!x || gx);
                    if !rules.is_empty() {
                        detail["granted_by"] = json!(rules);
                    }
                    if ok {
                        ("kernel", "os.permissions")
                    } else {
                        ("landlock", "filesystem.default-deny")
                    }
                }
                _ => ("kernel", "os.permissions"),
            };
            if layer == "kernel" {
                detail["why"] =
                    json!("the policy allows this; the kernel's own permission checks refused it");
            }
            let target = Text::new(abs.as_os_str().as_bytes().to_vec());
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
            seccomp: seccomp::build(&seccomp::Options::default()),
            caps: vec![],
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
        let v = j.judge(425, -ENOSYS, &[0; 6], 1, None).unwrap();
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
                seccomp::NR_INOTIFY_ADD_WATCH,
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
            .judge(seccomp::NR_LISTEN, -EPERM, &[3, 5, 0, 0, 0, 0], 1, None)
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
        const NR_BIND: u32 = 49;
        let v = j
            .judge(NR_BIND, -EPERM, &[3, 0, 0, 0, 0, 0], 1, None)
            .unwrap();
        assert_eq!(v.layer, "capabilities");
        // With listen allowed, an EPERM from listen is not seccomp's.
        let open = Judge {
            seccomp: seccomp::build(&seccomp::Options {
                listen: true,
                ..seccomp::Options::default()
            }),
            ..judge(P)
        };
        let v = open
            .judge(seccomp::NR_LISTEN, -EPERM, &[3, 5, 0, 0, 0, 0], 1, None)
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
        // Reading a granted file refused anyway: the kernel's own checks.
        let v = j
            .judge(257, -EACCES, &[0; 6], 1, Some(b"/work/../work/secret"))
            .unwrap();
        assert_eq!((v.layer, v.rule.as_str()), ("kernel", "os.permissions"));
        assert_eq!(v.target.as_str(), Some("/work/secret"));
        // exec outside the exec list.
        let v = j
            .judge(59, -EACCES, &[0; 6], 1, Some(b"/usr/bin/curl"))
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
            .judge(
                seccomp::NR_MEMFD_CREATE,
                -EPERM,
                &[0, 0x11, 0, 0, 0, 0],
                1,
                None,
            )
            .unwrap();
        assert_eq!(
            (v.kind, v.layer, v.rule.as_str()),
            (Kind::Exec, "seccomp", "syscalls.memfd-exec")
        );
        let v = j
            .judge(
                seccomp::NR_MEMFD_CREATE,
                -EACCES,
                &[0, 0, 0, 0, 0, 0],
                1,
                None,
            )
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
}
