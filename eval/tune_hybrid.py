"""Hybrid retrieval (issue #21): choose the fusion of dense and keyword search by 5-fold cross-validation.

Data: SciFact **train** (``../shared/data/scifact_train``: 5,183 abstracts with titles, 809 train claims)
and PubMedQA **train** (1,000 abstracts without titles, the 500 train questions; the test split is never
read). Per dataset and view (naive, heterag, late) the corpus is ingested once through
:class:`heterag.Pipeline` (64-token chunks, default encoder; vectors cached in ``eval/out/cache``), then
for every query the candidate lists are computed once: the dense top-200 chunks (exact cosine), the
keyword top-200 chunks (heterag's Tantivy BM25 index), and both exact scores of every candidate (as
:meth:`heterag.Pipeline.search` fills them in). Fusion is then replayed offline for every setting of the
grid (checked against :class:`heterag.retrieval.hybrid.HybridFusion` on a sample); a document scores
its best fused chunk.

Grid: keyword text of a record (``view``: :func:`heterag.stores.keyword.keyword_text`; ``chunk+title``:
title, heading path and chunk; ``context``: the heterag view text, chunk with one neighbour each side,
heading and title) x fusion (``rrf`` k in {5, 10, 20, 40, 60, 100}, dense weight in {0.3 ... 0.9};
``convex`` dense weight in {0.20, 0.25, ... 0.95}) x candidates per list in {50, 100, 200}.

Selection (5 folds by query, seed ``--seed``, per dataset): for each fold the setting is chosen on the
other four folds and scores the held-out fold, so every query is scored once by a setting that never
saw it. ``shared``: one fusion setting for every view and both datasets (what ``DEFAULT_HYBRID`` must be;
objective: mean over datasets and views of nDCG@10, the keyword text chosen per view), and ``per view``
for information. Figures: out-of-fold nDCG@10 with bootstrap 95% intervals (2,000 resamples, seed),
paired differences hybrid - dense and hybrid - keyword. The final setting is chosen the same way on
all train queries.

    HETERAG_NO_PROGRESS=1 nice -n 5 python eval/tune_hybrid.py             # ~25 min the first time (encoding)
    python eval/tune_hybrid.py --datasets scifact --views late              # quicker looks
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import OUT_DIR, bootstrap_ci, require_data, write_report
from filelock import FileLock

from corpora import default_data_dir, load_pubmedqa
from corpora.beir import load_beir
from heterag import chunk_document, load_text_encoder, make_view
from heterag.evaluation.metrics import ndcg_at_k
from heterag.evaluation.retrieval import IndexedCorpus, candidate_lists, encode_queries, fuse_to_docs, indexed_corpus
from heterag.retrieval.hybrid import HybridFusion
from heterag.stores.keyword import KeywordIndex, keyword_text

log = logging.getLogger("tune_hybrid")
DEPTH = 200
CANDIDATES = (50, 100, 200)
RRF_K = (5, 10, 20, 40, 60, 100)
RRF_W = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
CONVEX_W = tuple(round(w, 2) for w in np.arange(0.20, 0.9501, 0.05))
VARIANTS = ("view", "chunk+title", "context")
CACHE = OUT_DIR / "cache"


def load(dataset: str) -> tuple[list, dict[str, str], dict[str, dict[str, int]]]:
    if dataset == "scifact":
        path = default_data_dir() / "scifact_train"
        require_data(path, "SciFact train")
        data = load_beir(path, split="train")
        return list(data.documents), dict(data.queries), {q: dict(r) for q, r in data.qrels.items()}
    require_data(default_data_dir() / "pubmedqa", "PubMedQA")
    data = load_pubmedqa(split="train")  # abstracts without titles (questions are derived from them)
    return list(data.documents), {q.id: q.question for q in data.questions}, {q.id: {q.doc_id: 1} for q in data.questions}


def records_for(dataset: str, vname: str, documents, encoder, chunk_tokens: int) -> tuple[np.ndarray, list[dict]]:
    """(unit vectors, one dict per chunk: id, doc, text, title, heading, view), chunks sorted by document; cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    stem = CACHE / f"hybrid_{dataset}_{vname}_{chunk_tokens}"
    with FileLock(stem.with_suffix(".lock")):  # another process (--encode-only) may be encoding it; a dead one holds nothing
        if stem.with_suffix(".npy").exists() and stem.with_suffix(".json").exists():
            return np.load(stem.with_suffix(".npy")), json.loads(stem.with_suffix(".json").read_text())
        t = time.perf_counter()
        with indexed_corpus(documents, encoder=encoder, view=make_view(vname), chunk_tokens=chunk_tokens) as ic:
            recs = {r.id: r for r in ic.pipeline.store.get()}
            meta = [
                {
                    "id": c,
                    "doc": recs[c].metadata["doc_id"],
                    "text": recs[c].text,
                    "title": recs[c].metadata.get("title", ""),
                    "heading": recs[c].metadata.get("heading", ""),
                    "view": recs[c].metadata.get("view", ""),
                    "index": int(recs[c].metadata.get("chunk_index", 0)),
                }
                for c in ic.chunk_ids
            ]
            matrix = ic.matrix
        log.info("%s/%s: %d chunks encoded in %.0f s", dataset, vname, len(meta), time.perf_counter() - t)
        np.save(stem.with_suffix(".npy"), matrix)
        stem.with_suffix(".json").write_text(json.dumps(meta))
    return matrix, meta


