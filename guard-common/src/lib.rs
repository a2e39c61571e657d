//! The ABI shared by guard's kernel programs and user space: map keys and
//! values, event records, and the constants both sides must agree on.
//!
//! Every type here is `#[repr(C)]` with explicit padding so that the BPF
//! target and x86_64 lay them out identically; the size assertions at the
//! bottom fail the build when a field moves.
#![no_std]

pub mod syscalls;

/// Kernel agent slots are small integers so that map keys stay compact; the
/// user-facing agent id is a separate string chosen by guardd.
pub const MAX_AGENTS: u32 = 4096;

/// Port ranges that can apply to one address prefix after user space has
/// folded the rules of all enclosing prefixes together (see `NetValue`).
pub const MAX_PORT_RANGES: usize = 32;

/// `sun_path` length of `struct sockaddr_un`.
pub const UNIX_PATH_MAX: usize = 108;

/// Capacity of the main ring buffer in bytes (power of two, page multiple):
/// about 40,000 network events. It is mapped twice into guardd (so it counts
/// double in its resident memory); a burst beyond it is counted as lost and
/// journaled as such.
pub const EVENTS_RING_BYTES: u32 = 4 << 20;

/// Entries in the LPM tries shared by all agents.
pub const NET4_MAX_ENTRIES: u32 = 262_144;
pub const NET6_MAX_ENTRIES: u32 = 262_144;
pub const UNIX_MAX_ENTRIES: u32 = 16_384;
/// Entries in the LPM tries of `listen` rules (local addresses an agent may
/// bind and listen on); far fewer than egress rules in practice.
pub const LISTEN4_MAX_ENTRIES: u32 = 65_536;
pub const LISTEN6_MAX_ENTRIES: u32 = 65_536;
/// Listening sockets whose refused inbound packets were already reported
/// (keyed by socket cookie, least recently used evicted): one record per
/// socket, not one per SYN an outsider sends.
pub const LISTEN_SEEN_ENTRIES: u32 = 16_384;
/// Sockets whose source-routed packets were already reported (keyed by
/// socket cookie): one record per socket, however many packets it sends.
pub const ROUTE_SEEN_ENTRIES: u32 = 16_384;

// ---- agent table ------------------------------------------------------------

/// `AgentInfo::flags`: allow everything, report what would have been denied.
pub const AGENT_AUDIT: u32 = 1 << 0;
/// `AgentInfo::flags`: the scope is being torn down; deny without reporting
/// the same event twice.
pub const AGENT_CLOSING: u32 = 1 << 1;
/// `AgentInfo::flags`: the policy restricts programs (a `[filesystem]`
/// table): running the dynamic loader as a program is killed.
pub const AGENT_RESTRICT_EXEC: u32 = 1 << 2;
/// `AgentInfo::flags`: the agent's DNS goes to guardd's resolver for it.
/// Every connect/sendmsg to port 53 (TCP or UDP, any address) is redirected
/// to `DNS_PROXY_V4`/`DNS_PROXY_V6` port `AgentInfo::dns_port`, and the
/// replies' source is shown as the address the agent asked (recvmsg hooks).
pub const AGENT_DNS: u32 = 1 << 3;
/// `AgentInfo::flags`: every program started in the scope must run with the
/// layers the launcher applies (a seccomp filter, `no_new_privs`, no
/// effective or permitted capability beyond `AgentInfo::caps`). An exec
/// without them is killed before its first instruction
/// (`REASON_UNCONFINED`). guardd sets it for every agent it opens: a
/// launcher it does not control (the `guardctl` in a workload's image)
/// cannot skip them silently.
pub const AGENT_LAYERS_REQUIRED: u32 = 1 << 4;
/// `AgentInfo::flags`: learn mode (`guardctl run --learn`, issue 14). Every
/// successful path call that needs a file grant under a policy (opens,
/// creations, removals, renames, links; `PATH_ARG_LEARN`) and every
/// `inotify_add_watch` is reported as an `EVENT_OBSERVED`, so that guardd
/// can draft the file rules. Set together with `AGENT_AUDIT`; only read
/// while `Config::learning` is non-zero.
pub const AGENT_LEARN: u32 = 1 << 5;

