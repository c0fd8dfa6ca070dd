"""Manifests and tombstones: the wire/disk format and the "which version is current" rule."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nebula_edge import manifest as mf
from nebula_edge.config import Limits
from nebula_edge.errors import BadRequest, InvalidName
from nebula_edge.manifest import Manifest, Tombstone

SHA_A = "a" * 64
SHA_B = "b" * 64


def make(name: str = "double", version: int = 1, sha: str = SHA_A, at: float = 1000.0,
         **kw: Any) -> Manifest:
    fields: dict[str, Any] = {"size": 74, "abi": "export", "export": "double",
                              "limits": Limits(), "publisher": "host:8080"}
    fields.update(kw)
    return Manifest(name=name, version=version, sha256=sha, deployed_at=at, **fields)


def raw(**overrides: Any) -> dict[str, Any]:
    d = make().to_json()
    for k, v in overrides.items():
        if v is _DROP:
            d.pop(k, None)
        else:
            d[k] = v
    return d


_DROP = object()


# ------------------------------------------------------------------------------ round trips
def test_manifest_round_trip() -> None:
    m = make(version=3, limits=Limits(timeout_ms=200, fuel=10), rollback_of=1,
             signature="sig", export=None, abi="wasi")
    data = m.encode()
    assert mf.decode(data) == m
    assert data == mf.canonical(json.loads(data))  # canonical: sorted keys, no spaces
    assert b" " not in data
    assert json.loads(data)["v"] == mf.FORMAT_VERSION


def test_tombstone_round_trip() -> None:
    t = Tombstone("double", 1234.5, "host:8080", None)
    back = mf.decode(t.encode())
    assert back == t
    assert isinstance(back, Tombstone)


def test_int_deployed_at_reads_as_float() -> None:
    m = mf.decode(mf.canonical(raw(deployed_at=7)))
    assert isinstance(m, Manifest)
    assert m.deployed_at == 7.0 and isinstance(m.deployed_at, float)


names = st.from_regex(mf.NAME_RE, fullmatch=True).filter(lambda n: ".." not in n)
limits = st.builds(Limits, *(st.none() | st.integers(0, 2**40) for _ in range(4)))
manifests = st.builds(
    Manifest, name=names, version=st.integers(1, 2**31), sha256=st.from_regex(
        mf.SHA256_RE, fullmatch=True), size=st.integers(0, 2**32),
    abi=st.sampled_from(mf.ABIS), export=st.none() | st.text(max_size=40),
    limits=limits, deployed_at=st.floats(0, 4e9, allow_nan=False),
    publisher=st.text(max_size=60), signature=st.none() | st.text(max_size=100),
    rollback_of=st.none() | st.integers(1, 2**31))


@settings(max_examples=100, database=None, deadline=None)
@given(manifests)
def test_any_manifest_round_trips(m: Manifest) -> None:
    assert mf.decode(m.encode()) == m


# ------------------------------------------------------------------------------ rejects
@pytest.mark.parametrize(("label", "data"), [
    ("too-large", mf.canonical(raw(publisher="p" * 200, signature="s" * 8000))),
    ("not-json", b"{nope"),
    ("not-utf8", b"\xff\xfe{}"),
    ("array", b"[]"),
    ("string", b'"manifest"'),
    ("deeply-nested", b"[" * 5000 + b"]" * 5000),
    ("nan-literal", mf.canonical(raw())[:-1] + b',"deployed_at":NaN}'),
])
def test_decode_rejects_malformed_bytes(label: str, data: bytes) -> None:
    with pytest.raises(BadRequest):
        mf.decode(data)


def test_decode_checks_size_before_parsing() -> None:
    # Valid JSON, but one byte over the cap.
    body = mf.canonical(raw())
    pad = mf.MAX_MANIFEST_BYTES + 1 - len(body)
    big = body + b" " * pad
    assert len(big) == mf.MAX_MANIFEST_BYTES + 1
    with pytest.raises(BadRequest, match="larger than"):
        mf.decode(big)
    assert mf.decode(body + b" " * (pad - 1)) == make()


def _json_with(key: str, literal: str) -> bytes:
    d = raw()
    d[key] = "__X__"
    return json.dumps(d).replace('"__X__"', literal).encode()


@pytest.mark.parametrize(("key", "literal"), [
    ("deployed_at", "1e999"),
    ("deployed_at", "-1e999"),
    ("deployed_at", "NaN"),
    ("deployed_at", "Infinity"),
    ("deployed_at", "-1"),
    ("deployed_at", "true"),
    ("deployed_at", '"1000"'),
    ("version", "true"),
    ("version", "1.0"),
    ("version", "0"),
    ("version", '"1"'),
    ("size", "false"),
    ("size", "-1"),
    ("size", "74.5"),
    ("rollback_of", "true"),
    ("rollback_of", '"1"'),
    ("v", "2"),
    ("v", "true"),
    ("v", "1.0"),
    ("v", '"1"'),
    ("sha256", '"' + "A" * 64 + '"'),
    ("sha256", '"' + "a" * 63 + '"'),
    ("sha256", '"' + "a" * 65 + '"'),
    ("sha256", '"../../etc/passwd"'),
    ("sha256", "null"),
    ("name", '"../x"'),
    ("name", '"a/b"'),
    ("name", '"' + "a" * 129 + '"'),
    ("name", '"caf\u00e9"'),
    ("name", "null"),
    ("name", "5"),
    ("abi", '"cgi"'),
    ("abi", "null"),
    ("export", "5"),
    ("publisher", "null"),
    ("publisher", '"' + "p" * 257 + '"'),
    ("signature", "5"),
    ("limits", "5"),
    ("limits", "[]"),
    ("limits", '{"timeout_ms": true}'),
    ("limits", '{"timeout_ms": -1}'),
    ("limits", '{"timeout_ms": 1.5}'),
    ("limits", '{"cpu": 1}'),
])
def test_decode_rejects_bad_fields(key: str, literal: str) -> None:
    with pytest.raises(BadRequest):
        mf.decode(_json_with(key, literal))


@pytest.mark.parametrize("key", ["name", "sha256", "abi", "deployed_at", "version", "size",
                                 "publisher", "v"])
def test_decode_rejects_missing_fields(key: str) -> None:
    with pytest.raises(BadRequest):
        mf.decode(mf.canonical(raw(**{key: _DROP})))


@pytest.mark.parametrize(("key", "literal"), [
    ("deleted_at", "1e999"), ("deleted_at", "true"), ("deleted_at", "-5"),
    ("deleted_at", "null"), ("name", '".."'), ("publisher", "7"),
])
def test_decode_rejects_bad_tombstones(key: str, literal: str) -> None:
    d = Tombstone("double", 5.0, "p").to_json()
    d[key] = "__X__"
    with pytest.raises(BadRequest):
        mf.decode(json.dumps(d).replace('"__X__"', literal).encode())


def test_invalid_name_is_its_own_error() -> None:
    with pytest.raises(InvalidName):
        mf.decode(_json_with("name", '"../x"'))
    assert mf.check_name("a.b_c-1") == "a.b_c-1"
    for bad in ["", ".", "..", "a..b", "-a", "_a", "a" * 129, "a\n", "a/b", 5, None]:
        with pytest.raises(InvalidName):
            mf.check_name(bad)


def test_canonical_refuses_nan() -> None:
    with pytest.raises(ValueError):
        mf.canonical({"x": float("nan")})


# ------------------------------------------------------------------------------ current()
def test_current_picks_the_latest_deploy() -> None:
    v1, v2, v3 = make(version=1, at=1.0), make(version=2, at=2.0), make(version=3, at=3.0)
    assert mf.current([v2, v3, v1], None) == v3
    assert mf.current([], None) is None


def test_current_breaks_ties_by_sha256() -> None:
    a, b = make(sha=SHA_A, at=5.0, version=7), make(sha=SHA_B, at=5.0, version=2)
    assert mf.current([a, b], None) == b
    assert mf.current([b, a], None) == b


def test_current_respects_tombstones() -> None:
    v1, v2 = make(version=1, at=1.0), make(version=2, at=2.0, sha=SHA_B)
    assert mf.current([v1, v2], Tombstone("double", 2.0, "p")) is None  # covers <=
    assert mf.current([v1, v2], Tombstone("double", 1.5, "p")) == v2
    assert mf.current([v1, v2], Tombstone("double", 0.5, "p")) == v2
    assert mf.current([v1], Tombstone("other", 9.0, "p")) == v1


def test_tombstone_covers() -> None:
    t = Tombstone("double", 2.0, "p")
    assert t.covers(make(at=2.0))
    assert t.covers(make(at=1.0))
    assert not t.covers(make(at=2.0001))
    assert not t.covers(make(name="other", at=1.0))


def _versions(unique: bool) -> st.SearchStrategy[list[Manifest]]:
    one = st.builds(make, version=st.integers(1, 20),
                    sha=st.sampled_from(["a" * 64, "b" * 64, "c" * 64, "0" * 64]),
                    at=st.sampled_from([0.0, 1.0, 1.5, 2.0, 3.25, 1e9]))
    return st.lists(one, max_size=12, unique_by=(lambda m: m.key) if unique else None)


tombstones = st.none() | st.builds(Tombstone, name=st.just("double"),
                                   deleted_at=st.sampled_from([0.0, 1.0, 1.75, 2.0, 5e9]),
                                   publisher=st.just("p"))


def _check_current(ms: list[Manifest], tomb: Tombstone | None, rnd: random.Random) -> None:
    expected = mf.current(ms, tomb)
    shuffled = list(ms)
    rnd.shuffle(shuffled)
    assert mf.current(shuffled, tomb) == expected
    assert mf.current(list(reversed(ms)), tomb) == expected
    live = [m for m in ms if tomb is None or m.deployed_at > tomb.deleted_at]
    if not live:
        assert expected is None
    else:
        assert expected is not None
        assert expected.key == max(m.key for m in live)


@settings(max_examples=200, database=None, deadline=None)
@given(_versions(unique=True), tombstones, st.randoms(use_true_random=False))
def test_current_is_independent_of_order(ms: list[Manifest], tomb: Tombstone | None,
                                         rnd: random.Random) -> None:
    _check_current(ms, tomb, rnd)


@settings(max_examples=200, database=None, deadline=None)
@example(ms=[make(version=1, at=5.0), make(version=2, at=5.0)], tomb=None,
         rnd=random.Random(0))
@given(_versions(unique=False), tombstones, st.randoms(use_true_random=False))
def test_current_is_independent_of_order_even_when_keys_tie(
        ms: list[Manifest], tomb: Tombstone | None, rnd: random.Random) -> None:
    """Two manifests with one (deployed_at, sha256) but other fields (version, limits,
    export, publisher: e.g. two peers deploying the same bytes in the same microsecond, or a
    peer's crafted copy) must still give every agent the same answer."""
    _check_current(ms, tomb, rnd)


def test_file_id_sorts_like_key() -> None:
    ms = [make(at=at, sha=sha) for at in (0.5, 1.0, 10.0, 1e9) for sha in (SHA_A, SHA_B)]
    assert sorted(ms, key=lambda m: m.file_id) == sorted(ms, key=lambda m: m.key)


# ------------------------------------------------------------------------------ restores
def test_restores_round_trips_and_is_absent_when_unset() -> None:
    m = make(version=4, rollback_of=2, restores="0123456789abcdef")
    assert mf.decode(m.encode()) == m
    assert json.loads(make().encode()).get("restores", _DROP) is _DROP
    # An old manifest (no field) keeps its id: the field is absent, not null.
    assert make().id == mf.decode(mf.canonical(raw())).id


@pytest.mark.parametrize("bad", ['"xyz"', "12", '"0123456789ABCDEF"', '"0123456789abcdef0"'])
def test_restores_must_be_a_manifest_id(bad: str) -> None:
    with pytest.raises(BadRequest, match="restores"):
        mf.from_json(raw(restores=json.loads(bad)))
