"""Membership audit: is this image in that collection? A verdict only where a method has signal.

:func:`audit_images` takes a collection, one or more images (files, or zips of them) and the system's
generator, and works in two steps:

1. **Calibrate first.** A shadow set of image–text items the auditor owns (same kind as the collection's:
   synthetic scenes for a scene collection, the auditor's own captioned photos for a photo collection),
   none of them stored, is split in half: the *shadow members* are injected reversibly
   (:class:`~sandbox.injection.ReversibleInjection`: journalled, tagged, removed again, fingerprint
   verified; a collection not made for experiments needs ``allow_live=True``), the *shadow non-members*
   stay out. Every method is run on both halves and judged by :func:`sandbox.calibration.judge` (MrM:
   ``p_t`` above its floor; every method: shadow AUC above 0.5 by a one-sided permutation test at 0.05).
2. **Audit with the methods that have signal.** Each image gets, per usable method, a verdict and a
   p-value, and the headline verdict is that of the usable method with the highest shadow AUC:

   - **MrM** (mask-and-recover; "Membership inference on multimodal RAG by masking"): ``K`` object masks
     (segmentation proposals ranked by the counterfact filter, labelled by the zero-shot proxy over the
     ``vocabulary``), up to ``Q`` trials each asking what the masked area shows; the p-value is the
     geometric test's (H0: member; :func:`sandbox.attacks.mrm.geometric_test` with the calibrated ``p_t``),
     the verdict *member* where it reaches the threshold that best separates the shadow halves (highest
     balanced accuracy; the test's p-values are conservative, not false-positive rates), else *non-member*.
     Masks are labelled from the images' own object annotations where every image comes with them
     (:class:`~corpora.annotated.AnnotatedImage` inputs; the shadow set is then labelled the same way),
     else by the proxy (for uploads). The proxy is weak on synthetic scenes: it named 16% of segmented
     objects right (7 of 43; colour 42%, shape 28%), so audits of plain uploads often find no MrM signal. Needs a generator that names
     what a mask hides (a VLM through an OpenAI-compatible endpoint; the offline extractive generator
     only where the stored captions name the objects).
   - **MBA** (mask-based membership inference, Liu et al. 2024, "Mask-based membership inference
     attacks for retrieval-augmented generation"): only for images that carry text (in a zip, a ``.txt``
     file with the image's stem); the hardest words are masked and the share filled in is the score. The
     p-value is empirical against the shadow non-members (H0: non-member, ``(1 + #{s_non >= s}) / (1 + n)``),
     the verdict *member* where the score reaches the threshold that best separates the shadow halves.

Where **no method has signal**, :attr:`AuditReport.statement` is one plain sentence saying so and no
image gets a verdict (the images are not even queried).

Inputs are read into memory and validated one by one (:meth:`heterag.ImageRef.from_path`: at most
50 MiB and 64 Mpx, decodable); a zip is read member by member, never extracted. Each input that cannot be
audited (a corrupt image, one over the size limit, a zip member that is not an image) is one line in
:attr:`AuditReport.errors` and the others are audited.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from corpora.annotated import AnnotatedImage
from heterag import HeteragError, ImageRef, InvalidInputError, Pipeline, open_collection

from .attacks.answer_match import AnswerMatcher
from .attacks.counterfact import ZeroShotProxy
from .attacks.mia_baselines import MBA_PROMPT, HardWords, mba_score
from .attacks.mrm import PROMPTS, Oracle, Target, calibrate_p_t, geometric_test, prepare_target, run_trials
from .attacks.proposals import make_proposer
from .calibration import NO_SIGNAL, Signal, judge
from .injection import ReversibleInjection, check_live, new_run_id

log = logging.getLogger(__name__)

METHODS = ("mrm", "mba")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: Most images one audit takes (a zip with more is refused in one line).
MAX_IMAGES = 200
#: Largest image accepted, in bytes (the library's limit for image files: 50 MiB).
MAX_IMAGE_BYTES = 50 * 2**20
#: Segmentation settings for synthetic scenes (those of ``eval/scenarios/mrm_synthetic.yaml``).
SCENE_PROPOSER = {"scale": 500, "sigma": 0.8, "merge_colour": 60}


# --------------------------------------------------------------------------- results


@dataclasses.dataclass(frozen=True)
class MaskTrials:
    """One mask MrM used on an image: the masked image (the thumbnail), the object's label, the answer of
    each trial and whether it named the object, and ``x`` (1-based first success, ``Q + 1`` if none)."""

    label: str
    image: ImageRef
    answers: tuple[str, ...]
    named: tuple[bool, ...]
    x: int


@dataclasses.dataclass(frozen=True)
class MethodVerdict:
    """One method's verdict on one image: ``verdict`` ``member``/``non-member`` (None: the method could not
    judge this image, ``note`` says why), ``p_value`` in [0, 1] under the null hypothesis ``h0``, ``score``."""

    method: str
    verdict: str | None
    p_value: float | None
    h0: str
    score: float | None
    note: str = ""
    #: the threshold the verdict used, calibrated on the shadow set (MrM: on the p-value, member where
    #: ``p >= threshold``; MBA: on the score, member where ``score >= threshold``)
    threshold: float | None = None

    def describe(self) -> str:
        """The verdict with the rule that gave it, e.g. ``non-member (mrm: p = 0.491 < 0.62, the threshold
        calibrated on the shadow set; H0: member)``."""
        if self.verdict is None:
            return f"no verdict ({self.method}: {self.note})"
        if self.method == "mrm" and self.p_value is not None and self.threshold is not None:
            op = "≥" if self.p_value >= self.threshold else "<"
            return (f"{self.verdict} (mrm: p = {self.p_value:.3g} {op} {self.threshold:.3g}, the threshold calibrated on "
                    f"the shadow set; H0: {self.h0})")
        if self.score is not None and self.threshold is not None:
            op = "≥" if self.score >= self.threshold else "<"
            p = f"p = {self.p_value:.3g}, " if self.p_value is not None else ""
            return (f"{self.verdict} ({self.method}: score {self.score:.3g} {op} {self.threshold:.3g}, the threshold "
                    f"calibrated on the shadow set; {p}H0: {self.h0})")
        p = f"p = {self.p_value:.3g}, " if self.p_value is not None else ""
        return f"{self.verdict} ({self.method}: {p}H0: {self.h0})"


@dataclasses.dataclass
class ImageAudit:
    """The audit of one image: its headline ``verdict`` (None: no usable method could judge it), the
    ``p_value`` and ``method`` behind it, every method's verdict, and MrM's masks with their trials."""

    name: str
    verdict: str | None = None
    p_value: float | None = None
    method: str | None = None
    methods: dict[str, MethodVerdict] = dataclasses.field(default_factory=dict)
    masks: list[MaskTrials] = dataclasses.field(default_factory=list)
    note: str = ""

    def line(self) -> str:
        if self.verdict is None or self.method is None:
            return f"{self.name}: no verdict ({self.note or 'no usable method could judge it'})"
        return f"{self.name}: {self.methods[self.method].describe()}"


@dataclasses.dataclass
class AuditReport:
    """What :func:`audit_images` found: the calibration of each method (:class:`~sandbox.calibration.Signal`),
    the audited images, one line per input that could not be audited, and, where no method has signal, the
    plain ``statement`` saying so (then ``images`` is empty: no verdicts)."""

    collection: str
    #: the names of the images that were read (each is judged, or covered by the no-signal ``statement``)
    inputs: list[str] = dataclasses.field(default_factory=list)
    signals: dict[str, Signal] = dataclasses.field(default_factory=dict)
    images: list[ImageAudit] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    statement: str | None = None
    p_t: float | None = None
    #: per usable method, the score threshold of its verdict (member where the score reaches it)
    thresholds: dict[str, float] = dataclasses.field(default_factory=dict)
    fingerprint_identical: bool | None = None
    seconds: float = 0.0

    @property
    def usable(self) -> list[str]:
        """The methods whose calibration found signal."""
        return [m for m, s in self.signals.items() if s.signal]

    def summary(self) -> str:
        """Plain text for a terminal or a log: calibration, then a line per image, then the errors."""
        lines = [f"membership audit of collection {self.collection!r} ({self.seconds:.0f} s)"]
        lines += [f"calibration: {s.reason}" + ("" if s.signal else f": {NO_SIGNAL}") for s in self.signals.values()]
        if self.statement:
            lines.append(self.statement)
        lines += [im.line() for im in self.images]
        lines += [f"not audited: {e}" for e in self.errors]
        return "\n".join(lines)


# --------------------------------------------------------------------------- inputs


@dataclasses.dataclass(frozen=True)
class AuditInput:
    """One image to audit: a display name, the image, its text (may be empty)."""

    name: str
    image: ImageRef
    text: str = ""
    #: the image's object annotations, where the auditor has them (an :class:`AnnotatedImage` input)
    objects: tuple[Any, ...] = ()


def read_inputs(paths: Sequence[str | Path | ImageRef | AnnotatedImage] | str | Path, *, max_bytes: int = MAX_IMAGE_BYTES,
                names: Sequence[str] | None = None) -> tuple[list[AuditInput], list[str]]:
    """The images to audit and one error line per input that cannot be: ``paths`` are image files, zips of
    images (read in memory, members with an image suffix; a ``.txt`` member with an image's stem is that
    image's text; anything else is an error line), :class:`ImageRef` or :class:`AnnotatedImage` (its text
    and object annotations kept). ``names``: display names for
    ``paths`` (e.g. the user's file names of uploads; default: the file names)."""
    if isinstance(paths, str | Path | ImageRef):
        paths = [paths]
    out: list[AuditInput] = []
    errors: list[str] = []
    for i, p in enumerate(paths):
        if isinstance(p, AnnotatedImage):
            out.append(AuditInput(names[i] if names else p.id, p.image, p.text, tuple(p.objects)))
            continue
        if isinstance(p, ImageRef):
            out.append(AuditInput(names[i] if names else (p.source or f"image-{i + 1}"), p))
            continue
        path = Path(p)
        label = names[i] if names else path.name
        if path.suffix.lower() == ".zip":
            got, errs = _read_zip(path, label, max_bytes)
            out += got
            errors += errs
            continue
        try:
            img = ImageRef.from_path(path, max_bytes=max_bytes)
        except HeteragError as exc:
            errors.append(_relabel(str(exc), str(path), label))
            continue
        out.append(AuditInput(label, dataclasses.replace(img, source=label)))
    if len(out) > MAX_IMAGES:
        raise InvalidInputError(f"{len(out)} images to audit; at most {MAX_IMAGES} at once")
    return out, errors


def _relabel(message: str, private: str, label: str) -> str:
    """``message`` with the file's private path replaced by the user's name for it, on one line."""
    return " ".join(message.replace(private, label).split())


def _read_zip(path: Path, label: str, max_bytes: int) -> tuple[list[AuditInput], list[str]]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        return [], [f"{label}: not a readable zip ({_relabel(str(exc), str(path), label)})"]
    images: dict[str, tuple[str, ImageRef]] = {}
    texts: dict[str, str] = {}
    text_names: dict[str, str] = {}
    errors: list[str] = []
    with zf:
        for info in zf.infolist():
            if info.is_dir() or info.filename.startswith("__MACOSX/") or PurePosixPath(info.filename).name.startswith("."):
                continue
            member = PurePosixPath(info.filename)
            where = f"{label}: {info.filename}"
            suffix = member.suffix.lower()
            if suffix not in (*IMAGE_SUFFIXES, ".txt"):
                errors.append(f"{where}: not an image ({suffix or 'no suffix'}); skipped")
                continue
            if info.file_size > max_bytes:
                errors.append(f"{where}: {info.file_size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit")
                continue
            try:
                data = zf.read(info)
            except (zipfile.BadZipFile, OSError, RuntimeError, ValueError) as exc:
                errors.append(f"{where}: cannot be read from the zip ({' '.join(str(exc).split())})")
                continue
            key = str(member.with_suffix(""))
            if suffix == ".txt":
                try:
                    texts[key] = data.decode("utf-8").strip()
                    text_names[key] = info.filename
                except UnicodeDecodeError:
                    errors.append(f"{where}: not UTF-8 text; skipped")
                continue
            try:
                images[key] = (info.filename, ImageRef.from_bytes(data, source=where, max_bytes=max_bytes))
            except HeteragError as exc:
                errors.append(" ".join(str(exc).split()))
    for key in sorted(texts.keys() - images.keys()):
        errors.append(f"{label}: {text_names[key]}: not an image (a .txt member is only read as the text of the image "
                      f"with the same name, and the zip has no image {PurePosixPath(key).name}.*); skipped")
    out = [AuditInput(f"{label}/{fname}", dataclasses.replace(img, source=f"{label}/{fname}"), texts.get(key, ""))
           for key, (fname, img) in sorted(images.items())]
    if not out and not errors:
        errors.append(f"{label}: the zip holds no images")
    return out, errors


#: Default seed of a synthetic shadow set (not the demo's).
SHADOW_SEED = 7919
#: Bounds of a synthetic shadow set: (least, most) images, and pixels per side.
SHADOW_IMAGES = (8, 100_000)
SHADOW_SIZE = (32, 4096)
#: The tighter bounds of a shadow set given in the web app (the audit runs in the app's process).
APP_SHADOW_IMAGES = (8, 500)
APP_SHADOW_SIZE = (32, 512)
_SYNTHETIC_SHADOW = re.compile(r"synthetic:(\d{1,9})(?::(\d{1,10}))?(?::(\d{1,6}))?")


def parse_synthetic_shadow(shadow: str, *, images: tuple[int, int] = SHADOW_IMAGES,
                           size: tuple[int, int] = SHADOW_SIZE) -> tuple[int, int, int]:
    """``(n, seed, size)`` of ``synthetic:N[:SEED[:SIZE]]`` within the bounds; :class:`InvalidInputError` (one line)
    otherwise."""
    from corpora.synthetic_scenes import DEFAULT_SIZE

    expected = (f"expected synthetic:N[:SEED[:SIZE]] with N from {images[0]} to {images[1]}, SEED from 0 to {2**32 - 1} "
                f"and SIZE (pixels) from {size[0]} to {size[1]}")
    m = _SYNTHETIC_SHADOW.fullmatch(shadow.strip())
    if not m:
        raise InvalidInputError(f"shadow: {shadow.strip()[:60]!r}: {expected}")
    n, seed = int(m.group(1)), int(m.group(2)) if m.group(2) else SHADOW_SEED
    side = int(m.group(3)) if m.group(3) else DEFAULT_SIZE
    if not (images[0] <= n <= images[1] and 0 <= seed < 2**32 and size[0] <= side <= size[1]):
        raise InvalidInputError(f"shadow: {shadow.strip()!r}: {expected}")
    return n, seed, side


def check_app_shadow(shadow: str) -> str:
    """A shadow set as the web app accepts it: ``synthetic:N[:SEED[:SIZE]]`` within :data:`APP_SHADOW_IMAGES` and
    :data:`APP_SHADOW_SIZE`, or ``data:NAME`` (a ready-made source inside the data folder). Anything else, any
    server path above all, is refused with one line that is the same whether the path exists or not."""
    shadow = (shadow or "").strip() or "synthetic:16"
    if shadow.startswith("synthetic:"):
        parse_synthetic_shadow(shadow, images=APP_SHADOW_IMAGES, size=APP_SHADOW_SIZE)
        return shadow
    if shadow.startswith("data:"):
        from .scenario import check_data_name

        try:
            check_data_name(shadow)
        except ValueError as exc:
            raise InvalidInputError(f"shadow: {exc}") from None
        return shadow
    raise InvalidInputError(f"shadow: give synthetic:N[:SEED[:SIZE]] (N from {APP_SHADOW_IMAGES[0]} to "
                            f"{APP_SHADOW_IMAGES[1]}, SIZE from {APP_SHADOW_SIZE[0]} to {APP_SHADOW_SIZE[1]}) or data:NAME "
                            "(a ready-made source in the data folder); the app reads no other server path")


def load_shadow(shadow: str | Sequence[AnnotatedImage]) -> list[AnnotatedImage]:
    """The auditor's shadow set: ``synthetic:N[:SEED[:SIZE]]`` (synthetic scenes with captions; default seed
    :data:`SHADOW_SEED`, not the demo's, size 128 pixels; bounds :data:`SHADOW_IMAGES`, :data:`SHADOW_SIZE`),
    ``data:NAME`` (a source inside the data folder) or a folder in an image layout whose items carry text (a
    caption folder, COCO, VQA-RAD), or the items themselves. The web app passes only what
    :func:`check_app_shadow` accepts."""
    if not isinstance(shadow, str):
        return list(shadow)
    if shadow.startswith("synthetic:"):
        from corpora.synthetic_scenes import generate_scenes

        n, seed, size = parse_synthetic_shadow(shadow)
        return [s.to_annotated() for s in generate_scenes(n, seed=seed, size=size)]
    from corpora.base import default_data_dir
    from corpora.layouts import detect_image_layout, iter_image_layout

    if shadow.startswith("data:"):
        from .scenario import check_data_name

        try:
            path = default_data_dir() / check_data_name(shadow)
        except ValueError as exc:
            raise InvalidInputError(f"shadow: {exc}") from None
    else:
        path = Path(shadow).expanduser()
    if not path.exists() or detect_image_layout(path) is None:
        raise InvalidInputError(f"shadow: {shadow}: not a folder in an image layout heterag reads (or synthetic:N)")
    items = [it for it in iter_image_layout(path) if isinstance(it, AnnotatedImage)]
    return items


# --------------------------------------------------------------------------- the audit


@contextlib.contextmanager
def _generator(pipe: Pipeline, generator: Any) -> Iterator[None]:
    old = pipe.generator
    pipe.generator = generator
    try:
        yield
    finally:
        pipe.generator = old


def default_generator(pipe: Pipeline, seed: int = 0) -> Any:
    """The offline extractive generator with sampling (temperature 0.5, at most 3 sentences), as the
    membership scenarios use it: repeated MrM trials need an answer that can change."""
    from heterag import ExtractiveGenerator

    return ExtractiveGenerator(pipe.encoder, temperature=0.5, seed=seed, max_sentences=3)


def _best_threshold(members: np.ndarray, non_members: np.ndarray) -> float:
    """The score threshold (member where ``score >= t``) with the highest balanced accuracy on the shadow halves."""
    cands = np.unique(np.concatenate([members, non_members]))
    best, t_best = -1.0, float(cands[-1])
    for t in cands:
        acc = (np.mean(members >= t) + np.mean(non_members < t)) / 2
        if acc > best:
            best, t_best = acc, float(t)
    return t_best


def audit_images(collection: str | Pipeline, images: Sequence[str | Path | ImageRef] | str | Path, *,
                 generator: Any = None, shadow: str | Sequence[AnnotatedImage] = "synthetic:16",
                 vocabulary: str | Sequence[str] = "synthetic", methods: Sequence[str] = METHODS, masks: int = 3,
                 trials: int = 5, top_k: int = 5, alpha: float = 0.05, seed: int = 0, allow_live: bool = False,
                 proposer: dict[str, Any] | None = None, names: Sequence[str] | None = None,
                 progress: Callable[[str], None] | None = None) -> AuditReport:
    """Audit ``images`` for membership in ``collection`` (a name or an open :class:`~heterag.Pipeline`).

    ``images``: image files, zips of images or :class:`~heterag.ImageRef` (see :func:`read_inputs`;
    ``names`` are their display names); ``generator``: the system's generator (default
    :func:`default_generator`; an :class:`~heterag.OpenAIGenerator` for a VLM endpoint); ``shadow``: the
    calibration set (:func:`load_shadow`; at least 8 items, half injected as shadow members); ``vocabulary``:
    the object names the proxy labels masks with (``synthetic``: every colour x shape, ``coco``: the 80 COCO
    categories, or a list); ``masks`` (K >= 1) and ``trials`` (Q >= 1) as in MrM; ``alpha`` in (0, 1): the
    level of the signal test; ``allow_live``: inject the shadow members into a
    collection not made for experiments; ``progress``: called with a short line as each step begins.

    Returns an :class:`AuditReport`; where no method has signal its ``statement`` says so in one sentence
    and no image has a verdict. Raises :class:`~heterag.InvalidInputError` (one line) for bad settings, a
    collection without images, a shadow set too small or already stored;
    :class:`~sandbox.injection.LiveCollectionError` for a live collection without ``allow_live``, and
    :class:`~sandbox.injection.SandboxBusyError` while a sandbox run holds the collection."""
    t0 = time.perf_counter()
    say = progress or (lambda _line: None)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InvalidInputError(f"methods: {', '.join(map(repr, unknown)) or 'none given'}; choose from: {', '.join(METHODS)}")
    if not 0 < alpha < 1:
        raise InvalidInputError(f"alpha must be in (0, 1), got {alpha!r}")
    from .attacks.mrm import check_counts

    check_counts(trials, masks)
    inputs, errors = read_inputs(images, names=names)
    shadow_items = [it for it in load_shadow(shadow) if it.text.strip()]
    if not all(inp.objects for inp in inputs):  # calibrate the procedure the images get: masks labelled by the proxy
        shadow_items = [dataclasses.replace(it, objects=()) for it in shadow_items]
    if len(shadow_items) < 8:
        raise InvalidInputError(f"shadow: {len(shadow_items)} image-text items; the calibration needs at least 8 "
                                "(half injected as members, half kept out)")
    own = not isinstance(collection, Pipeline)
    pipe = open_collection(collection, create=False) if own else collection
    name = collection if own else pipe.name
    report = AuditReport(name, [inp.name for inp in inputs], errors=errors)
    try:
        if pipe.image_store is None or pipe.image_store.count() == 0:
            raise InvalidInputError(f"collection {name!r} stores no images; a membership audit needs an image collection")
        check_live(name, allow_live)  # before any work
        if not inputs:
            report.statement = "No image could be read, so nothing was audited."
            return report
        gen = generator if generator is not None else default_generator(pipe, seed)
        with _generator(pipe, gen):
            _audit(pipe, name, inputs, shadow_items, report, vocabulary=vocabulary, methods=methods, masks=masks,
                   trials=trials, top_k=top_k, alpha=alpha, seed=seed, allow_live=allow_live,
                   proposer=proposer, say=say)
    finally:
        if own:
            pipe.close()
        report.seconds = time.perf_counter() - t0
    log.info("membership audit of %r: %s", name, report.statement or f"{len(report.images)} image(s) judged")
    return report


def _vocab(vocabulary: str | Sequence[str]) -> list[str]:
    if not isinstance(vocabulary, str):
        return list(dict.fromkeys(vocabulary))
    if vocabulary == "synthetic":
        from corpora.synthetic_scenes import COLOURS, SHAPES

        return [f"{c} {s}" for c in COLOURS for s in SHAPES]
    if vocabulary == "coco":
        from .membership import COCO_CATEGORIES

        return list(COCO_CATEGORIES)
    raise InvalidInputError(f"vocabulary: {vocabulary!r}; choose synthetic, coco or give a list of object names")


def _audit(pipe: Pipeline, name: str, inputs: list[AuditInput], shadow_items: list[AnnotatedImage], report: AuditReport, *,
           vocabulary: str | Sequence[str], methods: Sequence[str], masks: int, trials: int, top_k: int, alpha: float,
           seed: int, allow_live: bool, proposer: dict[str, Any] | None, say: Callable[[str], None]) -> None:
    from .membership import memoised

    vocab = _vocab(vocabulary)
    opts = proposer if proposer is not None else (SCENE_PROPOSER if vocabulary == "synthetic" else {})
    prop = make_proposer("segmentation", **opts)
    matcher = AnswerMatcher()
    stored = _stored(pipe, [it.image.sha256 for it in shadow_items])
    shadow_items = [it for it in shadow_items if it.image.sha256 not in stored]
    if len(shadow_items) < 8:
        raise InvalidInputError(f"shadow: only {len(shadow_items)} of the shadow images are not already in collection "
                                f"{name!r}; the calibration needs at least 8 that are not")
    run_id = new_run_id()
    half = len(shadow_items) // 2
    shadow_items = [dataclasses.replace(it, id=f"audit-{run_id}-{i}") for i, it in enumerate(shadow_items)]
    members, non_members = shadow_items[:half], shadow_items[half:]
    question = PROMPTS["paper"]
    with memoised(pipe):
        proxy = ZeroShotProxy(pipe.image_encoder)
        say("proposals: masks for the shadow set and the images")

        keys = ["colour", "shape"] if vocabulary == "synthetic" else None

        def target(it: AnnotatedImage, member: bool) -> Target:
            return prepare_target(it, member, prop, proxy, vocab, masks, label_keys=keys)

        t_mem = [target(it, True) for it in members]
        t_non = [target(it, False) for it in non_members]
        hard = HardWords([it.text for it in shadow_items])

        def mrm(ts: Sequence[Target]) -> list[list[Any]]:
            logs = []
            for t in ts:
                oracle = Oracle(pipe, top_k)
                logs.append([run_trials(oracle, mq, question, trials, matcher) for mq in t.masks])
            return logs

        def mba(texts: Sequence[str]) -> np.ndarray:
            oracle = Oracle(pipe, top_k)
            out = []
            for text in texts:
                masked, words = hard.mask(text, 5)
                out.append(mba_score(oracle.ask(MBA_PROMPT + masked, None), words) if words else 0.0)
            return np.asarray(out)

        say(f"calibration: {len(members)} shadow members injected into {name!r}, {len(non_members)} kept out")
        with ReversibleInjection(pipe, name, run_id=run_id, allow_live=allow_live) as inj:
            inj.inject([it.to_document() for it in members])
            mem_logs = mrm(t_mem) if "mrm" in methods else []
            mem_mba = mba([it.text for it in members]) if "mba" in methods else None
        report.fingerprint_identical = inj.outcome.identical if inj.outcome else None
        mba_non = mba([it.text for it in non_members]) if "mba" in methods else None
        mrm_threshold = 1.0
        if "mrm" in methods:
            xs_mem = [[lg.first_success(trials) for lg in logs] for logs, t in zip(mem_logs, t_mem, strict=True) if t.masks]
            if not xs_mem:
                report.signals["mrm"] = Signal("mrm", False, "mrm: no shadow member had a usable mask")
            else:
                p_t = report.p_t = calibrate_p_t(xs_mem, trials)
                sig = judge("mrm", p_t=p_t, alpha=alpha, seed=seed)
                if sig.signal:  # shadow non-members: only worth their queries where p_t leaves the test some power
                    say("calibration: MrM on the shadow non-members")
                    xs_non = [[lg.first_success(trials) for lg in logs] for logs, t in zip(mrm(t_non), t_non, strict=True)
                              if t.masks]
                    p_mem = np.array([geometric_test(x, p_t)[1] for x in xs_mem])
                    p_non = np.array([geometric_test(x, p_t)[1] for x in xs_non])
                    sig = judge("mrm", p_mem, p_non, p_t=p_t, alpha=alpha, seed=seed)
                    if len(p_non):
                        mrm_threshold = _best_threshold(p_mem, p_non)
                report.signals["mrm"] = sig
        if mem_mba is not None and mba_non is not None:
            report.signals["mba"] = judge("mba", mem_mba, mba_non, alpha=alpha, seed=seed)
        usable = report.usable
        if not usable:
            report.statement = (f"No method has signal on collection {name!r}: on the calibration shadow set "
                                + " and ".join(_clause(s) for s in report.signals.values())
                                + ", so no image gets a verdict.")
            return
        say(f"audit: {len(inputs)} image(s) with {', '.join(usable)}")
        mba_threshold = (_best_threshold(mem_mba, mba_non) if "mba" in usable and mem_mba is not None
                         and mba_non is not None else None)
        report.thresholds = {k: v for k, v in (("mrm", mrm_threshold), ("mba", mba_threshold)) if k in usable}
        for inp in inputs:
            im = ImageAudit(inp.name)
            if "mrm" in usable:
                t = target(AnnotatedImage(inp.name, inp.image, inp.text, objects=inp.objects), False)
                if not t.masks:
                    im.methods["mrm"] = MethodVerdict("mrm", None, None, "member", None,
                                                      t.reason or f"no usable mask ({t.status})")
                else:
                    logs = mrm([t])[0]
                    x = [lg.first_success(trials) for lg in logs]
                    p = geometric_test(x, report.p_t)[1]
                    im.masks = [MaskTrials(mq.label, mq.image, tuple(lg.answers), tuple(lg.correct), lg.first_success(trials))
                                for mq, lg in zip(t.masks, logs, strict=True)]
                    im.methods["mrm"] = MethodVerdict("mrm", "member" if p >= mrm_threshold else "non-member", p, "member", p,
                                                      threshold=mrm_threshold)
            if "mba" in usable:
                if not inp.text.strip():
                    im.methods["mba"] = MethodVerdict("mba", None, None, "non-member", None, "the image carries no text")
                else:
                    s = float(mba([inp.text])[0])
                    p = float((1 + np.sum(mba_non >= s)) / (1 + len(mba_non)))
                    im.methods["mba"] = MethodVerdict("mba", "member" if s >= mba_threshold else "non-member", p,
                                                      "non-member", s, threshold=mba_threshold)
            judged = [v for v in im.methods.values() if v.verdict is not None]
            if judged:
                best = max(judged, key=lambda v: report.signals[v.method].auc or 0.0)
                im.verdict, im.p_value, im.method = best.verdict, best.p_value, best.method
            else:
                im.note = "; ".join(f"{v.method}: {v.note}" for v in im.methods.values())
            report.images.append(im)


def _clause(sig: Signal) -> str:
    """Why ``sig`` has no signal, as a clause of the no-signal sentence."""
    who = "MrM" if sig.method == "mrm" else sig.method.upper()
    if sig.p_t is not None and sig.auc is None and not sig.signal:
        return f"{who}'s p_t was at its floor {sig.p_t:g} (the generator never named what a mask hides)"
    if sig.auc is not None:
        return f"{who}'s shadow AUC was {sig.auc:.2f}, not above chance (p = {sig.p_value:.2g})"
    return sig.reason


def _stored(pipe: Pipeline, shas: Sequence[str]) -> set[str]:
    """Which of the image hashes ``shas`` collection ``pipe`` stores."""
    found: set[str] = set()
    shas = sorted(set(shas))
    for i in range(0, len(shas), 500):
        recs = pipe.image_store.get(where={"image_sha256": {"$in": shas[i:i + 500]}})
        found.update(str(r.metadata.get("image_sha256", "")) for r in recs)
    return found
