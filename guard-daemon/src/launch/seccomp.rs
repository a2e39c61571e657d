//! The agent's seccomp filter, built as data: a default-deny allowlist of
//! the system calls ordinary agents need, with argument checks where a call
//! is needed but some of its uses are not (socket families, namespace flags,
//! terminal injection).
//!
//! The filter checks the architecture first (anything but x86_64 kills the
//! process: 32-bit entry points are a classic bypass) and refuses x32 calls.
//! System calls are dispatched through a balanced tree of comparisons, so a
//! call costs about log2(ranges) instructions rather than a scan of the list.
//!
//! `io_uring_*` and `clone3` answer ENOSYS so runtimes fall back to calls the
//! filter can inspect; everything not allowed answers EPERM.
//!
//! `evaluate` runs the generated program in a small cBPF interpreter, so the
//! filter is tested as data without installing it.

use std::io;

/// One classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JA: u16 = 0x05;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_JMP_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const RET_ERRNO: u32 = 0x0005_0000;
pub const RET_ALLOW: u32 = 0x7fff_0000;

/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_lo(i: u32) -> u32 {
    16 + 8 * i
}

const fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}
const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

/// What happens to one system call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Errno(i32),
    /// Allowed when the low 32 bits of argument `arg` are one of `values`.
    ArgIn {
        arg: u32,
        values: Vec<u32>,
        otherwise: i32,
    },
    /// Allowed unless argument `arg` has any bit of `mask` set.
    ArgNoBits {
        arg: u32,
        mask: u32,
        otherwise: i32,
    },
    /// Allowed unless argument `arg` equals one of `values`.
    ArgNotIn {
        arg: u32,
        values: Vec<u32>,
        otherwise: i32,
    },
    /// `socket(2)`: allowed families, with NETLINK limited to NETLINK_ROUTE.
    Socket {
        families: Vec<u32>,
        otherwise: i32,
    },
}

/// Loads argument `arg` and returns `matched` when it equals one of
/// `values`, `unmatched` otherwise.
fn arg_match(arg: u32, values: &[u32], matched: u32, unmatched: u32) -> Vec<Insn> {
    let n = values.len();
    let mut out = vec![stmt(BPF_LD_W_ABS, off_arg_lo(arg))];
    for (i, v) in values.iter().enumerate() {
        out.push(jump(BPF_JMP_JEQ_K, *v, (n - i) as u8, 0));
    }
    out.push(stmt(BPF_RET_K, unmatched));
    out.push(stmt(BPF_RET_K, matched));
    out
}

