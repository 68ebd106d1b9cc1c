"""``heterag migrate``: a collection (text and image items) moves between stores, resumes after a crash,
answers exactly as before, and never overwrites a different collection unless told to."""

from __future__ import annotations

from pathlib import Path

import pytest
from store_servers import chroma_server, pg_server  # noqa: F401 - session fixtures

from corpora.synthetic_scenes import generate_scenes
from heterag import Document, collection_info, content_fingerprint, open_collection
from heterag.cli import main
from heterag.collections.migrate import migrate_collection
from heterag.core.errors import InvalidInputError
from heterag.stores import open_store, parse_store_url

DOCS = {
    "bees": "Honey bees communicate the direction of flowers with the waggle dance inside the hive.",
    "bread": "Sourdough bread rises because wild yeast and lactic acid bacteria ferment the dough.",
    "tides": "Ocean tides are caused mainly by the gravitational pull of the Moon on the oceans.",
    "volcano": "A volcano erupts when pressure from gases and molten rock becomes too great.",
}
QUESTIONS = ["How do bees tell where flowers are?", "Why does sourdough rise?", "What causes tides?"]


@pytest.fixture(scope="module")
def scenes():
    return list(generate_scenes(3, seed=11, size=64))


def _snapshot(name: str, scenes) -> tuple[list, list, object, int]:
    rag = open_collection(name)
    try:
        text = [[(h.doc_id, h.chunk_id, round(h.score, 4)) for h in rag.retrieve(q, k=3)] for q in QUESTIONS]
        image = [(h.doc_id, round(h.score, 4), Path(h.image).name if h.image else None) for h in rag.retrieve(image=scenes[1].image, k=2)]
        return text, image, content_fingerprint(rag), rag.store.count()
    finally:
        rag.close()


def test_migrate_resumes_after_a_crash_and_answers_as_before(pg_server: str, encoder, scenes, heterag_home: Path,  # noqa: F811
                                                              monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # every copy here takes pgvector's bulk path (large migrations do; small ones write through the index, as every
    # upsert of the conformance suite does): the crash comes inside a bulk load
    monkeypatch.setattr("heterag.collections.migrate.BULK_MIN", 1)
    rag = open_collection("moving")
    rag.ingest([Document.create(t, title=k.title(), id=k) for k, t in DOCS.items()] + [s.to_document() for s in scenes])
    rag.close()
    before = _snapshot("moving", scenes)
    assert before[1][0][0] == scenes[1].id and before[3] >= len(DOCS)

    with pytest.raises(RuntimeError, match="simulated crash"), caplog.at_level("INFO", logger="heterag.stores.pgvector"):
        migrate_collection("moving", "chroma", pg_server, batch=2, _fail_after=1)
    assert "indexes built over 2 rows" in caplog.text  # the copy so far, indexed before the crash propagated
    assert collection_info("moving").store == "chroma"  # not switched
    caplog.clear()
    with caplog.at_level("INFO", logger="heterag.stores.pgvector"):
        report = migrate_collection("moving", "chroma", pg_server, batch=2)
    assert caplog.text.count("indexes built over") == 2  # text and image parts, each through a bulk load
    assert report.resumed == 2 and report.copied == before[3] + len(scenes) - 2
    assert report.records == {"text records": before[3], "image records": len(scenes)} and report.sample_queries >= 1
    assert collection_info("moving").store == pg_server
    info = collection_info("moving")
    for part in ("heterag", "heterag_images"):  # the bulk loads built their indexes
        with open_store(info.store, info.store_path, part) as copy:
            assert copy._hnsw_index() is not None and copy.index_settings().startswith("HNSW m=16")
    after = _snapshot("moving", scenes)
    assert after[0] == before[0] and after[1] == before[1] and after[2] == before[2] and after[3] == before[3]
    with open_store("chroma", heterag_home / "collections" / "moving" / "store", "heterag") as old:
        assert old.count() == before[3]  # the source is left as it was
    with pytest.raises(InvalidInputError, match="lives in"):
        migrate_collection("moving", "chroma", "faiss")

    report = migrate_collection("moving", pg_server, "faiss")  # and on to an embedded store
    assert report.copied == before[3] + len(scenes) and report.resumed == 0
    assert collection_info("moving").store == "faiss" and _snapshot("moving", scenes)[:3] == before[:3]


def test_migrate_refuses_a_different_collection_unless_overwrite(chroma_server: str, encoder, tmp_path: Path, capsys) -> None:  # noqa: F811
    elsewhere = open_collection("clash", store=chroma_server, home=tmp_path / "other-home", view="naive")
    elsewhere.ingest([Document.create("Another collection altogether, made elsewhere.", id="other")])
    theirs = (elsewhere.store.count(), elsewhere.store.fingerprint())
    elsewhere.close()
    rag = open_collection("clash")
    rag.ingest([Document.create(t, title=k.title(), id=k) for k, t in DOCS.items()])
    mine = (rag.store.count(), rag.store.fingerprint())
    rag.close()

    code = main(["migrate", "--collection", "clash", "--from", "chroma", "--to", chroma_server])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--overwrite" in err and "different collection" in err
    assert collection_info("clash").store == "chroma"
    other = open_collection("clash", home=tmp_path / "other-home")  # untouched
    assert (other.store.count(), other.store.fingerprint()) == theirs
    other.close()

    code = main(["migrate", "--collection", "clash", "--from", "chroma", "--to", chroma_server, "--overwrite"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "migrated clash" in out and parse_store_url(chroma_server).display() in out
    moved = open_collection("clash")
    assert (moved.store.count(), moved.store.fingerprint()) == mine and mine[1] != theirs[1]
    assert moved.retrieve(QUESTIONS[0], k=1)[0].doc_id == "bees"
    moved.close()


def test_migrate_overwrite_into_an_embedded_folder(encoder, heterag_home: Path) -> None:
    import numpy as np

    from heterag.stores import Fingerprint, Record

    rag = open_collection("folders", store="faiss")
    rag.ingest([Document.create(t, title=k.title(), id=k) for k, t in DOCS.items()])
    n = rag.store.count()
    rag.close()
    stale = heterag_home / "collections" / "folders" / "store-chroma"  # leftovers of something else
    with open_store("chroma", stale, "heterag") as junk:
        junk.set_fingerprint(Fingerprint(model="other", dim=3, view="naive"))
        junk.upsert([Record("junk", np.ones(3, dtype=np.float32), "junk")])
    with pytest.raises(InvalidInputError, match="--overwrite"):
        migrate_collection("folders", "faiss", "chroma")
    with open_store("chroma", stale, "heterag") as junk:
        assert junk.count() == 1  # refused before writing anything
    report = migrate_collection("folders", "faiss", "chroma", overwrite=True)
    assert report.records["text records"] == n and collection_info("folders").store_dir == "store-chroma"
    moved = open_collection("folders")
    assert moved.store.count() == n and moved.retrieve(QUESTIONS[1], k=1)[0].doc_id == "bread"
    moved.close()
