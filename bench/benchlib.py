"""Helpers shared by the benchmarks: finding the project's tools, free ports, the machine's
description, stopping agents, and CPU accounting (on a shared machine, CPU time per request
moves much less than requests per second, so the benchmarks report both)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOUBLE_WASM = ROOT / "sample" / "double" / "double.wasm"


def log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def find_tool(name: str) -> str:
    """A console script of this project: next to the running interpreter, else in the
    repository's .venv, else on PATH."""
    for cand in (Path(sys.executable).parent / name, ROOT / ".venv" / "bin" / name):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"bench: cannot find {name!r} (run `make setup`)")
    return found


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def system_busy_seconds() -> float | None:
    """CPU time all CPUs spent busy since boot (non-idle, non-iowait), from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    ticks = [int(x) for x in first[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


class OtherLoad:
    """Measures CPU used on the machine by anything but the processes we account for
    (other jobs on a shared box make a run noisy; this says how noisy)."""

    def __init__(self, agent_pid: int | None = None) -> None:
        self.agent_pid = agent_pid
        self.t0 = time.monotonic()
        self.busy0 = system_busy_seconds()
        self.ours0 = self._ours()

    def _ours(self) -> float:
        agent = process_cpu_seconds(self.agent_pid) if self.agent_pid is not None else 0.0
        return (own_cpu_seconds(resource.RUSAGE_SELF)
                + own_cpu_seconds(resource.RUSAGE_CHILDREN) + (agent or 0.0))

    def percent(self) -> float | None:
        """Other processes' CPU since construction, in % of one CPU."""
        busy1 = system_busy_seconds()
        if self.busy0 is None or busy1 is None:
            return None
        wall = time.monotonic() - self.t0
        other = (busy1 - self.busy0) - (self._ours() - self.ours0)
        return max(0.0, 100 * other / wall) if wall > 0 else None



@dataclass
class Floor:
    name: str
    calls: int
    seconds: float
    cpu_seconds: float
    """CPU time of the measuring thread: less sensitive than wall time to other jobs."""
    other_cpu_pct: float | None = None

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def us_per_call(self) -> float:
        return self.seconds / self.calls * 1e6 if self.calls else 0.0

    @property
    def cpu_us_per_call(self) -> float:
        return self.cpu_seconds / self.calls * 1e6 if self.calls else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "calls": self.calls, "seconds": round(self.seconds, 3),
                "calls_per_s": round(self.calls_per_s, 1),
                "us_per_call": round(self.us_per_call, 2),
                "cpu_us_per_call": round(self.cpu_us_per_call, 2),
                "other_cpu_pct": round1(self.other_cpu_pct)}


def round1(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def timed_loop(name: str, fn: Callable[[], object], seconds: float, warmup: float) -> Floor:
    """Call ``fn`` repeatedly: ``warmup`` seconds unrecorded, then ``seconds`` recorded."""
    end = time.perf_counter() + warmup
    while time.perf_counter() < end:
        for _ in range(100):
            fn()
    other = OtherLoad()
    calls = 0
    c0 = time.thread_time()
    t0 = time.perf_counter()
    end = t0 + seconds
    now = t0
    while now < end:
        for _ in range(100):
            fn()
        calls += 100
        now = time.perf_counter()
    return Floor(name, calls, now - t0, time.thread_time() - c0, other.percent())


@contextlib.contextmanager
def sample_sandbox(wasm: bytes, name: str) -> Iterator[tuple[Any, Any, Callable[[], bytes]]]:
    """``(sandbox, manifest, read_bytes)``: our ``Sandbox`` in a temporary directory with
    the agent's default limits, and a manifest for ``wasm`` deployed as ``name``."""
    from nebula_edge.config import EdgeConfig, Limits
    from nebula_edge.manifest import Manifest
    from nebula_edge.sandbox import Sandbox

    cfg = EdgeConfig()
    with tempfile.TemporaryDirectory(prefix="nebula-bench-sandbox-") as tmp:
        sandbox = Sandbox(Path(tmp), cfg.default_limits, cfg.max_limits)
        try:
            abi, export = sandbox.inspect(wasm, name, None, None)
            m = Manifest(name=name, version=1, sha256=hashlib.sha256(wasm).hexdigest(),
                         size=len(wasm), abi=abi, export=export, limits=Limits(),
                         deployed_at=time.time(), publisher="bench")

            def read() -> bytes:
                return wasm

            yield sandbox, m, read
        finally:
            sandbox.close()


def machine() -> dict[str, Any]:
    """CPUs, Python, kernel and the versions that matter, for a benchmark's report."""
    def version(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    cpu = ""
    with contextlib.suppress(OSError):
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "kernel": platform.release(),
            **{pkg: version(pkg) for pkg in ("nebula-edge", "libp2p", "wasmtime", "aiohttp")}}


def stop_process(proc: subprocess.Popen[Any] | None) -> None:
    """Stop a process this benchmark started, by its PID: SIGTERM, then SIGKILL after 10 s."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

