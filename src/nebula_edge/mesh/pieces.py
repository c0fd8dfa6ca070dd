"""Sans-IO decisions of a piece-wise ("swarm") transfer of one module's bytes.

A module larger than the gossip inline limit travels in pieces of ``PIECE_SIZE`` bytes.
Every agent that holds the blob, or some of its pieces, answers with a ``PieceTable``
(the sha256 of each piece) and the set of pieces it holds; a receiver asks each holder
for pieces, verifies each against the table and writes it to disk, and the whole blob
against the manifest's sha256 before anything is stored. A receiver serves the pieces it
holds at once, so bytes spread like a swarm (BitTorrent's rarest-first, without choking).

``Transfer`` is the state of one receiver's transfer: which pieces it holds, which are
asked for and from whom, what each peer said it holds. It decides which piece to ask
from whom (``requests``), whom to ask what it holds (``polls_due``), and when the
transfer has stopped making progress (``stalled``) or nobody holds the bytes
(``unavailable``). Nothing here does I/O or reads a clock: ``now`` is passed in; the
random choices come from a ``random.Random`` given in (tests seed it).
"""

from __future__ import annotations

import base64
import binascii
import json
import random
from dataclasses import dataclass, field

from nebula_edge.errors import BadRequest
from nebula_edge.store.pieces import PieceTable

PIECE_SIZE = 1024 * 1024
"""1 MiB: a 48 MiB module is 48 pieces, enough to spread over 8 agents; one piece is
about 10 ms on a gigabit link and the table of a 1 GiB module is 1,024 hashes (68 KB)."""
MAX_IN_FLIGHT = 8
"""Pieces one transfer asks for at once (8 MiB on the wire): enough to keep a LAN link
busy from several holders; each piece streams to disk, so it does not cost memory."""
PER_PEER_IN_FLIGHT = 2
"""Pieces asked from one partial holder at once: spreads a transfer over holders."""
SOLE_SEED_IN_FLIGHT = 4
"""Pieces asked from a full holder at once while nobody else has any piece this transfer
misses: hides the round trip per piece (48 MiB, one sender, one receiver: 1.9 s from the
deploy answer to running, against 2.4 s with 2)."""
PER_SEED_IN_FLIGHT = 1
"""Pieces asked from one full holder at once while partial holders have pieces this
transfer misses: the agent that deployed a module is asked by every receiver at once,
and its uploads are best spent on pieces nobody else holds yet."""
POLL_S = 0.25
"""How often a partial holder is asked again which pieces it holds while pieces are
missing (a full holder is not asked again): a receiver learns within 0.25 s that a peer
holds a piece, instead of asking the deploying agent for it (measured with 8 agents at
1 s: host 1 sent 4.5 copies of a 48 MiB module)."""
SEED_COPIES = 2
"""A full holder sends one piece at most twice per ``SEED_WINDOW_S`` (then answers busy,
and the receiver gets it from one of the agents that has it by then): BitTorrent's
super-seeding, so the deploying agent sends about two copies, not one per receiver."""
SEED_WINDOW_S = 2.0
"""After this long a piece may be sent again: if its first receivers left, nothing waits
more than 2 s for it."""
SEED_TRACK_MAX = 4096
"""(blob, piece) pairs remembered for ``SEED_COPIES`` (oldest dropped)."""
EMPTY_POLL_S = 1.0
EMPTY_POLL_MAX_S = 8.0
"""A peer that holds nothing of these bytes is asked again after 1, 2, 4, then 8 s."""
BUSY_BACKOFF_S = 0.25
"""A holder whose upload slots are full (503) is not asked again for this long."""
ERROR_BACKOFF_S = 1.0
"""A holder whose answer failed is left alone 1 s, doubling to ``ERROR_BACKOFF_MAX_S``."""
ERROR_BACKOFF_MAX_S = 8.0
STALL_S = 30.0
"""A transfer fails only when no byte arrived for this long: a slow link never fails it,
a cut one does (and the pieces held are kept for the next attempt)."""
NOBODY_POLLS = 3
"""Rounds of asking every peer before a transfer nobody can serve gives up: a fake
announcement costs each agent at most 3 small requests per peer (then a cooldown)."""
NOBODY_WAIT_S = 5.0
"""Nor before this long: a peer that has just connected (its HTTP address a moment away,
and maybe the announcer) gets the time to be asked."""
MAX_TABLE_BYTES = 4 * 1024 * 1024
"""A piece table of 60,000 hashes (60 GiB of module) fits; bounds a liar's answer."""


