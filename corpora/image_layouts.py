"""Loaders for image corpora on disk, all yielding :class:`~corpora.annotated.AnnotatedImage`.

Supported layouts (:func:`detect_image_layout` tells them apart, :func:`iter_image_layout`
dispatches):

``captions``
    A folder with ``captions.jsonl`` / ``captions.csv`` (or Hugging Face imagefolder's
    ``metadata.jsonl`` / ``metadata.csv``) naming each image (``image``, ``file_name`` or
    ``path``: relative to the folder) and its ``caption`` (or ``text``). Other scalar fields
    become metadata. See :func:`iter_caption_folder`.
``image_folder``
    Any other folder holding images: every image, recursively, text empty. See
    :func:`iter_image_folder`.
``coco``
    The COCO 2017 layout: ``annotations/captions_<split>.json`` and/or
    ``annotations/instances_<split>.json`` with images in ``<split>/``. Captions become the
    text, instances the objects (box, polygon or RLE mask, category name). See :func:`iter_coco`.
``vqa_rad``
    VQA-RAD: ``vqa_rad.json`` (question–answer records) and ``images/``. One item per image
    with its QA pairs. See :func:`iter_vqa_rad` and :func:`split_vqa_rad`.
``medmnist``
    A MedMNIST ``.npz`` (``<split>_images`` / ``<split>_labels``). See :func:`iter_medmnist`.

Every loader validates its input: a problem with the layout as a whole (missing folder,
unreadable annotation file, CSV without a caption column) raises
:class:`~heterag.errors.InvalidInputError` at call time, naming the file; a problem with one
item (missing or corrupt image, a line that is not JSON, a malformed annotation) is yielded as
an :class:`~heterag.documents.ItemError` naming the file and line/record, and the rest loads.
Images are opened (and validated) lazily, one item at a time, through
:class:`~heterag.images.ImageRef`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from heterag.documents import RESERVED_METADATA_KEYS, ItemError, MetadataValue, validate_metadata
from heterag.errors import InvalidInputError
from heterag.images import ImageRef

from .annotated import AnnotatedImage, ObjectAnnotation, QAPair
from .base import default_data_dir, item_error, iter_jsonl, require_dir
from .beir import is_beir_dir

logger = logging.getLogger(__name__)

#: What image loaders yield: an item or the reason one was skipped.
ImageItem = AnnotatedImage | ItemError

#: File suffixes treated as images (compared case-insensitively).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

#: Caption files looked for, in this order of precedence (the first one present is used).
CAPTION_FILES = ("captions.jsonl", "captions.csv", "metadata.jsonl", "metadata.csv")
#: Keys naming the image in a caption record, and keys holding its caption (first present wins).
IMAGE_KEYS = ("image", "file_name", "path")
CAPTION_KEYS = ("caption", "text")

#: Layout names returned by :func:`detect_image_layout`.
LAYOUT_CAPTIONS = "captions"
LAYOUT_IMAGE_FOLDER = "image_folder"
LAYOUT_COCO = "coco"
LAYOUT_VQA_RAD = "vqa_rad"
LAYOUT_MEDMNIST = "medmnist"
LAYOUTS = (LAYOUT_CAPTIONS, LAYOUT_COCO, LAYOUT_VQA_RAD, LAYOUT_MEDMNIST, LAYOUT_IMAGE_FOLDER)

COCO_ANNOTATIONS_DIR = "annotations"
COCO_DEFAULT_SPLIT = "val2017"

VQA_RAD_FILE = "vqa_rad.json"
VQA_RAD_IMAGES = "images"
VQA_RAD_ANSWER_TYPES = frozenset({"CLOSED", "OPEN"})

#: Per-dataset defaults for MedMNIST files, keyed by file stem: (label names, text prefix).
MEDMNIST_DEFAULTS: dict[str, tuple[dict[int, str], str]] = {
    "pneumoniamnist": ({0: "normal", 1: "pneumonia"}, "Chest X-ray"),
}


# --------------------------------------------------------------------------- dispatch


def detect_image_layout(path: str | Path) -> str | None:
    """Name the image layout at ``path`` (one of :data:`LAYOUTS`), or ``None`` if it is none of them.

    ``None`` (for a missing path, a BEIR folder, a folder without images, a text file) lets the
    caller fall back to the text loaders. Checked in this order: BEIR folder (``None``), VQA-RAD
    (``vqa_rad.json`` + ``images/``), COCO (``annotations/captions_*.json`` or
    ``annotations/instances_*.json``), caption folder (``captions.jsonl``/``.csv``, or an HF
    ``metadata.jsonl``/``.csv`` next to at least one image), MedMNIST (a ``.npz`` file, or a
    folder without images whose only data file is one ``.npz``), plain image folder.
    """
    path = Path(path)
    if path.is_file():
        return LAYOUT_MEDMNIST if path.suffix.lower() == ".npz" else None
    if not path.is_dir() or is_beir_dir(path):
        return None
    if (path / VQA_RAD_FILE).is_file() and (path / VQA_RAD_IMAGES).is_dir():
        return LAYOUT_VQA_RAD
    if _coco_splits(path):
        return LAYOUT_COCO
    has_image = _first_image(path) is not None
    if any((path / name).is_file() for name in CAPTION_FILES[:2]):
        return LAYOUT_CAPTIONS
    if has_image and any((path / name).is_file() for name in CAPTION_FILES[2:]):
        return LAYOUT_CAPTIONS
    if has_image:
        return LAYOUT_IMAGE_FOLDER
    if len(_npz_files(path)) == 1:
        return LAYOUT_MEDMNIST
    return None


def iter_image_layout(path: str | Path, *, split: str | None = None, **kwargs: Any) -> Iterator[ImageItem]:
    """Stream the items of the image layout at ``path`` (see :func:`detect_image_layout`).

    ``split`` picks the COCO split (default: the only one, else ``val2017``) or the MedMNIST
    split (default ``"train"``); giving it for another layout is an error. Other keyword
    arguments go to the layout's loader (e.g. ``max_pixels``, ``label_names``). Raises
    :class:`InvalidInputError` at once, not on first iteration, if ``path`` does not exist, is
    not a supported layout, or the layout is broken as a whole.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path} does not exist")
    layout = detect_image_layout(path)
    if layout is None:
        raise InvalidInputError(
            f"{path}: not an image layout (expected a folder of images, a captions.jsonl/.csv folder, "
            "a COCO folder with annotations/, a VQA-RAD folder or a MedMNIST .npz)"
        )
    if split is not None and layout not in (LAYOUT_COCO, LAYOUT_MEDMNIST):
        raise InvalidInputError(f"{path}: split={split!r} only applies to COCO and MedMNIST layouts, this is {layout!r}")
    logger.info("%s: %s image layout", path, layout)
    if layout == LAYOUT_CAPTIONS:
        return iter_caption_folder(path, **kwargs)
    if layout == LAYOUT_IMAGE_FOLDER:
        return iter_image_folder(path, **kwargs)
    if layout == LAYOUT_COCO:
        return iter_coco(path, split=split, **kwargs)
    if layout == LAYOUT_VQA_RAD:
        return iter_vqa_rad(path, **kwargs)
    if path.is_dir():
        path = _npz_files(path)[0]
    return iter_medmnist(path, split=split or "train", **kwargs)


