"""Managing what a collection holds: listing, showing, deleting, dropping, syncing, and file identity (issue 13)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from cli_helpers import run

from heterag import open_collection
from heterag.collections.collection import list_collections


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
    assert rows[1][1] == "Tides" and rows[1][2] == "ocean/tides.md" and rows[1][3] == "1 chunk"
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
    from heterag.collections.collection import describe_collection

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
    assert code == 0 and "removed 1 document whose file is gone" in out
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


def notes(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("note:")]


def test_a_byte_identical_copy_in_another_folder_is_not_added_again(capsys, tmp_path):
    """Found by a break-test: ``docs/chest-ct.dcm`` and ``docs2/chest-ct.dcm`` (the same bytes) were two
    documents and filled two of the top-k places with the same item."""
    from format_samples import write_dicom

    root = tmp_path / "root"
    for sub in ("docs", "docs2"):
        (root / sub).mkdir(parents=True)
    write_dicom(root / "docs" / "chest-ct.dcm")
    (root / "docs" / "tides.md").write_text("# Tides\n\nTides are caused mainly by the gravitational pull of the Moon.\n")
    shutil.copy(root / "docs" / "chest-ct.dcm", root / "docs2" / "chest-ct.dcm")
    shutil.copy(root / "docs" / "tides.md", root / "docs2" / "moon-notes.md")  # another name, the same bytes
    (root / "docs2" / "seals.txt").write_text("Seals haul out on sandbanks at low tide.\n")
    assert run(capsys, "ingest", str(root / "docs"), "--collection", "kb")[0] == 0
    code, out, err = run(capsys, "ingest", str(root), "--collection", "kb")
    assert code == 0, err  # a note, not a failure
    # the stored twins are named by their files under this root (stored as chest-ct.dcm, from docs/)
    assert sorted(notes(err)) == ["note: docs2/chest-ct.dcm: same content as docs/chest-ct.dcm: not added again",
                                  "note: docs2/moon-notes.md: same content as docs/tides.md: not added again"]
    assert "1 document written" in out and "2 duplicate files not added" in out
    assert set(stored("kb")) == {"chest-ct.dcm", "tides.md", "docs2/seals.txt"}
    code, out, err = run(capsys, "ingest", str(root), "--collection", "kb")  # again: the same notes, nothing changes
    assert code == 0 and len(notes(err)) == 2 and "0 documents written" in out
    code, out, _ = run(capsys, "ask", "Which lung finding is consistent with pneumonia?", "--collection", "kb", "--json")
    assert [h["doc_id"] for h in json.loads(out)["retrieved"]].count("chest-ct.dcm") == 1
    # the original goes away: with --sync it is removed first, so its copy comes in within the same run
    (root / "docs" / "chest-ct.dcm").unlink()
    code, out, err = run(capsys, "ingest", str(root), "--collection", "kb", "--sync")
    assert code == 0, err
    assert notes(err) == ["note: docs2/moon-notes.md: same content as docs/tides.md: not added again"]
    assert "removed 1 document whose file is gone" in out
    assert set(stored("kb")) == {"docs2/chest-ct.dcm", "tides.md", "docs2/seals.txt"}


def test_two_identical_new_files_in_one_run_are_stored_once(capsys, tmp_path):
    root = tmp_path / "notes"
    root.mkdir()
    for name in ("a.txt", "b.txt"):
        (root / name).write_text("Kelp forests grow in cold, nutrient-rich water.\n")
    code, out, err = run(capsys, "ingest", str(root), "--collection", "kb")
    assert code == 0 and notes(err) == ["note: b.txt: same content as a.txt: not added again"]
    assert set(stored("kb")) == {"a.txt"}


def test_a_copy_of_a_stored_file_that_is_gone_takes_its_place(capsys, tmp_path):
    """The original moved away without a --sync: the copy is not blocked by a document whose file is gone,
    and the stale twin does not stay behind as a second copy."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "kelp.txt").write_text("Kelp forests grow in cold, nutrient-rich water.\n")
    assert run(capsys, "ingest", str(tmp_path / "a"), "--collection", "kb")[0] == 0
    shutil.move(tmp_path / "a" / "kelp.txt", tmp_path / "b" / "kelp-forests.txt")
    code, out, err = run(capsys, "ingest", str(tmp_path / "b"), "--collection", "kb")
    assert code == 0, err
    gone = (tmp_path / "a" / "kelp.txt").resolve().as_posix()  # outside this ingest root: its absolute path
    assert notes(err) == [f"note: kelp-forests.txt: same content as {gone}, whose file is gone: stored in its place"]
    assert set(stored("kb")) == {"kelp-forests.txt"}


def test_a_file_changed_into_a_copy_of_another_loses_its_old_version(capsys, tmp_path):
    root = tmp_path / "notes"
    root.mkdir()
    (root / "x.txt").write_text("Kelp forests grow in cold, nutrient-rich water.\n")
    (root / "y.txt").write_text("Seagrass meadows store carbon in their sediments.\n")
    assert run(capsys, "ingest", str(root), "--collection", "kb")[0] == 0
    shutil.copy(root / "x.txt", root / "y.txt")
    code, out, err = run(capsys, "ingest", str(root), "--collection", "kb")
    assert code == 0 and notes(err) == ["note: y.txt: same content as x.txt: not added again"]
    assert set(stored("kb")) == {"x.txt"}  # the seagrass text y.txt no longer holds is not served
