//! Programs attached per scope, for agent scopes that live outside guard's
//! parent cgroup (issue 13: an agent started from inside a container gets its
//! scope under that container's own cgroup).
//!
//! Such a scope does not inherit the programs attached to the parent
//! (inheritance only flows down the cgroup tree), so every cgroup program is
//! attached to it as well, through `bpf_link`s, which the kernel always
//! attaches with `BPF_F_ALLOW_MULTI`: the programs the container runtime or
//! a CNI attached to the scope's ancestors with `BPF_F_ALLOW_MULTI` keep
//! running beside guard's. The links are pinned under
//! `<pin_dir>/links/scopes/<key>/<name>-<generation>`, so they outlive
//! guardd like the parent's.
//!
//! Such a scope also sits at another cgroup level than `agent_level`: the
//! level is recorded in `Config::scope_levels`, which the programs search
//! when the lookup at `agent_level` finds no agent.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya_obj::generated::bpf_attach_type;
use guard_common::MAX_SCOPE_LEVELS;

use super::{Kernel, KernelError, map_err, pin_err, sys};

/// The main object's cgroup programs and their attach types: everything
/// `Kernel::load` attaches to the parent cgroup except the raw tracepoints
/// (which run host-wide). The Unix hooks, when they loaded, come on top.
pub(super) const CGROUP_PROGRAMS: [(&str, bpf_attach_type); 12] = [
    ("guard_connect4", bpf_attach_type::BPF_CGROUP_INET4_CONNECT),
    ("guard_connect6", bpf_attach_type::BPF_CGROUP_INET6_CONNECT),
    ("guard_sendmsg4", bpf_attach_type::BPF_CGROUP_UDP4_SENDMSG),
    ("guard_sendmsg6", bpf_attach_type::BPF_CGROUP_UDP6_SENDMSG),
    ("guard_recvmsg4", bpf_attach_type::BPF_CGROUP_UDP4_RECVMSG),
    ("guard_recvmsg6", bpf_attach_type::BPF_CGROUP_UDP6_RECVMSG),
    ("guard_bind4", bpf_attach_type::BPF_CGROUP_INET4_BIND),
    ("guard_bind6", bpf_attach_type::BPF_CGROUP_INET6_BIND),
    ("guard_ingress", bpf_attach_type::BPF_CGROUP_INET_INGRESS),
    ("guard_egress", bpf_attach_type::BPF_CGROUP_INET_EGRESS),
    (
        "guard_sock_create",
        bpf_attach_type::BPF_CGROUP_INET_SOCK_CREATE,
    ),
    ("guard_setsockopt", bpf_attach_type::BPF_CGROUP_SETSOCKOPT),
];

/// The links of one scope that this guardd attached.
#[derive(Debug)]
struct ScopeLinks {
    cgroup: PathBuf,
    level: u32,
    /// Pins of this generation's links.
    links: Vec<PathBuf>,
}

/// Which scopes this guardd attached programs to, and how many live at each
/// cgroup level (for `Config::scope_levels`).
#[derive(Debug, Default)]
pub(super) struct ScopeTable {
    scopes: HashMap<String, ScopeLinks>,
    counts: BTreeMap<u32, u32>,
    /// Levels a previous guardd had in the mask: kept until the scopes are
    /// re-adopted ([`Kernel::settle_scope_levels`]), so the scopes it
    /// attached keep finding their agents meanwhile.
    inherited: u64,
}

/// The mask bit of a cgroup level (none for levels the mask cannot hold).
pub(super) fn level_bit(level: u32) -> u64 {
    1u64.checked_shl(level).unwrap_or(0)
}

impl ScopeTable {
    pub(super) fn new(inherited: u64) -> ScopeTable {
        ScopeTable {
            inherited,
            ..ScopeTable::default()
        }
    }

    /// `Config::scope_levels`: the parent's scopes' level, the levels of the
    /// scopes attached here, and those inherited from a previous guardd.
    fn mask(&self, agent_level: u32) -> u64 {
        self.counts
            .keys()
            .fold(level_bit(agent_level) | self.inherited, |m, l| {
                m | level_bit(*l)
            })
    }

