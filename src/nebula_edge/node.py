"""The one place where store, sandbox, metrics (and the mesh) are assembled and run.

A ``Node`` is what the HTTP API talks to. It owns the asyncio side of the agent:
the bounded worker pool for Wasm calls (admission control: ``workers`` running plus
``queue`` waiting, beyond that ``Overloaded`` -> 503 with Retry-After), deploys,
deletes, rollbacks, and, when the mesh is on, hands every local change to it.

Methods are coroutine functions to be called on the node's event loop (not
thread-safe), except where a docstring says otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nebula_edge import __version__, keys
from nebula_edge.calllog import FOLLOWERS_MAX, LOG_ENTRIES, LOG_MODULES, CallLog
from nebula_edge.config import EdgeConfig, Limits
from nebula_edge.errors import (
    BadRequest,
    CorruptBlob,
    Forbidden,
    ModuleNotFound,
    NebulaError,
    Overloaded,
    PayloadTooLarge,
    StoreError,
)
from nebula_edge.events import EventLog
from nebula_edge.manifest import Manifest, Tombstone, check_name, parse_limits
from nebula_edge.mesh import versions
from nebula_edge.metrics import MeshFigures, Metrics, watch_mesh
from nebula_edge.sandbox import MAX_TABLES, Sandbox
from nebula_edge.store import ModuleStore
from nebula_edge.store.fsutil import DirLock
from nebula_edge.store.modules import sha256_hex
from nebula_edge.workers import Workers

if TYPE_CHECKING:
    from nebula_edge.net.service import MeshService

log = logging.getLogger(__name__)

OPEN_WARNING = ("running open: any client or peer may deploy, delete and roll back modules; "
                "start agents with -trust to accept only signed changes (docs/security.md)")


@dataclass(frozen=True)
class Signed:
    """A publisher's signed order for a change (see ``keys.py``)."""

    order: dict[str, Any]
    signature: str


@dataclass(frozen=True)
class ExecOutcome:
    body: dict[str, Any]
    peer: str
    """Peer id (or node id) of the agent that ran the call."""


