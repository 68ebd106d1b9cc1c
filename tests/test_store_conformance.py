"""Conformance suite every vector-store backend must pass.

Parametrised over :data:`heterag.stores.STORES`, so a new backend only has to
register itself there to be tested (server backends also name their session server in
``tests/store_servers.py``), plus ``milvus-server`` (the ``milvus`` backend on a Milvus server) when
``HETERAG_MILVUS_SERVER=1``, inside ``unshare --net`` (``.ci/run``). Contract pinned here:

* scores are cosine similarities, best first, for any (also non-unit) vectors;
  stored vectors come back as given;
* filters behave exactly like :func:`heterag.stores.filters.matches` (the reference);
* every failed call (bad dimension, NaN, duplicate ids...) leaves the store unchanged;
* query results carry no vectors (``record.vector is None``).

Backend-specific crash/rebuild tests for FAISS are at the end of the file.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from store_servers import (  # noqa: F401 - session fixtures
    chroma_server,
    milvus_lite,
    milvus_server,
    milvus_server_process,
    pg_server,
    store_backends,
    store_spec,
    wipe,
)

from heterag.core.errors import (
    DimensionMismatchError,
    FingerprintMismatchError,
    HeteragError,
    InvalidInputError,
    KeywordIndexError,
    UnknownNameError,
)
from heterag.stores import (
    STORES,
    Fingerprint,
    KeywordSearch,
    Record,
    VectorStore,
    keyword_index_path,
    open_store,
    parse_store_url,
)
from heterag.stores.filters import matches
from heterag.stores.keyword import KeywordIndex
from heterag.stores.keyworded import KeywordedStore

logger = logging.getLogger(__name__)

DIM = 16
COLLECTION = "conformance"
LARGE_BATCH = 6000  # more than chroma's max batch size (5461 in chromadb 1.5)
FP = Fingerprint(model="test-encoder", dim=DIM, view="chunk")


# --------------------------------------------------------------------------- helpers


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mat = rng.normal(size=(n, dim)).astype(np.float32)
    return mat / np.linalg.norm(mat, axis=1, keepdims=True)


def make_records(n: int, dim: int = DIM, seed: int = 0, prefix: str = "r") -> list[Record]:
    vecs = unit_vectors(n, dim, seed)
    return [
        Record(id=f"{prefix}{i}", vector=vecs[i], text=f"text {i}", metadata={"i": i, "even": i % 2 == 0})
        for i in range(n)
    ]


def cosine(query: np.ndarray, mat: np.ndarray) -> np.ndarray:
    q = query / np.linalg.norm(query)
    return (mat @ q) / np.linalg.norm(mat, axis=1)


def ids_of(records: list[Record]) -> set[str]:
    return {r.id for r in records}


@pytest.fixture(params=store_backends())
def store_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """The store spec: the backend name for embedded stores, the URL of the session's (emptied)
    server for server stores (tests/store_servers.py; skipped with the reason when it cannot start).
    Backend ``milvus-server`` (a Milvus server) only with ``HETERAG_MILVUS_SERVER=1``, inside ``unshare --net``;
    emptied after each test (it keeps every collection loaded, each one costing it time)."""
    spec = store_spec(request, request.param)
    yield spec
    if request.param == "milvus-server":
        wipe(spec)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(store_name: str, store_dir: Path) -> Iterator[VectorStore]:
    s = open_store(store_name, store_dir, COLLECTION)
    yield s
    s.close()


# --------------------------------------------------------------------------- basics


def test_registry_and_protocol(store: VectorStore, store_name: str) -> None:
    assert isinstance(store, VectorStore)
    assert store.name == store_name


def test_unknown_store_name_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError) as info:
        open_store("no-such-store", tmp_path)
    assert isinstance(info.value, HeteragError)
    for name in STORES:
        assert name in str(info.value)


def test_invalid_collection_name(store_name: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError):
        open_store(store_name, tmp_path, "../escape")


def test_empty_store(store: VectorStore) -> None:
    assert store.count() == 0
    assert store.dim is None
    assert store.fingerprint() is None
    assert store.get() == []
    assert store.query(unit_vectors(1)[0], k=3) == []


def test_empty_upsert_is_noop(store: VectorStore) -> None:
    store.upsert([])
    assert store.count() == 0 and store.dim is None


def test_upsert_get_roundtrip_keeps_types(store: VectorStore) -> None:
    vecs = unit_vectors(3)
    meta = {"int": 1, "float": 1.0, "neg": -2.5, "bool": True, "false": False, "str": "x", "zero": 0}
    recs = [
        Record("a", vecs[0], "alpha", meta),
        Record("b", vecs[1], "beta", {}),
        Record("c", vecs[2], "", {"k": "v"}),
    ]
    store.upsert(recs)
    assert store.count() == 3 and store.dim == DIM
    got = store.get(["a", "b", "c"], include_vectors=True)
    assert [r.id for r in got] == ["a", "b", "c"]
    for want, have in zip(recs, got, strict=True):
        assert have.text == want.text
        assert dict(have.metadata) == dict(want.metadata)
        assert {k: type(v) for k, v in have.metadata.items()} == {k: type(v) for k, v in want.metadata.items()}
        assert have.vector is not None and have.vector.dtype == np.float32
        np.testing.assert_allclose(have.vector, want.vector, atol=1e-5)
    assert all(r.vector is None for r in store.get(["a"]))


def test_get_preserves_order_and_skips_missing(store: VectorStore) -> None:
    store.upsert(make_records(5))
    got = store.get(["r3", "missing", "r0", "r4"])
    assert [r.id for r in got] == ["r3", "r0", "r4"]
    assert store.get([]) == []
    assert ids_of(store.get()) == {f"r{i}" for i in range(5)}


def test_reupsert_is_idempotent(store: VectorStore) -> None:
    recs = make_records(10)
    store.upsert(recs)
    store.upsert(recs)
    assert store.count() == 10
    assert [h.record.id for h in store.query(recs[4].vector, k=1)] == ["r4"]


def test_upsert_replaces_existing(store: VectorStore) -> None:
    recs = make_records(10)
    store.upsert(recs)
    new_vec = unit_vectors(1, seed=99)[0]
    store.upsert([Record("r2", new_vec, "replaced", {"tag": "new"})])
    assert store.count() == 10
    (got,) = store.get(["r2"], include_vectors=True)
    assert got.text == "replaced" and dict(got.metadata) == {"tag": "new"}
    np.testing.assert_allclose(got.vector, new_vec, atol=1e-5)
    top = store.query(new_vec, k=1)[0]
    assert top.record.id == "r2" and top.score == pytest.approx(1.0, abs=1e-4)
    assert store.get(where={"i": 2}) == []
    assert [r.id for r in store.get(where={"tag": "new"})] == ["r2"]
    store.upsert([Record("r3", recs[3].vector, "no metadata now", {})])
    assert dict(store.get(["r3"])[0].metadata) == {}
    assert store.get(where={"i": 3}) == [] and store.get(where={"i": {"$ne": 0}, "even": False}) != []


def test_unicode_text_and_metadata(store: VectorStore) -> None:
    text = "Ünïcödé — 日本語テキスト 🚀 \u200b mixed\nlines"
    store.upsert([Record("ü-id-🙂", unit_vectors(1)[0], text, {"größe": "groß 🌍", "日本": 3})])
    (got,) = store.get(["ü-id-🙂"])
    assert got.text == text and dict(got.metadata) == {"größe": "groß 🌍", "日本": 3}
    assert ids_of(store.get(where={"größe": "groß 🌍"})) == {"ü-id-🙂"}


def test_odd_metadata_keys(store: VectorStore) -> None:
    keys = ["it's", 'quo"te', "back\\slash", "dotted.key", "[0]", "sp ace"]
    vecs = unit_vectors(len(keys))
    store.upsert([Record(f"k{i}", vecs[i], "", {key: i, "other": "v"}) for i, key in enumerate(keys)])
    for i, key in enumerate(keys):
        assert ids_of(store.get(where={key: i})) == {f"k{i}"}, key
        assert ids_of(store.get(where={key: {"$ne": -1}})) == {f"k{i}"}, key
        assert dict(store.get([f"k{i}"])[0].metadata) == {key: i, "other": "v"}


# --------------------------------------------------------------------------- query


def test_query_scores_are_cosine_best_first(store: VectorStore) -> None:
    recs = make_records(60)
    store.upsert(recs)
    mat = np.stack([r.vector for r in recs])
    q = unit_vectors(1, seed=7)[0]
    res = store.query(q, k=10)
    expected = np.argsort(-cosine(q, mat))[:10]
    assert [r.record.id for r in res] == [f"r{i}" for i in expected]
    np.testing.assert_allclose([r.score for r in res], cosine(q, mat)[expected], atol=1e-4)
    assert all(a.score >= b.score for a, b in zip(res, res[1:], strict=False))
    assert all(r.record.vector is None for r in res)
    assert res[0].record.text == f"text {expected[0]}"


def test_scores_are_cosine_for_non_unit_vectors(store: VectorStore) -> None:
    scales = np.linspace(0.1, 10.0, 20, dtype=np.float32)[:, None]
    mat = unit_vectors(20) * scales
    store.upsert([Record(f"s{i}", mat[i], "t") for i in range(20)])
    q = unit_vectors(1, seed=3)[0] * 5.0
    res = store.query(q, k=20)
    want = cosine(q, mat)
    np.testing.assert_allclose([r.score for r in res], [want[int(r.record.id[1:])] for r in res], atol=1e-4)
    np.testing.assert_allclose(store.get(["s0"], include_vectors=True)[0].vector, mat[0], rtol=1e-5)


def test_ranked_query_matches_query_and_get(store: VectorStore) -> None:
    """Stores that rank without fetching (RankedQuery: what hybrid retrieval uses) give query's ids and scores
    in query's order, also under a filter, and get's vectors; others are skipped."""
    from heterag.stores.base import RankedQuery

    if not isinstance(store, RankedQuery):
        pytest.skip(f"{type(store).__name__} has no query_ids/vectors (hybrid asks query and get instead)")
    recs = [Record(r.id, r.vector, r.text, {"even": int(r.id[1:]) % 2 == 0}) for r in make_records(60)]
    store.upsert(recs)
    for where in (None, {"even": True}):
        q = unit_vectors(1, seed=11)[0]
        want = [(sr.record.id, sr.score) for sr in store.query(q, k=15, where=where)]
        got = store.query_ids(q, k=15, where=where)
        assert [i for i, _ in got] == [i for i, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
    assert store.query_ids(unit_vectors(1)[0], k=5, where={"even": "never"}) == []
    with pytest.raises(InvalidInputError):
        store.query_ids(unit_vectors(1)[0], k=0)
    ids = ["r3", "missing", "r7"]
    vecs = store.vectors(ids)
    assert set(vecs) == {"r3", "r7"}
    for r in store.get(["r3", "r7"], include_vectors=True):
        np.testing.assert_allclose(vecs[r.id], r.vector, rtol=1e-6)


def test_query_k_larger_than_count(store: VectorStore) -> None:
    store.upsert(make_records(4))
    assert len(store.query(unit_vectors(1, seed=5)[0], k=50)) == 4


@pytest.mark.parametrize("k", [0, -3])
def test_query_k_below_one_rejected(store: VectorStore, k: int) -> None:
    store.upsert(make_records(3))
    with pytest.raises(InvalidInputError):
        store.query(unit_vectors(1)[0], k=k)


# --------------------------------------------------------------------------- filters

# values of mixed types per key so that bool/int/float/str distinctions are exercised
FILTER_VALUES: list[Any] = [0, 1, 2, 1.0, 2.5, -1, True, False, "x", "y", "1"]
FILTER_KEYS = ["a", "b", "c", "n"]


def random_metadata(rng: random.Random) -> dict[str, Any]:
    return {k: rng.choice(FILTER_VALUES) for k in FILTER_KEYS if rng.random() > 0.25}


def random_leaf(rng: random.Random) -> dict[str, Any]:
    key = rng.choice(FILTER_KEYS + ["absent"])
    op = rng.choice(["plain", "$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte"])
    if op == "plain":
        return {key: rng.choice(FILTER_VALUES)}
    if op in ("$in", "$nin"):
        return {key: {op: rng.sample(FILTER_VALUES, rng.randint(1, 4))}}
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return {key: {op: rng.choice([-1, -0.5, 0, 1, 1.5, 2, 2.5])}}
    return {key: {op: rng.choice(FILTER_VALUES)}}


def random_filter(rng: random.Random, depth: int = 2) -> dict[str, Any]:
    roll = rng.random()
    if depth == 0 or roll < 0.4:
        return random_leaf(rng)
    if roll < 0.55:  # several keys in one mapping mean $and
        merged: dict[str, Any] = {}
        for _ in range(3):
            merged.update(random_leaf(rng))
        return merged
    return {rng.choice(["$and", "$or"]): [random_filter(rng, depth - 1) for _ in range(rng.randint(2, 3))]}


FIXED_FILTERS: list[dict[str, Any]] = [
    {"a": 1}, {"a": True}, {"a": "1"}, {"a": {"$eq": 1.0}}, {"a": {"$ne": 1}}, {"a": {"$ne": True}},
    {"a": {"$in": [1, "x", True]}}, {"a": {"$nin": [0, False, "y"]}}, {"n": {"$gt": 0}}, {"n": {"$gte": 1}},
    {"n": {"$lt": 1.5}}, {"n": {"$lte": 0}}, {"a": 1, "b": "x"}, {"$or": [{"a": True}, {"b": {"$ne": "x"}}]},
    {"$and": [{"n": {"$gte": 0}}, {"n": {"$lt": 2.5}}]}, {"absent": {"$ne": 1}}, {"absent": {"$nin": ["x"]}},
    {"a": 2.5}, {"a": {"$ne": 2.5}}, {"n": {"$in": [2.5, 1]}}, {"n": {"$nin": [2.5, "x"]}}, {"n": {"$gt": -0.5}},
    {"n": {"$lte": -0.5}},
]


@pytest.fixture
def filter_corpus(store: VectorStore) -> tuple[VectorStore, list[Record]]:
    rng = random.Random(1234)
    vecs = unit_vectors(150, seed=11)
    recs = [Record(f"m{i}", vecs[i], f"doc {i}", random_metadata(rng)) for i in range(150)]
    store.upsert(recs)
    return store, recs


def check_filter(store: VectorStore, recs: list[Record], where: Mapping[str, Any]) -> None:
    expected = {r.id for r in recs if matches(r.metadata, where)}
    assert ids_of(store.get(where=where)) == expected, where
    q = unit_vectors(1, seed=len(repr(where)))[0]
    hits = store.query(q, k=len(recs), where=where)
    assert {h.record.id for h in hits} == expected, where
    scores = {r.id: float(s) for r, s in zip(recs, cosine(q, np.stack([r.vector for r in recs])), strict=True)}
    top = sorted(expected, key=lambda i: -scores[i])[:5]
    assert [h.record.id for h in store.query(q, k=5, where=where)] == top, where


@pytest.mark.parametrize("where", FIXED_FILTERS, ids=repr)
def test_fixed_filters_match_reference(filter_corpus: tuple[VectorStore, list[Record]], where: dict) -> None:
    check_filter(*filter_corpus, where)


def test_ids_match_get(filter_corpus: tuple[VectorStore, list[Record]]) -> None:
    store, records = filter_corpus
    assert sorted(store.ids()) == sorted(r.id for r in records)
    for where in FIXED_FILTERS[:6]:
        assert sorted(store.ids(where)) == sorted(r.id for r in store.get(where=where)), where


def test_random_filters_match_reference(filter_corpus: tuple[VectorStore, list[Record]]) -> None:
    rng = random.Random(99)
    for _ in range(60):
        check_filter(*filter_corpus, random_filter(rng))


def test_bool_int_float_semantics(store: VectorStore) -> None:
    metas = {"t": {"x": True}, "i1": {"x": 1}, "f1": {"x": 1.0}, "f0": {"x": False}, "i0": {"x": 0},
             "s1": {"x": "1"}, "none": {}, "other": {"y": 1}}
    vecs = unit_vectors(len(metas))
    store.upsert([Record(k, vecs[n], k, m) for n, (k, m) in enumerate(metas.items())])
    cases = {
        repr({"x": 1}): ({"x": 1}, {"i1", "f1"}),
        repr({"x": True}): ({"x": True}, {"t"}),
        repr({"x": False}): ({"x": False}, {"f0"}),
        repr({"x": 0}): ({"x": 0}, {"i0"}),
        "ne-true": ({"x": {"$ne": True}}, {"i1", "f1", "f0", "i0", "s1"}),
        "ne-1": ({"x": {"$ne": 1}}, {"t", "f0", "i0", "s1"}),
        "nin": ({"x": {"$nin": [True, "1"]}}, {"i1", "f1", "f0", "i0"}),
        "in-mixed": ({"x": {"$in": [True, 0, "1"]}}, {"t", "i0", "s1"}),
        "gt0": ({"x": {"$gt": 0}}, {"i1", "f1"}),
        "lte1": ({"x": {"$lte": 1}}, {"i1", "f1", "i0"}),
    }
    for label, (where, want) in cases.items():
        assert {k for k, m in metas.items() if matches(m, where)} == want, f"reference disagrees: {label}"
        assert ids_of(store.get(where=where)) == want, label


def test_fractional_operands_against_ints(store: VectorStore) -> None:
    values: list[Any] = [-3, -2, -1, 0, 1, 2, 3, -1.5, -0.5, 0.5, 1.0, 1.5, 2.5, 10**15, 1e15 + 0.5]
    vecs = unit_vectors(len(values))
    recs = [Record(f"v{i}", vecs[i], "", {"n": v}) for i, v in enumerate(values)]
    store.upsert(recs)
    for x in (-1.5, -0.5, 0.5, 1.5, 2.0, 1e15 + 0.5):
        for op in ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"):
            where = {"n": {op: [x, 3] if op in ("$in", "$nin") else x}}
            want = {r.id for r in recs if matches(r.metadata, where)}
            assert ids_of(store.get(where=where)) == want, where


def test_negative_filters_need_the_key(store: VectorStore) -> None:
    vecs = unit_vectors(3)
    store.upsert([Record("has", vecs[0], "", {"k": "a"}), Record("other", vecs[1], "", {"k": "b"}),
                  Record("lacks", vecs[2], "", {"z": 1})])
    assert ids_of(store.get(where={"k": {"$ne": "a"}})) == {"other"}
    assert ids_of(store.get(where={"k": {"$nin": ["a"]}})) == {"other"}
    assert store.get(where={"missing": {"$ne": 1}}) == []


def test_invalid_filter_rejected(store: VectorStore) -> None:
    store.upsert(make_records(2))
    for bad in ({}, {"$xor": []}, {"i": {"$regex": "x"}}, {"i": {"$gt": "a"}}, {"i": [1, 2]}):
        with pytest.raises(InvalidInputError):
            store.get(where=bad)


def test_get_by_ids_and_filter(store: VectorStore) -> None:
    store.upsert(make_records(10))
    got = store.get(["r1", "r2", "r3", "r4"], where={"even": True})
    assert [r.id for r in got] == ["r2", "r4"]


# --------------------------------------------------------------------------- delete


def test_delete_by_ids_and_filter(store: VectorStore) -> None:
    store.upsert(make_records(20))
    assert store.delete(ids=["r0", "r1", "nope"]) == 2
    assert store.delete(ids=["r0"]) == 0
    assert store.delete(ids=[]) == 0
    assert store.count() == 18
    assert store.delete(where={"i": {"$gte": 15}}) == 5
    assert store.count() == 13
    assert store.delete(ids=["r2", "r3", "r4"], where={"even": True}) == 2
    assert ids_of(store.get()) == {f"r{i}" for i in (3, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14)}
    assert store.delete(where={"i": 1000}) == 0
    with pytest.raises(InvalidInputError):
        store.delete()
    assert all(h.record.id not in {"r0", "r1", "r2", "r4"} for h in store.query(unit_vectors(1)[0], k=100))


def test_delete_everything_then_new_dimension(store: VectorStore) -> None:
    store.upsert(make_records(5, dim=8))
    assert store.delete(where={"i": {"$gte": 0}}) == 5
    assert store.count() == 0 and store.dim is None
    store.upsert(make_records(3, dim=12))
    assert store.dim == 12 and len(store.query(unit_vectors(1, dim=12)[0], k=5)) == 3


# --------------------------------------------------------------------------- validation


def test_wrong_dimension_leaves_data_intact(store: VectorStore) -> None:
    store.upsert(make_records(5))
    with pytest.raises(DimensionMismatchError):
        store.upsert(make_records(2, dim=DIM + 1, prefix="bad"))
    mixed = make_records(2, prefix="ok") + make_records(1, dim=DIM - 1, prefix="bad")
    with pytest.raises(DimensionMismatchError):
        store.upsert(mixed)
    with pytest.raises(DimensionMismatchError):
        store.query(unit_vectors(1, dim=DIM + 1)[0])
    assert store.count() == 5 and store.get(["ok0"]) == []


def test_nan_rejected(store: VectorStore) -> None:
    store.upsert(make_records(2))
    bad = unit_vectors(1)[0].copy()
    bad[3] = np.nan
    with pytest.raises(InvalidInputError):
        store.upsert([Record("fine", unit_vectors(1)[0], "x"), Record("nan", bad, "x")])
    with pytest.raises(InvalidInputError):
        store.query(bad)
    inf_vec = unit_vectors(1)[0].copy()
    inf_vec[0] = np.inf
    with pytest.raises(InvalidInputError):
        store.upsert([Record("inf", inf_vec, "x")])
    assert store.count() == 2


def test_duplicate_ids_in_batch_rejected(store: VectorStore) -> None:
    vecs = unit_vectors(2)
    with pytest.raises(InvalidInputError):
        store.upsert([Record("same", vecs[0], "a"), Record("same", vecs[1], "b")])
    assert store.count() == 0


def test_bad_metadata_rejected(store: VectorStore) -> None:
    vec = unit_vectors(1)[0]
    for meta in ({"list": [1, 2]}, {"nan": float("nan")}, {"inf": float("-inf")}, {"none": None}, {"big": 2**63}):
        with pytest.raises(InvalidInputError):
            store.upsert([Record("ok", vec, "x"), Record("bad", vec, "x", meta)])
    assert store.count() == 0


def test_batch_larger_than_backend_limit(store: VectorStore) -> None:
    recs = make_records(LARGE_BATCH, dim=8, seed=5)
    store.upsert(recs)
    assert store.count() == LARGE_BATCH
    assert [h.record.id for h in store.query(recs[-1].vector, k=1)] == [recs[-1].id]
    assert store.delete(where={"even": True}) == LARGE_BATCH // 2


def test_chroma_large_batch_exceeds_client_limit(tmp_path: Path) -> None:
    chroma = pytest.importorskip("chromadb")
    from chromadb.config import Settings

    client = chroma.PersistentClient(path=str(tmp_path), settings=Settings(anonymized_telemetry=False))
    assert LARGE_BATCH > client.get_max_batch_size()


# --------------------------------------------------------------------------- fingerprint & persistence


def test_fingerprint_set_check_and_mismatch(store: VectorStore) -> None:
    store.set_fingerprint(FP)
    assert store.fingerprint() == FP and store.dim == DIM
    store.set_fingerprint(FP)  # same one again is fine
    with pytest.raises(FingerprintMismatchError):
        store.set_fingerprint(Fingerprint(model="other", dim=DIM, view="chunk"))
    with pytest.raises(DimensionMismatchError):
        store.upsert(make_records(1, dim=DIM + 2))


def test_fingerprint_dimension_must_match_data(store: VectorStore) -> None:
    store.upsert(make_records(2, dim=8))
    with pytest.raises(DimensionMismatchError):
        store.set_fingerprint(Fingerprint(model="m", dim=9, view="v"))
    assert store.fingerprint() is None


def test_persistence_across_reopen(store_name: str, store_dir: Path) -> None:
    recs = make_records(30)
    fp = Fingerprint(model="m", dim=DIM, view="v", adapter="a", extra={"norm": True})
    first = open_store(store_name, store_dir, COLLECTION)
    first.set_fingerprint(fp)
    first.upsert(recs)
    first.delete(ids=["r0"])
    first.close()
    second = open_store(store_name, store_dir, COLLECTION)
    try:
        assert second.count() == 29 and second.fingerprint() == fp and second.dim == DIM
        (got,) = second.get(["r5"], include_vectors=True)
        assert got.text == "text 5" and dict(got.metadata) == {"i": 5, "even": False}
        np.testing.assert_allclose(got.vector, recs[5].vector, atol=1e-5)
        assert [h.record.id for h in second.query(recs[7].vector, k=1)] == ["r7"]
        with pytest.raises(FingerprintMismatchError):
            second.set_fingerprint(Fingerprint(model="m", dim=DIM, view="other"))
    finally:
        second.close()


def test_collections_are_independent(store_name: str, store_dir: Path) -> None:
    one = open_store(store_name, store_dir, "first")
    two = open_store(store_name, store_dir, "second")
    try:
        one.upsert(make_records(4, dim=8))
        two.upsert(make_records(2, dim=12, prefix="x"))
        one.set_fingerprint(Fingerprint(model="m1", dim=8, view="v"))
        assert (one.count(), two.count()) == (4, 2)
        assert (one.dim, two.dim) == (8, 12)
        assert two.fingerprint() is None
        assert one.delete(where={"i": {"$gte": 0}}) == 4
        assert two.count() == 2 and ids_of(two.get()) == {"x0", "x1"}
    finally:
        one.close()
        two.close()


# --------------------------------------------------------------------------- keyword search
#
# Every store opened by open_store answers keyword queries over the same records (a Tantivy index beside
# it, heterag.stores.keyworded, or PostgreSQL full-text search for pgvector), with heterag's tokenizer.

KEYWORD_TEXTS = {
    "il6": "Serum IL-6 levels rise in severe COVID-19 patients.",
    "p53": "The p53 protein is a tumour suppressor mutated in many cancers.",
    "il2": "Interleukin IL-2 drives T cell growth; six trials measured it.",
    "covid": "Influenza and other respiratory viruses in 2019 were studied.",
    "cat": "The cat sat on the mat near the window.",
    "cjk": "新型冠状病毒肺炎的临床特征",
    "ru": "Москва — столица России, крупнейший город страны.",
    "mixed": "Résumé of the ﬁndings: TNF-α and ＩＬ６ were measured.",
}


def keyword_records(texts: Mapping[str, str] = KEYWORD_TEXTS, seed: int = 3) -> list[Record]:
    vecs = unit_vectors(len(texts), seed=seed)
    return [Record(key, vecs[i], text, {"i": i, "even": i % 2 == 0}) for i, (key, text) in enumerate(texts.items())]


def assert_in_step(store: VectorStore) -> None:
    """The keyword index holds exactly the vector store's ids."""
    assert isinstance(store, KeywordSearch)
    missing, extra = store.differences()  # type: ignore[attr-defined]
    assert (missing, extra) == (set(), set())
    inner = getattr(store, "keywords", None)
    if inner is not None:  # a Tantivy index beside the store: compare the id lists themselves
        assert sorted(inner.ids()) == sorted(store.ids())
        assert inner.journal() == []


