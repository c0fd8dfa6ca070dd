"""The bounds of the per-function logs and the dashboard's events and statistics (#13):
a module's stderr never fills memory, slow followers lose entries instead of stalling
calls, and the latency quantiles match Prometheus's histogram_quantile."""

from __future__ import annotations

import asyncio
import threading

from nebula_edge.api.ui import _quantile
from nebula_edge.calllog import (
    FOLLOW_QUEUE,
    LOG_ENTRIES,
    LOG_LINE_MAX,
    LOG_LINES_PER_CALL,
    LOG_MODULES,
    CallLog,
)
from nebula_edge.events import EVENTS_KEPT, EventLog


def make() -> tuple[CallLog, dict[str, int]]:
    dropped: dict[str, int] = {}

    def drop(reason: str, n: int) -> None:
        dropped[reason] = dropped.get(reason, 0) + n

    return CallLog(lambda: "agent-1", on_drop=drop), dropped


def test_a_call_and_its_stderr() -> None:
    log, _ = make()
    log.record("m", 3, 0.0042, "wasi_exit", bytearray(b"first\r\nsecond\n"))
    call, l1, l2 = log.entries("m")
    assert (call["kind"], call["version"], call["duration_ms"], call["outcome"],
            call["error"], call["stderr_lines"], call["agent"]) == \
        ("call", 3, 4.2, "error", "wasi_exit", 2, "agent-1")
    assert [l1["line"], l2["line"]] == ["first", "second"]
    assert l1["call"] == call["seq"] and l2["seq"] > l1["seq"]
    assert log.entries("m", since=l1["seq"]) == [l2]
    assert log.entries("other") == []


def test_stderr_flood_is_bounded() -> None:
    log, dropped = make()
    flood = b"".join(b"%d " % i + b"x" * 10_000 + b"\n" for i in range(1000))  # ~10 MB
    for _ in range(50):
        log.record("m", 1, 0.001, "ok", flood)
    entries = log.entries("m")
    assert len(entries) == LOG_ENTRIES
    lines = [e["line"] for e in entries if e["kind"] == "stderr"]
    assert max(len(ln.encode()) for ln in lines) <= LOG_LINE_MAX
    assert lines[-1].startswith("999 ")  # the last lines of a call are kept
    assert dropped["stderr_lines"] == 50 * (1000 - LOG_LINES_PER_CALL)
    assert dropped["stderr_bytes"] > 0
    assert log.entries_held() == LOG_ENTRIES


def test_rings_are_bounded_in_number() -> None:
    log, dropped = make()
    for i in range(LOG_MODULES + 5):
        log.record(f"m{i}", 1, 0.001, "ok")
    assert log.entries("m0") == [] and log.entries(f"m{LOG_MODULES + 4}") != []
    assert dropped["module_evicted"] == 5
    assert log.entries_held() == LOG_MODULES


def test_a_slow_follower_loses_entries_the_call_never_waits() -> None:
    async def go() -> None:
        log, dropped = make()
        q = log.follow("m")
        for _ in range(FOLLOW_QUEUE + 10):
            log.record("m", 1, 0.001, "ok")
        assert q.qsize() == FOLLOW_QUEUE and dropped["follower_slow"] == 10
        log.unfollow("m", q)
        assert log.followers() == 0

    asyncio.run(go())


def test_events_ring_and_wakeups_across_threads() -> None:
    async def go() -> None:
        ev = EventLog()
        flag = ev.subscribe()
        t = threading.Thread(target=ev.record, args=("deploy",), kwargs={"module": "m"})
        t.start()
        await asyncio.wait_for(flag.wait(), 5)
        t.join()
        for i in range(EVENTS_KEPT + 10):
            ev.record("peer_joined", agent=str(i))
        assert len(ev) == EVENTS_KEPT
        assert ev.recent(1)[0]["agent"] == str(EVENTS_KEPT + 9)
        ev.unsubscribe(flag)

    asyncio.run(go())


def test_quantile_like_histogram_quantile() -> None:
    inf = float("inf")
    assert _quantile(0.5, []) is None
    assert _quantile(0.5, [(0.001, 0.0), (inf, 0.0)]) is None
    # 100 observations, all in (0.001, 0.002]: linear within the bucket.
    b = [(0.001, 0.0), (0.002, 100.0), (inf, 100.0)]
    assert _quantile(0.5, b) == 1.5
    assert _quantile(0.99, b) == 1.99
    # Beyond the last finite bucket: its upper bound, as Prometheus answers.
    assert _quantile(0.99, [(0.001, 10.0), (inf, 100.0)]) == 1.0
