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

``w`` (``weight``) is the dense share. The defaults were chosen by 5-fold cross-validation over SciFact's
(809 claims) and PubMedQA's (500 questions) **train** queries (``eval/tune_hybrid.py``, seed 0; grid: rrf
k in {5..100} x w in {0.3..0.9}, convex w in {0.20..0.95}, 50/100/200 candidates per list): the setting chosen
on four folds scored the fifth, and every fold chose ``convex`` with w 0.8 (four folds) or 0.85 (one).
Out of fold, hybrid beat dense by +4.85 nDCG@10 (95% CI [+3.35, +6.36]) on the heterag view, +5.10
[+3.60, +6.63] late, +7.34 [+5.65, +8.98] naive, and beat keyword search alone on every view; on PubMedQA
it was level or better (+0.15 to +0.94). :data:`DEFAULT_HYBRID` is the choice on all train queries
(``convex:weight=0.8,candidates=100``), ``rrf`` alone defaults to its best there (k 5, w 0.5, 50
candidates), and :data:`DEFAULT_RETRIEVAL` is ``hybrid``. A query without keyword terms (only stopwords)
is answered by dense search alone.
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
        method = method.strip() or DEFAULT_HYBRID.method
        base = TUNED.get(method) or cls(method=method)  # an unknown method: the constructor's one-line error
        return cls(**{**base.__dict__, **fields})

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


#: Each method's best setting on SciFact's and PubMedQA's train queries (``eval/tune_hybrid.py``, see the
#: module docs): what ``--hybrid rrf`` or ``--hybrid convex`` starts from.
TUNED = {"convex": HybridFusion("convex", weight=0.8, candidates=100), "rrf": HybridFusion("rrf", weight=0.5, k=5, candidates=50)}
#: The hybrid fusion used unless another is given: chosen by 5-fold cross-validation (see the module docs).
DEFAULT_HYBRID = TUNED["convex"]
#: The retrieval mode used unless another is given: ``hybrid``, which won on every fold (module docs). A
#: collection without a keyword index falls back to dense search (``Retriever.retrieval_mode``).
DEFAULT_RETRIEVAL = "hybrid"
