"""Difference-only anti-entropy and membership, driven as pure code (no sockets).

Two or more ``Peer`` objects hold a dict of records and a ``DigestIndex`` kept up to date
on each write, and run the real ``mesh/sync.py`` exchange against each other through the
wire encoders, counting bytes.
"""

from __future__ import annotations

import random

from nebula_edge.config import Limits
from nebula_edge.manifest import Manifest, Tombstone, admits
from nebula_edge.mesh import wire
from nebula_edge.mesh.index import BUCKETS, DigestIndex, kept
from nebula_edge.mesh.members import DEAD_KEEP_S, SUSPECT_S, Members
from nebula_edge.mesh.rounds import Rounds, scaled_interval
from nebula_edge.mesh.sync import PullSession, answer_pull, answer_sync, peer_holdings


def man(name: str, t: float, sha: str = "a") -> Manifest:
    return Manifest(name=name, version=1, sha256=(sha * 64)[:64], size=10, abi="export",
                    export="f", limits=Limits(), deployed_at=t, publisher="p")


class Peer:
    KEEP = 5

    def __init__(self) -> None:
        self.versions: dict[str, list[Manifest]] = {}
        self.tombs: dict[str, Tombstone] = {}
        self.index = DigestIndex()
        self.sent = 0

    def put(self, m: Manifest) -> None:
        vs = self.versions.get(m.name, [])
        if admits(vs, self.tombs.get(m.name), m, self.KEEP):
            self.versions[m.name] = sorted([*vs, m], key=lambda v: v.key)[-self.KEEP:]
            self._touch(m.name)

    def delete(self, t: Tombstone) -> None:
        old = self.tombs.get(t.name)
        if old is None or old.deleted_at < t.deleted_at:
            self.tombs[t.name] = t
            self.versions[t.name] = [m for m in self.versions.get(t.name, []) if not t.covers(m)]
            self._touch(t.name)

    def _touch(self, name: str) -> None:
        self.index.update(name, self.versions.get(name, []), self.tombs.get(name), self.KEEP)

    def records(self, name: str) -> tuple[list[Manifest], Tombstone | None]:
        return self.versions.get(name, []), self.tombs.get(name)

    def pull_from(self, other: Peer) -> tuple[bool, int]:
        """One round: (roots were equal, bytes both ways)."""
        req = wire.encode_sync_request(wire.SyncRequest(self.index.root()))
        resp_b = wire.encode_sync_response(
            answer_sync(other.index, wire.decode_sync_request(req)))
        resp = wire.decode_sync_response(resp_b)
        used = len(req) + len(resp_b)
        if resp.buckets is None:
            return True, used
        session = PullSession.start(self.index, resp.buckets)
        while (pull := session.next_request()) is not None:
            pb = wire.encode_pull_request(pull)
            ab = wire.encode_pull_response(answer_pull(other.index, wire.decode_pull_request(pb),
                                                       other.records))
            piece = wire.decode_pull_response(ab)
            used += len(pb) + len(ab)
            session.received(piece)
            for t in piece.tombstones:
                self.delete(t)
            for m in piece.manifests:
                self.put(m)
        return False, used


def test_index_is_updated_per_write_and_independent_of_order() -> None:
    ms = [man(f"n{i % 7}", float(i), "abcdef"[i % 6]) for i in range(30)]
    a, b = Peer(), Peer()
    for m in ms:
        a.put(m)
    for m in reversed(ms):
        b.put(m)
    assert a.index.root() == b.index.root()
    before = a.index.root()
    a.delete(Tombstone("n3", 100.0, "p"))
    assert a.index.root() != before
    assert len(a.index.differing(b.index.buckets())) == 1


def test_kept_applies_the_store_rule() -> None:
    ms = [man("x", float(i)) for i in range(8)]
    assert [m.deployed_at for m in kept(ms, Tombstone("x", 6.0, "p"), 5)] == [7.0]
    assert [m.deployed_at for m in kept(ms, None, 5)] == [3.0, 4.0, 5.0, 6.0, 7.0]


def twins(n: int) -> tuple[Peer, Peer]:
    """Two peers holding the same ``n`` modules."""
    a, b = Peer(), Peer()
    for i in range(n):
        m = man(f"mod{i}", 1.0)
        a.put(m)
        b.put(m)
    return a, b


def test_equal_roots_cost_one_small_exchange() -> None:
    a, b = twins(2000)
    same, used = a.pull_from(b)
    assert same and used < 300


def test_one_new_module_among_5000_costs_a_few_kib_not_the_set() -> None:
    a, b = twins(5000)
    b.put(man("fresh", 2.0))
    same, used = a.pull_from(b)
    assert not same and a.index.root() == b.index.root()
    assert used < 16_000, used  # 4 KiB of buckets + ~20 name hashes + one record


def test_large_differences_are_pulled_in_bounded_pieces_over_rounds() -> None:
    """40,000 records: twice the old 20,000-record cap that stopped sync for good."""
    a, b = Peer(), Peer()
    for i in range(8000):
        for v in range(5):
            b.put(man(f"mod{i}", float(v), "abcde"[v]))
    rounds = 0
    while a.index.root() != b.index.root():
        rounds += 1
        assert rounds < 10
        a.pull_from(b)
    assert sum(len(v) for v in a.versions.values()) == 40_000


