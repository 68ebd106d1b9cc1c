"""Hybrid retrieval: keyword (BM25) and dense search over the same views, fused into one ranking.

A query's text is searched twice, by its embedding (dense: the views' vectors, see
:mod:`heterag.retrieval.fusion` for how image signals join) and by its keyword terms (the keyword
index, :mod:`heterag.stores.keyword`). :class:`HybridFusion` turns the two ranked candidate lists into
one:

* ``rrf``: reciprocal-rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009, eq. 1), weighted:
  ``w / (k + rank_dense) + (1 - w) / (k + rank_keyword)``, a list the candidate is missing from adding
  nothing. Needs no score scale, ignores how decisive a score is.
* ``convex``: a convex combination of normalised scores (Bruch, Gai & Ingber, "An Analysis of Fusion
  Functions for Hybrid Retrieval", ACM TOIS 2023, section 4, "TM2C2"):
  ``w * n_dense + (1 - w) * n_keyword`` where each score is normalised with its theoretical minimum (-1
  for a cosine, 0 for BM25) and the maximum among this query's candidates, ``n = (s - min) / (max - min)``.
  Every candidate gets both scores exactly (the retriever scores keyword-only candidates by their
  vectors and dense-only ones by BM25), so a candidate is never punished for falling just outside one
  list.

``w`` (``weight``) is the dense share. The defaults (:data:`DEFAULT_HYBRID`, :data:`DEFAULT_RETRIEVAL`) are
to be chosen by 5-fold cross-validation over SciFact's and PubMedQA's train queries (``eval/tune_hybrid.py``);
until that run they are provisional (see eval/README.md, issue #21). A query without keyword terms (only
stopwords) is answered by dense search alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from heterag.core.errors import InvalidInputError, UnknownNameError

#: How a text query is searched: by vectors, by keywords, or both fused.
RETRIEVAL_MODES = ("dense", "keyword", "hybrid")
HYBRID_METHODS = ("rrf", "convex")
#: Theoretical minimum of each score kind (for ``convex``'s normalisation).
SCORE_FLOOR = {"dense": -1.0, "keyword": 0.0}


def check_retrieval(mode: Any) -> str:
    """``mode`` if it is one of :data:`RETRIEVAL_MODES`, else :class:`~heterag.core.errors.UnknownNameError`."""
    if mode not in RETRIEVAL_MODES:
        raise UnknownNameError("retrieval mode", str(mode), RETRIEVAL_MODES)
    return str(mode)


@dataclass(frozen=True)
class HybridFusion:
    """How dense and keyword candidate lists become one ranking (see the module docs).

    ``method``: ``rrf`` or ``convex``; ``weight``: the dense share in [0, 1]; ``k``: RRF's rank offset
    (>= 0); ``candidates``: how many candidates each list contributes (>= 1). Invalid values raise
    :class:`~heterag.core.errors.InvalidInputError` naming the field.
    """

    method: str = "convex"
    weight: float = 0.5
    k: int = 60
    candidates: int = 100

    def __post_init__(self) -> None:
        if self.method not in HYBRID_METHODS:
            raise InvalidInputError(f"hybrid fusion method must be one of {', '.join(HYBRID_METHODS)}, got {self.method!r}")
        if not isinstance(self.weight, int | float) or not 0.0 <= float(self.weight) <= 1.0:
            raise InvalidInputError(f"hybrid fusion weight must be a number in [0, 1], got {self.weight!r}")
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 0:
            raise InvalidInputError(f"hybrid fusion k must be an integer >= 0, got {self.k!r}")
        if not isinstance(self.candidates, int) or isinstance(self.candidates, bool) or self.candidates < 1:
            raise InvalidInputError(f"hybrid fusion candidates must be a positive integer, got {self.candidates!r}")

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any] | HybridFusion | None) -> HybridFusion:
        """From ``"rrf"``, ``"convex"``, ``"rrf:k=20,weight=0.5"``, ``"convex:weight=0.7,candidates=200"``
        or a mapping of fields; None gives :data:`DEFAULT_HYBRID`."""
        if spec is None:
            return DEFAULT_HYBRID
        if isinstance(spec, HybridFusion):
            return spec
        if isinstance(spec, Mapping):
            return cls(**spec)
        method, _, rest = str(spec).partition(":")
        fields: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            key = key.strip()
            if not eq or key not in ("weight", "k", "candidates"):
                raise InvalidInputError(f"hybrid fusion settings look like rrf:k=60,weight=0.5 or convex:weight=0.5; got {part!r}")
            try:
                fields[key] = float(value) if key == "weight" else int(value)
            except ValueError:
                raise InvalidInputError(f"hybrid fusion setting {part!r} is not a number") from None
        base = DEFAULT_HYBRID if method.strip() in ("", DEFAULT_HYBRID.method) else cls(method=method.strip())
        return cls(**{**base.__dict__, "method": method.strip() or base.method, **fields})

    def describe(self) -> str:
        if self.method == "rrf":
            return f"rrf:k={self.k},weight={self.weight:g},candidates={self.candidates}"
        return f"convex:weight={self.weight:g},candidates={self.candidates}"

    def fuse(self, dense: Sequence[tuple[str, float]], keyword: Sequence[tuple[str, float]],
             exact: Mapping[str, Mapping[str, float]] | None = None) -> list[tuple[str, float]]:
        """One ranking from two ranked lists of ``(id, score)`` (best first), best first.

        ``exact`` (for ``convex``): per id, its ``dense`` and/or ``keyword`` score where the id is missing
        from that list; an id with no score of a kind counts as that kind's theoretical minimum. Returns
        ``(id, fused score)``: for ``rrf`` in (0, 1 / (k + 1)], for ``convex`` in [0, 1]. Ties break by id.
        """
        if self.method == "rrf":
            fused: dict[str, float] = {}
            for share, ranked in ((self.weight, dense), (1.0 - self.weight, keyword)):
                for rank, (i, _) in enumerate(ranked, 1):
                    fused[i] = fused.get(i, 0.0) + share / (self.k + rank)
            return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
        scores: dict[str, dict[str, float]] = {}
        for kind, ranked in (("dense", dense), ("keyword", keyword)):
            for i, s in ranked:
                scores.setdefault(i, {})[kind] = float(s)
        for i, extra in (exact or {}).items():
            if i in scores:
                for kind, s in extra.items():
                    scores[i].setdefault(kind, float(s))
        tops = {kind: max((s[kind] for s in scores.values() if kind in s), default=SCORE_FLOOR[kind]) for kind in SCORE_FLOOR}

        def norm(kind: str, s: dict[str, float]) -> float:
            lo, hi = SCORE_FLOOR[kind], tops[kind]
            return (s.get(kind, lo) - lo) / (hi - lo) if hi > lo else 0.0

        out = {i: self.weight * norm("dense", s) + (1.0 - self.weight) * norm("keyword", s) for i, s in scores.items()}
        return sorted(out.items(), key=lambda kv: (-kv[1], kv[0]))


#: The hybrid fusion used unless another is given (provisional until ``eval/tune_hybrid.py`` has chosen it, see the module docs).
DEFAULT_HYBRID = HybridFusion()
#: The retrieval mode used unless another is given. ``dense`` until the k-fold run shows that hybrid wins
#: (issue #21: "the default becomes hybrid if it wins on the folds"): on the built-in Python reference demo
#: a question like "What does the with statement do?" keeps only "statement" as a keyword term ("with" is a
#: stopword), and the provisional fusion then ranks "global statement" chunks first.
DEFAULT_RETRIEVAL = "dense"
