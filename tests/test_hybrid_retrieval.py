"""Hybrid retrieval at the retriever: the fusion rules, the modes, provenance of hits, one slot per view."""

from __future__ import annotations

import pytest

from heterag import Document, Pipeline, make_view, open_store
from heterag.core.errors import InvalidInputError, KeywordIndexError, UnknownNameError
from heterag.core.results import Hit
from heterag.retrieval.hybrid import HybridFusion
from heterag.retrieval.retriever import one_per_view

NOTES = {
    "il6": "Interleukin IL-6 is raised in severe COVID-19 and predicts ventilation.",
    "tnf": "Tumour necrosis factor drives inflammation in rheumatoid arthritis.",
    "volcano": "Volcanoes erupt when magma rises through cracks in the crust.",
    "p53": "The protein p53 guards the genome and suppresses tumours.",
    "code": "Assay kit ZX-4471 was used for every serum sample in the cohort.",
}


@pytest.fixture()
def pipe(tmp_path, encoder):
    p = Pipeline(open_store("chroma", tmp_path / "store", "test"), encoder, make_view("heterag"), chunk_tokens=32)
    p.ingest([Document.create(text, title=name, id=name) for name, text in NOTES.items()])
    yield p
    p.close()


def test_rrf_adds_reciprocal_ranks_weighted():
    f = HybridFusion(method="rrf", k=10, weight=0.25)
    fused = dict(f.fuse([("a", 0.9), ("b", 0.8)], [("b", 7.0), ("c", 3.0)]))
    assert fused["a"] == pytest.approx(0.25 / 11)
    assert fused["b"] == pytest.approx(0.25 / 12 + 0.75 / 11)
    assert fused["c"] == pytest.approx(0.75 / 12)
    assert [i for i, _ in f.fuse([("a", 0.9), ("b", 0.8)], [("b", 7.0), ("c", 3.0)])][0] == "b"


def test_convex_uses_theoretical_minimum_and_exact_scores():
    f = HybridFusion(method="convex", weight=0.5)
    out = dict(f.fuse([("a", 1.0), ("b", 0.0)], [("b", 4.0)], exact={"a": {"keyword": 2.0}}))
    # dense: floor -1, max 1 -> a 1.0, b 0.5; keyword: floor 0, max 4 -> a 0.5, b 1.0
    assert out["a"] == pytest.approx(0.5 * 1.0 + 0.5 * 0.5)
    assert out["b"] == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)
    missing = dict(f.fuse([("a", 1.0)], [("c", 4.0)]))
    assert missing["c"] == pytest.approx(0.5)  # no dense score: counted at the cosine floor


@pytest.mark.parametrize("spec", ["bm25", "rrf:k=-1", "convex:weight=2", "rrf:kk=3", "rrf:k=x", "convex:candidates=0"])
def test_bad_hybrid_specs_are_one_line_errors(spec):
    with pytest.raises(InvalidInputError) as err:
        HybridFusion.parse(spec)
    assert "\n" not in str(err.value)


def test_parse_keeps_defaults_for_unnamed_fields():
    f = HybridFusion.parse("rrf:k=20")
    assert (f.method, f.k) == ("rrf", 20) and f.candidates >= 1
    assert HybridFusion.parse(f.describe()) == f


def test_keyword_finds_an_exact_code_and_hits_say_how_they_were_found(pipe):
    kw = pipe.retrieve("ZX-4471", k=1, retrieval="keyword")
    assert kw[0].doc_id == "code" and kw[0].found_by == ("keyword",) and kw[0].scores["keyword"] > 0
    hy = pipe.retrieve("which assay kit ZX-4471", k=3, retrieval="hybrid")
    assert hy[0].doc_id == "code" and set(hy[0].found_by) == {"dense", "keyword"}
    assert all(h.found_by == ("dense",) for h in pipe.retrieve("ZX-4471", k=3, retrieval="dense"))


def test_stopword_query_gives_no_keyword_hits_and_hybrid_falls_back_to_dense(pipe):
    assert pipe.retrieve("the of and !!!", k=3, retrieval="keyword") == []
    dense = pipe.retrieve("the of and !!!", k=3, retrieval="dense")
    hybrid = pipe.retrieve("the of and !!!", k=3, retrieval="hybrid")
    assert [h.chunk_id for h in hybrid] == [h.chunk_id for h in dense]


