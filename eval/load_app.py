"""Load test of a running web app through its ``/chat`` API (gradio_client).

    python app.py &                                   # the demos (or --collection NAME)
    python eval/load_app.py --url http://127.0.0.1:7860/ --users 20 --questions 20

First one user asks the questions alone (the baseline), then ``--users`` sessions ask at the same
time, each its own ``--questions`` (mixed: every third is an image of a synthetic scene), with
``--think`` seconds between a user's questions (0: back to back). Reports errors, p50/p95 latency
and time to the first streamed token, for the single user and under load, as a table and as JSON
(``eval/out/load_app.json``).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

TEXT_QUESTIONS = [
    "How do I define a generator?", "What does the with statement do?", "How are exceptions raised?",
    "What is a decorator?", "How does slicing work on sequences?", "What is the difference between is and ==?",
    "How do I define a class?", "What does yield from do?", "How do lambda expressions work?",
    "What are keyword arguments?", "How does the import statement find modules?", "What is a coroutine?",
]
IMAGE_COLLECTION_DEFAULT = ""  # the app's default: the scenes demo for image questions


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    i = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[i]


def make_images(folder: Path, n: int = 10) -> list[Path]:
    from corpora.synthetic_scenes import render_scene

    paths = []
    for i in range(n):
        p = folder / f"scene-{i}.png"
        render_scene(i * 7 % 300, seed=0).image.save(p)
        paths.append(p)
    return paths


def ask(client, question: str, image: Path | None, collection: str, k: int) -> tuple[float, float]:
    """(seconds to the first streamed output with text, seconds to the end) of one question."""
    from gradio_client import handle_file

    t0 = time.perf_counter()
    first = None
    job = client.submit(question, handle_file(str(image)) if image else None, collection, k, api_name="/chat")
    for out in job:
        if first is None and out and str(out[0]).strip():
            first = time.perf_counter() - t0
    job.result()  # raises if the app reported an error
    total = time.perf_counter() - t0
    return (first if first is not None else total), total


def run_user(url: str, user: int, n: int, images: list[Path], args, results: list, errors: list) -> None:
    from gradio_client import Client

    rng = random.Random(user)
    try:
        client = Client(url, verbose=False)
    except Exception as exc:
        errors.append(f"user {user}: connect: {exc}")
        return
    for i in range(n):
        is_image = i % 3 == 2
        q = "" if is_image else rng.choice(TEXT_QUESTIONS)
        img = rng.choice(images) if is_image else None
        coll = args.image_collection if is_image else args.collection
        try:
            ttft, total = ask(client, q, img, coll, args.k)
            results.append({"user": user, "kind": "image" if is_image else "text", "ttft": ttft, "latency": total})
        except Exception as exc:
            errors.append(f"user {user} q{i}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        if args.think:
            time.sleep(rng.uniform(0.5, 1.5) * args.think)


def summarize(results: list[dict], errors: list[str], seconds: float) -> dict:
    out = {"questions": len(results) + len(errors), "errors": len(errors), "seconds": round(seconds, 1)}
    for kind in ("text", "image", "all"):
        rows = [r for r in results if kind == "all" or r["kind"] == kind]
        lat, ttft = [r["latency"] for r in rows], [r["ttft"] for r in rows]
        out[kind] = {"n": len(rows), "p50": percentile(lat, 50), "p95": percentile(lat, 95),
                     "ttft_p50": percentile(ttft, 50), "ttft_p95": percentile(ttft, 95),
                     "mean": statistics.fmean(lat) if lat else float("nan")}
    return out


def phase(url: str, users: int, n: int, images: list[Path], args) -> dict:
    results: list[dict] = []
    errors: list[str] = []
    t0 = time.perf_counter()
    threads = [threading.Thread(target=run_user, args=(url, u, n, images, args, results, errors)) for u in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = summarize(results, errors, time.perf_counter() - t0)
    out["error_lines"] = errors[:20]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:7860/")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--questions", type=int, default=20, help="questions per user")
    ap.add_argument("--think", type=float, default=0.0, help="mean seconds a user waits between questions")
    ap.add_argument("--collection", default="", help="collection for text questions (default: the app's)")
    ap.add_argument("--image-collection", default=IMAGE_COLLECTION_DEFAULT, help="collection for image questions")
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "load_app.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images = make_images(Path(tmp))
        run_user(args.url, 999, 2, images, argparse.Namespace(**{**vars(args), "think": 0}), [], [])  # warm-up
        single = phase(args.url, 1, args.questions, images, args)
        load = phase(args.url, args.users, args.questions, images, args)
    report = {"url": args.url, "users": args.users, "questions_per_user": args.questions, "think_s": args.think,
              "single": single, "load": load,
              "p95_ratio": load["all"]["p95"] / single["all"]["p95"] if single["all"]["p95"] else None}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print("| run | users | questions | errors | p50 s | p95 s | TTFT p50 text s | TTFT p50 image s | TTFT p95 s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r, u in (("single user", single, 1), (f"{args.users} users", load, args.users)):
        print(f"| {name} | {u} | {r['questions']} | {r['errors']} | {r['all']['p50']:.3f} | {r['all']['p95']:.3f} | "
              f"{r['text']['ttft_p50']:.3f} | {r['image']['ttft_p50']:.3f} | {r['all']['ttft_p95']:.3f} |")
    print(f"p95 under load / single-user p95 = {report['p95_ratio']:.2f} (think time {args.think:g} s)")
    for line in load["error_lines"]:
        print("error:", line, file=sys.stderr)
    return 1 if load["errors"] or single["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
