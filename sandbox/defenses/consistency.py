"""Image–text consistency filter (ingest guard).

Statistic: ``cosine(image embedding, image encoder's text-side embedding of the item's text)``,
i.e. how well the item's own text describes its image in the image encoder's joint space
(CLIPScore, Hessel et al. 2021, used as a data filter as in LAION-400M's CLIP-similarity cut).
M3Att's poisons pair a centroid-optimised image with a covertly wrong text, so their
consistency tends to be low; the M3Att paper evaluates such a filter (attack success falls from
about 76% to 58%: it helps, but covert edits keep most of a caption's content).

Fitted on the clean knowledge base: every image item with text is scored (the score of an item
does not depend on the rest of the knowledge base, so leave-one-out is the plain score) and the
threshold is the ``false_rejection`` quantile; an incoming item scoring below it is rejected.
Items without text or without an image pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from heterag import IngestItem, InvalidInputError, Pipeline, Verdict

from .base import (
    DefenseContext,
    FitReport,
    FittedDefense,
    check_int,
    fit_threshold,
    image_encoder_identity,
    kb_images,
    kb_texts,
    normalise,
    rejected,
)


class ConsistencyGuard(FittedDefense):
    """Reject image–text items whose text does not match their image (see the module docs).

    ``batch_size``: texts per ``encode_texts`` call while fitting.
    """

    name = "consistency"
    stage = "ingest"
    statistic = "cosine(image embedding, image encoder's text-side embedding of the item's text)"

    def __init__(self, batch_size: int = 256):
        self.batch_size = check_int("batch_size", batch_size, low=1)
        self.report = None
        self.threshold = float("nan")
        self._encoder = ""

    def scores(self, pipeline: Pipeline) -> np.ndarray:
        """Consistency of every knowledge-base image item that has text."""
        return self._scored(pipeline)[1]

    def _scored(self, pipeline: Pipeline) -> tuple[list[str], np.ndarray]:
        kb = kb_images(pipeline)
        texts = kb_texts(pipeline, list(kb.doc_ids))
        rows = [i for i, d in enumerate(kb.doc_ids) if texts.get(d, "").strip()]
        ids = [str(kb.doc_ids[i]) for i in rows]
        return ids, _consistency(pipeline, kb.vectors[rows], [texts[d] for d in ids], self.batch_size)

    def rejected_ids(self, ctx: DefenseContext) -> list[str]:
        """Knowledge-base documents this fitted guard would refuse if they were ingested now."""
        self._require_fit()
        ids, s = self._scored(ctx.pipeline)
        return [d for d, r in zip(ids, rejected(s, self.threshold, "reject_below"), strict=True) if r]

    def fit(self, ctx: DefenseContext) -> FitReport:
        s = self.scores(ctx.pipeline)
        if s.size < 2:
            raise InvalidInputError("consistency: the knowledge base needs at least 2 image items with text to calibrate")
        self.threshold, measured = fit_threshold(s, ctx.false_rejection, "reject_below")
        self._encoder = image_encoder_identity(ctx.pipeline)
        self.report = FitReport(self.statistic, self.threshold, "reject_below", measured, int(s.size))
        return self.report

    def clean_rejection(self, ctx: DefenseContext) -> float:
        self._require_fit()
        s = self.scores(ctx.pipeline)
        return float(np.mean(rejected(s, self.threshold, "reject_below"))) if s.size else 0.0

    def score(self, item: IngestItem, pipeline: Pipeline) -> float | None:
        """The item's consistency, or None when it has no image or no text."""
        text = item.text
        if item.image_vector is None or not text.strip():
            return None
        return float(_consistency(pipeline, item.image_vector[None, :], [text], 1)[0])

    def check(self, item: IngestItem, pipeline: Pipeline) -> Verdict:
        self._require_fit()
        if image_encoder_identity(pipeline) != self._encoder:
            raise InvalidInputError("consistency guard was fitted with another image encoder; refit it on this pipeline")
        s = self.score(item, pipeline)
        if s is None or s >= self.threshold:
            return Verdict.ok()
        return Verdict.reject(f"image-text consistency {s:.3f} below {self.threshold:.3f}")


def _consistency(pipeline: Pipeline, image_vectors: np.ndarray, texts: Sequence[str], batch: int) -> np.ndarray:
    enc = pipeline.image_encoder
    if not len(texts):
        return np.zeros(0, dtype=np.float64)
    t = np.concatenate([np.asarray(enc.encode_texts(list(texts[i:i + batch])), dtype=np.float32)
                        for i in range(0, len(texts), batch)])
    return np.sum(normalise(image_vectors) * normalise(t), axis=1).astype(np.float64)
