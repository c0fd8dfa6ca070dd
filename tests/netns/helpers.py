"""Helpers for the lab scenarios: Wasm builders, polling for convergence, reading agents'
stores and logs, driving rogue processes. Everything takes a :class:`~netns.lab.Lab`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import wasmtime

import agents
from agents import SAMPLES

from .lab import PORT, Lab

MiB = 1024 * 1024
DOUBLE = SAMPLES / "double" / "double.wasm"
ROGUE = Path(__file__).resolve().parent / "rogue.py"
ROGUE_PEER = Path(__file__).resolve().parents[1] / "rogue_peer.py"
"""The single-machine suites' rogue (``garbage`` and ``publish`` modes, one target each);
``rogue.py`` here adds request-protocol garbage and slow-loris blob holders."""
CRASH_LINES = ("p2p host crashed", "Traceback (most recent call last)", "mesh: error handling")
"""Agent log lines that mean something died or raised where it should not (the supervisor
restarting libp2p counts)."""


# ------------------------------------------------------------------------------ Wasm
def with_custom_section(wasm: bytes, name: str, size: int) -> bytes:
    """``wasm`` with a custom section of ``size`` random bytes appended: same code,
    bigger module."""
    return agents.with_custom_section(wasm, name, os.urandom(size))


def times_k(export: str, k: int, op: str = "mul") -> bytes:
    """A module exporting ``export(x: i32) -> i32`` returning ``x <op> k``."""
    return bytes(wasmtime.wat2wasm(f"""(module (func (export "{export}") (param i32) (result i32)
        local.get 0 i32.const {k} i32.{op}))"""))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ helpers
def save(lab: Lab, name: str, data: bytes) -> Path:
    path = lab.root / name
    path.write_bytes(data)
    return path


def deploy(lab: Lab, i: int, name: str, data: bytes, *args: str) -> dict[str, Any]:
    """Deploy ``data`` as ``name`` to host ``i`` with nebctl; returns the module view."""
    p = lab.deploy(i, name, save(lab, f"{name}.wasm", data), *args)
    module: dict[str, Any] = json.loads(p.stdout)["module"]
    assert module["sha256"] == sha256(data)
    return module


def current_sha(lab: Lab, i: int, name: str) -> str | None:
    status, body, _ = lab.get(i, f"/modules/{name}", timeout=5)
    return body["current"]["sha256"] if status == 200 else None


def holdings(lab: Lab, i: int) -> dict[str, str]:
    status, body, _ = lab.get(i, "/modules", timeout=5)
    assert status == 200, body
    return {m["name"]: m["sha256"] for m in body["modules"]}


def peer_count(lab: Lab, i: int, with_url: bool = False) -> int:
    """Peers ``GET /peers`` lists (with ``with_url``: only those whose HTTP URL is known,
    which forwarding needs)."""
    status, body, _ = lab.get(i, "/peers", timeout=5)
    assert status == 200, body
    return len([p for p in body["peers"] if p.get("http_url") or not with_url])


class NotConverged(AssertionError):
    """Some hosts did not reach the state in time (as opposed to any other failure)."""


def converge(lab: Lab, hosts: list[int], check: Callable[[int], bool], timeout: float,
             what: str, since: float | None = None) -> dict[int, float]:
    """Poll ``check(i)`` for every host until each has passed once; returns, per host, the
    seconds from ``since`` (default: now) to its first pass. On timeout the assertion
    names the hosts still failing and their last answer."""
    t0 = time.monotonic() if since is None else since
    done: dict[int, float] = {}
    last: dict[int, Any] = {}
    while True:
        for i in hosts:
            if i in done:
                continue
            try:
                ok = check(i)
                last[i] = ok
            except Exception as e:  # an agent restarting, a lossy link: not yet
                ok, last[i] = False, e
            if ok:
                done[i] = round(time.monotonic() - t0, 3)
        if len(done) == len(hosts):
            return done
        if time.monotonic() - t0 > timeout:
            pending = {i: repr(last.get(i))[:200] for i in hosts if i not in done}
            raise NotConverged(f"{what}: not within {timeout} s; done {done}; "
                               f"still failing {pending}")
        time.sleep(0.05)


def exec_is(lab: Lab, i: int, name: str, arg: Any, want: Any) -> bool:
    status, body, _ = lab.exec(i, name, arg, timeout=10)
    return status == 200 and body.get("result") == want


def store_problems(lab: Lab, i: int) -> list[str]:
    """What is wrong with host ``i``'s store on disk: temp files, blobs whose sha256 is
    not their name, listed modules without blob or manifest, manifests without blob."""
    root = lab.hosts[i].state_dir
    problems = [f"temp file {p.relative_to(root)}" for p in root.rglob("*")
                if p.name.endswith(".tmp")]
    blobs = root / "blobs"
    for b in blobs.iterdir():
        if sha256(b.read_bytes()) != b.name:
            problems.append(f"blob {b.name[:12]} does not hash to its name")
    for name, sha in holdings(lab, i).items():
        if not (blobs / sha).exists():
            problems.append(f"listed {name} ({sha[:12]}) has no blob")
        if not any((root / "manifests" / name).glob("*.json")):
            problems.append(f"listed {name} has no manifest file")
    for mf in (root / "manifests").glob("*/*.json"):
        sha = json.loads(mf.read_bytes())["sha256"]
        if not (blobs / sha).exists():
            problems.append(f"manifest {mf.relative_to(root)} names a missing blob")
    return problems


def log_lines(lab: Lab, i: int, *needles: str, limit: int = 12) -> list[str]:
    lines = [ln for ln in lab.log(i).splitlines() if any(n in ln for n in needles)]
    return [f"h{i}: {ln}" for ln in lines[-limit:]]


def log_marks(lab: Lab) -> dict[int, int]:
    """Where each host's log ends now: :func:`crash_lines` reads only what follows."""
    return {i: len(lab.log(i)) for i in lab.hosts}


