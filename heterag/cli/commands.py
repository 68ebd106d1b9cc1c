"""``heterag`` command line: ingest, ask, eval, collections, docs, drop, train-image-encoder, tune, reembed,
migrate, keywords, and the commands other packages register (``heterag sandbox``, see :data:`COMMAND_GROUP`).

A thin shell over the library: every subcommand parses arguments, calls the public
API and prints. Errors a user can cause print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from heterag.core.errors import HeteragError, UnknownNameError

log = logging.getLogger("heterag")

EXIT_USAGE = 2
EXIT_PARTIAL = 1  # ran, but some input items failed


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``heterag: error: ...``, naming the subcommand),
    exit status 2, like every other user error."""

    def error(self, message: str):  # type: ignore[override]
        command = self.prog.partition(" ")[2]
        self.exit(EXIT_USAGE, f"heterag: error: {f'{command}: ' if command else ''}{message}\n")


def _int_at_least(low: int, what: str, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        return value
    return parse


def _float_in(low: float, what: str, *, open_low: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if value != value or value < low or (open_low and value == low) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be {'above' if open_low else 'at least'} {low}, got {text}")
        return value
    return parse


_CHUNK_TOKENS = _int_at_least(8, "--chunk-tokens", 8192)  # heterag.ingest.chunking.MIN_CHUNK_TOKENS, MAX_CHUNK_TOKENS
_NEIGHBOURS = _int_at_least(0, "--neighbours")


def _add_collection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="vector store for a new collection: chroma (default), faiss, chroma-http://HOST:PORT "
                   "(a Chroma server), postgresql://USER[:PASSWORD]@HOST[:PORT]/DB (PostgreSQL with pgvector), "
                   "qdrant[:PATH|:URL], lancedb[:PATH] or milvus[:PATH.db|:URL]")
    p.add_argument("--encoder", help="text encoder: sentence-transformers name or local path (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--view", help="retrieval view for a new collection: naive, heterag (default) or late")
    p.add_argument("--neighbours", type=_NEIGHBOURS, help="heterag view: neighbouring chunks on each side (default 1)")
    p.add_argument("--chunk-tokens", type=_CHUNK_TOKENS, help="generation chunk size in tokens (8 to 8192; default 64)")
    p.add_argument("--image-encoder", help="image encoder for a new collection: default (offline), default:DIR (retrained), "
                   "open_clip:ARCH[:PRETRAINED], open_clip:hf-hub:ORG/NAME or open_clip:ARCH:/path/to/checkpoint")
    p.add_argument("--adapter", help="text-encoder adapter (heterag tune --out ADAPTER); default: the collection's own, "
                   "'none' for none")


#: heterag.retrieval.hybrid.RETRIEVAL_MODES (not imported here: parsing stays fast)
RETRIEVAL_CHOICES = ("dense", "keyword", "hybrid")


def _add_retrieval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--retrieval", choices=RETRIEVAL_CHOICES, help="how the question's text is searched: dense "
                   "(vectors), keyword (BM25) or hybrid (both, fused; needs the collection's keyword index); default hybrid "
                   "where the collection has a keyword index, else dense")
    p.add_argument("--hybrid", metavar="SPEC", help="how hybrid retrieval fuses the two lists: convex (default) or rrf, "
                   "with settings, e.g. rrf:k=60,weight=0.5 or convex:weight=0.5,candidates=100")


def _retrieval_options(args: argparse.Namespace) -> dict[str, Any]:
    """``retrieval``/``hybrid`` keyword arguments of :func:`heterag.open_collection` from the options, checked
    (one line, exit 2) before any model loads."""
    out: dict[str, Any] = {}
    if getattr(args, "hybrid", None):
        from heterag.retrieval.hybrid import HybridFusion

        out["hybrid"] = HybridFusion.parse(args.hybrid)
    if getattr(args, "retrieval", None):
        out["retrieval"] = args.retrieval
    return out


