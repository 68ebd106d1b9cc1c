"""Helpers the format readers share: figure items, caption matching, size checks."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from heterag.core.documents import Document, ItemError, Section
from heterag.core.errors import InvalidInputError
from heterag.core.images import ImageRef

#: Images smaller than this on either side (icons, rules, bullets) are not figures.
MIN_FIGURE_SIDE = 32
#: A caption: "Figure 2: ...", "Fig. 3. ...", "FIGURE 1 - ...".
CAPTION = re.compile(r"^\s*(fig(?:ure)?\.?)\s*(\d+)\s*[.:\-\u2013\u2014]?\s*(.*)$", re.IGNORECASE)
#: Upper bound on the file size a reader opens, as a multiple of the per-document text limit
#: (files with images are much larger than their text).
FILE_SIZE_FACTOR = 20


def check_file_size(path: Path, rel: str, max_document_bytes: int) -> None:
    """Raise :class:`InvalidInputError` if ``path`` is larger than ``FILE_SIZE_FACTOR * max_document_bytes``."""
    size = path.stat().st_size
    limit = FILE_SIZE_FACTOR * max_document_bytes
    if size > limit:
        raise InvalidInputError(f"file is {size / 2**20:.1f} MiB, over the {limit / 2**20:.0f} MiB limit for this type "
                                "(raise --max-doc-mb)")
    if size == 0:
        raise InvalidInputError("file is empty (0 bytes)")


def find_captions(lines: list[str]) -> list[tuple[int, str]]:
    """``(figure number, caption text)`` for every caption line in ``lines`` (in order); a caption goes on
    over the next lines until one ends a sentence (at most three lines)."""
    out: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = CAPTION.match(line)
        if not m or not m.group(3).strip():
            continue
        parts = [line.strip()]
        j = i
        while not parts[-1].endswith((".", "!", "?")) and j + 1 < len(lines) and len(parts) < 3 \
                and lines[j + 1].strip() and not CAPTION.match(lines[j + 1]):
            j += 1
            parts.append(lines[j].strip())
        out.append((int(m.group(2)), " ".join(parts)))
    return out


def figure_item(rel: str, n: int, image: ImageRef, caption: str, title: str,
                metadata: Mapping[str, Any] | None = None) -> Document | ItemError:
    """The image–text item of figure ``n`` of the file ``rel``: id ``<rel>#figure-<n>``, its caption as text."""
    doc_id = f"{rel}#figure-{n}"
    try:
        return Document.create(
            sections=[Section(caption, ("Figure " + str(n),))] if caption.strip() else None, image=image, id=doc_id,
            title=f"{title}, figure {n}", metadata={"source": rel, "figure": n, **(metadata or {})}, source=doc_id,
        )
    except InvalidInputError as exc:
        return ItemError(doc_id, str(exc).removeprefix(f"{doc_id}: "))


def distinct_figures(figures: list[tuple[ImageRef, str]]) -> dict[int, str]:
    """The figures to keep when one image repeats within a document (a letterhead logo on every page, a
    picture pasted twice): position of the first occurrence of each distinct image (same pixels, by
    :attr:`ImageRef.sha256`) -> its caption, its own or else the first caption one of its repeats has."""
    first: dict[str, int] = {}
    keep: dict[int, str] = {}
    for i, (ref, caption) in enumerate(figures):
        if ref.sha256 not in first:
            first[ref.sha256] = i
            keep[i] = caption
        elif not keep[first[ref.sha256]].strip() and caption.strip():
            keep[first[ref.sha256]] = caption
    return keep


def figure_image(data: bytes | None, pil: Any, source: str) -> ImageRef | None:
    """An :class:`ImageRef` for an embedded image (its bytes, else a PIL image), or None when it is too small
    to be a figure or cannot be decoded."""
    try:
        ref = ImageRef.from_bytes(data, source=source) if data else ImageRef.from_pil(pil, source=source)
    except (InvalidInputError, OSError, ValueError):
        if pil is None:
            return None
        try:
            ref = ImageRef.from_pil(pil, source=source)
        except (InvalidInputError, OSError, ValueError):
            return None
    if min(ref.width, ref.height) < MIN_FIGURE_SIDE:
        return None
    return ref


def make_document(rel: str, title: str, sections: list[Section], max_document_bytes: int,
                  metadata: Mapping[str, Any] | None = None) -> Document | ItemError:
    """The main document of a file (id and source ``rel``), or an :class:`ItemError` saying why not."""
    sections = [s for s in sections if s.text.strip()]
    if not sections:
        return ItemError(rel, "no text found")
    try:
        return Document.create(sections=sections, title=title, id=rel, metadata={"source": rel, **(metadata or {})},
                               source=rel, max_bytes=max_document_bytes)
    except InvalidInputError as exc:
        return ItemError(rel, str(exc).removeprefix(f"{rel}: "))
