//! Network egress: the inet `connect`/`sendmsg` hooks judge the address the
//! kernel will really use against the agent's LPM tries (after the DNS
//! redirection of `dns`), and `sock_create` refuses sockets that would
//! bypass those hooks.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    maps::lpm_trie::Key,
    programs::{SockAddrContext, SockContext},
};
use guard_common::{
    AF_INET, AF_INET6, AGENT_AUDIT, AGENT_DNS, DNS_PORT, EVENT_NET, EVENT_SOCK, GRANT_SLOT,
    IPPROTO_TCP, IPPROTO_UDP, MAX_PORT_RANGES, NO_RULE, NameSeenKey, Net4Key, Net6Key, NetEvent,
    NetValue, PROTO_TCP, PROTO_UDP, RANGE_NAME, REASON_DNS_PROXY, REASON_NO_RULE, REASON_PORT,
    REASON_PROTOCOL, REASON_SOCKET_TYPE, REASON_UNKNOWN_SCOPE, SLOT_PREFIX_BITS, SOCK_DGRAM,
    SOCK_STREAM, SockEvent, VERDICT_ALLOWED, VERDICT_AUDIT, VERDICT_DENIED,
};

use crate::{
    common::{Agent, clear_hook_denied, current_agent, mark_hook_denied},
    dns,
    maps::{EVENTS, NAME_SEEN, NET4, NET6},
};

pub(crate) const ALLOW: i32 = 1;
pub(crate) const DENY: i32 = 0;

pub(crate) struct Decision {
    pub allowed: bool,
    pub rule: u32,
    pub reason: u8,
    /// `RANGE_*` bits of the range that allowed.
    pub flags: u8,
}

/// `BPF_NOEXIST`: insert only if the key is new.
const BPF_NOEXIST: u64 = 1;

#[inline(always)]
pub(crate) fn match_ports(value: &NetValue, port: u16, proto_bit: u8) -> Decision {
    let mut i = 0;
    while i < MAX_PORT_RANGES {
        if i as u32 >= value.count {
            break;
        }
        let r = &value.ranges[i];
        if r.protos & proto_bit != 0 && port >= r.lo && port <= r.hi {
            return Decision {
                allowed: true,
                rule: r.rule as u32,
                reason: REASON_NO_RULE,
                flags: r.flags,
            };
        }
        i += 1;
    }
    Decision {
        allowed: false,
        rule: value.cidr_rule,
        reason: REASON_PORT,
        flags: 0,
    }
}

#[inline(always)]
fn lookup4(slot: u32, addr: [u8; 4], port: u16, proto_bit: u8) -> Decision {
    let key = Key::new(SLOT_PREFIX_BITS + 32, Net4Key { slot, addr });
    match NET4.get(&key) {
        Some(v) => match_ports(v, port, proto_bit),
        None => Decision {
            allowed: false,
            rule: NO_RULE,
            reason: REASON_NO_RULE,
            flags: 0,
        },
    }
}

#[inline(always)]
fn lookup6(slot: u32, addr: [u8; 16], port: u16, proto_bit: u8) -> Decision {
    let key = Key::new(SLOT_PREFIX_BITS + 128, Net6Key { slot, addr });
    match NET6.get(&key) {
        Some(v) => match_ports(v, port, proto_bit),
        None => Decision {
            allowed: false,
            rule: NO_RULE,
            reason: REASON_NO_RULE,
            flags: 0,
        },
    }
}

/// The policy's entries first; only what they refuse is looked up among the
/// agent's live grants (`GRANT_SLOT`), and a refusal keeps the policy's rule
/// and reason. Allowed traffic costs no second lookup.
#[inline(always)]
fn judge4(slot: u32, addr: [u8; 4], port: u16, proto_bit: u8) -> Decision {
    let d = lookup4(slot, addr, port, proto_bit);
    if d.allowed {
        return d;
    }
    let g = lookup4(slot | GRANT_SLOT, addr, port, proto_bit);
    if g.allowed { g } else { d }
}

#[inline(always)]
fn judge6(slot: u32, addr: [u8; 16], port: u16, proto_bit: u8) -> Decision {
    let d = lookup6(slot, addr, port, proto_bit);
    if d.allowed {
        return d;
    }
    let g = lookup6(slot | GRANT_SLOT, addr, port, proto_bit);
    if g.allowed { g } else { d }
}

