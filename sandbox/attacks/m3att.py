"""M3Att and its baselines as one harness: threat model, goal, constraint, search, text.

Following TextAttack's split of an attack into parts:

* **threat model** (``access``): ``white-box`` takes gradients through the deployed image
  encoder; ``black-box`` sees only similarity scores (each score is an image-to-image
  similarity, the kind a retriever reports for a query image against a stored item; the proxy
  centroid's similarity is the mean of a cluster's member similarities up to a constant) and
  estimates gradients by zeroth-order finite differences, counting oracle queries;
  ``transfer`` optimises on a surrogate encoder and attacks the deployed one.
* **goal**: the poison's image embedding should sit where many unseen queries find it: at a
  cluster's proxy centroid of the attacker's reference pool (``objective: centroid``, the
  paper's), or at free target vectors fitted to cover the most reference queries
  (``objective: neighbourhood``: each reference query's nearest reference neighbour is the bar
  to beat; :func:`sandbox.attacks.fit_free_vectors`).
* **constraint**: L-inf ball of radius ``eps`` around a clean seed image, 8-bit output.
* **search**: candidate seeding (rank the candidate pool by similarity to each target, short PGD
  warm-up on the top ones, keep the best), then PGD (or zeroth-order PGD) for ``steps``.
* **text**: the seed item's text edited covertly by an editor (:mod:`sandbox.editors`) so that it
  misleads on the cluster's majority answer (:func:`poison_text`).

Baselines in the same harness: ``random`` (random candidate images, unoptimised, same texts) and
``query_copy`` (each test query's own image with a dirty text: needs query knowledge, an upper
bound). Source: "M3Att" knowledge poisoning of medical multimodal RAG (cluster profiling with
K-means, proxy centroids of the 50 nearest members, PGD with eps=16/255, step 1/255, 500 steps).
"""

from __future__ import annotations

import io
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from corpora.annotated import AnnotatedImage
from corpora.synthetic_scenes import BACKGROUND_COLOURS
from heterag import Document, ImageRef, InvalidInputError, load_image_encoder

from ..editors import Edit, EditedText, make_editor
from ..editors.lexicon import COLOUR_NEIGHBOURS
from ..scenario import AttackConfig
from ..tasks import Task, background_of
from .clusters import profile_clusters
from .objectives import neighbour_thresholds
from .pgd import pgd_by_size, require_gradients
from .seeding import seed_candidates
from .upper_bound import fit_free_vectors
from .zeroth_order import similarity_oracle, zeroth_order_pgd

log = logging.getLogger(__name__)


@dataclass
class PoisonSet:
    """The poisoned documents an attack produced, with how it got there."""

    documents: list[Document]
    texts: list[EditedText]
    #: cosine of each poison (after 8-bit quantisation) to its target, in the attacker's space
    similarity: np.ndarray
    targets: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    oracle_queries: int = 0
    steps_per_second_per_image: float = float("nan")
    history: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ids(self) -> set[str]:
        return {d.id for d in self.documents}


def _png(uint8: np.ndarray) -> ImageRef:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(uint8)).save(buf, format="PNG")
    return ImageRef.from_bytes(buf.getvalue(), source="poison.png")


def _fit(image: ImageRef, max_side: int | None) -> Image.Image | ImageRef:
    """``image`` downscaled (Lanczos) so that its longer side is at most ``max_side`` pixels."""
    if max_side is None or max(image.width, image.height) <= max_side:
        return image
    pil = image.to_pil()
    scale = max_side / max(pil.size)
    return pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.LANCZOS)


def _other(counts: Counter, majority: str, pool: Sequence[str]) -> str:
    """The most plausible wrong answer: the second most common in the cluster, else another of ``pool``."""
    for lab, _ in counts.most_common():
        if lab != majority and lab:
            return lab
    others = [p for p in pool if p != majority]
    if not others:
        raise InvalidInputError(f"no other answer than {majority!r} to poison with")
    return others[0]


