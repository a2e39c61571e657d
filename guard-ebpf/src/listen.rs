//! Inbound: nothing binds, listens or accepts unless a `listen` rule allows
//! the local address and port.
//!
//! Two independent programs judge the same rules (`LISTEN4`/`LISTEN6`):
//! - `bind4`/`bind6` refuse a bind() whose local address, port and protocol
//!   no rule allows (EPERM), before the socket owns the port;
//! - `cgroup_skb/ingress` drops every packet addressed to an agent's TCP
//!   socket in LISTEN state whose local address and port no rule allows.
//!   listen() on a socket that was never bound picks an ephemeral port
//!   inside the kernel without any bind hook; this is what stops it from
//!   accepting, and it holds even if the bind hooks were bypassed.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_sk_fullsock},
    maps::lpm_trie::Key,
    programs::{SkBuffContext, SockAddrContext},
};
use guard_common::{
    AF_INET, AF_INET6, AGENT_AUDIT, EVENT_NET, EventHeader, HOOK_INGRESS, IPPROTO_TCP, NO_RULE,
    Net4Key, Net6Key, NetEvent, REASON_NO_RULE, REASON_PROTOCOL, REASON_UNKNOWN_SCOPE,
    SLOT_PREFIX_BITS, VERDICT_AUDIT, VERDICT_DENIED,
};

use crate::{
    common::{Agent, clear_hook_denied, current_agent, mark_hook_denied, skb_agent},
    maps::{LISTEN_SEEN, LISTEN4, LISTEN6},
    net::{ALLOW, DENY, Decision, is_unspecified6, match_ports, proto_bit, report, v4_mapped},
};

/// `BPF_TCP_LISTEN`: `bpf_sock::state` of a listening TCP socket.
const BPF_TCP_LISTEN: u32 = 10;
/// `BPF_NOEXIST`: insert only if the key is new.
const BPF_NOEXIST: u64 = 1;

const NO_MATCH: Decision = Decision {
    allowed: false,
    rule: NO_RULE,
    reason: REASON_NO_RULE,
    flags: 0,
};

#[inline(always)]
fn listen4(slot: u32, addr: [u8; 4], port: u16, bit: u8) -> Decision {
    let key = Key::new(SLOT_PREFIX_BITS + 32, Net4Key { slot, addr });
    match LISTEN4.get(&key) {
        Some(v) => match_ports(v, port, bit),
        None => NO_MATCH,
    }
}

#[inline(always)]
fn listen6(slot: u32, addr: [u8; 16], port: u16, bit: u8) -> Decision {
    let key = Key::new(SLOT_PREFIX_BITS + 128, Net6Key { slot, addr });
    match LISTEN6.get(&key) {
        Some(v) => match_ports(v, port, bit),
        None => NO_MATCH,
    }
}

/// Judges a local address as bind() gives it. Unlike connect, the
/// unspecified address is not loopback here: it means every local address,
/// so only a rule covering `0.0.0.0` (or `::`) allows it. An IPv4-mapped
/// address is an IPv4 one. `::` on a dual-stack socket also accepts IPv4,
/// so it needs `0.0.0.0` as well (IPV6_V6ONLY cannot be read from these
/// hooks; asking for both is the safe side). Fills the judged address into
/// `ev`.
#[inline(always)]
fn judge_local(
    slot: u32,
    v6: bool,
    addr: &[u8; 16],
    port: u16,
    bit: u8,
    ev: &mut NetEvent,
) -> Decision {
    if bit == 0 {
        return Decision {
            allowed: false,
            rule: NO_RULE,
            reason: REASON_PROTOCOL,
            flags: 0,
        };
    }
    if !v6 {
        let a = [addr[0], addr[1], addr[2], addr[3]];
        ev.family = AF_INET as u8;
        ev.addr[..4].copy_from_slice(&a);
        return listen4(slot, a, port, bit);
    }
    if let Some(a) = v4_mapped(addr) {
        ev.family = AF_INET as u8;
        ev.rewritten = 1;
        ev.addr[..4].copy_from_slice(&a);
        return listen4(slot, a, port, bit);
    }
    ev.family = AF_INET6 as u8;
    ev.addr = *addr;
    let d = listen6(slot, *addr, port, bit);
    if !d.allowed || !is_unspecified6(addr) {
        return d;
    }
    let d4 = listen4(slot, [0; 4], port, bit);
    if !d4.allowed {
        ev.family = AF_INET as u8;
        ev.rewritten = 1;
        ev.addr = [0; 16];
    }
    d4
}

#[inline(always)]
fn words_to_bytes(words: &[u32; 4]) -> [u8; 16] {
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        addr[i * 4] = b[0];
        addr[i * 4 + 1] = b[1];
        addr[i * 4 + 2] = b[2];
        addr[i * 4 + 3] = b[3];
        i += 1;
    }
    addr
}

/// The header of an event decided outside any task of the agent (a packet,
/// in softirq context): the current task is whoever the CPU was running, so
/// no process is named.
#[inline(always)]
pub(crate) fn header_without_task(agent: &Agent, verdict: u8, reason: u8) -> EventHeader {
    EventHeader {
        kind: EVENT_NET,
        verdict,
        reason,
        slot: agent.slot(),
        // SAFETY: a plain BPF helper call.
        // Boot time, as in `Agent::header`.
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        cgroup_id: agent.cgroup_id,
        tgid: 0,
        pid: 0,
        comm: [0; 16],
    }
}

