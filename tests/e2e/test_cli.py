"""``nebctl`` as a person types it, against a real agent (mesh off)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from agents import NEBCTL, ROOT, SAMPLES, Agent, free_port, run_nebctl

DOUBLE = SAMPLES / "double" / "double.wasm"
DOUBLE_SHA = hashlib.sha256(DOUBLE.read_bytes()).hexdigest()


def ok(agent: Agent, *args: str) -> str:
    r = agent.nebctl(*args)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return r.stdout


def test_deploy_in_the_readme_form(agent: Agent) -> None:
    r = run_nebctl("-wasm", "sample/double/double.wasm", "-name", "double", "-addr", agent.url,
                   cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (f"deployed double v1 (74 bytes, sha256 {DOUBLE_SHA[:12]}, abi export, "
                        f"export double) to {agent.url}\n")
    assert r.stderr == ""
    assert agent.exec("double", 21)[:2] == (200, {"result": 42})


def test_deploy_with_double_dash_flags(agent: Agent) -> None:
    r = run_nebctl("--wasm", str(DOUBLE), "--name", "double-dd", f"--addr={agent.url}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("deployed double-dd v1 (74 bytes")
    assert agent.exec("double-dd", 4)[:2] == (200, {"result": 8})


def test_deploy_with_limits_and_export(agent: Agent) -> None:
    out = ok(agent, "-wasm", str(SAMPLES / "misbehave" / "calc.wasm"), "-name", "calc-cli",
             "-export", "add", "-timeout", "250", "-memory", "8")
    assert "abi export, export add)" in out
    _, info, _ = agent.get("/modules/calc-cli")
    assert info["current"]["limits"] == {"timeout_ms": 250, "memory_mb": 8,
                                         "max_output_bytes": 1048576}
    assert ok(agent, "-exec", "calc-cli", "-args", "[40, 2]") == "42\n"


def test_exec_prints_the_result(agent: Agent) -> None:
    ok(agent, "-wasm", str(DOUBLE), "-name", "double-x")
    assert ok(agent, "-exec", "double-x", "-arg", "21") == "42\n"
    assert ok(agent, "--exec", "double-x", "--arg", "-8") == "-16\n"
    out = json.loads(ok(agent, "-exec", "double-x", "-arg", "21", "-json"))
    assert out["result"] == 42
    assert out["peer"] == agent.get("/healthz")[1]["node_id"]


def test_exec_of_a_wasi_module_prints_its_json(agent: Agent) -> None:
    ok(agent, "-wasm", str(SAMPLES / "jsonstats" / "jsonstats.wasm"), "-name", "stats-cli")
    out = ok(agent, "-exec", "stats-cli", "-arg", '{"values": [1, 2, 3.5]}')
    assert json.loads(out) == {"count": 3, "sum": 6.5, "min": 1, "max": 3.5}


def test_list_table_and_json(agent: Agent) -> None:
    ok(agent, "-wasm", str(DOUBLE), "-name", "double-l")
    out = ok(agent, "-list")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "ABI", "EXPORT", "SIZE", "SHA256", "PEERS",
                                "DEPLOYED"]
    row = next(ln.split() for ln in lines[1:] if ln.split()[0] == "double-l")
    assert row[:7] == ["double-l", "v1", "export", "double", "74", DOUBLE_SHA[:12], "-"]
    listed = json.loads(ok(agent, "-list", "-json"))
    assert "double-l" in [m["name"] for m in listed["modules"]]
    assert listed == agent.get("/modules")[1]


def test_peers_without_a_mesh(agent: Agent) -> None:
    assert ok(agent, "-peers") == "no peers\n"
    assert json.loads(ok(agent, "-peers", "-json")) == {"peers": []}


def test_health(agent: Agent) -> None:
    out = ok(agent, "-health")
    assert "status: ok" in out.splitlines()
    assert f"port: {agent.port}" in out.splitlines()


def test_info_delete_rollback(agent: Agent) -> None:
    ok(agent, "-wasm", str(DOUBLE), "-name", "lifecycle")
    ok(agent, "-wasm", str(SAMPLES / "misbehave" / "counter.wasm"), "-name", "lifecycle")
    info = ok(agent, "-info", "lifecycle")
    lines = info.splitlines()
    assert lines[0] == "lifecycle: current v2, abi export, export counter () -> i32"
    assert lines[1].startswith("limits: ")
    assert lines[2].split()[:2] == ["VERSION", "SHA256"]
    assert [ln.split()[0] for ln in lines[3:]] == ["v2", "v1"]
    assert ok(agent, "-exec", "lifecycle") == "1\n"

    out = ok(agent, "-rollback", "lifecycle")
    assert out == "rolled lifecycle back: v3 now runs the bytes of v1\n"
    assert ok(agent, "-exec", "lifecycle", "-arg", "5") == "10\n"
    info = ok(agent, "-info", "lifecycle")
    assert info.splitlines()[0].startswith("lifecycle: current v3")
    assert info.splitlines()[3].split()[-1] == "v1"  # ROLLBACK OF column

    assert ok(agent, "-delete", "lifecycle") == "deleted lifecycle\n"
    assert "lifecycle" not in agent.module_names()
    r = agent.nebctl("-exec", "lifecycle", "-arg", "1")
    assert r.returncode == 1
    assert "module_not_found" in r.stderr


def test_agent_not_running_is_exit_2_with_a_hint() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["-list"], ["-exec", "double", "-arg", "21"],
                 ["-wasm", str(DOUBLE), "-name", "double"]):
        r = run_nebctl("-addr", url, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert f"cannot reach the agent at {url}" in r.stderr
        assert "is `edge` running?" in r.stderr
        assert "Traceback" not in r.stderr
        assert r.stdout == ""


def test_refused_deploy_is_exit_1_with_the_error_code(agent: Agent) -> None:
    r = agent.nebctl("-wasm", str(SAMPLES / "misbehave" / "nofunc.wasm"), "-name", "refused")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("nebctl: invalid_module: ")
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
    assert "refused" not in agent.module_names()
    r = agent.nebctl("-wasm", str(DOUBLE), "-name", "../escape")
    assert r.returncode == 1
    assert "invalid_name" in r.stderr


def test_bad_arguments_name_the_signature(agent: Agent) -> None:
    ok(agent, "-wasm", str(DOUBLE), "-name", "double-sig")
    r = agent.nebctl("-exec", "double-sig", "-arg", "1.5")
    assert r.returncode == 1
    assert "invalid_arguments" in r.stderr
    assert "signature: (i32) -> i32" in r.stderr


@pytest.fixture
def file_server() -> Iterator[str]:
    """The sample directory over HTTP on 127.0.0.1, from a thread."""
    handler = functools.partial(_QuietHandler, directory=str(SAMPLES))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_deploy_from_a_url(agent: Agent, file_server: str) -> None:
    out = ok(agent, "-wasm", f"{file_server}/double/double.wasm", "-name", "double-url")
    assert out.startswith(f"deployed double-url v1 (74 bytes, sha256 {DOUBLE_SHA[:12]}")
    assert agent.exec("double-url", 21)[:2] == (200, {"result": 42})
    r = agent.nebctl("-wasm", f"{file_server}/nosuch.wasm", "-name", "double-url")
    assert r.returncode == 2
    assert "cannot download" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args", [
    ["-wasm", str(DOUBLE)],
    ["-name", "double"],
    [],
    ["-exec", "double", "-args", "5"],
])
def test_usage_errors_are_exit_2(agent: Agent, args: list[str]) -> None:
    r = agent.nebctl(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.strip()
    assert "Traceback" not in r.stderr


def test_missing_file_is_exit_2(agent: Agent) -> None:
    r = agent.nebctl("-wasm", str(ROOT / "no" / "such.wasm"), "-name", "x")
    assert r.returncode == 2
    assert r.stderr.startswith("nebctl: cannot read ")


def test_nebctl_is_the_venv_script() -> None:
    assert NEBCTL.exists()
