"""The agent's libp2p host behind a thread-safe API: gossip, requests, liveness, restarts.

Owns the one py-libp2p host of an agent. py-libp2p is trio-only while the data plane is
asyncio, so :class:`P2PHost` runs the host in its own thread with its own ``trio.run``;
``p2p_hardening.py`` is that trio side (the only libp2p importer) with the library's
workarounds. ``publish``/``connect``/``request`` queue work and return at once
(``concurrent.futures.Future`` for results); events come back through ``on_event``,
called on the host thread, one at a time (keep it cheap: ``loop.call_soon_threadsafe``).

**Supervisor.** If the trio run dies (any exception in it, or a libp2p service stopping
by itself) the thread logs it and starts a new incarnation, same key and port, after
0.5 s doubling to 10 s (jittered; back to 0.5 s after 30 s of health). Queued publishes
and requests survive; calls in flight fail with ``PeerUnavailable``; every connected
peer is reported lost and remembered peers are redialled.

**Health.** :meth:`P2PHost.health` says whether an incarnation runs, how often and when
it was restarted, how late the trio loop is (a task ticks every 0.25 s; 5 s late is
"blocked"), what was dropped; :attr:`P2PHealth.problems` is what makes ``/healthz``
say "degraded". Before the first start, every py-libp2p patch is checked to have taken
effect (``p2p_hardening.check_patches``); if one did not, ``start`` raises
:class:`PatchCheckFailed` and the mesh does not start. ``TEST_HOOKS_ENV`` adds signal
hooks that crash or block the trio side (tests only).

**Remote input is bounded** (each limit documented where it is defined; all shown by
:meth:`P2PHost.bounds`): mDNS sightings are candidates in a bounded, expiring table
dialled with backoff, a few at a time (``candidates.py``); request streams per peer and
in all, each within a deadline; gossip handed to asyncio (:class:`EventQueue`); gossipsub's
per-origin penalties.

**Transport.** TCP + Noise + yamux, ed25519 identity kept at ``key_path``; gossipsub
``/meshsub/1.2.0`` (1.1.0 accepted), strict signing, heartbeat ``heartbeat_s``. A host
receives its own publishes: they are not delivered. Gossip payloads are capped at
``max_message_size`` (64 KiB: bigger ones were corrupted in repeated runs while
connections formed) when published and, by a topic validator, when received. Bytes go
over request streams: raw streams carried 10 MiB in ~120 ms, while libp2p's
``RequestResponse`` helper truncated a 10 MiB reply (so it is not used).

**Request protocol** (each protocol id in ``handlers``), one request per stream::

    request:  u32 big-endian N | N payload bytes
    response: u32 big-endian N (N >= 1) | status byte | N-1 body bytes
              status 0: ok, body = the handler's return value
              status 1: error, body = utf-8 "ExceptionType: message" (<= 4 KiB)

The server reads at most ``max_request_size`` bytes within 30 s, runs the handler in a
worker thread (8 at once), answers and closes, all within 120 s; a peer with 8 streams
in service, or 64 in service in all, gets status 1 ("Overloaded: ...") at once. The
client resets the stream and fails with ``PayloadTooLarge`` on N - 1 > ``max_response``,
``PeerUnavailable`` otherwise.

**Liveness.** ``/nebula-edge/ping/1.0.0``: each side probes at most
``PROBES_PER_HEARTBEAT`` (2) peers per ``heartbeat_s``, each peer by writing 8 random
bytes on one long-lived stream and expecting them back within ``heartbeat_s``; 3 misses
in a row close the peer's connections. So a peer is probed every heartbeat while an
agent holds 2 peers, every 10 heartbeats with 20: the cost does not grow with peers. A
closed connection is lost at once; a frozen peer (no FIN) within ~4 probe periods
(measured 1.95 s at 0.5 s with one peer). Addresses given to ``connect``
(operator-given peers) are remembered and redialled while the host runs: 0.5 s doubling
to 10 s, jittered, forever; addresses from :meth:`P2PHost.candidate` (mDNS,
unauthenticated) are not.

**py-libp2p 0.8.1 workarounds** (why and numbers: ``p2p_hardening``): class-level wraps
of ``Pubsub.stream_handler`` and ``Pubsub.push_msg`` (a garbage frame or key killed the
host); pubsub send and receive limits both 1 MiB; spam limit 500 msg/s per neighbour and
topic (default 10: 10 of 100 back-to-back publishes arrived) with our publishes paced to
100/s per topic after a burst of 50; outbound queue 256 and subscription buffer 1024 (at
32 each, part of a burst of 50 was lost); ``Pubsub.counter`` from ``time.time_ns()`` (a
restarted publisher's messages were dropped as seen); ``LastSeenCache`` thread stopped;
listeners, then every muxer, closed when an incarnation ends; ``unblock_peer`` before
redials (else refused for 60 s); AutoConnector off; the inbound-connection task leak
fixed; adaptive gossip off (it stretches the heartbeat to 30-60 s).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from nebula_edge.errors import NebulaError, PeerUnavailable
from nebula_edge.net import p2p_hardening as hardened
from nebula_edge.net.candidates import MAX_CANDIDATE_DIALS, MAX_CANDIDATES, CandidateTable
from nebula_edge.net.p2p_hardening import Command, HostConfig, Incarnation, PatchCheckFailed

__all__ = [
    "PING_PROTOCOL",
    "TEST_HOOKS_ENV",
    "Bound",
    "EventQueue",
    "GossipMessage",
    "P2PEvent",
    "P2PHealth",
    "P2PHost",
    "PatchCheckFailed",
    "PeerConnected",
    "PeerLost",
    "RequestHandler",
]

logger = logging.getLogger(__name__)

PING_PROTOCOL = hardened.PING_PROTOCOL
_RESTART_INITIAL_S, _RESTART_MAX_S, _RESTART_HEALTHY_S = 0.5, 10.0, 30.0
_MAX_QUEUED_PUBLISHES = 10_000
_MAX_ADDRS_PER_PEER = 8
MAX_QUEUED_GOSSIP = 1024
"""Gossip events handed to the asyncio side and not yet taken (:class:`EventQueue`).
Gossip arrives at most at the spam limit per neighbour while the mesh handles thousands
a second; 1024 absorbs a burst of 20 full publishers, and past it the newest is dropped
(counted): a lost announcement is repaired by the next sync."""
MAX_QUEUED_GOSSIP_BYTES = 16 * 1024 * 1024
"""The same queue in bytes: 1024 messages of the 64 KiB maximum would be 64 MiB."""
RESTART_SETTLE_S = 30.0
"""After a restart the host counts as degraded for this long: the supervisor's own span
of health (``_RESTART_HEALTHY_S``), so a crash loop, whose restarts come at most 10 s
apart (the backoff cap), stays degraded from its first crash to its last."""
TEST_HOOKS_ENV = "NEBULA_EDGE_TEST_HOOKS"
"""``1``: SIGUSR1 crashes the running trio side (the supervisor restarts it) and SIGUSR2
blocks its loop for 8 s (the loop watchdog notices). For tests only; off by default."""


@dataclass(frozen=True)
class PeerConnected:
    """A peer's first connection came up (either dial direction)."""

    peer_id: str
    addrs: tuple[str, ...]
    """The addresses we dial it at; for a peer that dialled us, its remote address."""


