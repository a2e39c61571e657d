//! Facts about x86_64 system calls that several modules need: which
//! argument is a path, and what access the call asks for. Used to tell the
//! kernel programs where to read a refused call's path, and to attribute a
//! refusal to the layer and rule that caused it.

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

/// (number, name, index of the path argument, access).
pub const PATH_CALLS: &[(u32, &str, u32, Access)] = &[
    (2, "open", 0, Access::OpenFlags(1)),
    (4, "stat", 0, Access::Meta),
    (6, "lstat", 0, Access::Meta),
    (21, "access", 0, Access::Meta),
    (59, "execve", 0, Access::Exec),
    (76, "truncate", 0, Access::Write),
    (80, "chdir", 0, Access::Meta),
    (82, "rename", 0, Access::Write),
    (83, "mkdir", 0, Access::Write),
    (84, "rmdir", 0, Access::Write),
    (85, "creat", 0, Access::Write),
    (86, "link", 1, Access::Write),
    (87, "unlink", 0, Access::Write),
    (88, "symlink", 1, Access::Write),
    (89, "readlink", 0, Access::Meta),
    (90, "chmod", 0, Access::Meta),
    (92, "chown", 0, Access::Meta),
    (94, "lchown", 0, Access::Meta),
    (132, "utime", 0, Access::Meta),
    (133, "mknod", 0, Access::Write),
    (137, "statfs", 0, Access::Meta),
    (161, "chroot", 0, Access::Meta),
    (165, "mount", 1, Access::Meta),
    (188, "setxattr", 0, Access::Meta),
    (191, "getxattr", 0, Access::Meta),
    (235, "utimes", 0, Access::Meta),
    (254, "inotify_add_watch", 1, Access::Meta),
    (257, "openat", 1, Access::OpenFlags(2)),
    (258, "mkdirat", 1, Access::Write),
    (259, "mknodat", 1, Access::Write),
    (260, "fchownat", 1, Access::Meta),
    (262, "newfstatat", 1, Access::Meta),
    (263, "unlinkat", 1, Access::Write),
    (264, "renameat", 1, Access::Write),
    (265, "linkat", 3, Access::Write),
    (266, "symlinkat", 2, Access::Write),
    (267, "readlinkat", 1, Access::Meta),
    (268, "fchmodat", 1, Access::Meta),
    (269, "faccessat", 1, Access::Meta),
    (280, "utimensat", 1, Access::Meta),
    (303, "name_to_handle_at", 1, Access::Meta),
    (316, "renameat2", 1, Access::Write),
    (322, "execveat", 1, Access::Exec),
    (332, "statx", 1, Access::Meta),
    (428, "open_tree", 1, Access::Meta),
    (437, "openat2", 1, Access::Open),
    (439, "faccessat2", 1, Access::Meta),
    (452, "fchmodat2", 1, Access::Meta),
];

pub fn path_call(nr: u32) -> Option<(&'static str, u32, Access)> {
    PATH_CALLS
        .iter()
        .find(|(n, ..)| *n == nr)
        .map(|(_, name, arg, access)| (*name, *arg, *access))
}

/// `*at` calls: a relative path argument is resolved against the
/// directory descriptor in the argument just before it (unless it is
/// `AT_FDCWD`), never against the working directory.
const DIRFD_CALLS: &[u32] = &[
    257, 258, 259, 260, 262, 263, 264, 265, 266, 267, 268, 269, 280, 303, 316, 322, 332, 428, 437,
    439, 452,
];

/// Index of the directory descriptor a call's path is relative to, if any.
pub fn dirfd_arg(nr: u32) -> Option<usize> {
    let (_, arg, _) = path_call(nr)?;
    (DIRFD_CALLS.contains(&nr) && arg >= 1).then(|| arg as usize - 1)
}

/// A call's name for records: the seccomp table knows most.
pub fn name(nr: u32) -> String {
    path_call(nr)
        .map(|(n, ..)| n.to_owned())
        .or_else(|| crate::launch::seccomp::name_of(nr).map(str::to_owned))
        .or_else(|| {
            Some(
                match nr {
                    101 => "ptrace",
                    142 => "sched_setparam",
                    155 => "pivot_root",
                    166 => "umount2",
                    169 => "reboot",
                    175 => "init_module",
                    176 => "delete_module",
                    240 => "mq_open",
                    241 => "mq_unlink",
                    242 => "mq_timedsend",
                    243 => "mq_timedreceive",
                    244 => "mq_notify",
                    245 => "mq_getsetattr",
                    246 => "kexec_load",
                    248 => "add_key",
                    249 => "request_key",
                    250 => "keyctl",
                    251 => "ioprio_set",
                    252 => "ioprio_get",
                    256 => "migrate_pages",
                    279 => "move_pages",
                    298 => "perf_event_open",
                    304 => "open_by_handle_at",
                    308 => "setns",
                    310 => "process_vm_readv",
                    311 => "process_vm_writev",
                    312 => "kcmp",
                    313 => "finit_module",
                    314 => "sched_setattr",
                    315 => "sched_getattr",
                    320 => "kexec_file_load",
                    321 => "bpf",
                    323 => "userfaultfd",
                    429 => "move_mount",
                    430 => "fsopen",
                    431 => "fsconfig",
                    432 => "fsmount",
                    433 => "fspick",
                    438 => "pidfd_getfd",
                    440 => "process_madvise",
                    442 => "mount_setattr",
                    _ => return None,
                }
                .to_owned(),
            )
        })
        .unwrap_or_else(|| format!("syscall {nr}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_named() {
        let nrs: Vec<u32> = PATH_CALLS.iter().map(|c| c.0).collect();
        let mut sorted = nrs.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(nrs, sorted);
        assert_eq!(name(257), "openat");
        assert_eq!(name(321), "bpf");
        assert_eq!(name(425), "io_uring_setup");
        assert_eq!(name(9999), "syscall 9999");
        assert!(PATH_CALLS.iter().all(|c| c.2 < 6));
        // The descriptor sits just before the path, whichever it is.
        assert_eq!(dirfd_arg(257), Some(0)); // openat(dirfd, path)
        assert_eq!(dirfd_arg(265), Some(2)); // linkat(.., newdirfd, newpath)
        assert_eq!(dirfd_arg(266), Some(1)); // symlinkat(target, newdirfd, linkpath)
        assert_eq!(dirfd_arg(254), None); // inotify_add_watch: not a dirfd
        assert_eq!(dirfd_arg(2), None);
        assert!(DIRFD_CALLS.iter().all(|&n| path_call(n).is_some()));
    }
}
