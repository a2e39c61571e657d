//! Decoding the records the kernel programs put in the ring buffer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use guard_common::{
    EVENT_EXEC, EVENT_EXEC_REFUSED, EVENT_KILL, EVENT_NET, EVENT_OBSERVED, EVENT_SOCK,
    EVENT_SYSCALL, EVENT_UNIX, EventHeader, ExecArgv, ExecEvent, ExecRefusedEvent, KillEvent,
    NetEvent, SockEvent, SyscallEvent, UnixEvent,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    Net(NetEvent),
    Sock(SockEvent),
    Unix(UnixEvent),
    Exec(Box<ExecEvent>),
    /// A refused call; a refused exec also carries its arguments.
    Syscall(Box<SyscallEvent>, Option<Box<ExecArgv>>),
    Kill(KillEvent),
    /// A successful path call of an agent in learn mode.
    Observed(Box<SyscallEvent>),
}

impl KernelEvent {
    pub fn header(&self) -> &EventHeader {
        match self {
            KernelEvent::Net(e) => &e.hdr,
            KernelEvent::Sock(e) => &e.hdr,
            KernelEvent::Unix(e) => &e.hdr,
            KernelEvent::Exec(e) => &e.hdr,
            KernelEvent::Syscall(e, _) => &e.hdr,
            KernelEvent::Kill(e) => &e.hdr,
            KernelEvent::Observed(e) => &e.hdr,
        }
    }
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: the slice holds at least size_of::<T>() bytes, `T` is one of
    // guard-common's plain `repr(C)` integer structs (any bit pattern is
    // valid), and read_unaligned copes with the ring buffer's alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

/// Decodes one ring buffer record; `None` for a record too short for its
/// kind or of an unknown kind (both mean a kernel/user ABI mismatch, which
/// the caller journals rather than drops).
pub fn decode(bytes: &[u8]) -> Option<KernelEvent> {
    let hdr: EventHeader = read(bytes)?;
    match hdr.kind {
        EVENT_NET => read(bytes).map(KernelEvent::Net),
        EVENT_SOCK => read(bytes).map(KernelEvent::Sock),
        EVENT_UNIX => read(bytes).map(KernelEvent::Unix),
        EVENT_EXEC => read(bytes).map(|e| KernelEvent::Exec(Box::new(e))),
        EVENT_SYSCALL => read(bytes).map(|e| KernelEvent::Syscall(Box::new(e), None)),
        EVENT_EXEC_REFUSED => read::<ExecRefusedEvent>(bytes)
            .map(|e| KernelEvent::Syscall(Box::new(e.sys), Some(Box::new(e.argv)))),
        EVENT_KILL => read(bytes).map(KernelEvent::Kill),
        EVENT_OBSERVED => read(bytes).map(|e| KernelEvent::Observed(Box::new(e))),
        _ => None,
    }
}

/// Converts the kernel's event times (`CLOCK_BOOTTIME` nanoseconds) to
/// wall-clock time. The offset between the clocks is taken when the events
/// are read: an event that waited in the ring buffer (guardd was down, or
/// busy) keeps the time the kernel saw it, not the time it was read.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    /// `CLOCK_REALTIME - CLOCK_BOOTTIME`, in nanoseconds.
    offset_ns: i128,
    /// `CLOCK_BOOTTIME` when the offset was taken.
    boot_now_ns: u64,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; both clocks exist
    // on every kernel guard supports, so it cannot fail (and a failure
    // leaves 0, which `wall` treats as unknown).
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl BootClock {
    pub fn now() -> BootClock {
        // Boot time read on both sides of the wall clock and averaged, so a
        // preemption between the readings cannot skew the offset by more
        // than half of it.
        let b1 = clock_ns(libc::CLOCK_BOOTTIME);
        let real = clock_ns(libc::CLOCK_REALTIME);
        let b2 = clock_ns(libc::CLOCK_BOOTTIME);
        let boot = b1 + (b2 - b1) / 2;
        BootClock::at(real - boot, u64::try_from(b2).unwrap_or(0))
    }

    fn at(offset_ns: i128, boot_now_ns: u64) -> BootClock {
        BootClock {
            offset_ns,
            boot_now_ns,
        }
    }

    /// Wall-clock time of a kernel timestamp; `None` for a timestamp the
    /// kernel cannot have written (zero, or later than now), which the
    /// caller replaces with the time of reading.
    pub fn wall(&self, ts_ns: u64) -> Option<SystemTime> {
        if ts_ns == 0 || ts_ns > self.boot_now_ns {
            return None;
        }
        let ns = self.offset_ns + i128::from(ts_ns);
        let ns = u64::try_from(ns).ok()?;
        Some(UNIX_EPOCH + Duration::from_nanos(ns))
    }
}

#[cfg(test)]
mod tests {
    use guard_common::syscalls::NR_EXECVE;

    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain repr(C) value for the test.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn decodes_each_kind_and_rejects_short_or_unknown() {
        let mut ev = NetEvent::default();
        ev.hdr.kind = EVENT_NET;
        ev.port = 443;
        let b = bytes_of(&ev);
        assert_eq!(decode(&b), Some(KernelEvent::Net(ev)));
        assert_eq!(decode(&b[..b.len() - 1]), None);
        let mut s = SockEvent::default();
        s.hdr.kind = EVENT_SOCK;
        assert_eq!(decode(&bytes_of(&s)), Some(KernelEvent::Sock(s)));
        let mut u = UnixEvent::default();
        u.hdr.kind = EVENT_UNIX;
        assert_eq!(decode(&bytes_of(&u)), Some(KernelEvent::Unix(u)));
        let mut k = KillEvent::default();
        k.hdr.kind = EVENT_KILL;
        k.syscall = 1;
        assert_eq!(decode(&bytes_of(&k)), Some(KernelEvent::Kill(k)));
        let bad = EventHeader {
            kind: 999,
            ..Default::default()
        };
        assert_eq!(decode(&bytes_of(&bad)), None);
        assert_eq!(decode(&[1, 2, 3]), None);
    }

