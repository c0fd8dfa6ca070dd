"""The ordering rules of ``mesh/versions.py``, with no agents and no clock: the hybrid
logical clock, holding back future-dated records, and the book of the mesh's best
version per name that decides whether an agent may answer with what it holds."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nebula_edge import manifest as mf
from nebula_edge.config import Limits
from nebula_edge.errors import VersionUnavailable
from nebula_edge.manifest import Manifest, Tombstone
from nebula_edge.mesh import versions
from nebula_edge.mesh.versions import Once, VersionBook
from nebula_edge.store import ModuleStore

NOW = 1_800_000_000.0


def make(name: str = "fn", version: int = 1, sha: str = "a" * 64, at: float = NOW,
         **kw: Any) -> Manifest:
    fields: dict[str, Any] = {"size": 74, "abi": "export", "export": "fn", "limits": Limits(),
                              "publisher": "host:8080"}
    fields.update(kw)
    return Manifest(name=name, version=version, sha256=sha, deployed_at=at, **fields)


# ------------------------------------------------------------------------------ the clock
def test_next_time_is_the_wall_clock_when_it_is_ahead_of_the_name() -> None:
    assert versions.next_time(NOW, None) == NOW
    assert versions.next_time(NOW, NOW - 5) == NOW


def test_next_time_orders_after_a_name_dated_ahead_of_the_clock() -> None:
    ahead = NOW + 30  # a peer's clock is 30 s ahead; its deploy is current here
    t = versions.next_time(NOW, ahead)
    assert t == ahead + versions.TICK_S and t > ahead
    assert not versions.too_far_ahead(t, NOW)  # so peers adopt it, never hold it back


@given(now=st.floats(0, 4e9), floor=st.floats(0, 4e9))
def test_next_time_is_always_after_the_floor_and_never_before_now(now: float,
                                                                  floor: float) -> None:
    t = versions.next_time(now, floor)
    assert t > floor and t >= now


def test_a_record_beyond_the_skew_is_held_back_until_time_passes() -> None:
    at = NOW + 86_400  # a publisher whose clock is a day ahead
    assert versions.too_far_ahead(at, NOW)
    assert versions.too_far_ahead(at, NOW + 86_400 - versions.MAX_FUTURE_S - 1)
    # Offered again by a later sync, once the clock has caught up: adopted.
    assert not versions.too_far_ahead(at, NOW + 86_400 - versions.MAX_FUTURE_S)
    assert not versions.too_far_ahead(NOW + versions.MAX_FUTURE_S, NOW)
    assert versions.too_far_ahead(float("inf"), NOW)
    assert versions.too_far_ahead(float("nan"), NOW)
    assert not versions.too_far_ahead(NOW - 86_400, NOW)  # the past is for the order rule


def test_the_skew_is_one_documented_minute() -> None:
    assert versions.MAX_FUTURE_S == mf.MAX_FUTURE_S == 60.0


def test_record_time_of_either_kind() -> None:
    assert versions.record_time(make(at=12.0)) == 12.0
    assert versions.record_time(Tombstone("fn", 13.0, "p")) == 13.0


def test_held_back_and_refused_ids_are_counted_once_and_bounded() -> None:
    held = Once(cap=3)
    assert held.first_time("a") and not held.first_time("a")
    for rid in "bcd":
        assert held.first_time(rid)
    assert len(held) == 3
    assert held.first_time("a")  # evicted (oldest first), so counted again: bounded


# ------------------------------------------------------------------------------ the book
def test_an_agent_holding_v1_that_refused_v2_is_outdated() -> None:
    v1, v2 = make(version=1, at=NOW), make(version=2, sha="b" * 64, at=NOW + 1)
    book = VersionBook()
    assert book.note(v1)
    assert book.newer_than(v1, None) is None
    assert book.note(v2, refused="over_limits")
    assert book.newer_than(v1, None) == v2  # never answer with v1
    assert book.refused(v2) == "over_limits"
    assert book.newer_than(v2, None) is None


def test_the_book_keeps_the_best_whatever_order_versions_arrive_in() -> None:
    vs = [make(version=i, sha=f"{i:064x}", at=NOW + i) for i in range(1, 6)]
    for order in (vs, vs[::-1], [vs[2], vs[4], vs[0], vs[3], vs[1]]):
        book = VersionBook()
        for m in order:
            book.note(m)
        assert book.best("fn") == vs[-1]
    book = VersionBook()
    book.note(vs[4])
    assert not book.note(vs[0])  # an older one does not replace the best
    assert book.note(vs[4])  # the same one again: still the best


def test_a_deletion_of_the_best_version_means_it_does_not_count() -> None:
    v1, v2 = make(version=1, at=NOW), make(version=2, sha="b" * 64, at=NOW + 1)
    book = VersionBook()
    book.note(v2, refused="too_big")
    assert book.newer_than(v1, Tombstone("fn", NOW + 1, "p")) is None
    assert book.newer_than(v1, Tombstone("fn", NOW + 0.5, "p")) == v2


def test_the_book_is_bounded_least_recently_told_first_out() -> None:
    book = VersionBook(cap=2)
    a, b, c = make(name="a"), make(name="b"), make(name="c", sha="c" * 64)
    book.note(a, refused="too_big")
    book.note(b)
    book.note(a)  # told again: recent
    book.note(c, refused="too_big")
    assert len(book) == 2
    assert book.best("b") is None and book.best("a") == a and book.best("c") == c
    assert book.refused(c) == "too_big"


def test_the_error_names_the_version_by_id_and_says_why() -> None:
    v2 = make(version=2, sha="b" * 64)
    e = versions.unavailable(v2, "over_limits")
    assert isinstance(e, VersionUnavailable)
    assert (e.status, e.code) == (503, "version_unavailable")
    assert v2.id in e.message and "-max-memory or -max-timeout" in e.message
    assert e.to_json()["error"]["id"] == v2.id
    assert "not on this agent yet" in versions.unavailable(v2, None).message


# ------------------------------------------------------------------------------ a simulation
@pytest.mark.parametrize("seed", range(20))
def test_agents_with_skewed_clocks_converge_and_nobody_runs_an_old_version(seed: int) -> None:
    """Three agents, one with its clock a day ahead; deploys from all of them delivered in
    a random order. Every agent adopts only what is not too far ahead of its clock, the
    adopted sets agree once the same records reached everyone, and an agent that refused
    the winner (too big for it) is told it is outdated."""
    import random
    rnd = random.Random(seed)
    skew = {"a": 0.0, "b": 0.5, "c": 86_400.0}
    made: list[Manifest] = []
    floor: dict[str, float] = {}
    for i in range(12):
        who = rnd.choice("abc")
        now = NOW + i + skew[who]
        at = versions.next_time(now, floor.get(who))
        floor[who] = at
        made.append(make(version=i + 1, sha=f"{i:064x}", at=at, publisher=who,
                         size=10 if rnd.random() < 0.7 else 10_000))
    adopted: dict[str, list[Manifest]] = {}
    for agent in "ab":  # correctly clocked receivers
        book = VersionBook()
        held: list[Manifest] = []
        for m in rnd.sample(made, len(made)):
            if versions.too_far_ahead(m.deployed_at, NOW + 12 + skew[agent]):
                continue
            book.note(m, refused="too_big" if m.size > 1000 and agent == "b" else None)
            if not (m.size > 1000 and agent == "b"):
                held.append(m)
        adopted[agent] = held
        runs = mf.current(held, None)
        best = book.best("fn")
        assert all(m.publisher != "c" for m in held)  # the day-ahead clock never got in
        if runs is not None and best is not None and best.key > runs.key:
            assert book.newer_than(runs, None) == best  # b forwards or refuses
        elif runs is not None:
            assert book.newer_than(runs, None) is None
    a_best = mf.current(adopted["a"], None)
    b_book_best = max((m for m in made if m.publisher != "c"), key=lambda m: m.key)
    assert a_best == b_book_best


# ------------------------------------------------------------------------------ max_modules
def test_names_from_peers_count_against_max_modules(tmp_path: Path) -> None:
    """The store takes versions of at most ``max_names`` names, whoever offers them (the
    API refuses with 413 before; a peer's are refused here, and counted by the mesh)."""
    store = ModuleStore(tmp_path, max_names=2)
    held = []
    for i, name in enumerate(("a", "b", "c")):
        data = b"\0asm\1\0\0\0" + bytes([i])
        sha = store.put_blob(data)
        m = make(name=name, sha=sha, size=len(data), at=NOW + i)
        assert store.wants(m) is (i < 2) and store.has_room(name) is (i < 2)
        assert store.put_manifest(m) is (i < 2)
        store.unpin(sha)
        held.append(m)
    assert store.names() == ["a", "b"]
    # A name already held still takes new versions; a deleted one frees its place.
    v2 = dataclasses.replace(held[0], version=2, deployed_at=NOW + 10)
    assert store.wants(v2) and store.put_manifest(v2)
    store.put_tombstone(Tombstone("b", NOW + 20, "p"))
    assert store.has_room("c")
    store.put_blob(b"\0asm\1\0\0\0" + bytes([2]))  # its refused bytes were not kept
    assert store.put_manifest(held[2])
    assert store.names() == ["a", "c"]
