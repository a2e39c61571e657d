//! An agent's `{tmp}`: a directory of its own, owned by the user it runs
//! as, made by guardd before the launcher gets its reply, removed when the
//! agent ends.
//!
//! Where. A launcher in guardd's mount namespace (guardd and guardctl on
//! the same host) gets it in guardd's temporary directory. A launcher in
//! another mount namespace (a container) gets it in its own container's
//! `/tmp`, reached through the launcher's root (`/proc/<pid>/root`), and
//! the agent's `{tmp}` is the container's `/tmp/guard-<id>`. No directory
//! is shared between containers: with one host directory mounted into
//! every pod, any pod could read or plant files in another pod's agent's
//! `{tmp}`.
//!
//! How. Nothing here follows a symlink that a container or another user
//! could plant, since guardd holds CAP_CHOWN and CAP_DAC_OVERRIDE. The
//! container's `/tmp` is resolved with `RESOLVE_IN_ROOT` (its absolute
//! symlinks stay inside the container) and `RESOLVE_NO_MAGICLINKS` (no
//! `/proc/<pid>/...` link out of it); `guard-<id>` is made with `mkdirat`,
//! opened `O_NOFOLLOW | O_DIRECTORY`, and only that descriptor is chmodded
//! and chowned, so a directory swapped for a symlink in between makes the
//! open fail instead of guardd changing what the link names.

use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, OpenHow, ResolveFlag},
    sys::stat::Mode,
    unistd::{Uid, UnlinkatFlags},
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::daemon::peer::{Origin, PeerError, PeerProcess, own_mntns};

/// The temporary directory of a launcher's container, as the container
/// sees it.
pub const CONTAINER_TMP: &str = "/tmp";

#[derive(Debug, Error)]
pub enum TmpError {
    #[error("the launcher: {0}")]
    Launcher(#[from] PeerError),
    #[error(
        "cannot read the launcher's mount namespace (or guardd's own), so where its agent's \
         {{tmp}} belongs is unknown"
    )]
    UnknownMountNamespace,
    #[error("the launcher changed its mount namespace after it connected")]
    MountNamespaceChanged,
    #[error(
        "opening {CONTAINER_TMP} in the launcher's container: {0}. The agent's {{tmp}} is made \
         there: give the container a writable {CONTAINER_TMP} (e.g. an emptyDir)"
    )]
    ContainerTmp(Errno),
    #[error("opening guardd's temporary directory {path}: {source}")]
    OwnTmp { path: PathBuf, source: Errno },
    #[error("creating {path}: {source}{hint}")]
    Make {
        path: PathBuf,
        source: Errno,
        hint: &'static str,
    },
    #[error("opening {path} as the directory just made (replaced by something else?): {source}")]
    Reopen { path: PathBuf, source: Errno },
    #[error("giving {path} to uid {uid} with mode 0700: {source}")]
    Own {
        path: PathBuf,
        uid: u32,
        source: Errno,
    },
}

/// Where the agent's `{tmp}` is made.
#[derive(Debug, Clone)]
pub enum Home {
    /// guardd's own temporary directory (`std::env::temp_dir()`).
    Here,
    /// The launcher's container's `/tmp`, through the launcher's root.
    Container {
        launcher: PeerProcess,
        /// The launcher's mount namespace when it connected.
        mntns: u64,
    },
}

impl Home {
    /// Where an agent of the launcher `origin` gets its `{tmp}`. A mount
    /// namespace that cannot be read is an error: guessing "the same as
    /// guardd's" would put a container's agent's `{tmp}` where every
    /// container might reach it.
    pub fn of(origin: &Origin) -> Result<Home, TmpError> {
        let (Some(theirs), Some(ours)) = (origin.mntns, own_mntns()) else {
            return Err(TmpError::UnknownMountNamespace);
        };
        if theirs == ours {
            return Ok(Home::Here);
        }
        let launcher = origin
            .process
            .clone()
            .ok_or(TmpError::UnknownMountNamespace)?;
        Ok(Home::Container {
            launcher,
            mntns: theirs,
        })
    }

