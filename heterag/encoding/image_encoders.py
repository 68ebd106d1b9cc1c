"""Image encoders behind one interface: the offline ``default`` CNN and any open_clip model.

Every encoder maps images to unit-norm vectors and has a *text side* in the same space, so a
text query can search images. All of it is differentiable in torch: the attack sandbox takes
gradients of :meth:`ImageEncoder.embed_pixels` with respect to pixels in [0, 1].

Specs accepted by :func:`load_image_encoder`:

``default`` (or None)
    The compact CNN shipped in ``heterag/weights/default_image_encoder.safetensors``
    (trained by :mod:`heterag.training.image_encoder`; see ``default_image_encoder.json`` beside it). Its
    text side is the default text encoder (all-MiniLM-L6-v2, kept frozen during training),
    so images land in the same 384-d space as the text collections. No downloads.
``open_clip:ARCH``
    open_clip architecture ``ARCH`` with *random* weights (seeded, so every process builds the
    same model). For tests and benchmarks of the machinery, not for retrieval quality.
``open_clip:ARCH:TAG``
    A pretrained open_clip tag (``open_clip.list_pretrained_tags_by_model(ARCH)``); the
    weights are fetched from the hub at load time.
``open_clip:hf-hub:ORG/NAME``
    A model on the Hugging Face hub with an open_clip config (e.g. BiomedCLIP); needs network.
``open_clip:ARCH:/path/to/checkpoint.safetensors`` (or ``.pt``/``.pth``/``.bin``)
    A local checkpoint of ``ARCH``. Loaded with safetensors or ``torch.load(weights_only=True)``:
    never unpickled. Its identity records the file's SHA-256, not its path.

``preprocess`` reproduces the model's own evaluation transform (open_clip's PIL pipeline:
resize the shorter side with antialiasing, centre crop, normalise) on tensors, so it is
differentiable; the default encoder uses the same code with its own settings.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from heterag.core.errors import HeteragError, InvalidInputError, UnknownNameError
from heterag.core.images import ImageRef, load_image, pil_to_tensor, to_rgb
from heterag.encoding.batching import WorkerBatcher, default_worker
from heterag.encoding.text_encoder import few_threads

log = logging.getLogger(__name__)

#: Spec prefixes :func:`load_image_encoder` knows.
IMAGE_ENCODERS: tuple[str, ...] = ("default", "open_clip")

#: Where the shipped default weights and their config live.
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"  # heterag/weights
DEFAULT_WEIGHTS = "default_image_encoder.safetensors"
DEFAULT_CONFIG = "default_image_encoder.json"
DEFAULT_IDENTITY = "heterag-default-image-v1"

#: Seed of open_clip models built without weights (``open_clip:ARCH``).
RANDOM_INIT_SEED = 0
#: Jobs with at least this many images show a progress bar (unless HETERAG_NO_PROGRESS is set).
PROGRESS_THRESHOLD = 256
#: ``encode_images`` calls of at most this many images (a query image) are preprocessed in the caller's thread
#: and embedded on the query-encoder worker, merged with other threads' calls (:mod:`heterag.encoding.batching`).
QUERY_IMAGES = 4
#: Most images in one merged forward pass of query images.
QUERY_BATCH = 32
_CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")

ImageLike = ImageRef | Image.Image


# --------------------------------------------------------------------------- interface


@runtime_checkable
class ImageEncoder(Protocol):
    """What every image encoder offers (see the module docstring for the specs that build one)."""

    identity: str
    dim: int
    image_size: int
    text_identity: str
    model: nn.Module

    def pixels(self, image: ImageLike) -> torch.Tensor: ...

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def encode_images(
        self, images: Sequence[ImageLike], *, batch_size: int = 32, progress: bool | None = None
    ) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class PreprocessConfig:
    """An evaluation transform: resize (``resize_mode``), centre crop to ``image_size``, normalise.

    ``resize_mode`` follows open_clip: ``shortest`` (shorter side to the size, then centre
    crop), ``longest`` (longer side to the size, then centre pad with ``fill``) or ``squash``.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill: int = 0

    def __post_init__(self) -> None:
        if self.interpolation not in ("bicubic", "bilinear"):
            raise InvalidInputError(f"unsupported interpolation {self.interpolation!r} (bicubic or bilinear)")
        if self.resize_mode not in ("shortest", "longest", "squash"):
            raise InvalidInputError(f"unsupported resize mode {self.resize_mode!r} (shortest, longest or squash)")

    @classmethod
    def from_open_clip(cls, cfg: dict[str, Any]) -> PreprocessConfig:
        size = cfg.get("size", 224)
        if isinstance(size, list | tuple):
            if len(set(size)) != 1:
                raise InvalidInputError(f"non-square model input {tuple(size)} is not supported")
            size = size[0]
        interpolation = cfg.get("interpolation") or "bicubic"
        if interpolation != "bilinear":  # open_clip maps "random" (training only) to bicubic at inference
            interpolation = "bicubic"
        mean, std = cfg.get("mean"), cfg.get("std")
        mean = tuple(mean) if isinstance(mean, list | tuple) else (float(mean),) * 3
        std = tuple(std) if isinstance(std, list | tuple) else (float(std),) * 3
        return cls(int(size), mean, std, interpolation, cfg.get("resize_mode") or "shortest", int(cfg.get("fill_color", 0)))


