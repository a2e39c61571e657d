//! Agent scopes: one cgroup per agent, under guard's parent cgroup.
//!
//! The v2 cgroup is the scope's identity (the BPF programs key on it, and
//! `cgroup.kill`/`cgroup.freeze` act on everything in it, however the agent
//! forked). Resource limits go wherever the host has each controller: in the
//! v2 tree on pure-v2 hosts, in the v1 hierarchy of that controller on hybrid
//! hosts like the development machines. A limit that cannot be placed
//! anywhere is an error unless the caller accepts running without it.

use std::{
    fs,
    io::ErrorKind,
    os::{
        fd::OwnedFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use thiserror::Error;

use crate::host::CgroupLayout;

#[derive(Debug, Error)]
pub enum ScopeError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the `{controller}` cgroup controller is not available on this host (neither in the v2 tree nor as a v1 hierarchy), so the policy's {what} cannot be enforced"
    )]
    ControllerUnavailable {
        controller: &'static str,
        what: &'static str,
    },
    #[error("processes of scope {path} did not exit within {waited:?}")]
    StillPopulated { path: PathBuf, waited: Duration },
    #[error("invalid scope name {0:?}")]
    BadName(String),
    /// The caller's cgroup cannot hold a scope (see the message).
    #[error("{0}")]
    Caller(String),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ScopeError + 'a {
    move |source| ScopeError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Resource limits of one scope.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub pids: Option<u32>,
    pub memory_bytes: Option<u64>,
    /// CPU time in thousandths of a core.
    pub cpu_millicores: Option<u32>,
    /// Place the scope in the pids and memory controllers even without a
    /// limit, so their peaks can be read at the end (learn mode). Where a
    /// controller is unavailable this is skipped silently: no limit is
    /// lost, only the peak.
    pub observe_peaks: bool,
}

/// Most processes and memory a scope held at once, where the kernel
/// keeps the figure (`pids.peak`, `memory.peak`, or v1's
/// `memory.max_usage_in_bytes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peaks {
    pub processes: Option<u64>,
    pub memory_bytes: Option<u64>,
}

/// Where a controller lives on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    V2,
    /// v1 hierarchy root (mount point) of the controller.
    V1(PathBuf),
    Unavailable,
}

const CONTROLLERS: [(&str, &str); 3] = [
    ("pids", "process limit (max_processes)"),
    ("memory", "memory limit"),
    ("cpu", "CPU limit"),
];

/// Control files (v2 names) and the values one limit writes.
type LimitFiles = Vec<(&'static str, String)>;

/// CFS period used for CPU limits, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// Where a scope's cgroups are made: under guard's parent cgroups (the
/// default), or under a caller's own cgroups (`--scopes-under caller`), so
/// a container's accounting and limits hold for the agent it launches and
/// its runtime can still remove it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScopeBase {
    /// The v2 directory the scope is made in.
    pub v2: PathBuf,
    /// Per v1 controller placement: the directory its scope cgroup is made
    /// in (absent: the caller is in no cgroup of that hierarchy).
    pub v1: Vec<(String, PathBuf)>,
    /// Made under a caller: the scope is not below guard's parent, so the
    /// programs must be attached to it on its own.
    pub caller: bool,
}

/// guard's parent cgroups for one guardd instance.
#[derive(Clone, Debug)]
pub struct ScopeRoot {
    pub layout: CgroupLayout,
    pub instance: String,
    pub v2_parent: PathBuf,
    pub placements: Vec<(&'static str, Placement)>,
}

impl ScopeRoot {
    /// Creates (or reuses) the parent cgroups of `instance` and finds where
    /// each controller can be used.
    pub fn init(layout: CgroupLayout, instance: &str) -> Result<ScopeRoot, ScopeError> {
        check_name(instance)?;
        let v2_parent = layout.v2.join(instance);
        fs::create_dir_all(&v2_parent).map_err(io("creating", &v2_parent))?;
        let available =
            fs::read_to_string(layout.v2.join("cgroup.controllers")).unwrap_or_default();
        let mut placements = Vec::new();
        for (name, _) in CONTROLLERS {
            let placement = if available.split_whitespace().any(|c| c == name) {
                // Delegate the controller down to the agents: root → parent.
                for dir in [layout.v2.clone(), v2_parent.clone()] {
                    let ctl = dir.join("cgroup.subtree_control");
                    fs::write(&ctl, format!("+{name}"))
                        .map_err(io("enabling controller in", &ctl))?;
                }
                Placement::V2
            } else if let Some(mount) = layout.v1_controller(name) {
                let dir = mount.join(instance);
                fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
                Placement::V1(mount.to_owned())
            } else {
                Placement::Unavailable
            };
            placements.push((name, placement));
        }
        Ok(ScopeRoot {
            layout,
            instance: instance.to_owned(),
            v2_parent,
            placements,
        })
    }

