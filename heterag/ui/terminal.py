"""Terminal chat: ``python -m heterag.ui.terminal [--collection NAME] [-k 5]``.

Ask questions until an empty line; ``/image PATH [question]`` asks about an image.
Without ``--collection`` it uses the built-in text demo (indexed once on first use).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from heterag.collections.collection import open_collection
from heterag.core.errors import HeteragError
from heterag.core.images import ImageRef


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m heterag.ui.terminal", description="Chat with a heterag collection in the terminal.")
    ap.add_argument("--collection", default=None, help="collection name (default: the built-in demo)")
    ap.add_argument("-k", "--top-k", type=int, default=5)
    ap.add_argument("--retrieval", choices=("dense", "keyword", "hybrid"), help="how questions are searched (default: "
                    "hybrid where the collection has a keyword index, else dense)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.collection:
            rag = open_collection(args.collection, create=False, retrieval=args.retrieval)
        else:
            from corpora.demo import open_demo

            rag = open_demo(retrieval=args.retrieval)
        try:
            rag.retrieval_mode()  # keyword/hybrid asked of a collection without a keyword index: one line, now
        except HeteragError:
            rag.close()
            raise
    except HeteragError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"heterag chat: {rag.count()} chunks. /image PATH [question] asks about an image. Empty line or Ctrl-D to quit.")
    try:
        while True:
            try:
                question = input("\nyou> ").strip()
            except EOFError:
                break
            if not question:
                break
            image = None
            if question.startswith("/image"):
                parts = question.split(maxsplit=2)
                if len(parts) < 2:
                    print("usage: /image PATH [question]")
                    continue
                image, question = parts[1], parts[2] if len(parts) > 2 else ""
            try:
                ref = ImageRef.from_path(image) if image is not None else None
                print(rag.answer(question, k=args.top_k, image=ref).format())
            except HeteragError as exc:
                print(f"error: {exc}")
    finally:
        rag.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