    /// Counts one more scope at `level`.
    fn add(&mut self, level: u32) {
        *self.counts.entry(level).or_insert(0) += 1;
    }

    /// Counts one scope fewer at `level`; the level leaves the mask with
    /// its last scope.
    fn remove(&mut self, level: u32) {
        if let Some(n) = self.counts.get_mut(&level) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.counts.remove(&level);
            }
        }
    }

    /// Pins of the scopes' links that are gone, as `scopes/<key>/<pin>`.
    pub(super) fn missing_links(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .scopes
            .iter()
            .flat_map(|(key, s)| {
                s.links.iter().filter(|p| !p.exists()).map(move |p| {
                    let pin = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    format!("scopes/{key}/{pin}")
                })
            })
            .collect();
        out.sort();
        out
    }
}

/// A scope key names a directory under `links/scopes`: a plain file name,
/// as agent ids are.
pub(super) fn check_key(key: &str) -> Result<(), KernelError> {
    let ok = !key.is_empty()
        && key.len() <= 64
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(KernelError::ScopeKey(key.to_owned()))
    }
}

/// The cgroup level of a scope directory (already canonical), refusing what
/// cannot be a scope outside the parent: a path outside the v2 mount, the
/// parent itself, a cgroup under it (it inherits the programs already: a
/// second set would judge every call twice), one of its ancestors (the
/// programs would then judge tasks guard does not manage), and a level the
/// programs do not search.
pub(super) fn scope_level(
    layout: &crate::host::CgroupLayout,
    parent: &Path,
    cgroup: &Path,
) -> Result<u32, KernelError> {
    let bad = |reason: String| KernelError::ScopeCgroup {
        path: cgroup.to_owned(),
        reason,
    };
    if cgroup.strip_prefix(&layout.v2).is_err() {
        return Err(bad(format!(
            "not under the cgroup v2 mount {}",
            layout.v2.display()
        )));
    }
    if cgroup.starts_with(parent) {
        return Err(bad(format!(
            "under guard's parent cgroup {}, whose programs it inherits",
            parent.display()
        )));
    }
    if parent.starts_with(cgroup) {
        return Err(bad(format!(
            "an ancestor of guard's parent cgroup {}",
            parent.display()
        )));
    }
    let level = layout.level_of(cgroup);
    if level >= MAX_SCOPE_LEVELS {
        return Err(bad(format!(
            "at cgroup level {level}; the programs search scopes up to level {}",
            MAX_SCOPE_LEVELS - 1
        )));
    }
    Ok(level)
}

/// Keys of the scopes whose links are pinned under `pin_dir` (by this guardd
/// or an earlier one), sorted. Their confinement hangs on those pins: a
/// failed start-up must not remove them.
pub fn pinned_scopes(pin_dir: &Path) -> Vec<String> {
    let dir = pin_dir.join("links").join("scopes");
    let mut keys: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    fs::read_dir(e.path())
                        .map(|mut d| d.next().is_some())
                        .unwrap_or(false)
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    keys
}

/// Program ids in `before` that are not in `after`.
fn stopped(before: &[u32], after: &[u32]) -> Vec<u32> {
    let after: HashSet<u32> = after.iter().copied().collect();
    before
        .iter()
        .copied()
        .filter(|id| !after.contains(id))
        .collect()
}

/// What to say after the kernel refused a scope attach.
fn attach_hint(e: &std::io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::EPERM) {
        " (an ancestor cgroup has a program of this type attached without \
         BPF_F_ALLOW_MULTI, which allows no program below it)"
    } else {
        ""
    }
}

