"""The membership audit in a real browser (Playwright + Debian's Chromium, as tests/test_ui_browser.py): from the
Sandbox tab's "Membership audit" panel, audit one image of the collection the chat uses. A screenshot per step,
listed in the pytest summary.

Needs ``pip install -e .[test]`` (playwright) and ``apt-get install -y chromium`` (no browser download).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_helpers import TIMEOUT_MS, Shots, attach_file, open_tab, start_app, stop_app

SCENES = 16


@pytest.fixture(scope="module")
def audit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A collection ``scenes`` of 16 synthetic scenes with their captions (a collection one chats with)."""
    from corpora.synthetic_scenes import iter_synthetic_documents
    from heterag import open_collection

    home = tmp_path_factory.mktemp("audit-home")
    pipe = open_collection("scenes", home=home, store="faiss")
    try:
        assert not pipe.ingest(list(iter_synthetic_documents(SCENES, seed=0)), progress=False).failures
    finally:
        pipe.close()
    return home


@pytest.fixture(scope="module")
def audit_url(audit_home: Path) -> Iterator[str]:
    proc, url = start_app(audit_home, ["--collection", "scenes"], audit_home.parent / "audit-app.log")
    try:
        yield url
    finally:
        stop_app(proc)


def _wait_text(page, selector: str, text: str, timeout: float = TIMEOUT_MS) -> None:
    page.wait_for_function(f"(document.querySelector({json.dumps(selector)})?.innerText || '').includes({json.dumps(text)})",
                           timeout=timeout)


def test_a_one_image_membership_audit_from_the_sandbox_tab(browser, audit_url, audit_home, tmp_path, record_property):
    from corpora.synthetic_scenes import render_scene
    from heterag import open_collection

    context = browser.new_context(viewport={"width": 1280, "height": 1400})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(audit_url)
        page.wait_for_selector("#hr-box textarea")
        shot = Shots(page, tmp_path, record_property)
        open_tab(page, "Sandbox")
        if page.get_by_text("Membership audit").count() == 0:
            pytest.skip("the Sandbox tab has no Membership audit panel (sandbox/app/tab.py)")
        page.get_by_text("Membership audit", exact=True).click()
        page.wait_for_selector("#hr-audit-run")
        shot("audit-panel")

        image = tmp_path / "scene-3.png"  # a stored scene: a member
        render_scene(3, seed=0).image.save(image)
        attach_file(page, "#hr-audit-upload", image)
        picker = page.locator("#hr-audit-collection input")
        picker.click()
        page.get_by_role("option", name="scenes", exact=True).click()
        shot("image-and-collection")

        page.locator("#hr-audit-run").click()  # a collection one chats with: refused without the confirmation
        _wait_text(page, "body", "was not made for experiments: tick")
        shot("refused-without-confirmation")
        page.locator("#hr-audit-live input[type=checkbox]").check()
        page.locator("#hr-audit-run").click()
        _wait_text(page, "#hr-audit-result", "Membership audit of collection", timeout=180_000)
        shot("audit-result")

        result = page.locator("#hr-audit-result")
        text = result.inner_text()
        signals = result.locator(".hr-audit-signal")
        assert signals.count() == 2 and "mrm:" in text and "mba:" in text  # calibration first, every method judged
        if result.locator(".hr-audit-statement").count():  # no method has signal: one sentence, no verdict
            assert "No method has signal on collection 'scenes'" in text and "no image gets a verdict" in text
            assert result.locator(".hr-audit-verdict").count() == 0 and "no signal on calibration: not a result" in text
        else:  # a verdict, with its p-value, the masks (thumbnails) and each trial's answer
            assert result.locator(".hr-audit-verdict").inner_text() in ("member", "non-member") and "p = " in text
            assert result.locator(".hr-audit-trial").count() >= 1
            assert page.locator("#hr-audit-masks img").count() >= 1
        assert "scene-3.png" in text and not errors
    finally:
        context.close()
    pipe = open_collection("scenes", home=audit_home, create=False)
    try:  # the shadow members went in and out again
        assert pipe.image_store.count() == SCENES
    finally:
        pipe.close()
