#!/usr/bin/env python3
"""An agent that asks a person for things through guard's request channel.

The channel is the descriptor named by GUARD_REQUEST_FD (3): one JSON line
per request, one JSON line per answer. The whole client an agent needs:

    import json, os, socket
    s = socket.socket(fileno=int(os.environ["GUARD_REQUEST_FD"]))
    f = s.makefile("rwb")
    f.write(json.dumps({"v": 1, "id": 1, "op": "request",
                        "want": "api.example.com:443/tcp", "why": "fetch the docs"}).encode() + b"\\n")
    f.flush(); print(f.readline())

Operations, run in order, each printing one JSON line
{"op": ..., "ok": bool, "errno": ..., "reply": ...}:

  env                  what GUARD_REQUEST_FD says and whether it is a socket
  ask WANT WHY         one request
  raw LINE             LINE sent as it is (plus a newline)
  long N               a line of N bytes ("x" * N)
  flood N WANT         N requests back to back, then N answers read
  tcp HOST PORT        a TCP connect (to show what the request did not grant)
  read PATH            open PATH for reading
  fd N                 whether descriptor N is open
  pidfd PID N          take descriptor N of process PID (pidfd_open + pidfd_getfd)
"""
import errno
import json
import os
import socket
import stat
import sys

_chan = None
_ids = iter(range(1, 1 << 30))


def chan():
    global _chan
    if _chan is None:
        s = socket.socket(fileno=int(os.environ["GUARD_REQUEST_FD"]))
        s.settimeout(15)
        _chan = (s, s.makefile("rwb"))
    return _chan


def exchange(line):
    _, f = chan()
    f.write(line + b"\n")
    f.flush()
    got = f.readline()
    if not got:
        return "closed"
    try:
        return json.loads(got)
    except ValueError:
        return got.decode(errors="replace")


def request(want, why):
    return json.dumps(
        {"v": 1, "id": next(_ids), "op": "request", "want": want, "why": why}
    ).encode()


def name(e):
    return errno.errorcode.get(e.errno, str(e.errno))


def main(args):
    while args:
        op = args.pop(0)
        out = {"op": op, "ok": True, "errno": None, "reply": None}
        try:
            if op == "env":
                v = os.environ.get("GUARD_REQUEST_FD")
                out["reply"] = {"env": v}
                if v is not None:
                    out["reply"]["socket"] = stat.S_ISSOCK(os.fstat(int(v)).st_mode)
            elif op == "ask":
                want, why = args.pop(0), args.pop(0)
                out["reply"] = exchange(request(want, why))
            elif op == "raw":
                out["reply"] = exchange(args.pop(0).encode())
            elif op == "long":
                out["reply"] = exchange(b"x" * int(args.pop(0)))
            elif op == "flood":
                n, want = int(args.pop(0)), args.pop(0)
                _, f = chan()
                for i in range(n):
                    f.write(request(want, "flood %d" % i) + b"\n")
                f.flush()
                replies = []
                for _ in range(n):
                    line = f.readline()
                    replies.append(json.loads(line) if line else "closed")
                out["reply"] = replies
            elif op == "tcp":
                host, port = args.pop(0), int(args.pop(0))
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(3)
                try:
                    s.connect((host, port))
                finally:
                    s.close()
            elif op == "read":
                with open(args.pop(0), "rb") as fh:
                    fh.read(1)
            elif op == "pidfd":
                import ctypes
                pid, n = int(args.pop(0)), int(args.pop(0))
                pfd = os.pidfd_open(pid)
                libc = ctypes.CDLL(None, use_errno=True)
                got = libc.syscall(438, pfd, n, 0)  # pidfd_getfd
                if got < 0:
                    e = ctypes.get_errno()
                    raise OSError(e, os.strerror(e))
                out["reply"] = {"fd": got}
            elif op == "fd":
                n = int(args.pop(0))
                try:
                    os.fstat(n)
                    out["reply"] = True
                except OSError:
                    out["reply"] = False
            else:
                out = {"op": op, "ok": False, "errno": "unknown op", "reply": None}
        except OSError as e:
            out["ok"] = False
            out["errno"] = name(e) if e.errno else str(e)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
