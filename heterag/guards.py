"""Plug points for defenses: ingest guards and hit filters.

Two small protocols let a deployment (or the attack sandbox, for one run) put a defense in
front of the index without touching the pipeline's internals:

* an :class:`IngestGuard` sees each document about to be written, with its chunks, their
  retrieval-view vectors and its image embedding, and returns a :class:`Verdict`: accept,
  reject (the reason appears in :attr:`heterag.IngestReport.rejected`), or accept with a
  *replacement image* (purification: the pipeline re-embeds the replaced image);
* a :class:`HitFilter` sees a query's candidate hits (``overfetch`` times ``k`` of them, best
  first) before generation and returns them in its own order. It may re-rank, annotate a hit
  (:meth:`heterag.Hit.with_note`) or drop it (:meth:`heterag.Hit.drop`, with a reason); the
  pipeline keeps the first ``k`` hits nobody dropped and reports the dropped ones in
  :attr:`Retrieval.dropped`.

Guards run in order and the first rejection wins; filters run in order, each on the previous
filter's output. Configure them on a pipeline (``Pipeline(..., guards=[...], hit_filters=[...])``,
``open_collection(..., guards=..., hit_filters=...)``) for good, or for a block of code with
:meth:`heterag.Pipeline.defended`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from .documents import Chunk, Document
from .images import ImageRef
from .results import Hit

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Pipeline


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

    def check(self, item: IngestItem, pipeline: Pipeline) -> Verdict: ...


@dataclass(frozen=True)
class RetrievalQuery:
    """What a hit filter knows about the query: its text and/or image, ``k``, and the query
    vectors of each signal that was searched (``text``, ``image``, ``cross``; unit norm)."""

    text: str | None
    image: ImageRef | None
    k: int
    vectors: Mapping[str, np.ndarray] = field(default_factory=dict)


@runtime_checkable
class HitFilter(Protocol):
    """Sees a query's candidates before generation; may re-rank, annotate or drop them.

    ``overfetch`` (>= 1): how many times ``k`` candidates the filter wants to see, so that
    dropping some still leaves ``k``.
    """

    name: str
    overfetch: int

    def filter(self, query: RetrievalQuery, hits: Sequence[Hit], pipeline: Pipeline) -> list[Hit]: ...


@dataclass(frozen=True)
class DroppedHit:
    """A candidate a filter removed, and why."""

    hit: Hit
    filter: str
    reason: str


@dataclass(frozen=True)
class Retrieval:
    """Hits of a query after the filters, with what the filters dropped."""

    hits: tuple[Hit, ...]
    dropped: tuple[DroppedHit, ...] = ()


def check_guard(guard: Any) -> IngestGuard:
    if not isinstance(guard, IngestGuard):
        from .errors import InvalidInputError

        raise InvalidInputError(f"{guard!r} is not an ingest guard (needs a name and check(item, pipeline) -> Verdict)")
    return guard


def check_hit_filter(f: Any) -> HitFilter:
    from .errors import InvalidInputError

    if not isinstance(f, HitFilter):
        raise InvalidInputError(f"{f!r} is not a hit filter (needs name, overfetch and filter(query, hits, pipeline))")
    if not isinstance(f.overfetch, int) or f.overfetch < 1:
        raise InvalidInputError(f"hit filter {f.name!r}: overfetch must be an integer >= 1, got {f.overfetch!r}")
    return f