def crash_lines(lab: Lab, since: dict[int, int]) -> list[str]:
    return [f"h{i}: {ln}" for i in lab.hosts for ln in lab.log(i)[since.get(i, 0):].splitlines()
            if any(c in ln for c in CRASH_LINES)]


def double_of_21(lab: Lab) -> int:
    """What the mesh's current ``double`` answers for 21, deploying it if a test run alone
    finds none (42 for v1, 63 once scenario 4 deployed v2)."""
    status, body, _ = lab.exec(1, "double", 21)
    if status == 404:
        m = deploy(lab, 1, "double", DOUBLE.read_bytes())
        converge(lab, list(lab.hosts), lambda i: current_sha(lab, i, "double") == m["sha256"],
                 10, "double on every host")
        status, body, _ = lab.exec(1, "double", 21)
    assert status == 200, body
    return int(body["result"])


def node_addr(lab: Lab, i: int) -> str:
    status, body, _ = lab.get(i, "/healthz")
    assert status == 200, body
    return f"/ip4/{lab.hosts[i].ip}/tcp/{PORT + 1000}/p2p/{body['node_id']}"


class ExecLoop:
    """Calls ``double`` 21 on every host, round after round, on a thread, recording
    every answer: does /exec keep working while something else goes on?"""

    def __init__(self, lab: Lab, want: int) -> None:
        self.lab, self.want = lab, want
        self.calls: list[tuple[int, int, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for i in list(self.lab.hosts):
                try:
                    status, body, _ = self.lab.exec(i, "double", 21, timeout=10)
                    self.calls.append((i, status, body))
                except Exception as e:
                    self.calls.append((i, -1, repr(e)))

    def __enter__(self) -> ExecLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def failed(self) -> list[tuple[int, int, Any]]:
        return [c for c in self.calls
                if c[1] != 200 or not isinstance(c[2], dict) or c[2].get("result") != self.want]


def end_process(p: subprocess.Popen[str]) -> str:
    """Close its stdin (tests/rogue_peer.py leaves then), SIGKILL if still running after
    5 s; returns its stderr."""
    try:
        _, err = p.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate(timeout=10)
    return err or ""


def deploy_spreads(lab: Lab, name: str, timeout: float, what: str) -> dict[int, float]:
    """Deploy a 1 MiB module (fetched as a blob, not inline) to host 1 and wait for all."""
    t0 = time.monotonic()
    m = deploy(lab, 1, name, with_custom_section(times_k("f", 7), "pad", MiB))
    try:
        return converge(lab, list(lab.hosts), lambda i: current_sha(lab, i, name)
                        == m["sha256"], timeout, what, since=t0)
    except NotConverged as e:
        evidence = [ln for i in lab.hosts for ln in log_lines(lab, i, "fetch", limit=4)]
        raise NotConverged(f"{e}\nagent log lines:\n" + "\n".join(evidence)) from None


PIPES: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}


class Accepted(AssertionError):
    """An agent stored something it should have refused."""


def end_process_output(p: subprocess.Popen[str]) -> str:
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err[-2000:]
    return out


def exec_answer(lab: Lab, i: int, want: int, name: str = "double",
                arg: int = 21) -> dict[str, Any]:
    """/exec ``name`` ``arg`` on host ``i`` must give ``want``; says where it ran."""
    t0 = time.monotonic()
    status, body, headers = lab.exec(i, name, arg)
    assert status == 200 and body.get("result") == want, (
        f"{status} {body}; log:\n" + "\n".join(log_lines(lab, i, "")[-10:]))
    ran_on, me = headers.get("X-Nebula-Peer"), lab.get(i, "/healthz")[1]["node_id"]
    return {"exec_took": round(time.monotonic() - t0, 3),
            "how": "fetched, ran here" if ran_on == me else f"forwarded to {ran_on}"}


def fresh_host(lab: Lab) -> int:
    """The last host, its agent stopped and its data wiped (a new identity, no modules)."""
    i = max(lab.hosts)
    if lab.alive(i):
        lab.stop(i)
    shutil.rmtree(lab.hosts[i].data)
    lab.hosts[i].data.mkdir()
    return i


class StaleAnswer(AssertionError):
    """An agent answered with a version older than the mesh's current one."""
