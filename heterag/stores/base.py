"""The vector-store protocol every backend implements.

A store holds :class:`Record` s (id, unit-norm vector, text, flat metadata) and a
:class:`Fingerprint` describing how its vectors were made. Scores are cosine
similarities (higher is better). Upserts are idempotent: writing a record with an
existing id replaces it. Each call is atomic: after a crash a store holds either
all of a batch or none of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from heterag.core.documents import MetadataValue, validate_metadata
from heterag.core.errors import DimensionMismatchError, FingerprintMismatchError, InvalidInputError


@dataclass(frozen=True)
class Fingerprint:
    """How a collection's vectors were produced; two collections are compatible iff equal."""

    model: str
    dim: int
    view: str
    adapter: str = "none"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Fingerprint:
        data = json.loads(text)
        return cls(
            model=data["model"], dim=int(data["dim"]), view=data["view"],
            adapter=data.get("adapter", "none"), extra=data.get("extra", {}),
        )

    def describe(self) -> str:
        return f"model={self.model} dim={self.dim} view={self.view} adapter={self.adapter}"

    def differences(self, other: Fingerprint) -> list[str]:
        """Human-readable ``field: mine != theirs`` for every setting that differs."""
        mine, theirs = _flat(asdict(self)), _flat(asdict(other))
        return [f"{k}: {mine.get(k)!r} != {theirs.get(k)!r}" for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]

    def check(self, other: Fingerprint, where: str = "collection") -> None:
        """Raise :class:`FingerprintMismatchError` if ``other`` differs from this one."""
        if self != other:
            raise FingerprintMismatchError(
                f"{where} was built with [{self.describe()}] but is being opened with [{other.describe()}] "
                f"({'; '.join(self.differences(other))}); use the same encoder and view settings, or a new collection"
            )


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass(frozen=True)
class Record:
    id: str
    vector: np.ndarray | None  # float32 (dim,); None when fetched without vectors
    text: str
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoredRecord:
    record: Record
    score: float


@runtime_checkable
class VectorStore(Protocol):
    """Minimal interface between the pipeline and a vector database."""

    name: str

    @property
    def dim(self) -> int | None:
        """Vector dimension, or None while the store is empty and has no fingerprint."""

    def fingerprint(self) -> Fingerprint | None: ...

    def set_fingerprint(self, fp: Fingerprint) -> None:
        """Record ``fp``; raises FingerprintMismatchError if a different one is already stored."""

    def upsert(self, records: Sequence[Record]) -> None: ...

    def query(self, vector: np.ndarray, k: int = 10, where: Mapping[str, Any] | None = None) -> list[ScoredRecord]: ...

    def get(
        self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None, include_vectors: bool = False
    ) -> list[Record]:
        """Records by id (missing ids are skipped; order follows ``ids``) and/or filter."""

    def delete(self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None) -> int:
        """Delete by ids and/or filter; returns how many records were removed."""

    def ids(self, where: Mapping[str, Any] | None = None) -> list[str]:
        """Ids of every record (matching ``where``) without their texts or vectors."""

    def count(self) -> int: ...

    def close(self) -> None: ...


@runtime_checkable
class BatchQuery(Protocol):
    """A store that searches several query vectors in one call (FAISS and Chroma take a query matrix):
    concurrent searches are merged into one such call (:mod:`heterag.retrieval.search_batching`)."""

    def query_many(self, vectors: np.ndarray, k: int = 10, where: Mapping[str, Any] | None = None) -> list[list[ScoredRecord]]:
        """For each row of float32 ``vectors`` ``(n, dim)``, what :meth:`VectorStore.query` gives for it with
        the same ``k`` and ``where`` (the same records in the same order, scores equal up to float rounding);
        a list of ``n`` lists. Raises what ``query`` raises for a bad row, ``k`` or filter."""


