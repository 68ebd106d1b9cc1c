"""Training the offline ``default`` image encoder (:class:`heterag.encoding.image_encoders.DefaultImageNet`).

The shipped weights (``heterag/weights/default_image_encoder.safetensors`` and its JSON
config) are reproduced by::

    heterag train-image-encoder --synthetic 20000 --procedural 4000 --epochs 4 --seed 0 --out /tmp/w
    cp /tmp/w/default_image_encoder.* heterag/weights/   # a maintainer's step: training never writes into the package

(equivalently ``python -m heterag.cli.train_image_encoder --synthetic 20000 --procedural 4000 --epochs 4 --seed 0
--out /tmp/w``; these are also the defaults, except that without ``--out`` the weights go to
``$HETERAG_HOME/image_encoders/default``, used with ``--image-encoder default:DIR``): 18.4 minutes wall time on a 2-core CPU shared
with other jobs (151 s to render 24,000 images and embed 19,894 distinct captions, 946 s for 748
steps, then the held-out check). The JSON written beside the weights records
the exact settings, the data, the loss curve and held-out checks.

Data
    ``--synthetic N`` built-in synthetic scenes (:mod:`corpora.synthetic_scenes`, seed
    ``--scene-seed``, default 0: scenes 0..N-1 of that seed are training data, so held-out
    evaluations must use another seed), ``--procedural M`` procedural images without captions
    (random smooth fields, blurred overlapping shapes, noise; half greyscale) that teach the
    instance branch generic, non-scene textures, and any number of ``--folder DIR`` image
    layouts (:func:`corpora.image_layouts.iter_image_layout`: items with text take part in
    the caption loss, the others in the instance loss only). Every image is stored once as a
    ``--store-size`` square (shorter side resized, centre crop).
Objective, summed over each batch of ``B`` images seen in two augmented views
    (a) LiT: InfoNCE between image embeddings and the *frozen* default text encoder's
        caption embeddings (all-MiniLM-L6-v2, computed once), learnable temperature, both
        directions; identical captions in a batch count as positives of each other.
    (b) Instance discrimination: InfoNCE (NT-Xent) between the two views of each image among
        the ``2B`` views, learnable temperature, weight ``--instance-weight``.
Augmentations (per view, all seeded)
    crop of 80-100% of each side, centre jittered; mild brightness/contrast/saturation jitter
    (no hue: captions name colours); greyscale with p=0.25 (so radiographs are in
    distribution); a zeroed (p=0.8; else grey/noise-filled) box of 2-25% of the area with
    p=0.7; JPEG re-encoding at quality 30-95 with p=0.5. No flips (captions say left/right).

Reproducibility: ``--seed`` fixes the initialisation (``torch.manual_seed``), the data order
(a seeded permutation per epoch) and every augmentation (one numpy generator per image and
epoch). On CPU, results are repeatable on the same machine and thread count; other CPUs or
thread counts can differ in the last bits of float sums, and those differences grow over
training, so weights from another machine are close, not bit-identical.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter

from heterag.core.errors import InvalidInputError
from heterag.encoding.image_encoders import (
    DEFAULT_CONFIG,
    DEFAULT_IDENTITY,
    DEFAULT_WEIGHTS,
    DefaultArchitecture,
    DefaultImageNet,
    PreprocessConfig,
    preprocess_pixels,
)
from heterag.evaluation.images import perturb

log = logging.getLogger(__name__)

#: Normalisation of the default encoder's input (the CLIP statistics).
DEFAULT_MEAN = (0.48145466, 0.4578275, 0.40821073)
DEFAULT_STD = (0.26862954, 0.26130258, 0.27577711)
#: Share of augmented views with a filled box (the masking the near-duplicate benchmark applies).
MASK_PROBABILITY = 0.7
#: Of the masked views of images with annotated objects, the share that zero a whole object's box
#: (as MrM does) rather than a random box.
OBJECT_MASK_SHARE = 0.6
#: Object sizes (share of the image) eligible for object masking.
OBJECT_MASK_RANGE = (0.02, 0.25)
#: Scene seed of the held-out checks written into the config (training uses ``scene_seed``).
VALIDATION_SCENE_SEED = 1_000_003


def default_train_out() -> Path:
    """Where ``heterag train-image-encoder`` writes without ``--out``: ``$HETERAG_HOME/image_encoders/default``
    (open it with ``--image-encoder default:DIR``). Never the installed package's shipped weights."""
    from heterag.core.home import heterag_home

    return heterag_home() / "image_encoders" / "default"


