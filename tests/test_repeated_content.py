"""Repeated content inside one document is stored once (issue 13, break-test bt13b findings 1 and 4)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
from cli_helpers import split
from format_samples import FIGURE_CAPTIONS, _png, chart
from PIL import Image, ImageDraw

from corpora.files import iter_path
from heterag import Document, open_collection
from heterag.cli import main

QUESTIONS = {
    "What causes the tides?": "tides.md",
    "How do honey bees tell each other where flowers are?": "bees.txt",
    "What is mandatory above the firn line?": "rope.txt",
    "When are the ablation stakes read?": "stakes.txt",
}


def run(capsys, *argv: str) -> int:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    capsys.readouterr()
    return code


def test_a_document_of_identical_chunks_is_stored_once_and_hides_nothing(capsys, tmp_path: Path):
    """~200 identical chunks once put ~200 identical vectors into Chroma's HNSW index, which then
    dropped other documents' best hits, differently per process. Now the run is a few records and
    every reopening finds the right document first."""
    root = tmp_path / "kb"
    root.mkdir()
    (root / "disclaimer.txt").write_text(("crevasse " * 4200).strip() + "\n")
    (root / "tides.md").write_text("# Tides\n\nTides are caused mainly by the gravitational pull of the Moon.\n")
    (root / "bees.txt").write_text("Honey bees communicate the direction of flowers with a waggle dance.\n")
    (root / "rope.txt").write_text("Above the firn line, roping up is mandatory for every field team crossing "
                                   "snow-covered glacier ice.\n")
    (root / "stakes.txt").write_text("The ablation stakes are read every two weeks from June to September.\n")
    assert run(capsys, "ingest", str(root), "--collection", "rep") == 0
    rag = open_collection("rep", create=False)
    try:
        chunks = {d.id: d.chunks for d in rag.documents()}
        assert rag.store.count() < 10, chunks
        assert chunks["disclaimer.txt"] <= 3, chunks
        records = rag.document_chunks("disclaimer.txt")
        assert len({(r.text, r.metadata.get("view")) for r in records}) == len(records)  # no two alike
    finally:
        rag.close()
    for _ in range(3):  # several reopenings (each loads the HNSW index again)
        rag = open_collection("rep", create=False)
        try:
            for question, doc in QUESTIONS.items():
                assert rag.retrieve(question, k=3)[0].doc_id == doc, question
        finally:
            rag.close()
    # a collection stored before repeats were dropped: its extra records go at the next ingest
    rag = open_collection("rep", create=False)
    try:
        (first,) = rag.store.get(ids=[rag.document_chunks("disclaimer.txt")[0].id], include_vectors=True)
        old = [dataclasses.replace(first, id=f"old-repeat-{i}", metadata={**first.metadata, "chunk_index": 100 + i})
               for i in range(3)]
        rag.store.upsert(old)
        before = rag.store.count()
    finally:
        rag.close()
    assert run(capsys, "ingest", str(root), "--collection", "rep") == 0
    rag = open_collection("rep", create=False)
    try:
        assert rag.store.count() == before - 3 and chunks == {d.id: d.chunks for d in rag.documents()}
    finally:
        rag.close()
    # a second ingest of the same folder is a no-op (the dropped repeats are not "missing")
    try:
        code = main(["ingest", str(root), "--collection", "rep"])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert code == 0 and "0 documents written" in out + err and "5 unchanged" in out + err, out + err


def test_a_document_without_repeats_keeps_every_chunk_and_id(encoder):
    """Chunk ids of documents without repeats are what they were before (re-ingesting old collections stays a no-op)."""
    from heterag.ingest.chunking import chunk_document
    from heterag.ingest.views import HeteragView, LateView, NaiveView, distinct_chunks

    doc = Document.create(" ".join(f"Sentence number {i} talks about topic {i * 7}." for i in range(60)), id="d", title="T")
    cd = chunk_document(doc, encoder.tokenize, 32)
    assert len(cd.chunks) > 3
    for view in (NaiveView(), HeteragView(), LateView()):
        assert distinct_chunks(view, cd) == list(range(len(cd.chunks)))
    rep = chunk_document(Document.create("same words here. " * 200, id="r", title="R"), encoder.tokenize, 16)
    for view in (NaiveView(), HeteragView(), LateView()):
        keep = distinct_chunks(view, rep)
        assert keep[0] == 0 and len(keep) <= 4 < len(rep.chunks)


def _logo() -> Image.Image:
    img = Image.new("RGB", (120, 60), "white")
    d = ImageDraw.Draw(img)
    d.rectangle([5, 5, 115, 55], outline="navy", width=4)
    d.ellipse([15, 12, 50, 48], fill="darkred")
    return img


def test_a_logo_on_every_pdf_page_is_one_figure(tmp_path: Path):
    """A letterhead logo on each of four pages was four figure items; now it is one, and the real
    figure keeps its caption and number."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    path = tmp_path / "minutes.pdf"
    c = canvas.Canvas(str(path), pagesize=A4)
    _, height = A4
    logo = _logo()
    for page in range(1, 5):
        c.drawImage(ImageReader(logo), 400, height - 80, width=120, height=60)
        c.setFont("Helvetica", 11)
        c.drawString(60, height - 120, f"Minutes of the glacier working group, meeting {page}.")
        if page == 2:
            c.drawImage(ImageReader(chart(1)), 60, height - 400, width=360, height=220)
            c.drawString(60, height - 420, FIGURE_CAPTIONS[0])
        c.showPage()
    c.save()
    docs, errors = split(iter_path(path))
    assert errors == []
    figures = {k: d for k, d in docs.items() if "#figure-" in k}
    assert len(figures) == 2, sorted(figures)
    assert len({d.image.sha256 for d in figures.values()}) == 2
    captioned = [d for d in figures.values() if d.text == FIGURE_CAPTIONS[0]]
    assert len(captioned) == 1 and captioned[0].metadata["figure"] == 1 and captioned[0].metadata["page"] == 2
    (logo_item,) = [d for d in figures.values() if d is not captioned[0]]
    assert logo_item.metadata["page"] == 1  # the first occurrence


def test_a_picture_pasted_twice_in_a_docx_is_one_figure(tmp_path: Path):
    import docx
    from docx.shared import Inches

    d = docx.Document()
    d.add_heading("Survey report", 0)
    d.add_paragraph("The survey covered the whole basin.")
    d.add_picture(io.BytesIO(_png(chart(3))), width=Inches(3))
    d.add_paragraph("Some text between the copies.")
    d.add_picture(io.BytesIO(_png(chart(3))), width=Inches(3))
    d.add_paragraph("Figure 1: Echo sounder depth profile across the harbour basin.", style="Caption")
    path = tmp_path / "report.docx"
    d.save(str(path))
    docs, errors = split(iter_path(path))
    assert errors == []
    figures = [d for k, d in docs.items() if "#figure-" in k]
    assert len(figures) == 1, sorted(docs)
    assert figures[0].text.startswith("Figure 1: Echo sounder")  # the caption a repeat has


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
