"""Evaluation layer: retrieval benchmarks over the library's own pipeline.

Document ranking and BEIR-style scoring (:mod:`~heterag.evaluation.retrieval`), ranking metrics
(:mod:`~heterag.evaluation.metrics`) and image retrieval benchmarks
(:mod:`~heterag.evaluation.images`). Data sets come in as documents and queries: this layer never
reads a corpus format itself.
"""
