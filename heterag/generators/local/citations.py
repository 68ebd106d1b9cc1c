"""Citation checks of the local generator's streamed answer.

:class:`CitationGuard` passes the generated pieces on as they stream, with the markers citing a
passage that does not exist removed and a marker cut off at the end of generation dropped; brackets
inside code (a fenced block or an inline span, e.g. ``lst[0]``) are code and left alone.
:func:`attribute` names the passages that support an answer that cites none, by similarity to the
model's words (the retrieval encoder's cosine when an embedder is given, else word overlap).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

import numpy as np

from heterag.core.results import Hit
from heterag.encoding.embedder import Embedder
from heterag.generators.base import StreamCallback

logger = logging.getLogger(__name__)

#: A citation marker, complete (``[2]``, ``[1, 3]``) or cut off at the end of the text (``[2``, ``[1,``).
_MARKER = re.compile(r"\s*\[(\d+(?:\s*[,;]\s*\d+)*)\]")
_PARTIAL_TAIL = re.compile(r"\s*\[[\d\s,;]*$")
#: Code in an answer (a fenced block, to the end when not yet closed, or an inline span): ``lst[0]`` there
#: is code, not a citation marker.
_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.DOTALL)
#: An inline code span still open on the last line (held back while streaming: it may close).
_OPEN_CODE = re.compile(r"`[^`\n]*\Z")


def _clean(raw: str, n_passages: int, *, final: bool) -> str:
    """``raw`` without markers citing passages outside ``1..n_passages``; a trailing marker that may
    still be growing is held back (dropped when ``final``), and so is an inline code span not yet
    closed (unless ``final``). Valid numbers of a mixed marker stay; code is left as written."""

    def fix(match: re.Match[str]) -> str:
        numbers = [int(x) for x in re.split(r"[,;]", match.group(1))]
        valid = [n for n in numbers if 1 <= n <= n_passages]
        if valid == numbers:
            return match.group(0)
        lead = match.group(0)[: match.group(0).index("[")]
        return f"{lead}[{', '.join(map(str, valid))}]" if valid else ""

    parts, last = [], 0  # markers inside code are code (``lst[0]``): left as written
    for code in _CODE.finditer(raw):
        parts += [_MARKER.sub(fix, raw[last:code.start()]), code.group(0)]
        last = code.end()
    text = "".join([*parts, _MARKER.sub(fix, raw[last:])])
    spans = [m.span() for m in _CODE.finditer(text)]

    def in_code(i: int) -> bool:
        return any(a <= i < b for a, b in spans)

    tail = _PARTIAL_TAIL.search(text)
    if tail and not in_code(tail.start() + len(tail.group(0)) - len(tail.group(0).lstrip())):
        text = text[: tail.start()]
    opened = None if final else _OPEN_CODE.search(text)
    if opened and not in_code(opened.start()):
        text = text[: opened.start()]
    return text


def without_code(text: str) -> str:
    """``text`` with its code (see ``_CODE``) blanked out, for counting citation markers."""
    return _CODE.sub(" ", text)


def closed_code(text: str) -> str:
    """The closing fence that ``text`` needs when it ends inside a fenced code block, else ``""``."""
    return "\n```" if any(m.group(0).count("```") == 1 for m in _CODE.finditer(text)) else ""


class CitationGuard:
    """Passes generated pieces on to ``callback`` with invalid citation markers removed."""

    def __init__(self, n_passages: int, callback: StreamCallback | None):
        self.n, self.callback = n_passages, callback
        self.raw = ""  # the model's text as generated
        self.passed = ""  # the cleaned model text passed on so far
        self.text = ""  # everything passed on: notes of ours and the cleaned model text

    def emit(self, piece: str) -> None:
        """Pass ``piece`` on as it is (notes of our own)."""
        if piece:
            self.text += piece
            if self.callback is not None:
                self.callback(piece)

    def _pass(self, clean: str) -> None:
        if clean.startswith(self.passed):
            new, self.passed = clean[len(self.passed):], clean
            self.emit(new)
        else:  # a removal reached into text already passed on: keep that
            logger.debug("citation clean-up changed streamed text: %r", clean[:80])

    def __call__(self, piece: str) -> None:
        self.raw += piece
        # trailing whitespace is held back too: a marker that follows it may be removed with it
        # (engines streaming raw token pieces, e.g. llama.cpp, end pieces with a space or newline)
        self._pass(_clean(self.raw, self.n, final=False).rstrip())

    def finish(self) -> str:
        self._pass(_clean(self.raw, self.n, final=True).rstrip())
        return self.text


def _words(text: str) -> set[str]:
    from heterag.generators.extractive import content_words

    return content_words(text)


def attribute(answer: str, passages: Sequence[Hit], embedder: Embedder | None = None, *, most: int = 2,
              relative: float = 0.8) -> list[int]:
    """1-based numbers of the passages that best support ``answer``: the best one and any other within
    ``relative`` of its score, at most ``most``. Scores are cosine similarities by ``embedder`` when given,
    else the share of the answer's content words found in the passage."""
    texts = [h.text for h in passages]
    if not texts or not answer.strip():
        return []
    if embedder is not None:
        vecs = np.asarray(embedder.encode([answer, *[t if t.strip() else "(empty)" for t in texts]]), dtype=np.float32)
        vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        scores = vecs[1:] @ vecs[0]
    else:
        words = _words(answer)
        scores = np.array([len(words & _words(t)) / max(len(words), 1) for t in texts])
    best = float(scores.max())
    if best <= 0:
        return []
    order = [int(i) for i in np.argsort(-scores) if scores[i] >= relative * best][:most]
    return sorted(i + 1 for i in order)


__all__ = ["attribute"]
