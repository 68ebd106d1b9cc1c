"""The HeteRAG pipeline: ingest -> retrieve -> answer over one vector store.

Data flows one way: documents are cut into short generation chunks, each chunk is
embedded through its retrieval view, the vectors go to the store together with
the chunk text; a query retrieves views and hands their chunks to the generator.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from .chunking import DEFAULT_CHUNK_TOKENS, ChunkedDocument, chunk_document
from .documents import Document, ItemError
from .errors import HeteragError, InvalidInputError
from .generators.base import Generator, StreamCallback
from .results import Answer, Hit
from .stores.base import Fingerprint, Record, VectorStore
from .views import RetrievalView, ViewEncoder

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    documents_seen: int = 0
    documents_written: int = 0
    documents_unchanged: int = 0
    chunks_written: int = 0
    stale_chunks_removed: int = 0
    failures: list[ItemError] = field(default_factory=list)
    seconds: float = 0.0
    encode_seconds: float = 0.0

    def summary(self) -> str:
        def n(count: int, noun: str) -> str:
            return f"{count} {noun}{'' if count == 1 else 's'}"

        return (
            f"{n(self.documents_written, 'document')} written ({n(self.chunks_written, 'chunk')}), "
            f"{self.documents_unchanged} unchanged, {len(self.failures)} failed, in {self.seconds:.1f}s"
        )


class Pipeline:
    """Ingest, retrieve and answer over one store with one encoder and one view kind."""

    def __init__(
        self,
        store: VectorStore,
        encoder: ViewEncoder,
        view: RetrievalView,
        generator: Generator | None = None,
        *,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        encoder_identity: str | None = None,
        name: str | None = None,
    ):
        self.store = store
        self.encoder = encoder
        self.view = view
        self.chunk_tokens = chunk_tokens
        self._generator = generator
        identity = encoder_identity or getattr(encoder, "identity", type(encoder).__name__)
        self.fingerprint = Fingerprint(
            model=identity,
            dim=int(encoder.dim),
            view=view.kind,
            # JSON round trip: what the store persists is what we compare against
            extra=json.loads(json.dumps({"chunk_tokens": chunk_tokens, "view_settings": view.settings()})),
        )
        existing = store.fingerprint()
        if existing is not None:  # refuse to mix vectors made differently
            existing.check(self.fingerprint, where=f"collection {name!r}" if name else f"{store.name} store")
        store.set_fingerprint(self.fingerprint)

    @property
    def generator(self) -> Generator:
        """The answer generator (default: extractive, over this pipeline's encoder)."""
        if self._generator is None:
            from .generators import ExtractiveGenerator

            self._generator = ExtractiveGenerator(self.encoder)
        return self._generator

    @generator.setter
    def generator(self, generator: Generator) -> None:
        self._generator = generator

    # ---- ingest -----------------------------------------------------------------------
    def chunk(self, doc: Document) -> ChunkedDocument:
        return chunk_document(doc, self.encoder.tokenize, self.chunk_tokens)

    def ingest(
        self,
        items: Iterable[Any],
        *,
        batch_documents: int = 64,
        progress: bool | None = None,
        total: int | None = None,
    ) -> IngestReport:
        """Write documents into the store, idempotently and resumably.

        ``items`` may mix :class:`Document` s with :class:`ItemError` s from loaders;
        failures are reported, never raised, so one bad file does not stop a batch.
        Documents whose chunks are all stored already are skipped, so re-running an
        interrupted or repeated ingest only does the missing work. A changed document
        replaces its old chunks.
        """
        report = IngestReport()
        t0 = time.perf_counter()
        if os.environ.get("HETERAG_NO_PROGRESS"):
            progress = False
        bar = tqdm(total=total, unit="doc", desc="ingest", disable=progress is False or (progress is None and (total or 0) < 50))
        try:
            for batch in _batched(items, batch_documents):
                docs = self._collect(batch, report)
                self._write_batch(docs, report)
                bar.update(len(batch))
        finally:
            bar.close()
            if hasattr(self.store, "flush"):
                self.store.flush()
        report.seconds = time.perf_counter() - t0
        log.info("ingest: %s", report.summary())
        return report

    def _collect(self, batch: Sequence[Any], report: IngestReport) -> list[ChunkedDocument]:
        chunked: dict[str, ChunkedDocument] = {}
        for item in batch:
            if isinstance(item, Document):
                report.documents_seen += 1
                try:
                    chunked[item.id] = self.chunk(item)  # a later duplicate id wins
                except HeteragError as exc:
                    report.failures.append(ItemError(item.id, str(exc)))
            elif isinstance(item, ItemError):
                report.failures.append(item)
            else:
                raise InvalidInputError(f"ingest expects Documents, got {type(item).__name__}")
        return list(chunked.values())

    def _write_batch(self, docs: list[ChunkedDocument], report: IngestReport) -> None:
        if not docs:
            return
        wanted = [c.id for cd in docs for c in cd.chunks]
        present = {r.id for r in self.store.get(ids=wanted)}
        todo = [cd for cd in docs if any(c.id not in present for c in cd.chunks)]
        report.documents_unchanged += len(docs) - len(todo)
        if not todo:
            return
        t = time.perf_counter()
        view_texts, vectors = self.view.embed(todo, self.encoder)
        report.encode_seconds += time.perf_counter() - t
        records = []
        row = 0
        for cd in todo:
            for c in cd.chunks:
                meta = dict(c.metadata)
                meta.update(
                    doc_id=c.doc_id, chunk_index=c.index, section_index=c.section_index,
                    title=c.title, heading=" > ".join(c.heading), view=view_texts[row],
                )
                records.append(Record(id=c.id, vector=vectors[row], text=c.text, metadata=meta))
                row += 1
        self.store.upsert(records)
        # drop chunks of earlier versions of these documents (after the new ones are safely in)
        new_ids = {r.id for r in records}
        doc_ids = [cd.doc.id for cd in todo]
        stale = [r.id for r in self.store.get(where={"doc_id": {"$in": doc_ids}}) if r.id not in new_ids]
        if stale:
            report.stale_chunks_removed += self.store.delete(ids=stale)
        report.documents_written += len(todo)
        report.chunks_written += len(records)

    # ---- retrieval ----------------------------------------------------------------------
    def retrieve(self, query: str, k: int = 5, where: Mapping[str, Any] | None = None) -> list[Hit]:
        """Top-``k`` generation chunks for ``query``, best first, with the view that matched."""
        if not isinstance(k, int) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        qvec = self.encoder.encode_query(query)
        return [hit_from_record(sr.record, sr.score) for sr in self.store.query(qvec, k=k, where=where)]

    def answer(
        self,
        question: str,
        k: int = 5,
        where: Mapping[str, Any] | None = None,
        *,
        on_token: StreamCallback | None = None,
    ) -> Answer:
        """Retrieve ``k`` chunks and generate a cited answer from them."""
        hits = self.retrieve(question, k=k, where=where)
        return self.generator.generate(question, hits, on_token=on_token)

    def count(self) -> int:
        return self.store.count()

    def close(self) -> None:
        self.store.close()


def hit_from_record(record: Record, score: float) -> Hit:
    meta = dict(record.metadata)
    heading = str(meta.pop("heading", ""))
    return Hit(
        chunk_id=record.id,
        doc_id=str(meta.pop("doc_id", "")),
        text=record.text,
        view=str(meta.pop("view", "")),
        score=float(score),
        title=str(meta.pop("title", "")),
        heading=tuple(h for h in heading.split(" > ") if h),
        index=int(meta.pop("chunk_index", 0)),
        metadata={k: v for k, v in meta.items() if k != "section_index"},
    )


def _batched(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch
