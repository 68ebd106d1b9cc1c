"""Encoding layer: text and image encoders, soft-prompt adapters, micro-batching.

Imports only :mod:`heterag.core`. The text encoder (:mod:`~heterag.encoding.text_encoder`) gives
pooled and token-level embeddings and its tokenizer; the image encoders
(:mod:`~heterag.encoding.image_encoders`) map images and texts into one space; adapters
(:mod:`~heterag.encoding.adapters`) insert trained soft prompts into a frozen text encoder;
:mod:`~heterag.encoding.batching` runs query-time model calls on one worker thread and merges concurrent
calls into shared forward passes; :mod:`~heterag.encoding.embedder`
is the small text-embedder protocol the generators use.
"""
