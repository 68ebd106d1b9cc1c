"""The Sandbox tab's layout and handlers (Gradio); the work is in :mod:`sandbox.app.runs` and its worker.

Pick a ready-made scenario or upload one, set the seed, the budget and the collection to attack
(a live one needs the confirmation box ticked: ``--allow-live``), run it and watch its stages, cancel
it, and read its report. The status is polled every second from the run's status file, so a
reloaded page (or another browser) sees the same run. The "Membership audit" accordion holds
:func:`sandbox.app.audit.build_audit_panel` where that module exists.
"""

from __future__ import annotations

import html
import logging
import time
from pathlib import Path
from typing import Any

import gradio as gr

from heterag import HeteragError

from . import report_view
from .live import LiveOverlay
from .runs import RunManager, RunStatus
from .scenarios import EXPERIMENT, is_live, load_choice, ready_made, with_overrides

log = logging.getLogger(__name__)

DEFAULT_SCENARIO = "m3att_synthetic"
READY_LABEL = "Ready-made scenario (eval/scenarios)"
NOT_USED_LABEL = "Ready-made scenario (not used: the uploaded file runs; pick one here to run it instead)"
#: The download list is read-only: hide Gradio's "remove this file" buttons (shown for lists of several files).
HIDE_REMOVE = "<style>#hr-sb-files .label-clear-button{display:none !important}</style>"


def one_line(message: object) -> str:
    return " ".join(str(message).split()) or type(message).__name__


def progress_text(st: RunStatus | None) -> str:
    """The run's state as escaped HTML lines: stage, done/total, elapsed; the fingerprints at the end."""
    if st is None:
        return "No sandbox run yet."
    d = st.data
    now = time.time()
    name = d.get("name") or ""
    where = f" on collection <code>{html.escape(str(st.collection))}</code>" if st.collection else ""
    head = f"Run <code>{html.escape(st.run_id)}</code> {html.escape(str(name))}{where}"
    total = (float(d.get("finished") or now) - float(d.get("started") or now))
    lines = []
    if st.active:
        stage = d.get("stage") or "starting (loading the models)"
        bar = d.get("bar") or {}
        step = ""
        if bar.get("n") is not None:
            step = f" {html.escape(str(bar.get('desc') or 'progress'))}: {bar['n']}/{bar['total'] if bar.get('total') else '?'}"
            if bar.get("total"):
                step += f" ({100 * bar['n'] // max(1, bar['total'])}%)"
        since = float(d.get("stage_started") or d.get("started") or now)
        lines.append(f"⏳ {head}: stage <b>{html.escape(str(stage))}</b>{step}, {now - since:.1f} s in this stage, "
                     f"{total:.1f} s in all")
    else:
        verdict = {"done": "✅ finished", "cancelled": "⏹ cancelled", "failed": "❌ failed", "died": "❌ stopped",
                   "interrupted": "⏹ interrupted"}.get(st.state, st.state)
        lines.append(f"{verdict}: {head}, {total:.1f} s")
        if d.get("error"):
            lines.append(f"error: {html.escape(str(d['error']))}")
        fp = st.fingerprint_line()
        if st.state != "done" and fp:
            lines.append(("Index restored: " if d.get("identical") else "Index NOT restored: ") + html.escape(fp))
        elif fp:
            lines.append(html.escape(fp))
        elif d.get("note"):
            lines.append(html.escape(str(d["note"])))
        elif st.state in ("cancelled", "failed") and not d.get("fingerprint_before"):
            lines.append("Nothing had been injected yet: the index was not touched.")
        for note in d.get("recovered") or []:
            lines.append(html.escape(str(note)))
    done = d.get("stages") or []
    if done:
        lines.append("stages: " + ", ".join(f"{html.escape(str(n))} {s:.1f} s" for n, s in done))
    return "<br>".join(lines)


