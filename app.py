"""Terminal chat over the built-in demo collection (the Gradio UI arrives with its own issue).

    python app.py                      # ask questions about Python, answers cite their sources
    python app.py --collection NAME    # chat with one of your own collections

Ask about an image with ``/image PATH [question]`` (the question is optional).
"""

from __future__ import annotations

import argparse
import logging
import sys

from heterag import HeteragError, open_collection


def main() -> int:
    ap = argparse.ArgumentParser(description="Chat with a heterag collection in the terminal.")
    ap.add_argument("--collection", default=None, help="collection name (default: the built-in demo)")
    ap.add_argument("-k", "--top-k", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.collection:
            rag = open_collection(args.collection, create=False)
        else:
            from corpora.demo import open_demo

            rag = open_demo()
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
                if image is not None:
                    from heterag import ImageRef

                    image = ImageRef.from_path(image)
                print(rag.answer(question, k=args.top_k, image=image).format())
            except HeteragError as exc:
                print(f"error: {exc}")
    finally:
        rag.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
