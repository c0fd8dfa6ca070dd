"""Sans-IO mesh logic and wire decoders: no sockets, no threads."""

from __future__ import annotations

import base64
import contextlib
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nebula_edge.config import Limits
from nebula_edge.errors import BadRequest
from nebula_edge.manifest import Manifest, Tombstone, admits, current
from nebula_edge.mesh import wire
from nebula_edge.mesh.state import PeerTable, newest_first


def man(name: str = "double", t: float = 1.0, sha: str = "a", version: int = 1) -> Manifest:
    return Manifest(name=name, version=version, sha256=(sha * 64)[:64], size=10, abi="export",
                    export=name, limits=Limits(), deployed_at=t, publisher="peer-a")


@given(st.lists(st.tuples(st.floats(0, 1e9, allow_nan=False), st.sampled_from("abcdef0123")),
                min_size=1, max_size=12, unique=True), st.randoms())
def test_every_arrival_order_keeps_the_same_versions(entries: list[tuple[float, str]],
                                                     rnd: random.Random) -> None:
    """Two agents applying `admits` to the same manifests in different orders end with the
    same kept set and the same current version."""
    ms = [man(t=t, sha=s) for t, s in entries]

    def apply(order: list[Manifest]) -> list[Manifest]:
        kept: list[Manifest] = []
        for m in order:
            if admits(kept, None, m, keep=5):
                kept = sorted([*kept, m], key=lambda v: v.key)[-5:]
        return kept

    a = apply(ms)
    shuffled = ms[:]
    rnd.shuffle(shuffled)
    b = apply(shuffled)
    assert [m.key for m in a] == [m.key for m in b]
    assert current(a, None) == current(b, None) == max(ms, key=lambda m: m.key)


def test_tombstone_hides_older_versions_only() -> None:
    old, new = man(t=1.0, sha="a"), man(t=5.0, sha="b")
    t = Tombstone("double", 3.0, "p")
    assert current([old, new], t) == new
    assert current([old], t) is None
    assert not admits([], t, old, 5)
    assert admits([], t, new, 5)


def test_newest_first() -> None:
    ms = [man(t=2.0, sha="b"), man(t=9.0, sha="c"), man(t=2.0, sha="a")]
    assert [m.sha256[0] for m in newest_first(ms)] == ["c", "b", "a"]


def test_peer_table_tracks_connections_and_holdings() -> None:
    pt = PeerTable()
    assert pt.connected("p1", ["/ip4/127.0.0.1/tcp/1"], now=10.0)
    assert not pt.connected("p1", [], now=11.0)
    pt.connected("p2", [], now=12.0)
    pt.set_holdings("p1", {"s1"})
    pt.add_holding("p2", "s1")
    assert pt.holders("s1", prefer="p2") == ["p2", "p1"]
    assert pt.lost("p1") and not pt.lost("p1")
    assert pt.holders("s1") == ["p2"]
    assert [r.peer_id for r in pt.connected_peers()] == ["p2"]
    rec = pt.get("p1")
    assert rec is not None and rec.addrs == ("/ip4/127.0.0.1/tcp/1",) and rec.holds == set()


def test_gossip_round_trip_inline_and_not() -> None:
    m = man()
    small = wire.announce_for(m, b"x" * 10)
    assert small.wasm == b"x" * 10
    assert wire.decode_gossip(wire.encode_gossip(small)) == small
    big = wire.announce_for(m, b"x" * (wire.INLINE_MAX + 1))
    assert big.wasm is None
    t = wire.Delete(Tombstone("double", 2.0, "p"))
    assert wire.decode_gossip(wire.encode_gossip(t)) == t


@pytest.mark.parametrize("payload", [
    b"", b"not json", b"[]", b"{}", b'{"v":2,"type":"announce"}',
    b'{"v":1,"type":"nope"}', b'{"v":1,"type":"announce","manifest":[]}',
    b'{"v":1,"type":"announce","manifest":{"v":1,"name":"../x"}}',
    b"[" * 100_000,
    b"{" + b" " * (wire.MAX_GOSSIP + 1) + b"}",
])
def test_gossip_decoder_rejects_malformed(payload: bytes) -> None:
    with pytest.raises(BadRequest):
        wire.decode_gossip(payload)


def test_gossip_decoder_rejects_inline_bytes_of_the_wrong_size() -> None:
    d = json.loads(wire.encode_gossip(wire.Announce(man(), None)))
    d["wasm"] = base64.b64encode(b"12345").decode()  # manifest says 10 bytes
    with pytest.raises(BadRequest):
        wire.decode_gossip(json.dumps(d).encode())


@settings(max_examples=300)
@given(st.binary(max_size=2048))
def test_decoders_never_raise_anything_but_bad_request(data: bytes) -> None:
    for decode in (wire.decode_gossip, wire.decode_sync_request, wire.decode_sync_response,
                   wire.decode_info, wire.decode_pull_request, wire.decode_pull_response):
        with contextlib.suppress(BadRequest):
            decode(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                       children, max_size=4),
    max_leaves=20)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(["v", "type", "manifest", "tombstone", "wasm", "digest",
                                        "manifests", "tombstones", "http_port", "version",
                                        "buckets", "members", "hashes", "after", "names",
                                        "next"]),
                       json_values))
def test_decoders_on_structured_garbage(d: dict[str, object]) -> None:
    data = json.dumps(d).encode()
    for decode in (wire.decode_gossip, wire.decode_sync_request, wire.decode_sync_response,
                   wire.decode_info, wire.decode_pull_request, wire.decode_pull_response):
        with contextlib.suppress(BadRequest):
            decode(data)


def test_sync_round_trip() -> None:
    r = wire.SyncResponse("d", ("0" * 16,) * 256, (wire.Member("p1", 3, False, ("/a",)),))
    assert wire.decode_sync_response(wire.encode_sync_response(r)) == r
    same = wire.SyncResponse("d", None)
    assert wire.decode_sync_response(wire.encode_sync_response(same)) == same
    req = wire.SyncRequest("abc", "m")
    assert wire.decode_sync_request(wire.encode_sync_request(req)) == req
    pull = wire.PullRequest((1, 2), {"double": "ab" * 8}, "a")
    assert wire.decode_pull_request(wire.encode_pull_request(pull)) == pull
    piece = wire.PullResponse(("double", "x"), (man(),), (Tombstone("x", 1.0, "p"),), "x")
    assert wire.decode_pull_response(wire.encode_pull_response(piece)) == piece
    info = wire.PeerInfo(8080, "0.1.0")
    assert wire.decode_info(wire.encode_info(info)) == info
