"""The trio side of ``P2PHost``: one hardened py-libp2p 0.8.1 host, and its workarounds.

The only module that imports libp2p. ``p2p.py`` owns the thread, the supervisor and the
thread-safe API; it runs :class:`Incarnation` in ``trio.run`` and restarts it if it dies.
Apart from the module-level functions (thread-safe), everything here runs on the host's
trio thread. Workarounds, each measured (``/work/shared/notes/dependencies.md``):

* **Malformed input killed the host.** ``Pubsub.stream_handler`` catches only
  StreamError/ParseError/IncompleteReadError, so a ``DecodeError`` from a garbage frame
  climbed into a swarm nursery; a message with a garbage ``key`` + signature re-raised a
  ``DecodeError`` inside ``push_msg``, a Pubsub manager task. Both are wrapped at class
  level *before* any ``Pubsub`` exists (its ``__init__`` registers the bound handler):
  an ``Exception`` is logged, the stream reset, the peer penalised; ``trio.Cancelled``
  passes. With both wraps 100 garbage frames and 100 garbage publishes were survived.
  No blacklisting: that once blacklisted an honest neighbour (>64 KiB corruption).
* **Limits that agree.** Receive limit ``max_inbound_rpc_size``, send limit hidden in
  ``RpcQueue`` (above it publishes vanish; a sender limit above the receiver's gave the
  receiver a DecodeError): both :data:`RPC_SIZE_LIMIT`. Gossip payloads stay <= 64 KiB.
* **Bursts.** Spam limit default 10 msg/s per neighbour and topic (also applied to our
  own publishes): 10 of 100 back-to-back publishes arrived; 500 here (``p2p.py`` paces
  publishes to 100/s). The per-peer outbound queue (32 RPCs) silently lost part of a
  burst of 50 in 3 of 3 runs and the 32-message subscription buffer logged drops:
  :data:`OUTBOUND_QUEUE_LEN`, :data:`SUBSCRIPTION_BUFFER`. Adaptive gossip is off: it
  stretches a small mesh's heartbeat to 30-60 s.
* **In-process restarts.** ``Pubsub.counter`` started at ``int(time.time())``: a
  restarted publisher reused sequence numbers and peers dropped its messages as seen;
  now ``time.time_ns()``. Each Pubsub's ``LastSeenCache`` thread is stopped. When an
  incarnation ends its listeners close first (a peer redialling into a host shutting
  down got a spurious second PeerConnected/PeerLost in 1 of 4 runs), then every
  connection's muxer (else a peer kept a dead pubsub stream and never reopened it).
* **Redials.** A failed dial puts the peer in a 60 s negative cache: ``unblock_peer``
  before each redial. Its ``AutoConnector`` (dials up to 200 peerstore entries to keep
  50+ connections) is switched off: we dial exactly the peers we were given.
* **Inbound task leak.** ``Swarm._do_handle_inbound_connection`` parked until the
  whole swarm stopped: +1 task and one of 250 inbound slots per connection ever
  accepted (+15 tasks after 15 connect/stop cycles here; 0 with the fix).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import contextvars
import functools
import logging
import os
import random
import secrets
import struct
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio
from libp2p import new_host
from libp2p.abc import INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.custom_types import TProtocol
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub import pubsub as _pubsub_module
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.tools.anyio_service import background_trio_service
from libp2p.tools.timed_cache.last_seen_cache import LastSeenCache
from multiaddr import Multiaddr

from nebula_edge.errors import NebulaError, PayloadTooLarge, PeerUnavailable

logger = logging.getLogger(__name__)

PING_PROTOCOL = "/nebula-edge/ping/1.0.0"
GOSSIP_PROTOCOLS = (str(PROTOCOL_ID_V12), str(PROTOCOL_ID_V11))
RPC_SIZE_LIMIT = 1024 * 1024
"""Largest pubsub RPC sent *and* accepted; 1 MiB as go-libp2p-pubsub."""
OUTBOUND_QUEUE_LEN = 256
"""RPCs queued per peer (default 32). Worst case per slow peer: 256 x 64 KiB = 16 MiB."""
SUBSCRIPTION_BUFFER = 1024
"""Messages buffered per topic between the router and our reader (default 32)."""
SPAM_LIMIT_PER_S = 500.0
"""Per neighbour and topic: 5 publishers at our full pace behind one neighbour."""
PING_MISSES = 3
PROBES_PER_HEARTBEAT = 2
"""Liveness probes an agent sends per heartbeat, however many peers it holds: each peer
is probed every ``heartbeat x max(1, peers / 2)`` (2 peers: every heartbeat, as before;
19 peers at the default 2 s: every 20 s). Pinging every peer every heartbeat made an
idle agent's cost grow with its peers (~0.005 core each). A killed peer is still lost
at once (its kernel closes the connection); only a frozen one takes PING_MISSES probes."""
LOST_AFTER_S = 4.0
"""Silence (no pong) before a connected peer counts as lost, and at least PING_MISSES
heartbeats. A killed process is noticed at once (its kernel closes the connection); this
is for frozen hosts and dead links. Counting misses alone (1.5 s with -fast's 0.5 s
heartbeat) dropped healthy peers ~50 times in 2.5 minutes on a 2-core machine at load 15."""
REDIAL_INITIAL_S, REDIAL_MAX_S = 0.5, 10.0
DIAL_TIMEOUT_S = 10.0
PUBLISH_RATE_PER_S, PUBLISH_BURST = 100.0, 50.0
HANDLER_THREADS = 8
REQUEST_READ_TIMEOUT_S = 30.0
REQUEST_DEADLINE_S = 120.0
"""Whole exchange on the serving side (read, handler, write). The largest answer, an
80 MiB blob, takes ~1 s on loopback and 8 s at 10 MB/s; the client's own timeout for it
is 10 s + 1 s per 5 MiB (26 s): past 120 s nobody is waiting for the answer."""
MAX_REQUESTS_PER_PEER = 8
"""Request streams one peer may have in service at once. A well-behaved agent has at most
4 blob fetches (``FETCH_CONCURRENCY``), 1 sync and 1 info request in flight with a peer;
beyond 8 the stream gets an error answer at once (counted), so one peer cannot take the
handler threads from the others."""
MAX_REQUESTS_IN_FLIGHT = 64
"""Request streams in service at once from all peers: 8 peers at their full share. Each
waits for one of ``HANDLER_THREADS``; past 64 the stream gets an error answer (counted)."""
CANDIDATE_IDLE_WAIT_S = 1.0
"""Least wait of the candidate dialler when nothing was due to dial (the table's own cap)."""
MAX_ORIGIN_PENALTIES = 1024
"""Origins with an equivocation penalty in gossipsub's scorer (a ``defaultdict`` keyed by
the message's origin id, which a sender mints at will: one entry per equivocating
origin, never removed). Past 1024 the least recently penalised is forgotten (counted):
an honest mesh has no equivocating origin at all."""
LOOP_TICK_S = 0.25
"""How often the trio loop proves it is alive (:attr:`Incarnation.last_tick`)."""
LOOP_BLOCKED_S = 5.0
"""A trio loop silent for longer is blocked: a handler runs in a thread, so nothing on
the loop should take more than milliseconds; 5 s is past ``LOST_AFTER_S`` (4 s), so by
then peers have started dropping us as frozen."""
ERROR_TEXT_MAX = 4096
_READ_CHUNK = 1024 * 1024
_U32 = struct.Struct(">I")

# --- identity and small helpers ----------------------------------------------------------


def load_or_create_identity(path: Path) -> tuple[KeyPair, str]:
    """The ed25519 key at ``path`` and its peer id; created (0600, atomically) if absent."""
    if path.exists():
        private = deserialize_private_key(path.read_bytes())
        key_pair = KeyPair(private, private.get_public_key())
        return key_pair, ID.from_pubkey(key_pair.public_key).to_base58()
    key_pair = create_new_key_pair()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pair.private_key.serialize())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and never clobbers a key another process wrote
        except FileExistsError:
            return load_or_create_identity(path)
    finally:
        os.unlink(tmp)
    return key_pair, ID.from_pubkey(key_pair.public_key).to_base58()


