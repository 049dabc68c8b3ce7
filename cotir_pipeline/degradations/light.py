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
    check_int,
    check_range,
    draw_seed,
    field_rng,
    finish,
    guided_filter,
    linear_to_srgb,
    luminance,
    need_rng,
    srgb_to_linear,
)

Result = tuple[np.ndarray, dict[str, Any]]

LOW_LIGHT_MODES = ("shift", "gamma", "linear", "retinex")


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
    op = "low_light"
    img = check_image(image)
    if mode is None:
        mode = str(need_rng(rng, op, "mode").choice(LOW_LIGHT_MODES))
    check_choice(op, "mode", mode, LOW_LIGHT_MODES)
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
        if shift is None:
            shift = int(need_rng(rng, op, "shift").integers(30, 50))
        params["shift"] = check_range(op, "shift", shift, 0.0, 255.0)
        out = _scale_value_channel(img, np.maximum(value - params["shift"] / 255.0, 0.0))
    elif mode == "gamma":
        if gamma is None:
            gamma = float(need_rng(rng, op, "gamma").uniform(0.5, 0.7))
        params["gamma"] = check_range(op, "gamma", gamma, 0.05, 1.0)
        out = _scale_value_channel(img, value ** (1.0 / params["gamma"]))
    elif mode == "linear":
        if max_value is None:
            max_value = int(need_rng(rng, op, "max_value").integers(100, 150))
        params["max_value"] = check_range(op, "max_value", max_value, 1.0, 255.0)
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
    op = "low_light"
    if exponent is None:
        exponent = float(need_rng(rng, op, "exponent").uniform(2.0, 3.0))
    params["exponent"] = check_range(op, "exponent", exponent, 1.0, 10.0)
    if noise_sigma is None:
        noise_sigma = float(need_rng(rng, op, "noise_sigma").uniform(0.03, 0.08))
    params["noise_sigma"] = check_range(op, "noise_sigma", noise_sigma, 0.0, 1.0)
    if seed is None:
        seed = draw_seed(need_rng(rng, op, "seed"))
    params["seed"] = int(seed)
    light = illumination_map(img)[..., None] + 1e-7
    reflectance = img / light
    out = reflectance * light ** params["exponent"]
    return out + field_rng(params["seed"]).standard_normal(img.shape) * params["noise_sigma"]


def over_exposure(
    image: np.ndarray,
    rng: np.random.Generator | None = None,
    *,
    ev: float | None = None,
) -> Result:
    """Over-exposure: linear-light gain of 2**ev stops, clipped (blown highlights), re-encoded.

    Default ev U[1.0, 2.5).
    """
    op = "over_exposure"
    img = check_image(image)
    if ev is None:
        ev = float(need_rng(rng, op, "ev").uniform(1.0, 2.5))
    ev = check_range(op, "ev", ev, 0.0, 8.0)
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
    op = "flare"
    img = check_image(image)

    def draw(name: str) -> np.random.Generator:
        return need_rng(rng, op, name)

    if x is None:
        x = float(draw("x").uniform(-0.05, 1.05))
    if y is None:
        y = float(draw("y").uniform(-0.05, 0.6))
    x, y = check_range(op, "x", x, -1.0, 2.0), check_range(op, "y", y, -1.0, 2.0)
    if intensity is None:
        intensity = float(draw("intensity").uniform(0.6, 1.5))
    intensity = check_range(op, "intensity", intensity, 0.0, 10.0)
    if glow is None:
        glow = float(draw("glow").uniform(0.04, 0.12))
    glow = check_range(op, "glow", glow, 1e-3, 2.0)
    if tint is None:
        generator = draw("tint")
        tint = [1.0, float(generator.uniform(0.8, 0.95)), float(generator.uniform(0.55, 0.85))]
    if len(tint) != 3:
        raise ValueError(f"flare: tint must have 3 values, got {tint!r}")
    tint = [check_range(op, "tint", value, 0.0, 1.0) for value in tint]
    if streaks is None:
        streaks = int(draw("streaks").choice([0, 4, 6, 8]))
    streaks = check_int(op, "streaks", streaks, 0, 32)
    if streak_angle is None:
        streak_angle = float(draw("streak_angle").uniform(0.0, 180.0))
    streak_angle = check_range(op, "streak_angle", streak_angle, -360.0, 360.0)
    if streak_length is None:
        streak_length = float(draw("streak_length").uniform(0.1, 0.3))
    streak_length = check_range(op, "streak_length", streak_length, 1e-3, 2.0)
    if ghosts is None:
        ghosts = int(draw("ghosts").integers(2, 7))
    ghosts = check_int(op, "ghosts", ghosts, 0, 16)
    if seed is None:
        seed = draw_seed(draw("seed"))

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
