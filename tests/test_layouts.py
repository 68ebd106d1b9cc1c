"""The layout registry: one module per corpus layout behind :class:`corpora.layouts.LayoutReader`.

Each layout's own reading is tested in test_image_layouts / test_corpora; here: adding a layout is
adding a module, detection follows the registry order, and errors list the known layouts.
"""

from __future__ import annotations

import importlib
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from corpora.files import iter_path
from corpora.layouts import (
    LAYOUT_READERS,
    LayoutReader,
    detect_image_layout,
    detect_layout,
    iter_image_layout,
    register_layout,
    unregister_layout,
)
from heterag.core.documents import Document, ItemError
from heterag.core.errors import InvalidInputError

TOY_MODULE = '''
"""A toy layout: a folder with ``toy.manifest``, one document per ``id<TAB>text`` line."""

from pathlib import Path

from heterag.core.documents import Document, ItemError


class ToyLayout:
    name = "toy_manifest"
    title = "toy manifest"
    description = "a folder with toy.manifest"
    images = False
    splits = False

    def detect(self, path: Path) -> bool:
        return path.is_dir() and (path / "toy.manifest").is_file()

    def read(self, path: Path, **options):
        lines = (path / "toy.manifest").read_text().splitlines()
        for lineno, line in enumerate(lines, start=1):
            doc_id, sep, text = line.partition("\\t")
            if not sep:
                yield ItemError(f"toy.manifest:{lineno}", "expected id<TAB>text")
                continue
            yield Document.create(text=text, id=doc_id, metadata={"source": "toy.manifest"})


READER = ToyLayout()
'''


@pytest.fixture
def toy_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LayoutReader]:
    """The toy layout written as a module of its own, imported and registered for one test."""
    package = tmp_path / "plugins"
    package.mkdir()
    (package / "toy_layout.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.syspath_prepend(str(package))
    module = importlib.import_module("toy_layout")
    reader = register_layout(module.READER)
    try:
        yield reader
    finally:
        unregister_layout(reader.name)


def _toy_folder(root: Path) -> Path:
    root.mkdir()
    (root / "toy.manifest").write_text("a\tThe harbour crane lifts containers.\nno tab here\nb\tTides rise twice a day.\n")
    return root


def test_adding_a_layout_is_adding_a_module(tmp_path: Path, toy_layout: LayoutReader) -> None:
    folder = _toy_folder(tmp_path / "bundle")
    assert isinstance(toy_layout, LayoutReader)
    assert detect_layout(folder) is toy_layout
    assert detect_image_layout(folder) is None  # a document layout, not an image one
    items = list(iter_path(folder))
    docs = [i for i in items if isinstance(i, Document)]
    errors = [i for i in items if isinstance(i, ItemError)]
    assert [d.id for d in docs] == ["a", "b"]
    assert "harbour crane" in docs[0].text
    assert [str(e) for e in errors] == ["toy.manifest:2: expected id<TAB>text"]
    with pytest.raises(InvalidInputError, match="--split applies to"):
        iter_path(folder, split="train")


def test_without_the_layout_the_folder_is_read_file_by_file(tmp_path: Path) -> None:
    folder = _toy_folder(tmp_path / "bundle")
    assert detect_layout(folder) is None
    items = list(iter_path(folder))
    assert [str(i) for i in items] == ["toy.manifest: unsupported file type .manifest"]


def test_registration_is_checked_and_ordered(toy_layout: LayoutReader) -> None:
    names = [r.name for r in LAYOUT_READERS]
    assert names[:7] == ["beir", "vqa_rad", "coco", "captions", "image_folder", "medmnist", "jsonl"]
    assert names[-1] == "toy_manifest"
    assert all(isinstance(r, LayoutReader) for r in LAYOUT_READERS)
    with pytest.raises(InvalidInputError, match="'toy_manifest' is already registered"):
        register_layout(toy_layout)
    with pytest.raises(InvalidInputError, match="not a LayoutReader"):
        register_layout(object())  # type: ignore[arg-type]

    class Other:
        name, title, description, images, splits = "other", "other", "other", False, False

        def detect(self, path: Path) -> bool:
            return False

        def read(self, path: Path, **options):
            return iter(())

    with pytest.raises(InvalidInputError, match=r"unknown layout 'nosuch'; choose one of: beir, vqa_rad, coco"):
        register_layout(Other(), before="nosuch")
    register_layout(Other(), before="coco")
    try:
        names = [r.name for r in LAYOUT_READERS]
        assert names.index("other") == names.index("coco") - 1
    finally:
        unregister_layout("other")
    assert "other" not in [r.name for r in LAYOUT_READERS]


def test_an_unknown_folder_error_lists_the_known_layouts(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("# Notes\nnothing visual here")
    with pytest.raises(InvalidInputError, match="not an image layout") as raised:
        iter_image_layout(tmp_path)
    message = str(raised.value)
    assert "\n" not in message
    for reader in LAYOUT_READERS:
        if reader.images:
            assert f"{reader.name} ({reader.description})" in message
    assert "beir (" not in message and "jsonl (" not in message  # document layouts are not image layouts


def test_a_folder_two_layouts_claim_is_read_as_the_first_in_registry_order(tmp_path: Path) -> None:
    # A VQA-RAD folder that also has a captions.jsonl: VQA-RAD comes first in the registry.
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "images" / "scan.png")
    (tmp_path / "vqa_rad.json").write_text(json.dumps([{
        "image_name": "scan.png", "question": "Is there a mass?", "answer": "no", "answer_type": "CLOSED",
    }]))
    (tmp_path / "captions.jsonl").write_text(json.dumps({"image": "images/scan.png", "caption": "a red square"}) + "\n")
    assert detect_image_layout(tmp_path) == "vqa_rad"
    (item,) = list(iter_image_layout(tmp_path))
    assert item.id == "vqa-rad-scan" and "Is there a mass?" in item.text
    # ...and a BEIR folder wins over every image layout, whatever images it holds.
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "beir text"}\n')
    assert detect_layout(tmp_path).name == "beir"
    assert [d.id for d in iter_path(tmp_path)] == ["d1"]


def test_split_for_a_layout_without_splits_names_those_that_take_one(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(InvalidInputError, match=r"split='val2017' only applies to COCO and MedMNIST layouts, "
                                                r"this is 'image_folder'"):
        iter_image_layout(tmp_path, split="val2017")
