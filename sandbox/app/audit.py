"""The Sandbox tab's membership-audit panel (Gradio): upload images, pick a collection, get verdicts.

:func:`build_audit_panel` lays out its components inside the caller's ``gr.Blocks``/``gr.Tab`` context; the
work is :func:`sandbox.audit.audit_images` (calibrate first; a verdict only where a method has signal).
Uploads are read in memory from Gradio's upload folder (a zip member by member, never extracted) and shown
under the user's file names; everything the panel shows is escaped text.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from heterag import HeteragError

log = logging.getLogger(__name__)

GENERATORS = ("extractive", "openai")


def _one_line(message: object) -> str:
    return " ".join(str(message).split()) or type(message).__name__


def render(report: Any) -> str:
    """The audit report as escaped HTML: the calibration, the plain no-signal sentence or one block per image
    (verdict, p-value, each mask's label and the answer of each trial), then the inputs not audited."""
    e = html.escape
    out = [f"<div class='hr-audit'><p>Membership audit of collection <code>{e(report.collection)}</code> "
           f"({report.seconds:.0f} s).</p>"]
    if report.signals:
        out.append("<p><b>Calibration</b> (shadow members injected and removed again"
                   + ("" if report.fingerprint_identical in (None, True) else ": INDEX CHANGED") + "):</p><ul>")
        for s in report.signals.values():
            out.append(f"<li class='hr-audit-signal' data-method='{e(s.method)}' data-signal='{str(s.signal).lower()}'>"
                       f"{e(s.reason)}{'' if s.signal else ': <b>no signal on calibration: not a result</b>'}</li>")
        out.append("</ul>")
    if report.statement:
        out.append(f"<p class='hr-audit-statement'><b>{e(report.statement)}</b></p>")
        if report.inputs:
            out.append(f"<p>Images read, not judged: {e(', '.join(report.inputs))}</p>")
    for im in report.images:
        if im.verdict is None or im.method is None:
            head = f"no verdict ({e(im.note)})"
        else:  # the verdict, then the rule that gave it: p or score against the calibrated threshold
            rule = im.methods[im.method].describe().removeprefix(im.verdict).strip()
            head = f"<b class='hr-audit-verdict'>{e(im.verdict)}</b> {e(rule)}"
        out.append(f"<div class='hr-audit-image' data-name='{e(im.name)}'><p><code>{e(im.name)}</code>: {head}</p>")
        others = [v for k, v in im.methods.items() if k != im.method]
        for v in others:
            out.append(f"<p>{e(v.method)}: {e(v.describe())}</p>")
        if im.masks:
            out.append("<ol class='hr-audit-masks'>")
            for i, mq in enumerate(im.masks, 1):
                trials = "".join(f"<li class='hr-audit-trial'>{'✓' if ok else '✗'} {e(a) or '(no answer)'}</li>"
                                 for a, ok in zip(mq.answers, mq.named, strict=True))
                out.append(f"<li>mask {i}: <b>{e(mq.label)}</b>, first named at trial "
                           f"{mq.x if any(mq.named) else 'never'}<ol>{trials}</ol></li>")
            out.append("</ol>")
        out.append("</div>")
    if report.errors:
        out.append("<p><b>Not audited:</b></p><ul>" + "".join(f"<li class='hr-audit-error'>{e(x)}</li>" for x in report.errors)
                   + "</ul>")
    return "".join(out) + "</div>"


def thumbnails(report: Any) -> list[tuple[Any, str]]:
    """(masked image, caption) for every mask of every audited image, in order."""
    return [(mq.image.to_pil(), f"{im.name}: mask {i} ({mq.label})")
            for im in report.images for i, mq in enumerate(im.masks, 1)]


def run_audit(files: Any, collection: str, shadow: str, vocabulary: str, generator: str, base_url: str, model: str,
              allow_live: bool, progress: Any = gr.Progress()) -> tuple[str, list[tuple[Any, str]]]:  # noqa: B008
    """The panel's handler: (escaped HTML, mask thumbnails). User errors raise ``gr.Error`` with one line."""
    from sandbox.audit import audit_images, check_app_shadow
    from sandbox.injection import LiveCollectionError

    paths = [str(getattr(f, "name", f)) for f in (files or [])]
    if not paths:
        raise gr.Error("Upload an image or a zip of images to audit.")
    try:  # synthetic:N (bounded) or data:NAME only: never a server path (same message whether it exists or not)
        shadow = check_app_shadow(shadow)
    except HeteragError as exc:
        raise gr.Error(_one_line(exc)) from None
    if not collection:
        raise gr.Error("Choose the collection to audit.")
    gen = None
    if generator == "openai":
        if not (base_url or "").strip() or not (model or "").strip():
            raise gr.Error("The openai generator needs a base URL and a model.")
        from heterag import make_generator

        try:
            gen = make_generator("openai", base_url=base_url.strip(), model=model.strip(), temperature=0.7)
        except (HeteragError, TypeError) as exc:
            raise gr.Error(_one_line(exc)) from None

    def say(line: str) -> None:
        if progress is not None:
            progress(None, desc=line)
        log.info("membership audit: %s", line)

    try:
        report = audit_images(collection, paths, names=[Path(p).name for p in paths], generator=gen,
                              shadow=shadow, vocabulary=vocabulary or "synthetic",
                              allow_live=bool(allow_live), progress=say)
    except LiveCollectionError:
        raise gr.Error(f"Collection {collection!r} was not made for experiments: tick \"Allow the calibration to inject "
                       "its shadow images\" to let the audit add them (tagged, removed again afterwards).") from None
    except HeteragError as exc:
        log.info("membership audit refused: %s", _one_line(exc))
        raise gr.Error(_one_line(exc)) from None
    except Exception as exc:  # a bug: one line here, the traceback in the app's log
        log.exception("membership audit failed")
        raise gr.Error(f"the audit failed: {type(exc).__name__}: {_one_line(exc)}") from None
    return render(report), thumbnails(report)


def build_audit_panel(collection_names: Callable[[], list[str]]) -> None:
    """Lay out the membership-audit panel inside the current Gradio context.

    ``collection_names``: called to fill (and, on focus, refresh) the collection choices. The panel: an
    upload (one image or a zip of images, several files allowed), the collection, calibration settings
    (shadow set, object vocabulary, generator, the confirmation that shadow images may be injected into a
    live collection and removed again), a run button, the report (``#hr-audit-result``) and the masks used
    (``#hr-audit-masks``)."""
    names = list(collection_names())
    gr.Markdown("Is an image in a collection? The audit calibrates first on a shadow set (half injected into the "
                "collection and removed again, half kept out) and gives a verdict only with the methods whose "
                "calibration shows signal; where none has, it says so instead of guessing.")
    with gr.Row():
        files = gr.File(file_count="multiple", file_types=["image", ".zip"], type="filepath",
                        label="One image or a zip of images", elem_id="hr-audit-upload")
        with gr.Column():
            collection = gr.Dropdown(names, value=names[0] if names else None, label="Collection",
                                     elem_id="hr-audit-collection")
            allow_live = gr.Checkbox(False, label="Allow the calibration to inject its shadow images into this collection "
                                     "(tagged, removed afterwards; needed for a collection you chat with)",
                                     elem_id="hr-audit-live")
    with gr.Accordion("Calibration settings", open=False):
        with gr.Row():
            shadow = gr.Textbox("synthetic:16", label="Shadow set: synthetic:N[:SEED[:SIZE]] (N 8-500, SIZE 32-512) or "
                                "data:NAME (captioned images in the data folder)", elem_id="hr-audit-shadow")
            vocabulary = gr.Dropdown(["synthetic", "coco"], value="synthetic", label="Objects named as",
                                     elem_id="hr-audit-vocabulary")
        with gr.Row():
            generator = gr.Radio(list(GENERATORS), value="extractive", label="The system's generator",
                                 elem_id="hr-audit-generator")
            base_url = gr.Textbox("", label="Base URL (openai)", elem_id="hr-audit-base-url")
            model = gr.Textbox("", label="Model (openai)", elem_id="hr-audit-model")
    run_btn = gr.Button("Run audit", variant="primary", elem_id="hr-audit-run")
    result = gr.HTML(elem_id="hr-audit-result", js_on_load=None)
    masks = gr.Gallery(label="Masks used", columns=6, height="auto", object_fit="contain", elem_id="hr-audit-masks")
    run_btn.click(run_audit, [files, collection, shadow, vocabulary, generator, base_url, model, allow_live],
                  [result, masks], api_visibility="private", concurrency_limit=1, concurrency_id="sandbox-audit")
    collection.focus(lambda: gr.Dropdown(choices=list(collection_names())), None, collection, api_visibility="private")


__all__ = ["build_audit_panel", "render", "run_audit", "thumbnails"]
