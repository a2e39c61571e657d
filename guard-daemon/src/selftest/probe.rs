//! The attempts themselves, run inside an agent's scope by
//! `guardctl selftest-probe ATTEMPT [ARGS]`.
//!
//! Each attempt does one thing a confined agent must not be able to do and
//! reports what the kernel answered as one [`ProbeReport`]. The probe is
//! the attacker, not the judge: the runner outside the scope also watches
//! the targets (listeners, files, markers) and counts an attempt as an
//! escape if either side saw it succeed.
//!
//! Every attempt is plain system calls (libc), so the probe needs nothing
//! on the host but the guardctl binary it is part of. The probe is
//! single-threaded, so `fork` here is the ordinary, safe kind.

use std::{
    ffi::{CString, OsStr},
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::api::{ControlAction, ControlRequest, Empty, OpenRequest, Request};

/// What the probe saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeOutcome {
    /// The kernel refused (the wall held, as far as the probe can tell).
    Refused,
    /// The forbidden thing happened.
    Succeeded,
    /// The attempt could not be made (a setup step failed for another
    /// reason): it proves nothing either way.
    Error,
}

/// The probe's one line on stdout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub attempt: String,
    pub outcome: ProbeOutcome,
    pub detail: String,
}

impl ProbeReport {
    fn new(attempt: &str, outcome: ProbeOutcome, detail: impl Into<String>) -> ProbeReport {
        ProbeReport {
            attempt: attempt.to_owned(),
            outcome,
            detail: detail.into(),
        }
    }
}

/// How long a process that was refused something naming a descriptor
/// (a memfd, a mapped file) stays alive, so that guardd can still read the
/// descriptor when it names the file in the record.
const HOLD: Duration = Duration::from_millis(300);

/// Network attempts give up after this long (a dropped SYN would
/// otherwise take the kernel's full retry time).
const NET_TIMEOUT: Duration = Duration::from_millis(1500);

/// The payload a successful exec route runs: `guardctl selftest-probe mark
/// FILE`, which creates FILE. The runner watches for it outside the scope.
pub const MARK: &str = "mark";

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn errno_text(e: i32) -> String {
    std::io::Error::from_raw_os_error(e).to_string()
}

/// A refusal is the kernel saying no; anything else (no such file, a
/// timeout) means the attempt did not reach the wall.
fn is_refusal(e: i32) -> bool {
    matches!(
        e,
        libc::EPERM | libc::EACCES | libc::EAFNOSUPPORT | libc::ENOSYS | libc::EXDEV | libc::EROFS
    )
}

fn from_errno(attempt: &str, what: &str, e: i32) -> ProbeReport {
    let outcome = if is_refusal(e) {
        ProbeOutcome::Refused
    } else {
        ProbeOutcome::Error
    };
    ProbeReport::new(attempt, outcome, format!("{what}: {}", errno_text(e)))
}

fn from_io(attempt: &str, what: &str, e: &std::io::Error) -> ProbeReport {
    match e.raw_os_error() {
        Some(n) => from_errno(attempt, what, n),
        None => ProbeReport::new(attempt, ProbeOutcome::Error, format!("{what}: {e}")),
    }
}

fn arg<'a>(args: &'a [String], i: usize, attempt: &str) -> Result<&'a str, ProbeReport> {
    args.get(i).map(String::as_str).ok_or_else(|| {
        ProbeReport::new(
            attempt,
            ProbeOutcome::Error,
            format!("missing argument {}", i + 1),
        )
    })
}

fn addr_arg(args: &[String], attempt: &str) -> Result<SocketAddr, ProbeReport> {
    let a = arg(args, 0, attempt)?;
    a.parse().map_err(|e| {
        ProbeReport::new(
            attempt,
            ProbeOutcome::Error,
            format!("bad address {a:?}: {e}"),
        )
    })
}

fn cstring(s: &[u8], attempt: &str) -> Result<CString, ProbeReport> {
    CString::new(s).map_err(|_| ProbeReport::new(attempt, ProbeOutcome::Error, "NUL in a path"))
}

/// Runs attempt `attempt` with `args`. Never panics: a malformed request
/// is an `Error` report.
pub fn run(attempt: &str, args: &[String]) -> ProbeReport {
    match dispatch(attempt, args) {
        Ok(r) | Err(r) => r,
    }
}

