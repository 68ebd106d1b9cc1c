"""Training soft-prompt adapters (``heterag tune``): pairs, hard-negative mining, InfoNCE, early stopping.

Objective (HeteRAG's adaptive prompt tuning; InfoNCE as in van den Oord et al., 2018, eq. 4, with
in-batch negatives as in DPR, Karpukhin et al., 2020, sec. 3.2): for a batch of ``B`` (query,
positive unit) pairs, each query is scored against every positive in the batch plus ``H`` hard
negatives per query, ``loss = CE(q·c / temperature, own positive)``. Candidates from a query's
other relevant documents are masked out. Hard negatives are mined once from the current index
(the corpus encoded through the view, without the adapter being trained): the best chunk of each
of the ``mine_depth`` top-ranked documents that are not relevant to the query; each step samples
``H`` of them (seeded).

Units are what the index stores (one vector per chunk, through its view); a pair's positive is
the best-scoring chunk of the relevant document under the untrained encoder (document-level
judgements, as in BEIR). With ``sides="query"`` (the default) only the query side is trained and
the index vectors stay fixed, so mining and validation use the stored vectors directly; with a
view-side prompt the candidates are re-encoded with the prompt at every step (slower).

Early stopping: ``val_fraction`` of the training *queries* (never pairs of one query on both
sides) are held out; training stops when their loss has not improved for ``patience`` epochs and
the best epoch's tensors are kept.

Pair sources: :func:`beir_pairs` (``qrels/<split>.tsv``; unknown ids are counted and skipped),
:func:`pubmedqa_pairs` (question -> its abstract) and :func:`pseudo_pairs` (no labels: a document's
title, its conclusion or a chunk's sentence is the query, the view *with that text removed* is the
positive, optionally kept only when the untrained encoder ranks it within a rank window).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from heterag.core.documents import Document, Section
from heterag.core.errors import InvalidInputError
from heterag.encoding.adapters import AdaptedEncoder, Adapter, encoder_layers, encoder_weights_hash, init_prompt, query_hash
from heterag.ingest.chunking import ChunkedDocument, chunk_document
from heterag.ingest.views import LateView, RetrievalView

log = logging.getLogger(__name__)

PAIR_SOURCES = ("beir", "pubmedqa", "pseudo")


@dataclass(frozen=True)
class TrainPair:
    """One training example: a query, the id of a document that answers it, and all its relevant documents."""

    qid: str
    query: str
    doc_id: str
    relevant: frozenset[str]
    unit: int | None = None  # a fixed positive unit (pseudo pairs); None = best chunk of ``doc_id``


@dataclass
class PairSet:
    pairs: list[TrainPair]
    source: str
    skipped: int = 0  # judgements or items skipped (unknown ids, unusable text)
    notes: list[str] = field(default_factory=list)

    def data_hash(self) -> str:
        h = hashlib.sha256()
        for p in sorted(self.pairs, key=lambda p: (p.qid, p.doc_id)):
            h.update(f"{p.qid}\x1f{p.query}\x1f{p.doc_id}\x1e".encode())
        return h.hexdigest()[:16]


# ---- units: what the index stores -------------------------------------------------------------
@dataclass
class UnitIndex:
    """The retrieval units of an index: one row per chunk (its view), plus extra positives appended.

    ``vectors`` float32 ``(n, dim)`` unit rows; ``windows[i]`` the unit's content token ids (no
    special tokens); ``spans[i]`` the chunk's token range inside a late window (None for
    naive/heterag, where the whole text is pooled); ``n_index`` rows are the index (mined and
    ranked), the rest are extra positives (pseudo pairs) that are never negatives.
    """

    doc_ids: list[str]
    vectors: np.ndarray
    windows: list[list[int]]
    spans: list[tuple[int, int] | None]
    n_index: int

    def __post_init__(self) -> None:
        self._by_doc: dict[str, list[int]] = {}
        for i in range(self.n_index):
            self._by_doc.setdefault(self.doc_ids[i], []).append(i)
        self._doc_array = np.array(self.doc_ids[: self.n_index])
        order = np.argsort(self._doc_array, kind="stable")
        self._order = order
        sorted_docs = self._doc_array[order]
        self._starts = np.flatnonzero(np.r_[True, sorted_docs[1:] != sorted_docs[:-1]]) if len(order) else np.zeros(0, int)
        self._unique = sorted_docs[self._starts] if len(order) else np.zeros(0, str)

    def units_of(self, doc_id: str) -> list[int]:
        return self._by_doc.get(doc_id, [])

    def doc_scores(self, qvecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (q, n_docs), best_unit (q, n_docs))``: each document's best chunk score and that chunk's row."""
        sims = qvecs @ self.vectors[self._order].T
        scores = np.maximum.reduceat(sims, self._starts, axis=1)
        best = np.empty_like(scores, dtype=np.int64)
        bounds = list(self._starts) + [sims.shape[1]]
        for d in range(len(self._starts)):
            best[:, d] = self._order[bounds[d] + np.argmax(sims[:, bounds[d] : bounds[d + 1]], axis=1)]
        return scores, best

    @property
    def doc_list(self) -> np.ndarray:
        return self._unique

    def rank(self, qvecs: np.ndarray, depth: int = 100) -> list[list[str]]:
        """Document ids best first (a document scores as its best chunk), ``depth`` per query."""
        out = []
        for b in range(0, len(qvecs), 256):
            sims = qvecs[b : b + 256] @ self.vectors[self._order].T
            scores = np.maximum.reduceat(sims, self._starts, axis=1)
            top = min(depth, scores.shape[1])
            part = np.argpartition(-scores, top - 1, axis=1)[:, :top]
            for r in range(len(part)):
                best = part[r][np.argsort(-scores[r, part[r]], kind="stable")]
                out.append(self._unique[best].tolist())
        return out


