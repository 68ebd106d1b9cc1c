"""DICOM reader (pydicom): the image with its stored window/level, the report text, no patient data.

- **Pixels**: the modality LUT (rescale slope/intercept) is applied, then the stored VOI window
  (``WindowCenter``/``WindowWidth``, the first when several, or a VOI LUT sequence); without one the
  documented default is the frame's own range (min to max). The result is scaled to 8 bits;
  ``MONOCHROME1`` is inverted so that bright means dense as in ``MONOCHROME2``; colour images are kept.
- **Multi-frame** files (``NumberOfFrames`` > 1, e.g. a CT or MR series in one file) give one image
  item: the **middle frame** (``metadata["frame"]``, ``metadata["frames"]``).
- **Text**: a report when the file holds one (the ``TextValue`` items of a structured report's
  content sequence, ``ImageComments``), after a line made of modality, body part, study and series
  descriptions, so a question like "chest CT" finds it.
- **Patient-identifying tags are never stored** (names, ids, birth date, address, other patient ids,
  accession number, institution and physicians' names): neither in the metadata nor in the text. The
  values those tags hold in the file are also removed from the report text wherever they appear in it
  (names part by part and in the usual orders, ids, the birth date in common date formats), replaced
  by ``[redacted]`` (:func:`redact_identifiers`), and so are they from the descriptive tags kept as metadata. Free text can still mention a person the tags do not
  name; that cannot be detected reliably, so de-identify such reports before ingesting them. The file
  name becomes the document id, so do not name files after patients.
  ``options["dicom_patient_tags"] = True`` (``heterag ingest --dicom-patient-tags``) opts in to
  keeping the patient tags in :data:`PATIENT_TAGS` as metadata.
- Compressed pixel data needs a decoder plugin (``pylibjpeg``, ``gdcm``); without one the file is one
  skipped line naming its transfer syntax.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from heterag.documents import Document, Section
from heterag.errors import InvalidInputError
from heterag.images import ImageRef

from ..base import LoadItem
from ._common import check_file_size

#: Patient tags kept as metadata only with ``dicom_patient_tags`` (keyword -> metadata key).
PATIENT_TAGS = {"PatientName": "patient_name", "PatientID": "patient_id", "PatientBirthDate": "patient_birth_date",
                "PatientSex": "patient_sex", "PatientAge": "patient_age"}
#: Descriptive tags always kept (keyword -> metadata key); none identifies a person.
DESCRIPTIVE_TAGS = {"Modality": "modality", "BodyPartExamined": "body_part", "StudyDescription": "study_description",
                    "SeriesDescription": "series_description", "SOPClassUID": "sop_class_uid"}


def read_dicom(path: Path, rel: str, max_document_bytes: int, options: Mapping[str, Any]) -> Iterator[LoadItem]:
    """The image item of one DICOM file; see the module docstring."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    check_file_size(path, rel, max_document_bytes)
    try:
        ds = pydicom.dcmread(str(path))
    except InvalidDicomError:
        raise InvalidInputError("not a DICOM file (no DICM preamble)") from None
    except Exception as exc:  # noqa: BLE001 - truncated or malformed data elements
        raise InvalidInputError(f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    meta: dict[str, Any] = {"source": rel}
    idents = [] if options.get("dicom_patient_tags") else _identifiers(ds)
    for keyword, key in DESCRIPTIVE_TAGS.items():
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            meta[key] = redact_identifiers(value, idents)
    if options.get("dicom_patient_tags"):
        for keyword, key in PATIENT_TAGS.items():
            value = str(ds.get(keyword, "") or "").strip()
            if value:
                meta[key] = value
    image = None
    if "PixelData" in ds:
        pixels, info = _pixels(ds, rel)
        meta.update(info)
        image = ImageRef.from_array(pixels, source=rel)
    text = redact_identifiers(_text(ds), idents)
    if image is None and not text:
        raise InvalidInputError("no pixel data and no report text")
    title = " ".join(str(meta.get(k, "")) for k in ("modality", "body_part", "study_description") if meta.get(k)) or path.stem
    try:
        yield Document.create(sections=[Section(text, ("Report",))] if text else None, image=image, id=rel, title=title,
                              metadata=meta, source=rel, max_bytes=max_document_bytes)
    except InvalidInputError as exc:
        raise InvalidInputError(str(exc).removeprefix(f"{rel}: ")) from None


def _pixels(ds: Any, rel: str) -> tuple[np.ndarray, dict[str, Any]]:
    """8-bit pixels of the (middle) frame after the modality LUT and the stored window, and what was done."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - missing decoder plugins, truncated pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax or "unknown"))
        raise InvalidInputError(f"pixel data not decodable (transfer syntax {name}: {exc}); compressed DICOM needs "
                                "pylibjpeg or gdcm") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    info: dict[str, Any] = {"frames": frames}
    if frames > 1:
        middle = frames // 2
        arr = arr[middle]
        info["frame"] = middle
    if samples == 3:  # colour: kept as it is (8-bit)
        if arr.dtype != np.uint8:
            arr = np.clip(arr / max(float(arr.max()), 1.0) * 255, 0, 255).astype(np.uint8)
        info["window"] = "none (colour)"
        return arr, info
    arr = apply_modality_lut(arr, ds).astype(np.float64)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width >= 1:
        # the linear window of DICOM PS3.3 C.11.2.1.2.1, onto 0..255
        lo, hi = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
        info["window"] = f"stored: center {center:g}, width {width:g}"
    else:
        if "VOILUTSequence" in ds:
            arr = apply_voi_lut(arr, ds, index=0).astype(np.float64)
            info["window"] = "stored VOI LUT"
        else:
            info["window"] = "default: frame min to max"
        lo, hi = float(arr.min()), float(arr.max())
    out = np.zeros(arr.shape, dtype=np.uint8) if hi <= lo else \
        np.round(np.clip((arr - lo) / (hi - lo), 0.0, 1.0) * 255).astype(np.uint8)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out
    return out, info


def _first(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


#: Tags whose values are removed from the report text (unless ``dicom_patient_tags``).
IDENTIFYING_TAGS = ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "PatientAddress",
                    "AccessionNumber", "InstitutionName", "ReferringPhysicianName", "PerformingPhysicianName",
                    "OperatorsName", "PatientMotherBirthName", "IssuerOfPatientID")
REDACTED = "[redacted]"


def _identifiers(ds: Any) -> list[str]:
    """The identifying strings the file's own tags hold: whole values, name parts and their usual orders,
    the birth date (DICOM ``YYYYMMDD``) also as ``YYYY-MM-DD``, ``DD/MM/YYYY``, ``MM/DD/YYYY``, ``DD.MM.YYYY``."""
    found: list[str] = []
    for keyword in IDENTIFYING_TAGS:
        raw = ds.get(keyword, None)
        if raw is None:
            continue
        values = list(raw) if isinstance(raw, (list, tuple)) or type(raw).__name__ == "MultiValue" else [raw]
        for value in values:
            text = str(value or "").strip()
            if not text:
                continue
            found.append(text)
            if "^" in text or "Name" in keyword:  # person name: Family^Given^Middle^Prefix^Suffix
                parts = [q.strip() for q in text.split("=")[0].split("^") if q.strip()]
                found.extend(q for q in parts if len(q) >= 2)
                if len(parts) >= 2:
                    family, given = parts[0], parts[1]
                    found.extend([f"{given} {family}", f"{family}, {given}", f"{family} {given}"])
            if keyword == "PatientBirthDate" and len(text) == 8 and text.isdigit():
                y, m, d = text[:4], text[4:6], text[6:]
                found.extend([f"{y}-{m}-{d}", f"{d}/{m}/{y}", f"{m}/{d}/{y}", f"{d}.{m}.{y}", f"{y}/{m}/{d}"])
    return found


def redact_identifiers(text: str, identifiers: list[str]) -> str:
    """``text`` with every occurrence of each identifier (case-insensitive; names and ids as whole words)
    replaced by ``[redacted]``; longer identifiers first, so a full name goes before its parts."""
    import re

    for ident in sorted(set(identifiers), key=len, reverse=True):
        pattern = re.escape(ident)
        if ident[:1].isalnum():
            pattern = r"(?<!\w)" + pattern
        if ident[-1:].isalnum():
            pattern = pattern + r"(?!\w)"
        text = re.sub(pattern, REDACTED, text, flags=re.IGNORECASE)
    return text


def _text(ds: Any) -> str:
    """A description line and the report text (structured-report TextValues, ImageComments); never patient data."""
    head = ". ".join(str(ds.get(k, "")).strip() for k in ("Modality", "BodyPartExamined", "StudyDescription",
                                                            "SeriesDescription") if str(ds.get(k, "") or "").strip())
    report: list[str] = []

    def walk(seq: Any) -> None:
        for item in seq or []:
            value = str(item.get("TextValue", "") or "").strip()
            if value:
                report.append(value)
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    if "ContentSequence" in ds:
        walk(ds.ContentSequence)
    comments = str(ds.get("ImageComments", "") or "").strip()
    if comments:
        report.append(comments)
    parts = ([head + "."] if head else []) + report
    return "\n\n".join(parts)
