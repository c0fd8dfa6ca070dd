"""Every error Nebula-Edge raises on purpose, in one tree.

Each class carries a stable machine ``code`` (what clients switch on; it is the
``error.code`` of the HTTP JSON body) and an HTTP ``status`` hint, so that the
API maps any of them to a response without a table of its own::

    NebulaError                      500 internal
    +-- BadRequest                   400 bad_request
    |   +-- InvalidName              400 invalid_name
    |   +-- InvalidModule            400 invalid_module      (does not compile / wrong ABI)
    |   +-- InvalidArguments         400 invalid_arguments   (names the expected signature)
    |   +-- LimitOutOfRange          400 invalid_limits
    +-- Unauthorized                 401 unauthorized
    +-- Forbidden                    403 forbidden           (unsigned, untrusted, replayed)
    +-- NotFound                     404 not_found
    |   +-- ModuleNotFound           404 module_not_found
    +-- RequestTimeout               408 request_timeout     (a slow client's body)
    +-- PayloadTooLarge              413 payload_too_large
    +-- UnsupportedMediaType         415 unsupported_media_type
    +-- ExecError                    422 exec_error          (the guest failed, the agent did not)
    |   +-- Trap                     422 trap                (carries the trap kind)
    |   +-- WasiExit                 422 wasi_exit           (non-zero exit code + stderr tail)
    |   +-- OutputTooLarge           422 output_too_large
    +-- Overloaded                   503 overloaded          (carries Retry-After)
    +-- VersionUnavailable           503 version_unavailable (the mesh runs a version this
    |                                                         agent cannot, no peer answered)
    +-- ExecTimeout                  504 exec_timeout
    +-- PeerUnavailable              502 peer_unavailable    (a forwarded call failed)
    +-- StoreError                   500 store_error
        +-- CorruptBlob              500 corrupt_blob        (quarantined, never executed)

Local vs remote: everything under ``ExecError`` and ``ExecTimeout`` is the guest's
fault and the agent is healthy; ``StoreError`` is ours.
"""

from __future__ import annotations

from typing import Any


class NebulaError(Exception):
    """Base of every deliberate Nebula-Edge error."""

    code = "internal"
    status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update({k: v for k, v in self.details.items() if v is not None})
        return {"error": body}


class BadRequest(NebulaError):
    """The request is malformed (bad JSON, missing or wrongly typed field)."""

    code = "bad_request"
    status = 400


class InvalidName(BadRequest):
    """A module name that is not ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``."""

    code = "invalid_name"


class InvalidModule(BadRequest):
    """Bytes that are not a Wasm module we can run (does not compile, no usable export)."""

    code = "invalid_module"


class InvalidArguments(BadRequest):
    """Arguments that do not fit the export's signature."""

    code = "invalid_arguments"


class LimitOutOfRange(BadRequest):
    """A per-module limit outside the agent's maxima."""

    code = "invalid_limits"


class Unauthorized(NebulaError):
    """A token is required and was missing or wrong."""

    code = "unauthorized"
    status = 401


class Forbidden(NebulaError):
    """The agent requires trusted signatures and this change lacks a valid one."""

    code = "forbidden"
    status = 403


class NotFound(NebulaError):
    """No such route or object."""

    code = "not_found"
    status = 404


class ModuleNotFound(NotFound):
    """No module of that name on this agent or any reachable peer."""

    code = "module_not_found"


class RequestTimeout(NebulaError):
    """The client stopped sending its request body."""

    code = "request_timeout"
    status = 408


class PayloadTooLarge(NebulaError):
    """A body or module larger than the configured cap."""

    code = "payload_too_large"
    status = 413


class UnsupportedMediaType(NebulaError):
    """A raw upload whose Content-Type is not application/wasm or application/octet-stream."""

    code = "unsupported_media_type"
    status = 415


class ExecError(NebulaError):
    """The guest failed; the agent is fine."""

    code = "exec_error"
    status = 422


class Trap(ExecError):
    """The guest trapped (unreachable, out of bounds, stack overflow, ...)."""

    code = "trap"


class WasiExit(ExecError):
    """A WASI command exited with a non-zero code."""

    code = "wasi_exit"


class OutputTooLarge(ExecError):
    """The guest wrote more to stdout/stderr than its cap allows."""

    code = "output_too_large"


class Overloaded(NebulaError):
    """Every worker is busy and the queue is full; retry after ``retry_after`` seconds."""

    code = "overloaded"
    status = 503

    def __init__(self, message: str, retry_after: int = 1, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class VersionUnavailable(NebulaError):
    """The mesh's current version is one this agent cannot hold or run, and no peer that
    holds it could take the call: refused rather than answered with an older version.
    503, as another agent (one that holds it) can serve the same request."""

    code = "version_unavailable"
    status = 503


class ExecTimeout(NebulaError):
    """The guest ran past its wall-clock deadline or its fuel."""

    code = "exec_timeout"
    status = 504


class PeerUnavailable(NebulaError):
    """A call forwarded to a peer, or a fetch from one, failed."""

    code = "peer_unavailable"
    status = 502


class StoreError(NebulaError):
    """The on-disk store failed."""

    code = "store_error"
    status = 500


class CorruptBlob(StoreError):
    """A blob whose bytes no longer match its sha256; it has been quarantined."""

    code = "corrupt_blob"
