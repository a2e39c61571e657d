//! The agent's view of the file system for executable code (issue 7).
//!
//! Landlock's EXECUTE right is checked at `execve` only. A program the
//! policy does not grant `exec` could otherwise still run: the dynamic
//! loader (exec-granted, it is every dynamic program's interpreter) run
//! directly maps any readable file, and a granted program can `dlopen` or
//! `LD_PRELOAD` a file the agent wrote. The kernel refuses executable
//! mappings of files on `noexec` mounts, so the agent gets a private mount
//! namespace in which every mount is `noexec` except bind mounts of the
//! paths that must stay executable: the policy's `exec` grants and the
//! library directories (shared objects are mapped executable from there).
//!
//! The same step mounts a fresh procfs for the agent's private pid
//! namespace (only the agent's own processes are visible, so the `/proc/self`
//! grant holds for every process of the agent) and sets `vm.memfd_noexec = 2`
//! for that pid namespace: memfds are created non-executable and sealed so,
//! and `MFD_EXEC` is refused.
//!
//! Issue 8: the same namespaces hold whatever the file policy says.
//! The agent always gets private mount, pid, IPC and cgroup namespaces:
//! outside processes do not exist for it (pid), System V and POSIX IPC
//! objects of the host are unreachable (IPC, plus a fresh mqueue mount), and
//! every cgroup file system is read-only in its view (cgroup namespace
//! rooted at its scope behind that), so it can neither leave its cgroup nor
//! change its limits. When the policy restricts files, every mount is also
//! read-only except bind mounts of the `write` grants: chmod, chown, utimes
//! and xattr changes outside the write grants fail with EROFS whoever owns
//! the file (Landlock does not govern metadata).
//!
//! Everything is resolved in the parent; `apply` runs in the child between
//! clone and exec and makes system calls only.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::{Path, PathBuf},
};

/// Directories shared objects are loaded from on common distributions
/// (multiarch subdirectories included, as they are beneath these). They stay
/// executable-mappable; running a program from them still needs `exec`
/// (Landlock), and running one through the loader is refused by the exec
/// tracepoint.
pub const LIBRARY_DIRS: [&str; 10] = [
    "/lib",
    "/lib64",
    "/lib32",
    "/libx32",
    "/usr/lib",
    "/usr/lib64",
    "/usr/lib32",
    "/usr/libx32",
    "/usr/local/lib",
    "/usr/local/lib64",
];

const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const MOUNT_ATTR_NOEXEC: u64 = 0x0000_0008;
const AT_RECURSIVE: u32 = 0x8000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Which part of `apply` failed (the launcher maps it to a step name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failed {
    Private,
    Noexec,
    Keep,
    MemfdNoexec,
    Proc,
    Cgroup,
    Mqueue,
    Writable,
}

/// The prepared view.
#[derive(Clone, Debug)]
pub struct Views {
    /// The policy restricts files: noexec and read-only views,
    /// `vm.memfd_noexec`, and a /proc of pid directories only.
    restrict: bool,
    /// Canonical paths that stay executable-mappable, none beneath another.
    mappable: Vec<CString>,
    /// Canonical `write` grants (directories and regular files) bound
    /// read-write over the read-only view.
    writable: Vec<CString>,
    /// Mount points of every cgroup file system (and /sys/fs/cgroup), made
    /// read-only whatever the policy.
    cgroups: Vec<CString>,
    /// /dev/mqueue exists: a fresh mqueue instance of the agent's IPC
    /// namespace is mounted there.
    mqueue: bool,
    /// The working directory, entered again after the mounts so that it is
    /// seen through them.
    cwd: Option<CString>,
}

/// The paths to keep executable: `exec` grants and library directories,
/// symlinks resolved (bind mounts follow them), missing ones skipped, and
/// any path beneath another dropped (the outer bind covers it).
pub fn mappable(exec_grants: &[PathBuf]) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = exec_grants
        .iter()
        .map(PathBuf::as_path)
        .chain(LIBRARY_DIRS.iter().map(Path::new))
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    all.sort();
    all.dedup();
    // Sorted, an ancestor comes before everything beneath it.
    let mut out: Vec<PathBuf> = Vec::with_capacity(all.len());
    for p in all {
        if !out.iter().any(|o| p.starts_with(o)) {
            out.push(p);
        }
    }
    out
}

/// The `write` grants to bind read-write: canonical, existing directories
/// and regular files only (device nodes stay writable on a read-only mount,
/// and /proc is mounted afresh), sorted so that an outer bind comes first.
pub fn writable(write_grants: &[PathBuf]) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = write_grants
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .filter(|p| !p.starts_with("/proc"))
        .filter(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_dir() || m.is_file())
                .unwrap_or(false)
        })
        .collect();
    all.sort();
    all.dedup();
    let mut out: Vec<PathBuf> = Vec::with_capacity(all.len());
    for p in all {
        if !out.iter().any(|o| p.starts_with(o)) {
            out.push(p);
        }
    }
    out
}

