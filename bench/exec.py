"""Benchmark ``/exec`` of the ``double`` sample against floors measured in the same run.

Measured, in this order:

1. in-process floors (this process, no HTTP):
   * ``wasmtime``: wasmtime-py used directly: one Engine, one ``InstancePre``; per call a
     fresh Store + instantiate + call of ``double``;
   * ``Sandbox.call``: our ``nebula_edge.sandbox.Sandbox`` doing the same call (limits,
     epoch deadline, argument checks), so the sandbox's own overhead is visible;
2. a real agent on loopback under load, 32 connections, twice in the same run: once
   with ``-mesh=false`` and once with default flags (mesh on: libp2p, mDNS restricted
   to 127.0.0.1, no peers), each measured on:
   * ``POST /debug/echo``: the agent's trivial JSON echo (the aiohttp stack's own floor);
   * ``POST /exec`` of ``double``.

The load generator is ``wrk`` when installed (``apt-get install -y wrk``), else a Python
aiohttp client. With ``taskset`` available the agent is pinned to one core and the load
generator (and the in-process floors) to another, so the agent has one core to itself.

Printed: a table (route, req/s, p50, p99, errors) and the ratios exec/echo (target >= 0.5)
and exec/wasmtime floor. ``--json`` prints one JSON object instead.

Usage: ``.venv/bin/python bench/exec.py [-d 10] [--warmup 3] [--rounds 1] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (  # bench/ is on sys.path
    DOUBLE_WASM,
    Floor,
    OtherLoad,
    find_tool,
    free_port,
    log,
    machine,
    process_cpu_seconds,
    round1,
    sample_sandbox,
    stop_process,
    timed_loop,
)

WASM = DOUBLE_WASM
CONNECTIONS = 32
ARG = 21
EXEC_BODY = json.dumps({"name": "double", "arg": ARG}, separators=(",", ":"))
"""The echo route gets the same body, so both requests carry identical bytes."""
TARGET_EXEC_OVER_ECHO = 0.5
MODES = ("-mesh=false", "default flags (mesh on)")
MODE_SHORT = {"-mesh=false": "[mesh off]", "default flags (mesh on)": "[mesh on]"}

WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = [[%BODY%]]
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"p50_us\\":%d,\\"p99_us\\":%d," ..
    "\\"connect\\":%d,\\"read\\":%d,\\"write\\":%d,\\"status\\":%d,\\"timeout\\":%d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


# ---------------------------------------------------------------------------- results
@dataclass
class LoadResult:
    route: str
    round: int
    mode: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_detail: dict[str, int] = field(default_factory=dict)
    agent_cpu_pct: float | None = None
    agent_cpu_us_per_req: float | None = None
    """Agent CPU time (all threads) per request: the cost, robust to other jobs."""
    other_cpu_pct: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["rps"] = round(self.rps, 1)
        d["seconds"] = round(self.seconds, 3)
        d["p50_ms"] = round(self.p50_ms, 3)
        d["p99_ms"] = round(self.p99_ms, 3)
        d["agent_cpu_pct"] = round1(self.agent_cpu_pct)
        d["agent_cpu_us_per_req"] = round1(self.agent_cpu_us_per_req)
        d["other_cpu_pct"] = round1(self.other_cpu_pct)
        return d


# ---------------------------------------------------------------------------- helpers
def http(method: str, url: str, body: str | None = None, timeout: float = 5.0) -> Any:
    data = body.encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


@dataclass(frozen=True)
class Pinning:
    """Which CPUs the agent and the load side get (None: not pinned)."""

    agent: str | None
    load: str | None

    def prefix(self, cpus: str | None) -> list[str]:
        return ["taskset", "-c", cpus] if cpus is not None else []

    @property
    def load_set(self) -> set[int] | None:
        return {int(c) for c in self.load.split(",")} if self.load is not None else None

    def describe(self) -> str:
        if self.agent is None:
            return "not pinned"
        return f"agent on CPU {self.agent}, load generator and in-process floors on CPU {self.load}"


def choose_pinning(enabled: bool) -> Pinning:
    if not enabled or shutil.which("taskset") is None or not hasattr(os, "sched_getaffinity"):
        return Pinning(None, None)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Pinning(None, None)
    return Pinning(str(cpus[0]), ",".join(str(c) for c in cpus[1:]))


@contextlib.contextmanager
def pinned_self(cpus: set[int] | None) -> Iterator[None]:
    """Run this process on ``cpus`` for a while (no-op if None)."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# ---------------------------------------------------------------------------- floors
