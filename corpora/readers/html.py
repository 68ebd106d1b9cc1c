"""HTML reader (BeautifulSoup with the standard library's parser): readable text under its headings.

- Scripts, styles, templates, forms, SVG, iframes and comments are never ingested; navigation and
  other boilerplate is dropped: ``nav``, ``header``, ``footer``, ``aside`` elements, ARIA roles
  ``navigation``/``banner``/``contentinfo``/``search``, and elements whose id or class names a menu,
  navbar, breadcrumb, sidebar, footer, cookie banner or advert. When the page has a ``main`` or
  ``article`` element, only that is read.
- ``h1``-``h6`` open sections: each section's heading path is the chain of headings above it
  (``("Guide", "Install", "Linux")``). Paragraphs, list items, quotes, preformatted blocks and
  definition lists are paragraphs of the current section; tables become one line per row with cells
  joined by `` | ``.
- Title: ``<title>``, else the first ``h1``, else the file name. The encoding comes from the file's
  BOM or ``<meta charset>`` (UTF-8 otherwise).
- **Images**: every ``<img>`` of the read part whose ``src`` is a local file (a relative path, resolved
  against the HTML file's folder, that stays inside the ingested folder) and at least
  :data:`~._common.MIN_FIGURE_SIDE` pixels on each side becomes an image–text item ``<file>#figure-<k>``,
  like a DOCX picture: its text is the ``<figcaption>`` of its ``<figure>``, else its ``alt`` text, else its
  ``title``; ``metadata["image_file"]`` is the image's resolved path (so an image folder ingested with the
  page does not store that file a second time). Remote (``http:``, ``//host``), ``data:``, ``file:`` and
  site-absolute (``/img/x.png``) sources are never fetched or read: they are skipped (logged).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

from heterag.core.documents import ItemError, Section, content_hash
from heterag.core.errors import InvalidInputError
from heterag.core.images import ImageRef

from ..base import LoadItem
from ._common import CAPTION, FILE_SIZE_FACTOR, figure_image, figure_item, make_document

log = logging.getLogger(__name__)
#: An ``src`` that is not a local relative path: a URL scheme (``https:``, ``data:``, ``file:``) or ``//host``.
_NOT_LOCAL = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.\-]*:|//|/|\\)")

_DROP_TAGS = ("script", "style", "noscript", "template", "svg", "iframe", "form", "button", "select", "canvas",
              "nav", "header", "footer", "aside", "object", "embed")
_DROP_ROLES = {"navigation", "banner", "contentinfo", "search", "menu", "menubar", "complementary"}
_BOILERPLATE = re.compile(r"(^|[-_ ])(nav|navbar|navigation|menu|breadcrumbs?|sidebar|footer|cookies?|consent|advert|ads?|"
                          r"social|share|skip-link)($|[-_ ])", re.IGNORECASE)
_HEADINGS = {f"h{i}": i for i in range(1, 7)}
_BLOCKS = {"p", "li", "pre", "blockquote", "dt", "dd", "table", "figcaption", "address", "caption"}


def read_html(path: Path, rel: str, max_document_bytes: int, options: Mapping[str, Any]) -> Iterator[LoadItem]:
    """The document of one HTML file; see the module docstring."""
    from bs4 import BeautifulSoup, Comment

    size = path.stat().st_size
    if size > max_document_bytes * 4:  # markup is several times its text
        raise InvalidInputError(f"file is {size / 2**20:.1f} MiB, over the {max_document_bytes * 4 / 2**20:.0f} MiB "
                                "limit for HTML (raise --max-doc-mb)")
    data = path.read_bytes()
    if not data.strip():
        raise InvalidInputError("file is empty")
    if b"\x00" in data[:4096] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InvalidInputError("contains NUL bytes (binary file?)")
    soup = BeautifulSoup(data, "html.parser")
    for c in soup.find_all(string=lambda s: isinstance(s, Comment)):
        c.extract()
    title_tag = soup.find("title")
    page_title = title_tag.get_text(" ", strip=True) if title_tag else ""
    for tag in soup.find_all(["title", "meta", "link"]):  # the title is the document's title, not its text
        tag.decompose()
    for tag in soup.find_all(_DROP_TAGS):
        tag.decompose()
    for tag in soup.find_all(True):
        if getattr(tag, "decomposed", False):  # inside boilerplate removed already
            continue
        attrs = getattr(tag, "attrs", None) or {}
        role = str(attrs.get("role", "")).lower()
        names = " ".join([str(attrs.get("id", ""))] + list(attrs.get("class", []) or []))
        if role in _DROP_ROLES or (names.strip() and _BOILERPLATE.search(names) and tag.name not in ("body", "html", "main",
                                                                                                      "article")):
            tag.decompose()
    root = soup.find("main") or soup.find("article") or soup.find("body") or soup
    sections: list[Section] = []
    heading: list[tuple[int, str]] = []
    paragraphs: list[str] = []

    def flush() -> None:
        if paragraphs:
            sections.append(Section("\n\n".join(paragraphs), tuple(h for _, h in heading)))
            paragraphs.clear()

    first_h1 = ""
    for el in root.find_all(list(_HEADINGS) + list(_BLOCKS)):
        if any(p.name in _BLOCKS for p in el.parents if p is not root and p.name) and el.name not in _HEADINGS:
            continue  # inside a block already read (a paragraph in a list item, a table in a quote)
        if el.name in _HEADINGS:
            text = el.get_text(" ", strip=True)
            if not text:
                continue
            flush()
            level = _HEADINGS[el.name]
            heading = [(lv, h) for lv, h in heading if lv < level] + [(level, text)]
            first_h1 = first_h1 or (text if level == 1 else "")
            continue
        if el.name == "table":
            rows = [" | ".join(c.get_text(" ", strip=True) for c in tr.find_all(["th", "td"])) for tr in el.find_all("tr")]
            text = "\n".join(r for r in rows if r.strip(" |"))
        elif el.name == "pre":
            text = el.get_text()
        else:
            text = " ".join(el.get_text().split())
        if text.strip():
            paragraphs.append(text.strip())
    flush()
    if not sections:  # a page of bare text without block elements
        text = "\n".join(line.strip() for line in root.get_text("\n").splitlines() if line.strip())
        sections = [Section(text)] if text else []
    title = page_title or first_h1 or path.stem
    images = _local_images(root, path, rel, max_document_bytes)
    # the page's figures follow its image files: their hashes are part of the page (a changed or deleted
    # image file makes the page count as changed, and its old figures are replaced or removed)
    shown = {"figure_files": content_hash(*[[f.as_posix(), ref.sha256] for ref, _, f in images])} if images else {}
    doc = make_document(rel, title, sections, max_document_bytes, shown)
    if not (isinstance(doc, ItemError) and doc.message == "no text found" and images):  # a page of pictures
        yield doc
    used: set[int] = set()
    for ref, caption, file in images:
        m = CAPTION.match(caption)
        n = int(m.group(2)) if m else None
        k = n if n is not None and n not in used else max(used | {0}) + 1
        used.add(k)
        yield figure_item(rel, k, ref, caption, title, {"image_file": file.as_posix()})


def _local_images(root: Any, path: Path, rel: str, max_document_bytes: int) -> list[tuple[ImageRef, str, Path]]:
    """``(image, caption, resolved file)`` of each figure-sized local ``<img>`` under ``root`` in document order
    (each file once); see the module docstring for what is read and what is skipped."""
    depth = len(PurePosixPath(rel).parts)
    base = path.parents[depth - 1].resolve() if 0 < depth <= len(path.parents) else path.parent.resolve()
    out: list[tuple[ImageRef, str, Path]] = []
    seen: set[Path] = set()
    for img in root.find_all("img"):
        src = str(img.get("src") or "").strip()
        if not src:
            continue
        if _NOT_LOCAL.match(src):
            log.info("%s: image %s is not a local file; not fetched", rel, src[:200])
            continue
        try:
            file = (path.parent / unquote(src.split("#", 1)[0].split("?", 1)[0])).resolve(strict=True)
        except (OSError, RuntimeError, ValueError):
            log.warning("%s: image %s not found; the page is read without it", rel, src[:200])
            continue
        if file in seen or not file.is_file():
            continue
        if not file.is_relative_to(base):
            log.warning("%s: image %s is outside the ingested folder %s; not read", rel, src[:200], base)
            continue
        if file.stat().st_size > FILE_SIZE_FACTOR * max_document_bytes:
            log.info("%s: image %s is too large", rel, src[:200])
            continue
        ref = figure_image(file.read_bytes(), None, f"{rel} image {src[:200]}")
        if ref is None:  # an icon, or not an image
            continue
        seen.add(file)
        figure = img.find_parent("figure")
        caption_el = figure.find("figcaption") if figure is not None else None
        caption = caption_el.get_text(" ", strip=True) if caption_el is not None else ""
        caption = " ".join((caption or str(img.get("alt") or "") or str(img.get("title") or "")).split())
        out.append((ref, caption, file))
    return out
