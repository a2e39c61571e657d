//! What every hook does the same way: find the agent a task belongs to, fill
//! the event header, and count what could not be reported.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_ktime_get_boot_ns, bpf_skb_ancestor_cgroup_id,
        },
    },
};
use guard_common::{AgentInfo, EventHeader, HOOK_DENIED_WINDOW_NS, MAX_SCOPE_LEVELS};

use crate::maps::{AGENTS, CONFIG, HOOK_DENIED};

/// Marks the current thread's system call as refused by an address hook,
/// which journals the refusal itself. `sys_exit` then knows that the EPERM
/// it sees came from the hook; any other EPERM of connect/send (a control
/// message or option the kernel refused) is journaled by `sys_exit`.
#[inline(always)]
pub fn mark_hook_denied() {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: a plain BPF helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = HOOK_DENIED.insert(&tid, &now, 0);
}

/// An address hook allowed the current call: a mark left by an earlier call
/// that did not end in EPERM (a `sendmmsg` that sent some messages) must
/// not hide a refusal of this one.
#[inline(always)]
pub fn clear_hook_denied() {
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = HOOK_DENIED.remove(&tid);
}

/// Takes the current thread's mark: whether a hook refused its current call.
#[inline(always)]
#[allow(
    dead_code,
    reason = "the Unix-hook object shares this file and has no sys_exit program"
)]
pub fn take_hook_denied() -> bool {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is copied out at once; a concurrent update by the
    // same thread cannot happen (it is in this system call).
    let marked = match unsafe { HOOK_DENIED.get(&tid) } {
        Some(t) => *t,
        None => return false,
    };
    let _ = HOOK_DENIED.remove(&tid);
    // SAFETY: a plain BPF helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    now.wrapping_sub(marked) < HOOK_DENIED_WINDOW_NS
}

/// The agent a task belongs to, found through its ancestor cgroup at a
/// scopes' level. `info` is null when no ancestor is a known scope: the
/// programs only run under guard's parent cgroup and in scopes guardd
/// attached them to, so that is an anomaly (a scope being removed, or a
/// cgroup guard does not manage) and is denied.
pub struct Agent {
    pub cgroup_id: u64,
    /// The cgroup level the agent was found at (`agent_level` when none).
    #[allow(dead_code, reason = "the Unix-hook object shares this file")]
    pub level: u32,
    pub info: *mut AgentInfo,
}

#[inline(always)]
pub fn current_agent() -> Agent {
    find_agent(core::ptr::null_mut())
}

/// The agent owning a packet's socket, for hooks that find the cgroup
/// through the packet rather than the current task (which, in softirq
/// context, is whoever the CPU was running).
#[inline(always)]
#[allow(dead_code, reason = "the Unix-hook object shares this file")]
pub fn skb_agent(skb: *mut __sk_buff) -> Agent {
    find_agent(skb)
}

/// The cgroup id of the ancestor at `level` of the current task (`skb`
/// null) or of the packet's socket; 0 when the cgroup is not that deep.
#[inline(always)]
fn ancestor_id(skb: *mut __sk_buff, level: u32) -> u64 {
    if skb.is_null() {
        // SAFETY: a plain BPF helper call without pointer arguments.
        unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) }
    } else {
        // SAFETY: `skb` is the calling program's own context.
        unsafe { bpf_skb_ancestor_cgroup_id(skb, level as i32) }
    }
}

/// Tries `agent_level` first: every scope under guard's parent lives there,
/// and for them (and for tasks outside any scope while no scope lives
/// elsewhere) this is the only lookup. Only when it finds no agent are the
/// other levels of `Config::scope_levels` tried (scopes under a caller's
/// cgroup, issue 13), shallowest first. When none is found the result names
/// the ancestor at `agent_level`, as before.
#[inline(always)]
fn find_agent(skb: *mut __sk_buff) -> Agent {
    let (level, others) = match CONFIG.get(0) {
        Some(cfg) => (
            cfg.agent_level,
            cfg.scope_levels & !(1u64 << (cfg.agent_level & 63)),
        ),
        None => (0, 0),
    };
    let first = agent_of(ancestor_id(skb, level), level);
    if !first.info.is_null() || others == 0 {
        return first;
    }
    let mut l: u32 = 0;
    while l < MAX_SCOPE_LEVELS {
        if (others >> l) & 1 != 0 {
            let id = ancestor_id(skb, l);
            if id != 0 {
                let found = agent_of(id, l);
                if !found.info.is_null() {
                    return found;
                }
            }
        }
        l += 1;
    }
    first
}