def test_tombstones_and_names_only_one_side_holds_converge_both_ways() -> None:
    rng = random.Random(5)
    a, b = Peer(), Peer()
    for _ in range(300):
        m = man(f"m{rng.randrange(60)}", float(rng.randrange(1000)), rng.choice("abc"))
        rng.choice((a, b)).put(m)
    a.delete(Tombstone("m7", 500.0, "p"))
    b.delete(Tombstone("m8", 700.0, "p"))
    a.pull_from(b)
    b.pull_from(a)
    assert a.index.root() == b.index.root()
    assert a.versions == b.versions and a.tombs == b.tombs


def test_answer_pull_covers_names_the_answerer_lacks() -> None:
    a, b = Peer(), Peer()
    a.put(man("only-a", 1.0))
    session = PullSession.start(a.index, b.index.buckets())
    pull = session.next_request()
    assert pull is not None
    piece = answer_pull(b.index, pull, b.records)
    assert piece.names == ("only-a",) and piece.manifests == ()
    session.received(piece)
    shas, names = peer_holdings([man("only-a", 1.0), man("both", 1.0, "b")], session.covered)
    assert names == {"both"} and shas == {"b" * 64}


def test_refused_versions_counted_as_held_make_roots_agree() -> None:
    """An agent that will never take a version counts it in its index: roots agree."""
    a = Peer()
    vs = [man("x", float(i), "abcdef"[i]) for i in range(6)]
    for m in vs:
        a.put(m)
    b = DigestIndex()
    stored, refused = vs[:5], [vs[5]]  # b cannot take the newest: it keeps the old 5
    b.update("x", [*stored, *refused], None, 5)
    assert b.root() == a.index.root()


def test_rounds_scale_past_32_members_and_pick_distinct_peers() -> None:
    assert scaled_interval(10, 32) == 10
    assert scaled_interval(10, 64) == 20
    assert scaled_interval(10, 1000) == 60
    r = Rounds(10.0)
    rng = random.Random(1)
    assert 7.5 <= r.next_delay(5, rng) <= 12.5
    assert len(set(r.pick(["a", "b", "c"], rng, k=2))) == 2
    r.begin("a", 1.0)
    assert r.gap("a", 1.05) > 0 and r.gap("a", 1.2) <= 0
    r.end("a", 2.0)
    assert r.recent("a", 5.0) and not r.recent("a", 12.5)


def test_members_spread_refute_and_collect() -> None:
    a = Members("A", 1, ["/a"], now=0.0)
    b = Members("B", 1, ["/b"], now=0.0)
    c = Members("C", 1, ["/c"], now=0.0)
    a.connected("B", ["/b"], 0.0)
    b.connected("A", ["/a"], 0.0)
    b.connected("C", ["/c"], 0.0)
    b.merge(c.listed(), 0.5)  # C's own word: its incarnation
    a.merge(b.listed(), 1.0)
    assert a.alive() == ["B", "C"] and a.digest() != b.digest()
    b.merge(a.listed(), 1.0)
    assert a.digest() == b.digest()
    # B loses C: hidden at once, reported dead after SUSPECT_S.
    b.lost("C", 2.0)
    assert b.alive() == ["A"]
    assert b.tick(2.0 + SUSPECT_S, connected={"A"}) == ["C"]
    a.merge(b.listed(), 20.0)
    assert a.alive() == ["B"]
    # C was alive after all: it learns the report and refutes with a higher incarnation.
    c.merge(a.listed(), 21.0)
    assert c.incarnation("C") == 2
    assert a.merge(c.listed(), 22.0) == ["C"] and a.alive() == ["B", "C"]
    # A trimmed connection is not a failure.
    b.connected("C", ["/c"], 23.0)
    b.lost("C", 24.0, trimmed=True)
    assert b.tick(24.0 + SUSPECT_S, connected={"A"}) == []
    # Dead records are collected after DEAD_KEEP_S.
    a.lost("B", 30.0)
    a.tick(30.0 + SUSPECT_S, connected=set())
    assert "B" not in a.alive() and len(a) == 3
    a.tick(31.0 + SUSPECT_S + DEAD_KEEP_S, connected=set())
    assert len(a) == 2


def test_bucket_count_matches_the_wire() -> None:
    assert len(DigestIndex().buckets()) == BUCKETS


def test_sync_kind_finds_the_type_of_a_large_pull_request() -> None:
    hashes = {f"module-{i:05d}": f"{i:016x}" for i in range(5000)}
    pull = wire.encode_pull_request(wire.PullRequest(tuple(range(32)), hashes, ""))
    assert len(pull) > 100_000 and wire.sync_kind(pull) == "pull"
    assert wire.sync_kind(wire.encode_blobs_request(["a" * 64])) == "blobs"
    assert wire.sync_kind(wire.BYE) == "bye"
    assert wire.sync_kind(wire.encode_sync_request(wire.SyncRequest("d", "m"))) == "sync"
    assert wire.sync_kind(b'{"type":"pull"}') == "sync"  # not canonical: the sync decoder says no
