"""The dashboard (``/ui``), its data as JSON (``/ui/state``) and as a live stream
(``/ui/events``, Server-Sent Events), and per-function logs (``/modules/{name}/logs``).

The page is one HTML file, one script and one stylesheet shipped in the package
(``api/static/``): no CDN, no build step, works offline and at phone width. It is
read-only unless the agent has a ``-token``: then it offers deploy, roll back and delete,
sent to the API with the token the person types (the API checks it, as for nebctl).

What the page shows is this agent's view of the mesh: itself and every peer the mesh
lists (``GET /peers``), what versions each holds (from sync answers), the modules with
their holders per version, call rates and latency from this agent's metrics, and the
recent events (``events.py``). A live view rebuilds the state at most once a
``TICK_S`` and when an event is recorded, and sends it only when it changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from importlib import resources
from typing import Any

from aiohttp import web

from nebula_edge.calllog import LOG_ENTRIES, TooManyFollowers
from nebula_edge.errors import BadRequest, NotFound, Overloaded
from nebula_edge.manifest import Manifest, check_name
from nebula_edge.node import Node

TICK_S = 1.0
"""A live view looks for changes (holders, rates) this often; events wake it at once."""
KEEPALIVE_S = 15.0
"""A stream with nothing new sends a comment this often, so proxies keep it open."""
UI_STREAMS_MAX = 32
"""Dashboard streams served at once: each rebuilds the state once a tick."""
RATE_WINDOW_S = 60.0
"""Calls/s, errors/s and p50/p99 are over the last minute (Grafana's usual rate window)."""
STALE_AFTER_S = 30.0
"""A connected agent that still lacks a current version this long after its deploy is
marked degraded (a stale agent; a fetch normally takes well under a second)."""
LOST_KEPT = 64
"""Agents that left are shown as lost; the newest this many are kept."""
EVENTS_SHOWN = 50
"""Events in a state snapshot (the ring keeps more: ``GET /ui/state?events=N``)."""
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}

Auth = Callable[[web.Request], None]


