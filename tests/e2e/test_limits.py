"""Both ABIs and every per-call limit, against a real agent, with the misbehaving samples.

A misbehaving call must end with the error that says why, within its limit, and must not
disturb the agent or the calls running next to it.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from agents import SAMPLES, Agent, AgentPool, wait_for
from agents import deployed as deploy

MIS = SAMPLES / "misbehave"
DOUBLE = SAMPLES / "double" / "double.wasm"
JSONSTATS = SAMPLES / "jsonstats" / "jsonstats.wasm"


@pytest.fixture(scope="module")
def agent(module_agent_factory: AgentPool) -> Agent:
    """Four workers, so that concurrent calls really run side by side."""
    return module_agent_factory("-workers", "4")



def error_of(resp: tuple[int, Any, Any], status: int, code: str) -> dict[str, Any]:
    got_status, body, _ = resp
    assert got_status == status, body
    assert body["error"]["code"] == code, body
    return dict(body["error"])


# ------------------------------------------------------------------------------ export ABI
def test_loop_times_out_within_its_limit(agent: Agent) -> None:
    m = deploy(agent, "loop", MIS / "loop.wasm", limits={"timeout_ms": 200})
    assert m["limits"]["timeout_ms"] == 200
    t0 = time.monotonic()
    err = error_of(agent.exec("loop"), 504, "exec_timeout")
    elapsed = time.monotonic() - t0
    assert 0.2 <= elapsed < 2.0, elapsed
    assert err["limit_ms"] == 200
    # The agent is fine afterwards.
    assert agent.get("/healthz")[0] == 200


def test_agent_answers_while_a_call_spins(agent: Agent) -> None:
    """Running Wasm does not hold the GIL: the event loop serves other requests (and the
    epoch ticker interrupts the call) while a call spins on a worker."""
    deploy(agent, "spin", MIS / "loop.wasm", limits={"timeout_ms": 3000})
    deploy(agent, "double-s", DOUBLE)
    assert agent.metric("nebula_edge_exec_in_flight") == 0
    with ThreadPoolExecutor(1) as pool:
        spinning = pool.submit(agent.exec, "spin")
        wait_for(lambda: agent.metric("nebula_edge_exec_in_flight") == 1, 10,
                 msg="the spinning call to be admitted")
        assert agent.get("/healthz")[0] == 200
        assert agent.exec("double-s", 21)[:2] == (200, {"result": 42})
        assert not spinning.done(), "the spinning call ended before the agent answered"
        assert agent.metric("nebula_edge_exec_in_flight") == 1
        error_of(spinning.result(30), 504, "exec_timeout")
    assert agent.metric("nebula_edge_exec_in_flight") == 0


def test_loop_with_fuel_runs_out_of_fuel(agent: Agent) -> None:
    deploy(agent, "loop-fuel", MIS / "loop.wasm", limits={"fuel": 100_000, "timeout_ms": 5000})
    t0 = time.monotonic()
    err = error_of(agent.exec("loop-fuel"), 504, "exec_timeout")
    assert time.monotonic() - t0 < 2.0  # fuel, not the 5 s clock, ended it
    assert err["fuel"] == 100_000
    assert "fuel" in err["message"]


def test_enough_fuel_lets_a_call_finish(agent: Agent) -> None:
    deploy(agent, "double-fuel", DOUBLE, limits={"fuel": 10_000})
    assert agent.exec("double-fuel", 21)[:2] == (200, {"result": 42})


@pytest.mark.parametrize(("memory_mb", "pages"), [(4, 64), (1, 16), (None, 1024)])
def test_memhog_is_capped(agent: Agent, memory_mb: int | None, pages: int) -> None:
    name = f"memhog-{memory_mb}"
    limits = {"memory_mb": memory_mb} if memory_mb else {}
    deploy(agent, name, MIS / "memhog.wasm", limits=limits)
    assert agent.exec(name)[:2] == (200, {"result": pages})


def test_recursion_is_a_stack_overflow_trap(agent: Agent) -> None:
    deploy(agent, "recurse", MIS / "recurse.wasm")
    err = error_of(agent.exec("recurse", 0), 422, "trap")
    assert err["trap"] == "stack_overflow"
    assert agent.get("/healthz")[0] == 200


def test_unreachable_is_a_trap(agent: Agent) -> None:
    deploy(agent, "trap", MIS / "trap.wasm")
    err = error_of(agent.exec("trap"), 422, "trap")
    assert err["trap"] == "unreachable"
    assert err["message"].startswith("wasm trap")


def test_divide_by_zero(agent: Agent) -> None:
    deploy(agent, "divzero", MIS / "divzero.wasm")
    assert agent.exec("divzero", 5)[:2] == (200, {"result": 20})
    assert agent.exec("divzero", -3)[:2] == (200, {"result": -33})
    err = error_of(agent.exec("divzero", 0), 422, "trap")
    assert err["trap"] == "integer_division_by_zero"


def test_counter_keeps_no_state_between_calls(agent: Agent) -> None:
    deploy(agent, "counter", MIS / "counter.wasm")
    assert [agent.exec("counter")[:2] for _ in range(3)] == [(200, {"result": 1})] * 3


# ------------------------------------------------------------------------------ WASI ABI
def test_spew_is_output_too_large(agent: Agent) -> None:
    deploy(agent, "spew", MIS / "spew.wasm",
           limits={"timeout_ms": 300, "max_output_bytes": 65536})
    t0 = time.monotonic()
    err = error_of(agent.exec("spew"), 422, "output_too_large")
    assert time.monotonic() - t0 < 3.0
    assert err["limit"] == 65536
    assert agent.get("/healthz")[0] == 200


def test_exit3_is_wasi_exit_with_stderr_tail(agent: Agent) -> None:
    m = deploy(agent, "exit3", MIS / "exit3.wasm")
    assert (m["abi"], m["export"]) == ("wasi", None)
    err = error_of(agent.exec("exit3"), 422, "wasi_exit")
    assert err["exit_code"] == 3
    assert err["stderr"] == "something went wrong\n"


def test_notjson_output_is_returned_as_text(agent: Agent) -> None:
    deploy(agent, "notjson", MIS / "notjson.wasm")
    status, raw, _ = agent.request("POST", "/exec", b'{"name":"notjson"}')
    assert (status, raw) == (200, b'{"output":"hello, world\\n"}')


def test_openfile_cannot_open_anything(agent: Agent) -> None:
    deploy(agent, "openfile", MIS / "openfile.wasm")
    assert agent.exec("openfile")[:2] == (200, {"result": {"opened": False}})


def test_env_sees_no_variables_and_no_arguments(agent: Agent) -> None:
    deploy(agent, "env", MIS / "env.wasm")
    assert agent.exec("env")[:2] == (200, {"result": {"env_count": 0, "args_count": 0}})


@pytest.mark.parametrize(("arg", "result"), [
    ({"values": [1, 2, 3.5]}, {"count": 3, "sum": 6.5, "min": 1, "max": 3.5}),
    ({"a": "12", "b": [{"c": -4}]}, {"count": 1, "sum": -4, "min": -4, "max": -4}),
    ("no numbers", {"count": 0, "sum": 0, "min": None, "max": None}),
])
def test_jsonstats_transforms(agent: Agent, arg: Any, result: dict[str, Any]) -> None:
    m = deploy(agent, "jsonstats", JSONSTATS)
    assert m["abi"] == "wasi"
    assert agent.exec("jsonstats", arg)[:2] == (200, {"result": result})


def test_jsonstats_args_list_is_one_json_value(agent: Agent) -> None:
    deploy(agent, "jsonstats-args", JSONSTATS)
    assert agent.exec("jsonstats-args", args=[1, [2, 3]])[:2] == (
        200, {"result": {"count": 3, "sum": 6, "min": 1, "max": 3}})


def test_echo_round_trips_nested_json(agent: Agent) -> None:
    deploy(agent, "echo", MIS / "echo.wasm")
    value = {"a": [1, 2.5, -3, {"b": None, "c": [True, False]}], "s": "héllo \"quoted\"\n",
             "deep": [[[[[[{"x": "y"}]]]]]], "big": 2**53, "empty": {}}
    assert agent.exec("echo", value)[:2] == (200, {"result": value})
    assert agent.exec("echo")[:2] == (200, {"result": None})


# ------------------------------------------------------------------------------ limit ranges
@pytest.mark.parametrize("limits", [
    {"timeout_ms": 30_001}, {"memory_mb": 1025}, {"fuel": 10**12 + 1},
    {"max_output_bytes": 16 * 1024 * 1024 + 1}, {"timeout_ms": 0}, {"memory_mb": 0},
])
def test_limit_out_of_range_is_400(agent: Agent, limits: dict[str, int]) -> None:
    status, body, _ = agent.deploy("limited", DOUBLE, limits=limits)
    assert status == 400, body
    assert body["error"]["code"] == "invalid_limits"
    key = next(iter(limits))
    assert key in body["error"]["message"]
    assert "limited" not in agent.module_names()


def test_limit_out_of_range_via_put_query(agent: Agent) -> None:
    status, body, _ = agent.upload("limited-put", DOUBLE, timeout_ms=60_000)
    assert status == 400, body
    assert body["error"]["code"] == "invalid_limits"


def test_limit_at_the_maximum_is_fine(agent: Agent) -> None:
    m = deploy(agent, "limit-max", DOUBLE, limits={"timeout_ms": 30_000, "memory_mb": 1024})
    assert m["limits"]["timeout_ms"] == 30_000
    assert m["limits"]["memory_mb"] == 1024


# ------------------------------------------------------------------------------ isolation
def test_misbehaving_calls_do_not_disturb_concurrent_calls(agent: Agent) -> None:
    deploy(agent, "loop-c", MIS / "loop.wasm", limits={"timeout_ms": 300})
    deploy(agent, "trap-c", MIS / "trap.wasm")
    deploy(agent, "double-c", DOUBLE)
    start = threading.Barrier(8)

    def call(name: str, arg: Any = None) -> tuple[int, Any]:
        start.wait(10)
        out = []
        for _ in range(3):
            status, body, _ = agent.exec(name, arg)
            out.append((status, body))
        return out[0] if len({str(o) for o in out}) == 1 else (0, out)

    with ThreadPoolExecutor(8) as pool:
        loops = [pool.submit(call, "loop-c") for _ in range(2)]
        traps = [pool.submit(call, "trap-c") for _ in range(2)]
        doubles = [pool.submit(call, "double-c", 21) for _ in range(4)]
        for f in doubles:
            assert f.result(30) == (200, {"result": 42})
        for f in loops:
            status, body = f.result(30)
            assert (status, body["error"]["code"]) == (504, "exec_timeout")
        for f in traps:
            status, body = f.result(30)
            assert (status, body["error"]["code"]) == (422, "trap")


def test_backpressure_answers_503_with_retry_after(agent_factory: AgentPool) -> None:
    small = agent_factory("-workers", "1", "-queue", "1")
    deploy(small, "loop", MIS / "loop.wasm", limits={"timeout_ms": 1000})
    deploy(small, "double", DOUBLE)
    n = 5
    start = threading.Barrier(n)

    def call() -> tuple[int, Any, Any]:
        start.wait(10)
        return small.exec("loop")

    with ThreadPoolExecutor(n) as pool:
        results = [f.result(30) for f in [pool.submit(call) for _ in range(n)]]
    statuses = sorted(r[0] for r in results)
    # One running, one queued: at most two are admitted, the others are refused at once.
    assert statuses.count(504) >= 1, statuses
    assert statuses.count(504) <= 2, statuses
    refused = [r for r in results if r[0] == 503]
    assert len(refused) >= 1, statuses
    assert len(refused) + statuses.count(504) == n, statuses
    for _, body, headers in refused:
        assert body["error"]["code"] == "overloaded"
        assert headers["Retry-After"] == "1"
    assert small.metric("nebula_edge_exec_rejected_total") == len(refused)
    # Once the loops are over, the agent serves again.
    assert wait_for(lambda: small.exec("double", 21)[:2] == (200, {"result": 42}), 10,
                    msg="double to be served after the overload")
