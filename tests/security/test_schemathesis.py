"""Schemathesis fuzzes a real agent's HTTP API from the agent's own ``/openapi.json``.

Every documented operation gets 30 generated requests that fit the document (positive)
and, where it takes any input, 30 that break it (negative). Every response must be a
4xx or 2xx (never 5xx: bad input is the client's fault), with a status, Content-Type and
body the document declares for that operation.

Before fuzzing, ``double``, ``victim`` (two versions) and ``doomed`` are deployed, and
about half of the generated cases are pointed at them, so that the fuzzer reaches real
code: ``/exec`` calls ``double`` with generated arguments, ``GET /modules/{name}`` reads
it, ``/deploy`` and ``PUT /modules/{name}`` upload real module bytes with generated names,
ABIs and limits, ``rollback`` acts on ``victim`` and ``DELETE`` on ``doomed``. After
fuzzing the agent must still be healthy, list ``double`` and answer 42 for it.

schemathesis' pytest integration is not used: its lazy loader (``from_fixture``, needed
because the schema comes from an agent started by a fixture) fails on pytest 9
(``'Function' object has no attribute '_nodeid'``, schemathesis 4.32). The cases come
from ``APIOperation.as_strategy`` under plain Hypothesis instead.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agents import SAMPLES, Agent, AgentPool
from nebula_edge.api.openapi import OPENAPI

DOUBLE = (SAMPLES / "double" / "double.wasm").read_bytes()
MAX_EXAMPLES = 30
"""Per operation and mode: 19 (operation, mode) pairs x 30 requests take 10-30 s on 2 cores."""
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def _operations() -> list[Any]:
    """(method, path, mode) for every operation of the document the agent serves; the
    negative mode only where the operation takes something that can be broken."""
    out = []
    for path, item in OPENAPI["paths"].items():
        for method, op in item.items():
            if method not in METHODS or op.get("x-nebula-stream"):
                continue  # an endless stream (the dashboard's SSE) cannot be fuzzed per request
            has_input = bool(item.get("parameters") or op.get("parameters")
                             or op.get("requestBody"))
            for mode in ("positive", "negative") if has_input else ("positive",):
                out.append(pytest.param(method.upper(), path, mode,
                                        id=f"{method.upper()} {path} {mode}"))
    return out


@pytest.fixture(scope="module")
def fuzz_agent(module_agent_factory: AgentPool) -> Agent:
    agent = module_agent_factory()
    for name in ("double", "victim", "victim", "doomed"):
        status, body, _ = agent.deploy(name, DOUBLE)
        assert status == 201, body
    return agent


@pytest.fixture(scope="module")
def api_schema(fuzz_agent: Agent) -> schemathesis.BaseSchema:
    # The tests are parametrized from the package's copy; the agent must serve that one.
    assert fuzz_agent.get("/openapi.json")[:2] == (200, OPENAPI)
    return schemathesis.openapi.from_url(fuzz_agent.url + "/openapi.json")


Retarget = Callable[[schemathesis.Case], st.SearchStrategy[schemathesis.Case]]


def _named(name: str) -> Retarget:
    def retarget(case: schemathesis.Case) -> st.SearchStrategy[schemathesis.Case]:
        case.path_parameters = {**(case.path_parameters or {}), "name": name}
        return st.just(case)
    return retarget


NUMBERS = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False))


def _set_body(case: schemathesis.Case, body: Any) -> schemathesis.Case:
    case.body = body
    return case


def _exec_double(case: schemathesis.Case) -> st.SearchStrategy[schemathesis.Case]:
    """``/exec`` of ``double`` with the generated argument, or with a number: most generated
    arguments are not numbers and would stop at the argument check, before any Wasm runs."""
    if not isinstance(case.body, dict):  # a negative case may have broken the body's type
        return st.just(case)
    generated = {**case.body, "name": "double"}
    rest = {k: v for k, v in generated.items() if k not in ("arg", "args")}
    bodies = st.one_of(st.just(generated), NUMBERS.map(lambda n: {**rest, "arg": n}))
    return bodies.map(lambda body: _set_body(case, body))


def _deploy_double(case: schemathesis.Case) -> st.SearchStrategy[schemathesis.Case]:
    """``/deploy`` of real bytes under the generated name, or under a valid one (the
    document does not constrain ``name``, so most generated names stop at the name check)."""
    if not isinstance(case.body, dict):
        return st.just(case)
    generated = {**case.body, "wasm": base64.b64encode(DOUBLE).decode()}
    bodies = st.sampled_from([generated, {**generated, "name": "fuzzed"}])
    return bodies.map(lambda body: _set_body(case, body))


def _upload_double(case: schemathesis.Case) -> st.SearchStrategy[schemathesis.Case]:
    return st.just(_set_body(case, DOUBLE))


RETARGET: dict[tuple[str, str], Retarget] = {
    ("POST", "/exec"): _exec_double,
    ("POST", "/deploy"): _deploy_double,
    ("PUT", "/modules/{name}"): _upload_double,
    ("GET", "/modules/{name}"): _named("double"),
    ("DELETE", "/modules/{name}"): _named("doomed"),
    ("POST", "/modules/{name}/rollback"): _named("victim"),
}
"""How about half of an operation's cases are pointed at a deployed module."""


@pytest.mark.parametrize(("method", "path", "mode"), _operations())
def test_fuzz_operation(api_schema: schemathesis.BaseSchema, method: str, path: str,
                        mode: str) -> None:
    """No 5xx, and status, Content-Type and body as documented, for generated requests."""
    operation = api_schema[path][method]
    generated = operation.as_strategy(generation_mode=GenerationMode(mode))
    retarget = RETARGET.get((method, path))
    cases = generated if retarget is None else st.one_of(generated, generated.flatmap(retarget))

    @given(case=cases)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate, Phase.shrink],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS, timeout=30)

    fuzz()


def test_agent_survives_fuzzing(fuzz_agent: Agent) -> None:
    assert fuzz_agent.alive()
    status, body, _ = fuzz_agent.get("/healthz")
    assert (status, body["status"]) == (200, "ok"), body
    assert fuzz_agent.exec("double", 21)[:2] == (200, {"result": 42})
    assert "double" in fuzz_agent.module_names()
    assert "Traceback" not in fuzz_agent.log()
