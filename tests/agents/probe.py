#!/usr/bin/env python3
"""File, program and system call probe for guard's tests.

Each argument is one operation; one JSON line is printed per operation:
{"op": ..., "ok": bool, "errno": "EACCES" | null, "value": ...}.

  read:PATH            open for reading and read a line
  write:PATH           create/truncate and write
  exec:PATH            run PATH (no arguments), report its exit status
  symlink:TARGET:LINK  create a symlink LINK -> TARGET
  hardlink:TARGET:LINK create a hard link
  copy:SRC:DST         copy a file (keeping the mode)
  syscall:NAME         unshare_user, mount, ptrace:PID, io_uring, bpf, kill:PID
  status               NoNewPrivs and CapEff from /proc/self/status
  fds                  open descriptors (from /proc/self/fd)
  forkbomb:N           fork until refused (children sleep), at most N
"""
import ctypes
import errno
import json
import os
import shutil
import subprocess
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def raw(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def run(op):
    kind, _, rest = op.partition(":")
    if kind == "read":
        with open(rest) as f:
            return f.readline()[:40]
    if kind == "write":
        with open(rest, "w") as f:
            f.write("x")
        return True
    if kind == "exec":
        return subprocess.run([rest], capture_output=True).returncode
    if kind == "symlink":
        target, link = rest.split(":")
        os.symlink(target, link)
        return True
    if kind == "hardlink":
        target, link = rest.split(":")
        os.link(target, link)
        return True
    if kind == "copy":
        src, dst = rest.split(":")
        shutil.copy2(src, dst)
        return True
    if kind == "syscall":
        name, _, arg = rest.partition(":")
        if name == "unshare_user":
            return raw(272, 0x10000000)
        if name == "unshare_net":
            return raw(272, 0x40000000)
        if name == "mount":
            return raw(165, 0, 0, 0, 0, 0)
        if name == "ptrace":
            return raw(101, 16, int(arg), 0, 0)  # PTRACE_ATTACH
        if name == "io_uring":
            params = ctypes.create_string_buffer(120)
            return raw(425, 8, ctypes.addressof(params))
        if name == "bpf":
            attr = ctypes.create_string_buffer(128)
            return raw(321, 0, ctypes.addressof(attr), 128)  # BPF_MAP_CREATE
        if name == "kill":
            return raw(62, int(arg), 0)
        raise SystemExit(f"unknown syscall {name}")
    if kind == "status":
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("NoNewPrivs", "CapEff", "CapPrm", "CapBnd", "Seccomp"):
                    out[k] = v.strip()
        return out
    if kind == "fds":
        return sorted(int(x) for x in os.listdir("/proc/self/fd"))
    if kind == "forkbomb":
        made = 0
        for _ in range(int(rest)):
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            made += 1
        return made
    raise SystemExit(f"unknown op {op}")


for op in sys.argv[1:]:
    try:
        result = {"op": op, "ok": True, "errno": None, "value": run(op)}
    except OSError as e:
        result = {"op": op, "ok": False, "errno": errno.errorcode.get(e.errno, str(e.errno)), "value": None}
    print(json.dumps(result), flush=True)
