"""The Sandbox tab in a real browser (Playwright + Debian's Chromium, as tests/test_ui_browser.py): run an
uploaded scenario and see its report; watch a run against the chat's own collection flag the poisoned
sources in the chat, then cancel it and see the fingerprint restored; kill the app mid-injection and see
the next start clean up. A screenshot per step is listed in the pytest summary."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from browser_helpers import TIMEOUT_MS, Shots, ask, attach_file, open_tab, start_app, stop_app
from chat_server import ServerConfig
from test_sandbox_app import TINY as APP_TINY

#: The report test's scenario: test_sandbox_app's tiny run (2 poisons, a sweep point and a defense on 60
#: synthetic scenes) under its own name.
TINY = {**APP_TINY, "name": "tiny-tab"}


def long_scenario(server_url: str) -> dict:
    """The live-view scenario, which stops mid-injection: the first test query that retrieves a poison is sent to
    the OpenAI-compatible test server at ``server_url``, which holds it (see :func:`held`)."""
    return {"name": "long-tab", "seed": 1,
            "data": {"source": "synthetic:140", "task": "scene_background",
                     "splits": {"knowledge_base": {"count": 60}, "reference": {"count": 30}, "candidates": {"count": 10},
                                "test": {"count": 40}}},
            "rag": {"top_k": 5, "generator": {"name": "openai", "options": {"model": "test-model", "base_url": server_url,
                                                                            "api_key": "sk-test-123", "timeout": 600}}},
            "attack": {"name": "m3att", "poison_count": 2, "steps": 5, "warmup_steps": 2},
            "metrics": ["asr@k", "misinformation_rate"], "bootstrap": 50}


@pytest.fixture()
def held(chat_server) -> Iterator[ServerConfig]:
    """The OpenAI-compatible test server (conftest) holding every request until the test ends; its config
    (``arrived`` is set once a request came in: a run's queries reach the generator only where they retrieved
    a poison, so the first request means the poisons are in, and the run waits there)."""
    chat_server.config = ServerConfig(gate=threading.Event(), url=f"http://127.0.0.1:{chat_server.server_address[1]}/v1")
    yield chat_server.config
    chat_server.config.gate.set()


def make_home(home: Path) -> str:
    """A live collection ``live`` (20 synthetic scenes, a note) under ``home``; returns its fingerprint."""
    from corpora.synthetic_scenes import iter_synthetic_documents
    from heterag import Document, content_fingerprint, open_collection

    pipe = open_collection("live", home=home)
    try:
        pipe.ingest([Document.create("Tides are caused mainly by the Moon.", id="tides.md"),
                     *iter_synthetic_documents(20, seed=0)])
        return content_fingerprint(pipe).digest
    finally:
        pipe.close()


def fingerprint(home: Path) -> str:
    from heterag import content_fingerprint, open_collection

    pipe = open_collection("live", home=home, create=False)
    try:
        return content_fingerprint(pipe).digest
    finally:
        pipe.close()


@pytest.fixture(scope="module")
def sb_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    home = tmp_path_factory.mktemp("sb-home")
    return home, make_home(home)


@pytest.fixture(scope="module")
def sb_url(sb_home) -> Iterator[str]:
    log = sb_home[0].parent / "sb-app.log"
    proc, url = start_app(sb_home[0], ["--collection", "live", "--top-k", "20"], log)
    try:
        yield url
    finally:
        stop_app(proc)


def open_page(browser, url: str):
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(url)
    pg.wait_for_selector("#hr-box textarea")
    return context, pg


@pytest.fixture()
def page(browser, sb_url: str):
    context, pg = open_page(browser, sb_url)
    yield pg
    context.close()


def upload_scenario(page, path: Path) -> None:
    open_tab(page, "Sandbox")
    attach_file(page, "#hr-sb-upload", path)


def choose_target(page, name: str) -> None:
    picker = page.locator("#hr-sb-target input")
    picker.click()
    page.get_by_role("option", name=name, exact=True).click()
    page.wait_for_selector("#hr-sb-confirm input[type=checkbox]")


def wait_text(page, selector: str, text: str, timeout: float = TIMEOUT_MS) -> None:
    page.wait_for_function(f"(document.querySelector({json.dumps(selector)})?.innerText || '').includes({json.dumps(text)})",
                           timeout=timeout)


def start_live_run(page, tmp_path: Path, server_url: str) -> None:
    """Upload the long scenario, pick the live collection, be refused without the confirmation, confirm and run."""
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(long_scenario(server_url)))
    upload_scenario(page, path)
    choose_target(page, "live")
    page.locator("#hr-sb-run").click()
    wait_text(page, "#hr-sb-message", "confirm injecting into it")
    page.locator("#hr-sb-confirm input[type=checkbox]").check()
    page.locator("#hr-sb-run").click()
    wait_text(page, "#hr-sb-message", "started run")
    wait_text(page, "#hr-sb-status", "stage attacked", timeout=240_000)


def wait_poisons_in(held: ServerConfig, timeout: float = 60) -> None:
    """Until the run's first poisoned query reaches the held test server: the poisons are in."""
    if not held.arrived.wait(timeout):
        pytest.fail("the run's poisons never went in")


