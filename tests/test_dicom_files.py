"""DICOM files as PACS exports name them, and what the report text may not keep (issue 13, bt13b findings 2 and 3)."""

from __future__ import annotations

import shutil
from pathlib import Path

from format_samples import PATIENT, write_dicom

from corpora.files import iter_path
from heterag import Document, ItemError


def split(items) -> tuple[dict[str, Document], list[ItemError]]:
    docs, errors = {}, []
    for it in items:
        if isinstance(it, Document):
            docs[it.id] = it
        else:
            errors.append(it)
    return docs, errors


def test_dicom_files_without_dcm_are_read_by_content_and_dicomdir_is_passed_over(tmp_path: Path, caplog):
    """A CD/PACS export: ``IM0001`` (no extension), ``IM0002.IMA`` (Siemens), ``IM0003.DCM``, and a
    ``DICOMDIR`` index; all three images go in, the index is no failure; a non-DICOM file without
    extension is still an unsupported file."""
    source = write_dicom(tmp_path / "ct.dcm", frames=1)
    root = tmp_path / "export"
    (root / "SE0001").mkdir(parents=True)
    for name in ("IM0001", "IM0002.IMA", "IM0003.DCM"):
        shutil.copy(source, root / "SE0001" / name)
    shutil.copy(source, root / "DICOMDIR")  # a real one is DICOM too (a directory record, no pixels)
    (root / "NOTES").write_text("not a DICOM file, and no extension\n")
    with caplog.at_level("INFO", logger="corpora.files"):
        docs, errors = split(iter_path(root))
    assert sorted(docs) == ["SE0001/IM0001", "SE0001/IM0002.IMA", "SE0001/IM0003.DCM"]
    for doc in docs.values():
        assert doc.image is not None and doc.metadata["modality"] == "CT"
    assert [(e.source, e.message) for e in errors] == [("NOTES", "unsupported file type (no extension)")]
    assert "DICOMDIR" in caplog.text
    # a single file given by name
    (one,) = split(iter_path(root / "SE0001" / "IM0001"))[0].values()
    assert one.image is not None
    empty = root / "SE0002"
    empty.mkdir()
    (empty / "DICOMDIR").write_bytes(b"")  # even an empty index is passed over, not "file is empty"
    assert split(iter_path(empty)) == ({}, [])
    assert all(PATIENT["PatientID"] not in d.text for d in docs.values())
