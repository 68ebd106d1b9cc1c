"""Vector-store backends behind one protocol, selectable by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import UnknownNameError
from .base import Fingerprint, Record, ScoredRecord, VectorStore


def _chroma(path: Path, collection: str) -> VectorStore:
    from .chroma import ChromaStore

    return ChromaStore(path, collection)


def _faiss(path: Path, collection: str) -> VectorStore:
    from .faiss import FaissStore

    return FaissStore(path, collection)


STORES: dict[str, Callable[[Path, str], VectorStore]] = {"chroma": _chroma, "faiss": _faiss}


def open_store(name: str, path: str | Path, collection: str = "default") -> VectorStore:
    """Open (creating if needed) the store backend ``name`` persisted under ``path``."""
    try:
        factory = STORES[name]
    except KeyError:
        raise UnknownNameError("store", name, STORES) from None
    return factory(Path(path), collection)


__all__ = ["Fingerprint", "Record", "ScoredRecord", "VectorStore", "STORES", "open_store"]
