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
