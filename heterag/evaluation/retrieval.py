"""Retrieval benchmarks: index a corpus with a view kind, rank documents for queries, score.

A document's score is its best chunk's score. Dense ranking is exact (all stored vectors are
scored), so figures measure the representation, not the ANN index. Keyword ranking is the
collection's keyword index (BM25 over each record's keyword text, :mod:`heterag.stores.keyword`); hybrid
ranking fuses the two chunk lists exactly as :meth:`heterag.Pipeline.search` does (the top
``candidates`` chunks of each list, the other kind's exact score for every candidate,
:class:`~heterag.retrieval.hybrid.HybridFusion`), then a document scores its best fused chunk.
Documents outside every candidate list follow in dense order, so recall@100 stays comparable.

One ingest per view serves every retrieval mode (:func:`evaluate_modes`); query latency is
:meth:`heterag.Pipeline.search` (``k=10``, query encoding included) on that same index, the modes
interleaved query by query so they share the machine's noise.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from heterag.core.documents import Document
from heterag.core.errors import InvalidInputError
from heterag.evaluation.metrics import bootstrap_ci, evaluate_rankings, per_query_metrics
from heterag.ingest.chunking import DEFAULT_CHUNK_TOKENS
from heterag.ingest.views import RetrievalView, ViewEncoder
from heterag.pipeline.pipeline import Pipeline
from heterag.retrieval.hybrid import HybridFusion, check_retrieval
from heterag.stores import open_store

log = logging.getLogger(__name__)

#: Keyword chunks fetched per query for the keyword ranking (documents = distinct docs among them).
KEYWORD_DEPTH = 1000
#: The metrics reported with bootstrap intervals.
CI_METRICS = ("ndcg@1", "ndcg@10", "recall@100")


@dataclass(frozen=True)
class RankedRun:
    rankings: dict[str, list[str]]  # query id -> doc ids, best first
    units: int  # indexed retrieval units (views)
    encode_seconds: float  # time spent embedding the corpus
    index_seconds: float  # whole ingest (chunking + encoding + store writes)


@dataclass
class IndexedCorpus:
    """A corpus ingested with one view: chunk vectors grouped by document, and the keyword index.

    ``matrix`` rows are the chunks in ``chunk_ids`` order, sorted by document (``doc_of``); ``starts``
    are the first row of each document in ``unique_docs``. ``pipeline`` searches the same store
    (with its keyword index when built with ``keywords=True``).
    """

    pipeline: Pipeline
    chunk_ids: list[str]
    doc_of: np.ndarray
    matrix: np.ndarray
    starts: np.ndarray
    unique_docs: np.ndarray
    units: int
    encode_seconds: float
    index_seconds: float
    row_of: dict[str, int] = field(default_factory=dict)

    @property
    def keywords(self) -> Any:
        """The store's keyword index (:class:`~heterag.stores.keyword.KeywordIndex`), or None."""
        return getattr(self.pipeline.store, "keywords", None)


@contextmanager
def indexed_corpus(
    documents: Sequence[Document],
    *,
    encoder: ViewEncoder,
    view: RetrievalView,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    store: str = "faiss",
    keywords: bool = False,
) -> Iterator[IndexedCorpus]:
    """Ingest ``documents`` into a temporary store (with a keyword index if ``keywords``), yield it, delete it."""
    if not documents:
        raise InvalidInputError("the corpus has no documents")
    with tempfile.TemporaryDirectory(prefix="heterag-eval-") as tmp:
        vs = open_store(store, tmp, "eval", keywords=keywords)
        try:
            pipe = Pipeline(vs, encoder, view, chunk_tokens=chunk_tokens)
            report = pipe.ingest(documents, batch_documents=256, total=len(documents))
            if report.failures:
                log.warning("%d documents could not be indexed, e.g. %s", len(report.failures), report.failures[0])
            records = vs.get(include_vectors=True)
            doc_ids = np.array([r.metadata["doc_id"] for r in records])
            order = np.argsort(doc_ids, kind="stable")
            doc_ids = doc_ids[order]
            matrix = np.stack([records[i].vector for i in order]).astype(np.float32)
            matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
            chunk_ids = [records[i].id for i in order]
            starts = np.flatnonzero(np.r_[True, doc_ids[1:] != doc_ids[:-1]])
            yield IndexedCorpus(pipe, chunk_ids, doc_ids, matrix, starts, doc_ids[starts], len(records),
                                report.encode_seconds, report.seconds, {c: i for i, c in enumerate(chunk_ids)})
        finally:
            vs.close()