/// Value of the `AGENTS` hash map, keyed by the cgroup id of the agent's
/// scope (the current task's ancestor at `Config::agent_level`, or at
/// another level of `Config::scope_levels`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentInfo {
    pub slot: u32,
    pub flags: u32,
    /// Denials (or audit verdicts) decided by guard's network programs.
    /// Updated atomically by the programs; user space only reads it.
    pub denied: u64,
    /// Events that could not be written to the ring buffer (it was full).
    pub lost: u64,
    /// Events written to the ring buffer: when the monitor has read this
    /// many for the agent, its journal is complete.
    pub events: u64,
    /// Port of guardd's resolver for this agent on `DNS_PROXY_V4` and
    /// `DNS_PROXY_V6` (host byte order); used when `flags` has `AGENT_DNS`.
    pub dns_port: u32,
    pub _pad: u32,
    /// Capabilities the policy grants (bit n: capability n), the only ones
    /// a program of the scope may hold, effective or permitted, when it
    /// starts; checked with `AGENT_LAYERS_REQUIRED`.
    pub caps: u64,
}

/// Value of the single-entry `CONFIG` array.
///
/// The offsets come from the running kernel's BTF (guardd reads them at
/// start-up): the programs read a few kernel structs with
/// `bpf_probe_read_kernel`, and hard-coded offsets would silently read the
/// wrong field on another kernel build.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// cgroup level of the agent scopes under guard's parent (root = 0): the
    /// programs attribute a task to its agent through
    /// `bpf_get_current_ancestor_cgroup_id(level)`, so nested cgroups an
    /// agent might create stay attributed to it.
    pub agent_level: u32,
    /// `struct bpf_sock_addr_kern`: where the Unix hooks find the address.
    pub sa_kern_uaddr_off: u32,
    pub sa_kern_uaddrlen_off: u32,
    /// `struct linux_binprm.filename`.
    pub bprm_filename_off: u32,
    /// `struct task_struct.mm`, `struct mm_struct.arg_start/arg_end`.
    pub task_mm_off: u32,
    pub mm_arg_start_off: u32,
    pub mm_arg_end_off: u32,
    /// `struct pt_regs`: the system call number and its six arguments.
    pub regs_orig_ax_off: u32,
    pub regs_arg_off: [u32; 6],
    /// `linux_binprm.file`, `file.f_inode`, `inode.i_ino`, `inode.i_sb`,
    /// `super_block.s_dev`: which file an exec runs.
    pub bprm_file_off: u32,
    pub file_inode_off: u32,
    pub inode_ino_off: u32,
    pub inode_sb_off: u32,
    pub sb_dev_off: u32,
    /// Entries of `loader_dev`/`loader_ino` in use.
    pub loader_count: u32,
    /// The host's dynamic loaders (kernel `dev_t`, inode number). Run as the
    /// program itself (not as an interpreter), a loader maps any readable
    /// file executable: such an exec in a scope is killed (issue 7).
    pub loader_dev: [u32; MAX_LOADERS],
    pub loader_ino: [u64; MAX_LOADERS],
    /// `struct task_struct.seccomp.mode`: tells a seccomp kill from a SIGSYS
    /// the agent sends itself, and whether an exec'd program runs under a
    /// seccomp filter.
    pub task_seccomp_off: u32,
    /// `struct task_struct.real_parent` and `.tgid`: the parent of a refused
    /// call's process, whose program a forked child still runs.
    pub task_real_parent_off: u32,
    pub task_tgid_off: u32,
    /// `struct mm_struct.exe_file`: the program a refused exec's caller
    /// runs, identified in the kernel (its `/proc/<pid>/exe` may be gone by
    /// the time guardd reads the event).
    pub mm_exe_file_off: u32,
    /// `task_struct.files`, `files_struct.fdt`, `fdtable.fd`,
    /// `fdtable.max_fds`: the file a directory descriptor names; and
    /// `task_struct.fs`, `fs_struct.pwd`, `path.dentry`, `dentry.d_inode`:
    /// the working directory. A refused call's relative path is judged
    /// against the directory identified here, not against guardd's later
    /// reading of `/proc/<pid>/cwd` (issue 8, section 7).
    pub task_files_off: u32,
    pub files_fdt_off: u32,
    pub fdt_fd_off: u32,
    pub fdt_max_fds_off: u32,
    pub task_fs_off: u32,
    pub fs_pwd_off: u32,
    pub path_dentry_off: u32,
    pub dentry_inode_off: u32,
    /// `task_struct.atomic_flags` (bit `PFA_NO_NEW_PRIVS`), `task_struct.cred`,
    /// `cred.cap_effective` and `cred.cap_permitted`: what an exec'd program
    /// of an agent with `AGENT_LAYERS_REQUIRED` runs with. Each capability
    /// set is read as one little-endian u64 (guardd checks that the
    /// kernel's `kernel_cap_t` is 8 bytes: a `u64 val` since 6.3, `u32
    /// cap[2]` before, the same bits).
    pub task_atomic_flags_off: u32,
    pub task_cred_off: u32,
    pub cred_cap_effective_off: u32,
    pub cred_cap_permitted_off: u32,
    /// cgroup levels where some agent scope lives: bit L set = a scope at
    /// level L. The `agent_level` bit is always set (scopes under guard's
    /// parent); other bits are scopes created under a caller's own cgroup
    /// (issue 13), whose level differs. The programs look at `agent_level`
    /// first and at the other levels only when that finds no agent. Only
    /// levels below `MAX_SCOPE_LEVELS` are searched.
    pub scope_levels: u64,
    /// Live agents in learn mode (`AGENT_LEARN`). While it is zero, a
    /// successful system call costs `sys_exit` this one comparison and no
    /// agent lookup.
    pub learning: u32,
    /// `struct linux_binprm.interp`: the file the kernel runs for an exec
    /// (a script's `#!` interpreter), reported with the exec.
    pub bprm_interp_off: u32,
}

