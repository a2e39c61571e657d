//! Supervising a started agent from the launcher: forwarding the signals
//! sent to the launcher, waiting for the agent's status, reaping.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use thiserror::Error;

use super::{Child, LaunchError, block_forwarded, waited_signals};
use crate::api::ExitStatus;

#[derive(Debug, Error)]
pub enum SuperviseError {
    #[error(transparent)]
    Block(LaunchError),
    #[error("signalfd: {0}")]
    Signalfd(std::io::Error),
}

/// The forwarded signals (and SIGCHLD), blocked in the launcher and read
/// from a signalfd. Taken before the agent is spawned, so none is lost.
pub struct Signals {
    fd: OwnedFd,
}

impl Signals {
    pub fn block() -> Result<Signals, SuperviseError> {
        block_forwarded().map_err(SuperviseError::Block)?;
        signalfd()
            .map(|fd| Signals { fd })
            .map_err(SuperviseError::Signalfd)
    }

    /// Waits for the agent's main process, forwarding signals sent to the
    /// launcher. Signals the kernel sends for the terminal (Ctrl-C, ...)
    /// already reach the agent, which shares the foreground process group;
    /// only signals sent to the launcher by another process are forwarded.
    /// With a pid-1 reaper, the agent's status comes from the reaper's
    /// status pipe (the reaper itself may stay until guardd ends the scope,
    /// when the agent left processes behind); a reaper that died without
    /// writing it (killed with the scope) gives its own status.
    pub fn wait(&self, child: &Child) -> ExitStatus {
        let sigfd = &self.fd;
        let mut status_open = child.status.is_some();
        loop {
            let status_fd = match (&child.status, status_open) {
                (Some(fd), true) => fd.as_raw_fd(),
                _ => -1,
            };
            let mut fds = [
                libc::pollfd {
                    fd: child.pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: sigfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: status_fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: polling descriptors we own (a negative one is skipped).
            unsafe { libc::poll(fds.as_mut_ptr(), 3, -1) };
            if fds[1].revents & libc::POLLIN != 0 {
                // SAFETY: signalfd_siginfo is plain data; all-zero is a valid value.
                let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
                // SAFETY: reads at most one signalfd_siginfo into the buffer
                // above, from a signalfd we own.
                let n = unsafe {
                    libc::read(
                        sigfd.as_raw_fd(),
                        (&raw mut info).cast(),
                        std::mem::size_of::<libc::signalfd_siginfo>(),
                    )
                };
                let from_kernel = info.ssi_code == libc::SI_KERNEL;
                if n > 0 && info.ssi_signo as i32 != libc::SIGCHLD && !from_kernel {
                    // SAFETY: pidfd_send_signal to our own child's pidfd.
                    unsafe {
                        libc::syscall(
                            libc::SYS_pidfd_send_signal,
                            child.pidfd.as_raw_fd(),
                            info.ssi_signo as i32,
                            std::ptr::null::<libc::siginfo_t>(),
                            0u32,
                        )
                    };
                }
            }
            if fds[2].revents != 0 {
                if let Some(st) = child.reported_status() {
                    return exit_status(st);
                }
                if fds[2].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                    status_open = false;
                }
            }
            if fds[0].revents & libc::POLLIN != 0 {
                if let Some(st) = child.reported_status() {
                    return exit_status(st);
                }
                let mut status = 0;
                // SAFETY: waiting for our own child.
                let rc = unsafe { libc::waitpid(child.pid, &mut status, 0) };
                if rc == child.pid {
                    return exit_status(status);
                }
            }
        }
    }
}

fn signalfd() -> std::io::Result<OwnedFd> {
    let set = waited_signals();
    // SAFETY: creating a new descriptor for a signal set we own.
    unsafe {
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// A wait status as guardd records it.
pub fn exit_status(status: i32) -> ExitStatus {
    if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    }
}

/// Reaps the launcher's child if the agent's status came from its pid-1
/// reaper: by now the reaper has exited (nothing left in its namespace) or
/// guardd has killed it with the scope. Bounded, in case guardd could not.
pub fn reap(child: &Child) {
    if child.status.is_none() {
        return;
    }
    let mut pfd = libc::pollfd {
        fd: child.pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let mut status = 0;
    // SAFETY: polling our child's pidfd, then reaping that child without
    // blocking (an already reaped child makes waitpid fail harmlessly).
    unsafe {
        libc::poll(&mut pfd, 1, 1000);
        libc::waitpid(child.pid, &mut status, libc::WNOHANG);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses() {
        // Exit code in the second byte; a terminating signal in the low
        // seven bits (0x80: core dumped).
        assert_eq!(exit_status(0), ExitStatus::Code(0));
        assert_eq!(exit_status(3 << 8), ExitStatus::Code(3));
        assert_eq!(exit_status(libc::SIGKILL), ExitStatus::Signal(9));
        assert_eq!(exit_status(libc::SIGSEGV | 0x80), ExitStatus::Signal(11));
    }
}
