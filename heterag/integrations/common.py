"""Hit metadata shared by the integrations, without importing any framework."""

from __future__ import annotations

from typing import Any

from heterag.core.results import Hit


def node_metadata(hit: Hit) -> dict[str, Any]:
    """Flat, JSON-able description of a hit: source, chunk_id, score, scores, view, title, heading, image,
    and the chunk's own metadata under ``metadata``."""
    return {"source": hit.doc_id, "chunk_id": hit.chunk_id, "score": float(hit.score), "scores": dict(hit.scores),
            "view": hit.view, "title": hit.title, "heading": list(hit.heading), "image": hit.image,
            "metadata": dict(hit.metadata)}