# --------------------------------------------------------------------------- shared helpers


def _image_limits(max_pixels: int | None, max_bytes: int | None) -> dict[str, int]:
    """Keyword arguments for :meth:`ImageRef.from_path`: only the limits the caller set."""
    limits: dict[str, int] = {}
    if max_pixels is not None:
        limits["max_pixels"] = max_pixels
    if max_bytes is not None:
        limits["max_bytes"] = max_bytes
    return limits


def _load_image(path: Path, source: str, limits: Mapping[str, int], what: str | None = None) -> ImageRef | ItemError:
    """Open and validate one image, or say (as an :class:`ItemError` on ``source``) why it is unusable.

    ``what`` (e.g. ``"image 'a/b.png'"``) prefixes the message when ``source`` is not the image
    itself (a captions line, an annotation record).
    """
    try:
        return ImageRef.from_path(path, **limits)
    except (InvalidInputError, OSError) as exc:
        message = str(exc)
        for prefix in (f"{path}: ", f"{path.as_posix()}: "):
            if message.startswith(prefix):
                message = message[len(prefix) :]
                break
        error = item_error(source, InvalidInputError(message))
        if what:
            error = ItemError(error.source, f"{what}: {error.message}")
        return error


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _image_files(root: Path) -> list[str]:
    """Relative POSIX paths of the non-hidden image files under ``root``, recursively, sorted."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        for name in filenames:
            if not _is_hidden(name) and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def _first_image(root: Path) -> str | None:
    """Any one non-hidden image under ``root`` (stops at the first found), or ``None``."""
    for _dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        for name in filenames:
            if not _is_hidden(name) and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                return name
    return None


def _npz_files(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_file() and not _is_hidden(p.name) and p.suffix.lower() == ".npz")


def _safe_relative(raw: Any, root: Path, key: str) -> str:
    """Validate a path from an annotation file: relative, inside ``root``; return its normalised POSIX form.

    Raises :class:`InvalidInputError` (without a source prefix) for a non-string, empty,
    absolute or escaping (``..``, symlink out of ``root``) path.
    """
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidInputError(f"{key!r} must be a non-empty string, got {raw!r}")
    text = raw.strip()
    if PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() or PureWindowsPath(text).drive:
        raise InvalidInputError(f"{key!r} {raw!r} is an absolute path; give a path relative to the folder")
    rel = PurePosixPath(text)
    if ".." in rel.parts:
        raise InvalidInputError(f"{key!r} {raw!r} points outside the folder ('..')")
    rel_text = rel.as_posix()
    if rel_text in ("", "."):
        raise InvalidInputError(f"{key!r} {raw!r} is not a file path")
    try:
        (root / rel_text).resolve().relative_to(root.resolve())
    except ValueError:
        raise InvalidInputError(f"{key!r} {raw!r} resolves outside the folder (symbolic link?)") from None
    return rel_text


def _clean_metadata(record: Mapping[str, Any], skip: Iterable[str], where: str) -> dict[str, MetadataValue]:
    """The scalar fields of ``record`` (minus ``skip``) as validated metadata.

    Non-scalar values (lists, objects) and nulls are dropped with a debug log; bad scalars
    (non-finite floats, huge ints) and keys reserved by heterag raise :class:`InvalidInputError`.
    """
    skipped = set(skip)
    kept: dict[str, Any] = {}
    for key, value in record.items():
        if key in skipped:
            continue
        if value is None or isinstance(value, list | dict):
            logger.debug("%s: field %r is not a scalar; not kept as metadata", where, key)
            continue
        kept[key] = value
    clash = RESERVED_METADATA_KEYS.intersection(kept)
    if clash:
        raise InvalidInputError(f"fields {sorted(clash)} are reserved for heterag metadata; rename them")
    return validate_metadata(kept, where="metadata")


# --------------------------------------------------------------------------- plain image folder


def iter_image_folder(
    path: str | Path, *, max_pixels: int | None = None, max_bytes: int | None = None
) -> Iterator[ImageItem]:
    """Every image under ``path`` (recursively, sorted, hidden files and folders skipped) as an image-only item.

    Suffixes: :data:`IMAGE_SUFFIXES`. The id (and error source) of an item is its path relative
    to ``path`` in POSIX form; its text is empty. A file that is not a usable image (corrupt,
    empty, too large, a decompression bomb) is an :class:`ItemError`. Raises
    :class:`InvalidInputError` at once if ``path`` is not a directory.
    """
    root = require_dir(Path(path), "image folder")
    limits = _image_limits(max_pixels, max_bytes)
    files = _image_files(root)
    logger.info("%s: %d image files", root, len(files))
    return _image_folder_items(root, files, limits)


def _image_folder_items(root: Path, files: list[str], limits: Mapping[str, int]) -> Iterator[ImageItem]:
    for rel in files:
        image = _load_image(root / rel, rel, limits)
        if isinstance(image, ItemError):
            yield image
        else:
            yield AnnotatedImage(id=rel, image=image, metadata={"source": rel})


# --------------------------------------------------------------------------- caption folder


def find_captions_file(root: Path) -> Path | None:
    """The caption file of a folder (the first of :data:`CAPTION_FILES` present), or ``None``."""
    present = [root / name for name in CAPTION_FILES if (root / name).is_file()]
    if len(present) > 1:
        logger.warning("%s: several caption files %s; using %s", root, [p.name for p in present], present[0].name)
    return present[0] if present else None


def iter_caption_folder(
    path: str | Path, *, max_pixels: int | None = None, max_bytes: int | None = None
) -> Iterator[ImageItem]:
    """One item per record of a folder's caption file (see :data:`CAPTION_FILES`).

    Each record names its image with ``image`` (or ``file_name``/``path``), relative to the
    folder, and its text with ``caption`` (or ``text``; in JSON-lines also a list of strings,
    joined one per line; an empty caption gives an image-only item). A ``title`` field becomes
    the item's title; other scalar fields become metadata (validated like all heterag metadata);
    non-scalar fields (lists, objects, nulls) are dropped with a debug log. The item id is the
    normalised image path relative to the folder (POSIX), also kept as ``metadata["source"]``.

    Per-record problems are :class:`ItemError` naming ``<caption file>:<line>`` (and the image):
    a line that is not JSON, a CSV row with the wrong number of fields, a missing key, a path
    that is absolute or escapes the folder, a missing or unusable image, an image listed twice
    (the first record is kept), a reserved metadata key. A CSV whose header lacks the image or
    caption column, or a folder without a caption file, raises :class:`InvalidInputError` at once.
    Images in the folder that no record names are not loaded (their count is logged).
    """
    root = require_dir(Path(path), "caption folder")
    captions = find_captions_file(root)
    if captions is None:
        raise InvalidInputError(f"{root}: no caption file (expected one of {', '.join(CAPTION_FILES)})")
    limits = _image_limits(max_pixels, max_bytes)
    if captions.suffix == ".csv":
        records = _csv_records(captions)
    else:
        records = iter_jsonl(captions, label=captions.name)
    return _caption_items(root, captions, records, limits)


def _csv_records(path: Path) -> Iterator[tuple[str, Any]]:
    """Validate a caption CSV's header at once; return an iterator of ``(source, record dict | ItemError)``."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidInputError(f"{path}: empty CSV file (expected a header row with image and caption columns)") from None
    except csv.Error as exc:
        raise InvalidInputError(f"{path}:1: malformed CSV header ({exc})") from None
    header = [h.strip() for h in header]
    if len(set(header)) != len(header) or "" in header:
        raise InvalidInputError(f"{path}:1: header has empty or repeated column names: {header}")
    if not any(k in header for k in IMAGE_KEYS):
        raise InvalidInputError(f"{path}:1: no image column (expected one of {', '.join(IMAGE_KEYS)}); header is {header}")
    if not any(k in header for k in CAPTION_KEYS):
        raise InvalidInputError(
            f"{path}:1: no caption column (expected one of {', '.join(CAPTION_KEYS)}); header is {header}"
        )
    return _csv_rows(path.name, reader, header)


