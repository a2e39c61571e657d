#!/usr/bin/env python3
"""Source-routing probe agent for guard's tests (issue 8, section 4).

Each argument is one operation; for each, one JSON line is printed:
{"op": ..., "ok": bool, "errno": "EPERM" | null, "sent": n}. Operations:

  opt:FAM:TYPE:NAME     setsockopt of a routing option on a fresh socket;
                        FAM 4|6, TYPE tcp|udp, NAME rthdr (IPV6_RTHDR, SRH),
                        rthdr2292, hopopts, dstopts, rthdrdstopts,
                        pktopts (IPV6_2292PKTOPTIONS), ipopts (IP_OPTIONS, LSRR)
  lsrr:HOST:PORT@VIA    3 UDP datagrams to HOST:PORT carrying an IPv4 loose
                        source route via VIA (IP_RETOPTS control message);
                        HOST ::ffff:a.b.c.d uses an IPv6 socket
  lsrrc:HOST:PORT@VIA   the same on a connected socket (no address given)
  srh:HOST:PORT@VIA     3 UDP datagrams with an IPV6_RTHDR control message
                        (segment routing header via VIA)
  udp:HOST:PORT         one plain UDP datagram
"""
import errno
import json
import socket
import struct
import sys

IPV6_2292HOPOPTS = 3
IPV6_2292DSTOPTS = 4
IPV6_2292RTHDR = 5
IPV6_2292PKTOPTIONS = 6
IPV6_HOPOPTS = 54
IPV6_RTHDRDSTOPTS = 55
IPV6_RTHDR = 57
IPV6_DSTOPTS = 59
IP_OPTIONS = 4
IP_RETOPTS = 7


def srh(via):
    seg = socket.inet_pton(socket.AF_INET6, via)
    # nexthdr (kernel fills), hdrlen 2 (24 bytes), type 4, segments_left 0,
    # first_segment 0, flags 0, tag 0; one segment.
    return struct.pack("BBBBBBH", 0, 2, 4, 0, 0, 0, 0) + seg


def lsrr(via):
    # Loose source route: type 0x83, length 7, pointer 4, one address; NOP
    # pads to a multiple of four.
    return bytes([0x83, 7, 4]) + socket.inet_aton(via) + bytes([1])


def options_header():
    # A hop-by-hop / destination options header with PadN only.
    return bytes([0, 0, 1, 4, 0, 0, 0, 0])


def opt(fam, typ, name):
    family = socket.AF_INET6 if fam == "6" else socket.AF_INET
    kind = socket.SOCK_STREAM if typ == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family, kind)
    try:
        value = {
            "rthdr": (socket.IPPROTO_IPV6, IPV6_RTHDR, srh("::1")),
            "rthdr2292": (socket.IPPROTO_IPV6, IPV6_2292RTHDR, srh("::1")),
            "hopopts": (socket.IPPROTO_IPV6, IPV6_HOPOPTS, options_header()),
            "dstopts": (socket.IPPROTO_IPV6, IPV6_DSTOPTS, options_header()),
            "rthdrdstopts": (socket.IPPROTO_IPV6, IPV6_RTHDRDSTOPTS, options_header()),
            "hopopts2292": (socket.IPPROTO_IPV6, IPV6_2292HOPOPTS, options_header()),
            "dstopts2292": (socket.IPPROTO_IPV6, IPV6_2292DSTOPTS, options_header()),
            "pktopts": (
                socket.IPPROTO_IPV6,
                IPV6_2292PKTOPTIONS,
                struct.pack("=QiI", 16 + 24, socket.IPPROTO_IPV6, IPV6_RTHDR) + srh("::1"),
            ),
            "ipopts": (socket.IPPROTO_IP, IP_OPTIONS, lsrr("127.0.0.2")),
        }[name]
        s.setsockopt(*value)
    finally:
        s.close()
    return 0


def sends(host, port, cmsg, connected):
    """Three sends on one socket; the first error is raised after all three
    were tried (a refusal must hold for every packet, and be journaled once)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    sent = 0
    first = None
    try:
        if connected:
            s.connect((host, port))
        for _ in range(3):
            try:
                if connected:
                    s.sendmsg([b"routed"], [cmsg])
                else:
                    s.sendmsg([b"routed"], [cmsg], 0, (host, port))
                sent += 1
            except OSError as e:
                first = first or e
    finally:
        s.close()
    if first is not None:
        raise first
    return sent


def run(op):
    kind, _, rest = op.partition(":")
    if kind == "opt":
        return opt(*rest.split(":"))
    if kind in ("lsrr", "lsrrc", "srh"):
        dest, _, via = rest.partition("@")
        host, port = dest.rsplit(":", 1)
        host = host.strip("[]")
        if kind == "srh":
            cmsg = (socket.IPPROTO_IPV6, IPV6_RTHDR, srh(via))
        else:
            cmsg = (socket.IPPROTO_IP, IP_RETOPTS, lsrr(via))
        return sends(host, int(port), cmsg, kind == "lsrrc")
    if kind == "udp":
        host, port = rest.rsplit(":", 1)
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.sendto(b"plain", (host, int(port)))
        s.close()
        return 1
    raise ValueError(op)


for op in sys.argv[1:]:
    try:
        sent = run(op)
        print(json.dumps({"op": op, "ok": True, "errno": None, "sent": sent}), flush=True)
    except OSError as e:
        name = errno.errorcode.get(e.errno, str(e))
        print(json.dumps({"op": op, "ok": False, "errno": name}), flush=True)
