"""API access control (`-token`, `-exec-token`) and slow clients (`-header-timeout`,
`-body-timeout`), against real agents."""

from __future__ import annotations

import os
import socket
import time

from agents import HOST, SAMPLES, AgentPool, run_nebctl

DOUBLE = SAMPLES / "double" / "double.wasm"
AUTH = {"Authorization": "Bearer s3cret"}


def test_token_guards_changes_and_optionally_exec(agent_factory: AgentPool) -> None:
    a = agent_factory("-token", "s3cret")
    status, body, _ = a.deploy("double", DOUBLE)
    assert status == 401 and body["error"]["code"] == "unauthorized", body
    status, raw, _ = a.request("PUT", "/modules/double", DOUBLE.read_bytes(),
                               {"Content-Type": "application/wasm",
                                "Authorization": "Bearer wrong"})
    assert status == 401, raw
    r = a.nebctl("-wasm", str(DOUBLE), "-name", "double")
    assert r.returncode == 1 and "unauthorized" in r.stderr, r.stderr
    assert a.module_names() == []
    # The flag, then the environment variable, as a person would use them.
    a.nebctl("-wasm", str(DOUBLE), "-name", "double", "-token", "s3cret", check=True)
    r = run_nebctl("-addr", a.url, "-delete", "double",
                   env={**os.environ, "NEBULA_EDGE_TOKEN": "s3cret"})
    assert r.returncode == 0, r.stderr
    a.nebctl("-wasm", str(DOUBLE), "-name", "double", "-token", "s3cret", check=True)
    assert a.delete("/modules/double")[0] == 401
    assert a.post("/modules/double/rollback")[0] == 401
    # Exec stays open by default.
    assert a.exec("double", 21)[:2] == (200, {"result": 42})

    b = agent_factory("-token", "s3cret", "-exec-token")
    b.nebctl("-wasm", str(DOUBLE), "-name", "double", "-token", "s3cret", check=True)
    status, body, _ = b.exec("double", 21)
    assert status == 401, body
    status, raw, _ = b.request("POST", "/exec", b'{"name":"double","arg":21}', AUTH)
    assert (status, raw) == (200, b'{"result":42}')


def connect(port: int) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=10)
    s.settimeout(10)
    return s


def test_slow_clients_are_cut_off_and_the_agent_keeps_serving(
        agent_factory: AgentPool) -> None:
    a = agent_factory("-header-timeout", "1", "-body-timeout", "1")
    a.nebctl("-wasm", str(DOUBLE), "-name", "double", check=True)

    # Half a request head, then nothing: the connection is closed.
    head = connect(a.port)
    head.sendall(b"POST /exec HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    assert head.recv(4096) == b""  # closed by the agent
    assert time.monotonic() - t0 < 8
    head.close()

    # A complete head promising 100 bytes of body, and 10 of them: 408.
    body = connect(a.port)
    body.sendall(b"POST /exec HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                 b'{"name":"d')
    reply = body.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b'"request_timeout"' in reply
    body.close()

    assert a.exec("double", 21)[:2] == (200, {"result": 42})
