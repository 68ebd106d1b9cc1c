"""Plug points for defenses: ingest guards, hit filters, content fingerprints, the cross-process write lock."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFilter

from corpora.synthetic_scenes import generate_scenes
from heterag import (
    CollectionLockedError,
    Document,
    ImageRef,
    Verdict,
    collection_info,
    content_fingerprint,
    open_collection,
)
from heterag.core.errors import InvalidInputError

TEXTS = [
    "Photosynthesis converts light energy into chemical energy in chloroplasts.",
    "The mitochondrion is the powerhouse of the cell and makes ATP.",
    "Volcanoes erupt when magma rises through the crust.",
    "Glaciers carve U-shaped valleys as they move downhill.",
    "Penguins are flightless birds that live in the southern hemisphere.",
    "The French Revolution began in 1789 with the storming of the Bastille.",
]


class KeywordGuard:
    name = "keyword"

    def __init__(self, word: str):
        self.word = word
        self.seen: list[tuple[str, int, bool]] = []

    def check(self, item, pipeline):
        self.seen.append((item.document.id, item.text_vectors.shape[0], item.image_vector is not None))
        if self.word in item.text.lower():
            return Verdict.reject(f"mentions {self.word!r}")
        return Verdict.ok()


class BlurGuard:
    name = "blur"

    def check(self, item, pipeline):
        if item.image is None:
            return Verdict.ok()
        buf = io.BytesIO()
        item.image.to_pil().filter(ImageFilter.GaussianBlur(2)).save(buf, format="PNG")
        return Verdict.replace_image(ImageRef.from_bytes(buf.getvalue(), source="blurred"), "blurred")


class DropFilter:
    """Drops hits whose text mentions a word; notes the rest."""

    name = "drop-word"
    overfetch = 3

    def __init__(self, word: str):
        self.word = word
        self.seen = 0

    def filter(self, query, hits, pipeline):
        self.seen = len(hits)
        return [h.drop(f"mentions {self.word}") if self.word in h.text.lower() else h.with_note("checked") for h in hits]


@pytest.fixture()
def rag():
    pipe = open_collection("guards")
    yield pipe
    pipe.close()


def test_guard_rejects_with_reason_in_report_and_writes_nothing_of_it(rag):
    guard = KeywordGuard("volcano")
    rag.guards.append(guard)
    report = rag.ingest([Document.create(t, id=f"d{i}") for i, t in enumerate(TEXTS)])
    assert [r.source for r in report.rejected] == ["d2"]
    assert "rejected by guard keyword: mentions 'volcano'" in report.rejected[0].message
    assert "1 rejected by guards" in report.summary()
    assert report.documents_written == len(TEXTS) - 1
    assert {h.doc_id for h in rag.retrieve("volcanoes and magma", k=10)} == {f"d{i}" for i in range(6)} - {"d2"}
    assert all(n == 1 for _, n, _ in guard.seen) and not any(img for *_, img in guard.seen)


def test_guard_replacing_an_image_stores_and_embeds_the_replacement(rag):
    scenes = list(generate_scenes(3, seed=3, size=64))
    rag.guards.append(BlurGuard())
    report = rag.ingest([s.to_document() for s in scenes])
    assert report.images_replaced == 3 and report.images_written == 3
    recs = rag.image_store.get(include_vectors=True)
    originals = {s.to_document().image.sha256 for s in scenes}
    assert not originals & {r.metadata["image_sha256"] for r in recs}
    stored = rag.image_files.shas()
    assert stored == {r.metadata["image_sha256"] for r in recs}
    for r in recs:  # the stored vector is the embedding of the stored (blurred) file
        path = next(Path(rag.image_files.root).glob(f"??/{r.metadata['image_sha256']}.*"))
        vec = rag.image_encoder.encode_images([ImageRef.from_path(path)])[0]
        assert float(np.dot(vec, r.vector)) > 0.999


def test_bad_guard_or_filter_objects_are_refused():
    with pytest.raises(InvalidInputError, match="not an ingest guard"):
        open_collection("x", guards=[object()])
    bad = DropFilter("x")
    bad.overfetch = 0
    with pytest.raises(InvalidInputError, match="overfetch"):
        open_collection("y", hit_filters=[bad])


def test_hit_filter_drops_with_reason_and_overfetches_to_keep_k(rag):
    rag.ingest([Document.create(t, id=f"d{i}") for i, t in enumerate(TEXTS)])
    plain = rag.retrieve("cells and energy in biology", k=2)
    f = DropFilter(plain[0].text.split()[1].lower())  # a word of the best hit
    with rag.defended(hit_filters=[f]):
        res = rag.search("cells and energy in biology", k=2)
        assert f.seen == 6  # k * overfetch candidates reached the filter
        assert len(res.hits) == 2 and plain[0].chunk_id not in {h.chunk_id for h in res.hits}
        assert all(h.notes == ("checked",) for h in res.hits)
        assert [d.hit.chunk_id for d in res.dropped] == [plain[0].chunk_id]
        assert res.dropped[0].filter == "drop-word" and res.dropped[0].reason.startswith("mentions")
        assert [h.chunk_id for h in rag.answer("cells and energy in biology", k=2).hits] == [h.chunk_id for h in res.hits]
    assert rag.hit_filters == [] and [h.chunk_id for h in rag.retrieve("cells and energy in biology", k=2)] == [
        h.chunk_id for h in plain]


def test_hit_filter_sees_query_vectors_of_image_queries(rag):
    scenes = list(generate_scenes(4, seed=5, size=64))
    rag.ingest([s.to_document() for s in scenes])
    seen = {}

    class Spy:
        name, overfetch = "spy", 1

        def filter(self, query, hits, pipeline):
            seen.update(query.vectors)
            seen["k"] = query.k
            return list(reversed(hits))

    with rag.defended(hit_filters=[Spy()]):
        hits = rag.retrieve("a red circle", image=scenes[0].to_document().image, k=2)
    assert {"text", "image", "cross"} <= set(seen) and seen["k"] == 2
    assert hits[0].score <= hits[1].score  # the filter's order is kept


def test_content_fingerprint_tracks_every_part_and_explains_differences(rag):
    empty = content_fingerprint(rag)
    scenes = list(generate_scenes(3, seed=9, size=64))
    rag.ingest([Document.create(TEXTS[0], id="t0"), *[s.to_document() for s in scenes]])
    full = content_fingerprint(rag)
    assert full != empty and full.counts()["image"] == 3 and full.counts()["files"] == 3
    assert content_fingerprint(rag) == full  # stable
    rag.ingest([Document.create(TEXTS[1], id="t1", metadata={"sandbox_run": "r1"})])
    more = content_fingerprint(rag)
    diff = full.diff(more)
    assert len(diff.added["text"]) == 1 and not diff.removed["text"] and "text: +1 -0" in diff.summary()
    rag.delete_documents(["t1"])
    assert content_fingerprint(rag) == full
    rag.delete_documents([scenes[0].id])
    after = content_fingerprint(rag)
    assert after != full and len(full.diff(after).removed["files"]) == 1


def test_purpose_is_recorded_for_new_collections_only():
    open_collection("exp", purpose="experiment").close()
    assert collection_info("exp").purpose == "experiment"
    open_collection("exp").close()
    assert collection_info("exp").purpose == "experiment"
    open_collection("live").close()
    assert collection_info("live").purpose == ""
    with pytest.raises(InvalidInputError, match="purpose"):
        open_collection("bad", purpose="prod")


HOLDER = textwrap.dedent("""
    import sys, time
    from heterag import open_collection
    pipe = open_collection("locked")
    with pipe.write_lock():
        print("held", flush=True)
        time.sleep(float(sys.argv[1]))
