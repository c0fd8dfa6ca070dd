"""Tests for nebula_edge.net.p2p: real libp2p hosts on 127.0.0.1, nothing else.

Every host listens on a free loopback port (a socket bound to port 0 first) and every
wait polls a condition against a deadline. The liveness test runs one peer in a child
process so that it can really be frozen (SIGSTOP: no FIN, only missed pings reveal it)
and killed (SIGKILL), then restarted with the same key and port. The tests import no
libp2p: the hostile peer is a ``P2PHost`` writing hand-encoded protobuf through a
test hook, so ``p2p.py`` stays the only libp2p importer.
"""

from __future__ import annotations

import secrets
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agents import leb128
from nebula_edge.errors import PayloadTooLarge, PeerUnavailable
from nebula_edge.net.p2p import (
    GossipMessage,
    P2PEvent,
    P2PHost,
    PeerConnected,
    PeerLost,
    RequestHandler,
)

HEARTBEAT_S = 0.5
TOPIC = "nebula-test"
ECHO = "nebula-test-echo"
MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``pred`` every 20 ms until true; return the seconds it took."""
    began = time.monotonic()
    while not pred():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)
    return time.monotonic() - began


class Recorder:
    """A thread-safe ``on_event`` that keeps every event."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[P2PEvent] = []

    def __call__(self, event: P2PEvent) -> None:
        with self._lock:
            self._events.append(event)

    def events(self) -> list[P2PEvent]:
        with self._lock:
            return list(self._events)

    def ups(self, peer: str) -> int:
        return sum(isinstance(e, PeerConnected) and e.peer_id == peer for e in self.events())

    def downs(self, peer: str) -> int:
        return sum(isinstance(e, PeerLost) and e.peer_id == peer for e in self.events())

    def gossip(self, topic: str = TOPIC) -> list[GossipMessage]:
        return [e for e in self.events() if isinstance(e, GossipMessage) and e.topic == topic]

    def data(self, topic: str = TOPIC) -> list[bytes]:
        return [m.data for m in self.gossip(topic)]


HostFactory = Callable[..., tuple[P2PHost, Recorder]]


@pytest.fixture
def make_host(tmp_path: Path) -> Iterator[HostFactory]:
    """Build started hosts; every one is stopped at teardown."""
    hosts: list[P2PHost] = []

    def make(
        name: str,
        *,
        port: int | None = None,
        handlers: dict[str, RequestHandler] | None = None,
        topics: tuple[str, ...] = (TOPIC,),
    ) -> tuple[P2PHost, Recorder]:
        recorder = Recorder()
        host = P2PHost(
            key_path=tmp_path / f"{name}.key",
            listen_ip="127.0.0.1",
            port=port or free_port(),
            advertise_ips=["127.0.0.1"],
            topics=topics,
            on_event=recorder,
            handlers=handlers or {},
            heartbeat_s=HEARTBEAT_S,
        )
        hosts.append(host)
        host.start()
        return host, recorder

    yield make
    for host in hosts:
        host.stop()
    wait_until(lambda: not _our_threads(), 5.0, "p2p and LastSeenCache threads gone")


def _our_threads() -> list[str]:
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("p2p-") or "_background_cleanup" in t.name
    ]


def connect(a: P2PHost, ra: Recorder, b: P2PHost, rb: Recorder) -> None:
    assert a.connect(b.addrs[0]).result(10) == b.peer_id
    wait_until(lambda: ra.ups(b.peer_id) > 0 < rb.ups(a.peer_id), 5, "PeerConnected both")


def gossip_flows(sender: P2PHost, receiver: Recorder, tag: str, topic: str = TOPIC) -> None:
    """Publish probes (at most 40, 0.25 s apart) until one arrives: the mesh is up."""
    for i in range(40):
        probe = f"{tag}-{i}".encode()
        sender.publish(topic, probe)
        try:
            wait_until(lambda p=probe: p in receiver.data(topic), 0.25, "probe")  # type: ignore[misc]
            return
        except AssertionError:
            continue
    raise AssertionError(f"no gossip from {sender.peer_id} ({tag})")


# --- 1. identity ------------------------------------------------------------------------


