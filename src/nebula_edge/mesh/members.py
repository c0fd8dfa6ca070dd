"""Who is in the mesh: a member list spread by anti-entropy, SWIM/Serf-style (sans-IO).

An agent holds direct connections to a bounded number of peers (``CONN_LOW`` ..
``CONN_HIGH``), but ``GET /peers`` lists every live member of the mesh. Membership rides
on the sync rounds: a ``SyncRequest`` carries the digest of the asker's member list, and
the answer carries the answerer's list only when the digests differ (idle: nothing).

Each member is ``(peer id, incarnation, alive, addrs)``. The rules are SWIM's:

* a record with a higher incarnation replaces a lower one; at equal incarnations "dead"
  beats "alive";
* only an agent itself raises its incarnation: when it learns it was reported dead, it
  refutes with incarnation + 1, which beats the report everywhere it spreads;
* an agent that loses its direct connection to a peer stops listing it at once
  (suspected) and, if it does not get it back within ``SUSPECT_S``, reports it dead
  (a connection it closed itself to stay under ``CONN_HIGH`` is not a failure);
* dead records are kept ``DEAD_KEEP_S`` (so an old "alive" cannot resurrect them), then
  collected.

Failure detection therefore costs nothing per member: the direct connections' liveness
(``net/p2p.py``, a bounded number of probes per heartbeat) is the only probing, and a
death spreads with the member digests in O(log n) rounds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from nebula_edge.mesh.wire import MAX_MEMBERS, Member

CONN_LOW = 24
"""Direct connections an agent seeks (dials members while it holds fewer). A fleet of
up to 25 agents is a full mesh, as on a LAN today; a bigger one a random graph of
degree >= 24, whose diameter at 1,000 agents is 3 hops (gossipsub keeps its own mesh of
degree 6 out of these)."""
CONN_HIGH = 32
"""Direct connections an agent keeps at most (libp2p's connection manager trims to its
low watermark past its high one). Each connection costs a probe share, yamux/noise
buffers and gossipsub state: this bounds them however many peers mDNS shows."""
SUSPECT_S = 10.0
"""A lost peer not back within this long is reported dead (py-libp2p redials at 0.5 s
doubling: 4 attempts fit, and a restart of an agent takes ~2 s)."""
DEAD_KEEP_S = 300.0
"""Dead records are kept 5 minutes: far longer than a report takes to spread (seconds
at 1,000 agents in the simulator), so no stale "alive" brings them back."""


def _entry_hash(peer: str, incarnation: int, alive: bool) -> int:
    h = hashlib.sha256(f"{peer}:{incarnation}:{int(alive)}".encode()).digest()[:8]
    return int.from_bytes(h, "big")


@dataclass
class _Entry:
    incarnation: int
    alive: bool
    addrs: tuple[str, ...]
    since: float
    """When this entry last changed state (for collecting dead ones)."""


class Members:
    """The member list of one agent (itself included)."""

    def __init__(self, self_id: str, incarnation: int, addrs: Iterable[str], now: float) -> None:
        self.self_id = self_id
        self._entries: dict[str, _Entry] = {self_id: _Entry(incarnation, True, tuple(addrs), now)}
        self._lost: dict[str, tuple[float, int]] = {}
        """peer -> (when its direct connection was lost, its incarnation then)."""
        self._dead: set[str] = set()
        self._alive_count = 1
        self._xor = _entry_hash(self_id, incarnation, True)
        self._listed: tuple[Member, ...] | None = None

    # ------------------------------------------------------------------ views
    def digest(self) -> str:
        """XOR of 64-bit hashes of every (id, incarnation, alive): O(1) per change."""
        return f"{self._xor:016x}"

    def listed(self) -> tuple[Member, ...]:
        """The list sent to a peer: alive members first, at most ``MAX_MEMBERS``."""
        if self._listed is None:
            out = sorted(self._entries.items(), key=lambda kv: (not kv[1].alive, kv[0]))
            self._listed = tuple(Member(pid, e.incarnation, e.alive, e.addrs)
                                 for pid, e in out[:MAX_MEMBERS])
        return self._listed

    def dead(self) -> list[str]:
        """Members reported dead and not yet collected (Serf tries to reconnect to them:
        after a partition heals, that is how the two sides find each other again)."""
        return sorted(self._dead)

    def alive(self) -> list[str]:
        """Live members other than this agent, sorted. A peer whose direct connection this
        agent lost is left out at once (suspected), though it is reported dead to others
        only after ``SUSPECT_S``."""
        return sorted(p for p, e in self._entries.items()
                      if e.alive and p != self.self_id and p not in self._lost)

    def is_alive(self, peer: str) -> bool:
        e = self._entries.get(peer)
        return e is not None and e.alive

    def addrs(self, peer: str) -> tuple[str, ...]:
        e = self._entries.get(peer)
        return e.addrs if e is not None else ()

    def me(self) -> Member:
        """This agent's own record (what it publishes on joining or refuting)."""
        e = self._entries[self.self_id]
        return Member(self.self_id, e.incarnation, True, e.addrs)

    def record(self, peer: str) -> Member | None:
        e = self._entries.get(peer)
        return Member(peer, e.incarnation, e.alive, e.addrs) if e is not None else None

    def incarnation(self, peer: str) -> int | None:
        e = self._entries.get(peer)
        return e.incarnation if e is not None else None

    def count(self) -> int:
        """Live members, this agent included (scales the sync interval)."""
        return self._alive_count

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ events
    def _set(self, peer: str, inc: int, alive: bool, addrs: tuple[str, ...], now: float) -> bool:
        e = self._entries.get(peer)
        if e is not None and (e.incarnation, e.alive) == (inc, alive):
            if addrs and addrs != e.addrs:
                e.addrs = addrs
                self._listed = None
            return False
        if e is None and len(self._entries) >= MAX_MEMBERS:
            return False  # bounded: a liar cannot grow the list past the cap
        self._entries[peer] = _Entry(inc, alive, addrs or (e.addrs if e else ()), now)
        if e is not None:
            self._xor ^= _entry_hash(peer, e.incarnation, e.alive)
        self._xor ^= _entry_hash(peer, inc, alive)
        self._alive_count += alive - (e is not None and e.alive)
        if alive:
            self._dead.discard(peer)
        else:
            self._dead.add(peer)
        self._listed = None
        return True

    def connected(self, peer: str, addrs: Iterable[str], now: float) -> None:
        """A direct connection came up. An unknown peer is added by its own list (the
        sync on connect brings it, with its real incarnation): adding it here at a guessed
        one would make member digests disagree until that list spread. A dead record is
        left for the peer to refute: our connection might be a stale one."""
        self._lost.pop(peer, None)
        e = self._entries.get(peer)
        if e is not None and addrs:
            e.addrs = tuple(addrs)
            self._listed = None

    def lost(self, peer: str, now: float, trimmed: bool = False) -> None:
        """The direct connection to ``peer`` went down (``trimmed``: we closed it)."""
        e = self._entries.get(peer)
        if not trimmed and e is not None and e.alive:
            self._lost[peer] = (now, e.incarnation)

    def merge(self, members: Iterable[Member], now: float) -> list[str]:
        """Take a peer's list; returns the peers that became alive here."""
        became: list[str] = []
        for m in members:
            if m.peer_id == self.self_id:
                me = self._entries[self.self_id]
                if not m.alive and m.incarnation >= me.incarnation:
                    self._set(self.self_id, m.incarnation + 1, True, me.addrs, now)  # refute
                continue
            e = self._entries.get(m.peer_id)
            if e is None:
                if m.alive and self._set(m.peer_id, m.incarnation, True, m.addrs, now):
                    became.append(m.peer_id)
                elif not m.alive:
                    self._set(m.peer_id, m.incarnation, False, m.addrs, now)
            elif m.incarnation > e.incarnation or (
                    m.incarnation == e.incarnation and e.alive and not m.alive):
                was = e.alive and m.peer_id not in self._lost
                if m.alive:
                    self._lost.pop(m.peer_id, None)  # a newer incarnation: it is back
                self._set(m.peer_id, m.incarnation, m.alive, m.addrs, now)
                if m.alive and not was:
                    became.append(m.peer_id)
        return became

    def tick(self, now: float, connected: set[str]) -> list[str]:
        """Report dead the peers lost more than ``SUSPECT_S`` ago and not back; collect
        dead records older than ``DEAD_KEEP_S``. Returns the peers reported dead."""
        dead: list[str] = []
        for peer, (at, inc) in list(self._lost.items()):
            if peer in connected:
                del self._lost[peer]
            elif now - at >= SUSPECT_S:
                del self._lost[peer]
                e = self._entries.get(peer)
                if e is not None and e.alive and e.incarnation == inc:
                    self._set(peer, inc, False, e.addrs, now)
                    dead.append(peer)
        for peer in [p for p in self._dead if now - self._entries[p].since >= DEAD_KEEP_S]:
            e = self._entries.pop(peer)
            self._xor ^= _entry_hash(peer, e.incarnation, e.alive)
            self._dead.discard(peer)
            self._listed = None
        return dead
