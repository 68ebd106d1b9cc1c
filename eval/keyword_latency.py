"""Keyword and hybrid search latency at 100k chunks, and ingest throughput with vs without the keyword index (issue #21).

Next to ``eval/stores.py`` (store-only vector search): here the default store (``chroma``) with heterag's
keyword index beside it (:class:`heterag.stores.keyworded.KeywordedStore`), searched through
:class:`heterag.Pipeline`.

* **Scale part.** ``--n`` records (default 100,000): the text is SciFact sentences recombined into
  passages of 1-3 sentences with a fixed seed (real scientific vocabulary; the keyword side needs real
  text), each with its abstract's title; the vectors are ``--real`` passages encoded with the default
  encoder plus vectors drawn from a k-means model fitted to them (as ``eval/stores.py``: synthetic vectors
  are fine for the store's side). Records go in batches of 1,000 through ``KeywordedStore.upsert`` (vector
  store and keyword index in step). Queries: the first ``--queries`` SciFact train claims. Timed, one query
  at a time, k=10, modes interleaved query by query: the keyword index alone
  (``KeywordIndex.search``), ``Pipeline.search(retrieval="keyword")`` (records fetched from the store),
  ``retrieval="dense"`` and ``retrieval="hybrid"`` (the default fusion; query encoding included in both).
* **Ingest part.** ``Pipeline.ingest`` of the first ``--ingest-docs`` SciFact abstracts (64-token chunks,
  ``--view``, real encoder) into a fresh chroma store without and with the keyword index, alternating
  for ``--rounds`` rounds (without, with, with, without, ...); chunks/s of each (median) and their ratio.

    HETERAG_NO_PROGRESS=1 python eval/keyword_latency.py [--n 100000] [--queries 200] [--ingest-docs 1000]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import OUT_DIR, bootstrap_ci, require_data, write_report

from corpora import default_data_dir
from corpora.beir import load_beir
from heterag import Pipeline, Record, load_text_encoder, make_view, open_store
from heterag.evaluation.retrieval import forget_queries
from heterag.retrieval.hybrid import DEFAULT_HYBRID

sys.path.insert(0, str(Path(__file__).resolve().parent))
from keyword_engines import varied_passages  # noqa: E402
from stores import clustered  # noqa: E402

log = logging.getLogger("keyword_latency")
BATCH = 1000


def scale_part(args, docs, queries: list[str], encoder, workdir: Path) -> dict:
    rng = np.random.default_rng(args.seed)
    texts = varied_passages(docs, args.n, args.seed)
    titles = [docs[i].title for i in rng.integers(0, len(docs), size=len(texts))]
    folder = Path(args.store_dir) if args.store_dir else workdir / "scale"
    store = open_store(args.store, folder, "bench")  # new and empty: the keyword index comes with it
    assert hasattr(store, "keywords"), "the store has no keyword index"
    reuse = store.count() == args.n  # --store-dir from an earlier run: time the searches again without rebuilding
    if not reuse:
        cache = OUT_DIR / "cache" / f"kwlat_real_{args.real}_seed{args.seed}.npy"  # encoded once, reused by reruns
        t = time.perf_counter()
        if cache.exists():
            real = np.load(cache)
        else:
            real = np.asarray(encoder.encode(texts[: args.real]), dtype=np.float32)
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, real)
        log.info("%d real passage vectors in %.0f s", len(real), time.perf_counter() - t)
        vectors = clustered(real, args.n, seed=args.seed)
    t = time.perf_counter()
    for s in range(0, 0 if reuse else args.n, BATCH):
        store.upsert([Record(f"c{i}", vectors[i], texts[i], {"doc_id": f"d{i}", "chunk_index": 0, "title": titles[i],
                                                             "heading": "", "view": ""})
                      for i in range(s, min(s + BATCH, args.n))])
        if s and s % 20000 == 0:
            log.info("%d records in %.0f s", s, time.perf_counter() - t)
    build_s = time.perf_counter() - t
    pipe = Pipeline(store, encoder, make_view("naive"))
    modes = {
        "keyword index alone (KeywordIndex.search)": lambda q: store.keywords.search(q, 10),
        "keyword (Pipeline.search)": lambda q: pipe.search(q, k=10, retrieval="keyword"),
        "dense (Pipeline.search, query encoding included)": lambda q: pipe.search(q, k=10, retrieval="dense"),
        "hybrid (Pipeline.search, query encoding included)": lambda q: pipe.search(q, k=10, retrieval="hybrid"),
        "query encoding alone": lambda q: encoder.encode_query(q),
    }
    for q in queries[:5]:
        for fn in modes.values():
            fn(q)
    ms: dict[str, list[float]] = {m: [] for m in modes}
    for q in queries:
        for m, fn in modes.items():
            forget_queries(encoder)  # every mode pays for its own query encoding (the encoder caches recent texts)
            t0 = time.perf_counter()
            fn(q)
            ms[m].append((time.perf_counter() - t0) * 1000)
    count, kw_count = store.count(), store.keywords.count()
    store.close()
    out = {"records": count, "keyword_records": kw_count, "build_seconds": None if reuse else build_s,
           "build_per_s": None if reuse else args.n / build_s, "reused": reuse,
           "hybrid": DEFAULT_HYBRID.describe(), "latency": {}}
    for m, v in ms.items():
        lo, hi = bootstrap_ci(v, seed=args.seed)  # interval of the mean (the p50's is not a mean)
        out["latency"][m] = {"p50_ms": statistics.median(v), "p95_ms": float(np.percentile(v, 95)), "mean_ms": float(np.mean(v)),
                             "mean_ci": [lo, hi]}
    return out


def ingest_part(args, docs, encoder, workdir: Path) -> dict:
    subset = docs[: args.ingest_docs]
    view = make_view(args.view)
    order = [False, True, True, False] * ((args.rounds + 1) // 2)
    order = order[: 2 * args.rounds]
    secs: dict[bool, list[float]] = {False: [], True: []}
    chunks = 0
    for n, with_kw in enumerate(order):
        folder = workdir / f"ingest{n}"
        store = open_store(args.store, folder, "bench", keywords=with_kw)
        assert hasattr(store, "keywords") == with_kw
        pipe = Pipeline(store, encoder, view)
        t = time.perf_counter()
        report = pipe.ingest(subset, batch_documents=64, total=len(subset))
        secs[with_kw].append(time.perf_counter() - t)
        chunks = store.count()
        store.close()
        shutil.rmtree(folder, ignore_errors=True)
        log.info("ingest %s keyword index: %d chunks in %.1f s (encode %.1f s)", "with" if with_kw else "without", chunks,
                 secs[with_kw][-1], report.encode_seconds)
    without, with_ = statistics.median(secs[False]), statistics.median(secs[True])
    return {"documents": len(subset), "chunks": chunks, "view": args.view, "seconds": {"without": secs[False], "with": secs[True]},
            "chunks_per_s_without": chunks / without, "chunks_per_s_with": chunks / with_,
            "throughput_ratio": without / with_, "drop_percent": 100 * (1 - without / with_)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--real", type=int, default=5000, help="passages encoded for real (the other vectors are fitted to them)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--store", default="chroma")
    ap.add_argument("--ingest-docs", type=int, default=1000, help="SciFact abstracts for the ingest comparison (0: skip)")
    ap.add_argument("--view", default="heterag", help="view for the ingest comparison (default heterag, the default view)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of (without, with) for the ingest comparison")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--store-dir", default=None, help="keep the 100k store here (reused by a later run with the same --n)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="keyword_latency")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    path = default_data_dir() / "scifact_train"
    require_data(path, "SciFact train")
    data = load_beir(path, split="train")
    docs = list(data.documents)
    queries = [data.queries[q] for q in sorted(data.qrels) if q in data.queries][: args.queries]
    encoder = load_text_encoder(None)
    workdir = Path(tempfile.mkdtemp(prefix="heterag-kwlat-"))
    res: dict = {"seed": args.seed, "store": args.store, "threads": os.cpu_count()}
    md = [f"# Keyword and hybrid latency ({args.store}; {os.cpu_count()} cores; seed {args.seed})", ""]
    try:
        if not args.skip_scale:
            res["scale"] = sc = scale_part(args, docs, queries, encoder, workdir)
            built = ("reused from --store-dir (built by an earlier run)" if sc["reused"] else
                     f"built in {sc['build_seconds']:.0f} s ({sc['build_per_s']:,.0f} records/s, batches of {BATCH:,})")
            md += [f"{sc['records']:,} records ({sc['keyword_records']:,} in the keyword index), {built}; {len(queries)} SciFact train claims, k=10; "
                   f"hybrid = {sc['hybrid']}", "",
                   "| search | p50 ms | p95 ms | mean ms [95% CI] |", "|---|---|---|---|"]
            for m, v in sc["latency"].items():
                md.append(f"| {m} | {v['p50_ms']:.1f} | {v['p95_ms']:.1f} | {v['mean_ms']:.1f} [{v['mean_ci'][0]:.1f}, {v['mean_ci'][1]:.1f}] |")
            md.append("")
            write_report(args.name, res, "\n".join(md))
        if args.ingest_docs > 0:
            res["ingest"] = ing = ingest_part(args, docs, encoder, workdir)
            md += [f"Ingest, {ing['documents']:,} SciFact abstracts = {ing['chunks']:,} chunks, view {ing['view']}, {args.store}, "
                   f"real encoder, rounds alternating: without {', '.join(f'{s:.1f}' for s in ing['seconds']['without'])} s, "
                   f"with {', '.join(f'{s:.1f}' for s in ing['seconds']['with'])} s", "",
                   "| keyword index | chunks/s (median) |", "|---|---|",
                   f"| without | {ing['chunks_per_s_without']:.1f} |", f"| with | {ing['chunks_per_s_with']:.1f} |", "",
                   f"Throughput with / without: {ing['throughput_ratio']:.3f} (drop {ing['drop_percent']:.1f}%).", ""]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    path = write_report(args.name, res, "\n".join(md))
    print("\n".join(md))
    print(f"written {path}")


if __name__ == "__main__":
    main()
