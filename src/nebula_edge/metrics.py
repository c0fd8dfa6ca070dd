"""Every Prometheus metric of an agent, in one registry per agent.

The first three names are the product description's and must not change:
``nebula_edge_exec_total``, ``nebula_edge_exec_duration_seconds``, ``nebula_edge_peers``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "MeshFigures", "Metrics", "watch_mesh"]

# Wasm calls of small functions take 0.1-1 ms; the tail goes to the 30 s maximum limit.
EXEC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.exec_total = Counter(
            "nebula_edge_exec_total", "Function invocations by module and outcome "
            "(ok, trap, exec_timeout, invalid_arguments, forwarded, ...)",
            ["module", "outcome"], registry=r)
        self.exec_duration = Histogram(
            "nebula_edge_exec_duration_seconds", "Latency of function invocations",
            ["module"], buckets=EXEC_BUCKETS, registry=r)
        self.peers = Gauge("nebula_edge_peers", "Currently connected peers", registry=r)
        self.modules = Gauge("nebula_edge_modules", "Modules with a current version", registry=r)
        self.deploys_total = Counter(
            "nebula_edge_deploys_total", "Module versions accepted, by source (api, peer)",
            ["source"], registry=r)
        self.compile_cache_total = Counter(
            "nebula_edge_compile_cache_total",
            "Compiled-code loads by outcome (hit = loaded from disk, miss = compiled)",
            ["outcome"], registry=r)
        self.exec_in_flight = Gauge(
            "nebula_edge_exec_in_flight",
            "Calls admitted on this agent and not yet finished (running or queued)",
            registry=r)
        self.exec_rejected_total = Counter(
            "nebula_edge_exec_rejected_total", "Calls refused because the worker queue was full",
            registry=r)
        self.gossip_rejected_total = Counter(
            "nebula_edge_gossip_rejected_total", "Peer messages dropped as invalid, by reason",
            ["reason"], registry=r)
        self.fetch_total = Counter(
            "nebula_edge_fetch_total", "Module blob fetches from peers by outcome",
            ["outcome"], registry=r)
        self.sync_total = Counter(
            "nebula_edge_sync_total",
            "Catch-up syncs this agent started, by outcome (same digest, differ, failed, "
            "malformed)", ["outcome"], registry=r)
        self.quarantined_total = Counter(
            "nebula_edge_quarantined_total", "Blobs that failed verification on read",
            registry=r)
        self.exec_waiting = Gauge(
            "nebula_edge_exec_waiting",
            "Calls waiting in a WASI sleep with their worker slot lent", registry=r)
        self.sandbox_limit = Gauge(
            "nebula_edge_sandbox_limit",
            "Fixed sandbox bounds: workers, wait_workers, table_elements, max_tables",
            ["bound"], registry=r)

        self.held_back_total = Counter(
            "nebula_edge_held_back_total",
            "Records from peers dated more than 60 s ahead of this agent's clock, held back "
            "(not stored; re-evaluated when sync offers them again), each counted once, by "
            "kind (manifest, tombstone)", ["kind"], registry=r)
        self.peer_refused_total = Counter(
            "nebula_edge_peer_refused_total",
            "Versions from peers this agent does not hold, each counted once, by reason "
            "(too_big, over_limits, max_modules)", ["reason"], registry=r)
        self.version_book_names = Gauge(
            "nebula_edge_version_book_names",
            "Names whose mesh-best version this agent remembers (bound 2000)", registry=r)
        # Per-function logs, events and live views (calllog.py, events.py, api/ui.py).
        self.call_log_entries = Gauge(
            "nebula_edge_call_log_entries", "Call records and stderr lines held in the "
            "per-module log rings (memory only)", registry=r)
        self.call_log_entries_limit = Gauge(
            "nebula_edge_call_log_entries_limit", "Most entries the log rings can hold "
            "(LOG_MODULES x LOG_ENTRIES)", registry=r)
        self.call_log_dropped_total = Counter(
            "nebula_edge_call_log_dropped_total", "Log entries or bytes not kept, by reason "
            "(stderr_lines, stderr_bytes, follower_slow, module_evicted)", ["reason"],
            registry=r)
        self.events = Gauge("nebula_edge_events", "Recent mesh events kept for the dashboard",
                            registry=r)
        self.streams = Gauge("nebula_edge_streams", "Open live streams, by kind (logs: "
                             "?follow=1, ui: dashboard)", ["kind"], registry=r)
        self.streams_limit = Gauge("nebula_edge_streams_limit", "Most live streams served "
                                   "at once, by kind", ["kind"], registry=r)

        # Large modules travel in pieces (net/fetch.py, api/pieces.py).
        self.pieces_total = Counter(
            "nebula_edge_pieces_total", "Module pieces by direction (sent, received) and "
            "outcome (ok, busy, seeded, missing, bad, error; sent/absent: asked which "
            "pieces of bytes this agent does not hold)", ["direction", "outcome"], registry=r)
        self.piece_bytes_total = Counter(
            "nebula_edge_piece_bytes_total", "Module bytes moved in pieces, by direction "
            "(sent, received)", ["direction"], registry=r)
        self.uploads_in_flight = Gauge(
            "nebula_edge_uploads_in_flight", "Pieces being sent to peers now (at most "
            "MAX_UPLOADS)", registry=r)
        self.partial_blobs = Gauge(
            "nebula_edge_partial_blobs", "Module blobs being received piece by piece",
            registry=r)
        self.failed_versions = Gauge(
            "nebula_edge_failed_versions", "Versions remembered as not compiling here (not "
            "fetched again; at most FAILED_VERSIONS_MAX)", registry=r)
        self.unavailable_blobs = Gauge(
            "nebula_edge_unavailable_blobs", "Blobs no peer could serve, not asked for "
            "again until their cooldown ends (at most UNAVAILABLE_MAX)", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# --- mesh health and bounds, read from the mesh at scrape time ------------------------------

MeshFigures = dict[str, Any]
"""What ``Node.mesh_figures`` returns: p2p health numbers and every bound (see below)."""


class _MeshCollector(Collector):
    """Turns the mesh's own counters into metrics when ``/metrics`` is read: the figures
    live in the libp2p host and the mDNS service (thread-safe snapshots), not here."""

    def __init__(self, source: Callable[[], MeshFigures | None]) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        return []  # names are known only once collected; auto_describe must not call source

    def collect(self) -> Iterable[Metric]:
        f = self._source()
        if f is None:
            return
        yield GaugeMetricFamily("nebula_edge_p2p_up", "1 while the libp2p host is listening "
                                "(0 while its supervisor waits to restart it)", f["p2p_up"])
        yield CounterMetricFamily("nebula_edge_p2p_restarts", "Restarts of the libp2p host "
                                  "by its supervisor", f["p2p_restarts"])
        yield GaugeMetricFamily("nebula_edge_p2p_last_restart_timestamp_seconds",
                                "Unix time of the last libp2p restart (0: none)",
                                f["p2p_last_restart"])
        yield CounterMetricFamily("nebula_edge_p2p_dropped_publishes", "Gossip publishes "
                                  "dropped because the publish queue was full",
                                  f["p2p_dropped_publishes"])
        yield GaugeMetricFamily("nebula_edge_p2p_loop_lag_seconds", "Seconds since the "
                                "libp2p (trio) loop last ran its watchdog tick",
                                f["p2p_loop_lag"])
        yield CounterMetricFamily("nebula_edge_p2p_loop_stalls", "Times the libp2p loop "
                                  "was found blocked for 5 s or more", f["p2p_loop_stalls"])
        yield CounterMetricFamily("nebula_edge_p2p_gossip_received", "Gossip messages "
                                  "delivered by libp2p (valid for the topic validator)",
                                  f["gossip_received"])
        dials = CounterMetricFamily("nebula_edge_mdns_candidate_dials", "Dials of peers "
                                    "found by mDNS, by outcome", labels=["outcome"])
        dials.add_metric(["ok"], f["candidate_dials"] - f["candidate_dial_failures"])
        dials.add_metric(["failed"], f["candidate_dial_failures"])
        yield dials
        refused = CounterMetricFamily("nebula_edge_p2p_requests_refused", "Peer request "
                                      "streams refused or cut, by reason (peer_limit, "
                                      "all_peers_limit, deadline)", labels=["reason"])
        for reason in ("peer_limit", "all_peers_limit", "deadline"):
            refused.add_metric([reason], f["requests_refused"].get(reason, 0))
        yield refused
        size = GaugeMetricFamily("nebula_edge_bound_size", "Entries in a bounded queue, "
                                 "cache or table (docs/security.md, bounds)", labels=["bound"])
        limit = GaugeMetricFamily("nebula_edge_bound_limit", "The limit of that bound",
                                  labels=["bound"])
        dropped = CounterMetricFamily("nebula_edge_bound_dropped", "Entries dropped, "
                                      "evicted or refused at that bound", labels=["bound"])
        for name, n, cap, lost in f["bounds"]:
            size.add_metric([name], n)
            limit.add_metric([name], cap)
            dropped.add_metric([name], lost)
        yield from (size, limit, dropped)


def watch_mesh(metrics: Metrics, source: Callable[[], MeshFigures | None]) -> None:
    """Export the mesh's health figures and bounds from ``source`` on every scrape."""
    metrics.registry.register(_MeshCollector(source))