def _view_options(args: argparse.Namespace) -> dict[str, Any] | None:
    if getattr(args, "neighbours", None) is None:
        return None
    if (args.view or "heterag") != "heterag":
        raise HeteragError("--neighbours applies to the heterag view only")
    return {"neighbours": args.neighbours}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="heterag", description="HeteRAG: retrieval views for short generation chunks.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    what = ("index documents (a folder or file of PDF, HTML, DOCX, DICOM, .txt/.md; BEIR, JSONL) or images "
            "(captions folder, COCO, VQA-RAD, MedMNIST .npz, image folder, one image)")
    p = sub.add_parser("ingest", help=what, description=what[0].upper() + what[1:] + ".")
    p.add_argument("path")
    p.add_argument("--collection", required=True)
    p.add_argument("--split", help="COCO split (e.g. val2017) or MedMNIST split (train/val/test)")
    p.add_argument("--max-doc-mb", type=_float_in(0, "--max-doc-mb", open_low=True), default=10.0, help="reject documents larger than this (default 10)")
    p.add_argument("--sync", action="store_true", help="also remove documents whose source file under PATH is gone")
    p.add_argument("--dicom-patient-tags", action="store_true", help="keep DICOM patient-identifying tags (name, id, "
                   "birth date...) in the collection; by default they are never stored")
    _add_collection_options(p)

    p = sub.add_parser("ask", help="answer a question (and/or an image) from a collection, with sources")
    p.add_argument("question", nargs="?", default="", help="the question (optional with --image)")
    p.add_argument("--image", help="a query image file")
    p.add_argument("--collection", default=None, help="collection to ask (default: the built-in demo collection: Python "
                   "reference topics, or 300 synthetic scenes when --image is given)")
    p.add_argument("-k", "--top-k", type=_int_at_least(1, "--top-k"), default=5)
    p.add_argument("--fusion", help="score fusion: weighted (default) or rrf, optionally with weights, e.g. "
                   "weighted:text=1,image=2,cross=0.5 (the default)")
    p.add_argument("--generator", default="extractive", help="extractive (offline default), local (a small offline "
                   "LLM, default the packaged SmolLM2-135M-Instruct), openai or transformers")
    p.add_argument("--model", help="openai: model name; transformers: local model folder; local: model folder or "
                   "GGUF file (default: the packaged SmolLM2)")
    p.add_argument("--base-url", help="openai: endpoint base URL (default $OPENAI_BASE_URL)")
    p.add_argument("--temperature", type=_float_in(0, "--temperature"), default=0.0)
    p.add_argument("--threads", type=_int_at_least(1, "--threads"), help="local: CPU threads while generating "
                   "(default 1, the fastest for a single request on a few cores)")
    p.add_argument("--json", action="store_true", help="print the answer and sources as JSON")
    _add_retrieval_options(p)
    _add_collection_options(p)

    p = sub.add_parser("eval", help="retrieval benchmarks")
    esub = p.add_subparsers(dest="benchmark", required=True)
    b = esub.add_parser("beir", help="index a BEIR dataset and score its test queries")
    b.add_argument("path")
    b.add_argument("--views", default="heterag", help="naive, heterag or late (comma-separate several)")
    b.add_argument("--chunk-tokens", type=_CHUNK_TOKENS, default=None)
    b.add_argument("--neighbours", type=_NEIGHBOURS, default=None)
    b.add_argument("--encoder", default=None)
    b.add_argument("--store", default="faiss", help="store used for the temporary index (default faiss)")
    b.add_argument("--split", default="test")
    b.add_argument("--adapter", default=None, help="soft-prompt adapter (heterag tune --out ADAPTER); queries it was "
                   "trained on are left out and counted")
    b.add_argument("--queries-from", default=None, help="file of query ids (one per line): evaluate only these")
    b.add_argument("--retrieval", default=None, help="dense, keyword or hybrid, comma-separate several (one ingest per "
                   "view serves them all; default: the library's default, hybrid)")
    b.add_argument("--hybrid", metavar="SPEC", default=None, help="hybrid fusion, e.g. rrf:k=60,weight=0.5 or "
                   "convex:weight=0.5,candidates=100 (default: the library's)")
    b.add_argument("--latency-queries", type=_int_at_least(0, "--latency-queries"), default=200,
                   help="time Pipeline.search on the first N queries per mode (default 200; 0: no timing)")
    b.add_argument("--json", action="store_true")
    i = esub.add_parser("images", help="near-duplicate robustness and text-to-image recall on an image layout")
    i.add_argument("path", help="any image layout (captions folder, COCO, VQA-RAD, MedMNIST .npz, image folder) or "
                   "synthetic:N[:SEED] for N built-in synthetic scenes")
    i.add_argument("--encoder", default="default", help="image encoder: default or open_clip:ARCH[:PRETRAINED]")
    i.add_argument("--split", default=None, help="COCO/MedMNIST split")
    i.add_argument("--limit", type=_int_at_least(1, "--limit"), default=None, help="use the first N images only")
    i.add_argument("--variants", default="mask,jpeg50,crop90")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--store", default="faiss")
    i.add_argument("--json", action="store_true")

    # its options live in heterag.training.image_encoder (which imports torch): parsed there, so other commands start fast
    t = sub.add_parser("train-image-encoder", add_help=False, help="train the offline default image encoder (LiT-style, "
                       "into the default text encoder's space) on synthetic scenes and captioned image folders")
    t.add_argument("train_args", nargs=argparse.REMAINDER)

    c = sub.add_parser("collections", help="list collections with their settings and counts")
    c.add_argument("--json", action="store_true")
    d = sub.add_parser("drop", help="delete a collection and everything in it")
    d.add_argument("name")
    d.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p = sub.add_parser("docs", help="list, show and delete the documents of a collection")
    dsub = p.add_subparsers(dest="docs_command", required=True)
    d = dsub.add_parser("list", help="id, title, source, chunk count and image of every document")
    d.add_argument("--collection", required=True)
    d.add_argument("--json", action="store_true")
    d = dsub.add_parser("show", help="a document's metadata and chunks")
    d.add_argument("id")
    d.add_argument("--collection", required=True)
    d.add_argument("--json", action="store_true")
    d = dsub.add_parser("delete", help="delete documents by id")
    d.add_argument("ids", nargs="+", metavar="ID")
    d.add_argument("--collection", required=True)

    # its options live in heterag.cli.tune (which imports torch): parsed there, so other commands start fast
    t = sub.add_parser("tune", add_help=False, help="train a soft-prompt adapter for the text encoder (adaptive prompt "
                       "tuning) on a BEIR folder, PubMedQA or a collection")
    t.add_argument("train_args", nargs=argparse.REMAINDER)
    r = sub.add_parser("reembed", help="re-embed a collection with another adapter (built alongside, then switched)")
    r.add_argument("--collection", required=True)
    r.add_argument("--adapter", required=True, help="adapter path, or 'none' to remove the adapter")

    m = sub.add_parser("migrate", help="copy a collection to another vector store, verify it and switch to it")
    m.add_argument("--collection", required=True)
    m.add_argument("--from", dest="source", required=True, help="store spec the collection lives in now (e.g. chroma)")
    m.add_argument("--to", dest="target", required=True,
                   help="store spec to move it to: chroma, faiss, chroma-http://HOST:PORT, postgresql://..., "
                   "qdrant[:PATH|:URL], lancedb[:PATH], milvus[:PATH.db|:URL]")
    m.add_argument("--overwrite", action="store_true", help="replace a different collection of that name in the target")
    m.add_argument("--sample", type=int, default=20, help="sample queries compared between source and copy (default 20)")

    p = sub.add_parser("keywords", help="build or check a collection's keyword (BM25) index")
    ksub = p.add_subparsers(dest="keywords_command", required=True)
    k = ksub.add_parser("build", help="(re)build the keyword index from the collection's vector store")
    k.add_argument("--collection", required=True)
    k = ksub.add_parser("check", help="compare the keyword index's ids with the vector store's (exit 1 if they differ)")
    k.add_argument("--collection", required=True)

    for entry in _plugin_entries():
        name = entry.name
        try:
            handler = entry.load()(sub)  # register(subparsers) -> handler(args) -> int
            if name not in sub.choices:
                raise HeteragError(f"{entry.value} added no {name!r} command")
        except Exception as exc:  # a stale or broken plugin must not take the whole command line down
            logging.getLogger(__name__).warning("heterag: command %r (%s) not available: %s", name, entry.value, exc)
            if name in sub.choices:  # it added its parser, then failed: running the command says why
                sub.choices[name].set_defaults(plugin_handler=_unavailable(name, exc))
            continue
        sub.choices[name].set_defaults(plugin_handler=handler)
    return parser


