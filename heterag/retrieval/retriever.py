"""The retriever: top-k generation chunks for a text query, a query image, or both.

A text query alone is one store query with exact cosine scores; a query with an image, or a text
query over a collection holding images, gathers candidates from the text store and the image store
and fuses their similarities (:mod:`heterag.retrieval.fusion`). The hit filters
(:mod:`heterag.retrieval.hit_filters`) then see the candidates before anything is returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from heterag.core.errors import InvalidInputError
from heterag.core.images import ImageFiles, ImageRef, load_image
from heterag.core.results import Hit
from heterag.ingest.views import ViewEncoder
from heterag.retrieval.fusion import Fusion
from heterag.retrieval.hit_filters import DroppedHit, HitFilter, Retrieval, RetrievalQuery
from heterag.stores.base import Record, VectorStore


class Retriever:
    """The search side of a pipeline (a mixin of :class:`heterag.Pipeline`).

    Uses the pipeline's ``store``, ``image_store``, ``image_files``, text ``encoder`` (``encode_query``),
    ``image_encoder`` (loaded on first use), ``fusion`` rule and ``hit_filters``; hit filters receive
    the pipeline itself.
    """

    store: VectorStore
    image_store: VectorStore | None
    image_files: ImageFiles | None
    encoder: ViewEncoder
    image_encoder: Any
    fusion: Fusion
    hit_filters: list[HitFilter]

    def has_images(self) -> bool:
        """Whether any image item is stored."""
        return self.image_store is not None and self.image_store.count() > 0

    def retrieve(
        self,
        query: str | None = None,
        k: int = 5,
        where: Mapping[str, Any] | None = None,
        *,
        image: Any = None,
        fusion: Fusion | None = None,
    ) -> list[Hit]:
        """Top-``k`` generation chunks for a text ``query``, a query ``image``, or both, best first.

        ``image`` is anything :func:`heterag.core.images.load_image` takes. Scores fuse the available
        similarities by ``fusion`` (default: this pipeline's); see :mod:`heterag.retrieval.fusion`. Image items
        without text come back as hits with empty text and their ``image`` path. The pipeline's hit
        filters have been applied; :meth:`search` also tells what they dropped.
        """
        return list(self.search(query, k, where, image=image, fusion=fusion).hits)

    def search(
        self,
        query: str | None = None,
        k: int = 5,
        where: Mapping[str, Any] | None = None,
        *,
        image: Any = None,
        fusion: Fusion | None = None,
    ) -> Retrieval:
        """Like :meth:`retrieve`, returning a :class:`~heterag.retrieval.hit_filters.Retrieval`: the hits after the
        hit filters, and the candidates the filters dropped (with the filter's name and reason)."""
        if not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        text = query if isinstance(query, str) and query.strip() else None
        if query is not None and not isinstance(query, str):
            raise InvalidInputError(f"query must be a string, got {type(query).__name__}")
        if text is None and image is None:
            raise InvalidInputError("a query needs text, an image, or both (the question is empty)")
        rule = fusion or self.fusion
        images_on = self.has_images()
        filters = list(self.hit_filters)
        n = k * max(f.overfetch for f in filters) if filters else k
        ref = load_image(image, source="query image") if image is not None else None
        queries: dict[str, np.ndarray] = {}
        if text is not None and image is None and (not images_on or rule.weight("cross") == 0):
            queries["text"] = self.encoder.encode_query(text)  # the plain text path: one store query, exact cosine scores
            hits = [hit_from_record(sr.record, sr.score, self.image_files, {"text": sr.score})
                    for sr in self.store.query(queries["text"], k=n, where=where)]
        else:
            hits = self._retrieve_fused(text, ref, n, where, rule, images_on, queries)
        if not filters:
            return Retrieval(tuple(hits[:k]))
        rq = RetrievalQuery(text, ref, k, dict(queries))
        dropped: list[DroppedHit] = []
        for f in filters:
            kept = []
            for h in f.filter(rq, list(hits), self):
                if h.dropped:
                    dropped.append(DroppedHit(h, f.name, h.dropped))
                else:
                    kept.append(h)
            hits = kept
        return Retrieval(tuple(hits[:k]), tuple(dropped))

    def _retrieve_fused(
        self, text: str | None, ref: ImageRef | None, k: int, where: Mapping[str, Any] | None, rule: Fusion, images_on: bool,
        queries: dict[str, np.ndarray],
    ) -> list[Hit]:
        n = max(rule.candidates, k)
        if text is not None and rule.weight("text") > 0:
            queries["text"] = self.encoder.encode_query(text)
        if images_on:
            if ref is not None and rule.weight("image") > 0:
                queries["image"] = self.image_encoder.encode_images([ref])[0]
            if text is not None and rule.weight("cross") > 0:
                queries["cross"] = self.image_encoder.encode_texts([text])[0]
        if not queries:
            if ref is not None and not images_on:
                return []  # an image query against a collection without images finds nothing
            raise InvalidInputError("every signal this query could use has fusion weight 0")
        chunk_ids: list[str] = []
        if "text" in queries:
            chunk_ids = [sr.record.id for sr in self.store.query(queries["text"], k=n, where=where)]
        image_docs: list[str] = []
        for signal in ("image", "cross"):
            if signal in queries:
                image_docs += [str(sr.record.metadata.get("doc_id")) for sr in self.image_store.query(queries[signal], k=n, where=where)]
        # gather every candidate's vectors: chunks found by text, all chunks of image-matched documents
        chunks = {r.id: r for r in self.store.get(ids=chunk_ids, include_vectors=True)} if chunk_ids else {}
        if image_docs:
            for r in self.store.get(where=_and_where({"doc_id": {"$in": sorted(set(image_docs))}}, where), include_vectors=True):
                chunks.setdefault(r.id, r)
        doc_ids = sorted({str(r.metadata.get("doc_id")) for r in chunks.values()} | set(image_docs))
        images: dict[str, Record] = {}
        if images_on and doc_ids and ({"image", "cross"} & set(queries)):
            for r in self.image_store.get(where={"doc_id": {"$in": doc_ids}}, include_vectors=True):
                images[str(r.metadata.get("doc_id"))] = r
        # candidates: every chunk, plus image items that have no chunks
        units: list[tuple[Record, str]] = [(r, "chunk") for r in chunks.values()]
        docs_with_chunks = {str(r.metadata.get("doc_id")) for r in chunks.values()}
        units += [(r, "image") for d, r in images.items() if d not in docs_with_chunks and int(r.metadata.get("n_chunks", 0)) == 0]
        sims: list[dict[str, float]] = []
        for rec, kind in units:
            s: dict[str, float] = {}
            if kind == "chunk" and "text" in queries:
                s["text"] = _cos(queries["text"], rec.vector)
            img = images.get(str(rec.metadata.get("doc_id")))
            if img is not None:
                for signal in ("image", "cross"):
                    if signal in queries:
                        s[signal] = _cos(queries[signal], img.vector)
            sims.append(s)
        fused = rule.fuse(sims)
        order = sorted(range(len(units)), key=lambda i: (-fused[i], str(units[i][0].metadata.get("doc_id")),
                                                          int(units[i][0].metadata.get("chunk_index", 0))))
        hits = []
        for i in order[:k]:
            rec, kind = units[i]
            if not sims[i]:
                continue
            hits.append(hit_from_record(rec, fused[i], self.image_files, sims[i]))
        return hits


def _cos(q: np.ndarray, v: np.ndarray | None) -> float:
    if v is None:
        return 0.0
    v = np.asarray(v, dtype=np.float32)
    return float(np.dot(q, v) / max(float(np.linalg.norm(q)) * float(np.linalg.norm(v)), 1e-12))


def _and_where(a: Mapping[str, Any], b: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return {"$and": [dict(a), dict(b)]} if b else a


def hit_from_record(
    record: Record, score: float, image_files: ImageFiles | None = None, scores: Mapping[str, float] | None = None
) -> Hit:
    meta = dict(record.metadata)
    heading = str(meta.pop("heading", ""))
    rel = meta.pop("image_path", None)
    for key in ("image_sha256", "image_width", "image_height", "n_chunks", "section_index"):
        meta.pop(key, None)
    image = str(image_files.root / str(rel)) if (rel and image_files is not None) else None
    return Hit(
        chunk_id=record.id,
        doc_id=str(meta.pop("doc_id", "")),
        text=record.text,
        view=str(meta.pop("view", "")),
        score=float(score),
        title=str(meta.pop("title", "")),
        heading=tuple(h for h in heading.split(" > ") if h),
        index=int(meta.pop("chunk_index", 0)),
        metadata=meta,
        image=image,
        scores=dict(scores or {}),
    )

