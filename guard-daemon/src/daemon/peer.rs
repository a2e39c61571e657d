//! Who is calling: the peer of a connection on guardd's socket, and whether
//! it runs inside an agent's scope.
//!
//! A confined agent usually runs as uid 0 (without capabilities), so the
//! socket's file permissions and the peer's uid say nothing about whether it
//! is confined. The peer's cgroup does: every scope is a cgroup named
//! `agent-<id>`, and a task cannot leave it. The cgroup is read through a
//! pidfd of the peer (`SO_PEERPIDFD`) and the pidfd is checked to still name
//! a live process after the read, so a peer that exits and whose pid is
//! reused cannot borrow an outsider's cgroup. The pidfd is kept with the
//! origin (`PeerProcess`), so what guardd reads of the peer later (its
//! mounts, its root) is checked the same way.

use std::{
    io::Read,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::PathBuf,
    sync::Arc,
};

use thiserror::Error;

/// `SO_PEERPIDFD` (Linux 6.5).
const SO_PEERPIDFD: libc::c_int = 77;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PeerError {
    #[error("cannot identify the peer process: {0}")]
    Identify(String),
    #[error("the peer process exited while guardd was reading where it runs")]
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
/// of `/proc/<pid>/cgroup`, as guardd's cgroup namespace shows it), its
/// network and mount namespaces, and a handle on the process. A launcher's
/// agent gets its scope under these cgroups when guardd places scopes
/// under callers (`--scopes-under caller`), and the journal names the
/// container from them; a launcher in another mount namespace (a
/// container) gets its agent's `{tmp}` inside its own file system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub cgroups: String,
    /// Inode of the peer's network namespace (`None`: unreadable).
    pub netns: Option<u64>,
    /// Inode of the peer's pid namespace (`None`: unreadable).
    pub pidns: Option<u64>,
    /// Inode of the peer's mount namespace (`None`: unreadable).
    pub mntns: Option<u64>,
    /// The peer process, to read more of it later as the same process
    /// (`None` only in an origin made up for a peer that was refused).
    pub process: Option<PeerProcess>,
}

/// A peer process as guardd identified it at connection time: its pid in
/// guardd's pid namespace and a pidfd. Whatever is read under
/// `/proc/<pid>` is the peer's only if the pidfd shows the process still
/// alive after the read (a pid is reused only once its process is gone),
/// so every read here checks that.
#[derive(Debug, Clone)]
pub struct PeerProcess {
    pid: i32,
    pidfd: Arc<OwnedFd>,
}

impl PartialEq for PeerProcess {
    fn eq(&self, other: &Self) -> bool {
        self.pid == other.pid
    }
}

impl Eq for PeerProcess {}

impl PeerProcess {
    /// A handle on the process `pidfd` names, if it is alive.
    pub fn new(pidfd: OwnedFd) -> Result<PeerProcess, PeerError> {
        let pid = pid_of(&pidfd)?;
        if pid <= 0 {
            return Err(PeerError::Gone);
        }
        Ok(PeerProcess {
            pid,
            pidfd: Arc::new(pidfd),
        })
    }

    /// A handle on the live process `pid` (`pidfd_open`), e.g. a launcher
    /// named in a state file.
    pub fn open(pid: i32) -> Result<PeerProcess, PeerError> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new
        // descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(PeerError::Gone);
        }
        // SAFETY: the kernel returned a new descriptor that we now own.
        PeerProcess::new(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Fails if the process has exited: what was read under its pid may
    /// belong to another process.
    fn still_there(&self) -> Result<(), PeerError> {
        if exited(&self.pidfd) {
            Err(PeerError::Gone)
        } else {
            Ok(())
        }
    }

    /// The text of `/proc/<pid>/<file>`, as the peer's.
    pub fn read(&self, file: &str) -> Result<String, PeerError> {
        let path = format!("/proc/{}/{file}", self.pid);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                PeerError::Gone
            } else {
                PeerError::Identify(format!("reading {path}: {e}"))
            }
        })?;
        self.still_there()?;
        Ok(text)
    }

    /// The inode of the peer's mount namespace.
    pub fn mntns(&self) -> Result<u64, PeerError> {
        let ns = ns_of(self.pid, "mnt");
        self.still_there()?;
        ns.ok_or_else(|| {
            PeerError::Identify(format!(
                "cannot read /proc/{}/ns/mnt (guardd needs CAP_SYS_PTRACE for other users' processes)",
                self.pid
            ))
        })
    }

    /// The peer's root directory (`/proc/<pid>/root`, opened `O_PATH`):
    /// its container's root, with the container's mounts beneath it.
    /// Paths must be resolved under it with `RESOLVE_IN_ROOT`, or the
    /// container's absolute symlinks lead into guardd's own file system.
    pub fn open_root(&self) -> Result<OwnedFd, PeerError> {
        use nix::{fcntl::OFlag, sys::stat::Mode};
        let path = format!("/proc/{}/root", self.pid);
        let root = nix::fcntl::open(
            path.as_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            nix::errno::Errno::ENOENT | nix::errno::Errno::ESRCH => PeerError::Gone,
            e => PeerError::Identify(format!("opening {path}: {e}")),
        })?;
        self.still_there()?;
        Ok(root)
    }
}