def context_texts(documents, encoder, chunk_tokens: int) -> dict[str, str]:
    """Chunk id -> the heterag view text (one neighbour each side, heading, title)."""
    view = make_view("heterag")
    out = {}
    for d in documents:
        cd = chunk_document(d, encoder.tokenize, chunk_tokens)
        out.update(zip([c.id for c in cd.chunks], view.texts(cd), strict=True))
    return out


def keyword_texts(meta: list[dict], variant: str, context: dict[str, str]) -> list[tuple[str, str]]:
    if variant == "view":
        return [
            (m["id"], keyword_text(m["text"], {"view": m["view"], "title": m["title"], "heading": m["heading"]})) for m in meta
        ]
    if variant == "chunk+title":
        return [(m["id"], keyword_text(m["text"], {"title": m["title"], "heading": m["heading"]})) for m in meta]
    return [(m["id"], context[m["id"]]) for m in meta]


def settings() -> list[HybridFusion]:
    out = [HybridFusion("rrf", weight=w, k=k, candidates=c) for c in CANDIDATES for k in RRF_K for w in RRF_W]
    out += [HybridFusion("convex", weight=float(w), candidates=c) for c in CANDIDATES for w in CONVEX_W]
    return out


class Prepared:
    """One query's candidates as arrays, for fast offline fusion (same result as HybridFusion.fuse)."""

    def __init__(self, cand, doc_index: dict[str, int]):
        ids = list(dict.fromkeys([i for i, _ in cand.dense] + [i for i, _ in cand.keyword]))
        self.n_kw = len(cand.keyword)
        pos = {i: n for n, i in enumerate(ids)}
        self.drank = np.full(len(ids), 10**9)
        self.krank = np.full(len(ids), 10**9)
        for r, (i, _) in enumerate(cand.dense):
            self.drank[pos[i]] = r
        for r, (i, _) in enumerate(cand.keyword):
            self.krank[pos[i]] = r
        self.dscore = np.array([cand.exact[i]["dense"] for i in ids])
        self.kscore = np.array([cand.exact[i]["keyword"] for i in ids])
        self.doc = np.array([doc_index[i] for i in ids])
        self.idorder = np.argsort(np.argsort(np.array(ids, dtype=object)))  # rank of each id string (ties break by id)

    def docs(self, f: HybridFusion | None, top: int = 10) -> list[int]:
        """Top document indices for fusion ``f`` (None: dense alone, ``"keyword"``: keyword alone)."""
        if f is None or (isinstance(f, HybridFusion) and self.n_kw == 0):
            member = self.drank < 10**9
            score = -self.drank.astype(float)
        elif f == "keyword":
            member = self.krank < 10**9
            score = -self.krank.astype(float)
        else:
            in_d, in_k = self.drank < f.candidates, self.krank < f.candidates
            if f.method == "rrf":
                score = np.where(in_d, f.weight / (f.k + self.drank + 1.0), 0.0) + np.where(
                    in_k, (1 - f.weight) / (f.k + self.krank + 1.0), 0.0
                )
                member = in_d | in_k
            else:
                member = in_d | in_k
                hd, hk = self.dscore[member].max(), self.kscore[member].max()
                nd = (self.dscore + 1.0) / (hd + 1.0) if hd > -1.0 else np.zeros_like(self.dscore)
                nk = self.kscore / hk if hk > 0 else np.zeros_like(self.kscore)
                score = f.weight * nd + (1 - f.weight) * nk
        idx = np.flatnonzero(member)
        order = idx[np.lexsort((self.idorder[idx], -score[idx]))]
        _, first = np.unique(self.doc[order], return_index=True)
        return self.doc[order][np.sort(first)][:top].tolist()


