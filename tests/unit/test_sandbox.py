"""The sandbox called directly: choosing an export, calling, limits, the compiled-code cache."""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

from agents import SAMPLES
from nebula_edge.config import EdgeConfig, Limits
from nebula_edge.errors import (
    BadRequest,
    ExecTimeout,
    InvalidArguments,
    InvalidModule,
    LimitOutOfRange,
    Trap,
)
from nebula_edge.manifest import Manifest
from nebula_edge.sandbox import WASMTIME_VERSION, Sandbox

DOUBLE = (SAMPLES / "double" / "double.wasm").read_bytes()
CALC = (SAMPLES / "misbehave" / "calc.wasm").read_bytes()
JSONSTATS = (SAMPLES / "jsonstats" / "jsonstats.wasm").read_bytes()
LOOP = (SAMPLES / "misbehave" / "loop.wasm").read_bytes()
NOFUNC = (SAMPLES / "misbehave" / "nofunc.wasm").read_bytes()
RECURSE = (SAMPLES / "misbehave" / "recurse.wasm").read_bytes()
CFG = EdgeConfig()


class Recorder:
    def __init__(self) -> None:
        self.outcomes: list[str] = []

    def __call__(self, outcome: str) -> None:
        self.outcomes.append(outcome)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def sandbox(cache_dir: Path) -> Iterator[Sandbox]:
    sb = Sandbox(cache_dir, CFG.default_limits, CFG.max_limits)
    try:
        yield sb
    finally:
        sb.close()


def manifest(wasm: bytes, name: str, abi: str, export: str | None,
             limits: Limits | None = None) -> Manifest:
    return Manifest(name=name, version=1, sha256=hashlib.sha256(wasm).hexdigest(),
                    size=len(wasm), abi=abi, export=export,  # type: ignore[arg-type]
                    limits=limits or Limits(), deployed_at=1.0, publisher="test")


def call(sb: Sandbox, wasm: bytes, name: str, arg: object = None, args: list[object] | None = None,
         export: str | None = None, limits: Limits | None = None) -> dict[str, object]:
    abi, chosen = sb.inspect(wasm, name, None, export)
    return sb.call(manifest(wasm, name, abi, chosen, limits), lambda: wasm, arg, args)


# ------------------------------------------------------------------------------ inspect
@pytest.mark.parametrize(("wasm", "name", "abi", "export", "expected"), [
    (DOUBLE, "double", None, None, ("export", "double")),  # export named like the module
    (DOUBLE, "twice", None, None, ("export", "double")),  # the only export
    (CALC, "calc", None, "divmod", ("export", "divmod")),  # named at deploy
    (CALC, "add", None, None, ("export", "add")),  # named like the module
    (JSONSTATS, "stats", None, None, ("wasi", None)),  # a WASI command: _start
    (JSONSTATS, "stats", "wasi", None, ("wasi", None)),
])
def test_inspect_chooses_how_to_call(sandbox: Sandbox, wasm: bytes, name: str, abi: str | None,
                                     export: str | None, expected: tuple[str, str | None]
                                     ) -> None:
    assert sandbox.inspect(wasm, name, abi, export) == expected


@pytest.mark.parametrize(("wasm", "abi", "export"), [
    (CALC, None, None),  # five exports, none named like the module
    (CALC, None, "nosuch"),
    (CALC, "wasi", None),  # no _start
    (NOFUNC, None, None),
    (b"", None, None),
    (b"\0asm\1\0\0\0\xff", None, None),
    (DOUBLE[:30], None, None),
    (wasmtime.wat2wasm('(module (func (export "f") (param externref)))'), None, None),
    pytest.param(wasmtime.wat2wasm('(module (import "env" "g" (func)) (func (export "f")))'),
                 None, None, id="unresolvable-import"),  # could never be instantiated
])
def test_inspect_refuses(sandbox: Sandbox, wasm: bytes, abi: str | None,
                         export: str | None) -> None:
    with pytest.raises(InvalidModule):
        sandbox.inspect(wasm, "calc", abi, export)


def test_inspect_refuses_an_unknown_abi(sandbox: Sandbox) -> None:
    with pytest.raises(BadRequest):
        sandbox.inspect(DOUBLE, "double", "cgi", None)


