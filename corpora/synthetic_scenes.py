"""Synthetic scenes: a seeded, unbounded generator of captioned images with exact annotations.

Each scene is a small RGB image (default 128x128) of 1–6 flat objects on a named background.
Every object has a shape, colour, size, texture and position (a cell of a 3x3 grid, from the
object's centre); the scene comes with a fluent caption naming all of them, the visible-pixel
mask and tight box of every object, and question–answer pairs with gold answers (kinds
``colour``, ``count``, ``presence`` and ``position``).

Scene ``i`` of seed ``s`` depends only on ``(s, i, size)``: it is drawn from its own random
stream (``np.random.default_rng([s, i])``), so any slice can be reproduced on its own and
``render_scene(i)`` equals the ``i``-th scene of ``generate_scenes``. The objects, caption and
questions do not depend on ``size`` either (geometry is sampled in unit coordinates), except
in the rare case where an object would be hidden at a small size and is dropped.

Images are drawn at twice the resolution and averaged down (anti-aliasing); an object's mask
holds the output pixels where a strict majority of the sub-pixels show that object after all
later objects are drawn on top, so masks are disjoint and match the final image.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from heterag.core.documents import Document
from heterag.core.errors import InvalidInputError
from heterag.core.images import ImageRef

from .annotated import AnnotatedImage, ObjectAnnotation, QAPair

log = logging.getLogger(__name__)

SOURCE = "synthetic_scenes"
DEFAULT_SIZE = 128
MIN_SIZE, MAX_SIZE = 32, 1024
MAX_OBJECTS = 6
#: Sub-pixels per output pixel along each axis (anti-aliasing by averaging).
SUPERSAMPLE = 2

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross", "diamond")
PLURALS: dict[str, str] = {"cross": "crosses"}

#: Object colours: name -> (main RGB, pattern RGB). Textures draw their pattern in the second,
#: a darker or lighter shade of the same colour, so every object pixel stays in its colour family.
COLOURS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "red": ((220, 40, 40), (130, 15, 15)),
    "orange": ((255, 140, 20), (175, 85, 0)),
    "yellow": ((245, 220, 40), (170, 145, 0)),
    "green": ((40, 170, 60), (15, 95, 30)),
    "blue": ((40, 80, 230), (140, 170, 255)),
    "purple": ((150, 60, 200), (215, 160, 245)),
    "white": ((245, 245, 245), (190, 190, 190)),
    "black": ((20, 20, 20), (85, 85, 85)),
}

#: Object radius as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.065, "medium": 0.10, "large": 0.14}
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")

#: Background base colours (mid-tones, so white and black objects both stand out).
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "brown": (122, 90, 62),
    "teal": (40, 112, 112),
}
#: Background styles: name template for each.
BACKGROUND_STYLES: dict[str, str] = {"plain": "{} background", "gradient": "{} gradient background", "noisy": "noisy {} background"}
BACKGROUNDS: tuple[str, ...] = tuple(
    template.format(colour) for template in BACKGROUND_STYLES.values() for colour in BACKGROUND_COLOURS
)

#: 3x3 grid regions, row-major from the top left.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)
#: How the caption places an object in each region.
_POSITION_PHRASES: dict[str, str] = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "centre": "in the centre", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}

#: Shape extent beyond the nominal radius (stars, triangles and diamonds reach further), for placement.
_EXTENT: dict[str, float] = {"triangle": 1.1, "star": 1.1, "diamond": 1.1}
#: Placement wants centres at least this share of the two objects' summed extents apart, so
#: objects may touch or overlap a little but rarely hide one another.
_MIN_SEPARATION = 0.9
_PLACEMENT_TRIES = 40
#: An object whose visible pixels are under this share of its own pixels is dropped.
_MIN_VISIBLE = 0.5


def position_of(cx: float, cy: float, width: int, height: int) -> str:
    """The 3x3 grid region (e.g. ``"top left"``, ``"centre"``) that contains the point ``(cx, cy)``."""
    col = min(2, max(0, int(3 * cx / width)))
    row = min(2, max(0, int(3 * cy / height)))
    return POSITIONS[3 * row + col]


@dataclass(frozen=True, eq=False)
class SceneObject:
    """One drawn object: its attributes, tight box ``(x0, y0, x1, y1)`` (x1/y1 exclusive) of its
    visible pixels, and ``mask``, a read-only boolean array ``(height, width)`` of those pixels.

    ``center`` is where the object was placed (output pixels, ``(x, y)``) and ``position`` its
    3x3 grid region; the visible mask's own centre may differ when a later object covers part of it.
    """

    shape: str
    colour: str
    size: str
    texture: str
    position: str
    box: tuple[int, int, int, int]
    mask: np.ndarray = field(repr=False)
    center: tuple[float, float] = (0.0, 0.0)

    @property
    def label(self) -> str:
        """E.g. ``"small red striped circle"`` (always all four attributes)."""
        return f"{self.size} {self.colour} {self.texture} {self.shape}"

    @property
    def attributes(self) -> dict[str, str]:
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "texture": self.texture,
                "position": self.position}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SceneObject):
            return NotImplemented
        return (self.attributes == other.attributes and self.box == other.box and self.center == other.center
                and np.array_equal(self.mask, other.mask))

    def __hash__(self) -> int:
        return hash((self.label, self.position, self.box))


@dataclass(frozen=True)
class Scene:
    """One rendered scene: its image, caption, objects (in drawing order) and QA pairs."""

    index: int
    seed: int
    image: Image.Image
    caption: str
    objects: tuple[SceneObject, ...]
    qa: tuple[QAPair, ...]
    background: str

    @property
    def id(self) -> str:
        return f"synthetic-{self.seed}-{self.index}"

    def to_annotated(self) -> AnnotatedImage:
        """This scene as an :class:`~corpora.annotated.AnnotatedImage` (image encoded as PNG)."""
        objects = tuple(
            ObjectAnnotation(label=o.label, box=o.box, mask=o.mask, attributes=o.attributes) for o in self.objects
        )
        return AnnotatedImage(
            id=self.id,
            image=ImageRef.from_pil(self.image, source=self.id),
            text=self.caption,
            title="",
            objects=objects,
            qa=self.qa,
            metadata={"source": SOURCE, "seed": self.seed, "index": self.index, "n_objects": len(self.objects)},
        )

    def to_document(self) -> Document:
        """The document the pipeline ingests: the caption as text, the scene as image."""
        return self.to_annotated().to_document()


# --------------------------------------------------------------------------- validation


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidInputError(f"{SOURCE}: {name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise InvalidInputError(f"{SOURCE}: {name} must be {bound}, got {value}")
    return value


def _check_size(size: Any) -> int:
    return _check_int("size", size, MIN_SIZE, MAX_SIZE)


# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class _Spec:
    shape: str
    colour: str
    size: str
    texture: str
    cx: float  # centre, unit coordinates
    cy: float

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    @property
    def extent(self) -> float:
        return SIZES[self.size] * _EXTENT.get(self.shape, 1.0)


def _choice(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _place(rng: np.random.Generator, extent: float, placed: list[_Spec]) -> tuple[float, float, float]:
    """Best of up to ``_PLACEMENT_TRIES`` centres for an object of ``extent``: the first whose
    distance to every placed object is at least ``_MIN_SEPARATION`` of the summed extents, else
    the one with the largest worst-case ratio. Returns ``(cx, cy, ratio)``."""
    best = (0.5, 0.5, -1.0)
    for _ in range(_PLACEMENT_TRIES):
        cx, cy = rng.uniform(extent, 1.0 - extent, size=2)
        ratio = min(
            (math.hypot(cx - p.cx, cy - p.cy) / (extent + p.extent) for p in placed), default=math.inf
        )
        if ratio > best[2]:
            best = (float(cx), float(cy), ratio)
        if ratio >= _MIN_SEPARATION:
            break
    return best


def _sample_specs(rng: np.random.Generator) -> tuple[list[_Spec], str, str]:
    """Objects (drawing order), background style and background colour name of one scene."""
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    style = _choice(rng, tuple(BACKGROUND_STYLES))
    bg_colour = _choice(rng, tuple(BACKGROUND_COLOURS))
    specs: list[_Spec] = []
    size_names = tuple(SIZES)
    for _ in range(n):
        shape = _choice(rng, SHAPES)
        colour = _choice(rng, tuple(COLOURS))
        texture = _choice(rng, TEXTURES)
        size_i = int(rng.integers(len(size_names)))
        # Shrink an object that does not fit among the others; keep the least-overlapping spot if none fits.
        while True:
            size = size_names[size_i]
            extent = SIZES[size] * _EXTENT.get(shape, 1.0)
            cx, cy, ratio = _place(rng, extent, specs)
            if ratio >= _MIN_SEPARATION or size_i == 0:
                break
            size_i -= 1
        specs.append(_Spec(shape, colour, size, texture, cx, cy))
    return specs, style, bg_colour


# --------------------------------------------------------------------------- rendering


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of ``shape`` centred on ``(cx, cy)`` with nominal radius ``r`` (pixels, y down)."""
    if shape == "square":
        h = 0.85 * r
        pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif shape == "triangle":
        R = 1.1 * r
        pts = [(R * math.cos(a), R * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        pts = [(x, y + 0.1 * R) for x, y in pts]  # sit the centroid slightly lower: looks centred
    elif shape == "star":
        outer, inner = 1.1 * r, 0.45 * 1.1 * r
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rad = outer if k % 2 == 0 else inner
            pts.append((rad * math.cos(a), rad * math.sin(a)))
    elif shape == "hexagon":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in (k * math.pi / 3 for k in range(6))]
    elif shape == "diamond":
        pts = [(0.0, -1.1 * r), (0.75 * r, 0.0), (0.0, 1.1 * r), (-0.75 * r, 0.0)]
    elif shape == "cross":
        w, e = 0.34 * r, r
        pts = [(-w, -e), (w, -e), (w, -w), (e, -w), (e, w), (w, w), (w, e), (-w, e), (-w, w), (-e, w), (-e, -w), (-w, -w)]
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)
    return [(cx + x, cy + y) for x, y in pts]