def poison_text(task: Task, seed_item: AnnotatedImage, members: Sequence[AnnotatedImage], editor: Any) -> EditedText:
    """Covertly wrong text for a poison that sits among ``members`` (its cluster's reference items).

    classify: the cluster's majority label described as another class (:meth:`RuleEditor.edit_label`);
    scene_background: the seed's caption with the background colour moved to the cluster's next most
    common background (a visually close one), plus the editor's covert caption edits;
    vqa_closed and others: the seed item's text with its answers edited (:meth:`RuleEditor.edit_annotated`).
    """
    if task.name == "classify":
        labels = [str(m.metadata["label"]) for m in members] or [str(seed_item.metadata["label"])]
        counts = Counter(labels)
        majority = counts.most_common(1)[0][0]
        source = next((m for m in members if str(m.metadata["label"]) == majority), seed_item)
        names = {int(k): v for k, v in task.label_names.items()}
        return editor.edit_label(source.text, labels=names, current=int(majority))
    if task.name == "scene_background":
        counts = Counter(background_of(m.text) for m in members)
        majority = counts.most_common(1)[0][0] if counts else background_of(seed_item.text)
        seed_bg = background_of(seed_item.text)
        target = _other(counts, majority, list(COLOUR_NEIGHBOURS.get(majority, ())) + sorted(BACKGROUND_COLOURS))
        edited = editor.edit_caption(seed_item.text)
        text = edited.text
        if seed_bg and background_of(text) != target:
            i = text.lower().rfind(seed_bg)
            text = text[:i] + target + text[i + len(seed_bg):]
        return EditedText(text, seed_item.text, (*edited.edits, Edit("prior_swap", seed_bg, target, "background")))
    return editor.edit_annotated(seed_item)


def attacker_encoder(cfg: AttackConfig, deployed: Any) -> Any:
    """The encoder the attacker optimises against (the deployed one, or the transfer surrogate)."""
    if cfg.access == "transfer":
        return load_image_encoder(cfg.surrogate)
    if cfg.access == "white-box":
        require_gradients(deployed)
    return deployed


@dataclass
class AttackInputs:
    """What the attacker has: the reference pool and candidate pool (never the KB or the test queries)."""

    reference: list[AnnotatedImage]
    candidates: list[AnnotatedImage]
    task: Task


