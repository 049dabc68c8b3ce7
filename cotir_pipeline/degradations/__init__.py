"""Seeded, deterministic synthesis of image degradations and the benchmark recipe sets.

Operators (:mod:`.camera`, :mod:`.light`, :mod:`.weather`, :mod:`.overlay`,
registered in :data:`OPERATORS`) take an RGB float image in [0, 1] and an explicit
``numpy.random.Generator``, and return the degraded float32 image together with
the parameters they used. Recipes (:mod:`.recipes`) chain operators with
per-step seeded generators and record every applied parameter so a sample can be
replayed. Importing this package has no side effects. See docs/DEGRADATIONS.md.
"""

from cotir_pipeline.degradations.camera import (
    defocus_blur,
    jpeg,
    low_resolution,
    motion_blur,
    noise,
)
from cotir_pipeline.degradations.depth import dark_channel, depth_proxy, normalize_depth
from cotir_pipeline.degradations.light import flare, lost_color, low_light, over_exposure
from cotir_pipeline.degradations.operators import OPERATORS, OperatorSpec, get_operator
from cotir_pipeline.degradations.overlay import watermark
from cotir_pipeline.degradations.recipes import (
    RECIPE_SETS,
    AppliedStep,
    PlannedSample,
    Recipe,
    RecipeStep,
    agenticir_plan,
    apply_recipe,
    derive_seed,
    get_recipe,
    get_recipe_set,
    replay,
    step_rng,
)
from cotir_pipeline.degradations.samplers import Choice, Fixed, IntRange, OneOf, Params, Uniform
from cotir_pipeline.degradations.weather import (
    haze,
    nonhomogeneous_haze,
    rain,
    raindrop,
    snow,
    underwater,
)

__all__ = [
    "OPERATORS",
    "RECIPE_SETS",
    "AppliedStep",
    "Choice",
    "Fixed",
    "IntRange",
    "OneOf",
    "OperatorSpec",
    "Params",
    "PlannedSample",
    "Recipe",
    "RecipeStep",
    "Uniform",
    "agenticir_plan",
    "apply_recipe",
    "dark_channel",
    "defocus_blur",
    "depth_proxy",
    "derive_seed",
    "flare",
    "get_operator",
    "get_recipe",
    "get_recipe_set",
    "haze",
    "jpeg",
    "lost_color",
    "low_light",
    "low_resolution",
    "motion_blur",
    "noise",
    "nonhomogeneous_haze",
    "normalize_depth",
    "over_exposure",
    "rain",
    "raindrop",
    "replay",
    "snow",
    "step_rng",
    "underwater",
    "watermark",
]
