"""Loader for retrieval benchmarks in the BEIR directory layout.

A BEIR directory holds::

    corpus.jsonl        {"_id", "title", "text", optional "metadata"} per line
    queries.jsonl       {"_id", "text"} per line
    qrels/<split>.tsv   header "query-id<TAB>corpus-id<TAB>score", then one judgement per line

:func:`load_beir` reads a whole benchmark for evaluation and is strict about malformed files;
:func:`iter_beir_corpus` streams only the corpus for ingestion and reports bad records as
:class:`~corpora.base.ItemError` instead of aborting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from heterag.core.documents import DEFAULT_MAX_DOCUMENT_BYTES, Document
from heterag.core.errors import InvalidInputError

from .base import (
    ItemError,
    LoadItem,
    RetrievalDataset,
    item_error,
    iter_jsonl,
    require_dir,
)

logger = logging.getLogger(__name__)

CORPUS_FILE = "corpus.jsonl"
QUERIES_FILE = "queries.jsonl"
QRELS_DIR = "qrels"
QRELS_HEADER = "query-id"


def is_beir_dir(path: str | Path) -> bool:
    """True if ``path`` is a directory with a BEIR ``corpus.jsonl``."""
    path = Path(path)
    return path.is_dir() and (path / CORPUS_FILE).is_file()


def iter_beir_corpus(
    path: str | Path, max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
) -> Iterator[LoadItem]:
    """Stream the documents of a BEIR directory's ``corpus.jsonl``.

    Bad lines and records (not JSON, no ``_id``, empty text, duplicate id, too large) are
    yielded as :class:`ItemError` naming ``corpus.jsonl:<line>``. A missing directory or corpus
    file raises :class:`InvalidInputError`.
    """
    corpus = beir_file(Path(path), CORPUS_FILE)
    yield from _corpus_items(corpus, max_document_bytes, strict=False)


def load_beir(
    path: str | Path, split: str = "test", max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
) -> RetrievalDataset:
    """Load a BEIR benchmark: corpus, the queries judged in ``split``, and their qrels.

    Only queries with at least one judgement are kept. Judgements for documents or queries
    that are not in the files are dropped with a logged warning. Records that are valid JSON
    but unusable (e.g. empty text) are skipped with a warning; a line that is not JSON, a
    malformed qrels row or a missing file raises :class:`InvalidInputError` naming the
    file (and line).
    """
    root = Path(path)
    corpus_file = beir_file(root, CORPUS_FILE)
    queries_file = beir_file(root, QUERIES_FILE)
    qrels_file = beir_file(root, f"{QRELS_DIR}/{split}.tsv")

    qrels = read_qrels(qrels_file)
    queries = read_queries(queries_file)
    documents = load_corpus_documents(corpus_file, max_document_bytes)
    qrels = _drop_unknown(qrels, queries, {d.id for d in documents}, qrels_file)
    queries = {qid: queries[qid] for qid in qrels}
    logger.info(
        "loaded BEIR %s (%s): %d documents, %d queries, %d judgements",
        root.name, split, len(documents), len(queries), sum(len(v) for v in qrels.values()),
    )
    return RetrievalDataset(name=root.name, documents=documents, queries=queries, qrels=qrels)


def read_queries(path: Path) -> dict[str, str]:
    """Read a BEIR ``queries.jsonl`` into {query id: text}; raises on malformed lines."""
    queries: dict[str, str] = {}
    for source, record in iter_jsonl(path):
        if isinstance(record, ItemError):
            raise InvalidInputError(str(record))
        qid = _record_id(record, source)
        text = record.get("text")
        if not isinstance(text, str):
            raise InvalidInputError(f"{source}: query 'text' must be a string")
        if not text.strip():
            logger.warning("%s: query %r has empty text; skipped", source, qid)
            continue
        queries[qid] = text.strip()
    return queries


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Read a BEIR qrels TSV into {query id: {doc id: relevance}}; raises on malformed rows."""
    qrels: dict[str, dict[str, int]] = {}
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                row = _qrels_row(line, f"{path}:{lineno}", is_first=lineno == 1)
                if row is not None:
                    qid, doc_id, score = row
                    qrels.setdefault(qid, {})[doc_id] = score
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid UTF-8 ({exc.reason})") from None
    return qrels