def _unavailable(name: str, exc: BaseException):
    def handler(args: argparse.Namespace) -> int:
        raise HeteragError(f"command {name!r} is not available: {exc}")

    return handler


#: Entry-point group through which packages above heterag add subcommands (the sandbox's ``heterag sandbox``):
#: each entry names a function ``register(subparsers) -> handler`` that adds one parser named as the entry and
#: returns ``handler(args) -> int``. heterag never imports those packages itself.
COMMAND_GROUP = "heterag.commands"


def _plugin_entries() -> list[Any]:
    from importlib.metadata import entry_points

    return sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name)


def _n(count: int, noun: str) -> str:
    """``"1 chunk"``, ``"2 chunks"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _printable(text: str) -> str:
    """``text`` with control characters (tabs, newlines in a file name) escaped, so a line stays one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _cli_words(message: str) -> str:
    """A library message in the command line's terms (its option names rather than the library's arguments)."""
    return message.replace("raise max_document_bytes", "raise --max-doc-mb")


def cmd_ingest(args: argparse.Namespace) -> int:
    from corpora.files import iter_path
    from heterag.collections.collection import (
        check_options,
        collection_dir,
        drop_collection,
        heterag_home,
        open_collection,
        read_info,
    )

    options = {"dicom_patient_tags": True} if args.dicom_patient_tags else {}
    items = iter(iter_path(args.path, max_document_bytes=int(args.max_doc_mb * 2**20), split=args.split,
                           options=options))  # checks the path first
    if args.sync and not os.path.isdir(args.path):
        raise HeteragError("--sync needs a folder: it removes documents whose file under the folder is gone")
    is_new = read_info(args.collection) is None
    first = next(items, None)
    if first is None and (is_new or not args.sync):  # no files: nothing is created and no model loads
        check_options(store=args.store, view=args.view, view_options=_view_options(args),
                      chunk_tokens=args.chunk_tokens, image_encoder=args.image_encoder)
        outcome = f"collection {args.collection!r} was not created" if is_new else "nothing changed"
        print(f"heterag: no files found in {args.path}; {outcome}", file=sys.stderr)
        return EXIT_PARTIAL
    items = itertools.chain([first] if first is not None else [], items)  # --sync of an emptied folder goes on
    made = [p for p in (collection_dir(args.collection).parent, heterag_home()) if not p.exists()]
    pipe = open_collection(
        args.collection, store=args.store, encoder=args.encoder, view=args.view,
        view_options=_view_options(args), chunk_tokens=args.chunk_tokens, image_encoder=args.image_encoder,
        adapter=args.adapter,
    )
    removed: list[str] = []
    try:
        if args.sync:  # removals first: a copy of a file that is gone is then no duplicate, and comes in
            removed = pipe.remove_missing_files(args.path)
        report = pipe.ingest(items, progress=sys.stderr.isatty())
        # a file that was stored before and cannot be read now (emptied, corrupted) keeps its previous
        # version: say so, since --sync removes only files that are gone
        failed = [f.source for f in report.failures]
        kept = {d.id for d in pipe.documents(where={"doc_id": {"$in": failed}})} if failed and not is_new else set()
        for f in report.failures:
            note = (f"; its previous version stays in the collection (remove it with: heterag docs delete "
                    f"{f.source} --collection {args.collection})") if f.source in kept else ""
            print(f"skipped {_cli_words(str(f))}{note}", file=sys.stderr)
        for f in report.duplicates + report.moved:  # notes, not failures: the exit status stays 0
            print(f"note: {f}", file=sys.stderr)
        empty = is_new and not report.documents_written
        if not empty:
            images = pipe.image_store.count() if pipe.image_store is not None else 0
            gone = (f"; removed {len(removed)} document{'' if len(removed) == 1 else 's'} whose file is gone"
                    if removed else "")
            print(f"{args.collection}: {report.summary()}{gone}; collection now holds {_n(pipe.count(), 'chunk')}"
                  + (f" and {_n(images, 'image')}" if images else ""))
    finally:
        pipe.close()
    if empty:  # nothing made it in: no collection is left behind, nor an empty folder of collections
        drop_collection(args.collection)
        for folder in made:  # the folders this run made, when they are empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        print(f"heterag: nothing was ingested from {args.path} ({len(report.failures)} skipped); "
              f"collection {args.collection!r} was not created", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_PARTIAL if report.failures else 0


