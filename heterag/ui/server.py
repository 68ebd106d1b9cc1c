"""``python app.py``: serve the web app (settings: :mod:`heterag.ui.config`).

Uploads land in a private temporary folder made for this process (Gradio's upload folder),
each is deleted once ingested or read, and the folder is removed at exit.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

from heterag.core.errors import HeteragError
from heterag.ui.config import DEMOS, AppConfig, parse_args

log = logging.getLogger("heterag.ui")


def serve(cfg: AppConfig, *, block: bool = True):
    """Start the app for ``cfg``; returns ``(app, service, url)`` when ``block`` is False."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Idle OpenMP threads sleep instead of spinning: a server runs many small forward passes beside other
    # work, and spinning threads then steal the cores (measured on 2 busy cores: cold text questions
    # p50 0.27 s -> 0.10 s). Read when torch loads, so it only applies when this is the first import.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # The app never downloads: a model name that is not on disk fails at once with one line, instead of
    # retrying the hub for minutes (set HF_HUB_OFFLINE=0 to allow downloads).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Gradio rebuilds a pandas summary of the last GRADIO_ANALYTICS_MAX_EVENTS (10,000) events after every
    # finished event, for a monitoring page this app turns off (enable_monitoring=False): under 20 chat users
    # that was ~3% of the app's GIL time and grows with the events served. Read when the Blocks are made.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100000")
    os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "100")
    _check_address(cfg.host, cfg.port)
    upload_dir = tempfile.mkdtemp(prefix="heterag-ui-")  # mode 0700
    os.environ["GRADIO_TEMP_DIR"] = upload_dir  # read by gradio at import: set before importing it
    from heterag.ui.render import CSS
    from heterag.ui.service import ChatService
    from heterag.ui.webapp import build_app

    t0 = time.perf_counter()
    service = ChatService(cfg)
    try:
        if cfg.chat.collection == DEMOS:
            if service.start_demos():
                log.warning("first start: building the demo collections in the background (progress shows in the app)")
            else:
                for name in (service.resolve(DEMOS, False), service.resolve(DEMOS, True)):
                    service.warm_up(name)
        else:
            service.warm_up(cfg.chat.collection)  # a missing collection is an error before anything is served
        app = build_app(service)
        # Chat questions run cfg.concurrency at a time (their own concurrency_limit, heterag.ui.webapp); the other
        # events (uploads, document lists, timers) share default_concurrency_limit. Waiting clients get their queue
        # estimate once a second, not after every finished question ("auto": one message per waiting client per
        # finished job, all on the event loop's thread). More than queue_size waiting requests are refused at once.
        app.queue(default_concurrency_limit=cfg.concurrency, max_size=cfg.queue_size, status_update_rate=1.0)
        _, url, _ = app.launch(server_name=cfg.host, server_port=cfg.port, share=cfg.share, prevent_thread_lock=True,
                               max_file_size=int(cfg.max_request_mb * 2**20), ssr_mode=False, quiet=True,
                               enable_monitoring=False, mcp_server=False, css=CSS)
    except BaseException:
        service.close()
        shutil.rmtree(upload_dir, ignore_errors=True)
        raise
    log.warning("heterag app ready on %s (started in %.1fs)", url, time.perf_counter() - t0)
    print(f"heterag app: {url}", flush=True)
    if not block:
        return app, service, url
    try:
        app.block_thread()
    finally:
        service.close()
        shutil.rmtree(upload_dir, ignore_errors=True)
    return None


def _check_address(host: str, port: int) -> None:
    """One-line :class:`HeteragError` at once when ``host:port`` cannot be listened on (taken, bad host)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise HeteragError(f"cannot listen on {host}:{port}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # as the server's own socket does (uvicorn): connections of an app that was killed, left in TIME_WAIT,
        # do not block a restart on the same port; a socket still listening there does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            why = "the port is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise HeteragError(f"cannot listen on {host}:{port}: {why} (choose another with --port)") from None


def _exit_on_sigterm() -> None:
    """SIGTERM (kill, systemd, docker stop) ends the app like Ctrl-C, so uploads are deleted on the way out."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "chromadb", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _exit_on_sigterm()
    try:
        cfg = parse_args(argv)
        serve(cfg)
    except HeteragError as exc:
        print(f"app.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
