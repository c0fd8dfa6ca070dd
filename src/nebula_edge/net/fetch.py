"""Getting a version's bytes stored: from inline gossip, from the store, or fetched in
pieces from every peer that holds them, verified, compiled and written before anything
is announced.

* One task per sha256: every manifest naming those bytes waits on it, so one blob is never
  verified, compiled or written twice at once (``start``).
* Bytes not inline travel in pieces over HTTP between agents (``api/pieces.py``; the
  decisions are ``mesh/pieces.Transfer``'s): every connected peer is asked which pieces
  it holds, pieces are asked for rarest first from up to 8 holders at once, each is
  streamed to ``partial/<sha256>`` and checked against the piece table, and a receiver
  serves what it holds at once. Neither side holds a whole module in memory for this.
* A transfer fails only when nothing arrived for ``STALL_S``; its pieces are kept, and
  the next attempt (the next sync) resumes from them, from whichever peers hold them.
* Bytes up to ``STREAM_MAX`` (1 MiB) are first asked for in one request over the libp2p
  connection (``BLOB_PROTOCOL``), as before pieces: a peer that has just connected is
  asked before its HTTP address is known.
* At most ``FETCH_CONCURRENCY`` transfers at once.
* Fetched bytes must have the announced size and sha256, and every manifest naming them
  must compile with its ABI and export, before the blob and manifests are stored. A
  version that does not compile here is remembered by manifest id
  (``FAILED_VERSIONS_MAX``) and not fetched again; bytes nobody could serve are not asked
  for again for ``UNAVAILABLE_S`` (doubling), so a fake announcement costs each agent at
  most ``NOBODY_POLLS`` small requests per peer per cooldown.

Coroutines run on the node's event loop; the store and sandbox work runs in the default
executor.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from nebula_edge.errors import BadRequest, NebulaError
from nebula_edge.manifest import Manifest
from nebula_edge.mesh import pieces as pc
from nebula_edge.mesh import wire
from nebula_edge.mesh.state import PeerTable, newest_first
from nebula_edge.metrics import Metrics
from nebula_edge.sandbox import Sandbox
from nebula_edge.store import ModuleStore
from nebula_edge.store.pieces import Partial, PieceStore

log = logging.getLogger(__name__)

FETCH_CONCURRENCY = 4
"""Transfers at once (each asks for up to ``mesh.pieces.MAX_IN_FLIGHT`` pieces). A slot is
taken once a peer has answered with the piece table: asking who holds the bytes (a few
small requests) takes none, so announcements of bytes nobody has never queue a real
module behind them (measured: 40 fake 48 MiB announcements held a 1 MiB deploy back for
over 30 s when the slot was taken first)."""
PER_PEER_FETCHES = 2
"""Slots one peer holds at once for one-request fetches (``STREAM_MAX``)."""
STREAM_MAX = 1024 * 1024
"""Bytes up to one piece are first asked for in one request over the libp2p connection
(``BLOB_PROTOCOL``, from the announcer, then known holders): no HTTP address is needed,
so a late joiner runs a small module as fast as before pieces; 1 MiB in memory is
fine. If that fails, the piece transfer follows."""
PIECE_IDLE_S = 10.0
"""A piece request with no byte for this long fails (its holder is backed off)."""
TICK_S = 0.1
"""How often a transfer looks again at whom to ask, when no answer woke it earlier."""
FAILED_VERSIONS_MAX = 1024
"""Manifest ids remembered as not compiling here (least recently added dropped)."""
UNAVAILABLE_S = 30.0
"""Bytes nobody could serve are not asked for again for 30 s, doubling to 10 min."""
UNAVAILABLE_MAX_S = 600.0
UNAVAILABLE_MAX = 1024
"""sha256s remembered as unavailable (oldest dropped)."""
PARTIALS_MAX = 8
"""Broken transfers whose pieces are kept for a resume (disk, not memory)."""

Request = Callable[[str, str, bytes, float, int], Awaitable[bytes]]
"""``(peer, protocol, payload, timeout, max_response) -> response bytes``."""
Reject = Callable[[str, str, object], None]
"""``(reason, peer, detail)``: count and log a peer's bad message."""


async def _no() -> bool:
    return False


