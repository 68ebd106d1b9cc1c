"""MrM: black-box membership inference against a multimodal RAG system by masking objects.

The attacker holds a target image and may only send (image, question) to the system's ``answer``
API and read the text answer. For each target (MrM, the mask-and-recover attack):

1. **Object-aware perturbation** (:mod:`sandbox.attacks.proposals`): object proposals; one object
   masked per query (pixels set to 0), masks covering 2–25% of the image.
2. **Counterfact-informed mask selection** (:mod:`sandbox.attacks.counterfact`): keep the ``K``
   masks whose object a local proxy can least guess from the rest of the image.
3. **Query trials**: up to ``Q`` trials per mask ("what is in the masked area?"); a rule-based
   evaluator (:mod:`sandbox.attacks.answer_match`) decides whether an answer names the object.
   ``x_j`` = trials until the first correct answer for mask ``j``, ``Q + 1`` if none was.
4. **Statistical inference**: under H0 (member) ``x_j ~ Geometric(p_t)``; with ``S = sum_j x_j``,
   ``z = (S - K/p_t) / sqrt(K (1 - p_t) / p_t**2)`` and the p-value ``1 - Phi(z)``
   (:func:`geometric_test`). The membership score is the p-value (high: consistent with a member).
   ``p_t`` is the per-trial success rate of known members, calibrated on a shadow set the
   attacker inserted itself (:func:`calibrate_p_t`). Set-level inference pools the masks of all
   images of a set into one test (:func:`set_pvalue`).

Repeated trials of the same masked image reuse its retrieval (retrieval is deterministic; only the
generator samples), which gives exactly the answers sequential ``Pipeline.answer`` calls would
(tested). A generator error or an empty answer is retried ``retries`` times with exponential
backoff, then recorded as a failed (incorrect) trial; the run goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from corpora.annotated import AnnotatedImage
from heterag import ImageRef, InvalidInputError

from .answer_match import AnswerMatcher
from .counterfact import MaskFeatures, ZeroShotProxy, features, rank_masks
from .proposals import MAX_AREA, MIN_AREA, AnnotationProposer, Proposer, TargetError, apply_mask, filter_area, image_array

log = logging.getLogger(__name__)

#: The paper's prompt and a plain variant.
PROMPTS = {
    "paper": ("What is in the masked (black) area of this image? Match the positions of the objects in this image against "
              "the reference images and name the object in the masked position. Answer with one word or phrase."),
    "plain": "What is in the black area of this image? One word or phrase.",
}


def check_counts(q: int, k: int) -> None:
    """Raise :class:`InvalidInputError` unless ``Q >= 1`` trials and ``K >= 1`` masks."""
    for name, v in (("trials Q", q), ("masks per target K", k)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise InvalidInputError(f"MrM: {name} must be an integer >= 1, got {v!r}")


@dataclass
class MaskQuery:
    """One selected mask: the masked image, the object's label and its counterfact features."""

    image: ImageRef
    label: str
    area: float
    features: MaskFeatures


@dataclass
class Target:
    """A target image's selected masks, or why it has none (``status`` != ``"ok"``)."""

    id: str
    member: bool
    masks: list[MaskQuery] = field(default_factory=list)
    status: str = "ok"  # ok | no_proposal | too_small | corrupt
    reason: str = ""
    image: ImageRef | None = None


def annotation_label(mask: np.ndarray, item: AnnotatedImage, label_keys: Sequence[str] | None, min_iou: float = 0.5) -> str | None:
    """The label of the item's annotated object that overlaps ``mask`` best (IoU >= ``min_iou``), else None.
    (The attacker holds the target image and can say what is in it.)"""
    best, label = min_iou, None
    props = AnnotationProposer(label_keys).propose(item, np.zeros((*mask.shape, 3), dtype=np.uint8)) if item.objects else []
    for p in props:
        inter = np.count_nonzero(p.mask & mask)
        iou = inter / max(1, np.count_nonzero(p.mask | mask))
        if iou >= best:
            best, label = iou, p.label
    return label


