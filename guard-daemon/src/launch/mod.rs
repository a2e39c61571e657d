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
//! 3. with views (always, unless the user accepted running without them):
//!    the child is pid 1 of a new pid namespace, in new mount and IPC
//!    namespaces. It dies with the launcher (`PR_SET_PDEATHSIG`), enters a
//!    cgroup namespace rooted at its scope, sets up the views
//!    (`views::apply`: cgroup file systems read-only, a private mqueue and
//!    /proc; when the policy restricts files also every mount read-only and
//!    noexec but the write and exec grants, `vm.memfd_noexec = 2`), forks
//!    the agent, and stays as its pid-1
//!    reaper (`reaper`): it forwards signals, reaps orphans, and hands the
//!    agent's wait status to the launcher through a pipe. The agent goes on:
//! 4. drop the capability bounding set, then switch user if the policy says
//!    so; without a pid-1 reaper, die with the launcher from here on
//!    (`PR_SET_PDEATHSIG` is cleared by a credential change, so it is set
//!    after it);
//! 5. `no_new_privs`;
//! 6. Landlock `restrict_self`;
//! 7. drop capabilities (bounding, ambient, effective/permitted/inheritable);
//! 8. mark every inherited descriptor close-on-exec except stdio and the
//!    explicitly passed ones, and place the request channel at descriptor 3
//!    (the only one kept);
//! 9. install the seccomp filter (last, so steps 1–8 are not filtered);
//! 10. `execve`.
//!
//! A failure at any step is reported to the parent through a close-on-exec
//! pipe (step number and errno) and the child exits 127 without running the
//! program.
//!
//! Around it: [`preflight`] checks the policy and the host before a scope is
//! asked for, [`session`] opens the scope with guardd and ends it,
//! [`builder`] turns the plan and guardd's reply into the [`LaunchSpec`],
//! and [`supervise`] forwards signals and waits for the agent. `guardctl
//! run` only strings these together.

pub mod builder;
pub mod caps;
pub mod landlock;
pub mod preflight;
pub mod seccomp;
pub mod session;
pub mod supervise;
pub mod views;

pub use builder::{BuildError, Launch, ScopeFds};

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

/// Steps reported by a failing child.
const STEPS: [&str; 21] = [
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
    "exec confinement: making the agent's mount namespace private",
    "exec confinement: marking every mount noexec",
    "exec confinement: keeping exec grants and library directories executable",
    "exec confinement: setting vm.memfd_noexec in the agent's pid namespace",
    "exec confinement: mounting the agent's /proc",
    "exec confinement: starting the agent under its pid-1 reaper",
    "isolation: entering a cgroup namespace rooted at the scope",
    "isolation: making the cgroup file systems read-only",
    "isolation: mounting the agent's own POSIX message queue file system",
    "isolation: binding the write grants read-write over the read-only view",
    "unknown step",
];
const STEP_SIGNALS: usize = 0;
const STEP_V1: usize = 1;
const STEP_LIFE: usize = 2;
const STEP_USER: usize = 3;
const STEP_NNP: usize = 4;
const STEP_LANDLOCK: usize = 5;
const STEP_CAPS: usize = 6;
const STEP_FDS: usize = 7;
const STEP_SECCOMP: usize = 8;
const STEP_EXEC: usize = 9;
const STEP_VIEWS: usize = 10;
const STEP_REAPER: usize = 15;
const STEP_CGROUP_NS: usize = 16;
/// Reported by the launcher itself when clone3 cannot create the
/// namespaces.
const STEP_NAMESPACES: &str =
    "exec confinement: creating the agent's mount and pid namespaces (and its IPC namespace)";

fn views_step(f: views::Failed) -> usize {
    STEP_VIEWS
        + match f {
            views::Failed::Private => 0,
            views::Failed::Noexec => 1,
            views::Failed::Keep => 2,
            views::Failed::MemfdNoexec => 3,
            views::Failed::Proc => 4,
            views::Failed::Cgroup => 7,
            views::Failed::Mqueue => 8,
            views::Failed::Writable => 9,
        }
}

impl LaunchError {
    /// The exec confinement or the isolation (namespaces, read-only and
    /// noexec views) could not be set up: the caller may retry without it
    /// when the user accepted that.
    pub fn is_exec_confinement(&self) -> bool {
        matches!(self, LaunchError::Child { step, .. }
            if step.starts_with("exec confinement") || step.starts_with("isolation"))
    }
}

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
    /// The agent's end of its request channel: the agent gets it at
    /// descriptor `api::REQUEST_CHANNEL_FD`, open across exec.
    pub request_channel: Option<OwnedFd>,
    pub credentials: Option<Credentials>,
    pub landlock: Option<landlock::Prepared>,
    /// Capabilities (numbers) to keep; all others are dropped.
    pub keep_caps: Vec<u32>,
    pub seccomp: Option<seccomp::Program>,
    /// Exec confinement: private mount and pid namespaces with noexec views
    /// (`views`), the agent under a pid-1 reaper. `None` runs the agent as
    /// the launcher's direct child in the launcher's namespaces.
    pub views: Option<views::Views>,
}

