"""Image corpus layouts: caption folders, plain image folders, COCO, VQA-RAD, MedMNIST.

Layouts are built small in tmp_path; the real VQA-RAD and PneumoniaMNIST copies in the shared
data folder are checked when present.
"""

from __future__ import annotations

import csv
import io
import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from PIL import Image

from corpora.annotated import AnnotatedImage
from corpora.image_layouts import (
    coco_box,
    decode_segmentation,
    detect_image_layout,
    iter_caption_folder,
    iter_coco,
    iter_image_folder,
    iter_image_layout,
    iter_medmnist,
    iter_vqa_rad,
    load_medmnist,
    load_vqa_rad,
    polygon_mask,
    rle_decode,
    rle_encode,
    rle_from_string,
    rle_to_string,
    split_vqa_rad,
)
from heterag.core.documents import ItemError
from heterag.core.errors import InvalidInputError

# ----------------------------------------------------------------------------- helpers


def save(path: Path, img: Image.Image, fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **kw)
    return path


def solid(color=(200, 30, 30), size=(8, 6)) -> Image.Image:
    return Image.new("RGB", size, color)


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A real, valid 1-bit greyscale PNG of width x height zero pixels, written without ever holding its pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    parts, block = [], 1000
    for start in range(0, height, block):
        parts.append(comp.compress(row * min(block, height - start)))
    parts.append(comp.flush())
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def split_items(items) -> tuple[list[AnnotatedImage], list[ItemError]]:
    ok = [i for i in items if isinstance(i, AnnotatedImage)]
    bad = [i for i in items if isinstance(i, ItemError)]
    assert len(ok) + len(bad) == len(items)
    return ok, bad


def error_for(errors: list[ItemError], source_part: str) -> ItemError:
    matches = [e for e in errors if source_part in e.source]
    assert len(matches) == 1, f"expected one error naming {source_part!r}, got {[str(e) for e in errors]}"
    return matches[0]


# ----------------------------------------------------------------------------- plain image folder


def test_image_folder_recursive_sorted_hidden_skipped(tmp_path: Path) -> None:
    save(tmp_path / "b.png", solid())
    save(tmp_path / "a" / "c.JPG", solid((0, 0, 255)), "JPEG")
    save(tmp_path / ".hidden.png", solid())
    save(tmp_path / ".git" / "d.png", solid())
    (tmp_path / "notes.txt").write_text("not an image")
    assert detect_image_layout(tmp_path) == "image_folder"
    items = list(iter_image_layout(tmp_path))
    ok, bad = split_items(items)
    assert not bad
    assert [i.id for i in ok] == ["a/c.JPG", "b.png"]
    assert all(i.text == "" and i.objects == () and i.qa == () for i in ok)
    assert (ok[1].image.width, ok[1].image.height) == (8, 6)
    assert ok[1].image.to_pil().getpixel((0, 0)) == (200, 30, 30)
    doc = ok[1].to_document()  # image-only item: no text needed
    assert doc.id == "b.png" and doc.image is not None


