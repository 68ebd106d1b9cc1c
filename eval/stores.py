"""Store benchmark: every backend on the same 100k vectors of real text, store-only.

Data: ``--real`` PubMedQA passages (one or two sentences recombined with a fixed seed, as in
``eval/scale.py``) encoded with the default text encoder (all-MiniLM-L6-v2, 384 dimensions); the rest
of the ``--n`` vectors are drawn from a clustered model fitted to them (k-means with 256 clusters: a
real member of a cluster, chosen by cluster weight, plus Gaussian noise with the cluster's per-dimension
spread times 0.5, renormalised), so the set keeps the real data's cluster structure. Queries: the first
``--queries`` PubMedQA questions, encoded. Ground truth: exact cosine top-10 (numpy).

Per backend (each in a fresh folder or server collection): ingest rate (records/s, batches of 1,000,
each batch one ``upsert``), query latency p50/p95 (k=10, one thread, ``store.query`` only), recall@10
against the exact top-10 (mean over queries, with a bootstrap 95% interval), disk (bytes on disk after
ingest: the store's folder; for servers their data folder growth) and resident memory (this process's
RSS growth for embedded stores; the server's RSS for servers).

    nice -n 10 python eval/stores.py [--n 100000] [--real 20000] [--queries 200] [--stores chroma,faiss,...]

ANN settings are the stores' defaults as configured in heterag, reported in the table's "ANN settings"
column: what the store says (``index_settings()``: faiss IVF-Flat, lancedb IVF_FLAT from 20,000 records,
with their nlist/nprobe) or, for stores without that method, :data:`SETTINGS` (chroma and chroma-http HNSW
M=16, construction ef 100, search ef 200; pgvector HNSW m=16, ef_construction=64, ef_search=max(200, k);
milvus AUTOINDEX, which Milvus Lite 3.x builds as a FAISS HNSW per sealed segment). Qdrant's local mode
(27 ms per point, commits and pickles every point) and the in-process LangChain/LlamaIndex adapters are not
built for 100k records and are left out.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
from _common import OUT_DIR, ROOT, bootstrap_ci, require_data, write_report
from tqdm import tqdm

from corpora import default_data_dir, load_pubmedqa
from heterag import Record, load_text_encoder, open_store

log = logging.getLogger("stores")
BATCH = 1000
K = 10


def _settings() -> dict[str, str]:
    from heterag.stores.chroma import HNSW_CONFIG
    from heterag.stores.pgvector import EF_SEARCH, HNSW_EF_CONSTRUCTION, HNSW_M

    chroma = f"HNSW M=16, ef_c=100, ef_s={HNSW_CONFIG['hnsw']['ef_search']} (cosine)"
    return {"chroma": chroma, "chroma-http": chroma + " on a `chroma run` server",
            "pgvector": f"HNSW m={HNSW_M}, ef_construction={HNSW_EF_CONSTRUCTION}, ef_search=max({EF_SEARCH}, k)",
            "milvus": "Milvus Lite AUTOINDEX (COSINE; FAISS HNSW per sealed segment)",
            "milvus-server": "Milvus 2.3.5 standalone AUTOINDEX (COSINE; HNSW per sealed segment), ef=max(200, k)",
            "qdrant-memory": "qdrant-client local mode in memory: exact (numpy over all points; no HNSW in local mode)"}


def index_settings(kind: str, store) -> str:
    """The ANN settings a store reports (faiss, lancedb), else the documented defaults of :func:`_settings`."""
    describe = getattr(store, "index_settings", None)
    return describe() if describe is not None else _settings().get(kind, "?")


def passages(n: int, seed: int = 0) -> list[str]:
    data = load_pubmedqa()
    sentences = [s for d in data.documents for sec in d.sections for s in re.split(r"(?<=[.!?])\s+", sec.text) if len(s) > 30]
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    while len(out) < n:
        text = " ".join(sentences[i] for i in rng.integers(0, len(sentences), size=int(rng.integers(1, 3))))
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def clustered(real: np.ndarray, n: int, seed: int = 0, clusters: int = 256) -> np.ndarray:
    """``real`` plus ``n - len(real)`` vectors drawn from a k-means model fitted to it (see the docstring)."""
    from sklearn.cluster import MiniBatchKMeans

    if n <= len(real):
        return real[:n]
    km = MiniBatchKMeans(n_clusters=clusters, random_state=seed, n_init=3, batch_size=4096).fit(real)
    rng = np.random.default_rng(seed)
    labels = km.labels_
    members = [np.flatnonzero(labels == c) for c in range(clusters)]
    spread = np.stack([real[m].std(axis=0) if len(m) > 1 else np.full(real.shape[1], 0.01) for m in members])
    weights = np.array([len(m) for m in members], dtype=float)
    picks = rng.choice(clusters, size=n - len(real), p=weights / weights.sum())
    base = np.stack([real[rng.choice(members[c])] for c in picks])
    synth = base + rng.normal(size=base.shape) * spread[picks] * 0.5
    synth /= np.linalg.norm(synth, axis=1, keepdims=True)
    return np.vstack([real, synth.astype(np.float32)])


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            total += proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
        except psutil.Error:
            pass
    return total


def servers(kind: str, root: Path, pg_settings: dict[str, str] | None = None):
    """(spec, data folder, server pids, stop) for a backend; servers are started here, bound to 127.0.0.1 or a socket.
    ``pg_settings``: PostgreSQL settings applied with ``ALTER SYSTEM`` and a restart (e.g. ``shared_buffers``).
    ``milvus-server`` needs a loopback-only network namespace (see ``tests/store_servers.MilvusServer``)."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from store_servers import start_chroma, start_postgres, stop

    if kind == "chroma-http":
        proc, spec = start_chroma(root / "chroma-server")
        return spec, root / "chroma-server", [proc.pid], lambda: stop(proc)
    if kind == "pgvector":
        srv = start_postgres(root / "pg")
        if pg_settings:
            for key, value in pg_settings.items():
                srv.psql(f"ALTER SYSTEM SET {key} = '{value}';")
            srv.stop()
            srv.start()
        pid = srv.get_pid()
        return srv.get_uri(), root / "pg", [pid] if pid else [], srv.cleanup
    if kind == "qdrant-memory":  # the qdrant client's local mode held in memory (on disk it persists point by point)
        return "qdrant::memory:", root, [], lambda: None
    if kind == "milvus":
        return f"milvus:{root / 'milvus' / 'bench.db'}", root / "milvus", [], lambda: None
    if kind == "milvus-server":
        from store_servers import MilvusServer

        server = MilvusServer(root / "milvus-server")
        server.start()
        return server.spec, root / "milvus-server", [server.proc.pid], server.stop  # growth: data and logs
    return kind, root / "store", [], lambda: None


