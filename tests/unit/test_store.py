"""The on-disk module store: atomic files, version pruning, tombstones, reload, corruption."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from nebula_edge.config import Limits
from nebula_edge.errors import BadRequest, CorruptBlob, StoreError
from nebula_edge.manifest import Manifest, Tombstone
from nebula_edge.store import ModuleStore
from nebula_edge.store.fsutil import DirLock, atomic_write, remove_stale_temps


def blob(i: int) -> bytes:
    return b"\0asm\1\0\0\0" + i.to_bytes(4, "big")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(name: str, data: bytes, at: float, version: int = 1) -> Manifest:
    return Manifest(name=name, version=version, sha256=sha(data), size=len(data), abi="export",
                    export=name, limits=Limits(), deployed_at=at, publisher="test")


def put(store: ModuleStore, name: str, data: bytes, at: float, version: int = 1) -> Manifest:
    sha = store.put_blob(data)
    m = manifest(name, data, at, version)
    try:
        assert store.put_manifest(m) is True
    finally:
        store.unpin(sha)  # as every writer does once the manifest is down
    return m


def temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@pytest.fixture
def store(tmp_path: Path) -> ModuleStore:
    return ModuleStore(tmp_path / "state")


# ------------------------------------------------------------------------------ files
def test_layout_and_atomic_writes_leave_no_temp_files(store: ModuleStore) -> None:
    m = put(store, "double", blob(1), 1.0)
    store.put_tombstone(Tombstone("gone", 5.0, "test"))
    assert files(store.root) == ["blobs", "cache", "manifests", "quarantine", "tombstones"]
    assert files(store.blob_dir) == [m.sha256]
    assert files(store.manifest_dir / "double") == [f"{m.file_id}.json"]
    assert files(store.tomb_dir) == ["gone.json"]
    assert temps(store.root) == []
    assert (store.blob_dir / m.sha256).read_bytes() == blob(1)
    assert (store.blob_dir / m.sha256).stat().st_mode & 0o777 == 0o444


def test_atomic_write_replaces_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert files(tmp_path) == ["f.json"]


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic_write(target, b"old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert files(tmp_path) == ["f.json"]


def test_put_blob_is_content_addressed(store: ModuleStore) -> None:
    assert store.put_blob(blob(1)) == sha(blob(1))
    assert store.put_blob(blob(1)) == sha(blob(1))
    assert store.has_blob(sha(blob(1)))
    assert store.read_blob(sha(blob(1))) == blob(1)
    with pytest.raises(BadRequest):
        store.put_blob(blob(2), expect_sha=sha(blob(3)))
    assert not store.has_blob(sha(blob(2)))


@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 64, "a" * 63, ""])
def test_blob_path_refuses_what_is_not_a_sha256(store: ModuleStore, bad: str) -> None:
    with pytest.raises(BadRequest):
        store.blob_path(bad)


def test_read_missing_blob_is_a_store_error(store: ModuleStore) -> None:
    with pytest.raises(StoreError):
        store.read_blob("0" * 64)


def test_manifest_needs_its_blob_first(store: ModuleStore) -> None:
    with pytest.raises(StoreError):
        store.put_manifest(manifest("double", blob(1), 1.0))
    assert store.names() == []


# ------------------------------------------------------------------------------ versions
def test_keeps_the_last_five_versions_and_gcs_their_blobs(store: ModuleStore) -> None:
    ms = [put(store, "double", blob(i), float(i), version=i) for i in range(1, 8)]
    assert store.versions("double") == ms[2:]
    assert store.current("double") == ms[-1]
    assert files(store.manifest_dir / "double") == sorted(f"{m.file_id}.json" for m in ms[2:])
    assert files(store.blob_dir) == sorted(m.sha256 for m in ms[2:])
    assert store.next_version("double") == 8


def test_older_than_all_kept_versions_is_refused(store: ModuleStore) -> None:
    for i in range(5):
        put(store, "double", blob(i), 10.0 + i)
    store.put_blob(blob(99))
    assert store.put_manifest(manifest("double", blob(99), 1.0)) is False
    assert len(store.versions("double")) == 5


def test_versions_are_ordered_by_key_not_by_arrival(store: ModuleStore) -> None:
    late = put(store, "double", blob(2), 2.0, version=2)
    early = put(store, "double", blob(1), 1.0, version=1)
    assert store.versions("double") == [early, late]
    assert store.current("double") == late


def test_same_key_is_stored_once(store: ModuleStore) -> None:
    m = put(store, "double", blob(1), 1.0)
    assert store.put_manifest(m) is False
    assert store.versions("double") == [m]


# ------------------------------------------------------------------------------ tombstones
def test_tombstone_removes_covered_versions_and_gcs_blobs(store: ModuleStore) -> None:
    v1 = put(store, "double", blob(1), 1.0)
    v2 = put(store, "double", blob(2), 2.0, version=2)
    other = put(store, "other", blob(3), 1.0)
    assert store.put_tombstone(Tombstone("double", 1.5, "test")) is True
    assert store.versions("double") == [v2]
    assert files(store.blob_dir) == sorted([v2.sha256, other.sha256])
    assert not (store.manifest_dir / "double" / f"{v1.file_id}.json").exists()

    assert store.put_tombstone(Tombstone("double", 2.0, "test")) is True
    assert store.versions("double") == []
    assert store.current("double") is None
    assert store.names() == ["other"]
    assert files(store.blob_dir) == [other.sha256]
    assert store.tombstone("double") == Tombstone("double", 2.0, "test")


def test_older_tombstone_changes_nothing(store: ModuleStore) -> None:
    assert store.put_tombstone(Tombstone("double", 5.0, "test"))
    assert store.put_tombstone(Tombstone("double", 4.0, "test")) is False
    assert store.put_tombstone(Tombstone("double", 5.0, "test")) is False
    assert store.tombstone("double") == Tombstone("double", 5.0, "test")


def test_manifest_covered_by_a_tombstone_is_refused(store: ModuleStore) -> None:
    store.put_tombstone(Tombstone("double", 5.0, "test"))
    store.put_blob(blob(1))
    assert store.put_manifest(manifest("double", blob(1), 5.0)) is False
    assert store.put_manifest(manifest("double", blob(1), 5.1)) is True
    assert [m.deployed_at for m in store.versions("double")] == [5.1]


def test_shared_blob_survives_while_any_version_uses_it(store: ModuleStore) -> None:
    put(store, "a", blob(1), 1.0)
    put(store, "b", blob(1), 1.0)
    store.put_tombstone(Tombstone("a", 2.0, "test"))
    assert store.read_blob(sha(blob(1))) == blob(1)


def test_a_blob_stored_for_a_deploy_in_progress_survives_gc(store: ModuleStore) -> None:
    # A deploy stores its blob, then its manifest. A delete (or a prune) of another module in
    # between runs the blob GC, which must not take the new, not yet referenced, blob.
    put(store, "other", blob(9), 1.0)
    store.put_blob(blob(1))
    store.put_tombstone(Tombstone("other", 2.0, "test"))
    assert store.put_manifest(manifest("double", blob(1), 3.0)) is True


# ------------------------------------------------------------------------------ reload
def test_restart_reloads_the_index(tmp_path: Path) -> None:
    s1 = ModuleStore(tmp_path / "s")
    ms = [put(s1, "double", blob(i), float(i), version=i) for i in range(1, 4)]
    other = put(s1, "other", blob(7), 1.0)
    s1.put_tombstone(Tombstone("gone", 9.0, "test"))
    s2 = ModuleStore(tmp_path / "s")
    assert s2.names() == ["double", "other"]
    assert s2.versions("double") == ms
    assert s2.current("other") == other
    assert s2.tombstone("gone") == Tombstone("gone", 9.0, "test")
    assert s2.next_version("double") == 4


def test_restart_with_a_smaller_keep_prunes(tmp_path: Path) -> None:
    s1 = ModuleStore(tmp_path / "s")
    ms = [put(s1, "double", blob(i), float(i), version=i) for i in range(1, 6)]
    s2 = ModuleStore(tmp_path / "s", keep=2)
    assert s2.versions("double") == ms[3:]
    assert files(s2.blob_dir) == sorted(m.sha256 for m in ms[3:])


def test_manifest_without_its_blob_is_dropped_at_load(tmp_path: Path) -> None:
    s1 = ModuleStore(tmp_path / "s")
    keep = put(s1, "double", blob(1), 1.0)
    lost = put(s1, "double", blob(2), 2.0, version=2)
    os.unlink(s1.blob_dir / lost.sha256)
    s2 = ModuleStore(tmp_path / "s")
    assert s2.versions("double") == [keep]
    assert files(s2.manifest_dir / "double") == [f"{keep.file_id}.json"]


def test_unreferenced_blobs_are_removed_at_load(tmp_path: Path) -> None:
    s1 = ModuleStore(tmp_path / "s")
    keep = put(s1, "double", blob(1), 1.0)
    s1.put_blob(blob(2))  # a crash before its manifest was written
    s2 = ModuleStore(tmp_path / "s")
    assert files(s2.blob_dir) == [keep.sha256]


def test_stale_temp_files_are_removed_at_load(tmp_path: Path) -> None:
    s1 = ModuleStore(tmp_path / "s")
    m = put(s1, "double", blob(1), 1.0)
    junk = [s1.blob_dir / f".{m.sha256}.123.tmp", s1.manifest_dir / "double" / ".x.json.9.tmp",
            s1.tomb_dir / ".double.json.5.tmp", s1.cache_dir / ".y.cwasm.7.tmp"]
    for p in junk:
        p.write_bytes(b"partial")
    assert remove_stale_temps(tmp_path / "nothing-here") == 0
    s2 = ModuleStore(tmp_path / "s")
    assert temps(s2.root) == []
    assert s2.versions("double") == [m]


def test_unreadable_manifest_is_quarantined_at_load(tmp_path: Path) -> None:
    s1 = ModuleStore(tmp_path / "s")
    m = put(s1, "double", blob(1), 1.0)
    bad = s1.manifest_dir / "double" / "00000000000000000001-deadbeefdeadbeef.json"
    bad.write_bytes(b"{not json")
    s2 = ModuleStore(tmp_path / "s")
    assert s2.versions("double") == [m]
    assert not bad.exists()
    assert [p.name.rsplit(".", 1)[0] for p in s2.quarantine_dir.iterdir()] == [bad.name]


def test_tombstone_on_disk_hides_covered_versions_after_a_crash(tmp_path: Path) -> None:
    # A crash between writing the tombstone and unlinking the manifests it covers: the next
    # start must not resurrect the deleted versions.
    s1 = ModuleStore(tmp_path / "s")
    put(s1, "double", blob(1), 1.0)
    t = Tombstone("double", 2.0, "test")
    atomic_write(s1.tomb_dir / "double.json", t.encode())
    s2 = ModuleStore(tmp_path / "s")
    assert s2.tombstone("double") == t
    assert s2.versions("double") == []
    assert s2.current("double") is None
    assert s2.names() == []


# ------------------------------------------------------------------------------ corruption
def test_corrupted_blob_raises_and_is_quarantined(store: ModuleStore) -> None:
    m = put(store, "double", blob(1), 1.0)
    path = store.blob_dir / m.sha256
    os.chmod(path, 0o644)
    path.write_bytes(blob(1)[:-1] + b"X")
    with pytest.raises(CorruptBlob) as e:
        store.read_blob(m.sha256)
    assert e.value.code == "corrupt_blob"
    assert e.value.details["sha256"] == m.sha256
    assert not path.exists()
    quarantined = list(store.quarantine_dir.iterdir())
    assert [p.name.split(".")[0] for p in quarantined] == [m.sha256]
    assert quarantined[0].read_bytes() == blob(1)[:-1] + b"X"
    # The blob can be stored again (e.g. fetched from a peer) and read back.
    store.put_blob(blob(1))
    assert store.read_blob(m.sha256) == blob(1)


# ------------------------------------------------------------------------------ lock
def test_dir_lock_is_exclusive(tmp_path: Path) -> None:
    a, b = DirLock(tmp_path), DirLock(tmp_path)
    assert a.acquire() is True
    assert (tmp_path / "LOCK").read_text() == f"{os.getpid()}\n"
    assert b.acquire() is False
    a.release()
    assert b.acquire() is True
    b.release()