def build_unit_index(docs: Sequence[ChunkedDocument], view: RetrievalView, encoder: Any,
                     vectors: np.ndarray | None = None) -> UnitIndex:
    """Units of ``docs`` through ``view``; ``vectors`` (e.g. read from a store, in document-then-chunk
    order) skip the encoding, else they are computed with ``encoder``'s view side."""
    doc_ids = [c.doc_id for cd in docs for c in cd.chunks]
    windows: list[list[int]] = []
    spans: list[tuple[int, int] | None] = []
    base = encoder.base if isinstance(encoder, AdaptedEncoder) else encoder
    if isinstance(view, LateView):
        limit = min(view.window_tokens or encoder.default_window_tokens, encoder.max_window_tokens)
        for cd in docs:
            for ids, sp in view._windows(cd, encoder, limit):
                for a, b in sp:
                    windows.append(ids)
                    spans.append((a, b))
    else:
        texts = [t for cd in docs for t in view.texts(cd)]  # type: ignore[attr-defined]
        windows = AdaptedEncoder(base).content_ids(texts) if texts else []
        spans = [None] * len(texts)
    if vectors is None:
        _, vectors = view.embed(docs, encoder)
    if len(vectors) != len(doc_ids) or len(windows) != len(doc_ids):
        raise InvalidInputError(f"{len(vectors)} vectors for {len(doc_ids)} chunks: the index does not match the documents")
    return UnitIndex(doc_ids=doc_ids, vectors=np.asarray(vectors, dtype=np.float32), windows=windows, spans=spans,
                     n_index=len(doc_ids))


# ---- pair sources ---------------------------------------------------------------------------------
def beir_pairs(path: Any, split: str = "train") -> tuple[PairSet, list[Document]]:
    """Pairs from a BEIR folder's ``qrels/<split>.tsv`` (relevance > 0), and its corpus.

    Judgements naming unknown queries or documents are skipped and counted (``PairSet.skipped``,
    with examples in ``notes``). Raises :class:`InvalidInputError` when nothing usable is left.
    """
    from pathlib import Path

    from corpora.beir import beir_file, load_corpus_documents, read_qrels, read_queries

    root = Path(path)
    qrels_file = beir_file(root, f"qrels/{split}.tsv")
    qrels = read_qrels(qrels_file)
    queries = read_queries(beir_file(root, "queries.jsonl"))
    documents = load_corpus_documents(beir_file(root, "corpus.jsonl"), 10 * 2**20)
    known = {d.id for d in documents}
    pairs, skipped, examples = [], 0, []
    for qid, rels in qrels.items():
        positives = frozenset(d for d, r in rels.items() if r > 0 and d in known)
        for doc, rel in rels.items():
            if rel <= 0:
                continue
            if qid not in queries or doc not in known:
                skipped += 1
                if len(examples) < 3:
                    examples.append(f"{qid}->{doc}")
                continue
            pairs.append(TrainPair(qid=qid, query=queries[qid], doc_id=doc, relevant=positives))
    notes = [f"skipped {skipped} judgements with unknown query or document ids (e.g. {', '.join(examples)})"] if skipped else []
    for n in notes:
        log.warning("%s: %s", qrels_file, n)
    return PairSet(pairs, "beir", skipped, notes), documents