impl Action {
    fn code(&self) -> Vec<Insn> {
        match self {
            Action::Allow => vec![stmt(BPF_RET_K, RET_ALLOW)],
            Action::Errno(e) => vec![stmt(BPF_RET_K, RET_ERRNO | (*e as u32 & 0xffff))],
            // ld arg; (jeq v -> matched)*; ret unmatched; ret matched
            Action::ArgIn {
                arg,
                values,
                otherwise,
            } => arg_match(*arg, values, RET_ALLOW, RET_ERRNO | *otherwise as u32),
            Action::ArgNotIn {
                arg,
                values,
                otherwise,
            } => arg_match(*arg, values, RET_ERRNO | *otherwise as u32, RET_ALLOW),
            Action::ArgNoBits {
                arg,
                mask,
                otherwise,
            } => vec![
                stmt(BPF_LD_W_ABS, off_arg_lo(*arg)),
                jump(BPF_JMP_JSET_K, *mask, 0, 1),
                stmt(BPF_RET_K, RET_ERRNO | *otherwise as u32),
                stmt(BPF_RET_K, RET_ALLOW),
            ],
            Action::Socket {
                families,
                otherwise,
            } => {
                // Families other than NETLINK: allowed outright. NETLINK:
                // only protocol 0 (NETLINK_ROUTE), which libc uses for
                // getaddrinfo/getifaddrs and which is read-only without
                // CAP_NET_ADMIN.
                let plain: Vec<u32> = families
                    .iter()
                    .copied()
                    .filter(|f| *f != AF_NETLINK)
                    .collect();
                let netlink = families.contains(&AF_NETLINK);
                let n = plain.len();
                let mut out = vec![stmt(BPF_LD_W_ABS, off_arg_lo(0))];
                // [ld fam] [jeq plain_i -> allow]* then, with netlink,
                // [jeq NETLINK +1] [ret deny] [ld proto] [jeq 0 +1] [ret deny],
                // else [ret deny]; finally [ret allow].
                let tail = if netlink { 5 } else { 1 };
                let tail_allow_from = |i: usize| (n - i - 1 + tail) as u8;
                for (i, f) in plain.iter().enumerate() {
                    out.push(jump(BPF_JMP_JEQ_K, *f, tail_allow_from(i), 0));
                }
                if netlink {
                    out.push(jump(BPF_JMP_JEQ_K, AF_NETLINK, 1, 0));
                    out.push(stmt(BPF_RET_K, RET_ERRNO | *otherwise as u32));
                    out.push(stmt(BPF_LD_W_ABS, off_arg_lo(2)));
                    out.push(jump(BPF_JMP_JEQ_K, 0, 1, 0));
                    out.push(stmt(BPF_RET_K, RET_ERRNO | *otherwise as u32));
                } else {
                    out.push(stmt(BPF_RET_K, RET_ERRNO | *otherwise as u32));
                }
                out.push(stmt(BPF_RET_K, RET_ALLOW));
                out
            }
        }
    }
}

pub const AF_UNIX: u32 = 1;
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
pub const AF_NETLINK: u32 = 16;

/// Namespace-creating clone/unshare flags.
pub const CLONE_NS_FLAGS: u32 = 0x0002_0000 // CLONE_NEWNS
    | 0x0200_0000 // CLONE_NEWCGROUP
    | 0x0400_0000 // CLONE_NEWUTS
    | 0x0800_0000 // CLONE_NEWIPC
    | 0x1000_0000 // CLONE_NEWUSER
    | 0x2000_0000 // CLONE_NEWPID
    | 0x4000_0000 // CLONE_NEWNET
    | 0x0000_0080; // CLONE_NEWTIME

const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541c;