class Fetcher:
    def __init__(self, store: ModuleStore, sandbox: Sandbox, metrics: Metrics,
                 table: PeerTable, request: Request, reject: Reject,
                 stored_from: Callable[[str], None], *, token: str | None = None) -> None:
        self.store = store
        self.sandbox = sandbox
        self.metrics = metrics
        self.table = table
        self._request = request
        self._reject = reject
        self._stored_from = stored_from
        """Called with the peer whose bytes (inline or fetched) gave new stored versions."""
        self.pieces = PieceStore(store)
        """Partial blobs and piece tables (served to peers by ``api/pieces.py``)."""
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http: aiohttp.ClientSession | None = None
        self._fetching: dict[str, asyncio.Task[bool]] = {}
        self._waiting: dict[str, list[Manifest]] = {}
        """sha256 -> the versions waiting for those bytes."""
        self._fetch_sem = asyncio.Semaphore(FETCH_CONCURRENCY)
        self._peer_sems: dict[str, asyncio.Semaphore] = {}
        self._failed: OrderedDict[str, None] = OrderedDict()
        """Manifest ids that did not compile (or fit) here."""
        self._unavailable: OrderedDict[str, tuple[float, float]] = OrderedDict()
        """sha256 -> (monotonic time until which it is not asked for, cooldown)."""

    def tasks(self) -> list[asyncio.Task[bool]]:
        """The fetches running now (to cancel on shutdown)."""
        return list(self._fetching.values())

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    def start(self, m: Manifest, prefer: str | None,
                     data: bytes | None = None) -> asyncio.Task[bool]:
        """Get ``m`` stored: from ``data`` (inline gossip) or by fetching its bytes. One
        task per sha256: every manifest naming those bytes waits on it, so one blob is
        never verified, compiled or written twice at once. A version that did not
        compile here, or bytes nobody could serve a moment ago, give a task that ends
        at once with False."""
        if m.id in self._failed:
            return asyncio.ensure_future(_no())
        task = self._fetching.get(m.sha256)
        if task is None and data is None and self._cooling(m.sha256):
            return asyncio.ensure_future(_no())
        waiting = self._waiting.setdefault(m.sha256, [])
        if all(w.key != m.key for w in waiting):
            waiting.append(m)
        if task is None:
            task = asyncio.ensure_future(self._fetch(m, prefer, data))
            self._fetching[m.sha256] = task
            sha = m.sha256
            task.add_done_callback(lambda _t: self._fetching.pop(sha, None))
        return task

    def _cooling(self, sha: str) -> bool:
        until = self._unavailable.get(sha)
        return until is not None and time.monotonic() < until[0]

    def _mark_unavailable(self, sha: str) -> None:
        prev = self._unavailable.pop(sha, None)
        cool = min(UNAVAILABLE_MAX_S, prev[1] * 2) if prev is not None else UNAVAILABLE_S
        self._unavailable[sha] = (time.monotonic() + cool, cool)
        while len(self._unavailable) > UNAVAILABLE_MAX:
            self._unavailable.popitem(last=False)
        self.metrics.unavailable_blobs.set(len(self._unavailable))

    def _mark_failed(self, m: Manifest) -> None:
        self._failed[m.id] = None
        while len(self._failed) > FAILED_VERSIONS_MAX:
            self._failed.popitem(last=False)
        self.metrics.failed_versions.set(len(self._failed))

    async def _fetch(self, m: Manifest, prefer: str | None, data: bytes | None) -> bool:
        sha = m.sha256
        try:
            if self.store.has_blob(sha) and not self.store.is_corrupt(sha):
                return await self._settle(sha, None, "store", "self")
            if data is not None:
                return await self._settle(sha, data, "gossip", prefer or "?")
            if m.size <= STREAM_MAX:
                for peer in self._candidates(m.sha256, prefer):
                    # One peer holds at most PER_PEER_FETCHES of the slots: a peer that
                    # announces bytes and trickles them cannot starve other fetches.
                    async with self._peer_sem(peer), self._fetch_sem:
                        data = await self._fetch_from(peer, m)
                    if data is not None:
                        return await self._settle(sha, data, "fetch", peer)
            got = await self._swarm(m, prefer)
            if got is None:
                return False
            path, peer = got
            return await self._settle(sha, None, "fetch", peer, path)
        finally:
            self._waiting.pop(sha, None)

    async def _settle(self, sha: str, data: bytes | None, how: str, peer: str,
                      path: Path | None = None) -> bool:
        ms = newest_first(self._waiting.get(sha, []))
        if path is None:
            return await self._accept(ms, data, how, peer)
        # Fetched bytes, verified against the sha256: stored (pinned) before they are
        # compiled, so that they are served to peers at once as a whole blob.
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.store.put_blob_file, path, sha)
        except NebulaError as e:
            log.error("fetched %s could not be stored: %s", sha[:12], e.message)
            return False
        finally:
            self.pieces.drop(sha)
            self.metrics.partial_blobs.set(self.pieces.partial_count())
        try:
            return await self._accept(ms, None, how, peer)
        finally:
            self.store.unpin(sha)
            await loop.run_in_executor(None, self.store.gc)

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
            self._mark_failed(m)
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

    def _peer_sem(self, peer: str) -> asyncio.Semaphore:
        sem = self._peer_sems.get(peer)
        if sem is None:
            if len(self._peer_sems) > 4096:  # bounded: idle ones are dropped first
                for p in [p for p, v in self._peer_sems.items() if not v.locked()]:
                    del self._peer_sems[p]
            sem = self._peer_sems[peer] = asyncio.Semaphore(PER_PEER_FETCHES)
        return sem

    def _candidates(self, sha: str, prefer: str | None) -> list[str]:
        """Whom to ask for small bytes in one request: known holders (``prefer`` first),
        else ``prefer`` if connected."""
        return self.table.holders(sha, prefer) or (
            [prefer] if prefer and self.table.is_connected(prefer) else [])

    async def _fetch_from(self, peer: str, m: Manifest) -> bytes | None:
        try:
            data = await self._request(peer, wire.BLOB_PROTOCOL, m.sha256.encode(), 10, m.size)
        except Exception as e:
            self.metrics.fetch_total.labels("error").inc()
            log.info("fetch %s from %s failed: %s", m.sha256[:12], peer, e or type(e).__name__)
            return None
        if len(data) != m.size or hashlib.sha256(data).hexdigest() != m.sha256:
            self.metrics.fetch_total.labels("bad_hash").inc()
            self._reject("hash_mismatch", peer, f"fetched bytes for {m.sha256[:12]}")
            return None
        self.metrics.fetch_total.labels("ok").inc()
        return data

    # ------------------------------------------------------------------ pieces
    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                headers=self._headers,
                connector=aiohttp.TCPConnector(limit=64, limit_per_host=8),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5,
                                              sock_read=PIECE_IDLE_S))
        return self._http

    def _peers(self) -> dict[str, str]:
        """Connected peers whose HTTP URL is known, and that URL."""
        return {r.peer_id: r.http_url for r in self.table.connected_peers() if r.http_url}

    async def _swarm(self, m: Manifest, prefer: str | None) -> tuple[Path, str] | None:
        """Fetch ``m``'s bytes in pieces; the verified file and a peer that served it, or
        None (stalled, or nobody holds them)."""
        loop = asyncio.get_running_loop()
        sha = m.sha256
        xfer = pc.Transfer(m.size, loop.time())
        state: dict[str, object] = {}
        partial = self.pieces.held(sha)
        if partial is not None and partial.table.size == m.size:
            xfer.have = set(partial.have)  # a broken transfer resumes from what it holds
            state["partial"] = partial
        resumed = len(xfer.have)
        running: set[asyncio.Task[None]] = set()
        served_by: dict[str, int] = {}
        slot = False
        try:
            while not xfer.done:
                now = loop.time()
                urls = self._peers()
                for gone in [p for p in xfer.peers if p not in urls]:
                    xfer.peer_gone(gone)
                ordered = sorted(urls, key=lambda p: p != prefer)
                for peer in xfer.polls_due(ordered, now):
                    running.add(asyncio.ensure_future(
                        self._poll(xfer, m, peer, urls[peer], state)))
                p = state.get("partial")
                if isinstance(p, Partial) and not slot:
                    await self._fetch_sem.acquire()  # a holder answered: a real transfer
                    slot = True
                    now = loop.time()
                    xfer.progress(now)  # the wait for a slot is not a stall
                if isinstance(p, Partial):
                    for i, peer in xfer.requests(now):
                        running.add(asyncio.ensure_future(
                            self._get_piece(xfer, m, p, i, peer, urls[peer], served_by)))
                if xfer.stalled(now):
                    log.warning("fetch of %s (%s) stalled: %d of %d pieces held, kept for "
                                "the next attempt", m.name, sha[:12], len(xfer.have), xfer.n)
                    self.metrics.fetch_total.labels("stalled").inc()
                    return None
                if not xfer.in_flight and xfer.unavailable(list(urls), now) and \
                        all(t.done() for t in running):
                    log.info("fetch of %s (%s): no peer holds the missing pieces; not asked "
                             "for again for a while", m.name, sha[:12])
                    self.metrics.fetch_total.labels("unavailable").inc()
                    self._mark_unavailable(sha)
                    return None
                if running:
                    done, _ = await asyncio.wait(running, timeout=TICK_S,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    running -= done
                else:
                    await asyncio.sleep(TICK_S)
            p = state["partial"]
            assert isinstance(p, Partial)
            try:
                await loop.run_in_executor(None, p.finish)
            except BadRequest as e:
                self.metrics.fetch_total.labels("bad_hash").inc()
                self._reject("hash_mismatch", str(state.get("table_from")), e.message)
                self.pieces.drop(sha)
                return None
            self.metrics.fetch_total.labels("ok").inc()
            log.info("fetched %s (%s): %d pieces (%d resumed) from %d peer(s)", m.name,
                     sha[:12], xfer.n, resumed, len(served_by))
            peer = max(served_by, key=lambda q: served_by[q]) if served_by else prefer or "?"
            return self.pieces.complete(sha), peer
        finally:
            if slot:
                self._fetch_sem.release()
            for t in running:
                t.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            if not xfer.done and self.pieces.partial_count() > PARTIALS_MAX:
                self.pieces.drop(sha)
            self.metrics.partial_blobs.set(self.pieces.partial_count())

    async def _poll(self, xfer: pc.Transfer, m: Manifest, peer: str, url: str,
                    state: dict[str, object]) -> None:
        """Ask ``peer`` which pieces it holds (and the piece table, until known)."""
        want_table = "partial" not in state
        try:
            async with self._session().get(
                    f"{url}/p2p/pieces/{m.sha256}", params={"table": "1" if want_table
                                                            else "0"},
                    timeout=aiohttp.ClientTimeout(total=10)) as r:
                if r.status == 404:
                    xfer.peer_has(peer, frozenset())
                    return
                if r.status != 200:
                    xfer.peer_failed(peer, asyncio.get_running_loop().time())
                    return
                info = pc.decode_info(await r.content.read(pc.MAX_TABLE_BYTES + 1), m.size)
        except BadRequest as e:
            self._reject("malformed_pieces", peer, e.message)
            xfer.peer_failed(peer, asyncio.get_running_loop().time())
            return
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            log.debug("pieces of %s from %s: %s", m.sha256[:12], peer, e)
            xfer.peer_failed(peer, asyncio.get_running_loop().time())
            return
        if "partial" not in state and info.table is not None:
            partial = self.pieces.partial(m.sha256, info.table)
            xfer.have = set(partial.have)
            state["partial"], state["table_from"] = partial, peer
            self.metrics.partial_blobs.set(self.pieces.partial_count())
        xfer.peer_has(peer, info.have)
        if info.have is None:
            self.table.add_holding(peer, m.sha256)

    async def _get_piece(self, xfer: pc.Transfer, m: Manifest, partial: Partial, i: int,
                         peer: str, url: str, served_by: dict[str, int]) -> None:
        loop = asyncio.get_running_loop()
        w = partial.writer(i)
        kind = "error"
        try:
            async with self._session().get(
                    f"{url}/p2p/pieces/{m.sha256}/{i}",
                    headers={"Range": f"bytes={w.offset}-{w.offset + w.length - 1}"}) as r:
                if r.status == 503:
                    kind = "busy"
                elif r.status == 404:
                    kind = "missing"
                elif r.status == 206:
                    kind = "bad"
                    async for chunk in r.content.iter_chunked(64 * 1024):
                        w.write(chunk)
                        xfer.progress(loop.time())
                    w.done()
                    kind = "ok"
        except BadRequest as e:
            self._reject("bad_piece", peer, f"{m.sha256[:12]}: {e.message}")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            kind = "error"
            log.debug("piece %d of %s from %s: %s", i, m.sha256[:12], peer, e)
        self.metrics.pieces_total.labels("received", kind).inc()
        if kind == "ok":
            self.metrics.piece_bytes_total.labels("received").inc(w.length)
            served_by[peer] = served_by.get(peer, 0) + 1
            xfer.piece_ok(i, loop.time())
        else:
            xfer.piece_failed(i, loop.time(), kind)

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
