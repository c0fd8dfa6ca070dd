"""Engines, compilation and the compiled-code cache. One of the two wasmtime importers
(with ``sandbox/call.py``).

Two engines, because fuel metering costs on every call (measured: a tight loop runs
2x slower with ``consume_fuel``, 3x with epochs, 4x with both): modules deployed with
a fuel limit are compiled for the *fuel* engine, all others for the *plain* one. Both
use epoch interruption for wall-clock deadlines; one ticker thread advances both
epochs every ``TICK_S``.

Compiled code is cached on disk as ``cache/<sha256>.<flavor>.<fingerprint>.cwasm``:
the fingerprint covers the wasmtime version and the engine settings, because an engine
with other settings refuses a serialized module (measured: ``WasmtimeError``). A
load from cache takes 0.05-0.13 ms; compiling takes 1 ms (tiny) to 1.3 s (3 MB Go).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wasmtime

from nebula_edge.errors import InvalidModule
from nebula_edge.sandbox.hostcalls import shadow_wasi
from nebula_edge.store.fsutil import atomic_write

log = logging.getLogger(__name__)

TICK_S = 0.005
"""Epoch period: deadlines are accurate to about this (5 ms)."""
LINGER_S = 0.5
"""The ticker parks this long after the last call ended: an idle agent pays nothing for
it (it woke 200 times a second and cost 0.0285 core before), while a steady stream of
calls never pays a wake-up per call."""
TABLE_ELEMENTS = 100_000
"""Default cap on the elements of each table (a funcref is 8 bytes: 0.8 MB). C/C++/Rust
function tables hold one entry per address-taken function; large real programs have a
few thousand."""
MAX_TABLES = 4
"""Tables a module may define, refused at deploy beyond (toolchains emit one; reference
types allow more): a call's tables hold at most MAX_TABLES x the element cap."""
REFUSED_FEATURES = {
    # wasmtime's validation message (substring) -> the feature named in the 400
    "multiple memories": "multi-memory",
    "shared memor": "threads (shared memory)",
    "threads must be enabled": "threads (shared memory)",
    "memory64": "memory64",
    "64-bit memor": "memory64",
    "gc feature": "GC",
    "gc proposal": "GC",
    "exceptions proposal": "exception handling",
    "stack switching": "stack switching",
}
OFF_FEATURES = ("multi_memory", "threads", "memory64", "gc", "exceptions", "stack_switching")
"""Features turned off in the engines because what they allocate is not counted in a
call's memory budget (a second memory, shared memories outliving the call, the GC heap,
exception objects on it). No toolchain emits them by default: clang, Rust, Go, TinyGo
and Zig emit one 32-bit memory, bulk memory and reference types (both kept)."""
MAX_WASM_STACK = 512 * 1024
"""Deep recursion traps with STACK_OVERFLOW well before the worker thread's own stack."""

WASMTIME_VERSION = importlib.metadata.version("wasmtime")
TESTED_WASMTIME = "50.0.1"
"""The wasmtime-py whose internals sandbox/call.py and hostcalls.py were written for."""


def internals_changed(what: str) -> RuntimeError:
    """The error the agent stops with when wasmtime-py's internals are not what the
    C-API layer expects (checked at import and by the start-up self-test)."""
    from nebula_edge.sandbox.selftest import SandboxSelfTestFailed

    return SandboxSelfTestFailed(
        f"sandbox self-test failed with wasmtime-py {WASMTIME_VERSION} (the C-API layer "
        f"was written for {TESTED_WASMTIME}; its internals changed): {what}. Install "
        f"wasmtime=={TESTED_WASMTIME} or update nebula_edge/sandbox/call.py.")


@dataclass(frozen=True)
class Flavor:
    name: str
    fuel: bool

    @property
    def fingerprint(self) -> str:
        spec = (f"wasmtime={WASMTIME_VERSION};epoch=1;fuel={int(self.fuel)};"
                f"stack={MAX_WASM_STACK};features=-multimem-threads-mem64-gc-exn")
        return hashlib.sha256(spec.encode()).hexdigest()[:12]


PLAIN = Flavor("plain", fuel=False)
FUEL = Flavor("fuel", fuel=True)


