"""The mesh's winner is what runs (issue 11): an agent that cannot hold the current
version of a name never answers with the older version it still holds. It forwards the
call to a peer holding the current version, or answers 503 ``version_unavailable``.

Real ``edge`` processes on 127.0.0.1, ``-fast`` timers, no mDNS (``-peer`` wiring).
"""

from __future__ import annotations

from agents import SAMPLES, AgentPool, connected, p2p_addr, peer_id, wait_for

DOUBLE = SAMPLES / "double" / "double.wasm"
CALC = SAMPLES / "misbehave" / "calc.wasm"
FAST = ("-fast", "-mdns=false")
CONVERGE_S = 15.0


def test_an_agent_that_refuses_v2_forwards_or_refuses_never_answers_v1(
        agent_factory: AgentPool) -> None:
    """A runs with default maxima; B and C allow at most 2 s per call. v1 (double) fits
    everyone; v2 (calc's add, asking for 5 s) fits only A. B and C keep v1 on disk but
    must not run it: B's calls go to A (never to C, which holds only v1 too), and once A
    is gone they are refused with version_unavailable."""
    a = agent_factory(*FAST, mesh=True)
    b = agent_factory(*FAST, "-max-timeout", "2000", "-peer", p2p_addr(a), mesh=True)
    c = agent_factory(*FAST, "-max-timeout", "2000", "-peer", p2p_addr(a), "-peer",
                      p2p_addr(b), mesh=True)
    wait_for(lambda: connected(a, b) and connected(a, c) and connected(b, c), CONVERGE_S,
             msg="three agents connected")

    a.nebctl("-wasm", str(DOUBLE), "-name", "fn", check=True)
    for agent in (b, c):
        wait_for(lambda agent=agent: agent.exec("fn", 21)[:2] == (200, {"result": 42})
                 and "fn" in agent.module_names(), CONVERGE_S, msg=f"v1 held by {agent}")
        assert agent.exec("fn", 21)[2]["X-Nebula-Peer"] == peer_id(agent)  # runs it itself

    a.nebctl("-wasm", str(CALC), "-name", "fn", "-export", "add", "-timeout", "5000",
             check=True)
    for agent in (b, c):
        wait_for(lambda agent=agent: (agent.metric("nebula_edge_peer_refused_total",
                                                   reason="over_limits") or 0) >= 1,
                 CONVERGE_S, msg=f"{agent} to refuse v2")
        assert agent.get("/modules/fn")[1]["current"]["version"] == 1  # v1 still on disk

    ran = {agent: agent.metric("nebula_edge_exec_total", module="fn", outcome="ok")
           for agent in (b, c)}
    for _ in range(5):
        for agent in (b, c):
            status, body, headers = agent.exec("fn", args=[2, 3])
            assert (status, body) == (200, {"result": 5}), (agent, status, body)
            assert headers["X-Nebula-Peer"] == peer_id(a)  # v2 ran on A, never on C or B
            status, body, _ = agent.exec("fn", 21)  # what v1 would answer 42 to
            assert status == 400 and body["error"]["code"] == "invalid_arguments", body
    for agent in (b, c):  # nothing ran locally; the 5 good calls each were forwarded
        assert agent.metric("nebula_edge_exec_total", module="fn", outcome="ok") == ran[agent]
        assert agent.metric("nebula_edge_exec_total", module="fn", outcome="forwarded") == 5

    a.stop()
    for agent in (b, c):
        wait_for(lambda agent=agent: agent.exec("fn", 21)[0] == 503, CONVERGE_S,
                 msg=f"{agent} to refuse once A is gone")
        for _ in range(3):
            status, body, _ = agent.exec("fn", 21)
            assert status == 503, (agent, status, body)  # never v1's 42
            err = body["error"]
            assert err["code"] == "version_unavailable" and err["version"] == 2, err
            assert "-max-memory or -max-timeout" in err["message"], err