def pubmedqa_pairs(path: Any = None, split: str = "train") -> tuple[PairSet, list[Document]]:
    """PubMedQA pairs: each ``split`` question -> its own abstract (all abstracts are the corpus)."""
    from corpora import load_pubmedqa

    data = load_pubmedqa(path, split=split)
    pairs = [TrainPair(qid=q.id, query=q.question, doc_id=q.doc_id, relevant=frozenset({q.doc_id})) for q in data.questions]
    return PairSet(pairs, "pubmedqa"), list(data.documents)


_SENTENCE = re.compile(r"[^.!?]+[.!?]+(?=\s|$)")

PSEUDO_KINDS = ("title", "sentence", "conclusion")


@dataclass
class _Candidate:
    doc: ChunkedDocument  # the document with the query text removed, chunked again
    target: int | None  # the positive chunk; None: the document's best chunk for the query (document-level)
    query: str
    doc_id: str


def _without_span(cd: ChunkedDocument, section_index: int, a: int, b: int, chunk_tokens: int, encoder: Any) -> ChunkedDocument | None:
    sec = cd.doc.sections[section_index]
    new_text = (sec.text[:a] + sec.text[b:]).strip()
    sections = list(cd.doc.sections)
    if new_text:
        sections[section_index] = Section(new_text, sec.heading)
    else:
        del sections[section_index]
    if not sections:
        return None
    mod = Document(id=cd.doc.id, title=cd.doc.title, sections=tuple(sections), metadata=cd.doc.metadata)
    try:
        return chunk_document(mod, encoder.tokenize, chunk_tokens)
    except InvalidInputError:
        return None


def _candidates(docs: Sequence[ChunkedDocument], kind: str, encoder: Any, rng: np.random.Generator, min_words: int,
                max_words: int, chunk_tokens: int):
    """Yield :class:`_Candidate` (or None for an unusable item, counted as skipped) in a seeded order."""
    if kind == "sentence":
        items = [(di, ci) for di, cd in enumerate(docs) for ci in range(len(cd.chunks))]
    else:
        items = [(di, -1) for di in range(len(docs))]
    for k in rng.permutation(len(items)):
        di, ci = items[k]
        cd = docs[di]
        if kind == "title":
            title = (cd.doc.title or "").strip()
            if not (min_words <= len(title.split()) <= max_words):
                yield None
                continue
            mod = Document(id=cd.doc.id, title="", sections=cd.doc.sections, metadata=cd.doc.metadata)
            try:
                yield _Candidate(chunk_document(mod, encoder.tokenize, chunk_tokens), None, title, cd.doc.id)
            except InvalidInputError:
                yield None
            continue
        if kind == "conclusion":  # the document's last usable sentence (an abstract's conclusion: claim-like)
            found = None
            for s_idx in range(len(cd.doc.sections) - 1, -1, -1):
                sents = [m for m in _SENTENCE.finditer(cd.doc.sections[s_idx].text)
                         if min_words <= len(m.group().split()) <= max_words]
                if sents:
                    found = (s_idx, sents[-1])
                    break
            if found is None or len(cd.chunks) < 2:
                yield None
                continue
            s_idx, m = found
            mcd = _without_span(cd, s_idx, m.start(), m.end(), chunk_tokens, encoder)
            yield None if mcd is None else _Candidate(mcd, None, m.group().strip(), cd.doc.id)
            continue
        chunk = cd.chunks[ci]
        sents = [m for m in _SENTENCE.finditer(chunk.text) if min_words <= len(m.group().split()) <= max_words]
        if not sents or len(chunk.text.split()) < 2 * min_words:
            yield None
            continue
        m = sents[int(rng.integers(len(sents)))]
        a, b = chunk.start + m.start(), chunk.start + m.end()
        mcd = _without_span(cd, chunk.section_index, a, b, chunk_tokens, encoder)
        if mcd is None:
            yield None
            continue
        # the chunk that now holds the text right after the removed sentence
        target = next((c.index for c in mcd.chunks if c.section_index == chunk.section_index and c.end >= a), None)
        yield _Candidate(mcd, len(mcd.chunks) - 1 if target is None else target, m.group().strip(), cd.doc.id)


