"""Module bytes in pieces on disk: piece tables of stored blobs, and partial blobs.

Layout under the store's root::

    partial/<sha256>    a blob being received piece by piece (written in place with
                        pwrite; sparse until complete); removed at start, since the
                        set of pieces it holds is kept in memory only

A partial blob becomes a stored blob only once every piece is there and the whole file
hashes to the sha256 the manifest names (``Partial.finish`` then
``ModuleStore.put_blob_file``). Nothing here holds a whole blob in memory: files are
hashed and copied in ``CHUNK`` sized reads.

Thread-safe: tables are computed in worker threads; the registry of partial blobs and
the table cache are guarded by one lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from nebula_edge.errors import BadRequest, StoreError
from nebula_edge.store.modules import ModuleStore

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
"""Read size when hashing a file: large enough for ~1 GB/s sha256, small in memory."""
TABLE_CACHE = 64
"""Piece tables kept in memory (a 200 MiB blob's table is 200 hashes, ~13 KB)."""


def file_sha256(path: Path, size: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = size
        while left is None or left > 0:
            chunk = f.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class PieceTable:
    """The sha256 (hex) of each ``piece_size`` piece of a blob of ``size`` bytes (the
    last piece may be shorter). The piece size is the mesh's (``mesh/pieces.py``)."""

    size: int
    piece_size: int
    hashes: tuple[str, ...]

    def span(self, i: int) -> tuple[int, int]:
        """``(offset, length)`` of piece ``i``."""
        off = i * self.piece_size
        return off, max(0, min(self.piece_size, self.size - off))


def table_of_file(path: Path, size: int, piece_size: int) -> PieceTable:
    """The piece table of the first ``size`` bytes of ``path``."""
    hashes = []
    with open(path, "rb") as f:
        for i in range(max(1, -(-size // piece_size))):
            h = hashlib.sha256()
            left = max(0, min(piece_size, size - i * piece_size))
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    raise StoreError(f"{path} is shorter than {size} bytes")
                h.update(chunk)
                left -= len(chunk)
            hashes.append(h.hexdigest())
    return PieceTable(size, piece_size, tuple(hashes))


class Partial:
    """A blob being received: a file written piece by piece, and the pieces it holds."""

    def __init__(self, path: Path, sha: str, table: PieceTable) -> None:
        self.path = path
        self.sha = sha
        self.table = table
        self.have: set[int] = set()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self._fd, table.size)

    def writer(self, i: int) -> PieceWriter:
        return PieceWriter(self, i)

    def held(self) -> frozenset[int]:
        return frozenset(self.have)

    def finish(self) -> None:
        """Check the whole file against its sha256 (``BadRequest`` if it differs)."""
        got = file_sha256(self.path, self.table.size)
        if got != self.sha:
            raise BadRequest(f"assembled bytes hash to {got[:12]}, expected {self.sha[:12]}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


class PieceWriter:
    """Writes one piece at its offset as chunks arrive, hashing them; ``done`` checks the
    hash and length against the table (``BadRequest`` if either differs)."""

    def __init__(self, partial: Partial, i: int) -> None:
        self.partial = partial
        self.i = i
        self.offset, self.length = partial.table.span(i)
        self.written = 0
        self._h = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        if self.written + len(chunk) > self.length:
            raise BadRequest(f"piece {self.i} is longer than {self.length} bytes")
        self._h.update(chunk)
        os.pwrite(self.partial._fd, chunk, self.offset + self.written)
        self.written += len(chunk)

    def done(self) -> None:
        if self.written != self.length:
            raise BadRequest(f"piece {self.i} is {self.written} bytes, not {self.length}")
        if self._h.hexdigest() != self.partial.table.hashes[self.i]:
            raise BadRequest(f"piece {self.i} does not match its hash")
        self.partial.have.add(self.i)


class PieceStore:
    """Piece tables of stored blobs and the partial blobs being received."""

    def __init__(self, store: ModuleStore) -> None:
        self.store = store
        self.dir = store.root / "partial"
        shutil.rmtree(self.dir, ignore_errors=True)  # what they held was in memory only
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._hashing = threading.Lock()
        """Held while a stored blob's table is computed: every receiver asks for it at
        once when a module is deployed, and the blob is hashed once, not once each."""
        self._tables: OrderedDict[str, PieceTable] = OrderedDict()
        self._partials: dict[str, Partial] = {}

    def table(self, sha: str, piece_size: int) -> PieceTable | None:
        """The piece table of a stored blob (hashed once, then cached), or of a blob
        being received; None if neither. Blocking: call it in a worker thread."""
        with self._lock:
            t = self._tables.get(sha)
            if t is not None and t.piece_size == piece_size:
                self._tables.move_to_end(sha)
                return t
            p = self._partials.get(sha)
            if p is not None:
                return p.table
        with self._hashing:
            with self._lock:
                t = self._tables.get(sha)
            if t is not None and t.piece_size == piece_size:
                return t  # computed while this thread waited
            try:
                path = self.store.blob_path(sha)
                size = path.stat().st_size
                t = table_of_file(path, size, piece_size)
            except (OSError, StoreError, BadRequest):
                return None
            with self._lock:
                self._tables[sha] = t
                while len(self._tables) > TABLE_CACHE:
                    self._tables.popitem(last=False)
            return t

    def serving(self, sha: str) -> tuple[Path, frozenset[int] | None] | None:
        """Where to read ``sha``'s pieces from and which are held (None: all): the stored
        blob, else the partial one; None if this agent holds none of it."""
        try:
            path = self.store.blob_path(sha)
        except BadRequest:
            return None
        if path.exists() and not self.store.is_corrupt(sha):
            return path, None
        with self._lock:
            p = self._partials.get(sha)
            return (p.path, p.held()) if p is not None else None

    def partial(self, sha: str, table: PieceTable) -> Partial:
        """The partial blob for ``sha`` (kept from an earlier attempt if its table is
        the same: a broken transfer resumes from the pieces it holds)."""
        with self._lock:
            p = self._partials.get(sha)
            if p is not None and p.table == table:
                return p
            if p is not None:
                p.close()
            p = self._partials[sha] = Partial(self.dir / sha, sha, table)
            return p

    def held(self, sha: str) -> Partial | None:
        with self._lock:
            return self._partials.get(sha)

    def drop(self, sha: str) -> None:
        """Forget a partial blob and delete its file."""
        with self._lock:
            p = self._partials.pop(sha, None)
        if p is not None:
            p.close()
            with contextlib.suppress(FileNotFoundError):
                p.path.unlink()

    def partial_count(self) -> int:
        with self._lock:
            return len(self._partials)

    def complete(self, sha: str) -> Path:
        """The path of a finished partial blob, for ``ModuleStore.put_blob_file`` to move
        into ``blobs/``. It stays registered (and served) until ``drop``: from the move
        on, ``serving`` finds the stored blob first, so peers never see a gap."""
        with self._lock:
            return self._partials[sha].path


__all__ = ["Partial", "PieceStore", "PieceTable", "PieceWriter", "file_sha256",
           "table_of_file"]
