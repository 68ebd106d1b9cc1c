"""The app's faults of issue 25 (point 5), each reproduced: a re-upload under a stored name, a question
waiting for an ingest, upload progress without totals, bad settings found only at the first question,
expected errors logged with tracebacks."""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from heterag import open_collection
from heterag.core.errors import HeteragError
from heterag.encoding.batching import MicroBatcher
from heterag.ui.catalog import list_documents
from heterag.ui.config import AppConfig, ChatSettings, load_config_file, parse_args
from heterag.ui.service import ChatService
from heterag.ui.uploads import stage_uploads


@pytest.fixture()
def service(encoder):
    open_collection("kb").close()
    svc = ChatService(AppConfig())
    yield svc
    svc.close()


def _upload(service: ChatService, tmp_path: Path, name: str, text: str):
    folder = tmp_path / f"up-{time.monotonic_ns()}"
    folder.mkdir()
    (folder / name).write_text(text)
    updates = list(service.ingest_uploads("kb", [(name, folder / name)]))
    assert updates[-1].finished
    return updates[-1]


def _docs(service: ChatService) -> dict[str, int]:
    return {d.id: d.chunks for d in list_documents(service.pipeline("kb"))}


# ---- 1. a re-upload under a stored name never replaces that document silently ----------------------
def test_a_different_file_under_a_stored_name_is_kept_beside_it_and_the_status_says_so(service, tmp_path):
    _upload(service, tmp_path, "notes.md", "# Tides\n\nTides are caused mainly by the pull of the Moon.\n")
    last = _upload(service, tmp_path, "notes.md", "# Bread\n\nBread rises because yeast releases carbon dioxide.\n")
    assert set(_docs(service)) == {"notes.md", "notes (2).md"}, "the first notes.md was replaced"
    assert "kept both, this one as notes (2).md" in last.status and "\n" not in last.status
    text = "".join(getattr(e, "text", "") for e in service.ask("Why does bread rise?", None, ChatSettings(collection="kb")))
    assert "yeast" in text
    text = "".join(getattr(e, "text", "") for e in service.ask("What causes tides?", None, ChatSettings(collection="kb")))
    assert "Moon" in text

    # the same bytes again, under its own or another name: nothing is rewritten, nothing replaced
    again = _upload(service, tmp_path, "notes.md", "# Tides\n\nTides are caused mainly by the pull of the Moon.\n")
    assert again.report.documents_written == 0 and "notes.md: already stored, unchanged" in again.status
    copy = _upload(service, tmp_path, "copy.md", "# Bread\n\nBread rises because yeast releases carbon dioxide.\n")
    assert copy.report.documents_written == 0 and "copy.md: same content as notes (2).md; not added again" in copy.status
    assert set(_docs(service)) == {"notes.md", "notes (2).md"}, "a copy under another name replaced a document"


def test_the_figures_of_an_uploaded_pdf_are_named_after_the_users_file(tmp_path):
    from format_samples import write_pdf

    pdf = write_pdf(tmp_path / "paper.pdf")
    with stage_uploads([("estuary.pdf", pdf)]) as staged:
        docs = [d for d in staged.items() if not isinstance(d, Exception) and hasattr(d, "id")]
    ids = sorted(d.id for d in docs)
    assert ids == ["estuary.pdf", "estuary.pdf#figure-1", "estuary.pdf#figure-2"], ids  # not 0001.pdf#figure-1
    assert all(d.metadata["source"] == "estuary.pdf" for d in docs)
    assert all("0001" not in (d.image.source or "") for d in docs if d.image is not None)


# ---- 2. a question is not held up by an ingest's encoding ----------------------------------------
def test_a_waiting_call_runs_before_the_next_bulk_slice_not_after_the_bulk():
    """An ingest encodes slice after slice through run_exclusive; a question that comes meanwhile runs
    before the next slice (and returns while it runs), instead of waiting for the whole bulk."""
    order: list[str] = []
    batcher = MicroBatcher(lambda items: order.append("query") or [s.upper() for s in items])
    answered = threading.Event()
    result: list = []

    def ask() -> None:
        result.append(batcher(["q"]))
        answered.set()

    def slice_(i: int) -> None:
        order.append(f"slice {i}")
        if i == 0:  # a question arrives while the first slice runs
            threading.Thread(target=ask).start()
            deadline = time.monotonic() + 5
            while not batcher._pending and time.monotonic() < deadline:
                time.sleep(0.005)
        elif i == 1:  # the question has its answer while the ingest goes on
            assert answered.wait(5), "the question waited for the ingest's next slice"

    for i in range(4):
        batcher.run_exclusive(lambda i=i: slice_(i))
    assert answered.wait(5) and result == [["Q"]]
    assert order[:3] == ["slice 0", "query", "slice 1"], order


