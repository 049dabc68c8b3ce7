"""Fast lossless PNG writing and reading, standard files, Pillow as the fallback.

The shard stage spends most of its time in PNG codecs. Encoding uses fpng (a
single-pass PNG writer, 29x Pillow's level-1 zlib in ``scripts/bench_codecs.py``, files
of the same size); decoding plain 8-bit RGB PNGs uses libspng through pyspng (1.9x
Pillow). Both write and read ordinary PNG files: Pillow, webdataset's ``.decode("pil")``
and any viewer read them to exactly the same pixels, which the tests check.

Pillow stays behind the same functions: it encodes when fpng is not installed or
refuses an image, and it decodes every file that is not a plain 8-bit RGB PNG
(palette, grayscale, 16-bit, alpha or a transparency chunk, an ``eXIf`` chunk whose
orientation must be applied), so the robust loading rules of :mod:`cotir_pipeline.images`
keep holding. :func:`use_codecs` forces the Pillow path (the benchmark's baseline), and
:func:`png_encoder` names the encoder in use for the stage's report.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import struct
from collections.abc import Iterator
from importlib import metadata
from types import ModuleType
from typing import Literal

import numpy as np
from PIL import Image

#: zlib level of the Pillow fallback: fast, and the files stay lossless.
PILLOW_COMPRESS_LEVEL = 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
Codecs = Literal["fast", "pillow"]

_state: dict[str, Codecs] = {"codecs": "fast"}


@contextlib.contextmanager
def use_codecs(codecs: Codecs) -> Iterator[None]:
    """Use the fast codecs (default) or Pillow only, within the block.

    Worker processes forked inside the block inherit the choice.
    """
    if codecs not in ("fast", "pillow"):
        raise ValueError(f"codecs must be 'fast' or 'pillow', got {codecs!r}")
    before = _state["codecs"]
    _state["codecs"] = codecs
    try:
        yield
    finally:
        _state["codecs"] = before


def fast_module(name: str) -> ModuleType | None:
    """The optional codec library ``name`` (fpng, pyspng, simplejpeg), if it may be used.

    None inside ``use_codecs("pillow")`` or when the library is not installed: the
    caller then takes its Pillow path.
    """
    if _state["codecs"] != "fast":
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def png_encoder() -> str:
    """The encoder :func:`encode_png` uses now, with its version (for provenance)."""
    if fast_module("fpng") is not None:
        return f"fpng {_version('fpng')}"
    return f"pillow {_version('pillow')} zlib level {PILLOW_COMPRESS_LEVEL}"


def _check_rgb8(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 array (H, W, 3), got {image.dtype} {image.shape}")


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG of an RGB uint8 array; the same pixels always give the same bytes."""
    _check_rgb8(image)
    fpng = fast_module("fpng")
    if fpng is not None:
        try:
            return bytes(fpng.from_ndarray(np.ascontiguousarray(image)))  # type: ignore[attr-defined]
        except (RuntimeError, ValueError, TypeError):
            pass  # an image fpng refuses is written by Pillow
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(
        buffer, format="PNG", compress_level=PILLOW_COMPRESS_LEVEL
    )
    return buffer.getvalue()


def png_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from a PNG's IHDR; None for other data."""
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, colour


def _chunk_types(data: bytes) -> Iterator[bytes]:
    offset = len(PNG_SIGNATURE)
    while offset + 8 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        yield kind
        if kind == b"IEND":
            return
        offset += 12 + length


#: Chunks after which Pillow's reading differs from plain RGB (transparency, EXIF).
_SLOW_PATH_CHUNKS = frozenset({b"tRNS", b"eXIf"})
_RGB_COLOUR_TYPE = 2


def decode_plain_rgb_png(data: bytes) -> np.ndarray | None:
    """Pixels of a plain 8-bit RGB PNG through libspng; None when Pillow must read it.

    None for anything else (another format or colour type, 16 bits, a transparency
    or EXIF chunk, a file libspng rejects), so the caller's Pillow path decides.
    Size limits are the caller's: check :func:`png_header` before calling.
    """
    pyspng = fast_module("pyspng")
    header = png_header(data)
    if pyspng is None or header is None:
        return None
    _, _, depth, colour = header
    if depth != 8 or colour != _RGB_COLOUR_TYPE:
        return None
    if any(kind in _SLOW_PATH_CHUNKS for kind in _chunk_types(data)):
        return None
    try:
        pixels = pyspng.load(data, format="RGB")  # type: ignore[attr-defined]
    except Exception:  # libspng raises plain Exceptions; then Pillow decides
        return None
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        return None
    return np.ascontiguousarray(pixels)


def decode_png(data: bytes) -> np.ndarray:
    """RGB uint8 array from PNG (or any Pillow-readable) bytes."""
    fast = decode_plain_rgb_png(data)
    if fast is not None:
        return fast
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
