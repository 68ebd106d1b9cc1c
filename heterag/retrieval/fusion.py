"""Score fusion for multimodal retrieval: how text, image and cross-modal similarities combine.

A query may carry text, an image, or both. Each gives one or more *signals*, each a
cosine similarity between the query and a stored item:

* ``text``: query text vs the chunk's retrieval view (text encoder space);
* ``image``: query image vs the item's image (image encoder space);
* ``cross``: query text vs the item's image (the image encoder's text side: CLIP's text
  tower, or for the ``default`` image encoder the default text encoder it was trained into).

Candidates are the union of every signal's top-``candidates`` list; every signal is then
computed *exactly* for every candidate that has it (a text-only chunk has no ``image``
or ``cross`` signal; an image item without text has no ``text`` signal), and fused:

* ``weighted`` (default, weights text 1, image 2, cross 0.5: see :data:`DEFAULT_WEIGHTS`):
  the weighted mean of the similarities available to that candidate,
  ``sum(w_s * sim_s) / sum(w_s)`` over the signals both the query and the item have. With a single signal the score is that cosine similarity itself, so text-only
  retrieval scores are unchanged by multimodality.

  *A query without an image* (or whose image signal has weight 0) gives an image–text item
  ``text`` and ``cross`` but a text-only chunk ``text`` alone. Averaging the item's cross-modal
  score in would judge the two kinds on different evidence: a chart or scan whose image the
  image encoder cannot relate to words (cross near 0) would pull its well-matching caption
  below every text-only chunk. So for such a candidate the cross-modal signal can only add
  evidence: its score is ``max(sim_text, weighted mean of text and cross)``. It is scored on its
  text like every chunk, and is raised only when its image matches the question better than
  its text does. A query with an image is unchanged (every image item then has an ``image``
  signal, and the plain weighted mean applies), as is an image item without text (its only
  signal is ``cross``).
* ``rrf``: reciprocal-rank fusion, ``sum(w_s / (rrf_k + rank_s))`` over the available
  signals, where ``rank_s`` is the 1-based rank of the candidate by signal ``s`` among the
  candidates that have it. Insensitive to the different similarity scales of the spaces, but
  it gives an uninformative signal the same say as a decisive one.

Weights of 0 switch a signal off (it is then not even searched).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from heterag.core.errors import InvalidInputError

SIGNALS = ("text", "image", "cross")
FUSION_METHODS = ("weighted", "rrf")
#: Chosen on development scenes (``eval/tune_fusion.py``, seed 2, never a report set): with a
#: photo of an item and a generic question about it ("how many objects?"), equal weights found
#: the item first 97.2% of the time, image=2/cross=0.5 100%; caption-only queries stayed at 100%.
#: Reciprocal-rank fusion found it only 11.6% of the time: a generic question's text ranks are
#: noise that RRF weighs as much as a near-exact image match.
DEFAULT_WEIGHTS = {"text": 1.0, "image": 2.0, "cross": 0.5}


@dataclass(frozen=True)
class Fusion:
    """The rule that turns per-signal similarities into one ranking score (see the module docs)."""

    method: str = "weighted"
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    rrf_k: int = 60
    candidates: int = 50  # per signal, before exact rescoring

    def __post_init__(self) -> None:
        if self.method not in FUSION_METHODS:
            raise InvalidInputError(f"fusion method must be one of {', '.join(FUSION_METHODS)}, got {self.method!r}")
        unknown = set(self.weights) - set(SIGNALS)
        if unknown:
            raise InvalidInputError(f"unknown fusion signal(s) {sorted(unknown)}; signals are {', '.join(SIGNALS)}")
        for name, w in self.weights.items():
            if not isinstance(w, int | float) or w < 0 or w != w:
                raise InvalidInputError(f"fusion weight for {name!r} must be a number >= 0, got {w!r}")
        if not isinstance(self.rrf_k, int) or self.rrf_k < 0:
            raise InvalidInputError(f"rrf_k must be an integer >= 0, got {self.rrf_k!r}")
        if not isinstance(self.candidates, int) or self.candidates < 1:
            raise InvalidInputError(f"candidates must be a positive integer, got {self.candidates!r}")

    def weight(self, signal: str) -> float:
        return float(self.weights.get(signal, 0.0))

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any] | Fusion | None) -> Fusion:
        """From ``"weighted"``, ``"rrf"``, ``"weighted:text=1,image=2,cross=0.5"`` or a mapping of fields."""
        if spec is None:
            return cls()
        if isinstance(spec, Fusion):
            return spec
        if isinstance(spec, Mapping):
            return cls(**spec)
        method, _, rest = str(spec).partition(":")
        weights = dict(cls().weights)
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            if not eq:
                raise InvalidInputError(f"fusion weights look like text=1,image=1,cross=0.5; got {part!r}")
            try:
                weights[key.strip()] = float(value)
            except ValueError:
                raise InvalidInputError(f"fusion weight {part!r} is not a number") from None
        return cls(method=method.strip() or "weighted", weights=weights)

    def fuse(self, sims: Sequence[Mapping[str, float]]) -> list[float]:
        """One fused score per candidate from its available signal similarities.

        ``sims``: one mapping per candidate from signal name (``text``, ``image``, ``cross``) to a
        cosine similarity in [-1, 1]. Returns the scores in the same order: for ``weighted`` in
        [-1, 1] (see the module docs for the text-query rule), for ``rrf`` in (0, sum of weights / (rrf_k + 1)].
        """
        if self.method == "weighted":
            out = []
            for s in sims:
                total = sum(self.weight(k) for k in s)
                mean = sum(self.weight(k) * v for k, v in s.items()) / total if total > 0 else 0.0
                if "text" in s and "cross" in s and "image" not in s and self.weight("text") > 0:
                    mean = max(s["text"], mean)  # a text query: cross-modal evidence only adds (module docs)
                out.append(mean)
            return out
        ranks: dict[str, dict[int, int]] = {}
        for signal in SIGNALS:
            have = sorted((i for i, s in enumerate(sims) if signal in s), key=lambda i: -sims[i][signal])
            ranks[signal] = {i: r for r, i in enumerate(have, start=1)}
        return [sum(self.weight(k) / (self.rrf_k + ranks[k][i]) for k in s) for i, s in enumerate(sims)]
