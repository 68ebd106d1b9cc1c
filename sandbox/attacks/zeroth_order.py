"""Black-box L-inf PGD from similarity queries only (zeroth-order gradient estimates).

The attacker can only ask an *oracle* how similar an image is to its target (a score, no
gradient). The gradient is estimated by antithetic (symmetric) finite differences along
random Gaussian directions (Nesterov & Spokoiny 2017; NES as in Ilyas et al. 2018)::

    g(x) = 1/(2 sigma n) * sum_{j=1..n} (f(x + sigma u_j) - f(x - sigma u_j)) u_j,   u_j ~ N(0, I)

and used as in :mod:`~sandbox.attacks.pgd`: ``x <- Proj_{B_inf(x0, eps) ∩ [0,1]}(x + alpha sign(g))``.
Probes are clamped to [0, 1] (the oracle only sees valid images). Every step sends all images
and all their probes in one oracle call (chunked by ``oracle_batch``).

Oracle contract: ``oracle(x)`` with ``x`` [B,3,H,W] returns [B] (row ``b`` scored against
target ``b``) and with ``x`` [B,M,3,H,W] returns [B,M] (M probes per target). It is called
under ``torch.no_grad``. :func:`similarity_oracle` builds one from an encoder.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from heterag import ImageEncoder, InvalidInputError

from ._checks import as_matrix, pixel_batch, positive_float, positive_int
from ._threads import torch_threads
from .pgd import PGDResult, quantise, uint8_to_pixels

#: x [B,3,H,W] -> [B], or x [B,M,3,H,W] -> [B,M]: similarity of each image to its row's target.
SimilarityOracle = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ZerothOrderResult(PGDResult):
    """:class:`~sandbox.attacks.pgd.PGDResult` plus ``oracle_queries``: images sent to the oracle.

    ``oracle_queries = B * (steps * (2 * directions + 1) + 2)``: per step each image and its
    ``2 * directions`` probes, then the final iterate and the quantised result.
    """

    oracle_queries: int = 0


def similarity_oracle(encoder: ImageEncoder, targets: Any, *, batch_size: int = 256) -> SimilarityOracle:
    """An oracle scoring images by cosine to ``targets`` (B, D) under ``encoder`` (no gradients used).

    The returned callable follows the contract of the module docstring; it embeds at most
    ``batch_size`` images per forward pass, under ``torch.inference_mode``.
    """
    t = F.normalize(torch.from_numpy(as_matrix("targets", targets, dim=getattr(encoder, "dim", None))), dim=-1)
    batch_size = positive_int("batch_size", batch_size)

    def oracle(x: torch.Tensor) -> torch.Tensor:
        squeeze = x.ndim == 4
        xb = x.unsqueeze(1) if squeeze else x
        if xb.ndim != 5 or xb.shape[0] != t.shape[0] or xb.shape[2] != 3:
            raise InvalidInputError(f"oracle input must be [{t.shape[0]},3,H,W] or [{t.shape[0]},M,3,H,W], "
                                    f"got {tuple(x.shape)}")
        b, m = xb.shape[:2]
        flat = xb.reshape(b * m, *xb.shape[2:])
        tt = t.repeat_interleave(m, dim=0)
        with torch.inference_mode():
            sims = torch.cat([(encoder.embed_pixels(flat[i:i + batch_size]) * tt[i:i + batch_size]).sum(-1)
                              for i in range(0, b * m, batch_size)])
        out = sims.reshape(b, m).float()
        return out[:, 0] if squeeze else out

    return oracle


def _ask(oracle: SimilarityOracle, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """Call the oracle on [B,M,3,H,W] in chunks of ``chunk`` probes per image; check the shape."""
    b, m = x.shape[:2]
    parts = []
    for i in range(0, m, chunk):
        part = x[:, i:i + chunk]
        out = oracle(part)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(part.shape[:2]):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InvalidInputError(f"similarity oracle returned {got} for input {tuple(part.shape)}; "
                                    f"expected {tuple(part.shape[:2])}")
        parts.append(out.detach().float())
    return torch.cat(parts, dim=1)


def zeroth_order_pgd(
    similarity_oracle: SimilarityOracle,
    images: torch.Tensor,
    *,
    eps: float = 16 / 255,
    alpha: float = 1 / 255,
    steps: int = 100,
    directions: int = 20,
    sigma: float = 1 / 255,
    oracle_batch: int | None = None,
    progress: bool = True,
    seed: int = 0,
    threads: int | None = None,
) -> ZerothOrderResult:
    """Black-box L-inf PGD of ``images`` [B,3,H,W] in [0, 1] using only ``similarity_oracle`` scores.

    ``directions`` antithetic pairs per image per step (``2 * directions`` probes), finite
    difference step ``sigma`` (pixel units, per-pixel standard deviation of the probe),
    ``eps``/``alpha`` as in :func:`~sandbox.attacks.pgd.pgd`. Directions are drawn from a
    generator seeded by ``seed``: deterministic for a deterministic oracle. Each step is one
    oracle call of ``B x (2 * directions + 1)`` images, or several of at most ``oracle_batch``
    probes per image. Best iterate per image kept; quantised and re-measured as in PGD. The
    oracle query count is exact (see :class:`ZerothOrderResult`). ``threads``: torch threads
    for the run (None: current setting), as in :func:`~sandbox.attacks.pgd.pgd`. Raises
    :class:`InvalidInputError` on bad inputs or an oracle answer of the wrong shape.
    """
    x0 = pixel_batch("images", images)
    b = x0.shape[0]
    eps = positive_float("eps", eps, allow_zero=True)
    alpha = positive_float("alpha", alpha)
    sigma = positive_float("sigma", sigma)
    steps = positive_int("steps", steps, minimum=0)
    directions = positive_int("directions", directions)
    m = 2 * directions + 1
    chunk = m if oracle_batch is None else positive_int("oracle_batch", oracle_batch)
    from tqdm.auto import tqdm

    with torch_threads(threads):
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(int(seed))
        lo, hi = (x0 - eps).clamp(0, 1), (x0 + eps).clamp(0, 1)
        x = x0.clone()
        best, best_s = x.clone(), torch.full((b,), -torch.inf)
        hist = np.zeros(steps + 1, dtype=np.float32)
        queries = 0
        bar = tqdm(total=steps, unit="step", desc="zeroth-order pgd",
                   disable=not (progress and not os.environ.get("HETERAG_NO_PROGRESS")))
        try:
            with torch.no_grad():
                for s in range(steps + 1):
                    if s == steps:
                        score = _ask(similarity_oracle, x.unsqueeze(1), 1)[:, 0]
                        queries += b
                    else:
                        u = torch.randn((b, directions, *x.shape[1:]), generator=gen)
                        probes = torch.cat([x.unsqueeze(1), (x.unsqueeze(1) + sigma * u).clamp(0, 1),
                                            (x.unsqueeze(1) - sigma * u).clamp(0, 1)], dim=1)
                        out = _ask(similarity_oracle, probes, chunk)
                        queries += b * m
                        score = out[:, 0]
                        diff = (out[:, 1:1 + directions] - out[:, 1 + directions:]) / (2 * sigma * directions)
                        grad = (diff.view(b, directions, 1, 1, 1) * u).sum(dim=1)
                    better = score > best_s
                    best[better] = x[better]
                    best_s = torch.where(better, score, best_s)
                    hist[s] = float(score.mean())
                    if s < steps:
                        x = torch.minimum(torch.maximum(x + alpha * grad.sign(), lo), hi)
                        bar.update(1)
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        q = quantise(best, x0, eps)
        with torch.no_grad():
            sq = _ask(similarity_oracle, uint8_to_pixels(q).unsqueeze(1), 1)[:, 0]
        queries += b
        return ZerothOrderResult(
            images_uint8=q,
            adv=best,
            similarity=best_s.numpy().astype(np.float32),
            similarity_quantised=sq.numpy().astype(np.float32),
            history=hist,
            seconds=seconds,
            steps_per_second_per_image=steps * b / seconds if seconds > 0 else float("inf"),
            oracle_queries=queries,
        )
