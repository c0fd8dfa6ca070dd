"""Benchmark one WASI call (the ``jsonstats`` sample) in-process, against floors in the same run.

* wasmtime-py, public API only: one Linker with WASI, one InstancePre; per call a fresh
  ``WasiConfig`` with stdin from a memfd holding the JSON argument and stdout/stderr to
  memfds, a fresh Store, instantiate, ``_start``, read stdout. That is the cheapest way
  wasmtime-py's own API offers (temp files in /tmp cost 700+ us a call).
* ``Sandbox.call`` (``nebula_edge.sandbox``): the agent's whole call: limits, stdin from
  bytes, stdout/stderr written by the agent's own ``fd_write`` into capped buffers, the
  call through wasmtime's C API, JSON in and out.
* the module's own work, for scale: ``Sandbox`` internals with the Store, instance and
  ``_start`` only (no JSON), so the rest of a call is what we add.

The process pins itself to one CPU (the last one) unless ``--no-pin``.

Usage: ``.venv/bin/python bench/wasi_call.py [--seconds 3] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from benchlib import ROOT, Floor, sample_sandbox, timed_loop  # bench/ is on sys.path

WASM = ROOT / "sample" / "jsonstats" / "jsonstats.wasm"
ARG = [1, 2, 3, 4.5]
WANT = {"count": 4, "sum": 10.5, "min": 1, "max": 4.5}


def wasmtime_floor(wasm: bytes, seconds: float, warmup: float) -> Floor:
    import wasmtime

    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    pre = linker.instantiate_pre(wasmtime.Module(engine, wasm))
    stdin = json.dumps(ARG).encode()

    def once() -> object:
        fds = [os.memfd_create(n, os.MFD_CLOEXEC) for n in ("in", "out", "err")]
        try:
            os.write(fds[0], stdin)
            cfg = wasmtime.WasiConfig()
            cfg.stdin_file = f"/proc/self/fd/{fds[0]}"
            cfg.stdout_file = f"/proc/self/fd/{fds[1]}"
            cfg.stderr_file = f"/proc/self/fd/{fds[2]}"
            store = wasmtime.Store(engine)
            store.set_wasi(cfg)
            start = pre.instantiate(store).exports(store)["_start"]
            assert isinstance(start, wasmtime.Func)
            start(store)
            del store
            return json.loads(os.pread(fds[1], os.fstat(fds[1]).st_size, 0))
        finally:
            for fd in fds:
                os.close(fd)

    got = once()
    if got != WANT:
        raise SystemExit(f"bench: wasmtime floor: jsonstats({ARG}) returned {got!r}")
    return timed_loop("wasmtime-py (WasiConfig, memfds, Store, _start)", once, seconds, warmup)


def sandbox_floors(wasm: bytes, seconds: float, warmup: float) -> list[Floor]:
    from nebula_edge.sandbox import call as sandbox_call

    with sample_sandbox(wasm, "jsonstats") as (sandbox, m, read):

        def call() -> object:
            return sandbox.call(m, read, ARG, None)

        got = call()
        if got != {"result": WANT}:
            raise SystemExit(f"bench: Sandbox.call(jsonstats, {ARG}) returned {got!r}")
        compiled = sandbox.load(m, read)
        limits = sandbox.effective_limits(m.limits)
        stdin = json.dumps(ARG).encode()

        def module_only() -> object:
            st = sandbox_call._state(compiled, limits, sandbox.env, capture=True)
            with sandbox_call._instance(compiled, limits, sandbox.env, st, stdin) as (ctx, inst):
                start = sandbox_call._export_func(ctx, inst, b"_start")
                return sandbox_call._call_raw(ctx, start, [], [], [])

        return [timed_loop("Sandbox.call (nebula_edge.sandbox)", call, seconds, warmup),
                timed_loop("Store + instantiate + _start only", module_only, seconds, warmup)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per floor (default 3)")
    ap.add_argument("--warmup", type=float, default=0.5, help="unrecorded seconds per floor")
    ap.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    ap.add_argument("--json", action="store_true", help="print one JSON object, nothing else")
    args = ap.parse_args(argv)
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    wasm = WASM.read_bytes()
    floors = [wasmtime_floor(wasm, args.seconds, args.warmup),
              *sandbox_floors(wasm, args.seconds, args.warmup)]
    raw, ours, module = floors
    report: dict[str, Any] = {
        "floors": [f.to_json() for f in floors],
        "sandbox_over_wasmtime": round(ours.calls_per_s / raw.calls_per_s, 3),
        "our_overhead_us": round(ours.us_per_call - module.us_per_call, 1),
        "pinned": not args.no_pin,
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"jsonstats({json.dumps(ARG)}), one thread, "
          f"{'pinned to one CPU' if not args.no_pin else 'not pinned'}:")
    for f in floors:
        other = f" (other jobs' CPU: {f.other_cpu_pct:.0f}%)" if f.other_cpu_pct is not None \
            else ""
        print(f"  {f.name:<48} {f.calls_per_s:>9,.0f} calls/s {f.us_per_call:>7.1f} us/call, "
              f"CPU {f.cpu_us_per_call:.1f} us/call{other}")
    print(f"Sandbox.call / wasmtime-py floor = {report['sandbox_over_wasmtime']:.2f} "
          f"(higher is better)")
    print(f"our cost beyond the module's own run = {report['our_overhead_us']:.1f} us/call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
