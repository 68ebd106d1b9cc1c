"""PDF reader (pypdf): text by page, figures with their captions, OCR of scanned pages.

- **Text**: one section per page with heading path ``("p. N",)``, so views and citations say which
  page a passage is on. The document title is the PDF's ``/Title``, else its first line, else the
  file name.
- **Figures**: every embedded image at least :data:`~._common.MIN_FIGURE_SIDE` pixels on each side
  becomes an image–text item ``<file>#figure-<k>`` whose text is its caption: the ``Figure N``/``Fig. N``
  lines of the same page, matched to the page's images in reading order (the k-th image of a page
  takes its k-th caption; a figure without one keeps an empty text). Metadata: ``page``, ``figure``.
  An image repeated in the file (a letterhead logo on every page) is one figure: its first
  occurrence, with its caption, else the first caption a repeat has.
- **Scanned pages** (no text layer, one or more images): the largest image is read with RapidOCR
  (``rapidocr_onnxruntime``, ONNX models inside its wheel, offline; ``pip install 'heterag[ocr]'``);
  the document gets ``metadata["ocr_pages"]`` (e.g. ``"3,4"``) and the page heading says ``(OCR)``.
  Its image is not a figure. A page where OCR reads fewer than :data:`MIN_OCR_CHARS` letters or digits
  (a chart, a photo) is not a scan: its images are figures without captions. Without RapidOCR a page
  without a text layer is one skipped line naming the page.
- **Encrypted** PDFs (a password other than the empty one) and **broken** ones are one line each.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from heterag.core.documents import ItemError, Section
from heterag.core.errors import InvalidInputError

from ..base import LoadItem
from ._common import CAPTION, check_file_size, distinct_figures, figure_image, figure_item, find_captions, make_document

#: A page without a text layer is a scan when OCR reads at least this many letters or digits on it; with
#: fewer (a chart read as "ll") its pictures are figures without captions.
MIN_OCR_CHARS = 10

log = logging.getLogger(__name__)

_OCR: list[Any] = []


def ocr_engine() -> Any | None:
    """The shared RapidOCR engine, or None when ``rapidocr_onnxruntime`` is not installed."""
    if not _OCR:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError:
            _OCR.append(None)
        else:
            _OCR.append(RapidOCR())
    return _OCR[0]


def ocr_image(pil: Any) -> str:
    """The text RapidOCR reads in a PIL image, lines top to bottom ("" when it finds none)."""
    import numpy as np

    engine = ocr_engine()
    if engine is None:
        raise InvalidInputError("OCR needs rapidocr_onnxruntime: pip install 'heterag[ocr]'")
    result, _ = engine(np.asarray(pil.convert("RGB")))
    lines = sorted(result or [], key=lambda r: (round(min(p[1] for p in r[0]) / 10), min(p[0] for p in r[0])))
    return "\n".join(str(r[1]) for r in lines)


def read_pdf(path: Path, rel: str, max_document_bytes: int, options: Mapping[str, Any]) -> Iterator[LoadItem]:
    """The document (and figure items) of one PDF file; see the module docstring."""
    quiet = logging.getLogger("pypdf")  # its warnings about damaged files repeat what the skipped line says
    before = quiet.level
    quiet.setLevel(max(before, logging.ERROR))
    try:
        yield from _read_pdf(path, rel, max_document_bytes, options)
    finally:
        quiet.setLevel(before)


def _read_pdf(path: Path, rel: str, max_document_bytes: int, options: Mapping[str, Any]) -> Iterator[LoadItem]:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    check_file_size(path, rel, max_document_bytes)
    try:
        reader = PdfReader(str(path))
        locked = reader.is_encrypted and not reader.decrypt("")
        pages = [] if locked else list(reader.pages)
    except FileNotDecryptedError:
        raise InvalidInputError("encrypted PDF (it needs a password)") from None
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise InvalidInputError(f"not a readable PDF ({str(exc).strip() or type(exc).__name__})") from None
    except NotImplementedError as exc:  # e.g. an encryption method pypdf lacks
        raise InvalidInputError(f"encrypted PDF ({exc})") from None
    if locked:
        raise InvalidInputError("encrypted PDF (it needs a password)")
    sections: list[Section] = []
    figures: list[LoadItem] = []
    ocr_pages: list[int] = []
    for number, page in enumerate(pages, start=1):
        try:
            text = page.extract_text() or ""
        except Exception as exc:  # noqa: BLE001 - a broken content stream spoils one page, not the file
            figures.append(ItemError(f"{rel} p. {number}", f"text not readable ({type(exc).__name__}: {exc})"))
            text = ""
        images = _page_images(page, f"{rel} p. {number}")
        if not text.strip() and images:
            biggest = max(images, key=lambda im: im[1].width * im[1].height)
            if ocr_engine() is None:
                figures.append(ItemError(f"{rel} p. {number}", "scanned page without a text layer; OCR needs "
                                         "rapidocr_onnxruntime: pip install 'heterag[ocr]'"))
                continue
            text = ocr_image(biggest[0])
            if len(re.findall(r"\w", text)) >= MIN_OCR_CHARS:
                sections.append(Section(text, (f"p. {number} (OCR)",)))
                ocr_pages.append(number)
                continue
            text = ""  # OCR read (next to) nothing: not a scan but a page of figures without text, kept as figures
        if text.strip():
            sections.append(Section(text, (f"p. {number}",)))
        captions = find_captions(text.splitlines())
        for k, (_, ref) in enumerate(images):
            n = captions[k][0] if k < len(captions) else None
            caption = captions[k][1] if k < len(captions) else ""
            figures.append((number, n, ref, caption))  # type: ignore[arg-type]
    title = _title(reader, sections, path)
    meta: dict[str, Any] = {"pages": len(pages)}
    if ocr_pages:
        meta.update(ocr=True, ocr_pages=",".join(map(str, ocr_pages)))
    doc = make_document(rel, title, sections, max_document_bytes, meta)
    if isinstance(doc, ItemError) and not any(isinstance(f, tuple) for f in figures):
        yield doc if doc.message != "no text found" else ItemError(rel, "no text found (and no figures)")
    elif not isinstance(doc, ItemError):
        yield doc
    used: set[int] = set()
    found = [f for f in figures if not isinstance(f, ItemError)]
    keep = distinct_figures([(f[2], f[3]) for f in found])  # type: ignore[index]
    captions = {id(found[i]): (found[i][1] if c == found[i][3] else _number(c), c)  # type: ignore[index]
                for i, c in keep.items()}
    for f in figures:
        if isinstance(f, ItemError):
            yield f
            continue
        if id(f) not in captions:  # a repeat of an image seen before in this file (a logo on every page)
            continue
        page_no, _, ref, _ = f  # type: ignore[misc]
        n, caption = captions[id(f)]
        k = n if n is not None and n not in used else \
            min(set(range(1, len(captions) + 2)) - used - {c[0] for c in captions.values()})  # not a caption's number
        used.add(k)
        yield figure_item(rel, k, ref, caption, title, {"page": page_no})


def _number(caption: str) -> int | None:
    m = CAPTION.match(caption)
    return int(m.group(2)) if m else None


def _page_images(page: Any, source: str) -> list[tuple[Any, Any]]:
    """``(PIL image, ImageRef)`` of each figure-sized image on ``page`` (unreadable ones skipped, logged)."""
    out = []
    try:
        files = list(page.images)
    except Exception as exc:  # noqa: BLE001 - pypdf raises many kinds for odd image streams
        log.info("%s: images not readable (%s)", source, exc)
        return out
    for i, im in enumerate(files):
        try:
            pil = im.image
        except Exception as exc:  # noqa: BLE001
            log.info("%s: image %d not decodable (%s)", source, i, exc)
            continue
        ref = figure_image(None, pil, f"{source} image {i + 1}")
        if ref is not None:
            out.append((pil, ref))
    return out


def _title(reader: Any, sections: list[Section], path: Path) -> str:
    try:
        meta_title = (reader.metadata or {}).get("/Title")
    except Exception:  # noqa: BLE001 - a broken info dictionary
        meta_title = None
    if isinstance(meta_title, str) and meta_title.strip() and meta_title.strip().lower() not in ("untitled", "(anonymous)"):
        return meta_title.strip()
    for s in sections:
        first = next((line.strip() for line in s.text.splitlines() if line.strip()), "")
        if first:
            return first[:200]
    return path.stem