def test_bad_image_files_are_item_errors_and_the_rest_loads(tmp_path: Path) -> None:
    save(tmp_path / "good.png", solid())
    full = jpeg_bytes(Image.effect_noise((64, 64), 60).convert("RGB"))
    (tmp_path / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello, I am not a picture\n")
    bomb = png_bomb(30_000, 30_000)
    assert len(bomb) < 300_000
    (tmp_path / "bomb.png").write_bytes(bomb)
    (tmp_path / "big.png").write_bytes(png_bomb(12_000, 12_000))  # under PIL's own hard limit, over heterag's

    start = time.perf_counter()
    ok, bad = split_items(list(iter_image_folder(tmp_path)))
    elapsed = time.perf_counter() - start
    assert elapsed < 5, "the bomb must be refused from its header, not decoded"
    assert [i.id for i in ok] == ["good.png"]
    assert sorted(e.source for e in bad) == ["big.png", "bomb.png", "empty.png", "text.png", "truncated.jpg"]
    messages = {e.source: e.message for e in bad}
    assert "decompression bomb" in messages["bomb.png"]
    assert "12000x12000" in messages["big.png"] and "before decoding" in messages["big.png"]
    assert "empty" in messages["empty.png"]
    assert "not a recognised image" in messages["text.png"]
    assert "truncated" in messages["truncated.jpg"] or "corrupt" in messages["truncated.jpg"]
    # the ItemError does not repeat the absolute path of the file it names
    assert all(str(tmp_path) not in e.message for e in bad)


def test_unusual_but_valid_images_load_with_correct_rgb(tmp_path: Path) -> None:
    grey16 = np.full((4, 5), 32768, dtype=np.uint16)
    save(tmp_path / "grey16.png", Image.fromarray(grey16))
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    save(tmp_path / "cmyk.jpg", Image.new("CMYK", (4, 4), (255, 0, 0, 0)), "JPEG", quality=95)
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red, index 1 blue
    pal.putpixel((0, 0), 1)
    save(tmp_path / "palette.png", pal, transparency=0)
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (0, 200, 0, 255))
    save(tmp_path / "rgba.png", rgba)

    ok, bad = split_items(list(iter_image_folder(tmp_path)))
    assert not bad, [str(e) for e in bad]
    by_id = {i.id: i.image.to_pil() for i in ok}
    assert set(by_id) == {"grey16.png", "cmyk.jpg", "palette.png", "rgba.png"}
    assert all(img.mode == "RGB" for img in by_id.values())
    assert all(abs(c - 128) <= 1 for c in by_id["grey16.png"].getpixel((2, 2)))  # scaled, not clipped to 255
    cyan = by_id["cmyk.jpg"].getpixel((1, 1))
    assert cyan[0] < 20 and cyan[1] > 235 and cyan[2] > 235
    assert by_id["palette.png"].getpixel((0, 0)) == (0, 0, 255)  # opaque palette entry
    assert by_id["palette.png"].getpixel((2, 2)) == (255, 255, 255)  # transparent -> white
    assert by_id["rgba.png"].getpixel((1, 1)) == (0, 200, 0)
    assert by_id["rgba.png"].getpixel((3, 3)) == (255, 255, 255)


# ----------------------------------------------------------------------------- caption folder


def write_jsonl(path: Path, lines: list) -> None:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")


