"""Adaptive prompt tuning on SciFact (train queries only, 5-fold by query) and PubMedQA (issue #10).

For each view, every train query is scored once by an adapter that never saw it: the queries
are cut into ``--folds`` query-level folds; for each fold a labelled adapter is trained on the
other folds' qrels (hard negatives mined from the view's index) and scores the held-out fold.
The label-free (pseudo-query) adapter is trained once on the corpus alone and scores every
query. ``--full`` adds query-side full fine-tuning with the same pairs, loss and folds.
Figures: nDCG@10 / nDCG@1 with 95% paired bootstrap CIs of the difference to the same view
without adapter, adapter size on disk, training time, encode-time ratios (adapter / none,
median of interleaved rounds).

    python eval/tune_adapter.py --views heterag,late --pseudo 2000 --full
    python eval/tune_adapter.py --dataset pubmedqa --views naive,heterag,late --pseudo 2000 --full
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import bootstrap_ci, require_data, write_report

from corpora import default_data_dir
from heterag import chunk_document, load_text_encoder, make_view
from heterag.cli.tune import parse_ranks
from heterag.encoding.adapters import AdaptedEncoder, init_prompt
from heterag.evaluation.metrics import ndcg_at_k
from heterag.training.prompts import (
    PairSet,
    TuneConfig,
    beir_pairs,
    build_unit_index,
    pseudo_pairs,
    pubmedqa_pairs,
    train_adapter,
)

log = logging.getLogger("tune_adapter")


def per_query(rankings: list[list[str]], qids: list[str], qrels: dict[str, dict[str, int]]) -> dict[str, tuple[float, float]]:
    return {q: (ndcg_at_k(r, qrels[q], 10), ndcg_at_k(r, qrels[q], 1)) for q, r in zip(qids, rankings, strict=True)}


def paired(base: dict[str, tuple[float, float]], new: dict[str, tuple[float, float]], k: int, seed: int) -> dict[str, float]:
    qs = sorted(new)
    d = [new[q][k] - base[q][k] for q in qs]
    lo, hi = bootstrap_ci(d, seed=seed)
    b = [base[q][k] for q in qs]
    n = [new[q][k] for q in qs]
    return {"base": float(np.mean(b)), "value": float(np.mean(n)), "delta": float(np.mean(d)), "lo": lo, "hi": hi,
            "value_ci": bootstrap_ci(n, seed=seed), "n": len(qs)}


def timed_ratio(fa, fb, rounds: int = 3) -> tuple[float, float, float]:
    """Median seconds of ``fa`` and ``fb`` over interleaved rounds, and their ratio b/a."""
    ta, tb = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        fa()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        fb()
        tb.append(time.perf_counter() - t)
    a, b = statistics.median(ta), statistics.median(tb)
    return a, b, b / a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="scifact", choices=["scifact", "pubmedqa"])
    ap.add_argument("--views", default="heterag,late")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=4)
    ap.add_argument("--sides", default="query")
    ap.add_argument("--deep", action="store_true", help="deep prompts: one at every encoder layer (TuneConfig.deep)")
    ap.add_argument("--pseudo", type=int, default=0, help="pseudo pairs for the label-free adapter (0: skip)")
    ap.add_argument("--pseudo-kind", default="title", help="title, conclusion or sentence (heterag.training.prompts.pseudo_pairs)")
    ap.add_argument("--pseudo-ranks", default=None, metavar="LO:HI", help="rank filter for pseudo pairs (untrained encoder)")
    ap.add_argument("--score-folds", default=None, help="score the pseudo adapter only on these folds' queries "
                    "(e.g. 1,2,3,4 when fold 0 chose its variant)")
    ap.add_argument("--mix", action="store_true", help="also a labelled adapter trained on its folds' pairs plus the "
                    "--pseudo pairs (label 'mixed')")
    ap.add_argument("--no-pseudo-alone", action="store_true", help="with --mix: skip the pseudo-only adapter")
    ap.add_argument("--full", action="store_true", help="also query-side full fine-tuning")
    ap.add_argument("--epochs", type=int, default=15, help="most epochs (patience 1); 4 in the runs before 2026-11-30 05:00")
    ap.add_argument("--full-epochs", type=int, default=2)
    ap.add_argument("--full-folds", default=None, help="folds for --full (default: all)")
    ap.add_argument("--corpus-docs", type=int, default=0, help="index only the judged documents plus seeded random others "
                    "up to this many (0: the whole corpus)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk-tokens", type=int, default=64)
    ap.add_argument("--cache", default=None, help="folder of cached index vectors (<view>.npy, in corpus order)")
    ap.add_argument("--only-folds", default=None, help="run only these folds (comma-separated), for quick checks")
    ap.add_argument("--no-labelled", action="store_true", help="skip the labelled adapter (e.g. to run --full alone)")
    ap.add_argument("--no-view-ratio", action="store_true", help="skip the view-side encode-time measurement")
    ap.add_argument("--no-query-ratio", action="store_true", help="skip the query encode-time measurement")
    ap.add_argument("--encode-only", action="store_true", help="only encode the views' indexes into --cache, then stop")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("sentence_transformers", "transformers", "httpx", "corpora"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    enc = load_text_encoder(None)
    if args.dataset == "scifact":
        path = default_data_dir() / "scifact_train"
        require_data(path, "SciFact (train)")
        pairset, documents = beir_pairs(path, "train")
        eval_queries = {p.qid: p.query for p in pairset.pairs}
        qrels: dict[str, dict[str, int]] = {}
        for p in pairset.pairs:
            qrels.setdefault(p.qid, {})[p.doc_id] = 1
        train_sets = None
    else:
        require_data(default_data_dir() / "pubmedqa", "PubMedQA")
        train_pairs, documents = pubmedqa_pairs(split="train")
        test_pairs, _ = pubmedqa_pairs(split="test")
        eval_queries = {p.qid: p.query for p in test_pairs.pairs}
        qrels = {p.qid: {p.doc_id: 1} for p in test_pairs.pairs}
        train_sets = train_pairs
    qids = sorted(eval_queries)
    if args.corpus_docs:
        judged = {d for rel in qrels.values() for d in rel}
        if train_sets is not None:
            judged |= {p.doc_id for p in train_sets.pairs}
        others = [d for d in documents if d.id not in judged]
        pick = set(np.random.default_rng([args.seed, 5]).permutation(len(others))[: max(0, args.corpus_docs - len(judged))].tolist())
        documents = [d for d in documents if d.id in judged] + [d for i, d in enumerate(others) if i in pick]
    log.info("corpus: %d documents", len(documents))
    cds = [chunk_document(d, enc.tokenize, args.chunk_tokens) for d in documents]
    rng = np.random.default_rng(args.seed)
    folds = np.array_split(rng.permutation(qids), args.folds) if train_sets is None else [np.array(qids)]
    only = {int(x) for x in args.only_folds.split(",")} if args.only_folds else None
    cfg = TuneConfig(prompt_tokens=args.prompt_tokens, sides=args.sides, deep=args.deep, epochs=args.epochs, temperature=args.temperature,
                     lr=args.lr if args.lr is not None else 5e-3, seed=args.seed, patience=1)
    results: dict[str, dict] = {}

    def report(partial: bool) -> None:
        _report(args, results, partial)

    tmp = Path(tempfile.mkdtemp(prefix="tune-adapter-"))
    def run_view(vname: str) -> None:
        nonlocal folds
        view = make_view(vname)
        # cached index vectors, in corpus order; a corpus subset has its own file
        stem = vname if not args.corpus_docs else f"{vname}-docs{args.corpus_docs}-seed{args.seed}"
        cached = Path(args.cache) / f"{stem}.npy" if args.cache and args.dataset == "scifact" else None
        t = time.perf_counter()
        vectors = np.load(cached) if cached is not None and cached.exists() else None
        units = build_unit_index(cds, view, enc, vectors=vectors)
        index_seconds = time.perf_counter() - t
        log.info("%s: %d units (%s, %.0f s)", vname, units.n_index, "cached" if vectors is not None else "encoded", index_seconds)
        if cached is not None and vectors is None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.save(cached.with_suffix(".tmp.npy"), units.vectors)
            cached.with_suffix(".tmp.npy").replace(cached)
        if args.encode_only:
            return
        qtexts = [eval_queries[q] for q in qids]
        base = per_query(units.rank(enc.encode(qtexts)), qids, qrels)
        res: dict = {"units": units.n_index, "queries": len(qids), "folds": [sorted(f.tolist()) for f in folds],
                     "per_query_none": {q: [round(v, 5) for v in base[q]] for q in qids}, "none": {
            "ndcg@10": float(np.mean([base[q][0] for q in qids])), "ndcg@1": float(np.mean([base[q][1] for q in qids]))}}

        def evaluate_folds(label: str, config: TuneConfig, pairs_for, fold_filter=None) -> None:
            scores: dict[str, tuple[float, float]] = {}
            secs, sizes, hashes, epochs = [], [], [], []
            last = None
            for f, held in enumerate(folds):
                if only is not None and f not in only or fold_filter is not None and f not in fold_filter:
                    continue
                held_set = set(held.tolist())
                pairs = pairs_for(held_set)
                assert not ({p.qid for p in pairs.pairs} & held_set), "a held-out query leaked into training"
                result = train_adapter(pairs, units, enc, config, progress=False)
                w, j = result.adapter.save(tmp / f"{vname}-{label}-{f}")
                sizes.append(w.stat().st_size + j.stat().st_size)
                secs.append(result.metrics["seconds"])
                epochs.append(result.metrics["best_epoch"])
                hashes.append(result.adapter.hash)
                adapted = AdaptedEncoder(enc, result.adapter)
                ev_units = units
                if result.adapter.applies_to_views:
                    ev_units = build_unit_index(cds, view, adapted)
                hq = sorted(held_set)
                scores.update(per_query(ev_units.rank(adapted.encode_queries([eval_queries[q] for q in hq])), hq, qrels))
                log.info("%s %s fold %d: nDCG@10 %.4f (none %.4f) in %.0f s", vname, label, f,
                         np.mean([scores[q][0] for q in hq]), np.mean([base[q][0] for q in hq]), secs[-1])
                last = adapted
                res[label] = {"ndcg@10": paired(base, scores, 0, args.seed), "ndcg@1": paired(base, scores, 1, args.seed),
                              "per_query": {q: [round(v, 5) for v in scores[q]] for q in sorted(scores)},
                              "train_seconds": secs, "bytes_on_disk": sizes, "best_epochs": epochs, "hashes": hashes,
                              "partial": True}
                results[vname] = res
                report(partial=True)  # every finished fold is on disk
            res[label] = {"ndcg@10": paired(base, scores, 0, args.seed), "ndcg@1": paired(base, scores, 1, args.seed),
                          "per_query": {q: [round(v, 5) for v in scores[q]] for q in sorted(scores)},
                          "train_seconds": secs, "bytes_on_disk": sizes, "best_epochs": epochs, "hashes": hashes,
                          "config": {k: v for k, v in vars(config).items()}}
            if last is not None and not args.no_query_ratio:
                res[label]["encode_ratio_queries"] = timed_ratio(lambda: enc.encode(qtexts), lambda: last.encode_queries(qtexts))
            results[vname] = res
            report(partial=True)

        def labelled(held: set[str]) -> PairSet:
            if train_sets is not None:
                return train_sets
            return PairSet([p for p in pairset.pairs if p.qid not in held], "beir", pairset.skipped)

        if not args.no_labelled:
            evaluate_folds("labelled", cfg, labelled)
        if args.pseudo:
            import copy

            punits = copy.deepcopy(units)
            t = time.perf_counter()
            pseudo = pseudo_pairs(cds, view, enc, punits, n=args.pseudo, seed=args.seed, chunk_tokens=args.chunk_tokens,
                                  kind=args.pseudo_kind, keep_ranks=parse_ranks(args.pseudo_ranks))
            for note in pseudo.notes:
                log.info("pseudo pairs: %s", note)
            pseudo_prep = time.perf_counter() - t
            saved = units
            units = punits
            folds_saved = folds
            scored = qids
            if args.score_folds:
                scored = sorted(q for f in args.score_folds.split(",") for q in folds[int(f)].tolist())
            folds = [np.array(scored)]  # no labels used: one adapter scores every (chosen) query
            if not args.no_pseudo_alone:
                evaluate_folds("pseudo", cfg, lambda held: pseudo)
                res["pseudo"]["pairs"] = len(pseudo.pairs)
                res["pseudo"]["prep_seconds"] = round(pseudo_prep, 1)
                res["pseudo"]["notes"] = pseudo.notes
            folds = folds_saved
            if args.mix:  # labelled pairs of the training folds plus the label-free pairs
                evaluate_folds("mixed", cfg, lambda held: PairSet(labelled(held).pairs + pseudo.pairs, "beir+pseudo"))
                res["mixed"]["pseudo_pairs"] = len(pseudo.pairs)
                res["mixed"]["notes"] = pseudo.notes
            units = saved
        if args.full:
            ff = {int(x) for x in args.full_folds.split(",")} if args.full_folds else None
            evaluate_folds("full", TuneConfig(full=True, sides="query", epochs=args.full_epochs, batch_size=32, seed=args.seed,
                                              temperature=args.temperature, patience=1), labelled, ff)
        # view-side encode-time ratio for a view prompt of the same P (what a view/shared/separate adapter costs)
        from heterag.encoding.adapters import Adapter, encoder_weights_hash

        if not args.no_view_ratio:
            vp = Adapter(kind="prompt", base_model=enc.identity, base_hash=encoder_weights_hash(enc), prompt_tokens=args.prompt_tokens,
                         sides="view", hidden=int(enc.dim), tensors={"prompt": init_prompt(enc, args.prompt_tokens)})
            vadapted = AdaptedEncoder(enc, vp)
            sample = cds[:300]
            res["encode_ratio_views_with_view_prompt"] = timed_ratio(lambda: view.embed(sample, enc), lambda: view.embed(sample, vadapted))
        results[vname] = res
        report(partial=False)

    for vname in [v.strip() for v in args.views.split(",") if v.strip()]:
        run_view(vname)
    for p in tmp.glob("*"):
        p.unlink()
    tmp.rmdir()


def _report(args, results, partial: bool) -> None:
    name = args.name or f"tune_adapter_{args.dataset}_P{args.prompt_tokens}_{args.sides}" + ("_deep" if args.deep else "")
    deep = " (deep)" if args.deep else ""
    lines = [f"# Adaptive prompt tuning: {args.dataset}, P={args.prompt_tokens}{deep}, sides={args.sides}, seed {args.seed}", "",
             "| view | adapter | nDCG@10 [95% CI] | ΔnDCG@10 [95% CI] | nDCG@1 [95% CI] | ΔnDCG@1 [95% CI] | size (bytes) | train s "
             "(mean) | query encode × |", "|---|---|---|---|---|---|---|---|---|"]
    for vname, res in results.items():
        lines.append(f"| {vname} | none | {res['none']['ndcg@10']:.4f} | | {res['none']['ndcg@1']:.4f} | | | | |")
        for label in ("labelled", "pseudo", "mixed", "full"):
            if label not in res:
                continue
            r = res[label]
            a, b = r["ndcg@10"], r["ndcg@1"]
            lines.append(f"| {vname} | {label} | {a['value']:.4f} [{a['value_ci'][0]:.3f}, {a['value_ci'][1]:.3f}] | "
                         f"{100 * a['delta']:+.2f} [{100 * a['lo']:+.2f}, {100 * a['hi']:+.2f}] | {b['value']:.4f} "
                         f"[{b['value_ci'][0]:.3f}, {b['value_ci'][1]:.3f}] | {100 * b['delta']:+.2f} [{100 * b['lo']:+.2f}, "
                         f"{100 * b['hi']:+.2f}] | {max(r['bytes_on_disk'])} | {np.mean(r['train_seconds']):.0f} | "
                         f"{r.get('encode_ratio_queries', (0, 0, float('nan')))[2]:.2f} |")
        if "encode_ratio_views_with_view_prompt" in res:
            lines.append(f"| {vname} | (view prompt P={args.prompt_tokens}, view encode ×) | | | | | | | "
                         f"{res['encode_ratio_views_with_view_prompt'][2]:.2f} |")
    md = "\n".join(lines) + "\n"
    if not partial:
        print(md)
    path = write_report(name, {"args": vars(args), "results": results, "complete": not partial}, md)
    log.info("report written: %s", path)


if __name__ == "__main__":
    main()
