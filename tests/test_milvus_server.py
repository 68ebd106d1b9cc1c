"""A real Milvus server (issue #26): what Milvus Lite cannot show.

The session's server (``milvus_server_process`` in ``store_servers.py``: Milvus 2.3 standalone from PyPI
``milvus``) is restarted and killed here: its data survive a restart; while it is down every call, and the
command line, fails with one line naming its URL; an ingest whose server is killed half way finishes on a
re-run with the same ids and no duplicates; a vector index is in use once written rows are sealed, with
recall@10 >= 0.95; the ready-made M3Att scenario runs on it and leaves the index as it was.

Opt-in: ``HETERAG_MILVUS_SERVER=1`` inside ``unshare --net`` (the server binds every interface). ``.ci/run`` runs
this file and the conformance suite's ``milvus-server`` cases side by side, each in a namespace (and with a
server) of its own; by hand, both on one server::

    HETERAG_MILVUS_SERVER=1 unshare --net bash -c 'ip link set lo up && python3 -m pytest \\
        tests/test_store_conformance.py tests/test_milvus_server.py -k "milvus-server or test_milvus_server"'
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from store_servers import (  # noqa: F401 - session fixtures
    MilvusServer,
    free_port,
    milvus_server,
    milvus_server_process,
    milvus_server_requested,
)

from heterag.cli import main
from heterag.collections.collection import collection_dir
from heterag.core.errors import DimensionMismatchError, StoreUnavailableError
from heterag.stores import Record, open_store

if not milvus_server_requested():
    pytest.skip("the Milvus server tests run with HETERAG_MILVUS_SERVER=1 inside `unshare --net` (see .ci/run)",
                allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
DIM = 32


def store_path(collection: str) -> Path:
    """Where collection ``collection`` keeps its store (its namespace on a server: ``NAME.store.heterag``)."""
    return collection_dir(collection) / "store"


def unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    mat = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return mat / np.linalg.norm(mat, axis=1, keepdims=True)


def records(n: int, dim: int = DIM, seed: int = 0, prefix: str = "r") -> list[Record]:
    vecs = unit(n, dim, seed)
    return [Record(f"{prefix}{i}", vecs[i], f"text {i}", {"i": i}) for i in range(n)]


def say(capture: pytest.CaptureFixture, line: str) -> None:
    """Show ``line`` in the test log (CI's output), past pytest's capture (``capsys`` or ``capfd``)."""
    with capture.disabled():
        print(f"\n[milvus-server] {line}", flush=True)


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def server(milvus_server_process: MilvusServer) -> Iterator[MilvusServer]:  # noqa: F811
    """The session's server, running again after the test whatever the test did to it."""
    if not milvus_server_process.running:
        milvus_server_process.start()
    yield milvus_server_process
    if not milvus_server_process.running:
        milvus_server_process.start()


def cli(*argv: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``heterag ARGV`` in a fresh process (what a user sees on stderr, tracebacks included)."""
    env = dict(os.environ, HETERAG_HOME=str(home), HETERAG_NO_PROGRESS="1")
    return subprocess.run([sys.executable, "-m", "heterag.cli", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def write_notes(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"note{i:03d}.txt").write_text(f"Note {i}: the lighthouse keeper logged {i} ships passing the "
                                                 f"northern reef in storm number {i % 7}.")
    return folder


# --------------------------------------------------------------------------- the index


def test_milvus_server_searches_sealed_rows_through_the_index(server: MilvusServer, tmp_path: Path) -> None:
    """The index exists before the collection is loaded, so sealed segments are handed over with it (an
    index built after the load stays unused until a release and load); searched with heterag's ``ef``,
    recall@10 against exact search is >= 0.95 (0.80 at the server's default breadth)."""
    from pymilvus import MilvusClient

    n = 4000  # above the 1024 rows from which Milvus indexes a segment
    vecs = unit(n, seed=1)
    queries = unit(40, seed=2)
    truth = np.argsort(-(queries @ vecs.T), axis=1)[:, :10]
    with open_store(server.spec, tmp_path / "store", "recall", keywords=False) as store:
        store.upsert([Record(f"r{i}", vecs[i], "", {}) for i in range(n)])
        store.flush()
        client = MilvusClient(uri=server.uri, timeout=10)
        try:
            deadline = time.monotonic() + 90
            while True:
                segments = client.list_loaded_segments(store.mname)
                indexed = sum(s.num_rows for s in segments if s.index_name == "vector")
                if indexed == n:
                    break
                assert time.monotonic() < deadline, (
                    f"the query node holds {indexed} of {n} rows with the vector index 90 s after the flush: "
                    f"{[(s.num_rows, s.state, s.index_name) for s in segments]}")
                time.sleep(0.5)
            assert client.describe_index(store.mname, "vector")["index_type"] == "AUTOINDEX"
        finally:
            client.close()
        found = [[int(h.record.id[1:]) for h in store.query(q, k=10)] for q in queries]
    recall = float(np.mean([len(set(f) & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=True)]))
    assert recall >= 0.95, f"recall@10 {recall:.3f} through the index"


# --------------------------------------------------------------------------- restarts and outages


def test_milvus_server_restart_keeps_every_record(server: MilvusServer, tmp_path: Path, capsys) -> None:
    recs = records(3000, seed=3)
    store = open_store(server.spec, tmp_path / "store", "restart")
    try:
        for start in range(0, len(recs), 1000):  # never flushed: the last rows are only in Milvus's log
            store.upsert(recs[start:start + 1000])
        before = store.count()
        rc = server.stop()
        took = server.start()
        # the same handle, at once: the server is still loading its collections (the store loads and retries)
        after = store.count()
        got = store.get([r.id for r in recs], include_vectors=True)
        hits = store.query(recs[7].vector, k=3)
        say(capsys, f"restart: {before} records before the stop (exit status {rc}), {after} after the restart "
                    f"({took:.1f} s to answer), {len(got)} read back")
        assert before == after == len(got) == len(recs)
        assert [r.id for r in got] == [r.id for r in recs]
        assert np.allclose(np.stack([r.vector for r in got]), np.stack([r.vector for r in recs]), atol=1e-6)
        assert hits[0].record.id == "r7" and hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert store.keyword_query("text 7", k=1)[0].record.id == "r7"  # the keyword index beside it, unchanged
    finally:
        store.close()


def test_milvus_server_down_is_one_line_naming_the_url(server: MilvusServer, tmp_path: Path, heterag_home: Path,
                                                        capfd) -> None:
    """Every call of a store whose server went down, and the command line (``heterag ingest``/``ask``; also for a
    URL where nothing listens): one line naming the URL, no traceback, exit status 2, within seconds."""
    notes = write_notes(tmp_path / "notes", 3)
    nobody = f"milvus:http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    done = cli("ingest", str(notes), "--collection", "nowhere", "--store", nobody, home=heterag_home)
    line = one_line(done.stderr)
    assert done.returncode == 2 and nobody in line, (done.returncode, line)
    assert time.monotonic() - start < 60 and not (heterag_home / "collections" / "nowhere").exists()
    say(capfd, f"heterag ingest --store {nobody} (nothing listens): exit {done.returncode}: {line}")

    assert main(["ingest", str(notes), "--collection", "served", "--store", server.spec]) == 0
    store = open_store(server.spec, tmp_path / "store", "outage", keywords=False)
    try:
        store.upsert(records(5))
        server.kill()
        capfd.readouterr()
        for call in (store.count, lambda: store.query(unit(1)[0], k=3), lambda: store.get(["r1"]),
                     lambda: store.upsert(records(2, prefix="new")), lambda: store.delete(ids=["r1"])):
            start = time.monotonic()
            with pytest.raises(StoreUnavailableError) as info:
                call()
            assert time.monotonic() - start < 10
            msg = str(info.value)
            assert server.spec in msg and "\n" not in msg, msg
        err = capfd.readouterr().err
        assert "Traceback" not in err and "pymilvus" not in err, err  # pymilvus's own error logging is quiet
        for argv in (["ask", "Who logged the ships?", "--collection", "served"], ["ingest", str(notes), "--collection", "served"]):
            done = cli(*argv, home=heterag_home)
            line = one_line(done.stderr)
            assert done.returncode == 2 and server.spec in line, (argv, done.returncode, line)
        say(capfd, f"heterag ask/ingest --collection served (on {server.spec}, server down): exit 2: {line}")
        server.start()
        assert store.count() == 5  # the same handle works again
    finally:
        store.close()


def test_milvus_server_killed_mid_ingest_then_rerun(server: MilvusServer, tmp_path: Path, heterag_home: Path,
                                                      monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """SIGKILL between two batches of one ingest (the second batch's writes fail): the ingest stops with one
    line naming the server; re-run after a restart, it ends with exactly the ids of an uninterrupted ingest."""
    from heterag.stores.milvus import MilvusStore

    notes = write_notes(tmp_path / "notes", 70)  # two batches: 64 documents, then 6
    assert main(["ingest", str(notes), "--collection", "whole", "--store", server.spec]) == 0
    capsys.readouterr()
    upsert, calls = MilvusStore.upsert, []

    def upsert_then_crash(self, recs):
        upsert(self, recs)
        calls.append(len(recs))
        if len(calls) == 1:
            server.kill()

    monkeypatch.setattr(MilvusStore, "upsert", upsert_then_crash)
    code = main(["ingest", str(notes), "--collection", "crashed", "--store", server.spec])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and server.spec in line, (code, line)
    monkeypatch.setattr(MilvusStore, "upsert", upsert)
    server.start()
    assert main(["ingest", str(notes), "--collection", "crashed"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    ids = {}
    for name in ("whole", "crashed"):
        with open_store(server.spec, store_path(name), "heterag", keywords=False) as store:
            got = store.ids()
            ids[name] = got
            assert store.count() == len(got) == len(set(got)), f"{name}: duplicates"
    say(capsys, f"killed mid-ingest: {calls[0]} records written before the kill; after the re-run "
                f"{len(ids['crashed'])} records, uninterrupted ingest {len(ids['whole'])}")
    assert sorted(ids["crashed"]) == sorted(ids["whole"]) and len(ids["whole"]) >= 70
    assert main(["keywords", "check", "--collection", "crashed"]) == 0


def test_milvus_server_dimension_mismatch_is_the_usual_one_line(server: MilvusServer, tmp_path: Path, capsys) -> None:
    with open_store(server.spec, tmp_path / "store", "dims") as one:
        one.upsert(records(3, dim=16))
    with open_store(server.spec, tmp_path / "store", "dims") as two:  # another connection, as another process would
        with pytest.raises(DimensionMismatchError):
            two.query(unit(1, dim=8)[0])
        with pytest.raises(DimensionMismatchError):
            two.upsert(records(1, dim=8, prefix="x"))
        assert two.count() == 3
    # the server already holds a collection of another dimension where `heterag ingest` would write
    with open_store(server.spec, store_path("clash"), "heterag") as other:
        other.upsert(records(3, dim=16))
    notes = write_notes(tmp_path / "notes", 2)
    code = main(["ingest", str(notes), "--collection", "clash", "--store", server.spec])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and "dimension" in line, (code, line)
    say(capsys, f"heterag ingest into a server collection of dimension 16: exit {code}: {line}")
    with open_store(server.spec, store_path("clash"), "heterag") as other:
        assert other.count() == 3  # nothing written


# --------------------------------------------------------------------------- the sandbox


def test_milvus_server_m3att_scenario_leaves_the_index_unchanged(server: MilvusServer, tmp_path: Path, capsys) -> None:
    """The ready-made synthetic M3Att scenario (sizes reduced to keep CI short) on the server, through the
    command line (``heterag sandbox run ... --store milvus:http://...``): exit 0, "index unchanged" and the same
    index fingerprint before and after the run."""
    scenario = yaml.safe_load((ROOT / "eval" / "scenarios" / "m3att_synthetic.yaml").read_text())
    scenario["data"]["splits"] = {"knowledge_base": {"count": 40}, "reference": {"count": 20},
                                  "candidates": {"count": 6}, "test": {"count": 12}}
    scenario["data"]["source"] = "synthetic:78"
    scenario["attack"].update(poison_count=2, sweep_counts=[1], steps=10)
    scenario["bootstrap"] = 100
    path = tmp_path / "m3att_synthetic_small.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    out = tmp_path / "report"
    start = time.monotonic()
    done = cli("sandbox", "run", str(path), "--out", str(out), "--store", server.spec, home=tmp_path / "home", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    say(capsys, f"M3Att scenario on {server.spec}: {time.monotonic() - start:.0f} s; fingerprint before "
                f"{report['fingerprint_before']}, after {report['fingerprint_after']}; {done.stdout.strip()}")
    assert report["fingerprint_before"] == report["fingerprint_after"]
    assert "index unchanged" in done.stdout
    assert report["scenario"]["rag"]["store"] == server.spec