/// The running agent.
pub struct Child {
    /// The launcher's child: the agent itself, or its pid-1 reaper.
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// With a reaper: the read end of the pipe on which it writes the
    /// agent's wait status (4 bytes, native endian) when the agent exits.
    pub status: Option<OwnedFd>,
}

impl Child {
    /// The agent's wait status from the reaper, if it has written it.
    /// Non-blocking.
    pub fn reported_status(&self) -> Option<i32> {
        let fd = self.status.as_ref()?;
        let mut buf = [0u8; 4];
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling and reading one descriptor we own into a buffer
        // we own.
        let n = unsafe {
            if libc::poll(&mut pfd, 1, 0) != 1 {
                return None;
            }
            libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
        };
        (n == 4).then(|| i32::from_ne_bytes(buf))
    }
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
const CLONE_NEWNS: u64 = 0x0002_0000;
const CLONE_NEWIPC: u64 = 0x0800_0000;
const CLONE_NEWPID: u64 = 0x2000_0000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
const CAP_KILL: u32 = 5;

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

fn pipe() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(LaunchError::Clone(std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 succeeded; both descriptors are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What the child knows of its launcher, taken before clone.
struct Launcher {
    /// The launcher's pid, compared with `getppid()` by a child in the
    /// launcher's pid namespace.
    pid: i32,
    /// A pidfd of the launcher, polled by a child in a new pid namespace
    /// (where `getppid()` is 0 whoever the parent is).
    pidfd: Option<OwnedFd>,
}

/// Starts the agent. The caller must be single-threaded (the child runs a
/// copy of its address space until exec).
pub fn spawn(spec: &LaunchSpec) -> Result<Child, LaunchError> {
    let (read_end, write_end) = pipe()?;
    let status = spec.views.as_ref().map(|_| pipe()).transpose()?;

    let mut argv: Vec<*const libc::c_char> = spec.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = spec.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());

    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let launcher = Launcher {
        pid,
        pidfd: match &spec.views {
            None => None,
            Some(_) => {
                // SAFETY: pidfd_open of our own pid returns a new descriptor.
                let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
                if fd < 0 {
                    return Err(LaunchError::Clone(std::io::Error::last_os_error()));
                }
                // SAFETY: a new descriptor we own (close-on-exec by default).
                Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
            }
        },
    };

    let mut pidfd: RawFd = -1;
    let mut flags = CLONE_PIDFD | CLONE_INTO_CGROUP;
    if spec.views.is_some() {
        // IPC: System V objects and POSIX queues of the host (and of other
        // agents) are out of reach.
        flags |= CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC;
    }
    let mut args = CloneArgs {
        flags,
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
        let e = std::io::Error::last_os_error();
        // Namespaces need CAP_SYS_ADMIN (and may be limited by
        // user.max_*_namespaces): name that step rather than the clone.
        if spec.views.is_some()
            && matches!(
                e.raw_os_error(),
                Some(libc::EPERM | libc::ENOSPC | libc::EUSERS)
            )
        {
            return Err(LaunchError::Child {
                step: STEP_NAMESPACES,
                source: e,
            });
        }
        return Err(LaunchError::Clone(e));
    }
    if rc == 0 {
        // In the child: never returns.
        let status_fd = status.as_ref().map(|(_, w)| w.as_raw_fd());
        child(
            spec,
            &argv,
            &envp,
            write_end.as_raw_fd(),
            status_fd,
            &launcher,
        );
    }
    drop(write_end);
    drop(launcher);
    let status = status.map(|(r, w)| {
        drop(w);
        r
    });
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
        // The child (or, with a reaper, the reaper once its agent failed)
        // exits; reap it so no zombie remains. A reaper exits when its only
        // child is gone.
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
    Ok(Child { pid, pidfd, status })
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

/// Dies with the launcher: a killed guardctl must not leave an unsupervised
/// agent behind. Set after any credential change (which clears it), then
/// checked against the launcher recorded before clone, in case the launcher
/// died before the request took effect (the child would then have been
/// reparented, to init or to a subreaper, and never get the signal).
fn bind_life(pipe: RawFd, launcher: &Launcher) {
    // SAFETY: prctl/getppid/poll with constant arguments or values we own.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            fail(pipe, STEP_LIFE);
        }
        let gone = match &launcher.pidfd {
            // A pidfd polls readable once its process has exited.
            Some(fd) => {
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                libc::poll(&mut pfd, 1, 0) != 0
            }
            None => libc::getppid() != launcher.pid,
        };
        if gone {
            libc::_exit(127);
        }
    }
}

fn child(
    spec: &LaunchSpec,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    mut pipe: RawFd,
    status: Option<RawFd>,
    launcher: &Launcher,
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
            fail(pipe, STEP_SIGNALS);
        }
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // 2. v1 cgroups.
    for fd in &spec.v1_procs {
        // SAFETY: writing "0" (this process) to a cgroup.procs descriptor.
        if unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
            fail(pipe, STEP_V1);
        }
    }
    // 3. Exec views, and the pid-1 reaper that the agent runs under.
    if let (Some(v), Some(status)) = (&spec.views, status) {
        // The reaper never changes credentials, so its death signal holds;
        // the agent dies with its pid namespace when the reaper dies.
        bind_life(pipe, launcher);
        // Now that the child is in all of its cgroups: a cgroup namespace
        // rooted there, so cgroup v2 moves outside the scope fail even
        // where a writable cgroup file system were reachable, and
        // /proc/self/cgroup shows nothing of the host's tree.
        // SAFETY: unshare with a constant flag.
        if unsafe { libc::unshare(libc::CLONE_NEWCGROUP) } != 0 {
            fail(pipe, STEP_CGROUP_NS);
        }
        if let Err(f) = v.apply() {
            fail(pipe, views_step(f));
        }
        let set = waited_signals();
        // SAFETY: SIGCHLD to its default (children must become zombies to
        // be waited for, whatever guardctl inherited; done before fork, as
        // setting it discards a pending SIGCHLD), blocking signals (before
        // fork, so that none is lost between the agent's start and the
        // reaper's wait), then forking a copy of this single-threaded
        // process.
        let agent = unsafe {
            libc::signal(libc::SIGCHLD, libc::SIG_DFL);
            if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                fail(pipe, STEP_REAPER);
            }
            libc::fork()
        };
        if agent < 0 {
            fail(pipe, STEP_REAPER);
        }
        if agent > 0 {
            // SAFETY: the failure pipe is the agent's to report on (or to
            // close by exec): the reaper's copy must not keep it open. Nor
            // the request channel: it is the agent's, and guardd sees its
            // end when the agent's copies close.
            unsafe {
                libc::close(pipe);
                if let Some(ch) = &spec.request_channel {
                    libc::close(ch.as_raw_fd());
                }
            };
            reaper(agent, status, &set);
        }
        // The agent: its own signal mask back to empty.
        let empty = {
            // SAFETY: building an empty set we own.
            let mut s: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            unsafe { libc::sigemptyset(&mut s) };
            s
        };
        // SAFETY: setting our own signal mask.
        if unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) } != 0 {
            fail(pipe, STEP_SIGNALS);
        }
    }
    // 4. User. The bounding set is dropped first, while CAP_SETPCAP is
    // still held; kept capabilities survive the uid change (KEEPCAPS) and
    // are set exactly in step 7.
    if caps::drop_bounding(&spec.keep_caps).is_err() {
        fail(pipe, STEP_CAPS);
    }
    if let Some(c) = &spec.credentials {
        // SAFETY: credential calls with values resolved in the parent.
        unsafe {
            if !spec.keep_caps.is_empty() && libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
                fail(pipe, STEP_USER);
            }
            if libc::setgroups(c.groups.len(), c.groups.as_ptr()) != 0
                || libc::setresgid(c.gid, c.gid, c.gid) != 0
                || libc::setresuid(c.uid, c.uid, c.uid) != 0
            {
                fail(pipe, STEP_USER);
            }
        }
    }
    if spec.views.is_none() {
        // After the credential change, which clears the death signal.
        bind_life(pipe, launcher);
    }
    // 5. no_new_privs: set-id binaries and file capabilities cannot give the
    // agent more than it has; also required for unprivileged Landlock and
    // seccomp.
    // SAFETY: prctl with constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        fail(pipe, STEP_NNP);
    }
    // 6. Landlock.
    if let Some(ll) = &spec.landlock
        && ll.restrict_self().is_err()
    {
        fail(pipe, STEP_LANDLOCK);
    }
    // 7. Capabilities: exactly the kept ones remain.
    if caps::set_kept(&spec.keep_caps).is_err() {
        fail(pipe, STEP_CAPS);
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
            fail(pipe, STEP_FDS);
        }
        for &fd in &spec.keep_fds {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                fail(pipe, STEP_FDS);
            }
        }
    }
    // The request channel at its fixed number: the one descriptor beyond
    // stdio the agent keeps. The failure pipe moves out of the way first if
    // it holds that number; dup2 leaves the new descriptor open across
    // exec, and the original (close-on-exec) goes at exec.
    if let Some(ch) = &spec.request_channel {
        let at = crate::api::REQUEST_CHANNEL_FD;
        // SAFETY: fcntl/dup2 on our own descriptor table.
        unsafe {
            if pipe == at {
                let moved = libc::fcntl(pipe, libc::F_DUPFD_CLOEXEC, at + 1);
                if moved < 0 {
                    fail(pipe, STEP_FDS);
                }
                pipe = moved;
            }
            let placed = if ch.as_raw_fd() == at {
                libc::fcntl(at, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(ch.as_raw_fd(), at) == at
            };
            if !placed {
                fail(pipe, STEP_FDS);
            }
        }
    }
    // 9. seccomp.
    if let Some(prog) = &spec.seccomp
        && prog.install().is_err()
    {
        fail(pipe, STEP_SECCOMP);
    }
    // 10. exec.
    // SAFETY: argv/envp are NUL-terminated arrays of pointers into CStrings
    // that live in the (copied) parent memory until exec replaces it.
    unsafe {
        libc::execve(spec.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
    }
    fail(pipe, STEP_EXEC)
}

/// SIGCHLD and the forwarded signals: what the launcher (and, in a pid
/// namespace, the reaper) waits for.
pub(crate) fn waited_signals() -> libc::sigset_t {
    // SAFETY: building a signal set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        libc::sigaddset(&mut set, libc::SIGCHLD);
        set
    }
}

