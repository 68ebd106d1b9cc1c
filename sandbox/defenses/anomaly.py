"""Embedding-space anomaly guards: kNN density and hubness of an incoming image.

M3Att optimises poison images (L-inf PGD, eps 16/255) towards cluster centres of the knowledge
base's image embeddings so that each is retrieved for many unseen image queries. Two
consequences are measurable at ingest time, against a snapshot of the clean knowledge base
taken by :meth:`fit`:

* **kNN density** (:class:`KnnDensityGuard`, ``knn_density``): the mean cosine similarity of the
  incoming image embedding to its ``n_neighbours`` nearest knowledge-base image embeddings. A
  centroid-optimised image is abnormally *central* (denser neighbourhood than any natural item),
  so the default rejects scores above the ``1 - false_rejection`` quantile of the knowledge-base
  items' leave-one-out scores. ``direction="below"`` is the classic low-density outlier test (the
  kNN distance outlier score of Ramaswamy et al. 2000; Angiulli & Pizzuti 2002 use the mean over
  the k nearest); it catches off-distribution items, not centroid poisons.
* **Hubness** (:class:`HubnessGuard`, ``hubness``): the k-occurrence ``N_k`` of the incoming image
  (Radovanović, Nanopoulos & Ivanović, "Hubs in space", JMLR 2010): the number of clean probe
  queries whose top-k (image signal, among the knowledge-base images, excluding the probe's own
  document) it would enter, i.e. ``sim(probe, v) >= the probe's k-th best similarity``. Poisons
  built to be retrieved for many queries are *adversarial hubs*; high ``N_k`` is how hubs are
  defined and flagged (detecting injected hubs by their k-occurrence over sample queries is the
  core detector of HubScan, Habler et al., "HubScan: Detecting Hubness Poisoning in
  Retrieval-Augmented Generation Systems", arXiv:2602.22427, 2026, which scans an index
  periodically; here the count gates each item at ingest). Rejects
  above the ``1 - false_rejection`` quantile of the same count for the knowledge-base items, each
  counted leave-one-out (probes from the item's own document excluded; the item removed from the
  probes' top-k lists, so an item in a probe's top-k is counted against the (k+1)-th best).

Both exclude knowledge-base records of the incoming document's own id (a re-ingested document
replaces its old version), which is also what makes the knowledge-base scores leave-one-out.
Counts are integers: ties at the cut make the measured clean rejection fall below the target.
"""

from __future__ import annotations

import numpy as np

from heterag import IngestItem, InvalidInputError, Pipeline, Verdict

from .base import (
    DefenseContext,
    FitReport,
    FittedDefense,
    KBImages,
    check_choice,
    check_int,
    fit_threshold,
    image_encoder_identity,
    kb_images,
    normalise,
    rejected,
)

_BLOCK = 1024  # rows per similarity block (memory: block x knowledge-base size floats)


