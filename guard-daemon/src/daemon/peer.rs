//! Who is calling: the peer of a connection on guardd's socket, and whether
//! it runs inside an agent's scope.
//!
//! A confined agent usually runs as uid 0 (without capabilities), so the
//! socket's file permissions and the peer's uid say nothing about whether it
//! is confined. The peer's cgroup does: every scope is a cgroup named
//! `agent-<id>`, and a task cannot leave it. The cgroup is read through a
//! pidfd of the peer (`SO_PEERPIDFD`) and the pidfd is checked to still name
//! a live process after the read, so a peer that exits and whose pid is
//! reused cannot borrow an outsider's cgroup.

use std::{
    io::Read,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use thiserror::Error;

/// `SO_PEERPIDFD` (Linux 6.5).
const SO_PEERPIDFD: libc::c_int = 77;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PeerError {
    #[error("cannot identify the peer process: {0}")]
    Identify(String),
    #[error("the peer process exited before its cgroup could be checked")]
    Gone,
}

/// Where the peer runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Outside every scope.
    Outside,
    /// Inside the scope of this agent id (the `agent-<id>` component of its
    /// cgroup path), and the full cgroup path.
    Confined { agent: String, cgroup: String },
}

/// The agent id of the first scope component of a cgroup path, if any.
/// Scopes are `agent-` followed by 12 lowercase hex digits (`random_id`).
pub fn scope_of(cgroup_path: &str) -> Option<&str> {
    cgroup_path.split('/').find_map(|c| {
        let id = c.strip_prefix("agent-")?;
        (id.len() == 12
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then_some(id)
    })
}

/// The v2 cgroup path in the text of `/proc/<pid>/cgroup`.
pub fn v2_path(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

fn pidfd_of(sock: RawFd) -> Result<OwnedFd, PeerError> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`.
    let rc = unsafe {
        libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &mut len,
        )
    };
    if rc != 0 || fd < 0 {
        return Err(PeerError::Identify(format!(
            "SO_PEERPIDFD: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The pid a pidfd names, from its fdinfo (-1 once the process is gone).
fn pid_of(pidfd: &OwnedFd) -> Result<i32, PeerError> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
        .map_err(|e| PeerError::Identify(format!("reading the pidfd's fdinfo: {e}")))?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| PeerError::Identify("no Pid in the pidfd's fdinfo".into()))
}

/// Whether the process behind `pidfd` has exited (a pidfd polls readable
/// then).
fn exited(pidfd: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polling one descriptor we own, without waiting.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n != 0
}

/// Where the peer of the connected Unix socket `sock` runs.
pub fn placement(sock: RawFd) -> Result<Placement, PeerError> {
    let pidfd = pidfd_of(sock)?;
    let pid = pid_of(&pidfd)?;
    if pid <= 0 {
        return Err(PeerError::Gone);
    }
    let mut text = String::new();
    std::fs::File::open(format!("/proc/{pid}/cgroup"))
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                PeerError::Gone
            } else {
                PeerError::Identify(format!("reading /proc/{pid}/cgroup: {e}"))
            }
        })?;
    // The text read belongs to the peer only if the pid still names it.
    if exited(&pidfd) {
        return Err(PeerError::Gone);
    }
    let path = v2_path(&text)
        .ok_or_else(|| PeerError::Identify(format!("no cgroup v2 entry for pid {pid}")))?;
    Ok(match scope_of(path) {
        Some(id) => Placement::Confined {
            agent: id.to_owned(),
            cgroup: path.to_owned(),
        },
        None => Placement::Outside,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_found_anywhere_in_the_path() {
        assert_eq!(scope_of("/guard/agent-0123456789ab"), Some("0123456789ab"));
        assert_eq!(
            scope_of("/kubepods/pod1/cri-x/agent-abcdefabcdef/sub"),
            Some("abcdefabcdef")
        );
        assert_eq!(scope_of("/guard"), None);
        assert_eq!(scope_of("/agent-xyz"), None);
        assert_eq!(scope_of("/agent-0123456789AB"), None);
        assert_eq!(scope_of("/agent-0123456789abc"), None);
        assert_eq!(scope_of("/"), None);
    }

    #[test]
    fn v2_entry_of_a_hybrid_host() {
        let t =
            "12:pids:/guard/agent-0123456789ab\n1:name=systemd:/\n0::/guard/agent-0123456789ab\n";
        assert_eq!(v2_path(t), Some("/guard/agent-0123456789ab"));
        assert_eq!(v2_path("1:cpu:/\n"), None);
    }

    #[test]
    fn this_process_is_outside() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(placement(a.as_raw_fd()), Ok(Placement::Outside));
    }
}