    /// cgroup level of the agent scopes (children of the parent).
    pub fn agent_level(&self) -> u32 {
        self.layout.level_of(&self.v2_parent) + 1
    }

    pub fn placement(&self, controller: &str) -> &Placement {
        self.placements
            .iter()
            .find(|(n, _)| *n == controller)
            .map(|(_, p)| p)
            .unwrap_or(&Placement::Unavailable)
    }

    /// Scopes under guard's parent cgroups.
    pub fn parent_base(&self) -> ScopeBase {
        ScopeBase {
            v2: self.v2_parent.clone(),
            v1: self
                .placements
                .iter()
                .filter_map(|(c, p)| match p {
                    Placement::V1(mount) => Some(((*c).to_owned(), mount.join(&self.instance))),
                    _ => None,
                })
                .collect(),
            caller: false,
        }
    }

    /// Scopes under the cgroups of a caller whose `/proc/<pid>/cgroup` reads
    /// `cgroups` (as guardd's cgroup namespace shows them).
    pub fn caller_base(&self, cgroups: &str) -> Result<ScopeBase, ScopeError> {
        if self.layout.v2_root_depth != 0 {
            return Err(ScopeError::Caller(
                "guardd's cgroup v2 mount shows only a sub-tree of the hierarchy, so a caller's                  cgroup cannot be found in it: give guardd the host's cgroup mount and namespace"
                    .to_owned(),
            ));
        }
        let under = |mount: &Path, path: &str| -> Result<PathBuf, ScopeError> {
            // A path outside guardd's cgroup namespace reads `/..`: guardd
            // cannot place anything there (it would run in the host's
            // namespace in a DaemonSet).
            if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
                return Err(ScopeError::Caller(format!(
                    "the caller's cgroup {path:?} is outside guardd's cgroup namespace: run guardd                      in the host's cgroup namespace"
                )));
            }
            let dir = mount.join(path.trim_start_matches('/'));
            if !dir.is_dir() {
                return Err(ScopeError::Caller(format!(
                    "the caller's cgroup {} is not a directory guardd can see",
                    dir.display()
                )));
            }
            Ok(dir)
        };
        let v2_path = cgroups
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or_else(|| ScopeError::Caller("the caller is in no cgroup v2".to_owned()))?;
        if v2_path.split('/').any(|c| c.starts_with("agent-")) {
            return Err(ScopeError::Caller(format!(
                "the caller's cgroup {v2_path} is an agent's scope"
            )));
        }
        let v2 = under(&self.layout.v2, v2_path)?;
        let mut v1 = Vec::new();
        for (c, p) in &self.placements {
            let Placement::V1(mount) = p else { continue };
            let path = cgroups.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
                list.split(',').any(|x| x == *c).then_some(path)
            });
            if let Some(path) = path {
                v1.push(((*c).to_owned(), under(mount, path)?));
            }
        }
        Ok(ScopeBase {
            v2,
            v1,
            caller: true,
        })
    }

    /// Creates the scope `name` with `limits`. With `allow_missing`, a limit
    /// whose controller is unavailable is skipped and reported in
    /// `Scope::skipped`; otherwise it is an error and nothing is left behind.
    pub fn create(
        &self,
        name: &str,
        limits: &Limits,
        allow_missing: bool,
    ) -> Result<Scope, ScopeError> {
        self.create_in(&self.parent_base(), name, limits, allow_missing)
    }

    /// [`ScopeRoot::create`] in `base`.
    pub fn create_in(
        &self,
        base: &ScopeBase,
        name: &str,
        limits: &Limits,
        allow_missing: bool,
    ) -> Result<Scope, ScopeError> {
        check_name(name)?;
        let v2 = base.v2.join(name);
        fs::create_dir(&v2).map_err(io("creating", &v2))?;
        let cgroup_id = fs::metadata(&v2).map_err(io("reading", &v2))?.ino();
        let mut scope = Scope {
            name: name.to_owned(),
            v2,
            cgroup_id,
            v1: Vec::new(),
            skipped: Vec::new(),
            base: base.clone(),
        };
        if let Err(e) = self.apply_limits(&mut scope, limits, allow_missing) {
            let _ = scope.remove();
            return Err(e);
        }
        Ok(scope)
    }

    fn apply_limits(
        &self,
        scope: &mut Scope,
        limits: &Limits,
        allow_missing: bool,
    ) -> Result<(), ScopeError> {
        let wanted: [(&'static str, &'static str, Option<LimitFiles>); 3] = [
            (
                "pids",
                CONTROLLERS[0].1,
                limits.pids.map(|n| vec![("pids.max", n.to_string())]),
            ),
            (
                "memory",
                CONTROLLERS[1].1,
                limits.memory_bytes.map(|b| {
                    vec![
                        ("memory.max", b.to_string()),
                        ("memory.swap.max", "0".to_owned()),
                    ]
                }),
            ),
            (
                "cpu",
                CONTROLLERS[2].1,
                limits.cpu_millicores.map(|m| {
                    let quota = (u64::from(m) * CPU_PERIOD_US / 1000).max(1000);
                    vec![("cpu.max", format!("{quota} {CPU_PERIOD_US}"))]
                }),
            ),
        ];
        for (controller, what, files) in wanted {
            let observed_only = files.is_none() && limits.observe_peaks && controller != "cpu";
            let files = match files {
                Some(f) => f,
                None if observed_only => Vec::new(),
                None => continue,
            };
            // Under a caller, a v2 controller is usable only if the caller's
            // cgroup passes it down (a container's cgroup holds processes,
            // so on pure cgroup v2 it usually cannot), and a v1 one only if
            // the caller is in that hierarchy.
            let v2_delegated = !scope.base.caller
                || fs::read_to_string(scope.base.v2.join("cgroup.subtree_control"))
                    .is_ok_and(|s| s.split_whitespace().any(|c| c == controller));
            let v1_dir = scope
                .base
                .v1
                .iter()
                .find(|(c, _)| c == controller)
                .map(|(_, d)| d.clone());
            let placement = match self.placement(controller) {
                Placement::V2 if !v2_delegated => &Placement::Unavailable,
                Placement::V1(_) if v1_dir.is_none() => &Placement::Unavailable,
                p => p,
            };
            match placement {
                Placement::V2 => {
                    for (file, value) in files {
                        write_optional(&scope.v2.join(file), &value, file == "memory.swap.max")?;
                    }
                }
                Placement::V1(_) => {
                    let Some(base) = &v1_dir else { continue };
                    let dir = base.join(&scope.name);
                    fs::create_dir(&dir).map_err(io("creating", &dir))?;
                    scope.v1.push((controller, dir.clone()));
                    for (file, value) in v1_files(controller, files) {
                        let optional = file.starts_with("memory.memsw");
                        write_optional(&dir.join(&file), &value, optional)?;
                    }
                }
                Placement::Unavailable if observed_only => {}
                Placement::Unavailable => {
                    if allow_missing {
                        scope.skipped.push(controller);
                    } else {
                        return Err(ScopeError::ControllerUnavailable { controller, what });
                    }
                }
            }
        }
        Ok(())
    }

    /// Names of the scopes that exist under the parent (for re-adoption and
    /// clean-up).
    pub fn existing(&self) -> Vec<String> {
        fs::read_dir(&self.v2_parent)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes the parent cgroups if no scope is left in them.
    pub fn remove_if_empty(&self) {
        let _ = fs::remove_dir(&self.v2_parent);
        for (_, p) in &self.placements {
            if let Placement::V1(mount) = p {
                let _ = fs::remove_dir(mount.join(&self.instance));
            }
        }
    }

    /// Reopens an existing scope (after a daemon restart).
    pub fn open(&self, name: &str) -> Result<Scope, ScopeError> {
        self.open_in(&self.parent_base(), name)
    }

    /// [`ScopeRoot::open`] in `base`.
    pub fn open_in(&self, base: &ScopeBase, name: &str) -> Result<Scope, ScopeError> {
        check_name(name)?;
        let v2 = base.v2.join(name);
        let cgroup_id = fs::metadata(&v2).map_err(io("reading", &v2))?.ino();
        let v1 = self
            .placements
            .iter()
            .filter_map(|(c, _)| {
                let (_, dir) = base.v1.iter().find(|(n, _)| n == c)?;
                let dir = dir.join(name);
                dir.is_dir().then_some((*c, dir))
            })
            .collect();
        Ok(Scope {
            name: name.to_owned(),
            v2,
            cgroup_id,
            v1,
            skipped: Vec::new(),
            base: base.clone(),
        })
    }
}

