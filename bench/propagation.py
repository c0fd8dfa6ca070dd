"""Benchmark mesh propagation: from ``nebctl`` deploy returning to "runnable on every agent".

For each mesh size (``--agents``, default 2 and 5) a fresh mesh of real ``edge`` processes
is started on loopback (``-bind 127.0.0.1 -fast``, ``NEBULA_EDGE_MDNS_INTERFACES=127.0.0.1``,
own temp data dirs, free ports) and the benchmark waits until every agent's ``/peers``
lists all the others. Then, for each module size (``--sizes``, default 1 KiB, 1 MiB,
10 MiB), ``--repeat`` times:

1. the module is ``sample/double/double.wasm`` with a custom section (id 0, LEB128 size,
   name, random payload) appended to reach the size exactly, so every run's bytes (and
   sha256) are new and no cache helps;
2. the TCP floor is measured: a socket server thread and a client on 127.0.0.1, time from
   connect to the 1-byte ack after the server has read all N bytes (best of 5);
3. ``nebctl -addr <agent 1> -wasm <file> -name <unique name>`` deploys it; the clock starts
   when nebctl returns; one thread per other agent POSTs ``/exec {"name":...,"arg":21}``
   every ``--poll-ms`` until the agent answers 42 *itself* (``X-Nebula-Peer`` is its own
   id: a call it forwarded to a peer does not count), bounded by ``--deadline``; the
   run's time is the slowest agent's.

Each mesh first gets one unrecorded warm-up deploy per size. Before each run the mesh is
checked whole (every agent lists every other) and the agents idle.

Printed: a table (agents, size, median s, max s, TCP floor s, ratio = median / floor) and a
second one attributing the time from the agents' logs (``module received ... via
gossip|fetch``: when the bytes were verified, compiled and stored, relative to nebctl
returning; ``compiled ... in X ms``: the compile inside that), plus the CPU the agents
and everything else on the machine used during the runs (5 agents on 2 cores compete for
CPU with each other and with whatever else runs). ``--json`` prints one JSON object
instead. Agents are stopped by PID at the end, also on error or Ctrl-C.

Usage: ``.venv/bin/python bench/propagation.py [--agents 2,5] [--sizes 1KiB,1MiB,10MiB]
[--repeat 3] [--poll-ms 5] [--deadline 60] [--discovery mdns|peer] [--json] [--keep]``
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from benchlib import (  # bench/ is on sys.path
    DOUBLE_WASM,
    find_tool,
    free_port,
    log,
    machine,
    process_cpu_seconds,
    stop_process,
    system_busy_seconds,
)

WASM = DOUBLE_WASM
HOST = "127.0.0.1"
ARG = 21
KiB = 1024
MiB = 1024 * 1024
SECTION_NAME = b"nebula-bench-pad"


# ---------------------------------------------------------------------------- helpers
def http(method: str, url: str, body: bytes | None = None,
         timeout: float = 5.0) -> tuple[int, Any, dict[str, str]]:
    """One request: status, parsed JSON body (or None), lower-cased headers."""
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw, hdrs = resp.status, resp.read(), resp.headers.items()
    except urllib.error.HTTPError as e:
        with e:
            status, raw, hdrs = e.code, e.read(), e.headers.items()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    return status, parsed, {k.lower(): v for k, v in hdrs}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*(KiB|MiB|B)?\s*", text, re.IGNORECASE)
    if m is None:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 1KiB, 1MiB, 10MiB)")
    unit = (m.group(2) or "B").lower()
    return int(m.group(1)) * {"b": 1, "kib": KiB, "mib": MiB}[unit]


def human(n: int) -> str:
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    if n >= KiB and n % KiB == 0:
        return f"{n // KiB} KiB"
    return f"{n} B"


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


# ---------------------------------------------------------------------------- modules
def leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def custom_section(name: bytes, payload: bytes) -> bytes:
    """A Wasm custom section: id 0, LEB128 size, then LEB128 name length, name, payload."""
    content = leb128(len(name)) + name + payload
    return b"\x00" + leb128(len(content)) + content


def padded_module(base: bytes, size: int) -> bytes:
    """``base`` plus one custom section of random bytes, ``size`` bytes in all."""
    overhead = len(custom_section(SECTION_NAME, b""))
    if size < len(base) + overhead:
        raise SystemExit(f"bench: {size} bytes is smaller than the module plus a section")
    payload_len = size - len(base) - overhead
    # The section's size field grows with the payload; shrink the payload to compensate.
    for _ in range(8):
        total = len(base) + len(custom_section(SECTION_NAME, b"\x00" * payload_len))
        if total == size:
            break
        payload_len -= total - size
    out = base + custom_section(SECTION_NAME, secrets.token_bytes(payload_len))
    if len(out) != size:  # a LEB128 boundary exactly here: one byte off is fine
        log(f"note: module is {len(out)} bytes for a requested {size}", False)
    return out


# ---------------------------------------------------------------------------- TCP floor
class TcpFloor:
    """A loopback socket server thread: per connection it reads until the client shuts
    down its sending side, then answers one byte. ``measure(n)`` times connect + send of
    ``n`` bytes + the ack."""

    def __init__(self) -> None:
        self.srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.srv.bind((HOST, 0))
        self.srv.listen(4)
        self.srv.settimeout(0.5)
        self.port = self.srv.getsockname()[1]
        self._stop = threading.Event()
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._serve, name="tcp-floor", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        buf = bytearray(1 << 20)
        while not self._stop.is_set():
            try:
                conn, _ = self.srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(60)
                    while conn.recv_into(buf):
                        pass
                    conn.sendall(b"k")
                except OSError as e:
                    self.errors.append(str(e))

    def measure(self, n: int, payload: bytes, tries: int = 5) -> float:
        """The best of ``tries`` copies (a floor: scheduling noise only adds time)."""
        return min(self._once(n, payload) for _ in range(max(1, tries)))

    def _once(self, n: int, payload: bytes) -> float:
        view = memoryview(payload)[:n]
        t0 = time.perf_counter()
        with socket.create_connection((HOST, self.port), timeout=60) as c:
            c.sendall(view)
            c.shutdown(socket.SHUT_WR)
            ack = c.recv(1)
        dt = time.perf_counter() - t0
        if ack != b"k":
            raise RuntimeError(f"TCP floor: server answered {ack!r}")
        return dt

    def close(self) -> None:
        self._stop.set()
        self.srv.close()
        self._thread.join(timeout=2)


# ---------------------------------------------------------------------------- agents
class Agent:
    """A real ``edge`` process in the mesh, on loopback, stopped by PID."""

    def __init__(self, index: int, root: Path) -> None:
        self.index = index
        self.port = free_port()
        self.p2p_port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.dir = root / f"agent{index}"
        self.dir.mkdir(parents=True)
        self.log_path = self.dir / "edge.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.node_id = ""

    def start(self, extra: list[str]) -> None:
        cmd = [find_tool("edge"), "-port", str(self.port), "-p2p-port", str(self.p2p_port),
               "-bind", HOST, "-data", str(self.dir / "data"), "-fast", *extra]
        env = {**os.environ, "NEBULA_EDGE_MDNS_INTERFACES": HOST, "PYTHONUNBUFFERED": "1"}
        env.pop("NEBULA_EDGE_TOKEN", None)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL)

    def wait_healthy(self, deadline: float) -> None:
        while True:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeError(f"agent {self.index} exited ({code}):\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                status, body, _ = http("GET", self.url + "/healthz", timeout=1.0)
                if status == 200 and isinstance(body, dict) and body.get("status") == "ok":
                    if not body.get("mesh"):
                        raise RuntimeError(f"agent {self.index} has no mesh: {body}")
                    self.node_id = str(body["node_id"])
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent {self.index} not healthy in time:\n{self.log_tail()}")
            time.sleep(0.1)

    def peer_ids(self) -> set[str]:
        status, body, _ = http("GET", self.url + "/peers", timeout=2.0)
        if status != 200 or not isinstance(body, dict):
            return set()
        return {str(p["peer_id"]) for p in body.get("peers", [])}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu(self) -> float:
        if self.proc is None:
            return 0.0
        return process_cpu_seconds(self.proc.pid) or 0.0

    def stop(self) -> None:
        stop_process(self.proc)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 3000) -> str:
        return self.log_text()[-n:] or "(empty log)"


class MeshError(RuntimeError):
    pass


class Mesh:
    """``n`` agents started one after the other (no start-up CPU storm), each healthy
    before the next; with ``discovery == "peer"`` mDNS is off and agent k gets ``-peer``
    for agents 1..k-1 (isolated from any other mesh on loopback)."""

    def __init__(self, n: int, root: Path, discovery: str, quiet: bool) -> None:
        root.mkdir(parents=True)
        self.agents = [Agent(i + 1, root) for i in range(n)]
        self.discovery = discovery
        self.quiet = quiet
        self.foreign: set[str] = set()

    @property
    def ids(self) -> set[str]:
        return {a.node_id for a in self.agents}

    def start(self, timeout: float = 60.0) -> float:
        """Start every agent and wait until each lists all others; returns the seconds
        the mesh took to form after the last agent was healthy."""
        deadline = time.monotonic() + timeout
        for a in self.agents:
            extra: list[str] = []
            if self.discovery == "peer":
                extra = ["-mdns=false"]
                for b in self.agents[:a.index - 1]:
                    extra += ["-peer", f"/ip4/{HOST}/tcp/{b.p2p_port}/p2p/{b.node_id}"]
            a.start(extra)
            a.wait_healthy(deadline)
        t0 = time.monotonic()
        missing = self.wait_whole(max(1.0, deadline - time.monotonic()))
        if missing:
            raise MeshError(f"mesh did not form within {timeout:.0f} s; missing peers per "
                            f"agent: {missing}")
        formed = time.monotonic() - t0
        log(f"mesh of {len(self.agents)} formed {formed:.1f} s after the last agent was "
            "healthy", self.quiet)
        return formed

    def wait_whole(self, timeout: float) -> dict[int, set[str]]:
        """Wait until every agent's /peers lists all the others; returns what is still
        missing per agent at the deadline (empty: whole). Notes foreign peers."""
        deadline = time.monotonic() + timeout
        ids = self.ids
        while True:
            seen: dict[int, set[str]] = {}
            for a in self.agents:
                try:
                    seen[a.index] = a.peer_ids()
                except (OSError, ValueError):
                    seen[a.index] = set()
            missing = {a.index: m for a in self.agents
                       if (m := (ids - {a.node_id}) - seen[a.index])}
            foreign = set().union(*seen.values()) - ids
            if foreign - self.foreign:
                log(f"WARNING: agents also see {len(foreign)} peer(s) this benchmark did not "
                    "start (another mesh on loopback? try --discovery peer): results are "
                    "perturbed", False)
            self.foreign |= foreign
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.1)

    def settle(self, idle_cpu: float = 0.15, window: float = 0.25, limit: float = 5.0) -> None:
        """Wait (at most ``limit`` s) until the agents together use < ``idle_cpu`` cores."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            c0 = sum(a.cpu() for a in self.agents)
            time.sleep(window)
            if (sum(a.cpu() for a in self.agents) - c0) / window < idle_cpu:
                return

    def stop(self) -> None:
        for a in self.agents:
            try:
                a.stop()
            except Exception as e:  # keep stopping the others
                print(f"bench: stopping agent {a.index}: {e}", file=sys.stderr)