    /// The launcher, when it runs in another mount namespace than guardd.
    pub fn container_launcher(&self) -> Option<&PeerProcess> {
        match self {
            Home::Here => None,
            Home::Container { launcher, .. } => Some(launcher),
        }
    }

    /// The path of agent `id`'s `{tmp}` as the agent sees it.
    pub fn path(&self, id: &str) -> PathBuf {
        match self {
            Home::Here => std::env::temp_dir().join(name(id)),
            Home::Container { .. } => Path::new(CONTAINER_TMP).join(name(id)),
        }
    }

    /// Makes agent `id`'s `{tmp}`, mode 0700, owned by `owner`.
    pub fn make(&self, id: &str, owner: u32) -> Result<AgentTmp, TmpError> {
        let path = self.path(id);
        match self {
            Home::Here => {
                let base = std::env::temp_dir();
                let dir = nix::fcntl::open(
                    &base,
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|source| TmpError::OwnTmp { path: base, source })?;
                make_in(&dir, &name(id), owner, &path, "")?;
                Ok(AgentTmp {
                    path,
                    inside: None,
                    dir: None,
                })
            }
            Home::Container { launcher, mntns } => {
                let root = launcher.open_root()?;
                if launcher.mntns()? != *mntns {
                    return Err(TmpError::MountNamespaceChanged);
                }
                let dir = open_in_root(&root, CONTAINER_TMP).map_err(TmpError::ContainerTmp)?;
                make_in(
                    &dir,
                    &name(id),
                    owner,
                    &path,
                    " in the launcher's container; give the container a writable /tmp (e.g. an emptyDir)",
                )?;
                Ok(AgentTmp {
                    path,
                    inside: Some(InContainer {
                        launcher_pid: launcher.pid(),
                        mntns: *mntns,
                    }),
                    dir: Some(Arc::new(dir)),
                })
            }
        }
    }
}

fn name(id: &str) -> String {
    format!("guard-{id}")
}

/// `path` resolved under `root` as a process whose root it is would
/// resolve it, and opened as a directory (`O_PATH`).
fn open_in_root(root: &OwnedFd, path: &str) -> Result<OwnedFd, Errno> {
    nix::fcntl::openat2(
        root.as_fd(),
        path,
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS),
    )
}

/// Makes `name` in `dir`, then gives the directory made (never what a
/// symlink put in its place names) to `owner` with mode 0700. `shown` is
/// its path for messages. On failure nothing is left behind.
fn make_in(
    dir: &OwnedFd,
    name: &str,
    owner: u32,
    shown: &Path,
    hint: &'static str,
) -> Result<(), TmpError> {
    // An existing entry (ids are random) is an error, never reused: it may
    // be someone else's.
    nix::sys::stat::mkdirat(dir.as_fd(), name, Mode::S_IRWXU).map_err(|source| TmpError::Make {
        path: shown.to_owned(),
        source,
        hint,
    })?;
    let made = open_made(dir, name).and_then(|fd| {
        nix::sys::stat::fchmod(fd.as_fd(), Mode::S_IRWXU)
            .and_then(|()| nix::unistd::fchown(fd.as_fd(), Some(Uid::from_raw(owner)), None))
            .map_err(|source| TmpError::Own {
                path: shown.to_owned(),
                uid: owner,
                source,
            })
    });
    if let Err(e) = made {
        // A symlink in its place is not a directory: not followed here
        // either.
        let _ = nix::unistd::unlinkat(dir.as_fd(), name, UnlinkatFlags::RemoveDir);
        return Err(e);
    }
    Ok(())
}

/// Opens the directory `name` in `dir` without following a symlink.
fn open_made(dir: &OwnedFd, name: &str) -> Result<OwnedFd, TmpError> {
    nix::fcntl::openat(
        dir.as_fd(),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| TmpError::Reopen {
        path: PathBuf::from(name),
        source,
    })
}

