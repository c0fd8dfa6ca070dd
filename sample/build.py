#!/usr/bin/env python3
"""Rebuild every sample Wasm module under sample/ from its source.

Usage (from the repository root, with the project's venv; `make samples` runs it):

    python sample/build.py              # rebuild all; rewrite only outputs that changed
    python sample/build.py double loop  # only the named samples (by output stem)
    python sample/build.py --check      # build in memory; fail if a committed .wasm is
                                        # missing or differs from what its source gives
    python sample/build.py -v           # also print the compiler commands

Sources sit next to their outputs: `.wat` files are compiled with `wasmtime.wat2wasm`,
`.c` files with Zig's bundled clang (`python -m ziglang cc`, PyPI `ziglang`, in the
project's `dev` extras). The first C build fills Zig's global cache (~25-30 s); later
ones take ~0.1 s each. Builds are deterministic, so re-running is a no-op ("unchanged").

Every built module is checked with wasmtime before it is written: it must compile, have
exactly the expected exports with the expected types, and import only what its ABI
allows (nothing for "export" modules, only `wasi_snapshot_preview1` for WASI commands).

Exit status: 0 on success, 1 if a build or check failed (or, with --check, if an output
is stale), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import wasmtime

SAMPLE_DIR = Path(__file__).resolve().parent
WASI_MODULE = "wasi_snapshot_preview1"

# Compiler flags (after `python -m ziglang cc`).
# A freestanding "export" module: no libc, no entry point, hence no imports; the export
# name comes from `__attribute__((export_name(...)))` in the source. A 16 KiB stack and
# a one-page (64 KiB) memory instead of the linker's 16 MiB default, so the module also
# instantiates under tight memory caps. -s strips custom sections (debug info, names).
C_EXPORT_FLAGS = [
    "--target=wasm32-wasi",
    "-O2",
    "-nostdlib",
    "-Wl,--no-entry",
    "-Wl,-z,stack-size=16384",
    "-Wl,--initial-memory=65536",
    "-s",
]
# A WASI command (`_start`, WASI libc). A 1 MiB stack instead of Zig's 16 MiB default,
# so the initial memory is ~1.1 MiB rather than ~16 MiB and the commands also run under
# small memory caps (the heap grows on demand). -s drops the ~1 MB of DWARF that Zig's
# prebuilt wasi-libc would otherwise bring in.
C_WASI_FLAGS = ["--target=wasm32-wasi", "-O2", "-Wl,-z,stack-size=1048576", "-s"]
C_WARNINGS = ["-Wall", "-Wextra", "-Werror"]

# Function signatures as (params, results), written with wasmtime's ValType names.
I32 = "i32"
START = ((), ())  # WASI `_start`


@dataclass(frozen=True)
class Sample:
    output: str  # path relative to sample/
    source: str  # path relative to sample/
    abi: str  # "export" or "wasi"
    # Expected exports: name -> (params, results) for functions, or "memory".
    exports: dict[str, object] = field(default_factory=dict)
    # An "export" module that still imports WASI functions (adversarial samples).
    wasi_imports: bool = False

    @property
    def name(self) -> str:
        return Path(self.output).stem


def wasi(output: str, source: str) -> Sample:
    return Sample(output, source, "wasi", {"memory": "memory", "_start": START})


SAMPLES: list[Sample] = [
    Sample(
        "double/double.wasm",
        "double/double.c",
        "export",
        {"memory": "memory", "double": ((I32,), (I32,))},
    ),
    wasi("jsonstats/jsonstats.wasm", "jsonstats/jsonstats.c"),
    Sample("misbehave/loop.wasm", "misbehave/loop.wat", "export", {"loop": ((), (I32,))}),
    Sample(
        "misbehave/memhog.wasm",
        "misbehave/memhog.wat",
        "export",
        {"memory": "memory", "memhog": ((), (I32,))},
    ),
    Sample(
        "misbehave/recurse.wasm", "misbehave/recurse.wat", "export", {"recurse": ((I32,), (I32,))}
    ),
    Sample("misbehave/trap.wasm", "misbehave/trap.wat", "export", {"trap": ((), (I32,))}),
    Sample(
        "misbehave/divzero.wasm", "misbehave/divzero.wat", "export", {"divzero": ((I32,), (I32,))}
    ),
    Sample(
        "misbehave/calc.wasm",
        "misbehave/calc.wat",
        "export",
        {
            "add": (("i64", "i64"), ("i64",)),
            "mulf": (("f64", "f64"), ("f64",)),
            "divmod": ((I32, I32), (I32, I32)),
            "neg": (("f32",), ("f32",)),
            "noparams": ((), (I32,)),
        },
    ),
    Sample("misbehave/counter.wasm", "misbehave/counter.wat", "export", {"counter": ((), (I32,))}),
    Sample("misbehave/nofunc.wasm", "misbehave/nofunc.wat", "export", {"memory": "memory"}),
    wasi("misbehave/openfile.wasm", "misbehave/openfile.c"),
    wasi("misbehave/env.wasm", "misbehave/env.c"),
    wasi("misbehave/exit3.wasm", "misbehave/exit3.c"),
    wasi("misbehave/spew.wasm", "misbehave/spew.c"),
    wasi("misbehave/notjson.wasm", "misbehave/notjson.c"),
    wasi("misbehave/echo.wasm", "misbehave/echo.c"),
    # Containment (tests/e2e/test_containment.py): each tries to outlast, outgrow or
    # outshout its limits.
    Sample("misbehave/sleep.wasm", "misbehave/sleep.wat", "export",
           {"memory": "memory", "sleep": ((I32,), (I32,))}, wasi_imports=True),
    Sample("misbehave/memories.wasm", "misbehave/memories.wat", "export",
           {"memory": "memory", "memories": ((), (I32,))}),
    Sample("misbehave/bigtable.wasm", "misbehave/bigtable.wat", "export",
           {"memory": "memory", "bigtable": ((I32,), (I32,))}),
    Sample("misbehave/gcheap.wasm", "misbehave/gcheap.wat", "export",
           {"memory": "memory", "gcheap": ((I32,), (I32,))}),
    Sample("misbehave/hidden.wasm", "misbehave/hidden.wat", "export",
           {"hidden": ((I32,), (I32,))}),
    Sample("misbehave/shared.wasm", "misbehave/shared.wat", "export",
           {"memory": "memory", "shared": ((), (I32,))}),
    Sample("misbehave/flood.wasm", "misbehave/flood.wat", "wasi",
           {"memory": "memory", "_start": START}),
]


class BuildError(Exception):
    pass


def compile_c(sample: Sample, verbose: bool) -> bytes:
    flags = C_EXPORT_FLAGS if sample.abi == "export" else C_WASI_FLAGS
    src = SAMPLE_DIR / sample.source
    with tempfile.TemporaryDirectory(prefix="nebula-sample-") as tmp:
        out = Path(tmp) / (sample.name + ".wasm")
        cmd = [sys.executable, "-m", "ziglang", "cc", *flags, *C_WARNINGS, "-o", str(out), str(src)]
        if verbose:
            print("  $ " + " ".join(cmd), flush=True)
        try:
            # cwd=tmp: anything the compiler leaves behind goes away with the directory.
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False)
        except OSError as e:
            raise BuildError(f"cannot run the Zig compiler: {e}") from e
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip()
            if "No module named ziglang" in msg:
                msg += "\n(install it with: pip install ziglang, or pip install -e '.[dev]')"
            raise BuildError(f"zig cc failed (exit {proc.returncode}):\n{msg}")
        return out.read_bytes()


def compile_wat(sample: Sample) -> bytes:
    text = (SAMPLE_DIR / sample.source).read_text(encoding="utf-8")
    try:
        return bytes(wasmtime.wat2wasm(text))
    except wasmtime.WasmtimeError as e:
        raise BuildError(f"wat2wasm failed:\n{e}") from e


def describe_type(t: object) -> object:
    if isinstance(t, wasmtime.FuncType):
        return (tuple(str(p) for p in t.params), tuple(str(r) for r in t.results))
    if isinstance(t, wasmtime.MemoryType):
        return "memory"
    if isinstance(t, wasmtime.GlobalType):
        return "global"
    if isinstance(t, wasmtime.TableType):
        return "table"
    return type(t).__name__


def check_module(sample: Sample, wasm: bytes, engine: wasmtime.Engine) -> wasmtime.Module:
    try:
        module = wasmtime.Module(engine, wasm)
    except wasmtime.WasmtimeError as e:
        raise BuildError(f"wasmtime cannot compile the output: {e}") from e
    exports = {e.name: describe_type(e.type) for e in module.exports}
    if exports != sample.exports:
        raise BuildError(f"exports are {exports}, expected {sample.exports}")
    imports = [(i.module, i.name) for i in module.imports]
    if sample.abi == "export" and imports and not sample.wasi_imports:
        raise BuildError(f"an 'export' module must have no imports, has {imports}")
    bad = [imp for imp in imports if imp[0] != WASI_MODULE]
    if bad:
        raise BuildError(f"imports outside {WASI_MODULE}: {bad}")
    return module


def format_sig(t: object) -> str:
    if isinstance(t, tuple):
        params, results = t
        res = results[0] if len(results) == 1 else "(" + ", ".join(results) + ")"
        return f"({', '.join(params)}) -> {res}"
    return str(t)


def build_one(sample: Sample, engine: wasmtime.Engine, check: bool, verbose: bool) -> str:
    """Build one sample; return 'built', 'unchanged' or 'stale' (with --check)."""
    src = SAMPLE_DIR / sample.source
    if not src.is_file():
        raise BuildError(f"source {src} is missing")
    wasm = compile_c(sample, verbose) if src.suffix == ".c" else compile_wat(sample)
    module = check_module(sample, wasm, engine)

    out = SAMPLE_DIR / sample.output
    old = out.read_bytes() if out.is_file() else None
    if old == wasm:
        status = "unchanged"
    elif check:
        status = "stale" if old is not None else "missing"
    else:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(wasm)
        os.replace(tmp, out)
        status = "built"

    funcs = [
        f"{e.name}{format_sig(describe_type(e.type))}"
        for e in module.exports
        if isinstance(e.type, wasmtime.FuncType)
    ]
    n_imports = len(module.imports)
    imports = f"{n_imports} {WASI_MODULE} imports" if n_imports else "no imports"
    rel = out.relative_to(SAMPLE_DIR.parent) if SAMPLE_DIR.parent in out.parents else out
    print(
        f"{status:9} {rel!s:34} {len(wasm):>6} bytes  [{sample.abi}]  "
        f"{', '.join(funcs) or 'no functions'}; {imports}",
        flush=True,
    )
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="samples to build (output stems); default all")
    parser.add_argument(
        "--check", action="store_true", help="do not write; fail if an output is stale/missing"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print compiler commands")
    args = parser.parse_args(argv)

    by_name = {s.name: s for s in SAMPLES}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        parser.error(f"unknown sample(s) {unknown}; known: {', '.join(by_name)}")
    selected = [by_name[n] for n in args.names] if args.names else SAMPLES

    engine = wasmtime.Engine()
    failed: list[str] = []
    stale: list[str] = []
    for sample in selected:
        try:
            status = build_one(sample, engine, args.check, args.verbose)
        except BuildError as e:
            print(f"FAILED    {sample.output}: {e}", file=sys.stderr, flush=True)
            failed.append(sample.name)
            continue
        if status in ("stale", "missing"):
            stale.append(sample.name)

    if failed:
        print(f"{len(failed)} sample(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if stale:
        print(
            f"{len(stale)} sample(s) out of date: {', '.join(stale)} (run: make samples)",
            file=sys.stderr,
        )
        return 1
    print(f"{len(selected)} sample(s) ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