/// Scope levels the programs search (`Config::scope_levels`): the loop that
/// tries them is bounded by this, and guardd refuses a scope deeper down.
pub const MAX_SCOPE_LEVELS: u32 = 32;

/// Dynamic loader identities `Config` holds.
pub const MAX_LOADERS: usize = 4;

// ---- network rules ----------------------------------------------------------

/// Protocol bits in `PortRange::protos`.
pub const PROTO_TCP: u8 = 1 << 0;
pub const PROTO_UDP: u8 = 1 << 1;

/// An inclusive port range allowed for the given protocols.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
    pub protos: u8,
    /// `RANGE_*` bits.
    pub flags: u8,
    /// Index of the policy rule (`network.allow[i]`) this range comes from.
    pub rule: u16,
}

/// `PortRange::flags`: the range comes from a host-name rule, written for
/// an address a DNS answer gave (it expires with the answer). The first
/// connection it allows per (agent, address, port, protocol) is reported
/// with verdict allowed, so the journal names the host rule.
pub const RANGE_NAME: u8 = 1 << 0;

/// `NetValue::cidr_rule` of the entries guardd writes for well-known
/// DNS-over-HTTPS resolvers when an agent's DNS goes through guardd: only a
/// rule naming exactly that address reaches it, not a broader CIDR rule.
pub const RULE_DOH: u32 = u32::MAX - 1;

// ---- DNS --------------------------------------------------------------------

/// The port every DNS query is redirected from.
pub const DNS_PORT: u16 = 53;
/// Where guardd's per-agent resolvers listen (each agent on its own port).
pub const DNS_PROXY_V4: [u8; 4] = [127, 0, 0, 1];
pub const DNS_PROXY_V6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// Entries of `DNS_PORTS` (resolver port -> slot): one per agent.
pub const DNS_PORTS_ENTRIES: u32 = MAX_AGENTS;
/// Sockets whose DNS was redirected, by cookie (`DNS_ORIG`).
pub const DNS_ORIG_ENTRIES: u32 = 65_536;
/// (agent, address, port, protocol) already reported as allowed by a host
/// rule (`NAME_SEEN`).
pub const NAME_SEEN_ENTRIES: u32 = 65_536;

/// Value of `DNS_ORIG`, keyed by socket cookie: the destination the agent
/// gave before the hook redirected it to its resolver, which the recvmsg
/// hooks show as the source of the replies. An unspecified address is kept
/// as the loopback address the kernel would have sent to (and received the
/// reply from).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsOrig {
    /// `AF_INET` or `AF_INET6`: the family of the hook that redirected. A
    /// v4-mapped address given to an IPv6 socket's connect is kept as given,
    /// in `addr`; a datagram an IPv6 socket sends to one passes the IPv4
    /// sendmsg hook (the kernel hands it to UDP over IPv4), so it is kept
    /// as `AF_INET`, and `recvmsg6` maps it again.
    pub family: u32,
    /// As in `bpf_sock_addr::user_port` (network byte order in the low 16
    /// bits).
    pub port: u32,
    /// IPv4 in the first 4 bytes, or the 16 bytes of the IPv6 address.
    pub addr: [u8; 16],
}

/// Key of `NAME_SEEN`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameSeenKey {
    pub slot: u32,
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// `AF_INET` or `AF_INET6` as a byte.
    pub family: u8,
    pub addr: [u8; 16],
}