def piece_count(size: int) -> int:
    return max(1, -(-size // PIECE_SIZE))


def piece_span(i: int, size: int) -> tuple[int, int]:
    """``(offset, length)`` of piece ``i`` of a blob of ``size`` bytes."""
    off = i * PIECE_SIZE
    return off, max(0, min(PIECE_SIZE, size - off))


@dataclass(frozen=True)
class PieceInfo:
    """A peer's answer: the table (unless asked without it) and the pieces it holds."""

    table: PieceTable | None
    """Each piece's sha256 (``store.pieces.PieceTable``, the record the store keeps)."""
    have: frozenset[int] | None
    """None: every piece (the peer holds the whole blob)."""


def encode_have(have: frozenset[int] | set[int], n: int) -> str:
    bits = bytearray(-(-n // 8))
    for i in have:
        bits[i >> 3] |= 0x80 >> (i & 7)
    return base64.b64encode(bytes(bits)).decode()


def decode_have(raw: str, n: int) -> frozenset[int]:
    try:
        bits = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("piece bitfield is not base64") from None
    if len(bits) != -(-n // 8):
        raise BadRequest("piece bitfield has the wrong length")
    return frozenset(i for i in range(n) if bits[i >> 3] & (0x80 >> (i & 7)))


def encode_info(table: PieceTable | None, size: int, have: frozenset[int] | set[int] | None
                ) -> bytes:
    d: dict[str, object] = {"v": 1, "size": size, "piece_size": PIECE_SIZE}
    if table is not None:
        d["hashes"] = list(table.hashes)
    if have is not None:
        d["have"] = encode_have(have, piece_count(size))
    return json.dumps(d, separators=(",", ":")).encode()


def decode_info(data: bytes, size: int) -> PieceInfo:
    """A peer's piece answer for a blob of ``size`` bytes; ``BadRequest`` if malformed."""
    if len(data) > MAX_TABLE_BYTES:
        raise BadRequest("piece answer is too large")
    try:
        d = json.loads(data)
    except (ValueError, RecursionError):
        raise BadRequest("piece answer is not JSON") from None
    if not isinstance(d, dict) or d.get("v") != 1:
        raise BadRequest("piece answer is not a version 1 object")
    if d.get("size") != size or d.get("piece_size") != PIECE_SIZE:
        raise BadRequest(f"piece answer is for size {d.get('size')!r} in pieces of "
                         f"{d.get('piece_size')!r}, not {size} in {PIECE_SIZE}")
    n = piece_count(size)
    table = None
    raw = d.get("hashes")
    if raw is not None:
        if not isinstance(raw, list) or not all(
                isinstance(h, str) and len(h) == 64 for h in raw):
            raise BadRequest("piece hashes must be a list of sha256 hex strings")
        if len(raw) != n:
            raise BadRequest(f"piece table has {len(raw)} hashes; a {size} byte module "
                             f"has {n} pieces")
        table = PieceTable(size, PIECE_SIZE, tuple(h.lower() for h in raw))
    have_raw = d.get("have")
    if have_raw is not None and not isinstance(have_raw, str):
        raise BadRequest("piece bitfield must be a string")
    return PieceInfo(table, None if have_raw is None else decode_have(have_raw, n))


@dataclass
class PeerPieces:
    """What one peer said it holds, and how it has answered."""

    have: frozenset[int] = frozenset()
    complete: bool = False
    polled_at: float = -1e18
    empty_polls: int = 0
    in_flight: int = 0
    backoff_until: float = -1e18
    errors: int = 0
    banned: bool = False
    """Sent a piece that failed verification: never asked again in this transfer."""


@dataclass
class Transfer:
    """One receiver's transfer of one blob of ``size`` bytes."""

    size: int
    now: float
    rng: random.Random = field(default_factory=random.Random)
    have: set[int] = field(default_factory=set)
    in_flight: dict[int, str] = field(default_factory=dict)
    peers: dict[str, PeerPieces] = field(default_factory=dict)
    last_progress: float = 0.0

    def __post_init__(self) -> None:
        self.n = piece_count(self.size)
        self.last_progress = self.now
        self.started = self.now

    # ------------------------------------------------------------------ state
    @property
    def done(self) -> bool:
        return len(self.have) == self.n

    def missing(self) -> list[int]:
        return [i for i in range(self.n) if i not in self.have]

    def held_bytes(self) -> int:
        return sum(piece_span(i, self.size)[1] for i in self.have)

    def _peer(self, peer: str) -> PeerPieces:
        p = self.peers.get(peer)
        if p is None:
            p = self.peers[peer] = PeerPieces()
        return p

    # ------------------------------------------------------------------ peers
    def polls_due(self, peers: list[str], now: float) -> list[str]:
        """Of the connected ``peers``, those to ask now which pieces they hold: never
        asked, or asked ``POLL_S`` ago (1, 2, 4, 8 s apart while they hold nothing). A peer
        known to hold everything, or banned, is not asked again."""
        out = []
        nothing_anywhere = not any(p.have for p in self.peers.values())
        for peer in peers:
            p = self._peer(peer)
            if p.complete or p.banned:
                continue
            if nothing_anywhere and p.empty_polls >= NOBODY_POLLS:
                continue  # bytes nobody has: a peer is asked NOBODY_POLLS times at most
            gap = min(EMPTY_POLL_MAX_S, EMPTY_POLL_S * 2 ** (p.empty_polls - 1)) \
                if p.empty_polls else POLL_S
            if now - p.polled_at >= gap:
                p.polled_at = now
                out.append(peer)
        return out

    def peer_has(self, peer: str, have: frozenset[int] | None) -> None:
        """``peer`` answered: it holds ``have`` (None: all pieces; empty: nothing)."""
        p = self._peer(peer)
        if have is None:
            p.have, p.complete = frozenset(range(self.n)), True
        else:
            p.have = frozenset(i for i in have if 0 <= i < self.n)
        p.empty_polls = 0 if p.have else p.empty_polls + 1
        p.errors = 0

    def peer_failed(self, peer: str, now: float) -> None:
        """Asking ``peer`` what it holds failed (unreachable, malformed answer)."""
        p = self._peer(peer)
        p.empty_polls += 1
        self._back_off(p, now)

    def peer_gone(self, peer: str) -> None:
        """``peer`` disconnected: forget what it holds (its pieces in flight fail)."""
        self.peers.pop(peer, None)

    def holders(self) -> list[str]:
        """Peers known to hold every piece."""
        return [peer for peer, p in self.peers.items() if p.complete and not p.banned]

    def unavailable(self, peers: list[str], now: float) -> bool:
        """Nobody can serve what is missing: every peer that can be asked was asked at
        least ``NOBODY_POLLS`` times, none holds a missing piece, and ``NOBODY_WAIT_S``
        have passed (with no peers at all: ``stalled`` decides)."""
        if not peers or now - self.started < NOBODY_WAIT_S:
            return False
        missing = set(self.missing())
        for peer in peers:
            p = self.peers.get(peer)
            if p is None or (p.empty_polls < NOBODY_POLLS and not p.banned):
                return False
            if not p.banned and p.have & missing:
                return False
        return True

    # ------------------------------------------------------------------ pieces
    def requests(self, now: float) -> list[tuple[int, str]]:
        """Pieces to ask for now, and from whom, marked in flight. Rarest first (ties at
        random), so that receivers spread different pieces and serve each other; from
        a partial holder before a full one, then the least busy, so that the agent that
        deployed the module sends each piece about once."""
        budget = MAX_IN_FLIGHT - len(self.in_flight)
        if budget <= 0:
            return []
        missing = set(range(self.n)) - self.have
        partials = any(not p.complete and not p.banned and p.have & missing
                       for p in self.peers.values())
        usable = {peer: p for peer, p in self.peers.items()
                  if not p.banned and p.backoff_until <= now
                  and p.in_flight < _cap(p, partials)}
        if not usable:
            return []
        wanted = [i for i in range(self.n) if i not in self.have and i not in self.in_flight]
        count = {i: 0 for i in wanted}
        for p in self.peers.values():
            if not p.banned:
                for i in (p.have & count.keys()):
                    count[i] += 1
        order = sorted((i for i in wanted if count[i]),
                       key=lambda i: (count[i], self.rng.random()))
        out: list[tuple[int, str]] = []
        for i in order:
            if budget <= 0 or not usable:
                break
            holders = [peer for peer, p in usable.items() if i in p.have]
            if not holders:
                continue
            peer = min(holders, key=lambda q: (usable[q].complete, usable[q].in_flight,
                                               self.rng.random()))
            p = usable[peer]
            p.in_flight += 1
            if p.in_flight >= _cap(p, partials):
                del usable[peer]
            self.in_flight[i] = peer
            out.append((i, peer))
            budget -= 1
        return out

    def progress(self, now: float) -> None:
        """Bytes arrived (part of a piece): the transfer is not stalled."""
        self.last_progress = now

    def piece_ok(self, i: int, now: float) -> None:
        """Piece ``i`` arrived, verified, and is on disk."""
        peer = self.in_flight.pop(i, None)
        if peer is not None and peer in self.peers:
            self.peers[peer].in_flight -= 1
            self.peers[peer].errors = 0
        self.have.add(i)
        self.last_progress = now

    def piece_failed(self, i: int, now: float, kind: str) -> None:
        """Asking for piece ``i`` failed: ``busy`` (the holder's upload slots are full),
        ``missing`` (it no longer holds it), ``bad`` (failed verification: the holder
        is not asked again), else an error (backoff)."""
        peer = self.in_flight.pop(i, None)
        if peer is None:
            return
        p = self.peers.get(peer)
        if p is None:
            return
        p.in_flight -= 1
        if kind == "busy":
            p.backoff_until = now + BUSY_BACKOFF_S * (0.5 + self.rng.random())
        elif kind == "missing":
            p.have = p.have - {i}
            p.complete = False
        elif kind == "bad":
            p.banned = True
        else:
            self._back_off(p, now)

    def _back_off(self, p: PeerPieces, now: float) -> None:
        p.errors += 1
        delay = min(ERROR_BACKOFF_MAX_S, ERROR_BACKOFF_S * 2 ** (p.errors - 1))
        p.backoff_until = now + delay * (0.5 + self.rng.random())

    def stalled(self, now: float) -> bool:
        """No byte arrived for ``STALL_S``: the transfer gives up (pieces are kept)."""
        return not self.done and now - self.last_progress > STALL_S


def _cap(p: PeerPieces, partials: bool) -> int:
    """Pieces in flight from ``p``: fewer from a full holder while partial holders have
    pieces this transfer misses."""
    if p.complete:
        return PER_SEED_IN_FLIGHT if partials else SOLE_SEED_IN_FLIGHT
    return PER_PEER_IN_FLIGHT


class SeedLimit:
    """A full holder's rule for sending a piece: at most ``SEED_COPIES`` times per
    ``SEED_WINDOW_S`` (the other receivers get it from those that have it)."""

    def __init__(self) -> None:
        self._sent: dict[tuple[str, int], list[float]] = {}

    def admit(self, sha: str, i: int, now: float) -> bool:
        """Whether to send piece ``i`` of ``sha`` now; counts it if so."""
        key = (sha, i)
        times = [t for t in self._sent.pop(key, []) if now - t < SEED_WINDOW_S]
        ok = len(times) < SEED_COPIES
        if ok:
            times.append(now)
        if times:
            self._sent[key] = times  # re-inserted: the dict is oldest first
        while len(self._sent) > SEED_TRACK_MAX:
            del self._sent[next(iter(self._sent))]
        return ok

    def __len__(self) -> int:
        return len(self._sent)
