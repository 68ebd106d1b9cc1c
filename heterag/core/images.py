"""Images as knowledge: validated image references, colour conversion, and on-disk image files.

An :class:`ImageRef` holds the original encoded bytes of an image (PNG, JPEG, ...) with
their SHA-256, after the image has been fully decoded once to prove it is usable. Every
way an image file can be bad is one clear :class:`~heterag.core.errors.InvalidInputError`
whose message starts with the file's name:

* missing path, a directory, a 0-byte file, a file over ``max_bytes``;
* not an image at all (a text file named ``.png``);
* corrupt or truncated data (decoded in full at creation, not later mid-ingest);
* a decompression bomb: the pixel count is read from the header and refused before any
  pixel is decoded (default limit :data:`DEFAULT_MAX_PIXELS`).

Valid but unusual images are converted, never rejected: 16-bit greyscale is scaled to
8 bits (not clipped), CMYK becomes RGB, palette and alpha images are composited over
white, EXIF orientation is applied. :meth:`ImageRef.to_pil` always gives 8-bit RGB.

:class:`ImageFiles` keeps a collection's images as content-addressed files
(``<root>/<sha[:2]>/<sha><ext>``), written atomically, so storing the same image twice is
a no-op and a crash never leaves a half-written file under its final name.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from heterag.core.errors import InvalidInputError

log = logging.getLogger(__name__)

#: Largest image accepted, in pixels (width x height): 8000 x 8000. Checked from the header.
DEFAULT_MAX_PIXELS = 64_000_000
#: Largest image file accepted, in bytes.
DEFAULT_MAX_IMAGE_BYTES = 50 * 2**20

_EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp",
               "PPM": ".ppm", "MPO": ".jpg", "ICO": ".ico"}
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".gif": "image/gif", ".bmp": "image/bmp", ".tif": "image/tiff",
         ".webp": "image/webp", ".ppm": "image/x-portable-pixmap", ".ico": "image/x-icon"}

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a grey half-image


@dataclass(frozen=True, eq=False)
class ImageRef:
    """A validated image: its original encoded bytes, their SHA-256 and basic facts.

    Build with :meth:`from_path`, :meth:`from_bytes`, :meth:`from_pil`, :meth:`from_array`
    or :func:`load_image`. Two refs are equal when their bytes are.
    """

    data: bytes = field(repr=False)
    sha256: str
    width: int
    height: int
    format: str
    mode: str
    source: str = "image"

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def from_path(
        cls, path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    ) -> ImageRef:
        p = Path(path)
        label = str(p)
        if not p.exists():
            raise InvalidInputError(f"{label}: image file does not exist")
        if not p.is_file():
            raise InvalidInputError(f"{label}: not a regular file")
        size = p.stat().st_size
        if size == 0:
            raise InvalidInputError(f"{label}: image file is empty (0 bytes)")
        if size > max_bytes:
            raise InvalidInputError(f"{label}: image file is {size / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit")
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise InvalidInputError(f"{label}: cannot read image file ({exc.strerror or exc})") from None
        return cls.from_bytes(data, source=label, max_pixels=max_pixels, max_bytes=max_bytes)

    @classmethod
    def from_bytes(
        cls, data: bytes, *, source: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    ) -> ImageRef:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidInputError(f"{source}: image data must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if not data:
            raise InvalidInputError(f"{source}: image data is empty (0 bytes)")
        if len(data) > max_bytes:
            raise InvalidInputError(f"{source}: image is {len(data) / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB limit")
        width, height, fmt, mode = _validate(data, source, max_pixels)
        return cls(data=data, sha256=hashlib.sha256(data).hexdigest(), width=width, height=height,
                   format=fmt, mode=mode, source=source)

    @classmethod
    def from_pil(cls, img: Image.Image, *, source: str = "image") -> ImageRef:
        """Encode a PIL image losslessly (PNG); CMYK and other modes PNG cannot hold become RGB first."""
        if not isinstance(img, Image.Image):
            raise InvalidInputError(f"{source}: expected a PIL image, got {type(img).__name__}")
        if img.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I"):
            img = to_rgb(img)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return cls.from_bytes(buf.getvalue(), source=source)

    @classmethod
    def from_array(cls, arr: Any, *, source: str = "image") -> ImageRef:
        """An image from an array: ``HxW`` (grey) or ``HxWx{1,3,4}``; uint8, uint16, bool, or float in [0, 1]."""
        a = np.asarray(arr)
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or 0 in a.shape:
            raise InvalidInputError(f"{source}: image array must be HxW or HxWx{{1,3,4}}, got shape {a.shape}")
        if a.dtype == bool:
            a = a.astype(np.uint8) * 255
        elif np.issubdtype(a.dtype, np.floating):
            if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
                raise InvalidInputError(f"{source}: float image arrays must hold finite values in [0, 1]")
            a = np.round(a * 255).astype(np.uint8)
        elif a.dtype == np.uint16:
            if a.ndim == 3:
                a = np.round(a / 257.0).astype(np.uint8)
            else:
                return cls.from_pil(Image.fromarray(a, mode="I;16"), source=source)
        elif a.dtype != np.uint8:
            raise InvalidInputError(f"{source}: image arrays must be uint8, uint16, bool or float, got {a.dtype}")
        return cls.from_pil(Image.fromarray(np.ascontiguousarray(a)), source=source)

    # ---- use ---------------------------------------------------------------------------
    @property
    def extension(self) -> str:
        return _EXTENSIONS.get(self.format, ".img")

    @property
    def mime_type(self) -> str:
        return _MIME.get(self.extension, "application/octet-stream")

    def open(self) -> Image.Image:
        """The image as stored (original mode, first frame)."""
        img = Image.open(io.BytesIO(self.data))
        img.load()
        return img

    def to_pil(self) -> Image.Image:
        """8-bit RGB with EXIF orientation applied (see :func:`to_rgb`)."""
        return to_rgb(self.open())

    def data_url(self, max_side: int | None = None) -> str:
        """``data:<mime>;base64,...`` of the image, downscaled (aspect kept) if a side exceeds ``max_side``."""
        data, mime = self.data, self.mime_type
        if max_side is not None and max(self.width, self.height) > max_side:
            img = self.to_pil()
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            if self.format == "JPEG":
                img.save(buf, format="JPEG", quality=90)
                mime = "image/jpeg"
            else:
                img.save(buf, format="PNG")
                mime = "image/png"
            data = buf.getvalue()
        elif mime not in ("image/png", "image/jpeg", "image/gif", "image/webp"):  # what vision APIs accept
            buf = io.BytesIO()
            self.to_pil().save(buf, format="PNG")
            data, mime = buf.getvalue(), "image/png"
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageRef) and other.sha256 == self.sha256 and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.sha256)


def _validate(data: bytes, source: str, max_pixels: int) -> tuple[int, int, str, str]:
    """Open from the header, refuse bombs before decoding, then decode fully once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise InvalidInputError(f"{source}: refused as a decompression bomb ({exc})") from None
        except UnidentifiedImageError:
            raise InvalidInputError(
                f"{source}: not a recognised image file (expected PNG, JPEG, GIF, BMP, TIFF or WebP data)"
            ) from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise InvalidInputError(f"{source}: unreadable image header ({exc})") from None
        width, height = img.size
        if width <= 0 or height <= 0:
            raise InvalidInputError(f"{source}: image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise InvalidInputError(
                f"{source}: image is {width}x{height} = {width * height:,} pixels, over the {max_pixels:,}-pixel limit "
                "(refused before decoding: a decompression bomb or an image to downscale first)"
            )
        fmt, mode = img.format or "PNG", img.mode
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InvalidInputError(f"{source}: corrupt or truncated image data ({exc})") from None
        except Image.DecompressionBombError as exc:
            raise InvalidInputError(f"{source}: refused as a decompression bomb ({exc})") from None
    return width, height, fmt, mode


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB the way a viewer shows it.

    16-bit and 32-bit integer greyscale are scaled from their full range (65535 -> 255),
    float images from [0, 1]; CMYK, YCbCr, LAB, HSV go through PIL's conversion; palette
    images with transparency and all alpha modes are composited over white.
    """
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - malformed EXIF must not make a valid image unusable
        pass
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if mode == "F":
            scale = 1.0 / 255.0 if a.size and np.nanmax(a) <= 1.0 else 1.0
        elif mode == "I" and a.size and a.max() <= 255 and a.min() >= 0:
            scale = 1.0
        else:
            scale = 257.0
        a = np.clip(np.nan_to_num(a / scale), 0, 255).round().astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "PA", "La", "RGBa", "RGBX"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(obj: Any, *, source: str | None = None) -> ImageRef:
    """Coerce an :class:`ImageRef`, a path, encoded bytes, a PIL image or an array into an :class:`ImageRef`."""
    if isinstance(obj, ImageRef):
        return obj
    if isinstance(obj, str | os.PathLike):
        return ImageRef.from_path(obj)
    if isinstance(obj, bytes | bytearray | memoryview):
        return ImageRef.from_bytes(bytes(obj), source=source or "image")
    if isinstance(obj, Image.Image):
        return ImageRef.from_pil(obj, source=source or "image")
    if isinstance(obj, np.ndarray):
        return ImageRef.from_array(obj, source=source or "image")
    raise InvalidInputError(
        f"{source or 'image'}: expected an image path, bytes, PIL image, array or ImageRef, got {type(obj).__name__}"
    )


def pil_to_tensor(img: Image.Image):
    """``[3, H, W]`` float32 tensor in [0, 1] of the image as 8-bit RGB."""
    import torch

    a = np.asarray(to_rgb(img), dtype=np.uint8)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0)


def tensor_to_pil(t) -> Image.Image:
    """8-bit RGB image of a ``[3, H, W]`` tensor in [0, 1] (values are clamped and rounded)."""
    import torch

    if not isinstance(t, torch.Tensor) or t.ndim != 3 or t.shape[0] != 3:
        raise InvalidInputError(f"expected a [3, H, W] tensor, got {getattr(t, 'shape', type(t).__name__)}")
    a = (t.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(a, mode="RGB")


class ImageFiles:
    """Content-addressed image files under ``root``: ``<sha[:2]>/<sha><ext>``.

    Writes go to a temporary file in the target folder and are moved into place with
    ``os.replace``, so a file under its final name is always complete; storing an image
    that is already there does nothing.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def path_for(self, ref: ImageRef) -> Path:
        return self.root / ref.sha256[:2] / f"{ref.sha256}{ref.extension}"

    def put(self, ref: ImageRef) -> Path:
        dest = self.path_for(ref)
        if dest.exists() and dest.stat().st_size == len(ref.data):
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=ref.extension)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(ref.data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    def remove(self, sha256: str) -> int:
        """Delete the files of image ``sha256``; returns how many were removed."""
        folder = self.root / sha256[:2]
        removed = 0
        if folder.is_dir():
            for p in folder.glob(f"{sha256}.*"):
                p.unlink(missing_ok=True)
                removed += 1
        return removed

    def shas(self) -> set[str]:
        if not self.root.is_dir():
            return set()
        return {p.name.split(".", 1)[0] for p in self.root.glob("??/*") if not p.name.startswith(".")}
