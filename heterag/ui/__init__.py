"""User interfaces over the public API: the web app (:mod:`heterag.ui.server`, ``python app.py``) and
the terminal chat (``python -m heterag.ui.terminal``).

The logic lives in :mod:`heterag.ui.service` (no Gradio), the Gradio wiring in
:mod:`heterag.ui.webapp`, upload safety in :mod:`heterag.ui.uploads`, HTML in :mod:`heterag.ui.render`.
"""