fn dispatch(a: &str, args: &[String]) -> Result<ProbeReport, ProbeReport> {
    Ok(match a {
        "net.connect.v4" | "net.connect.v6" | "net.connect.v4-mapped" | "net.connect.any" => {
            tcp_connect(a, addr_arg(args, a)?)
        }
        "net.udp.sendto" => udp_sendto(a, addr_arg(args, a)?),
        "net.udp.connect" => udp_connect(a, addr_arg(args, a)?),
        "net.udp.sendmsg" => udp_sendmsg(a, addr_arg(args, a)?),
        "net.tcp.fastopen" => tcp_fastopen(a, addr_arg(args, a)?),
        "net.raw-socket" => socket_of(a, libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP),
        "net.packet-socket" => socket_of(a, libc::AF_PACKET, libc::SOCK_RAW, 0),
        "net.inherited-socket" => inherited_socket(a),
        #[cfg(target_arch = "x86_64")]
        "abi.i386-socketcall" => abi::i386_socketcall(a),
        #[cfg(target_arch = "x86_64")]
        "abi.i386-open" => abi::i386_open(a, arg(args, 0, a)?),
        "abi.x32-socket" => x32_socket(a),
        "file.read" | "file.symlink" | "file.proc-self-root" | "file.proc-outsider" => {
            read_file(a, arg(args, 0, a)?)
        }
        "file.write" => write_file(a, arg(args, 0, a)?),
        "file.hardlink" => hard_link(a, arg(args, 0, a)?, arg(args, 1, a)?),
        "file.handle" => open_by_handle(a, arg(args, 0, a)?, arg(args, 1, a)?),
        "exec.program" => exec_program(a, arg(args, 0, a)?, arg(args, 1, a)?),
        "exec.memfd-exec-flag" => memfd_exec_flag(a),
        "exec.memfd" => exec_memfd(a, arg(args, 0, a)?),
        "exec.copy" => exec_copy(a, arg(args, 0, a)?, arg(args, 1, a)?),
        "exec.loader" => exec_loader(a, arg(args, 0, a)?, arg(args, 1, a)?, arg(args, 2, a)?),
        "exec.mmap-noexec" => mmap_noexec(a, arg(args, 0, a)?),
        "ctl.socket" => control_socket(a, arg(args, 0, a)?),
        "ctl.request-channel" => request_channel(a),
        "priv.setuid" => setuid_root(a),
        "priv.ptrace" => ptrace_attach(a),
        "ns.user" => unshare(a, libc::CLONE_NEWUSER),
        "ns.mount" => unshare_mount(a, arg(args, 0, a)?),
        "ns.setns" => setns(a),
        "limits.fork" => fork_bomb(a, arg(args, 0, a)?),
        MARK => mark(a, arg(args, 0, a)?),
        other => ProbeReport::new(
            other,
            ProbeOutcome::Error,
            "unknown attempt (this guardctl's battery does not have it)",
        ),
    })
}

// ---------------------------------------------------------------- network

/// A forbidden TCP connection: refused if `connect` is, succeeded if it
/// connects (then one byte goes out, for the listener to see).
fn tcp_connect(a: &str, to: SocketAddr) -> ProbeReport {
    match TcpStream::connect_timeout(&to, NET_TIMEOUT) {
        Ok(mut s) => {
            let _ = s.write_all(b"x");
            ProbeReport::new(a, ProbeOutcome::Succeeded, format!("connected to {to}"))
        }
        Err(e) => from_io(a, &format!("connect {to}"), &e),
    }
}

fn udp_bind_for(to: &SocketAddr) -> std::io::Result<UdpSocket> {
    // No explicit bind: the kernel picks the source when sending, exactly
    // as an agent's unbound socket would. `socket()` alone is what this is.
    let domain = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket() with constant arguments; the result is checked and
    // owned at once.
    let fd = unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { UdpSocket::from_raw_fd(fd) })
}

fn udp_sendto(a: &str, to: SocketAddr) -> ProbeReport {
    let s = match udp_bind_for(&to) {
        Ok(s) => s,
        Err(e) => return from_io(a, "socket", &e),
    };
    match s.send_to(b"x", to) {
        Ok(_) => ProbeReport::new(a, ProbeOutcome::Succeeded, format!("sent to {to}")),
        Err(e) => from_io(a, &format!("sendto {to}"), &e),
    }
}

fn udp_connect(a: &str, to: SocketAddr) -> ProbeReport {
    let s = match udp_bind_for(&to) {
        Ok(s) => s,
        Err(e) => return from_io(a, "socket", &e),
    };
    if let Err(e) = s.connect(to) {
        return from_io(a, &format!("connect {to}"), &e);
    }
    match s.send(b"x") {
        Ok(_) => ProbeReport::new(
            a,
            ProbeOutcome::Succeeded,
            format!("connected and sent to {to}"),
        ),
        Err(e) => from_io(a, &format!("send {to}"), &e),
    }
}

