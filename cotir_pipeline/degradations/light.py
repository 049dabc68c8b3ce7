"""Illumination and colour degradations: low light, over-exposure, lost colour, lens flare.

Same calling convention as :mod:`cotir_pipeline.degradations.camera`: parameters
left as None are drawn from ``rng``; the returned dict holds every parameter used.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cotir_pipeline.degradations._core import (
    check_choice,
    check_image,
    check_range,
    field_rng,
    finish,
    guided_filter,
    linear_to_srgb,
    luminance,
    srgb_to_linear,
)
from cotir_pipeline.degradations.parameters import (
    Among,
    AsInt,
    Each,
    OperatorParams,
    Param,
    SeedDraw,
    WholeWithin,
    Within,
)
from cotir_pipeline.degradations.samplers import Choice, Fixed, IntRange, Uniform

Result = tuple[np.ndarray, dict[str, Any]]

LOW_LIGHT_MODES = ("shift", "gamma", "linear", "retinex")

LOW_LIGHT = OperatorParams(
    "low_light",
    mode=Param(Choice(LOW_LIGHT_MODES), Among(LOW_LIGHT_MODES)),
    shift=Param(IntRange(30, 49), Within(0.0, 255.0)),
    gamma=Param(Uniform(0.5, 0.7), Within(0.05, 1.0)),
    max_value=Param(IntRange(100, 149), Within(1.0, 255.0)),
    exponent=Param(Uniform(2.0, 3.0), Within(1.0, 10.0)),
    noise_sigma=Param(Uniform(0.03, 0.08), Within(0.0, 1.0)),
    seed=Param(SeedDraw(), AsInt()),
)


def _scale_value_channel(img: np.ndarray, new_value: np.ndarray) -> np.ndarray:
    """Replace HSV's V (= max of R, G, B) keeping hue and saturation: scale RGB by V'/V."""
    value = img.max(axis=2)
    ratio = np.divide(new_value, value, out=np.zeros_like(value), where=value > 0)
    return img * ratio[..., None]


def illumination_map(img: np.ndarray) -> np.ndarray:
    """A smooth illumination estimate in [1e-3, 1] for the Retinex low-light model.

    The max-RGB map (LIME's initial illumination) is smoothed edge-aware by a
    self-guided filter (radius 7, eps 1e-2), then filtered once more with the
    max-RGB map as guide and the grey image as input (3x3 window, eps 1e-2, the
    refinement OneRestore's CDD-11 script applies to its light maps).
    """
    brightest = img.max(axis=2)
    smooth = guided_filter(brightest, brightest, radius=7, eps=1e-2)
    refined = guided_filter(np.clip(smooth, 0.0, 1.0), luminance(img), radius=1, eps=1e-2)
    return np.clip(refined, 1e-3, 1.0)


def low_light(
    image: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    mode: str | None = None,
    shift: float | None = None,
    gamma: float | None = None,
    max_value: float | None = None,
    exponent: float | None = None,
    noise_sigma: float | None = None,
    seed: int | None = None,
) -> Result:
    """Under-exposure / night: an HSV V-channel variant or a Retinex model with noise.

    Modes (V = max(R, G, B) in [0, 1]; hue and saturation kept):
    - ``shift``: V - shift/255 (shift on the 0..255 scale; AgenticIR 30..49);
    - ``gamma``: V ** (1/gamma), gamma < 1 darkens (AgenticIR U[0.5, 0.7));
    - ``linear``: V min-max rescaled to [0, max_value/255] (AgenticIR 100..149);
    - ``retinex`` (CDD-11): with illumination L, out = (x / L) * L ** exponent +
      N(0, noise_sigma^2) per channel (exponent U(2, 3), noise_sigma U(0.03, 0.08)).
    Default: a mode uniformly, with the ranges above.
    """
    img = check_image(image)
    mode = str(LOW_LIGHT.resolve(rng, "mode", mode))
    given = {
        "shift": shift,
        "gamma": gamma,
        "max_value": max_value,
        "exponent": exponent,
        "noise_sigma": noise_sigma,
        "seed": seed,
    }
    extra = sorted(
        name
        for name, value in given.items()
        if value is not None and name not in _LOW_LIGHT_MODE_ARGS[mode]
    )
    if extra:
        raise ValueError(f"low_light: {extra} do not apply to mode {mode!r}")

    params: dict[str, Any] = {"mode": mode}
    value = img.max(axis=2)
    if mode == "shift":
        params["shift"] = LOW_LIGHT.resolve(rng, "shift", shift)
        out = _scale_value_channel(img, np.maximum(value - params["shift"] / 255.0, 0.0))
    elif mode == "gamma":
        params["gamma"] = LOW_LIGHT.resolve(rng, "gamma", gamma)
        out = _scale_value_channel(img, value ** (1.0 / params["gamma"]))
    elif mode == "linear":
        params["max_value"] = LOW_LIGHT.resolve(rng, "max_value", max_value)
        low, high = float(value.min()), float(value.max())
        top = params["max_value"] / 255.0
        # a flat image has no range to stretch: cap it at the new maximum instead
        new_value = (value - low) / (high - low) * top if high > low else np.minimum(value, top)
        out = _scale_value_channel(img, new_value)
    else:
        out = _retinex_low_light(img, rng, params, exponent, noise_sigma, seed)
    return finish(out), params


#: The parameters each low_light mode takes.
_LOW_LIGHT_MODE_ARGS: dict[str, set[str]] = {
    "shift": {"shift"},
    "gamma": {"gamma"},
    "linear": {"max_value"},
    "retinex": {"exponent", "noise_sigma", "seed"},
}


def _retinex_low_light(
    img: np.ndarray,
    rng: np.random.Generator | None,
    params: dict[str, Any],
    exponent: float | None,
    noise_sigma: float | None,
    seed: int | None,
) -> np.ndarray:
    """low_light's retinex mode: reflectance times illumination**exponent, plus Gaussian
    noise; draws the missing parameters in that order and records them in ``params``."""
    params["exponent"] = LOW_LIGHT.resolve(rng, "exponent", exponent)
    params["noise_sigma"] = LOW_LIGHT.resolve(rng, "noise_sigma", noise_sigma)
    params["seed"] = LOW_LIGHT.resolve(rng, "seed", seed)
    light = illumination_map(img)[..., None] + 1e-7
    reflectance = img / light
    out = reflectance * light ** params["exponent"]
    return out + field_rng(params["seed"]).standard_normal(img.shape) * params["noise_sigma"]


OVER_EXPOSURE = OperatorParams("over_exposure", ev=Param(Uniform(1.0, 2.5), Within(0.0, 8.0)))


def over_exposure(
    image: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    ev: float | None = None,
) -> Result:
    """Over-exposure: linear-light gain of 2**ev stops, clipped (blown highlights), re-encoded.

    Default ev U[1.0, 2.5).
    """
    img = check_image(image)
    ev = OVER_EXPOSURE.resolve(rng, "ev", ev)
    out = linear_to_srgb(srgb_to_linear(img) * 2.0**ev)
    return finish(out), {"ev": ev}


#: Luma weights (R, G, B) by standard.
LUMA_WEIGHTS: dict[str, tuple[float, float, float]] = {
    "bt601": (0.299, 0.587, 0.114),
    "bt709": (0.2126, 0.7152, 0.0722),
}


def lost_color(
    image: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    luma: str = "bt601",
) -> Result:
    """Lost colour (the colourisation task): replace RGB by its luma in all three channels.

    ``luma`` is "bt601" (default; what PIL and OpenCV use for grey) or "bt709".
    Deterministic; ``rng`` is accepted for the common signature and not used.
    """
    img = check_image(image)
    check_choice("lost_color", "luma", luma, tuple(LUMA_WEIGHTS))
    red, green, blue = LUMA_WEIGHTS[luma]
    grey = img[..., 0] * red + img[..., 1] * green + img[..., 2] * blue
    return finish(np.repeat(grey[..., None], 3, axis=2)), {"luma": luma}


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _check_tint(operator: str, name: str, value: Any) -> list[float]:
    """Three channel gains in [0, 1]."""
    if len(value) != 3:
        raise ValueError(f"{operator}: {name} must have 3 values, got {value!r}")
    return [check_range(operator, name, part, 0.0, 1.0) for part in value]


FLARE = OperatorParams(
    "flare",
    x=Param(Uniform(-0.05, 1.05), Within(-1.0, 2.0)),
    y=Param(Uniform(-0.05, 0.6), Within(-1.0, 2.0)),
    intensity=Param(Uniform(0.6, 1.5), Within(0.0, 10.0)),
    glow=Param(Uniform(0.04, 0.12), Within(1e-3, 2.0)),
    tint=Param(Each((Fixed(1.0), Uniform(0.8, 0.95), Uniform(0.55, 0.85))), _check_tint),
    streaks=Param(Choice((0, 4, 6, 8)), WholeWithin(0, 32)),
    streak_angle=Param(Uniform(0.0, 180.0), Within(-360.0, 360.0)),
    streak_length=Param(Uniform(0.1, 0.3), Within(1e-3, 2.0)),
    ghosts=Param(IntRange(2, 6), WholeWithin(0, 16)),
    seed=Param(SeedDraw(), AsInt()),
)


def flare(
    image: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    x: float | None = None,
    y: float | None = None,
    intensity: float | None = None,
    glow: float | None = None,
    tint: list[float] | None = None,
    streaks: int | None = None,
    streak_angle: float | None = None,
    streak_length: float | None = None,
    ghosts: int | None = None,
    seed: int | None = None,
) -> Result:
    """Lens flare from a bright source, added in linear light and re-encoded to sRGB.

    Components, with r the distance to the source over the image diagonal: a
    saturated core, an exponential glow exp(-r/glow), ``streaks`` star rays
    (|cos(streaks/2 * (theta - streak_angle))|^300 * exp(-r/streak_length)), and
    ``ghosts`` soft tinted discs or rings on the line from the source through the
    image centre (their layout drawn from ``seed``). ``x``, ``y`` are fractions
    of width/height (the source may sit just outside the frame). Defaults: x
    U[-0.05, 1.05), y U[-0.05, 0.6), intensity U[0.6, 1.5), glow U[0.04, 0.12),
    warm tint, streaks one of 0, 4, 6, 8, streak_length U[0.1, 0.3), ghosts U{2..6}.
    """
    img = check_image(image)
    x = FLARE.resolve(rng, "x", x)
    y = FLARE.resolve(rng, "y", y)
    intensity = FLARE.resolve(rng, "intensity", intensity)
    glow = FLARE.resolve(rng, "glow", glow)
    tint = FLARE.resolve(rng, "tint", tint)
    streaks = FLARE.resolve(rng, "streaks", streaks)
    streak_angle = FLARE.resolve(rng, "streak_angle", streak_angle)
    streak_length = FLARE.resolve(rng, "streak_length", streak_length)
    ghosts = FLARE.resolve(rng, "ghosts", ghosts)
    seed = FLARE.resolve(rng, "seed", seed)

    height, width = img.shape[:2]
    src_x, src_y = x * (width - 1), y * (height - 1)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    light = _flare_light(xx, yy, src_x, src_y, glow, streaks, streak_angle, streak_length)
    flare_rgb = light[..., None] * (intensity * np.asarray(tint))
    flare_rgb = _add_flare_ghosts(
        flare_rgb, xx, yy, src_x, src_y, intensity, int(ghosts), int(seed)
    )
    out = linear_to_srgb(srgb_to_linear(img) + flare_rgb)
    params = {
        "x": x,
        "y": y,
        "intensity": intensity,
        "glow": glow,
        "tint": tint,
        "streaks": int(streaks),
        "streak_angle": streak_angle,
        "streak_length": streak_length,
        "ghosts": int(ghosts),
        "seed": int(seed),
    }
    return finish(out), params


def _flare_light(
    xx: np.ndarray,
    yy: np.ndarray,
    src_x: float,
    src_y: float,
    glow: float,
    streaks: int,
    streak_angle: float,
    streak_length: float,
) -> np.ndarray:
    """The flare's core, glow and star rays, per pixel (before tint and intensity)."""
    diagonal = math.hypot(*xx.shape)
    dist = np.hypot(xx - src_x, yy - src_y) / diagonal
    light = np.exp(-dist / glow) * 0.6 + np.exp(-((dist / (0.2 * glow)) ** 2)) * 1.5
    if streaks > 0:
        theta = np.arctan2(yy - src_y, xx - src_x) - math.radians(streak_angle)
        rays = np.abs(np.cos(theta * (streaks / 2.0))) ** 300
        light = light + 0.5 * rays * np.exp(-dist / streak_length)
    return light


def _add_flare_ghosts(
    flare_rgb: np.ndarray,
    xx: np.ndarray,
    yy: np.ndarray,
    src_x: float,
    src_y: float,
    intensity: float,
    ghosts: int,
    seed: int,
) -> np.ndarray:
    """``flare_rgb`` plus the ghosts, added one by one: soft tinted discs or rings on the
    line from the source through the centre, their layout drawn from ``seed``."""
    height, width = xx.shape
    diagonal = math.hypot(height, width)
    layout = field_rng(seed)
    centre_x, centre_y = (width - 1) / 2.0, (height - 1) / 2.0
    for _ in range(ghosts):
        t = layout.uniform(0.3, 1.8)
        gx = centre_x + (centre_x - src_x) * (t - 1.0)
        gy = centre_y + (centre_y - src_y) * (t - 1.0)
        radius = layout.uniform(0.015, 0.07)
        strength = layout.uniform(0.04, 0.15) * intensity
        colour = layout.uniform(0.3, 1.0, size=3)
        ring = layout.random() < 0.3
        r = np.hypot(xx - gx, yy - gy) / diagonal / radius
        if ring:
            shape = _smoothstep(0.7, 0.9, r) * (1.0 - _smoothstep(0.95, 1.1, r))
        else:
            shape = 1.0 - _smoothstep(0.8, 1.0, r)
        flare_rgb = flare_rgb + shape[..., None] * (strength * colour)
    return flare_rgb
