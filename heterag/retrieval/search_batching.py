"""Concurrent searches of one store merged into one call of the store's ``query_many``.

A server answering many users searches the same stores from many threads at once. A store that takes
several query vectors in one call (:class:`~heterag.stores.base.BatchQuery`: FAISS, Chroma) pays its fixed
cost once for all of them: on the scenes demo (Chroma, k=50, returning texts and metadata) 20 searches took
38 ms in one call and 115 ms one by one. :class:`SearchBatcher` merges the searches that wait while one runs
(natural batching in the callers' threads, :class:`~heterag.encoding.batching.MicroBatcher`): a lone search
runs at once with no added delay. Only searches with the same ``k`` and the same filter are merged, so each
gets exactly what ``store.query`` would give it (the same records in the same order).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from heterag.encoding.batching import BatchStats, MicroBatcher
from heterag.stores.base import BatchQuery, ScoredRecord, VectorStore

#: Most searches merged into one store call.
MAX_SEARCHES = 32

_Search = tuple[np.ndarray, int, "Mapping[str, Any] | None"]


class SearchBatcher:
    """``query(vector, k, where)`` of ``store``, concurrent calls with equal ``k`` and ``where`` merged into one
    ``store.query_many`` call (``store`` must be a :class:`~heterag.stores.base.BatchQuery`). Thread-safe; the
    store is searched by one thread at a time through this batcher."""

    def __init__(self, store: VectorStore, *, max_searches: int = MAX_SEARCHES):
        if not isinstance(store, BatchQuery):
            raise TypeError(f"{type(store).__name__} cannot search several vectors in one call (no query_many)")
        self.store = store
        self._batcher: MicroBatcher[_Search, list[ScoredRecord]] = MicroBatcher(self._run, max_items=max_searches)

    @property
    def stats(self) -> BatchStats:
        return self._batcher.stats

    def query(self, vector: np.ndarray, k: int = 10, where: Mapping[str, Any] | None = None) -> list[ScoredRecord]:
        """What ``store.query(vector, k=k, where=where)`` returns; raises what it raises."""
        try:
            key: Any = (k, json.dumps(where, sort_keys=True, default=repr) if where is not None else None)
        except (TypeError, ValueError):  # a filter that does not serialise is searched alone
            key = object()
        return self._batcher([(np.asarray(vector, dtype=np.float32), k, where)], key=key)[0]

    def _run(self, searches: list[_Search]) -> list[list[ScoredRecord]]:
        _, k, where = searches[0]  # merged searches share k and where (the batcher's key)
        store: Any = self.store
        if len(searches) == 1:
            return [store.query(searches[0][0], k=k, where=where)]
        return store.query_many(np.stack([v for v, _, _ in searches]), k=k, where=where)


def search_batcher(store: VectorStore | None) -> SearchBatcher | None:
    """A :class:`SearchBatcher` for ``store``, or None when it cannot search several vectors in one call."""
    return SearchBatcher(store) if store is not None and isinstance(store, BatchQuery) else None


__all__ = ["MAX_SEARCHES", "SearchBatcher", "search_batcher"]
