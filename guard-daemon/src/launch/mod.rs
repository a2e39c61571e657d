//! The launcher: starts the agent inside its scope, restricted, in a fixed
//! order that no instruction of the agent's program can precede.
//!
//! Everything that allocates or can fail in an interesting way (paths,
//! argument vectors, the seccomp program, the Landlock ruleset) is prepared
//! in the parent. The child created by `clone3(CLONE_INTO_CGROUP)` is born in
//! the scope's cgroup, so the kernel programs confine it from its first
//! instruction; it then only makes system calls:
//!
//! 1. reset signal mask and dispositions;
//! 2. join the scope's v1 cgroups (hybrid hosts: resource limits);
//! 3. die with the launcher (`PR_SET_PDEATHSIG`);
//! 4. drop the capability bounding set, then switch user if the policy says
//!    so;
//! 5. `no_new_privs`;
//! 6. Landlock `restrict_self`;
//! 7. drop capabilities (bounding, ambient, effective/permitted/inheritable);
//! 8. mark every inherited descriptor close-on-exec except stdio and the
//!    explicitly passed ones;
//! 9. install the seccomp filter (last, so steps 1–8 are not filtered);
//! 10. `execve`.
//!
//! A failure at any step is reported to the parent through a close-on-exec
//! pipe (step number and errno) and the child exits 127 without running the
//! program.

pub mod caps;
pub mod landlock;
pub mod seccomp;

