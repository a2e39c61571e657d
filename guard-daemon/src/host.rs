//! What this host offers: where cgroup v2, the v1 controllers and bpffs are
//! mounted. Found from `/proc/self/mountinfo` at start-up, never assumed:
//! development machines use a hybrid layout, production hosts pure v2.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum HostError {
    #[error("reading /proc/self/mountinfo: {0}")]
    Mountinfo(std::io::Error),
    #[error(
        "cgroup v2 is not mounted; guard attaches its network programs to a v2 cgroup. Mount it \
         with `mount -t cgroup2 none /sys/fs/cgroup` (pure v2) or `/sys/fs/cgroup/unified` (hybrid)"
    )]
    NoCgroup2,
    #[error("mounting bpffs at {path}: {source}")]
    MountBpffs {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One line of mountinfo, the fields guard needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Root of the mount within its filesystem (field 4).
    pub root: String,
    pub mount_point: PathBuf,
    /// Per-mount options (field 6: `ro` or `rw`, `nosuid`, ...).
    pub mount_options: String,
    pub fstype: String,
    pub super_options: String,
}

impl Mount {
    /// Whether this mount is read-only for whoever sees it: `ro` among its
    /// per-mount options (a bind mount can be read-only over a writable
    /// file system, and that is what counts for a process writing through
    /// it).
    pub fn read_only(&self) -> bool {
        self.mount_options.split(',').any(|o| o == "ro")
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(oct) = bytes.get(i + 1..i + 4)
            && oct.iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let v = oct
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            Some(Mount {
                root: unescape(pre.get(3)?),
                mount_point: PathBuf::from(unescape(pre.get(4)?)),
                mount_options: pre.get(5)?.to_string(),
                fstype: post.first()?.to_string(),
                super_options: post.get(2).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

pub fn mounts() -> Result<Vec<Mount>, HostError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(HostError::Mountinfo)?;
    Ok(parse_mountinfo(&text))
}

/// The cgroup layout of this host.
#[derive(Clone, Debug)]
pub struct CgroupLayout {
    /// Mount point of the v2 hierarchy.
    pub v2: PathBuf,
    /// Depth of the v2 mount's root inside the hierarchy (0 unless the mount
    /// shows a sub-tree, as in some containers).
    pub v2_root_depth: u32,
    /// v1 hierarchies by controller name (hybrid hosts), e.g. "pids".
    pub v1: Vec<(String, PathBuf)>,
}

impl CgroupLayout {
    pub fn detect() -> Result<Self, HostError> {
        Self::from_mounts(&mounts()?)
    }

    pub fn from_mounts(mounts: &[Mount]) -> Result<Self, HostError> {
        let v2 = mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .ok_or(HostError::NoCgroup2)?;
        let v2_root_depth = Path::new(&v2.root).components().count().saturating_sub(1) as u32;
        let v1 = mounts
            .iter()
            .filter(|m| m.fstype == "cgroup")
            .flat_map(|m| {
                m.super_options
                    .split(',')
                    .filter(|o| matches!(*o, "pids" | "memory" | "cpu" | "freezer"))
                    .map(|o| (o.to_owned(), m.mount_point.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(CgroupLayout {
            v2: v2.mount_point.clone(),
            v2_root_depth,
            v1,
        })
    }

    /// cgroup level (root = 0) of a directory under the v2 mount.
    pub fn level_of(&self, dir: &Path) -> u32 {
        let rel = dir.strip_prefix(&self.v2).unwrap_or(dir);
        self.v2_root_depth + rel.components().count() as u32
    }

    pub fn v1_controller(&self, name: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.as_path())
    }
}

/// Mounts bpffs at `dir` unless a bpffs is already mounted there.
pub fn ensure_bpffs(dir: &Path) -> Result<(), HostError> {
    let present = mounts()?
        .iter()
        .any(|m| m.fstype == "bpf" && m.mount_point == dir);
    if present {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|source| HostError::MountBpffs {
        path: dir.to_owned(),
        source,
    })?;
    let target = CString::new(dir.as_os_str().as_bytes()).map_err(|_| HostError::MountBpffs {
        path: dir.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"),
    })?;
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(HostError::MountBpffs {
            path: dir.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
36 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 27 0:40 / /mnt/with\\040space rw - ext4 /dev/x rw
";

    #[test]
    fn finds_hybrid_layout() {
        let m = parse_mountinfo(HYBRID);
        let l = CgroupLayout::from_mounts(&m).unwrap();
        assert_eq!(l.v2, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(
            l.v1_controller("pids"),
            Some(Path::new("/sys/fs/cgroup/pids"))
        );
        assert_eq!(
            l.v1_controller("cpu"),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(l.level_of(Path::new("/sys/fs/cgroup/unified/guard/a")), 2);
        assert!(
            m.iter()
                .any(|m| m.mount_point == Path::new("/mnt/with space"))
        );
    }

    #[test]
    fn pure_v2_and_namespaced_root() {
        let m = parse_mountinfo(
            "29 23 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        let l = CgroupLayout::from_mounts(&m).unwrap();
        assert!(l.v1.is_empty());
        assert_eq!(l.v2_root_depth, 2);
        assert_eq!(l.level_of(Path::new("/sys/fs/cgroup/guard/x")), 4);
    }

    #[test]
    fn no_cgroup2_is_a_clear_error() {
        let m = parse_mountinfo("36 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n");
        let e = CgroupLayout::from_mounts(&m).unwrap_err();
        assert!(e.to_string().contains("mount -t cgroup2"));
    }

    #[test]
    fn garbage_lines_are_skipped() {
        assert!(parse_mountinfo("nonsense\n\n1 2 3\n").is_empty());
    }
}
