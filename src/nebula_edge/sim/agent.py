"""One simulated agent: the real sans-IO mesh code, wired as ``net/service.py`` wires it.

Real: ``DigestIndex`` (kept up to date on each write), ``answer_sync``/``answer_pull``/
``PullSession`` (every message encoded by ``mesh/wire.py`` to count its bytes),
``Rounds`` (interval, peer choice, pacing), ``Members`` (SWIM rules), the connection
watermarks ``CONN_LOW``/``CONN_HIGH`` and the refusal rule (a version over this agent's
size limit is counted as held). Modelled: gossipsub as a flood over ``GOSSIP_DEGREE``
mesh peers per agent, the blob fetch as one request whose answer is the module's size,
verify + compile + store as ``ACCEPT_S``, and libp2p liveness probes as ``PROBE_BYTES``
per probe (``PROBES_PER_HEARTBEAT`` per ``HEARTBEAT_S``, as ``net/p2p_hardening.py``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from nebula_edge.manifest import Manifest, Tombstone, admits
from nebula_edge.mesh import wire
from nebula_edge.mesh.index import BUCKETS, DigestIndex, bucket_of
from nebula_edge.mesh.members import CONN_HIGH, CONN_LOW, Members
from nebula_edge.mesh.rounds import Rounds
from nebula_edge.mesh.sync import PullSession, answer_pull, answer_sync

if TYPE_CHECKING:
    from nebula_edge.sim.fleet import Fleet

GOSSIP_DEGREE = 6
"""gossipsub's D: each agent keeps a mesh of 6 of its connections and relays to them;
mesh links are two-way (GRAFT), between D_low = 4 and D_high = 12 (``net/p2p_hardening``)."""
GOSSIP_LOW, GOSSIP_HIGH = 4, 12
VALIDATE_S = 0.0002
"""Decode + signature check before an agent relays gossip (``_validate_gossip``)."""
ACCEPT_S = 0.004
"""sha256 + compile + store write of a small module on arrival (the agent's ``_accept``;
double.wasm compiles in ~2 ms, the store's fsync ~1-2 ms)."""
SYNC_INTERVAL_S = 10.0
"""``EdgeConfig.sync_interval_s``'s default."""
MAINTAIN_S = 2.0
"""``net/service.py``'s ``MAINTAIN_S``."""
RECONNECT_S = 30.0
"""How often an agent dials one member reported dead (Serf's reconnect_interval)."""
HEARTBEAT_S = 2.0
PROBES_PER_HEARTBEAT = 2
PROBE_BYTES = 90
"""One 8-byte ping on its stream: yamux header 12, noise tag 16, TCP/IP 52 bytes."""
REQUEST_OVERHEAD = 120
"""A request stream: multistream-select of the protocol id, yamux window updates, the
frame header."""


class SimStore:
    """An agent's records by name, copy-on-write per bucket (``fork``)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._tables: list[dict[str, tuple[tuple[Manifest, ...], Tombstone | None]]] = [
            {} for _ in range(BUCKETS)]
        self._owned = [True] * BUCKETS

    def fork(self) -> SimStore:
        child = SimStore.__new__(SimStore)
        child.keep = self.keep
        child._tables = list(self._tables)
        child._owned = [False] * BUCKETS
        self._owned = [False] * BUCKETS
        return child

    def records(self, name: str) -> tuple[list[Manifest], Tombstone | None]:
        vs, t = self._tables[bucket_of(name)].get(name, ((), None))
        return list(vs), t

    def _write(self, name: str, vs: tuple[Manifest, ...], t: Tombstone | None) -> None:
        b = bucket_of(name)
        if not self._owned[b]:
            self._tables[b] = dict(self._tables[b])
            self._owned[b] = True
        self._tables[b][name] = (vs, t)

    def wants(self, m: Manifest) -> bool:
        vs, t = self.records(m.name)
        return admits(vs, t, m, self.keep)

    def put(self, m: Manifest) -> bool:
        vs, t = self.records(m.name)
        if not admits(vs, t, m, self.keep):
            return False
        self._write(m.name, tuple(sorted([*vs, m], key=lambda v: v.key)[-self.keep:]), t)
        return True

    def put_tombstone(self, t: Tombstone) -> bool:
        vs, old = self.records(t.name)
        if old is not None and old.deleted_at >= t.deleted_at:
            return False
        self._write(t.name, tuple(m for m in vs if not t.covers(m)), t)
        return True


class SimAgent:
    def __init__(self, fleet: Fleet, pid: str, index: DigestIndex, store: SimStore,
                 incarnation: int, max_module_size: float = math.inf) -> None:
        self.fleet, self.id = fleet, pid
        self.sim, self.net = fleet.sim, fleet.net
        self.index, self.store = index, store
        self.max_module_size = max_module_size
        self.members = Members(pid, incarnation, (pid,), self.sim.now)
        self.rounds = Rounds(SYNC_INTERVAL_S)
        self.conns: set[str] = set()
        self.mesh: list[str] = []
        self.syncing: set[str] = set()
        self.fetching: set[str] = set()
        self.refused: dict[str, Manifest] = {}
        self.seen: set[str] = set()
        self.up = True
        self.epoch = 0
        """Raised when the agent stops: its pending timers see a new epoch and end."""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.up = True
        epoch = self.epoch
        self.sim.at(self.rounds.next_delay(self.members.count(), self.sim.rng),
                    lambda: self._round_timer(epoch))
        self.sim.at(MAINTAIN_S * self.sim.rng.random(), lambda: self._maintain(epoch))
        self.sim.at(HEARTBEAT_S, lambda: self.publish_member(self.members.me())
                    if epoch == self.epoch else None)

    def stop(self) -> None:
        self.up = False
        self.epoch += 1
        self.syncing.clear()
        self.fetching.clear()

    def _round_timer(self, epoch: int) -> None:
        if epoch != self.epoch:
            return
        for peer in self.rounds.pick(sorted(self.conns), self.sim.rng):
            self.sync(peer)
        self.sim.at(self.rounds.next_delay(self.members.count(), self.sim.rng),
                    lambda: self._round_timer(epoch))

    def _maintain(self, epoch: int) -> None:
        if epoch != self.epoch:
            return
        now = self.sim.now
        self.graft()
        for peer in self.members.tick(now, self.conns):
            rec = self.members.record(peer)
            if rec is not None:
                self.publish_member(rec)
        if len(self.conns) < CONN_LOW:
            candidates = [p for p in self.members.alive() if p not in self.conns]
            if candidates:
                self.fleet.dial(self, self.sim.rng.choice(candidates))
        elif len(self.conns) > CONN_HIGH:
            for peer in sorted(self.conns)[: len(self.conns) - CONN_HIGH]:
                self.fleet.disconnect(self, peer, trimmed=True)
        if int(now / RECONNECT_S) != int((now - MAINTAIN_S) / RECONNECT_S):
            dead = self.members.dead()
            if dead:
                self.fleet.dial(self, self.sim.rng.choice(dead))
        self.sim.at(MAINTAIN_S, lambda: self._maintain(epoch))

    # ------------------------------------------------------------------ connections
    def connected(self, peer: str) -> None:
        self.conns.add(peer)
        self.members.connected(peer, (peer,), self.sim.now)
        self.sync(peer)

    def graft(self) -> None:
        """gossipsub's heartbeat: below D_low, GRAFT connections up to D (two-way; a
        peer at D_high refuses)."""
        if len(self.mesh) >= GOSSIP_LOW:
            return
        spare = sorted(self.conns - set(self.mesh))
        self.sim.rng.shuffle(spare)
        for peer in spare:
            if len(self.mesh) >= GOSSIP_DEGREE:
                break
            other = self.fleet.agents[peer]
            if len(other.mesh) < GOSSIP_HIGH:
                self.mesh.append(peer)
                other.mesh.append(self.id)

    def lost(self, peer: str, trimmed: bool) -> None:
        self.conns.discard(peer)
        if peer in self.mesh:
            self.mesh.remove(peer)
        self.members.lost(peer, self.sim.now, trimmed)
        self.rounds.forget(peer)

    # ------------------------------------------------------------------ local changes
    def deploy(self, m: Manifest, wasm_size: int) -> None:
        """A deploy at this agent: stored, then announced (inline if small)."""
        self._store(m)
        self._relay(m, wasm_size, frm=None)

    def _store(self, m: Manifest) -> None:
        if self.store.put(m):
            self._touch(m.name)
            self.fleet.stored(self, m)

    def _touch(self, name: str) -> None:
        vs, t = self.store.records(name)
        refused = [m for m in self.refused.values() if m.name == name]
        self.index.update(name, [*vs, *refused], t, self.store.keep)

    def _wanted(self, m: Manifest) -> bool:
        if m.size > self.max_module_size:
            if m.id not in self.refused:
                self.refused[m.id] = m
                self._touch(m.name)
            return False
        return self.store.wants(m)

    # ------------------------------------------------------------------ membership news
    def publish_member(self, m: wire.Member) -> None:
        key = f"member:{m.peer_id}:{m.incarnation}:{m.alive}"
        self._flood(key, len(wire.encode_member_news(m)) + REQUEST_OVERHEAD,
                    lambda agent: agent.merge_members([m]), frm=None)

    def merge_members(self, listed: tuple[wire.Member, ...] | list[wire.Member]) -> None:
        before = self.members.incarnation(self.id)
        self.members.merge(listed, self.sim.now)
        if self.members.incarnation(self.id) != before:
            self.publish_member(self.members.me())  # refute at once

    def _flood(self, key: str, size: int, apply: Callable[[SimAgent], object],
               frm: str | None) -> None:
        """gossipsub's flood of a small message: relayed once, after validation."""
        self.seen.add(key)
        for peer in self.mesh:
            if peer != frm:
                self.net.send(self.id, peer, "gossip", size,
                              functools.partial(self.fleet.agents[peer].on_flood, key, size,
                                                apply, self.id))

    def on_flood(self, key: str, size: int, apply: Callable[[SimAgent], object],
                 frm: str) -> None:
        if not self.up or key in self.seen:
            return
        self.seen.add(key)
        epoch = self.epoch
        apply(self)
        self.sim.at(VALIDATE_S, lambda: self._flood(key, size, apply, frm)
                    if epoch == self.epoch else None)

    # ------------------------------------------------------------------ gossip (modelled)
    def _relay(self, m: Manifest, wasm_size: int, frm: str | None) -> None:
        self.seen.add(m.id)
        size = self.fleet.gossip_size(m, wasm_size)
        for peer in self.mesh:
            if peer != frm:
                self.net.send(self.id, peer, "gossip", size,
                              functools.partial(self.fleet.agents[peer].on_gossip, m,
                                                wasm_size, self.id))

    def on_gossip(self, m: Manifest, wasm_size: int, frm: str) -> None:
        if not self.up or m.id in self.seen:
            return
        self.seen.add(m.id)
        epoch = self.epoch
        self.sim.at(VALIDATE_S, lambda: self._relay(m, wasm_size, frm)
                    if epoch == self.epoch else None)
        if not self._wanted(m):
            return
        if wasm_size <= wire.INLINE_MAX:
            self.sim.at(VALIDATE_S + ACCEPT_S, lambda: self._store(m)
                        if epoch == self.epoch else None)
        else:
            self._fetch(m, frm)

    # ------------------------------------------------------------------ anti-entropy
    def sync(self, peer: str) -> None:
        if peer in self.syncing or not self.up:
            return
        self.syncing.add(peer)
        self.rounds.begin(peer, self.sim.now)
        req = wire.SyncRequest(self.index.root(), self.members.digest())
        target = self.fleet.agents[peer]
        self.net.request(self.id, peer, "sync", len(wire.encode_sync_request(req)) +
                         REQUEST_OVERHEAD, lambda: target.serve_sync(self.id, req),
                         lambda resp: self._synced(peer, resp, self.epoch))

    def serve_sync(self, frm: str, req: wire.SyncRequest) -> tuple[wire.SyncResponse, int]:
        resp = answer_sync(self.index, req, (self.members.digest(), self.members.listed))
        differ = resp.buckets is not None or resp.members is not None
        if differ and frm in self.conns and frm not in self.syncing \
                and not self.rounds.recent(frm, self.sim.now):
            self.sync(frm)  # their side differs: pull it too, at most once an interval
        return resp, self.fleet.response_size(self, resp)

    def _end_round(self, peer: str) -> None:
        self.syncing.discard(peer)
        self.rounds.end(peer, self.sim.now)

    def _synced(self, peer: str, resp: wire.SyncResponse | None, epoch: int) -> None:
        if epoch != self.epoch:
            return
        if resp is None:
            self._end_round(peer)
            return
        if resp.members is not None:
            self.merge_members(resp.members)
        if resp.buckets is None:
            self._end_round(peer)
            return
        self._pull(peer, PullSession.start(self.index, resp.buckets), epoch)

    def _pull(self, peer: str, session: PullSession, epoch: int) -> None:
        pull = session.next_request()
        if pull is None:
            self._end_round(peer)
            return
        data = wire.encode_pull_request(pull)
        target = self.fleet.agents[peer]

        def serve() -> tuple[wire.PullResponse, int]:
            piece = answer_pull(target.index, wire.decode_pull_request(data),
                                target.store.records)
            return piece, len(wire.encode_pull_response(piece)) + REQUEST_OVERHEAD

        def got(piece: wire.PullResponse | None) -> None:
            if epoch != self.epoch:
                return
            if piece is None:
                self._end_round(peer)
                return
            session.received(piece)
            self._take(peer, piece)
            self._pull(peer, session, epoch)

        self.net.request(self.id, peer, "pull", len(data) + REQUEST_OVERHEAD, serve, got)

    def _take(self, peer: str, piece: wire.PullResponse) -> None:
        for t in piece.tombstones:
            if self.store.put_tombstone(t):
                self._touch(t.name)
        for m in sorted(piece.manifests, key=lambda m: m.key, reverse=True):
            if self._wanted(m):
                self._fetch(m, peer)

    def _fetch(self, m: Manifest, peer: str) -> None:
        if m.id in self.fetching:
            return
        self.fetching.add(m.id)
        epoch = self.epoch

        def got(size: int | None) -> None:
            if epoch != self.epoch:
                return
            self.fetching.discard(m.id)
            if size is not None:
                self.sim.at(ACCEPT_S, lambda: self._store(m) if epoch == self.epoch else None)

        self.net.request(self.id, peer, "blob", 64 + REQUEST_OVERHEAD,
                         lambda: (m.size, m.size + REQUEST_OVERHEAD), got)
