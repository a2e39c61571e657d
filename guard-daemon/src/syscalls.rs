//! The x86_64 system call table: every call guard knows by name, with
//! which argument is a path (and what the call does to it) and what the
//! agent's seccomp filter does with it. One row per call, so a number and
//! its name cannot disagree; the other views (names for records, path
//! arguments for the kernel programs, the allowlist the filter is compiled
//! from) are derived from it. The numbers the kernel programs compare
//! against are in `guard_common::syscalls`, checked against this table by
//! the unit tests; `launch::seccomp` only compiles and installs.

use guard_common::{AF_INET, AF_INET6, AF_NETLINK, AF_UNIX};

/// What a path-taking call does to its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Open: the access is in the flags argument at this index.
    OpenFlags(usize),
    /// Open through `openat2` (flags in a struct the event does not carry).
    Open,
    Read,
    Write,
    Exec,
    /// Metadata only (stat, access, readlink...): Landlock does not govern it.
    Meta,
}

/// What the agent's seccomp filter does with a call. Calls absent from the
/// table are refused with EPERM, like `Deny`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Allowed: ordinary agents (interpreters, git, shells, HTTP clients)
    /// need it.
    Allow,
    /// Refused with EPERM. Listed only so that records name it: among
    /// others the mount family, ptrace and process_vm_*, bpf,
    /// perf_event_open, module and kexec loading, keyctl/add_key/
    /// request_key, userfaultfd, open_by_handle_at/name_to_handle_at,
    /// setns, chroot, reboot.
    Deny,
    /// Answered ENOSYS, so that runtimes fall back to calls the filter can
    /// inspect (`clone3` passes its flags in memory, `io_uring` performs
    /// calls no filter sees).
    Enosys,
    /// Needed, but some of its uses are not: allowed or refused by its
    /// arguments or by the policy.
    Checked(Check),
}

/// The argument or policy check of a `Filter::Checked` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// `socket(2)`: only the families the network layer governs
    /// (`socket_families`), NETLINK only as `NETLINK_ROUTE` (protocol 0),
    /// which libc uses for getaddrinfo/getifaddrs and which is read-only
    /// without CAP_NET_ADMIN. Others answer EAFNOSUPPORT.
    SocketFamily,
    /// `clone`/`unshare`: no namespace flag (`CLONE_NS_FLAGS`).
    NoNamespaces,
    /// `ioctl`: not `TIOCSTI`/`TIOCLINUX`, which inject terminal input.
    NoTerminalInjection,
    /// `personality`: only the query form (0xffffffff) and the default
    /// persona.
    DefaultPersonality,
    /// `listen(2)`: only when the policy has `listen` rules (or audits):
    /// listen() on an unbound socket takes an ephemeral port without any
    /// bind hook.
    Listen,
    /// `memfd_create`: not with `MFD_EXEC`. An executable memfd runs a
    /// program no exec grant names (issue 7); without the flag,
    /// `vm.memfd_noexec = 2` makes memfds non-executable.
    NoExecMemfd,
    /// `inotify_add_watch`: only with `[process] inotify = true`. Landlock
    /// does not mediate watches, so a watch would report names under
    /// directories no grant covers (issue 8, section 6).
    Inotify,
}

/// One x86_64 system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    pub nr: u32,
    pub name: &'static str,
    /// Index of the path argument, and what the call does to the path.
    pub path: Option<(u32, Access)>,
    /// `*at` call: a relative path is resolved against the directory
    /// descriptor in the argument just before the path (unless it is
    /// `AT_FDCWD`), never against the working directory.
    pub dirfd: bool,
    pub filter: Filter,
}

const fn row(nr: u32, name: &'static str, filter: Filter) -> Call {
    Call {
        nr,
        name,
        path: None,
        dirfd: false,
        filter,
    }
}
const fn allow(nr: u32, name: &'static str) -> Call {
    row(nr, name, Filter::Allow)
}
const fn deny(nr: u32, name: &'static str) -> Call {
    row(nr, name, Filter::Deny)
}
const fn enosys(nr: u32, name: &'static str) -> Call {
    row(nr, name, Filter::Enosys)
}
const fn checked(nr: u32, name: &'static str, check: Check) -> Call {
    row(nr, name, Filter::Checked(check))
}

