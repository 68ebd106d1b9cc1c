"""Per-format ingest figures: files, documents, chunks, image items and ingest time for PDF, HTML, DOCX, DICOM.

    python eval/formats.py [--copies 5] [--store faiss] [--json]

Builds ``--copies`` variants of each sample of ``tests/format_samples.py`` (a 3-page paper with two captioned
figures, a field-guide web page, a report with a table and a captioned picture, a 5-frame chest CT) in a
temporary folder (distinct files: byte-identical copies would be one document; see :func:`vary`), then ingests each format's folder
into its own fresh collection with the default settings (heterag view, 64-token chunks, default encoders)
and reports what the ingest wrote and how long it took (text encoder already loaded; the first ingest
also loads the image encoder, reported apart as ``warm-up``). No downloads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401 - puts the checkout on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from format_samples import write_dicom, write_docx, write_html, write_pdf  # noqa: E402

WRITERS = {"pdf": (write_pdf, ".pdf"), "html": (write_html, ".html"), "docx": (write_docx, ".docx"),
           "dicom": (write_dicom, ".dcm")}


def vary(fmt: str, path: Path, i: int) -> None:
    """Make copy ``i`` a distinct file (byte-identical copies are one document, by design), text unchanged
    but for a copy number."""
    if fmt == "html":
        path.write_text(path.read_text().replace("This guide", f"This guide (edition {i + 1})"))
    elif fmt == "docx":
        import docx

        doc = docx.Document(str(path))
        doc.add_paragraph(f"Copy {i + 1}.")
        doc.save(str(path))
    elif fmt == "dicom":
        import pydicom

        ds = pydicom.dcmread(path)
        ds.SeriesNumber = i + 1
        ds.save_as(path)
    # PDF: each write already differs (document id and creation time)


def build(root: Path, copies: int) -> dict[str, Path]:
    folders = {}
    for fmt, (writer, suffix) in WRITERS.items():
        folder = root / fmt
        folder.mkdir(parents=True)
        for i in range(copies):
            path = writer(folder / f"sample-{i}{suffix}")
            vary(fmt, path, i)
        folders[fmt] = folder
    return folders


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=5)
    ap.add_argument("--store", default="faiss")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="heterag-formats-"))
    os.environ["HETERAG_HOME"] = str(work / "home")
    try:
        from corpora.files import iter_path
        from heterag import load_text_encoder, open_collection

        folders = build(work / "data", args.copies)
        load_text_encoder(None)
        warm = open_collection("warmup", store=args.store)
        t = time.perf_counter()
        warm.image_encoder  # noqa: B018 - loads the image encoder once, outside the timings
        warmup = time.perf_counter() - t
        warm.close()
        rows = []
        for fmt, folder in folders.items():
            rag = open_collection(f"fmt-{fmt}", store=args.store)
            t = time.perf_counter()
            report = rag.ingest(iter_path(folder), progress=False)
            seconds = time.perf_counter() - t
            docs = rag.documents()
            rows.append({"format": fmt, "files": args.copies, "documents": len(docs), "chunks": rag.count(),
                         "image_items": rag.image_store.count(), "failed": len(report.failures),
                         "ingest_seconds": round(seconds, 2), "seconds_per_file": round(seconds / args.copies, 2)})
            rag.close()
        if args.json:
            print(json.dumps({"warmup_seconds": round(warmup, 2), "rows": rows}, indent=2))
        else:
            print(f"image encoder warm-up {warmup:.2f}s (not counted)")
            print(f"{'format':7s} {'files':>5s} {'docs':>5s} {'chunks':>6s} {'images':>6s} {'failed':>6s} {'ingest s':>8s} {'s/file':>6s}")
            for r in rows:
                print(f"{r['format']:7s} {r['files']:5d} {r['documents']:5d} {r['chunks']:6d} {r['image_items']:6d} "
                      f"{r['failed']:6d} {r['ingest_seconds']:8.2f} {r['seconds_per_file']:6.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
