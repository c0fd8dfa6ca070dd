"""Health you can trust (issue 11, item 4): ``/healthz`` and ``/metrics`` tell the truth
about the mesh, with real agents.

The libp2p side is broken the way it breaks in production, from outside the process:
agents started with ``NEBULA_EDGE_TEST_HOOKS=1`` crash their trio side on SIGUSR1 (the
supervisor restarts it) and block its loop for 8 s on SIGUSR2 (the watchdog notices).
A library whose patch target changed is simulated by a ``sitecustomize`` that swaps one
py-libp2p method before the agent starts: the agent must refuse to start its mesh.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from agents import (
    SAMPLES,
    Agent,
    AgentPool,
    connected,
    p2p_addr,
    run_edge,
    wait_for,
    with_custom_section,
)

DOUBLE_BYTES = (SAMPLES / "double" / "double.wasm").read_bytes()
FAST = ("-fast", "-mdns=false")
HOOKS = {"NEBULA_EDGE_TEST_HOOKS": "1"}
CONVERGE_S = 15.0
SETTLE_S = 30.0
"""``p2p.RESTART_SETTLE_S``: how long an agent stays degraded after a restart."""


def health(agent: Agent) -> dict[str, Any]:
    status, body, _ = agent.get("/healthz")
    assert status == 200, body
    return dict(body)


def metric(agent: Agent, name: str, **labels: str) -> float:
    return agent.metric(name, **labels) or 0.0


@pytest.fixture
def pair(agent_factory: AgentPool) -> tuple[Agent, Agent]:
    """A (test hooks on) and B dialling A."""
    a = agent_factory(*FAST, mesh=True, env=HOOKS)
    b = agent_factory(*FAST, "-peer", p2p_addr(a), mesh=True)
    wait_for(lambda: connected(a, b), CONVERGE_S, msg="A and B to list each other")
    return a, b


def test_healthz_is_degraded_while_libp2p_crashes_and_ok_after_the_restart(
        pair: tuple[Agent, Agent]) -> None:
    a, b = pair
    h = health(a)
    assert h["status"] == "ok" and "problems" not in h, h
    assert h["mesh_health"]["p2p_running"] is True
    assert h["mesh_health"]["p2p_restarts"] == 0
    assert metric(a, "nebula_edge_p2p_up") == 1
    assert metric(a, "nebula_edge_p2p_restarts_total") == 0

    os.kill(a.proc.pid, signal.SIGUSR1)  # the trio side raises: trio.run() dies
    degraded = wait_for(lambda: (h := health(a))["status"] == "degraded" and h, 10,
                        msg="A's /healthz to turn degraded")
    assert any("libp2p host" in p for p in degraded["problems"]), degraded
    wait_for(lambda: health(a)["mesh_health"]["p2p_restarts"] == 1, 10,
             msg="the supervisor to restart libp2p")
    assert metric(a, "nebula_edge_p2p_restarts_total") == 1
    assert metric(a, "nebula_edge_p2p_last_restart_timestamp_seconds") > 0
    assert "injected failure" in a.log()
    # Still degraded just after the restart, although libp2p runs again.
    h = wait_for(lambda: (h := health(a))["mesh_health"]["p2p_running"] and h, 15,
                 msg="the restarted libp2p host to listen")
    assert h["status"] == "degraded", h
    assert any("restarted" in p for p in h["problems"]), h

    # The mesh works again (B redials A; gossip flows both ways) ...
    wait_for(lambda: connected(a, b), CONVERGE_S, msg="B to reconnect to the restarted A")
    status, body, _ = b.upload("after-crash", with_custom_section(DOUBLE_BYTES, "h", b"1"))
    assert status == 201, body
    wait_for(lambda: "after-crash" in a.module_names(), CONVERGE_S,
             msg="a deploy on B to reach A after its libp2p restart")
    # ... and once it has run RESTART_SETTLE_S, A says so.
    ok = wait_for(lambda: (h := health(a))["status"] == "ok" and h, SETTLE_S + 15,
                  interval=0.5, msg="A's /healthz back to ok")
    assert ok["mesh_health"]["p2p_restarts"] == 1
    assert ok["mesh_health"]["p2p_last_restart_at"] > 0
    assert health(b)["status"] == "ok"
    assert a.alive() and "Traceback" not in a.log().split("injected failure")[-1]


def test_a_blocked_libp2p_loop_is_noticed(pair: tuple[Agent, Agent]) -> None:
    a, _ = pair
    assert health(a)["status"] == "ok"
    os.kill(a.proc.pid, signal.SIGUSR2)  # the trio loop sleeps 8 s in a blocking call
    h = wait_for(lambda: (h := health(a))["status"] == "degraded" and h, 10,
                 msg="A's /healthz to report the blocked loop")
    assert any("loop blocked" in p for p in h["problems"]), h
    assert h["mesh_health"]["p2p_loop_lag_s"] >= 5
    assert metric(a, "nebula_edge_p2p_loop_lag_seconds") >= 5
    wait_for(lambda: health(a)["status"] == "ok", 15, msg="A's /healthz back to ok")
    assert metric(a, "nebula_edge_p2p_loop_stalls_total") == 1
    assert health(a)["mesh_health"]["p2p_restarts"] == 0  # noticed, not restarted


SITECUSTOMIZE = '''
import libp2p.pubsub.pubsub as _p

def _next_seqno(self):  # a "new library version" that no longer counts from .counter
    return b"\\x00" * 8

_p.Pubsub._next_seqno = _next_seqno
'''


def test_agent_refuses_to_start_its_mesh_when_a_libp2p_patch_cannot_take(
        tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    done = run_edge(tmp_path / "data", "-mesh=true", *FAST, env=env)
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "py-libp2p workarounds did not take effect" in done.stderr, done.stderr[-2000:]
    assert "Pubsub._next_seqno" in done.stderr
    assert "Traceback" not in done.stderr


def test_metrics_show_every_bound_with_its_limit(pair: tuple[Agent, Agent]) -> None:
    a, _ = pair
    text = a.metrics()
    for bound, limit in {"p2p_publish_queue": 10_000, "p2p_gossip_events": 1024,
                         "mdns_candidates": 256, "mdns_candidate_dials": 4,
                         "p2p_request_streams": 64, "p2p_request_streams_per_peer": 8}.items():
        assert f'nebula_edge_bound_limit{{bound="{bound}"}} {float(limit)}' in text, bound
        assert f'nebula_edge_bound_dropped_total{{bound="{bound}"}}' in text, bound