def report_section(st: RunStatus | None, shown: str | None) -> tuple[Any, Any, Any, str | None]:
    """(metrics HTML, figures, downloads, new ``shown``) for the Report section, ``gr.skip()`` where nothing
    changes: the latest run's report once it is done; cleared while a newer run goes, and after one that failed
    or was cancelled (never an older run's report). ``shown``: the run id whose report is shown, or
    ``-<run id>[:<state>]`` when the section was cleared for that run."""
    if st is None or st.run_id == shown:
        return gr.skip(), gr.skip(), gr.skip(), shown
    if st.state == "done" and (st.report_dir / "report.json").exists():
        try:
            table, figures, downloads = report_view.view(st.report_dir, st.run_id)
        except Exception as exc:  # a damaged report: say so, keep polling
            log.warning("sandbox report of %s could not be shown: %s", st.run_id, one_line(exc))
            return f"the report could not be shown: {html.escape(one_line(exc))}", [], None, st.run_id
        return table, figures, downloads, st.run_id
    mark = f"-{st.run_id}" if st.active else f"-{st.run_id}:{st.state}"
    if shown == mark:
        return gr.skip(), gr.skip(), gr.skip(), shown
    note = "" if st.active else f"Run {html.escape(st.run_id)} has no report ({html.escape(st.state)})."
    return note, [], None, mark


