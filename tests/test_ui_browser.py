"""The web app in a real browser: ``python app.py`` on a free loopback port, driven by Playwright (PyPI)
in Debian's Chromium. Screenshots of every step land in each test's tmp directory.

Needs ``pip install -e .[test]`` (playwright) and ``apt-get install -y chromium`` (no browser download).
The shared pieces (starting the app, the browser, screenshots, asking) are in ``browser_helpers.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_helpers import TIMEOUT_MS, Shots, attach_file, open_tab, start_app, stop_app
from browser_helpers import ask as _ask

NOTES = {
    # the hostile markup sits inside the sentence that answers the test question, so the chunk shown as a
    # source always carries it (one slot per retrieval view: a separate markup chunk could be left out)
    "tides.md": "# Tides\n\nTides are caused mainly by the gravitational pull <script>window.__pwned = 1</script> "
                "of the Moon <img src=x onerror=\"window.__pwned2 = 1\"> on the oceans.\n",
    "volcanoes.md": "# Volcanoes\n\nA volcano erupts when magma rises through cracks in the crust of the Earth.\n",
    "bread.txt": "Bread dough rises because yeast ferments sugars and releases carbon dioxide gas.\n",
}
UPLOADED = "quagga.md"
UPLOADED_TEXT = "# Quagga valley\n\nThe zebras of the Quagga valley sleep standing on one leg beside the salt lake.\n"


@pytest.fixture(scope="module")
def app_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A collection ``ui`` with three notes (one with hostile markup) and 12 synthetic scenes."""
    from corpora.synthetic_scenes import iter_synthetic_documents
    from heterag import Document, open_collection

    home = tmp_path_factory.mktemp("ui-home")
    pipe = open_collection("ui", home=home)
    try:
        docs = [Document.create(text, title=name.split(".")[0].title(), id=name) for name, text in NOTES.items()]
        report = pipe.ingest([*docs, *iter_synthetic_documents(12, seed=0)])
        assert not report.failures and pipe.image_store.count() == 12
    finally:
        pipe.close()
    return home


