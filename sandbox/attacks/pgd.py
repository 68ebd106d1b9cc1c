"""White-box L-inf PGD on pixels towards target embeddings (M3Att image optimisation; Madry et al. 2018).

The poison image ``x`` starts from a seed image ``x0`` and is moved, within an L-inf ball of
radius ``eps`` around it, so that its embedding ``E(x)`` (the encoder's exact differentiable
preprocessing and model: :meth:`ImageEncoder.embed_pixels`) points at a target vector ``t``::

    x_0     = x0                                   (or x0 + U(-eps, eps) with random_start)
    x_{s+1} = Proj_{B_inf(x0, eps) ∩ [0,1]} ( x_s + alpha * sign(grad_x f(E(x_s), t)) )
    f       = cos(E(x), t)                         (objective="cosine")

The best iterate per image (highest ``f``) is kept. The result is quantised to 8 bits (what a
saved poison image is) and re-measured. All images of a batch share one forward and one
backward per step (each image's gradient depends only on itself: encoders run in eval mode).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from heterag import ImageEncoder, InvalidInputError

from ._checks import as_matrix, pixel_batch, positive_float, positive_int
from ._threads import torch_threads

#: f(embeddings [B,D] unit rows, targets [B,D] unit rows) -> per-image scores [B] to maximise.
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class PGDResult:
    """Outcome of :func:`pgd` for ``B`` images of ``H x W`` pixels.

    ``images_uint8`` (B, H, W, 3) uint8: the best iterates, rounded to 8 bits (inside the
    eps-ball of the 8-bit seed: ``|q - round(255 x0)| <= floor(255 eps)``).
    ``adv`` [B,3,H,W] float32 tensor in [0, 1]: the best iterates before quantisation.
    ``similarity`` (B,) float32: objective (cosine to target) of ``adv``.
    ``similarity_quantised`` (B,) float32: the same, re-measured on ``images_uint8 / 255``.
    ``history`` (steps + 1,) float32: mean objective over the batch at each iterate ``x_0 .. x_steps``.
    ``seconds``: wall time of the optimisation; ``steps_per_second_per_image`` = ``steps * B / seconds``.
    """

    images_uint8: np.ndarray
    adv: torch.Tensor
    similarity: np.ndarray
    similarity_quantised: np.ndarray
    history: np.ndarray
    seconds: float
    steps_per_second_per_image: float


def require_gradients(encoder: Any) -> None:
    """Raise :class:`InvalidInputError` (one line) unless ``encoder`` gives pixel gradients.

    Checks that it has ``embed_pixels`` and a torch ``model``, and that a probe image's
    embedding requires grad with respect to the pixels. For white-box mode, call it up front.
    """
    name = getattr(encoder, "identity", type(encoder).__name__)
    if not callable(getattr(encoder, "embed_pixels", None)):
        raise InvalidInputError(f"image encoder {name!r} has no embed_pixels: white-box attacks need pixel gradients")
    if not isinstance(getattr(encoder, "model", None), torch.nn.Module):
        raise InvalidInputError(f"image encoder {name!r} has no torch model: white-box attacks need pixel gradients")
    size = int(getattr(encoder, "image_size", 32) or 32)
    probe = torch.full((1, 3, size, size), 0.5, requires_grad=True)
    try:
        with torch.enable_grad():
            out = encoder.embed_pixels(probe)
    except Exception as exc:  # noqa: BLE001 - any failure of the probe means no usable gradients
        raise InvalidInputError(f"image encoder {name!r}: embed_pixels failed on a probe image ({exc})") from None
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise InvalidInputError(f"image encoder {name!r} gives no gradients: its embed_pixels output does not "
                                "require grad (use a black-box attack)")


def _cosine(emb: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (emb * targets).sum(dim=-1)


def _objective(objective: str | Objective) -> Objective:
    if callable(objective):
        return objective
    if objective == "cosine":
        return _cosine
    raise InvalidInputError(f"objective must be 'cosine' or a callable f(embeddings, targets) -> [B], got {objective!r}")


def _targets(targets: Any, n: int, dim: int | None) -> torch.Tensor:
    t = as_matrix("targets", targets, dim=dim)
    if t.shape[0] != n:
        raise InvalidInputError(f"targets has {t.shape[0]} rows for {n} images")
    return F.normalize(torch.from_numpy(t), dim=-1)


def _show(progress: bool) -> bool:
    return bool(progress) and not os.environ.get("HETERAG_NO_PROGRESS")


def quantise(adv: torch.Tensor, x0: torch.Tensor, eps: float) -> np.ndarray:
    """[B,3,H,W] in [0, 1] -> (B, H, W, 3) uint8, kept within ``floor(255 eps)`` of ``round(255 x0)``."""
    q = (adv.detach() * 255.0).round()
    ref = (x0 * 255.0).round()
    e = float(np.floor(eps * 255.0 + 1e-6))
    q = torch.minimum(torch.maximum(q, ref - e), ref + e).clamp(0, 255)
    return q.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()


def uint8_to_pixels(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> [B,3,H,W] float32 in [0, 1]."""
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise InvalidInputError(f"expected (B, H, W, 3) uint8 images, got {arr.shape} {arr.dtype}")
    return torch.from_numpy(arr.copy()).permute(0, 3, 1, 2).float() / 255.0


