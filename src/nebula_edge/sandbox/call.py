"""One call of a module: a fresh Store, limits, instantiate, call, map the outcome.

Nothing survives a call: every call gets its own Store (its own memory, globals,
tables, WASI context) from the shared ``InstancePre``; measured floor 50-80 us.
The WASI context has no preopened directories, no environment and no arguments, so
a module can open no file and see no variable; WASI preview1 has no sockets.

WASI stdin comes from bytes through wasmtime's low-level binding; stdout/stderr are
written by our own ``fd_write`` (``sandbox/hostcalls.py``) into per-call buffers that
never hold more than the cap: the write that crosses it ends the call at once with
``output_too_large``. The same module bounds ``poll_oneoff`` by the call's deadline.

Memory: one budget per call. The engines refuse multi-memory, shared memory, memory64,
GC and exceptions at deploy (``engine.REFUSED_FEATURES``), so a call has at most one
linear memory, capped at ``memory_mb`` by the Store's limiter, and tables whose elements
together stay under the table cap (divided among the module's tables).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import wasmtime
from wasmtime import _bindings
from wasmtime import _ffi as ffi

from nebula_edge.config import Limits
from nebula_edge.errors import (
    ExecError,
    ExecTimeout,
    InvalidArguments,
    InvalidModule,
    OutputTooLarge,
    Trap,
    WasiExit,
)
from nebula_edge.sandbox import hostcalls
from nebula_edge.sandbox.engine import (
    MAX_TABLES,
    TABLE_ELEMENTS,
    TICK_S,
    Compiled,
    Engines,
    describe,
    internals_changed,
)

MiB = 1024 * 1024
STDERR_TAIL = 2048
INT_RANGES = {"i32": (-(2**31), 2**32 - 1), "i64": (-(2**63), 2**64 - 1)}
NUMERIC = ("i32", "i64", "f32", "f64")


class _BadArg(Exception):
    pass


def _to_wasm(value: Any, typ: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _BadArg(f"argument {value!r} is not a number")
    if typ in INT_RANGES:
        if isinstance(value, float):
            if not value.is_integer():
                raise _BadArg(f"argument {value!r} is not an integer")
            value = int(value)
        lo, hi = INT_RANGES[typ]
        if not lo <= value <= hi:
            raise _BadArg(f"argument {value} does not fit {typ}")
        bits = 32 if typ == "i32" else 64
        # Unsigned spellings (e.g. 4294967295 for i32) wrap to the signed value wasm sees.
        if value >= 2 ** (bits - 1):
            value -= 2**bits
        return int(value)
    f = float(value)
    if typ == "f32" and math.isfinite(f) and abs(f) > 3.4028235e38:
        raise _BadArg(f"argument {value} does not fit f32")
    return f


def _from_wasm(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def check_signature(ft: Any, export: str) -> None:
    """Refuse at deploy an export whose types JSON cannot carry."""
    kinds = [str(t) for t in (*ft.params, *ft.results)]
    if any(k not in NUMERIC for k in kinds):
        raise InvalidModule(f"export {export!r} has signature {describe(ft)}; only i32, i64, "
                            "f32 and f64 parameters and results are supported")


def _map_trap(e: Exception, limits: Limits, st: hostcalls.CallState | None = None
              ) -> Exception:
    if st is not None and st.end is not None:  # a host function ended the call
        what, fd = st.end
        if what == "timeout":
            return ExecTimeout(f"call exceeded its {limits.timeout_ms} ms time limit "
                               "(it waited in poll_oneoff)", limit_ms=limits.timeout_ms)
        cap = limits.max_output_bytes or MiB
        which = "stdout" if fd == 1 else "stderr"
        return OutputTooLarge(f"module wrote more than {cap} bytes to {which}", limit=cap)
    if isinstance(e, wasmtime.Trap):
        code = e.trap_code
        if code == wasmtime.TrapCode.INTERRUPT:
            return ExecTimeout(f"call exceeded its {limits.timeout_ms} ms time limit",
                               limit_ms=limits.timeout_ms)
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            return ExecTimeout(f"call ran out of fuel ({limits.fuel})", fuel=limits.fuel)
        kind = code.name.lower() if code is not None else "unknown"
        # wasmtime's message is a backtrace; its last line says what happened.
        lines = [ln.strip() for ln in e.message.strip().splitlines() if ln.strip()]
        msg = lines[-1] if lines else kind
        if not msg.startswith("wasm trap"):
            msg = f"wasm trap: {msg}"
        return Trap(msg, trap=kind)
    # The message is a backtrace; its last line is the cause (e.g. a missing export).
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return ExecError(f"call failed: {lines[-1] if lines else type(e).__name__}")


@dataclass(frozen=True)
class CallEnv:
    """What a call needs from its Sandbox besides the module and its limits."""

    engines: Engines
    table_elements: int = TABLE_ELEMENTS
    lend: Callable[[float], AbstractContextManager[None]] = hostcalls._no_lend


def call_export(c: Compiled, export: str, limits: Limits, args: list[Any],
                env: CallEnv) -> Any:
    """Call ``export`` with JSON ``args``; one result as a value, several as a list."""
    ft = c.functions.get(export)
    params = c.params.get(export)
    if ft is None or params is None:
        raise InvalidModule(f"module has no exported function {export!r}")
    if len(args) != len(params):
        sig = describe(ft)
        raise InvalidArguments(f"{export} takes {len(params)} argument(s) {sig}, got {len(args)}",
                               signature=sig)
    try:
        wargs = [_to_wasm(a, t) for a, t in zip(args, params, strict=True)]
    except _BadArg as e:  # the signature string is built only when it is needed
        sig = describe(ft)
        raise InvalidArguments(f"{e}; the export takes {sig}", signature=sig) from None
    st = _state(c, limits, env, capture=False) if c.needs_wasi else None
    try:
        result = _fast_call(c, export.encode(), limits, params, c.results[export], wargs,
                            env, st)
    except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
        raise _map_trap(e, limits, st) from None
    if isinstance(result, list | tuple):
        return [_from_wasm(v) for v in result]
    return _from_wasm(result)


_KINDS = {"i32": ffi.WASMTIME_I32, "i64": ffi.WASMTIME_I64, "f32": ffi.WASMTIME_F32,
          "f64": ffi.WASMTIME_F64}

# ctypes releases the GIL around every foreign call. With the event loop on one core and a
# worker on another, each release hands the GIL to the loop and the worker waits to get it
# back: unpinned, a call made 8 such calls and /exec ran at 0.23 of echo (bench/exec.py
# --no-pin). The C functions below are quick and never run Wasm, so they are bound through
# a PyDLL handle that keeps the GIL. Running Wasm (an instantiation that may run a start
# function, ``_initialize``, the export) still releases it: a long call must not block the
# event loop, and the epoch ticker needs the GIL to interrupt it. Deleting a Store unmaps
# the memory the call touched (7 ms for 64 MiB, 68 ms for 1 GiB, measured), so it keeps
# the GIL only when the module's memory is small.
try:
    _HELD = ctypes.PyDLL(ffi.dll._name)
except (AttributeError, OSError) as _e:
    raise internals_changed(f"wasmtime._ffi.dll: {_e}") from _e
HELD_DELETE_MAX = 4 * MiB
"""Largest linear memory whose Store is deleted without releasing the GIL (~0.5 ms)."""


def _held(name: str) -> Any:
    try:
        released = getattr(_bindings, f"_{name}")
        fn = getattr(_HELD, name)
    except AttributeError as e:
        raise internals_changed(f"no C function {name}: {e}") from e
    fn.restype, fn.argtypes = released.restype, released.argtypes
    return fn


_store_new = _held("wasmtime_store_new")
_store_context = _held("wasmtime_store_context")
_store_limiter = _held("wasmtime_store_limiter")
_store_delete = _held("wasmtime_store_delete")
_set_epoch_deadline = _held("wasmtime_context_set_epoch_deadline")
_set_fuel = _held("wasmtime_context_set_fuel")
_set_wasi = _held("wasmtime_context_set_wasi")
_wasi_config_new = _held("wasi_config_new")
_wasi_config_delete = _held("wasi_config_delete")
_memory_data_size = _held("wasmtime_memory_data_size")
_export_get = _held("wasmtime_instance_export_get")
_extern_delete = _held("wasmtime_extern_delete")
try:
    _FUNC = int(ffi.WASMTIME_EXTERN_FUNC.value)
    _MEMORY = int(ffi.WASMTIME_EXTERN_MEMORY.value)
    _OWNS_NOTHING = frozenset(int(k.value) for k in (
        ffi.WASMTIME_EXTERN_FUNC, ffi.WASMTIME_EXTERN_GLOBAL, ffi.WASMTIME_EXTERN_TABLE,
        ffi.WASMTIME_EXTERN_MEMORY))
except AttributeError as _e:
    raise internals_changed(f"extern kinds: {_e}") from _e


def release_extern(item: Any, kind: int) -> None:
    """Release an extern handed out by ``wasmtime_*_export_get``. In wasmtime's C API only
    a shared memory extern owns something (a reference count); funcs, globals, tables and
    memories are (store id, index) pairs whose ``wasmtime_extern_delete`` does nothing,
    so it is skipped for them (1.3 us a call on the hot path, measured). Shared memories
    are refused at deploy; any other kind is released."""
    if kind not in _OWNS_NOTHING:
        _extern_delete(ctypes.byref(item))
_NO_FINALIZER = ctypes.cast(0, ctypes.CFUNCTYPE(None, ctypes.c_void_p))


_config_stdin = _held("wasi_config_set_stdin_bytes")
_byte_vec_new = _held("wasm_byte_vec_new")


def _state(c: Compiled, limits: Limits, env: CallEnv, capture: bool
           ) -> hostcalls.CallState:
    deadline = time.monotonic() + (limits.timeout_ms or 1000) / 1000
    return hostcalls.CallState(deadline, limits.max_output_bytes or MiB, capture, env.lend)


@contextlib.contextmanager
def _instance(c: Compiled, limits: Limits, env: CallEnv, st: hostcalls.CallState | None,
              stdin: bytes | None = None) -> Iterator[tuple[Any, Any]]:
    """``(context, instance)``: the module instantiated in a fresh Store with this call's
    limits, all through wasmtime's C API (no Python Store object). The Store is deleted on
    leaving. ``stdin`` gives the module a WASI context; a module that imports WASI gets
    one anyway, with nothing behind it. Either way: no preopened directory, no
    environment, no arguments. ``st``, if given, is the call's state for the host
    functions (poll_oneoff, fd_write) while the Store lives."""
    env.engines.enter()
    store = _store_new(c.engine.ptr(), None, _NO_FINALIZER)
    ctx = _store_context(store)
    inst: Any = None
    try:
        # One memory (multi-memory is refused), one instance, MAX_TABLES tables.
        _store_limiter(store, (limits.memory_mb or 64) * MiB, env.table_elements, 1,
                       MAX_TABLES, 1)
        _set_epoch_deadline(ctx, math.ceil((limits.timeout_ms or 1000) / 1000 / TICK_S) + 1)
        if c.flavor.fuel:
            _check(_set_fuel(ctx, limits.fuel or 0), None)
        if stdin is not None or c.needs_wasi:
            _check(_set_wasi(ctx, _wasi_config(stdin)), None)  # takes the config over
        if st is not None:
            hostcalls.set_current(st)
        made = ffi.wasmtime_instance_t()
        trap = ctypes.POINTER(ffi.wasm_trap_t)()
        # Releases the GIL: instantiation runs the module's start function, if any.
        _check(ffi.wasmtime_instance_pre_instantiate(c.pre.ptr(), ctx, ctypes.byref(made),
                                                     ctypes.byref(trap)), trap)
        inst = made
        yield ctx, inst
    finally:
        if st is not None:
            hostcalls.set_current(None)
        # Decided by the module's type: an exported memory is measured; a module without
        # one (no memory, or an unexported one that may be large) releases the GIL.
        held = inst is not None and c.memory_export is not None and \
            _memory_size(ctx, inst, c.memory_export) <= HELD_DELETE_MAX
        (_store_delete if held else ffi.wasmtime_store_delete)(store)
        env.engines.leave()


def _memory_size(ctx: Any, inst: Any, name: bytes | None) -> float:
    """Bytes in the instance's exported memory; infinite when there is none to measure."""
    if name is None:
        return math.inf
    item = ffi.wasmtime_extern_t()
    if not _export_get(ctx, ctypes.byref(inst), name, len(name), ctypes.byref(item)):
        return math.inf
    kind = int(item.kind)
    if kind != _MEMORY:
        release_extern(item, kind)
        return math.inf
    # A memory extern owns nothing: releasing it is a no-op (see release_extern).
    return float(_memory_data_size(ctx, ctypes.byref(item.of.memory)))


