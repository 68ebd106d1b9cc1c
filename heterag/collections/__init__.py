"""Collections layer: named collections on disk and the operations on a whole collection.

Opening, listing and dropping collections (:mod:`~heterag.collections.collection`), moving one to
another store (:mod:`~heterag.collections.migrate`), re-embedding it with another adapter
(:mod:`~heterag.collections.reembed`) and building or checking its keyword index
(:mod:`~heterag.collections.keywords`). Built on :mod:`heterag.pipeline`.
"""
