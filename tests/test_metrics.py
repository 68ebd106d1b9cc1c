"""Ranking metrics against hand-computed values (BEIR conventions)."""

from __future__ import annotations

import math

import pytest

from heterag.evaluation.metrics import evaluate_rankings, mrr_at_k, ndcg_at_k, recall_at_k


def test_ndcg_graded_gains_and_log2_discount():
    rel = {"a": 2, "b": 1, "c": 0}
    ranked = ["c", "b", "a"]
    dcg = 1 / math.log2(3) + 2 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(ranked, rel, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["a", "b"], rel, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["c"], rel, 1) == 0.0
    assert ndcg_at_k(["a"], {"x": 0}, 10) == 0.0  # no relevant documents at all


def test_recall_and_mrr_cutoffs():
    rel = {"a": 1, "b": 1}
    ranked = ["x", "a", "y", "b"]
    assert recall_at_k(ranked, rel, 1) == 0.0
    assert recall_at_k(ranked, rel, 2) == 0.5
    assert recall_at_k(ranked, rel, 4) == 1.0
    assert mrr_at_k(ranked, rel, 10) == 0.5
    assert mrr_at_k(ranked, rel, 1) == 0.0


def test_evaluate_rankings_averages_and_counts_missing_queries_as_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    out = evaluate_rankings({"q1": ["a", "b"]}, qrels, cutoffs=("recall@1", "mrr@10", "ndcg@10"))
    assert out == {"recall@1": 0.5, "mrr@10": 0.5, "ndcg@10": 0.5}