def test_caption_jsonl_loads_and_reports_bad_lines(tmp_path: Path) -> None:
    outside_dir, tmp_path = tmp_path, tmp_path / "folder"
    save(tmp_path / "imgs" / "cat.png", solid((10, 20, 30)))
    save(tmp_path / "dog.jpg", solid(), "JPEG")
    save(tmp_path / "plain.png", solid())
    save(tmp_path / "unlisted.png", solid())
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (outside_dir / "outside.png").write_bytes((tmp_path / "dog.jpg").read_bytes())
    write_jsonl(tmp_path / "captions.jsonl", [
        {"image": "./imgs/cat.png", "caption": "  A cat on a mat. ", "title": "Cat", "year": 2020,
         "tags": ["x"], "nothing": None},                                           # 1 ok
        {"file_name": "dog.jpg", "text": ["A dog.", "Running fast."]},              # 2 ok, list caption
        {"image": "missing.png", "caption": "gone"},                                # 3 missing image
        '{"image": "dog.jpg", "caption": ',                                          # 4 not JSON
        {"image": "../outside.png", "caption": "escape"},                           # 5 escapes
        {"image": "/etc/hostname", "caption": "absolute"},                          # 6 absolute
        {"image": "broken.png", "caption": "corrupt"},                              # 7 corrupt image
        {"image": "dog.jpg", "caption": "again"},                                   # 8 duplicate
        {"image": "plain.png"},                                                     # 9 no caption key
        {"image": "plain.png", "caption": "ok", "doc_id": "x"},                     # 10 reserved key
        '{"image": "plain.png", "caption": "ok", "score": NaN}',                    # 11 non-finite metadata
        {"image": "plain.png", "caption": ""},                                      # 12 ok, image-only
    ])
    assert detect_image_layout(tmp_path) == "captions"
    ok, bad = split_items(list(iter_image_layout(tmp_path)))

    assert [i.id for i in ok] == ["imgs/cat.png", "dog.jpg", "plain.png"]
    cat, dog, plain = ok
    assert cat.text == "A cat on a mat." and cat.title == "Cat"
    assert cat.metadata == {"source": "imgs/cat.png", "year": 2020}  # list and null dropped
    assert cat.image.to_pil().getpixel((0, 0)) == (10, 20, 30)
    assert dog.text == "A dog.\nRunning fast."
    assert plain.text == "" and plain.to_document().image is not None

    sources = sorted(int(e.source.rsplit(":", 1)[1]) for e in bad)
    assert sources == [3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert all(e.source.startswith("captions.jsonl:") for e in bad)
    msg = {int(e.source.rsplit(":", 1)[1]): e.message for e in bad}
    assert "missing.png" in msg[3] and "does not exist" in msg[3]
    assert "JSON" in msg[4]
    assert "outside" in msg[5] and ".." in msg[5]
    assert "absolute" in msg[6]
    assert "broken.png" in msg[7]
    assert "twice" in msg[8] and "captions.jsonl:2" in msg[8]
    assert "caption" in msg[9]
    assert "doc_id" in msg[10] and "reserved" in msg[10]
    assert "score" in msg[11] and "finite" in msg[11]


def test_caption_csv_rows_and_hf_metadata_file(tmp_path: Path) -> None:
    save(tmp_path / "a.png", solid())
    save(tmp_path / "b.png", solid((0, 0, 0)))
    with (tmp_path / "metadata.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "text", "site"])
        w.writerow(["a.png", "First, with a comma", "north"])
        w.writerow(["b.png", "too few"])                     # line 3: missing a column
        w.writerow(["b.png", "Second\nspans lines", "south"])  # lines 4-5: quoted newline
    assert detect_image_layout(tmp_path) == "captions"
    ok, bad = split_items(list(iter_caption_folder(tmp_path)))
    assert [(i.id, i.text, i.metadata["site"]) for i in ok] == [
        ("a.png", "First, with a comma", "north"), ("b.png", "Second\nspans lines", "south")]
    assert [e.source for e in bad] == ["metadata.csv:3"]
    assert "2 fields" in bad[0].message and "3" in bad[0].message


def test_caption_csv_without_caption_column_is_a_clear_error_at_once(tmp_path: Path) -> None:
    save(tmp_path / "a.png", solid())
    (tmp_path / "captions.csv").write_text("image,label\na.png,cat\n")
    with pytest.raises(InvalidInputError, match=r"captions\.csv:1: no caption column .*caption, text"):
        iter_caption_folder(tmp_path)  # raised on call, not on iteration
    (tmp_path / "captions.csv").write_text("caption\nhello\n")
    with pytest.raises(InvalidInputError, match="no image column"):
        iter_image_layout(tmp_path)


def test_metadata_jsonl_without_images_is_not_an_image_layout(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "metadata.jsonl", [{"file_name": "x.txt", "text": "hi"}])
    (tmp_path / "x.txt").write_text("hello")
    assert detect_image_layout(tmp_path) is None
    with pytest.raises(InvalidInputError, match="not an image layout"):
        iter_image_layout(tmp_path)


# ----------------------------------------------------------------------------- detection / dispatch


def test_detection_and_dispatch_errors(tmp_path: Path) -> None:
    assert detect_image_layout(tmp_path / "nope") is None
    with pytest.raises(InvalidInputError, match="does not exist"):
        iter_image_layout(tmp_path / "nope")
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text('{"_id": "1", "text": "x"}\n')
    save(beir / "figure.png", solid())  # images inside a BEIR folder do not make it an image layout
    assert detect_image_layout(beir) is None
    text_dir = tmp_path / "texts"
    text_dir.mkdir()
    (text_dir / "a.md").write_text("# hi")
    assert detect_image_layout(text_dir) is None
    assert detect_image_layout(text_dir / "a.md") is None
    imgs = tmp_path / "imgs"
    save(imgs / "a.png", solid())
    with pytest.raises(InvalidInputError, match="split"):
        iter_image_layout(imgs, split="val2017")


# ----------------------------------------------------------------------------- COCO masks


def test_polygon_mask_pixel_centres() -> None:
    rect = polygon_mask([0, 0, 4, 0, 4, 3, 0, 3], 6, 8)
    assert rect.sum() == 12 and rect[:3, :4].all()
    # a sub-pixel rectangle covers only the pixels whose centres it contains
    small = polygon_mask([0.6, 0.6, 3.4, 0.6, 3.4, 2.4, 0.6, 2.4], 6, 8)
    assert small.sum() == 2 and small[1, 1] and small[1, 2]
    tri = polygon_mask([0, 0, 4, 0, 0, 4], 6, 8)  # right triangle, legs 4
    assert tri.sum() == 6 and tri[0, :3].all() and not tri[0, 3] and tri[2, 0] and not tri[3, 0]
    clipped = polygon_mask([-5, -5, 100, -5, 100, 100, -5, 100], 6, 8)
    assert clipped.all()


def test_rle_uncompressed_and_compressed() -> None:
    # hand-computed 2x3 mask: counts 1 bg, 2 fg, 3 bg in column-major order
    assert rle_from_string("123") == [1, 2, 3]
    m = decode_segmentation({"counts": "123", "size": [2, 3]}, 2, 3)
    assert m.tolist() == [[False, True, False], [True, False, False]]
    # multi-character counts and the difference coding from the 4th count on: [5, 40, 3, 50]
    assert rle_from_string("5X13:") == [5, 40, 3, 50]
    assert rle_to_string([5, 40, 3, 50]) == "5X13:"
    m = decode_segmentation({"counts": "5X13:", "size": [7, 14]}, 7, 14)
    assert m.sum() == 90
    assert np.array_equal(m, rle_decode([5, 40, 3, 50], 7, 14))
    # round trip on a random mask, including a negative difference
    rng = np.random.default_rng(0)
    mask = rng.random((13, 17)) > 0.6
    runs = rle_encode(mask)
    assert np.array_equal(rle_decode(runs, 13, 17), mask)
    assert rle_from_string(rle_to_string(runs)) == runs
    assert np.array_equal(decode_segmentation({"counts": rle_to_string(runs), "size": [13, 17]}, 13, 17), mask)
    with pytest.raises(InvalidInputError, match="sum to"):
        decode_segmentation({"counts": [1, 2], "size": [2, 3]}, 2, 3)
    with pytest.raises(InvalidInputError, match="size"):
        decode_segmentation({"counts": [6], "size": [3, 2]}, 2, 3)


def test_coco_box_conversion() -> None:
    assert coco_box([1, 2, 4, 3], 10, 8) == (1, 2, 5, 5)
    assert coco_box([1.2, 0.5, 2.3, 1.0], 10, 8) == (1, 0, 4, 2)
    assert coco_box([8, 6, 5, 5], 10, 8) == (8, 6, 10, 8)  # clipped
    assert coco_box([12, 1, 2, 2], 10, 8) is None  # outside
    with pytest.raises(InvalidInputError, match="4 numbers"):
        coco_box([1, 2, 3], 10, 8)
    with pytest.raises(InvalidInputError, match="negative"):
        coco_box([1, 2, -3, 1], 10, 8)


# ----------------------------------------------------------------------------- COCO layout


def make_coco(root: Path, split: str = "val2017") -> Path:
    images = [
        {"id": 139, "file_name": "000000000139.jpg", "width": 10, "height": 8},
        {"id": 285, "file_name": "000000000285.jpg", "width": 6, "height": 4},
        {"id": 300, "file_name": "000000000300.png", "width": 14, "height": 7},
        {"id": 400, "file_name": "000000000400.png", "width": 5, "height": 5},
        {"id": 500, "file_name": "000000000500.jpg", "width": 5, "height": 5},  # file missing
        {"id": 600, "file_name": "000000000600.png", "width": 9, "height": 9},  # real size differs
    ]
    save(root / split / "000000000139.jpg", solid(size=(10, 8)), "JPEG")
    save(root / split / "000000000285.jpg", solid(size=(6, 4)), "JPEG")
    save(root / split / "000000000300.png", solid(size=(14, 7)))
    save(root / split / "000000000400.png", solid(size=(5, 5)))
    save(root / split / "000000000600.png", solid(size=(5, 5)))
    captions = {
        "images": images,
        "annotations": [
            {"id": 2, "image_id": 139, "caption": "A second  caption"},
            {"id": 1, "image_id": 139, "caption": "A person walks a dog. "},
            {"id": 3, "image_id": 285, "caption": "A crowd."},
            {"id": 4, "image_id": 999, "caption": "orphan"},
        ],
    }
    instances = {
        "images": images,
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 18, "name": "dog", "supercategory": "animal"}],
        "annotations": [
            {"id": 10, "image_id": 139, "category_id": 1, "iscrowd": 0, "bbox": [1, 2, 4, 3],
             "segmentation": [[1, 2, 5, 2, 5, 5, 1, 5]], "area": 12.0},
            {"id": 11, "image_id": 139, "category_id": 18, "iscrowd": 0, "bbox": [6.5, 0.5, 2.0, 2.0],
             "segmentation": [[6.5, 0.5, 8.5, 0.5, 8.5, 2.5, 6.5, 2.5], [7.5, 1.5, 9.5, 1.5, 9.5, 3.5, 7.5, 3.5]]},
            # crowd, uncompressed RLE: rows 1-2, columns 2-4 of a 6x4 image
            {"id": 12, "image_id": 285, "category_id": 1, "iscrowd": 1, "bbox": [2, 1, 3, 2],
             "segmentation": {"counts": [9, 2, 2, 2, 2, 2, 5], "size": [4, 6]}},
            # compressed RLE string, no bbox: the box comes from the mask
            {"id": 13, "image_id": 300, "category_id": 18, "iscrowd": 1,
             "segmentation": {"counts": "5X13:", "size": [7, 14]}},
            # malformed polygon: odd number of coordinates -> image 400 skipped
            {"id": 14, "image_id": 400, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 2, 2],
             "segmentation": [[0, 0, 2, 0, 2]]},
        ],
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(captions))
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(instances))
    return root