def ndcg10(docs: list[int], rel: dict[int, int]) -> float:
    return ndcg_at_k([str(d) for d in docs], {str(k): v for k, v in rel.items()}, 10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="scifact,pubmedqa")
    ap.add_argument("--views", default="naive,heterag,late")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--chunk-tokens", type=int, default=64)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="tune_hybrid")
    ap.add_argument("--encode-only", action="store_true", help="only build the cached vectors of these datasets and views")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    encoder = load_text_encoder(None)
    datasets = [d for d in args.datasets.split(",") if d]
    views = [v for v in args.views.split(",") if v]
    variants = [v for v in args.variants.split(",") if v]
    grid = settings()
    # score[ds][view][variant] = (queries x settings) nDCG@10; dense[ds][view], keyword[ds][view][variant] = per query
    score: dict = {}
    dense_q: dict = {}
    kw_q: dict = {}
    qids_of: dict = {}
    if args.encode_only:
        for ds in datasets:
            documents = load(ds)[0]
            for vname in views:
                records_for(ds, vname, documents, encoder, args.chunk_tokens)
        return
    for ds in datasets:
        documents, queries, qrels = load(ds)
        qids = sorted(q for q in qrels if q in queries)
        qids_of[ds] = qids
        context = context_texts(documents, encoder, args.chunk_tokens) if "context" in variants else {}
        qvecs = encode_queries(encoder, [queries[q] for q in qids])
        score[ds], dense_q[ds], kw_q[ds] = {}, {}, {}
        for vname in views:
            matrix, meta = records_for(ds, vname, documents, encoder, args.chunk_tokens)
            doc_names = sorted({m["doc"] for m in meta})
            doc_index = {d: i for i, d in enumerate(doc_names)}
            chunk_doc = {m["id"]: doc_index[m["doc"]] for m in meta}
            rel = {q: {doc_index[d]: g for d, g in qrels[q].items() if d in doc_index} for q in qids}
            doc_arr = np.array([m["doc"] for m in meta])
            starts = np.flatnonzero(np.r_[True, doc_arr[1:] != doc_arr[:-1]])
            ic = IndexedCorpus(
                None,
                [m["id"] for m in meta],
                doc_arr,
                matrix,
                starts,
                doc_arr[starts],
                len(meta),
                0.0,
                0.0,  # type: ignore[arg-type]
                {m["id"]: i for i, m in enumerate(meta)},
            )
            score[ds][vname], kw_q[ds][vname] = {}, {}
            for variant in variants:
                t = time.perf_counter()
                with tempfile.TemporaryDirectory(prefix="tune-hybrid-") as tmp:
                    index = KeywordIndex(Path(tmp) / "kw")
                    index.upsert(keyword_texts(meta, variant, context))
                    cands = candidate_lists(ic, {q: queries[q] for q in qids}, qvecs, DEPTH, keywords=index)
                prepared = {q: Prepared(cands[q], chunk_doc) for q in qids}
                # the offline fusion must equal the library's: check a sample of queries and settings
                names = {i: d for d, i in doc_index.items()}
                dmap = {m["id"]: m["doc"] for m in meta}
                for q, f in itertools.islice(zip(qids[::97], grid[::7], strict=False), 8):
                    want = fuse_to_docs(cands[q], f, dmap, 10)
                    got = [names[i] for i in prepared[q].docs(f)]
                    assert got == want, (q, f, got, want)
                if vname not in dense_q[ds]:
                    dense_q[ds][vname] = np.array([ndcg10(prepared[q].docs(None), rel[q]) for q in qids])
                kw_q[ds][vname][variant] = np.array([ndcg10(prepared[q].docs("keyword"), rel[q]) for q in qids])
                score[ds][vname][variant] = np.array([[ndcg10(prepared[q].docs(f), rel[q]) for f in grid] for q in qids])
                best = score[ds][vname][variant].mean(axis=0).argmax()
                log.info(
                    "%s/%s/%s: dense %.4f keyword %.4f best hybrid (all queries) %.4f %s  [%.0f s]",
                    ds,
                    vname,
                    variant,
                    dense_q[ds][vname].mean(),
                    kw_q[ds][vname][variant].mean(),
                    score[ds][vname][variant].mean(axis=0)[best],
                    grid[best].describe(),
                    time.perf_counter() - t,
                )
    result = select(args, datasets, views, variants, grid, score, dense_q, kw_q, qids_of)
    report(args, result)


