"""DICOM files as PACS exports name them, and what the report text may not keep (issue 13, bt13b findings 2 and 3)."""

from __future__ import annotations

import shutil
from pathlib import Path

from cli_helpers import split
from format_samples import PATIENT, write_dicom

from corpora.files import iter_path


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


LEAKS = ("Müller", "Mueller", "Muller", "MÜLLER", "Schmidt", "Hans", "Peter", "Kovac", "Ivana", "Weber", "Gruber",
         "Novak", "Huber", "Berger", "PID00123", "PID 00123", "pid-00123", "1948", "29/02/48", "Feb 29", "29 February",
         "512 555", "5550199", "STUDY-7781", "STUDY 7781", "ACC99812", "ACC-99812", "Alpine Clinic", "Hauptstraße",
         "Innsbruck", "Maria")


def write_leaky_dicom(path: Path) -> Path:
    """A CT whose identifying tags all hold values, and whose report repeats them in other spellings."""
    import pydicom

    write_dicom(path, frames=1)
    ds = pydicom.dcmread(str(path))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Müller^Hans^Peter", "PID00123", "19480229"
    ds.OtherPatientNames, ds.PatientBirthName, ds.PatientMotherBirthName = "Mueller^Hans", "Schmidt^Hans", "Berger^Maria"
    ds.PatientTelephoneNumbers = "+43 512 555 0199"
    ds.PatientAddress = "Hauptstraße 5, 6020 Innsbruck"
    ds.ReferringPhysicianName, ds.PerformingPhysicianName = "Weber^Anna", "Gruber^Tom"
    ds.NameOfPhysiciansReadingStudy, ds.PhysiciansOfRecord, ds.OperatorsName = "Kovac^Ivana", "Novak^Eva", "Huber^Max"
    ds.StudyID, ds.AccessionNumber, ds.InstitutionName = "STUDY-7781", "ACC99812", "Alpine Clinic"
    ds.StudyDescription = "CT knee of Hans Müller after skiing fall"
    ds.ImageComments = (
        "Mr Hans Müller (PID00123), born 29.02.1948, fell while skiing. Hans Peter Müller reports pain. "
        "DOB 1948-02-29. Also written Feb 29, 1948 and 29 February 1948 and 29/02/48 and 2/29/1948. "
        "Patient ID PID 00123, also pid-00123. MÜLLER HANS. Formerly Hans Schmidt, also known as Hans Mueller "
        "or Hans Muller; mother Maria Berger. Phone +43 512 555 0199 or 512-5550199. Lives at Hauptstraße 5, "
        "6020 Innsbruck. Referred by Dr Anna Weber, performed by Dr Tom Gruber, read by Dr Ivana Kovac, "
        "physician of record Eva Novak, operator Max Huber. Study STUDY 7781, accession ACC-99812, "
        "Alpine Clinic. Lateral tibial plateau fracture, 12 mm depression.")
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_identifying_values_in_any_usual_spelling_never_reach_the_collection(tmp_path: Path, capsys, heterag_home):
    """bt13b finding 2: birth dates with month names or two-digit years, ids with a space, and the values
    of the other identifying tags (other and birth names, phone, physicians, study id, accession number,
    institution, address) were stored word for word."""
    from heterag.cli import main

    root = tmp_path / "scans"
    root.mkdir()
    write_leaky_dicom(root / "knee.dcm")
    (doc,) = split(iter_path(root))[0].values()
    assert "Lateral tibial plateau fracture, 12 mm depression." in doc.text and "[redacted]" in doc.text
    shown = doc.text + " " + doc.title + " " + " ".join(map(str, doc.metadata.values()))
    assert [leak for leak in LEAKS if leak.lower() in shown.lower()] == []
    try:
        code = main(["ingest", str(root), "--collection", "scans"])
    except SystemExit as exc:
        code = int(exc.code or 0)
    assert code == 0, capsys.readouterr()
    try:
        main(["docs", "show", "knee.dcm", "--collection", "scans"])
    except SystemExit:
        pass
    out = capsys.readouterr().out
    assert "tibial plateau" in out and [leak for leak in LEAKS if leak.lower() in out.lower()] == []
    stored = [p for p in heterag_home.rglob("*") if p.is_file()]
    assert stored
    for leak in ("Müller", "Schmidt", "Kovac", "PID 00123", "29 February", "Feb 29", "29/02/48", "555 0199",
                 "STUDY-7781", "ACC99812", "Alpine Clinic", "Hauptstra"):
        assert not [p for p in stored if leak.encode() in p.read_bytes()], leak