/// Value of the LPM tries. User space stores, for every prefix it inserts,
/// the union of the port ranges of that prefix *and of every enclosing
/// prefix of the same agent*: a longest-prefix lookup then yields exactly the
/// ranges of all rules that cover the address, so overlapping rules with
/// different ports cannot shadow each other.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetValue {
    pub count: u32,
    /// Rule index of the prefix itself, reported when the address matched a
    /// rule's CIDR but no port/protocol did.
    pub cidr_rule: u32,
    pub ranges: [PortRange; MAX_PORT_RANGES],
}

impl Default for NetValue {
    fn default() -> Self {
        Self {
            count: 0,
            cidr_rule: NO_RULE,
            ranges: [PortRange::default(); MAX_PORT_RANGES],
        }
    }
}

/// Rule index meaning "no rule matched": the default deny decided.
pub const NO_RULE: u32 = u32::MAX;

/// Data part of an IPv4 LPM key. The prefix length of the full key is
/// `32 + cidr_bits`: the slot is always matched in full.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Net4Key {
    pub slot: u32,
    pub addr: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Net6Key {
    pub slot: u32,
    pub addr: [u8; 16],
}

/// Prefix bits of the slot in both LPM keys.
pub const SLOT_PREFIX_BITS: u32 = 32;

/// Slot bit of an agent's live grants (`guardctl grant`) in `NET4`/`NET6`:
/// entries under `slot | GRANT_SLOT` are folded apart from the policy's and
/// looked up only when the policy's entries refuse, so adding or removing a
/// grant never rewrites a policy or resolver entry.
pub const GRANT_SLOT: u32 = 1 << 31;

/// Key of the `UNIX` hash map: a socket address the agent may reach.
/// `path` holds the pathname (NUL padded) or, for abstract sockets, a leading
/// NUL followed by the name, padded with NULs after `len` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixKey {
    pub slot: u32,
    pub path: [u8; UNIX_PATH_MAX],
}

impl Default for UnixKey {
    fn default() -> Self {
        Self {
            slot: 0,
            path: [0; UNIX_PATH_MAX],
        }
    }
}

// ---- events -----------------------------------------------------------------

pub const EVENT_NET: u16 = 1;
pub const EVENT_SOCK: u16 = 2;
pub const EVENT_UNIX: u16 = 3;
pub const EVENT_EXEC: u16 = 4;
pub const EVENT_SYSCALL: u16 = 5;
pub const EVENT_KILL: u16 = 6;
/// A refused `execve`/`execveat`: a `SyscallEvent` followed by the
/// program's arguments (`ExecRefusedEvent`).
pub const EVENT_EXEC_REFUSED: u16 = 7;
/// A successful path call of an agent in learn mode (`AGENT_LEARN`): a
/// `SyscallEvent` with verdict `VERDICT_AUDIT` and `ret` the call's result.
pub const EVENT_OBSERVED: u16 = 8;

pub const VERDICT_DENIED: u8 = 1;
pub const VERDICT_AUDIT: u8 = 2;
pub const VERDICT_ALLOWED: u8 = 3;

/// Which hook saw the event (`NetEvent::hook`, `UnixEvent::hook`).
pub const HOOK_CONNECT4: u8 = 1;
pub const HOOK_CONNECT6: u8 = 2;
pub const HOOK_SENDMSG4: u8 = 3;
pub const HOOK_SENDMSG6: u8 = 4;
pub const HOOK_SOCK_CREATE: u8 = 5;
pub const HOOK_CONNECT_UNIX: u8 = 6;
pub const HOOK_SENDMSG_UNIX: u8 = 7;
/// `cgroup/bind4`, `cgroup/bind6`: the local address a socket binds to.
pub const HOOK_BIND4: u8 = 8;
pub const HOOK_BIND6: u8 = 9;
/// `cgroup_skb/ingress`: a packet for a TCP socket in LISTEN state (also one
/// that listen() bound implicitly, which no bind hook sees).
pub const HOOK_INGRESS: u8 = 10;
/// `cgroup_skb/egress`: a packet of an agent whose wire destination can
/// differ from the address the hooks judged (issue 8, section 4). For this
/// hook `NetEvent::addr` is the final destination the header names (what
/// connect/sendmsg judged), `orig_addr` the packet's own destination
/// address (the first hop), and `rule` holds no policy rule but what was
/// dropped: the routing header type (reason `REASON_ROUTING_HEADER`) or the
/// first IPv4 option byte (reason `REASON_IP_OPTIONS`).
pub const HOOK_EGRESS: u8 = 11;

