"""Image retrieval figures: near-duplicate robustness, text-to-image recall, ingest throughput, query latency.

* Near-duplicate Recall@1 (``mask``, ``jpeg50``, ``crop90``; see :mod:`heterag.evaluation.images`) on
  VQA-RAD's 315 radiographs and on 1,000 held-out synthetic scenes (seed 1; the shipped
  default encoder was trained on seed 0), for the ``default`` encoder and a random-init
  ``open_clip`` ViT-B-32 (``--clip-arch``; no pretrained weights can be downloaded here).
* Text-to-image Recall@5 with captions as queries on the same 1,000 held-out scenes.
* Image ingest throughput (images/s, through ``Pipeline.ingest`` into Chroma and FAISS,
  image files written, default encoder) and image-query latency p50/p95
  (``Pipeline.retrieve(image=...)`` with JPEG-q50 copies as queries, k=5).

    python eval/image_retrieval.py [--synthetic 1000] [--clip-arch ViT-B-32] [--queries 200]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

from _common import percentiles_ms, require_data, wilson_ci, write_report

from corpora import default_data_dir, generate_scenes, load_vqa_rad
from heterag import open_collection
from heterag.encoding.image_encoders import load_image_encoder
from heterag.evaluation.images import VARIANTS, evaluate_images, perturb

log = logging.getLogger("image_retrieval")


def throughput(items, stores: list[str], queries: int) -> dict[str, dict[str, float]]:
    import os

    out = {}
    docs = [it.to_document() for it in items]
    for store in stores:
        with tempfile.TemporaryDirectory() as home:
            os.environ["HETERAG_HOME"] = home
            pipe = open_collection("bench", store=store)
            try:
                pipe.image_encoder  # noqa: B018 - load outside the timed region
                t = time.perf_counter()
                report = pipe.ingest(docs, progress=True, total=len(docs))
                ingest_s = time.perf_counter() - t
                assert report.images_written == len(docs), report.summary()
                qs = [perturb(it.image.to_pil(), "jpeg50") for it in items[:queries]]
                lat, hits = [], 0
                for it, q in zip(items, qs, strict=False):
                    t = time.perf_counter()
                    res = pipe.retrieve(image=q, k=5)
                    lat.append(time.perf_counter() - t)
                    hits += res[0].doc_id == it.id
            finally:
                pipe.close()
        p50, p95 = percentiles_ms(lat)
        out[store] = {"images": len(docs), "ingest_seconds": ingest_s, "images_per_second": len(docs) / ingest_s,
                      "query_p50_ms": p50, "query_p95_ms": p95, "queries": len(qs), "query_recall@1": hits / len(qs)}
        log.info("%s: %s", store, out[store])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--synthetic", type=int, default=1000)
    ap.add_argument("--synthetic-seed", type=int, default=1)
    ap.add_argument("--clip-arch", default="ViT-B-32")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--skip-clip", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    vqa_dir = default_data_dir() / "vqa_rad"
    require_data(vqa_dir, "VQA-RAD")
    corpora = {
        "vqa_rad": (load_vqa_rad(vqa_dir), False),
        f"synthetic_{args.synthetic}_seed{args.synthetic_seed}": (
            [s.to_annotated() for s in generate_scenes(args.synthetic, seed=args.synthetic_seed)], True),
    }
    encoders = ["default"] + ([] if args.skip_clip else [f"open_clip:{args.clip_arch}"])
    results: dict[str, dict] = {}
    for enc_name in encoders:
        enc = load_image_encoder(enc_name)
        for corpus, (items, captions) in corpora.items():
            t = time.perf_counter()
            res = evaluate_images(items, image_encoder=enc, captions=captions)
            res["seconds"] = time.perf_counter() - t
            results[f"{enc_name} | {corpus}"] = res
            log.info("%s | %s: %s", enc_name, corpus, res)
    synthetic_items = next(v[0] for k, v in corpora.items() if k.startswith("synthetic"))
    speed = throughput(synthetic_items, ["chroma", "faiss"], args.queries)

    lines = ["# Image retrieval", "", "Near-duplicate Recall@1 of the original among all indexed images [95% Wilson CI].", "",
             "| encoder | corpus | images | " + " | ".join(VARIANTS) + " | text-to-image R@5 |", "|---|---|---|" + "---|" * (len(VARIANTS) + 1)]
    for key, res in results.items():
        enc_name, corpus = key.split(" | ")
        n = res["images"]
        cells = []
        for v in VARIANTS:
            p = res[f"recall@1[{v}]"]
            lo, hi = wilson_ci(p, n)
            cells.append(f"{p:.3f} [{lo:.3f}, {hi:.3f}]")
        t2i = res.get("text_to_image_recall@5")
        t2i_s = "" if t2i is None else f"{t2i:.3f} [{wilson_ci(t2i, res['caption_queries'])[0]:.3f}, {wilson_ci(t2i, res['caption_queries'])[1]:.3f}]"
        lines.append(f"| {enc_name} | {corpus} | {n} | " + " | ".join(cells) + f" | {t2i_s} |")
    lines += ["", "mask: share of items whose mask hid an annotated object (else a random 20% box): "
              + ", ".join(f"{k}: {r.get('mask_object_share', 0):.2f}" for k, r in results.items()), "",
              "## Ingest throughput and image-query latency (default encoder, synthetic scenes)", "",
              "| store | images | images/s | query p50 ms | query p95 ms | query R@1 (jpeg50) |", "|---|---|---|---|---|---|"]
    for store, s in speed.items():
        lines.append(f"| {store} | {s['images']} | {s['images_per_second']:.1f} | {s['query_p50_ms']:.1f} | {s['query_p95_ms']:.1f} | {s['query_recall@1']:.3f} |")
    md = "\n".join(lines) + "\n"
    path = write_report("image_retrieval", {"near_duplicate": results, "throughput": speed}, md)
    print(md)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
