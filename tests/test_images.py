"""heterag.core.images: every bad image is one clear error naming the file; unusual valid images convert correctly."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from heterag import Document
from heterag.core.errors import InvalidInputError
from heterag.core.images import ImageFiles, ImageRef, load_image, pil_to_tensor, tensor_to_pil


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_bomb(path: Path, side: int = 30000) -> Path:
    """A real, valid 1-bit PNG of side x side pixels, about 100 KB on disk."""
    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b""))
    return path


@pytest.fixture()
def jpeg(tmp_path: Path) -> Path:
    p = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(p, quality=90)
    return p


def test_valid_jpeg_keeps_original_bytes_and_hash(jpeg: Path):
    ref = ImageRef.from_path(jpeg)
    assert ref.data == jpeg.read_bytes() and (ref.width, ref.height, ref.format) == (80, 64, "JPEG")
    assert ref == ImageRef.from_bytes(jpeg.read_bytes()) and ref.extension == ".jpg"
    assert ref.to_pil().mode == "RGB" and "data" not in repr(ref)


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("missing.png", None, "does not exist"),
        ("empty.png", lambda p: p.write_bytes(b""), "empty (0 bytes)"),
        ("notes.png", lambda p: p.write_text("this is not an image\n"), "not a recognised image"),
        ("cut.jpg", "truncate", "corrupt or truncated"),
        ("bomb.png", write_bomb, "decompression bomb"),
    ],
)
def test_bad_image_files_are_one_error_naming_the_file(tmp_path: Path, jpeg: Path, name, make, message):
    path = tmp_path / name
    if make == "truncate":
        path.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    elif make is not None:
        make(path)
    with pytest.raises(InvalidInputError) as err:
        ImageRef.from_path(path)
    assert str(err.value).startswith(str(path)) and message in str(err.value)


def test_bomb_is_refused_from_the_header_quickly(tmp_path: Path):
    import time

    path = write_bomb(tmp_path / "bomb.png")
    assert path.stat().st_size < 200_000
    t = time.perf_counter()
    with pytest.raises(InvalidInputError, match="decompression bomb"):
        ImageRef.from_path(path)
    # 12000x12000 passes PIL's own hard limit; the header check refuses it before decoding all the same
    big = write_bomb(tmp_path / "big.png", side=12000)
    with pytest.raises(InvalidInputError, match="12000x12000 = 144,000,000 pixels"):
        ImageRef.from_path(big)
    assert time.perf_counter() - t < 3.0


def test_sixteen_bit_cmyk_palette_and_alpha_convert_like_a_viewer(tmp_path: Path):
    grey16 = np.full((4, 4), 32768, dtype=np.uint16)
    Image.fromarray(grey16, mode="I;16").save(tmp_path / "g16.png")
    assert np.allclose(np.asarray(ImageRef.from_path(tmp_path / "g16.png").to_pil()), 128, atol=1)

    Image.new("CMYK", (4, 4), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    rgb = np.asarray(ImageRef.from_path(tmp_path / "cmyk.jpg").to_pil()).reshape(-1, 3).mean(0)
    assert rgb[0] < 30 and rgb[1] > 225 and rgb[2] > 225  # cyan

    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.save(tmp_path / "pal.png", transparency=0)
    a = np.asarray(ImageRef.from_path(tmp_path / "pal.png").to_pil())
    assert tuple(a[0, 0]) == (255, 255, 255) and tuple(a[1, 1]) == (200, 10, 10)

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 2] = 255
    rgba[0, 0, 3], rgba[1, 1, 3] = 0, 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    a = np.asarray(ImageRef.from_path(tmp_path / "alpha.png").to_pil())
    assert tuple(a[0, 0]) == (255, 255, 255) and tuple(a[1, 1]) == (0, 0, 255)


def test_arrays_and_pil_round_trip_losslessly():
    arr = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    ref = ImageRef.from_array(arr)
    assert np.array_equal(np.asarray(ref.to_pil()), arr) and ref.format == "PNG"
    assert np.array_equal(np.asarray(load_image(Image.fromarray(arr)).to_pil()), arr)
    t = pil_to_tensor(ref.to_pil())
    assert t.shape == (3, 7, 9) and float(t.max()) <= 1.0
    assert np.array_equal(np.asarray(tensor_to_pil(t)), arr)
    for bad in (np.zeros((3, 3, 2), np.uint8), np.full((3, 3), 2.0), np.zeros((3, 3), np.int64)):
        with pytest.raises(InvalidInputError):
            ImageRef.from_array(bad)
    with pytest.raises(InvalidInputError, match="expected an image"):
        load_image(42)


def test_data_url_downscales_large_images_keeping_aspect():
    ref = ImageRef.from_array(np.zeros((300, 400, 3), np.uint8))
    url = ref.data_url(max_side=100)
    assert url.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (100, 75)
    assert ImageRef.from_bytes(base64.b64decode(ref.data_url().split(",", 1)[1])) == ref


def test_image_files_are_content_addressed_atomic_and_idempotent(tmp_path: Path):
    files = ImageFiles(tmp_path / "images")
    ref = ImageRef.from_array(np.ones((5, 5), np.uint8) * 7)
    p1 = files.put(ref)
    mtime = p1.stat().st_mtime_ns
    assert files.put(ref) == p1 and p1.stat().st_mtime_ns == mtime
    assert p1.read_bytes() == ref.data and files.shas() == {ref.sha256}
    assert not [p for p in p1.parent.iterdir() if p.name.startswith(".tmp")]
    assert files.remove(ref.sha256) == 1 and files.shas() == set()


def test_documents_may_be_image_only_and_their_id_covers_the_image():
    a = ImageRef.from_array(np.zeros((4, 4), np.uint8))
    b = ImageRef.from_array(np.ones((4, 4), np.uint8))
    da, db = Document.create(image=a), Document.create(image=b)
    assert da.id != db.id and da.text == "" and da.image == a
    assert Document.create("caption", image=a).id != Document.create("caption").id
    with pytest.raises(InvalidInputError, match="give text, sections or an image"):
        Document.create()
    with pytest.raises(InvalidInputError, match="reserved"):
        Document.create("x", metadata={"image_path": "a"})
