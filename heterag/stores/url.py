"""Store URLs: the one place that turns ``--store``/config text into a backend and a location.

Accepted forms (``heterag ingest --store ...``, ``open_collection(store=...)``, ``open_store``):

==============================  ==============  ============================================
spec                            backend         where the vectors live
==============================  ==============  ============================================
``chroma``                      chroma          embedded, in the collection folder (default)
``faiss``                       faiss           embedded, in the collection folder
``chroma-http://HOST:PORT``     chroma-http     a Chroma server (``chroma run``); also
                                                ``chroma-https://``
``postgresql://USER:PW@H:P/DB`` pgvector        a PostgreSQL server with the pgvector
                                                extension (any libpq DSN; ``postgres://`` too)
``qdrant`` | ``qdrant:PATH``    qdrant          Qdrant's local mode in the collection folder or
``qdrant:URL``                                  at PATH (``:memory:``: this process), or a
                                                Qdrant server (``qdrant:http://HOST:6333``)
``lancedb`` | ``lancedb:PATH``  lancedb         LanceDB (embedded, on disk) in the collection
                                                folder or at PATH
``milvus`` | ``milvus:PATH.db`` milvus          Milvus Lite in the collection folder or in
``milvus:URL``                                  PATH.db, or a Milvus server/cluster
                                                (``milvus:http://HOST:19530``)
``langchain`` | ``llamaindex``  langchain, ...  a LangChain / LlamaIndex in-memory vector store
                                                behind the protocol, kept for the process
                                                (:mod:`heterag.stores.frameworks`)
==============================  ==============  ============================================

A spec without a location (``chroma``, ``faiss``) keeps the store inside the collection's own
folder; a spec with one (a server URL) is *shared*: several heterag collections, and several
processes, use one server, so collections get the heterag collection name as a prefix there
(:func:`heterag.stores.server_collection`). Passwords never appear in messages
(:meth:`StoreURL.display`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from heterag.core.errors import InvalidInputError, UnknownNameError
from heterag.core.redaction import redact

#: backend kind -> the spec forms it accepts (shown when a spec is not understood)
SYNTAX: dict[str, str] = {
    "chroma": "chroma",
    "faiss": "faiss",
    "chroma-http": "chroma-http://HOST:PORT",
    "pgvector": "postgresql://USER[:PASSWORD]@HOST[:PORT]/DB (pgvector)",
    "qdrant": "qdrant[:PATH|:URL]",
    "lancedb": "lancedb[:PATH]",
    "milvus": "milvus[:PATH.db|:URL]",
    "langchain": "langchain (in-process InMemoryVectorStore)",
    "llamaindex": "llamaindex (in-process SimpleVectorStore)",
}
#: backends written ``KIND`` (in the collection folder) or ``KIND:PATH`` / ``KIND:URL`` (outside it)
PREFIX_KINDS = ("qdrant", "lancedb", "milvus")
_URL_KINDS = {"chroma-http": "chroma-http", "chroma-https": "chroma-http", "postgresql": "pgvector", "postgres": "pgvector"}


@dataclass(frozen=True)
class StoreURL:
    """A parsed store spec: ``kind`` (a key of :data:`heterag.stores.STORES`), ``location`` (a server
    URL or DSN; None for a store kept in the collection folder) and the ``spec`` text as given."""

    kind: str
    location: str | None
    spec: str

    @property
    def shared(self) -> bool:
        """True when the store lives outside the collection folder (a server)."""
        return self.location is not None

    def display(self) -> str:
        """The spec with any password replaced by ``***`` (for names and messages)."""
        return redact(self.spec)


def choices_text() -> str:
    return ", ".join(SYNTAX.values())


def parse_store_url(spec: str) -> StoreURL:
    """Parse ``spec`` (see the module docstring). Raises :class:`UnknownNameError` (one line listing
    every accepted form) for an unknown name or scheme, :class:`InvalidInputError` for a malformed URL."""
    if not isinstance(spec, str) or not spec.strip():
        raise UnknownNameError("store", str(spec), SYNTAX.values())
    spec = spec.strip()
    if spec in ("chroma", "faiss", "langchain", "llamaindex") or spec in PREFIX_KINDS:
        return StoreURL(spec, None, spec)
    head, colon, rest = spec.partition(":")
    if colon and head in PREFIX_KINDS and not rest.startswith("//"):
        if not rest.strip():
            raise InvalidInputError(f"bad store spec {spec!r}: expected {SYNTAX[head]}")
        if (head in ("qdrant", "milvus") and rest.startswith(("http://", "https://"))) or (head == "qdrant" and rest == ":memory:"):
            return StoreURL(head, rest, spec)
        return StoreURL(head, str(Path(rest).expanduser().resolve()), spec)
    scheme, sep, _ = spec.partition("://")
    kind = _URL_KINDS.get(scheme.lower()) if sep else None
    if kind is None:
        raise UnknownNameError("store", redact(spec), SYNTAX.values())
    try:
        parts = urlsplit(spec)
        port = parts.port
    except ValueError as exc:
        raise InvalidInputError(f"bad store URL {redact(spec)!r}: {exc}") from None
    if kind == "chroma-http":
        if not parts.hostname:
            raise InvalidInputError(f"bad store URL {redact(spec)!r}: expected {SYNTAX['chroma-http']}")
        http = "https" if scheme.lower() == "chroma-https" else "http"
        location = f"{http}://{parts.hostname}:{port or (443 if http == 'https' else 8000)}"
        return StoreURL(kind, location, spec)
    return StoreURL(kind, spec, spec)  # pgvector: any libpq URI (host may be empty: unix socket / PGHOST)
