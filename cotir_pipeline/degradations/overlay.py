"""Overlay degradations: semi-transparent watermarks.

Same calling convention as :mod:`cotir_pipeline.degradations.camera`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cotir_pipeline.degradations._core import (
    check_image,
    finish,
)
from cotir_pipeline.degradations.parameters import (
    Bernoulli,
    Either,
    Flag,
    OperatorParams,
    Param,
    Within,
)
from cotir_pipeline.degradations.samplers import Choice, Fixed, Uniform

Result = tuple[np.ndarray, dict[str, Any]]

#: Texts a default watermark is drawn from (ASCII, so every font renders them).
WATERMARK_TEXTS = (
    "SAMPLE",
    "PREVIEW",
    "(c) Stock Photo",
    "CONFIDENTIAL",
    "DRAFT",
    "(c) 2024 Studio",
    "www.example.com",
    "PROOF",
    "Photo by CoTIR",
    "DO NOT COPY",
)


def _text_mask(text: str, size_px: int, angle: float) -> np.ndarray:
    """Alpha mask (float in [0, 1]) of ``text`` in Pillow's default font, rotated by ``angle``."""
    font = ImageFont.load_default(size=size_px)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.textbbox((0, 0), text, font=font)
    margin = max(2, size_px // 8)
    canvas = Image.new("L", (right - left + 2 * margin, bottom - top + 2 * margin), 0)
    ImageDraw.Draw(canvas).text((margin - left, margin - top), text, fill=255, font=font)
    rotated = canvas.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=0)
    return np.asarray(rotated, dtype=np.float64) / 255.0


def _paste_max(target: np.ndarray, mask: np.ndarray, centre_y: float, centre_x: float) -> None:
    """Combine ``mask`` into ``target`` (element-wise max) centred at the given pixel."""
    height, width = target.shape
    mh, mw = mask.shape
    top, left = round(centre_y - mh / 2), round(centre_x - mw / 2)
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + mh, height), min(left + mw, width)
    if t0 >= t1 or l0 >= l1:
        return
    region = mask[t0 - top : t1 - top, l0 - left : l1 - left]
    np.maximum(target[t0:t1, l0:l1], region, out=target[t0:t1, l0:l1])


def _check_text(operator: str, name: str, value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{operator}: {name} must be a non-empty string, got {value!r}")
    return value


WATERMARK = OperatorParams(
    "watermark",
    text=Param(Choice(WATERMARK_TEXTS), _check_text),
    size=Param(Uniform(0.06, 0.14), Within(1e-3, 1.0)),
    opacity=Param(Uniform(0.3, 0.7), Within(0.0, 1.0)),
    angle=Param(Uniform(-45.0, 45.0), Within(-360.0, 360.0)),
    x=Param(Uniform(0.25, 0.75), Within(-1.0, 2.0)),
    y=Param(Uniform(0.2, 0.8), Within(-1.0, 2.0)),
    gray=Param(Either(0.7, Fixed(1.0), Uniform(0.0, 0.3)), Within(0.0, 1.0)),
    tiled=Param(Bernoulli(0.3), Flag()),
)


def watermark(
    image: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    text: str | None = None,
    size: float | None = None,
    opacity: float | None = None,
    angle: float | None = None,
    x: float | None = None,
    y: float | None = None,
    gray: float | None = None,
    tiled: bool | None = None,
) -> Result:
    """A semi-transparent text watermark in Pillow's default font.

    The text (height ``size`` times min(H, W), at least 8 px) is rotated by
    ``angle`` degrees and centred at (``x`` W, ``y`` H); ``tiled`` repeats it on
    a grid through that point, as stock-photo marks do. It is blended as
    out = x (1 - a) + gray * a with a = opacity * text coverage. Defaults: text
    from :data:`WATERMARK_TEXTS`, size U[0.06, 0.14), opacity U[0.3, 0.7), angle
    U[-45, 45), x U[0.25, 0.75), y U[0.2, 0.8), gray 1.0 (white, 70%) or U[0, 0.3)
    (dark), tiled with probability 0.3.
    """
    img = check_image(image)
    text = WATERMARK.resolve(rng, "text", text)
    size = WATERMARK.resolve(rng, "size", size)
    opacity = WATERMARK.resolve(rng, "opacity", opacity)
    angle = WATERMARK.resolve(rng, "angle", angle)
    x = WATERMARK.resolve(rng, "x", x)
    y = WATERMARK.resolve(rng, "y", y)
    gray = WATERMARK.resolve(rng, "gray", gray)
    tiled = WATERMARK.resolve(rng, "tiled", tiled)

    coverage = _watermark_coverage(img.shape[:2], text, size, angle, x, y, bool(tiled))
    alpha = (opacity * coverage)[..., None]
    out = img * (1.0 - alpha) + gray * alpha
    params = {
        "text": text,
        "size": size,
        "opacity": opacity,
        "angle": angle,
        "x": x,
        "y": y,
        "gray": gray,
        "tiled": bool(tiled),
    }
    return finish(out), params


def _watermark_coverage(
    shape: tuple[int, ...], text: str, size: float, angle: float, x: float, y: float, tiled: bool
) -> np.ndarray:
    """Per pixel, how much of it the text covers (0..1): one mark centred at (x W, y H),
    or a brick-pattern grid of marks through that point."""
    height, width = shape
    size_px = max(8, round(size * min(height, width)))
    mask = _text_mask(text, size_px, angle)
    coverage = np.zeros((height, width))
    centre_y, centre_x = y * (height - 1), x * (width - 1)
    if not tiled:
        _paste_max(coverage, mask, centre_y, centre_x)
        return coverage
    step_y, step_x = mask.shape[0] * 1.6 + size_px, mask.shape[1] * 1.2 + size_px
    rows = int(np.ceil(height / step_y)) + 1
    cols = int(np.ceil(width / step_x)) + 1
    for i in range(-rows, rows + 1):
        for j in range(-cols, cols + 1):
            # offset every other row by half a step, like a brick pattern
            shift = step_x / 2 if i % 2 else 0.0
            _paste_max(coverage, mask, centre_y + i * step_y, centre_x + j * step_x + shift)
    return coverage
