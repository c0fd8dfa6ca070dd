"""Per-function logs across agents (issue #13): a WASI module's stderr on agent B is in
``nebctl -logs NAME -addr <agent A>``, labelled with B; ``-follow`` streams new calls;
``GET /modules/{name}/logs`` answers errors as the API does."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.parse

import wasmtime

from agents import (
    NEBCTL,
    ROOT,
    SAMPLES,
    Agent,
    AgentPool,
    OutputLines,
    connected,
    edge_env,
    p2p_addr,
    wait_for,
)
from nebula_edge.calllog import LOG_ENTRIES, LOG_LINES_PER_CALL

EXIT3 = SAMPLES / "misbehave" / "exit3.wasm"
"""Writes "something went wrong" to stderr and exits 3 (the call fails: wasi_exit)."""
DOUBLE = SAMPLES / "double" / "double.wasm"
FAST = ("-fast", "-mdns=false")


def label(agent: Agent) -> str:
    return f"[{urllib.parse.urlsplit(agent.url).netloc}]"


def pair(pool: AgentPool) -> tuple[Agent, Agent]:
    a = pool(*FAST, mesh=True)
    b = pool(*FAST, "-peer", p2p_addr(a), mesh=True)
    wait_for(lambda: connected(a, b), 15, msg="A and B to list each other")
    return a, b


def test_logs_merge_every_agent_labelled(agent_factory: AgentPool) -> None:
    a, b = pair(agent_factory)
    status, body, _ = a.upload("oops", EXIT3)
    assert status == 201, body
    wait_for(lambda: "oops" in b.module_names(), 15, msg="B to hold oops")
    status, body, _ = b.exec("oops")
    assert status == 422 and body["error"]["code"] == "wasi_exit", body

    out = a.nebctl("-logs", "oops")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(label(b) in ln and "stderr: something went wrong" in ln for ln in lines), lines
    assert any(label(b) in ln and "error wasi_exit" in ln for ln in lines), lines
    assert not any(label(a) in ln for ln in lines), lines  # A ran nothing

    # The agent's own JSON: the call record and its stderr line.
    status, body, _ = b.get("/modules/oops/logs")
    assert status == 200, body
    call, line = body["entries"]
    assert (call["kind"], call["outcome"], call["error"], call["stderr_lines"]) == \
        ("call", "error", "wasi_exit", 1)
    assert (line["kind"], line["line"], line["call"]) == ("stderr", "something went wrong",
                                                          call["seq"])
    assert call["agent"] == body["agent"]


def test_logs_follow_streams_new_calls(agent_factory: AgentPool) -> None:
    a, b = pair(agent_factory)
    status, body, _ = a.upload("dbl-log", DOUBLE)
    assert status == 201, body
    wait_for(lambda: "dbl-log" in b.module_names(), 15, msg="B to hold dbl-log")
    proc = subprocess.Popen([str(NEBCTL), "-addr", a.url, "-logs", "dbl-log", "-follow"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=edge_env(), stdin=subprocess.DEVNULL)
    out = OutputLines(proc.stdout)
    shows, seen = out.shows, out.seen

    try:
        # Calls keep coming until the stream shows one from each agent (the follower
        # may connect after the first ones; those come from the backlog anyway).
        def called_and_shown() -> bool:
            assert b.exec("dbl-log", 2)[1] == {"result": 4}
            assert a.exec("dbl-log", 3)[1] == {"result": 6}
            return shows(f"{label(b)} call v1 ok") and shows(f"{label(a)} call v1 ok")

        wait_for(called_and_shown, 20, interval=0.3, msg=f"follow to show both: {seen}")
        assert proc.poll() is None, proc.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)


def test_logs_endpoint_errors(agent_factory: AgentPool) -> None:
    a = agent_factory("-token", "s3cret")
    status, body, _ = a.get("/modules/nope/logs")
    assert status == 401, body
    auth = {"Authorization": "Bearer s3cret"}
    status, raw, _ = a.request("GET", "/modules/nope/logs", headers=auth)
    assert status == 404 and json.loads(raw)["error"]["code"] == "not_found", raw
    status, raw, _ = a.request("GET", "/modules/nope/logs?limit=x", headers=auth)
    assert status == 400 and json.loads(raw)["error"]["code"] == "bad_request", raw
    out = a.nebctl("-logs", "nope", "-token", "s3cret")
    assert out.returncode == 1 and "no agent has a log" in out.stderr, out


NOISY = bytes(wasmtime.wat2wasm('''
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "oops: something is off\\n")
  (func (export "_start") (local $i i32)
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 23))
    (loop $again
      (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 1000))))))
'''))
"""A WASI command that writes 1,000 lines to stderr per call."""


def test_a_noisy_module_fills_only_its_ring(agent_factory: AgentPool) -> None:
    a = agent_factory()
    status, body, _ = a.upload("noisy", NOISY)
    assert status == 201 and body["module"]["abi"] == "wasi", body
    calls = 15
    for _ in range(calls):
        status, body, _ = a.exec("noisy")
        assert status == 200, body
    status, body, _ = a.get("/modules/noisy/logs")
    entries = body["entries"]
    assert len(entries) == LOG_ENTRIES  # 15 calls x (1 record + 20 lines) > the ring
    assert {e["line"] for e in entries if e["kind"] == "stderr"} == {"oops: something is off"}
    assert entries[-1]["kind"] == "stderr"  # the newest call's last line
    assert a.metric("nebula_edge_call_log_dropped_total", reason="stderr_lines") == \
        calls * (1000 - LOG_LINES_PER_CALL)
    assert a.metric("nebula_edge_call_log_entries") == LOG_ENTRIES