def pseudo_pairs(docs: Sequence[ChunkedDocument], view: RetrievalView, encoder: Any, units: UnitIndex, *,
                 n: int = 2000, seed: int = 0, kind: str = "title", keep_ranks: tuple[int, int] | None = None,
                 min_words: int | None = None, max_words: int = 40, chunk_tokens: int = 64,
                 progress: bool | None = None) -> PairSet:
    """Label-free pairs from the corpus itself; the query text is always removed from the positive.

    ``kind``:

    - ``"title"``: a document's title is the query; the positive is the best chunk (for the
      title, under the untrained encoder) of the document's views recomputed *without the title*
      (document-level, like BEIR's judgements). Claim-like for scientific corpora.
    - ``"conclusion"``: the document's last sentence (an abstract's conclusion) is the query;
      the positive is the best chunk of the document without it.
    - ``"sentence"``: a random sentence of a chunk; the positive is that chunk's view with the
      sentence removed (the first generator; it lowered SciFact nDCG@10, see eval/README.md).

    ``keep_ranks=(lo, hi)`` keeps a pair only when the untrained encoder ranks its positive's
    document at rank ``lo..hi`` (1-based) among the index's documents: ``hi`` drops queries it
    cannot answer at all (round-trip consistency filtering, Alberti et al., 2019, sec. 2;
    Promptagator, Dai et al., 2022, sec. 3.2), ``lo > 1`` drops those it already answers first.
    Candidates are drawn in a seeded order until ``n`` pairs are kept. The positives are
    appended to ``units`` as extra rows (never mined as negatives). Items without usable text
    (``min_words``..``max_words`` words; default 4 for titles, 6 for sentences) are skipped and
    counted in ``PairSet.skipped``; filtered ones are counted in ``PairSet.notes``.
    Raises :class:`InvalidInputError` for an unknown ``kind`` or bad ``keep_ranks``.
    """
    from tqdm.auto import tqdm

    if kind not in PSEUDO_KINDS:
        raise InvalidInputError(f"unknown pseudo-query kind {kind!r}; choose one of {', '.join(PSEUDO_KINDS)}")
    if keep_ranks is not None and not (1 <= keep_ranks[0] <= keep_ranks[1]):
        raise InvalidInputError(f"keep_ranks must be (lo, hi) with 1 <= lo <= hi, got {keep_ranks}")
    if min_words is None:
        min_words = 4 if kind == "title" else 6
    base = encoder.base if isinstance(encoder, AdaptedEncoder) else encoder
    plain = AdaptedEncoder(base)
    rng = np.random.default_rng(seed)
    pairs: list[TrainPair] = []
    skipped = easy = hopeless = 0
    new_vectors: list[np.ndarray] = []
    index_vectors = units.vectors[: units.n_index]
    order = units._order
    sorted_vectors = index_vectors[order]
    doc_pos = {d: i for i, d in enumerate(units.doc_list)}
    show = not (progress is False or (progress is None and n < 200) or bool(os.environ.get("HETERAG_NO_PROGRESS")))
    bar = tqdm(total=n, desc="pseudo pairs", unit="pair", leave=False, disable=not show)

    def flush(batch: list[_Candidate]) -> None:
        nonlocal easy, hopeless
        qv = plain.encode_queries([c.query for c in batch])
        if isinstance(view, LateView):  # a window holds many chunks: embed the documents, keep the wanted rows
            sub = build_unit_index([c.doc for c in batch], view, encoder)
            got, offset = [], 0
            for c in batch:
                rows = list(range(offset, offset + len(c.doc.chunks)))
                offset += len(c.doc.chunks)
                got.append([(sub.windows[r], sub.spans[r], sub.vectors[r]) for r in rows])
        else:  # text views: encode the target chunk's view, or all the document's chunks
            texts, owners = [], []
            for i, c in enumerate(batch):
                tv = view.texts(c.doc)  # type: ignore[attr-defined]
                chosen = tv if c.target is None else [tv[c.target]]
                texts.extend(chosen)
                owners.extend([i] * len(chosen))
            vecs = encoder.encode(texts)
            wins = plain.content_ids(texts)
            got = [[] for _ in batch]
            for i, w, v in zip(owners, wins, vecs, strict=True):
                got[i].append((w, None, v))
        if keep_ranks is not None:
            sims = qv @ sorted_vectors.T
            doc_best = np.maximum.reduceat(sims, units._starts, axis=1)
        for i, c in enumerate(batch):
            if len(pairs) >= n:
                return
            rows = got[i]
            if c.target is None:
                pick = int(np.argmax([float(qv[i] @ v) for _, _, v in rows]))
            else:
                pick = c.target if isinstance(view, LateView) else 0
            window, span, vec = rows[pick]
            if keep_ranks is not None:
                score = float(qv[i] @ vec)
                others = doc_best[i]
                own = doc_pos.get(c.doc_id)
                rank = 1 + int(np.sum(others > score)) - (1 if own is not None and others[own] > score else 0)
                if rank < keep_ranks[0]:
                    easy += 1
                    continue
                if rank > keep_ranks[1]:
                    hopeless += 1
                    continue
            units.doc_ids.append(c.doc_id)
            units.windows.append(window)
            units.spans.append(span)
            new_vectors.append(vec)
            idx = len(units.doc_ids) - 1
            pairs.append(TrainPair(qid=f"pseudo:{c.doc_id}:{idx}", query=c.query, doc_id=c.doc_id,
                                   relevant=frozenset({c.doc_id}), unit=idx))
            bar.update(1)

    batch: list[_Candidate] = []
    for cand in _candidates(docs, kind, encoder, rng, min_words, max_words, chunk_tokens):
        if len(pairs) >= n:
            break
        if cand is None:
            skipped += 1
            continue
        batch.append(cand)
        if len(batch) == 64:
            flush(batch)
            batch = []
    if batch and len(pairs) < n:
        flush(batch)
    bar.close()
    if new_vectors:
        units.vectors = np.concatenate([units.vectors, np.stack(new_vectors)]).astype(np.float32)
    notes = []
    if skipped:
        notes.append(f"skipped {skipped} {'documents' if kind != 'sentence' else 'chunks'} without a usable "
                     f"{'title' if kind == 'title' else 'sentence'}"
                     + (" (documents without titles, e.g. plain text files: try the pseudo kind 'sentence' or 'conclusion')"
                        if kind == "title" and not pairs else ""))
    if keep_ranks is not None:
        notes.append(f"rank filter {keep_ranks[0]}..{keep_ranks[1]}: dropped {easy} the untrained encoder already ranks "
                     f"better than {keep_ranks[0]} and {hopeless} it ranks worse than {keep_ranks[1]}")
    return PairSet(pairs, "pseudo", skipped, notes)