/// Refuses (or, in audit mode, reports) and returns the program's answer.
#[inline(always)]
fn refuse(agent: &Agent, ev: &mut NetEvent, d: &Decision, with_task: bool) -> i32 {
    let audit = agent.flags() & AGENT_AUDIT != 0;
    let verdict = if audit { VERDICT_AUDIT } else { VERDICT_DENIED };
    ev.rule = d.rule;
    ev.hdr = if with_task {
        agent.header(EVENT_NET, verdict, d.reason)
    } else {
        header_without_task(agent, verdict, d.reason)
    };
    report(agent, ev);
    if audit { ALLOW } else { DENY }
}

/// Entry point of `cgroup/bind4` and `cgroup/bind6`.
#[inline(always)]
pub fn judge_bind(ctx: &SockAddrContext, hook: u8, v6: bool) -> i32 {
    let agent = current_agent();
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: `sa` is the program's context; the verifier checks each field
    // access against the attach type.
    let (port_raw, protocol, sock_type) = unsafe { ((*sa).user_port, (*sa).protocol, (*sa).type_) };
    let port = u16::from_be(port_raw as u16);
    let addr = if v6 {
        // SAFETY: as above; `user_ip6` is readable in the IPv6 hook.
        words_to_bytes(&unsafe { (*sa).user_ip6 })
    } else {
        let mut a = [0u8; 16];
        // SAFETY: as above; `user_ip4` is readable in the IPv4 hook.
        a[..4].copy_from_slice(&unsafe { (*sa).user_ip4 }.to_ne_bytes());
        a
    };
    let mut ev = NetEvent {
        hook,
        protocol: protocol as u8,
        port,
        sock_type: sock_type as u16,
        rule: NO_RULE,
        orig_family: if v6 { AF_INET6 } else { AF_INET },
        orig_addr: addr,
        ..NetEvent::default()
    };
    let d = if agent.info.is_null() {
        Decision {
            allowed: false,
            rule: NO_RULE,
            reason: REASON_UNKNOWN_SCOPE,
            flags: 0,
        }
    } else if port == 0 {
        // An ephemeral port: what the kernel gives every client socket on
        // connect or sendto anyway (dig and libuv clients bind it first).
        // Listening on it is not decided here: seccomp refuses listen()
        // without listen rules, and the ingress program drops packets for
        // a listener on a port no rule allows.
        Decision {
            allowed: true,
            rule: NO_RULE,
            reason: REASON_NO_RULE,
            flags: 0,
        }
    } else {
        judge_local(agent.slot(), v6, &addr, port, proto_bit(protocol), &mut ev)
    };
    if d.allowed {
        clear_hook_denied();
        return ALLOW;
    }
    if agent.flags() & AGENT_AUDIT != 0 {
        // In audit mode the bind goes through and this record stands for the
        // socket: its inbound packets are not reported a second time.
        // SAFETY: a helper call on the program's own context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut _) };
        let _ = LISTEN_SEEN.insert(&cookie, &1u8, BPF_NOEXIST);
    }
    let answer = refuse(&agent, &mut ev, &d, true);
    if answer == DENY {
        mark_hook_denied();
    } else {
        clear_hook_denied();
    }
    answer
}

/// Entry point of `cgroup_skb/ingress`. Returns at once for every packet
/// that is not for a listening TCP socket (established connections, UDP),
/// so the cost elsewhere is a few loads.
#[inline(always)]
pub fn judge_ingress(ctx: &SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: `skb` is the program's context; `sk` is a readable field that
    // the verifier treats as a possibly null socket pointer.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return ALLOW;
    }
    // SAFETY: `sk` is a non-null socket pointer from the context.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return ALLOW;
    }
    // SAFETY: `full` is a non-null full socket returned by the helper; the
    // fields read are the readable `bpf_sock` fields.
    let (state, family, protocol, port, ip4, ip6) = unsafe {
        (
            (*full).state,
            (*full).family,
            (*full).protocol,
            (*full).src_port,
            (*full).src_ip4,
            (*full).src_ip6,
        )
    };
    if state != BPF_TCP_LISTEN || protocol != IPPROTO_TCP {
        return ALLOW;
    }
    let agent = skb_agent(skb);
    let v6 = family == AF_INET6;
    let addr = if v6 {
        words_to_bytes(&ip6)
    } else {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&ip4.to_ne_bytes());
        a
    };
    let port = port as u16;
    let mut ev = NetEvent {
        hook: HOOK_INGRESS,
        protocol: IPPROTO_TCP as u8,
        port,
        sock_type: guard_common::SOCK_STREAM as u16,
        rule: NO_RULE,
        orig_family: family,
        orig_addr: addr,
        ..NetEvent::default()
    };
    let d = if agent.info.is_null() {
        Decision {
            allowed: false,
            rule: NO_RULE,
            reason: REASON_UNKNOWN_SCOPE,
            flags: 0,
        }
    } else {
        judge_local(
            agent.slot(),
            v6,
            &addr,
            port,
            proto_bit(IPPROTO_TCP),
            &mut ev,
        )
    };
    if d.allowed {
        return ALLOW;
    }
    // One record per listening socket: every SYN an outsider sends would
    // otherwise be one, and a flood of them would crowd out other records.
    // SAFETY: a helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(skb as *mut _) };
    if LISTEN_SEEN.insert(&cookie, &1u8, BPF_NOEXIST).is_err() {
        let audit = agent.flags() & AGENT_AUDIT != 0;
        return if audit { ALLOW } else { DENY };
    }
    refuse(&agent, &mut ev, &d, false)
}
