"""Re-embedding a collection with another text-encoder adapter (``heterag reembed``), crash-safe.

The new vectors are built *alongside* the serving ones, in a fresh store folder
(``store-<adapter hash>-<time>/``) under the collection folder, from the stored chunks alone
(no source files needed): each document's chunks are reassembled (:func:`chunked_from_records`)
and embedded through the collection's view with the new adapter; image records are copied as they
are; the new store gets its own keyword index (:mod:`heterag.stores.keyword`), written in step and checked
to hold exactly the new records' ids. Only when the new store is complete is ``collection.json`` replaced (one atomic rename) to point
at it and name the new adapter. A kill at any moment before the rename leaves the old embeddings
serving (and a leftover folder that the next run removes); after it, the new ones. The replaced
store folder is kept until the next re-embed starts (which removes every store folder but the
serving one): a reader that opened the collection before the switch (an app, a concurrent
``heterag ask``) goes on reading the complete old vectors with the adapter they were made with,
instead of a folder deleted under it. The collection's write lock is held throughout.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from heterag.core.documents import Chunk, Document, Section
from heterag.core.errors import InvalidInputError
from heterag.encoding.text_encoder import TokenSpan
from heterag.ingest.chunking import ChunkedDocument, ChunkedSection
from heterag.stores.base import Fingerprint, Record

log = logging.getLogger(__name__)


def chunked_from_records(records: Sequence[Record], tokenize: Any) -> list[ChunkedDocument]:
    """Reassemble chunked documents from stored chunk records (``doc_id``, ``chunk_index``,
    ``section_index``, ``title``, ``heading`` metadata), documents in first-seen order, chunks in
    index order. Each section's tokens are its chunks' tokens concatenated (a chunk boundary
    inside a word may tokenise slightly differently from the original); chunk ids are kept.
    """
    by_doc: dict[str, list[Record]] = {}
    for r in records:
        by_doc.setdefault(str(r.metadata.get("doc_id", "")), []).append(r)
    out = []
    for doc_id, recs in by_doc.items():
        recs = sorted(recs, key=lambda r: int(r.metadata.get("chunk_index", 0)))
        title = str(recs[0].metadata.get("title", ""))
        sections: list[Section] = []
        csections: list[ChunkedSection] = []
        chunks: list[Chunk] = []
        current: int | None = None
        texts: list[str] = []
        ids: list[int] = []
        offs: list[tuple[int, int]] = []
        bounds: list[tuple[int, int]] = []
        heading_of: dict[int, tuple[str, ...]] = {}
        for r in recs:
            s_idx = int(r.metadata.get("section_index", 0))
            heading = tuple(h for h in str(r.metadata.get("heading", "")).split(" > ") if h)
            if s_idx != current:
                _close_section(current, texts, ids, offs, bounds, heading_of, sections, csections)
                current, texts, ids, offs, bounds = s_idx, [], [], [], []
                heading_of[s_idx] = heading
            start_char = sum(len(t) + 1 for t in texts)
            span = tokenize(r.text)
            t0 = len(ids)
            ids.extend(span.ids)
            offs.extend((a + start_char, b + start_char) for a, b in span.offsets)
            bounds.append((t0, len(ids)))
            texts.append(r.text)
            meta = {k: v for k, v in r.metadata.items() if k not in (
                "doc_id", "chunk_index", "section_index", "title", "heading", "view")}
            chunks.append(Chunk(id=r.id, doc_id=doc_id, index=int(r.metadata.get("chunk_index", 0)), text=r.text, title=title,
                                heading=heading, section_index=len(sections), start=start_char,
                                end=start_char + len(r.text), token_start=t0, token_end=len(ids), metadata=meta))
        _close_section(current, texts, ids, offs, bounds, heading_of, sections, csections)
        doc = Document(id=doc_id, title=title, sections=tuple(sections))
        out.append(ChunkedDocument(doc=doc, chunks=chunks, sections=csections))
    return out


def _close_section(current: int | None, texts: list[str], ids: list[int], offs: list[tuple[int, int]],
                   bounds: list[tuple[int, int]], heading_of: dict[int, tuple[str, ...]], sections: list[Section],
                   csections: list[ChunkedSection]) -> None:
    if current is None:
        return
    sections.append(Section(" ".join(texts), heading_of[current]))
    csections.append(ChunkedSection(TokenSpan(list(ids), list(offs)), list(bounds)))


@dataclass(frozen=True)
class ReembedReport:
    collection: str
    old_adapter: str
    new_adapter: str
    chunks: int
    images: int
    seconds: float

    def summary(self) -> str:
        return (f"{self.collection}: re-embedded {self.chunks} chunks (adapter {self.old_adapter} -> {self.new_adapter}), "
                f"{self.images} image records kept, in {self.seconds:.1f}s")


def reembed_collection(name: str, adapter: str | os.PathLike[str] | None, *, home: Path | None = None,
                       batch_documents: int = 64, progress: bool | None = None, _fail_after: int | None = None) -> ReembedReport:
    """Re-embed collection ``name`` with ``adapter`` (a path; None or "none" removes the adapter).

    Raises :class:`~heterag.core.errors.CollectionNotFoundError`, :class:`InvalidInputError` for a bad
    adapter (nothing is changed then). ``_fail_after`` (tests) raises after that many batches,
    as a crash would.
    """
    from tqdm.auto import tqdm

    from heterag.collections.collection import _write_info, collection_info, load_text_encoder
    from heterag.collections.keywords import keyword_differences
    from heterag.core.locking import WriteLock
    from heterag.encoding.adapters import AdaptedEncoder, load_adapter
    from heterag.ingest.views import make_view
    from heterag.pipeline.pipeline import Pipeline
    from heterag.stores import open_store

    t0 = time.perf_counter()
    info = collection_info(name, home)
    new = None if adapter is None or str(adapter).lower() == "none" else load_adapter(adapter)
    base = load_text_encoder(info.encoder)
    encoder = AdaptedEncoder(base, new) if new is not None else base  # checks the adapter fits the base model
    lock = WriteLock(info.path, name)
    with lock():
        info = collection_info(name, home)  # as of now, under the lock
        for leftover in [*info.path.glob("store-*"), info.path / "store"]:  # crashed builds, replaced stores
            if leftover.name != info.store_dir and leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
                _forget_store_clients(leftover)
        old_vs = open_store(info.store, info.store_path, collection="heterag", keywords=False)  # read only
        old_images = open_store(info.store, info.store_path, collection="heterag_images", keywords=False)
        try:
            fp = old_vs.fingerprint()
            records = old_vs.get(include_vectors=False)
            image_records = old_images.get(include_vectors=True) if old_images.count() else []
            image_fp = old_images.fingerprint()
        finally:
            old_vs.close()
            old_images.close()
        old_hash = fp.adapter if fp is not None else "none"
        new_hash = new.hash if new is not None else "none"
        view = make_view(fp.view if fp else "heterag", **(dict(fp.extra.get("view_settings", {})) if fp else {}))
        chunk_tokens = int(fp.extra.get("chunk_tokens", 64)) if fp else 64
        stamp = time.strftime("%Y%m%d%H%M%S")
        new_dir = f"store-{new_hash[:8]}-{stamp}-{os.getpid()}"
        target = info.path / new_dir
        new_vs = open_store(info.store, target, collection="heterag", keywords=True)  # its keyword index written in step
        new_images = open_store(info.store, target, collection="heterag_images", keywords=False)
        try:
            pipe = Pipeline(new_vs, encoder, view, chunk_tokens=chunk_tokens, name=name)  # sets the new fingerprint
            docs = chunked_from_records(records, base.tokenize)
            by_id = {r.id: r for r in records}
            bar = tqdm(total=len(docs), desc="reembed", unit="doc", leave=False,
                       disable=progress is False or (progress is None and len(docs) < 50) or bool(os.environ.get("HETERAG_NO_PROGRESS")))
            written = 0
            for b, start in enumerate(range(0, len(docs), batch_documents)):
                if _fail_after is not None and b >= _fail_after:
                    raise RuntimeError("simulated crash during reembed")
                part = docs[start : start + batch_documents]
                texts, vectors = view.embed(part, encoder)
                out, row = [], 0
                for cd in part:
                    for c in cd.chunks:
                        old = by_id[c.id]
                        meta = dict(old.metadata)
                        if texts[row]:
                            meta["view"] = texts[row]
                        out.append(Record(id=c.id, vector=vectors[row], text=old.text, metadata=meta))
                        row += 1
                new_vs.upsert(out)
                written += len(out)
                bar.update(len(part))
            bar.close()
            if image_records:
                if image_fp is not None:
                    new_images.set_fingerprint(image_fp)
                new_images.upsert(image_records)
            for s in (new_vs, new_images):
                if hasattr(s, "flush"):
                    s.flush()
            diff = keyword_differences(new_vs)  # the new keyword index holds exactly the new records' ids
            if diff is not None and (diff[0] or diff[1]):
                raise InvalidInputError(f"the re-embedded store's keyword index differs from its records ({len(diff[0])} "
                                        f"missing, {len(diff[1])} extra); the collection is unchanged, run the reembed again")
            del pipe
        except BaseException:
            new_vs.close()
            new_images.close()
            shutil.rmtree(target, ignore_errors=True)
            raise
        new_vs.close()
        new_images.close()
        if written != len(records):
            shutil.rmtree(target, ignore_errors=True)
            raise InvalidInputError(f"re-embedding wrote {written} of {len(records)} chunks; the collection is unchanged")
        adapter_rel = None
        if new is not None:
            new.save(info.path / "adapters" / new.hash)
            adapter_rel = f"adapters/{new.hash}"
        _write_info(replace(info, adapter=adapter_rel, store_dir=new_dir))  # the switch: one atomic rename
        # the old folder stays for readers that opened it before the switch; the next run removes it
    report = ReembedReport(name, old_hash, new_hash, len(records), len(image_records), time.perf_counter() - t0)
    log.info("%s", report.summary())
    return report


def _forget_store_clients(path: Path) -> None:
    """Drop any cached store client for a removed folder (best effort)."""
    try:
        from heterag.stores import chroma

        forget = getattr(chroma, "forget_client", None)
        if forget is not None:
            forget(path)
    except Exception:  # noqa: BLE001 - informational cleanup only
        pass


__all__ = ["ReembedReport", "chunked_from_records", "reembed_collection", "Fingerprint"]
