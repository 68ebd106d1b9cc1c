"""Load test of a running web app through its ``/chat`` API (Gradio's HTTP API, or gradio_client).

    python app.py &                                   # the demos (or --collection NAME)
    python eval/load_app.py --url http://127.0.0.1:7860/ --users 20 --questions 20

First one user asks ``--questions`` questions alone (the baseline), then ``--users`` sessions ask
at the same time, ``--questions`` each, with ``--think`` seconds between a user's questions (0:
back to back). Every question is asked once: the single user and the sessions draw disjoint
questions from one shuffled pool (``--seed``), so no answer is cheaper because the same question
came before. The pool mixes text and image questions (every third an image): about 300 text
questions built from the titles of the text demo's topics, and the 300 scenes of the image demo,
half of them with one of the scene's own questions, half alone. Reports errors, p50/p95 latency,
time to the first streamed token and throughput (answered questions per second of the phase's wall
time), for the single user and under load, as a table and as JSON (``eval/out/load_app.json``).

Before/after in one run: ``--app LABEL=COMMAND`` (repeatable) starts each app command itself (it must
print ``heterag app: URL``, as ``python app.py`` does; ``{port}`` in it becomes a free port), measures it
with the same questions, stops it, and reports each app's rows with its throughput relative to the first;
``--rounds N`` repeats the list (ABAB...) so that a change in the machine's load hits both alike::

    git archive HEAD | tar -x -C /tmp/before
    python eval/load_app.py --users 20 --questions 20 \\
        --app "before=env PYTHONPATH=/tmp/before python /tmp/before/app.py --port {port}" \\
        --app "after=python app.py --port {port}"
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

TEXT_TEMPLATES = ("What is {t}?", "How does {t} work in Python?", "Give an example of {t}.",
                  "What are the rules for {t}?")
IMAGE_COLLECTION_DEFAULT = ""  # the app's own choice: the scenes demo when it serves the demos, else its collection
SCENES = 300  # the image demo's scenes
POLL_S = 0.005  # how often a user looks for streamed output: the resolution of the time to first token


@dataclass(frozen=True)
class Question:
    text: str
    image: Path | None = None

    @property
    def kind(self) -> str:
        return "text" if self.image is None else "image"


def text_questions() -> list[str]:
    """Questions about the text demo's topics: each title in four phrasings."""
    from corpora.pydoc_topics import load_pydoc_topics

    titles = sorted({d.title.replace('"', "").strip() for d in load_pydoc_topics()})
    return [t.format(t=title[0].lower() + title[1:]) for title in titles for t in TEXT_TEMPLATES]


def image_questions(folder: Path) -> list[Question]:
    """The image demo's scenes (as PNG files in ``folder``): odd ones with one of their questions."""
    from corpora.synthetic_scenes import render_scene

    out = []
    for i in range(SCENES):
        scene = render_scene(i, seed=0)
        path = folder / f"scene-{i}.png"
        scene.image.save(path)
        text = scene.qa[i % len(scene.qa)].question if i % 2 and scene.qa else ""
        out.append(Question(text, path))
    return out


def question_pool(folder: Path, seed: int) -> list[Question]:
    """Text and image questions shuffled so that every third is an image question."""
    rng = random.Random(seed)
    texts = [Question(q) for q in text_questions()]
    images = image_questions(folder)
    rng.shuffle(texts)
    rng.shuffle(images)
    pool = []
    while texts or images:
        take_image = len(pool) % 3 == 2 and images or not texts
        pool.append(images.pop() if take_image else texts.pop())
    return pool


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    i = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[i]


def ask(client, question: Question, collection: str, k: int) -> tuple[float, float]:
    """(seconds to the first streamed output with text, seconds to the end) of one question."""
    if isinstance(client, HttpChat):
        return client.ask(question, collection, k)
    from gradio_client import handle_file

    t0 = time.perf_counter()
    image = handle_file(str(question.image)) if question.image else None
    return watch(client.submit(question.text, image, collection, k, api_name="/chat"), t0)


