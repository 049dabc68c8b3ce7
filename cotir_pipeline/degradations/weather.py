"""Weather and medium degradations: haze, non-homogeneous haze, rain, snow, raindrops, water.

Same calling convention as :mod:`cotir_pipeline.degradations.camera`. Operators
that need scene distance take ``depth`` (an HxW distance-like map, larger =
farther; see :mod:`cotir_pipeline.degradations.depth`) and record in
``depth_source`` whether it was given or the proxy was used.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from cotir_pipeline.degradations._core import (
    box_blur,
    check_choice,
    check_image,
    check_int,
    check_range,
    convolve,
    field_rng,
    finish,
    gaussian_blur,
    gaussian_kernel_1d,
    linear_to_srgb,
    opencv_gaussian_sigma,
    smooth_field,
    srgb_to_linear,
)
from cotir_pipeline.degradations.depth import depth_proxy, normalize_depth
from cotir_pipeline.degradations.parameters import (
    Among,
    AsInt,
    Each,
    OperatorParams,
    Param,
    Ratio,
    SeedDraw,
    WholeWithin,
    Within,
)
from cotir_pipeline.degradations.samplers import Choice, Fixed, IntRange, Uniform

Result = tuple[np.ndarray, dict[str, Any]]

DEPTH_SOURCES = ("given", "proxy")


def _distance(
    op: str, img: np.ndarray, depth: np.ndarray | None, depth_source: str | None
) -> tuple[np.ndarray, str]:
    """The normalised distance map for ``img`` and the name of its source."""
    height, width = img.shape[:2]
    if depth_source is not None:
        check_choice(op, "depth_source", depth_source, DEPTH_SOURCES)
    if depth is None:
        if depth_source == "given":
            raise ValueError(f"{op}: depth_source is 'given' but no depth map was passed")
        return depth_proxy(img), "proxy"
    return normalize_depth(depth, height, width), depth_source or "given"


HAZE = OperatorParams(
    "haze",
    beta=Param(Uniform(0.6, 1.8), Within(0.0, 20.0)),
    airlight=Param(Uniform(0.7, 1.0), Within(0.0, 1.0)),
)


def haze(
    image: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    beta: float | None = None,
    airlight: float | None = None,
    depth: np.ndarray | None = None,
    depth_source: str | None = None,
    depth_blur: int = 0,
    depth_cap: float | None = None,
) -> Result:
    """Homogeneous haze by the atmospheric scattering model I = J t + A (1 - t).

    t = exp(-beta * d) with d the distance map scaled to max 1, optionally
    box-blurred over ``depth_blur`` pixels and capped at ``depth_cap`` (CDD-11:
    t = exp(-min(blur(d), 0.7) * beta)). Without ``depth`` the documented proxy
    of :func:`~cotir_pipeline.degradations.depth.depth_proxy` is used. Defaults
    (RESIDE / AgenticIR): beta U[0.6, 1.8), airlight A U[0.7, 1.0).
    """
    op = "haze"
    img = check_image(image)
    beta = HAZE.resolve(rng, "beta", beta)
    airlight = HAZE.resolve(rng, "airlight", airlight)
    depth_blur = check_int(op, "depth_blur", depth_blur, 0, 1000)
    if depth_cap is not None:
        depth_cap = check_range(op, "depth_cap", depth_cap, 0.0, 1.0)
    distance, source = _distance(op, img, depth, depth_source)
    if depth_blur > 1:
        distance = box_blur(distance, int(depth_blur))
    if depth_cap is not None:
        distance = np.minimum(distance, depth_cap)
    transmission = np.exp(-beta * distance)[..., None]
    out = img * transmission + airlight * (1.0 - transmission)
    params = {
        "beta": beta,
        "airlight": airlight,
        "depth_source": source,
        "depth_blur": int(depth_blur),
        "depth_cap": depth_cap,
    }
    return finish(out), params


NONHOMOGENEOUS_HAZE = OperatorParams(
    "nonhomogeneous_haze",
    beta=Param(Uniform(1.0, 2.5), Within(0.0, 20.0)),
    airlight=Param(Uniform(0.7, 1.0), Within(0.0, 1.0)),
    patchiness=Param(Uniform(0.5, 0.9), Within(0.0, 1.0)),
    cells=Param(IntRange(3, 6), WholeWithin(2, 64)),
    seed=Param(SeedDraw(), AsInt()),
)


def nonhomogeneous_haze(
    image: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    beta: float | None = None,
    airlight: float | None = None,
    patchiness: float | None = None,
    cells: int | None = None,
    depth: np.ndarray | None = None,
    depth_source: str | None = None,
    seed: int | None = None,
) -> Result:
    """Patchy haze (NH-Haze-like): the scattering model with a spatially varying density.

    t = exp(-beta * d * m), m = 1 + patchiness * (2 f - 1), f a smooth random
    field in [0, 1] (uniform noise on a ``cells``-wide grid, bicubic-upsampled).
    Defaults: beta U[1.0, 2.5), airlight U[0.7, 1.0), patchiness U[0.5, 0.9),
    cells U{3..6}.
    """
    op = "nonhomogeneous_haze"
    img = check_image(image)
    beta = NONHOMOGENEOUS_HAZE.resolve(rng, "beta", beta)
    airlight = NONHOMOGENEOUS_HAZE.resolve(rng, "airlight", airlight)
    patchiness = NONHOMOGENEOUS_HAZE.resolve(rng, "patchiness", patchiness)
    cells = NONHOMOGENEOUS_HAZE.resolve(rng, "cells", cells)
    seed = NONHOMOGENEOUS_HAZE.resolve(rng, "seed", seed)
    distance, source = _distance(op, img, depth, depth_source)
    height, width = img.shape[:2]
    field = smooth_field(field_rng(int(seed)), height, width, int(cells))
    density = 1.0 + patchiness * (2.0 * field - 1.0)
    transmission = np.exp(-beta * distance * density)[..., None]
    out = img * transmission + airlight * (1.0 - transmission)
    params = {
        "beta": beta,
        "airlight": airlight,
        "patchiness": patchiness,
        "cells": int(cells),
        "depth_source": source,
        "seed": int(seed),
    }
    return finish(out), params


#: The 3x3 pre-blur that spreads each rain seed before the streak kernel (MiOIR's rain).
_RAIN_SEED_SPREAD = np.array([[0.0, 0.1, 0.0], [0.1, 8.0, 0.1], [0.0, 0.1, 0.0]])


def streak_kernel(length: int, angle: float, width: int) -> np.ndarray:
    """A ``length`` x ``length`` kernel holding one line through its centre, Gaussian-widened.

    The line is the kernel's diagonal scaled by (1 - length/100) and turned to
    ``angle`` degrees from vertical (positive = counter-clockwise on screen),
    clipped to the window; its cross-section is a ``width``-tap Gaussian with
    OpenCV's default sigma for that width. Not normalised (the rain layer is
    min-max normalised afterwards).
    """
    size = int(length)
    centre = size / 2.0 - 0.5
    half = size * math.sqrt(2.0) * (1.0 - size / 100.0) / 2.0
    steps = max(2, math.ceil(half * 8))
    s = np.linspace(-half, half, 2 * steps + 1)
    phi = math.radians(angle)
    px = centre + s * math.sin(phi)
    py = centre + s * math.cos(phi)
    kernel = np.zeros((size, size))
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    fx, fy = px - x0, py - y0
    weight = (2.0 * half) / (len(s) - 1)  # one unit of line length per pixel travelled
    for dy, dx, w in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        ys, xs = y0 + dy, x0 + dx
        inside = (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
        np.add.at(kernel, (ys[inside], xs[inside]), w[inside] * weight)
    taps = gaussian_kernel_1d(opencv_gaussian_sigma(int(width)), int(width))
    kernel = ndimage.correlate1d(kernel, taps, axis=0, mode="mirror")
    return ndimage.correlate1d(kernel, taps, axis=1, mode="mirror")


def rain_layer(
    height: int,
    width: int,
    *,
    threshold: float,
    length: int,
    angle: float,
    streak_width: int,
    seed: int,
) -> np.ndarray:
    """The rain streak layer in [0, 1] (HxW) before it is added to the image."""
    uniform = field_rng(seed).random((height, width)) * 256.0
    seeds = np.where(uniform >= 256.0 - threshold, uniform, 0.0)
    seeds = ndimage.correlate(seeds, _RAIN_SEED_SPREAD, mode="mirror")
    streaks = convolve(seeds, streak_kernel(length, angle, streak_width), mode="reflect")
    low, high = float(streaks.min()), float(streaks.max())
    if high <= low:
        return np.zeros((height, width))
    return (streaks - low) / (high - low)


RAIN = OperatorParams(
    "rain",
    threshold=Param(Ratio(IntRange(50, 99), 100.0), Within(0.0, 256.0)),
    length=Param(IntRange(20, 39), WholeWithin(2, 99)),
    angle=Param(IntRange(-30, 29), Within(-90.0, 90.0)),
    width=Param(Fixed(3), WholeWithin(1, 15)),
    intensity=Param(Fixed(1.0), Within(0.0, 2.0)),
    seed=Param(SeedDraw(), AsInt()),
)


def rain(
    image: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    threshold: float | None = None,
    length: int | None = None,
    angle: float | None = None,
    width: int | None = None,
    intensity: float | None = None,
    seed: int | None = None,
) -> Result:
    """Rain streaks: thresholded uniform noise smeared into oriented streaks and added.

    Uniform noise u ~ U[0, 256) per pixel keeps the values u >= 256 - threshold
    (a seed density of threshold/256), spreads them with a 3x3 cross, convolves
    with :func:`streak_kernel` (``length``, ``angle``, ``width``), min-max
    normalises to [0, 1] and adds ``intensity`` times it to every channel.
    Defaults (AgenticIR / MiOIR): threshold U{50..99}/100, length U{20..39},
    angle U{-30..29} degrees, width 3, intensity 1.
    """
    img = check_image(image)
    threshold = RAIN.resolve(rng, "threshold", threshold)
    length = RAIN.resolve(rng, "length", length)
    angle = RAIN.resolve(rng, "angle", angle)
    width = RAIN.resolve(rng, "width", width)
    if width % 2 == 0:
        raise ValueError(f"rain: width must be odd (a centred Gaussian), got {width}")
    intensity = RAIN.resolve(rng, "intensity", intensity)
    seed = RAIN.resolve(rng, "seed", seed)
    height, img_width = img.shape[:2]
    layer = rain_layer(
        height,
        img_width,
        threshold=threshold,
        length=int(length),
        angle=angle,
        streak_width=int(width),
        seed=int(seed),
    )
    out = img + intensity * layer[..., None]
    params = {
        "threshold": threshold,
        "length": int(length),
        "angle": angle,
        "width": int(width),
        "intensity": intensity,
        "seed": int(seed),
    }
    return finish(out), params


#: Snow layers: (flake sigma as a fraction of ``flake_size``, flakes per 512x512 at density 1).
SNOW_LAYERS: tuple[tuple[float, float], ...] = ((0.25, 1800.0), (0.5, 500.0), (1.0, 60.0))


def _gaussian_peak(sigma: float) -> float:
    """Peak of scipy's discrete 2-D Gaussian (truncate 4) applied to a unit impulse."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-(x**2) / (2 * sigma**2))
    return float((1.0 / taps.sum()) ** 2)


