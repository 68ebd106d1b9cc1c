"""PostgreSQL + pgvector store (``postgresql://USER:PASSWORD@HOST:PORT/DB``, any libpq URI).

Layout in the database (current schema):

* ``heterag_collections``: one row per collection (``name``, data ``tbl``, ``dim``, ``fingerprint`` JSON).
* one data table per collection, ``heterag_<sha1(name)[:20]>``: ``id text PRIMARY KEY``,
  ``embedding vector(dim)`` (exactly as given), ``text``, ``metadata jsonb``; an HNSW index with
  ``vector_cosine_ops`` (m=16, ef_construction=64), so ``1 - (embedding <=> q)`` is the cosine score.
  The table is created when the dimension becomes known (first upsert or fingerprint) and
  recreated for another dimension only while empty and without fingerprint.
* keyword search in the same table (PostgreSQL full-text search, no local file): a ``tsv tsvector``
  column holding the terms of :func:`heterag.stores.keyword.keyword_text` as tokenised by
  :func:`heterag.stores.tokenizer.tokenize` (so ``IL-6`` stays ``il-6`` as on every other backend; PostgreSQL's
  own parsers would split it), with their positions, written in the same INSERT/UPSERT as the vector,
  and a GIN index on it. :func:`open_pgvector` gives a :class:`PgVectorKeywordStore` (which answers
  keyword queries) for such a table; a table made before this has no ``tsv`` column and opens as a
  dense-only :class:`PgVectorStore`, until :meth:`PgVectorStore.keyword_search` with ``create=True`` adds,
  fills and indexes the column in one transaction.

Filters are translated to SQL on the jsonb column with the semantics of :func:`heterag.stores.filters.matches`:
jsonb equality already tells ``true`` from ``1`` and equates ``1`` with ``1.0``; order comparisons only
apply to JSON numbers (compared as exact ``numeric``). Filtered queries run with
``hnsw.iterative_scan = strict_order`` (pgvector >= 0.8), so a selective filter still returns ``k`` rows
in exact distance order, and ``hnsw.ef_search = clamp(k, ef_search, 1000)``. ``ef_search`` is :data:`EF_SEARCH`
and the index's ``ef_construction`` :data:`HNSW_EF_CONSTRUCTION` unless the URL sets them
(``postgresql://.../db?ef_construction=128&ef_search=800``: heterag parameters, taken off before the URL reaches
libpq; ``ef_construction`` applies when the collection's table is created); a large collection needs more than
the defaults for the same recall (eval/README.md, issue #26).

**Bulk loads** (:meth:`PgVectorStore.bulk_load`, used by ``heterag migrate``): pgvector's advice for an initial load,
load the rows first and build the HNSW index once at the end, in memory (``maintenance_work_mem``) and with
parallel workers; several times faster than writing a large collection through the index, and the only
practical way to a high ``ef_construction`` at a million rows (eval/README.md, issue #26).

Every call is one transaction; writers of one collection are serialised by a transaction-level
advisory lock, so several processes can write and query one collection at once. Connection and
authentication failures raise :class:`~heterag.core.errors.StoreUnavailableError` (one line, password hidden)
within :data:`CONNECT_TIMEOUT_S` seconds.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.types.json import Jsonb

from heterag.core.errors import DimensionMismatchError, HeteragError, InvalidInputError, KeywordIndexError, StoreUnavailableError
from heterag.stores.base import Fingerprint, Record, ScoredRecord, as_matrix, check_query_vector, record_metadata
from heterag.stores.filters import normalize
from heterag.stores.keyword import MAX_QUERY_TERMS, keyword_text
from heterag.stores.tokenizer import query_terms, tokenize
from heterag.stores.url import StoreURL

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5
REGISTRY = "heterag_collections"
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 64
#: search ef floor: on 100k MiniLM vectors of PubMedQA text recall@10 was 0.943 at 100, 0.961 at 150, 0.967 at 200
#: (eval/README.md, issue #12)
EF_SEARCH = 200
#: pgvector's upper bound for ``hnsw.ef_search``
MAX_EF_SEARCH = 1000
_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,253}[A-Za-z0-9])?$")
_SETUP_LOCK = 0x68657465  # advisory lock id for creating the extension and the registry
_BATCH = 2000
#: ``maintenance_work_mem`` of a bulk load's index build: the HNSW graph is built in memory while it fits (1M
#: 384-dim vectors need about 2.5 GB; past it pgvector goes on, much slower, and says so in the server log)
BULK_MAINTENANCE_WORK_MEM = "1GB"
_MEMORY_RE = re.compile(r"([1-9][0-9]{0,12})(kB|MB|GB|TB)")
_MEMORY_KB = {"kB": 1, "MB": 1024, "GB": 1024**2, "TB": 1024**3}
#: PostgreSQL's range of ``maintenance_work_mem`` in kB
_MEMORY_RANGE_KB = (64, 2**31 - 1)
_HNSW_COMMENT_RE = re.compile(r"heterag hnsw m=(\d+) ef_construction=(\d+)")
#: tsvector limits (PostgreSQL): positions 1..16383, at most 256 positions kept per lexeme, 1 MiB in all
_MAX_POSITION, _MAX_POSITIONS, _MAX_TSV_BYTES = 16383, 256, 900_000


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


#: heterag's own URL parameters (taken off before libpq sees the URL): name -> (default, lowest, highest)
HNSW_PARAMS: dict[str, tuple[int, int, int]] = {
    "ef_search": (EF_SEARCH, 1, MAX_EF_SEARCH),
    "ef_construction": (HNSW_EF_CONSTRUCTION, 2 * HNSW_M, 1000),
}


def split_hnsw_params(url: StoreURL) -> tuple[str, dict[str, int]]:
    """``url``'s libpq URI without heterag's HNSW parameters (:data:`HNSW_PARAMS`: ``ef_search``, used by every
    search; ``ef_construction``, used when the collection's table and index are created), and their values
    (defaults where absent). The rest of the URI reaches libpq exactly as written. Raises
    :class:`InvalidInputError` for a value that is not a plain decimal integer in range, or a parameter given twice."""
    assert url.location is not None
    values = {name: default for name, (default, _, _) in HNSW_PARAMS.items()}
    head, qmark, tail = url.location.partition("?")
    query, hash_, fragment = tail.partition("#")
    if not qmark or not any(unquote(p.partition("=")[0]) in HNSW_PARAMS for p in query.split("&")):
        return url.location, values
    kept, seen = [], set()
    for part in query.split("&"):
        key, _, text = part.partition("=")
        key, text = unquote(key), unquote(text)
        if key not in HNSW_PARAMS:
            kept.append(part)
            continue
        _, lo, hi = HNSW_PARAMS[key]
        if key in seen:
            raise InvalidInputError(f"pgvector {url.display()}: {key} is given more than once")
        seen.add(key)
        value = int(text) if text.isascii() and text.isdigit() else lo - 1
        if not lo <= value <= hi:
            raise InvalidInputError(f"pgvector {url.display()}: {key} must be an integer from {lo} to {hi}, got {text!r}")
        values[key] = value
    rest = "&".join(kept)
    return head + ("?" + rest if rest else "") + hash_ + fragment, values


def connect(url: StoreURL) -> psycopg.Connection:
    """Open an autocommit connection to ``url`` with the pgvector types registered, creating the
    extension and the registry table if needed."""
    dsn, _ = split_hnsw_params(url)
    try:
        conn = psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True)
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


# --------------------------------------------------------------------------- keyword terms


def _quote(term: str) -> str:
    """A lexeme quoted for tsvector/tsquery input (quotes doubled, backslashes escaped)."""
    return "'" + term.replace("\\", "\\\\").replace("'", "''") + "'"


def tsvector_literal(text: str) -> str:
    """The ``tsvector`` input text of ``text``'s keyword terms (:func:`~heterag.stores.tokenizer.tokenize`)
    with their positions (``'il-6':1,7 'p53':2``), so term frequencies count in the rank. Positions past
    16383 are dropped (PostgreSQL would fold them into one), as is everything past ~900 kB (the type holds 1 MiB)."""
    positions: dict[str, list[int]] = {}
    size = 0
    for pos, term in enumerate(tokenize(text), start=1):
        if pos > _MAX_POSITION or size > _MAX_TSV_BYTES:
            break
        got = positions.get(term)
        if got is None:
            positions[term] = [pos]
            size += len(term.encode()) + 12
        elif len(got) < _MAX_POSITIONS:
            got.append(pos)
            size += 6
    return " ".join(f"{_quote(t)}:{','.join(map(str, ps))}" for t, ps in positions.items())


def tsquery_literal(terms: Sequence[str]) -> str:
    """``'t1' | 't2' | ...``: the quoted terms OR-ed. Every term is a quoted lexeme, so FTS syntax in a
    query (``&``, ``!``, ``<->``, ``:*``, ``NEAR``...) is plain text, never an operator."""
    return " | ".join(_quote(t) for t in terms)


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
        #: inside :meth:`bulk_load`: rows are written without the indexes, which are built at its end
        self._bulk = False
        #: the two int4 keys of the session advisory lock a bulk load of this collection holds (64 bits of a hash of
        #: its name), so every process can tell a running bulk load (the indexes missing on purpose) from a stopped one
        digest = hashlib.sha1(f"heterag-bulk:{collection}".encode()).digest()
        self._bulk_key = (int.from_bytes(digest[:4], "big", signed=True), int.from_bytes(digest[4:8], "big", signed=True))
        #: HNSW search breadth (``hnsw.ef_search``, raised to ``k`` when smaller): recall against latency
        params = split_hnsw_params(url)[1]
        self.ef_search = params["ef_search"]
        #: HNSW build breadth of the index made with the collection's table (an existing index keeps its own)
        self.ef_construction = params["ef_construction"]
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
                                 "text text NOT NULL, metadata jsonb NOT NULL, tsv tsvector)").format(t, sql.Literal(int(dim))))
        self._tsv_storage()
        self._set_hnsw_params(HNSW_M, self.ef_construction)
        if not self._bulk_running():  # a bulk load (here or in another session) builds them at its end
            self._create_hnsw_index()
            self._create_tsv_index()
        # the registry row may be gone (this handle dropped the collection and writes again)
        self._db.execute(f"INSERT INTO {REGISTRY} (name, tbl, dim) VALUES (%s, %s, %s) ON CONFLICT (name) DO UPDATE SET dim = EXCLUDED.dim",
                         (self.collection, self.table, int(dim)))

    def _hnsw_definition(self) -> tuple[str, str] | None:
        """``(name, definition)`` of the data table's HNSW index as ``pg_indexes`` holds them (PostgreSQL's generated
        name for tables made before :meth:`bulk_load`), or None (no table, or a bulk load running or stopped before
        it built the index)."""
        row = self._db.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND indexdef LIKE %s",
                               (self.table, "%USING hnsw%")).fetchone()
        return (row[0], row[1]) if row else None

    def _hnsw_index(self) -> str | None:
        """Name of the data table's HNSW index, or None (see :meth:`_hnsw_definition`)."""
        found = self._hnsw_definition()
        return found[0] if found else None

    def _set_hnsw_params(self, m: int, ef_construction: int) -> None:
        """Record the table's HNSW build settings (its comment), so an index dropped by a bulk load is built again
        with them, whatever URL the handle that builds it was opened with."""
        self._db.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(
            sql.Identifier(self.table), sql.Literal(f"heterag hnsw m={int(m)} ef_construction={int(ef_construction)}")))

    def _hnsw_params(self, definition: str | None = None) -> tuple[int, int]:
        """``(m, ef_construction)`` of the HNSW index ``definition`` (as :meth:`_hnsw_definition` gives it) when
        given, else as recorded with the table, else this handle's (``?ef_construction=``)."""
        if definition is not None:
            found = dict(re.findall(r"(m|ef_construction)\s*=\s*'?(\d+)", definition))
            return int(found.get("m", HNSW_M)), int(found.get("ef_construction", HNSW_EF_CONSTRUCTION))
        comment = self._db.execute("SELECT obj_description(to_regclass(%s), 'pg_class')", (self.table,)).fetchone()[0]
        match = _HNSW_COMMENT_RE.fullmatch(comment or "")
        return (int(match[1]), int(match[2])) if match else (HNSW_M, self.ef_construction)

    def _bulk_running(self) -> bool:
        """Whether a bulk load of this collection is running in this handle or any other session (its advisory
        lock is held in this database); takes no lock itself."""
        if self._bulk:
            return True
        k1, k2 = (k & 0xFFFFFFFF for k in self._bulk_key)  # pg_locks shows the int4 keys as (unsigned) oids
        return bool(self._db.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 "
            "AND classid = %s::bigint::oid AND objid = %s::bigint::oid "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))", (k1, k2)).fetchone()[0])

    def _create_hnsw_index(self, maintenance_work_mem: str | None = None, workers: int | None = None) -> None:
        """Build the HNSW index (inside a write transaction holding the collection lock; writers wait, readers
        go on) with the table's settings (:meth:`_hnsw_params`). ``maintenance_work_mem`` and ``workers``
        (``max_parallel_maintenance_workers``) apply to this transaction only."""
        m, ef_construction = self._hnsw_params()
        if maintenance_work_mem is not None:
            self._db.execute(sql.SQL("SET LOCAL maintenance_work_mem = {}").format(sql.Literal(maintenance_work_mem)))
        if workers is not None:
            self._db.execute(sql.SQL("SET LOCAL max_parallel_maintenance_workers = {}").format(sql.Literal(int(workers))))
        self._db.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding vector_cosine_ops) "
                                 "WITH (m = {}, ef_construction = {})").format(
            sql.Identifier(self.table + "_hnsw"), sql.Identifier(self.table), sql.Literal(m), sql.Literal(ef_construction)))

    def _tsv_storage(self) -> None:
        # compressed in the row, not TOASTed out of line: ranking reads tsv once per query term and row
        # (5x faster keyword queries on SciFact abstracts)
        self._db.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN tsv SET STORAGE MAIN").format(sql.Identifier(self.table)))

    def _create_tsv_index(self) -> None:
        self._db.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING gin (tsv)").format(
            sql.Identifier(self.table + "_tsv"), sql.Identifier(self.table)))

    def _has_tsv(self) -> bool:
        """Whether the data table has the keyword column (False for a table made before keyword search,
        or no table yet)."""
        return bool(self._db.execute("SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                                     "AND attname = 'tsv' AND NOT attisdropped)", (self.table,)).fetchone()[0])

    def _fill_tsv(self, only_missing: bool) -> int:
        """(Re)compute the keyword column of every row (or only of rows without one), inside a write
        transaction holding the collection lock; returns how many rows were written."""
        t = sql.Identifier(self.table)
        cond = sql.SQL(" WHERE tsv IS NULL" if only_missing else "")
        ids = [r[0] for r in self._db.execute(sql.SQL("SELECT id FROM {}{}").format(t, cond)).fetchall()]
        stmt = sql.SQL("UPDATE {} SET tsv = %s::tsvector WHERE id = %s").format(t)
        for start in range(0, len(ids), _BATCH):
            rows = self._db.execute(sql.SQL("SELECT id, text, metadata FROM {} WHERE id = ANY(%s)").format(t),
                                    (ids[start:start + _BATCH],)).fetchall()
            with self._db.cursor() as cur:
                cur.executemany(stmt, [(tsvector_literal(keyword_text(text, meta)), i) for i, text, meta in rows])
        return len(ids)

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
        try:
            with self._lock, self._db.transaction():
                self._lock_collection()
                dim, text = self._row()
                if text is None and (dim != mat.shape[1] or not self._table_exists()):
                    if self._count():
                        raise DimensionMismatchError(
                            f"{self.name}: vectors have dimension {mat.shape[1]}, this store holds dimension {dim}")
                    self._create_table(mat.shape[1])
                elif not self._bulk and self._hnsw_index() is None:
                    self._repair_indexes()
                if self._has_tsv():  # checked under the lock: another process may have added it since we opened
                    rows = [(*row, tsvector_literal(keyword_text(r.text, r.metadata))) for row, r in zip(rows, records, strict=True)]
                    stmt = sql.SQL("INSERT INTO {} (id, embedding, text, metadata, tsv) VALUES (%s, %s, %s, %s, %s::tsvector) "
                                   "ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, text = EXCLUDED.text, "
                                   "metadata = EXCLUDED.metadata, tsv = EXCLUDED.tsv").format(t)
                else:
                    stmt = sql.SQL("INSERT INTO {} (id, embedding, text, metadata) VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE "
                                   "SET embedding = EXCLUDED.embedding, text = EXCLUDED.text, metadata = EXCLUDED.metadata").format(t)
                with self._db.cursor() as cur:
                    for start in range(0, len(rows), _BATCH):
                        cur.executemany(stmt, rows[start:start + _BATCH])
        except psycopg.DataError as exc:
            raise InvalidInputError(f"pgvector: {_one_line(exc)}") from None

    def index_settings(self) -> str:
        """The HNSW settings of this collection's index (as PostgreSQL holds them, once the table exists; a URL's
        ``ef_construction`` does not change an existing index) and the search breadth, as text (for reports)."""
        with self._lock:
            if not self._table_exists():
                m, efc = HNSW_M, self.ef_construction
            else:
                found = self._hnsw_definition()
                if found is None and self._count():
                    return "no HNSW index: exact scans (a bulk load is running, or stopped before building it)"
                m, efc = self._hnsw_params(found[1] if found else None)
        return f"HNSW m={m}, ef_construction={efc}, ef_search=max({self.ef_search}, k)"

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
            self._db.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(min(MAX_EF_SEARCH, max(self.ef_search, int(k))))))
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

    def _create_indexes(self, maintenance_work_mem: str | None = None, workers: int | None = None) -> None:
        """Build the HNSW index and, with the keyword column, its GIN index (where missing)."""
        self._create_hnsw_index(maintenance_work_mem, workers)
        if self._has_tsv():
            self._create_tsv_index()

    def _drop_indexes(self) -> None:
        """Drop the HNSW and keyword (GIN) indexes, recording the HNSW settings with the table first (inside a
        write transaction holding the collection lock)."""
        found = self._hnsw_definition()
        if found is not None:
            self._set_hnsw_params(*self._hnsw_params(found[1]))
            self._db.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(found[0])))
        self._db.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(self.table + "_tsv")))

    def _repair_indexes(self) -> bool:
        """Build the indexes a stopped bulk load left out (inside a write transaction holding the collection lock),
        unless a bulk load of the collection is running in some session; returns whether they were built."""
        if self._bulk_running():
            return False
        logger.warning("pgvector collection %s has no HNSW index (a bulk load stopped before building it): building "
                       "its indexes now", self.collection)
        self._create_indexes(BULK_MAINTENANCE_WORK_MEM)
        return True

    def ensure_indexes(self) -> bool:
        """Build the HNSW and keyword indexes where a stopped bulk load left them out (not while a bulk load of the
        collection runs in any process); returns whether anything was built. ``heterag migrate`` calls it after
        its copy, so a migrate stopped during the index build and re-run with nothing left to copy still ends
        with its indexes."""
        with self._lock, self._db.transaction():
            self._lock_collection()
            if not self._table_exists() or self._bulk or self._hnsw_index() is not None:
                return False
            return self._repair_indexes()

    @staticmethod
    def _check_bulk_settings(maintenance_work_mem: object, workers: object) -> None:
        match = _MEMORY_RE.fullmatch(maintenance_work_mem) if isinstance(maintenance_work_mem, str) else None
        lo, hi = _MEMORY_RANGE_KB
        if match is None or not lo <= int(match[1]) * _MEMORY_KB[match[2]] <= hi:
            raise InvalidInputError(f"pgvector: maintenance_work_mem must be a size from 64kB to 2TB such as '512MB' or '4GB' "
                                    f"(units kB, MB, GB, TB), got {maintenance_work_mem!r}")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int | np.integer) or not 0 <= workers <= 64):
            raise InvalidInputError(f"pgvector: workers must be an integer from 0 to 64, got {workers!r}")

    @contextmanager
    def bulk_load(self, maintenance_work_mem: str = BULK_MAINTENANCE_WORK_MEM, workers: int | None = None) -> Iterator[PgVectorStore]:
        """Context for loading many rows: its :meth:`upsert` calls write rows without the HNSW and keyword (GIN)
        indexes, which are built once when the context ends, with ``maintenance_work_mem`` (PostgreSQL units,
        64kB to 2TB: ``"512MB"``, ``"4GB"``; the HNSW graph is built in memory while it fits) and ``workers``
        parallel maintenance workers (``max_parallel_maintenance_workers``, 0..64, beside the leader; None: the
        server's setting, 2 by default). pgvector's advice for initial loads ("Index build time", pgvector README):
        at 1M rows on 2 cores several times faster than writing through the index (eval/README.md, issue #26).
        The index keeps the HNSW settings the collection was created with (or its dropped index had), whatever
        this handle's URL says.

        Indexes already on the table are dropped on entry, so use it when the load is large against what the
        collection holds. Meanwhile every row written is committed and visible, queries scan exactly (correct
        and slower), and other writers wait while the indexes are built. A bulk load holds a session advisory
        lock, so every process sees it running: another handle's writes (:meth:`upsert`, also the one that creates
        the table, or :meth:`~PgVectorKeywordStore.rebuild_keywords`) build no index then, and a second bulk load
        of the collection, here or in another process, is refused. When the body raises an
        ``Exception`` the indexes are built before it propagates; when the process is stopped
        (``KeyboardInterrupt``, a kill) they are not, and the next :meth:`upsert` outside a bulk load,
        :meth:`ensure_indexes` or the next bulk load builds them (queries are exact until then;
        :meth:`index_settings` says so). Raises :class:`InvalidInputError` (one line, before anything is written)
        for a malformed or out-of-range ``maintenance_work_mem`` or ``workers``, or a bulk load already running.
        """
        self._check_bulk_settings(maintenance_work_mem, workers)
        with self._lock:
            if self._bulk or not self._db.execute("SELECT pg_try_advisory_lock(%s, %s)", self._bulk_key).fetchone()[0]:
                raise InvalidInputError(f"pgvector collection {self.collection!r}: a bulk load of it is already running "
                                        "(in this or another process)")
        try:
            with self._lock, self._db.transaction():
                self._lock_collection()
                if self._table_exists():
                    self._drop_indexes()
            self._bulk = True
            try:
                yield self
            except Exception:
                self._finish_bulk(maintenance_work_mem, workers)
                raise
            except BaseException:
                self._bulk = False
                logger.warning("pgvector collection %s: bulk load stopped; its indexes are built by the next upsert",
                               self.collection)
                raise
            self._finish_bulk(maintenance_work_mem, workers)
        finally:
            self._bulk = False
            if self._conn is not None and not self._conn.closed:
                with self._lock:
                    self._db.execute("SELECT pg_advisory_unlock(%s, %s)", self._bulk_key)

    def _finish_bulk(self, maintenance_work_mem: str, workers: int | None) -> None:
        self._bulk = False
        with self._lock, self._db.transaction():
            self._lock_collection()
            if not self._table_exists():
                return
            began = time.perf_counter()
            self._create_indexes(maintenance_work_mem, workers)
            logger.info("pgvector collection %s: indexes built over %d rows in %.1f s", self.collection, self._count(),
                        time.perf_counter() - began)

    def keyword_search(self, *, create: bool = False,
                       repair: str = "heterag keywords build --collection NAME") -> PgVectorKeywordStore | None:
        """This collection with keyword search (a :class:`PgVectorKeywordStore`: ``self`` if it is one,
        else a new object that takes over the connection, to use instead of this one), or None for a table
        made before keyword search (no ``tsv`` column) holding rows, unless ``create``.

        ``create``: add the column where missing, fill it for every row without one and index it, in one
        transaction (writers wait; readers see the old table until it commits). A new or empty collection
        gets the column without ``create``. ``repair`` is the command named in
        :class:`~heterag.core.errors.KeywordIndexError` messages. Without ``create``, raises
        ``KeywordIndexError`` (one line) when rows lack keyword terms (written behind heterag's back).
        """
        if self._bulk and not isinstance(self, PgVectorKeywordStore):
            raise InvalidInputError(f"pgvector collection {self.collection!r}: keyword search cannot be added inside a bulk load")
        with self._lock, self._db.transaction():
            self._lock_collection()
            if self._table_exists():
                has = self._has_tsv()
                if not has and not create and self._count():
                    return None
                if not has:
                    self._db.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS tsv tsvector").format(sql.Identifier(self.table)))
                    self._tsv_storage()
                if create:
                    n = self._fill_tsv(only_missing=True)
                    if n:
                        logger.info("pgvector collection %s: keyword terms written for %d rows", self.collection, n)
                if self._hnsw_index() is not None or not (self._count() or self._bulk_running()):
                    self._create_tsv_index()  # else a bulk load runs or stopped: its end (or the repair) builds both
        out = self if isinstance(self, PgVectorKeywordStore) else PgVectorKeywordStore._adopt(self)
        out.repair = repair
        if not create:
            try:
                out.check()
            except BaseException:
                out.close()
                raise
        return out

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