def _csv_rows(label: str, reader: Any, header: list[str]) -> Iterator[tuple[str, Any]]:
    line = reader.line_num
    while True:
        start = line + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield f"{label}:{start}", ItemError(f"{label}:{start}", f"malformed CSV ({exc})")
            return
        line = reader.line_num
        source = f"{label}:{start}"
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield source, ItemError(source, f"row has {len(row)} fields, the header has {len(header)} ({', '.join(header)})")
            continue
        yield source, dict(zip(header, row, strict=True))


def _caption_items(
    root: Path, captions: Path, records: Iterator[tuple[str, Any]], limits: Mapping[str, int]
) -> Iterator[ImageItem]:
    seen: dict[str, str] = {}
    for source, record in records:
        if isinstance(record, ItemError):
            yield record
            continue
        try:
            rel, text, title, metadata = _caption_record(root, record)
        except InvalidInputError as exc:
            yield item_error(source, exc)
            continue
        if rel in seen:
            yield ItemError(source, f"image {rel!r} is listed twice; the record at {seen[rel]} is kept")
            continue
        seen[rel] = source
        image = _load_image(root / rel, source, limits, what=f"image {rel!r}")
        if isinstance(image, ItemError):
            yield image
            continue
        yield AnnotatedImage(id=rel, image=image, text=text, title=title, metadata={"source": rel, **metadata})
    unlisted = len(set(_image_files(root)) - set(seen))
    if unlisted:
        logger.info("%s: %d images in the folder are not listed in %s and were not loaded", root, unlisted, captions.name)


