//! Loading guard's kernel programs, keeping them attached and pinned, and
//! writing agents' rules into their maps.
//!
//! The programs attach once, to guard's parent cgroup, and every agent scope
//! under it inherits them the moment its cgroup is created, so opening such a
//! scope costs a `mkdir` and a few map updates rather than loads and
//! attaches, and there is no window in which a scope exists without its
//! programs. A scope outside the parent (under a caller's own cgroup, issue
//! 13) gets the cgroup programs attached to it as well (`scopes`). The
//! programs tell agents apart by the ancestor cgroup id at the scopes'
//! levels (see `guard_common::Config`).
//!
//! Maps and links are pinned under bpffs: if guardd exits or dies, enforcement
//! goes on unchanged, and a restarted guardd reuses the same maps.

pub mod btf;
pub mod dynamic;
pub mod events;
pub mod scopes;
pub mod sys;
pub mod unix;

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    fs,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, RingBuf, lpm_trie::Key},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr,
        CgroupSockopt, ProgramError, RawTracePoint,
        links::{FdLink, LinkError, PinnedLink},
    },
};
use guard_common::{
    AgentInfo, Config, NameSeenKey, Net4Key, Net6Key, NetValue, SLOT_PREFIX_BITS, UNIX_PATH_MAX,
    UnixKey,
};
use thiserror::Error;

use crate::host::CgroupLayout;

/// The main object: inet hooks and socket creation, loaded through aya.
pub static MAIN_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard-ebpf"));
/// The Unix-socket hooks, loaded by `unix::load_and_attach`.
pub static UNIX_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard-ebpf-unix"));

const MAP_NAMES: [&str; 15] = [
    "CONFIG",
    "AGENTS",
    "NET4",
    "NET6",
    "UNIX",
    "EVENTS",
    "PATH_ARG",
    "HOOK_DENIED",
    "LISTEN4",
    "LISTEN6",
    "LISTEN_SEEN",
    "ROUTE_SEEN",
    "DNS_PORTS",
    "DNS_ORIG",
    "NAME_SEEN",
];

/// Programs of the main object and how they attach.
const PROGRAMS: [&str; 16] = [
    "guard_connect4",
    "guard_connect6",
    "guard_sendmsg4",
    "guard_sendmsg6",
    "guard_bind4",
    "guard_bind6",
    "guard_ingress",
    "guard_sock_create",
    "guard_exec",
    "guard_sys_enter",
    "guard_sys_exit",
    "guard_signal",
    "guard_egress",
    "guard_setsockopt",
    "guard_recvmsg4",
    "guard_recvmsg6",
];

/// `BPF_CGROUP_SETSOCKOPT` (uapi `enum bpf_attach_type`).
const BPF_CGROUP_SETSOCKOPT: u32 = 22;

/// Raw tracepoint of each tracing program.
fn tracepoint_of(program: &str) -> Option<&'static str> {
    match program {
        "guard_exec" => Some("sched_process_exec"),
        "guard_sys_enter" => Some("sys_enter"),
        "guard_sys_exit" => Some("sys_exit"),
        "guard_signal" => Some("signal_generate"),
        _ => None,
    }
}

#[derive(Debug, Error)]
pub enum KernelError {
    #[error("loading the BPF object: {0}")]
    Load(Box<aya::EbpfError>),
    #[error(
        "the policy needs {need} entries in the {map} map; one agent may use at most {quota} \
         (the map holds {max} for all agents): use fewer or wider rules"
    )]
    Quota {
        map: &'static str,
        need: usize,
        quota: usize,
        max: usize,
    },
    #[error("BPF program `{name}`: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("BPF link of `{name}`: {source}")]
    Link {
        name: &'static str,
        source: LinkError,
    },
    #[error("BPF map `{name}`: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("attaching BPF program `{name}`: {source}")]
    Attach {
        name: &'static str,
        source: std::io::Error,
    },
    #[error("BPF object has no {0}")]
    Missing(&'static str),
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel BTF: {0}")]
    Btf(#[from] btf::BtfError),
    #[error("cgroup layout: {0}")]
    Host(#[from] crate::host::HostError),
    #[error(
        "scope key `{0}` is not a plain name (1 to 64 letters, digits, `-`, `_` or `.`; not `.` \
         or `..`)"
    )]
    ScopeKey(String),
    #[error("scope cgroup {path}: {reason}")]
    ScopeCgroup { path: PathBuf, reason: String },
    #[error("scope key `{key}` is attached to another cgroup, {cgroup}")]
    ScopeInUse { key: String, cgroup: PathBuf },
    #[error("attaching BPF program `{name}` to the scope cgroup {cgroup}: {source}{hint}")]
    ScopeAttach {
        name: &'static str,
        cgroup: PathBuf,
        hint: &'static str,
        source: std::io::Error,
    },
    #[error(
        "attaching BPF program `{name}` to the scope cgroup {cgroup} would stop the program(s) \
         with id {ids:?}, which an ancestor cgroup attached with BPF_F_ALLOW_OVERRIDE, from \
         running there: refused rather than switch them off"
    )]
    ScopeOverride {
        name: &'static str,
        cgroup: PathBuf,
        ids: Vec<u32>,
    },
    #[error(
        "pinned maps under {dir} are not compatible with this guardd ({source}); stop every agent, \
         remove {dir} and start guardd again"
    )]
    IncompatiblePins {
        dir: PathBuf,
        source: Box<aya::EbpfError>,
    },
}

fn is_grant4(k: &(u32, Net4Key)) -> bool {
    k.1.slot & guard_common::GRANT_SLOT != 0
}

fn is_grant6(k: &(u32, Net6Key)) -> bool {
    k.1.slot & guard_common::GRANT_SLOT != 0
}

