"""A vector store with a keyword index beside it, written in step: the same ids, the same batches.

:class:`KeywordedStore` wraps any :class:`~heterag.stores.base.VectorStore` and a
:class:`~heterag.stores.keyword.KeywordIndex`; every upsert and delete goes to both, so every writer
(ingest, document delete and sync, migrate, reembed, the sandbox's injections) keeps them in step
without knowing the keyword index exists. Protocol of a write (crash-safe, idempotent):

1. the ids about to change are noted in the keyword index's journal (durably);
2. the vector store is written (atomic per call, see :mod:`heterag.stores.base`);
3. the keyword index is written (one commit) and the ids leave the journal.

A crash between 1 and 3 leaves ids in the journal; the next open reconciles exactly those from the
vector store (:meth:`KeywordedStore.recover`): an id the vector store holds is (re)indexed from its
record, one it lacks is removed. Then the two id sets are compared; a difference the journal does not
explain (a store edited behind heterag's back, a keyword folder copied from elsewhere) is a
:class:`~heterag.core.errors.KeywordIndexError` naming the command that rebuilds the index.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from heterag.core.errors import KeywordIndexError
from heterag.stores.base import Fingerprint, Record, ScoredRecord, VectorStore
from heterag.stores.keyword import KeywordIndex, keyword_text

log = logging.getLogger(__name__)

#: Records read per page when (re)building a keyword index from its vector store.
REBUILD_BATCH = 2048


class KeywordedStore:
    """``store`` with the keyword index ``index`` kept in step (see the module docs).

    ``repair``: the command a user runs to rebuild the index, named in errors (e.g.
    ``heterag keywords build --collection notes``). ``check``: reconcile the journal and compare the id
    sets now (raises :class:`~heterag.core.errors.KeywordIndexError` on a difference). Everything a
    :class:`~heterag.stores.base.VectorStore` does is delegated; :meth:`keyword_query` and
    :meth:`keyword_scores` search the keyword index.
    """

    def __init__(self, store: VectorStore, index: KeywordIndex, *, repair: str = "heterag keywords build --collection NAME",
                 check: bool = True) -> None:
        self.store = store
        self.keywords = index
        self.repair = repair
        if check:
            self.verify()

    # -- the VectorStore protocol, delegated ----------------------------------------------------------
    @property
    def name(self) -> str:  # type: ignore[override]
        return self.store.name

    @property
    def dim(self) -> int | None:
        return self.store.dim

    def fingerprint(self) -> Fingerprint | None:
        return self.store.fingerprint()

    def set_fingerprint(self, fp: Fingerprint) -> None:
        self.store.set_fingerprint(fp)

    def query(self, vector: np.ndarray, k: int = 10, where: Mapping[str, Any] | None = None) -> list[ScoredRecord]:
        return self.store.query(vector, k=k, where=where)

    def get(self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None,
            include_vectors: bool = False) -> list[Record]:
        return self.store.get(ids=ids, where=where, include_vectors=include_vectors)

    def ids(self, where: Mapping[str, Any] | None = None) -> list[str]:
        return self.store.ids(where=where)

    def count(self) -> int:
        return self.store.count()

    def __getattr__(self, name: str) -> Any:  # backend extras (flush, path, ...) pass through
        if name in ("store", "keywords"):
            raise AttributeError(name)
        attr = getattr(self.store, name)
        if name == "drop":  # a server store's drop empties its keyword index with it (only where the backend has drop)
            def drop() -> None:
                attr()
                self.keywords.clear()

            return drop
        return attr

    # -- writes, in step -----------------------------------------------------------------------------
    def upsert(self, records: Sequence[Record]) -> None:
        """Write ``records`` to the vector store and their keyword texts to the keyword index."""
        records = list(records)
        if not records:
            return self.store.upsert(records)
        ids = [r.id for r in records if isinstance(r.id, str) and r.id]
        with self.keywords.writing():
            self.keywords.begin(ids)
            try:
                self.store.upsert(records)  # validates; raises before anything is written on bad input
            except Exception:
                self._settle(ids)  # a refused (or failed) write: the keyword index follows what the store holds
                raise
            self.keywords.upsert((r.id, keyword_text(r.text, r.metadata)) for r in records)
            self.keywords.commit(ids)

    def _settle(self, ids: Sequence[str]) -> None:
        """After a failed vector write: reconcile ``ids`` now if possible, else leave them to :meth:`recover`."""
        try:
            self._reconcile(ids)
        except Exception:  # noqa: BLE001 - the journal keeps them; the next open reconciles
            log.warning("keyword index %s: %d ids left for the next open to reconcile", self.keywords.path, len(ids))

    def delete(self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None) -> int:
        """Delete from both; returns how many records the vector store removed."""
        if ids is None and where is None:
            return self.store.delete(ids=ids, where=where)
        with self.keywords.writing():
            gone = list(ids) if ids is not None else []
            if where is not None:
                matching = self.store.ids(where=where)
                asked = set(gone)
                gone = [i for i in matching if i in asked] if ids is not None else matching
            self.keywords.begin(gone)
            try:
                n = self.store.delete(ids=ids, where=where)
            except Exception:
                self._settle(gone)
                raise
            self.keywords.delete(gone)
            self.keywords.commit(gone)
            return n

    def close(self) -> None:
        self.keywords.close()
        self.store.close()

    def __enter__(self) -> KeywordedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KeywordedStore({self.store!r}, keywords={str(self.keywords.path)!r})"

    # -- keyword search ------------------------------------------------------------------------------
    def keyword_query(self, text: str, k: int = 10, where: Mapping[str, Any] | None = None) -> list[ScoredRecord]:
        """Top-``k`` records by BM25 score of ``text`` (see :mod:`heterag.stores.keyword`), best first,
        restricted to records matching ``where``; scores are > 0 and unbounded. A text without keyword
        terms gives ``[]``."""
        fetch = k if where is None else max(4 * k, 100)
        while True:
            found = self.keywords.search(text, fetch)
            if not found:
                return []
            records = {r.id: r for r in self.store.get(ids=[i for i, _ in found], where=where)}
            out = [ScoredRecord(records[i], s) for i, s in found if i in records]
            if len(out) >= k or len(found) < fetch:
                return out[:k]
            fetch *= 4

    def keyword_ranking(self, text: str, k: int = 10) -> list[tuple[str, float]]:
        """:meth:`keyword_query`'s ``(id, score)`` without a filter and without fetching the records (the
        keyword index alone: about 1 ms at 100,000 records)."""
        return self.keywords.search(text, k)

    def keyword_scores(self, text: str, ids: Sequence[str]) -> dict[str, float]:
        """BM25 scores of ``text`` for exactly these ids (0 for ids matching no term)."""
        return self.keywords.scores(text, ids)

    # -- consistency ---------------------------------------------------------------------------------
    def verify(self) -> bool:
        """At open: when no other process is writing this store through its keyword index (its writer lock
        is free), reconcile what a crashed writer left (:meth:`recover`) and compare the id sets
        (:meth:`check`); while a writer is active (an ingest in another process) the two indexes differ by
        its batch in flight, so both wait for the next open. Returns whether the check ran."""
        with self.keywords.writing(wait=False) as free:
            if not free:
                log.debug("keyword index %s: a writer is active; checked at the next open", self.keywords.path)
                return False
            self.recover()
            self.check()
            return True

    def recover(self) -> int:
        """Reconcile the ids a crashed writer left in the journal from the vector store; returns how many.
        Call it only while holding :meth:`KeywordIndex.writing` (or with no other writer alive)."""
        pending = self.keywords.journal()
        if not pending:
            return 0
        self._reconcile(pending)
        log.info("keyword index %s: reconciled %d ids left by an interrupted write", self.keywords.path, len(pending))
        return len(pending)

    def _reconcile(self, ids: Sequence[str]) -> None:
        """Make the keyword index hold exactly what the vector store holds for ``ids``; clear them from the journal."""
        present = {r.id: r for r in self.store.get(ids=list(ids))} if ids else {}
        self.keywords.upsert((r.id, keyword_text(r.text, r.metadata)) for r in present.values())
        self.keywords.delete([i for i in ids if i not in present])
        self.keywords.commit(ids)

    def differences(self) -> tuple[set[str], set[str]]:
        """``(ids only in the vector store, ids only in the keyword index)``."""
        mine, theirs = set(self.keywords.ids()), set(self.store.ids())
        return theirs - mine, mine - theirs

    def check(self) -> None:
        """Raise :class:`~heterag.core.errors.KeywordIndexError` (one line, naming the repair command)
        if the keyword index's ids differ from the vector store's."""
        missing, extra = self.differences()
        if missing or extra:
            raise KeywordIndexError(
                f"the keyword index {self.keywords.path} is out of step with its vector store ({len(missing)} ids "
                f"missing, {len(extra)} extra); rebuild it with `{self.repair}` (or use --retrieval dense)")

    def rebuild(self, progress: bool | None = None, on_batch: Callable[[int], None] | None = None) -> int:
        """Re-index every record of the vector store from scratch (holding the writer lock); returns how many."""
        with self.keywords.writing():
            return self._rebuild(progress, on_batch)

    def _rebuild(self, progress: bool | None, on_batch: Callable[[int], None] | None) -> int:
        self.keywords.clear()
        ids = self.store.ids()
        bar = tqdm(total=len(ids), unit="record", desc="keyword index", disable=progress is False or (progress is None and len(ids) < 5000))
        done = 0
        try:
            for start in range(0, len(ids), REBUILD_BATCH):
                batch = self.store.get(ids=ids[start:start + REBUILD_BATCH])
                self.keywords.upsert((r.id, keyword_text(r.text, r.metadata)) for r in batch)
                done += len(batch)
                bar.update(len(batch))
                if on_batch is not None:
                    on_batch(done)
        finally:
            bar.close()
        return done