/// v2 limit files translated to their v1 names.
fn v1_files(controller: &str, files: LimitFiles) -> Vec<(String, String)> {
    match controller {
        "memory" => {
            let max = files
                .iter()
                .find(|(f, _)| *f == "memory.max")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            vec![
                ("memory.limit_in_bytes".into(), max.clone()),
                ("memory.memsw.limit_in_bytes".into(), max),
            ]
        }
        "cpu" => files
            .iter()
            .filter_map(|(_, v)| v.split_once(' '))
            .flat_map(|(quota, period)| {
                [
                    ("cpu.cfs_period_us".to_owned(), period.to_owned()),
                    ("cpu.cfs_quota_us".to_owned(), quota.to_owned()),
                ]
            })
            .collect(),
        _ => files.into_iter().map(|(f, v)| (f.to_owned(), v)).collect(),
    }
}

/// Writes a control file; `optional` files may be absent (swap accounting
/// disabled) without failing the scope.
fn write_optional(path: &Path, value: &str, optional: bool) -> Result<(), ScopeError> {
    match fs::write(path, value) {
        Ok(()) => Ok(()),
        Err(e) if optional && e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ScopeError::Io {
            op: "writing",
            path: path.to_owned(),
            source: e,
        }),
    }
}

pub(crate) fn check_name(name: &str) -> Result<(), ScopeError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ScopeError::BadName(name.to_owned()))
    }
}