/// Pid 1 of the agent's pid namespace. The kernel drops signals to a
/// namespace's init that it has no handler for, and kills the whole
/// namespace when it exits, so the agent cannot be pid 1 itself. The reaper
/// forwards to the agent the signals the launcher forwards to it (those
/// from the terminal reach the agent directly, as it shares the process
/// group), reaps orphans, writes the agent's wait status to `status` when
/// the agent exits, and exits once nothing is left in the namespace (so
/// processes the agent left behind are still there for guardd to count and
/// kill with the scope). Only system calls; keeps no capability but
/// CAP_KILL (the agent may run as another user).
fn reaper(agent: libc::pid_t, status: RawFd, set: &libc::sigset_t) -> ! {
    // Best effort: the reaper is outside the agent's Landlock domain, so
    // the agent can neither signal nor trace it; fewer privileges only make
    // that safer.
    let _ = caps::drop_bounding(&[CAP_KILL]);
    let _ = caps::set_kept(&[CAP_KILL]);
    // SAFETY: prctl/sigtimedwait/waitpid/kill/write/_exit on our own process,
    // its children and buffers we own.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        let mut agent_done = false;
        // Children are reaped on every wake-up, and at least every second:
        // a missed SIGCHLD must not leave the launcher waiting.
        let tick = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        loop {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let sig = libc::sigtimedwait(set, &mut info, &tick);
            if sig != libc::SIGCHLD && sig > 0 {
                if !agent_done && info.si_code != libc::SI_KERNEL {
                    libc::kill(agent, sig);
                }
                continue;
            }
            // SIGCHLD, a timeout or an interruption: reap what has exited.
            loop {
                let mut st = 0;
                let r = libc::waitpid(-1, &mut st, libc::WNOHANG);
                if r == agent {
                    agent_done = true;
                    let b = st.to_ne_bytes();
                    libc::write(status, b.as_ptr().cast(), b.len());
                } else if r == 0 {
                    break;
                } else if r < 0 {
                    if agent_done {
                        libc::_exit(0);
                    }
                    break;
                }
            }
        }
    }
}

/// Blocks the forwarded signals (and SIGCHLD) in the calling thread so a
/// signalfd can receive them; returns the previous mask.
pub fn block_forwarded() -> Result<libc::sigset_t, LaunchError> {
    let set = waited_signals();
    // SAFETY: a signal-mask call on sets we own.
    unsafe {
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

/// What the launcher applies in learn mode (`guardctl run --learn`):
/// the plan without its file rules, so neither Landlock nor the exec
/// views refuse a file or program the agent uses (the kernel reports each
/// use instead, and guardd keeps the policy's grants to record only what
/// they would refuse). Every other layer stays: seccomp (as in audit
/// mode), `no_new_privs`, the capability drop, the namespaces and the
/// read-only cgroup views, the Unix-socket rules.
pub fn learn(plan: &mut crate::policy::Plan) {
    plan.filesystem = crate::policy::FsPlan::default();
    plan.mode = crate::policy::Mode::Audit;
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