SNOW = OperatorParams(
    "snow",
    density=Param(Uniform(0.4, 1.2), Within(0.0, 50.0)),
    flake_size=Param(Uniform(3.0, 6.0), Within(0.1, 100.0)),
    brightness=Param(Uniform(0.85, 1.0), Within(0.0, 1.0)),
    veil=Param(Uniform(0.0, 0.15), Within(0.0, 1.0)),
    seed=Param(SeedDraw(), AsInt()),
)


def snow(
    image: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    density: float | None = None,
    flake_size: float | None = None,
    brightness: float | None = None,
    veil: float | None = None,
    seed: int | None = None,
) -> Result:
    """Falling snow: three layers of soft flakes (small/many to large/few), blended over.

    Each layer places Poisson(count * density * HW / 512^2) flakes of random
    strength U[0.6, 1) at random pixels and Gaussian-blurs them with sigma =
    fraction * flake_size * max(H, W) / 512 (at least 0.4 px), scaled so a flake
    peaks at 1.3 x strength and clipped: a soft disc. The layers combine as
    m = 1 - prod(1 - m_i); out = x (1 - m) + brightness * m (CDD-11's blend),
    then a uniform veil: out (1 - veil) + brightness * veil. Defaults: density
    U[0.4, 1.2), flake_size U[3, 6) px, brightness U[0.85, 1.0), veil U[0, 0.15).
    """
    img = check_image(image)
    density = SNOW.resolve(rng, "density", density)
    flake_size = SNOW.resolve(rng, "flake_size", flake_size)
    brightness = SNOW.resolve(rng, "brightness", brightness)
    veil = SNOW.resolve(rng, "veil", veil)
    seed = SNOW.resolve(rng, "seed", seed)

    height, width = img.shape[:2]
    field = field_rng(int(seed))
    area = height * width / 512.0**2
    scale = max(height, width) / 512.0
    clear = np.ones((height, width))
    for fraction, count in SNOW_LAYERS:
        sigma = max(0.4, fraction * flake_size * scale)
        n = int(field.poisson(count * density * area))
        ys = field.integers(0, height, size=n)
        xs = field.integers(0, width, size=n)
        strength = field.uniform(0.6, 1.0, size=n)
        flakes = np.zeros((height, width))
        np.add.at(flakes, (ys, xs), strength)
        flakes = gaussian_blur(flakes, sigma, mode="constant")
        mask = np.clip(flakes / _gaussian_peak(sigma) * 1.3, 0.0, 1.0)
        clear *= 1.0 - mask
    mask = (1.0 - clear)[..., None]
    out = img * (1.0 - mask) + brightness * mask
    out = out * (1.0 - veil) + brightness * veil
    params = {
        "density": density,
        "flake_size": flake_size,
        "brightness": brightness,
        "veil": veil,
        "seed": int(seed),
    }
    return finish(out), params


