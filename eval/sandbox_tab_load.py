"""The Sandbox tab under load: time from clicking Run to the report, and chat latency meanwhile.

Starts ``python app.py`` on a fresh home with a collection ``notes`` (synthetic scene captions and a few
notes), opens the app in Chromium (Playwright), picks a ready-made scenario in the Sandbox tab and clicks
Run, then asks the chat text questions through the app's ``/chat`` API (gradio_client) until the report
is shown. Prints the time from the click to the report (the tab shows the metrics table), the
scenario's own stage seconds, and the chat latency percentiles during the run.

    python eval/sandbox_tab_load.py                       # m3att_synthetic
    python eval/sandbox_tab_load.py --scenario mrm_synthetic --interval 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("HETERAG_CHROMIUM", "/usr/bin/chromium")
QUESTIONS = ["What colour is the background of the scene with a red circle?", "Which scene shows a blue square?",
             "What causes the tides?", "How many objects are in a scene with a green triangle?"]


def make_home(home: Path) -> None:
    from corpora.synthetic_scenes import iter_synthetic_documents
    from heterag import Document, open_collection

    pipe = open_collection("notes", home=home)
    try:
        pipe.ingest([Document.create("Tides are caused mainly by the gravitational pull of the Moon.", id="tides.md"),
                     *iter_synthetic_documents(200, seed=0)])
    finally:
        pipe.close()


def start_app(home: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HETERAG_HOME": str(home), "HETERAG_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--collection", "notes", "--port", str(port)],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"app.py exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return proc
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise SystemExit("app.py did not start within 180 s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="m3att_synthetic")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between chat questions")
    ap.add_argument("--port", type=int, default=7871)
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    from gradio_client import Client
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="sandbox-tab-load-"))
    home = work / "home"
    make_home(home)
    proc = start_app(home, args.port, work / "app.log")
    url = f"http://127.0.0.1:{args.port}/"
    latencies: list[float] = []
    stop = threading.Event()

    def chat() -> None:
        client = Client(url, verbose=False)
        i = 0
        while not stop.is_set():
            t = time.perf_counter()
            client.predict(QUESTIONS[i % len(QUESTIONS)], None, "notes", 5, api_name="/chat")
            latencies.append(time.perf_counter() - t)
            i += 1
            stop.wait(args.interval)

    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(url)
            page.wait_for_selector("#hr-box textarea")
            Client(url, verbose=False).predict(QUESTIONS[0], None, "notes", 5, api_name="/chat")  # warm
            page.get_by_role("tab", name="Sandbox").click()
            picker = page.locator("#hr-sb-scenario input")
            picker.click()
            page.get_by_role("option", name=args.scenario, exact=True).click()
            baseline: list[float] = []
            client = Client(url, verbose=False)
            for q in QUESTIONS * 3:  # idle latency, for comparison
                t = time.perf_counter()
                client.predict(q, None, "notes", 5, api_name="/chat")
                baseline.append(time.perf_counter() - t)
            thread = threading.Thread(target=chat, daemon=True)
            t0 = time.perf_counter()
            page.locator("#hr-sb-run").click()
            thread.start()
            page.wait_for_function("(document.querySelector('#hr-sb-metrics')?.innerText || '').includes('asr@')",
                                   timeout=args.timeout * 1000)
            to_report = time.perf_counter() - t0
            stop.set()
            thread.join(60)
            status = page.locator("#hr-sb-status").inner_text()
            browser.close()
        runs = sorted((home / "sandbox" / "app-runs").iterdir())
        data = json.loads((runs[-1] / "status.json").read_text())
        lat = np.array(latencies)
        print(f"scenario {args.scenario}: click -> report shown {to_report:.1f} s (worker wall {data.get('wall_seconds', 0):.1f} s); "
              f"stages: {', '.join(f'{n} {s:.1f} s' for n, s in data['stages'])}")
        print(f"chat, idle: {len(baseline)} text questions, p50 {np.percentile(baseline, 50):.2f} s, "
              f"p95 {np.percentile(baseline, 95):.2f} s")
        print(f"chat during the run: {len(lat)} text questions, p50 {np.percentile(lat, 50):.2f} s, "
              f"p95 {np.percentile(lat, 95):.2f} s, max {lat.max():.2f} s")
        print(f"status: {' | '.join(status.splitlines())}")
    finally:
        proc.terminate()
        proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
