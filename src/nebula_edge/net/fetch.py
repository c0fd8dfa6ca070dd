"""Getting a version's bytes stored: from inline gossip, from the store, or fetched from
the peers that hold them, verified, compiled and written before anything is announced.

* One task per sha256: every manifest naming those bytes waits on it, so one blob is never
  verified, compiled or written twice at once (``start``).
* Bytes not inline are pulled over ``BLOB_PROTOCOL`` from the announcer first, else any peer
  known to hold them, each round over all of them, with backoff between rounds
  (``FETCH_ROUNDS``; the next sync starts again after that).
* At most ``FETCH_CONCURRENCY`` fetches at once, and one peer holds at most
  ``PER_PEER_FETCHES`` of those slots, for one attempt at a time: a peer announcing bytes
  it never serves cannot starve fetches from honest peers.
* Fetched bytes must have the announced size and sha256, and every manifest naming them
  must compile with its ABI and export, before the blob and manifests are stored.

Coroutines run on the node's event loop; the store and sandbox work runs in the default
executor.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from nebula_edge.errors import BadRequest, NebulaError
from nebula_edge.manifest import Manifest
from nebula_edge.mesh import wire
from nebula_edge.mesh.state import PeerTable, newest_first
from nebula_edge.metrics import Metrics
from nebula_edge.sandbox import Sandbox
from nebula_edge.store import ModuleStore
from nebula_edge.store.modules import sha256_hex

log = logging.getLogger(__name__)

FETCH_CONCURRENCY = 4
PER_PEER_FETCHES = 2
FETCH_ROUNDS = 6
"""Rounds over all holders before a fetch gives up until the next sync (~30 s with backoff)."""

Request = Callable[[str, str, bytes, float, int], Awaitable[bytes]]
"""``(peer, protocol, payload, timeout, max_response) -> response bytes``."""
Reject = Callable[[str, str, object], None]
"""``(reason, peer, detail)``: count and log a peer's bad message."""


