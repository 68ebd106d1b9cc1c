"""Object proposals for MrM: which regions of a target image can be masked, one object per query.

MrM (black-box membership inference against multimodal RAG) masks one *object* of the target
image at a time, small enough that retrieval still finds a stored original. A proposer turns an
image into candidate object masks; every proposer's masks then pass the same area filter
(:data:`MIN_AREA`–:data:`MAX_AREA` of the image, default 2–25%).

``segmentation`` (default, no weights)
    Classical graph-based segmentation (Felzenszwalb & Huttenlocher 2004, ``skimage.segmentation
    .felzenszwalb``; or SLIC superpixels, Achanta et al. 2012): regions touching more than
    ``max_border`` of the image border are background; adjacent regions of similar mean colour
    are merged (``merge_colour``, a distance in RGB 0–255); the rest is kept if its area is in
    range and its solidity (area / convex-hull area, ``skimage.measure.regionprops``) is at least
    ``min_solidity``. Images larger than ``max_side`` (default 256 px) are segmented downscaled and
    the masks scaled back; regions under ``min_fraction`` (0.5%) of the image are fragments, never
    proposed. Labels come from an overlapping annotation, else the counterfact proxy
    (see :mod:`sandbox.attacks.counterfact`).

    *Resolution.* Felzenszwalb's ``scale`` and ``min_size`` act on pixel counts (the merge threshold
    is ``scale / region size``), so the same settings segment the same scene differently at 96 px and
    at 256 px: regions grow relative to the image as it gets smaller. By default images up to
    ``max_side`` are segmented at their own size (the settings of the ready-made scenarios were chosen
    that way and their figures depend on it). ``work_side: N`` makes the settings
    resolution-independent: every image is resampled (up or down) to ``N`` pixels on its longer side
    before segmentation, so a scene gives the same masks at any resolution.
``annotations`` (upper bound)
    The item's own object annotations (COCO instances, synthetic scenes): the mask, else the box.
    ``label_keys`` builds the label from annotation attributes (e.g. ``[colour, shape]`` for
    synthetic scenes), else the annotation's label.
``transformers``
    A local detector or segmenter through ``transformers.pipeline`` (``task`` ``image-segmentation``
    or ``object-detection``; ``model`` a local folder; nothing is downloaded). Labels are the model's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from corpora.annotated import AnnotatedImage
from heterag import ImageRef, InvalidInputError, UnknownNameError

log = logging.getLogger(__name__)

#: Default share of the image a mask may cover.
MIN_AREA, MAX_AREA = 0.02, 0.25
#: Images smaller than this (either side, pixels) cannot be masked meaningfully.
MIN_SIDE = 16


class TargetError(InvalidInputError):
    """A target image that cannot be attacked (corrupt, too small); recorded per target, never fatal to a run."""


@dataclass(frozen=True)
class ObjectProposal:
    """One candidate object: boolean ``mask`` ``(height, width)``, its ``label`` (None: ask the proxy),
    ``area`` (share of the image, 0–1) and which proposer made it."""

    mask: np.ndarray
    label: str | None
    area: float
    source: str


def image_array(image: ImageRef) -> np.ndarray:
    """RGB uint8 ``(height, width, 3)`` of ``image``; :class:`TargetError` if it is corrupt or too small."""
    try:
        arr = np.asarray(image.to_pil().convert("RGB"))
    except Exception as exc:  # PIL raises many kinds on truncated data
        raise TargetError(f"target image {image.source or ''} cannot be decoded: {exc}") from None
    if min(arr.shape[:2]) < MIN_SIDE:
        raise TargetError(f"target image {image.source or ''} is {arr.shape[1]}x{arr.shape[0]} pixels: too small to mask "
                          f"(needs at least {MIN_SIDE} on each side)")
    return arr


def apply_mask(arr: np.ndarray, mask: np.ndarray) -> ImageRef:
    """The image with the masked pixels set to 0 (black), as a PNG :class:`ImageRef`."""
    out = arr.copy()
    out[mask] = 0
    return ImageRef.from_array(out, source="masked")


class Proposer(Protocol):
    name: str

    def propose(self, item: AnnotatedImage, arr: np.ndarray) -> list[ObjectProposal]:
        """Candidate object masks of ``item`` (image already decoded to ``arr``)."""


def filter_area(props: Sequence[ObjectProposal], min_area: float, max_area: float) -> list[ObjectProposal]:
    return [p for p in props if min_area <= p.area <= max_area]


class AnnotationProposer:
    """The item's annotated objects (upper-bound mode)."""

    name = "annotations"

    def __init__(self, label_keys: Sequence[str] | None = None):
        self.label_keys = list(label_keys) if label_keys else None

    def _label(self, obj: Any) -> str:
        if self.label_keys and all(k in obj.attributes for k in self.label_keys):
            return " ".join(str(obj.attributes[k]) for k in self.label_keys)
        return str(obj.label)

    def propose(self, item: AnnotatedImage, arr: np.ndarray) -> list[ObjectProposal]:
        h, w = arr.shape[:2]
        out = []
        for obj in item.objects:
            if obj.mask is not None and obj.mask.shape == (h, w):
                mask = np.asarray(obj.mask, dtype=bool)
            else:
                x0, y0, x1, y1 = obj.box
                mask = np.zeros((h, w), dtype=bool)
                mask[max(0, y0):min(h, y1), max(0, x0):min(w, x1)] = True
            if mask.any():
                out.append(ObjectProposal(mask, self._label(obj), float(mask.mean()), self.name))
        return out


