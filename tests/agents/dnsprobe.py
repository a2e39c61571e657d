#!/usr/bin/env python3
"""DNS probe agent for guard's tests.

Each argument is one operation; for each, one JSON line is printed with
"op", "ok", "errno" (a name, or the resolver's error text) and what the
operation found. Operations:

  resolve:NAME            getaddrinfo (glibc: the system resolv.conf); "addrs"
  resolve4:NAME           the same, IPv4 only
  tcp:HOST:PORT           TCP connect by name or address (getaddrinfo, then
                          connect to the first address)
  hold:HOST:PORT:SECS:NEXT  connect, sleep SECS, then run operation NEXT
                          (with ';' for ':'), then send on the first socket
                          ("sent" tells whether the held connection still works)
  loop:N:NAME:PORT        N times: getaddrinfo then connect; "failures"
  raw:ADDR:PORT:HEX       send the bytes as one UDP datagram, wait 1 s for a
                          reply; "reply" is its hex or null
  udpq:ADDR:PORT:NAME     a well-formed A query for NAME over UDP; "rcode"
                          and "source" (the reply's source address) or null
  wait:PATH               wait (up to 30 s) until PATH exists
  tfoq:ADDR:PORT:NAME     the same over TCP Fast Open (sendto with
                          MSG_FASTOPEN, no connect); "rcode"
"""
import errno
import json
import os
import socket
import struct
import sys
import time


def split(spec):
    host, port = spec.rsplit(":", 1)
    return host.strip("[]"), int(port)


def connect(host, port, timeout=3):
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    fam, typ, proto, _, addr = infos[0]
    s = socket.socket(fam, typ, proto)
    s.settimeout(timeout)
    s.connect(addr)
    return s, addr[0]


def query(name, qid=0x1234):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack(">HH", 1, 1)


def run(op):
    kind, _, rest = op.partition(":")
    out = {}
    if kind in ("resolve", "resolve4"):
        fam = socket.AF_INET if kind == "resolve4" else 0
        infos = socket.getaddrinfo(rest, 80, fam, socket.SOCK_STREAM)
        out["addrs"] = sorted({i[4][0] for i in infos})
    elif kind == "tcp":
        host, port = split(rest)
        s, addr = connect(host, port)
        out["addr"] = addr
        s.close()
    elif kind == "hold":
        host, port, secs, nxt = rest.split(":", 3)
        s, addr = connect(host, int(port))
        out["addr"] = addr
        time.sleep(float(secs))
        out["next"] = attempt(nxt.replace(";", ":"))
        try:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            out["sent"] = True
        except OSError as e:
            out["sent"] = False
            out["send_errno"] = errno.errorcode.get(e.errno, str(e.errno))
        s.close()
    elif kind == "loop":
        n, name, port = rest.split(":")
        failures = 0
        first = None
        for _ in range(int(n)):
            try:
                s, _ = connect(name, int(port), timeout=2)
                s.close()
            except OSError as e:
                failures += 1
                first = first or repr(e)
        out["failures"] = failures
        out["first_failure"] = first
    elif kind == "raw":
        addr, port, data = rest.rsplit(":", 2)
        s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1)
        s.sendto(bytes.fromhex(data), (addr.strip("[]"), int(port)))
        try:
            out["reply"] = s.recv(65535).hex()
        except socket.timeout:
            out["reply"] = None
    elif kind == "udpq":
        addr, port, name = rest.rsplit(":", 2)
        addr = addr.strip("[]")
        s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(query(name), (addr, int(port)))
        data, src = s.recvfrom(65535)
        out["rcode"] = data[3] & 0xF
        out["source"] = src[0]
        out["source_port"] = src[1]
    elif kind == "wait":
        deadline = time.time() + 30
        while not os.path.exists(rest) and time.time() < deadline:
            time.sleep(0.05)
        out["found"] = os.path.exists(rest)
    elif kind == "tfoq":
        addr, port, name = rest.rsplit(":", 2)
        addr = addr.strip("[]")
        s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
        q = query(name)
        # Blocking: a non-blocking fast open without a cookie says
        # EINPROGRESS instead of waiting for the handshake.
        s.sendto(struct.pack(">H", len(q)) + q, socket.MSG_FASTOPEN, (addr, int(port)))
        s.settimeout(3)
        data = b""
        while len(data) < 2 or len(data) < 2 + struct.unpack(">H", data[:2])[0]:
            chunk = s.recv(65535)
            if not chunk:
                break
            data += chunk
        out["rcode"] = data[5] & 0xF
    else:
        raise SystemExit(f"unknown operation {op!r}")
    return out


def attempt(op):
    rec = {"op": op, "ok": True, "errno": None}
    try:
        rec.update(run(op))
    except socket.gaierror as e:
        rec["ok"] = False
        rec["errno"] = f"gai:{e.args[1] if len(e.args) > 1 else e}"
    except OSError as e:
        rec["ok"] = False
        rec["errno"] = errno.errorcode.get(e.errno, str(e))
    return rec


def main():
    for op in sys.argv[1:]:
        print(json.dumps(attempt(op)), flush=True)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
