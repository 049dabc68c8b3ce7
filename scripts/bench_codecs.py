"""Compare PNG encoders and PNG / JPEG decoders on one photo: speed, size, exactness.

The shard stage's codec choice (docs/DEPENDENCIES.md) rests on these numbers. In one
run, on a bench photo resized to ``--size`` px:

- PNG encoders: Pillow (zlib level 1, the previous path, the baseline), OpenCV
  ``imencode`` (level 1) and fpng: MP/s, file size, whether Pillow decodes the file to
  exactly the input, and whether two encodes give the same bytes;
- PNG decoders: Pillow (baseline) and libspng (pyspng), and whether they agree;
- JPEG decoders: Pillow (baseline) and libjpeg-turbo (simplejpeg), and in how many of
  the photo x quality x chroma-subsampling cases the pixels are identical.

It prints each rate and its ratio to the Pillow baseline.

    .venv/bin/python scripts/bench_codecs.py --size 512
"""

from __future__ import annotations

import argparse
import io
import platform
import time
from collections.abc import Callable

import cv2
import fpng
import numpy as np
import pyspng
import simplejpeg
from PIL import Image

from cotir_pipeline.demo_photos import DEMO_PHOTOS, load_photo


def rate(function: Callable[[], object], megapixels: float, repeats: int) -> float:
    """Megapixels per second of ``function`` (best of ``repeats`` after one warm-up)."""
    function()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return megapixels / best


def pillow_png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def opencv_png(pixels: np.ndarray) -> bytes:
    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("OpenCV could not encode the image")
    return encoded.tobytes()


def fpng_png(pixels: np.ndarray) -> bytes:
    return bytes(fpng.from_ndarray(np.ascontiguousarray(pixels)))


def pillow_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def jpeg(pixels: np.ndarray, quality: int, subsampling: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality, subsampling=subsampling)
    return buffer.getvalue()


def main() -> None:
    """Run the comparisons and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="side of the test photo")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    photo = np.asarray(Image.fromarray(load_photo(DEMO_PHOTOS[0])).resize((args.size, args.size)))
    megapixels = args.size * args.size / 1e6
    print(f"{platform.machine()}, Python {platform.python_version()}, {args.size} px photo")

    print("\n| PNG encoder | MP/s | x Pillow | bytes | exact | same bytes twice |")
    print("|---|---:|---:|---:|---|---|")
    baseline = 0.0
    for name, encode in (
        ("Pillow level 1", pillow_png),
        ("OpenCV level 1", opencv_png),
        ("fpng", fpng_png),
    ):
        speed = rate(lambda encode=encode: encode(photo), megapixels, args.repeats)
        baseline = baseline or speed
        data = encode(photo)
        exact = np.array_equal(pillow_decode(data), photo)
        print(
            f"| {name} | {speed:.1f} | {speed / baseline:.2f} | {len(data)} | {exact} "
            f"| {encode(photo) == data} |"
        )

    png = fpng_png(photo)
    print("\n| PNG decoder | MP/s | x Pillow | same pixels as Pillow |")
    print("|---|---:|---:|---|")
    slow = rate(lambda: pillow_decode(png), megapixels, args.repeats)
    fast = rate(lambda: pyspng.load(png, format="RGB"), megapixels, args.repeats)
    same = np.array_equal(pyspng.load(png, format="RGB"), pillow_decode(png))
    print(f"| Pillow | {slow:.1f} | 1.00 | |")
    print(f"| libspng (pyspng) | {fast:.1f} | {fast / slow:.2f} | {same} |")

    data = jpeg(photo, 90, 2)
    print("\n| JPEG decoder | MP/s | x Pillow |")
    print("|---|---:|---:|")
    slow = rate(lambda: pillow_decode(data), megapixels, args.repeats)
    fast = rate(lambda: simplejpeg.decode_jpeg(data, colorspace="RGB"), megapixels, args.repeats)
    print(f"| Pillow | {slow:.1f} | 1.00 |")
    print(f"| libjpeg-turbo (simplejpeg) | {fast:.1f} | {fast / slow:.2f} |")
    identical = total = 0
    for photo_spec in DEMO_PHOTOS[:6]:
        pixels = load_photo(photo_spec)
        for quality in (30, 75, 95):
            for subsampling in (0, 1, 2):
                encoded = jpeg(pixels, quality, subsampling)
                ours = simplejpeg.decode_jpeg(encoded, colorspace="RGB", strict=True)
                identical += int(np.array_equal(ours, pillow_decode(encoded)))
                total += 1
    print(
        f"\nJPEG pixels identical to Pillow's: {identical} of {total} "
        "(6 photos x quality 30/75/95 x subsampling 4:4:4/4:2:2/4:2:0)"
    )


if __name__ == "__main__":
    main()
