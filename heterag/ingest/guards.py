"""Ingest guards: a plug point for defenses in front of the index.

An :class:`IngestGuard` sees each document about to be written, with its chunks, their
retrieval-view vectors and its image embedding, and returns a :class:`Verdict`: accept,
reject (the reason appears in :attr:`heterag.IngestReport.rejected`), or accept with a
*replacement image* (purification: the indexer re-embeds the replaced image). Guards run in
order and the first rejection wins.

Its twin at query time is the hit filter (:mod:`heterag.retrieval.hit_filters`). Configure both on a
pipeline (``Pipeline(..., guards=[...], hit_filters=[...])``, ``open_collection(..., guards=...,
hit_filters=...)``) for good, or for a block of code with :meth:`heterag.Pipeline.defended`. The
``pipeline`` a guard receives is the :class:`heterag.Pipeline` being written to (its stores,
encoders and view, for guards that compare a document with what is stored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from heterag.core.documents import Chunk, Document
from heterag.core.errors import InvalidInputError
from heterag.core.images import ImageRef


@dataclass(frozen=True)
class IngestItem:
    """One document on its way into the index, as a guard sees it.

    ``text_vectors`` is float32 ``(len(chunks), dim)`` (the chunks' retrieval-view embeddings,
    unit norm; ``(0, dim)`` for an image-only item); ``image_vector`` is the image encoder's
    unit-norm embedding ``(image_dim,)`` or None for a text-only document.
    """

    document: Document
    chunks: tuple[Chunk, ...]
    text_vectors: np.ndarray
    image_vector: np.ndarray | None = None

    @property
    def image(self) -> ImageRef | None:
        return self.document.image

    @property
    def text(self) -> str:
        """The document's full text (its chunks joined), empty for an image-only item."""
        return " ".join(c.text for c in self.chunks)


@dataclass(frozen=True)
class Verdict:
    """A guard's decision on one :class:`IngestItem`.

    ``image`` (only with ``accept``) replaces the item's image before it is stored and embedded,
    e.g. a JPEG-recompressed or blurred copy (purification). ``reason`` is shown in the ingest
    report for rejections and logged for replacements.
    """

    accept: bool
    reason: str = ""
    image: ImageRef | None = None

    @classmethod
    def ok(cls) -> Verdict:
        return cls(True)

    @classmethod
    def reject(cls, reason: str) -> Verdict:
        return cls(False, reason)

    @classmethod
    def replace_image(cls, image: ImageRef, reason: str) -> Verdict:
        return cls(True, reason, image)


@runtime_checkable
class IngestGuard(Protocol):
    """Decides, per document, whether it may enter the index (see the module docs)."""

    name: str

    def check(self, item: IngestItem, pipeline: Any) -> Verdict: ...


def check_guard(guard: Any) -> IngestGuard:
    if not isinstance(guard, IngestGuard):
        raise InvalidInputError(f"{guard!r} is not an ingest guard (needs a name and check(item, pipeline) -> Verdict)")
    return guard
