"""Cost of a collection's content fingerprint on N records (what the sandbox pays before and after a run).

Upserts N random 384-d records into a fresh FAISS and Chroma store, then times reading every id
(``store.ids()``) and hashing them as :func:`heterag.content_fingerprint` does.

    python eval/fingerprint_cost.py [--n 100000]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import _common  # noqa: F401  (puts the checkout on sys.path)
import numpy as np

from heterag.pipeline.content import parts_digest
from heterag.stores import open_store
from heterag.stores.base import Record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for kind in ("faiss", "chroma"):
        with tempfile.TemporaryDirectory() as d:
            st = open_store(kind, d, collection="heterag")
            for s in range(0, args.n, 5000):
                v = rng.standard_normal((min(5000, args.n - s), 384)).astype(np.float32)
                st.upsert([Record(f"id{s + i:07d}", v[i], "x", {"doc_id": f"d{(s + i) // 3}"}) for i in range(len(v))])
            t = time.perf_counter()
            ids = frozenset(st.ids())
            parts_digest({"text": ids})
            print(f"{kind}: {len(ids)} records, ids + digest {time.perf_counter() - t:.2f} s")
            st.close()


if __name__ == "__main__":
    main()
