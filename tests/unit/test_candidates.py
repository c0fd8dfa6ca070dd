"""The mDNS candidate table (``net/candidates.py``): pure, time passed in."""

from __future__ import annotations

from nebula_edge.net.candidates import (
    CANDIDATE_BACKOFF_MAX_S,
    CANDIDATE_TTL_S,
    MAX_CANDIDATE_ADDRS,
    CandidateTable,
)


def addr(peer: str, port: int = 4001) -> str:
    return f"/ip4/10.0.0.1/tcp/{port}/p2p/{peer}"


def test_a_new_candidate_is_due_at_once_and_a_failure_backs_it_off_to_a_minute() -> None:
    t = CandidateTable()
    assert t.offer("p", [addr("p")], 0.0)
    assert t.due(0.0, set()) == [("p", [addr("p")])]
    assert t.due(0.0, set()) == []  # being dialled
    now, gaps = 0.0, []
    for _ in range(10):
        t.dialled("p", False, now)
        due_at = now
        while not t.due(due_at, set()):
            due_at += 0.5
        gaps.append(due_at - now)
        now = due_at
        t.offer("p", [addr("p")], now)  # still announced: it does not expire
    assert gaps[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(gaps) == CANDIDATE_BACKOFF_MAX_S
    assert (t.dials, t.dial_failures) == (11, 10)


def test_a_connection_resets_the_backoff_and_keeps_the_candidate_fresh() -> None:
    t = CandidateTable()
    t.offer("p", [addr("p")], 0.0)
    t.due(0.0, set())
    t.dialled("p", True, 1.0)
    assert t.due(2 * CANDIDATE_TTL_S, {"p"}) == []  # connected: kept, not dialled
    assert "p" in t
    assert t.due(2 * CANDIDATE_TTL_S + 1, set()) == [("p", [addr("p")])]  # lost: redialled


def test_candidates_not_heard_of_expire() -> None:
    t = CandidateTable()
    t.offer("p", [addr("p")], 0.0)
    t.offer("q", [addr("q")], 100.0)
    t.due(0.0, set())
    t.dialled("p", False, 0.0)
    t.due(CANDIDATE_TTL_S + 50, set())
    assert "p" not in t and "q" in t and t.expired == 1


def test_the_table_is_bounded_least_recently_heard_of_evicted() -> None:
    t = CandidateTable(max_size=3)
    for i, peer in enumerate("abc"):
        t.offer(peer, [addr(peer)], float(i))
    t.offer("a", [addr("a")], 5.0)  # heard of again: now the most recent
    t.offer("d", [addr("d")], 6.0)
    assert {p for p in "abcd" if p in t} == {"a", "c", "d"} and t.evicted == 1
    many = [addr("a", port) for port in range(100)]
    t.offer("a", many, 7.0)
    assert len(t.due(7.0, set())[0][1]) <= MAX_CANDIDATE_ADDRS


def test_at_most_max_dials_in_flight() -> None:
    t = CandidateTable(max_dials=2)
    for peer in "abcde":
        t.offer(peer, [addr(peer)], 0.0)
    first = t.due(0.0, set())
    assert [p for p, _ in first] == ["a", "b"] and t.dialling == 2
    assert t.due(0.0, set()) == []
    t.dialled("a", False, 0.0)
    assert [p for p, _ in t.due(0.0, set())] == ["c"]
    assert t.wait(0.0) == 0.0  # d and e are due
    t.reset_dialling()
    assert t.dialling == 0


def test_an_answer_without_addresses_makes_no_candidate() -> None:
    t = CandidateTable()
    assert not t.offer("p", [], 0.0) and len(t) == 0


def test_per_origin_penalties_are_capped_least_recently_set_first() -> None:
    from nebula_edge.net.p2p_hardening import CappedPenalties

    p = CappedPenalties(limit=3)
    for origin in "abcd":
        p[origin] += 100.0  # as gossipsub's scorer does, for an equivocating origin
    assert list(p) == ["b", "c", "d"] and p.evicted == 1
    assert p["zz"] == 0.0 and "zz" not in p  # reading does not store
    p["b"] *= 0.5  # decay on heartbeat touches it
    p["e"] += 1.0
    assert list(p) == ["d", "b", "e"]
