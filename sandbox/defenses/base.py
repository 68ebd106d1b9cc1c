"""What every defense shares: the calibration context, the fit report, the protocol, and helpers.

A defense is calibrated on *clean* data only (the knowledge base before any injection and
clean probe queries), never on attack items: :meth:`Defense.fit` sets its threshold so that a
target share of clean knowledge (``DefenseContext.false_rejection``) is wrongly removed, and
:meth:`Defense.plug` hands back the object to pass to :meth:`heterag.Pipeline.defended` (or to
a pipeline's permanent ``guards`` / ``hit_filters``).

Thresholds (:func:`fit_threshold`): with ``n`` clean scores and target rate ``r``, the
``m = round(r n)`` most extreme scores are rejected: the threshold lies half-way between the
``m``-th and ``(m+1)``-th most extreme score and the comparison is strict, so on the fitting
data exactly ``m / n`` is rejected when scores are distinct (fewer when they tie at the cut,
as integer counts can). Ingest guards snapshot the clean knowledge base when fitted and
compare incoming items with that snapshot; refit after the knowledge base changes much.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from heterag import Hit, HitFilter, ImageRef, IngestGuard, InvalidInputError, Pipeline, RetrievalQuery

DIRECTIONS = ("reject_below", "reject_above", "none")


@dataclass(frozen=True)
class Probe:
    """A clean query the defender may use to calibrate (e.g. a knowledge-base item used as a query).

    ``doc_id``: the knowledge-base document the probe came from; calibration excludes it where the
    probe would otherwise find itself.
    """

    text: str | None
    image: ImageRef | None
    doc_id: str | None = None

    def __post_init__(self) -> None:
        if self.text is not None and not isinstance(self.text, str):
            raise InvalidInputError(f"probe text must be a string or None, got {type(self.text).__name__}")
        if self.image is not None and not isinstance(self.image, ImageRef):
            raise InvalidInputError(f"probe image must be an ImageRef or None, got {type(self.image).__name__}")
        if not (self.text and self.text.strip()) and self.image is None:
            raise InvalidInputError("a probe needs text, an image, or both")


@dataclass
class DefenseContext:
    """Clean data a defense is fitted on: the knowledge base before injection and clean probes."""

    pipeline: Pipeline
    probes: Sequence[Probe]
    false_rejection: float = 0.02  # target share of clean knowledge wrongly rejected/dropped
    k: int = 5  # top-k the deployment retrieves
    seed: int = 0

    def __post_init__(self) -> None:
        self.false_rejection = check_float("false_rejection", self.false_rejection, low=0.0, high=0.5)
        self.k = check_int("k", self.k, low=1)
        self.probes = tuple(self.probes)
        for i, p in enumerate(self.probes):
            if not isinstance(p, Probe):
                raise InvalidInputError(f"probes[{i}] must be a Probe, got {type(p).__name__}")


@dataclass(frozen=True)
class FitReport:
    statistic: str  # what is thresholded
    threshold: float
    direction: str  # "reject_below" | "reject_above" | "none"
    clean_rejection: float  # measured on the clean data it was fitted on
    n: int  # clean samples used


@runtime_checkable
class Defense(Protocol):
    name: str
    stage: str  # "ingest" (an IngestGuard) or "retrieval" (a HitFilter)

    def fit(self, ctx: DefenseContext) -> FitReport: ...

    def plug(self) -> IngestGuard | HitFilter: ...

    def clean_rejection(self, ctx: DefenseContext) -> float: ...


# --------------------------------------------------------------------------- parameter checks


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidInputError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidInputError(f"{name} must be {_bounds(low, high)}, got {value}")
    return value


def check_float(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise InvalidInputError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or (low is not None and (value < low or (low_open and value == low))) or (
            high is not None and value > high):
        raise InvalidInputError(f"{name} must be a finite number {_bounds(low, high, low_open)}, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InvalidInputError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


def _bounds(low: Any, high: Any, low_open: bool = False) -> str:
    if low is not None and high is not None:
        return f"between {low} and {high}" + (f" (above {low})" if low_open else "")
    if low is not None:
        return f"> {low}" if low_open else f">= {low}"
    return f"<= {high}"


# --------------------------------------------------------------------------- thresholds


def fit_threshold(scores: Any, rate: float, direction: str) -> tuple[float, float]:
    """Threshold rejecting ``round(rate * n)`` of the clean ``scores`` in ``direction``; returns
    ``(threshold, measured share rejected)`` (see the module docs)."""
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if s.size < 2:
        raise InvalidInputError(f"calibration needs at least 2 clean samples, got {s.size}")
    if direction == "reject_above":
        s = s[::-1]
    elif direction != "reject_below":
        raise InvalidInputError(f"direction must be reject_below or reject_above, got {direction!r}")
    m = min(int(math.floor(rate * s.size + 0.5)), s.size - 1)
    thr = float(s[0]) if m == 0 else float((s[m - 1] + s[m]) / 2)
    return thr, float(np.mean(rejected(s, thr, direction)))


def rejected(scores: Any, threshold: float, direction: str) -> np.ndarray:
    """Boolean mask of scores a threshold rejects (strictly beyond it)."""
    s = np.asarray(scores, dtype=np.float64)
    return s > threshold if direction == "reject_above" else s < threshold


# --------------------------------------------------------------------------- knowledge-base access


@dataclass(frozen=True)
class KBImages:
    """The image records of a collection: ``doc_ids`` (n,), unit-norm ``vectors`` (n, dim), and
    ``paths`` (n,) of the stored image files (None where unknown). Sorted by document id."""

    doc_ids: np.ndarray
    vectors: np.ndarray
    paths: tuple[str | None, ...]

    def __len__(self) -> int:
        return len(self.doc_ids)


def kb_images(pipeline: Pipeline) -> KBImages:
    """Every image record of ``pipeline``'s collection (empty when it stores none)."""
    store = pipeline.image_store
    recs = store.get(include_vectors=True) if store is not None and store.count() else []
    recs = sorted(recs, key=lambda r: str(r.metadata.get("doc_id", r.id)))
    dim = int(getattr(pipeline.image_encoder, "dim", 0)) if recs else 0
    if not recs:
        return KBImages(np.zeros(0, dtype=object), np.zeros((0, dim), dtype=np.float32), ())
    vecs = normalise(np.stack([np.asarray(r.vector, dtype=np.float32) for r in recs]))
    root = pipeline.image_files.root if pipeline.image_files is not None else None
    paths = tuple(str(Path(root) / str(r.metadata["image_path"])) if root is not None and r.metadata.get("image_path")
                  else None for r in recs)
    return KBImages(np.array([str(r.metadata.get("doc_id", r.id)) for r in recs], dtype=object), vecs, paths)


