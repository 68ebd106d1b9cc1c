"""Vector-store backends behind one protocol, selected by a store spec (:mod:`heterag.stores.url`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from heterag.stores.base import Fingerprint, KeywordSearch, Record, ScoredRecord, VectorStore
from heterag.stores.url import StoreURL, parse_store_url


def _chroma(url: StoreURL, path: Path, collection: str) -> VectorStore:
    from heterag.stores.chroma import ChromaStore

    return ChromaStore(path, collection)


def _faiss(url: StoreURL, path: Path, collection: str) -> VectorStore:
    from heterag.stores.faiss import FaissStore

    return FaissStore(path, collection)


def _chroma_http(url: StoreURL, path: Path, collection: str) -> VectorStore:
    from heterag.stores.chroma_http import ChromaHttpStore

    return ChromaHttpStore(url, server_collection(path, collection))


def _pgvector(url: StoreURL, path: Path, collection: str) -> VectorStore:
    from heterag.stores.pgvector import open_pgvector

    return open_pgvector(url, server_collection(path, collection))


def _qdrant(url: StoreURL, path: Path, collection: str) -> VectorStore:
    from heterag.stores.qdrant import QdrantStore

    if url.location is None:
        return QdrantStore(url, str(path), collection)
    return QdrantStore(url, str(path), server_collection(path, collection))


def _lancedb(url: StoreURL, path: Path, collection: str) -> VectorStore:
    from heterag.stores.lance import LanceStore

    return LanceStore(url, path, collection if url.location is None else server_collection(path, collection))


def _milvus(url: StoreURL, path: Path, collection: str) -> VectorStore:
    from heterag.stores.milvus import MilvusStore

    return MilvusStore(url, path, collection if url.location is None else server_collection(path, collection))


def _langchain(url: StoreURL, path: Path, collection: str) -> VectorStore:
    from heterag.stores.frameworks import open_memory

    return open_memory("langchain", url.spec, str(path), collection)


def _llamaindex(url: StoreURL, path: Path, collection: str) -> VectorStore:
    from heterag.stores.frameworks import open_memory

    return open_memory("llamaindex", url.spec, str(path), collection)


def server_collection(path: Path, collection: str) -> str:
    """Name of ``collection`` on a shared server: prefixed by a namespace made of the last two parts
    of ``path`` (``NAME.store.heterag`` for ``$HETERAG_HOME/collections/NAME/store``), so that each
    folder's collections stay apart on one server as they would on disk, and every process (or machine)
    that opens the same heterag collection reaches the same server collection. ``collection`` itself is
    validated by the backend."""
    if not isinstance(collection, str) or not collection or collection.startswith(".") or "/" in collection:
        return collection  # let the backend refuse it with its own message
    parts = [re.sub(r"[^A-Za-z0-9_-]+", "_", p).strip("_-") for p in Path(path).parts[-2:]]
    namespace = ".".join(p[:100] for p in parts if p)
    return f"{namespace}.{collection}" if namespace else collection


#: backend kind -> factory(parsed spec, folder for embedded stores, collection name)
STORES: dict[str, Callable[[StoreURL, Path, str], VectorStore]] = {
    "chroma": _chroma, "faiss": _faiss, "chroma-http": _chroma_http, "pgvector": _pgvector, "qdrant": _qdrant,
    "lancedb": _lancedb, "milvus": _milvus, "langchain": _langchain, "llamaindex": _llamaindex,
}


def probe_store(name: str) -> None:
    """Check that the server behind store spec ``name`` answers (and takes the credentials), in at most
    a few seconds; raises :class:`~heterag.core.errors.StoreUnavailableError` naming the URL. No-op for
    embedded stores."""
    url = parse_store_url(name)
    if url.kind == "chroma-http":
        from heterag.stores.chroma_http import heartbeat

        heartbeat(url)
    elif url.kind == "pgvector":
        from heterag.stores.pgvector import connect

        connect(url).close()
    elif url.kind == "qdrant" and url.location and url.location.startswith(("http://", "https://")):
        from heterag.stores.qdrant import probe

        probe(url.location).close()
    elif url.kind == "milvus" and url.location and url.location.startswith(("http://", "https://")):
        from heterag.stores.milvus import probe as probe_milvus

        probe_milvus(url)


def keyword_index_path(path: str | Path, collection: str) -> Path:
    """Folder of the keyword index beside store collection ``collection`` under ``path``."""
    return Path(path) / f"{collection}.keywords"


def open_store(name: str, path: str | Path, collection: str = "default", *, keywords: bool | None = None,
               repair: str | None = None) -> VectorStore:
    """Open (creating if needed) collection ``collection`` of the store ``name``.

    ``name`` is a store spec (:func:`heterag.stores.url.parse_store_url`: ``chroma``, ``faiss``,
    ``chroma-http://HOST:PORT``, ``postgresql://...``). Embedded stores keep their files under
    ``path``; server stores keep nothing there and use it as a namespace (:func:`server_collection`). Raises :class:`~heterag.core.errors.UnknownNameError` for an
    unknown spec (listing the accepted forms) and :class:`~heterag.core.errors.StoreUnavailableError`
    when a server cannot be reached.

    ``keywords``: attach the keyword index (:mod:`heterag.stores.keyworded`; a backend with its own
    full-text search, ``pgvector``, uses that instead). ``None`` (default) attaches it when it exists or
    the store is new (empty), and leaves a store made before keyword indexes without one; ``True``
    creates it if needed, indexing every stored record; ``False`` opens the bare vector store, unchecked (a
    ``pgvector`` table with its keyword column still answers keyword queries and writes its terms). ``repair``
    is the command named in keyword-index errors. Raises
    :class:`~heterag.core.errors.KeywordIndexError` when the keyword index is out of step with the store.
    """
    url = parse_store_url(name)
    store = STORES[url.kind](url, Path(path), collection)
    if keywords is False:
        return store
    native = getattr(store, "keyword_search", None)
    if native is not None:  # full-text search in the same database (pgvector): no keyword folder
        try:
            found = native(create=keywords is True, repair=repair or "heterag keywords build --collection NAME")
        except BaseException:
            store.close()
            raise
        return store if found is None else found
    if isinstance(store, KeywordSearch):
        return store
    from heterag.stores.keyword import KeywordIndex, has_keyword_index
    from heterag.stores.keyworded import KeywordedStore

    folder = keyword_index_path(path, collection)
    exists = has_keyword_index(folder)
    try:
        if not exists and keywords is None and store.count():
            return store  # made before keyword indexes: dense only until `heterag keywords build`
        hint = repair or "heterag keywords build --collection NAME"
        wrapped = KeywordedStore(store, KeywordIndex(folder), repair=hint, check=exists)
        if not exists and store.count():
            wrapped.rebuild()
        return wrapped
    except BaseException:
        store.close()
        raise


__all__ = ["Fingerprint", "KeywordSearch", "Record", "ScoredRecord", "VectorStore", "STORES", "StoreURL", "keyword_index_path", "open_store", "parse_store_url", "probe_store"]