class Node:
    def __init__(self, config: EdgeConfig, mesh: bool = True) -> None:
        self.config = config
        self.started_at = time.time()
        state = config.state_dir
        state.mkdir(parents=True, exist_ok=True)
        self._lock = DirLock(state)
        if not self._lock.acquire():
            raise StoreError(f"another agent is using {state} (its LOCK is held); "
                             "give this one another -port or -data")
        self.metrics = Metrics()
        self.store = ModuleStore(state, keep=config.keep_versions,
                                 max_names=config.max_modules,
                                 on_quarantine=lambda sha: self.metrics.quarantined_total.inc(),
                                 on_gc=self._forget_compiled)
        self.workers = Workers(config.workers, spare=config.wait_workers)
        self.sandbox = Sandbox(
            self.store.cache_dir, config.default_limits, config.max_limits,
            on_cache=lambda outcome: self.metrics.compile_cache_total.labels(outcome).inc(),
            table_elements=config.table_elements, lend=self.workers.lend)
        self._admitted = 0
        self.metrics.exec_in_flight.set_function(lambda: self._admitted)
        self.metrics.exec_waiting.set_function(lambda: self.workers.lending)
        for bound, value in (("workers", config.workers), ("wait_workers", config.wait_workers),
                             ("table_elements", config.table_elements),
                             ("max_tables", MAX_TABLES)):
            self.metrics.sandbox_limit.labels(bound).set(value)
        self.node_id = f"{socket.gethostname()}:{config.port}"
        self.events = EventLog()
        self.calllog = CallLog(lambda: self.node_id, on_drop=lambda reason, n:
                               self.metrics.call_log_dropped_total.labels(reason).inc(n))
        self._watch_logs()
        self._seen = {n: m.version for n in self.store.names()
                      if (m := self.store.current(n)) is not None}
        """name -> current version as last seen here: a change not made through this agent
        came from the mesh (see ``observe_store``)."""
        self._changing = 0
        """Local changes under way: their store writes are not the mesh's."""
        self.mesh: MeshService | None = None
        if mesh:
            from nebula_edge.net.service import MeshService

            self.mesh = MeshService(config, self.store, self.sandbox, self.metrics)
            self.mesh.on_change = self._mesh_changed
            watch_mesh(self.metrics, self.mesh_figures)
        self.metrics.modules.set(len(self.store.names()))

    def _watch_logs(self) -> None:
        m = self.metrics
        m.call_log_entries.set_function(self.calllog.entries_held)
        m.call_log_entries_limit.set(LOG_ENTRIES * LOG_MODULES)
        m.events.set_function(lambda: len(self.events))
        m.streams.labels("logs").set_function(self.calllog.followers)
        m.streams_limit.labels("logs").set(FOLLOWERS_MAX)

    def _mesh_changed(self, kind: str, fields: dict[str, Any]) -> None:
        """The mesh's hook (net/service.py): a peer joined or left, or versions were
        stored from a peer."""
        if kind in ("peer_joined", "peer_left"):
            self.events.record(kind, agent=fields.get("peer"))
        else:
            self.observe_store(via=fields.get("peer"))

    def observe_store(self, via: str | None = None) -> None:
        """Record as events the changes that reached the store from the mesh (deploys,
        rollbacks, deletes made on other agents) since the last look."""
        if self._changing:
            return  # a local change is half done; the next look sees the mesh's changes
        now: dict[str, int] = {}
        for name in self.store.names():
            m = self.store.current(name)
            if m is None:
                continue
            now[name] = m.version
            if self._seen.get(name) != m.version:
                kind = "rollback" if m.rollback_of is not None else "deploy"
                self.events.record(kind, at=min(m.deployed_at, time.time()), module=name,
                                   version=m.version, sha256=m.sha256, agent=m.publisher,
                                   via="mesh", **({"from": via} if via else {}))
        for name in self._seen.keys() - now.keys():
            t = self.store.tombstone(name)
            self.events.record("delete", at=min(t.deleted_at, time.time()) if t else None,
                               module=name, via="mesh", **({"agent": t.publisher} if t
                                                           else {}))
        self._seen = now

    def _local_change(self, kind: str, name: str, m: Manifest | None) -> None:
        if m is None:
            self._seen.pop(name, None)
            self.events.record(kind, module=name, agent=self.node_id)
        else:
            self._seen[name] = m.version
            self.events.record(kind, module=name, version=m.version, sha256=m.sha256,
                               agent=self.node_id, **({"rollback_of": m.rollback_of}
                                                      if m.rollback_of else {}))

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self.mesh is not None:
            await self.mesh.start()
            self.node_id = self.mesh.peer_id
        self._warming = asyncio.get_running_loop().run_in_executor(None, self._warm)

    def _warm(self) -> None:
        """Load every current module's compiled code (from the disk cache after a restart)."""
        for name in self.store.names():
            m = self.store.current(name)
            if m is None:
                continue
            try:
                self.sandbox.load(m, lambda m=m: self.store.read_blob(m.sha256))  # type: ignore[misc]
            except CorruptBlob:
                self._blob_corrupt(m)
            except NebulaError as e:
                log.warning("cannot load %s v%d: %s", m.name, m.version, e.message)

    def _forget_compiled(self, sha: str) -> None:
        """Thread-safe. A blob left the store: drop its compiled code from memory too
        (the store's first GC runs before the sandbox exists)."""
        sandbox: Sandbox | None = getattr(self, "sandbox", None)
        if sandbox is not None:
            sandbox.unload(sha, evict_disk=False)

    def _blob_corrupt(self, m: Manifest) -> None:
        """Thread-safe. A blob failed verification (the store has quarantined it)."""
        self.sandbox.unload(m.sha256)
        if self.mesh is not None:
            self.mesh.blob_lost(m)

    async def close(self) -> None:
        if self.mesh is not None:
            await self.mesh.stop()
        # Queued calls are dropped; running ones end by their deadline, which needs the
        # epoch ticker: stop it only once they are done.
        await asyncio.get_running_loop().run_in_executor(None, self.workers.shutdown)
        self.sandbox.close()
        self._lock.release()

    # ------------------------------------------------------------------ deploy
    async def deploy(self, name: str, wasm: bytes, *, abi: str | None = None,
                     export: str | None = None, limits: Limits | None = None,
                     signed: Signed | None = None) -> Manifest:
        check_name(name)
        if len(wasm) > self.config.max_module_size:
            raise PayloadTooLarge(f"module is {len(wasm)} bytes; this agent accepts at most "
                                  f"{self.config.max_module_size}")
        loop = asyncio.get_running_loop()
        self._changing += 1
        try:
            m = await loop.run_in_executor(None, self._deploy_sync, name, wasm, abi, export,
                                           limits or Limits(), signed)
        finally:
            self._changing -= 1
        self.metrics.deploys_total.labels("api").inc()
        self.metrics.modules.set(len(self.store.names()))
        log.info("deployed %s v%d (%s, %d bytes, abi %s)", m.name, m.version, m.sha256[:12],
                 m.size, m.abi)
        self._local_change("deploy", m.name, m)
        if self.mesh is not None:
            self.mesh.announce(m)
        return m

    def _deploy_sync(self, name: str, wasm: bytes, abi: str | None, export: str | None,
                     limits: Limits, signed: Signed | None) -> Manifest:
        self._precheck(signed, "deploy")
        if name not in self.store.names() and len(self.store.names()) >= self.config.max_modules:
            raise PayloadTooLarge(f"this agent keeps at most {self.config.max_modules} modules")
        self.sandbox.effective_limits(limits)  # range check before any work
        sha = sha256_hex(wasm)
        self.store.pin(sha)
        try:
            chosen_abi, chosen_export = self.sandbox.inspect(wasm, name, abi, export, sha)
            self.store.put_blob(wasm, expect_sha=sha)
        finally:
            self.store.unpin(sha)  # put_blob holds its own pin from here on
        try:
            m = self._new_manifest(name, sha, len(wasm), chosen_abi, chosen_export, limits,
                                   signed=signed)
            self._check(m)
            self.store.put_manifest(m)
        finally:
            self.store.unpin(sha)
        return m

    def _precheck(self, signed: Signed | None, op: str) -> None:
        """Refuse cheaply, before any work, what ``_check`` would refuse anyway."""
        if self.config.trusted_keys and signed is None:
            raise Forbidden("this agent accepts only changes signed by a trusted key; this "
                            "one is unsigned (make a key with `nebctl keygen`)")
        if signed is not None:
            if signed.order.get("op") != op:
                raise Forbidden(f"the signed order is for {signed.order.get('op')!r}, not "
                                f"{op!r}")
            keys.check_order(signed.order, signed.signature, self.config.trusted_keys,
                             now=time.time())

    def _check(self, rec: Manifest | Tombstone) -> None:
        keys.check(rec, self.config.trusted_keys, now=time.time())

    def _when(self, name: str, signed: Signed | None) -> tuple[float, str]:
        """Time and publisher of a new change: the signed order's, or the name's hybrid
        logical clock (now, or just after the current version and any deletion if the
        clock has not passed them: ``versions.next_time``)."""
        floor = 0.0
        cur = self.store.current(name)
        if cur is not None:
            floor = cur.deployed_at
        tomb = self.store.tombstone(name)
        if tomb is not None:
            floor = max(floor, tomb.deleted_at)
        if signed is not None:
            at, key = signed.order.get("at"), signed.order.get("key")
            if not isinstance(at, int | float) or isinstance(at, bool) or not isinstance(key, str):
                raise BadRequest("a signed order needs a numeric 'at' and a 'key'")
            if at <= floor:
                raise Forbidden("the signed order is older than the module's current state")
            return float(at), key
        return versions.next_time(time.time(), floor), self.node_id

    def _new_manifest(self, name: str, sha: str, size: int, abi: Any, export: str | None,
                      limits: Limits, rollback_of: int | None = None,
                      signed: Signed | None = None, restores: str | None = None) -> Manifest:
        at, publisher = self._when(name, signed)
        return Manifest(name=name, version=self.store.next_version(name), sha256=sha, size=size,
                        abi=abi, export=export, limits=limits, deployed_at=at,
                        publisher=publisher, rollback_of=rollback_of, restores=restores,
                        signature=signed.signature if signed else None,
                        order=signed.order if signed else None)

    async def delete(self, name: str, signed: Signed | None = None) -> Tombstone:
        check_name(name)
        self._precheck(signed, "delete")
        cur = self.store.current(name)
        if cur is None:
            raise ModuleNotFound(f"no module named {name!r}")
        at, publisher = self._when(name, signed)
        t = Tombstone(name, at, publisher, signed.signature if signed else None,
                      signed.order if signed else None)
        self._check(t)
        self._changing += 1
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.store.put_tombstone, t)
        finally:
            self._changing -= 1
        self.metrics.modules.set(len(self.store.names()))
        log.info("deleted %s", name)
        self._local_change("delete", name, None)
        if self.mesh is not None:
            self.mesh.announce(t)
        return t

    async def rollback(self, name: str, signed: Signed | None = None,
                       restores: str | None = None) -> Manifest:
        """Make an older version current again, as a new version with its bytes: the one
        named by id (``restores``: the signed order's, or the caller's when unsigned),
        else the previous one. The new manifest records which version it restores."""
        check_name(name)
        self._precheck(signed, "rollback")
        vs = self.store.versions(name)
        if not vs:
            raise ModuleNotFound(f"no module named {name!r}")
        if len(vs) < 2:
            raise ModuleNotFound(f"{name} has no previous version to roll back to")
        prev = vs[-2]
        want = restores
        if signed is not None:
            want = signed.order.get("restores")
            if not isinstance(want, str):
                raise Forbidden("a signed rollback order must name the version it restores "
                                "by id (field 'restores'; nebctl -rollback signs it)")
        if want is not None:
            match = [v for v in vs[:-1] if v.id == want]
            if not match:
                kept = ", ".join(f"v{v.version} {v.id}" for v in reversed(vs[:-1]))
                raise ModuleNotFound(f"{name} has no kept older version with id "
                                     f"{want[:16]!r} on this agent (kept: {kept})")
            prev = match[0]
        limits = prev.limits
        if signed is not None and "limits" in signed.order:
            limits = parse_limits(signed.order["limits"])  # the signer's, checked below
        m = self._new_manifest(name, prev.sha256, prev.size, prev.abi, prev.export, limits,
                               rollback_of=prev.version, signed=signed, restores=prev.id)
        self._check(m)
        self._changing += 1
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.store.put_manifest, m)
        finally:
            self._changing -= 1
        log.info("rolled %s back to v%d (%s) (now v%d, %s)", name, prev.version, prev.id,
                 m.version, m.id)
        self._local_change("rollback", name, m)
        if self.mesh is not None:
            self.mesh.announce(m)
        return m

    # ------------------------------------------------------------------ exec
    def _admit(self) -> None:
        if self._admitted >= self.config.workers + self.config.queue:
            self.metrics.exec_rejected_total.inc()
            raise Overloaded("all workers are busy and the queue is full; retry shortly",
                             retry_after=1)
        self._admitted += 1

    async def exec(self, name: str, arg: Any, args: list[Any] | None,
                   forwarded: bool = False) -> ExecOutcome:
        """Run a call here; with the mesh, a module not here yet is fetched (bounded wait)
        or the call is forwarded to a peer holding it (never when already forwarded).
        The version run is the mesh's winner: if a newer version exists that this agent
        does not hold (it refused it, or its bytes are not here yet), the call goes to a
        peer holding that version, or fails with ``version_unavailable`` -- never runs
        the older version held here."""
        check_name(name)
        m = self.store.current(name)
        mesh = self.mesh
        if mesh is not None:
            if m is None or mesh.fetcher.newer_pending(name, m):
                m = await mesh.obtain(name)
            # A newer version this agent refused, or whose fetch failed, is not waited
            # for (nor synced for, on every call): the call goes to a holder at once.
            newer = mesh.outdated(name, m) if m is not None else None
            if newer is not None and forwarded:
                raise versions.unavailable(newer, mesh.versions.refused(newer))
            if (m is None or newer is not None) and not forwarded:
                body: dict[str, Any] = {"name": name}
                if args is not None:
                    body["args"] = args
                elif arg is not None:
                    body["arg"] = arg
                result, peer = await mesh.forward(name, body, newer)
                self.metrics.exec_total.labels(name, "forwarded").inc()
                return ExecOutcome(result, peer)
        if m is None:
            raise ModuleNotFound(f"no module named {name!r}")
        self._admit()
        t0 = time.perf_counter()
        outcome = "ok"
        stderr = bytearray()
        try:
            body = await self.workers.submit(
                self._call, m, lambda: self.store.read_blob(m.sha256), arg, args, stderr)
        except NebulaError as e:
            outcome = e.code
            if isinstance(e, CorruptBlob):
                self._blob_corrupt(m)
            raise
        finally:
            self._admitted -= 1
            took = time.perf_counter() - t0
            self.metrics.exec_total.labels(name, outcome).inc()
            self.metrics.exec_duration.labels(name).observe(took)
            self.calllog.record(name, m.version, took, outcome, stderr)
        return ExecOutcome(body, self.node_id)

    def _call(self, m: Manifest, read_bytes: Any, arg: Any, args: list[Any] | None,
              stderr: bytearray) -> dict[str, Any]:
        """On a worker thread: one call, its WASI stderr appended to ``stderr``."""
        return self.sandbox.call(m, read_bytes, arg, args, stderr=stderr)

    # ------------------------------------------------------------------ views
    def module_view(self, m: Manifest) -> dict[str, Any]:
        d = m.to_json()
        d.pop("v", None)
        d["id"] = m.id  # names this version unambiguously (numbers are per-agent labels)
        d.setdefault("restores", None)
        try:
            d["limits"] = self.sandbox.effective_limits(m.limits).to_json()
        except NebulaError:  # limits over this agent's maxima: show them as they are
            d["limits"] = m.limits.to_json()
        if self.mesh is not None:
            d["peers"] = self.mesh.holders(m)
            here = [] if self.store.is_corrupt(m.sha256) else [self.node_id]
            d["holders"] = here + self.mesh.table.holders(m.sha256)
        return d

    def mesh_figures(self) -> MeshFigures | None:
        """The mesh's health figures and bounds for ``/metrics`` (None without a mesh).
        Thread-safe: every source is a thread-safe snapshot."""
        if self.mesh is None:
            return None
        p2p = self.mesh.p2p
        h = p2p.health()
        bounds = [(b.name, b.size, b.limit, b.dropped) for b in p2p.bounds()]
        events: Any = getattr(self.mesh, "_events", None)  # p2p.EventQueue
        if hasattr(events, "bound"):
            b = events.bound()
            bounds.append((b.name, b.size, b.limit, b.dropped))
        if self.mesh.mdns is not None:
            bounds += self.mesh.mdns.bounds()
        bounds += self.mesh.bounds()
        return {
            "p2p_up": int(h.running), "p2p_restarts": h.restarts,
            "p2p_last_restart": h.last_restart_at or 0.0,
            "p2p_dropped_publishes": h.dropped_publishes,
            "p2p_loop_lag": h.loop_lag_s or 0.0, "p2p_loop_stalls": h.loop_stalls,
            "candidate_dials": h.candidate_dials,
            "candidate_dial_failures": h.candidate_dial_failures,
            "requests_refused": h.requests_refused, "bounds": bounds,
            "gossip_received": h.gossip_received,
        }

    def _mesh_health(self) -> tuple[list[str], dict[str, Any] | None]:
        """Why the mesh is degraded (empty: it is not), and its figures for /healthz."""
        if self.mesh is None:
            return [], None
        h = self.mesh.p2p.health()
        sync = {o: self.metrics.registry.get_sample_value(
            "nebula_edge_sync_total", {"outcome": o}) or 0 for o in ("failed", "malformed")}
        events = getattr(self.mesh, "_events", None)
        return h.problems, {
            "p2p_running": h.running,
            "p2p_restarts": h.restarts,
            "p2p_last_restart_at": h.last_restart_at,
            "p2p_loop_lag_s": None if h.loop_lag_s is None else round(h.loop_lag_s, 3),
            "p2p_loop_stalls": h.loop_stalls,
            "dropped_publishes": h.dropped_publishes,
            "dropped_events": getattr(events, "dropped", 0),
            "sync_failures": int(sum(sync.values())),
            "mdns_candidates": h.candidates,
        }

    def health(self) -> dict[str, Any]:
        problems, mesh_health = self._mesh_health()
        return {
            "status": "degraded" if problems else "ok",
            **({"problems": problems} if problems else {}),
            **({"mesh_health": mesh_health} if mesh_health is not None else {}),
            "version": __version__,
            "node_id": self.node_id,
            "port": self.config.port,
            "modules": len(self.store.names()),
            "peers": len(self.mesh.peers()) if self.mesh is not None else 0,
            "uptime_s": round(time.time() - self.started_at, 3),
            "mesh": self.mesh is not None,
            "open": not self.config.trusted_keys,
            "trusted_keys": len(self.config.trusted_keys),
            **({} if self.config.trusted_keys else {"warning": OPEN_WARNING}),
        }
