"""Publisher keys end to end: `nebctl keygen`, signed changes, `-trust` at the API and
between peers (a rogue publisher in the mesh cannot inject a module)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import time
from pathlib import Path

import pytest

from agents import (
    SAMPLES,
    Agent,
    AgentPool,
    connected,
    p2p_addr,
    rejections,
    run_nebctl,
    wait_for,
)
from nebula_edge import keys
from nebula_edge.manifest import canonical

DOUBLE = SAMPLES / "double" / "double.wasm"
CALC = SAMPLES / "misbehave" / "calc.wasm"


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


def keygen(path: Path) -> str:
    r = run_nebctl("keygen", "-key", str(path), check=True)
    pub = path.with_suffix(".pub").read_text().strip()
    assert f"public key:  {pub}" in r.stdout
    return pub


@pytest.fixture(scope="module")
def trusted(keydir: Path) -> tuple[Path, str]:
    path = keydir / "trusted.key"
    return path, keygen(path)


@pytest.fixture(scope="module")
def rogue(keydir: Path) -> tuple[Path, str]:
    path = keydir / "rogue.key"
    return path, keygen(path)


def test_keygen_writes_a_private_key_only_its_owner_can_read(keydir: Path) -> None:
    path = keydir / "k.key"
    pub = keygen(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert pub.startswith("ed25519:")
    keys.parse_public_key(pub)
    again = run_nebctl("keygen", "-key", str(path))
    assert again.returncode == 2 and "exists" in again.stderr
    assert path.with_suffix(".pub").read_text().strip() == pub  # not replaced


def signed_headers(key_path: Path, order: dict[str, object]) -> dict[str, str]:
    priv = keys.load_private(key_path)
    order = {**order, "key": keys.public_key_str(priv)}
    return {"X-Nebula-Order": base64.b64encode(canonical(order)).decode(),
            "X-Nebula-Signature": keys.sign(priv, order)}


def deploy_order(wasm: bytes, name: str, at: float) -> dict[str, object]:
    return {"op": "deploy", "name": name, "sha256": hashlib.sha256(wasm).hexdigest(),
            "size": len(wasm), "abi": None, "export": None, "limits": {}, "at": at}


def put(agent: Agent, name: str, wasm: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    status, raw, _ = agent.request("PUT", f"/modules/{name}", wasm,
                                   {"Content-Type": "application/wasm", **headers})
    return status, json.loads(raw)


def test_a_locked_agent_takes_only_trusted_signed_changes(
        agent_factory: AgentPool, trusted: tuple[Path, str], rogue: tuple[Path, str]) -> None:
    key, pub = trusted
    a = agent_factory("-trust", pub)
    health = a.get("/healthz")[1]
    assert health["open"] is False and "warning" not in health
    wasm = DOUBLE.read_bytes()

    # Unsigned, through nebctl and through the JSON route: 403, nothing stored.
    r = a.nebctl("-wasm", str(DOUBLE), "-name", "double", "-unsigned")
    assert r.returncode == 1 and "forbidden" in r.stderr, r.stderr
    status, body, _ = a.deploy("double", DOUBLE)
    assert status == 403 and body["error"]["code"] == "forbidden"
    # Signed by a key the agent does not trust.
    r = a.nebctl("-wasm", str(DOUBLE), "-name", "double", "-key", str(rogue[0]))
    assert r.returncode == 1 and "does not trust" in r.stderr, r.stderr
    # A valid signature over other bytes (the order names calc.wasm's hash).
    other = deploy_order(CALC.read_bytes(), "double", time.time())
    status, body = put(a, "double", wasm, signed_headers(key, other))
    assert status == 403 and "does not describe" in body["error"]["message"], body
    # A signature that does not match its order (order edited after signing).
    h = signed_headers(key, deploy_order(wasm, "double", time.time()))
    tampered = json.loads(base64.b64decode(h["X-Nebula-Order"]))
    tampered["limits"] = {"timeout_ms": 30000}
    h["X-Nebula-Order"] = base64.b64encode(canonical(tampered)).decode()
    status, body = put(a, "double", wasm, h)
    assert status == 403 and "signature does not match" in body["error"]["message"], body
    # A replayed old order (signed an hour ago).
    status, body = put(a, "double", wasm,
                       signed_headers(key, deploy_order(wasm, "double", time.time() - 3600)))
    assert status == 403 and "replayed" in body["error"]["message"], body
    assert a.module_names() == []

    # The trusted key deploys, rolls back and deletes.
    a.nebctl("-wasm", str(DOUBLE), "-name", "double", "-key", str(key), check=True)
    a.nebctl("-wasm", str(CALC), "-name", "double", "-export", "add", "-key", str(key),
             check=True)
    assert a.exec("double", args=[2, 3])[:2] == (200, {"result": 5})
    r = a.nebctl("-rollback", "double", "-unsigned")
    assert r.returncode == 1 and "forbidden" in r.stderr
    a.nebctl("-rollback", "double", "-key", str(key), check=True)
    assert a.exec("double", 21)[:2] == (200, {"result": 42})
    current = a.get("/modules/double")[1]["current"]
    assert current["publisher"] == pub and current["order"]["op"] == "rollback"
    r = a.nebctl("-delete", "double", "-unsigned")
    assert r.returncode == 1 and "forbidden" in r.stderr
    a.nebctl("-delete", "double", "-key", str(key), check=True)
    assert a.exec("double", 21)[0] == 404


def test_an_open_agent_says_so(agent_factory: AgentPool) -> None:
    a = agent_factory()
    health = a.get("/healthz")[1]
    assert health["open"] is True and "running open" in health["warning"]
    assert "running open" in a.log()


def test_a_rogue_publisher_in_the_mesh_cannot_inject_a_module(
        agent_factory: AgentPool, trusted: tuple[Path, str], rogue: tuple[Path, str]) -> None:
    """A and B trust only K; C (a rogue agent, open) takes a module signed by another key
    and gossips it. A and B reject it, by gossip and by sync; K's module reaches all."""
    key, pub = trusted
    a = agent_factory("-fast", "-mdns=false", "-trust", pub, mesh=True)
    b = agent_factory("-fast", "-mdns=false", "-trust", pub, "-peer", p2p_addr(a), mesh=True)
    c = agent_factory("-fast", "-mdns=false", "-peer", p2p_addr(a), "-peer", p2p_addr(b),
                      mesh=True)
    wait_for(lambda: connected(a, b) and connected(a, c) and connected(b, c), 20,
             msg="three agents connected")

    c.nebctl("-wasm", str(CALC), "-name", "evil", "-export", "add", "-key", str(rogue[0]),
             check=True)
    a.nebctl("-wasm", str(DOUBLE), "-name", "double", "-key", str(key), check=True)
    for agent in (a, b, c):
        wait_for(lambda agent=agent: agent.exec("double", 21)[:2] == (200, {"result": 42}), 15,
                 msg=f"double on {agent}")
    for agent in (a, b):
        wait_for(lambda agent=agent: rejections(agent).get("untrusted", 0) >= 1, 15,
                 msg=f"{agent} counts the rogue announcement")
    # Several sync rounds (2 s each with -fast) later, still not there.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for agent in (a, b):
            assert "evil" not in agent.module_names()
            status, body, _ = agent.exec("evil", args=[1, 2])
            assert status == 404, body  # not run locally, not forwarded to C either
        time.sleep(0.5)
    assert c.exec("evil", args=[1, 2])[:2] == (200, {"result": 3})