    #[test]
    fn a_refused_exec_decodes_with_its_arguments() {
        // SAFETY: all-zero is a valid value of this plain integer struct.
        let mut e: ExecRefusedEvent = unsafe { std::mem::zeroed() };
        e.sys.hdr.kind = EVENT_EXEC_REFUSED;
        e.sys.nr = NR_EXECVE;
        e.argv.count = 1;
        e.argv.lens[0] = 3;
        e.argv.args[0][..3].copy_from_slice(b"ls\0");
        let b = bytes_of(&e);
        match decode(&b) {
            Some(KernelEvent::Syscall(s, Some(a))) => {
                assert_eq!((s.nr, a.count, &a.args[0][..2]), (NR_EXECVE, 1, &b"ls"[..]));
            }
            other => panic!("{other:?}"),
        }
        // Cut short, it is no event at all (not a syscall without argv).
        assert_eq!(decode(&b[..b.len() - 1]), None);
    }

    #[test]
    fn boot_times_become_the_wall_time_they_happened() {
        let c = BootClock::at(1_700_000_000_000_000_000, 50_000_000_000);
        assert_eq!(
            c.wall(40_000_000_000),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_040))
        );
        assert_eq!(c.wall(0), None);
        assert_eq!(c.wall(50_000_000_001), None);
        // The real clocks: an event from a second ago reads as about then.
        let now = BootClock::now();
        let t = now.wall(now.boot_now_ns - 1_000_000_000).unwrap();
        let ago = SystemTime::now().duration_since(t).unwrap();
        assert!(
            ago >= Duration::from_millis(990) && ago < Duration::from_secs(3),
            "{ago:?}"
        );
    }
}
