"""Corpus loaders: BEIR benchmarks, PubMedQA, text files on disk, the pydoc demo corpus, image
layouts (captions folders, COCO 2017, VQA-RAD, MedMNIST ``.npz``, image folders) and the
built-in ``synthetic_scenes`` generator.

Ingestion sources yield :data:`LoadItem` values (a :class:`~heterag.core.documents.Document` or an
:class:`ItemError`) so one bad item never aborts a load; benchmark loaders return a
:class:`RetrievalDataset`.
"""

from .annotated import AnnotatedImage, ObjectAnnotation, QAPair
from .base import ItemError, LoadItem, RetrievalDataset, default_data_dir
from .beir import is_beir_dir, iter_beir_corpus, load_beir
from .files import iter_path
from .image_layouts import (
    detect_image_layout,
    iter_caption_folder,
    iter_coco,
    iter_image_folder,
    iter_image_layout,
    iter_medmnist,
    iter_vqa_rad,
    load_medmnist,
    load_vqa_rad,
    split_vqa_rad,
)
from .markdown import parse_markdown
from .pubmedqa import PubMedQA, PubMedQAQuestion, load_pubmedqa
from .pydoc_topics import load_pydoc_topics, split_rest_sections
from .synthetic_scenes import Scene, SceneObject, generate_scenes, iter_synthetic_documents, render_scene, write_caption_folder

__all__ = [
    "AnnotatedImage",
    "ObjectAnnotation",
    "QAPair",
    "Scene",
    "SceneObject",
    "detect_image_layout",
    "generate_scenes",
    "iter_caption_folder",
    "iter_coco",
    "iter_image_folder",
    "iter_image_layout",
    "iter_medmnist",
    "iter_synthetic_documents",
    "iter_vqa_rad",
    "load_medmnist",
    "load_vqa_rad",
    "render_scene",
    "split_vqa_rad",
    "write_caption_folder",
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
