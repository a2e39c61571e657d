//! Packets go where the hooks judged, or nowhere (issue 8, section 4).
//!
//! connect/sendmsg judge the destination address the caller gives; an IPv6
//! Routing header or IPv4 source-route options make the kernel send the
//! packet to a first hop taken from the header instead, an address no hook
//! judged. Two programs close that:
//! - `cgroup/setsockopt` refuses the options that install such headers
//!   (`guard_common::is_route_option`) with EPERM; the refusal is journaled
//!   by the `sys_exit` program like any other refused call;
//! - `cgroup_skb/egress` drops every packet of an agent that carries a
//!   Routing header or IPv4 options, however they got there (control
//!   messages of sendmsg/sendmmsg reach no hook that sees addresses), and
//!   reports it once per socket.

use aya_ebpf::{
    bindings::bpf_sockopt,
    helpers::generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_socket_cookie},
    programs::{SkBuffContext, SockoptContext},
};
use guard_common::{
    AF_INET, AF_INET6, AGENT_AUDIT, EVENT_NET, HOOK_EGRESS, IPPROTO_TCP, IPPROTO_UDP, NetEvent,
    REASON_IP_OPTIONS, REASON_ROUTING_HEADER, VERDICT_AUDIT, VERDICT_DENIED, is_route_option,
};

use crate::{
    common::{mark_hook_denied, skb_agent},
    listen::header_without_task,
    maps::ROUTE_SEEN,
    net::{ALLOW, DENY, report},
};

/// IPv6 next-header values: hop-by-hop options, routing, destination
/// options.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_DEST: u8 = 60;
/// Option headers walked before a Routing header; a socket of an agent
/// (without CAP_NET_RAW) gets at most one of each, so a longer chain is
/// refused rather than judged.
const MAX_OPTION_HEADERS: u32 = 4;
/// `BPF_NOEXIST`: insert only if the key is new.
const BPF_NOEXIST: u64 = 1;

/// Entry point of `cgroup/setsockopt`: 0 refuses the call with EPERM, 1
/// lets the kernel handle it with the caller's buffer untouched.
#[inline(always)]
pub fn judge_setsockopt(ctx: &SockoptContext) -> i32 {
    let so: *const bpf_sockopt = ctx.sockopt;
    // SAFETY: `so` is the program's context; `level` and `optname` are
    // readable fields of a setsockopt program.
    let (level, optname) = unsafe { ((*so).level, (*so).optname) };
    if is_route_option(level, optname) {
        // The `sys_exit` program journals the EPERM (rule
        // `network.source-route`, named by guardd's judge).
        DENY
    } else {
        ALLOW
    }
}

/// What the header of a packet says: the address a connect/sendmsg judged
/// (the final destination), the packet's own destination (first hop), the
/// transport, and what to report as dropped.
struct Route {
    family: u32,
    judged: [u8; 16],
    wire: [u8; 16],
    protocol: u8,
    port: u16,
    what: u32,
    reason: u8,
}

#[inline(always)]
fn load16(ctx: &SkBuffContext, off: usize) -> [u8; 16] {
    ctx.load::<[u8; 16]>(off).unwrap_or([0; 16])
}

#[inline(always)]
fn port_at(ctx: &SkBuffContext, protocol: u8, l4: usize) -> u16 {
    if u32::from(protocol) == IPPROTO_TCP || u32::from(protocol) == IPPROTO_UDP {
        u16::from_be(ctx.load::<u16>(l4 + 2).unwrap_or(0))
    } else {
        0
    }
}

/// An IPv6 packet: walks hop-by-hop and destination-options headers up to
/// a Routing header. `None` for a packet without one.
#[inline(always)]
fn route6(ctx: &SkBuffContext) -> Option<Route> {
    let mut next: u8 = ctx.load(6).ok()?;
    let mut off: usize = 40;
    let mut i = 0;
    while i < MAX_OPTION_HEADERS {
        if next != NEXTHDR_HOP && next != NEXTHDR_DEST {
            break;
        }
        let len: u8 = ctx.load(off + 1).ok()?;
        next = ctx.load(off).ok()?;
        off += (usize::from(len) + 1) * 8;
        i += 1;
    }
    let wire = load16(ctx, 24);
    if next == NEXTHDR_HOP || next == NEXTHDR_DEST {
        // Too many option headers to judge: refused as if routed.
        return Some(Route {
            family: AF_INET6,
            judged: wire,
            wire,
            protocol: 0,
            port: 0,
            what: u32::MAX,
            reason: REASON_ROUTING_HEADER,
        });
    }
    if next != NEXTHDR_ROUTING {
        return None;
    }
    let after: u8 = ctx.load(off).unwrap_or(0);
    let len: u8 = ctx.load(off + 1).unwrap_or(0);
    let kind: u8 = ctx.load(off + 2).unwrap_or(0);
    // The final destination: the first segment of a Segment Routing header
    // (type 4 lists segments in reverse), the last address of the others.
    let last = if kind == 4 {
        off + 8
    } else {
        (off + usize::from(len) * 8).saturating_sub(8)
    };
    let judged = load16(ctx, last);
    Some(Route {
        family: AF_INET6,
        judged,
        wire,
        protocol: after,
        port: port_at(ctx, after, off + (usize::from(len) + 1) * 8),
        what: u32::from(kind),
        reason: REASON_ROUTING_HEADER,
    })
}