def _caption_record(root: Path, record: Any) -> tuple[str, str, str, dict[str, MetadataValue]]:
    """Validate one caption record: (image path, text, title, metadata)."""
    if not isinstance(record, dict):
        raise InvalidInputError(f"expected a JSON object, got {type(record).__name__}")
    image_key = next((k for k in IMAGE_KEYS if k in record), None)
    if image_key is None:
        raise InvalidInputError(f"missing the image path (one of {', '.join(IMAGE_KEYS)})")
    rel = _safe_relative(record[image_key], root, image_key)
    caption_key = next((k for k in CAPTION_KEYS if k in record), None)
    if caption_key is None:
        raise InvalidInputError(f"missing the caption (one of {', '.join(CAPTION_KEYS)})")
    caption = record[caption_key]
    if isinstance(caption, list) and all(isinstance(c, str) for c in caption):
        text = "\n".join(c.strip() for c in caption if c.strip())
    elif isinstance(caption, str):
        text = caption.strip()
    else:
        raise InvalidInputError(f"{caption_key!r} must be a string (or a list of strings), got {type(caption).__name__}")
    if "\x00" in text:
        raise InvalidInputError(f"{caption_key!r} contains NUL bytes")
    title = record.get("title") or ""
    if not isinstance(title, str):
        raise InvalidInputError(f"'title' must be a string, got {type(title).__name__}")
    metadata = _clean_metadata(record, skip=(*IMAGE_KEYS, *CAPTION_KEYS, "title"), where=str(root))
    if "source" in metadata:
        raise InvalidInputError("field 'source' is set by the loader (the image path); rename it")
    return rel, text, title.strip(), metadata