def kb_texts(pipeline: Pipeline, doc_ids: Sequence[str], batch: int = 500) -> dict[str, str]:
    """Full text (chunks joined in order, as :attr:`heterag.IngestItem.text`) of each document that has text."""
    out: dict[str, list[tuple[int, str]]] = {}
    ids = list(dict.fromkeys(doc_ids))
    for i in range(0, len(ids), batch):
        for r in pipeline.store.get(where={"doc_id": {"$in": ids[i:i + batch]}}):
            out.setdefault(str(r.metadata.get("doc_id")), []).append((int(r.metadata.get("chunk_index", 0)), r.text))
    return {d: " ".join(t for _, t in sorted(parts)) for d, parts in out.items()}


def probes_from_kb(pipeline: Pipeline, limit: int | None = None, *, seed: int = 0, text: bool = True,
                   image: bool = True) -> list[Probe]:
    """Knowledge-base image items as clean probes (their caption and/or image, with their ``doc_id``);
    ``limit`` draws that many at random (``seed``)."""
    if not (text or image):
        raise InvalidInputError("probes_from_kb needs text=True, image=True or both")
    kb = kb_images(pipeline)
    idx = np.arange(len(kb))
    if limit is not None and check_int("limit", limit, low=1) < len(kb):
        idx = np.sort(np.random.default_rng(seed).choice(len(kb), size=limit, replace=False))
    texts = kb_texts(pipeline, [kb.doc_ids[i] for i in idx]) if text else {}
    out = []
    for i in idx:
        t = texts.get(kb.doc_ids[i]) or None
        ref = ImageRef.from_path(kb.paths[i]) if image and kb.paths[i] is not None else None
        if t or ref is not None:
            out.append(Probe(t, ref, str(kb.doc_ids[i])))
    return out


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def image_encoder_identity(pipeline: Pipeline) -> str:
    enc = pipeline.image_encoder
    return f"{getattr(enc, 'identity', type(enc).__name__)}/{getattr(enc, 'dim', '?')}"


def probe_candidates(ctx: DefenseContext, overfetch: int) -> list[tuple[Probe, RetrievalQuery, list[Hit]]]:
    """Run every probe through ``ctx.pipeline.search`` and return what a hit filter would see: the
    query and its ``k * overfetch`` best candidates, with the probe's own document removed."""
    seen: list[tuple[RetrievalQuery, list[Hit]]] = []

    class _Spy:
        name = "calibration"

        def __init__(self, n: int):
            self.overfetch = n

        def filter(self, query: RetrievalQuery, hits: Sequence[Hit], pipeline: Pipeline) -> list[Hit]:
            seen.append((query, list(hits)))
            return list(hits)

    out = []
    n = ctx.k * overfetch
    with ctx.pipeline.defended(hit_filters=[_Spy(overfetch + 1)]):
        for p in ctx.probes:
            seen.clear()
            ctx.pipeline.search(p.text, k=ctx.k, image=p.image)
            if not seen:
                continue
            q, hits = seen[-1]
            hits = [h for h in hits if p.doc_id is None or h.doc_id != p.doc_id][:n]
            if hits:
                out.append((p, q, hits))
    if not out:
        raise InvalidInputError("calibration found no candidates: give DefenseContext some probes the knowledge base answers")
    return out


class FittedDefense:
    """Shared bookkeeping: the fit report and the plug check."""

    name: str = ""
    stage: str = "ingest"
    report: FitReport | None = None

    @property
    def fitted(self) -> bool:
        return self.report is not None

    def _require_fit(self) -> FitReport:
        if self.report is None:
            raise InvalidInputError(f"defense {self.name!r} is not fitted: call fit(ctx) first")
        return self.report

    def plug(self) -> Any:
        """The fitted guard or hit filter (this object) for ``pipeline.defended(...)``."""
        self._require_fit()
        return self

    def __repr__(self) -> str:
        r = self.report
        state = f"threshold={r.threshold:.4g} {r.direction}" if r is not None else "not fitted"
        return f"{type(self).__name__}({self.name}, {state})"