impl Call {
    const fn with_path(self, arg: u32, access: Access) -> Call {
        Call {
            path: Some((arg, access)),
            ..self
        }
    }
    const fn with_path_at(self, arg: u32, access: Access) -> Call {
        Call {
            dirfd: true,
            ..self.with_path(arg, access)
        }
    }
}

/// The table, sorted by number (a unit test checks it).
pub const CALLS: &[Call] = &[
    allow(0, "read"),
    allow(1, "write"),
    allow(2, "open").with_path(0, Access::OpenFlags(1)),
    allow(3, "close"),
    allow(4, "stat").with_path(0, Access::Meta),
    allow(5, "fstat"),
    allow(6, "lstat").with_path(0, Access::Meta),
    allow(7, "poll"),
    allow(8, "lseek"),
    allow(9, "mmap"),
    allow(10, "mprotect"),
    allow(11, "munmap"),
    allow(12, "brk"),
    allow(13, "rt_sigaction"),
    allow(14, "rt_sigprocmask"),
    allow(15, "rt_sigreturn"),
    checked(16, "ioctl", Check::NoTerminalInjection),
    allow(17, "pread64"),
    allow(18, "pwrite64"),
    allow(19, "readv"),
    allow(20, "writev"),
    allow(21, "access").with_path(0, Access::Meta),
    allow(22, "pipe"),
    allow(23, "select"),
    allow(24, "sched_yield"),
    allow(25, "mremap"),
    allow(26, "msync"),
    allow(27, "mincore"),
    allow(28, "madvise"),
    allow(29, "shmget"),
    allow(30, "shmat"),
    allow(31, "shmctl"),
    allow(32, "dup"),
    allow(33, "dup2"),
    allow(34, "pause"),
    allow(35, "nanosleep"),
    allow(36, "getitimer"),
    allow(37, "alarm"),
    allow(38, "setitimer"),
    allow(39, "getpid"),
    allow(40, "sendfile"),
    checked(41, "socket", Check::SocketFamily),
    allow(42, "connect"),
    allow(43, "accept"),
    allow(44, "sendto"),
    allow(45, "recvfrom"),
    allow(46, "sendmsg"),
    allow(47, "recvmsg"),
    allow(48, "shutdown"),
    allow(49, "bind"),
    checked(50, "listen", Check::Listen),
    allow(51, "getsockname"),
    allow(52, "getpeername"),
    allow(53, "socketpair"),
    allow(54, "setsockopt"),
    allow(55, "getsockopt"),
    checked(56, "clone", Check::NoNamespaces),
    allow(57, "fork"),
    allow(58, "vfork"),
    allow(59, "execve").with_path(0, Access::Exec),
    allow(60, "exit"),
    allow(61, "wait4"),
    allow(62, "kill"),
    allow(63, "uname"),
    allow(64, "semget"),
    allow(65, "semop"),
    allow(66, "semctl"),
    allow(67, "shmdt"),
    allow(68, "msgget"),
    allow(69, "msgsnd"),
    allow(70, "msgrcv"),
    allow(71, "msgctl"),
    allow(72, "fcntl"),
    allow(73, "flock"),
    allow(74, "fsync"),
    allow(75, "fdatasync"),
    allow(76, "truncate").with_path(0, Access::Write),
    allow(77, "ftruncate"),
    allow(78, "getdents"),
    allow(79, "getcwd"),
    allow(80, "chdir").with_path(0, Access::Meta),
    allow(81, "fchdir"),
    allow(82, "rename").with_path(0, Access::Write),
    allow(83, "mkdir").with_path(0, Access::Write),
    allow(84, "rmdir").with_path(0, Access::Write),
    allow(85, "creat").with_path(0, Access::Write),
    allow(86, "link").with_path(1, Access::Write),
    allow(87, "unlink").with_path(0, Access::Write),
    allow(88, "symlink").with_path(1, Access::Write),
    allow(89, "readlink").with_path(0, Access::Meta),
    allow(90, "chmod").with_path(0, Access::Meta),
    allow(91, "fchmod"),
    allow(92, "chown").with_path(0, Access::Meta),
    allow(93, "fchown"),
    allow(94, "lchown").with_path(0, Access::Meta),
    allow(95, "umask"),
    allow(96, "gettimeofday"),
    allow(97, "getrlimit"),
    allow(98, "getrusage"),
    allow(99, "sysinfo"),
    allow(100, "times"),
    deny(101, "ptrace"),
    allow(102, "getuid"),
    allow(104, "getgid"),
    allow(105, "setuid"),
    allow(106, "setgid"),
    allow(107, "geteuid"),
    allow(108, "getegid"),
    allow(109, "setpgid"),
    allow(110, "getppid"),
    allow(111, "getpgrp"),
    allow(112, "setsid"),
    allow(113, "setreuid"),
    allow(114, "setregid"),
    allow(115, "getgroups"),
    allow(116, "setgroups"),
    allow(117, "setresuid"),
    allow(118, "getresuid"),
    allow(119, "setresgid"),
    allow(120, "getresgid"),
    allow(121, "getpgid"),
    allow(122, "setfsuid"),
    allow(123, "setfsgid"),
    allow(124, "getsid"),
    allow(125, "capget"),
    allow(127, "rt_sigpending"),
    allow(128, "rt_sigtimedwait"),
    allow(129, "rt_sigqueueinfo"),
    allow(130, "rt_sigsuspend"),
    allow(131, "sigaltstack"),
    allow(132, "utime").with_path(0, Access::Meta),
    allow(133, "mknod").with_path(0, Access::Write),
    checked(135, "personality", Check::DefaultPersonality),
    allow(137, "statfs").with_path(0, Access::Meta),
    allow(138, "fstatfs"),
    allow(140, "getpriority"),
    allow(141, "setpriority"),
    deny(142, "sched_setparam"),
    allow(143, "sched_getparam"),
    allow(144, "sched_setscheduler"),
    allow(145, "sched_getscheduler"),
    allow(146, "sched_get_priority_max"),
    allow(147, "sched_get_priority_min"),
    allow(148, "sched_rr_get_interval"),
    allow(149, "mlock"),
    allow(150, "munlock"),
    allow(151, "mlockall"),
    allow(152, "munlockall"),
    deny(155, "pivot_root"),
    allow(157, "prctl"),
    allow(158, "arch_prctl"),
    allow(160, "setrlimit"),
    deny(161, "chroot").with_path(0, Access::Meta),
    allow(162, "sync"),
    deny(165, "mount").with_path(1, Access::Meta),
    deny(166, "umount2"),
    deny(169, "reboot"),
    deny(175, "init_module"),
    deny(176, "delete_module"),
    allow(186, "gettid"),
    allow(187, "readahead"),
    deny(188, "setxattr").with_path(0, Access::Meta),
    allow(191, "getxattr").with_path(0, Access::Meta),
    allow(192, "lgetxattr"),
    allow(193, "fgetxattr"),
    allow(194, "listxattr"),
    allow(195, "llistxattr"),
    allow(196, "flistxattr"),
    allow(200, "tkill"),
    allow(201, "time"),
    allow(202, "futex"),
    allow(203, "sched_setaffinity"),
    allow(204, "sched_getaffinity"),
    allow(213, "epoll_create"),
    allow(217, "getdents64"),
    allow(218, "set_tid_address"),
    allow(219, "restart_syscall"),
    allow(221, "fadvise64"),
    allow(222, "timer_create"),
    allow(223, "timer_settime"),
    allow(224, "timer_gettime"),
    allow(225, "timer_getoverrun"),
    allow(226, "timer_delete"),
    allow(228, "clock_gettime"),
    allow(229, "clock_getres"),
    allow(230, "clock_nanosleep"),
    allow(231, "exit_group"),
    allow(232, "epoll_wait"),
    allow(233, "epoll_ctl"),
    allow(234, "tgkill"),
    allow(235, "utimes").with_path(0, Access::Meta),
    deny(240, "mq_open"),
    deny(241, "mq_unlink"),
    deny(242, "mq_timedsend"),
    deny(243, "mq_timedreceive"),
    deny(244, "mq_notify"),
    deny(245, "mq_getsetattr"),
    deny(246, "kexec_load"),
    allow(247, "waitid"),
    deny(248, "add_key"),
    deny(249, "request_key"),
    deny(250, "keyctl"),
    deny(251, "ioprio_set"),
    deny(252, "ioprio_get"),
    allow(253, "inotify_init"),
    checked(254, "inotify_add_watch", Check::Inotify).with_path(1, Access::Meta),
    allow(255, "inotify_rm_watch"),
    deny(256, "migrate_pages"),
    allow(257, "openat").with_path_at(1, Access::OpenFlags(2)),
    allow(258, "mkdirat").with_path_at(1, Access::Write),
    allow(259, "mknodat").with_path_at(1, Access::Write),
    allow(260, "fchownat").with_path_at(1, Access::Meta),
    allow(261, "futimesat"),
    allow(262, "newfstatat").with_path_at(1, Access::Meta),
    allow(263, "unlinkat").with_path_at(1, Access::Write),
    allow(264, "renameat").with_path_at(1, Access::Write),
    allow(265, "linkat").with_path_at(3, Access::Write),
    allow(266, "symlinkat").with_path_at(2, Access::Write),
    allow(267, "readlinkat").with_path_at(1, Access::Meta),
    allow(268, "fchmodat").with_path_at(1, Access::Meta),
    allow(269, "faccessat").with_path_at(1, Access::Meta),
    allow(270, "pselect6"),
    allow(271, "ppoll"),
    checked(272, "unshare", Check::NoNamespaces),
    allow(273, "set_robust_list"),
    allow(274, "get_robust_list"),
    allow(275, "splice"),
    allow(276, "tee"),
    allow(277, "sync_file_range"),
    allow(278, "vmsplice"),
    deny(279, "move_pages"),
    allow(280, "utimensat").with_path_at(1, Access::Meta),
    allow(281, "epoll_pwait"),
    allow(282, "signalfd"),
    allow(283, "timerfd_create"),
    allow(284, "eventfd"),
    allow(285, "fallocate"),
    allow(286, "timerfd_settime"),
    allow(287, "timerfd_gettime"),
    allow(288, "accept4"),
    allow(289, "signalfd4"),
    allow(290, "eventfd2"),
    allow(291, "epoll_create1"),
    allow(292, "dup3"),
    allow(293, "pipe2"),
    allow(294, "inotify_init1"),
    allow(295, "preadv"),
    allow(296, "pwritev"),
    allow(297, "rt_tgsigqueueinfo"),
    deny(298, "perf_event_open"),
    allow(299, "recvmmsg"),
    allow(302, "prlimit64"),
    deny(303, "name_to_handle_at").with_path_at(1, Access::Meta),
    deny(304, "open_by_handle_at"),
    allow(306, "syncfs"),
    allow(307, "sendmmsg"),
    deny(308, "setns"),
    allow(309, "getcpu"),
    deny(310, "process_vm_readv"),
    deny(311, "process_vm_writev"),
    deny(312, "kcmp"),
    deny(313, "finit_module"),
    deny(314, "sched_setattr"),
    deny(315, "sched_getattr"),
    allow(316, "renameat2").with_path_at(1, Access::Write),
    allow(318, "getrandom"),
    checked(319, "memfd_create", Check::NoExecMemfd),
    deny(320, "kexec_file_load"),
    deny(321, "bpf"),
    allow(322, "execveat").with_path_at(1, Access::Exec),
    deny(323, "userfaultfd"),
    allow(324, "membarrier"),
    allow(325, "mlock2"),
    allow(326, "copy_file_range"),
    allow(327, "preadv2"),
    allow(328, "pwritev2"),
    allow(332, "statx").with_path_at(1, Access::Meta),
    allow(334, "rseq"),
    allow(424, "pidfd_send_signal"),
    enosys(425, "io_uring_setup"),
    enosys(426, "io_uring_enter"),
    enosys(427, "io_uring_register"),
    deny(428, "open_tree").with_path_at(1, Access::Meta),
    deny(429, "move_mount"),
    deny(430, "fsopen"),
    deny(431, "fsconfig"),
    deny(432, "fsmount"),
    deny(433, "fspick"),
    allow(434, "pidfd_open"),
    enosys(435, "clone3"),
    allow(436, "close_range"),
    deny(437, "openat2").with_path_at(1, Access::Open),
    deny(438, "pidfd_getfd"),
    allow(439, "faccessat2").with_path_at(1, Access::Meta),
    deny(440, "process_madvise"),
    allow(441, "epoll_pwait2"),
    deny(442, "mount_setattr"),
    allow(444, "landlock_create_ruleset"),
    allow(445, "landlock_add_rule"),
    allow(446, "landlock_restrict_self"),
    allow(448, "process_mrelease"),
    allow(449, "futex_waitv"),
    allow(451, "cachestat"),
    allow(452, "fchmodat2").with_path_at(1, Access::Meta),
    allow(457, "statmount"),
    allow(458, "listmount"),
];