/// `sockaddr_storage` holding `to`, and its length.
fn sockaddr_of(to: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match to {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in.
            unsafe { std::ptr::write((&raw mut ss).cast::<libc::sockaddr_in>(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in6.
            unsafe { std::ptr::write((&raw mut ss).cast::<libc::sockaddr_in6>(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn udp_sendmsg(a: &str, to: SocketAddr) -> ProbeReport {
    let s = match udp_bind_for(&to) {
        Ok(s) => s,
        Err(e) => return from_io(a, "socket", &e),
    };
    let (mut ss, len) = sockaddr_of(&to);
    let mut byte = *b"x";
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: msghdr is plain data; all-zero is valid, the fields set below
    // point at locals that outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut ss).cast();
    msg.msg_namelen = len;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: sendmsg on a socket we own with a fully initialised msghdr.
    let n = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, 0) };
    if n < 0 {
        return from_errno(a, &format!("sendmsg {to}"), errno());
    }
    ProbeReport::new(a, ProbeOutcome::Succeeded, format!("sendmsg to {to}"))
}

/// TCP fast open: `sendto(MSG_FASTOPEN)` connects and sends in one call,
/// without `connect()`.
fn tcp_fastopen(a: &str, to: SocketAddr) -> ProbeReport {
    let domain = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket() with constant arguments; checked below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return from_errno(a, "socket", errno());
    }
    // SAFETY: a new descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let (ss, len) = sockaddr_of(&to);
    // SAFETY: sendto on our socket with a one-byte buffer and a valid
    // address of `len` bytes.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            b"x".as_ptr().cast(),
            1,
            libc::MSG_FASTOPEN,
            (&raw const ss).cast(),
            len,
        )
    };
    if n < 0 {
        return from_errno(a, &format!("sendto(MSG_FASTOPEN) {to}"), errno());
    }
    ProbeReport::new(
        a,
        ProbeOutcome::Succeeded,
        format!("sendto(MSG_FASTOPEN) {to} sent {n} byte(s)"),
    )
}

fn socket_of(a: &str, domain: i32, ty: i32, proto: i32) -> ProbeReport {
    // SAFETY: socket() with constant arguments; the result is checked and,
    // when it is a descriptor, closed.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return from_errno(a, &format!("socket({domain}, {ty}, {proto})"), errno());
    }
    // SAFETY: a new descriptor we own.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    ProbeReport::new(
        a,
        ProbeOutcome::Succeeded,
        format!("socket({domain}, {ty}, {proto}) created"),
    )
}

/// Looks through descriptors 3..1024 for a socket that still sends: one
/// the launcher let through would carry data past every connect hook.
fn inherited_socket(a: &str) -> ProbeReport {
    // The request channel is the one socket guard hands every agent on
    // purpose (`ctl.request-channel` tries it); an inherited socket that
    // hid behind its number would still be seen by the outside listener.
    let channel = request_fd();
    let mut open = Vec::new();
    for fd in (3..1024).filter(|fd| Some(*fd) != channel) {
        // SAFETY: fstat into a zeroed stat we own; an unused descriptor
        // just fails with EBADF.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            continue;
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            continue;
        }
        open.push(fd);
        // SAFETY: send on a descriptor that fstat says is a socket; it is
        // not ours to close, so it is only borrowed.
        let n = unsafe { libc::send(fd, b"x".as_ptr().cast(), 1, libc::MSG_NOSIGNAL) };
        if n == 1 {
            return ProbeReport::new(
                a,
                ProbeOutcome::Succeeded,
                format!("descriptor {fd} is an inherited socket that sends"),
            );
        }
    }
    if open.is_empty() {
        ProbeReport::new(
            a,
            ProbeOutcome::Refused,
            "no socket among descriptors 3..1024: the launcher closed what the caller left open",
        )
    } else {
        ProbeReport::new(
            a,
            ProbeOutcome::Refused,
            format!("sockets {open:?} found, none sends"),
        )
    }
}

