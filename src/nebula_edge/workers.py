"""Worker threads for blocking Wasm calls, with a light hand-off to and from asyncio.

``loop.run_in_executor`` costs ~50-60 us a call on the event loop (submit, a
concurrent future, ``wrap_future``, chaining, wake-up): about as much as the Wasm call
itself for a small function. Here a call is one ``SimpleQueue.put`` and, when it is done,
one ``call_soon_threadsafe`` that sets an asyncio future (measured with bench/exec.py:
192 -> ~160 us of agent CPU per /exec).

``submit`` is called on the event loop; the workers run anything, and never touch the
loop except through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

_Item = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():  # the caller went away (cancelled)
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class Workers:
    def __init__(self, n: int, name: str = "wasm") -> None:
        self._q: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
                         for i in range(n)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._q.put((loop, fut, fn, args))
        return fut

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            loop, fut, fn, args = item
            try:
                ok, value = True, fn(*args)
            except BaseException as e:  # handed to the caller, who decides
                ok, value = False, e
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting
                loop.call_soon_threadsafe(_resolve, fut, ok, value)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Blocking. Drop queued calls, let running ones finish, join the threads."""
        with contextlib.suppress(queue.Empty):
            while True:
                item = self._q.get_nowait()
                if item is not None:
                    loop, fut, _, _ = item
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(fut.cancel)
        for _ in self._threads:
            self._q.put(None)
        for t in self._threads:
            t.join(timeout)
