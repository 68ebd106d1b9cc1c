"""The built-in demo collection: Python's reference topics, indexed on first use."""

from __future__ import annotations

import logging
from typing import Any

from heterag.collections import open_collection
from heterag.pipeline import Pipeline

from .pydoc_topics import load_pydoc_topics

log = logging.getLogger(__name__)

DEMO_COLLECTION = "demo"


def open_demo(name: str = DEMO_COLLECTION, **options: Any) -> Pipeline:
    """Open the demo collection, indexing the CPython reference topics if it is empty."""
    pipe = open_collection(name, **options)
    if pipe.count() == 0:
        docs = load_pydoc_topics()
        log.warning("first use: indexing %d Python reference topics into collection %r (once)", len(docs), name)
        pipe.ingest(docs, total=len(docs), progress=True)
    return pipe
