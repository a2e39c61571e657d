//! Decoding the records the kernel programs put in the ring buffer.

use guard_common::{
    EVENT_EXEC, EVENT_KILL, EVENT_NET, EVENT_SOCK, EVENT_SYSCALL, EVENT_UNIX, EventHeader,
    ExecEvent, KillEvent, NetEvent, SockEvent, SyscallEvent, UnixEvent,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    Net(NetEvent),
    Sock(SockEvent),
    Unix(UnixEvent),
    Exec(Box<ExecEvent>),
    Syscall(Box<SyscallEvent>),
    Kill(KillEvent),
}

impl KernelEvent {
    pub fn header(&self) -> &EventHeader {
        match self {
            KernelEvent::Net(e) => &e.hdr,
            KernelEvent::Sock(e) => &e.hdr,
            KernelEvent::Unix(e) => &e.hdr,
            KernelEvent::Exec(e) => &e.hdr,
            KernelEvent::Syscall(e) => &e.hdr,
            KernelEvent::Kill(e) => &e.hdr,
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
        EVENT_SYSCALL => read(bytes).map(|e| KernelEvent::Syscall(Box::new(e))),
        EVENT_KILL => read(bytes).map(KernelEvent::Kill),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
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
}