def cmd_ask(args: argparse.Namespace) -> int:
    from heterag.collections.collection import open_collection
    from heterag.generators import make_generator

    gen_kwargs: dict[str, Any] = {}
    if args.generator == "openai":
        if not args.model:
            raise HeteragError("--generator openai needs --model")
        gen_kwargs = {"model": args.model, "base_url": args.base_url, "temperature": args.temperature}
    elif args.generator == "transformers":
        if not args.model:
            raise HeteragError("--generator transformers needs --model PATH (a local model folder)")
        gen_kwargs = {"model_path": args.model, "temperature": args.temperature}
    elif args.generator == "local":
        gen_kwargs = {"model": args.model or None, "temperature": args.temperature, "threads": args.threads or 1}
    if args.threads is not None and args.generator != "local":
        raise HeteragError("--threads applies to --generator local only")
    if not args.question.strip() and not args.image:
        raise HeteragError("give a question, an --image, or both")
    from heterag.generators import GENERATORS

    if args.generator not in GENERATORS:  # every option is checked before a model loads
        raise UnknownNameError("generator", args.generator, GENERATORS)
    if args.generator == "local":  # the model is checked before a collection is opened or the demo built
        from heterag.generators.local import check_local_model

        check_local_model(args.model or None)
    elif args.generator == "transformers":
        from heterag.generators.hf import check_model_folder

        check_model_folder(args.model)
    if args.fusion:
        from heterag.retrieval.fusion import Fusion

        Fusion.parse(args.fusion)
    retrieval = _retrieval_options(args)
    if args.collection is not None and retrieval.get("retrieval", "dense") != "dense":
        from heterag.collections.keywords import check_has_keywords

        check_has_keywords(args.collection)  # a collection without a keyword index: one line before a model loads
    image = None
    if args.image:
        from heterag.core.images import ImageRef

        image = ImageRef.from_path(args.image)  # a bad image fails here, before any model loads
    options = dict(store=args.store, encoder=args.encoder, view=args.view,
                   view_options=_view_options(args), chunk_tokens=args.chunk_tokens)
    if args.image_encoder:
        options["image_encoder"] = args.image_encoder
    if args.adapter:
        options["adapter"] = args.adapter
    if args.fusion:
        options["fusion"] = args.fusion
    options.update(retrieval)
    if args.collection is None and image is not None:
        from corpora.demo import open_scenes_demo

        pipe = open_scenes_demo(**options)
    elif args.collection is None:
        from corpora.demo import open_demo

        pipe = open_demo(**options)
    else:
        pipe = open_collection(args.collection, create=False, **options)
    try:
        if args.generator == "extractive":
            gen_kwargs = {"embedder": pipe.encoder, "temperature": args.temperature}
        elif args.generator == "local":
            gen_kwargs["embedder"] = pipe.encoder  # attributes sources when the model cites none
        pipe.generator = make_generator(args.generator, **gen_kwargs)
        streaming = args.generator != "extractive" and not args.json
        answer = pipe.answer(
            args.question, k=args.top_k, image=image,
            on_token=(lambda s: print(s, end="", flush=True)) if streaming else None,
        )
    finally:
        pipe.close()
    if args.json:
        print(json.dumps(_answer_json(answer), ensure_ascii=False, indent=2))
    elif streaming:
        print("\n\n" + answer.format_sources() if answer.citations else "")
    else:
        print(answer.format())
    return 0


