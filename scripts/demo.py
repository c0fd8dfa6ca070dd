"""`make demo`: the Quick Start, automated.

Starts two agents (A and B) on loopback with their own data under a temporary
directory and mDNS restricted to 127.0.0.1 (nothing is multicast out of the machine's
real interfaces), deploys ``sample/double/double.wasm`` to A with ``nebctl``, invokes it
on B over HTTP, prints the answer, and stops what it started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise SystemExit(f"demo: {url} did not answer within {deadline_s} s")


def post(url: str, body: dict[str, object]) -> tuple[int, str, str]:
    req = urllib.request.Request(url, json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode(), r.headers.get("X-Nebula-Peer", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), ""


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="nebula-demo-"))
    env = {**os.environ, "NEBULA_EDGE_MDNS_INTERFACES": "127.0.0.1"}
    ports = [free_port(), free_port()]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, port in enumerate(ports):
            log = open(tmp / f"agent-{i}.log", "wb")  # noqa: SIM115 - lives as long as the agent
            procs.append(subprocess.Popen(
                [str(BIN / "edge"), "-port", str(port), "-p2p-port", str(free_port()),
                 "-bind", "127.0.0.1", "-data", str(tmp / "data"), "-fast"],
                stdout=log, stderr=subprocess.STDOUT, env=env))
        a, b = (f"http://127.0.0.1:{p}" for p in ports)
        for url in (a, b):
            wait_http(url + "/healthz", 30)
        print(f"demo: agents A={a} and B={b} are up (logs in {tmp})")
        wasm = ROOT / "sample" / "double" / "double.wasm"
        cmd = [str(BIN / "nebctl"), "-wasm", str(wasm), "-name", "double", "-addr", a]
        print("$ nebctl -wasm sample/double/double.wasm -name double -addr", a)
        subprocess.run(cmd, check=True)
        print(f"$ curl -X POST -d '{{\"name\":\"double\",\"arg\":21}}' {b}/exec")
        end = time.monotonic() + 15
        while True:
            status, body, peer = post(b + "/exec", {"name": "double", "arg": 21})
            if status == 200 or time.monotonic() > end:
                break
            time.sleep(0.1)
        print(body)
        if status != 200:
            print(f"demo: B answered {status}", file=sys.stderr)
            return 1
        print(f"demo: answered by B (run on peer {peer})")
        return 0
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


if __name__ == "__main__":
    sys.exit(main())
