"""``ModuleStore.put_many``: a catch-up's batch write (one filesystem sync per batch) keeps
the store's rules: versions pruned to ``keep``, tombstones win, watchers told, state
survives a reload, a blob that does not match its manifests is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_store import blob, manifest

from nebula_edge.errors import BadRequest
from nebula_edge.manifest import Tombstone
from nebula_edge.store import ModuleStore


def test_put_many_stores_prunes_and_reloads(tmp_path: Path) -> None:
    store = ModuleStore(tmp_path, keep=2)
    changed: list[str] = []
    store.watch(changed.append)
    store.put_tombstone(Tombstone("gone", 5.0, "p"))
    items = [(blob(i), [manifest("x", blob(i), float(i))]) for i in range(4)]
    items.append((blob(9), [manifest("gone", blob(9), 1.0)]))  # covered by the tombstone
    items.append((blob(10), [manifest("y", blob(10), 1.0), manifest("z", blob(10), 1.0)]))
    taken = store.put_many(items)
    assert sorted((m.name, m.deployed_at) for m in taken) == [
        ("x", 0.0), ("x", 1.0), ("x", 2.0), ("x", 3.0), ("y", 1.0), ("z", 1.0)]
    assert [m.deployed_at for m in store.versions("x")] == [2.0, 3.0]
    assert store.names() == ["x", "y", "z"]
    assert sorted(changed) == ["gone", "x", "y", "z"]
    again = ModuleStore(tmp_path, keep=2)
    assert [m.deployed_at for m in again.versions("x")] == [2.0, 3.0]
    assert again.read_blob(manifest("y", blob(10), 1.0).sha256) == blob(10)
    assert not (tmp_path / "blobs" / manifest("x", blob(0), 0.0).sha256).exists()


def test_put_many_refuses_bytes_that_do_not_match(tmp_path: Path) -> None:
    store = ModuleStore(tmp_path)
    with pytest.raises(BadRequest):
        store.put_many([(blob(1), [manifest("x", blob(2), 1.0)])])
    assert store.names() == []


def test_tombstones_are_collected_after_the_horizon(tmp_path: Path) -> None:
    store = ModuleStore(tmp_path)
    store.put_tombstone(Tombstone("old", 10.0, "p"))
    store.put_tombstone(Tombstone("new", 100.0, "p"))
    assert store.collect_tombstones(before=50.0) == ["old"]
    assert [t.name for t in ModuleStore(tmp_path).tombstones()] == ["new"]


def test_records_from_before_an_absence_are_set_aside(tmp_path: Path) -> None:
    store = ModuleStore(tmp_path)
    store.put_many([(blob(1), [manifest("stale", blob(1), 10.0)]),
                    (blob(2), [manifest("fresh", blob(2), 200.0)])])
    store.put_tombstone(Tombstone("gone", 20.0, "p"))
    where = store.set_aside_records(before=100.0)
    assert where is not None and len(list(where.iterdir())) == 2
    again = ModuleStore(tmp_path)
    assert again.names() == ["fresh"] and again.tombstones() == []
    assert store.set_aside_records(before=100.0) is None
