"""Deterministic annotations for the demo profile: no network, no model.

The answer is written from what is known without looking at the degradation:
the label and the applied recipe (noise sigma, haze beta, JPEG quality, ...) give
the degradation description, the plan undoes the steps in reverse order of
application, and simple statistics of the HQ image (brightness, colourfulness,
dominant hue, texture) give a scene description that names no objects. Phrasing
varies between samples: every choice is drawn from a generator seeded by the
sample id and the template version, so the same request always gives the same
answer, on any machine.

These answers are demo material, not a substitute for a VLM: they never describe
image content they cannot know.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from cotir_pipeline.annotation.base import (
    AnnotationRequest,
    AnnotationResult,
    check_unique_ids,
    sha256_text,
)
from cotir_pipeline.annotation.prompts import gen_prompts, prompt_lists_version, spe_prompts
from cotir_pipeline.annotation.schema import CotAnswer
from cotir_pipeline.annotation.vocabulary import ACTIONS
from cotir_pipeline.shards import STATUS_FAILED, STATUS_OK
from cotir_pipeline.tasks import Degradation, parse_degradation_label

D = Degradation

#: Bump when the phrase tables or the logic below change (the prompt files are
#: versioned by their digest, added to this in :attr:`TemplateBackend.template_version`).
TEMPLATE_BACKEND_VERSION = "template-backend-1"
TEMPLATE_MODEL = "cotir-template"

Step = Mapping[str, Any]


def _severity(value: float, mild: float, strong: float, *, reverse: bool = False) -> str:
    """``"mild"``, ``"moderate"`` or ``"strong"`` by two thresholds (reverse: small = strong)."""
    if reverse:
        value, mild, strong = -value, -mild, -strong
    if value < mild:
        return "mild"
    if value < strong:
        return "moderate"
    return "strong"


_INTENSITY = {
    "mild": ("light", "slight", "mild"),
    "moderate": ("moderate", "noticeable", "clear"),
    "strong": ("heavy", "strong", "severe"),
}
_ADVERBS = {
    "mild": ("slightly", "mildly"),
    "moderate": ("noticeably", "moderately"),
    "strong": ("heavily", "strongly", "badly"),
}


def _adj(rng: random.Random, level: str) -> str:
    return rng.choice(_INTENSITY[level])


def _adv(rng: random.Random, level: str) -> str:
    return rng.choice(_ADVERBS[level])


def _position(x: float, y: float) -> str:
    horizontal = "left" if x < 0.35 else "right" if x > 0.65 else "centre"
    vertical = "top" if y < 0.3 else "bottom" if y > 0.7 else "middle"
    if horizontal == "centre" and vertical == "middle":
        return "centre"
    if horizontal == "centre":
        return f"{vertical} centre"
    return f"{vertical} {horizontal}" if vertical != "middle" else f"{horizontal} side"


def _direction(angle: float) -> str:
    folded = abs(((angle + 90.0) % 180.0) - 90.0)
    if folded < 20:
        return "nearly horizontal"
    if folded > 70:
        return "nearly vertical"
    return "diagonal"


def _describe_noise(p: Step, rng: random.Random) -> str:
    colour = "colour" if p.get("color") else "luminance"
    if p.get("kind") == "poisson":
        level = _severity(float(p.get("scale", 2.0)), 1.5, 2.3)
        return (
            f"{_adj(rng, level)} signal-dependent {colour} noise makes flat areas grainy, "
            "strongest in the brighter regions"
        )
    sigma = float(p.get("sigma", 25.0))
    level = _severity(sigma, 15.0, 30.0)
    return rng.choice(
        (
            f"{_adj(rng, level)} Gaussian {colour} noise (about {sigma:.0f} of 255 grey levels) "
            "covers the whole frame and hides fine texture",
            f"the whole image is grainy with {_adj(rng, level)} random {colour} noise",
        )
    )


def _describe_jpeg(p: Step, rng: random.Random) -> str:
    quality = int(p.get("quality", 25))
    level = _severity(quality, 25, 15, reverse=True)
    return (
        f"{_adj(rng, level)} JPEG compression (quality about {quality}) leaves 8x8 blocking "
        "in smooth areas and ringing along edges"
    )


def _describe_motion_blur(p: Step, rng: random.Random) -> str:
    level = _severity(float(p.get("radius", 10)), 9, 14)
    direction = _direction(float(p.get("angle", 0.0)))
    return rng.choice(
        (
            f"{_adj(rng, level)} motion blur smears edges along a {direction} direction",
            f"camera motion has left a {_adj(rng, level)} {direction} blur over the scene",
        )
    )


def _describe_defocus(p: Step, rng: random.Random) -> str:
    level = _severity(float(p.get("radius", 4)), 3.5, 5.0)
    return rng.choice(
        (
            f"the image is {_adv(rng, level)} out of focus, so edges and textures look soft",
            f"{_adj(rng, level)} defocus blur softens every edge uniformly",
        )
    )


def _describe_low_resolution(p: Step, rng: random.Random) -> str:
    factor = float(p.get("factor", 0.5))
    share = {2: "half", 3: "a third", 4: "a quarter"}.get(round(1 / factor), f"{factor:.2f}x")
    return (
        f"the image was reduced to {share} of its size, so it has low resolution: "
        "fine detail is missing and edges are soft and jagged"
    )


def _describe_low_light(p: Step, rng: random.Random) -> str:
    mode = p.get("mode")
    strong = (
        (mode == "shift" and float(p.get("shift", 0)) >= 40)
        or (mode == "gamma" and float(p.get("gamma", 1)) < 0.6)
        or (mode == "linear" and float(p.get("max_value", 255)) < 125)
        or (mode == "retinex" and float(p.get("exponent", 0)) >= 2.5)
    )
    level = "strong" if strong else "moderate"
    text = rng.choice(
        (
            f"the scene is {_adv(rng, level)} underexposed, as if shot in low light, "
            "so shadows are crushed and details disappear in the dark",
            f"{_adj(rng, level)} low-light underexposure makes the whole image dark and dull",
        )
    )
    if mode == "retinex":
        text += ", with added noise in the dark regions"
    return text


def _describe_over_exposure(p: Step, rng: random.Random) -> str:
    ev = float(p.get("ev", 1.5))
    level = _severity(ev, 1.4, 2.0)
    return (
        f"{_adj(rng, level)} overexposure (about {ev:.1f} stops too bright) washes out the "
        "colours and blows out the highlights"
    )


def _describe_lost_color(p: Step, rng: random.Random) -> str:
    return rng.choice(
        (
            "all colour is lost: the image is grayscale, with only brightness left",
            "the photo is black and white, every colour having been removed",
        )
    )


def _describe_flare(p: Step, rng: random.Random) -> str:
    where = _position(float(p.get("x", 0.5)), float(p.get("y", 0.3)))
    level = _severity(float(p.get("intensity", 1.0)), 0.8, 1.2)
    text = f"a {_adj(rng, level)} lens flare near the {where} adds a bright glow"
    streaks = int(p.get("streaks", 0) or 0)
    if streaks:
        text += f" with {streaks} star streaks"
    ghosts = int(p.get("ghosts", 0) or 0)
    if ghosts:
        text += f" and {ghosts} coloured ghost spots across the frame"
    return text


def _describe_haze(p: Step, rng: random.Random) -> str:
    level = _severity(float(p.get("beta", 1.2)), 0.9, 1.4)
    return rng.choice(
        (
            f"a {_adj(rng, level)} haze veils the scene, lowering contrast and fading the "
            "distant parts to a whitish grey",
            f"{_adj(rng, level)} fog-like haze reduces contrast and colour saturation, "
            "more so farther away",
        )
    )


def _describe_nonhomogeneous_haze(p: Step, rng: random.Random) -> str:
    level = _severity(float(p.get("beta", 1.6)), 1.3, 2.0)
    return (
        f"{_adj(rng, level)} non-homogeneous haze lies over the scene in uneven patches, "
        "thick in some regions and thin in others"
    )


def _describe_rain(p: Step, rng: random.Random) -> str:
    density = float(p.get("threshold", 0.75))
    level = _severity(density, 0.65, 0.85)
    angle = float(p.get("angle", 0.0))
    slant = "almost vertical" if abs(angle) < 8 else "slanted"
    return rng.choice(
        (
            f"{_adj(rng, level)} rain streaks, {slant} and bright, cross the whole image",
            f"the image is covered by {_adj(rng, level)} {slant} rain streaks that hide detail",
        )
    )


def _describe_snow(p: Step, rng: random.Random) -> str:
    level = _severity(float(p.get("density", 0.8)), 0.6, 0.95)
    text = f"{_adj(rng, level)} falling snow scatters white snowflakes of several sizes"
    if float(p.get("veil", 0.0)) > 0.08:
        text += " and leaves a faint whitish veil"
    return text


def _describe_raindrop(p: Step, rng: random.Random) -> str:
    count = int(p.get("count", 20))
    amount = "a few" if count < 18 else "many" if count > 30 else "several"
    return f"{amount} raindrops on the lens distort and blur small round regions of the scene"


def _describe_underwater(p: Step, rng: random.Random) -> str:
    water = "blue" if p.get("water") == "blue" else "green"
    level = _severity(float(p.get("distance", 5.0)), 4.0, 6.5)
    return (
        f"an underwater {water} colour cast with {_adj(rng, level)} turbidity absorbs the "
        "reds and lowers contrast"
    )


def _describe_watermark(p: Step, rng: random.Random) -> str:
    opacity = float(p.get("opacity", 0.5))
    visibility = "faint" if opacity < 0.4 else "clearly visible" if opacity < 0.6 else "bold"
    text = p.get("text")
    reading = f" reading '{text}'" if isinstance(text, str) and text else ""
    if p.get("tiled"):
        return f"a {visibility} semi-transparent watermark{reading} is repeated across the image"
    return f"a {visibility} semi-transparent watermark{reading} is stamped over the image"


_DESCRIBERS: dict[str, Callable[[Step, random.Random], str]] = {
    D.NOISE: _describe_noise,
    D.JPEG: _describe_jpeg,
    D.MOTION_BLUR: _describe_motion_blur,
    D.DEFOCUS_BLUR: _describe_defocus,
    D.LOW_RESOLUTION: _describe_low_resolution,
    D.LOW_LIGHT: _describe_low_light,
    D.OVER_EXPOSURE: _describe_over_exposure,
    D.LOST_COLOR: _describe_lost_color,
    D.FLARE: _describe_flare,
    D.HAZE: _describe_haze,
    D.NONHOMOGENEOUS_HAZE: _describe_nonhomogeneous_haze,
    D.RAIN: _describe_rain,
    D.SNOW: _describe_snow,
    D.RAINDROP: _describe_raindrop,
    D.UNDERWATER: _describe_underwater,
    D.WATERMARK: _describe_watermark,
}

#: Descriptions used when no recipe step is known (real captured pairs).
_GENERIC: dict[Degradation, tuple[str, ...]] = {
    D.LOW_LIGHT: ("the scene is underexposed, shot in low light with dark, murky shadows",),
    D.OVER_EXPOSURE: ("the image is overexposed, with washed-out colours and blown highlights",),
    D.HAZE: ("haze veils the scene and lowers its contrast",),
    D.NONHOMOGENEOUS_HAZE: ("non-homogeneous haze covers the scene in uneven patches",),
    D.RAIN: ("rain streaks cross the image and hide detail",),
    D.RAINDROP: ("raindrops on the lens distort small regions of the scene",),
    D.SNOW: ("falling snow scatters white flakes over the scene",),
    D.REFLECTION: (
        "reflections from the glass in front of the camera overlay a second, faint scene",
        "a reflection on the glass is superimposed on the scene behind it",
    ),
    D.SHADOW: (
        "a cast shadow darkens part of the scene and hides its true colours",
        "part of the image lies under a cast shadow that is much darker than its surroundings",
    ),
    D.MOTION_BLUR: ("motion blur smears the edges of the scene",),
    D.DEFOCUS_BLUR: ("the image is out of focus and its edges look soft",),
    D.LOW_RESOLUTION: ("the image has low resolution and lacks fine detail",),
    D.NOISE: ("noise makes the image grainy",),
    D.UNDERWATER: ("an underwater colour cast and turbidity lower colour fidelity and contrast",),
    D.FLARE: ("a lens flare adds a bright glow and streaks",),
    D.WATERMARK: ("a semi-transparent watermark is stamped over the image",),
    D.SMARTPHONE: (
        "the picture has smartphone-camera quality: limited dynamic range, some noise, "
        "soft detail and dull colours",
        "taken with a phone camera, the image shows muted colours, limited dynamic range "
        "and noisy, soft textures",
    ),
    D.LOST_COLOR: ("the image is grayscale, with all colour lost",),
    D.JPEG: ("JPEG compression leaves blocking and ringing artifacts",),
}

#: What each fix achieves, for the final answer.
_RESULTS: dict[Degradation, str] = {
    D.LOW_LIGHT: "properly exposed",
    D.OVER_EXPOSURE: "balanced in exposure",
    D.HAZE: "free of haze",
    D.NONHOMOGENEOUS_HAZE: "free of the patchy haze",
    D.RAIN: "free of rain streaks",
    D.RAINDROP: "free of raindrops",
    D.SNOW: "free of snow",
    D.REFLECTION: "free of reflections",
    D.SHADOW: "evenly lit without the shadow",
    D.MOTION_BLUR: "sharp without motion blur",
    D.DEFOCUS_BLUR: "in sharp focus",
    D.LOW_RESOLUTION: "rich in high-resolution detail",
    D.NOISE: "free of noise",
    D.UNDERWATER: "true in colour without the underwater cast",
    D.FLARE: "free of lens flare",
    D.WATERMARK: "free of the watermark",
    D.SMARTPHONE: "of DSLR-like quality",
    D.LOST_COLOR: "in natural colour",
    D.JPEG: "free of compression artifacts",
}

_PRESERVE = (
    "keeping the scene content, colours and fine textures intact",
    "while preserving the original structure and natural colours",
    "without altering the content or inventing new details",
    "keeping edges, textures and colour balance faithful to the scene",
)

_TAILS = (
    "with natural colours and clear detail",
    "with clean edges and faithful colours",
    "looking natural and sharp",
    "with its original content intact",
)

_HUES = (
    (15, "red"),
    (45, "orange"),
    (70, "yellow"),
    (160, "green"),
    (200, "cyan"),
    (260, "blue"),
    (300, "purple"),
    (345, "magenta"),
    (361, "red"),
)


def scene_statistics(png: bytes) -> dict[str, float | str]:
    """Brightness, colourfulness, dominant hue and texture of an image (PNG bytes).

    Computed on a 64x64 thumbnail: cheap, deterministic, and enough for the words
    the template uses. Raises ValueError for bytes Pillow cannot read.
    """
    try:
        with Image.open(io.BytesIO(png)) as image:
            thumb = image.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    except Exception as error:
        raise ValueError(f"cannot read image: {error}") from None
    rgb = np.asarray(thumb, dtype=np.float64) / 255.0
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    colourfulness = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
    mean_colour = rgb.reshape(-1, 3)
    saturation = mean_colour.max(axis=1) - mean_colour.min(axis=1)
    vivid = mean_colour[saturation > 0.12]
    hue_name = "neutral"
    if len(vivid) >= 0.08 * len(mean_colour):
        hues = np.array([colorsys.rgb_to_hsv(*pixel)[0] * 360.0 for pixel in vivid])
        histogram = np.histogram(hues, bins=36, range=(0, 360))[0]
        peak = (int(np.argmax(histogram)) + 0.5) * 10.0
        hue_name = next(name for limit, name in _HUES if peak < limit)
    gradient = float(np.abs(np.diff(luma, axis=0)).mean() + np.abs(np.diff(luma, axis=1)).mean())
    top, bottom = luma[:21].mean(), luma[-21:].mean()
    return {
        "brightness": float(luma.mean()),
        "colourfulness": colourfulness,
        "hue": hue_name,
        "texture": gradient,
        "top_minus_bottom": float(top - bottom),
    }


def describe_scene(stats: Mapping[str, float | str], rng: random.Random) -> str:
    """A scene sentence from :func:`scene_statistics` (photographic terms, no objects)."""
    brightness = float(stats["brightness"])
    light = (
        "a dim" if brightness < 0.3 else "a brightly lit" if brightness > 0.62 else "an evenly lit"
    )
    colourfulness = float(stats["colourfulness"])
    colours = (
        "muted, nearly neutral colours"
        if colourfulness < 0.08
        else "vivid, saturated colours"
        if colourfulness > 0.25
        else "moderately saturated colours"
    )
    hue = str(stats["hue"])
    tones = "neutral grey and white tones" if hue == "neutral" else f"{hue} tones"
    texture = float(stats["texture"])
    detail = (
        "large smooth areas"
        if texture < 0.03
        else "dense, fine texture throughout"
        if texture > 0.08
        else "a mix of smooth regions and detailed structures"
    )
    layout = ""
    difference = float(stats["top_minus_bottom"])
    if difference > 0.12:
        layout = " The upper part is clearly brighter than the lower part, as with an open sky."
    elif difference < -0.12:
        layout = " The lower part is brighter than the upper part."
    sentence = rng.choice(
        (
            f"A photograph of {light} scene dominated by {tones}, with {colours} and {detail}.",
            f"{light.capitalize()} scene in {tones}: {colours}, {detail}.",
            f"The clean image shows {light} scene with {colours}, mostly {tones}, and {detail}.",
        )
    )
    return sentence + layout


def _steps_for(
    parts: Sequence[Degradation], recipe: Sequence[Step]
) -> list[tuple[Degradation, Step | None]]:
    """Pair each label part with its applied recipe step (None when there is none)."""
    ops = [str(step.get("op")) for step in recipe]
    if ops == [part.value for part in parts]:
        return [
            (part, dict(step.get("params") or {})) for part, step in zip(parts, recipe, strict=True)
        ]
    return [(part, None) for part in parts]


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def template_answer(request: AnnotationRequest, version: str) -> CotAnswer:
    """The deterministic answer for one request (see the module docstring)."""
    seed = int.from_bytes(hashlib.sha256(f"{request.sample_id}|{version}".encode()).digest()[:8])
    rng = random.Random(seed)
    parts = parse_degradation_label(request.degradation_label)
    steps = _steps_for(parts, request.recipe)

    vague = rng.choice(gen_prompts())
    if len(parts) == 1:
        precise = rng.choice(spe_prompts(parts[0]))
    else:
        actions = [rng.choice(ACTIONS[part]) for part in parts]
        joined = ", ".join(actions[:-1]) + " and " + actions[-1]
        frame = rng.choice(("Please {}.", "{} in this photo.", "In this image, {}."))
        precise = _sentence(frame.format(joined))

    clauses = []
    for part, params in steps:
        describer = _DESCRIBERS.get(part)
        if params is not None and describer is not None:
            clauses.append(describer(params, rng))
        else:
            clauses.append(rng.choice(_GENERIC[part]))
    degradation = " ".join(_sentence(clause) for clause in clauses)

    order = list(reversed(parts))  # undo the last-applied degradation first
    if len(order) == 1:
        plan = f"{rng.choice(ACTIONS[order[0]])}, {rng.choice(_PRESERVE)}"
    else:
        words = ["first"] + ["then"] * (len(order) - 2) + ["finally"]
        steps_text = [
            f"{word}, {rng.choice(ACTIONS[part])}" for word, part in zip(words, order, strict=True)
        ]
        plan = "; ".join(steps_text) + f", {rng.choice(_PRESERVE)}"
    results = [_RESULTS[part] for part in parts]
    if len(results) > 1:
        results = [", ".join(results[:-1]) + " and " + results[-1]]
    answer = f"The restored image shows the same scene {results[0]}, {rng.choice(_TAILS)}."

    return CotAnswer(
        vague_question=vague,
        precise_question=precise,
        scene=describe_scene(scene_statistics(request.hq_png), rng),
        degradation=degradation,
        plan=_sentence(plan),
        answer=answer,
    )


class TemplateBackend:
    """The demo profile's :class:`~cotir_pipeline.annotation.base.AnnotationBackend`."""

    def __init__(self) -> None:
        self._version: str | None = None

    @property
    def model(self) -> str:
        """Recorded as the annotating model."""
        return TEMPLATE_MODEL

    @property
    def template_version(self) -> str:
        """Logic version plus the digest of the prompt lists it draws from."""
        if self._version is None:
            self._version = f"{TEMPLATE_BACKEND_VERSION}+{prompt_lists_version()}"
        return self._version

    def annotate(self, requests: Sequence[AnnotationRequest]) -> list[AnnotationResult]:
        """One result per request; an unreadable HQ image becomes a failed result."""
        check_unique_ids(requests)
        results = []
        for request in requests:
            started = time.perf_counter()
            try:
                answer = template_answer(request, self.template_version)
            except ValueError as error:
                results.append(
                    AnnotationResult(
                        sample_id=request.sample_id,
                        status=STATUS_FAILED,
                        answer=None,
                        reason=f"template: {error}",
                        model=self.model,
                        template_version=self.template_version,
                        attempts=1,
                        latency_s=time.perf_counter() - started,
                    )
                )
                continue
            raw = answer.model_dump_json()
            results.append(
                AnnotationResult(
                    sample_id=request.sample_id,
                    status=STATUS_OK,
                    answer=answer,
                    reason=None,
                    model=self.model,
                    template_version=self.template_version,
                    raw_response=raw,
                    response_sha256=sha256_text(raw),
                    attempts=1,
                    latency_s=time.perf_counter() - started,
                )
            )
        return results