def test_coco_layout(tmp_path: Path) -> None:
    root = make_coco(tmp_path / "coco")
    assert detect_image_layout(root) == "coco"
    ok, bad = split_items(list(iter_image_layout(root)))
    assert [i.id for i in ok] == ["coco-val2017-139", "coco-val2017-285", "coco-val2017-300"]
    img139, img285, img300 = ok
    assert img139.text == "A person walks a dog.\nA second caption"  # annotation-id order, whitespace normalised
    assert img139.metadata == {"split": "val2017", "image_id": 139, "file_name": "000000000139.jpg"}
    person, dog = img139.objects
    assert person.label == "person" and person.box == (1, 2, 5, 5)
    assert person.mask.shape == (8, 10) and person.mask.sum() == 12 and person.mask[2:5, 1:5].all()
    assert person.attributes == {"iscrowd": "0", "supercategory": "person", "annotation_id": "10"}
    assert dog.label == "dog" and dog.box == (6, 0, 9, 3)
    assert dog.mask.sum() == 7  # two 2x2 squares overlapping in one pixel, united
    assert img285.text == "A crowd."
    (crowd,) = img285.objects
    assert crowd.box == (2, 1, 5, 3) and crowd.mask.sum() == 6 and crowd.mask[1:3, 2:5].all()
    assert crowd.attributes["iscrowd"] == "1"
    assert crowd.area_fraction(6, 4) == pytest.approx(6 / 24)
    (rle,) = img300.objects
    assert img300.text == "" and rle.mask.sum() == 90 and rle.box == (0, 0, 14, 7)

    errors = {e.source: e.message for e in bad}
    assert set(errors) == {"annotations/captions_val2017.json:annotations[3]",
                           "annotations/instances_val2017.json:annotations[4]",
                           "val2017/000000000500.jpg", "val2017/000000000600.png"}
    assert "999" in errors["annotations/captions_val2017.json:annotations[3]"]
    assert "odd number" in errors["annotations/instances_val2017.json:annotations[4]"]
    assert "does not exist" in errors["val2017/000000000500.jpg"]
    assert "5x5" in errors["val2017/000000000600.png"] and "9x9" in errors["val2017/000000000600.png"]


