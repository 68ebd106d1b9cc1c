"""Small real-looking PDF, HTML, DOCX and DICOM files, built in code (no downloads), for tests and eval/formats.py.

``write_samples(folder)`` writes one of each (plus a scanned PDF when ``scanned=True``) and returns their paths.
The PDF is a three-page paper with two captioned figures; the DICOM file is a 5-frame CT with a
patient name, id and birth date that must never reach a collection.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PATIENT = {"PatientName": "Doe^Jane", "PatientID": "MRN-4711-0815", "PatientBirthDate": "19630412"}
FIGURE_CAPTIONS = (
    "Figure 1: Tidal range at the harbour mouth over one lunar month, with spring and neap tides marked.",
    "Figure 2: Salinity profile along the estuary at high water, from the river weir to the open sea.",
)


def chart(seed: int, size: tuple[int, int] = (360, 220)) -> Image.Image:
    """A plot-like picture: axes and a curve (different for each seed)."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    w, h = size
    d.line([(30, 10), (30, h - 30), (w - 10, h - 30)], fill="black", width=2)
    xs = np.linspace(30, w - 10, 60)
    ys = (h - 30) / 2 + 60 * np.sin(xs / (25 + 10 * seed)) + rng.normal(0, 4, xs.size)
    d.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=(30 * seed % 255, 60, 200), width=3)
    return img


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_pdf(path: Path) -> Path:
    """A three-page paper: text on every page, Figure 1 on page 1, Figure 2 on page 2, each with its caption below."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=A4)
    c.setTitle("Tidal Forces in Coastal Estuaries")
    _, height = A4

    def lines(text_lines: list[str], y: float, size: int = 11) -> float:
        c.setFont("Helvetica", size)
        for line in text_lines:
            c.drawString(60, y, line)
            y -= size + 5
        return y

    y = lines(["Tidal Forces in Coastal Estuaries"], height - 70, 16)
    y = lines(["Abstract. We measured tides and salinity in a small estuary for one lunar month.",
               "The tidal range doubled between neap and spring tides, and salt water reached",
               "eleven kilometres upstream at high water during spring tides."], y - 10)
    c.drawImage(ImageReader(chart(1)), 60, y - 240, width=360, height=220)
    lines([FIGURE_CAPTIONS[0]], y - 260, 9)
    c.showPage()
    y = lines(["Methods. Pressure loggers recorded the water level every ten minutes at three stations.",
               "Conductivity casts were taken at high water every two kilometres along the channel."], height - 70)
    c.drawImage(ImageReader(chart(2)), 60, y - 240, width=360, height=220)
    lines([FIGURE_CAPTIONS[1]], y - 260, 9)
    c.showPage()
    lines(["Conclusions. Spring tides push the salt wedge far upstream; freshwater discharge from",
           "the weir limits it. Managers should schedule water abstraction around neap tides."], height - 70)
    c.showPage()
    c.save()
    return path


def write_scanned_pdf(path: Path) -> Path:
    """A one-page PDF holding only a picture of printed text (no text layer), as a scanner makes."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.utils import ImageReader
    from reportlab.pdfgen import canvas

    img = Image.new("RGB", (1200, 400), "white")
    d = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=48)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    d.text((40, 60), "Invoice number 4471", fill="black", font=font)
    d.text((40, 200), "Total due: 320 euros", fill="black", font=font)
    c = canvas.Canvas(str(path), pagesize=A4)
    c.drawImage(ImageReader(img), 40, 400, width=500, height=167)
    c.showPage()
    c.save()
    return path


def write_encrypted_pdf(path: Path, source: Path) -> Path:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(str(source)))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="AES-128")
    with open(path, "wb") as f:
        writer.write(f)
    return path


HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Estuary Field Guide</title>
<style>body { font-family: sans-serif } .secret-style { color: red }</style>
<script>var trackingSecret = "do-not-ingest"; console.log(trackingSecret);</script></head>
<body>
<header><a href="/">Home</a> | <a href="/about">About us</a></header>
<nav class="site-menu"><ul><li>Menu item one</li><li>Menu item two</li></ul></nav>
<div class="cookie-banner">We use cookies to improve your experience.</div>
<main>
<h1>Estuary Field Guide</h1>
<p>This guide explains how to sample water in tidal estuaries.</p>
<h2>Sampling</h2>
<h3>Timing</h3>
<p>Take conductivity casts at <b>high water</b>, when the salt wedge reaches furthest upstream.</p>
<ul><li>Check the tide table the day before.</li><li>Start at the weir and move seawards.</li></ul>
<h3>Equipment</h3>
<table><tr><th>Item</th><th>Purpose</th></tr><tr><td>CTD probe</td><td>conductivity and depth</td></tr>
<tr><td>Pressure logger</td><td>water level every ten minutes</td></tr></table>
<h2>Safety</h2>
<p>Never sample alone during spring tides: currents are strongest then.</p>
</main>
<footer>Copyright 2026 Estuary Society. Privacy policy.</footer>
<script>document.write("injected by script")</script>
</body></html>
"""


def write_html(path: Path) -> Path:
    path.write_text(HTML, encoding="utf-8")
    return path


def write_docx(path: Path) -> Path:
    """A report: title, headings, paragraphs, a table, and one picture with a caption."""
    import docx
    from docx.shared import Inches

    d = docx.Document()
    d.core_properties.title = "Harbour Dredging Report"
    d.add_heading("Harbour Dredging Report", 0)
    d.add_heading("Summary", 1)
    d.add_paragraph("Dredging removed 12,000 cubic metres of silt from the harbour basin in March.")
    d.add_heading("Measurements", 1)
    d.add_heading("Depths", 2)
    d.add_paragraph("Depths were surveyed by echo sounder before and after dredging.")
    table = d.add_table(rows=3, cols=2)
    for r, (a, b) in enumerate([("Berth", "Depth after (m)"), ("North quay", "7.5"), ("South quay", "6.8")]):
        table.cell(r, 0).text, table.cell(r, 1).text = a, b
    d.add_picture(io.BytesIO(_png(chart(3))), width=Inches(4))
    d.add_paragraph("Figure 1: Echo sounder depth profile across the harbour basin after dredging.", style="Caption")
    d.add_heading("Next steps", 1)
    d.add_paragraph("The next survey is planned for September.")
    d.save(str(path))
    return path


def write_dicom(path: Path, frames: int = 5) -> Path:
    """A CT of the chest: ``frames`` frames of 64x64 int16 Hounsfield-like values with a stored window,
    patient name, id and birth date, and a report in ImageComments."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["heterag-test"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    for k, v in PATIENT.items():
        setattr(ds, k, v)
    ds.PatientSex = "F"
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.StudyDescription = "CT chest without contrast"
    ds.SeriesDescription = "Axial 5 mm"
    ds.ImageComments = "Right lower lobe consolidation consistent with pneumonia."
    ds.Rows, ds.Columns = 64, 64
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = -600, 1500  # a lung window
    yy, xx = np.mgrid[0:64, 0:64]
    vol = np.stack([((np.hypot(yy - 32, xx - 32 - f) < 20) * 1000 + 24).astype(np.int16) for f in range(frames)])
    ds.PixelData = vol.tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def write_samples(folder: Path, *, scanned: bool = False) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {"pdf": write_pdf(folder / "estuary-paper.pdf"), "html": write_html(folder / "field-guide.html"),
           "docx": write_docx(folder / "dredging-report.docx"), "dicom": write_dicom(folder / "chest-ct.dcm")}
    if scanned:
        out["scanned"] = write_scanned_pdf(folder / "scanned-invoice.pdf")
    return out
