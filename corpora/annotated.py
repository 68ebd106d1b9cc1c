"""Annotated images: the common shape every image corpus loader produces.

An :class:`AnnotatedImage` is one knowledge item of an image layout (a COCO photo, a
VQA-RAD radiograph, a MedMNIST tile, a synthetic scene): the validated image, its text
(caption, report or label text), optional object annotations (label, box, mask) and
question–answer pairs. :meth:`AnnotatedImage.to_document` turns it into the
:class:`~heterag.core.documents.Document` the pipeline ingests; benchmarks and the sandbox
keep the annotations (object masks for MrM, gold answers for VQA).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from heterag.core.documents import Document, MetadataValue
from heterag.core.images import ImageRef


@dataclass(frozen=True)
class ObjectAnnotation:
    """One annotated object: its label, bounding box ``(x0, y0, x1, y1)`` in pixels (x1/y1 exclusive)
    and, where the layout has one, a boolean mask of the image's shape ``(height, width)``."""

    label: str
    box: tuple[int, int, int, int]
    mask: np.ndarray | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)

    def area_fraction(self, width: int, height: int) -> float:
        """Share of the image the object covers: its mask's pixels if known, else its box."""
        if self.mask is not None:
            return float(np.count_nonzero(self.mask)) / float(width * height)
        x0, y0, x1, y1 = self.box
        return max(0, x1 - x0) * max(0, y1 - y0) / float(width * height)


@dataclass(frozen=True)
class QAPair:
    """A question about an image with its gold answer; ``kind`` is e.g. colour/count/presence/position
    (synthetic scenes) or CLOSED/OPEN (VQA-RAD)."""

    question: str
    answer: str
    kind: str = ""
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)


@dataclass(frozen=True)
class AnnotatedImage:
    """One image item of a corpus with its text and annotations.

    ``id`` is stable across loads (a file path relative to the layout root, a COCO image id,
    ``"<split>-<index>"``...), so re-ingesting replaces rather than duplicates.
    """

    id: str
    image: ImageRef
    text: str = ""
    title: str = ""
    objects: tuple[ObjectAnnotation, ...] = ()
    qa: tuple[QAPair, ...] = ()
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)

    def to_document(self, **extra_metadata: Any) -> Document:
        """The document the pipeline ingests: this item's text (may be empty) and image."""
        meta = {**self.metadata, **extra_metadata}
        return Document.create(
            self.text if self.text.strip() else None, image=self.image, title=self.title, id=self.id,
            metadata=meta, source=self.image.source or self.id,
        )
