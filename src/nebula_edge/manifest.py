"""What a deployed module is: its manifest, and the tombstone that deletes it.

A manifest names one *version* of a module: its bytes by sha256, how to call it
(ABI and export), its limits, when and by whom it was deployed. Manifests are
immutable; a new deploy, a rollback or a re-deploy of old bytes makes a new one.

Ordering is what makes the mesh agree without a coordinator: the current version
of a name is the manifest with the highest ``(deployed_at, sha256, id)`` among those not
covered by a tombstone (``deleted_at >= deployed_at``). Every agent applies the same
rule to the same set, whatever order the messages arrived in. ``deployed_at`` is a
hybrid logical clock per name, and a record dated more than ``MAX_FUTURE_S`` ahead of
the receiver's clock is held back (``mesh/versions.py``), so one wrong clock cannot
freeze a name.

Version *numbers* are labels assigned by the agent that made the change; two agents
deploying at once may both say "v5". The manifest ``id`` (16 hex digits of its hash) is
what names one version unambiguously: it is shown next to the number, and a rollback
names the version it restores by id (``restores``, signed in the rollback order).

``decode`` is the one entry point for manifests from outside (disk, HTTP, peers):
it checks size before parsing and every field's type after.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from nebula_edge.config import Limits
from nebula_edge.errors import BadRequest, InvalidName

FORMAT_VERSION = 1
MAX_FUTURE_S = 60.0
"""How far ahead of an agent's clock a change may be dated and still be adopted (at the
API and from peers). Why a minute: see ``mesh/versions.py``."""
MAX_MANIFEST_BYTES = 8 * 1024
"""A manifest is a few hundred bytes; anything near this is hostile."""

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
ID_RE = re.compile(r"[0-9a-f]{16}")
ABIS = ("export", "wasi")
Abi = Literal["export", "wasi"]


def check_name(name: object) -> str:
    """Return ``name`` if it is a valid module name, else raise ``InvalidName``."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        shown = repr(name)[:80]
        raise InvalidName(
            f"invalid module name {shown}: use 1-128 of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit, no '..'"
        )
    return name


@dataclass(frozen=True)
class Manifest:
    """One immutable version of a module."""

    name: str
    version: int
    sha256: str
    size: int
    abi: Abi
    export: str | None
    limits: Limits
    deployed_at: float
    publisher: str
    signature: str | None = None
    rollback_of: int | None = None
    """A rollback's restored version number (a label: see ``restores``)."""
    order: dict[str, Any] | None = field(default=None, hash=False)
    """The publisher's signed order (see ``keys.py``); None for an unsigned deploy."""
    restores: str | None = None
    """A rollback's restored version, by manifest ``id`` (None: not a rollback, or one
    made before rollbacks named their version)."""

    @functools.cached_property
    def id(self) -> str:
        """Hash of the whole manifest: tells apart manifests that tie on time and bytes."""
        return hashlib.sha256(canonical(self.to_json())).hexdigest()[:16]

    @property
    def key(self) -> tuple[float, str, str]:
        """Total order of versions of one name: later deploy wins, the bytes' hash breaks
        ties, and the manifest's own hash breaks what is left (same time, same bytes)."""
        return (self.deployed_at, self.sha256, self.id)

    @property
    def file_id(self) -> str:
        """A file name unique per version, sorting in ``key`` order."""
        return f"{round(self.deployed_at * 1_000_000):020d}-{self.sha256[:16]}-{self.id}"

    def signed_fields(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "size": self.size,
            "abi": self.abi,
            "export": self.export,
            "limits": self.limits.to_json(),
            "deployed_at": self.deployed_at,
            "publisher": self.publisher,
            "rollback_of": self.rollback_of,
        }
        if self.restores is not None:  # absent, not null: older manifests keep their ids
            d["restores"] = self.restores
        return d

    def to_json(self) -> dict[str, Any]:
        d = self.signed_fields()
        d["signature"] = self.signature
        d["order"] = self.order
        return d

    def encode(self) -> bytes:
        return canonical(self.to_json())


@dataclass(frozen=True)
class Tombstone:
    """Deletes every version of ``name`` deployed at or before ``deleted_at``."""

    name: str
    deleted_at: float
    publisher: str
    signature: str | None = None
    order: dict[str, Any] | None = field(default=None, hash=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "v": FORMAT_VERSION,
            "kind": "tombstone",
            "name": self.name,
            "deleted_at": self.deleted_at,
            "publisher": self.publisher,
            "signature": self.signature,
            "order": self.order,
        }

    def encode(self) -> bytes:
        return canonical(self.to_json())

    @functools.cached_property
    def id(self) -> str:
        """Hash of the whole tombstone, signature and order included."""
        return hashlib.sha256(self.encode()).hexdigest()[:16]

    def covers(self, m: Manifest) -> bool:
        return m.name == self.name and m.deployed_at <= self.deleted_at