/// Why the program denied, beyond "no rule": attribution for the journal.
pub const REASON_NO_RULE: u8 = 0;
/// The task's agent-level ancestor cgroup is not a known scope.
pub const REASON_UNKNOWN_SCOPE: u8 = 1;
/// The address matched a rule's CIDR but not its ports or protocol.
pub const REASON_PORT: u8 = 2;
/// A transport other than TCP or UDP.
pub const REASON_PROTOCOL: u8 = 3;
/// A socket type that bypasses the address hooks (raw, ICMP, ...).
pub const REASON_SOCKET_TYPE: u8 = 4;
/// An exec of the dynamic loader itself (`ExecEvent`, verdict denied): the
/// process was killed before its first instruction.
pub const REASON_DIRECT_LOADER: u8 = 5;
/// An IPv6 packet with a Routing header (or an extension chain too long to
/// judge), dropped by `cgroup_skb/egress`.
pub const REASON_ROUTING_HEADER: u8 = 6;
/// An IPv4 packet with IP options (source routing among them), dropped by
/// `cgroup_skb/egress`.
pub const REASON_IP_OPTIONS: u8 = 7;
/// A connect or datagram straight to the port of another agent's resolver
/// (`DNS_PORTS`): refused whatever the policy allows, in audit mode too.
pub const REASON_DNS_PROXY: u8 = 8;
/// A program started in a scope with `AGENT_LAYERS_REQUIRED` without the
/// launcher's layers (`ExecEvent`, verdict denied; `ExecEvent::missing`
/// says which): the process was killed before its first instruction.
pub const REASON_UNCONFINED: u8 = 9;

/// Common head of every event in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u16,
    pub verdict: u8,
    pub reason: u8,
    pub slot: u32,
    /// When the kernel saw the event: `CLOCK_BOOTTIME` nanoseconds
    /// (`bpf_ktime_get_boot_ns`), which keeps counting across suspend, so
    /// guardd can turn it into wall-clock time however long the event
    /// waited in the ring buffer (guardd down, a burst).
    pub ts_ns: u64,
    /// cgroup id of the agent's scope (or of the unknown ancestor).
    pub cgroup_id: u64,
    pub tgid: u32,
    pub pid: u32,
    pub comm: [u8; 16],
}

/// A connect or sendmsg judged by the inet hooks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetEvent {
    pub hdr: EventHeader,
    pub hook: u8,
    /// Family of the address that was judged (AF_INET or AF_INET6).
    pub family: u8,
    /// `IPPROTO_*` of the socket.
    pub protocol: u8,
    /// Set when the address given differs from the one judged (an
    /// IPv4-mapped IPv6 address, or an unspecified address that the kernel
    /// turns into loopback); `orig_addr` then holds what the caller wrote.
    pub rewritten: u8,
    pub port: u16,
    pub sock_type: u16,
    pub rule: u32,
    pub orig_family: u32,
    pub addr: [u8; 16],
    pub orig_addr: [u8; 16],
}

/// A socket refused at creation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockEvent {
    pub hdr: EventHeader,
    pub family: u32,
    pub sock_type: u32,
    pub protocol: u32,
    pub _pad: u32,
}

/// A connect or sendmsg to a Unix socket address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixEvent {
    pub hdr: EventHeader,
    pub hook: u8,
    pub _pad: [u8; 3],
    /// Bytes of `path` that the caller supplied (after `sun_family`).
    pub path_len: u32,
    pub path: [u8; UNIX_PATH_MAX],
    pub _pad2: [u8; 4],
}

impl Default for UnixEvent {
    fn default() -> Self {
        Self {
            hdr: EventHeader::default(),
            hook: 0,
            _pad: [0; 3],
            path_len: 0,
            path: [0; UNIX_PATH_MAX],
            _pad2: [0; 4],
        }
    }
}

/// Bytes of an exec'd file name and of its arguments kept in an event;
/// longer ones are cut (and flagged by the length fields).
pub const EXEC_FILENAME_MAX: usize = 256;
pub const EXEC_ARGS_MAX: usize = 512;
pub const SYSCALL_PATH_MAX: usize = 256;

