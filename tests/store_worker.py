"""A process that writes to or queries one store collection (run by test_store_processes.py).

``python store_worker.py write SPEC NAMESPACE_DIR WRITER`` upserts 20 batches of 25 records (ids
``w<WRITER>-<n>`` plus ids ``both-<n>`` that every writer writes identically), sets the shared fingerprint;
``python store_worker.py query SPEC NAMESPACE_DIR STOPFILE`` queries and counts until STOPFILE exists
(at most 2 minutes), counts once more, then prints a JSON line: queries made, errors, counts seen.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from heterag.stores import Fingerprint, Record, open_store

DIM = 16
FP = Fingerprint(model="shared-test", dim=DIM, view="chunk")
BATCHES, PER_BATCH = 20, 25


def vector(key: str) -> np.ndarray:
    seed = int.from_bytes(key.encode()[:8].ljust(8, b"\0"), "little") ^ len(key)
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def record(key: str) -> Record:
    return Record(key, vector(key), f"text of {key}", {"writer": key.split("-")[0], "n": int(key.split("-")[1])})


def write(spec: str, path: str, writer: str) -> None:
    with open_store(spec, path, "heterag") as store:
        store.set_fingerprint(FP)
        for b in range(BATCHES):
            keys = [f"w{writer}-{b * PER_BATCH + i}" for i in range(PER_BATCH)] + [f"both-{b * 5 + i}" for i in range(5)]
            store.upsert([record(k) for k in keys])
    print(json.dumps({"writer": writer, "done": True}))


def query(spec: str, path: str, stop: str) -> None:
    seen, errors, made = [], [], 0
    end = time.monotonic() + 120
    with open_store(spec, path, "heterag") as store:
        while time.monotonic() < end:
            done = os.path.exists(stop)
            try:
                n = store.count()
                seen.append(n)
                if n:
                    hits = store.query(vector("probe-1"), k=5)
                    assert all(h.record.text == f"text of {h.record.id}" for h in hits)
                    made += 1
            except Exception as exc:  # noqa: BLE001 - reported to the test
                errors.append(f"{type(exc).__name__}: {exc}")
            if done:
                break
            time.sleep(0.02)
    print(json.dumps({"queries": made, "errors": errors[:5], "counts": seen}))


if __name__ == "__main__":
    role, spec, path, arg = sys.argv[1:5]
    write(spec, path, arg) if role == "write" else query(spec, path, arg)
