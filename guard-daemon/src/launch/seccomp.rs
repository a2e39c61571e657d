//! The agent's seccomp filter, built as data: a default-deny allowlist of
//! the system calls ordinary agents need, with argument checks where a call
//! is needed but some of its uses are not (socket families, namespace flags,
//! terminal injection). What the filter does with each call is a column of
//! `crate::syscalls::CALLS`; this module only compiles that table for a
//! policy's `Options` and installs the result.
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

use guard_common::AF_NETLINK;

use crate::syscalls::{
    CALLS, CLONE_NS_FLAGS, Check, Filter, MFD_EXEC, PERSONALITY_QUERY, SOCKET_FAMILIES, TIOCLINUX,
    TIOCSTI,
};

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

impl Options {
    /// The options for an agent under `plan`. The launcher installs the
    /// filter built from them and guardd's monitor rebuilds the same filter
    /// to name the rule behind a refused call, so both take them from here.
    /// `audit` is the agent's effective mode (requested or the policy's);
    /// `unix_hooks`: guardd's Unix-socket hooks hold on this host.
    pub fn for_plan(plan: &crate::policy::Plan, audit: bool, unix_hooks: bool) -> Options {
        Options {
            socket_families: crate::syscalls::socket_families(unix_hooks),
            listen: plan.network.has_listen_rules() || audit,
            inotify: plan.process.inotify || audit,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            socket_families: SOCKET_FAMILIES.to_vec(),
            listen: false,
            inotify: false,
        }
    }
}

/// The per-call table the filter is generated from: the calls of
/// `syscalls::CALLS` the filter does not refuse, with each `Check` compiled
/// for these options.
pub fn table(opts: &Options) -> Vec<(u32, Action)> {
    CALLS
        .iter()
        .filter_map(|c| {
            let action = match c.filter {
                Filter::Allow => Action::Allow,
                Filter::Deny => return None,
                Filter::Enosys => Action::Errno(libc::ENOSYS),
                Filter::Checked(check) => check_action(check, opts),
            };
            Some((c.nr, action))
        })
        .collect()
}