/// One agent's cgroup(s).
#[derive(Clone, Debug)]
pub struct Scope {
    pub name: String,
    pub v2: PathBuf,
    pub cgroup_id: u64,
    /// v1 cgroups holding limits on hybrid hosts.
    pub v1: Vec<(&'static str, PathBuf)>,
    /// Controllers whose limits were skipped (accepted degradation).
    pub skipped: Vec<&'static str>,
    /// Where it was made.
    pub base: ScopeBase,
}

impl Scope {
    /// The scope's peaks, read from where its controllers live. Read
    /// before the scope is removed.
    pub fn peaks(&self) -> Peaks {
        let dir = |controller: &str| {
            self.v1
                .iter()
                .find(|(c, _)| *c == controller)
                .map_or_else(|| (self.v2.clone(), false), |(_, d)| (d.clone(), true))
        };
        let number = |p: PathBuf| {
            fs::read_to_string(p)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        let (pids, _) = dir("pids");
        let (memory, v1) = dir("memory");
        Peaks {
            processes: number(pids.join("pids.peak")),
            memory_bytes: number(memory.join(if v1 {
                "memory.max_usage_in_bytes"
            } else {
                "memory.peak"
            })),
        }
    }

    /// A descriptor of the v2 cgroup for `clone3(CLONE_INTO_CGROUP)`.
    /// It must still be the cgroup the scope was made as (same inode, the
    /// id the programs know): a directory removed and made again under
    /// the same name (by whoever may write the caller's cgroup) is not it.
    pub fn open_dir(&self) -> Result<OwnedFd, ScopeError> {
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&self.v2)
            .map_err(io("opening", &self.v2))?;
        let ino = f.metadata().map_err(io("reading", &self.v2))?.ino();
        if ino != self.cgroup_id {
            return Err(ScopeError::Caller(format!(
                "{} is no longer the scope's cgroup (it was replaced after it was made)",
                self.v2.display()
            )));
        }
        Ok(f.into())
    }