def build(ctx: Any, manager: RunManager | None = None) -> None:
    """Lay out the tab inside the caller's ``gr.Tab`` and register the chat overlay with ``ctx``."""
    manager = manager or RunManager()
    notes = manager.recover()  # the app's start: clean up after runs the last app left unfinished
    ctx.notes.extend(notes)
    ctx.add_chat_overlay(LiveOverlay(manager, ctx.service.pipeline))
    scenarios = ready_made()

    def targets() -> list[str]:
        return [EXPERIMENT, *ctx.collections()]

    # ---- handlers --------------------------------------------------------------------------
    def start(name: str | None, upload: Any, seed: str | None, budget: str | None, target: str | None,
              confirm: bool) -> str:
        upload_path = upload.get("path") if isinstance(upload, dict) else upload
        collection = None if target in (None, "", EXPERIMENT) else target
        try:
            scn = load_choice(name, upload_path)
            scn = with_overrides(scn, seed=seed, budget=budget, collection=collection, allow_live=bool(confirm))
            run_id = manager.start(scn, allow_live=bool(confirm) and is_live(collection))
        except HeteragError as exc:
            return f"error: {html.escape(one_line(exc))}"
        except Exception as exc:  # a bug: one line here, the traceback in the app's log
            log.exception("sandbox run could not be started")
            return f"error: the run could not be started: {html.escape(type(exc).__name__)}: {html.escape(one_line(exc))}"
        where = f" on live collection {collection!r}" if is_live(collection) else ""
        source = f"uploaded file {Path(upload_path).name}" if upload_path else f"ready-made scenario {name}"
        return html.escape(f"started run {run_id} ({scn.name}, from the {source}){where}")

    def uploaded(upload: Any, name: str | None) -> tuple[Any, str]:
        """An upload replaces the ready-made choice (and says so); removing it brings the choice back."""
        path = upload.get("path") if isinstance(upload, dict) else upload
        if path:
            return (gr.Dropdown(value=None, label=NOT_USED_LABEL),
                    html.escape(f"The uploaded file {Path(path).name} is what runs; remove it (or pick a ready-made "
                                "scenario) to run a ready-made one."))
        default = name or (DEFAULT_SCENARIO if DEFAULT_SCENARIO in scenarios else None)
        return gr.Dropdown(value=default, label=READY_LABEL), ""

    def cancel() -> str:
        return html.escape(manager.cancel())

    def poll(shown: str | None) -> tuple:
        st = manager.status()
        return (progress_text(st), *report_section(st, shown))

    def confirm_visible(target: str | None) -> Any:
        live = is_live(target)
        return gr.Checkbox(visible=live, value=False,
                           label=f"Inject into the live collection {target!r}: I confirm (allow_live)" if live else "")

    # ---- layout ----------------------------------------------------------------------------
    gr.Markdown("Run an attack scenario against an index and see what it does and what a defense costs. "
                "Runs happen in a worker process; the chat stays usable, and while poisons are in the collection "
                "the chat asks, its sources are flagged.")
    gr.Markdown(html.escape(" ".join(notes)), elem_id="hr-sb-notes")
    with gr.Row():
        scenario = gr.Dropdown(scenarios, value=DEFAULT_SCENARIO if DEFAULT_SCENARIO in scenarios else None,
                               label=READY_LABEL, elem_id="hr-sb-scenario")
        upload = gr.File(file_types=[".yaml", ".yml"], type="filepath", label="...or upload a scenario YAML",
                         elem_id="hr-sb-upload")
    with gr.Row():
        seed = gr.Textbox("", label="Seed", placeholder="empty: the scenario's", elem_id="hr-sb-seed")
        budget = gr.Textbox("", label="Budget: poisons (M3Att, attack.poison_count) / member targets (MrM, mrm.members)",
                            placeholder="empty: the scenario's", elem_id="hr-sb-budget")
        target = gr.Dropdown(targets(), value=EXPERIMENT, label="Collection to attack", elem_id="hr-sb-target")
    confirm = gr.Checkbox(False, visible=False, elem_id="hr-sb-confirm")
    with gr.Row():
        run_btn = gr.Button("Run", variant="primary", elem_id="hr-sb-run")
        cancel_btn = gr.Button("Cancel", variant="stop", elem_id="hr-sb-cancel")
    message = gr.HTML(elem_id="hr-sb-message", js_on_load=None)
    status = gr.HTML(progress_text(manager.status()), elem_id="hr-sb-status", js_on_load=None)
    timer = gr.Timer(1.0, active=True)
    shown = gr.State(None)
    with gr.Accordion("Report", open=True):
        metrics = gr.HTML(elem_id="hr-sb-metrics", js_on_load=None)
        figures = gr.Gallery(label="Figures", columns=2, height="auto", elem_id="hr-sb-figures", object_fit="contain")
        downloads = gr.File(label="report.json, report.md and the plots", file_count="multiple", interactive=False,
                            elem_id="hr-sb-files")
        gr.HTML(HIDE_REMOVE, elem_id="hr-sb-style", js_on_load=None, padding=False)
    with gr.Accordion("Membership audit", open=False):
        try:  # built by its own module (issue 25, point 3); this tab works without it
            from sandbox.app.audit import build_audit_panel
        except ImportError as exc:
            if getattr(exc, "name", None) != "sandbox.app.audit":
                log.warning("membership audit not loaded: %s", one_line(exc))
            gr.Markdown("The membership audit is not available in this installation.")
        else:
            try:
                build_audit_panel(ctx.collections)
            except Exception as exc:  # a broken panel costs only the panel
                log.warning("membership audit panel failed to build: %s", one_line(exc))
                gr.Markdown(html.escape(f"The membership audit could not be built: {one_line(exc)}"))

    run_btn.click(start, [scenario, upload, seed, budget, target, confirm], message, api_visibility="private",
                  concurrency_limit=1, concurrency_id="sandbox-run")
    cancel_btn.click(cancel, None, message, api_visibility="private")
    upload.change(uploaded, [upload, scenario], [scenario, message], api_visibility="private")
    scenario.select(lambda: None, None, upload, api_visibility="private")  # a ready-made pick replaces the upload
    timer.tick(poll, shown, [status, metrics, figures, downloads, shown], api_visibility="private")
    target.focus(lambda: gr.Dropdown(choices=targets()), None, target, api_visibility="private")
    target.change(confirm_visible, target, confirm, api_visibility="private")


__all__ = ["build", "progress_text", "report_section"]
