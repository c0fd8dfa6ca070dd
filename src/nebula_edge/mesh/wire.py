"""Wire messages between agents, as frozen dataclasses with one decoder each.

Gossip (topic ``nebula-edge/modules/1``) carries small messages only: py-libp2p 0.8.1
corrupted messages over ~64 KiB published while connections were forming, and drops
anything over 1 MiB silently. So an announcement carries the manifest and, for modules
up to ``INLINE_MAX`` (32 KiB), the bytes inline (base64: 43 KiB); larger modules travel
over the blob stream protocol. Every message has a format version ``v`` and its size
is checked before it is parsed.

Stream protocols (request/response frames, see ``net/p2p.py``):

* ``BLOB_PROTOCOL``: request = a sha256 in hex; response = the blob's bytes.
* ``SYNC_PROTOCOL``: request = ``SyncRequest``; response = ``SyncResponse`` with the
  peer's whole manifest set when the digests differ (anti-entropy).
* ``INFO_PROTOCOL``: request = empty; response = ``PeerInfo`` (HTTP port, version).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from nebula_edge import manifest as mf
from nebula_edge.errors import BadRequest
from nebula_edge.manifest import Manifest, Tombstone

TOPIC = "nebula-edge/modules/1"
BLOB_PROTOCOL = "/nebula-edge/blob/1.0.0"
SYNC_PROTOCOL = "/nebula-edge/sync/1.0.0"
INFO_PROTOCOL = "/nebula-edge/info/1.0.0"
FORWARDED_HEADER = "X-Nebula-Forwarded"
"""HTTP header on a call one agent forwards to another; such a call is never forwarded
again (one hop at most)."""
WIRE_VERSION = 1
MAX_GOSSIP = 60 * 1024
"""Below the ~64 KiB where py-libp2p 0.8.1 was seen to corrupt messages (0 in 3,500 at 60 KiB)."""
INLINE_MAX = 32 * 1024
MAX_SYNC_RESPONSE = 16 * 1024 * 1024
"""1,000 modules x 5 versions x ~500 bytes is 2.5 MB; 16 MiB leaves room and bounds a liar."""
MAX_SYNC_ENTRIES = 20_000


@dataclass(frozen=True)
class Announce:
    manifest: Manifest
    wasm: bytes | None = None


@dataclass(frozen=True)
class Delete:
    tombstone: Tombstone


GossipMessage = Announce | Delete


@dataclass(frozen=True)
class SyncRequest:
    digest: str


@dataclass(frozen=True)
class SyncResponse:
    digest: str
    manifests: tuple[Manifest, ...] | None
    """None when the digests matched (nothing to send)."""
    tombstones: tuple[Tombstone, ...] = ()


@dataclass(frozen=True)
class PeerInfo:
    http_port: int
    version: str


def _load(data: bytes, limit: int) -> dict[str, Any]:
    if len(data) > limit:
        raise BadRequest(f"message of {len(data)} bytes is over the {limit} byte limit")
    try:
        d = json.loads(data)
    except (ValueError, RecursionError):
        raise BadRequest("message is not JSON") from None
    if not isinstance(d, dict):
        raise BadRequest("message is not a JSON object")
    if d.get("v") != WIRE_VERSION:
        raise BadRequest(f"unsupported message version {d.get('v')!r}")
    return d


def _dump(d: dict[str, Any]) -> bytes:
    return mf.canonical({"v": WIRE_VERSION, **d})


def encode_gossip(msg: GossipMessage) -> bytes:
    if isinstance(msg, Delete):
        return _dump({"type": "delete", "tombstone": msg.tombstone.to_json()})
    d: dict[str, Any] = {"type": "announce", "manifest": msg.manifest.to_json()}
    if msg.wasm is not None:
        d["wasm"] = base64.b64encode(msg.wasm).decode()
    out = _dump(d)
    if len(out) > MAX_GOSSIP:
        raise ValueError(f"gossip message of {len(out)} bytes exceeds {MAX_GOSSIP}")
    return out


def announce_for(m: Manifest, wasm: bytes | None) -> Announce:
    """The announcement for a manifest: bytes inline only for small modules."""
    return Announce(m, wasm if wasm is not None and len(wasm) <= INLINE_MAX else None)


def _record(raw: object, kind: type) -> Any:
    if not isinstance(raw, dict):
        raise BadRequest(f"expected a {kind.__name__} object")
    rec = mf.from_json(raw)
    if not isinstance(rec, kind):
        raise BadRequest(f"expected a {kind.__name__}")
    return rec


def decode_gossip(data: bytes) -> GossipMessage:
    """Validate and parse a gossip message; ``BadRequest`` for anything malformed."""
    d = _load(data, MAX_GOSSIP)
    kind = d.get("type")
    if kind == "delete":
        return Delete(_record(d.get("tombstone"), Tombstone))
    if kind != "announce":
        raise BadRequest(f"unknown message type {kind!r}")
    m: Manifest = _record(d.get("manifest"), Manifest)
    raw = d.get("wasm")
    if raw is None:
        return Announce(m)
    if not isinstance(raw, str):
        raise BadRequest("inline wasm must be base64 text")
    try:
        wasm = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("inline wasm is not valid base64") from None
    if len(wasm) != m.size or len(wasm) > INLINE_MAX:
        raise BadRequest("inline wasm size does not match the manifest")
    return Announce(m, wasm)


def encode_sync_request(r: SyncRequest) -> bytes:
    return _dump({"type": "sync", "digest": r.digest})


def decode_sync_request(data: bytes) -> SyncRequest:
    d = _load(data, 4096)
    digest = d.get("digest")
    if d.get("type") != "sync" or not isinstance(digest, str) or len(digest) > 128:
        raise BadRequest("malformed sync request")
    return SyncRequest(digest)


def encode_sync_response(r: SyncResponse) -> bytes:
    d: dict[str, Any] = {"type": "sync-response", "digest": r.digest}
    if r.manifests is not None:
        d["manifests"] = [m.to_json() for m in r.manifests]
        d["tombstones"] = [t.to_json() for t in r.tombstones]
    return _dump(d)


def decode_sync_response(data: bytes) -> SyncResponse:
    d = _load(data, MAX_SYNC_RESPONSE)
    digest = d.get("digest")
    if d.get("type") != "sync-response" or not isinstance(digest, str):
        raise BadRequest("malformed sync response")
    if "manifests" not in d:
        return SyncResponse(digest, None)
    ms, ts = d.get("manifests"), d.get("tombstones", [])
    if not isinstance(ms, list) or not isinstance(ts, list) or \
            len(ms) + len(ts) > MAX_SYNC_ENTRIES:
        raise BadRequest("malformed sync response lists")
    return SyncResponse(digest, tuple(_record(x, Manifest) for x in ms),
                        tuple(_record(x, Tombstone) for x in ts))


def encode_info(i: PeerInfo) -> bytes:
    return _dump({"type": "info", "http_port": i.http_port, "version": i.version})


def decode_info(data: bytes) -> PeerInfo:
    d = _load(data, 4096)
    port, version = d.get("http_port"), d.get("version")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536 \
            or not isinstance(version, str) or len(version) > 64:
        raise BadRequest("malformed peer info")
    return PeerInfo(port, version)
