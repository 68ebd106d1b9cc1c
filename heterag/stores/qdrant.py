"""Qdrant store (``qdrant:URL`` for a server, ``qdrant:PATH`` or ``qdrant`` for the client's local mode).

Qdrant's payload filters do not have heterag's typing rules (``True`` is not ``1``; ``1`` equals
``1.0``; ``"1"`` is a string), and its key paths give meaning to ``.`` and ``[]``. Each point
therefore carries, besides the record (``_id``, ``_text``, ``_meta`` JSON, ``_norm``), one *typed*
field per metadata key under a hex-encoded name: ``n_<hex>`` (numbers, as float), ``s_<hex>``
(strings), ``b_<hex>`` (booleans), and ``_keys`` (the hex names present), so that every filter
translates exactly: number equality is a closed range, ``$ne``/``$nin`` require the key in ``_keys``.
Numbers are compared as 64-bit floats (exact for integers up to 2**53).

Point ids are UUIDv5 of the record id. Qdrant normalises cosine vectors on upload, so the original
norm is kept in ``_norm`` and vectors come back as given. Fingerprints live in a side collection
``heterag_fingerprints``. Scores are Qdrant's cosine similarity.

Local mode is Qdrant's own test mode: it keeps points in SQLite as *pickles* (open only folders you
wrote yourself) and commits every point separately (about 27 ms per point on the 2-core development
machine), so on disk it suits small collections; ``qdrant::memory:`` keeps them in this process only.
Use a Qdrant server (``qdrant:http://HOST:6333``) for anything large or shared.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from heterag.core.errors import DimensionMismatchError, HeteragError, InvalidInputError, StoreUnavailableError
from heterag.stores.base import Fingerprint, Record, ScoredRecord, as_matrix, check_query_vector, record_metadata
from heterag.stores.filters import normalize
from heterag.stores.url import StoreURL, redact

logger = logging.getLogger(__name__)

FINGERPRINTS = "heterag_fingerprints"
CONNECT_TIMEOUT_S = 5
_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,253}[A-Za-z0-9])?$")
_NS = uuid.UUID("6f1c54c4-5d0e-4a0c-9a55-2a3f6f3c7c11")
_PAGE = 2048


def _hex(key: str) -> str:
    return key.encode("utf-8").hex()


def point_id(record_id: str) -> str:
    return str(uuid.uuid5(_NS, record_id))


# --------------------------------------------------------------------------- shared clients


class _Shared:
    def __init__(self, client: QdrantClient, keep: bool) -> None:
        self.client, self.keep, self.users = client, keep, 0


_CLIENTS: dict[str, _Shared] = {}
_CLIENTS_LOCK = threading.Lock()


def probe(location: str) -> QdrantClient:
    """A client for the Qdrant server at ``location`` that answered; :class:`StoreUnavailableError` otherwise."""
    client = QdrantClient(url=location, timeout=CONNECT_TIMEOUT_S, check_compatibility=False)
    try:
        client.get_collections()
    except Exception as exc:  # noqa: BLE001 - any transport error means unreachable
        client.close()
        raise StoreUnavailableError(f"cannot reach the Qdrant server qdrant:{redact(location)}: {' '.join(str(exc).split())}") from None
    return client


def _client(location: str) -> QdrantClient:
    """One client per location in this process (local mode locks its folder; ``:memory:`` lives as long as the process)."""
    with _CLIENTS_LOCK:
        shared = _CLIENTS.get(location)
        if shared is None:
            if location.startswith(("http://", "https://")):
                client = probe(location)
            elif location == ":memory:":
                client = QdrantClient(location=":memory:")
            else:
                try:
                    client = QdrantClient(path=location)
                except (RuntimeError, OSError) as exc:
                    raise StoreUnavailableError(f"cannot open the Qdrant folder {location}: {exc}") from None
            shared = _CLIENTS[location] = _Shared(client, keep=location == ":memory:")
        shared.users += 1
        return shared.client


def _release(location: str) -> None:
    with _CLIENTS_LOCK:
        shared = _CLIENTS.get(location)
        if shared is None:
            return
        shared.users -= 1
        if shared.users <= 0 and not shared.keep:
            shared.client.close()
            del _CLIENTS[location]


# --------------------------------------------------------------------------- filters


def _typed(meta: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"_keys": [_hex(k) for k in meta]}
    for k, v in meta.items():
        h = _hex(k)
        if isinstance(v, bool):
            out[f"b_{h}"] = v
        elif isinstance(v, int | float):
            out[f"n_{h}"] = float(v)
        else:
            out[f"s_{h}"] = v
    return out


def _equals(h: str, value: Any) -> qm.FieldCondition:
    if isinstance(value, bool):
        return qm.FieldCondition(key=f"b_{h}", match=qm.MatchValue(value=value))
    if isinstance(value, int | float):
        return qm.FieldCondition(key=f"n_{h}", range=qm.Range(gte=float(value), lte=float(value)))
    return qm.FieldCondition(key=f"s_{h}", match=qm.MatchValue(value=value))


def _present(h: str) -> qm.FieldCondition:
    return qm.FieldCondition(key="_keys", match=qm.MatchValue(value=h))


def to_qdrant_filter(node: Mapping[str, Any]) -> qm.Filter:
    """Translate a canonical filter tree (:func:`heterag.stores.filters.normalize`) to a Qdrant ``Filter``."""
    (key, cond), = node.items()
    if key == "$and":
        return qm.Filter(must=[to_qdrant_filter(c) for c in cond])
    if key == "$or":
        return qm.Filter(should=[to_qdrant_filter(c) for c in cond])
    (op, value), = cond.items()
    h = _hex(key)
    if op == "$eq":
        return qm.Filter(must=[_equals(h, value)])
    if op == "$ne":
        return qm.Filter(must=[_present(h)], must_not=[_equals(h, value)])
    if op == "$in":
        return qm.Filter(should=[_equals(h, v) for v in value])
    if op == "$nin":
        return qm.Filter(must=[_present(h)], must_not=[_equals(h, v) for v in value])
    bound = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}[op]
    return qm.Filter(must=[qm.FieldCondition(key=f"n_{h}", range=qm.Range(**{bound: float(value)}))])


# --------------------------------------------------------------------------- store


class QdrantStore:
    """Vector store backed by a Qdrant collection (cosine distance)."""

    def __init__(self, url: StoreURL, path: str, collection: str = "default") -> None:
        if not isinstance(collection, str) or not _NAME_RE.match(collection):
            raise InvalidInputError(
                f"qdrant: invalid collection name {collection!r}: use 1-255 letters, digits, '.', '_' or '-', "
                "starting and ending with a letter or digit")
        self.name = url.display()
        self.location = url.location or str(path)
        self.collection = collection
        self._fp: Fingerprint | None = None
        self._lock = threading.RLock()
        self._c: QdrantClient | None = _client(self.location)

    # ------------------------------------------------------------------ internals

    @property
    def _db(self) -> QdrantClient:
        if self._c is None:
            raise HeteragError(f"qdrant collection {self.collection!r} is closed")
        return self._c

    def _exists(self) -> bool:
        return self._db.collection_exists(self.collection)

    def _size(self) -> int | None:
        if not self._exists():
            return None
        params = self._db.get_collection(self.collection).config.params.vectors
        return int(params.size)

    def _create(self, dim: int) -> None:
        if self._exists():
            self._db.delete_collection(self.collection)
        self._db.create_collection(self.collection, vectors_config=qm.VectorParams(size=int(dim), distance=qm.Distance.COSINE))

    def _filter(self, ids: Sequence[str] | None, where: Mapping[str, Any] | None) -> qm.Filter | None | bool:
        """Qdrant filter for ``ids``/``where``; None for everything; False when nothing can match."""
        canon = normalize(where)
        must: list[Any] = []
        if ids is not None:
            if not ids:
                return False
            must.append(qm.HasIdCondition(has_id=[point_id(i) for i in dict.fromkeys(ids)]))
        if canon is not None:
            must.append(to_qdrant_filter(canon))
        return qm.Filter(must=must) if must else None

    def _scroll(self, flt: qm.Filter | None, payload: bool | list[str], vectors: bool) -> list[Any]:
        out, offset = [], None
        while True:
            points, offset = self._db.scroll(self.collection, scroll_filter=flt, limit=_PAGE, offset=offset,
                                             with_payload=payload, with_vectors=vectors)
            out.extend(points)
            if offset is None:
                return out

    @staticmethod
    def _record(point: Any, vectors: bool) -> Record:
        p = point.payload
        vec = None
        if vectors:
            vec = np.asarray(point.vector, dtype=np.float32) * np.float32(p.get("_norm", 1.0))
        return Record(id=p["_id"], vector=vec, text=p["_text"], metadata=json.loads(p["_meta"]))

    # ------------------------------------------------------------------ protocol

    @property
    def dim(self) -> int | None:
        fp = self.fingerprint()
        if fp is not None:
            return fp.dim
        with self._lock:
            return self._size() if self.count() else None

    def fingerprint(self) -> Fingerprint | None:
        if self._fp is None:
            with self._lock:
                if not self._db.collection_exists(FINGERPRINTS):
                    return None
                got = self._db.retrieve(FINGERPRINTS, ids=[point_id(self.collection)], with_payload=True)
            self._fp = Fingerprint.from_json(got[0].payload["fingerprint"]) if got else None
        return self._fp

    def set_fingerprint(self, fp: Fingerprint) -> None:
        with self._lock:
            current = self.fingerprint()
            if current is not None:
                current.check(fp, where=f"qdrant collection {self.collection!r}")
                return
            n = self.count()
            size = self._size()
            if n and size != fp.dim:
                raise DimensionMismatchError(f"qdrant: collection {self.collection!r} holds dimension {size}, fingerprint says {fp.dim}")
            if not n and size != fp.dim:
                self._create(fp.dim)
            if not self._db.collection_exists(FINGERPRINTS):
                self._db.create_collection(FINGERPRINTS, vectors_config=qm.VectorParams(size=1, distance=qm.Distance.DOT))
            self._db.upsert(FINGERPRINTS, points=[qm.PointStruct(
                id=point_id(self.collection), vector=[1.0], payload={"name": self.collection, "fingerprint": fp.to_json()})],
                wait=True)
            self._fp = fp

    def upsert(self, records: Sequence[Record]) -> None:
        records = list(records)
        mat = as_matrix(records, self.dim, self.name)
        if not records:
            return
        payloads = []
        for r, vec in zip(records, mat, strict=True):
            meta = record_metadata(r, self.name, "qdrant")
            payloads.append({"_id": r.id, "_text": r.text, "_meta": json.dumps(meta), "_norm": float(np.linalg.norm(vec)),
                             **_typed(meta)})
        with self._lock:
            size = self._size()
            if size != mat.shape[1]:
                if self.count():
                    raise DimensionMismatchError(f"{self.name}: vectors have dimension {mat.shape[1]}, this store holds dimension {size}")
                self._create(mat.shape[1])
            self._db.upsert(self.collection, points=qm.Batch(ids=[point_id(r.id) for r in records], vectors=mat.tolist(),
                                                             payloads=payloads), wait=True)

    def query(self, vector: np.ndarray, k: int = 10, where: Mapping[str, Any] | None = None) -> list[ScoredRecord]:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidInputError(f"qdrant: k must be a positive integer, got {k!r}")
        q = check_query_vector(vector, self.dim, self.name)
        flt = self._filter(None, where)
        with self._lock:
            if flt is False or not self._exists():
                return []
            res = self._db.query_points(self.collection, query=q.tolist(), query_filter=flt, limit=int(k),
                                        with_payload=True, with_vectors=False)
        return [ScoredRecord(self._record(p, False), float(p.score)) for p in res.points]

    def get(
        self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None, include_vectors: bool = False
    ) -> list[Record]:
        flt = self._filter(ids, where)
        with self._lock:
            if flt is False or not self._exists():
                return []
            recs = {r.id: r for r in (self._record(p, include_vectors) for p in self._scroll(flt, True, include_vectors))}
        if ids is None:
            return list(recs.values())
        return [recs[i] for i in dict.fromkeys(ids) if i in recs]

    def ids(self, where: Mapping[str, Any] | None = None) -> list[str]:
        flt = self._filter(None, where)
        with self._lock:
            if flt is False or not self._exists():
                return []
            return [p.payload["_id"] for p in self._scroll(flt, ["_id"], False)]

    def delete(self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None) -> int:
        if ids is None and where is None:
            raise InvalidInputError("qdrant: delete needs ids and/or a filter (refusing to delete everything)")
        flt = self._filter(ids, where)
        with self._lock:
            if flt is False or not self._exists():
                return 0
            found = [p.id for p in self._scroll(flt, False, False)]
            if found:
                self._db.delete(self.collection, points_selector=qm.PointIdsList(points=found), wait=True)
            return len(found)

    def count(self) -> int:
        with self._lock:
            return int(self._db.count(self.collection, exact=True).count) if self._exists() else 0

    def drop(self) -> None:
        """Remove the collection and its fingerprint."""
        with self._lock:
            if self._exists():
                self._db.delete_collection(self.collection)
            if self._db.collection_exists(FINGERPRINTS):
                self._db.delete(FINGERPRINTS, points_selector=qm.PointIdsList(points=[point_id(self.collection)]), wait=True)
            self._fp = None

    def close(self) -> None:
        c, self._c = self._c, None
        if c is not None:
            _release(self.location)

    def __enter__(self) -> QdrantStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"QdrantStore(location={self.name!r}, collection={self.collection!r})"
