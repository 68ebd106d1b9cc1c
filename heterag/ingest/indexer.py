"""Writing documents into an index: chunk, guard, embed, store; idempotent and resumable.

Write order for an item: image file, text chunks, image record. An item counts as stored
only when all of its records are, so an interrupted ingest is completed by re-running it.
Record ids are content hashes, so writing the same knowledge twice changes nothing; a changed
document replaces its old chunks; a byte-identical copy of a stored file is not added again.
Every document passes the ingest guards (:mod:`heterag.ingest.guards`) before it is written.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from heterag.core.documents import Document, ItemError, content_hash, file_sha256
from heterag.core.errors import HeteragError, InvalidInputError
from heterag.core.images import ImageFiles
from heterag.ingest.chunking import ChunkedDocument, chunk_document
from heterag.ingest.guards import IngestGuard, IngestItem, Verdict
from heterag.ingest.views import HeteragView, RetrievalView, ViewEncoder, distinct_chunks
from heterag.stores.base import Record, VectorStore
from heterag.stores.keyword import KEYWORD_CONTEXT_KEY

#: Metadata keys written on image records and on the chunks of image items.
IMAGE_KEYS = ("image_sha256", "image_path", "image_width", "image_height")

log = logging.getLogger(__name__)

#: The keyword text of a chunk whose view renders no context (naive, late): the chunk with one neighbour on each
#: side, its heading path and title, stored under ``metadata[KEYWORD_CONTEXT_KEY]``.
KEYWORD_CONTEXT = HeteragView(neighbours=1)


@dataclass
class IngestReport:
    documents_seen: int = 0
    documents_written: int = 0
    images_written: int = 0
    documents_unchanged: int = 0
    chunks_written: int = 0
    stale_chunks_removed: int = 0
    failures: list[ItemError] = field(default_factory=list)
    #: Documents an ingest guard refused, with the guard's name and reason.
    rejected: list[ItemError] = field(default_factory=list)
    #: Documents whose image a guard replaced (purified) before it was stored.
    images_replaced: int = 0
    #: Files left out because a stored document (or an earlier file of this run) has the same bytes
    #: (``metadata["file_sha256"]``): not failures; ``source`` is the file, the message names the twin.
    duplicates: list[ItemError] = field(default_factory=list)
    #: Stored documents whose file is gone, replaced by a byte-identical file found elsewhere (a moved file).
    moved: list[ItemError] = field(default_factory=list)
    seconds: float = 0.0
    encode_seconds: float = 0.0

    def summary(self) -> str:
        def n(count: int, noun: str) -> str:
            return f"{count} {noun}{'' if count == 1 else 's'}"

        images = f", {n(self.images_written, 'image')}" if self.images_written else ""
        rejected = f", {len(self.rejected)} rejected by guards" if self.rejected else ""
        same = f", {n(len(self.duplicates), 'duplicate file')} not added" if self.duplicates else ""
        return (
            f"{n(self.documents_written, 'document')} written ({n(self.chunks_written, 'chunk')}{images}), "
            f"{self.documents_unchanged} unchanged, {len(self.failures)} failed{rejected}{same}, in {self.seconds:.1f}s"
        )


class Indexer:
    """The ingest side of a pipeline (a mixin of :class:`heterag.Pipeline`).

    Uses the pipeline's stores (``store``, ``image_store``, ``image_files``), its text ``encoder``,
    ``view`` and ``chunk_tokens``, its ``image_encoder`` (loaded and checked on first use), its
    ingest ``guards``, ``_writing()`` (its write lock) and ``_delete_documents`` (from
    :class:`~heterag.ingest.documents.DocumentManager`, to drop replaced parts); guards receive the pipeline itself.
    """

    store: VectorStore
    image_store: VectorStore | None
    image_files: ImageFiles | None
    encoder: ViewEncoder
    view: RetrievalView
    chunk_tokens: int
    guards: list[IngestGuard]
    image_encoder: Any
    _writing: Callable[[], AbstractContextManager[Any]]
    _delete_documents: Callable[[list[str]], int]

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
        seen: dict[str, set[str]] = {}  # source file -> ids of its documents in this run
        changed: set[str] = set()  # source files whose documents were (re)written
        twins = _Twins()  # which files are byte-identical copies of others (decided once per file)
        try:
            for batch in _batched(items, batch_documents):
                batch = self._skip_duplicates(self._same_files(batch), twins, report)
                for item in batch:
                    if isinstance(item, Document) and item.metadata.get("source_path"):
                        seen.setdefault(str(item.metadata["source_path"]), set()).add(item.id)
                docs = self._collect(batch, report)
                with self._writing():
                    written = self._write_batch(docs, report)
                changed |= {str(cd.doc.metadata["source_path"]) for cd in written if cd.doc.metadata.get("source_path")}
                bar.update(len(batch))
            if changed:
                self._drop_old_parts({p: seen[p] for p in changed if p in seen}, report)
            if twins.moved:
                self._drop_moved(twins.moved, report)
        finally:
            bar.close()
            if hasattr(self.store, "flush"):
                self.store.flush()
        report.seconds = time.perf_counter() - t0
        log.info("ingest: %s", report.summary())
        return report

    def _stored_files(self, paths: Sequence[str]) -> dict[str, dict[str, Record]]:
        """Stored documents of the files ``paths`` (``metadata["source_path"]``): file -> doc id -> one record."""
        out: dict[str, dict[str, Record]] = {}
        for start in range(0, len(paths), 256):
            group = list(paths[start : start + 256])
            for store in (self.store, self.image_store):
                if store is None or not store.count():
                    continue
                for r in store.get(where={"source_path": {"$in": group}}):
                    out.setdefault(str(r.metadata["source_path"]), {}).setdefault(str(r.metadata.get("doc_id", "")), r)
        return out

    def _same_files(self, batch: list[Any]) -> list[Any]:
        """Give documents of files already stored under another id (the same file reached through another
        ingest root: a parent, a subfolder, a symlink, an absolute path) the stored id and source, so a file
        is one document whatever the root. A part of a file (``<source>#figure-1``) keeps its suffix. A new
        file whose relative id another, still existing file holds already is stored under its absolute path
        (so ``a/notes.md`` and ``b/notes.md`` ingested from ``a`` and ``b`` are two documents)."""
        paths = sorted({str(d.metadata["source_path"]) for d in batch if isinstance(d, Document) and d.metadata.get("source_path")})
        if not paths:
            return batch
        known: dict[tuple[str, str], tuple[str, str]] = {}
        for path, docs in self._stored_files(paths).items():
            for doc_id, r in docs.items():
                source = str(r.metadata.get("source", ""))
                part = doc_id[len(source):] if source and doc_id.startswith(source) else None
                if part is not None:
                    known[(path, part)] = (doc_id, source)
        out = []
        fresh: list[int] = []  # positions of file documents not stored yet under their own file
        for item in batch:
            if isinstance(item, Document) and item.metadata.get("source_path"):
                source = str(item.metadata.get("source", ""))
                if source and item.id.startswith(source):
                    hit = known.get((str(item.metadata["source_path"]), item.id[len(source):]))
                    if hit is not None and hit[0] != item.id:
                        item = dataclasses.replace(item, id=hit[0], metadata={**item.metadata, "source": hit[1]})
                    elif hit is None:
                        fresh.append(len(out))
            out.append(item)
        if fresh:  # another file that still exists holds the same id (notes/x.md and other/x.md): keep both
            taken: dict[str, str] = {}
            ids = sorted({out[i].id for i in fresh})
            for store in (self.store, self.image_store):
                if store is not None and store.count():
                    for r in store.get(where={"doc_id": {"$in": ids}}):
                        taken.setdefault(str(r.metadata.get("doc_id", "")), str(r.metadata.get("source_path", "")))
            for i in fresh:
                item = out[i]
                other = taken.get(item.id, "")
                if other and other != item.metadata["source_path"] and os.path.exists(other):
                    source, path = str(item.metadata["source"]), str(item.metadata["source_path"])
                    out[i] = dataclasses.replace(item, id=path + item.id[len(source):], metadata={**item.metadata, "source": path})
        return out

    def _skip_duplicates(self, batch: list[Any], twins: _Twins, report: IngestReport) -> list[Any]:
        """Leave out the documents of files whose bytes (``metadata["file_sha256"]``) equal those of a file
        already stored from another path, or of an earlier file of this run (one note each in
        ``report.duplicates``; not failures). Rules:

        - a file stored already under its own path with these bytes is never a duplicate (re-ingest is a no-op);
        - a twin counts only while its file still exists with the same bytes: a stored twin whose file is
          gone is a moved file, and the new copy is stored in its place (the twin's documents are removed
          at the end of the ingest, ``report.moved``); one whose file has changed since does not block;
        - a stored file whose new bytes equal another stored file's loses its previous version, since its
          content is in the collection already.
        """
        files: dict[str, tuple[str, str]] = {}  # source_path -> (file hash, source as stored)
        for item in batch:
            if isinstance(item, Document) and item.metadata.get("source_path") and item.metadata.get("file_sha256"):
                files.setdefault(str(item.metadata["source_path"]),
                                 (str(item.metadata["file_sha256"]), str(item.metadata.get("source") or item.id)))
        new = {p: v for p, v in files.items() if p not in twins.verdicts}
        if new:
            stored = self._stored_hashes(sorted({sha for sha, _ in new.values()}))
            outdated: list[str] = []  # stored files that became copies of another stored file
            for path, (sha, source) in sorted(new.items()):
                holders = stored.get(sha, {})
                if path in holders:  # this very file, stored with these bytes
                    twins.verdicts[path] = False
                    twins.first.setdefault(sha, (path, holders[path]))
                    continue
                # a stored twin is named by its file, relative to this file's ingest root when under it, else
                # absolute: its stored id may be relative to another root
                twin = next((_file_name(p, src, path, source) for p, src in sorted(holders.items())
                             if twins.same_bytes(p, sha)), None)
                if twin is None and sha in twins.first:
                    twin = twins.first[sha][1]
                twins.verdicts[path] = twin is not None
                if twin is not None:
                    report.duplicates.append(ItemError(source, f"same content as {twin}: not added again"))
                    outdated.append(path)
                    continue
                twins.first[sha] = (path, source)
                for p, src in sorted(holders.items()):
                    if not os.path.exists(p):
                        twins.moved[p] = path
                        report.moved.append(ItemError(source, f"same content as {_file_name(p, src, path, source)}, whose file is "
                                                              "gone: stored in its place"))
            old = [d for docs in self._stored_files(outdated).values() for d in docs] if outdated else []
            if old:
                with self._writing():
                    report.stale_chunks_removed += self._delete_documents(old)
        return [item for item in batch if not (isinstance(item, Document)
                                                and twins.verdicts.get(str(item.metadata.get("source_path") or "")))]

    def _stored_hashes(self, shas: Sequence[str]) -> dict[str, dict[str, str]]:
        """Stored files with these byte hashes: hash -> {source_path: source as stored}."""
        out: dict[str, dict[str, str]] = {}
        for store in (self.store, self.image_store):
            if store is None or not shas or not store.count():
                continue
            for r in store.get(where={"file_sha256": {"$in": list(shas)}}):
                path = str(r.metadata.get("source_path") or "")
                if path:
                    out.setdefault(str(r.metadata["file_sha256"]), {}).setdefault(
                        path, str(r.metadata.get("source") or r.metadata.get("doc_id", "")))
        return out

    def _drop_moved(self, moved: Mapping[str, str], report: IngestReport) -> None:
        """Remove what is left of stored files that are gone and whose byte-identical copy is now stored
        (documents rewritten under the same id already carry the copy's path)."""
        placed = self._stored_files(sorted(set(moved.values())))
        gone = [doc_id for path, docs in self._stored_files(sorted(moved)).items() if moved[path] in placed
                for doc_id in docs]
        if gone:
            with self._writing():
                report.stale_chunks_removed += self._delete_documents(gone)

    def _drop_old_parts(self, files: Mapping[str, set[str]], report: IngestReport) -> None:
        """Remove stored documents of re-read files that this version of the file no longer has
        (a figure taken out of a PDF)."""
        stored = self._stored_files(sorted(files))
        gone = [doc_id for path, docs in stored.items() for doc_id in docs if doc_id not in files.get(path, set())]
        if gone:
            with self._writing():
                report.stale_chunks_removed += self._delete_documents(gone)

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

    def _write_batch(self, docs: list[ChunkedDocument], report: IngestReport) -> list[ChunkedDocument]:
        """Write the documents that changed; returns them."""
        if not docs:
            return []
        if any(cd.doc.image is not None for cd in docs) and (self.image_store is None or self.image_files is None):
            for cd in [cd for cd in docs if cd.doc.image is not None]:
                report.failures.append(ItemError(cd.doc.image.source or cd.doc.id, "this pipeline stores no images "
                                                 "(open it with an image store and image folder)"))
            docs = [cd for cd in docs if cd.doc.image is None]
            if not docs:
                return []
        keep = {id(cd): distinct_chunks(self.view, cd) for cd in docs}  # one record per distinct chunk/view pair
        wanted = [cd.chunks[i].id for cd in docs for i in keep[id(cd)]]
        present = {r.id for r in self.store.get(ids=wanted)} if wanted else set()
        image_ids = [image_record_id(cd.doc) for cd in docs if cd.doc.image is not None]
        if image_ids:
            present |= {r.id for r in self.image_store.get(ids=image_ids)}
        todo = [cd for cd in docs if any(i not in present for i in _record_ids(cd, keep[id(cd)]))]
        report.documents_unchanged += len(docs) - len(todo)
        changed = {id(cd) for cd in todo}
        repeats = [cd.doc.id for cd in docs if len(keep[id(cd)]) < len(cd.chunks) and id(cd) not in changed]
        if repeats:  # stored before repeats were dropped (one record per repeated chunk): drop the extra ones
            kept_ids = set(wanted)
            extra = [r.id for r in self.store.get(where={"doc_id": {"$in": repeats}}) if r.id not in kept_ids]
            if extra:
                report.stale_chunks_removed += self.store.delete(ids=extra)
        if not todo:
            return []
        image_vectors: dict[str, np.ndarray] = {}
        if any(cd.doc.image is not None for cd in todo):
            t = time.perf_counter()
            image_vectors = self._encode_images([cd for cd in todo if cd.doc.image is not None], report)
            report.encode_seconds += time.perf_counter() - t
            todo = [cd for cd in todo if cd.doc.image is None or cd.doc.id in image_vectors]
        text_docs = [cd for cd in todo if cd.chunks]
        t = time.perf_counter()
        view_texts, vectors = self.view.embed(text_docs, self.encoder) if text_docs else ([], None)
        report.encode_seconds += time.perf_counter() - t
        if any(len(keep[id(cd)]) < len(cd.chunks) for cd in todo):  # drop the repeats after embedding in context
            rows, start = [], 0
            for cd in text_docs:
                rows += [start + i for i in keep[id(cd)]]
                start += len(cd.chunks)
            view_texts, vectors = [view_texts[r] for r in rows], (vectors[rows] if vectors is not None else None)
            todo = [dataclasses.replace(cd, chunks=[cd.chunks[i] for i in keep[id(cd)]]) for cd in todo]
            text_docs = [cd for cd in todo if cd.chunks]
        if self.guards and todo:
            todo, view_texts, vectors = self._guard(todo, text_docs, view_texts, vectors, image_vectors, report)
            if not todo:
                return []
        records, image_records = [], []
        # views that render no context text of their own (naive: the chunk; late: vectors made in context) are
        # found by keywords through the heterag context text (see heterag.stores.keyword.keyword_text)
        context = ({c.id: t for cd in docs for c, t in zip(cd.chunks, KEYWORD_CONTEXT.texts(cd), strict=True)}
                   if self.view.kind != "heterag" else {})
        row = 0
        for cd in todo:
            image_meta: dict[str, Any] = {}
            if cd.doc.image is not None:
                ref = cd.doc.image
                path = self.image_files.put(ref)
                image_meta = {"image_sha256": ref.sha256, "image_path": path.relative_to(self.image_files.root).as_posix(),
                              "image_width": ref.width, "image_height": ref.height}
                meta = {**cd.doc.metadata, "doc_id": cd.doc.id, "title": cd.doc.title, "n_chunks": len(cd.chunks),
                        **image_meta}
                image_records.append(Record(id=image_record_id(cd.doc), vector=image_vectors[cd.doc.id],
                                            text=cd.chunks[0].text if cd.chunks else "", metadata=meta))
            for c in cd.chunks:
                meta = dict(c.metadata)
                meta.update(
                    doc_id=c.doc_id, chunk_index=c.index, section_index=c.section_index,
                    title=c.title, heading=" > ".join(c.heading), view=view_texts[row], **image_meta,
                )
                if c.id in context:
                    meta[KEYWORD_CONTEXT_KEY] = context[c.id]
                records.append(Record(id=c.id, vector=vectors[row], text=c.text, metadata=meta))
                row += 1
        if records:
            self.store.upsert(records)
        if image_records:
            self.image_store.upsert(image_records)
        # drop records of earlier versions of these documents (after the new ones are safely in)
        new_ids = {r.id for r in records} | {r.id for r in image_records}
        doc_ids = [cd.doc.id for cd in todo]
        stale = [r.id for r in self.store.get(where={"doc_id": {"$in": doc_ids}}) if r.id not in new_ids]
        if stale:
            report.stale_chunks_removed += self.store.delete(ids=stale)
        if self.image_store is not None and self.image_store.count():
            old = [r for r in self.image_store.get(where={"doc_id": {"$in": doc_ids}}) if r.id not in new_ids]
            if old:
                self.image_store.delete(ids=[r.id for r in old])
                self._remove_orphan_files({str(r.metadata.get("image_sha256", "")) for r in old})
        report.documents_written += len(todo)
        report.chunks_written += len(records)
        report.images_written += len(image_records)
        return todo

    def _guard(self, todo: list[ChunkedDocument], text_docs: list[ChunkedDocument], view_texts: list[str],
               vectors: np.ndarray | None, image_vectors: dict[str, np.ndarray], report: IngestReport
               ) -> tuple[list[ChunkedDocument], list[str], np.ndarray | None]:
        """Run the ingest guards on each document; drop rejected ones, re-embed replaced images."""
        dim = int(self.encoder.dim)
        rows: dict[str, tuple[int, int]] = {}
        row = 0
        for cd in text_docs:
            rows[cd.doc.id] = (row, row + len(cd.chunks))
            row += len(cd.chunks)
        kept: list[ChunkedDocument] = []
        replaced: list[ChunkedDocument] = []
        for cd in todo:
            a, b = rows.get(cd.doc.id, (0, 0))
            tv = vectors[a:b] if vectors is not None and b > a else np.zeros((0, dim), dtype=np.float32)
            item = IngestItem(cd.doc, tuple(cd.chunks), tv, image_vectors.get(cd.doc.id))
            verdict: Verdict = Verdict.ok()
            for guard in self.guards:
                verdict = guard.check(item, self)
                if not verdict.accept:
                    report.rejected.append(ItemError(cd.doc.image.source if cd.doc.image is not None and cd.doc.image.source
                                                     else cd.doc.id, f"rejected by guard {guard.name}: {verdict.reason}"))
                    break
                if verdict.image is not None:
                    if cd.doc.image is None:
                        raise InvalidInputError(f"guard {guard.name} returned an image for text-only document {cd.doc.id}")
                    log.debug("guard %s replaced the image of %s: %s", guard.name, cd.doc.id, verdict.reason)
                    cd = dataclasses.replace(cd, doc=dataclasses.replace(cd.doc, image=verdict.image))
                    item = dataclasses.replace(item, document=cd.doc)
                    replaced.append(cd)
            if verdict.accept:
                kept.append(cd)
        if replaced:
            ids = {cd.doc.id for cd in replaced}
            fresh = self._encode_images([cd for cd in kept if cd.doc.id in ids], report)
            image_vectors.update(fresh)
            report.images_replaced += len(fresh)
            kept = [cd for cd in kept if cd.doc.image is None or cd.doc.id in image_vectors]
        keep_ids = {cd.doc.id for cd in kept}
        if vectors is not None:
            sel = [i for cd in text_docs if cd.doc.id in keep_ids for i in range(*rows[cd.doc.id])]
            view_texts, vectors = [view_texts[i] for i in sel], vectors[sel]
        return kept, view_texts, vectors

    def _encode_images(self, docs: list[ChunkedDocument], report: IngestReport) -> dict[str, np.ndarray]:
        """Image vectors by document id; an image the encoder cannot take becomes a failure, not an abort."""
        encoder = self.image_encoder
        try:
            vecs = encoder.encode_images([cd.doc.image for cd in docs])
            return {cd.doc.id: vecs[i] for i, cd in enumerate(docs)}
        except HeteragError:
            pass
        out = {}
        for cd in docs:  # find the culprit(s)
            try:
                out[cd.doc.id] = encoder.encode_images([cd.doc.image])[0]
            except HeteragError as exc:
                report.failures.append(ItemError(cd.doc.image.source or cd.doc.id, str(exc)))
        return out

    def _remove_orphan_files(self, shas: set[str]) -> None:
        if self.image_files is None:
            return
        for sha in filter(None, shas):
            if not self.image_store.get(where={"image_sha256": sha}):
                self.image_files.remove(sha)


@dataclass
class _Twins:
    """What one ingest has decided about byte-identical files (see :meth:`Indexer._skip_duplicates`)."""

    verdicts: dict[str, bool] = field(default_factory=dict)  # source_path -> left out as a copy
    first: dict[str, tuple[str, str]] = field(default_factory=dict)  # file hash -> (source_path, source) kept
    moved: dict[str, str] = field(default_factory=dict)  # gone twin's source_path -> the copy's source_path
    _hashes: dict[str, str | None] = field(default_factory=dict)

    def same_bytes(self, path: str, sha: str) -> bool:
        """Whether the file at ``path`` exists now with the hash ``sha`` (read once per ingest)."""
        if path not in self._hashes:
            try:
                self._hashes[path] = file_sha256(path) if os.path.isfile(path) else None
            except OSError:
                self._hashes[path] = None
        return self._hashes[path] == sha


def _file_name(path: str, source: str, here_path: str, here_source: str) -> str:
    """The stored file at ``path`` (stored as ``source``) named so that a user ingesting the file ``here_path``
    (``here_source`` relative to its ingest root) can find it: relative to that root when under it, else absolute."""
    if not path:
        return source
    root = here_path[: -len(here_source)] if here_source and here_path.endswith("/" + here_source) else ""
    return path[len(root):] if root and path.startswith(root) else path


def image_record_id(doc: Document) -> str:
    """Id of a document's image record (changes when its image does)."""
    assert doc.image is not None
    return content_hash("image", doc.id, doc.image.sha256)


def _record_ids(cd: ChunkedDocument, keep: Sequence[int] | None = None) -> list[str]:
    ids = [cd.chunks[i].id for i in keep] if keep is not None else [c.id for c in cd.chunks]
    if cd.doc.image is not None:
        ids.append(image_record_id(cd.doc))
    return ids


def _batched(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch
