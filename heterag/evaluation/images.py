"""Image retrieval benchmarks: near-duplicate robustness and text-to-image recall.

Near-duplicate robustness indexes every image of a corpus through the pipeline, then
queries with each image after one perturbation and asks whether the original comes
back first (Recall@1 among all indexed images):

* ``mask``: zero the bounding box of one annotated object covering 2–25% of the image
  (the size of objects MrM masks) where the item has such an object; otherwise zero a
  random box of 20% of the image area (aspect ratio 1:2 to 2:1). Seeded per item.
* ``jpeg50``: re-encode as JPEG at quality 50.
* ``crop90``: keep the centre 90% of each side (81% of the area).

Text-to-image Recall@5 queries the image store with each item's caption through the
image encoder's text side and asks whether the item is among the top 5.
"""

from __future__ import annotations

import io
import logging
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from heterag.core.errors import InvalidInputError

log = logging.getLogger(__name__)

VARIANTS = ("mask", "jpeg50", "crop90")
#: Object sizes (share of the image) eligible for the ``mask`` variant.
MASK_OBJECT_RANGE = (0.02, 0.25)
#: Area of the random box masked when an item has no eligible object.
RANDOM_MASK_AREA = 0.20


def random_box(width: int, height: int, area: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of ``area`` (share of the image) with aspect ratio in [1/2, 2], placed uniformly at random."""
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    w = min(width, max(1, round(math.sqrt(area * width * height * aspect))))
    h = min(height, max(1, round(area * width * height / w)))
    x0 = int(rng.integers(0, width - w + 1))
    y0 = int(rng.integers(0, height - h + 1))
    return x0, y0, x0 + w, y0 + h


def mask_box(image: Image.Image, objects: Sequence[Any], rng: np.random.Generator) -> tuple[tuple[int, int, int, int], str]:
    """The box the ``mask`` variant zeroes, and what it is (an object's label or ``"random 20%"``)."""
    w, h = image.size
    lo, hi = MASK_OBJECT_RANGE
    eligible = [o for o in objects if lo <= o.area_fraction(w, h) <= hi]
    if eligible:
        obj = eligible[int(rng.integers(len(eligible)))]
        return tuple(int(v) for v in obj.box), obj.label  # type: ignore[return-value]
    return random_box(w, h, RANDOM_MASK_AREA, rng), "random 20%"


def zero_box(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """A copy of ``image`` (RGB) with ``box`` (x0, y0, x1, y1; x1/y1 exclusive) set to black."""
    x0, y0, x1, y1 = box
    a = np.array(image.convert("RGB"))
    a[y0:y1, x0:x1] = 0
    return Image.fromarray(a)


def perturb(image: Image.Image, variant: str, *, objects: Sequence[Any] = (), rng: np.random.Generator | None = None) -> Image.Image:
    """``image`` (RGB) after the near-duplicate ``variant`` (see the module docs)."""
    image = image.convert("RGB")
    if variant == "mask":
        return zero_box(image, mask_box(image, objects, rng if rng is not None else np.random.default_rng(0))[0])
    if variant == "jpeg50":
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=50)
        buf.seek(0)
        return Image.open(buf).convert("RGB")
    if variant == "crop90":
        w, h = image.size
        cw, ch = max(1, round(w * 0.9)), max(1, round(h * 0.9))
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        return image.crop((x0, y0, x0 + cw, y0 + ch))
    raise InvalidInputError(f"unknown near-duplicate variant {variant!r}; choose from {', '.join(VARIANTS)}")


def evaluate_images(
    items: Sequence[Any],
    *,
    image_encoder: Any = "default",
    variants: Sequence[str] = VARIANTS,
    captions: bool = False,
    store: str = "faiss",
    seed: int = 0,
    workdir: str | Path | None = None,
    text_encoder: Any = None,
) -> dict[str, Any]:
    """Index ``items`` (:class:`corpora.annotated.AnnotatedImage`) through a pipeline and measure retrieval.

    Returns ``recall@1[<variant>]`` for each variant, ``text_to_image_recall@5`` (and @1) when
    ``captions`` (items' texts are captions), plus sizes and timings.
    """
    from heterag.core.images import ImageFiles
    from heterag.encoding.image_encoders import load_image_encoder
    from heterag.encoding.text_encoder import load_text_encoder
    from heterag.ingest.views import make_view
    from heterag.pipeline.pipeline import Pipeline
    from heterag.stores import open_store

    for v in variants:
        if v not in VARIANTS:
            raise InvalidInputError(f"unknown near-duplicate variant {v!r}; choose from {', '.join(VARIANTS)}")
    items = list(items)
    if not items:
        raise InvalidInputError("no images to evaluate")
    enc = load_image_encoder(image_encoder) if isinstance(image_encoder, str | None) else image_encoder
    text_enc = text_encoder or load_text_encoder(None)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="heterag-eval-images-") as tmp:
        root = Path(tmp)
        pipe = Pipeline(
            open_store(store, root / "store", "heterag"), text_enc, make_view("naive"),
            image_store=open_store(store, root / "store", "heterag_images", keywords=False), image_encoder=enc,
            image_files=ImageFiles(root / "images"),
        )
        try:
            docs = [it.to_document() for it in items]
            t0 = time.perf_counter()
            report = pipe.ingest(docs)
            ingest_s = time.perf_counter() - t0
            if report.failures:
                raise InvalidInputError(f"{len(report.failures)} item(s) failed to ingest, first: {report.failures[0]}")
            result: dict[str, Any] = {
                "images": len(items), "encoder": enc.identity, "dim": int(enc.dim), "store": store,
                "ingest_seconds": round(ingest_s, 3), "seed": seed,
            }
            n_objects_masked = 0
            for variant in variants:
                queries = []
                for it in items:
                    img = it.image.to_pil()
                    rng = np.random.default_rng([seed, hash_index(it.id)])  # the same box whatever else is run
                    if variant == "mask":
                        box, what = mask_box(img, it.objects, rng)
                        n_objects_masked += what != "random 20%"
                        queries.append(zero_box(img, box))
                    else:
                        queries.append(perturb(img, variant, rng=rng))
                vecs = enc.encode_images(queries)
                hits = 0
                for doc, q in zip(docs, vecs, strict=True):
                    top = pipe.image_store.query(q, k=1)
                    hits += bool(top) and top[0].record.metadata.get("doc_id") == doc.id
                result[f"recall@1[{variant}]"] = hits / len(items)
            if "mask" in variants:
                result["mask_object_share"] = n_objects_masked / len(items)
            if captions:
                with_text = [(it, doc) for it, doc in zip(items, docs, strict=True) if it.text.strip()]
                if with_text:
                    qv = enc.encode_texts([it.text for it, _ in with_text])
                    r1 = r5 = 0
                    for (_, doc), q in zip(with_text, qv, strict=True):
                        ids = [sr.record.metadata.get("doc_id") for sr in pipe.image_store.query(q, k=5)]
                        r1 += bool(ids) and ids[0] == doc.id
                        r5 += doc.id in ids
                    result["text_to_image_recall@1"] = r1 / len(with_text)
                    result["text_to_image_recall@5"] = r5 / len(with_text)
                    result["caption_queries"] = len(with_text)
        finally:
            pipe.close()
    return result


def hash_index(item_id: str) -> int:
    """A stable non-negative integer from an item id (seeds per-item randomness reproducibly)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(item_id.encode("utf-8")).digest()[:8], "little")
