"""A modified launcher, for tests/launchcheck.rs: it opens a scope with
guardd like guardctl does, moves a child into it, and execs a program
without some of the layers guardctl applies before exec (issue 13).

    rogue_launcher.py SOCKET POLICY VARIANT KEEP_CAPS -- PROGRAM ARGS...

VARIANT says what the child applies before exec:
  none      nothing: no seccomp filter, no no_new_privs, every capability
  nnp       no_new_privs only
  extracap  no_new_privs, a seccomp filter, and the bounding set cut to
            KEEP_CAPS (comma-separated numbers) plus CAP_NET_RAW
  nonnp     a seccomp filter and the bounding set cut to KEEP_CAPS, but no
            no_new_privs
  permcap   as extracap, then the effective user switched to nobody while
            the real and saved ones stay root: the program starts with an
            empty effective set and KEEP_CAPS plus CAP_NET_RAW permitted,
            free to make them effective with capset() or setuid(0)
The seccomp filter allows every call: it is the mode guardd checks, not
what a filter allows. As root, the program's effective capabilities after
exec are the bounding set, which the child prints before exec. permcap
uses the kernel's rule for a real-only root (`handle_privileged_root`):
the permitted set after exec is still the bounding set (no_new_privs
keeps it, the old permitted set covers it), but with a non-root effective
user nothing is made effective. /bin/sh (dash) would raise them itself:
it resets its effective uid to the real one, 0, which makes the permitted
set effective.

The parent keeps the connection (the scope's lifetime, as guardctl does),
waits for the child and prints how it ended; its exit closes the scope.
Output: JSON lines {"agent": ID}, {"capbnd": N} (from the child),
{"exit": CODE} or {"signal": N}.
"""

import ctypes
import json
import os
import socket
import sys

PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
NOBODY = 65534
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
BPF_RET_K = 0x06
CAP_NET_RAW = 13

libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def emit(**kv):
    print(json.dumps(kv), flush=True)


def prctl(op, a=0, b=0):
    if libc.prctl(op, a, b, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl({op}): {os.strerror(e)}")


def no_new_privs():
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def seccomp_allow_all():
    insns = (SockFilter * 1)(SockFilter(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    prog = SockFprog(1, insns)
    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog))


def cut_bounding_set(keep):
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last + 1):
        if cap not in keep:
            prctl(PR_CAPBSET_DROP, cap)


def capbnd():
    for line in open("/proc/self/status"):
        if line.startswith("CapBnd:"):
            return int(line.split()[1], 16)
    raise RuntimeError("no CapBnd in /proc/self/status")


def open_scope(sock, policy_path, argv):
    """The `open` request and its reply line, with the descriptors
    (SCM_RIGHTS) that came with it: the cgroup directory, then the v1
    cgroup.procs files."""
    req = {
        "v": 1,
        "id": 1,
        "op": "open",
        "policy_path": policy_path,
        "policy_text": open(policy_path).read(),
        "argv": argv,
        "workdir": os.getcwd(),
        "home": "/root",
    }
    sock.sendall(json.dumps(req).encode() + b"\n")
    buf, fds = b"", []
    while b"\n" not in buf:
        data, got, _, _ = socket.recv_fds(sock, 65536, 16)
        if not data:
            raise RuntimeError("guardd closed the connection")
        buf += data
        fds += got
    return json.loads(buf.split(b"\n", 1)[0]), fds


def child(variant, keep, cgroup_fd, v1_fds, argv):
    me = str(os.getpid()).encode()
    procs = os.open("cgroup.procs", os.O_WRONLY, dir_fd=cgroup_fd)
    os.write(procs, me)
    os.close(procs)
    for fd in v1_fds:
        os.write(fd, me)
    for fd in [cgroup_fd, *v1_fds]:
        os.close(fd)
    if variant == "nnp":
        no_new_privs()
    elif variant == "extracap":
        cut_bounding_set(keep | {CAP_NET_RAW})
        no_new_privs()
        seccomp_allow_all()
    elif variant == "permcap":
        cut_bounding_set(keep | {CAP_NET_RAW})
        no_new_privs()
        seccomp_allow_all()
        # Leaving effective uid 0 clears the effective set; the permitted
        # set stays while the real and saved uids are 0.
        os.setresuid(-1, NOBODY, -1)
    elif variant == "nonnp":
        # Without no_new_privs a filter needs CAP_SYS_ADMIN: installed
        # before the bounding set is cut.
        seccomp_allow_all()
        cut_bounding_set(keep)
    elif variant != "none":
        raise ValueError(f"unknown variant {variant}")
    emit(capbnd=capbnd())
    os.execv(argv[0], argv)


def main():
    sock_path, policy_path, variant, keep = sys.argv[1:5]
    if sys.argv[5] != "--":
        raise ValueError("usage: SOCKET POLICY VARIANT KEEP_CAPS -- PROGRAM ARGS...")
    argv = sys.argv[6:]
    keep = {int(c) for c in keep.split(",") if c}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sock_path)
    reply, fds = open_scope(sock, policy_path, argv)
    if not reply.get("ok"):
        emit(error=reply.get("error"))
        sys.exit(2)
    # The cgroup directory, the v1 descriptors, then the agent's request
    # channel (which a rogue launcher simply does not pass on).
    channel = 1 if reply.get("request_channel") else 0
    if len(fds) != 1 + reply["v1_procs"] + channel:
        emit(error=f"{len(fds)} descriptors for {reply['v1_procs']} v1 hierarchies")
        sys.exit(2)
    emit(agent=reply["agent"]["id"])
    v1_fds = fds[1 : 1 + reply["v1_procs"]]
    pid = os.fork()
    if pid == 0:
        try:
            child(variant, keep, fds[0], v1_fds, argv)
        except BaseException as e:
            emit(error=f"child: {e}")
        os._exit(3)
    for fd in fds:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        emit(signal=os.WTERMSIG(status))
    else:
        emit(exit=os.WEXITSTATUS(status))


main()
