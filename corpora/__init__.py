"""Text corpora loaders: BEIR benchmarks, PubMedQA, files on disk, and the pydoc demo corpus.

Ingestion sources yield :data:`LoadItem` values (a :class:`~heterag.documents.Document` or an
:class:`ItemError`) so one bad item never aborts a load; benchmark loaders return a
:class:`RetrievalDataset`.
"""

from .base import ItemError, LoadItem, RetrievalDataset, default_data_dir
from .beir import is_beir_dir, iter_beir_corpus, load_beir
from .files import iter_path
from .markdown import parse_markdown
from .pubmedqa import PubMedQA, PubMedQAQuestion, load_pubmedqa
from .pydoc_topics import load_pydoc_topics, split_rest_sections

__all__ = [
    "ItemError",
    "LoadItem",
    "PubMedQA",
    "PubMedQAQuestion",
    "RetrievalDataset",
    "default_data_dir",
    "is_beir_dir",
    "iter_beir_corpus",
    "iter_path",
    "load_beir",
    "load_pubmedqa",
    "load_pydoc_topics",
    "parse_markdown",
    "split_rest_sections",
]