# ---------------------------------------------------------------------------- one run
@dataclass
class AgentResult:
    agent: int
    ready_s: float | None
    """From nebctl returning to this agent answering 42 itself; None: deadline passed."""
    polls: int
    forwarded: int
    """Answers of 42 that came from another agent (the call was forwarded): not counted."""
    via: str | None = None
    received_s: float | None = None
    """Log time of "module received" (bytes verified, compiled, stored) after nebctl."""
    compile_ms: float | None = None
    bytes_in_s: float | None = None
    """When the bytes were in hand (compile began), after nebctl returned."""
    store_ms: float | None = None
    """From the end of the compile to "module received": cache, blob, manifest writes."""
    last_error: str | None = None


@dataclass
class Run:
    agents: int
    size: int
    repeat: int
    name: str
    floor_s: float
    mesh_whole: bool
    """Every agent listed every other one right before the deploy."""
    deploy_s: float
    """How long nebctl itself took (upload + compile + store on agent 1)."""
    agents_cpu_cores: float | None
    """All agents' CPU time during the run over its wall time (2.0 = both cores busy)."""
    other_cpu_cores: float | None
    """CPU used by processes neither this benchmark nor its agents during the run."""
    per_agent: list[AgentResult] = field(default_factory=list)

    @property
    def time_s(self) -> float | None:
        ts = [r.ready_s for r in self.per_agent]
        return None if any(t is None for t in ts) else max(t for t in ts if t is not None)

    def to_json(self) -> dict[str, Any]:
        return {"agents": self.agents, "size": self.size, "repeat": self.repeat,
                "name": self.name, "time_s": _r(self.time_s), "floor_s": _r(self.floor_s, 6),
                "mesh_whole": self.mesh_whole,
                "deploy_s": _r(self.deploy_s), "agents_cpu_cores": _r(self.agents_cpu_cores, 2),
                "other_cpu_cores": _r(self.other_cpu_cores, 2),
                "per_agent": [{"agent": r.agent, "ready_s": _r(r.ready_s),
                               "polls": r.polls, "forwarded": r.forwarded, "via": r.via,
                               "received_s": _r(r.received_s, 3),
                               "bytes_in_s": _r(r.bytes_in_s, 3),
                               "compile_ms": _r(r.compile_ms, 1),
                               "store_ms": _r(r.store_ms, 1),
                               "last_error": r.last_error} for r in self.per_agent]}