class SegmentationProposer:
    """Classical segmentation regions as object proposals (see the module docstring)."""

    name = "segmentation"

    def __init__(self, method: str = "felzenszwalb", scale: float = 200.0, sigma: float = 0.5, min_size: int = 20,
                 n_segments: int = 40, compactness: float = 10.0, max_border: float = 0.3, merge_colour: float = 30.0,
                 min_solidity: float = 0.5, max_side: int = 256, min_fraction: float = 0.005, work_side: int | None = None):
        if method not in ("felzenszwalb", "slic"):
            raise UnknownNameError("segmentation method", str(method), ("felzenszwalb", "slic"))
        self.method, self.scale, self.sigma, self.min_size = method, scale, sigma, min_size
        self.n_segments, self.compactness = n_segments, compactness
        self.max_border, self.merge_colour, self.min_solidity = max_border, merge_colour, min_solidity
        self.max_side, self.min_fraction, self.work_side = max_side, min_fraction, work_side

    def segments(self, arr: np.ndarray) -> np.ndarray:
        from skimage import segmentation

        if self.method == "slic":
            return segmentation.slic(arr, n_segments=self.n_segments, compactness=self.compactness, start_label=0)
        return segmentation.felzenszwalb(arr, scale=self.scale, sigma=self.sigma, min_size=self.min_size)

    def _merge(self, labels: np.ndarray, arr: np.ndarray) -> np.ndarray:
        """Union adjacent regions whose mean colours are within ``merge_colour`` (one pass, union-find)."""
        n = int(labels.max()) + 1
        flat = arr.reshape(-1, 3).astype(np.float64)
        counts = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
        means = np.stack([np.bincount(labels.ravel(), flat[:, c], minlength=n) for c in range(3)], 1) / np.maximum(counts, 1)[:, None]
        pairs = set()
        for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
            d = a != b
            pairs.update(zip(a[d].tolist(), b[d].tolist(), strict=True))
        parent = list(range(n))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for a, b in pairs:
            if np.linalg.norm(means[a] - means[b]) < self.merge_colour:
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
        roots = np.array([find(i) for i in range(n)])
        return roots[labels]

    def propose(self, item: AnnotatedImage, arr: np.ndarray) -> list[ObjectProposal]:
        from PIL import Image
        from skimage.measure import regionprops

        full_h, full_w = arr.shape[:2]
        small = arr
        side = self.work_side or (self.max_side if max(full_h, full_w) > self.max_side else None)
        if side and side != max(full_h, full_w):  # segment a resampled copy; masks are scaled back
            f = side / max(full_h, full_w)
            small = np.asarray(Image.fromarray(arr).resize((max(1, round(full_w * f)), max(1, round(full_h * f))),
                                                           Image.BILINEAR))
        labels = self._merge(self.segments(small), small)
        h, w = labels.shape
        border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        border_counts = np.bincount(border, minlength=int(labels.max()) + 1)
        perimeter = 2 * (h + w)
        out = []
        for rp in regionprops(labels + 1):
            lab = rp.label - 1
            if rp.area < self.min_fraction * h * w or border_counts[lab] > self.max_border * perimeter:
                continue  # a fragment, or background
            if rp.solidity < self.min_solidity:
                continue
            mask = labels == lab
            if (h, w) != (full_h, full_w):
                mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((full_w, full_h), Image.NEAREST)) > 127
            out.append(ObjectProposal(mask, None, float(mask.mean()), self.name))
        return out