# ------------------------------------------------------------------------------ calls
def test_direct_calls(sandbox: Sandbox) -> None:
    assert call(sandbox, DOUBLE, "double", 21) == {"result": 42}
    assert call(sandbox, DOUBLE, "double", args=[-4]) == {"result": -8}
    assert call(sandbox, CALC, "c", args=[7, 2], export="divmod") == {"result": [3, 1]}
    assert call(sandbox, CALC, "c", export="noparams") == {"result": 7}
    assert call(sandbox, CALC, "c", args=[0.0], export="neg") == {"result": -0.0}
    assert call(sandbox, JSONSTATS, "s", {"v": [1, 2]}) == {
        "result": {"count": 2, "sum": 3, "min": 1, "max": 2}}


def test_special_floats_come_back_as_strings(sandbox: Sandbox) -> None:
    assert call(sandbox, CALC, "c", args=[1e308, 10], export="mulf") == {"result": "inf"}
    assert call(sandbox, CALC, "c", args=[-1e308, 10], export="mulf") == {"result": "-inf"}


def test_bad_arguments(sandbox: Sandbox) -> None:
    with pytest.raises(InvalidArguments) as e:
        call(sandbox, CALC, "c", args=[1], export="add")
    assert e.value.details["signature"] == "(i64, i64) -> i64"
    with pytest.raises(InvalidArguments):
        call(sandbox, DOUBLE, "double", 2**32)
    with pytest.raises(InvalidArguments):
        call(sandbox, DOUBLE, "double", 0.5)
    with pytest.raises(InvalidArguments):
        call(sandbox, CALC, "c", args=[1e39], export="neg")  # does not fit f32


def test_traps_and_timeouts(sandbox: Sandbox) -> None:
    with pytest.raises(Trap) as e:
        call(sandbox, RECURSE, "recurse", 0)
    assert e.value.details["trap"] == "stack_overflow"
    with pytest.raises(ExecTimeout):
        call(sandbox, LOOP, "loop", limits=Limits(timeout_ms=50))
    with pytest.raises(ExecTimeout) as t:
        call(sandbox, LOOP, "loop", limits=Limits(fuel=1000, timeout_ms=5000))
    assert t.value.details["fuel"] == 1000


def test_effective_limits(sandbox: Sandbox) -> None:
    assert sandbox.effective_limits(Limits()) == CFG.default_limits
    assert sandbox.effective_limits(Limits(timeout_ms=5, fuel=0)) == Limits(
        timeout_ms=5, memory_mb=64, fuel=0, max_output_bytes=1024 * 1024)
    for bad in (Limits(timeout_ms=30_001), Limits(memory_mb=0), Limits(memory_mb=4096)):
        with pytest.raises(LimitOutOfRange):
            sandbox.effective_limits(bad)


# ------------------------------------------------------------------------------ the cache
def test_second_sandbox_loads_compiled_code_from_the_disk_cache(cache_dir: Path) -> None:
    m = manifest(DOUBLE, "double", "export", "double")
    first, second = Recorder(), Recorder()
    sb1 = Sandbox(cache_dir, CFG.default_limits, CFG.max_limits, on_cache=first)
    try:
        c1 = sb1.load(m, lambda: DOUBLE)
        assert sb1.call(m, lambda: DOUBLE, 21, None) == {"result": 42}
    finally:
        sb1.close()
    assert first.outcomes == ["miss"]
    assert c1.from_cache is False
    cached = list(cache_dir.iterdir())
    assert len(cached) == 1
    assert cached[0].name.startswith(f"{m.sha256}.plain.")
    assert cached[0].name.endswith(".cwasm")

    def no_bytes() -> bytes:
        raise AssertionError("a cache hit must not read the module bytes")

    sb2 = Sandbox(cache_dir, CFG.default_limits, CFG.max_limits, on_cache=second)
    try:
        c2 = sb2.load(m, no_bytes)
        assert c2.from_cache is True
        assert sb2.call(m, no_bytes, 21, None) == {"result": 42}
    finally:
        sb2.close()
    assert second.outcomes == ["hit"]


def test_fuel_modules_have_their_own_cache_entry(cache_dir: Path) -> None:
    rec = Recorder()
    sb = Sandbox(cache_dir, CFG.default_limits, CFG.max_limits, on_cache=rec)
    try:
        plain = manifest(DOUBLE, "double", "export", "double")
        fueled = manifest(DOUBLE, "double", "export", "double", Limits(fuel=1000))
        assert sb.call(plain, lambda: DOUBLE, 1, None) == {"result": 2}
        assert sb.call(fueled, lambda: DOUBLE, 1, None) == {"result": 2}
    finally:
        sb.close()
    assert rec.outcomes == ["miss", "miss"]
    assert sorted(p.name.split(".")[1] for p in cache_dir.iterdir()) == ["fuel", "plain"]