/// The row of call `nr`.
pub fn call(nr: u32) -> Option<&'static Call> {
    let i = CALLS.binary_search_by_key(&nr, |c| c.nr).ok()?;
    CALLS.get(i)
}

/// A path-taking call's name, path argument and access.
pub fn path_call(nr: u32) -> Option<(&'static str, u32, Access)> {
    let c = call(nr)?;
    let (arg, access) = c.path?;
    Some((c.name, arg, access))
}

/// Whether learn mode reports a successful call (`PATH_ARG_LEARN`): the
/// path calls whose success would need a file grant under a policy (opens,
/// creations, removals, renames, links), and `inotify_add_watch` (the
/// policy's `inotify` key). Not exec (the exec tracepoint reports every
/// program) and not metadata reads (no grant governs them).
pub fn learned(nr: u32) -> bool {
    match path_call(nr) {
        Some((name, _, access)) => {
            name == "inotify_add_watch"
                || matches!(
                    access,
                    Access::OpenFlags(_) | Access::Open | Access::Read | Access::Write
                )
        }
        None => false,
    }
}

/// Index of the directory descriptor a call's path is relative to, if any.
pub fn dirfd_arg(nr: u32) -> Option<usize> {
    let c = call(nr)?;
    let (arg, _) = c.path?;
    (c.dirfd && arg >= 1).then(|| arg as usize - 1)
}

