"""Input checks shared by the attack modules: one-line :class:`InvalidInputError` messages."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from heterag import InvalidInputError


def as_matrix(name: str, x: Any, *, dim: int | None = None, min_rows: int = 1) -> np.ndarray:
    """``x`` as a finite float32 ``(n, D)`` numpy array (from numpy, torch or nested lists)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be a numeric (n, D) array ({exc})") from None
    if arr.ndim != 2:
        raise InvalidInputError(f"{name} must be a 2-d (n, D) array, got shape {arr.shape}")
    if arr.shape[0] < min_rows or arr.shape[1] < 1:
        raise InvalidInputError(f"{name} needs at least {min_rows} row(s) of dimension >= 1, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise InvalidInputError(f"{name} has dimension {arr.shape[1]}, expected {dim}")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{name} contains NaN or infinite values")
    return arr


def unit_rows(name: str, x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit norm; a zero row is an error (it has no direction)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms < 1e-12).any():
        raise InvalidInputError(f"{name} has an all-zero row {int(np.argmax(norms[:, 0] < 1e-12))} (no direction)")
    return (x / norms).astype(np.float32)


def as_vector(name: str, x: Any, *, length: int) -> np.ndarray:
    """``x`` as a finite float32 ``(length,)`` array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.shape != (length,):
        raise InvalidInputError(f"{name} must have shape ({length},), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidInputError(f"{name} contains NaN or infinite values")
    return arr


def positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, int | float | np.floating) and not isinstance(value, bool) and np.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidInputError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def pixel_batch(name: str, images: Any) -> torch.Tensor:
    """``images`` as a float32 ``[B,3,H,W]`` tensor in [0, 1] (a detached copy)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise InvalidInputError(f"{name} must be a [B,3,H,W] float tensor in [0, 1], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] < 1 or images.shape[2] < 1 or images.shape[3] < 1:
        raise InvalidInputError(f"{name} must be a non-empty [B,3,H,W] tensor, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise InvalidInputError(f"{name} must be float pixels in [0, 1], got dtype {images.dtype} (divide by 255)")
    x = images.detach().float().clone()
    if not torch.isfinite(x).all():
        raise InvalidInputError(f"{name} contains NaN or infinite values")
    if x.min() < -1e-6 or x.max() > 1 + 1e-6:
        raise InvalidInputError(f"{name} must lie in [0, 1], got range [{x.min():.3g}, {x.max():.3g}]")
    return x.clamp_(0.0, 1.0)
