"""The app's Sandbox tab without a browser: scenario input checks, runs in a worker process (progress,
refusal of a second run, cancel, a killed worker, a killed app), the chat overlay and the tab plug point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from chat_server import ServerConfig

from heterag import Document, InvalidInputError, content_fingerprint, open_collection
from sandbox.app.live import GuardFilter, LiveOverlay
from sandbox.app.runs import RunManager, alive
from sandbox.app.scenarios import SCENARIOS_DIR, load_choice, with_overrides
from sandbox.injection import SandboxBusyError, list_journals
from sandbox.scenario import ScenarioError, parse_scenario

ROOT = Path(__file__).resolve().parents[1]

#: A small run (about 15 s on 2 cores, most of it loading models): 2 poisons, a defense.
TINY = {"name": "tiny-app", "seed": 3,
        "data": {"source": "synthetic:120", "task": "scene_background",
                 "splits": {"knowledge_base": {"count": 60}, "reference": {"count": 30}, "candidates": {"count": 10},
                            "test": {"count": 20}}},
        "rag": {"store": "faiss", "top_k": 5},
        "attack": {"name": "m3att", "poison_count": 2, "steps": 5, "warmup_steps": 2, "sweep_counts": [1]},
        "defenses": [{"name": "hubness"}], "defense_probes": 20, "bootstrap": 50}


def long_run(collection: str, server_url: str) -> dict:
    """A run against live ``collection`` that stops mid-injection: the first test query that retrieves a poison
    is sent to the OpenAI-compatible test server at ``server_url``, which holds it (see :func:`held`)."""
    scn = json.loads(json.dumps(TINY))
    scn.update(name="long-app", defenses=[], metrics=["asr@k", "misinformation_rate"])
    scn["attack"].pop("sweep_counts")
    scn["data"]["source"] = "synthetic:130"
    scn["data"]["splits"]["test"]["count"] = 30
    scn["rag"] = {"collection": collection, "allow_live": True, "top_k": 5,
                  "generator": {"name": "openai", "options": {"model": "test-model", "base_url": server_url,
                                                              "api_key": "sk-test-123", "timeout": 600}}}
    return scn


@pytest.fixture()
def held(server) -> Iterator[ServerConfig]:
    """The OpenAI-compatible test server holding every request until the test ends; its config (``arrived`` is
    set once a request came in). A run's queries reach the generator only where they retrieved a poison, so the
    first request means the poisons are in, and the run waits there however fast the machine is."""
    server.config.gate = threading.Event()
    server.config.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield server.config
    server.config.gate.set()


@pytest.fixture()
def live():
    """A live (non-experiment) collection of 20 synthetic scenes and a note; yields its fingerprint before."""
    from corpora.synthetic_scenes import iter_synthetic_documents

    pipe = open_collection("live")
    pipe.ingest([Document.create("Tides are caused by the Moon.", id="tides.md"), *iter_synthetic_documents(20, seed=0)])
    before = content_fingerprint(pipe).digest
    pipe.close()
    return before


def fingerprint(name: str) -> str:
    pipe = open_collection(name, create=False)
    try:
        return content_fingerprint(pipe).digest
    finally:
        pipe.close()


def wait_injecting(collection: str, held: ServerConfig, still_running: Callable[[], Any], timeout: float = 240) -> None:
    """Until the run's first poisoned query reaches the held server: its poisons are in. ``still_running()``
    says (an assertion message) why the run is not, if it ended first."""
    deadline = time.monotonic() + timeout
    while not held.arrived.wait(0.1):
        still_running()
        if time.monotonic() > deadline:
            pytest.fail(f"nothing was injected into {collection!r} within {timeout:g} s")
    assert any(j.doc_ids for j in list_journals(collection))


def run_active(manager: RunManager) -> Callable[[], None]:
    def check() -> None:
        st = manager.status()
        assert st is not None and st.active, f"the run ended before it injected: {st and st.data}"

    return check


# --------------------------------------------------------------------------- bad input


def test_uploaded_yaml_that_is_malformed_names_line_and_column(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndata: {source: synthetic:50\nseed: 1\n")
    with pytest.raises(ScenarioError) as exc:
        load_choice(None, p)
    msg = str(exc.value)
    assert "malformed YAML at line" in msg and "column" in msg and "\n" not in msg


def test_uploaded_yaml_with_an_unknown_attack_is_refused_naming_the_key(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({**TINY, "attack": {"name": "m4att"}}))
    with pytest.raises(ScenarioError, match=r"attack\.name: unknown attack 'm4att'"):
        load_choice(None, p)


@pytest.mark.parametrize("source", ["/etc/passwd.npz", "../outside/data.npz"])
def test_uploaded_yaml_pointing_outside_its_folder_and_the_scenarios_is_refused(tmp_path, source):
    upload = tmp_path / "upload"
    upload.mkdir()
    p = upload / "s.yaml"
    p.write_text(yaml.safe_dump({**TINY, "data": {**TINY["data"], "source": source}}))
    with pytest.raises(ScenarioError) as exc:
        load_choice(None, p)
    assert "data.source" in str(exc.value) and "outside the scenarios folder and the upload" in str(exc.value)
    inside = upload / "inside.npz"  # a file beside the upload is fine (it is checked when the run reads it)
    p.write_text(yaml.safe_dump({**TINY, "data": {**TINY["data"], "source": inside.name}}))
    assert load_choice(None, p).data.source == "inside.npz"
    p.write_text(yaml.safe_dump({**TINY, "attack": {**TINY["attack"], "access": "transfer", "surrogate": "default:/tmp/enc"}}))
    with pytest.raises(ScenarioError, match="attack.surrogate"):
        load_choice(None, p)


def test_ready_made_scenarios_and_unknown_names():
    scn = load_choice("m3att_synthetic", None)
    assert scn.name == "m3att_synthetic" and Path(scn.base_dir) == SCENARIOS_DIR
    with pytest.raises(ScenarioError, match="unknown scenario 'nope'"):
        load_choice("nope", None)
    with pytest.raises(ScenarioError, match="pick a ready-made scenario or upload"):
        load_choice(None, None)


def test_budget_larger_than_the_pool_and_other_overrides():
    scn = parse_scenario(TINY)
    with pytest.raises(InvalidInputError, match=r"poison budget 11 is larger than the candidate pool \(10 images\)"):
        with_overrides(scn, budget=11)
    with pytest.raises(InvalidInputError, match="whole number"):
        with_overrides(scn, budget=2.5)
    changed = with_overrides(scn, seed=7, budget=3)
    assert changed.seed == 7 and changed.attack.poison_count == 3 and changed.attack.steps == 5
    mrm = load_choice("mrm_synthetic", None)
    assert with_overrides(mrm, budget=12).mrm.members == 12


def test_live_collection_needs_the_confirmation(live):
    scn = parse_scenario(TINY)
    with pytest.raises(InvalidInputError, match="live collection .*confirm"):
        with_overrides(scn, collection="live")
    assert with_overrides(scn, collection="live", allow_live=True).rag.allow_live


# --------------------------------------------------------------------------- runs in a worker


def test_run_in_a_worker_reports_stages_and_writes_the_report(heterag_home):
    m = RunManager()
    run_id = m.start(parse_scenario(TINY))
    seen = set()
    deadline = time.monotonic() + 240
    while (st := m.status(run_id)).active:
        seen.add(st.data.get("stage"))
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert st.state == "done", st.data
    assert st.data["identical"] and st.data["fingerprint_before"] == st.data["fingerprint_after"]
    names = [n for n, _ in st.data["stages"]]
    assert names[:4] == ["data", "index", "clean", "attack"] and "defenses" in names and names[-1] == "report"
    assert {"clean", "attacked"} <= seen
    files = {p.name for p in st.report_dir.iterdir()}
    assert {"report.json", "report.md", "asr_vs_rate.png", "defenses.png"} <= files
    from sandbox.app.report_view import view

    table, figures, downloads = view(st.report_dir, run_id)
    assert 'data-metric="asr@5"' in table and 'data-metric="asr@5[defense=hubness]"' in table
    captions = [c for _, c in figures]
    assert captions[0].startswith("ASR per defense") and any("poison rate" in c for c in captions)
    assert any(d.endswith("report.json") for d in downloads) and any(d.endswith("report.md") for d in downloads)


def test_second_run_is_refused_naming_the_first_and_cancel_restores_the_fingerprint(live, held):
    m = RunManager()
    scn = parse_scenario(long_run("live", held.url))
    first = m.start(scn, allow_live=True)
    with pytest.raises(SandboxBusyError) as exc:  # pressing run twice
        m.start(scn, allow_live=True)
    assert first in str(exc.value) and "wait for it to finish" in str(exc.value)
    wait_injecting("live", held, run_active(m))
    with pytest.raises(SandboxBusyError, match=first):  # also while it holds the collection
        m.start(scn, allow_live=True)
    assert fingerprint("live") != live  # the poisons are in
    assert "cancelling run" in m.cancel()
    st = m.wait(first, timeout=60)
    assert st.state == "cancelled"
    assert st.data["fingerprint_before"] == st.data["fingerprint_after"] == live and st.data["identical"]
    assert fingerprint("live") == live and not list_journals("live")
    print(f"cancel: fingerprint before {live}, after {st.data['fingerprint_after']}")


def test_killed_worker_is_cleaned_up_and_the_fingerprint_restored(live, held):
    m = RunManager()
    run_id = m.start(parse_scenario(long_run("live", held.url)), allow_live=True)
    wait_injecting("live", held, run_active(m))
    pid = m.status(run_id).data["pid"]
    os.kill(pid, signal.SIGKILL)
    m._procs[run_id].wait(30)
    assert fingerprint("live") != live  # killed outright: its poisons are still there
    st = m.status(run_id)  # polling finds the dead worker and cleans up after it
    assert st.state == "died" and st.data["recovered"], st.data
    assert "removed 2 injected document(s)" in st.data["recovered"][0] and "identical" in st.data["recovered"][0]
    assert fingerprint("live") == live and not list_journals("live")


KILLED_APP = textwrap.dedent("""
    import json, sys, time
    from sandbox.app.runs import RunManager
    from sandbox.scenario import parse_scenario
    m = RunManager()
    print(m.start(parse_scenario(json.loads(sys.argv[1])), allow_live=True), flush=True)
    time.sleep(600)
