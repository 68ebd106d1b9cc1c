"""Uploaded files -> documents, safely.

Every upload is copied into a fresh private temporary directory (mode 0700) under a name
this module makes up (``0001.md``): the name the user gave is only a label (the document id
and source), never a path. A zip is unpacked there too, member by member: a member name is
used (it is how a captions file refers to its images) only when every part of it is a plain
file name (letters, digits, ``._-``), it stays inside the folder, and the members stay under
the count and size limits; anything else is refused with one line. The folder is deleted
when the :class:`StagedUploads` is closed, whatever happened.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from corpora.image_layouts import IMAGE_SUFFIXES
from corpora.readers import READERS
from heterag.core.documents import Document, ItemError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".jsonl")
ARCHIVE_SUFFIXES = (".zip",)
ARRAY_SUFFIXES = (".npz",)  # MedMNIST
SUPPORTED_SUFFIXES = tuple(sorted(set(TEXT_SUFFIXES) | set(IMAGE_SUFFIXES) | set(ARCHIVE_SUFFIXES) | set(ARRAY_SUFFIXES)
                                  | set(READERS)))  # READERS: PDF, HTML, DOCX, DICOM (corpora.readers)
_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_LABEL_BAD = re.compile(r"[\x00-\x1f\x7f/\\]+")


@dataclass(frozen=True)
class UploadLimits:
    """Size limits for one upload request."""

    max_file_bytes: int = 50 * 2**20  # any one uploaded file
    max_request_bytes: int = 200 * 2**20  # all files of one request together
    max_files: int = 100  # files in one request
    max_zip_members: int = 20_000
    max_zip_bytes: int = 500 * 2**20  # uncompressed size of one zip


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def label_for(name: str) -> str:
    """A display label for a user-given file name: its last part, control characters and slashes removed."""
    base = re.split(r"[/\\]", str(name))[-1]
    base = _LABEL_BAD.sub("_", base).strip() or "upload"
    if len(base) <= 120:
        return base
    suffix = Path(base).suffix if len(Path(base).suffix) <= 16 else ""
    return base[: 120 - len(suffix) - 1] + "…" + suffix  # shortened, its file type kept


@dataclass
class StagedUploads:
    """Uploads copied into a private folder; iterate :meth:`items` to ingest, then :meth:`close`."""

    root: Path
    sources: list[tuple[str, Path]] = field(default_factory=list)  # (label, staged path)
    rejected: list[str] = field(default_factory=list)  # one line per refused upload or member

    def items(self) -> Iterator[Document | ItemError]:
        """Documents (and per-item errors) from every staged source; single files are labelled by their user name."""
        from corpora.files import iter_path
        from heterag.core.errors import HeteragError

        for label, path in self.sources:
            try:
                for item in iter_path(path):
                    if isinstance(item, ItemError):
                        yield ItemError(_strip_path(item.source, path, label), _strip_path(item.message, path, label))
                    elif path.is_file() and path.suffix.lower() != ".jsonl" and item.id in (path.name, path.stem):
                        yield _relabel(item, path, label)
                    elif path.is_file() and item.id.startswith(path.name + "#"):  # a part: paper.pdf#figure-1
                        yield relabel(item, path.name, label)
                    else:
                        yield item
            except HeteragError as exc:  # this upload cannot be read (any further); the others still are
                yield ItemError(label, _strip_path(str(exc), path, label))
            except Exception as exc:  # a reader that fails on a malformed file (e.g. a broken .npz)
                log.info("reading upload %s failed", label, exc_info=True)
                yield ItemError(label, f"cannot read it: {_strip_path(str(exc), path, label) or type(exc).__name__}")

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> StagedUploads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _member(name: str) -> str:
    """A zip member's name as the user wrote it, quoted, control characters escaped, shortened."""
    shown = repr(name)
    return shown if len(shown) <= 100 else shown[:99] + "…"


