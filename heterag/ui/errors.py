"""Errors the app shows to a user (a missing collection, an empty question, a bad image): one log line
each, never a traceback (Gradio prints one for every :class:`gradio.Error` unless told not to)."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("heterag.ui")


def user_error(message: str, *, where: str = "chat API") -> Any:
    """A :class:`gradio.Error` showing ``message`` that Gradio does not print a traceback for; ``message``
    is logged once, in one line, naming ``where`` it happened. Raise it: ``raise user_error(...)``."""
    import gradio as gr

    line = " ".join(str(message).split())
    log.warning("%s: %s", where, line)
    return gr.Error(line, print_exception=False)


__all__ = ["user_error"]
