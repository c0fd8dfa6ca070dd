"""SIGKILL in the middle of a deploy or a delete, then a restart on the same state.

What a crash may leave: the state before the request or the state after it, never a
module half there. After every kill the agent is restarted on the same ``-data`` and
``-port`` and its state directory is checked as a whole:

* no temp file (``*.tmp``) anywhere: the store removes them at start;
* nothing quarantined: no manifest or tombstone was found half written;
* every blob's sha256 is its name, every manifest's blob is there, and no blob is left
  that no manifest names;
* the module is the old version or the new one, complete (size and hash as uploaded),
  and it runs.

A 24 MiB custom section makes a deploy take about a second (receive, compile, cache the
compiled code, write and fsync the blob, write the manifest), so that kills at several
fractions of that time, and at the moment the blob's temp file appears, land in
different steps.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents import SAMPLES, Agent, AgentPool, leb128

DOUBLE = (SAMPLES / "double" / "double.wasm").read_bytes()
PAD = 24 * 1024 * 1024
KILL_FRACTIONS = (0.05, 0.3, 0.6)
"""Kill points for uploads, as fractions of a measured upload's duration (receive, compile)."""

Trigger = Callable[[float], bool]
"""Called with the seconds since the request was sent; True: kill now."""


def big_module(fill: int) -> bytes:
    """``double`` plus a custom section of ``PAD`` bytes of ``fill``: it still returns 42."""
    name = b"pad"
    payload = leb128(len(name)) + name + bytes([fill]) * PAD
    return DOUBLE + b"\x00" + leb128(len(payload)) + payload


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def restart(agents: AgentPool, agent: Agent) -> Agent:
    assert not agent.alive()
    return agents(data_root=agent.data, port=agent.port, p2p_port=agent.p2p_port)


def check_store(state: Path) -> dict[str, list[str]]:
    """Assert the state directory is consistent; returns each module's manifest hashes."""
    assert sorted(state.rglob("*.tmp")) == []
    assert sorted((state / "quarantine").iterdir()) == []
    blobs = {p.name: sha256(p.read_bytes()) for p in (state / "blobs").iterdir()}
    assert {name: name for name in blobs} == blobs
    manifests: dict[str, list[str]] = {}
    for p in sorted((state / "manifests").glob("*/*.json")):
        manifests.setdefault(p.parent.name, []).append(json.loads(p.read_bytes())["sha256"])
    named = {sha for shas in manifests.values() for sha in shas}
    assert named <= set(blobs), f"manifests without their blob: {named - set(blobs)}"
    assert set(blobs) <= named, f"blobs no manifest names: {set(blobs) - named}"
    return manifests


def kill_during(agent: Agent, request: Callable[[], tuple[int, Any, Any]],
                trigger: Trigger) -> tuple[int | str, bool]:
    """Send ``request`` from a thread and SIGKILL the agent once ``trigger`` says so (or
    once the request is answered). Returns the request's status, or the name of the error
    the client got, and whether the trigger fired before the answer."""
    outcome: list[int | str] = []

    def send() -> None:
        try:
            outcome.append(request()[0])
        except (OSError, http.client.HTTPException) as e:
            outcome.append(type(e).__name__)

    thread = threading.Thread(target=send)
    t0 = time.monotonic()
    thread.start()
    fired = False
    while thread.is_alive() and not fired:
        fired = trigger(time.monotonic() - t0)
        if time.monotonic() - t0 > 60:
            raise AssertionError("request neither answered nor killed within 60 s")
        time.sleep(0.001)
    agent.kill()
    thread.join(30)
    assert not thread.is_alive()
    return outcome[0], fired


