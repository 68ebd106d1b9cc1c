"""LanceDB store (``lancedb`` in the collection folder, ``lancedb:PATH`` elsewhere; embedded, on disk).

One Lance table per collection: ``id``, ``vector`` (``fixed_size_list<float32>[dim]``, exactly as
given), ``text``, ``meta`` (the metadata as JSON, returned as stored) and *typed* filter columns added
by schema evolution as new keys appear: ``n_<hex>`` (double), ``s_<hex>`` (string), ``b_<hex>`` (bool)
per metadata key, the key hex-encoded so any key is a safe column name. Filters become Lance SQL on
those columns with heterag's typing rules (``True`` is not ``1``; ``1`` equals ``1.0``); a key no record
ever had has no column, and conditions on it are false. Numbers compare as 64-bit floats (exact for
integers up to 2**53).

Search: cosine (``distance_type("cosine")``), score = 1 - cosine distance. Below :data:`ANN_MIN_RECORDS`
(20,000) rows every query is an exact scan; from there on the table gets LanceDB's own ``IVF_FLAT``
index (``create_index("vector", config=IvfFlat(distance_type="cosine", num_partitions=P))``, full
vectors in the partitions, so no quantisation error), built after the write that crosses the size:

* ``P = round(sqrt(n))`` partitions for the ``n`` rows at build time (316 at 100k); an unfiltered query
  scans ``nprobes = ceil(P / ANN_NPROBES_DIVISOR)`` = ``ceil(P / 4)`` of them (79 at 100k); the index is
  named ``heterag_ivf_flat_p<P>`` so any process reads its settings from the table;
* rows written after the build are not in the index: LanceDB flat-searches these unindexed rows and
  merges them into every result, and a deleted or replaced row is masked by its deletion file, so
  results stay correct between rebuilds; once the unindexed rows exceed 10% of the indexed ones (at least
  1,000), the write ends with ``table.optimize()``, which compacts the files and adds the new rows to the
  existing partitions (no retraining) and deletes table versions older than a minute (see
  ``_KEEP_VERSIONS``);
* the index is retrained (a new one built, the old dropped) when the table has grown past ``4 * P**2``
  or shrunk below ``P**2 / 4`` rows, and dropped below ``ANN_MIN_RECORDS / 2`` rows (exact again);
* a query with a ``where`` filter bypasses the index (``bypass_vector_index()``, filter applied before
  the search): exact among the matching rows, so a selective filter cannot starve the top-k.

Why IVF_FLAT: on held-out data of the store benchmark's kind (``eval/stores_ef_sweep.py lancedb``:
100k vectors drawn with another seed, PubMedQA questions 200-399) one index of 316 partitions built in
15 s and reached recall@10 0.940 / 0.955 / 0.966 / 0.974 at nprobes 32 / 48 / 64 / 80 (5.0-6.5 ms a
query; nprobes = P/4 is the last). In a one-off trial on the same data (not in the sweep script), the
exact scan took 235 ms a query on the loaded machine and ``IVF_HNSW_SQ`` (one partition, ef 100) reached
0.972 at 3.7 ms but took 123 s to build; ``IVF_PQ`` would add quantisation error (refine needed).
On the store benchmark (eval/README.md, issue #12) the store reached recall@10 1.000 at 17-21 ms p50.

Upserts are ``merge_insert`` on ``id``. Fingerprints live in a side table ``heterag_fingerprints``.
LanceDB writes new versions of immutable files, so readers in other processes see every committed write
(and the index another process built).
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa

from heterag.core.errors import DimensionMismatchError, HeteragError, InvalidInputError
from heterag.stores.base import Fingerprint, Record, ScoredRecord, as_matrix, check_query_vector, record_metadata
from heterag.stores.filters import normalize
from heterag.stores.url import StoreURL

logger = logging.getLogger(__name__)

FINGERPRINTS = "heterag_fingerprints"
_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,253}[A-Za-z0-9])?$")
_TYPES = {"n": pa.float64(), "s": pa.string(), "b": pa.bool_()}
_SQL_TYPES = {"n": "DOUBLE", "s": "STRING", "b": "BOOLEAN"}
_FP_SCHEMA = pa.schema([pa.field("name", pa.string()), pa.field("fingerprint", pa.string())])

#: tables of at least this many rows get an IVF_FLAT index (exact scans below)
ANN_MIN_RECORDS = 20_000
#: an unfiltered query scans ceil(partitions / ANN_NPROBES_DIVISOR) IVF partitions
ANN_NPROBES_DIVISOR = 4
INDEX_PREFIX = "heterag_ivf_flat_p"
_OPTIMIZE_FRACTION = 0.1  # optimize() once unindexed rows exceed this share of the indexed ones...
_OPTIMIZE_MIN = 1000  # ...and at least this many
#: optimize() also deletes table versions older than this: compaction rewrites the data files, and keeping
#: every old version (LanceDB's default: 7 days) made a 100k table take 1.8 GB instead of ~0.2 GB. Every
#: heterag operation opens the latest version, so only a read running for longer than this could miss files.
_KEEP_VERSIONS = timedelta(minutes=1)


def ann_partitions(n: int) -> int | None:
    """IVF partitions for a table of ``n`` rows; None means exact search."""
    return max(1, round(math.sqrt(n))) if n >= ANN_MIN_RECORDS else None


def ann_nprobes(partitions: int) -> int:
    """Partitions an unfiltered query scans in an index of ``partitions`` partitions."""
    return min(partitions, math.ceil(partitions / ANN_NPROBES_DIVISOR))


def _hex(key: str) -> str:
    return key.encode("utf-8").hex()


def _column(key: str, value: Any) -> tuple[str, Any]:
    if isinstance(value, bool):
        return f"b_{_hex(key)}", value
    if isinstance(value, int | float):
        return f"n_{_hex(key)}", float(value)
    return f"s_{_hex(key)}", value


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(float(value))
    return "'" + str(value).replace("'", "''") + "'"


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


class _Filter:
    """Translate a canonical filter tree to Lance SQL, knowing which typed columns exist."""

    def __init__(self, columns: set[str]) -> None:
        self.columns = columns

    def _eq(self, key: str, value: Any) -> str:
        col, _ = _column(key, value)
        return f"({col} = {_literal(value)})" if col in self.columns else "false"

    def _present(self, key: str) -> str:
        cols = [f"{t}_{_hex(key)}" for t in _TYPES if f"{t}_{_hex(key)}" in self.columns]
        return "(" + " OR ".join(f"{c} IS NOT NULL" for c in cols) + ")" if cols else "false"

    def sql(self, node: Mapping[str, Any]) -> str:
        (key, cond), = node.items()
        if key in ("$and", "$or"):
            return "(" + f" {key[1:].upper()} ".join(self.sql(c) for c in cond) + ")"
        (op, value), = cond.items()
        if op == "$eq":
            return self._eq(key, value)
        if op == "$in":
            return "(" + " OR ".join(self._eq(key, v) for v in value) + ")"
        if op in ("$ne", "$nin"):  # COALESCE: a NULL comparison (other type) is "not equal"
            values = [value] if op == "$ne" else value
            return f"({self._present(key)} AND NOT (" + " OR ".join(f"COALESCE({self._eq(key, v)}, false)" for v in values) + "))"
        col = f"n_{_hex(key)}"
        if col not in self.columns:
            return "false"
        cmp = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
        return f"COALESCE({col} {cmp} {_literal(value)}, false)"


class LanceStore:
    """Vector store backed by a LanceDB table (cosine search: exact, or IVF_FLAT from
    :data:`ANN_MIN_RECORDS` rows; see the module docstring)."""

    def __init__(self, url: StoreURL, path: str | Path, collection: str = "default") -> None:
        if not isinstance(collection, str) or not _NAME_RE.match(collection):
            raise InvalidInputError(
                f"lancedb: invalid collection name {collection!r}: use 1-255 letters, digits, '.', '_' or '-', "
                "starting and ending with a letter or digit")
        self.name = url.display()
        self.path = Path(url.location or path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.collection = collection
        self._lock = threading.RLock()
        self._fp: Fingerprint | None = None
        self._db: Any = lancedb.connect(str(self.path))

    # ------------------------------------------------------------------ internals

    def _conn(self) -> Any:
        if self._db is None:
            raise HeteragError(f"lancedb collection {self.collection!r} is closed")
        return self._db

    def _table(self) -> Any | None:
        try:
            return self._conn().open_table(self.collection)
        except (FileNotFoundError, ValueError):
            return None

    def _size(self, table: Any) -> int | None:
        return None if table is None else int(table.schema.field("vector").type.list_size)

    def _create(self, dim: int) -> Any:
        schema = pa.schema([pa.field("id", pa.string()), pa.field("vector", pa.list_(pa.float32(), int(dim))),
                            pa.field("text", pa.string()), pa.field("meta", pa.string())])
        return self._conn().create_table(self.collection, schema=schema, mode="overwrite")

    def _where(self, table: Any, ids: Sequence[str] | None, where: Mapping[str, Any] | None) -> str | None | bool:
        """SQL for ``ids``/``where``; None for everything; False when nothing can match."""
        canon = normalize(where)
        parts = []
        if ids is not None:
            if not ids:
                return False
            parts.append("id IN (" + ", ".join(_quote(i) for i in dict.fromkeys(ids)) + ")")
        if canon is not None:
            parts.append(_Filter(set(table.schema.names)).sql(canon))
        return " AND ".join(parts) if parts else None

    @staticmethod
    def _record(row: Mapping[str, Any], vectors: bool) -> Record:
        vec = np.asarray(row["vector"], dtype=np.float32) if vectors else None
        return Record(id=row["id"], vector=vec, text=row["text"], metadata=json.loads(row["meta"]))

    @staticmethod
    def _vector_index(table: Any) -> tuple[str, int, int, int] | None:
        """(name, partitions, indexed rows, unindexed rows) of heterag's vector index, or None."""
        for cfg in table.list_indices():
            if cfg.name.startswith(INDEX_PREFIX) and cfg.name[len(INDEX_PREFIX):].isdigit():
                return cfg.name, int(cfg.name[len(INDEX_PREFIX):]), int(cfg.num_indexed_rows), int(cfg.num_unindexed_rows)
        return None

    def _maintain_index(self, table: Any) -> None:
        """After a write: build, extend, retrain or drop the IVF index as the module docstring says.

        The write is already committed and the index only speeds searches up (unindexed rows are
        flat-searched), so a failure here is logged and retried after the next write, never raised.
        """
        try:
            self._update_index(table)
        except Exception as exc:  # noqa: BLE001 - see the docstring: the data is safe, the next write retries
            logger.warning("lancedb: could not update the vector index of %r (%s: %s); searches stay correct, "
                           "the next write retries", self.collection, type(exc).__name__, exc)

    def _update_index(self, table: Any) -> None:
        from lancedb.index import IvfFlat

        n = int(table.count_rows())
        idx = self._vector_index(table)
        want = ann_partitions(n)
        if idx is not None:
            name, parts, indexed, unindexed = idx
            if n < ANN_MIN_RECORDS // 2:
                logger.info("lancedb: %r has %d rows; dropping its vector index (exact search)", self.collection, n)
                table.drop_index(name)
                return
            if parts ** 2 / 4 <= n <= 4 * parts ** 2:
                if unindexed > max(_OPTIMIZE_MIN, _OPTIMIZE_FRACTION * indexed):
                    logger.info("lancedb: adding %d unindexed rows of %r to its index", unindexed, self.collection)
                    table.optimize(cleanup_older_than=_KEEP_VERSIONS)
                return
            want = max(1, round(math.sqrt(n)))
        if want is None:
            return
        logger.info("lancedb: building an IVF_FLAT index on %r (%d rows, %d partitions)", self.collection, n, want)
        table.create_index("vector", config=IvfFlat(distance_type="cosine", num_partitions=want),
                           name=f"{INDEX_PREFIX}{want}")
        if idx is not None and idx[0] != f"{INDEX_PREFIX}{want}":
            table.drop_index(idx[0])

    def index_settings(self) -> str:
        """The current search mode, e.g. ``IVF_FLAT cosine, partitions=316, nprobes=79 ...``."""
        with self._lock:
            table = self._table()
            idx = self._vector_index(table) if table is not None else None
        if idx is None:
            return f"exact (IVF_FLAT from {ANN_MIN_RECORDS:,} rows)"
        return f"IVF_FLAT cosine, partitions={idx[1]}, nprobes={ann_nprobes(idx[1])} (filtered: exact)"

    def _rows(self, table: Any, cond: str | None, columns: list[str]) -> list[dict[str, Any]]:
        q = table.search()
        if cond is not None:
            q = q.where(cond)
        return q.select(columns).limit(None).to_arrow().to_pylist()

    # ------------------------------------------------------------------ protocol

    @property
    def dim(self) -> int | None:
        fp = self.fingerprint()
        if fp is not None:
            return fp.dim
        with self._lock:
            table = self._table()
            return self._size(table) if table is not None and table.count_rows() else None

    def fingerprint(self) -> Fingerprint | None:
        if self._fp is None:
            with self._lock:
                try:
                    fps = self._conn().open_table(FINGERPRINTS)
                except (FileNotFoundError, ValueError):
                    return None
                rows = fps.search().where(f"name = {_quote(self.collection)}").select(["fingerprint"]).limit(None).to_list()
            self._fp = Fingerprint.from_json(rows[0]["fingerprint"]) if rows else None
        return self._fp

    def set_fingerprint(self, fp: Fingerprint) -> None:
        with self._lock:
            current = self.fingerprint()
            if current is not None:
                current.check(fp, where=f"lancedb collection {self.collection!r}")
                return
            table = self._table()
            n = table.count_rows() if table is not None else 0
            if n and self._size(table) != fp.dim:
                raise DimensionMismatchError(
                    f"lancedb: collection {self.collection!r} holds dimension {self._size(table)}, fingerprint says {fp.dim}")
            if not n and self._size(table) != fp.dim:
                self._create(fp.dim)
            try:
                fps = self._conn().open_table(FINGERPRINTS)
            except (FileNotFoundError, ValueError):
                fps = self._conn().create_table(FINGERPRINTS, schema=_FP_SCHEMA, exist_ok=True)
            row = pa.Table.from_pylist([{"name": self.collection, "fingerprint": fp.to_json()}], schema=_FP_SCHEMA)
            fps.merge_insert("name").when_matched_update_all().when_not_matched_insert_all().execute(row)
            self._fp = fp

    def upsert(self, records: Sequence[Record]) -> None:
        records = list(records)
        mat = as_matrix(records, self.dim, self.name)
        if not records:
            return
        rows = []
        for r, vec in zip(records, mat, strict=True):
            meta = record_metadata(r, self.name, "lancedb")
            row: dict[str, Any] = {"id": r.id, "vector": vec, "text": r.text, "meta": json.dumps(meta)}
            row.update(_column(k, v) for k, v in meta.items())
            rows.append(row)
        with self._lock:
            table = self._table()
            size = self._size(table)
            if size != mat.shape[1]:
                if table is not None and table.count_rows():
                    raise DimensionMismatchError(f"{self.name}: vectors have dimension {mat.shape[1]}, this store holds dimension {size}")
                table = self._create(mat.shape[1])
            missing = sorted({c for row in rows for c in row} - set(table.schema.names))
            if missing:
                table.add_columns({c: f"CAST(NULL AS {_SQL_TYPES[c[0]]})" for c in missing})
            schema = table.schema
            cols = {name: [row.get(name) for row in rows] for name in schema.names}
            cols["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1), pa.float32()), mat.shape[1])
            data = pa.Table.from_arrays([pa.array(cols[n], schema.field(n).type) if n != "vector" else cols[n]
                                         for n in schema.names], schema=schema)
            table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(data)
            self._maintain_index(table)

    def query(self, vector: np.ndarray, k: int = 10, where: Mapping[str, Any] | None = None) -> list[ScoredRecord]:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidInputError(f"lancedb: k must be a positive integer, got {k!r}")
        q = check_query_vector(vector, self.dim, self.name)
        with self._lock:
            table = self._table()
            if table is None:
                return []
            cond = self._where(table, None, where)
            if cond is False:
                return []
            search = table.search(q).distance_type("cosine")
            if cond is not None:  # exact among the matching rows
                search = search.where(cond, prefilter=True).bypass_vector_index()
            elif (idx := self._vector_index(table)) is not None:
                search = search.nprobes(ann_nprobes(idx[1]))
            rows = search.select(["id", "text", "meta", "_distance"]).limit(int(k)).to_arrow().to_pylist()
        return [ScoredRecord(self._record(r, False), 1.0 - float(r["_distance"])) for r in rows]

    def get(
        self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None, include_vectors: bool = False
    ) -> list[Record]:
        with self._lock:
            table = self._table()
            if table is None:
                return []
            cond = self._where(table, ids, where)
            if cond is False:
                return []
            cols = ["id", "text", "meta"] + (["vector"] if include_vectors else [])
            recs = {r["id"]: self._record(r, include_vectors) for r in self._rows(table, cond, cols)}
        if ids is None:
            return list(recs.values())
        return [recs[i] for i in dict.fromkeys(ids) if i in recs]

    def ids(self, where: Mapping[str, Any] | None = None) -> list[str]:
        with self._lock:
            table = self._table()
            if table is None:
                return []
            cond = self._where(table, None, where)
            return [] if cond is False else [r["id"] for r in self._rows(table, cond, ["id"])]

    def delete(self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None) -> int:
        if ids is None and where is None:
            raise InvalidInputError("lancedb: delete needs ids and/or a filter (refusing to delete everything)")
        with self._lock:
            table = self._table()
            if table is None:
                return 0
            cond = self._where(table, ids, where)
            if cond is False:
                return 0
            deleted = int(table.delete(cond).num_deleted_rows)
            if deleted:
                self._maintain_index(table)
            return deleted

    def count(self) -> int:
        with self._lock:
            table = self._table()
            return int(table.count_rows()) if table is not None else 0

    def drop(self) -> None:
        """Remove the collection's table and fingerprint."""
        with self._lock:
            if self._table() is not None:
                self._conn().drop_table(self.collection)
            try:
                self._conn().open_table(FINGERPRINTS).delete(f"name = {_quote(self.collection)}")
            except (FileNotFoundError, ValueError):
                pass
            self._fp = None

    def close(self) -> None:
        self._db = None

    def __enter__(self) -> LanceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LanceStore(path={str(self.path)!r}, collection={self.collection!r})"
