"""Milvus store (``milvus`` / ``milvus:PATH.db`` for Milvus Lite, ``milvus:http://HOST:19530`` for a
Milvus server or cluster: the same client code, the path for collections that outgrow one machine).

One Milvus collection per heterag collection, named ``c_<sanitised name>_<sha1[:8]>`` (Milvus allows only
letters, digits and ``_``): ``pk`` (the record id), ``vector`` (FLOAT_VECTOR, exactly as given; COSINE
metric), ``text``, ``meta`` (JSON, returned as stored) and ``f`` (JSON of *typed* filter fields: ``n_<hex>``
numbers as float, ``s_<hex>`` strings, ``b_<hex>`` booleans; ``k``, the hex keys present, and ``t``, the
typed names present, which guard every comparison under ``not``: a missing JSON field compares as NULL). Filters
become Milvus boolean expressions on ``f`` with heterag's typing rules (``True`` is not ``1``; ``1`` equals
``1.0``; ``$ne``/``$nin`` need the key); numbers compare as 64-bit floats (exact up to 2**53).
Collections are created with ``consistency_level="Strong"`` so a write is visible to the next read.
Fingerprints live in a side collection ``heterag_fingerprints``.

Milvus Lite starts a local server process per database file (about 3 s); one client per location is
shared within a process.

On a Milvus server the vector index (AUTOINDEX: HNSW) is created with the collection, before it is loaded;
written rows are searched exactly until their sealed segment's index is handed to the query node, then
through the index with ``ef`` = max(k, :data:`EF_SEARCH`) (the server's default breadth gave recall@10 of
0.80 on 5,000 random vectors in 32 dimensions). A server that stops answering raises :class:`StoreUnavailableError` naming the URL
(one line; pymilvus's own logging of each failed call is silenced); a collection not loaded yet (for a
while after a server restart) is loaded and the call repeated.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

from heterag.core.errors import DimensionMismatchError, HeteragError, InvalidInputError, StoreUnavailableError
from heterag.stores.base import Fingerprint, Record, ScoredRecord, as_matrix, check_query_vector, record_metadata
from heterag.stores.filters import normalize
from heterag.stores.url import StoreURL, redact

logger = logging.getLogger(__name__)

FINGERPRINTS = "heterag_fingerprints"
DB_FILE = "milvus.db"
CONNECT_TIMEOUT_S = 5.0
MAX_TOPK = 16384
_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,253}[A-Za-z0-9])?$")
_NEVER = object()
_PAGE = 4096
#: HNSW search breadth floor on a Milvus server (recall@10 on 5,000 random unit vectors in 32 dimensions:
#: 0.80 at the server's default, 0.98 at 64, 1.0 at 200)
EF_SEARCH = 200
LOAD_TIMEOUT_S = 120.0
_F = TypeVar("_F", bound=Callable[..., Any])


def _hex(key: str) -> str:
    return key.encode("utf-8").hex()


def _typed(meta: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"k": [_hex(k) for k in meta], "t": []}
    for k, v in meta.items():
        if isinstance(v, bool):
            name, value = f"b_{_hex(k)}", v
        elif isinstance(v, int | float):
            name, value = f"n_{_hex(k)}", float(v)
        else:
            name, value = f"s_{_hex(k)}", v
        out[name] = value
        out["t"].append(name)
    return out


def _typed_name(key: str, value: Any) -> str:
    kind = "b" if isinstance(value, bool) else "n" if isinstance(value, int | float) else "s"
    return f"{kind}_{_hex(key)}"


def _eq(key: str, value: Any) -> str:
    h = _hex(key)
    if isinstance(value, bool):
        return f'(f["b_{h}"] == {"true" if value else "false"})'
    if isinstance(value, int | float):
        return f'(f["n_{h}"] == {float(value)!r})'
    return f'(f["s_{h}"] == {json.dumps(value, ensure_ascii=False)})'


def _join(parts: list[Any], op: str) -> Any:
    if op == "and" and any(p is _NEVER for p in parts):
        return _NEVER
    parts = [p for p in parts if p is not _NEVER]
    if not parts:
        return _NEVER
    return parts[0] if len(parts) == 1 else "(" + f" {op} ".join(parts) + ")"


def to_milvus_expr(node: Mapping[str, Any]) -> Any:
    """Translate a canonical filter tree to a Milvus expression (or ``_NEVER``)."""
    (key, cond), = node.items()
    if key in ("$and", "$or"):
        return _join([to_milvus_expr(c) for c in cond], key[1:])
    (op, value), = cond.items()
    present = f'json_contains(f["k"], "{_hex(key)}")'
    if op == "$eq":
        return _eq(key, value)
    if op == "$in":
        return _join([_eq(key, v) for v in value], "or")
    if op in ("$ne", "$nin"):  # each equality guarded by its typed field's presence: never NULL under "not"
        values = [value] if op == "$ne" else value
        eqs = [f'(json_contains(f["t"], "{_typed_name(key, v)}") and {_eq(key, v)})' for v in values]
        return f"({present} and not (" + " or ".join(eqs) + "))"
    cmp = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
    return f'(f["n_{_hex(key)}"] {cmp} {float(value)!r})'


def milvus_name(collection: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_]", "_", collection)[:200]
    return f"c_{safe}_{hashlib.sha1(collection.encode()).hexdigest()[:8]}"


# --------------------------------------------------------------------------- errors


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (a pymilvus error's own message, without its ``<MilvusException: ...>``)."""
    message = getattr(exc, "message", None)
    return " ".join(str(message if isinstance(message, str) and message else exc).split())


