"""Words for degradations: display names, keyword patterns, action phrases, related groups.

One table per use, keyed by :class:`~cotir_pipeline.tasks.Degradation`, so that the
VLM instruction, the template backend and the rule checks all speak about a
degradation in the same terms. A test checks that every table covers every value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache

from cotir_pipeline.tasks import Degradation

D = Degradation

#: How a degradation is named in prose (the VLM instruction, template answers).
DISPLAY_NAMES: dict[Degradation, str] = {
    D.LOW_LIGHT: "low light (underexposure)",
    D.OVER_EXPOSURE: "overexposure",
    D.HAZE: "haze",
    D.NONHOMOGENEOUS_HAZE: "non-homogeneous (patchy) haze",
    D.RAIN: "rain streaks",
    D.RAINDROP: "raindrops on the lens",
    D.SNOW: "falling snow",
    D.REFLECTION: "reflections from glass",
    D.SHADOW: "cast shadows",
    D.MOTION_BLUR: "motion blur",
    D.DEFOCUS_BLUR: "defocus blur",
    D.LOW_RESOLUTION: "low resolution",
    D.NOISE: "noise",
    D.UNDERWATER: "underwater colour cast and turbidity",
    D.FLARE: "lens flare",
    D.WATERMARK: "a watermark",
    D.SMARTPHONE: "smartphone-camera quality (limited detail, dynamic range and colour)",
    D.LOST_COLOR: "lost colour (grayscale)",
    D.JPEG: "JPEG compression artifacts",
}

#: Regular expressions (matched case-insensitively, on word boundaries) whose presence
#: in a text counts as naming the degradation. British and American spellings both count.
KEYWORDS: dict[Degradation, tuple[str, ...]] = {
    D.LOW_LIGHT: (
        r"low[- ]light",
        r"dark(?:ness|ened|er)?",
        r"dim(?:ly)?(?: lit)?",
        r"under[- ]?expos(?:ed|ure)",
        r"poor(?:ly)? (?:light|lit|lighting)",
        r"night(?:[- ]time)?",
        r"insufficient (?:light|lighting|illumination)",
        r"(?:too )?little light",
    ),
    D.OVER_EXPOSURE: (
        r"over[- ]?expos(?:ed|ure)",
        r"blown[- ]out",
        r"washed[- ]out",
        r"too bright",
        r"overly bright",
        r"(?:excessive|too much) (?:exposure|light)",
        r"(?:lower|reduce|balance) the exposure",
        r"excessive(?:ly)? bright(?:ness)?",
        r"(?:clipped|saturated|blown) highlights",
    ),
    D.HAZE: (r"haz(?:e|y|iness)", r"dehaz(?:e|ed|ing)", r"fog(?:gy)?", r"mist(?:y)?", r"smog"),
    D.NONHOMOGENEOUS_HAZE: (
        r"non[- ]?homogeneous",
        r"(?:uneven|patchy|non[- ]?uniform|irregular)(?:ly distributed)? (?:haze|fog|mist)",
        r"haz(?:e|y|iness)",
        r"dehaz(?:e|ed|ing)",
        r"fog(?:gy)?",
        r"mist(?:y)?",
    ),
    D.RAIN: (
        r"rain(?:y|fall)?",
        r"rain[- ]?streaks?",
        r"streaks? of rain",
        r"derain(?:ed|ing)?",
        r"drizzle",
    ),
    D.RAINDROP: (
        r"rain[- ]?drops?",
        r"(?:water )?droplets?",
        r"water drops?",
        r"drops? (?:on|of water)",
    ),
    D.SNOW: (r"snow(?:y|fall|flakes?)?", r"desnow(?:ed|ing)?", r"flakes"),
    D.REFLECTION: (r"reflect(?:ion|ions|ed|ive)", r"mirror(?:ed)?"),
    D.SHADOW: (r"shadow(?:s|ed|y)?", r"shaded"),
    D.MOTION_BLUR: (
        r"motion[- ]blur(?:red)?",
        r"blur(?:s|red|ry|riness)?",
        r"deblur(?:red|ring)?",
        r"motion",
        r"moving",
        r"camera shake",
        r"shak(?:e|en|y)",
        r"smear(?:ed|ing|s)?",
    ),
    D.DEFOCUS_BLUR: (
        r"defocus(?:ed)?",
        r"out[- ]of[- ]focus",
        r"(?:not|never) in focus",
        r"blur(?:s|red|ry|riness)?",
        r"deblur(?:red|ring)?",
        r"soft focus",
        r"unsharp",
    ),
    D.LOW_RESOLUTION: (
        r"low[- ]resolution",
        r"(?:limited|reduced|poor) resolution",
        r"(?:increase|improve|enhance|raise|high) (?:the )?resolution",
        r"upsampl(?:e|ed|ing)",
        r"low[- ]detail",
        r"pixelat(?:ed|ion)",
        r"down[- ]?(?:sampl|scal)(?:ed|ing)",
        r"lacks? (?:fine )?detail",
        r"super[- ]resol(?:ution|ve)",
        r"upscal(?:e|ed|ing)",
    ),
    D.NOISE: (
        r"nois(?:e|y|iness)",
        r"denois(?:e|ed|ing)",
        r"grain(?:y|iness)?",
        r"speckl(?:e|ed|es)",
    ),
    D.UNDERWATER: (
        r"under[- ]?water",
        r"(?:blue|green|bluish|greenish|blue-green)(?:ish)? (?:colou?r )?(?:cast|tint)",
        r"turbid(?:ity)?",
        r"murk(?:y|iness)?",
        r"(?:caused by|in|through) (?:the )?water",
    ),
    D.FLARE: (r"(?:lens )?flares?", r"glare", r"ghost(?:s|ing)?", r"halos?"),
    D.WATERMARK: (
        r"water[- ]?marks?(?:ed)?",
        r"text overlay",
        r"(?:overlaid|translucent|semi-transparent) text",
        r"logo",
    ),
    D.SMARTPHONE: (
        r"smart[- ]?phone",
        r"(?:mobile )?phone",
        r"mobile",
        r"dslr",
        r"(?:limited|narrow|poor|low) dynamic range",
        r"(?:dull|muted|flat) colou?rs?",
        r"small sensor",
    ),
    D.LOST_COLOR: (
        r"gr[ae]y[- ]?scale",
        r"black[- ](?:and|&)[- ]white",
        r"monochrome",
        r"colou?rless",
        r"(?:lost|lacks?|no|missing) colou?rs?",
        r"desaturated",
        r"colou?ri[sz](?:e|ed|ation)",
    ),
    D.JPEG: (
        r"jpe?g",
        r"compression",
        r"compressed",
        r"block(?:y|iness|ing)",
        r"block artifacts?",
        r"ringing",
    ),
}

#: The unambiguous subset of :data:`KEYWORDS`: a degradation description that uses one
#: of these for a degradation that is not labelled (and not related to a label) disagrees
#: with the labels. Broad words ("dark", "blurry", "shadows") are left out on purpose.
STRICT_KEYWORDS: dict[Degradation, tuple[str, ...]] = {
    D.LOW_LIGHT: (r"low[- ]light", r"under[- ]?expos(?:ed|ure)"),
    D.OVER_EXPOSURE: (r"over[- ]?expos(?:ed|ure)", r"blown[- ]out highlights"),
    D.HAZE: (r"haz(?:e|y)", r"fog(?:gy)?"),
    D.NONHOMOGENEOUS_HAZE: (r"non[- ]?homogeneous (?:haze|fog)",),
    D.RAIN: (r"rain[- ]?streaks?", r"falling rain"),
    D.RAINDROP: (r"rain[- ]?drops?", r"water droplets?"),
    D.SNOW: (r"snow(?:fall|flakes?)?",),
    D.REFLECTION: (r"reflections? (?:from|on|in) (?:the )?(?:glass|window)",),
    D.SHADOW: (r"cast shadows?",),
    D.MOTION_BLUR: (r"motion[- ]blur(?:red)?", r"camera shake"),
    D.DEFOCUS_BLUR: (r"defocus(?:ed)?(?: blur)?", r"out[- ]of[- ]focus"),
    D.LOW_RESOLUTION: (r"low[- ]resolution", r"pixelat(?:ed|ion)"),
    D.NOISE: (r"nois(?:e|y)", r"grain(?:y|iness)"),
    D.UNDERWATER: (r"under[- ]?water",),
    D.FLARE: (r"lens flares?", r"flares?"),
    D.WATERMARK: (r"water[- ]?marks?(?:ed)?",),
    D.SMARTPHONE: (r"smart[- ]?phone",),
    D.LOST_COLOR: (r"gr[ae]y[- ]?scale", r"black[- ](?:and|&)[- ]white", r"monochrome"),
    D.JPEG: (r"jpe?g", r"compression artifacts?", r"block(?:y|ing) artifacts?"),
}

#: Degradations that are often named together: naming one of a group while another
#: member is labelled is not a disagreement (a dark photo is usually also noisy, a
#: raindrop photo may be described as "rain drops", snow leaves a hazy veil...).
RELATED_GROUPS: tuple[frozenset[Degradation], ...] = (
    frozenset({D.HAZE, D.NONHOMOGENEOUS_HAZE, D.UNDERWATER, D.SNOW}),
    frozenset({D.RAIN, D.RAINDROP}),
    frozenset({D.MOTION_BLUR, D.DEFOCUS_BLUR, D.LOW_RESOLUTION, D.RAINDROP}),
    frozenset({D.LOW_LIGHT, D.NOISE, D.SMARTPHONE, D.UNDERWATER}),
    frozenset({D.FLARE, D.OVER_EXPOSURE, D.REFLECTION}),
    frozenset({D.SMARTPHONE, D.LOW_RESOLUTION, D.JPEG, D.NOISE}),
    frozenset({D.SHADOW, D.LOW_LIGHT}),
)

#: Imperative clauses naming the fix for one degradation (the template backend joins
#: them into precise questions for composite labels); three variants each.
ACTIONS: dict[Degradation, tuple[str, ...]] = {
    D.LOW_LIGHT: (
        "brighten the underexposed scene",
        "lift the dark, low-light exposure",
        "correct the low-light underexposure",
    ),
    D.OVER_EXPOSURE: (
        "tone down the overexposure",
        "recover the washed-out highlights",
        "reduce the excessive exposure",
    ),
    D.HAZE: ("remove the haze", "clear the fog", "dehaze the scene"),
    D.NONHOMOGENEOUS_HAZE: (
        "remove the patchy haze",
        "clear the uneven, non-homogeneous haze",
        "dehaze the non-uniform fog",
    ),
    D.RAIN: ("remove the rain streaks", "erase the falling rain", "derain the image"),
    D.RAINDROP: (
        "remove the raindrops on the lens",
        "clean off the water droplets",
        "erase the raindrop spots",
    ),
    D.SNOW: ("remove the falling snow", "erase the snowflakes", "desnow the scene"),
    D.REFLECTION: (
        "remove the glass reflections",
        "suppress the reflected layer",
        "erase the reflections",
    ),
    D.SHADOW: ("remove the cast shadow", "brighten the shadowed region", "erase the shadows"),
    D.MOTION_BLUR: (
        "remove the motion blur",
        "undo the camera-shake blur",
        "deblur the smeared motion",
    ),
    D.DEFOCUS_BLUR: (
        "sharpen the out-of-focus blur",
        "remove the defocus blur",
        "refocus the blurry image",
    ),
    D.LOW_RESOLUTION: (
        "restore the detail lost to low resolution",
        "super-resolve the low-resolution image",
        "upscale the image and recover fine detail",
    ),
    D.NOISE: ("remove the noise", "suppress the grainy noise", "denoise the image"),
    D.UNDERWATER: (
        "correct the underwater colour cast",
        "remove the blue-green underwater tint",
        "restore the colours and contrast lost underwater",
    ),
    D.FLARE: ("remove the lens flare", "suppress the flare and glare", "erase the flare streaks"),
    D.WATERMARK: (
        "remove the watermark",
        "erase the overlaid watermark text",
        "clean off the watermark logo",
    ),
    D.SMARTPHONE: (
        "raise the smartphone photo to DSLR quality",
        "give the phone picture DSLR-like detail and colour",
        "improve the dynamic range and colours of the smartphone shot",
    ),
    D.LOST_COLOR: (
        "colourize the grayscale image",
        "restore the lost colours",
        "add natural colours to the black-and-white picture",
    ),
    D.JPEG: (
        "remove the JPEG compression artifacts",
        "clean up the JPEG blocking",
        "reduce the compression blocking and ringing",
    ),
}


@cache
def keyword_pattern(degradation: Degradation, strict: bool = False) -> re.Pattern[str]:
    """One compiled case-insensitive pattern matching any keyword of ``degradation``."""
    table = STRICT_KEYWORDS if strict else KEYWORDS
    alternatives = "|".join(f"(?:{item})" for item in table[Degradation(degradation)])
    return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)


def names(degradation: Degradation, text: str, *, strict: bool = False) -> bool:
    """Whether ``text`` names ``degradation`` by one of its (strict) keywords."""
    return keyword_pattern(degradation, strict).search(text) is not None


def related(parts: Iterable[Degradation]) -> set[Degradation]:
    """The labelled parts plus every degradation sharing a related group with one of them."""
    labelled = {Degradation(part) for part in parts}
    found = set(labelled)
    for group in RELATED_GROUPS:
        if group & labelled:  # one step only: relations are not transitive
            found |= group
    return found


def display_list(parts: Iterable[Degradation]) -> str:
    """Display names joined as prose: ``"haze, rain streaks and noise"``."""
    shown = [DISPLAY_NAMES[Degradation(part)] for part in parts]
    if not shown:
        raise ValueError("no degradation given")
    if len(shown) == 1:
        return shown[0]
    return ", ".join(shown[:-1]) + " and " + shown[-1]
