"""Publisher keys: who may deploy, roll back and delete.

A person makes an ed25519 key pair with ``nebctl keygen``; ``nebctl`` then signs an
*order* for every change it asks for, and the signature travels with the manifest (or
tombstone) through gossip and catch-up sync. An agent started with trusted keys
(``-trust``/``-trust-file``) accepts a change only if its order is signed by one of them,
at its own HTTP API and from peers alike. Without trusted keys the agent runs open.

Orders are small canonical-JSON objects; what each one binds::

    deploy    {"op","name","sha256","size","abi","export","limits","at","key"}
    rollback  {"op","name","restores","sha256","abi","export","limits","at","key"}
    delete    {"op","name","at","key"}

``abi``/``export`` are what was requested (``null`` = detect): detection is a function of
the bytes, which the signature covers by hash. The agent-assigned version number is a
label and is not signed; order is decided by ``at`` (= the manifest's ``deployed_at``).
A rollback names the version it restores by manifest id (``restores``): the one kept
version whose bytes and settings it runs again, the same on every agent. Rollback orders
signed before ``restores`` existed have no such field; the manifests they made stay
verifiable (the field is absent from both), but the API takes a new rollback order only
if it names ``restores``.

Replay and skew: the API refuses an order whose ``at`` is more than ``MAX_SKEW_S`` behind
its clock or more than ``MAX_FUTURE_S`` (60 s) ahead of it; from peers, a replayed old
order changes nothing (the store already holds it, or a newer version or tombstone wins),
and one dated more than ``MAX_FUTURE_S`` ahead is held back (``mesh/versions.py``).
"""

from __future__ import annotations

import base64
import binascii
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from nebula_edge.errors import BadRequest, Forbidden
from nebula_edge.manifest import MAX_FUTURE_S, Manifest, Tombstone, canonical, parse_limits

PREFIX = "ed25519:"
MAX_SKEW_S = 300.0
"""How far an order's time may be behind the agent's clock at the API (5 min, like
Kerberos); ahead of it, only ``MAX_FUTURE_S`` (60 s)."""


def default_key_path() -> Path | None:
    """``$XDG_CONFIG_HOME/nebula-edge/publisher.key`` (or under ``~/.config``); None when
    there is no home to look in (HOME unset and no passwd entry, as in some containers)."""
    base = os.environ.get("XDG_CONFIG_HOME")
    if not base:
        try:
            base = str(Path.home() / ".config")
        except RuntimeError:
            return None
    return Path(base) / "nebula-edge" / "publisher.key"


def public_key_str(priv: Ed25519PrivateKey) -> str:
    raw = priv.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)
    return PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_public_key(text: str) -> Ed25519PublicKey:
    text = text.strip()
    if not text.startswith(PREFIX):
        raise BadRequest(f"a publisher key looks like {PREFIX}<base64>, not {text[:40]!r}")
    body = text[len(PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise BadRequest(f"not a valid ed25519 public key: {text[:60]!r}") from None


def generate(path: Path, force: bool = False) -> str:
    """Write a new private key (PEM, mode 0600) and return its public key string."""
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass -force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    priv = Ed25519PrivateKey.generate()
    pem = priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.replace(tmp, path)
    pub = public_key_str(priv)
    path.with_suffix(".pub").write_text(pub + "\n")
    return pub


def load_private(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise BadRequest(f"{path} is not an ed25519 private key")
    return key


def sign(priv: Ed25519PrivateKey, order: dict[str, Any]) -> str:
    return base64.b64encode(priv.sign(canonical(order))).decode()


def read_trust(keys: Iterable[str], files: Iterable[Path]) -> frozenset[str]:
    """Trusted keys from flags and files (one key per line, ``#`` comments), validated."""
    out = set()
    for k in keys:
        parse_public_key(k)
        out.add(k.strip())
    for f in files:
        for line in f.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                parse_public_key(line)
                out.add(line)
    return frozenset(out)


def _verify(order: dict[str, Any] | None, signature: str | None, trusted: frozenset[str]) -> None:
    if order is None or signature is None:
        raise Forbidden("this agent accepts only changes signed by a trusted key; this one is "
                        "unsigned (make a key with `nebctl keygen`)")
    key = order.get("key")
    if not isinstance(key, str) or key not in trusted:
        raise Forbidden(f"signed by a key this agent does not trust: {str(key)[:60]}")
    try:
        parse_public_key(key).verify(base64.b64decode(signature, validate=True),
                                     canonical(order))
    except (InvalidSignature, binascii.Error, ValueError):
        raise Forbidden("the signature does not match the order it came with") from None


def _fresh(at: float, now: float | None) -> None:
    if now is None:
        return
    if not math.isfinite(at) or at - now > MAX_FUTURE_S:
        raise Forbidden(f"the signed order is dated {at - now:.0f} s ahead of this agent's "
                        f"clock (limit {MAX_FUTURE_S:.0f} s): the signer's clock is wrong")
    if now - at > MAX_SKEW_S:
        raise Forbidden(f"the signed order is {now - at:.0f} s older than this agent's "
                        f"clock (limit {MAX_SKEW_S:.0f} s): replayed or clock skew")


def check_order(order: dict[str, Any], signature: str, trusted: frozenset[str],
                now: float) -> None:
    """The byte-independent part of the checks, done before an agent compiles or stores
    anything: trusted key, valid signature, fresh time."""
    if not trusted:
        return
    _verify(order, signature, trusted)
    at = order.get("at")
    if not isinstance(at, int | float) or isinstance(at, bool):
        raise Forbidden("the signed order has no time")
    _fresh(float(at), now)


def check(rec: Manifest | Tombstone, trusted: frozenset[str], now: float | None = None) -> None:
    """``check_manifest`` or ``check_tombstone``, whichever ``rec`` is."""
    if isinstance(rec, Tombstone):
        check_tombstone(rec, trusted, now)
    else:
        check_manifest(rec, trusted, now)


def check_manifest(m: Manifest, trusted: frozenset[str], now: float | None = None) -> None:
    """Raise ``Forbidden`` unless ``m`` is signed by a trusted key and its order matches it.
    No-op for an open agent (no trusted keys). ``now`` enables the replay check."""
    if not trusted:
        return
    o = m.order
    _verify(o, m.signature, trusted)
    assert o is not None
    same = (o.get("name") == m.name and o.get("sha256") == m.sha256
            and o.get("at") == m.deployed_at and o.get("key") == m.publisher)
    try:
        limits = parse_limits(o.get("limits") or {})
    except BadRequest:
        limits = None
    if o.get("op") == "deploy":
        same = same and (o.get("size") == m.size and limits == m.limits
                         and o.get("abi") in (None, m.abi) and o.get("export") in (None, m.export))
    elif o.get("op") == "rollback":
        # Binds how the old bytes are run again, not only which bytes.
        same = same and (limits == m.limits and o.get("abi") == m.abi
                         and o.get("export") == m.export and o.get("restores") == m.restores)
    else:
        same = False
    if not same:
        raise Forbidden("the signed order does not describe this module version")
    _fresh(m.deployed_at, now)


def check_tombstone(t: Tombstone, trusted: frozenset[str], now: float | None = None) -> None:
    if not trusted:
        return
    o = t.order
    _verify(o, t.signature, trusted)
    assert o is not None
    if (o.get("op"), o.get("name"), o.get("at"), o.get("key")) != \
            ("delete", t.name, t.deleted_at, t.publisher):
        raise Forbidden("the signed order does not describe this deletion")
    _fresh(t.deleted_at, now)