def build_m3att(cfg: AttackConfig, inputs: AttackInputs, deployed: Any, n_poisons: int, *, seed: int = 0,
                run_id: str = "run", random_baseline: bool = False, progress: bool = True) -> PoisonSet:
    """``n_poisons`` M3Att poisons (or, with ``random_baseline``, unoptimised random candidates with
    the same kind of texts). Raises :class:`InvalidInputError` if the budget exceeds the candidate
    pool or the reference pool has fewer items than clusters."""
    enc = attacker_encoder(cfg, deployed)  # white-box: refuses an encoder without gradients first
    if n_poisons > len(inputs.candidates):
        raise InvalidInputError(f"poison budget {n_poisons} is larger than the candidate pool ({len(inputs.candidates)} images)")
    n_clusters = cfg.clusters or n_poisons
    if n_clusters < n_poisons:
        raise InvalidInputError(f"attack.clusters ({n_clusters}) must be at least the number of poisons ({n_poisons})")
    if not inputs.reference:
        raise InvalidInputError("data.splits.reference: the attacker's reference pool is empty")
    if n_clusters > len(inputs.reference):
        what = "attack.clusters" if cfg.clusters else "the number of poisons (one cluster each)"
        raise InvalidInputError(f"{what} ({n_clusters}) is larger than the reference pool ({len(inputs.reference)} images)")
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    ref_emb = enc.encode_images([it.image for it in inputs.reference], progress=False)
    clusters = profile_clusters(ref_emb, n_clusters, proxy_members=cfg.proxy_members, seed=seed)
    chosen = np.argsort(-clusters.sizes, kind="stable")[:n_poisons]  # the largest clusters
    targets = clusters.proxy_centroids[chosen]
    if cfg.objective == "neighbourhood":
        thresholds = neighbour_thresholds(ref_emb, k=cfg.neighbour_k)
        targets = fit_free_vectors(ref_emb, thresholds, n_poisons, init=targets, seed=seed)
        # each free vector belongs to the cluster of its nearest proxy centroid (for the text)
        chosen = chosen[np.argmax(targets @ clusters.proxy_centroids[chosen].T, axis=1)]
    seconds["profile"] = time.perf_counter() - t
    t = time.perf_counter()
    cand_pixels = [enc.pixels(_fit(it.image, cfg.max_side)) for it in inputs.candidates]
    rng = np.random.default_rng([seed, 11])
    if random_baseline:
        seeds = rng.choice(len(inputs.candidates), n_poisons, replace=False)
    else:
        cand_emb = enc.encode_images([it.image for it in inputs.candidates], progress=False)
        warm = cfg.warmup_steps if cfg.access != "black-box" else 0
        seeds = seed_candidates(enc, cand_pixels, cand_emb, targets, top=cfg.seed_top, warmup_steps=warm, eps=cfg.eps,
                                alpha=cfg.step, seed=seed, threads=1)
    seconds["seeding"] = time.perf_counter() - t
    t = time.perf_counter()
    images: list[np.ndarray] = [np.zeros(0)] * n_poisons
    sims = np.zeros(n_poisons, dtype=np.float32)
    oracle_queries = 0
    sps = float("nan")
    history: list[float] = []
    start = [cand_pixels[i] for i in seeds]
    if random_baseline or cfg.steps == 0:
        for j, x in enumerate(start):
            images[j] = (x.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
        with torch.no_grad():
            emb = torch.cat([enc.embed_pixels(x[None]) for x in start]).numpy()
        sims = np.sum(emb * targets, axis=1).astype(np.float32)
    elif cfg.access == "black-box":
        bb = cfg.black_box
        for size in sorted({tuple(x.shape[1:]) for x in start}):
            idx = [j for j, x in enumerate(start) if tuple(x.shape[1:]) == size]
            res = zeroth_order_pgd(similarity_oracle(enc, targets[idx]), torch.stack([start[j] for j in idx]), eps=cfg.eps,
                                   alpha=cfg.step, steps=bb.steps, directions=bb.directions, sigma=bb.sigma, seed=seed,
                                   progress=progress, threads=1)
            oracle_queries += res.oracle_queries
            sps = res.steps_per_second_per_image
            history = [float(h) for h in res.history]
            for r, j in enumerate(idx):
                images[j] = res.images_uint8[r]
                sims[j] = float(res.similarity_quantised[r])
    else:
        for idx, res in pgd_by_size(enc, start, targets, eps=cfg.eps, alpha=cfg.step, steps=cfg.steps, seed=seed,
                                    progress=progress, threads=1):
            sps = res.steps_per_second_per_image
            history = [float(h) for h in res.history]
            for r, j in enumerate(idx):
                images[j] = res.images_uint8[r]
                sims[j] = float(res.similarity_quantised[r])
    seconds["optimise"] = time.perf_counter() - t
    t = time.perf_counter()
    editor = make_editor(cfg.editor.name, **cfg.editor.options)
    members_of = {int(c): [inputs.reference[i] for i in np.flatnonzero(clusters.labels == c)] for c in set(chosen.tolist())}
    docs, texts = [], []
    kind = "random" if random_baseline else "m3att"
    for j in range(n_poisons):
        seed_item = inputs.candidates[int(seeds[j])]
        edited = poison_text(inputs.task, seed_item, members_of[int(chosen[j])], editor)
        texts.append(edited)
        docs.append(Document.create(edited.text, image=_png(images[j]), id=f"{kind}-{run_id}-{j}",
                                    title=seed_item.title, metadata={k: v for k, v in seed_item.metadata.items()
                                                                     if k not in ("label", "label_name", "index", "seed")}))
    seconds["text"] = time.perf_counter() - t
    return PoisonSet(docs, texts, sims, targets, seconds, oracle_queries, sps, history,
                     {"access": cfg.access, "objective": cfg.objective, "clusters": int(n_clusters),
                      "cluster_sizes": [int(clusters.sizes[c]) for c in chosen], "seed_candidates": [int(s) for s in seeds]})


def build_query_copy(test_items: Sequence[AnnotatedImage], task: Task, members: Sequence[AnnotatedImage], editor_name: str = "rule",
                     *, run_id: str = "run") -> PoisonSet:
    """One poison per test image: the test image itself with a dirty text (needs query knowledge)."""
    editor = make_editor(editor_name)
    docs, texts = [], []
    for j, it in enumerate(test_items):
        edited = poison_text(task, it, [it], editor)
        texts.append(edited)
        docs.append(Document.create(edited.text, image=it.image, id=f"query_copy-{run_id}-{j}", title=it.title))
    return PoisonSet(docs, texts, np.ones(len(docs), dtype=np.float32), info={"per_test_image": True})
