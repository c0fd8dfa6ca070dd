"""Benchmark a late joiner's catch-up: how long until a new agent holds N small modules.

Starts agent A (default timers, ``-mdns=false``, ``-bind 127.0.0.1``, a temp data dir),
deploys ``--modules`` distinct small modules to it (double.wasm plus a custom section
naming the module, ``PUT /modules/<name>``), then starts agent B with ``-peer`` A and
measures the time from B's process start until B's ``GET /modules`` lists all of them,
and how long B took to answer ``/healthz`` (the floor: a process start). Both agents are
stopped by PID at the end, also on error or Ctrl-C.

Usage: ``.venv/bin/python bench/catchup.py [--modules 500] [--json]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from benchlib import DOUBLE_WASM, find_tool, free_port, stop_process  # bench/ is on sys.path

HOST = "127.0.0.1"


def call(method: str, url: str, body: bytes | None = None, ctype: str = "application/json",
         timeout: float = 10.0) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        with e:
            return e.code, None
    except (OSError, ValueError):
        return 0, None


def start(edge: str, data: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([edge, "-port", str(port), "-bind", HOST, "-data", str(data),
                             "-mdns=false", "-log-level", "warning", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait(cond: Any, limit: float, step: float = 0.02) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    return None


def module_bytes(i: int) -> bytes:
    name = b"nebula-bench-catchup"
    payload = str(i).encode()
    content = bytes([len(name)]) + name + payload
    return DOUBLE_WASM.read_bytes() + b"\x00" + bytes([len(content)]) + content


def count(port: int) -> int:
    status, body = call("GET", f"http://{HOST}:{port}/modules")
    return len(body.get("modules", [])) if status == 200 and isinstance(body, dict) else -1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--modules", type=int, default=500)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    edge = find_tool("edge")
    procs: list[subprocess.Popen[bytes]] = []
    out: dict[str, Any] = {"modules": args.modules}
    try:
        with tempfile.TemporaryDirectory(prefix="nebula-catchup-") as tmp:
            pa, pb = free_port(), free_port()
            procs.append(start(edge, Path(tmp), pa))
            if wait(lambda: call("GET", f"http://{HOST}:{pa}/healthz")[0] == 200, 30) is None:
                raise SystemExit("bench: agent A did not start")
            t0 = time.monotonic()
            for i in range(args.modules):
                status, _ = call("PUT", f"http://{HOST}:{pa}/modules/catchup{i:04d}",
                                 module_bytes(i), "application/wasm")
                if status != 201:
                    raise SystemExit(f"bench: deploy {i} answered {status}")
            out["deploy_s"] = round(time.monotonic() - t0, 2)
            node = call("GET", f"http://{HOST}:{pa}/healthz")[1]["node_id"]
            peer = f"/ip4/{HOST}/tcp/{pa + 1000}/p2p/{node}"
            t0 = time.monotonic()
            procs.append(start(edge, Path(tmp), pb, "-peer", peer))
            healthy = wait(lambda: call("GET", f"http://{HOST}:{pb}/healthz")[0] == 200, 30)
            held = wait(lambda: count(pb) >= args.modules, 120, step=0.05)
            out["healthy_s"] = None if healthy is None else round(healthy, 2)
            out["holds_all_s"] = None if held is None else round(
                time.monotonic() - t0 if held is not None else 0, 2)
            out["held"] = count(pb)
    finally:
        for proc in procs:
            stop_process(proc)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['modules']} modules deployed to A in {out['deploy_s']} s; late joiner B "
              f"healthy after {out['healthy_s']} s, holds all {out['modules']} after "
              f"{out['holds_all_s']} s of its start (holds {out['held']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
