"""Plain-text and Markdown files: one document per file (Markdown split into sections on its headings)."""

from __future__ import annotations

import codecs
from pathlib import Path

from heterag.core.documents import DEFAULT_MAX_DOCUMENT_BYTES, Document, Section
from heterag.core.errors import InvalidInputError

from ..base import ItemError, LoadItem, item_error, utf8_error_message
from ..markdown import parse_markdown

#: File suffixes read as Markdown and as plain text (JSON lines: :mod:`corpora.layouts.jsonl`).
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
TEXT_SUFFIXES = frozenset({".txt"})


def load_text_file(path: Path, rel: str, max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> LoadItem:
    """Load one ``.txt``/``.md`` file as a document with id and source ``rel``.

    The size is checked with ``stat`` before reading, so an oversized file is never read.
    Markdown is split into sections on its headings; plain text is one section titled by
    the file stem.
    """
    text = _read_text(path, rel, max_document_bytes)
    if isinstance(text, ItemError):
        return text
    stem = Path(rel).stem
    if path.suffix.lower() in MARKDOWN_SUFFIXES:
        title, sections = parse_markdown(text, default_title=stem)
    else:
        title, sections = stem, [Section(text=text)]
    try:
        return Document.create(
            sections=sections, title=title, id=rel, metadata={"source": rel}, source=rel, max_bytes=max_document_bytes
        )
    except InvalidInputError as exc:
        return item_error(rel, exc)


def _read_text(path: Path, rel: str, max_document_bytes: int) -> str | ItemError:
    """The decoded text of ``path``, or an :class:`ItemError` saying why it is unusable."""
    try:
        size = path.stat().st_size
        if size > max_document_bytes:
            return ItemError(
                rel,
                f"file is {_human_size(size)}, over the {_human_size(max_document_bytes)} limit per document "
                "(split it, or raise max_document_bytes)",
            )
        data = path.read_bytes()
    except OSError as exc:
        return ItemError(rel, f"cannot read file ({exc.strerror or exc})")
    if b"\x00" in data:
        return ItemError(rel, "contains NUL bytes (binary file?)")
    offset = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[offset:].decode("utf-8")
    except UnicodeDecodeError as exc:
        return ItemError(rel, utf8_error_message(exc, offset_base=offset))
    if not text.strip():
        return ItemError(rel, "file is empty or whitespace only")
    return text


def _human_size(n_bytes: int) -> str:
    """``"512 bytes"``, ``"3.2 KiB"``, ``"50.0 MiB"``."""
    if n_bytes < 1024:
        return f"{n_bytes} bytes"
    if n_bytes < 2**20:
        return f"{n_bytes / 1024:.1f} KiB"
    return f"{n_bytes / 2**20:.1f} MiB"
