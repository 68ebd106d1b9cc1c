"""PubMedQA retrieval: each question must retrieve its own abstract.

Compares the retrieval views (naive, heterag, late) at the same generation-chunk
size with the same encoder: nDCG@10 and Recall@1 with 95% bootstrap intervals,
paired differences against naive, and the corpus encoding time of each view (the
median of several alternating timing rounds, reported as a ratio to naive).

    python eval/pubmedqa_retrieval.py                       # test split, 64-token chunks
    python eval/pubmedqa_retrieval.py --split train --chunk-tokens 32,64,128   # choose the default size
    python eval/pubmedqa_retrieval.py --retrieval dense,keyword,hybrid --timing-rounds 0   # issue #21

Titles are never indexed (PubMedQA questions are derived from them). ``--retrieval`` (default dense): dense,
keyword and/or hybrid (``--hybrid SPEC``, default the library's ``DEFAULT_HYBRID``), all from one ingest per view
(:func:`heterag.evaluation.retrieval.indexed_corpus`; hybrid fuses as ``Pipeline.search`` does); each non-dense
row also gets the paired difference of nDCG@10 to dense of the same view.
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
)
from heterag.evaluation.metrics import ndcg_at_k, recall_at_k
from heterag.evaluation.retrieval import (
    KEYWORD_DEPTH,
    candidate_lists,
    dense_rankings,
    docs_from_chunks,
    encode_queries,
    fuse_to_docs,
    indexed_corpus,
)
from heterag.retrieval.hybrid import HybridFusion, check_retrieval

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
    ap.add_argument("--retrieval", default="dense", help="dense, keyword, hybrid (comma-separate several)")
    ap.add_argument("--hybrid", default=None, help="hybrid fusion spec (default: the library's DEFAULT_HYBRID)")
    ap.add_argument("--name", default=None, help="report name (default pubmedqa_retrieval_<split>)")
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
    modes = [check_retrieval(m) for m in args.retrieval.split(",") if m]
    fusion = HybridFusion.parse(args.hybrid)
    if "hybrid" in modes:
        lines += [f"Hybrid fusion: {fusion.describe()}.", ""]
    qids = list(queries)
    for size in [int(s) for s in args.chunk_tokens.split(",")]:
        per_view: dict[str, dict] = {}
        for v in views:
            with indexed_corpus(data.documents, encoder=encoder, view=make_view(v), chunk_tokens=size,
                                keywords=any(m != "dense" for m in modes)) as ic:
                qvecs = encode_queries(encoder, [queries[q] for q in qids])
                dense = dense_rankings(ic, qids, qvecs)
                doc_of = dict(zip(ic.chunk_ids, ic.doc_of.tolist(), strict=True))
                rankings = {"dense": dense}
                if "keyword" in modes:
                    rankings["keyword"] = {q: docs_from_chunks(ic.keywords.search(queries[q], KEYWORD_DEPTH), doc_of, 100) for q in qids}
                if "hybrid" in modes:
                    cands = candidate_lists(ic, queries, qvecs, fusion.candidates)
                    rankings["hybrid"] = {q: fuse_to_docs(cands[q], fusion, doc_of, 100, dense[q]) for q in qids}
                units = ic.units
            for m in modes:
                ndcg = [ndcg_at_k(rankings[m][q], gold[q], 10) for q in qids]
                r1 = [recall_at_k(rankings[m][q], gold[q], 1) for q in qids]
                row = {"view": v, "retrieval": m, "ndcg@10": float(np.mean(ndcg)), "ndcg@10_ci": bootstrap_ci(ndcg),
                       "recall@1": float(np.mean(r1)), "recall@1_ci": bootstrap_ci(r1), "units": units, "_ndcg": ndcg, "_r1": r1}
                if m != "dense" and "dense" in modes:
                    d = np.subtract(ndcg, [ndcg_at_k(rankings["dense"][q], gold[q], 10) for q in qids])
                    row["ndcg@10_delta_vs_dense"] = float(d.mean())
                    row["ndcg@10_delta_vs_dense_ci"] = bootstrap_ci(d)
                per_view[v if m == modes[0] else f"{v}/{m}"] = row
        if args.timing_rounds > 0:
            secs = time_embedding(data.documents, encoder, size, views, args.timing_rounds)
            for v in views:
                per_view[v]["encode_seconds"] = secs[v]
                if "naive" in secs:
                    per_view[v]["encode_ratio_vs_naive"] = secs[v] / secs["naive"]
        if "naive" in views:
            for row in per_view.values():
                base = per_view["naive" if row["retrieval"] == modes[0] else f"naive/{row['retrieval']}"]
                d_ndcg = np.subtract(row["_ndcg"], base["_ndcg"])
                d_r1 = np.subtract(row["_r1"], base["_r1"])
                row["ndcg@10_delta_vs_naive_ci"] = bootstrap_ci(d_ndcg)
                row["recall@1_delta_vs_naive_ci"] = bootstrap_ci(d_r1)
        lines += [f"## {size}-token generation chunks", "",
                  "| view | retrieval | units | nDCG@10 [95% CI] | Recall@1 [95% CI] | ΔnDCG@10 vs naive [95% CI] "
                  "| ΔnDCG@10 vs dense [95% CI] | encode s | × naive |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in per_view.values():
            r.pop("_ndcg"), r.pop("_r1")
            delta = r.get("ndcg@10_delta_vs_naive_ci")
            dd = r.get("ndcg@10_delta_vs_dense_ci")
            dd_cell = "" if dd is None else f"{r['ndcg@10_delta_vs_dense']:+.4f} [{dd[0]:+.3f}, {dd[1]:+.3f}]"
            lines.append(
                f"| {r['view']} | {r['retrieval']} | {r['units']} | {r['ndcg@10']:.4f} [{r['ndcg@10_ci'][0]:.3f}, {r['ndcg@10_ci'][1]:.3f}] "
                f"| {r['recall@1']:.4f} [{r['recall@1_ci'][0]:.3f}, {r['recall@1_ci'][1]:.3f}] "
                f"| {'' if delta is None else f'[{delta[0]:+.3f}, {delta[1]:+.3f}]'} "
                f"| {dd_cell} "
                f"| {r.get('encode_seconds', float('nan')):.1f} | {r.get('encode_ratio_vs_naive', float('nan')):.2f} |"
            )
        lines.append("")
        results[str(size)] = per_view
        print("\n".join(lines[-(len(per_view) + 4):]), flush=True)
    md = "\n".join(lines)
    report = write_report(args.name or f"pubmedqa_retrieval_{args.split}", {"split": args.split, "encoder": encoder.identity,
                          "retrieval": modes, "hybrid": fusion.describe(), "results": results}, md)
    print(f"\nwritten {report} and .json")


if __name__ == "__main__":
    main()
