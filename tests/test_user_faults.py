"""Faults a new user met in their first hour (issue 13, section 4): each reproduction, fixed as a kind."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run

from heterag import Document, chunk_document, open_collection
from heterag.collections.collection import list_collections
from heterag.core.errors import FingerprintMismatchError, HeteragError

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture()
def notes(tmp_path: Path) -> Path:
    root = tmp_path / "notes"
    root.mkdir()
    (root / "tides.md").write_text("# Tides\n\nTides are caused mainly by the gravitational pull of the Moon.\n")
    (root / "bees.txt").write_text("Honey bees communicate the direction of flowers with a waggle dance.\n")
    return root


# ---- chunks are bounded in characters, whatever the tokenizer makes of the text ---------------------------
def test_a_whitespace_free_run_is_cut_into_chunks_bounded_in_characters(encoder):
    rng = random.Random(0)
    dna = "".join(rng.choice("ACGT") for _ in range(50_000))  # one unknown token to the tokenizer
    doc = Document.create(f"The sequence follows. {dna} End.")
    from heterag.ingest.chunking import max_chunk_chars

    cd = chunk_document(doc, encoder.tokenize, 64)
    limit = max_chunk_chars(64)
    assert max(len(c.text) for c in cd.chunks) <= limit, "a chunk spans more characters than its token budget allows"
    assert len(cd.chunks) >= 50_000 // limit
    covered = sum(len(c.text) for c in cd.chunks)
    assert covered >= len(dna)  # nothing of the run is dropped
    # token counts (context_tokens, chunk budgets) count such a run by its length, not as one token
    assert encoder.count_tokens(dna) >= len(dna) // 32
    assert all(1 <= c.n_tokens <= 64 for c in cd.chunks)


def test_context_tokens_count_a_long_run_by_its_length(capsys, tmp_path):
    root = tmp_path / "seq"
    root.mkdir()
    rng = random.Random(1)
    (root / "gene.txt").write_text("Gene BRCA1 sequence: " + "".join(rng.choice("ACGT") for _ in range(20_000)))
    assert run(capsys, "ingest", str(root), "--collection", "genes")[0] == 0
    code, out, _ = run(capsys, "ask", "What is the BRCA1 sequence?", "--collection", "genes", "-k", "3", "--json")
    import json

    from heterag.ingest.chunking import max_chunk_chars

    payload = json.loads(out)
    assert code == 0 and all(len(h["text"]) <= max_chunk_chars(64) for h in payload["retrieved"])
    assert payload["context_tokens"] >= sum(len(h["text"]) for h in payload["retrieved"]) // 32


# ---- creation options are checked before anything is written ---------------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["ingest", "{notes}", "--collection", "c", "--chunk-tokens", "-5"], "argument --chunk-tokens: must be at least 8"),
        (["ingest", "{notes}", "--collection", "c", "--chunk-tokens", "0"], "argument --chunk-tokens: must be at least 8"),
        (["ingest", "{notes}", "--collection", "c", "--chunk-tokens", "many"], "whole number"),
        (["ingest", "{notes}", "--collection", "c", "--image-encoder", "bogus:xyz"], "unknown image encoder 'bogus'"),
        (["ingest", "{notes}", "--collection", "c", "--image-encoder", "default:/no/such/dir"], "no default_image_encoder"),
        (["ingest", "{notes}", "--collection", "c", "--view", "nosuch"], "unknown view 'nosuch'"),
        (["ingest", "{notes}", "--collection", "c", "--neighbours", "-1"], "argument --neighbours: must be at least 0"),
        (["ingest", "{notes}", "--collection", "c", "--max-doc-mb", "0"], "argument --max-doc-mb: must be above 0"),
        (["ingest", "{notes}", "--collection", "c", "--store", "mongo"], "unknown store 'mongo'"),
        (["ingest", "{notes}", "--collection", "c", "--encoder", "/no/such/model/dir"], "could not load text encoder"),
        (["ingest", "{notes}", "--collection", "c", "--adapter", "/no/such/adapter"], "adapter"),
        (["ask", "q", "--top-k", "0"], "--top-k: must be at least 1"),
        (["ask", "q", "--temperature", "-1"], "argument --temperature: must be at least 0"),
        (["ask", "q", "--fusion", "bogus"], "fusion method"),
        (["ask", "q", "--generator", "oracle"], "unknown generator 'oracle'"),
        (["ask", "q", "--chunk-tokens", "3"], "argument --chunk-tokens: must be at least 8"),
        (["ask", "q", "--view", "nosuch"], "unknown view 'nosuch'"),
        (["eval", "beir", "{notes}", "--chunk-tokens", "0"], "argument --chunk-tokens: must be at least 8"),
        (["eval", "images", "{notes}", "--limit", "0"], "argument --limit: must be at least 1"),
    ],
)
def test_bad_options_exit_2_with_one_line_and_create_nothing(capsys, notes, heterag_home, argv, message):
    code, out, err = run(capsys, *[a.replace("{notes}", str(notes)) for a in argv])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("heterag: error:") and message in lines[0]
    assert list_collections() == []
    assert not (heterag_home / "collections").exists() or not any((heterag_home / "collections").iterdir())


def test_library_refuses_bad_settings_before_writing(heterag_home):
    for kwargs in ({"chunk_tokens": 0}, {"chunk_tokens": -5}, {"image_encoder": "bogus:xyz"}, {"view": "nosuch"},
                   {"view_options": {"neighbours": -1}}, {"fusion": "bogus"}):
        with pytest.raises(HeteragError):
            open_collection("never", **kwargs)
    assert list_collections() == [] and not (heterag_home / "collections" / "never").exists()
    from heterag.ingest.views import make_view
    from heterag.pipeline.pipeline import Pipeline
    from heterag.stores import open_store

    store = open_store("faiss", heterag_home / "raw", collection="heterag")
    try:
        with pytest.raises(HeteragError, match="at least 8 tokens"):
            Pipeline(store, object(), make_view("naive"), chunk_tokens=0)  # not silently 64
        assert store.fingerprint() is None
    finally:
        store.close()


# ---- a local encoder's identity is its weights and tokenizer, not its folder name ---------------------------
@pytest.fixture()
def two_models(tmp_path, tiny_encoder_path) -> tuple[Path, Path]:
    """Two different models, both in folders named ``model``."""
    from safetensors.numpy import load_file, save_file

    a, b = tmp_path / "a" / "model", tmp_path / "b" / "model"
    shutil.copytree(tiny_encoder_path, a)
    shutil.copytree(tiny_encoder_path, b)
    (weights,) = b.glob("**/model.safetensors")
    tensors = load_file(str(weights))
    name = next(k for k in tensors if k.endswith("word_embeddings.weight"))
    tensors[name] = (tensors[name] + np.random.default_rng(0).normal(0, 0.5, tensors[name].shape)).astype(tensors[name].dtype)
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return a, b


def test_another_model_in_a_folder_of_the_same_name_is_refused(two_models):
    a, b = two_models
    rag = open_collection("notes", encoder=str(a), store="faiss", view="naive")
    rag.ingest([Document.create("Tides follow the Moon.", id="t")])
    rag.close()
    assert "@sha256-" in rag.fingerprint.model
    with pytest.raises(FingerprintMismatchError, match="model"):
        open_collection("notes", encoder=str(b))
    again = open_collection("notes", encoder=str(a))  # the same model is accepted, from any spelling of its path
    assert again.count() == 1
    again.close()
    copy = a.parent.parent / "elsewhere" / "renamed"
    shutil.copytree(a, copy)
    from heterag.encoding.text_encoder import TextEncoder

    assert TextEncoder(str(copy)).identity.split("@")[1] == rag.fingerprint.model.split("@")[1]  # identity = content


def test_a_collection_made_before_weight_hashes_keeps_opening_with_its_own_encoder_only(two_models, heterag_home):
    """Legacy rule: a ``local:NAME`` fingerprint opens only with the encoder folder its collection.json records."""
    import json

    from heterag.collections.collection import collection_dir, load_text_encoder
    from heterag.ingest.views import make_view
    from heterag.pipeline.pipeline import Pipeline
    from heterag.stores import open_store

    a, b = two_models
    folder = collection_dir("old")
    store = open_store("faiss", folder / "store", collection="heterag")
    old = Pipeline(store, load_text_encoder(str(a)), make_view("naive"), encoder_identity="local:model")  # as before
    old.ingest([Document.create("Tides follow the Moon.", id="t")])
    old.close()
    (folder / "collection.json").write_text(json.dumps({"store": "faiss", "encoder": str(a), "image_encoder": "default"}))
    rag = open_collection("old")
    assert rag.fingerprint.model == "local:model" and rag.retrieve("tides", k=1)[0].doc_id == "t"
    rag.close()
    with pytest.raises(FingerprintMismatchError):
        open_collection("old", encoder=str(b))


# ---- images without text are answers, with their path ------------------------------------------------------
@pytest.fixture()
def pictures(tmp_path) -> Path:
    from PIL import Image

    root = tmp_path / "pics"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("harbour.png", "forest.png"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / name)
    (root / "note.md").write_text("# Shopping\n\nBuy bread and milk on Friday.\n")
    return root


def test_an_image_only_hit_is_a_source_with_its_path_and_the_answer_says_so(capsys, pictures):
    assert run(capsys, "ingest", str(pictures), "--collection", "pics")[0] == 0
    code, out, _ = run(capsys, "ask", "--image", str(pictures / "harbour.png"), "--collection", "pics")
    assert code == 0, out
    answer, sources = out.split("Sources:")
    assert "harbour.png (score 1.000) [1]" in answer and "without text" in answer
    first = sources.strip().splitlines()[0]  # the source names the user's file, not the collection's stored copy
    assert first == "[1] harbour.png (score 1.000): (image without text)"
    # with a question as well, the image is cited first, not an unrelated note
    code, out, _ = run(capsys, "ask", "what is this picture?", "--image", str(pictures / "harbour.png"),
                       "--collection", "pics", "--json")
    import json

    payload = json.loads(out)
    assert payload["sources"][0]["doc_id"] == "harbour.png" and Path(payload["sources"][0]["image"]).is_file()
    assert "harbour.png" in payload["answer"]


# ---- training never writes into the installed package ----------------------------------------------------
def test_train_image_encoder_writes_under_the_heterag_home_and_never_into_the_package(capsys, heterag_home):
    import argparse

    from heterag.cli import train_image_encoder as training
    from heterag.encoding.image_encoders import WEIGHTS_DIR

    assert training.TrainConfig().out_dir == heterag_home / "image_encoders" / "default"
    parser = argparse.ArgumentParser()
    training.add_train_arguments(parser)
    assert training.config_from_args(parser.parse_args([])).out_dir == heterag_home / "image_encoders" / "default"
    before = {p.name: p.stat().st_mtime_ns for p in WEIGHTS_DIR.iterdir()}
    code, _, err = run(capsys, "train-image-encoder", "--out", str(WEIGHTS_DIR), "--synthetic", "2", "--procedural", "0",
                       "--epochs", "1", "--validation-scenes", "0")
    assert code == 2 and "never writes into its installed package" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.stat().st_mtime_ns for p in WEIGHTS_DIR.iterdir()} == before


# ---- a closed stdout ends the command quietly ------------------------------------------------------------
def test_output_into_a_closed_pipe_exits_quietly(tmp_path):
    script = textwrap.dedent("""
        import sys
        import heterag.cli.commands as cli
        def flood(args):
            for i in range(200000):
                print("line", i, "of a long answer")
            return 0
        cli.COMMANDS["collections"] = flood
        sys.exit(cli.main(["collections"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout.read(20)  # like `| head -c 20`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert proc.returncode == 141


# ---- the README says what the default text encoder covers -----------------------------------------------
def test_readme_says_the_default_text_encoder_is_english_only_and_how_to_choose_another():
    text = README.read_text(encoding="utf-8")
    assert "English-only" in text
    assert "paraphrase-multilingual-MiniLM-L12-v2" in text and "--encoder" in text


# ---- commands that need no model do not import torch -------------------------------------------------------
@pytest.mark.parametrize("argv", [["--help"], ["ingest", "--help"], ["collections"], ["docs", "list", "--collection", "kb"],
                                  ["docs", "show", "bees.txt", "--collection", "kb"], ["drop", "nosuch", "--yes"]])
def test_commands_that_need_no_model_do_not_import_torch(capsys, notes, heterag_home, argv):
    assert run(capsys, "ingest", str(notes), "--collection", "kb", "--store", "faiss")[0] == 0
    script = textwrap.dedent(f"""
        import sys
        from heterag.cli import main
        try:
            code = main({argv!r})
        except SystemExit as exc:
            code = exc.code
        print("TORCH", "torch" in sys.modules, "CODE", code, file=sys.stderr)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1], env={**__import__("os").environ, "HETERAG_HOME": str(heterag_home)})
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("TORCH False"), proc.stderr
    assert last.endswith(("CODE 0", "CODE 2")), proc.stderr