def _found(hit: Any) -> dict[str, Any]:
    """Which searches found ``hit`` (``found_by``: ``dense``, ``keyword`` or both) and its BM25 score (None when
    keyword search did not run)."""
    if hit is None:
        return {}
    return {"found_by": list(hit.found_by), "keyword_score": hit.scores.get("keyword")}


def _answer_json(answer) -> dict[str, Any]:
    by_chunk = {h.chunk_id: h for h in answer.hits}
    return {
        "answer": answer.text,
        "sources": [
            {"n": c.number, "doc_id": c.doc_id, "chunk_id": c.chunk_id, "title": c.title, "score": c.score, "text": c.text,
             "image": c.image, **c.where.fields(c.doc_id), **_found(by_chunk.get(c.chunk_id))}
            for c in answer.citations
        ],
        "retrieved": [
            {"doc_id": h.doc_id, "chunk_id": h.chunk_id, "score": h.score, "text": h.text, "view": h.view,
             "image": h.image, "scores": dict(h.scores), **_found(h), **h.where.fields(h.doc_id)}
            for h in answer.hits
        ],
        "context_tokens": answer.context_tokens,
    }


def cmd_eval(args: argparse.Namespace) -> int:
    if args.benchmark == "images":
        return cmd_eval_images(args)
    from corpora.beir import load_beir
    from heterag.collections.collection import load_text_encoder
    from heterag.evaluation.retrieval import evaluate_modes
    from heterag.ingest.chunking import DEFAULT_CHUNK_TOKENS
    from heterag.ingest.views import make_view
    from heterag.retrieval.hybrid import DEFAULT_RETRIEVAL, HybridFusion, check_retrieval
    from heterag.stores import parse_store_url

    parse_store_url(args.store)  # an unknown scheme lists the accepted forms
    modes = [check_retrieval(m.strip()) for m in (args.retrieval or DEFAULT_RETRIEVAL).split(",") if m.strip()]
    if not modes:
        raise HeteragError("--retrieval needs at least one of dense, keyword, hybrid")
    fusion = HybridFusion.parse(args.hybrid)
    views = [v.strip() for v in args.views.replace("|", ",").split(",") if v.strip()]
    built = {}
    for v in views:  # validate every name before the expensive part
        opts = {"neighbours": args.neighbours} if (args.neighbours is not None and v == "heterag") else {}
        built[v] = make_view(v, **opts)
    data = load_beir(args.path, split=args.split)
    encoder = load_text_encoder(args.encoder)
    queries, qrels, extra = dict(data.queries), dict(data.qrels), {}
    if args.queries_from:
        queries, qrels = _select_queries(args.queries_from, queries, qrels)
    if args.adapter:
        from heterag.encoding.adapters import AdaptedEncoder, load_adapter, query_hash

        adapter = load_adapter(args.adapter)
        encoder = AdaptedEncoder(encoder, adapter)
        trained = set(adapter.training.get("trained_queries", []))
        excluded = [q for q, text in queries.items() if query_hash(text) in trained]
        if excluded:
            print(f"left out {len(excluded)} queries the adapter was trained on", file=sys.stderr)
        queries = {q: t for q, t in queries.items() if q not in set(excluded)}
        qrels = {q: r for q, r in qrels.items() if q in queries}
        if not queries:
            raise HeteragError(f"every evaluation query was used to train adapter {adapter.hash}; evaluate on held-out "
                               "queries (--split test or --queries-from FILE)")
        extra = {"adapter": adapter.hash, "excluded_trained_queries": len(excluded)}
    rows = []
    for name, view in built.items():
        for res in evaluate_modes(
            data.documents, queries, qrels, encoder=encoder, view=view, retrieval=modes, hybrid=fusion,
            chunk_tokens=args.chunk_tokens or DEFAULT_CHUNK_TOKENS, store=args.store, latency_queries=args.latency_queries,
        ):
            res = {"view": name, "chunk_tokens": args.chunk_tokens or DEFAULT_CHUNK_TOKENS, **res, **extra}
            rows.append(res)
            if not args.json:
                ci = res["ndcg@10_ci"]
                lat = f"  p50 {res['latency_p50_ms']:.1f} ms" if "latency_p50_ms" in res else ""
                print(
                    f"{name:8s} {res['retrieval']:8s} nDCG@1 {res['ndcg@1']:.4f}  nDCG@10 {res['ndcg@10']:.4f} "
                    f"[{ci[0]:.4f}, {ci[1]:.4f}]  R@100 {res['recall@100']:.4f}  MRR@10 {res['mrr@10']:.4f}  "
                    f"units {res['units']}  encode {res['encode_seconds']:.1f}s{lat}", flush=True,
                )
    if args.json:  # one mode: one row per view (a single view: the row itself); several: a list of view x mode rows
        if len(modes) == 1:
            print(json.dumps(rows[0] if len(views) == 1 else {r["view"]: r for r in rows}, indent=2))
        else:
            print(json.dumps(rows, indent=2))
    return 0


