"""Choose the default fusion rule on development data (synthetic scenes, seed 2: neither the
encoder's training seed 0 nor the report seed 1).

Task: a user asks a question about a photo of an indexed scene (the query image is a
JPEG-q50 copy; the question is one of the scene's QA questions, which mostly do not
describe the scene uniquely). Success: the scene itself is the top item. Also scored:
text-only questions that do describe the scene (its caption) and image-only queries, so a
rule that helps one case at the expense of the others shows.

    python eval/tune_fusion.py [--n 500]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile

from _common import write_report

from corpora import generate_scenes
from heterag import Fusion, open_collection
from heterag.evaluation.images import perturb

RULES = {
    "weighted text=1 image=1 cross=1": "weighted:text=1,image=1,cross=1",
    "weighted text=1 image=2 cross=1": "weighted:text=1,image=2,cross=1",
    "weighted text=1 image=4 cross=1": "weighted:text=1,image=4,cross=1",
    "weighted text=1 image=2 cross=0.5": "weighted:text=1,image=2,cross=0.5",
    "rrf equal": "rrf",
    "rrf image=2": "rrf:image=2",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    scenes = list(generate_scenes(args.n, seed=2))
    rows, data = [], {}
    with tempfile.TemporaryDirectory() as home:
        os.environ["HETERAG_HOME"] = home
        pipe = open_collection("dev", store="faiss")
        try:
            pipe.ingest([s.to_document() for s in scenes], progress=True, total=len(scenes))
            queries = [(s, perturb(s.image, "jpeg50"), s.qa[i % len(s.qa)].question) for i, s in enumerate(scenes)]
            for name, spec in RULES.items():
                rule = Fusion.parse(spec)
                both = sum(pipe.retrieve(q, image=img, k=1, fusion=rule)[0].doc_id == s.id for s, img, q in queries)
                cap = sum(pipe.retrieve(s.caption, k=1, fusion=rule)[0].doc_id == s.id for s in scenes)
                img_only = sum(pipe.retrieve(image=img, k=1, fusion=rule)[0].doc_id == s.id for s, img, _ in queries)
                data[name] = {"question+image": both / len(scenes), "caption only": cap / len(scenes),
                              "image only": img_only / len(scenes)}
                rows.append(f"| {name} | {both / len(scenes):.3f} | {cap / len(scenes):.3f} | {img_only / len(scenes):.3f} |")
                print(rows[-1], flush=True)
        finally:
            pipe.close()
    md = "\n".join(["# Fusion rule on development scenes (seed 2)", "", f"{args.n} scenes; Recall@1 of the scene itself.", "",
                    "| rule | question + image | caption only | image only |", "|---|---|---|---|", *rows, ""])
    write_report("tune_fusion", data, md)
    print(md)


if __name__ == "__main__":
    main()
