"""DOCX reader (python-docx): headings, paragraphs, tables and embedded images with captions.

- Paragraphs styled ``Title`` or ``Heading N`` open sections (heading path = the chain of headings
  above); other paragraphs are paragraphs of the current section; a table becomes one line per row
  with its cells joined by `` | `` (merged cells once), in document order.
- Every embedded picture at least :data:`~._common.MIN_FIGURE_SIDE` pixels on each side becomes an
  image–text item ``<file>#figure-<k>`` whose text is its caption: the next paragraph (or the one
  before) styled ``Caption`` or starting with ``Figure N``/``Fig. N``. A picture repeated in the file
  (a logo in every section) is one figure: the first, with its caption, else the first a repeat has.
- Title: the document's core property ``title``, else its ``Title`` paragraph or first heading,
  else the file name.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from heterag.core.documents import Section
from heterag.core.errors import InvalidInputError

from ..base import LoadItem
from ._common import CAPTION, check_file_size, distinct_figures, figure_image, figure_item, make_document

_HEADING = re.compile(r"^heading\s*(\d)$", re.IGNORECASE)
_BLIP = "{http://schemas.openxmlformats.org/drawingml/2006/main}blip"
_EMBED = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}embed"


def read_docx(path: Path, rel: str, max_document_bytes: int, options: Mapping[str, Any]) -> Iterator[LoadItem]:
    """The document (and figure items) of one DOCX file; see the module docstring."""
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    check_file_size(path, rel, max_document_bytes)
    if not zipfile.is_zipfile(path):
        raise InvalidInputError("not a DOCX file (not a zip package; encrypted documents are not supported)")
    try:
        document = docx.Document(str(path))
    except PackageNotFoundError:
        raise InvalidInputError("not a DOCX file (no Word document inside the zip package)") from None
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise InvalidInputError(f"not a readable DOCX file ({str(exc).strip() or type(exc).__name__}; "
                                "encrypted documents are not supported)") from None
    sections: list[Section] = []
    heading: list[tuple[int, str]] = []
    paragraphs: list[str] = []
    pictures: list[tuple[int, Any]] = []  # (index of the block, image part)
    blocks: list[tuple[str, str]] = []  # (style, text) of each paragraph, in order, for caption lookup
    doc_title = ""

    def flush() -> None:
        if paragraphs:
            sections.append(Section("\n\n".join(paragraphs), tuple(h for _, h in heading)))
            paragraphs.clear()

    for child in document.element.body.iterchildren():
        tag = child.tag.rsplit("}", 1)[-1]
        if tag == "p":
            p = Paragraph(child, document)
            style = (p.style.name if p.style is not None else "") or ""
            text = p.text.strip()
            for blip in child.iter(_BLIP):
                rid = blip.get(_EMBED)
                part = document.part.related_parts.get(rid) if rid else None
                if part is not None:
                    pictures.append((len(blocks), part))
            blocks.append((style, text))
            if not text:
                continue
            m = _HEADING.match(style)
            if style.lower() == "title" or m:
                flush()
                level = 0 if style.lower() == "title" else int(m.group(1))
                heading = [(lv, h) for lv, h in heading if lv < level] + [(level, text)]
                doc_title = doc_title or text
                continue
            paragraphs.append(text)
        elif tag == "tbl":
            rows = []
            for row in Table(child, document).rows:
                cells: list[str] = []
                for cell in row.cells:
                    t = " ".join(cell.text.split())
                    if not cells or t != cells[-1]:  # a merged cell repeats itself
                        cells.append(t)
                if any(cells):
                    rows.append(" | ".join(cells))
            if rows:
                paragraphs.append("\n".join(rows))
            blocks.append(("table", ""))
    flush()
    props = document.core_properties
    title = (props.title or "").strip() or doc_title or path.stem
    yield make_document(rel, title, sections, max_document_bytes)
    used: set[int] = set()
    found = [(ref, *_caption(blocks, block)) for block, part in pictures
             if (ref := figure_image(part.blob, None, f"{rel} picture")) is not None]
    keep = distinct_figures([(ref, caption) for ref, caption, _ in found])  # a picture pasted twice is one figure
    for i, caption in keep.items():
        ref = found[i][0]
        m = CAPTION.match(caption)
        n = int(m.group(2)) if m else None
        k = n if n is not None and n not in used else max(used | {0}) + 1
        used.add(k)
        yield figure_item(rel, k, ref, caption, title)


def _caption(blocks: list[tuple[str, str]], at: int) -> tuple[str, int | None]:
    """The caption of the picture in block ``at``: that paragraph's own text, or the next, or the previous
    paragraph, when it is styled Caption or reads "Figure N ..."."""
    for i in (at, at + 1, at - 1, at + 2):
        if 0 <= i < len(blocks):
            style, text = blocks[i]
            m = CAPTION.match(text)
            if text and (m or style.lower() == "caption"):
                return text, int(m.group(2)) if m else None
    return "", None