def encode_queries(encoder: ViewEncoder, texts: Sequence[str]) -> np.ndarray:
    """Query vectors (an adapter's query side where the encoder has one), unit-normalised."""
    encode = getattr(encoder, "encode_queries", encoder.encode)  # adapters have a query side (heterag.encoding.adapters)
    q = np.asarray(encode(list(texts)), dtype=np.float32)
    return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)


def dense_rankings(ic: IndexedCorpus, qids: Sequence[str], qvecs: np.ndarray, depth: int = 100,
                   batch: int = 64) -> dict[str, list[str]]:
    """Documents by their best chunk's cosine, best first, ``depth`` per query (exact)."""
    rankings: dict[str, list[str]] = {}
    top = min(depth, len(ic.unique_docs))
    for b in range(0, len(qids), batch):
        scores = qvecs[b : b + batch] @ ic.matrix.T
        doc_scores = np.maximum.reduceat(scores, ic.starts, axis=1)
        part = np.argpartition(-doc_scores, top - 1, axis=1)[:, :top]
        for row, qid in enumerate(qids[b : b + batch]):
            best = part[row][np.argsort(-doc_scores[row, part[row]], kind="stable")]
            rankings[qid] = ic.unique_docs[best].tolist()
    return rankings


@dataclass(frozen=True)
class Candidates:
    """One query's chunk candidates: the dense and keyword top lists ``(chunk id, score)``, best first,
    and for every candidate both exact scores (``exact[id] = {"dense": cosine, "keyword": bm25}``)."""

    dense: list[tuple[str, float]]
    keyword: list[tuple[str, float]]
    exact: dict[str, dict[str, float]]


def candidate_lists(ic: IndexedCorpus, queries: Mapping[str, str], qvecs: np.ndarray, depth: int,
                    keywords: Any = None) -> dict[str, Candidates]:
    """Dense top-``depth`` and keyword top-``depth`` chunks per query with both exact scores for each
    (computed once; :func:`fuse_to_docs` then fuses offline for any ``candidates <= depth``).

    ``keywords``: the keyword index to search (default: the corpus's own)."""
    index = keywords if keywords is not None else ic.keywords
    if index is None:
        raise InvalidInputError("this corpus was indexed without a keyword index (keywords=True)")
    out: dict[str, Candidates] = {}
    qids = list(queries)
    n = min(depth, len(ic.chunk_ids))
    for row, qid in enumerate(qids):
        cos = ic.matrix @ qvecs[row]
        part = np.argpartition(-cos, n - 1)[:n]
        part = part[np.argsort(-cos[part], kind="stable")]
        dense = [(ic.chunk_ids[i], float(cos[i])) for i in part]
        keyword = index.search(queries[qid], depth)
        kw = dict(keyword)
        missing = [i for i, _ in dense if i not in kw]
        if missing and keyword:
            kw.update(index.scores(queries[qid], missing))
        exact = {i: {"dense": float(cos[ic.row_of[i]]), "keyword": kw.get(i, 0.0)}
                 for i in dict.fromkeys([i for i, _ in dense] + [i for i, _ in keyword]) if i in ic.row_of}
        out[qid] = Candidates(dense, keyword, exact)
    return out


