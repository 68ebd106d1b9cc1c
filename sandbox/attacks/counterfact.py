"""Counterfact-informed mask selection for MrM: keep masks whose object a model cannot guess.

If a local model can name the masked object from the rest of the image (a fork next to a plate),
the RAG system's answer says nothing about membership. A *proxy* scores every masked image against
an object vocabulary; from the probabilities ``p`` (softmax over the vocabulary) come the features

* ``p_c``: probability of the true object,
* ``gap``: ``max(p) - p_c`` (0 when the true object is the proxy's top guess),
* ``entropy``: ``-sum p log p`` (nats),
* ``top``: the ``top_k`` largest probabilities.

The unsupervised rule ranks masks by the sum of three ranks (high entropy, low ``p_c``, small
``gap`` first) and keeps the first ``K`` of a target. (MrM, "counterfact-informed mask selection":
a mask is informative when the object is *not* predictable from context.)

The default proxy is zero-shot: the collection's image encoder embeds the masked image, its text
side embeds ``template.format(label)`` for every vocabulary label, and ``p = softmax(cos / tau)``.
Any encoder :func:`heterag.encoding.image_encoders.load_image_encoder` loads can stand in (e.g. an open_clip
model). Where the data has no label for an object, it is the proxy's top label for the object
region alone (everything else blacked out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from heterag import ImageRef, InvalidInputError


@dataclass(frozen=True)
class MaskFeatures:
    p_c: float
    gap: float
    entropy: float
    top: tuple[float, ...] = field(default=())


class ZeroShotProxy:
    """Zero-shot object probabilities from an image encoder with a text side.

    ``encoder``: an object with ``encode_images(list[ImageRef]) -> (n, d)`` and ``encode_texts(list[str])
    -> (V, d)`` (unit vectors). ``tau``: softmax temperature on cosines (default 0.05).
    """

    def __init__(self, encoder: object, template: str = "a {}", tau: float = 0.05):
        if tau <= 0:
            raise InvalidInputError(f"proxy tau must be > 0, got {tau!r}")
        self.encoder, self.template, self.tau = encoder, template, tau
        self._text: dict[tuple[str, ...], np.ndarray] = {}

    def _vocab(self, vocabulary: Sequence[str]) -> np.ndarray:
        key = tuple(vocabulary)
        if key not in self._text:
            t = np.asarray(self.encoder.encode_texts([self.template.format(v) for v in vocabulary]), dtype=np.float32)
            self._text[key] = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
        return self._text[key]

    def probabilities(self, images: Sequence[ImageRef], vocabulary: Sequence[str]) -> np.ndarray:
        """``(len(images), len(vocabulary))`` probabilities (rows sum to 1)."""
        if not vocabulary:
            raise InvalidInputError("the proxy needs a non-empty object vocabulary")
        if not images:
            return np.zeros((0, len(vocabulary)), dtype=np.float64)
        v = np.asarray(self.encoder.encode_images(list(images), progress=False), dtype=np.float32)
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        logits = (v @ self._vocab(vocabulary).T).astype(np.float64) / self.tau
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)


def features(p: np.ndarray, true_index: int, top_k: int = 3) -> MaskFeatures:
    """Counterfact features of one probability row ``p`` for the object at ``true_index``."""
    p = np.asarray(p, dtype=np.float64)
    p_c = float(p[true_index]) if true_index >= 0 else 0.0
    ent = float(-(p * np.log(np.clip(p, 1e-12, 1))).sum())
    return MaskFeatures(p_c, float(p.max() - p_c), ent, tuple(float(x) for x in np.sort(p)[::-1][:top_k]))


def rank_masks(feats: Sequence[MaskFeatures]) -> list[int]:
    """Indices of ``feats`` best first: by rank(-entropy) + rank(p_c) + rank(gap), ties by index."""
    if not feats:
        return []
    from scipy.stats import rankdata

    ent = rankdata([-f.entropy for f in feats])
    pc = rankdata([f.p_c for f in feats])
    gap = rankdata([f.gap for f in feats])
    total = ent + pc + gap
    return sorted(range(len(feats)), key=lambda i: (total[i], i))
