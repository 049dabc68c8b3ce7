"""Capture and coding degradations: noise, JPEG, motion and defocus blur, low resolution.

Each operator takes an RGB float image in [0, 1] (HxWx3), an optional
``numpy.random.Generator`` and keyword parameters. A parameter left as None is
drawn from the generator with the operator's default (moderate) range; the
return value is ``(degraded float32 image, params)`` where ``params`` holds every
parameter actually used, JSON-serialisable, so calling the operator again with
``**params`` and no generator reproduces the output byte for byte.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from cotir_pipeline.degradations._core import (
    check_image,
    convolve,
    field_rng,
    finish,
    gaussian_kernel_1d,
    luminance,
    resize_image,
)
from cotir_pipeline.degradations.parameters import (
    Among,
    AsInt,
    Bernoulli,
    Flag,
    OperatorParams,
    Param,
    SeedDraw,
    WholeWithin,
    Within,
)
from cotir_pipeline.degradations.samplers import Choice, Fixed, IntRange, Uniform

Result = tuple[np.ndarray, dict[str, Any]]

NOISE_KINDS = ("gaussian", "poisson")

NOISE = OperatorParams(
    "noise",
    kind=Param(Choice(NOISE_KINDS), Among(NOISE_KINDS)),
    sigma=Param(Uniform(10.0, 40.0), Within(0.0, 255.0)),
    scale=Param(Uniform(1.0, 3.0), Within(0.0, 100.0)),
    color=Param(Bernoulli(0.7), Flag()),
    seed=Param(SeedDraw(), AsInt()),
)


def noise(
    image: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    kind: str | None = None,
    sigma: float | None = None,
    scale: float | None = None,
    color: bool | None = None,
    seed: int | None = None,
) -> Result:
    """Additive sensor noise: Gaussian (``sigma`` on the 0..255 scale) or Poisson (``scale``).

    Gaussian: x + N(0, (sigma/255)^2). Poisson (shot noise, as in BasicSR): the
    8-bit image times ``vals`` (the number of its grey levels rounded up to a
    power of two) is Poisson-sampled, and the deviation times ``scale`` is added.
    ``color`` draws an independent field per channel; otherwise one grey field is
    added to all three. Defaults: kind 50/50, sigma U[10, 40), scale U[1, 3),
    colour noise with probability 0.7.
    """
    img = check_image(image)
    kind = str(NOISE.resolve(rng, "kind", kind))
    params: dict[str, Any] = {"kind": kind}
    if kind == "gaussian":
        if scale is not None:
            raise ValueError("noise: 'scale' applies to Poisson noise only")
        params["sigma"] = NOISE.resolve(rng, "sigma", sigma)
    else:
        if sigma is not None:
            raise ValueError("noise: 'sigma' applies to Gaussian noise only")
        params["scale"] = NOISE.resolve(rng, "scale", scale)
    params["color"] = NOISE.resolve(rng, "color", color)
    params["seed"] = NOISE.resolve(rng, "seed", seed)

    field = field_rng(params["seed"])
    height, width = img.shape[:2]
    if kind == "gaussian":
        shape = (height, width, 3) if params["color"] else (height, width, 1)
        out = img + field.standard_normal(shape) * (params["sigma"] / 255.0)
    else:
        source = img if params["color"] else luminance(img)[..., None]
        levels8 = np.clip(np.round(source * 255.0), 0, 255).astype(np.uint8)
        distinct = int(np.count_nonzero(np.bincount(levels8.ravel(), minlength=256)))
        vals = float(2 ** math.ceil(math.log2(max(distinct, 2))))
        quantized = levels8.astype(np.float64) / 255.0
        sampled = field.poisson(quantized * vals) / vals
        out = img + (sampled - quantized) * params["scale"]
    return finish(out), params


JPEG = OperatorParams("jpeg", quality=Param(IntRange(10, 40), WholeWithin(1, 100)))


def jpeg(
    image: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    quality: int | None = None,
) -> Result:
    """JPEG compression artefacts: encode to 8-bit JPEG in memory with Pillow and decode.

    4:2:0 chroma subsampling (the libjpeg and OpenCV default), baseline, no
    optimisation pass. Default quality: integer U{10..40}.
    """
    img = check_image(image)
    quality = JPEG.resolve(rng, "quality", quality)
    pixels = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(
        buffer, format="JPEG", quality=int(quality), subsampling=2, optimize=False
    )
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        out = np.asarray(decoded.convert("RGB"), dtype=np.float64) / 255.0
    return finish(out), {"quality": int(quality)}


MOTION_SEVERITIES: tuple[tuple[int, float], ...] = ((10, 3.0), (15, 5.0), (15, 8.0))


def motion_kernel_taps(radius: int, sigma: float, angle: float) -> dict[tuple[int, int], float]:
    """Integer (dy, dx) offsets and weights of the one-sided linear motion kernel.

    2*radius+1 taps along the direction ``angle`` (degrees), weights
    exp(-i^2 / (2 sigma^2)) for i = 0..2*radius, normalised: the
    ImageMagick/imagecorruptions motion blur that AgenticIR uses.
    """
    width = 2 * radius + 1
    weights = np.exp(-(np.arange(width, dtype=np.float64) ** 2) / (2 * sigma**2))
    weights /= weights.sum()
    sin_a, cos_a = math.sin(math.radians(angle)), math.cos(math.radians(angle))
    taps: dict[tuple[int, int], float] = {}
    for i in range(width):
        dy = -math.ceil(i * sin_a - 0.5)
        dx = -math.ceil(i * cos_a - 0.5)
        taps[(dy, dx)] = taps.get((dy, dx), 0.0) + float(weights[i])
    return taps


MOTION_BLUR = OperatorParams(
    "motion_blur",
    radius=Param(IntRange(6, 16), WholeWithin(1, 200)),
    sigma=Param(Uniform(2.0, 6.0), Within(1e-3, 1e3)),
    angle=Param(Uniform(-90.0, 90.0), Within(-360.0, 360.0)),
)


def motion_blur(
    image: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    radius: int | None = None,
    sigma: float | None = None,
    angle: float | None = None,
) -> Result:
    """Linear camera/object motion: a one-sided Gaussian-weighted line kernel.

    out(y, x) = sum_i w_i * img(y - dy_i, x - dx_i) with the taps of
    :func:`motion_kernel_taps` and the border replicated. Defaults: radius
    U{6..16}, sigma U[2, 6), angle U[-90, 90) degrees.
    """
    img = check_image(image)
    radius = MOTION_BLUR.resolve(rng, "radius", radius)
    sigma = MOTION_BLUR.resolve(rng, "sigma", sigma)
    angle = MOTION_BLUR.resolve(rng, "angle", angle)

    taps = motion_kernel_taps(int(radius), sigma, angle)
    pad = max(max(abs(dy), abs(dx)) for dy, dx in taps)
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    height, width = img.shape[:2]
    out = np.zeros_like(img)
    for (dy, dx), weight in sorted(taps.items()):
        out += weight * padded[pad - dy : pad - dy + height, pad - dx : pad - dx + width]
    return finish(out), {"radius": int(radius), "sigma": sigma, "angle": angle}


DEFOCUS_SEVERITIES: tuple[tuple[int, float], ...] = ((3, 0.1), (4, 0.5), (6, 0.5))


def disk_kernel(radius: float, alias_sigma: float) -> np.ndarray:
    """Anti-aliased disk (pillbox) kernel, as in imagecorruptions' defocus blur.

    A binary disk x^2 + y^2 <= radius^2 on a grid of half size max(8, radius),
    normalised, then smoothed by a 3-tap (5-tap above radius 8) Gaussian of
    ``alias_sigma`` to soften its aliased rim.
    """
    half = max(8, math.ceil(radius))
    taps = 3 if radius <= 8 else 5
    grid = np.arange(-half, half + 1, dtype=np.float64)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    smooth = gaussian_kernel_1d(alias_sigma, taps)
    disk = ndimage.correlate1d(disk, smooth, axis=0, mode="mirror")
    return ndimage.correlate1d(disk, smooth, axis=1, mode="mirror")


DEFOCUS_BLUR = OperatorParams(
    "defocus_blur",
    radius=Param(IntRange(2, 6), Within(0.5, 100.0)),
    alias_sigma=Param(Uniform(0.1, 0.5), Within(0.0, 10.0)),
)


def defocus_blur(
    image: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    radius: float | None = None,
    alias_sigma: float | None = None,
) -> Result:
    """Out-of-focus blur: correlation with an anti-aliased disk (mirrored border).

    Defaults: radius U{2..6} pixels, alias_sigma U[0.1, 0.5).
    """
    img = check_image(image)
    radius = DEFOCUS_BLUR.resolve(rng, "radius", radius)
    alias_sigma = DEFOCUS_BLUR.resolve(rng, "alias_sigma", alias_sigma)
    kernel = disk_kernel(radius, alias_sigma)
    out = convolve(img, kernel, mode="reflect")
    return finish(out), {"radius": radius, "alias_sigma": alias_sigma}


LOW_RESOLUTION_FACTORS = (0.5, 1.0 / 3.0, 0.25)


def low_resolution_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """Output size of a downscale by ``factor``: ceil like MATLAB's imresize, at least 1."""
    return max(1, math.ceil(height * factor - 1e-9)), max(1, math.ceil(width * factor - 1e-9))


