"""Trainers: the offline default image encoder (:mod:`~heterag.training.image_encoder`) and soft-prompt
adapters for the text encoder (:mod:`~heterag.training.prompts`).

They train on data sets read through :mod:`corpora` (synthetic scenes, image layouts, BEIR,
PubMedQA), so they sit above it and below the apps (the command line runs them); the library never
imports them.
"""