@pytest.fixture(scope="module")
def app_url(app_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("ui-log") / "app.log"
    proc, url = start_app(app_home, ["--collection", "ui"], log)
    try:
        yield url
    finally:
        stop_app(proc)


@pytest.fixture()
def page(browser, app_url: str):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(app_url)
    pg.wait_for_selector("#hr-box textarea")
    pg.page_errors = errors
    yield pg
    context.close()


def _watch_answers(page) -> None:
    """Record every text the last bot message shows, to see the answer arrive in pieces."""
    page.evaluate("""() => {
        window.__texts = [];
        const chat = document.querySelector('#hr-chat');
        new MutationObserver(() => {
            const bots = chat.querySelectorAll('[data-testid="bot"] .message-content');
            if (bots.length) window.__texts.push(bots[bots.length - 1].innerText);
        }).observe(chat, {subtree: true, childList: true, characterData: true});
    }""")


def _last_bot_texts(page) -> list[str]:
    return page.locator('#hr-chat [data-testid="bot"]').all_inner_texts()


def test_text_question_streams_an_answer_with_sources_and_no_markup_injection(page, tmp_path, record_property):
    shot = Shots(page, tmp_path, record_property)
    shot("chat-open")
    _watch_answers(page)
    _ask(page, "What causes tides?")
    shot("text-answer")
    bots = _last_bot_texts(page)
    assert any("gravitational pull" in t and "of the Moon" in t and "[1]" in t for t in bots), bots
    partial = {t for t in page.evaluate("window.__texts") if t.strip()}
    assert len(partial) >= 2, f"the answer did not arrive in pieces: {partial}"
    source = page.locator("#hr-chat .hr-source").first
    assert "[1]" in source.inner_text() and "score" in source.inner_text()
    assert page.locator("#hr-chat .hr-source .hr-view").count() >= 1  # the view that matched
    # the hostile source shows as text: no script ran, no <img src=x> element exists
    chunk_texts = " ".join(page.locator("#hr-chat .hr-chunk").all_inner_texts())
    assert "<script>window.__pwned = 1</script>" in chunk_texts and "onerror" in chunk_texts
    assert page.evaluate("[window.__pwned, window.__pwned2]") == [None, None]
    assert page.locator("#hr-chat img[src='x']").count() == 0
    assert page.locator("#hr-chat script").count() == 0
    assert not page.page_errors


def test_image_question_shows_source_thumbnails(page, tmp_path, record_property):
    from corpora.synthetic_scenes import render_scene

    shot = Shots(page, tmp_path, record_property)
    scene = render_scene(3, seed=0)
    image = tmp_path / "scene.png"
    scene.image.save(image)
    _ask(page, "", image=image)  # an image alone is a question
    shot("image-answer")
    thumbs = page.locator("#hr-chat .hr-source img.hr-thumb")
    assert thumbs.count() >= 1
    assert thumbs.first.evaluate("img => img.complete && img.naturalWidth > 0")
    assert page.locator("#hr-chat img.hr-query-image").count() == 1
    bots = " ".join(_last_bot_texts(page))
    assert "[1]" in bots and "error" not in bots.lower()
    # the best source is the scene itself: its caption is the cited chunk
    assert scene.caption.split(".")[0] in page.locator("#hr-chat .hr-source .hr-chunk").first.inner_text()
    # and a follow-up text question works in the same session, keeping the history
    _ask(page, "What causes tides?")
    shot("history-kept")
    assert page.locator("#hr-chat .hr-sources").count() == 2


def test_empty_message_is_refused_with_a_message(page, tmp_path, record_property):
    page.locator("#hr-box textarea").press("Enter")
    page.get_by_text("Type a question or attach an image.").first.wait_for()
    Shots(page, tmp_path, record_property)("empty-message")
    assert page.locator('#hr-chat [data-testid="user"]').count() == 0


def test_upload_ask_and_delete_a_document(page, tmp_path, record_property):
    shot = Shots(page, tmp_path, record_property)
    upload = tmp_path / UPLOADED
    upload.write_text(UPLOADED_TEXT)
    open_tab(page, "Knowledge")
    page.wait_for_selector("#hr-docs tr[data-doc-id='tides.md']")
    attach_file(page, "#hr-upload", upload)
    page.locator("#hr-ingest").click()
    page.wait_for_function("document.querySelector('#hr-ingest-status').innerText.includes('1 document written')")
    row = page.locator(f"#hr-docs tr[data-doc-id='{UPLOADED}']")
    row.wait_for()
    assert "1" in row.locator("td").nth(3).inner_text()  # its chunk count
    shot("uploaded")

    open_tab(page, "Chat")
    _ask(page, "Where do zebras sleep standing on one leg?")
    shot("asked-about-upload")
    assert "Quagga valley" in " ".join(_last_bot_texts(page))
    assert UPLOADED in page.locator("#hr-chat .hr-source").first.inner_text()

    open_tab(page, "Knowledge")
    picker = page.locator("#hr-delete-ids input")
    picker.click()
    picker.fill(UPLOADED)
    page.get_by_role("option", name=UPLOADED).click()
    page.locator("#hr-delete").click()
    page.wait_for_function("document.querySelector('#hr-delete-status').innerText.includes('Deleted 1 document')")
    assert page.locator(f"#hr-docs tr[data-doc-id='{UPLOADED}']").count() == 0
    shot("deleted")

    open_tab(page, "Chat")
    _ask(page, "Where do zebras sleep standing on one leg?")
    shot("gone-after-delete")
    sources = " ".join(page.locator("#hr-chat .hr-sources").last.all_inner_texts())
    assert UPLOADED not in sources and "Quagga" not in sources


def test_chat_api_streams_through_gradio_client(app_url, tmp_path):
    from gradio_client import Client, handle_file

    from corpora.synthetic_scenes import render_scene

    client = Client(app_url, verbose=False)
    outputs = list(client.submit("What causes tides?", None, "", 3, api_name="/chat"))
    assert len(outputs) >= 3  # word by word, then the sources
    text, sources = outputs[-1]
    assert "gravitational pull" in text and sources[0]["doc_id"] == "tides.md" and sources[0]["cited"]
    image = tmp_path / "scene.png"
    render_scene(5, seed=0).image.save(image)
    text, sources = client.predict("", handle_file(str(image)), "ui", 5, api_name="/chat")
    assert text.strip() and any(s["has_image"] for s in sources)
    with pytest.raises(Exception, match="type a question or attach an image"):
        client.predict("", None, "", 3, api_name="/chat")


def test_api_errors_name_the_users_file_not_the_servers_private_path(app_url, tmp_path):
    from gradio_client import Client, handle_file

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(Exception) as err:
        Client(app_url, verbose=False).predict("what is this?", handle_file(str(corrupt)), "", 3, api_name="/chat")
    message = str(err.value)
    assert "corrupt.png" in message and "heterag-ui-" not in message and "/tmp" not in message, message
