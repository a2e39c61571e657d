//! Maps shared by every program. guardd creates them once (through aya, from
//! the main object) and pins them; the Unix-hook object refers to the same
//! maps by name and guardd hands it their descriptors.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use guard_common::{
    AgentInfo, Config, DNS_ORIG_ENTRIES, DNS_PORTS_ENTRIES, DnsOrig, ENTRY_PATHS_ENTRIES,
    EVENTS_RING_BYTES, EntryPath, HOOK_DENIED_ENTRIES, LISTEN_SEEN_ENTRIES, LISTEN4_MAX_ENTRIES,
    LISTEN6_MAX_ENTRIES, MAX_AGENTS, NAME_SEEN_ENTRIES, NET4_MAX_ENTRIES, NET6_MAX_ENTRIES,
    NameSeenKey, Net4Key, Net6Key, NetValue, PATH_ARG_ENTRIES, ROUTE_SEEN_ENTRIES,
    UNIX_MAX_ENTRIES, UnixKey,
};

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map]
pub static AGENTS: HashMap<u64, AgentInfo> = HashMap::with_max_entries(MAX_AGENTS, 0);

#[map]
pub static NET4: LpmTrie<Net4Key, NetValue> = LpmTrie::with_max_entries(NET4_MAX_ENTRIES, 0);

#[map]
pub static NET6: LpmTrie<Net6Key, NetValue> = LpmTrie::with_max_entries(NET6_MAX_ENTRIES, 0);

/// Local addresses and ports an agent may bind and listen on (`listen`
/// rules), folded like `NET4`/`NET6`.
#[map]
pub static LISTEN4: LpmTrie<Net4Key, NetValue> = LpmTrie::with_max_entries(LISTEN4_MAX_ENTRIES, 0);

#[map]
pub static LISTEN6: LpmTrie<Net6Key, NetValue> = LpmTrie::with_max_entries(LISTEN6_MAX_ENTRIES, 0);

/// Cookies of listening sockets whose refused packets were reported.
#[map]
pub static LISTEN_SEEN: LruHashMap<u64, u8> = LruHashMap::with_max_entries(LISTEN_SEEN_ENTRIES, 0);

/// Cookies of sockets whose source-routed packets were reported.
#[map]
pub static ROUTE_SEEN: LruHashMap<u64, u8> = LruHashMap::with_max_entries(ROUTE_SEEN_ENTRIES, 0);

/// Resolver port (host byte order) -> slot of the agent it serves, filled
/// by guardd: no agent reaches another agent's resolver.
#[map]
pub static DNS_PORTS: HashMap<u32, u32> = HashMap::with_max_entries(DNS_PORTS_ENTRIES, 0);

/// Socket cookie -> where the agent sent its last redirected DNS query, so
/// that the recvmsg hooks show the replies as coming from there.
#[map]
pub static DNS_ORIG: LruHashMap<u64, DnsOrig> = LruHashMap::with_max_entries(DNS_ORIG_ENTRIES, 0);

/// (agent, address, port, protocol) whose first connection through a
/// host-name rule was reported.
#[map]
pub static NAME_SEEN: LruHashMap<NameSeenKey, u8> =
    LruHashMap::with_max_entries(NAME_SEEN_ENTRIES, 0);

/// Unix socket addresses an agent may connect or send to; the value is the
/// index of the rule that allows it.
#[map]
pub static UNIX: HashMap<UnixKey, u32> = HashMap::with_max_entries(UNIX_MAX_ENTRIES, 0);

/// For each system call number, which argument is a path (or `NO_PATH`);
/// filled by guardd.
#[map]
pub static PATH_ARG: Array<u32> = Array::with_max_entries(PATH_ARG_ENTRIES, 0);

/// Thread id → time an address hook refused that thread's current call
/// (see `common::mark_hook_denied`).
#[map]
pub static HOOK_DENIED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(HOOK_DENIED_ENTRIES, 0);

/// Thread id → the path argument of its current call as read at entry
/// (`proc::on_sys_enter`), compared at exit with a second reading.
#[map]
pub static ENTRY_PATHS: LruHashMap<u32, EntryPath> =
    LruHashMap::with_max_entries(ENTRY_PATHS_ENTRIES, 0);

/// Where `on_sys_enter` builds an `EntryPath`: too large for the BPF stack
/// next to everything else.
#[map]
pub static ENTRY_SCRATCH: PerCpuArray<EntryPath> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);
