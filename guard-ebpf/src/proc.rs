//! Observation of agents' processes: every exec in a scope, and every system
//! call in a scope that the kernel refused (EPERM, EACCES, ENOSYS,
//! EAFNOSUPPORT, EROFS from the read-only views, EAGAIN from fork, and
//! ESRCH from calls that name another process: outside the agent's pid
//! namespace no process exists for it). Landlock and seccomp refuse without
//! telling anyone; these events are how their refusals reach the journal
//! (docs/journal.md explains why this source rather than the audit stream).
//!
//! Raw tracepoints hand their arguments over as plain integers, so kernel
//! structs are read with `bpf_probe_read_kernel` at offsets guardd takes
//! from the kernel's BTF (see `guard_common::Config`).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{
            bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_str,
            bpf_probe_read_user, bpf_probe_read_user_str, bpf_send_signal,
        },
    },
    programs::RawTracePointContext,
};
use guard_common::{
    AGENT_LAYERS_REQUIRED, AGENT_LEARN, AGENT_RESTRICT_EXEC, ARGV_EXE, ARGV_FAULT, ARGV_MORE,
    AT_FDCWD, Config, EVENT_EXEC, EVENT_EXEC_REFUSED, EVENT_KILL, EVENT_OBSERVED, EVENT_SYSCALL,
    EXEC_ARG_BYTES, EXEC_ARGS_MAX, EXEC_ARGV_MAX, EXEC_FILENAME_MAX, ExecArgv, ExecEvent,
    ExecRefusedEvent, KillEvent, LAYER_CAPABILITIES, LAYER_NO_NEW_PRIVS, LAYER_SECCOMP,
    LAYER_UNREADABLE, MAX_LOADERS, NO_PATH, PATH_ARG_DIRFD, PATH_ARG_ENTRIES, PATH_ARG_LEARN,
    PATH_BASE, PATH_ENTRY, PFA_NO_NEW_PRIVS, REASON_DIRECT_LOADER, REASON_UNCONFINED,
    SECCOMP_MODE_DEAD, SECCOMP_MODE_FILTER, SYS_SECCOMP, SYSCALL_PATH_MAX, SyscallEvent,
    VERDICT_ALLOWED, VERDICT_AUDIT, VERDICT_DENIED, syscalls as sc,
};

use crate::{
    common::{Agent, current_agent, take_hook_denied},
    maps::{CONFIG, ENTRY_PATHS, ENTRY_SCRATCH, EVENTS, PATH_ARG},
};

const EPERM: i64 = 1;
const EAGAIN: i64 = 11;
const EACCES: i64 = 13;
const EAFNOSUPPORT: i64 = 97;
const EXDEV: i64 = 18;
const ESRCH: i64 = 3;
const EROFS: i64 = 30;
const SIGSYS: u64 = 31;
const ENOSYS: i64 = 38;
const SIGKILL: u32 = 9;

// The system call register holds a `long`; guard_common's numbers are u32.
const NR_RENAME: u64 = sc::NR_RENAME as u64;
const NR_LINK: u64 = sc::NR_LINK as u64;
const NR_RENAMEAT: u64 = sc::NR_RENAMEAT as u64;
const NR_LINKAT: u64 = sc::NR_LINKAT as u64;
const NR_RENAMEAT2: u64 = sc::NR_RENAMEAT2 as u64;
const NR_CLONE: u64 = sc::NR_CLONE as u64;
const NR_FORK: u64 = sc::NR_FORK as u64;
const NR_VFORK: u64 = sc::NR_VFORK as u64;
const NR_CONNECT: u64 = sc::NR_CONNECT as u64;
const NR_SENDTO: u64 = sc::NR_SENDTO as u64;
const NR_SENDMSG: u64 = sc::NR_SENDMSG as u64;
const NR_SENDMMSG: u64 = sc::NR_SENDMMSG as u64;
const NR_BIND: u64 = sc::NR_BIND as u64;
const NR_EXECVE: u64 = sc::NR_EXECVE as u64;
const NR_EXECVEAT: u64 = sc::NR_EXECVEAT as u64;

/// `guard_common::syscalls::names_a_process` for the register's value: a
/// number beyond u32 names no call at all.
#[inline(always)]
fn names_a_process(nr: u64) -> bool {
    nr <= u64::from(u32::MAX) && sc::names_a_process(nr as u32)
}

