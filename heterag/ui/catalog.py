"""What a collection holds, document by document: list, delete, and thumbnails for the UI.

Works on any :class:`~heterag.pipeline.pipeline.Pipeline` through its public attributes (its text
store, image store and image folder), so it needs nothing from how the pipeline was opened.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from heterag.core.errors import InvalidInputError
from heterag.pipeline.pipeline import Pipeline

log = logging.getLogger(__name__)

#: Largest side of a thumbnail, in pixels.
THUMBNAIL_SIZE = 128


@dataclass(frozen=True)
class DocumentInfo:
    """One document of a collection: its id, title, number of text chunks and stored image (if any)."""

    id: str
    title: str
    chunks: int
    image: Path | None = None


def list_documents(pipe: Pipeline, limit: int | None = None) -> list[DocumentInfo]:
    """The documents of ``pipe``'s collection, sorted by title then id (the first ``limit`` of them)."""
    if limit is not None and limit < 1:
        raise InvalidInputError(f"limit must be a positive integer, got {limit!r}")
    docs: dict[str, dict] = {}
    for rec in pipe.store.get():
        meta = rec.metadata
        d = docs.setdefault(str(meta.get("doc_id", "")), {"title": str(meta.get("title", "")), "chunks": 0, "image": None})
        d["chunks"] += 1
        if meta.get("image_path") and d["image"] is None:
            d["image"] = str(meta["image_path"])
    if pipe.image_store is not None and pipe.image_store.count():
        for rec in pipe.image_store.get():
            meta = rec.metadata
            d = docs.setdefault(str(meta.get("doc_id", "")), {"title": str(meta.get("title", "")), "chunks": 0, "image": None})
            if meta.get("image_path"):
                d["image"] = str(meta["image_path"])
    root = pipe.image_files.root if pipe.image_files is not None else None
    out = [
        DocumentInfo(id=doc_id, title=d["title"], chunks=d["chunks"],
                     image=(root / d["image"]) if (root is not None and d["image"]) else None)
        for doc_id, d in docs.items() if doc_id
    ]
    out.sort(key=lambda info: (info.title.lower(), info.id))
    return out[:limit] if limit else out


def delete_documents(pipe: Pipeline, doc_ids: Sequence[str]) -> int:
    """Delete documents by id (chunks, image records, unreferenced image files); returns how many existed."""
    ids = sorted({d for d in doc_ids if isinstance(d, str) and d})
    if not ids:
        return 0
    found = {str(r.metadata.get("doc_id")) for r in pipe.store.get(where={"doc_id": {"$in": ids}})}
    if pipe.image_store is not None and pipe.image_store.count():
        found |= {str(r.metadata.get("doc_id")) for r in pipe.image_store.get(where={"doc_id": {"$in": ids}})}
    if found:
        pipe.delete_documents(sorted(found))
        log.info("deleted %d documents from %s", len(found), pipe.name)
    return len(found)


_THUMBS: OrderedDict[tuple[str, int], str] = OrderedDict()
_THUMBS_LOCK = threading.Lock()
_THUMBS_MAX = 2048


def thumbnail_data_uri(path: str | Path, size: int = THUMBNAIL_SIZE) -> str | None:
    """A small JPEG of the image at ``path`` as a ``data:`` URI (cached), or None if it cannot be read.

    Data URIs keep the UI from having to serve files out of the collection's folder.
    """
    key = (str(path), size)
    with _THUMBS_LOCK:
        if key in _THUMBS:
            _THUMBS.move_to_end(key)
            return _THUMBS[key]
    try:
        from PIL import Image

        with Image.open(path) as img:
            img.thumbnail((size, size))
            rgb = img.convert("RGB")
            buf = io.BytesIO()
            rgb.save(buf, format="JPEG", quality=80)
    except (OSError, ValueError) as exc:
        log.warning("no thumbnail for %s: %s", path, exc)
        return None
    uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    with _THUMBS_LOCK:
        _THUMBS[key] = uri
        while len(_THUMBS) > _THUMBS_MAX:
            _THUMBS.popitem(last=False)
    return uri


__all__ = ["THUMBNAIL_SIZE", "DocumentInfo", "delete_documents", "list_documents", "thumbnail_data_uri"]