def _select_queries(path: str, queries: dict[str, str], qrels: dict) -> tuple[dict[str, str], dict]:
    """Restrict to the query ids listed in ``path`` (one per line); unknown ids are an error."""
    try:
        wanted = [line.strip() for line in open(path, encoding="utf-8") if line.strip()]
    except OSError as exc:
        raise HeteragError(f"cannot read --queries-from {path}: {exc.strerror or exc}") from None
    unknown = [q for q in wanted if q not in queries]
    if unknown:
        raise HeteragError(f"--queries-from {path}: {len(unknown)} ids are not judged queries of this split (e.g. {unknown[0]!r})")
    keep = set(wanted)
    return {q: t for q, t in queries.items() if q in keep}, {q: r for q, r in qrels.items() if q in keep}


def cmd_tune(args: argparse.Namespace) -> int:
    from heterag.cli.tune import add_tune_arguments, run_tune

    parser = _Parser(prog="heterag tune", description="Train a soft-prompt adapter for the text encoder "
                                     "(adaptive prompt tuning: InfoNCE, in-batch and mined hard negatives).")
    add_tune_arguments(parser)
    return run_tune(parser.parse_args(args.train_args))


def cmd_reembed(args: argparse.Namespace) -> int:
    from heterag.collections.reembed import reembed_collection

    report = reembed_collection(args.collection, args.adapter, progress=sys.stderr.isatty())
    print(report.summary())
    return 0


