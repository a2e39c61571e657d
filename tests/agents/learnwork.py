#!/usr/bin/env python3
"""Workload of the learn-mode tests (tests/learn.rs).

learnwork.py PORT [OP...]: reads data.csv in the working directory, asks the
HTTP server on 127.0.0.1:PORT for a score, writes results.json. Each OP adds
one action, reported as one JSON line {"op", "ok", "errno"}:

  read:PATH     open PATH and read it
  exec:PATH     run PATH (no arguments)
  connect:PORT  open a TCP connection to 127.0.0.1:PORT
"""
import errno
import json
import socket
import subprocess
import sys
import urllib.request

port = int(sys.argv[1])
rows = open("data.csv").read().splitlines()
total = sum(int(r.split(",")[1]) for r in rows[1:])
score = urllib.request.urlopen(f"http://127.0.0.1:{port}/score", timeout=10).read().decode()
with open("results.json", "w") as f:
    json.dump({"total": total, "score": score}, f)

for op in sys.argv[2:]:
    kind, _, arg = op.partition(":")
    try:
        if kind == "read":
            open(arg).read()
        elif kind == "exec":
            subprocess.run([arg], check=False, stdout=subprocess.DEVNULL)
        elif kind == "connect":
            socket.create_connection(("127.0.0.1", int(arg)), timeout=5).close()
        else:
            raise SystemExit(f"unknown op {op}")
        res = {"op": op, "ok": True, "errno": None}
    except OSError as e:
        res = {"op": op, "ok": False, "errno": errno.errorcode.get(e.errno)}
    print(json.dumps(res), flush=True)