""")


def test_waiting_writer_gets_one_line_error_naming_the_holder(rag, monkeypatch, heterag_home):
    open_collection("locked").close()
    # the holder's command line names store URLs with a password (as `heterag migrate --to postgresql://...` does)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, "30", "postgresql://u:s3cretPW@h/db?ef_search=400",
                             "--to=milvus:http://u:s3cretPW@h:19530"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        monkeypatch.setenv("HETERAG_LOCK_TIMEOUT", "0.5")
        pipe = open_collection("locked")
        before = content_fingerprint(pipe)
        t = time.perf_counter()
        with pytest.raises(CollectionLockedError) as exc:
            pipe.ingest([Document.create("blocked write", id="b")])
        assert time.perf_counter() - t < 10
        msg = str(exc.value)
        assert "\n" not in msg and f"pid {proc.pid}" in msg and "'locked'" in msg and "0.5 s" in msg
        assert "postgresql://u:***@h/db?ef_search=400" in msg and "--to=milvus:http://u:***@h:19530" in msg
        assert not any("s3cretPW" in f.read_text() for f in (heterag_home / "collections" / "locked").glob("*holder*"))
        assert "s3cretPW" not in msg
        assert content_fingerprint(pipe) == before  # nothing changed
        pipe.close()
    finally:
        proc.kill()
        proc.wait()
    # a killed holder never leaves a stale lock
    pipe = open_collection("locked")
    assert pipe.ingest([Document.create("now it works", id="b")]).documents_written == 1
    pipe.close()


WRITER = textwrap.dedent("""
    import sys
    from heterag import Document, open_collection
    who, n = sys.argv[1], int(sys.argv[2])
    pipe = open_collection("shared")
    for i in range(n):
        pipe.ingest([Document.create(f"{who} writes note number {i} about topic {i * 7 % 11}.", id=f"{who}-{i}")])
    pipe.delete_documents([f"{who}-{i}" for i in range(0, n, 3)])
    pipe.close()
""")


def test_two_processes_writing_one_collection_lose_nothing():
    open_collection("shared").close()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, who, "12"]) for who in ("alice", "bob")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    pipe = open_collection("shared")
    try:
        docs = {r.metadata["doc_id"] for r in pipe.store.get()}
        expected = {f"{w}-{i}" for w in ("alice", "bob") for i in range(12) if i % 3}
        assert docs == expected
        for w in ("alice", "bob"):  # searchable, not just stored
            assert pipe.retrieve(f"{w} writes note number 5 about topic 2.", k=1)[0].doc_id == f"{w}-5"
    finally:
        pipe.close()
