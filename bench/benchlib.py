"""Helpers shared by the benchmarks: finding the project's tools, free ports, and CPU
accounting (on a shared machine, CPU time per request moves much less than requests per
second, so the benchmarks report both)."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
