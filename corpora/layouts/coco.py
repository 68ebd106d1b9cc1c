"""The ``coco`` layout: COCO 2017, ``annotations/captions_<split>.json`` and/or
``annotations/instances_<split>.json`` with images in ``<split>/``.

Captions become the text, instances the objects (box, polygon or RLE mask, category name). See
:func:`iter_coco`; the mask helpers (:func:`polygon_mask`, :func:`rle_decode`, ...) live here too.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from heterag.core.documents import ItemError
from heterag.core.errors import InvalidInputError

from ..annotated import AnnotatedImage, ObjectAnnotation
from ..base import item_error, require_dir
from ._common import (
    ImageItem,
    _image_limits,
    _load_image,
    _safe_relative,
)

logger = logging.getLogger(__name__)

COCO_ANNOTATIONS_DIR = "annotations"
COCO_DEFAULT_SPLIT = "val2017"


#: The ``split`` that means every split of the folder (unless the folder has a split of that name).
ALL_SPLITS = "all"


def coco_splits(root: str | Path) -> list[str]:
    """The split names of a COCO folder (``train2017``, ``val2017``, ...), sorted: those with a
    ``captions_<split>.json`` or ``instances_<split>.json`` under ``root/annotations``."""
    return _coco_splits(Path(root))


def _coco_splits(root: Path) -> list[str]:
    """Splits with a ``captions_<split>.json`` or ``instances_<split>.json`` under ``root/annotations``."""
    ann = root / COCO_ANNOTATIONS_DIR
    if not ann.is_dir():
        return []
    splits: set[str] = set()
    for p in ann.iterdir():
        for kind in ("captions_", "instances_"):
            if p.is_file() and p.name.startswith(kind) and p.suffix == ".json" and len(p.stem) > len(kind):
                splits.add(p.stem[len(kind) :])
    return sorted(splits)


def iter_coco(
    path: str | Path,
    *,
    split: str | None = None,
    max_pixels: int | None = None,
    max_bytes: int | None = None,
) -> Iterator[ImageItem]:
    """One item per image of a COCO 2017-style folder, in image-id order.

    Reads ``annotations/captions_<split>.json`` and/or ``annotations/instances_<split>.json``
    (at least one must exist) once, at call time; images (``<split>/<file_name>``) are loaded
    lazily, one per item. ``split`` defaults to the only split present, else ``val2017``; ``"all"`` reads
    every split, one after another in name order (ids carry the split, so they stay distinct).

    - ``id``: ``"coco-<split>-<image id>"``; ``metadata``: ``split``, ``image_id``, ``file_name``.
    - ``text``: the image's captions (annotation-id order), one per line.
    - ``objects``: one :class:`ObjectAnnotation` per instance: ``label`` = category name, ``box``
      = the COCO ``[x, y, w, h]`` box as integer pixels ``(floor x, floor y, ceil(x+w), ceil(y+h))``
      clipped to the image, ``mask`` from the polygons (pixel-centre sampling, polygons united)
      or from the RLE (uncompressed ``counts`` list or compressed COCO string), ``attributes``
      ``supercategory``, ``iscrowd`` and ``annotation_id``. An instance whose box is empty after
      clipping is dropped with a warning. Degenerate polygons (under 3 points) are ignored.

    A malformed annotation file (not JSON, no ``images``/``annotations`` list, malformed
    ``categories``) raises :class:`InvalidInputError` at once. A malformed image record, a
    missing or unusable image file, an image whose size differs from its record, or a
    malformed annotation of an image (bad box, polygon, RLE, unknown category) is an
    :class:`ItemError` naming the annotation file and record index, and that image is skipped
    (partial ground truth would mislead evaluation). Annotations of unknown images are
    :class:`ItemError` too.
    """
    root = require_dir(Path(path), "COCO folder")
    splits = _coco_splits(root)
    if not splits:
        raise InvalidInputError(
            f"{root}: no COCO annotations (expected {COCO_ANNOTATIONS_DIR}/captions_<split>.json "
            f"or {COCO_ANNOTATIONS_DIR}/instances_<split>.json)"
        )
    if split is None:
        split = splits[0] if len(splits) == 1 else COCO_DEFAULT_SPLIT
        if split not in splits:
            raise InvalidInputError(f"{root}: several COCO splits ({', '.join(splits)}); choose one with split=")
    elif split == ALL_SPLITS and split not in splits:
        datasets = [_CocoSplit.read(root, s) for s in splits]  # every annotation file checked at call time
        limits = _image_limits(max_pixels, max_bytes)
        for dataset in datasets:
            _log_split(root, dataset)
        return (item for dataset in datasets for item in dataset.items(limits))
    elif split not in splits:
        raise InvalidInputError(
            f"{root}: no annotations for split {split!r} in {COCO_ANNOTATIONS_DIR}/ (splits present: {', '.join(splits)})"
        )
    dataset = _CocoSplit.read(root, split)
    _log_split(root, dataset)
    return dataset.items(_image_limits(max_pixels, max_bytes))


def _log_split(root: Path, dataset: _CocoSplit) -> None:
    logger.info(
        "%s: COCO %s, %d images, %d captions, %d instances",
        root, dataset.split, len(dataset.images), sum(len(v) for v in dataset.captions.values()),
        sum(len(v) for v in dataset.instances.values()),
    )


class _CocoSplit:
    """The parsed annotation files of one COCO split (records validated, images not yet loaded)."""

    def __init__(self, root: Path, split: str) -> None:
        self.root = root
        self.split = split
        self.images: dict[int, tuple[str, dict[str, Any]]] = {}  # image id -> (source, record)
        self.captions: dict[int, list[tuple[int, str]]] = defaultdict(list)  # image id -> [(ann id, caption)]
        self.instances: dict[int, list[tuple[str, dict[str, Any]]]] = defaultdict(list)  # image id -> [(source, ann)]
        self.categories: dict[int, tuple[str, str]] = {}  # category id -> (name, supercategory)
        self.bad_images: dict[int, ItemError] = {}
        self.orphans: list[ItemError] = []

    @classmethod
    def read(cls, root: Path, split: str) -> _CocoSplit:
        self = cls(root, split)
        ann_dir = root / COCO_ANNOTATIONS_DIR
        captions_path, instances_path = ann_dir / f"captions_{split}.json", ann_dir / f"instances_{split}.json"
        parsed = {p: _read_coco_json(p, instances=p == instances_path) for p in (captions_path, instances_path) if p.is_file()}
        for p, data in parsed.items():
            self._add_images(p, data["images"])
        if instances_path in parsed:
            self._add_categories(instances_path, parsed[instances_path].get("categories", []))
        for p, data in parsed.items():
            label = f"{COCO_ANNOTATIONS_DIR}/{p.name}"
            for index, ann in enumerate(data["annotations"]):
                source = f"{label}:annotations[{index}]"
                if p == captions_path:
                    self._add_caption(source, ann)
                else:
                    self._add_instance(source, ann)
        return self

    def _add_images(self, path: Path, records: list[Any]) -> None:
        label = f"{COCO_ANNOTATIONS_DIR}/{path.name}"
        for index, record in enumerate(records):
            source = f"{label}:images[{index}]"
            try:
                if not isinstance(record, dict):
                    raise InvalidInputError(f"expected an object, got {type(record).__name__}")
                image_id = _int_field(record, "id")
                _safe_relative(record.get("file_name"), self.root / self.split, "file_name")
                for key in ("width", "height"):
                    if _int_field(record, key) <= 0:
                        raise InvalidInputError(f"{key!r} must be positive")
            except InvalidInputError as exc:
                self.orphans.append(item_error(source, exc))
                continue
            if image_id in self.images:
                first_source, first = self.images[image_id]
                if (first["file_name"], first["width"], first["height"]) != (
                    record["file_name"], record["width"], record["height"]
                ):
                    self.bad_images[image_id] = ItemError(
                        source, f"image id {image_id} is also {first_source} with a different file name or size"
                    )
                continue
            self.images[image_id] = (source, record)

    def _add_categories(self, path: Path, records: Any) -> None:
        where = f"{path}: categories"
        if not isinstance(records, list):
            raise InvalidInputError(f"{where} must be a list")
        for index, record in enumerate(records):
            try:
                if not isinstance(record, dict):
                    raise InvalidInputError(f"expected an object, got {type(record).__name__}")
                cat_id = _int_field(record, "id")
                name = record.get("name")
                if not isinstance(name, str) or not name.strip():
                    raise InvalidInputError("'name' must be a non-empty string")
                supercategory = record.get("supercategory") or ""
                if not isinstance(supercategory, str):
                    raise InvalidInputError("'supercategory' must be a string")
            except InvalidInputError as exc:
                raise InvalidInputError(f"{where}[{index}]: {exc}") from None
            if cat_id in self.categories:
                raise InvalidInputError(f"{where}[{index}]: duplicate category id {cat_id}")
            self.categories[cat_id] = (name.strip(), supercategory.strip())

    def _image_of(self, source: str, ann: Any) -> int | None:
        """The known image id an annotation belongs to; records an orphan error and returns None otherwise."""
        try:
            if not isinstance(ann, dict):
                raise InvalidInputError(f"expected an object, got {type(ann).__name__}")
            image_id = _int_field(ann, "image_id")
        except InvalidInputError as exc:
            self.orphans.append(item_error(source, exc))
            return None
        if image_id not in self.images:
            self.orphans.append(ItemError(source, f"image_id {image_id} is not in the images list"))
            return None
        return image_id

    def _fail(self, image_id: int, source: str, message: str) -> None:
        if image_id not in self.bad_images:
            self.bad_images[image_id] = ItemError(source, f"{message}; image {image_id} skipped")

    def _add_caption(self, source: str, ann: Any) -> None:
        image_id = self._image_of(source, ann)
        if image_id is None:
            return
        caption = ann.get("caption")
        if not isinstance(caption, str):
            self._fail(image_id, source, f"'caption' must be a string, got {type(caption).__name__}")
            return
        ann_id = ann.get("id")
        order = ann_id if isinstance(ann_id, int) and not isinstance(ann_id, bool) else 2**63
        if caption.strip():
            self.captions[image_id].append((order, " ".join(caption.split())))

    def _add_instance(self, source: str, ann: Any) -> None:
        image_id = self._image_of(source, ann)
        if image_id is not None:
            self.instances[image_id].append((source, ann))

    def items(self, limits: Mapping[str, int]) -> Iterator[ImageItem]:
        yield from self.orphans
        image_dir = self.root / self.split
        for image_id in sorted(self.images):
            if image_id in self.bad_images:
                yield self.bad_images[image_id]
                continue
            yield self._item(image_id, image_dir, limits)

    def _item(self, image_id: int, image_dir: Path, limits: Mapping[str, int]) -> ImageItem:
        source, record = self.images[image_id]
        rel = PurePosixPath(record["file_name"]).as_posix()
        label = f"{self.split}/{rel}"
        image = _load_image(image_dir / rel, label, limits)
        if isinstance(image, ItemError):
            return image
        width, height = record["width"], record["height"]
        if (image.width, image.height) != (width, height):
            return ItemError(label, f"image is {image.width}x{image.height} but {source} says {width}x{height}")
        objects: list[ObjectAnnotation] = []
        for ann_source, ann in self.instances.get(image_id, []):
            try:
                obj = self._object(ann, width, height)
            except InvalidInputError as exc:
                return ItemError(ann_source, f"{exc}; image {image_id} skipped")
            if obj is None:
                logger.warning("%s: instance box is empty inside the %dx%d image; dropped", ann_source, width, height)
            else:
                objects.append(obj)
        captions = [c for _, c in sorted(self.captions.get(image_id, []), key=lambda x: x[0])]
        return AnnotatedImage(
            id=f"coco-{self.split}-{image_id}",
            image=image,
            text="\n".join(captions),
            objects=tuple(objects),
            metadata={"split": self.split, "image_id": image_id, "file_name": rel},
        )

    def _object(self, ann: dict[str, Any], width: int, height: int) -> ObjectAnnotation | None:
        cat_id = _int_field(ann, "category_id")
        if cat_id not in self.categories:
            raise InvalidInputError(f"category_id {cat_id} is not in the categories list")
        name, supercategory = self.categories[cat_id]
        iscrowd = ann.get("iscrowd", 0)
        if isinstance(iscrowd, bool) or iscrowd not in (0, 1):
            raise InvalidInputError(f"'iscrowd' must be 0 or 1, got {iscrowd!r}")
        mask = decode_segmentation(ann.get("segmentation"), height, width)
        if "bbox" in ann:
            box = coco_box(ann["bbox"], width, height)
        elif mask is not None:
            box = mask_box(mask)
        else:
            raise InvalidInputError("no 'bbox' and no 'segmentation'")
        if box is None:
            return None
        attributes = {"iscrowd": str(int(iscrowd))}
        if supercategory:
            attributes["supercategory"] = supercategory
        if "id" in ann:
            attributes["annotation_id"] = str(ann["id"])
        return ObjectAnnotation(label=name, box=box, mask=mask, attributes=attributes)


def _read_coco_json(path: Path, *, instances: bool) -> dict[str, Any]:
    """Parse a COCO annotation file and check its top-level shape; raise naming the file."""
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path}: not valid UTF-8") from None
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path}: expected a JSON object with 'images' and 'annotations', got {type(data).__name__}")
    for key in ("images", "annotations", *(("categories",) if instances else ())):
        if not isinstance(data.get(key), list):
            raise InvalidInputError(f"{path}: {key!r} must be a list" + ("" if key in data else " (missing)"))
    return data


def _int_field(record: Mapping[str, Any], key: str) -> int:
    value = record.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInputError(f"{key!r} must be an integer, got {value!r}")
    return value


def _finite_numbers(values: Any, what: str) -> list[float]:
    if not isinstance(values, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise InvalidInputError(f"{what} must be a list of numbers")
    out = [float(v) for v in values]
    if not all(math.isfinite(v) for v in out):
        raise InvalidInputError(f"{what} has a non-finite number")
    return out


def coco_box(bbox: Any, width: int, height: int) -> tuple[int, int, int, int] | None:
    """A COCO ``[x, y, w, h]`` float box as integer pixels ``(x0, y0, x1, y1)`` (x1/y1 exclusive).

    ``x0 = floor(x)``, ``x1 = ceil(x + w)`` (the pixels the box touches), clipped to the image;
    ``None`` when nothing of the box is left inside the image. Raises
    :class:`InvalidInputError` for a malformed box (not 4 finite numbers, negative size).
    """
    values = _finite_numbers(bbox, "'bbox'")
    if len(values) != 4:
        raise InvalidInputError(f"'bbox' must have 4 numbers [x, y, w, h], got {len(values)}")
    x, y, w, h = values
    if w < 0 or h < 0:
        raise InvalidInputError(f"'bbox' has a negative width or height: {bbox}")
    x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
    x1, y1 = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The tight box ``(x0, y0, x1, y1)`` (exclusive) of a boolean mask's pixels, or ``None`` if it is empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray | None:
    """A COCO ``segmentation`` as a boolean ``(height, width)`` mask; ``None`` when there is none.

    Accepts a list of polygons (``[[x1, y1, x2, y2, ...], ...]``, united), an uncompressed RLE
    (``{"counts": [int, ...], "size": [h, w]}``) or a compressed RLE (``counts`` a COCO string).
    Raises :class:`InvalidInputError` for a malformed value or an RLE whose size is not the image's.
    """
    if segmentation is None or segmentation == []:
        return None
    if isinstance(segmentation, list):
        mask = np.zeros((height, width), dtype=bool)
        for index, polygon in enumerate(segmentation):
            coords = _finite_numbers(polygon, f"'segmentation'[{index}]")
            if len(coords) % 2:
                raise InvalidInputError(f"'segmentation'[{index}] has an odd number of coordinates ({len(coords)})")
            if len(coords) < 6:
                logger.debug("ignoring a degenerate polygon with %d coordinates", len(coords))
                continue
            mask |= polygon_mask(coords, height, width)
        return mask
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        if (
            not isinstance(size, list) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
        ):
            raise InvalidInputError(f"RLE 'size' must be [height, width], got {size!r}")
        if tuple(size) != (height, width):
            raise InvalidInputError(f"RLE 'size' {size} is not the image's [height, width] [{height}, {width}]")
        counts = segmentation.get("counts")
        if isinstance(counts, str):
            counts = rle_from_string(counts)
        elif not isinstance(counts, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            raise InvalidInputError("RLE 'counts' must be a list of integers or a compressed COCO string")
        return rle_decode(counts, height, width)
    raise InvalidInputError(f"'segmentation' must be a list of polygons or an RLE object, got {type(segmentation).__name__}")


def polygon_mask(coords: Sequence[float], height: int, width: int) -> np.ndarray:
    """Rasterise one polygon ``[x1, y1, x2, y2, ...]`` (pixel coordinates, pixel ``i`` spans ``[i, i+1)``).

    A pixel is inside when its centre is (even–odd rule; a centre exactly on a left/top edge
    counts, on a right/bottom edge does not), so a pixel-aligned rectangle covers exactly its
    area. PIL's ``ImageDraw.polygon`` is not used because it truncates float vertices to
    integers, which shifts COCO's sub-pixel polygons by up to a pixel.
    """
    pts = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    x, y = pts[:, 0], pts[:, 1]
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    mask = np.zeros((height, width), dtype=bool)
    row0 = max(0, math.floor(float(y.min()) - 0.5))
    row1 = min(height, math.ceil(float(y.max()) + 0.5))
    if row1 <= row0:
        return mask
    yc = (np.arange(row0, row1, dtype=np.float64) + 0.5)[:, None]
    ylo, yhi = np.minimum(y, yn), np.maximum(y, yn)
    crosses = (ylo <= yc) & (yc < yhi)  # half-open: a vertex on the scanline counts once
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = x + (yc - y) * (xn - x) / (yn - y)
    xs = np.sort(np.where(crosses, xs, np.inf), axis=1)
    if xs.shape[1] % 2:
        xs = np.concatenate([xs, np.full((xs.shape[0], 1), np.inf)], axis=1)
    starts, ends = xs[:, 0::2], xs[:, 1::2]
    valid = np.isfinite(starts) & np.isfinite(ends)
    rows = np.broadcast_to(np.arange(xs.shape[0])[:, None], starts.shape)[valid]
    # pixel i is filled when start <= i + 0.5 < end
    first = np.clip(np.ceil(starts[valid] - 0.5), 0, width).astype(np.int64)
    stop = np.clip(np.ceil(ends[valid] - 0.5), 0, width).astype(np.int64)
    diff = np.zeros((xs.shape[0], width + 1), dtype=np.int32)
    np.add.at(diff, (rows, first), 1)
    np.add.at(diff, (rows, stop), -1)
    mask[row0:row1] = np.cumsum(diff[:, :width], axis=1) > 0
    return mask


def rle_from_string(text: str) -> list[int]:
    """Decode a compressed COCO RLE string into run lengths (the format of pycocotools' ``rleFrString``).

    Each count is written in 5-bit groups (low bits first) as characters ``chr(48 + group)``,
    with ``0x20`` meaning "more groups follow" and ``0x10`` in the last group the sign; from the
    fourth count on, each is stored as the difference to the count two places before.
    """
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value = 0
        shift = 0
        more = True
        while more:
            if pos >= len(text):
                raise InvalidInputError("compressed RLE string ends in the middle of a count")
            c = ord(text[pos]) - 48
            if not 0 <= c < 64:
                raise InvalidInputError(f"compressed RLE string has an invalid character {text[pos]!r} at {pos}")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def rle_to_string(counts: Sequence[int]) -> str:
    """Encode run lengths as a compressed COCO RLE string (the inverse of :func:`rle_from_string`)."""
    out: list[str] = []
    for i, count in enumerate(counts):
        value = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = value & 0x1F
            value >>= 5
            more = value != -1 if c & 0x10 else value != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def rle_decode(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """Expand COCO run lengths (column-major, alternating background/foreground, background first) to a mask."""
    if any(c < 0 for c in counts):
        raise InvalidInputError("RLE counts must not be negative")
    total = sum(counts)
    if total != height * width:
        raise InvalidInputError(f"RLE counts sum to {total}, not height*width = {height * width}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, np.asarray(counts, dtype=np.int64))
    return flat.reshape(width, height).T.copy()


def rle_encode(mask: np.ndarray) -> list[int]:
    """Run lengths of a boolean mask in COCO order (column-major, starting with a background run)."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return [int(r) for r in runs]


class CocoLayout:
    """:class:`~corpora.layouts.LayoutReader` for a COCO 2017 folder (see :func:`iter_coco`); takes ``split``."""

    name = "coco"
    title = "COCO"
    description = "a COCO folder with annotations/captions_<split>.json or instances_<split>.json"
    images = True
    splits = True

    def detect(self, path: Path) -> bool:
        """True for a folder with ``annotations/captions_*.json`` or ``annotations/instances_*.json``."""
        return path.is_dir() and bool(_coco_splits(path))

    def read(self, path: Path, **options: Any) -> Iterator[ImageItem]:
        return iter_coco(path, **options)


READER = CocoLayout()
