"""The app's logic without a browser: the terminal chat, settings, the chat service's answers and
bad input (unsupported and oversized uploads, empty questions, questions during an ingest, an
OpenAI server that is down), uploads staged privately and removed, catalog listing and deletion."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from heterag import Document, InvalidInputError, open_collection
from heterag.cli import main
from heterag.ui import render
from heterag.ui.catalog import delete_documents, list_documents, thumbnail_data_uri
from heterag.ui.config import DEMOS, AppConfig, ChatSettings, load_config_file, parse_args
from heterag.ui.service import ChatService, Done, Failed, Notice, Token
from heterag.ui.uploads import UploadLimits, stage_uploads

ROOT = Path(__file__).resolve().parents[1]


# ---- terminal chat --------------------------------------------------------------------------
def test_terminal_chat_answers_with_sources(tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "tides.md").write_text("# Tides\n\nTides are caused mainly by the gravitational pull of the Moon.\n")
    assert main(["ingest", str(notes), "--collection", "chat"]) == 0
    capsys.readouterr()
    proc = subprocess.run(
        [sys.executable, "-m", "heterag.ui.terminal", "--collection", "chat"],
        input="What causes tides?\n\n", capture_output=True, text=True, timeout=300, env=dict(os.environ), cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "gravitational pull of the Moon" in proc.stdout
    assert "Sources:" in proc.stdout and "[1] tides.md" in proc.stdout


def test_terminal_chat_reports_a_missing_collection(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "heterag.ui.terminal", "--collection", "nope"],
        input="", capture_output=True, text=True, timeout=300, env=dict(os.environ), cwd=ROOT,
    )
    assert proc.returncode == 2 and "no collection named 'nope'" in proc.stderr


def test_web_app_refuses_a_missing_collection_in_one_line():
    proc = subprocess.run([sys.executable, str(ROOT / "app.py"), "--collection", "nope", "--port", "1"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ), cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("app.py: error: no collection named 'nope'")


# ---- settings -------------------------------------------------------------------------------
def test_settings_from_yaml_and_command_line(tmp_path):
    cfg_file = tmp_path / "app.yaml"
    cfg_file.write_text("port: 9001\ncollection: notes\nchat:\n  top_k: 7\n  generator: openai\n  model: m1\n")
    cfg = parse_args(["--config", str(cfg_file), "-k", "3"])
    assert (cfg.host, cfg.port, cfg.share) == ("127.0.0.1", 9001, False)  # loopback and no share link by default
    assert (cfg.chat.collection, cfg.chat.top_k, cfg.chat.generator, cfg.chat.model) == ("notes", 3, "openai", "m1")
    assert parse_args([]).chat.collection == DEMOS
    cfg_file.write_text("colection: x\n")
    with pytest.raises(InvalidInputError, match="unknown setting 'colection'"):
        load_config_file(cfg_file)
    with pytest.raises(InvalidInputError, match="needs a model name"):
        parse_args(["--generator", "openai"])


# ---- the chat service ------------------------------------------------------------------------
NOTES = {
    "tides.md": "# Tides\n\nTides are caused mainly by the gravitational pull of the Moon.\n",
    "bread.md": "# Bread\n\nBread rises because yeast releases carbon dioxide.\n",
}


@pytest.fixture()
def service(encoder) -> ChatService:
    pipe = open_collection("notes")
    pipe.ingest([Document.create(t, id=n, title=n.split(".")[0].title()) for n, t in NOTES.items()])
    svc = ChatService(AppConfig(max_file_mb=1, max_request_mb=2))
    yield svc
    svc.close()
    pipe.close()


def _answer(events) -> tuple[str, list]:
    events = list(events)
    return "".join(e.text for e in events if isinstance(e, Token)), events


def test_answers_stream_word_by_word_and_end_with_sources(service):
    text, events = _answer(service.ask("What causes tides?", None, ChatSettings(collection="notes"), stream_interval=0))
    tokens = [e for e in events if isinstance(e, Token)]
    assert len(tokens) > 5 and "gravitational pull" in text
    assert all(len(t.text.split()) == 1 for t in tokens)  # one word each
    done = events[-1]
    assert isinstance(done, Done) and done.answer.text == text and done.collection == "notes"
    html = render.sources_html(done.answer)
    assert "[1]" in html and "Tides" in html and "view that matched" in html and "hr-cited" in html


def test_streaming_is_paced_without_delaying_the_first_word(service, monkeypatch):
    """Words that come faster than the stream interval are merged (fewer UI updates under load), but the
    first word goes out at once, and words of a slow generator each go out when their interval is up."""
    fast, events = _answer(service.ask("What causes tides?", None, ChatSettings(collection="notes"), stream_interval=1.0))
    tokens = [e.text for e in events if isinstance(e, Token)]
    assert len(tokens) == 2 and len(tokens[0].split()) == 1 and len(tokens[1].split()) > 3  # first word, the rest
    assert isinstance(events[-1], Done) and events[-1].answer.text == fast

    from heterag.generators.extractive import ExtractiveGenerator

    real = ExtractiveGenerator.generate

    def slow(self, question, hits, *, on_token=None, image=None):  # a generator that writes a word every 60 ms
        def paced(piece):
            for word in piece.split(" "):
                time.sleep(0.06)
                on_token(word + " ")
        return real(self, question, hits, on_token=paced if on_token else None, image=image)

    monkeypatch.setattr(ExtractiveGenerator, "generate", slow)
    arrivals = []
    t0 = time.monotonic()
    for event in service.ask("What causes tides?", None, ChatSettings(collection="notes"), stream_interval=0.15):
        if isinstance(event, Token):
            arrivals.append((time.monotonic() - t0, event.text))
    gaps = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert len(arrivals) > 3 and all(len(t.split()) <= 4 for _, t in arrivals), arrivals  # a few words each
    assert min(gaps[:-1]) >= 0.1, gaps  # never faster than the interval (the last is the flush at the end)


def test_empty_question_is_refused_in_one_line(service):
    with pytest.raises(InvalidInputError, match="^type a question or attach an image$"):
        list(service.ask("   ", None, ChatSettings(collection="notes")))


def test_unknown_collection_and_bad_image_are_one_line_failures(service, tmp_path):
    _, events = _answer(service.ask("hi", None, ChatSettings(collection="missing")))
    assert isinstance(events[-1], Failed) and "no collection named 'missing'" in events[-1].message
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    _, events = _answer(service.ask("hi", fake, ChatSettings(collection="notes")))
    assert isinstance(events[-1], Failed) and "\n" not in events[-1].message


def test_openai_server_down_is_one_line_and_the_chat_keeps_working(service, server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens here once closed
    down = ChatSettings(collection="notes", generator="openai", model="m", base_url=f"http://127.0.0.1:{dead}/v1")
    _, events = _answer(service.ask("What causes tides?", None, down))
    assert isinstance(events[-1], Failed)
    assert events[-1].message.startswith("openai generator:") and "\n" not in events[-1].message
    text, events = _answer(service.ask("What causes tides?", None, ChatSettings(collection="notes")))
    assert isinstance(events[-1], Done) and "gravitational pull" in text
    up = ChatSettings(collection="notes", generator="openai", model="m", base_url=f"http://127.0.0.1:{server.server_port}/v1")
    text, events = _answer(service.ask("What causes tides?", None, up))
    assert isinstance(events[-1], Done) and text.startswith("Water boils")


def test_question_during_an_ingest_is_answered_from_what_is_stored(service):
    release, started = threading.Event(), threading.Event()

    def slow_items():
        started.set()
        release.wait(60)
        yield Document.create("Comets have tails of gas and dust pointing away from the Sun.", id="comets.md")

    open_collection("empty-yet").close()
    workers = [threading.Thread(target=service._ingest, args=(name, slow_items(), "test ingest")) for name in ("notes", "empty-yet")]
    for w in workers:
        w.start()
    try:
        assert started.wait(30)
        while len(service.progress()) < 2:
            threading.Event().wait(0.05)
        text, events = _answer(service.ask("What causes tides?", None, ChatSettings(collection="notes")))
        assert isinstance(events[0], Notice) and "being updated" in events[0].text
        assert isinstance(events[-1], Done) and "gravitational pull" in text
        _, events = _answer(service.ask("What are comets?", None, ChatSettings(collection="empty-yet")))
        assert isinstance(events[-1], Failed) and "being ingested into" in events[-1].message
    finally:
        release.set()
        for w in workers:
            w.join(60)
    text, events = _answer(service.ask("What are comet tails made of?", None, ChatSettings(collection="empty-yet")))
    assert isinstance(events[-1], Done) and "gas and dust" in text


# ---- uploads --------------------------------------------------------------------------------
def _ingest(service, collection, files):
    updates = list(service.ingest_uploads(collection, files))
    assert updates[-1].finished
    return updates[-1]


def test_upload_ingests_documents_under_their_names_and_removes_the_staged_copies(service, tmp_path, monkeypatch):
    import tempfile

    staged_roots = []
    real = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: staged_roots.append(real(*a, **k)) or staged_roots[-1])
    up = tmp_path / "up"
    up.mkdir()
    (up / "comets.md").write_text("# Comets\n\nComet tails point away from the Sun.\n")
    from corpora.synthetic_scenes import render_scene

    render_scene(1).image.save(up / "scene one.png")
    last = _ingest(service, "notes", [("comets.md", up / "comets.md"), ("scene one.png", up / "scene one.png")])
    assert last.report.documents_written == 2 and not last.rejected, last
    docs = {d.id: d for d in list_documents(service.pipeline("notes"))}
    assert docs["comets.md"].title == "Comets" and docs["comets.md"].chunks == 1
    assert docs["scene one.png"].image is not None and thumbnail_data_uri(docs["scene one.png"].image).startswith("data:image/jpeg")
    assert staged_roots and not any(Path(r).exists() for r in staged_roots)  # the private copies are gone
    text, _ = _answer(service.ask("Where do comet tails point?", None, ChatSettings(collection="notes")))
    assert "away from the Sun" in text


def test_unsupported_and_oversized_uploads_are_refused_one_line_each(service, tmp_path):
    exe = tmp_path / "tool.exe"
    exe.write_bytes(b"MZ\x00\x00")
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:  # 60 MB (sparse)
        f.truncate(60 * 10**6)
    fake = tmp_path / "photo.png"
    fake.write_text("this is text, not a PNG")
    ok = tmp_path / "ok.md"
    ok.write_text("# Ok\n\nThis one is fine.\n")
    last = _ingest(service, "notes", [("tool.exe", exe), ("big.txt", big), ("photo.png", fake), ("ok.md", ok)])
    lines = list(last.rejected)
    assert len(lines) == 3, lines
    assert lines[0].startswith("tool.exe: unsupported file type .exe")
    assert lines[1] == "big.txt: 57.2 MiB is over the 1.0 MiB limit per file"
    assert lines[2].startswith("photo.png") and "\n" not in lines[2]
    assert last.report.documents_written == 1
    # past the per-request limit (2 MiB here): the rest of the request is refused
    parts = []
    for i in range(3):
        p = tmp_path / f"part{i}.txt"
        with open(p, "wb") as f:  # 0.9 MB each, under the per-file limit; binary, so the loader refuses it quickly
            f.truncate(900_000)
        parts.append((p.name, p))
    last = _ingest(service, "notes", parts)
    assert sorted(r.split(":")[0] for r in last.rejected) == ["part0.txt", "part1.txt", "part2.txt"]
    assert last.rejected[0] == "part2.txt: the upload would pass the 2.0 MiB limit per request; upload it separately"


def test_zip_of_a_captions_folder_is_unpacked_safely(service, tmp_path):
    from corpora.synthetic_scenes import write_caption_folder

    folder = write_caption_folder(tmp_path / "caps", 3)
    archive = tmp_path / "caps.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
        zf.writestr("../evil.txt", "escape attempt")
        zf.writestr("..\\evil2.txt", "escape attempt")
    last = _ingest(service, "notes", [("caps.zip", archive)])
    assert last.report.images_written == 3
    assert sum("skipped" in r for r in last.rejected) == 2
    assert not (tmp_path / "evil.txt").exists()


def test_stage_uploads_never_uses_the_user_file_name_as_a_path(tmp_path):
    src = tmp_path / "a.md"
    src.write_text("# A\n\ntext\n")
    with stage_uploads([("../../etc/passwd.md", src), ("x\x00y.md", src)], UploadLimits()) as staged:
        assert [p.parent for _, p in staged.sources] == [staged.root, staged.root]
        assert [p.name for _, p in staged.sources] == ["0001.md", "0002.md"]
        assert [label for label, _ in staged.sources] == ["passwd.md", "x_y.md"]
        assert oct(staged.root.stat().st_mode & 0o777) == "0o700"
        docs = list(staged.items())
        assert [d.id for d in docs] == ["passwd.md", "x_y.md"]
    assert not staged.root.exists()


# ---- catalog and rendering --------------------------------------------------------------------
def test_catalog_lists_and_deletes_documents(service):
    pipe = service.pipeline("notes")
    assert [(d.id, d.title, d.chunks) for d in list_documents(pipe)] == [("bread.md", "Bread", 1), ("tides.md", "Tides", 1)]
    assert delete_documents(pipe, ["tides.md", "nope"]) == 1
    assert [d.id for d in list_documents(pipe)] == ["bread.md"]
    text, _ = _answer(service.ask("What causes tides?", None, ChatSettings(collection="notes")))
    assert "gravitational" not in text


def test_rendered_sources_escape_markup(service):
    pipe = service.pipeline("notes")
    pipe.ingest([Document.create("Evil <script>alert(1)</script> <img src=x onerror=alert(2)> **bold**", id="evil<b>.md",
                                 title="<i>t</i>")])
    _, events = _answer(service.ask("evil script", None, ChatSettings(collection="notes", top_k=1)))
    html = render.sources_html(events[-1].answer)
    assert "<script>" not in html and "<img src=x" not in html and "<i>" not in html and "evil<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    table = render.documents_html(list_documents(pipe))
    assert "evil&lt;b&gt;.md" in table and "<i>t</i>" not in table


# ---- found by trying to break the app -------------------------------------------------------
def test_one_unreadable_upload_does_not_lose_the_others(service, tmp_path):
    good = tmp_path / "good.md"
    good.write_text("# Quokkas\n\nQuokkas live on Rottnest Island.\n")
    broken = tmp_path / "scans.npz"
    broken.write_bytes(b"PK\x03\x04garbage")  # looks like a zip to numpy, is not one
    last = _ingest(service, "notes", [("good.md", good), ("scans.npz", broken)])
    assert last.report is not None and last.report.documents_written == 1, last
    assert len(last.rejected) == 1 and last.rejected[0].startswith("scans.npz:") and "\n" not in last.rejected[0]
    assert "/tmp" not in last.rejected[0] and "heterag-upload" not in last.rejected[0]
    assert "Rottnest" in _answer(service.ask("Where do quokkas live?", None, ChatSettings(collection="notes")))[0]


def test_zip_of_one_folder_uses_the_captions_inside_it(service, tmp_path):
    from corpora.synthetic_scenes import write_caption_folder

    folder = write_caption_folder(tmp_path / "pets", 2)
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # as `zip -r pets.zip pets/` makes it: everything under pets/
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, ("pets/" + p.relative_to(folder).as_posix()))
    last = _ingest(service, "notes", [("pets.zip", archive)])
    assert last.report.images_written == 2 and last.report.chunks_written >= 2, last  # the captions were read


def test_an_interrupted_demo_build_is_finished_next_time(encoder):
    from corpora.demo import SCENES_DEMO_COLLECTION, SCENES_DEMO_SIZE, demo_complete, open_scenes_demo
    from corpora.synthetic_scenes import iter_synthetic_documents

    pipe = open_collection(SCENES_DEMO_COLLECTION)  # a first build stopped after 10 scenes
    pipe.ingest(iter_synthetic_documents(10, seed=0))
    pipe.close()
    assert not demo_complete(SCENES_DEMO_COLLECTION) and not ChatService().demos_ready()
    pipe = open_scenes_demo()
    try:
        assert len(list_documents(pipe)) == SCENES_DEMO_SIZE and demo_complete(SCENES_DEMO_COLLECTION)
    finally:
        pipe.close()


def test_new_collection_with_an_unknown_encoder_fails_at_once_and_leaves_nothing(service, monkeypatch, heterag_home):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as the app sets it: never wait for the hub
    t0 = time.monotonic()
    with pytest.raises(Exception, match="no-such-encoder") as err:
        service.create_collection("qa-enc", encoder="no-such-encoder")
    assert time.monotonic() - t0 < 30 and "\n" not in str(err.value).strip()
    assert not (heterag_home / "collections" / "qa-enc").exists() and "qa-enc" not in service.collections()
    with pytest.raises(InvalidInputError, match="chunk tokens must be from 8 to 8192"):
        service.create_collection("qa-chunk", chunk_tokens=-5)


def test_config_values_of_the_wrong_type_are_refused_in_one_line(tmp_path):
    cfg_file = tmp_path / "app.yaml"
    for text, key in (('share: "no"\n', "share"), ('port: "abc"\n', "port"), ("port: 7894.7\n", "port"),
                      ("temperature: hot\n", "temperature"), ("concurrency: 2.5\n", "concurrency")):
        cfg_file.write_text(text)
        with pytest.raises(InvalidInputError, match=f"{key} must be"):
            load_config_file(cfg_file)
    cfg_file.write_text("chat: 5\n")
    with pytest.raises(InvalidInputError, match="chat must be a mapping"):
        load_config_file(cfg_file)


def test_a_port_in_use_is_one_line_before_anything_loads():
    from heterag.core.errors import HeteragError
    from heterag.ui.server import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(HeteragError, match=f"cannot listen on 127.0.0.1:{port}: the port is in use"):
            serve(parse_args(["--port", str(port), "--collection", "notes"]))
        assert time.monotonic() - t0 < 5


def test_a_question_of_invisible_characters_is_empty(service):
    with pytest.raises(InvalidInputError, match="^type a question or attach an image$"):
        list(service.ask("\u200b\u200b\ufeff", None, ChatSettings(collection="notes")))


def test_archives_inside_archives_and_long_names_are_reported_not_lost(service, tmp_path):
    from heterag.ui.uploads import label_for

    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("a.md", "# A\n\nAlpha.\n")
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.write(inner, "inner.zip")
        zf.writestr("b.md", "# B\n\nBeta particles are electrons.\n")
    last = _ingest(service, "notes", [("outer.zip", outer)])
    assert last.report.documents_written == 1
    assert any(r.startswith("outer.zip: member 'inner.zip' skipped (archives inside an archive") for r in last.rejected)
    assert "not ingested" in last.status
    long = label_for("n" * 250 + ".md")
    assert len(long) <= 120 and long.endswith(".md")