class PgVectorKeywordStore(PgVectorStore):
    """A :class:`PgVectorStore` whose table has the keyword column: it also answers keyword queries
    (:class:`~heterag.stores.base.KeywordSearch`) with PostgreSQL full-text search. Made by
    :meth:`PgVectorStore.keyword_search` (so by :func:`heterag.stores.open_store`).

    **Ranking.** A record matches when it holds any query term (a tsquery of the quoted terms OR-ed,
    answered by the GIN index). Its score is ``sum over matched terms t of idf(t) * ts_rank(tsv, t, 1)``
    with Tantivy's BM25 idf ``ln(1 + (N - df + 0.5) / (df + 0.5))`` (``df`` counted per query term through
    the GIN index, ``N`` the row count). ``ts_rank`` (not ``ts_rank_cd``): for single-term queries
    ``ts_rank_cd``'s cover density is a plain occurrence count (no saturation), while ``ts_rank``
    saturates term frequency like BM25's ``k1`` and normalisation 1 divides by ``1 + log(length)`` like
    BM25's length term; neither has an idf, which BM25's quality rests on (rare terms such as gene names
    outweigh common ones), hence the per-term idf weights. Scores are > 0, higher is better, unbounded;
    on another scale than Tantivy's BM25 (fusion normalises per list).

    Measured on SciFact train (5,183 abstracts with titles, 809 queries, nDCG@10; /tmp script in the
    hybrid issue's notes): Tantivy BM25 69.5; this score 68.8; ``ts_rank`` of the OR-ed query 60.0
    (normalisation 0) / 61.5 (1); ``ts_rank_cd`` 42.0; idf-weighted ``ts_rank_cd`` 56.3. Every matching row
    is scored (no top-k pruning as in Tantivy), so a query costs ~35 ms p50 there on 2 busy cores against
    Tantivy's ~0.1 ms: keyword search on pgvector is for the scale-out path, not for latency.
    """

    #: the command named in keyword-index errors (set by :meth:`PgVectorStore.keyword_search`)
    repair: str = "heterag keywords build --collection NAME"

    @classmethod
    def _adopt(cls, store: PgVectorStore) -> PgVectorKeywordStore:
        new = cls.__new__(cls)
        new.__dict__.update(store.__dict__)
        store._conn = None  # the connection now belongs to the new object
        return new

    def keyword_ids(self) -> list[str]:
        """Ids of the rows that have keyword terms (all of them unless written behind heterag's back)."""
        with self._lock:
            if not self._table_exists():
                return []
            return [r[0] for r in self._db.execute(sql.SQL("SELECT id FROM {} WHERE tsv IS NOT NULL").format(
                sql.Identifier(self.table))).fetchall()]

    def _weighted_terms(self, text: str) -> list[tuple[str, float]]:
        """The query's terms that occur in the collection with their idf, at most
        :data:`~heterag.stores.keyword.MAX_QUERY_TERMS` (the rarest)."""
        if not isinstance(text, str):
            raise InvalidInputError(f"keyword query must be a string, got {type(text).__name__}")
        terms = query_terms(text)
        if not terms or not self._table_exists():
            return []
        t = sql.Identifier(self.table)
        n = int(self._db.execute(sql.SQL("SELECT count(*) FROM {}").format(t)).fetchone()[0])
        rows = self._db.execute(sql.SQL("SELECT q.term, (SELECT count(*) FROM {} WHERE tsv @@ q.lit::tsquery) "
                                        "FROM unnest(%s::text[], %s::text[]) AS q(term, lit)").format(t),
                                (terms, [_quote(x) for x in terms])).fetchall()
        df = {term: int(c) for term, c in rows if c}
        known = sorted((x for x in terms if x in df), key=lambda x: df[x])[:MAX_QUERY_TERMS]
        return [(x, math.log(1.0 + (n - df[x] + 0.5) / (df[x] + 0.5))) for x in known]

    def _score_sql(self, weighted: list[tuple[str, float]]) -> tuple[sql.Composable, list[Any]]:
        parts, params = [], []
        for term, idf in weighted:
            parts.append(sql.SQL("ts_rank(tsv, %s::tsquery, 1) * %s"))
            params.extend([_quote(term), idf])
        return sql.SQL("(") + sql.SQL(" + ").join(parts) + sql.SQL(")"), params

    def keyword_query(self, text: str, k: int = 10, where: Mapping[str, Any] | None = None) -> list[ScoredRecord]:
        """Top-``k`` records for ``text`` by keyword score (see the class docs), best first (ties by id),
        among records matching ``where``; ``[]`` when ``text`` has no keyword terms or none occurs."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidInputError(f"pgvector: k must be a positive integer, got {k!r}")
        cond = self._where(None, where)
        with self._lock, self._db.transaction():
            weighted = self._weighted_terms(text) if cond is not None else []
            if not weighted:
                return []
            score, sparams = self._score_sql(weighted)
            stmt = sql.SQL("SELECT id, text, metadata, {} AS s FROM {} WHERE tsv @@ %s::tsquery AND {} "
                           "ORDER BY s DESC, id LIMIT %s").format(score, sql.Identifier(self.table), cond[0])
            rows = self._db.execute(stmt, [*sparams, tsquery_literal([x for x, _ in weighted]), *cond[1], int(k)]).fetchall()
        return [ScoredRecord(Record(id=i, vector=None, text=text, metadata=meta), float(sc)) for i, text, meta, sc in rows]

    def keyword_scores(self, text: str, ids: Sequence[str]) -> dict[str, float]:
        """Keyword scores of ``text`` for exactly these ids (0 for ids that match no term or are not stored)."""
        out = {i: 0.0 for i in ids}
        if not out:
            return out
        with self._lock, self._db.transaction():
            weighted = self._weighted_terms(text)
            if not weighted:
                return out
            score, sparams = self._score_sql(weighted)
            stmt = sql.SQL("SELECT id, {} FROM {} WHERE id = ANY(%s) AND tsv @@ %s::tsquery").format(score, sql.Identifier(self.table))
            for i, sc in self._db.execute(stmt, [*sparams, list(out), tsquery_literal([x for x, _ in weighted])]).fetchall():
                out[i] = float(sc)
        return out

    # -- consistency, as for heterag.stores.keyworded.KeywordedStore ---------------------------------
    def recover(self) -> int:
        """Nothing to reconcile: vector and keyword terms are written in one transaction. Returns 0."""
        return 0

    def differences(self) -> tuple[set[str], set[str]]:
        """``(ids without keyword terms, set())``: rows written behind heterag's back (or by an older
        heterag after the upgrade) lack the ``tsv`` column's value."""
        with self._lock:
            if not self._table_exists():
                return set(), set()
            rows = self._db.execute(sql.SQL("SELECT id FROM {} WHERE tsv IS NULL").format(sql.Identifier(self.table))).fetchall()
        return {r[0] for r in rows}, set()

    def check(self) -> None:
        """Raise :class:`~heterag.core.errors.KeywordIndexError` (one line, naming the repair command) if
        some rows have no keyword terms."""
        missing, _ = self.differences()
        if missing:
            raise KeywordIndexError(
                f"pgvector collection {self.collection!r}: {len(missing)} rows have no keyword terms (written without "
                f"heterag's keyword search); rebuild them with `{self.repair}` (or use --retrieval dense)")

    def rebuild_keywords(self, progress: bool | None = None, on_batch: Callable[[int], None] | None = None) -> int:
        """Recompute every row's keyword terms (one transaction: after a tokenizer change, or rows written
        behind heterag's back); returns how many rows. ``progress`` is accepted for symmetry with
        :meth:`heterag.stores.keyworded.KeywordedStore.rebuild`; ``on_batch(n)`` is called once at the end."""
        with self._lock, self._db.transaction():
            self._lock_collection()
            if not self._table_exists():
                return 0
            n = self._fill_tsv(only_missing=False)
            if not self._bulk_running():  # else the bulk load builds it at its end
                self._create_tsv_index()
        if on_batch is not None:
            on_batch(n)
        return n

    rebuild = rebuild_keywords

    def __repr__(self) -> str:
        return f"PgVectorKeywordStore(url={self.name!r}, collection={self.collection!r})"


def open_pgvector(url: StoreURL, collection: str) -> PgVectorStore:
    """Open collection ``collection``: a :class:`PgVectorKeywordStore` when its table has the keyword
    column or does not exist yet (new tables get it), a dense-only :class:`PgVectorStore` for a table
    made before keyword search (see :meth:`PgVectorStore.keyword_search`). Raises as :class:`PgVectorStore`."""
    store = PgVectorStore(url, collection)
    try:
        with store._lock:
            native = not store._table_exists() or store._has_tsv()
    except BaseException:
        store.close()
        raise
    return PgVectorKeywordStore._adopt(store) if native else store


__all__ = ["PgVectorKeywordStore", "PgVectorStore", "connect", "filter_sql", "open_pgvector", "tsquery_literal", "tsvector_literal"]
