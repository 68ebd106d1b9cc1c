"""Small things a new user meets (bt13b finding 8): messages in the command line's terms, lock files, chunk-size
bounds, file names with control characters, plurals, the ingest help text, where a duplicate's original is."""

from __future__ import annotations

import pytest
from cli_helpers import run

from heterag.collections.collection import list_collections


def test_an_oversize_file_names_the_cli_option(capsys, tmp_path):
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "huge.txt").write_text("tide " * 300_000)  # 1.4 MiB
    (tmp_path / "big" / "small.txt").write_text("Tides follow the Moon.\n")
    code, _, err = run(capsys, "ingest", str(tmp_path / "big"), "--collection", "kb", "--store", "faiss",
                       "--max-doc-mb", "1")
    assert code == 1
    line = next(e for e in err.splitlines() if e.startswith("skipped huge.txt"))
    assert "raise --max-doc-mb" in line and "max_document_bytes" not in line


def test_office_lock_files_are_passed_over_quietly(capsys, tmp_path):
    from corpora.files import iter_path

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.txt").write_text("Tides follow the Moon.\n")
    (folder / "~$report.docx").write_bytes(b"\x0bJohn Smith" + b"\x00" * 150)  # Word's owner file
    (folder / ".~lock.report.docx#").write_text(",John Smith,host,30.11.2026 03:00,file:///home/j;")
    assert [getattr(d, "id", d) for d in iter_path(folder)] == ["notes.txt"]
    code, out, err = run(capsys, "ingest", str(folder), "--collection", "kb", "--store", "faiss")
    assert code == 0 and "skipped" not in err, err


@pytest.mark.parametrize("value", ["8193", "100000"])
def test_chunk_tokens_has_an_upper_bound_and_says_it(capsys, value):
    code, _, err = run(capsys, "ingest", ".", "--collection", "kb", "--chunk-tokens", value)
    assert code == 2 and err.count("\n") == 1 and "must be at most 8192" in err and value in err
    assert list_collections() == []


def test_the_library_refuses_an_oversize_chunk_too():
    from heterag import open_collection
    from heterag.core.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="at most 8192 tokens"):
        open_collection("kb", chunk_tokens=100_000)
    assert list_collections() == []


def test_docs_list_escapes_control_characters_and_says_1_chunk(capsys, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "new\nline.txt").write_text("Tides follow the Moon.\n")
    (folder / "tab\tname.md").write_text("# Seals\n\nSeals haul out at low tide.\n")
    code, out, err = run(capsys, "ingest", str(folder), "--collection", "kb", "--store", "faiss")
    assert code == 0, err
    assert "collection now holds 2 chunks" in out
    code, out, _ = run(capsys, "docs", "list", "--collection", "kb")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert all(len(line.split("\t")) == 4 and line.endswith("\t1 chunk") for line in lines), lines
    assert {line.split("\t")[0] for line in lines} == {"new\\nline.txt", "tab\\tname.md"}


def test_one_chunk_is_singular(capsys, tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.txt").write_text("Tides follow the Moon.\n")
    code, out, _ = run(capsys, "ingest", str(tmp_path / "one"), "--collection", "kb", "--store", "faiss")
    assert code == 0 and out.rstrip().endswith("collection now holds 1 chunk"), out
    code, out, _ = run(capsys, "collections")
    assert "1 document, 1 chunk, 0 images" in out


def test_ingest_help_names_the_document_formats(capsys):
    code, out, _ = run(capsys, "--help")
    ingest = " ".join(out[out.index("    ingest"):].split())[:300]  # the ingest line of the command list
    assert code == 0
    for fmt in ("PDF", "HTML", "DOCX", "DICOM"):
        assert fmt in ingest, ingest
    code, out, _ = run(capsys, "ingest", "-h")
    assert code == 0 and all(fmt in " ".join(out.split()) for fmt in ("PDF", "HTML", "DOCX", "DICOM")), out


def test_a_duplicates_original_outside_this_root_is_named_by_its_absolute_path(capsys, tmp_path):
    for sub in ("A", "B"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / ("p.txt" if sub == "A" else "q.txt")).write_text("Kelp forests grow in cold water.\n")
    assert run(capsys, "ingest", str(tmp_path / "A"), "--collection", "kb", "--store", "faiss")[0] == 0
    code, _, err = run(capsys, "ingest", str(tmp_path / "B"), "--collection", "kb")
    original = (tmp_path / "A" / "p.txt").resolve().as_posix()
    assert code == 0 and f"note: q.txt: same content as {original}: not added again" in err, err