RAINDROP = OperatorParams(
    "raindrop",
    count=Param(IntRange(10, 40), WholeWithin(0, 1000)),
    radius=Param(Uniform(0.03, 0.08), Within(1e-3, 0.5)),
    blur=Param(Uniform(1.5, 4.0), Within(0.0, 50.0)),
    magnification=Param(Uniform(0.4, 1.0), Within(0.0, 4.0)),
    seed=Param(SeedDraw(), AsInt()),
)


def raindrop(
    image: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    count: int | None = None,
    radius: float | None = None,
    blur: float | None = None,
    magnification: float | None = None,
    seed: int | None = None,
) -> Result:
    """Raindrops on the lens or a window: round/elliptic refracting blobs with soft edges.

    Each drop (centre, radii radius * min(H, W) * U[0.5, 1.5) with aspect
    U[0.7, 1.3), drawn from ``seed``) shows the scene through a lens: the
    out-of-focus image (Gaussian ``blur`` sigma) sampled at an inverted,
    ``magnification``-scaled, slightly shifted position, darkened towards the rim,
    with a small specular highlight, composited with a soft elliptic alpha.
    Defaults: count U{10..40}, radius U[0.03, 0.08), blur U[1.5, 4),
    magnification U[0.4, 1.0).
    """
    img = check_image(image)
    count = RAINDROP.resolve(rng, "count", count)
    radius = RAINDROP.resolve(rng, "radius", radius)
    blur = RAINDROP.resolve(rng, "blur", blur)
    magnification = RAINDROP.resolve(rng, "magnification", magnification)
    seed = RAINDROP.resolve(rng, "seed", seed)

    height, width = img.shape[:2]
    soft = gaussian_blur(img, blur, mode="nearest")
    out = img.copy()
    layout = field_rng(int(seed))
    base = radius * min(height, width)
    for _ in range(int(count)):
        cy, cx = layout.uniform(0, height), layout.uniform(0, width)
        rx = max(1.0, base * layout.uniform(0.5, 1.5))
        ry = max(1.0, rx * layout.uniform(0.7, 1.3))
        shift_y, shift_x = layout.uniform(-0.5, 0.5, size=2) * (ry, rx)
        top, bottom = max(0, int(cy - ry) - 1), min(height, int(cy + ry) + 2)
        left, right = max(0, int(cx - rx) - 1), min(width, int(cx + rx) + 2)
        if top >= bottom or left >= right:
            continue
        yy, xx = np.mgrid[top:bottom, left:right].astype(np.float64)
        r = np.hypot((yy - cy) / ry, (xx - cx) / rx)
        alpha = np.clip((1.0 - r) / 0.25, 0.0, 1.0)
        alpha = alpha * alpha * (3.0 - 2.0 * alpha)
        src_y = np.clip(cy + shift_y - (yy - cy) * magnification, 0, height - 1)
        src_x = np.clip(cx + shift_x - (xx - cx) * magnification, 0, width - 1)
        coords = np.stack([src_y, src_x])
        seen = np.stack(
            [ndimage.map_coordinates(soft[..., c], coords, order=1) for c in range(3)], axis=-1
        )
        seen = seen * (1.0 - 0.3 * np.clip(r, 0.0, 1.0) ** 4)[..., None]
        highlight = np.exp(
            -(((yy - (cy - 0.4 * ry)) / (0.2 * ry)) ** 2)
            - ((xx - (cx - 0.3 * rx)) / (0.2 * rx)) ** 2
        )
        seen = seen + 0.35 * highlight[..., None]
        patch = out[top:bottom, left:right]
        out[top:bottom, left:right] = patch * (1.0 - alpha[..., None]) + seen * alpha[..., None]
    params = {
        "count": int(count),
        "radius": radius,
        "blur": blur,
        "magnification": magnification,
        "seed": int(seed),
    }
    return finish(out), params


