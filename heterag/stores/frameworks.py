"""A LangChain ``VectorStore`` or a LlamaIndex vector store backing a heterag collection.

:class:`LangChainStore` wraps a LangChain vector store that keeps documents in memory and accepts a
callable filter (``langchain_core.vectorstores.InMemoryVectorStore`` and look-alikes);
:class:`LlamaIndexStore` wraps a LlamaIndex store that takes precomputed embeddings and restricts a query
to ``node_ids`` (``SimpleVectorStore`` and look-alikes). Either can be handed to :class:`heterag.Pipeline`
as its store, or opened by spec (``langchain`` / ``llamaindex``: fresh in-memory stores kept per folder and
collection for the life of the process; this is how the conformance suite holds them to the protocol).

What each framework store does: it keeps the vectors and runs the nearest-neighbour search (LangChain:
``similarity_search_by_vector`` with a filter callable; LlamaIndex: ``query`` with ``node_ids``). What the
adapter adds: heterag's filter semantics (:func:`heterag.stores.filters.matches`, evaluated over the stored
metadata, then passed to the search as the set of allowed ids), exact cosine scores recomputed from the
stored vectors (kept, as given, with the text and typed metadata in one JSON metadata entry
``_heterag``), all-or-nothing validation before any write, and the fingerprint.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from heterag.core.errors import DimensionMismatchError, HeteragError, InvalidInputError
from heterag.stores.base import Fingerprint, Record, ScoredRecord, as_matrix, check_query_vector, record_metadata
from heterag.stores.filters import matches, normalize

FIELD = "_heterag"
_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,253}[A-Za-z0-9])?$")


def _pack(record: Record, vector: np.ndarray, meta: Mapping[str, Any]) -> str:
    return json.dumps({"text": record.text, "meta": dict(meta), "vector": [float(x) for x in vector]})


class _AdapterStore:
    """The store protocol over four primitives a subclass maps to its framework:
    ``_put(records, vectors, packed)``, ``_all() -> {id: packed}``, ``_remove(ids)``,
    ``_search(vector, k, allowed_ids | None) -> [id]``."""

    name = "adapter"

    def __init__(self, name: str) -> None:
        self.name = name
        self._fp: Fingerprint | None = None
        self._dim: int | None = None
        self._closed = False
        self._lock = threading.RLock()

    # primitives ---------------------------------------------------------------
    def _put(self, records: Sequence[Record], vectors: np.ndarray, packed: list[str]) -> None:
        raise NotImplementedError

    def _all(self) -> dict[str, str]:
        raise NotImplementedError

    def _remove(self, ids: Sequence[str]) -> None:
        raise NotImplementedError

    def _search(self, vector: np.ndarray, k: int, allowed: set[str] | None) -> list[str]:
        raise NotImplementedError

    # protocol ------------------------------------------------------------------
    def _check(self) -> None:
        if self._closed:
            raise HeteragError(f"{self.name} store is closed")

    def _unpacked(self) -> dict[str, dict[str, Any]]:
        return {i: json.loads(p) for i, p in self._all().items()}

    def _matching(self, ids: Sequence[str] | None, where: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
        canon = normalize(where)
        rows = self._unpacked()
        if ids is not None:
            rows = {i: rows[i] for i in dict.fromkeys(ids) if i in rows}
        if canon is not None:
            rows = {i: r for i, r in rows.items() if matches(r["meta"], canon)}
        return rows

    @staticmethod
    def _record(rid: str, row: Mapping[str, Any], vectors: bool) -> Record:
        vec = np.asarray(row["vector"], dtype=np.float32) if vectors else None
        return Record(id=rid, vector=vec, text=row["text"], metadata=dict(row["meta"]))

    @property
    def dim(self) -> int | None:
        if self._fp is not None:
            return self._fp.dim
        return self._dim if self.count() else None

    def fingerprint(self) -> Fingerprint | None:
        self._check()
        return self._fp

    def set_fingerprint(self, fp: Fingerprint) -> None:
        with self._lock:
            self._check()
            if self._fp is not None:
                self._fp.check(fp, where=f"{self.name} collection")
                return
            if self.count() and self._dim != fp.dim:
                raise DimensionMismatchError(f"{self.name}: collection holds dimension {self._dim}, fingerprint says {fp.dim}")
            self._fp, self._dim = fp, fp.dim

    def upsert(self, records: Sequence[Record]) -> None:
        records = list(records)
        with self._lock:
            self._check()
            mat = as_matrix(records, self.dim, self.name)
            if not records:
                return
            packed = []
            for r, vec in zip(records, mat, strict=True):
                meta = record_metadata(r, self.name)
                packed.append(_pack(r, vec, meta))
            existing = set(self._all())
            stale = [r.id for r in records if r.id in existing]
            if stale:
                self._remove(stale)
            self._put(records, mat, packed)
            self._dim = mat.shape[1]

    def query(self, vector: np.ndarray, k: int = 10, where: Mapping[str, Any] | None = None) -> list[ScoredRecord]:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidInputError(f"{self.name}: k must be a positive integer, got {k!r}")
        with self._lock:
            self._check()
            q = check_query_vector(vector, self.dim, self.name)
            rows = self._matching(None, where) if where is not None else None
            if rows is not None and not rows:
                return []
            if not self._all():
                return []
            found = self._search(q, int(k), set(rows) if rows is not None else None)
            rows = rows if rows is not None else self._unpacked()
        qn = q / (np.linalg.norm(q) or 1.0)
        out = []
        for rid in found:
            row = rows[rid]
            v = np.asarray(row["vector"], dtype=np.float32)
            out.append(ScoredRecord(self._record(rid, row, False), float(v @ qn / (np.linalg.norm(v) or 1.0))))
        out.sort(key=lambda h: -h.score)
        return out

    def get(
        self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None, include_vectors: bool = False
    ) -> list[Record]:
        with self._lock:
            self._check()
            return [self._record(i, r, include_vectors) for i, r in self._matching(ids, where).items()]

    def ids(self, where: Mapping[str, Any] | None = None) -> list[str]:
        with self._lock:
            self._check()
            return list(self._matching(None, where))

    def delete(self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None) -> int:
        if ids is None and where is None:
            raise InvalidInputError(f"{self.name}: delete needs ids and/or a filter (refusing to delete everything)")
        with self._lock:
            self._check()
            found = list(self._matching(ids, where))
            if found:
                self._remove(found)
            return len(found)

    def count(self) -> int:
        with self._lock:
            self._check()
            return len(self._all())

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> _AdapterStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Precomputed:
    """LangChain ``Embeddings`` handing out the vectors the adapter is about to add (it never embeds text)."""

    def __init__(self) -> None:
        self.queue: list[list[float]] = []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        out, self.queue = self.queue[: len(texts)], self.queue[len(texts):]
        if len(out) != len(texts):
            raise HeteragError("the heterag adapter's embeddings only hand out precomputed vectors")
        return out

    def embed_query(self, text: str) -> list[float]:
        raise HeteragError("the heterag adapter queries by vector only")

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_documents(texts)

    async def aembed_query(self, text: str) -> list[float]:
        return self.embed_query(text)


class LangChainStore(_AdapterStore):
    """heterag store protocol over a LangChain vector store.

    ``LangChainStore()`` makes an ``InMemoryVectorStore``; ``LangChainStore(factory)`` calls
    ``factory(embeddings)`` to build another one around the adapter's precomputed-vector ``Embeddings``.
    The store must support ``add_documents(ids=...)``, ``delete(ids)``, ``similarity_search_by_vector(filter=
    callable)`` and expose its documents as ``store`` ({id: {"text", "metadata"}}) like ``InMemoryVectorStore``.
    """

    def __init__(self, factory: Any = None, name: str = "langchain") -> None:
        super().__init__(name)
        from langchain_core.embeddings import Embeddings

        self.embeddings = type("HeteragPrecomputed", (_Precomputed, Embeddings), {})()
        if factory is None:
            from langchain_core.vectorstores import InMemoryVectorStore

            factory = InMemoryVectorStore
        self.vectorstore = factory(self.embeddings)

    def _put(self, records: Sequence[Record], vectors: np.ndarray, packed: list[str]) -> None:
        from langchain_core.documents import Document

        self.embeddings.queue = [v.tolist() for v in vectors]
        docs = [Document(page_content=r.text, metadata={FIELD: p}, id=r.id) for r, p in zip(records, packed, strict=True)]
        self.vectorstore.add_documents(docs, ids=[r.id for r in records])

    def _all(self) -> dict[str, str]:
        return {i: d["metadata"][FIELD] for i, d in self.vectorstore.store.items()}

    def _remove(self, ids: Sequence[str]) -> None:
        self.vectorstore.delete(list(ids))

    def _search(self, vector: np.ndarray, k: int, allowed: set[str] | None) -> list[str]:
        kwargs = {"filter": (lambda doc: doc.id in allowed)} if allowed is not None else {}
        return [d.id for d in self.vectorstore.similarity_search_by_vector(vector.tolist(), k=k, **kwargs)]


class LlamaIndexStore(_AdapterStore):
    """heterag store protocol over a LlamaIndex vector store (default: a new ``SimpleVectorStore``).

    The store must accept nodes with precomputed embeddings (``add``), ``delete_nodes(node_ids)``,
    ``query(VectorStoreQuery(query_embedding=..., similarity_top_k=..., node_ids=...))`` and expose its
    nodes' metadata as ``data.metadata_dict`` like ``SimpleVectorStore``.
    """

    def __init__(self, vector_store: Any = None, name: str = "llamaindex") -> None:
        super().__init__(name)
        if vector_store is None:
            from llama_index.core.vector_stores import SimpleVectorStore

            vector_store = SimpleVectorStore()
        self.vector_store = vector_store

    def _put(self, records: Sequence[Record], vectors: np.ndarray, packed: list[str]) -> None:
        from llama_index.core.schema import TextNode

        nodes = [TextNode(id_=r.id, text=r.text, embedding=v.tolist(), metadata={FIELD: p})
                 for r, v, p in zip(records, vectors, packed, strict=True)]
        self.vector_store.add(nodes)

    def _all(self) -> dict[str, str]:
        return {i: m[FIELD] for i, m in self.vector_store.data.metadata_dict.items() if FIELD in m}

    def _remove(self, ids: Sequence[str]) -> None:
        self.vector_store.delete_nodes(node_ids=list(ids))

    def _search(self, vector: np.ndarray, k: int, allowed: set[str] | None) -> list[str]:
        from llama_index.core.vector_stores.types import VectorStoreQuery

        query = VectorStoreQuery(query_embedding=vector.tolist(), similarity_top_k=k,
                                 node_ids=sorted(allowed) if allowed is not None else None)
        return list(self.vector_store.query(query).ids or [])


# --------------------------------------------------------------------------- by spec, per process

_MEMORY: dict[tuple[str, str, str], _AdapterStore] = {}
_MEMORY_LOCK = threading.Lock()


class _Handle:
    """A handle on a process-wide adapter store (closing the handle keeps the data, as a reopen expects)."""

    def __init__(self, inner: _AdapterStore) -> None:
        self._inner = inner
        self.name = inner.name

    def __getattr__(self, attr: str) -> Any:
        if attr == "_inner":
            raise AttributeError(attr)
        if self._inner is None:
            raise HeteragError(f"{self.name} store is closed")
        return getattr(self._inner, attr)

    @property
    def dim(self) -> int | None:
        return self.__getattr__("dim")

    def close(self) -> None:
        self._inner = None  # type: ignore[assignment]

    def __enter__(self) -> _Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_memory(kind: str, spec: str, path: str, collection: str) -> Any:
    """The process-wide in-memory adapter store ``kind`` ("langchain" or "llamaindex") for (path, collection)."""
    if not isinstance(collection, str) or not _NAME_RE.match(collection):
        raise InvalidInputError(f"{kind}: invalid collection name {collection!r}: use 1-255 letters, digits, '.', '_' or '-'")
    key = (kind, path, collection)
    with _MEMORY_LOCK:
        store = _MEMORY.get(key)
        if store is None:
            store = _MEMORY[key] = LangChainStore(name=spec) if kind == "langchain" else LlamaIndexStore(name=spec)
    return _Handle(store)


__all__ = ["LangChainStore", "LlamaIndexStore", "open_memory"]