def _from_milvus(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in ("pymilvus", "grpc", "milvus_lite")


def _not_loaded(exc: BaseException) -> bool:
    return getattr(exc, "code", None) == 101 or "not loaded" in str(exc)


def _answers(uri: str) -> bool:
    """Whether something accepts connections at the host and port of server ``uri``."""
    parts = urlsplit(uri)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 19530), timeout=2.0).close()
        return True
    except OSError:
        return False


def _unreachable(exc: BaseException, uri: str) -> bool:
    """Whether ``exc`` (from pymilvus or grpc) means the Milvus server at ``uri`` does not answer."""
    code = getattr(exc, "code", None)
    if code == 2 or "Fail connecting to server" in str(exc):  # pymilvus: the connection failed
        return True
    if callable(code):  # a raw grpc.RpcError
        import grpc

        if code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return True
    return not _answers(uri)


def _guarded(method: _F) -> _F:
    """Run a :class:`MilvusStore` call; on a server, a collection that is not loaded (after a restart) is
    loaded and the call repeated once, and a server that does not answer raises :class:`StoreUnavailableError`."""

    @functools.wraps(method)
    def wrapper(self: MilvusStore, *args: Any, **kwargs: Any) -> Any:
        try:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if not (self._remote and _from_milvus(exc) and _not_loaded(exc)):
                    raise
            self._load()
            return method(self, *args, **kwargs)
        except HeteragError:
            raise
        except Exception as exc:
            if self._remote and _from_milvus(exc) and _unreachable(exc, self.uri):
                raise StoreUnavailableError(f"cannot reach Milvus {self.name}: {_one_line(exc)}") from None
            raise

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------- shared clients

_CLIENTS: dict[str, list[Any]] = {}  # location -> [client, users]
_CLIENTS_LOCK = threading.Lock()


def _client(uri: str, shown: str) -> Any:
    from pymilvus import MilvusClient

    # pymilvus logs every failed call with its traceback on its own stderr handler; this module raises one
    # heterag error line instead (raise the level again to see them)
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    with _CLIENTS_LOCK:
        entry = _CLIENTS.get(uri)
        if entry is None:
            try:
                kwargs = {"timeout": CONNECT_TIMEOUT_S} if uri.startswith(("http://", "https://")) else {}
                entry = _CLIENTS[uri] = [MilvusClient(uri, **kwargs), 0]
            except Exception as exc:  # noqa: BLE001 - any failure to connect or start Milvus Lite
                raise StoreUnavailableError(f"cannot reach Milvus {shown}: {_one_line(exc)}") from None
        entry[1] += 1
        return entry[0]


