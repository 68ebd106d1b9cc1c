"""The text-embedder protocol shared by encoders and generators."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-norm vectors and counts tokens with its own tokenizer."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` as a float32 array of shape ``(len(texts), dim)`` with L2-normalised rows."""
        ...

    def count_tokens(self, text: str) -> int:
        """Number of tokens ``text`` has under this embedder's tokenizer (no special tokens)."""
        ...
