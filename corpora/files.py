"""Ingestion sources on disk: text/Markdown files, folders of them, JSON-lines, BEIR folders.

:func:`iter_path` picks the reader from what the path is and streams
:data:`~corpora.base.LoadItem` values: a :class:`Document` per usable item and an
:class:`~corpora.base.ItemError` per unusable one (bad encoding, empty, binary, too large,
malformed JSON line), so one bad file never aborts an ingest.

Documents read from files get their path relative to the ingested root (POSIX form) as id
and as ``metadata["source"]``, so re-ingesting an edited file replaces its old version.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from heterag.core.documents import DEFAULT_MAX_DOCUMENT_BYTES, Document, file_sha256
from heterag.core.errors import InvalidInputError

from .base import ItemError, LoadItem, item_error
from .layouts.jsonl import JSONL_SUFFIXES, iter_jsonl_documents
from .readers import READERS
from .readers.text import MARKDOWN_SUFFIXES, TEXT_SUFFIXES, load_text_file

logger = logging.getLogger(__name__)


def iter_path(
    path: str | Path, max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES, *, split: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Iterator[LoadItem]:
    """Stream documents from ``path``, auto-detecting its kind.

    - a layout of :data:`corpora.layouts.LAYOUT_READERS`, the first whose ``detect`` is true
      (:func:`~corpora.layouts.detect_layout`):

      - a directory with ``corpus.jsonl``: a BEIR corpus (:func:`~corpora.beir.iter_beir_corpus`);
      - an image layout (captions folder, COCO, VQA-RAD, MedMNIST ``.npz``, folder of images):
        one image item per image (``split`` picks the COCO/MedMNIST split); a plain folder holding
        images and documents gives both;
      - a ``.jsonl`` file: one document per line (see :func:`iter_jsonl_documents`);

    - a single image file: one image item without text;
    - any other directory: every non-hidden file under it, recursively, sorted, read by the reader
      of its suffix (text/Markdown/PDF/HTML/DOCX/DICOM, :data:`corpora.readers.READERS`); a file
      of any other type is an :class:`ItemError` ``"unsupported file type .xyz"``, except a DICOM file
      by its content (``DICM`` at byte 128: ``IM0001``, ``*.IMA``); a ``DICOMDIR`` index is passed over;
    - a file of a supported type: its document(s).

    ``options`` go to the format readers (e.g. ``{"dicom_patient_tags": True}``, see
    :mod:`corpora.readers`). Documents read from files carry ``metadata["source_path"]``, the
    file's resolved absolute path: the pipeline uses it as the document's identity, so the same file
    reached through another root (a parent, a subfolder, a symlink) is the same document. Documents
    that are a whole file (a text, PDF, HTML, DOCX or DICOM file, a single image) also carry
    ``metadata["file_sha256"]``: a byte-identical copy of a stored file is not stored again.

    Raises :class:`InvalidInputError` at once (not on first iteration) if ``path`` does not
    exist or is a file of an unsupported type.
    """
    from .layouts import IMAGE_SUFFIXES, LAYOUT_IMAGE_FOLDER, detect_layout, read_layout

    path = Path(path)
    options = dict(options or {})
    if not path.exists():
        raise InvalidInputError(f"{path} does not exist")
    layout = detect_layout(path)
    if layout is not None and layout.images:
        images = _with_paths(_documents(read_layout(layout, path, split=split)), path)
        if layout.name == LAYOUT_IMAGE_FOLDER and _document_files(path, skip=IMAGE_SUFFIXES):
            shown: set[str] = set()  # image files a document shows as its figure (an HTML page's <img>)
            docs = _noting_figures(iter_text_dir(path, max_document_bytes, options=options, skip=IMAGE_SUFFIXES), shown)
            return itertools.chain(docs, _not_in(images, shown))
        return images
    if split is not None:
        raise InvalidInputError(f"{path}: --split applies to COCO and MedMNIST layouts only")
    if layout is not None:
        return read_layout(layout, path, max_document_bytes=max_document_bytes)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return _with_paths(iter([_image_file(path)]), path.parent, content=True)
    if path.is_dir():
        return iter_text_dir(path, max_document_bytes, options=options)
    suffix = path.suffix.lower()
    if suffix in READERS or _is_dicom(path):
        return _with_paths(_read_file(path, path.name, max_document_bytes, options), path.parent, content=True)
    raise InvalidInputError(
        f"{path}: unsupported file type {suffix or '(no extension)'}; give a "
        f"{', '.join(sorted(set(READERS) | JSONL_SUFFIXES))} file, or a directory"
    )


def source_path(path: str | Path) -> str:
    """A file's identity: its resolved absolute path (symlinks followed), POSIX form."""
    return Path(os.path.realpath(path)).as_posix()


def _with_paths(items: Iterator[LoadItem], root: Path, *, content: bool = False) -> Iterator[LoadItem]:
    """Add ``metadata["source_path"]`` to documents whose ``source`` names a file under ``root``; with ``content``
    (the file is the whole document: a format reader's file, a single image) also ``metadata["file_sha256"]``,
    the hash of its bytes, by which the pipeline keeps byte-identical copies of a stored file out."""
    hashes: dict[str, str | None] = {}
    for item in items:
        if isinstance(item, Document) and "source_path" not in item.metadata:
            rel = str(item.metadata.get("source") or "")
            if rel and (root / rel).is_file():
                meta = {**item.metadata, "source_path": source_path(root / rel)}
                if content:
                    if rel not in hashes:
                        try:
                            hashes[rel] = file_sha256(root / rel)
                        except OSError:
                            hashes[rel] = None
                    if hashes[rel]:
                        meta["file_sha256"] = hashes[rel]
                item = dataclasses.replace(item, metadata=meta)
        yield item


