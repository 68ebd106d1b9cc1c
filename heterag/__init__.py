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

from .errors import (
    CollectionLockedError,
    CollectionNotFoundError,
    DimensionMismatchError,
    FingerprintMismatchError,
    GeneratorError,
    HeteragError,
    InvalidInputError,
    UnknownNameError,
)

#: Where each public name lives. They are imported on first use (PEP 562), so ``import heterag`` (and
#: ``heterag --help``, or any command that needs no model) loads neither numpy-heavy modules nor torch.
_LAZY = {
    "chunking": ("DEFAULT_CHUNK_TOKENS", "ChunkedDocument", "chunk_document"),
    "collections": ("CollectionInfo", "collection_info", "heterag_home", "list_collections", "load_text_encoder",
                    "open_collection"),
    "content": ("ContentDiff", "ContentFingerprint", "content_fingerprint"),
    "documents": ("Chunk", "Document", "ItemError", "Section", "content_hash"),
    "evaluation": ("evaluate", "rank_documents"),
    "fusion": ("Fusion",),
    "generators": ("ExtractiveGenerator", "Generator", "OpenAIGenerator", "make_generator"),
    "guards": ("DroppedHit", "HitFilter", "IngestGuard", "IngestItem", "Retrieval", "RetrievalQuery", "Verdict"),
    "images": ("ImageFiles", "ImageRef", "load_image"),
    "locking": ("WriteLock",),
    "pipeline": ("IngestReport", "Pipeline"),
    "results": ("Answer", "Citation", "Hit", "SourceRef"),
    "stores": ("STORES", "Fingerprint", "Record", "ScoredRecord", "VectorStore", "open_store"),
    "views": ("VIEWS", "HeteragView", "LateView", "NaiveView", "RetrievalView", "make_view"),
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
    from .chunking import DEFAULT_CHUNK_TOKENS, ChunkedDocument, chunk_document
    from .collections import (
        CollectionInfo,
        collection_info,
        heterag_home,
        list_collections,
        load_text_encoder,
        open_collection,
    )
    from .content import ContentDiff, ContentFingerprint, content_fingerprint
    from .documents import Chunk, Document, ItemError, Section, content_hash
    from .evaluation import evaluate, rank_documents
    from .fusion import Fusion
    from .generators import ExtractiveGenerator, Generator, OpenAIGenerator, make_generator
    from .guards import DroppedHit, HitFilter, IngestGuard, IngestItem, Retrieval, RetrievalQuery, Verdict
    from .images import ImageFiles, ImageRef, load_image
    from .locking import WriteLock
    from .pipeline import IngestReport, Pipeline
    from .results import Answer, Citation, Hit, SourceRef
    from .stores import STORES, Fingerprint, Record, ScoredRecord, VectorStore, open_store
    from .views import VIEWS, HeteragView, LateView, NaiveView, RetrievalView, make_view

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
    "Verdict", "WriteLock", "SourceRef",
]