class HttpChat:
    """One user on Gradio's documented HTTP API (the one ``curl`` uses): ``POST /gradio_api/upload`` for an
    image, ``POST /gradio_api/call/chat`` for the question, then ``GET /gradio_api/call/chat/EVENT_ID``, a
    server-sent-event stream of ``generating`` updates and one ``complete`` (or ``error``). One keep-alive
    ``httpx`` connection per user and a blocking read of the stream: no polling, so the load generator takes
    little of the CPU the app under test runs on, and the time to the first token is exact."""

    def __init__(self, url: str, timeout: float = 300.0):
        import httpx

        self.base = url.rstrip("/") + "/gradio_api"
        self.http = httpx.Client(timeout=timeout)
        self.session = uuid.uuid4().hex[:12]  # one Gradio session per user, as a browser tab or gradio_client has

    def ask(self, question: Question, collection: str, k: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        image = None
        if question.image is not None:
            with open(question.image, "rb") as fh:
                resp = self.http.post(f"{self.base}/upload", files={"files": (question.image.name, fh, "image/png")})
            resp.raise_for_status()
            image = {"path": resp.json()[0], "meta": {"_type": "gradio.FileData"}}
        resp = self.http.post(f"{self.base}/call/chat", json={"data": [question.text, image, collection, k],
                                                                  "session_hash": self.session})
        resp.raise_for_status()
        event_id = resp.json()["event_id"]
        first, event = None, ""
        with self.http.stream("GET", f"{self.base}/call/chat/{event_id}") as stream:
            stream.raise_for_status()
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data = json.loads(line[5:])
                    if event == "error":
                        raise RuntimeError(f"the app answered with an error: {data}")
                    if event in ("generating", "complete") and first is None and data and str(data[0] or "").strip():
                        first = time.perf_counter() - t0
                    if event == "complete":
                        total = time.perf_counter() - t0
                        return (first if first is not None else total), total
        raise RuntimeError("the event stream ended without a complete event")

    def close(self) -> None:
        self.http.close()


def watch(job, t0: float) -> tuple[float, float]:
    """(seconds from ``t0`` to the first streamed output with text, to the end) of a ``/chat`` job.

    Looks at the outputs every POLL_S seconds (iterating over the job would poll every 1 ms, and
    twenty such loops take a good share of the 2 cores the app under test runs on). Raises if the
    app reported an error."""
    first = None
    while True:
        done = job.done()
        if first is None and any(out and str(out[0]).strip() for out in job.outputs()):
            first = time.perf_counter() - t0
        if done:
            break
        time.sleep(POLL_S)
    job.result()
    total = time.perf_counter() - t0
    return (first if first is not None else total), total


def run_user(url: str, user: int, questions: list[Question], args, results: list, errors: list) -> None:
    rng = random.Random(user)
    if args.ramp:
        time.sleep(rng.uniform(0, args.ramp))  # users arrive one by one, not all in the same instant
    try:
        if args.client == "http":
            client = HttpChat(url)
        else:
            from gradio_client import Client

            # ssl_verify=False: the app is served over plain http on loopback, and with it gradio_client does not
            # load the CA bundle anew for every request it sends (measurable CPU on the cores the app shares)
            client = Client(url, verbose=False, ssl_verify=False)
    except Exception as exc:
        errors.append(f"user {user}: connect: {exc}")
        return
    for i, q in enumerate(questions):
        coll = args.image_collection if q.image else args.collection
        try:
            start = time.time()
            ttft, total = ask(client, q, coll, args.k)
            results.append({"user": user, "kind": q.kind, "start": start, "ttft": ttft, "latency": total})
        except Exception as exc:
            errors.append(f"user {user} q{i}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        if args.think:
            time.sleep(rng.uniform(0.5, 1.5) * args.think)
    if isinstance(client, HttpChat):
        client.close()


def summarize(results: list[dict], errors: list[str], seconds: float) -> dict:
    out = {"questions": len(results) + len(errors), "errors": len(errors), "seconds": round(seconds, 1),
           "throughput_qps": round(len(results) / seconds, 2) if seconds > 0 else float("nan")}
    for kind in ("text", "image", "all"):
        rows = [r for r in results if kind == "all" or r["kind"] == kind]
        lat, ttft = [r["latency"] for r in rows], [r["ttft"] for r in rows]
        out[kind] = {"n": len(rows), "p50": percentile(lat, 50), "p95": percentile(lat, 95),
                     "ttft_p50": percentile(ttft, 50), "ttft_p95": percentile(ttft, 95),
                     "mean": statistics.fmean(lat) if lat else float("nan")}
    return out


def phase(url: str, users: int, per_user: int, pool: list[Question], args) -> dict:
    """``users`` sessions at once, each asking its own ``per_user`` questions taken from the front of ``pool``."""
    results: list[dict] = []
    errors: list[str] = []
    mine = [[pool.pop(0) for _ in range(per_user)] for _ in range(users)]
    t0 = time.perf_counter()
    threads = [threading.Thread(target=run_user, args=(url, u, mine[u], args, results, errors)) for u in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = summarize(results, errors, time.perf_counter() - t0)
    out["error_lines"] = errors[:20]
    out["requests"] = sorted(results, key=lambda r: r["start"])
    return out


def measure(url: str, args) -> dict:
    """The warm-up, single-user and load phases against the app at ``url``; the report as JSON-ready dict."""
    with tempfile.TemporaryDirectory() as tmp:
        pool = question_pool(Path(tmp), args.seed)
        needed = 2 + args.questions * (1 + args.users)
        if needed > len(pool):
            sys.exit(f"load_app.py: {needed} questions needed but the pool has {len(pool)}; ask fewer")
        # one text and one image question first: the first request of each kind loads things
        warm = [pool.pop(0), pool.pop(next(i for i, q in enumerate(pool) if q.image))]
        warm_errors: list[str] = []
        run_user(url, 999, warm, argparse.Namespace(**{**vars(args), "think": 0, "ramp": 0}), [], warm_errors)
        for line in warm_errors:
            print("error (warm-up):", line, file=sys.stderr)
        single = phase(url, 1, args.questions, pool, args)
        load = phase(url, args.users, args.questions, pool, args)
    return {"url": url, "client": args.client, "users": args.users, "questions_per_user": args.questions, "think_s": args.think,
            "ramp_s": args.ramp, "seed": args.seed, "single": single, "load": load,
            "p95_ratio": load["all"]["p95"] / single["all"]["p95"] if single["all"]["p95"] else None}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_app(command: str, timeout: float = 900.0) -> tuple[subprocess.Popen, str]:
    """Start ``command`` (an app that prints ``heterag app: URL``; ``{port}`` in it becomes a free port, so that
    a restarted app does not find its last port still held by closing connections); returns the process and the URL."""
    proc = subprocess.Popen(shlex.split(command.replace("{port}", str(free_port()))), stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    found: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:  # keep reading, so the app never blocks on a full pipe
            m = re.search(r"heterag app: (\S+)", line)
            if m and not found:
                found.append(m.group(1))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_app(proc)
            sys.exit(f"load_app.py: {command!r} did not start (exit status {proc.returncode})")
        time.sleep(0.2)
    return proc, found[0]


def stop_app(proc: subprocess.Popen) -> None:
    """SIGTERM the app's process group (the app deletes its uploads on the way out), then SIGKILL after 20 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def table(rows: list[tuple[str, dict]], users: int) -> None:
    print("| run | users | questions | errors | p50 s | p95 s | TTFT p50 text s | TTFT p50 image s | TTFT p95 s | throughput q/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, report in rows:
        for name, r, u in (("single user", report["single"], 1), (f"{users} users", report["load"], users)):
            print(f"| {label}{name} | {u} | {r['questions']} | {r['errors']} | {r['all']['p50']:.3f} | {r['all']['p95']:.3f} | "
                  f"{r['text']['ttft_p50']:.3f} | {r['image']['ttft_p50']:.3f} | {r['all']['ttft_p95']:.3f} | "
                  f"{r['throughput_qps']:.2f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:7860/")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--questions", type=int, default=20, help="questions per user")
    ap.add_argument("--think", type=float, default=0.0, help="mean seconds a user waits between questions "
                    "(each wait drawn uniformly from 0.5x to 1.5x)")
    ap.add_argument("--ramp", type=float, default=None, help="users start at random times within the first RAMP "
                    "seconds (default: --think; 0: all at once)")
    ap.add_argument("--collection", default="", help="collection for text questions (default: the app's)")
    ap.add_argument("--image-collection", default=IMAGE_COLLECTION_DEFAULT, help="collection for image questions")
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="shuffles the question pool")
    ap.add_argument("--client", choices=("http", "gradio"), default="http",
                    help="http: Gradio's HTTP API with httpx, one blocking event stream per question (light); "
                         "gradio: gradio_client, polled every 5 ms (what the first figures of issue #26 used)")
    ap.add_argument("--app", action="append", default=[], metavar="LABEL=COMMAND",
                    help="start this app command, measure it, stop it (repeatable: before/after in one run; "
                         "--url is then not used)")
    ap.add_argument("--rounds", type=int, default=1, help="with --app: measure the list of apps this many times")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "load_app.json"))
    args = ap.parse_args()
    if args.ramp is None:
        args.ramp = args.think
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if not args.app:
        report = measure(args.url, args)
        Path(args.out).write_text(json.dumps(report, indent=2))
        table([("", report)], args.users)
        print(f"p95 under load / single-user p95 = {report['p95_ratio']:.2f} (think time {args.think:g} s)")
        for phase_name in ("single", "load"):
            for line in report[phase_name]["error_lines"]:
                print(f"error ({phase_name}):", line, file=sys.stderr)
        return 1 if report["load"]["errors"] or report["single"]["errors"] else 0
    apps = [(m.group(1), m.group(2)) if (m := re.match(r"([\w.-]+)=(.+)", a)) else (f"app{i + 1}", a)
            for i, a in enumerate(args.app)]
    runs: list[dict] = []
    for rnd in range(args.rounds):
        for label, command in apps:
            proc, url = start_app(command)
            try:
                report = measure(url, args)
            finally:
                stop_app(proc)
            runs.append({"label": label, "round": rnd + 1, "command": command, **report})
            Path(args.out).write_text(json.dumps({"runs": runs}, indent=2))
    table([(f"{r['label']} (round {r['round']}): ", r) for r in runs], args.users)
    base = runs[0]
    for r in runs:
        print(f"{r['label']} round {r['round']}: p95 under load / single-user p95 = {r['p95_ratio']:.2f}; "
              f"throughput {r['load']['throughput_qps']:.2f} q/s = {r['load']['throughput_qps'] / base['load']['throughput_qps']:.2f}x "
              f"{base['label']}'s round 1 (think time {args.think:g} s)")
        for phase_name in ("single", "load"):
            for line in r[phase_name]["error_lines"]:
                print(f"error ({r['label']}, {phase_name}):", line, file=sys.stderr)
    return 1 if any(r["load"]["errors"] or r["single"]["errors"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
