"""The HeteRAG pipeline: ingest -> retrieve -> answer over a text store and an image store.

Data flows one way: documents are cut into short generation chunks, each chunk is
embedded through its retrieval view, the vectors go to the store together with
the chunk text; a query retrieves views and hands their chunks to the generator.

Image items (documents with an image) additionally get one record in the *image store*
(the image encoder's embedding, keyed by document) and their image file is kept,
content-addressed, under the pipeline's :class:`~heterag.core.images.ImageFiles` folder. Their
text chunks go through the same views as any text. Queries carry text, an image or both;
:mod:`heterag.retrieval.fusion` documents how the similarities combine.

A :class:`Pipeline` is one index with three sides, each in its own module: writing
(:class:`~heterag.ingest.indexer.Indexer`), document management
(:class:`~heterag.ingest.documents.DocumentManager`) and search
(:class:`~heterag.retrieval.retriever.Retriever`); this module holds what ties them together: the
index's fingerprint, the encoders, the defenses switched on, and answering with the generator.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from heterag.core.errors import InvalidInputError
from heterag.core.images import ImageFiles, load_image
from heterag.core.locking import WriteLock
from heterag.core.results import Answer
from heterag.generators.base import Generator, StreamCallback
from heterag.ingest.chunking import DEFAULT_CHUNK_TOKENS, check_chunk_tokens
from heterag.ingest.documents import DocumentInfo, DocumentManager
from heterag.ingest.guards import IngestGuard, check_guard
from heterag.ingest.indexer import Indexer, IngestReport
from heterag.ingest.views import RetrievalView, ViewEncoder
from heterag.retrieval.fusion import Fusion
from heterag.retrieval.hit_filters import HitFilter, check_hit_filter
from heterag.retrieval.hybrid import HybridFusion, check_retrieval
from heterag.retrieval.retriever import Retriever
from heterag.stores.base import Fingerprint, VectorStore

__all__ = ["DocumentInfo", "IngestReport", "Pipeline", "image_fingerprint"]


class Pipeline(Indexer, DocumentManager, Retriever):
    """Ingest, retrieve and answer over one text store (and optionally one image store)
    with one text encoder, one view kind and one image encoder.

    ``image_encoder`` is an image encoder object or a spec for
    :func:`heterag.encoding.image_encoders.load_image_encoder` (loaded on first use, so text-only
    work never loads it). Image items need ``image_store`` and ``image_files``.

    ``guards`` (:class:`~heterag.ingest.guards.IngestGuard`) check every document before it is
    written; ``hit_filters`` (:class:`~heterag.retrieval.hit_filters.HitFilter`) see every query's hits before
    generation (see :mod:`heterag.ingest.guards` and :mod:`heterag.retrieval.hit_filters`). ``write_lock`` serialises writes with other processes
    (:mod:`heterag.core.locking`); :func:`heterag.open_collection` gives every collection one.

    ``retrieval`` (``dense``, ``keyword``, ``hybrid``; None: hybrid where ``store`` has a keyword index,
    else dense) and ``hybrid`` (a :class:`~heterag.retrieval.hybrid.HybridFusion` or its spec) set how text
    queries are searched (:mod:`heterag.retrieval.hybrid`).
    """

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
        image_store: VectorStore | None = None,
        image_encoder: Any = "default",
        image_files: ImageFiles | str | os.PathLike[str] | None = None,
        fusion: Fusion | None = None,
        guards: Sequence[IngestGuard] = (),
        hit_filters: Sequence[HitFilter] = (),
        write_lock: WriteLock | None = None,
        retrieval: str | None = None,
        hybrid: HybridFusion | str | None = None,
    ):
        check_chunk_tokens(chunk_tokens)  # a size no document can be cut into is refused before anything is written
        self.store = store
        self.guards: list[IngestGuard] = [check_guard(g) for g in guards]
        self.hit_filters: list[HitFilter] = [check_hit_filter(f) for f in hit_filters]
        self.write_lock = write_lock
        self.encoder = encoder
        self.view = view
        self.chunk_tokens = chunk_tokens
        self.name = name
        self.image_store = image_store
        self._image_encoder = image_encoder
        self._image_encoder_checked = False
        self.image_files = ImageFiles(image_files) if isinstance(image_files, str | os.PathLike) else image_files
        self.fusion = fusion or Fusion()
        #: ``dense``, ``keyword``, ``hybrid``, or None: hybrid where the store has a keyword index, else dense.
        self.retrieval = check_retrieval(retrieval) if retrieval is not None else None
        self.hybrid = HybridFusion.parse(hybrid)
        self._generator = generator
        identity = encoder_identity or getattr(encoder, "identity", type(encoder).__name__)
        self.fingerprint = Fingerprint(
            model=identity,
            dim=int(encoder.dim),
            view=view.kind,
            adapter=str(getattr(encoder, "adapter_hash", "none")),  # heterag.encoding.adapters: soft prompts change the vectors
            # JSON round trip: what the store persists is what we compare against
            extra=json.loads(json.dumps({"chunk_tokens": chunk_tokens, "view_settings": view.settings()})),
        )
        existing = store.fingerprint()
        if existing is not None:  # refuse to mix vectors made differently
            where = f"collection {name!r}" if name else f"{store.name} store"
            if existing.adapter != self.fingerprint.adapter and dataclasses.replace(existing, adapter="none") == \
                    dataclasses.replace(self.fingerprint, adapter="none"):
                from heterag.core.errors import FingerprintMismatchError

                source = getattr(getattr(encoder, "adapter", None), "source", "") or ""
                raise FingerprintMismatchError(
                    f"{where} was embedded with adapter {existing.adapter} but is being opened with adapter "
                    f"{self.fingerprint.adapter}{f' ({source})' if source else ''}; re-embed it with: heterag reembed "
                    f"--collection {name or 'NAME'} --adapter "
                    f"{source or ('none' if self.fingerprint.adapter == 'none' else 'PATH (save the adapter first)')}")
            existing.check(self.fingerprint, where=where)
        store.set_fingerprint(self.fingerprint)

    @property
    def image_encoder(self):
        """The image encoder (loaded on first use), checked against the image store's fingerprint."""
        enc = self._image_encoder
        if enc is None:
            raise InvalidInputError("this pipeline has no image encoder")
        if isinstance(enc, str):
            from heterag.encoding.image_encoders import load_image_encoder

            enc = self._image_encoder = load_image_encoder(enc)
        if not self._image_encoder_checked and self.image_store is not None:
            fp = image_fingerprint(enc)
            existing = self.image_store.fingerprint()
            if existing is not None:
                existing.check(fp, where=f"collection {self.name!r} (images)" if self.name else "image store")
            self.image_store.set_fingerprint(fp)
            self._image_encoder_checked = True
        return enc

    @image_encoder.setter
    def image_encoder(self, encoder: Any) -> None:
        """Swap the image encoder (an object or a spec); it is checked against the image store's
        fingerprint on next use, so only an encoder that makes the same vectors is accepted."""
        self._image_encoder = encoder
        self._image_encoder_checked = False

    @property
    def generator(self) -> Generator:
        """The answer generator (default: extractive, over this pipeline's encoder)."""
        if self._generator is None:
            from heterag.generators import ExtractiveGenerator

            self._generator = ExtractiveGenerator(self.encoder)
        return self._generator

    @generator.setter
    def generator(self, generator: Generator) -> None:
        self._generator = generator

    @contextlib.contextmanager
    def defended(self, guards: Sequence[IngestGuard] = (), hit_filters: Sequence[HitFilter] = ()) -> Iterator[Pipeline]:
        """Switch extra guards and hit filters on for the body of a ``with`` block (appended after
        the pipeline's own), restoring the previous lists afterwards, even on error."""
        old = (list(self.guards), list(self.hit_filters))
        self.guards = old[0] + [check_guard(g) for g in guards]
        self.hit_filters = old[1] + [check_hit_filter(f) for f in hit_filters]
        try:
            yield self
        finally:
            self.guards, self.hit_filters = old

    def _writing(self):
        return self.write_lock() if self.write_lock is not None else contextlib.nullcontext()

    def answer(
        self,
        question: str | None = None,
        k: int = 5,
        where: Mapping[str, Any] | None = None,
        *,
        image: Any = None,
        on_token: StreamCallback | None = None,
    ) -> Answer:
        """Retrieve ``k`` chunks for the question and/or image and generate a cited answer from them."""
        ref = load_image(image, source="query image") if image is not None else None
        hits = self.retrieve(question, k=k, where=where, image=ref)
        if ref is None:  # generators written before images keep working for text questions
            return self.generator.generate(question or "", hits, on_token=on_token)
        return self.generator.generate(question or "", hits, on_token=on_token, image=ref)

    def count(self) -> int:
        return self.store.count()

    def close(self) -> None:
        self.store.close()
        if self.image_store is not None:
            self.image_store.close()


def image_fingerprint(encoder: Any) -> Fingerprint:
    """How an image store's vectors were made: the image encoder and its text side."""
    return Fingerprint(model=str(encoder.identity), dim=int(encoder.dim), view="image",
                       extra={"text_side": str(getattr(encoder, "text_identity", "")),
                              "image_size": int(getattr(encoder, "image_size", 0))})

