"""`heterag eval beir --retrieval`: one row per view x retrieval mode from one ingest per view (issue #21)."""

from __future__ import annotations

import json
from pathlib import Path

from heterag.cli import main

DOCS = {
    "target": ("Registry entry", "ZQX-7731 is listed in the 2019 registry of catalogued compounds."),
    "d1": ("Protein regulation", "Proteins regulate gene expression, cell growth and the signalling pathways of the cell."),
    "d2": ("Regulatory proteins", "Which protein regulates what: kinases regulate metabolism and transcription factors regulate genes."),
    "d3": ("Tides", "Tides are caused by the gravitational pull of the Moon and the Sun."),
    "d4": ("Bees", "Honey bees perform a waggle dance to show where flowers are."),
    "d5": ("Bread", "Sourdough rises because of wild yeast in the starter."),
}
QUERIES = {"q1": "What does the protein ZQX-7731 regulate?", "q2": "what causes tides", "q3": "how do bees show flower locations"}
QRELS = {"q1": "target", "q2": "d3", "q3": "d4"}


def write_beir(root: Path) -> Path:
    (root / "qrels").mkdir(parents=True)
    with open(root / "corpus.jsonl", "w") as f:
        for i, (t, x) in DOCS.items():
            f.write(json.dumps({"_id": i, "title": t, "text": x}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for i, x in QUERIES.items():
            f.write(json.dumps({"_id": i, "text": x}) + "\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in QRELS.items()))
    return root


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_beir_rows_per_view_and_retrieval_and_keyword_finds_the_exact_term(capsys, tmp_path):
    beir = write_beir(tmp_path / "b")
    code, out, err = run(capsys, "eval", "beir", str(beir), "--views", "naive,late", "--retrieval", "dense,keyword,hybrid",
                         "--latency-queries", "3", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["view"], r["retrieval"]) for r in rows] == [(v, m) for v in ("naive", "late") for m in ("dense", "keyword", "hybrid")]
    for r in rows:
        for key in ("ndcg@1", "ndcg@10", "recall@100", "latency_p50_ms", "units", "queries"):
            assert key in r, key
        for key in ("ndcg@1_ci", "ndcg@10_ci", "recall@100_ci"):
            lo, hi = r[key]
            assert lo <= r[key[:-3]] <= hi
        assert r["bootstrap"] == {"resamples": 2000, "seed": 0} and r["queries"] == 3 and r["latency_queries"] == 3
        assert r["units"] == len(DOCS) and r["recall@100"] == 1.0
    assert "hybrid" in rows[2] and "ndcg@10_delta_vs_dense_ci" in rows[2]
    # the claim with a code only the registry entry contains: keyword search ranks it first, dense does not
    ids = tmp_path / "ids"
    ids.write_text("q1\n")
    code, out, err = run(capsys, "eval", "beir", str(beir), "--views", "naive", "--retrieval", "dense,keyword,hybrid",
                         "--queries-from", str(ids), "--latency-queries", "0", "--json")
    assert code == 0, err
    by_mode = {r["retrieval"]: r for r in json.loads(out)}
    assert by_mode["keyword"]["ndcg@1"] == 1.0 and by_mode["dense"]["ndcg@1"] == 0.0
    assert by_mode["hybrid"]["ndcg@1"] == 1.0
    assert "latency_p50_ms" not in by_mode["dense"]


def test_eval_beir_one_mode_keeps_the_row_shape_and_text_output(capsys, tmp_path):
    beir = write_beir(tmp_path / "b")
    code, out, err = run(capsys, "eval", "beir", str(beir), "--views", "naive", "--retrieval", "keyword",
                         "--hybrid", "rrf:k=10", "--latency-queries", "2", "--json")
    assert code == 0, err
    row = json.loads(out)
    assert row["view"] == "naive" and row["retrieval"] == "keyword" and row["ndcg@10"] > 0.9
    code, out, err = run(capsys, "eval", "beir", str(beir), "--views", "naive", "--retrieval", "hybrid", "--hybrid", "rrf:k=10",
                         "--latency-queries", "2")
    assert code == 0, err
    assert out.startswith("naive    hybrid   nDCG@1") and "p50" in out


def test_eval_beir_rejects_a_bad_retrieval_or_fusion_before_work(capsys, tmp_path):
    code, _, err = run(capsys, "eval", "beir", str(tmp_path / "missing"), "--retrieval", "dense,sparse")
    assert code == 2 and "sparse" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "eval", "beir", str(tmp_path / "missing"), "--retrieval", "hybrid", "--hybrid", "rrf:k=-1")
    assert code == 2 and "k" in err and len(err.strip().splitlines()) == 1
