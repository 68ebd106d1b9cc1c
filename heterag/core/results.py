"""What retrieval and generation hand back: hits, citations, answers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from heterag.core.documents import MetadataValue


@dataclass(frozen=True)
class Hit:
    """One retrieved generation chunk, with the retrieval view that matched it."""

    chunk_id: str
    doc_id: str
    text: str  # the short generation chunk
    view: str  # the retrieval view text that was matched (empty for late-chunking views)
    score: float  # cosine similarity between query and view, higher is better
    title: str = ""
    heading: tuple[str, ...] = ()
    index: int = 0
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)
    #: Path of the item's stored image file (under the collection's folder), None for text-only items.
    image: str | None = None
    #: Per-signal scores that were fused into ``score``: cosine similarities ``text``, ``image``, ``cross``;
    #: ``keyword``, the BM25 score (>= 0) under hybrid or keyword retrieval.
    scores: Mapping[str, float] = field(default_factory=dict)
    #: Which searches found this hit: ``("dense",)`` (vectors), ``("keyword",)`` or both.
    found_by: tuple[str, ...] = ("dense",)
    #: What hit filters said about this hit (re-ranking reasons, scores they computed).
    notes: tuple[str, ...] = ()
    #: Why a hit filter removed this hit ("" while it is kept).
    dropped: str = ""

    def with_note(self, note: str) -> Hit:
        """A copy with ``note`` appended to :attr:`notes`."""
        return replace(self, notes=(*self.notes, note))

    def drop(self, reason: str) -> Hit:
        """A copy marked as removed by a hit filter, with the reason."""
        return replace(self, dropped=reason or "dropped")

    @property
    def where(self) -> SourceRef:
        """Where this chunk comes from in the user's terms: file, page, section, figure."""
        return SourceRef.of(self)


#: A page heading as the PDF reader writes it: ``p. 4`` or ``p. 4 (OCR)``.
_PAGE = re.compile(r"^p\. (\d+)(?: \(OCR\))?$")
#: A figure item's section heading (``Figure 2``), written by the format readers.
_FIGURE = re.compile(r"^figure \d+$", re.IGNORECASE)


def _int_or_none(value: object) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class SourceRef:
    """Where a retrieved chunk comes from, in the user's terms (what a citation shows).

    ``source`` is the file it was read from as stored (``metadata["source"]`` of a document that has a
    ``source_path``): its path relative to the ingested folder (an absolute path when two folders held the
    same relative path; "" for knowledge not read from a file, which is then named by its title).
    ``page`` is the 1-based PDF page (None when not paged), ``section`` the heading path inside the file
    (``"Sampling > Timing"``; page and figure labels, and a first heading that repeats the title, left out) and
    ``figure`` the figure number of a figure item (a PDF's or DOCX's picture, an HTML image).
    """

    source: str = ""
    title: str = ""
    page: int | None = None
    section: str = ""
    figure: int | None = None

    @classmethod
    def of(cls, hit: Hit) -> SourceRef:
        """The location of ``hit``, from its metadata (``source`` and ``source_path``, ``page``, ``figure``) and
        heading path."""
        meta = hit.metadata
        page = _int_or_none(meta.get("page"))
        figure = _int_or_none(meta.get("figure"))
        parts = []
        for h in hit.heading:
            m = _PAGE.match(h)
            if m:
                page = page if page is not None else int(m.group(1))
            elif not (figure is not None and _FIGURE.match(h)):
                parts.append(h)
        title = _document_title(hit.title, figure)
        if parts and parts[0].strip().lower() == title.strip().lower():  # a page's h1 / a note's "# Title" repeats it
            parts = parts[1:]
        # a file's path; "source" without a file behind it names a data set (the demo's "pydoc_data.topics")
        source = str(meta.get("source") or "") if meta.get("source_path") else ""
        return cls(source=source, title=title, page=page, section=" > ".join(parts), figure=figure)

    def location(self) -> str:
        """``"estuary-paper.pdf, p. 2, figure 2"``, ``"field-guide.html, Sampling > Timing"``: file, page, section,
        figure; the title stands in for the file when there is none ("" when neither is known)."""
        return self._join(self.source or self.title)

    def label(self, fallback: str = "") -> str:
        """The citation label: :meth:`location` with the document's title after the file name when the title
        says more than the name (``estuary-paper.pdf ("Tidal Forces in Coastal Estuaries"), p. 2, figure 2``);
        ``fallback`` (e.g. the document id) when nothing is known."""
        head = self.source or self.title
        if self.source and self.title and _differs(self.title, self.source):
            head = f'{self.source} ("{self.title}")'
        return self._join(head) or fallback

    def fields(self, fallback: str = "") -> dict[str, str | int | None]:
        """``source``, ``page``, ``section``, ``figure`` and ``label`` (:meth:`label` with ``fallback``) as plain
        data, for JSON answers (``heterag ask --json``, the app's API)."""
        return {"source": self.source, "page": self.page, "section": self.section, "figure": self.figure,
                "label": self.label(fallback)}

    def _join(self, head: str) -> str:
        parts = [head, f"p. {self.page}" if self.page is not None else "", self.section,
                 f"figure {self.figure}" if self.figure is not None else ""]
        return ", ".join(p for p in parts if p)


