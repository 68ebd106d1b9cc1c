"""RAG VQA on VQA-RAD closed questions, knowledge base split by image.

The 315 images are split by image (``split_vqa_rad``, seed 0, 20% test, stratified by
organ), so no test image is in the knowledge base. Each knowledge-base item is an image
with its question–answer pairs as text. A test query is a CLOSED question with its image;
the pipeline retrieves the top-k items (fused question-text + image + cross-modal scores,
library defaults), and the reader votes: among the retrieved items' question–answer pairs,
the ``m`` whose questions are most similar to the query question (cosine of the default
text encoder) vote for their answers, weighted by that similarity; if even the best is
below ``tau``, the reader answers the knowledge base's most common closed answer.

k, m and tau are chosen by cross-validation inside the knowledge base (its own images split
again by image, seed 1), never on the test images. Compared with always answering "yes",
and with ablations: retrieval by the question text only, by the image only, and the same
reader over the whole knowledge base without retrieval.

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

    def read(question: str, doc_ids: list[str], kb_items: dict, m: int, tau: float, fallback: str) -> str:
        pairs = sorted(((float(np.dot(qvec[question], qvec[qa.question])), rank, qa.answer)
                        for rank, d in enumerate(doc_ids) for qa in kb_items[d].qa), key=lambda t: (-t[0], t[1]))
        if not pairs or pairs[0][0] < tau:
            return fallback
        votes: dict[str, float] = {}
        for sim, _, answer in pairs[:m]:
            votes[norm(answer)] = votes.get(norm(answer), 0.0) + max(sim, 0.0)
        return max(votes, key=lambda a: (votes[a], -next(i for i, p in enumerate(pairs) if norm(p[2]) == a)))

    def most_common_closed(items) -> str:
        from collections import Counter

        return Counter(norm(qa.answer) for it in items for qa in it.qa if qa.kind.upper() == "CLOSED").most_common(1)[0][0]

    def run(kb_items: list, queries_: list, k: int, mode: dict, pipe_name: str) -> list[list[str]]:
        """Retrieved doc ids per query (retrieval happens once per k/mode; the reader is cheap)."""
        pipe = open_collection(pipe_name, store=args.store)
        try:
            if pipe.count() == 0:
                report = pipe.ingest([it.to_document() for it in kb_items])
                assert report.images_written == len(kb_items) and not report.failures, report.summary()
            out = []
            for it, qa in queries_:
                hits = pipe.retrieve(qa.question if mode["text"] else None, image=it.image if mode["image"] else None, k=k)
                out.append(list(dict.fromkeys(h.doc_id for h in hits)))
            return out
        finally:
            pipe.close()

    modes = {"fused (question + image)": dict(text=True, image=True), "question text only": dict(text=True, image=False),
             "image only": dict(text=False, image=True)}
    grid_k, grid_m, grid_tau = (3, 5, 10), (1, 3, 5, 10), (0.0, 0.5, 0.7)
    results, chosen = {}, {}
    with tempfile.TemporaryDirectory() as home:
        os.environ["HETERAG_HOME"] = home
        # model selection inside the knowledge base only
        inner_kb, inner_dev = split_vqa_rad(kb, seed=1)
        inner_by_id = {it.id: it for it in inner_kb}
        inner_q = [(it, qa) for it in inner_dev for qa in it.qa if qa.kind.upper() == "CLOSED"]
        inner_fallback = most_common_closed(inner_kb)
        for name, mode in modes.items():
            best = None
            for k in grid_k:
                docs = run(inner_kb, inner_q, k, mode, "inner")
                for m in grid_m:
                    for tau in grid_tau:
                        acc = np.mean([norm(read(qa.question, d, inner_by_id, m, tau, inner_fallback)) == norm(qa.answer)
                                       for (_, qa), d in zip(inner_q, docs, strict=True)])
                        if best is None or acc > best[0] + 1e-12:
                            best = (acc, k, m, tau)
            chosen[name] = {"dev_accuracy": float(best[0]), "k": best[1], "m": best[2], "tau": best[3]}
            log.info("%s: chosen on the knowledge base's own dev split: %s", name, chosen[name])
        fallback = most_common_closed(kb)
        for name, mode in modes.items():
            c = chosen[name]
            docs = run(kb, queries, c["k"], mode, "vqa")
            results[name] = np.array([norm(read(qa.question, d, kb_by_id, c["m"], c["tau"], fallback)) == norm(qa.answer)
                                      for (_, qa), d in zip(queries, docs, strict=True)], dtype=float)
    # the reader over the whole knowledge base, no retrieval (what retrieval adds); m/tau of the fused setting
    c = chosen["fused (question + image)"]
    all_ids = list(kb_by_id)
    results["no retrieval (reader over the whole KB)"] = np.array(
        [norm(read(qa.question, all_ids, kb_by_id, c["m"], c["tau"], fallback)) == norm(qa.answer) for _, qa in queries],
        dtype=float)
    results['always "yes"'] = np.array([norm(qa.answer) == "yes" for _, qa in queries], dtype=float)
    rows, data = [], {"kb_images": len(kb), "test_images": len(test), "closed_questions": len(queries), "chosen": chosen,
                      "fallback_answer": fallback}
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
        f"{len(queries)} closed questions. Reader settings chosen inside the knowledge base: "
        + "; ".join(f"{n}: k={c['k']}, m={c['m']}, tau={c['tau']}" for n, c in chosen.items()) + ".", "",
        "| method | accuracy [95% CI] |", "|---|---|", *rows, "",
        f"Paired difference fused - always-yes: {diffs.mean():+.3f} "
        f"[{data['fused_minus_yes_ci95'][0]:+.3f}, {data['fused_minus_yes_ci95'][1]:+.3f}]", ""])
    path = write_report("vqa_rad_rag", data, md)
    print(md)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
