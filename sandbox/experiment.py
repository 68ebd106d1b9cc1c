"""What both kinds of sandbox run share (:mod:`sandbox.runner`, :mod:`sandbox.membership`): the timed
stages, the progress-bar switch, the run events a listener can follow (the app's worker process), the
package versions of the report, and the experiment collection."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator
from typing import Any

from heterag import InvalidInputError, Pipeline, collection_info, open_collection

from .data import ScenarioData
from .injection import check_live
from .scenario import Scenario

log = logging.getLogger(__name__)


def show_progress() -> bool:
    """Whether to show progress bars (not when ``HETERAG_NO_PROGRESS`` is set)."""
    return not os.environ.get("HETERAG_NO_PROGRESS")


#: Callables ``listener(event, data)`` told about a run as it goes (see :func:`notify`); process-wide.
listeners: list[Callable[[str, dict[str, Any]], None]] = []


def notify(event: str, **data: Any) -> None:
    """Tell every listener about ``event``: ``stage`` (``name``, ``phase`` ``begin``/``end``, ``seconds`` at the
    end) from :class:`Stages`, and ``fingerprint`` (``collection``, ``before``: the content fingerprint's
    digest) once a run holds its collection and before it writes anything. A failing listener is logged."""
    for listener in list(listeners):
        try:
            listener(event, data)
        except Exception:  # progress reporting must never stop a run
            log.debug("run listener %r failed on %s", listener, event, exc_info=True)


class Stages:
    """The seconds spent in each named stage (``with stages("index"): ...``), logged and announced to the
    :data:`listeners` as each begins and ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        log.info("stage %s", name)
        notify("stage", name=name, phase="begin")
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
            notify("stage", name=name, phase="end", seconds=time.perf_counter() - t)


def package_versions() -> dict[str, str]:
    """Python's version and those of the installed packages a run's numbers depend on (for the report)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("heterag", "torch", "numpy", "scikit-learn", "scipy", "chromadb", "faiss-cpu", "open_clip_torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def retrieval_settings(pipe: Pipeline) -> dict[str, str]:
    """What the report says of how queries were searched: ``retrieval`` (``dense``, ``keyword`` or ``hybrid``, as
    run) and, for hybrid, its ``hybrid`` fusion."""
    mode = pipe.retrieval_mode()
    return {"retrieval": mode, **({"hybrid": pipe.hybrid.describe()} if mode == "hybrid" else {})}


def collection_name_for(scn: Scenario, data: ScenarioData) -> str:
    """Experiment collection name: a hash of the knowledge base and the RAG settings (so reruns reuse it)."""
    h = hashlib.sha256()
    h.update(json.dumps(scn.rag.model_dump(exclude={"generator", "top_k", "fusion", "retrieval", "hybrid", "collection",
                                                    "allow_live"}),
                        sort_keys=True).encode())
    for it in data.knowledge_base:
        h.update(it.id.encode())
        h.update(it.image.sha256.encode())
    return f"sandbox-{scn.name[:30]}-{h.hexdigest()[:12]}".replace("_", "-")


def open_index(scn: Scenario, data: ScenarioData, *, allow_live: bool = False) -> tuple[Pipeline, str]:
    """The pipeline and name of the collection a run asks: ``rag.collection`` (live: needs ``allow_live``),
    else the experiment collection of ``data``'s knowledge base, built (or reused) under
    :func:`collection_name_for`."""
    rag = scn.rag
    if rag.collection:
        check_live(rag.collection, rag.allow_live or allow_live)
        pipe = open_collection(rag.collection, create=False, fusion=rag.fusion, retrieval=rag.retrieval, hybrid=rag.hybrid)
        try:
            pipe.retrieval_mode()  # keyword/hybrid on a collection without a keyword index: one line, before any work
        except BaseException:
            pipe.close()
            raise
        return pipe, rag.collection
    name = collection_name_for(scn, data)
    pipe = open_collection(name, store=rag.store, encoder=rag.text_encoder, view=rag.view, image_encoder=rag.image_encoder,
                           fusion=rag.fusion, purpose="experiment", retrieval=rag.retrieval, hybrid=rag.hybrid)
    try:
        pipe.retrieval_mode()  # an experiment collection made before keyword indexes, asked for keyword/hybrid
        if collection_info(name).purpose != "experiment":
            raise InvalidInputError(f"collection {name!r} exists and is not an experiment collection")
        report = pipe.ingest([it.to_document() for it in data.knowledge_base], progress=show_progress(),
                             total=len(data.knowledge_base))
        if report.failures:
            raise InvalidInputError(f"knowledge base ingest failed for {len(report.failures)} item(s): {report.failures[0]}")
    except BaseException:
        pipe.close()
        raise
    return pipe, name


def retrieval_words(r: dict[str, Any]) -> str:
    """How a run searched text queries (``report.json``'s ``retrieval`` and ``hybrid``), as report.md says it."""
    mode = r.get("retrieval", "dense")
    return f"`{mode}` (fusion `{r['hybrid']}`)" if mode == "hybrid" and r.get("hybrid") else f"`{mode}`"
