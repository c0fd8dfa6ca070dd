"""When to run anti-entropy rounds, and with whom (sans-IO: ``now`` is passed in).

* **Periodic rounds** (``next_delay``/``pick``): every interval, one round with
  ``SYNC_FANOUT`` random connected peer(s), memberlist's push-pull scheme. The interval
  is ``sync_interval_s`` up to ``SCALE_THRESHOLD`` members and stretched past it
  (``scaled_interval``, memberlist's ``pushPullScale``), so an agent's idle cost does not
  grow with the fleet: with equal roots a round is one ~150-byte request and answer.
* **Pacing per peer** (``begin``/``end``/``gap``/``recent``): at most one round at a
  time with a peer; rounds asked for by calls begin at least ``CALL_ROUND_GAP_S`` apart;
  a round answered back (the peer saw our roots differ) runs at most once an interval.

The asyncio futures that callers wait on stay in ``net/service.py``; every decision about
time and peers is here, and the simulator (``nebula_edge.sim``) runs this same code.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

CALL_ROUND_GAP_S = 0.1
"""Least time between the starts of sync rounds with one peer that calls for unknown
names asked for: a client asking for names that exist nowhere costs each peer at most
10 small sync requests a second, and a call waits about one round more."""
SYNC_FANOUT = 1
"""Peers per periodic round. One, as memberlist: with n agents each doing one round per
interval, every agent still takes part in ~2 rounds an interval (its own and, on
average, one asked of it), and a difference spreads to all in O(log n) intervals."""
SCALE_THRESHOLD = 32
"""memberlist's pushPullScaleThreshold: past 32 members the interval grows with
log2(members / 32) + 1 (64 members: x2, 1,000 members: x6)."""
JITTER = 0.25
"""Each interval is drawn from +-25 % of its length, so agents started together do not
sync in lockstep."""


def scaled_interval(base: float, members: int) -> float:
    """memberlist's ``pushPullScale``: ``base`` up to 32 members, then
    ``base * (ceil(log2(members) - log2(32)) + 1)``."""
    if members <= SCALE_THRESHOLD:
        return base
    return base * (math.ceil(math.log2(members) - math.log2(SCALE_THRESHOLD)) + 1)


class Rounds:
    """Round bookkeeping per peer, and the choice of peers for periodic rounds."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.began: dict[str, float] = {}
        """peer -> when the round running with it (or the last one) began."""
        self.ended: dict[str, float] = {}
        """peer -> when the last round with it ended."""

    def next_delay(self, members: int, rng: random.Random) -> float:
        """Seconds until the next periodic round, for a mesh of ``members`` agents."""
        return scaled_interval(self.interval_s, members) * (1 - JITTER + 2 * JITTER * rng.random())

    @staticmethod
    def pick(peers: Sequence[str], rng: random.Random, k: int = SYNC_FANOUT) -> list[str]:
        """``k`` distinct random peers (all of them if fewer)."""
        return rng.sample(list(peers), min(k, len(peers)))

    def gap(self, peer: str, now: float) -> float:
        """Seconds to wait before a round with ``peer`` may begin (<= 0: now)."""
        return self.began.get(peer, -1e9) + CALL_ROUND_GAP_S - now

    def begin(self, peer: str, now: float) -> None:
        self.began[peer] = now

    def end(self, peer: str, now: float) -> None:
        self.ended[peer] = now

    def began_since(self, peer: str, since: float) -> bool:
        return self.began.get(peer, -1e9) >= since

    def recent(self, peer: str, now: float) -> bool:
        """A round with ``peer`` ended less than an interval ago (answered-back rounds
        wait for it: two agents that can never agree must not trigger each other in a
        loop)."""
        return now - self.ended.get(peer, -1e9) < self.interval_s

    def forget(self, peer: str) -> None:
        self.began.pop(peer, None)
        self.ended.pop(peer, None)
