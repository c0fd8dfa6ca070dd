"""Start-up time of the agent: from process start until ``/healthz`` answers 200, median of N
runs, for the single-file binary against the venv's ways of starting it.

    .venv/bin/python packaging/bench_startup.py    # bin/edge, python -m, .venv/bin/edge
    .venv/bin/python packaging/bench_startup.py --runs 5 --extra /tmp/x/bin/edge

Each run starts a fresh agent on 127.0.0.1 with an empty data directory, from a temporary
directory, with an environment holding only PATH, and stops it by PID. Two configurations:
``-mesh=false`` (a lone agent: no libp2p, no zeroconf imported) and the mesh on
(``-mdns=false``: libp2p host up, nothing discovered). Besides wall-clock time it reports
the CPU seconds (user + sys) the process tree had used when ``/healthz`` first answered,
which a busy machine disturbs much less. Also prints the sizes of the binaries and times
``nebctl --help`` (binary against the venv's console script).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import smoke

ROOT = smoke.ROOT
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def tree_cpu_s(pid: int) -> float:
    """user + sys CPU seconds of ``pid`` and its descendants (Linux /proc; else NaN)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return float("nan")
    stats: dict[int, tuple[int, float]] = {}
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after "pid (comm)": state ppid ... utime(12th) stime(13th), 0-based 11, 12
        stats[int(d.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICKS)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, (0, 0.0))[1]
        todo.extend(c for c, (ppid, _) in stats.items() if ppid == p)
    return total


def measure(cmd: list[str], mesh: bool, args: tuple[str, ...],
            runs: int) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    for _ in range(runs):
        work = Path(tempfile.mkdtemp(prefix="nebula-edge-bench-"))
        try:
            env = smoke.clean_env(NEBULA_EDGE_MDNS_INTERFACES=smoke.HOST)
            agent = smoke.Agent(cmd, work, env, *args, mesh=mesh)
            try:
                walls.append(agent.wait_healthy(timeout=120, poll=0.002))
                cpus.append(tree_cpu_s(agent.proc.pid))
            finally:
                code = agent.stop()
            assert code == 0, f"{cmd} exited with {code}\n{agent.log()[-2000:]}"
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return walls, cpus


def main() -> int:
    p = argparse.ArgumentParser(description="edge start-up time, median of N runs")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--bin-dir", type=Path, default=ROOT / "bin")
    p.add_argument("--venv", type=Path, default=ROOT / ".venv")
    p.add_argument("--extra", action="append", default=[],
                   help="another edge executable to time (e.g. from a wheel install)")
    a = p.parse_args()
    venv_py = str(a.venv / "bin" / "python")
    commands = {
        "bin/edge (PyInstaller one-file)": [str(a.bin_dir / "edge")],
        "python -m nebula_edge (.venv)": [venv_py, "-m", "nebula_edge"],
        ".venv/bin/edge (console script)": [str(a.venv / "bin" / "edge")],
        **{x: [x] for x in a.extra},
    }
    print(f"# {platform.platform()}, {os.cpu_count()} cores, "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}, {a.runs} runs each")
    for name in ("edge", "nebctl"):
        f = a.bin_dir / name
        if f.exists():
            print(f"# size of {f.relative_to(ROOT) if ROOT in f.parents else f}: "
                  f"{f.stat().st_size / 1e6:.1f} MB")
    print("| how it is started | config | median to /healthz, s | min-max, s | CPU at ready, s |")
    print("|---|---|---|---|---|")
    configs = {"-mesh=false": (False, ()), "mesh on, -mdns=false": (True, ("-mdns=false",))}
    for config, (mesh, args) in configs.items():
        for label, cmd in commands.items():
            walls, cpus = measure(cmd, mesh, args, a.runs)
            print(f"| {label} | {config} | {statistics.median(walls):.2f} | "
                  f"{min(walls):.2f}-{max(walls):.2f} | {statistics.median(cpus):.2f} |",
                  flush=True)
    print()
    print("| nebctl --help | median, s | min-max, s |")
    print("|---|---|---|")
    for label, cmd in (("bin/nebctl (PyInstaller one-file)", [str(a.bin_dir / "nebctl")]),
                       (".venv/bin/nebctl (console script)", [str(a.venv / "bin" / "nebctl")])):
        times = []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            subprocess.run([*cmd, "--help"], env=smoke.clean_env(), check=True,
                           stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            times.append(time.perf_counter() - t0)
        print(f"| {label} | {statistics.median(times):.2f} | {min(times):.2f}-{max(times):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
