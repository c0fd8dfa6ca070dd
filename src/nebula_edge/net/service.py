"""The mesh, running: libp2p host + mDNS + sync + fetches + exec forwarding, on asyncio.

This is the shell around the sans-IO decisions in ``mesh/``: it turns libp2p events
(from the host's own trio thread, handed over with ``call_soon_threadsafe``) and mDNS
discoveries into store changes, and local changes into gossip.

* **Announce**: a deploy, rollback or delete is published on ``TOPIC`` (small modules
  inline). A receiver verifies the message, then the bytes (sha256, size, compiles with
  the manifest's ABI and export) before storing anything.
* **Fetch** (``net/fetch.py``): bytes not inline are pulled in pieces over HTTP from
  every peer that holds them (``api/pieces.py``), verified and compiled before they are
  stored. ``BLOB_PROTOCOL`` serves blobs up to 1 MiB (``fetch.STREAM_MAX``).
* **Sync**: on every new connection and every ``sync_interval_s``, digests are compared
  and differing sets exchanged (``mesh/state.py``): an agent that starts late, restarts
  or was cut off converges without anyone deploying again.
* **Exec anywhere**: ``obtain`` waits (bounded) for a module being fetched, syncing
  first if nobody announced it; ``forward`` sends the call over HTTP to a peer that
  holds it (at most one hop: a forwarded call is never forwarded again).

Coroutines run on the node's event loop; the request handlers (``_serve_*``) run on the
libp2p thread's workers and only read the store, which is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from nebula_edge import __version__, keys
from nebula_edge.config import EdgeConfig
from nebula_edge.errors import (
    BadRequest,
    Forbidden,
    ModuleNotFound,
    NebulaError,
    Overloaded,
    PeerUnavailable,
)
from nebula_edge.manifest import Manifest, Tombstone
from nebula_edge.mesh import versions, wire
from nebula_edge.mesh.state import PeerTable, digest, newest_first
from nebula_edge.metrics import Metrics
from nebula_edge.net.fetch import STREAM_MAX, Fetcher
from nebula_edge.net.mdns import DiscoveredPeer, MdnsService, interface_ips
from nebula_edge.net.p2p import GossipMessage, P2PEvent, P2PHost, PeerConnected, PeerLost
from nebula_edge.sandbox import Sandbox
from nebula_edge.store import ModuleStore
from nebula_edge.store.modules import sha256_hex

log = logging.getLogger(__name__)

CALL_ROUND_GAP_S = 0.1
"""Least time between the starts of sync rounds with one peer that calls for unknown
names asked for: a client asking for names that exist nowhere costs each peer at most
10 small sync requests a second, and a call waits about one round more."""

FORWARDED_HEADER = wire.FORWARDED_HEADER


class MeshService:
    def __init__(
        self, config: EdgeConfig, store: ModuleStore, sandbox: Sandbox, metrics: Metrics
    ) -> None:
        self.config = config
        self.store = store
        self.sandbox = sandbox
        self.metrics = metrics
        self.table = PeerTable()
        self.on_change: Callable[[str, dict[str, Any]], None] | None = None  # dashboard events
        self._names: dict[str, set[str]] = {}
        """peer id -> module names it holds (from its sync answers and announcements)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: asyncio.Queue[P2PEvent] = P2PHost.event_queue()  # bounded, counted
        self._tasks: set[asyncio.Task[Any]] = set()
        self.fetcher = Fetcher(store, sandbox, metrics, self.table, self._request,
                               self._reject, self._stored_from, token=config.token)
        self._joined = asyncio.Event()
        """Set once the first peer has connected (obtain() waits for it on a new agent)."""
        self._started = time.monotonic()
        self._last_dial: dict[str, float] = {}
        self._untrusted: set[str] = set()
        self._too_big = versions.Once()
        """Ids of versions this agent refused to hold (counted and logged once each)."""
        self.versions = versions.VersionBook()
        """The mesh's best version per name, refused ones included (the exec decision)."""
        self._held = versions.Once()
        metrics.version_book_names.set_function(lambda: len(self.versions))
        self._syncing: dict[str, asyncio.Task[None]] = {}
        self._sync_began: dict[str, float] = {}
        """peer id -> when the sync round running with it (or the last one) began."""
        self._round_now: dict[str, asyncio.Future[None]] = {}
        """peer id -> done when the sync round running with it ends."""
        self._round_next: dict[str, asyncio.Future[None]] = {}
        """peer id -> done when the round after the running one ends (asked for by calls)."""
        self._synced_at: dict[str, float] = {}
        self._infos: dict[str, asyncio.Task[None]] = {}
        self._http: aiohttp.ClientSession | None = None
        self.mdns: MdnsService | None = None
        ips = list(config.advertise) or interface_ips(list(config.mdns_interfaces) or None)
        if config.bind not in ("0.0.0.0", "::", ""):
            ips = [config.bind]
        self.advertise_ips = ips
        self.p2p = P2PHost(
            key_path=config.state_dir / "identity.key",
            listen_ip=config.bind if config.bind not in ("", "::") else "0.0.0.0",
            port=config.effective_p2p_port,
            advertise_ips=ips,
            topics=[wire.TOPIC],
            on_event=self._on_event,
            handlers={
                wire.BLOB_PROTOCOL: self._serve_blob,
                wire.SYNC_PROTOCOL: self._serve_sync,
                wire.INFO_PROTOCOL: self._serve_info,
            },
            heartbeat_s=config.heartbeat_s,
            validator=self._validate_gossip,
        )

    @property
    def peer_id(self) -> str:
        return str(self.p2p.peer_id)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._loop.run_in_executor(None, self.p2p.start)
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=35))
        log.info("mesh: peer %s on %s", self.peer_id, ", ".join(self.p2p.addrs))
        self._spawn(self._event_loop())
        self._spawn(self._sync_loop())
        for addr in self.config.peers:
            self._dial(addr)
        if self.config.mdns:
            # mDNS registration probes for ~1.7 s: do not hold up the HTTP server for it.
            self._spawn(self._start_mdns())

    async def _start_mdns(self) -> None:
        try:
            mdns = MdnsService(
                instance_name=f"edge-{self.peer_id[-12:]}-{self.config.port}",
                http_port=self.config.port,
                peer_id=self.peer_id,
                p2p_addrs=self.p2p.addrs,
                version=__version__,
                interfaces=list(self.config.mdns_interfaces) or None,
                advertise_ips=self.advertise_ips,
                on_found=self._on_found,
                reannounce_s=self.config.reannounce_s,
            )
            await mdns.start()
            self.mdns = mdns
        except Exception as e:
            log.error("mDNS discovery is off: %s (peers can still be given with -peer)", e)

    async def stop(self) -> None:
        if self.mdns is not None:
            with contextlib.suppress(Exception):
                await self.mdns.stop()
        tasks = [*self._tasks, *self.fetcher.tasks()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        await self.fetcher.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.p2p.stop)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        t: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    # ------------------------------------------------------------------ events in
    def _call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Thread-safe: run ``fn(*args)`` on the event loop (dropped once it is closed)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)

    def _on_event(self, ev: P2PEvent) -> None:
        """Called on the libp2p thread: hand the event to the event loop."""
        self._call_soon(self._events.put_nowait, ev)

    async def _event_loop(self) -> None:
        while True:
            ev = await self._events.get()
            try:
                if isinstance(ev, PeerConnected):
                    await self._peer_connected(ev)
                elif isinstance(ev, PeerLost):
                    if self.table.lost(ev.peer_id):
                        self._forget(ev.peer_id)
                        log.info("peer lost: %s", ev.peer_id)
                        self.on_change and self.on_change("peer_left", {"peer": ev.peer_id})
                    self.metrics.peers.set(len(self.table.connected_peers()))
                elif isinstance(ev, GossipMessage):
                    await self._gossip(ev.from_peer, ev.data)
            except Exception:
                log.exception("mesh: error handling %s", type(ev).__name__)

    def _forget(self, peer: str) -> None:
        """Drop what is kept per connection of a lost peer (a running sync ends by itself:
        its requests fail once the connection is gone)."""
        self._names.pop(peer, None)
        for per_peer in (self._sync_began, self._synced_at, self._last_dial):
            per_peer.pop(peer, None)
        info = self._infos.get(peer)
        if info is not None and info.done():
            del self._infos[peer]

    async def _peer_connected(self, ev: PeerConnected) -> None:
        self._joined.set()
        if self.table.connected(ev.peer_id, ev.addrs, time.time()):
            log.info("peer joined: %s (%s)", ev.peer_id, ", ".join(ev.addrs[:2]))
            self.on_change and self.on_change("peer_joined", {"peer": ev.peer_id})
        self.metrics.peers.set(len(self.table.connected_peers()))
        self._info(ev.peer_id)
        self._sync(ev.peer_id)

    def _on_found(self, peer: DiscoveredPeer) -> None:
        if peer.peer_id == self.peer_id:
            return
        if self.table.is_connected(peer.peer_id):
            return  # what we know over the connection wins over an unauthenticated answer
        # Unauthenticated: nothing is kept here per answer; the host's candidate table is
        # bounded, expires entries and dials them with backoff (net/candidates.py).
        self.p2p.candidate(peer.peer_id, peer.p2p_addrs)

    def _dial(self, addr: str) -> None:
        fut = self.p2p.connect(addr)

        def done(f: Any) -> None:
            if f.cancelled() or f.exception() is not None:
                log.debug("dial %s failed: %s", addr, None if f.cancelled() else f.exception())

        fut.add_done_callback(done)

    async def _request(
        self, peer: str, protocol: str, payload: bytes, timeout: float, max_response: int
    ) -> bytes:
        fut = self.p2p.request(peer, protocol, payload, timeout=timeout, max_response=max_response)
        return await asyncio.wait_for(asyncio.wrap_future(fut), timeout + 1)

    def _info(self, peer: str) -> asyncio.Task[None]:
        """Learn a peer's HTTP URL (at most one request per peer in flight)."""
        task = self._infos.get(peer)
        if task is None or task.done():
            task = self._infos[peer] = self._spawn(self._learn_info(peer))
        return task

    def _http_url(self, peer: str) -> str | None:
        rec = self.table.get(peer)
        return rec.http_url if rec is not None else None

    async def _learn_info(self, peer: str) -> None:
        """A connected peer's HTTP URL: its own word over the authenticated connection
        (INFO) and the connection's address, never an mDNS answer anyone can forge."""
        try:
            info = wire.decode_info(await self._request(peer, wire.INFO_PROTOCOL, b"", 10, 4096))
        except (TimeoutError, NebulaError, OSError, Exception) as e:
            log.debug("info from %s failed: %s", peer, e)
            return
        rec = self.table.get(peer)
        ip = _ip_of(rec.addrs) if rec is not None else None
        if ip is not None:
            self.table.discovered(peer, (), f"http://{ip}:{info.http_port}", info.version)

    # ------------------------------------------------------------------ gossip
    def announce(self, rec: Manifest | Tombstone) -> None:
        """Publish a local change. Never raises: catch-up sync repairs a lost publish."""
        try:
            if isinstance(rec, Tombstone):
                msg: wire.GossipMessage = wire.Delete(rec)
            else:
                wasm = self.store.read_blob(rec.sha256) if rec.size <= wire.INLINE_MAX else None
                msg = wire.announce_for(rec, wasm)
            self.p2p.publish(wire.TOPIC, wire.encode_gossip(msg))
        except Exception as e:
            log.warning("mesh: publish of %s failed (sync will repair): %s", rec.name, e)

    def _reject(self, reason: str, peer: str, detail: object) -> None:
        self.metrics.gossip_rejected_total.labels(reason).inc()
        log.warning("rejected message from %s (%s): %s", peer, reason, detail)

    async def _gossip(self, peer: str, data: bytes) -> None:
        try:
            msg = wire.decode_gossip(data)
        except BadRequest as e:
            self._reject("malformed", peer, e.message)
            return
        if isinstance(msg, wire.Delete):
            if self._trusted(msg.tombstone, peer):
                await self._apply_tombstone(msg.tombstone)
            return
        m = msg.manifest
        if not self._trusted(m, peer) or self._held_back(m):
            return
        if self.table.is_connected(peer):  # origins are minted freely: no state for them
            self._names.setdefault(peer, set()).add(m.name)
            self.table.add_holding(peer, m.sha256)
        if not self._wanted(m):
            return
        if msg.wasm is not None and sha256_hex(msg.wasm) != m.sha256:
            self._reject("hash_mismatch", peer, f"{m.name} inline bytes")
            return
        self.fetcher.start(m, prefer=peer, data=msg.wasm)

    def _validate_gossip(self, data: bytes) -> bool:
        """Runs on the libp2p thread for every gossip message, before it is delivered or
        relayed: malformed or untrusted messages go no further than this agent."""
        try:
            msg = wire.decode_gossip(data)
        except BadRequest as e:
            self._reject("malformed", "gossip", e.message)
            return False
        rec = msg.tombstone if isinstance(msg, wire.Delete) else msg.manifest
        if not self.config.trusted_keys:
            return True
        try:
            keys.check(rec, self.config.trusted_keys)
        except Forbidden as e:
            self._reject("untrusted", "gossip", f"{rec.name}: {e.message}")
            return False
        return True

    def _held_back(self, rec: Manifest | Tombstone) -> bool:
        """Whether a peer's record is dated too far in the future to adopt now (counted
        and logged once; sync offers it again and it is judged again then)."""
        if not versions.too_far_ahead(versions.record_time(rec), time.time()):
            return False
        if self._held.first_time(rec.id):
            kind = "tombstone" if isinstance(rec, Tombstone) else "manifest"
            self.metrics.held_back_total.labels(kind).inc()
            log.warning("holding back a %s of %s dated %.0f s ahead of this agent's clock "
                        "(limit %.0f s)", kind, rec.name,
                        versions.record_time(rec) - time.time(), versions.MAX_FUTURE_S)
        return True

    def _refused(self, m: Manifest, reason: str) -> bool:
        """Note a version this agent will not hold; True the first time (to log it)."""
        self.versions.note(m, refused=reason)
        if not self._too_big.first_time(m.id):
            return False
        self.metrics.peer_refused_total.labels(reason).inc()
        return True

    def outdated(self, name: str, held: Manifest) -> Manifest | None:
        """The mesh's winning version of ``name`` if it is newer than ``held``."""
        return self.versions.newer_than(held, self.store.tombstone(name))

    def _wanted(self, m: Manifest) -> bool:
        """The store would take it, and it is within this agent's own module size limit
        (a bigger one stays on the peers that hold it: calls to it are forwarded).
        Every version a peer offers is noted in ``versions``, refused ones too."""
        if self._held_back(m):
            return False
        if not self.store.has_room(m.name):  # not noted: calls for it are forwarded anyway
            if self._too_big.first_time(m.id):
                self.metrics.peer_refused_total.labels("max_modules").inc()
                log.info("not taking %s from a peer: this agent holds its maximum of %d "
                         "modules; calls are forwarded", m.name, self.config.max_modules)
            return False
        self.versions.note(m)
        if m.size > self.config.max_module_size:
            if self._refused(m, "too_big"):
                log.info("not fetching %s v%d: %d bytes is over -max-module-size %d; calls "
                         "are forwarded", m.name, m.version, m.size, self.config.max_module_size)
            return False
        try:
            self.sandbox.effective_limits(m.limits)
        except NebulaError:
            if self._refused(m, "over_limits"):
                log.info("not fetching %s v%d: its limits exceed this agent's maxima; calls "
                         "are forwarded", m.name, m.version)
            return False
        return self.store.wants(m)

    def _trusted(self, rec: Manifest | Tombstone, peer: str) -> bool:
        """Whether a peer's record carries a valid signature from a trusted key (always
        true on an open agent). A rogue peer on the LAN cannot inject a module. Each bad
        record is counted and logged once, however often sync offers it again."""
        if not self.config.trusted_keys:
            return True
        rid = rec.id
        if rid in self._untrusted:
            return False
        try:
            keys.check(rec, self.config.trusted_keys)
        except Forbidden as e:
            if len(self._untrusted) > 10_000:
                self._untrusted.clear()
            self._untrusted.add(rid)
            self._reject("untrusted", peer, f"{rec.name}: {e.message}")
            return False
        return True

    async def _apply_tombstone(self, t: Tombstone) -> None:
        if self._held_back(t):
            return
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(None, self.store.put_tombstone, t):
            log.info("module deleted by the mesh: %s", t.name)
            self.metrics.modules.set(len(self.store.names()))

    def blob_lost(self, m: Manifest) -> None:
        """Thread-safe. A local blob failed verification: fetch a good copy from a peer."""
        self._call_soon(self.fetcher.start, m, None)

    # ------------------------------------------------------------------ sync
    def _digest(self) -> str:
        return digest(self.store.all_manifests(), self.store.tombstones())

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.sync_interval_s * (0.75 + random.random() / 2))
            for rec in self.table.connected_peers():
                self._sync(rec.peer_id)

    def _sync(self, peer: str) -> asyncio.Task[None]:
        """Sync with ``peer``: the sync already running if there is one (one at a time)."""
        task = self._syncing.get(peer)
        if task is None or task.done():
            task = self._syncing[peer] = self._spawn(self._sync_with(peer))
            task.add_done_callback(lambda t: self._sync_ended(peer, t))
        return task

    def _sync_ended(self, peer: str, task: asyncio.Task[None]) -> None:
        """Whatever ended the task (even a cancel before it ever ran), nobody is left
        waiting for a round it will not run."""
        if self._syncing.get(peer) is task:
            del self._syncing[peer]
            for rounds in (self._round_now, self._round_next):
                fut = rounds.pop(peer, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)

    def _sync_round(self, peer: str, since: float) -> asyncio.Future[None]:
        """Done once a sync round with ``peer`` that began at or after ``since`` has ended.
        A round already running that began earlier may have missed a module that landed
        on the peer since: then the next round is asked for. However many calls ask,
        there is at most one round running and one waiting per peer, and rounds asked
        for this way begin at least ``CALL_ROUND_GAP_S`` apart."""
        task = self._syncing.get(peer)
        running = task is not None and not task.done()
        if running and self._sync_began.get(peer, -1e9) >= since and peer in self._round_now:
            return self._round_now[peer]
        fut = self._round_next.get(peer)
        if fut is None:
            fut = self._round_next[peer] = asyncio.get_running_loop().create_future()
        if not running:
            self._sync(peer)
        return fut

    def _sync_unless_recent(self, peer: str) -> None:
        """Sync with ``peer`` unless a sync with it is running or ended less than
        ``sync_interval_s`` ago."""
        if not self.table.is_connected(peer):
            return
        task = self._syncing.get(peer)
        if task is not None and not task.done():
            return
        if time.monotonic() - self._synced_at.get(peer, -1e9) < self.config.sync_interval_s:
            return
        self._sync(peer)

    async def _sync_with(self, peer: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                # Rounds begin at least CALL_ROUND_GAP_S apart, across tasks too.
                gap = self._sync_began.get(peer, -1e9) + CALL_ROUND_GAP_S - time.monotonic()
                if gap > 0:
                    await asyncio.sleep(gap)
                asked = self._round_next.pop(peer, None)
                now = self._round_now[peer] = asked if asked is not None else \
                    loop.create_future()
                self._sync_began[peer] = time.monotonic()
                try:
                    await self._sync_once(peer)
                except Exception:  # a bug: log it, and still serve the rounds asked for
                    log.exception("mesh: sync with %s failed", peer)
                finally:
                    if not now.done():
                        now.set_result(None)
                if peer not in self._round_next:
                    return
        finally:
            self._synced_at[peer] = time.monotonic()

    async def _sync_once(self, peer: str) -> None:
        req = wire.encode_sync_request(wire.SyncRequest(self._digest()))
        try:
            data = await self._request(peer, wire.SYNC_PROTOCOL, req, 15, wire.MAX_SYNC_RESPONSE)
            resp = wire.decode_sync_response(data)
        except BadRequest as e:
            self.metrics.sync_total.labels("malformed").inc()
            self._reject("malformed_sync", peer, e.message)
            return
        except Exception as e:
            self.metrics.sync_total.labels("failed").inc()
            log.debug("sync with %s failed: %s", peer, e)
            return
        self.metrics.sync_total.labels("same" if resp.manifests is None else "differ").inc()
        if resp.manifests is None:  # same digest: the peer holds exactly what we hold
            self._holds(peer, list(self.store.all_manifests()))
            return
        self.table.set_holdings(peer, {m.sha256 for m in resp.manifests})
        # Forward calls only where the peer's current version is one this agent would
        # accept itself (trusted, and not held back as dated in the future).
        newest: dict[str, Manifest] = {}
        for m in resp.manifests:
            if m.name not in newest or m.key > newest[m.name].key:
                newest[m.name] = m
        self._names[peer] = {n for n, m in newest.items()
                             if self._trusted(m, peer) and not self._held_back(m)}
        for t in resp.tombstones:
            if self.store.tombstone(t.name) != t and self._trusted(t, peer):
                await self._apply_tombstone(t)
        for m in newest_first(resp.manifests):
            if self._trusted(m, peer) and self._wanted(m):
                self.fetcher.start(m, prefer=peer)

    def _holds(self, peer: str, manifests: list[Manifest]) -> None:
        """``peer`` holds exactly ``manifests`` (its digest equals that of this set)."""
        if self.table.is_connected(peer):
            self.table.set_holdings(peer, {m.sha256 for m in manifests})
            self._names[peer] = {m.name for m in manifests}

    def _stored_from(self, peer: str) -> None:
        """Versions announced by ``peer`` are stored here: sync with it at once, so that
        it learns this agent holds them now (its ``GET /modules`` counts holders), not a
        sync interval later."""
        self.on_change and self.on_change("stored", {"peer": peer})
        if self.table.is_connected(peer):
            self._sync(peer)

    # ------------------------------------------------------------------ serving peers
    def _serve_blob(self, peer: str, request: bytes) -> bytes:
        sha = request.decode("ascii", "replace").strip()
        if not self.store.has_blob(sha):
            raise ModuleNotFound(f"no blob {sha[:16]}")
        if self.store.blob_path(sha).stat().st_size > STREAM_MAX:  # memory stays bounded
            raise ModuleNotFound(f"blob {sha[:16]} is served in pieces (GET /p2p/pieces)")
        return self.store.read_blob(sha)

    def _serve_sync(self, peer: str, request: bytes) -> bytes:
        req = wire.decode_sync_request(request)
        manifests = tuple(self.store.all_manifests())  # one snapshot: digest and answer agree
        tombstones = tuple(self.store.tombstones())
        mine = digest(manifests, tombstones)
        if req.digest == mine:  # so the peer holds what we hold
            self._call_soon(self._holds, peer, list(manifests))
            return wire.encode_sync_response(wire.SyncResponse(mine, None))
        # They differ from us: pull their side too, without waiting for our timer, but at
        # most once per interval (two agents that can never agree, e.g. with different
        # -max-module-size, would otherwise trigger each other in a loop).
        self._call_soon(self._sync_unless_recent, peer)
        return wire.encode_sync_response(wire.SyncResponse(mine, manifests, tombstones))

    def _serve_info(self, peer: str, request: bytes) -> bytes:
        return wire.encode_info(wire.PeerInfo(self.config.port, __version__))

    # ------------------------------------------------------------------ exec anywhere
    async def obtain(self, name: str) -> Manifest | None:
        """The local current version of ``name``, waiting up to ``fetch_wait_s`` for bytes
        on their way (after asking every peer, if nobody announced the module). A newer
        version being fetched is waited for too (bounded), so a catching-up agent does not
        answer with an old version while the current one is a moment away. An agent that
        has just started waits (within the same bound) for its first peer."""
        deadline = time.monotonic() + self.config.fetch_wait_s
        may_join = self.config.mdns or bool(self.config.peers)
        if may_join and not self._joined.is_set() and \
                time.monotonic() - self._started < self.config.fetch_wait_s + 5:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._joined.wait(),
                                       max(0.0, deadline - time.monotonic()))
        asked = time.monotonic()
        syncs: list[asyncio.Future[Any]] = []
        if not self.fetcher.pending_for(name):
            # A sync round with every peer that began after this call arrived: the module
            # may have landed on a peer a moment ago, its announcement still on the way.
            syncs = [self._sync_round(r.peer_id, asked) for r in self.table.connected_peers()]
        while True:
            m = self.store.current(name)
            if m is not None and not self.fetcher.newer_pending(name, m):
                return m
            # A sync that finds the module starts its fetch before it returns.
            waits = [*self.fetcher.pending_for(name), *(s for s in syncs if not s.done())]
            remaining = deadline - time.monotonic()
            if not waits or remaining <= 0:
                return self.store.current(name)
            await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)

    async def forward(self, name: str, body: dict[str, Any],
                      want: Manifest | None = None) -> tuple[dict[str, Any], str]:
        """Run the call on a peer that holds ``name`` (with ``want``: one that holds that
        version's bytes); one hop at most."""
        assert self._http is not None
        holding = [r.peer_id for r in self.table.connected_peers()
                   if name in self._names.get(r.peer_id, set())
                   and (want is None or want.sha256 in r.holds)]
        if want is not None and not holding:
            raise versions.unavailable(want, self.versions.refused(want))
        unknown = [self._info(p) for p in holding if not self._http_url(p)]
        if unknown:  # a peer that has just joined: its HTTP URL is a moment away
            await asyncio.wait(unknown, timeout=self.config.fetch_wait_s)
        urls = [(p, url) for p in holding if (url := self._http_url(p))]
        if not urls:
            raise ModuleNotFound(
                f"no module named {name!r} on this agent or its "
                f"{len(self.table.connected_peers())} peer(s)"
            )
        last: Exception | None = None
        for peer, url in urls:
            try:
                async with self._http.post(
                    f"{url}/exec",
                    data=json.dumps(body),
                    headers={FORWARDED_HEADER: self.peer_id, "Content-Type": "application/json"},
                    allow_redirects=False,
                ) as r:
                    payload = await r.json(content_type=None)
                    if r.status == 404 or _code(payload) == versions.UNAVAILABLE:
                        continue
                    if r.status >= 400:
                        raise _peer_error(r.status, payload, r.headers.get("Retry-After"))
                    if not isinstance(payload, dict):
                        raise ValueError("peer answered something other than a JSON object")
                    return payload, r.headers.get("X-Nebula-Peer", peer)
            except (TimeoutError, aiohttp.ClientError, ValueError) as e:
                last = e
                log.info("forward of %s to %s failed: %s", name, peer, e)
        if last is not None:
            raise PeerUnavailable(f"peers holding {name!r} could not be reached: {last}")
        if want is not None:
            raise versions.unavailable(want, self.versions.refused(want))
        raise ModuleNotFound(f"no module named {name!r} on this agent or its peers")

    # ------------------------------------------------------------------ views
    def holders(self, m: Manifest) -> int:
        """Agents (this one included) known to hold this version's bytes."""
        return 1 + len(self.table.holders(m.sha256))

    def peers(self) -> list[dict[str, Any]]:
        # The host corrects a dialler's address to its listen address once identified.
        live = self.p2p.connected_peers()
        return [
            {
                "peer_id": r.peer_id,
                "addrs": live.get(r.peer_id) or list(r.addrs),
                "http_url": r.http_url,
                "connected_since": r.connected_since,
                "version": r.version,
                "modules": len(self._names.get(r.peer_id, set())),
            }
            for r in sorted(self.table.connected_peers(), key=lambda r: r.peer_id)
        ]


def _code(payload: Any) -> str | None:
    err = payload.get("error") if isinstance(payload, dict) else None
    return str(err.get("code")) if isinstance(err, dict) else None


def _peer_error(status: int, payload: Any, retry_after: str | None) -> NebulaError:
    """A peer's error answer to a forwarded call, passed on with its code and status."""
    err = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(err, dict):
        err = {}
    message = str(err.get("message") or f"peer answered {status}")
    if status == 503:
        try:
            return Overloaded(message, retry_after=int(retry_after or 1))
        except ValueError:
            return Overloaded(message)
    e = NebulaError(message)
    e.code, e.status = str(err.get("code") or "peer_error"), status
    return e


def _ip_of(addrs: tuple[str, ...]) -> str | None:
    for a in addrs:
        parts = a.split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6") and parts[2] not in ("0.0.0.0", "::"):
            return parts[2] if parts[1] == "ip4" else f"[{parts[2]}]"
    return None
