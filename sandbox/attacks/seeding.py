"""Candidate seeding: which clean image each poison starts from (M3Att).

A poison starts from a real image of the attacker's pool (so it looks like one) and PGD only
moves it within an eps-ball. Starting from the image that is already closest to the target,
*and* that moves towards it fastest, matters more than many more PGD steps. Each target
ranks the candidates by embedding similarity, the ``top`` best get a short PGD warm-up, and
the best warmed-up candidate becomes the seed.

Every poison gets its own candidate: the seeds are distinct, so the candidate pool must hold
at least as many images as the poison budget ``K`` (otherwise :class:`InvalidInputError`
"poison budget K larger than candidate pool c"; a runner with a smaller pool must lower ``K``).
Candidate images may differ in size: the warm-up runs at each image's native size, one
batched PGD per size group (:func:`~sandbox.attacks.pgd.pgd_by_size`); nothing is resized.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from heterag import ImageEncoder, InvalidInputError

from ._checks import as_matrix, positive_int, unit_rows
from .pgd import pgd_by_size


def seed_candidates(
    encoder: ImageEncoder,
    candidate_images: Sequence[torch.Tensor] | torch.Tensor,
    candidate_embeddings: np.ndarray,
    targets: np.ndarray,
    *,
    top: int = 5,
    warmup_steps: int = 10,
    eps: float = 16 / 255,
    alpha: float = 1 / 255,
    batch_size: int | None = None,
    progress: bool = False,
    seed: int = 0,
    threads: int | None = None,
) -> np.ndarray:
    """Seed candidate per target: indices (K,) int64 into ``candidate_images``, all distinct.

    ``candidate_images``: ``c`` [3,H,W] tensors in [0, 1] (sizes may differ) or one [c,3,H,W]
    batch; ``candidate_embeddings`` (c, D) their embeddings under ``encoder``; ``targets`` (K, D).
    For each target, the ``top`` candidates by cosine get ``warmup_steps`` PGD steps
    (``eps``, ``alpha``; all (target, candidate) pairs batched per image size; 0 steps ranks by
    plain similarity). Assignment is greedy over the pairs by warmed-up similarity, best
    first, each candidate used once; a target whose shortlist was taken by better pairs gets
    the most similar free candidate (no warm-up). Deterministic. ``batch_size``, ``progress``,
    ``seed`` and ``threads`` go to the warm-up PGD.

    Raises :class:`InvalidInputError` "poison budget K larger than candidate pool c" when
    ``K > c``, and on shape mismatches or NaN.
    """
    images = list(candidate_images.unbind(0)) if isinstance(candidate_images, torch.Tensor) else list(candidate_images)
    emb = unit_rows("candidate_embeddings", as_matrix("candidate_embeddings", candidate_embeddings))
    tgt = unit_rows("targets", as_matrix("targets", targets, dim=emb.shape[1]))
    c, k = emb.shape[0], tgt.shape[0]
    if len(images) != c:
        raise InvalidInputError(f"{len(images)} candidate images but {c} candidate embeddings")
    if k > c:
        raise InvalidInputError(f"poison budget K larger than candidate pool c (K={k}, c={c})")
    top = min(positive_int("top", top), c)
    warmup_steps = positive_int("warmup_steps", warmup_steps, minimum=0)
    sims = tgt @ emb.T  # (K, c)
    short = np.argsort(-sims, axis=1, kind="stable")[:, :top]  # (K, top)
    pair_t = np.repeat(np.arange(k), top)
    pair_c = short.reshape(-1)
    if warmup_steps > 0:
        warmed = np.empty(pair_t.size, dtype=np.float32)
        runs = pgd_by_size(encoder, [images[j] for j in pair_c], tgt[pair_t], eps=eps, alpha=alpha,
                           steps=warmup_steps, batch_size=batch_size, progress=progress, seed=seed,
                           threads=threads)
        for idx, res in runs:
            warmed[idx] = res.similarity
    else:
        warmed = sims[pair_t, pair_c].astype(np.float32)
    chosen = np.full(k, -1, dtype=np.int64)
    used = np.zeros(c, dtype=bool)
    for p in np.lexsort((pair_c, pair_t, -warmed)):  # best warmed pair first; ties by target, candidate
        ti, ci = pair_t[p], pair_c[p]
        if chosen[ti] < 0 and not used[ci]:
            chosen[ti], used[ci] = ci, True
    for ti in np.flatnonzero(chosen < 0):
        free = np.flatnonzero(~used)
        ci = free[np.argmax(sims[ti, free])]
        chosen[ti], used[ci] = ci, True
    return chosen
