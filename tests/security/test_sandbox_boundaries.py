"""What a module can never reach, tried against a real agent over HTTP.

Each test starts its own agent (mesh off), deploys modules through ``/deploy`` and calls
them through ``/exec``, as a client would. Besides the committed samples
(``sample/misbehave``), the tests build small WAT modules with ``wasmtime.wat2wasm``
that call WASI directly, so that nothing (no libc) stands between the probe and the
host: ``path_open`` on fd 3 (the first preopen, if there were any), ``environ_sizes_get``,
and a ``poke`` that would see another call's linear memory if two calls ever shared one.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import wasmtime

from agents import Agent, AgentPool
from agents import deployed as deploy

EBADF = 8
"""WASI errno 8: fd 3 is not open, because the agent preopens no directory."""

PROBE_FILES_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_prestat_get"
    (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "/")
  (data (i32.const 24) ".")
  (data (i32.const 32) "/proc/self/environ")
  ;; path_open(dirfd, LOOKUP_SYMLINKS, path, no oflags, right FD_READ, opened fd -> [8])
  (func $try (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (call $open (local.get $fd) (i32.const 1) (local.get $ptr) (local.get $len)
                (i32.const 0) (i64.const 2) (i64.const 2) (i32.const 0) (i32.const 8)))
  ;; errno of fd_prestat_get(3), of opening "/", "/proc/self/environ" and "." under
  ;; fd 3, and what path_open wrote as the opened fd (-1: nothing)
  (func (export "probe") (result i32 i32 i32 i32 i32)
    (i32.store (i32.const 8) (i32.const -1))
    (call $prestat (i32.const 3) (i32.const 0))
    (call $try (i32.const 3) (i32.const 16) (i32.const 1))
    (call $try (i32.const 3) (i32.const 32) (i32.const 18))
    (call $try (i32.const 3) (i32.const 24) (i32.const 1))
    (i32.load (i32.const 8)))
  ;; how many of the fds 0..1023 let "." be opened under them (any preopened directory
  ;; would: WASI refuses absolute paths even under a preopen)
  (func (export "scan") (result i32)
    (local $fd i32) (local $opened i32)
    (loop $next
      (if (i32.eqz (call $try (local.get $fd) (i32.const 24) (i32.const 1)))
        (then (local.set $opened (i32.add (local.get $opened) (i32.const 1)))))
      (local.set $fd (i32.add (local.get $fd) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $fd) (i32.const 1024))))
    (local.get $opened)))
"""

PROBE_FILES_COMMAND_WAT = """
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 32) "/proc/self/environ")
  ;; a WASI command: exits with the errno of opening /proc/self/environ under fd 3
  (func (export "_start")
    (call $exit (call $open (i32.const 3) (i32.const 1) (i32.const 32) (i32.const 18)
                            (i32.const 0) (i64.const 2) (i64.const 2) (i32.const 0)
                            (i32.const 8)))))
"""

PROBE_ENV_WAT = """
(module
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $env (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; errno and (count, buffer size) of the environment, then of the arguments
  (func (export "environ") (result i32 i32 i32 i32 i32 i32)
    (call $env (i32.const 0) (i32.const 4))
    (i32.load (i32.const 0))
    (i32.load (i32.const 4))
    (call $args (i32.const 8) (i32.const 12))
    (i32.load (i32.const 8))
    (i32.load (i32.const 12))))
"""

POKE_WAT = """
(module
  (memory 1)
  ;; Returns what address 0 held (0 in a fresh memory), after storing $v there and
  ;; spinning (so that concurrent calls overlap); -1 if address 0 changed meanwhile.
  (func (export "poke") (param $v i32) (result i32)
    (local $prev i32) (local $i i32)
    (local.set $prev (i32.load (i32.const 0)))
    (i32.store (i32.const 0) (local.get $v))
    (loop $spin
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $spin (i32.lt_u (local.get $i) (i32.const 300000))))
    (if (i32.ne (i32.load (i32.const 0)) (local.get $v))
      (then (return (i32.const -1))))
    (local.get $prev)))
"""


