"""The ``image_folder`` layout: any folder holding images, read recursively as image-only items.

It is detected last among the image layouts (a captions, COCO or VQA-RAD folder also holds images).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from heterag.core.documents import ItemError

from ..annotated import AnnotatedImage
from ..base import require_dir
from ._common import (
    ImageItem,
    _first_image,
    _image_files,
    _image_limits,
    _load_image,
)

logger = logging.getLogger(__name__)

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


class ImageFolderLayout:
    """:class:`~corpora.layouts.LayoutReader` for a plain folder of images (see :func:`iter_image_folder`)."""

    name = "image_folder"
    title = "image folder"
    description = "a folder of images"
    images = True
    splits = False

    def detect(self, path: Path) -> bool:
        """True for a folder with at least one non-hidden image under it (recursively)."""
        return path.is_dir() and _first_image(path) is not None

    def read(self, path: Path, **options: Any) -> Iterator[ImageItem]:
        return iter_image_folder(path, **options)


READER = ImageFolderLayout()