/// A program started in a scope (`sched_process_exec`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    pub hdr: EventHeader,
    /// Bytes copied into `filename` (with its NUL), 0 when unreadable.
    pub filename_len: u32,
    /// Total length of the argument area (NUL-separated), which may exceed
    /// what `args` holds.
    pub args_len: u32,
    pub filename: [u8; EXEC_FILENAME_MAX],
    pub args: [u8; EXEC_ARGS_MAX],
    /// With reason `REASON_UNCONFINED`: the `LAYER_*` bits of what the
    /// program started without; 0 otherwise.
    pub missing: u32,
    pub _pad: u32,
    /// With `LAYER_CAPABILITIES`: the capabilities beyond `AgentInfo::caps`
    /// (bit n: capability n) held effective or permitted, the union of
    /// `excess_effective` and `excess_permitted`.
    pub excess_caps: u64,
    /// The effective capabilities beyond `AgentInfo::caps`.
    pub excess_effective: u64,
    /// The permitted capabilities beyond `AgentInfo::caps`: ones the
    /// program can make effective itself (capset()).
    pub excess_permitted: u64,
    /// Bytes copied into `interp` (with its NUL); 0 when the kernel runs
    /// the file named (`bprm->interp` is `bprm->filename`) or it could not
    /// be read.
    pub interp_len: u32,
    pub _pad2: u32,
    /// What the kernel runs when it differs from `filename`: the
    /// interpreter of a `#!` script (after binfmt_script), as the kernel
    /// read it from the script at this exec.
    pub interp: [u8; EXEC_FILENAME_MAX],
}

/// `ExecEvent::missing`: the task had no seccomp filter (mode not
/// `SECCOMP_MODE_FILTER`).
pub const LAYER_SECCOMP: u32 = 1 << 0;
/// `ExecEvent::missing`: `no_new_privs` was not set.
pub const LAYER_NO_NEW_PRIVS: u32 = 1 << 1;
/// `ExecEvent::missing`: effective or permitted capabilities beyond the
/// policy's (`ExecEvent::excess_caps`).
pub const LAYER_CAPABILITIES: u32 = 1 << 2;
/// `ExecEvent::missing`: the task's seccomp mode, flags or credentials
/// could not be read, so the layers could not be checked (killed anyway).
pub const LAYER_UNREADABLE: u32 = 1 << 3;
/// `SECCOMP_MODE_FILTER`: the task runs under a seccomp filter.
pub const SECCOMP_MODE_FILTER: i32 = 2;
/// `PFA_NO_NEW_PRIVS`: bit of `task_struct.atomic_flags`.
pub const PFA_NO_NEW_PRIVS: u32 = 0;

/// A system call that failed with a refusal errno in a scope (`sys_exit`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallEvent {
    pub hdr: EventHeader,
    pub nr: u32,
    pub ret: i32,
    pub args: [u64; 6],
    /// Index of the argument `path` was read from (`PATH_ARG` map), or
    /// `NO_PATH`.
    pub path_arg: u32,
    /// Bytes copied into `path` (with its NUL), 0 when none or unreadable.
    pub path_len: u32,
    /// The calling process's parent (tgid): a process that forked and
    /// never exec'd runs its parent's program, and may be gone before
    /// guardd can read its `/proc/<pid>/exe`.
    pub ppid: u32,
    /// `PATH_*` bits: which of the fields below hold something.
    pub path_flags: u32,
    /// The path argument as read from the caller's memory at exit.
    pub path: [u8; SYSCALL_PATH_MAX],
    /// The same argument as read at the call's entry (`sys_enter`), before
    /// the kernel copied it: two readings that differ mean another thread
    /// rewrote the buffer while the call ran (`PATH_ENTRY` set).
    pub entry_len: u32,
    /// Kernel `dev_t` (major << 20 | minor) of the directory a relative
    /// path starts from: the directory descriptor's file, or the working
    /// directory (`PATH_BASE` set), read from the task at exit.
    pub base_dev: u32,
    pub base_ino: u64,
    pub entry: [u8; SYSCALL_PATH_MAX],
}

/// `SyscallEvent::path_flags`: `entry` holds the reading at entry.
pub const PATH_ENTRY: u32 = 1 << 0;
/// `SyscallEvent::path_flags`: `base_dev`/`base_ino` identify the base
/// directory.
pub const PATH_BASE: u32 = 1 << 1;
/// `PATH_ARG` value bit: the argument before the path is a directory
/// descriptor (`*at` calls) that a relative path is resolved against.
pub const PATH_ARG_DIRFD: u32 = 1 << 4;
/// `PATH_ARG` value bit: in learn mode a successful call is reported
/// (`EVENT_OBSERVED`): the calls whose path needs a file grant under a
/// policy (opens, creations, removals, renames, links) and
/// `inotify_add_watch`, not the metadata reads (stat, access, readlink)
/// that no grant governs.
pub const PATH_ARG_LEARN: u32 = 1 << 5;
/// `AT_FDCWD`: a relative path of an `*at` call starts at the working
/// directory.
pub const AT_FDCWD: i32 = -100;