def _noting_figures(items: Iterator[LoadItem], shown: set[str]) -> Iterator[LoadItem]:
    """Pass ``items`` on, adding to ``shown`` the image file of every figure item (``metadata["image_file"]``)."""
    for item in items:
        if isinstance(item, Document) and item.metadata.get("image_file"):
            shown.add(str(item.metadata["image_file"]))
        yield item


def _not_in(images: Iterator[LoadItem], shown: set[str]) -> Iterator[LoadItem]:
    """The image items whose file is not already a document's figure (read after the documents)."""
    for item in images:
        if isinstance(item, Document) and str(item.metadata.get("source_path", "")) in shown:
            logger.info("%s is a figure of a document already; not stored on its own", item.id)
            continue
        yield item


def _documents(items: Iterator[Any]) -> Iterator[LoadItem]:
    """Annotated image items as documents (errors pass through)."""
    for item in items:
        if isinstance(item, ItemError):
            yield item
            continue
        try:
            yield item.to_document()
        except InvalidInputError as exc:
            yield item_error(item.image.source or item.id, exc)


def _image_file(path: Path) -> LoadItem:
    try:
        return Document.create(image=path, id=path.name, metadata={"source": path.name}, source=str(path))
    except InvalidInputError as exc:
        return item_error(str(path), exc)


def iter_text_dir(
    root: Path, max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES, *, options: Mapping[str, Any] | None = None,
    skip: frozenset[str] = frozenset(),
) -> Iterator[LoadItem]:
    """Load every non-hidden file under ``root`` (suffixes in ``skip`` left out) in sorted relative-path
    order, each with the reader of its type; other types are an :class:`ItemError` naming the type."""
    for rel in _document_files(root, skip=skip):
        yield from _with_paths(_read_file(root / rel, rel, max_document_bytes, options or {}), root, content=True)


def _read_file(path: Path, rel: str, max_document_bytes: int, options: Mapping[str, Any]) -> Iterator[LoadItem]:
    """The document(s) of one file, by its suffix; a file of no known suffix that is DICOM (``IM0001``,
    ``x.IMA``) is read as DICOM; a ``DICOMDIR`` (a DICOM media index, no image) is passed over (logged)."""
    suffix = path.suffix.lower()
    if path.is_symlink() and not path.exists():  # before the type: a link's name says nothing about its target
        yield ItemError(rel, f"broken symlink or symlink loop ({_link_problem(path)})")
        return
    if path.name.upper() == "DICOMDIR":
        logger.info("%s: a DICOM directory index (DICOMDIR), not an image; passed over", rel)
        return
    if suffix not in READERS and _is_dicom(path):
        suffix = ".dcm"
    if suffix in READERS:
        try:
            yield from READERS[suffix](path, rel, max_document_bytes, options)
        except InvalidInputError as exc:
            yield item_error(rel, exc)
        except OSError as exc:
            yield ItemError(rel, f"cannot read file ({exc.strerror or exc})")
        except Exception as exc:  # noqa: BLE001 - a library choking on a malformed file must not end the ingest
            logger.info("reading %s failed", rel, exc_info=True)
            yield ItemError(rel, f"not readable as {suffix[1:].upper()} ({type(exc).__name__}: {str(exc).strip()[:200]})")
    else:
        yield ItemError(rel, f"unsupported file type {suffix or '(no extension)'}")


#: Byte offset of the ``DICM`` marker after a DICOM file's 128-byte preamble (DICOM PS3.10 section 7.1).
DICOM_MAGIC_OFFSET = 128


def _is_dicom(path: Path) -> bool:
    """Whether ``path`` is a DICOM file by its content: ``DICM`` at byte 128 (PACS and CD exports name
    their files ``IM0001`` or ``*.IMA``, without ``.dcm``)."""
    try:
        with open(path, "rb") as f:
            f.seek(DICOM_MAGIC_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _link_problem(path: Path) -> str:
    """Why the symlink ``path`` leads nowhere: a loop, or the target it names that does not exist."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "the links form a loop"
    return f"its target {os.readlink(path)} does not exist"


def _document_files(root: Path, skip: frozenset[str] = frozenset()) -> list[str]:
    """Relative POSIX paths of the non-hidden files under ``root`` (suffixes in ``skip`` left out), sorted.

    Hidden files (``.name``, which includes LibreOffice's ``.~lock.NAME#``) and Microsoft Office's lock
    files (``~$NAME.docx``, written while a document is open) are passed over: they are not documents.

    A file reached twice (a symlink beside its target, two links to one file) is listed once, since its
    resolved path is its identity: under the path that is not a link when there is one, else the first.
    """
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith((".", "~$")) or Path(name).suffix.lower() in skip:
                continue
            found.append(Path(dirpath, name).relative_to(root).as_posix())
    chosen: dict[str, str] = {}
    for rel in sorted(found):
        try:
            key = source_path(root / rel)
        except (OSError, RuntimeError):  # a symlink loop: left to the reader, which names it
            key = f"unresolved:{rel}"
        if key not in chosen or ((root / chosen[key]).is_symlink() and not (root / rel).is_symlink()):
            if key in chosen:
                logger.info("%s and %s are the same file; reading it once, as %s", chosen[key], rel, rel)
            chosen[key] = rel
        else:
            logger.info("%s and %s are the same file; reading it once, as %s", chosen[key], rel, chosen[key])
    return sorted(chosen.values())


__all__ = [
    "JSONL_SUFFIXES",
    "MARKDOWN_SUFFIXES",
    "TEXT_SUFFIXES",
    "iter_jsonl_documents",
    "iter_path",
    "iter_text_dir",
    "load_text_file",
    "source_path",
]
