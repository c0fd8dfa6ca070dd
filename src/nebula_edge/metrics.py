"""Every Prometheus metric of an agent, in one registry per agent.

The first three names are the product description's and must not change:
``nebula_edge_exec_total``, ``nebula_edge_exec_duration_seconds``, ``nebula_edge_peers``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

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