# --------------------------------------------------------------------------- COCO


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
    lazily, one per item. ``split`` defaults to the only split present, else ``val2017``.

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
    elif split not in splits:
        raise InvalidInputError(
            f"{root}: no annotations for split {split!r} in {COCO_ANNOTATIONS_DIR}/ (splits present: {', '.join(splits)})"
        )
    dataset = _CocoSplit.read(root, split)
    logger.info(
        "%s: COCO %s, %d images, %d captions, %d instances",
        root, split, len(dataset.images), sum(len(v) for v in dataset.captions.values()),
        sum(len(v) for v in dataset.instances.values()),
    )
    return dataset.items(_image_limits(max_pixels, max_bytes))


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


# --------------------------------------------------------------------------- VQA-RAD


def iter_vqa_rad(
    path: str | Path | None = None, *, max_pixels: int | None = None, max_bytes: int | None = None
) -> Iterator[ImageItem]:
    """One item per image of VQA-RAD (default folder ``<data dir>/vqa_rad``), sorted by file name.

    ``vqa_rad.json`` (a list of records with ``image_name``, ``question``, ``answer``,
    ``answer_type`` CLOSED/OPEN, ``question_type``, ``image_organ``, ``phrase_type``, ``qid``) is
    read once at call time; images (``images/<image_name>``) are loaded lazily.

    - ``id``: ``"vqa-rad-<file stem>"``; ``metadata``: ``{"organ": image_organ}`` (absent for an
      image no question is about); ``metadata["source"]`` is ``images/<file name>``.
    - ``qa``: the image's :class:`QAPair` in file order, ``kind`` = ``answer_type`` (stripped,
      upper case), metadata ``question_type``, ``phrase_type`` (``test_*`` marks the official test
      questions) and ``qid``. Numeric answers become strings.
    - ``text``: one line ``"Question: <q> Answer: <a>"`` per QA pair: the knowledge an image
      carries in a RAG knowledge base.

    Images in ``images/`` that no question is about are image-only items (the distributed folder
    has one: 315 images, 314 with questions). A malformed record is an :class:`ItemError` naming
    ``vqa_rad.json:[<index>]`` and only that question is left out; a referenced image that is
    missing or unusable is an :class:`ItemError` naming ``images/<file name>``.
    """
    root = require_dir(Path(path) if path is not None else default_data_dir() / "vqa_rad", "VQA-RAD folder")
    qa_path = root / VQA_RAD_FILE
    image_dir = require_dir(root / VQA_RAD_IMAGES, "VQA-RAD images folder")
    if not qa_path.is_file():
        raise InvalidInputError(f"VQA-RAD file {qa_path} does not exist")
    try:
        records = json.loads(qa_path.read_bytes())
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{qa_path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"{qa_path}: not valid UTF-8") from None
    if not isinstance(records, list):
        raise InvalidInputError(f"{qa_path}: expected a JSON list of question records, got {type(records).__name__}")
    by_image: dict[str, list[QAPair]] = defaultdict(list)
    organs: dict[str, Counter[str]] = defaultdict(Counter)
    errors: list[ItemError] = []
    for index, record in enumerate(records):
        source = f"{VQA_RAD_FILE}:[{index}]"
        try:
            name, organ, pair = _vqa_rad_record(record)
        except InvalidInputError as exc:
            errors.append(item_error(source, exc))
            continue
        by_image[name].append(pair)
        if organ:
            organs[name][organ] += 1
    on_disk = {p.name for p in image_dir.iterdir() if p.is_file() and not _is_hidden(p.name)
               and p.suffix.lower() in IMAGE_SUFFIXES}
    logger.info(
        "%s: %d questions about %d images, %d image files, %d bad records",
        root, sum(len(v) for v in by_image.values()), len(by_image), len(on_disk), len(errors),
    )
    return _vqa_rad_items(image_dir, sorted(on_disk | set(by_image)), by_image, organs, errors,
                          _image_limits(max_pixels, max_bytes))