def docs_from_chunks(ranked: Sequence[tuple[str, float]], doc_of: Mapping[str, str], depth: int,
                     fill: Sequence[str] = ()) -> list[str]:
    """Documents in the order of their best chunk in ``ranked``, then those of ``fill`` not yet listed."""
    out: dict[str, None] = {}
    for cid, _ in ranked:
        d = doc_of.get(cid)
        if d is not None:
            out.setdefault(d, None)
            if len(out) >= depth:
                return list(out)
    for d in fill:
        if len(out) >= depth:
            break
        out.setdefault(d, None)
    return list(out)


def fuse_to_docs(c: Candidates, fusion: HybridFusion, doc_of: Mapping[str, str], depth: int = 100,
                 fill: Sequence[str] = ()) -> list[str]:
    """Documents for one query by hybrid fusion of its candidates, as :meth:`heterag.Pipeline.search` fuses
    (each list cut to ``fusion.candidates``; a query without keyword hits is answered by dense alone)."""
    dense = c.dense[: fusion.candidates]
    keyword = c.keyword[: fusion.candidates]
    if not keyword:
        return docs_from_chunks(dense, doc_of, depth, fill)
    return docs_from_chunks(fusion.fuse(dense, keyword, c.exact), doc_of, depth, fill)


def forget_queries(encoder: Any) -> None:
    """Empty the text encoder's cache of recently encoded texts (:class:`heterag.encoding.text_encoder.TextEncoder`
    keeps one), so a timed query pays for its encoding even when another mode just encoded it."""
    recent, lock = getattr(encoder, "_recent", None), getattr(encoder, "_recent_lock", None)
    if recent is not None and lock is not None:
        with lock:
            recent.clear()


def latency_ms(pipe: Pipeline, texts: Sequence[str], modes: Sequence[str], hybrid: HybridFusion, k: int = 10,
               warmup: int = 3) -> dict[str, list[float]]:
    """Milliseconds of ``pipe.search(text, k, retrieval=mode)`` per query and mode, modes interleaved, query
    encoding included (the encoder's cache of recent texts is emptied before every timed search)."""
    for t in texts[:warmup]:
        for m in modes:
            pipe.search(t, k=k, retrieval=m, hybrid=hybrid)
    out: dict[str, list[float]] = {m: [] for m in modes}
    for t in texts:
        for m in modes:
            forget_queries(pipe.encoder)
            t0 = time.perf_counter()
            pipe.search(t, k=k, retrieval=m, hybrid=hybrid)
            out[m].append((time.perf_counter() - t0) * 1000)
    return out


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
    """Index ``documents`` in a temporary store and rank them for every query (dense, exact)."""
    if not queries:
        raise InvalidInputError("there are no queries to evaluate")
    with indexed_corpus(documents, encoder=encoder, view=view, chunk_tokens=chunk_tokens, store=store) as ic:
        qids = list(queries)
        rankings = dense_rankings(ic, qids, encode_queries(encoder, [queries[q] for q in qids]), depth, query_batch)
        return RankedRun(rankings=rankings, units=ic.units, encode_seconds=ic.encode_seconds, index_seconds=ic.index_seconds)


