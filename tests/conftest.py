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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
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


def pytest_terminal_summary(terminalreporter) -> None:
    """List the screenshots the browser tests saved (recorded as the ``screenshot`` property), and
    one line per store backend with its conformance tests' outcomes (CI shows every backend ran)."""
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