/// An IPv4 packet with options. Source routing is what redirects; no
/// option is needed by an agent, so any is refused rather than parsed in
/// the kernel.
#[inline(always)]
fn route4(ctx: &SkBuffContext, first: u8) -> Option<Route> {
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl <= 20 {
        return None;
    }
    let protocol: u8 = ctx.load(9).unwrap_or(0);
    let mut wire = [0u8; 16];
    wire[..4].copy_from_slice(&ctx.load::<[u8; 4]>(16).unwrap_or([0; 4]));
    let opt: u8 = ctx.load(20).unwrap_or(0);
    let opt_len: u8 = ctx.load(21).unwrap_or(0);
    // LSRR (0x83) and SSRR (0x89) carry the final destination last.
    let mut judged = wire;
    if (opt == 0x83 || opt == 0x89) && opt_len >= 7 {
        judged[..4].copy_from_slice(
            &ctx.load::<[u8; 4]>(20 + usize::from(opt_len) - 4)
                .unwrap_or([0; 4]),
        );
    }
    Some(Route {
        family: AF_INET,
        judged,
        wire,
        protocol,
        port: port_at(ctx, protocol, ihl),
        what: u32::from(opt),
        reason: REASON_IP_OPTIONS,
    })
}

/// Entry point of `cgroup_skb/egress`. Packets without extension headers
/// or options, nearly all of them, pass after two loads.
#[inline(always)]
pub fn judge_egress(ctx: &SkBuffContext) -> i32 {
    let Ok(first) = ctx.load::<u8>(0) else {
        return ALLOW;
    };
    let route = match first >> 4 {
        4 => route4(ctx, first),
        6 => route6(ctx),
        _ => None,
    };
    let Some(r) = route else {
        return ALLOW;
    };
    let skb = ctx.skb.skb;
    let agent = skb_agent(skb);
    let cgroup_id = agent.cgroup_id;
    let audit = agent.flags() & AGENT_AUDIT != 0;
    // A datagram is sent in the caller's system call, which then fails with
    // EPERM: when the current task is the agent's, tell `sys_exit` that
    // this refusal has its record (here), so a flood of sends is not a
    // flood of records.
    // The agent was found at `agent.level`, where the task's ancestor is
    // the same cgroup when the task is the agent's.
    // SAFETY: a plain BPF helper call.
    let in_task = unsafe { bpf_get_current_ancestor_cgroup_id(agent.level as i32) } == cgroup_id;
    if in_task && !audit {
        mark_hook_denied();
    }
    // SAFETY: a helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(skb as *mut _) };
    if ROUTE_SEEN.insert(&cookie, &1u8, BPF_NOEXIST).is_err() {
        return if audit { ALLOW } else { DENY };
    }
    let mut ev = NetEvent {
        hook: HOOK_EGRESS,
        family: r.family as u8,
        protocol: r.protocol,
        rewritten: 1,
        port: r.port,
        sock_type: 0,
        rule: r.what,
        orig_family: r.family,
        addr: r.judged,
        orig_addr: r.wire,
        ..NetEvent::default()
    };
    let verdict = if audit { VERDICT_AUDIT } else { VERDICT_DENIED };
    // A TCP segment may leave from softirq context, where the current task
    // is whoever the CPU was running: name a process only when it is the
    // agent's.
    ev.hdr = if in_task {
        agent.header(EVENT_NET, verdict, r.reason)
    } else {
        header_without_task(&agent, verdict, r.reason)
    };
    report(&agent, &ev);
    if audit { ALLOW } else { DENY }
}