def test_a_bulk_encode_of_long_views_runs_in_short_passes(encoder, monkeypatch):
    """64 views of about 256 tokens made one forward pass of 5 to 10 s on 2 cores, and a question waited
    for it; the passes of a bulk encode are now bounded in tokens (at most 8 such views)."""
    from heterag.encoding import text_encoder

    BULK_PASS_TOKENS = getattr(text_encoder, "BULK_PASS_TOKENS", 2048)  # noqa: N806 - the module's constant
    sizes: list[int] = []

    def fake(texts):
        sizes.append(len(texts))
        return np.zeros((len(texts), encoder.dim), dtype=np.float32)

    monkeypatch.setattr(encoder, "_encode_batch", fake)
    long = [f"view {i} " + "the tide rises and falls along the estuary " * 25 for i in range(64)]
    short = [f"note {i} about tides" for i in range(200)]
    assert encoder.encode(long).shape == (64, encoder.dim)
    assert max(sizes) * encoder.max_seq_length <= BULK_PASS_TOKENS, sizes
    sizes.clear()
    encoder.encode(short)
    assert max(sizes) == encoder.batch_size  # short texts still go 64 at a time
    windows = [list(range(1000, 1254))] * 20  # late chunking: 20 windows of 254 tokens
    import torch

    shapes: list[tuple[int, int]] = []

    def transformer(input_ids, attention_mask):
        shapes.append(tuple(input_ids.shape))
        return type("Out", (), {"last_hidden_state": torch.zeros((*input_ids.shape, encoder.dim))})

    monkeypatch.setattr(type(encoder), "_transformer", property(lambda self: transformer))
    assert len(encoder.token_embeddings(windows)) == 20
    assert len(shapes) > 1 and all(n * width <= BULK_PASS_TOKENS for n, width in shapes), shapes


# ---- 3. upload progress shows files and chunks done out of their totals ---------------------------
def test_upload_progress_shows_done_and_total_files_and_chunks(service, tmp_path, monkeypatch):
    folder = tmp_path / "many"
    folder.mkdir()
    files = []
    for i in range(40):
        (folder / f"n{i:02d}.md").write_text(f"# Note {i}\n\nNote number {i} says the tide number {i} is high.\n")
        files.append((f"n{i:02d}.md", folder / f"n{i:02d}.md"))
    enc = service.pipeline("kb").encoder
    real = enc.encode

    def slow(texts, **kw):  # an ingest batch takes a while, so that progress is seen between batches
        time.sleep(0.6)
        return real(texts, **kw)

    monkeypatch.setattr(enc, "encode", slow)
    updates = list(service.ingest_uploads("kb", files))
    lines = [u.status for u in updates if not u.finished]
    shown = [m for line in lines if (m := re.search(r"(\d+)/(\d+) files, (\d+)/(\d+) chunks", line))]
    assert shown, lines
    assert all(int(m[2]) == 40 and int(m[4]) == updates[-1].report.chunks_written for m in shown), lines
    assert any(0 < int(m[1]) < 40 for m in shown), lines  # a total seen part of the way


# ---- 4. bad settings stop the app at start, in one line ------------------------------------------
@pytest.mark.parametrize(("argv", "message"), [
    (["--fusion", "wieghted"], "fusion method must be one of weighted, rrf, got 'wieghted'"),
    (["--fusion", "weighted:text=high"], "fusion weight 'text=high' is not a number"),
    (["--generator", "transformers", "--model-path", "/no/such/model"], "/no/such/model: model folder does not exist"),
    (["--generator", "local", "--model-path", "/no/such/model.gguf"], "/no/such/model.gguf: model does not exist"),
    (["--model-path", "/no/such/model"], "/no/such/model: model does not exist"),
])
def test_a_bad_fusion_or_model_path_exits_2_at_start_in_one_line(argv, message, capsys, monkeypatch):
    from heterag.ui import server

    monkeypatch.setattr(server, "serve", lambda cfg: pytest.fail("the app started with a bad setting"))
    with pytest.raises(HeteragError, match=re.escape(message)):
        parse_args(argv)
    assert server.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"app.py: error: {err[0].removeprefix('app.py: error: ')}"] and message in err[0]


def test_a_bad_fusion_in_the_config_file_is_one_line(tmp_path):
    cfg = tmp_path / "app.yaml"
    cfg.write_text("fusion: rrf:txt=1\n")
    with pytest.raises(HeteragError, match=r"unknown fusion signal\(s\) \['txt'\]"):
        load_config_file(cfg)