class Fetcher:
    def __init__(self, store: ModuleStore, sandbox: Sandbox, metrics: Metrics,
                 table: PeerTable, request: Request, reject: Reject,
                 stored_from: Callable[[str], None]) -> None:
        self.store = store
        self.sandbox = sandbox
        self.metrics = metrics
        self.table = table
        self._request = request
        self._reject = reject
        self._stored_from = stored_from
        """Called with the peer whose bytes (inline or fetched) gave new stored versions."""
        self._fetching: dict[str, asyncio.Task[bool]] = {}
        self._waiting: dict[str, list[Manifest]] = {}
        """sha256 -> the versions waiting for those bytes."""
        self._fetch_sem = asyncio.Semaphore(FETCH_CONCURRENCY)
        self._peer_sems: dict[str, asyncio.Semaphore] = {}

    def tasks(self) -> list[asyncio.Task[bool]]:
        """The fetches running now (to cancel on shutdown)."""
        return list(self._fetching.values())

    def start(self, m: Manifest, prefer: str | None,
                     data: bytes | None = None) -> asyncio.Task[bool]:
        """Get ``m`` stored: from ``data`` (inline gossip) or by fetching its bytes. One
        task per sha256: every manifest naming those bytes waits on it, so one blob is
        never verified, compiled or written twice at once."""
        waiting = self._waiting.setdefault(m.sha256, [])
        if all(w.key != m.key for w in waiting):
            waiting.append(m)
        task = self._fetching.get(m.sha256)
        if task is None:
            task = asyncio.ensure_future(self._fetch(m, prefer, data))
            self._fetching[m.sha256] = task
            sha = m.sha256
            task.add_done_callback(lambda _t: self._fetching.pop(sha, None))
        return task

    async def _fetch(self, m: Manifest, prefer: str | None, data: bytes | None) -> bool:
        sha = m.sha256
        try:
            if self.store.has_blob(sha) and not self.store.is_corrupt(sha):
                return await self._settle(sha, None, "store", "self")
            if data is not None:
                return await self._settle(sha, data, "gossip", prefer or "?")
            for round_ in range(FETCH_ROUNDS):
                candidates = self.table.holders(sha, prefer) or (
                    [prefer]
                    if prefer and self.table.is_connected(prefer)
                    else [r.peer_id for r in self.table.connected_peers()]
                )
                for peer in candidates:
                    # A slot is held for one attempt only (never across the backoff), and
                    # one peer holds at most PER_PEER_FETCHES of them: a peer announcing
                    # bytes it never serves cannot starve fetches from honest peers.
                    async with self._peer_sem(peer), self._fetch_sem:
                        data = await self._fetch_from(peer, m)
                    if data is not None:
                        return await self._settle(sha, data, "fetch", peer)
                await asyncio.sleep(min(8.0, 0.25 * 2**round_) * (0.5 + random.random()))
            log.warning("fetch of %s (%s) gave up for now; sync will retry", m.name, sha[:12])
            self.metrics.fetch_total.labels("gave_up").inc()
            return False
        finally:
            self._waiting.pop(sha, None)

    def _peer_sem(self, peer: str) -> asyncio.Semaphore:
        sem = self._peer_sems.get(peer)
        if sem is None:
            sem = self._peer_sems[peer] = asyncio.Semaphore(PER_PEER_FETCHES)
        return sem

    async def _fetch_from(self, peer: str, m: Manifest) -> bytes | None:
        timeout = 10 + m.size / (5 * 1024 * 1024)  # >= 5 MiB/s, as loopback does 80 MiB/s
        try:
            data = await self._request(peer, wire.BLOB_PROTOCOL, m.sha256.encode(), timeout, m.size)
        except Exception as e:
            self.metrics.fetch_total.labels("error").inc()
            log.info("fetch %s from %s failed: %s", m.sha256[:12], peer, e or type(e).__name__)
            return None
        if len(data) != m.size or sha256_hex(data) != m.sha256:
            self.metrics.fetch_total.labels("bad_hash").inc()
            self._reject("hash_mismatch", peer, f"fetched bytes for {m.sha256[:12]}")
            return None
        self.metrics.fetch_total.labels("ok").inc()
        return data

    async def _settle(self, sha: str, data: bytes | None, how: str, peer: str) -> bool:
        return await self._accept(newest_first(self._waiting.get(sha, [])), data, how, peer)

    async def _accept(self, ms: list[Manifest], data: bytes | None, how: str, peer: str) -> bool:
        """Verify and store versions that share one blob, whose bytes are ``data`` (or are
        already stored). The blob is stored even if every manifest is already known: that
        is how a quarantined blob is replaced."""
        if not ms:
            return False
        loop = asyncio.get_running_loop()
        try:
            added, bad = await loop.run_in_executor(None, self._accept_sync, ms, data)
        except NebulaError as e:
            m = ms[0]
            self._reject("invalid_module", peer, f"{m.name} v{m.version}: {e.message}")
            return False
        for m, why in bad:
            self._reject("invalid_module", peer, f"{m.name} v{m.version}: {why}")
        for m in added:
            log.info(
                "module received: %s v%d (%s, %d bytes, via %s from %s)",
                m.name,
                m.version,
                m.sha256[:12],
                m.size,
                how,
                peer,
            )
            self.metrics.deploys_total.labels("peer").inc()
        self.metrics.modules.set(len(self.store.names()))
        if added and how in ("gossip", "fetch"):
            self._stored_from(peer)
        return bool(added)

    def _accept_sync(self, ms: list[Manifest], data: bytes | None
                     ) -> tuple[list[Manifest], list[tuple[Manifest, str]]]:
        """Check every manifest against the bytes (size, compiles, its ABI and export
        exist), then store the blob (if new) and the manifests that passed."""
        sha = ms[0].sha256
        new_blob = data is not None and (not self.store.has_blob(sha)
                                         or self.store.is_corrupt(sha))
        if data is not None:
            size = len(data)

            def read() -> bytes:
                assert data is not None
                return data
        else:
            size = self.store.blob_path(sha).stat().st_size

            def read() -> bytes:
                return self.store.read_blob(sha)
        ok: list[Manifest] = []
        bad: list[tuple[Manifest, str]] = []
        for m in ms:
            # A version already held is checked again only when its bytes are being
            # replaced (a quarantined blob): then the good copy must still fit it.
            if not self.store.wants(m) and not new_blob:
                continue
            try:
                if m.size != size:
                    raise BadRequest(f"the bytes are {size} long; the manifest says {m.size}")
                self.sandbox.admit(m, read)
                ok.append(m)
            except NebulaError as e:
                bad.append((m, e.message))
        if not ok:
            return [], bad
        if new_blob:
            assert data is not None
            self.store.put_blob(data, expect_sha=sha)
        try:
            return [m for m in ok if self.store.wants(m) and self.store.put_manifest(m)], bad
        finally:
            if new_blob:
                self.store.unpin(sha)

    def newer_pending(self, name: str, have: Manifest | None) -> bool:
        """A version of ``name`` newer than ``have`` is on its way (bytes being fetched)."""
        return any(m.name == name and (have is None or m.key > have.key)
                   for ms in self._waiting.values() for m in ms)

    def pending_for(self, name: str) -> list[asyncio.Task[bool]]:
        """Fetch tasks for any version of ``name``."""
        return [t for sha, t in self._fetching.items()
                if any(m.name == name for m in self._waiting.get(sha, []))]