def cmd_eval_images(args: argparse.Namespace) -> int:
    from corpora.image_layouts import LAYOUT_CAPTIONS, LAYOUT_COCO, detect_image_layout, iter_image_layout
    from heterag.core.documents import ItemError
    from heterag.encoding.image_encoders import load_image_encoder
    from heterag.evaluation.images import VARIANTS, evaluate_images
    from heterag.stores import parse_store_url

    parse_store_url(args.store)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            raise UnknownNameError("variant", v, VARIANTS)
    if args.limit is not None and args.limit < 1:
        raise HeteragError("--limit must be a positive number of images")
    encoder = load_image_encoder(args.encoder)  # validate the spec before reading every image
    if args.path.startswith("synthetic:"):
        from corpora.synthetic_scenes import generate_scenes

        parts = args.path.split(":")
        try:
            n, seed = int(parts[1]), int(parts[2]) if len(parts) > 2 else 1
        except (IndexError, ValueError):
            raise HeteragError(f"{args.path!r}: write synthetic:N[:SEED], e.g. synthetic:1000:1") from None
        items = [s.to_annotated() for s in generate_scenes(min(n, args.limit or n), seed=seed)]
        captions, layout, bad = True, "synthetic_scenes", []
    else:
        layout = detect_image_layout(args.path)
        loaded = iter_image_layout(args.path, split=args.split)
        items, bad = [], []
        for it in loaded:
            (bad if isinstance(it, ItemError) else items).append(it)
            if args.limit and len(items) >= args.limit:
                break
        for b in bad:
            print(f"skipped {b}", file=sys.stderr)
        captions = layout in (LAYOUT_CAPTIONS, LAYOUT_COCO)
    result = {"path": args.path, "layout": layout, "skipped": len(bad),
              **evaluate_images(items, image_encoder=encoder, variants=variants, captions=captions, store=args.store,
                                seed=args.seed)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:28s} {value:.4f}" if isinstance(value, float) else f"{key:28s} {value}")
    return 0


def cmd_train_image_encoder(args: argparse.Namespace) -> int:
    from heterag.cli.train_image_encoder import add_train_arguments, run_train

    parser = _Parser(prog="heterag train-image-encoder", description="Train the offline default image "
                                     "encoder (LiT-style, into the default text encoder's space).")
    add_train_arguments(parser)
    return run_train(parser.parse_args(args.train_args))


def cmd_collections(args: argparse.Namespace) -> int:
    from heterag.collections.collection import describe_collection, heterag_home, list_collections

    rows = [describe_collection(n) for n in list_collections()]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no collections under {heterag_home()}")
    for r in [] if args.json else rows:
        view = r.get("view", "-") + "".join(f" {k}={v}" for k, v in r.get("view_settings", {}).items()
                                            if not isinstance(v, str))  # templates: see --json
        print(f"{r['name']}: {_n(r['documents'], 'document')}, {_n(r['chunks'], 'chunk')}, {_n(r['images'], 'image')}; "
              f"store {r['store']}, "
              f"encoder {r['encoder']}, view {view}, chunk tokens {r.get('chunk_tokens', '-')}, "
              f"image encoder {r['image_encoder']}, adapter {r['adapter']}, keyword index {_KEYWORD_STATE[r['keywords']].replace('NAME', r['name'])}"
              + (f", purpose {r['purpose']}" if r["purpose"] else ""))
    return 0


#: ``describe_collection``'s ``keywords`` in words
_KEYWORD_STATE = {"local": "yes", "native": "yes (the store's full-text search)",
                  "none": "none (build: heterag keywords build --collection NAME)"}


def cmd_keywords(args: argparse.Namespace) -> int:
    from heterag.collections.keywords import build_keywords, check_keywords

    if args.keywords_command == "build":
        report = build_keywords(args.collection, progress=sys.stderr.isatty() and not os.environ.get("HETERAG_NO_PROGRESS"))
        print(report.summary())
        return 0
    check = check_keywords(args.collection)
    print(check.summary(), file=sys.stdout if check.ok else sys.stderr)
    return 0 if check.ok else EXIT_PARTIAL


