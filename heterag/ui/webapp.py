"""The Gradio interface over :class:`~heterag.ui.service.ChatService`: a chat tab and a knowledge tab.

Only wiring lives here; what happens is in the service. Chat text is escaped and shown with
Markdown off, sources are HTML built by :mod:`heterag.ui.render` from escaped text.

API: ``/chat`` (``gradio_client``: ``Client(url).submit(question, image, collection, top_k,
api_name="/chat")``) streams ``(answer so far, sources)``; sources come with the last update.

Packages above the app add tabs and chat overlays (a banner, flagged sources, a chat defense)
through :mod:`heterag.ui.plugins`; the app never imports them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from heterag.core.errors import HeteragError, InvalidInputError
from heterag.core.images import ImageRef
from heterag.ui import render
from heterag.ui.catalog import delete_documents, list_documents
from heterag.ui.config import DEMOS, GENERATOR_NAMES, RETRIEVAL_NAMES, ChatSettings
from heterag.ui.errors import user_error
from heterag.ui.plugins import AppContext, AppTab, build_tab, load_tabs
from heterag.ui.service import ChatService, Done, Failed, Notice, Token, one_line

log = logging.getLogger(__name__)

#: Documents listed at once in the knowledge tab.
DOCUMENT_LIST_LIMIT = 500
API_NAME = "chat"


def _upload_root() -> Path | None:
    root = os.environ.get("GRADIO_TEMP_DIR")
    return Path(root).resolve() if root else None


def remove_uploads(paths: list[str]) -> None:
    """Delete uploaded files, but only ones inside this app's private upload folder."""
    root = _upload_root()
    if root is None:
        return
    for p in paths:
        try:
            path = Path(p).resolve()
            if path.is_relative_to(root) and path.is_file():
                path.unlink()
                if path.parent != root and not any(path.parent.iterdir()):
                    path.parent.rmdir()
        except OSError:
            log.debug("could not remove upload %s", p, exc_info=True)


def _without_private_path(message: str, paths: list[str]) -> str:
    """``message`` with the server's private upload paths replaced by the file names the user gave."""
    for p in paths:
        message = message.replace(str(p), Path(p).name)
    return message


def _path_of(f: Any) -> str:
    return f.get("path") if isinstance(f, dict) else str(f)


