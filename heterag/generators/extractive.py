"""Offline extractive generator: answers with the retrieved sentences that best match the question.

Every hit is split into sentences (code and lists into lines); each sentence is scored as

    score = cosine(question, sentence)                     # the embedder's vectors
          + LEXICAL_WEIGHT * share of question content words found in the sentence
          + RANK_WEIGHT / (1 + hit rank) + SCORE_WEIGHT * clip(hit score, 0, 1)

Sentences whose relevance (the first two terms) is below ``min_score``, or below
``min_relative`` times the best sentence's relevance, are never used: the answer is not
padded with weak sentences just to reach ``max_sentences``.
At ``temperature == 0`` the best ``max_sentences`` are taken greedily; above it they are
sampled without replacement with probabilities ``softmax(score / temperature)``. Near
duplicates of a chosen sentence are skipped either way. The chosen sentences are returned
in reading order (hit rank, then position in the hit), each followed by ``[n]``.

A query image only influences retrieval. With an image and an empty question (what do the
sources say about this image?) the answer is the first ``max_sentences`` sentences of the
best hit that has text, cited once at the end. Image items without text that rank above every
hit with text are named first (their source and score, cited), with or without a question: an
image found is an answer, not "the sources do not answer".
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from heterag.core.errors import GeneratorError, InvalidInputError
from heterag.core.images import ImageRef
from heterag.core.results import Answer, Citation, Hit
from heterag.encoding.embedder import Embedder
from heterag.encoding.vector_cache import VectorCache
from heterag.generators.base import StreamCallback
from heterag.generators.prompting import NO_SOURCES_ANSWER, citation_for, validate_query_image, validate_question

logger = logging.getLogger(__name__)

LEXICAL_WEIGHT = 0.10
RANK_WEIGHT = 0.03
SCORE_WEIGHT = 0.03
#: Cosine above which a candidate counts as a near duplicate of an already chosen sentence.
DUPLICATE_COSINE = 0.95

NO_ANSWER_IN_SOURCES = "The retrieved sources do not appear to contain an answer to this question."

# --------------------------------------------------------------------------- sentence splitting

#: Abbreviations after which a period never ends a sentence (lower case, with the final dot).
_ABBREVIATIONS = frozenset(
    "e.g. i.e. al. cf. vs. viz. approx. ca. resp. incl. esp. dr. mr. mrs. ms. prof. st. jr. sr. "
    "inc. ltd. co. corp. dept. univ. mt. gen. col. lt. sgt. rev. hon. jan. feb. mar. apr. jun. "
    "jul. aug. sep. sept. oct. nov. dec.".split()
)
#: Abbreviations that do not end a sentence when a number follows ("Fig. 2", "No. 5", "pp. 10").
_NUMERIC_ABBREVIATIONS = frozenset(
    "fig. figs. eq. eqs. tab. sec. secs. ch. chap. vol. vols. no. nos. pp. art. ref. refs. ex. para.".split()
)
#: A run of sentence-final punctuation, optional closing quotes/brackets, then whitespace.
_BOUNDARY = re.compile(r"([.!?\u2026]+)([\"'\u201d\u2019)\]]*)\s+")
_BULLET = re.compile(r"^\s*(?:[-*\u2022+]|\d{1,3}[.)])\s+")
_SYMBOL_BULLET = re.compile(r"^\s*[-*\u2022+]\s+")
_CODE_LINE = re.compile(
    r"^(?:\s{2,}|\t)"  # indented
    r"|[{};(\[]\s*$|^\s*[})\]]"  # opens or closes a block
    r"|^\s*(?:```|>>>|\$ |\||#include|//|/\*)"  # fences, prompts, tables, comments
    r"|==|!=|->|=>|::|\w\(\)|^\s*[\w.\[\]]+\s*=\s*\S"  # operators, calls, assignments
    r"|^\s*(?:def|class|return|import|from\s+\S+\s+import|function|const|let|var|public|private)\b"
)
_WORD = re.compile(r"\w+")
#: Reference markers inside source text ("[12]"), removed so they cannot pass for our citations.
_SOURCE_MARKER = re.compile(r"\s*\[\d+(?:\s*[,;\u2013-]\s*\d+)*\]")


def _token_before(text: str, end: int) -> tuple[str, int]:
    """The whitespace-delimited token ending at ``end`` (lower case, leading brackets stripped) and its start."""
    start = max(text.rfind(" ", 0, end), text.rfind("\n", 0, end), text.rfind("\t", 0, end)) + 1
    return text[start:end].lower().lstrip("([\"'\u201c\u2018"), start


def _is_boundary(text: str, match: re.Match[str]) -> bool:
    """Whether a punctuation-then-whitespace match in ``text`` really ends a sentence."""
    punct, closers = match.group(1), match.group(2)
    if match.end() >= len(text) or "!" in punct or "?" in punct:
        return True
    nxt = text[match.end()]
    if nxt.islower():  # "approx. three", "e.g. the": sentences do not start in lower case
        return False
    if closers:
        return True
    token, start = _token_before(text, match.start(1) + 1)
    if token in _ABBREVIATIONS:
        return False
    if token in _NUMERIC_ABBREVIATIONS and (nxt.isdigit() or nxt == "("):
        return False
    if re.fullmatch(r"[a-z]\.", token):  # an initial: "J. Smith", "p. 4"
        return False
    if start == 0 and re.fullmatch(r"\d{1,3}\.", token):  # an enumerator: "1. Mix the flour"
        return False
    return True


def split_prose(text: str) -> list[str]:
    """Split running prose into sentences.

    Does not split inside decimals ("3.5"), after common abbreviations ("e.g.", "i.e.",
    "et al.", "Dr."), before a number after numbering abbreviations ("Fig. 2", "No. 5"),
    after initials, or before a lower-case letter.
    """
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        if _is_boundary(text, match):
            sentences.append(text[start : match.end()].strip())
            start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def _is_code_block(lines: Sequence[str]) -> bool:
    """A block is code-like when at least half of its lines look like code."""
    code = sum(1 for line in lines if _CODE_LINE.search(line))
    return code * 2 >= len(lines)


def _block_units(block: str) -> list[str]:
    """Sentences of one blank-line-separated block: lines for code, bullets split per item, prose reflowed.

    Reference markers such as ``[12]`` are removed from prose so they cannot be mistaken for citations.
    """
    lines = [line.rstrip() for line in block.splitlines() if line.strip()]
    if len(lines) > 1 and _is_code_block(lines):
        return [line.strip() for line in lines]
    lines = [_SOURCE_MARKER.sub("", line) for line in lines]  # prose only: "x[3]" in code is not a reference
    if len(lines) > 1 and any(_BULLET.match(line) for line in lines):
        return [s for line in lines for s in split_prose(_SYMBOL_BULLET.sub("", line).strip())]
    return split_prose(" ".join(line.strip() for line in lines))


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences (or lines, for code and lists), dropping fragments without words.

    Blocks separated by blank lines never share a sentence. Within a block, code-like
    text (indentation, braces, operators...) splits on lines, bulleted lists split per
    item, and prose is reflowed and split with :func:`split_prose`.
    """
    units: list[str] = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n")):
        if block.strip():
            units.extend(_block_units(block))
    return [u for u in units if len(_WORD.findall(u)) >= 1 and sum(c.isalnum() for c in u) >= 2]


