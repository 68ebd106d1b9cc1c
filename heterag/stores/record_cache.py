"""A read cache of stored records by id, valid for one write generation of a collection.

A chat question reads the same popular chunks again and again (their texts and metadata for the answer,
their vectors for exact scores and image fusion), and for an embedded store every such read is a round
through its database and its Python wrappers: on the demo under 20 users, Chroma's ``get`` was about a
quarter of the time the app held the GIL (eval/README.md, issue #26). Records are immutable between
writes, so a store can answer repeated reads from memory as long as it can tell that nobody wrote.

The cache knows nothing of the store: the store passes a *generation key* with every call (for Chroma,
its client version and the token file every writer, in any process, replaces), and the cache forgets
everything when the key changes. A key is read *before* the store is read, so a read racing a write can
only file its records under the old key, which no later lookup uses.

Entries are copied out (metadata dicts, vectors), so a caller changing a record it got changes nothing
here. Size is bounded by ``limit`` records (and ``limit`` vectors): when full, the cache starts again empty (cheaper than an LRU's
bookkeeping on every hit, and a chat's working set refills it in a few questions).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from heterag.stores.base import Record

#: records held per collection before the cache starts again (each ~ text + metadata + a vector: ~3 KB at 384 dims)
DEFAULT_LIMIT = 20_000


class RecordCache:
    """Records (text, metadata and, once read, vector) by id for one generation ``key`` of a collection.

    Thread-safe. ``limit``: records held before the cache empties itself (>= 1)."""

    def __init__(self, limit: int = DEFAULT_LIMIT):
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self._key: Hashable = None
        self._text: dict[str, tuple[str, dict[str, Any]]] = {}
        self._vec: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _switch(self, key: Hashable) -> None:
        """Make ``key`` the cache's generation; a new key empties the cache (call with the lock held)."""
        if key != self._key:
            self._key = key
            self._text.clear()
            self._vec.clear()

    def get(self, key: Hashable, ids: Sequence[str], vectors: bool) -> tuple[dict[str, Record], list[str]]:
        """``({id: Record}, missing ids)`` for ``ids`` under generation ``key``; with ``vectors`` a record
        counts as found only when its vector is held too. Records are fresh copies."""
        found: dict[str, Record] = {}
        missing: list[str] = []
        with self._lock:
            self._switch(key)
            text, vec = self._text, self._vec
            for i in ids:
                entry = text.get(i)
                v = vec.get(i) if vectors else None
                if entry is None or (vectors and v is None):
                    missing.append(i)
                    continue
                found[i] = Record(id=i, vector=None if v is None else v.copy(), text=entry[0], metadata=dict(entry[1]))
            self.hits += len(found)
            self.misses += len(missing)
        return found, missing

    def vectors(self, key: Hashable, ids: Sequence[str]) -> tuple[dict[str, np.ndarray], list[str]]:
        """``({id: vector}, missing ids)`` for ``ids`` under generation ``key`` (copies)."""
        found: dict[str, np.ndarray] = {}
        missing: list[str] = []
        with self._lock:
            self._switch(key)
            for i in ids:
                v = self._vec.get(i)
                if v is None:
                    missing.append(i)
                else:
                    found[i] = v.copy()
            self.hits += len(found)
            self.misses += len(missing)
        return found, missing

    def put(self, key: Hashable, records: Iterable[Record] = (), vectors: Mapping[str, np.ndarray] | None = None) -> None:
        """File ``records`` (their texts and metadata, and vectors where they have one) and ``vectors`` under
        generation ``key``; ignored when ``key`` is no longer the current one (a write came in between)."""
        with self._lock:
            if key != self._key:
                return
            records = list(records)[: self.limit]
            vectors = dict(list((vectors or {}).items())[: self.limit])
            if len(self._text) + len(records) > self.limit or len(self._vec) + len(records) + len(vectors) > self.limit:
                self._text.clear()
                self._vec.clear()
            for r in records:
                self._text[r.id] = (r.text, dict(r.metadata))
                if r.vector is not None:
                    self._vec[r.id] = np.array(r.vector, dtype=np.float32)
            for i, v in vectors.items():
                self._vec[i] = np.array(v, dtype=np.float32)

    def clear(self) -> None:
        """Forget everything (the next key starts afresh)."""
        with self._lock:
            self._key = None
            self._text.clear()
            self._vec.clear()