#[inline(always)]
fn read_u64(addr: u64) -> u64 {
    let mut v = 0u64;
    // SAFETY: probe_read copies 8 bytes from a kernel address without
    // faulting; on failure `v` stays 0.
    unsafe { bpf_probe_read_kernel(&raw mut v as *mut c_void, 8, addr as *const c_void) };
    v
}

#[inline(always)]
fn read_u32(addr: u64) -> u32 {
    let mut v = 0u32;
    // SAFETY: as in `read_u64`, 4 bytes.
    unsafe { bpf_probe_read_kernel(&raw mut v as *mut c_void, 4, addr as *const c_void) };
    v
}

/// Reads 8 bytes of kernel memory; `None` when the address cannot be read.
#[inline(always)]
fn try_read_u64(addr: u64) -> Option<u64> {
    let mut v = 0u64;
    // SAFETY: as in `read_u64`; the helper's result says whether it read.
    let rc = unsafe { bpf_probe_read_kernel(&raw mut v as *mut c_void, 8, addr as *const c_void) };
    (rc == 0).then_some(v)
}

/// Capabilities beyond the policy's that an exec'd program holds
/// (`ExecEvent::excess_*`).
#[derive(Clone, Copy, Default)]
struct Excess {
    effective: u64,
    permitted: u64,
}

/// What the current task, which has just exec'd, runs without among the
/// layers the launcher applies before exec (`LAYER_*` bits), and its
/// capabilities beyond `allowed`. A field that cannot be read counts as
/// missing (`LAYER_UNREADABLE`): fail closed.
#[inline(always)]
fn missing_layers(cfg: &Config, allowed: u64) -> (u32, Excess) {
    // SAFETY: a plain BPF helper call.
    let task = unsafe { bpf_get_current_task() };
    let mut missing = 0;
    match try_read_u64(task + u64::from(cfg.task_seccomp_off)) {
        // `mode` is an int: the low half of the little-endian word.
        Some(w) if w as u32 as i32 == SECCOMP_MODE_FILTER => {}
        Some(_) => missing |= LAYER_SECCOMP,
        None => missing |= LAYER_UNREADABLE,
    }
    match try_read_u64(task + u64::from(cfg.task_atomic_flags_off)) {
        Some(f) if f & (1 << PFA_NO_NEW_PRIVS) != 0 => {}
        Some(_) => missing |= LAYER_NO_NEW_PRIVS,
        None => missing |= LAYER_UNREADABLE,
    }
    // exec has committed the new program's credentials before the
    // tracepoint: these are the capabilities it starts with. A permitted
    // capability counts as much as an effective one: capset() (or, for a
    // real-only root, setuid(0)) makes it effective once the program runs.
    // Under no_new_privs (required above) no later exec grows the
    // permitted set beyond the current one, so checking it at every exec
    // bounds what any program of the scope can hold. The ambient set is
    // part of the permitted one (the kernel drops an ambient capability
    // that leaves it). The bounding and inheritable sets are not read:
    // they only bound what an exec adds to the permitted set, and
    // no_new_privs caps that at the permitted set checked here.
    let mut excess = Excess::default();
    let sets = match try_read_u64(task + u64::from(cfg.task_cred_off)) {
        Some(cred) if cred != 0 => match (
            try_read_u64(cred + u64::from(cfg.cred_cap_effective_off)),
            try_read_u64(cred + u64::from(cfg.cred_cap_permitted_off)),
        ) {
            (Some(e), Some(p)) => Some((e, p)),
            _ => None,
        },
        _ => None,
    };
    match sets {
        Some((e, p)) => {
            excess.effective = e & !allowed;
            excess.permitted = p & !allowed;
        }
        None => missing |= LAYER_UNREADABLE,
    }
    if excess.effective | excess.permitted != 0 {
        missing |= LAYER_CAPABILITIES;
    }
    (missing, excess)
}

/// Kernel `dev_t` and inode number of an inode: how guardd matches a file
/// the kernel saw with a path it can stat.
#[inline(always)]
fn inode_identity(cfg: &Config, inode: u64) -> (u32, u64) {
    let sb = read_u64(inode + u64::from(cfg.inode_sb_off));
    (
        read_u32(sb + u64::from(cfg.sb_dev_off)),
        read_u64(inode + u64::from(cfg.inode_ino_off)),
    )
}

