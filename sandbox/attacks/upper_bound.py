"""Free embedding vectors that maximise query coverage: the attack's unconstrained upper bound.

No image constrains these vectors: they are what a poison could achieve if its embedding could
be chosen freely. Used (a) as the unconstrained upper bound of the attack and (b) as target
vectors of the neighbourhood-objective variant (PGD then pulls each poison image towards one).
"""

from __future__ import annotations

import numpy as np
import torch

from heterag import InvalidInputError

from ._checks import as_matrix, as_vector, positive_float, positive_int, unit_rows
from .clusters import profile_clusters
from .objectives import MAX_TEMPERATURE, TEMPERATURE, coverage, soft_coverage


def fit_free_vectors(
    queries: np.ndarray,
    thresholds: np.ndarray,
    n_vectors: int,
    *,
    init: np.ndarray | None = None,
    steps: int = 300,
    lr: float = 0.05,
    temperature: float = TEMPERATURE,
    max_temperature: float = MAX_TEMPERATURE,
    seed: int = 0,
) -> np.ndarray:
    """Unit vectors (P, D) float32 maximising the soft coverage of ``queries`` (M3Att, stronger objective).

    Projected Adam on the sphere: ``V <- normalise(V + Adam(grad_V S(V)))`` for ``steps`` steps,
    ``S`` = :func:`~sandbox.attacks.objectives.soft_coverage` with ``temperature`` and
    ``max_temperature``. ``queries`` (m, D) are the reference query embeddings, ``thresholds``
    (m,) from :func:`~sandbox.attacks.objectives.neighbour_thresholds`. ``init`` (P, D) defaults
    to the proxy centroids of ``profile_clusters(queries, n_vectors, seed=seed)``.

    Returns the iterate with the highest *hard* coverage (ties: the earliest), so the result
    never covers fewer queries than ``init``. Deterministic for a seed (CPU, float32; runs single-threaded).
    Raises :class:`InvalidInputError` for bad shapes, NaN, ``n_vectors`` outside ``[1, m]``
    without ``init``, or an ``init`` with other than ``n_vectors`` rows.
    """
    q = unit_rows("queries", as_matrix("queries", queries))
    t = as_vector("thresholds", thresholds, length=q.shape[0])
    n_vectors = positive_int("n_vectors", n_vectors)
    steps = positive_int("steps", steps, minimum=0)
    lr = positive_float("lr", lr)
    if init is None:
        if n_vectors > q.shape[0]:
            raise InvalidInputError(f"n_vectors ({n_vectors}) exceeds the number of reference queries ({q.shape[0]}); "
                                    "pass init")
        v0 = profile_clusters(q, n_vectors, seed=seed).proxy_centroids
    else:
        v0 = unit_rows("init", as_matrix("init", init, dim=q.shape[1]))
        if v0.shape[0] != n_vectors:
            raise InvalidInputError(f"init has {v0.shape[0]} rows, expected n_vectors={n_vectors}")
    qt, tt = torch.from_numpy(q), torch.from_numpy(t)
    best, best_cov = v0.copy(), coverage(v0, q, t)
    threads = torch.get_num_threads()
    # tiny (m, P) products: one thread is several times faster than contended OpenMP workers
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            v = torch.nn.Parameter(torch.from_numpy(v0.copy()))
            opt = torch.optim.Adam([v], lr=lr)
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                loss = -soft_coverage(v, qt, tt, temperature=temperature, max_temperature=max_temperature)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    v.copy_(torch.nn.functional.normalize(v, dim=-1))
                cand = v.detach().numpy()
                cov = coverage(cand, q, t)
                if cov > best_cov:
                    best, best_cov = cand.copy(), cov
    finally:
        torch.set_num_threads(threads)
    return best.astype(np.float32)
