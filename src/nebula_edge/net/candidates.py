"""The table of peers found by mDNS and not (yet) connected: bounded, expiring, backed off.

An mDNS answer is unauthenticated: anyone on the LAN can send one naming any peer id and
any address. Each answer used to be dialled at once and remembered forever, so a forged
answer made every agent dial an address of the forger's choosing, again and again. Here
an answer only makes a *candidate*:

* at most :data:`MAX_CANDIDATES` of them; a new one evicts the one heard of least
  recently (counted);
* a candidate not heard of again (no mDNS answer, no connection) for
  :data:`CANDIDATE_TTL_S` is forgotten (counted);
* each is dialled when due: at once when new, then after a failure 1 s doubling to
  :data:`CANDIDATE_BACKOFF_MAX_S` (jittered); a connection resets its backoff, and a
  connected candidate counts as heard of for as long as it stays connected;
* at most :data:`MAX_CANDIDATE_DIALS` candidate dials are in flight at once.

Pure and synchronous, time passed in (``time.monotonic()`` seconds); not thread-safe:
``P2PHost`` calls it under its lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = [
    "CANDIDATE_BACKOFF_INITIAL_S",
    "CANDIDATE_BACKOFF_MAX_S",
    "CANDIDATE_TTL_S",
    "MAX_CANDIDATES",
    "MAX_CANDIDATE_ADDRS",
    "MAX_CANDIDATE_DIALS",
    "CandidateTable",
]

MAX_CANDIDATES = 256
"""Peers found by mDNS and kept for dialling. A LAN segment of agents is tens of hosts;
256 leaves room for a large site while a flood of forged answers costs at most 256
entries of at most 8 addresses (about 200 KiB)."""
CANDIDATE_TTL_S = 300.0
"""A candidate not heard of for 5 minutes is forgotten. Agents re-announce every 15 s,
so a live agent is heard of about 20 times within it (and a connected one is kept)."""
CANDIDATE_BACKOFF_INITIAL_S = 1.0
CANDIDATE_BACKOFF_MAX_S = 60.0
"""After failures, a candidate is dialled again at most once a minute: a forged answer
makes at most ~10 dials before it expires (1+2+4+...+60 s within 300 s)."""
MAX_CANDIDATE_DIALS = 4
"""Candidate dials in flight at once (each may take up to ``DIAL_TIMEOUT_S``, 10 s): a
flood of answers naming unreachable addresses cannot fill the swarm with dials."""
MAX_CANDIDATE_ADDRS = 8
"""Addresses kept per candidate (an agent advertises one per interface)."""


@dataclass
class _Candidate:
    addrs: list[str]
    heard_at: float
    due_at: float
    backoff: float = CANDIDATE_BACKOFF_INITIAL_S
    dialling: bool = False


class CandidateTable:
    """Candidates by peer id, least recently heard of first."""

    def __init__(
        self,
        *,
        max_size: int = MAX_CANDIDATES,
        ttl_s: float = CANDIDATE_TTL_S,
        max_dials: int = MAX_CANDIDATE_DIALS,
        jitter: Callable[[float], float] = lambda delay: delay,
    ) -> None:
        self.max_size, self.ttl_s, self.max_dials = max_size, ttl_s, max_dials
        self._jitter = jitter
        self._table: OrderedDict[str, _Candidate] = OrderedDict()
        self.evicted = 0
        self.expired = 0
        self.dials = 0
        self.dial_failures = 0

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, peer: object) -> bool:
        return peer in self._table

    @property
    def dialling(self) -> int:
        return sum(c.dialling for c in self._table.values())

    def offer(self, peer: str, addrs: Iterable[str], now: float) -> bool:
        """An mDNS answer for ``peer``; True if it is a new candidate (due at once)."""
        cand = self._table.get(peer)
        new = list(dict.fromkeys(addrs))[:MAX_CANDIDATE_ADDRS]
        if cand is not None:
            cand.heard_at = now
            for addr in new:
                if addr not in cand.addrs:
                    cand.addrs.append(addr)
            del cand.addrs[:-MAX_CANDIDATE_ADDRS]
            self._table.move_to_end(peer)
            return False
        if not new:
            return False
        while len(self._table) >= self.max_size:
            victim = next((p for p, c in self._table.items() if not c.dialling), None)
            if victim is None:
                return False  # every slot is being dialled: the newcomer waits its turn
            del self._table[victim]
            self.evicted += 1
        self._table[peer] = _Candidate(new, now, now)
        return True

    def due(self, now: float, busy: set[str]) -> list[tuple[str, list[str]]]:
        """Expire stale candidates; return those to dial now (marked as dialling).

        ``busy``: peers connected or redialled by other means (kept fresh, not dialled).
        """
        for peer in busy & self._table.keys():
            self._table[peer].heard_at = now
            self._table[peer].backoff = CANDIDATE_BACKOFF_INITIAL_S
        for peer in [p for p, c in self._table.items()
                     if not c.dialling and now - c.heard_at > self.ttl_s]:
            del self._table[peer]
            self.expired += 1
        room = self.max_dials - self.dialling
        out: list[tuple[str, list[str]]] = []
        for peer, cand in self._table.items():
            if room <= 0:
                break
            if cand.dialling or peer in busy or cand.due_at > now:
                continue
            cand.dialling = True
            room -= 1
            self.dials += 1
            out.append((peer, list(cand.addrs)))
        return out

    def dialled(self, peer: str, ok: bool, now: float) -> None:
        """A dial of ``peer`` ended; a failure backs it off."""
        cand = self._table.get(peer)
        if cand is None:
            return
        cand.dialling = False
        if ok:
            cand.backoff = CANDIDATE_BACKOFF_INITIAL_S
            cand.heard_at = now
            cand.due_at = now + CANDIDATE_BACKOFF_INITIAL_S  # if it drops at once
        else:
            self.dial_failures += 1
            cand.due_at = now + self._jitter(cand.backoff)
            cand.backoff = min(cand.backoff * 2, CANDIDATE_BACKOFF_MAX_S)

    def reset_dialling(self) -> None:
        """A new host incarnation: dials of the old one will never report back."""
        for cand in self._table.values():
            cand.dialling = False

    def wait(self, now: float, cap: float = 1.0) -> float:
        """Seconds until the next candidate is due (at most ``cap``: expiry also ticks)."""
        waits = [c.due_at - now for c in self._table.values() if not c.dialling]
        return max(0.0, min([cap, *waits]))