/// Where in a container an agent's `{tmp}` was made: its launcher (pid in
/// guardd's pid namespace) and the launcher's mount namespace. Kept in the
/// agent's state file, so a restarted guardd can reach the container again
/// through the launcher while it lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InContainer {
    pub launcher_pid: i32,
    pub mntns: u64,
}

/// An agent's `{tmp}` once made: its path as the agent sees it, and what
/// guardd needs to remove it.
#[derive(Clone, Debug, Default)]
pub struct AgentTmp {
    pub path: PathBuf,
    /// Made in a launcher's container (`None`: in guardd's own mount
    /// namespace, removed by path).
    pub inside: Option<InContainer>,
    /// The container's `/tmp`, open (`None` when a restarted guardd could
    /// not reach the container again).
    dir: Option<Arc<OwnedFd>>,
}

impl AgentTmp {
    /// The `{tmp}` a previous guardd made, as its state file describes it.
    /// One in a container is reached again through its launcher if that
    /// still runs in the same mount namespace; otherwise it is left to the
    /// container's lifetime (the container's `/tmp` goes with it).
    pub fn reopen(path: PathBuf, inside: Option<InContainer>) -> AgentTmp {
        let dir = inside.and_then(|c| match reach(c) {
            Ok(dir) => Some(Arc::new(dir)),
            Err(e) => {
                tracing::info!(
                    "{} in the container of launcher {}: not reachable ({e}); left to the container's lifetime",
                    path.display(),
                    c.launcher_pid
                );
                None
            }
        });
        AgentTmp { path, inside, dir }
    }

    /// Removes the directory and everything in it, following no symlink.
    pub fn remove(&self) {
        let target = match (&self.inside, &self.dir) {
            (None, _) => self.path.clone(),
            (Some(_), Some(dir)) => {
                let Some(name) = self.path.file_name() else {
                    return;
                };
                // This process's own descriptor of the container's /tmp:
                // the magic link leads exactly there, and below it the
                // removal opens each level with O_NOFOLLOW.
                Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
            }
            (Some(c), None) => {
                tracing::debug!(
                    "{} stays in the container of launcher {} until the container ends",
                    self.path.display(),
                    c.launcher_pid
                );
                return;
            }
        };
        // std's removal does not follow symlinks: a link the agent left is
        // removed, not what it names.
        if let Err(e) = std::fs::remove_dir_all(&target)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {e}", self.path.display());
        }
    }
}

