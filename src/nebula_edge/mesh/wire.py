"""Wire messages between agents, as frozen dataclasses with one decoder each.

Gossip (topic ``nebula-edge/modules/1``) carries small messages only: py-libp2p 0.8.1
corrupted messages over ~64 KiB published while connections were forming, and drops
anything over 1 MiB silently. So an announcement carries the manifest and, for modules
up to ``INLINE_MAX`` (32 KiB), the bytes inline (base64: 43 KiB); larger modules travel
over the blob stream protocol. Every message has a format version ``v`` and its size
is checked before it is parsed.

Stream protocols (request/response frames, see ``net/p2p.py``):

* ``BLOB_PROTOCOL``: request = a sha256 in hex; response = the blob's bytes.
* ``SYNC_PROTOCOL``: difference-only anti-entropy (``mesh/sync.py``), two exchanges:
  ``SyncRequest`` (root digest, member digest) -> ``SyncResponse`` (the peer's root; its
  256 bucket hashes only when the roots differ; its member list only when the member
  digests differ), then ``PullRequest`` (some differing buckets, the asker's name hashes
  in them, a cursor) -> ``PullResponse`` (the records of the names whose hashes differ,
  at most ``PIECE_RECORDS`` records a piece, and the cursor of the next piece).
  Also on it: ``blobs`` (many small blobs in one request, for a catch-up) and ``BYE``.
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
MEMBERS_TOPIC = "nebula-edge/members/1"
"""Membership news (Serf's gossip of member events): an agent's own record when it joins
or refutes a report of its death, and the death reports it makes. Sync rounds carry the
same lists as the backstop (``mesh/members.py``)."""
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
MAX_SYNC_RESPONSE = 1024 * 1024
"""A sync answer: 4 KiB of bucket hashes plus up to ``MAX_MEMBERS`` members (~150 bytes
each, 300 KiB); 1 MiB bounds a liar."""
MAX_PULL_RESPONSE = 4 * 1024 * 1024
"""A piece of at most ``PIECE_RECORDS`` records of <= 8 KiB (``MAX_MANIFEST_BYTES``);
typical records are ~500 bytes, so a typical piece is ~130 KiB."""
PIECE_RECORDS = 256
"""Records per pull answer. Large sets are reconciled in pieces of this size: no record
cap stops a growing mesh from catching up (the old single answer was refused past
20,000 records, forever)."""
PIECE_NAMES = 2048
"""Names one pull answer covers (most may have no records: names the answerer lacks)."""
MAX_PULL_REQUEST = 512 * 1024
"""A pull request names buckets and the asker's hashes in them (~40 bytes a name):
8,000 names fit, under the host's 1 MiB request limit."""
MAX_PULL_BUCKETS = 32
"""Buckets asked for in one pull request: 32 of 256 is ~625 names of 5,000 (25 KiB)."""
BLOBS_PER_REQUEST = 64
"""Small blobs (<= ``INLINE_MAX``) asked for in one ``blobs`` request during a catch-up:
one request stream instead of 64 (the server allows 8 streams per peer at once)."""
MAX_BLOBS_RESPONSE = 4 * 1024 * 1024
"""64 blobs of up to 32 KiB, base64: 2.7 MiB at most."""
MAX_MEMBERS = 2048
"""Members in one sync answer: twice the 1,000 agents the simulator is run with."""


@dataclass(frozen=True)
class Announce:
    manifest: Manifest
    wasm: bytes | None = None


@dataclass(frozen=True)
class Delete:
    tombstone: Tombstone


GossipMessage = Announce | Delete


BYE = b'{"type":"bye","v":1}'
"""Sent on ``SYNC_PROTOCOL`` before closing a connection on purpose (over ``CONN_HIGH``):
the peer then does not take the close for a failure."""


@dataclass(frozen=True)
class Member:
    """One agent of the mesh as another agent knows it (SWIM-style: the incarnation is
    raised only by the agent itself, to refute a report that it is dead)."""

    peer_id: str
    incarnation: int
    alive: bool
    addrs: tuple[str, ...] = ()


@dataclass(frozen=True)
class SyncRequest:
    digest: str
    members: str = ""
    """Digest of the asker's member list ("" = do not send members)."""


@dataclass(frozen=True)
class SyncResponse:
    digest: str
    buckets: tuple[str, ...] | None
    """The answerer's bucket hashes; None when the roots matched (nothing to pull)."""
    members: tuple[Member, ...] | None = None
    """The answerer's member list; None when the member digests matched."""


@dataclass(frozen=True)
class PullRequest:
    buckets: tuple[int, ...]
    hashes: dict[str, str]
    """The asker's name hashes in ``buckets`` (names it holds nothing of are absent)."""
    after: str = ""
    """Cursor: only names sorting after this one (the previous piece's ``next``)."""


@dataclass(frozen=True)
class PullResponse:
    names: tuple[str, ...]
    """Every name this piece covers: its hash differs from the asker's (the records below
    are all the answerer holds of them; none if it holds nothing)."""
    manifests: tuple[Manifest, ...]
    tombstones: tuple[Tombstone, ...]
    next: str | None
    """Cursor for the next piece; None when the buckets asked for are done."""


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


def sync_kind(data: bytes) -> str:
    """Which message on ``SYNC_PROTOCOL`` this is ("sync", "pull", "blobs", "bye"),
    without parsing it: canonical JSON sorts keys, so every message ends with
    ``"type":"<kind>","v":1}`` (a pull request's name hashes can make it 500 KiB: its type
    is at the end, not the start). Anything else is taken for "sync" and its decoder
    refuses it."""
    for kind in ("pull", "blobs", "bye"):
        if data.endswith(b'"type":"%s","v":%d}' % (kind.encode(), WIRE_VERSION)):
            return kind
    return "sync"


def encode_member_news(m: Member) -> bytes:
    return _dump({"type": "member", "member": _member_json(m)})


def decode_member_news(data: bytes) -> Member:
    d = _load(data, 4096)
    if d.get("type") != "member":
        raise BadRequest("not a member message")
    return _member(d.get("member"))


def encode_blobs_request(shas: list[str]) -> bytes:
    return _dump({"type": "blobs", "shas": shas})


def decode_blobs_request(data: bytes) -> list[str]:
    d = _load(data, 64 * 1024)
    shas = d.get("shas")
    if d.get("type") != "blobs" or not isinstance(shas, list) or len(shas) > BLOBS_PER_REQUEST \
            or not all(isinstance(x, str) and mf.SHA256_RE.fullmatch(x) for x in shas):
        raise BadRequest("malformed blobs request")
    return shas


def encode_blobs_response(blobs: dict[str, bytes]) -> bytes:
    return _dump({"type": "blobs-response",
                  "blobs": {k: base64.b64encode(v).decode() for k, v in blobs.items()}})


def decode_blobs_response(data: bytes) -> dict[str, bytes]:
    """sha256 -> bytes, as the peer sent them (the caller checks every hash)."""
    d = _load(data, MAX_BLOBS_RESPONSE)
    blobs = d.get("blobs")
    if d.get("type") != "blobs-response" or not isinstance(blobs, dict) \
            or len(blobs) > BLOBS_PER_REQUEST:
        raise BadRequest("malformed blobs response")
    out = {}
    for k, v in blobs.items():
        if not isinstance(v, str):
            raise BadRequest("malformed blobs response")
        try:
            out[k] = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("blob is not valid base64") from None
    return out


def encode_sync_request(r: SyncRequest) -> bytes:
    return _dump({"type": "sync", "digest": r.digest, "members": r.members})


def decode_sync_request(data: bytes) -> SyncRequest:
    d = _load(data, 4096)
    digest, members = d.get("digest"), d.get("members", "")
    if d.get("type") != "sync" or not isinstance(digest, str) or len(digest) > 128 \
            or not isinstance(members, str) or len(members) > 128:
        raise BadRequest("malformed sync request")
    return SyncRequest(digest, members)


def _member_json(m: Member) -> dict[str, Any]:
    return {"id": m.peer_id, "inc": m.incarnation, "alive": m.alive, "addrs": list(m.addrs)}


def _member(raw: object) -> Member:
    if not isinstance(raw, dict):
        raise BadRequest("malformed member")
    pid, inc, alive, addrs = raw.get("id"), raw.get("inc"), raw.get("alive"), raw.get("addrs")
    if not isinstance(pid, str) or not 0 < len(pid) <= 128 or not isinstance(inc, int) \
            or isinstance(inc, bool) or not 0 <= inc < 2**63 or not isinstance(alive, bool) \
            or not isinstance(addrs, list) or len(addrs) > 8 \
            or not all(isinstance(a, str) and len(a) <= 256 for a in addrs):
        raise BadRequest("malformed member")
    return Member(pid, inc, alive, tuple(addrs))


def encode_sync_response(r: SyncResponse) -> bytes:
    d: dict[str, Any] = {"type": "sync-response", "digest": r.digest}
    if r.buckets is not None:
        d["buckets"] = list(r.buckets)
    if r.members is not None:
        d["members"] = [_member_json(m) for m in r.members]
    return _dump(d)


def decode_sync_response(data: bytes) -> SyncResponse:
    d = _load(data, MAX_SYNC_RESPONSE)
    digest, buckets, members = d.get("digest"), d.get("buckets"), d.get("members")
    if d.get("type") != "sync-response" or not isinstance(digest, str) or len(digest) > 128:
        raise BadRequest("malformed sync response")
    if buckets is not None and (not isinstance(buckets, list) or len(buckets) > 4096 or not all(
            isinstance(b, str) and len(b) <= 32 for b in buckets)):
        raise BadRequest("malformed sync response buckets")
    if members is not None and (not isinstance(members, list) or len(members) > MAX_MEMBERS):
        raise BadRequest("malformed sync response members")
    return SyncResponse(digest, tuple(buckets) if buckets is not None else None,
                        tuple(_member(m) for m in members) if members is not None else None)


def encode_pull_request(r: PullRequest) -> bytes:
    return _dump({"type": "pull", "buckets": list(r.buckets), "hashes": r.hashes,
                  "after": r.after})


def decode_pull_request(data: bytes) -> PullRequest:
    d = _load(data, MAX_PULL_REQUEST)
    buckets, hashes, after = d.get("buckets"), d.get("hashes"), d.get("after", "")
    if d.get("type") != "pull" or not isinstance(buckets, list) \
            or len(buckets) > MAX_PULL_BUCKETS or not all(
                isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 65536
                for b in buckets) \
            or not isinstance(hashes, dict) or not all(
                isinstance(k, str) and len(k) <= 128 and isinstance(v, str) and len(v) <= 32
                for k, v in hashes.items()) \
            or not isinstance(after, str) or len(after) > 128:
        raise BadRequest("malformed pull request")
    return PullRequest(tuple(buckets), dict(hashes), after)


def encode_pull_response(r: PullResponse) -> bytes:
    return _dump({"type": "pull-response", "names": list(r.names),
                  "manifests": [m.to_json() for m in r.manifests],
                  "tombstones": [t.to_json() for t in r.tombstones], "next": r.next})


def decode_pull_response(data: bytes) -> PullResponse:
    d = _load(data, MAX_PULL_RESPONSE)
    names, ms, ts, nxt = d.get("names"), d.get("manifests"), d.get("tombstones"), d.get("next")
    if d.get("type") != "pull-response" or not isinstance(names, list) \
            or not all(isinstance(n, str) and len(n) <= 128 for n in names) \
            or not isinstance(ms, list) or not isinstance(ts, list) \
            or len(names) > PIECE_NAMES or len(ms) + len(ts) > 2 * PIECE_RECORDS \
            or not (nxt is None or (isinstance(nxt, str) and len(nxt) <= 128)):
        raise BadRequest("malformed pull response")
    return PullResponse(tuple(names), tuple(_record(x, Manifest) for x in ms),
                        tuple(_record(x, Tombstone) for x in ts), nxt)


def encode_info(i: PeerInfo) -> bytes:
    return _dump({"type": "info", "http_port": i.http_port, "version": i.version})


def decode_info(data: bytes) -> PeerInfo:
    d = _load(data, 4096)
    port, version = d.get("http_port"), d.get("version")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536 \
            or not isinstance(version, str) or len(version) > 64:
        raise BadRequest("malformed peer info")
    return PeerInfo(port, version)
