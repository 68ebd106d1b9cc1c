"""Chat latency while the knowledge tab ingests into the same collection (issue 25, point 5).

    python eval/chat_during_ingest.py                  # 400 uploaded documents, questions every 0.25 s
    python eval/chat_during_ingest.py --docs 100 --json

Runs the app's :class:`~heterag.ui.service.ChatService` in this process (as ``python app.py`` does: the
chat and the knowledge tab are threads of one process): a collection with a few documents is created,
then ``--docs`` Markdown files (SciFact abstracts from the shared data, or generated paragraphs when it
is absent) are ingested into it through the upload path (``ChatService.ingest_uploads``) in a thread,
while text questions to that collection are asked one after another (``--gap`` seconds apart), each timed
from the call to its final answer. The same questions are timed on the quiet app first. Prints p50, p95
and max of both and writes ``eval/out/chat_during_ingest.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# as heterag.ui.server sets them for the app, before torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HETERAG_NO_PROGRESS", "1")

from eval._common import OUT_DIR, percentiles_ms  # noqa: E402

QUESTIONS = [
    "What causes tides?",
    "How does white matter develop in newborns?",
    "What is the effect of vitamin D on bone density?",
    "Which proteins regulate the cell cycle?",
    "Does smoking increase the risk of cancer?",
    "How do antibiotics kill bacteria?",
]
SEED_NOTES = {
    "tides.md": "# Tides\n\nOcean tides are caused mainly by the gravitational pull of the Moon and, less, the Sun.",
    "bread.md": "# Bread\n\nSourdough bread rises because wild yeast and lactic acid bacteria ferment the dough.",
    "bones.md": "# Bones\n\nVitamin D helps the gut absorb calcium, which bones need to stay dense.",
}


def documents(n: int) -> list[tuple[str, str]]:
    """``n`` (file name, Markdown text) pairs: SciFact abstracts when the shared data is there, else generated."""
    data = Path(os.environ.get("HETERAG_DATA_DIR", ROOT.parent / "shared" / "data")) / "scifact_train" / "corpus.jsonl"
    out: list[tuple[str, str]] = []
    if data.exists():
        with open(data, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if len(row.get("text", "")) > 400:
                    out.append((f"scifact-{row['_id']}.md", f"# {row['title']}\n\n{row['text']}\n"))
                if len(out) >= n:
                    return out
    import random

    rng = random.Random(0)
    words = ("cell protein gene tissue signal pathway growth response patient study dose effect risk model "
             "membrane receptor enzyme binding level control cohort trial outcome marker").split()
    while len(out) < n:
        paras = [" ".join(rng.choice(words) for _ in range(rng.randint(40, 90))).capitalize() + "." for _ in range(4)]
        out.append((f"doc-{len(out):04d}.md", f"# Document {len(out)}\n\n" + "\n\n".join(paras) + "\n"))
    return out


def question(i: int) -> str:
    """The ``i``-th question: no two alike, so that no answer comes from the encoder's cache of recent texts."""
    return f"{QUESTIONS[i % len(QUESTIONS)][:-1]}, case {i}?"


def ask_timed(service, collection: str, question: str) -> tuple[float, bool]:
    from heterag.ui.config import ChatSettings
    from heterag.ui.service import Done

    t0 = time.perf_counter()
    events = list(service.ask(question, None, ChatSettings(collection=collection)))
    return time.perf_counter() - t0, isinstance(events[-1], Done)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=400, help="documents uploaded in the ingest (default 400)")
    ap.add_argument("--gap", type=float, default=0.25, help="seconds between two questions (default 0.25)")
    ap.add_argument("--quiet-questions", type=int, default=20, help="questions timed before the ingest (default 20)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="heterag-eval-") as tmp:
        os.environ["HETERAG_HOME"] = str(Path(tmp) / "home")
        from heterag.ui.config import AppConfig
        from heterag.ui.service import ChatService

        service = ChatService(AppConfig())
        service.create_collection("notes")
        up = Path(tmp) / "up"
        up.mkdir()
        seed = []
        for name, text in SEED_NOTES.items():
            (up / name).write_text(text, encoding="utf-8")
            seed.append((name, up / name))
        list(service.ingest_uploads("notes", seed))
        service.warm_up("notes")
        ask_timed(service, "notes", "warm up the generator")

        quiet = [ask_timed(service, "notes", question(i))[0] for i in range(args.quiet_questions)]

        import zipfile

        archive = up / "papers.zip"  # one upload of every document (a request takes at most 100 files)
        with zipfile.ZipFile(archive, "w") as zf:
            for name, text in documents(args.docs):
                zf.writestr(f"papers/{name}", text)
        files = [("papers.zip", archive)]
        box: dict[str, object] = {}

        def ingest() -> None:
            t0 = time.perf_counter()
            updates = list(service.ingest_uploads("notes", files))
            box["seconds"] = time.perf_counter() - t0
            box["status"] = updates[-1].status

        worker = threading.Thread(target=ingest, name="eval-ingest")
        worker.start()
        while not service.progress("notes") and worker.is_alive():
            time.sleep(0.01)
        busy: list[float] = []
        failed = 0
        i = 0
        while worker.is_alive():
            seconds, ok = ask_timed(service, "notes", question(1000 + i))
            if worker.is_alive():  # only questions that ran entirely during the ingest
                busy.append(seconds)
                failed += not ok
            i += 1
            time.sleep(args.gap)
        worker.join()
        service.close()

    q50, q95 = percentiles_ms(quiet)
    b50, b95 = percentiles_ms(busy) if busy else (float("nan"), float("nan"))
    result = {
        "documents": args.docs, "ingest_seconds": round(float(box.get("seconds", 0.0)), 1), "ingest": box.get("status"),
        "quiet": {"n": len(quiet), "p50_ms": round(q50), "p95_ms": round(q95), "max_ms": round(1000 * max(quiet))},
        "during_ingest": {"n": len(busy), "p50_ms": round(b50), "p95_ms": round(b95),
                          "max_ms": round(1000 * max(busy)) if busy else None, "failed": failed},
        "cores": os.cpu_count(),
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "chat_during_ingest.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        d = result["during_ingest"]
        print(f"ingest of {args.docs} uploaded documents: {result['ingest_seconds']} s ({result['ingest']})")
        print(f"quiet app:     {len(quiet)} questions, p50 {q50:.0f} ms, p95 {q95:.0f} ms")
        print(f"during ingest: {d['n']} questions, p50 {b50:.0f} ms, p95 {b95:.0f} ms, max {d['max_ms']} ms, "
              f"{failed} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
