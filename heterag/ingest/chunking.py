"""Token-based generation chunks.

Each section of a document is tokenised with the encoder's own tokenizer and cut
into consecutive runs of at most ``chunk_tokens`` tokens and at most
``chunk_tokens * MAX_CHARS_PER_TOKEN`` characters, so every token of the document
lands in exactly one chunk and no chunk is long in characters whatever the tokenizer
makes of the text (a token spanning more than
:data:`~heterag.encoding.text_encoder.MAX_TOKEN_CHARS` characters, such as the single unknown
token of a DNA sequence, counts as one token per that many characters). Sections are never merged: a chunk belongs to
one heading path. Cuts prefer sentence starts, then word starts, so chunks read as
whole sentences and words are never split where avoidable.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from heterag.core.documents import Chunk, Document
from heterag.core.errors import InvalidInputError
from heterag.encoding.text_encoder import MAX_TOKEN_CHARS, TokenSpan, split_long_tokens

#: Default generation-chunk size in tokens (chosen on PubMedQA, see eval/pubmedqa_retrieval.py).
DEFAULT_CHUNK_TOKENS = 64
#: Smallest chunk size accepted (tokens).
MIN_CHUNK_TOKENS = 8
#: Largest chunk size: generation chunks are short passages, and encoders read at most 256-8192 tokens
#: (all-MiniLM-L6-v2 truncates at 256), so a larger chunk is only ever a typo.
MAX_CHUNK_TOKENS = 8192
#: A chunk of ``n`` tokens spans at most ``n * MAX_CHARS_PER_TOKEN`` characters (English prose
#: averages 4-5 characters per token, so ordinary text is cut by its token count).
MAX_CHARS_PER_TOKEN = 8

Tokenize = Callable[[str], TokenSpan]


@dataclass(frozen=True)
class ChunkedSection:
    """Token ids of one section with the chunk boundaries that cut it."""

    tokens: TokenSpan
    bounds: list[tuple[int, int]]  # token index ranges [start, end)


def _is_word_start(text: str, tokens: TokenSpan, i: int) -> bool:
    """True if token i begins a new word (whitespace or a punctuation boundary before it)."""
    if i <= 0 or i >= len(tokens):
        return True
    start = tokens.offsets[i][0]
    prev_end = tokens.offsets[i - 1][1]
    if start > prev_end:  # whitespace between the tokens
        return True
    ch, prev = text[start : start + 1], text[prev_end - 1 : prev_end]
    return not (ch.isalnum() and prev.isalnum())


def _is_sentence_start(text: str, tokens: TokenSpan, i: int) -> bool:
    """True if token i begins a sentence (after ``.!?:;`` and whitespace) or a paragraph (after a blank line).

    The mark of a caption label (``Figure 1:``, ``Fig. 2.``, ``Table 3:``) or of the abbreviation ``Fig.``
    ends no sentence, so a caption keeps its label: a cut goes before ``Figure 1:``, not after it.
    """
    if i <= 0 or i >= len(tokens):
        return True
    start = tokens.offsets[i][0]
    prev_end = tokens.offsets[i - 1][1]
    gap = text[prev_end:start]
    if gap.count("\n") >= 2:
        return True
    return (bool(gap) and text[prev_end - 1 : prev_end] in ".!?:;" and not text[start : start + 1].islower()
            and not _LABEL.search(text, max(0, prev_end - 25), prev_end - 1))


#: What ends just before a caption label's mark: ``Figure 1``, ``Fig. 2a``, ``Table 3``, or ``Fig`` itself.
_LABEL = re.compile(r"\b(?:(?:fig(?:ure)?s?|tab(?:le)?s?|chart|plate|scheme|panel)\.?\s*\d+[a-z]?|figs?|tabs?)$",
                    re.IGNORECASE)


def check_chunk_tokens(chunk_tokens: object) -> int:
    """``chunk_tokens`` if it is an integer from :data:`MIN_CHUNK_TOKENS` to :data:`MAX_CHUNK_TOKENS`, else
    :class:`InvalidInputError`."""
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < MIN_CHUNK_TOKENS:
        raise InvalidInputError(f"chunk size must be an integer of at least {MIN_CHUNK_TOKENS} tokens, got {chunk_tokens!r}")
    if chunk_tokens > MAX_CHUNK_TOKENS:
        raise InvalidInputError(f"chunk size must be at most {MAX_CHUNK_TOKENS} tokens (encoders read 256-8192), "
                                f"got {chunk_tokens}")
    return chunk_tokens


def max_chunk_chars(chunk_tokens: int) -> int:
    """Most characters one chunk of ``chunk_tokens`` tokens may span."""
    return max(chunk_tokens * MAX_CHARS_PER_TOKEN, MAX_TOKEN_CHARS)


def _char_limit(tokens: TokenSpan, start: int, hi: int, max_chars: int) -> int:
    """Largest ``end <= hi`` (and ``> start``) whose tokens ``[start, end)`` span at most ``max_chars`` characters."""
    c0 = tokens.offsets[start][0]
    end = hi
    while end > start + 1 and tokens.offsets[end - 1][1] - c0 > max_chars:
        end -= 1
    return end


def _snap(text: str, tokens: TokenSpan, start: int, target: int, chunk_tokens: int) -> int:
    """Best cut at or before ``target``: a sentence start within half a chunk, else a word start."""
    for test, reach in ((_is_sentence_start, chunk_tokens // 2), (_is_word_start, chunk_tokens // 4)):
        for cand in range(target, max(start, target - reach), -1):
            if test(text, tokens, cand):
                return cand
    return target


def split_bounds(text: str, tokens: TokenSpan, chunk_tokens: int, max_chars: int | None = None) -> list[tuple[int, int]]:
    """Token ranges that cover ``tokens`` exactly, each at most ``chunk_tokens`` long and spanning at
    most ``max_chars`` characters (default :func:`max_chunk_chars`; a single token longer than that
    is its own range, see :func:`~heterag.encoding.text_encoder.split_long_tokens`).

    Each cut is placed as late as the limit allows, then moved back to the nearest
    sentence start (up to half a chunk) or word start (up to a quarter), so chunks read
    as whole sentences. A cut never leaves a final chunk shorter than a quarter chunk
    when that can be avoided.
    """
    n = len(tokens)
    max_chars = max_chars or max_chunk_chars(chunk_tokens)
    bounds: list[tuple[int, int]] = []
    start = 0
    while start < n:
        if n - start <= chunk_tokens and tokens.offsets[n - 1][1] - tokens.offsets[start][0] <= max_chars:
            break
        hi = min(start + chunk_tokens, n)
        if n - hi < chunk_tokens // 4:  # the tail would be tiny: leave it a quarter chunk
            hi = max(n - chunk_tokens // 4, start + 1)
        limit = _char_limit(tokens, start, hi, max_chars)
        if limit < hi:  # the character bound binds: cut as late as it allows
            cut = _snap(text, tokens, start, limit, max(limit - start, 1))
        else:
            cut = _snap(text, tokens, start, hi, chunk_tokens)
        cut = max(cut, start + 1)
        bounds.append((start, cut))
        start = cut
    if start < n:
        bounds.append((start, n))
    return bounds


@dataclass(frozen=True)
class ChunkedDocument:
    """A document with its generation chunks and the per-section token cuts behind them."""

    doc: Document
    chunks: list[Chunk]
    sections: list[ChunkedSection]


def chunk_document(doc: Document, tokenize: Tokenize, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> ChunkedDocument:
    """Cut ``doc`` into generation chunks of at most ``chunk_tokens`` tokens."""
    check_chunk_tokens(chunk_tokens)
    chunks: list[Chunk] = []
    sections: list[ChunkedSection] = []
    for s_idx, section in enumerate(doc.sections):
        tokens = split_long_tokens(tokenize(section.text))
        bounds = split_bounds(section.text, tokens, chunk_tokens)
        sections.append(ChunkedSection(tokens=tokens, bounds=bounds))
        for t0, t1 in bounds:
            c0, c1 = tokens.offsets[t0][0], tokens.offsets[t1 - 1][1]
            text = section.text[c0:c1]
            index = len(chunks)
            chunks.append(
                Chunk(
                    id=Chunk.make_id(doc.id, index, text, doc.title, section.heading, doc.metadata),
                    doc_id=doc.id,
                    index=index,
                    text=text,
                    title=doc.title,
                    heading=section.heading,
                    section_index=s_idx,
                    start=c0,
                    end=c1,
                    token_start=t0,
                    token_end=t1,
                    metadata=doc.metadata,
                )
            )
    if not chunks and doc.image is None:  # an image item may have no text at all
        raise InvalidInputError(f"document {doc.id!r} has no tokens to index")
    return ChunkedDocument(doc=doc, chunks=chunks, sections=sections)
