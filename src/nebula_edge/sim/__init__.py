"""A deterministic simulator of the mesh: the real ``mesh/`` code on virtual time and a
virtual network (FoundationDB / TigerBeetle VOPR style).

* ``sim/net.py``: the event loop (virtual clock, a heap of events, one seeded
  ``random.Random``) and the network (latency, bandwidth, loss, partitions, agents down);
* ``sim/agent.py``: one agent: the real ``DigestIndex``, ``PullSession``/``answer_*``,
  ``Rounds`` and ``Members``, wired as ``net/service.py`` wires them, with every message
  encoded by ``mesh/wire.py`` to count its bytes;
* ``sim/fleet.py``: building a fleet and the scenarios ``bench/fleet_sim.py`` runs and
  the unit tests (``tests/unit/test_sim.py``) check.

Same seed, same run: nothing reads a clock or an unseeded random source. What is modelled
rather than run: gossipsub (a flood over each agent's mesh of ``GOSSIP_DEGREE`` peers),
libp2p's connection and probe bytes (counted per probe), the store's disk writes and the
sandbox's compile (fixed delays, named in ``sim/agent.py``).
"""
