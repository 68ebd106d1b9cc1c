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
- **Patient-identifying tags are never stored** (:data:`IDENTIFYING_TAGS`: the patient's names, other
  and birth names, mother's birth name, ids, issuer, birth date, address, phone numbers; referring,
  performing, reading, requesting physicians and physicians of record; operators; study id,
  accession number, institution name and address): neither in the metadata nor in the text. The
  values those tags hold in the file are also removed from the report text and from the descriptive
  tags kept as metadata wherever they appear, replaced by ``[redacted]`` (:func:`redact_identifiers`):
  names as whole words, part by part, in the usual orders and without umlauts (``Müller``/``Mueller``);
  ids, study and accession numbers (at least :data:`MIN_ID_CHARS` letters and digits) and phone numbers
  with any separators (phone numbers also without their country code); addresses whole and part by part; the birth date in the spellings of
  :func:`_date_patterns` (numeric in day-month-year, month-day-year and year-month-day order with
  four- or two-digit years, and with English or German month names). Only what the file's tags hold
  is found: free text can still name people, dates, ids or places the tags do not (a relative, a
  phone number the tags lack, a date written another way); that cannot be detected reliably, so
  de-identify such reports before ingesting them. The file name becomes the document id, so do not
  name files after patients.
  ``options["dicom_patient_tags"] = True`` (``heterag ingest --dicom-patient-tags``) opts in to
  keeping the patient tags in :data:`PATIENT_TAGS` as metadata.
- Compressed pixel data needs a decoder plugin (``pylibjpeg``, ``gdcm``); without one the file is one
  skipped line naming its transfer syntax.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from heterag.core.documents import Document, Section
from heterag.core.errors import InvalidInputError
from heterag.core.images import ImageRef

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


#: Tags whose values are removed from the report text and the kept descriptions (unless ``dicom_patient_tags``):
#: the patient's names, ids, birth date, address and phone numbers, the people named in the study
#: (physicians, operators), the institution, and the study and accession numbers.
IDENTIFYING_TAGS = ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "PatientID",
                    "OtherPatientIDs", "IssuerOfPatientID", "PatientBirthDate", "PatientAddress",
                    "PatientTelephoneNumbers", "ReferringPhysicianName", "PerformingPhysicianName",
                    "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord", "RequestingPhysician", "OperatorsName",
                    "StudyID", "AccessionNumber", "InstitutionName", "InstitutionAddress")
#: Tags holding ids (and phone numbers), matched with any separators between their letter and digit runs.
_ID_TAGS = ("PatientID", "OtherPatientIDs", "StudyID", "AccessionNumber", "PatientTelephoneNumbers")
#: Ids shorter than this (letters and digits) are not searched for in the text: a StudyID "1" is no identifier.
MIN_ID_CHARS = 4
REDACTED = "[redacted]"
#: Month names (English and German, full and abbreviated) for birth dates written out.
_MONTHS = (("january", "jan", "januar", "jänner"), ("february", "feb", "februar"), ("march", "mar", "märz", "maerz"),
           ("april", "apr"), ("may", "mai"), ("june", "jun", "juni"), ("july", "jul", "juli"),
           ("august", "aug"), ("september", "sep", "sept"), ("october", "oct", "oktober", "okt"),
           ("november", "nov"), ("december", "dec", "dezember", "dez"))
_UMLAUTS = {"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue"}


def _values(ds: Any, keyword: str) -> list[str]:
    raw = ds.get(keyword, None)
    if raw is None:
        return []
    values = list(raw) if isinstance(raw, (list, tuple)) or type(raw).__name__ == "MultiValue" else [raw]
    return [t for t in (str(v or "").strip() for v in values) if t]


def _is_person_name(ds: Any, keyword: str) -> bool:
    try:
        return ds.data_element(keyword).VR == "PN"
    except (KeyError, AttributeError):
        return False


def _name_variants(text: str) -> list[str]:
    """A DICOM person name (``Family^Given^Middle^Prefix^Suffix``): the whole value, each part, the usual
    orders, and spellings without umlauts (``Müller``: ``Mueller``, ``Muller``)."""
    parts = [q.strip() for q in text.split("=")[0].split("^") if q.strip()]
    found = [text, *(q for q in parts if len(q) >= 2)]
    if len(parts) >= 2:
        family, given = parts[0], parts[1]
        found += [f"{given} {family}", f"{family}, {given}", f"{family} {given}"]
    plain = [v.translate(str.maketrans(_UMLAUTS)) for v in found] + \
        [unicodedata.normalize("NFKD", v).encode("ascii", "ignore").decode() for v in found]
    return found + [v for v in plain if len(v) >= 2]


