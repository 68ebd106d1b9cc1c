"""The web app's Sandbox tab (plugged in through ``heterag.app_tabs``, see :mod:`heterag.ui.plugins`).

Modules: :mod:`~sandbox.app.scenarios` (ready-made and uploaded scenarios, the tab's overrides),
:mod:`~sandbox.app.worker` (a run in its own process, reporting progress to a status file),
:mod:`~sandbox.app.runs` (starting, polling, cancelling and recovering those processes),
:mod:`~sandbox.app.live` (the chat overlay: banner, flagged sources, chat defenses),
:mod:`~sandbox.app.report_view` (the report in the tab) and :mod:`~sandbox.app.tab` (the layout).
Importing this package is cheap: the tab's modules load when the app builds it.
"""

from __future__ import annotations

from typing import Any


def build_tab(ctx: Any) -> None:
    """Build the Sandbox tab inside the caller's ``gr.Tab`` (``ctx``: :class:`heterag.ui.plugins.AppContext`)."""
    from .tab import build

    build(ctx)


build_tab.title = "Sandbox"  # type: ignore[attr-defined]

__all__ = ["build_tab"]
