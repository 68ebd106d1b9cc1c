"""Retrieval objective of the poisons: neighbourhood thresholds and (soft) query coverage.

M3Att's stronger objective: a poison is useful for a query when it would be retrieved for it,
i.e. when its similarity to the query beats what the knowledge base already offers. The
attacker knows neither the queries nor the KB, so it uses its reference pool twice:

* reference *queries* ``Q`` (m, D): image embeddings of the reference pool;
* a *proxy KB*: the reference pool itself, each query's own item left out.

The per-query threshold ``t_r`` is the similarity of query ``r``'s ``k'``-th nearest proxy-KB
neighbour. ``k'`` defaults to 1 because the proxy pool is much sparser than the real KB: with
``m`` proxy items and ``N`` KB items, the KB's ``k``-th neighbour of a query is about as close as
its ``(k * m / N)``-th proxy neighbour, which is below the first for any KB larger than ``k * m``;
the first proxy neighbour is the tightest estimate the pool can give (still an underestimate of
the real top-k bar, which the soft objective's margin and the attack's evaluation absorb).

With poison vectors ``V`` (P, D):

* hard coverage ``C(V) = #{r : max_p cos(q_r, v_p) > t_r}`` (:func:`coverage`);
* soft coverage ``S(V) = sum_r sigmoid((smax_p cos(q_r, v_p) - t_r) / T)`` (:func:`soft_coverage`),
  with ``smax_p s_p = tau * logsumexp(s_p / tau)`` (``tau`` = ``max_temperature``), a smooth
  upper bound of the max, within ``tau * log P`` of it. Differentiable in ``V``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from heterag import InvalidInputError

from ._checks import as_matrix, as_vector, positive_float, positive_int, unit_rows

#: Default sigmoid temperature of the soft coverage (cosine units).
TEMPERATURE = 0.02
#: Default temperature of the log-sum-exp max over poisons (cosine units).
MAX_TEMPERATURE = 0.01


def neighbour_thresholds(queries: np.ndarray, kb: np.ndarray | None = None, *, k: int = 1) -> np.ndarray:
    """Per-query thresholds ``t_r`` (m,) float32: cosine of each query's ``k``-th nearest KB neighbour.

    ``queries`` (m, D) and ``kb`` (n, D) are embeddings (normalised here). With ``kb=None`` the
    proxy KB is ``queries`` itself with each query's own row left out (leave-one-out; other
    rows with identical vectors still count, they are other items). Default ``k=1``: see the
    module docstring. Raises :class:`InvalidInputError` for bad shapes or NaN, or when the KB
    has fewer than ``k`` candidates per query.
    """
    q = unit_rows("queries", as_matrix("queries", queries))
    k = positive_int("k", k)
    if kb is None:
        sims = q @ q.T
        np.fill_diagonal(sims, -np.inf)
        available = q.shape[0] - 1
    else:
        r = unit_rows("kb", as_matrix("kb", kb, dim=q.shape[1]))
        sims = q @ r.T
        available = r.shape[0]
    if available < k:
        raise InvalidInputError(f"the proxy KB has {available} item(s) per query, fewer than k'={k}")
    kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
    return kth.astype(np.float32)


def _cosines(vectors: Any, queries: Any) -> np.ndarray:
    v = unit_rows("vectors", as_matrix("vectors", vectors))
    q = unit_rows("queries", as_matrix("queries", queries, dim=v.shape[1]))
    return q @ v.T  # (m, P)


def covered(vectors: np.ndarray, queries: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Boolean (m,): query ``r`` is covered when some poison beats its threshold, ``max_p cos > t_r``."""
    sims = _cosines(vectors, queries)
    t = as_vector("thresholds", thresholds, length=sims.shape[0])
    return sims.max(axis=1) > t


def coverage(vectors: np.ndarray, queries: np.ndarray, thresholds: np.ndarray) -> int:
    """Hard coverage ``#{r : max_p cos(q_r, v_p) > t_r}`` of poison vectors (P, D) on queries (m, D).

    Monotone: adding a poison vector never lowers it. Raises :class:`InvalidInputError` on
    mismatched shapes or NaN.
    """
    return int(covered(vectors, queries, thresholds).sum())


def soft_coverage(
    vectors: torch.Tensor,
    queries: torch.Tensor,
    thresholds: torch.Tensor,
    *,
    temperature: float = TEMPERATURE,
    max_temperature: float = MAX_TEMPERATURE,
) -> torch.Tensor:
    """Differentiable coverage ``sum_r sigmoid((tau*logsumexp_p(cos(q_r, v_p)/tau) - t_r) / T)``, a scalar.

    ``vectors`` (P, D) (normalised inside, so gradients stay tangent-ish to the sphere),
    ``queries`` (m, D) unit rows, ``thresholds`` (m,); torch tensors (the gradient flows to
    ``vectors``). ``T`` = ``temperature``, ``tau`` = ``max_temperature`` (cosine units; as both go to
    0 this tends to :func:`coverage`). Per-query contributions: :func:`soft_coverage_terms`.
    """
    return soft_coverage_terms(vectors, queries, thresholds, temperature=temperature,
                               max_temperature=max_temperature).sum()


def soft_coverage_terms(
    vectors: torch.Tensor,
    queries: torch.Tensor,
    thresholds: torch.Tensor,
    *,
    temperature: float = TEMPERATURE,
    max_temperature: float = MAX_TEMPERATURE,
) -> torch.Tensor:
    """The (m,) per-query terms of :func:`soft_coverage`, each in (0, 1)."""
    temperature = positive_float("temperature", temperature)
    max_temperature = positive_float("max_temperature", max_temperature)
    for name, t, nd in (("vectors", vectors, 2), ("queries", queries, 2), ("thresholds", thresholds, 1)):
        if not isinstance(t, torch.Tensor) or t.ndim != nd:
            raise InvalidInputError(f"{name} must be a {nd}-d torch tensor")
    if vectors.shape[1] != queries.shape[1] or thresholds.shape[0] != queries.shape[0]:
        raise InvalidInputError(f"shapes do not fit: vectors {tuple(vectors.shape)}, queries {tuple(queries.shape)}, "
                                f"thresholds {tuple(thresholds.shape)}")
    v = torch.nn.functional.normalize(vectors, dim=-1)
    sims = queries.to(v.dtype) @ v.T  # (m, P)
    smax = max_temperature * torch.logsumexp(sims / max_temperature, dim=1)
    return torch.sigmoid((smax - thresholds.to(v.dtype)) / temperature)
