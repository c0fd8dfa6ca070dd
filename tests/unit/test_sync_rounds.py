"""Sync rounds asked for by calls (``MeshService._sync_round``), with the network replaced.

The e2e tests show the behaviour between real agents; these pin down the scheduling rules
under many callers, failing rounds and cancellations, which real peers cannot be made to
produce on demand: every caller's future ends only after a round that began after the
caller asked; one round at a time per peer; call-driven rounds begin at least
``CALL_ROUND_GAP_S`` apart; nobody waits on a round that will never run.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import types
from typing import Any

import pytest

from nebula_edge.mesh.rounds import Rounds
from nebula_edge.net.service import CALL_ROUND_GAP_S, MeshService

PEERS = ("a", "b", "c")


class Round:
    def __init__(self) -> None:
        self.began = time.monotonic()
        self.ended: float | None = None
        self.outcome = "running"


def service(rng: random.Random, p_fail: float) -> tuple[MeshService, dict[str, list[Round]]]:
    """A MeshService with only the sync state, its ``_sync_once`` a random-length sleep
    that fails with probability ``p_fail``."""
    svc = MeshService.__new__(MeshService)
    svc._syncing, svc.rounds = {}, Rounds(5.0)
    svc._round_now, svc._round_next, svc._tasks = {}, {}, set()
    rounds: dict[str, list[Round]] = {}

    async def sync_once(self: MeshService, peer: str) -> None:
        r = Round()
        rounds.setdefault(peer, []).append(r)
        assert all(o.ended is not None for o in rounds[peer][:-1]), "two rounds at once"
        try:
            await asyncio.sleep(rng.uniform(0, 0.04))
            if rng.random() < p_fail:
                r.outcome = "failed"
                raise RuntimeError("a bug in a sync round")
            r.outcome = "ok"
        except asyncio.CancelledError:
            r.outcome = "cancelled"
            raise
        finally:
            r.ended = time.monotonic()

    svc._sync_once = types.MethodType(sync_once, svc)  # type: ignore[method-assign]
    return svc, rounds


async def many_callers(seed: int, p_fail: float, cancel: bool) -> list[str]:
    rng = random.Random(seed)
    svc, rounds = service(rng, p_fail)
    problems: list[str] = []
    cancelled_at: list[float] = []

    async def caller() -> None:
        await asyncio.sleep(rng.uniform(0, 0.8))
        peer = rng.choice(PEERS)
        since = time.monotonic()
        fut = svc._sync_round(peer, since)
        try:
            await asyncio.wait_for(asyncio.shield(fut), 2.0)
        except TimeoutError:
            problems.append(f"{peer}: a caller's round never ended")
            return
        done = time.monotonic()
        if any(r.began >= since and r.ended is not None and r.ended <= done
               for r in rounds[peer]):
            return
        if not any(since - 0.05 <= c <= done for c in cancelled_at):
            problems.append(f"{peer}: resolved without a round that began after it asked")

    async def canceller() -> None:
        for _ in range(8):
            await asyncio.sleep(rng.uniform(0.05, 0.15))
            task = svc._syncing.get(rng.choice(PEERS))
            if task is not None and not task.done():
                cancelled_at.append(time.monotonic())
                task.cancel()

    await asyncio.gather(*(caller() for _ in range(200)), *([canceller()] if cancel else []))
    await asyncio.sleep(0.05)  # done-callbacks of the last tasks
    for peer, rs in rounds.items():
        starts = [r.began for r in rs]
        problems += [f"{peer}: rounds {b - a:.3f} s apart"
                     for a, b in itertools.pairwise(starts) if b - a < CALL_ROUND_GAP_S - 0.002]
    left = {k: v for k, v in (("_syncing", svc._syncing), ("_round_now", svc._round_now),
                              ("_round_next", svc._round_next)) if v}
    if left:
        problems.append(f"state left behind: {left}")
    return problems


@pytest.mark.parametrize(("p_fail", "cancel"), [(0.0, False), (0.25, False), (0.0, True)])
def test_callers_always_get_a_round_that_began_after_they_asked(p_fail: float,
                                                                cancel: bool) -> None:
    assert asyncio.run(many_callers(seed=7, p_fail=p_fail, cancel=cancel)) == []


def test_a_sync_cancelled_before_it_ran_leaves_nobody_waiting() -> None:
    """What ``stop()`` does to a sync spawned in the same tick."""
    async def scenario() -> dict[str, Any]:
        svc, _ = service(random.Random(1), 0.0)
        fut = svc._sync_round("a", time.monotonic())
        task = svc._syncing["a"]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)
        return {"done": fut.done(), "next": dict(svc._round_next),
                "syncing": dict(svc._syncing)}

    assert asyncio.run(scenario()) == {"done": True, "next": {}, "syncing": {}}
