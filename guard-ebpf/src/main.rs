//! guard's kernel programs loaded through aya. Entry points only; the logic
//! lives in one module per hook family.
#![no_std]
#![no_main]
// The BPF target has no atomic read-modify-write in `core::sync::atomic`;
// the intrinsic lowers to the BPF atomic add instruction.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd is the only way to emit BPF_ATOMIC_ADD"
)]

mod common;
mod dns;
mod listen;
mod maps;
mod net;
mod proc;
mod route;

use aya_ebpf::{
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, raw_tracepoint},
    programs::{RawTracePointContext, SkBuffContext, SockAddrContext, SockContext, SockoptContext},
};
use guard_common::{
    HOOK_BIND4, HOOK_BIND6, HOOK_CONNECT4, HOOK_CONNECT6, HOOK_SENDMSG4, HOOK_SENDMSG6,
};

#[cgroup_sock_addr(connect4)]
pub fn guard_connect4(ctx: SockAddrContext) -> i32 {
    net::judge_addr(&ctx, HOOK_CONNECT4, false)
}

#[cgroup_sock_addr(connect6)]
pub fn guard_connect6(ctx: SockAddrContext) -> i32 {
    net::judge_addr(&ctx, HOOK_CONNECT6, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn guard_sendmsg4(ctx: SockAddrContext) -> i32 {
    net::judge_addr(&ctx, HOOK_SENDMSG4, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn guard_sendmsg6(ctx: SockAddrContext) -> i32 {
    net::judge_addr(&ctx, HOOK_SENDMSG6, true)
}

/// Replies from an agent's resolver show the server it asked (`dns`).
#[cgroup_sock_addr(recvmsg4)]
pub fn guard_recvmsg4(ctx: SockAddrContext) -> i32 {
    dns::on_recvmsg(&ctx, false)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn guard_recvmsg6(ctx: SockAddrContext) -> i32 {
    dns::on_recvmsg(&ctx, true)
}

#[cgroup_sock_addr(bind4)]
pub fn guard_bind4(ctx: SockAddrContext) -> i32 {
    listen::judge_bind(&ctx, HOOK_BIND4, false)
}

#[cgroup_sock_addr(bind6)]
pub fn guard_bind6(ctx: SockAddrContext) -> i32 {
    listen::judge_bind(&ctx, HOOK_BIND6, true)
}

#[cgroup_skb(ingress)]
pub fn guard_ingress(ctx: SkBuffContext) -> i32 {
    listen::judge_ingress(&ctx)
}

#[cgroup_skb(egress)]
pub fn guard_egress(ctx: SkBuffContext) -> i32 {
    route::judge_egress(&ctx)
}

#[cgroup_sockopt(setsockopt)]
pub fn guard_setsockopt(ctx: SockoptContext) -> i32 {
    route::judge_setsockopt(&ctx)
}

#[cgroup_sock(sock_create)]
pub fn guard_sock_create(ctx: SockContext) -> i32 {
    net::judge_socket(&ctx)
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn guard_exec(ctx: RawTracePointContext) -> i32 {
    proc::on_exec(&ctx) as i32
}

#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn guard_signal(ctx: RawTracePointContext) -> i32 {
    proc::on_signal(&ctx) as i32
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn guard_sys_enter(ctx: RawTracePointContext) -> i32 {
    proc::on_sys_enter(&ctx) as i32
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn guard_sys_exit(ctx: RawTracePointContext) -> i32 {
    proc::on_sys_exit(&ctx) as i32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
