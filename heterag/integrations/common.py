"""Hit metadata shared by the integrations, without importing any framework."""

from __future__ import annotations

from typing import Any

from heterag.core.results import Hit


def node_metadata(hit: Hit) -> dict[str, Any]:
    """Flat, JSON-able description of a hit: source, chunk_id, score, scores, found_by (``dense``, ``keyword``
    or both), view, title, heading, image, and the chunk's own metadata under ``metadata``."""
    return {"source": hit.doc_id, "chunk_id": hit.chunk_id, "score": float(hit.score), "scores": dict(hit.scores),
            "found_by": list(hit.found_by), "view": hit.view, "title": hit.title, "heading": list(hit.heading),
            "image": hit.image, "metadata": dict(hit.metadata)}


def check_search_options(retrieval: str | None, hybrid: Any) -> tuple[str | None, Any]:
    """``(retrieval, hybrid)`` checked: a retrieval mode of :data:`heterag.retrieval.hybrid.RETRIEVAL_MODES` (or None)
    and a :class:`~heterag.retrieval.hybrid.HybridFusion` parsed from its spec (or None); one-line
    :class:`~heterag.core.errors.HeteragError` otherwise."""
    from heterag.retrieval.hybrid import HybridFusion, check_retrieval

    return (check_retrieval(retrieval) if retrieval is not None else None,
            HybridFusion.parse(hybrid) if hybrid is not None else None)


def search_hits(pipeline: Any, query: str | None, *, k: int, where: Any, image: Any, retrieval: str | None,
                hybrid: Any) -> list[Hit]:
    """The hits of ``pipeline`` for a query, searched with ``retrieval`` and ``hybrid`` (None: the pipeline's own)."""
    if retrieval is None and hybrid is None:
        return list(pipeline.retrieve(query, k=k, where=where, image=image))
    return list(pipeline.search(query, k, where, image=image, retrieval=retrieval, hybrid=hybrid).hits)