/// The agent whose scope has this cgroup id, at `level` (`info` null when
/// none).
#[inline(always)]
fn agent_of(cgroup_id: u64, level: u32) -> Agent {
    let info = match AGENTS.get_ptr_mut(&cgroup_id) {
        Some(p) => p,
        None => core::ptr::null_mut(),
    };
    Agent {
        cgroup_id,
        level,
        info,
    }
}

impl Agent {
    #[inline(always)]
    pub fn slot(&self) -> u32 {
        if self.info.is_null() {
            u32::MAX
        } else {
            // SAFETY: non-null pointers come from a map lookup and stay valid
            // for the whole program run (RCU).
            unsafe { (*self.info).slot }
        }
    }

    #[inline(always)]
    #[allow(
        dead_code,
        reason = "the Unix-hook object shares this file and has no audit mode"
    )]
    pub fn flags(&self) -> u32 {
        if self.info.is_null() {
            0
        } else {
            // SAFETY: as in `slot`.
            unsafe { (*self.info).flags }
        }
    }

    /// Capabilities the agent's policy grants (`AgentInfo::caps`).
    #[inline(always)]
    #[allow(dead_code, reason = "the Unix-hook object shares this file")]
    pub fn caps(&self) -> u64 {
        if self.info.is_null() {
            0
        } else {
            // SAFETY: as in `slot`.
            unsafe { (*self.info).caps }
        }
    }

    /// Port of the agent's resolver (meaningful with `AGENT_DNS`).
    #[inline(always)]
    #[allow(dead_code, reason = "the Unix-hook object shares this file")]
    pub fn dns_port(&self) -> u32 {
        if self.info.is_null() {
            0
        } else {
            // SAFETY: as in `slot`.
            unsafe { (*self.info).dns_port }
        }
    }

    /// Counts a decision that was not an allow (denial or audit verdict).
    #[inline(always)]
    pub fn count_denied(&self) {
        if !self.info.is_null() {
            // SAFETY: the map value outlives the program run and the field is
            // 8-byte aligned; concurrent updates from other CPUs are atomic.
            unsafe {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                    &raw mut (*self.info).denied,
                    1,
                )
            };
        }
    }

    /// Counts an event written to the ring buffer.
    #[inline(always)]
    pub fn count_event(&self) {
        if !self.info.is_null() {
            // SAFETY: as in `count_denied`.
            unsafe {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                    &raw mut (*self.info).events,
                    1,
                )
            };
        }
    }

    /// Counts an event the ring buffer had no room for, so that user space
    /// can journal the loss instead of losing it silently.
    #[inline(always)]
    pub fn count_lost(&self) {
        if !self.info.is_null() {
            // SAFETY: as in `count_denied`.
            unsafe {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*self.info).lost, 1)
            };
        }
    }

    #[inline(always)]
    pub fn header(&self, kind: u16, verdict: u8, reason: u8) -> EventHeader {
        let pid_tgid = bpf_get_current_pid_tgid();
        EventHeader {
            kind,
            verdict,
            reason,
            slot: self.slot(),
            // Boot time, not the monotonic clock: guardd converts it to
            // wall-clock time, and only boot time shares its epoch with
            // `CLOCK_BOOTTIME` across a suspend.
            // SAFETY: a plain BPF helper call.
            ts_ns: unsafe { bpf_ktime_get_boot_ns() },
            cgroup_id: self.cgroup_id,
            tgid: (pid_tgid >> 32) as u32,
            pid: pid_tgid as u32,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        }
    }
}
