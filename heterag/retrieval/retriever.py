"""The retriever: top-k generation chunks for a text query, a query image, or both.

A text query alone is one store query with exact cosine scores; a query with an image, or a text
query over a collection holding images, gathers candidates from the text store and the image store
and fuses their similarities (:mod:`heterag.retrieval.fusion`). The hit filters
(:mod:`heterag.retrieval.hit_filters`) then see the candidates before anything is returned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from heterag.core.errors import InvalidInputError, KeywordIndexError
from heterag.core.images import ImageFiles, ImageRef, load_image
from heterag.core.results import Hit
from heterag.ingest.views import ViewEncoder
from heterag.retrieval.fusion import Fusion
from heterag.retrieval.hit_filters import DroppedHit, HitFilter, Retrieval, RetrievalQuery
from heterag.retrieval.hybrid import DEFAULT_RETRIEVAL, HybridFusion, check_retrieval
from heterag.retrieval.search_batching import SearchBatcher, search_batcher
from heterag.stores.base import KeywordSearch, Record, ScoredRecord, VectorStore
from heterag.stores.keyword import KEYWORD_CONTEXT_KEY
from heterag.stores.tokenizer import query_terms, tokenize


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
    #: ``dense``, ``keyword``, ``hybrid`` or None (hybrid where a keyword index exists, else dense).
    retrieval: str | None
    hybrid: HybridFusion
    #: Whether concurrent searches of a store that takes several query vectors at once (FAISS, Chroma) are
    #: merged into one store call (:mod:`heterag.retrieval.search_batching`); results are the same either way.
    #: Off by default: with 20 concurrent chat users on 2 cores it merged half the demo's searches but gave no
    #: measurable throughput (a k=10 Chroma search costs about 2 ms; issue #26).
    batch_searches: bool = False

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
        retrieval: str | None = None,
    ) -> list[Hit]:
        """Top-``k`` generation chunks for a text ``query``, a query ``image``, or both, best first.

        ``image`` is anything :func:`heterag.core.images.load_image` takes. Scores fuse the available
        similarities by ``fusion`` (default: this pipeline's); see :mod:`heterag.retrieval.fusion`. Image items
        without text come back as hits with empty text and their ``image`` path. The pipeline's hit
        filters have been applied; :meth:`search` also tells what they dropped.
        """
        return list(self.search(query, k, where, image=image, fusion=fusion, retrieval=retrieval).hits)

    def search(
        self,
        query: str | None = None,
        k: int = 5,
        where: Mapping[str, Any] | None = None,
        *,
        image: Any = None,
        fusion: Fusion | None = None,
        retrieval: str | None = None,
        hybrid: HybridFusion | str | Mapping[str, Any] | None = None,
    ) -> Retrieval:
        """Like :meth:`retrieve`, returning a :class:`~heterag.retrieval.hit_filters.Retrieval`: the hits after the
        hit filters, and the candidates the filters dropped (with the filter's name and reason).

        ``retrieval`` (default: this pipeline's): ``dense``, ``keyword`` or ``hybrid``
        (:mod:`heterag.retrieval.hybrid`); ``hybrid`` (default: this pipeline's) is the rule fusing the two: a
        :class:`~heterag.retrieval.hybrid.HybridFusion`, a spec such as ``"rrf:k=60"`` or a mapping of its fields
        (a bad spec raises :class:`~heterag.core.errors.InvalidInputError`).
        Raises :class:`~heterag.core.errors.KeywordIndexError` for ``keyword``/``hybrid`` asked explicitly of a
        collection without a keyword index (the message names the command that builds one).
        """
        if not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        text = query if isinstance(query, str) and query.strip() else None
        if query is not None and not isinstance(query, str):
            raise InvalidInputError(f"query must be a string, got {type(query).__name__}")
        if text is None and image is None:
            raise InvalidInputError("a query needs text, an image, or both (the question is empty)")
        mode = self.retrieval_mode(retrieval)
        rule = fusion or self.fusion
        mix = HybridFusion.parse(hybrid) if hybrid is not None else self.hybrid  # a spec like "rrf:k=60" too
        images_on = self.has_images()
        filters = list(self.hit_filters)
        n = k * max(f.overfetch for f in filters) if filters else k
        ref = load_image(image, source="query image") if image is not None else None
        queries: dict[str, np.ndarray] = {}
        keyword_on = text is not None and mode != "dense"
        depth = max(mix.candidates, n) if keyword_on else n
        dense: list[Hit] = []
        fused_here = False  # hybrid over plain text is ranked and fused in one step (_hybrid_text)
        if mode != "keyword" or ref is not None:
            dense_text = text if mode != "keyword" else None
            if dense_text is not None and ref is None and (not images_on or rule.weight("cross") == 0):
                queries["text"] = self.encoder.encode_query(dense_text)  # the plain text path: one store query, exact cosines
                if keyword_on:  # hybrid over text: rank both kinds by id, fetch only the hits returned
                    dense, fused_here = self._hybrid_text(dense_text, queries["text"], depth, n, where, mix), True
                else:
                    dense = [hit_from_record(sr.record, sr.score, self.image_files, {"text": sr.score}, ("dense",))
                             for sr in self._query(self.store, queries["text"], 2 * depth, where)]
            else:
                dense = self._retrieve_fused(dense_text, ref, 2 * depth, where, rule, images_on, queries)
        hits = self._with_keywords(text, dense, depth, where, mix, mode, queries) if keyword_on and not fused_here else dense
        hits = one_per_view(hits, text)
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

    def _query(self, store: Any, vector: np.ndarray, k: int, where: Mapping[str, Any] | None) -> list[ScoredRecord]:
        """``store.query(vector, k=k, where=where)``, merged with concurrent searches of the same store when
        :attr:`batch_searches` is on and the store can search several vectors in one call."""
        if not self.batch_searches:
            return store.query(vector, k=k, where=where)
        batchers: dict[int, tuple[Any, SearchBatcher | None]] = self.__dict__.setdefault("_search_batchers", {})
        entry = batchers.get(id(store))
        if entry is None or entry[0] is not store:  # first search of this store (or the store was replaced)
            entry = batchers[id(store)] = (store, search_batcher(store))
        batcher = entry[1]
        return batcher.query(vector, k=k, where=where) if batcher is not None else store.query(vector, k=k, where=where)

    def _ranked_ids(self, store: Any, vector: np.ndarray, k: int, where: Mapping[str, Any] | None) -> list[str]:
        """Ids of ``store``'s top-``k`` for ``vector``, best first: without fetching texts and metadata where the
        store can (:class:`~heterag.stores.base.RankedQuery`; a k=50 Chroma search with records cost about 3 times
        one without), else from :meth:`_query`."""
        rank_ids = getattr(store, "query_ids", None)
        if rank_ids is not None and not self.batch_searches:
            return [i for i, _ in rank_ids(vector, k, where)]
        return [sr.record.id for sr in self._query(store, vector, k, where)]

    def retrieval_mode(self, retrieval: str | None = None) -> str:
        """The retrieval mode a query runs with: ``retrieval`` if given, else this pipeline's setting; the
        default (``None``) is :data:`~heterag.retrieval.hybrid.DEFAULT_RETRIEVAL` where the store has a keyword
        index and ``dense`` where it has none. Raises :class:`~heterag.core.errors.KeywordIndexError` when
        ``keyword``/``hybrid`` is asked of a store without a keyword index, :class:`UnknownNameError` for a bad name."""
        asked = retrieval if retrieval is not None else getattr(self, "retrieval", None)
        if asked is None:
            return DEFAULT_RETRIEVAL if isinstance(self.store, KeywordSearch) else "dense"
        mode = check_retrieval(asked)
        if mode != "dense" and not isinstance(self.store, KeywordSearch):
            name = getattr(self, "name", None)
            raise KeywordIndexError(
                f"collection {name or ''!s} has no keyword index (made before keyword search); build one with "
                f"`heterag keywords build --collection {name or 'NAME'}`, or use --retrieval dense")
        return mode

    def _hybrid_text(self, text: str, vector: np.ndarray, depth: int, n: int, where: Mapping[str, Any] | None,
                     mix: HybridFusion) -> list[Hit]:
        """Hybrid retrieval of a text query: the ``depth`` best ids by vector and by keyword score, exact scores
        of each kind for the other's candidates (convex), fused; records are fetched only for the first ``2 n``
        of the fused ranking (more while one-per-view merging leaves fewer than ``n``). Gives the hits
        :meth:`_with_keywords` gives from fully fetched candidates, in the same order (a store without
        :class:`~heterag.stores.base.RankedQuery` or a keyword ranking is asked for records and gives them)."""
        store: Any = self.store
        known: dict[str, Record] = {}
        rank_ids = getattr(store, "query_ids", None)
        if rank_ids is not None and not self.batch_searches:
            dense_ranked = [(i, float(s)) for i, s in rank_ids(vector, depth, where)]
        else:
            found = self._query(store, vector, depth, where)
            known.update((sr.record.id, sr.record) for sr in found)
            dense_ranked = [(sr.record.id, sr.score) for sr in found]
        keyword_ranking = getattr(store, "keyword_ranking", None)
        if where is None and keyword_ranking is not None:
            keyword = [(i, float(s)) for i, s in keyword_ranking(text, depth)]
        else:
            found = store.keyword_query(text, k=depth, where=where)
            known.update((sr.record.id, sr.record) for sr in found)
            keyword = [(sr.record.id, sr.score) for sr in found]
        exact: dict[str, dict[str, float]] = {}
        if not keyword:  # no keyword terms (stopwords only) or no match: dense alone
            fused = list(dense_ranked)
        else:
            if mix.method == "convex":
                exact = self._exact_scores(text, vector, dense_ranked, keyword, known)
            fused = mix.fuse(dense_ranked, keyword, exact)
        dense_score, kw_score = dict(dense_ranked), dict(keyword)
        out: list[Hit] = []
        done = 0
        while done < len(fused):
            stop = min(len(fused), done + max(2 * n - len(out), n))
            while stop < len(fused) and fused[stop][1] == fused[stop - 1][1]:
                stop += 1  # equal scores (chunks sharing one view) are fetched together, for one_per_view
            batch = fused[done:stop]
            missing = [i for i, _ in batch if i not in known]
            if missing:
                known.update((r.id, r) for r in store.get(ids=missing))
            for i, score in batch:
                rec = known.get(i)
                if rec is None:
                    continue  # deleted since it was ranked
                scores, found_by = _provenance(i, {"text": dense_score[i]} if i in dense_score else {}, i in dense_score,
                                               kw_score, exact)
                out.append(hit_from_record(rec, score, self.image_files, scores, found_by))
            done = stop
            if len(one_per_view(out, text)) >= 2 * n:
                break
        return out

    def _exact_scores(self, text: str, vector: np.ndarray | None, dense_ranked: list[tuple[str, float]],
                      keyword: list[tuple[str, float]], known: dict[str, Record]) -> dict[str, dict[str, float]]:
        """What convex fusion needs besides the two rankings: the keyword score of each candidate only the dense
        ranking holds, and (given the query ``vector``) the cosine of each only the keyword ranking holds. Records
        fetched for their vectors (a store without :class:`~heterag.stores.base.RankedQuery`) go into ``known``."""
        store: Any = self.store
        exact: dict[str, dict[str, float]] = {}
        kw_ids, dense_ids = {i for i, _ in keyword}, {i for i, _ in dense_ranked}
        only_dense = [i for i, _ in dense_ranked if i not in kw_ids]
        if only_dense:
            for i, s in store.keyword_scores(text, only_dense).items():
                exact[i] = {"keyword": s}
        only_kw = [i for i, _ in keyword if i not in dense_ids]
        if only_kw and vector is not None:
            if callable(getattr(store, "vectors", None)):
                vecs = store.vectors(only_kw)
            else:
                recs = store.get(ids=only_kw, include_vectors=True)
                known.update((r.id, r) for r in recs)
                vecs = {r.id: r.vector for r in recs}
            for i in only_kw:
                if i in vecs:
                    exact[i] = {"dense": _cos(vector, vecs[i])}
        return exact

    def _with_keywords(self, text: str, dense: list[Hit], depth: int, where: Mapping[str, Any] | None,
                       mix: HybridFusion, mode: str, queries: dict[str, np.ndarray]) -> list[Hit]:
        """Keyword hits for ``text`` alone (``mode == "keyword"`` without dense hits) or fused with ``dense``."""
        store: Any = self.store
        found = store.keyword_query(text, k=depth, where=where)
        if mode == "keyword" and not dense:
            return [hit_from_record(sr.record, sr.score, self.image_files, {"keyword": sr.score}, ("keyword",)) for sr in found]
        if not found:  # no keyword terms (stopwords only) or no match: dense alone
            return dense
        dense = dense[:depth]
        by_id: dict[str, Hit] = {h.chunk_id: h for h in dense}
        records = {sr.record.id: sr.record for sr in found}
        keyword = [(sr.record.id, sr.score) for sr in found]
        dense_ranked = [(h.chunk_id, h.score) for h in dense]
        exact = self._exact_scores(text, queries.get("text"), dense_ranked, keyword, {}) if mix.method == "convex" else {}
        kw_score = dict(keyword)
        out: list[Hit] = []
        for i, fused in mix.fuse(dense_ranked, keyword, exact):
            base = by_id.get(i)
            scores, found_by = _provenance(i, base.scores if base is not None else {}, base is not None, kw_score, exact)
            if base is not None:
                out.append(dataclasses.replace(base, score=fused, scores=scores, found_by=found_by))
            else:
                out.append(hit_from_record(records[i], fused, self.image_files, scores, found_by))
        return out

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
            chunk_ids = self._ranked_ids(self.store, queries["text"], n, where)
        image_docs: list[str] = []
        for signal in ("image", "cross"):
            if signal in queries:
                ranked = self._ranked_ids(self.image_store, queries[signal], n, where)
                image_docs += [str(r.metadata.get("doc_id")) for r in self.image_store.get(ids=ranked)] if ranked else []
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
            hits.append(hit_from_record(rec, fused[i], self.image_files, sims[i], ("dense",)))
        return hits


def _provenance(i: str, scores: Mapping[str, float], found_dense: bool, kw_score: Mapping[str, float],
                exact: Mapping[str, Mapping[str, float]]) -> tuple[dict[str, float], tuple[str, ...]]:
    """A fused hit's per-signal scores (``scores`` it already has, plus its text cosine where only the exact
    scoring gave one, plus its keyword score) and the lists that found it (``dense``, ``keyword``)."""
    out, extra = dict(scores), exact.get(i, {})
    if not found_dense and "dense" in extra:
        out["text"] = extra["dense"]
    if i in kw_score or "keyword" in extra:
        out["keyword"] = kw_score.get(i, extra.get("keyword", 0.0))
    return out, tuple(x for x, on in (("dense", found_dense), ("keyword", i in kw_score)) if on)


def _cos(q: np.ndarray, v: np.ndarray | None) -> float:
    if v is None:
        return 0.0
    v = np.asarray(v, dtype=np.float32)
    return float(np.dot(q, v) / max(float(np.linalg.norm(q)) * float(np.linalg.norm(v)), 1e-12))


def _and_where(a: Mapping[str, Any], b: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return {"$and": [dict(a), dict(b)]} if b else a


def one_per_view(hits: list[Hit], query: str | None = None) -> list[Hit]:
    """``hits`` with one slot per retrieval view: chunks of one document retrieved through one shared view
    (equal view text: short chunks whose neighbour windows coincide) take the slot of the best-ranked
    of them, filled by the chunk whose own text holds the most of the query's keyword terms (then the
    earliest in the document), since that short chunk is what the generator reads. Hits without view
    text (``late`` views, image items) each keep their slot."""
    terms = set(query_terms(query)) if query else set()

    def overlap(h: Hit) -> tuple[int, int]:
        return (len(terms.intersection(tokenize(h.text))) if terms else 0, -h.index)

    slot: dict[tuple[str, str], int] = {}
    out: list[Hit] = []
    for h in hits:
        if not h.view:
            out.append(h)
            continue
        key = (h.doc_id, h.view)
        if key not in slot:
            slot[key] = len(out)
            out.append(h)
        elif overlap(h) > overlap(out[slot[key]]):
            out[slot[key]] = dataclasses.replace(h, score=out[slot[key]].score)
    return out


def hit_from_record(
    record: Record, score: float, image_files: ImageFiles | None = None, scores: Mapping[str, float] | None = None,
    found_by: tuple[str, ...] = ("dense",),
) -> Hit:
    meta = dict(record.metadata)
    heading = str(meta.pop("heading", ""))
    rel = meta.pop("image_path", None)
    for key in ("image_sha256", "image_width", "image_height", "n_chunks", "section_index", KEYWORD_CONTEXT_KEY):
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
        found_by=found_by,
    )

