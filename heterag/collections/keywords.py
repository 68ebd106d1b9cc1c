"""``heterag keywords build|check``: a collection's keyword index, (re)built from its vector store and compared with it.

The keyword index (:mod:`heterag.stores.keyword`) sits beside the collection's text store and is written in
step with it (:class:`~heterag.stores.keyworded.KeywordedStore`). :func:`build_keywords` indexes every
stored record again (a collection made before keyword indexes gets one; a damaged or out-of-step index is
replaced) under the collection's write lock; :func:`check_keywords` reconciles an interrupted write and
compares the two id sets. A store with its own full-text search in the same database (``pgvector``) keeps
its keyword data with its vectors: nothing to build, and its ids are compared when it can list them.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heterag.core.errors import KeywordIndexError
from heterag.core.locking import WriteLock
from heterag.stores import KeywordSearch, keyword_index_path, open_store

#: The store collection of a heterag collection's text records (the one with a keyword index).
TEXT_PART = "heterag"


def repair_command(name: str) -> str:
    """The command that (re)builds collection ``name``'s keyword index."""
    return f"heterag keywords build --collection {name}"


@dataclass(frozen=True)
class KeywordCheck:
    """How a collection's keyword index compares with its vector store."""

    name: str
    #: ``local`` (a keyword index folder beside the store), ``native`` (the store's own full-text search) or
    #: ``none`` (made before keyword indexes).
    kind: str
    records: int  # records in the vector store
    indexed: int  # ids in the keyword index
    missing: frozenset[str] = field(default_factory=frozenset)  # in the vector store only
    extra: frozenset[str] = field(default_factory=frozenset)  # in the keyword index only
    reconciled: int = 0  # ids an interrupted write had left in the journal, reconciled now

    @property
    def ok(self) -> bool:
        return self.kind != "none" and not self.missing and not self.extra

    def summary(self) -> str:
        """One line: the counts, or the difference and the command that repairs it."""
        if self.kind == "none":
            return (f"{self.name}: no keyword index ({self.records} records, made before keyword search); build one "
                    f"with `{repair_command(self.name)}`")
        if self.ok:
            how = "the store's own full-text index" if self.kind == "native" else "keyword index"
            done = f"; reconciled {self.reconciled} ids of an interrupted write" if self.reconciled else ""
            return f"{self.name}: {how} in step with the vector store ({self.records} records, {self.indexed} indexed){done}"
        parts = [f"{len(ids)} ids {what} (e.g. {min(ids)!r})" for ids, what in
                 ((self.missing, "missing from the keyword index"), (self.extra, "only in the keyword index")) if ids]
        return (f"{self.name}: keyword index differs from the vector store ({self.records} records, {self.indexed} "
                f"indexed): {'; '.join(parts)}; rebuild it with `{repair_command(self.name)}`")


def native_keywords(bare: Any, *, create: bool, name: str) -> tuple[Any, bool]:
    """``(store, native)``: for a backend with its own full-text search (``keyword_search()``, pgvector), the store
    with it (``create``: added where a table made before keyword search lacks it; without, such a table is
    returned as it is with ``native`` False); any other store as it is, ``native`` False. Use (and close) the
    returned store instead of ``bare``."""
    if isinstance(bare, KeywordSearch):
        return bare, True
    hook = getattr(bare, "keyword_search", None)
    if hook is None:
        return bare, False
    found = hook(create=create, repair=repair_command(name))
    return (found, True) if found is not None else (bare, False)


def keyword_state(store: Any) -> str:
    """``local``, ``native`` or ``none``: what keyword index an opened text store has."""
    if getattr(store, "keywords", None) is not None and hasattr(store, "differences"):
        return "local"
    return "native" if isinstance(store, KeywordSearch) else "none"


def keyword_differences(store: Any) -> tuple[set[str], set[str]] | None:
    """``(ids only in the vector store, ids only in the keyword index)`` of a store with a keyword index, or
    None when it cannot tell (a native full-text index that cannot list its ids)."""
    if hasattr(store, "differences"):
        return store.differences()
    keyword_ids = getattr(store, "keyword_ids", None)
    if keyword_ids is None:
        return None
    mine, theirs = set(keyword_ids()), set(store.ids())
    return theirs - mine, mine - theirs


def keyword_kind(name: str, home: Path | None = None) -> str:
    """``local``, ``native`` or ``none``: the keyword index of collection ``name`` (reads nothing but the store's
    presence; no model is loaded, nothing is built)."""
    from heterag.collections.collection import collection_info
    from heterag.stores.keyword import has_keyword_index

    info = collection_info(name, home)
    bare = open_store(info.store, info.store_path, collection=TEXT_PART, keywords=False)
    try:
        bare, native = native_keywords(bare, create=False, name=name)
        if native:
            return "native"
        if getattr(bare, "keyword_search", None) is not None:  # a pgvector table made before keyword search
            return "none"
        return "local" if has_keyword_index(keyword_index_path(info.store_path, TEXT_PART)) else "none"
    finally:
        bare.close()