class TransformersProposer:
    """Masks from a local ``transformers`` segmenter or detector (boxes become rectangular masks)."""

    name = "transformers"

    def __init__(self, model: str, task: str = "image-segmentation", threshold: float = 0.5):
        if task not in ("image-segmentation", "object-detection"):
            raise UnknownNameError("transformers task", str(task), ("image-segmentation", "object-detection"))
        if not Path(model).expanduser().is_dir():
            raise InvalidInputError(f"transformers proposer: model {model!r} is not a local folder (weights are never "
                                    "downloaded at run time)")
        from transformers import pipeline

        self.task, self.threshold = task, threshold
        self.pipe = pipeline(task, model=str(Path(model).expanduser()), device="cpu")

    def propose(self, item: AnnotatedImage, arr: np.ndarray) -> list[ObjectProposal]:
        from PIL import Image

        h, w = arr.shape[:2]
        img = Image.fromarray(arr)
        out = []
        if self.task == "object-detection":
            for d in self.pipe(img, threshold=self.threshold):
                b = d["box"]
                mask = np.zeros((h, w), dtype=bool)
                mask[max(0, int(b["ymin"])):min(h, int(b["ymax"]) + 1), max(0, int(b["xmin"])):min(w, int(b["xmax"]) + 1)] = True
                out.append(ObjectProposal(mask, str(d["label"]), float(mask.mean()), self.name))
        else:
            for d in self.pipe(img):
                if d.get("score") is not None and d["score"] < self.threshold:
                    continue
                mask = np.asarray(d["mask"].convert("L").resize((w, h))) > 127
                out.append(ObjectProposal(mask, str(d.get("label") or "") or None, float(mask.mean()), self.name))
        return out


PROPOSERS: dict[str, type] = {"segmentation": SegmentationProposer, "annotations": AnnotationProposer,
                              "transformers": TransformersProposer}


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SegmentationOptions(_Options):
    """Options of :class:`SegmentationProposer` (types and ranges checked before scikit-image sees them)."""

    method: Literal["felzenszwalb", "slic"] = "felzenszwalb"
    scale: float = Field(200.0, gt=0)
    sigma: float = Field(0.5, ge=0)
    min_size: int = Field(20, ge=1)
    n_segments: int = Field(40, ge=2)
    compactness: float = Field(10.0, gt=0)
    max_border: float = Field(0.3, ge=0, le=1)
    merge_colour: float = Field(30.0, ge=0)
    min_solidity: float = Field(0.5, ge=0, le=1)
    max_side: int = Field(256, ge=16)
    min_fraction: float = Field(0.005, ge=0, lt=1)
    work_side: int | None = Field(None, ge=16)


class AnnotationOptions(_Options):
    label_keys: list[str] | None = None


class TransformersOptions(_Options):
    model: str
    task: Literal["image-segmentation", "object-detection"] = "image-segmentation"
    threshold: float = Field(0.5, ge=0, le=1)


#: The options each proposer takes.
PROPOSER_OPTIONS: dict[str, type[_Options]] = {"segmentation": SegmentationOptions, "annotations": AnnotationOptions,
                                               "transformers": TransformersOptions}


def check_proposer_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options of proposer ``name`` validated (strict types, ranges, no unknown keys); raises
    :class:`ValueError` (an :class:`InvalidInputError`) with one line naming ``options.KEY``."""
    model = PROPOSER_OPTIONS.get(name) if isinstance(name, str) else None
    if model is None:
        raise UnknownNameError("object proposer", str(name), PROPOSERS)
    try:
        return model.model_validate(options).model_dump(exclude_unset=True)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err.get("loc", ()) if not str(p).startswith(("list[", "int", "float", "str")))
        msg = {"extra_forbidden": f"unknown option; choose from: {', '.join(model.model_fields)}",
               "missing": "missing required option"}.get(err.get("type", ""), err.get("msg", "invalid"))
        raise InvalidInputError(f"options.{key}: {msg}") from None


def make_proposer(name: str, **options: Any) -> Proposer:
    """A proposer by name (:data:`PROPOSERS`); unknown names list the choices, bad options (unknown, wrong type,
    out of range) raise :class:`InvalidInputError` naming the option."""
    cls = PROPOSERS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise UnknownNameError("object proposer", str(name), PROPOSERS)
    try:
        opts = check_proposer_options(name, options)
    except InvalidInputError as exc:
        raise InvalidInputError(f"object proposer {name!r}: {exc}") from None
    return cls(**opts)