def _vqa_rad_record(record: Any) -> tuple[str, str, QAPair]:
    """Validate one VQA-RAD record: (image file name, organ, QA pair)."""
    if not isinstance(record, dict):
        raise InvalidInputError(f"expected an object, got {type(record).__name__}")
    name = record.get("image_name")
    if not isinstance(name, str) or not name.strip() or "/" in name or "\\" in name or name.strip() in (".", ".."):
        raise InvalidInputError(f"'image_name' must be a file name in {VQA_RAD_IMAGES}/, got {name!r}")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise InvalidInputError(f"'question' must be a non-empty string, got {question!r}")
    answer = record.get("answer")
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise InvalidInputError(f"'answer' must be a non-empty string or number, got {answer!r}")
    kind = record.get("answer_type")
    kind = kind.strip().upper() if isinstance(kind, str) else kind
    if kind not in VQA_RAD_ANSWER_TYPES:
        raise InvalidInputError(f"'answer_type' must be CLOSED or OPEN, got {record.get('answer_type')!r}")
    meta: dict[str, MetadataValue] = {}
    for key in ("question_type", "phrase_type"):
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            meta[key] = value.strip()
    qid = record.get("qid")
    if isinstance(qid, int | str) and not isinstance(qid, bool) and str(qid).strip():
        meta["qid"] = str(qid).strip()
    organ = record.get("image_organ")
    organ = organ.strip() if isinstance(organ, str) else ""
    return name.strip(), organ, QAPair(question=" ".join(question.split()), answer=" ".join(answer.split()),
                                        kind=kind, metadata=meta)


def _vqa_rad_items(
    image_dir: Path,
    names: list[str],
    by_image: Mapping[str, list[QAPair]],
    organs: Mapping[str, Counter[str]],
    errors: list[ItemError],
    limits: Mapping[str, int],
) -> Iterator[ImageItem]:
    yield from errors
    for name in names:
        rel = f"{VQA_RAD_IMAGES}/{name}"
        pairs = by_image.get(name, [])
        if not (image_dir / name).is_file():
            n = len(pairs)
            yield ItemError(rel, f"image file does not exist ({n} question{'' if n == 1 else 's'} in {VQA_RAD_FILE} "
                                 f"{'is' if n == 1 else 'are'} about it)")
            continue
        image = _load_image(image_dir / name, rel, limits)
        if isinstance(image, ItemError):
            yield image
            continue
        metadata: dict[str, MetadataValue] = {"source": rel}
        if organs.get(name):
            counted = organs[name].most_common()
            if len(counted) > 1:
                logger.warning("%s: questions give several organs %s; using %r", rel, dict(counted), counted[0][0])
            metadata["organ"] = counted[0][0]
        text = "\n".join(f"Question: {p.question} Answer: {p.answer}" for p in pairs)
        yield AnnotatedImage(id=f"vqa-rad-{Path(name).stem}", image=image, text=text, qa=tuple(pairs), metadata=metadata)


def load_vqa_rad(path: str | Path | None = None, *, strict: bool = False, **kwargs: Any) -> list[AnnotatedImage]:
    """All VQA-RAD items as a list (see :func:`iter_vqa_rad`).

    Item errors are logged as warnings and skipped; with ``strict=True`` the first one raises
    :class:`InvalidInputError` instead.
    """
    return _collect(iter_vqa_rad(path, **kwargs), strict)


