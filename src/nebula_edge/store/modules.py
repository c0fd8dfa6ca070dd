"""The module store: blobs by sha256, manifests per version, tombstones per name.

Layout under the agent's state directory::

    blobs/<sha256>                  module bytes, immutable, verified on read
    manifests/<name>/<file_id>.json one file per version (see Manifest.file_id)
    tombstones/<name>.json          the latest deletion of a name
    quarantine/<sha256>.<time>      blobs that failed verification, kept for a person to look at
    cache/                          compiled code (owned by the sandbox)

Invariants, kept across crashes because every file is written atomically and a blob
is always written before any manifest that names it:

* every manifest in the index has its blob on disk (at start, manifests whose blob is
  missing are dropped and logged; blobs no manifest names are deleted);
* per name, at most ``keep`` versions: the ``keep`` highest by ``Manifest.key``;
* no manifest covered by the name's tombstone is kept;
* at most ``max_names`` names hold versions (``EdgeConfig.max_modules``, 1000): a version
  of a new name beyond that is not taken, from the API (413) or from a peer (counted in
  ``nebula_edge_peer_refused_total{reason="max_modules"}``).

Thread-safe: every public method may be called from any thread (the HTTP loop, the
libp2p thread's workers, the sandbox pool). Index changes hold one lock; blob reads
do not.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from nebula_edge import manifest as mf
from nebula_edge.errors import BadRequest, CorruptBlob, StoreError
from nebula_edge.manifest import Manifest, Tombstone
from nebula_edge.store.fsutil import atomic_write, remove_stale_temps, sync_filesystem

log = logging.getLogger(__name__)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ModuleStore:
    """Content-addressed blobs plus the manifest index. See the module docstring."""

    def __init__(self, root: Path, keep: int = 5, max_names: int | None = None,
                 on_quarantine: Callable[[str], None] | None = None,
                 on_gc: Callable[[str], None] | None = None) -> None:
        self.root = root
        self.keep = keep
        self.max_names = max_names
        """Names that may hold versions at once (None: no bound, for tests and tools)."""
        self._on_quarantine = on_quarantine or (lambda sha: None)
        self._on_gc = on_gc or (lambda sha: None)
        """Called with each sha256 whose blob or compiled code was deleted."""
        self.blob_dir = root / "blobs"
        self.manifest_dir = root / "manifests"
        self.tomb_dir = root / "tombstones"
        self.quarantine_dir = root / "quarantine"
        self.cache_dir = root / "cache"
        for d in (self.blob_dir, self.manifest_dir, self.tomb_dir, self.quarantine_dir,
                  self.cache_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._versions: dict[str, list[Manifest]] = {}
        self._tombs: dict[str, Tombstone] = {}
        self._pinned: dict[str, int] = {}
        """Blobs stored for a deploy or fetch whose manifest is not written yet: GC skips them."""
        self._corrupt: set[str] = set()
        """Blobs quarantined since start: reads say ``CorruptBlob`` until good bytes arrive."""
        self._watchers: list[Callable[[str], None]] = []
        self._load()

    def watch(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(name)`` after every change to a name's versions or tombstone, on the
        thread that made it, outside the store's lock (the mesh keeps its digest up to
        date this way instead of recomputing it from the whole store)."""
        self._watchers.append(fn)

    def _changed(self, *names: str) -> None:
        for fn in self._watchers:
            for name in names:
                try:
                    fn(name)
                except Exception:
                    log.exception("store: watcher failed for %s", name)

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        removed = remove_stale_temps(self.root)
        if removed:
            log.info("store: removed %d temp file(s) left by a crash", removed)
        for p in self.tomb_dir.glob("*.json"):
            t = self._read_record(p)
            if isinstance(t, Tombstone):
                self._tombs[t.name] = t
        for d in self.manifest_dir.iterdir():
            if not d.is_dir():
                continue
            for p in d.glob("*.json"):
                m = self._read_record(p)
                if not isinstance(m, Manifest):
                    continue
                tomb = self._tombs.get(m.name)
                if tomb is not None and tomb.covers(m):  # a crash after the tombstone
                    p.unlink()
                    continue
                if not (self.blob_dir / m.sha256).exists():
                    log.warning("store: manifest %s v%d has no blob; dropped", m.name, m.version)
                    p.unlink()
                    continue
                self._versions.setdefault(m.name, []).append(m)
        for name in list(self._versions):
            self._versions[name].sort(key=lambda m: m.key)
            self._prune(name)
        self._gc_blobs()

    def _read_record(self, p: Path) -> Manifest | Tombstone | None:
        try:
            return mf.decode(p.read_bytes())
        except (OSError, BadRequest) as e:
            log.warning("store: unreadable record %s moved to quarantine: %s", p, e)
            with contextlib.suppress(OSError):
                os.replace(p, self.quarantine_dir / f"{p.name}.{time.time():.0f}")
            return None

    # ------------------------------------------------------------------ blobs
    def blob_path(self, sha: str) -> Path:
        if not mf.SHA256_RE.fullmatch(sha):
            raise BadRequest("not a sha256")
        return self.blob_dir / sha

    def has_blob(self, sha: str) -> bool:
        return self.blob_path(sha).exists()

    def is_corrupt(self, sha: str) -> bool:
        with self._lock:
            return sha in self._corrupt

    def put_blob(self, data: bytes, expect_sha: str | None = None) -> str:
        """Store bytes; returns their sha256. ``expect_sha`` is checked first if given.

        The blob stays pinned (safe from GC) until ``unpin``: call it once the manifest
        naming it is written, or the deploy failed."""
        sha = sha256_hex(data)
        if expect_sha is not None and sha != expect_sha:
            raise BadRequest(f"bytes hash to {sha}, expected {expect_sha}")
        path = self.blob_path(sha)
        self.pin(sha)
        if not path.exists():
            try:
                atomic_write(path, data, 0o444)
            except OSError as e:
                self.unpin(sha)
                raise StoreError(f"cannot write blob {sha}: {e}") from e
        with self._lock:
            self._corrupt.discard(sha)
        return sha

    def put_blob_file(self, path: Path, sha: str) -> None:
        """Store a file already verified to hash to ``sha`` by moving it into place
        (same file system: ``root/partial``). Pinned until ``unpin``, as ``put_blob``."""
        dest = self.blob_path(sha)
        self.pin(sha)
        try:
            os.chmod(path, 0o444)
            os.replace(path, dest)
        except OSError as e:
            self.unpin(sha)
            raise StoreError(f"cannot store blob {sha}: {e}") from e
        with self._lock:
            self._corrupt.discard(sha)

    def gc(self) -> None:
        """Delete blobs and compiled code no manifest names and nothing pins."""
        self._gc_blobs()

    def unpin(self, sha: str) -> None:
        with self._lock:
            n = self._pinned.get(sha, 0) - 1
            if n > 0:
                self._pinned[sha] = n
            else:
                self._pinned.pop(sha, None)

    def read_blob(self, sha: str) -> bytes:
        """Bytes of a blob, verified. A blob that fails verification is quarantined."""
        path = self.blob_path(sha)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if sha in self._corrupt:
                raise CorruptBlob(f"module bytes {sha[:12]} were corrupted on disk and are "
                                  "quarantined; deploy them again or wait for a peer's copy",
                                  sha256=sha) from None
            raise StoreError(f"blob {sha} is not in the store") from None
        if sha256_hex(data) != sha:
            dest = self.quarantine_dir / f"{sha}.{time.time():.0f}"
            with contextlib.suppress(OSError):
                os.replace(path, dest)
            with self._lock:
                self._corrupt.add(sha)
            self._on_quarantine(sha)
            log.error("store: blob %s failed verification; quarantined at %s", sha, dest)
            raise CorruptBlob(f"module bytes {sha[:12]} are corrupted on disk; quarantined",
                              sha256=sha)
        return data

    def _gc_blobs(self) -> None:
        """Delete blobs, and compiled code (``cache/<sha256>.*``), no manifest names.

        Under the lock: a deploy pins its sha256 under the same lock before writing, so
        nothing it is writing can be taken away between the check and the unlink."""
        gone: set[str] = set()
        with self._lock:
            live = {m.sha256 for ms in self._versions.values() for m in ms} | set(self._pinned)
            for p in self.blob_dir.iterdir():
                if p.name not in live and not p.name.startswith("."):
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
                        gone.add(p.name)
            for p in self.cache_dir.iterdir():
                sha = p.name.split(".", 1)[0]
                if sha not in live and not p.name.startswith("."):
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
                        gone.add(sha)
        for sha in gone:
            self._on_gc(sha)

    def pin(self, sha: str) -> None:
        """Keep ``sha``'s blob and compiled code from GC until ``unpin`` (a deploy in
        progress writes the compiled code before the blob)."""
        with self._lock:
            self._pinned[sha] = self._pinned.get(sha, 0) + 1

    # ------------------------------------------------------------------ manifests
    def put_manifest(self, m: Manifest) -> bool:
        """Add a version whose blob is already stored. False if known, dead or too old."""
        if not self.has_blob(m.sha256):
            raise StoreError(f"blob {m.sha256} must be stored before its manifest")
        with self._lock:
            vs = self._versions.get(m.name, [])
            if not self.has_room(m.name) or \
                    not mf.admits(vs, self._tombs.get(m.name), m, self.keep):
                return False
            d = self.manifest_dir / m.name
            d.mkdir(exist_ok=True)
            atomic_write(d / f"{m.file_id}.json", m.encode())
            vs = sorted([*vs, m], key=lambda v: v.key)
            self._versions[m.name] = vs
            dropped = self._prune(m.name)
        if dropped:
            self._gc_blobs()
        self._changed(m.name)
        return True

    def put_many(self, items: list[tuple[bytes, list[Manifest]]]) -> list[Manifest]:
        """Store many verified modules at once (a late joiner catching up): each item is
        a blob's bytes and the manifests naming it. Returns the manifests taken.

        One ``syncfs`` for the whole batch instead of four fsyncs per module (blob, its
        directory, manifest, its directory): 500 small modules took 16.8 s one by one.
        Crash safety holds as for single writes: each file is still renamed into place
        complete; a blob torn by a crash before the sync fails its sha256 on read and is
        quarantined and fetched again, and a manifest whose blob is missing is dropped
        at start."""
        taken: list[Manifest] = []
        pinned: list[str] = []
        dropped = False
        try:
            for data, ms in items:
                sha = sha256_hex(data)
                if any(m.sha256 != sha for m in ms):
                    raise BadRequest(f"bytes hash to {sha}, not to their manifests' sha256")
                self.pin(sha)
                pinned.append(sha)
                path = self.blob_path(sha)
                if not path.exists() or self.is_corrupt(sha):
                    try:
                        atomic_write(path, data, 0o444, durable=False)
                    except OSError as e:
                        raise StoreError(f"cannot write blob {sha}: {e}") from e
                    with self._lock:
                        self._corrupt.discard(sha)
            with self._lock:
                for _, ms in items:
                    for m in ms:
                        vs = self._versions.get(m.name, [])
                        if not mf.admits(vs, self._tombs.get(m.name), m, self.keep):
                            continue
                        d = self.manifest_dir / m.name
                        d.mkdir(exist_ok=True)
                        atomic_write(d / f"{m.file_id}.json", m.encode(), durable=False)
                        self._versions[m.name] = sorted([*vs, m], key=lambda v: v.key)
                        dropped = bool(self._prune(m.name)) or dropped
                        taken.append(m)
            sync_filesystem(self.root)
        finally:
            for sha in pinned:
                self.unpin(sha)
        if dropped:
            self._gc_blobs()
        self._changed(*dict.fromkeys(m.name for m in taken))
        return taken

    def collect_tombstones(self, before: float) -> list[str]:
        """Forget tombstones of deletions made before ``before`` (the mesh's horizon):
        every agent has had the horizon to learn them. Returns their names."""
        with self._lock:
            old = [t for t in self._tombs.values() if t.deleted_at < before]
            for t in old:
                with contextlib.suppress(FileNotFoundError):
                    (self.tomb_dir / f"{t.name}.json").unlink()
                del self._tombs[t.name]
        self._changed(*(t.name for t in old))
        return [t.name for t in old]

    def set_aside_records(self, before: float) -> Path | None:
        """Move the manifests deployed and tombstones made at or before ``before`` to
        ``quarantine/stale-<time>/`` (blobs no manifest names are then collected): for an
        agent that was away from the mesh longer than its tombstone horizon, which must
        resync those from scratch instead of bringing back modules deleted meanwhile.
        Returns where they went (None if there were none)."""
        with self._lock:
            ms = [m for vs in self._versions.values() for m in vs if m.deployed_at <= before]
            ts = [t for t in self._tombs.values() if t.deleted_at <= before]
            if not ms and not ts:
                return None
            dest = self.quarantine_dir / f"stale-{time.time():.0f}"
            dest.mkdir(parents=True, exist_ok=True)
            for m in ms:
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self.manifest_dir / m.name / f"{m.file_id}.json",
                               dest / f"{m.name}.{m.file_id}.json")
                rest = [v for v in self._versions[m.name] if v.key != m.key]
                if rest:
                    self._versions[m.name] = rest
                else:
                    del self._versions[m.name]
            for t in ts:
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self.tomb_dir / f"{t.name}.json", dest / f"{t.name}.tomb.json")
                del self._tombs[t.name]
        self._gc_blobs()
        self._changed(*sorted({*(m.name for m in ms), *(t.name for t in ts)}))
        return dest

    def _prune(self, name: str) -> list[Manifest]:
        vs = self._versions.get(name, [])
        dropped = vs[: max(0, len(vs) - self.keep)]
        for old in dropped:
            with contextlib.suppress(FileNotFoundError):
                (self.manifest_dir / name / f"{old.file_id}.json").unlink()
        self._versions[name] = vs[len(dropped):]
        return dropped

    def put_tombstone(self, t: Tombstone) -> bool:
        """Record a deletion; removes every version it covers. False if not newer."""
        with self._lock:
            old = self._tombs.get(t.name)
            if old is not None and old.deleted_at >= t.deleted_at:
                return False
            atomic_write(self.tomb_dir / f"{t.name}.json", t.encode())
            self._tombs[t.name] = t
            keep = []
            for m in self._versions.get(t.name, []):
                if t.covers(m):
                    with contextlib.suppress(FileNotFoundError):
                        (self.manifest_dir / t.name / f"{m.file_id}.json").unlink()
                else:
                    keep.append(m)
            if keep:
                self._versions[t.name] = keep
            else:
                self._versions.pop(t.name, None)
        self._gc_blobs()
        self._changed(t.name)
        return True

    def versions(self, name: str) -> list[Manifest]:
        """Kept versions of ``name``, oldest first."""
        with self._lock:
            return list(self._versions.get(name, []))

    def current(self, name: str) -> Manifest | None:
        with self._lock:
            vs = self._versions.get(name)
            return vs[-1] if vs else None

    def names(self) -> list[str]:
        with self._lock:
            return sorted(n for n, vs in self._versions.items() if vs)

    def tombstone(self, name: str) -> Tombstone | None:
        with self._lock:
            return self._tombs.get(name)

    def tombstones(self) -> list[Tombstone]:
        with self._lock:
            return list(self._tombs.values())

    def all_manifests(self) -> Iterator[Manifest]:
        with self._lock:
            snapshot = [m for ms in self._versions.values() for m in ms]
        return iter(snapshot)

    def wants(self, m: Manifest) -> bool:
        """Whether ``put_manifest(m)`` would take it (used before fetching its bytes)."""
        with self._lock:
            return self.has_room(m.name) and mf.admits(
                self._versions.get(m.name, []), self._tombs.get(m.name), m, self.keep)

    def has_room(self, name: str) -> bool:
        """Whether a version of ``name`` fits under ``max_names`` (it does if the name
        already holds versions)."""
        with self._lock:
            if self.max_names is None or self._versions.get(name):
                return True
            return len(self._versions) < self.max_names  # entries are never empty lists

    def next_version(self, name: str) -> int:
        with self._lock:
            vs = self._versions.get(name, [])
            return max((v.version for v in vs), default=0) + 1
