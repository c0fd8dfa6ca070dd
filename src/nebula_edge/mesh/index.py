"""The digest of an agent's holdings, kept up to date on each write (sans-IO).

Anti-entropy compares what two agents hold without sending it. The holdings are the
records (manifests and tombstones) per module name; the index keeps three levels:

* a **name hash** per module name: 64 bits of sha256 over the name's kept versions and
  its tombstone (``NAME_HASH_BYTES``);
* ``BUCKETS`` **bucket hashes**: the XOR of the name hashes of the names that fall into
  the bucket (by the first byte of sha256(name)), so a write changes one bucket in O(1)
  instead of re-hashing the whole store (the old digest sorted and hashed every record
  every round: 25,000 records for 5,000 modules);
* a **root**: sha256 over the bucket hashes, recomputed lazily after a change.

Two agents with equal roots hold the same records (idle anti-entropy is one ~150-byte
request and answer). When they differ, the bucket hashes (4 KiB) tell which buckets
differ, the name hashes of those buckets tell which names, and only those names'
records cross the wire (``mesh/sync.py``).

``update(name, manifests, tombstone, keep)`` is given every version the agent counts as
held for ``name``: the ones stored plus the ones it refused for good (too big for this
agent's limits): an agent that will never take a version still says it knows it, so its
digest agrees with its peers' and it costs them nothing beyond ordinary idle rounds. The
index applies the store's own rule (the ``keep`` newest not covered by the tombstone), so
the refused versions age out exactly as stored ones do.

Tombstones older than the horizon (``collect``) leave the index and the store: see
``TOMBSTONE_HORIZON_S`` in ``mesh/sync.py``.

Not thread-safe: the shell guards it with one lock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from nebula_edge.manifest import Manifest, Tombstone

BUCKETS = 256
"""Buckets of the second level. 256 x 16 hex characters is a 4 KiB answer when roots
differ; with 5,000 names, ~20 names a bucket, so one differing name costs ~20 name
hashes (600 bytes) to find. 1,024 buckets would halve that and quadruple the 4 KiB."""
NAME_HASH_BYTES = 8
"""64-bit name hashes: two different holdings of a name collide with chance 2^-64."""


def bucket_of(name: str) -> int:
    return hashlib.sha256(name.encode()).digest()[0] * BUCKETS // 256


def kept(manifests: Iterable[Manifest], tombstone: Tombstone | None, keep: int) -> list[Manifest]:
    """The versions a store applying ``manifest.admits`` keeps: the ``keep`` newest not
    covered by the tombstone, oldest first."""
    live = sorted({m.key: m for m in manifests
                   if tombstone is None or not tombstone.covers(m)}.values(),
                  key=lambda m: m.key)
    return live[-keep:] if keep > 0 else []


def name_hash(name: str, manifests: Iterable[Manifest], tombstone: Tombstone | None) -> int:
    """Hash of one name's holdings (0 if it holds nothing: an absent name)."""
    items = sorted(f"m:{m.file_id}" for m in manifests)
    if tombstone is not None:
        items.append(f"t:{tombstone.deleted_at!r}")
    if not items:
        return 0
    h = hashlib.sha256("\n".join([name, *items]).encode()).digest()[:NAME_HASH_BYTES]
    return int.from_bytes(h, "big") or 1


class DigestIndex:
    """Name hashes, bucket hashes and the root of an agent's holdings.

    The name hashes live in one table per bucket; ``fork()`` makes a copy that shares the
    tables until either side writes to one (copy on write per bucket), which is how the
    simulator gives 1,000 agents the same 5,000 modules without 1,000 copies."""

    def __init__(self) -> None:
        self._tables: list[dict[str, int]] = [{} for _ in range(BUCKETS)]
        self._owned = [True] * BUCKETS
        self._buckets = [0] * BUCKETS
        self._count = 0
        self._root: str | None = None

    def fork(self) -> DigestIndex:
        """A copy of this index; both share tables until they write (O(BUCKETS))."""
        child = DigestIndex.__new__(DigestIndex)
        child._tables = list(self._tables)
        child._owned = [False] * BUCKETS
        self._owned = [False] * BUCKETS
        child._buckets = list(self._buckets)
        child._count = self._count
        child._root = self._root
        return child

    def update(self, name: str, manifests: Iterable[Manifest], tombstone: Tombstone | None,
               keep: int) -> bool:
        """Set ``name``'s holdings; True if its hash changed."""
        new = name_hash(name, kept(manifests, tombstone, keep), tombstone)
        b = bucket_of(name)
        old = self._tables[b].get(name, 0)
        if new == old:
            return False
        if not self._owned[b]:
            self._tables[b] = dict(self._tables[b])
            self._owned[b] = True
        table = self._tables[b]
        self._buckets[b] ^= old ^ new
        if new:
            table[name] = new
        else:
            del table[name]
        self._count += (new != 0) - (old != 0)
        self._root = None
        return True

    def root(self) -> str:
        if self._root is None:
            h = hashlib.sha256()
            for v in self._buckets:
                h.update(v.to_bytes(NAME_HASH_BYTES, "big"))
            self._root = h.hexdigest()[:32]
        return self._root

    def buckets(self) -> tuple[str, ...]:
        return tuple(f"{v:016x}" for v in self._buckets)

    def differing(self, theirs: tuple[str, ...]) -> list[int]:
        """Buckets whose hash differs from ``theirs`` (all of them if it has the wrong
        length)."""
        if len(theirs) != BUCKETS:
            return list(range(BUCKETS))
        return [i for i, (a, b) in enumerate(zip(self.buckets(), theirs, strict=True)) if a != b]

    def names_in(self, bucket: int) -> list[str]:
        return sorted(self._tables[bucket])

    def hash_of(self, name: str) -> int:
        return self._tables[bucket_of(name)].get(name, 0)

    def hashes_in(self, buckets: Iterable[int]) -> dict[str, str]:
        """``{name: hex hash}`` of every name in ``buckets``."""
        return {n: f"{h:016x}" for b in buckets for n, h in self._tables[b].items()}

    def __len__(self) -> int:
        return self._count