def probe(url: StoreURL) -> None:
    """Connect to the Milvus server of ``url`` and disconnect; :class:`StoreUnavailableError` when it does not answer."""
    assert url.location is not None
    _client(url.location, url.display())
    _release(url.location)


def _release(uri: str) -> None:
    with _CLIENTS_LOCK:
        entry = _CLIENTS.get(uri)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                entry[0].close()
                del _CLIENTS[uri]


# --------------------------------------------------------------------------- store


class MilvusStore:
    """Vector store backed by a Milvus collection (COSINE metric)."""

    def __init__(self, url: StoreURL, path: str | Path, collection: str = "default") -> None:
        if not isinstance(collection, str) or not _NAME_RE.match(collection):
            raise InvalidInputError(
                f"milvus: invalid collection name {collection!r}: use 1-255 letters, digits, '.', '_' or '-', "
                "starting and ending with a letter or digit")
        self.name = url.display()
        loc = url.location
        if loc is None:
            Path(path).mkdir(parents=True, exist_ok=True)
            loc = str(Path(path) / DB_FILE)
        elif not loc.startswith(("http://", "https://")):
            Path(loc).parent.mkdir(parents=True, exist_ok=True)
        self.uri = loc
        self._remote = loc.startswith(("http://", "https://"))
        self.collection = collection
        self.mname = milvus_name(collection)
        self._lock = threading.RLock()
        self._fp: Fingerprint | None = None
        self._c: Any = _client(loc, self.name if url.location else f"milvus:{redact(loc)}")

    # ------------------------------------------------------------------ internals

    @property
    def _db(self) -> Any:
        if self._c is None:
            raise HeteragError(f"milvus collection {self.collection!r} is closed")
        return self._c

    def _load(self) -> None:
        """Load this collection and the fingerprints (a server loads them again a while after a restart)."""
        with self._lock:
            for name in (self.mname, FINGERPRINTS):
                if self._db.has_collection(name):
                    self._db.load_collection(name, timeout=LOAD_TIMEOUT_S)

    def _exists(self) -> bool:
        return bool(self._db.has_collection(self.mname))

    def _size(self) -> int | None:
        if not self._exists():
            return None
        for f in self._db.describe_collection(self.mname)["fields"]:
            if f["name"] == "vector":
                return int(f["params"]["dim"])
        return None

    def _create(self, dim: int) -> None:
        from pymilvus import DataType

        if self._exists():
            self._db.drop_collection(self.mname)
        schema = self._db.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=2048)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
        schema.add_field("text", DataType.VARCHAR, max_length=65535)
        schema.add_field("meta", DataType.JSON)
        schema.add_field("f", DataType.JSON)
        self._create_loaded(self.mname, schema, "COSINE")

    def _create_loaded(self, name: str, schema: Any, metric: str) -> None:
        """Create collection ``name`` with its vector index, then load it: the index exists before the load, so
        a server searches sealed segments through it (built after a load, it waits for a release and load)."""
        index = self._db.prepare_index_params()
        index.add_index("vector", index_type="AUTOINDEX", metric_type=metric)
        self._db.create_collection(name, schema=schema, consistency_level="Strong")
        # an empty collection's index is ready at once: no need for pymilvus's first poll half a second later
        self._db.create_index(name, index, sync=False)
        self._db.load_collection(name, timeout=LOAD_TIMEOUT_S)

    def _expr(self, ids: Sequence[str] | None, where: Mapping[str, Any] | None) -> Any:
        """Expression for ``ids``/``where``: "" for everything, ``_NEVER`` when nothing can match."""
        canon = normalize(where)
        parts: list[Any] = []
        if ids is not None:
            if not ids:
                return _NEVER
            parts.append("pk in " + json.dumps(list(dict.fromkeys(ids)), ensure_ascii=False))
        if canon is not None:
            parts.append(to_milvus_expr(canon))
        return _join(parts, "and") if parts else ""

    def _query(self, expr: str, fields: list[str]) -> list[dict[str, Any]]:
        """Every row matching ``expr``: one query when they fit a page (one round trip; an iterator takes three,
        each waiting for the server's time tick), else an iterator over pages."""
        rows = self._db.query(self.mname, filter=expr, output_fields=fields, limit=_PAGE)
        if len(rows) < _PAGE:
            return rows
        it = self._db.query_iterator(self.mname, batch_size=_PAGE, filter=expr, output_fields=fields)
        out: list[dict[str, Any]] = []
        try:
            while True:
                page = it.next()
                if not page:
                    return out
                out.extend(page)
        finally:
            it.close()

    @staticmethod
    def _record(row: Mapping[str, Any], vectors: bool) -> Record:
        vec = np.asarray(row["vector"], dtype=np.float32) if vectors else None
        return Record(id=row["pk"], vector=vec, text=row["text"], metadata=dict(row["meta"] or {}))

    # ------------------------------------------------------------------ protocol

    @property
    @_guarded
    def dim(self) -> int | None:
        fp = self.fingerprint()
        if fp is not None:
            return fp.dim
        with self._lock:
            return self._size() if self.count() else None

    @_guarded
    def fingerprint(self) -> Fingerprint | None:
        if self._fp is None:
            with self._lock:
                if not self._db.has_collection(FINGERPRINTS):
                    return None
                rows = self._db.get(FINGERPRINTS, ids=[self.collection], output_fields=["fingerprint"])
            self._fp = Fingerprint.from_json(rows[0]["fingerprint"]) if rows else None
        return self._fp

    @_guarded
    def set_fingerprint(self, fp: Fingerprint) -> None:
        from pymilvus import DataType

        with self._lock:
            current = self.fingerprint()
            if current is not None:
                current.check(fp, where=f"milvus collection {self.collection!r}")
                return
            n, size = self.count(), self._size()
            if n and size != fp.dim:
                raise DimensionMismatchError(f"milvus: collection {self.collection!r} holds dimension {size}, fingerprint says {fp.dim}")
            if not n and size != fp.dim:
                self._create(fp.dim)
            if not self._db.has_collection(FINGERPRINTS):
                schema = self._db.create_schema(auto_id=False, enable_dynamic_field=False)
                schema.add_field("name", DataType.VARCHAR, is_primary=True, max_length=2048)
                schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)
                schema.add_field("fingerprint", DataType.VARCHAR, max_length=65535)
                self._create_loaded(FINGERPRINTS, schema, "L2")
            self._db.upsert(FINGERPRINTS, [{"name": self.collection, "vector": [0.0, 0.0], "fingerprint": fp.to_json()}])
            self._fp = fp

    @_guarded
    def upsert(self, records: Sequence[Record]) -> None:
        records = list(records)
        mat = as_matrix(records, self.dim, self.name)
        if not records:
            return
        rows = []
        for r, vec in zip(records, mat, strict=True):
            meta = record_metadata(r, self.name, "milvus")
            rows.append({"pk": r.id, "vector": vec.tolist(), "text": r.text, "meta": meta, "f": _typed(meta)})
        with self._lock:
            size = self._size()
            if size != mat.shape[1]:
                if self.count():
                    raise DimensionMismatchError(f"{self.name}: vectors have dimension {mat.shape[1]}, this store holds dimension {size}")
                self._create(mat.shape[1])
            try:
                for start in range(0, len(rows), _PAGE):
                    self._db.upsert(self.mname, rows[start:start + _PAGE])
            except Exception as exc:
                if _from_milvus(exc) and not (self._remote and (_not_loaded(exc) or _unreachable(exc, self.uri))):
                    raise InvalidInputError(f"milvus: {_one_line(exc)}") from None
                raise

    @_guarded
    def query(self, vector: np.ndarray, k: int = 10, where: Mapping[str, Any] | None = None) -> list[ScoredRecord]:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidInputError(f"milvus: k must be a positive integer, got {k!r}")
        with self._lock:
            size = self._size()  # one cheap call; the count (slow in Milvus) only when the sizes disagree
            q = check_query_vector(vector, size if self._fp is None and size is not None and len(np.ravel(vector)) == size
                                   else self.dim, self.name)
            expr = self._expr(None, where)
            if expr is _NEVER or size is None:
                return []
            params = {"metric_type": "COSINE", "params": {"ef": max(int(k), EF_SEARCH)}}
            res = self._db.search(self.mname, data=[q.tolist()], limit=min(int(k), MAX_TOPK), filter=expr,
                                  output_fields=["pk", "text", "meta"], search_params=params)
        return [ScoredRecord(self._record(hit["entity"] | {"pk": hit["pk"] if "pk" in hit else hit["id"]}, False),
                             float(hit["distance"])) for hit in res[0]]

    @_guarded
    def get(
        self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None, include_vectors: bool = False
    ) -> list[Record]:
        expr = self._expr(ids, where)
        with self._lock:
            if expr is _NEVER or not self._exists():
                return []
            fields = ["pk", "text", "meta"] + (["vector"] if include_vectors else [])
            recs = {r["pk"]: self._record(r, include_vectors) for r in self._query(expr, fields)}
        if ids is None:
            return list(recs.values())
        return [recs[i] for i in dict.fromkeys(ids) if i in recs]

    @_guarded
    def ids(self, where: Mapping[str, Any] | None = None) -> list[str]:
        expr = self._expr(None, where)
        with self._lock:
            if expr is _NEVER or not self._exists():
                return []
            return [r["pk"] for r in self._query(expr, ["pk"])]

    @_guarded
    def delete(self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None) -> int:
        if ids is None and where is None:
            raise InvalidInputError("milvus: delete needs ids and/or a filter (refusing to delete everything)")
        found = self.ids(where) if ids is None else [r.id for r in self.get(ids, where)]
        with self._lock:
            for start in range(0, len(found), _PAGE):
                self._db.delete(self.mname, ids=found[start:start + _PAGE])
        return len(found)

    @_guarded
    def count(self) -> int:
        with self._lock:
            if not self._exists():
                return 0
            rows = self._db.query(self.mname, filter="", output_fields=["count(*)"])
            return int(rows[0]["count(*)"])

    @_guarded
    def flush(self) -> None:
        """Seal what was written (Milvus then builds the collection's index on it). On a server without
        waiting for the segments to be written out (about a second): what was written is already in its log."""
        with self._lock:
            if self._exists():
                self._db.flush(self.mname, **({"_async": True} if self._remote else {}))

    @_guarded
    def index_progress(self) -> tuple[int, int]:
        """``(indexed_rows, total_rows)`` of the vector index as the server reports it: rows in sealed segments
        whose index is built, and all rows it counts. Until the two are equal (some seconds to minutes after a
        :meth:`flush` of a large ingest), part of the collection is searched exactly, which is slower but not
        less accurate. ``(0, 0)`` for a collection that does not exist yet."""
        with self._lock:
            if not self._exists():
                return 0, 0
            info = self._db.describe_index(self.mname, "vector")
        return int(info.get("indexed_rows", 0)), int(info.get("total_rows", 0))

    @_guarded
    def drop(self) -> None:
        """Remove the collection and its fingerprint."""
        with self._lock:
            if self._exists():
                self._db.drop_collection(self.mname)
            if self._db.has_collection(FINGERPRINTS):
                self._db.delete(FINGERPRINTS, ids=[self.collection])
            self._fp = None

    def close(self) -> None:
        c, self._c = self._c, None
        if c is not None:
            _release(self.uri)

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MilvusStore(uri={self.name!r}, collection={self.collection!r})"