@dataclass(frozen=True)
class PeerLost:
    """A peer's last connection went down, or it missed 3 pings in a row."""

    peer_id: str


@dataclass(frozen=True)
class GossipMessage:
    """A gossip message; ``from_peer`` is its original, signature-checked publisher."""

    topic: str
    from_peer: str
    data: bytes


P2PEvent = PeerConnected | PeerLost | GossipMessage


@dataclass(frozen=True)
class Bound:
    """One bounded structure, for ``/metrics``: how full, its limit, what it dropped."""

    name: str
    size: int
    limit: int
    dropped: int


@dataclass(frozen=True)
class P2PHealth:
    """A snapshot of the host's health (:meth:`P2PHost.health`)."""

    running: bool
    """An incarnation is listening (False while the supervisor waits to restart it)."""
    restarts: int
    last_restart_at: float | None
    """``time.time()`` when the supervisor last found the host dead and restarted it
    (after its backoff), None if it never did."""
    since_restart_s: float | None
    dropped_publishes: int
    loop_lag_s: float | None
    """Seconds since the trio loop last proved it runs (None when not running)."""
    loop_stalls: int
    """Times the loop woke up ``LOOP_BLOCKED_S`` or more late."""
    candidates: int
    candidate_dials: int
    candidate_dial_failures: int
    requests_refused: dict[str, int]
    gossip_received: int
    """Gossip messages delivered (passed the topic validator, not our own)."""

    @property
    def problems(self) -> list[str]:
        """Why the host is degraded (empty: it is not)."""
        out = []
        if not self.running:
            out.append(f"libp2p host is down (restart {self.restarts} pending)")
        elif self.since_restart_s is not None and self.since_restart_s < RESTART_SETTLE_S:
            out.append(f"libp2p host restarted {self.since_restart_s:.1f} s ago "
                       f"({self.restarts} restart(s))")
        if self.loop_lag_s is not None and self.loop_lag_s >= hardened.LOOP_BLOCKED_S:
            out.append(f"libp2p loop blocked for {self.loop_lag_s:.1f} s")
        return out