/// Mount points of cgroup file systems, from a mountinfo text (field 5 is
/// the mount point, the file system type follows the ` - ` separator), and
/// /sys/fs/cgroup when something is mounted there (the tmpfs that holds the
/// v1 hierarchies on hybrid hosts).
pub fn cgroup_mounts(mountinfo: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(point) = left.split(' ').nth(4) else {
            continue;
        };
        let fstype = right.split(' ').next().unwrap_or("");
        // Mountinfo escapes space, tab, newline and backslash as octal.
        let point = unescape(point);
        if matches!(fstype, "cgroup" | "cgroup2") || point == Path::new("/sys/fs/cgroup") {
            out.push(point);
        }
    }
    out.sort();
    out.dedup();
    // Recursive: a mount beneath another one in the list is covered.
    let mut kept: Vec<PathBuf> = Vec::with_capacity(out.len());
    for p in out {
        if !kept.iter().any(|o| p.starts_with(o)) {
            kept.push(p);
        }
    }
    kept
}

fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// What a policy restricts, for `Views::prepare`.
pub struct Restrict<'a> {
    pub exec_grants: &'a [PathBuf],
    pub write_grants: &'a [PathBuf],
}

impl Views {
    /// `restrict` is `Some` when the policy restricts files.
    pub fn prepare(restrict: Option<Restrict<'_>>, cwd: Option<&Path>) -> io::Result<Views> {
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
        };
        let (mappable, writable) = match &restrict {
            Some(r) => (mappable(r.exec_grants), writable(r.write_grants)),
            None => (Vec::new(), Vec::new()),
        };
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        Ok(Views {
            restrict: restrict.is_some(),
            mappable: mappable.iter().map(|p| c(p)).collect::<io::Result<_>>()?,
            writable: writable.iter().map(|p| c(p)).collect::<io::Result<_>>()?,
            cgroups: cgroup_mounts(&mountinfo)
                .iter()
                .map(|p| c(p))
                .collect::<io::Result<_>>()?,
            mqueue: Path::new("/dev/mqueue").is_dir(),
            cwd: cwd.map(c).transpose()?,
        })
    }

    /// Whether the policy's file restrictions (noexec, read-only views, the
    /// pid-only /proc) are part of this view.
    pub fn restricts_files(&self) -> bool {
        self.restrict
    }

    /// Sets the view up in the calling process, which must be alone in new
    /// mount, pid and IPC namespaces. Only system calls.
    pub fn apply(&self) -> Result<(), Failed> {
        // SAFETY: mount/mount_setattr/open/write/chdir with NUL-terminated
        // strings prepared in the parent and attribute structs we own.
        unsafe {
            // Nothing done here may propagate back to the host's mounts.
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(Failed::Private);
            }
            if self.restrict {
                // The sysctl applies to the writer's pid namespace; written
                // through the host's procfs before the new one covers it,
                // and before that one is read-only.
                let fd = libc::open(
                    c"/proc/sys/vm/memfd_noexec".as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                );
                if fd < 0 {
                    return Err(Failed::MemfdNoexec);
                }
                let n = libc::write(fd, b"2".as_ptr().cast(), 1);
                libc::close(fd);
                if n != 1 {
                    return Err(Failed::MemfdNoexec);
                }
            }
            if self.restrict {
                // Read-only and noexec everywhere; then the exec grants get
                // exec back (still read-only), then the write grants get
                // write back (keeping whatever exec their place has). Bind
                // mounts copy the flags of the mount they come from.
                if setattr(c"/".as_ptr(), MOUNT_ATTR_NOEXEC | MOUNT_ATTR_RDONLY, 0) != 0 {
                    return Err(Failed::Noexec);
                }
                for p in &self.mappable {
                    if bind(p) != 0 || setattr(p.as_ptr(), 0, MOUNT_ATTR_NOEXEC) != 0 {
                        return Err(Failed::Keep);
                    }
                }
                for p in &self.writable {
                    if bind(p) != 0 || setattr(p.as_ptr(), 0, MOUNT_ATTR_RDONLY) != 0 {
                        return Err(Failed::Writable);
                    }
                }
            }
            // Whatever the policy (and after the write binds, in case one
            // covers a cgroup mount): the agent cannot move processes
            // between cgroups, create cgroups or change its limits.
            for p in &self.cgroups {
                if setattr(p.as_ptr(), MOUNT_ATTR_RDONLY, 0) != 0 {
                    return Err(Failed::Cgroup);
                }
            }
            // POSIX message queues of the agent's own IPC namespace (a
            // mqueue mount shows the namespace of its mounter).
            if self.mqueue
                && libc::mount(
                    c"mqueue".as_ptr(),
                    c"/dev/mqueue".as_ptr(),
                    c"mqueue".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                ) != 0
            {
                return Err(Failed::Mqueue);
            }
            if let Some(cwd) = &self.cwd {
                // Best effort: staying in the old directory is only less
                // convenient (it is noexec either way).
                libc::chdir(cwd.as_ptr());
            }
            // Only the pid directories of this namespace (the agent's own
            // processes) when files are restricted: system-wide files are
            // not part of the view. Otherwise a whole procfs, still of the
            // agent's pid namespace only.
            let options = if self.restrict {
                c"subset=pid".as_ptr()
            } else {
                std::ptr::null()
            };
            if libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                options.cast(),
            ) != 0
            {
                return Err(Failed::Proc);
            }
        }
        Ok(())
    }
}

