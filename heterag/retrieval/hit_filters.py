"""Hit filters: a plug point for defenses between retrieval and generation.

A :class:`HitFilter` sees a query's candidate hits (``overfetch`` times ``k`` of them, best first)
before generation and returns them in its own order. It may re-rank, annotate a hit
(:meth:`heterag.Hit.with_note`) or drop it (:meth:`heterag.Hit.drop`, with a reason); the retriever
keeps the first ``k`` hits nobody dropped and reports the dropped ones in :attr:`Retrieval.dropped`.
Filters run in order, each on the previous filter's output.

Its twin at ingest time is the ingest guard (:mod:`heterag.ingest.guards`). The ``pipeline`` a filter
receives is the :class:`heterag.Pipeline` that was searched (its stores and encoders, for filters
that look again at what is stored).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from heterag.core.errors import InvalidInputError
from heterag.core.images import ImageRef
from heterag.core.results import Hit


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

    def filter(self, query: RetrievalQuery, hits: Sequence[Hit], pipeline: Any) -> list[Hit]: ...


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


def check_hit_filter(f: Any) -> HitFilter:
    if not isinstance(f, HitFilter):
        raise InvalidInputError(f"{f!r} is not a hit filter (needs name, overfetch and filter(query, hits, pipeline))")
    if not isinstance(f.overfetch, int) or f.overfetch < 1:
        raise InvalidInputError(f"hit filter {f.name!r}: overfetch must be an integer >= 1, got {f.overfetch!r}")
    return f
