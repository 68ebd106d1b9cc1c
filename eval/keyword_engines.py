"""Keyword engines (issue #21): Tantivy (heterag's KeywordIndex) vs SQLite FTS5 vs bm25s, same tokenizer.

Every engine indexes the terms of :func:`heterag.stores.tokenizer.tokenize` (joined by spaces; the
engines only split at spaces) and ranks by BM25 (k1 = 1.2, b = 0.75; FTS5's ``bm25()`` and bm25s's
``lucene`` method; Tantivy's Lucene BM25). Figures per engine:

* ingest: records/s through incremental batches of 1,000 (each batch one commit / transaction; bm25s has
  no incremental update, so every batch rebuilds its index over everything so far: measured on SciFact;
  at 100k its bulk build time is the cost of every batch), tokenisation included;
* query latency p50/p95 (ms, one query at a time, k=10) on SciFact (5,183 whole abstracts) and on
  100,000 chunks (SciFact sentences recombined into 1-3 sentence passages with a fixed seed: real
  scientific vocabulary, not repeated abstracts), queries the 809 SciFact train claims;
* nDCG@10 on SciFact train (809 claims, whole abstracts: title + text), bootstrap 95% interval (seed 0);
* disk size of the index.

``--views``: the keyword text of a record per retrieval view, keyword-only nDCG@10 on SciFact train over
64-token chunks (a document scores its best chunk; Tantivy): ``chunk`` (the naive view's text), ``chunk+title``
(title, heading path, chunk: what :func:`heterag.stores.keyword.keyword_text` gives naive and late records),
``context`` (the heterag view's text: chunk with one neighbour each side, heading, title).

    HETERAG_NO_PROGRESS=1 python eval/keyword_engines.py [--n 100000] [--views]
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import bootstrap_ci, require_data, write_report

from corpora import default_data_dir
from corpora.beir import load_beir
from heterag import chunk_document, load_text_encoder, make_view
from heterag.evaluation.metrics import ndcg_at_k
from heterag.stores.keyword import KeywordIndex, keyword_text
from heterag.stores.tokenizer import query_terms, tokenize

log = logging.getLogger("keyword_engines")
BATCH = 1000
K = 10


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else (path.stat().st_size if path.exists() else 0)


class Tantivy:
    name = "tantivy (heterag KeywordIndex)"

    def __init__(self, folder: Path):
        self.path = folder / "tantivy"
        self.index = KeywordIndex(self.path)

    def add(self, items: list[tuple[str, str]]) -> None:
        self.index.upsert(items)

    def search(self, text: str, k: int) -> list[str]:
        return [i for i, _ in self.index.search(text, k)]


class FTS5:
    """The earlier SQLite FTS5 keyword index (same schema and queries as heterag's FTS5 version had)."""

    name = "SQLite FTS5"

    def __init__(self, folder: Path):
        self.path = folder / "fts5.sqlite"
        self.db = sqlite3.connect(str(self.path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE docs (rowid INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL)")
        self.db.execute("CREATE VIRTUAL TABLE terms USING fts5(body, tokenize = \"unicode61 remove_diacritics 0 tokenchars '-./_'\")")

    def add(self, items: list[tuple[str, str]]) -> None:
        rows = [(i, " ".join(tokenize(t))) for i, t in items]
        self.db.execute("BEGIN IMMEDIATE")
        for i, body in rows:
            old = self.db.execute("SELECT rowid FROM docs WHERE id = ?", (i,)).fetchone()
            if old is not None:
                self.db.execute("DELETE FROM terms WHERE rowid = ?", (old[0],))
                rowid = old[0]
            else:
                rowid = self.db.execute("INSERT INTO docs (id) VALUES (?)", (i,)).lastrowid
            self.db.execute("INSERT INTO terms (rowid, body) VALUES (?, ?)", (rowid, body))
        self.db.execute("COMMIT")

    def search(self, text: str, k: int) -> list[str]:
        terms = query_terms(text)
        if not terms:
            return []
        match = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
        rows = self.db.execute("SELECT docs.id FROM terms JOIN docs ON docs.rowid = terms.rowid WHERE terms MATCH ? "
                               "ORDER BY bm25(terms) LIMIT ?", (match, k)).fetchall()
        return [r[0] for r in rows]


class BM25S:
    """bm25s: a sparse matrix of BM25 weights; no incremental update, so every batch rebuilds."""

    name = "bm25s"

    def __init__(self, folder: Path):
        self.path = folder / "bm25s"
        self.ids: list[str] = []
        self.tokens: list[list[str]] = []
        self.model = None

    def add(self, items: list[tuple[str, str]]) -> None:
        import bm25s

        self.ids += [i for i, _ in items]
        self.tokens += [tokenize(t) for _, t in items]
        self.model = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
        self.model.index(self.tokens, show_progress=False)

    def save(self) -> None:
        self.model.save(str(self.path))

    def search(self, text: str, k: int) -> list[str]:
        terms = query_terms(text)
        if not terms:
            return []
        docs, scores = self.model.retrieve([terms], k=min(k, len(self.ids)), show_progress=False, n_threads=1)
        return [self.ids[d] for d, s in zip(docs[0], scores[0], strict=True) if s > 0]


ENGINES = {"tantivy": Tantivy, "fts5": FTS5, "bm25s": BM25S}


def varied_passages(documents, n: int, seed: int = 0) -> list[str]:
    """``n`` passages of 1-3 SciFact sentences drawn at random (fixed seed), distinct."""
    sentences = [s for d in documents for sec in d.sections for s in re.split(r"(?<=[.!?])\s+", sec.text) if len(s) > 30]
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    while len(out) < n:
        text = " ".join(sentences[i] for i in rng.integers(0, len(sentences), size=int(rng.integers(1, 4))))
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def ingest(engine, items: list[tuple[str, str]], batches: bool = True) -> float:
    t = time.perf_counter()
    step = BATCH if batches else len(items)
    for s in range(0, len(items), step):
        engine.add(items[s : s + step])
    return time.perf_counter() - t


def latencies(engine, queries: list[str], k: int = K) -> tuple[float, float]:
    for q in queries[:5]:
        engine.search(q, k)
    ms = []
    for q in queries:
        t = time.perf_counter()
        engine.search(q, k)
        ms.append((time.perf_counter() - t) * 1000)
    return statistics.median(ms), float(np.percentile(ms, 95))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="records of the large index")
    ap.add_argument("--engines", default="tantivy,fts5,bm25s")
    ap.add_argument("--views", action="store_true", help="also the keyword text per view (needs the tokenizer of the encoder)")
    ap.add_argument("--only-views", action="store_true", help="only the keyword text per view")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="keyword_engines")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    path = default_data_dir() / "scifact_train"
    require_data(path, "SciFact train")
    data = load_beir(path, split="train")
    docs = list(data.documents)
    qids = sorted(q for q in data.qrels if q in data.queries)
    queries = [data.queries[q] for q in qids]
    qrels = {q: dict(data.qrels[q]) for q in qids}
    whole = [(d.id, f"{d.title}\n" + "\n".join(s.text for s in d.sections)) for d in docs]
    res: dict = {"seed": args.seed, "n": args.n, "engines": {}, "views": {}}
    md = [f"# Keyword engines (SciFact train: {len(docs):,} abstracts, {len(qids)} claims; {args.n:,} varied chunks; seed {args.seed})", ""]
    if not args.only_views:
        big = [(f"p{i}", t) for i, t in enumerate(varied_passages(docs, args.n, args.seed))]
        t0 = time.perf_counter()
        for _, t in whole:
            tokenize(t)
        res["tokenize_small_per_s"] = len(whole) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _, t in big:
            tokenize(t)
        res["tokenize_big_per_s"] = len(big) / (time.perf_counter() - t0)
        md += [f"Tokenisation alone (shared by every engine, included in their ingest rates): {res['tokenize_small_per_s']:,.0f} "
               f"abstracts/s, {res['tokenize_big_per_s']:,.0f} chunks/s (second pass: the stemmer's cache is warm).", ""]
        md += ["| engine | ingest SciFact (docs/s, batches of 1,000) | query p50 / p95 ms (SciFact) | nDCG@10 SciFact train [95% CI] "
               f"| ingest {args.n:,} (rec/s) | query p50 / p95 ms ({args.n:,}) | disk MB ({args.n:,}) |", "|---|---|---|---|---|---|---|"]
        for key in [e for e in args.engines.split(",") if e]:
            row: dict = {}
            root = Path(tempfile.mkdtemp(prefix=f"kw-{key}-"))
            try:
                (root / "small").mkdir(exist_ok=True)
                eng = ENGINES[key](root / "small")
                row["ingest_small_s"] = ingest(eng, whole)
                row["ingest_small_per_s"] = len(whole) / row["ingest_small_s"]
                row["p50_small"], row["p95_small"] = latencies(eng, queries)
                per_q = [ndcg_at_k(eng.search(queries[j], K), qrels[q], K) for j, q in enumerate(qids)]
                row["ndcg@10"], row["ndcg@10_ci"] = float(np.mean(per_q)), bootstrap_ci(per_q, seed=args.seed)
                del eng
                (root / "big").mkdir(exist_ok=True)
                eng = ENGINES[key](root / "big")
                if key == "bm25s":  # no incremental update: one bulk build = the cost of every batch at this size
                    row["build_big_s"] = ingest(eng, big, batches=False)
                    row["ingest_big_per_s"] = len(big) / row["build_big_s"]
                    row["note"] = f"each batch rebuilds: {row['build_big_s']:.1f} s per batch at {args.n:,}"
                    eng.save()
                else:
                    row["ingest_big_s"] = ingest(eng, big)
                    row["ingest_big_per_s"] = len(big) / row["ingest_big_s"]
                row["p50_big"], row["p95_big"] = latencies(eng, queries)
                row["disk_mb_big"] = du(eng.path) / 2**20
            finally:
                shutil.rmtree(root, ignore_errors=True)
            res["engines"][key] = row
            log.info("%s: %s", key, row)
            name = ENGINES[key].name
            md.append(f"| {name} | {row['ingest_small_per_s']:,.0f} | {row['p50_small']:.2f} / {row['p95_small']:.2f} | "
                      f"{100 * row['ndcg@10']:.2f} [{100 * row['ndcg@10_ci'][0]:.2f}, {100 * row['ndcg@10_ci'][1]:.2f}] | "
                      f"{row['ingest_big_per_s']:,.0f}{' (one bulk build)' if key == 'bm25s' else ''} | "
                      f"{row['p50_big']:.2f} / {row['p95_big']:.2f} | {row['disk_mb_big']:.0f} |")
        md.append("")
    if args.views or args.only_views:
        encoder = load_text_encoder(None)
        hview = make_view("heterag")
        items: dict[str, list[tuple[str, str]]] = {"chunk": [], "chunk+title": [], "context": []}
        doc_of: dict[str, str] = {}
        for d in docs:
            cd = chunk_document(d, encoder.tokenize, 64)
            for c, ctx in zip(cd.chunks, hview.texts(cd), strict=True):
                doc_of[c.id] = d.id
                items["chunk"].append((c.id, keyword_text(c.text, {"view": c.text})))
                items["chunk+title"].append((c.id, keyword_text(c.text, {"title": c.title, "heading": " > ".join(c.heading)})))
                items["context"].append((c.id, ctx))
        md += ["## Keyword text per view (Tantivy, 64-token chunks, a document scores its best chunk; SciFact train, all 809 claims)", "",
               "| keyword text | used today by | nDCG@10 [95% CI] | Δ vs chunk [95% CI] |", "|---|---|---|---|"]
        base = None
        used = {"chunk": "naive until this measurement (its view is the chunk)", "chunk+title": "naive and late (no text view beyond the chunk)",
                "context": "heterag (its view)"}
        for variant, pairs in items.items():
            with tempfile.TemporaryDirectory() as tmp:
                idx = KeywordIndex(Path(tmp) / "kw")
                idx.upsert(pairs)
                per_q = []
                for j, q in enumerate(qids):
                    ranked = list(dict.fromkeys(doc_of[i] for i, _ in idx.search(queries[j], 200)))
                    per_q.append(ndcg_at_k(ranked, qrels[q], K))
            per_q = np.array(per_q)
            base = per_q if base is None else base
            ci, dci = bootstrap_ci(per_q, seed=args.seed), bootstrap_ci(per_q - base, seed=args.seed)
            res["views"][variant] = {"ndcg@10": float(per_q.mean()), "ci": ci, "delta_vs_chunk_ci": dci, "units": len(pairs)}
            md.append(f"| {variant} | {used[variant]} | {100 * per_q.mean():.2f} [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}] | "
                      f"{100 * (per_q - base).mean():+.2f} [{100 * dci[0]:+.2f}, {100 * dci[1]:+.2f}] |")
        md.append("")
    report = write_report(args.name, res, "\n".join(md))
    print("\n".join(md))
    print(f"written {report}")


if __name__ == "__main__":
    main()