def test_identity_is_created_private_and_stable_across_restarts(
    tmp_path: Path, make_host: HostFactory
) -> None:
    port = free_port()
    first, _ = make_host("id", port=port)
    key = tmp_path / "id.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id.key"]  # no temp file left
    peer_id = first.peer_id
    assert first.addrs == [f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id}"]
    first.stop()
    first.stop()  # idempotent
    before = key.read_bytes()
    second, _ = make_host("id", port=port)
    assert second.peer_id == peer_id
    assert key.read_bytes() == before


def test_bad_arguments_are_rejected(tmp_path: Path, make_host: HostFactory) -> None:
    with pytest.raises(ValueError):
        P2PHost(
            key_path=tmp_path / "k",
            listen_ip="0.0.0.0",
            port=0,
            advertise_ips=[],  # would advertise 0.0.0.0
            topics=[TOPIC],
            on_event=Recorder(),
            handlers={},
        )
    host, _ = make_host("a")
    with pytest.raises(ValueError):
        host.publish(TOPIC, b"x" * (64 * 1024 + 1))
    assert isinstance(host.connect("/ip4/127.0.0.1/tcp/1").exception(1), ValueError)  # no /p2p/
    assert isinstance(host.connect(host.addrs[0]).exception(1), ValueError)  # ourselves
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        clash = P2PHost(
            key_path=tmp_path / "clash.key",
            listen_ip="127.0.0.1",
            port=busy.getsockname()[1],
            advertise_ips=["127.0.0.1"],
            topics=[TOPIC],
            on_event=Recorder(),
            handlers={},
        )
        try:
            with pytest.raises(RuntimeError, match="cannot listen"):
                clash.start(timeout=10)
        finally:
            clash.stop()


# --- 2. gossip ----------------------------------------------------------------------------


def test_gossip_both_ways_burst_of_50_and_own_messages_filtered(make_host: HostFactory) -> None:
    a, ra = make_host("a")
    b, rb = make_host("b")
    connect(a, ra, b, rb)
    gossip_flows(a, rb, "warm-a")
    gossip_flows(b, ra, "warm-b")

    burst = [f"burst-{i}".encode() for i in range(50)]
    began = time.monotonic()
    for data in burst:
        a.publish(TOPIC, data)
    assert time.monotonic() - began < 1.0  # publish() never blocks
    wait_until(lambda: set(burst) <= set(rb.data()), 10, "all 50 burst messages at b")
    assert [d for d in rb.data() if d in set(burst)] == burst  # in order, no duplicates
    assert all(m.from_peer == a.peer_id for m in rb.gossip() if m.data in set(burst))
    # A host receives its own publishes on its subscription; they are not delivered.
    assert not [m for m in ra.gossip() if m.from_peer == a.peer_id]
    # One PeerConnected per peer on each side, although both sides saw the connection.
    assert ra.ups(b.peer_id) == 1 and rb.ups(a.peer_id) == 1
    assert a.connected_peers() == {b.peer_id: b.addrs}
    # b was dialled: once a identified itself, b lists a's listen address, not its port.
    wait_until(lambda: b.connected_peers() == {a.peer_id: a.addrs}, 5, "a's listen addrs")
    assert b.connect(a.addrs[0]).result(10) == a.peer_id  # already connected: no new event
    assert ra.ups(b.peer_id) == 1 and rb.ups(a.peer_id) == 1


# --- 3. requests --------------------------------------------------------------------------


def test_requests_10_mib_errors_limits_and_timeouts(make_host: HostFactory) -> None:
    big = secrets.token_bytes(10 * MiB)
    release = threading.Event()

    def blob(peer: str, request: bytes) -> bytes:
        if request == b"big":
            return big
        if request == b"fail":
            raise KeyError("no such blob")
        if request == b"slow":
            release.wait(5)
        return peer.encode() + b":" + request

    a, ra = make_host("a")
    b, rb = make_host("b", handlers={"/nebula-edge/blob/1.0.0": blob})
    connect(a, ra, b, rb)
    proto = "/nebula-edge/blob/1.0.0"

    assert a.request(b.peer_id, proto, b"hi").result(10) == a.peer_id.encode() + b":hi"
    assert a.request(b.peer_id, proto, b"big").result(30) == big  # 10 MiB intact
    with pytest.raises(PeerUnavailable, match="KeyError: 'no such blob'"):
        a.request(b.peer_id, proto, b"fail").result(10)
    with pytest.raises(PayloadTooLarge):
        a.request(b.peer_id, proto, b"big", max_response=MiB).result(10)
    began = time.monotonic()
    with pytest.raises(PeerUnavailable, match="timed out"):
        a.request(b.peer_id, proto, b"slow", timeout=0.5).result(10)
    assert time.monotonic() - began < 3
    release.set()
    with pytest.raises(PeerUnavailable):
        a.request(b.peer_id, "/nebula-edge/unknown/1.0.0", b"x").result(10)
    # The host serves on after all that.
    assert a.request(b.peer_id, proto, b"again").result(10).endswith(b":again")


