"""Start-up self-test of the C-API layer. ``sandbox/call.py`` and ``sandbox/hostcalls.py``
use wasmtime-py internals (``_bindings``, ``_ffi``: raw C functions, struct layouts,
extern kinds) for speed; a new wasmtime-py may change them without notice. The agent
runs one export call and one WASI call (stdin, stdout, stderr, a 1 ms sleep, the table
limit) through that layer when its Sandbox is made, ~2 ms, and refuses to start with a
message naming the installed wasmtime-py version when anything differs.
"""

from __future__ import annotations

import ctypes
import hashlib
from typing import TYPE_CHECKING, Any

import wasmtime

from nebula_edge.config import Limits
from nebula_edge.errors import ExecTimeout, OutputTooLarge, Trap
from nebula_edge.sandbox.engine import PLAIN, WASMTIME_VERSION, internals_changed

if TYPE_CHECKING:
    from nebula_edge.sandbox import Sandbox

PROBE_EXPORT = """
(module
  (memory (export "memory") 1)
  (table 2 funcref)
  (func (export "add") (param i32 i64) (result i64)
    (i64.add (i64.extend_i32_s (local.get 0)) (local.get 1)))
  (func (export "grow") (param i32) (result i32)
    (table.grow (ref.null func) (local.get 0))))
"""
PROBE_WASI = """
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; read stdin (the JSON argument) to 1024 and echo it to stdout and stderr
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 1024))
    (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 4) (i32.load (i32.const 8)))
    ;; sleep 1 ms: one relative clock subscription at 64, its event at 128
    (i64.store (i32.const 80) (i64.const 1000000))
    (drop (call $poll (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 12)))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (drop (call $write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


class SandboxSelfTestFailed(RuntimeError):
    pass


def _compiled(sb: Sandbox, wat: str) -> Any:
    wasm = bytes(wasmtime.wat2wasm(wat))
    return sb.engines.load("selftest-" + hashlib.sha256(wasm).hexdigest(), PLAIN,
                           lambda: wasm, cache=False)


def self_test(sb: Sandbox) -> None:
    from nebula_edge.sandbox.call import call_export, call_wasi

    try:
        env = sb.env
        lim = Limits(timeout_ms=1000, memory_mb=1, max_output_bytes=64)
        c = _compiled(sb, PROBE_EXPORT)
        got = call_export(c, "add", lim, [-2, 2**40], env)
        if got != 2**40 - 2:
            raise internals_changed(f"export call returned {got!r}")
        over = env.table_elements  # past the cap: table.grow answers -1
        if call_export(c, "grow", lim, [over], env) != -1:
            raise internals_changed("the Store's table limit was not applied")
        w = _compiled(sb, PROBE_WASI)
        err = bytearray()
        got = call_wasi(w, lim, [1, 2], env, err)
        if got != {"result": [1, 2]} or err != b"[1, 2]":
            raise internals_changed(f"WASI call gave {got!r}, stderr {bytes(err)!r}")
        try:
            call_wasi(w, Limits(timeout_ms=1000, memory_mb=1, max_output_bytes=3), 12345,
                      env)
            raise internals_changed("the output cap did not end the call")
        except OutputTooLarge:
            pass
    except (SandboxSelfTestFailed, ExecTimeout, Trap) as e:
        raise SandboxSelfTestFailed(str(e)) from e
    except (AttributeError, TypeError, ValueError, ctypes.ArgumentError, OSError,
            wasmtime.WasmtimeError) as e:
        raise internals_changed(f"{type(e).__name__}: {e}") from e


__all__ = ["WASMTIME_VERSION", "SandboxSelfTestFailed", "self_test"]
