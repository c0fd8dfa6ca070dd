"""Virtual time and a virtual network for the simulator (deterministic: one seed).

``Sim`` is the event loop: ``at(delay, fn)`` schedules, ``run_until(t)`` runs events in
time order (ties in scheduling order). ``Network.request`` is the one way agents talk:
a request of N bytes and its answer, each delayed by ``latency + bytes / bandwidth``,
either lost (``loss``, a partition between the two, an agent down) and then answered
with ``None`` after ``timeout``. Bytes and messages are counted per sender.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_LATENCY_S = 0.001
"""One-way delay of a link (the issue's 1 ms links)."""
DEFAULT_BANDWIDTH = 125_000_000
"""Bytes a second a link carries (1 Gbit/s): 4 KiB of bucket hashes add 33 us."""
DEFAULT_TIMEOUT_S = 5.0
"""A lost request is answered ``None`` after this long (a request timeout in the agent)."""


class Sim:
    """The virtual clock and its event heap."""

    def __init__(self, seed: int) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self._heap: list[tuple[float, int, Callable[[], Any]]] = []
        self._seq = 0
        self.events = 0

    def at(self, delay: float, fn: Callable[[], Any]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (self.now + max(0.0, delay), self._seq, fn))

    def run_until(self, t: float, stop: Callable[[], bool] | None = None) -> bool:
        """Run events up to time ``t`` (or until ``stop()`` is true; checked after each
        event). True if stopped by ``stop``."""
        while self._heap and self._heap[0][0] <= t:
            when, _, fn = heapq.heappop(self._heap)
            self.now = when
            fn()
            self.events += 1
            if stop is not None and stop():
                return True
        self.now = max(self.now, t)
        return False


@dataclass
class Counters:
    bytes: int = 0
    msgs: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, n: int) -> None:
        self.bytes += n
        self.msgs += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + n


class Network:
    def __init__(self, sim: Sim, latency: float = DEFAULT_LATENCY_S,
                 bandwidth: float = DEFAULT_BANDWIDTH, loss: float = 0.0) -> None:
        self.sim = sim
        self.latency = latency
        self.bandwidth = bandwidth
        self.loss = loss
        self.sent: dict[str, Counters] = {}
        self.down: set[str] = set()
        self.side: dict[str, int] = {}
        """Agent -> partition side; agents on different sides cannot talk."""

    def counters(self, agent: str) -> Counters:
        c = self.sent.get(agent)
        if c is None:
            c = self.sent[agent] = Counters()
        return c

    def reachable(self, a: str, b: str) -> bool:
        return a not in self.down and b not in self.down and \
            self.side.get(a, 0) == self.side.get(b, 0)

    def _delay(self, n: int) -> float:
        return self.latency + n / self.bandwidth

    def _lost(self, a: str, b: str) -> bool:
        return not self.reachable(a, b) or (self.loss > 0 and self.sim.rng.random() < self.loss)

    def send(self, src: str, dst: str, kind: str, n: int, deliver: Callable[[], Any]) -> None:
        """One-way message (gossip): delivered after the delay unless lost."""
        self.counters(src).add(kind, n)
        if not self._lost(src, dst):
            self.sim.at(self._delay(n), deliver)

    def request(self, src: str, dst: str, kind: str, n: int,
                serve: Callable[[], tuple[Any, int]],
                reply: Callable[[Any], Any], timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """``serve()`` runs at ``dst`` when the request arrives and gives (answer, its
        bytes); ``reply(answer)`` runs at ``src`` when it arrives, ``reply(None)`` after
        ``timeout`` if either way is lost."""
        self.counters(src).add(kind, n)
        if self._lost(src, dst):
            self.sim.at(timeout, lambda: reply(None))
            return

        def arrive() -> None:
            if dst in self.down:
                self.sim.at(timeout, lambda: reply(None))
                return
            answer, size = serve()
            self.counters(dst).add(kind + "-answer", size)
            if self._lost(dst, src):
                self.sim.at(timeout, lambda: reply(None))
            else:
                self.sim.at(self._delay(size), lambda: reply(answer))

        self.sim.at(self._delay(n), arrive)
