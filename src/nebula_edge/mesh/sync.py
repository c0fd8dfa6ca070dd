"""Difference-only anti-entropy: what to answer, what to ask next, what a peer holds.

A round, started by the asker with one peer (``mesh/rounds.py`` picks which, and when)::

    asker                                    answerer
    SyncRequest(root, member digest)   ->
                                       <-    SyncResponse(root, bucket hashes if the
                                             roots differ, members if theirs differ)
    PullRequest(<= 32 differing buckets,
                my name hashes there,
                cursor)                ->
                                       <-    PullResponse(records of the names whose
                                             hashes differ, <= 256 records, next cursor)
    ... more pieces, then the next 32 buckets (at most MAX_PIECES_PER_ROUND pieces) ...

Only the names that differ cross the wire, in bounded pieces, so a set of any size
converges (the next round goes on where a capped one stopped). A pull only takes: the
answerer, seeing the roots differ, starts its own round with the asker unless it did
so within an interval (``Rounds.recent``), so both sides converge and two agents that
can never agree do not trigger each other in a loop. Equal roots mean equal holdings:
the asker records that the peer holds what it holds (holder counts, forwarding).

Pure functions and one small state machine (``PullSession``); the shell does the I/O,
signature checks and fetches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nebula_edge.manifest import Manifest, Tombstone
from nebula_edge.mesh import wire
from nebula_edge.mesh.index import BUCKETS, DigestIndex, bucket_of

MAX_PIECES_PER_ROUND = 64
"""Pull answers per round: 64 x 256 = 16,384 records a round at most (~8 MB); a bigger
difference goes on in the next round, so one round never holds a peer for long."""

Records = Callable[[str], tuple[list[Manifest], Tombstone | None]]
"""``name -> (kept versions, tombstone)`` as the answerer's store holds them now."""


def answer_sync(index: DigestIndex, req: wire.SyncRequest,
                members: tuple[str, Callable[[], tuple[wire.Member, ...]]] | None = None
                ) -> wire.SyncResponse:
    """The answer to a sync request: bucket hashes only if the roots differ, members
    only if the member digests differ (``members`` = (my member digest, my list))."""
    root = index.root()
    buckets = None if req.digest == root else index.buckets()
    listed = None
    if members is not None and req.members and req.members != members[0]:
        listed = members[1]()
    return wire.SyncResponse(root, buckets, listed)


def answer_pull(index: DigestIndex, req: wire.PullRequest, records: Records) -> wire.PullResponse:
    """One piece: the records of the names in ``req.buckets`` (after the cursor) whose
    hash differs from the asker's, at most ``PIECE_RECORDS`` records and
    ``PIECE_NAMES`` names."""
    wanted = set(req.buckets)
    candidates = {n for b in wanted if 0 <= b < BUCKETS for n in index.names_in(b)}
    candidates.update(n for n in req.hashes if bucket_of(n) in wanted)
    names: list[str] = []
    ms: list[Manifest] = []
    ts: list[Tombstone] = []
    for n in sorted(c for c in candidates if c > req.after):
        if req.hashes.get(n) == f"{index.hash_of(n):016x}":
            continue
        got, t = records(n)
        size = len(got) + (t is not None)
        if names and (len(ms) + len(ts) + size > wire.PIECE_RECORDS
                      or len(names) >= wire.PIECE_NAMES):
            return wire.PullResponse(tuple(names), tuple(ms), tuple(ts), names[-1])
        names.append(n)
        ms.extend(got)
        if t is not None:
            ts.append(t)
    return wire.PullResponse(tuple(names), tuple(ms), tuple(ts), None)


@dataclass
class PullSession:
    """The asker's side of one round after the roots differed: which pull to send next.

    ``next_request()`` gives the next ``PullRequest`` (None when done); feed each answer
    to ``received()``. ``covered`` collects every name the answers covered, with the
    answerer's records of it: what the peer holds of the names that differ."""

    index: DigestIndex
    todo: list[int]
    after: str = ""
    pieces: int = 0
    covered: dict[str, list[Manifest]] = field(default_factory=dict)
    tombstones: list[Tombstone] = field(default_factory=list)
    complete: bool = False
    """True once every differing bucket was pulled (not cut by MAX_PIECES_PER_ROUND)."""

    @classmethod
    def start(cls, index: DigestIndex, their_buckets: tuple[str, ...]) -> PullSession:
        return cls(index, index.differing(their_buckets))

    def next_request(self) -> wire.PullRequest | None:
        if not self.todo:
            self.complete = True
            return None
        if self.pieces >= MAX_PIECES_PER_ROUND:
            return None
        chunk = tuple(self.todo[:wire.MAX_PULL_BUCKETS])
        hashes = {n: h for n, h in self.index.hashes_in(chunk).items() if n > self.after}
        return wire.PullRequest(chunk, hashes, self.after)

    def received(self, resp: wire.PullResponse) -> None:
        self.pieces += 1
        for n in resp.names:
            self.covered.setdefault(n, [])
        for m in resp.manifests:
            if m.name in self.covered:
                self.covered[m.name].append(m)
        self.tombstones.extend(t for t in resp.tombstones if t.name in self.covered)
        if resp.next is None or resp.next <= self.after:  # done, or no progress: next chunk
            del self.todo[:wire.MAX_PULL_BUCKETS]
            self.after = ""
        else:
            self.after = resp.next

    def manifests(self) -> list[Manifest]:
        return [m for ms in self.covered.values() for m in ms]


def peer_holdings(mine: Iterable[Manifest], covered: dict[str, list[Manifest]]
                  ) -> tuple[set[str], set[str]]:
    """(sha256s, names) a peer holds, from a round with it: what this agent holds, except
    for the names the round covered, where the peer's own records count."""
    shas: set[str] = set()
    names: set[str] = set()
    for m in mine:
        if m.name not in covered:
            shas.add(m.sha256)
            names.add(m.name)
    for name, ms in covered.items():
        if ms:
            names.add(name)
            shas.update(m.sha256 for m in ms)
    return shas, names
