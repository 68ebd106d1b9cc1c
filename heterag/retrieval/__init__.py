"""Retrieval layer: from a query (text, image or both) to ranked hits.

The retriever (:mod:`~heterag.retrieval.retriever`), score fusion of text, image and cross-modal
similarities (:mod:`~heterag.retrieval.fusion`) and the hit filters that see every query's hits
before generation (:mod:`~heterag.retrieval.hit_filters`, a defense plug point). May import
:mod:`heterag.core`, :mod:`heterag.encoding`, :mod:`heterag.stores` and :mod:`heterag.ingest`;
knows nothing of the generators.
"""