def kw_ids(store: VectorStore, text: str, k: int = 10, where: Mapping[str, Any] | None = None) -> list[str]:
    hits = store.keyword_query(text, k=k, where=where)  # type: ignore[attr-defined]
    assert all(h.score > 0 and h.record.vector is None for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    return [h.record.id for h in hits]


@pytest.fixture
def kw_store(store: VectorStore) -> VectorStore:
    store.upsert(keyword_records())
    assert_in_step(store)
    return store


def test_every_store_answers_keyword_queries(store: VectorStore) -> None:
    assert isinstance(store, KeywordSearch)
    assert store.keyword_query("anything", k=3) == []  # empty store
    assert store.keyword_scores("anything", ["a"]) == {"a": 0.0}
    assert_in_step(store)


@pytest.mark.parametrize(("query", "top"), [("IL-6", "il6"), ("il-6", "il6"), ("p53", "p53"), ("P53 protein", "p53"),
                                            ("COVID-19", "il6"), ("tumours", "p53"), ("ＩＬ-６", "il6")])
def test_keyword_exact_terms_found(kw_store: VectorStore, query: str, top: str) -> None:
    found = kw_ids(kw_store, query)
    assert found and found[0] == top, (query, found)


def test_keyword_compound_outranks_its_parts(kw_store: VectorStore) -> None:
    found = kw_ids(kw_store, "IL-6")
    assert found[0] == "il6" and "cat" not in found
    assert "p53" not in kw_ids(kw_store, "IL-6") and kw_ids(kw_store, "p53") == ["p53"]


@pytest.mark.parametrize("query", ["the and of", "The", "a an the is was were", "!!! ... ???", "  ", "-", "\"", "*", "()"])
def test_stopword_or_punctuation_query_gives_nothing(kw_store: VectorStore, query: str) -> None:
    assert kw_store.keyword_query(query, k=5) == []  # type: ignore[attr-defined]
    assert kw_store.keyword_scores(query, ["p53", "cat"]) == {"p53": 0.0, "cat": 0.0}  # type: ignore[attr-defined]


@pytest.mark.parametrize("query", ['"p53', 'p53"', '"p53 protein"', "p53*", "p53 NEAR protein", "NEAR(p53 protein)",
                                   "p53 AND protein", "p53 OR", "-p53", "p53 -protein", "text:p53", "body:p53", "id:p53",
                                   "p53^2", "p53~1", "(p53", "p53 & protein", "p53 | protein", "!p53", "p53 <-> protein",
                                   "p53:*", "'p53'", "p53\\", "{p53}", "[p53 TO z]", "p53;DROP TABLE x", "p53 NOT protein"])
def test_fts_syntax_is_plain_text(kw_store: VectorStore, query: str) -> None:
    found = kw_ids(kw_store, query)
    assert found and found[0] == "p53", (query, found)


def test_fts_operators_are_not_operators(kw_store: VectorStore) -> None:
    assert kw_ids(kw_store, "p5*") == []  # no prefix search: ``p5`` is a term of its own
    assert kw_ids(kw_store, "p53 -protein")[0] == "p53"  # no exclusion
    assert set(kw_ids(kw_store, "p53 AND cat")) == {"p53", "cat"}  # no conjunction: any term matches


@pytest.mark.parametrize("query", ['" * : -', "AND OR NOT", "NEAR", "* * *", ":::"])
def test_fts_operators_alone_are_no_error(kw_store: VectorStore, query: str) -> None:
    kw_ids(kw_store, query)  # whatever plain words remain (``near``) are searched; no error


def test_ten_thousand_word_query(kw_store: VectorStore) -> None:
    rng = random.Random(0)
    words = [w for t in KEYWORD_TEXTS.values() for w in t.split()] + [f"zz{i}" for i in range(3000)]
    query = " ".join(rng.choice(words) for _ in range(10_000)) + " p53"
    assert len(query.split()) == 10_001
    found = kw_ids(kw_store, query, k=20)
    assert "p53" in found
    assert set(found) <= set(KEYWORD_TEXTS)
    assert kw_store.keyword_scores(query, ["p53", "nope"])["nope"] == 0.0  # type: ignore[attr-defined]


@pytest.mark.parametrize(("query", "key"), [("冠状病毒", "cjk"), ("临床", "cjk"), ("Москва", "ru"), ("москва", "ru"),
                                            ("России", "ru"), ("résumé", "mixed"), ("findings", "mixed"), ("tnf-α", "mixed")])
def test_keyword_cjk_cyrillic_and_unicode(kw_store: VectorStore, query: str, key: str) -> None:
    found = kw_ids(kw_store, query)
    assert found and found[0] == key, (query, found)


def test_keyword_where_filter_respected(kw_store: VectorStore) -> None:
    everything = "il-6 p53 il-2 influenza cat 冠 москва tnf-α"
    every = set(kw_ids(kw_store, everything, k=20))
    assert every == set(KEYWORD_TEXTS)
    even = set(kw_ids(kw_store, everything, k=20, where={"even": True}))
    assert even == {r.id for r in keyword_records() if r.metadata["even"]}
    assert kw_ids(kw_store, "p53", where={"even": True}) == []  # p53 is record 1
    assert kw_ids(kw_store, everything, k=2, where={"i": {"$gte": 5}}) and \
        set(kw_ids(kw_store, everything, k=2, where={"i": {"$gte": 5}})) <= {"cjk", "ru", "mixed"}
    assert len(kw_ids(kw_store, everything, k=2, where={"i": {"$gte": 5}})) == 2
    assert kw_ids(kw_store, "p53", where={"i": 1000}) == []


def test_keyword_scores_match_query_scores(kw_store: VectorStore) -> None:
    hits = kw_store.keyword_query("IL-6 COVID-19 cancers", k=10)  # type: ignore[attr-defined]
    want = {h.record.id: h.score for h in hits}
    got = kw_store.keyword_scores("IL-6 COVID-19 cancers", [*want, "cat", "not-stored"])  # type: ignore[attr-defined]
    assert set(got) == {*want, "cat", "not-stored"}
    assert got["cat"] == 0.0 and got["not-stored"] == 0.0
    for i, s in want.items():
        assert got[i] == pytest.approx(s, rel=1e-4)
    assert kw_store.keyword_scores("p53", []) == {}  # type: ignore[attr-defined]


def test_keyword_upsert_replaces_text(kw_store: VectorStore) -> None:
    vec = unit_vectors(1, seed=9)[0]
    kw_store.upsert([Record("p53", vec, "Now about BRCA1 only.", {"i": 1})])
    assert_in_step(kw_store)
    assert kw_ids(kw_store, "p53") == []
    assert kw_ids(kw_store, "BRCA1") == ["p53"]
    assert kw_store.count() == len(KEYWORD_TEXTS)


def test_keyword_view_metadata_is_what_is_searched(store: VectorStore) -> None:
    vec = unit_vectors(1)[0]
    store.upsert([Record("v", vec, "short chunk", {"view": "short chunk with its neighbour about ferroptosis"})])
    assert kw_ids(store, "ferroptosis") == ["v"]
    store.upsert([Record("t", unit_vectors(1, seed=2)[0], "plain chunk", {"title": "Glioblastoma review"})])
    assert kw_ids(store, "glioblastoma") == ["t"]
    assert_in_step(store)


def test_keyword_delete_removes_from_both(kw_store: VectorStore) -> None:
    assert kw_store.delete(ids=["p53", "missing"]) == 1
    assert_in_step(kw_store)
    assert kw_ids(kw_store, "p53") == []
    assert kw_store.delete(where={"i": {"$gte": 5}}) == 3
    assert_in_step(kw_store)
    assert kw_ids(kw_store, "москва 冠 tnf-α") == []
    assert kw_store.delete(ids=["il6", "covid"], where={"even": True}) == 1  # il6 is record 0, covid record 3
    assert_in_step(kw_store)
    assert kw_ids(kw_store, "influenza") == ["covid"] and "il6" not in kw_ids(kw_store, "IL-6 COVID-19")


def test_keyword_reupsert_is_idempotent(kw_store: VectorStore) -> None:
    before = kw_store.keyword_query("IL-6 p53 москва", k=10)  # type: ignore[attr-defined]
    kw_store.upsert(keyword_records())
    kw_store.upsert(keyword_records())
    assert_in_step(kw_store)
    after = kw_store.keyword_query("IL-6 p53 москва", k=10)  # type: ignore[attr-defined]
    assert [h.record.id for h in after] == [h.record.id for h in before]
    assert [h.score for h in after] == pytest.approx([h.score for h in before], rel=1e-5)
    assert len({h.record.id for h in after}) == len(after)


def test_failed_writes_leave_keyword_index_in_step(kw_store: VectorStore) -> None:
    vecs = unit_vectors(2, seed=7)
    with pytest.raises(InvalidInputError):
        kw_store.upsert([Record("dup", vecs[0], "osteoporosis"), Record("dup", vecs[1], "osteoporosis")])
    with pytest.raises(DimensionMismatchError):
        kw_store.upsert([Record("p53", unit_vectors(1, dim=DIM + 1)[0], "osteoporosis")])
    with pytest.raises(InvalidInputError):
        kw_store.upsert([Record("ok", vecs[0], "osteoporosis"), Record("bad", vecs[1], "x", {"list": [1]})])
    assert_in_step(kw_store)
    assert kw_ids(kw_store, "osteoporosis") == [] and kw_ids(kw_store, "p53") == ["p53"]


def test_keyword_index_persists_across_reopen(store_name: str, store_dir: Path) -> None:
    with open_store(store_name, store_dir, COLLECTION) as first:
        first.upsert(keyword_records())
        first.delete(ids=["cat"])
    with open_store(store_name, store_dir, COLLECTION) as second:
        assert_in_step(second)
        assert kw_ids(second, "p53") == ["p53"] and kw_ids(second, "cat mat") == []
    with open_store(store_name, store_dir, COLLECTION, keywords=False) as bare:  # writes without it...
        bare.upsert([Record("late", unit_vectors(1)[0], "written while keyword search was off: sarcoidosis")])
    if parse_store_url(store_name).kind == "pgvector":  # ...are indexed in the same row by PostgreSQL
        with open_store(store_name, store_dir, COLLECTION) as third:
            assert kw_ids(third, "sarcoidosis") == ["late"]
    else:  # ...are a difference the next open names, with the repair command
        with pytest.raises(KeywordIndexError, match="heterag keywords build"):
            open_store(store_name, store_dir, COLLECTION, repair="heterag keywords build --collection x")
        bare = open_store(store_name, store_dir, COLLECTION, keywords=False)
        index = KeywordIndex(keyword_index_path(store_dir, COLLECTION), create=False)
        with KeywordedStore(bare, index, check=False) as fixed:  # what `heterag keywords build` does
            assert fixed.differences() == ({"late"}, set())
            assert fixed.rebuild() == len(KEYWORD_TEXTS)
            assert_in_step(fixed)
            assert kw_ids(fixed, "sarcoidosis") == ["late"]
        with open_store(store_name, store_dir, COLLECTION) as reopened:
            assert_in_step(reopened)


# --------------------------------------------------------------------------- FAISS crash safety


@pytest.fixture
def faiss_dir(tmp_path: Path) -> Path:
    pytest.importorskip("faiss")
    return tmp_path / "faiss"


def _check_faiss_queries(path: Path, recs: list[Record]) -> None:
    store = open_store("faiss", path, COLLECTION)
    try:
        assert store.count() == len(recs)
        mat = np.stack([r.vector for r in recs])
        for n in (0, len(recs) // 2, len(recs) - 1):
            res = store.query(recs[n].vector, k=5)
            want = np.argsort(-cosine(recs[n].vector, mat))[:5]
            assert [h.record.id for h in res] == [recs[i].id for i in want]
    finally:
        store.close()


def test_faiss_rebuilds_missing_index(faiss_dir: Path) -> None:
    recs = make_records(40)
    with open_store("faiss", faiss_dir, COLLECTION) as store:
        store.upsert(recs)
    index_file = faiss_dir / f"{COLLECTION}.faiss"
    assert index_file.exists()
    index_file.unlink()
    _check_faiss_queries(faiss_dir, recs)
    assert index_file.exists()  # saved again on close


def test_faiss_rebuilds_stale_index_after_crash(faiss_dir: Path) -> None:
    recs = make_records(40)
    with open_store("faiss", faiss_dir, COLLECTION) as store:
        store.upsert(recs[:20])
    crashed = open_store("faiss", faiss_dir, COLLECTION)
    crashed.upsert(recs[20:])  # committed to SQLite, index file not saved
    crashed.delete(ids=["r3"])
    del crashed  # "crash": never closed, never flushed
    _check_faiss_queries(faiss_dir, [r for r in recs if r.id != "r3"])


@pytest.mark.parametrize("damage", ["garbage", "truncate"])
def test_faiss_rebuilds_corrupt_index(faiss_dir: Path, damage: str) -> None:
    recs = make_records(30)
    with open_store("faiss", faiss_dir, COLLECTION) as store:
        store.upsert(recs)
    index_file = faiss_dir / f"{COLLECTION}.faiss"
    data = index_file.read_bytes()
    index_file.write_bytes(b"\x00garbage" * 40 if damage == "garbage" else data[: len(data) // 2])
    _check_faiss_queries(faiss_dir, recs)


def test_faiss_sees_writes_of_another_handle(faiss_dir: Path) -> None:
    recs = make_records(10)
    writer = open_store("faiss", faiss_dir, COLLECTION)
    reader = open_store("faiss", faiss_dir, COLLECTION)
    try:
        writer.upsert(recs)
        assert [h.record.id for h in reader.query(recs[6].vector, k=1)] == ["r6"]
        writer.delete(ids=["r6"])
        assert reader.count() == 9
        assert "r6" not in {h.record.id for h in reader.query(recs[6].vector, k=10)}
    finally:
        writer.close()
        reader.close()


def test_faiss_flush_is_lazy(faiss_dir: Path) -> None:
    store = open_store("faiss", faiss_dir, COLLECTION)
    try:
        store.upsert(make_records(5))
        index_file = faiss_dir / f"{COLLECTION}.faiss"
        assert not index_file.exists()
        store.flush()  # type: ignore[attr-defined]
        assert index_file.exists()
    finally:
        store.close()


def test_faiss_failed_write_rolls_back_sqlite_and_index(faiss_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recs = make_records(20)
    store = open_store("faiss", faiss_dir, COLLECTION, keywords=False)  # the backend itself, its internals patched
    try:
        store.upsert(recs[:10])
        original = store._apply_to_index  # type: ignore[attr-defined]

        def apply_then_fail(*args: Any) -> None:
            original(*args)  # the in-memory index already holds the new vectors...
            raise RuntimeError("simulated failure before COMMIT")

        monkeypatch.setattr(store, "_apply_to_index", apply_then_fail)
        with pytest.raises(RuntimeError):
            store.upsert(recs[10:])
        monkeypatch.undo()
        assert store.count() == 10  # ...but SQLite rolled back, and so must queries
        assert {h.record.id for h in store.query(recs[15].vector, k=20)} == {f"r{i}" for i in range(10)}
    finally:
        store.close()
    _check_faiss_queries(faiss_dir, recs[:10])