def test_coco_split_choice_and_missing_annotations(tmp_path: Path) -> None:
    root = make_coco(tmp_path / "coco")
    make_coco(root, split="train2017")
    ok, _ = split_items(list(iter_coco(root)))  # two splits: val2017 by default
    assert [i.id for i in ok] == ["coco-val2017-139", "coco-val2017-285", "coco-val2017-300"]
    assert any(isinstance(i, AnnotatedImage) and i.id == "coco-train2017-139" for i in iter_coco(root, split="train2017"))
    with pytest.raises(InvalidInputError, match="test2017.*train2017, val2017"):
        iter_coco(root, split="test2017")
    (root / "annotations" / "captions_val2017.json").unlink()
    (root / "annotations" / "instances_val2017.json").unlink()
    (root / "annotations" / "captions_test2017.json").write_text("{}")
    with pytest.raises(InvalidInputError, match="several COCO splits"):
        iter_coco(root)
    with pytest.raises(InvalidInputError, match=r"captions_test2017\.json: 'images' must be a list \(missing\)"):
        iter_coco(root, split="test2017")
    (root / "annotations" / "captions_test2017.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match=r"captions_test2017\.json: not valid JSON"):
        iter_coco(root, split="test2017")
    empty = tmp_path / "empty"
    (empty / "annotations").mkdir(parents=True)
    with pytest.raises(InvalidInputError, match="no COCO annotations"):
        iter_coco(empty)


# ----------------------------------------------------------------------------- VQA-RAD (synthetic)


def make_vqa_rad(root: Path) -> Path:
    for name in ("synpic1.jpg", "synpic2.jpg", "synpic3.jpg"):
        save(root / "images" / name, solid(), "JPEG")
    records = [
        {"qid": "0", "image_name": "synpic1.jpg", "image_organ": "HEAD", "question": "Is there a bleed?",
         "answer": "Yes", "answer_type": "CLOSED", "question_type": "PRES", "phrase_type": "freeform"},
        {"qid": 1, "image_name": "synpic2.jpg", "image_organ": "CHEST", "question": "How many ribs?",
         "answer": 12, "answer_type": "OPEN ", "question_type": "COUNT", "phrase_type": "test_freeform"},
        {"qid": 2, "image_name": "synpic1.jpg", "image_organ": "HEAD", "question": " Which  lobe? ",
         "answer": "left frontal", "answer_type": "OPEN", "question_type": "POS", "phrase_type": "para"},
        {"qid": 3, "image_name": "synpic2.jpg", "image_organ": "CHEST", "answer": "no", "answer_type": "CLOSED"},
        {"qid": 4, "image_name": "synpic9.jpg", "image_organ": "ABD", "question": "Is it normal?",
         "answer": "no", "answer_type": "CLOSED"},
        {"qid": 5, "image_name": "../secret.jpg", "question": "?", "answer": "x", "answer_type": "OPEN"},
    ]
    (root / "vqa_rad.json").write_text(json.dumps(records))
    return root


def test_vqa_rad_synthetic(tmp_path: Path) -> None:
    root = make_vqa_rad(tmp_path / "vqa")
    assert detect_image_layout(root) == "vqa_rad"
    ok, bad = split_items(list(iter_image_layout(root)))
    assert [i.id for i in ok] == ["vqa-rad-synpic1", "vqa-rad-synpic2", "vqa-rad-synpic3"]
    one, two, three = ok
    assert [(q.question, q.answer, q.kind) for q in one.qa] == [
        ("Is there a bleed?", "Yes", "CLOSED"), ("Which lobe?", "left frontal", "OPEN")]
    assert one.text == "Question: Is there a bleed? Answer: Yes\nQuestion: Which lobe? Answer: left frontal"
    assert one.metadata["organ"] == "HEAD"
    assert one.qa[0].metadata == {"question_type": "PRES", "phrase_type": "freeform", "qid": "0"}
    assert two.qa[0].answer == "12" and two.qa[0].kind == "OPEN"
    assert three.qa == () and three.text == "" and "organ" not in three.metadata
    errors = {e.source: e.message for e in bad}
    assert set(errors) == {"vqa_rad.json:[3]", "vqa_rad.json:[5]", "images/synpic9.jpg"}
    assert "question" in errors["vqa_rad.json:[3]"]
    assert "image_name" in errors["vqa_rad.json:[5]"]
    assert "does not exist" in errors["images/synpic9.jpg"] and "1 question in" in errors["images/synpic9.jpg"]
    with pytest.raises(InvalidInputError, match=r"vqa_rad\.json:\[3\]: 'question'"):
        load_vqa_rad(root, strict=True)
    assert len(load_vqa_rad(root)) == 3


def test_split_vqa_rad_is_by_image_and_deterministic(tmp_path: Path) -> None:
    root = make_vqa_rad(tmp_path / "vqa")
    items = load_vqa_rad(root)
    kb, test = split_vqa_rad(items, test_fraction=0.6, seed=3)
    # one image per organ with questions: round(0.6) = 1 of each goes to test; no questions: always KB
    assert [i.id for i in test] == ["vqa-rad-synpic1", "vqa-rad-synpic2"]
    assert [i.id for i in kb] == ["vqa-rad-synpic3"]
    again = split_vqa_rad(list(reversed(items)), test_fraction=0.6, seed=3)
    assert [i.id for i in again[1]] == ["vqa-rad-synpic2", "vqa-rad-synpic1"]  # input order kept
    with pytest.raises(InvalidInputError, match="test_fraction"):
        split_vqa_rad(items, test_fraction=1.0)
    with pytest.raises(InvalidInputError, match="duplicate"):
        split_vqa_rad(items + items[:1])


# ----------------------------------------------------------------------------- MedMNIST (synthetic)


def make_npz(path: Path, **arrays) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def test_medmnist_synthetic(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 6, 5), dtype=np.uint8)
    path = make_npz(tmp_path / "toymnist.npz", train_images=images, train_labels=np.array([[0], [2], [1], [2]], np.uint8),
                    test_images=images[:2], test_labels=np.array([1, 0], np.int64))
    assert detect_image_layout(path) == "medmnist"
    items = load_medmnist(path)
    assert [i.id for i in items] == [f"toymnist-train-{k}" for k in range(4)]
    assert [i.text for i in items] == ["Label: label 0.", "Label: label 2.", "Label: label 1.", "Label: label 2."]
    assert items[1].metadata == {"label": 2, "label_name": "label 2", "split": "train"}
    pil = items[0].image.to_pil()
    assert pil.size == (5, 6) and pil.getpixel((3, 2)) == (int(images[0, 2, 3]),) * 3  # lossless
    named = load_medmnist(path, split="test", label_names=["cat", "dog"])
    assert [i.text for i in named] == ["Label: dog.", "Label: cat."]
    assert load_medmnist(path, split="test", label_names={1: "dog"})[1].text == "Label: label 0."
    pneu = make_npz(tmp_path / "pneumoniamnist.npz", val_images=images[:2], val_labels=np.array([[0], [1]], np.uint8))
    assert [i.text for i in iter_image_layout(pneu, split="val")] == ["Chest X-ray: normal.", "Chest X-ray: pneumonia."]
    folder = tmp_path / "folder"
    make_npz(folder / "toymnist.npz", train_images=images, train_labels=np.zeros((4, 1), np.uint8))
    assert detect_image_layout(folder) == "medmnist"
    assert len(list(iter_image_layout(folder))) == 4