/// A call's name for records.
pub fn name(nr: u32) -> String {
    call(nr).map_or_else(|| format!("syscall {nr}"), |c| c.name.to_owned())
}

/// Namespace-creating clone/unshare flags (`Check::NoNamespaces`).
pub const CLONE_NS_FLAGS: u32 = 0x0002_0000 // CLONE_NEWNS
    | 0x0200_0000 // CLONE_NEWCGROUP
    | 0x0400_0000 // CLONE_NEWUTS
    | 0x0800_0000 // CLONE_NEWIPC
    | 0x1000_0000 // CLONE_NEWUSER
    | 0x2000_0000 // CLONE_NEWPID
    | 0x4000_0000 // CLONE_NEWNET
    | 0x0000_0080; // CLONE_NEWTIME

/// The terminal-injecting ioctls (`Check::NoTerminalInjection`).
pub const TIOCSTI: u32 = 0x5412;
pub const TIOCLINUX: u32 = 0x541c;

/// `personality(2)` argument that only queries the persona.
pub const PERSONALITY_QUERY: u32 = 0xffff_ffff;

/// `memfd_create` flag asking for an executable memfd.
pub const MFD_EXEC: u32 = 0x10;

/// Socket families an agent may create: those guard's network layer
/// governs, and NETLINK (limited to `NETLINK_ROUTE` by `Check::SocketFamily`).
pub const SOCKET_FAMILIES: [u32; 4] = [AF_UNIX, AF_INET, AF_INET6, AF_NETLINK];