def select(args, datasets, views, variants, grid, score, dense_q, kw_q, qids_of) -> dict:
    rng = np.random.default_rng(args.seed)
    folds = {ds: np.array_split(rng.permutation(len(qids_of[ds])), args.folds) for ds in datasets}

    def choose(
        train: dict[str, np.ndarray], only_view: str | None = None, only_ds: str | None = None
    ) -> tuple[int, dict[str, str]]:
        """Best setting index and the keyword text per view, on the training queries ``train[ds]`` (row indices)."""
        vs = [only_view] if only_view else views
        dss = [only_ds] if only_ds else datasets
        # mean nDCG@10 per (view, variant, setting), averaged over datasets
        per = {v: {var: np.mean([score[d][v][var][train[d]].mean(axis=0) for d in dss], axis=0) for var in variants} for v in vs}
        best_var = np.stack([np.max(np.stack([per[v][var] for var in variants]), axis=0) for v in vs]).mean(axis=0)
        s = int(best_var.argmax())
        return s, {v: max(variants, key=lambda var: per[v][var][s]) for v in vs}

    out: dict = {"seed": args.seed, "folds": args.folds, "grid_size": len(grid), "variants": variants, "datasets": {}}
    # out-of-fold: shared setting (one for all views and datasets)
    for mode in ("shared", "per_view"):
        oof_h = {ds: {v: np.zeros(len(qids_of[ds])) for v in views} for ds in datasets}
        oof_k = {ds: {v: np.zeros(len(qids_of[ds])) for v in views} for ds in datasets}
        chosen: list = []
        for f in range(args.folds):
            train = {ds: np.concatenate([folds[ds][g] for g in range(args.folds) if g != f]) for ds in datasets}
            if mode == "shared":
                s, var = choose(train)
                picks = {(ds, v): (s, var[v]) for ds in datasets for v in views}
                chosen.append({"fold": f, "setting": grid[s].describe(), "keyword_text": var})
            else:
                picks = {}
                for ds in datasets:
                    for v in views:
                        s, var = choose(train, only_view=v, only_ds=ds)
                        picks[(ds, v)] = (s, var[v])
                        chosen.append(
                            {"fold": f, "dataset": ds, "view": v, "setting": grid[s].describe(), "keyword_text": var[v]}
                        )
            for ds in datasets:
                held = folds[ds][f]
                for v in views:
                    s, var = picks[(ds, v)]
                    oof_h[ds][v][held] = score[ds][v][var][held, s]
                    oof_k[ds][v][held] = kw_q[ds][v][var][held]
        for ds in datasets:
            rows = out["datasets"].setdefault(ds, {"queries": len(qids_of[ds]), "views": {}})["views"]
            for v in views:
                d, k, h = dense_q[ds][v], oof_k[ds][v], oof_h[ds][v]
                row = rows.setdefault(v, {})
                row["dense"] = fig(d, args.seed)
                row[f"{mode}:keyword"] = fig(k, args.seed)
                row[f"{mode}:hybrid"] = fig(h, args.seed)
                row[f"{mode}:hybrid-dense"] = fig(h - d, args.seed)
                row[f"{mode}:hybrid-keyword"] = fig(h - k, args.seed)
        out[f"{mode}_choices"] = chosen
    s, var = choose({ds: np.arange(len(qids_of[ds])) for ds in datasets})
    out["final"] = {
        "setting": grid[s].describe(),
        "keyword_text": var,
        "all_queries": {ds: {v: float(score[ds][v][var[v]][:, s].mean()) for v in views} for ds in datasets},
    }
    # the neighbourhood of the final choice (all train queries): how flat is the optimum?
    top = np.argsort(-np.mean([score[ds][v][var[v]].mean(axis=0) for ds in datasets for v in views], axis=0))[:10]
    out["top10_all_queries"] = [
        {
            "setting": grid[i].describe(),
            "mean": float(np.mean([score[ds][v][var[v]][:, i].mean() for ds in datasets for v in views])),
        }
        for i in top
    ]
    best = {
        m: max(
            (i for i, g in enumerate(grid) if g.method == m),
            key=lambda i: np.mean([score[ds][v][var[v]][:, i].mean() for ds in datasets for v in views]),
        )
        for m in ("rrf", "convex")
    }
    out["best_per_method_all_queries"] = {
        m: {
            "setting": grid[i].describe(),
            "per": {ds: {v: float(score[ds][v][var[v]][:, i].mean()) for v in views} for ds in datasets},
        }
        for m, i in best.items()
    }
    return out


