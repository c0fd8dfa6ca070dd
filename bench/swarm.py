"""Benchmark large modules spreading like a swarm, on hosts in network namespaces.

Uses the netns lab (``tests/netns/lab.py``: one namespace per host on a private bridge,
one real ``edge`` agent each, default flags unless said, mDNS discovery). Needs root.

Scenarios (``--scenarios``, default all three):

* ``fanout``: ``--hosts`` (8) hosts; a ``--size`` (48 MiB) module (``double.wasm`` plus a
  random custom section) is deployed to host 1 with ``nebctl``. Measured: seconds from
  nebctl starting until every host answers ``/exec double(21) = 42`` *itself*
  (``X-Nebula-Peer`` is its own id, not forwarded), and the bytes host 1 sent while the
  module spread (its veth's counters, read on the bridge side: what host 1 transmitted is
  what the bridge port received), as a multiple of the module's size.
* ``big``: ``--big-hosts`` (5) hosts with ``-max-module-size`` raised; a ``--big-size``
  (200 MiB) module deployed to host 1. Measured: seconds until every host holds it, and
  each agent's RSS (``/proc/<pid>/status`` VmRSS every 0.1 s): idle before the deploy, peak
  during the transfer (a receiver: until its log says ``fetched``, the bytes verified on
  disk; host 1: from its deploy answer until every receiver fetched), and peak overall
  (which includes compiling the module: the sandbox reads it whole).
* ``cut``: 5 hosts, host 1's uplink limited to ``--cut-rate`` (tc tbf) so a
  ``--cut-size`` (64 MiB) transfer takes seconds; when the receivers hold half of the
  pieces between them, host 1 (the only full holder) is cut off its bridge, then healed
  ``--cut-for`` s later. Measured: every receiver completes, and the bytes each received in
  pieces (``nebula_edge_piece_bytes_total``): about one module, not two (no restart).

Printed: one JSON object per scenario. Usage (as root, in a namespace of your own):
``ip netns exec <ns> .venv/bin/python bench/swarm.py [--scenarios fanout,big,cut]``
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from agents import with_custom_section  # noqa: E402
from benchlib import DOUBLE_WASM, machine  # noqa: E402
from netns.lab import Lab, sweep_stale  # noqa: E402

MiB = 1024 * 1024


def module(size: int) -> bytes:
    base = DOUBLE_WASM.read_bytes()
    pad = size - len(base) - 32
    import os
    return with_custom_section(base, "swarm-bench", os.urandom(pad))


def veth_rx(lab: Lab, i: int) -> int:
    """Bytes host ``i`` sent: received by the bridge side of its veth."""
    out = subprocess.run(["ip", "-j", "-s", "link", "show", "dev", lab.hosts[i].veth],
                         capture_output=True, text=True, check=True).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["bytes"])


def rss(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(m.group(1)) * 1024 if m else 0


def node_id(lab: Lab, i: int) -> str:
    return str(lab.get(i, "/healthz")[1]["node_id"])


def wait_mesh(lab: Lab, timeout: float = 60) -> None:
    n = len(lab.hosts)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(lab.get(i, "/peers")[1]["peers"]) == n - 1 for i in lab.hosts):
            return
        time.sleep(0.2)
    raise SystemExit("bench: the mesh did not form")


def holds(lab: Lab, i: int, name: str, sha: str) -> bool:
    status, body, _ = lab.get(i, f"/modules/{name}", timeout=5)
    return status == 200 and body["current"]["sha256"] == sha


def runs_locally(lab: Lab, i: int, name: str, me: str) -> bool:
    status, body, headers = lab.exec(i, name, 21, timeout=10)
    return status == 200 and body.get("result") == 42 and headers.get("X-Nebula-Peer") == me


def piece_bytes(lab: Lab, i: int, direction: str) -> float:
    _, raw, _ = lab.agent(i).request("GET", "/metrics")
    m = re.search(rf'nebula_edge_piece_bytes_total{{direction="{direction}"}} (\S+)',
                  raw.decode())
    return float(m.group(1)) if m else 0.0


def deploy(lab: Lab, name: str, data: bytes) -> str:
    import hashlib
    path = lab.root / f"{name}.wasm"
    path.write_bytes(data)
    lab.deploy(1, name, path)
    return hashlib.sha256(data).hexdigest()


def fanout(args: argparse.Namespace) -> dict[str, Any]:
    with Lab(args.hosts, agent_args=()) as lab:
        wait_mesh(lab)
        ids = {i: node_id(lab, i) for i in lab.hosts}
        data = module(args.size)
        sent0 = veth_rx(lab, 1)
        t0 = time.monotonic()
        sha = deploy(lab, "swarm48", data)
        deployed = time.monotonic() - t0
        local: dict[int, float] = {}
        while len(local) < len(lab.hosts) and time.monotonic() - t0 < args.deadline:
            for i in lab.hosts:
                if i not in local and holds(lab, i, "swarm48", sha) and \
                        runs_locally(lab, i, "swarm48", ids[i]):
                    local[i] = round(time.monotonic() - t0, 2)
            time.sleep(0.1)
        # What host 1 sends for the module is over once every host holds it.
        time.sleep(1.0)
        sent = veth_rx(lab, 1) - sent0
        return {"scenario": "fanout", "hosts": len(lab.hosts), "size_mib": args.size / MiB,
                "deploy_s": round(deployed, 2), "all_local_s": max(local.values(), default=None),
                "local_s_by_host": local, "all_ran_locally": len(local) == len(lab.hosts),
                "deployer_sent_mib": round(sent / MiB, 1),
                "deployer_sent_x_size": round(sent / len(data), 2)}


class RssSampler:
    """Every agent's VmRSS every 0.1 s, with the wall-clock time of each sample."""

    def __init__(self, pids: dict[int, int]) -> None:
        self.pids = pids
        self.samples: dict[int, list[tuple[float, int]]] = {i: [] for i in pids}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(0.1):
            for i, pid in self.pids.items():
                self.samples[i].append((time.time(), rss(pid)))

    def peak(self, i: int, start: float = 0.0, end: float = float("inf")) -> int:
        return max((r for t, r in self.samples[i] if start <= t <= end), default=0)


