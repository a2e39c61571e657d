//! Per-agent DNS redirection (issue 12).
//!
//! An agent whose `AgentInfo::flags` has `AGENT_DNS` resolves names through
//! guardd only: every connect/sendmsg to port 53, at any address (its
//! resolv.conf server, a hard-coded public resolver, a v4-mapped or
//! unspecified address), is rewritten to its resolver on
//! `DNS_PROXY_V4`/`DNS_PROXY_V6` port `AgentInfo::dns_port`, where guardd
//! writes the addresses of allowed answers into the agent's rules before it
//! releases them. The destination the agent gave is kept per socket
//! (`DNS_ORIG`), and the recvmsg hooks show the replies as coming from it:
//! resolvers such as glibc's drop an answer whose source is not the server
//! they asked.
//!
//! Each resolver serves one agent; `DNS_PORTS` names every resolver port
//! and its agent, and no agent reaches another's (its answers would open
//! that agent's rules, not the caller's).

use aya_ebpf::{
    bindings::bpf_sock_addr, helpers::generated::bpf_get_socket_cookie, programs::SockAddrContext,
};
use guard_common::{
    AF_INET, AF_INET6, AGENT_DNS, DNS_PROXY_V4, DNS_PROXY_V6, DnsOrig, IPPROTO_UDP, NetEvent,
};

use crate::{
    common::{Agent, current_agent},
    maps::{DNS_ORIG, DNS_PORTS},
};

/// The answer every recvmsg program must give (the kernel refuses others).
const RECV_OK: i32 = 1;

/// `::ffff:127.0.0.1`: the resolver as an IPv6 socket talking IPv4 sees it.
const PROXY_V4_MAPPED: [u8; 16] = mapped(DNS_PROXY_V4);

const fn mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// Whether a judged destination (`is4`: IPv4, in `addr[..4]`) is where
/// the resolvers listen.
#[inline(always)]
pub(crate) fn is_resolver_addr(is4: bool, addr: &[u8; 16]) -> bool {
    if is4 {
        addr[0] == DNS_PROXY_V4[0]
            && addr[1] == DNS_PROXY_V4[1]
            && addr[2] == DNS_PROXY_V4[2]
            && addr[3] == DNS_PROXY_V4[3]
    } else {
        eq16(addr, &DNS_PROXY_V6)
    }
}

#[inline(always)]
fn eq16(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let mut diff = 0u8;
    let mut i = 0;
    while i < 16 {
        diff |= a[i] ^ b[i];
        i += 1;
    }
    diff == 0
}