def _wasi_config(stdin: bytes | None) -> Any:
    """A raw ``wasi_config_t`` (the caller hands it to a Store, which takes it over).
    stdout/stderr are not set: ``fd_write`` to them is ours (hostcalls)."""
    cfg = _wasi_config_new()
    if stdin is None:
        return cfg
    vec = ffi.wasm_byte_vec_t()
    _byte_vec_new(ctypes.byref(vec), len(stdin),
                  (ctypes.c_ubyte * len(stdin)).from_buffer_copy(stdin))
    _config_stdin(cfg, ctypes.byref(vec))  # takes the vector's contents over
    return cfg


def _fast_call(c: Compiled, export: bytes, limits: Limits, params: list[str],
               results: list[str], args: list[int | float], env: CallEnv,
               st: hostcalls.CallState | None) -> Any:
    """One call of a numeric export: ``_initialize`` first if the module has one. Measured
    26 us for ``double`` against wasmtime-py's own Store + instantiate + call at 50 us (no
    per-call type reads, no ``Val`` boxing, one export looked up instead of all of them
    wrapped, no Python Store object)."""
    with _instance(c, limits, env, st) as (ctx, inst):
        if c.has_initialize:
            init = _export_func(ctx, inst, b"_initialize")
            if init is not None:
                _call_raw(ctx, init, [], [], [])
        fn = _export_func(ctx, inst, export)
        if fn is None:
            raise InvalidModule(f"module has no exported function {export.decode()!r}")
        return _call_raw(ctx, fn, params, results, args)


