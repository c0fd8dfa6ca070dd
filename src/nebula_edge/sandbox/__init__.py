"""The Wasm sandbox: the only package that imports wasmtime. Synchronous and thread-safe:
``Sandbox.call`` runs on the agent's worker threads (wasmtime releases the GIL while
Wasm runs), any number at once, each in a Store of its own.

ABIs (chosen at deploy, recorded in the manifest):

* ``export``: call an exported function with numeric JSON arguments
  (the export named like the module, else the one named at deploy, else the only one);
* ``wasi``: run a WASI command's ``_start`` with the JSON argument on stdin and parse
  stdout as JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from nebula_edge.config import Limits
from nebula_edge.errors import BadRequest, InvalidModule, LimitOutOfRange
from nebula_edge.manifest import Abi, Manifest
from nebula_edge.sandbox.call import CallEnv, call_export, call_wasi, check_signature
from nebula_edge.sandbox.engine import (
    FUEL,
    MAX_TABLES,
    PLAIN,
    TABLE_ELEMENTS,
    WASMTIME_VERSION,
    Compiled,
    Engines,
    check_tables,
    describe,
)
from nebula_edge.sandbox.selftest import self_test

__all__ = ["MAX_TABLES", "TABLE_ELEMENTS", "WASMTIME_VERSION", "Sandbox"]

log = logging.getLogger(__name__)


def nullcontext_lend(deadline: float) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


class Sandbox:
    """Compiles, caches and calls modules under per-call limits."""

    def __init__(
        self,
        cache_dir: Path,
        default_limits: Limits,
        max_limits: Limits,
        on_cache: Callable[[str], None] | None = None,
        table_elements: int = TABLE_ELEMENTS,
        lend: Callable[[float], AbstractContextManager[None]] | None = None,
    ) -> None:
        """``table_elements``: cap on the elements of each of a call's tables.
        ``lend(deadline)``: a context a call waits in (a WASI sleep), given by the worker
        pool so that the waiting call lends its compute slot; it raises TimeoutError on
        leaving if the slot did not come back by ``deadline``."""
        self.default_limits = default_limits
        self.max_limits = max_limits
        self.engines = Engines(cache_dir, on_cache)
        self.env = CallEnv(self.engines, table_elements, lend or nullcontext_lend)
        try:
            self_test(self)
        except BaseException:
            self.engines.close()
            raise
        self._lock = threading.Lock()
        self._loaded: dict[tuple[str, str], Compiled] = {}
        self._limits_cache: dict[Limits, Limits] = {}
        """Effective limits per requested limits (frozen, hashable); a handful of values."""

    def close(self) -> None:
        self.engines.close()

    # ------------------------------------------------------------------ deploy time
    def effective_limits(self, requested: Limits) -> Limits:
        """Module limits filled from the defaults; ``LimitOutOfRange`` past a maximum."""
        out: dict[str, int | None] = {}
        for f in dataclasses.fields(Limits):
            want = getattr(requested, f.name)
            cap = getattr(self.max_limits, f.name)
            if want is not None and cap is not None and want > cap:
                raise LimitOutOfRange(f"limit {f.name}={want} exceeds this agent's maximum {cap}")
            if want == 0 and f.name != "fuel":
                raise LimitOutOfRange(f"limit {f.name} must be positive")
            out[f.name] = want if want is not None else getattr(self.default_limits, f.name)
        return Limits(**out)

    def inspect(self, wasm: bytes, name: str, abi: str | None, export: str | None,
                sha256: str | None = None) -> tuple[Abi, str | None]:
        """Validate bytes and decide how the module is called. ``InvalidModule`` if it cannot
        be called under the requested (or any) ABI. Stores no module; with ``sha256``,
        the compiled code goes to the cache for the first call."""
        if abi not in (None, "export", "wasi"):
            raise BadRequest(f"abi must be 'export' or 'wasi', not {abi!r}")
        if not wasm:
            raise InvalidModule("module is empty")
        module = self.engines.validate(wasm)
        chosen = self._choose(module, name, abi, export)
        if sha256 is not None:
            self.engines.adopt(sha256, module)
        return chosen

    def _choose(self, module: Any, name: str, abi: str | None, export: str | None
                ) -> tuple[Abi, str | None]:
        funcs = {e.name: e.type for e in module.exports if hasattr(e.type, "params")}
        has_start = "_start" in funcs
        if abi == "wasi" or (abi is None and export is None and name not in funcs and has_start):
            if not has_start:
                raise InvalidModule("abi 'wasi' needs a WASI command module exporting _start")
            return "wasi", None
        if export is not None:
            if export not in funcs:
                raise InvalidModule(f"module has no exported function {export!r}; it exports "
                                    f"{sorted(funcs) or 'no functions'}")
            chosen = export
        elif name in funcs:
            chosen = name
        else:
            callable_ = [n for n in funcs if n not in ("_start", "_initialize")]
            if len(callable_) != 1:
                raise InvalidModule(
                    f"cannot choose an export: module exports {sorted(funcs) or 'no functions'}; "
                    "name the module like its function or pass export")
            chosen = callable_[0]
        check_signature(funcs[chosen], chosen)
        return "export", chosen

    def signature(self, m: Manifest, read_bytes: Callable[[], bytes]) -> str | None:
        if m.abi != "export" or m.export is None:
            return None
        c = self.load(m, read_bytes)
        ft = c.functions.get(m.export)
        return describe(ft) if ft is not None else None

    def admit(self, m: Manifest, read_bytes: Callable[[], bytes]) -> None:
        """Check bytes received from a peer against their manifest before they are stored:
        they compile, and the manifest's ABI and export exist with a usable signature.
        Compiles once, for the engine the module will run on, and fills the cache."""
        c = self.load(m, read_bytes)
        check_tables(read_bytes())
        order = m.order
        if order is not None and order.get("op") == "deploy":
            # The order signs what was asked (abi/export, or null = detect): detection is
            # a function of the bytes, so every agent must reach the manifest's answer.
            abi, export = order.get("abi"), order.get("export")
            if (abi is not None and not isinstance(abi, str)) or \
                    (export is not None and not isinstance(export, str)):
                raise InvalidModule("the signed order's abi/export are not strings")
            if self._choose(c.module, m.name, abi, export) != (m.abi, m.export):
                raise InvalidModule("the manifest's abi/export differ from what its signed "
                                    "order selects in these bytes")
        if m.abi == "wasi":
            if "_start" not in c.functions:
                raise InvalidModule("manifest says abi wasi but the module has no _start")
            return
        if m.export is None or m.export not in c.functions:
            raise InvalidModule(f"manifest names export {m.export!r} but the module has none")
        check_signature(c.functions[m.export], m.export)

    # ------------------------------------------------------------------ call time
    def load(self, m: Manifest, read_bytes: Callable[[], bytes]) -> Compiled:
        """Compiled code for a manifest (memory, then disk cache, then compile)."""
        flavor = FUEL if m.limits.fuel else PLAIN
        key = (m.sha256, flavor.name)
        c = self._loaded.get(key)
        if c is None:
            c = self.engines.load(m.sha256, flavor, read_bytes)
            with self._lock:
                self._loaded.setdefault(key, c)
        return c

    def unload(self, sha: str, evict_disk: bool = True) -> None:
        with self._lock:
            for key in [k for k in self._loaded if k[0] == sha]:
                del self._loaded[key]
        if evict_disk:
            self.engines.evict(sha)

    def call(self, m: Manifest, read_bytes: Callable[[], bytes], arg: Any,
             args: list[Any] | None, *, stderr: bytearray | None = None) -> dict[str, Any]:
        """Run one call; returns ``{"result": ...}`` (or ``{"output": ...}`` for non-JSON
        WASI stdout). Raises the ``NebulaError`` that describes any failure. ``stderr``:
        a WASI call appends the stderr it captured (at most the output cap) to it, on
        success and on every failure (trap, exit, timeout, output_too_large); an export
        call leaves it alone (it has no stderr)."""
        c = self.load(m, read_bytes)
        limits = self._limits_cache.get(m.limits)
        if limits is None:
            limits = self._limits_cache[m.limits] = self.effective_limits(m.limits)
        if m.abi == "wasi":
            return call_wasi(c, limits, arg if args is None else args, self.env, stderr)
        assert m.export is not None
        if args is None:
            nparams = len(c.params.get(m.export, ()))
            args = [] if arg is None and nparams == 0 else [arg]
        return {"result": call_export(c, m.export, limits, args, self.env)}
