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
    /// Outside every scope: where, read at the same moment as the check.
    Outside(Origin),
    /// Inside the scope of this agent id (the `agent-<id>` component of its
    /// cgroup path), and the full cgroup path.
    Confined { agent: String, cgroup: String },
}

/// What guardd read of a peer outside every scope: its cgroups (the text
/// of `/proc/<pid>/cgroup`, as guardd's cgroup namespace shows it) and its
/// network namespace. A launcher's agent gets its scope under these
/// cgroups when guardd places scopes under callers (`--scopes-under
/// caller`), and the journal names the container from them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub cgroups: String,
    /// Inode of the peer's network namespace (`None`: unreadable).
    pub netns: Option<u64>,
    /// Inode of the peer's pid namespace (`None`: unreadable).
    pub pidns: Option<u64>,
}

impl Origin {
    /// Which tenant the peer is: 0 for a peer in guardd's own pid
    /// namespace (the host's operators and services), otherwise a key of
    /// its cgroup. A workload pod runs as uid 0 in a pid namespace of its
    /// own: it is a tenant, and sees and controls only the agents it
    /// started itself, however root it is.
    pub fn tenant(&self) -> u64 {
        if self.pidns.is_some() && self.pidns == own_pidns() {
            return 0;
        }
        let d = <sha2::Sha256 as sha2::Digest>::digest(self.cgroups.as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        u64::from_le_bytes(b) | 1
    }

    /// The v2 cgroup path.
    pub fn v2(&self) -> Option<&str> {
        v2_path(&self.cgroups)
    }

    /// The container this origin names, if its cgroup is not guardd's
    /// host's own (a path under the root with no container or pod in it is
    /// a host session: `None`).
    pub fn container(&self) -> Option<crate::journal::ContainerRef> {
        let path = self.v2()?;
        let id = container_id(path);
        let pod_uid = pod_uid(path);
        (id.is_some() || pod_uid.is_some()).then(|| crate::journal::ContainerRef {
            cgroup: path.to_owned(),
            id,
            pod_uid,
        })
    }
}

/// The container id in the last component of a cgroup path, as container
/// runtimes name them.
pub fn container_id(path: &str) -> Option<String> {
    // From the leaf up: a runtime may nest its own cgroup below the
    // container's (crun's `container`, systemd in a container).
    path.rsplit('/').find_map(|c| {
        let c = c.strip_suffix(".scope").unwrap_or(c);
        let id = ["cri-containerd-", "crio-", "docker-", "libpod-", "cri-o-"]
            .iter()
            .find_map(|p| c.strip_prefix(p))
            .unwrap_or(c);
        (id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
    })
}

/// The pod UID in a kubelet cgroup path: `pod<uid>` (cgroupfs driver) or
/// `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd driver).
pub fn pod_uid(path: &str) -> Option<String> {
    path.split('/').find_map(|c| {
        let c = c.strip_suffix(".slice").unwrap_or(c);
        let at = c.rfind("pod")?;
        let uid = c[at + 3..].replace('_', "-");
        let shape = uid.len() == 36
            && uid.bytes().enumerate().all(|(i, b)| {
                if matches!(i, 8 | 13 | 18 | 23) {
                    b == b'-'
                } else {
                    b.is_ascii_hexdigit()
                }
            });
        shape.then_some(uid)
    })
}

/// The inode of a process's namespace of kind `ns` (`net`, `pid`).
fn ns_of(pid: i32, ns: &str) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix(ns)?
        .strip_prefix(":[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn netns_of(pid: i32) -> Option<u64> {
    ns_of(pid, "net")
}

/// guardd's own network namespace.
pub fn own_netns() -> Option<u64> {
    netns_of(std::process::id() as i32)
}

/// guardd's own pid namespace.
pub fn own_pidns() -> Option<u64> {
    ns_of(std::process::id() as i32, "pid")
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
    let netns = netns_of(pid);
    let pidns = ns_of(pid, "pid");
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
        None => Placement::Outside(Origin {
            cgroups: text.clone(),
            netns,
            pidns,
        }),
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
        let Ok(Placement::Outside(origin)) = placement(a.as_raw_fd()) else {
            panic!("this test runs outside every scope");
        };
        assert!(origin.v2().is_some());
        assert_eq!(origin.netns, own_netns());
        // In guardd's own pid namespace: no tenant.
        assert_eq!(origin.tenant(), 0);
        let other = Origin {
            pidns: Some(1),
            ..origin.clone()
        };
        assert_ne!(other.tenant(), 0);
        let unreadable = Origin {
            pidns: None,
            ..origin
        };
        assert_ne!(unreadable.tenant(), 0);
    }

    #[test]
    fn containers_and_pods_are_read_from_their_cgroup_paths() {
        let systemd = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1f2e3d4c_5b6a_7980_a1b2_c3d4e5f60718.slice/cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope";
        assert_eq!(
            pod_uid(systemd).as_deref(),
            Some("1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718")
        );
        assert_eq!(
            container_id(systemd).as_deref(),
            Some("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        let cgroupfs =
            "/kubepods/besteffort/pod1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718/abcdefabcdef0123";
        assert_eq!(
            pod_uid(cgroupfs).as_deref(),
            Some("1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718")
        );
        assert_eq!(container_id(cgroupfs).as_deref(), Some("abcdefabcdef0123"));
        // A cgroup a runtime nests below the container's.
        assert_eq!(
            container_id("/libpod_parent/libpod-89abcdef01234567/container").as_deref(),
            Some("89abcdef01234567")
        );
        let podman = "/libpod_parent/libpod-89abcdef01234567";
        assert_eq!(container_id(podman).as_deref(), Some("89abcdef01234567"));
        assert_eq!(pod_uid(podman), None);
        // A host session names no container.
        let host = Origin {
            cgroups: "0::/user.slice/user-0.slice/session-1.scope\n".to_owned(),
            netns: None,
            pidns: None,
        };
        assert_eq!(host.container(), None);
        assert_eq!(container_id("/"), None);
        assert_eq!(pod_uid("/kubepods/podnotauid"), None);
    }
}
