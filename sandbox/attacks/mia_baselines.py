"""Membership-inference baselines run in the same harness as MrM (one query per target each).

``qb-mia`` (query-based MIA; Anderson et al. 2024, "Is my data in your retrieval database?")
    Ask, with the target image, whether it appears in the context; score 1 for "yes", 0 for "no",
    0.5 for an answer that is neither (an extractive generator can only quote its sources, so it
    never answers yes/no: the baseline is at chance against it, by construction).
``sb-mia-F`` (similarity-based MIA; Li et al. 2024, "Generating is believing")
    Mask the left ``F`` (0.25, 0.5, 0.75) of the image (pixels 0), ask for a short description,
    score the cosine between the answer's text embedding and the full target image's embedding
    (the attacker's image encoder and its text side).
``mba`` (mask-based MIA for text; Liu et al. 2024, "Mask-based membership inference attacks for
    retrieval-augmented generation")
    Mask the ``M`` hardest-to-predict words of the target's text (highest inverse document
    frequency over the attacker's reference texts: a rare word cannot be filled from general
    language), ask the system to fill them in, score the share of masked words the answer contains.
    Needs targets with text.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from heterag import ImageRef

from .answer_match import norm_words, singular

QB_PROMPT = "Does this image appear in the context (the retrieved reference images)? Answer with yes or no."
SB_PROMPT = "Describe this image briefly."
MBA_PROMPT = "Fill in each [MASK] in the text below with the right word; answer with the completed text.\n\n"
_YES = re.compile(r"^\W*yes\b", re.I)
_NO = re.compile(r"^\W*no\b", re.I)


def qb_score(answer: str | None) -> float:
    if answer and _YES.search(answer):
        return 1.0
    if answer and _NO.search(answer):
        return 0.0
    return 0.5


def mask_left(image: ImageRef, fraction: float) -> ImageRef:
    """``image`` with the left ``fraction`` of its columns set to 0."""
    arr = np.asarray(image.to_pil().convert("RGB")).copy()
    arr[:, : int(round(fraction * arr.shape[1]))] = 0
    return ImageRef.from_array(arr, source="masked-left")


def sb_scores(answers: Sequence[str | None], images: Sequence[ImageRef], encoder: object) -> np.ndarray:
    """Cosine between each answer's text embedding and its target image's embedding (0 for a failed answer)."""
    ok = [i for i, a in enumerate(answers) if a]
    out = np.zeros(len(answers))
    if ok:
        t = np.asarray(encoder.encode_texts([answers[i] for i in ok]), dtype=np.float32)
        v = np.asarray(encoder.encode_images([images[i] for i in ok], progress=False), dtype=np.float32)
        t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        out[ok] = (t * v).sum(1)
    return out


class HardWords:
    """Inverse document frequency over the attacker's reference texts (unseen words are hardest)."""

    def __init__(self, texts: Sequence[str]):
        self.n = len(texts)
        self.df = Counter(w for t in texts for w in set(norm_words(t)))

    def idf(self, word: str) -> float:
        return math.log((1 + self.n) / (1 + self.df.get(singular(word.lower()), 0)))

    def mask(self, text: str, m: int) -> tuple[str, list[str]]:
        """(text with the ``m`` highest-IDF content words replaced by ``[MASK]``, those words)."""
        tokens = re.findall(r"\w+|\W+", text)
        cands = [(i, t) for i, t in enumerate(tokens) if re.fullmatch(r"[A-Za-z]{3,}", t) and norm_words(t)]
        chosen = sorted(cands, key=lambda c: (-self.idf(c[1]), c[0]))[:m]
        idx = {i for i, _ in chosen}
        masked = "".join("[MASK]" if i in idx else t for i, t in enumerate(tokens))
        return masked, [t for i, t in sorted(chosen)]


def mba_score(answer: str | None, words: Sequence[str]) -> float:
    """Share of the masked ``words`` the answer contains (normalised words)."""
    if not answer or not words:
        return 0.0
    have = set(norm_words(answer))
    return float(np.mean([bool(set(norm_words(w)) & have) for w in words]))
