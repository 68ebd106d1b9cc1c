"""PDF, HTML, DOCX and DICOM files as knowledge (issue 13): sections, pages, figures, no patient data, skips."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run, split
from format_samples import FIGURE_CAPTIONS, PATIENT, write_dicom, write_encrypted_pdf, write_samples, write_scanned_pdf

from corpora.files import iter_path
from heterag import open_collection
from heterag.collections.collection import collection_dir, list_collections


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, Path]:
    return write_samples(tmp_path_factory.mktemp("formats") / "kb")


def test_pdf_text_by_page_and_figures_with_captions(samples):
    docs, errors = split(iter_path(samples["pdf"]))
    assert errors == []
    paper = docs["estuary-paper.pdf"]
    assert paper.title == "Tidal Forces in Coastal Estuaries" and paper.metadata["pages"] == 3
    assert [s.heading for s in paper.sections] == [("p. 1",), ("p. 2",), ("p. 3",)]
    assert "Pressure loggers" in paper.sections[1].text and paper.image is None
    for n, caption in enumerate(FIGURE_CAPTIONS, start=1):
        fig = docs[f"estuary-paper.pdf#figure-{n}"]
        assert fig.image is not None and fig.image.width >= 100
        assert fig.text == caption and fig.metadata["page"] == n and fig.metadata["figure"] == n
    assert len(docs) == 3


def test_html_headings_are_sections_and_boilerplate_is_dropped(samples):
    (page,) = split(iter_path(samples["html"]))[0].values()
    assert page.title == "Estuary Field Guide"
    headings = [s.heading for s in page.sections]
    assert headings == [("Estuary Field Guide",), ("Estuary Field Guide", "Sampling", "Timing"),
                        ("Estuary Field Guide", "Sampling", "Equipment"), ("Estuary Field Guide", "Safety")]
    text = page.text
    assert "casts at high water, when" in text and "Check the tide table" in text
    assert "CTD probe | conductivity and depth" in text  # tables as rows
    for junk in ("trackingSecret", "do-not-ingest", "injected by script", "font-family", "Menu item", "About us",
                 "cookies", "Copyright", "Privacy"):
        assert junk not in text, junk


def test_docx_headings_paragraphs_tables_and_captioned_picture(samples):
    docs, errors = split(iter_path(samples["docx"]))
    assert errors == []
    report = docs["dredging-report.docx"]
    assert report.title == "Harbour Dredging Report"
    by_heading = {s.heading: s.text for s in report.sections}
    assert by_heading[("Harbour Dredging Report", "Summary")].startswith("Dredging removed 12,000 cubic metres")
    depths = by_heading[("Harbour Dredging Report", "Measurements", "Depths")]
    assert "North quay | 7.5" in depths and "South quay | 6.8" in depths
    fig = docs["dredging-report.docx#figure-1"]
    assert fig.image is not None and fig.text.startswith("Figure 1: Echo sounder depth profile")


def test_dicom_window_middle_frame_report_and_no_patient_data(samples):
    (scan,) = split(iter_path(samples["dicom"]))[0].values()
    assert scan.image is not None and scan.metadata["frames"] == 5 and scan.metadata["frame"] == 2
    assert scan.metadata["window"] == "stored: center -600, width 1500" and scan.metadata["modality"] == "CT"
    assert "consolidation consistent with pneumonia" in scan.text and "CHEST" in scan.text
    pixels = np.asarray(scan.image.open().convert("L"))
    # the lung window [-1350, 150] HU: air (-1000 HU) is dark grey, soft tissue (0 HU) near white
    assert set(np.unique(pixels).tolist()) == {60, 230}  # PS3.3 C.11.2.1.2.1: (HU + 1350) / 1499 * 255
    middle = pixels[32]
    # frame f holds a disc of radius 20 around x = 32 + f: on row 32 only frame 2 covers exactly x = 15..53
    assert (middle[14], middle[15], middle[53], middle[54]) == (60, 230, 230, 60)
    flat = json.dumps(dict(scan.metadata)) + scan.text + scan.title
    for value in (*PATIENT.values(), "Doe", "Jane"):
        assert value not in flat


def test_patient_identifiers_written_into_the_report_text_are_redacted(tmp_path):
    """The values of the file's own patient tags are removed from its free-text report too (found by a
    break-test: a report naming the patient and the MRN was stored word for word)."""
    import pydicom

    path = write_dicom(tmp_path / "ct.dcm", frames=1)
    ds = pydicom.dcmread(str(path))
    ds.ImageComments = ("Patient Jane Doe (MRN-4711-0815, DOB 1963-04-12), also Doe, Jane, 12/04/1963: "
                        "right lower lobe consolidation. Jane's sister Janet was seen too.")
    ds.ReferringPhysicianName = "House^Gregory"
    ds.StudyDescription = "CT chest for Dr House"
    ds.save_as(str(path))
    (scan,) = split(iter_path(path))[0].values()
    flat = json.dumps(dict(scan.metadata)) + scan.text + scan.title
    for value in ("Jane", "Doe", "MRN-4711-0815", "1963-04-12", "12/04/1963", "House"):
        assert not re.search(rf"(?<!\w){re.escape(value)}(?!\w)", flat), value
    assert "right lower lobe consolidation" in scan.text and "Janet" in scan.text  # whole words only
    assert "[redacted]" in scan.text
    (kept,) = split(iter_path(path, options={"dicom_patient_tags": True}))[0].values()
    assert "Jane Doe" in kept.text  # the opt-in keeps the file as it is


def test_patient_tags_never_reach_a_collection_unless_opted_in(capsys, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    write_dicom(folder / "ct.dcm")
    assert run(capsys, "ingest", str(folder), "--collection", "scans")[0] == 0
    found = [p for p in collection_dir("scans").rglob("*") if p.is_file()
             and any(v.encode() in p.read_bytes() for v in (*PATIENT.values(), "Doe^Jane", "Jane"))]
    assert found == [], f"patient data stored in {found}"
    code, out, _ = run(capsys, "ask", "chest CT with pneumonia", "--collection", "scans", "--json")
    assert json.loads(out)["sources"][0]["doc_id"] == "ct.dcm" and "Doe" not in out
    assert run(capsys, "ingest", str(folder), "--collection", "named", "--dicom-patient-tags")[0] == 0
    rag = open_collection("named", create=False)
    try:
        meta = rag.image_store.get()[0].metadata
        assert meta["patient_name"] == "Doe^Jane" and meta["patient_id"] == PATIENT["PatientID"]
    finally:
        rag.close()


def test_a_folder_of_formats_ingests_and_a_caption_question_finds_the_figure(capsys, samples, tmp_path):
    folder = samples["pdf"].parent
    code, out, err = run(capsys, "ingest", str(folder), "--collection", "kb")
    assert code == 0, err
    assert "7 documents written" in out and "4 images" in out  # 4 files: 2 PDF figures, 1 DOCX picture, 1 scan
    code, out, _ = run(capsys, "docs", "list", "--collection", "kb")
    ids = [line.split("\t")[0] for line in out.strip().splitlines()]
    assert ids == ["chest-ct.dcm", "dredging-report.docx", "dredging-report.docx#figure-1", "estuary-paper.pdf",
                   "estuary-paper.pdf#figure-1", "estuary-paper.pdf#figure-2", "field-guide.html"]
    question = "salinity profile along the estuary from the weir to the sea"
    code, out, _ = run(capsys, "ask", question, "--collection", "kb", "-k", "10", "--json")
    hits = json.loads(out)["retrieved"]
    figure = hits[0]  # with the default fusion: the chart's near-0 cross-modal score must not sink its caption
    # found by its caption's vector, its image's cross-modal score and (hybrid, the default) its caption's keywords
    assert figure["doc_id"] == "estuary-paper.pdf#figure-2" and set(figure["scores"]) == {"text", "cross", "keyword"}
    assert Path(figure["image"]).is_file() and figure["scores"]["text"] == max(h["scores"].get("text", 0) for h in hits)
    assert figure["score"] >= figure["scores"]["text"]  # judged on its text like every text-only chunk
    code, out, _ = run(capsys, "ask", question, "--collection", "kb", "-k", "3", "--json", "--fusion", "weighted:cross=0")
    assert json.loads(out)["retrieved"][0]["doc_id"] == "estuary-paper.pdf#figure-2"
    code, out, _ = run(capsys, "ask", "When should managers schedule water abstraction?", "--collection", "kb", "--json")
    answer = json.loads(out)
    top = answer["retrieved"][0]
    assert top["doc_id"] == "estuary-paper.pdf" and "p. 3" in top["view"]  # the page is in the view
    assert "neap tides" in answer["answer"]
    code, out, _ = run(capsys, "docs", "delete", "estuary-paper.pdf", "--collection", "kb")  # its figures go with it
    assert code == 0 and "deleted 3 documents" in out
    code, out, _ = run(capsys, "docs", "list", "--collection", "kb")
    assert [line.split("\t")[0] for line in out.strip().splitlines()] == [
        "chest-ct.dcm", "dredging-report.docx", "dredging-report.docx#figure-1", "field-guide.html"]


def test_broken_encrypted_and_unknown_files_are_named_and_the_rest_ingested(capsys, samples, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.html").write_text(Path(samples["html"]).read_text())
    write_encrypted_pdf(folder / "locked.pdf", samples["pdf"])
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really a pdf")
    (folder / "fake.docx").write_bytes(b"PK\x03\x04 not a zip")
    (folder / "fake.dcm").write_bytes(b"\x00" * 200)
    (folder / "table.xyz").write_text("a,b")
    code, out, err = run(capsys, "ingest", str(folder), "--collection", "mixed")
    assert code == 1 and "1 document written" in out
    skipped = sorted(line for line in err.splitlines() if line.startswith("skipped"))
    assert skipped == [
        "skipped broken.pdf: not a readable PDF (Stream has ended unexpectedly)",
        "skipped fake.dcm: not a DICOM file (no DICM preamble)",
        "skipped fake.docx: not a DOCX file (not a zip package; encrypted documents are not supported)",
        "skipped locked.pdf: encrypted PDF (it needs a password)",
        "skipped table.xyz: unsupported file type .xyz",
    ]


def test_nothing_readable_creates_no_collection(capsys, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\n")
    code, _, err = run(capsys, "ingest", str(folder), "--collection", "bad")
    assert code == 1 and "skipped broken.pdf" in err and list_collections() == []


def test_scanned_pdf_pages_are_read_by_ocr(tmp_path):
    pytest.importorskip("rapidocr_onnxruntime", reason="OCR is the optional [ocr] extra (rapidocr_onnxruntime)")
    (doc,) = split(iter_path(write_scanned_pdf(tmp_path / "scan.pdf")))[0].values()
    assert doc.metadata["ocr"] is True and doc.metadata["ocr_pages"] == "1"
    assert doc.sections[0].heading == ("p. 1 (OCR)",)
    assert "Invoice number 4471" in doc.text and "320" in doc.text


def test_a_page_with_only_an_uncaptioned_chart_is_a_figure_not_a_skip(tmp_path):
    """Found by a break-test: a one-page PDF holding only a chart was skipped as "no text found (and no
    figures)"; OCR reads nothing there, so the picture is a figure (an image item without text)."""
    pytest.importorskip("rapidocr_onnxruntime", reason="OCR is the optional [ocr] extra (rapidocr_onnxruntime)")
    from PIL import Image as PILImage
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    rng = np.random.default_rng(0)
    chart = PILImage.new("RGB", (600, 400), "white")
    px = chart.load()
    for x in range(40, 560, 60):  # bars of random heights, no text anywhere
        h = int(rng.integers(60, 340))
        for xx in range(x, x + 40):
            for yy in range(380 - h, 380):
                px[xx, yy] = (30, 90, 200)
    path = tmp_path / "nocaption.pdf"
    c = canvas.Canvas(str(path), pagesize=A4)
    c.drawImage(ImageReader(chart), 60, 300, width=450, height=300)
    c.showPage()
    c.save()
    docs, errors = split(iter_path(path))
    assert errors == [] and list(docs) == ["nocaption.pdf#figure-1"]
    figure = docs["nocaption.pdf#figure-1"]
    assert figure.image is not None and figure.metadata["page"] == 1