# ---- training --------------------------------------------------------------------------------------
@dataclass
class TuneConfig:
    """Training settings; ``lr`` None means 5e-3 for prompts, 2e-5 for ``full``. The defaults are the
    settings of the SciFact benchmark (eval/README.md, issue #10): lr, patience and temperature fixed
    before its first run; ``prompt_tokens`` and ``epochs`` chosen on its development fold."""

    prompt_tokens: int = 4  # chosen on SciFact fold 0 among 4, 8, 16 (eval/README.md, issue #10)
    sides: str = "query"
    deep: bool = False  # a prompt at every layer's input (adapters.py, "Deep prompts"), not only the first
    full: bool = False
    temperature: float = 0.05
    lr: float | None = None
    batch_size: int = 32
    hard_negatives: int = 8
    mine_depth: int = 30
    epochs: int = 15  # at most; 4 stopped too early on the development fold (+0.48 vs +1.72 nDCG@10)
    patience: int = 1
    val_fraction: float = 0.1
    seed: int = 0
    threads: int | None = None
    min_pairs: int = 8

    def __post_init__(self) -> None:
        from heterag.encoding.adapters import SIDES

        if self.sides not in SIDES:
            raise InvalidInputError(f"unknown sides {self.sides!r}; choose one of {', '.join(SIDES)}")
        if self.full and self.sides not in ("query", "shared"):
            raise InvalidInputError("--full fine-tunes the query side or both: use --sides query or shared")
        if self.full and self.deep:
            raise InvalidInputError("--deep is a prompt setting; --full fine-tunes every weight instead")
        if not self.full and not (1 <= self.prompt_tokens <= 256):
            raise InvalidInputError(f"--prompt-tokens must be 1..256, got {self.prompt_tokens}")
        if not (0 < self.temperature < float("inf")):
            raise InvalidInputError(f"temperature must be > 0 and finite, got {self.temperature}")
        if self.seed < 0 or (self.threads is not None and self.threads < 1):
            raise InvalidInputError(f"seed must be >= 0 and threads >= 1, got seed {self.seed}, threads {self.threads}")
        for name in ("batch_size", "epochs", "mine_depth", "patience"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"{name} must be >= 1")
        if self.lr is not None and not (0 < self.lr < float("inf")):
            raise InvalidInputError(f"lr must be > 0, got {self.lr}")
        if self.hard_negatives < 0 or not (0 <= self.val_fraction < 1):
            raise InvalidInputError("hard_negatives must be >= 0 and val_fraction in [0, 1)")


