"""The ``captions`` layout: a folder whose caption file names each image and its caption.

``captions.jsonl`` / ``captions.csv`` (or Hugging Face imagefolder's ``metadata.jsonl`` /
``metadata.csv``) name each image (``image``, ``file_name`` or ``path``: relative to the folder)
and its ``caption`` (or ``text``). Other scalar fields become metadata. See :func:`iter_caption_folder`.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from heterag.core.documents import ItemError, MetadataValue
from heterag.core.errors import InvalidInputError

from ..annotated import AnnotatedImage
from ..base import item_error, iter_jsonl, require_dir
from ._common import (
    ImageItem,
    _clean_metadata,
    _first_image,
    _image_files,
    _image_limits,
    _load_image,
    _safe_relative,
)

logger = logging.getLogger(__name__)

#: Caption files looked for, in this order of precedence (the first one present is used).
CAPTION_FILES = ("captions.jsonl", "captions.csv", "metadata.jsonl", "metadata.csv")
#: Keys naming the image in a caption record, and keys holding its caption (first present wins).
IMAGE_KEYS = ("image", "file_name", "path")
CAPTION_KEYS = ("caption", "text")


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


class CaptionsLayout:
    """:class:`~corpora.layouts.LayoutReader` for a captions folder (see :func:`iter_caption_folder`)."""

    name = "captions"
    title = "captions folder"
    description = "a folder with captions.jsonl/.csv, or an HF metadata.jsonl/.csv next to its images"
    images = True
    splits = False

    def detect(self, path: Path) -> bool:
        """True for a folder with ``captions.jsonl``/``.csv``, or ``metadata.jsonl``/``.csv`` and an image."""
        if not path.is_dir():
            return False
        if any((path / name).is_file() for name in CAPTION_FILES[:2]):
            return True
        return any((path / name).is_file() for name in CAPTION_FILES[2:]) and _first_image(path) is not None

    def read(self, path: Path, **options: Any) -> Iterator[ImageItem]:
        return iter_caption_folder(path, **options)


READER = CaptionsLayout()
