"""Reversible injection into a live collection: journal first, tag everything, remove, verify.

:class:`ReversibleInjection` is the only way the sandbox writes into an index:

1. On entry it takes the collection's *sandbox run lock* (a second run on the same collection is
   refused, naming the running one; the OS releases the lock if the process dies), snapshots the
   collection's :func:`~heterag.content_fingerprint`, and writes a journal
   (``$HETERAG_HOME/sandbox/runs/<run id>.json``: run id, collection, pid, and the ids of the
   documents about to be written) to disk *before* the first write.
2. :meth:`ReversibleInjection.inject` tags every document with ``sandbox_run=<run id>`` in its
   metadata (so leftovers are found by filter even without a journal), appends their ids to the
   journal (saved atomically), then ingests them through the pipeline (and its guards).
3. On exit (normal, exception, Ctrl-C, SIGTERM) it deletes every journalled and every tagged
   document, takes the fingerprint again and compares. Records another process added or removed
   in the meantime are *explained* (:attr:`InjectionOutcome.explained`), not called dirty; only
   a record of this run left behind, or a record present before that this run removed, makes
   the outcome dirty.

A run killed with ``kill -9`` leaves its journal and tagged documents; :func:`clean` (``heterag
sandbox clean --collection NAME``) finds them by journal and by tag and removes them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock
from filelock import Timeout as _LockTimeout

from heterag import (
    ContentFingerprint,
    Document,
    HeteragError,
    IngestReport,
    InvalidInputError,
    Pipeline,
    collection_info,
    content_fingerprint,
    heterag_home,
)

log = logging.getLogger(__name__)

#: Metadata key every injected document carries, with the run id as value.
SANDBOX_TAG = "sandbox_run"


class SandboxBusyError(HeteragError):
    """Another sandbox run is active on the same collection."""


class LiveCollectionError(HeteragError):
    """Injecting into a collection that was not made for experiments, without ``allow_live``."""


def sandbox_dir() -> Path:
    return heterag_home() / "sandbox"


def runs_dir() -> Path:
    return sandbox_dir() / "runs"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8]


@dataclass
class Journal:
    """What a run is about to write (and has written) into which collection."""

    run_id: str
    collection: str
    pid: int
    started: float
    doc_ids: list[str] = field(default_factory=list)
    #: SHA-256 of the injected images: a run killed between writing an image file and its records leaves a
    #: file no record names, which the clean-up removes by these.
    image_shas: list[str] = field(default_factory=list)
    status: str = "open"  # open -> removed

    @property
    def path(self) -> Path:
        return runs_dir() / f"{self.run_id}.json"

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(self), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path) -> Journal:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(run_id=str(data["run_id"]), collection=str(data["collection"]), pid=int(data["pid"]),
                   started=float(data["started"]), doc_ids=[str(d) for d in data.get("doc_ids", [])],
                   image_shas=[str(s) for s in data.get("image_shas", [])], status=str(data.get("status", "open")))


def list_journals(collection: str | None = None) -> list[Journal]:
    """Journals of runs that have not been cleaned up (oldest first), optionally of one collection."""
    out = []
    folder = runs_dir()
    if not folder.is_dir():
        return []
    for p in sorted(folder.glob("*.json")):
        try:
            j = Journal.load(p)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring unreadable sandbox journal %s: %s", p, exc)
            continue
        if collection is None or j.collection == collection:
            out.append(j)
    return sorted(out, key=lambda j: j.started)


class RunLock:
    """Exclusive, non-blocking lock: one sandbox run per collection at a time."""

    def __init__(self, collection: str):
        folder = sandbox_dir() / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        self.collection = collection
        self.path = folder / f"{collection}.lock"
        self.info = folder / f"{collection}.holder.json"
        self._lock = FileLock(str(self.path), thread_local=False)

    def holder(self) -> str:
        try:
            data = json.loads(self.info.read_text())
            return f"run {data['run_id']} (pid {data['pid']}, since {time.strftime('%H:%M:%S', time.localtime(data['since']))})"
        except (OSError, ValueError, KeyError):
            return "another run"

    def busy_error(self) -> SandboxBusyError:
        """The refusal of a second run on this collection, naming the run that holds it."""
        return SandboxBusyError(f"collection {self.collection!r} is in use by sandbox {self.holder()}; "
                                "wait for it to finish (or stop it)")

    def acquire(self, run_id: str) -> None:
        try:
            self._lock.acquire(timeout=0)
        except _LockTimeout:
            raise self.busy_error() from None
        tmp = self.info.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"run_id": run_id, "pid": os.getpid(), "since": time.time()}))
        os.replace(tmp, self.info)

    def busy(self) -> bool:
        """Whether a live process holds the lock (read from the holder file; never takes the lock)."""
        try:
            pid = int(json.loads(self.info.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return False
        if pid == os.getpid():
            return self._lock.is_locked
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def release(self) -> None:
        if self._lock.is_locked:
            self.info.unlink(missing_ok=True)
            self._lock.release(force=True)


def active_runs() -> list[tuple[str, str]]:
    """(collection, holder description) of every sandbox run holding a collection now."""
    folder = sandbox_dir() / "locks"
    out = []
    for info in sorted(folder.glob("*.holder.json")) if folder.is_dir() else []:
        lock = RunLock(info.name.removesuffix(".holder.json"))
        if lock.busy():
            out.append((lock.collection, lock.holder()))
    return out


def check_live(collection: str, allow_live: bool) -> None:
    """Refuse injecting into a collection not made for experiments unless ``allow_live``."""
    info = collection_info(collection)
    if info.purpose != "experiment" and not allow_live:
        raise LiveCollectionError(
            f"collection {collection!r} was not created for experiments; injecting into it needs "
            "allow_live: true in the scenario (--allow-live on the command line)")


@dataclass(frozen=True)
class InjectionOutcome:
    run_id: str
    fingerprint_before: str
    fingerprint_after: str
    documents_injected: int
    documents_removed: int
    #: Differences another writer explains (records not of this run, added or removed meanwhile).
    explained: str = ""
    clean: bool = True

    @property
    def identical(self) -> bool:
        return self.fingerprint_before == self.fingerprint_after


class ReversibleInjection:
    """Context manager: inject tagged documents into ``pipeline``'s collection and take them out again.

    Raises :class:`SandboxBusyError` on entry if another run holds the collection, and
    :class:`LiveCollectionError` if the collection is not an experiment collection and
    ``allow_live`` is false. After exit, :attr:`outcome` says whether the index is as it was.
    """

    def __init__(self, pipeline: Pipeline, collection: str, *, run_id: str | None = None, allow_live: bool = False,
                 run_lock: RunLock | None = None):
        self.pipeline = pipeline
        self.collection = collection
        self.run_id = run_id or new_run_id()
        self.allow_live = allow_live
        self.journal = Journal(self.run_id, collection, os.getpid(), time.time())
        self.outcome: InjectionOutcome | None = None
        self._before: ContentFingerprint | None = None
        self._own_lock = run_lock is None  # a runner holding the lock for its whole run passes it in
        self._lock = run_lock or RunLock(collection)
        self._old_handlers: dict[int, Any] = {}

    # -- entry / exit ---------------------------------------------------------------------
    def __enter__(self) -> ReversibleInjection:
        check_live(self.collection, self.allow_live)
        if self._own_lock:
            self._lock.acquire(self.run_id)
        try:
            self._before = content_fingerprint(self.pipeline)
            self.journal.save()  # on disk before the first write
            self._trap_sigterm()
        except BaseException:
            if self._own_lock:
                self._lock.release()
            raise
        log.info("sandbox run %s: injecting into %r (fingerprint %s)", self.run_id, self.collection, self._before.digest[:12])
        return self

    def __exit__(self, *exc: object) -> None:
        pending = self._shield()  # a second Ctrl-C or SIGTERM must not interrupt the clean-up
        try:
            removed = self.remove()
            after = content_fingerprint(self.pipeline)
            assert self._before is not None
            explained, clean = self._explain(self._before, after)
            self.outcome = InjectionOutcome(self.run_id, self._before.digest, after.digest, len(self.journal.doc_ids),
                                            removed, explained, clean)
            if clean:
                self.journal.path.unlink(missing_ok=True)
            else:
                log.error("sandbox run %s left the index changed: %s", self.run_id, explained)
        except BaseException:
            log.error("sandbox run %s: clean-up failed; the index may hold injected items: run "
                      "'heterag sandbox clean --collection %s'", self.run_id, self.collection)
            raise
        finally:
            self._restore_signals()
            if self._own_lock:
                self._lock.release()
        if pending and not exc[0]:
            raise KeyboardInterrupt(f"signal {pending[0]}")

    def _trap_sigterm(self) -> None:
        if threading.current_thread() is threading.main_thread():
            def _raise(signum: int, frame: Any) -> None:
                raise KeyboardInterrupt(f"signal {signum}")
            self._old_handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise)

    def _shield(self) -> list[int]:
        """Defer SIGINT and SIGTERM until the clean-up is done; returns the list signals get recorded in."""
        pending: list[int] = []
        if threading.current_thread() is not threading.main_thread():
            return pending

        def _defer(signum: int, frame: Any) -> None:
            log.warning("signal %d received during the sandbox clean-up: finishing the clean-up first", signum)
            pending.append(signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            old = signal.signal(sig, _defer)
            self._old_handlers.setdefault(sig, old)
        return pending

    def _restore_signals(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers = {}

    # -- work -----------------------------------------------------------------------------
    def inject(self, documents: Iterable[Document]) -> IngestReport:
        """Tag, journal, then ingest ``documents`` (through the pipeline's guards)."""
        docs = [dataclasses.replace(d, metadata={**d.metadata, SANDBOX_TAG: self.run_id}) for d in documents]
        if not docs:
            return IngestReport()
        new = [d.id for d in docs if d.id not in set(self.journal.doc_ids)]
        clash = self.pipeline.store.ids(where={"doc_id": {"$in": new}}) if new else []
        if clash:
            raise InvalidInputError(f"sandbox run {self.run_id}: {len(clash)} injected document id(s) already exist in "
                                    f"{self.collection!r} (e.g. a chunk of {clash[0]}); injected ids must be new")
        self.journal.doc_ids.extend(new)
        known = set(self.journal.image_shas)
        self.journal.image_shas.extend(dict.fromkeys(d.image.sha256 for d in docs if d.image is not None
                                                     and d.image.sha256 not in known))
        self.journal.save()  # journal first, then write
        return self.pipeline.ingest(docs, progress=False)

    def remove(self) -> int:
        """Delete every document this run journalled or tagged; returns how many documents."""
        tagged = set()
        for st in (self.pipeline.store, self.pipeline.image_store):
            if st is not None:
                tagged |= {str(r.metadata.get("doc_id")) for r in st.get(where={SANDBOX_TAG: self.run_id})}
        doc_ids = sorted(set(self.journal.doc_ids) | tagged)
        if doc_ids:
            self.pipeline.delete_documents(doc_ids)
        drop_orphan_files(self.pipeline, self.journal.image_shas)
        self.journal.status = "removed"
        self.journal.save()
        return len(doc_ids)

    def _explain(self, before: ContentFingerprint, after: ContentFingerprint) -> tuple[str, bool]:
        if before == after:
            return "", True
        diff = before.diff(after)
        ours = [r for st in (self.pipeline.store, self.pipeline.image_store) if st is not None
                for r in st.get(where={SANDBOX_TAG: self.run_id})]
        if ours:
            return f"{len(ours)} record(s) of this run are still in the index ({diff.summary()})", False
        stray = {k: v for k, v in after.parts.items() if k.startswith("keywords_") and v - before.parts.get(k, frozenset())}
        if stray:  # content_fingerprint's parts for a keyword index out of step with the vector store
            return (f"the keyword index is out of step with the vector store after the clean-up ({diff.summary()}); "
                    f"rebuild it with `heterag keywords build --collection {self.collection}`"), False
        injected = set(self.journal.doc_ids)
        added_text = diff.added.get("text", frozenset())
        foreign = [r for r in self.pipeline.store.get(ids=sorted(added_text)) if str(r.metadata.get("doc_id")) not in injected]
        return (f"another writer changed the collection during the run ({diff.summary()}; "
                f"{len(foreign)} added chunk(s) belong to documents this run did not inject)"), True


@dataclass(frozen=True)
class CleanReport:
    collection: str
    journals: tuple[str, ...]
    documents_removed: int

    def summary(self) -> str:
        if not self.journals and not self.documents_removed:
            return f"collection {self.collection!r}: no sandbox leftovers"
        return (f"collection {self.collection!r}: removed {self.documents_removed} injected document(s) of "
                f"{len(self.journals)} run(s): {', '.join(self.journals) or '(found by tag)'}")


def drop_orphan_files(pipeline: Pipeline, shas: Iterable[str]) -> int:
    """Delete the image files among ``shas`` that no record of the collection names (written by a run killed
    before their records); returns how many images were dropped. A file a record uses is kept."""
    if pipeline.image_files is None:
        return 0
    dropped = 0
    for sha in dict.fromkeys(shas):
        if any(st is not None and st.get(where={"image_sha256": sha}) for st in (pipeline.image_store, pipeline.store)):
            continue
        dropped += bool(pipeline.image_files.remove(sha))
    return dropped


def leftovers(pipeline: Pipeline, collection: str) -> list[str]:
    """Run ids of earlier runs whose journal or ``sandbox_run``-tagged records are still in the collection."""
    runs = {j.run_id for j in list_journals(collection) if j.doc_ids}
    for st in (pipeline.store, pipeline.image_store):
        if st is not None and st.count():
            runs |= {str(r.metadata.get(SANDBOX_TAG)) for r in st.get(where={SANDBOX_TAG: {"$ne": ""}})}
    return sorted(runs)


def clean(pipeline: Pipeline, collection: str) -> CleanReport:
    """Remove leftovers of crashed runs from ``collection``: every journalled and every
    ``sandbox_run``-tagged document. Refused (:class:`SandboxBusyError`) while a run is active."""
    lock = RunLock(collection)
    lock.acquire("clean")
    try:
        journals = list_journals(collection)
        doc_ids = {d for j in journals for d in j.doc_ids}
        runs = {j.run_id for j in journals}
        for st in (pipeline.store, pipeline.image_store):
            if st is not None:
                for r in st.get(where={SANDBOX_TAG: {"$ne": ""}}):
                    doc_ids.add(str(r.metadata.get("doc_id")))
                    runs.add(str(r.metadata.get(SANDBOX_TAG)))
        present = set()
        for st in (pipeline.store, pipeline.image_store):
            if st is not None and doc_ids:
                present |= {str(r.metadata.get("doc_id")) for r in st.get(where={"doc_id": {"$in": sorted(doc_ids)}})}
        if present:
            pipeline.delete_documents(sorted(present))
        drop_orphan_files(pipeline, [s for j in journals for s in j.image_shas])
        for j in journals:
            j.path.unlink(missing_ok=True)
        return CleanReport(collection, tuple(sorted(runs)), len(present))
    finally:
        lock.release()

