"""Per-function logs: one record per call plus a WASI module's stderr lines, in a bounded
ring per module, kept in memory only (never on disk; a restart forgets them, like
``wrangler tail``). ``GET /modules/{name}/logs`` reads a ring, ``?follow=1`` streams it.

Bounds (each a constant below, each visible in /metrics): at most ``LOG_MODULES`` rings
of ``LOG_ENTRIES`` entries; of one call's stderr only the last ``LOG_LINES_PER_CALL``
lines of at most ``LOG_LINE_MAX`` bytes are kept. So a module writing megabytes to
stderr on every call costs at most ``LOG_ENTRIES * LOG_LINE_MAX`` (50 KiB plus record
overhead, ~150 KiB measured as Python objects) and all rings together ~10 MiB, whatever
the modules write. Everything cut is counted in ``nebula_edge_call_log_dropped_total``.

Not thread-safe: every method runs on the agent's event loop (``Node.exec`` records after
the worker returns).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

LOG_ENTRIES = 200
"""Entries (call records and stderr lines) kept per module: the last few minutes of a
function called a few times a second, enough to see why it just failed."""
LOG_MODULES = 64
"""Modules with a ring; writing to one more drops the least recently written ring.
64 rings of the worst case above is ~10 MiB, what a small edge box can spare."""
LOG_LINE_MAX = 256
"""Bytes of one stderr line kept; a longer line is cut and ends with an ellipsis."""
LOG_LINES_PER_CALL = 20
"""stderr lines kept per call, the last ones (where the error usually is); a call cannot
push more than a tenth of its ring's history out."""
FOLLOWERS_MAX = 32
"""Concurrent ``?follow=1`` streams per agent; each holds a connection and a queue."""
FOLLOW_QUEUE = 512
"""Entries buffered per follower; a reader slower than that loses entries (counted), the
call path never waits for a reader."""

Entry = dict[str, Any]


class TooManyFollowers(Exception):
    pass


class CallLog:
    def __init__(self, agent: Callable[[], str],
                 on_drop: Callable[[str, int], None] | None = None) -> None:
        self._agent = agent
        self._on_drop = on_drop or (lambda reason, n: None)
        self._rings: OrderedDict[str, deque[Entry]] = OrderedDict()
        self._followers: dict[str, set[asyncio.Queue[Entry]]] = {}
        self._seq = itertools.count(1)

    def entries_held(self) -> int:
        return sum(len(r) for r in self._rings.values())

    def followers(self) -> int:
        return sum(len(s) for s in self._followers.values())

    def _ring(self, name: str) -> deque[Entry]:
        ring = self._rings.get(name)
        if ring is None:
            if len(self._rings) >= LOG_MODULES:
                _, old = self._rings.popitem(last=False)
                self._on_drop("module_evicted", len(old))
            ring = self._rings[name] = deque(maxlen=LOG_ENTRIES)
        else:
            self._rings.move_to_end(name)
        return ring

    def _add(self, ring: deque[Entry], e: Entry) -> None:
        ring.append(e)
        for q in self._followers.get(e["module"], ()):
            try:
                q.put_nowait(e)
            except asyncio.QueueFull:
                self._on_drop("follower_slow", 1)

    def record(self, name: str, version: int, duration_s: float, outcome: str,
               stderr: bytes | bytearray = b"") -> None:
        """One call of ``name`` ended with ``outcome`` (``ok`` or an error code)."""
        at = time.time()
        agent = self._agent()
        lines = _lines(bytes(stderr)) if stderr else []
        if len(lines) > LOG_LINES_PER_CALL:
            self._on_drop("stderr_lines", len(lines) - LOG_LINES_PER_CALL)
            lines = lines[-LOG_LINES_PER_CALL:]
        ring = self._ring(name)
        call = next(self._seq)
        self._add(ring, {"seq": call, "at": at, "agent": agent, "module": name, "kind": "call",
                         "version": version, "duration_ms": round(duration_s * 1000, 3),
                         "outcome": "ok" if outcome == "ok" else "error",
                         "error": None if outcome == "ok" else outcome,
                         "stderr_lines": len(lines)})
        for line in lines:
            if len(line) > LOG_LINE_MAX:
                self._on_drop("stderr_bytes", len(line) - LOG_LINE_MAX)
                line = line[:LOG_LINE_MAX - 3] + b"..."
            self._add(ring, {"seq": next(self._seq), "at": at, "agent": agent, "module": name,
                             "kind": "stderr", "call": call,
                             "line": line.decode("utf-8", "replace")})

    def entries(self, name: str, since: int = 0, limit: int = LOG_ENTRIES) -> list[Entry]:
        """Oldest first, those with ``seq`` above ``since``, the newest ``limit`` of them."""
        ring = self._rings.get(name, ())
        out = [e for e in ring if e["seq"] > since]
        return out[-limit:] if limit > 0 else []

    def follow(self, name: str) -> asyncio.Queue[Entry]:
        if self.followers() >= FOLLOWERS_MAX:
            raise TooManyFollowers(f"this agent serves at most {FOLLOWERS_MAX} log streams")
        q: asyncio.Queue[Entry] = asyncio.Queue(maxsize=FOLLOW_QUEUE)
        self._followers.setdefault(name, set()).add(q)
        return q

    def unfollow(self, name: str, q: asyncio.Queue[Entry]) -> None:
        s = self._followers.get(name)
        if s is not None:
            s.discard(q)
            if not s:
                del self._followers[name]


def _lines(raw: bytes) -> list[bytes]:
    return [line.rstrip(b"\r") for line in raw.rstrip(b"\n").split(b"\n")]
