"""Worker threads for blocking Wasm calls, with a light hand-off to and from asyncio.

``loop.run_in_executor`` costs ~50-60 us a call on the event loop (submit, a
concurrent future, ``wrap_future``, chaining, wake-up): about as much as the Wasm call
itself for a small function. Here a call is a deque append under a lock and, when it is
done, one ``call_soon_threadsafe`` that sets an asyncio future.

Compute slots and waiting calls. ``n`` calls compute at once (``-workers``, the cores):
more would only share the cores and push every call closer to its time limit. A call
that *waits* (a WASI sleep in ``poll_oneoff``) needs no core, so it lends its slot
(``lend``) and a spare thread takes the next queued call; when the sleep ends, the call
takes a slot back before it computes again, ahead of queued calls. ``spare`` threads
exist for that (``-wait-workers``): beyond that many waiting calls, further ones keep
their slot. Measured (tests/e2e/test_containment.py): with 2 workers, two calls
sleeping 800 ms no longer delay a ``double`` sent beside them (it was 2.8 s).

``submit`` is called on the event loop; the workers run anything, and never touch the
loop except through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

_Item = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]

WAIT_WORKERS = 32
"""Default spare threads for calls waiting in a WASI sleep (an idle thread costs no CPU and
~100 KiB; calls are admitted up to -workers + -queue anyway)."""


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():  # the caller went away (cancelled)
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class Workers:
    def __init__(self, n: int, name: str = "wasm", spare: int = WAIT_WORKERS) -> None:
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # core threads waiting for a call
        self._spare = threading.Condition(self._lock)  # spare threads waiting for a call
        self._idle_core = 0
        """Core threads waiting in ``_next``: woken first, so that calls stay on the same
        few hot threads (waking spares round-robin cost 4x the CPU per call, measured)."""
        self._slot = threading.Condition(self._lock)  # lenders waiting for their slot back
        self._q: collections.deque[_Item] = collections.deque()
        self._free = n
        """Compute slots not held by a running call."""
        self._resuming = 0
        """Lenders waiting to take a slot back: they go before queued calls."""
        self._stopping = False
        self._tls = threading.local()
        self.lending = 0
        """Calls waiting with their slot lent (for metrics)."""
        self._threads = [threading.Thread(target=self._run, args=(i >= n,),
                                          name=f"{name}-{i}", daemon=True)
                         for i in range(n + max(0, spare))]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            self._q.append((loop, fut, fn, args))
            if self._free > self._resuming:
                self._wake_one()
        return fut

    def _wake_one(self) -> None:
        """Wake a thread to take a queued call (lock held): a core thread if one is idle."""
        (self._work if self._idle_core else self._spare).notify()

    def _next(self, spare: bool) -> _Item | None:
        with self._lock:
            cv = self._spare if spare else self._work
            while not self._stopping and not (self._q and self._free > self._resuming):
                if not spare:
                    self._idle_core += 1
                try:
                    cv.wait()
                finally:
                    if not spare:
                        self._idle_core -= 1
            if self._stopping:
                return None
            self._free -= 1
            return self._q.popleft()

    def _release(self) -> None:
        """Give a slot back (lock held) and wake whoever should have it."""
        self._free += 1
        if self._resuming:
            self._slot.notify()
        elif self._q:
            self._wake_one()

    def _run(self, spare: bool = False) -> None:
        self._tls.holding = False
        item = self._next(spare)
        while item is not None:
            self._tls.holding = True
            loop, fut, fn, args = item
            try:
                ok, value = True, fn(*args)
            except BaseException as e:  # handed to the caller, who decides
                ok, value = False, e
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting
                loop.call_soon_threadsafe(_resolve, fut, ok, value)
            item = None
            with self._lock:
                if self._tls.holding:
                    # Busy: keep the slot and take the next call (no wake-up, as a plain
                    # queue would), unless a lender is waiting to resume.
                    if self._q and not self._resuming and not self._stopping:
                        item = self._q.popleft()
                    else:
                        self._release()
            if item is None:
                item = self._next(spare)

    @contextlib.contextmanager
    def lend(self, deadline: float) -> Iterator[None]:
        """Wait inside without holding a compute slot (called on a worker thread, by the
        sandbox's poll_oneoff). On leaving, takes a slot back, ahead of queued calls;
        ``TimeoutError`` if none came back by ``deadline`` (``time.monotonic()``), and the
        call then goes on without one (only to end)."""
        if not getattr(self._tls, "holding", False):  # not one of ours, or already lent
            yield
            return
        with self._lock:
            self._tls.holding = False
            self.lending += 1
            self._release()
        try:
            yield
        finally:
            with self._lock:
                self.lending -= 1
                self._resuming += 1
                try:
                    while self._free == 0:
                        left = deadline - time.monotonic()
                        if left <= 0 or self._stopping:
                            break
                        self._slot.wait(left)
                    if self._free > 0:
                        self._free -= 1
                        self._tls.holding = True
                finally:
                    self._resuming -= 1
                    if self._free > self._resuming and self._q:
                        self._wake_one()
        if not self._tls.holding:
            raise TimeoutError("no compute slot before the call's deadline")

    def shutdown(self, timeout: float = 60.0) -> None:
        """Blocking. Drop queued calls, let running ones finish, join the threads."""
        with self._lock:
            dropped = list(self._q)
            self._q.clear()
            self._stopping = True
            self._work.notify_all()
            self._spare.notify_all()
            self._slot.notify_all()
        for loop, fut, _, _ in dropped:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fut.cancel)
        for t in self._threads:
            t.join(timeout)
