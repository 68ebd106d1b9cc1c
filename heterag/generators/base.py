"""The generator protocol: question + retrieved generation chunks -> cited answer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from ..results import Answer, Hit

#: Called with each piece of answer text as it is produced (streaming).
StreamCallback = Callable[[str], None]


@runtime_checkable
class Generator(Protocol):
    name: str

    def generate(self, question: str, hits: Sequence[Hit], *, on_token: StreamCallback | None = None) -> Answer:
        """Answer ``question`` from ``hits`` (best first), citing them as [1], [2], ... in hit order."""
