"""Read any source image into RGB uint8, handling the odd files real datasets contain.

Restoration datasets ship 16-bit PNGs, grayscale and palette images, RGBA files,
JPEGs with an EXIF orientation, truncated downloads and the occasional huge
image. :func:`load_rgb8` turns each into the same (H, W, 3) uint8 array, records
what it had to convert (``notes``), and raises :class:`BadImageError` with the
reason for files it cannot use, so one bad file never stops a source.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cotir_pipeline.png import decode_plain_rgb_png, fast_module, png_header

JPEG_SIGNATURE = b"\xff\xd8"
_EXIF_ORIENTATION = 0x0112

#: Larger images are refused: a decompression bomb (a small file that decodes to
#: gigabytes) must not take the worker down. 200 MP is above any restoration set.
DEFAULT_MAX_PIXELS = 200_000_000


class BadImageError(ValueError):
    """The file is not a usable image; the message is the reason recorded for it."""


@dataclass(frozen=True)
class LoadedImage:
    """Pixels, the digest of the file's bytes, and the conversions applied."""

    pixels: np.ndarray
    sha256: str
    notes: list[str] = field(default_factory=list)


def _to_rgb8(image: Image.Image, notes: list[str]) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        data = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or data.max() > 255 else 255.0
        notes.append(f"{mode} scaled to 8 bits")
        grey = np.clip(np.rint(data * (255.0 / peak)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        data = np.asarray(image, dtype=np.float64)
        notes.append("float image clipped to [0, 1] and scaled to 8 bits")
        grey = np.clip(np.rint(np.clip(data, 0, 1) * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        notes.append(f"{mode}: alpha channel dropped")
    elif mode in ("L", "1"):
        notes.append(f"{mode}: grayscale replicated to RGB")
    elif mode not in ("RGB", "P"):
        notes.append(f"{mode} converted to RGB")
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def jpeg_header(data: bytes) -> tuple[int, int, str] | None:
    """(width, height, colour space) of a JPEG from its header, via libjpeg-turbo.

    None when the data is not a JPEG, libjpeg-turbo cannot read the header, or the
    fast codecs are off (then Pillow reads the file).
    """
    simplejpeg = fast_module("simplejpeg")
    if simplejpeg is None or not data.startswith(JPEG_SIGNATURE):
        return None
    try:
        height, width, colourspace, _ = simplejpeg.decode_jpeg_header(data)  # type: ignore[attr-defined]
    except ValueError:
        return None
    return int(width), int(height), str(colourspace)


def decode_plain_jpeg(data: bytes, header: tuple[int, int, str] | None = None) -> np.ndarray | None:
    """Pixels of a colour JPEG without an EXIF rotation, via libjpeg-turbo; else None.

    Grayscale and CMYK files, files with an EXIF orientation and anything libjpeg-turbo
    reports a problem with (``strict``: a truncated file is an error, not grey rows)
    return None, so Pillow and the loader's rules handle them. The pixels equal
    Pillow's (same library, the accurate DCT and upsampling; ``tests/test_png.py``).
    ``header`` is :func:`jpeg_header`'s result when the caller already has it.
    """
    header = header if header is not None else jpeg_header(data)
    simplejpeg = fast_module("simplejpeg")
    if header is None or simplejpeg is None or header[2] != "YCbCr":
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:  # headers only: the EXIF rotation
            if image.getexif().get(_EXIF_ORIENTATION, 1) not in (0, 1):
                return None
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)  # type: ignore[attr-defined]
    except (ValueError, OSError, SyntaxError):
        return None
    return np.ascontiguousarray(pixels)


def _check_size(name: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise BadImageError(
            f"{name} is {width}x{height} ({width * height / 1e6:.0f} MP), over the "
            f"{max_pixels / 1e6:.0f} MP limit (possible decompression bomb)"
        )


def decode_rgb8(
    data: bytes, *, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS
) -> LoadedImage:
    """Decode image bytes to RGB uint8 (EXIF orientation applied); see :func:`load_rgb8`.

    Plain 8-bit RGB PNGs are decoded by libspng
    (:func:`cotir_pipeline.png.decode_plain_rgb_png`) and colour JPEGs without an EXIF
    rotation by libjpeg-turbo (:func:`decode_plain_jpeg`); everything else, and any file
    they reject, by Pillow with the rules below.
    """
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        raise BadImageError(f"empty file {name}")
    header = png_header(data)
    if header is not None:
        _check_size(name, header[0], header[1], max_pixels)
        plain = decode_plain_rgb_png(data)  # libspng; None when Pillow must read the file
        if plain is not None:
            return LoadedImage(pixels=plain, sha256=digest, notes=[])
    jpeg = jpeg_header(data)
    if jpeg is not None:
        _check_size(name, jpeg[0], jpeg[1], max_pixels)
        plain = decode_plain_jpeg(data, jpeg)  # libjpeg-turbo; None when Pillow must read it
        if plain is not None:
            return LoadedImage(pixels=plain, sha256=digest, notes=[])
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                _check_size(name, *image.size, max_pixels)
                image.load()
                orientation = image.getexif().get(0x0112, 1)
                if orientation not in (0, 1):
                    image = ImageOps.exif_transpose(image)
                    notes.append(f"EXIF orientation {orientation} applied")
                pixels = _to_rgb8(image, notes)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadImageError(f"{name}: decompression bomb refused ({error})") from None
    except UnidentifiedImageError:
        raise BadImageError(f"unreadable image format in {name}") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise BadImageError(f"corrupt or truncated image {name}: {error}") from None
    return LoadedImage(pixels=pixels, sha256=digest, notes=notes)


def load_rgb8(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Read an image file as RGB uint8; raise :class:`BadImageError` with the reason."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BadImageError(f"cannot read {path.name}: {error.strerror or error}") from None
    return decode_rgb8(data, name=path.name, max_pixels=max_pixels)
