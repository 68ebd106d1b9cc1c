"""PostgreSQL + pgvector store (``postgresql://USER:PASSWORD@HOST:PORT/DB``, any libpq URI).

Layout in the database (current schema):

* ``heterag_collections``: one row per collection (``name``, data ``tbl``, ``dim``, ``fingerprint`` JSON).
* one data table per collection, ``heterag_<sha1(name)[:20]>``: ``id text PRIMARY KEY``,
  ``embedding vector(dim)`` (exactly as given), ``text``, ``metadata jsonb``; an HNSW index with
  ``vector_cosine_ops`` (m=16, ef_construction=64), so ``1 - (embedding <=> q)`` is the cosine score.
  The table is created when the dimension becomes known (first upsert or fingerprint) and
  recreated for another dimension only while empty and without fingerprint.

Filters are translated to SQL on the jsonb column with the semantics of :func:`heterag.stores.filters.matches`:
jsonb equality already tells ``true`` from ``1`` and equates ``1`` with ``1.0``; order comparisons only
apply to JSON numbers (compared as exact ``numeric``). Filtered queries run with
``hnsw.iterative_scan = strict_order`` (pgvector >= 0.8), so a selective filter still returns ``k`` rows
in exact distance order, and ``hnsw.ef_search = clamp(k, 200, 1000)`` (:data:`EF_SEARCH`).

Every call is one transaction; writers of one collection are serialised by a transaction-level
advisory lock, so several processes can write and query one collection at once. Connection and
authentication failures raise :class:`~heterag.core.errors.StoreUnavailableError` (one line, password hidden)
within :data:`CONNECT_TIMEOUT_S` seconds.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.types.json import Jsonb

from heterag.core.errors import DimensionMismatchError, HeteragError, InvalidInputError, StoreUnavailableError
from heterag.stores.base import Fingerprint, Record, ScoredRecord, as_matrix, check_query_vector, record_metadata
from heterag.stores.filters import normalize
from heterag.stores.url import StoreURL

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5
REGISTRY = "heterag_collections"
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 64
#: search ef floor: on 100k MiniLM vectors of PubMedQA text recall@10 was 0.943 at 100, 0.961 at 150, 0.967 at 200
#: (eval/README.md, issue #12)
EF_SEARCH = 200
_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,253}[A-Za-z0-9])?$")
_SETUP_LOCK = 0x68657465  # advisory lock id for creating the extension and the registry
_BATCH = 2000


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def connect(url: StoreURL) -> psycopg.Connection:
    """Open an autocommit connection to ``url`` with the pgvector types registered, creating the
    extension and the registry table if needed."""
    assert url.location is not None
    try:
        conn = psycopg.connect(url.location, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True)
    except psycopg.Error as exc:
        raise StoreUnavailableError(f"cannot connect to PostgreSQL {url.display()}: {_one_line(exc)}") from None
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SETUP_LOCK,))
            if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone() is None:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {REGISTRY} (name text PRIMARY KEY, tbl text NOT NULL, dim integer, fingerprint text)"
            )
        register_vector(conn)
    except psycopg.Error as exc:
        conn.close()
        raise StoreUnavailableError(
            f"PostgreSQL {url.display()} cannot hold vectors (is the pgvector extension installed?): {_one_line(exc)}"
        ) from None
    return conn


# --------------------------------------------------------------------------- filters


def _number(x: int | float) -> Decimal:
    """Exact numeric operand: floats as their shortest repr (the text jsonb stores them as)."""
    return Decimal(repr(x)) if isinstance(x, float) else Decimal(x)


def _leaf_sql(key: str, op: str, value: Any) -> tuple[sql.Composable, list[Any]]:
    field = sql.SQL("(metadata -> %s)")
    if op in ("$eq", "$ne"):
        cmp = "=" if op == "$eq" else "<>"
        return sql.SQL("COALESCE({} {} %s::jsonb, false)").format(field, sql.SQL(cmp)), [key, Jsonb(value)]
    if op in ("$in", "$nin"):
        marks = sql.SQL(", ").join([sql.SQL("%s::jsonb")] * len(value))
        neg = sql.SQL("NOT IN") if op == "$nin" else sql.SQL("IN")
        return sql.SQL("COALESCE({} {} ({}), false)").format(field, neg, marks), [key, *[Jsonb(v) for v in value]]
    cmp = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
    return (sql.SQL("(CASE WHEN jsonb_typeof(metadata -> %s) = 'number' THEN (metadata ->> %s)::numeric {} %s::numeric "
                    "ELSE false END)").format(sql.SQL(cmp)), [key, key, _number(value)])


def filter_sql(node: Mapping[str, Any]) -> tuple[sql.Composable, list[Any]]:
    """Translate a canonical filter tree (:func:`heterag.stores.filters.normalize`) to a SQL condition and its parameters."""
    (key, cond), = node.items()
    if key in ("$and", "$or"):
        parts, params = [], []
        for c in cond:
            s, p = filter_sql(c)
            parts.append(s)
            params.extend(p)
        joiner = sql.SQL(" AND " if key == "$and" else " OR ")
        return sql.SQL("(") + joiner.join(parts) + sql.SQL(")"), params
    (op, value), = cond.items()
    return _leaf_sql(key, op, value)


# --------------------------------------------------------------------------- store


def _array(value: Any) -> np.ndarray:
    """float32 copy of a fetched ``vector`` value (pgvector's ``Vector``, or an array)."""
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, dtype=np.float32)


