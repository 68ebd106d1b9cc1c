"""The built-in demo collections, indexed on first use: Python's reference topics (text) and
synthetic scenes (image–text pairs, for image questions)."""

from __future__ import annotations

import logging
from typing import Any

from heterag.collections import open_collection
from heterag.pipeline import Pipeline

from .pydoc_topics import load_pydoc_topics

log = logging.getLogger(__name__)

DEMO_COLLECTION = "demo"
SCENES_DEMO_COLLECTION = "demo-scenes"
SCENES_DEMO_SIZE = 300


def open_demo(name: str = DEMO_COLLECTION, **options: Any) -> Pipeline:
    """Open the demo collection, indexing the CPython reference topics if it is empty."""
    pipe = open_collection(name, **options)
    if pipe.count() == 0:
        docs = load_pydoc_topics()
        log.warning("first use: indexing %d Python reference topics into collection %r (once)", len(docs), name)
        pipe.ingest(docs, total=len(docs), progress=True)
    return pipe


def open_scenes_demo(name: str = SCENES_DEMO_COLLECTION, **options: Any) -> Pipeline:
    """Open the image demo collection: 300 synthetic scenes (seed 0) with their captions, indexed once."""
    from .synthetic_scenes import iter_synthetic_documents

    pipe = open_collection(name, **options)
    if pipe.count() < SCENES_DEMO_SIZE:
        log.warning("first use: indexing %d synthetic scenes into collection %r (once)", SCENES_DEMO_SIZE, name)
        pipe.ingest(iter_synthetic_documents(SCENES_DEMO_SIZE, seed=0), total=SCENES_DEMO_SIZE, progress=True)
    return pipe