def _check(error: Any, trap: Any) -> None:
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
    if trap:
        raise wasmtime.Trap._from_ptr(trap)


def _call_raw(ctx: Any, fn: Any, params: list[str], results: list[str],
              args: list[int | float]) -> Any:
    """``fn(*args)``; the kinds were read once per module (checked numeric at deploy)."""
    raw_params = (ffi.wasmtime_val_t * len(args))()
    for i, (kind, value) in enumerate(zip(params, args, strict=True)):
        raw_params[i].kind = _KINDS[kind]
        setattr(raw_params[i].of, kind, value)
    raw_results = (ffi.wasmtime_val_t * len(results))()
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    _check(ffi.wasmtime_func_call(ctx, ctypes.byref(fn), raw_params, len(args), raw_results,
                                  len(results), ctypes.byref(trap)), trap)
    values = [getattr(raw_results[i].of, kind) for i, kind in enumerate(results)]
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _export_func(ctx: Any, inst: Any, name: bytes) -> Any:
    """One exported function by name, as a ``wasmtime_func_t``; None if there is none."""
    item = ffi.wasmtime_extern_t()
    if not _export_get(ctx, ctypes.byref(inst), name, len(name), ctypes.byref(item)):
        return None
    kind = int(item.kind)
    if kind != _FUNC:
        release_extern(item, kind)
        return None
    # A func extern owns nothing: releasing it is a no-op (see release_extern).
    return item.of.func