/// An x32 system call: the same numbers with bit 30 set, a second entry
/// point into the kernel that a filter checking numbers alone would miss.
fn x32_socket(a: &str) -> ProbeReport {
    const X32: libc::c_long = 0x4000_0000;
    // SAFETY: a raw socket() call (x32 numbering) with constant arguments;
    // a descriptor returned is closed at once.
    let r = unsafe { libc::syscall(X32 | libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) };
    if r < 0 {
        return from_errno(a, "x32 socket", errno());
    }
    // SAFETY: the call returned a new descriptor.
    drop(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
    ProbeReport::new(a, ProbeOutcome::Succeeded, "x32 socket() returned a socket")
}

#[cfg(target_arch = "x86_64")]
mod abi {
    //! 32-bit system calls through `int 0x80`: the i386 table, with its
    //! own numbers. Seccomp kills the process for any of them, so these
    //! only report when the wall is missing.
    use super::{ProbeOutcome, ProbeReport};

    const I386_SOCKETCALL: u32 = 102;
    const I386_OPEN: u32 = 5;
    const SYS_SOCKET: u32 = 1;

    /// One page below 4 GiB, where a 32-bit call can address its
    /// arguments.
    struct Low(*mut u8);

    impl Low {
        fn new() -> Option<Low> {
            // SAFETY: an anonymous private mapping; checked for failure.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
                    -1,
                    0,
                )
            };
            (p != libc::MAP_FAILED).then_some(Low(p.cast()))
        }
    }

    impl Drop for Low {
        fn drop(&mut self) {
            // SAFETY: unmapping the page this value mapped.
            unsafe { libc::munmap(self.0.cast(), 4096) };
        }
    }

    /// `int 0x80` with three arguments; returns the raw result.
    fn int80(nr: u32, a1: u32, a2: u32, a3: u32) -> i32 {
        let mut ret = u64::from(nr);
        // SAFETY: a 32-bit system call whose pointer arguments, if any,
        // point into a low page the caller holds; it touches no Rust-owned
        // state. rbx (which LLVM reserves) is saved and restored around it.
        unsafe {
            core::arch::asm!(
                "push rbx",
                "mov ebx, {a1:e}",
                "int 0x80",
                "pop rbx",
                a1 = in(reg) a1,
                inlateout("rax") ret,
                in("rcx") u64::from(a2),
                in("rdx") u64::from(a3),
            );
        }
        ret as u32 as i32
    }

    fn report(a: &str, what: &str, r: i32) -> ProbeReport {
        if r < 0 {
            return super::from_errno(a, what, -r);
        }
        // SAFETY: the call returned a new descriptor.
        unsafe { libc::close(r) };
        ProbeReport::new(
            a,
            ProbeOutcome::Succeeded,
            format!("{what} returned descriptor {r}"),
        )
    }

    pub fn i386_socketcall(a: &str) -> ProbeReport {
        let Some(low) = Low::new() else {
            return ProbeReport::new(a, ProbeOutcome::Error, "no memory below 4 GiB");
        };
        let args = [libc::AF_INET as u32, libc::SOCK_STREAM as u32, 0];
        // SAFETY: the page holds 4096 writable bytes; 12 are written.
        unsafe { std::ptr::copy_nonoverlapping(args.as_ptr(), low.0.cast::<u32>(), 3) };
        let r = int80(I386_SOCKETCALL, SYS_SOCKET, low.0 as usize as u32, 0);
        report(a, "i386 socketcall(SYS_SOCKET)", r)
    }

    pub fn i386_open(a: &str, path: &str) -> ProbeReport {
        let Some(low) = Low::new() else {
            return ProbeReport::new(a, ProbeOutcome::Error, "no memory below 4 GiB");
        };
        let bytes = path.as_bytes();
        if bytes.len() >= 4096 || bytes.contains(&0) {
            return ProbeReport::new(a, ProbeOutcome::Error, "path unusable");
        }
        // SAFETY: the page holds 4096 writable zeroed bytes; the path and
        // its terminating NUL fit.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), low.0, bytes.len()) };
        let r = int80(I386_OPEN, low.0 as usize as u32, libc::O_RDONLY as u32, 0);
        report(a, &format!("i386 open({path})"), r)
    }
}

// ---------------------------------------------------------------- files

fn read_file(a: &str, path: &str) -> ProbeReport {
    match std::fs::File::open(path) {
        Ok(mut f) => {
            let mut buf = Vec::new();
            match f.read_to_end(&mut buf) {
                Ok(n) => ProbeReport::new(
                    a,
                    ProbeOutcome::Succeeded,
                    format!("read {n} byte(s) of {path}"),
                ),
                Err(e) => from_io(a, &format!("read {path}"), &e),
            }
        }
        Err(e) => from_io(a, &format!("open {path}"), &e),
    }
}

fn write_file(a: &str, path: &str) -> ProbeReport {
    match std::fs::OpenOptions::new().append(true).open(path) {
        Ok(mut f) => match f.write_all(b"escaped\n") {
            Ok(()) => ProbeReport::new(a, ProbeOutcome::Succeeded, format!("appended to {path}")),
            Err(e) => from_io(a, &format!("write {path}"), &e),
        },
        Err(e) => from_io(a, &format!("open {path} for writing"), &e),
    }
}

/// A hard link to the secret inside the writable work directory would
/// carry it into a granted tree.
fn hard_link(a: &str, secret: &str, link: &str) -> ProbeReport {
    match std::fs::hard_link(secret, link) {
        Ok(()) => match std::fs::read(link) {
            Ok(b) => ProbeReport::new(
                a,
                ProbeOutcome::Succeeded,
                format!("linked {secret} as {link} and read {} byte(s)", b.len()),
            ),
            Err(e) => ProbeReport::new(
                a,
                ProbeOutcome::Succeeded,
                format!("linked {secret} as {link} (reading it: {e})"),
            ),
        },
        Err(e) => from_io(a, &format!("link {secret} -> {link}"), &e),
    }
}