fn check_action(check: Check, opts: &Options) -> Action {
    match check {
        Check::SocketFamily => Action::Socket {
            families: opts.socket_families.clone(),
            otherwise: libc::EAFNOSUPPORT,
        },
        Check::NoNamespaces => Action::ArgNoBits {
            arg: 0,
            mask: CLONE_NS_FLAGS,
            otherwise: libc::EPERM,
        },
        Check::NoTerminalInjection => Action::ArgNotIn {
            arg: 1,
            values: vec![TIOCSTI, TIOCLINUX],
            otherwise: libc::EPERM,
        },
        Check::DefaultPersonality => Action::ArgIn {
            arg: 0,
            values: vec![PERSONALITY_QUERY, 0],
            otherwise: libc::EPERM,
        },
        Check::Listen if opts.listen => Action::Allow,
        Check::Listen => Action::Errno(libc::EPERM),
        Check::NoExecMemfd => Action::ArgNoBits {
            arg: 1,
            mask: MFD_EXEC,
            otherwise: libc::EPERM,
        },
        Check::Inotify if opts.inotify => Action::Allow,
        Check::Inotify => Action::Errno(libc::EPERM),
    }
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

/// The table as ranges, numbers it leaves out refused with EPERM. `table`
/// is sorted by number (`syscalls::CALLS` is).
fn ranges(table: &[(u32, Action)]) -> Vec<Range> {
    let default = Action::Errno(libc::EPERM);
    let mut out: Vec<Range> = Vec::new();
    // A range starts only where the action changes.
    let mut enter = |lo: u32, action: &Action| {
        if out.last().is_none_or(|r| r.action != *action) {
            out.push(Range {
                lo,
                action: action.clone(),
            });
        }
    };
    // The first number the table has not covered yet.
    let mut next = 0;
    for (nr, action) in table {
        if *nr > next {
            enter(next, &default);
        }
        enter(*nr, action);
        next = nr + 1;
    }
    enter(next, &default);
    out
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
        self.run(arch, nr, args).0
    }

    /// `evaluate`, also counting the instructions executed (what a call
    /// costs in the kernel).
    fn run(&self, arch: u32, nr: u32, args: [u64; 6]) -> (u32, usize) {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let mut acc: u32 = 0;
        let mut pc = 0usize;
        let mut executed = 0;
        while let Some(insn) = self.insns.get(pc) {
            pc += 1;
            executed += 1;
            match insn.code {
                BPF_LD_W_ABS => {
                    // A load past `seccomp_data` is one the kernel would
                    // not accept: fail closed rather than read anything.
                    let Some(&[a, b, c, d]) = data.get(insn.k as usize..insn.k as usize + 4) else {
                        return (RET_KILL_PROCESS, executed);
                    };
                    acc = u32::from_ne_bytes([a, b, c, d]);
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
                BPF_RET_K => return (insn.k, executed),
                _ => return (RET_KILL_PROCESS, executed),
            }
        }
        (RET_KILL_PROCESS, executed)
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
    use guard_common::syscalls::{
        NR_CLONE, NR_CLONE3, NR_INOTIFY_ADD_WATCH, NR_IO_URING_ENTER, NR_IO_URING_REGISTER,
        NR_IO_URING_SETUP, NR_IOCTL, NR_LISTEN, NR_MEMFD_CREATE, NR_PERSONALITY, NR_SOCKET,
        NR_UNSHARE,
    };
    use guard_common::{AF_INET, AF_INET6, AF_UNIX};

    use super::*;

    fn prog() -> Program {
        build(&Options::default())
    }

    #[test]
    fn every_allowed_call_is_allowed_and_neighbours_are_not() {
        let p = prog();
        // inotify_add_watch is checked: it needs the policy's opt-in
        // (`inotify_watches_need_the_opt_in`).
        for c in CALLS.iter().filter(|c| c.filter == Filter::Allow) {
            assert_eq!(p.denies(c.nr, [0; 6]), None, "{}", c.name);
        }
        for c in CALLS.iter().filter(|c| c.filter == Filter::Deny) {
            assert_eq!(p.denies(c.nr, [0; 6]), Some(libc::EPERM), "{}", c.name);
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
        assert_eq!(crate::syscalls::name(NR_LISTEN), "listen");
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
        for nr in [
            NR_CLONE3,
            NR_IO_URING_SETUP,
            NR_IO_URING_ENTER,
            NR_IO_URING_REGISTER,
        ] {
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

    /// The filters guard builds: every combination of options.
    fn variants() -> Vec<Options> {
        let mut out = Vec::new();
        for socket_families in [
            crate::syscalls::socket_families(true),
            crate::syscalls::socket_families(false),
        ] {
            for listen in [false, true] {
                for inotify in [false, true] {
                    out.push(Options {
                        socket_families: socket_families.clone(),
                        listen,
                        inotify,
                    });
                }
            }
        }
        out
    }

    #[test]
    fn jumps_land_inside_and_every_path_returns() {
        for opts in variants() {
            let p = build(&opts);
            let len = p.insns.len();
            assert!(len < 700, "{len}");
            let mut reached = vec![false; len];
            reached[0] = true;
            for (i, insn) in p.insns.iter().enumerate() {
                let next = i + 1;
                let to: Vec<usize> = match insn.code {
                    BPF_RET_K => vec![],
                    BPF_LD_W_ABS => {
                        // An aligned word inside `struct seccomp_data`.
                        assert!(insn.k % 4 == 0 && insn.k + 4 <= 64, "{i}: {insn:?}");
                        vec![next]
                    }
                    BPF_JMP_JA => vec![next + insn.k as usize],
                    BPF_JMP_JEQ_K | BPF_JMP_JGE_K | BPF_JMP_JSET_K => {
                        vec![next + insn.jt as usize, next + insn.jf as usize]
                    }
                    code => panic!("{i}: unknown code {code:#x}"),
                };
                // Every target is forward (offsets are unsigned) and inside
                // the program, and only RET has none: so every path ends in
                // a RET, and none falls off the end.
                for t in to {
                    assert!(t < len, "{i}: {insn:?} jumps to {t} of {len}");
                    if reached[i] {
                        reached[t] = true;
                    }
                }
            }
            // No dead code: every instruction is on some path.
            let dead: Vec<usize> = (0..len).filter(|i| !reached[*i]).collect();
            assert!(dead.is_empty(), "unreachable: {dead:?}");
        }
    }

    #[test]
    fn calls_execute_few_instructions() {
        for opts in variants() {
            let p = build(&opts);
            let t = table(&opts);
            let r = ranges(&t);
            // Neighbouring calls with one action share a leaf.
            assert!(
                r.windows(2)
                    .all(|w| w[0].lo < w[1].lo && w[0].action != w[1].action)
            );
            let leaves = r.len();
            // A balanced tree over the ranges: every leaf is floor or ceil
            // of log2(leaves) comparisons deep...
            let deep = leaves.next_power_of_two().trailing_zeros() as usize;
            let shallow = (usize::BITS - 1 - leaves.leading_zeros()) as usize;
            // ... plus a `ja` at the levels whose left subtree is too long
            // for an 8-bit jump (only the few near the root).
            let long_jumps = p.insns.iter().filter(|i| i.code == BPF_JMP_JA).count();
            let max = t.last().map(|(nr, _)| *nr).unwrap();
            let mut worst = 0;
            for nr in 0..=max + 1 {
                let action = t
                    .iter()
                    .find(|(n, _)| *n == nr)
                    .map_or(Action::Errno(libc::EPERM), |(_, a)| a.clone());
                for args in [[0; 6], [u64::MAX; 6], [16, 3, 9, 0x5412, 0, 0]] {
                    let (ret, executed) = p.run(AUDIT_ARCH_X86_64, nr, args);
                    assert_eq!(ret, p.evaluate(AUDIT_ARCH_X86_64, nr, args));
                    // 4: load and check the architecture, load the number
                    // and refuse x32. Then the tree, then the leaf's code,
                    // straight-line or forward.
                    let tree = executed - 4;
                    let leaf = action.code().len();
                    assert!(
                        tree <= deep + long_jumps.min(deep) + leaf,
                        "{nr}: {executed} instructions ({leaves} leaves, leaf of {leaf})"
                    );
                    if leaf == 1 {
                        // A single RET: the rest is the tree's comparisons.
                        assert!(tree > shallow, "{nr}: {executed} instructions");
                        worst = worst.max(executed);
                    }
                }
            }
            // Today: 92 to 96 leaves, no `ja`, 12 instructions at worst.
            assert!(worst <= 4 + deep + long_jumps.min(deep) + 1, "{worst}");
            // Outside the tree: a foreign architecture costs 3, x32 5.
            assert_eq!(p.run(0x4000_0003, 0, [0; 6]), (RET_KILL_PROCESS, 3));
            assert_eq!(
                p.run(AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 59, [0; 6]),
                (RET_ERRNO | libc::ENOSYS as u32, 5)
            );
        }
    }

    #[test]
    fn table_has_no_duplicates() {
        let t = table(&Options::default());
        let mut nrs: Vec<u32> = t.iter().map(|(n, _)| *n).collect();
        nrs.dedup();
        assert_eq!(nrs.len(), t.len());
    }
}
