//! The few raw `bpf(2)` commands guard issues itself (for the Unix hooks that
//! aya cannot load). Everything else goes through aya.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_insn};

/// Runs one bpf command on a zero-initialised attribute union.
fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<i64> {
    // SAFETY: `attr` is a valid, fully initialised `bpf_attr` that lives for
    // the duration of the call; the size passed is its real size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: `bpf_attr` is a plain C union of integers; all-zero is the
    // kernel's "unset" value for every field.
    unsafe { std::mem::zeroed() }
}

fn owned(rc: i64) -> OwnedFd {
    // SAFETY: a successful bpf command that returns a descriptor hands us its
    // only reference.
    unsafe { OwnedFd::from_raw_fd(rc as i32) }
}

/// `BPF_PROG_LOAD`. On failure the verifier log is returned with the error.
pub fn prog_load(
    prog_type: u32,
    expected_attach_type: u32,
    insns: &[bpf_insn],
    name: &str,
) -> Result<OwnedFd, (std::io::Error, String)> {
    let license = c"GPL";
    let mut log = vec![0u8; 1 << 20];
    let mut attempt = |with_log: bool| {
        let mut attr = zeroed_attr();
        // SAFETY: writing the `BPF_PROG_LOAD` member of the union we own.
        let u = unsafe { &mut attr.__bindgen_anon_3 };
        u.prog_type = prog_type;
        u.expected_attach_type = expected_attach_type;
        u.insn_cnt = insns.len() as u32;
        u.insns = insns.as_ptr() as u64;
        u.license = license.as_ptr() as u64;
        for (dst, src) in u.prog_name.iter_mut().zip(name.bytes().take(15)) {
            *dst = src as libc::c_char;
        }
        if with_log {
            u.log_level = 1;
            u.log_size = log.len() as u32;
            u.log_buf = log.as_mut_ptr() as u64;
        }
        bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
    };
    match attempt(false) {
        Ok(fd) => Ok(owned(fd)),
        Err(first) => {
            // Load again with the log only on failure: the log slows the
            // verifier down and is useless when the program is accepted.
            let _ = attempt(true);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            // The verdict is at the end of the log; keep that part readable.
            let start = end.saturating_sub(4096);
            Err((
                first,
                String::from_utf8_lossy(&log[start..end]).into_owned(),
            ))
        }
    }
}

/// `BPF_PROG_LOAD` of a trivial BPF LSM program attached (by BTF id) to
/// `bpf_lsm_file_open`: the honest test of whether BPF LSM works here, since
/// `bpf` in the LSM list does not mean programs can load.
pub fn probe_lsm_load(attach_btf_id: u32) -> std::io::Result<()> {
    const PROG_TYPE_LSM: u32 = 29;
    const BPF_LSM_MAC: u32 = 27;
    // r0 = 0; exit
    let insns = [
        bpf_insn {
            code: 0xb7,
            _bitfield_align_1: [],
            _bitfield_1: bpf_insn::new_bitfield_1(0, 0),
            off: 0,
            imm: 0,
        },
        bpf_insn {
            code: 0x95,
            _bitfield_align_1: [],
            _bitfield_1: bpf_insn::new_bitfield_1(0, 0),
            off: 0,
            imm: 0,
        },
    ];
    let license = c"GPL";
    let mut attr = zeroed_attr();
    // SAFETY: writing the `BPF_PROG_LOAD` member of the union we own.
    let u = unsafe { &mut attr.__bindgen_anon_3 };
    u.prog_type = PROG_TYPE_LSM;
    u.expected_attach_type = BPF_LSM_MAC;
    u.attach_btf_id = attach_btf_id;
    u.insn_cnt = insns.len() as u32;
    u.insns = insns.as_ptr() as u64;
    u.license = license.as_ptr() as u64;
    bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr).map(|fd| drop(owned(fd)))
}

/// `BPF_LINK_CREATE` for a cgroup attach point.
pub fn link_create(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> std::io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    // SAFETY: writing the `BPF_LINK_CREATE` member of the union we own.
    let u = unsafe { &mut attr.link_create };
    u.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    u.__bindgen_anon_2.target_fd = cgroup.as_raw_fd() as u32;
    u.attach_type = attach_type;
    bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).map(owned)
}

/// `BPF_PROG_QUERY` on a cgroup: the ids of the programs of `attach_type`
/// attached to it directly, or (`effective`) of those that run for it,
/// including what it inherits from its ancestors.
pub fn prog_query(
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
    effective: bool,
) -> std::io::Result<Vec<u32>> {
    use aya_obj::generated::BPF_F_QUERY_EFFECTIVE;
    // A cgroup runs at most 64 programs of one type (`BPF_CGROUP_MAX_PROGS`)
    // per level; the kernel says how many there are when the buffer is short.
    let mut ids = vec![0u32; 64];
    // Programs attached between two queries can make the second short too;
    // a few tries are plenty, and the last error is returned after them.
    for _ in 0..4 {
        let mut attr = zeroed_attr();
        // SAFETY: writing the `BPF_PROG_QUERY` member of the union we own.
        let q = unsafe { &mut attr.query };
        q.__bindgen_anon_1.target_fd = cgroup.as_raw_fd() as u32;
        q.attach_type = attach_type;
        q.query_flags = if effective { BPF_F_QUERY_EFFECTIVE } else { 0 };
        q.prog_ids = ids.as_mut_ptr() as u64;
        q.__bindgen_anon_2.prog_cnt = ids.len() as u32;
        let result = bpf(bpf_cmd::BPF_PROG_QUERY, &mut attr);
        // SAFETY: the kernel wrote the count back into the member we set.
        let count = unsafe { attr.query.__bindgen_anon_2.prog_cnt } as usize;
        match result {
            Ok(_) => {
                ids.truncate(count.min(ids.len()));
                return Ok(ids);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && count > ids.len() => {
                ids = vec![0u32; count];
            }
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
}

fn path_cstring(path: &Path) -> std::io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// `BPF_OBJ_PIN`: keeps the object alive after guardd's descriptor closes.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> std::io::Result<()> {
    let c = path_cstring(path)?;
    let mut attr = zeroed_attr();
    // SAFETY: writing the `BPF_OBJ_*` member of the union we own.
    let u = unsafe { &mut attr.__bindgen_anon_4 };
    u.pathname = c.as_ptr() as u64;
    u.bpf_fd = fd.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_rejects_nul_in_path() {
        let p = Path::new("/sys/fs/bpf/a\0b");
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        let err = obj_pin(f.as_fd(), p).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }
}
