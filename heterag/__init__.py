"""HeteRAG: retrieval-augmented generation with heterogeneous chunk representations.

Short *generation chunks* go to the generator; each chunk is retrieved through a
richer *retrieval view* (neighbours, section path, title, or late-chunked context).

Public API (the sandbox and the UI use only these names)::

    from heterag import open_collection, Document
    rag = open_collection("notes")
    rag.ingest([Document.create("...", title="...")])
    answer = rag.answer("question?")
    rag.ingest([Document.create("a chest X-ray, left lower lobe opacity", image="xray.png")])
    hits = rag.retrieve("pneumonia?", image="query.png")   # text, image, or both
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from heterag.core.errors import (
    CollectionLockedError,
    CollectionNotFoundError,
    DimensionMismatchError,
    FingerprintMismatchError,
    GeneratorError,
    HeteragError,
    InvalidInputError,
    KeywordIndexError,
    UnknownNameError,
)

#: Where each public name lives. They are imported on first use (PEP 562), so ``import heterag`` (and
#: ``heterag --help``, or any command that needs no model) loads neither numpy-heavy modules nor torch.
_LAZY = {
    "ingest.chunking": ("DEFAULT_CHUNK_TOKENS", "ChunkedDocument", "chunk_document"),
    "collections.collection": ("CollectionInfo", "collection_info", "list_collections", "open_collection"),
    "core.home": ("heterag_home",),
    "encoding.text_encoder": ("load_text_encoder",),
    "encoding.image_encoders": ("ImageEncoder", "load_image_encoder"),
    "pipeline.content": ("ContentDiff", "ContentFingerprint", "content_fingerprint"),
    "core.documents": ("Chunk", "Document", "ItemError", "Section", "content_hash"),
    "evaluation.retrieval": ("evaluate", "rank_documents"),
    "retrieval.fusion": ("Fusion",),
    "retrieval.hybrid": ("RETRIEVAL_MODES", "HybridFusion"),
    "generators": ("ExtractiveGenerator", "Generator", "OpenAIGenerator", "make_generator"),
    "ingest.guards": ("IngestGuard", "IngestItem", "Verdict"),
    "retrieval.hit_filters": ("DroppedHit", "HitFilter", "Retrieval", "RetrievalQuery"),
    "core.images": ("ImageFiles", "ImageRef", "load_image"),
    "core.locking": ("WriteLock",),
    "pipeline.pipeline": ("IngestReport", "Pipeline"),
    "core.results": ("Answer", "Citation", "Hit", "SourceRef"),
    "stores": ("STORES", "Fingerprint", "Record", "ScoredRecord", "VectorStore", "open_store", "parse_store_url"),
    "ingest.views": ("VIEWS", "HeteragView", "LateView", "NaiveView", "RetrievalView", "make_view"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'heterag' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


if TYPE_CHECKING:  # what static tools see
    from heterag.collections.collection import CollectionInfo, collection_info, list_collections, open_collection
    from heterag.core.documents import Chunk, Document, ItemError, Section, content_hash
    from heterag.core.home import heterag_home
    from heterag.core.images import ImageFiles, ImageRef, load_image
    from heterag.core.locking import WriteLock
    from heterag.core.results import Answer, Citation, Hit, SourceRef
    from heterag.encoding.image_encoders import ImageEncoder, load_image_encoder
    from heterag.encoding.text_encoder import load_text_encoder
    from heterag.evaluation.retrieval import evaluate, rank_documents
    from heterag.generators import ExtractiveGenerator, Generator, OpenAIGenerator, make_generator
    from heterag.ingest.chunking import DEFAULT_CHUNK_TOKENS, ChunkedDocument, chunk_document
    from heterag.ingest.guards import IngestGuard, IngestItem, Verdict
    from heterag.ingest.views import VIEWS, HeteragView, LateView, NaiveView, RetrievalView, make_view
    from heterag.pipeline.content import ContentDiff, ContentFingerprint, content_fingerprint
    from heterag.pipeline.pipeline import IngestReport, Pipeline
    from heterag.retrieval.fusion import Fusion
    from heterag.retrieval.hit_filters import DroppedHit, HitFilter, Retrieval, RetrievalQuery
    from heterag.retrieval.hybrid import RETRIEVAL_MODES, HybridFusion
    from heterag.stores import STORES, Fingerprint, Record, ScoredRecord, VectorStore, open_store, parse_store_url

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_CHUNK_TOKENS", "Fusion", "ImageFiles", "ImageRef", "load_image", "STORES", "VIEWS", "Answer", "Chunk", "ChunkedDocument", "Citation",
    "CollectionNotFoundError", "DimensionMismatchError", "Document", "ExtractiveGenerator", "Fingerprint",
    "FingerprintMismatchError", "Generator", "GeneratorError", "HeteragError", "HeteragView", "Hit",
    "IngestReport", "InvalidInputError", "ItemError", "LateView", "NaiveView", "OpenAIGenerator", "Pipeline", "Record",
    "RetrievalView", "ScoredRecord", "Section", "UnknownNameError", "VectorStore", "chunk_document",
    "content_hash", "evaluate", "heterag_home", "list_collections", "load_text_encoder", "make_generator",
    "make_view", "open_collection", "open_store", "rank_documents",
    "CollectionInfo", "collection_info", "ContentDiff", "ContentFingerprint", "content_fingerprint",
    "CollectionLockedError", "DroppedHit", "HitFilter", "IngestGuard", "IngestItem", "Retrieval", "RetrievalQuery",
    "Verdict", "WriteLock", "SourceRef", "ImageEncoder", "load_image_encoder", "parse_store_url",
    "HybridFusion", "KeywordIndexError", "RETRIEVAL_MODES",
]
