"""The worker pool: compute slots, and waiting calls that lend theirs."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from nebula_edge.workers import Workers


def test_a_waiting_call_lends_its_slot_and_takes_it_back_first() -> None:
    """One compute slot: a call waiting inside ``lend`` lets a queued call run; when the
    wait ends the waiter gets the slot back before further queued calls."""
    w = Workers(1, spare=2)
    order: list[str] = []

    def sleeper() -> str:
        with w.lend(time.monotonic() + 5):
            order.append("sleeping")
            time.sleep(0.2)
        order.append("woke")
        time.sleep(0.05)  # computes with the slot
        order.append("sleeper done")
        return "s"

    def quick(tag: str) -> str:
        order.append(tag)
        return tag

    async def main() -> list[str]:
        a = w.submit(sleeper)
        await asyncio.sleep(0.05)
        b = w.submit(quick, "quick-1")
        return list(await asyncio.gather(a, b))

    try:
        assert asyncio.run(main()) == ["s", "quick-1"]
    finally:
        w.shutdown()
    assert order.index("quick-1") < order.index("woke")  # ran while the sleeper waited


def test_lend_raises_timeout_when_no_slot_comes_back_by_the_deadline() -> None:
    w = Workers(1, spare=1)
    release = threading.Event()
    got: list[str] = []

    def hog() -> None:  # takes the lent slot and keeps it
        release.wait(5)

    def waiter() -> None:
        try:
            with w.lend(time.monotonic() + 0.2):
                time.sleep(0.05)
        except TimeoutError:
            got.append("timeout")

    async def main() -> None:
        a = w.submit(waiter)
        await asyncio.sleep(0.01)
        b = w.submit(hog)
        await a
        release.set()
        await b

    try:
        t0 = time.monotonic()
        asyncio.run(main())
        assert got == ["timeout"]
        assert time.monotonic() - t0 < 1.0
    finally:
        w.shutdown()


def test_lend_outside_a_worker_is_a_no_op() -> None:
    w = Workers(1, spare=0)
    try:
        with w.lend(time.monotonic() + 1):
            pass
    finally:
        w.shutdown()


@pytest.mark.parametrize("n", [1, 3])
def test_many_calls_all_complete(n: int) -> None:
    w = Workers(n, spare=2)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(w.submit(lambda i=i: i * 2) for i in range(200))))

    try:
        assert asyncio.run(main()) == [i * 2 for i in range(200)]
    finally:
        w.shutdown()
