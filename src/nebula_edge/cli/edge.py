"""``edge``: the agent. Flags -> EdgeConfig -> Node + HTTP server, until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from nebula_edge import __version__
from nebula_edge.api.app import make_app
from nebula_edge.cli.flags import GoFlags
from nebula_edge.config import EdgeConfig, Limits, default_lan, local
from nebula_edge.errors import NebulaError
from nebula_edge.keys import read_trust
from nebula_edge.node import OPEN_WARNING, Node

log = logging.getLogger("nebula_edge")
MESH_DEFAULT = True


def build_parser() -> GoFlags:
    d = default_lan()
    p = GoFlags(prog="edge", description="Nebula-Edge agent: runs Wasm modules, joins the mesh.")
    p.flag("port", type=int, default=d.port, help="HTTP port (default 8080)")
    p.flag("data", default=str(d.data), help="data root; state goes to <data>/<port>/ "
           "(default ./data)")
    p.flag("bind", default=d.bind, help="HTTP bind address (default 0.0.0.0)")
    p.flag("log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.flag("timeout", type=int, default=d.default_limits.timeout_ms,
           help="default per-call time limit, ms (default 1000)")
    p.flag("memory", type=int, default=d.default_limits.memory_mb,
           help="default per-call memory limit, MiB (default 64)")
    p.flag("max-output", type=int, default=d.default_limits.max_output_bytes,
           help="default cap on a WASI call's stdout/stderr, bytes (default 1 MiB)")
    p.flag("max-timeout", type=int, default=d.max_limits.timeout_ms,
           help="largest time limit a module may ask for, ms (default 30000)")
    p.flag("max-memory", type=int, default=d.max_limits.memory_mb,
           help="largest memory limit a module may ask for, MiB (default 1024)")
    p.flag("max-module-size", type=int, default=d.max_module_size,
           help="largest module accepted, bytes (default 64 MiB)")
    p.flag("workers", type=int, default=d.workers, help="Wasm worker threads (default: cores, "
           "at least 2)")
    p.flag("queue", type=int, default=d.queue, help="calls that may wait for a worker before "
           "503 (default 64)")
    p.flag("wait-workers", type=int, default=d.wait_workers,
           help="spare threads for calls waiting in a WASI sleep (default 32)")
    p.flag("max-table-elements", type=int, default=d.table_elements,
           help="cap on the elements of each Wasm table of a call (default 100000)")
    p.flag("header-timeout", type=float, default=d.header_timeout_s,
           help="close a connection without a complete request head after this many s "
                "(default 15)")
    p.flag("body-timeout", type=float, default=d.body_timeout_s,
           help="answer 408 when a request body stalls this many s (default 30)")
    p.flag("token", default=os.environ.get("NEBULA_EDGE_TOKEN"),
           help="require this bearer token for deploy/delete/rollback (env NEBULA_EDGE_TOKEN)")
    p.bool_flag("exec-token", False, "require the token for /exec too")
    p.flag("trust", action="append", default=[], metavar="KEY",
           help="accept only changes signed by this publisher key (repeatable); see "
                "`nebctl keygen`")
    p.flag("trust-file", action="append", default=[], metavar="PATH",
           help="file of trusted publisher keys, one per line (repeatable)")
    p.flag("p2p-port", type=int, default=0, help="libp2p TCP port (default: HTTP port + 1000)")
    p.flag("peer", action="append", default=[], help="bootstrap peer multiaddr (repeatable)")
    p.bool_flag("mdns", True, "discover peers with mDNS (default true)")
    p.flag("mdns-interface", action="append", default=[],
           help="IP address mDNS uses (repeatable; default all; env "
                "NEBULA_EDGE_MDNS_INTERFACES=ip,ip)")
    p.bool_flag("mesh", MESH_DEFAULT, "join the mesh at all (false: a lone agent)")
    p.bool_flag("fast", False, "fast mesh timers for tests on one machine")
    p.add_argument("-version", "--version", action="version", version=f"edge {__version__}")
    return p


def config_from_args(argv: list[str] | None = None) -> tuple[EdgeConfig, bool]:
    a = build_parser().parse_args(argv)
    base = local() if a.fast else default_lan()
    ifaces = tuple(a.mdns_interface) or tuple(
        x.strip() for x in os.environ.get("NEBULA_EDGE_MDNS_INTERFACES", "").split(",")
        if x.strip())
    cfg = base.replace(
        port=a.port, bind=a.bind, data=Path(a.data), log_level=a.log_level,
        default_limits=Limits(timeout_ms=a.timeout, memory_mb=a.memory, fuel=None,
                              max_output_bytes=a.max_output),
        max_limits=Limits(timeout_ms=max(a.max_timeout, a.timeout),
                          memory_mb=max(a.max_memory, a.memory),
                          fuel=base.max_limits.fuel,
                          max_output_bytes=max(base.max_limits.max_output_bytes or 0,
                                               a.max_output)),
        max_module_size=a.max_module_size, header_timeout_s=a.header_timeout,
        body_timeout_s=a.body_timeout, workers=max(1, a.workers), queue=max(0, a.queue),
        token=a.token or None, exec_token=a.exec_token, p2p_port=a.p2p_port,
        peers=tuple(a.peer), mdns=a.mdns, mdns_interfaces=ifaces,
        trusted_keys=read_trust(a.trust, [Path(f) for f in a.trust_file]),
        wait_workers=max(0, a.wait_workers), table_elements=max(1, a.max_table_elements),
    )
    return cfg, a.mesh


async def serve(cfg: EdgeConfig, mesh: bool) -> None:
    node = Node(cfg, mesh=mesh)
    runner = web.AppRunner(make_app(node), access_log=None, handle_signals=False,
                           keepalive_timeout=cfg.header_timeout_s)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
        site = web.TCPSite(runner, cfg.bind, cfg.port, reuse_address=True)
        await site.start()
        log.info("edge %s listening on http://%s:%d (state %s, node %s)", __version__, cfg.bind,
                 cfg.port, cfg.state_dir, node.node_id)
        if cfg.trusted_keys:
            log.info("accepting changes signed by %d trusted key(s)", len(cfg.trusted_keys))
        else:
            log.warning(OPEN_WARNING)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()
        await node.close()


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, mesh = config_from_args(argv)
    except (NebulaError, OSError) as e:
        print(f"edge: {getattr(e, 'message', e)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if cfg.log_level != "debug":
        # py-libp2p logs an ERROR for every failed redial of a peer that is down; our own
        # mesh log says what matters (peer lost / joined). -log-level debug shows it all.
        for noisy in ("libp2p", "multiaddr", "async_service"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
        logging.getLogger("zeroconf").setLevel(logging.WARNING)
    try:
        import uvloop

        runner: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(serve(cfg, mesh))
    except NebulaError as e:
        print(f"edge: {e.message}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"edge: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