def poll_until_ready(agent: Agent, name: str, t0: float, deadline: float, interval: float,
                     out: AgentResult) -> None:
    """POST /exec until ``agent`` itself answers 42, or ``deadline`` (monotonic) passes."""
    body = json.dumps({"name": name, "arg": ARG}).encode()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        out.polls += 1
        try:
            status, got, hdrs = http("POST", agent.url + "/exec", body,
                                     timeout=max(0.5, min(30.0, left)))
            if status == 200 and isinstance(got, dict) and got.get("result") == 2 * ARG:
                if hdrs.get("x-nebula-peer") == agent.node_id:
                    out.ready_s = time.perf_counter() - t0
                    return
                out.forwarded += 1
            else:
                out.last_error = f"{status} {json.dumps(got)[:200]}"
        except (OSError, ValueError) as e:
            out.last_error = f"{type(e).__name__}: {e}"
        time.sleep(interval)


LOG_TS = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"


def log_time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def attribute(agent: Agent, name: str, sha12: str, t0_wall: float, out: AgentResult) -> None:
    """From the agent's log (ms timestamps): how the module arrived and when, split into
    bytes in hand (gossip, or gossip + fetch + sha256), compile, and store (compiled-code
    cache, blob and manifest written with fsync) up to "module received"."""
    text = agent.log_text()
    m = re.search(LOG_TS + r" \S+ \S+ module received: " + re.escape(name)
                  + r" v\d+ \(\w+, \d+ bytes, via (\w+) from", text)
    if m is not None:
        out.via = m.group(2)
        out.received_s = log_time(m.group(1)) - t0_wall
    c = re.search(LOG_TS + r" \S+ \S+ compiled " + re.escape(sha12)
                  + r" \(\w+\) in ([\d.]+) ms", text)
    if c is not None:
        out.compile_ms = float(c.group(2))
        compiled_s = log_time(c.group(1)) - t0_wall
        out.bytes_in_s = compiled_s - out.compile_ms / 1000
        if out.received_s is not None:
            out.store_ms = max(0.0, (out.received_s - compiled_s) * 1000)