class _SnapshotGuard(FittedDefense):
    stage = "ingest"
    direction = "reject_above"

    def __init__(self) -> None:
        self.report = None
        self.threshold = float("nan")
        self._encoder = ""
        self._kb: KBImages | None = None

    def _scores(self, vectors: np.ndarray, doc_ids: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _prepare(self, ctx: DefenseContext, kb: KBImages) -> None:
        pass

    def fit(self, ctx: DefenseContext) -> FitReport:
        kb = kb_images(ctx.pipeline)
        self._kb = kb
        self._encoder = image_encoder_identity(ctx.pipeline) if len(kb) else ""
        self._prepare(ctx, kb)
        s = self._scores(kb.vectors, kb.doc_ids)
        self.threshold, measured = fit_threshold(s, ctx.false_rejection, self.direction)
        self.report = FitReport(self.statistic, self.threshold, self.direction, measured, int(s.size))
        return self.report

    def clean_rejection(self, ctx: DefenseContext) -> float:
        """Share of ``ctx``'s knowledge-base images rejected, each checked against the fitted snapshot
        without its own document (leave-one-out when ``ctx`` is the fitting context)."""
        self._require_fit()
        kb = kb_images(ctx.pipeline)
        if not len(kb):
            return 0.0
        return float(np.mean(rejected(self._scores(kb.vectors, kb.doc_ids), self.threshold, self.direction)))

    def rejected_ids(self, ctx: DefenseContext) -> list[str]:
        """Knowledge-base documents this fitted guard would refuse (each checked without itself)."""
        self._require_fit()
        kb = kb_images(ctx.pipeline)
        if not len(kb):
            return []
        flags = rejected(self._scores(kb.vectors, kb.doc_ids), self.threshold, self.direction)
        return [str(d) for d, r in zip(kb.doc_ids, flags, strict=True) if r]

    def score(self, item: IngestItem) -> float | None:
        """The item's statistic against the fitted snapshot, None for an item without an image."""
        self._require_fit()
        if item.image_vector is None:
            return None
        return float(self._scores(normalise(item.image_vector[None, :]), np.array([item.document.id], dtype=object))[0])

    def check(self, item: IngestItem, pipeline: Pipeline) -> Verdict:
        self._require_fit()
        if item.image_vector is None:
            return Verdict.ok()
        if image_encoder_identity(pipeline) != self._encoder:
            raise InvalidInputError(f"{self.name} guard was fitted with another image encoder; refit it on this pipeline")
        s = self.score(item)
        if not rejected([s], self.threshold, self.direction)[0]:
            return Verdict.ok()
        side = "above" if self.direction == "reject_above" else "below"
        return Verdict.reject(f"{self.short} {s:.3f} {side} {self.threshold:.3f}")


class KnnDensityGuard(_SnapshotGuard):
    """Reject images whose kNN density is abnormal (default: abnormally central; see the module docs).

    ``n_neighbours``: knowledge-base images averaged over (default 10). ``direction``: ``"above"``
    (default, centroid poisons) or ``"below"`` (outliers).
    """

    name = "knn_density"
    short = "kNN density"

    def __init__(self, n_neighbours: int = 10, direction: str = "above"):
        super().__init__()
        self.n_neighbours = check_int("n_neighbours", n_neighbours, low=1)
        self.direction = "reject_" + check_choice("direction", direction, ("above", "below"))
        self.statistic = f"mean cosine to the {self.n_neighbours} nearest knowledge-base images"

    def _prepare(self, ctx: DefenseContext, kb: KBImages) -> None:
        if len(kb) <= self.n_neighbours:
            raise InvalidInputError(f"knn_density: the knowledge base has {len(kb)} images; n_neighbours="
                                    f"{self.n_neighbours} needs more than that")

    def _scores(self, vectors: np.ndarray, doc_ids: np.ndarray) -> np.ndarray:
        kb = self._kb
        n = self.n_neighbours
        out = np.zeros(len(vectors), dtype=np.float64)
        for a in range(0, len(vectors), _BLOCK):
            sims = vectors[a:a + _BLOCK] @ kb.vectors.T
            sims[doc_ids[a:a + _BLOCK, None] == kb.doc_ids[None, :]] = -np.inf
            top = -np.partition(-sims, n - 1, axis=1)[:, :n]
            out[a:a + _BLOCK] = top.mean(axis=1)
        return out


class HubnessGuard(_SnapshotGuard):
    """Reject images that would enter the top-k of abnormally many probe queries (see the module docs).

    ``k``: the top-k considered (None: the context's ``k``, the deployment's). ``signal``:
    ``"image"`` (probe images, default) or ``"cross"`` (probe texts through the image encoder's
    text side); probes without that modality are skipped.
    """

    name = "hubness"
    short = "k-occurrence"

    def __init__(self, k: int | None = None, signal: str = "image"):
        super().__init__()
        self.k = None if k is None else check_int("k", k, low=1)
        self.signal = check_choice("signal", signal, ("image", "cross"))
        self.statistic = f"k-occurrence: probes ({signal} signal) whose top-k the item enters"
        self._kk = 0
        self._probe_docs = np.zeros(0, dtype=object)
        self._probes = np.zeros((0, 0), dtype=np.float32)
        self._top_vals = np.zeros((0, 0))
        self._top_docs = np.zeros((0, 0), dtype=object)

    def _prepare(self, ctx: DefenseContext, kb: KBImages) -> None:
        k = self.k or ctx.k
        if len(kb) <= k + 1:
            raise InvalidInputError(f"hubness: the knowledge base has {len(kb)} images; top-{k} needs more than {k + 1}")
        enc = ctx.pipeline.image_encoder
        if self.signal == "image":
            use = [p for p in ctx.probes if p.image is not None]
            vecs = enc.encode_images([p.image for p in use], progress=False) if use else None
        else:
            use = [p for p in ctx.probes if p.text and p.text.strip()]
            vecs = np.concatenate([enc.encode_texts([p.text for p in use[i:i + 256]]) for i in range(0, len(use), 256)]
                                  ) if use else None
        if vecs is None:
            raise InvalidInputError(f"hubness: no probe has the {self.signal} signal ({'an image' if self.signal == 'image' else 'text'})")
        self._kk = k
        self._probes = normalise(vecs)
        self._probe_docs = np.array([p.doc_id for p in use], dtype=object)
        # each probe's k+1 best knowledge-base similarities (own document excluded), best first
        vals, docs = [], []
        for a in range(0, len(use), _BLOCK):
            sims = self._probes[a:a + _BLOCK] @ kb.vectors.T
            sims[self._probe_docs[a:a + _BLOCK, None] == kb.doc_ids[None, :]] = -np.inf
            idx = np.argpartition(-sims, k, axis=1)[:, :k + 1]
            part = np.take_along_axis(sims, idx, axis=1)
            order = np.argsort(-part, axis=1, kind="stable")
            vals.append(np.take_along_axis(part, order, axis=1))
            docs.append(kb.doc_ids[np.take_along_axis(idx, order, axis=1)])
        self._top_vals, self._top_docs = np.concatenate(vals), np.concatenate(docs)

    def _scores(self, vectors: np.ndarray, doc_ids: np.ndarray) -> np.ndarray:
        k = self._kk
        out = np.zeros(len(vectors), dtype=np.float64)
        for a in range(0, len(vectors), 256):
            d = doc_ids[a:a + 256]
            sims = self._probes @ vectors[a:a + 256].T  # (P, m)
            in_top = (self._top_docs[:, :k, None] == d[None, None, :]).any(axis=1)  # item among the probe's top-k
            thr = np.where(in_top, self._top_vals[:, k, None], self._top_vals[:, k - 1, None])
            valid = self._probe_docs[:, None] != d[None, :]
            out[a:a + 256] = np.sum(valid & (sims >= thr), axis=0)
        return out
