"""The `heterag` command line: ingest, ask, eval beir, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from heterag.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def notes(tmp_path: Path) -> Path:
    root = tmp_path / "notes"
    root.mkdir()
    (root / "tides.md").write_text(
        "# Tides\n\n## Causes\n\nTides are caused mainly by the gravitational pull of the Moon.\n\n"
        "## Spring tides\n\nSpring tides happen when the Sun and Moon align, giving the largest range.\n"
    )
    (root / "bees.txt").write_text("Honey bees communicate the direction of flowers with a waggle dance.\n")
    return root


def write_beir(root: Path, with_qrels: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    docs = {
        "d1": ("Tides", "Tides are caused by the gravitational pull of the Moon and the Sun."),
        "d2": ("Bees", "Honey bees perform a waggle dance to show where flowers are."),
        "d3": ("Bread", "Sourdough rises because of wild yeast in the starter."),
        "d4": ("Volcanoes", "Magma rising through the crust makes volcanoes erupt."),
    }
    with open(root / "corpus.jsonl", "w") as f:
        for i, (t, x) in docs.items():
            f.write(json.dumps({"_id": i, "title": t, "text": x}) + "\n")
    queries = {"q1": "what causes tides", "q2": "how do bees show flower locations", "q3": "why does sourdough rise"}
    with open(root / "queries.jsonl", "w") as f:
        for i, x in queries.items():
            f.write(json.dumps({"_id": i, "text": x}) + "\n")
    if with_qrels:
        (root / "qrels").mkdir(exist_ok=True)
        (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td3\t1\n")
    return root


def test_ingest_and_ask_with_sources(capsys, notes):
    code, out, err = run(capsys, "ingest", str(notes), "--collection", "notes")
    assert code == 0, err
    assert "2 documents written" in out
    code, out, _ = run(capsys, "ask", "What happens when the Sun and Moon align?", "--collection", "notes", "-k", "2")
    assert code == 0
    assert "Spring tides" in out and "Sources:" in out and "[1]" in out
    code, out, _ = run(capsys, "ask", "How do bees share where flowers are?", "--collection", "notes", "--json")
    payload = json.loads(out)
    assert "waggle dance" in payload["answer"] and payload["sources"][0]["doc_id"] == "bees.txt"
    # ingesting again writes nothing
    code, out, _ = run(capsys, "ingest", str(notes), "--collection", "notes")
    assert code == 0 and "0 documents written" in out and "2 unchanged" in out


def test_bad_files_are_reported_and_the_rest_ingested(capsys, notes):
    assert run(capsys, "ingest", str(notes), "--collection", "mixed")[0] == 0
    from heterag import open_collection

    rag = open_collection("mixed")
    before = sorted(r.id for r in rag.store.get())
    rag.close()
    (notes / "empty.txt").write_text("   \n")
    (notes / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with open(notes / "huge.txt", "wb") as f:  # 50 MB, sparse: never read
        f.truncate(50 * 2**20)
    (notes / "new.md").write_text("# Bread\n\nSourdough rises because of wild yeast.\n")
    code, out, err = run(capsys, "ingest", str(notes), "--collection", "mixed")
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("skipped")]
    assert len(lines) == 3
    assert any("empty.txt" in line and "empty" in line for line in lines)
    assert any("latin1.txt" in line and "UTF-8" in line for line in lines)
    assert any("huge.txt" in line and "MiB" in line for line in lines)
    assert "1 document written" in out and "2 unchanged" in out
    rag = open_collection("mixed")
    after = sorted(r.id for r in rag.store.get())
    assert set(before) < set(after)  # everything that was there is still there, plus the good new file
    assert {r.metadata["doc_id"] for r in rag.store.get()} == {"bees.txt", "tides.md", "new.md"}
    rag.close()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["ingest", "{notes}", "--collection", "x1", "--store", "mongo"], "unknown store 'mongo'; choose one of: chroma, chroma-http://HOST:PORT, faiss, lancedb"),
        (["ingest", "{notes}", "--collection", "x2", "--view", "fancy"], "unknown view 'fancy'"),
        (["ask", "anything", "--collection", "missing"], "no collection named 'missing'"),
        (["ask", "   ", "--collection", "x3"], "error"),
        (["ingest", "/no/such/path", "--collection", "x4"], "/no/such/path"),
        (["ask", "q", "--collection", "x5", "--generator", "oracle"], "unknown generator"),
        (["eval", "beir", "{notes}", "--store", "mongo"], "unknown store 'mongo'"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(capsys, notes, argv, message):
    if argv[0] == "ask" and argv[2] == "x3":
        assert run(capsys, "ingest", str(notes), "--collection", "x3")[0] == 0
    if argv[-1] == "oracle":
        assert run(capsys, "ingest", str(notes), "--collection", "x5")[0] == 0
    code, out, err = run(capsys, *[a.replace("{notes}", str(notes)) for a in argv])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("heterag: error:") and message in lines[0]


def test_other_encoder_or_view_is_refused_and_data_survives(capsys, notes, tiny_encoder_path):
    assert run(capsys, "ingest", str(notes), "--collection", "keep")[0] == 0
    code, _, err = run(capsys, "ingest", str(notes), "--collection", "keep", "--encoder", str(tiny_encoder_path))
    assert code == 2 and "collection 'keep' uses --encoder default" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "ask", "tides", "--collection", "keep", "--view", "naive")
    assert code == 2 and "collection 'keep' uses --view heterag, not naive" in err
    code, out, _ = run(capsys, "ask", "What causes tides?", "--collection", "keep", "--json")
    assert code == 0 and json.loads(out)["sources"]


def test_eval_beir_json(capsys, tmp_path):
    beir = write_beir(tmp_path / "mini")
    code, out, err = run(capsys, "eval", "beir", str(beir), "--views", "naive", "--json")
    assert code == 0, err
    res = json.loads(out)
    for key in ("ndcg@1", "ndcg@10", "recall@100", "mrr@10", "units", "encode_seconds"):
        assert key in res
    assert res["units"] == 4 and res["recall@100"] == 1.0 and res["ndcg@1"] == 1.0


def test_eval_beir_several_views(capsys, tmp_path):
    beir = write_beir(tmp_path / "mini")
    code, out, _ = run(capsys, "eval", "beir", str(beir), "--views", "naive,late,heterag", "--json")
    res = json.loads(out)
    assert code == 0 and set(res) == {"naive", "late", "heterag"}
    assert all(r["mrr@10"] > 0.5 for r in res.values())


def test_eval_beir_without_qrels_is_a_clear_error(capsys, tmp_path):
    beir = write_beir(tmp_path / "noqrels", with_qrels=False)
    code, _, err = run(capsys, "eval", "beir", str(beir), "--views", "naive")
    assert code == 2 and "qrels" in err and len(err.strip().splitlines()) == 1


def test_eval_rejects_unknown_view_before_work(capsys, tmp_path):
    code, _, err = run(capsys, "eval", "beir", str(tmp_path), "--views", "naive,bogus")
    assert code == 2 and "unknown view 'bogus'" in err


def test_ask_through_an_openai_compatible_endpoint(capsys, notes, server):
    """--generator openai streams the endpoint's answer and lists the sources it cited."""
    assert run(capsys, "ingest", str(notes), "--collection", "remote")[0] == 0
    server.config.api_key = None  # loopback endpoints need no key
    server.config.reply = "The Moon's gravity causes tides [1]."
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    code, out, err = run(capsys, "ask", "What causes tides?", "--collection", "remote",
                         "--generator", "openai", "--model", "local-model", "--base-url", url)
    assert code == 0, err
    assert out.startswith("The Moon's gravity causes tides [1].")
    assert "Sources:" in out and "[1] tides.md" in out
    body = server.config.requests[-1]["body"]
    assert body["model"] == "local-model" and body["stream"] is True
    assert "Tides are caused mainly by the gravitational pull of the Moon" in body["messages"][1]["content"]


def test_openai_generator_needs_a_model(capsys, notes):
    assert run(capsys, "ingest", str(notes), "--collection", "nomodel")[0] == 0
    code, _, err = run(capsys, "ask", "q?", "--collection", "nomodel", "--generator", "openai")
    assert code == 2 and "--model" in err
