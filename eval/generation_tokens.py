"""Generation context size: short generation chunks versus whole documents, at top-k.

For each PubMedQA question the same index (heterag views over 64-token generation
chunks) is queried; we count the tokens of generation context the generator would
receive (a) as the top-k generation chunks, (b) as the top-k whole documents ranked
by their best chunk. Also reports how often the gold abstract is in the context.

    python eval/generation_tokens.py [--k 5] [--view heterag] [--split test]
"""

from __future__ import annotations

import argparse
import logging
import tempfile

import numpy as np
from _common import bootstrap_ci, require_data, write_report

from corpora import default_data_dir, load_pubmedqa
from heterag import (
    DEFAULT_CHUNK_TOKENS,
    Pipeline,
    load_text_encoder,
    make_view,
    open_store,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--view", default="heterag")
    ap.add_argument("--chunk-tokens", type=int, default=DEFAULT_CHUNK_TOKENS)
    ap.add_argument("--split", default="test", choices=["test", "train", "all"])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    require_data(default_data_dir() / "pubmedqa", "PubMedQA")
    data = load_pubmedqa(split=args.split)
    encoder = load_text_encoder(None)
    doc_tokens = {d.id: encoder.count_tokens(d.text) for d in data.documents}
    chunk_ctx, doc_ctx, chunk_gold, doc_gold = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        pipe = Pipeline(open_store("faiss", tmp, "tokens"), encoder, make_view(args.view), chunk_tokens=args.chunk_tokens)
        pipe.ingest(data.documents, batch_documents=256, total=len(data.documents))
        for q in data.questions:
            hits = pipe.retrieve(q.question, k=max(50, args.k * 10))
            top_chunks = hits[: args.k]
            docs: list[str] = []
            for h in hits:
                if h.doc_id not in docs:
                    docs.append(h.doc_id)
            top_docs = docs[: args.k]
            chunk_ctx.append(sum(encoder.count_tokens(h.text) for h in top_chunks))
            doc_ctx.append(sum(doc_tokens[d] for d in top_docs))
            chunk_gold.append(float(any(h.doc_id == q.doc_id for h in top_chunks)))
            doc_gold.append(float(q.doc_id in top_docs))
        pipe.close()
    res = {
        "questions": len(data.questions), "k": args.k, "view": args.view, "chunk_tokens": args.chunk_tokens,
        "chunk_context_tokens_mean": float(np.mean(chunk_ctx)), "chunk_context_tokens_ci": bootstrap_ci(chunk_ctx),
        "document_context_tokens_mean": float(np.mean(doc_ctx)), "document_context_tokens_ci": bootstrap_ci(doc_ctx),
        "ratio_chunks_to_documents": float(np.mean(chunk_ctx) / np.mean(doc_ctx)),
        "gold_in_context_chunks": float(np.mean(chunk_gold)), "gold_in_context_documents": float(np.mean(doc_gold)),
    }
    md = "\n".join([
        f"# Generation context tokens per answer (PubMedQA {args.split}, {res['questions']} questions, top-{args.k})", "",
        "| context | mean tokens [95% CI] | gold abstract in context |", "|---|---|---|",
        f"| {args.k} generation chunks ({args.chunk_tokens}-token, {args.view} view) | {res['chunk_context_tokens_mean']:.1f} "
        f"[{res['chunk_context_tokens_ci'][0]:.1f}, {res['chunk_context_tokens_ci'][1]:.1f}] | {res['gold_in_context_chunks']:.3f} |",
        f"| {args.k} whole documents (same retrieval) | {res['document_context_tokens_mean']:.1f} "
        f"[{res['document_context_tokens_ci'][0]:.1f}, {res['document_context_tokens_ci'][1]:.1f}] | {res['gold_in_context_documents']:.3f} |",
        "", f"Chunks send {res['ratio_chunks_to_documents']:.3f}x the tokens of whole documents.", "",
    ])
    print(md)
    print(f"written {write_report(f'generation_tokens_{args.split}', res, md)}")


if __name__ == "__main__":
    main()