/// `open_by_handle_at` with a handle the runner took outside the scope:
/// a file handle names a file without a path, past every path rule.
fn open_by_handle(a: &str, handle_type: &str, handle_hex: &str) -> ProbeReport {
    let (Ok(ty), Ok(bytes)) = (handle_type.parse::<i32>(), hex::decode(handle_hex)) else {
        return ProbeReport::new(a, ProbeOutcome::Error, "bad handle arguments");
    };
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }
    let mut buf = Vec::with_capacity(8 + bytes.len());
    buf.extend_from_slice(&(bytes.len() as u32).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&bytes);
    // Any descriptor on the same file system serves as the mount; the
    // root directory is readable under every policy that runs at all.
    let root = match std::fs::File::open("/") {
        Ok(f) => f,
        Err(_) => match std::fs::File::open(".") {
            Ok(f) => f,
            Err(e) => return from_io(a, "open a mount descriptor", &e),
        },
    };
    // SAFETY: the buffer holds a complete struct file_handle of the length
    // it declares; the kernel only reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            root.as_raw_fd(),
            buf.as_mut_ptr(),
            libc::O_RDONLY,
        )
    };
    if fd < 0 {
        return from_errno(a, "open_by_handle_at", errno());
    }
    // SAFETY: the call returned a new descriptor.
    drop(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    ProbeReport::new(
        a,
        ProbeOutcome::Succeeded,
        "open_by_handle_at opened the file",
    )
}

// ---------------------------------------------------------------- exec

/// Runs `f` in a child process and tells how its exec went: the child
/// reports a failed exec's errno through a close-on-exec pipe (nothing
/// arrives if the exec succeeded), then waits `hold` before exiting.
enum Exec {
    Failed(i32),
    Ran(i32),
    Killed(i32),
}

fn in_child(hold: Duration, f: impl FnOnce()) -> std::io::Result<Exec> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded; both descriptors are new and ours.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the probe is single-threaded, so the child may run ordinary
    // code until it execs or exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        drop(r);
        f();
        let e = errno();
        // SAFETY: writing four bytes from a local to the pipe we hold.
        unsafe { libc::write(w.as_raw_fd(), (&raw const e).cast(), 4) };
        std::thread::sleep(hold);
        // SAFETY: leaving the child without running the parent's exit code.
        unsafe { libc::_exit(127) };
    }
    drop(w);
    let mut buf = [0u8; 4];
    let mut pipe = std::fs::File::from(r);
    let got = pipe.read(&mut buf).unwrap_or(0);
    let mut status = 0;
    // SAFETY: reaping the child we forked.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 && errno() == libc::EINTR {}
    if got == 4 {
        return Ok(Exec::Failed(i32::from_ne_bytes(buf)));
    }
    Ok(if libc::WIFSIGNALED(status) {
        Exec::Killed(libc::WTERMSIG(status))
    } else {
        Exec::Ran(libc::WEXITSTATUS(status))
    })
}

fn c_argv(args: &[&[u8]], a: &str) -> Result<Vec<CString>, ProbeReport> {
    args.iter().map(|s| cstring(s, a)).collect()
}

fn ptrs(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn exec_report(a: &str, what: &str, r: std::io::Result<Exec>) -> ProbeReport {
    match r {
        Err(e) => from_io(a, "fork", &e),
        Ok(Exec::Failed(e)) => from_errno(a, what, e),
        Ok(Exec::Ran(code)) => ProbeReport::new(
            a,
            ProbeOutcome::Succeeded,
            format!("{what}: ran and exited {code}"),
        ),
        Ok(Exec::Killed(libc::SIGKILL)) => ProbeReport::new(
            a,
            ProbeOutcome::Refused,
            format!("{what}: killed (SIGKILL) before it ran"),
        ),
        Ok(Exec::Killed(sig)) => ProbeReport::new(
            a,
            ProbeOutcome::Error,
            format!("{what}: died of signal {sig}"),
        ),
    }
}

/// A program `exec` does not grant, run by path: `PROGRAM -c ': > MARK'`.
fn exec_program(a: &str, program: &str, marker: &str) -> ProbeReport {
    let script = format!(": > '{marker}'");
    let argv = match c_argv(&[program.as_bytes(), b"-c", script.as_bytes()], a) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let p = ptrs(&argv);
    let env: [*const libc::c_char; 1] = [std::ptr::null()];
    let r = in_child(Duration::ZERO, || {
        // SAFETY: argv and env are NUL-terminated arrays of C strings
        // alive until exec or exit.
        unsafe { libc::execve(argv[0].as_ptr(), p.as_ptr(), env.as_ptr()) };
    });
    exec_report(a, &format!("execve {program}"), r)
}

/// This very binary as the payload: it is granted exec, so its bytes are
/// readable under any policy the probe runs under.
fn own_bytes(a: &str) -> Result<Vec<u8>, ProbeReport> {
    std::fs::read("/proc/self/exe").map_err(|e| from_io(a, "read /proc/self/exe", &e))
}

fn payload_argv(a: &str, marker: &str) -> Result<Vec<CString>, ProbeReport> {
    c_argv(
        &[
            b"guardctl",
            b"selftest-probe",
            MARK.as_bytes(),
            marker.as_bytes(),
        ],
        a,
    )
}

fn memfd_exec_flag(a: &str) -> ProbeReport {
    const MFD_EXEC: libc::c_uint = 0x10;
    // SAFETY: memfd_create with a static name; a descriptor returned is
    // closed at once.
    let fd = unsafe { libc::memfd_create(c"selftest".as_ptr(), MFD_EXEC | libc::MFD_CLOEXEC) };
    if fd < 0 {
        return from_errno(a, "memfd_create(MFD_EXEC)", errno());
    }
    // SAFETY: a new descriptor we own.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    ProbeReport::new(
        a,
        ProbeOutcome::Succeeded,
        "memfd_create(MFD_EXEC) made an executable memfd",
    )
}