# --------------------------------------------------------------------------- scoring

_STOPWORDS = frozenset(
    "a an and are as at be been being but by can could did do does for from had has have how i if in into is it "
    "its me my no not of on or our she he so than that the their them then there these they this those to was "
    "we were what when where which who whom whose why will with would you your about also any after before "
    "between both each few more most other some such only own same too very just over under again further "
    "once here all many much".split()
)


def content_words(text: str) -> set[str]:
    """Lower-cased words of ``text`` minus stop words and one-letter words, with a plural ``s`` trimmed."""
    words = set()
    for word in _WORD.findall(text.lower()):
        if len(word) < 2 or word in _STOPWORDS:
            continue
        words.add(word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word)
    return words


@dataclass(frozen=True)
class _Candidate:
    hit_index: int  # 0-based rank of the hit
    position: int  # position of the sentence in its hit
    text: str


def _candidates(hits: Sequence[Hit]) -> list[_Candidate]:
    """All sentences of all hits, exact duplicates (ignoring case and spacing) kept only at their best hit."""
    seen: set[str] = set()
    out: list[_Candidate] = []
    for hit_index, hit in enumerate(hits):
        for position, sentence in enumerate(split_sentences(hit.text)):
            key = " ".join(sentence.lower().split())
            if key not in seen:
                seen.add(key)
                out.append(_Candidate(hit_index, position, sentence))
    return out


