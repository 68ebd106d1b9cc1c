"""Downstream tasks: what a test query asks, how an answer is read off the retrieved hits, and chance.

The sandbox measures the *downstream* harm of poisoning with a reader that only sees what the
generator sees (the retrieved texts, never metadata the attacker cannot write):

``classify`` (MedMNIST)
    An image-only query; each hit's text is read as a label by its nearest label description
    (cosine in the default text encoder's space; descriptions default to the knowledge base's
    own label texts, a scenario can add more), and the answer is the majority label of the
    top-k (ties: the best-ranked hit's label). Chance: always answering the knowledge base's most
    common label.
``scene_background`` (synthetic scenes)
    An image-only query; the answer is the majority background colour named in the hits'
    captions ("... on a noisy teal background."). Chance: the most common background colour.
``vqa_closed`` (VQA-RAD and any layout with CLOSED questions)
    A CLOSED question with its image; the reader parses the ``Question: ... Answer: ...`` lines of
    the hits, and the ``m`` pairs whose questions are most similar to the query's vote for their
    answers, weighted by that similarity (the reader of ``eval/vqa_rad_rag.py``). Chance: always
    answering the knowledge base's most common closed answer.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from corpora.annotated import AnnotatedImage
from corpora.synthetic_scenes import BACKGROUND_COLOURS
from heterag import Hit, load_text_encoder

from .scenario import ScenarioError

_QA = re.compile(r"Question:\s*(.+?)\s*Answer:\s*(.+?)\s*(?=Question:|$)", re.S)
_BACKGROUND = re.compile(r"\b(" + "|".join(sorted(BACKGROUND_COLOURS, key=len, reverse=True)) + r")\b(?:\s+gradient)?\s+background",
                         re.I)


def norm_answer(answer: str) -> str:
    return " ".join(str(answer).lower().strip().rstrip(".").split())


_SEEN: dict[str, np.ndarray] = {}


def embed(texts: Iterable[str]) -> np.ndarray:
    """Unit vectors of ``texts`` in the default text encoder's space (cached per text)."""
    texts = list(texts)
    missing = [t for t in dict.fromkeys(texts) if t not in _SEEN]
    if missing:
        for t, v in zip(missing, load_text_encoder(None).encode(missing), strict=True):
            _SEEN[t] = np.asarray(v, dtype=np.float32)
    return np.stack([_SEEN[t] for t in texts]) if texts else np.zeros((0, 384), dtype=np.float32)


@dataclass
class Task:
    """Base: queries of a test item, the gold label of an item, and reading an answer off hits."""

    name: str
    chance_answer: str = ""
    chance_rate_source: str = ""

    def queries_of(self, item: AnnotatedImage) -> list[tuple[str | None, str]]:
        raise NotImplementedError

    def label_of(self, item: AnnotatedImage) -> str:
        raise NotImplementedError

    def read(self, question: str | None, hits: Sequence[Hit]) -> str:
        raise NotImplementedError

    def chance_accuracy(self, queries: Sequence[Any]) -> float:
        """Accuracy of always giving :attr:`chance_answer` on these queries."""
        return float(np.mean([q.gold == self.chance_answer for q in queries])) if queries else 0.0


def _vote(labels: Sequence[str]) -> str:
    counts = Counter(labels)
    best = max(counts.values())
    return next(lab for lab in labels if counts[lab] == best)


@dataclass
class ClassifyTask(Task):
    descriptions: dict[str, list[str]] = field(default_factory=dict)
    #: label -> its name (from the items' ``label_name`` metadata, else the label itself)
    label_names: dict[str, str] = field(default_factory=dict)
    _protos: np.ndarray | None = None
    _names: list[str] = field(default_factory=list)
    _cache: dict[str, str] = field(default_factory=dict)

    def queries_of(self, item: AnnotatedImage) -> list[tuple[str | None, str]]:
        return [(None, self.label_of(item))]

    def label_of(self, item: AnnotatedImage) -> str:
        return str(item.metadata["label"])

    def _label_text(self, text: str) -> str:
        if text not in self._cache:
            if self._protos is None:
                self._names = sorted(self.descriptions)
                self._protos = np.stack([embed(self.descriptions[n]).mean(0) for n in self._names])
                self._protos /= np.linalg.norm(self._protos, axis=1, keepdims=True)
            v = embed([text])[0]
            self._cache[text] = self._names[int(np.argmax(self._protos @ v))]
        return self._cache[text]

    def read(self, question: str | None, hits: Sequence[Hit]) -> str:
        labels = [self._label_text(h.text) for h in hits if h.text.strip()]
        return _vote(labels) if labels else self.chance_answer


