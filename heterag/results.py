"""What retrieval and generation hand back: hits, citations, answers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from .documents import MetadataValue


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
    #: Per-signal similarities that were fused into ``score`` (``text``, ``image``, ``cross``).
    scores: Mapping[str, float] = field(default_factory=dict)
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
        lines = ["Sources:"]
        for c in self.citations:
            snippet = " ".join(c.text.split())
            if len(snippet) > 160:
                snippet = snippet[:157] + "..."
            image = f"image {c.image}" if c.image else ""
            body = "; ".join(part for part in (image, snippet) if part)
            lines.append(f"  [{c.number}] {c.title or c.doc_id} (score {c.score:.3f}): {body}")
        return "\n".join(lines)

    def format(self) -> str:
        """Human-readable answer with its sources listed below it."""
        return "\n\n".join(part for part in (self.text.strip(), self.format_sources()) if part)
