"""The HTTP API of one real agent (mesh off): deploy, exec, inspect, delete, rollback, errors.

One agent is shared by the module; every test uses module names of its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.parse
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import wasmtime

from agents import SAMPLES, Agent, AgentPool, metric_value
from nebula_edge.api.app import make_app
from nebula_edge.config import EdgeConfig

DOUBLE = SAMPLES / "double" / "double.wasm"
CALC = SAMPLES / "misbehave" / "calc.wasm"
NOFUNC = SAMPLES / "misbehave" / "nofunc.wasm"
JSONSTATS = SAMPLES / "jsonstats" / "jsonstats.wasm"
DEFAULT_LIMITS = {"timeout_ms": 1000, "memory_mb": 64, "max_output_bytes": 1024 * 1024}
MODULE_FIELDS = {"name", "version", "sha256", "size", "abi", "export", "limits", "deployed_at",
                 "publisher", "rollback_of", "signature", "order", "id", "restores"}
TRIPLE = wasmtime.wat2wasm(
    '(module (func (export "double") (param i32) (result i32)'
    " (i32.mul (local.get 0) (i32.const 3))))")
"""Other bytes under the same export name: x * 3."""


def error_of(status: int, body: Any, expect_status: int, code: str) -> dict[str, Any]:
    assert status == expect_status, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


def deployed(agent: Agent, name: str, wasm: bytes | Path = DOUBLE, **fields: Any
             ) -> dict[str, Any]:
    status, body, _ = agent.deploy(name, wasm, **fields)
    assert status == 201, body
    return dict(body["module"])


def blobs(agent: Agent) -> list[str]:
    return sorted(p.name for p in (agent.state_dir / "blobs").iterdir())


def padded(base: bytes, size: int) -> bytes:
    """``base`` plus a custom section, ``size`` bytes in all (still a valid module)."""
    payload = size - len(base) - 1 - 2 - 2  # section id, 2-byte LEB size, name length, name
    content = b"\x01p" + b"\0" * payload
    assert 128 <= len(content) < 16384
    leb = bytes([(len(content) & 0x7F) | 0x80, len(content) >> 7])
    out = base + b"\x00" + leb + content
    assert len(out) == size
    return out


@pytest.fixture(scope="module")
def calc(agent: Agent) -> dict[str, dict[str, Any]]:
    """calc.wasm deployed once per export (named at deploy with the ``export`` field)."""
    out = {}
    for export in ("add", "mulf", "divmod", "neg", "noparams"):
        out[export] = deployed(agent, f"calc-{export}", CALC, export=export)
    return out


# ------------------------------------------------------------------------------ deploy + exec
def test_deploy_base64_then_exec_returns_exact_body(agent: Agent) -> None:
    wasm = DOUBLE.read_bytes()
    m = deployed(agent, "double", DOUBLE)
    _, health, _ = agent.get("/healthz")
    assert set(m) == MODULE_FIELDS
    assert m["name"] == "double"
    assert m["version"] == 1
    assert m["sha256"] == hashlib.sha256(wasm).hexdigest()
    assert m["size"] == len(wasm) == 74
    assert (m["abi"], m["export"]) == ("export", "double")
    assert m["limits"] == DEFAULT_LIMITS
    assert m["publisher"] == health["node_id"]
    assert m["rollback_of"] is None

    status, raw, headers = agent.request(
        "POST", "/exec", json.dumps({"name": "double", "arg": 21}).encode(),
        {"Content-Type": "application/json"})
    assert status == 200
    assert raw == b'{"result":42}'
    assert headers["Content-Type"].startswith("application/json")
    assert headers["X-Nebula-Peer"] == health["node_id"]


def test_exec_accepts_form_content_type_as_curl_d_sends(agent: Agent) -> None:
    deployed(agent, "double-form")
    status, raw, headers = agent.request(
        "POST", "/exec", b'{"name":"double-form","arg":21}',
        {"Content-Type": "application/x-www-form-urlencoded"})
    assert (status, raw) == (200, b'{"result":42}')
    assert headers.get("X-Nebula-Peer")


@pytest.mark.parametrize("ctype", ["application/wasm", "application/octet-stream"])
def test_put_raw_bytes(agent: Agent, ctype: str) -> None:
    name = "raw-" + ctype.split("/")[1]
    status, body, _ = agent.upload(name, DOUBLE, content_type=ctype)
    assert status == 201, body
    assert body["module"]["name"] == name
    assert body["module"]["version"] == 1
    assert body["module"]["size"] == 74
    assert agent.exec(name, 21)[:2] == (200, {"result": 42})


@pytest.mark.parametrize("ctype", ["text/plain", "application/json", "multipart/form-data"])
def test_put_other_content_type_is_415(agent: Agent, ctype: str) -> None:
    status, body, _ = agent.upload("raw-refused", DOUBLE, content_type=ctype)
    error_of(status, body, 415, "unsupported_media_type")
    assert "raw-refused" not in agent.module_names()


def test_put_takes_export_and_limits_from_the_query(agent: Agent) -> None:
    status, body, _ = agent.upload("calc-q", CALC, export="mulf", timeout_ms=500, memory_mb=8)
    assert status == 201, body
    m = body["module"]
    assert (m["abi"], m["export"]) == ("export", "mulf")
    assert m["limits"] == {"timeout_ms": 500, "memory_mb": 8, "max_output_bytes": 1048576}
    assert agent.exec("calc-q", args=[2.5, 4])[:2] == (200, {"result": 10.0})


@pytest.mark.parametrize(("arg", "result"), [
    (-5, -10), (-21, -42), (0, 0), (2**30, -(2**31)), (2**31 - 1, -2),
    (4294967295, -2),  # the unsigned spelling of -1
    (-(2**31), 0), (2.0, 4),
])
def test_double_numbers(agent: Agent, arg: Any, result: int) -> None:
    deployed(agent, "double-num")
    assert agent.exec("double-num", arg)[:2] == (200, {"result": result})


# ------------------------------------------------------------------------------ calc, args
@pytest.mark.parametrize(("export", "args", "raw"), [
    ("add", [2, 3], b'{"result":5}'),
    ("add", [-7, 3], b'{"result":-4}'),
    ("add", [2**63 - 1, 1], b'{"result":-9223372036854775808}'),
    ("mulf", [1.5, 4], b'{"result":6.0}'),
    ("mulf", [-0.5, 0.25], b'{"result":-0.125}'),
    ("divmod", [7, 2], b'{"result":[3,1]}'),
    ("divmod", [-7, 2], b'{"result":[-3,-1]}'),
    ("neg", [2.5], b'{"result":-2.5}'),
    ("noparams", [], b'{"result":7}'),
])
def test_calc_exports(agent: Agent, calc: dict[str, Any], export: str, args: list[Any],
                      raw: bytes) -> None:
    assert calc[export]["export"] == export
    status, body, _ = agent.request("POST", "/exec",
                                    json.dumps({"name": f"calc-{export}", "args": args}).encode())
    assert (status, body) == (200, raw)


def test_noparams_without_arg(agent: Agent, calc: dict[str, Any]) -> None:
    assert agent.exec("calc-noparams")[:2] == (200, {"result": 7})


def test_module_signature_is_shown(agent: Agent, calc: dict[str, Any]) -> None:
    status, body, _ = agent.get("/modules/calc-divmod")
    assert status == 200, body
    assert body["signature"] == "(i32, i32) -> (i32, i32)"
    assert agent.get("/modules/calc-add")[1]["signature"] == "(i64, i64) -> i64"


@pytest.mark.parametrize(("name", "body", "signature"), [
    ("calc-add", {"args": [1]}, "(i64, i64) -> i64"),
    ("calc-add", {"args": [1, 2, 3]}, "(i64, i64) -> i64"),
    ("calc-add", {"args": ["1", 2]}, "(i64, i64) -> i64"),
    ("calc-add", {"args": [True, 2]}, "(i64, i64) -> i64"),
    ("calc-add", {"args": [None, 2]}, "(i64, i64) -> i64"),
    ("calc-add", {"arg": 1}, "(i64, i64) -> i64"),
    ("calc-mulf", {"args": [{"x": 1}, 2]}, "(f64, f64) -> f64"),
    ("calc-noparams", {"arg": 5}, "() -> i32"),
    ("double-sig", {"arg": "21"}, "(i32) -> i32"),
    ("double-sig", {"arg": [21]}, "(i32) -> i32"),
    ("double-sig", {}, "(i32) -> i32"),
    ("double-sig", {"arg": 1.5}, "(i32) -> i32"),  # not integral
    ("double-sig", {"arg": 2**32}, "(i32) -> i32"),  # too big for i32
    ("double-sig", {"arg": -(2**31) - 1}, "(i32) -> i32"),  # too small for i32
    ("calc-add", {"args": [2**64, 0]}, "(i64, i64) -> i64"),  # too big for i64
    ("calc-add", {"args": [0.5, 0]}, "(i64, i64) -> i64"),
])
def test_wrong_arguments_are_400_naming_the_signature(
        agent: Agent, calc: dict[str, Any], name: str, body: dict[str, Any],
        signature: str) -> None:
    if name == "double-sig":
        deployed(agent, "double-sig")
    status, resp, _ = agent.post("/exec", {"name": name, **body})
    err = error_of(status, resp, 400, "invalid_arguments")
    assert err["signature"] == signature
    assert signature in err["message"]


# ------------------------------------------------------------------------------ refused modules
def _refused_modules() -> list[tuple[str, bytes]]:
    wasm = DOUBLE.read_bytes()
    return [
        ("garbage", b"this is not a wasm module at all"),
        ("empty", b""),
        ("truncated", wasm[:40]),
        ("header-only", wasm[:8]),
        ("nofunc", NOFUNC.read_bytes()),
        # Compiles, but imports a function no agent provides: it could never be called.
        ("unresolvable-import", bytes(wasmtime.wat2wasm(
            '(module (import "env" "g" (func)) (func (export "f") (result i32) i32.const 1))'))),
    ]


@pytest.mark.parametrize(("label", "wasm"),
                         [pytest.param(*lw, id=lw[0]) for lw in _refused_modules()])
@pytest.mark.parametrize("via", ["deploy", "put"])
def test_invalid_modules_are_400_and_nothing_is_stored(agent: Agent, label: str, wasm: bytes,
                                                       via: str) -> None:
    before = agent.get("/modules")[1]
    blobs_before = blobs(agent)
    name = f"bad-{label}-{via}"
    status, body, _ = agent.deploy(name, wasm) if via == "deploy" else agent.upload(name, wasm)
    error_of(status, body, 400, "invalid_module")
    assert agent.get("/modules")[1] == before
    assert blobs(agent) == blobs_before
    error_of(*agent.exec(name, 1)[:2], 404, "module_not_found")


@pytest.mark.parametrize("fields", [{}, {"export": "nosuch"}, {"abi": "wasi"}])
def test_calc_needs_an_existing_export(agent: Agent, fields: dict[str, Any]) -> None:
    status, body, _ = agent.deploy("calc-ambiguous", CALC, **fields)
    error_of(status, body, 400, "invalid_module")
    assert "calc-ambiguous" not in agent.module_names()


@pytest.mark.parametrize("name", ["../x", "a/b", "a" * 300, "café", "..", ".hidden", "-x",
                                  "a b", ""])
def test_invalid_names_are_400(agent: Agent, name: str) -> None:
    before = agent.get("/modules")[1]
    error_of(*agent.deploy(name, DOUBLE)[:2], 400, "invalid_name")
    if name:  # an empty path segment is another route
        error_of(*agent.upload(name, DOUBLE)[:2], 400, "invalid_name")
    error_of(*agent.exec(name, 1)[:2], 400, "invalid_name")
    assert agent.get("/modules")[1] == before


def test_name_of_128_characters_is_fine(agent: Agent) -> None:
    name = "n" * 128
    assert agent.upload(name, DOUBLE)[0] == 201
    assert agent.exec(name, 4)[:2] == (200, {"result": 8})
    error_of(*agent.upload(name + "n", DOUBLE)[:2], 400, "invalid_name")


@pytest.fixture(scope="module")
def small_agent(module_agent_factory: AgentPool) -> Agent:
    return module_agent_factory("-max-module-size", "1000")


def test_oversize_module_is_413(small_agent: Agent) -> None:
    big = JSONSTATS.read_bytes()
    error_of(*small_agent.upload("big", big)[:2], 413, "payload_too_large")
    error_of(*small_agent.deploy("big", big)[:2], 413, "payload_too_large")
    error_of(*small_agent.upload("big", padded(DOUBLE.read_bytes(), 1001))[:2], 413,
             "payload_too_large")
    error_of(*small_agent.deploy("big", padded(DOUBLE.read_bytes(), 1001))[:2], 413,
             "payload_too_large")
    assert small_agent.module_names() == []
    assert blobs(small_agent) == []
    # Exactly at the cap is fine.
    status, body, _ = small_agent.upload("edge-size", padded(DOUBLE.read_bytes(), 1000))
    assert status == 201, body
    assert body["module"]["size"] == 1000
    assert small_agent.exec("edge-size", 5)[:2] == (200, {"result": 10})


# ------------------------------------------------------------------------------ bad requests
@pytest.mark.parametrize(("path", "raw"), [
    ("/deploy", b"this is not json"),
    ("/deploy", b"[1, 2, 3]"),
    ("/deploy", b'"double"'),
    ("/deploy", b""),
    ("/exec", b"{not json"),
    ("/exec", b'[{"name": "double"}]'),
    ("/exec", b"null"),
])
def test_body_not_a_json_object_is_400(agent: Agent, path: str, raw: bytes) -> None:
    status, body, _ = agent.post(path, raw)
    error_of(status, body, 400, "bad_request")


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.mark.parametrize("body", [
    pytest.param({"wasm": _b64(DOUBLE)}, id="name-missing"),
    pytest.param({"name": None, "wasm": _b64(DOUBLE)}, id="name-null"),
    pytest.param({"name": 5, "wasm": _b64(DOUBLE)}, id="name-int"),
    pytest.param({"name": ["x"], "wasm": _b64(DOUBLE)}, id="name-list"),
])
def test_deploy_without_a_string_name_is_400(agent: Agent, body: dict[str, Any]) -> None:
    before = agent.module_names()
    status, resp, _ = agent.post("/deploy", body)
    error_of(status, resp, 400, "bad_request")
    assert agent.module_names() == before


@pytest.mark.parametrize("body", [
    pytest.param({"name": "nowasm"}, id="wasm-missing"),
    pytest.param({"name": "nowasm", "wasm": 5}, id="wasm-int"),
    pytest.param({"name": "nowasm", "wasm": "%%% not base64 %%%"}, id="wasm-not-base64"),
    pytest.param({"name": "nowasm", "wasm": _b64(DOUBLE), "colour": "red"}, id="unknown-field"),
    pytest.param({"name": "nowasm", "wasm": _b64(DOUBLE), "export": 5}, id="export-int"),
    pytest.param({"name": "nowasm", "wasm": _b64(DOUBLE), "limits": 5}, id="limits-int"),
    pytest.param({"name": "nowasm", "wasm": _b64(DOUBLE), "limits": {"cpu": 1}},
                 id="limits-unknown"),
    pytest.param({"name": "nowasm", "wasm": _b64(DOUBLE), "limits": {"timeout_ms": -1}},
                 id="limits-negative"),
    pytest.param({"name": "nowasm", "wasm": _b64(DOUBLE), "abi": "cgi"}, id="abi-unknown"),
])
def test_deploy_malformed_fields_are_400(agent: Agent, body: dict[str, Any]) -> None:
    error_of(*agent.post("/deploy", body)[:2], 400, "bad_request")
    assert "nowasm" not in agent.module_names()


@pytest.mark.parametrize("body", [
    {"arg": 1}, {"name": 5}, {"name": "double", "args": 5},
    {"name": "double", "arg": 1, "args": [1]}, {"name": "double", "argz": 1},
])
def test_exec_malformed_is_400(agent: Agent, body: dict[str, Any]) -> None:
    error_of(*agent.post("/exec", body)[:2], 400, "bad_request")


# ------------------------------------------------------------------------------ 404, 405
def test_unknown_module_is_404(agent: Agent) -> None:
    error_of(*agent.exec("no-such-module", 1)[:2], 404, "module_not_found")
    status, body, _ = agent.get("/modules/no-such-module")
    assert status == 404, body
    assert body["error"]["code"] in ("not_found", "module_not_found")
    error_of(*agent.delete("/modules/no-such-module")[:2], 404, "module_not_found")
    error_of(*agent.post("/modules/no-such-module/rollback")[:2], 404, "module_not_found")


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/nope"), ("POST", "/nope"), ("GET", "/modules/a/b/c"), ("GET", "/"),
])
def test_unknown_route_is_404_json(agent: Agent, method: str, path: str) -> None:
    status, raw, headers = agent.request(method, path)
    assert headers["Content-Type"].startswith("application/json")
    error_of(status, json.loads(raw), 404, "not_found")


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/exec"), ("DELETE", "/deploy"), ("POST", "/modules"), ("PATCH", "/modules/x"),
    ("POST", "/healthz"),
])
def test_wrong_method_is_405_json(agent: Agent, method: str, path: str) -> None:
    status, raw, headers = agent.request(method, path)
    assert headers["Content-Type"].startswith("application/json")
    error_of(status, json.loads(raw), 405, "method_not_allowed")


def test_405_names_the_allowed_methods(agent: Agent) -> None:
    # RFC 9110 15.5.6: a 405 response MUST carry an Allow header.
    status, _, headers = agent.request("GET", "/exec")
    assert status == 405
    assert "Allow" in headers, dict(headers)
    assert "POST" in headers["Allow"]


# ------------------------------------------------------------------------------ listing
def test_get_modules_and_versions_newest_first(agent: Agent) -> None:
    v1 = deployed(agent, "listed")
    v2 = deployed(agent, "listed", DOUBLE, limits={"timeout_ms": 300})
    status, body, _ = agent.get("/modules")
    assert status == 200
    listed = [m for m in body["modules"] if m["name"] == "listed"]
    assert listed == [v2]
    names = [m["name"] for m in body["modules"]]
    assert names == sorted(names)

    status, info, _ = agent.get("/modules/listed")
    assert status == 200, info
    assert info["name"] == "listed"
    assert info["signature"] == "(i32) -> i32"
    assert info["current"] == v2
    assert info["versions"] == [v2, v1]
    assert [v["version"] for v in info["versions"]] == [2, 1]
    assert v2["deployed_at"] > v1["deployed_at"]
    assert v2["limits"] == {**DEFAULT_LIMITS, "timeout_ms": 300}
    for v in info["versions"]:
        assert set(v) == MODULE_FIELDS
        assert isinstance(v["deployed_at"], float)
        assert v["sha256"] == hashlib.sha256(DOUBLE.read_bytes()).hexdigest()


def test_redeploys_count_up_and_only_five_are_kept(agent: Agent) -> None:
    for i in range(1, 8):
        m = deployed(agent, "kept", DOUBLE if i % 2 else TRIPLE)
        assert m["version"] == i
    status, info, _ = agent.get("/modules/kept")
    assert status == 200
    assert [v["version"] for v in info["versions"]] == [7, 6, 5, 4, 3]
    assert info["current"]["version"] == 7
    assert agent.exec("kept", 2)[:2] == (200, {"result": 4})  # v7 is double (odd i)


def test_delete_then_exec_is_404(agent: Agent) -> None:
    deployed(agent, "doomed")
    assert agent.exec("doomed", 1)[:2] == (200, {"result": 2})
    status, body, _ = agent.delete("/modules/doomed")
    assert status == 200, body
    assert body["deleted"] == "doomed"
    assert isinstance(body["deleted_at"], float)
    error_of(*agent.exec("doomed", 1)[:2], 404, "module_not_found")
    assert "doomed" not in agent.module_names()
    assert agent.get("/modules/doomed")[0] == 404
    error_of(*agent.delete("/modules/doomed")[:2], 404, "module_not_found")
    # The name can be used again.
    deployed(agent, "doomed", TRIPLE)
    assert agent.exec("doomed", 2)[:2] == (200, {"result": 6})


def test_rollback_makes_the_old_behaviour_current(agent: Agent) -> None:
    v1 = deployed(agent, "rolled")
    v2 = deployed(agent, "rolled", TRIPLE)
    assert v2["version"] == 2
    assert v2["sha256"] == hashlib.sha256(TRIPLE).hexdigest()
    assert agent.exec("rolled", 7)[:2] == (200, {"result": 21})

    status, body, _ = agent.post("/modules/rolled/rollback")
    assert status == 200, body
    v3 = body["module"]
    assert v3["version"] == 3
    assert v3["rollback_of"] == 1
    assert v3["sha256"] == v1["sha256"]
    assert agent.exec("rolled", 7)[:2] == (200, {"result": 14})
    info = agent.get("/modules/rolled")[1]
    assert [v["version"] for v in info["versions"]] == [3, 2, 1]
    assert info["current"]["sha256"] == v1["sha256"]


# ------------------------------------------------------------------------------ ops endpoints
def test_healthz(agent: Agent) -> None:
    status, body, _ = agent.get("/healthz")
    assert status == 200
    assert body["status"] == "ok"
    assert body["port"] == agent.port
    assert body["mesh"] is False
    assert body["peers"] == 0
    assert body["modules"] == len(agent.module_names())
    assert isinstance(body["version"], str) and body["version"]
    assert body["node_id"].endswith(f":{agent.port}")


def test_metrics(agent: Agent) -> None:
    deploys_before = agent.metric("nebula_edge_deploys_total", source="api") or 0
    deployed(agent, "metered")
    for _ in range(3):
        assert agent.exec("metered", 1)[0] == 200
    assert agent.exec("metered", "x")[0] == 400

    status, text, headers = agent.get("/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert metric_value(text, "nebula_edge_exec_total", {"module": "metered", "outcome": "ok"}) == 3
    assert metric_value(text, "nebula_edge_exec_total",
                        {"module": "metered", "outcome": "invalid_arguments"}) == 1
    assert metric_value(text, "nebula_edge_exec_duration_seconds_count", {"module": "metered"}) == 4
    assert metric_value(text, "nebula_edge_exec_duration_seconds_bucket",
              {"module": "metered", "le": "+Inf"}) == 4
    assert "# TYPE nebula_edge_exec_duration_seconds histogram" in text
    assert metric_value(text, "nebula_edge_peers") == 0
    assert metric_value(text, "nebula_edge_modules") == len(agent.module_names())
    assert metric_value(text, "nebula_edge_deploys_total", {"source": "api"}) == deploys_before + 1
    # A call of an unknown module is not a module's call.
    agent.exec("metered-nosuch", 1)
    assert agent.metric("nebula_edge_exec_total", module="metered-nosuch",
                        outcome="module_not_found") is None


def _routes_of_the_app() -> set[tuple[str, str]]:
    # make_app only reads node.config; a stand-in is enough to build the router.
    app = make_app(SimpleNamespace(config=EdgeConfig()))  # type: ignore[arg-type]
    out = set()
    for route in app.router.routes():
        if route.method == "HEAD":  # added by aiohttp for every GET
            continue
        canonical = route.resource.canonical if route.resource is not None else ""
        out.add((route.method.lower(), canonical))
    return out


def test_openapi_documents_every_route(agent: Agent) -> None:
    status, raw, headers = agent.request("GET", "/openapi.json")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    doc = json.loads(raw)
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"]
    http_methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    documented = {(method, path) for path, item in doc["paths"].items()
                  for method in item if method in http_methods}
    routes = _routes_of_the_app()
    assert ("post", "/exec") in routes and ("put", "/modules/{name}") in routes
    assert documented == routes
    for (method, path) in documented:
        op = doc["paths"][path][method]
        assert op.get("summary"), (method, path)
        assert op.get("responses"), (method, path)
    # Every $ref resolves.
    refs = {v for v in _walk(doc) if isinstance(v, str) and v.startswith("#/")}
    for ref in refs:
        node: Any = doc
        for part in ref[2:].split("/"):
            node = node[urllib.parse.unquote(part)]


def _walk(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [x for k, v in obj.items() for x in ([v] if k == "$ref" else _walk(v))]
    if isinstance(obj, list):
        return [x for v in obj for x in _walk(v)]
    return []
