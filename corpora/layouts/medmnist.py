"""The ``medmnist`` layout: a MedMNIST ``.npz`` (``<split>_images`` / ``<split>_labels``).

Either the file itself or a folder without images whose only data file is one ``.npz``. See
:func:`iter_medmnist`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from heterag.core.errors import InvalidInputError
from heterag.core.images import ImageRef

from ..annotated import AnnotatedImage
from ..base import item_error
from ._common import (
    ImageItem,
    _collect,
    _first_image,
    _npz_files,
)

logger = logging.getLogger(__name__)

#: Per-dataset defaults for MedMNIST files, keyed by file stem: (label names, text prefix).
MEDMNIST_DEFAULTS: dict[str, tuple[dict[int, str], str]] = {
    "pneumoniamnist": ({0: "normal", 1: "pneumonia"}, "Chest X-ray"),
}


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


class MedMnistLayout:
    """:class:`~corpora.layouts.LayoutReader` for a MedMNIST ``.npz`` (see :func:`iter_medmnist`); takes ``split``
    (default ``"train"``)."""

    name = "medmnist"
    title = "MedMNIST"
    description = "a MedMNIST .npz file, or a folder without images holding one"
    images = True
    splits = True

    def detect(self, path: Path) -> bool:
        """True for a ``.npz`` file, or a folder without images whose only ``.npz`` file is one."""
        if path.is_file():
            return path.suffix.lower() == ".npz"
        return path.is_dir() and len(_npz_files(path)) == 1 and _first_image(path) is None

    def read(self, path: Path, *, split: str | None = None, **options: Any) -> Iterator[ImageItem]:
        if path.is_dir():
            path = _npz_files(path)[0]
        return iter_medmnist(path, split=split or "train", **options)


READER = MedMnistLayout()