@dataclass
class TuneResult:
    adapter: Adapter
    metrics: dict[str, Any]


def _split_queries(pairs: Sequence[TrainPair], fraction: float, seed: int) -> tuple[list[TrainPair], list[TrainPair]]:
    qids = sorted({p.qid for p in pairs})
    rng = np.random.default_rng([seed, 17])
    n_val = int(round(len(qids) * fraction)) if len(qids) >= 10 else 0
    val = set(rng.permutation(qids)[:n_val].tolist()) if n_val else set()
    return [p for p in pairs if p.qid not in val], [p for p in pairs if p.qid in val]


def mine(pairs: Sequence[TrainPair], units: UnitIndex, encoder: AdaptedEncoder, depth: int) -> tuple[list[int], list[list[int]]]:
    """Positive unit and hard-negative units (best chunks of the top ``depth`` non-relevant documents) per pair."""
    queries = sorted({p.query for p in pairs})
    qv = encoder.encode_queries(queries) if queries else np.zeros((0, units.vectors.shape[1]), np.float32)
    qrow = {q: i for i, q in enumerate(queries)}
    scores, best = units.doc_scores(qv)
    docs = units.doc_list
    col = {d: i for i, d in enumerate(docs)}
    positives, negatives = [], []
    cache: dict[str, list[int]] = {}
    for p in pairs:
        r = qrow[p.query]
        if p.unit is not None:
            positives.append(p.unit)
        else:
            positives.append(int(best[r, col[p.doc_id]]))
        key = f"{p.query}\x1f{sorted(p.relevant)}"
        if key not in cache:
            top = np.argsort(-scores[r], kind="stable")[: depth + len(p.relevant)]
            cache[key] = [int(best[r, d]) for d in top if docs[d] not in p.relevant][:depth]
        negatives.append(cache[key])
    return positives, negatives


