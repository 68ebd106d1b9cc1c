"""Shared fixtures: the real offline encoder (loaded once), isolated HETERAG_HOME, data locations."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from chat_server import ChatHandler, ChatServer, ServerConfig

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HETERAG_NO_PROGRESS", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

DATA_DIR = Path(os.environ.get("HETERAG_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


#: The test files that hold a worker longest (seconds of setup+call+teardown on 2 busy cores, as the "seconds by
#: test file" summary prints them), longest first. Each file runs whole on one worker (``--dist loadfile``), and
#: xdist would order files by their number of tests, which left these few-test, long files for the end, where one
#: worker ran them while the other sat idle; started first, the many short files fill in at the end instead (the
#: main suite in a clean-clone CI run: 647 s before, 557 s after; the files' sum is about 1,150 s).
LONG_FILES = ("test_demo.py", "test_sandbox.py", "test_mrm.py", "test_store_conformance.py", "test_sandbox_app.py",
              "test_sandbox_browser.py", "test_keyword_index.py", "test_local_generator.py", "test_guards.py",
              "test_ui_browser.py", "test_app.py", "test_audit_browser.py", "test_store_processes.py", "test_hybrid_retrieval.py")


def _file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # the order xdist hands files out in (addopts has --no-loadscope-reorder): LONG_FILES first, then the other
    # files by their number of tests; the same on every worker (xdist checks), the tests of a file in their order
    counts: dict[str, int] = {}
    for item in items:
        counts[_file(item.nodeid)] = counts.get(_file(item.nodeid), 0) + 1

    def rank(item: pytest.Item) -> tuple[int, int, str]:
        path = _file(item.nodeid)
        name = path.rsplit("/", 1)[-1]
        return (LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES), -counts[path], path)

    items.sort(key=rank)
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: takes minutes; run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """Record which store backend a conformance test ran on (``store_name``'s parameter)."""
    report = yield
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "store_name" in callspec.params and report.when in ("setup", "call"):
        report.user_properties.append(("store_backend", callspec.params["store_name"]))
    return report


_FILE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add up each test file's time (setup, call and teardown; module fixtures count in their first test)."""
    _FILE_SECONDS[_file(report.nodeid)] = _FILE_SECONDS.get(_file(report.nodeid), 0.0) + report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    """List the screenshots the browser tests saved (recorded as the ``screenshot`` property),
    one line per store backend with its conformance tests' outcomes (CI shows every backend ran), and the
    test files that took longest (to keep :data:`LONG_FILES` true)."""
    if len(_FILE_SECONDS) > 5:
        terminalreporter.section("seconds by test file (the longest)")
        longest = sorted(_FILE_SECONDS.items(), key=lambda kv: -kv[1])[:len(LONG_FILES) + 4]
        terminalreporter.write_line(", ".join(f"{path.rsplit('/', 1)[-1]} {sec:.0f}" for path, sec in longest))
    shots = [value for reports in terminalreporter.stats.values() for report in reports
             for key, value in getattr(report, "user_properties", ()) if key == "screenshot"]
    if shots:
        terminalreporter.section("screenshots")
        for path in dict.fromkeys(shots):
            terminalreporter.write_line(path)
    outcomes: dict[str, dict[str, int]] = {}
    for status, reports in terminalreporter.stats.items():
        for report in reports:
            backend = dict(getattr(report, "user_properties", ())).get("store_backend")
            if backend is None or not status or (report.when == "setup" and status == "passed"):
                continue  # a test's setup and call reports: count the call, or a failed/skipped setup
            counts = outcomes.setdefault(backend, {})
            counts[status] = counts.get(status, 0) + 1
    if outcomes:
        terminalreporter.section("store conformance by backend")
        for backend, counts in sorted(outcomes.items()):
            terminalreporter.write_line(f"{backend}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))


@pytest.fixture(scope="session")
def encoder():
    """The real default text encoder (packaged all-MiniLM-L6-v2), loaded once per session."""
    from heterag import load_text_encoder

    return load_text_encoder(None)


@pytest.fixture(autouse=True)
def heterag_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own collections folder."""
    home = tmp_path / "heterag-home"
    monkeypatch.setenv("HETERAG_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs {path} (the shared development data, ../shared/data); not present here")
    return path


@pytest.fixture(scope="session")
def tiny_encoder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer BERT sentence-transformer saved to a local folder.

    It exercises the real loading code for local model paths; weights are random, so it
    is only used where retrieval quality does not matter (fingerprints, loading).
    """
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from heterag.encoding.text_encoder import _packaged_default

    out = tmp_path_factory.mktemp("tiny-encoder")
    tok = AutoTokenizer.from_pretrained(str(_packaged_default()))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    hf_dir = out / "hf"
    BertModel(cfg).save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    word = models.Transformer(str(hf_dir), max_seq_length=128)
    st = SentenceTransformer(modules=[word, models.Pooling(word.get_embedding_dimension(), "mean")])
    st.save(str(out / "st"))
    return out / "st"


@pytest.fixture(scope="module")
def chat_server() -> Iterator[ChatServer]:
    server = ChatServer(("127.0.0.1", 0), ChatHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Debian's Chromium under Playwright, one per test module (browser tests; see browser_helpers.py)."""
    from browser_helpers import launch_browser

    yield from launch_browser()


@pytest.fixture()
def server(chat_server: ChatServer, monkeypatch: pytest.MonkeyPatch) -> ChatServer:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    chat_server.config = ServerConfig()
    return chat_server