def test_unknown_mode_lists_choices(pipe):
    with pytest.raises(UnknownNameError, match="dense, hybrid, keyword"):
        pipe.retrieve("p53", retrieval="bm25")


def test_store_without_keyword_index_is_dense_by_default_and_refuses_hybrid(tmp_path, encoder):
    p = Pipeline(open_store("chroma", tmp_path / "s", "test", keywords=False), encoder, make_view("naive"), name="old")
    try:
        p.ingest([Document.create(NOTES["p53"], id="p53")])
        assert p.retrieval_mode() == "dense" and p.retrieve("p53", k=1)[0].doc_id == "p53"
        with pytest.raises(KeywordIndexError, match="heterag keywords build --collection old"):
            p.retrieve("p53", retrieval="hybrid")
    finally:
        p.close()


def _hit(cid: str, doc: str, view: str, text: str, index: int, score: float) -> Hit:
    return Hit(chunk_id=cid, doc_id=doc, text=text, view=view, score=score, index=index)


def test_one_slot_per_view_keeps_the_chunk_holding_the_query_terms():
    shared = "Bees. A colony has one queen. Honey bees dance to show where flowers are."
    hits = [_hit("c1", "bees", shared, "A colony has one queen.", 0, 0.7),
            _hit("c2", "bees", shared, "Honey bees dance to show where flowers are.", 1, 0.7),
            _hit("t1", "tides", "Tides view", "Tides follow the Moon.", 0, 0.2),
            _hit("l1", "late", "", "late chunk a", 0, 0.1), _hit("l2", "late", "", "late chunk b", 1, 0.1)]
    out = one_per_view(hits, "where do bees find flowers")
    assert [h.chunk_id for h in out] == ["c2", "t1", "l1", "l2"]
    assert out[0].score == 0.7


def test_two_chunks_sharing_a_view_take_one_top_k_slot(tmp_path, encoder):
    p = Pipeline(open_store("chroma", tmp_path / "s", "test"), encoder, make_view("heterag"), chunk_tokens=16)
    try:
        p.ingest([Document.create("A colony has one queen, many workers and some drones in summer. "
                                  "Honey bees communicate the direction of flowers with a waggle dance.", title="Bees", id="bees"),
                  Document.create("Tides are caused by the Moon.", title="Tides", id="tides")])
        views = [r.metadata["view"] for r in p.store.get(where={"doc_id": "bees"})]
        assert len(views) == 2 and views[0] == views[1]  # the premise: one view, two chunks
        for mode in ("dense", "keyword", "hybrid"):
            hits = p.retrieve("How do honey bees tell each other where flowers are?", k=2, retrieval=mode)
            assert [h.doc_id for h in hits].count("bees") == 1, mode
            assert "waggle dance" in hits[0].text, mode
    finally:
        p.close()


def test_k_must_be_positive(pipe):
    with pytest.raises(InvalidInputError):
        pipe.retrieve("p53", k=0, retrieval="hybrid")


@pytest.mark.parametrize("view", ["naive", "late"])
def test_views_without_a_context_text_are_found_by_keywords_of_their_neighbours(tmp_path, encoder, view):
    """A naive or late chunk is found by a term that only its neighbour or its title holds (the keyword text
    is the chunk in context), and the stored context never leaks into a hit's metadata."""
    text = ("Zebrafish larvae regrow their fins within days. " * 3 + "The cohort was followed for two years. " * 3
            + "Volcanic ash was measured in every sample. " * 3)
    p = Pipeline(open_store("chroma", tmp_path / "store", "test"), encoder, make_view(view), chunk_tokens=16)
    try:
        p.ingest([Document.create(text, title="Fin regeneration", id="d")])
        records = sorted(p.store.get(), key=lambda r: r.metadata["chunk_index"])
        middle = next(r for r in records if "cohort" in r.text and "zebrafish" not in r.text.lower()
                      and "volcanic" not in r.text.lower())
        assert "Fin regeneration" in middle.metadata["keyword_context"] and middle.text in middle.metadata["keyword_context"]
        hits = p.retrieve("regeneration cohort", k=len(records), retrieval="keyword")
        assert middle.id in [h.chunk_id for h in hits]  # "regeneration" is only in the title
        assert all("keyword_context" not in h.metadata for h in hits)
    finally:
        p.close()


