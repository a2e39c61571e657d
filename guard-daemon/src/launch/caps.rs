//! Dropping capabilities in the child: bounding and ambient sets first
//! (while still privileged), then the effective/permitted/inheritable sets,
//! keeping only what the policy names.

use std::io;

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// Highest capability number the loop tries; the kernel answers EINVAL for
/// numbers it does not know, which is not an error here.
const CAP_MAX: u32 = 63;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops every capability not kept from the bounding set and clears the
/// ambient set. Needs CAP_SETPCAP, so it runs before any user switch. Only
/// system calls: runs in the child between clone and exec.
pub fn drop_bounding(keep: &[u32]) -> io::Result<()> {
    for cap in 0..=CAP_MAX {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
    }
    // SAFETY: prctl with integer arguments.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the effective, permitted and inheritable sets to exactly `keep`,
/// and raises the kept ones as ambient so they survive exec for a non-root
/// user. Only system calls.
pub fn set_kept(keep: &[u32]) -> io::Result<()> {
    let mut data = [CapData::default(); 2];
    for &cap in keep {
        if cap <= CAP_MAX {
            let word = (cap / 32) as usize;
            let bit = 1u32 << (cap % 32);
            data[word].effective |= bit;
            data[word].permitted |= bit;
            data[word].inheritable |= bit;
        }
    }
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset with a v3 header and two data words, as the ABI wants.
    if unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    for &cap in keep {
        // SAFETY: prctl with integer arguments.
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap as libc::c_ulong,
                0,
                0,
            )
        };
    }
    Ok(())
}

/// Capability number of a `CAP_*` name (the policy module owns the table).
pub fn number(name: &str) -> Option<u32> {
    crate::policy::capability_number(name).map(u32::from)
}

/// The capabilities a policy's `[process] capabilities` keep, as numbers:
/// what the launcher leaves the agent (`LaunchSpec::keep_caps`), and, as a
/// [`mask`], what guardd lets an agent's program hold when it starts. One
/// definition, so the two agree.
pub fn kept(names: &[String]) -> Vec<u32> {
    names.iter().filter_map(|c| number(c)).collect()
}

/// `keep` as a bit set (bit n: capability n), the form of
/// `cred.cap_effective`, `cred.cap_permitted` and `AgentInfo::caps`. After
/// exec the agent's effective and permitted sets are exactly this: as
/// root, the bounding and inheritable sets are `keep`; as another user,
/// the ambient set is.
pub fn mask(keep: &[u32]) -> u64 {
    keep.iter()
        .filter(|&&c| c <= CAP_MAX)
        .fold(0, |m, &c| m | 1 << c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(number("CAP_NET_RAW"), Some(13));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("CAP_NOPE"), None);
    }

    #[test]
    fn kept_capabilities_as_numbers_and_as_a_mask() {
        let keep = kept(&[
            "CAP_NET_BIND_SERVICE".into(),
            "CAP_CHECKPOINT_RESTORE".into(),
        ]);
        assert_eq!(keep, vec![10, 40]);
        assert_eq!(mask(&keep), 1 << 10 | 1 << 40);
        assert_eq!(mask(&[]), 0);
        // Numbers past the last capability a u64 can hold are not kept.
        assert_eq!(mask(&[64, 0]), 1);
    }
}
