"""Chroma vector store (``chromadb.PersistentClient`` on disk, cosine space).

Notes on the chromadb (1.5.x) behaviour this adapter works around:

* ``$ne``/``$nin`` in Chroma also match records that lack the key, while the
  heterag filter language only matches records that have it. Each record therefore
  carries a reserved metadata entry :data:`KEYS_FIELD` (the list of its metadata
  keys; needs chromadb's array metadata) and negative conditions are rewritten to
  ``$and: [{KEYS_FIELD: {$contains: key}}, <negative condition>]``.
* ``$in``/``$nin`` lists must hold values of one type; mixed lists are split.
* Empty metadata must be passed as ``None``; NaN metadata is silently dropped, so
  non-finite floats are rejected here (as are ints beyond 64 bits, which Chroma turns
  into floats); keys starting with ``#`` or ``$`` are refused.
* ``upsert`` *merges* metadata into an existing record's; keys the new metadata
  lacks are explicitly set to None so that a replaced record keeps only its new keys.
* Fractional float operands are truncated when compared with int metadata; see
  :func:`_compare` for the exact rewrite.
* A collection keeps its dimension after all records are deleted; an empty
  collection without fingerprint is recreated to accept another dimension.
* ``delete`` reports no reliable count, so matching ids are resolved first.
* Batches larger than ``client.get_max_batch_size()`` are split; atomicity then
  only holds per sub-batch (all validation happens before the first write).
* A process's ``PersistentClient`` caches the collection's HNSW index and does not see
  what other processes write later (queries miss their records, or fail with "Nothing found
  on disk" on a collection that was empty when opened). Every write therefore stamps a new
  token into ``<path>/.heterag-generation``; before each operation a store compares the token
  with the one its client has seen and, if another process wrote since, closes the shared
  client (stopping chromadb's cached ``System``) and reopens it. Writers of one collection
  are serialised by :mod:`heterag.core.locking`, which makes the check-then-write sequence safe.
* Reads by id, and reads with vectors by filter (as ids first), are answered from a per-process
  :class:`~heterag.stores.record_cache.RecordCache` keyed by that same token: every write, by this
  process or another, starts it afresh. Chroma's own ``get`` (sqlite, then its Python wrappers) was
  about a quarter of the app's GIL time under 20 chat users (issue #26).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import uuid
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
from chromadb.config import Settings
from chromadb.errors import InvalidArgumentError, NotFoundError

from heterag.core.errors import DimensionMismatchError, HeteragError, InvalidInputError
from heterag.stores.base import (
    Fingerprint,
    Record,
    ScoredRecord,
    as_matrix,
    check_query_matrix,
    check_query_vector,
    record_metadata,
)
from heterag.stores.filters import normalize
from heterag.stores.record_cache import DEFAULT_LIMIT, RecordCache

logger = logging.getLogger(__name__)

#: Reserved metadata key holding the list of a record's own metadata keys.
KEYS_FIELD = "_heterag_keys"
#: Collection-metadata key holding the fingerprint JSON.
FINGERPRINT_FIELD = "heterag:fingerprint"

#: HNSW settings of new collections: cosine space; search ef 200 (Chroma's default 100 gave recall@10 0.948
#: on 100k MiniLM vectors of PubMedQA text, 200 gives 0.978; eval/stores.py, eval/README.md)
HNSW_CONFIG: dict[str, Any] = {"hnsw": {"space": "cosine", "ef_search": 200}}
_NEVER = object()  # translated filter that no record can match
#: records of a collection held in this process's read cache (0: off); see :mod:`heterag.stores.record_cache`
RECORD_CACHE = DEFAULT_LIMIT
GENERATION_FILE = ".heterag-generation"


class _SharedClient:
    """One chromadb client per store folder in this process, reopened when another process wrote."""

    def __init__(self, path: Path):
        self.path = path
        self.token_path = path / GENERATION_FILE
        self.client: Any = None
        self.token: tuple[int, int, int] | None = None
        self.version = 0
        self.users = 0
        self.lock = threading.RLock()
        self.caches: dict[str, RecordCache] = {}  # collection name -> records read since the last write

    def _disk_token(self) -> tuple[int, int, int] | None:
        """Identity of the token file: (inode, size, mtime). Every write replaces the file (a new inode),
        so a stat is enough to notice it, without reading the file on every operation."""
        try:
            st = os.stat(self.token_path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def get(self) -> tuple[Any, int]:
        with self.lock:
            token = self._disk_token()
            if self.client is None or token != self.token:
                if self.client is not None:
                    logger.debug("chroma: %s was written by another process; reopening its client", self.path)
                    self.client.close()
                    self.version += 1
                self.client = chromadb.PersistentClient(
                    path=str(self.path), settings=Settings(anonymized_telemetry=False, allow_reset=False))
                self.token = token
            return self.client, self.version

    def bump(self) -> None:
        """Record that this process wrote: other processes' clients will reopen."""
        with self.lock:
            token = uuid.uuid4().hex
            tmp = self.token_path.with_name(f"{GENERATION_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(token)
            st = os.stat(tmp)  # a rename keeps inode, size and mtime: this is the token file's identity
            os.replace(tmp, self.token_path)
            self.token = st.st_ino, st.st_size, st.st_mtime_ns

    def release(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users <= 0 and self.client is not None:
                self.client.close()
                self.client = None
                self.token = None
                self.version += 1


_SHARED: dict[str, _SharedClient] = {}
_SHARED_LOCK = threading.Lock()


def _shared_client(path: Path) -> _SharedClient:
    key = str(path.resolve())
    with _SHARED_LOCK:
        shared = _SHARED.get(key)
        if shared is None:
            shared = _SHARED[key] = _SharedClient(path)
        shared.users += 1
        return shared


def _chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def _fractional(value: Any) -> bool:
    return isinstance(value, float) and not value.is_integer()


def _group_by_type(values: Sequence[Any]) -> list[list[Any]]:
    """Split a value list into single-type lists (Chroma's $in/$nin requirement).

    Fractional floats get a group of their own (see :func:`_compare`).
    """
    groups: dict[Any, list[Any]] = {}
    for v in values:
        groups.setdefault("fraction" if _fractional(v) else type(v), []).append(v)
    return list(groups.values())


def _present(key: str) -> dict[str, Any]:
    return {KEYS_FIELD: {"$contains": key}}


def _and(parts: list[Any]) -> Any:
    if any(p is _NEVER for p in parts):
        return _NEVER
    return parts[0] if len(parts) == 1 else {"$and": parts}


def _or(parts: list[Any]) -> Any:
    parts = [p for p in parts if p is not _NEVER]
    if not parts:
        return _NEVER
    return parts[0] if len(parts) == 1 else {"$or": parts}


def _compare(key: str, op: str, x: Any) -> Any:
    """``{key: {op: x}}``, corrected for Chroma truncating fractional operands on int metadata.

    chromadb 1.5 compares an int value with ``int(x)`` when ``x`` is a fractional float
    (so ``{"n": {"$eq": 1.5}}`` matches ``n=1`` and ``{"n": {"$lt": 1.5}}`` misses it).
    The fix-up terms are exact whatever Chroma does, so they stay correct once it is fixed.
    """
    base = {key: {op: x}}
    if not _fractional(x):
        return base
    t, f, c = int(x), math.floor(x), math.ceil(x)
    if op == "$eq":
        return _and([base, {key: {"$ne": t}}])
    if op == "$ne":
        return _or([base, {key: {"$eq": t}}])
    if op == "$lt" and t == f:
        return _or([base, {key: {"$eq": f}}])
    if op == "$lte" and t == c:
        return _and([base, {key: {"$ne": c}}])
    if op == "$gt" and t == c:
        return _or([base, {key: {"$eq": c}}])
    if op == "$gte" and t == f:
        return _and([base, {key: {"$ne": f}}])
    return base


def _member(key: str, op: str, group: list[Any]) -> Any:
    """``{key: {"$in"|"$nin": group}}`` for a single-type group, with the fractional fix-up."""
    base = {key: {op: group}}
    if not _fractional(group[0]):
        return base
    truncs = sorted({int(v) for v in group})
    if op == "$in":
        return _and([base, {key: {"$nin": truncs}}])
    return _or([base, {key: {"$in": truncs}}])


def _leaf_where(key: str, op: str, value: Any) -> Any:
    if key.startswith("#") or key == KEYS_FIELD:  # keys no stored record can have
        return _NEVER
    if op == "$in":
        return _or([_member(key, op, g) for g in _group_by_type(value)])
    if op == "$nin":
        return _and([_present(key)] + [_member(key, op, g) for g in _group_by_type(value)])
    if op == "$ne":
        return _and([_present(key), _compare(key, op, value)])
    return _compare(key, op, value)


def to_chroma_where(node: Mapping[str, Any]) -> Any:
    """Translate a canonical filter tree to Chroma ``where`` syntax (or the ``_NEVER`` marker)."""
    (key, cond), = node.items()
    if key == "$and":
        return _and([to_chroma_where(c) for c in cond])
    if key == "$or":
        return _or([to_chroma_where(c) for c in cond])
    (op, value), = cond.items()
    return _leaf_where(key, op, value)


def _chroma_metadata(record: Record, store: str) -> dict[str, Any] | None:
    """Validated metadata plus the reserved key list; None when empty (Chroma rejects {})."""
    meta = record_metadata(record, store)
    for key in meta:
        if key == KEYS_FIELD or key.startswith(("#", "$")):
            raise InvalidInputError(f"{store}: record {record.id!r} metadata key {key!r} is reserved")
    return {**meta, KEYS_FIELD: list(meta)} if meta else None


def _user_metadata(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (meta or {}).items() if k != KEYS_FIELD}


class ChromaStore:
    """Vector store backed by a persistent Chroma collection (HNSW, cosine space)."""

    name = "chroma"

    def __init__(self, path: str | Path, collection: str = "default") -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.collection = collection
        self._shared: _SharedClient | None = _shared_client(self.path)
        self._data_dim: int | None = None  # cached dimension of stored vectors
        self._fp: Fingerprint | None = None  # cached once set (a fingerprint never changes)
        self._count_cache: tuple[tuple[Any, ...], int] | None = None  # (write generation, count)
        try:
            self._client, self._version = self._shared.get()
            self._max_batch = int(self._client.get_max_batch_size())
            self._col: Any = self._open_collection()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ internals

    def _open_collection(self) -> Any:
        try:
            return self._client.get_collection(self.collection, embedding_function=None)
        except NotFoundError:
            pass
        except (ValueError, InvalidArgumentError) as exc:
            raise InvalidInputError(f"chroma: invalid collection name {self.collection!r}: {exc}") from None
        try:
            return self._client.get_or_create_collection(
                self.collection, configuration=HNSW_CONFIG, embedding_function=None
            )
        except (ValueError, InvalidArgumentError) as exc:
            raise InvalidInputError(f"chroma: invalid collection name {self.collection!r}: {exc}") from None

    @property
    def _c(self) -> Any:
        if self._shared is None:
            raise HeteragError(f"chroma collection {self.collection!r} is closed")
        client, version = self._shared.get()
        if version != self._version:  # another process wrote: fresh handle on the reopened client
            self._client, self._version = client, version
            self._col = self._open_collection()
            self._data_dim = None
            self._fp = None
        return self._col

    def _wrote(self) -> None:
        if self._shared is not None:
            self._shared.bump()

    def _where(self, where: Mapping[str, Any] | None) -> Any:
        canon = normalize(where)
        return None if canon is None else to_chroma_where(canon)

    def _stored_dim(self) -> int | None:
        if self._data_dim is None:
            got = self._c.get(limit=1, include=["embeddings"])
            emb = got.get("embeddings")
            if emb is not None and len(emb):
                self._data_dim = len(emb[0])
        return self._data_dim

    def _recreate_empty(self) -> None:
        """Drop and recreate an empty collection (Chroma pins the dimension of the first vector)."""
        meta = self._current_metadata()
        logger.info("chroma: recreating empty collection %r to change its dimension", self.collection)
        self._c  # noqa: B018 - current client
        self._client.delete_collection(self.collection)
        self._col = self._client.create_collection(
            self.collection, configuration=HNSW_CONFIG, metadata=meta or None,
            embedding_function=None,
        )

    def _current_metadata(self) -> dict[str, Any]:
        self._c  # noqa: B018 - refreshes the client if another process wrote
        return dict(self._client.get_collection(self.collection, embedding_function=None).metadata or {})

    def _matching_ids(self, ids: Sequence[str] | None, where: Mapping[str, Any] | None) -> list[str]:
        got = self._raw_get(ids, where, include=[])
        return list(got["ids"]) if got else []

    def _raw_get(self, ids: Sequence[str] | None, where: Mapping[str, Any] | None, include: list[str]) -> Any:
        """``collection.get`` with our filter; None when nothing can match."""
        cw = self._where(where)
        if cw is _NEVER or (ids is not None and not ids):
            return None
        kwargs: dict[str, Any] = {"include": include}
        if ids is not None:
            kwargs["ids"] = list(dict.fromkeys(ids))
        if cw is not None:
            kwargs["where"] = cw
        return self._c.get(**kwargs)

    # ------------------------------------------------------------------ protocol

    @property
    def dim(self) -> int | None:
        fp = self.fingerprint()
        if fp is not None:
            return fp.dim
        return self._stored_dim() if self.count() else None

    def fingerprint(self) -> Fingerprint | None:
        if self._fp is None:
            self._c  # noqa: B018 - raises if closed
            text = self._current_metadata().get(FINGERPRINT_FIELD)
            self._fp = Fingerprint.from_json(text) if text else None
        return self._fp

    def set_fingerprint(self, fp: Fingerprint) -> None:
        current = self.fingerprint()
        if current is not None:
            current.check(fp, where=f"chroma collection {self.collection!r}")
            return
        stored = self._stored_dim() if self.count() else None
        if stored is not None and stored != fp.dim:
            raise DimensionMismatchError(
                f"chroma: collection {self.collection!r} holds dimension {stored}, fingerprint says {fp.dim}"
            )
        meta = {k: v for k, v in self._current_metadata().items() if not k.startswith("hnsw:")}
        self._c.modify(metadata={**meta, FINGERPRINT_FIELD: fp.to_json()})
        self._wrote()
        self._fp = fp

    def upsert(self, records: Sequence[Record]) -> None:
        """Insert or replace records; split into Chroma's maximum batch size."""
        records = list(records)
        mat = as_matrix(records, self.dim, self.name)
        if not records:
            return
        metas = [_chroma_metadata(r, self.name) for r in records]
        if self.count() == 0:
            self._data_dim = None
        try:
            for start in range(0, len(records), self._max_batch):
                stop = start + self._max_batch
                self._upsert_batch(records[start:stop], mat[start:stop], metas[start:stop])
        finally:
            self._wrote()
        self._data_dim = mat.shape[1]

    def _replacing(self, records: Sequence[Record], metas: list[dict[str, Any] | None]) -> list[dict[str, Any] | None]:
        """Metadata that *replaces* existing records' metadata (Chroma's upsert merges it).

        Keys an existing record has but the new metadata lacks are set to None, which
        makes Chroma drop them.
        """
        old = self._c.get(ids=[r.id for r in records], include=["metadatas"])
        old_keys = {rid: set(m or {}) for rid, m in zip(old["ids"], old["metadatas"], strict=True)}
        out: list[dict[str, Any] | None] = []
        for rec, meta in zip(records, metas, strict=True):
            stale = old_keys.get(rec.id, set()) - set(meta or {})
            merged = {**{k: None for k in stale}, **(meta or {})}
            out.append(merged or None)
        return out

    def _upsert_batch(self, records: Sequence[Record], mat: np.ndarray, metas: list[dict[str, Any] | None]) -> None:
        metas = self._replacing(records, metas)
        kwargs = {
            "ids": [r.id for r in records], "embeddings": mat,
            "documents": [r.text for r in records], "metadatas": metas,
        }
        try:
            self._c.upsert(**kwargs)
        except InvalidArgumentError as exc:
            if "dimension" not in str(exc):
                raise InvalidInputError(f"chroma: {exc}") from None
            if self.count():
                raise DimensionMismatchError(f"chroma: {exc}") from None
            self._recreate_empty()
            self._c.upsert(**kwargs)

    def query(self, vector: np.ndarray, k: int = 10, where: Mapping[str, Any] | None = None) -> list[ScoredRecord]:
        """Top-``k`` records by cosine similarity (1 - Chroma cosine distance), best first."""
        return self._query([check_query_vector(vector, self.dim, self.name)], k, where)[0]

    def query_many(self, vectors: np.ndarray, k: int = 10, where: Mapping[str, Any] | None = None) -> list[list[ScoredRecord]]:
        """:meth:`query` for each row of ``vectors`` ``(n, dim)``, in one Chroma call (its fixed cost, most of a
        small query's, is paid once: 20 queries of k=50 took 38 ms together, 115 ms one by one)."""
        return self._query(list(check_query_matrix(vectors, self.dim, self.name)), k, where)

    def _search(self, queries: list[np.ndarray], k: int, where: Mapping[str, Any] | None, include: list[str]) -> Any:
        """``collection.query`` of ``queries`` with our ``k`` check and filter; None when nothing can match."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidInputError(f"chroma: k must be a positive integer, got {k!r}")
        cw = self._where(where)
        n = self.count()
        if cw is _NEVER or n == 0 or not queries:
            return None
        kwargs: dict[str, Any] = {"query_embeddings": queries, "n_results": min(int(k), n), "include": include}
        if cw is not None:
            kwargs["where"] = cw
        return self._c.query(**kwargs)

    def _query(self, queries: list[np.ndarray], k: int, where: Mapping[str, Any] | None) -> list[list[ScoredRecord]]:
        res = self._search(queries, k, where, ["documents", "metadatas", "distances"])
        if res is None:
            return [[] for _ in queries]
        out = []
        for ids, docs, metas, dists in zip(res["ids"], res["documents"], res["metadatas"], res["distances"], strict=True):
            out.append([ScoredRecord(Record(id=rid, vector=None, text=doc or "", metadata=_user_metadata(meta)), 1.0 - float(dist))
                        for rid, doc, meta, dist in zip(ids, docs, metas, dists, strict=True)])
        return out

    def query_ids(self, vector: np.ndarray, k: int = 10, where: Mapping[str, Any] | None = None) -> list[tuple[str, float]]:
        """:meth:`query`'s ``(id, score)`` without texts and metadata (a k=100 search: 2 ms against 7 ms)."""
        res = self._search([check_query_vector(vector, self.dim, self.name)], k, where, ["distances"])
        if res is None:
            return []
        return [(rid, 1.0 - float(dist)) for rid, dist in zip(res["ids"][0], res["distances"][0], strict=True)]

    def _cache(self) -> tuple[RecordCache, Hashable] | None:
        """This collection's record cache and the current write generation (read *before* the store is), or
        None when caching is off (:data:`RECORD_CACHE` 0) or the store is a Chroma server."""
        if RECORD_CACHE <= 0 or self._shared is None:  # off, or a Chroma server (other clients write unseen)
            return None
        self._c  # noqa: B018 - reopens first if another process wrote (a new version)
        shared = self._shared
        with shared.lock:
            cache = shared.caches.get(self.collection)
            if cache is None:
                cache = shared.caches[self.collection] = RecordCache(RECORD_CACHE)
            return cache, (self._version, shared.token)

    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Vectors of these ids (missing ids left out), without texts and metadata; repeated reads come from
        the record cache until the next write."""
        cached = self._cache()
        want = list(dict.fromkeys(ids))
        found: dict[str, np.ndarray] = {}
        if cached is not None:
            found, want = cached[0].vectors(cached[1], want)
        if want:
            got = self._raw_get(want, None, ["embeddings"])
            if got:
                fetched = {rid: np.asarray(v, dtype=np.float32) for rid, v in zip(got["ids"], got["embeddings"], strict=True)}
                if cached is not None:
                    cached[0].put(cached[1], vectors=fetched)
                found.update(fetched)
        return found

    def get(
        self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None, include_vectors: bool = False
    ) -> list[Record]:
        """Records by id (order of ``ids``, missing skipped) and/or filter.

        Reads by id, and reads with vectors by filter (the matching ids first), are answered from the record
        cache (:mod:`heterag.stores.record_cache`) where it holds them, until the next write by any process;
        other reads go to Chroma."""
        # by filter, only reads with vectors go through the cache: the matching ids first, then what is not held
        # (without vectors one Chroma call is as cheap as the ids alone)
        cached = self._cache() if (ids is not None and where is None) or (where is not None and include_vectors) else None
        if cached is None:
            return self._fetch(ids, where, include_vectors)
        cache, key = cached
        if where is None:
            order = list(dict.fromkeys(ids))  # type: ignore[arg-type]
        else:
            matching = self._matching_ids(ids, where)
            again = self._cache()
            if again is None or again[1] != key:  # a write came between the key and the ids: read it all anew
                return self._fetch(ids, where, include_vectors)
            held = set(matching)
            order = matching if ids is None else [i for i in dict.fromkeys(ids) if i in held]
        found, missing = cache.get(key, order, include_vectors)
        if missing:
            fetched = self._fetch(missing, None, include_vectors)
            cache.put(key, fetched)
            found.update((r.id, r) for r in fetched)
        return [found[i] for i in order if i in found]

    def _fetch(self, ids: Sequence[str] | None, where: Mapping[str, Any] | None, include_vectors: bool) -> list[Record]:
        """:meth:`get` from Chroma itself."""
        include = ["documents", "metadatas"] + (["embeddings"] if include_vectors else [])
        got = self._raw_get(ids, where, include)
        if not got:
            return []
        embs = got.get("embeddings") if include_vectors else None
        recs = {}
        for i, rid in enumerate(got["ids"]):
            vec = np.asarray(embs[i], dtype=np.float32) if embs is not None else None
            recs[rid] = Record(id=rid, vector=vec, text=got["documents"][i] or "",
                               metadata=_user_metadata(got["metadatas"][i]))
        if ids is None:
            return list(recs.values())
        return [recs[i] for i in dict.fromkeys(ids) if i in recs]

    def ids(self, where: Mapping[str, Any] | None = None) -> list[str]:
        """Ids of every record (matching ``where``), without fetching texts or vectors."""
        return self._matching_ids(None, where)

    def delete(self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None) -> int:
        """Delete records matching ``ids`` and/or ``where``; returns how many were removed."""
        if ids is None and where is None:
            raise InvalidInputError("chroma: delete needs ids and/or a filter (refusing to delete everything)")
        matched = self._matching_ids(ids, where)
        try:
            for part in _chunks(matched, self._max_batch):
                self._c.delete(ids=list(part))
        finally:
            if matched:
                self._wrote()
        if matched and self.count() == 0:
            self._data_dim = None
        return len(matched)

    def count(self) -> int:
        """Number of records. Remembered until the next write, by this or another process (a question
        asks it several times, and Chroma counts by scanning)."""
        col = self._c  # reopens first if another process wrote
        key = (self._version, self._shared.token if self._shared is not None else None)
        cached = self._count_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        n = int(col.count())
        self._count_cache = (key, n)
        return n

    def close(self) -> None:
        """Release the collection handle (Chroma persists every write itself); the shared client is
        closed with its last store, so a reopen reads the collection afresh. Idempotent."""
        shared, self._shared = self._shared, None
        self._col = None
        self._client = None
        if shared is not None:
            shared.release()

    def __enter__(self) -> ChromaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ChromaStore(path={str(self.path)!r}, collection={self.collection!r})"