use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LaunchError {
    #[error("cannot create the agent process: {0}")]
    Clone(std::io::Error),
    #[error("{step}: {source}")]
    Child {
        step: &'static str,
        source: std::io::Error,
    },
    #[error("cannot run {program}: {source}")]
    Exec {
        program: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

/// Steps reported by a failing child, in order.
const STEPS: [&str; 11] = [
    "resetting signals",
    "joining the scope's v1 cgroups",
    "binding the agent's life to the launcher",
    "switching user",
    "setting no_new_privs",
    "applying Landlock",
    "dropping capabilities",
    "closing inherited descriptors",
    "installing the seccomp filter",
    "executing the program",
    "unknown step",
];
const STEP_EXEC: usize = 9;

/// Who the agent runs as, resolved in the parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Everything the child needs, prepared before it exists.
pub struct LaunchSpec {
    /// Resolved program path.
    pub program: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    /// The scope's v2 cgroup directory.
    pub cgroup: OwnedFd,
    /// v1 `cgroup.procs` write descriptors (hybrid hosts).
    pub v1_procs: Vec<OwnedFd>,
    /// Descriptors beyond stdio the agent keeps.
    pub keep_fds: Vec<RawFd>,
    pub credentials: Option<Credentials>,
    pub landlock: Option<landlock::Prepared>,
    /// Capabilities (numbers) to keep; all others are dropped.
    pub keep_caps: Vec<u32>,
    pub seccomp: Option<seccomp::Program>,
}

/// The running agent.
pub struct Child {
    pub pid: i32,
    pub pidfd: OwnedFd,
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Signals guardctl forwards; blocked in the launcher, restored in the child.
pub const FORWARDED: [i32; 8] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCONT,
];

/// Starts the agent. The caller must be single-threaded (the child runs a
/// copy of its address space until exec).
pub fn spawn(spec: &LaunchSpec) -> Result<Child, LaunchError> {
    let mut pipe_fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(pipe_fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(LaunchError::Clone(std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 succeeded; both descriptors are new and ours.
    let (read_end, write_end) = unsafe {
        (
            OwnedFd::from_raw_fd(pipe_fds[0]),
            OwnedFd::from_raw_fd(pipe_fds[1]),
        )
    };

    let mut argv: Vec<*const libc::c_char> = spec.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = spec.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());

    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: CLONE_PIDFD | CLONE_INTO_CGROUP,
        pidfd: &raw mut pidfd as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: spec.cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM and without a new stack behaves like
    // fork: the child gets a copy of this (single-threaded) process. `args`
    // is valid for the call and its size is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw mut args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if rc < 0 {
        return Err(LaunchError::Clone(std::io::Error::last_os_error()));
    }
    if rc == 0 {
        // In the child: never returns.
        child(spec, &argv, &envp, write_end.as_raw_fd());
    }
    drop(write_end);
    // SAFETY: CLONE_PIDFD stored a new descriptor in `pidfd`.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let pid = rc as i32;

    let mut report = [0u8; 8];
    let n = loop {
        // SAFETY: reading into a buffer we own.
        let n = unsafe {
            libc::read(
                read_end.as_raw_fd(),
                report.as_mut_ptr().cast(),
                report.len(),
            )
        };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        break n;
    };
    if n == 8 {
        let step = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]) as usize;
        let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
        // The child has exited (127); reap it so no zombie remains.
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let source = std::io::Error::from_raw_os_error(errno);
        if step == STEP_EXEC {
            return Err(LaunchError::Exec {
                program: spec.program.to_string_lossy().into_owned(),
                source,
            });
        }
        return Err(LaunchError::Child {
            step: STEPS[step.min(STEPS.len() - 1)],
            source,
        });
    }
    Ok(Child { pid, pidfd })
}

/// Reports the failing step and exits. Only async-signal-safe calls.
fn fail(pipe: RawFd, step: usize) -> ! {
    // SAFETY: __errno_location is always valid for the calling thread.
    let errno = unsafe { *libc::__errno_location() };
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    msg[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: writing a buffer we own, then leaving without running any
    // destructor or atexit handler of the copied parent state.
    unsafe {
        libc::write(pipe, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

fn child(
    spec: &LaunchSpec,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    pipe: RawFd,
) -> ! {
    // 1. Signals: the launcher blocks the forwarded ones, and Rust's runtime
    // ignores SIGPIPE. exec resets handlers but keeps ignored signals and the
    // mask, so those two are undone; signals ignored by whoever started
    // guardctl (nohup) stay ignored, as with any launcher.
    // SAFETY: plain signal-mask and disposition calls on our own process.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
            fail(pipe, 0);
        }
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // 2. v1 cgroups.
    for fd in &spec.v1_procs {
        // SAFETY: writing "0" (this process) to a cgroup.procs descriptor.
        if unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
            fail(pipe, 1);
        }
    }
    // 3. Die with the launcher: the scope is bound to its session, and a
    // killed guardctl must not leave an unsupervised agent behind.
    // SAFETY: prctl/getppid with constant arguments.
    unsafe {
        let parent = libc::getppid();
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            fail(pipe, 2);
        }
        if parent == 1 {
            libc::_exit(127);
        }
    }
    // 4. User. The bounding set is dropped first, while CAP_SETPCAP is
    // still held; kept capabilities survive the uid change (KEEPCAPS) and
    // are set exactly in step 7.
    if caps::drop_bounding(&spec.keep_caps).is_err() {
        fail(pipe, 6);
    }
    if let Some(c) = &spec.credentials {
        // SAFETY: credential calls with values resolved in the parent.
        unsafe {
            if !spec.keep_caps.is_empty() && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
                fail(pipe, 3);
            }
            if libc::setgroups(c.groups.len(), c.groups.as_ptr()) != 0
                || libc::setresgid(c.gid, c.gid, c.gid) != 0
                || libc::setresuid(c.uid, c.uid, c.uid) != 0
            {
                fail(pipe, 3);
            }
        }
    }
    // 5. no_new_privs: set-id binaries and file capabilities cannot give the
    // agent more than it has; also required for unprivileged Landlock and
    // seccomp.
    // SAFETY: prctl with constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        fail(pipe, 4);
    }
    // 6. Landlock.
    if let Some(ll) = &spec.landlock
        && ll.restrict_self().is_err()
    {
        fail(pipe, 5);
    }
    // 7. Capabilities: exactly the kept ones remain.
    if caps::set_kept(&spec.keep_caps).is_err() {
        fail(pipe, 6);
    }
    // 8. Descriptors: everything from 3 up becomes close-on-exec (the pipe
    // too, which is how the parent learns exec succeeded), then the explicitly
    // passed ones are kept.
    // SAFETY: close_range/fcntl on our own descriptor table.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) != 0
        {
            fail(pipe, 7);
        }
        for &fd in &spec.keep_fds {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                fail(pipe, 7);
            }
        }
    }
    // 9. seccomp.
    if let Some(prog) = &spec.seccomp
        && prog.install().is_err()
    {
        fail(pipe, 8);
    }
    // 10. exec.
    // SAFETY: argv/envp are NUL-terminated arrays of pointers into CStrings
    // that live in the (copied) parent memory until exec replaces it.
    unsafe {
        libc::execve(spec.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
    }
    fail(pipe, STEP_EXEC)
}

/// Blocks the forwarded signals (and SIGCHLD) in the calling thread so a
/// signalfd can receive them; returns the previous mask.
pub fn block_forwarded() -> Result<libc::sigset_t, LaunchError> {
    // SAFETY: signal-mask calls on sets we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        libc::sigaddset(&mut set, libc::SIGCHLD);
        let mut old: libc::sigset_t = std::mem::zeroed();
        if libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old) != 0 {
            return Err(LaunchError::Setup(format!(
                "blocking signals: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(old)
    }
}

/// Looks `name` up in `path` the way a shell would (names with a slash are
/// taken as they are).
pub fn resolve_program(name: &str, path: Option<&str>) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if name.contains('/') {
        return Some(std::path::PathBuf::from(name));
    }
    let path = path.unwrap_or("/usr/local/bin:/usr/bin:/bin");
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_a_shell() {
        assert_eq!(
            resolve_program("sh", Some("/nonexistent:/bin")),
            Some(std::path::PathBuf::from("/bin/sh"))
        );
        assert_eq!(
            resolve_program("./x", None),
            Some(std::path::PathBuf::from("./x"))
        );
        assert_eq!(resolve_program("no-such-program-xyz", Some("/bin")), None);
    }

    #[test]
    fn step_names_cover_exec() {
        assert_eq!(STEPS[STEP_EXEC], "executing the program");
    }
}
