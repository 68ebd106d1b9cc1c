"""Start-up times of the web app on the built-in demos: cold (nothing indexed yet) and warm.

    python eval/app_start.py                      # a fresh HETERAG_HOME: cold start, then a warm restart
    python eval/app_start.py --home DIR           # use DIR (warm when the demos are already there)

Each start runs ``python app.py`` on a free port and measures, from the moment the process is
launched: the page answering over HTTP; the first text question answered through the ``/chat``
API (not "the demo is still being built"); the first image question answered; then the time to
the first streamed token of one more text and one image question. Writes
``eval/out/app_start.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"app_start.py: the app exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"app_start.py: {url} did not answer within {timeout:g} s")


def first_answer(client, question: str, image, timeout: float) -> None:
    """Ask until the app answers (the demos may still be being built)."""
    end = time.monotonic() + timeout
    while True:
        try:
            text, _ = client.predict(question, image, "", 5, api_name="/chat")
            if text.strip():
                return
        except Exception as exc:  # "still being built": ask again
            if time.monotonic() > end:
                raise SystemExit(f"app_start.py: no answer within {timeout:g} s: {exc}") from None
        time.sleep(0.5)


def ttft(client, question: str, image) -> float:
    """Seconds to the first streamed output with text."""
    from load_app import watch  # eval/, beside this script

    t0 = time.perf_counter()
    return watch(client.submit(question, image, "", 5, api_name="/chat"), t0)[0]


def start(home: Path, image_path: Path, timeout: float) -> dict:
    from gradio_client import Client, handle_file

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "HETERAG_HOME": str(home)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(url, proc, timeout)
        http = time.perf_counter() - t0
        client = Client(url, verbose=False, ssl_verify=False)
        first_answer(client, "How do I define a generator?", None, timeout)
        text_ready = time.perf_counter() - t0
        image = handle_file(str(image_path))
        first_answer(client, "", image, timeout)
        image_ready = time.perf_counter() - t0
        text_ttft = [ttft(client, q, None) for q in ("What is a decorator?", "How are exceptions raised?",
                                                      "What does the with statement do?")]
        image_ttft = [ttft(client, q, image) for q in ("", "How many objects are there?", "")]
    finally:
        proc.terminate()
        proc.wait(30)
    return {"http_s": round(http, 2), "text_chat_s": round(text_ready, 2), "image_chat_s": round(image_ready, 2),
            "ttft_text_s": [round(x, 3) for x in text_ttft], "ttft_image_s": [round(x, 3) for x in image_ttft]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", help="HETERAG_HOME to use (default: a fresh temporary one, so the first start is cold)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds to wait for each step")
    ap.add_argument("--out", default=str(ROOT / "eval" / "out" / "app_start.json"))
    args = ap.parse_args()
    from corpora.synthetic_scenes import render_scene

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(args.home) if args.home else Path(tmp) / "home"
        image = Path(tmp) / "scene.png"
        render_scene(7, seed=0).image.save(image)
        runs = {"first": start(home, image, args.timeout), "second": start(home, image, args.timeout)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(runs, indent=2))
    print("| start | page over HTTP s | text chat answers s | image chat answers s | TTFT text s | TTFT image s |")
    print("|---|---|---|---|---|---|")
    for name, r in runs.items():
        print(f"| {name} | {r['http_s']} | {r['text_chat_s']} | {r['image_chat_s']} | "
              f"{', '.join(map(str, r['ttft_text_s']))} | {', '.join(map(str, r['ttft_image_s']))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
