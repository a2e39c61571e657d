//! Landlock for the agent: file access by path hierarchy, and scoping of
//! abstract Unix sockets and signals (ABI 6+).
//!
//! Landlock's TCP port rules (ABI 4) are deliberately not used: Landlock
//! decides in `security_socket_connect`, before the cgroup connect hooks run,
//! so it would refuse with EACCES and no record naming the rule, hiding the
//! network layer that attributes every denial.
//!
//! The ruleset is built in the parent (opening every path there, following
//! symlinks, so rules name real inodes); the child only calls
//! `landlock_restrict_self`, plus one `open` per `/proc/self` rule, which must
//! name the child's own process directory. With a private procfs (the agent
//! in its own pid namespace) that becomes one rule on the agent's `/proc`,
//! which holds only the agent's processes: every one of them then reaches
//! its own `/proc/self`. Rules are bound to inodes, so bind mounts of the
//! same files and directories (the exec views) keep matching.
//!
//! The ABI is negotiated: every right this kernel knows is handled (so it is
//! denied unless granted). Rights the kernel does not know are listed in the
//! report, so the caller can refuse to start or record the degradation.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use thiserror::Error;

const SYS_CREATE_RULESET: libc::c_long = 444;
const SYS_ADD_RULE: libc::c_long = 445;
const SYS_RESTRICT_SELF: libc::c_long = 446;
const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: u32 = 1;

pub mod fs {
    pub const EXECUTE: u64 = 1 << 0;
    pub const WRITE_FILE: u64 = 1 << 1;
    pub const READ_FILE: u64 = 1 << 2;
    pub const READ_DIR: u64 = 1 << 3;
    pub const REMOVE_DIR: u64 = 1 << 4;
    pub const REMOVE_FILE: u64 = 1 << 5;
    pub const MAKE_CHAR: u64 = 1 << 6;
    pub const MAKE_DIR: u64 = 1 << 7;
    pub const MAKE_REG: u64 = 1 << 8;
    pub const MAKE_SOCK: u64 = 1 << 9;
    pub const MAKE_FIFO: u64 = 1 << 10;
    pub const MAKE_BLOCK: u64 = 1 << 11;
    pub const MAKE_SYM: u64 = 1 << 12;
    pub const REFER: u64 = 1 << 13;
    pub const TRUNCATE: u64 = 1 << 14;
    pub const IOCTL_DEV: u64 = 1 << 15;
    /// Rights that make sense on a file (not a directory).
    pub const FILE_RIGHTS: u64 = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV;
}
const SCOPE_ABSTRACT_UNIX: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;
const RESTRICT_SELF_LOG_NEW_EXEC_ON: u32 = 1 << 1;

/// File-system rights each ABI version knows.
fn fs_rights(abi: u32) -> u64 {
    let mut r = (1 << 13) - 1; // ABI 1: EXECUTE..MAKE_SYM
    if abi >= 2 {
        r |= fs::REFER;
    }
    if abi >= 3 {
        r |= fs::TRUNCATE;
    }
    if abi >= 5 {
        r |= fs::IOCTL_DEV;
    }
    r
}

/// What a policy grant means in Landlock rights.
pub fn rights_for(read: bool, write: bool, exec: bool) -> u64 {
    let mut r = 0;
    if read || exec {
        // Running a program or script needs it readable (interpreters read
        // scripts, the loader maps the binary).
        r |= fs::READ_FILE | fs::READ_DIR;
    }
    if write {
        r |= fs::WRITE_FILE
            | fs::TRUNCATE
            | fs::REMOVE_DIR
            | fs::REMOVE_FILE
            | fs::MAKE_DIR
            | fs::MAKE_REG
            | fs::MAKE_SOCK
            | fs::MAKE_FIFO
            | fs::MAKE_SYM
            | fs::REFER
            | fs::IOCTL_DEV;
    }
    if exec {
        r |= fs::EXECUTE;
    }
    r
}

#[derive(Debug, Error)]
pub enum LandlockError {
    #[error("Landlock is not available on this kernel ({0})")]
    Unavailable(io::Error),
    #[error("{path}: {source} (named by {rule})")]
    Path {
        path: PathBuf,
        rule: String,
        source: io::Error,
    },
    #[error("landlock {op}: {source}")]
    Call { op: &'static str, source: io::Error },
}

/// One path grant.
#[derive(Clone, Debug)]
pub struct Grant {
    pub path: PathBuf,
    pub rights: u64,
    /// A policy-named path must exist; a base path may be missing on this
    /// host and is then skipped.
    pub required: bool,
    pub rule: String,
}

#[derive(Clone, Debug, Default)]
pub struct Request {
    /// Handle file-system rights at all (default-deny for files). Without
    /// it only the network and scoping parts apply.
    pub restrict_fs: bool,
    pub grants: Vec<Grant>,
    pub scope_abstract_unix: bool,
    pub scope_signals: bool,
}

/// What Landlock will enforce on this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub abi: u32,
    pub scoped_abstract_unix: bool,
    pub scoped_signals: bool,
    /// Requested protections this kernel cannot give.
    pub missing: Vec<String>,
    /// Base paths that do not exist here.
    pub skipped: Vec<PathBuf>,
}