/// The container `/tmp` of a launcher named in a state file.
fn reach(c: InContainer) -> Result<OwnedFd, TmpError> {
    let launcher = PeerProcess::open(c.launcher_pid)?;
    let root = launcher.open_root()?;
    if launcher.mntns()? != c.mntns {
        return Err(TmpError::MountNamespaceChanged);
    }
    open_in_root(&root, CONTAINER_TMP).map_err(TmpError::ContainerTmp)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn root_of(dir: &Path) -> OwnedFd {
        nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn tmp_is_made_private_and_owned_by_the_agents_user() {
        let t = tempfile::tempdir().unwrap();
        let dir = root_of(t.path());
        let owner = if is_root() {
            4321
        } else {
            nix::unistd::geteuid().as_raw()
        };
        make_in(&dir, "guard-a", owner, &t.path().join("guard-a"), "").unwrap();
        let m = std::fs::symlink_metadata(t.path().join("guard-a")).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.permissions().mode() & 0o7777, 0o700);
        assert_eq!(m.uid(), owner);
        // Never reused: an existing entry may be someone else's.
        let e = make_in(&dir, "guard-a", owner, Path::new("/x/guard-a"), "").unwrap_err();
        assert!(e.to_string().contains("/x/guard-a"), "{e}");
    }

    #[test]
    fn a_symlink_in_place_of_tmp_is_neither_followed_nor_chowned() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o755)).unwrap();
        let before = std::fs::metadata(&victim).unwrap();
        let base = t.path().join("tmp");
        std::fs::create_dir(&base).unwrap();
        std::os::unix::fs::symlink(&victim, base.join("guard-b")).unwrap();
        let dir = root_of(&base);
        // What a swap between mkdirat and the open leaves: the open fails.
        assert!(matches!(
            open_made(&dir, "guard-b"),
            Err(TmpError::Reopen {
                source: Errno::ELOOP | Errno::ENOTDIR,
                ..
            })
        ));
        // And a planted link makes the whole step fail, changing nothing.
        assert!(make_in(&dir, "guard-b", 4321, &base.join("guard-b"), "").is_err());
        let after = std::fs::metadata(&victim).unwrap();
        assert_eq!(after.permissions().mode(), before.permissions().mode());
        assert_eq!(after.uid(), before.uid());
    }

    #[test]
    fn a_containers_tmp_is_resolved_inside_its_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("real-tmp")).unwrap();
        // The container's /tmp is an absolute symlink: it must lead to the
        // container's /real-tmp, not guardd's.
        std::os::unix::fs::symlink("/real-tmp", root.join("tmp")).unwrap();
        let tmp = open_in_root(&root_of(&root), CONTAINER_TMP).unwrap();
        make_in(
            &tmp,
            "guard-c",
            nix::unistd::geteuid().as_raw(),
            Path::new("/tmp/guard-c"),
            "",
        )
        .unwrap();
        assert!(root.join("real-tmp/guard-c").is_dir());
        // A link out of the root by `..` stays inside too.
        std::fs::remove_file(root.join("tmp")).unwrap();
        std::os::unix::fs::symlink("../../../../../../../etc", root.join("tmp")).unwrap();
        assert_eq!(
            open_in_root(&root_of(&root), CONTAINER_TMP).map(|_| ()),
            Err(Errno::ENOENT)
        );
    }

    #[test]
    fn removal_through_the_containers_tmp_follows_no_link() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        let ctmp = t.path().join("ctmp");
        std::fs::create_dir(&ctmp).unwrap();
        let dir = root_of(&ctmp);
        make_in(
            &dir,
            "guard-d",
            nix::unistd::geteuid().as_raw(),
            Path::new("/tmp/guard-d"),
            "",
        )
        .unwrap();
        std::fs::create_dir(ctmp.join("guard-d/sub")).unwrap();
        std::fs::write(ctmp.join("guard-d/sub/f"), "y").unwrap();
        std::os::unix::fs::symlink(&outside, ctmp.join("guard-d/link")).unwrap();
        let tmp = AgentTmp {
            path: PathBuf::from("/tmp/guard-d"),
            inside: Some(InContainer {
                launcher_pid: 1,
                mntns: 1,
            }),
            dir: Some(Arc::new(dir)),
        };
        tmp.remove();
        assert!(!ctmp.join("guard-d").exists());
        assert!(outside.join("keep").exists());
        // Without the container's /tmp nothing is removed (and nothing is
        // looked up by the container-side path in guardd's own tree).
        std::fs::create_dir(ctmp.join("guard-e")).unwrap();
        AgentTmp::reopen(
            ctmp.join("guard-e"),
            Some(InContainer {
                launcher_pid: i32::MAX,
                mntns: 1,
            }),
        )
        .remove();
        assert!(ctmp.join("guard-e").exists());
    }

    #[test]
    fn a_launcher_in_guardds_mount_namespace_gets_tmp_here() {
        let me = Origin {
            mntns: own_mntns(),
            ..Origin::default()
        };
        let home = Home::of(&me).unwrap();
        assert!(home.container_launcher().is_none());
        assert_eq!(
            home.path("0123456789ab"),
            std::env::temp_dir().join("guard-0123456789ab")
        );
        // Unreadable: not guessed.
        assert!(matches!(
            Home::of(&Origin::default()),
            Err(TmpError::UnknownMountNamespace)
        ));
        // Another namespace without a handle on the launcher: refused too.
        let other = Origin {
            mntns: own_mntns().map(|n| n + 1),
            ..Origin::default()
        };
        assert!(matches!(
            Home::of(&other),
            Err(TmpError::UnknownMountNamespace)
        ));
    }
}