class _FetchingOnly:
    """The same store without the ranking shortcuts (query_ids, vectors, keyword_ranking): what a backend that
    has none of them offers, so hybrid search must fetch every candidate."""

    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        if name in ("query_ids", "vectors", "keyword_ranking"):
            raise AttributeError(name)
        return getattr(self._store, name)


@pytest.fixture(scope="module")
def ranked_pipes(tmp_path_factory, encoder):
    """One small pipeline per view (6 pydoc topics and the notes, 24-token chunks), made once for the fusions."""
    from corpora.pydoc_topics import load_pydoc_topics

    made: dict[str, tuple[Pipeline, object, list[Document]]] = {}

    def get(view: str) -> tuple[Pipeline, object, list[Document]]:
        if view not in made:
            docs = load_pydoc_topics()[:6] + [Document.create(text, title=name, id=name) for name, text in NOTES.items()]
            store = open_store("chroma", tmp_path_factory.mktemp(view) / "store", "test")
            p = Pipeline(store, encoder, make_view(view), chunk_tokens=24)
            p.ingest(docs)
            made[view] = (p, store, docs)
        return made[view]

    yield get
    for p, _, _ in made.values():
        p.close()


@pytest.mark.parametrize("view", ["heterag", "naive"])
@pytest.mark.parametrize("fusion", ["convex:weight=0.8,candidates=100", "rrf:k=5,weight=0.5,candidates=50"])
def test_hybrid_ranking_by_ids_gives_the_hits_of_fetching_every_candidate(ranked_pipes, view, fusion):
    """Hybrid search ranks ids and fetches only the hits it returns; a store that cannot rank by id is asked for
    every candidate's record. Both give the same hits, scores, provenance and order, with and without a filter,
    and one top-k slot per shared view still holds."""
    p, store, docs = ranked_pipes(view)
    questions = ["IL-6 in COVID-19", "assay kit ZX-4471", "how do volcanoes erupt", "the of and", "p53 tumours"]
    questions += [d.title for d in docs[:4]]
    for where in (None, {"doc_id": {"$in": [d.id for d in docs[::2]]}}):
        for q in questions:
            fast = p.search(q, k=4, where=where, retrieval="hybrid", hybrid=fusion).hits
            p.store = _FetchingOnly(store)
            try:
                slow = p.search(q, k=4, where=where, retrieval="hybrid", hybrid=fusion).hits
            finally:
                p.store = store
            assert [(h.chunk_id, h.found_by) for h in fast] == [(h.chunk_id, h.found_by) for h in slow], q
            for a, b in zip(fast, slow, strict=True):
                assert a.score == pytest.approx(b.score, abs=1e-6) and a.scores.keys() == b.scores.keys()
                assert a.text == b.text and a.view == b.view
            assert len({(h.doc_id, h.view) for h in fast if h.view}) == len([h for h in fast if h.view])


def test_search_takes_a_hybrid_spec_as_text_and_refuses_a_bad_one_in_one_line(pipe):
    """``search(hybrid="rrf:k=10")`` is the same as passing the parsed fusion (as the README's integrations show);
    a bad spec is the parser's one-line error, not an AttributeError."""
    as_text = pipe.search("assay kit ZX-4471", k=3, retrieval="hybrid", hybrid="rrf:k=10").hits
    parsed = pipe.search("assay kit ZX-4471", k=3, retrieval="hybrid", hybrid=HybridFusion.parse("rrf:k=10")).hits
    assert [(h.chunk_id, h.score) for h in as_text] == [(h.chunk_id, h.score) for h in parsed]
    assert as_text[0].doc_id == "code"
    for bad in ("rrf:k=-1", "convex:weight=2", "bm25"):
        with pytest.raises(InvalidInputError) as err:
            pipe.search("assay kit ZX-4471", k=3, retrieval="hybrid", hybrid=bad)
        assert "\n" not in str(err.value)