def split_vqa_rad(
    items: Iterable[AnnotatedImage], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[AnnotatedImage], list[AnnotatedImage]]:
    """Split VQA-RAD items BY IMAGE into ``(knowledge base, test)``; no image is in both.

    Deterministic for a given ``seed`` and set of items (whatever their order): within each organ
    (``metadata["organ"]``), images with questions are ordered by id, shuffled with
    ``random.Random(seed)``, and ``round(test_fraction * n)`` of them go to test, so each organ is
    represented in proportion. Images without questions always go to the knowledge base. Both
    lists keep the input order.
    """
    if not isinstance(test_fraction, int | float) or not 0 < test_fraction < 1:
        raise InvalidInputError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction!r}")
    items = list(items)
    ids: set[str] = set()
    groups: dict[str, list[str]] = defaultdict(list)
    for item in items:
        if not isinstance(item, AnnotatedImage):
            raise InvalidInputError(f"split_vqa_rad takes AnnotatedImage items, got {type(item).__name__} (drop ItemErrors first)")
        if item.id in ids:
            raise InvalidInputError(f"split_vqa_rad: duplicate item id {item.id!r}")
        ids.add(item.id)
        if item.qa:
            groups[str(item.metadata.get("organ", ""))].append(item.id)
    rng = random.Random(seed)
    test_ids: set[str] = set()
    for organ in sorted(groups):
        group = sorted(groups[organ])
        rng.shuffle(group)
        test_ids.update(group[: round(test_fraction * len(group))])
    kb = [item for item in items if item.id not in test_ids]
    test = [item for item in items if item.id in test_ids]
    logger.info("VQA-RAD split (seed %d): %d knowledge-base images, %d test images", seed, len(kb), len(test))
    return kb, test


# --------------------------------------------------------------------------- MedMNIST


def iter_medmnist(
    path: str | Path,
    split: str = "train",
    label_names: Mapping[int, str] | Sequence[str] | None = None,
    *,
    max_pixels: int | None = None,
    max_bytes: int | None = None,
) -> Iterator[ImageItem]:
    """One item per image of one split of a MedMNIST-style ``.npz`` file.

    The file must hold ``<split>_images`` (``(N, H, W)`` or ``(N, H, W, 1|3)``, uint8) and
    ``<split>_labels`` (``(N,)`` or ``(N, 1)``, non-negative integers). It is opened with
    ``allow_pickle=False``: an object array is refused. Both arrays are read and validated at
    call time (:class:`InvalidInputError` naming the file and key); items are encoded lazily.

    - ``id``: ``"<file stem>-<split>-<index>"``;
    - ``metadata``: ``{"label": int, "label_name": str, "split": split}``;
    - ``text``: ``"Chest X-ray: pneumonia."`` for PneumoniaMNIST (names from
      :data:`MEDMNIST_DEFAULTS`), ``"Label: <name>."`` otherwise, where the name comes from
      ``label_names`` (a mapping or a list indexed by label), the dataset default, else
      ``"label <k>"``.

    ``max_pixels`` bounds ``H * W`` (checked once); ``max_bytes`` does not apply to arrays.
    """
    path = Path(path)
    images, labels = _read_medmnist(path, split)
    if max_pixels is not None and images.shape[1] * images.shape[2] > max_pixels:
        raise InvalidInputError(
            f"{path}: {split}_images are {images.shape[2]}x{images.shape[1]} pixels, over the {max_pixels} pixel limit"
        )
    stem = path.stem
    default_names, prefix = MEDMNIST_DEFAULTS.get(stem.lower(), ({}, "Label"))
    names = {**default_names, **_label_name_map(label_names, path)}
    logger.info("%s: %s split, %d images %s", path, split, len(images), "x".join(map(str, images.shape[1:])))
    return _medmnist_items(path, stem, split, images, labels, names, prefix)


