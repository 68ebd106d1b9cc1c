"""RAG classification on PneumoniaMNIST: the label of a test X-ray is the majority label of its top-k retrieved images.

Knowledge base: the 3,882 train images, each with its label text ("Chest X-ray: normal." /
"Chest X-ray: pneumonia."), ingested through the pipeline (default image encoder). Queries:
image only. k is chosen on the validation split (524 images) from {1, 3, 5, 7, 9, 15, 21};
the test split (624 images: 234 normal, 390 pneumonia) is scored once with that k and
compared with always answering the majority class (62.5%). Ties go to the label of the
nearest image.

    python eval/pneumonia_rag.py [--encoder default] [--store faiss]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections import Counter

import numpy as np
from _common import bootstrap_ci, percentiles_ms, require_data, write_report

from corpora import default_data_dir, load_medmnist
from heterag import open_collection

log = logging.getLogger("pneumonia_rag")
KS = (1, 3, 5, 7, 9, 15, 21)


def vote(labels: list[int], k: int) -> int:
    top = labels[:k]
    counts = Counter(top)
    best = max(counts.values())
    return next(lab for lab in top if counts[lab] == best)  # tie -> the nearest image's label


def neighbour_labels(pipe, items) -> tuple[list[list[int]], list[float]]:
    out, lat = [], []
    for it in items:
        t = time.perf_counter()
        hits = pipe.retrieve(image=it.image, k=max(KS))
        lat.append(time.perf_counter() - t)
        out.append([int(h.metadata["label"]) for h in hits])
    return out, lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", default="default")
    ap.add_argument("--store", default="faiss")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = default_data_dir() / "pneumoniamnist" / "pneumoniamnist.npz"
    require_data(path, "PneumoniaMNIST")
    train, val, test = (load_medmnist(path, split=s) for s in ("train", "val", "test"))
    with tempfile.TemporaryDirectory() as home:
        os.environ["HETERAG_HOME"] = home
        pipe = open_collection("pneumonia", store=args.store, image_encoder=args.encoder)
        try:
            t = time.perf_counter()
            report = pipe.ingest([it.to_document() for it in train], progress=True, total=len(train))
            ingest_s = time.perf_counter() - t
            assert report.images_written == len(train) and not report.failures, report.summary()
            val_nb, _ = neighbour_labels(pipe, val)
            test_nb, lat = neighbour_labels(pipe, test)
        finally:
            pipe.close()
    y_val = [int(it.metadata["label"]) for it in val]
    y_test = np.array([int(it.metadata["label"]) for it in test])
    val_acc = {k: float(np.mean([vote(nb, k) == y for nb, y in zip(val_nb, y_val, strict=True)])) for k in KS}
    best_k = max(KS, key=lambda k: (val_acc[k], -k))
    test_correct = np.array([vote(nb, best_k) == y for nb, y in zip(test_nb, y_test, strict=True)], dtype=float)
    acc = float(test_correct.mean())
    lo, hi = bootstrap_ci(test_correct)
    majority = float(max(np.mean(y_test == 0), np.mean(y_test == 1)))
    all_k_test = {k: float(np.mean([vote(nb, k) == y for nb, y in zip(test_nb, y_test, strict=True)])) for k in KS}
    p50, p95 = percentiles_ms(lat)
    data = {"encoder": args.encoder, "store": args.store, "train": len(train), "val": len(val), "test": len(test),
            "val_accuracy_by_k": val_acc, "chosen_k": best_k, "test_accuracy": acc, "test_accuracy_ci95": [lo, hi],
            "majority_class_rate": majority, "test_accuracy_by_k(for reference, not used to choose)": all_k_test,
            "ingest_seconds": ingest_s, "query_p50_ms": p50, "query_p95_ms": p95}
    md = "\n".join([
        "# PneumoniaMNIST RAG classification", "",
        f"Knowledge base: {len(train)} train images; k chosen on val ({len(val)}): k={best_k} "
        f"(val accuracy {val_acc[best_k]:.3f}).", "",
        "| | test accuracy [95% CI] |", "|---|---|",
        f"| RAG majority vote of top-{best_k} ({args.encoder} encoder) | {acc:.3f} [{lo:.3f}, {hi:.3f}] |",
        f"| always the majority class (pneumonia) | {majority:.3f} |", "",
        "Test accuracy at every k (reference only): " + ", ".join(f"k={k}: {v:.3f}" for k, v in all_k_test.items()), "",
        f"Ingest {len(train)} images: {ingest_s:.1f} s ({len(train) / ingest_s:.1f} images/s); "
        f"image query p50/p95: {p50:.1f}/{p95:.1f} ms.", ""])
    path_md = write_report("pneumonia_rag", data, md)
    print(md)
    print(f"written: {path_md}")


if __name__ == "__main__":
    main()