def test_run_an_uploaded_scenario_from_the_tab_and_see_its_report(page, tmp_path, record_property):
    shot = Shots(page, tmp_path, record_property)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    upload_scenario(page, path)
    wait_text(page, "#hr-sb-message", "The uploaded file tiny.yaml is what runs")  # not the ready-made pick
    assert "not used: the uploaded file runs" in page.locator("#hr-sb-scenario").inner_text()
    shot("sandbox-tab")
    page.locator("#hr-sb-run").click()
    wait_text(page, "#hr-sb-message", "started run")
    run_id = re.search(r"started run (\S+)", page.locator("#hr-sb-message").inner_text()).group(1)
    page.locator("#hr-sb-run").click()  # pressed twice: refused, naming the first run
    wait_text(page, "#hr-sb-message", f"in use by sandbox run {run_id}")
    shot("run-pressed-twice")
    wait_text(page, "#hr-sb-status", "stage", timeout=120_000)
    shot("progress")
    wait_text(page, "#hr-sb-status", "finished", timeout=240_000)
    wait_text(page, "#hr-sb-metrics", "asr@5[defense=hubness]")
    page.wait_for_function("document.querySelectorAll('#hr-sb-figures img').length >= 2")
    shot("report")
    status = page.locator("#hr-sb-status").inner_text()
    assert "identical" in status and "stages: data" in status, status
    rows = page.locator("#hr-sb-metrics tr[data-metric]").count()
    assert rows >= 8
    files = "".join(page.locator("#hr-sb-files").inner_text().split())
    assert "report.json" in files and "report.md" in files and "asr_by_defense.png" in files, files
    remove = page.locator("#hr-sb-files .label-clear-button")  # a read-only list: no "remove this file"
    assert all(remove.nth(i).is_hidden() for i in range(remove.count()))


def test_live_view_flags_poisoned_sources_and_cancel_restores_the_fingerprint(page, sb_home, held, tmp_path,
                                                                             record_property):
    from corpora.synthetic_scenes import render_scene

    home, before = sb_home
    shot = Shots(page, tmp_path, record_property)
    start_live_run(page, tmp_path, held.url)
    wait_poisons_in(held)
    shot("run-injecting")
    open_tab(page, "Chat")
    wait_text(page, "#hr-chat-banner", "is injecting")
    shot("chat-banner-during-the-run")
    image = tmp_path / "scene.png"
    render_scene(7, seed=11).image.save(image)
    ask(page, "", image=image)  # top-k 20 of 21 items and 2 poisons: the poisons are among the sources
    flagged = page.locator("#hr-chat .hr-source.hr-injected")
    assert flagged.count() >= 1
    assert "injected by sandbox run" in flagged.first.inner_text()
    assert page.locator("#hr-chat .hr-source:not(.hr-injected) .hr-flag").count() == 0
    shot("chat-flags-poisoned-sources")
    open_tab(page, "Sandbox")
    page.locator("#hr-sb-cancel").click()
    wait_text(page, "#hr-sb-status", "cancelled", timeout=120_000)
    status = page.locator("#hr-sb-status").inner_text()
    assert f"fingerprint before {before[:16]}, after {before[:16]}: identical" in status, status
    assert "Index restored" in status
    shot("cancelled-fingerprint-restored")
    assert fingerprint(home) == before
    open_tab(page, "Chat")
    wait_text(page, "#hr-chat-banner", "has ended (cancelled)")
    assert "identical" in page.locator("#hr-chat-banner").inner_text()
    shot("chat-banner-after-the-run")


@pytest.mark.slow  # ~1 min; the same clean-up is tested without a browser in tests/test_sandbox_app.py (killed app)
def test_killing_the_app_mid_injection_is_cleaned_at_the_next_start(browser, held, tmp_path, record_property,
                                                                    monkeypatch):
    from sandbox.injection import list_journals

    home = tmp_path / "home"
    before = make_home(home)
    monkeypatch.setenv("HETERAG_HOME", str(home))
    log = tmp_path / "app.log"
    proc, url = start_app(home, ["--collection", "live"], log, new_session=True)
    try:
        context, page = open_page(browser, url)
        start_live_run(page, tmp_path, held.url)
        wait_poisons_in(held)
        assert any(j.doc_ids for j in list_journals("live"))
        Shots(page, tmp_path, record_property)("before-the-kill")
        context.close()
        os.killpg(proc.pid, signal.SIGKILL)  # the app and its worker, mid-injection
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert fingerprint(home) != before  # the poisons were left behind
    proc, url = start_app(home, ["--collection", "live"], log)
    try:
        context, page = open_page(browser, url)
        wait_text(page, "#hr-status", "cleaned up after an interrupted sandbox run")
        assert "identical (index restored)" in page.locator("#hr-status").inner_text()
        open_tab(page, "Sandbox")
        wait_text(page, "#hr-sb-status", "interrupted")
        Shots(page, tmp_path, record_property)("next-start-cleaned-up")
        context.close()
    finally:
        stop_app(proc)
    assert fingerprint(home) == before and not list_journals("live")
