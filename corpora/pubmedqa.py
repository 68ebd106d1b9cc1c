"""PubMedQA PQA-L (Jin et al., 2019): 1,000 expert-labelled biomedical yes/no/maybe questions.

Each item of ``ori_pqal.json`` (keyed by PubMed id) holds a QUESTION, its abstract as labelled
CONTEXTS (BACKGROUND, METHODS, RESULTS...), the conclusion as LONG_ANSWER, MeSH terms, the
YEAR and the ``final_decision``. ``test_ground_truth.json`` lists the 500 test items.

The QUESTION is derived from the article title, so documents are built with an empty title
and without the conclusion: indexing either would turn retrieval into string matching and
leak the answer.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from heterag.core.documents import Document, Section
from heterag.core.errors import InvalidInputError

from .base import RetrievalDataset, default_data_dir

logger = logging.getLogger(__name__)

DATA_FILE = "ori_pqal.json"
TEST_FILE = "test_ground_truth.json"
DECISIONS = frozenset({"yes", "no", "maybe"})
#: Context label used by PubMed for abstracts without structure; it gives no heading.
UNLABELLED = "UNLABELLED"

Split = Literal["all", "test", "train"]


@dataclass(frozen=True)
class PubMedQAQuestion:
    """A question, the abstract that answers it, and its expert answer."""

    id: str
    question: str
    doc_id: str
    decision: str  # yes / no / maybe
    long_answer: str


@dataclass
class PubMedQA:
    """The PubMedQA knowledge base (always all abstracts) and the questions of one split."""

    documents: list[Document]
    questions: list[PubMedQAQuestion]
    split: str = "all"

    def __repr__(self) -> str:
        return f"PubMedQA(split={self.split!r}, documents={len(self.documents)}, questions={len(self.questions)})"

    def to_retrieval_dataset(self) -> RetrievalDataset:
        """Questions as queries; each question's one relevant document is its own abstract."""
        return RetrievalDataset(
            name=f"pubmedqa-{self.split}",
            documents=list(self.documents),
            queries={q.id: q.question for q in self.questions},
            qrels={q.id: {q.doc_id: 1} for q in self.questions},
        )

    def to_beir(self, out_dir: str | Path, qrels_split: str = "test") -> Path:
        """Write the BEIR layout (corpus.jsonl, queries.jsonl, qrels/<qrels_split>.tsv) to ``out_dir``.

        Titles are written empty and the text is the abstract's contexts joined by blank
        lines, so a BEIR evaluator sees exactly what :meth:`to_retrieval_dataset` indexes
        (minus the section headings).
        """
        out = Path(out_dir)
        (out / "qrels").mkdir(parents=True, exist_ok=True)
        with (out / "corpus.jsonl").open("w", encoding="utf-8") as f:
            for doc in self.documents:
                record = {"_id": doc.id, "title": "", "text": doc.text, "metadata": dict(doc.metadata)}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        with (out / "queries.jsonl").open("w", encoding="utf-8") as f:
            for q in self.questions:
                f.write(json.dumps({"_id": q.id, "text": q.question}, ensure_ascii=False) + "\n")
        with (out / "qrels" / f"{qrels_split}.tsv").open("w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for q in self.questions:
                f.write(f"{q.id}\t{q.doc_id}\t1\n")
        logger.info("wrote PubMedQA (%s) in BEIR layout to %s", self.split, out)
        return out


def load_pubmedqa(path: str | Path | None = None, split: Split = "all") -> PubMedQA:
    """Load PubMedQA PQA-L from ``path`` (default: ``<data dir>/pubmedqa``).

    ``split`` selects the questions: ``"test"`` (the 500 in ``test_ground_truth.json``),
    ``"train"`` (the other 500) or ``"all"``. Documents are always all 1,000 abstracts, so
    retrieval is measured against the full knowledge base.
    """
    if split not in ("all", "test", "train"):
        raise InvalidInputError(f"unknown PubMedQA split {split!r}; choose one of: all, test, train")
    root = Path(path) if path is not None else default_data_dir() / "pubmedqa"
    items = _read_json(root / DATA_FILE)
    if not isinstance(items, dict):
        raise InvalidInputError(f"{root / DATA_FILE}: expected an object keyed by PubMed id")
    documents = [_document(str(pubid), item) for pubid, item in items.items()]
    selected = _split_ids(root, split, items)
    questions = [_question(str(pubid), items[pubid]) for pubid in items if pubid in selected]
    logger.info("loaded PubMedQA (%s): %d documents, %d questions", split, len(documents), len(questions))
    return PubMedQA(documents=documents, questions=questions, split=split)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise InvalidInputError(f"PubMedQA file {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc})") from None


def _split_ids(root: Path, split: Split, items: dict[str, Any]) -> set[str]:
    """PubMed ids of the questions in ``split``."""
    if split == "all":
        return set(items)
    test = _read_json(root / TEST_FILE)
    if not isinstance(test, dict):
        raise InvalidInputError(f"{root / TEST_FILE}: expected an object keyed by PubMed id")
    unknown = set(test) - set(items)
    if unknown:
        logger.warning("%s: %d test id(s) not in %s; ignored", TEST_FILE, len(unknown), DATA_FILE)
    test_ids = set(test) & set(items)
    return test_ids if split == "test" else set(items) - test_ids


def _document(pubid: str, item: dict[str, Any]) -> Document:
    """The abstract of one item: a section per context, headed by its label; no title."""
    contexts, labels = item.get("CONTEXTS") or [], item.get("LABELS") or []
    if len(labels) != len(contexts):
        logger.warning("PubMedQA %s: %d contexts but %d labels; headings dropped", pubid, len(contexts), len(labels))
        labels = [""] * len(contexts)
    sections = [Section(text=text, heading=_heading(label)) for text, label in zip(contexts, labels, strict=True)]
    return Document.create(
        sections=sections, title="", id=pubid, metadata=_metadata(pubid, item), source=f"PubMedQA {pubid}"
    )


def _heading(label: str) -> tuple[str, ...]:
    """``"BACKGROUND"`` -> ``("Background",)``; unlabelled contexts get no heading."""
    label = (label or "").strip()
    return () if not label or label.upper() == UNLABELLED else (label.title(),)


def _metadata(pubid: str, item: dict[str, Any]) -> dict[str, str | int]:
    meta: dict[str, str | int] = {"pubid": pubid, "decision": _decision(pubid, item)}
    year = str(item.get("YEAR") or "").strip()
    if year.isdigit():
        meta["year"] = int(year)
    meshes = item.get("MESHES") or []
    if meshes:
        meta["mesh"] = "; ".join(str(m) for m in meshes)
    return meta


def _decision(pubid: str, item: dict[str, Any]) -> str:
    decision = str(item.get("final_decision", "")).strip().lower()
    if decision not in DECISIONS:
        raise InvalidInputError(f"PubMedQA {pubid}: final_decision {decision!r} is not yes, no or maybe")
    return decision


def _question(pubid: str, item: dict[str, Any]) -> PubMedQAQuestion:
    return PubMedQAQuestion(
        id=pubid,
        question=str(item.get("QUESTION", "")).strip(),
        doc_id=pubid,
        decision=_decision(pubid, item),
        long_answer=str(item.get("LONG_ANSWER", "")).strip(),
    )
