"""Core layer: what every other layer shares and nothing here imports from above.

Errors (:mod:`~heterag.core.errors`), the knowledge records (:mod:`~heterag.core.documents`:
documents, sections, chunks, content hashes), validated images (:mod:`~heterag.core.images`),
what retrieval and generation hand back (:mod:`~heterag.core.results`), the per-collection write
lock (:mod:`~heterag.core.locking`) and the home directory (:mod:`~heterag.core.home`).
"""
