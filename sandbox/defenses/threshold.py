"""Retrieval-score anomaly filter (hit filter): drop hits that score abnormally high, or too low.

A poison optimised towards a cluster centre is retrieved because it is unusually similar to
*many* queries; the filter looks for hits whose similarity to the query is higher than clean
knowledge reaches, calibrated on clean probe queries (their own documents excluded, so an item
never calibrates on finding itself). Two statistics:

* ``"image"`` (default): the hit's image similarity ``hit.scores["image"]``. The threshold is the
  ``1 - false_rejection`` quantile of that similarity over the probes' clean top-k hits: the
  highest image similarity clean knowledge reaches for a clean query. Hits without an image
  signal pass. Hits at or above ``duplicate_sim`` (default 0.98) are copies of the query image,
  a legitimate lookup, and always pass (and are left out of the calibration).
* ``"zscore"``: the hit's fused score as a z-score against the query's other candidates
  (``(s - mean(others)) / std(others)`` over the ``k * overfetch`` candidates the filter sees), an
  outlier test in the spirit of score-distribution defenses for retrieval poisoning; threshold
  at the same quantile over the probes' top-k hits. Needs at least 3 candidates, else passes.

``min_score`` (default None: off) additionally drops hits whose fused score is below it, a
fixed relevance floor (not calibrated; it counts in the clean rejection).

Score-only statistics are a weak defense against M3Att: a poison at a cluster centre is about
as similar to a query as that query's natural neighbours are (it wins by being close to *many*
queries, not by being very close to one), which the ingest-time guards (``hubness``,
``knn_density``) measure directly. This filter is the baseline they are compared with.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from heterag import Hit, InvalidInputError, Pipeline, RetrievalQuery

from .base import (
    DefenseContext,
    FitReport,
    FittedDefense,
    check_choice,
    check_float,
    check_int,
    fit_threshold,
    probe_candidates,
)


class ScoreThresholdFilter(FittedDefense):
    """Drop hits whose similarity is abnormally high for clean knowledge (see the module docs).

    ``statistic``: ``"image"`` or ``"zscore"``. ``overfetch``: candidates seen per ``k``.
    ``duplicate_sim``: image similarity from which a hit counts as a copy of the query image and
    passes. ``min_score``: optional floor on the fused score.
    """

    name = "score_threshold"
    stage = "retrieval"

    def __init__(self, statistic: str = "image", overfetch: int = 2, duplicate_sim: float = 0.98,
                 min_score: float | None = None):
        self.kind = check_choice("statistic", statistic, ("image", "zscore"))
        self.overfetch = check_int("overfetch", overfetch, low=1)
        self.duplicate_sim = check_float("duplicate_sim", duplicate_sim, low=-1.0, high=1.0)
        self.min_score = None if min_score is None else check_float("min_score", min_score)
        self.statistic = ("image similarity of a hit (copies of the query image excluded)" if self.kind == "image"
                          else "z-score of a hit's fused score against the query's other candidates")
        self.report = None
        self.threshold = float("nan")

    def values(self, hits: Sequence[Hit]) -> list[float | None]:
        """The statistic of each hit (None: not applicable, the hit passes the statistic test)."""
        if self.kind == "image":
            out: list[float | None] = []
            for h in hits:
                s = h.scores.get("image")
                out.append(None if s is None or s >= self.duplicate_sim else float(s))
            return out
        s = np.array([h.score for h in hits], dtype=np.float64)
        if len(s) < 3:
            return [None] * len(s)
        total, sq = s.sum(), (s ** 2).sum()
        m = len(s) - 1
        mean = (total - s) / m
        std = np.sqrt(np.maximum((sq - s ** 2) / m - mean ** 2, 0.0))
        return [float((v - mu) / max(sd, 1e-6)) for v, mu, sd in zip(s, mean, std, strict=True)]

    def fit(self, ctx: DefenseContext) -> FitReport:
        cands = probe_candidates(ctx, self.overfetch)
        vals = [v for _, _, hits in cands for v in self.values(hits)[:ctx.k] if v is not None]
        if len(vals) < 2:
            raise InvalidInputError(f"score_threshold: the probes gave {len(vals)} usable clean hits for statistic "
                                    f"{self.kind!r} (an 'image' statistic needs probes with images)")
        self.threshold, _ = fit_threshold(vals, ctx.false_rejection, "reject_above")
        self.report = FitReport(self.statistic, self.threshold, "reject_above", self._rejection(ctx, cands), len(vals))
        return self.report

    def clean_rejection(self, ctx: DefenseContext) -> float:
        """Share of the probes' clean top-k hits (own documents excluded) the filter drops."""
        self._require_fit()
        return self._rejection(ctx, probe_candidates(ctx, self.overfetch))

    def _rejection(self, ctx: DefenseContext, cands) -> float:
        dropped = total = 0
        for _, _q, hits in cands:
            top = hits[:ctx.k]
            out = self._apply(hits)
            gone = {h.chunk_id for h in out if h.dropped}
            dropped += sum(h.chunk_id in gone for h in top)
            total += len(top)
        return dropped / total if total else 0.0

    def filter(self, query: RetrievalQuery, hits: Sequence[Hit], pipeline: Pipeline) -> list[Hit]:
        self._require_fit()
        return self._apply(hits)

    def _apply(self, hits: Sequence[Hit]) -> list[Hit]:
        out = []
        for h, v in zip(hits, self.values(hits), strict=True):
            if v is not None and v > self.threshold:
                label = "image similarity" if self.kind == "image" else "score z"
                out.append(h.drop(f"{label} {v:.3f} above {self.threshold:.3f} (clean maximum)"))
            elif self.min_score is not None and h.score < self.min_score:
                out.append(h.drop(f"score {h.score:.3f} below minimum {self.min_score:.3f}"))
            else:
                out.append(h)
        return out