/// The families of `SOCKET_FAMILIES` an agent may create on this host:
/// without the Unix socket hooks (`--allow-degraded unix`) nothing governs
/// Unix sockets, so none may be created.
pub fn socket_families(unix_hooks: bool) -> Vec<u32> {
    SOCKET_FAMILIES
        .into_iter()
        .filter(|f| unix_hooks || *f != AF_UNIX)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learn_mode_reports_grant_needing_calls_only() {
        for nr in [
            2, 257, 83, 258, 87, 263, 82, 264, 316, 85, 86, 265, 88, 266, 76, 254,
        ] {
            assert!(learned(nr), "{} should be learned", name(nr));
        }
        // Metadata reads, exec (the exec tracepoint), calls without a path.
        for nr in [4, 6, 21, 89, 262, 332, 439, 59, 322, 0, 1, 39] {
            assert!(!learned(nr), "{} should not be learned", name(nr));
        }
    }

    #[test]
    fn table_is_sorted_and_named() {
        let nrs: Vec<u32> = CALLS.iter().map(|c| c.nr).collect();
        let mut sorted = nrs.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(nrs, sorted);
        let mut names: Vec<&str> = CALLS.iter().map(|c| c.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CALLS.len(), "a name on two rows");
        assert_eq!(name(257), "openat");
        assert_eq!(name(321), "bpf");
        assert_eq!(name(425), "io_uring_setup");
        assert_eq!(name(9999), "syscall 9999");
        assert!(CALLS.iter().filter_map(|c| c.path).all(|(arg, _)| arg < 6));
        // The descriptor sits just before the path, whichever it is.
        assert_eq!(dirfd_arg(257), Some(0)); // openat(dirfd, path)
        assert_eq!(dirfd_arg(265), Some(2)); // linkat(.., newdirfd, newpath)
        assert_eq!(dirfd_arg(266), Some(1)); // symlinkat(target, newdirfd, linkpath)
        assert_eq!(dirfd_arg(254), None); // inotify_add_watch: not a dirfd
        assert_eq!(dirfd_arg(2), None);
        assert!(
            CALLS
                .iter()
                .filter(|c| c.dirfd)
                .all(|c| path_call(c.nr).is_some())
        );
        assert_eq!(CALLS.iter().filter(|c| c.path.is_some()).count(), 48);
        assert_eq!(CALLS.iter().filter(|c| c.dirfd).count(), 21);
    }

    /// Every `NR_*` constant of `guard_common::syscalls`, read from its
    /// source so that a constant added later is checked too, carries the
    /// name this table gives its number.
    #[test]
    fn guard_common_numbers_match_the_table() {
        let src = include_str!("../../guard-common/src/syscalls.rs");
        let mut checked = 0;
        for line in src.lines() {
            let Some(rest) = line.strip_prefix("pub const NR_") else {
                continue;
            };
            let (ident, value) = rest.split_once(": u32 = ").unwrap();
            let nr: u32 = value.trim_end_matches(';').parse().unwrap();
            assert_eq!(name(nr), ident.to_lowercase(), "NR_{ident} = {nr}");
            checked += 1;
        }
        assert!(checked >= 49, "only {checked} constants read");
        // And the constants as compiled, for the ones guard uses by name.
        use guard_common::syscalls as sc;
        for (nr, n) in [
            (sc::NR_CLONE3, "clone3"),
            (sc::NR_SOCKET, "socket"),
            (sc::NR_MEMFD_CREATE, "memfd_create"),
            (sc::NR_INOTIFY_ADD_WATCH, "inotify_add_watch"),
            (sc::NR_EXECVEAT, "execveat"),
            (sc::NR_IO_URING_REGISTER, "io_uring_register"),
        ] {
            assert_eq!(name(nr), n);
        }
    }

    #[test]
    fn calls_that_name_a_process() {
        let named: Vec<u32> = (0..1024)
            .filter(|nr| guard_common::syscalls::names_a_process(*nr))
            .collect();
        assert_eq!(
            named,
            [
                109, 121, 124, 140, 141, 143, 144, 145, 148, 203, 204, 274, 302, 434
            ]
        );
        // All allowed: a refused one's ESRCH could not happen.
        for nr in named {
            assert_eq!(call(nr).map(|c| c.filter), Some(Filter::Allow), "{nr}");
        }
    }

    #[test]
    fn seccomp_columns() {
        let by = |f: fn(&Filter) -> bool| CALLS.iter().filter(|c| f(&c.filter)).count();
        assert_eq!(by(|f| *f == Filter::Allow), 247);
        assert_eq!(by(|f| matches!(f, Filter::Checked(_))), 8);
        assert_eq!(by(|f| *f == Filter::Enosys), 4);
        assert_eq!(call(435).map(|c| c.filter), Some(Filter::Enosys));
        assert_eq!(
            call(254).map(|c| c.filter),
            Some(Filter::Checked(Check::Inotify))
        );
        assert_eq!(call(101).map(|c| c.filter), Some(Filter::Deny));
    }

    #[test]
    fn socket_family_lists() {
        assert_eq!(
            socket_families(true),
            [AF_UNIX, AF_INET, AF_INET6, AF_NETLINK]
        );
        assert_eq!(socket_families(false), [AF_INET, AF_INET6, AF_NETLINK]);
    }
}
