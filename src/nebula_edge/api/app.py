"""The HTTP API (aiohttp): routes, request parsing, error mapping. Talks to a ``Node``.

aiohttp because it measured fastest here for a small JSON POST (12,300 req/s against
10,500 for Starlette on uvicorn and 1,500 for hypercorn's trio worker).

Every error is ``{"error": {"code": ..., "message": ...}}`` with the status of the
``NebulaError`` class; aiohttp's own HTTP errors (404 route, 405, 413) are reshaped to
the same form. ``/exec`` and ``/deploy`` read the body as JSON whatever its
Content-Type: the Quick Start's ``curl -d`` sends form encoding.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from nebula_edge.api import ui
from nebula_edge.api.openapi import OPENAPI
from nebula_edge.errors import (
    BadRequest,
    NebulaError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    UnsupportedMediaType,
)
from nebula_edge.manifest import parse_limits
from nebula_edge.mesh.wire import FORWARDED_HEADER
from nebula_edge.metrics import CONTENT_TYPE_LATEST
from nebula_edge.node import Node, Signed

log = logging.getLogger(__name__)

NODE = web.AppKey("node", Node)
MAX_EXEC_BODY = 1024 * 1024
"""An /exec request is a name and a JSON argument; 1 MiB is generous."""
RAW_TYPES = ("application/wasm", "application/octet-stream")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(e: NebulaError) -> web.Response:
    resp = web.json_response(e.to_json(), status=e.status)
    if isinstance(e, Overloaded):
        resp.headers["Retry-After"] = str(e.retry_after)
    return resp


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except NebulaError as e:
        return error_response(e)
    except web.HTTPRequestEntityTooLarge as e:
        return error_response(PayloadTooLarge(f"request body too large: {e.text}"))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status, "http_error")
        body = {"error": {"code": code, "message": f"{e.reason}: {request.method} {request.path}"}}
        resp = web.json_response(body, status=e.status)
        if "Allow" in e.headers:
            resp.headers["Allow"] = e.headers["Allow"]
        return resp
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return web.json_response({"error": {"code": "internal", "message": "internal error; "
                                            "see the agent's log"}}, status=500)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused early past ``limit`` (413) and given up on when the client sends
    nothing for ``body_timeout_s`` (408): a slow client holds a connection, not a worker."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is {request.content_length} bytes; limit {limit}")
    idle = request.app[NODE].config.body_timeout_s
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await request.content.readany()
        except TimeoutError:
            raise RequestTimeout(f"the client sent no body bytes for {idle:g} s") from None
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)


async def read_json(request: web.Request, limit: int) -> dict[str, Any]:
    raw = await read_body(request, limit)
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    v = body.get(key)
    if v is not None and not isinstance(v, str):
        raise BadRequest(f"field {key!r} must be a string")
    return v


SIGNATURE_HEADER = "X-Nebula-Signature"
ORDER_HEADER = "X-Nebula-Order"
"""Base64 of the canonical JSON order; used where the body is not JSON (raw upload, DELETE)."""


def signed_from(order: object, signature: object) -> Signed | None:
    if order is None and signature is None:
        return None
    if not isinstance(order, dict) or not isinstance(signature, str):
        raise BadRequest("a signed change needs 'order' (an object) and 'signature' (a string)")
    return Signed(order, signature)


def signed_from_headers(request: web.Request) -> Signed | None:
    raw, sig = request.headers.get(ORDER_HEADER), request.headers.get(SIGNATURE_HEADER)
    if raw is None and sig is None:
        return None
    try:
        order = json.loads(base64.b64decode(raw or "", validate=True))
    except (binascii.Error, ValueError):
        raise BadRequest(f"{ORDER_HEADER} must be base64 of a JSON object") from None
    return signed_from(order, sig)


def require_token(request: web.Request) -> None:
    token = request.app[NODE].config.token
    if not token:
        return
    got = request.headers.get("Authorization", "")
    if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
        raise Unauthorized("this agent requires a token: Authorization: Bearer <token>")


# ---------------------------------------------------------------------------- routes
async def deploy(request: web.Request) -> web.Response:
    require_token(request)
    node = request.app[NODE]
    limit = node.config.max_module_size * 4 // 3 + 64 * 1024
    body = await read_json(request, limit)
    name = body.get("name")
    if not isinstance(name, str):
        raise BadRequest("field 'name' is required and must be a string")
    b64 = body.get("wasm")
    if not isinstance(b64, str):
        raise BadRequest("field 'wasm' (base64 module bytes) is required and must be a string")
    try:
        wasm = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("field 'wasm' is not valid base64") from None
    unknown = set(body) - {"name", "wasm", "abi", "export", "limits", "order", "signature"}
    if unknown:
        raise BadRequest(f"unknown field(s) {sorted(unknown)}")
    m = await node.deploy(name, wasm,
                          abi=_opt_str(body, "abi"), export=_opt_str(body, "export"),
                          limits=parse_limits(body.get("limits")),
                          signed=signed_from(body.get("order"), body.get("signature")))
    return web.json_response({"module": node.module_view(m)}, status=201)


async def put_module(request: web.Request) -> web.Response:
    require_token(request)
    node = request.app[NODE]
    ctype = request.content_type
    if ctype not in RAW_TYPES:
        raise UnsupportedMediaType(f"raw upload needs Content-Type {' or '.join(RAW_TYPES)}, "
                                   f"not {ctype!r}")
    wasm = await read_body(request, node.config.max_module_size)
    q = request.query
    limits: dict[str, Any] = {}
    for k in ("timeout_ms", "memory_mb", "fuel", "max_output_bytes"):
        if k in q:
            try:
                limits[k] = int(q[k])
            except ValueError:
                raise BadRequest(f"query parameter {k} must be an integer") from None
    m = await node.deploy(request.match_info["name"], wasm, abi=q.get("abi"),
                          export=q.get("export"), limits=parse_limits(limits),
                          signed=signed_from_headers(request))
    return web.json_response({"module": node.module_view(m)}, status=201)


async def exec_(request: web.Request) -> web.Response:
    node = request.app[NODE]
    if node.config.exec_token:
        require_token(request)
    body = await read_json(request, MAX_EXEC_BODY)
    name = body.get("name")
    if not isinstance(name, str):
        raise BadRequest("field 'name' is required and must be a string")
    args = body.get("args")
    if args is not None and not isinstance(args, list):
        raise BadRequest("field 'args' must be a list")
    if args is not None and "arg" in body:
        raise BadRequest("give 'arg' or 'args', not both")
    unknown = set(body) - {"name", "arg", "args"}
    if unknown:
        raise BadRequest(f"unknown field(s) {sorted(unknown)}")
    out = await node.exec(name, body.get("arg"), args,
                          forwarded=FORWARDED_HEADER in request.headers)
    resp = web.json_response(out.body, dumps=_dumps)
    resp.headers["X-Nebula-Peer"] = out.peer
    return resp


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


async def list_modules(request: web.Request) -> web.Response:
    node = request.app[NODE]
    mods = []
    for name in node.store.names():
        m = node.store.current(name)
        if m is not None:
            mods.append(node.module_view(m))
    return web.json_response({"modules": mods})


async def get_module(request: web.Request) -> web.Response:
    node = request.app[NODE]
    name = request.match_info["name"]
    vs = node.store.versions(name)
    if not vs:
        raise NotFound(f"no module named {name!r}")
    view = node.module_view(vs[-1])
    try:  # may compile (up to a second for big modules): not on the event loop
        sig = await asyncio.get_running_loop().run_in_executor(
            None, node.sandbox.signature, vs[-1], lambda: node.store.read_blob(vs[-1].sha256))
    except NebulaError:
        sig = None  # bytes unreadable (e.g. quarantined): the listing still answers
    return web.json_response({"name": name, "current": view, "signature": sig,
                              "versions": [node.module_view(m) for m in reversed(vs)]})


async def delete_module(request: web.Request) -> web.Response:
    require_token(request)
    node = request.app[NODE]
    t = await node.delete(request.match_info["name"], signed_from_headers(request))
    return web.json_response({"deleted": t.name, "deleted_at": t.deleted_at})


async def rollback_module(request: web.Request) -> web.Response:
    require_token(request)
    node = request.app[NODE]
    signed = signed_from_headers(request)
    restores = None
    if signed is None and request.can_read_body:
        body = await read_json(request, 64 * 1024)
        signed = signed_from(body.get("order"), body.get("signature"))
        restores = body.get("restores")  # unsigned: which version, by id (else the previous)
        if restores is not None and not isinstance(restores, str):
            raise BadRequest("field 'restores' must be a version id (16 hex digits)")
    m = await node.rollback(request.match_info["name"], signed, restores)
    return web.json_response({"module": node.module_view(m)})


async def peers(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return web.json_response({"peers": node.mesh.peers() if node.mesh is not None else []})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response(request.app[NODE].health())


async def metrics(request: web.Request) -> web.Response:
    node = request.app[NODE]
    resp = web.Response(body=node.metrics.render())
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(OPENAPI)


async def echo(request: web.Request) -> web.Response:
    """A trivial JSON echo: the benchmark's floor for this server's own overhead."""
    body = await read_json(request, MAX_EXEC_BODY)
    return web.json_response(body, dumps=_dumps)


def make_app(node: Node) -> web.Application:
    cap = node.config.max_module_size * 4 // 3 + 1024 * 1024
    app = web.Application(middlewares=[errors_middleware], client_max_size=cap)
    app[NODE] = node
    app.router.add_post("/deploy", deploy)
    app.router.add_post("/exec", exec_)
    app.router.add_get("/modules", list_modules)
    app.router.add_get("/modules/{name}", get_module)
    app.router.add_put("/modules/{name}", put_module)
    app.router.add_delete("/modules/{name}", delete_module)
    app.router.add_post("/modules/{name}/rollback", rollback_module)
    app.router.add_get("/peers", peers)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/debug/echo", echo)
    ui.register(app, node, require_token)  # /ui, /ui/state, /ui/events, /modules/{name}/logs
    from nebula_edge.api import pieces  # it imports this module: NODE, require_token
    pieces.add_routes(app)
    return app
