"""FAISS vector store with SQLite as the source of truth.

Layout under ``path`` for a collection ``name``:

* ``name.sqlite`` (WAL): table ``records`` (integer ``rowid`` = FAISS id, unique
  string ``id``, ``text``, ``metadata`` JSON, ``vector`` float32 BLOB exactly as
  given) and table ``meta`` (fingerprint JSON, dim, a ``generation`` counter
  bumped by every write that changes vectors, and the generation/size/CRC of the
  saved index file).
* ``name.faiss``: the search index over unit-normalised copies of the vectors, so
  inner product = cosine similarity (scores are cosine even when callers pass
  vectors that are not unit-norm; stored vectors are returned as given).

Index type: exact search (``IndexIDMap2(IndexFlatIP)``) below :data:`ANN_MIN_RECORDS`
(20,000) records, an inverted-file index ``IndexIVFFlat`` (inner product, k-means
coarse quantiser, full vectors in the lists) from there on:

* ``nlist = round(sqrt(n))`` lists for the ``n`` records at training time (316 at
  100k), trained on the collection's own vectors (FAISS k-means, seed 1234, at most
  256 points per list); retrained from SQLite when the collection has grown past
  ``4 * nlist**2`` or shrunk below ``nlist**2 / 4`` records (so ``nlist`` stays
  within a factor 2 of ``sqrt(n)``), and turned back into exact search below
  ``ANN_MIN_RECORDS / 2`` records (hysteresis);
* ``nprobe = ceil(nlist / ANN_NPROBE_DIVISOR)`` = ``ceil(nlist / 5)`` lists searched
  per query (64 of 316 at 100k: about a fifth of the vectors);
* a query with a ``where`` filter searches every list (``nprobe = nlist``) among the
  allowed ids only, so filtered results stay exact (no filter can starve the top-k).

Why IVF and not HNSW: FAISS's HNSW cannot remove vectors (``remove_ids`` is not
implemented), so deletes and re-upserted vectors would need tombstones and periodic
full rebuilds; ``IndexIVFFlat`` removes and adds ids in place, keeps rowids as its
ids, is deterministic to train, and becomes exact by probing every list. Tuned on
held-out data (``eval/stores_ef_sweep.py faiss``: 100k vectors of the store benchmark's
kind drawn with another seed, PubMedQA questions 200-399, one thread): nlist 316 gave
recall@10 0.954 / 0.972 / 0.977 / 0.978 at nprobe 40 / 53 / 64 / 79 (1.2-2.5 ms a
query); nlist 256 and 512 at the same probe fractions were within 0.01. On the store
benchmark (eval/README.md, issue #12) the store reached recall@10 0.986 at 2.2 ms p50.

Every upsert/delete is one SQLite transaction, then the in-memory index is updated.
The index file is only written by :meth:`FaissStore.flush` / :meth:`FaissStore.close`,
and its generation is recorded in SQLite *after* the file is atomically replaced;
on open, a missing, corrupt or stale index file is rebuilt from SQLite. A crash
therefore never leaves the store inconsistent, it only costs a rebuild.

Other processes' writes are picked up: every operation compares the SQLite
generation with the one the in-memory index reflects and reloads when they differ
(SQLite serialises writers). Metadata keys that filters test with ``$eq``/``$in``/
comparisons get an SQLite expression index on first use (at most 16 per collection),
so lookups such as ``{"doc_id": {"$in": [...]}}`` do not scan the table.
Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

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

logger = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,253}[A-Za-z0-9])?$")
_SQL_CHUNK = 900  # bound on "?" parameters per IN (...) clause
_REBUILD_CHUNK = 20_000
_MAX_AUTO_INDEXES = 16  # bound on per-key expression indexes (each costs some write time)
_NUMERIC_TYPES = "('integer','real')"

#: collections of at least this many records are searched with an IVF index (exact search below)
ANN_MIN_RECORDS = 20_000
#: an IVF index probes ceil(nlist / ANN_NPROBE_DIVISOR) of its nlist lists per unfiltered query
ANN_NPROBE_DIVISOR = 5
_TRAIN_MAX_PER_LIST = 256  # FAISS's own k-means subsampling bound


def ann_nlist(n: int) -> int | None:
    """Number of IVF lists for a collection of ``n`` records; None means exact search."""
    return max(1, round(math.sqrt(n))) if n >= ANN_MIN_RECORDS else None


def ann_nprobe(nlist: int) -> int:
    """Lists an unfiltered query searches in an IVF index of ``nlist`` lists."""
    return min(nlist, math.ceil(nlist / ANN_NPROBE_DIVISOR))


def _index_fits(index: Any, n: int) -> bool:
    """Whether ``index`` is the kind (and IVF size) the size policy wants for ``n`` records."""
    ivf = faiss.try_extract_index_ivf(index) if not isinstance(index, faiss.IndexIDMap2) else None
    if ivf is None:  # exact: fine until the ANN threshold
        return n < ANN_MIN_RECORDS
    return n >= ANN_MIN_RECORDS // 2 and ivf.nlist ** 2 / 4 <= n <= 4 * ivf.nlist ** 2


def describe_index(index: Any) -> str:
    """One line naming the index type and its search settings (for benchmarks and logs)."""
    if index is None or isinstance(index, faiss.IndexIDMap2):
        return f"exact (IndexFlatIP; IVF from {ANN_MIN_RECORDS:,} records)"
    ivf = faiss.extract_index_ivf(index)
    return f"IVF-Flat nlist={ivf.nlist}, nprobe={ann_nprobe(ivf.nlist)} (filtered: all lists)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start:start + size]


def _unit(mat: np.ndarray) -> np.ndarray:
    """Row-normalised float32 copy (zero rows stay zero)."""
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    return np.ascontiguousarray(mat / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def _metadata_json(record: Record, store: str) -> str:
    """Validate a record's text and metadata and serialise the metadata."""
    meta = record_metadata(record, store)
    return json.dumps(meta, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


# --------------------------------------------------------------------------- filters -> SQL


def _indexable(key: str) -> bool:
    """Whether ``key`` can be written as a quoted JSON path label (and so get an expression index)."""
    return not any(ch in key for ch in ('"', "\\", "\x00"))


def _path_literal(key: str) -> str:
    """SQL string literal for the JSON path of ``key`` (inlined so expression indexes apply)."""
    path = '$."' + key + '"'
    return "'" + path.replace("'", "''") + "'"


def _key_exprs(key: str) -> tuple[str, str, list[Any]]:
    """SQL for (json type, json value) of metadata[key] plus the parameters each one takes.

    ``json_type`` is NULL when the key is absent and 'true'/'false' for booleans, so
    booleans never compare equal to integers.
    """
    if not _indexable(key):
        return (
            "(SELECT type FROM json_each(records.metadata) WHERE key = ?)",
            "(SELECT value FROM json_each(records.metadata) WHERE key = ?)",
            [key],
        )
    path = _path_literal(key)
    return f"json_type(records.metadata, {path})", f"json_extract(records.metadata, {path})", []


def index_name(key: str) -> str:
    return "meta_" + hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


def index_sql(key: str) -> str:
    """``CREATE INDEX`` for the expression :func:`_key_exprs` uses as the value of ``key``."""
    return f'CREATE INDEX IF NOT EXISTS "{index_name(key)}" ON records(json_extract(metadata, {_path_literal(key)}))'


def positive_keys(node: Mapping[str, Any]) -> set[str]:
    """Keys a canonical filter tests with an operator an index can serve (not $ne/$nin)."""
    (key, cond), = node.items()
    if key in ("$and", "$or"):
        return set().union(*(positive_keys(c) for c in cond))
    (op, _), = cond.items()
    return {key} if op not in ("$ne", "$nin") and _indexable(key) else set()


def _sql_number(x: int | float) -> int | float:
    """Ints beyond SQLite's int64 cannot be bound; JSON stores them as reals anyway."""
    return float(x) if isinstance(x, int) and not -(2**63) <= x < 2**63 else x


def _equals_any(key: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
    """SQL true when metadata[key] equals one of ``values`` (type-aware)."""
    t, v, p = _key_exprs(key)
    parts: list[str] = []
    params: list[Any] = []
    bools = {x for x in values if isinstance(x, bool)}
    nums = [x for x in values if isinstance(x, int | float) and not isinstance(x, bool)]
    strs = [x for x in values if isinstance(x, str)]
    for b in sorted(bools):  # json_extract gives 1/0 for true/false: the value index applies, the type decides
        parts.append(f"({v} = {int(b)} AND {t} = '{'true' if b else 'false'}')")
        params += p + p
    nums = [_sql_number(x) for x in nums]
    for group, types in ((nums, _NUMERIC_TYPES), (strs, "('text')")):
        if group:
            # value test first: SQLite short-circuits AND, and it rejects most rows
            parts.append(f"({v} IN ({','.join('?' * len(group))}) AND {t} IN {types})")
            params += p + list(group) + p
    return "(" + " OR ".join(parts) + ")", params


def _leaf_sql(key: str, op: str, value: Any) -> tuple[str, list[Any]]:
    t, v, p = _key_exprs(key)
    if op in ("$eq", "$in"):
        return _equals_any(key, value if op == "$in" else [value])
    if op in ("$ne", "$nin"):
        eq, eq_params = _equals_any(key, value if op == "$nin" else [value])
        return f"({t} IS NOT NULL AND NOT COALESCE({eq}, 0))", p + eq_params
    sym = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
    return f"({v} {sym} ? AND {t} IN {_NUMERIC_TYPES})", p + [_sql_number(value)] + p


def filter_sql(node: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """Translate a canonical filter tree (see :func:`heterag.stores.filters.normalize`) to SQL."""
    (key, cond), = node.items()
    if key in ("$and", "$or"):
        pieces = [filter_sql(c) for c in cond]
        joiner = " AND " if key == "$and" else " OR "
        return "(" + joiner.join(s for s, _ in pieces) + ")", [x for _, ps in pieces for x in ps]
    (op, value), = cond.items()
    return _leaf_sql(key, op, value)


# --------------------------------------------------------------------------- store


class FaissStore:
    """Cosine search with FAISS (exact, or IVF from :data:`ANN_MIN_RECORDS` records), records and
    filters in SQLite."""

    name = "faiss"

    def __init__(self, path: str | Path, collection: str = "default") -> None:
        if not isinstance(collection, str) or not _NAME_RE.match(collection):
            raise InvalidInputError(
                f"faiss: invalid collection name {collection!r}; use 1-255 characters from "
                "[A-Za-z0-9._-], starting and ending with a letter or digit"
            )
        self.collection = collection
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._db_path = self.path / f"{collection}.sqlite"
        self._index_path = self.path / f"{collection}.faiss"
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self._db_path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._index: faiss.Index | None = None  # IndexIDMap2(IndexFlatIP) or IndexIVFFlat
        self._generation = -1  # generation the in-memory index reflects
        self._needs_save = False  # index was rebuilt although the file's generation was current
        self._touched = False  # the in-memory index was modified inside the current write transaction
        self._indexes = {  # per-key expression indexes (see _ensure_indexes)
            row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'meta_%'")
        }
        with self._lock:
            self._sync()

    # ------------------------------------------------------------------ internals

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise HeteragError(f"faiss collection {self.collection!r} is closed")
        return self._conn

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, **values: Any) -> None:
        self._db.executemany(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [(k, str(v)) for k, v in values.items()],
        )

    def _db_generation(self) -> int:
        return int(self._meta("generation") or 0)

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One IMMEDIATE transaction; the index is synced first.

        The generation is bumped only when the body changed the in-memory index
        (``_touched``), so metadata-only or no-op writes keep a saved index valid.
        """
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            self._touched = False
            try:
                self._sync()
                yield
                if self._touched:
                    self._generation = self._db_generation() + 1
                    self._set_meta(generation=self._generation)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if self._touched:
                    self._generation = -1  # index is ahead of SQLite: force a reload
                raise

    def _stored_dim(self) -> int | None:
        dim = self._meta("dim")
        return int(dim) if dim else None

    def _sync(self) -> None:
        """Make the in-memory index reflect the current SQLite generation."""
        gen = self._db_generation()
        if gen == self._generation and (self._index is not None or self._stored_dim() is None):
            return
        if self._db.in_transaction:
            self._reload(gen)
            return
        self._db.execute("BEGIN")  # one consistent snapshot for the reload
        try:
            self._reload(self._db_generation())
        finally:
            self._db.execute("COMMIT")

    def _reload(self, gen: int) -> None:
        loaded = self._load_index(gen)
        if loaded is not None and not _index_fits(loaded, loaded.ntotal):
            logger.info("faiss: index file %s is not the index type for %d records; rebuilding", self._index_path, loaded.ntotal)
            loaded = None
        self._index = loaded if loaded is not None else self._rebuild_index()
        self._needs_save = loaded is None and self._index is not None
        self._generation = gen

    def _load_index(self, gen: int) -> faiss.Index | None:
        """The saved index if it exists, is intact and reflects generation ``gen``."""
        if self._meta("index_generation") != str(gen) or not self._index_path.exists():
            return None
        try:
            data = self._index_path.read_bytes()
            if len(data) != int(self._meta("index_size") or -1) or zlib.crc32(data) != int(self._meta("index_crc") or -1):
                raise ValueError("size or checksum mismatch")
            del data
            # read_index owns its memory (deserialize_index may keep views into the buffer)
            index = faiss.read_index(str(self._index_path))
        except (OSError, ValueError, RuntimeError) as exc:
            logger.warning("faiss: index file %s unusable (%s); rebuilding from SQLite", self._index_path, exc)
            return None
        count = self._count()
        if index.ntotal != count or index.d != (self._stored_dim() or index.d):
            logger.warning("faiss: index file %s does not match SQLite; rebuilding", self._index_path)
            return None
        return index

    def _rebuild_index(self) -> faiss.Index | None:
        """A new index over every record in SQLite, of the type :func:`ann_nlist` wants for their number."""
        dim = self._stored_dim()
        if dim is None:
            return None
        n = self._count()
        nlist = ann_nlist(n)
        logger.info("faiss: building the index of collection %r from SQLite (%d records, %s)", self.collection, n,
                    "exact" if nlist is None else f"IVF nlist={nlist}")
        if nlist is None:
            index: faiss.Index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        else:
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(self._training_sample(dim, n, nlist))
            index.nprobe = ann_nprobe(nlist)
        cur = self._db.execute("SELECT rowid, vector FROM records ORDER BY rowid")
        while rows := cur.fetchmany(_REBUILD_CHUNK):
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            mat = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
            index.add_with_ids(_unit(mat), ids)
        return index

    def _training_sample(self, dim: int, n: int, nlist: int) -> np.ndarray:
        """Unit vectors for k-means: every record, or an even stride of them (by rowid) when there are
        more than FAISS would use (256 per list); deterministic for a given SQLite content."""
        stride = max(1, n // (nlist * _TRAIN_MAX_PER_LIST))
        sql = "SELECT vector FROM records ORDER BY rowid"
        blobs = [row[0] for i, row in enumerate(self._db.execute(sql)) if i % stride == 0]
        return _unit(np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim))

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def _ensure_indexes(self, canon: Mapping[str, Any]) -> None:
        """Index each metadata key that filters test (so e.g. ``doc_id`` lookups do not scan).

        Runs outside write transactions only; at most ``_MAX_AUTO_INDEXES`` keys per collection.
        """
        if self._db.in_transaction:
            return
        for key in sorted(positive_keys(canon)):
            name = index_name(key)
            if name in self._indexes:
                continue
            if len(self._indexes) >= _MAX_AUTO_INDEXES:
                return
            try:
                self._db.execute(index_sql(key))
            except sqlite3.OperationalError as exc:  # e.g. another process holds the write lock
                logger.debug("faiss: could not index metadata key %r: %s", key, exc)
                return
            logger.debug("faiss: indexed metadata key %r", key)
            self._indexes.add(name)

    def _where_rowids(self, ids: Sequence[str] | None, where: Mapping[str, Any] | None) -> list[int]:
        """Rowids of records matching ``ids`` (if given) and ``where`` (if given)."""
        canon = normalize(where)
        if canon:
            self._ensure_indexes(canon)
        fsql, fparams = filter_sql(canon) if canon else ("1", [])
        if ids is None:
            return [r[0] for r in self._db.execute(f"SELECT rowid FROM records WHERE {fsql}", fparams)]
        out: list[int] = []
        for part in _chunks(list(dict.fromkeys(ids)), _SQL_CHUNK):
            sql = f"SELECT rowid FROM records WHERE id IN ({','.join('?' * len(part))}) AND {fsql}"
            out += [r[0] for r in self._db.execute(sql, [*part, *fparams])]
        return out

    def _fetch(self, rowids: Sequence[int], include_vectors: bool) -> dict[int, Record]:
        cols = "rowid, id, text, metadata" + (", vector" if include_vectors else "")
        out: dict[int, Record] = {}
        for part in _chunks(list(rowids), _SQL_CHUNK):
            sql = f"SELECT {cols} FROM records WHERE rowid IN ({','.join('?' * len(part))})"
            for row in self._db.execute(sql, list(part)):
                vec = np.frombuffer(row[4], dtype=np.float32).copy() if include_vectors else None
                out[row[0]] = Record(id=row[1], vector=vec, text=row[2], metadata=json.loads(row[3]))
        return out

    # ------------------------------------------------------------------ protocol

    @property
    def dim(self) -> int | None:
        with self._lock:
            fp = self.fingerprint()
            return fp.dim if fp else self._stored_dim()

    def fingerprint(self) -> Fingerprint | None:
        with self._lock:
            text = self._meta("fingerprint")
            return Fingerprint.from_json(text) if text else None

    def set_fingerprint(self, fp: Fingerprint) -> None:
        with self._lock:
            current = self.fingerprint()
            if current is not None:
                current.check(fp, where=f"faiss collection {self.collection!r}")
                return
            with self._write():
                current = self.fingerprint()  # re-read under the write lock (another process may have set it)
                if current is not None:
                    current.check(fp, where=f"faiss collection {self.collection!r}")
                    return
                stored = self._stored_dim()
                if stored is not None and stored != fp.dim:
                    raise DimensionMismatchError(
                        f"faiss: collection {self.collection!r} holds dimension {stored}, fingerprint says {fp.dim}"
                    )
                self._set_meta(fingerprint=fp.to_json())

    def upsert(self, records: Sequence[Record]) -> None:
        """Insert or replace records (atomically: all of the batch or none)."""
        records = list(records)
        mat = as_matrix(records, self.dim, self.name)
        if not records:
            return
        metas = [_metadata_json(r, self.name) for r in records]
        unit = _unit(mat)
        with self._write():
            dim = self.dim
            if dim is not None and dim != mat.shape[1]:  # another process set it meanwhile
                raise DimensionMismatchError(f"faiss: vectors have dimension {mat.shape[1]}, store holds {dim}")
            existing = self._existing(records)
            next_rowid = int(self._db.execute("SELECT COALESCE(MAX(rowid), 0) + 1 FROM records").fetchone()[0])
            rowids, changed, inserts, updates = [], [], [], []
            for i, (rec, meta) in enumerate(zip(records, metas, strict=True)):
                blob = mat[i].tobytes()
                if rec.id in existing:
                    rowid, old_blob = existing[rec.id]
                    updates.append((rec.text, meta, blob, rowid))
                    if old_blob != blob:
                        changed.append(rowid)
                        rowids.append((i, rowid))
                else:
                    rowid, next_rowid = next_rowid, next_rowid + 1
                    inserts.append((rowid, rec.id, rec.text, meta, blob))
                    rowids.append((i, rowid))
            self._db.executemany("UPDATE records SET text = ?, metadata = ?, vector = ? WHERE rowid = ?", updates)
            self._db.executemany("INSERT INTO records(rowid, id, text, metadata, vector) VALUES (?,?,?,?,?)", inserts)
            self._set_meta(dim=mat.shape[1])
            self._apply_to_index(mat.shape[1], changed, rowids, unit)

    def _existing(self, records: Sequence[Record]) -> dict[str, tuple[int, bytes]]:
        found: dict[str, tuple[int, bytes]] = {}
        ids = [r.id for r in records]
        for part in _chunks(ids, _SQL_CHUNK):
            sql = f"SELECT id, rowid, vector FROM records WHERE id IN ({','.join('?' * len(part))})"
            found.update((r[0], (r[1], r[2])) for r in self._db.execute(sql, list(part)))
        return found

    def _apply_to_index(self, dim: int, removed: list[int], added: list[tuple[int, int]], unit: np.ndarray) -> None:
        """Mirror a write in the in-memory index (called inside the write transaction)."""
        if not removed and not added:
            return
        self._touched = True
        if self._index is None or self._index.d != dim:
            if self._count() != len(added):
                raise DimensionMismatchError(f"faiss: collection {self.collection!r} holds another dimension")
            self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if removed:
            self._index.remove_ids(np.asarray(removed, dtype=np.int64))
        if added:
            rows = [i for i, _ in added]
            self._index.add_with_ids(unit[rows], np.asarray([r for _, r in added], dtype=np.int64))
        self._resize_index()

    def _resize_index(self) -> None:
        """Rebuild from SQLite (inside the write transaction, so with this write) when the collection has
        crossed a size where the policy of :func:`ann_nlist` wants another index; the rebuild is part of
        the write (a failure rolls both back)."""
        if self._index is not None and not _index_fits(self._index, self._index.ntotal):
            self._index = self._rebuild_index()

    def query(self, vector: np.ndarray, k: int = 10, where: Mapping[str, Any] | None = None) -> list[ScoredRecord]:
        """Top-``k`` records by cosine similarity, best first, optionally filtered."""
        return self._query(check_query_vector(vector, self.dim, self.name)[None, :], k, where)[0]

    def query_many(self, vectors: np.ndarray, k: int = 10, where: Mapping[str, Any] | None = None) -> list[list[ScoredRecord]]:
        """:meth:`query` for each row of ``vectors`` ``(n, dim)``: one index search over the matrix, one fetch
        of the records."""
        return self._query(check_query_matrix(vectors, self.dim, self.name), k, where)

    def _query(self, q: np.ndarray, k: int, where: Mapping[str, Any] | None) -> list[list[ScoredRecord]]:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidInputError(f"faiss: k must be a positive integer, got {k!r}")
        with self._lock:
            self._sync()
            if self._index is None or self._index.ntotal == 0 or len(q) == 0:
                return [[] for _ in range(len(q))]
            n = self._index.ntotal
            ivf = not isinstance(self._index, faiss.IndexIDMap2)
            params: Any = faiss.SearchParametersIVF(nprobe=ann_nprobe(self._index.nlist)) if ivf else None
            if where is not None:
                allowed = self._where_rowids(None, where)
                if not allowed:
                    return [[] for _ in range(len(q))]
                if len(allowed) < n:  # exact among the allowed ids: an IVF index probes every list
                    sel = faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64))
                    params = faiss.SearchParametersIVF(sel=sel, nprobe=self._index.nlist) if ivf else faiss.SearchParameters(sel=sel)
                n = len(allowed)
            scores, labels = self._index.search(_unit(q), min(int(k), n), params=params)
            hits = [[(int(i), float(s)) for i, s in zip(row_labels, row_scores, strict=True) if i >= 0]
                    for row_labels, row_scores in zip(labels, scores, strict=True)]
            recs = self._fetch(list(dict.fromkeys(i for row in hits for i, _ in row)), include_vectors=False)
            return [[ScoredRecord(recs[i], s) for i, s in row if i in recs] for row in hits]

    def get(
        self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None, include_vectors: bool = False
    ) -> list[Record]:
        """Records by id (order of ``ids``, missing skipped) and/or filter (insertion order)."""
        with self._lock:
            rowids = self._where_rowids(ids, where)
            recs = self._fetch(rowids, include_vectors)
        if ids is None:
            return [recs[r] for r in sorted(recs)]
        by_id = {r.id: r for r in recs.values()}
        return [by_id[i] for i in dict.fromkeys(ids) if i in by_id]

    def ids(self, where: Mapping[str, Any] | None = None) -> list[str]:
        """Ids of every record (matching ``where``), without fetching texts or vectors."""
        with self._lock:
            if where is None:
                return [row[0] for row in self._db.execute("SELECT id FROM records ORDER BY rowid")]
            rowids = self._where_rowids(None, where)
            return [r.id for _, r in sorted(self._fetch(rowids, False).items())]

    def delete(self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None) -> int:
        """Delete records matching ``ids`` and/or ``where``; returns how many were removed."""
        if ids is None and where is None:
            raise InvalidInputError("faiss: delete needs ids and/or a filter (refusing to delete everything)")
        if ids is not None and not ids:
            return 0
        with self._write():
            rowids = self._where_rowids(ids, where)
            for part in _chunks(rowids, _SQL_CHUNK):
                self._db.execute(f"DELETE FROM records WHERE rowid IN ({','.join('?' * len(part))})", list(part))
            if self._count() == 0:
                self._db.execute("DELETE FROM meta WHERE key = 'dim'")
            self._apply_delete(rowids)
        return len(rowids)

    def _apply_delete(self, rowids: list[int]) -> None:
        if not rowids:
            return
        self._touched = True
        if self._stored_dim() is None:
            self._index = None
        elif self._index is not None:
            self._index.remove_ids(np.asarray(rowids, dtype=np.int64))
            self._resize_index()

    def count(self) -> int:
        with self._lock:
            return self._count()

    def index_settings(self) -> str:
        """The current index type and its search settings, e.g. ``IVF-Flat nlist=316, nprobe=64 ...``."""
        with self._lock:
            self._sync()
            return describe_index(self._index)

    def flush(self) -> None:
        """Save the index file if it is behind SQLite.

        Runs under SQLite's write lock; the file is replaced atomically and its
        generation recorded afterwards, so a crash in between only makes it stale.
        """
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                self._sync()
                if self._needs_save or self._meta("index_generation") != str(self._generation):
                    size, crc = self._save_index_file()
                    self._set_meta(index_generation=self._generation, index_size=size, index_crc=crc)
                    self._needs_save = False
                    logger.debug("faiss: saved index %s at generation %d", self._index_path, self._generation)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _save_index_file(self) -> tuple[int, int]:
        """Write the index via a temporary file and ``os.replace``; returns (size, crc32)."""
        if self._index is None:
            self._index_path.unlink(missing_ok=True)
            return -1, -1
        data = faiss.serialize_index(self._index).tobytes()
        tmp = self._index_path.with_name(f"{self._index_path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._index_path)
        return len(data), zlib.crc32(data)

    def close(self) -> None:
        """Save the index and close SQLite; further use raises. Idempotent."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self.flush()
            finally:
                self._conn.close()
                self._conn = None
                self._index = None

    def __enter__(self) -> FaissStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FaissStore(path={str(self.path)!r}, collection={self.collection!r})"