/// Whether `port` is the resolver of an agent other than `agent`.
#[inline(always)]
pub(crate) fn foreign_resolver(agent: &Agent, port: u16) -> bool {
    match DNS_PORTS.get_ptr(u32::from(port)) {
        // SAFETY: a pointer from a map lookup, valid for the program run;
        // the value is a plain integer read once.
        Some(slot) => (unsafe { *slot }) != agent.slot(),
        None => false,
    }
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// Writes an IPv6 address into the context one 32-bit word at a time, the
/// access size every kernel accepts for `user_ip6`.
#[inline(always)]
fn write_ip6(sa: *mut bpf_sock_addr, a: &[u8; 16]) {
    let w = words(a);
    // SAFETY: `sa` is the program's context and `user_ip6` is writable in
    // the IPv6 connect, sendmsg and recvmsg hooks (the only callers); the
    // verifier checks each store.
    unsafe {
        core::ptr::write_volatile(&raw mut (*sa).user_ip6[0], w[0]);
        core::ptr::write_volatile(&raw mut (*sa).user_ip6[1], w[1]);
        core::ptr::write_volatile(&raw mut (*sa).user_ip6[2], w[2]);
        core::ptr::write_volatile(&raw mut (*sa).user_ip6[3], w[3]);
    }
}

#[inline(always)]
fn write_ip4(sa: *mut bpf_sock_addr, a: [u8; 4]) {
    // SAFETY: `user_ip4` is writable in the IPv4 connect, sendmsg and
    // recvmsg hooks (the only callers); the verifier checks the store.
    unsafe { core::ptr::write_volatile(&raw mut (*sa).user_ip4, u32::from_ne_bytes(a)) };
}

#[inline(always)]
fn write_port(sa: *mut bpf_sock_addr, port_be: u32) {
    // SAFETY: `user_port` is writable in every sock_addr hook.
    unsafe { core::ptr::write_volatile(&raw mut (*sa).user_port, port_be) };
}

/// Sends a query for port 53 to the agent's resolver instead, and keeps the
/// destination as the kernel would have reached it (an unspecified address
/// is loopback) for the replies. `v6` is the hook's family; `is4` and
/// `ev.addr` are the judged destination (a v4-mapped one is IPv4: the
/// socket then talks IPv4, so it must reach the resolver's IPv4 address).
#[inline(always)]
pub(crate) fn redirect(ctx: &SockAddrContext, agent: &Agent, v6: bool, is4: bool, ev: &NetEvent) {
    let sa = ctx.sock_addr;
    let port_be = u32::from((agent.dns_port() as u16).to_be());
    let mut orig = DnsOrig {
        family: if v6 { AF_INET6 } else { AF_INET },
        port: u32::from(ev.port.to_be()),
        addr: [0; 16],
    };
    let judged4 = [ev.addr[0], ev.addr[1], ev.addr[2], ev.addr[3]];
    if !v6 {
        orig.addr[..4].copy_from_slice(&judged4);
        write_ip4(sa, DNS_PROXY_V4);
    } else if is4 {
        orig.addr = mapped(judged4);
        write_ip6(sa, &PROXY_V4_MAPPED);
    } else {
        orig.addr = ev.addr;
        write_ip6(sa, &DNS_PROXY_V6);
    }
    write_port(sa, port_be);
    // SAFETY: a helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(sa as *mut _) };
    // A full map evicts the least recently used socket: at worst an old
    // socket's replies keep the resolver's address.
    let _ = DNS_ORIG.insert(&cookie, &orig, 0);
}

/// Entry point of `cgroup/recvmsg4` and `cgroup/recvmsg6`: a datagram from
/// the agent's resolver is shown as coming from the server the agent asked.
/// Every other datagram is left as it is; the answer is always "go on".
#[inline(always)]
pub fn on_recvmsg(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the program's context; `user_port` and `protocol`
    // are readable in the recvmsg hooks.
    let (port_raw, protocol) = unsafe { ((*sa).user_port, (*sa).protocol) };
    // The datagram's source first: every recvmsg of every process under
    // guard's parent cgroup runs this, and only a reply from loopback can
    // be a resolver's; the agent is looked up only for those.
    let from_proxy = protocol == IPPROTO_UDP
        && if v6 {
            // SAFETY: as above; `user_ip6` is readable in the IPv6 hook.
            let w = unsafe { (*sa).user_ip6 };
            let (p6, p4) = (words(&DNS_PROXY_V6), words(&PROXY_V4_MAPPED));
            w == p6 || w == p4
        } else {
            // SAFETY: as above; `user_ip4` is readable in the IPv4 hook.
            unsafe { (*sa).user_ip4 }.to_ne_bytes() == DNS_PROXY_V4
        };
    if !from_proxy {
        return RECV_OK;
    }
    let agent = current_agent();
    if agent.flags() & AGENT_DNS == 0
        || u32::from(u16::from_be(port_raw as u16)) != agent.dns_port()
    {
        return RECV_OK;
    }
    // SAFETY: a helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(sa as *mut _) };
    // SAFETY: the value is copied out at once; an update racing with it
    // (another thread of the agent querying on the same socket) can only
    // mix two destinations the agent itself asked.
    let Some(orig) = (unsafe { DNS_ORIG.get(&cookie) }).copied() else {
        return RECV_OK;
    };
    if v6 {
        // An IPv6 socket that sent to a v4-mapped address reached the IPv4
        // hook, which kept the IPv4 address: show it mapped again.
        let a = if orig.family == AF_INET {
            mapped([orig.addr[0], orig.addr[1], orig.addr[2], orig.addr[3]])
        } else {
            orig.addr
        };
        write_ip6(sa, &a);
    } else if orig.family == AF_INET {
        write_ip4(sa, [orig.addr[0], orig.addr[1], orig.addr[2], orig.addr[3]]);
    } else {
        // An IPv4 socket asked through an IPv6 hook: cannot happen, and an
        // IPv6 address has no IPv4 form to show.
        return RECV_OK;
    }
    write_port(sa, orig.port);
    RECV_OK
}
