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
* **Sync** (``mesh/sync.py``, ``mesh/rounds.py``): on every new connection, and every
  interval (``sync_interval_s``, stretched past 32 members) with one random connected
  peer, roots of the digest index (``mesh/index.py``, kept up to date on each store
  write) are compared; only the names that differ cross the wire, in bounded pieces.
  Member lists ride on the same rounds (``mesh/members.py``): ``GET /peers`` lists every
  live member, ``connected`` saying whether this agent holds a direct connection.
* **Exec anywhere**: ``obtain`` waits (bounded) for a module being fetched, syncing
  first if nobody announced it; ``forward`` sends the call over HTTP to a peer that
  holds it (at most one hop: a forwarded call is never forwarded again).

Every decision (when, with whom, what differs, who is alive) is made by the sans-IO
code in ``mesh/``; this module carries it out. Coroutines run on the node's event loop;
the request handlers (``_serve_*``) run on the libp2p thread's workers and only read the
store (thread-safe) and the digest index (under ``_index_lock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from pathlib import Path
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
from nebula_edge.mesh.index import DigestIndex
from nebula_edge.mesh.members import CONN_HIGH, CONN_LOW, Members
from nebula_edge.mesh.rounds import CALL_ROUND_GAP_S, Rounds
from nebula_edge.mesh.state import PeerTable, newest_first
from nebula_edge.mesh.sync import PullSession, answer_pull, answer_sync, peer_holdings
from nebula_edge.metrics import Metrics
from nebula_edge.net.fetch import STREAM_MAX, Fetcher
from nebula_edge.net.mdns import DiscoveredPeer, MdnsService, interface_ips
from nebula_edge.net.p2p import GossipMessage, P2PEvent, P2PHost, PeerConnected, PeerLost
from nebula_edge.sandbox import Sandbox
from nebula_edge.store import ModuleStore
from nebula_edge.store.fsutil import atomic_write
from nebula_edge.store.modules import sha256_hex

log = logging.getLogger(__name__)

__all__ = ["CALL_ROUND_GAP_S", "FORWARDED_HEADER", "MeshService"]

FORWARDED_HEADER = wire.FORWARDED_HEADER
MAINTAIN_S = 2.0
"""Membership and connection upkeep period: report lost peers dead after SUSPECT_S,
dial a member while below CONN_LOW. One timer, whatever the fleet's size."""
CATCHUP_MIN = 8
"""Wanted versions in one pull piece from which they are fetched as a batch (a late
joiner, an agent back from a partition) rather than one Fetcher task each."""
CATCHUP_FETCHES = 2
"""``blobs`` requests in flight to one peer during a catch-up (each up to 64 blobs): with
the Fetcher's 4 and a sync, under the 8 request streams a peer serves per peer at once."""
CATCHUP_BATCH = 64
"""Modules stored per filesystem sync during a catch-up (500 modules: 8 syncs)."""
RECONNECT_S = 30.0
"""Serf's reconnect_interval: how often an agent dials one member reported dead (how the
halves of a healed partition find each other), and the least time between two dials of
one live member it is not connected to."""
SEEN_EVERY_S = 60.0
"""How often an agent with peers notes (in ``<state>/mesh-seen``) that it is in the mesh,
and collects tombstones older than the horizon: both only need to be right to within a
minute against a horizon of days."""
MAX_REFUSED = 10_000
"""Versions this agent refuses for good (over its size or limit maxima) that it still
counts in its digest; past it the oldest are forgotten (they then cost one differing
round each, as before this cap existed)."""
MAX_VERIFIED = 100_000
"""Record ids whose signature was checked (either outcome), so a record offered again
by every sync is verified once (~60 us an ed25519 check): 100,000 ids ~ 10 MB."""


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
        self._rng = random.Random()
        self.fetcher = Fetcher(store, sandbox, metrics, self.table, self._request,
                               self._reject, self._stored_from, token=config.token)
        self._joined = asyncio.Event()
        """Set once the first peer has connected (obtain() waits for it on a new agent)."""
        self._started = time.monotonic()
        self._last_dial: dict[str, float] = {}
        self._verified: OrderedDict[str, bool] = OrderedDict()
        """record id -> whether its signature checked out (bounded: MAX_VERIFIED)."""
        self._verified_lock = threading.Lock()
        self._too_big = versions.Once()
        """Ids of versions this agent refused to hold (counted and logged once each)."""
        self._dropped = {"trimmed": 0, "declined": 0, "verified": 0}
        """Entries evicted at each bound (``bounds()``)."""
        self._declined: OrderedDict[str, Manifest] = OrderedDict()
        """manifest id -> a version this agent will never take (too big, limits over its
        maxima): counted in the digest so peers do not offer it every round."""
        self.index = DigestIndex()
        self._index_lock = threading.Lock()
        """Guards ``index`` and ``_declined``: store writes update it on any thread."""
        self.rounds = Rounds(config.sync_interval_s)
        self.versions = versions.VersionBook()
        """The mesh's best version per name, refused ones included (the exec decision)."""
        self._held = versions.Once()
        metrics.version_book_names.set_function(lambda: len(self.versions))
        self._syncing: dict[str, asyncio.Task[None]] = {}
        self._round_now: dict[str, asyncio.Future[None]] = {}
        """peer id -> done when the sync round running with it ends."""
        self._round_next: dict[str, asyncio.Future[None]] = {}
        """peer id -> done when the round after the running one ends (asked for by calls)."""
        self._infos: dict[str, asyncio.Task[None]] = {}
        self._trimmed: set[str] = set()
        """Peers whose connection this agent closed itself (over CONN_HIGH): not failures."""
        self._seen_path = config.state_dir / "mesh-seen"
        self._seen = _read_seen(self._seen_path)
        """Wall time this agent last had a peer (None: never noted)."""
        self._seen_noted = 0.0
        self._reconnected = 0.0
        """When a member reported dead was last dialled (one every RECONNECT_S)."""
        self.members: Members | None = None
        self._mlock = threading.Lock()
        """Guards ``members``: changed on the event loop, read by sync answers too."""
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
            topics=[wire.TOPIC, wire.MEMBERS_TOPIC],
            on_event=self._on_event,
            handlers={
                wire.BLOB_PROTOCOL: self._serve_blob,
                wire.SYNC_PROTOCOL: self._serve_sync,
                wire.INFO_PROTOCOL: self._serve_info,
            },
            heartbeat_s=config.heartbeat_s,
            validator=self._validate_gossip,
        )
        store.watch(self._store_changed)
        for name in {*store.names(), *(t.name for t in store.tombstones())}:
            self._store_changed(name)

    @property
    def peer_id(self) -> str:
        return str(self.p2p.peer_id)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._loop.run_in_executor(None, self.p2p.start)
        # The incarnation only this agent raises (SWIM): its start time in ms is higher
        # than any incarnation an earlier run of it had.
        self.members = Members(self.peer_id, int(time.time() * 1000), self.p2p.addrs,
                               time.monotonic())
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=35))
        log.info("mesh: peer %s on %s", self.peer_id, ", ".join(self.p2p.addrs))
        self._spawn(self._event_loop())
        self._spawn(self._sync_loop())
        self._spawn(self._maintain_loop())
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
                elif isinstance(ev, GossipMessage) and ev.topic == wire.MEMBERS_TOPIC:
                    self._member_news(ev.from_peer, ev.data)
                elif isinstance(ev, GossipMessage):
                    await self._gossip(ev.from_peer, ev.data)
            except Exception:
                log.exception("mesh: error handling %s", type(ev).__name__)

    def _forget(self, peer: str) -> None:
        """Drop what is kept per connection of a lost peer (a running sync ends by itself:
        its requests fail once the connection is gone)."""
        self._names.pop(peer, None)
        self._last_dial.pop(peer, None)
        self.rounds.forget(peer)
        if self.members is not None:
            with self._mlock:
                self.members.lost(peer, time.monotonic(), trimmed=peer in self._trimmed)
        if peer in self._trimmed or len(self.table.connected_peers()) >= CONN_LOW:
            self.p2p.forget(peer)  # enough connections: do not redial it forever
        self._trimmed.discard(peer)
        info = self._infos.get(peer)
        if info is not None and info.done():
            del self._infos[peer]

    def _publish_member(self, m: wire.Member) -> None:
        with contextlib.suppress(Exception):
            self.p2p.publish(wire.MEMBERS_TOPIC, wire.encode_member_news(m))

    def _merge_members(self, listed: tuple[wire.Member, ...] | list[wire.Member]) -> None:
        """Take members from a peer; if one said this agent is dead, the refutation (a
        higher incarnation) is published at once."""
        members = self.members
        if members is None:
            return
        with self._mlock:
            before = members.incarnation(self.peer_id)
            members.merge(listed, time.monotonic())
            me = members.me()
        if me.incarnation != before:
            log.info("mesh: refuting a report of this agent's death (incarnation %d)",
                     me.incarnation)
            self._publish_member(me)

    def _member_news(self, peer: str, data: bytes) -> None:
        try:
            m = wire.decode_member_news(data)
        except BadRequest as e:
            self._reject("malformed", peer, e.message)
            return
        self._merge_members([m])

    def _back_after_horizon(self) -> None:
        """An agent away from the mesh longer than the tombstone horizon holds modules
        whose deletion everyone else has forgotten: it starts over from its peers rather
        than bring them back (its records from before it left are set aside in
        ``quarantine/``)."""
        now = time.time()
        if self._seen is not None and now - self._seen > self.config.tombstone_horizon_s:
            # What it deployed alone since is its own news; what it held before is stale.
            where = self.store.set_aside_records(self._seen)
            if where is not None:
                log.warning("mesh: away for %.1f days, longer than the tombstone horizon "
                            "(%.1f days): this agent's modules were set aside in %s and "
                            "are synced again from its peers", (now - self._seen) / 86400,
                            self.config.tombstone_horizon_s / 86400, where)
        self._seen = self._seen_noted = now  # runs in the executor: write here
        self._write_seen(now)

    def _note_seen(self, now: float) -> None:
        """Note that this agent is in the mesh (the file is written off the loop when
        there is one, at most once per ``SEEN_EVERY_S``)."""
        self._seen = now
        if now - self._seen_noted >= SEEN_EVERY_S:
            self._seen_noted = now
            loop = self._loop
            if loop is not None and loop.is_running():
                loop.run_in_executor(None, self._write_seen, now)
            else:
                self._write_seen(now)

    def _write_seen(self, now: float) -> None:
        with contextlib.suppress(OSError):
            atomic_write(self._seen_path, f"{now:.0f}\n".encode(), durable=False)

    def _expired(self, t: Tombstone) -> bool:
        return t.deleted_at < time.time() - self.config.tombstone_horizon_s

    async def _peer_connected(self, ev: PeerConnected) -> None:
        if not self._joined.is_set() or not self.table.connected_peers():
            seen = self._seen
            if seen is not None and time.time() - seen > self.config.tombstone_horizon_s:
                await asyncio.get_running_loop().run_in_executor(None,
                                                                 self._back_after_horizon)
            else:
                self._note_seen(time.time())
        if not self._joined.is_set() and self.members is not None:
            self._call_later_member_news()
        self._joined.set()
        if self.table.connected(ev.peer_id, ev.addrs, time.time()):
            log.info("peer joined: %s (%s)", ev.peer_id, ", ".join(ev.addrs[:2]))
            self.on_change and self.on_change("peer_joined", {"peer": ev.peer_id})
        if self.members is not None:
            with self._mlock:
                self.members.connected(ev.peer_id, ev.addrs, time.monotonic())
        self.metrics.peers.set(len(self.table.connected_peers()))
        self._info(ev.peer_id)
        self._sync(ev.peer_id)

    def _call_later_member_news(self) -> None:
        """On joining (first connection): publish this agent's record once gossipsub had a
        heartbeat to graft the new connection into its mesh."""
        loop = self._loop
        members = self.members
        if loop is not None and members is not None:
            loop.call_later(max(1.0, self.config.heartbeat_s),
                            lambda: self._publish_member(members.me()))

    def _on_found(self, peer: DiscoveredPeer) -> None:
        if peer.peer_id == self.peer_id:
            return
        if self.table.is_connected(peer.peer_id):
            return  # what we know over the connection wins over an unauthenticated answer
        if len(self.table.connected_peers()) >= CONN_LOW:
            return  # enough direct connections: membership spreads by gossip and sync
        # Unauthenticated: nothing is kept here per answer; the host's candidate table is
        # bounded, expires entries and dials them with backoff (net/candidates.py).
        self.p2p.candidate(peer.peer_id, peer.p2p_addrs)

    def _dial(self, addr: str) -> None:
        fut = self.p2p.connect(addr)

        def done(f: Any) -> None:
            if f.cancelled() or f.exception() is not None:
                log.debug("dial %s failed: %s", addr, None if f.cancelled() else f.exception())

        fut.add_done_callback(done)

    async def _maintain_loop(self) -> None:
        """Membership upkeep (lost peers reported dead, dead records collected) and the
        connection watermarks: dial one live member while below ``CONN_LOW``."""
        while True:
            await asyncio.sleep(MAINTAIN_S * (0.75 + self._rng.random() / 2))
            members = self.members
            if members is None:
                continue
            now = time.monotonic()
            connected = {r.peer_id for r in self.table.connected_peers()}
            with self._mlock:
                dead = members.tick(now, connected)
                candidates = [(p, members.addrs(p)) for p in members.alive()
                              if p not in connected and members.addrs(p)
                              and now - self._last_dial.get(p, -1e9) > RECONNECT_S]
                gone = [(p, members.addrs(p)) for p in members.dead() if members.addrs(p)]
            for peer in dead:
                log.info("member reported dead: %s (lost and not back)", peer)
                with self._mlock:
                    rec = members.record(peer)
                if rec is not None:
                    self._publish_member(rec)
            if len(connected) < CONN_LOW and candidates:
                peer, addrs = self._rng.choice(candidates)
                self._last_dial[peer] = now
                self.p2p.candidate(peer, list(addrs))  # dialled with backoff, expires
            if gone and now - self._reconnected >= RECONNECT_S:
                # Serf's reconnect: a member reported dead may be alive behind a healed
                # partition; one dial every RECONNECT_S finds it (it then refutes).
                self._reconnected = now
                peer, addrs = self._rng.choice(gone)
                self.p2p.candidate(peer, list(addrs))
            if len(connected) > CONN_HIGH:
                self._trim(connected)
            if connected:
                wall = time.time()
                if wall - self._seen_noted >= SEEN_EVERY_S:
                    self._note_seen(wall)
                    await asyncio.get_running_loop().run_in_executor(
                        None, self.store.collect_tombstones,
                        wall - self.config.tombstone_horizon_s)

    def _trim(self, connected: set[str]) -> None:
        """Close connections down to ``CONN_HIGH`` (the newest first: long-held ones
        carry gossipsub's mesh)."""
        recs = sorted((r for r in self.table.connected_peers() if r.peer_id in connected),
                      key=lambda r: r.connected_since or 0.0, reverse=True)
        for rec in recs[: len(recs) - CONN_HIGH]:
            self._trimmed.add(rec.peer_id)
            self._dropped["trimmed"] += 1
            self._spawn(self._bye(rec.peer_id))

    async def _bye(self, peer: str) -> None:
        """Tell ``peer`` the connection is closed on purpose (it must not report this
        agent dead), then close it and stop redialling it."""
        with contextlib.suppress(Exception):
            await self._request(peer, wire.SYNC_PROTOCOL, wire.BYE, 5, 64)
        self.p2p.forget(peer, close=True)

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
            if not self._expired(msg.tombstone) and self._trusted(msg.tombstone, peer):
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
        if data.startswith(b'{"member":'):  # canonical JSON: keys sorted
            try:
                wire.decode_member_news(data)
                return True
            except BadRequest as e:
                self._reject("malformed", "gossip", e.message)
                return False
        try:
            msg = wire.decode_gossip(data)
        except BadRequest as e:
            self._reject("malformed", "gossip", e.message)
            return False
        rec = msg.tombstone if isinstance(msg, wire.Delete) else msg.manifest
        return self._verify(rec, "gossip")

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
        why = reason = None
        if m.size > self.config.max_module_size:
            why = f"{m.size} bytes is over -max-module-size {self.config.max_module_size}"
            reason = "too_big"
        else:
            try:
                self.sandbox.effective_limits(m.limits)
            except NebulaError:
                why, reason = "its limits exceed this agent's maxima", "over_limits"
        if why is not None and reason is not None:
            if self._refused(m, reason):
                log.info("not fetching %s v%d: %s; calls are forwarded", m.name, m.version,
                         why)
            self._decline(m)
            return False
        return self.store.wants(m)

    def _decline(self, m: Manifest) -> None:
        """Count ``m`` as held in the digest, for good: this agent will never take it, and
        its peers need not offer it again every round."""
        with self._index_lock:
            if m.id in self._declined:
                return
            self._declined[m.id] = m
            while len(self._declined) > MAX_REFUSED:
                self._declined.popitem(last=False)
                self._dropped["declined"] += 1
        self._store_changed(m.name)

    def _verify(self, rec: Manifest | Tombstone, peer: str) -> bool:
        """Whether ``rec`` carries a valid signature from a trusted key (always true on an
        open agent). Thread-safe; each record id is checked once (``MAX_VERIFIED``) and
        a bad one counted and logged once, however often sync offers it again."""
        if not self.config.trusted_keys:
            return True
        rid = rec.id
        with self._verified_lock:
            known = self._verified.get(rid)
        if known is not None:
            return known
        try:
            keys.check(rec, self.config.trusted_keys)
            ok = True
        except Forbidden as e:
            ok = False
            self._reject("untrusted", peer, f"{rec.name}: {e.message}")
        with self._verified_lock:
            self._verified[rid] = ok
            while len(self._verified) > MAX_VERIFIED:
                self._verified.popitem(last=False)
                self._dropped["verified"] += 1
        return ok

    def _trusted(self, rec: Manifest | Tombstone, peer: str) -> bool:
        return self._verify(rec, peer)

    async def _trusted_many(self, recs: list[Any], peer: str) -> list[Any]:
        """The records of ``recs`` that check out, verified off the event loop."""
        if not self.config.trusted_keys or not recs:
            return recs
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, lambda: [r for r in recs if self._verify(r, peer)])

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

    # ------------------------------------------------------------------ digest index
    def _store_changed(self, name: str) -> None:
        """Thread-safe (store writes call it on their thread): re-hash one name."""
        versions = self.store.versions(name)
        tomb = self.store.tombstone(name)
        with self._index_lock:
            refused = [m for m in self._declined.values() if m.name == name] \
                if self._declined else []
            self.index.update(name, [*versions, *refused], tomb, self.store.keep)

    def _holdings(self) -> list[Manifest]:
        """What this agent counts as held: stored versions and refused ones."""
        with self._index_lock:
            refused = list(self._declined.values())
        return [*self.store.all_manifests(), *refused]

    # ------------------------------------------------------------------ sync
    async def _sync_loop(self) -> None:
        while True:
            with self._mlock:
                members = self.members.count() if self.members is not None else 1
            await asyncio.sleep(self.rounds.next_delay(members, self._rng))
            peers = [r.peer_id for r in self.table.connected_peers()]
            for peer in self.rounds.pick(peers, self._rng):
                self._sync(peer)

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
        if running and self.rounds.began_since(peer, since) and peer in self._round_now:
            return self._round_now[peer]
        fut = self._round_next.get(peer)
        if fut is None:
            fut = self._round_next[peer] = asyncio.get_running_loop().create_future()
        if not running:
            self._sync(peer)
        return fut

    def _sync_unless_recent(self, peer: str) -> None:
        """Sync with ``peer`` unless a sync with it is running or ended less than an
        interval ago."""
        if not self.table.is_connected(peer):
            return
        task = self._syncing.get(peer)
        if task is not None and not task.done():
            return
        if self.rounds.recent(peer, time.monotonic()):
            return
        self._sync(peer)

    async def _sync_with(self, peer: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                # Rounds begin at least CALL_ROUND_GAP_S apart, across tasks too.
                gap = self.rounds.gap(peer, time.monotonic())
                if gap > 0:
                    await asyncio.sleep(gap)
                asked = self._round_next.pop(peer, None)
                now = self._round_now[peer] = asked if asked is not None else \
                    loop.create_future()
                self.rounds.begin(peer, time.monotonic())
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
            self.rounds.end(peer, time.monotonic())

    async def _sync_once(self, peer: str) -> None:
        with self._index_lock:
            root = self.index.root()
        members = self.members
        with self._mlock:
            req = wire.SyncRequest(root, members.digest() if members is not None else "")
        try:
            data = await self._request(peer, wire.SYNC_PROTOCOL, wire.encode_sync_request(req),
                                       15, wire.MAX_SYNC_RESPONSE)
            resp = wire.decode_sync_response(data)
        except BadRequest as e:
            self.metrics.sync_total.labels("malformed").inc()
            self._reject("malformed_sync", peer, e.message)
            return
        except Exception as e:
            self.metrics.sync_total.labels("failed").inc()
            log.debug("sync with %s failed: %s", peer, e)
            return
        if resp.members is not None:
            self._merge_members(resp.members)
        self.metrics.sync_total.labels("same" if resp.buckets is None else "differ").inc()
        if resp.buckets is None:  # same root: the peer holds exactly what we hold
            self._holds(peer, self._holdings(), {})
            return
        with self._index_lock:
            session = PullSession.start(self.index, resp.buckets)
        batches: list[asyncio.Task[None]] = []
        try:
            whole = await self._pull_pieces(peer, session, batches)
        finally:
            # The round ends once what it found is stored (a call waiting for the round
            # then finds the module here).
            await asyncio.gather(*batches, return_exceptions=True)
        if not whole:
            return
        trusted = set(map(id, await self._trusted_many(session.manifests(), peer)))
        # Forward calls only where the peer's version is one this agent would accept
        # itself (trusted, and not held back as dated in the future).
        covered = {n: [m for m in ms if id(m) in trusted and not self._held_back(m)]
                   for n, ms in session.covered.items()}
        self._holds(peer, self._holdings(), covered)

    async def _pull_pieces(self, peer: str, session: PullSession,
                           batches: list[asyncio.Task[None]]) -> bool:
        """Pull the pieces of a round; False if a request failed on the way."""
        while True:
            with self._index_lock:
                pull = session.next_request()
            if pull is None:
                return True
            try:
                data = await self._request(peer, wire.SYNC_PROTOCOL,
                                           wire.encode_pull_request(pull), 30,
                                           wire.MAX_PULL_RESPONSE)
                piece = wire.decode_pull_response(data)
            except BadRequest as e:
                self._reject("malformed_sync", peer, e.message)
                return False
            except Exception as e:
                log.debug("pull from %s failed: %s", peer, e)
                return False
            session.received(piece)
            batch = await self._take(peer, list(piece.manifests), list(piece.tombstones))
            if batch is not None:
                batches.append(batch)

    async def _take(self, peer: str, manifests: list[Manifest], tombstones: list[Tombstone]
                    ) -> asyncio.Task[None] | None:
        """Apply a peer's records: newer tombstones, and fetches of wanted versions
        (newest first, so the current version is runnable soonest). Many at once (a late
        joiner) go the batch way: the task returned ends when they are stored."""
        live = [t for t in tombstones if not self._expired(t)]
        for t in await self._trusted_many(live, peer):
            if self.store.tombstone(t.name) != t:
                await self._apply_tombstone(t)
        wanted = [m for m in newest_first(await self._trusted_many(manifests, peer))
                  if self._wanted(m)]
        if len(wanted) >= CATCHUP_MIN:
            return self._spawn(self._catch_up(peer, wanted))
        for m in wanted:
            self.fetcher.start(m, prefer=peer)
        return None

    async def _catch_up(self, peer: str, wanted: list[Manifest]) -> None:
        """Fetch, verify and store many versions from ``peer``: small blobs
        ``BLOBS_PER_REQUEST`` to a request, ``CATCHUP_FETCHES`` requests in flight, each
        blob compiled (in the executor) while the next requests travel, and stored
        ``CATCHUP_BATCH`` at a time with one filesystem sync (``put_many``). Big blobs,
        and whatever fails here, go to the Fetcher (every holder, with backoff)."""
        loop = asyncio.get_running_loop()
        by_sha: dict[str, list[Manifest]] = {}
        for m in wanted:
            if m.size <= wire.INLINE_MAX:
                by_sha.setdefault(m.sha256, []).append(m)
            else:
                self.fetcher.start(m, prefer=peer)
        shas = list(by_sha)
        groups = [shas[i:i + wire.BLOBS_PER_REQUEST]
                  for i in range(0, len(shas), wire.BLOBS_PER_REQUEST)]
        sem = asyncio.Semaphore(CATCHUP_FETCHES)
        ready: list[tuple[bytes, list[Manifest]]] = []
        flushes: list[asyncio.Future[list[Manifest]]] = []
        missing: list[str] = []

        def flush() -> None:
            if ready:
                items = ready[:]
                ready.clear()
                flushes.append(loop.run_in_executor(None, self.store.put_many, items))

        async def admit(sha: str, data: bytes) -> None:
            ok = await loop.run_in_executor(None, self._admit_all, peer, by_sha[sha], data)
            if ok:
                ready.append((data, ok))
                if len(ready) >= CATCHUP_BATCH:
                    flush()

        async def one(group: list[str]) -> None:
            async with sem:
                try:
                    got = wire.decode_blobs_response(await self._request(
                        peer, wire.SYNC_PROTOCOL, wire.encode_blobs_request(group), 30,
                        wire.MAX_BLOBS_RESPONSE))
                except Exception as e:
                    log.info("catch-up fetch of %d blobs from %s failed: %s", len(group),
                             peer, e)
                    missing.extend(group)
                    return
            compiles = []
            for sha in group:
                data = got.get(sha)
                if data is None:
                    missing.append(sha)
                elif len(data) != by_sha[sha][0].size or sha256_hex(data) != sha:
                    self.metrics.fetch_total.labels("bad_hash").inc()
                    self._reject("hash_mismatch", peer, f"fetched bytes for {sha[:12]}")
                else:
                    self.metrics.fetch_total.labels("ok").inc()
                    compiles.append(admit(sha, data))
            await asyncio.gather(*compiles)

        await asyncio.gather(*(one(g) for g in groups))
        flush()
        added = [m for got in await asyncio.gather(*flushes, return_exceptions=True)
                 if isinstance(got, list) for m in got]
        for sha in missing:
            for m in by_sha[sha]:
                self.fetcher.start(m, prefer=peer)
        if added:
            self.metrics.deploys_total.labels("peer").inc(len(added))
            self.metrics.modules.set(len(self.store.names()))
            log.info("caught up %d module version(s) from %s", len(added), peer)
            self.on_change and self.on_change("stored", {"peer": peer})

    def _admit_all(self, peer: str, ms: list[Manifest], data: bytes) -> list[Manifest]:
        """The manifests of ``ms`` that ``data`` satisfies (size, compiles with their ABI
        and export). Runs in the executor."""
        ok = []
        for m in ms:
            try:
                if m.size != len(data):
                    raise BadRequest(f"the bytes are {len(data)} long; the manifest says "
                                     f"{m.size}")
                self.sandbox.admit(m, lambda: data)
                ok.append(m)
            except NebulaError as e:
                self._call_soon(self._reject, "invalid_module", peer,
                                f"{m.name} v{m.version}: {e.message}")
        return ok

    def _holds(self, peer: str, mine: list[Manifest], covered: dict[str, list[Manifest]]
               ) -> None:
        """Record what ``peer`` holds after a round: what we hold, except for the names
        the round covered, where its own (trusted) records count."""
        if self.table.is_connected(peer):
            shas, names = peer_holdings(mine, covered)
            self.table.set_holdings(peer, shas)
            self._names[peer] = names

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
        kind = wire.sync_kind(request)
        if kind == "bye":
            self._call_soon(self._trimmed.add, peer)
            return b"{}"
        if kind == "blobs":
            shas = wire.decode_blobs_request(request)
            return wire.encode_blobs_response(
                {sha: self.store.read_blob(sha) for sha in shas
                 if self.store.has_blob(sha) and self.store.blob_path(sha).stat().st_size
                 <= wire.INLINE_MAX})
        if kind == "pull":
            pull = wire.decode_pull_request(request)
            with self._index_lock:
                piece = answer_pull(self.index, pull, self._records)
            return wire.encode_pull_response(piece)
        req = wire.decode_sync_request(request)
        members = self.members
        if members is None:
            resp = self._answer(req, None)
        else:
            with self._mlock:
                resp = self._answer(req, (members.digest(), members.listed))
        if resp.buckets is None:  # so the peer holds what we hold
            self._call_soon(self._holds, peer, self._holdings(), {})
        if resp.buckets is not None or resp.members is not None:
            # They differ from us: pull their side too, without waiting for our timer, but
            # at most once per interval (two agents that can never agree would otherwise
            # trigger each other in a loop).
            self._call_soon(self._sync_unless_recent, peer)
        return wire.encode_sync_response(resp)

    def _answer(self, req: wire.SyncRequest,
                members: tuple[str, Callable[[], tuple[wire.Member, ...]]] | None
                ) -> wire.SyncResponse:
        with self._index_lock:
            return answer_sync(self.index, req, members)

    def _records(self, name: str) -> tuple[list[Manifest], Tombstone | None]:
        return self.store.versions(name), self.store.tombstone(name)

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
    def bounds(self) -> list[tuple[str, int, int, int]]:
        """(name, size, limit, dropped) of the mesh's bounded tables, for ``/metrics``
        (``nebula_edge_bound_size{bound=...}``). Thread-safe snapshots."""
        members = self.members
        with self._mlock:
            known = len(members) if members is not None else 0
        return [
            ("mesh_connections", len(self.table.connected_peers()), CONN_HIGH,
             self._dropped["trimmed"]),
            ("mesh_members", known, wire.MAX_MEMBERS, 0),
            ("mesh_declined_versions", len(self._declined), MAX_REFUSED,
             self._dropped["declined"]),
            ("mesh_signature_cache", len(self._verified), MAX_VERIFIED,
             self._dropped["verified"]),
        ]

    def holders(self, m: Manifest) -> int:
        """Agents (this one included) known to hold this version's bytes."""
        return 1 + len(self.table.holders(m.sha256))

    def peers(self) -> list[dict[str, Any]]:
        """Every live member of the mesh; ``connected``: this agent holds a direct
        connection to it (the other fields then come from that connection)."""
        # The host corrects a dialler's address to its listen address once identified.
        live = self.p2p.connected_peers()
        out = [
            {
                "peer_id": r.peer_id,
                "addrs": live.get(r.peer_id) or list(r.addrs),
                "http_url": r.http_url,
                "connected_since": r.connected_since,
                "version": r.version,
                "modules": len(self._names.get(r.peer_id, set())),
                "connected": True,
            }
            for r in self.table.connected_peers()
        ]
        direct = {r.peer_id for r in self.table.connected_peers()}
        members = self.members
        if members is not None:
            with self._mlock:
                others = [(p, members.addrs(p)) for p in members.alive() if p not in direct]
            for pid, addrs in others:
                rec = self.table.get(pid)
                out.append({
                    "peer_id": pid,
                    "addrs": list(addrs),
                    "http_url": rec.http_url if rec is not None else None,
                    "connected_since": None,
                    "version": rec.version if rec is not None else None,
                    "modules": None,
                    "connected": False,
                })
        return sorted(out, key=lambda d: d["peer_id"])


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


def _read_seen(path: Path) -> float | None:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _ip_of(addrs: tuple[str, ...]) -> str | None:
    for a in addrs:
        parts = a.split("/")
        if len(parts) > 2 and parts[1] in ("ip4", "ip6") and parts[2] not in ("0.0.0.0", "::"):
            return parts[2] if parts[1] == "ip4" else f"[{parts[2]}]"
    return None