class EventQueue(asyncio.Queue[P2PEvent]):
    """The hand-over of host events to the asyncio side, bounded for gossip.

    Peer events are always queued (a lost ``PeerLost`` would leave a ghost peer; there is
    one per connection change). Gossip past :data:`MAX_QUEUED_GOSSIP` messages or
    :data:`MAX_QUEUED_GOSSIP_BYTES` is dropped and counted in :attr:`dropped`. Use on the
    asyncio loop only (``put_nowait`` through ``call_soon_threadsafe``).
    """

    def __init__(self, max_gossip: int = MAX_QUEUED_GOSSIP,
                 max_bytes: int = MAX_QUEUED_GOSSIP_BYTES) -> None:
        super().__init__()
        self.max_gossip, self.max_bytes = max_gossip, max_bytes
        self.gossip = 0
        self.bytes = 0
        self.dropped = 0

    def put_nowait(self, item: P2PEvent) -> None:
        if isinstance(item, GossipMessage) and (
            self.gossip >= self.max_gossip or self.bytes + len(item.data) > self.max_bytes
        ):
            self.dropped += 1
            return
        super().put_nowait(item)

    def _put(self, item: P2PEvent) -> None:
        if isinstance(item, GossipMessage):
            self.gossip += 1
            self.bytes += len(item.data)
        super()._put(item)

    def _get(self) -> P2PEvent:
        item: P2PEvent = super()._get()
        if isinstance(item, GossipMessage):
            self.gossip -= 1
            self.bytes -= len(item.data)
        return item

    def bound(self) -> Bound:
        return Bound("p2p_gossip_events", self.gossip, self.max_gossip, self.dropped)
RequestHandler = Callable[[str, bytes], bytes]
"""(peer_id, request) -> response. Runs in a worker thread; may block; may raise (the
caller gets ``PeerUnavailable`` with "ExceptionType: message")."""


