"""What the browser tests share: ``python app.py`` on a free loopback port, Debian's Chromium driven by
Playwright (PyPI), numbered screenshots listed in the pytest summary (see conftest), asking the chat.

Needs ``pip install -e .[test]`` (playwright) and ``apt-get install -y chromium`` (no browser download).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("HETERAG_CHROMIUM", "/usr/bin/chromium")
INSTALL = "apt-get install -y chromium (Debian) and pip install -e '.[test]' (playwright from PyPI)"
TIMEOUT_MS = 60_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(home: Path, args: Sequence[str], log: Path, *, new_session: bool = False,
              timeout: float = 180) -> tuple[subprocess.Popen, str]:
    """``python app.py ARGS --port P`` with ``HETERAG_HOME=home``, output to ``log``; returns the process and
    its URL once it answers (a failed start fails the test with the log's tail). ``new_session``: in a
    process group of its own (to kill it together with its children)."""
    port = free_port()
    env = {**os.environ, "HETERAG_HOME": str(home), "HETERAG_NO_PROGRESS": "1"}
    with open(log, "a") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), *args, "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=new_session)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_app(proc)
            pytest.fail(f"app.py did not answer on {url} within {timeout:g} s: {log.read_text()[-2000:]}")
        time.sleep(0.25)


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def launch_browser() -> Iterator:
    """Debian's Chromium under Playwright, for a module's tests (the ``browser`` fixture of conftest)."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(f"Chromium not found at {CHROMIUM}; install it: {INSTALL}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"playwright is not installed; install it: {INSTALL}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


class Shots:
    """Saves a numbered full-page screenshot per step under the test's tmp directory; the paths are
    listed at the end of the pytest run (``screenshots`` section, see conftest)."""

    def __init__(self, page, folder: Path, record_property):
        self.page, self.folder, self.n, self.record = page, folder, 0, record_property

    def __call__(self, name: str) -> Path:
        self.n += 1
        path = self.folder / f"{self.n:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.record("screenshot", str(path))
        return path


def open_tab(page, name: str, tries: int = 3) -> None:
    """Click the app's tab ``name`` and wait until it is the selected one. A click that lands before the page's
    scripts have bound the tab does nothing (seen under heavy load: the tab's components never mounted), so the
    click is repeated, up to ``tries`` times in all, each waiting a third of :data:`TIMEOUT_MS`; a repeat is
    reported on stderr."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    tab = page.get_by_role("tab", name=name, exact=True)
    for attempt in range(1, tries + 1):
        tab.click()
        try:
            page.wait_for_function("(name) => [...document.querySelectorAll('[role=tab]')].some("
                                   "t => t.textContent.trim() === name && t.getAttribute('aria-selected') === 'true')",
                                   arg=name, timeout=TIMEOUT_MS // tries)
            return
        except PlaywrightTimeout:
            if attempt == tries:
                raise
            print(f"browser_helpers.open_tab: tab {name!r} not selected after click {attempt}; clicking again", file=sys.stderr)


def attach_file(page, component: str, path: Path, shown: str | None = None, tries: int = 3) -> None:
    """Choose ``path`` in the file input of the Gradio upload ``component`` (a CSS selector) and wait until the
    upload is done: the component lists the file (Gradio's file table labels each file's cell with its name,
    and shows the name as stem and extension in two elements, so a text match of the whole name finds only
    the progress display, which is there while the upload runs), or, with ``shown``, until the component's text
    holds ``shown`` (whitespace ignored). A choice made while the tab's components are still being mounted can
    land on an input element that is then replaced, and the file is never seen (under heavy load only); so it
    is made again, up to ``tries`` times in all, each waiting a third of :data:`TIMEOUT_MS`, and a repeat is
    reported on stderr. When the input is gone by then, the component holds the file already (the upload is
    only slow): that is waited for, not chosen again. A failure says what the component shows."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    done = ("([sel, name, text]) => { const root = document.querySelector(sel); if (!root) return false;"
            " return text ? root.innerText.replace(/\\s+/g, '').includes(text)"
            " : [...root.querySelectorAll('[aria-label]')].some(e => e.getAttribute('aria-label') === name); }")
    arg = [component, path.name, "".join(shown.split()) if shown else ""]

    def state() -> str:  # what the component shows, for the failure message
        text, tab = page.evaluate("(sel) => [document.querySelector(sel)?.innerText ?? '<no such element>', "
                                  "document.querySelector('[role=tab][aria-selected=true]')?.textContent?.trim() ?? '<none>']",
                                  component)
        return (f"{component} shows {' '.join(text.split())[:300]!r} with {inputs.count()} file input(s); "
                f"selected tab {tab!r}, page {page.url}")

    for attempt in range(1, tries + 1):
        inputs = page.locator(f"{component} input[type=file]")
        if attempt > 1 and inputs.count() == 0:
            # the component has replaced its file input by the chosen file: the choice took, and the upload is
            # only slow (under load), so wait for it instead of choosing again
            try:
                page.wait_for_function(done, arg=arg, timeout=TIMEOUT_MS)
            except PlaywrightTimeout as exc:
                raise AssertionError(f"{path.name} never listed: {state()}") from exc
            return
        inputs.set_input_files(str(path), timeout=TIMEOUT_MS // tries)
        try:
            page.wait_for_function(done, arg=arg, timeout=TIMEOUT_MS // tries)
            return
        except PlaywrightTimeout as exc:
            if attempt == tries:
                raise AssertionError(f"{path.name} never listed: {state()}") from exc
            print(f"browser_helpers.attach_file: {state()}", file=sys.stderr)
            print(f"browser_helpers.attach_file: {path.name} not listed in {component} after try {attempt}; choosing it again",
                  file=sys.stderr)


def ask(page, question: str, image: Path | None = None) -> None:
    """Ask the chat ``question`` (and/or attach ``image``) and wait for the answer's sources."""
    box = page.locator("#hr-box")
    if image is not None:
        box.locator("input[type=file]").set_input_files(str(image))
        page.wait_for_selector("#hr-box img", timeout=TIMEOUT_MS)  # the attachment preview
    box.locator("textarea").fill(question)
    n_sources = page.locator("#hr-chat .hr-sources").count()
    box.locator("textarea").press("Enter")
    page.wait_for_function(f"document.querySelectorAll('#hr-chat .hr-sources').length > {n_sources}")
