"""Content fingerprint of a collection: one digest over everything it holds.

Record ids are content hashes (a chunk's id covers its document, position, title, heading,
text and metadata; an image record's id covers its document and the image's SHA-256; image
files are named by their SHA-256), so hashing the sorted ids of the text store, the image
store and the image folder identifies the collection's content. Only ids are read (no texts,
no vectors), which keeps it cheap: reading and hashing the ids of 100k records took 0.13 s
(FAISS store) and 0.18 s (Chroma) on the 2-core development machine (``eval/fingerprint_cost.py``).

:func:`content_fingerprint` returns a :class:`ContentFingerprint` that also keeps the id sets,
so two fingerprints can explain their difference (:meth:`ContentFingerprint.diff`): which
records appeared or vanished, and of which documents.

The keyword index beside the text store (:mod:`heterag.stores.keyword`) is covered too: a keyword entry
is derived from its record (same id, same text), so an index in step with the store adds nothing, and a
collection's fingerprint is the same with a keyword index, with a store's own full-text index or without
one (a migrated or rebuilt collection compares equal to its source). An index out of step adds its
difference as parts: ``keywords_extra`` (ids only in the keyword index: an entry a delete left behind)
and ``keywords_missing`` (text ids the keyword index lacks), so a stray keyword entry changes the digest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from heterag.pipeline.pipeline import Pipeline


@dataclass(frozen=True)
class ContentDiff:
    """What changed between two fingerprints (``after`` minus ``before`` and the reverse)."""

    added: dict[str, frozenset[str]] = field(default_factory=dict)  # part -> ids only in ``after``
    removed: dict[str, frozenset[str]] = field(default_factory=dict)  # part -> ids only in ``before``

    @property
    def empty(self) -> bool:
        return not any(self.added.values()) and not any(self.removed.values())

    def summary(self) -> str:
        if self.empty:
            return "no difference"
        parts = [f"{part}: +{len(self.added.get(part, ()))} -{len(self.removed.get(part, ()))}"
                 for part in sorted(set(self.added) | set(self.removed))
                 if self.added.get(part) or self.removed.get(part)]
        return "; ".join(parts)


@dataclass(frozen=True)
class ContentFingerprint:
    """``digest``: SHA-256 hex over the sorted ids of each part; ``parts``: the id sets
    (``text`` records, ``image`` records, image ``files``)."""

    digest: str
    parts: dict[str, frozenset[str]]

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.parts.items()}

    def diff(self, after: ContentFingerprint) -> ContentDiff:
        keys = set(self.parts) | set(after.parts)
        return ContentDiff(
            added={k: frozenset(after.parts.get(k, frozenset()) - self.parts.get(k, frozenset())) for k in keys},
            removed={k: frozenset(self.parts.get(k, frozenset()) - after.parts.get(k, frozenset())) for k in keys},
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ContentFingerprint) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)


def parts_digest(parts: dict[str, frozenset[str]]) -> str:
    """SHA-256 (hex) over named sets of ids (``{"text": ids, "images": ids, ...}``), independent of their order:
    the digest of :func:`content_fingerprint`, also used to compare a migrated copy with its source."""
    h = hashlib.sha256()
    for name in sorted(parts):
        h.update(f"[{name}:{len(parts[name])}]".encode())
        for i in sorted(parts[name]):
            h.update(i.encode("utf-8"))
            h.update(b"\n")
    return h.hexdigest()


def keyword_ids(store: object) -> frozenset[str] | None:
    """The ids in ``store``'s keyword index: a :class:`~heterag.stores.keyworded.KeywordedStore`'s index, or a
    store's own full-text index that lists them (``keyword_ids()``); None when there is none to read."""
    index = getattr(store, "keywords", None)
    if index is not None and hasattr(index, "ids"):
        return frozenset(index.ids())
    listing = getattr(store, "keyword_ids", None)
    return frozenset(listing()) if callable(listing) else None


def keyword_parts(store: object, text_ids: frozenset[str]) -> dict[str, frozenset[str]]:
    """``keywords_extra`` / ``keywords_missing``: how ``store``'s keyword index differs from ``text_ids`` (each
    only when not empty, see the module docs)."""
    indexed = keyword_ids(store)
    if indexed is None:
        return {}
    out = {"keywords_extra": indexed - text_ids, "keywords_missing": text_ids - indexed}
    return {k: v for k, v in out.items() if v}


def content_fingerprint(pipeline: Pipeline) -> ContentFingerprint:
    """Fingerprint of everything ``pipeline``'s collection holds (text records, image records, image files, and
    how its keyword index differs from the text records, if it does)."""
    parts: dict[str, frozenset[str]] = {"text": frozenset(pipeline.store.ids())}
    parts.update(keyword_parts(pipeline.store, parts["text"]))
    if pipeline.image_store is not None:
        parts["image"] = frozenset(pipeline.image_store.ids())
    if pipeline.image_files is not None:
        parts["files"] = frozenset(pipeline.image_files.shas())
    return ContentFingerprint(parts_digest(parts), parts)
