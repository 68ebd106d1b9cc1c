"""End-to-end HeteRAG on PubMedQA: yes/no/maybe answers of the packaged local LLM per context kind.

Knowledge base: all 1,000 PubMedQA abstracts, without titles (the protocol of
``pubmedqa_retrieval.py``); questions: the 500 of the test split (``--split train`` for
development). Each question is answered from five kinds of context:

* ``heterag``   top-5 short generation chunks retrieved by the ``heterag`` view
* ``naive``     top-5 short generation chunks retrieved by the ``naive`` view
* ``documents`` the same ``heterag`` retrieval returning whole documents: the abstracts of the
                top-5 distinct documents, ranked by their best chunk (section labels kept)
* ``oracle``    the gold abstract alone
* ``none``      no retrieval (the prompt says no sources were retrieved)

Two answer modes, both through library calls of :class:`heterag.generators.local.LocalGenerator`:

* **scoring** (``score_options``): the most likely of "yes", "no", "maybe" as the reply to the
  question followed by "Answer with exactly one of: yes, no, maybe." (all questions);
* **free** (``generate``, greedy, ``--max-new-tokens`` bounded): the question followed by
  :data:`FREE_SUFFIX`; the answer is mapped to a label by :func:`free_label`. Free answers are slow
  on 2 cores, so they run on the first ``--free-limit`` questions of the seeded order (all kinds on
  the same questions). The ``none`` kind has no free answers: the generator refuses to answer
  without sources.

Questions are answered in a seeded random order, every kind for each question, and the report is
rewritten every ``--checkpoint`` questions: a run stopped early reports a seeded random subset,
and ``--resume`` continues it (same arguments) where it stopped.
Retrieved contexts are saved in ``eval/out/`` for the questions of both splits and reused.

Scoring is also reported after **contextual calibration** (Zhao et al., 2021): each option's
probability divided by its probability for content-free inputs (question and passages "N/A",
"[MASK]", empty; the same number of passages), :meth:`OptionScores.calibrated`. It has no
parameters to fit; it shows whether a small model's preference for one option hides what the
passages say.

Reported per kind and mode: accuracy and macro-F1 (yes/no/maybe) with percentile bootstrap 95%
intervals (``--resamples``, seeded, the same resampled questions for every kind), paired
differences between kinds, generation-context tokens per answer (model tokenizer, passages as
sent), and seconds per answer (scoring call / generate call; retrieval not included).

    python eval/end_to_end.py                                  # test split, all 500, free on 100
    python eval/end_to_end.py --limit 50 --free-limit 10       # a quick look
    python eval/end_to_end.py --split train --free-limit 100 --kinds heterag,oracle   # development
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from _common import OUT_DIR, bootstrap_ci, require_data, write_report
from sklearn.metrics import f1_score

from corpora import default_data_dir, load_pubmedqa
from heterag import DEFAULT_CHUNK_TOKENS, Pipeline, load_text_encoder, make_view, open_store
from heterag.core.documents import Document
from heterag.core.errors import GeneratorError
from heterag.core.results import Hit

LABELS = ("yes", "no", "maybe")
KINDS = ("heterag", "naive", "documents", "oracle", "none")
#: Appended to the question in free mode, so the answer states a decision.
FREE_SUFFIX = " Answer yes, no or maybe, then give the reason."
#: Phrases that map a free answer without a yes/no/maybe word to "maybe".
_UNSURE = re.compile(r"\b(unclear|not clear|uncertain|inconclusive|do(?:es)? not (?:contain|say|state|mention)|"
                     r"cannot (?:be )?(?:determine|answer|say)|not (?:enough|sufficient)|insufficient)\b")
_ECHO = re.compile(r"\byes\s*,\s*no\s*,?\s*or\s+maybe\b")
_DECISION = re.compile(r"\b(yes|no|maybe)\b")
_CITE = re.compile(r"\[[\d,;\s]*\]")
#: Paired differences reported: (a, b) means a minus b.
PAIRS = (("heterag", "documents"), ("heterag", "naive"), ("heterag", "oracle"), ("heterag", "none"),
         ("documents", "oracle"), ("naive", "documents"))


def free_label(text: str) -> str | None:
    """The label of a free answer: the first of the words yes / no / maybe in it (case-insensitive,
    citations, our own notes in parentheses and echoes of the instruction's "yes, no or maybe"
    removed); else "maybe" when it says the sources are unclear or do not contain the answer; else
    None (off-format; scored as wrong)."""
    body = _CITE.sub(" ", re.sub(r"\((?:Using \d+ of|The model cited)[^)]*\)", " ", text)).lower()
    body = _ECHO.sub(" ", body)
    found = _DECISION.search(body)
    if found:
        return found.group(1)
    return "maybe" if _UNSURE.search(body) else None


def document_hit(doc: Document, score: float = 0.0) -> Hit:
    """A whole abstract as one passage: its sections, each after its label."""
    text = "\n\n".join(f"{' / '.join(s.heading)}: {s.text}" if s.heading else s.text for s in doc.sections)
    return Hit(chunk_id=f"{doc.id}#document", doc_id=doc.id, text=text, view="", score=score, title=doc.title)


def build_contexts(data, questions, k: int, chunk_tokens: int) -> dict[str, list[tuple[Hit, ...]]]:
    """The passages of every context kind for each question (indexes built in a temporary folder)."""
    docs = {d.id: d for d in data.documents}
    encoder = load_text_encoder(None)
    contexts: dict[str, list[tuple[Hit, ...]]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        pipes = {}
        for view in ("heterag", "naive"):
            pipes[view] = Pipeline(open_store("faiss", f"{tmp}/{view}", "tokens"), encoder, make_view(view),
                                   chunk_tokens=chunk_tokens)
            t = time.perf_counter()
            pipes[view].ingest(data.documents, batch_documents=256, total=len(data.documents))
            print(f"indexed {len(data.documents)} abstracts, {view} view, in {time.perf_counter() - t:.0f} s", flush=True)
        for q in questions:
            hits = pipes["heterag"].retrieve(q.question, k=max(50, k * 10))
            contexts["heterag"].append(tuple(hits[:k]))
            best: dict[str, float] = {}
            for h in hits:
                best.setdefault(h.doc_id, h.score)
            contexts["documents"].append(tuple(document_hit(docs[d], s) for d, s in list(best.items())[:k]))
            contexts["naive"].append(tuple(pipes["naive"].retrieve(q.question, k=k)))
            contexts["oracle"].append((document_hit(docs[q.doc_id], 1.0),))
            contexts["none"].append(())
        for p in pipes.values():
            p.close()
    return contexts


_HIT_FIELDS = ("chunk_id", "doc_id", "text", "view", "score", "title", "heading", "index")


def save_contexts(path, questions, contexts: dict[str, list[tuple[Hit, ...]]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = {kind: {q.id: [{f: getattr(h, f) for f in _HIT_FIELDS} for h in hits] for q, hits in zip(questions, per_q, strict=True)}
            for kind, per_q in contexts.items()}
    path.write_text(json.dumps(rows))


def load_contexts(path, questions, kinds) -> dict[str, list[tuple[Hit, ...]]] | None:
    """Contexts saved by an earlier run, or None when they do not cover these questions."""
    rows = json.loads(path.read_text())
    if any(kind not in rows or any(q.id not in rows[kind] for q in questions) for kind in kinds):
        return None
    return {kind: [tuple(Hit(**{**h, "heading": tuple(h["heading"])}) for h in rows[kind][q.id]) for q in questions]
            for kind in kinds}


def macro_f1(gold: np.ndarray, pred: np.ndarray) -> float:
    return float(f1_score(gold, pred, labels=list(LABELS), average="macro", zero_division=0))


def summarise(gold: Sequence[str], preds: dict[str, list[str]], idx: np.ndarray) -> dict[str, dict]:
    """Accuracy and macro-F1 with bootstrap intervals per kind, and paired differences (same resamples)."""
    g = np.asarray(gold, dtype=object)
    stats: dict[str, dict] = {}
    boot_acc: dict[str, np.ndarray] = {}
    boot_f1: dict[str, np.ndarray] = {}
    for kind, pred in preds.items():
        p = np.asarray(pred, dtype=object)
        correct = (p == g).astype(float)
        boot_acc[kind] = correct[idx].mean(axis=1)
        boot_f1[kind] = np.array([macro_f1(g[i], p[i]) for i in idx])
        stats[kind] = {"accuracy": float(correct.mean()), "accuracy_ci": _pct(boot_acc[kind]),
                       "macro_f1": macro_f1(g, p), "macro_f1_ci": _pct(boot_f1[kind])}
    paired = {}
    for a, b in PAIRS:
        if a in preds and b in preds:
            paired[f"{a}-{b}"] = {"accuracy": stats[a]["accuracy"] - stats[b]["accuracy"],
                                  "accuracy_ci": _pct(boot_acc[a] - boot_acc[b]),
                                  "macro_f1": stats[a]["macro_f1"] - stats[b]["macro_f1"],
                                  "macro_f1_ci": _pct(boot_f1[a] - boot_f1[b])}
    return {"kinds": stats, "paired": paired}


def _pct(values: np.ndarray) -> tuple[float, float]:
    return float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="test", choices=["test", "train"])
    ap.add_argument("--limit", type=int, default=None, help="first N questions of the split (default: all)")
    ap.add_argument("--free-limit", type=int, default=100, help="free answers on a seeded subset of N questions (0: none)")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--chunk-tokens", type=int, default=DEFAULT_CHUNK_TOKENS)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--system-prompt", default=None, choices=["default", "short"],
                    help="the generator's system prompt: prompting.DEFAULT_SYSTEM_PROMPT or local.SHORT_SYSTEM_PROMPT "
                         "(default: the generator's own)")
    ap.add_argument("--engine", default=None, help="LocalGenerator engine (default: the generator's default)")
    ap.add_argument("--model", default=None, help="a local model folder (safetensors) or .gguf file for the local generator "
                    "(default: the packaged SmolLM2-135M-Instruct)")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the report from the records of an earlier run's JSON (same arguments), no model calls")
    ap.add_argument("--checkpoint", type=int, default=10, help="rewrite the report every N questions")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run whose report (same arguments) is on disk: its answered questions are kept "
                         "and the seeded order goes on after them")
    ap.add_argument("--tag", default="", help="suffix of the report's file name")
    ap.add_argument("--rebuild-contexts", action="store_true", help="retrieve again instead of reusing saved contexts")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        sys.exit(f"unknown context kind(s) {sorted(unknown)}; choose from {', '.join(KINDS)}")
    progress = not os.environ.get("HETERAG_NO_PROGRESS")

    if args.report_only:
        saved = json.loads((OUT_DIR / f"{report_name(args)}.json").read_text())
        records = saved["records"]
        for recs in records.values():
            for r in recs:
                if "free_text" in r and not r.get("free_error"):
                    r["free"] = free_label(r["free_text"])  # the current rule
        reference = {int(n): p for n, p in (saved.get("content_free") or {}).items()}
        if not reference:  # runs from before calibration: the reference needs the model once
            from heterag.generators.local import LocalGenerator

            reference = content_free(LocalGenerator(**generator_kwargs(args)), records)
        report(args, saved["generator"], saved["load_seconds"], 1000, saved.get("split_questions", 500),
               saved["question_indices"], list(records), records, reference)
        return 0
    require_data(default_data_dir() / "pubmedqa", "PubMedQA")
    data = load_pubmedqa(split=args.split)
    questions = data.questions[: args.limit] if args.limit else data.questions
    docs = {d.id: d for d in data.documents}

    from heterag.generators.local import LocalGenerator

    t0 = time.perf_counter()
    gen = LocalGenerator(**generator_kwargs(args))
    load_s = time.perf_counter() - t0
    print(f"generator {gen!r} loaded in {load_s:.1f} s", flush=True)

    # ---- retrieval: one index per view, built once; the contexts are kept for later runs
    cache = OUT_DIR / f"end_to_end_contexts_k{args.k}_c{args.chunk_tokens}.json"
    contexts = load_contexts(cache, questions, kinds) if cache.is_file() and not args.rebuild_contexts else None
    if contexts is None:  # retrieve for the questions of both splits (same knowledge base), reused by later runs
        every = load_pubmedqa(split="all")
        save_contexts(cache, every.questions, build_contexts(every, every.questions, args.k, args.chunk_tokens))
        contexts = load_contexts(cache, questions, kinds)

    # ---- answers: question by question in a seeded random order, every kind for each; the report is
    # rewritten every --checkpoint questions, so a run stopped early reports a seeded random subset
    from tqdm import tqdm

    order = np.random.default_rng(args.seed).permutation(len(questions))
    reference: dict[int, dict] = {}
    records: dict[str, list[dict]] = {k: [] for k in kinds}
    done: list[int] = []
    if args.resume:
        records, done = resumed(args, order, kinds, questions)
        print(f"resuming after {len(done)} answered questions", flush=True)
    for step, i in enumerate(tqdm(order, desc="questions", disable=not progress), start=1):
        if step <= len(done):
            continue
        q = questions[i]
        for kind in kinds:
            hits = contexts[kind][i]
            t = time.perf_counter()
            scores = gen.score_options(q.question, hits, LABELS)
            score_s = time.perf_counter() - t
            rec = {"id": q.id, "gold": q.decision, "scored": scores.best, "probabilities": scores.probabilities(),
                   "passages": len(hits), "passages_used": scores.passages_used,
                   "context_tokens": gen.context_tokens(hits[: scores.passages_used]), "score_seconds": score_s,
                   "gold_in_context": any(h.doc_id == q.doc_id for h in hits[: scores.passages_used])}
            if step <= args.free_limit and hits:
                t = time.perf_counter()
                try:
                    answer = gen.generate(q.question + FREE_SUFFIX, hits)
                    rec.update(free_text=answer.text, free=free_label(answer.text),
                               free_citations=[c.number for c in answer.citations])
                except GeneratorError as exc:  # e.g. nothing but invalid markers: off-format, not a crash of the run
                    rec.update(free_text="", free=None, free_citations=[], free_error=str(exc))
                rec["free_seconds"] = time.perf_counter() - t
            records[kind].append(rec)
        done.append(int(i))
        if step % args.checkpoint == 0 or step == len(order):
            reference = content_free(gen, records, reference)
            report(args, gen, load_s, len(docs), len(questions), done, kinds, records, reference)
    return 0


def generator_kwargs(args) -> dict:
    kwargs = {"threads": args.threads, "max_new_tokens": args.max_new_tokens}
    if getattr(args, "model", None):
        kwargs["model"] = args.model
    if args.engine:
        kwargs["engine"] = args.engine
    if args.system_prompt:
        from heterag.generators.local import SHORT_SYSTEM_PROMPT
        from heterag.generators.prompting import DEFAULT_SYSTEM_PROMPT

        kwargs["system_prompt"] = DEFAULT_SYSTEM_PROMPT if args.system_prompt == "default" else SHORT_SYSTEM_PROMPT
    return kwargs


def content_free(gen, records: dict[str, list[dict]], known: dict[int, dict] | None = None) -> dict[int, dict]:
    """Content-free option probabilities for every passage count the records used (``known`` ones kept)."""
    known = dict(known or {})
    for n in sorted({r["passages_used"] for recs in records.values() for r in recs} - set(known)):
        known[n] = gen.content_free_probabilities(LABELS, passages=n)
    return known


def calibrated_label(rec: dict, reference: dict[int, dict]) -> str:
    """The scored label after contextual calibration (:meth:`OptionScores.calibrated`)."""
    from heterag.generators.local import OptionScores

    probs = rec["probabilities"]
    scores = OptionScores(LABELS, tuple(float(np.log(max(probs[o], 1e-300))) for o in LABELS), (1,) * len(LABELS),
                          rec["passages_used"])
    return scores.calibrated(reference[rec["passages_used"]]).best


def report(args, gen, load_s: float, n_docs: int, n_split: int, done: list[int], kinds: list[str],
           records: dict[str, list[dict]], reference: dict[int, dict]) -> None:
    """Statistics over the questions answered so far; prints and writes the report. ``reference``:
    content-free option probabilities per passage count (:func:`content_free`)."""
    n = len(done)
    gold = [r["gold"] for r in records[kinds[0]]]
    idx = np.random.default_rng(args.seed).integers(0, n, size=(args.resamples, n))
    scoring = summarise(gold, {k: [x["scored"] for x in records[k]] for k in kinds}, idx)
    calibrated_labels = {k: [calibrated_label(x, reference) for x in records[k]] for k in kinds}
    calibrated = summarise(gold, calibrated_labels, idx)
    free_kinds = [k for k in kinds if k != "none"]
    sub = [j for j in range(n) if "free" in records[free_kinds[0]][j]] if free_kinds else []
    free = None
    if sub:
        fidx = np.random.default_rng(args.seed).integers(0, len(sub), size=(args.resamples, len(sub)))
        free = summarise([gold[j] for j in sub],
                         {k: [records[k][j]["free"] or "off-format" for j in sub] for k in free_kinds}, fidx)
    per_kind = {}
    for k in kinds:
        r = records[k]
        tokens = [x["context_tokens"] for x in r]
        row = {"context_tokens": float(np.mean(tokens)), "context_tokens_ci": bootstrap_ci(tokens, n=args.resamples, seed=args.seed),
               "score_seconds": float(np.mean([x["score_seconds"] for x in r])),
               "gold_in_context": float(np.mean([x["gold_in_context"] for x in r]))}
        fr = [r[j] for j in sub if "free" in r[j]]
        if fr:
            row.update(free_seconds=float(np.mean([x["free_seconds"] for x in fr])),
                       free_on_format=float(np.mean([x["free"] is not None for x in fr])),
                       free_cited=float(np.mean([bool(x["free_citations"]) for x in fr])))
        per_kind[k] = row
    ratio = (per_kind["heterag"]["context_tokens"] / per_kind["documents"]["context_tokens"]
             if "heterag" in per_kind and "documents" in per_kind else None)

    def ci(s: dict, key: str) -> str:
        lo, hi = s[f"{key}_ci"]
        return f"{s[key]:.3f} [{lo:.3f}, {hi:.3f}]"

    def dci(s: dict, key: str) -> str:
        lo, hi = s[f"{key}_ci"]
        return f"{s[key]:+.3f} [{lo:+.3f}, {hi:+.3f}]"

    subset = "" if n == n_split else f" (a seeded random subset of the split's {n_split})"
    lines = [f"# End-to-end PubMedQA ({args.split} split, {n} questions{subset}; knowledge base {n_docs} abstracts)", "",
             f"Generator: {gen if isinstance(gen, str) else repr(gen)}, greedy, {args.max_new_tokens} new tokens at most (free mode); top-{args.k}; "
             f"{args.chunk_tokens}-token generation chunks; bootstrap {args.resamples} resamples, seed {args.seed}. "
             f"Load {load_s:.1f} s.", "",
             "| context | scoring accuracy [95% CI] | scoring macro-F1 [95% CI] | free accuracy [95% CI] | free macro-F1 | "
             "free on-format | context tokens / answer | s / scored answer | s / free answer | gold in context |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for k in kinds:
        s, row = scoring["kinds"][k], per_kind[k]
        f = free["kinds"].get(k) if free else None
        cells = [k, ci(s, "accuracy"), ci(s, "macro_f1"), ci(f, "accuracy") if f else "n/a",
                 ci(f, "macro_f1") if f else "n/a", f"{row['free_on_format']:.2f}" if f else "n/a",
                 f"{row['context_tokens']:.0f}", f"{row['score_seconds']:.2f}",
                 f"{row['free_seconds']:.2f}" if "free_seconds" in row else "n/a", f"{row['gold_in_context']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Free answers: {len(sub)} questions (the first of the seeded order); the `none` kind has none "
              "(the generator does not answer without sources).", "",
              "Paired differences (first kind minus second; the same resampled questions):", "",
              "| difference | scoring accuracy | scoring macro-F1 | free accuracy | free macro-F1 |", "|---|---|---|---|---|"]
    for name, d in scoring["paired"].items():
        f = free["paired"].get(name) if free else None
        lines.append(f"| {name} | {dci(d, 'accuracy')} | {dci(d, 'macro_f1')} | "
                     f"{dci(f, 'accuracy') if f else 'n/a'} | {dci(f, 'macro_f1') if f else 'n/a'} |")
    lines += ["", "Scoring after contextual calibration (content-free reference per passage count: " + "; ".join(
        f"{n} passages yes/no/maybe {p['yes']:.3f}/{p['no']:.3f}/{p['maybe']:.4f}" for n, p in sorted(reference.items())) + "):", "",
        "| context | calibrated accuracy [95% CI] | calibrated macro-F1 [95% CI] | answers yes/no/maybe |", "|---|---|---|---|"]
    for k in kinds:
        lines.append(f"| {k} | {ci(calibrated['kinds'][k], 'accuracy')} | {ci(calibrated['kinds'][k], 'macro_f1')} | "
                     + "/".join(str(calibrated_labels[k].count(lab)) for lab in LABELS) + " |")
    lines += ["", "| difference (calibrated) | accuracy | macro-F1 |", "|---|---|---|"]
    lines += [f"| {name} | {dci(d, 'accuracy')} | {dci(d, 'macro_f1')} |" for name, d in calibrated["paired"].items()]
    if ratio is not None:
        lines += ["", f"Short `heterag` chunks send {ratio:.3f}x the context tokens of whole documents."]
    lines += ["", "Label distribution (gold): " + ", ".join(f"{lab} {gold.count(lab)}" for lab in LABELS) + ".",
              "Scored answers per kind (yes/no/maybe): " + "; ".join(
                  f"{k} " + "/".join(str(sum(x["scored"] == lab for x in records[k])) for lab in LABELS) for k in kinds) + ".",
              ""]
    md = "\n".join(lines)
    print(md, flush=True)
    out = {"split": args.split, "questions": n, "split_questions": n_split, "question_indices": done, "args": vars(args), "generator": gen if isinstance(gen, str) else repr(gen),
           "load_seconds": load_s, "scoring": scoring, "calibrated": calibrated,
           "content_free": {str(n): p for n, p in reference.items()}, "free": free, "per_kind": per_kind,
           "chunks_to_documents_token_ratio": ratio, "records": records}
    print(f"written {write_report(report_name(args), out, md)}", flush=True)


def resumed(args, order: np.ndarray, kinds: list[str], questions) -> tuple[dict[str, list[dict]], list[int]]:
    """Records and answered question indices of the earlier run with the same arguments; exits when
    there is none or it does not match (other questions, order or kinds)."""
    path = OUT_DIR / f"{report_name(args)}.json"
    if not path.is_file():
        sys.exit(f"--resume: no earlier run at {path}")
    saved = json.loads(path.read_text())
    done = [int(i) for i in saved["question_indices"]]
    records = saved["records"]
    if list(records) != kinds or done != [int(i) for i in order[: len(done)]] or any(
            len(r) != len(done) or [x["id"] for x in r] != [questions[i].id for i in done] for r in records.values()):
        sys.exit(f"--resume: {path} is a run with other questions, order or kinds; start afresh without --resume")
    return records, done


def report_name(args) -> str:
    model = f"_{Path(args.model).stem}" if getattr(args, "model", None) else ""
    return f"end_to_end_{args.split}{model}" + (f"_{args.limit}" if args.limit else "") + \
        (f"_{args.system_prompt}" if args.system_prompt else "") + (f"_{args.tag}" if args.tag else "")


if __name__ == "__main__":
    sys.exit(main())
