//! x86_64 system call numbers that guard's kernel programs or user space
//! compare against. Only the numbers: names, path arguments and the
//! seccomp allowlist are in guard-daemon's `syscalls` table, whose unit
//! tests check every constant here against the name it carries.
//!
//! `u32`, as `seccomp_data.nr` and guard's events carry them; the kernel
//! programs widen them to compare with a register.

pub const NR_MMAP: u32 = 9;
pub const NR_MPROTECT: u32 = 10;
pub const NR_IOCTL: u32 = 16;
pub const NR_SOCKET: u32 = 41;
pub const NR_CONNECT: u32 = 42;
pub const NR_SENDTO: u32 = 44;
pub const NR_SENDMSG: u32 = 46;
pub const NR_BIND: u32 = 49;
pub const NR_LISTEN: u32 = 50;
pub const NR_SETSOCKOPT: u32 = 54;
pub const NR_CLONE: u32 = 56;
pub const NR_FORK: u32 = 57;
pub const NR_VFORK: u32 = 58;
pub const NR_EXECVE: u32 = 59;
pub const NR_KILL: u32 = 62;
pub const NR_TRUNCATE: u32 = 76;
pub const NR_RENAME: u32 = 82;
pub const NR_CREAT: u32 = 85;
pub const NR_LINK: u32 = 86;
pub const NR_SETPGID: u32 = 109;
pub const NR_GETPGID: u32 = 121;
pub const NR_GETSID: u32 = 124;
pub const NR_PERSONALITY: u32 = 135;
pub const NR_GETPRIORITY: u32 = 140;
pub const NR_SETPRIORITY: u32 = 141;
pub const NR_SCHED_GETPARAM: u32 = 143;
pub const NR_SCHED_SETSCHEDULER: u32 = 144;
pub const NR_SCHED_GETSCHEDULER: u32 = 145;
pub const NR_SCHED_RR_GET_INTERVAL: u32 = 148;
pub const NR_TKILL: u32 = 200;
pub const NR_SCHED_SETAFFINITY: u32 = 203;
pub const NR_SCHED_GETAFFINITY: u32 = 204;
pub const NR_TGKILL: u32 = 234;
pub const NR_INOTIFY_ADD_WATCH: u32 = 254;
pub const NR_RENAMEAT: u32 = 264;
pub const NR_LINKAT: u32 = 265;
pub const NR_UNSHARE: u32 = 272;
pub const NR_GET_ROBUST_LIST: u32 = 274;
pub const NR_PRLIMIT64: u32 = 302;
pub const NR_SENDMMSG: u32 = 307;
pub const NR_RENAMEAT2: u32 = 316;
pub const NR_MEMFD_CREATE: u32 = 319;
pub const NR_EXECVEAT: u32 = 322;
pub const NR_PIDFD_SEND_SIGNAL: u32 = 424;
pub const NR_IO_URING_SETUP: u32 = 425;
pub const NR_IO_URING_ENTER: u32 = 426;
pub const NR_IO_URING_REGISTER: u32 = 427;
pub const NR_PIDFD_OPEN: u32 = 434;
pub const NR_CLONE3: u32 = 435;

/// The allowed calls that name another process by pid: prlimit64, getpgid,
/// getsid, get/setpriority, sched_getparam, sched_setscheduler,
/// sched_getscheduler, sched_rr_get_interval, sched_set/getaffinity,
/// get_robust_list, pidfd_open, setpgid. Their ESRCH is a refusal: the
/// agent's pid namespace hides every outside process. The others
/// (process_vm_*, kcmp, pidfd_getfd, ioprio_*, migrate/move_pages,
/// sched_setparam/setattr) are refused by seccomp with EPERM; kill and
/// tgkill are not listed, because their ESRCH is how a liveness check
/// learns a child is gone.
pub const fn names_a_process(nr: u32) -> bool {
    matches!(
        nr,
        NR_PRLIMIT64
            | NR_GETPGID
            | NR_GETSID
            | NR_GETPRIORITY
            | NR_SETPRIORITY
            | NR_SCHED_GETPARAM
            | NR_SCHED_SETSCHEDULER
            | NR_SCHED_GETSCHEDULER
            | NR_SCHED_RR_GET_INTERVAL
            | NR_SCHED_SETAFFINITY
            | NR_SCHED_GETAFFINITY
            | NR_GET_ROBUST_LIST
            | NR_PIDFD_OPEN
            | NR_SETPGID
    )
}
