"""Serving many users from one process: micro-batched, thread-safe encoders, the sentence cache of the
extractive generator, and store counts that stay right when another process writes."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from test_serving import _together  # threads released at once, a hang detected

from heterag.core.results import Hit
from heterag.encoding.batching import MicroBatcher
from heterag.encoding.text_encoder import TextEncoder
from heterag.generators.extractive import ExtractiveGenerator


def _slow_upper(items: list[str]) -> list[str]:
    time.sleep(0.05)
    return [s.upper() for s in items]


def test_concurrent_calls_share_batches_and_each_gets_its_own_results():
    batcher = MicroBatcher(_slow_upper, max_items=64)
    got = _together(12, lambda i: batcher([f"a{i}", f"b{i}"]))
    assert got == [[f"A{i}", f"B{i}"] for i in range(12)]
    assert batcher.stats.calls == 12 and batcher.stats.batches <= 4, batcher.stats  # 12 calls, few passes
    assert batcher.stats.largest >= 4


def test_a_lone_call_runs_at_once():
    batcher = MicroBatcher(_slow_upper)
    t0 = time.perf_counter()
    assert batcher(["x"]) == ["X"]
    assert time.perf_counter() - t0 < 0.2  # one 50 ms pass, no waiting for company


def test_an_error_reaches_only_the_call_that_caused_it():
    def fn(items: list[str]) -> list[str]:
        time.sleep(0.02)
        if "bad" in items:
            raise ValueError("cannot encode 'bad'")
        return [s * 2 for s in items]

    batcher = MicroBatcher(fn)
    got = _together(8, lambda i: batcher(["bad" if i == 3 else f"t{i}"]))
    assert isinstance(got[3], ValueError) and "bad" in str(got[3])
    assert all(got[i] == [f"t{i}" * 2] for i in range(8) if i != 3)


def test_calls_with_other_keys_or_too_many_items_are_not_merged():
    seen: list[list[str]] = []

    def fn(items: list[str]) -> list[str]:
        seen.append(list(items))
        time.sleep(0.02)
        return items

    batcher = MicroBatcher(fn, max_items=4)
    _together(6, lambda i: batcher([f"{i}"], key=i % 2))
    assert all(len({int(x) % 2 for x in batch}) == 1 for batch in seen)  # never two keys in one pass
    seen.clear()
    assert batcher(list("abcdef")) == list("abcdef")  # more than max_items: one pass by itself
    assert seen == [list("abcdef")]
    with pytest.raises(ValueError):
        MicroBatcher(fn, max_items=0)


def test_text_encoder_is_thread_safe_and_batching_does_not_change_vectors(encoder):
    texts = [f"question number {i} about {'tides' if i % 2 else 'python generators'}" for i in range(16)]
    alone = np.stack([encoder._encode_batch([t])[0] for t in texts])  # one forward pass each, no batcher or cache

    def work(i: int):
        if i % 4 == 3:  # the tokenizer is used by other threads meanwhile (chunking an upload)
            return [encoder.count_tokens(t) for t in texts] + [len(encoder.tokenize(t)) for t in texts]
        return encoder.encode([texts[i]])[0]

    before = encoder._batcher.stats.batches
    got = _together(16, work)
    assert not [g for g in got if isinstance(g, Exception)], got
    for i, vec in enumerate(got):
        if i % 4 != 3:
            np.testing.assert_allclose(vec, alone[i], atol=1e-5)
    assert 0 < encoder._batcher.stats.batches - before < 12  # the twelve queries shared passes
    calls = encoder._batcher.stats.calls
    again = encoder.encode([texts[0], texts[1]])  # just encoded: from the recent-texts cache, no forward pass
    assert encoder._batcher.stats.calls == calls
    np.testing.assert_allclose(again, alone[:2], atol=1e-5)
    counts = got[3][:16]
    assert counts == [encoder.count_tokens(t) for t in texts]


def test_a_large_encode_gives_the_same_vectors_in_the_callers_order(encoder):
    texts = [("word " * (i % 23 + 1)) + f"item {i}" for i in range(150)]  # more than one batch, mixed lengths
    big = encoder.encode(texts)
    assert big.shape == (150, encoder.dim)
    np.testing.assert_allclose(big[[0, 77, 149]], encoder.encode([texts[0], texts[77], texts[149]]), atol=1e-5)


class _Counting:
    """An embedder that counts the texts it encodes (and delegates to the real encoder)."""

    def __init__(self, inner: TextEncoder):
        self.inner, self.texts = inner, 0

    def encode(self, texts):
        self.texts += len(texts)
        return self.inner.encode(texts)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)


def _hits() -> list[Hit]:
    return [
        Hit(chunk_id="a", doc_id="tides.md", view="", text="Tides are caused by the gravitational pull of the Moon. The Sun adds a "
            "smaller pull. Spring tides happen at new and full moon.", score=0.8),
        Hit(chunk_id="b", doc_id="waves.md", view="", text="Waves are made by wind. Their height depends on the fetch.", score=0.5),
    ]


def test_sentence_vectors_are_cached_and_answers_stay_the_same(encoder):
    counting = _Counting(encoder)
    gen = ExtractiveGenerator(counting)
    first = gen.generate("What causes tides?", _hits())
    n_sentences = counting.texts - 1
    assert n_sentences == 5 and gen.cache_misses == 5 and gen.cache_hits == 0
    again = gen.generate("Why are there tides?", _hits())  # another question, the same sources
    assert counting.texts == n_sentences + 1 + 1  # only the new question was encoded
    assert gen.cache_hits == 5
    plain = ExtractiveGenerator(encoder, cache_size=0)
    assert plain.generate("What causes tides?", _hits()).text == first.text
    assert plain.generate("Why are there tides?", _hits()).text == again.text
    small = ExtractiveGenerator(encoder, cache_size=3)
    small.generate("What causes tides?", _hits())
    assert len(small._cache) == 3  # least recently used sentences are let go
    with pytest.raises(Exception, match="cache_size"):
        ExtractiveGenerator(encoder, cache_size=-1)


WRITER = """
import sys
from heterag.stores.chroma import ChromaStore
from heterag.stores.base import Record
import numpy as np
s = ChromaStore(sys.argv[1], "counted")
s.upsert([Record(id=f"p{i}", vector=np.eye(4, dtype=np.float32)[i % 4], text=f"t{i}", metadata={}) for i in range(5)])
s.close()
"""


def test_store_count_is_remembered_but_sees_other_processes_writes(tmp_path):
    from heterag.stores.base import Record
    from heterag.stores.chroma import ChromaStore

    store = ChromaStore(tmp_path, "counted")
    store.upsert([Record(id="a", vector=np.eye(4, dtype=np.float32)[0], text="a", metadata={})])
    assert store.count() == 1 and store.count() == 1
    subprocess.run([sys.executable, "-c", WRITER, str(tmp_path)], check=True)
    assert store.count() == 6  # another process wrote: the remembered count is not used
    store.delete(["a"])
    assert store.count() == 5
    store.close()