class Dashboard:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.streams = 0
        self.closing = asyncio.Event()
        self._samples: deque[tuple[float, dict[str, dict[str, float]]]] = deque()
        self._seen: dict[str, dict[str, Any]] = {}
        """Agent id -> its last row while it was listed (to show it as lost after)."""
        self._built: tuple[float, int, str] = (0.0, -1, "")
        """When the streams' state was last built, the event count then, and its JSON."""

    def watch(self) -> None:
        """Export the stream count and its bound in /metrics."""
        self.node.metrics.streams.labels("ui").set_function(lambda: self.streams)
        self.node.metrics.streams_limit.labels("ui").set(UI_STREAMS_MAX)

    # ------------------------------------------------------------------ call statistics
    def _sample(self, now: float) -> dict[str, dict[str, float]]:
        """Per module: calls, errors, and cumulative histogram buckets, from /metrics."""
        per: dict[str, dict[str, float]] = {}
        for fam in self.node.metrics.exec_total.collect():
            for s in fam.samples:
                if not s.name.endswith("_total"):
                    continue
                d = per.setdefault(s.labels["module"], {})
                out = s.labels["outcome"]
                d["calls"] = d.get("calls", 0.0) + s.value
                if out not in ("ok", "forwarded"):
                    d["errors"] = d.get("errors", 0.0) + s.value
        for fam in self.node.metrics.exec_duration.collect():
            for s in fam.samples:
                if s.name.endswith("_bucket"):
                    d = per.setdefault(s.labels["module"], {})
                    d["le:" + s.labels["le"]] = s.value
        if not self._samples or now - self._samples[-1][0] >= TICK_S / 2:
            self._samples.append((now, per))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.popleft()
        return per

    def _stats(self, now: float) -> dict[str, dict[str, Any]]:
        latest = self._sample(now)
        t0, first = self._samples[0]
        span = max(now - t0, 1e-9)
        out: dict[str, dict[str, Any]] = {}
        for name, d in latest.items():
            old = first.get(name, {})
            calls = d.get("calls", 0.0) - old.get("calls", 0.0)
            errors = d.get("errors", 0.0) - old.get("errors", 0.0)
            buckets = sorted(((float(k[3:]), v - old.get(k, 0.0)) for k, v in d.items()
                              if k.startswith("le:")), key=lambda b: b[0])
            windowed = len(self._samples) > 1
            out[name] = {
                "calls_total": int(d.get("calls", 0.0)),
                "errors_total": int(d.get("errors", 0.0)),
                "calls_per_s": round(calls / span, 3) if windowed else None,
                "errors_per_s": round(errors / span, 3) if windowed else None,
                "p50_ms": _quantile(0.5, buckets),
                "p99_ms": _quantile(0.99, buckets),
            }
        return out

    # ------------------------------------------------------------------ the state
    def state(self, events: int = EVENTS_SHOWN) -> dict[str, Any]:
        node = self.node
        now = time.time()
        node.observe_store()
        health = node.health()
        names = node.store.names()
        by_sha: dict[str, tuple[str, int]] = {}
        current: dict[str, Manifest] = {}
        for name in names:
            for m in node.store.versions(name):
                by_sha[m.sha256] = (name, m.version)
            cur = node.store.current(name)
            if cur is not None:
                current[name] = cur
        agents = self._agents(now, health, by_sha, current)
        live = [a for a in agents if a["status"] != "lost"]
        stats = self._stats(now)
        modules = []
        for name, m in current.items():
            versions = []
            for v in reversed(node.store.versions(name)):
                view = node.module_view(v)
                holders = view.get("holders", [node.node_id])
                versions.append({"version": v.version, "sha256": v.sha256,
                                 "deployed_at": v.deployed_at, "holders": holders})
            modules.append({
                "name": name, "version": m.version, "sha256": m.sha256, "size": m.size,
                "abi": m.abi, "export": m.export, "deployed_at": m.deployed_at,
                "publisher": m.publisher, "rollback_of": m.rollback_of,
                "agents": len(live), "held_by": len(versions[0]["holders"]),
                "versions": versions,
                **stats.get(name, {"calls_total": 0, "errors_total": 0, "calls_per_s": None,
                                   "errors_per_s": None, "p50_ms": None, "p99_ms": None}),
            })
        return {
            "agent": {"id": node.node_id, "status": health["status"],
                      "version": health["version"], "uptime_s": health["uptime_s"],
                      "open": health["open"], "token_required": bool(node.config.token)},
            "generated_at": now,
            "rate_window_s": RATE_WINDOW_S,
            "agents": agents,
            "modules": modules,
            "events": node.events.recent(events),
        }

    def _agents(self, now: float, health: dict[str, Any], by_sha: dict[str, tuple[str, int]],
                current: dict[str, Any]) -> list[dict[str, Any]]:
        node = self.node
        me = {"id": node.node_id, "self": True, "connected": True,
              "addrs": list(getattr(node.mesh, "advertise_ips", []) or []),
              "http_url": None, "connected_since": node.started_at, "last_seen": now,
              "status": "healthy" if health["status"] == "ok" else "degraded",
              "problems": health.get("problems", []),
              "holds": [{"module": n, "version": m.version} for n, ms in
                        ((n, node.store.versions(n)) for n in current) for m in ms]}
        rows = [me]
        peers = node.mesh.peers() if node.mesh is not None else []
        listed = set()
        for p in peers:
            pid = p.get("peer_id")
            if not isinstance(pid, str):
                continue
            listed.add(pid)
            rec = node.mesh.table.get(pid) if node.mesh is not None else None
            shas = rec.holds if rec is not None else set()
            holds = sorted(by_sha[s] for s in shas if s in by_sha)
            missing = [n for n, m in current.items() if m.sha256 not in shas
                       and now - m.deployed_at > STALE_AFTER_S]
            row = {"id": pid, "self": False, "connected": bool(p.get("connected", True)),
                   "addrs": p.get("addrs", []), "http_url": p.get("http_url"),
                   "connected_since": p.get("connected_since"), "last_seen": now,
                   "version": p.get("version"),
                   "status": "degraded" if missing else "healthy",
                   "problems": [f"lacks the current version of {', '.join(missing)}"]
                   if missing else [],
                   "holds": [{"module": n, "version": v} for n, v in holds]}
            rows.append(row)
            self._seen.pop(pid, None)
            self._seen[pid] = row
        for pid, row in list(self._seen.items()):
            if pid not in listed and row["status"] != "lost":
                self._seen[pid] = {**row, "status": "lost", "connected": False, "holds": [],
                                   "problems": []}
        while len(self._seen) > len(listed) + LOST_KEPT:
            old = next(p for p in self._seen if p not in listed)
            del self._seen[old]
        rows += [r for pid, r in self._seen.items() if pid not in listed]
        return rows

    # ------------------------------------------------------------------ handlers
    async def page(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=_asset("index.html"), content_type="text/html",
                            charset="utf-8", headers=_PAGE_HEADERS)

    async def asset(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["file"]
        if name not in ASSETS:
            raise NotFound(f"no dashboard asset {name!r}")
        return web.Response(body=_asset(name), content_type=ASSETS[name], charset="utf-8",
                            headers=_NO_STORE)

    async def state_json(self, request: web.Request) -> web.StreamResponse:
        n = _int_query(request, "events", EVENTS_SHOWN)
        return web.json_response(self.state(max(0, n)))

    async def events_stream(self, request: web.Request) -> web.StreamResponse:
        if self.streams >= UI_STREAMS_MAX:
            raise Overloaded(f"this agent serves at most {UI_STREAMS_MAX} dashboard streams",
                             retry_after=5)
        self.streams += 1
        flag = self.node.events.subscribe()
        try:
            resp = await _sse(request)
            last, last_sent = "", time.monotonic()
            while not self.closing.is_set():
                data = self._shared_state()
                if data != last:
                    await resp.write(f"event: state\ndata: {data}\n\n".encode())
                    last, last_sent = data, time.monotonic()
                elif time.monotonic() - last_sent > KEEPALIVE_S:
                    await resp.write(b": keepalive\n\n")
                    last_sent = time.monotonic()
                await _wait(flag, self.closing, TICK_S)
            return resp
        finally:
            self.node.events.unsubscribe(flag)
            self.streams -= 1

    def _shared_state(self) -> str:
        """The state's JSON, built once for all streams that ask within half a tick (and
        no event came in between): 32 open pages cost one build a tick, not 32."""
        at, recorded, data = self._built
        now = time.monotonic()
        if now - at >= TICK_S / 2 or recorded != self.node.events.recorded:
            recorded = self.node.events.recorded
            data = json.dumps(self.state(), separators=(",", ":"))
            self._built = (now, recorded, data)
        return data

    async def logs(self, request: web.Request) -> web.StreamResponse:
        node = self.node
        name = request.match_info["name"]
        check_name(name)
        since = _int_query(request, "since", 0)
        limit = _int_query(request, "limit", LOG_ENTRIES)
        follow = request.query.get("follow", "0") not in ("0", "false", "")
        if node.store.current(name) is None and not node.calllog.entries(name):
            raise NotFound(f"no module named {name!r} here (and no log of one)")
        if not follow:
            return web.json_response({"name": name, "agent": node.node_id,
                                      "entries": node.calllog.entries(name, since, limit)})
        try:
            q = node.calllog.follow(name)
        except TooManyFollowers as err:
            raise Overloaded(str(err), retry_after=5) from None
        try:
            resp = await _sse(request, "application/x-ndjson")
            sent = since
            for entry in node.calllog.entries(name, since, limit):
                await resp.write(_line(entry))
                sent = entry["seq"]
            idle = 0.0
            while not self.closing.is_set():
                try:
                    entry = await asyncio.wait_for(q.get(), TICK_S)
                except TimeoutError:
                    idle += TICK_S
                    if idle >= KEEPALIVE_S:  # an empty line: readers skip it
                        await resp.write(b"\n")
                        idle = 0.0
                    continue
                idle = 0.0
                if entry["seq"] > sent:  # not already sent with the backlog
                    await resp.write(_line(entry))
            return resp
        finally:
            node.calllog.unfollow(name, q)


def register(app: web.Application, node: Node, auth: Auth) -> Dashboard:
    """Add the dashboard and log routes to ``app``; ``auth`` guards the logs when the
    agent has a token (stderr may carry what a module should not show everyone)."""
    d = Dashboard(node)

    async def logs(request: web.Request) -> web.StreamResponse:
        auth(request)
        return await d.logs(request)

    async def starting(app: web.Application) -> None:
        d.watch()

    async def closing(app: web.Application) -> None:
        d.closing.set()

    app.router.add_get("/ui", d.page)
    app.router.add_get("/ui/", d.page)
    app.router.add_get("/ui/static/{file}", d.asset)
    app.router.add_get("/ui/state", d.state_json)
    app.router.add_get("/ui/events", d.events_stream)
    app.router.add_get("/modules/{name}/logs", logs)
    app.on_startup.append(starting)
    app.on_shutdown.append(closing)
    return d


# ---------------------------------------------------------------------------- helpers
_NO_STORE = {"Cache-Control": "no-store"}
_PAGE_HEADERS = {**_NO_STORE, "X-Content-Type-Options": "nosniff",
                 "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'"}
"""The page loads nothing but its own files and cannot be framed."""


def _asset(name: str) -> bytes:
    return resources.files("nebula_edge.api").joinpath("static", name).read_bytes()


def _int_query(request: web.Request, key: str, default: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {key} must be an integer") from None


def _line(e: dict[str, Any]) -> bytes:
    return json.dumps(e, separators=(",", ":")).encode() + b"\n"


async def _sse(request: web.Request, ctype: str = "text/event-stream") -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": ctype, **_NO_STORE,
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    return resp


async def _wait(flag: asyncio.Event, closing: asyncio.Event, timeout: float) -> None:
    """Until ``flag`` or ``closing`` is set, or ``timeout``; clears ``flag``."""
    waits = [asyncio.ensure_future(flag.wait()), asyncio.ensure_future(closing.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await w
    flag.clear()


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative buckets (upper bound, count):
    linear within the bucket; None without observations. In milliseconds."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_n = 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return round(prev_le * 1000, 3)
            frac = (rank - prev_n) / (n - prev_n) if n > prev_n else 1.0
            return round((prev_le + (le - prev_le) * frac) * 1000, 3)
        prev_le, prev_n = le, n
    return round(prev_le * 1000, 3)