def pgd(
    encoder: ImageEncoder,
    images: torch.Tensor,
    targets: Any,
    *,
    eps: float = 16 / 255,
    alpha: float = 1 / 255,
    steps: int = 500,
    objective: str | Objective = "cosine",
    random_start: bool = False,
    batch_size: int | None = None,
    progress: bool = True,
    seed: int = 0,
    threads: int | None = None,
) -> PGDResult:
    """L-inf PGD (sign-gradient ascent, Madry et al. 2018) of ``images`` towards ``targets`` (M3Att).

    ``images`` [B,3,H,W] float in [0, 1] (one size per call: group by size, see
    :func:`pgd_by_size`); ``targets`` (B, D) embeddings (normalised here; numpy or torch).
    ``eps`` and ``alpha`` in [0, 1] pixel units (16/255, 1/255: 16 and 1 grey levels).
    ``objective``: ``"cosine"`` or a callable ``f(embeddings [B,D], targets [B,D]) -> [B]`` to
    maximise (e.g. a per-image soft coverage); the similarities reported are this objective.
    ``batch_size``: images per forward/backward (None: all ``B`` at once). ``random_start``
    draws the start uniformly in the eps-ball (seeded by ``seed``). The update rule is in the
    module docstring; gradients only flow to the pixels (``torch.autograd.grad``), the
    encoder's parameters are left frozen. ``progress`` shows a tqdm bar (off with
    ``HETERAG_NO_PROGRESS``). ``threads``: torch threads for this run, restored after (None:
    the current setting; on 2 cores shared with another busy process, 1 thread ran 2.4x faster
    than 2 at B=34). Raises :class:`InvalidInputError` on bad inputs or an encoder without
    gradients (:func:`require_gradients`).
    """
    require_gradients(encoder)
    x0 = pixel_batch("images", images)
    b = x0.shape[0]
    t = _targets(targets, b, getattr(encoder, "dim", None))
    eps = positive_float("eps", eps, allow_zero=True)
    alpha = positive_float("alpha", alpha)
    steps = positive_int("steps", steps, minimum=0)
    chunk = b if batch_size is None else positive_int("batch_size", batch_size)
    f = _objective(objective)
    from tqdm.auto import tqdm

    with torch_threads(threads):
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(int(seed))
        lo, hi = (x0 - eps).clamp(0, 1), (x0 + eps).clamp(0, 1)
        x = x0.clone()
        if random_start:
            x = torch.minimum(torch.maximum(x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps, lo), hi)
        best, best_s = x.clone(), torch.full((b,), -torch.inf)
        hist = torch.zeros(steps + 1, dtype=torch.float64)
        bar = tqdm(total=steps * b, unit="img-step", desc="pgd", disable=not _show(progress))
        try:
            for lo_i in range(0, b, chunk):
                sl = slice(lo_i, min(lo_i + chunk, b))
                xc, tc = x[sl].clone(), t[sl]
                for s in range(steps + 1):
                    last = s == steps
                    with torch.set_grad_enabled(not last):
                        xc.requires_grad_(not last)
                        score = f(encoder.embed_pixels(xc), tc)
                        grad = None if last else torch.autograd.grad(score.sum(), xc)[0]
                    with torch.no_grad():
                        score = score.detach().float()
                        xc = xc.detach()
                        better = score > best_s[sl]
                        best[sl][better] = xc[better]
                        best_s[sl] = torch.where(better, score, best_s[sl])
                        hist[s] += score.double().sum()
                        if grad is not None:
                            xc = torch.minimum(torch.maximum(xc + alpha * grad.sign(), lo[sl]), hi[sl])
                            bar.update(sl.stop - sl.start)
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        q = quantise(best, x0, eps)
        with torch.no_grad():
            sq = torch.cat([f(encoder.embed_pixels(uint8_to_pixels(q[i:i + chunk])), t[i:i + chunk]).float()
                            for i in range(0, b, chunk)])
        return PGDResult(
            images_uint8=q,
            adv=best,
            similarity=best_s.numpy().astype(np.float32),
            similarity_quantised=sq.numpy().astype(np.float32),
            history=(hist / b).numpy().astype(np.float32),
            seconds=seconds,
            steps_per_second_per_image=steps * b / seconds if seconds > 0 else float("inf"),
        )


def group_by_size(images: Sequence[torch.Tensor]) -> dict[tuple[int, int], list[int]]:
    """Indices of ``images`` ([3,H,W] tensors) grouped by ``(H, W)``, in first-seen order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        if not isinstance(img, torch.Tensor) or img.ndim != 3 or img.shape[0] != 3:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise InvalidInputError(f"image {i} must be a [3,H,W] tensor, got {shape}")
        groups.setdefault((int(img.shape[1]), int(img.shape[2])), []).append(i)
    return groups


def pgd_by_size(
    encoder: ImageEncoder, images: Sequence[torch.Tensor], targets: Any, **kwargs: Any
) -> list[tuple[list[int], PGDResult]]:
    """:func:`pgd` on images of mixed sizes, each at its native size: one batched run per size.

    ``images``: [3,H,W] tensors in [0, 1]; ``targets`` (len(images), D). Returns
    ``[(indices, result)]``, one per size group; ``result`` row ``j`` is ``images[indices[j]]``.
    No resizing: each poison is saved at the size it was optimised at.
    """
    groups = group_by_size(images)
    t = as_matrix("targets", targets)
    if t.shape[0] != len(images):
        raise InvalidInputError(f"targets has {t.shape[0]} rows for {len(images)} images")
    return [(idx, pgd(encoder, torch.stack([images[i] for i in idx]), t[idx], **kwargs)) for idx in groups.values()]
