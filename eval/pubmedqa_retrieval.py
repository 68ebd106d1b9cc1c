"""PubMedQA retrieval: each question must retrieve its own abstract.

Compares the retrieval views (naive, heterag, late) at the same generation-chunk
size with the same encoder: nDCG@10 and Recall@1 with 95% bootstrap intervals,
paired differences against naive, and the corpus encoding time of each view (the
median of several alternating timing rounds, reported as a ratio to naive).

    python eval/pubmedqa_retrieval.py                       # test split, 64-token chunks
    python eval/pubmedqa_retrieval.py --split train --chunk-tokens 32,64,128   # choose the default size

Titles are never indexed (PubMedQA questions are derived from them).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import numpy as np
from _common import bootstrap_ci, require_data, write_report

from corpora import default_data_dir, load_pubmedqa
from heterag import (
    DEFAULT_CHUNK_TOKENS,
    chunk_document,
    load_text_encoder,
    make_view,
    rank_documents,
)
from heterag.evaluation.metrics import ndcg_at_k, recall_at_k

VIEWS = ("naive", "heterag", "late")


def time_embedding(docs, encoder, chunk_tokens: int, views: list[str], rounds: int) -> dict[str, float]:
    """Median seconds to embed the whole corpus per view, rounds interleaved to share machine noise."""
    chunked = [chunk_document(d, encoder.tokenize, chunk_tokens) for d in docs]
    built = {v: make_view(v) for v in views}
    times: dict[str, list[float]] = {v: [] for v in views}
    for _ in range(rounds):
        for v in views:
            t = time.perf_counter()
            built[v].embed(chunked, encoder)
            times[v].append(time.perf_counter() - t)
    return {v: statistics.median(ts) for v, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="test", choices=["test", "train", "all"], help="which questions (corpus is always all 1000 abstracts)")
    ap.add_argument("--chunk-tokens", default=str(DEFAULT_CHUNK_TOKENS), help="one size or a comma list")
    ap.add_argument("--views", default=",".join(VIEWS))
    ap.add_argument("--encoder", default=None)
    ap.add_argument("--timing-rounds", type=int, default=3, help="alternating rounds for the encode-time medians (0 = skip)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    path = default_data_dir() / "pubmedqa"
    require_data(path, "PubMedQA")
    data = load_pubmedqa(path, split=args.split)
    queries = {q.id: q.question for q in data.questions}
    gold = {q.id: {q.doc_id: 1} for q in data.questions}
    encoder = load_text_encoder(args.encoder)
    views = [v for v in args.views.split(",") if v]
    results: dict[str, dict] = {}
    lines = [f"# PubMedQA retrieval ({args.split} split: {len(queries)} questions, {len(data.documents)} abstracts)", "",
             f"Encoder: {encoder.identity}. Exact search; a document scores its best chunk.", ""]
    for size in [int(s) for s in args.chunk_tokens.split(",")]:
        per_view: dict[str, dict] = {}
        for v in views:
            run = rank_documents(data.documents, queries, encoder=encoder, view=make_view(v), chunk_tokens=size)
            ndcg = [ndcg_at_k(run.rankings[q], gold[q], 10) for q in queries]
            r1 = [recall_at_k(run.rankings[q], gold[q], 1) for q in queries]
            per_view[v] = {"ndcg@10": float(np.mean(ndcg)), "ndcg@10_ci": bootstrap_ci(ndcg),
                           "recall@1": float(np.mean(r1)), "recall@1_ci": bootstrap_ci(r1),
                           "units": run.units, "_ndcg": ndcg, "_r1": r1}
        if args.timing_rounds > 0:
            secs = time_embedding(data.documents, encoder, size, views, args.timing_rounds)
            for v in views:
                per_view[v]["encode_seconds"] = secs[v]
                if "naive" in secs:
                    per_view[v]["encode_ratio_vs_naive"] = secs[v] / secs["naive"]
        if "naive" in per_view:
            for v in views:
                d_ndcg = np.subtract(per_view[v]["_ndcg"], per_view["naive"]["_ndcg"])
                d_r1 = np.subtract(per_view[v]["_r1"], per_view["naive"]["_r1"])
                per_view[v]["ndcg@10_delta_vs_naive_ci"] = bootstrap_ci(d_ndcg)
                per_view[v]["recall@1_delta_vs_naive_ci"] = bootstrap_ci(d_r1)
        lines += [f"## {size}-token generation chunks", "",
                  "| view | units | nDCG@10 [95% CI] | Recall@1 [95% CI] | ΔnDCG@10 vs naive [95% CI] | encode s | × naive |",
                  "|---|---|---|---|---|---|---|"]
        for v, r in per_view.items():
            r.pop("_ndcg"), r.pop("_r1")
            delta = r.get("ndcg@10_delta_vs_naive_ci")
            lines.append(
                f"| {v} | {r['units']} | {r['ndcg@10']:.4f} [{r['ndcg@10_ci'][0]:.3f}, {r['ndcg@10_ci'][1]:.3f}] "
                f"| {r['recall@1']:.4f} [{r['recall@1_ci'][0]:.3f}, {r['recall@1_ci'][1]:.3f}] "
                f"| {'' if delta is None else f'[{delta[0]:+.3f}, {delta[1]:+.3f}]'} "
                f"| {r.get('encode_seconds', float('nan')):.1f} | {r.get('encode_ratio_vs_naive', float('nan')):.2f} |"
            )
        lines.append("")
        results[str(size)] = per_view
        print("\n".join(lines[-(len(per_view) + 4):]), flush=True)
    md = "\n".join(lines)
    report = write_report(f"pubmedqa_retrieval_{args.split}", {"split": args.split, "encoder": encoder.identity, "results": results}, md)
    print(f"\nwritten {report} and .json")


if __name__ == "__main__":
    main()
