"""Choose the late-chunking defaults on PubMedQA's *train* questions (never on the reported test split).

Sweeps the window size of the ``late`` view at the default generation-chunk size and
prints nDCG@10 / Recall@1 against ``naive``.

    python eval/tune_late.py [--windows 128,254,510]
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
from _common import require_data, write_report

from corpora import default_data_dir, load_pubmedqa
from heterag import DEFAULT_CHUNK_TOKENS, LateView, load_text_encoder, make_view, rank_documents
from heterag.evaluation.metrics import ndcg_at_k, recall_at_k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", default="128,254,510")
    ap.add_argument("--chunk-tokens", type=int, default=DEFAULT_CHUNK_TOKENS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    require_data(default_data_dir() / "pubmedqa", "PubMedQA")
    data = load_pubmedqa(split="train")
    queries = {q.id: q.question for q in data.questions}
    gold = {q.id: {q.doc_id: 1} for q in data.questions}
    encoder = load_text_encoder(None)

    def score(view) -> tuple[float, float]:
        run = rank_documents(data.documents, queries, encoder=encoder, view=view, chunk_tokens=args.chunk_tokens)
        return (float(np.mean([ndcg_at_k(run.rankings[q], gold[q], 10) for q in queries])),
                float(np.mean([recall_at_k(run.rankings[q], gold[q], 1) for q in queries])))

    rows = [("naive", "-", *score(make_view("naive")))]
    print(rows[-1], flush=True)
    for w in [int(x) for x in args.windows.split(",")]:
        rows.append(("late", w, *score(LateView(window_tokens=w))))
        print(rows[-1], flush=True)
    md = "\n".join([f"# late view tuning (PubMedQA train, {len(queries)} questions, {args.chunk_tokens}-token chunks)", "",
                    "| view | window tokens | nDCG@10 | Recall@1 |", "|---|---|---|---|",
                    *[f"| {v} | {w} | {n:.4f} | {r:.4f} |" for v, w, n, r in rows], ""])
    print(md)
    write_report("tune_late_train", {"rows": rows}, md)


if __name__ == "__main__":
    main()