NO_MEMORY_WAT = """
(module
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $env (param i32 i32) (result i32)))
  (memory 1)  ;; not exported: WASI has nowhere to write its answer
  (func (export "nomem") (result i32)
    (call $env (i32.const 0) (i32.const 4))))
"""


def wat(source: str) -> bytes:
    return bytes(wasmtime.wat2wasm(source))



def test_no_file_can_be_opened(agent_factory: AgentPool, samples: Path) -> None:
    agent = agent_factory()
    deploy(agent, "openfile", samples / "misbehave" / "openfile.wasm")
    deploy(agent, "probe", wat(PROBE_FILES_WAT))
    deploy(agent, "scanfds", wat(PROBE_FILES_WAT), export="scan")
    deploy(agent, "opencmd", wat(PROBE_FILES_COMMAND_WAT))

    assert agent.exec("openfile")[:2] == (200, {"result": {"opened": False}})
    assert agent.exec("probe")[:2] == (200, {"result": [EBADF, EBADF, EBADF, EBADF, -1]})
    assert agent.exec("scanfds")[:2] == (200, {"result": 0})
    status, body, _ = agent.exec("opencmd")
    assert (status, body["error"]["code"], body["error"]["exit_code"]) == \
        (422, "wasi_exit", EBADF), body


def test_no_environment_variable_is_visible(agent_factory: AgentPool, samples: Path) -> None:
    agent = agent_factory(env={"SECRET": "x", "NEBULA_EDGE_TEST_SECRET": "hunter2"})
    environ = Path(f"/proc/{agent.proc.pid}/environ").read_bytes().split(b"\0")
    assert b"SECRET=x" in environ  # the agent itself has them
    deploy(agent, "env", samples / "misbehave" / "env.wasm")
    deploy(agent, "environ", wat(PROBE_ENV_WAT))

    assert agent.exec("env")[:2] == (200, {"result": {"env_count": 0, "args_count": 0}})
    assert agent.exec("environ")[:2] == (200, {"result": [0, 0, 0, 0, 0, 0]})


def test_a_refused_host_call_says_why(agent_factory: AgentPool) -> None:
    """A WASI call the host cannot serve (here: the module exports no memory) fails the
    call cleanly, with wasmtime's cause in the message rather than a bare backtrace
    header."""
    agent = agent_factory()
    deploy(agent, "nomem", wat(NO_MEMORY_WAT))
    status, body, _ = agent.exec("nomem")
    assert (status, body["error"]["code"]) == (422, "exec_error"), body
    assert "missing required memory export" in body["error"]["message"], body


def test_a_call_never_sees_another_calls_memory(agent_factory: AgentPool) -> None:
    agent = agent_factory("-workers", "8")
    deploy(agent, "poke", wat(POKE_WAT))
    values = list(range(1, 161))  # 16 threads x 10 calls, each value written once

    def poke(v: int) -> tuple[int, Any]:
        status, body, _ = agent.exec("poke", v)
        return status, body

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(poke, values))
    assert results == [(200, {"result": 0})] * len(values)


def _timed_exec(agent: Agent, name: str, arg: Any = None) -> tuple[int, Any, float]:
    t0 = time.monotonic()
    status, body, _ = agent.exec(name, arg)
    return status, body, time.monotonic() - t0


def _alongside(agent: Agent, calls: list[tuple[str, Any]], double_callers: int = 4
               ) -> tuple[list[tuple[int, Any, float]], list[tuple[int, Any, float]]]:
    """Run ``calls`` (module, arg) at once while ``double_callers`` threads call ``double``
    back to back until they are all answered; returns both sets of (status, body, seconds)."""
    doubles: list[tuple[int, Any, float]] = []
    done = threading.Event()

    def call_double() -> None:
        while not done.is_set() or len(doubles) < 40:
            doubles.append(_timed_exec(agent, "double", 21))

    with ThreadPoolExecutor(len(calls) + double_callers) as pool:
        callers = [pool.submit(call_double) for _ in range(double_callers)]
        results = list(pool.map(lambda c: _timed_exec(agent, *c), calls))
        done.set()
        for f in callers:
            f.result()
    return results, doubles