def test_unusable_cache_file_is_recompiled(cache_dir: Path) -> None:
    m = manifest(DOUBLE, "double", "export", "double")
    sb1 = Sandbox(cache_dir, CFG.default_limits, CFG.max_limits)
    try:
        sb1.load(m, lambda: DOUBLE)
    finally:
        sb1.close()
    (cached,) = cache_dir.iterdir()
    cached.write_bytes(b"garbage, not a compiled module")
    rec = Recorder()
    sb2 = Sandbox(cache_dir, CFG.default_limits, CFG.max_limits, on_cache=rec)
    try:
        assert sb2.call(m, lambda: DOUBLE, 5, None) == {"result": 10}
    finally:
        sb2.close()
    assert rec.outcomes == ["miss"]
    assert cached.read_bytes() != b"garbage, not a compiled module"


def test_unload_evicts_the_disk_cache(sandbox: Sandbox, cache_dir: Path) -> None:
    m = manifest(DOUBLE, "double", "export", "double")
    sandbox.load(m, lambda: DOUBLE)
    assert len(list(cache_dir.iterdir())) == 1
    sandbox.unload(m.sha256)
    assert list(cache_dir.iterdir()) == []


def test_cache_fingerprint_names_the_real_wasmtime_version() -> None:
    # The compiled cache is keyed by the wasmtime version so that an upgrade never tries to
    # load code compiled by another one.
    assert importlib.metadata.version("wasmtime") == WASMTIME_VERSION


# ------------------------------------------------------------------------------ C-API path
MEMHOG = (SAMPLES / "misbehave" / "memhog.wasm").read_bytes()