def _qrels_row(line: str, source: str, is_first: bool) -> tuple[str, str, int] | None:
    """Parse one qrels line; None for the header and blank lines."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    parts = line.split("\t") if "\t" in line else line.split()
    if is_first and parts[0].strip().lower() == QRELS_HEADER:
        return None
    if len(parts) != 3:
        raise InvalidInputError(
            f"{source}: expected 3 tab-separated columns (query-id, corpus-id, score), got {len(parts)}"
        )
    qid, doc_id, score = (p.strip() for p in parts)
    try:
        return qid, doc_id, int(score)
    except ValueError:
        raise InvalidInputError(f"{source}: score {score!r} is not an integer") from None


def beir_file(root: Path, name: str) -> Path:
    """Path of ``name`` inside BEIR directory ``root``, raising a clear error if absent."""
    require_dir(root, "BEIR directory")
    path = root / name
    if not path.is_file():
        hint = _available_splits(root) if name.startswith(f"{QRELS_DIR}/") else ""
        raise InvalidInputError(f"BEIR directory {root} has no {name}{hint}")
    return path


def _available_splits(root: Path) -> str:
    splits = sorted(p.stem for p in (root / QRELS_DIR).glob("*.tsv")) if (root / QRELS_DIR).is_dir() else []
    return f" (available splits: {', '.join(splits)})" if splits else ""


def load_corpus_documents(corpus: Path, max_document_bytes: int) -> list[Document]:
    """All usable documents of a corpus; unusable records are counted and logged."""
    documents: list[Document] = []
    skipped = 0
    for item in _corpus_items(corpus, max_document_bytes, strict=True):
        if isinstance(item, ItemError):
            skipped += 1
            logger.log(logging.WARNING if skipped <= 5 else logging.DEBUG, "skipped %s", item)
        else:
            documents.append(item)
    if skipped:
        logger.warning("%s: skipped %d unusable record(s) of %d", corpus, skipped, skipped + len(documents))
    return documents


def _corpus_items(corpus: Path, max_document_bytes: int, strict: bool) -> Iterator[LoadItem]:
    """Documents of ``corpus.jsonl``; a non-JSON line raises when ``strict``, else is an ItemError."""
    seen: set[str] = set()
    for source, record in iter_jsonl(corpus):
        if isinstance(record, ItemError):
            if strict:
                raise InvalidInputError(str(record))
            yield record
            continue
        item = _record_to_document(record, source, max_document_bytes)
        if isinstance(item, Document):
            if item.id in seen:
                item = ItemError(source, f"duplicate _id {item.id!r}; the first one is kept")
            else:
                seen.add(item.id)
        yield item


def _record_to_document(record: Any, source: str, max_document_bytes: int) -> LoadItem:
    """Build a document from one corpus record; an empty text falls back to the title."""
    try:
        doc_id = _record_id(record, source)
        title = record.get("title") or ""
        text = record.get("text")
        if text is None:
            text = ""
        if not isinstance(title, str) or not isinstance(text, str):
            raise InvalidInputError(f"{source}: 'title' and 'text' must be strings")
        if not text.strip() and title.strip():
            text = title  # e.g. TREC-COVID entries with no abstract: keep them findable
        return Document.create(
            text=text,
            title=title,
            id=doc_id,
            metadata=_scalar_metadata(record.get("metadata")),
            source=source,
            max_bytes=max_document_bytes,
        )
    except InvalidInputError as exc:
        return item_error(source, exc)


def _record_id(record: Any, source: str) -> str:
    """The ``_id`` of a BEIR record as a string (integers are accepted)."""
    if not isinstance(record, dict):
        raise InvalidInputError(f"{source}: expected a JSON object, got {type(record).__name__}")
    raw = record.get("_id")
    if isinstance(raw, bool) or not isinstance(raw, str | int) or not str(raw).strip():
        raise InvalidInputError(f"{source}: missing or empty '_id'")
    return str(raw).strip()


def _scalar_metadata(metadata: Any) -> dict[str, str | int | float | bool]:
    """Keep the flat str/int/float/bool entries of a record's metadata; drop the rest."""
    if not isinstance(metadata, Mapping):
        return {}
    return {
        k: v for k, v in metadata.items() if isinstance(k, str) and k and isinstance(v, str | int | float | bool)
    }


def _drop_unknown(
    qrels: dict[str, dict[str, int]], queries: Mapping[str, str], doc_ids: set[str], qrels_file: Path
) -> dict[str, dict[str, int]]:
    """Drop judgements whose document or query is missing, logging how many went."""
    kept: dict[str, dict[str, int]] = {}
    unknown_docs = unknown_queries = 0
    for qid, judged in qrels.items():
        if qid not in queries:
            unknown_queries += len(judged)
            continue
        known = {doc_id: score for doc_id, score in judged.items() if doc_id in doc_ids}
        unknown_docs += len(judged) - len(known)
        if known:
            kept[qid] = known
    if unknown_docs:
        logger.warning("%s: dropped %d judgement(s) for documents not in the corpus", qrels_file, unknown_docs)
    if unknown_queries:
        logger.warning("%s: dropped %d judgement(s) for queries not in queries.jsonl", qrels_file, unknown_queries)
    return kept