def cmd_drop(args: argparse.Namespace) -> int:
    from heterag.collections.collection import collection_info, drop_collection

    info = collection_info(args.name)  # an unknown name fails before any question
    if not args.yes:
        if not sys.stdin.isatty():
            raise HeteragError(f"drop {args.name}: confirm with --yes (no terminal to ask on)")
        reply = input(f"delete collection {args.name!r} and everything in {info.path}? [y/N] ")
        if reply.strip().lower() not in ("y", "yes"):
            print("kept", file=sys.stderr)
            return EXIT_PARTIAL
    drop_collection(args.name)
    print(f"dropped {args.name}")
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    from heterag.collections.collection import collection_documents, delete_documents, document_chunks

    if args.docs_command == "list":  # list and show read the stores only: no model loads
        docs = collection_documents(args.collection)
        if args.json:
            print(json.dumps([d.__dict__ for d in docs], indent=2, ensure_ascii=False))
        for d in [] if args.json else docs:
            image = f"  image {d.image}" if d.image else ""
            print("\t".join(_printable(str(v)) for v in (d.id, d.title, d.source or "-")) + f"\t{_n(d.chunks, 'chunk')}"
                  + _printable(image))
        if not docs and not args.json:
            print(f"collection {args.collection!r} holds no documents", file=sys.stderr)
        return 0
    if args.docs_command == "show":
        found = collection_documents(args.collection, where={"doc_id": args.id})
        if not found:
            raise HeteragError(f"no document {args.id!r} in collection {args.collection!r} (list them with: heterag "
                               f"docs list --collection {args.collection})")
        doc, chunks = found[0], document_chunks(args.collection, args.id)
        if args.json:
            print(json.dumps({**doc.__dict__, "chunk_texts": [c.text for c in chunks]}, indent=2, ensure_ascii=False))
            return 0
        print(f"id: {doc.id}\ntitle: {doc.title}\nsource: {doc.source or '-'}\nfile: {doc.source_path or '-'}\n"
              f"chunks: {doc.chunks}" + (f"\nimage: {doc.image}" if doc.image else ""))
        for c in chunks:
            heading = str(c.metadata.get("heading", ""))
            print(f"\n[{c.metadata.get('chunk_index', 0)}]{f' {heading}' if heading else ''}\n{c.text}")
        return 0
    # every id is checked before anything is deleted: one unknown id deletes nothing; a document's parts
    # (a PDF's or DOCX's figures, ``ID#figure-N``) go with it
    stored = [d.id for d in collection_documents(args.collection)]
    missing = [i for i in args.ids if i not in set(stored)]
    if missing:
        raise HeteragError(f"no document {', '.join(repr(i) for i in missing)} in collection {args.collection!r}; "
                           f"nothing deleted (list them with: heterag docs list --collection {args.collection})")
    targets = [d for d in stored if d in args.ids or any(d.startswith(f"{i}#") for i in args.ids)]
    removed = delete_documents(args.collection, targets)  # the stores only: no model loads
    n = len(targets)
    print(f"{args.collection}: deleted {n} document{'s' if n != 1 else ''} ({removed} record{'s' if removed != 1 else ''})")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from heterag.collections.migrate import migrate_collection

    report = migrate_collection(args.collection, args.source, args.target, overwrite=args.overwrite, sample=args.sample,
                                progress=sys.stderr.isatty())
    print(report.summary())
    return 0


COMMANDS = {"ingest": cmd_ingest, "ask": cmd_ask, "eval": cmd_eval, "collections": cmd_collections, "drop": cmd_drop,
            "docs": cmd_docs,
            "train-image-encoder": cmd_train_image_encoder, "tune": cmd_tune,
            "reembed": cmd_reembed, "migrate": cmd_migrate, "keywords": cmd_keywords}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    words = [a for a in argv if not a.startswith("-")]
    if words and words[0] in ("train-image-encoder", "tune"):  # all of its options, --help included, are training's own
        at = argv.index(words[0])
        args = parser.parse_args(argv[:at] + [words[0]])
        args.train_args = argv[at + 1 :]
    else:
        args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "chromadb", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return COMMANDS[args.command](args) if args.command in COMMANDS else args.plugin_handler(args)
    except HeteragError as exc:
        print(f"heterag: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("heterag: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _closed_stdout()


def _closed_stdout() -> int:
    """The reader of our output went away (``heterag ask ... | head``): exit quietly, as other CLI tools do.

    stdout is pointed at /dev/null so that Python's final flush does not raise again; the status is
    141 (128 + SIGPIPE), what a shell reports for a tool ended by a closed pipe.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover - stdout without a file descriptor
        pass
    return 141


if __name__ == "__main__":
    sys.exit(main())