def log_time(lab: Lab, i: int, needle: str) -> float | None:
    """Wall-clock time of the first log line of host ``i`` containing ``needle``."""
    for line in lab.log(i).splitlines():
        if needle in line:
            stamp = line[:23]  # "2026-12-03 09:31:46,800"
            t = time.mktime(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S"))
            return t + int(stamp[20:23]) / 1000
    return None


def big(args: argparse.Namespace) -> dict[str, Any]:
    flags = ("-max-module-size", str(args.big_size + 16 * MiB))
    with Lab(args.big_hosts, agent_args=flags) as lab:
        wait_mesh(lab)
        pids = {i: lab.agent(i).proc.pid for i in lab.hosts}
        time.sleep(2)
        idle = {i: rss(pid) for i, pid in pids.items()}
        data = module(args.big_size)
        sampler = RssSampler(pids)
        sampler.thread.start()
        t0, wall0 = time.monotonic(), time.time()
        sha = deploy(lab, "swarm200", data)
        del data
        deployed, wall_deployed = time.monotonic() - t0, time.time()
        held: dict[int, float] = {}
        while len(held) < len(lab.hosts) and time.monotonic() - t0 < args.deadline * 4:
            for i in lab.hosts:
                if i not in held and holds(lab, i, "swarm200", sha):
                    held[i] = round(time.monotonic() - t0, 2)
            time.sleep(0.2)
        time.sleep(1)
        sampler.stop.set()
        sampler.thread.join()
        # A receiver's transfer phase: from the deploy until its log says "fetched" (the
        # bytes are on disk and verified; compiling them follows). The deploying host's:
        # from its deploy answer until the last receiver fetched.
        fetched = {i: log_time(lab, i, "fetched swarm200") for i in lab.hosts if i != 1}
        ends = [t for t in fetched.values() if t is not None]
        transfer = {i: sampler.peak(i, wall0, fetched[i] or wall0) for i in fetched}
        transfer[1] = sampler.peak(1, wall_deployed, max(ends, default=wall_deployed))
        return {"scenario": "big", "hosts": len(lab.hosts), "size_mib": args.big_size / MiB,
                "deploy_s": round(deployed, 2),
                "fetched_s": {i: round(t - wall0, 2) for i, t in fetched.items() if t},
                "all_hold_s": max(held.values(), default=None),
                "every_host_holds": len(held) == len(lab.hosts),
                "idle_rss_mib": {i: round(idle[i] / MiB) for i in idle},
                "transfer_peak_over_idle_mib": {
                    i: round((transfer[i] - idle[i]) / MiB) for i in sorted(transfer)},
                "overall_peak_over_idle_mib": {
                    i: round((sampler.peak(i) - idle[i]) / MiB) for i in idle}}


def cut(args: argparse.Namespace) -> dict[str, Any]:
    with Lab(5, agent_args=()) as lab:
        wait_mesh(lab)
        ns1 = lab.hosts[1].ns
        subprocess.run(["ip", "netns", "exec", ns1, "tc", "qdisc", "add", "dev", "eth0",
                        "root", "tbf", "rate", args.cut_rate, "burst", "64kb", "latency",
                        "50ms"], check=True)
        data = module(args.cut_size)
        import hashlib
        sha = hashlib.sha256(data).hexdigest()
        path = lab.root / "swarmcut.wasm"
        path.write_bytes(data)
        t0 = time.monotonic()
        proc = subprocess.Popen(["true"])
        lab.deploy(1, "swarmcut", path)
        proc.wait()
        receivers = [i for i in lab.hosts if i != 1]
        while time.monotonic() - t0 < args.deadline:
            got = sum(piece_bytes(lab, i, "received") for i in receivers)
            if got >= len(data) * len(receivers) / 2:
                break
            time.sleep(0.05)
        cut_at = round(time.monotonic() - t0, 2)
        before = {i: piece_bytes(lab, i, "received") for i in receivers}
        lab.cut(1)
        time.sleep(args.cut_for)
        lab.heal(1)
        held: dict[int, float] = {}
        while len(held) < len(receivers) and time.monotonic() - t0 < args.deadline * 3:
            for i in receivers:
                if i not in held and holds(lab, i, "swarmcut", sha):
                    held[i] = round(time.monotonic() - t0, 2)
            time.sleep(0.2)
        received = {i: round(piece_bytes(lab, i, "received") / len(data), 2)
                    for i in receivers}
        return {"scenario": "cut", "size_mib": args.cut_size / MiB, "rate": args.cut_rate,
                "cut_at_s": cut_at, "cut_for_s": args.cut_for,
                "received_before_cut_x_size": {i: round(before[i] / len(data), 2)
                                               for i in receivers},
                "all_complete": len(held) == len(receivers), "complete_s": held,
                "received_total_x_size": received}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", default="fanout,big,cut")
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--size", type=int, default=48 * MiB)
    ap.add_argument("--big-hosts", type=int, default=5)
    ap.add_argument("--big-size", type=int, default=200 * MiB)
    ap.add_argument("--cut-size", type=int, default=64 * MiB)
    ap.add_argument("--cut-rate", default="200mbit")
    ap.add_argument("--cut-for", type=float, default=5.0)
    ap.add_argument("--deadline", type=float, default=60.0)
    args = ap.parse_args()
    sweep_stale()
    print(json.dumps({"machine": machine()}))
    for s in args.scenarios.split(","):
        result = {"fanout": fanout, "big": big, "cut": cut}[s](args)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
