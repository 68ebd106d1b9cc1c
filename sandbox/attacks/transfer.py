"""Transfer attacks: optimise on a surrogate encoder, evaluate on the victim's.

Nothing special is needed: run :func:`~sandbox.attacks.pgd.pgd` (or seeding) with the
*surrogate* encoder and targets computed in the surrogate's space (cluster centres of the
reference pool embedded by the surrogate), then measure the saved 8-bit poisons with the
*victim* encoder against the victim's own targets (the same reference clusters embedded by the
victim): :func:`measure_similarity`. Transfer succeeds to the extent the two spaces agree on
which images are near which.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from heterag import ImageEncoder, InvalidInputError

from ._checks import as_matrix, pixel_batch
from .pgd import uint8_to_pixels


def measure_similarity(encoder: ImageEncoder, images: Any, targets: Any, *, batch_size: int = 64) -> np.ndarray:
    """Cosine (B,) float32 between ``encoder``'s embeddings of ``images`` and ``targets`` (B, D).

    ``images``: (B, H, W, 3) uint8 (e.g. :attr:`PGDResult.images_uint8`) or a [B,3,H,W] float
    tensor in [0, 1]. No gradients. Raises :class:`InvalidInputError` on mismatched shapes.
    """
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        x = uint8_to_pixels(images)
    else:
        x = pixel_batch("images", images)
    t = F.normalize(torch.from_numpy(as_matrix("targets", targets, dim=getattr(encoder, "dim", None))), dim=-1)
    if t.shape[0] != x.shape[0]:
        raise InvalidInputError(f"targets has {t.shape[0]} rows for {x.shape[0]} images")
    with torch.inference_mode():
        sims = torch.cat([(encoder.embed_pixels(x[i:i + batch_size]) * t[i:i + batch_size]).sum(-1)
                          for i in range(0, x.shape[0], batch_size)])
    return sims.float().numpy()