def peer_id_of(multiaddr: str) -> str:
    """The peer id of a ``.../p2p/<id>`` multiaddr; ``ValueError`` if there is none."""
    try:
        return info_from_p2p_addr(Multiaddr(multiaddr)).peer_id.to_base58()
    except Exception as exc:
        raise ValueError(f"not a /p2p/ multiaddr: {multiaddr!r} ({exc})") from exc


def tcp_maddr(ip: str, port: int) -> str:
    return f"/{'ip6' if ':' in ip else 'ip4'}/{ip}/tcp/{port}"


def jitter(delay: float) -> float:
    return delay * random.uniform(0.75, 1.25)


def resolve(fut: concurrent.futures.Future[Any], value: Any) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        fut.set_result(value)


def fail(fut: concurrent.futures.Future[Any], exc: BaseException) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        fut.set_exception(exc)


async def _read_exactly(stream: Any, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.read(min(n - len(buf), _READ_CHUNK))
        if not chunk:
            raise EOFError(f"stream ended after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def _refuse(stream: Any, text: str) -> None:
    """Answer a request stream with an error at once, without reading the request."""
    body = text.encode()[:ERROR_TEXT_MAX]
    with trio.move_on_after(2.0), contextlib.suppress(Exception):
        await stream.write(_U32.pack(len(body) + 1) + b"\x01" + body)
    await _discard(stream, reset=False)


async def _discard(stream: Any, *, reset: bool) -> None:
    """Close (or reset) a stream, even from a cancelled scope, for at most 1 s."""
    with (
        trio.CancelScope(shield=True, deadline=trio.current_time() + 1.0),
        contextlib.suppress(Exception),
    ):
        await (stream.reset() if reset else stream.close())


# --- class- and module-level patches (once per process) -----------------------------------


class _NebulaRpcQueue(RpcQueue):
    def __init__(
        self, max_size: int = OUTBOUND_QUEUE_LEN, max_message_size: int = RPC_SIZE_LIMIT
    ) -> None:
        super().__init__(max_size=max_size, max_message_size=max_message_size)


def _penalise(pubsub: Pubsub, peer_id: ID) -> None:
    scorer = getattr(pubsub.router, "scorer", None)
    if scorer is not None:
        with contextlib.suppress(Exception):
            scorer.penalize_behavior(peer_id, 1.0)


_PATCHED = "__nebula_patch__"
"""Attribute set on every wrapper we install, so :func:`check_patches` can find it."""
_ORIGINALS: dict[str, Any] = {}
"""The library's own functions we wrapped, by ``Class.attr``."""


def _mark(owner: type, attr: str, wrapper: Any) -> None:
    _ORIGINALS[f"{owner.__name__}.{attr}"] = getattr(owner, attr)
    setattr(wrapper, _PATCHED, True)
    setattr(owner, attr, wrapper)


def _wrap_pubsub() -> None:
    original_stream_handler, original_push_msg = Pubsub.stream_handler, Pubsub.push_msg

    @functools.wraps(original_stream_handler)
    async def stream_handler(self: Pubsub, stream: Any) -> None:
        try:
            await original_stream_handler(self, stream)
        except Exception as exc:  # trio.Cancelled is a BaseException: it passes
            peer_id = stream.muxed_conn.peer_id
            logger.warning("pubsub: malformed frame from %s (%r); stream reset", peer_id, exc)
            await _discard(stream, reset=True)
            _penalise(self, peer_id)

    @functools.wraps(original_push_msg)
    async def push_msg(self: Pubsub, msg_forwarder: ID, msg: Any) -> None:
        try:
            await original_push_msg(self, msg_forwarder, msg)
        except Exception as exc:
            logger.warning("pubsub: dropped a malformed message via %s (%r)", msg_forwarder, exc)
            _penalise(self, msg_forwarder)

    _mark(Pubsub, "stream_handler", stream_handler)
    _mark(Pubsub, "push_msg", push_msg)


# The muxed connection `upgrade_inbound_raw_conn` produced, per inbound handler task.
_inbound_conn: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "nebula_inbound_conn", default=None
)


def _fix_inbound_leak() -> None:
    original_upgrade = Swarm.upgrade_inbound_raw_conn
    original_handle = Swarm._do_handle_inbound_connection

    @functools.wraps(original_upgrade)
    async def upgrade_inbound_raw_conn(self: Swarm, raw_conn: Any, maddr: Any) -> Any:
        muxed = await original_upgrade(self, raw_conn, maddr)
        box = _inbound_conn.get()
        if box is not None:
            box.append(muxed)
        return muxed

    async def cancel_when_closed(box: list[Any], scope: trio.CancelScope) -> None:
        while not box:  # the upgrade ends within inbound_upgrade_timeout (10 s)
            await trio.sleep(0.5)
        muxed = box[0]
        while not getattr(muxed, "is_closed", True):
            with trio.move_on_after(5.0):
                await muxed.event_closed.wait()
        scope.cancel()

    @functools.wraps(original_handle)
    async def do_handle_inbound_connection(
        self: Swarm, read_write_closer: Any, maddr: Any, failure_event: Any
    ) -> None:
        box: list[Any] = []
        token = _inbound_conn.set(box)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_when_closed, box, nursery.cancel_scope)
                await original_handle(self, read_write_closer, maddr, failure_event)
                nursery.cancel_scope.cancel()
        finally:
            _inbound_conn.reset(token)

    _mark(Swarm, "upgrade_inbound_raw_conn", upgrade_inbound_raw_conn)
    _mark(Swarm, "_do_handle_inbound_connection", do_handle_inbound_connection)


