"""Scenario data: load a corpus, split it by image, and turn the test part into queries.

Every part of a split (knowledge base, attacker reference pool, attacker candidate pool, test)
is a set of *images*: an image and all its questions go to exactly one part, so no test image
is in the knowledge base and the attacker never sees a test image. The split is a seeded
permutation of each source split a part names with ``from``: ``train``/``val``/``test`` for MedMNIST,
the folder's splits for COCO (``train2017``, ``val2017``), or ``all`` (every split together; the only
choice for other layouts, and then every part's), and the parts take their ``count`` or ``fraction`` in
the order knowledge base, reference, candidates, test.

Items of the source that cannot be read (a corrupt or truncated image, a bad caption record) are never
dropped silently: :func:`load_items` collects them (as :class:`~heterag.core.documents.ItemError`, naming the
file and why) in ``unreadable``; they cannot be stored, so they take no part in the split.
:class:`ScenarioData` keeps them and every report lists and counts them; membership inference keeps each
as a non-member target with status ``corrupt`` and the neutral score (see :mod:`sandbox.membership`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from corpora.annotated import AnnotatedImage
from corpora.base import default_data_dir
from corpora.image_layouts import LAYOUT_COCO, LAYOUT_MEDMNIST, detect_image_layout, iter_image_layout
from corpora.layouts.coco import coco_splits
from corpora.synthetic_scenes import generate_scenes
from heterag import ImageRef, InvalidInputError, ItemError

from .scenario import PARTS, DataConfig, ScenarioError, check_data_name
from .tasks import Task, make_task

#: Size of synthetic scenes in pixels.
SCENE_SIZE = 96


@dataclass(frozen=True)
class Query:
    """One test query: question text (None for an image-only query), image, gold answer or label."""

    text: str | None
    image: ImageRef
    gold: str
    item_id: str


@dataclass
class ScenarioData:
    knowledge_base: list[AnnotatedImage]
    reference: list[AnnotatedImage]
    candidates: list[AnnotatedImage]
    test: list[AnnotatedImage]
    task: Task
    queries: list[Query] = field(default_factory=list)
    #: items of the source that could not be read (never in any part; listed in the report)
    unreadable: list[ItemError] = field(default_factory=list)

    def sizes(self) -> dict[str, int]:
        out = {"knowledge_base": len(self.knowledge_base), "reference": len(self.reference),
               "candidates": len(self.candidates), "test_images": len(self.test), "test_queries": len(self.queries)}
        if self.unreadable:
            out["unreadable"] = len(self.unreadable)
        return out


def resolve_source(source: str, base_dir: str | Path) -> Path:
    """The file or folder ``source`` names: ``data:NAME`` inside the data folder (never outside it: no ``..``,
    no absolute NAME), else a path (relative to ``base_dir``)."""
    if source.startswith("data:"):
        try:
            name = check_data_name(source)
        except ValueError as exc:
            raise ScenarioError(f"data.source: {exc}") from None
        path = default_data_dir() / name
    else:
        path = Path(source).expanduser()
        if not path.is_absolute():
            path = Path(base_dir) / path
    if not path.exists():
        raise ScenarioError(f"data.source: {path} does not exist")
    return path


def _named_splits(path: Path, layout: str) -> list[str]:
    """The named splits of a COCO folder or a MedMNIST ``.npz`` (``train2017``, ``val2017``; ``train``, ``val``, ``test``)."""
    if layout == LAYOUT_COCO:
        return coco_splits(path)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            keys = set(arrays.files)
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"data.source: {path}: not a readable .npz ({exc})") from None
    return sorted(k.removesuffix("_images") for k in keys if k.endswith("_images") and
                  f"{k.removesuffix('_images')}_labels" in keys)


def _load_split(path: Path, split: str, unreadable: list[ItemError]) -> list[AnnotatedImage]:
    """The items of source split ``split``: a named split of a COCO folder or MedMNIST ``.npz``, or ``all``
    (every split of such a source, the only one of other layouts)."""
    layout = detect_image_layout(path)
    if layout is None:
        raise ScenarioError(f"data.source: {path} is not an image layout heterag reads")
    named = layout in (LAYOUT_COCO, LAYOUT_MEDMNIST)
    if split != "all" and not named:
        raise ScenarioError(f"data.splits: from: {split!r}: only COCO and MedMNIST sources have named splits; use 'all'")
    splits = (_named_splits(path, layout) or [None]) if split == "all" and named else [None if split == "all" else split]
    try:
        items = [it for s in splits for it in iter_image_layout(path, split=s)]
    except InvalidInputError as exc:
        if split == "all":
            raise ScenarioError(f"data.source: {exc}") from None
        raise ScenarioError(f"data.splits: from: {split!r}: {exc}") from None
    out = []
    for it in items:
        if isinstance(it, ItemError):
            unreadable.append(it)  # kept for the report, as `heterag ingest` reports them
            continue
        out.append(it)
    if not out:
        raise ScenarioError(f"data.source: {path} (split {split}) has no usable images")
    return out


def load_items(cfg: DataConfig, seed: int, base_dir: str | Path,
               unreadable: list[ItemError] | None = None) -> dict[str, list[AnnotatedImage]]:
    """Items of every source split the scenario's parts name; items that cannot be read are appended to
    ``unreadable`` (pass a list: they are not part of the result)."""
    unreadable = [] if unreadable is None else unreadable
    wanted = sorted({getattr(cfg.splits, p).from_ for p in PARTS})
    if cfg.source.startswith("synthetic:"):
        if wanted != ["all"]:
            raise ScenarioError("data.splits: synthetic sources have no named splits; use from: all")
        n = int(cfg.source.split(":")[1])
        return {"all": [s.to_annotated() for s in generate_scenes(n, seed=seed, size=SCENE_SIZE)]}
    path = resolve_source(cfg.source, base_dir)
    if "all" in wanted and len(wanted) > 1:  # the same images would be in two pools
        named = ", ".join(f"{p}: {getattr(cfg.splits, p).from_}" for p in PARTS if getattr(cfg.splits, p).from_ != "all")
        raise ScenarioError(f"data.splits: from: all reads every split, so no other part can name one ({named}); "
                            "name the split of every part, or use all for every part")
    return {split: _load_split(path, split, unreadable) for split in wanted}


def split_items(cfg: DataConfig, items: dict[str, list[AnnotatedImage]], seed: int) -> dict[str, list[AnnotatedImage]]:
    """Assign images to parts (see the module docstring); deterministic for a seed."""
    pools: dict[str, list[AnnotatedImage]] = {}
    for split, its in items.items():
        by_image: dict[str, AnnotatedImage] = {}
        for it in sorted(its, key=lambda x: x.id):
            by_image.setdefault(it.image.sha256, it)  # one item per distinct image
        uniq = list(by_image.values())
        order = np.random.default_rng([seed, len(uniq)]).permutation(len(uniq))
        pools[split] = [uniq[i] for i in order]
    out: dict[str, list[AnnotatedImage]] = {}
    for part in PARTS:
        spec = getattr(cfg.splits, part)
        pool = pools[spec.from_]
        if spec.count is not None:
            if spec.count > len(pool):
                raise ScenarioError(f"data.splits.{part}.count: {spec.count} images asked, only {len(pool)} left in "
                                    f"split {spec.from_!r}")
            n = spec.count
        elif spec.fraction is not None:
            n = int(round(spec.fraction * len(pool)))
        else:
            n = len(pool)
        out[part], pools[spec.from_] = pool[:n], pool[n:]
    if not out["knowledge_base"]:
        raise ScenarioError("data.splits.knowledge_base: the split leaves the knowledge base empty")
    return out


def load_scenario_data(cfg: DataConfig, seed: int, base_dir: str | Path = ".") -> ScenarioData:
    """Load, split and build the queries; raises :class:`ScenarioError` if no test query is left."""
    unreadable: list[ItemError] = []
    parts = split_items(cfg, load_items(cfg, seed, base_dir, unreadable), seed)
    task = make_task(cfg.task, parts["knowledge_base"], cfg.label_descriptions)
    queries = [Query(text, it.image, gold, it.id) for it in parts["test"] for text, gold in task.queries_of(it)]
    if cfg.max_test_queries is not None and len(queries) > cfg.max_test_queries:
        keep = np.sort(np.random.default_rng([seed, 7]).choice(len(queries), cfg.max_test_queries, replace=False))
        queries = [queries[i] for i in keep]
    if not queries:
        raise ScenarioError(f"data.splits.test: the split leaves no test queries ({len(parts['test'])} test images, "
                            f"task {task.name})")
    data = ScenarioData(parts["knowledge_base"], parts["reference"], parts["candidates"], parts["test"], task, queries,
                        unreadable)
    overlap = {it.image.sha256 for it in data.test} & {it.image.sha256 for it in data.knowledge_base}
    assert not overlap, "split by image failed"
    return data