impl PeerProcess {
    /// The cgroup file systems the peer sees writable, by mount point
    /// (read from its `mountinfo`).
    pub fn writable_cgroup_mounts(&self) -> Result<Vec<PathBuf>, PeerError> {
        Ok(writable_cgroup_mounts(&self.read("mountinfo")?))
    }
}

/// Why guardd refuses to start an agent for a launcher in a container
/// that sees the cgroup file systems `mounts` writable.
pub fn writable_cgroupfs_refusal(mounts: &[PathBuf], origin: &Origin) -> String {
    let list: Vec<String> = mounts.iter().map(|m| m.display().to_string()).collect();
    format!(
        "the launcher's container (cgroup {}) has writable cgroup file system(s) mounted at {}: \
         its agent could move itself out of its scope (writing cgroup.procs takes no \
         capability) and leave every guard program. Run the workload with a read-only \
         cgroupfs, the default for unprivileged containers: not privileged, and no writable \
         mount of /sys/fs/cgroup",
        origin.v2().unwrap_or("unknown"),
        list.join(", ")
    )
}

/// The cgroup file systems a mountinfo text shows writable (no `ro` among
/// the mount's own options), by mount point. A process that sees one can
/// move itself to any cgroup beneath that mount's root: `cgroup.procs` is
/// root's, and file permissions are all it takes.
pub fn writable_cgroup_mounts(mountinfo: &str) -> Vec<PathBuf> {
    crate::host::parse_mountinfo(mountinfo)
        .into_iter()
        .filter(|m| matches!(m.fstype.as_str(), "cgroup" | "cgroup2") && !m.read_only())
        .map(|m| m.mount_point)
        .collect()
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

/// The inode of a process's namespace of kind `kind` (`net`, `pid`, `mnt`).
fn ns_of(pid: i32, kind: &str) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix(kind)?
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
    ns_of(std::process::id() as i32, "net")
}

/// guardd's own mount namespace.
pub fn own_mntns() -> Option<u64> {
    ns_of(std::process::id() as i32, "mnt")
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
    let process = PeerProcess::new(pidfd_of(sock)?)?;
    let pid = process.pid;
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
    let mntns = ns_of(pid, "mnt");
    // The text read belongs to the peer only if the pid still names it.
    process.still_there()?;
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
            mntns,
            process: Some(process),
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
            ..origin.clone()
        };
        assert_ne!(unreadable.tenant(), 0);
        assert_eq!(origin.mntns, own_mntns());
        assert!(own_mntns().is_some());
        // The handle reads the peer's files as long as it lives.
        let me = origin.process.unwrap();
        assert_eq!(me.pid(), std::process::id() as i32);
        assert_eq!(me.mntns(), Ok(own_mntns().unwrap()));
        assert!(me.read("mountinfo").unwrap().contains(" - "));
        assert!(me.open_root().is_ok());
    }

    #[test]
    fn a_handle_on_an_exited_process_reads_nothing() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let p = PeerProcess::open(child.id() as i32).unwrap();
        child.wait().unwrap();
        assert_eq!(p.read("mountinfo"), Err(PeerError::Gone));
        assert_eq!(p.mntns(), Err(PeerError::Gone));
        assert_eq!(p.open_root().map(|_| ()), Err(PeerError::Gone));
    }

    #[test]
    fn writable_cgroup_mounts_are_found_in_mountinfo() {
        // An unprivileged podman container on a hybrid host: v1
        // hierarchies read-only, the tmpfs above them writable (not a
        // cgroup file system).
        let unprivileged = "\
88 80 0:40 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,mode=755
97 88 0:37 /libpod_parent/libpod-c0f9 /sys/fs/cgroup/systemd ro,nosuid,nodev,noexec,relatime - cgroup cgroup rw,name=systemd
98 88 0:38 /libpod_parent/libpod-c0f9 /sys/fs/cgroup/pids ro,nosuid,nodev,noexec,relatime master:9 - cgroup cgroup rw,pids
";
        assert!(writable_cgroup_mounts(unprivileged).is_empty());
        // `-v /sys/fs/cgroup:/sys/fs/cgroup:rw`: the host's hierarchies.
        let bound = "\
97 88 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
98 88 0:38 / /sys/fs/cgroup/unified rw,relatime shared:5 master:3 - cgroup2 cgroup2 rw
99 88 0:39 / /sys/fs/cgroup/pids ro,relatime - cgroup cgroup rw,pids
";
        assert_eq!(
            writable_cgroup_mounts(bound),
            [
                PathBuf::from("/sys/fs/cgroup/systemd"),
                PathBuf::from("/sys/fs/cgroup/unified")
            ]
        );
        // Anywhere in the tree, with escaped names; `ro` only as a whole
        // option counts (`rootcontext=` is not read-only).
        let elsewhere = "\
120 100 0:38 / /host\\040cgroup rw,rootcontext=x - cgroup2 cgroup2 rw
121 100 0:38 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw
";
        assert_eq!(
            writable_cgroup_mounts(elsewhere),
            [PathBuf::from("/host cgroup")]
        );
        assert!(writable_cgroup_mounts("").is_empty());
        assert!(writable_cgroup_mounts("garbage\n1 2 3\n").is_empty());
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
            ..Origin::default()
        };
        assert_eq!(host.container(), None);
        assert_eq!(container_id("/"), None);
        assert_eq!(pod_uid("/kubepods/podnotauid"), None);
    }
}
