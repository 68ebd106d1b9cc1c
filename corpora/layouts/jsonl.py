"""The ``jsonl`` layout: a JSON-lines file, one document per line (see :func:`iter_jsonl_documents`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from heterag.core.documents import DEFAULT_MAX_DOCUMENT_BYTES, Document, Section
from heterag.core.errors import InvalidInputError

from ..base import ItemError, LoadItem, item_error, iter_jsonl

#: File suffixes read as JSON lines.
JSONL_SUFFIXES = frozenset({".jsonl"})


def iter_jsonl_documents(path: Path, max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> Iterator[LoadItem]:
    """One document per line of a JSON-lines file.

    Each line is an object with ``"text"`` or ``"sections"`` (a list of
    ``{"heading": [...] | "str", "text": "..."}``), and optional ``"id"``, ``"title"`` and
    flat ``"metadata"``. Without an id a line's document id is ``"<file name>:<line>"``.
    Bad lines (not JSON, wrong shape, duplicate id) become :class:`ItemError` naming
    ``<file name>:<line>``.
    """
    label = path.name
    seen: set[str] = set()
    for source, record in iter_jsonl(path, label=label):
        if isinstance(record, ItemError):
            yield record
            continue
        item = _jsonl_record_to_document(record, source, label, max_document_bytes)
        if isinstance(item, Document):
            if item.id in seen:
                item = ItemError(source, f"duplicate id {item.id!r}; the first one is kept")
            else:
                seen.add(item.id)
        yield item


def _jsonl_record_to_document(record: Any, source: str, label: str, max_document_bytes: int) -> LoadItem:
    """Validate one JSON-lines record and build its document."""
    try:
        if not isinstance(record, dict):
            raise InvalidInputError(f"expected a JSON object, got {type(record).__name__}")
        doc_id = _record_id(record.get("id"), default=source)
        title = record.get("title") or ""
        if not isinstance(title, str):
            raise InvalidInputError("'title' must be a string")
        metadata = record.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise InvalidInputError("'metadata' must be an object")
        if "sections" in record:
            if "text" in record:
                raise InvalidInputError("give either 'text' or 'sections', not both")
            content: dict[str, Any] = {"sections": _parse_sections(record["sections"])}
        else:
            content = {"text": record.get("text")}
            if content["text"] is None:
                raise InvalidInputError("missing 'text' (or 'sections')")
        return Document.create(
            **content,
            title=title,
            id=doc_id,
            metadata={"source": label, **metadata},
            source=source,
            max_bytes=max_document_bytes,
        )
    except InvalidInputError as exc:
        return item_error(source, exc)


def _record_id(raw: Any, default: str) -> str:
    """A record's explicit id (string or integer) or ``default`` when it has none."""
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, str | int) or not str(raw).strip():
        raise InvalidInputError(f"'id' must be a non-empty string or integer, got {raw!r}")
    return str(raw).strip()


def _parse_sections(raw: Any) -> list[Section]:
    """Sections from ``[{"heading": [...] | "str", "text": "..."}]``."""
    if not isinstance(raw, list):
        raise InvalidInputError("'sections' must be a list")
    sections: list[Section] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("text"), str):
            raise InvalidInputError(f"sections[{i}] must be an object with a string 'text'")
        heading = entry.get("heading") or ()
        if isinstance(heading, str):
            heading = (heading,)
        if not isinstance(heading, list | tuple) or not all(isinstance(h, str) for h in heading):
            raise InvalidInputError(f"sections[{i}].heading must be a string or a list of strings")
        sections.append(Section(text=entry["text"], heading=tuple(heading)))
    return sections


class JsonlLayout:
    """:class:`~corpora.layouts.LayoutReader` for a ``.jsonl`` file of ``{"text" | "sections", "id", "title", "metadata"}``."""

    name = "jsonl"
    title = "JSON lines"
    description = "a .jsonl file with one document per line"
    images = False
    splits = False

    def detect(self, path: Path) -> bool:
        """True for a file whose suffix is ``.jsonl`` (any case)."""
        return path.is_file() and path.suffix.lower() in JSONL_SUFFIXES

    def read(self, path: Path, *, max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES, **options: Any) -> Iterator[LoadItem]:
        return iter_jsonl_documents(path, max_document_bytes)


READER = JsonlLayout()
