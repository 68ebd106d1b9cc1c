"""Keyword tokenisation for science and medicine: the terms a keyword index stores and a query looks up.

Steps, in order (the same for indexed text and for queries):

1. Unicode NFKC normalisation (full-width letters, ligatures, superscripts become plain characters) and
   case folding (``str.casefold``: ``Straße`` matches ``strasse``).
2. Words are runs of letters and digits, joined by inner hyphens, dots, slashes or underscores:
   ``IL-6``, ``p53``, ``COVID-19``, ``3.5``, ``TNF-α``, ``n/a`` stay one *compound* term. A compound also
   gives its parts (``il-6`` -> ``il-6``, ``il``, ``6``), so ``IL6``-less spellings still meet halfway
   and a query for ``COVID`` finds ``COVID-19``.
3. Stopwords (scikit-learn's English list, 318 words) are dropped, as are one-letter Latin words; digits
   are kept whatever their length (``6`` in ``IL 6``).
4. Latin-script words of letters only are stemmed with the Snowball English stemmer (PyStemmer,
   Porter 2); compounds, numbers and words in other scripts (Greek, Cyrillic, CJK...) are kept as they are.
5. Han, Hiragana, Katakana and Hangul text has no spaces between words: each such character is a term
   of its own (unigrams), so Chinese or Japanese text is searchable without a dictionary.

A query of only stopwords or punctuation has no terms, and so no keyword hits (never an error).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterator

#: Longest term kept (characters); longer runs (base64, sequences) are cut to this length.
MAX_TERM_CHARS = 64

_WORD = re.compile(r"[^\W_]+(?:[-./_][^\W_]+)*")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\u3100-\u312f]")
_LATIN_LETTERS = re.compile(r"^[a-z\u00df-\u00ff]+$")


@functools.cache
def _stopwords() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


@functools.cache
def _stemmer() -> object:
    import Stemmer  # PyStemmer: the Snowball stemmers in C

    return Stemmer.Stemmer("english")


@functools.lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    return _stemmer().stemWord(word)  # type: ignore[attr-defined]


def _word_terms(word: str, stop: frozenset[str]) -> Iterator[str]:
    if _CJK.search(word):  # scripts without spaces: one term per ideograph/syllable, the rest as words
        rest = []
        for ch in word:
            if _CJK.match(ch):
                if rest:
                    yield from _word_terms("".join(rest), stop)
                    rest = []
                yield ch
            else:
                rest.append(ch)
        if rest:
            yield from _word_terms("".join(rest), stop)
        return
    word = word[:MAX_TERM_CHARS]
    parts = re.split(r"[-./_]", word)
    if len(parts) > 1:
        yield word
        for p in parts:
            if p and p not in stop and (len(p) > 1 or p.isdigit()):
                yield _stem(p) if _LATIN_LETTERS.match(p) else p
        return
    if word in stop or (len(word) == 1 and not word.isdigit()):
        return
    yield _stem(word) if _LATIN_LETTERS.match(word) else word


def tokenize(text: str) -> list[str]:
    """The keyword terms of ``text``, in order, repeats kept (term frequency matters to BM25).

    ``text``: any string (empty gives ``[]``). Returns lower-case strings of at most
    :data:`MAX_TERM_CHARS` characters, each free of spaces and quotes. See the module docs for the rules.
    Raises ``TypeError`` if ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"tokenize expects a string, got {type(text).__name__}")
    norm = unicodedata.normalize("NFKC", text).casefold()
    stop = _stopwords()
    out: list[str] = []
    for m in _WORD.finditer(norm):
        out.extend(_word_terms(m.group(0), stop))
    return out


def query_terms(text: str) -> list[str]:
    """The distinct terms of a query, first occurrence first (a query term counts once)."""
    return list(dict.fromkeys(tokenize(text)))
