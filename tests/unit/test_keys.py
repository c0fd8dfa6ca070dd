"""Publisher keys and signed orders, without agents: what a signature binds."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from nebula_edge import keys
from nebula_edge.config import Limits
from nebula_edge.errors import Forbidden
from nebula_edge.manifest import Manifest, Tombstone


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, str]:
    path: Path = tmp_path_factory.mktemp("k") / "p.key"
    pub = keys.generate(path)
    return keys.load_private(path), pub


def rollback(signer: tuple[object, str], limits: Limits, export: str) -> Manifest:
    priv, pub = signer
    at = time.time()
    order = {"op": "rollback", "name": "double", "sha256": "a" * 64, "abi": "export",
             "export": "double", "limits": {"timeout_ms": 100}, "at": at, "key": pub}
    return Manifest(name="double", version=3, sha256="a" * 64, size=10, abi="export",
                    export=export, limits=limits, deployed_at=at, publisher=pub,
                    signature=keys.sign(priv, order), rollback_of=1,
                    order=order)


def test_a_rollback_order_binds_limits_and_export(signer: tuple[object, str]) -> None:
    trusted = frozenset({signer[1]})
    good = rollback(signer, Limits(timeout_ms=100), "double")
    keys.check_manifest(good, trusted, now=time.time())
    for bad in (rollback(signer, Limits(timeout_ms=30000), "double"),
                rollback(signer, Limits(timeout_ms=100), "other")):
        with pytest.raises(Forbidden, match="does not describe"):
            keys.check_manifest(bad, trusted)


def test_unsigned_untrusted_and_tampered_records(signer: tuple[object, str]) -> None:
    trusted = frozenset({signer[1]})
    good = rollback(signer, Limits(timeout_ms=100), "double")
    with pytest.raises(Forbidden, match="unsigned"):
        keys.check_manifest(dataclasses.replace(good, signature=None), trusted)
    with pytest.raises(Forbidden, match="does not trust"):
        keys.check_manifest(good, frozenset({"ed25519:" + "A" * 43}))
    assert good.order is not None
    forged = dataclasses.replace(good, order={**good.order, "sha256": "b" * 64},
                                 sha256="b" * 64)
    with pytest.raises(Forbidden, match="signature does not match"):
        keys.check_manifest(forged, trusted)
    with pytest.raises(Forbidden, match="replayed"):
        keys.check_manifest(good, trusted, now=time.time() + 3600)
    keys.check_manifest(dataclasses.replace(good, signature=None), frozenset())  # open agent


def test_tombstone_ids_tell_forgeries_apart(signer: tuple[object, str]) -> None:
    priv, pub = signer
    order = {"op": "delete", "name": "double", "at": 5.0, "key": pub}
    real = Tombstone("double", 5.0, pub, keys.sign(priv, order), order)
    forged = Tombstone("double", 5.0, pub, "AAAA", order)
    assert real.id != forged.id
    keys.check_tombstone(real, frozenset({pub}))
    with pytest.raises(Forbidden):
        keys.check_tombstone(forged, frozenset({pub}))


def test_a_rollback_order_binds_the_version_it_restores(signer: tuple[object, str]) -> None:
    priv, pub = signer
    trusted = frozenset({pub})
    at = time.time()
    order = {"op": "rollback", "name": "double", "restores": "0123456789abcdef",
             "sha256": "a" * 64, "abi": "export", "export": "double", "limits": {},
             "at": at, "key": pub}
    m = Manifest(name="double", version=3, sha256="a" * 64, size=10, abi="export",
                 export="double", limits=Limits(), deployed_at=at, publisher=pub,
                 signature=keys.sign(priv, order), rollback_of=1, order=order,
                 restores="0123456789abcdef")
    keys.check_manifest(m, trusted, now=at)
    for other in (dataclasses.replace(m, restores="fedcba9876543210"),
                  dataclasses.replace(m, restores=None)):
        with pytest.raises(Forbidden, match="does not describe"):
            keys.check_manifest(other, trusted)


def test_a_rollback_signed_before_restores_existed_stays_verifiable(
        signer: tuple[object, str]) -> None:
    old = rollback(signer, Limits(timeout_ms=100), "double")  # no "restores" anywhere
    assert old.restores is None and "restores" not in old.to_json()
    keys.check_manifest(old, frozenset({signer[1]}))


def test_an_order_dated_more_than_a_minute_ahead_is_refused(signer: tuple[object, str]) -> None:
    priv, pub = signer
    trusted = frozenset({pub})
    now = time.time()
    for at, ok in ((now + 59, True), (now + 61, False), (now + 86_400, False),
                   (now - 299, True), (now - 301, False)):
        order = {"op": "delete", "name": "double", "at": at, "key": pub}
        t = Tombstone("double", at, pub, keys.sign(priv, order), order)
        if ok:
            keys.check_tombstone(t, trusted, now=now)
            keys.check_order(order, t.signature or "", trusted, now=now)
        else:
            with pytest.raises(Forbidden, match="ahead of this agent's clock" if at > now
                               else "replayed"):
                keys.check_tombstone(t, trusted, now=now)
