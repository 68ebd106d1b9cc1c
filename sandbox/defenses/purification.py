"""Input purification: JPEG re-compression and a slight Gaussian blur before embedding.

L-inf PGD perturbations (M3Att's eps = 16/255) live mostly in high spatial frequencies that
lossy compression and low-pass filtering remove, while the content a clean image is retrieved
for survives them (JPEG compression as an adversarial defense: Dziugaite et al. 2016, Das et
al. 2017 "Keeping the bad guys out", Guo et al. ICLR 2018 "Countering adversarial images using
input transformations"; a transformation-based purification, here applied to retrieval).

The transform (:func:`purify_image`): decode, re-encode as JPEG at ``quality`` (default 75),
decode, Gaussian blur with radius ``sigma`` px (default 1.0; 0 switches it off).

* ``purify`` (:class:`PurifyFilter`, a hit filter, the default stage): re-embeds the stored
  image of every candidate after the transform (cached per image SHA-256 and encoder), replaces
  the candidate's ``image`` similarity (and its ``cross`` similarity, which also compares with the
  item's image) by the purified one, re-fuses all candidates' similarities with the pipeline's
  fusion rule (``pipeline.fusion``), re-ranks and notes the change on each hit. Nothing is
  dropped. ``purify_query=True`` also purifies the query image (both sides then went through
  the same transform).
* ``purify_ingest`` (:class:`PurifyGuard`, an ingest guard): replaces every incoming image by its
  purified copy (:meth:`heterag.Verdict.replace_image`, stored as PNG); the pipeline embeds the
  replacement. Note for chaining: guards after it still see the *original* image's vector in
  :attr:`heterag.IngestItem.image_vector`, so put it last.

Purification has no threshold: the fit report has ``threshold=nan``, ``direction="none"`` and
``clean_rejection=0``. It costs clean items some similarity too (blur shifts every embedding);
the fusion re-ranking treats all candidates alike, so what matters is that poisons lose more.
"""

from __future__ import annotations

import dataclasses
import io
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from heterag import Hit, ImageRef, IngestItem, InvalidInputError, Pipeline, RetrievalQuery, Verdict

from .base import DefenseContext, FitReport, FittedDefense, check_float, check_int, image_encoder_identity, normalise

_SHA = re.compile(r"^[0-9a-f]{64}$")


def purify_image(image: ImageRef | Image.Image, quality: int = 75, sigma: float = 1.0) -> Image.Image:
    """The purified copy (8-bit RGB) of ``image``: JPEG at ``quality``, then a Gaussian blur of ``sigma`` px."""
    img = image.to_pil() if isinstance(image, ImageRef) else image.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return out.filter(ImageFilter.GaussianBlur(sigma)) if sigma > 0 else out


class _Purification(FittedDefense):
    def __init__(self, quality: int = 75, sigma: float = 1.0):
        self.quality = check_int("quality", quality, low=1, high=95)
        self.sigma = check_float("sigma", sigma, low=0.0, high=20.0)
        self.statistic = f"none (purification: JPEG q{self.quality}, Gaussian blur sigma {self.sigma:g} px)"
        self.report = FitReport(self.statistic, float("nan"), "none", 0.0, 0)

    def fit(self, ctx: DefenseContext) -> FitReport:
        """Nothing to calibrate; returns the (constant) report."""
        return self.report

    def clean_rejection(self, ctx: DefenseContext) -> float:
        return 0.0

    def purified(self, image: ImageRef | Image.Image) -> Image.Image:
        return purify_image(image, self.quality, self.sigma)


