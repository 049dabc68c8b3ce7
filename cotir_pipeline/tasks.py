"""The shared vocabulary: CoTIR-Bench task codes and atomic degradation types.

Every stage names degradations with :class:`Degradation` values (they are the
shard folder names, the prompt file names and the ``deg`` field of a sample),
and groups them into the benchmark's task codes with :data:`TASK_OF_DEGRADATION`.
A composite degradation is the ordered tuple of its atomic parts, written
``"low_light+noise"`` (order = order of application).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from enum import StrEnum


class TaskCode(StrEnum):
    """The 19 task codes of CoTIR-Bench."""

    MDR = "MDR"
    LLE = "LLE"
    LA = "LA"
    DH = "DH"
    NHDH = "NHDH"
    DR = "DR"
    DRD = "DRD"
    DS = "DS"
    RR = "RR"
    DSH = "DSH"
    DB = "DB"
    SR = "SR"
    DN = "DN"
    UE = "UE"
    DF = "DF"
    DW = "DW"
    DSLR = "DSLR"
    C = "C"
    JPEG = "JPEG"


TASK_DESCRIPTIONS: dict[TaskCode, str] = {
    TaskCode.MDR: "multiple (composite) degradations",
    TaskCode.LLE: "low-light enhancement",
    TaskCode.LA: "light adjustment (over-exposure)",
    TaskCode.DH: "dehazing",
    TaskCode.NHDH: "non-homogeneous dehazing",
    TaskCode.DR: "rain streak removal",
    TaskCode.DRD: "raindrop removal",
    TaskCode.DS: "desnowing",
    TaskCode.RR: "reflection removal",
    TaskCode.DSH: "shadow removal",
    TaskCode.DB: "deblurring",
    TaskCode.SR: "super-resolution",
    TaskCode.DN: "denoising",
    TaskCode.UE: "underwater enhancement",
    TaskCode.DF: "flare removal",
    TaskCode.DW: "watermark removal",
    TaskCode.DSLR: "smartphone-to-DSLR enhancement",
    TaskCode.C: "colourization (lost colour)",
    TaskCode.JPEG: "JPEG artifact removal",
}


class Degradation(StrEnum):
    """Atomic degradation types; the values are folder, prompt-file and label names."""

    LOW_LIGHT = "low_light"
    OVER_EXPOSURE = "over_exposure"
    HAZE = "haze"
    NONHOMOGENEOUS_HAZE = "nonhomogeneous_haze"
    RAIN = "rain"
    RAINDROP = "raindrop"
    SNOW = "snow"
    REFLECTION = "reflection"
    SHADOW = "shadow"
    MOTION_BLUR = "motion_blur"
    DEFOCUS_BLUR = "defocus_blur"
    LOW_RESOLUTION = "low_resolution"
    NOISE = "noise"
    UNDERWATER = "underwater"
    FLARE = "flare"
    WATERMARK = "watermark"
    SMARTPHONE = "smartphone"
    LOST_COLOR = "lost_color"
    JPEG = "jpeg"


TASK_OF_DEGRADATION: dict[Degradation, TaskCode] = {
    Degradation.LOW_LIGHT: TaskCode.LLE,
    Degradation.OVER_EXPOSURE: TaskCode.LA,
    Degradation.HAZE: TaskCode.DH,
    Degradation.NONHOMOGENEOUS_HAZE: TaskCode.NHDH,
    Degradation.RAIN: TaskCode.DR,
    Degradation.RAINDROP: TaskCode.DRD,
    Degradation.SNOW: TaskCode.DS,
    Degradation.REFLECTION: TaskCode.RR,
    Degradation.SHADOW: TaskCode.DSH,
    Degradation.MOTION_BLUR: TaskCode.DB,
    Degradation.DEFOCUS_BLUR: TaskCode.DB,
    Degradation.LOW_RESOLUTION: TaskCode.SR,
    Degradation.NOISE: TaskCode.DN,
    Degradation.UNDERWATER: TaskCode.UE,
    Degradation.FLARE: TaskCode.DF,
    Degradation.WATERMARK: TaskCode.DW,
    Degradation.SMARTPHONE: TaskCode.DSLR,
    Degradation.LOST_COLOR: TaskCode.C,
    Degradation.JPEG: TaskCode.JPEG,
}

COMPOSITE_SEPARATOR = "+"


#: Spellings other bench sets and datasets use for this project's degradation names
#: (after lower-casing and turning '-' and spaces into '_'). Only unambiguous ones: a
#: plain "blur" is motion blur, as in the deblurring sets (GoPro, RealBlur) it names.
DEGRADATION_ALIASES: dict[str, Degradation] = {
    **{
        spelling: Degradation.LOW_LIGHT
        for spelling in ("lowlight", "low_light_enhancement", "dark", "lle", "low_illumination")
    },
    **{spelling: Degradation.OVER_EXPOSURE for spelling in ("overexposure", "over_exposed")},
    **{spelling: Degradation.HAZE for spelling in ("hazy", "fog", "foggy", "dehaze", "dehazing")},
    **{spelling: Degradation.NONHOMOGENEOUS_HAZE for spelling in ("non_homogeneous_haze",)},
    **{
        spelling: Degradation.RAIN
        for spelling in ("rainy", "rain_streak", "rain_streaks", "derain", "deraining")
    },
    **{spelling: Degradation.RAINDROP for spelling in ("rain_drop", "raindrops", "rain_drops")},
    **{spelling: Degradation.SNOW for spelling in ("snowy", "desnow", "desnowing")},
    **{spelling: Degradation.MOTION_BLUR for spelling in ("blur", "blurry", "motion", "deblur")},
    **{spelling: Degradation.DEFOCUS_BLUR for spelling in ("defocus", "out_of_focus")},
    **{
        spelling: Degradation.LOW_RESOLUTION
        for spelling in (
            "lowres",
            "low_res",
            "lr",
            "sr",
            "super_resolution",
            "downsample",
            "bicubic",
        )
    },
    **{
        spelling: Degradation.NOISE
        for spelling in ("noisy", "gaussian_noise", "gauss_noise", "denoise", "denoising")
    },
    **{
        spelling: Degradation.JPEG
        for spelling in (
            "jpg",
            "jpeg_artifact",
            "jpeg_artifacts",
            "compression",
            "jpeg_compression",
        )
    },
    **{spelling: Degradation.FLARE for spelling in ("lens_flare",)},
    **{spelling: Degradation.LOST_COLOR for spelling in ("grayscale", "gray", "colorization")},
}

#: Ways other sets join the parts of a composite label.
_COMPOSITE_SPLIT = re.compile(r"\+|_and_|,|&")


def _normalized(text: str) -> str:
    return re.sub(r"[\s\-]+", "_", text.strip().lower()).strip("_")


def normalize_degradation(text: str) -> Degradation | None:
    """This project's degradation for one label part in any common spelling
    (``Low-Light``, ``gaussian noise``, ``blur``), or None when it is not one."""
    name = _normalized(text)
    try:
        return Degradation(name)
    except ValueError:
        return DEGRADATION_ALIASES.get(name)


def split_degradation_label(label: str) -> list[tuple[str, Degradation | None]]:
    """The parts of a label as other sets write them (``+``, ``_and_``, ``,`` or ``&``
    between parts), each with the degradation it names or None when unknown."""
    pieces = [piece for piece in _COMPOSITE_SPLIT.split(_normalized(label)) if piece]
    return [(piece, normalize_degradation(piece)) for piece in pieces]


def composite_name(parts: Sequence[Degradation | str]) -> str:
    """Label of an ordered combination, e.g. ``low_light+noise``; a single part is itself."""
    if not parts:
        raise ValueError("a degradation label needs at least one part")
    return COMPOSITE_SEPARATOR.join(Degradation(part).value for part in parts)


def parse_degradation_label(label: str) -> tuple[Degradation, ...]:
    """Inverse of :func:`composite_name`; raises ValueError naming an unknown part."""
    parts = []
    for text in label.split(COMPOSITE_SEPARATOR):
        try:
            parts.append(Degradation(text))
        except ValueError:
            known = ", ".join(item.value for item in Degradation)
            message = f"unknown degradation {text!r} in {label!r} (known: {known})"
            raise ValueError(message) from None
    return tuple(parts)


def task_of(parts: Iterable[Degradation | str]) -> TaskCode:
    """Task code of a label: the atomic task, or MDR for two or more parts."""
    atoms = [Degradation(part) for part in parts]
    if not atoms:
        raise ValueError("no degradation given")
    if len(atoms) > 1:
        return TaskCode.MDR
    return TASK_OF_DEGRADATION[atoms[0]]
