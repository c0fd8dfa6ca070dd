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
from nebula_edge.store.fsutil import atomic_write

log = logging.getLogger(__name__)

TICK_S = 0.005
"""Epoch period: deadlines are accurate to about this (5 ms; the ticker costs ~0.1% CPU)."""
MAX_WASM_STACK = 512 * 1024
"""Deep recursion traps with STACK_OVERFLOW well before the worker thread's own stack."""

WASMTIME_VERSION = importlib.metadata.version("wasmtime")


@dataclass(frozen=True)
class Flavor:
    name: str
    fuel: bool

    @property
    def fingerprint(self) -> str:
        spec = f"wasmtime={WASMTIME_VERSION};epoch=1;fuel={int(self.fuel)};stack={MAX_WASM_STACK}"
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
            engine = wasmtime.Engine(cfg)
            linker = wasmtime.Linker(engine)
            linker.define_wasi()
            self._engines[flavor] = engine
            self._linkers[flavor] = linker
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="wasm-epoch", daemon=True)
        self._tick_hooks: list[Callable[[], None]] = []
        self._ticker.start()

    def add_tick_hook(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` on the ticker thread every tick (used to police output sizes)."""
        self._tick_hooks.append(hook)

    def _tick(self) -> None:
        """Advance the epochs by the time that actually passed: this thread oversleeps
        when others hold the GIL or the CPU is busy (a 1 s limit measured 3-7 s while
        clients sent large /exec bodies when the ticker counted wake-ups instead)."""
        engines = list(self._engines.values())
        next_t = time.monotonic() + TICK_S
        while not self._stop.wait(max(0.0, next_t - time.monotonic())):
            now = time.monotonic()
            while next_t <= now:
                for e in engines:
                    e.increment_epoch()
                next_t += TICK_S
            for hook in self._tick_hooks:
                try:
                    hook()
                except Exception:  # a policing hook must never stop deadlines
                    log.exception("sandbox tick hook failed")

    def close(self) -> None:
        self._stop.set()
        self._ticker.join(timeout=1)

    def engine(self, flavor: Flavor) -> wasmtime.Engine:
        return self._engines[flavor]

    def validate(self, wasm: bytes) -> wasmtime.Module:
        """Compile without caching; ``InvalidModule`` if the bytes are not a valid module."""
        with map_compile_errors():
            module = wasmtime.Module(self._engines[PLAIN], wasm)
            # Linking too: a module importing anything but WASI could never be called.
            self._linkers[PLAIN].instantiate_pre(module)
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

    def load(self, sha: str, flavor: Flavor, read_bytes: Callable[[], bytes]) -> Compiled:
        """Compiled code for a blob: from the disk cache if there, else compiled and cached."""
        engine = self._engines[flavor]
        path = self._cache_path(sha, flavor)
        module: wasmtime.Module | None = None
        from_cache = False
        if path.exists():
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
        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid module"
        raise InvalidModule(f"module does not compile or link: {first}") from None


def describe(ft: Any) -> str:
    """``(i32, i32) -> i64`` style signature of a FuncType."""
    params = ", ".join(str(p) for p in ft.params)
    results = [str(r) for r in ft.results]
    res = results[0] if len(results) == 1 else "(" + ", ".join(results) + ")"
    return f"({params}) -> {res}"
