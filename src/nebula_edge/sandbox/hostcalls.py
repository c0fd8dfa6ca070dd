"""WASI functions the agent serves itself instead of wasmtime: the ones that can block
or fill the agent's memory. wasmtime's epochs and fuel do not interrupt a host call, so
a guest's ``poll_oneoff`` could sleep for 2^64 ns under any time limit, and its stdout
went to a file that only a ticker could police. Shadowed in the Linker:

* ``poll_oneoff``: clock subscriptions are served when they end before the call's
  deadline (the sleeping call lends its compute slot to the worker pool); one that ends
  past the deadline ends the call at once with ``exec_timeout`` (it could only time
  out). fd subscriptions on stdin (a byte buffer) and stdout/stderr are always ready;
  other fds get ``EBADF`` events. Nothing else in WASI preview1 waits here: there are
  no sockets and no preopened files, stdin is bytes.
* ``fd_write`` to stdout/stderr: appended to a per-call buffer that never holds more
  than the cap; the first write past the cap ends the call with ``output_too_large``
  (the call stops inside that write, not at its time limit). ``fd_pwrite`` on them is
  ``ESPIPE``; any other fd is ``EBADF`` (no files can be open).

The functions are raw C callbacks (``wasmtime_linker_define_func``); they find their
call through a thread-local (the host call runs on the thread that called the guest).
"""

from __future__ import annotations

import ctypes
import struct
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from wasmtime import _ffi as ffi

WASI = b"wasi_snapshot_preview1"
ESUCCESS, EBADF, EFAULT, EINVAL, ENOTSUP, ESPIPE = 0, 8, 21, 28, 58, 70
SUB_SIZE, EVENT_SIZE = 48, 32
MAX_SUBSCRIPTIONS = 1024
"""More subscriptions in one poll_oneoff are EINVAL (real programs use a handful): the
host's work per host call, which holds the GIL, stays under ~1 ms."""
IOV_MAX = 1024
"""More iovecs in one fd_write are EINVAL (POSIX's IOV_MAX on Linux): without a bound a
guest could make one write of millions of empty iovecs hold the GIL for seconds."""


class CallState:
    """What the host functions need to know about the call running on this thread."""

    __slots__ = ("cap", "deadline", "end", "lend", "mono_base", "streams")

    def __init__(self, deadline: float, cap: int, capture: bool,
                 lend: Callable[[float], AbstractContextManager[None]]) -> None:
        self.deadline = deadline
        """``time.monotonic()`` at which the call's time limit ends."""
        self.mono_base = time.monotonic_ns()
        """The guest's monotonic clock counts from its WASI context's creation, which is
        just before this (for absolute monotonic sleeps: never woken early)."""
        self.cap = cap
        self.streams: dict[int, bytearray] | None = {1: bytearray(), 2: bytearray()} \
            if capture else None
        """stdout/stderr as written (each at most ``cap``); None: discarded (export ABI)."""
        self.lend = lend
        """Context to wait in: lends the worker's compute slot; raises ``TimeoutError``
        on leaving if the deadline passed before the slot came back."""
        self.end: tuple[str, int] | None = None
        """Why a host function ended the call: ("timeout", 0) or ("output", fd)."""


_tls = threading.local()


def current() -> CallState | None:
    return getattr(_tls, "state", None)


def set_current(state: CallState | None) -> None:
    _tls.state = state


def _no_lend(deadline: float) -> AbstractContextManager[None]:
    return nullcontext()


_memory_data = ffi.wasmtime_memory_data
_memory_size = ffi.wasmtime_memory_data_size


def _guest_memory(caller: Any) -> tuple[int, int] | None:
    """(address, size) of the calling instance's exported ``memory``; WASI requires it."""
    item = ffi.wasmtime_extern_t()
    if not ffi.wasmtime_caller_export_get(caller, b"memory", 6, ctypes.byref(item)):
        return None
    if int(item.kind) != int(ffi.WASMTIME_EXTERN_MEMORY.value):
        ffi.wasmtime_extern_delete(ctypes.byref(item))  # e.g. a shared memory: owned
        return None
    # A memory extern owns nothing (its delete is a no-op): nothing to release.
    ctx = ffi.wasmtime_caller_context(caller)
    mem = ctypes.byref(item.of.memory)
    addr = ctypes.cast(_memory_data(ctx, mem), ctypes.c_void_p).value or 0
    return addr, int(_memory_size(ctx, mem))


def _trap(message: str) -> int:
    raw = message.encode()
    trap = ffi.wasmtime_trap_new(raw, len(raw))
    return ctypes.cast(trap, ctypes.c_void_p).value or 0


def _ret(results: Any, errno: int) -> int:
    results[0].kind = ffi.WASMTIME_I32
    results[0].of.i32 = errno
    return 0


def _u32(args: Any, i: int) -> int:
    return int(args[i].of.i32) & 0xFFFF_FFFF