    /// Write descriptors of the v1 `cgroup.procs` files: the launcher writes
    /// "0" to each before exec. Writes are checked against the opener's
    /// credentials, so guardd can hand these to an unprivileged launcher.
    pub fn v1_procs(&self) -> Result<Vec<OwnedFd>, ScopeError> {
        self.v1
            .iter()
            .map(|(_, dir)| {
                let p = dir.join("cgroup.procs");
                fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&p)
                    .map(OwnedFd::from)
                    .map_err(io("opening", &p))
            })
            .collect()
    }

    /// Every process in the scope, nested cgroups included.
    pub fn pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        collect_pids(&self.v2, &mut out);
        out
    }

    pub fn populated(&self) -> bool {
        fs::read_to_string(self.v2.join("cgroup.events"))
            .map(|s| s.lines().any(|l| l == "populated 1"))
            .unwrap_or(false)
    }

    /// Freezes (`true`) or thaws every process of the scope at once, and
    /// waits until the kernel reports the state reached.
    pub fn set_frozen(&self, frozen: bool) -> Result<(), ScopeError> {
        let f = self.v2.join("cgroup.freeze");
        fs::write(&f, if frozen { "1" } else { "0" }).map_err(io("writing", &f))?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let ev = fs::read_to_string(self.v2.join("cgroup.events")).unwrap_or_default();
            if ev.lines().any(|l| l == want) || !self.populated() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Err(ScopeError::StillPopulated {
            path: self.v2.clone(),
            waited: Duration::from_secs(5),
        })
    }

    pub fn frozen(&self) -> bool {
        fs::read_to_string(self.v2.join("cgroup.events"))
            .map(|s| s.lines().any(|l| l == "frozen 1"))
            .unwrap_or(false)
    }

    /// Kills every process of the scope and waits until it is empty.
    pub fn kill_all(&self, wait: Duration) -> Result<(), ScopeError> {
        let kill = self.v2.join("cgroup.kill");
        if fs::write(&kill, "1").is_err() {
            // Kernels before 5.14 have no cgroup.kill: freeze so nothing can
            // fork while the list is walked, kill each, then thaw.
            let _ = self.set_frozen(true);
            for pid in self.pids() {
                // SAFETY: kill(2) with a pid read from the scope's cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = self.set_frozen(false);
        }
        let deadline = Instant::now() + wait;
        while self.populated() {
            if Instant::now() >= deadline {
                return Err(ScopeError::StillPopulated {
                    path: self.v2.clone(),
                    waited: wait,
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    /// Removes the scope's cgroups (nested ones first). The scope must be
    /// empty.
    pub fn remove(&self) -> Result<(), ScopeError> {
        remove_tree(&self.v2)?;
        for (_, dir) in &self.v1 {
            remove_tree(dir)?;
        }
        Ok(())
    }
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(s) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(d) = fs::read_dir(dir) {
        for e in d.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_pids(&e.path(), out);
            }
        }
    }
}

/// rmdir of a cgroup and every cgroup below it, deepest first. A cgroup that
/// is already gone counts as removed.
fn remove_tree(dir: &Path) -> Result<(), ScopeError> {
    if let Ok(d) = fs::read_dir(dir) {
        for e in d.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path())?;
            }
        }
    }
    // A cgroup whose last process just exited can stay busy for a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(500));
            }
            Err(e) => {
                return Err(ScopeError::Io {
                    op: "removing",
                    path: dir.to_owned(),
                    source: e,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("ag-1.x_y").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn v1_translation() {
        let mem = v1_files(
            "memory",
            vec![
                ("memory.max", "1048576".into()),
                ("memory.swap.max", "0".into()),
            ],
        );
        assert_eq!(mem[0], ("memory.limit_in_bytes".into(), "1048576".into()));
        let cpu = v1_files("cpu", vec![("cpu.max", "50000 100000".into())]);
        assert_eq!(
            cpu,
            vec![
                ("cpu.cfs_period_us".into(), "100000".into()),
                ("cpu.cfs_quota_us".into(), "50000".into())
            ]
        );
        let pids = v1_files("pids", vec![("pids.max", "5".into())]);
        assert_eq!(pids, vec![("pids.max".into(), "5".into())]);
    }

    /// Tempdir stand-ins for the cgroup file systems. A plain directory
    /// accepts any file, so these tests see exactly which control files
    /// scope.rs writes and with what values; what the kernel then does with
    /// them is covered by the privileged tests (tests/confine.rs).
    mod tempdir {
        use super::*;

        const LIMITS: Limits = Limits {
            pids: Some(64),
            memory_bytes: Some(1 << 20),
            cpu_millicores: Some(250),
            observe_peaks: false,
        };

        fn read(path: &Path) -> String {
            fs::read_to_string(path).unwrap()
        }

        /// A root whose v2 parent and v1 instance directories exist, with
        /// each controller placed as given.
        fn root(dir: &Path, pids: Placement, memory: Placement, cpu: Placement) -> ScopeRoot {
            let v2 = dir.join("v2");
            let v2_parent = v2.join("inst");
            fs::create_dir_all(&v2_parent).unwrap();
            for p in [&pids, &memory, &cpu] {
                if let Placement::V1(mount) = p {
                    fs::create_dir_all(mount.join("inst")).unwrap();
                }
            }
            ScopeRoot {
                layout: CgroupLayout {
                    v2,
                    v2_root_depth: 0,
                    v1: Vec::new(),
                },
                instance: "inst".into(),
                v2_parent,
                placements: vec![("pids", pids), ("memory", memory), ("cpu", cpu)],
            }
        }

        #[test]
        fn init_places_each_controller_and_creates_the_parents() {
            let dir = tempfile::tempdir().unwrap();
            let v2 = dir.path().join("v2");
            let cpu_mount = dir.path().join("v1-cpu");
            fs::create_dir_all(&v2).unwrap();
            fs::create_dir_all(&cpu_mount).unwrap();
            fs::write(v2.join("cgroup.controllers"), "cpuset pids memory io\n").unwrap();
            let layout = CgroupLayout {
                v2: v2.clone(),
                v2_root_depth: 0,
                v1: vec![("cpu".into(), cpu_mount.clone())],
            };
            let root = ScopeRoot::init(layout.clone(), "inst").unwrap();
            assert_eq!(root.v2_parent, v2.join("inst"));
            assert!(root.v2_parent.is_dir());
            assert_eq!(root.placement("pids"), &Placement::V2);
            assert_eq!(root.placement("memory"), &Placement::V2);
            assert_eq!(root.placement("cpu"), &Placement::V1(cpu_mount.clone()));
            assert_eq!(root.placement("rdma"), &Placement::Unavailable);
            assert!(cpu_mount.join("inst").is_dir());
            // Controllers are delegated at the root and at the parent.
            assert!(v2.join("cgroup.subtree_control").is_file());
            assert!(v2.join("inst/cgroup.subtree_control").is_file());
            assert_eq!(root.agent_level(), 2);

            // No v2 controllers and no v1 hierarchy: nothing is placed.
            let bare = dir.path().join("bare");
            fs::create_dir_all(&bare).unwrap();
            let root = ScopeRoot::init(
                CgroupLayout {
                    v2: bare.clone(),
                    v2_root_depth: 0,
                    v1: Vec::new(),
                },
                "inst",
            )
            .unwrap();
            for c in ["pids", "memory", "cpu"] {
                assert_eq!(root.placement(c), &Placement::Unavailable, "{c}");
            }
            assert!(!bare.join("cgroup.subtree_control").exists());

            assert!(matches!(
                ScopeRoot::init(layout, "../escape"),
                Err(ScopeError::BadName(_))
            ));
            assert!(!dir.path().join("escape").exists());
        }

        #[test]
        fn v2_limit_files_are_written() {
            let dir = tempfile::tempdir().unwrap();
            let root = root(dir.path(), Placement::V2, Placement::V2, Placement::V2);
            let scope = root.create("a1", &LIMITS, false).unwrap();
            assert_eq!(scope.v2, root.v2_parent.join("a1"));
            assert_eq!(scope.cgroup_id, fs::metadata(&scope.v2).unwrap().ino());
            assert!(scope.v1.is_empty() && scope.skipped.is_empty());
            assert_eq!(read(&scope.v2.join("pids.max")), "64");
            assert_eq!(read(&scope.v2.join("memory.max")), "1048576");
            assert_eq!(read(&scope.v2.join("memory.swap.max")), "0");
            // 250 millicores: a quarter of each 100 ms period.
            assert_eq!(read(&scope.v2.join("cpu.max")), "25000 100000");
            let mut names: Vec<String> = fs::read_dir(&scope.v2)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert_eq!(
                names,
                ["cpu.max", "memory.max", "memory.swap.max", "pids.max"]
            );
        }

        #[test]
        fn unset_limits_write_nothing_and_tiny_cpu_is_raised() {
            let dir = tempfile::tempdir().unwrap();
            let root = root(dir.path(), Placement::V2, Placement::V2, Placement::V2);
            let none = root.create("none", &Limits::default(), false).unwrap();
            assert_eq!(fs::read_dir(&none.v2).unwrap().count(), 0);
            let tiny = Limits {
                cpu_millicores: Some(1),
                ..Limits::default()
            };
            let s = root.create("tiny", &tiny, false).unwrap();
            // The kernel refuses quotas below 1 ms.
            assert_eq!(read(&s.v2.join("cpu.max")), "1000 100000");
            assert!(!s.v2.join("pids.max").exists());
        }

        #[test]
        fn v1_limit_files_use_v1_names_in_the_controllers_hierarchy() {
            let dir = tempfile::tempdir().unwrap();
            let (mem, cpu) = (dir.path().join("v1-memory"), dir.path().join("v1-cpu"));
            let root = root(
                dir.path(),
                Placement::V2,
                Placement::V1(mem.clone()),
                Placement::V1(cpu.clone()),
            );
            let scope = root.create("a1", &LIMITS, false).unwrap();
            let (mem_dir, cpu_dir) = (mem.join("inst/a1"), cpu.join("inst/a1"));
            assert_eq!(
                scope.v1,
                vec![("memory", mem_dir.clone()), ("cpu", cpu_dir.clone())]
            );
            assert_eq!(read(&scope.v2.join("pids.max")), "64");
            assert!(!scope.v2.join("memory.max").exists());
            assert!(!scope.v2.join("cpu.max").exists());
            assert_eq!(read(&mem_dir.join("memory.limit_in_bytes")), "1048576");
            assert_eq!(
                read(&mem_dir.join("memory.memsw.limit_in_bytes")),
                "1048576"
            );
            assert_eq!(read(&cpu_dir.join("cpu.cfs_period_us")), "100000");
            assert_eq!(read(&cpu_dir.join("cpu.cfs_quota_us")), "25000");

            // Reopening after a restart finds the same cgroups.
            let again = root.open("a1").unwrap();
            assert_eq!(again.v2, scope.v2);
            assert_eq!(again.cgroup_id, scope.cgroup_id);
            assert_eq!(again.v1, scope.v1);
            assert!(matches!(
                root.open("gone"),
                Err(ScopeError::Io { op: "reading", .. })
            ));
        }

        #[test]
        fn a_limit_without_its_controller_fails_and_leaves_nothing_unless_accepted() {
            let dir = tempfile::tempdir().unwrap();
            let root = root(
                dir.path(),
                Placement::Unavailable,
                Placement::V2,
                Placement::V2,
            );
            let err = root.create("a1", &LIMITS, false).unwrap_err();
            assert!(
                matches!(
                    err,
                    ScopeError::ControllerUnavailable {
                        controller: "pids",
                        ..
                    }
                ),
                "{err}"
            );
            assert!(!root.v2_parent.join("a1").exists());
            assert!(root.existing().is_empty());

            let scope = root.create("a1", &LIMITS, true).unwrap();
            assert_eq!(scope.skipped, vec!["pids"]);
            assert!(!scope.v2.join("pids.max").exists());
            assert_eq!(read(&scope.v2.join("memory.max")), "1048576");

            // A limit not asked for needs no controller.
            let no_pids = Limits {
                pids: None,
                ..LIMITS
            };
            let s = root.create("a2", &no_pids, false).unwrap();
            assert!(s.skipped.is_empty());
        }

        #[test]
        fn a_failed_v1_limit_removes_the_half_made_scope() {
            let dir = tempfile::tempdir().unwrap();
            let mount = dir.path().join("v1-cpu");
            let root = root(
                dir.path(),
                Placement::V2,
                Placement::V2,
                Placement::V1(mount.clone()),
            );
            // The instance directory of the v1 hierarchy vanished.
            fs::remove_dir(mount.join("inst")).unwrap();
            let cpu_only = Limits {
                cpu_millicores: Some(500),
                ..Limits::default()
            };
            let err = root.create("a1", &cpu_only, false).unwrap_err();
            assert!(
                matches!(&err, ScopeError::Io { op: "creating", path, .. } if *path == mount.join("inst/a1")),
                "{err}"
            );
            assert!(!root.v2_parent.join("a1").exists());
        }

        #[test]
        fn names_and_duplicates_are_refused_without_touching_anything() {
            let dir = tempfile::tempdir().unwrap();
            let root = root(dir.path(), Placement::V2, Placement::V2, Placement::V2);
            for bad in ["..", "a/b", ""] {
                assert!(matches!(
                    root.create(bad, &LIMITS, false),
                    Err(ScopeError::BadName(_))
                ));
            }
            assert!(root.existing().is_empty());
            let first = root.create("a1", &LIMITS, false).unwrap();
            assert!(matches!(
                root.create("a1", &Limits::default(), false),
                Err(ScopeError::Io { op: "creating", .. })
            ));
            // The existing scope keeps its limits.
            assert_eq!(read(&first.v2.join("pids.max")), "64");
        }

        #[test]
        fn remove_takes_nested_cgroups_deepest_first_and_tolerates_gone_ones() {
            let dir = tempfile::tempdir().unwrap();
            let mount = dir.path().join("v1-cpu");
            let root = root(
                dir.path(),
                Placement::V2,
                Placement::V2,
                Placement::V1(mount.clone()),
            );
            let scope = root.create("a1", &Limits::default(), false).unwrap();
            let v1 = mount.join("inst/a1");
            fs::create_dir(&v1).unwrap();
            let scope = Scope {
                v1: vec![("cpu", v1.clone())],
                ..scope
            };
            // Cgroups the agent made below its own.
            fs::create_dir_all(scope.v2.join("x/y/z")).unwrap();
            fs::create_dir_all(scope.v2.join("w")).unwrap();
            fs::create_dir_all(v1.join("n")).unwrap();
            assert_eq!(root.existing(), vec!["a1".to_owned()]);
            scope.remove().unwrap();
            assert!(!scope.v2.exists());
            assert!(!v1.exists());
            assert!(root.existing().is_empty());
            // Already gone counts as removed.
            scope.remove().unwrap();

            root.remove_if_empty();
            assert!(!root.v2_parent.exists());
            assert!(!mount.join("inst").exists());
        }

        #[test]
        fn remove_reports_what_it_cannot_remove_at_once() {
            let dir = tempfile::tempdir().unwrap();
            let root = root(dir.path(), Placement::V2, Placement::V2, Placement::V2);
            // Limit files are plain files here, so the directory is not
            // empty: the stand-in for a cgroup that cannot go.
            let scope = root.create("a1", &LIMITS, false).unwrap();
            fs::create_dir(scope.v2.join("child")).unwrap();
            let start = Instant::now();
            let err = scope.remove().unwrap_err();
            assert!(
                matches!(&err, ScopeError::Io { op: "removing", path, source }
                    if *path == scope.v2
                        && source.raw_os_error() == Some(libc::ENOTEMPTY)),
                "{err}"
            );
            // Only EBUSY is waited out; anything else is reported at once.
            assert!(start.elapsed() < Duration::from_secs(1));
            // The nested cgroup was removed before the failure.
            assert!(!scope.v2.join("child").exists());
            // The parent stays while a scope is in it.
            root.remove_if_empty();
            assert!(root.v2_parent.is_dir());
            assert_eq!(root.existing(), vec!["a1".to_owned()]);
        }
    }
}