def _shape_mask(shape: str, cx: float, cy: float, r: float, width: int, height: int) -> np.ndarray:
    """Boolean ``(height, width)`` mask of the shape (centre relative to the array's corner),
    rasterised with PIL."""
    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=255)
    return np.asarray(layer) > 0


def _pattern(texture: str, xs: np.ndarray, ys: np.ndarray, period: int) -> np.ndarray:
    """Boolean array, True where the texture shows its second colour. ``xs``/``ys`` are integer
    output-pixel coordinates relative to the object's corner, so every output pixel is one colour
    (crisp patterns); ``period`` is the even pattern period in output pixels."""
    half = period // 2
    if texture == "striped":
        return ((xs + ys) // half) % 2 == 1
    if texture == "checkered":
        return (xs // half + ys // half) % 2 == 1
    if texture == "dotted":
        dx = (xs % period) - (period - 1) / 2
        dy = (ys % period) - (period - 1) / 2
        return dx * dx + dy * dy <= max(0.5, (0.3 * period) ** 2)
    return np.zeros(np.broadcast(xs, ys).shape, dtype=bool)


def _background(style: str, colour: str, canvas: int, rng: np.random.Generator) -> np.ndarray:
    """Float ``(canvas, canvas, 3)`` background."""
    base = np.asarray(BACKGROUND_COLOURS[colour], dtype=np.float32)
    out = np.empty((canvas, canvas, 3), dtype=np.float32)
    out[:] = base
    if style == "gradient":
        t = np.linspace(1.3, 0.7, canvas, dtype=np.float32)
        if rng.integers(2):  # vertical or horizontal
            out *= t[:, None, None]
        else:
            out *= t[None, :, None]
    elif style == "noisy":
        # Noise on output pixels (then upsampled), so it survives the anti-aliasing average.
        side = canvas // SUPERSAMPLE
        noise = rng.normal(0.0, 10.0, size=(side, side, 1)).astype(np.float32)
        out += np.repeat(np.repeat(noise, SUPERSAMPLE, axis=0), SUPERSAMPLE, axis=1)
    return out


def _pool(a: np.ndarray) -> np.ndarray:
    """Sum over each ``SUPERSAMPLE`` x ``SUPERSAMPLE`` block of the first two axes (strided adds:
    much faster than a reshaped multi-axis reduction)."""
    s = SUPERSAMPLE
    out = a[0::s, 0::s].astype(np.float32 if a.dtype.kind == "f" else np.int16)
    for dy in range(s):
        for dx in range(s):
            if dx or dy:
                out += a[dy::s, dx::s]
    return out


def _render(specs: list[_Spec], style: str, bg_colour: str, size: int, noise_rng: np.random.Generator
            ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Draw the scene. Returns the uint8 image and, per object, its visible and its own
    (unoccluded) masks on the output grid.

    Each object is rasterised only in its window (its box in whole output pixels), so the cost
    grows with the objects' area, not with the number of objects times the image area."""
    s = SUPERSAMPLE
    canvas = size * s
    img = _background(style, bg_colour, canvas, noise_rng)
    labels = np.full((canvas, canvas), -1, dtype=np.int16)
    period = 2 * max(2, round(size / 40))
    own: list[np.ndarray] = []
    windows: list[tuple[int, int, int, int]] = []
    for k, spec in enumerate(specs):
        r = spec.radius * canvas
        cx, cy = spec.cx * canvas, spec.cy * canvas
        reach = 1.25 * r  # every shape lies within 1.1 r of its centre
        ox0, oy0 = max(0, math.floor((cx - reach) / s)), max(0, math.floor((cy - reach) / s))
        ox1, oy1 = min(size, math.ceil((cx + reach) / s)), min(size, math.ceil((cy + reach) / s))
        windows.append((ox0, oy0, ox1, oy1))
        wx0, wy0 = ox0 * s, oy0 * s
        local = _shape_mask(spec.shape, cx - wx0, cy - wy0, r, (ox1 - ox0) * s, (oy1 - oy0) * s)
        mask = np.zeros((size, size), dtype=bool)
        mask[oy0:oy1, ox0:ox1] = _pool(local) * 2 > s * s
        own.append(mask)
        ys_idx, xs_idx = np.nonzero(local)
        if len(xs_idx) == 0:
            continue
        # Pattern coordinates: whole output pixels from the object's corner.
        x0, y0 = math.floor((cx - r) / s), math.floor((cy - r) / s)
        xs = (xs_idx + wx0) // s - x0
        ys = (ys_idx + wy0) // s - y0
        main, second = (np.asarray(c, dtype=np.float32) for c in COLOURS[spec.colour])
        alt = _pattern(spec.texture, xs, ys, period)
        img[ys_idx + wy0, xs_idx + wx0] = np.where(alt[:, None], second, main)
        labels[ys_idx + wy0, xs_idx + wx0] = k
    image = np.clip(_pool(img) / (s * s) + 0.5, 0, 255).astype(np.uint8)
    visible: list[np.ndarray] = []
    for k, (ox0, oy0, ox1, oy1) in enumerate(windows):
        mask = np.zeros((size, size), dtype=bool)
        mask[oy0:oy1, ox0:ox1] = _pool(labels[oy0 * s:oy1 * s, ox0 * s:ox1 * s] == k) * 2 > s * s
        visible.append(mask)
    return image, visible, own


# --------------------------------------------------------------------------- text


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(shape: str) -> str:
    return PLURALS.get(shape, shape + "s")


def _phrase(obj: SceneObject) -> str:
    texture = "" if obj.texture == "solid" else f" {obj.texture}"
    return f"a {obj.size} {obj.colour}{texture} {obj.shape} {_POSITION_PHRASES[obj.position]}"


def make_caption(objects: tuple[SceneObject, ...] | list[SceneObject], background: str) -> str:
    """One sentence naming every object (size, colour, texture unless solid, shape, position)
    and the background, e.g. ``"A large red striped circle at the top left and a small blue
    square in the centre, on a grey background."``"""
    phrases = [_phrase(o) for o in objects]
    if len(phrases) == 1:
        body = phrases[0]
    else:
        body = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{body[0].upper()}{body[1:]}, on a {background}."


def make_qa(objects: tuple[SceneObject, ...], rng: np.random.Generator) -> tuple[QAPair, ...]:
    """Question–answer pairs with gold answers about ``objects``: kinds ``count`` (all objects,
    objects of a colour), ``colour`` (of a shape that occurs once), ``presence`` (a colour+shape
    that occurs and one that does not) and ``position`` (of a colour+shape that occurs once)."""
    qa: list[QAPair] = []
    qa.append(QAPair("How many objects are there?", str(len(objects)), "count"))

    colours = list(COLOURS)
    colour = _choice(rng, colours)
    n_colour = sum(o.colour == colour for o in objects)
    qa.append(QAPair(f"How many {colour} objects are there?", str(n_colour), "count", {"colour": colour}))

    shape = _choice(rng, SHAPES)
    n_shape = sum(o.shape == shape for o in objects)
    qa.append(QAPair(f"How many {_plural(shape)} are there?", str(n_shape), "count", {"shape": shape}))

    by_shape: dict[str, list[SceneObject]] = {}
    for o in objects:
        by_shape.setdefault(o.shape, []).append(o)
    unique_shapes = [s for s in SHAPES if len(by_shape.get(s, ())) == 1]
    for s in _sample(rng, unique_shapes, 2):
        qa.append(QAPair(f"What colour is the {s}?", by_shape[s][0].colour, "colour", {"shape": s}))

    present = sorted({(o.colour, o.shape) for o in objects}, key=lambda p: (colours.index(p[0]), SHAPES.index(p[1])))
    c, s = present[int(rng.integers(len(present)))]
    qa.append(QAPair(f"Is there {_article(c)} {c} {s}?", "yes", "presence", {"colour": c, "shape": s}))
    absent = [(c, s) for c in colours for s in SHAPES if (c, s) not in set(present)]
    # Prefer a near miss (a colour or shape that is in the scene) so "no" needs both attributes.
    near = [p for p in absent if any(p[0] == q[0] or p[1] == q[1] for q in present)]
    c, s = (near or absent)[int(rng.integers(len(near or absent)))]
    qa.append(QAPair(f"Is there {_article(c)} {c} {s}?", "no", "presence", {"colour": c, "shape": s}))

    counts: dict[tuple[str, str], int] = {}
    for o in objects:
        counts[(o.colour, o.shape)] = counts.get((o.colour, o.shape), 0) + 1
    unique = [o for o in objects if counts[(o.colour, o.shape)] == 1]
    for o in _sample(rng, unique, 2):
        qa.append(QAPair(f"Where is the {o.colour} {o.shape}?", o.position, "position",
                         {"colour": o.colour, "shape": o.shape}))
    return tuple(qa)


def _sample(rng: np.random.Generator, items: list[Any], k: int) -> list[Any]:
    if len(items) <= k:
        return list(items)
    picks = sorted(rng.choice(len(items), size=k, replace=False).tolist())
    return [items[i] for i in picks]


# --------------------------------------------------------------------------- public API


def render_scene(index: int, *, seed: int = 0, size: int = DEFAULT_SIZE) -> Scene:
    """Render scene ``index`` of ``seed`` at ``size`` x ``size`` pixels; depends only on these three."""
    index = _check_int("index", index, 0)
    seed = _check_int("seed", seed, 0)
    size = _check_size(size)
    rng = np.random.default_rng([seed, index])
    specs, style, bg_colour = _sample_specs(rng)
    background = BACKGROUND_STYLES[style].format(bg_colour)
    while True:
        image, visible, own = _render(specs, style, bg_colour, size, np.random.default_rng([seed, index, 2]))
        hidden = [k for k, (v, o) in enumerate(zip(visible, own, strict=True))
                  if not v.any() or v.sum() < _MIN_VISIBLE * o.sum()]
        if not hidden:
            break
        # Rare (mostly at small sizes): an object covered by later ones, or too small to show.
        log.debug("%s: scene %d of seed %d: dropping hidden objects %s", SOURCE, index, seed, hidden)
        specs = [sp for k, sp in enumerate(specs) if k not in hidden]
        if not specs:  # pragma: no cover - the last object is never covered and every size shows at >= 32 px
            raise RuntimeError(f"{SOURCE}: scene {index} of seed {seed} has no visible object at size {size}")
    objects: list[SceneObject] = []
    for spec, mask in zip(specs, visible, strict=True):
        ys, xs = np.nonzero(mask)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        mask.setflags(write=False)
        cx, cy = spec.cx * size, spec.cy * size
        objects.append(SceneObject(
            shape=spec.shape, colour=spec.colour, size=spec.size, texture=spec.texture,
            position=position_of(cx, cy, size, size), box=box, mask=mask, center=(cx, cy),
        ))
    objs = tuple(objects)
    return Scene(
        index=index,
        seed=seed,
        image=Image.fromarray(image, mode="RGB"),
        caption=make_caption(objs, background),
        objects=objs,
        qa=make_qa(objs, np.random.default_rng([seed, index, 1])),
        background=background,
    )


def generate_scenes(n: int, *, seed: int = 0, size: int = DEFAULT_SIZE, start: int = 0) -> Iterator[Scene]:
    """Scenes ``start`` .. ``start + n - 1`` of ``seed`` (lazily); arguments are checked up front."""
    n = _check_int("n", n, 0)
    seed = _check_int("seed", seed, 0)
    size = _check_size(size)
    start = _check_int("start", start, 0)
    return (render_scene(i, seed=seed, size=size) for i in range(start, start + n))


def iter_synthetic_documents(n: int, *, seed: int = 0, size: int = DEFAULT_SIZE, start: int = 0) -> Iterator[Document]:
    """Documents (caption + image) of scenes ``start`` .. ``start + n - 1`` of ``seed``."""
    return (scene.to_document() for scene in generate_scenes(n, seed=seed, size=size, start=start))


def write_caption_folder(out_dir: str | Path, n: int, *, seed: int = 0, size: int = DEFAULT_SIZE) -> Path:
    """Write a captioned image folder: ``images/synthetic-<seed>-<i>.png`` and ``captions.jsonl``
    with one ``{"image": "images/...png", "caption": ...}`` line per scene. Returns ``out_dir``."""
    scenes = generate_scenes(n, seed=seed, size=size)  # validates before touching the disk
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out}: exists and is not a directory")
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    with open(out / "captions.jsonl", "w", encoding="utf-8") as fh:
        for scene in scenes:
            rel = f"images/{scene.id}.png"
            scene.image.save(out / rel, format="PNG")
            fh.write(json.dumps({"image": rel, "caption": scene.caption}, ensure_ascii=False) + "\n")
    log.info("%s: wrote %d scenes to %s", SOURCE, n, out)
    return out