/// The system calls an ordinary agent (interpreters, git, shells, HTTP
/// clients) needs, by x86_64 number. Anything absent is refused with EPERM:
/// among others the mount family, ptrace and process_vm_*, bpf,
/// perf_event_open, module and kexec loading, keyctl/add_key/request_key,
/// userfaultfd, open_by_handle_at/name_to_handle_at, setns, chroot, swapon,
/// reboot, acct, quotactl, *_module, iopl/ioperm.
const ALLOWED: &[(u32, &str)] = &[
    (0, "read"),
    (1, "write"),
    (2, "open"),
    (3, "close"),
    (4, "stat"),
    (5, "fstat"),
    (6, "lstat"),
    (7, "poll"),
    (8, "lseek"),
    (9, "mmap"),
    (10, "mprotect"),
    (11, "munmap"),
    (12, "brk"),
    (13, "rt_sigaction"),
    (14, "rt_sigprocmask"),
    (15, "rt_sigreturn"),
    (17, "pread64"),
    (18, "pwrite64"),
    (19, "readv"),
    (20, "writev"),
    (21, "access"),
    (22, "pipe"),
    (23, "select"),
    (24, "sched_yield"),
    (25, "mremap"),
    (26, "msync"),
    (27, "mincore"),
    (28, "madvise"),
    (29, "shmget"),
    (30, "shmat"),
    (31, "shmctl"),
    (32, "dup"),
    (33, "dup2"),
    (34, "pause"),
    (35, "nanosleep"),
    (36, "getitimer"),
    (37, "alarm"),
    (38, "setitimer"),
    (39, "getpid"),
    (40, "sendfile"),
    (42, "connect"),
    (43, "accept"),
    (44, "sendto"),
    (45, "recvfrom"),
    (46, "sendmsg"),
    (47, "recvmsg"),
    (48, "shutdown"),
    (49, "bind"),
    (51, "getsockname"),
    (52, "getpeername"),
    (53, "socketpair"),
    (54, "setsockopt"),
    (55, "getsockopt"),
    (57, "fork"),
    (58, "vfork"),
    (59, "execve"),
    (60, "exit"),
    (61, "wait4"),
    (62, "kill"),
    (63, "uname"),
    (64, "semget"),
    (65, "semop"),
    (66, "semctl"),
    (67, "shmdt"),
    (68, "msgget"),
    (69, "msgsnd"),
    (70, "msgrcv"),
    (71, "msgctl"),
    (72, "fcntl"),
    (73, "flock"),
    (74, "fsync"),
    (75, "fdatasync"),
    (76, "truncate"),
    (77, "ftruncate"),
    (78, "getdents"),
    (79, "getcwd"),
    (80, "chdir"),
    (81, "fchdir"),
    (82, "rename"),
    (83, "mkdir"),
    (84, "rmdir"),
    (85, "creat"),
    (86, "link"),
    (87, "unlink"),
    (88, "symlink"),
    (89, "readlink"),
    (90, "chmod"),
    (91, "fchmod"),
    (92, "chown"),
    (93, "fchown"),
    (94, "lchown"),
    (95, "umask"),
    (96, "gettimeofday"),
    (97, "getrlimit"),
    (98, "getrusage"),
    (99, "sysinfo"),
    (100, "times"),
    (102, "getuid"),
    (104, "getgid"),
    (105, "setuid"),
    (106, "setgid"),
    (107, "geteuid"),
    (108, "getegid"),
    (109, "setpgid"),
    (110, "getppid"),
    (111, "getpgrp"),
    (112, "setsid"),
    (113, "setreuid"),
    (114, "setregid"),
    (115, "getgroups"),
    (116, "setgroups"),
    (117, "setresuid"),
    (118, "getresuid"),
    (119, "setresgid"),
    (120, "getresgid"),
    (121, "getpgid"),
    (122, "setfsuid"),
    (123, "setfsgid"),
    (124, "getsid"),
    (125, "capget"),
    (127, "rt_sigpending"),
    (128, "rt_sigtimedwait"),
    (129, "rt_sigqueueinfo"),
    (130, "rt_sigsuspend"),
    (131, "sigaltstack"),
    (132, "utime"),
    (133, "mknod"),
    (137, "statfs"),
    (138, "fstatfs"),
    (140, "getpriority"),
    (141, "setpriority"),
    (143, "sched_getparam"),
    (144, "sched_setscheduler"),
    (145, "sched_getscheduler"),
    (146, "sched_get_priority_max"),
    (147, "sched_get_priority_min"),
    (148, "sched_rr_get_interval"),
    (149, "mlock"),
    (150, "munlock"),
    (151, "mlockall"),
    (152, "munlockall"),
    (157, "prctl"),
    (158, "arch_prctl"),
    (160, "setrlimit"),
    (162, "sync"),
    (186, "gettid"),
    (187, "readahead"),
    (191, "getxattr"),
    (192, "lgetxattr"),
    (193, "fgetxattr"),
    (194, "listxattr"),
    (195, "llistxattr"),
    (196, "flistxattr"),
    (200, "tkill"),
    (201, "time"),
    (202, "futex"),
    (203, "sched_setaffinity"),
    (204, "sched_getaffinity"),
    (213, "epoll_create"),
    (217, "getdents64"),
    (218, "set_tid_address"),
    (219, "restart_syscall"),
    (221, "fadvise64"),
    (222, "timer_create"),
    (223, "timer_settime"),
    (224, "timer_gettime"),
    (225, "timer_getoverrun"),
    (226, "timer_delete"),
    (228, "clock_gettime"),
    (229, "clock_getres"),
    (230, "clock_nanosleep"),
    (231, "exit_group"),
    (232, "epoll_wait"),
    (233, "epoll_ctl"),
    (234, "tgkill"),
    (235, "utimes"),
    (247, "waitid"),
    (253, "inotify_init"),
    (254, "inotify_add_watch"),
    (255, "inotify_rm_watch"),
    (257, "openat"),
    (258, "mkdirat"),
    (259, "mknodat"),
    (260, "fchownat"),
    (261, "futimesat"),
    (262, "newfstatat"),
    (263, "unlinkat"),
    (264, "renameat"),
    (265, "linkat"),
    (266, "symlinkat"),
    (267, "readlinkat"),
    (268, "fchmodat"),
    (269, "faccessat"),
    (270, "pselect6"),
    (271, "ppoll"),
    (273, "set_robust_list"),
    (274, "get_robust_list"),
    (275, "splice"),
    (276, "tee"),
    (277, "sync_file_range"),
    (278, "vmsplice"),
    (280, "utimensat"),
    (281, "epoll_pwait"),
    (282, "signalfd"),
    (283, "timerfd_create"),
    (284, "eventfd"),
    (285, "fallocate"),
    (286, "timerfd_settime"),
    (287, "timerfd_gettime"),
    (288, "accept4"),
    (289, "signalfd4"),
    (290, "eventfd2"),
    (291, "epoll_create1"),
    (292, "dup3"),
    (293, "pipe2"),
    (294, "inotify_init1"),
    (295, "preadv"),
    (296, "pwritev"),
    (297, "rt_tgsigqueueinfo"),
    (299, "recvmmsg"),
    (302, "prlimit64"),
    (306, "syncfs"),
    (307, "sendmmsg"),
    (309, "getcpu"),
    (316, "renameat2"),
    (318, "getrandom"),
    (322, "execveat"),
    (324, "membarrier"),
    (325, "mlock2"),
    (326, "copy_file_range"),
    (327, "preadv2"),
    (328, "pwritev2"),
    (332, "statx"),
    (334, "rseq"),
    (424, "pidfd_send_signal"),
    (434, "pidfd_open"),
    (436, "close_range"),
    (439, "faccessat2"),
    (441, "epoll_pwait2"),
    (444, "landlock_create_ruleset"),
    (445, "landlock_add_rule"),
    (446, "landlock_restrict_self"),
    (448, "process_mrelease"),
    (449, "futex_waitv"),
    (451, "cachestat"),
    (452, "fchmodat2"),
    (457, "statmount"),
    (458, "listmount"),
];