def one_run(mesh: Mesh, size: int, rep: int, base: bytes, floor: TcpFloor, tmp: Path,
            args: argparse.Namespace) -> Run:
    n = len(mesh.agents)
    wasm = padded_module(base, size)
    sha12 = hashlib.sha256(wasm).hexdigest()[:12]
    path = tmp / f"module-{n}-{size}-{rep}.wasm"
    path.write_bytes(wasm)
    name = f"prop-{n}a-{size}b-{rep}-{secrets.token_hex(4)}"
    floor_s = floor.measure(len(wasm), wasm)

    missing = mesh.wait_whole(10.0)
    if missing:
        log(f"WARNING: mesh not whole before this run (missing per agent: {missing})", False)
    mesh.settle()
    others = mesh.agents[1:]
    results = [AgentResult(a.index, None, 0, 0) for a in others]
    cpu0 = sum(a.cpu() for a in mesh.agents)
    busy0 = system_busy_seconds()
    self0 = time.process_time()
    w0 = time.monotonic()
    cmd = [find_tool("nebctl"), "-addr", mesh.agents[0].url, "-wasm", str(path), "-name", name]
    env = {k: v for k, v in os.environ.items() if k not in ("NEBULA_EDGE_TOKEN",
                                                             "NEBULA_EDGE_ADDR")}
    children0 = os.times().children_user + os.times().children_system
    d0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env,
                       stdin=subprocess.DEVNULL)
    t0 = time.perf_counter()
    t0_wall = time.time()
    if r.returncode != 0:
        raise RuntimeError(f"nebctl deploy failed ({r.returncode}): {r.stdout}{r.stderr}")
    deadline = time.monotonic() + args.deadline
    threads = [threading.Thread(target=poll_until_ready, name=f"poll-{a.index}",
                                args=(a, name, t0, deadline, args.poll_ms / 1000, res),
                                daemon=True)
               for a, res in zip(others, results, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()) + 35)
    wall = time.monotonic() - w0
    agents_cpu = sum(a.cpu() for a in mesh.agents) - cpu0
    busy1 = system_busy_seconds()
    other = None
    if busy0 is not None and busy1 is not None:
        nebctl_cpu = os.times().children_user + os.times().children_system - children0
        ours = agents_cpu + (time.process_time() - self0) + max(0.0, nebctl_cpu)
        other = max(0.0, (busy1 - busy0) - ours) / wall
    time.sleep(0.05)  # let the log lines of the last agents reach the files
    for a, res in zip(others, results, strict=True):
        attribute(a, name, sha12, t0_wall, res)
    with contextlib.suppress(OSError):
        path.unlink()
    return Run(agents=n, size=size, repeat=rep, name=name, floor_s=floor_s,
               mesh_whole=not missing,
               deploy_s=t0 - d0, agents_cpu_cores=agents_cpu / wall if wall else None,
               other_cpu_cores=other, per_agent=results)


