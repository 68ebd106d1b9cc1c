"""Tests for the corpora loaders: BEIR, files on disk, Markdown, pydoc topics, PubMedQA."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from corpora import (
    ItemError,
    RetrievalDataset,
    default_data_dir,
    is_beir_dir,
    iter_beir_corpus,
    iter_path,
    load_beir,
    load_pubmedqa,
    load_pydoc_topics,
    parse_markdown,
)
from heterag.core.documents import Document
from heterag.core.errors import InvalidInputError

# --------------------------------------------------------------------------- helpers


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def make_beir(root: Path, qrels_rows: list[tuple[str, str, int]] | None = None) -> Path:
    """A three-document, three-query BEIR directory with test qrels."""
    write_jsonl(
        root / "corpus.jsonl",
        [
            {"_id": "d1", "title": "Cats", "text": "Cats purr.", "metadata": {"url": "http://a", "tags": ["x"]}},
            {"_id": "d2", "title": "Dogs", "text": "Dogs bark."},
            {"_id": 3, "title": "", "text": "Fish swim."},
        ],
    )
    write_jsonl(
        root / "queries.jsonl",
        [{"_id": "q1", "text": "what purrs"}, {"_id": "q2", "text": "what barks"}, {"_id": "q3", "text": "unjudged"}],
    )
    rows = qrels_rows if qrels_rows is not None else [("q1", "d1", 1), ("q2", "d2", 2), ("q2", "3", 0)]
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in rows), encoding="utf-8"
    )
    return root


def split_items(items) -> tuple[list[Document], list[ItemError]]:
    items = list(items)
    docs = [i for i in items if isinstance(i, Document)]
    errors = [i for i in items if isinstance(i, ItemError)]
    assert len(docs) + len(errors) == len(items)
    return docs, errors


# --------------------------------------------------------------------------- base


def test_item_error_str() -> None:
    assert str(ItemError("a/b.txt", "file is empty")) == "a/b.txt: file is empty"


def test_default_data_dir_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HETERAG_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("HETERAG_DATA_DIR")
    assert default_data_dir() == Path(__file__).resolve().parents[1].parent / "shared" / "data"


# --------------------------------------------------------------------------- BEIR


def test_beir_round_trip(tmp_path: Path) -> None:
    ds = load_beir(make_beir(tmp_path / "toy"))
    assert isinstance(ds, RetrievalDataset)
    assert ds.name == "toy"
    assert [d.id for d in ds.documents] == ["d1", "d2", "3"]
    assert ds.documents[0].title == "Cats" and ds.documents[0].text == "Cats purr."
    assert ds.documents[0].metadata == {"url": "http://a"}  # non-scalar metadata dropped
    assert ds.queries == {"q1": "what purrs", "q2": "what barks"}  # q3 has no qrels
    assert ds.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "3": 0}}


def test_beir_missing_qrels_names_path(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "toy")
    with pytest.raises(InvalidInputError) as err:
        load_beir(root, split="dev")
    assert "qrels/dev.tsv" in str(err.value) and str(root) in str(err.value)
    assert "test" in str(err.value)  # lists the available splits


def test_beir_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_beir(tmp_path / "nope")


def test_beir_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "toy")
    with (root / "corpus.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"_id": "d4", "text": \n')
    with pytest.raises(InvalidInputError) as err:
        load_beir(root)
    assert "corpus.jsonl:4" in str(err.value) and "JSON" in str(err.value)


def test_beir_malformed_qrels_row(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "toy")
    with (root / "qrels" / "test.tsv").open("a", encoding="utf-8") as f:
        f.write("q1\td2\tvery\n")
    with pytest.raises(InvalidInputError, match=r"test\.tsv:5.*not an integer"):
        load_beir(root)


def test_beir_drops_qrels_for_unknown_docs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = make_beir(tmp_path / "toy", qrels_rows=[("q1", "d1", 1), ("q1", "ghost", 1), ("q2", "ghost2", 1)])
    with caplog.at_level(logging.WARNING, logger="corpora"):
        ds = load_beir(root)
    assert ds.qrels == {"q1": {"d1": 1}}
    assert set(ds.queries) == {"q1"}
    assert "dropped 2 judgement(s)" in caplog.text


def test_iter_beir_corpus_reports_bad_records(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "toy")
    with (root / "corpus.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({"_id": "empty", "title": "", "text": "  "}) + "\n")
        f.write("not json\n")
        f.write(json.dumps({"_id": "d1", "text": "duplicate"}) + "\n")
        f.write(json.dumps({"_id": "t", "title": "Title only", "text": ""}) + "\n")
    docs, errors = split_items(iter_beir_corpus(root))
    assert [d.id for d in docs] == ["d1", "d2", "3", "t"]
    assert docs[-1].text == "Title only"
    messages = [str(e) for e in errors]
    assert len(messages) == 3
    assert "corpus.jsonl:4" in messages[0] and "empty" in messages[0]
    assert "corpus.jsonl:5" in messages[1] and "JSON" in messages[1]
    assert "duplicate" in messages[2]


def test_load_beir_skips_unusable_records(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "toy")
    with (root / "corpus.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({"_id": "empty", "text": ""}) + "\n")
    assert len(load_beir(root).documents) == 3


# --------------------------------------------------------------------------- files


def test_iter_path_detects_beir(tmp_path: Path) -> None:
    root = make_beir(tmp_path / "toy")
    assert is_beir_dir(root)
    docs, errors = split_items(iter_path(root))
    assert [d.id for d in docs] == ["d1", "d2", "3"] and not errors


def test_text_tree_loads_sorted_with_relative_ids(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("Second file.\n\nTwo paragraphs.", encoding="utf-8")
    (tmp_path / "a.md").write_text("# Alpha\n\nBody.", encoding="utf-8")
    (tmp_path / "sub" / "c.md").write_text("no heading here", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\x00\x00")
    (tmp_path / ".hidden.md").write_text("secret", encoding="utf-8")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.md").write_text("internal", encoding="utf-8")
    docs, errors = split_items(iter_path(tmp_path))
    # a folder with text and images ingests both; this "image" is junk, so it is reported, the text loads
    assert [(e.source, "not a recognised image" in e.message) for e in errors] == [("image.png", True)]
    assert [d.id for d in docs] == ["a.md", "b.txt", "sub/c.md"]
    assert [d.title for d in docs] == ["Alpha", "b", "c"]
    assert docs[1].sections[0].text == "Second file.\n\nTwo paragraphs."  # paragraphs kept in one section
    assert [d.metadata["source"] for d in docs] == ["a.md", "b.txt", "sub/c.md"]


def test_ids_stable_across_runs(tmp_path: Path) -> None:
    (tmp_path / "doc.md").write_text("# T\n\nVersion one.", encoding="utf-8")
    first = [d.id for d in iter_path(tmp_path)]
    assert first == [d.id for d in iter_path(tmp_path)]
    (tmp_path / "doc.md").write_text("# T\n\nVersion two, edited.", encoding="utf-8")
    assert [d.id for d in iter_path(tmp_path)] == first == ["doc.md"]


def test_non_utf8_file_is_item_error_and_others_load(tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text("fine text", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    docs, errors = split_items(iter_path(tmp_path))
    assert [d.id for d in docs] == ["good.txt"]
    assert len(errors) == 1
    assert errors[0].source == "latin1.txt"
    assert "not valid UTF-8 (byte 0xe9 at offset 3)" in errors[0].message


def test_empty_and_whitespace_files(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.md").write_text("  \n\n\t\n", encoding="utf-8")
    (tmp_path / "only_headings.md").write_text("# Title\n## Sub\n", encoding="utf-8")
    docs, errors = split_items(iter_path(tmp_path))
    assert not docs
    assert sorted(e.source for e in errors) == ["blank.md", "empty.txt", "only_headings.md"]
    assert all("empty" in e.message for e in errors)


def test_binary_file_is_item_error(tmp_path: Path) -> None:
    (tmp_path / "blob.txt").write_bytes(b"abc\x00def")
    (docs, errors) = split_items(iter_path(tmp_path))
    assert not docs and "NUL" in errors[0].message


def test_huge_file_rejected_without_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "huge.txt"
    with big.open("wb") as f:
        f.truncate(50 * 2**20)  # sparse: 50 MiB on paper, nothing on disk
    (tmp_path / "small.txt").write_text("small", encoding="utf-8")

    original = Path.read_bytes

    def guarded_read_bytes(self: Path) -> bytes:
        assert self.name != "huge.txt", "the oversized file must not be read"
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", guarded_read_bytes)
    docs, errors = split_items(iter_path(tmp_path, max_document_bytes=10 * 2**20))
    assert [d.id for d in docs] == ["small.txt"]
    assert errors[0].source == "huge.txt"
    assert "50.0 MiB" in errors[0].message and "10.0 MiB limit" in errors[0].message


def test_single_files(tmp_path: Path) -> None:
    md = tmp_path / "notes.md"
    md.write_text("# Notes\n\nhello", encoding="utf-8")
    (doc,) = list(iter_path(md))
    assert doc.id == "notes.md" and doc.title == "Notes"
    other = tmp_path / "data.csv"
    other.write_text("a,b", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="unsupported file type .csv"):
        iter_path(other)
    with pytest.raises(InvalidInputError, match="does not exist"):
        iter_path(tmp_path / "missing.md")


def test_jsonl_file(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"id": "x", "title": "X", "text": "plain text", "metadata": {"lang": "en"}}),
                json.dumps({"sections": [{"heading": ["A", "B"], "text": "one"}, {"heading": "C", "text": "two"}]}),
                "{broken",
                json.dumps({"id": "y", "text": ""}),
                json.dumps({"id": "z", "text": "ok", "metadata": {"nested": {"no": 1}}}),
                json.dumps(["not", "an", "object"]),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    docs, errors = split_items(iter_path(path))
    assert [d.id for d in docs] == ["x", "docs.jsonl:2"]
    assert docs[0].metadata == {"source": "docs.jsonl", "lang": "en"}
    assert [s.heading for s in docs[1].sections] == [("A", "B"), ("C",)]
    assert [e.source for e in errors] == ["docs.jsonl:3", "docs.jsonl:4", "docs.jsonl:5", "docs.jsonl:6"]
    assert "JSON" in errors[0].message
    assert str(errors[0]).startswith("docs.jsonl:3: ")


# --------------------------------------------------------------------------- markdown


def test_markdown_heading_paths(tmp_path: Path) -> None:
    text = (
        "Preamble.\n"
        "# Guide #\n"
        "Intro.\n"
        "## Install\n"
        "Run pip.\n"
        "```bash\n"
        "# a shell comment, not a heading\n"
        "```\n"
        "### Linux\n"
        "apt.\n"
        "#### Debian\n"
        "deb.\n"
        "## Use\n"
        "Call it.\n"
        "#nohashtag heading\n"
        "# Appendix\n"
        "More.\n"
        "### Deep\n"
        "deeper.\n"
    )
    title, sections = parse_markdown(text, default_title="stem")
    assert title == "Guide"
    assert [s.heading for s in sections] == [
        (),
        (),
        ("Install",),
        ("Install", "Linux"),
        ("Install", "Linux", "Debian"),
        ("Use",),
        ("Appendix",),
        ("Appendix", "Deep"),
    ]
    assert "# a shell comment" in sections[2].text
    assert "#nohashtag" in sections[5].text
    (tmp_path / "g.md").write_text(text, encoding="utf-8")
    (doc,) = list(iter_path(tmp_path))
    assert doc.title == "Guide" and len(doc.sections) == 8


def test_markdown_title_defaults_to_stem() -> None:
    title, sections = parse_markdown("## Only level two\ntext", default_title="readme")
    assert title == "readme" and sections[0].heading == ("Only level two",)


# --------------------------------------------------------------------------- pydoc topics


def test_pydoc_topics() -> None:
    docs = load_pydoc_topics()
    assert len(docs) >= 70
    assert len({d.id for d in docs}) == len(docs)
    assert all(d.id.startswith("pydoc:") and d.text.strip() and d.title for d in docs)
    assert all(d.metadata["source"] == "pydoc_data.topics" for d in docs)
    by_id = {d.id: d for d in docs}
    assert by_id["pydoc:class"].title == "Class definitions"
    assert sum(1 for d in docs for s in d.sections if s.heading) >= 50
    compound = by_id["pydoc:compound"]
    headings = [s.heading for s in compound.sections]
    assert ('The "try" statement', '"except" clause') in headings
    assert ('The "match" statement', "Patterns", "OR Patterns") in headings
    assert all("*****" not in s.text and "=====" not in s.text.split("\n")[0] for s in compound.sections)


# --------------------------------------------------------------------------- PubMedQA

PUBMEDQA_DIR = default_data_dir() / "pubmedqa"
needs_pubmedqa = pytest.mark.skipif(
    not (PUBMEDQA_DIR / "ori_pqal.json").is_file(),
    reason=f"PubMedQA data not found at {PUBMEDQA_DIR} (set HETERAG_DATA_DIR to the shared data folder)",
)


@pytest.mark.data
@needs_pubmedqa
def test_pubmedqa_test_split() -> None:
    pq = load_pubmedqa(PUBMEDQA_DIR, split="test")
    assert len(pq.documents) == 1000
    assert len(pq.questions) == 500
    doc_ids = {d.id for d in pq.documents}
    assert all(q.doc_id in doc_ids for q in pq.questions)
    assert {q.decision for q in pq.questions} <= {"yes", "no", "maybe"}
    assert all(d.title == "" for d in pq.documents)
    assert all(d.sections for d in pq.documents)
    labelled = sum(1 for d in pq.documents for s in d.sections if s.heading)
    total = sum(len(d.sections) for d in pq.documents)
    assert labelled / total > 0.95
    assert ("Background",) in {s.heading for d in pq.documents for s in d.sections}
    # the question is derived from the title: it must not be in the indexed text
    for q in pq.questions[:50]:
        assert q.question not in next(d for d in pq.documents if d.id == q.doc_id).text


@pytest.mark.data
@needs_pubmedqa
def test_pubmedqa_splits_and_retrieval_dataset(tmp_path: Path) -> None:
    full = load_pubmedqa(PUBMEDQA_DIR)
    train = load_pubmedqa(PUBMEDQA_DIR, split="train")
    test = load_pubmedqa(PUBMEDQA_DIR, split="test")
    assert len(full.questions) == 1000
    assert {q.id for q in train.questions}.isdisjoint({q.id for q in test.questions})
    assert len(train.questions) + len(test.questions) == 1000
    doc = full.documents[0]
    assert {"pubid", "decision"} <= set(doc.metadata) and doc.metadata["pubid"] == doc.id

    ds = test.to_retrieval_dataset()
    assert len(ds.queries) == 500 and all(ds.qrels[q] == {q: 1} for q in ds.queries)

    beir = load_beir(test.to_beir(tmp_path / "pubmedqa-beir"))
    assert len(beir.documents) == 1000 and beir.qrels == ds.qrels and beir.queries == ds.queries
    assert all(d.title == "" for d in beir.documents)


def test_pubmedqa_bad_split() -> None:
    with pytest.raises(InvalidInputError, match="unknown PubMedQA split"):
        load_pubmedqa(split="dev")  # type: ignore[arg-type]