#[inline(always)]
pub(crate) fn proto_bit(protocol: u32) -> u8 {
    match protocol {
        IPPROTO_TCP => PROTO_TCP,
        IPPROTO_UDP => PROTO_UDP,
        _ => 0,
    }
}

/// `::ffff:a.b.c.d` reaches the IPv4 address a.b.c.d.
#[inline(always)]
pub(crate) fn v4_mapped(a: &[u8; 16]) -> Option<[u8; 4]> {
    if a[0] | a[1] | a[2] | a[3] | a[4] | a[5] | a[6] | a[7] | a[8] | a[9] == 0
        && a[10] == 0xff
        && a[11] == 0xff
    {
        Some([a[12], a[13], a[14], a[15]])
    } else {
        None
    }
}

/// The kernel sends a connect or datagram to an unspecified address to the
/// loopback address of the same family; judge it as that.
#[inline(always)]
fn resolve4(addr: [u8; 4]) -> [u8; 4] {
    if addr == [0, 0, 0, 0] {
        [127, 0, 0, 1]
    } else {
        addr
    }
}

#[inline(always)]
pub(crate) fn is_unspecified6(a: &[u8; 16]) -> bool {
    let mut acc = 0u8;
    let mut i = 0;
    while i < 16 {
        acc |= a[i];
        i += 1;
    }
    acc == 0
}

/// Entry point of the four inet address hooks.
#[inline(always)]
pub fn judge_addr(ctx: &SockAddrContext, hook: u8, v6: bool) -> i32 {
    let agent = current_agent();
    let sa: *const bpf_sock_addr = ctx.sock_addr;
    // SAFETY: `sa` is the program's context; the verifier checks each field
    // access against the attach type.
    let (port_raw, protocol, sock_type) = unsafe { ((*sa).user_port, (*sa).protocol, (*sa).type_) };
    let port = u16::from_be(port_raw as u16);

    let mut ev = NetEvent {
        hook,
        protocol: protocol as u8,
        port,
        sock_type: sock_type as u16,
        rule: NO_RULE,
        ..NetEvent::default()
    };

    // The address the kernel will really use, into `ev.family`/`ev.addr`.
    if v6 {
        // SAFETY: as above; `user_ip6` is readable in the IPv6 hooks.
        let words = unsafe { (*sa).user_ip6 };
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
        ev.orig_family = AF_INET6;
        ev.orig_addr = addr;
        if let Some(v4) = v4_mapped(&addr) {
            let judged = resolve4(v4);
            ev.family = AF_INET as u8;
            ev.rewritten = 1;
            ev.addr[..4].copy_from_slice(&judged);
        } else {
            let judged = if is_unspecified6(&addr) {
                ev.rewritten = 1;
                let mut lo = [0u8; 16];
                lo[15] = 1;
                lo
            } else {
                addr
            };
            ev.family = AF_INET6 as u8;
            ev.addr = judged;
        }
    } else {
        // SAFETY: as above; `user_ip4` is readable in the IPv4 hooks.
        let addr = unsafe { (*sa).user_ip4 }.to_ne_bytes();
        let judged = resolve4(addr);
        ev.orig_family = AF_INET;
        ev.orig_addr[..4].copy_from_slice(&addr);
        ev.family = AF_INET as u8;
        ev.rewritten = (judged != addr) as u8;
        ev.addr[..4].copy_from_slice(&judged);
    }
    let is4 = ev.family == AF_INET as u8;

    let bit = proto_bit(protocol);
    let decision = if agent.info.is_null() {
        Decision {
            allowed: false,
            rule: NO_RULE,
            reason: REASON_UNKNOWN_SCOPE,
            flags: 0,
        }
    } else if bit == 0 {
        Decision {
            allowed: false,
            rule: NO_RULE,
            reason: REASON_PROTOCOL,
            flags: 0,
        }
    } else {
        // DNS first, before the policy: port 53 goes to the agent's own
        // resolver whatever the CIDR rules say, and another agent's
        // resolver is off limits whatever they say. For an agent without
        // DNS redirection and a destination other than loopback this is
        // two comparisons.
        let flags = agent.flags();
        if port == DNS_PORT && flags & AGENT_DNS != 0 {
            dns::redirect(ctx, &agent, v6, is4, &ev);
            clear_hook_denied();
            return ALLOW;
        }
        if dns::is_resolver_addr(is4, &ev.addr) && dns::foreign_resolver(&agent, port) {
            // Refused in audit mode too: the resolver of another agent
            // answers with that agent's view, and writes its rules.
            ev.hdr = agent.header(EVENT_NET, VERDICT_DENIED, REASON_DNS_PROXY);
            report(&agent, &ev);
            mark_hook_denied();
            return DENY;
        }
        if is4 {
            judge4(
                agent.slot(),
                [ev.addr[0], ev.addr[1], ev.addr[2], ev.addr[3]],
                port,
                bit,
            )
        } else {
            judge6(agent.slot(), ev.addr, port, bit)
        }
    };

    if decision.allowed {
        if decision.flags & RANGE_NAME != 0 {
            first_by_name(&agent, &mut ev, decision.rule, bit);
        }
        clear_hook_denied();
        return ALLOW;
    }
    let audit = agent.flags() & AGENT_AUDIT != 0;
    ev.rule = decision.rule;
    ev.hdr = agent.header(
        EVENT_NET,
        if audit { VERDICT_AUDIT } else { VERDICT_DENIED },
        decision.reason,
    );
    report(&agent, &ev);
    if audit {
        clear_hook_denied();
        ALLOW
    } else {
        mark_hook_denied();
        DENY
    }
}