# --- 4. hostile input ------------------------------------------------------------------------


_varint = leb128

def _field(number: int, value: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _garbage_key_rpc(topic: str) -> bytes:
    """RPC{publish: [Message]} whose sender is a sha256 peer id, so the signature check
    must parse ``key``: garbage there used to raise inside push_msg and kill Pubsub."""
    message = b"".join(
        [
            _field(1, b"\x12\x20" + secrets.token_bytes(32)),  # from: sha2-256 multihash
            _field(2, b"evil"),  # data
            _field(3, secrets.token_bytes(8)),  # seqno
            _field(4, topic.encode()),  # topicIDs
            _field(5, secrets.token_bytes(64)),  # signature
            _field(6, b"\xff\xff\xff\xff"),  # key: not a PublicKey protobuf
        ]
    )
    return _field(2, message)


def test_malformed_pubsub_frames_and_garbage_keys_are_survived(make_host: HostFactory) -> None:
    a, ra = make_host("a")
    b, rb = make_host("b")
    evil, revil = make_host("evil")
    connect(a, ra, b, rb)
    connect(evil, revil, b, rb)
    gossip_flows(a, rb, "before")

    garbage = [b"\x12\x05ab", b"\xff" * 16, secrets.token_bytes(200)]
    for frame in garbage * 3:
        evil._send_raw(b.peer_id, "/meshsub/1.2.0", [_varint(len(frame)) + frame]).result(10)
    for _ in range(5):
        rpc = _garbage_key_rpc(TOPIC)
        evil._send_raw(b.peer_id, "/meshsub/1.2.0", [_varint(len(rpc)) + rpc]).result(10)

    gossip_flows(a, rb, "after-a")
    gossip_flows(b, ra, "after-b")
    assert b.restarts == 0 and a.restarts == 0  # contained, not recovered by a restart
    assert b"evil" not in rb.data()
    assert a.peer_id in b.connected_peers()


# --- 5. liveness and reconnects ----------------------------------------------------------------

CHILD = """
import sys, time
from pathlib import Path
from nebula_edge.net.p2p import GossipMessage, P2PHost

key, port, lifetime = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
host = None

def on_event(event):
    if isinstance(event, GossipMessage) and event.topic == "nebula-test" and host:
        host.publish("nebula-test-echo", b"echo:" + event.data)

host = P2PHost(key_path=Path(key), listen_ip="127.0.0.1", port=port,
               advertise_ips=["127.0.0.1"], topics=["nebula-test", "nebula-test-echo"],
               on_event=on_event, handlers={}, heartbeat_s=0.5)
host.start()
print(host.addrs[0], flush=True)
end = time.monotonic() + lifetime
while time.monotonic() < end:
    time.sleep(0.2)
host.stop()
"""


def _spawn(key: Path, port: int) -> tuple[subprocess.Popen[str], str]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(key), str(port), "60"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    if not select.select([child.stdout], [], [], 30)[0]:  # starts in ~1.5 s
        child.kill()
        raise AssertionError("the child host did not start within 30 s")
    addr = child.stdout.readline().strip()
    assert addr.startswith("/ip4/127.0.0.1/"), f"child failed to start: {addr!r}"
    return child, addr


def echo_flows(a: P2PHost, ra: Recorder, tag: str) -> None:
    for i in range(40):
        probe = f"{tag}-{i}".encode()
        a.publish(TOPIC, probe)
        try:
            wait_until(lambda p=probe: b"echo:" + p in ra.data(ECHO), 0.25, "echo")  # type: ignore[misc]
            return
        except AssertionError:
            continue
    raise AssertionError(f"no echo from the child ({tag})")


def test_frozen_then_killed_peer_is_lost_and_redialled_when_back(
    tmp_path: Path, make_host: HostFactory
) -> None:
    key, port = tmp_path / "child.key", free_port()
    children: list[subprocess.Popen[str]] = []
    try:
        child, addr = _spawn(key, port)
        children.append(child)
        peer = addr.rsplit("/", 1)[1]
        a, ra = make_host("a", topics=(TOPIC, ECHO))
        assert a.connect(addr).result(10) == peer
        wait_until(lambda: ra.ups(peer) == 1, 5, "PeerConnected(child)")
        echo_flows(a, ra, "first")

        # Frozen: the kernel keeps the connection open, only missed pings reveal it.
        child.send_signal(signal.SIGSTOP)
        took = wait_until(lambda: ra.downs(peer) == 1, 20 * HEARTBEAT_S, "PeerLost(frozen)")
        print(f"frozen peer lost after {took:.2f}s")
        assert took >= 2 * HEARTBEAT_S  # it was the pings, not a FIN
        assert peer not in a.connected_peers()

        # Killed, then back on the same key and port: redialled without being asked.
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        child, _ = _spawn(key, port)
        children.append(child)
        took = wait_until(lambda: ra.ups(peer) == 2, 20, "PeerConnected(child) again")
        print(f"restarted peer reconnected after {took:.2f}s")
        echo_flows(a, ra, "second")
        assert ra.downs(peer) == 1
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait(5)
            if child.stdout is not None:
                child.stdout.close()


def test_cleanly_restarted_peer_is_redialled(tmp_path: Path, make_host: HostFactory) -> None:
    a, ra = make_host("a")
    port = free_port()
    b, rb = make_host("b", port=port)
    connect(a, ra, b, rb)
    gossip_flows(b, ra, "b1")
    for i in range(40):  # advance b's sequence numbers well past its restart time (s)
        b.publish(TOPIC, b"seq-%d" % i)
    wait_until(lambda: b"seq-39" in ra.data(), 5, "b's burst")
    b.stop()
    wait_until(lambda: ra.downs(b.peer_id) == 1, 3, "PeerLost(b) after stop")
    b2, rb2 = make_host("b", port=port)  # same key, same port, a new process's worth
    assert b2.peer_id == b.peer_id
    wait_until(lambda: ra.ups(b.peer_id) == 2 and rb2.ups(a.peer_id) == 1, 20, "redial")
    gossip_flows(b2, ra, "b2")  # a restarted publisher's messages are not taken as seen
    gossip_flows(a, rb2, "a2")


def test_no_task_left_behind_per_inbound_connection(make_host: HostFactory) -> None:
    """The swarm parked one task per inbound connection until it stopped (a leak)."""
    b, rb = make_host("b")
    before = b._trio_task_count().result(5)
    for i in range(6):
        a, ra = make_host(f"a{i}")
        connect(a, ra, b, rb)
        a.stop()
        wait_until(lambda a=a: rb.downs(a.peer_id) == 1, 5, "b saw a go")  # type: ignore[misc]
    wait_until(lambda: b._trio_task_count().result(5) <= before + 2, 5, "no leaked tasks")


# --- 6. supervisor ----------------------------------------------------------------------------


def test_supervisor_restarts_a_crashed_trio_side(make_host: HostFactory) -> None:
    a, ra = make_host("a")
    b, rb = make_host("b")
    connect(a, ra, b, rb)
    gossip_flows(a, rb, "before")
    for i in range(40):  # advance a's sequence numbers well past its restart time (s)
        a.publish(TOPIC, b"seq-%d" % i)
    wait_until(lambda: b"seq-39" in rb.data(), 5, "a's burst")
    peer_id, addrs = a.peer_id, a.addrs

    a._inject_failure()
    wait_until(lambda: a.restarts == 1, 5, "a restarted")
    wait_until(lambda: rb.downs(a.peer_id) == 1, 5, "b saw a go")
    wait_until(lambda: ra.ups(b.peer_id) == 2 and rb.ups(a.peer_id) == 2, 15, "reconnected")
    assert (a.peer_id, a.addrs) == (peer_id, addrs)  # same key, same port
    gossip_flows(a, rb, "after-a")  # fresh sequence numbers: not dropped as seen
    gossip_flows(b, ra, "after-b")


# --- 7. bounds on remote input and the patch self-check (issue 11) -----------------------


SLOW = "/nebula-test/slow/1"


def test_a_peer_gets_at_most_8_request_streams_served_at_once(make_host: HostFactory) -> None:
    release = threading.Event()
    entered = threading.Semaphore(0)

    def slow(peer: str, payload: bytes) -> bytes:
        entered.release()
        release.wait(20)
        return b"done"

    b, rb = make_host("b", handlers={SLOW: slow})
    a, ra = make_host("a")
    connect(a, ra, b, rb)
    futures = [a.request(b.peer_id, SLOW, b"x", timeout=20) for _ in range(8)]
    for _ in range(8):
        assert entered.acquire(timeout=10)  # the first 8 are in service ...
    extra = [a.request(b.peer_id, SLOW, b"x", timeout=20) for _ in range(3)]
    for fut in extra:  # ... the next are refused at once, not queued
        with pytest.raises(PeerUnavailable, match="peer_limit"):
            fut.result(10)
    assert b.health().requests_refused == {"peer_limit": 3}
    release.set()
    assert [f.result(10) for f in futures] == [b"done"] * 8
    assert a.request(b.peer_id, SLOW, b"x").result(10) == b"done"  # the slots came back


def test_mdns_candidates_are_dialled_and_unreachable_ones_backed_off(
        make_host: HostFactory) -> None:
    a, ra = make_host("a")
    b, _ = make_host("b")
    a.candidate(b.peer_id, b.addrs)
    wait_until(lambda: ra.ups(b.peer_id) == 1, 10, "A dials the candidate B")
    # A forged answer naming a port nobody listens on: dialled at 0, ~1, ~3 s, not in a loop.
    ghost = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
    a.candidate(ghost, [f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{ghost}"])
    a.candidate(ghost, [f"/ip4/127.0.0.1/tcp/1/p2p/{b.peer_id}"])  # not its id: ignored
    wait_until(lambda: a.health().candidate_dial_failures >= 2, 10, "two failed dials")
    time.sleep(1.0)  # let a tight redial loop show itself if there were one
    failures = a.health().candidate_dial_failures
    assert 2 <= failures <= 3, failures
    assert a.health().candidates == 2
    bound = {x.name: x for x in a.bounds()}["mdns_candidates"]
    assert (bound.size, bound.limit) == (2, 256)


def test_the_event_queue_drops_gossip_past_its_bound_but_never_peer_events() -> None:
    import asyncio

    async def fill() -> tuple[int, int, list[str]]:
        q = P2PHost.event_queue()
        q.max_gossip = 3
        for i in range(5):
            q.put_nowait(GossipMessage(TOPIC, "p", bytes([i])))
        q.put_nowait(PeerLost("p"))
        kinds = []
        while not q.empty():
            kinds.append(type(q.get_nowait()).__name__)
        return q.dropped, q.gossip, kinds

    dropped, left, kinds = asyncio.run(fill())
    assert (dropped, left) == (2, 0)
    assert kinds == ["GossipMessage"] * 3 + ["PeerLost"]


def test_start_refuses_when_a_libp2p_patch_would_not_take(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nebula_edge.net import p2p_hardening

    pubsub_module = vars(p2p_hardening)["_pubsub_module"]  # the library, as patched
    from nebula_edge.net.p2p import PatchCheckFailed

    p2p_hardening.install()
    assert p2p_hardening.check_patches() == []
    monkeypatch.setattr(pubsub_module, "SUBSCRIPTION_CHANNEL_SIZE", 32)  # reset by a reload
    monkeypatch.setattr(pubsub_module.Pubsub, "push_msg", lambda *a: None)  # a new version
    host = P2PHost(key_path=tmp_path / "k", listen_ip="127.0.0.1", port=free_port(),
                   advertise_ips=["127.0.0.1"], topics=[TOPIC], on_event=Recorder(),
                   handlers={})
    with pytest.raises(PatchCheckFailed) as info:
        host.start()
    assert "SUBSCRIPTION_CHANNEL_SIZE" in str(info.value)
    assert "Pubsub.push_msg is not our wrapper" in str(info.value)
    assert not _our_threads()
