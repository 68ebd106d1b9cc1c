"""Image corpora on disk, all yielding :class:`~corpora.annotated.AnnotatedImage`: the names of the
image layouts of :mod:`corpora.layouts`, gathered in one place.

Each layout is its own module behind the :class:`~corpora.layouts.LayoutReader` protocol, tried
in the order of :data:`~corpora.layouts.LAYOUT_READERS` (:func:`detect_image_layout` names the
layout, :func:`iter_image_layout` reads it):

``captions`` (:mod:`corpora.layouts.captions`)
    A folder with ``captions.jsonl`` / ``captions.csv`` (or Hugging Face imagefolder's
    ``metadata.jsonl`` / ``metadata.csv``) naming each image and its caption. See :func:`iter_caption_folder`.
``image_folder`` (:mod:`corpora.layouts.image_folder`)
    Any other folder holding images: every image, recursively, text empty. See :func:`iter_image_folder`.
``coco`` (:mod:`corpora.layouts.coco`)
    The COCO 2017 layout: ``annotations/captions_<split>.json`` and/or
    ``annotations/instances_<split>.json`` with images in ``<split>/``. See :func:`iter_coco`.
``vqa_rad`` (:mod:`corpora.layouts.vqa_rad`)
    VQA-RAD: ``vqa_rad.json`` (question–answer records) and ``images/``. See :func:`iter_vqa_rad`
    and :func:`split_vqa_rad`.
``medmnist`` (:mod:`corpora.layouts.medmnist`)
    A MedMNIST ``.npz`` (``<split>_images`` / ``<split>_labels``). See :func:`iter_medmnist`.

Every loader validates its input: a problem with the layout as a whole (missing folder,
unreadable annotation file, CSV without a caption column) raises
:class:`~heterag.core.errors.InvalidInputError` at call time, naming the file; a problem with one
item (missing or corrupt image, a line that is not JSON, a malformed annotation) is yielded as
an :class:`~heterag.core.documents.ItemError` naming the file and line/record, and the rest loads.
Images are opened (and validated) lazily, one item at a time, through
:class:`~heterag.core.images.ImageRef`.
"""

from __future__ import annotations

from .layouts import (
    LAYOUT_CAPTIONS,
    LAYOUT_COCO,
    LAYOUT_IMAGE_FOLDER,
    LAYOUT_MEDMNIST,
    LAYOUT_VQA_RAD,
    LAYOUTS,
    detect_image_layout,
    iter_image_layout,
)
from .layouts._common import IMAGE_SUFFIXES, ImageItem
from .layouts.captions import CAPTION_FILES, CAPTION_KEYS, IMAGE_KEYS, find_captions_file, iter_caption_folder
from .layouts.coco import (
    COCO_ANNOTATIONS_DIR,
    COCO_DEFAULT_SPLIT,
    coco_box,
    decode_segmentation,
    iter_coco,
    mask_box,
    polygon_mask,
    rle_decode,
    rle_encode,
    rle_from_string,
    rle_to_string,
)
from .layouts.image_folder import iter_image_folder
from .layouts.medmnist import MEDMNIST_DEFAULTS, iter_medmnist, load_medmnist
from .layouts.vqa_rad import VQA_RAD_ANSWER_TYPES, VQA_RAD_FILE, VQA_RAD_IMAGES, iter_vqa_rad, load_vqa_rad, split_vqa_rad

__all__ = [
    "CAPTION_FILES",
    "CAPTION_KEYS",
    "COCO_ANNOTATIONS_DIR",
    "COCO_DEFAULT_SPLIT",
    "IMAGE_KEYS",
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "LAYOUT_CAPTIONS",
    "LAYOUT_COCO",
    "LAYOUT_IMAGE_FOLDER",
    "LAYOUT_MEDMNIST",
    "LAYOUT_VQA_RAD",
    "MEDMNIST_DEFAULTS",
    "VQA_RAD_ANSWER_TYPES",
    "VQA_RAD_FILE",
    "VQA_RAD_IMAGES",
    "ImageItem",
    "coco_box",
    "decode_segmentation",
    "detect_image_layout",
    "find_captions_file",
    "iter_caption_folder",
    "iter_coco",
    "iter_image_folder",
    "iter_image_layout",
    "iter_medmnist",
    "iter_vqa_rad",
    "load_medmnist",
    "load_vqa_rad",
    "mask_box",
    "polygon_mask",
    "rle_decode",
    "rle_encode",
    "rle_from_string",
    "rle_to_string",
    "split_vqa_rad",
]