class PurifyFilter(_Purification):
    """Re-score candidates with purified embeddings of their stored images (see the module docs).

    ``quality``: JPEG quality 1-95. ``sigma``: blur radius in px (0: none). ``overfetch``:
    candidates seen per ``k`` (re-ranking can promote items from beyond the first ``k``).
    ``purify_query``: purify the query image as well. ``cache_size``: purified embeddings kept.
    """

    name = "purify"
    stage = "retrieval"

    def __init__(self, quality: int = 75, sigma: float = 1.0, overfetch: int = 2, purify_query: bool = False,
                 cache_size: int = 4096):
        super().__init__(quality, sigma)
        self.overfetch = check_int("overfetch", overfetch, low=1)
        if not isinstance(purify_query, bool):
            raise InvalidInputError(f"purify_query must be True or False, got {purify_query!r}")
        self.purify_query = purify_query
        self.cache_size = check_int("cache_size", cache_size, low=1)
        self._cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def embeddings(self, pipeline: Pipeline, images: Sequence[str | ImageRef]) -> list[np.ndarray | None]:
        """Purified unit-norm embeddings of image files (paths) or refs, cached per SHA-256; None for a
        file that cannot be read."""
        enc_id = image_encoder_identity(pipeline)
        keys: list[tuple[str, str] | None] = []
        refs: dict[tuple[str, str], ImageRef | str] = {}
        for img in images:
            if isinstance(img, ImageRef):
                key = (enc_id, img.sha256)
            else:
                stem = Path(img).stem
                key = (enc_id, stem if _SHA.match(stem) else f"path:{img}")
            keys.append(key)
            if key not in self._cache:
                refs.setdefault(key, img)
        todo, pils = [], []
        for key, img in refs.items():
            try:
                ref = img if isinstance(img, ImageRef) else ImageRef.from_path(img)
            except InvalidInputError:
                continue
            todo.append(key)
            pils.append(self.purified(ref))
        if pils:
            vecs = normalise(pipeline.image_encoder.encode_images(pils, progress=False))
            for key, v in zip(todo, vecs, strict=True):
                self._cache[key] = v
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        out = []
        for key in keys:
            v = self._cache.get(key)
            if v is not None:
                self._cache.move_to_end(key)
            out.append(v)
        return out

    def filter(self, query: RetrievalQuery, hits: Sequence[Hit], pipeline: Pipeline) -> list[Hit]:
        hits = list(hits)
        q_img, q_cross = query.vectors.get("image"), query.vectors.get("cross")
        if q_img is not None and self.purify_query and query.image is not None:
            q_img = self.embeddings(pipeline, [query.image])[0]
        todo = [i for i, h in enumerate(hits) if h.image and (("image" in h.scores and q_img is not None)
                                                              or ("cross" in h.scores and q_cross is not None))]
        if not todo:
            return hits
        vecs = dict(zip(todo, self.embeddings(pipeline, [hits[i].image for i in todo]), strict=True))
        sims = [dict(h.scores) for h in hits]
        for i, v in vecs.items():
            if v is None:
                continue
            for signal, q in (("image", q_img), ("cross", q_cross)):
                if signal in sims[i] and q is not None:
                    sims[i][signal] = float(np.dot(normalise(q), v))
        if all(v is None for v in vecs.values()):
            return hits
        fused = pipeline.fusion.fuse(sims)
        out = []
        for i, h in enumerate(hits):
            new = dataclasses.replace(h, score=float(fused[i]), scores=sims[i])
            if vecs.get(i) is not None:
                parts = [f"{s} {h.scores[s]:.3f}->{sims[i][s]:.3f}" for s in ("image", "cross") if s in h.scores
                         and sims[i][s] != h.scores[s]]
                new = new.with_note(f"purify: {', '.join(parts)}; score {h.score:.3f}->{fused[i]:.3f}")
            out.append(new)
        order = sorted(range(len(out)), key=lambda i: -out[i].score)
        return [out[i] for i in order]


class PurifyGuard(_Purification):
    """Replace every incoming image by its purified copy (see the module docs).

    ``quality``: JPEG quality 1-95. ``sigma``: blur radius in px (0: none).
    """

    name = "purify_ingest"
    stage = "ingest"

    def purified_ref(self, image: ImageRef) -> ImageRef:
        return ImageRef.from_pil(self.purified(image), source=f"{image.source} (purified)")

    def check(self, item: IngestItem, pipeline: Pipeline) -> Verdict:
        if item.image is None:
            return Verdict.ok()
        return Verdict.replace_image(self.purified_ref(item.image),
                                     f"purified (JPEG q{self.quality}, blur sigma {self.sigma:g} px)")
