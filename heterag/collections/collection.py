"""Named collections on disk: a store, the settings that built it, and a way to reopen it.

Layout: ``$HETERAG_HOME/collections/<name>/`` holds ``collection.json`` (store kind,
text encoder load target, image encoder spec), the store's own files under ``store/``
(two store collections: ``heterag`` for text chunks, ``heterag_images`` for image items)
and the collection's image files under ``images/`` (content-addressed). Each store keeps
its fingerprint (encoder identity, dimension, view kind and settings, chunk size; for
images the image encoder); reopening with different settings is a
:class:`FingerprintMismatchError`, never silent garbage.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heterag.core.errors import CollectionNotFoundError, FingerprintMismatchError, InvalidInputError
from heterag.core.home import heterag_home
from heterag.core.locking import WriteLock
from heterag.encoding.text_encoder import load_text_encoder
from heterag.encoding.vector_cache import VectorCache
from heterag.generators.base import Generator
from heterag.ingest.chunking import DEFAULT_CHUNK_TOKENS, check_chunk_tokens
from heterag.ingest.guards import IngestGuard
from heterag.ingest.views import make_view
from heterag.pipeline.pipeline import Pipeline
from heterag.retrieval.fusion import Fusion
from heterag.retrieval.hit_filters import HitFilter
from heterag.retrieval.hybrid import HybridFusion, check_retrieval
from heterag.stores import KeywordSearch, keyword_index_path, open_store, parse_store_url, probe_store
from heterag.stores.url import redact

if TYPE_CHECKING:
    from heterag.encoding.adapters import Adapter

log = logging.getLogger(__name__)

DEFAULT_STORE = "chroma"
DEFAULT_VIEW = "heterag"
DEFAULT_IMAGE_ENCODER = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def collection_dir(name: str, home: Path | None = None) -> Path:
    if not _NAME.match(name or ""):
        raise InvalidInputError(
            f"bad collection name {name!r}: use 1-63 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return (home or heterag_home()) / "collections" / name


#: file in a collection's folder holding its chunks' sentence vectors (:func:`sentence_vectors`)
SENTENCE_VECTORS = "sentence-vectors.sqlite"


def sentence_vectors(name: str, pipe: Any, home: Path | None = None) -> VectorCache:
    """The on-disk sentence vectors of collection ``name`` for ``pipe``'s encoder (model and adapter), which the
    extractive generator reads before it encodes (:class:`~heterag.encoding.vector_cache.VectorCache`); a file
    made by another encoder is emptied. Dropping the collection removes it with the folder."""
    fp = pipe.fingerprint
    return VectorCache(collection_dir(name, home) / SENTENCE_VECTORS, f"{fp.model}+adapter:{fp.adapter}", fp.dim)


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    store: str
    encoder: str | None  # what to load (name or path); None = the offline default
    path: Path
    image_encoder: str = DEFAULT_IMAGE_ENCODER  # spec for heterag.encoding.image_encoders.load_image_encoder
    #: What the collection is for: "" (serving knowledge) or "experiment" (made by the attack sandbox;
    #: it may inject into it without ``allow_live``).
    purpose: str = ""
    #: The text-encoder adapter its vectors were embedded with (a copy inside the collection folder,
    #: relative path stem, see :mod:`heterag.encoding.adapters`), or None.
    adapter: str | None = None
    #: The folder (under ``path``) holding the store's files; ``heterag reembed`` switches it atomically.
    store_dir: str = "store"

    @property
    def store_path(self) -> Path:
        return self.path / self.store_dir


def read_info(name: str, home: Path | None = None) -> CollectionInfo | None:
    path = collection_dir(name, home)
    meta = path / "collection.json"
    if not meta.exists():
        return None
    try:
        data = json.loads(meta.read_text())
        return CollectionInfo(name=name, store=data["store"], encoder=data.get("encoder"), path=path,
                              image_encoder=data.get("image_encoder") or DEFAULT_IMAGE_ENCODER,
                              purpose=str(data.get("purpose") or ""), adapter=data.get("adapter") or None,
                              store_dir=str(data.get("store_dir") or "store"))
    except (ValueError, KeyError) as exc:
        raise InvalidInputError(f"{meta} is corrupt: {exc}") from None


def _write_info(info: CollectionInfo) -> None:
    info.path.mkdir(parents=True, exist_ok=True)
    tmp = info.path / "collection.json.tmp"
    data = {"store": info.store, "encoder": info.encoder, "image_encoder": info.image_encoder}
    if info.purpose:
        data["purpose"] = info.purpose
    if info.adapter:
        data["adapter"] = info.adapter
    if info.store_dir != "store":
        data["store_dir"] = info.store_dir
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, info.path / "collection.json")


def _legacy_identity(info: CollectionInfo, fp: Any, encoder: Any) -> str | None:
    """The fingerprint identity to keep for a collection built before local encoders were hashed, or None.

    Collections made before weight hashes recorded a local text encoder as ``local:<folder name>``.
    Rule: such a collection keeps opening (with its old identity) only when its encoder is loaded from
    the very folder its ``collection.json`` records; a model from any other folder, whatever its name,
    has the new ``local:<name>@sha256-...`` identity and is refused as a fingerprint mismatch.
    """
    from heterag.encoding.text_encoder import legacy_identity

    model = str(getattr(fp, "model", "") or "")
    path = getattr(encoder, "path", None)
    if not model.startswith("local:") or "@sha256-" in model or path is None or not info.encoder:
        return None
    if legacy_identity(str(encoder.identity)) != model or Path(info.encoder).expanduser().resolve() != Path(path).resolve():
        return None
    log.info("collection %s predates encoder weight hashes: opened with its recorded encoder folder %s", info.name, path)
    return model


def _same_text_model(a: str, b: str) -> bool:
    from heterag.encoding.text_encoder import same_text_model  # imported here: listing collections loads no model code

    return same_text_model(a, b)


def _stored_identity(info: CollectionInfo, fp: Any, encoder: Any) -> str | None:
    """The fingerprint identity to keep for ``encoder`` on this collection: the legacy one
    (:func:`_legacy_identity`), or the stored one when it names the same weights (the default encoder
    recorded by its folder's hash); None means the encoder's own identity."""
    legacy = _legacy_identity(info, fp, encoder)
    if legacy is not None or fp is None:
        return legacy
    own = str(getattr(encoder, "identity", ""))
    return fp.model if own and own != fp.model and _same_text_model(own, fp.model) else None


def collection_info(name: str, home: Path | None = None) -> CollectionInfo:
    """How collection ``name`` was built (store, encoders, purpose, folder); raises
    :class:`CollectionNotFoundError` if it does not exist."""
    info = read_info(name, home)
    if info is None:
        raise _not_found(name, home)
    return info


def _not_found(name: str, home: Path | None = None, hint: str = "") -> CollectionNotFoundError:
    """"no collection named 'x' under HOME", naming the collections there are (or saying there are none)."""
    names = list_collections(home)
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    there = f"the collections are: {shown}" if names else "there are no collections yet"
    return CollectionNotFoundError(f"no collection named {name!r} under {home or heterag_home()}; {there}{hint}")


def list_collections(home: Path | None = None) -> list[str]:
    root = (home or heterag_home()) / "collections"
    return sorted(p.name for p in root.iterdir() if (p / "collection.json").exists()) if root.exists() else []


def drop_collection(name: str, home: Path | None = None) -> None:
    """Delete collection ``name``: its records (on a store server too) and everything in its folder (store,
    images, adapters).

    Waits for a writer of the collection (its write lock) so an ingest in progress is never cut in
    half; raises :class:`CollectionNotFoundError` if there is no such collection.
    """
    info = collection_info(name, home)
    with WriteLock(info.path, name)():
        for part in ("heterag", "heterag_images"):  # a server store keeps its records outside the folder
            vs = open_store(info.store, info.store_path, collection=part, keywords=False)  # an index out of step goes too
            try:
                if hasattr(vs, "drop"):
                    vs.drop()
            finally:
                vs.close()
        tmp = info.path.with_name(f".{info.path.name}.dropping-{os.getpid()}")
        os.replace(info.path, tmp)  # the collection disappears at once; its files go after
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("dropped collection %s", name)


def describe_collection(name: str, home: Path | None = None) -> dict[str, Any]:
    """Settings and counts of collection ``name`` without loading any model: store, text encoder, view
    and its settings, chunk size, adapter, image encoder, how many documents, chunks and images it holds, and its
    keyword index (``keywords``: ``local``, ``native``, the store's own full-text search, or ``none``)."""
    from heterag.stores.keyword import has_keyword_index

    info = collection_info(name, home)
    out: dict[str, Any] = {"name": name, "store": redact(info.store), "encoder": info.encoder or "default",
                           "image_encoder": info.image_encoder, "adapter": info.adapter or "none", "purpose": info.purpose}
    vs = open_store(info.store, info.store_path, collection="heterag", keywords=False)  # read only: nothing is built
    out["keywords"] = ("native" if isinstance(vs, KeywordSearch) else
                       "local" if has_keyword_index(keyword_index_path(info.store_path, "heterag")) else "none")
    image_vs = None
    try:
        image_vs = open_store(info.store, info.store_path, collection="heterag_images", keywords=False)
        fp = vs.fingerprint()
        if fp is not None:
            out.update(view=fp.view, view_settings=dict(fp.extra.get("view_settings", {})),
                       chunk_tokens=int(fp.extra.get("chunk_tokens", DEFAULT_CHUNK_TOKENS)), encoder_identity=fp.model)
        docs = {str(r.metadata.get("doc_id", "")) for s in (vs, image_vs) if s.count() for r in s.get()}
        out.update(documents=len(docs), chunks=vs.count(), images=image_vs.count())
    finally:
        vs.close()
        if image_vs is not None:
            image_vs.close()
    return out


@contextmanager
def _open_stores(info: Any) -> Iterator[tuple[Any, Any, Any]]:
    """``(text store, image store, image files)`` of a collection, opened without any model; closed after."""
    from heterag.core.images import ImageFiles

    vs = open_store(info.store, info.store_path, collection="heterag")
    try:
        image_vs = open_store(info.store, info.store_path, collection="heterag_images", keywords=False)
        try:
            yield vs, image_vs, ImageFiles(info.path / "images")
        finally:
            image_vs.close()
    finally:
        vs.close()


def collection_documents(name: str, where: dict[str, Any] | None = None, home: Path | None = None) -> list[Any]:
    """The documents of collection ``name`` (:class:`~heterag.ingest.documents.DocumentInfo`, sorted by id) and, with
    ``where={"doc_id": ID}``, one of them; reads the stores only, no model is loaded."""
    from heterag.ingest.documents import list_documents

    with _open_stores(collection_info(name, home)) as (vs, image_vs, files):
        return list_documents(vs, image_vs, files, where)


def delete_documents(name: str, doc_ids: Sequence[str], home: Path | None = None) -> int:
    """Delete documents ``doc_ids`` of collection ``name`` (chunks, image records, unused image files) under
    its write lock; returns the records removed. Reads and writes the stores only: no model is loaded.
    Ids that are not stored are ignored (:func:`collection_documents` lists what is)."""
    from heterag.ingest.documents import delete_records

    ids = [d for d in doc_ids if isinstance(d, str) and d]
    info = collection_info(name, home)
    if not ids:
        return 0
    with WriteLock(info.path, name)(), _open_stores(info) as (vs, image_vs, files):
        return delete_records(vs, image_vs, files, ids)


def document_chunks(name: str, doc_id: str, home: Path | None = None) -> list[Any]:
    """The stored chunks (records) of document ``doc_id`` of collection ``name`` in reading order; no model is loaded."""
    info = collection_info(name, home)
    vs = open_store(info.store, info.store_path, collection="heterag")
    try:
        return sorted(vs.get(where={"doc_id": doc_id}), key=lambda r: int(r.metadata.get("chunk_index", 0)))
    finally:
        vs.close()


def _other_setting(name: str, option: str, stored: Any, given: Any) -> str:
    """The one-line refusal of an option that differs from how collection ``name`` was built."""
    return (f"collection {name!r} uses {option} {stored}, not {given}; use a new --collection name or "
            f"`heterag drop {name}` first")


#: View settings that have a command-line option.
_VIEW_OPTIONS = {"neighbours": "--neighbours"}


def _check_settings(name: str, fp: Any, *, view: str | None, view_options: dict[str, Any] | None,
                    chunk_tokens: int | None) -> None:
    """Raise :class:`FingerprintMismatchError` naming the first given option that differs from the collection's
    fingerprint (view, view settings, chunk size); omitted options take the collection's values."""
    if view is not None and view != fp.view:
        raise FingerprintMismatchError(_other_setting(name, "--view", fp.view, view))
    if view_options is not None:
        stored = dict(fp.extra.get("view_settings", {}))
        given = json.loads(json.dumps(make_view(view or fp.view, **view_options).settings()))
        for key in sorted(set(stored) | set(given)):
            if stored.get(key) != given.get(key):
                option = _VIEW_OPTIONS.get(key, f"view setting {key}")
                raise FingerprintMismatchError(_other_setting(name, option, stored.get(key), given.get(key)))
    stored_tokens = int(fp.extra.get("chunk_tokens", DEFAULT_CHUNK_TOKENS))
    if chunk_tokens is not None and chunk_tokens != stored_tokens:
        raise FingerprintMismatchError(_other_setting(name, "--chunk-tokens", stored_tokens, chunk_tokens))


def check_options(*, store: str | None = None, view: str | None = None, view_options: dict[str, Any] | None = None,
                  chunk_tokens: int | None = None, image_encoder: str | None = None, purpose: str | None = None) -> None:
    """Check the settings :func:`open_collection` takes, without loading a model or writing anything: an
    unknown store scheme, view, view option or image-encoder spec, a chunk size under 8 or an unknown
    purpose raises :class:`~heterag.core.errors.HeteragError` (one line; unknown names list the choices)."""
    if purpose not in (None, "", "experiment"):
        raise InvalidInputError(f"purpose must be '' or 'experiment', got {purpose!r}")
    if store is not None:
        parse_store_url(store)  # an unknown scheme lists the accepted forms
    if chunk_tokens is not None:
        check_chunk_tokens(chunk_tokens)
    if view is not None or view_options is not None:
        make_view(view or DEFAULT_VIEW, **(view_options or {}))  # unknown names and bad options raise here
    if image_encoder is not None:
        from heterag.encoding.image_encoders import check_image_encoder_spec

        check_image_encoder_spec(image_encoder)


def open_collection(
    name: str,
    *,
    store: str | None = None,
    encoder: str | None = None,
    view: str | None = None,
    view_options: dict[str, Any] | None = None,
    chunk_tokens: int | None = None,
    generator: Generator | None = None,
    create: bool = True,
    home: Path | None = None,
    image_encoder: str | None = None,
    fusion: Fusion | str | None = None,
    guards: Sequence[IngestGuard] = (),
    hit_filters: Sequence[HitFilter] = (),
    purpose: str | None = None,
    adapter: str | os.PathLike[str] | Adapter | None = None,
    retrieval: str | None = None,
    hybrid: HybridFusion | str | None = None,
) -> Pipeline:
    """Open collection ``name`` as a :class:`Pipeline`, creating it if ``create``.

    For an existing collection, omitted settings come from how it was built; given
    ones must match (else :class:`FingerprintMismatchError`). The store kind of an
    existing collection cannot change. ``image_encoder`` (default ``"default"``) is only
    loaded when image items are ingested or queried. ``guards`` and ``hit_filters`` are
    switched on for this pipeline (:mod:`heterag.ingest.guards`, :mod:`heterag.retrieval.hit_filters`). ``purpose`` is recorded when the
    collection is created (``"experiment"`` marks a sandbox-made collection; see
    :func:`collection_info`). Writes take the collection's cross-process write lock
    (:mod:`heterag.core.locking`). ``adapter`` is a soft-prompt adapter (path or :class:`~heterag.encoding.adapters.Adapter`, see :mod:`heterag.encoding.adapters`)
    for the text encoder: omitted, the one the collection was embedded with is used; ``"none"`` means
    none. An adapter other than the collection's raises :class:`FingerprintMismatchError` naming both
    and the ``heterag reembed`` command; a new collection keeps a copy of its adapter. ``retrieval``
    (``dense``, ``keyword``, ``hybrid``; default hybrid where the collection has a keyword index) and
    ``hybrid`` (:class:`~heterag.retrieval.hybrid.HybridFusion` or its spec) set how text queries are searched.
    A collection made before keyword indexes opens without one (logged, with the command that builds it).
    """
    # Every setting is checked before anything is written: a bad option never leaves a folder behind. An
    # existing collection's image encoder is compared first (checking an open_clip spec imports open_clip).
    known = read_info(name, home)
    if known is not None and image_encoder is not None and image_encoder != known.image_encoder:
        raise FingerprintMismatchError(_other_setting(name, "--image-encoder", known.image_encoder, image_encoder))
    check_options(store=store, view=view, view_options=view_options, chunk_tokens=chunk_tokens,
                  image_encoder=image_encoder, purpose=purpose)
    fusion = Fusion.parse(fusion)
    hybrid = HybridFusion.parse(hybrid)
    if retrieval is not None:
        check_retrieval(retrieval)
    info = read_info(name, home)
    is_new = created = info is None
    if info is None:
        if not create:
            raise _not_found(name, home, f" (ingest into {name!r} to create it)")
        if encoder is not None and Path(encoder).expanduser().exists():
            encoder = str(Path(encoder).expanduser().resolve())  # a relative path means the same model from anywhere
        info = CollectionInfo(name=name, store=store or DEFAULT_STORE, encoder=encoder, path=collection_dir(name, home),
                              image_encoder=image_encoder or DEFAULT_IMAGE_ENCODER, purpose=purpose or "")
    elif store is not None and store != info.store:
        raise InvalidInputError(_other_setting(name, "--store", redact(info.store), redact(store)))
    elif image_encoder is not None and image_encoder != info.image_encoder:
        raise FingerprintMismatchError(_other_setting(name, "--image-encoder", info.image_encoder, image_encoder))
    probe_store(info.store)  # an unreachable store server fails in seconds, before any model is loaded
    adapter_obj = None
    if adapter is None and info.adapter:
        adapter = info.path / info.adapter
    from heterag.encoding.adapters import Adapter, load_adapter

    if isinstance(adapter, Adapter):  # an adapter already loaded (or trained) in this process
        adapter_obj = adapter
    elif adapter is not None and str(adapter).lower() != "none":
        adapter_obj = load_adapter(adapter)
    # a new collection's encoder is loaded before anything is written (a bad one fails first); an existing
    # collection's settings are checked against its fingerprint before any model loads
    base_encoder = load_text_encoder(encoder if encoder is not None else info.encoder) if created else None
    existed = info.path.exists()
    vs = None
    image_vs = None
    try:
        vs = open_store(info.store, info.store_path, collection="heterag",  # one collection per folder
                        repair=f"heterag keywords build --collection {name}")
        if not isinstance(vs, KeywordSearch):
            log.warning("collection %s has no keyword index (made before keyword search): keyword and hybrid "
                        "retrieval need one, built by `heterag keywords build --collection %s`; dense retrieval works", name, name)
        image_vs = open_store(info.store, info.store_path, collection="heterag_images", keywords=False)
        fp = vs.fingerprint()
        if fp is not None:
            _check_settings(name, fp, view=view, view_options=view_options, chunk_tokens=chunk_tokens)
        if fp is not None and encoder is not None:  # compared by identity (name or weights hash) before it loads
            from types import SimpleNamespace

            from heterag.encoding.text_encoder import resolve_text_model

            given, target = resolve_text_model(encoder)
            probe = SimpleNamespace(identity=given, path=Path(target) if given.startswith("local:") else None)
            identity = _legacy_identity(info, fp, probe) or given
            if not _same_text_model(identity, fp.model):
                raise FingerprintMismatchError(_other_setting(
                    name, "--encoder", f"{info.encoder or 'default'} (model {fp.model})", f"{encoder} (model {identity})"))
        if base_encoder is None:
            base_encoder = load_text_encoder(encoder if encoder is not None else info.encoder)
        stored_settings = dict(fp.extra.get("view_settings", {})) if fp else {}
        view_kind = view or (fp.view if fp else DEFAULT_VIEW)
        if view_options is None and fp is not None and view_kind == fp.view:
            view_options = stored_settings
        rview = make_view(view_kind, **(view_options or {}))
        tokens = chunk_tokens if chunk_tokens is not None else (int(fp.extra.get("chunk_tokens", DEFAULT_CHUNK_TOKENS)) if fp else DEFAULT_CHUNK_TOKENS)
        enc = base_encoder
        if adapter_obj is not None:
            from heterag.encoding.adapters import AdaptedEncoder

            enc = AdaptedEncoder(enc, adapter_obj)
        if fp is None and adapter_obj is not None and info.adapter != f"adapters/{adapter_obj.hash}":
            from dataclasses import replace

            adapter_obj.save(info.path / "adapters" / adapter_obj.hash)  # the collection keeps its own copy
            info = replace(info, adapter=f"adapters/{adapter_obj.hash}")
            is_new = True  # record it
        pipeline = Pipeline(vs, enc, rview, generator, chunk_tokens=tokens, name=name, image_store=image_vs,
                            image_encoder=info.image_encoder, image_files=info.path / "images", fusion=fusion,
                            guards=guards, hit_filters=hit_filters, write_lock=WriteLock(info.path, name),
                            encoder_identity=_stored_identity(info, fp, base_encoder), retrieval=retrieval, hybrid=hybrid)
    except BaseException:
        if vs is not None:
            vs.close()
        if image_vs is not None:
            image_vs.close()
        if not existed and info.path.exists() and not (info.path / "collection.json").exists():
            shutil.rmtree(info.path, ignore_errors=True)  # a collection that failed to open is not left half-made
        raise
    if is_new:
        _write_info(info)
    return pipeline