def test_medmnist_validation_errors(tmp_path: Path) -> None:
    images = np.zeros((3, 4, 4), np.uint8)
    labels = np.zeros((3, 1), np.uint8)
    pickled = make_npz(tmp_path / "pickled.npz", train_images=np.array([{"a": 1}, None], dtype=object), train_labels=labels)
    with pytest.raises(InvalidInputError, match=r"pickled\.npz: key 'train_images' holds pickled Python objects"):
        load_medmnist(pickled)
    missing = make_npz(tmp_path / "missing.npz", train_images=images)
    with pytest.raises(InvalidInputError, match=r"missing\.npz: no key 'train_labels'"):
        iter_medmnist(missing)  # raised on call
    with pytest.raises(InvalidInputError, match=r"no key 'val_images'.*splits: train"):
        load_medmnist(missing, split="val")
    short = make_npz(tmp_path / "short.npz", train_images=images, train_labels=labels[:2])
    with pytest.raises(InvalidInputError, match=r"short\.npz: 'train_images' has 3 images but 'train_labels' has 2"):
        load_medmnist(short)
    floats = make_npz(tmp_path / "floats.npz", train_images=images.astype(np.float32), train_labels=labels)
    with pytest.raises(InvalidInputError, match=r"floats\.npz: 'train_images' has dtype float32"):
        load_medmnist(floats)
    flat = make_npz(tmp_path / "flat.npz", train_images=images.reshape(3, 16), train_labels=labels)
    with pytest.raises(InvalidInputError, match=r"flat\.npz: 'train_images' has shape \(3, 16\)"):
        load_medmnist(flat)
    multi = make_npz(tmp_path / "multi.npz", train_images=images, train_labels=np.zeros((3, 14), np.uint8))
    with pytest.raises(InvalidInputError, match="multi-label"):
        load_medmnist(multi)
    notzip = tmp_path / "bad.npz"
    notzip.write_bytes(b"this is not a zip archive")
    with pytest.raises(InvalidInputError, match=r"bad\.npz: not a readable \.npz"):
        load_medmnist(notzip)


