"""Defenses against multimodal knowledge poisoning (M3Att), as heterag ingest guards and hit filters.

Each defense is fitted on clean data only (:class:`DefenseContext`: the knowledge base before any
injection, clean probe queries, a target false-rejection rate) and plugs into a pipeline::

    d = make_defense("hubness")
    report = d.fit(DefenseContext(pipeline, probes_from_kb(pipeline)))
    with pipeline.defended(guards=[d.plug()]):          # hit filters: hit_filters=[...]
        pipeline.ingest(items)

========================  =========  ==========================================================
name                      stage      statistic
========================  =========  ==========================================================
``consistency``           ingest     cosine(image, image encoder's text side of its text), reject below
``knn_density``           ingest     mean cosine to the n nearest KB images, reject above (or below)
``hubness``               ingest     k-occurrence over clean probes, reject above
``score_threshold``       retrieval  a hit's image similarity (or score z-score), drop above
``purify``                retrieval  re-score candidates on JPEG + blur purified images
``purify_ingest``         ingest     replace incoming images by purified copies
========================  =========  ==========================================================
"""

from __future__ import annotations

import inspect
from typing import Any

from heterag import InvalidInputError, UnknownNameError

from .anomaly import HubnessGuard, KnnDensityGuard
from .base import (
    Defense,
    DefenseContext,
    FitReport,
    KBImages,
    Probe,
    fit_threshold,
    kb_images,
    kb_texts,
    probe_candidates,
    probes_from_kb,
)
from .consistency import ConsistencyGuard
from .purification import PurifyFilter, PurifyGuard, purify_image
from .threshold import ScoreThresholdFilter

DEFENSES: dict[str, type] = {
    "consistency": ConsistencyGuard,
    "knn_density": KnnDensityGuard,
    "hubness": HubnessGuard,
    "score_threshold": ScoreThresholdFilter,
    "purify": PurifyFilter,
    "purify_ingest": PurifyGuard,
}


def make_defense(name: str, **params: Any) -> Defense:
    """A new (unfitted) defense by registry name with its parameters; unknown names list the choices,
    unknown or bad parameters raise :class:`InvalidInputError` naming the parameter."""
    cls = DEFENSES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise UnknownNameError("defense", str(name), DEFENSES)
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    for key in params:
        if key not in accepted:
            raise InvalidInputError(f"defense {name!r} has no parameter {key!r}; parameters: {', '.join(accepted) or 'none'}")
    return cls(**params)


__all__ = [
    "DEFENSES", "ConsistencyGuard", "Defense", "DefenseContext", "FitReport", "HubnessGuard", "KBImages",
    "KnnDensityGuard", "Probe", "PurifyFilter", "PurifyGuard", "ScoreThresholdFilter", "fit_threshold", "kb_images",
    "kb_texts", "make_defense", "probe_candidates", "probes_from_kb", "purify_image",
]
