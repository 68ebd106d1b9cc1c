"""The generator protocol: question + retrieved generation chunks -> cited answer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from heterag.core.images import ImageRef
from heterag.core.results import Answer, Hit

#: Called with each piece of answer text as it is produced (streaming).
StreamCallback = Callable[[str], None]


@runtime_checkable
class Generator(Protocol):
    name: str

    def generate(
        self, question: str, hits: Sequence[Hit], *, on_token: StreamCallback | None = None, image: ImageRef | None = None
    ) -> Answer:
        """Answer ``question`` about the optional query ``image`` from ``hits`` (best first), citing them
        as [1], [2], ... in hit order. ``question`` may be empty when an image is given (then: what do
        the sources say about this image?). Hits of image items carry ``Hit.image`` (a file path)."""