def build_app(service: ChatService, tabs: Sequence[AppTab] | None = None) -> gr.Blocks:
    """The Blocks app for ``service`` (call ``.queue().launch()`` on it), with ``tabs`` (default: the
    plugins of :data:`heterag.ui.plugins.TAB_GROUP`) after the built-in ones."""
    cfg = service.config
    defaults = cfg.chat
    ctx = AppContext(service)
    tabs = load_tabs() if tabs is None else list(tabs)

    def chat_choices() -> list[str]:
        return [DEMOS] + service.collections()

    def knowledge_default() -> str | None:
        names = service.collections()
        if defaults.collection in names:
            return defaults.collection
        return names[0] if names else None

    # ---- handlers ----------------------------------------------------------------------
    def respond(message: dict | None, history: list, collection: str, top_k: float, fusion: str, generator: str,
                base_url: str, model: str, model_path: str, temperature: float, retrieval: str = "auto") -> Iterator[tuple]:
        message = message or {}
        question = str(message.get("text") or "").strip()
        files = [_path_of(f) for f in (message.get("files") or [])]
        history = list(history or [])
        keep = gr.skip()
        if not question and not files:
            gr.Warning("Type a question or attach an image.")
            yield history, keep
            return
        ref = None
        try:
            if len(files) > 1:
                raise InvalidInputError("attach one image per question")
            if files:
                ref = ImageRef.from_path(files[0], max_bytes=service.limits.max_file_bytes)
        except HeteragError as exc:
            gr.Warning(_without_private_path(one_line(exc), files))
            yield history, keep
            return
        settings = ChatSettings(collection=collection or DEMOS, top_k=int(top_k), fusion=fusion or "weighted",
                                generator=generator, base_url=base_url or "", model=model or "",
                                model_path=model_path or "", temperature=float(temperature or 0.0),
                                retrieval="" if retrieval in (None, "", "auto") else retrieval)
        if ref is not None:
            history.append({"role": "user", "content": gr.HTML(render.image_ref_html(ref), js_on_load=None)})
        if question:
            history.append({"role": "user", "content": render.text(question)})
        history.append({"role": "assistant", "content": ""})
        answer_at = len(history) - 1
        yield history, gr.MultimodalTextbox(value=None)
        streamed = ""
        for event in service.ask(question, ref, settings):
            if isinstance(event, Token):
                streamed += event.text
                history[answer_at] = {"role": "assistant", "content": render.text(streamed)}
            elif isinstance(event, Notice):
                history.insert(answer_at, {"role": "assistant", "content": render.text(f"note: {event.text}")})
                answer_at += 1
            elif isinstance(event, Done):
                history[answer_at] = {"role": "assistant", "content": render.text(event.answer.text)}
                marks = ctx.marks(event.collection, event.answer.hits)
                history.append({"role": "assistant",
                                "content": gr.HTML(render.sources_html(event.answer, marks), js_on_load=None)})
            elif isinstance(event, Failed):
                history[answer_at] = {"role": "assistant", "content": render.text(f"error: {event.message}")}
            yield history, gr.skip()

    def api_chat(question: str, image: str | None, collection: str, top_k: float | None) -> Iterator[tuple]:
        """Answer a question (and/or an image file) from a collection; streams (answer so far, sources)."""
        try:
            ref = ImageRef.from_path(image, max_bytes=service.limits.max_file_bytes) if image else None
        except HeteragError as exc:
            raise user_error(_without_private_path(one_line(exc), [image] if image else [])) from None
        if top_k is not None and (float(top_k) != int(top_k) or not 1 <= int(top_k) <= 50):
            raise user_error(f"top_k must be a whole number from 1 to 50, got {top_k:g}")
        settings = dataclasses.replace(defaults, collection=(collection or "").strip() or defaults.collection,
                                       top_k=int(top_k) if top_k is not None else defaults.top_k)
        text = ""
        try:
            for event in service.ask(question, ref, settings):
                if isinstance(event, Token):
                    text += event.text
                    yield text, gr.skip()
                elif isinstance(event, Done):
                    yield event.answer.text, render.sources_json(event.answer, ctx.marks(event.collection, event.answer.hits))
                elif isinstance(event, Failed):
                    raise user_error(event.message)
        except InvalidInputError as exc:
            raise user_error(one_line(exc)) from None

    def status_line() -> tuple[str, gr.Timer]:
        lines = [f"⏳ {p.line()}" for p in service.progress()]
        if service.demo_error:
            lines.append(f"⚠️ {service.demo_error}")
        lines += [f"ℹ️ {note}" for note in ctx.notes]
        return render.text("\n\n".join(lines)), gr.Timer(active=bool(service.progress()))

    def on_load() -> tuple:
        status, timer = status_line()
        return (status, timer, gr.Dropdown(choices=chat_choices()),
                gr.Dropdown(choices=service.collections(), value=knowledge_default()))

    def documents(collection: str | None) -> tuple[str, gr.Dropdown]:
        if not collection:
            return "<p>No collection yet: create one below.</p>", gr.Dropdown(choices=[], value=[])
        try:
            pipe = service.pipeline(collection)
            docs = list_documents(pipe)
        except HeteragError as exc:
            return f"<p>{render.text(one_line(exc))}</p>", gr.Dropdown(choices=[], value=[])
        shown = docs[:DOCUMENT_LIST_LIMIT]
        return (render.documents_html(shown, total=len(docs), collection=collection),
                gr.Dropdown(choices=[d.id for d in docs], value=[]))

    def ingest(collection: str | None, files: list | None) -> Iterator[tuple]:
        paths = [_path_of(f) for f in (files or [])]
        if not collection:
            remove_uploads(paths)
            yield "Choose or create a collection first.", "", gr.skip(), gr.skip(), None
            return
        uploads = [(Path(p).name, p) for p in paths]
        for update in service.ingest_uploads(collection, uploads, on_cleanup=lambda: remove_uploads(paths)):
            rejected = "\n".join(update.rejected)
            if update.finished:
                html, choices = documents(collection)
                yield render.text(update.status), rejected, html, choices, None
            else:
                yield "⏳ " + render.text(update.status), rejected, gr.skip(), gr.skip(), gr.skip()

    def delete(collection: str | None, ids: list[str] | None) -> tuple:
        if not collection or not ids:
            return "Pick documents to delete first.", *documents(collection)
        try:
            n = delete_documents(service.pipeline(collection), list(ids))
        except HeteragError as exc:
            return render.text(one_line(exc)), *documents(collection)
        return f"Deleted {n} document{'' if n == 1 else 's'} from {render.text(collection)}.", *documents(collection)

    def create(name: str, view: str, store: str, encoder: str, image_encoder: str, chunk_tokens: float | None) -> tuple:
        try:
            service.create_collection(name, view=view, store=store, encoder=(encoder or "").strip() or None,
                                      image_encoder=(image_encoder or "").strip() or None,
                                      chunk_tokens=int(chunk_tokens) if chunk_tokens else None)
        except HeteragError as exc:
            return render.text(f"error: {one_line(exc)}"), gr.skip(), gr.skip()
        return (f"Created collection {render.text(name.strip())}.", gr.Dropdown(choices=chat_choices()),
                gr.Dropdown(choices=service.collections(), value=name.strip()))

    def chat_collections(collection: str | None) -> list[str]:
        if collection in ("", DEMOS, None):
            return [service.resolve(DEMOS, False), service.resolve(DEMOS, True)]
        return [collection]

    def banner(collection: str | None) -> str:
        return render.banner_html(ctx.banner(chat_collections(collection)))

    def set_defense(name: str | None, collection: str | None) -> str:
        if not name or name == "off":
            for c in chat_collections(collection):
                if c in service.collections():
                    ctx.set_chat_defense(c, None)
            return ""
        try:
            return render.text("; ".join(ctx.set_chat_defense(c, name) for c in chat_collections(collection)))
        except HeteragError as exc:
            return render.text(f"error: {one_line(exc)}")

    # ---- layout ------------------------------------------------------------------------
    # Query images are read into memory and left to the cache sweep (every minute, older than 10 minutes): gradio
    # stores uploads by content, so concurrent sessions sending the same image share one file and deleting it
    # at once would break the others. Knowledge-tab uploads are deleted as soon as they are ingested.
    with gr.Blocks(title="heterag", analytics_enabled=False, delete_cache=(60, 600)) as app:
        gr.Markdown("## heterag: ask your knowledge base, see where every answer came from")
        status = gr.Markdown(elem_id="hr-status")
        timer = gr.Timer(1.0, active=False)
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                chat_banner = gr.HTML(elem_id="hr-chat-banner", js_on_load=None)
                banner_timer = gr.Timer(1.0, active=False)
                with gr.Row(visible=False) as defense_row:
                    chat_defense = gr.Dropdown(["off"], value="off", label="Defense for the chat's questions",
                                               elem_id="hr-chat-defense", scale=1)
                    defense_status = gr.Markdown(elem_id="hr-chat-defense-status")
                chatbot = gr.Chatbot(elem_id="hr-chat", render_markdown=False, allow_tags=False, height=560,
                                     feedback_options=None, label="Chat")
                box = gr.MultimodalTextbox(elem_id="hr-box", file_types=["image"], sources=["upload"],
                                           placeholder="Ask a question, attach or paste an image, or both")
                with gr.Accordion("Settings", open=False):
                    with gr.Row():
                        collection = gr.Dropdown(chat_choices(), value=defaults.collection, label="Collection",
                                                 elem_id="hr-collection", info=f"{DEMOS}: text questions go to the Python "
                                                 "reference demo, image questions to the scenes demo")
                        top_k = gr.Slider(1, 20, value=defaults.top_k, step=1, label="Sources per answer (top-k)")
                        fusion = gr.Textbox(defaults.fusion, label="Fusion", info="weighted or rrf, e.g. "
                                            "weighted:text=1,image=2,cross=0.5")
                        retrieval = gr.Dropdown(["auto", *RETRIEVAL_NAMES], value=defaults.retrieval or "auto",
                                                label="Retrieval", elem_id="hr-retrieval", info="dense (vectors), keyword "
                                                "(BM25) or hybrid (both); auto: hybrid where the collection has a keyword index")
                    with gr.Row():
                        generator = gr.Radio(list(GENERATOR_NAMES), value=defaults.generator, label="Generator")
                        temperature = gr.Slider(0.0, 2.0, value=defaults.temperature, step=0.05, label="Temperature")
                    with gr.Row():
                        base_url = gr.Textbox(defaults.base_url, label="openai: base URL",
                                              placeholder="e.g. http://127.0.0.1:8000/v1 (default $OPENAI_BASE_URL)")
                        model = gr.Textbox(defaults.model, label="openai: model")
                        model_path = gr.Textbox(defaults.model_path, label="transformers / local: model folder",
                                                placeholder="local: empty for the packaged SmolLM2, or a .gguf file")
                    clear = gr.Button("Clear conversation")
            with gr.Tab("Knowledge", id="knowledge"):
                kcollection = gr.Dropdown(service.collections(), value=knowledge_default(), label="Collection",
                                          elem_id="hr-kcollection")
                files = gr.File(file_count="multiple", type="filepath", elem_id="hr-upload",
                                label="Documents and image–text items (.txt .md .jsonl, images, a zip of a folder "
                                      f"layout, MedMNIST .npz); up to {cfg.max_file_mb:g} MB a file, "
                                      f"{cfg.max_request_mb:g} MB an upload")
                ingest_btn = gr.Button("Ingest", variant="primary", elem_id="hr-ingest")
                ingest_status = gr.Markdown(elem_id="hr-ingest-status")
                rejected = gr.Textbox(label="Rejected (one line each)", lines=3, interactive=False, elem_id="hr-rejected")
                with gr.Row():
                    delete_ids = gr.Dropdown([], multiselect=True, label="Documents to delete", elem_id="hr-delete-ids")
                    delete_btn = gr.Button("Delete", variant="stop", elem_id="hr-delete")
                    refresh_btn = gr.Button("Refresh list", elem_id="hr-refresh")
                delete_status = gr.Markdown(elem_id="hr-delete-status")
                docs_html = gr.HTML(elem_id="hr-docs", js_on_load=None)
                with gr.Accordion("New collection", open=False):
                    with gr.Row():
                        new_name = gr.Textbox(label="Name", elem_id="hr-new-name")
                        new_view = gr.Dropdown(["heterag", "naive", "late"], value="heterag", label="Retrieval view")
                        new_store = gr.Dropdown(["chroma", "faiss"], value="chroma", label="Store")
                    with gr.Row():
                        new_encoder = gr.Textbox(label="Text encoder", placeholder="default (packaged all-MiniLM-L6-v2)")
                        new_image_encoder = gr.Textbox(label="Image encoder", placeholder="default, or open_clip:ARCH[:PRETRAINED]")
                        new_chunk = gr.Number(64, precision=0, label="Chunk tokens")
                    create_btn = gr.Button("Create collection", elem_id="hr-create")
                    create_status = gr.Markdown(elem_id="hr-create-status")
            for tab in tabs:  # plugins (heterag.ui.plugins): a broken one costs only its own tab
                with gr.Tab(tab.title, id=f"plugin-{tab.name}"):
                    failed = build_tab(tab, ctx)
                    if failed:
                        gr.Markdown(render.text(failed))
        with gr.Row(visible=False):  # the API endpoint's inputs and outputs
            api_question = gr.Textbox(label="question")
            api_image = gr.File(type="filepath", label="image", file_types=["image"])
            api_collection = gr.Textbox(label="collection")
            api_top_k = gr.Number(label="top_k", precision=0)
            api_answer = gr.Textbox(label="answer")
            api_sources = gr.JSON(label="sources")
            api_button = gr.Button()

        settings = [collection, top_k, fusion, generator, base_url, model, model_path, temperature, retrieval]
        box.submit(respond, [box, chatbot, *settings], [chatbot, box], concurrency_limit=cfg.concurrency,
                   concurrency_id="chat", api_visibility="private")
        api_button.click(api_chat, [api_question, api_image, api_collection, api_top_k], [api_answer, api_sources],
                         api_name=API_NAME, concurrency_limit=cfg.concurrency, concurrency_id="chat")
        clear.click(lambda: [], None, chatbot, api_visibility="private")
        if ctx.overlays:  # known once the plugin tabs are built
            banner_timer.active = True
            banner_timer.tick(banner, collection, chat_banner, api_visibility="private")
            collection.change(banner, collection, chat_banner, api_visibility="private")
            if ctx.defenses():
                defense_row.visible = True
                chat_defense.choices = [(c, c) for c in ["off", *ctx.defenses()]]
                chat_defense.change(set_defense, [chat_defense, collection], defense_status, api_visibility="private")
                collection.change(set_defense, [chat_defense, collection], defense_status, api_visibility="private")
        timer.tick(status_line, None, [status, timer], api_visibility="private")
        app.load(on_load, None, [status, timer, collection, kcollection], api_visibility="private").then(
            documents, kcollection, [docs_html, delete_ids], api_visibility="private")
        kcollection.change(documents, kcollection, [docs_html, delete_ids], api_visibility="private")
        refresh_btn.click(documents, kcollection, [docs_html, delete_ids], api_visibility="private")
        ingest_btn.click(ingest, [kcollection, files], [ingest_status, rejected, docs_html, delete_ids, files],
                         api_visibility="private")
        delete_btn.click(delete, [kcollection, delete_ids], [delete_status, docs_html, delete_ids], api_visibility="private")
        create_btn.click(create, [new_name, new_view, new_store, new_encoder, new_image_encoder, new_chunk],
                         [create_status, collection, kcollection], api_visibility="private")
    return app


__all__ = ["API_NAME", "build_app", "remove_uploads"]
