"""Hybrid retrieval everywhere (issue 21, points 3-4): the command line (``ask --retrieval/--hybrid``, ``heterag
keywords build|check``, ``heterag collections``), migrate and reembed carrying the keyword index, document delete
and sync removing from both indexes, the LangChain and LlamaIndex retrievers, the app's settings and sources,
and the content fingerprint covering the keyword index."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import run

from corpora.files import iter_path
from heterag import Document, content_fingerprint, open_collection
from heterag.collections.collection import collection_info, delete_documents
from heterag.core.errors import HeteragError, KeywordIndexError, UnknownNameError
from heterag.stores import keyword_index_path
from heterag.stores.keyword import KeywordIndex

DOCS = {
    "cytokine": "Interleukin IL-6 is a cytokine that rises during acute inflammation and fever.",
    "bees": "Honey bees communicate the direction of flowers with the waggle dance inside the hive.",
    "tides": "Ocean tides are caused mainly by the gravitational pull of the Moon on the oceans.",
    "bread": "Sourdough bread rises because wild yeast and lactic acid bacteria ferment the dough.",
}


def _docs() -> list[Document]:
    return [Document.create(t, title=k.title(), id=k) for k, t in DOCS.items()]


def _make(name: str = "notes", store: str = "faiss") -> None:
    rag = open_collection(name, store=store)
    try:
        rag.ingest(_docs())
    finally:
        rag.close()


def _keyword_folder(name: str) -> Path:
    info = collection_info(name)
    return keyword_index_path(info.store_path, "heterag")


def _both_ids(rag) -> tuple[set[str], set[str]]:
    return set(rag.store.ids()), set(rag.store.keywords.ids())


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize("argv, words", [
    (["--retrieval", "bm25"], ["--retrieval", "invalid choice: 'bm25'", "dense", "keyword", "hybrid"]),
    (["--hybrid", "rrf:k=-1"], ["hybrid fusion k"]),
    (["--hybrid", "max"], ["hybrid fusion method", "rrf, convex"]),
    (["--hybrid", "rrf:depth=3"], ["rrf:k=60,weight=0.5"]),
])
def test_ask_retrieval_options_are_one_line_before_any_collection_or_model(capsys, argv, words):
    code, out, err = run(capsys, "ask", "what is IL-6?", "--collection", "nowhere", *argv)
    assert code == 2 and not out and err.count("\n") == 1 and "nowhere" not in err, err
    for w in words:
        assert w in err, (w, err)


def test_ask_json_says_how_each_hit_was_found(capsys, encoder):
    _make()
    code, out, err = run(capsys, "ask", "IL-6", "--collection", "notes", "--retrieval", "keyword", "--json", "-k", "2")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["retrieved"][0]["doc_id"] == "cytokine"
    assert all(h["found_by"] == ["keyword"] and h["keyword_score"] > 0 for h in payload["retrieved"])
    assert payload["sources"][0]["found_by"] == ["keyword"] and payload["sources"][0]["keyword_score"] > 0
    code, out, err = run(capsys, "ask", "IL-6", "--collection", "notes", "--retrieval", "dense", "--json")
    assert code == 0, err
    assert all(h["found_by"] == ["dense"] and h["keyword_score"] is None for h in json.loads(out)["retrieved"])
    code, out, err = run(capsys, "ask", "what is IL-6?", "--collection", "notes", "--retrieval", "hybrid",
                         "--hybrid", "rrf:k=10", "--json")
    assert code == 0, err
    top = json.loads(out)["retrieved"][0]
    assert top["doc_id"] == "cytokine" and top["found_by"] == ["dense", "keyword"] and top["keyword_score"] > 0


def test_keywords_check_finds_a_difference_and_build_repairs_it(capsys, encoder):
    _make()
    code, out, err = run(capsys, "keywords", "check", "--collection", "notes")
    assert code == 0 and "in step" in out and "4 records, 4 indexed" in out, (out, err)
    index = KeywordIndex(_keyword_folder("notes"))
    gone = sorted(index.ids())[0]
    index.delete([gone])
    index.upsert([("stray-entry", "a keyword entry no record has")])
    code, out, err = run(capsys, "keywords", "check", "--collection", "notes")
    assert code == 1 and not out and err.count("\n") == 1, (out, err)
    assert "1 ids missing from the keyword index" in err and "1 ids only in the keyword index (e.g. 'stray-entry')" in err
    assert "`heterag keywords build --collection notes`" in err
    # the same difference stops a query at open, naming the repair
    code, _, err = run(capsys, "ask", "IL-6", "--collection", "notes")
    assert code == 2 and "heterag keywords build --collection notes" in err and err.count("\n") == 1
    code, out, err = run(capsys, "keywords", "build", "--collection", "notes")
    assert code == 0 and "notes: keyword index built: 4 of 4 records indexed" in out, (out, err)
    code, out, _ = run(capsys, "keywords", "check", "--collection", "notes")
    assert code == 0 and "in step" in out
    code, _, err = run(capsys, "keywords", "check", "--collection", "absent")
    assert code == 2 and "absent" in err


def test_a_collection_without_a_keyword_index_says_how_to_build_one(capsys, encoder):
    _make("old")
    shutil.rmtree(_keyword_folder("old"))  # as made before keyword indexes
    code, out, _ = run(capsys, "collections")
    assert "keyword index none (build: heterag keywords build --collection old)" in out
    code, out, err = run(capsys, "keywords", "check", "--collection", "old")
    assert code == 1 and "no keyword index" in err and "heterag keywords build --collection old" in err
    code, _, err = run(capsys, "ask", "IL-6", "--collection", "old", "--retrieval", "hybrid")
    assert code == 2 and "has no keyword index" in err and "heterag keywords build --collection old" in err
    code, out, err = run(capsys, "ask", "IL-6", "--collection", "old", "--retrieval", "dense", "--json")
    assert code == 0 and json.loads(out)["retrieved"][0]["found_by"] == ["dense"], err
    from heterag.ui.terminal import main as terminal_main

    assert terminal_main(["--collection", "old", "--retrieval", "keyword"]) == 2
    assert "heterag keywords build --collection old" in capsys.readouterr().err
    code, out, err = run(capsys, "keywords", "build", "--collection", "old")
    assert code == 0 and "4 of 4" in out, err
    code, out, _ = run(capsys, "collections", "--json")
    assert json.loads(out)[0]["keywords"] == "local"
    code, out, _ = run(capsys, "collections")
    assert "keyword index yes" in out
    code, out, err = run(capsys, "ask", "IL-6", "--collection", "old", "--retrieval", "keyword", "--json")
    assert code == 0 and json.loads(out)["retrieved"][0]["doc_id"] == "cytokine", err


def test_a_damaged_keyword_folder_is_replaced_by_build(capsys, encoder):
    _make()
    folder = _keyword_folder("notes")
    for f in folder.iterdir():
        if f.name != "heterag.json":
            f.unlink() if f.is_file() else shutil.rmtree(f)
    (folder / "meta.json").write_text("{not json")
    code, out, err = run(capsys, "keywords", "build", "--collection", "notes")
    assert code == 0 and "4 of 4" in out, err
    rag = open_collection("notes")
    try:
        assert rag.retrieve("IL-6", k=1, retrieval="keyword")[0].doc_id == "cytokine"
    finally:
        rag.close()


# --------------------------------------------------------------------------- delete and sync


def test_document_delete_and_sync_remove_from_both_indexes(tmp_path, encoder):
    _make()
    assert delete_documents("notes", ["bees"]) >= 1  # heterag docs delete: the stores only
    rag = open_collection("notes")
    try:
        vec, kw = _both_ids(rag)
        assert vec == kw and len(vec) == 3 and not rag.retrieve("waggle dance", k=3, retrieval="keyword")
        rag.delete_documents(["tides"])  # the pipeline's own delete
        vec, kw = _both_ids(rag)
        assert vec == kw and len(vec) == 2
        folder = tmp_path / "files"
        folder.mkdir()
        (folder / "a.txt").write_text("Mitochondria make ATP through oxidative phosphorylation.")
        (folder / "b.txt").write_text("The p53 protein suppresses tumours.")
        rag.ingest(iter_path(folder))
        (folder / "b.txt").unlink()
        assert rag.remove_missing_files(folder)  # ingest --sync
        vec, kw = _both_ids(rag)
        assert vec == kw and len(vec) == 3 and not rag.retrieve("p53", k=3, retrieval="keyword")
    finally:
        rag.close()


# --------------------------------------------------------------------------- migrate and reembed


def test_migrate_carries_the_keyword_index_and_resumes(encoder):
    from heterag.collections.migrate import migrate_collection

    _make("moving", store="faiss")
    rag = open_collection("moving")
    before = content_fingerprint(rag)
    rag.close()
    with pytest.raises(RuntimeError, match="simulated crash"):
        migrate_collection("moving", "faiss", "chroma", batch=2, _fail_after=1)
    report = migrate_collection("moving", "faiss", "chroma", batch=2)
    assert report.resumed == 2 and report.keyword_entries == len(DOCS) and "keyword index (4 ids)" in report.summary()
    assert collection_info("moving").store == "chroma"
    rag = open_collection("moving")
    try:
        vec, kw = _both_ids(rag)
        assert vec == kw and len(vec) == len(DOCS)
        assert rag.retrieval_mode("hybrid") == "hybrid" and rag.retrieve("IL-6", k=1, retrieval="keyword")[0].doc_id == "cytokine"
        assert content_fingerprint(rag) == before
    finally:
        rag.close()


def test_migrate_refuses_a_source_whose_keyword_index_is_out_of_step(encoder):
    from heterag.collections.migrate import migrate_collection

    _make("moving", store="faiss")
    KeywordIndex(_keyword_folder("moving")).upsert([("stray-entry", "left behind")])
    with pytest.raises(KeywordIndexError, match="heterag keywords build --collection moving"):
        migrate_collection("moving", "faiss", "chroma")
    info = collection_info("moving")
    assert info.store == "faiss" and not (info.path / "store-chroma").exists()  # nothing written


def test_migrate_of_a_collection_without_keyword_index_gives_the_copy_one(encoder):
    from heterag.collections.migrate import migrate_collection

    _make("old", store="faiss")
    shutil.rmtree(_keyword_folder("old"))
    report = migrate_collection("old", "faiss", "chroma")
    assert report.keyword_entries == len(DOCS)
    rag = open_collection("old")
    try:
        vec, kw = _both_ids(rag)
        assert vec == kw and len(vec) == len(DOCS)
    finally:
        rag.close()


def test_reembed_builds_the_new_keyword_index_before_the_switch(encoder):
    from heterag.collections.reembed import reembed_collection

    _make()
    old_dir = collection_info("notes").store_dir
    reembed_collection("notes", "none")
    info = collection_info("notes")
    assert info.store_dir != old_dir
    assert (info.path / info.store_dir / "heterag.keywords" / "heterag.json").exists()
    rag = open_collection("notes")
    try:
        vec, kw = _both_ids(rag)
        assert vec == kw and len(vec) == len(DOCS)
        assert rag.retrieve("IL-6", k=1, retrieval="keyword")[0].doc_id == "cytokine"
    finally:
        rag.close()


# --------------------------------------------------------------------------- integrations


def test_langchain_and_llamaindex_retrievers_take_retrieval_and_hybrid(encoder):
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from heterag.integrations.langchain import HeteragRetriever
    from heterag.integrations.llamaindex import HeteragLlamaRetriever

    rag = open_collection("notes")
    rag.ingest(_docs())
    try:
        docs = HeteragRetriever(pipeline=rag, k=2, retrieval="keyword").invoke("IL-6")
        assert docs[0].metadata["source"] == "cytokine" and docs[0].metadata["found_by"] == ["keyword"]
        assert len(docs) == 1  # only one document has the term
        docs = HeteragRetriever(pipeline=rag, k=2, retrieval="keyword").invoke("IL-6", retrieval="dense")
        assert len(docs) == 2 and all(d.metadata["found_by"] == ["dense"] for d in docs)
        docs = HeteragRetriever(pipeline=rag, k=2, retrieval="hybrid", hybrid="rrf:k=5").invoke("what is IL-6?")
        assert docs[0].metadata["found_by"] == ["dense", "keyword"]
        nodes = HeteragLlamaRetriever(rag, k=2, retrieval="keyword").retrieve("IL-6")
        assert len(nodes) == 1 and nodes[0].node.metadata["found_by"] == ["keyword"]
        nodes = HeteragLlamaRetriever(rag, k=2, retrieval="dense").retrieve("IL-6")
        assert len(nodes) == 2 and nodes[0].node.metadata["found_by"] == ["dense"]
        with pytest.raises(UnknownNameError, match="bm25"):
            HeteragRetriever(pipeline=rag, retrieval="bm25")
        with pytest.raises(HeteragError, match="hybrid fusion"):
            HeteragLlamaRetriever(rag, hybrid="rrf:k=-1")
    finally:
        rag.close()


# --------------------------------------------------------------------------- the app


def test_app_settings_take_retrieval_and_sources_say_how_a_hit_was_found(tmp_path, capsys, monkeypatch, encoder):
    from heterag.ui import render
    from heterag.ui.config import ChatSettings, load_config_file, parse_args
    from heterag.ui.server import main as app_main
    from heterag.ui.service import ChatService, Done, Failed

    assert parse_args(["--retrieval", "keyword"]).chat.retrieval == "keyword"
    with pytest.raises(HeteragError, match="unknown retrieval 'bm25'; choose one of dense, keyword, hybrid"):
        parse_args(["--retrieval", "bm25"])
    cfg = tmp_path / "app.yaml"
    cfg.write_text("chat:\n  retrieval: hybrid\n")
    assert load_config_file(cfg).chat.retrieval == "hybrid"
    monkeypatch.setattr("heterag.ui.server._exit_on_sigterm", lambda: None)
    assert app_main(["--retrieval", "bm25"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown retrieval 'bm25'" in err

    _make()
    service = ChatService()
    try:
        events = list(service.ask("IL-6", None, ChatSettings(collection="notes", top_k=2, retrieval="keyword")))
        done = [e for e in events if isinstance(e, Done)]
        assert done, events
        answer = done[0].answer
        assert all(h.found_by == ("keyword",) for h in answer.hits)
        html = render.sources_html(answer)
        assert '<span class="hr-found" title="found by">keywords</span>' in html
        assert render.sources_json(answer)[0]["found_by"] == ["keyword"]
        events = list(service.ask("what is IL-6?", None, ChatSettings(collection="notes", top_k=2, retrieval="hybrid")))
        answer = [e for e in events if isinstance(e, Done)][0].answer
        assert answer.hits[0].found_by == ("dense", "keyword") and ">keywords + vectors<" in render.sources_html(answer)
        events = list(service.ask("IL-6", None, ChatSettings(collection="notes", top_k=2, retrieval="dense")))
        answer = [e for e in events if isinstance(e, Done)][0].answer
        assert ">vectors<" in render.sources_html(answer)
    finally:
        service.close()
    # a collection without a keyword index answers a keyword question with one line naming the repair
    shutil.rmtree(_keyword_folder("notes"))
    service = ChatService()
    try:
        events = list(service.ask("IL-6", None, ChatSettings(collection="notes", retrieval="keyword")))
        failed = [e for e in events if isinstance(e, Failed)]
        assert failed and "heterag keywords build --collection notes" in failed[0].message
    finally:
        service.close()


def test_found_by_label_is_escaped_text():
    from heterag.core.results import Answer, Hit
    from heterag.ui import render

    hit = Hit(chunk_id="c", doc_id="d", text="t", view="v", score=1.0, found_by=("<b>x</b>",))
    html = render.sources_html(Answer(text="", citations=(), hits=(hit,)))
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html


# --------------------------------------------------------------------------- the content fingerprint


def test_fingerprint_covers_the_keyword_index(encoder):
    rag = open_collection("notes")
    rag.ingest(_docs())
    try:
        clean = content_fingerprint(rag)
        assert set(clean.parts) == {"text", "image", "files"}  # an index in step adds nothing
        rag.store.keywords.upsert([("stray-entry", "left behind by a delete")])
        stray = content_fingerprint(rag)
        assert stray != clean and stray.parts["keywords_extra"] == {"stray-entry"}
        assert "keywords_extra: +1 -0" in clean.diff(stray).summary()
        rag.store.keywords.delete(["stray-entry"])
        assert content_fingerprint(rag) == clean
        some = sorted(rag.store.ids())[0]
        rag.store.keywords.delete([some])
        assert content_fingerprint(rag).parts["keywords_missing"] == {some}
    finally:
        rag.close()


# --------------------------------------------------------------------------- the sandbox

SCENARIO = {
    "name": "kw",
    "seed": 3,
    "data": {"source": "synthetic:60", "task": "scene_background",
             "splits": {"knowledge_base": {"count": 30}, "reference": {"count": 10}, "candidates": {"count": 10},
                        "test": {"count": 10}}},
    "rag": {"store": "faiss", "top_k": 3},
    "attack": {"name": "none"},
    "bootstrap": 20,
}


def _scenario(**rag) -> dict:
    scn = json.loads(json.dumps(SCENARIO))
    scn["rag"].update(rag)
    return scn


def test_scenario_retrieval_is_checked_with_one_line_errors():
    from sandbox.runner import check_early
    from sandbox.scenario import ScenarioError, parse_scenario

    with pytest.raises(ScenarioError) as exc:
        parse_scenario(_scenario(retrieval="bm25"))
    assert "rag.retrieval" in str(exc.value) and "'hybrid'" in str(exc.value) and "\n" not in str(exc.value)
    assert parse_scenario(_scenario(retrieval="keyword")).rag.retrieval == "keyword"
    assert parse_scenario(_scenario()).rag.retrieval == "dense"  # scenarios stay dense unless they say otherwise
    with pytest.raises(ScenarioError, match=r"^rag\.hybrid: hybrid fusion method"):
        check_early(parse_scenario(_scenario(hybrid="max")))


def test_sandbox_run_uses_and_reports_its_retrieval(tmp_path):
    from sandbox.report import write_report
    from sandbox.runner import run_scenario
    from sandbox.scenario import parse_scenario

    r = run_scenario(parse_scenario(_scenario(retrieval="dense")))
    assert r["retrieval"] == "dense" and "hybrid" not in r and r["fingerprint_before"] == r["fingerprint_after"]
    r = run_scenario(parse_scenario(_scenario(retrieval="hybrid", hybrid="rrf:k=10")))
    assert r["retrieval"] == "hybrid" and r["hybrid"].startswith("rrf:k=10,")
    assert r["scenario"]["rag"]["retrieval"] == "hybrid"
    md = write_report(r, tmp_path / "out").read_text()
    assert "retrieval `hybrid` (fusion `rrf:k=10," in md


def test_injected_items_leave_both_indexes_and_a_stray_keyword_entry_is_caught(encoder, monkeypatch):
    from sandbox.injection import ReversibleInjection

    rag = open_collection("exp", purpose="experiment")
    rag.ingest(_docs())
    try:
        before = content_fingerprint(rag)
        with ReversibleInjection(rag, "exp") as inj:
            inj.inject([Document.create("Poisoned claim: IL-6 cures every fever.", id="poison")])
            injected = {r.id for r in rag.store.get(where={"doc_id": "poison"})}
            assert injected and injected <= set(rag.store.keywords.ids())
            assert rag.retrieve("IL-6 cures", k=1, retrieval="keyword")[0].doc_id == "poison"
        assert inj.outcome.identical and inj.outcome.clean and content_fingerprint(rag) == before
        vec, kw = _both_ids(rag)
        assert vec == kw and not injected & kw

        # a clean-up that leaves the keyword entries behind is caught by the fingerprint
        monkeypatch.setattr(KeywordIndex, "delete", lambda self, ids: 0)
        with ReversibleInjection(rag, "exp") as inj:
            inj.inject([Document.create("Poisoned claim: p53 is a vitamin.", id="poison2")])
        assert not inj.outcome.identical and not inj.outcome.clean
        assert "keyword index is out of step" in inj.outcome.explained
        assert "heterag keywords build --collection exp" in inj.outcome.explained
        assert content_fingerprint(rag).parts["keywords_extra"]
    finally:
        rag.close()


def test_the_chat_settings_offer_retrieval_and_pass_it_to_each_question():
    from heterag.ui.service import ChatService
    from heterag.ui.webapp import build_app

    service = ChatService()
    try:
        app = build_app(service, tabs=[])
        found = [b for b in app.blocks.values() if getattr(b, "elem_id", None) == "hr-retrieval"]
        assert len(found) == 1
        assert [c[1] if isinstance(c, tuple) else c for c in found[0].choices] == ["auto", "dense", "keyword", "hybrid"]
        fns = app.fns.values() if isinstance(app.fns, dict) else app.fns
        assert any(found[0] in fn.inputs for fn in fns)  # a chat question is asked with it
    finally:
        service.close()