/// A removal that left no entry: done, or there was none.
fn removed(r: Result<(), MapError>) -> bool {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => true,
        Err(MapError::SyscallError(e)) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        Err(_) => false,
    }
}

/// The trie key of an agent's IPv4 prefix (`bits` of the address; the
/// slot always matched in full).
pub(crate) fn key4(slot: u32, bits: u32, addr: [u8; 4]) -> Key<Net4Key> {
    Key::new(SLOT_PREFIX_BITS + bits, Net4Key { slot, addr })
}

/// As [`key4`], for IPv6.
pub(crate) fn key6(slot: u32, bits: u32, addr: [u8; 16]) -> Key<Net6Key> {
    Key::new(SLOT_PREFIX_BITS + bits, Net6Key { slot, addr })
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> KernelError {
    move |source| KernelError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> KernelError {
    move |source| KernelError::Program { name, source }
}

/// Where the kernel side of one guardd instance lives.
#[derive(Clone, Debug)]
pub struct KernelOptions {
    /// guard's parent cgroup (cgroup v2); agent scopes are its children.
    pub parent_cgroup: PathBuf,
    /// cgroup level of the agent scopes (root = 0).
    pub agent_level: u32,
    /// bpffs directory for this instance's pins.
    pub pin_dir: PathBuf,
}

/// What the kernel side can enforce on this host, found at load time.
#[derive(Clone, Debug, Default)]
pub struct KernelLayers {
    /// The Unix-socket hooks loaded and attached. When false, `unix_error`
    /// says why.
    pub unix_hooks: bool,
    pub unix_error: Option<String>,
}

/// Keys written for one agent, so they can be removed exactly.
#[derive(Clone, Debug, Default)]
pub struct AgentKeys {
    pub cgroup_id: u64,
    pub v4: Vec<(u32, Net4Key)>,
    pub v6: Vec<(u32, Net6Key)>,
    pub unix: Vec<UnixKey>,
    /// Keys of the agent's `listen` rules.
    pub listen4: Vec<(u32, Net4Key)>,
    pub listen6: Vec<(u32, Net6Key)>,
}

/// Network rules of one agent, as compiled by `policy`.
pub struct NetEntries<'a> {
    pub v4: &'a [(u32, [u8; 4], NetValue)],
    pub v6: &'a [(u32, [u8; 16], NetValue)],
    pub unix: &'a [([u8; UNIX_PATH_MAX], u32)],
    /// Local addresses the agent may bind and listen on.
    pub listen4: &'a [(u32, [u8; 4], NetValue)],
    pub listen6: &'a [(u32, [u8; 16], NetValue)],
}

/// Share of a rule map one agent may use: the maps are shared by every
/// agent, and one policy must not fill them for the rest.
pub const AGENT_MAP_SHARE: usize = 16;

impl NetEntries<'_> {
    /// Refuses a policy whose entries exceed one agent's share of a map.
    pub fn check_quota(&self) -> Result<(), KernelError> {
        use guard_common::{
            LISTEN4_MAX_ENTRIES, LISTEN6_MAX_ENTRIES, NET4_MAX_ENTRIES, NET6_MAX_ENTRIES,
            UNIX_MAX_ENTRIES,
        };
        let maps: [(&'static str, usize, u32); 5] = [
            ("IPv4 rule", self.v4.len(), NET4_MAX_ENTRIES),
            ("IPv6 rule", self.v6.len(), NET6_MAX_ENTRIES),
            ("Unix socket", self.unix.len(), UNIX_MAX_ENTRIES),
            ("IPv4 listen", self.listen4.len(), LISTEN4_MAX_ENTRIES),
            ("IPv6 listen", self.listen6.len(), LISTEN6_MAX_ENTRIES),
        ];
        for (map, need, max) in maps {
            let max = max as usize;
            let quota = max / AGENT_MAP_SHARE;
            if need > quota {
                return Err(KernelError::Quota {
                    map,
                    need,
                    quota,
                    max,
                });
            }
        }
        Ok(())
    }
}

pub struct Kernel {
    ebpf: Ebpf,
    config: Array<MapData, Config>,
    _path_arg: Array<MapData, u32>,
    agents: HashMap<MapData, u64, AgentInfo>,
    net4: LpmTrie<MapData, Net4Key, NetValue>,
    net6: LpmTrie<MapData, Net6Key, NetValue>,
    unix: HashMap<MapData, UnixKey, u32>,
    listen4: LpmTrie<MapData, Net4Key, NetValue>,
    listen6: LpmTrie<MapData, Net6Key, NetValue>,
    /// Resolver port -> slot (`DNS_PORTS`).
    dns_ports: HashMap<MapData, u32, u32>,
    /// First connections reported per host-rule destination (`NAME_SEEN`).
    name_seen: HashMap<MapData, NameSeenKey, u8>,
    pin_dir: PathBuf,
    /// The link pins of this generation: while they exist, the programs
    /// stay attached (readiness checks them).
    links: Vec<PathBuf>,
    /// Suffix of this generation's link pins.
    generation: u128,
    parent_cgroup: PathBuf,
    agent_level: u32,
    /// Where scope levels are counted from (`scopes`).
    layout: CgroupLayout,
    /// The Unix hooks (name, attach type, program), when they loaded.
    unix_progs: Vec<(&'static str, u32, OwnedFd)>,
    /// Scopes outside the parent with programs of their own.
    scopes: scopes::ScopeTable,
    pub layers: KernelLayers,
}

fn pin_err(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Pin {
        path: path.to_owned(),
        source,
    }
}

impl Kernel {
    /// Loads (or re-adopts) the programs and maps, attaches them to the
    /// parent cgroup and pins everything. Returns the kernel handle and the
    /// event ring buffer, which the caller reads on its own thread.
    pub fn load(opts: &KernelOptions) -> Result<(Kernel, RingBuf<MapData>), KernelError> {
        let maps_dir = opts.pin_dir.join("maps");
        let links_dir = opts.pin_dir.join("links");
        fs::create_dir_all(&maps_dir).map_err(pin_err(&maps_dir))?;
        fs::create_dir_all(&links_dir).map_err(pin_err(&links_dir))?;
        // The parent's links only: `scopes/` holds the scopes' own, which
        // `attach_scope` replaces when the scopes are re-adopted.
        let old_links: Vec<PathBuf> = fs::read_dir(&links_dir)
            .map_err(pin_err(&links_dir))?
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        let layout = CgroupLayout::detect()?;

        let map_paths: Vec<(&'static str, PathBuf)> =
            MAP_NAMES.iter().map(|n| (*n, maps_dir.join(n))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = match loader.load(MAIN_OBJ) {
            Ok(e) => e,
            Err(source) if !old_links.is_empty() => {
                return Err(KernelError::IncompatiblePins {
                    dir: opts.pin_dir.clone(),
                    source: Box::new(source),
                });
            }
            Err(e) => return Err(KernelError::Load(Box::new(e))),
        };

        // Raw descriptors for the Unix-hook loader, taken while aya still owns
        // every map; they stay valid because the maps live in `Kernel`.
        let map_fds: StdHashMap<String, i32> = MAP_NAMES
            .iter()
            .filter_map(|n| {
                ebpf.map(n)
                    .and_then(map_raw_fd)
                    .map(|fd| (n.to_string(), fd))
            })
            .collect();

        // Offsets of the kernel structs the programs read, from this
        // kernel's BTF. The Unix hooks can do without theirs (they are then
        // reported unavailable); the tracing programs cannot.
        let btf = btf::Btf::from_sys_fs()?;
        let uaddr = btf
            .member_offset("bpf_sock_addr_kern", "uaddr")
            .unwrap_or(u32::MAX);
        let uaddrlen = btf
            .member_offset("bpf_sock_addr_kern", "uaddrlen")
            .unwrap_or(u32::MAX);
        let regs = ["di", "si", "dx", "r10", "r8", "r9"];
        let mut regs_arg_off = [0u32; 6];
        for (slot, name) in regs_arg_off.iter_mut().zip(regs) {
            *slot = btf.member_offset("pt_regs", name)?;
        }
        let loaders = loader_identities();
        let mut loader_dev = [0u32; guard_common::MAX_LOADERS];
        let mut loader_ino = [0u64; guard_common::MAX_LOADERS];
        for (i, (dev, ino)) in loaders.iter().enumerate() {
            loader_dev[i] = *dev;
            loader_ino[i] = *ino;
        }
        let mut config: Array<MapData, Config> = Array::try_from(
            ebpf.take_map("CONFIG")
                .ok_or(KernelError::Missing("map CONFIG"))?,
        )
        .map_err(map_err("CONFIG"))?;
        // Scopes outside the parent that a previous guardd attached keep
        // their programs, which must keep finding their agents until the
        // scopes are re-adopted: their levels stay in the mask until then.
        let previous = config.get(&0, 0).ok();
        let inherited =
            previous.map_or(0, |c| c.scope_levels & !scopes::level_bit(opts.agent_level));
        let scope_table = scopes::ScopeTable::new(inherited);
        let inherited_learning = previous.map_or(0, |c| c.learning);
        config
            .set(
                0,
                Config {
                    agent_level: opts.agent_level,
                    scope_levels: scopes::level_bit(opts.agent_level) | inherited,
                    sa_kern_uaddr_off: uaddr,
                    sa_kern_uaddrlen_off: uaddrlen,
                    bprm_filename_off: btf.member_offset("linux_binprm", "filename")?,
                    task_mm_off: btf.member_offset("task_struct", "mm")?,
                    mm_arg_start_off: btf.member_offset("mm_struct", "arg_start")?,
                    mm_arg_end_off: btf.member_offset("mm_struct", "arg_end")?,
                    regs_orig_ax_off: btf.member_offset("pt_regs", "orig_ax")?,
                    regs_arg_off,
                    bprm_file_off: btf.member_offset("linux_binprm", "file")?,
                    file_inode_off: btf.member_offset("file", "f_inode")?,
                    inode_ino_off: btf.member_offset("inode", "i_ino")?,
                    inode_sb_off: btf.member_offset("inode", "i_sb")?,
                    sb_dev_off: btf.member_offset("super_block", "s_dev")?,
                    loader_count: loaders.len() as u32,
                    loader_dev,
                    loader_ino,
                    task_seccomp_off: btf.member_offset("task_struct", "seccomp")?
                        + btf.member_offset_sized("seccomp", "mode", 4)?,
                    task_real_parent_off: btf.member_offset("task_struct", "real_parent")?,
                    task_tgid_off: btf.member_offset("task_struct", "tgid")?,
                    mm_exe_file_off: btf.member_offset("mm_struct", "exe_file")?,
                    task_files_off: btf.member_offset("task_struct", "files")?,
                    files_fdt_off: btf.member_offset("files_struct", "fdt")?,
                    fdt_fd_off: btf.member_offset("fdtable", "fd")?,
                    fdt_max_fds_off: btf.member_offset("fdtable", "max_fds")?,
                    task_fs_off: btf.member_offset("task_struct", "fs")?,
                    fs_pwd_off: btf.member_offset("fs_struct", "pwd")?,
                    path_dentry_off: btf.member_offset("path", "dentry")?,
                    dentry_inode_off: btf.member_offset("dentry", "d_inode")?,
                    // Read whole by the exec check: a kernel where these are
                    // not 8 bytes would have its layers misread, so guardd
                    // does not start there.
                    task_atomic_flags_off: btf.member_offset_sized(
                        "task_struct",
                        "atomic_flags",
                        8,
                    )?,
                    task_cred_off: btf.member_offset_sized("task_struct", "cred", 8)?,
                    cred_cap_effective_off: btf.member_offset_sized("cred", "cap_effective", 8)?,
                    cred_cap_permitted_off: btf.member_offset_sized("cred", "cap_permitted", 8)?,
                    // The predecessor's count until the agent table is
                    // open and recounted below: its learning agents stay
                    // observed throughout.
                    learning: inherited_learning,
                    bprm_interp_off: btf.member_offset("linux_binprm", "interp")?,
                },
                0,
            )
            .map_err(map_err("CONFIG"))?;
        let mut path_arg: Array<MapData, u32> = Array::try_from(
            ebpf.take_map("PATH_ARG")
                .ok_or(KernelError::Missing("map PATH_ARG"))?,
        )
        .map_err(map_err("PATH_ARG"))?;
        for nr in 0..guard_common::PATH_ARG_ENTRIES {
            let arg = crate::syscalls::path_call(nr)
                .map(|(_, a, _)| {
                    let mut a = a;
                    if crate::syscalls::dirfd_arg(nr).is_some() {
                        a |= guard_common::PATH_ARG_DIRFD;
                    }
                    if crate::syscalls::learned(nr) {
                        a |= guard_common::PATH_ARG_LEARN;
                    }
                    a
                })
                .unwrap_or(guard_common::NO_PATH);
            path_arg.set(nr, arg, 0).map_err(map_err("PATH_ARG"))?;
        }

        let cgroup = fs::File::open(&opts.parent_cgroup).map_err(|source| KernelError::Cgroup {
            path: opts.parent_cgroup.clone(),
            source,
        })?;

        // Attach the new generation before dropping the old one, so that a
        // restart never leaves the parent cgroup without programs.
        let mut pinned = Vec::new();
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for name in PROGRAMS {
            let program = ebpf
                .program_mut(name)
                .ok_or(KernelError::Missing("program"))?;
            if name == "guard_setsockopt" {
                // Refuses the socket options that install routing headers.
                // aya 0.14 turns no sockopt link into an `FdLink`, so the
                // link is created and pinned directly.
                let p: &mut CgroupSockopt = program.try_into().map_err(prog_err(name))?;
                p.load().map_err(prog_err(name))?;
                let prog_fd = p.fd().map_err(prog_err(name))?;
                let link = sys::link_create(prog_fd.as_fd(), cgroup.as_fd(), BPF_CGROUP_SETSOCKOPT)
                    .map_err(|e| KernelError::Attach { name, source: e })?;
                let path = links_dir.join(format!("{name}-{generation}"));
                sys::obj_pin(link.as_fd(), &path).map_err(pin_err(&path))?;
                pinned.push(path);
                continue;
            }
            let link: FdLink = if let Some(tp) = tracepoint_of(name) {
                let p: &mut RawTracePoint = program.try_into().map_err(prog_err(name))?;
                p.load().map_err(prog_err(name))?;
                let id = p.attach(tp).map_err(prog_err(name))?;
                FdLink::from(p.take_link(id).map_err(prog_err(name))?)
            } else if name == "guard_ingress" {
                // The second inbound layer: a packet for a listening socket
                // on a port no `listen` rule allows is dropped.
                let p: &mut CgroupSkb = program.try_into().map_err(prog_err(name))?;
                p.load().map_err(prog_err(name))?;
                let id = p
                    .attach(
                        &cgroup,
                        CgroupSkbAttachType::Ingress,
                        CgroupAttachMode::Single,
                    )
                    .map_err(prog_err(name))?;
                p.take_link(id)
                    .map_err(prog_err(name))?
                    .try_into()
                    .map_err(|source: LinkError| KernelError::Link { name, source })?
            } else if name == "guard_egress" {
                // Packets go where the hooks judged, or nowhere: a packet
                // carrying a Routing header or IPv4 options is dropped.
                let p: &mut CgroupSkb = program.try_into().map_err(prog_err(name))?;
                p.load().map_err(prog_err(name))?;
                let id = p
                    .attach(
                        &cgroup,
                        CgroupSkbAttachType::Egress,
                        CgroupAttachMode::Single,
                    )
                    .map_err(prog_err(name))?;
                p.take_link(id)
                    .map_err(prog_err(name))?
                    .try_into()
                    .map_err(|source: LinkError| KernelError::Link { name, source })?
            } else if name == "guard_sock_create" {
                let p: &mut CgroupSock = program.try_into().map_err(prog_err(name))?;
                p.load().map_err(prog_err(name))?;
                let id = p
                    .attach(&cgroup, CgroupAttachMode::Single)
                    .map_err(prog_err(name))?;
                p.take_link(id)
                    .map_err(prog_err(name))?
                    .try_into()
                    .map_err(|source: LinkError| KernelError::Link { name, source })?
            } else {
                let p: &mut CgroupSockAddr = program.try_into().map_err(prog_err(name))?;
                p.load().map_err(prog_err(name))?;
                let id = p
                    .attach(&cgroup, CgroupAttachMode::Single)
                    .map_err(prog_err(name))?;
                p.take_link(id)
                    .map_err(prog_err(name))?
                    .try_into()
                    .map_err(|source: LinkError| KernelError::Link { name, source })?
            };
            let path = links_dir.join(format!("{name}-{generation}"));
            link.pin(&path).map_err(|e| KernelError::Pin {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
            pinned.push(path);
        }

        let mut layers = KernelLayers::default();
        let mut unix_progs = Vec::new();
        if uaddr % 8 != 0 || uaddr >= 48 || uaddrlen % 4 != 0 || uaddrlen >= 48 {
            layers.unix_error = Some(format!(
                "struct bpf_sock_addr_kern has an unexpected layout (uaddr at {uaddr}, uaddrlen at {uaddrlen})"
            ));
        } else {
            match unix::load_and_attach(UNIX_OBJ, &map_fds, cgroup.as_fd()) {
                Ok(hooks) => {
                    for (name, link) in &hooks.links {
                        let path = links_dir.join(format!("{name}-{generation}"));
                        sys::obj_pin(link.as_fd(), &path).map_err(pin_err(&path))?;
                        pinned.push(path);
                    }
                    unix_progs = hooks.progs;
                    layers.unix_hooks = true;
                }
                Err(e) => layers.unix_error = Some(e.to_string()),
            }
        }

        for old in old_links {
            // Unpinning the previous generation's links detaches them once
            // their last reference (this one) is dropped.
            if let Ok(link) = PinnedLink::from_pin(&old) {
                let _ = link.unpin();
            } else {
                let _ = fs::remove_file(&old);
            }
        }

        let agents = HashMap::try_from(
            ebpf.take_map("AGENTS")
                .ok_or(KernelError::Missing("map AGENTS"))?,
        )
        .map_err(map_err("AGENTS"))?;
        let net4 = LpmTrie::try_from(
            ebpf.take_map("NET4")
                .ok_or(KernelError::Missing("map NET4"))?,
        )
        .map_err(map_err("NET4"))?;
        let net6 = LpmTrie::try_from(
            ebpf.take_map("NET6")
                .ok_or(KernelError::Missing("map NET6"))?,
        )
        .map_err(map_err("NET6"))?;
        let unix_map = HashMap::try_from(
            ebpf.take_map("UNIX")
                .ok_or(KernelError::Missing("map UNIX"))?,
        )
        .map_err(map_err("UNIX"))?;
        let listen4 = LpmTrie::try_from(
            ebpf.take_map("LISTEN4")
                .ok_or(KernelError::Missing("map LISTEN4"))?,
        )
        .map_err(map_err("LISTEN4"))?;
        let listen6 = LpmTrie::try_from(
            ebpf.take_map("LISTEN6")
                .ok_or(KernelError::Missing("map LISTEN6"))?,
        )
        .map_err(map_err("LISTEN6"))?;
        let dns_ports = HashMap::try_from(
            ebpf.take_map("DNS_PORTS")
                .ok_or(KernelError::Missing("map DNS_PORTS"))?,
        )
        .map_err(map_err("DNS_PORTS"))?;
        let name_seen = HashMap::try_from(
            ebpf.take_map("NAME_SEEN")
                .ok_or(KernelError::Missing("map NAME_SEEN"))?,
        )
        .map_err(map_err("NAME_SEEN"))?;
        let ring = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .ok_or(KernelError::Missing("map EVENTS"))?,
        )
        .map_err(map_err("EVENTS"))?;
        let mut kernel = Kernel {
            ebpf,
            config,
            _path_arg: path_arg,
            agents,
            net4,
            net6,
            unix: unix_map,
            listen4,
            listen6,
            dns_ports,
            name_seen,
            pin_dir: opts.pin_dir.clone(),
            links: pinned,
            generation,
            parent_cgroup: opts.parent_cgroup.clone(),
            agent_level: opts.agent_level,
            layout,
            unix_progs,
            scopes: scope_table,
            layers,
        };
        kernel.write_learning()?;
        Ok((kernel, ring))
    }

    /// `Config::learning`: how many agents in the table are in learn mode.
    /// Counted from the table itself rather than kept as a running count,
    /// so a restarted guardd and a failed half-write cannot skew it.
    fn write_learning(&mut self) -> Result<(), KernelError> {
        let n = self
            .agents
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, i)| i.flags & guard_common::AGENT_LEARN != 0)
            .count() as u32;
        let mut cfg = self.config.get(&0, 0).map_err(map_err("CONFIG"))?;
        if cfg.learning != n {
            cfg.learning = n;
            self.config.set(0, cfg, 0).map_err(map_err("CONFIG"))?;
        }
        Ok(())
    }

    /// Writes an agent's rules, then the agent itself: the programs deny a
    /// scope they do not know, so the scope is never open before its rules
    /// are in place.
    pub fn add_agent(
        &mut self,
        cgroup_id: u64,
        info: AgentInfo,
        net: &NetEntries<'_>,
    ) -> Result<AgentKeys, KernelError> {
        net.check_quota()?;
        let mut keys = AgentKeys {
            cgroup_id,
            ..AgentKeys::default()
        };
        let result = self.write_agent(info, net, &mut keys);
        if let Err(e) = result {
            self.remove_agent(&keys);
            return Err(e);
        }
        Ok(keys)
    }

    fn write_agent(
        &mut self,
        info: AgentInfo,
        net: &NetEntries<'_>,
        keys: &mut AgentKeys,
    ) -> Result<(), KernelError> {
        for (bits, addr, value) in net.v4 {
            let key = key4(info.slot, *bits, *addr);
            self.net4.insert(&key, value, 0).map_err(map_err("NET4"))?;
            keys.v4.push((key.prefix_len(), key.data()));
        }
        for (bits, addr, value) in net.v6 {
            let key = key6(info.slot, *bits, *addr);
            self.net6.insert(&key, value, 0).map_err(map_err("NET6"))?;
            keys.v6.push((key.prefix_len(), key.data()));
        }
        for (bits, addr, value) in net.listen4 {
            let key = key4(info.slot, *bits, *addr);
            self.listen4
                .insert(&key, value, 0)
                .map_err(map_err("LISTEN4"))?;
            keys.listen4.push((key.prefix_len(), key.data()));
        }
        for (bits, addr, value) in net.listen6 {
            let key = key6(info.slot, *bits, *addr);
            self.listen6
                .insert(&key, value, 0)
                .map_err(map_err("LISTEN6"))?;
            keys.listen6.push((key.prefix_len(), key.data()));
        }
        for (path, rule) in net.unix {
            let key = UnixKey {
                slot: info.slot,
                path: *path,
            };
            self.unix.insert(key, rule, 0).map_err(map_err("UNIX"))?;
            keys.unix.push(key);
        }
        self.agents
            .insert(keys.cgroup_id, info, 0)
            .map_err(map_err("AGENTS"))?;
        if info.flags & guard_common::AGENT_LEARN != 0 {
            self.write_learning()?;
        }
        Ok(())
    }

    /// Removes everything `add_agent` wrote. Missing keys are not errors: a
    /// half-written agent is removed the same way. The agent's host-rule
    /// reports (`NAME_SEEN`) go too: the next agent in its slot must get
    /// its own first reports.
    pub fn remove_agent(&mut self, keys: &AgentKeys) {
        let mut learning = false;
        if let Ok(info) = self.agents.get(&keys.cgroup_id, 0) {
            self.forget_names(|slot| slot == info.slot);
            learning = info.flags & guard_common::AGENT_LEARN != 0;
        }
        let _ = self.agents.remove(&keys.cgroup_id);
        if learning && let Err(e) = self.write_learning() {
            tracing::warn!("learn-mode count not updated: {e}");
        }
        for (bits, data) in &keys.v4 {
            let _ = self.net4.remove(&Key::new(*bits, *data));
        }
        for (bits, data) in &keys.v6 {
            let _ = self.net6.remove(&Key::new(*bits, *data));
        }
        for k in &keys.unix {
            let _ = self.unix.remove(k);
        }
        for (bits, data) in &keys.listen4 {
            let _ = self.listen4.remove(&Key::new(*bits, *data));
        }
        for (bits, data) in &keys.listen6 {
            let _ = self.listen6.remove(&Key::new(*bits, *data));
        }
    }

    /// Names `port` (a resolver of guardd's on `DNS_PROXY_V4`/`DNS_PROXY_V6`)
    /// as the resolver of the agent in `slot`: every other agent's connect or
    /// datagram to it is refused, whatever its policy or mode.
    pub fn set_dns_port(&mut self, port: u16, slot: u32) -> Result<(), KernelError> {
        self.dns_ports
            .insert(u32::from(port), slot, 0)
            .map_err(map_err("DNS_PORTS"))
    }

    /// Points a live agent's DNS redirection at `port` (its resolver was
    /// started again after a guardd restart, perhaps on another port), or
    /// turns it off (`None`: its queries to port 53 are then judged by its
    /// rules again).
    pub fn set_agent_dns(&mut self, cgroup_id: u64, port: Option<u16>) -> Result<(), KernelError> {
        let mut info = self.agents.get(&cgroup_id, 0).map_err(map_err("AGENTS"))?;
        match port {
            Some(p) => {
                info.flags |= guard_common::AGENT_DNS;
                info.dns_port = u32::from(p);
            }
            None => {
                info.flags &= !guard_common::AGENT_DNS;
                info.dns_port = 0;
            }
        }
        self.agents
            .insert(cgroup_id, info, 0)
            .map_err(map_err("AGENTS"))
    }

    /// Forgets a resolver port of `slot` (its resolver closed); a port that
    /// was never set is no error.
    pub fn clear_dns_port(&mut self, port: u16, slot: u32) {
        // Only the slot's own entry: the port may already serve another
        // agent's resolver, whose entry must stay.
        if self.dns_ports.get(&u32::from(port), 0).ok() == Some(slot) {
            let _ = self.dns_ports.remove(&u32::from(port));
        }
    }

    /// Writes an agent's static rules again, over whatever the entries at
    /// those keys hold: after a restart, an entry at a static rule's exact
    /// address may still carry a resolver grant of the guardd that died.
    pub fn rewrite_static(
        &mut self,
        slot: u32,
        v4: &[(u32, [u8; 4], NetValue)],
        v6: &[(u32, [u8; 16], NetValue)],
    ) -> Result<(), KernelError> {
        for (bits, addr, value) in v4 {
            let key = key4(slot, *bits, *addr);
            self.net4.insert(&key, value, 0).map_err(map_err("NET4"))?;
        }
        for (bits, addr, value) in v6 {
            let key = key6(slot, *bits, *addr);
            self.net6.insert(&key, value, 0).map_err(map_err("NET6"))?;
        }
        Ok(())
    }

    /// Writes the entries of an agent's live grants (`GRANT_SLOT` keys, see
    /// `policy::grant::compile_live`) in place of the ones `keys` holds: new
    /// and changed entries first, then the ones no grant holds any more, each
    /// one map update. A connection is judged by the old entries or the new
    /// ones, never by a half-written value. `keys` keeps the policy's keys
    /// and gets the grant keys now written, so `remove_agent` removes them
    /// too.
    pub fn set_grants(
        &mut self,
        slot: u32,
        keys: &mut AgentKeys,
        v4: &[(u32, [u8; 4], NetValue)],
        v6: &[(u32, [u8; 16], NetValue)],
    ) -> Result<(), KernelError> {
        use guard_common::GRANT_SLOT;
        Kernel::grant_quota(keys, v4.len(), v6.len())?;
        let gslot = slot | GRANT_SLOT;
        let mut new4 = Vec::with_capacity(v4.len());
        let mut new6 = Vec::with_capacity(v6.len());
        let written = self.write_grant_entries(gslot, v4, v6, &mut new4, &mut new6);
        // Stale keys go: on failure every grant key of the agent (fail
        // closed), else those no grant holds any more. A key whose removal
        // failed stays in `keys`, so it is removed with the agent.
        let failed = written.is_err();
        let (old4, old6): (Vec<_>, Vec<_>) = (
            keys.v4.iter().filter(|k| is_grant4(k)).copied().collect(),
            keys.v6.iter().filter(|k| is_grant6(k)).copied().collect(),
        );
        keys.v4.retain(|k| !is_grant4(k));
        keys.v6.retain(|k| !is_grant6(k));
        for k in old4.iter().chain(if failed { &new4[..] } else { &[] }) {
            if (failed || !new4.contains(k)) && !self.gone(&Key::new(k.0, k.1)) {
                keys.v4.push(*k);
            }
        }
        for k in old6.iter().chain(if failed { &new6[..] } else { &[] }) {
            if (failed || !new6.contains(k)) && !self.gone6(&Key::new(k.0, k.1)) {
                keys.v6.push(*k);
            }
        }
        written?;
        keys.v4.extend(new4);
        keys.v6.extend(new6);
        Ok(())
    }

    /// Whether an agent whose keys are `keys` has room for `v4` and `v6`
    /// grant entries beside its policy's (its share of each map).
    pub fn grant_quota(keys: &AgentKeys, v4: usize, v6: usize) -> Result<(), KernelError> {
        use guard_common::{NET4_MAX_ENTRIES, NET6_MAX_ENTRIES};
        for (map, have, add, max) in [
            (
                "IPv4 rule",
                keys.v4.iter().filter(|k| !is_grant4(k)).count(),
                v4,
                NET4_MAX_ENTRIES,
            ),
            (
                "IPv6 rule",
                keys.v6.iter().filter(|k| !is_grant6(k)).count(),
                v6,
                NET6_MAX_ENTRIES,
            ),
        ] {
            let quota = max as usize / AGENT_MAP_SHARE;
            if have + add > quota {
                return Err(KernelError::Quota {
                    map,
                    need: have + add,
                    quota,
                    max: max as usize,
                });
            }
        }
        Ok(())
    }

    /// Removes an IPv4 trie entry; true when it is gone (or was not there).
    fn gone(&mut self, key: &Key<Net4Key>) -> bool {
        removed(self.net4.remove(key))
    }

    /// As [`Kernel::gone`], for IPv6.
    fn gone6(&mut self, key: &Key<Net6Key>) -> bool {
        removed(self.net6.remove(key))
    }

    fn write_grant_entries(
        &mut self,
        gslot: u32,
        v4: &[(u32, [u8; 4], NetValue)],
        v6: &[(u32, [u8; 16], NetValue)],
        new4: &mut Vec<(u32, Net4Key)>,
        new6: &mut Vec<(u32, Net6Key)>,
    ) -> Result<(), KernelError> {
        for (bits, addr, value) in v4 {
            let key = key4(gslot, *bits, *addr);
            new4.push((key.prefix_len(), key.data()));
            self.net4.insert(&key, value, 0).map_err(map_err("NET4"))?;
        }
        for (bits, addr, value) in v6 {
            let key = key6(gslot, *bits, *addr);
            new6.push((key.prefix_len(), key.data()));
            self.net6.insert(&key, value, 0).map_err(map_err("NET6"))?;
        }
        Ok(())
    }

    /// A handle on the `NET4`/`NET6` tries for another thread (the
    /// resolver), on duplicates of this kernel's descriptors: it needs no
    /// lock on the `Kernel` and no pins. See also [`dynamic::DynamicNet::open`].
    pub fn dynamic_net(&self) -> Result<dynamic::DynamicNet, KernelError> {
        dynamic::DynamicNet::from_tries(&self.net4, &self.net6)
    }

    /// Removes every `NET4`/`NET6` entry that is not a static rule of a live
    /// agent: entries of slots not in `live`, and entries of live slots that
    /// are not among their `AgentKeys::v4`/`v6` (what a resolver wrote for
    /// DNS answers, which a restarted guardd cannot know). Also drops the
    /// `NAME_SEEN` and `DNS_PORTS` entries of slots not in `live`, and the
    /// `AGENTS` entries of cgroups no live agent has (recounting
    /// `Config::learning`). Returns how many trie and agent entries were
    /// removed.
    pub fn purge_stale(&mut self, live: &StdHashMap<u32, AgentKeys>) -> usize {
        let keep4: HashSet<(u32, u32, [u8; 4])> =
            static_keys(live, |k| &k.v4, |d: &Net4Key| (d.slot, d.addr));
        let keep6: HashSet<(u32, u32, [u8; 16])> =
            static_keys(live, |k| &k.v6, |d: &Net6Key| (d.slot, d.addr));
        // Keys are read in full before any is removed: a trie walk from a key
        // that was just deleted starts over.
        let found4: Vec<Key<Net4Key>> = self.net4.keys().map_while(Result::ok).collect();
        let found6: Vec<Key<Net6Key>> = self.net6.keys().map_while(Result::ok).collect();
        let mut removed = 0;
        for key in found4 {
            let d = key.data();
            if !keep4.contains(&(d.slot, key.prefix_len(), d.addr))
                && self.net4.remove(&key).is_ok()
            {
                removed += 1;
            }
        }
        for key in found6 {
            let d = key.data();
            if !keep6.contains(&(d.slot, key.prefix_len(), d.addr))
                && self.net6.remove(&key).is_ok()
            {
                removed += 1;
            }
        }
        self.forget_names(|slot| !live.contains_key(&slot));
        let ports: Vec<(u32, u32)> = self.dns_ports.iter().map_while(Result::ok).collect();
        for (port, slot) in ports {
            if !live.contains_key(&slot) {
                let _ = self.dns_ports.remove(&port);
            }
        }
        // Agents of scopes that were reaped, or whose removal a dead guardd
        // never finished: a task there is now denied as of no live scope,
        // and a stale learning agent no longer keeps every successful
        // system call on the host on the learn path.
        let cgroups: HashSet<u64> = live.values().map(|k| k.cgroup_id).collect();
        let agents: Vec<u64> = self.agents.keys().map_while(Result::ok).collect();
        for id in agents {
            if !cgroups.contains(&id) && self.agents.remove(&id).is_ok() {
                removed += 1;
            }
        }
        if let Err(e) = self.write_learning() {
            tracing::warn!("learn-mode count not updated: {e}");
        }
        removed
    }

    /// Removes the `NAME_SEEN` entries of the slots `gone` names.
    fn forget_names(&mut self, gone: impl Fn(u32) -> bool) {
        let keys: Vec<NameSeenKey> = self.name_seen.keys().map_while(Result::ok).collect();
        for k in keys {
            if gone(k.slot) {
                let _ = self.name_seen.remove(&k);
            }
        }
    }

    /// The agent's counters as the programs left them.
    pub fn agent_info(&self, cgroup_id: u64) -> Option<AgentInfo> {
        self.agents.get(&cgroup_id, 0).ok()
    }

    /// Link pins of this generation that are gone, the parent's and those of
    /// the scopes attached with [`Kernel::attach_scope`] (as
    /// `scopes/<key>/<pin>`): their programs are detached (or going to be),
    /// so guardd is not ready.
    pub fn missing_links(&self) -> Vec<String> {
        self.links
            .iter()
            .filter(|p| !p.exists())
            .map(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .chain(self.missing_scope_links())
            .collect()
    }

    /// Removes this instance's pins. Only for a clean shutdown with no live
    /// agents: afterwards nothing holds the programs attached.
    pub fn unpin_all(&self) {
        remove_pins(&self.pin_dir);
    }
}

/// The static trie keys of the live agents as (slot, prefix length, address),
/// each under the slot it is filed under in `live` only.
fn static_keys<K, const N: usize>(
    live: &StdHashMap<u32, AgentKeys>,
    keys: impl Fn(&AgentKeys) -> &Vec<(u32, K)>,
    part: impl Fn(&K) -> (u32, [u8; N]),
) -> HashSet<(u32, u32, [u8; N])> {
    let mut out = HashSet::new();
    for (slot, agent) in live {
        for (bits, data) in keys(agent) {
            let (key_slot, addr) = part(data);
            // An agent's live grants sit under its slot with `GRANT_SLOT`.
            if key_slot & !guard_common::GRANT_SLOT == *slot {
                out.insert((key_slot, *bits, addr));
            }
        }
    }
    out
}

/// Removes guard's pins under `pin_dir` (links, the scopes' links, maps,
/// the directories): detaches the programs. Also for a start-up that failed
/// before a [`Kernel`] existed.
pub fn remove_pins(pin_dir: &Path) {
    // The directory is this instance's own: everything in it is guard's.
    remove_tree(pin_dir, 3);
}

/// Removes `dir` with its files and, `depth` levels down, its directories.
/// Symbolic links are removed, not followed.
fn remove_tree(dir: &Path, depth: u32) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if depth > 0 && e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path(), depth - 1);
            } else {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Where distributions install the dynamic loader (x86_64 glibc and musl,
/// and the i386 one). Symlinks and merged-/usr spellings collapse to the
/// same file.
pub const LOADER_PATHS: [&str; 6] = [
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "/usr/lib64/ld-linux-x86-64.so.2",
    "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
    "/lib/ld-musl-x86_64.so.1",
    "/lib/ld-linux.so.2",
];

/// The distinct loaders on this host as the kernel names them: `dev_t` in
/// the kernel's encoding (major << 20 | minor) and inode number.
pub fn loader_identities() -> Vec<(u32, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out: Vec<(u32, u64)> = Vec::new();
    for p in LOADER_PATHS {
        if let Ok(m) = fs::metadata(p) {
            let dev = m.dev();
            let kdev = (libc::major(dev) << 20) | libc::minor(dev);
            let id = (kdev, m.ino());
            if !out.contains(&id) && out.len() < guard_common::MAX_LOADERS {
                out.push(id);
            }
        }
    }
    out
}

fn map_raw_fd(map: &aya::maps::Map) -> Option<i32> {
    use aya::maps::Map;
    let data = match map {
        Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::LpmTrie(d)
        | Map::RingBuf(d)
        | Map::Array(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k4(slot: u32, addr: [u8; 4]) -> Net4Key {
        Net4Key { slot, addr }
    }

    #[test]
    fn only_the_static_keys_of_live_slots_are_kept() {
        let mut live = StdHashMap::new();
        live.insert(
            1,
            AgentKeys {
                v4: vec![(40, k4(1, [10, 0, 0, 0])), (64, k4(1, [127, 0, 0, 1]))],
                v6: vec![(
                    160,
                    Net6Key {
                        slot: 1,
                        addr: [0xfd; 16],
                    },
                )],
                ..AgentKeys::default()
            },
        );
        // A key filed under another slot than its own is no keeper.
        live.insert(
            2,
            AgentKeys {
                v4: vec![(64, k4(9, [1, 1, 1, 1]))],
                ..AgentKeys::default()
            },
        );
        let keep4 = static_keys(&live, |k| &k.v4, |d: &Net4Key| (d.slot, d.addr));
        let keep6 = static_keys(&live, |k| &k.v6, |d: &Net6Key| (d.slot, d.addr));
        assert_eq!(keep4.len(), 2);
        assert!(keep4.contains(&(1, 40, [10, 0, 0, 0])));
        assert!(keep4.contains(&(1, 64, [127, 0, 0, 1])));
        // The same address as a resolver's /32 of the same slot, a rule's
        // address under another prefix, or any key of a dead slot: stale.
        assert!(!keep4.contains(&(1, 64, [10, 0, 0, 0])));
        assert!(!keep4.contains(&(1, 40, [127, 0, 0, 1])));
        assert!(!keep4.contains(&(3, 40, [10, 0, 0, 0])));
        assert!(!keep4.contains(&(9, 64, [1, 1, 1, 1])));
        assert_eq!(keep6.len(), 1);
        assert!(keep6.contains(&(1, 160, [0xfd; 16])));
    }
}
