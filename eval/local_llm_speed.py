"""Speed of the ``local`` generator (packaged SmolLM2-135M-Instruct) on the text demo.

    python eval/local_llm_speed.py [--threads 1] [--max-new-tokens 64]

Reports the load time (imports included; the dequantised copy must exist: the first use makes it),
then for four questions with their top-5 `heterag`-view chunks as context: the prompt length, the
time to the first streamed piece, and tokens per second after it.
"""

from __future__ import annotations

import argparse
import sys
import time

QUESTIONS = ("How do I define a generator?", "What does the with statement do?", "What is a decorator?",
             "How are exceptions raised?")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    t0 = time.perf_counter()
    from heterag.generators.local import LocalGenerator

    gen = LocalGenerator(max_new_tokens=args.max_new_tokens, threads=args.threads)
    print(f"load {time.perf_counter() - t0:.2f} s (imports included)")
    from corpora.demo import open_demo

    pipe = open_demo()
    try:
        for q in QUESTIONS:
            hits = pipe.retrieve(q, k=5)
            arrivals: list[float] = []
            t0 = time.perf_counter()
            answer = gen.generate(q, hits, on_token=lambda _p, t0=t0, a=arrivals: a.append(time.perf_counter() - t0))
            total = time.perf_counter() - t0
            model_text = answer.text.split(" (The model cited")[0]
            n = len(gen.tokenizer.encode(model_text, add_special_tokens=False))
            prompt = int(gen.model_inputs(q, hits)["input_ids"].shape[-1])
            span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
            rate = (n - 1) / span if span > 0 else float("nan")
            print(f"{q!r}: prompt {prompt} tokens, first piece {arrivals[0]:.2f} s, {n} tokens in {total:.2f} s, "
                  f"{rate:.1f} tokens/s after the first")
            print("   answer:", answer.text[:300].replace("\n", " "))
    finally:
        pipe.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
