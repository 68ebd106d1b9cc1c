"""The built-in demo collections, indexed on first use: Python's reference topics (text) and
synthetic scenes (image–text pairs, for image questions)."""

from __future__ import annotations

import logging
from typing import Any

from heterag.collections.collection import collection_info, open_collection
from heterag.core.errors import CollectionNotFoundError
from heterag.pipeline.pipeline import IngestReport, Pipeline

from .pydoc_topics import load_pydoc_topics

log = logging.getLogger(__name__)

DEMO_COLLECTION = "demo"
SCENES_DEMO_COLLECTION = "demo-scenes"
SCENES_DEMO_SIZE = 300


#: File in a demo collection's folder written once its whole corpus is in (a build that was
#: interrupted has none, and the next use finishes it: ingest skips what is already stored).
COMPLETE_MARKER = "demo-complete"


def demo_complete(name: str) -> bool:
    """Whether demo collection ``name`` exists and was indexed to the end."""
    try:
        return (collection_info(name).path / COMPLETE_MARKER).is_file()
    except CollectionNotFoundError:
        return False


def mark_demo_complete(name: str, report: IngestReport) -> None:
    """Record that demo collection ``name`` holds its whole corpus (only when nothing failed)."""
    if not report.failures:
        (collection_info(name).path / COMPLETE_MARKER).write_text(report.summary() + "\n", encoding="utf-8")


def open_demo(name: str = DEMO_COLLECTION, **options: Any) -> Pipeline:
    """Open the demo collection, indexing the CPython reference topics unless that was done to the end."""
    pipe = open_collection(name, **options)
    if not demo_complete(name):
        docs = load_pydoc_topics()
        log.warning("first use: indexing %d Python reference topics into collection %r (once)", len(docs), name)
        mark_demo_complete(name, pipe.ingest(docs, total=len(docs), progress=True))
    return pipe


def open_scenes_demo(name: str = SCENES_DEMO_COLLECTION, **options: Any) -> Pipeline:
    """Open the image demo collection: 300 synthetic scenes (seed 0) with their captions, indexed once."""
    from .synthetic_scenes import iter_synthetic_documents

    pipe = open_collection(name, **options)
    if not demo_complete(name):
        log.warning("first use: indexing %d synthetic scenes into collection %r (once)", SCENES_DEMO_SIZE, name)
        report = pipe.ingest(iter_synthetic_documents(SCENES_DEMO_SIZE, seed=0), total=SCENES_DEMO_SIZE, progress=True)
        mark_demo_complete(name, report)
    return pipe
