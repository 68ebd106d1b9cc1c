"""Knowledge data model: documents, their sections, and generation chunks.

Ids are content hashes, so writing the same knowledge twice produces the same ids
and stores can treat writes as idempotent upserts.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from heterag.core.errors import InvalidInputError
from heterag.core.images import ImageRef, load_image

#: Metadata values every store can hold and filter on.
MetadataValue = str | int | float | bool

#: Default upper bound on a document's text (UTF-8 bytes). Larger inputs are
#: almost always a mistake (a log file, a concatenated dump) and would stall ingest.
DEFAULT_MAX_DOCUMENT_BYTES = 10 * 1024 * 1024

#: Metadata keys the pipeline writes on every stored chunk (filterable, e.g. ``{"doc_id": ...}``).
RESERVED_METADATA_KEYS = frozenset({
    "doc_id", "chunk_index", "section_index", "title", "heading", "view",
    "image_sha256", "image_path", "image_width", "image_height", "n_chunks",
})


def content_hash(*parts: Any, length: int = 32) -> str:
    """Stable hex digest of JSON-serialisable parts (order matters)."""
    payload = json.dumps(parts, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:length]


def file_sha256(path: Any) -> str:
    """SHA-256 (hex, 64 characters) of a file's bytes, read in 1 MiB blocks; raises :class:`OSError` if unreadable.

    Documents read from files carry it as ``metadata["file_sha256"]``: the pipeline uses it to keep a
    byte-identical copy of a stored file (another folder, another name) out of a collection.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def validate_metadata(metadata: Mapping[str, Any], where: str = "metadata") -> dict[str, MetadataValue]:
    """Check that metadata is a flat mapping of str -> str/int/float/bool that every store can hold.

    Floats must be finite and ints must fit in 64 bits (stores would otherwise drop or
    silently convert them).
    """
    out: dict[str, MetadataValue] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise InvalidInputError(f"{where}: keys must be non-empty strings, got {key!r}")
        if not isinstance(value, bool | int | float | str):
            raise InvalidInputError(
                f"{where}[{key!r}]: values must be str, int, float or bool, got {type(value).__name__}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInputError(f"{where}[{key!r}] is not a finite number")
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise InvalidInputError(f"{where}[{key!r}] does not fit in 64 bits")
        out[key] = value
    return out


@dataclass(frozen=True)
class Section:
    """A run of text under a heading path, e.g. ``("Methods", "Participants")``."""

    text: str
    heading: tuple[str, ...] = ()


@dataclass(frozen=True)
class Document:
    """A unit of knowledge: a title, sections of text and optionally an image.

    An image item (a radiograph and its report, a photo and its caption) has ``image``;
    its text may then be empty. Build with :meth:`Document.create`, which validates input
    and derives the id from the content (image bytes included) when none is given.
    """

    id: str
    title: str
    sections: tuple[Section, ...]
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)
    image: ImageRef | None = None

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections)

    @classmethod
    def create(
        cls,
        text: str | None = None,
        *,
        title: str = "",
        sections: list[Section] | tuple[Section, ...] | None = None,
        id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        source: str | None = None,
        max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
        image: Any = None,
    ) -> Document:
        """Validate and build a document from plain ``text`` or from ``sections``, and/or an ``image``.

        ``image`` is an :class:`~heterag.core.images.ImageRef` or anything :func:`~heterag.core.images.load_image`
        accepts (path, bytes, PIL image, array); with an image, text is optional.
        ``source`` names where the document came from and is used in error messages.
        """
        label = source or (f"document {id!r}" if id else "document")
        ref = load_image(image, source=label) if image is not None else None
        if text is not None and sections is not None:
            raise InvalidInputError(f"{label}: give exactly one of text or sections")
        if text is None and sections is None:
            if ref is None:
                raise InvalidInputError(f"{label}: give text, sections or an image")
            sections = ()
        if sections is None:
            if not isinstance(text, str):
                raise InvalidInputError(f"{label}: text must be a string, got {type(text).__name__}")
            sections = (Section(text=text),)
        secs: list[Section] = []
        for s in sections:
            if not isinstance(s.text, str):
                raise InvalidInputError(f"{label}: section text must be a string")
            if s.text.strip():
                secs.append(Section(text=s.text.strip(), heading=tuple(h.strip() for h in s.heading if h.strip())))
        if not secs and ref is None:
            raise InvalidInputError(f"{label}: text is empty or whitespace only")
        size = sum(len(s.text.encode("utf-8")) for s in secs)
        if size > max_bytes:
            raise InvalidInputError(
                f"{label}: text is {size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.1f} MiB limit per document "
                "(split it, or raise max_document_bytes)"
            )
        if "\x00" in "".join(s.text for s in secs):
            raise InvalidInputError(f"{label}: text contains NUL bytes (binary file?)")
        title = (title or "").strip()
        meta = validate_metadata(metadata or {}, where=f"{label} metadata")
        clash = RESERVED_METADATA_KEYS.intersection(meta)
        if clash:
            raise InvalidInputError(f"{label}: metadata keys {sorted(clash)} are reserved for heterag; rename them")
        parts: list[Any] = ["doc", title, [[list(s.heading), s.text] for s in secs]]
        if ref is not None:
            parts.append(ref.sha256)
        doc_id = id if id else content_hash(*parts)
        if not isinstance(doc_id, str) or not doc_id.strip():
            raise InvalidInputError(f"{label}: id must be a non-empty string")
        return cls(id=doc_id, title=title, sections=tuple(secs), metadata=meta, image=ref)


@dataclass(frozen=True)
class ItemError:
    """One input item (file, JSON line, record, document) that could not be used, and why.

    Loaders yield these instead of raising and the pipeline reports them, so one bad
    item never aborts a whole ingest; ``str()`` gives ``"source: message"``.
    """

    source: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


@dataclass(frozen=True)
class Chunk:
    """A short generation chunk: the text the generator receives.

    ``start``/``end`` are character offsets into its section's text; ``token_start``/``token_end``
    are offsets in the section's token sequence (the encoder's tokenizer, no special tokens).
    """

    id: str
    doc_id: str
    index: int  # position among the document's chunks
    text: str
    title: str
    heading: tuple[str, ...]
    section_index: int
    start: int
    end: int
    token_start: int
    token_end: int
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return self.token_end - self.token_start

    @staticmethod
    def make_id(doc_id: str, index: int, text: str, title: str = "", heading: tuple[str, ...] = (),
                metadata: Mapping[str, MetadataValue] | None = None) -> str:
        """Content hash of everything that ends up in the stored record."""
        return content_hash("chunk", doc_id, index, title, list(heading), text, dict(metadata or {}))
