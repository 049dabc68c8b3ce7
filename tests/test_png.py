"""Shard PNGs: fast codecs that write and read standard, lossless, deterministic files."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset
from PIL import Image

from cotir_pipeline.images import BadImageError, decode_rgb8
from cotir_pipeline.png import (
    decode_plain_rgb_png,
    decode_png,
    encode_png,
    png_encoder,
    use_codecs,
)
from cotir_test_support import demo_photo_pixels


def _photo(size: int = 96) -> np.ndarray:
    pixels = demo_photo_pixels("astronaut")
    return np.ascontiguousarray(pixels[:size, : size + 16])  # not square


def _pillow_png(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def test_the_fast_encoder_writes_standard_lossless_deterministic_png(tmp_path: Path) -> None:
    pixels = _photo()
    assert png_encoder().startswith("fpng ")
    data = encode_png(pixels)
    assert encode_png(pixels) == data  # the same pixels, the same bytes
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        assert np.array_equal(np.asarray(image.convert("RGB")), pixels)
    # The release's loader path: webdataset with .decode("pil").
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as archive:
        info = tarfile.TarInfo("k0.hq.png")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    (sample,) = list(webdataset.WebDataset(str(shard), shardshuffle=False).decode("pil"))
    assert np.array_equal(np.asarray(sample["hq.png"].convert("RGB")), pixels)


def _fixed_pattern() -> np.ndarray:
    """A 64x80 image made by integer arithmetic and PCG64 (both the same on every machine)."""
    rows, columns = np.mgrid[0:64, 0:80]
    pattern = np.stack([(columns * 3) % 256, (rows * 4) % 256, (rows + columns) % 256], -1)
    pattern = pattern.astype(np.uint8)
    noise = np.random.default_rng(2026).integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
    pattern[::3] = noise[::3]
    return pattern


# sha256 of fpng 0.1.0's bytes for _fixed_pattern(), taken on the project's x86_64 VM
# (2026-12-06). Shard digests in manifests rest on the encoder giving these bytes on
# every machine; if a new fpng build or CPU gives others, this test says so first.
_FIXED_PATTERN_FPNG_SHA256 = "d1bd681690f7dc3e254375748c0d8bd4fa0c68a1e5a9f21b73e360703d738520"


def test_the_fast_encoder_gives_the_recorded_bytes_on_this_machine() -> None:
    assert png_encoder() == "fpng 0.1.0", "a new encoder version: re-record the digest"
    data = encode_png(_fixed_pattern())
    assert hashlib.sha256(data).hexdigest() == _FIXED_PATTERN_FPNG_SHA256
    assert np.array_equal(decode_png(data), _fixed_pattern())


def test_pillow_path_gives_the_same_pixels_and_names_itself() -> None:
    pixels = _photo()
    fast = encode_png(pixels)
    with use_codecs("pillow"):
        assert png_encoder().startswith("pillow ")
        slow = encode_png(pixels)
        assert decode_plain_rgb_png(fast) is None  # Pillow decodes too
        assert np.array_equal(decode_png(fast), pixels)
    assert slow != fast
    assert np.array_equal(decode_png(slow), decode_png(fast))
    with pytest.raises(ValueError, match="fast' or 'pillow"), use_codecs("turbo"):  # type: ignore[arg-type]
        pass


def test_encode_refuses_anything_but_rgb8() -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        encode_png(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="RGB uint8"):
        encode_png(np.zeros((4, 4, 3), dtype=np.uint16))


def test_only_plain_8bit_rgb_png_takes_the_fast_decoder() -> None:
    rgb = Image.fromarray(_photo(32))
    plain = _pillow_png(rgb)
    assert np.array_equal(decode_plain_rgb_png(plain), np.asarray(rgb))
    others = {
        "grey": _pillow_png(rgb.convert("L")),
        "rgba": _pillow_png(rgb.convert("RGBA")),
        "palette": _pillow_png(rgb.convert("P")),
        "16-bit": _pillow_png(Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16))),
        "transparency chunk": _pillow_png(rgb, transparency=(0, 0, 0)),
        "jpeg": (lambda b: (rgb.save(b, format="JPEG"), b.getvalue())[1])(io.BytesIO()),
    }
    exif = Image.Exif()
    exif[0x0112] = 6
    others["eXIf chunk"] = _pillow_png(rgb, exif=exif.tobytes())
    for name, data in others.items():
        assert decode_plain_rgb_png(data) is None, name
    # The loader still applies the rules to those: the EXIF rotation, for one.
    rotated = decode_rgb8(others["eXIf chunk"])
    assert rotated.pixels.shape == (np.asarray(rgb).shape[1], np.asarray(rgb).shape[0], 3)
    assert any("EXIF orientation 6" in note for note in rotated.notes)


def test_the_loader_refuses_a_png_bomb_from_its_header_and_truncation_still_fails() -> None:
    data = encode_png(_photo(64))
    with pytest.raises(BadImageError, match="over the 0 MP limit"):
        decode_rgb8(data, max_pixels=100)
    with pytest.raises(BadImageError, match="corrupt or truncated"):
        decode_rgb8(data[: len(data) // 2])
    loaded = decode_rgb8(data)
    assert np.array_equal(loaded.pixels, _photo(64))
    assert loaded.notes == []


def _jpeg(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


@pytest.mark.parametrize("subsampling", [0, 1, 2])
@pytest.mark.parametrize("quality", [30, 95])
def test_colour_jpegs_decode_fast_to_exactly_pillows_pixels(quality: int, subsampling: int) -> None:
    from cotir_pipeline.images import decode_plain_jpeg

    data = _jpeg(Image.fromarray(_photo()), quality=quality, subsampling=subsampling)
    fast = decode_plain_jpeg(data)
    assert fast is not None
    with Image.open(io.BytesIO(data)) as image:
        assert np.array_equal(fast, np.asarray(image.convert("RGB")))
    assert np.array_equal(decode_rgb8(data).pixels, fast)


def test_grey_rotated_and_truncated_jpegs_keep_the_pillow_rules() -> None:
    from cotir_pipeline.images import decode_plain_jpeg

    rgb = Image.fromarray(_photo(48))
    grey = _jpeg(rgb.convert("L"))
    assert decode_plain_jpeg(grey) is None
    assert any("grayscale" in note for note in decode_rgb8(grey).notes)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = _jpeg(rgb, exif=exif.tobytes())
    assert decode_plain_jpeg(rotated) is None
    assert decode_rgb8(rotated).pixels.shape[:2] == (np.asarray(rgb).shape[1], 48)
    whole = _jpeg(rgb)
    assert decode_plain_jpeg(whole[: len(whole) // 2]) is None
    with pytest.raises(BadImageError, match="corrupt or truncated"):
        decode_rgb8(whole[: len(whole) // 2])
    with pytest.raises(BadImageError, match="over the 0 MP limit"):
        decode_rgb8(whole, max_pixels=10)
    with use_codecs("pillow"):
        assert decode_plain_jpeg(whole) is None