def check_train_out(out_dir: Path) -> Path:
    """Raise :class:`InvalidInputError` if ``out_dir`` lies inside the installed heterag package: overwriting the
    shipped weights would make every collection built with them refuse to open."""
    package = Path(__file__).resolve().parents[1]  # the installed heterag package
    out = Path(os.path.realpath(Path(out_dir).expanduser()))
    if out == package or package in out.parents:
        raise InvalidInputError(f"--out {out_dir}: heterag never writes into its installed package ({package}); choose "
                                "another folder (default: the heterag home) and use it with --image-encoder default:DIR")
    return out_dir


@dataclass
class TrainConfig:
    """Everything that determines a training run (recorded in the output JSON)."""

    out_dir: Path = field(default_factory=default_train_out)
    synthetic: int = 20000
    scene_seed: int = 0
    procedural: int = 4000
    folders: tuple[Path, ...] = ()
    store_size: int = 128
    image_size: int = 96
    widths: tuple[int, ...] = DefaultArchitecture().widths
    embed_dim: int = 384
    grid: int = DefaultArchitecture().grid
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    instance_weight: float = 1.5
    seed: int = 0
    threads: int = 2
    max_steps: int | None = None
    validation_scenes: int = 300
    log_every: int = 50
    progress: bool | None = None
    command: str = ""

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.folders = tuple(Path(f) for f in self.folders)
        self.widths = tuple(int(w) for w in self.widths)
        checks = [
            (self.synthetic >= 0, "synthetic must be >= 0"),
            (self.procedural >= 0, "procedural must be >= 0"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2"),
            (self.image_size >= 32, "image_size must be >= 32"),
            (self.store_size >= self.image_size, "store_size must be >= image_size"),
            (self.lr > 0, "lr must be > 0"),
            (self.instance_weight >= 0, "instance_weight must be >= 0"),
            (self.threads >= 1, "threads must be >= 1"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1"),
            (len(self.widths) >= 2, "widths needs at least two entries"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInputError(f"train config: {message}")
        for folder in self.folders:  # checked before any image is rendered or model loaded
            if not folder.exists():
                raise InvalidInputError(f"training folder {folder} does not exist")

    def architecture(self) -> DefaultArchitecture:
        return DefaultArchitecture(widths=self.widths, embed_dim=self.embed_dim, grid=self.grid)

    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig(self.image_size, DEFAULT_MEAN, DEFAULT_STD, "bilinear", "shortest")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["folders"] = [str(f) for f in self.folders]
        d["widths"] = list(self.widths)
        d.pop("progress")
        return d


@dataclass
class TrainResult:
    """What a run produced: file paths, step count, wall time, the loss curve and held-out checks."""

    weights_path: Path
    config_path: Path
    steps: int
    seconds: float
    n_images: int
    n_captioned: int
    losses: list[dict[str, float]] = field(default_factory=list)  # one entry per logged step
    validation: dict[str, float] = field(default_factory=dict)

    @property
    def first_loss(self) -> float:
        return self.losses[0]["loss"] if self.losses else math.nan

    @property
    def final_loss(self) -> float:
        return self.losses[-1]["loss"] if self.losses else math.nan


# --------------------------------------------------------------------------- data


def square_uint8(img: Image.Image, size: int) -> np.ndarray:
    """``size x size x 3`` uint8: shorter side resized to ``size`` (bicubic), centre crop."""
    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def procedural_image(index: int, *, seed: int = 0, size: int = 128) -> Image.Image:
    """A caption-less procedural image (depends only on ``seed``, ``index``, ``size``): a smooth
    random field, overlapping blurred ellipses/polygons and fine noise; half of them greyscale."""
    rng = np.random.default_rng([seed, index, 77])
    grey = rng.random() < 0.5
    channels = 1 if grey else 3
    cells = int(rng.integers(2, 9))
    field_ = rng.normal(0, 1, size=(cells, cells, channels)).astype(np.float32)
    base = np.stack([np.asarray(Image.fromarray(field_[:, :, c]).resize((size, size), Image.Resampling.BICUBIC))
                     for c in range(channels)], axis=-1)
    base = (base - base.mean()) / (base.std() + 1e-6)
    img = np.clip(rng.uniform(60, 190) + rng.uniform(15, 60) * base, 0, 255)
    canvas = Image.fromarray(np.repeat(img, 3 // channels, axis=-1).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 16))):
        colour = tuple(int(v) for v in (np.repeat(rng.integers(0, 256), 3) if grey else rng.integers(0, 256, 3)))
        cx, cy = rng.uniform(-0.1, 1.1, 2) * size
        rx, ry = rng.uniform(0.03, 0.35, 2) * size
        if rng.random() < 0.6:
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
        else:
            k = int(rng.integers(3, 8))
            angles = np.sort(rng.uniform(0, 2 * math.pi, k))
            draw.polygon([(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles], fill=colour)
    radius = float(rng.uniform(0, 2.5))
    if radius > 0.3:
        canvas = canvas.filter(ImageFilter.GaussianBlur(radius))
    out = np.asarray(canvas, dtype=np.float32)
    noise = rng.normal(0, rng.uniform(0, 12), size=out.shape[:2] + ((1,) if grey else (3,)))
    out = np.clip(out + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(out, "RGB")


@dataclass
class TrainingData:
    """Images stored as one uint8 array ``(N, S, S, 3)`` with captions (``None`` = no caption)."""

    images: np.ndarray
    captions: list[str | None]
    sources: dict[str, int]
    #: Per image, boxes ``(x0, y0, x1, y1)`` of annotated objects covering 2–25% of it (the objects MrM
    #: masks and the near-duplicate ``mask`` variant zeroes); empty where there are none.
    object_boxes: list[tuple[tuple[int, int, int, int], ...]] = field(default_factory=list)

    def boxes(self, i: int) -> tuple[tuple[int, int, int, int], ...]:
        return self.object_boxes[i] if i < len(self.object_boxes) else ()

    def __len__(self) -> int:
        return len(self.captions)


def _bar(total: int, desc: str, progress: bool | None, unit: str = "img"):
    from tqdm.auto import tqdm

    show = progress if progress is not None else not os.environ.get("HETERAG_NO_PROGRESS")
    return tqdm(total=total, desc=desc, unit=unit, disable=not show, leave=False)


def build_training_data(
    config: TrainConfig, *, extra: Iterable[tuple[Image.Image, str | None]] = ()
) -> TrainingData:
    """Render/load every training image once (synthetic scenes, procedural images, folders, ``extra`` pairs)."""
    from corpora.synthetic_scenes import generate_scenes

    s = config.store_size
    arrays: list[np.ndarray] = []
    captions: list[str | None] = []
    boxes: list[tuple[tuple[int, int, int, int], ...]] = []
    sources: dict[str, int] = {}
    if config.synthetic:
        with _bar(config.synthetic, "render scenes", config.progress) as bar:
            for scene in generate_scenes(config.synthetic, seed=config.scene_seed, size=s):
                arrays.append(np.asarray(scene.image, dtype=np.uint8))
                captions.append(scene.caption)
                boxes.append(tuple(tuple(int(v) for v in o.box) for o in scene.objects
                                   if OBJECT_MASK_RANGE[0] <= float(np.count_nonzero(o.mask)) / (s * s) <= OBJECT_MASK_RANGE[1]))
                bar.update()
        sources["synthetic_scenes"] = config.synthetic
    if config.procedural:
        with _bar(config.procedural, "procedural images", config.progress) as bar:
            for i in range(config.procedural):
                arrays.append(np.asarray(procedural_image(i, seed=config.scene_seed, size=s), dtype=np.uint8))
                captions.append(None)
                bar.update()
        sources["procedural"] = config.procedural
    for folder in config.folders:
        from corpora.image_layouts import iter_image_layout

        before, errors = len(arrays), 0
        for item in iter_image_layout(folder):
            image = getattr(item, "image", None)
            if image is None:  # an ItemError
                errors += 1
                log.warning("training data: skipped %s", item)
                continue
            arrays.append(square_uint8(image.to_pil(), s))
            text = (item.text or "").strip()
            captions.append(text or None)
        sources[str(folder)] = len(arrays) - before
        if errors:
            log.warning("training data: %d items of %s could not be used", errors, folder)
    n_extra = 0
    for img, caption in extra:
        arrays.append(square_uint8(img, s))
        captions.append(caption.strip() if caption and caption.strip() else None)
        n_extra += 1
    if n_extra:
        sources["extra"] = n_extra
    if len(arrays) < 2:
        raise InvalidInputError("training data: need at least 2 images (use --synthetic, --procedural or --folder)")
    boxes += [()] * (len(arrays) - len(boxes))
    return TrainingData(np.stack(arrays), captions, sources, boxes)


# --------------------------------------------------------------------------- augmentation


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.array(Image.open(buf).convert("RGB"), dtype=np.uint8)


def augment(img: np.ndarray, rng: np.random.Generator, boxes: Sequence[tuple[int, int, int, int]] = ()) -> np.ndarray:
    """One random view of a uint8 ``HxWx3`` image (crop, colour, greyscale, box, JPEG); uint8, cropped size.

    ``boxes`` are annotated objects' boxes in ``img`` coordinates; a masked view zeroes one of them
    (share :data:`OBJECT_MASK_SHARE`) instead of a random box.
    """
    h, w = img.shape[:2]
    fy, fx = rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.0)
    ch, cw = max(8, round(h * fy)), max(8, round(w * fx))
    top = int(np.clip(round((h - ch) / 2 + rng.uniform(-0.5, 0.5) * (h - ch)), 0, h - ch))
    left = int(np.clip(round((w - cw) / 2 + rng.uniform(-0.5, 0.5) * (w - cw)), 0, w - cw))
    x = img[top : top + ch, left : left + cw].astype(np.float32)
    if rng.random() < 0.8:  # mild colour jitter, no hue
        x = x * rng.uniform(0.85, 1.15)
        mean = x.mean()
        x = (x - mean) * rng.uniform(0.85, 1.15) + mean
        grey = x.mean(axis=2, keepdims=True)
        x = (x - grey) * rng.uniform(0.8, 1.2) + grey
    if rng.random() < 0.25:
        x = np.repeat((x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None], 3, axis=2)
    x = np.clip(x, 0, 255)
    if rng.random() < MASK_PROBABILITY:
        masked_object = False
        if boxes and rng.random() < OBJECT_MASK_SHARE:  # zero a whole annotated object, as MrM does
            bx0, by0, bx1, by1 = boxes[int(rng.integers(len(boxes)))]
            bx0, bx1 = max(0, bx0 - left), min(cw, bx1 - left)
            by0, by1 = max(0, by0 - top), min(ch, by1 - top)
            if bx1 > bx0 and by1 > by0:
                x[by0:by1, bx0:bx1] = 0
                masked_object = True
        if not masked_object:  # a random box of 2-25% of the area
            area = rng.uniform(0.02, 0.25) * ch * cw
            aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
            bh = int(min(ch, max(1, round(math.sqrt(area / aspect)))))
            bw = int(min(cw, max(1, round(math.sqrt(area * aspect)))))
            y0, x0 = int(rng.integers(0, ch - bh + 1)), int(rng.integers(0, cw - bw + 1))
            r = rng.random()
            if r < 0.8:
                x[y0 : y0 + bh, x0 : x0 + bw] = 0
            elif r < 0.9:
                x[y0 : y0 + bh, x0 : x0 + bw] = rng.uniform(0, 255)
            else:
                x[y0 : y0 + bh, x0 : x0 + bw] = rng.uniform(0, 255, size=(bh, bw, 1))
    out = np.round(x).astype(np.uint8)
    if rng.random() < 0.5:
        out = jpeg(out, int(rng.integers(30, 96)))
    return out


def _views(data: TrainingData, idx: Sequence[int], epoch: int, seed: int, pp: PreprocessConfig) -> torch.Tensor:
    """Two augmented, preprocessed views of each image: ``[2B, 3, S, S]`` (views A then views B)."""
    a, b = [], []
    for i in idx:
        rng = np.random.default_rng([seed, epoch, int(i)])
        for bucket in (a, b):
            view = torch.from_numpy(augment(data.images[i], rng, data.boxes(int(i)))).permute(2, 0, 1).float().div_(255.0)
            bucket.append(preprocess_pixels(view, pp))
    return torch.cat(a + b)


# --------------------------------------------------------------------------- losses


def lit_loss(img: torch.Tensor, txt: torch.Tensor, same: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of unit image vectors ``img`` against unit caption vectors ``txt``;
    ``same[i, j]`` marks identical captions (soft multi-positive targets)."""
    logits = scale * img @ txt.T
    target = same.float() / same.float().sum(dim=1, keepdim=True)
    return 0.5 * (torch.sum(-target * F.log_softmax(logits, dim=1), dim=1).mean()
                  + torch.sum(-target * F.log_softmax(logits.T, dim=1), dim=1).mean())


def instance_loss(z: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """NT-Xent over ``2B`` unit vectors where row ``i`` and ``i + B`` are views of one image."""
    n = z.shape[0] // 2
    logits = scale * z @ z.T
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


# --------------------------------------------------------------------------- evaluation


def recall_at(queries: np.ndarray, keys: np.ndarray, k: int) -> float:
    """Share of queries ``i`` whose key ``i`` is among the ``k`` most similar keys (ties count against)."""
    sims = queries @ keys.T
    own = np.diag(sims)
    better = (sims >= own[:, None]).sum(axis=1) - 1  # a tie with another key counts as ranked above
    return float(np.mean(better < k))


def near_duplicate_recall(encoder: Any, images: Sequence[Image.Image], *, seed: int = 0,
                          kinds: Sequence[str] = ("mask", "jpeg50", "crop90")) -> dict[str, float]:
    """Recall@1 of finding each image among all of them from a perturbed copy
    (:func:`heterag.evaluation.images.perturb`, random boxes for ``mask``)."""
    keys = encoder.encode_images(images, progress=False)
    out = {}
    for kind in kinds:
        rng = np.random.default_rng([seed, len(kind)])
        queries = encoder.encode_images([perturb(im, kind, rng=rng) for im in images], progress=False)
        out[kind] = recall_at(queries, keys, 1)
    return out


def validate(encoder: Any, n: int, *, size: int = 128, seed: int = VALIDATION_SCENE_SEED) -> dict[str, float]:
    """Held-out checks on ``n`` synthetic scenes of ``seed``: near-duplicate R@1 and caption->image R@1/R@5."""
    from corpora.synthetic_scenes import generate_scenes

    scenes = list(generate_scenes(n, seed=seed, size=size))
    images = [s.image for s in scenes]
    out = {f"near_dup_r1_{k}": v for k, v in near_duplicate_recall(encoder, images, seed=seed).items()}
    img = encoder.encode_images(images, progress=False)
    txt = encoder.encode_texts([s.caption for s in scenes])
    out["text_to_image_r1"] = recall_at(txt, img, 1)
    out["text_to_image_r5"] = recall_at(txt, img, 5)
    out["n"] = float(n)
    return out


# --------------------------------------------------------------------------- training


class _Trainee(torch.nn.Module):
    def __init__(self, arch: DefaultArchitecture):
        super().__init__()
        self.net = DefaultImageNet(arch)
        self.log_lit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.log_inst_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.1)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and not name.startswith("log_") else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; weights are for everyone to read
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_default_weights(net: DefaultImageNet, out_dir: Path, config: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``default_image_encoder.safetensors`` (float16) and its JSON config atomically."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() if v.is_floating_point() else v.detach().contiguous()
             for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    weights, cfg_path = out_dir / DEFAULT_WEIGHTS, out_dir / DEFAULT_CONFIG
    _atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={"format": "pt", "identity": config["identity"]}))
    _atomic_write(cfg_path, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8"))
    return weights, cfg_path


def train_image_encoder(
    config: TrainConfig, *, extra: Iterable[tuple[Image.Image, str | None]] = ()
) -> TrainResult:
    """Train the default image encoder per ``config`` and write its weights and config to ``config.out_dir``.

    ``extra`` adds (PIL image, caption or None) pairs to the data (tests, custom sources).
    """
    from heterag.encoding.image_encoders import DefaultImageEncoder
    from heterag.encoding.text_encoder import load_text_encoder

    check_train_out(config.out_dir)
    t0 = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        data = build_training_data(config, extra=extra)
        text_encoder = load_text_encoder(None)
        captioned = [i for i, c in enumerate(data.captions) if c is not None]
        distinct = sorted({data.captions[i] for i in captioned})
        caption_id = np.full(len(data), -1, dtype=np.int64)
        if distinct:
            lookup = {c: k for k, c in enumerate(distinct)}
            caption_id[captioned] = [lookup[data.captions[i]] for i in captioned]
            log.info("embedding %d distinct captions with %s", len(distinct), text_encoder.identity)
            caption_vecs = torch.from_numpy(text_encoder.encode(distinct, show_progress=config.progress))
        else:
            caption_vecs = torch.zeros((0, config.embed_dim))
        if distinct and caption_vecs.shape[1] != config.embed_dim:
            raise InvalidInputError(f"train config: embed_dim {config.embed_dim} differs from the text encoder's "
                                    f"{caption_vecs.shape[1]}")
        prep_seconds = time.perf_counter() - t0
        log.info("training data: %d images (%d captioned) from %s, ready in %.0f s",
                 len(data), len(captioned), data.sources, prep_seconds)

        torch.manual_seed(config.seed)
        model = _Trainee(config.architecture())
        opt = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98))
        batch = min(config.batch_size, len(data))
        steps_per_epoch = len(data) // batch
        total = steps_per_epoch * config.epochs
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        warmup = min(config.warmup_steps, max(1, total // 10))

        def lr_at(step: int) -> float:
            if step < warmup:
                return config.lr * (step + 1) / warmup
            return config.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

        pp = config.preprocess()
        order_gen = torch.Generator().manual_seed(config.seed)
        losses: list[dict[str, float]] = []
        running: dict[str, float] = {}
        step = 0
        model.train()
        bar = _bar(total, "train", config.progress, unit="step")
        try:
            for epoch in range(config.epochs):
                order = torch.randperm(len(data), generator=order_gen).numpy()
                for b in range(steps_per_epoch):
                    if step >= total:
                        break
                    idx = order[b * batch : (b + 1) * batch]
                    views = _views(data, idx, epoch, config.seed, pp)
                    for g in opt.param_groups:
                        g["lr"] = lr_at(step)
                    z = F.normalize(model.net(views), dim=-1)
                    n = len(idx)
                    parts: dict[str, torch.Tensor] = {}
                    cid = torch.from_numpy(caption_id[idx])
                    has = cid >= 0
                    if bool(has.any()):
                        txt = caption_vecs[cid[has]]
                        same = cid[has][:, None] == cid[has][None, :]
                        scale = model.log_lit_scale.exp().clamp(max=100.0)
                        parts["lit"] = 0.5 * (lit_loss(z[:n][has], txt, same, scale) + lit_loss(z[n:][has], txt, same, scale))
                    if config.instance_weight > 0:
                        parts["instance"] = instance_loss(z, model.log_inst_scale.exp().clamp(max=100.0))
                    loss = parts.get("lit", 0.0) + config.instance_weight * parts.get("instance", 0.0)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    step += 1
                    for k, v in {"loss": loss, **parts}.items():
                        running[k] = running.get(k, 0.0) + float(v.detach())
                    running["_n"] = running.get("_n", 0.0) + 1
                    if step % config.log_every == 0 or step == total or step == 1:
                        count = running.pop("_n")
                        entry = {"step": float(step), "epoch": float(epoch), **{k: v / count for k, v in running.items()},
                                 "lit_temperature": float(1 / model.log_lit_scale.detach().exp()),
                                 "instance_temperature": float(1 / model.log_inst_scale.detach().exp())}
                        losses.append(entry)
                        running = {}
                        log.info("step %d/%d epoch %d: %s", step, total, epoch,
                                 ", ".join(f"{k}={v:.4f}" for k, v in entry.items() if k not in ("step", "epoch")))
                    bar.update()
        finally:
            bar.close()
        train_seconds = time.perf_counter() - t0 - prep_seconds

        net = model.net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        meta: dict[str, Any] = {
            "identity": DEFAULT_IDENTITY,
            "architecture": {"name": "DefaultImageNet", **config.architecture().to_dict()},
            "preprocess": {"image_size": pp.image_size, "mean": list(pp.mean), "std": list(pp.std),
                           "interpolation": pp.interpolation, "resize_mode": pp.resize_mode},
            "text_encoder": text_encoder.identity,
            "text_encoder_spec": None,
            "dtype": "float16",
            "parameters": sum(p.numel() for p in net.parameters()),
            "training": {
                "command": config.command or _command_for(config),
                "config": config.to_dict(),
                "data": {"sources": data.sources, "images": len(data), "captioned": len(captioned),
                         "distinct_captions": len(distinct)},
                "steps": step,
                "prep_seconds": round(prep_seconds, 1),
                "train_seconds": round(train_seconds, 1),
                "torch": torch.__version__,
                "threads": config.threads,
                "loss_curve": losses,
                "final_losses": losses[-1] if losses else {},
            },
        }
        weights, cfg_path = save_default_weights(net, config.out_dir, meta)
        validation: dict[str, float] = {}
        if config.validation_scenes:
            encoder = DefaultImageEncoder(config.out_dir)  # the saved float16 weights, as shipped
            validation = validate(encoder, config.validation_scenes, size=config.store_size)
            log.info("held-out check (%d scenes of seed %d): %s", config.validation_scenes, VALIDATION_SCENE_SEED,
                     ", ".join(f"{k}={v:.3f}" for k, v in validation.items()))
            meta["validation"] = {"scene_seed": VALIDATION_SCENE_SEED, **validation}
            weights, cfg_path = save_default_weights(net, config.out_dir, meta)
        seconds = time.perf_counter() - t0
        log.info("wrote %s (%.1f MB) in %.0f s", weights, weights.stat().st_size / 1e6, seconds)
        return TrainResult(weights, cfg_path, step, seconds, len(data), len(captioned), losses, validation)
    finally:
        torch.set_num_threads(previous_threads)


#: CLI option -> TrainConfig field, in the order the recorded command lists them.
_CLI_FIELDS = (("--synthetic", "synthetic"), ("--scene-seed", "scene_seed"), ("--procedural", "procedural"),
               ("--epochs", "epochs"), ("--batch-size", "batch_size"), ("--lr", "lr"),
               ("--instance-weight", "instance_weight"), ("--seed", "seed"), ("--threads", "threads"),
               ("--max-steps", "max_steps"), ("--validation-scenes", "validation_scenes"))
_ALWAYS = {"synthetic", "procedural", "epochs", "seed"}


def _command_for(config: TrainConfig) -> str:
    """The ``heterag train-image-encoder`` command line that reproduces ``config``."""
    default = TrainConfig()
    parts = ["heterag train-image-encoder"]
    for option, name in _CLI_FIELDS:
        value = getattr(config, name)
        if name in _ALWAYS or value != getattr(default, name):
            parts.append(f"{option} {value}")
    parts += [f"--folder {f}" for f in config.folders]
    parts.append(f"--out {config.out_dir}")
    return " ".join(parts)
