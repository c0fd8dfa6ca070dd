"""Which version of a name the mesh runs, and what an agent may answer with (sans-IO).

The ordering rule (``manifest.Manifest.key``) is a total order on versions: the highest
``(deployed_at, sha256, manifest id)`` not covered by a tombstone wins. This module keeps
the rule safe against two failures:

* **Skewed clocks.** ``deployed_at`` is a hybrid logical clock per name: a new change gets
  ``max(now, floor + TICK_S)`` where ``floor`` is the newest time the name's state carries
  (``next_time``), so an agent whose clock is behind still orders its change after what it
  has seen. A record dated more than ``MAX_FUTURE_S`` ahead of the receiver's clock is
  *held back* (``too_far_ahead``): not stored, not adopted. Nothing is remembered about it
  but its id (to count and log it once): sync offers it again every round and it is
  re-evaluated with the clock of that moment, so it lands once it is no longer in the
  future, and until then a correctly clocked deploy, rollback or delete is not blocked
  by it.
* **Agents that cannot hold the winner.** An agent refuses a version over its own
  ``-max-module-size``, ``-max-memory`` or ``-max-timeout``. ``VersionBook`` remembers
  the best version each name has in the mesh, refused ones included, fed by every gossip
  announcement and sync answer; ``VersionBook.newer_than`` tells the exec path that what
  this agent holds is not the winner, so the call is forwarded to a peer holding the
  winner, or refused with ``version_unavailable``, never answered with an older version.

Nothing here does I/O or reads a clock: ``now`` is passed in.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from nebula_edge.errors import VersionUnavailable
from nebula_edge.manifest import MAX_FUTURE_S as _MAX_FUTURE_S
from nebula_edge.manifest import Manifest, Tombstone

UNAVAILABLE = VersionUnavailable.code

MAX_FUTURE_S = _MAX_FUTURE_S
"""How far ahead of this agent's clock a change may be dated and still be adopted: 60 s.
NTP keeps LAN hosts within milliseconds of each other; a minute tolerates a host whose NTP
sync lags or a VM resumed with a stale clock, while a clock set wrong by hours or days
(a dead RTC battery, local time taken for UTC) is caught. It also bounds how long a
future-dated change can stand in the way of correctly clocked ones: at most a minute.
(Kerberos allows 5 minutes both ways; the API keeps that for the past, where a replayed
order changes nothing, but the future is what can freeze a name.)"""

TICK_S = 0.001
"""The logical step of the hybrid clock: a change made while the name's state is dated
ahead of this agent's clock is ordered 1 ms after that state (the manifest's time is a
float of seconds; 1 ms survives its JSON round trip exactly enough to stay distinct)."""

MAX_BOOK_NAMES = 2000
"""Names ``VersionBook`` remembers (least recently told first out): twice the 1000 names
an agent keeps (``max_modules``), so every name this agent holds fits with room for
names in flight. About 1 KiB a name, so at most ~2 MiB."""

MAX_ONCE_IDS = 1024
"""Record ids remembered per ``Once`` set (held-back records; versions refused), to count
and log each once however often sync offers it. Forgetting one only means counting it
again; 1024 x 16 hex characters is ~100 KiB at most."""


def next_time(now: float, floor: float | None) -> float:
    """The hybrid logical clock: the time for a new change of a name whose state (current
    version, tombstone) is dated ``floor``: the wall clock, or just after ``floor`` if the
    clock has not passed it."""
    if floor is None or now > floor:
        return now
    return floor + TICK_S


def too_far_ahead(at: float, now: float, max_future: float = MAX_FUTURE_S) -> bool:
    """Whether a change dated ``at`` is held back by an agent whose clock reads ``now``."""
    return not math.isfinite(at) or at > now + max_future


def record_time(rec: Manifest | Tombstone) -> float:
    return rec.deleted_at if isinstance(rec, Tombstone) else rec.deployed_at


REFUSALS = {
    "too_big": "it is over this agent's -max-module-size",
    "over_limits": "its limits are over this agent's -max-memory or -max-timeout",
    "max_modules": "this agent already holds its maximum number of modules",
}
"""Why an agent does not hold a version a peer offers (the ``reason`` label of
``nebula_edge_peer_refused_total``)."""


def unavailable(want: Manifest, why: str | None) -> VersionUnavailable:
    """The error for a call this agent cannot run with the mesh's current version ``want``
    and no connected peer holding it took."""
    reason = REFUSALS.get(why or "", "its bytes are not on this agent yet")
    return VersionUnavailable(
        f"the mesh runs {want.name} v{want.version} (id {want.id}); {reason}, and no "
        "connected peer holding it took the call (this agent does not answer with an older "
        "version)", module=want.name, version=want.version, id=want.id)


class Once:
    """Ids of records already counted and logged (held back for being dated in the future,
    or refused), so that each is counted once however often sync offers it again.
    Bounded by ``MAX_ONCE_IDS`` (least recently seen out)."""

    def __init__(self, cap: int = MAX_ONCE_IDS) -> None:
        self.cap = cap
        self._ids: OrderedDict[str, None] = OrderedDict()

    def first_time(self, rec_id: str) -> bool:
        """Record ``rec_id``; True the first time it is seen (since it was last evicted)."""
        if rec_id in self._ids:
            self._ids.move_to_end(rec_id)
            return False
        self._ids[rec_id] = None
        while len(self._ids) > self.cap:
            self._ids.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._ids)


class VersionBook:
    """The best version known per name, from peers (gossip and sync), including versions
    this agent refused to hold. Bounded by ``cap`` names, least recently told first out
    (a name whose entry was dropped is told again by the next sync round)."""

    def __init__(self, cap: int = MAX_BOOK_NAMES) -> None:
        self.cap = cap
        self._best: OrderedDict[str, Manifest] = OrderedDict()
        self._why: dict[str, str] = {}
        """manifest id -> why this agent refused it (for the caller's error message)."""

    def note(self, m: Manifest, refused: str | None = None) -> bool:
        """A peer has ``m``. True if it is the best version of its name known here now."""
        old = self._best.get(m.name)
        if old is not None:
            self._best.move_to_end(m.name)
            if m.key < old.key:
                return False
            if m.key > old.key:
                self._why.pop(old.id, None)
        self._best[m.name] = m
        if refused is not None:
            self._why[m.id] = refused
        while len(self._best) > self.cap:
            _, gone = self._best.popitem(last=False)
            self._why.pop(gone.id, None)
        return True

    def best(self, name: str) -> Manifest | None:
        return self._best.get(name)

    def refused(self, m: Manifest) -> str | None:
        """Why this agent refused to hold ``m`` (None if it did not, or does not know)."""
        return self._why.get(m.id)

    def newer_than(self, held: Manifest, tombstone: Tombstone | None) -> Manifest | None:
        """The mesh's winning version of ``held.name`` if it is newer than ``held`` (the
        version this agent would run), else None. A tombstone covering the best known
        version means the mesh deleted it: it does not count."""
        best = self._best.get(held.name)
        if best is None or best.key <= held.key:
            return None
        if tombstone is not None and tombstone.covers(best):
            return None
        return best

    def __len__(self) -> int:
        return len(self._best)
