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
    check_choice,
    check_image,
    check_int,
    check_range,
    convolve,
    draw_seed,
    field_rng,
    finish,
    gaussian_kernel_1d,
    luminance,
    need_rng,
    resize_image,
)

Result = tuple[np.ndarray, dict[str, Any]]

NOISE_KINDS = ("gaussian", "poisson")


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
    op = "noise"
    img = check_image(image)
    if kind is None:
        kind = str(need_rng(rng, op, "kind").choice(NOISE_KINDS))
    check_choice(op, "kind", kind, NOISE_KINDS)
    params: dict[str, Any] = {"kind": kind}
    if kind == "gaussian":
        if scale is not None:
            raise ValueError("noise: 'scale' applies to Poisson noise only")
        if sigma is None:
            sigma = float(need_rng(rng, op, "sigma").uniform(10.0, 40.0))
        params["sigma"] = check_range(op, "sigma", sigma, 0.0, 255.0)
    else:
        if sigma is not None:
            raise ValueError("noise: 'sigma' applies to Gaussian noise only")
        if scale is None:
            scale = float(need_rng(rng, op, "scale").uniform(1.0, 3.0))
        params["scale"] = check_range(op, "scale", scale, 0.0, 100.0)
    if color is None:
        color = bool(need_rng(rng, op, "color").random() < 0.7)
    if not isinstance(color, bool | np.bool_):
        raise TypeError(f"noise: color must be a bool, got {color!r}")
    params["color"] = bool(color)
    if seed is None:
        seed = draw_seed(need_rng(rng, op, "seed"))
    params["seed"] = int(seed)

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
    op = "jpeg"
    img = check_image(image)
    if quality is None:
        quality = int(need_rng(rng, op, "quality").integers(10, 41))
    quality = check_int(op, "quality", quality, 1, 100)
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
    op = "motion_blur"
    img = check_image(image)
    if radius is None:
        radius = int(need_rng(rng, op, "radius").integers(6, 17))
    radius = check_int(op, "radius", radius, 1, 200)
    if sigma is None:
        sigma = float(need_rng(rng, op, "sigma").uniform(2.0, 6.0))
    sigma = check_range(op, "sigma", sigma, 1e-3, 1e3)
    if angle is None:
        angle = float(need_rng(rng, op, "angle").uniform(-90.0, 90.0))
    angle = check_range(op, "angle", angle, -360.0, 360.0)

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
    op = "defocus_blur"
    img = check_image(image)
    if radius is None:
        radius = int(need_rng(rng, op, "radius").integers(2, 7))
    radius = check_range(op, "radius", radius, 0.5, 100.0)
    if alias_sigma is None:
        alias_sigma = float(need_rng(rng, op, "alias_sigma").uniform(0.1, 0.5))
    alias_sigma = check_range(op, "alias_sigma", alias_sigma, 0.0, 10.0)
    kernel = disk_kernel(radius, alias_sigma)
    out = convolve(img, kernel, mode="reflect")
    return finish(out), {"radius": radius, "alias_sigma": alias_sigma}


LOW_RESOLUTION_FACTORS = (0.5, 1.0 / 3.0, 0.25)


def low_resolution_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """Output size of a downscale by ``factor``: ceil like MATLAB's imresize, at least 1."""
    return max(1, math.ceil(height * factor - 1e-9)), max(1, math.ceil(width * factor - 1e-9))


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
    op = "low_resolution"
    img = check_image(image)
    if factor is None:
        factor = float(need_rng(rng, op, "factor").choice(LOW_RESOLUTION_FACTORS))
    factor = check_range(op, "factor", factor, 1e-3, 1.0)
    if restore_size is None:
        restore_size = False
    if not isinstance(restore_size, bool | np.bool_):
        raise TypeError(f"low_resolution: restore_size must be a bool, got {restore_size!r}")
    height, width = img.shape[:2]
    small_h, small_w = low_resolution_size(height, width, factor)
    out = resize_image(img, small_h, small_w, method="bicubic")
    if restore_size:
        out = resize_image(np.clip(out, 0.0, 1.0), height, width, method="bicubic")
    params = {"factor": factor, "restore_size": bool(restore_size)}
    return finish(out), params