def test_misbehaving_calls_never_affect_a_concurrent_call(agent_factory: AgentPool,
                                                          samples: Path) -> None:
    """Endless loops, memory bombs, stack overflows and traps run alongside ``double``;
    with free workers, ``double`` neither fails nor waits for them."""
    loop_ms = 3000
    agent = agent_factory("-workers", "12")
    bad = samples / "misbehave"
    deploy(agent, "double", samples / "double" / "double.wasm")
    deploy(agent, "loop", bad / "loop.wasm", limits={"timeout_ms": loop_ms})
    deploy(agent, "memhog", bad / "memhog.wasm", limits={"memory_mb": 32})
    deploy(agent, "recurse", bad / "recurse.wasm")
    deploy(agent, "trap", bad / "trap.wasm")
    calls = [("loop", None), ("loop", None), ("memhog", None), ("memhog", None),
             ("recurse", 1), ("recurse", 1), ("trap", None), ("trap", None)]

    results, doubles = _alongside(agent, calls)

    timeout = {"code": "exec_timeout", "message": f"call exceeded its {loop_ms} ms time limit",
               "limit_ms": loop_ms}
    pages = 32 * 1024 * 1024 // 65536  # memhog grows until the 32 MiB cap, and stops there
    overflow = {"code": "trap", "message": "wasm trap: call stack exhausted",
                "trap": "stack_overflow"}
    unreachable = {"code": "trap", "message": "wasm trap: wasm `unreachable` instruction "
                   "executed", "trap": "unreachable"}
    got = [(name, status, body.get("error", body))
           for (name, _), (status, body, _) in zip(calls, results, strict=True)]
    assert got == [("loop", 504, timeout), ("loop", 504, timeout),
                   ("memhog", 200, {"result": pages}), ("memhog", 200, {"result": pages}),
                   ("recurse", 422, overflow), ("recurse", 422, overflow),
                   ("trap", 422, unreachable), ("trap", 422, unreachable)]
    assert min(t for _, _, t in results[:2]) >= loop_ms / 1000  # they did run alongside

    assert {(status, body["result"]) for status, body, _ in doubles} == {(200, 42)}
    seconds = [t for _, _, t in doubles]
    # Measured on 2 loaded cores: median 2-6 ms, slowest 0.1-0.6 s. A double that waited
    # for a loop would take its 3 s limit.
    assert statistics.median(seconds) < 0.05, sorted(seconds)[-10:]
    assert max(seconds) < loop_ms / 2000, sorted(seconds)[-10:]
    assert "Traceback" not in agent.log()


def test_time_limit_is_wall_clock_time_on_a_busy_agent(agent_factory: AgentPool,
                                                       samples: Path) -> None:
    """An endless loop gets its time limit in wall-clock time, also while the agent is busy:
    here clients keep it parsing 0.85 MB JSON bodies (``/exec`` with 120,000 arguments,
    refused), which holds the agent's GIL for milliseconds at a time. A client must not be
    able to hand another caller's module more time than its limit."""
    limit_ms = 1000
    agent = agent_factory("-workers", "4")
    deploy(agent, "double", samples / "double" / "double.wasm")
    deploy(agent, "loop", samples / "misbehave" / "loop.wasm", limits={"timeout_ms": limit_ms})
    heavy = json.dumps({"name": "double", "args": list(range(120_000))}).encode()
    refused: list[tuple[int, str]] = []
    done = threading.Event()

    def keep_busy() -> None:
        while not done.is_set() or not refused:
            status, raw, _ = agent.request("POST", "/exec", heavy)
            refused.append((status, json.loads(raw)["error"]["code"]))

    with ThreadPoolExecutor(4) as pool:
        busy = [pool.submit(keep_busy) for _ in range(4)]
        status, body, _ = agent.exec("loop")
        done.set()
        for f in busy:
            f.result()

    assert (status, body["error"]["code"]) == (504, "exec_timeout"), body
    assert set(refused) == {(400, "invalid_arguments")}
    # The agent's own measure of the call, from the hand-off to a worker to the answer:
    # the limit, plus an epoch tick (5 ms), plus the event loop's delay to resume.
    ran = agent.metric("nebula_edge_exec_duration_seconds_sum", module="loop")
    assert ran is not None and limit_ms / 1000 <= ran < limit_ms / 1000 + 0.5, ran
