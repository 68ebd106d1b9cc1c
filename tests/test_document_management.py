"""Managing what a collection holds: listing, showing, deleting, dropping, syncing, and file identity (issue 13)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from heterag import open_collection
from heterag.cli import main
from heterag.collections import list_collections


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def kb(tmp_path: Path) -> Path:
    root = tmp_path / "kb"
    (root / "ocean").mkdir(parents=True)
    (root / "ocean" / "tides.md").write_text("# Tides\n\nTides are caused mainly by the gravitational pull of the Moon.\n")
    (root / "ocean" / "waves.txt").write_text("Wind blowing over the sea surface makes waves.\n")
    (root / "bees.txt").write_text("Honey bees communicate the direction of flowers with a waggle dance.\n")
    return root


def stored(name: str) -> dict[str, int]:
    rag = open_collection(name, create=False)
    try:
        return {d.id: d.chunks for d in rag.documents()}
    finally:
        rag.close()


def test_docs_list_show_delete(capsys, kb):
    assert run(capsys, "ingest", str(kb), "--collection", "kb")[0] == 0
    code, out, _ = run(capsys, "docs", "list", "--collection", "kb")
    assert code == 0
    rows = [line.split("\t") for line in out.strip().splitlines()]
    assert [r[0] for r in rows] == ["bees.txt", "ocean/tides.md", "ocean/waves.txt"]
    assert rows[1][1] == "Tides" and rows[1][2] == "ocean/tides.md" and rows[1][3] == "1 chunks"
    code, out, _ = run(capsys, "docs", "show", "ocean/tides.md", "--collection", "kb")
    assert code == 0 and "title: Tides" in out and "gravitational pull" in out and str(kb / "ocean" / "tides.md") in out
    code, _, err = run(capsys, "docs", "show", "nope.md", "--collection", "kb")
    assert code == 2 and "no document 'nope.md'" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(capsys, "docs", "delete", "bees.txt", "nope.md", "--collection", "kb")  # one typo: nothing goes
    assert code == 2 and "'nope.md'" in err and "nothing deleted" in err and len(err.strip().splitlines()) == 1
    assert set(stored("kb")) == {"bees.txt", "ocean/tides.md", "ocean/waves.txt"}
    code, out, err = run(capsys, "docs", "delete", "bees.txt", "--collection", "kb")
    assert code == 0 and "deleted 1 document (" in out
    assert set(stored("kb")) == {"ocean/tides.md", "ocean/waves.txt"}
    code, out, _ = run(capsys, "ask", "How do bees show where flowers are?", "--collection", "kb", "--json")
    assert all(s["doc_id"] != "bees.txt" for s in json.loads(out)["sources"])
    code, _, err = run(capsys, "docs", "list", "--collection", "missing")
    assert code == 2 and "no collection named 'missing'" in err


def test_collections_lists_counts_and_settings(capsys, kb):
    assert run(capsys, "ingest", str(kb), "--collection", "kb", "--store", "faiss", "--chunk-tokens", "32")[0] == 0
    code, out, _ = run(capsys, "collections")
    assert code == 0
    line = out.strip()
    assert line.startswith("kb: 3 documents, 3 chunks, 0 images; store faiss") and "chunk tokens 32" in line
    assert "view heterag " in line and " neighbours=1" in line and "\n" not in line
    from heterag.collections import describe_collection

    info = describe_collection("kb")
    assert info["documents"] == 3 and info["chunk_tokens"] == 32 and info["encoder_identity"]


def test_drop_asks_unless_yes(capsys, kb, monkeypatch):
    assert run(capsys, "ingest", str(kb), "--collection", "kb")[0] == 0
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    code, _, err = run(capsys, "drop", "kb")
    assert code == 1 and "kept" in err and list_collections() == ["kb"]
    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    code, out, _ = run(capsys, "drop", "kb")
    assert code == 0 and list_collections() == []
    assert run(capsys, "ingest", str(kb), "--collection", "kb")[0] == 0
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    code, _, err = run(capsys, "drop", "kb")
    assert code == 2 and "--yes" in err and list_collections() == ["kb"]
    code, out, _ = run(capsys, "drop", "kb", "--yes")
    assert code == 0 and list_collections() == []
    code, _, err = run(capsys, "drop", "kb", "--yes")
    assert code == 2 and "no collection named 'kb'" in err


def test_sync_removes_documents_whose_file_is_gone(capsys, kb):
    assert run(capsys, "ingest", str(kb), "--collection", "kb")[0] == 0
    (kb / "ocean" / "waves.txt").unlink()
    code, out, _ = run(capsys, "ingest", str(kb), "--collection", "kb")  # without --sync nothing is removed
    assert code == 0 and "ocean/waves.txt" in stored("kb")
    code, out, _ = run(capsys, "ingest", str(kb / "ocean"), "--collection", "kb", "--sync")
    assert code == 0 and "removed 1 documents whose file is gone" in out
    assert set(stored("kb")) == {"bees.txt", "ocean/tides.md"}  # files outside the synced folder are untouched
    (kb / "bees.txt").write_text("")  # emptied, not gone: its previous version stays, and the skip line says so
    code, out, err = run(capsys, "ingest", str(kb), "--collection", "kb", "--sync")
    assert code == 1 and "bees.txt" in stored("kb")
    (line,) = [x for x in err.splitlines() if x.startswith("skipped bees.txt")]
    assert "its previous version stays in the collection" in line and "heterag docs delete bees.txt --collection kb" in line


def test_a_symlink_beside_its_target_is_one_document(capsys, kb):
    """Found by a break-test: ``link.txt -> bees.txt`` in the same folder became a second document, and a
    question got the same chunk twice."""
    (kb / "link.txt").symlink_to(kb / "bees.txt")
    (kb / "ocean" / "alias.md").symlink_to(kb / "ocean" / "tides.md")
    code, out, err = run(capsys, "ingest", str(kb), "--collection", "kb")
    assert code == 0, err
    assert set(stored("kb")) == {"bees.txt", "ocean/tides.md", "ocean/waves.txt"}  # under the real file's name
    code, out, _ = run(capsys, "ask", "How do bees show where flowers are?", "--collection", "kb", "--json")
    chunk_ids = [h["chunk_id"] for h in json.loads(out)["retrieved"]]
    assert len(chunk_ids) == len(set(chunk_ids))


def test_the_same_file_through_another_root_is_the_same_document(capsys, kb, tmp_path, monkeypatch):
    assert run(capsys, "ingest", str(kb), "--collection", "kb")[0] == 0
    before = stored("kb")
    code, out, _ = run(capsys, "ingest", str(kb / "ocean"), "--collection", "kb")  # a subfolder
    assert code == 0 and "0 documents written" in out and "2 unchanged" in out
    link = tmp_path / "link"
    os.symlink(kb, link)
    code, out, _ = run(capsys, "ingest", str(link), "--collection", "kb")  # a symlink to the root
    assert code == 0 and "0 documents written" in out and "3 unchanged" in out
    code, out, _ = run(capsys, "ingest", str((kb / "bees.txt").resolve()), "--collection", "kb")  # one absolute path
    assert code == 0 and "0 documents written" in out
    monkeypatch.chdir(kb / "ocean")
    code, out, _ = run(capsys, "ingest", "../", "--collection", "kb")  # a relative spelling of the parent
    assert code == 0 and "0 documents written" in out
    assert stored("kb") == before  # no duplicates


def test_the_same_file_from_a_parent_first_then_the_root(capsys, kb):
    assert run(capsys, "ingest", str(kb / "ocean"), "--collection", "kb")[0] == 0
    code, out, _ = run(capsys, "ingest", str(kb), "--collection", "kb")  # the parent of the first root
    assert code == 0 and "1 document written" in out and "2 unchanged" in out  # only bees.txt is new
    assert set(stored("kb")) == {"tides.md", "waves.txt", "bees.txt"}


def test_a_changed_file_replaces_its_previous_version_through_any_root(capsys, kb):
    assert run(capsys, "ingest", str(kb), "--collection", "kb")[0] == 0
    (kb / "ocean" / "tides.md").write_text("# Tides\n\nSpring tides happen when the Sun and the Moon align.\n")
    code, out, _ = run(capsys, "ingest", str(kb / "ocean"), "--collection", "kb")
    assert code == 0 and "1 document written" in out
    rag = open_collection("kb", create=False)
    try:
        texts = [r.text for r in rag.document_chunks("ocean/tides.md")]
        assert texts == ["Spring tides happen when the Sun and the Moon align."]
        assert not rag.store.get(where={"doc_id": "tides.md"})
        assert len(rag.documents()) == 3
    finally:
        rag.close()


def test_an_ingest_that_takes_nothing_creates_no_collection(capsys, tmp_path):
    root = tmp_path / "odd"
    root.mkdir()
    (root / "data.xyz").write_bytes(b"\x00\x01")
    (root / "empty.txt").write_text("  \n")
    code, out, err = run(capsys, "ingest", str(root), "--collection", "odd")
    assert code == 1
    skipped = [line for line in err.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 2 and any("data.xyz" in s and "unsupported file type .xyz" in s for s in skipped)
    assert "was not created" in err and list_collections() == []


def test_two_files_with_the_same_relative_path_from_different_folders_are_two_documents(capsys, tmp_path):
    for name, text in (("a", "Alpha notes: apples grow on trees."), ("b", "Beta notes: bananas grow in bunches.")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.md").write_text(f"# Notes\n\n{text}\n")
        assert run(capsys, "ingest", str(tmp_path / name), "--collection", "kb")[0] == 0
    docs = stored("kb")
    assert set(docs) == {"notes.md", str((tmp_path / "b" / "notes.md").resolve())}
    code, out, _ = run(capsys, "ingest", str(tmp_path / "b"), "--collection", "kb")  # again: the same document
    assert "0 documents written" in out and "1 unchanged" in out and stored("kb") == docs
    (tmp_path / "a" / "notes.md").unlink()  # once the first file is gone, its id is free again
    assert run(capsys, "ingest", str(tmp_path / "a"), "--collection", "kb", "--sync")[0] == 0  # a/ is empty now
    assert set(stored("kb")) == {str((tmp_path / "b" / "notes.md").resolve())}