def test_scanned_pdf_without_ocr_is_a_named_skip(tmp_path, monkeypatch):
    from corpora.readers import pdf

    monkeypatch.setattr(pdf, "_OCR", [None])  # as without the [ocr] extra
    docs, errors = split(iter_path(write_scanned_pdf(tmp_path / "scan.pdf")))
    assert sorted(str(e) for e in errors) == [
        "scan.pdf p. 1: scanned page without a text layer; OCR needs rapidocr_onnxruntime: pip install 'heterag[ocr]'",
        "scan.pdf: no text found (and no figures)"]
    assert docs == {}


def test_the_app_accepts_the_formats_as_uploads(samples):
    from heterag.ui.uploads import stage_uploads

    with stage_uploads([("My Paper.pdf", samples["pdf"]), ("guide.html", samples["html"]),
                        ("report.docx", samples["docx"]), ("scan.dcm", samples["dicom"])]) as staged:
        assert staged.rejected == []
        docs, errors = split(staged.items())
    assert errors == []
    assert {"My Paper.pdf", "guide.html", "report.docx", "scan.dcm"} <= set(docs)
    assert sum(d.image is not None for d in docs.values()) == 4  # 2 PDF figures, the DOCX picture, the scan


def test_a_reader_that_fails_on_one_file_does_not_end_the_ingest(tmp_path, monkeypatch):
    from corpora import readers

    def boom(path, rel, max_bytes, options):
        yield from ()
        raise RuntimeError("library bug")

    monkeypatch.setitem(readers.READERS, ".pdf", boom)
    (tmp_path / "a.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "b.md").write_text("# B\n\nStill read.\n")
    (tmp_path / "c.html").write_text("<html><head><title>C</title><body><p>Unclosed head, body kept.</p></body></html>")
    docs, errors = split(iter_path(tmp_path))
    assert [str(e) for e in errors] == ["a.pdf: not readable as PDF (RuntimeError: library bug)"]
    assert set(docs) == {"b.md", "c.html"} and docs["c.html"].text == "Unclosed head, body kept."


def test_pdf_chunks_keep_each_caption_with_its_label(samples, encoder):
    """Found by a break-test: chunk [0] of the paper ended with a dangling "Figure 1:" and chunk [1] was the
    caption without its label."""
    from heterag import chunk_document

    paper = split(iter_path(samples["pdf"]))[0]["estuary-paper.pdf"]
    texts = [c.text.strip() for c in chunk_document(paper, encoder.tokenize, 64).chunks]
    assert not any(re.search(r"Figure \d+:$", t) for t in texts), texts
    for caption in FIGURE_CAPTIONS:  # each caption is whole, label and text, within one chunk
        assert any(caption in " ".join(t.split()) for t in texts), texts


def write_page_with_images(folder: Path) -> Path:
    """page.html in ``folder`` with local pictures (a <figure> with <figcaption>, an <img> with alt text, an
    icon, one in the dropped navigation) and sources that must never be read (remote, data:, absolute,
    outside the folder, missing)."""
    from format_samples import chart
    from PIL import Image

    (folder / "page_files").mkdir(parents=True)
    chart(4).save(folder / "page_files" / "tide chart.png")
    chart(5).save(folder / "page_files" / "salinity.png")
    chart(6).save(folder / "page_files" / "menu.png")
    Image.new("RGB", (16, 16), "red").save(folder / "page_files" / "icon.png")
    chart(7).save(folder.parent / "outside.png")
    (folder / "page.html").write_text("""<html><head><title>Harbour Tides</title></head><body>
<nav><img src="page_files/menu.png" alt="menu picture"></nav>
<main><h1>Harbour Tides</h1><p>Tides at the harbour follow the Moon.</p>
<figure><img src="page_files/tide%20chart.png" alt="chart">
<figcaption>Figure 3: Tidal range over a lunar month at the harbour mouth.</figcaption></figure>
<p>Salinity was measured along the channel.</p>
<img src="./page_files/salinity.png?v=2" alt="Salinity along the channel at high water">
<img src="page_files/salinity.png" alt="the same picture again">
<img src="page_files/icon.png" alt="icon">
<img src="https://example.com/remote.png" alt="remote"><img src="//example.com/r.png" alt="remote too">
<img src="data:image/png;base64,iVBORw0KGgo=" alt="inline"><img src="/page_files/salinity.png" alt="site root">
<img src="../outside.png" alt="outside"><img src="missing.png" alt="missing">
</main></body></html>""", encoding="utf-8")
    return folder / "page.html"


def test_html_local_images_become_figures_with_captions(tmp_path, monkeypatch):
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("an HTML image was fetched over the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    page = write_page_with_images(tmp_path / "site")
    for items in (iter_path(page), iter_path(tmp_path / "site")):  # the page alone, or its folder
        docs, errors = split(items)
        assert errors == []
        figures = {k: v for k, v in docs.items() if "#figure-" in k}
        assert set(figures) == {"page.html#figure-3", "page.html#figure-4"}
        assert figures["page.html#figure-3"].text == "Figure 3: Tidal range over a lunar month at the harbour mouth."
        assert figures["page.html#figure-4"].text == "Salinity along the channel at high water"
        assert figures["page.html#figure-3"].title == "Harbour Tides, figure 3"
        assert figures["page.html#figure-3"].metadata["image_file"] == (tmp_path / "site" / "page_files" /
                                                                        "tide chart.png").resolve().as_posix()
        assert "Tides at the harbour follow the Moon." in docs["page.html"].text
    # from the folder the pictures a page shows are its figures, not image items of their own as well
    assert set(docs) == {"page.html", "page.html#figure-3", "page.html#figure-4", "page_files/icon.png",
                         "page_files/menu.png"}


def test_a_caption_question_finds_an_html_figure(capsys, tmp_path):
    write_page_with_images(tmp_path / "site")
    code, out, err = run(capsys, "ingest", str(tmp_path / "site" / "page.html"), "--collection", "web")
    assert code == 0 and "skipped" not in err, err
    assert "3 documents written" in out and "2 images" in out
    code, out, _ = run(capsys, "ask", "tidal range over a lunar month", "--collection", "web", "--json")
    top = json.loads(out)["sources"][0]
    assert top["doc_id"] == "page.html#figure-3" and top["figure"] == 3 and top["source"] == "page.html"
