"""Sans-IO mesh logic: digests, what to fetch after a sync, and the table of peers.

Nothing here does I/O or reads a clock: the time is passed in. ``net/service.py`` feeds
events in and carries the decisions out.

Convergence (anti-entropy, as in Serf's push/pull): every agent's state is a set of
manifests plus tombstones. Two agents compare a digest of their sets; if it differs,
each sends the other its whole set (a few hundred bytes a version) and each side takes
what ``manifest.admits`` lets in. Because the version rule is a total order and the
store keeps the same ``keep`` newest versions everywhere, the sets become equal, and so
does every agent's current version of every name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from nebula_edge.manifest import Manifest, Tombstone


def digest(manifests: Iterable[Manifest], tombstones: Iterable[Tombstone]) -> str:
    """Order-independent digest of a manifest set and its tombstones."""
    items = sorted(
        [f"m:{m.name}:{m.file_id}" for m in manifests]
        + [f"t:{t.name}:{t.deleted_at!r}" for t in tombstones]
    )
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


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
