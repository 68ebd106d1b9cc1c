"""Retrieval views: what the retriever matches for each generation chunk.

A view kind turns chunked documents into one vector per chunk (and the text that
was encoded, shown to users as "the view that matched"):

* ``naive``: the chunk alone (the baseline).
* ``heterag``: the chunk with multi-granular context rendered through a template:
  ``k`` neighbouring chunks on each side, the section heading path and the title.
* ``late``: late chunking. Consecutive chunks of a document are packed into long
  windows (title first), each window is encoded once, and each chunk's vector is
  the mean of its own tokens' contextual embeddings. Context enters through
  attention at about the encoding cost of ``naive``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from heterag.core.documents import Chunk
from heterag.core.errors import InvalidInputError, UnknownNameError
from heterag.ingest.chunking import ChunkedDocument

DEFAULT_TEMPLATE = "{title}\n{heading}\n{before} {chunk} {after}"


@runtime_checkable
class ViewEncoder(Protocol):
    """What a view needs from a text encoder (see :class:`heterag.encoding.text_encoder.TextEncoder`)."""

    dim: int
    max_window_tokens: int
    default_window_tokens: int

    def encode(self, texts: Sequence[str], *, show_progress: bool | None = None) -> np.ndarray: ...

    def encode_query(self, text: str) -> np.ndarray: ...

    def tokenize(self, text: str) -> Any: ...

    def token_embeddings(self, windows: Sequence[Sequence[int]]) -> list[np.ndarray]: ...


@runtime_checkable
class RetrievalView(Protocol):
    kind: str

    def settings(self) -> dict[str, Any]:
        """Everything that changes the vectors; recorded in the collection fingerprint."""

    def embed(self, docs: Sequence[ChunkedDocument], encoder: ViewEncoder) -> tuple[list[str], np.ndarray]:
        """View texts and unit-norm vectors, one per chunk, in document-then-chunk order."""


def _encode_distinct(encoder: ViewEncoder, texts: list[str]) -> np.ndarray:
    """``encoder.encode(texts)``, encoding each distinct text once (a long repeated run is one text)."""
    distinct = list(dict.fromkeys(texts))
    if len(distinct) == len(texts):
        return encoder.encode(texts)
    vectors = encoder.encode(distinct)
    row = {t: i for i, t in enumerate(distinct)}
    return vectors[[row[t] for t in texts]]


def _normalize_rows(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return (m / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class NaiveView:
    kind: str = "naive"

    def settings(self) -> dict[str, Any]:
        return {}

    def texts(self, cd: ChunkedDocument) -> list[str]:
        return [c.text for c in cd.chunks]

    def embed(self, docs: Sequence[ChunkedDocument], encoder: ViewEncoder) -> tuple[list[str], np.ndarray]:
        texts = [t for cd in docs for t in self.texts(cd)]
        return texts, _encode_distinct(encoder, texts)


@dataclass(frozen=True)
class HeteragView:
    """Chunk + neighbours + heading path + title, rendered with ``template``.

    Template fields: ``{title}``, ``{heading}`` (path joined by " > "), ``{before}`` and
    ``{after}`` (up to ``neighbours`` chunks on each side, in the same section when
    ``same_section``), ``{chunk}``. Blank lines left by empty fields are dropped.
    """

    neighbours: int = 1
    include_title: bool = True
    include_heading: bool = True
    same_section: bool = False
    template: str = DEFAULT_TEMPLATE
    kind: str = "heterag"

    def __post_init__(self) -> None:
        if self.neighbours < 0:
            raise InvalidInputError("neighbours must be >= 0")
        try:
            self.template.format(title="", heading="", before="", chunk="", after="")
        except (KeyError, IndexError, ValueError) as exc:
            raise InvalidInputError(f"bad view template {self.template!r}: {exc}") from None
        if "{chunk}" not in self.template:
            raise InvalidInputError("the view template must contain {chunk}")

    def settings(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("kind")
        return d

    def _neighbours(self, chunks: Sequence[Chunk], i: int, positions: range) -> str:
        section = chunks[i].section_index
        return " ".join(
            chunks[j].text
            for j in positions
            if 0 <= j < len(chunks) and (not self.same_section or chunks[j].section_index == section)
        )

    def texts(self, cd: ChunkedDocument) -> list[str]:
        chunks, k = cd.chunks, self.neighbours
        out = []
        for i, c in enumerate(chunks):
            text = self.template.format(
                title=c.title if self.include_title else "",
                heading=" > ".join(c.heading) if self.include_heading else "",
                before=self._neighbours(chunks, i, range(i - k, i)),
                chunk=c.text,
                after=self._neighbours(chunks, i, range(i + 1, i + 1 + k)),
            )
            lines = [" ".join(line.split()) for line in text.splitlines()]
            out.append("\n".join(line for line in lines if line))
        return out

    def embed(self, docs: Sequence[ChunkedDocument], encoder: ViewEncoder) -> tuple[list[str], np.ndarray]:
        texts = [t for cd in docs for t in self.texts(cd)]
        return texts, _encode_distinct(encoder, texts)


@dataclass(frozen=True)
class LateView:
    """Late chunking: one forward pass per window of consecutive chunks, pooled per chunk.

    ``window_tokens`` caps a window's content (default: the longest input the encoder was
    trained on, ``max_seq_length``; at most its position limit);
    ``include_title`` prefixes every window with the document title, ``include_heading``
    puts each section's heading path before its first chunk. Neither prefix is pooled
    into any chunk: they shape the chunk vectors only through attention.
    """

    window_tokens: int | None = None
    include_title: bool = True
    include_heading: bool = True
    kind: str = "late"

    def settings(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("kind")
        return d

    def _windows(self, cd: ChunkedDocument, encoder: ViewEncoder, limit: int) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """Windows of token ids, each with the (start, end) positions of its chunks."""
        title_ids = list(encoder.tokenize(cd.doc.title).ids) if self.include_title and cd.doc.title else []
        title_ids = title_ids[: limit // 4]
        windows: list[tuple[list[int], list[tuple[int, int]]]] = []
        ids: list[int] = list(title_ids)
        spans: list[tuple[int, int]] = []
        for s_idx, sec in enumerate(cd.sections):
            heading = cd.doc.sections[s_idx].heading
            head_ids = list(encoder.tokenize(" > ".join(heading)).ids)[: limit // 4] if self.include_heading and heading else []
            for b_i, (t0, t1) in enumerate(sec.bounds):
                piece = sec.tokens.ids[t0:t1]
                lead = head_ids if b_i == 0 else []
                if spans and len(ids) + len(lead) + len(piece) > limit:
                    windows.append((ids, spans))
                    ids, spans = list(title_ids), []
                    lead = head_ids  # a new window restates where we are
                ids.extend(lead)
                spans.append((len(ids), len(ids) + len(piece)))
                ids.extend(piece)
        if spans:
            windows.append((ids, spans))
        return windows

    def embed(self, docs: Sequence[ChunkedDocument], encoder: ViewEncoder) -> tuple[list[str], np.ndarray]:
        limit = min(self.window_tokens or encoder.default_window_tokens, encoder.max_window_tokens)
        plans = [w for cd in docs for w in self._windows(cd, encoder, limit)]
        hidden = encoder.token_embeddings([ids for ids, _ in plans])
        rows = [h[a:b].mean(axis=0) for h, (_, spans) in zip(hidden, plans, strict=True) for a, b in spans]
        n = sum(len(cd.chunks) for cd in docs)
        vectors = _normalize_rows(np.stack(rows)) if rows else np.zeros((0, encoder.dim), dtype=np.float32)
        assert len(vectors) == n
        return [""] * n, vectors


VIEWS: dict[str, Callable[..., RetrievalView]] = {"naive": NaiveView, "heterag": HeteragView, "late": LateView}


def distinct_chunks(view: RetrievalView, cd: ChunkedDocument) -> list[int]:
    """Positions in ``cd.chunks`` of the first chunk of each distinct (generation text, view text) pair.

    A document stores one record per pair: a later identical chunk (a repeated disclaimer, a long run
    of one word) would add nothing to retrieval or to the generator's context, and hundreds of
    identical vectors make an HNSW index (Chroma's hnswlib) drop true best hits of other documents.
    The view text is ``view.texts(cd)`` where the view renders one (naive, heterag); otherwise (late
    chunking, whose vectors come from token windows) the chunk's heading path stands in for it.
    Chunk ids do not change, so a document without repeats keeps all its chunks and ids.
    """
    texts = view.texts(cd) if callable(getattr(view, "texts", None)) else [" > ".join(c.heading) for c in cd.chunks]
    seen: set[tuple[str, str]] = set()
    keep: list[int] = []
    for i, (c, v) in enumerate(zip(cd.chunks, texts, strict=True)):
        if (c.text, v) not in seen:
            seen.add((c.text, v))
            keep.append(i)
    return keep


def make_view(kind: str, **options: Any) -> RetrievalView:
    """Build a view by name; ``options`` are the view's dataclass fields."""
    try:
        factory = VIEWS[kind]
    except KeyError:
        raise UnknownNameError("view", kind, VIEWS) from None
    try:
        return factory(**options)
    except TypeError as exc:
        raise InvalidInputError(f"bad options for view {kind!r}: {exc}") from None