@dataclass
class Compiled:
    """A module ready to instantiate: thread-safe to share (one Store per call)."""

    sha256: str
    flavor: Flavor
    engine: wasmtime.Engine
    module: wasmtime.Module
    pre: wasmtime.InstancePre
    needs_wasi: bool
    functions: dict[str, wasmtime.FuncType]
    from_cache: bool
    params: dict[str, list[str]] = field(default_factory=dict)
    has_initialize: bool = False
    results: dict[str, list[str]] = field(default_factory=dict)
    """Parameter kinds per export, read once: ``FuncType.params`` is an FFI round trip."""
    memory_export: bytes | None = None
    """Name of the module's exported linear memory, if it has one."""


class Engines:
    """Owns both engines, their linkers, the epoch ticker and the disk cache."""

    def __init__(self, cache_dir: Path, on_cache: Callable[[str], None] | None = None) -> None:
        self.cache_dir = cache_dir
        cache_dir.mkdir(parents=True, exist_ok=True)
        self._on_cache = on_cache or (lambda outcome: None)
        self._engines: dict[Flavor, wasmtime.Engine] = {}
        self._linkers: dict[Flavor, wasmtime.Linker] = {}
        for flavor in (PLAIN, FUEL):
            cfg = wasmtime.Config()
            cfg.epoch_interruption = True
            cfg.consume_fuel = flavor.fuel
            cfg.max_wasm_stack = MAX_WASM_STACK
            for feature in OFF_FEATURES:  # uncounted allocations: see REFUSED_FEATURES
                setattr(cfg, f"wasm_{feature}", False)
            engine = wasmtime.Engine(cfg)
            linker = wasmtime.Linker(engine)
            linker.define_wasi()
            shadow_wasi(linker)
            self._engines[flavor] = engine
            self._linkers[flavor] = linker
        self._stop = False
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._active = 0
        self._entered = 0
        self._parked = False
        self._ticker = threading.Thread(target=self._tick, name="wasm-epoch", daemon=True)
        self._ticker.start()

    def enter(self) -> None:
        """A call starts: the ticker must run (woken if parked). One uncontended lock,
        taken directly (``with`` on the Condition costs a Python frame per call)."""
        lock = self._lock
        lock.acquire()
        self._active += 1
        self._entered += 1
        if self._parked:
            self._parked = False
            self._cv.notify()
        lock.release()

    def leave(self) -> None:
        lock = self._lock
        lock.acquire()
        self._active -= 1
        lock.release()

    @property
    def ticking(self) -> bool:
        return not self._parked

    def _stopped(self) -> bool:
        return self._stop

    def _tick(self) -> None:
        """Advance the epochs by the time that actually passed: this thread oversleeps
        when others hold the GIL or the CPU is busy (a 1 s limit measured 3-7 s while
        clients sent large /exec bodies when the ticker counted wake-ups instead).
        Parks when no call ran for ``LINGER_S``; a call's ``enter`` wakes it. A parked
        ticker loses no deadline: a Store's deadline counts from the epoch at its start."""
        engines = list(self._engines.values())
        while True:
            with self._cv:
                while not self._stop and self._active == 0 and self._parked:
                    self._cv.wait()
                if self._stop:
                    return
            next_t = time.monotonic() + TICK_S
            seen, idle_since = -1, next_t
            while True:
                with self._cv:
                    if self._stopped():
                        return
                    self._cv.wait(max(0.0, next_t - time.monotonic()))
                    active, entered = self._active, self._entered
                now = time.monotonic()
                while next_t <= now:
                    for e in engines:
                        e.increment_epoch()
                    next_t += TICK_S
                if active or entered != seen:
                    seen, idle_since = entered, now
                elif now - idle_since >= LINGER_S:
                    with self._cv:
                        if self._active == 0 and self._entered == seen:
                            self._parked = True
                            break

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._ticker.join(timeout=1)

    def engine(self, flavor: Flavor) -> wasmtime.Engine:
        return self._engines[flavor]

    def validate(self, wasm: bytes) -> wasmtime.Module:
        """Compile without caching; ``InvalidModule`` if the bytes are not a valid module."""
        with map_compile_errors():
            module = wasmtime.Module(self._engines[PLAIN], wasm)
            # Linking too: a module importing anything but WASI could never be called.
            self._linkers[PLAIN].instantiate_pre(module)
        check_tables(wasm)
        return module

    def adopt(self, sha: str, module: wasmtime.Module) -> None:
        """Put a module compiled by ``validate`` (plain engine) in the disk cache, so that
        a deploy compiles once, not twice (3 MB of Go takes 1.3 s to compile)."""
        path = self._cache_path(sha, PLAIN)
        if not path.exists():
            try:
                atomic_write(path, module.serialize(), durable=False)
            except OSError as e:
                log.warning("cannot write compiled cache %s: %s", path, e)

    def _cache_path(self, sha: str, flavor: Flavor) -> Path:
        return self.cache_dir / f"{sha}.{flavor.name}.{flavor.fingerprint}.cwasm"

    def load(self, sha: str, flavor: Flavor, read_bytes: Callable[[], bytes],
             cache: bool = True) -> Compiled:
        """Compiled code for a blob: from the disk cache if there, else compiled and cached
        (``cache=False``: compiled, the cache untouched)."""
        engine = self._engines[flavor]
        path = self._cache_path(sha, flavor)
        module: wasmtime.Module | None = None
        from_cache = False
        if not cache:
            with map_compile_errors():
                module = wasmtime.Module(engine, read_bytes())
        elif path.exists():
            try:
                module = wasmtime.Module.deserialize_file(engine, str(path))
                from_cache = True
                self._on_cache("hit")
            except wasmtime.WasmtimeError as e:
                log.warning("compiled cache %s unusable (%s); recompiling", path.name, e)
                with contextlib.suppress(OSError):
                    path.unlink()
        if module is None:
            t0 = time.perf_counter()
            with map_compile_errors():
                module = wasmtime.Module(engine, read_bytes())
            self._on_cache("miss")
            log.info("compiled %s (%s) in %.1f ms", sha[:12], flavor.name,
                     (time.perf_counter() - t0) * 1000)
            try:
                atomic_write(path, module.serialize(), durable=False)
            except OSError as e:
                log.warning("cannot write compiled cache %s: %s", path, e)
        with map_compile_errors():
            pre = self._linkers[flavor].instantiate_pre(module)
        needs_wasi = any(i.module.startswith("wasi") for i in module.imports)
        functions = {
            e.name: e.type for e in module.exports if isinstance(e.type, wasmtime.FuncType)
        }
        params = {n: [str(p) for p in ft.params] for n, ft in functions.items()}
        results = {n: [str(r) for r in ft.results] for n, ft in functions.items()}
        memory = next((e.name for e in module.exports
                       if isinstance(e.type, wasmtime.MemoryType)), None)
        return Compiled(sha, flavor, engine, module, pre, needs_wasi, functions, from_cache,
                        params, "_initialize" in functions, results,
                        memory.encode() if memory is not None else None)

    def evict(self, sha: str) -> None:
        for p in self.cache_dir.glob(f"{sha}.*.cwasm"):
            with contextlib.suppress(OSError):
                os.unlink(p)


