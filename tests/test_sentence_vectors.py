"""Sentence vectors kept on disk (heterag.encoding.vector_cache) and encoded ahead of questions: the extractive
generator then encodes only the question, and gives the same answers as without them."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from test_generators import BOILING_QUESTION, WATER_HITS, HashingEmbedder

from heterag.encoding.vector_cache import VectorCache
from heterag.generators import ExtractiveGenerator
from heterag.generators.extractive import split_sentences


class CountingEmbedder(HashingEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def encode(self, texts: Sequence[str], **_: object) -> np.ndarray:
        self.texts += list(texts)
        return super().encode(texts)


def test_vectors_come_back_from_disk_for_the_same_encoder_only(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite"
    rng = np.random.default_rng(0)
    vecs = {f"sentence {i}": rng.normal(size=8).astype(np.float32) for i in range(700)}  # > one SELECT batch
    cache = VectorCache(path, "model-a+adapter:none", 8)
    assert cache.put(vecs) == 700 and cache.put({"bad": np.ones(3)}) == 0  # wrong dimension: not kept
    cache.close()
    again = VectorCache(path, "model-a+adapter:none", 8)
    got = again.get([*vecs, "never seen"])
    assert set(got) == set(vecs) and len(again) == 700
    np.testing.assert_array_equal(got["sentence 5"], vecs["sentence 5"])
    again.close()
    other = VectorCache(path, "model-b+adapter:none", 8)  # another encoder: its vectors would be wrong here
    assert other.get(list(vecs)) == {} and len(other) == 0
    other.close()


def test_a_damaged_file_is_set_aside_and_a_failed_write_is_only_logged(tmp_path: Path, caplog) -> None:
    path = tmp_path / "v.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    cache = VectorCache(path, "m", 4)
    assert (tmp_path / "v.sqlite.damaged").exists() and "set aside" in caplog.text
    cache.put({"x": np.ones(4)})
    assert set(cache.get(["x"])) == {"x"}
    cache._db.execute("PRAGMA query_only = ON")  # writes now fail inside SQLite
    assert cache.put({"y": np.ones(4)}) == 1 and "write failed" in caplog.text
    assert cache.get(["y"]) == {}
    cache.close()
    with pytest.raises(ValueError, match="identity"):
        VectorCache(path, "", 4)


def test_prefilled_sentences_are_not_encoded_again_and_answers_do_not_change(tmp_path: Path) -> None:
    plain = ExtractiveGenerator(HashingEmbedder(), cache_size=0).generate(BOILING_QUESTION, WATER_HITS)
    emb = CountingEmbedder()
    cache = VectorCache(tmp_path / "v.sqlite", "hashing", emb.dim)
    gen = ExtractiveGenerator(emb, sentence_cache=cache)
    sentences = {s for h in WATER_HITS for s in split_sentences(h.text)}
    assert gen.prefill(h.text for h in WATER_HITS) == len(sentences)
    assert gen.prefill(h.text for h in WATER_HITS) == 0  # all held: nothing encoded
    emb.texts.clear()
    answer = gen.generate(BOILING_QUESTION, WATER_HITS)
    assert emb.texts == [BOILING_QUESTION], "sentences were encoded at question time"
    assert answer.text == plain.text and answer.citations == plain.citations
    # a fresh generator (a restarted app) reads them from disk as well; one not prefilled keeps what it encodes
    emb2 = CountingEmbedder()
    assert ExtractiveGenerator(emb2, sentence_cache=VectorCache(tmp_path / "v.sqlite", "hashing", emb.dim)).generate(
        BOILING_QUESTION, WATER_HITS).text == plain.text and emb2.texts == [BOILING_QUESTION]
    lazy = VectorCache(tmp_path / "lazy.sqlite", "hashing", emb.dim)
    ExtractiveGenerator(CountingEmbedder(), sentence_cache=lazy).generate(BOILING_QUESTION, WATER_HITS)
    assert len(lazy) == len(sentences)
    with pytest.raises(Exception, match="sentence_cache"):
        ExtractiveGenerator(HashingEmbedder()).prefill(["a. b."])


def test_the_app_encodes_a_collections_sentences_before_its_questions(tmp_path: Path, heterag_home: Path, encoder) -> None:
    from heterag import Document, open_collection
    from heterag.collections.collection import SENTENCE_VECTORS
    from heterag.ui.config import AppConfig, ChatSettings
    from heterag.ui.service import ChatService, Done

    docs = [Document.create(f"Topic {i} has a property. The value of topic {i} is {i * 7}. It was measured twice.", id=f"d{i}",
                            title=f"Topic {i}") for i in range(6)]
    pipe = open_collection("notes", create=True)
    pipe.ingest(docs)
    pipe.close()
    service = ChatService(AppConfig(chat=ChatSettings(collection="notes")))
    try:
        assert service.prefill("notes", background=False) == 2 * len(docs) + 1
        path = heterag_home / "collections" / "notes" / SENTENCE_VECTORS
        held = sqlite3.connect(path).execute("SELECT count(*) FROM vectors").fetchone()[0]
        assert held == 2 * len(docs) + 1  # "It was measured twice." is one sentence in every document
        pipe = service.pipeline("notes")
        seen: list[str] = []
        original = pipe.encoder.encode

        def spy(texts, **kw):
            seen.extend(texts)
            return original(texts, **kw)

        pipe.encoder.encode = spy  # type: ignore[method-assign]
        events = list(service.ask("What is the value of topic 3?", None, ChatSettings(collection="notes")))
        assert isinstance(events[-1], Done) and "21" in events[-1].answer.text
        assert all(t == "What is the value of topic 3?" for t in seen), seen
    finally:
        service.close()


def test_one_encoder_never_reads_anothers_vectors_even_from_an_old_handle(tmp_path: Path) -> None:
    path = tmp_path / "v.sqlite"
    a = VectorCache(path, "A", 4)
    b = VectorCache(path, "B", 4)  # empties the file for B while A still has it open
    a.put({"t": np.ones(4)})
    assert b.get(["t"]) == {} and set(a.get(["t"])) == {"t"}
    a.close()
    b.close()


def test_a_busy_file_is_tried_again_not_set_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    path = tmp_path / "v.sqlite"
    VectorCache(path, "m", 4).put({"kept": np.ones(4)})
    real, calls = VectorCache._open, []

    def busy_twice(self):
        calls.append(1)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return real(self)

    monkeypatch.setattr(VectorCache, "_open", busy_twice)
    cache = VectorCache(path, "m", 4)
    assert len(calls) == 3 and set(cache.get(["kept"])) == {"kept"}
    assert not (tmp_path / "v.sqlite.damaged").exists() and "set aside" not in caplog.text
    cache.close()


def test_damage_found_after_opening_is_set_aside_and_started_again(tmp_path: Path, caplog) -> None:
    path = tmp_path / "v.sqlite"
    cache = VectorCache(path, "m", 16)
    cache.put({f"s{i}": np.full(16, i, dtype=np.float32) for i in range(3000)})
    cache.close()
    cache = VectorCache(path, "m", 16)
    cache._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    with open(path, "r+b") as fh:  # scribble over the middle of the b-tree
        fh.seek(size // 2)
        fh.write(np.random.default_rng(0).bytes(size // 4))
    for _ in range(3):  # reads until SQLite notices; then the file is set aside and a fresh one serves
        cache.get([f"s{i}" for i in range(3000)])
    assert (tmp_path / "v.sqlite.damaged").exists() and "set aside" in caplog.text
    cache.put({"new": np.ones(16)})
    assert set(cache.get(["new"])) == {"new"}
    cache.close()