def evaluate_modes(
    documents: Sequence[Document],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    retrieval: Sequence[str] = ("dense",),
    hybrid: HybridFusion | str | None = None,
    encoder: ViewEncoder,
    view: RetrievalView,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    store: str = "faiss",
    depth: int = 100,
    latency_queries: int = 200,
    seed: int = 0,
    resamples: int = 2000,
) -> list[dict[str, Any]]:
    """One ingest of ``documents`` with ``view``, then one row of figures per retrieval mode.

    Each row: ``retrieval`` (and ``hybrid``, the fusion's spec, for hybrid), the means of
    :func:`~heterag.evaluation.metrics.evaluate_rankings`, a bootstrap 95% interval for nDCG@1, nDCG@10 and
    recall@100 (``<metric>_ci``; ``resamples`` resamples of the queries, ``seed``), the paired difference
    of nDCG@10 to dense with its interval (``ndcg@10_delta_vs_dense``, ``..._ci``) when dense is among the
    modes, query latency p50/p95 in ms over the first ``latency_queries`` queries (0: not timed),
    ``units``, ``documents``, ``queries``, ``encode_seconds``, ``index_seconds``, ``total_seconds``.
    """
    t_start = time.perf_counter()
    modes = [check_retrieval(m) for m in dict.fromkeys(retrieval)]
    if not modes:
        raise InvalidInputError("no retrieval mode to evaluate")
    fusion = HybridFusion.parse(hybrid)
    qrels = {q: rel for q, rel in qrels.items() if q in queries}
    if not qrels:
        raise InvalidInputError("there are no queries to evaluate")
    qids = list(qrels)
    texts = {q: queries[q] for q in qids}
    need_keywords = any(m != "dense" for m in modes)
    with indexed_corpus(documents, encoder=encoder, view=view, chunk_tokens=chunk_tokens, store=store,
                        keywords=need_keywords) as ic:
        qvecs = encode_queries(encoder, [texts[q] for q in qids])
        dense = dense_rankings(ic, qids, qvecs, depth)
        doc_of = dict(zip(ic.chunk_ids, ic.doc_of.tolist(), strict=True))
        rankings: dict[str, dict[str, list[str]]] = {"dense": dense}
        if "keyword" in modes:
            rankings["keyword"] = {q: docs_from_chunks(ic.keywords.search(texts[q], max(KEYWORD_DEPTH, depth)), doc_of, depth)
                                   for q in qids}
        if "hybrid" in modes:
            cands = candidate_lists(ic, texts, qvecs, fusion.candidates)
            rankings["hybrid"] = {q: fuse_to_docs(cands[q], fusion, doc_of, depth, dense[q]) for q in qids}
        lat = latency_ms(ic.pipeline, [texts[q] for q in qids[:latency_queries]], modes, fusion) if latency_queries > 0 else {}
        units, enc_s, idx_s = ic.units, ic.encode_seconds, ic.index_seconds
    per_q = {m: per_query_metrics(rankings[m], qrels, CI_METRICS) for m in modes}
    rows = []
    for m in modes:
        row: dict[str, Any] = {"retrieval": m}
        if m == "hybrid":
            row["hybrid"] = fusion.describe()
        row.update(evaluate_rankings(rankings[m], qrels))
        for name in CI_METRICS:
            row[f"{name}_ci"] = list(bootstrap_ci(per_q[m][name], n=resamples, seed=seed))
        if "dense" in modes and m != "dense":
            diff = np.subtract(per_q[m]["ndcg@10"], per_q["dense"]["ndcg@10"])
            row["ndcg@10_delta_vs_dense"] = float(diff.mean())
            row["ndcg@10_delta_vs_dense_ci"] = list(bootstrap_ci(diff, n=resamples, seed=seed))
        if m in lat:
            row.update(latency_p50_ms=round(statistics.median(lat[m]), 2),
                       latency_p95_ms=round(float(np.percentile(lat[m], 95)), 2), latency_queries=len(lat[m]))
        row.update(units=units, documents=len(documents), queries=len(qids), encode_seconds=round(enc_s, 3),
                   index_seconds=round(idx_s, 3), bootstrap={"resamples": resamples, "seed": seed})
        rows.append(row)
    total = round(time.perf_counter() - t_start, 3)
    for row in rows:
        row["total_seconds"] = total
    return rows


def evaluate(
    documents: Sequence[Document],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    retrieval: str = "dense",
    **kwargs: Any,
) -> dict[str, Any]:
    """Rank and score with one retrieval mode; the row of :func:`evaluate_modes` (metrics, intervals,
    latency, ``units``, ``encode_seconds``, ``index_seconds``, ``queries``)."""
    return evaluate_modes(documents, queries, qrels, retrieval=(retrieval,), **kwargs)[0]