/// Arguments of a refused exec kept per event, and bytes kept of each (with
/// its NUL); longer ones are cut and flagged in `ExecArgv::cut`.
pub const EXEC_ARGV_MAX: usize = 16;
pub const EXEC_ARG_BYTES: usize = 128;

/// `ExecArgv::flags`: `argv` has more entries than `EXEC_ARGV_MAX`.
pub const ARGV_MORE: u32 = 1 << 0;
/// `ExecArgv::flags`: an `argv` pointer could not be read; the list ends
/// early.
pub const ARGV_FAULT: u32 = 1 << 1;
/// `ExecArgv::flags`: `exe_dev`/`exe_ino` identify the caller's program.
pub const ARGV_EXE: u32 = 1 << 2;

/// The arguments of a refused exec, read from the caller's memory when the
/// call returns. The kernel refuses an exec (Landlock, a noexec mount,
/// seccomp) before it copies `argv`, so nothing the kernel used could be
/// read instead; this is what the program asked to run.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecArgv {
    /// Entries of `args` filled (the first `count` of `argv`).
    pub count: u32,
    /// `ARGV_*` bits.
    pub flags: u32,
    /// Bit i: argument i was longer than `EXEC_ARG_BYTES - 1` and was cut.
    pub cut: u32,
    /// The caller's own program (`mm->exe_file`): kernel `dev_t` and inode
    /// number, valid when `ARGV_EXE` is set. guardd names it only with a
    /// path whose identity matches.
    pub exe_dev: u32,
    pub exe_ino: u64,
    /// Bytes copied into `args[i]` with the NUL; 0 when unreadable.
    pub lens: [u32; EXEC_ARGV_MAX],
    pub args: [[u8; EXEC_ARG_BYTES]; EXEC_ARGV_MAX],
}

/// `EVENT_EXEC_REFUSED`: a refused `execve`/`execveat` with its arguments.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecRefusedEvent {
    pub sys: SyscallEvent,
    pub argv: ExecArgv,
}

/// A path argument read at a call's entry, kept per thread until its exit
/// (`ENTRY_PATHS` map).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryPath {
    pub nr: u32,
    pub len: u32,
    /// The user address it was read from: an exit whose argument points
    /// elsewhere is not the same call.
    pub ptr: u64,
    pub path: [u8; SYSCALL_PATH_MAX],
}

/// Threads whose path argument is held between entry and exit. Refused
/// calls are rare; successful ones leave their entry behind to be evicted
/// (least recently used), so this bounds memory, not correctness: a
/// missing entry makes the record unverified, never wrong.
pub const ENTRY_PATHS_ENTRIES: u32 = 16_384;

/// A process of a scope killed by a guard layer (today: seccomp's
/// `SECCOMP_RET_KILL_PROCESS`, taken from `signal_generate`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KillEvent {
    pub hdr: EventHeader,
    pub signal: u32,
    /// `si_code` of the signal (`SYS_SECCOMP` = 1 for seccomp).
    pub code: i32,
    /// The system call and the `AUDIT_ARCH_*` it was made with.
    pub syscall: i32,
    pub arch: u32,
}

/// `si_code` of a SIGSYS sent by seccomp.
pub const SYS_SECCOMP: i32 = 1;
/// `SECCOMP_MODE_DEAD`: set on a task just before seccomp kills it.
pub const SECCOMP_MODE_DEAD: i32 = 3;
/// Threads whose current system call an address hook refused; the
/// `sys_exit` program leaves those EPERMs to the hook's own record.
pub const HOOK_DENIED_ENTRIES: u32 = 8192;
/// How long a hook's mark stays valid for the system call that follows it.
/// The mark is taken at the call's exit; the window only retires a mark a
/// call left behind without ending in EPERM (a `sendmmsg` that sent some
/// messages). It must outlast any preemption between the hook and the exit:
/// the hook's own event wakes guardd, which may take the CPU at once, and
/// 5 ms proved too short on a loaded two-CPU host (a refusal journaled
/// twice). A stale mark can hide, for this long, one EPERM of that thread
/// that no hook caused; the call is still refused.
pub const HOOK_DENIED_WINDOW_NS: u64 = 1_000_000_000;

/// `PATH_ARG` value for calls without a path argument.
pub const NO_PATH: u32 = 0xff;
/// Entries of the `PATH_ARG` array (system call numbers).
pub const PATH_ARG_ENTRIES: u32 = 512;

