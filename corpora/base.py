"""Shared types for corpus loaders: per-item errors, retrieval datasets, data location."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heterag.core.documents import Document, ItemError
from heterag.core.errors import InvalidInputError

#: Environment variable that overrides where the shared real data lives.
DATA_DIR_ENV = "HETERAG_DATA_DIR"


#: What ingestion iterators yield: a loaded document or the reason an item was skipped.
LoadItem = Document | ItemError


@dataclass
class RetrievalDataset:
    """A retrieval benchmark: documents, queries and graded relevance judgements.

    ``qrels`` maps query id -> {doc id: relevance}; every query in ``queries`` has qrels.
    """

    name: str
    documents: list[Document]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)

    def __repr__(self) -> str:  # the default repr would print the whole corpus
        return (
            f"RetrievalDataset(name={self.name!r}, documents={len(self.documents)}, "
            f"queries={len(self.queries)}, qrels={sum(len(v) for v in self.qrels.values())})"
        )


def default_data_dir() -> Path:
    """Where the shared real data lives: ``$HETERAG_DATA_DIR`` or ``<repo>/../shared/data``.

    The folder may not exist; callers (tests, benchmarks) check and skip with a reason.
    """
    override = os.environ.get(DATA_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def item_error(source: str, exc: Exception) -> ItemError:
    """Turn an exception about ``source`` into an :class:`ItemError` without repeating the source.

    :meth:`Document.create` prefixes its messages with ``"<source>: "``; that prefix is dropped
    here because ``str(ItemError)`` adds it back.
    """
    message = str(exc)
    prefix = f"{source}: "
    if message.startswith(prefix):
        message = message[len(prefix) :]
    return ItemError(source=source, message=message)


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory, else raise :class:`InvalidInputError` naming it."""
    if not path.exists():
        raise InvalidInputError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise InvalidInputError(f"{what} {path} is not a directory")
    return path


def iter_jsonl(path: Path, label: str | None = None) -> Iterator[tuple[str, Any]]:
    """Yield ``(source, value)`` for each non-blank line of a JSON-lines file.

    ``source`` is ``"<label>:<line number>"`` (label defaults to the path). A line that is not
    UTF-8 or not JSON gives an :class:`ItemError` as the value instead of raising, so callers
    decide whether one bad line aborts the load. The file is read line by line.
    """
    label = label or str(path)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            source = f"{label}:{lineno}"
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield source, ItemError(source, utf8_error_message(exc))
                continue
            try:
                yield source, json.loads(line)
            except json.JSONDecodeError as exc:
                yield source, ItemError(source, f"not valid JSON ({exc.msg} at column {exc.colno})")


def utf8_error_message(exc: UnicodeDecodeError, offset_base: int = 0) -> str:
    """Describe a UTF-8 decoding failure as ``"not valid UTF-8 (byte 0x.. at offset N)"``.

    ``offset_base`` is added to the offset when the decoded bytes did not start the file.
    """
    return f"not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {offset_base + exc.start})"
