"""The live view of a poisoning run in the chat (a :class:`heterag.ui.plugins.ChatOverlay`).

* **Banner**: while a sandbox run has injected items into the collection the chat asks (an open
  journal with documents, its run lock held), the chat shows which run and how many items; once the
  run has ended, the fingerprint check of the last run on that collection (for ten minutes).
* **Flags**: a source whose record carries the ``sandbox_run`` tag (every injected record does, see
  :mod:`sandbox.injection`) is flagged with its run id, so it also works for runs of another process. A run's
  steps inject under sub-run ids (``<run id>-hubness``, ``<run id>-n1``...); the banner and the flags name the
  run id the Sandbox tab shows (:func:`run_of`).
* **Chat defenses** (per browser tab: :class:`heterag.ui.plugins.SessionDefenses` applies each to the questions
  of the session that switched it on): any defense of :data:`sandbox.defenses.DEFENSES` that can judge stored items,
  fitted on the collection's own items (clean probes, :func:`~sandbox.defenses.probes_from_kb`) when
  switched on. Retrieval-stage defenses are the hit filters themselves; an ingest guard becomes a hit
  filter (:class:`GuardFilter`) that asks the guard about each retrieved document as stored.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from heterag import Chunk, Document, Hit, IngestItem, InvalidInputError, Pipeline, RetrievalQuery, Section

from ..injection import SANDBOX_TAG, RunLock, list_journals
from .runs import RunManager

log = logging.getLogger(__name__)

#: Defenses the chat can switch on (purify_ingest only replaces images: nothing to judge in a stored item).
CHAT_DEFENSES = ("hubness", "knn_density", "consistency", "score_threshold", "purify")
#: Clean probes a chat defense is fitted on.
PROBES = 100
#: Seconds the fingerprint check of an ended run stays in the banner.
SHOW_ENDED = 600.0
#: A run id (:func:`sandbox.injection.new_run_id`) and the sub-run suffix of one of its steps.
_SUB_RUN = re.compile(r"^(\d{8}-\d{6}-[0-9a-f]{8})-.+$")


def run_of(run_id: str) -> str:
    """The run id the Sandbox tab shows for ``run_id``: ``<run id>`` for a step's sub-run ``<run id>-hubness``."""
    m = _SUB_RUN.match(str(run_id))
    return m.group(1) if m else str(run_id)


def stored_item(pipeline: Pipeline, doc_id: str) -> IngestItem:
    """Document ``doc_id`` as an ingest guard would have seen it, rebuilt from the stores: its chunks with
    their view vectors ``(chunks, dim)`` and its image vector ``(image_dim,)`` (None without an image)."""
    recs = sorted(pipeline.store.get(where={"doc_id": doc_id}, include_vectors=True),
                  key=lambda r: int(r.metadata.get("chunk_index", 0)))
    chunks = tuple(Chunk(id=r.id, doc_id=doc_id, index=i, text=r.text, title=str(r.metadata.get("title", "")), heading=(),
                         section_index=0, start=0, end=len(r.text), token_start=0, token_end=0) for i, r in enumerate(recs))
    dim = int(getattr(pipeline.encoder, "dim", 0))
    vectors = (np.stack([np.asarray(r.vector, dtype=np.float32) for r in recs]) if recs
               else np.zeros((0, dim), dtype=np.float32))
    image_vector = None
    if pipeline.image_store is not None:
        img = pipeline.image_store.get(where={"doc_id": doc_id}, include_vectors=True)
        if img:
            image_vector = np.asarray(img[0].vector, dtype=np.float32)
    text = " ".join(c.text for c in chunks)
    doc = Document(id=doc_id, title=chunks[0].title if chunks else "", sections=(Section(text),) if text else ())
    return IngestItem(doc, chunks, vectors, image_vector)


class GuardFilter:
    """A fitted ingest guard used as a hit filter: a hit is dropped when the guard would refuse its
    document (as stored) at ingest. Verdicts are cached per document."""

    overfetch = 2

    def __init__(self, guard: Any):
        self.guard = guard
        self.name = f"{guard.name} (guard)"
        self._verdicts: dict[str, Any] = {}
        self._lock = threading.Lock()

    def filter(self, query: RetrievalQuery, hits: Sequence[Hit], pipeline: Any) -> list[Hit]:
        out = []
        for h in hits:
            with self._lock:
                verdict = self._verdicts.get(h.doc_id)
            if verdict is None:
                verdict = self.guard.check(stored_item(pipeline, h.doc_id), pipeline)
                with self._lock:
                    self._verdicts[h.doc_id] = verdict
            out.append(h if verdict.accept else h.drop(f"{self.guard.name}: {verdict.reason}"))
        return out


class LiveOverlay:
    """The Sandbox tab's chat overlay (see the module docs). ``pipeline_of(name)``: the app's open pipeline."""

    def __init__(self, manager: RunManager, pipeline_of: Callable[[str], Pipeline]):
        self.manager = manager
        self.pipeline_of = pipeline_of

    def __repr__(self) -> str:
        return "sandbox live view"

    def banner(self, collection: str) -> str | None:
        injecting = [j for j in list_journals(collection) if j.doc_ids and j.status == "open"]
        if injecting and RunLock(collection).busy():
            j = injecting[-1]
            return (f"⚠ Sandbox run {run_of(j.run_id)} is injecting {len(j.doc_ids)} poisoned item(s) into collection "
                    f"{collection!r} now: sources flagged in red are injected items. They are removed when the run ends.")
        ended = self.manager.finished(collection, within=SHOW_ENDED)
        if ended is not None and ended.fingerprint_line():
            return f"Sandbox run {ended.run_id} on {collection!r} has ended ({ended.state}): {ended.fingerprint_line()}."
        return None

    def marks(self, collection: str, hits: Sequence[Hit]) -> Mapping[str, str]:
        return {h.doc_id: f"injected by sandbox run {run_of(h.metadata[SANDBOX_TAG])}" for h in hits
                if h.metadata.get(SANDBOX_TAG)}

    def defenses(self) -> Sequence[str]:
        return CHAT_DEFENSES

    def defense_filters(self, collection: str, name: str) -> Sequence[Any]:
        from ..defenses import DefenseContext, make_defense, probes_from_kb

        if name not in CHAT_DEFENSES:
            raise InvalidInputError(f"unknown chat defense {name!r}; choose one of: {', '.join(CHAT_DEFENSES)}")
        pipe = self.pipeline_of(collection)
        if pipe.image_store is None or pipe.image_store.count() < 2:
            raise InvalidInputError(f"defense {name}: collection {collection!r} has too few image items to calibrate on")
        t = time.perf_counter()
        defense = make_defense(name)
        probes = [p for p in probes_from_kb(pipe, PROBES, seed=0, text=False)]
        defense.fit(DefenseContext(pipe, probes))
        log.warning("chat defense %s fitted on %r in %.1f s", name, collection, time.perf_counter() - t)
        plug = defense.plug()
        return [plug] if defense.stage == "retrieval" else [GuardFilter(plug)]


__all__ = ["CHAT_DEFENSES", "GuardFilter", "LiveOverlay", "run_of", "stored_item"]
