"""One configuration object for an agent, with named presets.

``EdgeConfig`` is what ``edge``'s flags turn into and what ``Node`` is built from.
``default_lan()`` is for real fleets; ``local()`` has fast timers for tests on one
machine (the shape of memberlist's DefaultLANConfig / DefaultLocalConfig).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Per-call limits of a module. ``None`` means "use the agent's default"."""

    timeout_ms: int | None = None
    """Wall-clock budget of one call (epoch deadline)."""
    memory_mb: int | None = None
    """Cap on the linear memory a call may grow to."""
    fuel: int | None = None
    """Optional instruction budget; ``None``/0 disables fuel metering for the module."""
    max_output_bytes: int | None = None
    """Cap on captured stdout (and, separately, stderr) of a WASI call."""

    def to_json(self) -> dict[str, int]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class EdgeConfig:
    """Everything an agent needs to know to run. Every field maps to an ``edge`` flag."""

    port: int = 8080
    """HTTP port (``-port``)."""
    bind: str = "0.0.0.0"
    """HTTP bind address (``-bind``)."""
    data: Path = Path("./data")
    """Data root (``-data``). The agent's own state lives in ``<data>/<port>/`` so two
    agents started in one directory with the default never share a store."""
    log_level: str = "info"

    # --- sandbox -------------------------------------------------------------------
    default_limits: Limits = field(
        default_factory=lambda: Limits(
            timeout_ms=1000, memory_mb=64, fuel=None, max_output_bytes=1 * MiB
        )
    )
    max_limits: Limits = field(
        default_factory=lambda: Limits(
            timeout_ms=30_000, memory_mb=1024, fuel=10**12, max_output_bytes=16 * MiB
        )
    )
    workers: int = field(default_factory=lambda: max(2, os.cpu_count() or 2))
    """Threads running Wasm calls at once."""
    queue: int = 64
    """Calls allowed to wait for a worker before ``/exec`` answers 503."""
    wait_workers: int = 32
    """Spare threads for calls waiting in a WASI sleep (``-wait-workers``): a waiting call
    lends its compute slot, so sleepers do not starve computing calls."""
    table_elements: int = 100_000
    """Cap on the elements of each table a call has (``-max-table-elements``; a module
    may define at most 4 tables; 100 000 funcrefs are 0.8 MB)."""
    max_module_size: int = 64 * MiB
    """Largest module accepted (``-max-module-size``), raw or base64-decoded."""
    max_modules: int = 1000
    """Distinct module names an agent keeps."""
    keep_versions: int = 5
    """Versions kept per module name."""

    header_timeout_s: float = 15.0
    """A connection that has not sent a complete request head (or sits idle between
    requests) this long is closed (aiohttp's keep-alive timer, which runs from accept)."""
    body_timeout_s: float = 30.0
    """A request whose body stalls this long (no byte received) is answered 408."""

    # --- security ------------------------------------------------------------------
    token: str | None = None
    """If set, required as ``Authorization: Bearer`` for deploy/delete/rollback."""
    exec_token: bool = False
    """If true, ``/exec`` needs the token too."""
    trusted_keys: frozenset[str] = frozenset()
    """Publisher keys (``ed25519:...``) whose signed changes this agent accepts, from its
    API and from peers. Empty: the agent runs open and accepts unsigned changes."""

    # --- mesh ----------------------------------------------------------------------
    p2p_port: int = 0
    """libp2p TCP port; 0 picks ``port + 1000``."""
    peers: tuple[str, ...] = ()
    """Bootstrap multiaddrs (``-peer``)."""
    mdns: bool = True
    mdns_interfaces: tuple[str, ...] = ()
    """Addresses zeroconf uses; empty means all. ``NEBULA_EDGE_MDNS_INTERFACES`` sets it too."""
    advertise: tuple[str, ...] = ()
    """Addresses to advertise; empty means the concrete addresses of the mDNS interfaces."""
    heartbeat_s: float = 2.0
    """Liveness: each heartbeat an agent probes at most 2 of its peers (each peer every
    heartbeat x peers / 2); a peer missing 3 probes in a row is considered lost."""
    sync_interval_s: float = 10.0
    """Anti-entropy: one round with one random connected peer per interval (stretched past
    32 members: x2 at 64, x6 at 1,000, as memberlist's push-pull)."""
    reannounce_s: float = 15.0
    """mDNS re-announce period (a peer cut off at start-up is found only after one)."""
    tombstone_horizon_s: float = 7 * 24 * 3600.0
    """Deletions are forgotten after this long, and an agent that
    was away from the mesh longer than this resyncs from scratch (its old modules are set
    aside in ``quarantine/``) rather than bringing deleted modules back: Cassandra's
    gc_grace_seconds (10 days) and Serf's reap rule. 7 days: longer than a weekend or a
    holiday outage, short enough that deletes do not pile up forever."""
    fetch_wait_s: float = 5.0
    """How long ``/exec`` of a module known but not yet fetched waits for it."""

    @property
    def state_dir(self) -> Path:
        return self.data / str(self.port)

    @property
    def effective_p2p_port(self) -> int:
        return self.p2p_port or self.port + 1000

    def replace(self, **changes: object) -> EdgeConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def default_lan() -> EdgeConfig:
    """Timers for a real LAN."""
    return EdgeConfig()


def local() -> EdgeConfig:
    """Fast timers for agents on one machine (tests, demo)."""
    return EdgeConfig(heartbeat_s=0.5, sync_interval_s=2.0, reannounce_s=3.0)