class PgVectorStore:
    """Vector store backed by a PostgreSQL table with a pgvector HNSW (cosine) index."""

    def __init__(self, url: StoreURL, collection: str = "default") -> None:
        if not isinstance(collection, str) or not _NAME_RE.match(collection):
            raise InvalidInputError(
                f"pgvector: invalid collection name {collection!r}: use 1-255 letters, digits, '.', '_' or '-', "
                "starting and ending with a letter or digit")
        self.url = url
        self.name = url.display()
        self.collection = collection
        self.table = "heterag_" + hashlib.sha1(collection.encode()).hexdigest()[:20]
        self._lock = threading.RLock()
        self._fp: Fingerprint | None = None
        self._conn: psycopg.Connection | None = connect(url)
        try:
            with self._conn.transaction():
                self._conn.execute(f"INSERT INTO {REGISTRY} (name, tbl) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                                   (collection, self.table))
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ internals

    @property
    def _db(self) -> psycopg.Connection:
        if self._conn is None:
            raise HeteragError(f"pgvector collection {self.collection!r} is closed")
        return self._conn

    def _row(self) -> tuple[int | None, str | None]:
        row = self._db.execute(f"SELECT dim, fingerprint FROM {REGISTRY} WHERE name = %s", (self.collection,)).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def _table_exists(self) -> bool:
        return self._db.execute("SELECT to_regclass(%s) IS NOT NULL", (self.table,)).fetchone()[0]

    def _lock_collection(self) -> None:
        self._db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"heterag:{self.collection}",))

    def _create_table(self, dim: int) -> None:
        """(Re)create the data table for ``dim`` (inside a write transaction holding the collection lock)."""
        t = sql.Identifier(self.table)
        self._db.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(t))
        self._db.execute(sql.SQL("CREATE TABLE {} (id text PRIMARY KEY, embedding vector({}) NOT NULL, "
                                 "text text NOT NULL, metadata jsonb NOT NULL)").format(t, sql.Literal(int(dim))))
        self._db.execute(sql.SQL("CREATE INDEX ON {} USING hnsw (embedding vector_cosine_ops) WITH (m = {}, ef_construction = {})")
                         .format(t, sql.Literal(HNSW_M), sql.Literal(HNSW_EF_CONSTRUCTION)))
        self._db.execute(f"UPDATE {REGISTRY} SET dim = %s WHERE name = %s", (int(dim), self.collection))

    def _count(self) -> int:
        if not self._table_exists():
            return 0
        return int(self._db.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(self.table))).fetchone()[0])

    def _where(self, ids: Sequence[str] | None, where: Mapping[str, Any] | None) -> tuple[sql.Composable, list[Any]] | None:
        """SQL condition for ``ids`` and/or ``where``; None when nothing can match."""
        canon = normalize(where)
        conds: list[sql.Composable] = []
        params: list[Any] = []
        if ids is not None:
            if not ids:
                return None
            conds.append(sql.SQL("id = ANY(%s)"))
            params.append(list(dict.fromkeys(ids)))
        if canon is not None:
            s, p = filter_sql(canon)
            conds.append(s)
            params.extend(p)
        if not conds:
            return sql.SQL("true"), []
        return sql.SQL(" AND ").join(conds), params

    # ------------------------------------------------------------------ protocol

    @property
    def dim(self) -> int | None:
        fp = self.fingerprint()
        if fp is not None:
            return fp.dim
        with self._lock:
            dim, _ = self._row()
            return dim if dim is not None and self._count() else None

    def fingerprint(self) -> Fingerprint | None:
        if self._fp is None:
            with self._lock:
                _, text = self._row()
            self._fp = Fingerprint.from_json(text) if text else None
        return self._fp

    def set_fingerprint(self, fp: Fingerprint) -> None:
        with self._lock, self._db.transaction():
            self._lock_collection()
            dim, text = self._row()
            if text:
                self._fp = Fingerprint.from_json(text)
                self._fp.check(fp, where=f"pgvector collection {self.collection!r}")
                return
            n = self._count()
            if n and dim != fp.dim:
                raise DimensionMismatchError(f"pgvector: collection {self.collection!r} holds dimension {dim}, fingerprint says {fp.dim}")
            if not n and (dim != fp.dim or not self._table_exists()):
                self._create_table(fp.dim)
            self._db.execute(f"UPDATE {REGISTRY} SET fingerprint = %s WHERE name = %s", (fp.to_json(), self.collection))
        self._fp = fp

    def upsert(self, records: Sequence[Record]) -> None:
        """Insert or replace records, all in one transaction."""
        records = list(records)
        mat = as_matrix(records, self.dim, self.name)
        if not records:
            return
        rows = []
        for r, vec in zip(records, mat, strict=True):
            meta = record_metadata(r, self.name, "pgvector")
            rows.append((r.id, vec, r.text, Jsonb(meta)))
        t = sql.Identifier(self.table)
        stmt = sql.SQL("INSERT INTO {} (id, embedding, text, metadata) VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE "
                       "SET embedding = EXCLUDED.embedding, text = EXCLUDED.text, metadata = EXCLUDED.metadata").format(t)
        try:
            with self._lock, self._db.transaction():
                self._lock_collection()
                dim, text = self._row()
                if text is None and (dim != mat.shape[1] or not self._table_exists()):
                    if self._count():
                        raise DimensionMismatchError(
                            f"{self.name}: vectors have dimension {mat.shape[1]}, this store holds dimension {dim}")
                    self._create_table(mat.shape[1])
                with self._db.cursor() as cur:
                    for start in range(0, len(rows), _BATCH):
                        cur.executemany(stmt, rows[start:start + _BATCH])
        except psycopg.DataError as exc:
            raise InvalidInputError(f"pgvector: {_one_line(exc)}") from None

    def query(self, vector: np.ndarray, k: int = 10, where: Mapping[str, Any] | None = None) -> list[ScoredRecord]:
        """Top-``k`` records by cosine similarity (``1 - (embedding <=> q)``), best first."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidInputError(f"pgvector: k must be a positive integer, got {k!r}")
        with self._lock:
            size, _ = self._row()  # the table's dimension: no count(*) (a table scan) when the query fits it
            fits = self._fp is None and size is not None and len(np.ravel(vector)) == size
            q = check_query_vector(vector, size if fits else self.dim, self.name)
        cond = self._where(None, where)
        with self._lock, self._db.transaction():
            if cond is None or not self._table_exists():
                return []
            self._db.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(min(1000, max(EF_SEARCH, int(k))))))
            self._db.execute("SET LOCAL hnsw.iterative_scan = strict_order")
            stmt = sql.SQL("SELECT id, text, metadata, embedding <=> %s AS d FROM {} WHERE {} ORDER BY embedding <=> %s LIMIT %s").format(
                sql.Identifier(self.table), cond[0])
            rows = self._db.execute(stmt, [q, *cond[1], q, int(k)]).fetchall()
        return [ScoredRecord(Record(id=i, vector=None, text=text, metadata=meta), 1.0 - float(d)) for i, text, meta, d in rows]

    def get(
        self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None, include_vectors: bool = False
    ) -> list[Record]:
        """Records by id (order of ``ids``, missing skipped) and/or filter."""
        cond = self._where(ids, where)
        with self._lock:
            if cond is None or not self._table_exists():
                return []
            cols = sql.SQL("id, text, metadata" + (", embedding" if include_vectors else ""))
            rows = self._db.execute(sql.SQL("SELECT {} FROM {} WHERE {}").format(cols, sql.Identifier(self.table), cond[0]),
                                    cond[1]).fetchall()
        recs = {row[0]: Record(id=row[0], text=row[1], metadata=row[2],
                               vector=_array(row[3]) if include_vectors else None) for row in rows}
        if ids is None:
            return list(recs.values())
        return [recs[i] for i in dict.fromkeys(ids) if i in recs]

    def ids(self, where: Mapping[str, Any] | None = None) -> list[str]:
        cond = self._where(None, where)
        with self._lock:
            if cond is None or not self._table_exists():
                return []
            stmt = sql.SQL("SELECT id FROM {} WHERE {}").format(sql.Identifier(self.table), cond[0])
            return [r[0] for r in self._db.execute(stmt, cond[1]).fetchall()]

    def delete(self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None) -> int:
        """Delete records matching ``ids`` and/or ``where``; returns how many were removed."""
        if ids is None and where is None:
            raise InvalidInputError("pgvector: delete needs ids and/or a filter (refusing to delete everything)")
        cond = self._where(ids, where)
        with self._lock, self._db.transaction():
            if cond is None or not self._table_exists():
                return 0
            self._lock_collection()
            cur = self._db.execute(sql.SQL("DELETE FROM {} WHERE {}").format(sql.Identifier(self.table), cond[0]), cond[1])
            return int(cur.rowcount)

    def count(self) -> int:
        with self._lock:
            return self._count()

    def drop(self) -> None:
        """Remove the collection (table and registry row) from the database."""
        with self._lock, self._db.transaction():
            self._lock_collection()
            self._db.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(self.table)))
            self._db.execute(f"DELETE FROM {REGISTRY} WHERE name = %s", (self.collection,))
        self._fp = None

    def close(self) -> None:
        """Close the connection (everything is committed already). Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> PgVectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PgVectorStore(url={self.name!r}, collection={self.collection!r})"


__all__ = ["PgVectorStore", "connect", "filter_sql"]