/// A program written into a memfd and run by descriptor (`fexecve`).
fn exec_memfd(a: &str, marker: &str) -> ProbeReport {
    let bytes = match own_bytes(a) {
        Ok(b) => b,
        Err(r) => return r,
    };
    // SAFETY: memfd_create with a static name; checked below.
    let fd = unsafe { libc::memfd_create(c"selftest-payload".as_ptr(), 0) };
    if fd < 0 {
        return from_errno(a, "memfd_create", errno());
    }
    // SAFETY: a new descriptor we own.
    let mut mem = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if let Err(e) = mem.write_all(&bytes) {
        return from_io(a, "write the memfd", &e);
    }
    let argv = match payload_argv(a, marker) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let p = ptrs(&argv);
    let env: [*const libc::c_char; 1] = [std::ptr::null()];
    let r = in_child(HOLD, || {
        // SAFETY: execveat on our memfd with an empty path and
        // AT_EMPTY_PATH; argv and env are NUL-terminated arrays alive until
        // exec or exit.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                mem.as_raw_fd(),
                c"".as_ptr(),
                p.as_ptr(),
                env.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
    });
    exec_report(a, "fexecve(memfd)", r)
}

fn write_copy(a: &str, dest: &str) -> Result<(), ProbeReport> {
    let bytes = own_bytes(a)?;
    std::fs::write(dest, bytes).map_err(|e| from_io(a, &format!("write {dest}"), &e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| from_io(a, &format!("chmod {dest}"), &e))
}

/// A copy of a granted program, written where the agent may write, run
/// with `execveat`.
fn exec_copy(a: &str, dest: &str, marker: &str) -> ProbeReport {
    if let Err(r) = write_copy(a, dest) {
        return r;
    }
    let argv = match payload_argv(a, marker) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let path = match cstring(dest.as_bytes(), a) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let p = ptrs(&argv);
    let env: [*const libc::c_char; 1] = [std::ptr::null()];
    let r = in_child(Duration::ZERO, || {
        // SAFETY: execveat relative to the working directory with a C
        // path; argv and env are NUL-terminated arrays alive until exec or
        // exit.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                libc::AT_FDCWD,
                path.as_ptr(),
                p.as_ptr(),
                env.as_ptr(),
                0,
            )
        };
    });
    exec_report(a, &format!("execveat {dest}"), r)
}

/// The dynamic loader run as a program on a file `exec` does not grant
/// (a copy written to the work directory).
fn exec_loader(a: &str, loader: &str, dest: &str, marker: &str) -> ProbeReport {
    if let Err(r) = write_copy(a, dest) {
        return r;
    }
    let argv = match c_argv(
        &[
            loader.as_bytes(),
            dest.as_bytes(),
            b"selftest-probe",
            MARK.as_bytes(),
            marker.as_bytes(),
        ],
        a,
    ) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let p = ptrs(&argv);
    let env: [*const libc::c_char; 1] = [std::ptr::null()];
    let r = in_child(Duration::ZERO, || {
        // SAFETY: argv and env are NUL-terminated arrays of C strings
        // alive until exec or exit.
        unsafe { libc::execve(argv[0].as_ptr(), p.as_ptr(), env.as_ptr()) };
    });
    exec_report(a, &format!("{loader} {dest}"), r)
}

/// Code mapped executable from a file the agent wrote: how `dlopen` runs a
/// library no exec grant names.
fn mmap_noexec(a: &str, dest: &str) -> ProbeReport {
    if let Err(r) = write_copy(a, dest) {
        return r;
    }
    let f = match std::fs::File::open(dest) {
        Ok(f) => f,
        Err(e) => return from_io(a, &format!("open {dest}"), &e),
    };
    // SAFETY: mapping one page of a file we opened; unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        let e = errno();
        std::thread::sleep(HOLD);
        return from_errno(a, &format!("mmap(PROT_EXEC) {dest}"), e);
    }
    // SAFETY: unmapping the page mapped above.
    unsafe { libc::munmap(p, 4096) };
    ProbeReport::new(
        a,
        ProbeOutcome::Succeeded,
        format!("mapped {dest} executable"),
    )
}

/// The payload of a successful exec route: leaves `marker` for the runner.
fn mark(a: &str, marker: &str) -> ProbeReport {
    match std::fs::write(marker, b"escaped\n") {
        Ok(()) => ProbeReport::new(a, ProbeOutcome::Succeeded, format!("wrote {marker}")),
        Err(e) => from_io(a, &format!("write {marker}"), &e),
    }
}