def downscale(item: AnnotatedImage, arr: np.ndarray, max_side: int) -> tuple[AnnotatedImage, np.ndarray]:
    """The target as the attacker sends it: at most ``max_side`` pixels on its longer side (annotation masks
    and boxes scaled along). Query encoders resize to a few hundred pixels anyway; PNG-encoding every masked
    copy of a multi-megapixel scan is what would cost."""
    from PIL import Image

    h, w = arr.shape[:2]
    if max(h, w) <= max_side:
        return item, arr
    f = max_side / max(h, w)
    nw, nh = max(1, round(w * f)), max(1, round(h * f))
    small = np.asarray(Image.fromarray(arr).resize((nw, nh), Image.BILINEAR))
    objs = []
    for o in item.objects:
        mask = None
        if o.mask is not None:
            mask = np.asarray(Image.fromarray(np.asarray(o.mask, dtype=np.uint8) * 255).resize((nw, nh), Image.NEAREST)) > 127
        box = tuple(int(round(v * f)) for v in o.box)
        objs.append(dataclasses.replace(o, mask=mask, box=box))
    image = ImageRef.from_array(small, source=item.image.source)
    return dataclasses.replace(item, image=image, objects=tuple(objs)), small


def prepare_target(item: AnnotatedImage, member: bool, proposer: Proposer, proxy: ZeroShotProxy, vocabulary: Sequence[str],
                   k: int, *, min_area: float = MIN_AREA, max_area: float = MAX_AREA,
                   label_keys: Sequence[str] | None = None, max_side: int | None = 512) -> Target:
    """Proposals, the counterfact filter and the top ``k`` masks of one target; never raises for a bad image.

    A proposal without a label takes the label of the annotated object it overlaps (IoU >= 0.5), else the
    proxy's top label for its region. Targets larger than ``max_side`` are downscaled first (:func:`downscale`)."""
    try:
        arr = image_array(item.image)
    except TargetError as exc:
        status = "too_small" if "too small" in str(exc) else "corrupt"
        return Target(item.id, member, status=status, reason=str(exc), image=item.image)
    if max_side:
        item, arr = downscale(item, arr, max_side)
    props = filter_area(proposer.propose(item, arr), min_area, max_area)
    if not props:
        return Target(item.id, member, status="no_proposal", image=item.image,
                      reason=f"no object proposal covering {100 * min_area:.0f}-{100 * max_area:.0f}% of the image")
    vocab = list(vocabulary)
    if item.objects:
        props = [p if p.label else dataclasses.replace(p, label=annotation_label(p.mask, item, label_keys)) for p in props]
    unlabeled = [p for p in props if not p.label]
    labels: dict[int, str] = {}
    if unlabeled:  # the proxy names the object from its own region (everything else blacked out)
        regions = [apply_mask(arr, ~p.mask) for p in unlabeled]
        probs = proxy.probabilities(regions, vocab)
        for p, row in zip(unlabeled, probs, strict=True):
            labels[id(p)] = vocab[int(np.argmax(row))]
    masked = [apply_mask(arr, p.mask) for p in props]
    names = [p.label or labels[id(p)] for p in props]
    full_vocab = vocab + [n for n in dict.fromkeys(names) if n not in vocab]
    probs = proxy.probabilities(masked, full_vocab)
    feats = [features(row, full_vocab.index(n)) for row, n in zip(probs, names, strict=True)]
    keep = rank_masks(feats)[:k]
    return Target(item.id, member, [MaskQuery(masked[i], names[i], props[i].area, feats[i]) for i in keep], image=item.image)


# --------------------------------------------------------------------------- trials


@dataclass
class TrialLog:
    """Trials of one mask: answers, whether each named the object, how many calls failed."""

    answers: list[str] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    failed: int = 0

    def first_success(self, q: int) -> int:
        """``x``: 1-based index of the first correct trial, ``q + 1`` if none."""
        return next((i + 1 for i, c in enumerate(self.correct) if c), q + 1)


