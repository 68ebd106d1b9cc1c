"""The pipeline end to end on real stores: idempotent/resumable ingest, retrieval, answers, fingerprints."""

from __future__ import annotations

import pytest

from heterag import (
    Document,
    FingerprintMismatchError,
    Pipeline,
    Section,
    make_view,
    open_collection,
    open_store,
)

FACTS = {
    "volcano": "Volcanoes erupt when magma rises through the crust. Lava cools into basalt rock. "
    "The 1883 eruption of Krakatoa was heard thousands of kilometres away.",
    "bees": "Honey bees communicate the direction of flowers with a waggle dance. "
    "A colony has one queen, many workers and some drones in summer.",
    "tides": "Tides are caused mainly by the gravitational pull of the Moon. "
    "Spring tides happen when the Sun and Moon align, giving the largest tidal range.",
    "bread": "Sourdough bread rises thanks to wild yeast and lactic acid bacteria in the starter. "
    "A longer fermentation develops a more sour flavour.",
}


def corpus() -> list[Document]:
    return [
        Document.create(sections=[Section(text, ("Overview",))], title=name.title(), id=name, metadata={"topic": name})
        for name, text in FACTS.items()
    ]


@pytest.fixture(params=["chroma", "faiss"])
def pipeline(request, tmp_path, encoder):
    store = open_store(request.param, tmp_path / "store", "test")
    pipe = Pipeline(store, encoder, make_view("heterag"), chunk_tokens=16)
    yield pipe
    pipe.close()


def test_ingest_is_idempotent(pipeline):
    first = pipeline.ingest(corpus())
    n = pipeline.count()
    assert first.documents_written == 4 and n == first.chunks_written > 4
    second = pipeline.ingest(corpus())
    assert second.documents_written == 0 and second.documents_unchanged == 4
    assert pipeline.count() == n


def test_changed_document_replaces_its_old_chunks(pipeline):
    pipeline.ingest(corpus())
    before = {r.id for r in pipeline.store.get(where={"doc_id": "bees"})}
    new = Document.create("Bumblebees are larger and hairier than honey bees.", title="Bees", id="bees", metadata={"topic": "bees"})
    report = pipeline.ingest([new])
    after = pipeline.store.get(where={"doc_id": "bees"})
    assert report.stale_chunks_removed == len(before)
    assert {r.id for r in after}.isdisjoint(before)
    assert all("Bumblebees" in r.text or "honey bees" in r.text for r in after)


class CrashingStore:
    """Wraps a real store and fails after ``ok`` successful upserts, like a process killed mid-ingest."""

    def __init__(self, inner, ok: int):
        self.inner, self.ok = inner, ok

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def upsert(self, records):
        if self.ok <= 0:
            raise RuntimeError("simulated crash")
        self.ok -= 1
        self.inner.upsert(records)


@pytest.mark.parametrize("store_name", ["chroma", "faiss"])
def test_interrupted_ingest_resumes_without_duplicates(tmp_path, encoder, store_name):
    docs = corpus()
    ref = Pipeline(open_store(store_name, tmp_path / "ref", "ref"), encoder, make_view("naive"), chunk_tokens=16)
    ref.ingest(docs)
    expected = sorted(r.id for r in ref.store.get())
    ref.close()

    inner = open_store(store_name, tmp_path / "s", "resume")
    crashing = Pipeline(CrashingStore(inner, ok=1), encoder, make_view("naive"), chunk_tokens=16)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.ingest(docs, batch_documents=2)
    partial = inner.count()
    assert 0 < partial < len(expected)
    resumed = Pipeline(inner, encoder, make_view("naive"), chunk_tokens=16)
    report = resumed.ingest(docs, batch_documents=2)
    assert report.documents_unchanged == 2 and report.documents_written == 2
    assert sorted(r.id for r in inner.get()) == expected
    resumed.close()


def test_retrieve_returns_short_chunks_with_matched_view(pipeline):
    pipeline.ingest(corpus())
    hits = pipeline.retrieve("What causes spring tides?", k=3)
    assert hits[0].doc_id == "tides"
    assert hits[0].score >= hits[1].score >= hits[2].score
    top = hits[0]
    assert top.text in FACTS["tides"] or top.text.replace("\n", " ") in FACTS["tides"]
    assert top.text in top.view.replace("\n", " ") or top.text.split()[0] in top.view
    assert "Tides" in top.view and "Overview" in top.view  # title and heading are in the view, not the chunk
    assert top.title == "Tides" and top.heading == ("Overview",)
    assert top.metadata["topic"] == "tides"


def test_retrieve_with_filter(pipeline):
    pipeline.ingest(corpus())
    hits = pipeline.retrieve("What causes spring tides?", k=5, where={"topic": "bread"})
    assert hits and all(h.doc_id == "bread" for h in hits)


def test_answer_cites_its_sources(pipeline):
    pipeline.ingest(corpus())
    answer = pipeline.answer("How do honey bees tell each other where flowers are?", k=3)
    assert "waggle dance" in answer.text
    assert answer.citations and answer.citations[0].doc_id == "bees"
    assert f"[{answer.citations[0].number}]" in answer.text
    assert answer.context_tokens > 0


def test_collection_reopens_with_its_settings_and_rejects_others(encoder, tiny_encoder_path):
    rag = open_collection("notes", view="late", chunk_tokens=32)
    rag.ingest(corpus())
    n = rag.count()
    rag.close()
    again = open_collection("notes")  # settings come from the fingerprint
    assert again.view.kind == "late" and again.chunk_tokens == 32 and again.count() == n
    again.close()
    with pytest.raises(FingerprintMismatchError, match="^collection 'notes' uses --view late, not heterag; "):
        open_collection("notes", view="heterag")
    with pytest.raises(FingerprintMismatchError, match=r"collection 'notes' uses --encoder default \(model .*all-MiniLM-L6-v2"):
        open_collection("notes", encoder=str(tiny_encoder_path))
    with pytest.raises(FingerprintMismatchError, match="collection 'notes' uses --chunk-tokens 32, not 64; use a new "
                       "--collection name or `heterag drop notes` first"):
        open_collection("notes", chunk_tokens=64)
    check = open_collection("notes")
    assert check.count() == n  # nothing lost
    check.close()


def test_local_encoder_path_builds_a_collection(tiny_encoder_path):
    rag = open_collection("tiny", encoder=str(tiny_encoder_path), store="faiss", view="naive")
    rag.ingest(corpus())
    assert rag.fingerprint.dim == 32 and rag.fingerprint.model.startswith("local:")
    assert len(rag.retrieve("bees", k=2)) == 2
    rag.close()
    reopened = open_collection("tiny")  # remembers its encoder path
    assert reopened.fingerprint.dim == 32
    reopened.close()
