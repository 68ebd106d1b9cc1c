"""The ``beir`` layout: a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/``) ingested as its corpus.

The benchmark loader itself (queries, qrels) is :mod:`corpora.beir`; this reader only streams the
corpus (:func:`~corpora.beir.iter_beir_corpus`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from heterag.core.documents import DEFAULT_MAX_DOCUMENT_BYTES

from ..base import LoadItem
from ..beir import is_beir_dir, iter_beir_corpus


class BeirLayout:
    """:class:`~corpora.layouts.LayoutReader` for a BEIR folder: one document per ``corpus.jsonl`` record."""

    name = "beir"
    title = "BEIR"
    description = "a BEIR folder with corpus.jsonl"
    images = False
    splits = False

    def detect(self, path: Path) -> bool:
        """True for a folder with a ``corpus.jsonl`` file (checked before every image layout)."""
        return is_beir_dir(path)

    def read(self, path: Path, *, max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES, **options: Any) -> Iterator[LoadItem]:
        return iter_beir_corpus(path, max_document_bytes)


READER = BeirLayout()