@dataclass
class SceneBackgroundTask(Task):
    def queries_of(self, item: AnnotatedImage) -> list[tuple[str | None, str]]:
        return [(None, self.label_of(item))]

    def label_of(self, item: AnnotatedImage) -> str:
        return background_of(item.text)

    def read(self, question: str | None, hits: Sequence[Hit]) -> str:
        labels = [background_of(h.text) for h in hits]
        labels = [lab for lab in labels if lab]
        return _vote(labels) if labels else self.chance_answer


def background_of(text: str) -> str:
    m = list(_BACKGROUND.finditer(text or ""))
    return m[-1].group(1).lower() if m else ""


def parse_qa(text: str) -> list[tuple[str, str]]:
    return [(q.strip(), a.strip()) for q, a in _QA.findall(text or "")]


@dataclass
class VQAClosedTask(Task):
    m: int = 5

    def queries_of(self, item: AnnotatedImage) -> list[tuple[str | None, str]]:
        return [(qa.question, norm_answer(qa.answer)) for qa in item.qa if str(qa.kind).upper() == "CLOSED"]

    def label_of(self, item: AnnotatedImage) -> str:
        return ""

    def read(self, question: str | None, hits: Sequence[Hit]) -> str:
        pairs = [(rank, q, a) for rank, h in enumerate(hits) for q, a in parse_qa(h.text)]
        if not pairs or not question:
            return self.chance_answer
        qv = embed([question])[0]
        sims = embed([q for _, q, _ in pairs]) @ qv
        order = sorted(range(len(pairs)), key=lambda i: (-sims[i], pairs[i][0]))[: self.m]
        votes: dict[str, float] = {}
        for i in order:
            a = norm_answer(pairs[i][2])
            votes[a] = votes.get(a, 0.0) + max(float(sims[i]), 0.0)
        return max(votes, key=votes.get)  # ties: the answer met first (dicts keep insertion order)


def _auto(kb: Sequence[AnnotatedImage]) -> str:
    first = kb[0]
    if first.metadata.get("source") == "synthetic_scenes":
        return "scene_background"
    if "label" in first.metadata:
        return "classify"
    if any(str(qa.kind).upper() == "CLOSED" for it in kb for qa in it.qa):
        return "vqa_closed"
    raise ScenarioError("data.task: cannot tell the task of this data (no labels, no CLOSED questions, not scenes); "
                        "set data.task")


def make_task(name: str, kb: Sequence[AnnotatedImage], label_descriptions: Mapping[int, list[str]] | None = None) -> Task:
    """The task ``name`` (``auto`` picks one from the data), with chance fixed from the knowledge base."""
    if name == "auto":
        name = _auto(kb)
    if name == "classify":
        if not all("label" in it.metadata for it in kb):
            raise ScenarioError("data.task: classify needs a 'label' in every item's metadata")
        texts: dict[str, list[str]] = {}
        for it in kb:
            texts.setdefault(str(it.metadata["label"]), [])
            if it.text and it.text not in texts[str(it.metadata["label"])]:
                texts[str(it.metadata["label"])].append(it.text)
        for label, extra in (label_descriptions or {}).items():
            texts.setdefault(str(label), []).extend(extra)
        counts = Counter(str(it.metadata["label"]) for it in kb)
        names = {str(it.metadata["label"]): str(it.metadata.get("label_name", it.metadata["label"])) for it in kb}
        return ClassifyTask("classify", counts.most_common(1)[0][0], "most common knowledge-base label",
                            descriptions={k: v for k, v in texts.items() if v}, label_names=names)
    if name == "scene_background":
        if not all(background_of(it.text) for it in kb):
            raise ScenarioError("data.task: scene_background needs captions that name a background colour "
                                "('... on a teal background.') for every item")
        counts = Counter(background_of(it.text) for it in kb)
        return SceneBackgroundTask("scene_background", counts.most_common(1)[0][0], "most common knowledge-base background")
    if name == "vqa_closed":
        answers = Counter(norm_answer(qa.answer) for it in kb for qa in it.qa if str(qa.kind).upper() == "CLOSED")
        if not answers:
            raise ScenarioError("data.task: vqa_closed needs CLOSED questions in the knowledge base")
        return VQAClosedTask("vqa_closed", answers.most_common(1)[0][0], "most common knowledge-base closed answer")
    raise ScenarioError(f"data.task: unknown task {name!r}")
