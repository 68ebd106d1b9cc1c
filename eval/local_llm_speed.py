"""Speed of the ``local`` generator (packaged SmolLM2-135M-Instruct) on the text demo, per engine.

    python eval/local_llm_speed.py [--engines transformers,llama_cpp] [--threads 1] [--max-new-tokens 64]

Reports each engine's load time (imports included; the dequantised copy must exist: the first use
makes it), then for four questions with their top-5 `heterag`-view chunks as context, the engines
alternating question by question (so they share the machine's load): the prompt length, the time to
the first streamed piece, and tokens per second after it. Each question is asked twice per engine:
"cold" (nothing of the prompt in the engine's cache) and "warm" (the previous question was asked
just before, so llama.cpp reuses the shared system-prompt prefix). The transformers engine computes
the prefix's key-value cache once at load and reuses it for every request; ``transformers:no-prefix``
in ``--engines`` is the same engine computing the whole prompt each time, for comparison:

    python eval/local_llm_speed.py --engines transformers,transformers:no-prefix
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import _common  # noqa: F401 - puts the checkout on sys.path

QUESTIONS = ("How do I define a generator?", "What does the with statement do?", "What is a decorator?",
             "How are exceptions raised?")


def ask(gen, q: str, hits) -> tuple[float, float, int, str]:
    """(seconds to the first piece, tokens/s after it, new tokens, answer)."""
    arrivals: list[float] = []
    t0 = time.perf_counter()
    answer = gen.generate(q, hits, on_token=lambda _p: arrivals.append(time.perf_counter() - t0))
    model_text = answer.text.split(" (The model cited")[0]
    n = len(gen.tokenizer.encode(model_text, add_special_tokens=False))
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
    return arrivals[0], (n - 1) / span if span > 0 else float("nan"), n, answer.text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default="transformers,llama_cpp")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    from heterag.generators.local import LocalGenerator

    gens = {}
    for engine in args.engines.split(","):
        name, _, variant = engine.partition(":")
        if variant not in ("", "no-prefix"):
            ap.error(f"unknown variant {variant!r} in {engine!r} (choose: no-prefix)")
        t0 = time.perf_counter()
        gens[engine] = LocalGenerator(max_new_tokens=args.max_new_tokens, threads=args.threads, engine=name,
                                      reuse_prefix=variant != "no-prefix")
        print(f"{engine}: load {time.perf_counter() - t0:.2f} s (imports included)", flush=True)
    from corpora.demo import open_demo

    pipe = open_demo()
    stats: dict[str, dict[str, list[float]]] = {e: {"cold": [], "warm": [], "rate": []} for e in gens}
    try:
        for q in QUESTIONS:
            hits = pipe.retrieve(q, k=5)
            for engine, gen in gens.items():
                if gen.engine == "llama_cpp":
                    gen._llama.reset()  # cold: nothing cached
                prompt = int(gen.model_inputs(q, hits)["input_ids"].shape[-1])
                for mode in ("cold", "warm"):
                    if mode == "warm":  # another question first, then this one: the system prompt is shared
                        other = QUESTIONS[(QUESTIONS.index(q) + 1) % len(QUESTIONS)]
                        gen.generate(other, pipe.retrieve(other, k=5))
                    first, rate, n, text = ask(gen, q, hits)
                    stats[engine][mode].append(first)
                    stats[engine]["rate"].append(rate)
                    print(f"{engine} {mode} {q!r}: prompt {prompt} tokens, first piece {first:.2f} s, {n} tokens, "
                          f"{rate:.1f} tokens/s after the first | {text[:120]!r}", flush=True)
    finally:
        pipe.close()
    print("\n| engine | first piece, cold (median s) | first piece, warm (median s) | tokens/s (median) |\n|---|---|---|---|")
    for engine, s in stats.items():
        print(f"| {engine} | {statistics.median(s['cold']):.2f} | {statistics.median(s['warm']):.2f} | "
              f"{statistics.median(s['rate']):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
