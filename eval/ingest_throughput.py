"""Ingest throughput into Chroma and FAISS, and `retrieve` latency on a 100k-chunk collection.

The corpus is passages of one or two PubMedQA sentences recombined with a fixed seed
(real biomedical prose of the benchmark's domain, not 100x the same abstracts), cut
into 64-token generation chunks; the first ``--n`` chunks form the collection.

Figures (one run; the machine is noisy, so compare ratios within the run):
* encoder throughput (chunks/s, naive view) over all passages;
* store write throughput (chunks/s) of the encoded records into each store, batches of 256;
* end-to-end pipeline ingest (chunking + encoding + writing) on a 5k-passage slice per store;
* `Pipeline.retrieve` latency p50/p95 (query encoding included) and store-only query
  latency, k=5, over 200 PubMedQA questions on the full collection.

    python eval/ingest_throughput.py [--n 100000] [--queries 200]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import require_data, write_report
from tqdm import tqdm

from corpora import default_data_dir, load_pubmedqa
from heterag import Document, Pipeline, Record, load_text_encoder, make_view, open_store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stores import passages  # noqa: E402  (the same PubMedQA passages as the store benchmarks)

log = logging.getLogger("ingest_throughput")


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)), "mean_ms": float(ms.mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--pipeline-slice", type=int, default=5000)
    ap.add_argument("--stores", default="faiss,chroma")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    require_data(default_data_dir() / "pubmedqa", "PubMedQA")
    encoder = load_text_encoder(None)
    texts = passages(args.n)
    docs = [Document.create(t, id=f"p{i}") for i, t in enumerate(texts)]
    view = make_view("naive")
    res: dict = {"n": args.n}

    log.info("encoding %d passages", len(docs))
    from heterag import chunk_document

    chunks = [c for d in tqdm(docs, desc="chunk", mininterval=5) for c in chunk_document(d, encoder.tokenize, 64).chunks]
    chunks = chunks[: args.n]
    t = time.perf_counter()
    vectors = encoder.encode([c.text for c in chunks], show_progress=True)
    enc_s = time.perf_counter() - t
    res["chunks"] = len(chunks)
    res["encode_chunks_per_s"] = len(chunks) / enc_s
    records = [
        Record(id=c.id, vector=vectors[i], text=c.text,
               metadata={"doc_id": c.doc_id, "chunk_index": c.index, "section_index": 0, "title": "", "heading": "", "view": c.text})
        for i, c in enumerate(chunks)
    ]
    questions = [q.question for q in load_pubmedqa().questions[: args.queries]]
    for name in args.stores.split(","):
        with tempfile.TemporaryDirectory(prefix=f"scale-{name}-") as tmp:
            # 1. end-to-end pipeline ingest on a slice (fresh store)
            pipe = Pipeline(open_store(name, f"{tmp}/slice", "slice"), encoder, view, chunk_tokens=64)
            t = time.perf_counter()
            rep = pipe.ingest(docs[: args.pipeline_slice], batch_documents=256)
            pipe_s = time.perf_counter() - t
            pipe.close()
            # 2. bulk write of all encoded records
            store = open_store(name, f"{tmp}/full", "full")
            pipe = Pipeline(store, encoder, view, chunk_tokens=64)  # sets the fingerprint
            t = time.perf_counter()
            for b in tqdm(range(0, len(records), 256), desc=f"upsert {name}", mininterval=10):
                store.upsert(records[b : b + 256])
            if hasattr(store, "flush"):
                store.flush()
            write_s = time.perf_counter() - t
            # 3. latency
            for q in questions[:5]:
                pipe.retrieve(q, k=5)  # warm-up
            lat, store_lat = [], []
            for q in questions:
                t = time.perf_counter()
                pipe.retrieve(q, k=5)
                lat.append(time.perf_counter() - t)
            qv = encoder.encode(questions)
            for v in qv:
                t = time.perf_counter()
                store.query(v, k=5)
                store_lat.append(time.perf_counter() - t)
            res[name] = {
                "count": store.count(),
                "write_chunks_per_s": len(records) / write_s,
                "pipeline_ingest_chunks_per_s": rep.chunks_written / pipe_s,
                "pipeline_slice_chunks": rep.chunks_written,
                "retrieve": percentiles(lat),
                "store_query": percentiles(store_lat),
            }
            log.info("%s: %s", name, res[name])
            pipe.close()
    lines = [f"# Scale: {res['chunks']} chunks (PubMedQA sentence recombinations, seed 0)", "",
             f"Encoder throughput (naive view, all chunks): {res['encode_chunks_per_s']:.0f} chunks/s", "",
             "| store | bulk write chunks/s | pipeline ingest chunks/s (encode+write) | retrieve p50 / p95 ms | store query p50 / p95 ms |",
             "|---|---|---|---|---|"]
    for name in args.stores.split(","):
        r = res[name]
        lines.append(f"| {name} | {r['write_chunks_per_s']:.0f} | {r['pipeline_ingest_chunks_per_s']:.0f} | "
                     f"{r['retrieve']['p50_ms']:.1f} / {r['retrieve']['p95_ms']:.1f} | "
                     f"{r['store_query']['p50_ms']:.1f} / {r['store_query']['p95_ms']:.1f} |")
    md = "\n".join(lines) + "\n"
    print(md)
    print(f"written {write_report('ingest_throughput', res, md)}")


if __name__ == "__main__":
    main()
