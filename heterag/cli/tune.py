"""``heterag tune``: argument parsing and the run (kept apart from :mod:`heterag.cli.commands` so that other
commands start without importing torch).

    heterag tune DIR_OR_COLLECTION --out ADAPTER [--pairs beir|pubmedqa|pseudo] [--prompt-tokens P]
                 [--sides query|view|separate|shared] [--deep] [--full] [--split train] [--view heterag]

``DIR`` is a BEIR folder (pairs from ``qrels/train.tsv`` only; the test split is never trained
on) or the PubMedQA folder (``--pairs pubmedqa``, its train questions); a collection name (or
``--collection NAME``) trains on pseudo-queries from its own chunks, with hard negatives mined
from its stored vectors. The adapter is written only after training succeeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from heterag.core.errors import HeteragError, InvalidInputError

log = logging.getLogger(__name__)


def add_tune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="?", help="BEIR folder, PubMedQA folder or collection name")
    p.add_argument("--collection", help="train on this collection (pseudo-queries from its chunks)")
    p.add_argument("--out", required=True, help="adapter path: writes OUT.safetensors and OUT.json")
    p.add_argument("--pairs", choices=["beir", "pubmedqa", "pseudo"], help="pair source (default: beir for a BEIR folder, "
                   "pubmedqa for the PubMedQA folder, pseudo for a collection)")
    p.add_argument("--split", default="train", help="qrels split / PubMedQA split to train on (default train; never test)")
    p.add_argument("--view", default=None, help="view of the index for a folder: naive, heterag (default) or late")
    p.add_argument("--chunk-tokens", type=int, default=None)
    p.add_argument("--encoder", default=None, help="text encoder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--prompt-tokens", type=int, default=4, help="P, soft-prompt vectors (default 4, chosen by measurement: eval/README.md)")
    p.add_argument("--sides", default="query", help="query (default), view, separate or shared")
    p.add_argument("--deep", action="store_true", help="a prompt at every layer of the encoder, not only its input "
                   "(deep prompt tuning; same cost per token, depth x the parameters)")
    p.add_argument("--full", action="store_true", help="fine-tune all encoder weights instead (for comparison)")
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--epochs", type=int, default=15, help="most epochs (early stopping on held-out queries)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--hard-negatives", type=int, default=8)
    p.add_argument("--patience", type=int, default=1, help="epochs without held-out improvement before stopping")
    p.add_argument("--pseudo-pairs", type=int, default=2000, help="pseudo-query pairs to generate (default 2000)")
    p.add_argument("--pseudo-kind", default="title", help="pseudo-queries: title (default: a document's title -> the "
                   "document without it), conclusion (its last sentence) or sentence (a random sentence of a chunk)")
    p.add_argument("--pseudo-ranks", default=None, metavar="LO:HI", help="keep a pseudo pair only when the untrained "
                   "encoder ranks its document LO..HI (e.g. 1:20 drops queries it cannot answer)")
    p.add_argument("--exclude-queries", default=None, help="file of query ids (one per line) never to train on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)


def run_tune(args: argparse.Namespace) -> int:
    import numpy as np

    from heterag.collections.collection import collection_info, load_text_encoder, read_info
    from heterag.ingest.chunking import DEFAULT_CHUNK_TOKENS, chunk_document
    from heterag.ingest.views import make_view
    from heterag.training.prompts import (
        PairSet,
        TuneConfig,
        beir_pairs,
        build_unit_index,
        pseudo_pairs,
        pubmedqa_pairs,
        train_adapter,
    )

    config = TuneConfig(prompt_tokens=args.prompt_tokens, sides=args.sides, deep=args.deep, full=args.full, temperature=args.temperature,
                        lr=args.lr, batch_size=args.batch_size, hard_negatives=args.hard_negatives, epochs=args.epochs,
                        patience=args.patience, seed=args.seed, threads=args.threads)
    from heterag.training.prompts import PSEUDO_KINDS

    if args.pseudo_kind not in PSEUDO_KINDS:
        raise InvalidInputError(f"unknown --pseudo-kind {args.pseudo_kind!r}; choose one of {', '.join(PSEUDO_KINDS)}")
    keep = parse_ranks(args.pseudo_ranks)
    if args.split == "test":
        raise InvalidInputError("refusing to train on the test split: evaluation queries are never trained on")
    target = args.collection or args.target
    if not target and args.pairs != "pubmedqa":
        raise InvalidInputError("give a BEIR folder, the PubMedQA folder (--pairs pubmedqa) or --collection NAME")
    out = Path(args.out)
    if out.suffix in (".safetensors", ".json"):
        out = out.with_suffix("")
    check_writable(out)
    is_dir = target is not None and Path(target).is_dir() and not args.collection
    if target and not is_dir:  # a folder or collection that is not there fails before any model loads
        try:
            known = read_info(target) is not None
        except HeteragError:  # not even a collection name (a path)
            known = False
        if not known:
            what = "a file, not a folder," if Path(target).is_file() and not args.collection else "no folder"
            raise InvalidInputError(f"{target!r}: {what} and no collection of that name (heterag collections lists them)")
    enc = load_text_encoder(args.encoder)
    exclude: set[str] = set()
    if args.exclude_queries:
        try:
            exclude = {line.strip() for line in open(args.exclude_queries, encoding="utf-8") if line.strip()}
        except OSError as exc:
            raise InvalidInputError(f"cannot read --exclude-queries {args.exclude_queries}: {exc.strerror or exc}") from None
    meta: dict = {}
    if is_dir or args.pairs == "pubmedqa":
        pairs_kind = args.pairs or ("pubmedqa" if target and (Path(target) / "ori_pqal.json").exists() else "beir")
        if pairs_kind == "pubmedqa":
            pairs, documents = pubmedqa_pairs(target, split=args.split)
        else:
            from corpora.beir import is_beir_dir

            if not is_beir_dir(target):
                raise InvalidInputError(f"{target} is not a BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
            if args.split != "train" and (Path(target) / "qrels" / "train.tsv").exists():
                raise InvalidInputError(f"{target} has qrels/train.tsv: training uses only it (drop --split)")
            if pairs_kind == "pseudo":
                _, documents = beir_pairs(target, args.split) if (Path(target) / "qrels" / f"{args.split}.tsv").exists() \
                    else (None, _beir_documents(target))
                pairs = None
            else:
                pairs, documents = beir_pairs(target, args.split)
        view = make_view(args.view or "heterag")
        chunk_tokens = args.chunk_tokens or DEFAULT_CHUNK_TOKENS
        cds = [chunk_document(d, enc.tokenize, chunk_tokens) for d in documents]
        log.info("encoding the index (%d documents, view %s)", len(cds), view.kind)
        units = build_unit_index(cds, view, enc)
        meta = {"dataset": str(Path(target).resolve()) if target else "pubmedqa", "view": view.kind, "chunk_tokens": chunk_tokens}
    else:
        from heterag.collections.reembed import chunked_from_records
        from heterag.stores import open_store

        if read_info(target) is None:
            raise InvalidInputError(f"{target!r} is neither a folder nor a collection")
        info = collection_info(target)
        pairs_kind = args.pairs or "pseudo"
        if pairs_kind != "pseudo":
            raise InvalidInputError("a collection has no labels: use --pairs pseudo (the default for a collection)")
        vs = open_store(info.store, info.store_path, collection="heterag")
        try:
            fp = vs.fingerprint()
            records = vs.get(include_vectors=True)
        finally:
            vs.close()
        if not records or fp is None:
            raise InvalidInputError(f"collection {target!r} holds no text chunks to train on")
        if args.encoder is None and info.encoder is not None:
            enc = load_text_encoder(info.encoder)
        view = make_view(fp.view, **dict(fp.extra.get("view_settings", {})))
        chunk_tokens = int(fp.extra.get("chunk_tokens", DEFAULT_CHUNK_TOKENS))
        cds = chunked_from_records(records, enc.tokenize)
        by_id = {r.id: r.vector for r in records}
        vectors = np.stack([by_id[c.id] for cd in cds for c in cd.chunks])
        units = build_unit_index(cds, view, enc, vectors=vectors)
        pairs = None
        meta = {"collection": target, "view": view.kind, "chunk_tokens": chunk_tokens, "index_adapter": fp.adapter}
    if pairs_kind == "pseudo":
        pairs = pseudo_pairs(cds, view, enc, units, n=args.pseudo_pairs, seed=args.seed, chunk_tokens=chunk_tokens,
                             kind=args.pseudo_kind, keep_ranks=keep, progress=sys.stderr.isatty())
        meta["pseudo"] = {"kind": args.pseudo_kind, "keep_ranks": list(keep) if keep else None, "notes": pairs.notes}
    assert pairs is not None
    if exclude:
        before = len(pairs.pairs)
        pairs = PairSet([p for p in pairs.pairs if p.qid not in exclude], pairs.source, pairs.skipped, pairs.notes)
        meta["excluded_pairs"] = before - len(pairs.pairs)
    for note in pairs.notes:
        print(f"heterag tune: {note}", file=sys.stderr)
    result = train_adapter(pairs, units, enc, config, progress=sys.stderr.isatty() and not os.environ.get("HETERAG_NO_PROGRESS"),
                           extra_meta=meta)
    w, j = result.adapter.save(out)
    print(json.dumps({"adapter": str(out), "hash": result.adapter.hash, "bytes": w.stat().st_size + j.stat().st_size,
                      "pairs": len(pairs.pairs), "skipped": pairs.skipped, **{k: result.metrics[k] for k in (
                          "seconds", "best_epoch", "stopped", "train_queries", "held_out_queries")}}))
    return 0


def check_writable(out: Path) -> None:
    """Raise :class:`InvalidInputError` before any training when the adapter ``out`` cannot be written
    (its nearest existing folder is a file or not writable). Creates nothing."""
    folder = out.expanduser().absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidInputError(f"cannot write the adapter {out}: {folder} is not a writable folder")


def parse_ranks(text: str | None) -> tuple[int, int] | None:
    """``"LO:HI"`` -> ``(LO, HI)``; None stays None. Raises :class:`InvalidInputError` for anything else."""
    if text is None:
        return None
    try:
        lo, hi = (int(x) for x in text.split(":"))
    except ValueError:
        raise InvalidInputError(f"--pseudo-ranks wants LO:HI (e.g. 1:20), got {text!r}") from None
    if not 1 <= lo <= hi:
        raise InvalidInputError(f"--pseudo-ranks wants 1 <= LO <= HI, got {text!r}")
    return lo, hi


def _beir_documents(path: str):
    from corpora.beir import beir_file, load_corpus_documents

    return load_corpus_documents(beir_file(Path(path), "corpus.jsonl"), 10 * 2**20)


__all__ = ["add_tune_arguments", "run_tune", "HeteragError"]