def canonical(obj: Any) -> bytes:
    """The one JSON encoding used for hashing, signing and digests."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _field(
    d: dict[str, Any], key: str, typ: type | tuple[type, ...], optional: bool = False
) -> Any:
    v = d.get(key)
    if v is None and optional:
        return None
    # bool is an int subclass; never accept it where a number is meant.
    if not isinstance(v, typ) or isinstance(v, bool):
        raise BadRequest(f"manifest field {key!r} is missing or has the wrong type")
    return v


def _time(d: dict[str, Any], key: str) -> float:
    try:
        t = float(_field(d, key, (int, float)))
    except OverflowError:
        t = math.inf
    if not math.isfinite(t) or t < 0:
        raise BadRequest(f"manifest {key} must be a finite non-negative number")
    return t


def parse_limits(raw: object) -> Limits:
    """Limits from JSON (``None`` = all defaults), checking only shape (ranges are the
    sandbox's business)."""
    if raw is None:
        return Limits()
    if not isinstance(raw, dict):
        raise BadRequest("field 'limits' must be an object")
    known = {"timeout_ms", "memory_mb", "fuel", "max_output_bytes"}
    unknown = set(raw) - known
    if unknown:
        raise BadRequest(f"unknown limit(s) {sorted(unknown)}; known: {sorted(known)}")
    vals: dict[str, int | None] = {}
    for k in known:
        v = raw.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise BadRequest(f"limit {k!r} must be a non-negative integer")
        vals[k] = v
    return Limits(**vals)


def from_json(d: dict[str, Any]) -> Manifest | Tombstone:
    """Build a manifest or tombstone from parsed JSON, validating every field."""
    v = d.get("v")
    if type(v) is not int or v != FORMAT_VERSION:
        raise BadRequest(f"unsupported manifest format version {d.get('v')!r}")
    name = check_name(d.get("name"))
    sig = _field(d, "signature", str, optional=True)
    publisher = _field(d, "publisher", str)
    if len(publisher) > 256 or (sig is not None and len(sig) > 1024):
        raise BadRequest("manifest publisher or signature too long")
    order = d.get("order")
    if order is not None and not isinstance(order, dict):
        raise BadRequest("manifest field 'order' must be an object")
    if d.get("kind") == "tombstone":
        deleted_at = _time(d, "deleted_at")
        return Tombstone(name, deleted_at, publisher, sig, order)
    sha = _field(d, "sha256", str)
    if not SHA256_RE.fullmatch(sha):
        raise BadRequest("manifest sha256 must be 64 lowercase hex digits")
    abi = _field(d, "abi", str)
    if abi not in ABIS:
        raise BadRequest(f"manifest abi must be one of {ABIS}")
    export = _field(d, "export", str, optional=True)
    deployed_at = _time(d, "deployed_at")
    version = _field(d, "version", int)
    size = _field(d, "size", int)
    if version < 1 or size < 0:
        raise BadRequest("manifest version must be >= 1 and size >= 0")
    return Manifest(
        name=name,
        version=version,
        sha256=sha,
        size=size,
        abi=abi,
        export=export,
        limits=parse_limits(d.get("limits")),
        deployed_at=deployed_at,
        publisher=publisher,
        signature=sig,
        rollback_of=_field(d, "rollback_of", int, optional=True),
        order=order,
        restores=_restores(d),
    )


def _restores(d: dict[str, Any]) -> str | None:
    r: str | None = _field(d, "restores", str, optional=True)
    if r is not None and not ID_RE.fullmatch(r):
        raise BadRequest("manifest field 'restores' must be a manifest id (16 hex digits)")
    return r


def decode(data: bytes) -> Manifest | Tombstone:
    """Parse untrusted bytes into a manifest or tombstone; ``BadRequest`` if they are not one."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise BadRequest(f"manifest larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        d = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"manifest is not JSON: {e}") from None
    if not isinstance(d, dict):
        raise BadRequest("manifest must be a JSON object")
    return from_json(d)


def admits(versions: list[Manifest], tombstone: Tombstone | None, m: Manifest, keep: int) -> bool:
    """Whether a store holding ``versions`` (oldest first) of ``m.name`` takes ``m``.

    The one rule every agent applies, so that all of them keep the same ``keep`` newest
    versions whatever order manifests arrive in: not already held, not deleted, and not
    older than everything kept once ``keep`` versions are held.
    """
    if tombstone is not None and tombstone.covers(m):
        return False
    if any(v.key == m.key for v in versions):
        return False
    return not (len(versions) >= keep and m.key < versions[0].key)


def current(manifests: list[Manifest], tombstone: Tombstone | None) -> Manifest | None:
    """The version every agent agrees is current, or None if deleted/absent."""
    live = [m for m in manifests if tombstone is None or not tombstone.covers(m)]
    return max(live, key=lambda m: m.key, default=None)