/// Socket constants the programs need (not all in aya-ebpf's bindings).
pub const AF_UNIX: u32 = 1;
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
/// Allowed to agents by seccomp for `NETLINK_ROUTE` only (libc's
/// getaddrinfo/getifaddrs).
pub const AF_NETLINK: u32 = 16;
pub const SOCK_STREAM: u32 = 1;
pub const SOCK_DGRAM: u32 = 2;
pub const SOCK_RAW: u32 = 3;
pub const IPPROTO_ICMP: u32 = 1;
pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;
pub const IPPROTO_ICMPV6: u32 = 58;

/// Socket options that make the kernel route a packet elsewhere than the
/// address connect/sendmsg judged (or that carry such headers), refused by
/// `cgroup/setsockopt` (issue 8, section 4). `SOL_IP`/`SOL_IPV6` levels.
pub const SOL_IP: i32 = 0;
pub const SOL_IPV6: i32 = 41;
/// `IP_OPTIONS`: IPv4 options, source routing (LSRR/SSRR) among them.
pub const IP_OPTIONS: i32 = 4;
/// RFC 2292 forms: hop-by-hop, destination options, routing header, and
/// `IPV6_2292PKTOPTIONS`, which sets any of them as a control-message list.
pub const IPV6_2292HOPOPTS: i32 = 3;
pub const IPV6_2292DSTOPTS: i32 = 4;
pub const IPV6_2292RTHDR: i32 = 5;
pub const IPV6_2292PKTOPTIONS: i32 = 6;
/// RFC 3542 forms.
pub const IPV6_HOPOPTS: i32 = 54;
pub const IPV6_RTHDRDSTOPTS: i32 = 55;
pub const IPV6_RTHDR: i32 = 57;
pub const IPV6_DSTOPTS: i32 = 59;

/// Whether `setsockopt(level, optname)` sets extension headers or IP
/// options that can steer a packet away from its judged destination.
pub const fn is_route_option(level: i32, optname: i32) -> bool {
    match level {
        SOL_IP => optname == IP_OPTIONS,
        SOL_IPV6 => matches!(
            optname,
            IPV6_2292HOPOPTS
                | IPV6_2292DSTOPTS
                | IPV6_2292RTHDR
                | IPV6_2292PKTOPTIONS
                | IPV6_HOPOPTS
                | IPV6_RTHDRDSTOPTS
                | IPV6_RTHDR
                | IPV6_DSTOPTS
        ),
        _ => false,
    }
}

// ---- layout checks ------------------------------------------------------------

const _: () = {
    assert!(core::mem::size_of::<AgentInfo>() == 48);
    assert!(core::mem::size_of::<DnsOrig>() == 24);
    assert!(core::mem::size_of::<NameSeenKey>() == 24);
    assert!(
        core::mem::size_of::<Config>()
            == 56 + 24 + 4 * MAX_LOADERS + 8 * MAX_LOADERS + 16 + 32 + 16 + 8 + 8
    );
    assert!(core::mem::size_of::<KillEvent>() == 48 + 16);
    assert!(core::mem::size_of::<ExecEvent>() == 48 + 8 + 256 + 512 + 32 + 8 + 256);
    assert!(core::mem::size_of::<SyscallEvent>() == 48 + 8 + 48 + 8 + 8 + 256 + 16 + 256);
    assert!(core::mem::size_of::<EntryPath>() == 16 + 256);
    assert!(
        core::mem::size_of::<ExecArgv>() == 24 + 4 * EXEC_ARGV_MAX + EXEC_ARG_BYTES * EXEC_ARGV_MAX
    );
    assert!(
        core::mem::size_of::<ExecRefusedEvent>()
            == core::mem::size_of::<SyscallEvent>() + core::mem::size_of::<ExecArgv>()
    );
    assert!(core::mem::size_of::<PortRange>() == 8);
    assert!(core::mem::size_of::<NetValue>() == 8 + 8 * MAX_PORT_RANGES);
    assert!(core::mem::size_of::<Net4Key>() == 8);
    assert!(core::mem::size_of::<Net6Key>() == 20);
    assert!(core::mem::size_of::<UnixKey>() == 112);
    assert!(core::mem::size_of::<EventHeader>() == 48);
    assert!(core::mem::size_of::<NetEvent>() == 48 + 48);
    assert!(core::mem::size_of::<SockEvent>() == 64);
    assert!(core::mem::size_of::<UnixEvent>() == 48 + 8 + 108 + 4);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is `repr(C)`, made only of integers and
    // integer arrays, with explicit padding fields (checked by the size
    // assertions above), so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::AgentInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Net4Key {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Net6Key {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UnixKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExecEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SyscallEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KillEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EntryPath {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExecRefusedEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NameSeenKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DnsOrig {}
}
