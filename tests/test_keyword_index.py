"""The keyword index below the retriever: tokenizer, the Tantivy index and its journal, crash safety
(``kill -9`` mid-ingest, then a re-run, leaves both indexes with identical id sets), and bad input at the
index level (a collection made before keyword indexes, ids out of step, a corrupt keyword folder)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from store_servers import pg_server  # noqa: F401 - session fixture

from heterag.core.errors import InvalidInputError, KeywordIndexError
from heterag.stores import KeywordSearch, Record, keyword_index_path, open_store
from heterag.stores.keyword import KeywordIndex, keyword_text
from heterag.stores.keyworded import KeywordedStore
from heterag.stores.tokenizer import MAX_TERM_CHARS, query_terms, tokenize

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize(("text", "terms"), [
    ("IL-6", ["il-6", "il", "6"]),
    ("p53", ["p53"]),
    ("COVID-19", ["covid-19", "covid", "19"]),
    ("TNF-α", ["tnf-α", "tnf"]),  # one-letter parts are dropped
    ("3.5 mg", ["3.5", "3", "5", "mg"]),
])
def test_compound_terms_are_kept_with_their_parts(text: str, terms: list[str]) -> None:
    assert tokenize(text) == terms


def test_stemming_stopwords_and_case() -> None:
    assert tokenize("The Mutations were mutated") == ["mutat", "mutat"]
    assert tokenize("running runs") == ["run", "run"]
    assert tokenize("the and of a an is") == []
    assert tokenize("x y z 7") == ["7"]  # one-letter words go, digits stay


@pytest.mark.parametrize("text", ["", "   ", "!!! ... ???", "- * : \" ( )", "the of and"])
def test_no_terms_in_punctuation_or_stopwords(text: str) -> None:
    assert tokenize(text) == [] and query_terms(text) == []


def test_cjk_unigrams_and_cyrillic_unstemmed() -> None:
    assert tokenize("新型冠状病毒") == list("新型冠状病毒")
    assert tokenize("ウイルス感染") == list("ウイルス感染")
    assert tokenize("Москва столицы") == ["москва", "столицы"]  # no Russian stemmer: as written, case-folded
    assert tokenize("IL-6和p53") == ["il-6", "il", "6", "和", "p53"]


def test_nfkc_and_casefold() -> None:
    assert tokenize("ＩＬ-６") == tokenize("IL-6")  # full-width letters and digits
    assert tokenize("ﬁndings") == tokenize("findings")  # ligature
    assert tokenize("Straße") == tokenize("strasse")
    assert tokenize("x²") == ["x2"]  # NFKC turns the superscript into a digit
    assert tokenize("CO₂ levels") == tokenize("CO2 levels")


def test_long_runs_are_cut_and_query_terms_are_distinct() -> None:
    assert all(len(t) <= MAX_TERM_CHARS for t in tokenize("a" * 500 + " " + "b" * 70))
    assert query_terms("p53 P53 p53 IL-6") == ["p53", "il-6", "il", "6"]
    with pytest.raises(TypeError):
        tokenize(None)  # type: ignore[arg-type]


def test_keyword_text_uses_the_view_or_title_and_heading() -> None:
    assert keyword_text("chunk", {"view": "chunk with neighbours"}) == "chunk with neighbours"
    assert keyword_text("chunk", {"title": "T", "heading": "H"}) == "T\nH\nchunk"
    assert keyword_text("chunk", None) == "chunk"


# --------------------------------------------------------------------------- the index itself


def test_index_upsert_delete_search_and_journal(tmp_path: Path) -> None:
    index = KeywordIndex(tmp_path / "kw")
    assert index.upsert([("a", "IL-6 in sepsis"), ("b", "p53 in cancer"), ("a", "IL-6 in COVID-19")]) == 2
    assert sorted(index.ids()) == ["a", "b"] and index.count() == 2
    assert [i for i, _ in index.search("sepsis")] == []  # the later text of "a" won
    assert [i for i, _ in index.search("covid-19")] == ["a"]
    assert index.delete(["a", "zz"]) == 1 and index.ids() == ["b"]
    index.begin(["x", "y"])
    assert index.journal() == ["x", "y"]
    index.commit(["x"])
    assert KeywordIndex(tmp_path / "kw").journal() == ["y"]  # durable
    with pytest.raises(InvalidInputError):
        index.upsert([("", "text")])
    with pytest.raises(InvalidInputError):
        index.search("p53", k=0)


@pytest.mark.parametrize("damage", ["meta", "segments", "journal"])
def test_corrupt_keyword_folder_is_a_one_line_error_naming_the_repair(tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "store" / "heterag.keywords"
    store = open_store("faiss", tmp_path / "store", "heterag")
    store.upsert([Record(f"r{i}", np.eye(4, dtype=np.float32)[i % 4], f"p53 record {i}") for i in range(8)])
    store.close()
    if damage == "meta":
        (folder / "meta.json").write_text("{ not json")
    elif damage == "segments":
        for f in folder.iterdir():
            if f.suffix in (".idx", ".term", ".store"):
                f.write_bytes(b"\0garbage" * 8)
    else:
        (folder / "journal.json").write_text("[not json")
    with pytest.raises(KeywordIndexError) as info:
        s = open_store("faiss", tmp_path / "store", "heterag", repair="heterag keywords build --collection notes")
        s.keyword_query("p53")  # type: ignore[attr-defined]  # damage a reader only meets when searching
    msg = str(info.value)
    assert "\n" not in msg and "heterag keywords build --collection" in msg


# --------------------------------------------------------------------------- bad input at the index level


def _old_collection(name: str, texts: list[str]) -> Path:
    """A collection as made before keyword indexes: its store has no keyword folder. Returns that folder."""
    from heterag import Document, open_collection
    from heterag.collections.collection import collection_info

    pipe = open_collection(name)
    pipe.ingest([Document.create(t, title=f"doc {i}") for i, t in enumerate(texts)])
    pipe.close()
    folder = keyword_index_path(collection_info(name).store_path, "heterag")
    assert folder.is_dir()
    shutil.rmtree(folder)
    return folder


TEXTS = ["Serum IL-6 rises in severe COVID-19.", "The p53 protein suppresses tumours.", "Cats sleep most of the day."]


def test_collection_made_before_keyword_indexes(encoder, caplog: pytest.LogCaptureFixture) -> None:
    from heterag import open_collection

    folder = _old_collection("old", TEXTS)
    with caplog.at_level(logging.WARNING):
        pipe = open_collection("old")
    try:
        lines = [r.getMessage() for r in caplog.records if "keyword" in r.getMessage()]
        assert len(lines) == 1 and "heterag keywords build --collection old" in lines[0]
        assert not isinstance(pipe.store, KeywordSearch) and not folder.exists()  # opening builds nothing
        hits = pipe.search("tumour suppressor protein", k=2, retrieval="dense").hits
        assert hits and "p53" in hits[0].text
        assert pipe.search("p53", k=2).hits  # the default is dense here
        for mode in ("hybrid", "keyword"):
            with pytest.raises(KeywordIndexError) as info:
                pipe.search("p53", k=2, retrieval=mode)
            assert "\n" not in str(info.value) and "heterag keywords build --collection old" in str(info.value)
    finally:
        pipe.close()


def test_ids_out_of_step_are_caught_at_open(encoder) -> None:
    from heterag import Document, open_collection
    from heterag.collections.collection import collection_info

    pipe = open_collection("drift")
    pipe.ingest([Document.create(t, title=f"doc {i}") for i, t in enumerate(TEXTS)])
    pipe.close()
    info = collection_info("drift")
    bare = open_store(info.store, info.store_path, "heterag", keywords=False)  # behind heterag's back
    victim = bare.ids()[0]
    assert bare.delete(ids=[victim]) == 1
    bare.close()
    with pytest.raises(KeywordIndexError) as err:
        open_collection("drift")
    msg = str(err.value)
    assert "\n" not in msg and "heterag keywords build --collection drift" in msg and "1 extra" in msg


def test_failed_vector_write_does_not_leave_the_journal_behind(tmp_path: Path) -> None:
    store = open_store("chroma", tmp_path, "heterag")
    assert isinstance(store, KeywordedStore)
    store.upsert([Record("a", np.ones(4, np.float32), "p53")])
    with pytest.raises(InvalidInputError):
        store.upsert([Record("a", np.ones(4, np.float32), "brca1"), Record("a", np.ones(4, np.float32), "brca2")])
    assert store.keywords.journal() == [] and [r.record.id for r in store.keyword_query("p53")] == ["a"]
    store.close()


# --------------------------------------------------------------------------- crash safety (kill -9)

CHILD = textwrap.dedent('''
    import os, sys, time
    sys.path.insert(0, {repo!r})
    import heterag.stores.keyworded as kw
    from heterag import Document, open_collection

    mode, n_docs = sys.argv[1], int(sys.argv[2])
    state = {{"batches": 0}}
    vector_upsert = kw.KeywordedStore.upsert

    def noisy_upsert(self, records):  # a sleep hook: the parent kills at a known point
        vector_upsert(self, records)
        state["batches"] += 1
        print("batch", state["batches"], flush=True)
        time.sleep(0.05)

    if mode == "between":  # stop for good between the vector write and the keyword write
        index_upsert = kw.KeywordIndex.upsert

        def stuck(self, items):
            if state["batches"] >= 2:
                print("between", flush=True)
                time.sleep(600)
            return index_upsert(self, items)

        kw.KeywordIndex.upsert = stuck
    kw.KeywordedStore.upsert = noisy_upsert
    pipe = open_collection("crash", store=sys.argv[3])
    docs = [Document.create(f"Record {{i}}: gene G{{i}}-{{i % 7}} and protein p{{i}} in tissue {{i % 5}}. " * 3,
                            title=f"doc {{i}}") for i in range(n_docs)]
    report = pipe.ingest(docs, batch_documents=3)
    pipe.close()
    print("done", flush=True)
''')

N_DOCS = 60


def _run_child(script: Path, mode: str, store: str, kill_at: str | None) -> str:
    """Run the ingest child; with ``kill_at`` (a line it prints), ``kill -9`` it there. Returns its output."""
    env = dict(os.environ, HETERAG_NO_PROGRESS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(script), mode, str(N_DOCS), store], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    seen: list[str] = []
    deadline = time.monotonic() + 300
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line.rstrip())
            if kill_at is not None and line.strip() == kill_at:
                os.kill(proc.pid, signal.SIGKILL)
                break
            if time.monotonic() > deadline:
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "\n".join(seen)
    if kill_at is not None:
        assert proc.returncode == -signal.SIGKILL, out[-2000:]
    else:
        assert proc.returncode == 0 and "done" in seen, out[-2000:]
    return out


def _id_sets(store_spec: str) -> tuple[set[str], set[str], list[str]]:
    from heterag.collections.collection import collection_info

    info = collection_info("crash")
    bare = open_store(store_spec, info.store_path, "heterag", keywords=False)
    try:
        vector_ids = set(bare.ids())
    finally:
        bare.close()
    index = KeywordIndex(keyword_index_path(info.store_path, "heterag"), create=False)
    return vector_ids, set(index.ids()), index.journal()


@pytest.mark.parametrize("store_spec", ["chroma", pytest.param("faiss", marks=pytest.mark.slow)])  # ~2.5 min each
def test_kill_9_mid_ingest_then_rerun_leaves_identical_id_sets(tmp_path: Path, store_spec: str, capsys, encoder) -> None:
    script = tmp_path / "ingest_child.py"
    script.write_text(CHILD.format(repo=str(REPO)))
    counts = []
    for kill_at in ("batch 2", "batch 7"):  # two kills at different points, the second resuming the first
        _run_child(script, "plain", store_spec, kill_at)
        vec, kw, journal = _id_sets(store_spec)
        counts.append((kill_at, len(vec), len(kw), len(journal)))
    _run_child(script, "between", store_spec, "between")  # killed after a vector write, before its keyword write
    vec, kw, journal = _id_sets(store_spec)
    counts.append(("between writes", len(vec), len(kw), len(journal)))
    assert journal and vec - kw  # the crash left a difference, and the journal names it
    _run_child(script, "plain", store_spec, None)  # the re-run: opening reconciles, ingest finishes
    vec, kw, journal = _id_sets(store_spec)
    counts.append(("after re-run", len(vec), len(kw), len(journal)))
    with capsys.disabled():
        print(f"\n[{store_spec}] kill -9 id counts (point, vector ids, keyword ids, journal): {json.dumps(counts)}")
    assert vec == kw and journal == []
    assert len(vec) >= N_DOCS  # every document made it (at least one chunk each)
    from heterag import open_collection

    pipe = open_collection("crash")
    try:
        assert {h.doc_id for h in pipe.search("protein p17", k=3, retrieval="keyword").hits}
        assert pipe.store.differences() == (set(), set())  # type: ignore[attr-defined]
    finally:
        pipe.close()


def test_journal_recovery_after_a_crash_between_the_two_writes(tmp_path: Path) -> None:
    """A child process dies (kill -9) inside the keyword write of an upsert, after the vector write; the next
    open reconciles exactly the journalled ids from the vector store."""
    child = textwrap.dedent(f'''
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np
        from heterag.stores import Record, open_store
        from heterag.stores.keyword import KeywordIndex
        store = open_store("faiss", {str(tmp_path)!r}, "heterag")
        vec = lambda i: np.eye(8, dtype=np.float32)[i % 8] + 0.01 * i
        store.upsert([Record(f"old{{i}}", vec(i), f"ferritin sample {{i}}") for i in range(10)])
        store.delete(ids=["old0"])
        def die(self, items):
            os.kill(os.getpid(), signal.SIGKILL)
        KeywordIndex.upsert = die
        store.upsert([Record("old1", vec(1), "replaced by hepcidin"), Record("new", vec(11), "hepcidin only")])
    ''')
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    index = KeywordIndex(keyword_index_path(tmp_path, "heterag"), create=False)
    assert index.journal() == ["new", "old1"]
    assert "new" not in index.ids()
    store = open_store("faiss", tmp_path, "heterag")  # recovers, then checks
    try:
        assert isinstance(store, KeywordedStore) and store.keywords.journal() == []
        assert sorted(store.keywords.ids()) == sorted(store.ids()) and len(store.ids()) == 10
        assert {r.record.id for r in store.keyword_query("hepcidin")} == {"old1", "new"}
        assert [r.record.id for r in store.keyword_query("ferritin", k=20) if r.record.id == "old1"] == []
    finally:
        store.close()


# --------------------------------------------------------------------------- pgvector: full-text search in the table

def test_pgvector_terms_are_heterags_not_postgres(pg_server: str, tmp_path: Path) -> None:  # noqa: F811
    from heterag.stores.pgvector import PgVectorKeywordStore, tsquery_literal, tsvector_literal

    assert tsvector_literal("IL-6 and IL-6 p53") == "'il-6':1,4 'il':2,5 '6':3,6 'p53':7"
    assert tsvector_literal("") == "" and tsquery_literal(["o'x", "a\\b"]) == "'o''x' | 'a\\\\b'"
    store = open_store(pg_server, tmp_path, "terms")
    try:
        assert isinstance(store, PgVectorKeywordStore) and not (tmp_path / "terms.keywords").exists()  # no local file
        store.upsert([Record("a", np.ones(4, np.float32), "IL-6 rises"), Record("b", np.ones(4, np.float32), "IL 6 and IL6")])
        assert [h.record.id for h in store.keyword_query("IL-6")] == ["a", "b"]  # the compound term outranks its parts
        (tsv,) = store._db.execute(f"SELECT tsv::text FROM {store.table} WHERE id = 'a'").fetchone()  # noqa: SLF001
        assert "'il-6'" in tsv
    finally:
        store.close()


def test_pgvector_table_made_before_keyword_search(pg_server: str, tmp_path: Path) -> None:  # noqa: F811
    from heterag.stores.pgvector import PgVectorKeywordStore, PgVectorStore

    old = open_store(pg_server, tmp_path, "old", keywords=False)
    old.upsert([Record(f"r{i}", np.eye(4, dtype=np.float32)[i % 4], f"p53 record {i}", {"i": i}) for i in range(6)])
    old._db.execute(f"ALTER TABLE {old.table} DROP COLUMN tsv")  # noqa: SLF001 - the layout before keyword search
    old.close()
    dense = open_store(pg_server, tmp_path, "old")
    try:  # opens for dense search, without keyword search, and writes without the column
        assert type(dense) is PgVectorStore and not isinstance(dense, KeywordSearch)
        dense.upsert([Record("late", np.ones(4, np.float32), "brca1 written before the upgrade")])
        assert dense.query(np.eye(4, dtype=np.float32)[1], k=1)[0].record.id in {"r1", "r5"}
    finally:
        dense.close()
    upgraded = open_store(pg_server, tmp_path, "old", keywords=True)  # adds, fills and indexes the column
    try:
        assert isinstance(upgraded, PgVectorKeywordStore) and upgraded.differences() == (set(), set())
        assert sorted(upgraded.keyword_ids()) == sorted(upgraded.ids()) and len(upgraded.ids()) == 7
        assert [h.record.id for h in upgraded.keyword_query("brca1")] == ["late"]
        assert {h.record.id for h in upgraded.keyword_query("p53", k=3, where={"i": {"$gte": 3}})} == {"r3", "r4", "r5"}
        upgraded._db.execute(f"UPDATE {upgraded.table} SET tsv = NULL WHERE id = 'r2'")  # noqa: SLF001 - behind our back
    finally:
        upgraded.close()
    with pytest.raises(KeywordIndexError) as info:
        open_store(pg_server, tmp_path, "old", repair="heterag keywords build --collection old")
    assert "\n" not in str(info.value) and "`heterag keywords build --collection old`" in str(info.value)
    with open_store(pg_server, tmp_path, "old", keywords=False) as bare:  # unchecked: the repair path
        assert bare.differences() == ({"r2"}, set()) and bare.rebuild_keywords() == 7  # type: ignore[attr-defined]
    with open_store(pg_server, tmp_path, "old") as fixed:
        assert "r2" in {h.record.id for h in fixed.keyword_query("p53", k=10)}  # type: ignore[attr-defined]
