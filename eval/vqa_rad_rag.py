"""RAG VQA on VQA-RAD closed questions, knowledge base split by image.

The 315 images are split by image (``split_vqa_rad``, seed 0, 20% test, stratified by
organ), so no test image is in the knowledge base. Each knowledge-base item is an image
with its question–answer pairs as text. A test query is a CLOSED question with its image;
the pipeline retrieves the top-5 items (fused question-text + image + cross-modal scores),
and the reader answers with the answer of the most similar question (cosine of the default
text encoder) among the retrieved items' question–answer pairs. Compared with always
answering "yes", and with two ablations: retrieval by the question text only, and by
the image only. Nothing here was tuned on the test questions (k=5 and the default
fusion are the library defaults).

    python eval/vqa_rad_rag.py
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile

import numpy as np
from _common import bootstrap_ci, require_data, write_report

from corpora import default_data_dir, load_vqa_rad, split_vqa_rad
from heterag import load_text_encoder, open_collection

log = logging.getLogger("vqa_rad_rag")


def norm(answer: str) -> str:
    return " ".join(answer.lower().strip().rstrip(".").split())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--store", default="faiss")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = default_data_dir() / "vqa_rad"
    require_data(root, "VQA-RAD")
    kb, test = split_vqa_rad(load_vqa_rad(root))
    kb_by_id = {it.id: it for it in kb}
    assert not {it.image.sha256 for it in kb} & {it.image.sha256 for it in test}
    queries = [(it, qa) for it in test for qa in it.qa if qa.kind.upper() == "CLOSED"]
    text_enc = load_text_encoder(None)
    kb_questions = sorted({qa.question for it in kb for qa in it.qa} | {qa.question for _, qa in queries})
    qvec = dict(zip(kb_questions, text_enc.encode(kb_questions), strict=True))

    def read(question: str, doc_ids: list[str]) -> str:
        best, best_sim = "yes", -2.0
        for d in doc_ids:
            for qa in kb_by_id[d].qa:
                sim = float(np.dot(qvec[question], qvec[qa.question]))
                if sim > best_sim + 1e-9:
                    best, best_sim = qa.answer, sim
        return best

    modes = {"fused (question + image)": dict(text=True, image=True), "question text only": dict(text=True, image=False),
             "image only": dict(text=False, image=True)}
    results = {}
    with tempfile.TemporaryDirectory() as home:
        os.environ["HETERAG_HOME"] = home
        pipe = open_collection("vqa", store=args.store)
        try:
            report = pipe.ingest([it.to_document() for it in kb], progress=True, total=len(kb))
            assert report.images_written == len(kb) and not report.failures, report.summary()
            for name, m in modes.items():
                correct = []
                for it, qa in queries:
                    hits = pipe.retrieve(qa.question if m["text"] else None, image=it.image if m["image"] else None, k=args.k)
                    docs = list(dict.fromkeys(h.doc_id for h in hits))
                    correct.append(norm(read(qa.question, docs)) == norm(qa.answer))
                results[name] = np.array(correct, dtype=float)
        finally:
            pipe.close()
    # the reader over the whole knowledge base, no retrieval (what retrieval adds)
    all_ids = list(kb_by_id)
    results["no retrieval (most similar question in the whole KB)"] = np.array(
        [norm(read(qa.question, all_ids)) == norm(qa.answer) for _, qa in queries], dtype=float)
    results['always "yes"'] = np.array([norm(qa.answer) == "yes" for _, qa in queries], dtype=float)
    rows, data = [], {"kb_images": len(kb), "test_images": len(test), "closed_questions": len(queries), "k": args.k}
    for name, arr in results.items():
        lo, hi = bootstrap_ci(arr)
        rows.append(f"| {name} | {arr.mean():.3f} [{lo:.3f}, {hi:.3f}] |")
        data[name] = {"accuracy": float(arr.mean()), "ci95": [lo, hi]}
    fused, yes = results["fused (question + image)"], results['always "yes"']
    diffs = fused - yes
    rng = np.random.default_rng(0)
    boot = diffs[rng.integers(0, len(diffs), (2000, len(diffs)))].mean(1)
    data["fused_minus_yes_ci95"] = [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]
    md = "\n".join([
        "# VQA-RAD closed questions, RAG", "",
        f"Knowledge base: {len(kb)} images with their QA pairs; test: {len(test)} other images, "
        f"{len(queries)} closed questions; top-{args.k} items.", "",
        "| method | accuracy [95% CI] |", "|---|---|", *rows, "",
        f"Paired difference fused - always-yes: {diffs.mean():+.3f} "
        f"[{data['fused_minus_yes_ci95'][0]:+.3f}, {data['fused_minus_yes_ci95'][1]:+.3f}]", ""])
    path = write_report("vqa_rad_rag", data, md)
    print(md)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
