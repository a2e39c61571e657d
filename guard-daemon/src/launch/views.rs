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
//! Everything is resolved in the parent; `apply` runs in the child between
//! clone and exec and makes system calls only.

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
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
}

/// The prepared view.
#[derive(Clone, Debug)]
pub struct Views {
    /// Canonical paths that stay executable-mappable, none beneath another.
    mappable: Vec<CString>,
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

impl Views {
    pub fn prepare(exec_grants: &[PathBuf], cwd: Option<&Path>) -> io::Result<Views> {
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
        };
        Ok(Views {
            mappable: mappable(exec_grants)
                .iter()
                .map(|p| c(p))
                .collect::<io::Result<_>>()?,
            cwd: cwd.map(c).transpose()?,
        })
    }

    /// Sets the view up in the calling process, which must be alone in new
    /// mount and pid namespaces. Only system calls.
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
            if setattr(c"/".as_ptr(), MOUNT_ATTR_NOEXEC, 0) != 0 {
                return Err(Failed::Noexec);
            }
            for p in &self.mappable {
                if libc::mount(
                    p.as_ptr(),
                    p.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) != 0
                    || setattr(p.as_ptr(), 0, MOUNT_ATTR_NOEXEC) != 0
                {
                    return Err(Failed::Keep);
                }
            }
            if let Some(cwd) = &self.cwd {
                // Best effort: staying in the old directory is only less
                // convenient (it is noexec either way).
                libc::chdir(cwd.as_ptr());
            }
            // The sysctl applies to the writer's pid namespace; written
            // through the host's procfs before the new one covers it.
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
            // Only the pid directories of this namespace (the agent's own
            // processes): system-wide files are not part of the view.
            if libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"subset=pid".as_ptr().cast(),
            ) != 0
            {
                return Err(Failed::Proc);
            }
        }
        Ok(())
    }
}

/// Whether exec views can be set up here: a throw-away child enters new
/// mount and pid namespaces, marks its mounts noexec and opens the memfd
/// sysctl for writing. The caller must be single-threaded.
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
            if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWPID) != 0 {
                libc::_exit(errno());
            }
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
                || setattr(c"/".as_ptr(), MOUNT_ATTR_NOEXEC, 0) != 0
            {
                libc::_exit(errno());
            }
            let fd = libc::open(c"/proc/sys/vm/memfd_noexec".as_ptr(), libc::O_WRONLY);
            libc::_exit(if fd < 0 { errno() } else { 0 });
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
}
