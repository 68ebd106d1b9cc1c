"""Ranking metrics for retrieval evaluation (BEIR conventions: graded gains, log2 discount)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    gains = [relevance.get(d, 0) for d in ranked[:k]]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains) if g > 0)
    ideal = sorted((r for r in relevance.values() if r > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    relevant = {d for d, r in relevance.items() if r > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def mrr_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    for i, d in enumerate(ranked[:k]):
        if relevance.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


METRICS = {"ndcg": ndcg_at_k, "recall": recall_at_k, "mrr": mrr_at_k}


def evaluate_rankings(
    rankings: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    cutoffs: Sequence[str] = ("ndcg@1", "ndcg@10", "recall@1", "recall@10", "recall@100", "mrr@10"),
) -> dict[str, float]:
    """Mean of each ``metric@k`` over the queries in ``qrels`` (a missing ranking scores 0)."""
    out: dict[str, float] = {}
    for name in cutoffs:
        metric, k = name.split("@")
        fn = METRICS[metric]
        vals = [fn(rankings.get(q, []), rel, int(k)) for q, rel in qrels.items()]
        out[name] = sum(vals) / len(vals) if vals else 0.0
    return out


def per_query_metrics(
    rankings: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    cutoffs: Sequence[str] = ("ndcg@1", "ndcg@10", "recall@100"),
) -> dict[str, list[float]]:
    """Each ``metric@k`` per query, in ``qrels`` order (a missing ranking scores 0)."""
    out: dict[str, list[float]] = {}
    for name in cutoffs:
        metric, k = name.split("@")
        fn = METRICS[metric]
        out[name] = [fn(rankings.get(q, []), rel, int(k)) for q, rel in qrels.items()]
    return out


def bootstrap_ci(values: Sequence[float], n: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (``n`` resamples with replacement, seeded);
    ``(nan, nan)`` for no values. Pass paired differences to get the interval of a difference."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    if not len(v):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n, len(v)))].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))
