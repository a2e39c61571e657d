//! The Unix-socket hooks, in an object of their own (see `unix.rs`).
//! Everything must be inlined into the two program sections: guardd's loader
//! resolves map references only, not calls into `.text`.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd is the only way to emit BPF_ATOMIC_ADD"
)]

#[path = "../common.rs"]
mod common;
#[path = "../maps.rs"]
mod maps;
#[path = "../unix.rs"]
mod unix;

use aya_ebpf::bindings::bpf_sock_addr;
use guard_common::{HOOK_CONNECT_UNIX, HOOK_SENDMSG_UNIX};

#[unsafe(no_mangle)]
#[unsafe(link_section = "cgroup/connect_unix")]
pub extern "C" fn guard_connect_unix(ctx: *mut bpf_sock_addr) -> i32 {
    unix::judge(ctx, HOOK_CONNECT_UNIX)
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "cgroup/sendmsg_unix")]
pub extern "C" fn guard_sendmsg_unix(ctx: *mut bpf_sock_addr) -> i32 {
    unix::judge(ctx, HOOK_SENDMSG_UNIX)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