# ---------------------------------------------------------------------------- report
def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    cells: list[dict[str, Any]] = []
    keys = sorted({(r.agents, r.size) for r in runs})
    for n, size in keys:
        rs = [r for r in runs if (r.agents, r.size) == (n, size)]
        times = [r.time_s for r in rs if r.time_s is not None]
        per = [p for r in rs for p in r.per_agent]
        floor = _median([r.floor_s for r in rs])
        med = _median(times)
        vias = sorted({p.via for p in per if p.via})
        cells.append({
            "agents": n, "size": size, "runs": len(rs), "failed": len(rs) - len(times),
            "mesh_not_whole": sum(not r.mesh_whole for r in rs),
            "median_s": _r(med), "max_s": _r(max(times) if times else None),
            "floor_s": _r(floor, 6),
            "ratio": round(med / floor, 1) if med is not None and floor else None,
            "deploy_s": _r(_median([r.deploy_s for r in rs])),
            "via": "/".join(vias) or None,
            "received_s": _r(_median([p.received_s for p in per if p.received_s is not None]),
                             3),
            "bytes_in_s": _r(_median([p.bytes_in_s for p in per if p.bytes_in_s is not None]),
                             3),
            "compile_ms": _r(_median([p.compile_ms for p in per if p.compile_ms is not None]),
                             1),
            "store_ms": _r(_median([p.store_ms for p in per if p.store_ms is not None]), 1),
            "agents_cpu_cores": _r(_median([r.agents_cpu_cores for r in rs
                                            if r.agents_cpu_cores is not None]), 2),
            "other_cpu_cores": _r(_median([r.other_cpu_cores for r in rs
                                           if r.other_cpu_cores is not None]), 2),
        })
    return cells


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"machine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, kernel "
          f"{m['kernel']}; nebula-edge {m['nebula-edge']}, libp2p {m['libp2p']}, "
          f"wasmtime {m['wasmtime']}, aiohttp {m['aiohttp']}")
    print(f"{report['repeat']} runs per cell, /exec polled every {report['poll_ms']:g} ms "
          f"on every agent but the deploy target; agents with -fast on 127.0.0.1, discovery "
          f"{report['discovery']}")
    for ms in report["meshes"]:
        print(f"mesh of {ms['agents']}: formed {ms['formed_s']:g} s after the last agent was "
              f"healthy, attempt {ms['attempts']}, foreign peers seen: {ms['foreign_peers']}")
    print()
    hdr = (f"{'agents':>6}  {'size':>7}  {'median s':>9}  {'max s':>8}  {'TCP floor s':>11}"
           f"  {'ratio':>8}")
    print(hdr)
    print("-" * len(hdr))
    for c in report["cells"]:
        fail = f"  ({c['failed']} of {c['runs']} runs missed the deadline)" if c["failed"] else ""
        if c["mesh_not_whole"]:
            fail += f"  ({c['mesh_not_whole']} runs on a mesh missing a link)"
        print(f"{c['agents']:>6}  {human(c['size']):>7}  {fmt(c['median_s'], '.3f'):>9}  "
              f"{fmt(c['max_s'], '.3f'):>8}  {fmt(c['floor_s'], '.6f'):>11}  "
              f"{fmt(c['ratio'], ',.0f'):>7}x{fail}")
    print()
    print("where the time goes (medians; from the agents' logs):")
    hdr2 = (f"{'agents':>6}  {'size':>7}  {'nebctl s':>8}  {'via':>6}  {'bytes in s':>10}  "
            f"{'compile ms':>10}  {'store ms':>8}  {'received s':>10}  {'agents CPU':>10}  "
            f"{'other CPU':>9}")
    print(hdr2)
    print("-" * len(hdr2))
    for c in report["cells"]:
        print(f"{c['agents']:>6}  {human(c['size']):>7}  {fmt(c['deploy_s'], '.3f'):>8}  "
              f"{c['via'] or '-':>6}  {fmt(c['bytes_in_s'], '.3f'):>10}  "
              f"{fmt(c['compile_ms'], '.1f'):>10}  {fmt(c['store_ms'], '.0f'):>8}  "
              f"{fmt(c['received_s'], '.3f'):>10}  "
              f"{fmt(c['agents_cpu_cores'], '.2f'):>10}  {fmt(c['other_cpu_cores'], '.2f'):>9}")
    print()
    print("ratio = median / TCP floor (one copy of the same bytes over a loopback socket).")
    print("Per receiving agent, after nebctl returned: bytes in = bytes in hand (inline gossip,")
    print("or gossip + blob fetch + sha256); compile (wasmtime); store = compiled-code cache,")
    print("blob and manifest written with fsync; received = 'module received' logged. CPU in")
    print("cores during the runs: all agents / processes other than this benchmark's.")
    nproc = m["nproc"] or 0
    for c in report["cells"]:
        if c["agents"] > nproc and c["agents_cpu_cores"] is not None:
            print(f"note: {c['agents']} agents on {nproc} CPUs: with {human(c['size'])} they "
                  f"used {c['agents_cpu_cores']:.2f} cores (others {c['other_cpu_cores']:.2f})"
                  f" of {nproc}.")