""")


@pytest.mark.parametrize("kill_worker_too", [False, True])
def test_killed_app_leaves_no_injected_items(live, held, kill_worker_too):
    """The app dies mid-injection: its worker notices and cleans up; if the worker dies too, the next
    start of the app (a new manager's recover) cleans up and says so."""
    app = subprocess.Popen([sys.executable, "-c", KILLED_APP, json.dumps(long_run("live", held.url))],
                           stdout=subprocess.PIPE, text=True, start_new_session=True, cwd=ROOT)

    def app_alive() -> None:
        assert app.poll() is None, f"the app ended (exit status {app.returncode})"

    try:
        assert app.stdout.readline().strip()  # the run's id: it started
        wait_injecting("live", held, app_alive)
        assert fingerprint("live") != live
        os.killpg(app.pid, signal.SIGKILL) if kill_worker_too else app.kill()
        app.wait(30)
    finally:
        if app.poll() is None:
            os.killpg(app.pid, signal.SIGKILL)
    m = RunManager()  # the app's next start
    if kill_worker_too:
        worker = m.status().data["pid"]
        deadline = time.monotonic() + 30
        while alive(worker):  # SIGKILL takes a moment to end a busy process (and release its lock)
            assert time.monotonic() < deadline, "the worker survived SIGKILL"
            time.sleep(0.05)
        # polling sees the dead worker and cleans up at once (its notes kept in the status), else recover() does
        notes = m.status().data.get("recovered") or m.recover()
        assert len(notes) == 1 and "removed 2 injected document(s)" in notes[0] and "identical (index restored)" in notes[0]
        assert m.status().state in ("interrupted", "died")  # "died": its dead worker was seen while polling
    else:
        st = m.wait(timeout=60)  # the orphaned worker cancels itself
        assert st.state == "cancelled" and st.data["identical"], st.data
        assert m.recover() == []
    assert fingerprint("live") == live and not list_journals("live")


# --------------------------------------------------------------------------- the chat overlay and the plug point


HOLD = textwrap.dedent("""
    import time
    from heterag import Document, open_collection
    from sandbox.injection import ReversibleInjection
    pipe = open_collection("live")
    with ReversibleInjection(pipe, "live", run_id="held-run", allow_live=True) as inj:
        inj.inject([Document.create("The Moon is made of green cheese; tides come from cheese.", id="poison-1")])
        print("in", flush=True)
        time.sleep(60)
""")


def test_chat_overlay_banner_flags_and_defense(live, tmp_path):
    from heterag.ui.config import AppConfig
    from heterag.ui.plugins import AppContext
    from heterag.ui.render import sources_html
    from heterag.ui.service import ChatService, Done

    service = ChatService(AppConfig())
    ctx = AppContext(service)
    overlay = LiveOverlay(RunManager(), service.pipeline)
    ctx.add_chat_overlay(overlay)
    assert ctx.banner(["live"]) == []
    holder = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "in"
        assert "held-run is injecting 1 poisoned item" in ctx.banner(["live"])[0]
        from heterag.ui.config import ChatSettings

        done = [e for e in service.ask("What causes tides?", None, ChatSettings(collection="live", top_k=5))
                if isinstance(e, Done)][0]
        marks = ctx.marks("live", done.answer.hits)
        assert marks == {"poison-1": "injected by sandbox run held-run"}
        html = sources_html(done.answer, marks)
        assert html.count("hr-injected") == 1 and "injected by sandbox run held-run" in html
        assert "hubness" in ctx.defenses()
        assert "defense hubness is on" in ctx.set_chat_defense("live", "hubness")
        assert isinstance(service.pipeline("live").hit_filters[-1], GuardFilter)
        assert service.pipeline("live").retrieve("What causes tides?", k=3)  # the chat still answers
        ctx.set_chat_defense("live", "off")
        assert service.pipeline("live").hit_filters == []
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(60)
        service.close()
    assert ctx.banner(["live"]) == [] and fingerprint("live") == live


def test_a_broken_tab_plugin_costs_only_its_tab(monkeypatch, caplog):
    from heterag.ui import plugins
    from heterag.ui.config import AppConfig
    from heterag.ui.service import ChatService
    from heterag.ui.webapp import build_app

    class Entry:
        def __init__(self, name, value, target):
            self.name, self.value, self.target = name, value, target

        def load(self):
            if isinstance(self.target, Exception):
                raise self.target
            return self.target

    def explode(ctx):
        raise RuntimeError("boom\nsecond line")

    import importlib.metadata

    entries = [Entry("gone", "gone.module:tab", ModuleNotFoundError("No module named 'gone'")),
               Entry("explode", "x:explode", explode), Entry("fine", "x:fine", lambda ctx: None)]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: entries if group == plugins.TAB_GROUP else [])
    tabs = plugins.load_tabs()
    assert [t.name for t in tabs] == ["explode", "fine"]
    assert any("app tab 'gone'" in r.getMessage() and "\n" not in r.getMessage() for r in caplog.records)
    app = build_app(ChatService(AppConfig()), tabs)
    labels = [c["props"].get("label") for c in app.get_config_file()["components"] if c.get("type") in ("tab", "tabitem")]
    assert "Explode" in labels and "Fine" in labels
    assert any("app tab 'explode' failed to build: boom second line" in r.getMessage() for r in caplog.records)


def test_sandbox_tab_is_registered_and_builds():
    from importlib.metadata import entry_points

    from heterag.ui.config import AppConfig
    from heterag.ui.service import ChatService
    from heterag.ui.webapp import build_app

    assert [e.value for e in entry_points(group="heterag.app_tabs") if e.name == "sandbox"] == ["sandbox.app:build_tab"]
    app = build_app(ChatService(AppConfig()))
    ids = {c["props"].get("elem_id") for c in app.get_config_file()["components"]}
    assert {"hr-sb-run", "hr-sb-cancel", "hr-sb-status", "hr-sb-metrics", "hr-chat-banner", "hr-chat-defense"} <= ids