LOW_RESOLUTION = OperatorParams(
    "low_resolution",
    factor=Param(Choice(LOW_RESOLUTION_FACTORS), Within(1e-3, 1.0)),
    restore_size=Param(Fixed(False), Flag()),
)


def low_resolution(
    image: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    factor: float | None = None,
    restore_size: bool | None = None,
) -> Result:
    """Loss of resolution: antialiased bicubic downscale by ``factor`` (Pillow, a = -0.5).

    The output is smaller: ceil(H * factor) x ceil(W * factor) (the AgenticIR
    convention, whose x0.25 images stay small). With ``restore_size`` the small
    image is bicubic-upscaled back to HxW, for pair formats that need aligned
    sizes. Defaults: factor one of 1/2, 1/3, 1/4; restore_size False.
    """
    img = check_image(image)
    factor = LOW_RESOLUTION.resolve(rng, "factor", factor)
    restore_size = LOW_RESOLUTION.resolve(rng, "restore_size", restore_size)
    height, width = img.shape[:2]
    small_h, small_w = low_resolution_size(height, width, factor)
    out = resize_image(img, small_h, small_w, method="bicubic")
    if restore_size:
        out = resize_image(np.clip(out, 0.0, 1.0), height, width, method="bicubic")
    params = {"factor": factor, "restore_size": bool(restore_size)}
    return finish(out), params