def _document_title(title: str, figure: int | None) -> str:
    """The title of the document a figure item belongs to (its own title is ``"<title>, figure N"``)."""
    return title.removesuffix(f", figure {figure}") if figure is not None else title


def _differs(title: str, source: str) -> bool:
    """Whether ``title`` says more than the file name of ``source`` (``notes/tides.md`` vs ``tides``)."""
    def norm(s: str) -> str:
        return re.sub(r"[\W_]+", " ", s).strip().lower()

    name = source.replace("\\", "/").rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return norm(title) not in (norm(name), norm(stem))


@dataclass(frozen=True)
class Citation:
    """A numbered source of an answer; ``number`` matches the ``[n]`` markers in the answer text."""

    number: int
    chunk_id: str
    doc_id: str
    title: str
    text: str
    score: float
    image: str | None = None
    #: The file the cited chunk was read from (see :class:`SourceRef`; "" when not from a file).
    source: str = ""
    #: 1-based PDF page of the cited chunk, None when the source is not paged.
    page: int | None = None
    #: Heading path of the cited chunk inside its file (``"Sampling > Timing"``), "" when none.
    section: str = ""
    #: Figure number when the cited item is a figure of a file, else None.
    figure: int | None = None

    @property
    def where(self) -> SourceRef:
        """This citation's location (file, page, section, figure) and title."""
        return SourceRef(source=self.source, title=_document_title(self.title, self.figure), page=self.page,
                         section=self.section, figure=self.figure)


def format_citation(c: Citation, *, max_chars: int = 160) -> str:
    """One source line, as ``heterag ask`` prints it and the app shows it:
    ``[1] estuary-paper.pdf ("Tidal Forces in Coastal Estuaries"), p. 2, figure 2 (score 0.748): Figure 2: ...``.

    The location is the file (relative to the ingested folder), page, section and figure (see
    :class:`SourceRef`); the cited text follows, whitespace collapsed and cut to ``max_chars``. The stored
    image's internal path is shown only for an image item that has no source file to name.
    """
    snippet = " ".join(c.text.split())
    if len(snippet) > max_chars:
        snippet = snippet[: max_chars - 3] + "..."
    ref = c.where
    image = f"image {c.image}" if c.image and not ref.source else ""
    if c.image and not snippet:
        snippet = "(image without text)"
    body = "; ".join(part for part in (image, snippet) if part)
    return f"[{c.number}] {ref.label(c.doc_id)} (score {c.score:.3f}): {body}"


@dataclass(frozen=True)
class Answer:
    text: str
    citations: tuple[Citation, ...]
    hits: tuple[Hit, ...] = ()
    context_tokens: int = 0  # tokens of generation context sent to the generator
    generator: str = ""

    def format_sources(self) -> str:
        """The cited sources, one line each (empty when nothing was cited)."""
        if not self.citations:
            return ""
        return "\n".join(["Sources:", *(f"  {format_citation(c)}" for c in self.citations)])

    def format(self) -> str:
        """Human-readable answer with its sources listed below it."""
        return "\n\n".join(part for part in (self.text.strip(), self.format_sources()) if part)