/// Whether the file `bprm` executes is one of the host's dynamic loaders.
/// Run as a program rather than as an interpreter, the loader maps any
/// readable file (or memfd) executable, which `exec` grants would not allow.
#[inline(always)]
fn runs_the_loader(cfg: &Config, bprm: u64) -> bool {
    if cfg.loader_count == 0 {
        return false;
    }
    let file = read_u64(bprm + u64::from(cfg.bprm_file_off));
    let (dev, ino) = inode_identity(cfg, read_u64(file + u64::from(cfg.file_inode_off)));
    let mut i = 0;
    while i < MAX_LOADERS {
        if (i as u32) < cfg.loader_count && cfg.loader_ino[i] == ino && cfg.loader_dev[i] == dev {
            return true;
        }
        i += 1;
    }
    false
}

/// `raw_tracepoint/sched_process_exec`: (task, old_pid, bprm).
#[inline(always)]
pub fn on_exec(ctx: &RawTracePointContext) -> u32 {
    let agent = current_agent();
    if agent.info.is_null() {
        return 0;
    }
    let Some(cfg) = CONFIG.get(0) else { return 0 };
    let bprm: u64 = ctx.arg(2);
    let flags = agent.flags();
    // The exec has succeeded but no instruction of the new program has run:
    // a SIGKILL now ends it on its way back to user space. Decided before
    // the event is reserved, so a full ring buffer does not let it through.
    // A program without the launcher's layers is refused whatever it is
    // (audit mode too: the launcher applies them there as well).
    let (missing, excess) = if flags & AGENT_LAYERS_REQUIRED != 0 {
        missing_layers(cfg, agent.caps())
    } else {
        (0, Excess::default())
    };
    let loader = missing == 0 && flags & AGENT_RESTRICT_EXEC != 0 && runs_the_loader(cfg, bprm);
    if missing != 0 || loader {
        // SAFETY: signals the current task, which is the one exec'ing.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    let Some(mut slot) = EVENTS.reserve::<ExecEvent>(0) else {
        agent.count_lost();
        return 0;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: `ev` is a reserved slot of the right size; every field is
    // written (or its length set to what is valid) before submit.
    unsafe {
        (*ev).hdr = if missing != 0 {
            agent.header(EVENT_EXEC, VERDICT_DENIED, REASON_UNCONFINED)
        } else if loader {
            agent.header(EVENT_EXEC, VERDICT_DENIED, REASON_DIRECT_LOADER)
        } else {
            agent.header(EVENT_EXEC, VERDICT_ALLOWED, 0)
        };
        (*ev).missing = missing;
        (*ev)._pad = 0;
        (*ev).excess_caps = excess.effective | excess.permitted;
        (*ev).excess_effective = excess.effective;
        (*ev).excess_permitted = excess.permitted;
        let name = read_u64(bprm + u64::from(cfg.bprm_filename_off));
        let n = bpf_probe_read_kernel_str(
            (*ev).filename.as_mut_ptr() as *mut c_void,
            EXEC_FILENAME_MAX as u32,
            name as *const c_void,
        );
        (*ev).filename_len = if n > 0 { n as u32 } else { 0 };
        // A script runs its interpreter: the kernel names it in
        // `bprm->interp` (the same pointer as `filename` otherwise).
        let interp = read_u64(bprm + u64::from(cfg.bprm_interp_off));
        (*ev).interp_len = 0;
        (*ev)._pad2 = 0;
        if interp != 0 && interp != name {
            let n = bpf_probe_read_kernel_str(
                (*ev).interp.as_mut_ptr() as *mut c_void,
                EXEC_FILENAME_MAX as u32,
                interp as *const c_void,
            );
            if n > 0 {
                (*ev).interp_len = n as u32;
            }
        }
        let task = bpf_get_current_task();
        let mm = read_u64(task + u64::from(cfg.task_mm_off));
        let start = read_u64(mm + u64::from(cfg.mm_arg_start_off));
        let end = read_u64(mm + u64::from(cfg.mm_arg_end_off));
        let total = if end > start { end - start } else { 0 };
        (*ev).args_len = total as u32;
        let mut copy = total & 0x3ff;
        if total > EXEC_ARGS_MAX as u64 || copy > EXEC_ARGS_MAX as u64 {
            copy = EXEC_ARGS_MAX as u64;
        }
        if bpf_probe_read_user(
            (*ev).args.as_mut_ptr() as *mut c_void,
            copy as u32,
            start as *const c_void,
        ) != 0
        {
            (*ev).args_len = 0;
        }
    }
    slot.submit(0);
    agent.count_event();
    0
}

/// `raw_tracepoint/sys_exit`: (regs, ret). Returns at once for errors that
/// are not refusals, and for every success while no agent learns, so the
/// cost for the rest of the host is a comparison (and, for a success, one
/// look at `Config::learning`).
#[inline(always)]
pub fn on_sys_exit(ctx: &RawTracePointContext) -> u32 {
    let ret: i64 = ctx.arg(1);
    if ret >= 0 {
        return on_success(ctx, ret);
    }
    if ret != -EPERM
        && ret != -EACCES
        && ret != -ENOSYS
        && ret != -EAFNOSUPPORT
        && ret != -EAGAIN
        && ret != -EXDEV
        && ret != -EROFS
        && ret != -ESRCH
    {
        return 0;
    }
    let agent = current_agent();
    if agent.info.is_null() {
        return 0;
    }
    let Some(cfg) = CONFIG.get(0) else { return 0 };
    let regs: u64 = ctx.arg(0);
    let nr = read_u64(regs + u64::from(cfg.regs_orig_ax_off));
    // EAGAIN is ordinary for non-blocking I/O; only fork's EAGAIN (the pids
    // limit) is a refusal.
    if ret == -EAGAIN && nr != NR_CLONE && nr != NR_FORK && nr != NR_VFORK {
        return 0;
    }
    // ESRCH is a refusal only from the calls that name another process by
    // pid (issue 8): the agent's pid namespace hides every outside one. Not
    // kill/tgkill, whose ESRCH is how a liveness check learns a child is
    // gone.
    if ret == -ESRCH && !names_a_process(nr) {
        return 0;
    }
    // Landlock answers EXDEV when a rename or link would move a file
    // between directories with different grants; elsewhere EXDEV is an
    // ordinary error.
    if ret == -EXDEV
        && nr != NR_RENAME
        && nr != NR_LINK
        && nr != NR_RENAMEAT
        && nr != NR_LINKAT
        && nr != NR_RENAMEAT2
    {
        return 0;
    }
    // connect/sendto/sendmsg/sendmmsg/bind refused by an address hook were
    // reported, with the address, by the hook: a second event would only
    // take ring buffer room from the next refusal. An EPERM the hook did
    // not cause (an option or control message the kernel refused) is
    // reported here.
    if ret == -EPERM
        && (nr == NR_CONNECT
            || nr == NR_SENDTO
            || nr == NR_SENDMSG
            || nr == NR_SENDMMSG
            || nr == NR_BIND)
        && take_hook_denied()
    {
        return 0;
    }
    // A refused exec carries the program's arguments: a larger event,
    // reserved only for these (rare) refusals.
    if nr == NR_EXECVE || nr == NR_EXECVEAT {
        let Some(mut slot) = EVENTS.reserve::<ExecRefusedEvent>(0) else {
            agent.count_lost();
            return 0;
        };
        let ev = slot.as_mut_ptr();
        // SAFETY: as in `on_exec`; `fill_syscall` and `read_argv` write
        // every field of the event.
        unsafe {
            fill_syscall(
                cfg,
                &mut (*ev).sys,
                &agent,
                EVENT_EXEC_REFUSED,
                VERDICT_DENIED,
                nr,
                ret,
                regs,
            );
            let argv = if nr == NR_EXECVE {
                (*ev).sys.args[1]
            } else {
                (*ev).sys.args[2]
            };
            read_argv(&mut (*ev).argv, argv);
            exe_identity(cfg, &mut (*ev).argv);
        }
        slot.submit(0);
        agent.count_event();
        return 0;
    }
    submit_syscall(cfg, &agent, EVENT_SYSCALL, VERDICT_DENIED, nr, ret, regs);
    0
}

/// A successful call of an agent in learn mode (issue 14): the path calls
/// that would need a file grant (`PATH_ARG_LEARN`) are reported with their
/// path, as a refusal would be, so guardd can draft the grants. Only while
/// some agent learns is the call's number even read.
#[inline(always)]
fn on_success(ctx: &RawTracePointContext, ret: i64) -> u32 {
    let Some(cfg) = CONFIG.get(0) else { return 0 };
    if cfg.learning == 0 {
        return 0;
    }
    let regs: u64 = ctx.arg(0);
    let nr = read_u64(regs + u64::from(cfg.regs_orig_ax_off));
    if nr >= u64::from(PATH_ARG_ENTRIES) {
        return 0;
    }
    let arg = match PATH_ARG.get(nr as u32) {
        Some(a) => *a,
        None => return 0,
    };
    if arg & PATH_ARG_LEARN == 0 {
        return 0;
    }
    let agent = current_agent();
    if agent.info.is_null() || agent.flags() & AGENT_LEARN == 0 {
        return 0;
    }
    submit_syscall(cfg, &agent, EVENT_OBSERVED, VERDICT_AUDIT, nr, ret, regs);
    0
}

/// Reserves, fills and submits one `SyscallEvent` (a refusal, or a use
/// observed in learn mode), counting it for the agent.
#[inline(always)]
fn submit_syscall(
    cfg: &Config,
    agent: &Agent,
    kind: u16,
    verdict: u8,
    nr: u64,
    ret: i64,
    regs: u64,
) {
    let Some(mut slot) = EVENTS.reserve::<SyscallEvent>(0) else {
        agent.count_lost();
        return;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: as in `on_exec`; `fill_syscall` writes every field.
    unsafe { fill_syscall(cfg, &mut *ev, agent, kind, verdict, nr, ret, regs) };
    slot.submit(0);
    agent.count_event();
}

/// Writes every field of a call's event; `kind` is the event's
/// (`EVENT_SYSCALL`, `EVENT_EXEC_REFUSED` when it heads a larger one, or
/// `EVENT_OBSERVED` for a learned success).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn fill_syscall(
    cfg: &Config,
    ev: &mut SyscallEvent,
    agent: &Agent,
    kind: u16,
    verdict: u8,
    nr: u64,
    ret: i64,
    regs: u64,
) {
    ev.hdr = agent.header(kind, verdict, 0);
    ev.nr = nr as u32;
    ev.ret = ret as i32;
    let mut i = 0;
    while i < 6 {
        ev.args[i] = read_u64(regs + u64::from(cfg.regs_arg_off[i]));
        i += 1;
    }
    let arg = if nr < u64::from(PATH_ARG_ENTRIES) {
        PATH_ARG.get(nr as u32).copied().unwrap_or(NO_PATH)
    } else {
        NO_PATH
    };
    ev.path_arg = arg;
    ev.path_len = 0;
    // SAFETY: a plain BPF helper call.
    let task = unsafe { bpf_get_current_task() };
    let parent = read_u64(task + u64::from(cfg.task_real_parent_off));
    ev.ppid = read_u64(parent + u64::from(cfg.task_tgid_off)) as u32;
    ev.path_flags = 0;
    let idx = (arg & 7) as usize;
    if idx < 6 {
        let ptr = ev.args[idx];
        // SAFETY: the helper writes at most the buffer's size.
        let n = unsafe {
            bpf_probe_read_user_str(
                ev.path.as_mut_ptr() as *mut c_void,
                SYSCALL_PATH_MAX as u32,
                ptr as *const c_void,
            )
        };
        if n > 0 {
            ev.path_len = n as u32;
        }
    }
    ev.entry_len = 0;
    ev.base_dev = 0;
    ev.base_ino = 0;
    if idx < 6 {
        path_facts(cfg, ev, arg, idx, task);
    }
}

/// Identifies the program the caller runs (`task->mm->exe_file`), which
/// outlives neither the process nor its `/proc` entry for guardd to read.
#[inline(always)]
fn exe_identity(cfg: &Config, out: &mut ExecArgv) {
    out.exe_dev = 0;
    out.exe_ino = 0;
    // SAFETY: a plain BPF helper call.
    let task = unsafe { bpf_get_current_task() };
    let mm = read_u64(task + u64::from(cfg.task_mm_off));
    if mm == 0 {
        return;
    }
    let file = read_u64(mm + u64::from(cfg.mm_exe_file_off));
    if file == 0 {
        return;
    }
    let inode = read_u64(file + u64::from(cfg.file_inode_off));
    if inode == 0 {
        return;
    }
    (out.exe_dev, out.exe_ino) = inode_identity(cfg, inode);
    if out.exe_ino != 0 {
        out.flags |= ARGV_EXE;
    }
}

/// Reads the first `EXEC_ARGV_MAX` strings of a user `argv` array, each cut
/// at `EXEC_ARG_BYTES` (flagged). A bounded loop: one pointer read and one
/// string read per argument, on refused execs only.
#[inline(always)]
fn read_argv(out: &mut ExecArgv, argv: u64) {
    out.count = 0;
    out.flags = 0;
    out.cut = 0;
    let mut i = 0;
    while i < EXEC_ARGV_MAX {
        out.lens[i] = 0;
        i += 1;
    }
    if argv == 0 {
        return;
    }
    let mut i = 0;
    while i < EXEC_ARGV_MAX {
        let mut p = 0u64;
        // SAFETY: probe_read copies 8 bytes from a user address without
        // faulting; it fails (non-zero) on an unmapped one.
        if unsafe {
            bpf_probe_read_user(
                &raw mut p as *mut c_void,
                8,
                (argv + 8 * i as u64) as *const c_void,
            )
        } != 0
        {
            out.flags |= ARGV_FAULT;
            return;
        }
        if p == 0 {
            return;
        }
        // SAFETY: the helper writes at most the buffer's size.
        let n = unsafe {
            bpf_probe_read_user_str(
                out.args[i].as_mut_ptr() as *mut c_void,
                EXEC_ARG_BYTES as u32,
                p as *const c_void,
            )
        };
        if n > 0 {
            out.lens[i] = n as u32;
            // A full buffer holds EXEC_ARG_BYTES - 1 bytes and the NUL the
            // helper put there: the string was cut unless its own NUL sits
            // at that place.
            if n as usize == EXEC_ARG_BYTES {
                let mut next = 0u8;
                // SAFETY: one byte from a user address, without faulting.
                unsafe {
                    bpf_probe_read_user(
                        &raw mut next as *mut c_void,
                        1,
                        (p + EXEC_ARG_BYTES as u64 - 1) as *const c_void,
                    )
                };
                if next != 0 {
                    out.cut |= 1 << i;
                }
            }
        }
        out.count = i as u32 + 1;
        i += 1;
    }
    let mut p = 0u64;
    // SAFETY: as above.
    let r = unsafe {
        bpf_probe_read_user(
            &raw mut p as *mut c_void,
            8,
            (argv + 8 * EXEC_ARGV_MAX as u64) as *const c_void,
        )
    };
    if r != 0 || p != 0 {
        out.flags |= ARGV_MORE;
    }
}

/// `raw_tracepoint/sys_enter`: (regs, id). Reads the path argument of an
/// agent's path call before the kernel copies it, so that `sys_exit` can
/// tell whether the buffer changed while the call ran. Runs for every
/// system call on the host: a call without a path argument costs one
/// array lookup, a path call outside any scope one more (the cgroup).
#[inline(always)]
pub fn on_sys_enter(ctx: &RawTracePointContext) -> u32 {
    let nr: u64 = ctx.arg(1);
    if nr >= u64::from(PATH_ARG_ENTRIES) {
        return 0;
    }
    let arg = match PATH_ARG.get(nr as u32) {
        Some(a) => *a,
        None => return 0,
    };
    let idx = (arg & 7) as usize;
    if idx >= 6 {
        return 0;
    }
    if current_agent().info.is_null() {
        return 0;
    }
    let Some(cfg) = CONFIG.get(0) else { return 0 };
    let Some(e) = ENTRY_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    let regs: u64 = ctx.arg(0);
    let ptr = read_u64(regs + u64::from(cfg.regs_arg_off[idx]));
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: `e` is this CPU's scratch entry (valid for the program run,
    // not shared with a concurrent run on this CPU); the helper writes at
    // most its size.
    unsafe {
        (*e).nr = nr as u32;
        (*e).ptr = ptr;
        let n = bpf_probe_read_user_str(
            (*e).path.as_mut_ptr() as *mut c_void,
            SYSCALL_PATH_MAX as u32,
            ptr as *const c_void,
        );
        (*e).len = if n > 0 { n as u32 } else { 0 };
        let _ = ENTRY_PATHS.insert(&tid, &*e, 0);
    }
    0
}

/// What the kernel knows about a refused call's path besides the exit
/// reading: the entry reading (taken and cleared here), and the identity of
/// the directory a relative path starts from (a directory descriptor's
/// file, or the working directory), so that guardd can check the directory
/// it names against the one the call used.
#[inline(always)]
fn path_facts(cfg: &Config, ev: &mut SyscallEvent, arg: u32, idx: usize, task: u64) {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the map value stays valid for the program run (RCU); it is
    // copied out with a probe read before the entry is removed.
    if let Some(e) = unsafe { ENTRY_PATHS.get(&tid) } {
        if e.nr == ev.nr && e.ptr == ev.args[idx] {
            let len = e.len;
            // SAFETY: copies one map value field into the event, same size.
            unsafe {
                bpf_probe_read_kernel(
                    ev.entry.as_mut_ptr() as *mut c_void,
                    SYSCALL_PATH_MAX as u32,
                    e.path.as_ptr() as *const c_void,
                )
            };
            ev.entry_len = len;
            ev.path_flags |= PATH_ENTRY;
        }
        let _ = ENTRY_PATHS.remove(&tid);
    }
    if ev.path_len > 0 && ev.path[0] == b'/' {
        return;
    }
    let dirfd = if arg & PATH_ARG_DIRFD != 0 && idx >= 1 && idx < 6 {
        ev.args[idx - 1] as i32
    } else {
        AT_FDCWD
    };
    let inode = if dirfd == AT_FDCWD {
        let fs = read_u64(task + u64::from(cfg.task_fs_off));
        let dentry = read_u64(fs + u64::from(cfg.fs_pwd_off) + u64::from(cfg.path_dentry_off));
        read_u64(dentry + u64::from(cfg.dentry_inode_off))
    } else if dirfd >= 0 {
        let files = read_u64(task + u64::from(cfg.task_files_off));
        let fdt = read_u64(files + u64::from(cfg.files_fdt_off));
        let max = read_u32(fdt + u64::from(cfg.fdt_max_fds_off));
        if (dirfd as u32) < max {
            let fds = read_u64(fdt + u64::from(cfg.fdt_fd_off));
            let file = read_u64(fds + 8 * dirfd as u64);
            if file != 0 {
                read_u64(file + u64::from(cfg.file_inode_off))
            } else {
                0
            }
        } else {
            0
        }
    } else {
        0
    };
    if inode != 0 {
        (ev.base_dev, ev.base_ino) = inode_identity(cfg, inode);
        ev.path_flags |= PATH_BASE;
    }
}

/// `raw_tracepoint/signal_generate`: (sig, info, task, group, result).
/// A process that seccomp kills makes no `sys_exit`; the SIGSYS seccomp
/// forces on it is its only trace. The agent could send itself a SIGSYS
/// with the same `si_code`, so the task's seccomp mode, which the kernel
/// sets to DEAD just before the kill, decides.
#[inline(always)]
pub fn on_signal(ctx: &RawTracePointContext) -> u32 {
    let sig: u64 = ctx.arg(0);
    if sig & 0xffff_ffff != SIGSYS {
        return 0;
    }
    let agent = current_agent();
    if agent.info.is_null() {
        return 0;
    }
    let Some(cfg) = CONFIG.get(0) else { return 0 };
    let info: u64 = ctx.arg(1);
    let target: u64 = ctx.arg(2);
    // SAFETY: a plain BPF helper call.
    let task = unsafe { bpf_get_current_task() };
    // SEND_SIG_NOINFO/PRIV are small integers, not pointers; seccomp signals
    // its own task.
    if info < 4096 || target != task {
        return 0;
    }
    // `struct kernel_siginfo` has the UAPI siginfo layout: si_code at 8,
    // and for SIGSYS `_sifields._sigsys` {_call_addr, _syscall, _arch} at 16.
    let word = read_u64(info + 8);
    let code = word as u32 as i32;
    if code != SYS_SECCOMP {
        return 0;
    }
    let mode = read_u64(task + u64::from(cfg.task_seccomp_off)) as u32 as i32;
    if mode != SECCOMP_MODE_DEAD {
        return 0;
    }
    let sys = read_u64(info + 24);
    let ev = KillEvent {
        hdr: agent.header(EVENT_KILL, VERDICT_DENIED, 0),
        signal: SIGSYS as u32,
        code,
        syscall: sys as u32 as i32,
        arch: (sys >> 32) as u32,
    };
    agent.count_denied();
    match EVENTS.reserve::<KillEvent>(0) {
        Some(mut slot) => {
            // SAFETY: writing a plain value into a reserved slot of its size.
            unsafe { slot.as_mut_ptr().write(ev) };
            slot.submit(0);
            agent.count_event();
        }
        None => agent.count_lost(),
    }
    0
}