// ---------------------------------------------------------------- control plane

/// guardd's socket from inside a scope: connect, then ask for the agent
/// list, a kill and a scope of its own. Any answer but a refusal is an escape.
fn control_socket(a: &str, socket: &str) -> ProbeReport {
    let mut s = match std::os::unix::net::UnixStream::connect(OsStr::from_bytes(socket.as_bytes()))
    {
        Ok(s) => s,
        Err(e) => return from_io(a, &format!("connect {socket}"), &e),
    };
    let _ = s.set_read_timeout(Some(NET_TIMEOUT));
    let requests = [
        Request::Hello(Empty {}),
        Request::Ps(Empty {}),
        Request::Control(ControlRequest {
            agent: "selftest".into(),
            action: ControlAction::Kill,
            reason: Some("selftest".into()),
        }),
        // A scope of its own, under a policy of its choosing.
        Request::Open(OpenRequest {
            policy_path: "selftest.toml".into(),
            policy_text: "[policy]\nname = \"selftest-open\"\n".into(),
            argv: vec!["/bin/sh".into()],
            workdir: "/".into(),
            home: "/".into(),
            ..OpenRequest::default()
        }),
    ];
    let (answers, served) = exchange(&mut s, &requests);
    let first = answers.first().cloned().unwrap_or_default();
    let first: String = first.chars().take(200).collect();
    if served {
        ProbeReport::new(
            a,
            ProbeOutcome::Succeeded,
            format!("guardd answered a request: {first}"),
        )
    } else {
        ProbeReport::new(
            a,
            ProbeOutcome::Refused,
            format!("connected, every request refused: {first}"),
        )
    }
}

/// Sends each request on `s` and reads its answer line, until one goes
/// unanswered; returns the answers and whether any of them was served.
fn exchange(s: &mut std::os::unix::net::UnixStream, requests: &[Request]) -> (Vec<String>, bool) {
    let mut answers = Vec::new();
    for (id, r) in (1u64..).zip(requests.iter()) {
        let Ok(line) = crate::api::encode_request(id, r) else {
            break;
        };
        if s.write_all(&line).is_err() {
            break;
        }
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.len() < 65536 {
            match s.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break,
                Ok(1) => line.push(byte[0]),
                _ => break,
            }
        }
        if line.is_empty() {
            break;
        }
        answers.push(String::from_utf8_lossy(&line).into_owned());
    }
    let served = answers
        .iter()
        .any(|l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["ok"] == true));
    (answers, served)
}

/// The agent's request channel, as its environment names it.
fn request_fd() -> Option<i32> {
    std::env::var("GUARD_REQUEST_FD").ok()?.parse().ok()
}

/// Speaks guardd's control protocol on the request channel: it must serve
/// nothing but requests (which grant nothing), whatever op is asked.
fn request_channel(a: &str) -> ProbeReport {
    let Some(fd) = request_fd() else {
        return ProbeReport::new(a, ProbeOutcome::Error, "GUARD_REQUEST_FD is not set");
    };
    // SAFETY: the descriptor is the launcher's gift to this process, which
    // uses it only here and exits right after.
    let mut s = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    let _ = s.set_read_timeout(Some(NET_TIMEOUT));
    let requests = [
        Request::Ps(Empty {}),
        Request::Control(ControlRequest {
            agent: "selftest".into(),
            action: ControlAction::Kill,
            reason: Some("selftest".into()),
        }),
        Request::Grant(crate::api::GrantRequest {
            agent: Some("selftest".into()),
            allow: Some("0.0.0.0/0".into()),
            reason: "selftest".into(),
            ..Default::default()
        }),
    ];
    let (answers, served) = exchange(&mut s, &requests);
    let first: String = answers.concat().chars().take(200).collect();
    if served {
        ProbeReport::new(
            a,
            ProbeOutcome::Succeeded,
            format!("the request channel served an operation: {first}"),
        )
    } else {
        ProbeReport::new(
            a,
            ProbeOutcome::Refused,
            format!("every operation refused on the request channel: {first}"),
        )
    }
}

// ---------------------------------------------------------------- privilege, namespaces

/// Effective and permitted capability sets from /proc/self/status.
fn capabilities() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    Some((field("CapEff:")?, field("CapPrm:")?))
}

/// Becoming root again (`setresuid(0, 0, 0)`) must not bring back a
/// single capability.
fn setuid_root(a: &str) -> ProbeReport {
    // SAFETY: setresuid with constant arguments.
    let r = unsafe { libc::setresuid(0, 0, 0) };
    let call = if r == 0 {
        "setresuid(0, 0, 0) succeeded".to_owned()
    } else {
        format!("setresuid(0, 0, 0): {}", errno_text(errno()))
    };
    match capabilities() {
        Some((0, 0)) => ProbeReport::new(
            a,
            ProbeOutcome::Refused,
            format!("{call}; no capability held (CapEff and CapPrm 0)"),
        ),
        Some((eff, prm)) => ProbeReport::new(
            a,
            ProbeOutcome::Succeeded,
            format!("{call}; capabilities held: CapEff {eff:016x} CapPrm {prm:016x}"),
        ),
        None => ProbeReport::new(
            a,
            ProbeOutcome::Error,
            format!("{call}; /proc/self/status unreadable"),
        ),
    }
}