# ---- 5. an expected error is one log line, not a traceback ----------------------------------------
def test_an_expected_chat_api_error_is_one_log_line_without_a_traceback(service, caplog):
    import gradio as gr

    from heterag.ui.webapp import API_NAME, build_app

    app = build_app(service)
    chat = next(f.fn for f in app.fns.values() if f.api_name == API_NAME)
    caplog.set_level(logging.INFO)
    for args, message in [(("hi", None, "missing", 3), "no collection named 'missing'"),
                          (("", None, "kb", 3), "type a question or attach an image"),
                          (("hi", None, "kb", 99), "top_k must be a whole number from 1 to 50")]:
        caplog.clear()
        with pytest.raises(gr.Error) as err:
            list(chat(*args))
        assert message in err.value.message
        assert err.value.print_exception is False, "Gradio prints a traceback for this expected error"
        lines = [r for r in caplog.records if message in r.getMessage()]
        assert len(lines) == 1 and lines[0].exc_info is None and "\n" not in lines[0].getMessage(), caplog.records


# ---- 6. scenarios on a COCO folder with two splits ------------------------------------------------
def _scenario(tmp_path: Path, coco: Path, splits: dict) -> Path:
    import json

    path = tmp_path / "s.yaml"
    path.write_text(json.dumps({"name": "coco_splits", "seed": 0, "data": {"source": str(coco), "splits": splits},
                                "rag": {"store": "faiss"}, "attack": {"name": "mrm"}, "mrm": {"shadow": 5}}))
    return path


def test_a_scenario_takes_coco_split_names_and_all_means_every_split(tmp_path):
    from test_mrm import make_coco  # the suite's COCO 2017-format folder of synthetic scenes

    from sandbox.data import load_items, split_items
    from sandbox.membership import load_membership_data
    from sandbox.scenario import ScenarioError, load_scenario

    coco = tmp_path / "coco"
    make_coco(coco, 6, "train2017", seed=1)
    make_coco(coco, 6, "val2017", seed=2)
    named = load_scenario(_scenario(tmp_path, coco, {"knowledge_base": {"from": "train2017"}, "reference": {"from": "val2017"},
                                                     "candidates": {"from": "val2017", "count": 0}, "test": {"from": "val2017"}}))
    parts = split_items(named.data, load_items(named.data, named.seed, tmp_path), named.seed)
    assert {it.id.split("-")[1] for it in parts["knowledge_base"]} == {"train2017"}
    assert {it.id.split("-")[1] for it in parts["reference"] + parts["test"]} == {"val2017"}

    # all: both splits (12 images); a small folder gives the 5 shadow images it asks for
    every = load_scenario(_scenario(tmp_path, coco, {"knowledge_base": {"fraction": 0.3}, "reference": {"count": 5},
                                                     "candidates": {"count": 0}, "test": {}}))
    parts = split_items(every.data, load_items(every.data, every.seed, tmp_path), every.seed)
    ids = [it.id for part in parts.values() for it in part]
    assert len(ids) == 12 and {i.split("-")[1] for i in ids} == {"train2017", "val2017"}
    assert len(load_membership_data(every).shadow) == 5

    # a split the folder does not have, and all mixed with named splits: one line naming the key
    bad = load_scenario(_scenario(tmp_path, coco, {p: {"from": "test2017"} for p in ("knowledge_base", "reference",
                                                                                    "candidates", "test")}))
    with pytest.raises(ScenarioError, match=r"^data\.splits: from: 'test2017': .*splits present: train2017, val2017"):
        load_items(bad.data, bad.seed, tmp_path)
    mixed = load_scenario(_scenario(tmp_path, coco, {"knowledge_base": {"from": "all"}, "test": {"from": "val2017"}}))
    with pytest.raises(ScenarioError, match=r"^data\.splits: from: all reads every split"):
        load_items(mixed.data, mixed.seed, tmp_path)


def test_a_port_whose_old_connections_linger_can_be_listened_on_again_but_not_a_listening_one():
    """After a killed app, its accepted connections sit in TIME_WAIT on the port: a restart there must work
    (the check binds as the server does, SO_REUSEADDR); a port another server listens on is still refused."""
    import socket

    from heterag.core.errors import HeteragError
    from heterag.ui.server import _check_address

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    with pytest.raises(HeteragError, match="in use"):
        _check_address("127.0.0.1", port)
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = listener.accept()
    conn.close()  # the server side closes first: its end of the connection waits in TIME_WAIT
    client.recv(1)
    client.close()
    listener.close()
    _check_address("127.0.0.1", port)
