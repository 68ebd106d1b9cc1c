"""Pipeline layer: one index (text store, image store, encoders, view) with its indexer, retriever
and generator (:mod:`~heterag.pipeline.pipeline`), and the content fingerprint of everything it
holds (:mod:`~heterag.pipeline.content`). Imports every layer below it; nothing below imports it.
"""