def test_store_of_a_grown_memory_is_deleted_without_the_gil(
        sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deleting a Store unmaps what the call touched (68 ms for 1 GiB): the GIL is kept
    only for a small memory, so a memory bomb cannot stall the event loop on its way out."""
    from nebula_edge.sandbox import call as sandbox_call

    deleted: list[str] = []
    held, released = sandbox_call._store_delete, sandbox_call.ffi.wasmtime_store_delete

    def spy(which: str, fn: object) -> object:
        def delete(store: object) -> None:
            deleted.append(which)
            fn(store)  # type: ignore[operator]
        return delete

    monkeypatch.setattr(sandbox_call, "_store_delete", spy("held", held))
    monkeypatch.setattr(sandbox_call.ffi, "wasmtime_store_delete", spy("released", released))
    assert call(sandbox, DOUBLE, "double", 21) == {"result": 42}
    pages = call(sandbox, MEMHOG, "memhog", limits=Limits(memory_mb=16))["result"]
    assert pages == 16 * 1024 * 1024 // 65536
    assert deleted == ["held", "released"]


# ------------------------------------------------------------------------------ stderr sink
EXIT3 = (SAMPLES / "misbehave" / "exit3.wasm").read_bytes()


def _stderr_then(tail: str) -> bytes:
    """A WASI command that writes "note\\n" to stderr, then runs ``tail`` (WAT)."""
    return wasmtime.wat2wasm(f"""
    (module
      (import "wasi_snapshot_preview1" "fd_write"
        (func $fd_write (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (data (i32.const 16) "note\\n")
      (func (export "_start")
        (i32.store (i32.const 0) (i32.const 16))  ;; iovec: base
        (i32.store (i32.const 4) (i32.const 5))   ;; iovec: length
        (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
        {tail}))
    """)


@pytest.mark.parametrize(("tail", "error"), [
    ("", None),  # success (no stdout: an empty "output")
    ("(unreachable)", Trap),
    ("(call $exit (i32.const 3))", "WasiExit"),
    ("(loop $l (br $l))", ExecTimeout),
    # stdout flood: the same 5 bytes to fd 1 for ever
    ("(loop $l (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))"
     " (br $l))", "OutputTooLarge"),
])
def test_stderr_is_handed_to_the_caller_whatever_the_outcome(
        sandbox: Sandbox, tail: str, error: object) -> None:
    from nebula_edge import errors

    wasm = _stderr_then(tail)
    # The flood needs ~800 host calls to reach the cap: give it time on a loaded machine.
    timeout_ms = 5000 if error == "OutputTooLarge" else 200
    m = manifest(wasm, "note", "wasi", None, Limits(timeout_ms=timeout_ms, max_output_bytes=4096))
    sink = bytearray(b"earlier|")
    if error is None:
        sandbox.call(m, lambda: wasm, None, None, stderr=sink)
    else:
        exc = getattr(errors, error) if isinstance(error, str) else error
        with pytest.raises(exc):  # type: ignore[call-overload]
            sandbox.call(m, lambda: wasm, None, None, stderr=sink)
    assert sink == b"earlier|note\n"


def test_stderr_sink_gets_the_sample_modules_message(sandbox: Sandbox) -> None:
    from nebula_edge.errors import WasiExit

    sink = bytearray()
    m = manifest(EXIT3, "exit3", "wasi", None)
    with pytest.raises(WasiExit):
        sandbox.call(m, lambda: EXIT3, None, None, stderr=sink)
    assert sink == b"something went wrong\n"
    export_sink = bytearray()
    assert call(sandbox, DOUBLE, "double", 2) == {"result": 4}
    sandbox.call(manifest(DOUBLE, "double", "export", "double"), lambda: DOUBLE, 2, None,
                 stderr=export_sink)
    assert export_sink == b""  # an export call has no stderr


# ------------------------------------------------------------------------------ containment
def test_the_epoch_ticker_parks_when_idle_and_deadlines_still_hold(sandbox: Sandbox) -> None:
    """An idle agent pays nothing for the ticker (it woke every 5 ms: 0.0285 core); a
    call after a long idle period still times out at its limit, not at once or late."""
    import time

    from agents import wait_for
    from nebula_edge.sandbox.engine import LINGER_S

    abi, chosen = sandbox.inspect(LOOP, "loop", None, None)
    m = manifest(LOOP, "loop", abi, chosen, Limits(timeout_ms=200))
    sandbox.load(m, lambda: LOOP)  # compiled before the clock starts
    wait_for(lambda: not sandbox.engines.ticking, timeout=LINGER_S + 2)
    t0 = time.monotonic()
    with pytest.raises(ExecTimeout):
        sandbox.call(m, lambda: LOOP, None, None)
    took = time.monotonic() - t0
    # Not at once (a ticker that caught up on its idle time would expire the call at
    # its first tick), and not never (a ticker that stayed parked). 200 ms + a tick on a
    # quiet machine; the slack is for a machine at load 15 (measured 0.3 s there).
    assert 0.2 <= took < 0.6, took
    assert sandbox.engines.ticking  # the call woke it
    wait_for(lambda: not sandbox.engines.ticking, timeout=LINGER_S + 2)


def test_more_than_four_tables_are_refused(sandbox: Sandbox) -> None:
    five = wasmtime.wat2wasm("(module " + "(table 1 funcref) " * 5
                             + "(func (export \"f\") (result i32) (i32.const 1)))")
    with pytest.raises(InvalidModule, match="5 tables"):
        sandbox.inspect(five, "f", None, None)
    four = wasmtime.wat2wasm("(module " + "(table 1 funcref) " * 4
                             + "(func (export \"f\") (result i32) (i32.const 1)))")
    assert call(sandbox, four, "f") == {"result": 1}


@pytest.mark.parametrize(("wat", "feature"), [
    ("(module (memory 1) (memory 1))", "multi-memory"),
    ("(module (memory 1 2 shared))", "threads"),
    ("(module (memory i64 1))", "memory64"),
    ("(module (type (struct (field i32))))", "GC"),
    ("(module (tag) (func (throw 0)))", "exception handling"),
])
def test_uncounted_features_are_refused_naming_the_feature(
        sandbox: Sandbox, wat: str, feature: str) -> None:
    with pytest.raises(InvalidModule, match=feature) as info:
        sandbox.inspect(wasmtime.wat2wasm(wat), "m", "export", None)
    assert info.value.details["feature"].startswith(feature)


def test_reference_types_and_bulk_memory_still_work(sandbox: Sandbox) -> None:
    wasm = wasmtime.wat2wasm("""
    (module (memory (export "memory") 1) (table 4 funcref)
      (func $one (result i32) (i32.const 1)) (elem declare func $one)
      (func (export "f") (result i32)
        (memory.fill (i32.const 0) (i32.const 7) (i32.const 100))
        (memory.copy (i32.const 200) (i32.const 0) (i32.const 100))
        (table.set (i32.const 2) (ref.func $one))
        (i32.add (i32.load8_u (i32.const 250))
                 (call_indirect (result i32) (i32.const 2)))))""")
    assert call(sandbox, wasm, "f") == {"result": 8}


def test_a_changed_c_api_fails_fast_naming_the_wasmtime_version(
        cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nebula_edge.sandbox import call as sandbox_call
    from nebula_edge.sandbox.selftest import SandboxSelfTestFailed

    def changed(*a: object) -> None:
        raise AttributeError("'module' object has no attribute 'wasmtime_store_new'")

    monkeypatch.setattr(sandbox_call, "_store_new", changed)
    with pytest.raises(SandboxSelfTestFailed, match=f"wasmtime-py {WASMTIME_VERSION}"):
        Sandbox(cache_dir, CFG.default_limits, CFG.max_limits)


def test_host_calls_bound_their_own_work(sandbox: Sandbox) -> None:
    """One fd_write of a million empty iovecs, one poll_oneoff of 100 000 subscriptions:
    EINVAL at once (28), not seconds of host work with the GIL held."""
    import time

    wasm = wasmtime.wat2wasm("""
    (module
      (import "wasi_snapshot_preview1" "fd_write"
        (func $w (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "poll_oneoff"
        (func $p (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 200)
      (func (export "f") (result i32)
        (i32.add
          (call $w (i32.const 1) (i32.const 0) (i32.const 1000000) (i32.const 8))
          (call $p (i32.const 0) (i32.const 0) (i32.const 100000) (i32.const 8)))))""")
    t0 = time.monotonic()
    assert call(sandbox, wasm, "f") == {"result": 56}
    assert time.monotonic() - t0 < 0.1


def test_host_functions_answer_errnos_for_what_does_not_exist(sandbox: Sandbox) -> None:
    """fd_write to stdin or an fd nobody opened: EBADF (8); fd_pwrite on stdout: ESPIPE
    (70); poll_oneoff on fd 7: an EBADF event; on the CPU-time clock: an ENOTSUP (58)
    event; out-of-bounds pointers: EFAULT (21). Packed as 8|70|8|58|21 in one i64."""
    wasm = wasmtime.wat2wasm("""
    (module
      (import "wasi_snapshot_preview1" "fd_write"
        (func $w (param i32 i32 i32 i32) (result i32)))
      (import "wasi_snapshot_preview1" "fd_pwrite"
        (func $pw (param i32 i32 i32 i64 i32) (result i32)))
      (import "wasi_snapshot_preview1" "poll_oneoff"
        (func $p (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func $sub (param $tag i32) (param $id i32) (result i32)
        (i32.store8 (i32.const 1008) (local.get $tag))
        (i32.store (i32.const 1016) (local.get $id))
        (i64.store (i32.const 1024) (i64.const 0))
        (drop (call $p (i32.const 1000) (i32.const 2000) (i32.const 1) (i32.const 3000)))
        (i32.load16_u (i32.const 2008)))  ;; the event's errno
      (func (export "f") (result i64)
        (local $r i64)
        (local.set $r (i64.extend_i32_u
          (call $w (i32.const 7) (i32.const 0) (i32.const 0) (i32.const 8))))
        (local.set $r (i64.or (i64.shl (local.get $r) (i64.const 8)) (i64.extend_i32_u
          (call $pw (i32.const 1) (i32.const 0) (i32.const 0) (i64.const 0) (i32.const 8)))))
        (local.set $r (i64.or (i64.shl (local.get $r) (i64.const 8)) (i64.extend_i32_u
          (call $sub (i32.const 1) (i32.const 7)))))
        (local.set $r (i64.or (i64.shl (local.get $r) (i64.const 8)) (i64.extend_i32_u
          (call $sub (i32.const 0) (i32.const 2)))))
        (local.set $r (i64.or (i64.shl (local.get $r) (i64.const 8)) (i64.extend_i32_u
          (call $w (i32.const 1) (i32.const 65530) (i32.const 1) (i32.const 8)))))
        (local.get $r)))""")
    packed = call(sandbox, wasm, "f")["result"]
    assert isinstance(packed, int)
    assert [(packed >> s) & 0xFF for s in (32, 24, 16, 8, 0)] == [8, 70, 8, 58, 21]
