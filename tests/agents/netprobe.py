#!/usr/bin/env python3
"""Network probe agent for guard's tests.

Each argument is one operation; for each, one JSON line is printed:
{"op": ..., "ok": bool, "errno": "EPERM" | null}. Operations:

  tcp:HOST:PORT        TCP connect (IPv4 or IPv6 by the address)
  tcp6:HOST:PORT       TCP connect from an AF_INET6 socket (for ::ffff:a.b.c.d)
  tfo:HOST:PORT        TCP Fast Open: sendto(MSG_FASTOPEN) without connect
  udp:HOST:PORT        UDP sendto (unconnected)
  udpc:HOST:PORT       UDP connect
  raw                  socket(AF_INET, SOCK_RAW, IPPROTO_ICMP)
  ping                 socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)
  packet               socket(AF_PACKET, SOCK_RAW, 0)
  unix:PATH            connect to a pathname Unix socket (@name: abstract)
  loop:N:HOST:PORT     N TCP connects in a tight loop; reports how many failed
"""
import errno
import json
import socket
import sys


def split(spec):
    host, port = spec.rsplit(":", 1)
    return host.strip("[]"), int(port)


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def run(op):
    kind, _, rest = op.partition(":")
    if kind == "tcp":
        host, port = split(rest)
        s = socket.socket(family_of(host), socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect((host, port))
    elif kind == "tcp6":
        host, port = split(rest)
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect((host, port))
    elif kind == "tfo":
        host, port = split(rest)
        s = socket.socket(family_of(host), socket.SOCK_STREAM)
        s.sendto(b"hello", socket.MSG_FASTOPEN, (host, port))
    elif kind == "udp":
        host, port = split(rest)
        s = socket.socket(family_of(host), socket.SOCK_DGRAM)
        s.sendto(b"x", (host, port))
    elif kind == "udpc":
        host, port = split(rest)
        s = socket.socket(family_of(host), socket.SOCK_DGRAM)
        s.connect((host, port))
    elif kind == "raw":
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    elif kind == "ping":
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    elif kind == "packet":
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    elif kind == "unix":
        path = "\0" + rest[1:] if rest.startswith("@") else rest
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
    elif kind == "loop":
        n, _, target = rest.partition(":")
        host, port = split(target)
        failed = 0
        codes = {}
        for _ in range(int(n)):
            s = socket.socket(family_of(host), socket.SOCK_STREAM)
            try:
                s.connect((host, port))
            except OSError as e:
                failed += 1
                name = errno.errorcode.get(e.errno, str(e.errno))
                codes[name] = codes.get(name, 0) + 1
            finally:
                s.close()
        return {"op": op, "ok": True, "failed": failed, "codes": codes}
    else:
        raise SystemExit(f"unknown op {op}")
    return {"op": op, "ok": True, "errno": None}


for op in sys.argv[1:]:
    try:
        result = run(op)
    except OSError as e:
        result = {"op": op, "ok": False, "errno": errno.errorcode.get(e.errno, str(e.errno))}
    print(json.dumps(result), flush=True)
