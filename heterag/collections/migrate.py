"""``heterag migrate``: copy a collection to another vector store and switch it there.

The collection keeps its folder (``collection.json``, the content-addressed image files under
``images/``, adapters); what moves is its two store collections (text chunks ``heterag`` and image
items ``heterag_images``: vectors, texts, metadata and fingerprints). Steps, under the collection's
write lock:

1. refuse, before writing anything, a target that already holds a *different* collection of that name
   (another fingerprint, or records the source does not have) unless ``overwrite``;
2. copy the fingerprint, then every record the target lacks, in batches (ids are content hashes, so a
   record already there is the same record: a run killed half-way resumes where it stopped); a store with a
   bulk path (``bulk_load``: pgvector) takes a copy of :data:`BULK_MIN` records or more through it, its index
   built once at the end;
3. verify: equal counts, equal fingerprints, equal content digests (sorted ids of both parts, as in
   :mod:`heterag.pipeline.content`), the target's keyword index holding exactly the text records' ids, and
   identical top-10 results (ids, scores within 1e-4) for a sample of queries made from stored vectors;
4. switch ``collection.json`` to the target in one atomic rename. The source is left as it was
   (drop it yourself once satisfied).

Server stores keep nothing in the collection folder; an embedded target gets its own folder
(``store-<kind>``) next to the old one.

The keyword index moves with the text records: a target with its own full-text search (``pgvector``) keeps
it with its vectors; any other gets a keyword index (:mod:`heterag.stores.keyword`) written in step with
the copy (:class:`~heterag.stores.keyworded.KeywordedStore`; a resumed run first reconciles and, if needed,
rebuilds the target's index from the records already copied). A source whose keyword index is out of step
is refused before anything is written, naming ``heterag keywords build``. Where the target's keyword index
folder is the source's own (a server target, whose namespace folder is the old ``store``), the copy holds
the same records, so the index serves both and is only checked (or built, for a collection made before
keyword indexes) after the copy.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

from heterag.collections.collection import _write_info, collection_info
from heterag.collections.keywords import keyword_differences, native_keywords, repair_command
from heterag.core.errors import HeteragError, InvalidInputError, KeywordIndexError
from heterag.core.locking import WriteLock
from heterag.pipeline.content import parts_digest
from heterag.stores import KeywordSearch, VectorStore, keyword_index_path, open_store, parse_store_url
from heterag.stores.url import StoreURL

log = logging.getLogger(__name__)

PARTS = ("heterag", "heterag_images")
#: records to copy into one part from which a store's bulk path (``bulk_load``) is used
BULK_MIN = 20_000


class MigrationVerifyError(HeteragError):
    """The copy does not match its source (counts, fingerprints, content or query results); nothing was switched."""


@dataclass(frozen=True)
class MigrateReport:
    name: str
    source: str
    target: str
    records: dict[str, int]  # part -> records in the target afterwards
    copied: int  # records written by this run
    resumed: int  # records a previous (interrupted) run had already copied
    sample_queries: int
    digest: str
    seconds: float
    #: ids in the target's keyword index (equal to its text records'); None where a native full-text index
    #: cannot list them
    keyword_entries: int | None = None

    def summary(self) -> str:
        parts = ", ".join(f"{n} {p}" for p, n in self.records.items())
        keywords = f", keyword index ({self.keyword_entries} ids)" if self.keyword_entries is not None else ""
        return (f"migrated {self.name} from {self.source} to {self.target}: {parts}; copied {self.copied}, "
                f"already there {self.resumed}; verified counts, fingerprints, content {self.digest[:12]}{keywords} and "
                f"{self.sample_queries} sample queries in {self.seconds:.1f}s (the source is unchanged)")


def _same(a: StoreURL, b: StoreURL) -> bool:
    return (a.kind, a.location) == (b.kind, b.location)


def _target_dir(info_store_dir: str, target: StoreURL) -> str:
    if target.shared:
        return "store"  # server stores keep nothing there; the folder name is their namespace
    name = f"store-{target.kind}"
    return name if name != info_store_dir else f"{name}-1"


def _reset(spec: str, path: Path, parts: list[str], dsts: dict[str, VectorStore]) -> None:
    """Empty the target stores of ``parts`` in place (for ``overwrite``): server stores drop their
    collections; an embedded target loses its whole folder (both parts, reopened empty)."""
    if all(hasattr(dsts[p], "drop") for p in parts):
        for p in parts:
            dsts[p].drop()  # type: ignore[attr-defined]
        keywords = getattr(dsts["heterag"], "keywords", None)
        if "heterag" in parts and keywords is not None:  # a keyword index beside a dropped server collection
            keywords.clear()
    else:
        for p in PARTS:
            dsts[p].close()
        shutil.rmtree(path, ignore_errors=True)
        for p in PARTS:
            dsts[p] = open_store(spec, path, p, keywords=False)
        dsts["heterag"] = _with_keywords(dsts["heterag"], path, None, "NAME")
    for p in parts:
        if dsts[p].count() or dsts[p].fingerprint() is not None:
            raise InvalidInputError(f"cannot empty {p} in {parse_store_url(spec).display()} for --overwrite; drop it by hand")


def _source_keywords(info: object, name: str) -> Path | None:
    """The source's keyword index folder (None when it has none), after checking it is in step with the source's
    text records: an out-of-step index is a :class:`~heterag.core.errors.KeywordIndexError` naming the repair."""
    from heterag.stores.keyword import has_keyword_index

    folder = keyword_index_path(info.store_path, "heterag")  # type: ignore[attr-defined]
    if not has_keyword_index(folder):
        return None
    open_store(info.store, info.store_path, "heterag", repair=repair_command(name)).close()  # type: ignore[attr-defined]
    return folder


def _with_keywords(bare: VectorStore, path: Path, source_folder: Path | None, name: str) -> VectorStore:
    """The target text store ``bare`` with its keyword index: itself for a store with its own full-text search
    or one whose keyword folder is ``source_folder`` (checked after the copy); else a
    :class:`~heterag.stores.keyworded.KeywordedStore`, its index reconciled with (or rebuilt from) the records
    an interrupted run already copied."""
    from heterag.stores.keyword import KeywordIndex
    from heterag.stores.keyworded import KeywordedStore

    bare, native = native_keywords(bare, create=True, name=name)  # pgvector: its own full-text column
    folder = keyword_index_path(path, "heterag")
    if native or (source_folder is not None and folder.resolve() == source_folder.resolve()):
        return bare
    try:
        index = KeywordIndex(folder)
    except KeywordIndexError:  # a damaged leftover: start afresh
        shutil.rmtree(folder, ignore_errors=True)
        index = KeywordIndex(folder)
    wrapped = KeywordedStore(bare, index, repair=repair_command(name or "NAME"), check=False)
    wrapped.recover()
    missing, extra = wrapped.differences()
    if missing or extra:
        wrapped.rebuild(progress=False)
    return wrapped  # type: ignore[return-value]


def _target_keywords(dst: VectorStore, path: Path, source_folder: Path | None, name: str, target: str) -> int | None:
    """Check the target's keyword index against its text records after the copy; returns its id count (None
    for a native index that cannot list its ids). Where the target shares the source's keyword folder and
    the source had none, the index is built now. Raises :class:`MigrationVerifyError` naming the repair."""
    from heterag.stores.keyword import KeywordIndex, has_keyword_index
    from heterag.stores.keyworded import KeywordedStore

    store: object = dst
    folder = keyword_index_path(path, "heterag")
    if not isinstance(dst, KeywordSearch) and not hasattr(dst, "differences"):  # shares the source's folder
        built = has_keyword_index(folder)
        store = KeywordedStore(dst, KeywordIndex(folder), repair=repair_command(name), check=False)
        if not built:
            store.rebuild(progress=False)  # type: ignore[attr-defined]
    diff = keyword_differences(store)
    if diff is None:
        return None
    missing, extra = diff
    if missing or extra:
        raise MigrationVerifyError(
            f"the keyword index of the copy differs from its text records ({len(missing)} missing, {len(extra)} "
            f"extra); nothing was switched; run `heterag migrate --collection {name} --from ... --to {target}` again "
            "(it rebuilds the copy's keyword index)")
    keywords = getattr(store, "keywords", None)
    return keywords.count() if keywords is not None else len(dst.ids())


def _check_sample(src: VectorStore, dst: VectorStore, ids: list[str], sample: int, seed: int) -> int:
    picked = random.Random(seed).sample(sorted(ids), min(sample, len(ids)))
    if not picked:
        return 0
    k = min(10, len(ids))
    for rec in src.get(picked, include_vectors=True):
        a = [(h.record.id, h.score) for h in src.query(rec.vector, k=k)]
        b = [(h.record.id, h.score) for h in dst.query(rec.vector, k=k)]
        ties = {round(s, 5) for _, s in a if sum(abs(s - t) <= 1e-5 for _, t in a) > 1}  # equal scores may swap
        same = len(a) == len(b) and all(abs(x[1] - y[1]) <= 1e-4 and (x[0] == y[0] or round(x[1], 5) in ties)
                                        for x, y in zip(a, b, strict=True))
        if not same or {i for i, _ in a} != {i for i, _ in b}:
            raise MigrationVerifyError(
                f"query with the vector of {rec.id!r} differs: source top ids {[i for i, _ in a]}, target {[i for i, _ in b]}; "
                "nothing was switched")
    return len(picked)


def migrate_collection(
    name: str,
    source: str,
    target: str,
    *,
    overwrite: bool = False,
    batch: int = 512,
    sample: int = 20,
    seed: int = 0,
    home: Path | None = None,
    progress: bool | None = None,
    _fail_after: int | None = None,
) -> MigrateReport:
    """Copy collection ``name`` from store spec ``source`` (where it lives now) to ``target``, verify the
    copy and switch the collection to it (see the module docstring). Raises
    :class:`~heterag.core.errors.InvalidInputError` when ``source`` is not where the collection lives, when
    the target is the source, or when the target holds a different collection and not ``overwrite``;
    :class:`MigrationVerifyError` when the copy does not match (nothing switched);
    :class:`~heterag.core.errors.StoreUnavailableError` when a server cannot be reached."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    if batch < 1:
        raise InvalidInputError(f"batch must be a positive integer, got {batch!r}")
    src_url, dst_url = parse_store_url(source), parse_store_url(target)
    info = collection_info(name, home)
    here = parse_store_url(info.store)
    if not _same(here, src_url):
        raise InvalidInputError(f"collection {name!r} lives in {here.display()}, not in {src_url.display()}")
    if _same(src_url, dst_url):
        raise InvalidInputError(f"--from and --to are the same store ({src_url.display()})")
    with WriteLock(info.path, name)():
        info = collection_info(name, home)
        new_dir = _target_dir(info.store_dir, dst_url)
        dst_path = info.path / new_dir
        source_keywords = _source_keywords(info, name)
        srcs = {p: open_store(info.store, info.store_path, p, keywords=False) for p in PARTS}
        dsts: dict[str, VectorStore] = {}
        try:
            for p in PARTS:
                dsts[p] = open_store(target, dst_path, p, keywords=False)
            dsts["heterag"] = _with_keywords(dsts["heterag"], dst_path, source_keywords, name)
            differs: dict[str, str] = {}
            for p in PARTS:  # check everything before writing anything
                s, d = srcs[p], dsts[p]
                sfp, dfp = s.fingerprint(), d.fingerprint()
                s_ids, d_ids = set(s.ids()), set(d.ids())
                why = ""
                if dfp is not None and dfp != sfp:
                    why = f"its {p} store was built with [{dfp.describe()}]" + (f", the source with [{sfp.describe()}]" if sfp else "")
                elif d_ids - s_ids:
                    why = f"its {p} store holds {len(d_ids - s_ids)} record(s) the source does not have"
                if why and not overwrite:
                    raise InvalidInputError(
                        f"{dst_url.display()} already holds a different collection {name!r} ({why}); "
                        "pass --overwrite to replace it")
                if why:
                    differs[p] = why
            if differs:
                log.warning("overwriting in %s: %s", dst_url.display(), "; ".join(differs.values()))
                _reset(target, dst_path, list(differs), dsts)
            plan: dict[str, tuple[list[str], list[str]]] = {}
            for p in PARTS:
                s_ids, d_ids = set(srcs[p].ids()), set(dsts[p].ids())
                plan[p] = (sorted(s_ids - d_ids), sorted(s_ids & d_ids))
            total = sum(len(todo) for todo, _ in plan.values())
            resumed = sum(len(done) for _, done in plan.values())
            bar = tqdm(total=total, desc="migrate", unit="rec", leave=False,
                       disable=progress is False or (progress is None and total < 5000) or bool(os.environ.get("HETERAG_NO_PROGRESS")))
            copied = 0
            for p in PARTS:
                s, d = srcs[p], dsts[p]
                fp = s.fingerprint()
                if fp is not None and d.fingerprint() is None:
                    d.set_fingerprint(fp)
                todo = plan[p][0]
                bulk = getattr(d, "bulk_load", None)
                with bulk() if bulk is not None and len(todo) >= BULK_MIN else nullcontext():
                    for start in range(0, len(todo), batch):
                        if _fail_after is not None and copied // batch >= _fail_after:
                            raise RuntimeError("simulated crash during migrate")
                        part = s.get(todo[start:start + batch], include_vectors=True)
                        d.upsert(part)
                        copied += len(part)
                        bar.update(len(part))
                ensure = getattr(d, "ensure_indexes", None)
                if ensure is not None:  # a run stopped while its bulk load built them, then re-run with nothing to copy
                    ensure()
                flush = getattr(d, "flush", None)
                if flush is not None:
                    flush()
            bar.close()
            # verify
            ids: dict[str, frozenset[str]] = {}
            for p in PARTS:
                s, d = srcs[p], dsts[p]
                if s.count() != d.count():
                    raise MigrationVerifyError(f"{p}: source holds {s.count()} records, target {d.count()}; nothing was switched")
                if s.fingerprint() != d.fingerprint():
                    raise MigrationVerifyError(f"{p}: fingerprints differ after the copy; nothing was switched")
                src_ids, dst_ids = frozenset(s.ids()), frozenset(d.ids())
                if src_ids != dst_ids:
                    raise MigrationVerifyError(f"{p}: content differs ({len(src_ids ^ dst_ids)} ids); nothing was switched")
                ids["text" if p == "heterag" else "image"] = dst_ids
            keyword_entries = _target_keywords(dsts["heterag"], dst_path, source_keywords, name, target)
            checked = _check_sample(srcs["heterag"], dsts["heterag"], sorted(ids["text"]), sample, seed)
            checked += _check_sample(srcs["heterag_images"], dsts["heterag_images"], sorted(ids["image"]),
                                     max(1, sample // 4), seed)
            counts = {("text records" if p == "heterag" else "image records"): dsts[p].count() for p in PARTS}
        finally:
            for s in (*srcs.values(), *dsts.values()):
                s.close()
        _write_info(replace(info, store=target, store_dir=new_dir))  # the switch: one atomic rename
    report = MigrateReport(name, src_url.display(), dst_url.display(), counts, copied, resumed, checked,
                           parts_digest(dict(ids)), time.perf_counter() - t0, keyword_entries)
    log.info("%s", report.summary())
    return report


__all__ = ["MigrateReport", "MigrationVerifyError", "migrate_collection"]
