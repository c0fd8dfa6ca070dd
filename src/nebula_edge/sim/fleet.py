"""A simulated fleet and the measurements ``bench/fleet_sim.py`` prints.

``Fleet.build(n, modules, seed)`` gives ``n`` agents that all hold the same ``modules``
small modules (one shared index and store, forked copy-on-write per agent), connected as
the real agents connect: each dials random members until it holds ``CONN_LOW``
connections, nobody accepts past ``CONN_HIGH``. Members start knowing only their direct
peers; the member lists spread by the sync rounds. Scenarios:

* ``idle(seconds)``: bytes and messages per agent per second with nothing changing;
* ``deploy(...)``: one deploy, the times at which 50/99/100 % of the live agents hold
  it, and the bytes the deploying agent sent for it;
* ``partition(...)``: split in two, deploy on both sides, heal; the time until every
  agent holds the same records (equal roots) and lists every live member;
* ``refuser``: an agent that cannot take one version (over its size limit).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from nebula_edge.config import Limits
from nebula_edge.manifest import Manifest
from nebula_edge.mesh import wire
from nebula_edge.mesh.index import DigestIndex
from nebula_edge.mesh.members import CONN_HIGH, CONN_LOW
from nebula_edge.sim.agent import (
    HEARTBEAT_S,
    PROBE_BYTES,
    PROBES_PER_HEARTBEAT,
    REQUEST_OVERHEAD,
    SimAgent,
    SimStore,
)
from nebula_edge.sim.net import Network, Sim

KEEP = 5


def module(name: str, at: float, size: int = 200, tag: str = "0") -> Manifest:
    """A small signed-looking module version (sha256 from its name, time and tag)."""
    sha = hashlib.sha256(f"{name}:{at}:{tag}".encode()).hexdigest()
    return Manifest(name=name, version=1, sha256=sha, size=size, abi="export", export="f",
                    limits=Limits(), deployed_at=at, publisher="ed25519:sim")


def member_size(m: wire.Member) -> int:
    """Bytes of one member in a sync answer's JSON, without encoding it (the unit tests
    check it against ``wire.encode_sync_response``)."""
    return 41 + (not m.alive) + len(m.peer_id) + len(str(m.incarnation)) + sum(
        len(a) + 3 for a in m.addrs) - (1 if m.addrs else 0)


@dataclass
class Rates:
    bytes_per_s: float
    msgs_per_s: float
    max_bytes_per_s: float
    probe_bytes_per_s: float


class Fleet:
    def __init__(self, seed: int, latency: float = 0.001, loss: float = 0.0) -> None:
        self.sim = Sim(seed)
        self.net = Network(self.sim, latency=latency, loss=loss)
        self.agents: dict[str, SimAgent] = {}
        self.stored_at: dict[str, dict[str, float]] = {}
        self.watch: set[str] = set()
        """Manifest ids whose arrival times are recorded (the deploys being measured)."""
        self._gossip_sizes: dict[tuple[str, int], int] = {}

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, n: int, modules: int, seed: int = 1, latency: float = 0.001,
              loss: float = 0.0) -> Fleet:
        fleet = cls(seed, latency, loss)
        index, store = DigestIndex(), SimStore(KEEP)
        for i in range(modules):
            m = module(f"mod{i:05d}", 1000.0)
            store.put(m)
            index.update(m.name, [m], None, KEEP)
        for i in range(n):
            pid = f"agent{i:04d}"
            fleet.agents[pid] = SimAgent(fleet, pid, index.fork(), store.fork(), incarnation=1)
        ids = sorted(fleet.agents)
        for pid in ids:
            a = fleet.agents[pid]
            tries = 0
            while len(a.conns) < min(CONN_LOW, n - 1) and tries < 4 * CONN_LOW:
                tries += 1
                fleet.dial(a, fleet.sim.rng.choice(ids))
        for pid in ids:
            fleet.agents[pid].graft()
        for pid in ids:
            fleet.agents[pid].start()
        return fleet

    def dial(self, a: SimAgent, peer: str) -> bool:
        b = self.agents.get(peer)
        if b is None or b is a or peer in a.conns or not b.up or not a.up \
                or not self.net.reachable(a.id, peer) or len(b.conns) >= CONN_HIGH:
            return False
        a.connected(peer)
        b.connected(a.id)
        return True

    def disconnect(self, a: SimAgent, peer: str, trimmed: bool) -> None:
        b = self.agents[peer]
        a.lost(peer, trimmed)
        b.lost(a.id, trimmed)  # a trim says goodbye first (wire "bye"): not a failure

    # ------------------------------------------------------------------ sizes
    def gossip_size(self, m: Manifest, wasm_size: int) -> int:
        key = (m.id, wasm_size)
        if key not in self._gossip_sizes:
            inline = bytes(wasm_size) if wasm_size <= wire.INLINE_MAX else None
            self._gossip_sizes[key] = len(wire.encode_gossip(wire.announce_for(m, inline))) \
                + REQUEST_OVERHEAD
        return self._gossip_sizes[key]

    def response_size(self, a: SimAgent, resp: wire.SyncResponse) -> int:
        """Encoded size of a sync answer; the member list's part from ``member_size``
        (encoding 1,000 members every round would dominate the simulator's own time)."""
        size = len(wire.encode_sync_response(wire.SyncResponse(resp.digest, resp.buckets)))
        if resp.members is not None:
            size += sum(member_size(m) for m in resp.members)
        return size + REQUEST_OVERHEAD

    # ------------------------------------------------------------------ events
    def stored(self, a: SimAgent, m: Manifest) -> None:
        if m.id in self.watch:
            self.stored_at.setdefault(m.id, {})[a.id] = self.sim.now

    def live(self) -> list[SimAgent]:
        return [a for a in self.agents.values() if a.up]

    def converged(self) -> bool:
        """Every live agent has the same root and lists every other live agent."""
        live = self.live()
        roots = {a.index.root() for a in live}
        return len(roots) == 1 and all(a.members.count() == len(live) for a in live)

    def members_settled(self) -> bool:
        """Every live agent has the same member digest (idle rounds carry no lists)."""
        return len({a.members.digest() for a in self.live()}) == 1

    def members_complete(self) -> bool:
        live = self.live()
        return all(len(a.members.alive()) == len(live) - 1 for a in live)

    def run(self, seconds: float) -> None:
        self.sim.run_until(self.sim.now + seconds)

    def run_until(self, cond: object, limit: float, step: float = 1.0) -> float | None:
        """Advance in ``step``s until ``cond()``; the time it took, or None."""
        assert callable(cond)
        t0 = self.sim.now
        while self.sim.now - t0 < limit:
            if cond():
                return self.sim.now - t0
            self.sim.run_until(self.sim.now + step)
        return self.sim.now - t0 if cond() else None

    # ------------------------------------------------------------------ scenarios
    def idle(self, seconds: float) -> Rates:
        before = {p: (c.bytes, c.msgs) for p, c in self.net.sent.items()}
        self.run(seconds)
        per = []
        msgs = 0
        for pid in self.agents:
            c = self.net.counters(pid)
            b0, m0 = before.get(pid, (0, 0))
            per.append(c.bytes - b0)
            msgs += c.msgs - m0
        n = len(self.agents)
        # Liveness probes: each agent sends PROBES_PER_HEARTBEAT a heartbeat and answers
        # as many on average.
        probe = 2 * PROBES_PER_HEARTBEAT * PROBE_BYTES / HEARTBEAT_S
        return Rates(sum(per) / n / seconds, msgs / n / seconds, max(per) / seconds, probe)

    def deploy(self, at: str, name: str, wasm_size: int = 200, limit: float = 60.0
               ) -> tuple[dict[str, float | None], int, Manifest]:
        """Deploy at agent ``at``; (time to 50/99/100 % of live agents, bytes the deployer
        sent in that time, the manifest)."""
        a = self.agents[at]
        m = module(name, 2000.0 + self.sim.now, wasm_size, tag="deploy")
        self.watch.add(m.id)
        sent0 = self.net.counters(at).by_kind.get("gossip", 0)
        t0 = self.sim.now
        a.deploy(m, wasm_size)
        live = len(self.live())
        marks: dict[str, float | None] = {"50%": None, "99%": None, "100%": None}

        def held() -> int:
            return len(self.stored_at.get(m.id, {}))

        for label, frac in (("50%", 0.5), ("99%", 0.99), ("100%", 1.0)):
            need = math.ceil(frac * live)
            took = self.run_until(lambda need=need: held() >= need,
                                  limit - (self.sim.now - t0), step=0.001)
            if took is None:
                break
            marks[label] = self.sim.now - t0
        sent = self.net.counters(at).by_kind.get("gossip", 0) - sent0
        return marks, sent, m

    def partition(self, seconds: float, deploys: int = 5, limit: float = 1800.0
                  ) -> float | None:
        """Cut the fleet in two halves for ``seconds`` (cross connections lost), deploy
        ``deploys`` modules on each side, heal, and return the time from the heal until
        ``converged()``."""
        ids = sorted(self.agents)
        half = set(ids[: len(ids) // 2])
        for pid in ids:
            self.net.side[pid] = 0 if pid in half else 1
        for pid in ids:
            a = self.agents[pid]
            for peer in sorted(a.conns):
                if (peer in half) != (pid in half):
                    a.lost(peer, trimmed=False)
        for i in range(deploys):
            for side in (ids[0], ids[-1]):
                self.agents[side].deploy(module(f"split{side}{i}", 3000.0 + self.sim.now + i),
                                         200)
        self.run(seconds)
        self.net.side.clear()
        return self.run_until(self.converged, limit, step=1.0)
