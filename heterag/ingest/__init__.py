"""Ingest layer: from documents to stored records.

Generation chunks (:mod:`~heterag.ingest.chunking`), their retrieval views
(:mod:`~heterag.ingest.views`: naive, heterag, late), the ingest guards that see every document
before it is written (:mod:`~heterag.ingest.guards`, a defense plug point), the indexer that writes
idempotently into the stores (:mod:`~heterag.ingest.indexer`) and the documents a store holds
(:mod:`~heterag.ingest.documents`). Imports :mod:`heterag.core`, :mod:`heterag.encoding` and
:mod:`heterag.stores`.
"""
