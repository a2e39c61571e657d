//! Unix-socket egress: `connect` and `sendmsg` to a pathname or abstract
//! address are allowed only when the agent's policy names that address.
//!
//! aya 0.14 cannot load these attach types (kernel 6.7+), so they live in a
//! second object that guardd loads through its own small loader, with the
//! maps of the main object (see guard-daemon's `kernel::unix`).
//!
//! The address is read from `struct bpf_sock_addr_kern` (the real context
//! behind `struct bpf_sock_addr`) with `bpf_probe_read_kernel`, at offsets
//! guardd takes from the kernel's BTF, because reading it the upstream way
//! needs kfuncs that the aya toolchain cannot call.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::{bpf_probe_read_kernel, bpf_probe_read_kernel_str},
};
use guard_common::{
    EVENT_UNIX, REASON_NO_RULE, REASON_UNKNOWN_SCOPE, UNIX_PATH_MAX, UnixEvent, UnixKey,
    VERDICT_DENIED,
};

use crate::{
    common::{clear_hook_denied, current_agent, mark_hook_denied},
    maps::{CONFIG, EVENTS, UNIX},
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

/// Bytes of `struct bpf_sock_addr_kern` read in one go; guardd checks that
/// both offsets it hands over fall inside.
const KERN_CTX_BYTES: usize = 48;

#[inline(always)]
fn word_at(raw: &[u64; KERN_CTX_BYTES / 8], off: u32) -> u64 {
    match off {
        0 => raw[0],
        8 => raw[1],
        16 => raw[2],
        24 => raw[3],
        32 => raw[4],
        40 => raw[5],
        _ => 0,
    }
}

/// Reads the socket address the caller passed into `key.path` (which must be
/// zeroed) and returns how many bytes of `sun_path` the caller supplied (0
/// when unreadable). Equal addresses give equal keys: a pathname ends at its
/// first NUL or at the supplied length, whichever comes first; an abstract
/// name is exactly the supplied bytes. The kernel's copy holds only those
/// bytes (what follows is stack garbage), so every read is bounded by them.
#[inline(always)]
fn read_address(ctx: *mut bpf_sock_addr, key: &mut UnixKey) -> u32 {
    let Some(cfg) = CONFIG.get(0) else { return 0 };
    let mut raw = [0u64; KERN_CTX_BYTES / 8];
    // SAFETY: `ctx` points to the kernel's `struct bpf_sock_addr_kern` on the
    // stack of the running syscall; probe_read copies without faulting.
    let rc = unsafe {
        bpf_probe_read_kernel(
            raw.as_mut_ptr() as *mut c_void,
            KERN_CTX_BYTES as u32,
            ctx as *const c_void,
        )
    };
    if rc != 0 {
        return 0;
    }
    let uaddr = word_at(&raw, cfg.sa_kern_uaddr_off & !7);
    let lenword = word_at(&raw, cfg.sa_kern_uaddrlen_off & !7);
    let uaddrlen = if cfg.sa_kern_uaddrlen_off & 4 != 0 {
        (lenword >> 32) as u32
    } else {
        lenword as u32
    };
    if uaddr == 0 || uaddrlen <= 2 {
        return 0;
    }
    let len = if uaddrlen - 2 > UNIX_PATH_MAX as u32 {
        UNIX_PATH_MAX as u32
    } else {
        uaddrlen - 2
    };
    let sun_path = (uaddr + 2) as *const c_void;
    let mut first = 0u8;
    // SAFETY: `uaddr` is the kernel's copy of the caller's address (a
    // `struct sockaddr_storage`); probe_read copies without faulting.
    if unsafe { bpf_probe_read_kernel(&raw mut first as *mut c_void, 1, sun_path) } != 0 {
        return 0;
    }
    let rc = if first == 0 {
        let n = len & 0x7f;
        if n as usize > UNIX_PATH_MAX {
            return 0;
        }
        // SAFETY: as above; `n` bytes fit in `key.path`.
        unsafe { bpf_probe_read_kernel(key.path.as_mut_ptr() as *mut c_void, n, sun_path) }
    } else {
        // Room for `len` bytes and the terminator the helper adds, within
        // the key. A 108-byte name without terminator loses its last byte,
        // so it can only match a rule no policy can express (rules are at
        // most 107 bytes).
        let size = (if len as usize >= UNIX_PATH_MAX {
            UNIX_PATH_MAX as u32
        } else {
            len + 1
        }) & 0x7f;
        // Bound for the verifier (the branches above already imply it).
        if size as usize > UNIX_PATH_MAX {
            return 0;
        }
        // SAFETY: as above; the helper writes at most `size` bytes.
        let r = unsafe {
            bpf_probe_read_kernel_str(key.path.as_mut_ptr() as *mut c_void, size, sun_path)
        };
        if r < 0 { r } else { 0 }
    };
    if rc != 0 {
        return 0;
    }
    len
}

#[inline(always)]
pub fn judge(ctx: *mut bpf_sock_addr, hook: u8) -> i32 {
    let agent = current_agent();
    let mut key = UnixKey {
        slot: agent.slot(),
        path: [0; UNIX_PATH_MAX],
    };
    let len = read_address(ctx, &mut key);
    // SAFETY: the value is only tested for presence, never read, so a
    // concurrent update by user space cannot tear anything.
    if !agent.info.is_null() && len != 0 && unsafe { UNIX.get(&key) }.is_some() {
        clear_hook_denied();
        return ALLOW;
    }
    // Audit mode relaxes the address rules only: Unix sockets reach local
    // daemons (guardd's own socket among them), so a name the policy does
    // not give stays refused in every mode.
    let reason = if agent.info.is_null() {
        REASON_UNKNOWN_SCOPE
    } else {
        REASON_NO_RULE
    };
    agent.count_denied();
    match EVENTS.reserve::<UnixEvent>(0) {
        Some(mut slot) => {
            let ev = slot.as_mut_ptr();
            // SAFETY: `ev` points to a reserved slot of the right size; every
            // field is written before submit.
            unsafe {
                (*ev).hdr = agent.header(EVENT_UNIX, VERDICT_DENIED, reason);
                (*ev).hook = hook;
                (*ev)._pad = [0; 3];
                (*ev).path_len = len;
                (*ev).path = key.path;
                (*ev)._pad2 = [0; 4];
            }
            slot.submit(0);
            agent.count_event();
        }
        None => agent.count_lost(),
    }
    mark_hook_denied();
    DENY
}