def train_adapter(pairs: PairSet, units: UnitIndex, encoder: Any, config: TuneConfig, *,
                  progress: bool | None = None, extra_meta: Mapping[str, Any] | None = None) -> TuneResult:
    """Train an adapter for ``encoder`` (a TextEncoder) on ``pairs`` against ``units``.

    Raises :class:`InvalidInputError` for an empty pair set (or fewer than ``config.min_pairs``)
    and for pairs whose documents have no unit in the index.
    """
    import torch
    from tqdm.auto import tqdm

    base = encoder.base if isinstance(encoder, AdaptedEncoder) else encoder
    if not pairs.pairs:
        raise InvalidInputError(f"no training pairs ({pairs.source}): nothing to train on"
                                + (f"; {'; '.join(pairs.notes)}" if pairs.notes else ""))
    if len(pairs.pairs) < config.min_pairs:
        raise InvalidInputError(f"only {len(pairs.pairs)} training pairs ({pairs.source}); at least {config.min_pairs} are needed")
    usable = [p for p in pairs.pairs if p.unit is not None or units.units_of(p.doc_id)]
    if len(usable) < len(pairs.pairs):
        log.warning("%d pairs name documents with no chunk in the index; skipped", len(pairs.pairs) - len(usable))
    if not usable:
        raise InvalidInputError("none of the training pairs' documents is in the index")
    t0 = time.perf_counter()
    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        torch.manual_seed(config.seed)
        plain = AdaptedEncoder(base)
        train, val = _split_queries(usable, config.val_fraction, config.seed)
        if not train:
            raise InvalidInputError("no training pairs left after holding out the validation queries")
        pos_train, neg_train = mine(train, units, plain, config.mine_depth)
        pos_val, neg_val = mine(val, units, plain, config.mine_depth) if val else ([], [])
        P = config.prompt_tokens
        hidden = int(base._transformer.config.hidden_size)
        depth = len(encoder_layers(base._transformer)) if config.deep else 1  # --deep excludes --full
        params: dict[str, torch.nn.Parameter] = {}
        models = {"query": base._transformer, "view": base._transformer}
        if config.full:
            tuned = copy.deepcopy(base._transformer)
            tuned.train()
            for prm in tuned.parameters():
                prm.requires_grad_(True)
            models["query"] = tuned
            if config.sides == "shared":
                models["view"] = tuned
            trainable = list(tuned.parameters())
            lr = config.lr or 2e-5
        else:
            names = {"separate": ["query_prompt", "view_prompt"]}.get(config.sides, ["prompt"])
            for i, name in enumerate(names):
                params[name] = torch.nn.Parameter(init_prompt(base, P, seed=config.seed + i, depth=depth))
            trainable = list(params.values())
            lr = config.lr or 5e-3
        for prm in base._transformer.parameters():
            prm.requires_grad_(False)

        def prompt(side: str):
            if config.full:
                return None
            if config.sides == "separate":
                return params[f"{side}_prompt"]
            if config.sides == "shared" or config.sides == side:
                return params["prompt"]
            return None

        view_trained = (config.sides in ("view", "separate", "shared"))
        query_trained = config.sides in ("query", "separate", "shared")
        qids_cache: dict[str, list[int]] = {}

        def qids(texts: Sequence[str]) -> list[list[int]]:
            missing = [t for t in texts if t not in qids_cache]
            if missing:
                for t, ids in zip(missing, plain.content_ids(missing), strict=True):
                    qids_cache[t] = ids
            return [qids_cache[t] for t in texts]

        vec_all = torch.from_numpy(units.vectors)
        prefix, suffix = base._special_template
        room = base.max_positions - (0 if config.full else P) - len(prefix) - len(suffix)  # content tokens that fit

        def batch_loss(batch: Sequence[TrainPair], pos: Sequence[int], negs: Sequence[Sequence[int]], rng: np.random.Generator):
            cand: list[int] = []
            where: dict[int, int] = {}

            def add(u: int) -> int:
                if u not in where:
                    where[u] = len(cand)
                    cand.append(u)
                return where[u]

            targets = [add(u) for u in pos]
            for ns in negs:
                if config.hard_negatives and ns:
                    pick = ns if len(ns) <= config.hard_negatives else [ns[i] for i in sorted(
                        rng.choice(len(ns), config.hard_negatives, replace=False))]
                    for u in pick:
                        add(u)
            qtexts = [p.query for p in batch]
            if query_trained:
                q = plain.sentence_vectors([w[:room] for w in qids(qtexts)], "query", prompt=prompt("query"),
                                           model=models["query"])
            else:
                with torch.no_grad():
                    q = torch.from_numpy(plain.encode_queries(qtexts))
            if view_trained:
                wins = [units.windows[u] for u in cand]
                if units.spans[cand[0]] is None:
                    c = plain.sentence_vectors([w[:room] for w in wins], "view", prompt=prompt("view"), model=models["view"])
                else:
                    c = plain.span_vectors(wins, [units.spans[u] for u in cand], "view", prompt=prompt("view"),
                                           model=models["view"])
            else:
                c = vec_all[cand]
            logits = q @ c.T / config.temperature
            cand_docs = [units.doc_ids[u] for u in cand]
            mask = torch.zeros_like(logits, dtype=torch.bool)
            for i, p in enumerate(batch):
                for j, d in enumerate(cand_docs):
                    if d in p.relevant and j != targets[i]:
                        mask[i, j] = True
            logits = logits.masked_fill(mask, float("-inf"))
            return torch.nn.functional.cross_entropy(logits, torch.tensor(targets))

        opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0 if not config.full else 0.01)
        steps_per_epoch = math.ceil(len(train) / config.batch_size)
        total = steps_per_epoch * config.epochs
        show = not (progress is False or (progress is None and total < 20) or os.environ.get("HETERAG_NO_PROGRESS"))
        bar = tqdm(total=total, desc="tune", unit="step", disable=not show, leave=False)
        train_curve, val_curve = [], []

        def snapshot() -> dict[str, torch.Tensor]:
            if config.full:
                return {f"full.{k}": v.detach().clone() for k, v in models["query"].state_dict().items()}
            return {k: v.detach().clone() for k, v in params.items()}

        best_state, best_val, best_epoch, bad = snapshot(), float("inf"), 0, 0

        def validate() -> float:
            if not val:
                return float("nan")
            if config.full:
                models["query"].eval()
            vr = np.random.default_rng([config.seed, 99])
            losses = []
            with torch.no_grad():
                for s in range(0, len(val), config.batch_size):
                    sl = slice(s, s + config.batch_size)
                    losses.append(float(batch_loss(val[sl], pos_val[sl], neg_val[sl], vr)) * len(val[sl]))
            if config.full:
                models["query"].train()
            return sum(losses) / len(val)

        val0 = validate()
        val_curve.append(val0)
        if val:
            best_val = val0
        stopped = "max epochs"
        for epoch in range(1, config.epochs + 1):
            rng = np.random.default_rng([config.seed, epoch])
            order = rng.permutation(len(train))
            running = 0.0
            for s in range(steps_per_epoch):
                idx = order[s * config.batch_size : (s + 1) * config.batch_size]
                loss = batch_loss([train[i] for i in idx], [pos_train[i] for i in idx], [neg_train[i] for i in idx], rng)
                opt.zero_grad()
                loss.backward()
                opt.step()
                running += float(loss.detach()) * len(idx)
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{float(loss.detach()):.3f}")
            train_curve.append(running / len(train))
            v = validate()
            val_curve.append(v)
            log.info("epoch %d: train loss %.4f, held-out loss %.4f", epoch, train_curve[-1], v)
            if not val:
                best_state, best_epoch = snapshot(), epoch
                continue
            if v < best_val - 1e-4:
                best_val, best_state, best_epoch, bad = v, snapshot(), epoch, 0
            else:
                bad += 1
                if bad >= config.patience:
                    stopped = f"early stop after epoch {epoch} (no held-out improvement for {config.patience})"
                    break
        bar.close()
    finally:
        torch.set_num_threads(threads_before)
        for prm in base._transformer.parameters():
            prm.requires_grad_(False)
    seconds = time.perf_counter() - t0
    metrics = {"train_loss": [round(x, 5) for x in train_curve], "held_out_loss": [round(x, 5) for x in val_curve],
               "best_epoch": best_epoch, "stopped": stopped, "seconds": round(seconds, 2),
               "train_pairs": len(train), "held_out_pairs": len(val), "train_queries": len({p.qid for p in train}),
               "held_out_queries": len({p.qid for p in val})}
    cfg = asdict(config)
    adapter = Adapter(
        kind="full" if config.full else "prompt", base_model=base.identity, base_hash=encoder_weights_hash(base),
        prompt_tokens=0 if config.full else P, sides=config.sides, hidden=hidden, tensors=best_state, depth=depth,
        training={"source": pairs.source, "pairs": len(pairs.pairs), "skipped": pairs.skipped, "data_hash": pairs.data_hash(),
                  "seed": config.seed, "config": cfg, "metrics": metrics,
                  "trained_queries": sorted({query_hash(p.query) for p in usable}), **dict(extra_meta or {})},
    )
    log.info("trained %s in %.1f s (%s)", adapter.describe(), seconds, stopped)
    return TuneResult(adapter, metrics)


def with_config(config: TuneConfig, **changes: Any) -> TuneConfig:
    return replace(config, **changes)


def describe_result(result: TuneResult) -> str:
    m = result.metrics
    return json.dumps({"hash": result.adapter.hash, "bytes": result.adapter.nbytes(), **m})