WATER_TYPES = ("blue", "green")

UNDERWATER = OperatorParams(
    "underwater",
    water=Param(Choice(WATER_TYPES), Among(WATER_TYPES)),
    distance=Param(Uniform(2.0, 8.0), Within(0.0, 100.0)),
)


def _rgb(*ranges: tuple[float, float]) -> Each:
    return Each(tuple(Uniform(low, high) for low, high in ranges))


#: Per water type, the defaults of the attenuation (1/m) and the backscatter (veiling
#: light) per R, G, B; checked together after both are known (see :func:`underwater`).
UNDERWATER_BY_WATER: dict[str, OperatorParams] = {
    "blue": OperatorParams(
        "underwater",
        attenuation=Param(_rgb((0.35, 0.6), (0.06, 0.12), (0.03, 0.08))),
        backscatter=Param(_rgb((0.0, 0.05), (0.15, 0.3), (0.3, 0.5))),
    ),
    "green": OperatorParams(
        "underwater",
        attenuation=Param(_rgb((0.4, 0.7), (0.05, 0.1), (0.15, 0.3))),
        backscatter=Param(_rgb((0.0, 0.05), (0.3, 0.5), (0.15, 0.3))),
    ),
}


def underwater(
    image: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    water: str | None = None,
    attenuation: list[float] | None = None,
    backscatter: list[float] | None = None,
    distance: float | None = None,
    depth: np.ndarray | None = None,
    depth_source: str | None = None,
) -> Result:
    """Underwater colour cast and veil: wavelength-dependent attenuation plus backscatter.

    In linear light, I_c = J_c exp(-a_c z) + B_c (1 - exp(-a_c z)) with z =
    ``distance`` (metres) times the normalised distance map: red is absorbed
    fastest, and the veiling light B is blue or green. ``water`` picks the
    default ranges of ``attenuation`` and ``backscatter`` (recorded for the
    caption); distance defaults to U[2, 8) m.
    """
    op = "underwater"
    img = check_image(image)
    water = str(UNDERWATER.resolve(rng, "water", water))
    attenuation = UNDERWATER_BY_WATER[water].resolve(rng, "attenuation", attenuation)
    backscatter = UNDERWATER_BY_WATER[water].resolve(rng, "backscatter", backscatter)
    if len(attenuation) != 3 or len(backscatter) != 3:
        raise ValueError("underwater: attenuation and backscatter need 3 values (R, G, B)")
    attenuation = [check_range(op, "attenuation", v, 0.0, 10.0) for v in attenuation]
    backscatter = [check_range(op, "backscatter", v, 0.0, 1.0) for v in backscatter]
    distance = UNDERWATER.resolve(rng, "distance", distance)
    scene, source = _distance(op, img, depth, depth_source)
    transmission = np.exp(-np.asarray(attenuation) * (distance * scene)[..., None])
    linear = srgb_to_linear(img) * transmission + np.asarray(backscatter) * (1.0 - transmission)
    params = {
        "water": water,
        "attenuation": attenuation,
        "backscatter": backscatter,
        "distance": distance,
        "depth_source": source,
    }
    return finish(linear_to_srgb(linear)), params
