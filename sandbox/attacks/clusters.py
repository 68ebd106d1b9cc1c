"""Cluster profiling of image embeddings (M3Att, cluster-centre targeting).

The attacker embeds its reference pool, clusters the unit vectors, and aims one poison at each
cluster: a poison near a cluster's centre is among the nearest neighbours of many queries that
fall into that cluster, including queries the attacker never sees.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from heterag import InvalidInputError

from ._checks import as_matrix, positive_int, unit_rows


@dataclass(frozen=True)
class Clusters:
    """The result of :func:`profile_clusters` (``n`` embeddings, ``K`` clusters, dimension ``D``).

    ``centres`` (K, D) float32: k-means centres projected back onto the unit sphere.
    ``proxy_centroids`` (K, D) float32, unit-norm: normalised mean of the ``proxy_members``
    members nearest (by cosine) their cluster centre; a centre supported by real points, less
    pulled by outliers than the full mean.
    ``labels`` (n,) int64: cluster of each embedding. ``sizes`` (K,) int64: members per cluster.
    """

    centres: np.ndarray
    proxy_centroids: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray

    @property
    def n_clusters(self) -> int:
        return int(self.centres.shape[0])


def profile_clusters(embeddings: np.ndarray, n_clusters: int, *, proxy_members: int = 50, seed: int = 0) -> Clusters:
    """K-means profile of ``embeddings`` (n, D) (M3Att: poison targets are cluster centres).

    Rows are normalised to unit length first and the centres are normalised after fitting
    (spherical k-means in the usual approximation: Euclidean k-means on unit vectors ranks
    points by cosine). scikit-learn's ``KMeans`` (k-means++, 4 restarts, ``random_state=seed``),
    so the result is deterministic for a seed. A centre whose members cancel out (norm ~ 0) is
    replaced by its most central member.

    Raises :class:`InvalidInputError` for a non-2-d array, NaN/inf values, an all-zero row,
    ``n_clusters`` outside ``[1, n]`` or ``proxy_members < 1``.
    """
    x = unit_rows("embeddings", as_matrix("embeddings", embeddings))
    n = x.shape[0]
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int | np.integer) or not 1 <= n_clusters <= n:
        raise InvalidInputError(f"n_clusters must be an integer in [1, {n}] (the number of embeddings), got {n_clusters!r}")
    proxy_members = positive_int("proxy_members", proxy_members)
    from sklearn.cluster import KMeans

    with warnings.catch_warnings():
        # fewer distinct points than clusters: sklearn warns and leaves duplicate centres; still usable
        warnings.simplefilter("ignore")
        km = KMeans(n_clusters=int(n_clusters), n_init=4, random_state=seed).fit(x.astype(np.float64))
    labels = km.labels_.astype(np.int64)
    k = int(n_clusters)
    sizes = np.bincount(labels, minlength=k).astype(np.int64)
    centres = np.zeros((k, x.shape[1]), dtype=np.float32)
    proxies = np.zeros_like(centres)
    for c in range(k):
        members = np.flatnonzero(labels == c)
        raw = km.cluster_centers_[c].astype(np.float32)
        norm = float(np.linalg.norm(raw))
        if members.size == 0:  # cannot happen with sklearn's relocation; kept for safety
            centres[c] = proxies[c] = raw / max(norm, 1e-12)
            continue
        sims = x[members] @ (raw / max(norm, 1e-12))
        order = members[np.argsort(-sims, kind="stable")]
        centres[c] = raw / norm if norm > 1e-6 else x[order[0]]
        mean = x[order[:proxy_members]].mean(axis=0)
        mnorm = float(np.linalg.norm(mean))
        proxies[c] = mean / mnorm if mnorm > 1e-6 else x[order[0]]
    return Clusters(centres=centres, proxy_centroids=proxies, labels=labels, sizes=sizes)
