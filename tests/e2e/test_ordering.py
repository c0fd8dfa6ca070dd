"""Ordering that survives skewed clocks (issue 11), with real agents.

A publisher whose clock is a day ahead is faked with a signed order: a manifest dated
now + 1 day, signed by the key the agents trust, is put straight into one agent's store
(as a key holder publishing directly would). The others must hold it back however often
sync offers it, and correctly clocked deploys, rollbacks and deletes of the same name
must work as if it were not there.
"""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

from agents import (
    SAMPLES,
    Agent,
    AgentPool,
    connected,
    free_port,
    p2p_addr,
    run_nebctl,
    wait_for,
    with_custom_section,
)
from nebula_edge import keys
from nebula_edge.config import Limits
from nebula_edge.manifest import Manifest, Tombstone, canonical
from nebula_edge.store import ModuleStore

DOUBLE = SAMPLES / "double" / "double.wasm"
CALC = SAMPLES / "misbehave" / "calc.wasm"
FAST = ("-fast", "-mdns=false")
CONVERGE_S = 15.0
DAY_S = 86_400.0


def future_manifest(key: Path, name: str, wasm: bytes, export: str,
                    ahead: float = DAY_S) -> Manifest:
    """A deploy of ``wasm`` as ``name`` signed by ``key``, dated ``ahead`` s from now."""
    priv = keys.load_private(key)
    pub = keys.public_key_str(priv)
    sha = hashlib.sha256(wasm).hexdigest()
    at = time.time() + ahead
    order = {"op": "deploy", "name": name, "sha256": sha, "size": len(wasm), "abi": None,
             "export": export, "limits": {}, "at": at, "key": pub}
    return Manifest(name=name, version=9, sha256=sha, size=len(wasm), abi="export",
                    export=export, limits=Limits(), deployed_at=at, publisher=pub,
                    signature=keys.sign(priv, order), order=order)


def future_tombstone(key: Path, name: str) -> Tombstone:
    """A deletion of ``name`` signed by ``key``, dated a day from now."""
    priv = keys.load_private(key)
    pub = keys.public_key_str(priv)
    at = time.time() + DAY_S
    order = {"op": "delete", "name": name, "at": at, "key": pub}
    return Tombstone(name, at, pub, keys.sign(priv, order), order)


def signed_headers(m: Manifest) -> dict[str, str]:
    assert m.order is not None and m.signature is not None
    return {"X-Nebula-Order": base64.b64encode(canonical(m.order)).decode(),
            "X-Nebula-Signature": m.signature}


def current(agent: Agent, name: str) -> dict[str, object] | None:
    status, body, _ = agent.get(f"/modules/{name}")
    return body["current"] if status == 200 else None


def test_a_day_ahead_order_does_not_freeze_the_name(agent_factory: AgentPool,
                                                    tmp_path: Path) -> None:
    key = tmp_path / "publisher.key"
    run_nebctl("keygen", "-key", str(key), check=True)
    pub = key.with_suffix(".pub").read_text().strip()
    trust = ("-trust", pub)

    # C's store holds the future-dated version before C starts (C trusts the same key:
    # the record is validly signed; only its date is wrong).
    c_port, c_root = free_port(), tmp_path / "c"
    calc = CALC.read_bytes()
    future = future_manifest(key, "fn", calc, "add")
    store = ModuleStore(c_root / str(c_port))
    store.put_blob(calc)
    assert store.put_manifest(future)
    store.unpin(future.sha256)
    assert store.put_tombstone(future_tombstone(key, "gone"))  # deletes "gone" for a day

    a = agent_factory(*FAST, *trust, mesh=True)
    b = agent_factory(*FAST, *trust, "-peer", p2p_addr(a), mesh=True)
    c = agent_factory(*FAST, *trust, "-peer", p2p_addr(a), "-peer", p2p_addr(b), mesh=True,
                      port=c_port, data_root=c_root)
    wait_for(lambda: connected(a, b) and connected(a, c) and connected(b, c), CONVERGE_S,
             msg="three agents connected")
    assert current(c, "fn") is not None and current(c, "fn")["id"] == future.id  # type: ignore[index]
    for agent in (a, b):
        for kind in ("manifest", "tombstone"):
            wait_for(lambda agent=agent, kind=kind: (agent.metric(
                "nebula_edge_held_back_total", kind=kind) or 0) >= 1,
                CONVERGE_S, msg=f"{agent} to hold back the day-ahead {kind}")
        assert current(agent, "fn") is None

    # The day-ahead deletion does not stop a deploy of its name by the clock.
    b.nebctl("-wasm", str(DOUBLE), "-name", "gone", "-key", str(key), check=True)
    for agent in (a, b):
        wait_for(lambda agent=agent: agent.exec("gone", 21)[:2] == (200, {"result": 42}),
                 CONVERGE_S, msg=f"a deploy of a name deleted a day ahead to run on {agent}")

    # A correctly clocked deploy, signed by the same key, becomes current on A and B.
    a.nebctl("-wasm", str(DOUBLE), "-name", "fn", "-key", str(key), check=True)
    for agent in (a, b):
        wait_for(lambda agent=agent: agent.exec("fn", 21)[:2] == (200, {"result": 42}),
                 CONVERGE_S, msg=f"the correctly clocked deploy to run on {agent}")
    # A second deploy, then a rollback: both by the clock, neither refused.
    b.nebctl("-wasm", str(CALC), "-name", "fn", "-export", "add", "-key", str(key),
             check=True)
    for agent in (a, b):
        wait_for(lambda agent=agent: agent.exec("fn", args=[2, 3])[:2] == (200, {"result": 5})
                 and current(agent, "fn")["deployed_at"] < time.time() + 60,  # type: ignore[index,operator]
                 CONVERGE_S, msg=f"the second deploy on {agent}")
    versions = a.get("/modules/fn")[1]["versions"]
    a.nebctl("-rollback", "fn", "-key", str(key), check=True)
    for agent in (a, b):
        wait_for(lambda agent=agent: agent.exec("fn", 21)[:2] == (200, {"result": 42}),
                 CONVERGE_S, msg=f"the rollback on {agent}")
        cur = current(agent, "fn")
        assert cur is not None
        # The rollback names what it restores by id, in the signed order, on every agent.
        assert cur["restores"] == versions[1]["id"] and cur["order"]["restores"] == cur["restores"]  # type: ignore[index]

    # Several sync rounds (2 s each with -fast) later, the future version is still not
    # adopted, and was counted once per agent however often sync offered it.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for agent in (a, b):
            ids = [v["id"] for v in agent.get("/modules/fn")[1]["versions"]]
            assert future.id not in ids
        time.sleep(0.5)
    for agent in (a, b):
        assert agent.metric("nebula_edge_held_back_total", kind="manifest") == 1

    # And a delete by the clock deletes the name on A and B.
    a.nebctl("-delete", "fn", "-key", str(key), check=True)
    for agent in (a, b):
        wait_for(lambda agent=agent: agent.exec("fn", 21)[0] == 404, CONVERGE_S,
                 msg=f"the delete on {agent}")