# ----------------------------------------------------------------------------- real data


@pytest.mark.data
def test_real_vqa_rad(data_dir: Path) -> None:
    root = require(data_dir / "vqa_rad")
    items = list(iter_vqa_rad(root))
    ok, bad = split_items(items)
    assert not bad, [str(e) for e in bad[:5]]
    assert len(ok) == 315
    assert sum(len(i.qa) for i in ok) == 2248
    assert {q.kind for i in ok for q in i.qa} == {"CLOSED", "OPEN"}
    assert sum(1 for i in ok if not i.qa) == 1  # one image file no question is about
    assert {i.metadata["organ"] for i in ok if i.qa} == {"HEAD", "CHEST", "ABD"}
    sample = next(i for i in ok if i.qa)
    assert sample.text.splitlines()[0] == f"Question: {sample.qa[0].question} Answer: {sample.qa[0].answer}"
    kb, test = split_vqa_rad(ok)
    assert {i.id for i in kb}.isdisjoint({i.id for i in test})
    assert {i.image.sha256 for i in kb}.isdisjoint({i.image.sha256 for i in test})
    assert len(kb) + len(test) == 315 and 55 <= len(test) <= 70
    assert [i.id for i in split_vqa_rad(ok)[1]] == [i.id for i in test]  # deterministic


@pytest.mark.data
def test_real_pneumoniamnist(data_dir: Path) -> None:
    path = require(data_dir / "pneumoniamnist" / "pneumoniamnist.npz")
    train = load_medmnist(path, "train", strict=True)
    assert len(train) == 3882
    test = load_medmnist(path, "test", strict=True)
    assert len(test) == 624
    assert sum(i.metadata["label_name"] == "normal" for i in test) == 234
    assert sum(i.metadata["label_name"] == "pneumonia" for i in test) == 390
    assert test[0].id == "pneumoniamnist-test-0" and test[0].text in ("Chest X-ray: normal.", "Chest X-ray: pneumonia.")
    assert (test[0].image.width, test[0].image.height) == (28, 28)