def _root_cause(exc: BaseException) -> BaseException:
    """The exception inside nested one-member exception groups (trio nurseries)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class P2PHost:
    """One libp2p host in its own trio thread, restarted by a supervisor if it dies.

    Every public method and property is thread-safe. ``on_event`` is called on the host
    thread, one event at a time; PeerConnected/PeerLost are deduplicated per peer.
    """

    def __init__(
        self,
        *,
        key_path: Path,
        listen_ip: str,
        port: int,
        advertise_ips: Sequence[str],
        topics: Sequence[str],
        on_event: Callable[[P2PEvent], None],
        handlers: Mapping[str, RequestHandler],
        max_message_size: int = 64 * 1024,
        heartbeat_s: float = 1.0,
        max_response_size: int = 80 * 1024 * 1024,
        max_request_size: int = 1024 * 1024,
        validator: Callable[[bytes], bool] | None = None,
    ) -> None:
        listen = ipaddress.ip_address(listen_ip)
        advertise = [ipaddress.ip_address(ip) for ip in advertise_ips] or [listen]
        if any(ip.is_unspecified for ip in advertise):
            raise ValueError("advertise_ips must be concrete (needed when listening on 0.0.0.0)")
        reserved = {PING_PROTOCOL, *hardened.GOSSIP_PROTOCOLS}
        for protocol in handlers:
            if not protocol.startswith("/") or protocol in reserved:
                raise ValueError(f"invalid or reserved protocol id: {protocol!r}")
        if not 0 <= port <= 65535 or heartbeat_s <= 0:
            raise ValueError(f"bad port {port} or heartbeat_s {heartbeat_s}")
        if not 0 < max_message_size <= hardened.RPC_SIZE_LIMIT // 2:
            raise ValueError(f"max_message_size must be in 1..{hardened.RPC_SIZE_LIMIT // 2}")
        self._config = HostConfig(
            listen_ip=str(listen),
            advertise_ips=tuple(str(ip) for ip in advertise),
            topics=tuple(dict.fromkeys(topics)),
            handlers=dict(handlers),
            heartbeat_s=heartbeat_s,
            max_message_size=max_message_size,
            max_request_size=max_request_size,
            max_response_size=max_response_size,
            validator=validator,
        )
        self._key_path = key_path
        self._on_event = on_event
        self.max_message_size = max_message_size
        self.max_response_size = max_response_size

        self._lock = threading.Lock()  # guards everything below that is mutable
        self._state = "new"  # -> running -> stopped
        self._port = port
        self._peer_id: str | None = None
        self._thread: threading.Thread | None = None
        self._stop_flag = threading.Event()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._inc: Incarnation | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._commands: deque[Command] = deque()
        self._publishes: deque[tuple[str, bytes]] = deque()
        self._connected: dict[str, list[str]] = {}
        self._remembered: dict[str, list[str]] = {}
        self._restarts = 0
        self._dropped_publishes = 0
        self._running = False
        self._last_restart: tuple[float, float] | None = None  # (time.time(), monotonic)
        self._last_tick: float | None = None
        self._loop_stalls = 0
        self._gossip_received = 0
        self._penalties = hardened.CappedPenalties()  # used on the trio thread only
        self._candidates = CandidateTable(jitter=hardened.jitter)
        self._refused: dict[str, int] = {}
        if os.environ.get(TEST_HOOKS_ENV) == "1":
            self._install_test_hooks()

    @staticmethod
    def event_queue() -> EventQueue:
        """A bounded queue for ``on_event`` to hand events to an asyncio loop."""
        return EventQueue()

    # --- lifecycle --------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        """Load or create the key, start the thread, return once listening. Thread-safe.

        ``RuntimeError`` if the host cannot start (e.g. port in use), ``TimeoutError`` if
        it is not listening within ``timeout`` s. A host starts once.
        """
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"P2PHost.start() on a {self._state} host")
            self._state = "running"
        hardened.install()
        problems = hardened.check_patches()
        if problems:
            with self._lock:
                self._state = "stopped"
            raise PatchCheckFailed("py-libp2p workarounds did not take effect (was the "
                                   "library upgraded?): " + "; ".join(problems))
        key_pair, self._peer_id = hardened.load_or_create_identity(self._key_path)
        self._thread = threading.Thread(
            target=self._supervise,
            args=(key_pair,),
            name=f"p2p-{self._peer_id[-8:]}",
            daemon=True,  # never holds up interpreter exit; stop() is the clean way
        )
        self._thread.start()
        ready = self._ready.wait(timeout)
        if not ready or self._start_error is not None:
            self.stop()
            if not ready:
                raise TimeoutError(f"p2p host not listening after {timeout}s")
            if isinstance(self._start_error, PatchCheckFailed):
                raise self._start_error
            raise RuntimeError(f"p2p host failed to start: {self._start_error!r}") from (
                self._start_error
            )

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down cleanly and join the thread. Thread-safe, idempotent.

        Pending and in-flight requests and connects fail with ``PeerUnavailable``;
        ``TimeoutError`` if the thread has not ended within ``timeout`` s.
        """
        with self._lock:
            already = self._state == "stopped"
            self._state = "stopped"
            self._stop_flag.set()
            inc, token = self._inc, self._token
        if already:
            return
        if inc is not None and token is not None:
            self._poke(token, inc.shutdown.set)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"p2p host thread still running after {timeout}s")
        with self._lock:
            commands, self._commands = list(self._commands), deque()
            self._publishes.clear()
        for cmd in commands:
            hardened.fail(cmd.future, PeerUnavailable("p2p host stopped"))

    # --- state ------------------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        """This host's peer id (base58), known once started. Thread-safe."""
        if self._peer_id is None:
            raise RuntimeError("the peer id is known once the host has started")
        return self._peer_id

    @property
    def addrs(self) -> list[str]:
        """One ``/ip4/<advertise ip>/tcp/<port>/p2p/<id>`` per advertise IP. Thread-safe."""
        peer_id = self.peer_id
        with self._lock:
            port = self._port
        return [
            f"{hardened.tcp_maddr(ip, port)}/p2p/{peer_id}" for ip in self._config.advertise_ips
        ]

    @property
    def restarts(self) -> int:
        """How often the supervisor restarted the trio side. Thread-safe."""
        with self._lock:
            return self._restarts

    @property
    def dropped_publishes(self) -> int:
        """Publishes dropped because 10,000 were already queued. Thread-safe."""
        with self._lock:
            return self._dropped_publishes

    def health(self) -> P2PHealth:
        """Restarts, loop watchdog, drops: see :class:`P2PHealth`. Thread-safe."""
        now = time.monotonic()
        with self._lock:
            last = self._last_restart
            running = self._running
            return P2PHealth(
                running=running,
                restarts=self._restarts,
                last_restart_at=last[0] if last else None,
                since_restart_s=now - last[1] if last else None,
                dropped_publishes=self._dropped_publishes,
                loop_lag_s=(now - self._last_tick) if running and self._last_tick else None,
                loop_stalls=self._loop_stalls,
                candidates=len(self._candidates),
                candidate_dials=self._candidates.dials,
                candidate_dial_failures=self._candidates.dial_failures,
                requests_refused=dict(self._refused),
                gossip_received=self._gossip_received,
            )

    def bounds(self) -> list[Bound]:
        """Every bounded structure of the host, for ``/metrics``. Thread-safe."""
        with self._lock:
            cands = self._candidates
            refused = self._refused
            penalties = self._penalties
            return [
                Bound("p2p_publish_queue", len(self._publishes), _MAX_QUEUED_PUBLISHES,
                      self._dropped_publishes),
                Bound("mdns_candidates", len(cands), MAX_CANDIDATES,
                      cands.evicted + cands.expired),
                Bound("mdns_candidate_dials", cands.dialling, MAX_CANDIDATE_DIALS, 0),
                Bound("p2p_request_streams", 0, hardened.MAX_REQUESTS_IN_FLIGHT,
                      refused.get("all_peers_limit", 0) + refused.get("deadline", 0)),
                Bound("p2p_request_streams_per_peer", 0, hardened.MAX_REQUESTS_PER_PEER,
                      refused.get("peer_limit", 0)),
                Bound("gossip_origin_penalties", len(penalties),
                      hardened.MAX_ORIGIN_PENALTIES, penalties.evicted),
            ]

    def connected_peers(self) -> dict[str, list[str]]:
        """Snapshot: connected peer id -> addresses (a peer that dialled us: its listen
        addresses once identified, its remote address before). Thread-safe."""
        with self._lock:
            return {peer: list(addrs) for peer, addrs in self._connected.items()}

    # --- operations -------------------------------------------------------------------

    def publish(self, topic: str, data: bytes) -> None:
        """Queue ``data`` for gossip on ``topic``. Thread-safe, non-blocking.

        ``ValueError`` above ``max_message_size``. Sent in order, paced to 100/s per
        topic after a burst of 50; past 10,000 queued the oldest is dropped.
        """
        if len(data) > self.max_message_size or not topic:
            raise ValueError(f"empty topic or {len(data)} bytes > {self.max_message_size}")
        with self._lock:
            if self._state == "stopped":
                raise RuntimeError("P2PHost is stopped")
            if len(self._publishes) >= _MAX_QUEUED_PUBLISHES:
                self._publishes.popleft()
                self._dropped_publishes += 1
            self._publishes.append((topic, bytes(data)))
            inc, token = self._inc, self._token
        if inc is not None and token is not None:
            self._poke(token, inc.notify)

    def connect(self, multiaddr: str) -> concurrent.futures.Future[str]:
        """Dial ``multiaddr`` (ending ``/p2p/<id>``); the future gives the peer id.

        Thread-safe, never raises. The address is remembered: while the host runs, the
        peer is redialled whenever it is lost, even if this attempt fails (the future then
        fails with ``PeerUnavailable``). A malformed address, or our own, fails the future
        with ``ValueError`` (addresses often come from the network, e.g. mDNS).
        """
        fut: concurrent.futures.Future[str] = concurrent.futures.Future()
        try:
            peer = hardened.peer_id_of(multiaddr)
            if peer == self._peer_id:
                raise ValueError("cannot connect to self")
        except ValueError as exc:
            fut.set_exception(exc)
            return fut
        with self._lock:
            addrs = self._remembered.setdefault(peer, [])
            if multiaddr not in addrs:
                addrs.append(multiaddr)
                del addrs[:-_MAX_ADDRS_PER_PEER]

        async def run(inc: Incarnation) -> None:
            await inc.connect(peer, fut)

        self._submit(Command(fut, run))
        return fut

    def forget(self, peer_id: str, *, close: bool = False) -> None:
        """Stop remembering and redialling ``peer_id``; with ``close``, also close its
        connections (reported as ``PeerLost``). Thread-safe, non-blocking. The mesh uses
        it to keep its connections between watermarks however many peers mDNS shows."""
        with self._lock:
            self._remembered.pop(peer_id, None)
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()

        async def run(inc: Incarnation) -> None:
            await inc.forget(peer_id, close)
            hardened.resolve(fut, None)

        self._submit(Command(fut, run, time.monotonic() + 10.0))

    def candidate(self, peer_id: str, multiaddrs: Sequence[str]) -> None:
        """An unauthenticated sighting of ``peer_id`` (mDNS): dial it when due, with
        backoff, a few at a time, and forget it if not heard of again (``candidates.py``).
        Addresses not ending ``/p2p/<peer_id>`` are ignored. Thread-safe, never raises."""
        addrs = []
        for addr in multiaddrs[:_MAX_ADDRS_PER_PEER]:
            with contextlib.suppress(ValueError):
                if hardened.peer_id_of(addr) == peer_id != self._peer_id:
                    addrs.append(addr)
        with self._lock:
            if self._state == "stopped":
                return
            new = self._candidates.offer(peer_id, addrs, time.monotonic())
            inc, token = self._inc, self._token
        if new and inc is not None and token is not None:
            self._poke(token, inc.candidates_changed)

    def request(
        self,
        peer_id: str,
        protocol: str,
        payload: bytes,
        *,
        timeout: float = 30.0,
        max_response: int | None = None,
    ) -> concurrent.futures.Future[bytes]:
        """Send one framed request; the future gives the response body. Thread-safe.

        Fails with ``PeerUnavailable`` (unreachable, remote error, no answer within
        ``timeout`` s) or ``PayloadTooLarge`` (body above ``max_response``, by default
        ``max_response_size``).
        """
        limit = self.max_response_size if max_response is None else max_response
        fut: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        deadline = time.monotonic() + timeout
        data = bytes(payload)

        async def run(inc: Incarnation) -> None:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                hardened.resolve(fut, await inc.request(peer_id, protocol, data, remaining, limit))
            except NebulaError as exc:
                hardened.fail(fut, exc)

        self._submit(Command(fut, run, deadline))
        return fut

    def _inject_failure(self) -> None:
        """Test hook: make the running trio side raise, as a crash would."""

        async def run(inc: Incarnation) -> None:
            inc.crash(RuntimeError("injected failure (test hook)"))
            hardened.resolve(fut, None)

        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._submit(Command(fut, run))

    def _block_loop(self, seconds: float) -> None:
        """Test hook: block the running trio loop for ``seconds`` (a stuck call would)."""

        async def run(inc: Incarnation) -> None:
            hardened.resolve(fut, None)
            inc.block(seconds)

        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._submit(Command(fut, run))

    def _install_test_hooks(self) -> None:
        """SIGUSR1: crash the trio side; SIGUSR2: block its loop 8 s (``TEST_HOOKS_ENV``).
        The handlers hand the work to a thread: a signal handler must not take our lock."""
        if threading.current_thread() is not threading.main_thread():
            logger.warning("p2p: %s set, but not on the main thread: no hooks", TEST_HOOKS_ENV)
            return

        def on(fn: Callable[[], None]) -> Callable[[int, Any], None]:
            return lambda _sig, _frame: threading.Thread(target=fn, daemon=True).start()

        signal.signal(signal.SIGUSR1, on(self._inject_failure))
        signal.signal(signal.SIGUSR2, on(lambda: self._block_loop(8.0)))
        logger.warning("p2p: test hooks on (%s=1): SIGUSR1 crashes libp2p, SIGUSR2 blocks "
                       "its loop for 8 s", TEST_HOOKS_ENV)

    def _send_raw(
        self, peer_id: str, protocol: str, chunks: Sequence[bytes]
    ) -> concurrent.futures.Future[None]:
        """Test hook: open a stream on ``protocol`` and write ``chunks`` verbatim."""
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()

        async def run(inc: Incarnation) -> None:
            await inc.send_raw(peer_id, protocol, chunks)
            hardened.resolve(fut, None)

        self._submit(Command(fut, run, time.monotonic() + 10.0))
        return fut

    def _trio_task_count(self) -> concurrent.futures.Future[int]:
        """Test hook: how many tasks the running trio side has."""
        fut: concurrent.futures.Future[int] = concurrent.futures.Future()

        async def run(inc: Incarnation) -> None:
            tasks, count = [trio.lowlevel.current_root_task()], 0
            while tasks and count < 100_000:
                count += 1
                tasks.extend(t for n in tasks.pop().child_nurseries for t in n.child_tasks)
            hardened.resolve(fut, count)

        self._submit(Command(fut, run))
        return fut

    # --- plumbing: the Owner protocol of p2p_hardening (called on the host thread) ---

    @staticmethod
    def _poke(token: trio.lowlevel.TrioToken, fn: Callable[[], object]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(fn)

    def _submit(self, cmd: Command) -> None:
        with self._lock:
            if self._state == "stopped":
                hardened.fail(cmd.future, PeerUnavailable("p2p host stopped"))
                return
            self._commands.append(cmd)
            inc, token = self._inc, self._token
        if inc is not None and token is not None:
            self._poke(token, inc.notify)

    def _next_command(self) -> Command | None:
        with self._lock:
            return self._commands.popleft() if self._commands else None

    def _next_publish(self) -> tuple[str, bytes] | None:
        with self._lock:
            return self._publishes.popleft() if self._publishes else None

    def _remembered_addrs(self, peer: str) -> list[str]:
        with self._lock:
            return list(self._remembered.get(peer, ()))

    def _remembered_peers(self) -> list[str]:
        with self._lock:
            return list(self._remembered)

    def _emit(self, event: P2PEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            logger.exception("p2p: on_event raised for %r", event)

    def _peer_up(self, peer: str, addrs: list[str]) -> None:
        with self._lock:
            self._connected[peer] = addrs
        self._emit(PeerConnected(peer, tuple(addrs)))

    def _peer_down(self, peer: str) -> None:
        with self._lock:
            self._connected.pop(peer, None)
        self._emit(PeerLost(peer))

    def _peer_addrs(self, peer: str, addrs: list[str]) -> None:
        with self._lock:
            if peer in self._connected:
                self._connected[peer] = addrs

    def _gossip(self, topic: str, publisher: str, data: bytes) -> None:
        with self._lock:
            self._gossip_received += 1
        self._emit(GossipMessage(topic, publisher, data))

    def _tick(self, now: float, lag: float) -> None:
        with self._lock:
            self._last_tick = now
            if lag >= hardened.LOOP_BLOCKED_S:
                self._loop_stalls += 1
        if lag >= hardened.LOOP_BLOCKED_S:
            logger.error("p2p: the libp2p loop was blocked for %.1f s", lag)

    def _due_candidates(self, now: float, busy: set[str]) -> list[tuple[str, list[str]]]:
        with self._lock:
            return self._candidates.due(now, busy)

    def _candidate_dialled(self, peer: str, ok: bool, now: float) -> None:
        with self._lock:
            self._candidates.dialled(peer, ok, now)

    def _candidate_wait(self, now: float) -> float:
        with self._lock:
            return self._candidates.wait(now)

    def _request_refused(self, reason: str) -> None:
        with self._lock:
            self._refused[reason] = self._refused.get(reason, 0) + 1

    def _on_listening(self, inc: Incarnation, port: int) -> None:
        with self._lock:
            self._port, self._inc = port, inc
            self._running, self._last_tick = True, time.monotonic()
            self._candidates.reset_dialling()
            self._token = trio.lowlevel.current_trio_token()
            stopping = self._stop_flag.is_set()
        self._ready.set()
        if stopping:
            inc.shutdown.set()

    def _expire_commands(self) -> None:
        now = time.monotonic()
        with self._lock:
            expired = [c for c in self._commands if c.deadline is not None and c.deadline < now]
            for cmd in expired:
                self._commands.remove(cmd)
        for cmd in expired:
            hardened.fail(cmd.future, PeerUnavailable("request timed out: p2p host restarting"))

    async def _incarnation(self, key_pair: Any, port: int) -> None:
        inc = Incarnation(self, self._config, key_pair, self.peer_id, port)
        inc.penalties = self._penalties  # survives restarts: its evictions are a counter
        await inc.run()

    def _supervise(self, key_pair: Any) -> None:
        """The host thread: run incarnations until stopped, with backoff between them."""
        backoff = _RESTART_INITIAL_S
        while not self._stop_flag.is_set():
            began, error = time.monotonic(), None
            with self._lock:
                port = self._port
            try:
                trio.run(self._incarnation, key_pair, port)
            except Exception as exc:
                error = _root_cause(exc)
            finally:
                with self._lock:
                    self._inc = self._token = None
                    self._running = False
                    lost = list(self._connected)
                for peer in lost:
                    self._peer_down(peer)
            if not self._ready.is_set():  # never listened: start() reports it
                self._start_error = error or RuntimeError("exited before listening")
                self._ready.set()
                return
            if self._stop_flag.is_set():
                return
            if time.monotonic() - began > _RESTART_HEALTHY_S:
                backoff = _RESTART_INITIAL_S
            delay, backoff = hardened.jitter(backoff), min(backoff * 2, _RESTART_MAX_S)
            with self._lock:
                self._restarts += 1
                self._last_restart = (time.time(), time.monotonic())
            logger.error("p2p host crashed; restarting in %.1fs", delay, exc_info=error or True)
            resume = time.monotonic() + delay
            while time.monotonic() < resume and not self._stop_flag.wait(0.1):
                self._expire_commands()
