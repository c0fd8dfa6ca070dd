"""Peer-to-peer HTTP routes that serve module bytes in pieces (``mesh/pieces.py``).

* ``GET /p2p/pieces/{sha256}``: a JSON ``PieceInfo``: the blob's size, the piece size,
  the sha256 of every piece (omitted with ``?table=0``) and, for a blob still being
  received, a base64 bitfield of the pieces held (no ``have``: every piece).
* ``GET /p2p/pieces/{sha256}/{i}`` with ``Range: bytes=<piece i's span>``: the bytes of
  piece ``i`` (206), sent from the file with ``sendfile``: nothing passes through Python.

An agent sends at most ``MAX_UPLOADS`` pieces at once; past that it answers 503
(``overloaded``) at once and the receiver asks another holder. An agent holding the
whole blob sends each piece at most twice in 2 s (``mesh.pieces.SeedLimit``,
super-seeding): the receivers of the first copies serve the rest. Who may fetch: an agent
started with ``-token`` asks for it on these routes too (its peers send their own
``-token``: a mesh shares one); content is verified by hash on the receiver, and with
``-trust`` only bytes of versions signed by a trusted key are ever stored, so served.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from nebula_edge.api.app import NODE, require_token
from nebula_edge.errors import BadRequest, NotFound, Overloaded
from nebula_edge.manifest import SHA256_RE
from nebula_edge.mesh.pieces import PIECE_SIZE, SeedLimit, encode_info
from nebula_edge.node import Node
from nebula_edge.store.pieces import PieceStore

MAX_UPLOADS = 4
"""Pieces one agent sends at once: 4 x 1 MiB in flight fills a LAN link, and the rest of
the fleet gets its pieces from the agents that hold them already (no one agent carries
the fleet). Measured in bench/swarm.py."""
UPLOADS = web.AppKey("piece_uploads", asyncio.Semaphore)
SEEDING = web.AppKey("piece_seeding", SeedLimit)


class _Piece(web.FileResponse):
    """A file range sent inside the handler (so that the upload slot is held while it
    is sent); aiohttp prepares the returned response again, which must do nothing
    (``FileResponse.prepare`` would set the status a second time)."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.prepared:
            return None
        return await super().prepare(request)


def _pieces(node: Node) -> PieceStore:
    mesh = node.mesh
    if mesh is None:
        raise NotFound("this agent runs without the mesh")
    return mesh.fetcher.pieces


def _sha(request: web.Request) -> str:
    sha = request.match_info["sha"]
    if not SHA256_RE.fullmatch(sha):
        raise BadRequest("not a sha256")
    return sha


async def piece_info(request: web.Request) -> web.Response:
    require_token(request)
    node = request.app[NODE]
    pieces = _pieces(node)
    sha = _sha(request)
    serving = pieces.serving(sha)
    if serving is None:
        node.metrics.pieces_total.labels("sent", "absent").inc()
        raise NotFound(f"no piece of {sha[:12]} here")
    want_table = request.query.get("table", "1") != "0"
    table = await asyncio.get_running_loop().run_in_executor(
        None, pieces.table, sha, PIECE_SIZE)
    if table is None:
        raise NotFound(f"no piece of {sha[:12]} here")
    _, have = pieces.serving(sha) or (None, frozenset[int]())
    return web.Response(body=encode_info(table if want_table else None, table.size, have),
                        content_type="application/json")


async def piece(request: web.Request) -> web.StreamResponse:
    require_token(request)
    node = request.app[NODE]
    pieces = _pieces(node)
    sha = _sha(request)
    try:
        i = int(request.match_info["i"])
    except ValueError:
        raise BadRequest("piece index must be an integer") from None
    serving = pieces.serving(sha)
    if serving is None:
        raise NotFound(f"no piece of {sha[:12]} here")
    path, have = serving
    if i < 0 or (have is not None and i not in have):
        raise NotFound(f"piece {i} of {sha[:12]} is not here")
    rng = request.http_range
    if rng.start is None or rng.stop is None or rng.start != i * PIECE_SIZE or \
            not 0 < rng.stop - rng.start <= PIECE_SIZE:
        raise BadRequest(f"ask for piece {i} with Range: bytes=<its first>-<its last byte>")
    uploads = request.app[UPLOADS]
    metrics = node.metrics
    if uploads.locked():
        metrics.pieces_total.labels("sent", "busy").inc()
        raise Overloaded(f"this agent is sending {MAX_UPLOADS} pieces already", retry_after=1)
    if have is None and not request.app[SEEDING].admit(sha, i, time.monotonic()):
        metrics.pieces_total.labels("sent", "seeded").inc()
        raise Overloaded(f"piece {i} was sent twice a moment ago: ask its receivers",
                         retry_after=1)
    resp = _Piece(path, chunk_size=256 * 1024)
    async with uploads:
        metrics.uploads_in_flight.inc()
        try:
            await resp.prepare(request)
            await resp.write_eof()
        except (ConnectionError, OSError):
            # The receiver went away mid-piece (killed, cut off): its transfer asks
            # another holder. The headers are out: nothing more can be answered.
            metrics.pieces_total.labels("sent", "error").inc()
            return resp
        finally:
            metrics.uploads_in_flight.dec()
    if resp.status == 206:
        metrics.pieces_total.labels("sent", "ok").inc()
        metrics.piece_bytes_total.labels("sent").inc(rng.stop - rng.start)
    return resp


def add_routes(app: web.Application) -> None:
    app[UPLOADS] = asyncio.Semaphore(MAX_UPLOADS)
    app[SEEDING] = SeedLimit()
    app.router.add_get("/p2p/pieces/{sha}", piece_info)
    app.router.add_get("/p2p/pieces/{sha}/{i}", piece)
