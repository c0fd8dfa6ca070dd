"""Sans-IO mesh logic: the fetch order and the table of connected peers.

Nothing here does I/O or reads a clock: the time is passed in. ``net/service.py`` feeds
events in and carries the decisions out. The digest and the sync exchange are in
``mesh/index.py`` and ``mesh/sync.py``, rounds in ``mesh/rounds.py``, membership in
``mesh/members.py``.

Convergence: every agent's state is a set of manifests plus tombstones; each side takes
what ``manifest.admits`` lets in. Because the version rule is a total order and every
store keeps the same ``keep`` newest versions, the sets become equal, and so does every
agent's current version of every name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from nebula_edge.manifest import Manifest


def newest_first(manifests: Iterable[Manifest]) -> list[Manifest]:
    """Fetch order: newest versions first, so the current version is runnable soonest."""
    return sorted(manifests, key=lambda m: m.key, reverse=True)


@dataclass
class PeerRecord:
    peer_id: str
    addrs: tuple[str, ...]
    connected_since: float | None
    http_url: str | None = None
    version: str | None = None
    holds: set[str] = field(default_factory=set)
    """sha256s this peer is known to hold (from its sync answers and announcements)."""


class PeerTable:
    """Who is connected, how to reach them over HTTP, and what they hold."""

    def __init__(self) -> None:
        self._peers: dict[str, PeerRecord] = {}

    def _get(self, peer_id: str) -> PeerRecord:
        rec = self._peers.get(peer_id)
        if rec is None:
            rec = self._peers[peer_id] = PeerRecord(peer_id, (), None)
        return rec

    def connected(self, peer_id: str, addrs: Iterable[str], now: float) -> bool:
        """Record a connection; True if the peer was not connected before."""
        rec = self._get(peer_id)
        new = rec.connected_since is None
        if new:
            rec.connected_since = now
        if addrs:
            rec.addrs = tuple(addrs)
        return new

    def lost(self, peer_id: str) -> bool:
        """Record a lost connection; True if the peer was connected. What it holds is
        forgotten: when it returns, a sync tells us again."""
        rec = self._peers.get(peer_id)
        if rec is None or rec.connected_since is None:
            return False
        rec.connected_since = None
        rec.holds.clear()
        return True

    def discovered(self, peer_id: str, addrs: Iterable[str], http_url: str | None,
                   version: str | None) -> PeerRecord:
        rec = self._get(peer_id)
        if addrs:
            rec.addrs = tuple(addrs)
        if http_url:
            rec.http_url = http_url
        if version:
            rec.version = version
        return rec

    def set_holdings(self, peer_id: str, shas: Iterable[str]) -> None:
        self._get(peer_id).holds = set(shas)

    def add_holding(self, peer_id: str, sha: str) -> None:
        self._get(peer_id).holds.add(sha)

    def is_connected(self, peer_id: str) -> bool:
        rec = self._peers.get(peer_id)
        return rec is not None and rec.connected_since is not None

    def connected_peers(self) -> list[PeerRecord]:
        return [r for r in self._peers.values() if r.connected_since is not None]

    def holders(self, sha: str, prefer: str | None = None) -> list[str]:
        """Connected peers holding ``sha``; ``prefer`` first if it is one of them."""
        out = [r.peer_id for r in self.connected_peers() if sha in r.holds]
        if prefer is not None and prefer in out:
            out.remove(prefer)
            out.insert(0, prefer)
        return out

    def get(self, peer_id: str) -> PeerRecord | None:
        return self._peers.get(peer_id)