/// `ptrace(PTRACE_ATTACH)` on pid 1 of the agent's namespace: guard's
/// reaper, a process outside the agent's own confinement.
fn ptrace_attach(a: &str) -> ProbeReport {
    // SAFETY: ptrace with constant arguments; on success the tracee is
    // detached again below.
    let r = unsafe { libc::ptrace(libc::PTRACE_ATTACH, 1, 0, 0) };
    if r != 0 {
        return from_errno(a, "ptrace(PTRACE_ATTACH, 1)", errno());
    }
    // SAFETY: detaching the process attached above.
    unsafe { libc::ptrace(libc::PTRACE_DETACH, 1, 0, 0) };
    ProbeReport::new(a, ProbeOutcome::Succeeded, "attached to pid 1")
}

fn unshare(a: &str, flags: i32) -> ProbeReport {
    // SAFETY: unshare with constant flags; it only changes this process.
    if unsafe { libc::unshare(flags) } != 0 {
        return from_errno(a, &format!("unshare({flags:#x})"), errno());
    }
    ProbeReport::new(
        a,
        ProbeOutcome::Succeeded,
        format!("unshare({flags:#x}) made a new namespace"),
    )
}

/// A new mount namespace, then a mount over the work directory.
fn unshare_mount(a: &str, target: &str) -> ProbeReport {
    // SAFETY: unshare with a constant flag; it only changes this process.
    let unshared = unsafe { libc::unshare(libc::CLONE_NEWNS) } == 0;
    let unshare_err = errno();
    let Ok(t) = CString::new(target) else {
        return ProbeReport::new(a, ProbeOutcome::Error, "NUL in the target");
    };
    // SAFETY: mount with C strings alive for the call.
    let mounted = unsafe {
        libc::mount(
            c"none".as_ptr(),
            t.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    } == 0;
    let mount_err = errno();
    if mounted {
        // SAFETY: unmounting what was just mounted.
        unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
        return ProbeReport::new(a, ProbeOutcome::Succeeded, format!("mounted over {target}"));
    }
    if unshared {
        return ProbeReport::new(
            a,
            ProbeOutcome::Succeeded,
            format!(
                "unshare(CLONE_NEWNS) succeeded (mount: {})",
                errno_text(mount_err)
            ),
        );
    }
    let mut r = from_errno(a, "unshare(CLONE_NEWNS)", unshare_err);
    r.detail = format!("{}; mount: {}", r.detail, errno_text(mount_err));
    r
}

fn setns(a: &str) -> ProbeReport {
    let fd = std::fs::File::open("/proc/self/ns/net")
        .map(OwnedFd::from)
        .ok();
    let raw = fd.as_ref().map_or(0, |f| f.as_raw_fd());
    // SAFETY: setns on a descriptor we hold (or 0, which fails); it only
    // changes this process.
    if unsafe { libc::setns(raw, libc::CLONE_NEWNET) } != 0 {
        return from_errno(a, "setns(CLONE_NEWNET)", errno());
    }
    ProbeReport::new(a, ProbeOutcome::Succeeded, "setns succeeded")
}

// ---------------------------------------------------------------- limits

/// Forks children (which only wait) until the kernel refuses or `limit`
/// of them run; then ends them. Held if a fork failed below the limit.
fn fork_bomb(a: &str, limit: &str) -> ProbeReport {
    let Ok(limit) = limit.parse::<usize>() else {
        return ProbeReport::new(a, ProbeOutcome::Error, "bad limit");
    };
    let mut children = Vec::new();
    let mut refused = None;
    while children.len() < limit {
        // SAFETY: the probe is single-threaded; the child only sleeps and
        // exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            std::thread::sleep(Duration::from_secs(10));
            // SAFETY: leaving the child without the parent's exit code.
            unsafe { libc::_exit(0) };
        }
        if pid < 0 {
            refused = Some(errno());
            break;
        }
        children.push(pid);
    }
    for &pid in &children {
        // SAFETY: signalling and reaping children this probe forked.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
    }
    match refused {
        Some(e) if e == libc::EAGAIN => ProbeReport::new(
            a,
            ProbeOutcome::Refused,
            format!(
                "fork refused after {} children: {}",
                children.len(),
                errno_text(e)
            ),
        ),
        Some(e) => from_errno(a, &format!("fork after {} children", children.len()), e),
        None => ProbeReport::new(
            a,
            ProbeOutcome::Succeeded,
            format!("{} processes forked, the limit was {limit}", children.len()),
        ),
    }
}
