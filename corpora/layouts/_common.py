"""Helpers shared by the image layout readers: image suffixes, lazy image loading, safe relative paths, metadata."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from heterag.core.documents import RESERVED_METADATA_KEYS, ItemError, MetadataValue, validate_metadata
from heterag.core.errors import InvalidInputError
from heterag.core.images import ImageRef

from ..annotated import AnnotatedImage
from ..base import item_error

logger = logging.getLogger(__name__)

#: What image loaders yield: an item or the reason one was skipped.
ImageItem = AnnotatedImage | ItemError

#: File suffixes treated as images (compared case-insensitively).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})



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