def check_has_keywords(name: str, home: Path | None = None) -> str:
    """``local`` or ``native`` when collection ``name`` has a keyword index, else
    :class:`~heterag.core.errors.KeywordIndexError` naming the command that builds one (no model is loaded)."""
    kind = keyword_kind(name, home)
    if kind == "none":
        raise KeywordIndexError(f"collection {name} has no keyword index (made before keyword search); build one with "
                                f"`{repair_command(name)}`, or use --retrieval dense")
    return kind


def _indexed(store: Any) -> int:
    if getattr(store, "keywords", None) is not None:
        return store.keywords.count()
    keyword_ids = getattr(store, "keyword_ids", None)
    return len(keyword_ids()) if keyword_ids is not None else store.count()


def check_keywords(name: str, home: Path | None = None) -> KeywordCheck:
    """Compare collection ``name``'s keyword index with its vector store (under the write lock, after
    reconciling what an interrupted write left in the index's journal). Raises
    :class:`~heterag.core.errors.CollectionNotFoundError` for an unknown collection."""
    from heterag.collections.collection import collection_info
    from heterag.stores.keyword import KeywordIndex, has_keyword_index
    from heterag.stores.keyworded import KeywordedStore

    info = collection_info(name, home)
    with WriteLock(info.path, name)():
        bare = open_store(info.store, info.store_path, collection=TEXT_PART, keywords=False)
        try:
            bare, native = native_keywords(bare, create=False, name=name)
            if not native and getattr(bare, "keyword_search", None) is not None:  # pgvector, made before keyword search
                return KeywordCheck(name, "none", bare.count(), 0)
            if isinstance(bare, KeywordSearch):
                diff = keyword_differences(bare)
                missing, extra = diff if diff is not None else (set(), set())
                return KeywordCheck(name, "native", bare.count(), _indexed(bare), frozenset(missing), frozenset(extra))
            folder = keyword_index_path(info.store_path, TEXT_PART)
            if not has_keyword_index(folder):
                return KeywordCheck(name, "none", bare.count(), 0)
            wrapped = KeywordedStore(bare, KeywordIndex(folder, create=False), repair=repair_command(name), check=False)
            reconciled = wrapped.recover()
            missing, extra = wrapped.differences()
            return KeywordCheck(name, "local", bare.count(), wrapped.keywords.count(), frozenset(missing),
                                frozenset(extra), reconciled)
        finally:
            bare.close()


@dataclass(frozen=True)
class KeywordBuild:
    name: str
    kind: str  # ``local`` or ``native``
    records: int
    indexed: int

    def summary(self) -> str:
        if self.kind == "native":
            return (f"{self.name}: the store keeps its own full-text index ({self.records} records, {self.indexed} "
                    "indexed); nothing to build")
        return f"{self.name}: keyword index built: {self.indexed} of {self.records} records indexed"


def build_keywords(name: str, home: Path | None = None, *, progress: bool | None = None,
                   on_batch: Callable[[int], None] | None = None) -> KeywordBuild:
    """(Re)build collection ``name``'s keyword index from its vector store, under the collection's write lock:
    every stored record is indexed again (the index's ids then equal the store's). A damaged index folder is
    replaced. Returns the counts; raises :class:`~heterag.core.errors.KeywordIndexError` if the ids still
    differ afterwards (a writer outside heterag's lock)."""
    from heterag.collections.collection import collection_info
    from heterag.stores.keyword import KeywordIndex
    from heterag.stores.keyworded import KeywordedStore

    info = collection_info(name, home)
    with WriteLock(info.path, name)():
        bare = open_store(info.store, info.store_path, collection=TEXT_PART, keywords=False)
        try:
            upgrade = getattr(bare, "keyword_search", None)
            if upgrade is not None and not isinstance(bare, KeywordSearch):  # a pgvector table made before keyword search
                bare = upgrade(create=True, repair=repair_command(name))  # adds and fills its full-text column
            if isinstance(bare, KeywordSearch):
                rebuild = getattr(bare, "rebuild_keywords", None)
                if rebuild is not None:
                    rebuild(progress=progress, on_batch=on_batch)
                return KeywordBuild(name, "native", bare.count(), _indexed(bare))
            folder = keyword_index_path(info.store_path, TEXT_PART)
            try:
                index = KeywordIndex(folder)
            except KeywordIndexError:  # not a usable index: start afresh
                shutil.rmtree(folder, ignore_errors=True)
                index = KeywordIndex(folder)
            wrapped = KeywordedStore(bare, index, repair=repair_command(name), check=False)
            wrapped.rebuild(progress=progress, on_batch=on_batch)
            missing, extra = wrapped.differences()
            if missing or extra:
                raise KeywordIndexError(f"{name}: the keyword index still differs from the vector store after the rebuild "
                                        f"({len(missing)} missing, {len(extra)} extra); is another program writing the store?")
            return KeywordBuild(name, "local", bare.count(), index.count())
        finally:
            bare.close()


__all__ = ["KeywordBuild", "KeywordCheck", "build_keywords", "check_has_keywords", "check_keywords", "keyword_kind", "native_keywords", "keyword_differences", "keyword_state",
           "repair_command"]
