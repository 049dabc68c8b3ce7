"""Image and JSON-lines helpers shared by the evaluation modules (atomic writes, RGB reads)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cotir_pipeline.images import load_rgb8
from cotir_pipeline.png import encode_png

#: File suffixes treated as images when a folder is scanned.
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
)


def find_image(folder: Path, file_name: str) -> Path | None:
    """``folder/file_name``, else a file with the same stem and another image suffix, else None."""
    exact = Path(folder) / file_name
    if exact.is_file():
        return exact
    stem = Path(file_name).stem
    for suffix in sorted(IMAGE_SUFFIXES):
        candidate = Path(folder) / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def read_rgb(path: Path) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3); BadImageError (a ValueError) names the reason."""
    return load_rgb8(Path(path)).pixels


def check_rgb8(image: Any, *, what: str) -> np.ndarray:
    """Return ``image`` if it is an RGB uint8 array (H, W, 3), else raise TypeError/ValueError."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"{what} must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{what} must be an HxWx3 RGB array, got shape {image.shape}")
    return image


def float_to_rgb8(image: np.ndarray) -> np.ndarray:
    """Round a float image in [0, 1] to uint8 (values outside are clipped)."""
    return np.clip(np.rint(np.asarray(image, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def _atomic_replace(path: Path, write: Any) -> None:
    """Write to a hidden per-process temp name beside ``path``, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an RGB uint8 array as PNG atomically (temp file + rename: never a partial file).

    The bytes come from the shard stage's encoder (:func:`cotir_pipeline.png.encode_png`).
    """
    pixels = check_rgb8(image, what=f"image for {Path(path).name}")
    data = encode_png(pixels)
    _atomic_replace(Path(path), lambda temp: temp.write_bytes(data))


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    _atomic_replace(Path(path), lambda temp: temp.write_text(text, encoding="utf-8"))


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write one JSON object per line, atomically."""
    lines = [json.dumps(dict(row), ensure_ascii=False, sort_keys=False) for row in rows]
    write_text(path, "".join(line + "\n" for line in lines))


def append_jsonl(path: Path, row: Mapping[str, Any]) -> None:
    """Append one JSON line (flushed and fsynced, so a crash loses at most this line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def read_jsonl(path: Path, *, allow_torn_tail: bool = False) -> list[dict[str, Any]]:
    """All JSON objects of a JSON-lines file; a bad line raises ValueError with its number.

    With ``allow_torn_tail`` an unparseable last line (a crash while appending to
    a log) is ignored instead.
    """
    rows: list[dict[str, Any]] = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            if allow_torn_tail and number == len(lines):
                break
            raise ValueError(f"{path}: line {number} is not valid JSON ({error.msg})") from None
        if not isinstance(value, dict):
            raise ValueError(f"{path}: line {number} is not a JSON object")
        rows.append(value)
    return rows