def test_a_signed_rollback_names_the_version_it_restores(
        agent_factory: AgentPool, trusted: tuple[Path, str]) -> None:
    """The rollback order carries the id of the version to restore: without one it is
    refused with a clear message (an order signed by an older nebctl), an id this agent
    does not keep is 404 naming the kept ones, and the right one restores exactly it."""
    key, pub = trusted
    a = agent_factory("-trust", pub)
    a.nebctl("-wasm", str(DOUBLE), "-name", "double", "-key", str(key), check=True)
    a.nebctl("-wasm", str(CALC), "-name", "double", "-export", "add", "-key", str(key),
             check=True)
    versions = a.get("/modules/double")[1]["versions"]
    prev = versions[1]
    order: dict[str, object] = {"op": "rollback", "name": "double", "sha256": prev["sha256"],
                                "abi": prev["abi"], "export": prev["export"],
                                "limits": prev["limits"], "at": time.time()}

    def rollback(o: dict[str, object]) -> tuple[int, dict]:
        status, raw, _ = a.request("POST", "/modules/double/rollback", None,
                                   signed_headers(key, o))
        return status, json.loads(raw)

    status, body = rollback(order)
    assert status == 403 and "'restores'" in body["error"]["message"], body
    status, body = rollback({**order, "restores": "0" * 16})
    assert status == 404 and prev["id"] in body["error"]["message"], body
    assert a.get("/modules/double")[1]["current"]["id"] == versions[0]["id"]  # unchanged
    status, body = rollback({**order, "restores": prev["id"], "at": time.time()})
    assert status == 200, body
    m = body["module"]
    assert m["restores"] == prev["id"] and m["order"]["restores"] == prev["id"]
    assert m["rollback_of"] == prev["version"] and m["sha256"] == prev["sha256"]
    assert a.exec("double", 21)[:2] == (200, {"result": 42})