def call_wasi(c: Compiled, limits: Limits, arg: Any, env: CallEnv,
              stderr_sink: bytearray | None = None) -> dict[str, Any]:
    """Run ``_start`` with ``arg`` as JSON on stdin; stdout parsed as JSON into ``result``.
    With ``stderr_sink``, the call's stderr (at most the output cap) is appended to it
    whatever the outcome: success, trap, exit, timeout or output_too_large."""
    st = _state(c, limits, env, capture=True)
    assert st.streams is not None
    code = 0
    failure: Exception | None = None
    try:
        try:
            with _instance(c, limits, env, st, json.dumps(arg).encode()) as (ctx, inst):
                start = _export_func(ctx, inst, b"_start")
                if start is None:
                    raise InvalidModule("module has no _start function (not a WASI command)")
                _call_raw(ctx, start, [], [], [])
        except wasmtime.ExitTrap as e:
            code = e.code
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            failure = _map_trap(e, limits, st)
    finally:
        stderr = bytes(st.streams[2])
        if stderr_sink is not None:
            stderr_sink += stderr
    tail = stderr[-STDERR_TAIL:].decode("utf-8", "replace")
    if failure is not None:
        failure.details["stderr"] = tail or None  # type: ignore[attr-defined]
        raise failure
    if code != 0:
        raise WasiExit(f"module exited with code {code}", exit_code=code, stderr=tail)
    out = bytes(st.streams[1])
    try:
        return {"result": json.loads(out)}
    except ValueError:
        return {"output": out.decode("utf-8", "replace")}
