"""Stores that switch from exact search to an ANN index above a size (issue #12).

The thresholds are lowered here so the switch happens with a few hundred records; the behaviour a
user relies on is checked after the index exists: high recall against exact search, deleted records
never returned, re-upserted vectors found at their new place, filtered queries exact, the index kept
across reopen, rebuilt after a crash, and dropped again when the collection shrinks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from heterag.stores import Record, open_store

DIM = 16
N = 1200


def clustered(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 20 centres (an ANN index's clusters mean something)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, DIM))
    mat = centres[rng.integers(0, 20, size=n)] + 0.35 * rng.normal(size=(n, DIM))
    return (mat / np.linalg.norm(mat, axis=1, keepdims=True)).astype(np.float32)


def records(vecs: np.ndarray, start: int = 0) -> list[Record]:
    return [Record(f"r{i}", vecs[i - start], f"text {i}", {"i": i, "even": i % 2 == 0})
            for i in range(start, start + len(vecs))]


def exact_top(query: np.ndarray, ids: list[str], mat: np.ndarray, k: int) -> list[str]:
    return [ids[i] for i in np.argsort(-(mat @ query))[:k]]


def recall(store, queries: np.ndarray, ids: list[str], mat: np.ndarray, k: int = 10) -> float:
    got = [len({h.record.id for h in store.query(q, k=k)} & set(exact_top(q, ids, mat, k))) / k for q in queries]
    return float(np.mean(got))


# --------------------------------------------------------------------------- FAISS


@pytest.fixture
def faiss_ann(monkeypatch: pytest.MonkeyPatch):
    fmod = pytest.importorskip("heterag.stores.faiss")
    monkeypatch.setattr(fmod, "ANN_MIN_RECORDS", 400)
    return fmod


def test_faiss_switches_to_ivf_and_keeps_recall(faiss_ann, tmp_path: Path) -> None:
    vecs = clustered(N)
    store = open_store("faiss", tmp_path, "ann")
    try:
        store.upsert(records(vecs[:300]))
        assert store.index_settings().startswith("exact")
        store.upsert(records(vecs[300:], start=300))
        assert store.index_settings().startswith("IVF-Flat nlist=35,")  # round(sqrt(1200))
        ids = [f"r{i}" for i in range(N)]
        assert recall(store, clustered(50, seed=1), ids, vecs) >= 0.9
        for i in (0, 333, N - 1):  # every stored vector finds itself first
            assert store.query(vecs[i], k=1)[0].record.id == f"r{i}"
    finally:
        store.close()
    reopened = open_store("faiss", tmp_path, "ann")
    try:
        assert reopened.index_settings().startswith("IVF-Flat")
        assert not reopened._needs_save  # type: ignore[attr-defined] - loaded from the file, not rebuilt
        assert reopened.count() == N
    finally:
        reopened.close()


def test_faiss_ivf_delete_upsert_and_filters_stay_correct(faiss_ann, tmp_path: Path) -> None:
    vecs = clustered(N)
    store = open_store("faiss", tmp_path, "ann")
    try:
        store.upsert(records(vecs))
        assert store.index_settings().startswith("IVF")
        assert store.delete(ids=[f"r{i}" for i in range(0, 100)]) == 100
        for i in (0, 50, 99):
            assert f"r{i}" not in {h.record.id for h in store.query(vecs[i], k=20)}
        moved = vecs[500]  # r1000 takes r500's vector; r500 takes a new one
        store.upsert([Record("r1000", moved, "moved", {"i": 1000, "even": True}),
                      Record("r500", -vecs[500], "flipped", {"i": 500, "even": True})])
        top = [h.record.id for h in store.query(moved, k=2)]
        assert top[0] == "r1000" and "r500" not in top
        assert store.query(-vecs[500], k=1)[0].record.id == "r500"
        store.upsert(records(vecs[600:700], start=600))  # idempotent re-upsert: nothing changes
        assert store.count() == N - 100
        # a filtered query is exact among the allowed records, however selective the filter
        allowed = [i for i in range(100, N) if i % 2 == 1 and i not in (500, 1000)]
        mat = vecs[allowed]
        for q in clustered(10, seed=2):
            hits = store.query(q, k=5, where={"even": False})
            assert [h.record.id for h in hits] == exact_top(q, [f"r{i}" for i in allowed], mat, 5)
        hits = store.query(vecs[777], k=10, where={"i": {"$in": [777, 3]}})
        assert [h.record.id for h in hits] == ["r777"]
    finally:
        store.close()


def test_faiss_ivf_crash_rebuilds_from_sqlite(faiss_ann, tmp_path: Path) -> None:
    vecs = clustered(N)
    with open_store("faiss", tmp_path, "ann") as store:
        store.upsert(records(vecs[:800]))
    crashed = open_store("faiss", tmp_path, "ann")
    crashed.upsert(records(vecs[800:], start=800))
    crashed.delete(ids=["r3", "r900"])
    del crashed  # never flushed: the saved IVF file is stale
    store = open_store("faiss", tmp_path, "ann")
    try:
        assert store.count() == N - 2
        assert store.index_settings().startswith("IVF")
        assert store.query(vecs[1000], k=1)[0].record.id == "r1000"
        assert {"r3", "r900"}.isdisjoint(h.record.id for h in store.query(vecs[900], k=50))
    finally:
        store.close()


def test_faiss_back_to_exact_when_collection_shrinks(faiss_ann, tmp_path: Path) -> None:
    vecs = clustered(N)
    store = open_store("faiss", tmp_path, "ann")
    try:
        store.upsert(records(vecs))
        assert store.index_settings().startswith("IVF")
        store.delete(where={"i": {"$gte": 150}})  # 150 left: below half the threshold
        assert store.index_settings().startswith("exact")
        ids = [f"r{i}" for i in range(150)]
        for q in clustered(5, seed=3):
            assert [h.record.id for h in store.query(q, k=10)] == exact_top(q, ids, vecs[:150], 10)
    finally:
        store.close()


# --------------------------------------------------------------------------- LanceDB


@pytest.fixture
def lance_ann(monkeypatch: pytest.MonkeyPatch):
    lmod = pytest.importorskip("heterag.stores.lance")
    monkeypatch.setattr(lmod, "ANN_MIN_RECORDS", 400)
    return lmod


def test_lance_builds_ivf_index_and_keeps_recall(lance_ann, tmp_path: Path) -> None:
    vecs = clustered(N)
    store = open_store("lancedb", tmp_path, "ann")
    try:
        store.upsert(records(vecs[:300]))
        assert store.index_settings().startswith("exact")
        store.upsert(records(vecs[300:], start=300))
        assert store.index_settings() == "IVF_FLAT cosine, partitions=35, nprobes=9 (filtered: exact)"
        ids = [f"r{i}" for i in range(N)]
        assert recall(store, clustered(50, seed=1), ids, vecs) >= 0.9
        for i in (0, 333, N - 1):
            assert store.query(vecs[i], k=1)[0].record.id == f"r{i}"
    finally:
        store.close()
    reopened = open_store("lancedb", tmp_path, "ann")  # the index lives in the table: another handle uses it
    try:
        assert reopened.index_settings().startswith("IVF_FLAT")
    finally:
        reopened.close()


def test_lance_index_delete_upsert_and_filters_stay_correct(lance_ann, tmp_path: Path) -> None:
    vecs = clustered(N)
    store = open_store("lancedb", tmp_path, "ann")
    try:
        store.upsert(records(vecs))
        assert store.index_settings().startswith("IVF_FLAT")
        assert store.delete(ids=[f"r{i}" for i in range(0, 100)]) == 100
        for i in (0, 50, 99):  # deleted rows are masked although the index still lists them
            assert f"r{i}" not in {h.record.id for h in store.query(vecs[i], k=20)}
        moved = vecs[500]
        store.upsert([Record("r1000", moved, "moved", {"i": 1000, "even": True}),
                      Record("r500", -vecs[500], "flipped", {"i": 500, "even": True})])
        top = [h.record.id for h in store.query(moved, k=2)]  # unindexed new versions are searched too
        assert top[0] == "r1000" and "r500" not in top
        assert store.query(-vecs[500], k=1)[0].record.id == "r500"
        store.upsert(records(vecs[600:700], start=600))
        assert store.count() == N - 100
        allowed = [i for i in range(100, N) if i % 2 == 1 and i not in (500, 1000)]
        mat = vecs[allowed]
        for q in clustered(10, seed=2):
            hits = store.query(q, k=5, where={"even": False})
            assert [h.record.id for h in hits] == exact_top(q, [f"r{i}" for i in allowed], mat, 5)
        hits = store.query(vecs[777], k=10, where={"i": {"$in": [777, 3]}})
        assert [h.record.id for h in hits] == ["r777"]
    finally:
        store.close()


def test_lance_optimize_folds_new_rows_into_the_index(lance_ann, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(lance_ann, "_OPTIMIZE_MIN", 50)
    vecs = clustered(N)
    store = open_store("lancedb", tmp_path, "ann")
    try:
        store.upsert(records(vecs[:1000]))
        store.upsert(records(vecs[1000:1050], start=1000))  # 50 unindexed: below 10% of 1000
        table = store._table()  # type: ignore[attr-defined]
        assert store._vector_index(table)[3] == 50  # type: ignore[attr-defined]
        store.upsert(records(vecs[1050:], start=1050))  # 200 unindexed > 100: optimize()
        table = store._table()  # type: ignore[attr-defined]
        assert store._vector_index(table)[2:] == (N, 0)  # type: ignore[attr-defined]
        assert store.query(vecs[1100], k=1)[0].record.id == "r1100"
    finally:
        store.close()


def test_lance_drops_index_when_table_shrinks(lance_ann, tmp_path: Path) -> None:
    vecs = clustered(N)
    store = open_store("lancedb", tmp_path, "ann")
    try:
        store.upsert(records(vecs))
        assert store.index_settings().startswith("IVF_FLAT")
        store.delete(where={"i": {"$gte": 150}})
        assert store.index_settings().startswith("exact")
        ids = [f"r{i}" for i in range(150)]
        for q in clustered(5, seed=3):
            assert [h.record.id for h in store.query(q, k=10)] == exact_top(q, ids, vecs[:150], 10)
    finally:
        store.close()