def _fd_write(env: Any, caller: Any, args: Any, nargs: int, results: Any, nres: int) -> int:
    try:
        st = current()
        fd, iovs, n, nwritten_at = (_u32(args, i) for i in range(4))
        if fd not in (1, 2):
            return _ret(results, EBADF)
        if n > IOV_MAX:
            return _ret(results, EINVAL)
        mem = _guest_memory(caller)
        if mem is None or st is None:
            return _ret(results, EBADF)
        addr, size = mem
        if iovs + 8 * n > size or nwritten_at + 4 > size:
            return _ret(results, EFAULT)
        vec = ctypes.string_at(addr + iovs, 8 * n)
        buf = st.streams[fd] if st.streams is not None else None
        total = 0
        for i in range(n):
            base, length = struct.unpack_from("<II", vec, 8 * i)
            if base + length > size:
                return _ret(results, EFAULT)
            total += length
            if buf is not None and length:
                room = st.cap - len(buf)
                if length > room:  # keep exactly the cap, then end the call
                    buf += ctypes.string_at(addr + base, room)
                    st.end = ("output", fd)
                    return _trap("output_too_large")
                buf += ctypes.string_at(addr + base, length)
        ctypes.c_uint32.from_address(addr + nwritten_at).value = total & 0xFFFF_FFFF
        return _ret(results, ESUCCESS)
    except Exception as e:  # never let a bug here return garbage to the guest
        return _trap(f"host fd_write failed: {e!r}")


def _fd_pwrite(env: Any, caller: Any, args: Any, nargs: int, results: Any, nres: int) -> int:
    return _ret(results, ESPIPE if _u32(args, 0) in (0, 1, 2) else EBADF)


def _poll_oneoff(env: Any, caller: Any, args: Any, nargs: int, results: Any, nres: int) -> int:
    try:
        st = current()
        sub_at, ev_at, nsubs, nev_at = (_u32(args, i) for i in range(4))
        if nsubs == 0 or nsubs > MAX_SUBSCRIPTIONS:
            return _ret(results, EINVAL)
        mem = _guest_memory(caller)
        if mem is None:
            return _ret(results, EFAULT)
        addr, size = mem
        if sub_at + SUB_SIZE * nsubs > size or ev_at + EVENT_SIZE * nsubs > size \
                or nev_at + 4 > size:
            return _ret(results, EFAULT)
        subs = ctypes.string_at(addr + sub_at, SUB_SIZE * nsubs)
        now = time.monotonic()
        ready: list[tuple[int, int, int]] = []  # (userdata, errno, type)
        clocks: list[tuple[float, int]] = []  # (wake at, userdata)
        for i in range(nsubs):
            off = SUB_SIZE * i
            userdata, tag = struct.unpack_from("<QB", subs, off)
            if tag == 0:
                clock_id, timeout, _precision, flags = struct.unpack_from("<I4xQQH", subs, off + 16)
                if clock_id not in (0, 1):  # process/thread CPU-time clocks
                    ready.append((userdata, ENOTSUP, 0))
                elif not flags & 1:
                    clocks.append((now + timeout / 1e9, userdata))
                elif clock_id == 0:  # absolute, realtime
                    clocks.append((now + (timeout - time.time_ns()) / 1e9, userdata))
                else:  # absolute, monotonic (the guest's clock)
                    base = st.mono_base if st is not None else time.monotonic_ns()
                    clocks.append(((base + timeout) / 1e9, userdata))
            elif tag in (1, 2):
                (fd,) = struct.unpack_from("<I", subs, off + 16)
                ok = (fd == 0) if tag == 1 else (fd in (1, 2))
                ready.append((userdata, ESUCCESS if ok else EBADF, tag))
            else:
                return _ret(results, EINVAL)
        if not ready and clocks:
            wake = min(t for t, _ in clocks)
            deadline = st.deadline if st is not None else now
            if wake > deadline:
                if st is not None:
                    st.end = ("timeout", 0)
                return _trap("exec_timeout")
            if wake > now:
                lend = st.lend if st is not None else _no_lend
                with lend(deadline):
                    time.sleep(wake - now)
            now = time.monotonic()
        ready.extend((ud, ESUCCESS, 0) for t, ud in clocks if t <= now)
        out = bytearray(EVENT_SIZE * len(ready))
        for i, (userdata, errno, typ) in enumerate(ready):
            struct.pack_into("<QHB", out, EVENT_SIZE * i, userdata, errno, typ)
        ctypes.memmove(addr + ev_at, bytes(out), len(out))
        ctypes.c_uint32.from_address(addr + nev_at).value = len(ready)
        return _ret(results, ESUCCESS)
    except TimeoutError:  # the deadline passed before the call got its compute slot back
        if st is not None:
            st.end = ("timeout", 0)
        return _trap("exec_timeout")
    except Exception as e:
        return _trap(f"host poll_oneoff failed: {e!r}")


_CALLBACKS = {
    b"fd_write": (_fd_write, 4),
    b"fd_pwrite": (_fd_pwrite, 5),  # (fd, iovs, iovs_len, offset: i64, nwritten)
    b"poll_oneoff": (_poll_oneoff, 4),
}
_KEEP: list[Any] = []  # the ctypes callbacks live as long as the process (the Linkers do)
_NO_FINALIZER = ctypes.cast(0, ctypes.CFUNCTYPE(None, ctypes.c_void_p))


def shadow_wasi(linker: Any) -> None:
    """Replace wasmtime's WASI functions above by ours in ``linker`` (after define_wasi)."""
    import wasmtime

    linker.allow_shadowing = True
    i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
    for name, (fn, nparams) in _CALLBACKS.items():
        params = [i32] * nparams
        if name == b"fd_pwrite":
            params[3] = i64
        ty = wasmtime.FuncType(params, [i32])
        cb = ffi.wasmtime_func_callback_t(fn)
        _KEEP.append(cb)
        err = ffi.wasmtime_linker_define_func(linker.ptr(), WASI, len(WASI), name, len(name),
                                              ty.ptr(), cb, None, _NO_FINALIZER)
        if err:
            raise wasmtime.WasmtimeError._from_ptr(err)
    linker.allow_shadowing = False
