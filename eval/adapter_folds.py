"""Re-score a ``tune_adapter.py`` run on chosen query folds (issue #10): ΔnDCG@10 / ΔnDCG@1 of each
adapter against the same view without adapter, paired 95% bootstrap CIs (2,000 resamples), from the
per-query scores the run stored. Used to report figures on the folds that were *not* used to choose
a setting (fold 0 is the development fold: ``--folds 1,2,3,4``), and to read the development fold.

    python eval/adapter_folds.py eval/out/i10_pseudo_title.json --folds 1,2,3,4
    python eval/adapter_folds.py eval/out/i10_pseudo_title.json --folds 0
    python eval/adapter_folds.py --merge eval/out/i10_labelled_P4_f{1,2,3,4}.json   # one run per fold, pooled
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from _common import bootstrap_ci


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="tune_adapter.py JSON reports (eval/out/NAME.json)")
    ap.add_argument("--folds", default="1,2,3,4", help="folds to score (default 1,2,3,4: all but the development fold 0)")
    ap.add_argument("--merge", action="store_true", help="pool the runs' per-query scores (runs of disjoint folds)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    wanted = [int(x) for x in args.folds.split(",")]
    print(f"| run | view | adapter | queries | nDCG@10 none | nDCG@10 | ΔnDCG@10 [95% CI] | nDCG@1 none | nDCG@1 | "
          f"ΔnDCG@1 [95% CI] |  (folds {args.folds})")
    print("|---|---|---|---|---|---|---|---|---|---|")
    loaded = [(path.rsplit("/", 1)[-1], json.load(open(path))["results"]) for path in args.runs]
    if args.merge:
        pooled: dict = {}
        for _, results in loaded:
            for vname, res in results.items():
                into = pooled.setdefault(vname, {"folds": res["folds"], "per_query_none": res["per_query_none"]})
                for label in ("labelled", "pseudo", "mixed", "full"):
                    if label in res and "per_query" in res[label]:
                        into.setdefault(label, {"per_query": {}})["per_query"].update(res[label]["per_query"])
        loaded = [("+".join(n for n, _ in loaded), pooled)]
    for name, results in loaded:
        for vname, res in results.items():
            if "per_query_none" not in res:
                continue
            qs = sorted({q for f in wanted for q in res["folds"][f]})
            base = res["per_query_none"]
            for label in ("labelled", "pseudo", "mixed", "full"):
                if label not in res or "per_query" not in res[label]:
                    continue
                new = res[label]["per_query"]
                have = [q for q in qs if q in new]
                if not have:
                    continue
                cells = []
                for k in (0, 1):
                    b = np.array([base[q][k] for q in have])
                    n = np.array([new[q][k] for q in have])
                    lo, hi = bootstrap_ci(n - b, seed=args.seed)
                    cells.append(f"{b.mean():.4f} | {n.mean():.4f} | {100 * (n - b).mean():+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]")
                print(f"| {name} | {vname} | {label} | {len(have)} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