/// A ruleset ready for `restrict_self` in the child.
pub struct Prepared {
    ruleset: OwnedFd,
    /// `/proc/self...` paths, opened by the child itself.
    child_paths: Vec<(CString, u64)>,
    restrict_flags: u32,
    /// The agent has its own procfs (pid namespace, `subset=pid`): the
    /// `/proc/self` grants become one rule on that `/proc`, so every process
    /// of the agent reaches its own directory (a rule on `/proc/self` opened
    /// by the launcher's child names that one process only).
    private_proc: bool,
}

/// The Landlock ABI version of this kernel, or why there is none.
pub fn abi_version() -> io::Result<u32> {
    // SAFETY: the version query takes no attribute pointer.
    let rc = unsafe {
        libc::syscall(
            SYS_CREATE_RULESET,
            std::ptr::null::<u8>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as u32)
    }
}

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

fn add_path_rule(ruleset: RawFd, fd: RawFd, rights: u64) -> io::Result<()> {
    let attr = PathBeneathAttr {
        allowed_access: rights,
        parent_fd: fd,
    };
    // SAFETY: the attribute is valid for the call.
    let rc = unsafe {
        libc::syscall(
            SYS_ADD_RULE,
            ruleset,
            RULE_PATH_BENEATH,
            &raw const attr,
            0u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn open_path(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: opening a NUL-terminated path with O_PATH (no access needed).
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: a new descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn is_proc_self(path: &Path) -> bool {
    path.starts_with("/proc/self") || path.starts_with("/proc/thread-self")
}

pub fn prepare(req: &Request) -> Result<(Prepared, Report), LandlockError> {
    let abi = abi_version().map_err(LandlockError::Unavailable)?;
    let handled_fs = if req.restrict_fs { fs_rights(abi) } else { 0 };
    let mut report = Report {
        abi,
        ..Report::default()
    };
    for (what, need) in [
        ("cross-directory rename/link control (Landlock ABI 2)", 2),
        ("truncate control (Landlock ABI 3)", 3),
        ("device ioctl control (Landlock ABI 5)", 5),
    ] {
        if req.restrict_fs && abi < need {
            report.missing.push(what.into());
        }
    }
    let mut scoped = 0;
    if abi >= 6 {
        if req.scope_abstract_unix {
            scoped |= SCOPE_ABSTRACT_UNIX;
            report.scoped_abstract_unix = true;
        }
        if req.scope_signals {
            scoped |= SCOPE_SIGNAL;
            report.scoped_signals = true;
        }
    } else if req.scope_abstract_unix || req.scope_signals {
        report
            .missing
            .push("abstract socket and signal scoping (Landlock ABI 6)".into());
    }
    if handled_fs == 0 && scoped == 0 {
        return Err(LandlockError::Call {
            op: "create_ruleset",
            source: io::Error::new(io::ErrorKind::InvalidInput, "nothing to restrict"),
        });
    }
    let attr = RulesetAttr {
        handled_access_fs: handled_fs,
        handled_access_net: 0,
        scoped,
    };
    // Older kernels reject attribute fields they do not know: pass only the
    // prefix this ABI understands.
    let size = if abi >= 6 {
        24
    } else if abi >= 4 {
        16
    } else {
        8
    };
    // SAFETY: `attr` is valid for `size` bytes.
    let fd = unsafe { libc::syscall(SYS_CREATE_RULESET, &raw const attr, size as usize, 0u32) };
    if fd < 0 {
        return Err(LandlockError::Call {
            op: "create_ruleset",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: a new descriptor we own.
    let ruleset = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };

    let mut child_paths = Vec::new();
    for g in &req.grants {
        let rights = g.rights & handled_fs;
        if rights == 0 {
            continue;
        }
        if is_proc_self(&g.path) {
            let c =
                CString::new(g.path.as_os_str().as_bytes()).map_err(|_| LandlockError::Path {
                    path: g.path.clone(),
                    rule: g.rule.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"),
                })?;
            child_paths.push((c, rights));
            continue;
        }
        let fd = match open_path(&g.path) {
            Ok(fd) => fd,
            Err(e) if !g.required && e.kind() == io::ErrorKind::NotFound => {
                report.skipped.push(g.path.clone());
                continue;
            }
            Err(source) => {
                return Err(LandlockError::Path {
                    path: g.path.clone(),
                    rule: g.rule.clone(),
                    source,
                });
            }
        };
        // Directory rights on a file are EINVAL: try the full set, then the
        // file subset (cheaper than a stat per path).
        let added = add_path_rule(ruleset.as_raw_fd(), fd.as_raw_fd(), rights).or_else(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) && rights & !fs::FILE_RIGHTS != 0 {
                add_path_rule(
                    ruleset.as_raw_fd(),
                    fd.as_raw_fd(),
                    rights & fs::FILE_RIGHTS,
                )
            } else {
                Err(e)
            }
        });
        added.map_err(|source| LandlockError::Path {
            path: g.path.clone(),
            rule: g.rule.clone(),
            source,
        })?;
    }
    // Ask the kernel to audit-log denials after exec (ABI 7), so they reach
    // the audit stream when it is enabled.
    let restrict_flags = if abi >= 7 {
        RESTRICT_SELF_LOG_NEW_EXEC_ON
    } else {
        0
    };
    Ok((
        Prepared {
            ruleset,
            child_paths,
            restrict_flags,
            private_proc: false,
        },
        report,
    ))
}

impl Prepared {
    /// The child mounts a procfs of its own pid namespace that shows only
    /// the agent's processes (see `Prepared::private_proc`).
    pub fn use_private_proc(&mut self) {
        self.private_proc = true;
    }

    /// Only system calls: runs in the child between clone and exec.
    pub fn restrict_self(&self) -> io::Result<()> {
        if self.private_proc && !self.child_paths.is_empty() {
            let rights = self.child_paths.iter().fold(0, |r, (_, x)| r | x);
            // SAFETY: opening a constant NUL-terminated path.
            let fd = unsafe { libc::open(c"/proc".as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let added = add_path_rule(self.ruleset.as_raw_fd(), fd, rights);
            // SAFETY: closing the descriptor opened above.
            unsafe { libc::close(fd) };
            added?;
        }
        let per_process = if self.private_proc {
            &[][..]
        } else {
            &self.child_paths[..]
        };
        for (path, rights) in per_process {
            // SAFETY: opening a NUL-terminated path prepared in the parent.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
            if fd < 0 {
                continue;
            }
            // /proc/self entries can be files or directories; try the full
            // set, then the file subset.
            if add_path_rule(self.ruleset.as_raw_fd(), fd, *rights).is_err() {
                let _ = add_path_rule(self.ruleset.as_raw_fd(), fd, rights & fs::FILE_RIGHTS);
            }
            // SAFETY: closing the descriptor opened above.
            unsafe { libc::close(fd) };
        }
        // SAFETY: restricting the calling thread with our ruleset.
        let rc = unsafe {
            libc::syscall(
                SYS_RESTRICT_SELF,
                self.ruleset.as_raw_fd(),
                self.restrict_flags,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_by_abi() {
        assert_eq!(fs_rights(1), (1 << 13) - 1);
        assert!(fs_rights(3) & fs::TRUNCATE != 0);
        assert!(fs_rights(4) & fs::IOCTL_DEV == 0);
        assert!(fs_rights(5) & fs::IOCTL_DEV != 0);
    }

    #[test]
    fn grant_meanings() {
        let ro = rights_for(true, false, false);
        assert_eq!(ro, fs::READ_FILE | fs::READ_DIR);
        let x = rights_for(false, false, true);
        assert!(x & fs::EXECUTE != 0 && x & fs::READ_FILE != 0 && x & fs::WRITE_FILE == 0);
        let w = rights_for(false, true, false);
        assert!(w & fs::EXECUTE == 0 && w & fs::MAKE_CHAR == 0 && w & fs::MAKE_BLOCK == 0);
    }

    #[test]
    fn missing_required_path_is_an_error_and_base_path_is_skipped() {
        if abi_version().is_err() {
            return; // exercised by the privileged suite on Landlock hosts
        }
        let req = Request {
            grants: vec![Grant {
                path: "/nonexistent/guard-x".into(),
                rights: rights_for(true, false, false),
                required: false,
                rule: "base".into(),
            }],
            restrict_fs: true,
            ..Request::default()
        };
        let (_, report) = prepare(&req).unwrap();
        assert_eq!(report.skipped, vec![PathBuf::from("/nonexistent/guard-x")]);
        let mut req = req;
        req.grants[0].required = true;
        let err = prepare(&req).err().unwrap();
        assert!(err.to_string().contains("/nonexistent/guard-x"));
    }
}
