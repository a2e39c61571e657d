"""Connects where the test says, one line at a time, and says what happened.

Reads lines `tcp HOST PORT` or `udp HOST PORT` on stdin; for each, tries a
TCP connect (or a UDP connect and send) and prints one JSON line:
{"dest": ..., "ok": true} or {"dest": ..., "ok": false, "errno": "EPERM"}.
`ask WANT WHY...` posts a request on the agent's request channel
(GUARD_REQUEST_FD) and prints guardd's answer as {"reply": ...}.
Ends at end of input. Used by tests/grants.rs: the same process is asked
before, during and after a grant, so nothing but the kernel's maps change.
"""
import errno
import json
import os
import socket
import sys

chan = None

for line in sys.stdin:
    parts = line.split()
    if parts and parts[0] == "ask":
        if chan is None:
            s = socket.socket(fileno=int(os.environ["GUARD_REQUEST_FD"]))
            chan = s.makefile("rwb")
        req = {"v": 1, "id": 1, "op": "request", "want": parts[1], "why": " ".join(parts[2:])}
        chan.write(json.dumps(req).encode() + b"\n")
        chan.flush()
        print(json.dumps({"reply": json.loads(chan.readline())}), flush=True)
        continue
    if len(parts) != 3:
        print(json.dumps({"dest": line.strip(), "ok": False, "errno": "BADLINE"}), flush=True)
        continue
    proto, host, port = parts[0], parts[1], int(parts[2])
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    res = {"dest": f"{proto} {host} {port}"}
    try:
        s = socket.socket(fam, kind)
        s.settimeout(2)
        s.connect((host, port))
        if proto == "udp":
            s.send(b"x")
        s.close()
        res["ok"] = True
    except OSError as e:
        res["ok"] = False
        res["errno"] = errno.errorcode.get(e.errno, str(e.errno))
    print(json.dumps(res), flush=True)
