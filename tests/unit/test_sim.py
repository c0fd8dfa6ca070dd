"""The deterministic simulator on a small fleet (the large one is ``bench/fleet_sim.py``).

Each test builds a fleet of simulated agents running the real ``mesh/`` code on virtual
time, and checks what the issue asks of the mesh: same seed same run, convergence after
a partition and under loss and churn, idle cost bounded and independent of the fleet's
size, a deploy reaching everyone, an agent that refuses a version costing nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import nebula_edge
from nebula_edge.mesh import wire
from nebula_edge.sim.fleet import Fleet, member_size

N, MODULES = 40, 300


def settled(seed: int = 1, n: int = N, loss: float = 0.0) -> Fleet:
    fleet = Fleet.build(n, MODULES, seed=seed, loss=loss)
    assert fleet.run_until(fleet.members_complete, 600, step=5) is not None
    assert fleet.run_until(fleet.members_settled, 600, step=5) is not None
    return fleet


def summary(fleet: Fleet) -> tuple[object, ...]:
    return (fleet.sim.events, round(fleet.sim.now, 6),
            sorted((p, c.bytes, c.msgs) for p, c in fleet.net.sent.items()))


def test_same_seed_same_run_other_seed_other_run() -> None:
    runs = []
    for seed in (3, 3, 4):
        fleet = settled(seed)
        fleet.deploy("agent0000", "double")
        runs.append(summary(fleet))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_idle_rounds_are_small_and_do_not_grow_with_the_fleet() -> None:
    small = settled(n=20).idle(300)
    big = settled(n=80).idle(300)
    assert small.bytes_per_s < 100 and big.bytes_per_s < 100, (small, big)
    assert big.bytes_per_s <= small.bytes_per_s * 1.5


def test_a_deploy_reaches_every_agent_by_gossip_within_a_second() -> None:
    fleet = settled()
    marks, sent, _ = fleet.deploy("agent0005", "double")
    assert marks["100%"] is not None and marks["100%"] < 1.0, marks
    assert sent < 20_000  # the deployer sends to its gossip mesh, not to every agent


def test_partition_heals_and_everyone_converges() -> None:
    fleet = settled()
    took = fleet.partition(60.0, deploys=3, limit=900)
    assert took is not None, "did not converge within 900 virtual seconds of the heal"
    roots = {a.index.root() for a in fleet.live()}
    assert len(roots) == 1
    assert all(len(a.store.records(f"splitagent0000{i}")[0]) == 1 for a in fleet.live()
               for i in range(3))


def test_converges_under_loss_and_churn() -> None:
    fleet = settled(loss=0.05)
    rng = fleet.sim.rng
    gone = [fleet.agents[f"agent{i:04d}"] for i in rng.sample(range(1, N), 5)]
    for a in gone:  # killed: their peers see the connection close at once
        for peer in sorted(a.conns):
            fleet.disconnect(a, peer, trimmed=False)
        fleet.net.down.add(a.id)
        a.stop()
    fleet.deploy("agent0000", "while-down")
    fleet.run(30)
    for a in gone:  # restarted with what they held, and a new incarnation
        fleet.net.down.discard(a.id)
        a.members = type(a.members)(a.id, 2, (a.id,), fleet.sim.now)
        a.start()
        for peer in rng.sample(sorted(fleet.agents), 3):
            fleet.dial(a, peer)
    assert fleet.run_until(fleet.converged, 900, step=5) is not None
    assert all(a.store.records("while-down")[0] for a in fleet.live())


def test_an_agent_refusing_a_version_costs_the_others_nothing() -> None:
    fleet = settled()
    refuser = fleet.agents["agent0001"]
    refuser.max_module_size = 64 * 1024
    fleet.deploy("agent0000", "roomy", wasm_size=100 * 1024)
    fleet.run(60)
    assert not refuser.store.records("roomy")[0]
    assert len({a.index.root() for a in fleet.live()}) == 1, "the refuser's root differs"
    pulls0 = sum(c.by_kind.get("pull", 0) for c in fleet.net.sent.values())
    fleet.idle(300)
    assert sum(c.by_kind.get("pull", 0) for c in fleet.net.sent.values()) == pulls0


def test_the_simulator_imports_only_sans_io_code() -> None:
    pkg = Path(nebula_edge.__file__).parent
    for path in (pkg / "sim").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("nebula_edge.net", "nebula_edge.node",
                                                   "nebula_edge.store", "asyncio")), path
            if isinstance(node, ast.Import):
                assert not any(a.name in ("time", "asyncio", "socket") for a in node.names), path


def test_member_size_matches_the_encoder() -> None:
    ms = tuple(wire.Member(f"agent{i:04d}", i * 37, i % 3 != 0, (f"agent{i:04d}",) * (i % 3))
               for i in range(200))
    empty = len(wire.encode_sync_response(wire.SyncResponse("", None, ())))
    full = len(wire.encode_sync_response(wire.SyncResponse("", None, ms)))
    assert abs(sum(member_size(m) for m in ms) - (full - empty)) <= 1


@pytest.mark.parametrize("seed", [1, 2])
def test_members_spread_to_everyone(seed: int) -> None:
    fleet = settled(seed)
    assert all(len(a.members.alive()) == N - 1 for a in fleet.live())