@contextlib.contextmanager
def map_compile_errors() -> Iterator[None]:
    """wasmtime's compile/link errors become ``InvalidModule``."""
    try:
        yield
    except wasmtime.WasmtimeError as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        first = lines[0] if lines else "invalid module"
        feature = map_feature(str(e))
        if feature is not None:
            cause = lines[-1] if lines else ""
            raise InvalidModule(f"module uses {feature}, which this agent refuses (what it "
                                f"allocates is not counted in a call's memory limit): "
                                f"{cause}", feature=feature) from None
        raise InvalidModule(f"module does not compile or link: {first}") from None


def count_tables(data: bytes) -> int:
    """Tables a (valid) module defines, from its table section: the module type
    wasmtime-py exposes shows exported ones only."""
    pos = 8

    def leb() -> int:
        nonlocal pos
        out = shift = 0
        while True:
            b = data[pos]
            pos += 1
            out |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return out

    while pos < len(data):
        sid = data[pos]
        pos += 1
        size = leb()
        end = pos + size
        if sid == 4:
            return leb()
        pos = end
    return 0


def check_tables(wasm: bytes) -> None:
    n = count_tables(wasm)
    if n > MAX_TABLES:
        raise InvalidModule(f"module defines {n} tables; this agent allows at most "
                            f"{MAX_TABLES} (each capped at its table element limit)",
                            feature="tables")


def map_feature(message: str) -> str | None:
    """The refused feature a wasmtime validation message is about, if any."""
    low = message.lower()
    return next((f for k, f in REFUSED_FEATURES.items() if k in low), None)


def describe(ft: Any) -> str:
    """``(i32, i32) -> i64`` style signature of a FuncType."""
    params = ", ".join(str(p) for p in ft.params)
    results = [str(r) for r in ft.results]
    res = results[0] if len(results) == 1 else "(" + ", ".join(results) + ")"
    return f"({params}) -> {res}"
