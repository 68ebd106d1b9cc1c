"""The ``vqa_rad`` layout: VQA-RAD, ``vqa_rad.json`` (question–answer records) and ``images/``.

One item per image with its QA pairs. See :func:`iter_vqa_rad` and :func:`split_vqa_rad`.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from heterag.core.documents import ItemError, MetadataValue
from heterag.core.errors import InvalidInputError

from ..annotated import AnnotatedImage, QAPair
from ..base import default_data_dir, item_error, require_dir
from ._common import (
    IMAGE_SUFFIXES,
    ImageItem,
    _collect,
    _image_limits,
    _is_hidden,
    _load_image,
)

logger = logging.getLogger(__name__)

VQA_RAD_FILE = "vqa_rad.json"
VQA_RAD_IMAGES = "images"
VQA_RAD_ANSWER_TYPES = frozenset({"CLOSED", "OPEN"})


def iter_vqa_rad(
    path: str | Path | None = None, *, max_pixels: int | None = None, max_bytes: int | None = None
) -> Iterator[ImageItem]:
    """One item per image of VQA-RAD (default folder ``<data dir>/vqa_rad``), sorted by file name.

    ``vqa_rad.json`` (a list of records with ``image_name``, ``question``, ``answer``,
    ``answer_type`` CLOSED/OPEN, ``question_type``, ``image_organ``, ``phrase_type``, ``qid``) is
    read once at call time; images (``images/<image_name>``) are loaded lazily.

    - ``id``: ``"vqa-rad-<file stem>"``; ``metadata``: ``{"organ": image_organ}`` (absent for an
      image no question is about); ``metadata["source"]`` is ``images/<file name>``.
    - ``qa``: the image's :class:`QAPair` in file order, ``kind`` = ``answer_type`` (stripped,
      upper case), metadata ``question_type``, ``phrase_type`` (``test_*`` marks the official test
      questions) and ``qid``. Numeric answers become strings.
    - ``text``: one line ``"Question: <q> Answer: <a>"`` per QA pair: the knowledge an image
      carries in a RAG knowledge base.

    Images in ``images/`` that no question is about are image-only items (the distributed folder
    has one: 315 images, 314 with questions). A malformed record is an :class:`ItemError` naming
    ``vqa_rad.json:[<index>]`` and only that question is left out; a referenced image that is
    missing or unusable is an :class:`ItemError` naming ``images/<file name>``.
    """
    root = require_dir(Path(path) if path is not None else default_data_dir() / "vqa_rad", "VQA-RAD folder")
    qa_path = root / VQA_RAD_FILE
    image_dir = require_dir(root / VQA_RAD_IMAGES, "VQA-RAD images folder")
    if not qa_path.is_file():
        raise InvalidInputError(f"VQA-RAD file {qa_path} does not exist")
    try:
        records = json.loads(qa_path.read_bytes())
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{qa_path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"{qa_path}: not valid UTF-8") from None
    if not isinstance(records, list):
        raise InvalidInputError(f"{qa_path}: expected a JSON list of question records, got {type(records).__name__}")
    by_image: dict[str, list[QAPair]] = defaultdict(list)
    organs: dict[str, Counter[str]] = defaultdict(Counter)
    errors: list[ItemError] = []
    for index, record in enumerate(records):
        source = f"{VQA_RAD_FILE}:[{index}]"
        try:
            name, organ, pair = _vqa_rad_record(record)
        except InvalidInputError as exc:
            errors.append(item_error(source, exc))
            continue
        by_image[name].append(pair)
        if organ:
            organs[name][organ] += 1
    on_disk = {p.name for p in image_dir.iterdir() if p.is_file() and not _is_hidden(p.name)
               and p.suffix.lower() in IMAGE_SUFFIXES}
    logger.info(
        "%s: %d questions about %d images, %d image files, %d bad records",
        root, sum(len(v) for v in by_image.values()), len(by_image), len(on_disk), len(errors),
    )
    return _vqa_rad_items(image_dir, sorted(on_disk | set(by_image)), by_image, organs, errors,
                          _image_limits(max_pixels, max_bytes))


def _vqa_rad_record(record: Any) -> tuple[str, str, QAPair]:
    """Validate one VQA-RAD record: (image file name, organ, QA pair)."""
    if not isinstance(record, dict):
        raise InvalidInputError(f"expected an object, got {type(record).__name__}")
    name = record.get("image_name")
    if not isinstance(name, str) or not name.strip() or "/" in name or "\\" in name or name.strip() in (".", ".."):
        raise InvalidInputError(f"'image_name' must be a file name in {VQA_RAD_IMAGES}/, got {name!r}")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise InvalidInputError(f"'question' must be a non-empty string, got {question!r}")
    answer = record.get("answer")
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise InvalidInputError(f"'answer' must be a non-empty string or number, got {answer!r}")
    kind = record.get("answer_type")
    kind = kind.strip().upper() if isinstance(kind, str) else kind
    if kind not in VQA_RAD_ANSWER_TYPES:
        raise InvalidInputError(f"'answer_type' must be CLOSED or OPEN, got {record.get('answer_type')!r}")
    meta: dict[str, MetadataValue] = {}
    for key in ("question_type", "phrase_type"):
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            meta[key] = value.strip()
    qid = record.get("qid")
    if isinstance(qid, int | str) and not isinstance(qid, bool) and str(qid).strip():
        meta["qid"] = str(qid).strip()
    organ = record.get("image_organ")
    organ = organ.strip() if isinstance(organ, str) else ""
    return name.strip(), organ, QAPair(question=" ".join(question.split()), answer=" ".join(answer.split()),
                                        kind=kind, metadata=meta)


def _vqa_rad_items(
    image_dir: Path,
    names: list[str],
    by_image: Mapping[str, list[QAPair]],
    organs: Mapping[str, Counter[str]],
    errors: list[ItemError],
    limits: Mapping[str, int],
) -> Iterator[ImageItem]:
    yield from errors
    for name in names:
        rel = f"{VQA_RAD_IMAGES}/{name}"
        pairs = by_image.get(name, [])
        if not (image_dir / name).is_file():
            n = len(pairs)
            yield ItemError(rel, f"image file does not exist ({n} question{'' if n == 1 else 's'} in {VQA_RAD_FILE} "
                                 f"{'is' if n == 1 else 'are'} about it)")
            continue
        image = _load_image(image_dir / name, rel, limits)
        if isinstance(image, ItemError):
            yield image
            continue
        metadata: dict[str, MetadataValue] = {"source": rel}
        if organs.get(name):
            counted = organs[name].most_common()
            if len(counted) > 1:
                logger.warning("%s: questions give several organs %s; using %r", rel, dict(counted), counted[0][0])
            metadata["organ"] = counted[0][0]
        text = "\n".join(f"Question: {p.question} Answer: {p.answer}" for p in pairs)
        yield AnnotatedImage(id=f"vqa-rad-{Path(name).stem}", image=image, text=text, qa=tuple(pairs), metadata=metadata)


def load_vqa_rad(path: str | Path | None = None, *, strict: bool = False, **kwargs: Any) -> list[AnnotatedImage]:
    """All VQA-RAD items as a list (see :func:`iter_vqa_rad`).

    Item errors are logged as warnings and skipped; with ``strict=True`` the first one raises
    :class:`InvalidInputError` instead.
    """
    return _collect(iter_vqa_rad(path, **kwargs), strict)


def split_vqa_rad(
    items: Iterable[AnnotatedImage], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[AnnotatedImage], list[AnnotatedImage]]:
    """Split VQA-RAD items BY IMAGE into ``(knowledge base, test)``; no image is in both.

    Deterministic for a given ``seed`` and set of items (whatever their order): within each organ
    (``metadata["organ"]``), images with questions are ordered by id, shuffled with
    ``random.Random(seed)``, and ``round(test_fraction * n)`` of them go to test, so each organ is
    represented in proportion. Images without questions always go to the knowledge base. Both
    lists keep the input order.
    """
    if not isinstance(test_fraction, int | float) or not 0 < test_fraction < 1:
        raise InvalidInputError(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction!r}")
    items = list(items)
    ids: set[str] = set()
    groups: dict[str, list[str]] = defaultdict(list)
    for item in items:
        if not isinstance(item, AnnotatedImage):
            raise InvalidInputError(f"split_vqa_rad takes AnnotatedImage items, got {type(item).__name__} (drop ItemErrors first)")
        if item.id in ids:
            raise InvalidInputError(f"split_vqa_rad: duplicate item id {item.id!r}")
        ids.add(item.id)
        if item.qa:
            groups[str(item.metadata.get("organ", ""))].append(item.id)
    rng = random.Random(seed)
    test_ids: set[str] = set()
    for organ in sorted(groups):
        group = sorted(groups[organ])
        rng.shuffle(group)
        test_ids.update(group[: round(test_fraction * len(group))])
    kb = [item for item in items if item.id not in test_ids]
    test = [item for item in items if item.id in test_ids]
    logger.info("VQA-RAD split (seed %d): %d knowledge-base images, %d test images", seed, len(kb), len(test))
    return kb, test


class VqaRadLayout:
    """:class:`~corpora.layouts.LayoutReader` for a VQA-RAD folder (see :func:`iter_vqa_rad`)."""

    name = "vqa_rad"
    title = "VQA-RAD"
    description = "a VQA-RAD folder with vqa_rad.json and images/"
    images = True
    splits = False

    def detect(self, path: Path) -> bool:
        """True for a folder with ``vqa_rad.json`` and ``images/``."""
        return path.is_dir() and (path / VQA_RAD_FILE).is_file() and (path / VQA_RAD_IMAGES).is_dir()

    def read(self, path: Path, **options: Any) -> Iterator[ImageItem]:
        return iter_vqa_rad(path, **options)


READER = VqaRadLayout()