def _normalise_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def _embed(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """Embed ``texts`` and check the embedder's output shape."""
    vectors = np.asarray(embedder.encode(list(texts)), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise GeneratorError(f"embedder returned shape {vectors.shape} for {len(texts)} texts")
    return _normalise_rows(vectors)


def _lexical_overlap(question_words: set[str], sentence: str) -> float:
    if not question_words:
        return 0.0
    return len(question_words & content_words(sentence)) / len(question_words)


def _prior(hit_index: int, hit: Hit) -> float:
    return RANK_WEIGHT / (1 + hit_index) + SCORE_WEIGHT * min(max(float(hit.score), 0.0), 1.0)


# --------------------------------------------------------------------------- selection


def _pick_next(scores: np.ndarray, temperature: float, rng: np.random.Generator | None, allowed: np.ndarray) -> int:
    """Index of the next sentence: the best allowed one, or one sampled with softmax(score / T)."""
    idx = np.flatnonzero(allowed)
    if rng is None or temperature <= 0:
        return int(idx[np.argmax(scores[idx])])
    logits = scores[idx] / temperature
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    return int(idx[rng.choice(len(idx), p=probs)])


def select_sentences(
    scores: np.ndarray,
    vectors: np.ndarray,
    k: int,
    *,
    temperature: float = 0.0,
    rng: np.random.Generator | None = None,
    allowed: np.ndarray | None = None,
) -> list[int]:
    """Choose up to ``k`` row indices without replacement, skipping near duplicates of chosen rows."""
    remaining = np.ones(len(scores), dtype=bool) if allowed is None else allowed.copy()
    chosen: list[int] = []
    while len(chosen) < k and remaining.any():
        pick = _pick_next(scores, temperature, rng, remaining)
        chosen.append(pick)
        remaining[pick] = False
        remaining &= vectors @ vectors[pick] < DUPLICATE_COSINE
    return chosen


class ExtractiveGenerator:
    """Answers by quoting the retrieved sentences most similar to the question, each cited as ``[n]``.

    Needs no network or language model; ``embedder`` is any :class:`~heterag.encoding.embedder.Embedder`
    (normally the retrieval encoder). ``min_score`` (absolute) and ``min_relative`` (share of the
    best sentence's relevance) keep weak sentences out; the defaults suit cosine-similarity
    sentence encoders such as all-MiniLM-L6-v2. ``temperature`` 0 is deterministic; above 0 each
    call samples sentences from ``rng = numpy.random.default_rng(seed)``, so repeated calls can
    differ while the same ``seed`` reproduces the same sequence of answers.

    Sentence vectors are kept in a least-recently-used cache of ``cache_size`` sentences
    (0: off; 50,000 MiniLM vectors take about 77 MB), keyed by the sentence text: a source
    retrieved again, by any question, is not re-encoded. Only the question is encoded then.
    ``cache_hits`` and ``cache_misses`` count sentences. The embedder must be deterministic
    (the same text always gives the same vector), as retrieval encoders are.

    ``sentence_cache`` (a :class:`~heterag.encoding.vector_cache.VectorCache` for this embedder, or None) keeps
    sentence vectors on disk: sentences missing from memory are looked up there before they are encoded, new
    ones are written there, and :meth:`prefill` encodes a whole collection's sentences ahead of its questions
    (ingest time instead of question time: a first question to a chunk then costs what a repeated one does).
    """

    name = "extractive"

    def __init__(
        self,
        embedder: Embedder,
        max_sentences: int = 3,
        temperature: float = 0.0,
        seed: int | None = None,
        min_score: float = 0.15,
        min_relative: float = 0.5,
        cache_size: int = 50_000,
        sentence_cache: VectorCache | None = None,
    ) -> None:
        if not isinstance(embedder, Embedder):
            raise InvalidInputError(f"embedder must provide encode() and count_tokens(), got {type(embedder).__name__}")
        if isinstance(max_sentences, bool) or not isinstance(max_sentences, int) or max_sentences < 1:
            raise InvalidInputError(f"max_sentences must be a positive integer, got {max_sentences!r}")
        if not math.isfinite(temperature) or temperature < 0:
            raise InvalidInputError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if not 0.0 <= min_relative <= 1.0:
            raise InvalidInputError(f"min_relative must be between 0 and 1, got {min_relative!r}")
        self.embedder = embedder
        self.max_sentences = max_sentences
        self.temperature = float(temperature)
        self.min_score = float(min_score)
        self.min_relative = float(min_relative)
        self.seed = seed
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise InvalidInputError(f"cache_size must be an integer >= 0, got {cache_size!r}")
        self._rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()
        self.cache_size = cache_size
        self.sentence_cache = sentence_cache
        self.cache_hits = self.cache_misses = 0
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._token_counts: OrderedDict[str, int] = OrderedDict()  # hit text -> tokens (Answer.context_tokens)
        self._cache_lock = threading.Lock()

    def _tokens(self, text: str) -> int:
        """``embedder.count_tokens(text)``, remembered for the last ``cache_size`` texts (the same hits come back
        question after question, and tokenizing their whole texts was ~7% of a warm question's CPU in the app)."""
        if self.cache_size:
            with self._cache_lock:
                n = self._token_counts.get(text)
            if n is not None:
                return n
        n = int(self.embedder.count_tokens(text))
        if self.cache_size:
            with self._cache_lock:
                self._token_counts[text] = n
                while len(self._token_counts) > self.cache_size:
                    self._token_counts.popitem(last=False)
        return n

    def _vectors(self, texts: list[str]) -> np.ndarray:
        """Unit vectors of ``texts`` (the question first, then sentences), sentences from the cache when seen."""
        if self.cache_size == 0:
            return _embed(self.embedder, texts)
        question, sentences = texts[0], texts[1:]
        with self._cache_lock:
            cached = [self._cache.get(t) for t in sentences]
            for t, v in zip(sentences, cached, strict=True):
                if v is not None:
                    self._cache.move_to_end(t)
        missing = [t for t, v in zip(sentences, cached, strict=True) if v is None]
        stored = self.sentence_cache.get(list(dict.fromkeys(missing))) if self.sentence_cache is not None and missing else {}
        to_encode = [t for t in dict.fromkeys(missing) if t not in stored]
        fresh = _embed(self.embedder, [question, *to_encode])
        encoded = dict(zip(to_encode, fresh[1:], strict=True))
        if encoded and self.sentence_cache is not None:
            self.sentence_cache.put(encoded)
        new = {**stored, **encoded}
        with self._cache_lock:
            self.cache_hits += len(sentences) - len(missing)
            self.cache_misses += len(missing)
            for t, v in new.items():
                self._cache[t] = v
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        rows = [fresh[0]] + [v if v is not None else new[t] for t, v in zip(sentences, cached, strict=True)]
        return np.stack(rows)

    def prefill(self, texts: Iterable[str], *, show_progress: bool | None = None, stop: Callable[[], bool] | None = None) -> int:
        """Encode the sentences of ``texts`` (chunk texts, as hits carry them) that :attr:`sentence_cache` does not
        hold yet, and keep them there; returns how many were encoded. Large calls are encoded a slice at a time on
        the query-encoder worker, so questions asked meanwhile wait for one slice at most. Raises
        :class:`InvalidInputError` when there is no ``sentence_cache``. ``stop()`` true ends it between slices."""
        if self.sentence_cache is None:
            raise InvalidInputError("prefill needs a sentence_cache to keep the vectors in")
        sentences = list(dict.fromkeys(s for t in texts for s in split_sentences(t) if s.strip()))
        held = self.sentence_cache.get(sentences)
        todo = [s for s in sentences if s not in held]
        done = 0
        for start in range(0, len(todo), _PREFILL_SLICE):
            if stop is not None and stop():
                break
            part = todo[start:start + _PREFILL_SLICE]
            vectors = np.asarray(self.embedder.encode(part, show_progress=show_progress) if show_progress is not None
                                 else self.embedder.encode(part), dtype=np.float32)
            self.sentence_cache.put(dict(zip(part, _normalise_rows(vectors), strict=True)))
            done += len(part)
        return done

    def _score(self, question: str, hits: Sequence[Hit], candidates: list[_Candidate]) -> tuple[np.ndarray, ...]:
        """(total scores, relevance scores, sentence vectors) for ``candidates``."""
        vectors = self._vectors([question, *(c.text for c in candidates)])
        cosine = vectors[1:] @ vectors[0]
        q_words = content_words(question)
        lexical = np.array([LEXICAL_WEIGHT * _lexical_overlap(q_words, c.text) for c in candidates])
        prior = np.array([_prior(c.hit_index, hits[c.hit_index]) for c in candidates])
        relevance = cosine + lexical
        return relevance + prior, relevance, vectors[1:]

    def _choose(self, question: str, hits: Sequence[Hit]) -> list[_Candidate]:
        """The sentences to answer with, in reading order."""
        candidates = _candidates(hits)
        if not candidates:
            return []
        scores, relevance, vectors = self._score(question, hits, candidates)
        threshold = self.min_score
        best = float(relevance.max())
        if best > 0:
            threshold = max(threshold, self.min_relative * best)
        allowed = relevance >= threshold
        with self._rng_lock:  # numpy Generators are not thread-safe
            rng = self._rng if self.temperature > 0 else None
            picks = select_sentences(
                scores, vectors, self.max_sentences, temperature=self.temperature, rng=rng, allowed=allowed
            )
        logger.debug(
            "extractive: %d candidates, %d above %.3f, picked %s", len(candidates), allowed.sum(), threshold, picks
        )
        return sorted((candidates[i] for i in picks), key=lambda c: (c.hit_index, c.position))

    def generate(
        self, question: str, hits: Sequence[Hit], *, on_token: StreamCallback | None = None, image: ImageRef | None = None
    ) -> Answer:
        """Answer ``question`` with up to ``max_sentences`` cited sentences taken from ``hits``.

        ``question`` may be empty when a query ``image`` is given: the answer is then the
        opening sentences of the best hit with text (see the module docstring).
        """
        image = validate_query_image(image)
        question = validate_question(question, allow_empty=image is not None)
        hits = tuple(hits)
        if not hits:
            return self._finish([NO_SOURCES_ANSWER], (), hits, on_token)
        if not question:
            return self._describe(hits, on_token)
        images = _leading_images(hits)
        chosen = [c for c in self._choose(question, hits) if c.hit_index >= len(images)]
        if not chosen and not images:
            return self._finish([NO_ANSWER_IN_SOURCES], (), hits, on_token)
        pieces = _image_pieces(hits, images, answered=bool(chosen))
        pieces += [("" if not pieces and i == 0 else " ") + f"{c.text} [{c.hit_index + 1}]" for i, c in enumerate(chosen)]
        cited = sorted(set(images) | {c.hit_index for c in chosen})
        citations = tuple(citation_for(i + 1, hits[i]) for i in cited)
        return self._finish(pieces, citations, hits, on_token)

    def _describe(self, hits: tuple[Hit, ...], on_token: StreamCallback | None) -> Answer:
        """The image-only answer: the images without text that rank first (named, cited), then the first
        sentences of the best hit that has text, cited once."""
        images = _leading_images(hits)
        pieces = _image_pieces(hits, images, answered=True)
        for number, hit in enumerate(hits, start=1):
            sentences = split_sentences(hit.text)[: self.max_sentences]
            if sentences:
                text = [(" " if pieces or i else "") + s for i, s in enumerate(sentences)]
                text[-1] += f" [{number}]"
                cites = tuple(citation_for(i + 1, hits[i]) for i in images) + (citation_for(number, hit),)
                return self._finish(pieces + text, cites, hits, on_token)
        if images:
            return self._finish(pieces, tuple(citation_for(i + 1, hits[i]) for i in images), hits, on_token)
        return self._finish([NO_ANSWER_IN_SOURCES], (), hits, on_token)

    def _finish(
        self,
        pieces: Sequence[str],
        citations: tuple[Citation, ...],
        hits: tuple[Hit, ...],
        on_token: StreamCallback | None,
    ) -> Answer:
        """Stream ``pieces`` to ``on_token`` and build the answer they make up."""
        if on_token is not None:
            for piece in pieces:
                on_token(piece)
        return Answer(
            text="".join(pieces),
            citations=citations,
            hits=hits,
            context_tokens=sum(self._tokens(h.text) for h in hits),
            generator=self.name,
        )


#: sentences encoded and written to the sentence cache at a time by :meth:`ExtractiveGenerator.prefill`
_PREFILL_SLICE = 256

#: At most this many leading image hits without text are named in an answer.
MAX_IMAGES_NAMED = 3


def _leading_images(hits: Sequence[Hit]) -> list[int]:
    """Indices of the image hits without text that rank above every hit with text (at most
    :data:`MAX_IMAGES_NAMED`): what was found for the query before any passage."""
    out = []
    for i, h in enumerate(hits):
        if h.text.strip() or not h.image:
            break
        out.append(i)
    return out[:MAX_IMAGES_NAMED]


def _image_pieces(hits: Sequence[Hit], images: Sequence[int], *, answered: bool) -> list[str]:
    """One sentence naming the images found (each cited), e.g. ``"The best match is an image without text:
    scan.png (score 1.000) [1]."``; it says the text sources do not answer when ``answered`` is false."""
    if not images:
        return []
    named = ", ".join(f"{hits[i].metadata.get('source') or hits[i].doc_id} (score {hits[i].score:.3f}) [{i + 1}]"
                      for i in images)
    lead = "The best match is an image without text" if len(images) == 1 else \
        f"The best matches are {len(images)} images without text"
    tail = "" if answered else " No retrieved text answers the question."
    return [f"{lead}: {named}.{tail}"]


__all__ = ["ExtractiveGenerator", "content_words", "select_sentences", "split_prose", "split_sentences"]
