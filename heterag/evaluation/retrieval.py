"""Retrieval benchmarks: index a corpus with a view kind, rank documents for queries, score.

A document's score is its best chunk's score. Ranking is exact (all stored vectors
are scored), so figures measure the representation, not the ANN index.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from heterag.core.documents import Document
from heterag.core.errors import InvalidInputError
from heterag.evaluation.metrics import evaluate_rankings
from heterag.ingest.chunking import DEFAULT_CHUNK_TOKENS
from heterag.ingest.views import RetrievalView, ViewEncoder
from heterag.pipeline.pipeline import Pipeline
from heterag.stores import open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankedRun:
    rankings: dict[str, list[str]]  # query id -> doc ids, best first
    units: int  # indexed retrieval units (views)
    encode_seconds: float  # time spent embedding the corpus
    index_seconds: float  # whole ingest (chunking + encoding + store writes)


def rank_documents(
    documents: Sequence[Document],
    queries: Mapping[str, str],
    *,
    encoder: ViewEncoder,
    view: RetrievalView,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    store: str = "faiss",
    depth: int = 100,
    query_batch: int = 64,
) -> RankedRun:
    """Index ``documents`` in a temporary store and rank them for every query."""
    if not documents:
        raise InvalidInputError("the corpus has no documents")
    if not queries:
        raise InvalidInputError("there are no queries to evaluate")
    with tempfile.TemporaryDirectory(prefix="heterag-eval-") as tmp:
        vs = open_store(store, tmp, "eval")
        try:
            pipe = Pipeline(vs, encoder, view, chunk_tokens=chunk_tokens)
            report = pipe.ingest(documents, batch_documents=256, total=len(documents))
            if report.failures:
                log.warning("%d documents could not be indexed, e.g. %s", len(report.failures), report.failures[0])
            records = vs.get(include_vectors=True)
        finally:
            vs.close()
    doc_ids = np.array([r.metadata["doc_id"] for r in records])
    order = np.argsort(doc_ids, kind="stable")
    doc_ids = doc_ids[order]
    matrix = np.stack([records[i].vector for i in order]).astype(np.float32)
    starts = np.flatnonzero(np.r_[True, doc_ids[1:] != doc_ids[:-1]])
    unique_docs = doc_ids[starts]
    qids = list(queries)
    encode_queries = getattr(encoder, "encode_queries", encoder.encode)  # adapters have a query side (heterag.encoding.adapters)
    qvecs = encode_queries([queries[q] for q in qids])
    rankings: dict[str, list[str]] = {}
    top = min(depth, len(unique_docs))
    for b in range(0, len(qids), query_batch):
        scores = qvecs[b : b + query_batch] @ matrix.T
        doc_scores = np.maximum.reduceat(scores, starts, axis=1)
        part = np.argpartition(-doc_scores, top - 1, axis=1)[:, :top]
        for row, qid in enumerate(qids[b : b + query_batch]):
            best = part[row][np.argsort(-doc_scores[row, part[row]], kind="stable")]
            rankings[qid] = unique_docs[best].tolist()
    return RankedRun(rankings=rankings, units=len(records), encode_seconds=report.encode_seconds, index_seconds=report.seconds)


def evaluate(
    documents: Sequence[Document],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    **kwargs: Any,
) -> dict[str, Any]:
    """Rank and score; returns metrics plus ``units``, ``encode_seconds``, ``index_seconds``, ``queries``."""
    t = time.perf_counter()
    qrels = {q: rel for q, rel in qrels.items() if q in queries}
    run = rank_documents(documents, {q: queries[q] for q in qrels}, **kwargs)
    out: dict[str, Any] = dict(evaluate_rankings(run.rankings, qrels))
    out.update(
        units=run.units,
        documents=len(documents),
        queries=len(run.rankings),
        encode_seconds=round(run.encode_seconds, 3),
        index_seconds=round(run.index_seconds, 3),
        total_seconds=round(time.perf_counter() - t, 3),
    )
    return out