/// A connection allowed by a host-name rule (an address a DNS answer gave):
/// the first per (agent, address, port, protocol) is reported with verdict
/// allowed, so the journal names the host rule that let it through; the
/// rest are not, or a busy client would flood the journal.
#[inline(always)]
fn first_by_name(agent: &Agent, ev: &mut NetEvent, rule: u32, bit: u8) {
    let key = NameSeenKey {
        slot: agent.slot(),
        port: ev.port,
        proto: bit,
        family: ev.family,
        addr: ev.addr,
    };
    // A lookup first: on an LRU map even a failed insert takes a node off
    // the free list (and may evict another agent's entry), and after the
    // first connection every one is a hit.
    // SAFETY: only whether a value exists is read.
    if unsafe { NAME_SEEN.get(&key) }.is_some()
        || NAME_SEEN.insert(&key, &1u8, BPF_NOEXIST).is_err()
    {
        return;
    }
    ev.rule = rule;
    ev.hdr = agent.header(EVENT_NET, VERDICT_ALLOWED, REASON_NO_RULE);
    emit(agent, ev);
}

/// Reports a refusal (or audit verdict): counted as such, then written.
#[inline(always)]
pub(crate) fn report<T: 'static>(agent: &Agent, ev: &T) {
    agent.count_denied();
    emit(agent, ev);
}

/// Writes an event to the ring buffer, counting it or its loss; no
/// refusal is counted (allowed events go through here alone).
#[inline(always)]
pub(crate) fn emit<T: 'static>(agent: &Agent, ev: &T) {
    match EVENTS.reserve::<T>(0) {
        Some(mut slot) => {
            // SAFETY: `ev` is a plain `repr(C)` value copied into the reserved,
            // correctly sized ring buffer slot.
            unsafe { core::ptr::copy_nonoverlapping(ev as *const T, slot.as_mut_ptr(), 1) };
            slot.submit(0);
            agent.count_event();
        }
        None => agent.count_lost(),
    }
}

/// `cgroup/sock_create`: only TCP stream and UDP datagram sockets of the inet
/// families are allowed; raw sockets, ICMP "ping" sockets and other
/// transports would escape the address hooks, so they are refused here.
#[inline(always)]
pub fn judge_socket(ctx: &SockContext) -> i32 {
    let agent = current_agent();
    // SAFETY: `ctx.sock` is the program's context.
    let (family, sock_type, protocol) =
        unsafe { ((*ctx.sock).family, (*ctx.sock).type_, (*ctx.sock).protocol) };
    if family != AF_INET && family != AF_INET6 {
        return ALLOW;
    }
    let known = !agent.info.is_null();
    let ok = known
        && ((sock_type == SOCK_STREAM && protocol == IPPROTO_TCP)
            || (sock_type == SOCK_DGRAM && protocol == IPPROTO_UDP));
    if ok {
        return ALLOW;
    }
    let audit = agent.flags() & AGENT_AUDIT != 0;
    let reason = if known {
        REASON_SOCKET_TYPE
    } else {
        REASON_UNKNOWN_SCOPE
    };
    let ev = SockEvent {
        hdr: agent.header(
            EVENT_SOCK,
            if audit { VERDICT_AUDIT } else { VERDICT_DENIED },
            reason,
        ),
        family,
        sock_type,
        protocol,
        _pad: 0,
    };
    report(&agent, &ev);
    if audit { ALLOW } else { DENY }
}