def wasmtime_floor(wasm: bytes, seconds: float, warmup: float) -> Floor:
    """wasmtime-py directly: default Config, one Linker (with WASI defined, as an agent
    would have), one InstancePre; per call a fresh Store + instantiate + call."""
    import wasmtime

    engine = wasmtime.Engine()
    module = wasmtime.Module(engine, wasm)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    pre = linker.instantiate_pre(module)

    def once() -> object:
        store = wasmtime.Store(engine)
        inst = pre.instantiate(store)
        fn = inst.exports(store)["double"]
        assert isinstance(fn, wasmtime.Func)
        return fn(store, ARG)

    got = once()
    if got != 2 * ARG:
        raise SystemExit(f"bench: wasmtime floor: double({ARG}) returned {got!r}")
    return timed_loop("wasmtime (fresh Store + instantiate + call)", once, seconds, warmup)


def sandbox_floor(wasm: bytes, seconds: float, warmup: float) -> Floor:
    """Our Sandbox.call in-process, with the agent's default limits."""
    with sample_sandbox(wasm, "double") as (sandbox, m, read):

        def once() -> object:
            return sandbox.call(m, read, ARG, None)

        got = once()
        if got != {"result": 2 * ARG}:
            raise SystemExit(f"bench: Sandbox.call(double, {ARG}) returned {got!r}")
        return timed_loop("Sandbox.call (nebula_edge.sandbox)", once, seconds, warmup)


