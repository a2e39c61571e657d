//! Host-rule entries of the `NET4`/`NET6` tries, written while guardd runs.
//!
//! guardd's resolver writes the addresses of the DNS answers an agent may
//! use (one /32 or /128 entry per address, its ranges flagged `RANGE_NAME`)
//! before it releases the answer, and removes them when they expire. It runs
//! on its own thread and must not wait on the `Kernel` lock that opening and
//! closing agents hold, so it gets its own descriptors of the two tries.

use std::{
    net::IpAddr,
    os::fd::AsFd,
    path::Path,
    sync::{Mutex, MutexGuard},
};

use aya::maps::{IterableMap, LpmTrie, Map, MapData, MapError};
use guard_common::{Net4Key, Net6Key, NetValue};

use super::KernelError;

type Trie<K> = LpmTrie<MapData, K, NetValue>;

/// A handle on the `NET4`/`NET6` tries that any thread may use (`Send +
/// Sync`); aya's writes need `&mut`, so each trie sits behind its own lock,
/// held for one map update.
pub struct DynamicNet {
    net4: Mutex<Trie<Net4Key>>,
    net6: Mutex<Trie<Net6Key>>,
}

/// The trie key of one host address of an agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HostKey {
    V4(Net4Key),
    V6(Net6Key),
}

impl HostKey {
    /// The key of `ip` for `slot`: a /32 in `NET4` for IPv4 and for a
    /// v4-mapped IPv6 address (the kernel programs judge those as IPv4), a
    /// /128 in `NET6` for the rest.
    pub(crate) fn of(slot: u32, ip: IpAddr) -> HostKey {
        match ip.to_canonical() {
            IpAddr::V4(a) => HostKey::V4(Net4Key {
                slot,
                addr: a.octets(),
            }),
            IpAddr::V6(a) => HostKey::V6(Net6Key {
                slot,
                addr: a.octets(),
            }),
        }
    }
}

fn err(name: &'static str) -> impl FnOnce(MapError) -> KernelError {
    move |source| KernelError::Map { name, source }
}

/// A missing key is what removal wants: not an error.
fn absent_ok(r: Result<(), MapError>, name: &'static str) -> Result<(), KernelError> {
    match r {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(MapError::KeyNotFound) => Ok(()),
        other => other.map_err(err(name)),
    }
}

fn trie<K: aya::Pod>(data: MapData, name: &'static str) -> Result<Trie<K>, KernelError> {
    let map = Map::from_map_data(data).map_err(err(name))?;
    Trie::<K>::try_from(map).map_err(err(name))
}

fn dup<K: aya::Pod>(t: &Trie<K>, name: &'static str) -> Result<MapData, KernelError> {
    let fd = t
        .map()
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| KernelError::Map {
            name,
            source: MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error: e,
            }),
        })?;
    MapData::from_fd(fd).map_err(err(name))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a map update half done
    // (each is one system call), so a poisoned lock is still good.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DynamicNet {
    /// Opens the tries pinned by a `Kernel` under `pin_dir` (the
    /// `KernelOptions::pin_dir` it was loaded with).
    pub fn open(pin_dir: &Path) -> Result<DynamicNet, KernelError> {
        let maps = pin_dir.join("maps");
        let net4 = MapData::from_pin(maps.join("NET4")).map_err(err("NET4"))?;
        let net6 = MapData::from_pin(maps.join("NET6")).map_err(err("NET6"))?;
        Ok(DynamicNet {
            net4: Mutex::new(trie(net4, "NET4")?),
            net6: Mutex::new(trie(net6, "NET6")?),
        })
    }

    /// On duplicates of the descriptors of `Kernel`'s own tries.
    pub(super) fn from_tries(
        net4: &Trie<Net4Key>,
        net6: &Trie<Net6Key>,
    ) -> Result<DynamicNet, KernelError> {
        Ok(DynamicNet {
            net4: Mutex::new(trie(dup(net4, "NET4")?, "NET4")?),
            net6: Mutex::new(trie(dup(net6, "NET6")?, "NET6")?),
        })
    }

    /// Writes (or replaces) the entry of one host address of the agent in
    /// `slot`. `value` must hold the ranges of every rule of the agent that
    /// covers `ip` as well (the tries answer with the longest prefix only;
    /// see `NetValue`).
    pub fn put(&self, slot: u32, ip: IpAddr, value: &NetValue) -> Result<(), KernelError> {
        match HostKey::of(slot, ip) {
            HostKey::V4(k) => lock(&self.net4)
                .insert(&super::key4(k.slot, 32, k.addr), value, 0)
                .map_err(err("NET4")),
            HostKey::V6(k) => lock(&self.net6)
                .insert(&super::key6(k.slot, 128, k.addr), value, 0)
                .map_err(err("NET6")),
        }
    }

    /// Removes the entry `put` wrote; one that is not there is no error.
    pub fn remove(&self, slot: u32, ip: IpAddr) -> Result<(), KernelError> {
        match HostKey::of(slot, ip) {
            HostKey::V4(k) => absent_ok(
                lock(&self.net4).remove(&super::key4(k.slot, 32, k.addr)),
                "NET4",
            ),
            HostKey::V6(k) => absent_ok(
                lock(&self.net6).remove(&super::key6(k.slot, 128, k.addr)),
                "NET6",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn v4_and_v4_mapped_go_to_net4_and_the_rest_to_net6() {
        let v4 = HostKey::of(7, IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34)));
        let expect = HostKey::V4(Net4Key {
            slot: 7,
            addr: [93, 184, 216, 34],
        });
        assert_eq!(v4, expect);
        let mapped: Ipv6Addr = "::ffff:93.184.216.34".parse().unwrap();
        assert_eq!(HostKey::of(7, IpAddr::V6(mapped)), expect);
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            HostKey::of(3, IpAddr::V6(v6)),
            HostKey::V6(Net6Key {
                slot: 3,
                addr: v6.octets()
            })
        );
        // IPv4-compatible (deprecated) addresses are IPv6 to the kernel.
        let compat: Ipv6Addr = "::93.184.216.34".parse().unwrap();
        assert!(matches!(HostKey::of(3, IpAddr::V6(compat)), HostKey::V6(_)));
    }

    #[test]
    fn a_missing_key_is_no_error_but_other_failures_are() {
        let enoent = MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_delete_elem",
            io_error: std::io::Error::from_raw_os_error(libc::ENOENT),
        });
        assert!(absent_ok(Err(enoent), "NET4").is_ok());
        assert!(absent_ok(Err(MapError::KeyNotFound), "NET4").is_ok());
        let eperm = MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_delete_elem",
            io_error: std::io::Error::from_raw_os_error(libc::EPERM),
        });
        assert!(matches!(
            absent_ok(Err(eperm), "NET6"),
            Err(KernelError::Map { name: "NET6", .. })
        ));
    }

    #[test]
    fn the_handle_is_shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<DynamicNet>();
    }
}