pub const NR_SOCKET: u32 = 41;
pub const NR_LISTEN: u32 = 50;
pub const NR_CLONE: u32 = 56;
pub const NR_IOCTL: u32 = 16;
pub const NR_UNSHARE: u32 = 272;
pub const NR_PERSONALITY: u32 = 135;
pub const NR_CLONE3: u32 = 435;
pub const NR_IO_URING: [u32; 3] = [425, 426, 427];
pub const NR_MEMFD_CREATE: u32 = 319;
pub const NR_INOTIFY_ADD_WATCH: u32 = 254;
/// `memfd_create` flag asking for an executable memfd.
pub const MFD_EXEC: u32 = 0x10;

/// Options from the policy and the host.
#[derive(Clone, Debug)]
pub struct Options {
    /// Socket families the network layer governs (and so may be created).
    pub socket_families: Vec<u32>,
    /// `listen(2)` allowed: the policy has `listen` rules (or runs in audit
    /// mode). Without them it is refused here, because listen() on an
    /// unbound socket takes an ephemeral port without any bind hook.
    pub listen: bool,
    /// `inotify_add_watch(2)` allowed: the policy says `[process] inotify =
    /// true`. Landlock does not mediate watches, so without the opt-in a
    /// watch would report names under directories no grant covers.
    pub inotify: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            socket_families: vec![AF_UNIX, AF_INET, AF_INET6, AF_NETLINK],
            listen: false,
            inotify: false,
        }
    }
}