# ---------------------------------------------------------------------------- main
def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad list {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--agents", type=_int_list, default=[2, 5],
                   help="mesh sizes, comma-separated (default 2,5)")
    p.add_argument("--sizes", type=lambda s: [parse_size(x) for x in s.split(",")],
                   default=[KiB, MiB, 10 * MiB],
                   help="module sizes, comma-separated (default 1KiB,1MiB,10MiB)")
    p.add_argument("--repeat", type=int, default=3, help="runs per cell (default 3)")
    p.add_argument("--poll-ms", type=float, default=5.0, help="poll interval (default 5)")
    p.add_argument("--deadline", type=float, default=60.0,
                   help="seconds a run may take before it counts as failed (default 60)")
    p.add_argument("--discovery", choices=["mdns", "peer"], default="mdns",
                   help="mdns (on 127.0.0.1 only; default) or peer: -mdns=false and -peer "
                        "multiaddrs, isolated from other meshes on loopback")
    p.add_argument("--mesh-attempts", type=int, default=3,
                   help="fresh meshes to try if one does not form in 60 s (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (agents' logs)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = p.parse_args(argv)
    if args.repeat < 1 or not args.agents or min(args.agents) < 2 or not args.sizes:
        p.error("need --repeat >= 1, mesh sizes >= 2 and at least one size")
    args.poll_ms = min(max(args.poll_ms, 1.0), 1000.0)
    args.deadline = min(max(args.deadline, 1.0), 600.0)
    args.mesh_attempts = min(max(args.mesh_attempts, 1), 5)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    base = WASM.read_bytes()
    tmp = Path(tempfile.mkdtemp(prefix="nebula-bench-prop-"))
    floor = TcpFloor()
    runs: list[Run] = []
    mesh: Mesh | None = None
    meshes: list[dict[str, Any]] = []
    foreign: dict[int, int] = {}
    try:
        for n in args.agents:
            for attempt in range(1, args.mesh_attempts + 1):
                root = tmp / f"mesh{n}-try{attempt}"
                mesh = Mesh(n, root, args.discovery, args.quiet)
                log(f"starting {n} agents in {root} (discovery: {args.discovery})", args.quiet)
                try:
                    formed = mesh.start()
                except MeshError as e:
                    log(f"attempt {attempt}: {e}; agents' logs in {root}", False)
                    mesh.stop()
                    mesh = None
                    continue
                meshes.append({"agents": n, "attempts": attempt, "formed_s": round(formed, 2)})
                break
            if mesh is None:
                raise SystemExit(f"bench: a mesh of {n} agents did not form in "
                                 f"{args.mesh_attempts} attempts (logs kept in {tmp})")
            # Warm-up, unrecorded, one per size: first deploy, compile, fetch stream.
            for size in args.sizes:
                one_run(mesh, size, 0, base, floor, tmp, args)
            for size in args.sizes:
                for rep in range(1, args.repeat + 1):
                    run = one_run(mesh, size, rep, base, floor, tmp, args)
                    runs.append(run)
                    detail = ", ".join(
                        f"a{x.agent} {fmt(x.ready_s, '.3f')} s ({x.via or '?'}, in "
                        f"{fmt(x.bytes_in_s, '.3f')}, compile {fmt(x.compile_ms, '.0f')} ms, "
                        f"store {fmt(x.store_ms, '.0f')} ms, recv {fmt(x.received_s, '.3f')})"
                        for x in run.per_agent)
                    log(f"{n} agents, {human(size)}, run {rep}: {fmt(run.time_s, '.3f')} s "
                        f"(floor {run.floor_s * 1000:.2f} ms, nebctl {run.deploy_s:.3f} s, "
                        f"agents CPU {fmt(run.agents_cpu_cores, '.2f')} cores): {detail}",
                        args.quiet)
            foreign[n] = len(mesh.foreign)
            mesh.stop()
            mesh = None
    finally:
        if mesh is not None:
            mesh.stop()
        floor.close()
        if args.keep or (len(meshes) < len(args.agents)):
            log(f"kept {tmp}", False)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    for info in meshes:
        info["foreign_peers"] = foreign.get(info["agents"], 0)
    report = {"machine": machine(), "repeat": args.repeat, "poll_ms": args.poll_ms,
              "deadline_s": args.deadline, "discovery": args.discovery, "meshes": meshes,
              "cells": summarize(runs),
              "runs": [r.to_json() for r in runs]}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0 if all(r.time_s is not None for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
