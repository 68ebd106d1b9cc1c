"""Chroma server store (``chroma-http://HOST:PORT``): :class:`~heterag.stores.chroma.ChromaStore`'s
translation of filters, metadata and dimension rules over ``chromadb.HttpClient``.

The server is the single source of truth, so none of the embedded store's cross-process
machinery (generation token, client reopening, count cache) applies: every call goes to the
server, and writes from other processes are visible at once. Collection names follow Chroma's
rule (3-512 characters of ``[A-Za-z0-9._-]``, starting and ending with a letter or digit, no
``..``); vectors are passed in, never computed (``embedding_function=None``: Chroma's default
would download a model). Start a server with ``chroma run --host 127.0.0.1 --port 8000 --path DIR``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import chromadb
import httpx
from chromadb.config import Settings

from heterag.core.errors import HeteragError, InvalidInputError, StoreUnavailableError
from heterag.stores.chroma import ChromaStore
from heterag.stores.url import StoreURL

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]$")


def heartbeat(url: StoreURL) -> None:
    """Raise :class:`StoreUnavailableError` (one line naming the URL) unless the server answers its
    heartbeat within :data:`CONNECT_TIMEOUT_S` seconds."""
    assert url.location is not None
    try:
        r = httpx.get(f"{url.location}/api/v2/heartbeat", timeout=CONNECT_TIMEOUT_S)
        r.raise_for_status()
    except httpx.HTTPError as exc:
        raise StoreUnavailableError(f"cannot reach the Chroma server {url.display()}: {exc}".replace("\n", " ")) from None


def connect(url: StoreURL) -> Any:
    """A ``chromadb.HttpClient`` for ``url`` after a :func:`heartbeat`."""
    heartbeat(url)
    assert url.location is not None
    parts = httpx.URL(url.location)
    return chromadb.HttpClient(host=parts.host, port=parts.port, ssl=parts.scheme == "https",
                               settings=Settings(anonymized_telemetry=False))


class ChromaHttpStore(ChromaStore):
    """Vector store backed by a collection on a Chroma server (HNSW, cosine space)."""

    def __init__(self, url: StoreURL, collection: str = "default") -> None:
        if not isinstance(collection, str) or not _NAME.match(collection) or ".." in collection:
            raise InvalidInputError(
                f"chroma-http: invalid collection name {collection!r}: use 3-512 letters, digits, '.', '_' or '-', "
                "starting and ending with a letter or digit, without '..'")
        self.url = url
        self.name = url.display()
        self.path = None  # type: ignore[assignment]
        self.collection = collection
        self._shared = None
        self._data_dim = None
        self._fp = None
        self._count_cache = None
        self._version = 0
        self._client = connect(url)
        self._max_batch = int(self._client.get_max_batch_size())
        self._col = self._open_collection()

    @property
    def _c(self) -> Any:
        if self._client is None:
            raise HeteragError(f"chroma-http collection {self.collection!r} is closed")
        return self._col

    def _wrote(self) -> None:
        pass

    def count(self) -> int:
        return int(self._c.count())

    def drop(self) -> None:
        """Remove the collection (records and fingerprint) from the server; the handle then starts empty."""
        self._c  # noqa: B018 - raises if closed
        self._client.delete_collection(self.collection)
        self._fp = None
        self._data_dim = None
        self._col = self._open_collection()

    def close(self) -> None:
        """Drop the client (the server keeps everything). Idempotent."""
        self._col = None
        self._client = None

    def __repr__(self) -> str:
        return f"ChromaHttpStore(url={self.name!r}, collection={self.collection!r})"