# ---------------------------------------------------------------------------- agent
class Agent:
    """A real ``edge`` process on loopback, stopped by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, pinning: Pinning, workers: int | None, quiet: bool,
                 mesh: bool = False) -> None:
        self.mesh = mesh
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = Path(tempfile.mkdtemp(prefix="nebula-bench-agent-"))
        self.log_path = self.tmp / "agent.log"
        self.pinning = pinning
        self.workers = workers
        self.quiet = quiet
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        cmd = [*self.pinning.prefix(self.pinning.agent), find_tool("edge"),
               "-port", str(self.port), "-bind", "127.0.0.1", "-data", str(self.tmp / "data"),
               "-log-level", "warning"]
        if not self.mesh:
            cmd.append("-mesh=false")
        if self.workers is not None:
            cmd += ["-workers", str(self.workers)]
        env = {**os.environ, "NEBULA_EDGE_MDNS_INTERFACES": "127.0.0.1"}
        log(f"starting agent: {' '.join(cmd)}", self.quiet)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if http("GET", self.url + "/healthz", timeout=1.0).get("status") == "ok":
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent not healthy after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def deploy(self) -> None:
        cmd = [find_tool("nebctl"), "-addr", self.url, "-wasm", str(WASM), "-name", "double"]
        log(f"deploying: {' '.join(cmd)}", self.quiet)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"nebctl deploy failed ({r.returncode}): {r.stdout}{r.stderr}")

    def check(self) -> None:
        """One request of each kind, answers checked (the load generator does not)."""
        got = http("POST", self.url + "/exec", EXEC_BODY)
        if got != {"result": 2 * ARG}:
            raise RuntimeError(f"/exec answered {got!r}")
        echo = http("POST", self.url + "/debug/echo", EXEC_BODY)
        if echo != json.loads(EXEC_BODY):
            raise RuntimeError(f"/debug/echo answered {echo!r}")

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"


# ---------------------------------------------------------------------------- load
class Wrk:
    name = "wrk"

    def __init__(self, pinning: Pinning, tmp: Path) -> None:
        self.pinning = pinning
        self.script = tmp / "post.lua"
        self.script.write_text(WRK_SCRIPT.replace("%BODY%", EXEC_BODY))
        ncpu = len(pinning.load_set) if pinning.load_set else (os.cpu_count() or 1)
        self.threads = max(1, min(ncpu, 4))

    def run(self, url: str, seconds: float) -> dict[str, Any]:
        cmd = [*self.pinning.prefix(self.pinning.load), "wrk", f"-t{self.threads}",
               f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "5s",
               "-s", str(self.script), url]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
        if r.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({r.returncode}): {r.stdout}{r.stderr}")
        d: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
        return d


class PyLoad:
    """Fallback: 32 aiohttp client connections, each sending requests back to back."""

    name = "python-aiohttp"

    def __init__(self, pinning: Pinning) -> None:
        self.pinning = pinning

    def run(self, url: str, seconds: float) -> dict[str, Any]:
        with pinned_self(self.pinning.load_set):
            runner: Callable[[Any], dict[str, Any]] = asyncio.run
            with contextlib.suppress(ImportError):
                import uvloop

                runner = uvloop.run
            return runner(self._run(url, seconds))

    async def _run(self, url: str, seconds: float) -> dict[str, Any]:
        import aiohttp

        latencies: list[float] = []
        errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
        body = EXEC_BODY.encode()
        headers = {"Content-Type": "application/json"}
        conn = aiohttp.TCPConnector(limit=CONNECTIONS)
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
            t0 = time.perf_counter()
            end = t0 + seconds

            async def worker() -> None:
                while True:
                    start = time.perf_counter()
                    if start >= end:
                        return
                    try:
                        async with session.post(url, data=body, headers=headers) as resp:
                            await resp.read()
                            if resp.status >= 400:
                                errors["status"] += 1
                    except TimeoutError:
                        errors["timeout"] += 1
                        continue
                    except aiohttp.ClientConnectionError:
                        errors["connect"] += 1
                        continue
                    latencies.append(time.perf_counter() - start)

            await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
            duration = time.perf_counter() - t0
        q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 \
            else [0.0] * 99
        return {"requests": len(latencies) + errors["status"], "duration_us": duration * 1e6,
                "p50_us": q[49] * 1e6, "p99_us": q[98] * 1e6, **errors}


def load_run(gen: Wrk | PyLoad, agent: Agent, route: str, rnd: int,
             seconds: float, mode: str) -> LoadResult:
    cpu0 = process_cpu_seconds(agent.pid)
    other = OtherLoad(agent.pid)
    t0 = time.monotonic()
    d = gen.run(agent.url + route, seconds)
    wall = time.monotonic() - t0
    cpu1 = process_cpu_seconds(agent.pid)
    other_pct = other.percent()
    detail = {k: int(d[k]) for k in ("connect", "read", "write", "status", "timeout") if d[k]}
    cpu = per_req = None
    if cpu0 is not None and cpu1 is not None:
        cpu = 100 * (cpu1 - cpu0) / wall
        # The agent is idle outside the load window (wrk's start and exit), so its CPU
        # time over the whole wall window belongs to these requests.
        per_req = (cpu1 - cpu0) / int(d["requests"]) * 1e6 if int(d["requests"]) else None
    return LoadResult(route=route, round=rnd, mode=mode, requests=int(d["requests"]),
                      seconds=float(d["duration_us"]) / 1e6, p50_ms=float(d["p50_us"]) / 1000,
                      p99_ms=float(d["p99_us"]) / 1000, errors=sum(detail.values()),
                      error_detail=detail, agent_cpu_pct=cpu, agent_cpu_us_per_req=per_req,
                      other_cpu_pct=other_pct)


# ---------------------------------------------------------------------------- report
def summarize(results: list[LoadResult], floors: list[Floor]) -> dict[str, float | None]:
    def med(route: str) -> float | None:
        xs = [r.rps for r in results if r.route == route]
        return statistics.median(xs) if xs else None

    def med_cost(route: str) -> float | None:
        xs = [r.agent_cpu_us_per_req for r in results
              if r.route == route and r.agent_cpu_us_per_req is not None]
        return statistics.median(xs) if xs else None

    exec_rps, echo_rps = med("/exec"), med("/debug/echo")
    exec_cost, echo_cost = med_cost("/exec"), med_cost("/debug/echo")
    out: dict[str, float | None] = {"exec_rps": exec_rps, "echo_rps": echo_rps,
                                    "exec_over_echo": None, "exec_over_wasmtime": None,
                                    "exec_over_sandbox": None,
                                    "exec_cpu_us_per_req": exec_cost,
                                    "echo_cpu_us_per_req": echo_cost,
                                    "echo_cost_over_exec_cost": None}
    if exec_cost and echo_cost is not None:
        out["echo_cost_over_exec_cost"] = echo_cost / exec_cost
    if exec_rps is not None and echo_rps:
        out["exec_over_echo"] = exec_rps / echo_rps
    if exec_rps is not None and floors:
        out["exec_over_wasmtime"] = exec_rps / floors[0].calls_per_s
        if len(floors) > 1:
            out["exec_over_sandbox"] = exec_rps / floors[1].calls_per_s
    return out


def print_summary(s: dict[str, Any], multi: bool) -> None:
    which = " (medians over rounds)" if multi else ""
    if s["exec_over_echo"] is not None:
        verdict = "meets" if s["exec_over_echo"] >= TARGET_EXEC_OVER_ECHO else "BELOW"
        print(f"  /exec / /debug/echo        = {s['exec_over_echo']:.2f}  "
              f"(target >= {TARGET_EXEC_OVER_ECHO}: {verdict}){which}")
    if s["exec_over_wasmtime"] is not None:
        print(f"  /exec / wasmtime floor     = {s['exec_over_wasmtime']:.2f}{which}")
    if s["exec_over_sandbox"] is not None:
        print(f"  /exec / Sandbox.call floor = {s['exec_over_sandbox']:.2f}{which}")
    if s["echo_cost_over_exec_cost"] is not None:
        print(f"  echo / exec agent CPU per request = {s['echo_cost_over_exec_cost']:.2f}  "
              f"({s['echo_cpu_us_per_req']:.0f} vs {s['exec_cpu_us_per_req']:.0f} us: the "
              "req/s ratio a CPU-bound agent would reach; robust to other jobs)")


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"machine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, "
          f"wasmtime {m['wasmtime']}, aiohttp {m['aiohttp']}, kernel {m['kernel']}")
    print(f"load generator: {report['load_generator']}, {CONNECTIONS} connections, "
          f"{report['duration_s']:g} s per run after {report['warmup_s']:g} s warm-up; "
          f"pinning: {report['pinning']}")
    print()
    print("in-process floors (one thread, no HTTP):")
    for f in report["floors"]:
        other = f"{f['other_cpu_pct']:.0f}%" if f["other_cpu_pct"] is not None else "-"
        print(f"  {f['name']:<44} {f['calls_per_s']:>8,.0f} calls/s {f['us_per_call']:>6.1f} "
              f"us/call, CPU {f['cpu_us_per_call']:.1f} us/call (other jobs' CPU: {other})")
    print()
    hdr = (f"{'route':<24}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
           f"{'agent CPU':>11}{'CPU us/req':>12}{'other CPU':>11}")
    print(hdr)
    print("-" * len(hdr))
    multi = report["rounds"] > 1
    for r in report["load"]:
        label = f"{r['route']}#{r['round']}" if multi else r["route"]
        label = f"{label} {MODE_SHORT[r['mode']]}"
        cpu = f"{r['agent_cpu_pct']:.0f}%" if r["agent_cpu_pct"] is not None else "-"
        oth = f"{r['other_cpu_pct']:.0f}%" if r["other_cpu_pct"] is not None else "-"
        per = (f"{r['agent_cpu_us_per_req']:.0f}" if r["agent_cpu_us_per_req"] is not None
               else "-")
        print(f"{label:<24}{r['rps']:>10,.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
              f"{r['errors']:>8}{cpu:>11}{per:>12}{oth:>11}")
    for mode in MODES:
        s = report["summaries"].get(mode)
        if s is not None:
            print()
            print(f"agent with {mode}:")
            print_summary(s, multi)
    echo_cpu = [r["agent_cpu_pct"] for r in report["load"]
                if r["route"] == "/debug/echo" and r["agent_cpu_pct"] is not None]
    if echo_cpu and max(echo_cpu) < 60:
        print("note: the agent was far from busy on /debug/echo (a slow or starved load "
              "generator, or a shared agent CPU), so /exec / echo overstates /exec in this run")
    noisy = [x["other_cpu_pct"] for x in (*report["floors"], *report["load"])
             if x["other_cpu_pct"] is not None and x["other_cpu_pct"] > 20]
    if noisy:
        print(f"note: other processes used up to {max(noisy):.0f}% of a CPU during the runs: "
              "numbers are noisy; rerun on a quiet machine")


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("-d", "--duration", type=float, default=10.0,
                   help="seconds per load run (default 10)")
    p.add_argument("--warmup", type=float, default=3.0,
                   help="seconds of unrecorded load per route before measuring (default 3)")
    p.add_argument("--floor-seconds", type=float, default=3.0,
                   help="seconds per in-process floor (default 3; 0.5 s warm-up each)")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate echo and exec runs this many times; ratios use medians")
    p.add_argument("--workers", type=int, default=None,
                   help="pass -workers to the agent (default: the agent's default)")
    p.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto",
                   help="load generator (default: wrk if installed, else python)")
    p.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    p.add_argument("--mesh-off-only", action="store_true",
                   help="measure only the -mesh=false agent (default: both)")
    p.add_argument("--json", action="store_true", help="print one JSON object, nothing else")
    return p.parse_args(argv)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_mode(a: argparse.Namespace, pinning: Pinning, quiet: bool, use_wrk: bool,
             mode: str, results: list[LoadResult]) -> Wrk | PyLoad:
    """Start one agent (mesh off, or default flags), load it, stop it."""
    agent = Agent(pinning, a.workers, quiet, mesh=mode != MODES[0])
    try:
        agent.start()
        agent.deploy()
        agent.check()
        gen: Wrk | PyLoad = Wrk(pinning, agent.tmp) if use_wrk else PyLoad(pinning)
        for route in ("/debug/echo", "/exec"):
            if a.warmup > 0:
                log(f"{mode}: warming up {route} for {a.warmup:g} s ...", quiet)
                gen.run(agent.url + route, a.warmup)
        for rnd in range(1, a.rounds + 1):
            for route in ("/debug/echo", "/exec"):
                log(f"{mode}: round {rnd}: {route} for {a.duration:g} s ...", quiet)
                results.append(load_run(gen, agent, route, rnd, a.duration, mode))
        agent.check()
    except BaseException:
        if agent.proc is not None:
            log(f"agent log tail:\n{agent.log_tail()}", False)
        raise
    finally:
        agent.stop()
    return gen


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    # SIGTERM/SIGINT unwind like Ctrl-C, so the agent is stopped by the `finally` below.
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    quiet = a.json
    wasm = WASM.read_bytes()
    pinning = choose_pinning(not a.no_pin)
    use_wrk = a.loadgen == "wrk" or (a.loadgen == "auto" and shutil.which("wrk") is not None)
    if use_wrk and shutil.which("wrk") is None:
        raise SystemExit("bench: wrk not found (apt-get install -y wrk)")

    log(f"pinning: {pinning.describe()}", quiet)
    log("measuring in-process floors ...", quiet)
    with pinned_self(pinning.load_set):
        floors = [wasmtime_floor(wasm, a.floor_seconds, 0.5),
                  sandbox_floor(wasm, a.floor_seconds, 0.5)]

    results: list[LoadResult] = []
    modes = [m for m in MODES if not (a.mesh_off_only and m != MODES[0])]
    for mode in modes:
        gen = run_mode(a, pinning, quiet, use_wrk, mode, results)

    report: dict[str, Any] = {
        "machine": machine(),
        "load_generator": gen.name + (f" ({gen.threads} thread(s))" if isinstance(gen, Wrk)
                                      else ""),
        "connections": CONNECTIONS,
        "duration_s": a.duration,
        "warmup_s": a.warmup,
        "rounds": a.rounds,
        "pinning": pinning.describe(),
        "workers": a.workers,
        "floors": [f.to_json() for f in floors],
        "load": [r.to_json() for r in results],
        "summary": summarize([r for r in results if r.mode == MODES[0]], floors),
        "summaries": {m: summarize([r for r in results if r.mode == m], floors)
                      for m in modes},
    }
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
