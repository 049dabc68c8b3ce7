"""The operator registry: every degradation operator by name, with its degradation type.

An operator is ``func(image, rng=None, **params) -> (degraded, params)``:
``image`` is RGB float in [0, 1] (HxWx3), the output is float32 in [0, 1] of the
same size (``low_resolution`` returns the smaller image), and ``params`` holds
every parameter used (drawn or given), JSON-serialisable. Operators that need
scene distance also take ``depth=``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from cotir_pipeline.degradations.camera import (
    DEFOCUS_BLUR,
    JPEG,
    LOW_RESOLUTION,
    MOTION_BLUR,
    NOISE,
    defocus_blur,
    jpeg,
    low_resolution,
    motion_blur,
    noise,
)
from cotir_pipeline.degradations.light import (
    FLARE,
    LOW_LIGHT,
    OVER_EXPOSURE,
    flare,
    lost_color,
    low_light,
    over_exposure,
)
from cotir_pipeline.degradations.overlay import WATERMARK, watermark
from cotir_pipeline.degradations.parameters import OperatorParams
from cotir_pipeline.degradations.weather import (
    HAZE,
    NONHOMOGENEOUS_HAZE,
    RAIN,
    RAINDROP,
    SNOW,
    UNDERWATER,
    haze,
    nonhomogeneous_haze,
    rain,
    raindrop,
    snow,
    underwater,
)
from cotir_pipeline.tasks import Degradation

OperatorFunc = Callable[..., tuple[np.ndarray, dict[str, Any]]]


@dataclass(frozen=True)
class OperatorSpec:
    """One registered operator.

    ``degradation`` is the :class:`~cotir_pipeline.tasks.Degradation` it
    synthesises (labels are built from it), ``uses_depth`` says it takes a
    ``depth=`` map, and ``random`` says its output depends on the drawn seed.
    ``params`` is its parameter table: each parameter's default draw and limits.
    """

    name: str
    degradation: Degradation
    func: OperatorFunc
    params: OperatorParams | None = None
    uses_depth: bool = False
    random: bool = True

    def __call__(
        self,
        image: np.ndarray,
        rng: np.random.Generator | None = None,
        **params: Any,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Run the operator (see the module docstring for the contract)."""
        if not self.uses_depth and "depth" in params:
            raise ValueError(f"operator {self.name!r} takes no depth map")
        return self.func(image, rng, **params)


def _spec(
    func: OperatorFunc,
    degradation: Degradation,
    params: OperatorParams | None,
    *,
    uses_depth: bool = False,
    random: bool = True,
) -> OperatorSpec:
    return OperatorSpec(
        func.__name__, degradation, func, params, uses_depth=uses_depth, random=random
    )


OPERATORS: Mapping[str, OperatorSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            _spec(noise, Degradation.NOISE, NOISE),
            _spec(jpeg, Degradation.JPEG, JPEG),
            _spec(motion_blur, Degradation.MOTION_BLUR, MOTION_BLUR),
            _spec(defocus_blur, Degradation.DEFOCUS_BLUR, DEFOCUS_BLUR),
            _spec(low_resolution, Degradation.LOW_RESOLUTION, LOW_RESOLUTION),
            _spec(low_light, Degradation.LOW_LIGHT, LOW_LIGHT),
            _spec(over_exposure, Degradation.OVER_EXPOSURE, OVER_EXPOSURE),
            _spec(lost_color, Degradation.LOST_COLOR, None, random=False),
            _spec(flare, Degradation.FLARE, FLARE),
            _spec(haze, Degradation.HAZE, HAZE, uses_depth=True),
            _spec(
                nonhomogeneous_haze,
                Degradation.NONHOMOGENEOUS_HAZE,
                NONHOMOGENEOUS_HAZE,
                uses_depth=True,
            ),
            _spec(rain, Degradation.RAIN, RAIN),
            _spec(snow, Degradation.SNOW, SNOW),
            _spec(raindrop, Degradation.RAINDROP, RAINDROP),
            _spec(underwater, Degradation.UNDERWATER, UNDERWATER, uses_depth=True),
            _spec(watermark, Degradation.WATERMARK, WATERMARK),
        )
    }
)


def get_operator(name: str) -> OperatorSpec:
    """The registered operator called ``name``; KeyError lists the known names."""
    try:
        return OPERATORS[name]
    except KeyError:
        known = ", ".join(sorted(OPERATORS))
        raise KeyError(f"unknown degradation operator {name!r} (known: {known})") from None