def preprocess_pixels(pixels: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """``[B,3,H,W]`` (or ``[3,H,W]``) in [0, 1] -> ``[B,3,S,S]`` normalised model input, differentiable.

    The same steps as open_clip's PIL evaluation transform, on tensors: antialiased resize
    (torchvision's size rounding), centre crop (or pad), then ``(x - mean) / std``. The
    resized image is clamped to [0, 1] as PIL's 8-bit result is.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    if not isinstance(pixels, torch.Tensor):
        raise InvalidInputError(f"pixels must be a torch tensor, got {type(pixels).__name__}")
    x = pixels.unsqueeze(0) if pixels.ndim == 3 else pixels
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] < 1 or x.shape[3] < 1:
        raise InvalidInputError(f"pixels must be [3,H,W] or [B,3,H,W], got {tuple(pixels.shape)}")
    x = x.float()
    s = cfg.image_size
    mode = InterpolationMode.BICUBIC if cfg.interpolation == "bicubic" else InterpolationMode.BILINEAR
    h, w = x.shape[-2:]
    if cfg.resize_mode == "squash":
        if (h, w) != (s, s):
            x = TF.resize(x, [s, s], interpolation=mode, antialias=True)
    elif cfg.resize_mode == "shortest":
        if min(h, w) != s:
            x = TF.resize(x, s, interpolation=mode, antialias=True)
        x = TF.center_crop(x, [s, s])
    else:  # longest: scale the longer side to s (open_clip's ResizeKeepRatio), then centre pad/crop
        from open_clip.transform import center_crop_or_pad

        ratio = max(h, w) / s
        size = [round(h / ratio), round(w / ratio)]
        if size != [h, w]:
            x = TF.resize(x, size, interpolation=mode, antialias=True)
        x = center_crop_or_pad(x, [s, s], fill=cfg.fill / 255.0)
    if mode == InterpolationMode.BICUBIC:
        x = x.clamp(0.0, 1.0)  # bicubic overshoots; PIL's 8-bit output cannot
    mean = torch.tensor(cfg.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def image_pixels(image: Any) -> torch.Tensor:
    """``[3,H,W]`` float32 in [0, 1] at the image's own size (8-bit RGB, as :meth:`ImageRef.to_pil`)."""
    if isinstance(image, ImageRef):
        return pil_to_tensor(image.to_pil())
    if isinstance(image, Image.Image):
        return pil_to_tensor(to_rgb(image))
    return pil_to_tensor(load_image(image).to_pil())


def _show_progress(n: int, progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return n >= PROGRESS_THRESHOLD and not os.environ.get("HETERAG_NO_PROGRESS")


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class _TorchImageEncoder:
    """Shared machinery: pixels, preprocess, batched no-grad encoding. Subclasses set the model,
    the preprocess config and ``_embed`` (normalised model input -> raw embedding)."""

    identity: str
    text_identity: str
    dim: int
    model: nn.Module
    preprocess_config: PreprocessConfig

    @property
    def image_size(self) -> int:
        return self.preprocess_config.image_size

    def pixels(self, image: ImageLike) -> torch.Tensor:
        return image_pixels(image)

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        return preprocess_pixels(pixels, self.preprocess_config)

    def _embed(self, inputs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` (or ``[3,H,W]``) pixels in [0, 1] -> ``[B, dim]`` unit-norm embeddings, differentiable."""
        return F.normalize(self._embed(self.preprocess(pixels)).float(), dim=-1)

    def encode_images(
        self, images: Sequence[ImageLike], *, batch_size: int = 32, progress: bool | None = None
    ) -> np.ndarray:
        """Embed images of any sizes; float32 ``(n, dim)`` with unit-norm rows.

        Up to :data:`QUERY_IMAGES` images (a query) are embedded on the query-encoder worker, in one forward
        pass with the query images of other threads (the same vectors as alone, up to float rounding); larger
        calls run here in passes of ``batch_size``. Raises :class:`~heterag.core.errors.EncoderWorkerError`
        when the worker gives no result in time."""
        images = list(images)
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        if not images:
            return out
        if len(images) <= QUERY_IMAGES and not progress:
            with torch.inference_mode():
                inputs = [self.preprocess(self.pixels(img)) for img in images]  # [1,3,S,S] each, in this thread
            return np.stack(self._query_batcher(inputs, key=tuple(inputs[0].shape[1:])))
        from tqdm.auto import tqdm

        bar = tqdm(total=len(images), unit="img", desc="encode images", disable=not _show_progress(len(images), progress))
        try:
            with torch.inference_mode(), few_threads(len(images)):
                for start in range(0, len(images), batch_size):
                    batch = images[start : start + batch_size]
                    inputs = torch.cat([self.preprocess(self.pixels(img)) for img in batch])
                    vecs = F.normalize(self._embed(inputs).float(), dim=-1)
                    out[start : start + len(batch)] = vecs.cpu().numpy()
                    bar.update(len(batch))
        finally:
            bar.close()
        return out

    def __getstate__(self) -> dict[str, Any]:
        """Copies and pickles leave out the query batcher: it holds the worker's locks and is bound to this
        encoder's weights (a copy, e.g. a perturbed victim, makes its own on first use)."""
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        state.pop("_query_batcher", None)
        return state

    @cached_property
    def _query_batcher(self) -> WorkerBatcher[torch.Tensor, np.ndarray]:
        return default_worker().batcher(self._embed_inputs, max_items=QUERY_BATCH)

    def _embed_inputs(self, inputs: list[torch.Tensor]) -> list[np.ndarray]:
        """Unit-norm float32 ``(dim,)`` vectors of preprocessed ``[1,3,S,S]`` inputs, in one forward pass."""
        with torch.inference_mode(), few_threads(len(inputs)):
            vecs = F.normalize(self._embed(torch.cat(inputs)).float(), dim=-1)
        return list(vecs.cpu().numpy())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(identity={self.identity!r}, dim={self.dim}, image_size={self.image_size})"


def _check_texts(texts: Sequence[str]) -> list[str]:
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise InvalidInputError(f"cannot encode empty text (item {i})")
    return texts


# --------------------------------------------------------------------------- the default CNN


@dataclass(frozen=True)
class DefaultArchitecture:
    """Hyperparameters of :class:`DefaultImageNet` (stored in the weights' JSON config)."""

    widths: tuple[int, ...] = (32, 48, 96, 192, 256)
    embed_dim: int = 384
    grid: int = 3  # the last feature map is average-pooled to grid x grid and flattened (keeps layout)

    def to_dict(self) -> dict[str, Any]:
        return {"widths": list(self.widths), "embed_dim": self.embed_dim, "grid": self.grid}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DefaultArchitecture:
        return cls(widths=tuple(int(w) for w in d["widths"]), embed_dim=int(d["embed_dim"]), grid=int(d["grid"]))


class _ResBlock(nn.Module):
    """Two 3x3 convolutions (BN, GELU) with a strided average-pool + 1x1 shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        pool: nn.Module = nn.AvgPool2d(stride, ceil_mode=True) if stride > 1 else nn.Identity()
        self.shortcut = nn.Sequential(pool, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.gelu(y + self.shortcut(x))


class DefaultImageNet(nn.Module):
    """Compact ResNet-style CNN: a stride-2 stem, one stride-2 residual block per width, then
    the global mean *and* a ``grid x grid`` average-pooled map of the last features (so the
    embedding keeps where things are), a linear projection to ``embed_dim``. Unnormalised output."""

    def __init__(self, arch: DefaultArchitecture = DefaultArchitecture()):
        super().__init__()
        w = arch.widths
        self.arch = arch
        self.stem = nn.Sequential(nn.Conv2d(3, w[0], 3, 2, 1, bias=False), nn.BatchNorm2d(w[0]), nn.GELU())
        self.stages = nn.Sequential(*[_ResBlock(w[i], w[i + 1], 2) for i in range(len(w) - 1)])
        feat = w[-1] * (1 + arch.grid * arch.grid)
        self.norm = nn.LayerNorm(feat)
        self.proj = nn.Linear(feat, arch.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stages(self.stem(x))
        z = torch.cat([f.mean(dim=(2, 3)), F.adaptive_avg_pool2d(f, self.arch.grid).flatten(1)], dim=1)
        return self.proj(self.norm(z))


def load_default_net(weights_dir: str | os.PathLike[str] | None = None) -> tuple[DefaultImageNet, dict[str, Any]]:
    """Build :class:`DefaultImageNet` from ``default_image_encoder.{json,safetensors}`` in
    ``weights_dir`` (default: the shipped ones). Returns ``(model in eval mode, config dict)``."""
    from safetensors.torch import load_file

    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    cfg_path, w_path = folder / DEFAULT_CONFIG, folder / DEFAULT_WEIGHTS
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise InvalidInputError(f"{p}: default image encoder file is missing (train it: heterag train-image-encoder)")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
        arch = DefaultArchitecture.from_dict(config["architecture"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"{cfg_path}: not a valid default image encoder config ({exc})") from None
    net = DefaultImageNet(arch)
    try:
        state = load_file(str(w_path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise InvalidInputError(f"{w_path}: not a readable safetensors file ({exc})") from None
    reference = net.state_dict()
    state = {k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise InvalidInputError(f"{w_path}: weights do not match the config's architecture "
                                f"(missing {missing[:3]}, unexpected {list(unexpected)[:3]})")
    return _freeze(net), config


class DefaultImageEncoder(_TorchImageEncoder):
    """The shipped compact CNN; its text side is the default text encoder (frozen, LiT-style)."""

    def __init__(self, weights_dir: str | os.PathLike[str] | None = None):
        self.model, self.config = load_default_net(weights_dir)
        pp = self.config["preprocess"]
        self.preprocess_config = PreprocessConfig(
            image_size=int(pp["image_size"]), mean=tuple(pp["mean"]), std=tuple(pp["std"]),
            interpolation=pp.get("interpolation", "bilinear"), resize_mode=pp.get("resize_mode", "shortest"),
        )
        folder = Path(weights_dir).resolve() if weights_dir is not None else WEIGHTS_DIR
        # the weights' hash is part of the identity: retrained weights (shipped or not) never pass for
        # others in a collection's fingerprint
        self.identity = f"{self.config.get('identity', DEFAULT_IDENTITY)}:sha256-{_sha256_file(folder / DEFAULT_WEIGHTS)[:16]}"
        self.dim = self.model.arch.embed_dim
        self.text_identity = str(self.config["text_encoder"])
        self._text_spec: str | None = self.config.get("text_encoder_spec")

    def _embed(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    @property
    def text_encoder(self):
        from heterag.encoding.text_encoder import load_text_encoder

        enc = load_text_encoder(self._text_spec)
        if enc.identity != self.text_identity:
            raise HeteragError(f"default image encoder was trained against text encoder {self.text_identity!r}, "
                               f"but {enc.identity!r} loaded")
        return enc

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        texts = _check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.text_encoder.encode(texts)


# --------------------------------------------------------------------------- open_clip


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a local checkpoint without unpickling: safetensors, or ``torch.load(weights_only=True)``.

    Unwraps ``{"state_dict": ...}`` (open_clip training checkpoints) and a ``module.`` prefix.
    """
    label = str(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling refusals, corrupt files, bad headers
        raise InvalidInputError(f"{label}: cannot read checkpoint safely ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InvalidInputError(f"{label}: checkpoint is not a state dict of tensors")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], label: str) -> None:
    """Load ``state`` into an open_clip model strictly, after open_clip's own format fixes."""
    try:
        from open_clip.convert import convert_state_dict

        state = convert_state_dict(model, state)
    except Exception:  # noqa: BLE001 - conversion is best effort; strict loading below decides
        pass
    for key in ("logit_scale", "logit_bias"):
        param = getattr(model, key, None)
        if key in state and isinstance(param, torch.Tensor) and state[key].ndim != param.ndim:
            state[key] = state[key].reshape(param.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None and "logit_scale" in state:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    state.pop("text.transformer.embeddings.position_ids", None)
    try:
        from open_clip.model import resize_pos_embed

        resize_pos_embed(state, model)
    except Exception:  # noqa: BLE001
        pass
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise InvalidInputError(f"{label}: checkpoint does not fit this architecture ({' '.join(first)})") from None


_TOKENIZER_LOCK = threading.Lock()


class OpenClipImageEncoder(_TorchImageEncoder):
    """An open_clip CLIP model: its image tower embeds images, its text tower ``encode_texts``."""

    def __init__(self, spec: str):
        import open_clip

        self.spec = spec
        rest = spec[len("open_clip:"):]
        if not rest:
            raise InvalidInputError(f"image encoder {spec!r}: name an architecture, e.g. open_clip:ViT-B-32 "
                                    "(list them with: python -c 'import open_clip; print(open_clip.list_models())')")
        if rest.startswith("hf-hub:"):
            model_name, tokenizer_name = rest, rest
            self.identity = f"open_clip:{rest}"
            model = self._create(model_name, pretrained=None, spec=spec, remote=True)
        else:
            arch, _, tail = rest.partition(":")
            if arch not in open_clip.list_models():
                close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise InvalidInputError(
                    f"image encoder {spec!r}: unknown open_clip architecture {arch!r}{hint}; "
                    "list them with: python -c 'import open_clip; print(open_clip.list_models())'"
                )
            tokenizer_name = arch
            if not tail:
                self.identity = f"open_clip:{arch}:random-init-seed{RANDOM_INIT_SEED}"
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(RANDOM_INIT_SEED)
                    model = self._create(arch, pretrained=None, spec=spec, remote=False)
            elif self._looks_like_path(tail):
                path = Path(tail).expanduser()
                if not path.is_file():
                    raise InvalidInputError(f"image encoder {spec!r}: checkpoint {path} does not exist")
                if path.suffix not in _CHECKPOINT_SUFFIXES:
                    raise InvalidInputError(f"image encoder {spec!r}: checkpoint {path} must be one of "
                                            f"{', '.join(_CHECKPOINT_SUFFIXES)}")
                digest = _sha256_file(path)
                self.identity = f"open_clip:{arch}:sha256-{digest[:16]}"
                model = self._create(arch, pretrained=None, spec=spec, remote=False)
                _fit_state_dict(model, load_checkpoint_state(path), str(path))
            else:
                tags = open_clip.list_pretrained_tags_by_model(arch)
                if tail not in tags:
                    raise InvalidInputError(
                        f"image encoder {spec!r}: {tail!r} is neither a pretrained tag of {arch} "
                        f"({', '.join(tags) or 'none'}) nor an existing checkpoint file"
                    )
                self.identity = f"open_clip:{arch}:{tail}"
                model = self._create(arch, pretrained=tail, spec=spec, remote=True)
        self.model = _freeze(model)
        self.text_identity = self.identity
        self.preprocess_config = PreprocessConfig.from_open_clip(dict(model.visual.preprocess_cfg))
        try:
            self.tokenizer = open_clip.get_tokenizer(tokenizer_name)
        except Exception as exc:  # noqa: BLE001 - hf tokenizers fetch from the hub
            raise HeteragError(f"could not load the tokenizer of image encoder {spec!r}: {exc} "
                               "(hub tokenizers need network access)") from exc
        with torch.inference_mode():
            probe = model.encode_image(torch.zeros(1, 3, self.image_size, self.image_size))
        self.dim = int(probe.shape[-1])

    @staticmethod
    def _looks_like_path(tail: str) -> bool:
        return "/" in tail or os.sep in tail or tail.startswith("~") or tail.endswith(_CHECKPOINT_SUFFIXES)

    @staticmethod
    def _create(name: str, *, pretrained: str | None, spec: str, remote: bool) -> nn.Module:
        import open_clip

        try:
            return open_clip.create_model(name, pretrained=pretrained, pretrained_text=remote, weights_only=True,
                                          device="cpu")
        except Exception as exc:  # noqa: BLE001 - download and config errors become one message
            hint = " (pretrained weights and hf-hub models need network access at load time)" if remote else ""
            raise HeteragError(f"could not load image encoder {spec!r}: {exc}{hint}") from exc

    def _embed(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(inputs)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        texts = _check_texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode(), few_threads(len(texts)):
            for start in range(0, len(texts), batch_size):
                with _TOKENIZER_LOCK:  # hf tokenizers are not safe to call from several threads at once
                    tokens = self.tokenizer(texts[start : start + batch_size])
                vecs = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
                out[start : start + len(vecs)] = vecs.cpu().numpy()
        return out


# --------------------------------------------------------------------------- loading


_CACHE: dict[str, ImageEncoder] = {}
_LOCK = threading.Lock()


def check_image_encoder_spec(spec: str | None) -> str:
    """Check ``spec`` without loading any weights; returns it stripped.

    Raises :class:`UnknownNameError` for an unknown prefix (listing the choices) and
    :class:`InvalidInputError` for a ``default:DIR`` without weights, an unknown open_clip
    architecture or tag, or a missing checkpoint file. Used before a collection is created, so a
    mistyped ``--image-encoder`` is refused before anything is written.
    """
    if spec is not None and not isinstance(spec, str):
        raise InvalidInputError(f"image encoder spec must be a string, got {type(spec).__name__}")
    key = (spec or "default").strip()
    if key == "default" or key in _CACHE:
        return key
    if key.startswith("default:"):
        folder = Path(key.split(":", 1)[1]).expanduser()
        if not (folder / DEFAULT_WEIGHTS).is_file():
            raise InvalidInputError(f"image encoder {key!r}: no {DEFAULT_WEIGHTS} in {folder} "
                                    "(write one with heterag train-image-encoder --out DIR)")
        return key
    if key != "open_clip" and not key.startswith("open_clip:"):
        raise UnknownNameError("image encoder", key.split(":", 1)[0], IMAGE_ENCODERS)
    rest = key[len("open_clip:"):]
    if not rest:
        raise InvalidInputError(f"image encoder {key!r}: name an architecture, e.g. open_clip:ViT-B-32")
    if rest.startswith("hf-hub:"):
        return key
    import open_clip

    arch, _, tail = rest.partition(":")
    if arch not in open_clip.list_models():
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise InvalidInputError(f"image encoder {key!r}: unknown open_clip architecture {arch!r}{hint}")
    if tail and OpenClipImageEncoder._looks_like_path(tail):
        if not Path(tail).expanduser().is_file():
            raise InvalidInputError(f"image encoder {key!r}: checkpoint {Path(tail).expanduser()} does not exist")
    elif tail and tail not in open_clip.list_pretrained_tags_by_model(arch):
        raise InvalidInputError(f"image encoder {key!r}: {tail!r} is neither a pretrained tag of {arch} nor a checkpoint file")
    return key


def load_image_encoder(spec: str | None = None) -> ImageEncoder:
    """Load (once per process) the image encoder ``spec``.

    ``None`` or ``"default"`` is the shipped CNN; ``"default:DIR"`` the same architecture with weights
    retrained by ``heterag train-image-encoder --out DIR``; ``"open_clip:..."`` a CLIP model.
    """
    if spec is not None and not isinstance(spec, str):
        raise InvalidInputError(f"image encoder spec must be a string, got {type(spec).__name__}")
    key = (spec or "default").strip()
    with _LOCK:
        if key not in _CACHE:
            if key == "default":
                _CACHE[key] = DefaultImageEncoder()
            elif key.startswith("default:"):
                folder = Path(key.split(":", 1)[1]).expanduser()
                if not (folder / DEFAULT_WEIGHTS).is_file():
                    raise InvalidInputError(f"image encoder {key!r}: no {DEFAULT_WEIGHTS} in {folder} "
                                            "(write one with heterag train-image-encoder --out DIR)")
                _CACHE[key] = DefaultImageEncoder(folder)
            elif key == "open_clip" or key.startswith("open_clip:"):
                _CACHE[key] = OpenClipImageEncoder(key)
            else:
                raise UnknownNameError("image encoder", key, IMAGE_ENCODERS)
            log.info("loaded image encoder %s", _CACHE[key].identity)
        return _CACHE[key]
