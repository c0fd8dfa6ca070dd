"""The Fetcher's memory of what not to fetch again (issue 11): a version that does not
compile here is remembered by manifest id and not verified, compiled or fetched again;
bytes nobody could serve are not asked for again until their cooldown ends.

Real store, sandbox and metrics; the peer network is absent (no peer is connected), so
the request function is never called: it fails the test if it is.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from nebula_edge.config import EdgeConfig, Limits
from nebula_edge.manifest import Manifest
from nebula_edge.mesh.state import PeerTable
from nebula_edge.metrics import Metrics
from nebula_edge.net import fetch
from nebula_edge.net.fetch import Fetcher
from nebula_edge.sandbox import Sandbox
from nebula_edge.store import ModuleStore

CFG = EdgeConfig()
DOUBLE = Path(__file__).resolve().parents[2] / "sample" / "double" / "double.wasm"


def manifest(name: str, data: bytes, export: str = "double") -> Manifest:
    return Manifest(name=name, version=1, sha256=hashlib.sha256(data).hexdigest(),
                    size=len(data), abi="export", export=export, limits=Limits(),
                    deployed_at=1000.0, publisher="test")


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Fetcher, Metrics, list[str]]]:
    store = ModuleStore(tmp_path / "store")
    compiles: list[str] = []
    sandbox = Sandbox(tmp_path / "cache", CFG.default_limits, CFG.max_limits,
                      on_cache=compiles.append)
    metrics = Metrics()
    rejected: list[str] = []

    async def no_network(*_: object) -> bytes:
        raise AssertionError("no peer is connected: nothing may be requested")

    f = Fetcher(store, sandbox, metrics, PeerTable(), no_network,
                lambda reason, peer, detail: rejected.append(reason), lambda peer: None)
    try:
        yield f, metrics, compiles
    finally:
        sandbox.close()


def gauge(metrics: Metrics, name: str) -> float:
    v = metrics.registry.get_sample_value(name)
    return 0.0 if v is None else v


def test_a_version_that_does_not_compile_is_remembered(
        parts: tuple[Fetcher, Metrics, list[str]]) -> None:
    f, metrics, compiles = parts
    wasm = DOUBLE.read_bytes()
    bad = manifest("mislabel", wasm, export="nosuchexport")  # compiles, but lacks it

    async def run() -> tuple[bool, bool, int]:
        first = await f.start(bad, "peer-a", wasm)
        after_first = len(compiles)
        second = await f.start(bad, "peer-b", wasm)
        return first, second, len(compiles) - after_first

    first, second, compiled_again = asyncio.run(run())
    assert (first, second) == (False, False)
    assert compiled_again == 0  # not verified or compiled a second time
    assert gauge(metrics, "nebula_edge_failed_versions") == 1
    good = manifest("double", wasm)
    assert asyncio.run(_start(f, good, wasm)) is True  # same bytes, a sound manifest


async def _start(f: Fetcher, m: Manifest, data: bytes | None) -> bool:
    return await f.start(m, None, data)


def test_bytes_nobody_serves_cool_down(parts: tuple[Fetcher, Metrics, list[str]]) -> None:
    f, metrics, _ = parts
    m = manifest("nowhere", b"\0asm" + bytes(2 * 1024 * 1024))
    f._mark_unavailable(m.sha256)  # as a transfer that found no holder does
    assert gauge(metrics, "nebula_edge_unavailable_blobs") == 1

    async def run() -> tuple[bool, int]:
        task = f.start(m, None)  # cooling down: ends at once, no transfer is started
        return await task, len(f.pending_for("nowhere"))

    assert asyncio.run(run()) == (False, 0)
    # The cooldown doubles each time, up to UNAVAILABLE_MAX_S.
    f._mark_unavailable(m.sha256)
    assert f._unavailable[m.sha256][1] == 2 * fetch.UNAVAILABLE_S
    for _ in range(20):
        f._mark_unavailable(m.sha256)
    assert f._unavailable[m.sha256][1] == fetch.UNAVAILABLE_MAX_S
