"""Odd files from real datasets: each is converted with a note or refused with a reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cotir_pipeline.images import BadImageError, decode_rgb8, load_rgb8


def _encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_plain_rgb_is_returned_unchanged() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(12, 20, 3), dtype=np.uint8)
    loaded = decode_rgb8(_encode(Image.fromarray(pixels)))
    assert np.array_equal(loaded.pixels, pixels)
    assert loaded.notes == []
    assert len(loaded.sha256) == 64


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    loaded = decode_rgb8(_encode(Image.fromarray(ramp)))
    assert loaded.pixels.shape == (8, 8, 3)
    assert loaded.pixels.max() == 255
    assert loaded.pixels.min() == 0
    assert len(np.unique(loaded.pixels[..., 0])) > 32, "16-bit levels collapsed"
    assert any("scaled to 8 bits" in note for note in loaded.notes)


def test_grayscale_and_rgba_are_converted_with_notes() -> None:
    grey = decode_rgb8(_encode(Image.new("L", (5, 4), 100)))
    assert grey.pixels.shape == (4, 5, 3)
    assert (grey.pixels == 100).all()
    assert "grayscale" in grey.notes[0]
    rgba = decode_rgb8(_encode(Image.new("RGBA", (5, 4), (10, 20, 30, 0))))
    assert (rgba.pixels[0, 0] == [10, 20, 30]).all()
    assert "alpha channel dropped" in rgba.notes[0]


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((10, 30, 3), dtype=np.uint8)  # wide image
    pixels[:, :5] = 255  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _encode(Image.fromarray(pixels), "JPEG", exif=exif.tobytes(), quality=95)
    loaded = decode_rgb8(data)
    assert loaded.pixels.shape == (30, 10, 3), "the stored wide image displays tall"
    assert loaded.pixels[:5].mean() > 200, "the white band must end up on top"
    assert loaded.notes == ["EXIF orientation 6 applied"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is not an image at all", "unreadable image format"),
        (_encode(Image.new("RGB", (64, 64), 7))[:60], "corrupt or truncated"),
    ],
)
def test_unusable_files_are_refused_with_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BadImageError, match=reason):
        decode_rgb8(data, name="x.png")


def test_decompression_bombs_are_refused_before_decoding() -> None:
    bomb = _encode(Image.new("L", (5000, 5000)))  # tiny file, 25 MP when decoded
    assert len(bomb) < 100_000
    with pytest.raises(BadImageError, match="decompression bomb"):
        decode_rgb8(bomb, name="bomb.png", max_pixels=10_000_000)


def test_unreadable_path_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(BadImageError, match=r"cannot read missing\.png"):
        load_rgb8(tmp_path / "missing.png")