def _layout_root(folder: Path) -> Path:
    """The folder a zip's layout starts in: a zip of one folder (``zip -r pets.zip pets/``) holds
    everything one level down; that folder is the layout (its captions file is found there)."""
    entries = [p for p in folder.iterdir() if p.name not in ("__MACOSX", ".DS_Store")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


def _strip_path(text: str, path: Path, label: str) -> str:
    """Replace the private staging path in a message by the user's label."""
    return str(text).replace(str(path), label).replace(path.name, label)


def _relabel(doc: Document, path: Path, label: str) -> Document:
    title = doc.title
    if title in (path.stem, path.name, ""):
        title = Path(label).stem if doc.sections else ""
    meta = {**doc.metadata, "source": label}
    return dataclasses.replace(doc, id=label, title=title, metadata=meta)


def relabel(doc: Document, old: str, new: str) -> Document:
    """``doc`` (a file's document ``old`` or a part of it, ``old#figure-1``) as a document of the file ``new``:
    its id, ``source`` and image source say ``new``."""
    meta = {**doc.metadata, "source": new}
    image = doc.image
    if image is not None and image.source and image.source.startswith(old):
        image = dataclasses.replace(image, source=new + image.source[len(old):])
    return dataclasses.replace(doc, id=new + doc.id[len(old):] if doc.id.startswith(old) else doc.id, metadata=meta,
                               image=image)


def numbered(label: str, n: int) -> str:
    """The ``n``-th name for another file called ``label``: ``notes (2).md``."""
    suffix = Path(label).suffix if len(Path(label).suffix) <= 16 else ""
    return f"{label[: len(label) - len(suffix)]} ({n}){suffix}"


def stage_uploads(files: Sequence[tuple[str, str | os.PathLike[str]]], limits: UploadLimits | None = None) -> StagedUploads:
    """Copy ``files`` (``(user file name, path of the uploaded bytes)``) into a new private folder.

    Unsupported types, files over the per-file limit and files past the per-request limit are
    refused one line each; the rest is staged. Never raises for bad input.
    """
    limits = limits or UploadLimits()
    staged = StagedUploads(root=Path(tempfile.mkdtemp(prefix="heterag-upload-")))
    os.chmod(staged.root, 0o700)
    total = 0
    for i, (name, src) in enumerate(files, start=1):
        label = label_for(name)
        suffix = Path(label).suffix.lower()
        if i > limits.max_files:
            staged.rejected.append(f"{label}: more than {limits.max_files} files in one upload; send the rest separately")
            continue
        if suffix not in SUPPORTED_SUFFIXES:
            staged.rejected.append(f"{label}: unsupported file type {suffix or '(no extension)'}; "
                                   f"upload {', '.join(SUPPORTED_SUFFIXES)}")
            continue
        try:
            st = os.stat(src)
        except OSError:
            staged.rejected.append(f"{label}: the upload is missing (try again)")
            continue
        if not stat.S_ISREG(st.st_mode):
            staged.rejected.append(f"{label}: not a regular file")
            continue
        if st.st_size > limits.max_file_bytes:
            staged.rejected.append(f"{label}: {mib(st.st_size)} is over the {mib(limits.max_file_bytes)} limit per file")
            continue
        if total + st.st_size > limits.max_request_bytes:
            staged.rejected.append(f"{label}: the upload would pass the {mib(limits.max_request_bytes)} limit per "
                                   "request; upload it separately")
            continue
        total += st.st_size
        if suffix in ARCHIVE_SUFFIXES:
            dest = staged.root / f"{i:04d}-zip"
            dest.mkdir(mode=0o700)
            if _unzip(Path(src), dest, label, limits, staged.rejected):
                staged.sources.append((label, _layout_root(dest)))
            continue
        dest = staged.root / f"{i:04d}{suffix}"
        shutil.copyfile(src, dest)
        staged.sources.append((label, dest))
    return staged


def _unzip(src: Path, dest: Path, label: str, limits: UploadLimits, rejected: list[str]) -> bool:
    """Unpack the safe members of zip ``src`` into ``dest``; False (and a line in ``rejected``) if it is unusable."""
    try:
        with zipfile.ZipFile(src) as zf:
            infos = zf.infolist()
            if len(infos) > limits.max_zip_members:
                rejected.append(f"{label}: {len(infos)} members, over the limit of {limits.max_zip_members}")
                return False
            size = sum(i.file_size for i in infos)
            if size > limits.max_zip_bytes:
                rejected.append(f"{label}: unpacks to {mib(size)}, over the {mib(limits.max_zip_bytes)} limit")
                return False
            written = 0
            root = dest.resolve()
            for info in infos:
                if info.is_dir():
                    continue
                parts = [p for p in info.filename.replace("\\", "/").split("/") if p]
                if parts and parts[0] == "__MACOSX":
                    continue
                is_link = stat.S_ISLNK(info.external_attr >> 16)
                if is_link or not parts or not all(_SAFE_PART.match(p) for p in parts) or any(p in (".", "..") for p in parts):
                    rejected.append(f"{label}: member {_member(info.filename)} skipped (links and names other than "
                                    "letters, digits, '._-' are not unpacked)")
                    continue
                if parts[-1].lower().endswith(ARCHIVE_SUFFIXES):
                    rejected.append(f"{label}: member {_member(info.filename)} skipped (archives inside an archive are "
                                    "not unpacked; upload it by itself)")
                    continue
                target = dest.joinpath(*parts)
                if not target.resolve().is_relative_to(root):
                    rejected.append(f"{label}: member {_member(info.filename)} skipped (outside the archive)")
                    continue
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                with zf.open(info) as fin, open(target, "xb") as fout:
                    remaining = limits.max_file_bytes + 1
                    while chunk := fin.read(1 << 20):
                        remaining -= len(chunk)
                        written += len(chunk)
                        if remaining < 0 or written > limits.max_zip_bytes:
                            break
                        fout.write(chunk)
                if remaining < 0 or written > limits.max_zip_bytes:
                    target.unlink(missing_ok=True)
                    rejected.append(f"{label}: member {label_for(info.filename)!r} is over the "
                                    f"{mib(limits.max_file_bytes)} limit per file")
                    if written > limits.max_zip_bytes:
                        return False
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
        rejected.append(f"{label}: not a readable zip file ({type(exc).__name__})")
        return False
    return True


__all__ = ["SUPPORTED_SUFFIXES", "StagedUploads", "UploadLimits", "label_for", "numbered", "relabel", "stage_uploads"]