/// The per-call table the filter is generated from.
pub fn table(opts: &Options) -> Vec<(u32, Action)> {
    let mut t: Vec<(u32, Action)> = ALLOWED.iter().map(|(nr, _)| (*nr, Action::Allow)).collect();
    t.push((
        NR_SOCKET,
        Action::Socket {
            families: opts.socket_families.clone(),
            otherwise: libc::EAFNOSUPPORT,
        },
    ));
    t.push((
        NR_CLONE,
        Action::ArgNoBits {
            arg: 0,
            mask: CLONE_NS_FLAGS,
            otherwise: libc::EPERM,
        },
    ));
    t.push((
        NR_UNSHARE,
        Action::ArgNoBits {
            arg: 0,
            mask: CLONE_NS_FLAGS,
            otherwise: libc::EPERM,
        },
    ));
    t.push((
        NR_IOCTL,
        Action::ArgNotIn {
            arg: 1,
            values: vec![TIOCSTI, TIOCLINUX],
            otherwise: libc::EPERM,
        },
    ));
    // Only the query form (0xffffffff) and the default persona.
    t.push((
        NR_PERSONALITY,
        Action::ArgIn {
            arg: 0,
            values: vec![0xffff_ffff, 0],
            otherwise: libc::EPERM,
        },
    ));
    t.push((
        NR_LISTEN,
        if opts.listen {
            Action::Allow
        } else {
            Action::Errno(libc::EPERM)
        },
    ));
    // An executable memfd runs a program no exec grant names (issue 7);
    // without the flag, `vm.memfd_noexec = 2` makes memfds non-executable.
    t.push((
        NR_MEMFD_CREATE,
        Action::ArgNoBits {
            arg: 1,
            mask: MFD_EXEC,
            otherwise: libc::EPERM,
        },
    ));
    if !opts.inotify {
        // Watching, like reading, needs a grant (issue 8, section 6): the
        // table's allow entry is replaced by a refusal.
        t.retain(|(nr, _)| *nr != NR_INOTIFY_ADD_WATCH);
        t.push((NR_INOTIFY_ADD_WATCH, Action::Errno(libc::EPERM)));
    }
    t.push((NR_CLONE3, Action::Errno(libc::ENOSYS)));
    for nr in NR_IO_URING {
        t.push((nr, Action::Errno(libc::ENOSYS)));
    }
    t.sort_by_key(|(nr, _)| *nr);
    t
}

/// Name of a system call in the table, for journal records.
pub fn name_of(nr: u32) -> Option<&'static str> {
    ALLOWED
        .iter()
        .find(|(n, _)| *n == nr)
        .map(|(_, s)| *s)
        .or(match nr {
            NR_SOCKET => Some("socket"),
            NR_LISTEN => Some("listen"),
            NR_CLONE => Some("clone"),
            NR_UNSHARE => Some("unshare"),
            NR_IOCTL => Some("ioctl"),
            NR_PERSONALITY => Some("personality"),
            NR_CLONE3 => Some("clone3"),
            NR_MEMFD_CREATE => Some("memfd_create"),
            425 => Some("io_uring_setup"),
            426 => Some("io_uring_enter"),
            427 => Some("io_uring_register"),
            _ => None,
        })
}

/// A compiled filter.
#[derive(Clone, Debug)]
pub struct Program {
    pub insns: Vec<Insn>,
}

/// Contiguous syscall numbers with one action: the leaves of the tree.
#[derive(Clone, Debug)]
struct Range {
    lo: u32,
    action: Action,
}