def _id_pattern(value: str, lead: str = r"\+?") -> re.Pattern[str] | None:
    """An id or phone number with optional separators (space, ``-``, ``_``, ``.``, ``/``, ``:``, ``#``,
    brackets) between any two of its letters and digits: ``PID00123`` also matches ``PID 00123``,
    ``pid-00123``; ``+43 512 555 0199`` also ``+43-512-5550199``. None for ids under :data:`MIN_ID_CHARS`."""
    runs = re.findall(r"[^\W\d_]+|\d+", value)
    if sum(len(r) for r in runs) < MIN_ID_CHARS:
        return None
    chars = [re.escape(c) for c in "".join(runs)]
    body = r"[\s\-_./:#()]{0,3}".join(chars)  # a separator may stand between any two characters
    return re.compile(r"(?<![^\W_])" + lead + body + r"(?![^\W_])", re.IGNORECASE)


def _date_patterns(yyyymmdd: str) -> list[re.Pattern[str]]:
    """A birth date in the spellings people write: numeric day-month-year, month-day-year and
    year-month-day with ``.``, ``/``, ``-`` or spaces, leading zeros optional, four- or two-digit years
    (``29.02.1948``, ``2/29/48``, ``1948-02-29``, ``29021948``); and with the month's name
    (``29 February 1948``, ``Feb 29, 1948``, ``29. Februar 1948``, ``29th of Feb '48``)."""
    y, m, d = yyyymmdd[:4], int(yyyymmdd[4:6]), int(yyyymmdd[6:])
    if not 1 <= m <= 12 or not 1 <= d <= 31:
        return [re.compile(r"(?<!\d)" + re.escape(yyyymmdd) + r"(?!\d)")]
    year = f"(?:{y}|'?{y[2:]})"
    day, month = f"0?{d}", f"0?{m}"
    sep = r"\s*[./\-]\s*|\s+"
    names = "|".join(re.escape(n) for n in sorted(_MONTHS[m - 1], key=len, reverse=True))
    mon = rf"(?:{names})\.?"
    nth = r"(?:st|nd|rd|th)?\.?"
    forms = [rf"{day}(?:{sep}){month}(?:{sep}){year}", rf"{month}(?:{sep}){day}(?:{sep}){year}",
             rf"{y}(?:{sep}){month}(?:{sep}){day}", rf"{y}{m:02d}{d:02d}|{d:02d}{m:02d}{y}|{m:02d}{d:02d}{y}",
             rf"{day}{nth}\s*(?:of\s+)?{mon}[\s,]*{year}", rf"{mon}\s*{day}{nth}[\s,]*{year}"]
    return [re.compile(r"(?<![\w])(?:" + f + r")(?![\w])", re.IGNORECASE) for f in forms]


def _identifiers(ds: Any) -> list[str | re.Pattern[str]]:
    """What the file's own :data:`IDENTIFYING_TAGS` hold, as text to remove: whole values; person names
    (:func:`_name_variants`); ids and phone numbers with any separators (:func:`_id_pattern`); the birth
    date in many spellings (:func:`_date_patterns`); addresses also part by part (split at commas)."""
    found: list[str | re.Pattern[str]] = []
    for keyword in IDENTIFYING_TAGS:
        for text in _values(ds, keyword):
            found.append(text)
            if _is_person_name(ds, keyword) or "^" in text:
                found.extend(_name_variants(text))
            if keyword in _ID_TAGS and (pattern := _id_pattern(text)) is not None:
                found.append(pattern)
            runs = re.findall(r"\d+", text)
            if keyword == "PatientTelephoneNumbers" and text.startswith(("+", "00")) and len(runs) > 1:
                national = _id_pattern(" ".join(runs[1:]), lead="0?")  # written without the country code
                found.extend([national] if national is not None else [])
            if keyword.endswith("Address"):
                found.extend(p.strip() for p in re.split(r"[,^\n]", text) if len(p.strip()) >= 4)
            if keyword == "PatientBirthDate" and len(text) == 8 and text.isdigit():
                found.extend(_date_patterns(text))
    return found


def redact_identifiers(text: str, identifiers: list[str | re.Pattern[str]]) -> str:
    """``text`` with every match of each identifier replaced by ``[redacted]``: compiled patterns first
    (dates, ids), then strings, case-insensitive, names and ids as whole words, longer ones first so a
    full name goes before its parts."""
    for pattern in (i for i in identifiers if isinstance(i, re.Pattern)):
        text = pattern.sub(REDACTED, text)
    for ident in sorted({i for i in identifiers if isinstance(i, str) and i}, key=len, reverse=True):
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
