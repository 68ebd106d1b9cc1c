"""Document-format readers: one module per format behind one small protocol and one registry.

A :data:`Reader` is ``reader(path, rel, max_document_bytes, options) -> Iterator[LoadItem]``: it
yields the file's documents and an :class:`~heterag.core.documents.ItemError` for whatever in it cannot be
used, and raises :class:`~heterag.core.errors.InvalidInputError` for a file it cannot read at all (the
caller turns that into one ``skipped <file>: <reason>`` line). ``rel`` is the file's path relative to
the ingested root: the id and ``metadata["source"]`` of its main document; figures and other parts of
a file are image items with ids ``<rel>#figure-<n>``. ``options`` are the ingest options (see each
reader, e.g. ``dicom_patient_tags``).

:data:`READERS` maps file suffixes to readers; :func:`corpora.files.iter_path` uses it for every file
in a folder, so adding a format is adding a module here and a line to :data:`READERS`.
Whole-corpus layouts read as one (BEIR, COCO, VQA-RAD, MedMNIST, captions and image folders, JSON
lines) are the other registry, :data:`corpora.layouts.LAYOUT_READERS`, tried first.
Readers import their library (pypdf, BeautifulSoup, python-docx, pydicom) only when called.

=========  =====================  ==========================================================
format     module                 library (licence)
=========  =====================  ==========================================================
text, MD   :mod:`.text`           the standard library (Markdown headings: :mod:`corpora.markdown`)
PDF        :mod:`.pdf`            pypdf (BSD-3); OCR of scanned pages: rapidocr_onnxruntime
                                  (Apache-2.0, the ``ocr`` extra)
HTML       :mod:`.html`           beautifulsoup4 (MIT), the standard library's HTML parser
DOCX       :mod:`.docx`           python-docx (MIT)
DICOM      :mod:`.dicom`          pydicom (MIT)
=========  =====================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..base import LoadItem
from .text import load_text_file

#: ``reader(path, rel, max_document_bytes, options)``: the documents (and per-part errors) of one file.
Reader = Callable[[Path, str, int, Mapping[str, Any]], Iterator[LoadItem]]


def _text(path: Path, rel: str, max_bytes: int, options: Mapping[str, Any]) -> Iterator[LoadItem]:
    yield load_text_file(path, rel, max_bytes)


def _pdf(path: Path, rel: str, max_bytes: int, options: Mapping[str, Any]) -> Iterator[LoadItem]:
    from .pdf import read_pdf

    return read_pdf(path, rel, max_bytes, options)


def _html(path: Path, rel: str, max_bytes: int, options: Mapping[str, Any]) -> Iterator[LoadItem]:
    from .html import read_html

    return read_html(path, rel, max_bytes, options)


def _docx(path: Path, rel: str, max_bytes: int, options: Mapping[str, Any]) -> Iterator[LoadItem]:
    from .docx import read_docx

    return read_docx(path, rel, max_bytes, options)


def _dicom(path: Path, rel: str, max_bytes: int, options: Mapping[str, Any]) -> Iterator[LoadItem]:
    from .dicom import read_dicom

    return read_dicom(path, rel, max_bytes, options)


#: File suffix (lower case) -> reader.
READERS: dict[str, Reader] = {
    ".txt": _text,  # plain text: one section
    ".md": _text,  # Markdown: sections on its headings
    ".markdown": _text,
    ".pdf": _pdf,
    ".html": _html,
    ".htm": _html,
    ".xhtml": _html,
    ".docx": _docx,
    ".dcm": _dicom,
    ".dicom": _dicom,
}

__all__ = ["READERS", "Reader"]