def test_the_api_refuses_an_order_dated_more_than_a_minute_ahead(
        agent_factory: AgentPool, tmp_path: Path) -> None:
    key = tmp_path / "publisher.key"
    run_nebctl("keygen", "-key", str(key), check=True)
    priv = keys.load_private(key)
    pub = keys.public_key_str(priv)
    a = agent_factory("-trust", pub)
    wasm = DOUBLE.read_bytes()
    for ahead, status_wanted in ((DAY_S, 403), (120, 403), (10, 201)):
        order = {"op": "deploy", "name": "fn", "sha256": hashlib.sha256(wasm).hexdigest(),
                 "size": len(wasm), "abi": None, "export": None, "limits": {},
                 "at": time.time() + ahead, "key": pub}
        headers = {"X-Nebula-Order": base64.b64encode(canonical(order)).decode(),
                   "X-Nebula-Signature": keys.sign(priv, order),
                   "Content-Type": "application/wasm"}
        status, raw, _ = a.request("PUT", "/modules/fn", wasm, headers)
        assert status == status_wanted, raw
        if status == 403:
            assert b"ahead of this agent's clock" in raw, raw


def test_a_deploy_dated_within_the_skew_does_not_block_the_next_one(
        agent_factory: AgentPool, tmp_path: Path) -> None:
    """A publisher 30 s ahead (within the minute) deploys; one with a correct clock
    deploys right after. nebctl signs a hybrid-clock time (just after the current
    version), so the second deploy is taken at once instead of refused for 30 s."""
    key = tmp_path / "publisher.key"
    run_nebctl("keygen", "-key", str(key), check=True)
    pub = key.with_suffix(".pub").read_text().strip()
    a = agent_factory(*FAST, "-trust", pub, mesh=True)
    b = agent_factory(*FAST, "-trust", pub, "-peer", p2p_addr(a), mesh=True)
    wait_for(lambda: connected(a, b), CONVERGE_S, msg="A and B connected")
    calc = CALC.read_bytes()
    ahead = future_manifest(key, "fn", calc, "add", ahead=30)
    status, raw, _ = a.request("PUT", "/modules/fn?export=add", calc, {
        **signed_headers(ahead), "Content-Type": "application/wasm"})
    assert status == 201, raw
    a.nebctl("-wasm", str(DOUBLE), "-name", "fn", "-key", str(key), check=True)
    for agent in (a, b):
        wait_for(lambda agent=agent: agent.exec("fn", 21)[:2] == (200, {"result": 42}),
                 CONVERGE_S, msg=f"the later deploy to be current on {agent}")
        cur = current(agent, "fn")
        assert cur is not None and cur["deployed_at"] > ahead.deployed_at  # type: ignore[operator]


def test_a_rollback_restores_the_version_it_names_by_id(agent_factory: AgentPool) -> None:
    """Unsigned too: ``{"restores": id}`` picks any kept older version (here the oldest,
    skipping the previous one); nebctl -rollback names the previous one by id."""
    a = agent_factory()
    assert a.upload("fn", CALC, export="add")[0] == 201
    assert a.upload("fn", DOUBLE)[0] == 201
    assert a.upload("fn", with_custom_section(DOUBLE.read_bytes(), "v3", b"x"))[0] == 201
    vs = a.get("/modules/fn")[1]["versions"]
    assert [v["version"] for v in vs] == [3, 2, 1] and len({v["id"] for v in vs}) == 3
    status, body, _ = a.post("/modules/fn/rollback", {"restores": vs[2]["id"]})
    assert status == 200, body
    m = body["module"]
    assert (m["restores"], m["rollback_of"], m["export"]) == (vs[2]["id"], 1, "add")
    assert a.exec("fn", args=[2, 3])[:2] == (200, {"result": 5})
    status, body, _ = a.post("/modules/fn/rollback", {"restores": 7})
    assert status == 400 and body["error"]["code"] == "bad_request", body
    a.nebctl("-rollback", "fn", check=True)  # back to the version below v4: v3's bytes
    cur = a.get("/modules/fn")[1]["current"]
    assert cur["restores"] == vs[0]["id"] and cur["rollback_of"] == 3
    assert a.exec("fn", 21)[:2] == (200, {"result": 42})
