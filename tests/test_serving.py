"""Many chat users on one process (issue #26): the query-encoder worker merges concurrent text and image
queries into shared forward passes without changing any answer, stores search several vectors in one call
with the same results, and the worker keeps serving when it is restarted or its model raises under load."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from corpora.synthetic_scenes import generate_scenes
from heterag import Document, open_collection
from heterag.core.errors import EncoderWorkerError, InvalidInputError
from heterag.core.images import ImageRef
from heterag.encoding.batching import BatchWorker, default_worker
from heterag.retrieval.fusion import Fusion
from heterag.stores.base import Record

SCENES = 24
SIZE = 96
TOPICS = {
    "tides.md": "# Tides\n\nTides are caused mainly by the gravitational pull of the Moon. The Sun adds a smaller pull.\n\n"
                "Spring tides come at new and full moon, neap tides at the quarter moons.",
    "bread.md": "# Bread\n\nBread rises because yeast releases carbon dioxide. Kneading builds gluten, which traps the gas.",
    "rust.md": "# Rust\n\nIron rusts when oxygen and water react with it. Salt water makes it rust faster.",
    "stars.md": "# Stars\n\nA star shines because nuclear fusion in its core turns hydrogen into helium.",
}


def _together(n: int, target, timeout: float = 60.0) -> list:
    """``target(i)`` from ``n`` threads released at once; returns each result or exception. Fails if any thread
    is still running after ``timeout`` seconds (a hang)."""
    out: list = [None] * n
    gate = threading.Barrier(n)

    def run(i: int) -> None:
        gate.wait()
        try:
            out[i] = target(i)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = sum(t.is_alive() for t in threads)
    assert not hung, f"{hung} of {n} calls did not return within {timeout:g} s"
    return out


@pytest.fixture(scope="module")
def collections(tmp_path_factory: pytest.TempPathFactory, encoder) -> dict[str, object]:
    """Two collections of the same text notes and synthetic scenes (image + caption), in Chroma and in FAISS."""
    home = tmp_path_factory.mktemp("serving-home")
    old = os.environ.get("HETERAG_HOME")
    os.environ["HETERAG_HOME"] = str(home)
    try:
        docs = [Document.create(t, id=n, title=n.split(".")[0].title()) for n, t in TOPICS.items()]
        docs += list(s.to_document() for s in generate_scenes(SCENES, seed=3, size=SIZE))
        pipes = {}
        for store in ("chroma", "faiss"):
            pipe = open_collection(f"kb-{store}", store=store)
            pipe.ingest(docs)
            pipes[store] = pipe
    finally:
        if old is None:
            os.environ.pop("HETERAG_HOME", None)
        else:
            os.environ["HETERAG_HOME"] = old
    yield {"home": home, **pipes}
    for p in pipes.values():
        p.close()


def _queries() -> list[dict]:
    """Text questions, query images (scenes of the collection, and one it does not hold) and both together."""
    scenes = list(generate_scenes(SCENES + 1, seed=3, size=SIZE))
    texts = ["What causes tides?", "Why does bread rise?", "How does iron rust?", "Why do stars shine?",
             "a red circle", "two blue squares", "What colour is the star?", "shapes on a green background"]
    out = [{"query": t} for t in texts]
    out += [{"image": scenes[i].image} for i in (0, 5, 11, 17, SCENES)]
    out += [{"query": scenes[i].caption.split(".")[0], "image": scenes[i].image} for i in (2, 9, 20)]
    return out


def _forget(pipe) -> None:
    """Drop what the encoders and the generator remember, so every vector is computed anew."""
    pipe.encoder.base._recent.clear() if hasattr(pipe.encoder, "base") else pipe.encoder._recent.clear()
    pipe.generator._cache.clear()


def _answer(pipe, q: dict):
    ans = pipe.answer(q.get("query"), k=5, image=q.get("image"))
    return ans.text, [h.chunk_id for h in ans.hits], np.array([h.score for h in ans.hits])


@pytest.mark.parametrize("store,batch_searches", [("chroma", False), ("chroma", True), ("faiss", True)])
def test_a_question_alone_and_inside_a_concurrent_batch_gets_the_same_answer_and_sources(collections, store,
                                                                                          batch_searches):
    pipe = collections[store]
    pipe.batch_searches = batch_searches
    fusion = pipe.fusion
    pipe.fusion = Fusion(candidates=4)  # few candidates a signal: which ones each search returns decides the answer
    queries = _queries()
    _forget(pipe)
    alone = [_answer(pipe, q) for q in queries]  # one at a time: every forward pass holds one query
    text_stats, image_stats = pipe.encoder._batcher.stats, pipe.image_encoder._query_batcher.stats
    text_merged, image_merged = text_stats.merged, image_stats.merged
    for _ in range(2):
        _forget(pipe)
        together = _together(len(queries), lambda i: _answer(pipe, queries[i]))
        for q, a, b in zip(queries, alone, together, strict=True):
            assert not isinstance(b, BaseException), (q, b)
            assert b[1] == a[1], f"other sources or order for {q} when batched"
            np.testing.assert_allclose(b[2], a[2], atol=1e-5, err_msg=f"other scores for {q} when batched")
            assert b[0] == a[0], f"another answer for {q} when batched"
    # the concurrent questions did share forward passes (otherwise this test would prove nothing)
    assert text_stats.merged > text_merged and image_stats.merged > image_merged
    if batch_searches:  # and store searches
        merged = [b.stats.merged for _, b in pipe._search_batchers.values() if b is not None]
        assert sum(merged) > 0, merged
    pipe.batch_searches, pipe.fusion = False, fusion


def test_each_row_of_a_query_matrix_gets_what_a_query_of_its_own_gets(collections):
    for store in ("chroma", "faiss"):
        inner = collections[store].store
        vecs = collections[store].encoder.encode(["tides and the moon", "yeast", "a red star", "iron and salt water"])
        where = {"doc_id": {"$in": ["tides.md", "bread.md", "rust.md"]}}
        for flt in (None, where):
            many = inner.query_many(vecs, k=6, where=flt)
            for v, got in zip(vecs, many, strict=True):
                one = inner.query(v, k=6, where=flt)
                assert [r.record.id for r in got] == [r.record.id for r in one]
                np.testing.assert_allclose([r.score for r in got], [r.score for r in one], atol=1e-6)
        with pytest.raises(InvalidInputError):
            inner.query_many(np.full((2, vecs.shape[1]), np.nan, dtype=np.float32), k=3)


class _Stop(BaseException):
    """What stops a worker thread (like KeyboardInterrupt, without interrupting the test run)."""


def test_100_concurrent_questions_while_the_worker_restarts_and_raises_each_end_and_it_serves_on(collections,
                                                                                               monkeypatch):
    """100 questions at once (a third with an image) while the worker thread is replaced every 20 ms, the text
    model raises for every question that contains POISON, and the first batch holding STOP kills the worker
    thread: every question ends within seconds, with an answer or a one-line error (never a timeout), the
    poisoned ones with an error, and the app answers as usual afterwards."""
    from heterag.ui.config import AppConfig, ChatSettings
    from heterag.ui.service import ChatService, Done, Failed

    monkeypatch.setenv("HETERAG_HOME", str(collections["home"]))
    pipe = collections["chroma"]
    worker = default_worker()
    monkeypatch.setattr(worker, "timeout_s", 20.0)
    text, image = pipe.encoder._batcher, pipe.image_encoder._query_batcher
    stopped = threading.Event()
    image_calls = {"n": 0}

    def flaky_text(fn):
        def run(items):
            if any("STOP" in t for t in items) and not stopped.is_set():
                stopped.set()
                raise _Stop()  # the worker thread dies: its callers get an error, a new thread takes over
            if any("POISON" in t for t in items):
                raise RuntimeError("injected encoder failure")
            return fn(items)
        return run

    def flaky_image(fn):
        def run(items):
            image_calls["n"] += 1
            if image_calls["n"] % 4 == 0:
                raise RuntimeError("injected image encoder failure")
            return fn(items)
        return run

    monkeypatch.setattr(text, "fn", flaky_text(text.fn))
    monkeypatch.setattr(image, "fn", flaky_image(image.fn))
    service = ChatService(AppConfig())
    settings = ChatSettings(collection="kb-chroma", top_k=3)
    images = [ImageRef.from_pil(s.image) for s in generate_scenes(20, seed=5, size=SIZE)]

    def question(i: int) -> tuple[str, ImageRef | None]:
        if i % 3 == 2:
            return "", images[i % 20]
        marker = " POISON" if i % 10 == 3 else " STOP" if i == 49 else ""
        return f"question {i}{marker}: what causes tides?", None

    def ask(i: int) -> tuple[str, float, str]:
        t0 = time.monotonic()
        try:
            events = list(service.ask(*question(i), settings))
        except RuntimeError as exc:  # not a HeteragError: the app shows Gradio's error for it
            return "error", time.monotonic() - t0, str(exc)
        last = events[-1]
        if isinstance(last, Failed):
            return "failed", time.monotonic() - t0, last.message
        assert isinstance(last, Done), events
        return "answer", time.monotonic() - t0, ""

    stop = threading.Event()

    def chaos() -> None:
        while not stop.wait(0.02):
            worker.restart()

    restarts = worker.restarts
    chaos_thread = threading.Thread(target=chaos, daemon=True)
    chaos_thread.start()
    try:
        got = _together(100, ask, timeout=90)
    finally:
        stop.set()
        chaos_thread.join()
    bad = [g for g in got if isinstance(g, BaseException)]
    assert not bad, bad[:3]
    for i, (kind, seconds, message) in enumerate(got):
        assert seconds < 20, f"question {i} took {seconds:.1f} s"
        if kind != "answer":
            assert "injected" in message or "worker stopped" in message, (i, message)  # never a timeout
        if "POISON" in question(i)[0]:
            assert kind != "answer", f"question {i} was answered although its encoding failed"
    assert stopped.is_set()
    kinds = [k for k, _, _ in got]
    assert kinds.count("answer") >= 20, kinds  # most errors are the injected ones and the stopped batch's
    assert any("worker stopped" in m for _, _, m in got), "the stopped batch's callers got no error"
    assert worker.restarts > restarts + 5
    stopped.clear()  # the worker thread dies once more, now that nothing else restarts it: it is replaced
    events = list(service.ask("question STOP: why does bread rise?", None, settings))
    assert isinstance(events[-1], Failed) and "worker stopped" in events[-1].message, events[-1]
    monkeypatch.undo()
    t0 = time.monotonic()
    events = list(service.ask("What makes bread rise?", None, settings))  # afterwards: served as usual
    assert time.monotonic() - t0 < 10
    assert isinstance(events[-1], Done) and "yeast" in events[-1].answer.text
    assert isinstance(list(service.ask("", images[0], settings))[-1], Done)
    assert worker.alive()
    service.close()


# ---- the worker itself, with stand-in batch functions ------------------------------------------------------
def test_calls_arriving_within_the_wait_window_share_one_batch():
    seen: list[list[int]] = []
    worker = BatchWorker(name="t-window", max_wait_s=0.2)
    b = worker.batcher(lambda items: seen.append(list(items)) or [x * 10 for x in items])

    def call(i: int):
        time.sleep(0.02 * i)  # not at once: 0, 20, 40, 60 ms
        return b([i])

    assert _together(4, call) == [[0], [10], [20], [30]]
    assert seen == [[0, 1, 2, 3]]
    lone = time.perf_counter()
    assert b([5]) == [50]
    assert time.perf_counter() - lone < 1.0
    worker.close()


def test_a_call_gets_an_error_after_the_timeout_instead_of_waiting_for_a_stuck_model():
    release = threading.Event()
    worker = BatchWorker(name="t-stuck", max_wait_s=0.0, timeout_s=0.3)
    b = worker.batcher(lambda items: release.wait(10) and list(items))
    t0 = time.perf_counter()
    got = _together(5, lambda i: b([i]), timeout=10)
    assert all(isinstance(g, EncoderWorkerError) and "no result after 0.3 s" in str(g) for g in got), got
    assert time.perf_counter() - t0 < 3
    release.set()
    assert b(["after"]) == ["after"]  # the model came back: served again

    def locked(items):
        raise TimeoutError("collection is locked")

    with pytest.raises(TimeoutError, match="locked"):  # a call's own TimeoutError is its error, at once
        worker.batcher(locked)(["x"])
    worker.close()
    with pytest.raises(EncoderWorkerError, match="closed"):
        b(["closed"])


def test_a_restart_never_runs_the_model_in_two_threads_and_loses_no_call():
    active = {"now": 0, "most": 0}
    lock = threading.Lock()

    def fn(items):
        with lock:
            active["now"] += 1
            active["most"] = max(active["most"], active["now"])
        time.sleep(0.005)
        with lock:
            active["now"] -= 1
        return [x + 1 for x in items]

    worker = BatchWorker(name="t-restart", max_wait_s=0.001)
    b = worker.batcher(fn, max_items=4)
    stop = threading.Event()

    def chaos() -> None:
        while not stop.wait(0.003):
            worker.restart()

    threading.Thread(target=chaos, daemon=True).start()
    try:
        got = _together(100, lambda i: b([i]), timeout=30)
    finally:
        stop.set()
    assert got == [[i + 1] for i in range(100)]
    assert active["most"] == 1, "two worker threads ran the model at once"
    assert worker.restarts > 3
    worker.close()


def test_queued_calls_run_before_an_exclusive_job_and_a_call_from_inside_a_job_runs_inline():
    worker = BatchWorker(name="t-order", max_wait_s=0.0)
    order: list[str] = []
    started = threading.Event()
    hold = threading.Event()
    b = worker.batcher(lambda items: order.extend(items) or list(items))

    def first_job() -> None:
        started.set()
        hold.wait(5)
        order.append("slice 1")

    inner: list = []
    t = threading.Thread(target=b.run_exclusive, args=(first_job,))
    t.start()
    assert started.wait(5)
    asker = threading.Thread(target=b, args=(["query"],))
    asker.start()  # queued while slice 1 runs ...
    while not b._pending:
        time.sleep(0.001)
    second = threading.Thread(target=lambda: inner.append(b.run_exclusive(lambda: order.append("slice 2") or b(["inner"]))))
    second.start()  # ... and so is the next slice, after it
    while worker.pending < 2:
        time.sleep(0.001)
    hold.set()
    for thread in (t, asker, second):
        thread.join(5)
    assert inner == [["inner"]]  # the call from inside a job ran at once: no deadlock
    assert order == ["slice 1", "query", "slice 2", "inner"]
    worker.close()


def test_queue_settings_are_checked_and_the_chat_runs_many_questions_at_once():
    from heterag.ui.config import AppConfig, parse_args

    cfg = parse_args(["--queue-size", "40", "--concurrency", "12"])
    assert (cfg.queue_size, cfg.concurrency) == (40, 12)
    assert AppConfig().concurrency >= 20  # twenty users asking at once are all answered together, none queued
    with pytest.raises(InvalidInputError, match="queue size"):
        parse_args(["--queue-size", "0"])


def test_a_store_that_cannot_search_a_matrix_is_searched_one_vector_at_a_time(tmp_path: Path):
    from heterag.retrieval.search_batching import SearchBatcher, search_batcher
    from heterag.stores.faiss import FaissStore

    class OneAtATime:
        def __init__(self, inner):
            self.inner = inner

        def query(self, vector, k=10, where=None):
            return self.inner.query(vector, k=k, where=where)

    store = FaissStore(tmp_path, "s")
    store.upsert([Record(id=f"r{i}", vector=np.eye(4, dtype=np.float32)[i % 4] + 0.1 * i, text=f"t{i}") for i in range(8)])
    assert search_batcher(OneAtATime(store)) is None
    batcher = SearchBatcher(store)
    q = np.eye(4, dtype=np.float32)
    got = _together(4, lambda i: batcher.query(q[i], k=3))
    assert [[r.record.id for r in g] for g in got] == [[r.record.id for r in store.query(q[i], k=3)] for i in range(4)]
    store.close()
