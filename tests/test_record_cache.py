"""The embedded Chroma store's read cache (heterag.stores.record_cache): repeated reads by id come from memory,
and every write, by this process or another, is seen at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from heterag.stores.base import Record
from heterag.stores.chroma import ChromaStore
from heterag.stores.record_cache import RecordCache


def records(n: int, tag: str = "v1") -> list[Record]:
    rng = np.random.default_rng(0)
    return [Record(f"r{i}", rng.normal(size=8).astype(np.float32), f"text {i} {tag}", {"doc_id": f"d{i % 3}", "i": i})
            for i in range(n)]


@pytest.fixture
def store(tmp_path: Path):
    s = ChromaStore(tmp_path / "db", "cache")
    s.upsert(records(12))
    yield s
    s.close()


def chroma_reads(store: ChromaStore, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    calls: list[object] = []
    raw = store._raw_get

    def spy(ids, where, include):
        calls.append((tuple(ids) if ids is not None else None, include))
        return raw(ids, where, include)

    monkeypatch.setattr(store, "_raw_get", spy)
    return calls


def test_a_repeated_read_by_id_does_not_go_to_chroma(store: ChromaStore, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = chroma_reads(store, monkeypatch)
    first = store.get(["r1", "r2", "nope"], include_vectors=True)
    n = len(calls)
    again = store.get(["r2", "r1"], include_vectors=True)
    assert len(calls) == n, "the second read went to Chroma"
    assert [r.id for r in first] == ["r1", "r2"] and [r.id for r in again] == ["r2", "r1"]
    assert again[1].text == first[0].text and again[1].metadata == first[0].metadata
    np.testing.assert_array_equal(again[1].vector, first[0].vector)
    assert set(store.vectors(["r1", "r2"])) == {"r1", "r2"} and len(calls) == n  # vectors too
    # a filtered read with vectors resolves ids (one light call) and takes the records it already has from memory
    store.get(where={"doc_id": "d1"}, include_vectors=True)
    n = len(calls)
    by_doc = store.get(where={"doc_id": "d1"}, include_vectors=True)
    assert sorted(r.id for r in by_doc) == sorted(r.id for r in records(12) if r.metadata["doc_id"] == "d1")
    assert [c[1] for c in calls[n:]] == [[]], "the second filtered read fetched records again"


def test_a_caller_changing_what_it_got_changes_nothing_stored(store: ChromaStore) -> None:
    got = store.get(["r3"], include_vectors=True)[0]
    want_vec, want_meta = got.vector.copy(), dict(got.metadata)
    got.metadata["i"] = -1
    got.vector[:] = 0
    again = store.get(["r3"], include_vectors=True)[0]
    assert again.metadata == want_meta
    np.testing.assert_array_equal(again.vector, want_vec)


def test_writes_in_this_process_are_seen_at_once(store: ChromaStore) -> None:
    assert store.get(["r4"])[0].text == "text 4 v1"
    store.upsert([Record("r4", records(12)[4].vector, "rewritten", {"doc_id": "d9"})])
    assert store.get(["r4"])[0].text == "rewritten" and store.get(["r4"])[0].metadata == {"doc_id": "d9"}
    assert [r.id for r in store.get(where={"doc_id": "d9"})] == ["r4"]
    store.delete(["r4"])
    assert store.get(["r4"]) == [] and store.get(where={"doc_id": "d9"}) == []


def test_a_write_by_another_process_is_seen_at_once(store: ChromaStore, tmp_path: Path) -> None:
    assert store.get(["r5"], include_vectors=True)[0].text == "text 5 v1"
    writer = textwrap.dedent(f"""
        import numpy as np
        from heterag.stores.base import Record
        from heterag.stores.chroma import ChromaStore
        s = ChromaStore({str(tmp_path / "db")!r}, "cache")
        s.upsert([Record("r5", np.ones(8, dtype=np.float32), "from another process", {{"doc_id": "d5"}})])
        s.close()
    """)
    subprocess.run([sys.executable, "-c", writer], check=True, timeout=120)
    got = store.get(["r5"], include_vectors=True)[0]
    assert got.text == "from another process" and got.metadata == {"doc_id": "d5"}
    np.testing.assert_allclose(got.vector, np.ones(8))


def test_the_cache_forgets_an_old_generation_and_stays_bounded() -> None:
    cache = RecordCache(limit=3)
    recs = records(5)
    cache.put("g1", recs[:2])  # no current generation yet: ignored
    assert cache.get("g1", ["r0"], vectors=False) == ({}, ["r0"])
    cache.put("g1", recs[:2])
    found, missing = cache.get("g1", ["r0", "r1", "r2"], vectors=True)
    assert sorted(found) == ["r0", "r1"] and missing == ["r2"]
    assert cache.get("g2", ["r0"], vectors=False) == ({}, ["r0"])  # a new generation starts empty
    cache.put("g1", recs[:2])  # a read filed under the old generation after a write: dropped
    assert cache.get("g2", ["r0"], vectors=False)[1] == ["r0"]
    cache.put("g2", recs)  # over the limit: starts again rather than grow
    assert len(cache._text) <= cache.limit and len(cache._vec) <= cache.limit
    with pytest.raises(ValueError, match="at least 1"):
        RecordCache(limit=0)


def test_a_read_by_ids_and_filter_keeps_the_order_of_the_ids(store: ChromaStore) -> None:
    want = ["r9", "r0", "r6", "r3"]  # doc_id d0: r0, r3, r6, r9
    for _ in range(2):  # from Chroma, then from the cache
        assert [r.id for r in store.get(ids=want, where={"doc_id": "d0"})] == want
