#!/usr/bin/env python3
"""Inbound probe agent for guard's tests: every way to receive connections.

Each argument is one operation; for each, one JSON line is printed:
{"op": ..., "ok": bool, "errno": "EPERM" | null, "port": N | null}.
Operations:

  tcp:HOST:PORT        bind() then listen() a TCP socket (family by HOST:
                       0.0.0.0, 127.0.0.1, ::, ::1, ::ffff:127.0.0.1)
  tcp6only:HOST:PORT   as tcp, on an IPv6 socket with IPV6_V6ONLY set
  reuse:HOST:PORT      as tcp, with SO_REUSEPORT set first
  bind:HOST:PORT       bind() a TCP socket without listening
  autolisten:4|6       listen() on a socket that was never bound (the kernel
                       picks an ephemeral port)
  udp:HOST:PORT        bind() a UDP socket (port 0: the kernel picks one)
  udpclient:HOST:PORT  DNS-like: sendto() a request, wait for the reply
  serve:HOST:PORT      bind + listen, print {"ready": port}, accept one
                       connection (10 s), echo what it sends, report
  autoserve:4|6:SECS   listen() without bind, print {"ready": port}, wait
                       SECS for a connection, echo as serve does, report
"""
import errno
import json
import select
import socket
import sys


def split(spec):
    host, port = spec.rsplit(":", 1)
    return host.strip("[]"), int(port)


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def emit(obj):
    print(json.dumps(obj), flush=True)


def bound(kind, spec, sock_type=socket.SOCK_STREAM, opts=()):
    host, port = split(spec)
    s = socket.socket(family_of(host), sock_type)
    for level, name, value in opts:
        s.setsockopt(level, name, value)
    s.bind((host, port))
    return s


def run(op):
    kind, _, rest = op.partition(":")
    s = None
    if kind == "tcp":
        s = bound(kind, rest)
        s.listen(4)
    elif kind == "tcp6only":
        s = bound(kind, rest, opts=[(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)])
        s.listen(4)
    elif kind == "reuse":
        s = bound(kind, rest, opts=[(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)])
        s.listen(4)
    elif kind == "bind":
        s = bound(kind, rest)
    elif kind == "autolisten":
        fam = socket.AF_INET6 if rest == "6" else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.listen(4)
    elif kind == "udp":
        s = bound(kind, rest, sock_type=socket.SOCK_DGRAM)
    elif kind == "udpclient":
        host, port = split(rest)
        s = socket.socket(family_of(host), socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(b"question", (host, port))
        data, _ = s.recvfrom(512)
        return s.getsockname()[1], {"reply": data.decode()}
    elif kind == "serve":
        s = bound(kind, rest)
        s.listen(4)
        emit({"ready": s.getsockname()[1]})
        r, _, _ = select.select([s], [], [], 10)
        if not r:
            return s.getsockname()[1], {"accepted": False}
        c, _ = s.accept()
        c.settimeout(5)
        data = c.recv(512)
        c.sendall(data)
        c.close()
        return s.getsockname()[1], {"accepted": True, "echoed": data.decode()}
    elif kind == "autoserve":
        fam, _, secs = rest.partition(":")
        s = socket.socket(socket.AF_INET6 if fam == "6" else socket.AF_INET, socket.SOCK_STREAM)
        s.listen(4)
        emit({"ready": s.getsockname()[1]})
        r, _, _ = select.select([s], [], [], float(secs))
        if not r:
            return s.getsockname()[1], {"accepted": False}
        c, _ = s.accept()
        c.settimeout(5)
        data = c.recv(512)
        c.sendall(data)
        c.close()
        return s.getsockname()[1], {"accepted": True, "echoed": data.decode()}
    else:
        raise SystemExit(f"unknown operation {op}")
    return s.getsockname()[1], {}


def main():
    for op in sys.argv[1:]:
        try:
            port, extra = run(op)
            emit({"op": op, "ok": True, "errno": None, "port": port, **extra})
        except OSError as e:
            name = errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__
            emit({"op": op, "ok": False, "errno": name, "port": None})


if __name__ == "__main__":
    main()