def test_kill_during_upload_leaves_the_old_module_or_the_new_one(agent_factory: AgentPool
                                                                 ) -> None:
    agent = agent_factory()
    sizes: dict[str, int] = {}
    upload_s = 0.0
    for fill in (1, 2):  # the second upload is timed: the first one also warms up
        wasm = big_module(fill)
        sizes[sha256(wasm)] = len(wasm)
        t0 = time.monotonic()
        status, body, _ = agent.upload("big", wasm)
        upload_s = time.monotonic() - t0
        assert status == 201, body
    current = body["module"]["sha256"]

    def after(fraction: float) -> Callable[[Path, str], Trigger]:
        return lambda state, sha: lambda elapsed: elapsed >= fraction * upload_s

    def compiled_code_cached(state: Path, sha: str) -> Trigger:  # the blob not yet
        return lambda elapsed: any((state / "cache").glob(f"{sha}.*.cwasm"))

    def blob_being_written(state: Path, sha: str) -> Trigger:
        return lambda elapsed: any((state / "blobs").glob(".*.tmp"))

    def blob_stored(state: Path, sha: str) -> Trigger:  # its manifest maybe not yet
        return lambda elapsed: (state / "blobs" / sha).exists()

    def answered(state: Path, sha: str) -> Trigger:
        return lambda elapsed: False

    kill_points = [*(after(f) for f in KILL_FRACTIONS), compiled_code_cached,
                   blob_being_written, blob_stored, answered]
    outcomes = []
    for i, kill_point in enumerate(kill_points):
        new = big_module(10 + i)
        new_sha = sha256(new)
        sizes[new_sha] = len(new)
        outcome, fired = kill_during(agent, lambda a=agent, w=new: a.upload("big", w),
                                     kill_point(agent.state_dir, new_sha))
        outcomes.append((outcome, fired))
        agent = restart(agent_factory, agent)

        check_store(agent.state_dir)
        status, body, _ = agent.get("/modules/big")
        assert status == 200, body
        got = body["current"]["sha256"]
        assert got in (current, new_sha), (i, outcome)
        if outcome == 201:  # answered before the kill: the new version is durable
            assert got == new_sha, (i, outcome)
        assert body["current"]["size"] == sizes[got]
        assert agent.exec("big", 21)[:2] == (200, {"result": 42})
        current = got

    killed_mid_request = [o for o, fired in outcomes if fired and o != 201]
    assert len(killed_mid_request) >= 3, outcomes
    # The compiled code is cached ~0.1 s before the blob is written, which takes ~0.5 s.
    assert [fired for _, fired in outcomes[-4:-2]] == [True, True], outcomes
    assert outcomes[-1] == (201, False)


def test_kill_during_delete_leaves_the_module_or_nothing(agent_factory: AgentPool) -> None:
    """Best effort: a delete writes one small tombstone, then unlinks the manifests and
    blobs it covers. Kills right away, after 1 and 5 ms, once the tombstone is replaced and
    once the first manifest is gone."""
    agent = agent_factory()

    def tombstone_replaced(state: Path) -> Trigger:
        path = state / "tombstones" / "gone.json"
        before = path.stat().st_ino if path.exists() else None
        return lambda elapsed: path.exists() and path.stat().st_ino != before

    def a_manifest_removed(state: Path) -> Trigger:
        before = len(list((state / "manifests" / "gone").glob("*.json")))
        return lambda elapsed: len(list((state / "manifests" / "gone").glob("*.json"))) < before

    kill_points: list[Callable[[Path], Trigger]] = [
        lambda state: (lambda elapsed: True),
        lambda state: (lambda elapsed: elapsed >= 0.001),
        lambda state: (lambda elapsed: elapsed >= 0.005),
        tombstone_replaced,
        a_manifest_removed,
    ]
    for i, kill_point in enumerate(kill_points):
        if agent.get("/modules/gone")[0] == 404:
            for fill in (2 * i, 2 * i + 1):  # two versions, each with its own blob
                status, body, _ = agent.upload("gone", DOUBLE + bytes([0, 2, 1, fill]))
                assert status == 201, body
        before = agent.get("/modules/gone")[1]["versions"]
        outcome, _ = kill_during(agent, lambda a=agent: a.delete("/modules/gone"),
                                 kill_point(agent.state_dir))
        agent = restart(agent_factory, agent)

        manifests = check_store(agent.state_dir)
        status, body, _ = agent.get("/modules/gone")
        if status == 404:
            assert "gone" not in manifests
            status, body, _ = agent.exec("gone", 21)
            assert (status, body["error"]["code"]) == (404, "module_not_found"), (i, body)
        else:
            assert outcome != 200, f"kill {i}: the delete was answered, yet the module is back"
            assert (status, body["versions"]) == (200, before), i
            assert agent.exec("gone", 21)[:2] == (200, {"result": 42})


def test_compiled_code_does_not_outlive_its_module(agent_factory: AgentPool) -> None:
    """The compiled-code cache (``cache/<sha256>.*.cwasm``) of a deleted module goes with
    it, at the latest by the next start."""
    agent = agent_factory()
    wasm = DOUBLE + bytes([0, 2, 1, ord("e")])
    status, body, _ = agent.upload("ephemeral", wasm)
    assert status == 201, body
    sha = sha256(wasm)
    assert sorted(p.name.split(".")[0] for p in (agent.state_dir / "cache").iterdir()) == [sha]
    assert agent.delete("/modules/ephemeral")[0] == 200
    agent.stop()
    agent = restart(agent_factory, agent)
    assert check_store(agent.state_dir) == {}
    assert sorted((agent.state_dir / "cache").iterdir()) == []
