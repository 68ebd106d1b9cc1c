"""Several processes, one index: two writers and one querier share a collection on a store server.

The writers run at the same time (no heterag write lock between them: as on two machines), both set the
same fingerprint and both write 100 shared records besides their own 500; the querier counts and
queries throughout. Afterwards the collection holds exactly the union, with each record as written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from store_servers import chroma_server, pg_server  # noqa: F401 - session fixtures
from store_worker import BATCHES, FP, PER_BATCH, record

from heterag.stores import open_store

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("server", ["chroma_server", "pg_server"])
def test_two_writers_and_a_querier(server: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    spec = request.getfixturevalue(server)
    ns = str(tmp_path / "store")
    worker = [sys.executable, str(HERE / "store_worker.py")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    run = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=HERE.parent)
    stop = tmp_path / "writers-done"
    querier = subprocess.Popen([*worker, "query", spec, ns, str(stop)], **run)
    writers = [subprocess.Popen([*worker, "write", spec, ns, w], **run) for w in ("1", "2")]
    for p in writers:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    stop.touch()
    out, err = querier.communicate(timeout=120)
    assert querier.returncode == 0, err[-2000:]
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["errors"] == [] and seen["queries"] > 0
    assert seen["counts"] == sorted(seen["counts"]) and seen["counts"][-1] == 1100  # never went backwards; saw it all

    expected = {f"w{w}-{i}" for w in ("1", "2") for i in range(BATCHES * PER_BATCH)} | {f"both-{i}" for i in range(BATCHES * 5)}
    with open_store(spec, ns, "heterag") as store:
        assert store.count() == len(expected) == 1100
        assert set(store.ids()) == expected and store.fingerprint() == FP
        sample = sorted(expected)[::97]
        for got in store.get(sample, include_vectors=True):
            want = record(got.id)
            assert got.text == want.text and dict(got.metadata) == dict(want.metadata)
            assert abs(float(got.vector @ want.vector) - 1.0) < 1e-5
        assert len(store.get(where={"writer": "both"})) == BATCHES * 5
    print(f"{server}: 2 writers + 1 querier -> count {len(expected)}, querier made {seen['queries']} queries, "
          f"saw counts {seen['counts'][0]}..{seen['counts'][-1]}")