fn ranges(table: &[(u32, Action)]) -> Vec<Range> {
    let default = Action::Errno(libc::EPERM);
    let mut out: Vec<Range> = vec![Range {
        lo: 0,
        action: default.clone(),
    }];
    for (nr, action) in table {
        let last = out.last().map(|r| r.action.clone());
        if last.as_ref() != Some(action) {
            out.push(Range {
                lo: *nr,
                action: action.clone(),
            });
        }
        // The number after this one falls back to the default unless the
        // table continues.
        out.push(Range {
            lo: nr + 1,
            action: default.clone(),
        });
    }
    // Merge neighbours with equal actions and drop empty ranges.
    let mut merged: Vec<Range> = Vec::new();
    for r in out {
        if let Some(last) = merged.last_mut() {
            if last.lo == r.lo {
                *last = r;
                continue;
            }
            if last.action == r.action {
                continue;
            }
        }
        merged.push(r);
    }
    merged
}

/// A balanced tree over `ranges`. A node is `jge lo(right)` jumping over
/// the left subtree when it is short enough for the 8-bit offset, or
/// `jge ; ja right` when it is not (`ja` has a 32-bit offset). Short
/// programs matter: the kernel verifies and compiles the filter at every
/// launch.
fn tree(ranges: &[Range]) -> Vec<Insn> {
    if ranges.len() == 1 {
        return ranges[0].action.code();
    }
    let mid = ranges.len() / 2;
    let (left, right) = ranges.split_at(mid);
    let (left, right_code, k) = (tree(left), tree(right), right[0].lo);
    let mut out = Vec::with_capacity(left.len() + right_code.len() + 2);
    if let Ok(skip) = u8::try_from(left.len()) {
        out.push(jump(BPF_JMP_JGE_K, k, skip, 0));
    } else {
        out.push(jump(BPF_JMP_JGE_K, k, 0, 1));
        out.push(stmt(BPF_JMP_JA, left.len() as u32));
    }
    out.extend(left);
    out.extend(right_code);
    out
}

pub fn build(opts: &Options) -> Program {
    let mut insns = vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jump(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFF_NR),
        jump(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, RET_ERRNO | libc::ENOSYS as u32),
    ];
    insns.extend(tree(&ranges(&table(opts))));
    Program { insns }
}

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const Insn,
}

const SECCOMP_SET_MODE_FILTER: u32 = 1;