def wait_indexed(store, n: int, timeout: float = 3600.0) -> float:
    """Seconds until a Milvus server reports all ``n`` rows indexed (its sealed segments' HNSW built)."""
    began = time.perf_counter()
    while time.perf_counter() - began < timeout:
        indexed, total = store.index_progress()
        if indexed >= n and total >= n:
            return time.perf_counter() - began
        time.sleep(1.0)
    raise TimeoutError(f"the Milvus server indexed {indexed:,} of {n:,} rows in {timeout:.0f} s")


def run_backend(kind: str, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, workdir: Path,
                texts: list[str] | None = None, pg_settings: dict[str, str] | None = None,
                tune: Callable[[str, object], dict] | None = None, pg_params: dict[str, int] | None = None,
                bulk: dict | None = None) -> dict:
    """Build ``kind`` from ``vectors`` (n, d) (texts ``texts``, else "passage i"), time ``store.query`` for each
    of ``queries`` (q, d) and compare with ``truth`` (q, K) row indices; returns the row of the report.
    ``tune(kind, store)``, when given, runs between the build and the measurement (it may set the store's
    search settings from held-out queries, never from ``queries``); what it returns joins the row. ``pg_params``:
    heterag's HNSW URL parameters for pgvector (``ef_construction``, ``ef_search``). ``bulk``: for a store with a bulk
    path (pgvector), the upserts run inside ``store.bulk_load(**bulk)`` (rows first, the index built at its end, inside
    the timed build)."""
    root = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-", dir=workdir))
    spec, data_dir, pids, stop = servers(kind, root, pg_settings)
    if kind == "pgvector" and pg_params:
        spec += ("&" if "?" in spec else "?") + "&".join(f"{k}={v}" for k, v in pg_params.items())
    me = psutil.Process()
    try:
        disk0, rss0, mem0 = du(data_dir), rss(pids), me.memory_info().rss
        store = open_store(spec, root / "store", "bench")
        if kind == "milvus":
            from heterag.stores import milvus as milvus_mod  # Milvus Lite runs as a child process of this one

            pids = [c.pid for c in me.children(recursive=True) if "milvus" in " ".join(c.cmdline()).lower()]
            del milvus_mod
        ids = [f"r{i}" for i in range(len(vectors))]
        t0 = time.perf_counter()
        loader = getattr(store, "bulk_load", None) if bulk is not None else None
        with loader(**bulk) if loader is not None else contextlib.nullcontext():
            for s in tqdm(range(0, len(vectors), BATCH), desc=f"ingest {kind}", disable=bool(os.environ.get("HETERAG_NO_PROGRESS"))):
                store.upsert([Record(ids[i], vectors[i], texts[i] if texts else f"passage {i}", {"i": i})
                              for i in range(s, min(s + BATCH, len(vectors)))])
        flush = getattr(store, "flush", None)
        if flush is not None:  # FAISS saves its index, Milvus seals its segments: part of ingesting
            flush()
        index_wait_s = wait_indexed(store, len(vectors)) if kind == "milvus-server" else 0.0
        ingest_s = time.perf_counter() - t0
        tuned = tune(kind, store) if tune is not None else {}
        for q in queries[:5]:  # warm-up
            store.query(q, k=K)
        lat, recalls = [], []
        for q, want in zip(queries, truth, strict=True):
            t = time.perf_counter()
            hits = store.query(q, k=K)
            lat.append(time.perf_counter() - t)
            got = {int(h.record.id[1:]) for h in hits}
            recalls.append(len(got & set(want.tolist())) / K)
        settings = index_settings(kind, store)
        disk = du(data_dir) - disk0
        if kind == "pgvector":
            from heterag.stores.pgvector import connect
            from heterag.stores.url import parse_store_url

            with connect(parse_store_url(spec)) as conn:
                disk = int(conn.execute("SELECT pg_total_relation_size(%s)", (store.table,)).fetchone()[0])
        mem = rss(pids) if pids else me.memory_info().rss - mem0
        count = store.count()
        store.close()
        ms = np.asarray(lat) * 1000
        lo, hi = bootstrap_ci(recalls)
        return {"store": kind, "settings": settings, "records": count, "ingest_per_s": len(vectors) / ingest_s, "ingest_s": ingest_s,
                "index_wait_s": index_wait_s,
                "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
                "recall_at_10": float(np.mean(recalls)), "recall_ci": [lo, hi], "disk_mb": disk / 2**20,
                "rss_mb": mem / 2**20, "rss_of": "server" if pids else "this process (growth)", "rss_before_mb": rss0 / 2**20,
                **tuned}
    finally:
        stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--real", type=int, default=20_000, help="real encoded passages (the rest is fitted to them)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--stores", default="faiss,chroma,lancedb,milvus,chroma-http,pgvector")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where the stores are built (default: a temp folder)")
    ap.add_argument("--name", default="stores", help="report name under eval/out (default stores)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    require_data(default_data_dir() / "pubmedqa", "PubMedQA")
    enc = load_text_encoder(None)
    t0 = time.perf_counter()
    cache = OUT_DIR / f"stores_real_{min(args.real, args.n)}_seed{args.seed}.npy"  # encoded once, reused by reruns
    if cache.exists():
        real = np.load(cache)
    else:
        real = np.asarray(enc.encode(passages(min(args.real, args.n), seed=args.seed)), dtype=np.float32)
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        np.save(cache, real)
    encode_s = time.perf_counter() - t0
    vectors = clustered(real, args.n, seed=args.seed)
    questions = [q.question for q in load_pubmedqa().questions[: args.queries]]
    queries = np.asarray(enc.encode(questions), dtype=np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    truth = np.argsort(-(queries @ unit.T), axis=1)[:, :K]
    log.info("%d vectors (%d real, encoded in %.0f s), %d queries", len(vectors), len(real), encode_s, len(queries))
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="heterag-bench-stores-"))
    rows = []
    for kind in [s.strip() for s in args.stores.split(",") if s.strip()]:
        log.info("backend %s", kind)
        try:
            rows.append(run_backend(kind, vectors, queries, truth, workdir))
        except Exception as exc:  # noqa: BLE001 - one backend failing must not lose the others' figures
            log.exception("backend %s failed", kind)
            rows.append({"store": kind, "error": f"{type(exc).__name__}: {exc}"})
        log.info("%s", rows[-1])
        report(args.name, rows, len(vectors), len(real), len(queries), args.seed)  # after each backend: a partial run keeps its figures


def report(name: str, rows: list[dict], n: int, real: int, queries: int, seed: int) -> None:
    md = [f"# Store benchmark ({n:,} vectors: {real:,} real PubMedQA passages + fitted clusters; "
          f"{queries} PubMedQA questions; k={K}; seed {seed})", "",
          "| store | ANN settings | ingest (rec/s) | p50 ms | p95 ms | recall@10 [95% CI] | disk MB | RSS MB |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            md.append(f"| {r['store']} | | failed: {r['error']} | | | | | |")
            continue
        md.append(f"| {r['store']} | {r.get('settings', '?')} | {r['ingest_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                  f"{r['recall_at_10']:.3f} [{r['recall_ci'][0]:.3f}, {r['recall_ci'][1]:.3f}] | {r['disk_mb']:.0f} | "
                  f"{r['rss_mb']:.0f} ({r['rss_of']}) |")
    path = write_report(name, {"n": n, "real": real, "queries": queries, "seed": seed, "rows": rows}, "\n".join(md) + "\n")
    print("\n".join(md), flush=True)
    print(f"written to {path}", flush=True)


if __name__ == "__main__":
    main()
