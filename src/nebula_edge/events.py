"""Recent mesh events (deploys, rollbacks, deletes, agents joining and leaving) for the
dashboard: a bounded ring plus wake-ups for the live views that show it.

Events are kept in memory only (an agent restart forgets them, as ``kubectl get events``
forgets after an hour): they tell a person what just happened, the store and the mesh
hold the truth. ``record`` is thread-safe; waiters are woken on their own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import deque
from typing import Any

EVENTS_KEPT = 200
"""Events kept per agent: a page of recent history (a rollout across 100 agents is 100
joins plus a deploy); each is ~200 bytes, so at most ~40 KiB."""


class EventLog:
    def __init__(self, keep: int = EVENTS_KEPT) -> None:
        self._ring: deque[dict[str, Any]] = deque(maxlen=keep)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.recorded = 0

    def record(self, kind: str, at: float | None = None, **fields: Any) -> dict[str, Any]:
        """Keep an event (``kind`` such as ``deploy``, ``peer_joined``) and wake waiters;
        ``at``: when it happened, if not now (a change learnt later from the mesh)."""
        with self._lock:
            ev = {"seq": next(self._seq), "at": time.time() if at is None else at,
                  "kind": kind, **fields}
            self._ring.append(ev)
            self.recorded += 1
            waiters = list(self._waiters)
        self.wake(waiters)
        return ev

    def wake(self, waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] | None = None
             ) -> None:
        """Tell every live view that something changed (thread-safe)."""
        if waiters is None:
            with self._lock:
                waiters = list(self._waiters)
        for loop, flag in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: its view is gone
                loop.call_soon_threadsafe(flag.set)

    def recent(self, limit: int = EVENTS_KEPT) -> list[dict[str, Any]]:
        """Newest first."""
        with self._lock:
            return list(itertools.islice(reversed(self._ring), limit))

    def __len__(self) -> int:
        return len(self._ring)

    def subscribe(self) -> asyncio.Event:
        """An event set whenever something is recorded (or ``wake`` is called); call on the
        subscriber's loop and ``unsubscribe`` when done."""
        flag = asyncio.Event()
        with self._lock:
            self._waiters.add((asyncio.get_running_loop(), flag))
        return flag

    def unsubscribe(self, flag: asyncio.Event) -> None:
        with self._lock:
            self._waiters = {w for w in self._waiters if w[1] is not flag}
