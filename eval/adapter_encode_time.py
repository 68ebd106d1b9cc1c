"""Encode-time cost of a soft-prompt adapter (issue #10): the same texts encoded without and with a
P-token prompt, median of interleaved rounds, single torch thread (the ratio is what counts).

View side: SciFact's first N documents through the ``late`` and ``heterag`` views. Query side:
400 SciFact claims as one batch, and 50 one at a time (a server's queries).

    python eval/adapter_encode_time.py --prompt-tokens 16 --docs 60
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _common import require_data, write_report

from corpora import default_data_dir
from heterag import chunk_document, load_text_encoder, make_view
from heterag.encoding.adapters import AdaptedEncoder, Adapter, encoder_weights_hash, init_prompt
from heterag.training.prompts import beir_pairs


def ratio(fa, fb, rounds: int) -> tuple[float, float, float]:
    """Median seconds of ``fa(r)`` and ``fb(r)`` over interleaved rounds ``r``, and their ratio."""
    ta, tb = [], []
    for r in range(rounds):
        t = time.perf_counter()
        fa(r)
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        fb(r)
        tb.append(time.perf_counter() - t)
    a, b = statistics.median(ta), statistics.median(tb)
    return a, b, b / a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-tokens", type=int, default=4)
    ap.add_argument("--docs", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parts", default="views,queries", help="views, queries or both")
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = default_data_dir() / "scifact_train"
    require_data(path, "SciFact (train)")
    enc = load_text_encoder(None)
    pairs, docs = beir_pairs(path)
    cds = [chunk_document(d, enc.tokenize, 64) for d in docs[: args.docs]]

    def adapted(side: str) -> AdaptedEncoder:
        return AdaptedEncoder(enc, Adapter(kind="prompt", base_model=enc.identity, base_hash=encoder_weights_hash(enc),
                                           prompt_tokens=args.prompt_tokens, sides=side, hidden=int(enc.dim),
                                           tensors={"prompt": init_prompt(enc, args.prompt_tokens)}))

    out: dict[str, tuple[float, float, float]] = {}
    view_side = adapted("view")
    if "views" in args.parts:
        for v in ("late", "heterag"):
            view = make_view(v)
            out[f"{v} view"] = ratio(lambda r, view=view: view.embed(cds, enc), lambda r, view=view: view.embed(cds, view_side),
                                     args.rounds)
    q = adapted("query")
    qs = sorted({p.query for p in pairs.pairs})
    if "queries" in args.parts:
        out["queries, one batch of 400"] = ratio(lambda r: enc.encode(qs[:400]), lambda r: q.encode_queries(qs[:400]), args.rounds)
        # one at a time, other queries each round: the plain encoder caches recently seen short texts
        out["queries, 50 one at a time"] = ratio(lambda r: [enc.encode_query(x) for x in qs[400 + 50 * r : 450 + 50 * r]],
                                                 lambda r: [q.encode_query(x) for x in qs[400 + 50 * r : 450 + 50 * r]],
                                                 args.rounds)
    lines = [f"# Adapter encode time, P={args.prompt_tokens} ({args.docs} SciFact documents, 1 thread)", "",
             "| what | without (s) | with (s) | ratio |", "|---|---|---|---|"]
    lines += [f"| {k} | {a:.2f} | {b:.2f} | {r:.2f} |" for k, (a, b, r) in out.items()]
    md = "\n".join(lines) + "\n"
    print(md)
    write_report(f"adapter_encode_time_P{args.prompt_tokens}_{args.parts.replace(',', '_')}", {"args": vars(args), "results": out}, md)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