def _read_medmnist(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise InvalidInputError(f"MedMNIST file {path} does not exist")
    if not isinstance(split, str) or not split:
        raise InvalidInputError(f"{path}: split must be a non-empty string, got {split!r}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidInputError(f"{path}: not a readable .npz archive ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InvalidInputError(f"{path}: holds a single array, not an .npz archive with <split>_images/<split>_labels")
    with archive:
        keys = set(archive.files)
        arrays: dict[str, np.ndarray] = {}
        for key in (f"{split}_images", f"{split}_labels"):
            if key not in keys:
                splits = sorted(k[: -len("_images")] for k in keys if k.endswith("_images"))
                raise InvalidInputError(
                    f"{path}: no key {key!r} (keys: {', '.join(sorted(keys)) or 'none'}; "
                    f"splits: {', '.join(splits) or 'none'})"
                )
            try:
                arrays[key] = archive[key]
            except ValueError as exc:
                if "pickle" in str(exc).lower() or "object" in str(exc).lower():
                    raise InvalidInputError(
                        f"{path}: key {key!r} holds pickled Python objects; refusing to unpickle (only numeric arrays)"
                    ) from None
                raise InvalidInputError(f"{path}: key {key!r} cannot be read ({exc})") from None
            except (OSError, EOFError) as exc:
                raise InvalidInputError(f"{path}: key {key!r} cannot be read ({exc})") from None
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    ikey, lkey = f"{split}_images", f"{split}_labels"
    if images.dtype != np.uint8:
        raise InvalidInputError(f"{path}: {ikey!r} has dtype {images.dtype}, expected uint8")
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)) or 0 in images.shape:
        raise InvalidInputError(f"{path}: {ikey!r} has shape {images.shape}, expected (N, H, W) or (N, H, W, 3)")
    if labels.dtype.kind not in "iu":
        raise InvalidInputError(f"{path}: {lkey!r} has dtype {labels.dtype}, expected integers")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise InvalidInputError(
            f"{path}: {lkey!r} has shape {labels.shape}, expected (N,) or (N, 1) (multi-label files are not supported)"
        )
    if len(labels) != len(images):
        raise InvalidInputError(f"{path}: {ikey!r} has {len(images)} images but {lkey!r} has {len(labels)} labels")
    if labels.size and int(labels.min()) < 0:
        raise InvalidInputError(f"{path}: {lkey!r} has negative labels")
    return images, labels.astype(np.int64)


def _label_name_map(label_names: Mapping[int, str] | Sequence[str] | None, path: Path) -> dict[int, str]:
    if label_names is None:
        return {}
    if isinstance(label_names, Mapping):
        pairs = list(label_names.items())
    elif isinstance(label_names, Sequence) and not isinstance(label_names, str):
        pairs = list(enumerate(label_names))
    else:
        raise InvalidInputError(f"{path}: label_names must be a mapping or a list of names, got {type(label_names).__name__}")
    out: dict[int, str] = {}
    for key, name in pairs:
        if isinstance(key, str) and key.strip().isdigit():
            key = int(key)
        if not isinstance(key, int) or isinstance(key, bool) or not isinstance(name, str) or not name.strip():
            raise InvalidInputError(f"{path}: label_names entry {key!r}: {name!r} must map an integer to a non-empty name")
        out[key] = name.strip()
    return out


def _medmnist_items(
    path: Path, stem: str, split: str, images: np.ndarray, labels: np.ndarray, names: Mapping[int, str], prefix: str
) -> Iterator[ImageItem]:
    for index in range(len(images)):
        label = int(labels[index])
        name = names.get(label, f"label {label}")
        source = f"{path.name}:{split}_images[{index}]"
        try:
            image = ImageRef.from_array(images[index], source=source)
        except InvalidInputError as exc:
            yield item_error(source, exc)
            continue
        yield AnnotatedImage(
            id=f"{stem}-{split}-{index}",
            image=image,
            text=f"{prefix}: {name}.",
            metadata={"label": label, "label_name": name, "split": split},
        )


def load_medmnist(
    path: str | Path,
    split: str = "train",
    label_names: Mapping[int, str] | Sequence[str] | None = None,
    *,
    strict: bool = False,
    **kwargs: Any,
) -> list[AnnotatedImage]:
    """All items of one MedMNIST split as a list (see :func:`iter_medmnist`); item errors as in :func:`load_vqa_rad`."""
    return _collect(iter_medmnist(path, split, label_names, **kwargs), strict)


def _collect(items: Iterable[ImageItem], strict: bool) -> list[AnnotatedImage]:
    out: list[AnnotatedImage] = []
    for item in items:
        if isinstance(item, ItemError):
            if strict:
                raise InvalidInputError(str(item))
            logger.warning("skipped %s", item)
        else:
            out.append(item)
    return out


__all__ = [
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "ImageItem",
    "coco_box",
    "decode_segmentation",
    "detect_image_layout",
    "find_captions_file",
    "iter_caption_folder",
    "iter_coco",
    "iter_image_folder",
    "iter_image_layout",
    "iter_medmnist",
    "iter_vqa_rad",
    "load_medmnist",
    "load_vqa_rad",
    "mask_box",
    "polygon_mask",
    "rle_decode",
    "rle_encode",
    "rle_from_string",
    "rle_to_string",
    "split_vqa_rad",
]
