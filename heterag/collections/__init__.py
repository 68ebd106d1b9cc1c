"""Collections layer: named collections on disk and the operations on a whole collection.

Opening, listing and dropping collections (:mod:`~heterag.collections.collection`), moving one to
another store (:mod:`~heterag.collections.migrate`) and re-embedding it with another adapter
(:mod:`~heterag.collections.reembed`). Built on :mod:`heterag.pipeline`.
"""