impl Kernel {
    /// Attaches every cgroup program guardd attaches to its parent to the
    /// scope cgroup `cgroup` (a directory outside the parent), pins the
    /// links under `<pin_dir>/links/scopes/<key>/`, and adds the scope's
    /// level (from [`crate::host::CgroupLayout::level_of`]) to
    /// `Config::scope_levels`.
    ///
    /// Refused, with nothing left attached: a program the kernel will not
    /// attach there (an ancestor attached one of that type exclusively), or
    /// one whose attachment would stop a program an ancestor attached with
    /// `BPF_F_ALLOW_OVERRIDE` from running in the scope.
    ///
    /// Called again for a key whose pins a previous guardd left (re-adoption),
    /// it attaches this generation's programs before unpinning the older
    /// links, so the scope is never without programs. Called again for a key
    /// this guardd attached, with the same cgroup, it re-attaches only links
    /// whose pins vanished.
    pub fn attach_scope(&mut self, cgroup: &Path, key: &str) -> Result<(), KernelError> {
        check_key(key)?;
        let canon = fs::canonicalize(cgroup).map_err(|source| KernelError::Cgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        let level = scope_level(&self.layout, &self.parent_cgroup, &canon)?;
        let dir = self.pin_dir.join("links").join("scopes").join(key);
        if let Some(known) = self.scopes.scopes.get(key) {
            if known.cgroup != canon {
                return Err(KernelError::ScopeInUse {
                    key: key.to_owned(),
                    cgroup: known.cgroup.clone(),
                });
            }
            return self.repair_scope(&canon, key);
        }
        fs::create_dir_all(&dir).map_err(pin_err(&dir))?;
        let old: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(pin_err(&dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();

        // The level goes into the mask before any program runs in the scope,
        // so its tasks find their agent from the first call.
        self.scopes.add(level);
        if let Err(e) = self.write_scope_levels() {
            self.scopes.remove(level);
            return Err(e);
        }
        let links = match self.attach_programs(&canon, &dir, None) {
            Ok(links) => links,
            Err(e) => {
                self.scopes.remove(level);
                // The mask keeps the level if this fails; a spare level costs
                // a lookup, never a wrong agent.
                let _ = self.write_scope_levels();
                // Gone unless a previous generation's links are in it.
                let _ = fs::remove_dir(&dir);
                return Err(e);
            }
        };
        // The new links hold the scope now: a previous generation's go.
        for path in old {
            if !links.contains(&path) {
                let _ = fs::remove_file(&path);
            }
        }
        self.scopes.scopes.insert(
            key.to_owned(),
            ScopeLinks {
                cgroup: canon,
                level,
                links,
            },
        );
        Ok(())
    }

    /// Re-attaches the links of a scope attached by this guardd whose pins
    /// are gone (their programs were detached with them).
    fn repair_scope(&mut self, cgroup: &Path, key: &str) -> Result<(), KernelError> {
        let Some(known) = self.scopes.scopes.get(key) else {
            return Ok(());
        };
        let missing: HashSet<String> = known
            .links
            .iter()
            .filter(|p| !p.exists())
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let dir = self.pin_dir.join("links").join("scopes").join(key);
        fs::create_dir_all(&dir).map_err(pin_err(&dir))?;
        self.attach_programs(cgroup, &dir, Some(&missing))?;
        Ok(())
    }

    /// Attaches the cgroup programs (only those whose pin names are in
    /// `only`, when given) to `cgroup` and pins their links in `dir`.
    /// Returns the pins of every program, new or not; on error, the links
    /// made here are gone again.
    fn attach_programs(
        &self,
        cgroup: &Path,
        dir: &Path,
        only: Option<&HashSet<String>>,
    ) -> Result<Vec<PathBuf>, KernelError> {
        let cgroup_fd = fs::File::open(cgroup).map_err(|source| KernelError::Cgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        let mut all = Vec::new();
        let mut made: Vec<PathBuf> = Vec::new();
        let result = (|| {
            for (name, attach_type) in self.cgroup_programs() {
                let pin = format!("{name}-{}", self.generation);
                let path = dir.join(&pin);
                all.push(path.clone());
                if only.is_some_and(|o| !o.contains(&pin)) {
                    continue;
                }
                let prog = self.program_fd(name)?;
                let attach_err = |source| KernelError::ScopeAttach {
                    name,
                    cgroup: cgroup.to_owned(),
                    hint: "",
                    source,
                };
                let before =
                    sys::prog_query(cgroup_fd.as_fd(), attach_type, true).map_err(attach_err)?;
                let link =
                    sys::link_create(prog, cgroup_fd.as_fd(), attach_type).map_err(|source| {
                        KernelError::ScopeAttach {
                            name,
                            cgroup: cgroup.to_owned(),
                            hint: attach_hint(&source),
                            source,
                        }
                    })?;
                // The kernel runs an ancestor's programs below a cgroup with
                // programs of its own only if they were attached with
                // BPF_F_ALLOW_MULTI: guard would silently switch off what
                // was attached with BPF_F_ALLOW_OVERRIDE.
                let after =
                    sys::prog_query(cgroup_fd.as_fd(), attach_type, true).map_err(attach_err)?;
                let gone = stopped(&before, &after);
                if !gone.is_empty() {
                    return Err(KernelError::ScopeOverride {
                        name,
                        cgroup: cgroup.to_owned(),
                        ids: gone,
                    });
                }
                sys::obj_pin(link.as_fd(), &path).map_err(pin_err(&path))?;
                made.push(path);
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(all),
            Err(e) => {
                for path in &made {
                    let _ = fs::remove_file(path);
                }
                Err(e)
            }
        }
    }

    /// Name and attach type of every cgroup program this guardd loaded.
    fn cgroup_programs(&self) -> Vec<(&'static str, u32)> {
        CGROUP_PROGRAMS
            .iter()
            .map(|(n, t)| (*n, *t as u32))
            .chain(self.unix_progs.iter().map(|(n, t, _)| (*n, *t)))
            .collect()
    }

    fn program_fd(&self, name: &'static str) -> Result<std::os::fd::BorrowedFd<'_>, KernelError> {
        if let Some((_, _, fd)) = self.unix_progs.iter().find(|(n, _, _)| *n == name) {
            return Ok(fd.as_fd());
        }
        let program = self
            .ebpf
            .program(name)
            .ok_or(KernelError::Missing("program"))?;
        let fd = program
            .fd()
            .map_err(|source| KernelError::Program { name, source })?;
        Ok(fd.as_fd())
    }

    /// Unpins the links of scope `key` and removes its directory: its
    /// programs are detached (a scope cgroup already removed released them
    /// itself). Also takes the scope's level out of `Config::scope_levels`
    /// when it was the last one there. A key that was never attached, or
    /// whose pins are gone, is not an error.
    pub fn detach_scope(&mut self, key: &str) {
        if check_key(key).is_err() {
            // attach_scope refuses such a key: nothing was pinned for it.
            return;
        }
        let dir = self.pin_dir.join("links").join("scopes").join(key);
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                let _ = fs::remove_file(e.path());
            }
        }
        let _ = fs::remove_dir(&dir);
        if let Some(s) = self.scopes.scopes.remove(key) {
            self.scopes.remove(s.level);
            // A level left in the mask costs a lookup, never a wrong agent.
            let _ = self.write_scope_levels();
        }
    }

    /// Drops the scope levels inherited from the previous guardd that no
    /// scope re-attached since: call it once the live scopes are re-adopted.
    pub fn settle_scope_levels(&mut self) -> Result<(), KernelError> {
        self.scopes.inherited = 0;
        self.write_scope_levels()
    }

    /// `Config::scope_levels` as the programs see it now.
    pub fn scope_levels(&self) -> Result<u64, KernelError> {
        Ok(self
            .config
            .get(&0, 0)
            .map_err(map_err("CONFIG"))?
            .scope_levels)
    }

    fn write_scope_levels(&mut self) -> Result<(), KernelError> {
        let mut cfg = self.config.get(&0, 0).map_err(map_err("CONFIG"))?;
        let mask = self.scopes.mask(self.agent_level);
        if cfg.scope_levels == mask {
            return Ok(());
        }
        cfg.scope_levels = mask;
        self.config.set(0, cfg, 0).map_err(map_err("CONFIG"))
    }

    /// Scope link pins of this guardd that are gone.
    pub(super) fn missing_scope_links(&self) -> Vec<String> {
        self.scopes.missing_links()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::CgroupLayout;

    #[test]
    fn every_cgroup_program_of_the_parent_is_attached_to_scopes() {
        for name in super::super::PROGRAMS {
            let in_scopes = CGROUP_PROGRAMS.iter().any(|(n, _)| *n == name);
            let tracepoint = super::super::tracepoint_of(name).is_some();
            assert!(in_scopes != tracepoint, "{name}");
        }
        assert_eq!(
            CGROUP_PROGRAMS.len() + 4,
            super::super::PROGRAMS.len(),
            "four raw tracepoints"
        );
    }

    #[test]
    fn levels_stay_in_the_mask_while_a_scope_lives_there() {
        let mut t = ScopeTable::new(0);
        assert_eq!(t.mask(2), 0b100);
        t.add(4);
        t.add(4);
        t.add(3);
        assert_eq!(t.mask(2), 0b11100);
        t.remove(4);
        assert_eq!(t.mask(2), 0b11100);
        t.remove(4);
        assert_eq!(t.mask(2), 0b1100);
        t.remove(3);
        // A level never counted, and the parent's level: the mask keeps the
        // agent level whatever happens.
        t.remove(2);
        t.remove(7);
        assert_eq!(t.mask(2), 0b100);
        t.add(2);
        t.remove(2);
        assert_eq!(t.mask(2), 0b100);
    }

    #[test]
    fn inherited_levels_stay_until_settled() {
        let mut t = ScopeTable::new(0b1_0000);
        assert_eq!(t.mask(2), 0b1_0100);
        t.add(4);
        t.remove(4);
        assert_eq!(t.mask(2), 0b1_0100);
        t.inherited = 0;
        assert_eq!(t.mask(2), 0b100);
        assert_eq!(level_bit(64), 0);
        assert_eq!(level_bit(63), 1 << 63);
    }

    #[test]
    fn scope_keys_are_plain_names() {
        for good in ["a", "agent-1", "x_y.z", &"k".repeat(64)] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "../x", "a\0b", "é", &"k".repeat(65)] {
            let e = check_key(bad).unwrap_err();
            assert!(matches!(e, KernelError::ScopeKey(_)), "{bad}: {e}");
        }
    }

    fn layout(v2: &str, depth: u32) -> CgroupLayout {
        CgroupLayout {
            v2: PathBuf::from(v2),
            v2_root_depth: depth,
            v1: Vec::new(),
        }
    }

    #[test]
    fn scope_level_counts_below_the_mount() {
        let l = layout("/sys/fs/cgroup/unified", 0);
        let parent = Path::new("/sys/fs/cgroup/unified/guard");
        let level = |p: &str| scope_level(&l, parent, Path::new(p));
        assert_eq!(
            level("/sys/fs/cgroup/unified/libpod_parent/libpod-1/agent-a").unwrap(),
            3
        );
        assert_eq!(level("/sys/fs/cgroup/unified/guardx/agent-b").unwrap(), 2);
        // A mount showing a sub-tree (a container's cgroup namespace) adds
        // the depth of its root.
        let deep = layout("/sys/fs/cgroup", 2);
        assert_eq!(
            scope_level(
                &deep,
                Path::new("/sys/fs/cgroup/guard"),
                Path::new("/sys/fs/cgroup/pod/agent-c")
            )
            .unwrap(),
            4
        );
        for bad in [
            "/tmp/agent-a",
            "/sys/fs/cgroup/pids/agent-a",
            "/sys/fs/cgroup/unified/guard",
            "/sys/fs/cgroup/unified/guard/agent-1",
            "/sys/fs/cgroup/unified",
        ] {
            let e = level(bad).unwrap_err();
            assert!(matches!(e, KernelError::ScopeCgroup { .. }), "{bad}: {e}");
        }
        let too_deep = format!("/sys/fs/cgroup/unified{}", "/d".repeat(32));
        let e = level(&too_deep).unwrap_err();
        assert!(e.to_string().contains("level 32"), "{e}");
        let deepest = format!("/sys/fs/cgroup/unified{}", "/d".repeat(31));
        assert_eq!(level(&deepest).unwrap(), 31);
    }

    #[test]
    fn programs_no_longer_running_are_named() {
        assert_eq!(stopped(&[1, 2, 3], &[3, 1, 9]), vec![2]);
        assert!(stopped(&[], &[4]).is_empty());
        assert!(stopped(&[4, 5], &[5, 4, 6]).is_empty());
    }
}