impl Program {
    /// Installs the filter on the calling thread. Only system calls: runs in
    /// the child between clone and exec; `no_new_privs` must be set.
    pub fn install(&self) -> io::Result<()> {
        let prog = SockFprog {
            len: self.insns.len() as u16,
            filter: self.insns.as_ptr(),
        };
        // SAFETY: `prog` points to `len` valid instructions for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_SET_MODE_FILTER,
                0u32,
                &raw const prog,
            )
        };
        if rc != 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Runs the filter on one call, as the kernel would.
    pub fn evaluate(&self, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let mut acc: u32 = 0;
        let mut pc = 0usize;
        while let Some(insn) = self.insns.get(pc) {
            pc += 1;
            match insn.code {
                BPF_LD_W_ABS => {
                    let o = insn.k as usize;
                    acc = u32::from_ne_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]]);
                }
                BPF_JMP_JA => pc += insn.k as usize,
                BPF_JMP_JEQ_K | BPF_JMP_JGE_K | BPF_JMP_JSET_K => {
                    let taken = match insn.code {
                        BPF_JMP_JEQ_K => acc == insn.k,
                        BPF_JMP_JGE_K => acc >= insn.k,
                        _ => acc & insn.k != 0,
                    };
                    pc += if taken { insn.jt } else { insn.jf } as usize;
                }
                BPF_RET_K => return insn.k,
                _ => return RET_KILL_PROCESS,
            }
        }
        RET_KILL_PROCESS
    }

    /// The errno the filter answers for a call, or `None` when allowed.
    pub fn denies(&self, nr: u32, args: [u64; 6]) -> Option<i32> {
        let r = self.evaluate(AUDIT_ARCH_X86_64, nr, args);
        if r == RET_ALLOW {
            None
        } else if r & 0xffff_0000 == RET_ERRNO {
            Some((r & 0xffff) as i32)
        } else {
            Some(libc::EPERM)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prog() -> Program {
        build(&Options::default())
    }

    #[test]
    fn every_allowed_call_is_allowed_and_neighbours_are_not() {
        let p = prog();
        for (nr, name) in ALLOWED {
            if *nr == NR_INOTIFY_ADD_WATCH {
                // Needs the policy's opt-in (`inotify_watches_need_the_opt_in`).
                continue;
            }
            assert_eq!(p.denies(*nr, [0; 6]), None, "{name}");
        }
        // Spot checks of refused calls.
        for (nr, name) in [
            (101, "ptrace"),
            (165, "mount"),
            (166, "umount2"),
            (155, "pivot_root"),
            (161, "chroot"),
            (321, "bpf"),
            (298, "perf_event_open"),
            (310, "process_vm_readv"),
            (311, "process_vm_writev"),
            (175, "init_module"),
            (313, "finit_module"),
            (246, "kexec_load"),
            (320, "kexec_file_load"),
            (250, "keyctl"),
            (248, "add_key"),
            (323, "userfaultfd"),
            (304, "open_by_handle_at"),
            (303, "name_to_handle_at"),
            (308, "setns"),
            (169, "reboot"),
            (428, "open_tree"),
            (429, "move_mount"),
            (430, "fsopen"),
            (442, "mount_setattr"),
            (1000, "beyond the table"),
        ] {
            assert_eq!(p.denies(nr, [0; 6]), Some(libc::EPERM), "{name}");
        }
    }

    #[test]
    fn listen_only_when_the_policy_allows_it() {
        assert_eq!(
            prog().denies(NR_LISTEN, [3, 5, 0, 0, 0, 0]),
            Some(libc::EPERM)
        );
        let p = build(&Options {
            listen: true,
            ..Options::default()
        });
        assert_eq!(p.denies(NR_LISTEN, [3, 5, 0, 0, 0, 0]), None);
        assert_eq!(name_of(NR_LISTEN), Some("listen"));
    }

    #[test]
    fn inotify_watches_need_the_opt_in() {
        assert_eq!(
            prog().denies(NR_INOTIFY_ADD_WATCH, [3, 0, 0x100, 0, 0, 0]),
            Some(libc::EPERM)
        );
        // Creating the instance is harmless; only watches report names.
        assert_eq!(prog().denies(294, [0; 6]), None);
        let p = build(&Options {
            inotify: true,
            ..Options::default()
        });
        assert_eq!(p.denies(NR_INOTIFY_ADD_WATCH, [3, 0, 0x100, 0, 0, 0]), None);
    }

    #[test]
    fn executable_memfds_are_refused() {
        let p = prog();
        assert_eq!(p.denies(NR_MEMFD_CREATE, [0, 0, 0, 0, 0, 0]), None);
        // MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL
        assert_eq!(
            p.denies(NR_MEMFD_CREATE, [0, 0x1 | 0x2 | 0x8, 0, 0, 0, 0]),
            None
        );
        assert_eq!(
            p.denies(NR_MEMFD_CREATE, [0, u64::from(MFD_EXEC) | 1, 0, 0, 0, 0]),
            Some(libc::EPERM)
        );
    }

    #[test]
    fn fallbacks_answer_enosys() {
        let p = prog();
        for nr in [NR_CLONE3, 425, 426, 427] {
            assert_eq!(p.denies(nr, [0; 6]), Some(libc::ENOSYS), "{nr}");
        }
    }

    #[test]
    fn architecture_and_x32() {
        let p = prog();
        assert_eq!(
            p.evaluate(0x4000_0003 /* i386 */, 0, [0; 6]),
            RET_KILL_PROCESS
        );
        assert_eq!(p.denies(X32_SYSCALL_BIT, [0; 6]), Some(libc::ENOSYS));
        assert_eq!(p.denies(X32_SYSCALL_BIT | 59, [0; 6]), Some(libc::ENOSYS));
    }

    #[test]
    fn socket_families() {
        let p = prog();
        for fam in [AF_UNIX, AF_INET, AF_INET6] {
            assert_eq!(
                p.denies(NR_SOCKET, [fam as u64, 1, 0, 0, 0, 0]),
                None,
                "{fam}"
            );
        }
        assert_eq!(
            p.denies(NR_SOCKET, [AF_NETLINK as u64, 3, 0, 0, 0, 0]),
            None
        );
        assert_eq!(
            p.denies(NR_SOCKET, [AF_NETLINK as u64, 3, 9 /* audit */, 0, 0, 0]),
            Some(libc::EAFNOSUPPORT)
        );
        for fam in [
            17u64, /* packet */
            4,     /* ipx */
            38,    /* alg */
            40,    /* vsock */
            44,    /* xdp */
        ] {
            assert_eq!(
                p.denies(NR_SOCKET, [fam, 3, 0, 0, 0, 0]),
                Some(libc::EAFNOSUPPORT),
                "{fam}"
            );
        }
        let no_unix = build(&Options {
            socket_families: vec![AF_INET, AF_INET6],
            ..Options::default()
        });
        assert_eq!(
            no_unix.denies(NR_SOCKET, [AF_UNIX as u64, 1, 0, 0, 0, 0]),
            Some(libc::EAFNOSUPPORT)
        );
        assert_eq!(
            no_unix.denies(NR_SOCKET, [AF_INET as u64, 1, 0, 0, 0, 0]),
            None
        );
    }

    #[test]
    fn namespaces_ioctl_personality() {
        let p = prog();
        let sigchld = 17u64;
        assert_eq!(
            p.denies(
                NR_CLONE,
                [sigchld | 0x0100_0000 | 0x0020_0000, 0, 0, 0, 0, 0]
            ),
            None
        );
        assert_eq!(
            p.denies(NR_CLONE, [0x1000_0000 | sigchld, 0, 0, 0, 0, 0]),
            Some(libc::EPERM)
        );
        assert_eq!(
            p.denies(NR_UNSHARE, [0x0000_0200 /* CLONE_FS */, 0, 0, 0, 0, 0]),
            None
        );
        assert_eq!(
            p.denies(NR_UNSHARE, [0x1000_0000, 0, 0, 0, 0, 0]),
            Some(libc::EPERM)
        );
        assert_eq!(
            p.denies(NR_UNSHARE, [0x4000_0000, 0, 0, 0, 0, 0]),
            Some(libc::EPERM)
        );
        assert_eq!(
            p.denies(NR_IOCTL, [0, 0x5401 /* TCGETS */, 0, 0, 0, 0]),
            None
        );
        assert_eq!(
            p.denies(NR_IOCTL, [0, TIOCSTI as u64, 0, 0, 0, 0]),
            Some(libc::EPERM)
        );
        assert_eq!(p.denies(NR_PERSONALITY, [0xffff_ffff, 0, 0, 0, 0, 0]), None);
        assert_eq!(
            p.denies(NR_PERSONALITY, [0x0040_0000, 0, 0, 0, 0, 0]),
            Some(libc::EPERM)
        );
    }

    #[test]
    fn tree_is_short_and_jumps_fit() {
        let p = prog();
        assert!(p.insns.len() < 700, "{}", p.insns.len());
        // A cheap call goes through few instructions: count by running with
        // an instruction budget.
        let depth = (ranges(&table(&Options::default())).len() as f64)
            .log2()
            .ceil() as usize;
        assert!(depth <= 10, "{depth}");
    }

    #[test]
    fn table_has_no_duplicates() {
        let t = table(&Options::default());
        let mut nrs: Vec<u32> = t.iter().map(|(n, _)| *n).collect();
        nrs.dedup();
        assert_eq!(nrs.len(), t.len());
    }
}