def fig(values: np.ndarray, seed: int) -> dict:
    lo, hi = bootstrap_ci(values, seed=seed)
    return {"mean": float(values.mean()), "ci": [lo, hi]}


def report(args, res: dict) -> None:
    def cell(f: dict, signed: bool = False) -> str:
        m, (lo, hi) = 100 * f["mean"], (100 * f["ci"][0], 100 * f["ci"][1])
        return f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]" if signed else f"{m:.2f} [{lo:.2f}, {hi:.2f}]"

    md = [
        f"# Hybrid fusion, {args.folds}-fold cross-validation over train queries (seed {args.seed}; bootstrap 2,000, seed {args.seed})",
        "",
        f"Grid: {res['grid_size']} fusion settings x keyword texts {', '.join(res['variants'])}. nDCG@10 x 100, out-of-fold.",
        "",
    ]
    for mode, title in (
        ("shared", "one setting for all views and datasets (the default)"),
        ("per_view", "chosen per view and dataset"),
    ):
        md += [
            f"## {title}",
            "",
            "| dataset | view | queries | dense | keyword | hybrid | hybrid - dense | hybrid - keyword |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for ds, d in res["datasets"].items():
            for v, row in d["views"].items():
                md.append(
                    f"| {ds} | {v} | {d['queries']} | {cell(row['dense'])} | {cell(row[mode + ':keyword'])} | {cell(row[mode + ':hybrid'])} "
                    f"| {cell(row[mode + ':hybrid-dense'], True)} | {cell(row[mode + ':hybrid-keyword'], True)} |"
                )
        md.append("")
    md += [
        "Shared choice per fold: "
        + "; ".join(f"fold {c['fold']}: {c['setting']} {c['keyword_text']}" for c in res["shared_choices"]),
        "",
        f"**Final (all train queries):** {res['final']['setting']}, keyword text {res['final']['keyword_text']}; "
        f"nDCG@10 {json.dumps(res['final']['all_queries'])}",
        "",
        "Best of each method on all train queries: "
        + "; ".join(f"{m}: {b['setting']} {json.dumps(b['per'])}" for m, b in res["best_per_method_all_queries"].items()),
        "",
        "Top 10 settings on all train queries: "
        + "; ".join(f"{t['setting']} {100 * t['mean']:.2f}" for t in res["top10_all_queries"]),
        "",
    ]
    path = write_report(args.name, res, "\n".join(md))
    print("\n".join(md))
    print(f"written {path}")


if __name__ == "__main__":
    main()