/// `mount(p, p, MS_BIND | MS_REC)`.
///
/// # Safety
/// `p` must be a valid NUL-terminated string.
unsafe fn bind(p: &CString) -> libc::c_int {
    // SAFETY: a valid path (the caller's contract) and null data.
    unsafe {
        libc::mount(
            p.as_ptr(),
            p.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    }
}

/// Whether the agent's namespaces and views can be set up here: a
/// throw-away child enters new mount, pid, IPC and cgroup namespaces, marks
/// its mounts read-only and noexec and opens the memfd sysctl for writing. The caller must be single-threaded.
pub fn probe() -> io::Result<()> {
    // SAFETY: fork of a single-threaded process; the child makes system
    // calls only and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: as above; every call works on this throw-away process.
        unsafe {
            let errno = || *libc::__errno_location();
            if libc::unshare(
                libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWCGROUP,
            ) != 0
            {
                libc::_exit(errno());
            }
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                libc::_exit(errno());
            }
            // In `apply`'s order: the sysctl before the view is read-only.
            let fd = libc::open(c"/proc/sys/vm/memfd_noexec".as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                libc::_exit(errno());
            }
            if setattr(c"/".as_ptr(), MOUNT_ATTR_NOEXEC | MOUNT_ATTR_RDONLY, 0) != 0 {
                libc::_exit(errno());
            }
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    match libc::WEXITSTATUS(status) {
        0 if libc::WIFEXITED(status) => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// `mount_setattr(AT_FDCWD, path, AT_RECURSIVE, ...)`.
///
/// # Safety
/// `path` must be a valid NUL-terminated string.
unsafe fn setattr(path: *const libc::c_char, set: u64, clr: u64) -> libc::c_long {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clr,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the caller passes a valid path; `attr` lives for the call and
    // its size is passed.
    unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path,
            AT_RECURSIVE,
            &raw const attr,
            std::mem::size_of::<MountAttr>(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_duplicate_paths_collapse() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        std::fs::create_dir_all(a.join("b")).unwrap();
        std::fs::write(a.join("b/f"), "").unwrap();
        std::os::unix::fs::symlink(a.join("b/f"), d.path().join("link")).unwrap();
        let got = mappable(&[
            a.join("b/f"),
            a.clone(),
            d.path().join("link"),
            d.path().join("missing"),
        ]);
        let a = std::fs::canonicalize(&a).unwrap();
        assert!(got.contains(&a), "{got:?}");
        assert!(!got.iter().any(|p| p != &a && p.starts_with(&a)), "{got:?}");
        // Library directories that exist here are included once.
        let usr_lib = std::fs::canonicalize("/usr/lib").unwrap();
        assert_eq!(got.iter().filter(|p| **p == usr_lib).count(), 1);
    }

    #[test]
    fn cgroup_mounts_come_from_mountinfo() {
        let info = "\
22 1 8:1 / / rw,relatime - ext4 /dev/vda rw
30 22 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
40 22 0:29 / /srv/my\\040cg rw - cgroup2 none rw
";
        assert_eq!(
            cgroup_mounts(info),
            vec![PathBuf::from("/srv/my cg"), PathBuf::from("/sys/fs/cgroup")]
        );
        let pure = "31 22 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup_mounts(pure), vec![PathBuf::from("/sys/fs/cgroup")]);
    }

    #[test]
    fn writable_grants_skip_proc_devices_and_nesting() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        std::fs::create_dir_all(out.join("deeper")).unwrap();
        let got = writable(&[
            out.join("deeper"),
            out.clone(),
            PathBuf::from("/dev/null"),
            PathBuf::from("/proc/self"),
            d.path().join("missing"),
        ]);
        assert_eq!(got, vec![std::fs::canonicalize(&out).unwrap()]);
    }
}