_install_lock = threading.Lock()
_installed = False


def install() -> None:
    """Apply every patch once per process. Thread-safe, idempotent."""
    global _installed
    with _install_lock:
        if not _installed:
            _wrap_pubsub()
            _fix_inbound_leak()
            # Module globals `Pubsub` reads at call time (not bound default arguments).
            setattr(_pubsub_module, "RpcQueue", _NebulaRpcQueue)  # noqa: B010
            _pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = SUBSCRIPTION_BUFFER
            _installed = True


async def _no_auto_connect() -> None:
    return None


class CappedPenalties(collections.OrderedDict[Any, float]):
    """A ``defaultdict(float)`` of penalties by origin, least recently set evicted past
    ``limit``; reading a missing origin gives 0.0 without storing it."""

    def __init__(self, limit: int = MAX_ORIGIN_PENALTIES) -> None:
        super().__init__()
        self.limit = limit
        self.evicted = 0

    def __missing__(self, key: Any) -> float:
        return 0.0

    def __setitem__(self, key: Any, value: float) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)
            self.evicted += 1


# --- self-check: did every patch take effect? ----------------------------------------------


class PatchCheckFailed(NebulaError):
    """A py-libp2p workaround did not take effect (the library changed): no mesh."""

    code = "libp2p_patch_failed"
    status = 500


def _refers(fn: Any, name: str) -> bool:
    """Whether ``fn``'s code (or code nested in it) reads ``name`` (global or attribute)."""
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    todo = [code] if code is not None else []
    while todo:
        c = todo.pop()
        if name in c.co_names:
            return True
        todo.extend(k for k in c.co_consts if hasattr(k, "co_names"))
    return False


def _any_refers(cls: type, name: str) -> bool:
    return any(_refers(fn, name) for fn in vars(cls).values() if callable(fn))


