"""What the command line says when something is off: links that lead nowhere, unknown collections, options
that differ from a collection's, folders without files; and which commands load no model (issue 13)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import run

from heterag.collections import collection as hc

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def notes(tmp_path: Path) -> Path:
    root = tmp_path / "notes"
    root.mkdir()
    (root / "tides.md").write_text("# Tides\n\nTides are caused mainly by the gravitational pull of the Moon.\n")
    return root


def test_links_that_lead_nowhere_are_named_as_such(capsys, notes):
    """Found by a break-test: a symlink loop ``a -> b -> a`` was "unsupported file type (no extension)"."""
    os.symlink("b", notes / "a")
    os.symlink("a", notes / "b")
    os.symlink("gone.txt", notes / "dangling.txt")
    code, _, err = run(capsys, "ingest", str(notes), "--collection", "kb")
    assert code == 1
    assert sorted(line for line in err.splitlines() if line.startswith("skipped")) == [
        "skipped a: broken symlink or symlink loop (the links form a loop)",
        "skipped b: broken symlink or symlink loop (the links form a loop)",
        "skipped dangling.txt: broken symlink or symlink loop (its target gone.txt does not exist)",
    ]


def test_an_unknown_collection_lists_the_collections_there_are(capsys, notes):
    for argv in (["ask", "hi", "--collection", "nope"], ["docs", "list", "--collection", "nope"], ["drop", "nope", "--yes"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "no collection named 'nope'" in err and "there are no collections yet" in err, err
    for name in ("kb", "papers"):
        assert run(capsys, "ingest", str(notes), "--collection", name)[0] == 0
    for argv in (["ask", "hi", "--collection", "nope"], ["docs", "show", "x", "--collection", "nope"],
                 ["drop", "nope", "--yes"]):
        code, _, err = run(capsys, *argv)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("heterag: error: no collection named 'nope'")
        assert lines[0].split("; ")[1].startswith("the collections are: kb, papers"), lines


def test_an_option_that_differs_from_the_collection_is_named_before_any_model_loads(capsys, notes, monkeypatch,
                                                                                   tiny_encoder_path):
    """Found by a break-test: ``--chunk-tokens 128`` on a 64-token collection printed two long fingerprint
    dumps; the difference was only in a parenthesis."""
    assert run(capsys, "ingest", str(notes), "--collection", "ch")[0] == 0
    before = sorted(p.name for p in (hc.collection_dir("ch") / "store").iterdir())
    real_load = hc.load_text_encoder
    monkeypatch.setattr(hc, "load_text_encoder", lambda name: pytest.fail(f"a model was loaded ({name})"))
    tail = "; use a new --collection name or `heterag drop ch` first"
    cases = [
        (["--chunk-tokens", "128"], "collection 'ch' uses --chunk-tokens 64, not 128"),
        (["--view", "naive"], "collection 'ch' uses --view heterag, not naive"),
        (["--neighbours", "3"], "collection 'ch' uses --neighbours 1, not 3"),
        (["--store", "faiss"], "collection 'ch' uses --store chroma, not faiss"),
    ]
    for command in (["ingest", str(notes)], ["ask", "What causes tides?"]):
        for options, message in cases:
            code, out, err = run(capsys, *command, "--collection", "ch", *options)
            assert code == 2 and err.strip() == f"heterag: error: {message}{tail}", err
    monkeypatch.setattr(hc, "load_text_encoder", real_load)
    code, _, err = run(capsys, "ingest", str(notes), "--collection", "ch", "--encoder", str(tiny_encoder_path))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("heterag: error: collection 'ch' uses --encoder default (model ") and tail in err
    assert f"not {tiny_encoder_path} (model " in err
    assert sorted(p.name for p in (hc.collection_dir("ch") / "store").iterdir()) == before
    code, out, _ = run(capsys, "ask", "What causes tides?", "--collection", "ch", "--json")  # nothing was lost
    assert code == 0 and json.loads(out)["sources"][0]["source"] == "tides.md"


def test_a_folder_without_files_creates_nothing(capsys, tmp_path, heterag_home):
    """Found by a break-test: an empty folder said "nothing was ingested (0 skipped)" and left an empty
    collections/ folder behind."""
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "ingest", str(empty), "--collection", "x")
    assert code == 1 and err.strip() == f"heterag: no files found in {empty}; collection 'x' was not created"
    assert not heterag_home.exists()
    code, _, err = run(capsys, "ingest", str(empty), "--collection", "x", "--view", "nosuch")  # options still checked
    assert code == 2 and "unknown view 'nosuch'" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "t.xyz").write_text("a,b")
    code, _, err = run(capsys, "ingest", str(bad), "--collection", "x")  # files, none readable
    assert code == 1 and "skipped t.xyz" in err and "was not created" in err and not heterag_home.exists()


def test_sync_of_an_emptied_folder_still_removes_its_documents(capsys, notes):
    assert run(capsys, "ingest", str(notes), "--collection", "kb")[0] == 0
    (notes / "tides.md").unlink()
    code, out, err = run(capsys, "ingest", str(notes), "--collection", "kb")  # no files, no --sync: nothing changes
    assert code == 1 and err.strip() == f"heterag: no files found in {notes}; nothing changed"
    code, out, err = run(capsys, "ingest", str(notes), "--collection", "kb", "--sync")
    assert code == 0 and "removed 1 document whose file is gone" in out, err


def test_docs_delete_loads_no_model(capsys, notes, heterag_home):
    """Found by a break-test: ``docs delete`` imported torch and loaded the encoder (8 s)."""
    assert run(capsys, "ingest", str(notes), "--collection", "kb")[0] == 0
    code = ("import sys; from heterag.cli import main; rc = main(['docs', 'delete', 'tides.md', '--collection', 'kb']); "
            "print('torch' in sys.modules, 'sentence_transformers' in sys.modules); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "HETERAG_HOME": str(heterag_home)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["kb: deleted 1 document (1 record)", "False False"]
    assert run(capsys, "docs", "list", "--collection", "kb")[0] == 0
