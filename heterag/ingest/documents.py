"""The documents a store holds: list them, read their chunks, delete them.

Works on a text store and its image store alone (no encoder), so ``heterag docs`` loads no model;
:class:`DocumentManager` gives a pipeline the same operations under its write lock.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heterag.core.images import ImageFiles
from heterag.stores.base import Record, VectorStore


@dataclass(frozen=True)
class DocumentInfo:
    """One stored document, as :meth:`DocumentManager.documents` lists it."""

    id: str
    title: str
    source: str  # the path it was read from, relative to the ingested folder ("" when not from a file)
    chunks: int  # stored text chunks (0 for an image without text)
    image: str | None = None  # the stored image file, for image items
    source_path: str = ""  # resolved absolute path of the file it was read from ("" when not from a file)


def list_documents(store: VectorStore, image_store: VectorStore | None = None, image_files: ImageFiles | None = None,
                   where: Mapping[str, Any] | None = None) -> list[DocumentInfo]:
    """The documents held by a text store and its image store (see :meth:`DocumentManager.documents`); needs no encoder."""
    found: dict[str, dict[str, Any]] = {}
    for s in (store, image_store):
        if s is None or not s.count():
            continue
        for r in s.get(where=where):
            meta = r.metadata
            info = found.setdefault(str(meta.get("doc_id", "")), {
                "title": str(meta.get("title", "")), "source": str(meta.get("source", "")),
                "source_path": str(meta.get("source_path", "")), "chunks": 0, "image": None})
            if s is store:
                info["chunks"] += 1
            if meta.get("image_path") and image_files is not None:
                info["image"] = str(image_files.root / str(meta["image_path"]))
    return [DocumentInfo(id=k, **v) for k, v in sorted(found.items())]


def delete_records(store: VectorStore, image_store: VectorStore | None, image_files: ImageFiles | None,
                   doc_ids: Sequence[str]) -> int:
    """Remove documents ``doc_ids`` from a text store and its image store, with the image files no other
    record uses; returns the records removed. Needs no encoder (``heterag docs delete`` loads no model);
    the caller holds the collection's write lock."""
    ids = list(doc_ids)
    # the image of a document: named by its image record, and by its chunks (a writer killed between the two
    # upserts leaves chunks without the image record)
    shas = {str(r.metadata.get("image_sha256", "")) for r in store.get(where={"doc_id": {"$in": ids}})}
    removed = store.delete(where={"doc_id": {"$in": ids}})
    if image_store is not None:
        old = image_store.get(where={"doc_id": {"$in": ids}})
        shas |= {str(r.metadata.get("image_sha256", "")) for r in old}
        if old:
            removed += image_store.delete(ids=[r.id for r in old])
        if image_files is not None:
            for sha in sorted(filter(None, shas)):
                if not image_store.get(where={"image_sha256": sha}) and not store.get(where={"image_sha256": sha}):
                    image_files.remove(sha)
    for s in (store, image_store):
        if s is not None and hasattr(s, "flush"):
            s.flush()
    return removed


class DocumentManager:
    """Document management of a pipeline (a mixin of :class:`heterag.Pipeline`): list its documents,
    read one document's chunks, delete documents, and drop those whose source file is gone.

    Uses the pipeline's ``store``, ``image_store``, ``image_files`` and ``_writing()`` (its write lock).
    """

    store: VectorStore
    image_store: VectorStore | None
    image_files: ImageFiles | None
    _writing: Callable[[], AbstractContextManager[Any]]

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        """Remove documents (their chunks, image records and unreferenced image files); returns records removed."""
        ids = [d for d in doc_ids if isinstance(d, str) and d]
        if not ids:
            return 0
        with self._writing():
            return self._delete_documents(ids)

    def _delete_documents(self, ids: list[str]) -> int:
        return delete_records(self.store, self.image_store, self.image_files, ids)

    def documents(self, where: Mapping[str, Any] | None = None) -> list[DocumentInfo]:
        """Every stored document (matching ``where``, a metadata filter), sorted by id: its title, source,
        chunk count and image file."""
        return list_documents(self.store, self.image_store, self.image_files, where)

    def document_chunks(self, doc_id: str) -> list[Record]:
        """The stored chunks of document ``doc_id`` in reading order (empty if there is no such document)."""
        records = self.store.get(where={"doc_id": doc_id})
        return sorted(records, key=lambda r: int(r.metadata.get("chunk_index", 0)))

    def remove_missing_files(self, root: str | os.PathLike[str]) -> list[str]:
        """Delete the documents read from files under ``root`` whose file no longer exists (``heterag
        ingest DIR --sync``); returns their ids. Documents without a source file are never touched."""
        base = Path(os.path.realpath(root)).as_posix().rstrip("/") + "/"
        gone = sorted({d.id for d in self.documents() if d.source_path.startswith(base) and not os.path.exists(d.source_path)})
        if gone:
            self.delete_documents(gone)
        return gone