def check_patches() -> list[str]:
    """What is wrong with the class- and module-level patches (empty: all in effect).

    Beyond "our wrapper is in place", each check asks whether the library still *reads*
    what we changed: a module global nobody reads any more, or a method nobody calls,
    would take the assignment silently and change nothing. Thread-safe.
    """
    problems: list[str] = []
    for owner, attr in ((Pubsub, "stream_handler"), (Pubsub, "push_msg"),
                        (Swarm, "upgrade_inbound_raw_conn"),
                        (Swarm, "_do_handle_inbound_connection")):
        if not getattr(getattr(owner, attr, None), _PATCHED, False):
            problems.append(f"{owner.__name__}.{attr} is not our wrapper")
    original_handle = _ORIGINALS.get("Swarm._do_handle_inbound_connection")
    if original_handle is not None and not _refers(original_handle, "upgrade_inbound_raw_conn"):
        problems.append("Swarm._do_handle_inbound_connection no longer calls "
                        "upgrade_inbound_raw_conn (the inbound task-leak fix would not apply)")
    if not _any_refers(Swarm, "_do_handle_inbound_connection"):
        problems.append("no Swarm method calls _do_handle_inbound_connection any more")
    if getattr(_pubsub_module, "RpcQueue", None) is not _NebulaRpcQueue:
        problems.append("libp2p.pubsub.pubsub.RpcQueue is not ours (outbound queue limits)")
    if not _any_refers(Pubsub, "RpcQueue"):
        problems.append("Pubsub no longer builds its RpcQueue from the module global: "
                        f"the {OUTBOUND_QUEUE_LEN}-RPC outbound queue would not apply")
    if getattr(_pubsub_module, "SUBSCRIPTION_CHANNEL_SIZE", None) != SUBSCRIPTION_BUFFER:
        problems.append("libp2p.pubsub.pubsub.SUBSCRIPTION_CHANNEL_SIZE is not "
                        f"{SUBSCRIPTION_BUFFER}")
    if not _any_refers(Pubsub, "SUBSCRIPTION_CHANNEL_SIZE"):
        problems.append("Pubsub no longer reads SUBSCRIPTION_CHANNEL_SIZE: the "
                        f"{SUBSCRIPTION_BUFFER}-message subscription buffer would not apply")
    if not _refers(getattr(Pubsub, "_next_seqno", None), "counter"):
        problems.append("Pubsub._next_seqno no longer counts from Pubsub.counter "
                        "(sequence numbers would repeat after a restart)")
    if not _any_refers(Swarm, "maybe_connect"):
        problems.append("the swarm no longer calls auto_connector.maybe_connect "
                        "(switching the AutoConnector off would do nothing)")
    if not callable(getattr(Swarm, "unblock_peer", None)):
        problems.append("Swarm.unblock_peer is gone (redials would be refused for 60 s)")
    if not callable(getattr(LastSeenCache, "stop", None)):
        problems.append("LastSeenCache.stop is gone (its thread would outlive the host)")
    return problems


def check_instance(pubsub: Any, router: Any, network: Any) -> list[str]:
    """What is wrong with the settings of one incarnation's objects (empty: all in
    effect). Called on the trio thread once they are built and set."""
    problems: list[str] = []
    expect = {
        (pubsub, "max_inbound_rpc_size"): RPC_SIZE_LIMIT,
        (router, "max_messages_per_topic_per_second"): SPAM_LIMIT_PER_S,
        (router, "adaptive_gossip_enabled"): False,
    }
    for (obj, attr), want in expect.items():
        if getattr(obj, attr, object()) != want:
            problems.append(f"{type(obj).__name__}.{attr} is "
                            f"{getattr(obj, attr, 'missing')!r}, not {want!r}")
        elif not _any_refers(type(obj), attr):
            problems.append(f"{type(obj).__name__} no longer reads {attr}")
    if getattr(pubsub, "counter", 0) < 10**18:  # time.time_ns(), not int(time.time())
        problems.append("Pubsub.counter was not set from time.time_ns()")
    scorer = getattr(router, "scorer", None)
    if not isinstance(getattr(scorer, "equivocation_penalties", None), CappedPenalties):
        problems.append("gossipsub's per-origin equivocation penalties are not capped")
    connector = getattr(network, "auto_connector", None)
    if getattr(connector, "maybe_connect", None) is not _no_auto_connect:
        problems.append("the swarm's AutoConnector is still on")
    return problems


# --- one incarnation ---------------------------------------------------------------------


@dataclass(frozen=True)
class HostConfig:
    listen_ip: str
    advertise_ips: tuple[str, ...]
    topics: tuple[str, ...]
    handlers: dict[str, Callable[[str, bytes], bytes]]
    heartbeat_s: float
    max_message_size: int
    max_request_size: int
    max_response_size: int
    validator: Callable[[bytes], bool] | None = None


@dataclass
class Command:
    """Work queued by a caller thread; ``run`` settles ``future`` on the trio thread."""

    future: concurrent.futures.Future[Any]
    run: Callable[[Incarnation], Awaitable[None]]
    deadline: float | None = None  # time.monotonic()


class Owner(Protocol):
    """What an incarnation needs from its ``P2PHost``; called on the trio thread."""

    def _next_command(self) -> Command | None: ...
    def _next_publish(self) -> tuple[str, bytes] | None: ...
    def _remembered_addrs(self, peer: str) -> list[str]: ...
    def _remembered_peers(self) -> list[str]: ...
    def _peer_up(self, peer: str, addrs: list[str]) -> None: ...
    def _peer_down(self, peer: str) -> None: ...
    def _peer_addrs(self, peer: str, addrs: list[str]) -> None: ...
    def _gossip(self, topic: str, publisher: str, data: bytes) -> None: ...
    def _on_listening(self, inc: Incarnation, port: int) -> None: ...
    def _tick(self, now: float, lag: float) -> None: ...
    def _due_candidates(self, now: float, busy: set[str]) -> list[tuple[str, list[str]]]: ...
    def _candidate_dialled(self, peer: str, ok: bool, now: float) -> None: ...
    def _candidate_wait(self, now: float) -> float: ...
    def _request_refused(self, reason: str) -> None: ...


