"""Folder and file layouts: one module per layout behind one small protocol and one ordered detection registry.

A *layout* is a way a corpus is laid out on disk as a whole (a COCO folder, a BEIR folder, a
MedMNIST ``.npz``), as opposed to a *file format* read file by file (PDF, HTML, DOCX, DICOM,
text/Markdown: :mod:`corpora.readers`). :func:`corpora.files.iter_path` asks :func:`detect_layout`
first; a path no layout claims is read file by file through :data:`corpora.readers.READERS`.

A :class:`LayoutReader` has a ``name``, a ``title`` and ``description`` for messages, two flags
(``images``: :meth:`~LayoutReader.read` yields :class:`~corpora.annotated.AnnotatedImage` items
rather than documents; ``splits``: it takes ``split=``), ``detect(path) -> bool`` (cheap: file
names, no parsing) and ``read(path, **options)``, which validates the layout as a whole at call time
(raising :class:`~heterag.core.errors.InvalidInputError` naming the file) and returns an iterator of items
and :class:`~heterag.core.documents.ItemError` values for unusable ones.

:data:`LAYOUT_READERS` is checked in order and the first reader whose ``detect`` is true wins:

============  ======================  ==========================================================
layout        module                  detected by
============  ======================  ==========================================================
beir          :mod:`.beir`            a folder with ``corpus.jsonl`` (before any image layout)
vqa_rad       :mod:`.vqa_rad`         ``vqa_rad.json`` + ``images/``
coco          :mod:`.coco`            ``annotations/captions_*.json`` or ``instances_*.json``
captions      :mod:`.captions`        ``captions.jsonl``/``.csv``, or HF ``metadata.jsonl``/``.csv`` + an image
image_folder  :mod:`.image_folder`    any image under the folder
medmnist      :mod:`.medmnist`        a ``.npz`` file, or a folder without images holding exactly one
jsonl         :mod:`.jsonl`           a ``.jsonl`` file
============  ======================  ==========================================================

Adding a layout is adding a module with a ``READER`` and listing it in :data:`LAYOUT_READERS` (or, from
outside the package, :func:`register_layout`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from heterag.core.errors import InvalidInputError

from . import beir, captions, coco, image_folder, jsonl, medmnist, vqa_rad
from ._common import IMAGE_SUFFIXES, ImageItem

logger = logging.getLogger(__name__)


@runtime_checkable
class LayoutReader(Protocol):
    """One corpus layout on disk: how to recognise it and how to read it.

    - ``name``: the layout's id (``"coco"``), returned by :func:`detect_image_layout`;
    - ``title`` / ``description``: for messages (``"COCO"``, ``"a COCO folder with annotations/..."``);
    - ``images``: ``read`` yields :class:`~corpora.annotated.AnnotatedImage` | ``ItemError`` (an image
      layout, turned into documents by :func:`corpora.files.iter_path`); else ``Document`` | ``ItemError``;
    - ``splits``: ``read`` takes ``split=`` (a named split of the data set).
    """

    name: str
    title: str
    description: str
    images: bool
    splits: bool

    def detect(self, path: Path) -> bool:
        """True if ``path`` (a file or folder that may not exist) is this layout; looks at names, never raises."""
        ...

    def read(self, path: Path, **options: Any) -> Iterator[Any]:
        """The items of the layout at ``path``; raises :class:`InvalidInputError` at call time if it is broken as a whole.

        Options: ``split`` (layouts with ``splits``), ``max_pixels``/``max_bytes`` and per-layout ones
        (image layouts), ``max_document_bytes`` (document layouts).
        """
        ...


#: The known layouts, in detection order (the first whose ``detect`` is true wins).
LAYOUT_READERS: list[LayoutReader] = [
    beir.READER,
    vqa_rad.READER,
    coco.READER,
    captions.READER,
    image_folder.READER,
    medmnist.READER,
    jsonl.READER,
]

#: Layout names returned by :func:`detect_image_layout`.
LAYOUT_CAPTIONS = captions.READER.name
LAYOUT_IMAGE_FOLDER = image_folder.READER.name
LAYOUT_COCO = coco.READER.name
LAYOUT_VQA_RAD = vqa_rad.READER.name
LAYOUT_MEDMNIST = medmnist.READER.name
LAYOUTS = (LAYOUT_CAPTIONS, LAYOUT_COCO, LAYOUT_VQA_RAD, LAYOUT_MEDMNIST, LAYOUT_IMAGE_FOLDER)


def register_layout(reader: LayoutReader, *, before: str | None = None) -> LayoutReader:
    """Add ``reader`` to :data:`LAYOUT_READERS`: at the end, or just before the layout named ``before``.

    Raises :class:`InvalidInputError` if it does not have the :class:`LayoutReader` attributes, if a
    layout of that name is already registered, or if ``before`` names no layout. Returns ``reader``.
    """
    if not isinstance(reader, LayoutReader):
        raise InvalidInputError(f"{reader!r} is not a LayoutReader (it needs name, title, description, images, "
                                "splits, detect and read)")
    names = [r.name for r in LAYOUT_READERS]
    if reader.name in names:
        raise InvalidInputError(f"a layout named {reader.name!r} is already registered")
    if before is None:
        LAYOUT_READERS.append(reader)
    elif before in names:
        LAYOUT_READERS.insert(names.index(before), reader)
    else:
        raise InvalidInputError(f"unknown layout {before!r}; choose one of: {', '.join(names)}")
    return reader


def unregister_layout(name: str) -> None:
    """Remove the layout ``name`` from :data:`LAYOUT_READERS` (no-op if absent)."""
    LAYOUT_READERS[:] = [r for r in LAYOUT_READERS if r.name != name]


def detect_layout(path: str | Path) -> LayoutReader | None:
    """The first reader of :data:`LAYOUT_READERS` that recognises ``path``, or ``None`` (read it file by file)."""
    path = Path(path)
    for reader in LAYOUT_READERS:
        if reader.detect(path):
            return reader
    return None


def known_layouts(*, images: bool | None = None) -> str:
    """``"name (description), ..."`` of the registered layouts (only image or only document layouts if
    ``images`` is given), in detection order: the list that error messages show."""
    return ", ".join(f"{r.name} ({r.description})" for r in LAYOUT_READERS if images is None or r.images == images)


def detect_image_layout(path: str | Path) -> str | None:
    """Name the image layout at ``path`` (one of :data:`LAYOUTS`, or a registered image layout), or ``None``.

    ``None`` (for a missing path, a BEIR folder, a folder without images, a text file) lets the
    caller fall back to the text loaders. The layouts are tried in :data:`LAYOUT_READERS` order:
    BEIR folder (``None``), VQA-RAD (``vqa_rad.json`` + ``images/``), COCO
    (``annotations/captions_*.json`` or ``annotations/instances_*.json``), caption folder
    (``captions.jsonl``/``.csv``, or an HF ``metadata.jsonl``/``.csv`` next to at least one image),
    plain image folder, MedMNIST (a ``.npz`` file, or a folder without images whose only data file
    is one ``.npz``).
    """
    reader = detect_layout(path)
    return reader.name if reader is not None and reader.images else None


def read_layout(reader: LayoutReader, path: Path, *, split: str | None = None, **options: Any) -> Iterator[Any]:
    """``reader.read(path, ...)``, refusing ``split`` for a layout without splits (:class:`InvalidInputError`)."""
    if split is not None:
        if not reader.splits:
            takes = " and ".join(r.title for r in LAYOUT_READERS if r.splits)
            raise InvalidInputError(f"{path}: split={split!r} only applies to {takes} layouts, this is {reader.name!r}")
        options["split"] = split
    logger.info("%s: %s layout", path, reader.name)
    return reader.read(path, **options)


def iter_image_layout(path: str | Path, *, split: str | None = None, **kwargs: Any) -> Iterator[ImageItem]:
    """Stream the items of the image layout at ``path`` (see :func:`detect_image_layout`).

    ``split`` picks the COCO split (default: the only one, else ``val2017``) or the MedMNIST
    split (default ``"train"``); giving it for another layout is an error. Other keyword
    arguments go to the layout's reader (e.g. ``max_pixels``, ``label_names``). Raises
    :class:`InvalidInputError` at once, not on first iteration, if ``path`` does not exist, is
    not an image layout (the message lists the known ones), or the layout is broken as a whole.
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path} does not exist")
    reader = detect_layout(path)
    if reader is None or not reader.images:
        raise InvalidInputError(f"{path}: not an image layout; known image layouts: {known_layouts(images=True)}")
    return read_layout(reader, path, split=split, **kwargs)


__all__ = [
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "LAYOUT_CAPTIONS",
    "LAYOUT_COCO",
    "LAYOUT_IMAGE_FOLDER",
    "LAYOUT_MEDMNIST",
    "LAYOUT_READERS",
    "LAYOUT_VQA_RAD",
    "ImageItem",
    "LayoutReader",
    "detect_image_layout",
    "detect_layout",
    "iter_image_layout",
    "known_layouts",
    "read_layout",
    "register_layout",
    "unregister_layout",
]