@runtime_checkable
class RankedQuery(Protocol):
    """A store that can rank without fetching: ids and scores of the nearest records, and vectors by id.
    Hybrid retrieval ranks 100 candidates of each kind and fetches texts only for the few it returns
    (:meth:`heterag.retrieval.retriever.Retriever.search`); a store without these methods is asked
    :meth:`VectorStore.query` and ``get`` instead, with the same results."""

    def query_ids(self, vector: np.ndarray, k: int = 10, where: Mapping[str, Any] | None = None) -> list[tuple[str, float]]:
        """``(id, score)`` of what :meth:`VectorStore.query` returns for the same arguments, in its order, without
        texts or metadata."""

    def vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """float32 vectors ``(dim,)`` of these ids (missing ids left out), without texts or metadata."""


@runtime_checkable
class KeywordSearch(Protocol):
    """A store that also answers keyword (BM25) queries over the same records, kept in step with its
    vectors: :class:`heterag.stores.keyworded.KeywordedStore` around any store, or a backend with full-text
    search in the same database (``pgvector``: PostgreSQL full-text search)."""

    def keyword_query(self, text: str, k: int = 10, where: Mapping[str, Any] | None = None) -> list[ScoredRecord]:
        """Top-``k`` records for ``text`` by keyword score (> 0, higher is better), best first; ``[]`` when the
        text has no keyword terms (only stopwords or punctuation)."""

    def keyword_scores(self, text: str, ids: Sequence[str]) -> dict[str, float]:
        """Keyword scores of ``text`` for exactly these ids (0 where no term matches)."""


def as_matrix(records: Sequence[Record], dim: int | None, store: str) -> np.ndarray:
    """Stack record vectors into float32 (n, dim), validating shape and values."""
    rows = []
    for r in records:
        if not isinstance(r.id, str) or not r.id:
            raise InvalidInputError(f"{store}: record ids must be non-empty strings, got {r.id!r}")
        if r.vector is None:
            raise InvalidInputError(f"{store}: record {r.id!r} has no vector")
        v = np.asarray(r.vector, dtype=np.float32)
        if v.ndim != 1:
            raise DimensionMismatchError(f"{store}: record {r.id!r} vector must be 1-D, got shape {v.shape}")
        rows.append(v)
    if len({v.shape[0] for v in rows}) > 1:
        raise DimensionMismatchError(f"{store}: vectors in one batch have different dimensions")
    mat = np.stack(rows) if rows else np.zeros((0, dim or 0), dtype=np.float32)
    if dim is not None and rows and mat.shape[1] != dim:
        raise DimensionMismatchError(f"{store}: vectors have dimension {mat.shape[1]}, this store holds dimension {dim}")
    if rows and not np.isfinite(mat).all():
        raise InvalidInputError(f"{store}: vectors contain NaN or infinity")
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        raise InvalidInputError(f"{store}: duplicate ids in one upsert batch")
    return mat


def record_metadata(record: Record, store: str, label: str | None = None) -> dict[str, MetadataValue]:
    """A record's validated metadata, after checking that its text is a string (every backend's upsert).

    ``store`` names the store in the text error, ``label`` (default ``store``) in metadata errors.

    Raises:
        InvalidInputError: the text is not a string, or the metadata is not flat scalar values.
    """
    if not isinstance(record.text, str):
        raise InvalidInputError(f"{store}: record {record.id!r} text must be a string")
    return validate_metadata(record.metadata or {}, where=f"{label or store}: record {record.id!r} metadata")


def check_query_matrix(vectors: np.ndarray, dim: int | None, store: str) -> np.ndarray:
    """Float32 ``(n, dim)`` query vectors, validated row by row as :func:`check_query_vector` does."""
    m = np.asarray(vectors, dtype=np.float32)
    if m.ndim != 2:
        raise DimensionMismatchError(f"{store}: query vectors must be a 2-D matrix, got shape {m.shape}")
    for row in m:
        check_query_vector(row, dim, store)
    return m


def check_query_vector(vector: np.ndarray, dim: int | None, store: str) -> np.ndarray:
    q = np.asarray(vector, dtype=np.float32)
    if q.ndim != 1:
        raise DimensionMismatchError(f"{store}: query vector must be 1-D, got shape {q.shape}")
    if dim is not None and q.shape[0] != dim:
        raise DimensionMismatchError(f"{store}: query has dimension {q.shape[0]}, this store holds dimension {dim}")
    if not np.isfinite(q).all():
        raise InvalidInputError(f"{store}: query vector contains NaN or infinity")
    return q