class _Notifee(INotifee):
    def __init__(self, inc: Incarnation) -> None:
        self._inc = inc

    async def connected(self, network: Any, conn: Any) -> None:
        self._inc.conn_up(conn)

    async def disconnected(self, network: Any, conn: Any) -> None:
        self._inc.conn_down(conn)

    async def opened_stream(self, network: Any, stream: Any) -> None:
        pass

    async def closed_stream(self, network: Any, stream: Any) -> None:
        pass

    async def listen(self, network: Any, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        pass


@dataclass
class _Dialer:
    """Redial state of one remembered peer, shared by its maintainer and ``connect``."""

    poke: trio.Event = field(default_factory=trio.Event)
    attempt_done: trio.Event = field(default_factory=trio.Event)
    last_error: BaseException | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    """Cancelled when the peer is forgotten (``Incarnation.forget``)."""


class Incarnation:
    """One ``trio.run`` of the host: run() until ``shutdown`` is set or something fails."""

    def __init__(
        self, owner: Owner, config: HostConfig, key_pair: KeyPair, peer_id: str, port: int
    ) -> None:
        self.owner, self.config, self.key_pair = owner, config, key_pair
        self.peer_id, self.port = peer_id, port
        self.shutdown = trio.Event()
        self.cmd_wakeup, self.pub_wakeup, self.changed = trio.Event(), trio.Event(), trio.Event()
        self.conns: dict[str, list[Any]] = {}  # peer -> its live SwarmConns
        self.dialers: dict[str, _Dialer] = {}
        self.pinged: set[str] = set()
        self.limiter = trio.CapacityLimiter(HANDLER_THREADS)
        self.serving: dict[str, int] = {}  # peer -> its request streams in service
        self.penalties = CappedPenalties()
        self.candidate_wakeup = trio.Event()
        self.nursery: trio.Nursery | None = None
        self.host: Any = None
        self.pubsub: Any = None

    def notify(self) -> None:
        """Work was queued (called through the trio token)."""
        self.cmd_wakeup.set()
        self.pub_wakeup.set()

    def candidates_changed(self) -> None:
        """An mDNS candidate was offered (called through the trio token)."""
        self.candidate_wakeup.set()

    def block(self, seconds: float) -> None:
        """Block the trio loop for ``seconds`` (the loop watchdog's test hook)."""
        time.sleep(seconds)

    def crash(self, exc: Exception) -> None:
        """Fail this incarnation with ``exc`` (the supervisor's test hook)."""

        async def raise_it() -> None:
            raise exc

        assert self.nursery is not None
        self.nursery.start_soon(raise_it)

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def _advertised(self, candidates: list[Multiaddr]) -> list[Multiaddr]:
        port = self.port
        for addr in candidates:
            with contextlib.suppress(Exception):
                port = int(addr.value_for_protocol("tcp"))
                break
        return [Multiaddr(tcp_maddr(ip, port)) for ip in self.config.advertise_ips]

    async def run(self) -> None:
        config = self.config
        listen = Multiaddr(tcp_maddr(config.listen_ip, self.port))
        install()
        host: Any = new_host(
            key_pair=self.key_pair,
            listen_addrs=[listen],
            addrs_factory=self._advertised,
            disable_identify_address_discovery=True,
        )
        router = GossipSub(
            protocols=[TProtocol(p) for p in GOSSIP_PROTOCOLS],
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_interval=config.heartbeat_s,  # type: ignore[arg-type]  # floats work
            adaptive_gossip_enabled=False,
            max_messages_per_topic_per_second=SPAM_LIMIT_PER_S,
        )
        pubsub = Pubsub(host, router, strict_signing=True, max_inbound_rpc_size=RPC_SIZE_LIMIT)
        try:  # Pubsub() started a LastSeenCache thread: stop it whatever happens
            pubsub.counter = time.time_ns()  # never reuse sequence numbers across restarts
            self.host, self.pubsub = host, pubsub
            network = host.get_network()
            network.auto_connector.maybe_connect = _no_auto_connect
            scorer = getattr(router, "scorer", None)
            if scorer is not None:  # keyed by origin ids, which senders mint
                scorer.equivocation_penalties = self.penalties
            problems = check_instance(pubsub, router, network)
            if problems:
                raise PatchCheckFailed("py-libp2p workarounds did not take effect: "
                                       + "; ".join(problems))
            network.register_notifee(_Notifee(self))
            host.set_stream_handler(TProtocol(PING_PROTOCOL), self._serve_ping)
            for protocol, handler in config.handlers.items():
                host.set_stream_handler(TProtocol(protocol), self._request_server(handler))
            async with host.run([listen]):
                if not host.get_transport_addrs():  # the swarm only logs this
                    raise OSError(f"cannot listen on {listen}")
                try:
                    async with (
                        background_trio_service(pubsub),
                        background_trio_service(router),
                        trio.open_nursery() as nursery,
                    ):
                        self.nursery = nursery
                        await pubsub.wait_until_ready()
                        for topic in config.topics:
                            pubsub.set_topic_validator(topic, self._validate, False)
                            subscription = await pubsub.subscribe(topic)
                            nursery.start_soon(self._read_topic, topic, subscription)
                        for task in (self._dispatch, self._publisher, self._liveness,
                                     self._ticker, self._dial_candidates):
                            nursery.start_soon(task)
                        nursery.start_soon(self._watchdog, [pubsub, router, network])
                        for peer in self.owner._remembered_peers():
                            self.dialer(peer)
                        bound = self._advertised(host.get_transport_addrs())[0]
                        self.port = int(bound.value_for_protocol("tcp"))  # if port was 0
                        self.owner._on_listening(self, self.port)
                        await self.shutdown.wait()
                        nursery.cancel_scope.cancel()
                finally:
                    with trio.CancelScope(shield=True, deadline=trio.current_time() + 5.0):
                        for listener in list(network.listeners.values()):  # no new peers
                            with contextlib.suppress(Exception):
                                await listener.close()
                        for conns in list(network.connections.values()):
                            for conn in list(conns):
                                with contextlib.suppress(Exception):
                                    await conn.muxed_conn.close()
                        with contextlib.suppress(Exception):
                            await host.close()
        finally:
            with contextlib.suppress(Exception):
                pubsub.seen_messages.stop()

    async def _watchdog(self, services: list[Any]) -> None:
        """A libp2p service that stopped by itself means this incarnation is broken."""
        while True:
            await trio.sleep(1.0)
            for service in services:
                if not service.manager.is_running:
                    raise RuntimeError(f"libp2p {type(service).__name__} stopped by itself")

    async def _ticker(self) -> None:
        """Prove every ``LOOP_TICK_S`` that the loop runs; a late wake-up is a stall."""
        while True:
            began = time.monotonic()
            await trio.sleep(LOOP_TICK_S)
            now = time.monotonic()
            self.owner._tick(now, now - began - LOOP_TICK_S)

    # --- mDNS candidates: dialled with backoff, a few at a time ---------------------------

    async def _dial_candidates(self) -> None:
        """Dial the candidates that are due (the table in ``p2p.py`` decides which, how
        many at once and when again); peers with a redial loop of their own are skipped."""
        assert self.nursery is not None
        while True:
            now = time.monotonic()
            busy = set(self.conns) | set(self.dialers)
            due = self.owner._due_candidates(now, busy)
            for peer, addrs in due:
                self.nursery.start_soon(self._dial_candidate, peer, addrs)
            self.candidate_wakeup = trio.Event()
            # A candidate that is due but connected (busy) is not dialled and stays due:
            # without a floor the wait is 0 and this loop spins (0.35 core per idle agent
            # with one peer, measured).
            wait = self.owner._candidate_wait(now)
            with trio.move_on_after(wait if due else max(wait, CANDIDATE_IDLE_WAIT_S)):
                await self.candidate_wakeup.wait()

    async def _dial_candidate(self, peer: str, addrs: list[str]) -> None:
        ok = False
        try:
            ok = await self._dial_once(peer, addrs) is None
        finally:
            self.owner._candidate_dialled(peer, ok, time.monotonic())

    # --- connections and liveness ---------------------------------------------------------

    def conn_up(self, conn: Any) -> None:
        peer = conn.muxed_conn.peer_id.to_base58()
        live = self.conns.setdefault(peer, [])
        if any(c is conn for c in live):
            return
        live.append(conn)
        if len(live) == 1:
            addrs = self.owner._remembered_addrs(peer)
            if not addrs:  # inbound: its remote address, until identify tells us more
                with contextlib.suppress(Exception):
                    addrs = [f"{a}/p2p/{peer}" for a in conn.get_transport_addresses()]
            self.owner._peer_up(peer, addrs)
            self._changed()

    def conn_down(self, conn: Any) -> None:
        peer = conn.muxed_conn.peer_id.to_base58()
        live = self.conns.get(peer, [])
        if any(c is conn for c in live):
            live[:] = [c for c in live if c is not conn]
            if not live:
                self._lost(peer)

    def _lost(self, peer: str) -> None:
        if self.conns.pop(peer, None) is not None:
            self.owner._peer_down(peer)
            self._changed()

    async def _liveness(self) -> None:
        """Keep one ping task per connected peer."""
        assert self.nursery is not None
        while True:
            for peer in self.conns.keys() - self.pinged:
                self.pinged.add(peer)
                self.nursery.start_soon(self._ping, peer)
            changed = self.changed
            await changed.wait()

    async def _ping(self, peer: str) -> None:
        """Ping ``peer`` every heartbeat on one stream; drop it after ``LOST_AFTER_S`` of
        silence (and at least ``PING_MISSES`` misses in a row)."""
        hb, misses, pings, stream = self.config.heartbeat_s, 0, 0, None
        pid = ID.from_base58(peer)
        last_ok = trio.current_time()
        try:
            while peer in self.conns:
                period = hb * max(1.0, len(self.conns) / PROBES_PER_HEARTBEAT)
                silence = max(LOST_AFTER_S, PING_MISSES * period)
                began, ok = trio.current_time(), False
                with trio.move_on_after(max(hb, 1.0)):
                    try:
                        if stream is None:
                            stream = await self.host.new_stream(pid, [TProtocol(PING_PROTOCOL)])
                        nonce = secrets.token_bytes(8)
                        await stream.write(nonce)
                        ok = await _read_exactly(stream, 8) == nonce
                    except Exception as exc:
                        logger.debug("p2p: ping %s failed: %r", peer, exc)
                misses, pings = (0, pings + 1) if ok else (misses + 1, pings)
                if ok:
                    last_ok = trio.current_time()
                if ok and pings == 1:
                    self._refresh_addrs(peer, pid)
                if not ok and stream is not None:
                    await _discard(stream, reset=True)
                    stream = None
                if misses >= PING_MISSES and trio.current_time() - last_ok >= silence:
                    logger.warning("p2p: %s silent for %.1f s (%d pings missed); dropping it",
                                   peer, trio.current_time() - last_ok, misses)
                    old = list(self.conns.get(peer, []))
                    with trio.move_on_after(2.0):
                        await self.host.get_network().close_peer(pid)
                    # Only the connections we closed: one the peer dialled in meanwhile stays.
                    for conn in old:
                        self.conn_down(conn)
                    return
                await trio.sleep_until(began + period)
        finally:
            self.pinged.discard(peer)
            if stream is not None:
                await _discard(stream, reset=True)

    def _refresh_addrs(self, peer: str, pid: ID) -> None:
        """After identify, an inbound peer's listen addresses replace its remote one."""
        if self.owner._remembered_addrs(peer):
            return
        with contextlib.suppress(Exception):
            remote = {str(a) for c in self.conns[peer] for a in c.get_transport_addresses()}
            known = [str(a).split("/p2p/")[0] for a in self.host.get_peerstore().addrs(pid)]
            addrs = [f"{a}/p2p/{peer}" for a in dict.fromkeys(known) if a not in remote]
            if addrs:
                self.owner._peer_addrs(peer, addrs)

    async def _serve_ping(self, stream: Any) -> None:
        try:
            while True:  # ends with the stream: EOF, reset or connection close
                await stream.write(await _read_exactly(stream, 8))
        except Exception:
            await _discard(stream, reset=True)

    def dialer(self, peer: str) -> _Dialer:
        if peer not in self.dialers:
            assert self.nursery is not None
            self.dialers[peer] = _Dialer()
            self.nursery.start_soon(self._maintain, peer, self.dialers[peer])
        return self.dialers[peer]

    async def forget(self, peer: str, close: bool) -> None:
        """Stop redialling ``peer``; with ``close``, close its connections too (the
        connection watermark: a trimmed peer is neither failed nor redialled)."""
        dialer = self.dialers.pop(peer, None)
        if dialer is not None:
            dialer.scope.cancel()
        if close and peer in self.conns:
            old = list(self.conns.get(peer, []))
            with trio.move_on_after(2.0):
                await self.host.get_network().close_peer(ID.from_base58(peer))
            for conn in old:
                self.conn_down(conn)

    async def _maintain(self, peer: str, dialer: _Dialer) -> None:
        with dialer.scope:
            await self._redial(peer, dialer)

    async def _redial(self, peer: str, dialer: _Dialer) -> None:
        """Redial a remembered peer whenever it is not connected: 0.5 s doubling to 10 s."""
        backoff, last_dial = REDIAL_INITIAL_S, -1e9
        while True:
            if peer in self.conns:
                changed = self.changed
                await changed.wait()
                backoff = REDIAL_INITIAL_S
                continue
            await trio.sleep_until(last_dial + REDIAL_INITIAL_S)
            last_dial = trio.current_time()
            error = await self._dial_once(peer)
            if error is None:  # the notifee registers the connection just after
                with trio.move_on_after(2.0):
                    while peer not in self.conns:
                        changed = self.changed
                        await changed.wait()
                if peer not in self.conns:
                    error = ConnectionError("connected, but the connection did not stay up")
            dialer.last_error = error
            done, dialer.attempt_done = dialer.attempt_done, trio.Event()
            done.set()
            if error is not None:
                logger.debug("p2p: dial %s failed: %r", peer, error)
                dialer.poke = trio.Event()
                with trio.move_on_after(jitter(backoff)):
                    await dialer.poke.wait()
                backoff = min(backoff * 2, REDIAL_MAX_S)

    async def _dial_once(self, peer: str, given: list[str] | None = None) -> BaseException | None:
        addrs: list[Multiaddr] = []
        for addr in self.owner._remembered_addrs(peer) if given is None else given:
            addrs.extend(info_from_p2p_addr(Multiaddr(addr)).addrs)
        pid = ID.from_base58(peer)
        self.host.get_network().unblock_peer(pid)  # else refused for 60 s after a failure
        error: BaseException | None = TimeoutError(f"dial timed out after {DIAL_TIMEOUT_S}s")
        with trio.move_on_after(DIAL_TIMEOUT_S):
            try:
                await self.host.connect(PeerInfo(pid, addrs))
                error = None
            except Exception as exc:
                error = exc
        return error

    async def connect(self, peer: str, fut: concurrent.futures.Future[str]) -> None:
        dialer = self.dialer(peer)
        if peer not in self.conns:
            attempt = dialer.attempt_done
            dialer.poke.set()
            await attempt.wait()
            if dialer.last_error is not None and peer not in self.conns:
                error = dialer.last_error
                fail(fut, PeerUnavailable(f"cannot connect to {peer}: {error!r}", peer=peer))
                return
        resolve(fut, peer)

    # --- commands and gossip --------------------------------------------------------------

    async def _dispatch(self) -> None:
        assert self.nursery is not None
        while True:
            cmd = self.owner._next_command()
            if cmd is None:
                self.cmd_wakeup = trio.Event()
                await self.cmd_wakeup.wait()
            else:
                self.nursery.start_soon(self._run_command, cmd)

    async def _run_command(self, cmd: Command) -> None:
        try:
            await cmd.run(self)
        except Exception as exc:
            logger.warning("p2p: command failed: %r", exc)
            fail(cmd.future, PeerUnavailable(f"{type(exc).__name__}: {exc}"))
        finally:  # no-op unless the incarnation is going down under it
            fail(cmd.future, PeerUnavailable("p2p host restarted or stopped during the call"))

    def _validate(self, forwarder: Any, msg: Any) -> bool:
        """Gossipsub relays only what passes: a bad message stops at the first agent."""
        if len(msg.data) > self.config.max_message_size:
            return False
        check = self.config.validator
        if check is None:
            return True
        try:
            return bool(check(bytes(msg.data)))
        except Exception as exc:
            logger.warning("p2p: gossip validator failed: %r", exc)
            return False

    async def _read_topic(self, topic: str, subscription: Any) -> None:
        async for msg in subscription:
            with contextlib.suppress(Exception):
                publisher = ID(msg.from_id).to_base58()
                if publisher != self.peer_id:  # we receive our own publishes too
                    self.owner._gossip(topic, publisher, bytes(msg.data))

    async def _publisher(self) -> None:
        """Publish queued messages in order; token bucket per topic (100/s, burst 50)."""
        buckets: dict[str, tuple[float, float]] = {}
        while True:
            item = self.owner._next_publish()
            if item is None:
                self.pub_wakeup = trio.Event()
                await self.pub_wakeup.wait()
                continue
            topic, data = item
            now = trio.current_time()
            tokens, last = buckets.get(topic, (PUBLISH_BURST, now))
            tokens = min(PUBLISH_BURST, tokens + (now - last) * PUBLISH_RATE_PER_S)
            if tokens < 1.0:
                await trio.sleep((1.0 - tokens) / PUBLISH_RATE_PER_S)
                tokens = 1.0
            buckets[topic] = (tokens - 1.0, trio.current_time())
            try:
                await self.pubsub.publish(topic, data)
            except Exception:
                logger.exception("p2p: publish on %s failed; message dropped", topic)

    # --- request streams ------------------------------------------------------------------

    async def request(
        self, peer: str, protocol: str, payload: bytes, timeout: float, limit: int
    ) -> bytes:
        """One framed exchange (wire format: ``p2p.py``); raises NebulaError subclasses."""
        with trio.move_on_after(timeout):
            try:
                return await self._exchange(peer, protocol, payload, limit)
            except NebulaError:
                raise
            except Exception as exc:
                raise PeerUnavailable(f"request to {peer} failed: {exc!r}", peer=peer) from exc
        raise PeerUnavailable(f"request to {peer} timed out", peer=peer, reason="timeout")

    async def _exchange(self, peer: str, protocol: str, payload: bytes, limit: int) -> bytes:
        stream = await self.host.new_stream(ID.from_base58(peer), [TProtocol(protocol)])
        ok = False
        try:
            await stream.write(_U32.pack(len(payload)) + payload)
            (length,) = _U32.unpack(await _read_exactly(stream, 4))
            if length < 1 or length - 1 > limit:
                raise PayloadTooLarge(
                    f"response of {length - 1} bytes from {peer} exceeds {limit}", peer=peer
                )
            frame = await _read_exactly(stream, length)
            ok = True
        finally:
            await _discard(stream, reset=not ok)
        if frame[0] == 0:
            return frame[1:]
        text = frame[1:].decode("utf-8", "replace")
        raise PeerUnavailable(f"{peer} failed the request: {text}", peer=peer, remote=text)

    def _request_server(
        self, handler: Callable[[str, bytes], bytes]
    ) -> Callable[[Any], Awaitable[None]]:
        config = self.config

        async def serve(stream: Any) -> None:
            try:
                peer = stream.muxed_conn.peer_id.to_base58()
            except Exception:
                await _discard(stream, reset=True)
                return
            refused = None
            if sum(self.serving.values()) >= MAX_REQUESTS_IN_FLIGHT:
                refused = "all_peers_limit"
            elif self.serving.get(peer, 0) >= MAX_REQUESTS_PER_PEER:
                refused = "peer_limit"
            if refused is not None:
                self.owner._request_refused(refused)
                await _refuse(stream, f"Overloaded: {refused} of request streams reached")
                return
            self.serving[peer] = self.serving.get(peer, 0) + 1
            try:
                with trio.move_on_after(REQUEST_DEADLINE_S) as scope:
                    await answer(stream, peer)
                if scope.cancelled_caught:
                    self.owner._request_refused("deadline")
                    await _discard(stream, reset=True)
            finally:
                self.serving[peer] -= 1
                if not self.serving[peer]:
                    del self.serving[peer]

        async def answer(stream: Any, peer: str) -> None:
            try:
                with trio.fail_after(REQUEST_READ_TIMEOUT_S):
                    (length,) = _U32.unpack(await _read_exactly(stream, 4))
                    if length > config.max_request_size:
                        raise ValueError(f"request of {length} bytes from {peer}")
                    request = await _read_exactly(stream, length)
                try:
                    body = await trio.to_thread.run_sync(  # type: ignore[call-arg]
                        handler, peer, request, limiter=self.limiter, abandon_on_cancel=True
                    )
                    if len(body) > config.max_response_size:
                        raise ValueError(f"response of {len(body)} bytes exceeds the maximum")
                    status = b"\x00"
                except Exception as exc:  # the handler's error, for the caller
                    body, status = f"{type(exc).__name__}: {exc}".encode()[:ERROR_TEXT_MAX], b"\x01"
                await stream.write(_U32.pack(len(body) + 1) + status)
                if body:
                    await stream.write(body if isinstance(body, bytes) else bytes(body))
                await _discard(stream, reset=False)
            except Exception as exc:
                logger.debug("p2p: request stream failed: %r", exc)
                await _discard(stream, reset=True)

        return serve

    async def send_raw(self, peer: str, protocol: str, chunks: Sequence[bytes]) -> None:
        stream = await self.host.new_stream(ID.from_base58(peer), [TProtocol(protocol)])
        try:
            for chunk in chunks:
                await stream.write(chunk)
        finally:
            await _discard(stream, reset=False)