class Oracle:
    """The system as the attacker sees it: ``ask(question, image)`` answers through the public
    ``Pipeline.answer`` path (retrieve, then generate), with the retrieval of a repeated query reused.

    ``variants`` (optional) maps an image to the images actually sent (augmentation-aware probing:
    trial ``t`` sends variant ``t mod n``). ``retries``/``backoff`` (seconds, doubled each time)
    govern failed calls; ``sleep`` is injectable for tests.
    """

    def __init__(self, pipeline: Any, k: int, *, retries: int = 3, backoff: float = 0.5,
                 sleep: Callable[[float], None] = time.sleep):
        self.pipeline, self.k, self.retries, self.backoff, self.sleep = pipeline, k, retries, backoff, sleep
        self.queries = 0
        self.failures = 0
        self._hits: dict[tuple[str, str], list] = {}

    def hits(self, question: str, image: ImageRef | None) -> list:
        key = (question, image.sha256 if image is not None else "")
        if key not in self._hits:
            if len(self._hits) > 64:
                self._hits.clear()
            self._hits[key] = self.pipeline.retrieve(question, k=self.k, image=image)
        return self._hits[key]

    def ask(self, question: str, image: ImageRef | None) -> str | None:
        """One answer (``image`` None: a text-only query), or None after ``retries`` failed attempts
        (an error or an empty answer)."""
        self.queries += 1
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                hits = self.hits(question, image)
                gen = self.pipeline.generator
                answer = gen.generate(question, hits, image=image) if image is not None else gen.generate(question, hits)
                text = answer.text
                if text and text.strip():
                    return text
                err = "empty answer"
            except Exception as exc:  # HTTP, timeouts, generator errors: the run must go on
                err = f"{type(exc).__name__}: {exc}"
            if attempt < self.retries:
                log.warning("generator call failed (%s); retrying in %.2fs", err, delay)
                self.sleep(delay)
                delay *= 2
        self.failures += 1
        log.warning("generator call failed %d times (%s); recorded as a failed trial", self.retries + 1, err)
        return None


def run_trials(oracle: Oracle, mask: MaskQuery, question: str, q: int, matcher: AnswerMatcher,
               variants: Callable[[ImageRef], list[ImageRef]] | None = None) -> TrialLog:
    """Up to ``q`` trials of one mask, stopping at the first answer that names the object."""
    log_ = TrialLog()
    images = variants(mask.image) if variants else [mask.image]
    for t in range(q):
        ans = oracle.ask(question, images[t % len(images)])
        if ans is None:
            log_.failed += 1
            log_.answers.append("")
            log_.correct.append(False)
            continue
        ok = matcher.names(ans, mask.label)
        log_.answers.append(ans)
        log_.correct.append(ok)
        if ok:
            break
    return log_


# --------------------------------------------------------------------------- statistics


def geometric_test(x: Sequence[int], p_t: float) -> tuple[float, float]:
    """``(z, p_value)`` of H0 "x_j ~ Geometric(p_t)" (member) against larger ``S = sum x_j``.

    ``z = (S - K/p_t) / sqrt(K (1 - p_t) / p_t**2)``, ``p = 1 - Phi(z)`` (``scipy.stats.norm.sf``;
    the normal approximation the MrM paper uses). An empty ``x`` (no usable mask) gives
    ``(nan, 0.5)``: no evidence either way.

    The test is *conservative* because the trials are censored: ``x_j`` is at most ``Q + 1`` while an
    uncensored geometric variable has no upper bound, so ``S`` is smaller than under the model and
    ``z`` is biased down; a non-member whose objects are never named gets ``S = K (Q + 1)``, not the
    larger sum the model expects, and its p-value is larger than an exact test would give (with ``K``
    small the normal approximation adds its own error). The p-values are therefore not calibrated
    false-positive rates; the runner only ranks targets by them (ROC, AUC, TPR at low FPR), and for
    targets with the same ``K`` the p-value is a decreasing function of ``S``, so their ranking is that of ``S``.
    """
    if not 0 < p_t < 1:
        raise InvalidInputError(f"p_t must be in (0, 1), got {p_t!r}")
    x = np.asarray(list(x), dtype=float)
    if x.size == 0:
        return float("nan"), 0.5
    k = x.size
    z = (x.sum() - k / p_t) / np.sqrt(k * (1 - p_t) / p_t**2)
    return float(z), float(stats.norm.sf(z))


def set_pvalue(xs: Sequence[Sequence[int]], p_t: float) -> float:
    """Set-level p-value: the masks of every image in the set pooled into one :func:`geometric_test`."""
    return geometric_test([v for x in xs for v in x], p_t)[1]


#: Lowest calibrated p_t. At the floor the shadow members' objects were (almost) never named, so the
#: test has no power: the runner then gives every target the neutral score 0.5 rather than a score
#: that would only reflect how many masks each target has.
P_T_FLOOR = 0.01


def calibrate_p_t(xs: Sequence[Sequence[int]], q: int, floor: float = P_T_FLOOR) -> float:
    """Per-trial success rate of known members: the censored geometric MLE
    ``successes / trials spent`` (a mask without success spent ``q`` trials), clipped to [floor, 1 - floor]."""
    flat = [v for x in xs for v in x]
    successes = sum(1 for v in flat if v <= q)
    spent = sum(min(v, q) for v in flat)
    if spent == 0:
        return 0.5
    return float(np.clip(successes / spent, floor, 1 - floor))
