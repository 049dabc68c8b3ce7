"""Recipes: ordered degradation steps, seeded application, replay, and the named recipe sets.

A :class:`Recipe` is an ordered tuple of steps (operator name, parameter
sampler), applied left to right. :func:`apply_recipe` gives step ``i`` its own
generator derived from ``(seed, i)`` only, so the draws of one step never
depend on other steps or other recipes, and returns the applied parameters;
:func:`replay` re-applies such a record without drawing anything.

Recipe sets (:data:`RECIPE_SETS`, :func:`get_recipe_set`): ``agenticir`` (the
AgenticIR evaluation set, 16 combinations in groups A/B/C), ``cdd11``
(OneRestore's 11 classes), ``7d`` (CoTIR-Bench's 7D subset, a reconstruction),
``unseen`` (CoTIR's unseen composites) and ``demo``. See docs/DEGRADATIONS.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from cotir_pipeline.degradations._core import check_image, quantize_8bit
from cotir_pipeline.degradations.camera import (
    DEFOCUS_SEVERITIES,
    MOTION_BLUR,
    MOTION_SEVERITIES,
    NOISE,
)
from cotir_pipeline.degradations.depth import depth_proxy
from cotir_pipeline.degradations.light import LOW_LIGHT
from cotir_pipeline.degradations.operators import OPERATORS, get_operator
from cotir_pipeline.degradations.samplers import (
    DEFAULTS,
    Choice,
    IntRange,
    OneOf,
    Params,
    Sampler,
    Uniform,
)
from cotir_pipeline.degradations.weather import HAZE, RAIN, SNOW
from cotir_pipeline.tasks import Degradation, composite_name

AppliedStep = dict[str, Any]


@dataclass(frozen=True)
class RecipeStep:
    """One step: a registered operator name and the sampler of its parameters."""

    op: str
    sampler: Sampler = DEFAULTS

    def __post_init__(self) -> None:
        get_operator(self.op)  # raises KeyError naming the known operators
        if not callable(self.sampler):
            raise TypeError(f"sampler of step {self.op!r} must be callable")


@dataclass(frozen=True)
class Recipe:
    """An ordered degradation recipe.

    ``name`` is unique within its set, ``group`` is the set's grouping (AgenticIR
    A/B/C, "single"/"composite" elsewhere), and ``quantize`` rounds to 8-bit
    levels after every step (AgenticIR's pipeline worked on uint8 images).
    """

    name: str
    steps: tuple[RecipeStep, ...]
    group: str = ""
    quantize: bool = False

    def __post_init__(self) -> None:
        steps = tuple(
            step if isinstance(step, RecipeStep) else RecipeStep(*step) for step in self.steps
        )
        if not steps:
            raise ValueError(f"recipe {self.name!r} has no steps")
        object.__setattr__(self, "steps", steps)

    @property
    def ops(self) -> tuple[str, ...]:
        """Operator names in application order."""
        return tuple(step.op for step in self.steps)

    @property
    def degradations(self) -> tuple[Degradation, ...]:
        """Degradation types in application order."""
        return tuple(OPERATORS[step.op].degradation for step in self.steps)

    @property
    def label(self) -> str:
        """The composite label, e.g. ``low_light+noise`` (order = order of application)."""
        return composite_name(self.degradations)


def step_rng(seed: int, index: int) -> np.random.Generator:
    """Step ``index``'s generator: PCG64 on SeedSequence(seed, spawn_key=(index,))."""
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=(index,))
    return np.random.Generator(np.random.PCG64(sequence))


def derive_seed(*parts: int | str) -> int:
    """A stable 53-bit seed from names and numbers (SHA-256; identical on every machine)."""
    if not parts:
        raise ValueError("derive_seed needs at least one part")
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, int | str):
            raise TypeError(f"seed parts must be int or str, got {part!r}")
    text = "\x1f".join(f"{type(part).__name__}:{part}" for part in parts)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 11


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be a non-negative int, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return int(seed)


def _depth_for(
    clean: np.ndarray, depth: np.ndarray | None, ops: Iterable[str]
) -> tuple[np.ndarray | None, str | None]:
    """The depth map handed to depth-using steps, and its source name."""
    if not any(OPERATORS[op].uses_depth for op in ops):
        return None, None
    if depth is not None:
        return depth, "given"
    return depth_proxy(clean), "proxy"


def apply_recipe(
    image: np.ndarray,
    recipe: Recipe,
    seed: int,
    *,
    depth: np.ndarray | None = None,
) -> tuple[np.ndarray, list[AppliedStep]]:
    """Degrade ``image`` by ``recipe`` with ``seed``; return the result and the applied steps.

    Step ``i`` draws from :func:`step_rng` ``(seed, i)``: first its sampler's
    parameters, then whatever the operator still draws (defaults, field seeds).
    Depth-using steps get ``depth`` (distance-like, any size; it is resized) or,
    when None, the proxy computed from the clean input. Each applied step is
    ``{"op": name, "params": {...}, "quantize": bool}``, JSON-serialisable.
    """
    clean = check_image(image)
    seed = _check_seed(seed)
    depth_map, depth_source = _depth_for(clean, depth, recipe.ops)
    current = clean.astype(np.float32)
    applied: list[AppliedStep] = []
    for index, step in enumerate(recipe.steps):
        spec = OPERATORS[step.op]
        rng = step_rng(seed, index)
        drawn = dict(step.sampler(rng))
        if "depth" in drawn or "depth_source" in drawn:
            raise ValueError(f"sampler of step {step.op!r} must not set depth or depth_source")
        if spec.uses_depth:
            drawn["depth"], drawn["depth_source"] = depth_map, depth_source
        current, params = spec(current, rng, **drawn)
        if recipe.quantize:
            current = quantize_8bit(current)
        applied.append({"op": step.op, "params": params, "quantize": recipe.quantize})
    return current, applied


def replay(
    image: np.ndarray,
    applied: Sequence[Mapping[str, Any]],
    *,
    depth: np.ndarray | None = None,
) -> np.ndarray:
    """Re-apply recorded steps (from :func:`apply_recipe`) to ``image`` without sampling.

    Reproduces apply_recipe's output byte for byte. A step recorded with
    ``depth_source == "given"`` needs the same ``depth`` again; "proxy" steps
    recompute the proxy from ``image``.
    """
    clean = check_image(image)
    current = clean.astype(np.float32)
    if isinstance(applied, str | bytes) or not isinstance(applied, Sequence):
        raise TypeError("applied must be a list of {'op', 'params'} records")
    proxy: np.ndarray | None = None
    for number, record in enumerate(applied):
        if not isinstance(record, Mapping) or "op" not in record or "params" not in record:
            raise ValueError(f"applied step {number} is not an {{'op', 'params'}} record")
        spec = get_operator(str(record["op"]))
        params = dict(record["params"])
        if spec.uses_depth:
            source = params.get("depth_source")
            if source == "given":
                if depth is None:
                    raise ValueError(
                        f"applied step {number} ({spec.name}) used a given depth map; pass depth="
                    )
                params["depth"] = depth
            else:
                if proxy is None:
                    proxy = depth_proxy(clean)
                params["depth"] = proxy
        current, _ = spec(current, None, **params)
        if record.get("quantize", False):
            current = quantize_8bit(current)
    return current


# --------------------------------------------------------------------------------------------
# AgenticIR evaluation set (the CoTIR paper and its public release)

#: Operator samplers with the AgenticIR parameters. Where a range is the operator's own
#: default it is read from the operator's declaration; the rest are AgenticIR's.
_RAIN_STREAKS = {name: RAIN.default(name) for name in ("threshold", "length", "angle", "width")}

AGENTICIR_SAMPLERS: Mapping[str, Sampler] = MappingProxyType(
    {
        "noise": OneOf(
            (
                Params.of(kind="gaussian", sigma=Uniform(20.0, 50.0), color=True),
                Params.of(kind="poisson", scale=NOISE.default("scale"), color=True),
            )
        ),
        "jpeg": Params.of(quality=IntRange(10, 29)),
        "low_light": OneOf(
            (
                Params.of(mode="shift", shift=LOW_LIGHT.default("shift")),
                Params.of(mode="gamma", gamma=LOW_LIGHT.default("gamma")),
                Params.of(mode="linear", max_value=LOW_LIGHT.default("max_value")),
            )
        ),
        "haze": Params.of(airlight=HAZE.default("airlight"), beta=HAZE.default("beta")),
        "motion_blur": OneOf(
            tuple(
                Params.of(radius=radius, sigma=sigma, angle=MOTION_BLUR.default("angle"))
                for radius, sigma in MOTION_SEVERITIES
            )
        ),
        "defocus_blur": OneOf(
            tuple(
                Params.of(radius=float(radius), alias_sigma=alias)
                for radius, alias in DEFOCUS_SEVERITIES
            )
        ),
        "rain": Params.of(**_RAIN_STREAKS, intensity=RAIN.default("intensity")),
        "low_resolution": Params.of(factor=0.25, restore_size=False),
    }
)

#: The 16 AgenticIR combinations by group, each applied left to right.
AGENTICIR_GROUPS: Mapping[str, tuple[tuple[str, ...], ...]] = MappingProxyType(
    {
        "A": (
            ("rain", "haze"),
            ("motion_blur", "low_resolution"),
            ("low_light", "noise"),
            ("defocus_blur", "jpeg"),
            ("noise", "jpeg"),
            ("rain", "low_resolution"),
            ("motion_blur", "low_light"),
            ("defocus_blur", "haze"),
        ),
        "B": (
            ("motion_blur", "jpeg"),
            ("haze", "noise"),
            ("defocus_blur", "low_resolution"),
            ("rain", "low_light"),
        ),
        "C": (
            ("haze", "motion_blur", "low_resolution"),
            ("rain", "noise", "low_resolution"),
            ("low_light", "defocus_blur", "jpeg"),
            ("motion_blur", "defocus_blur", "noise"),
        ),
    }
)

#: Clean images per combination, and group A's exploration images among them.
AGENTICIR_PER_COMBINATION = 100
AGENTICIR_EXPLORATION = 20


def _agenticir_recipes() -> tuple[Recipe, ...]:
    recipes = []
    for group, combinations in AGENTICIR_GROUPS.items():
        for ops in combinations:
            steps = tuple(RecipeStep(op, AGENTICIR_SAMPLERS[op]) for op in ops)
            label = composite_name([OPERATORS[op].degradation for op in ops])
            recipes.append(Recipe(label, steps, group=group, quantize=True))
    return tuple(recipes)


@dataclass(frozen=True)
class PlannedSample:
    """One sample of a plan: which clean image gets which recipe, with what seed."""

    recipe: str
    label: str
    group: str
    clean_index: int
    split: str
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def agenticir_plan(n_clean: int = 100, seed: int = 0) -> list[PlannedSample]:
    """Assign clean images (indices 0..n_clean-1) to the 16 AgenticIR combinations.

    Every combination gets its own seeded permutation of the clean indices
    (generator seeded by derive_seed(seed, "agenticir-plan", name)) and takes
    its first 100, so no clean image repeats within a combination. Group A: the
    first 20 of those are the exploration split and the next 80 the test split;
    groups B and C: all 100 are test. Test counts 640 / 400 / 400 = 1,440.
    Sample seeds are derive_seed(seed, "agenticir", name, clean_index), so they
    do not depend on the order of combinations. Raises ValueError when
    n_clean < 100.
    """
    if isinstance(n_clean, bool) or not isinstance(n_clean, int):
        raise TypeError(f"n_clean must be an int, got {n_clean!r}")
    if n_clean < AGENTICIR_PER_COMBINATION:
        raise ValueError(
            f"the AgenticIR plan needs at least {AGENTICIR_PER_COMBINATION} clean images "
            f"(one per sample of a combination), got {n_clean}"
        )
    seed = _check_seed(seed)
    plan: list[PlannedSample] = []
    for recipe in RECIPE_SETS["agenticir"]:
        order_rng = np.random.Generator(
            np.random.PCG64(derive_seed(seed, "agenticir-plan", recipe.name))
        )
        chosen = [int(i) for i in order_rng.permutation(n_clean)[:AGENTICIR_PER_COMBINATION]]
        explore = AGENTICIR_EXPLORATION if recipe.group == "A" else 0
        splits = [("exploration", sorted(chosen[:explore])), ("test", sorted(chosen[explore:]))]
        for split, indices in splits:
            plan.extend(
                PlannedSample(
                    recipe=recipe.name,
                    label=recipe.label,
                    group=recipe.group,
                    clean_index=index,
                    split=split,
                    seed=derive_seed(seed, "agenticir", recipe.name, index),
                )
                for index in indices
            )
    return plan


# --------------------------------------------------------------------------------------------
# CDD-11 (OneRestore's composite set)

CDD11_SAMPLERS: Mapping[str, Sampler] = MappingProxyType(
    {
        "low_light": Params.of(
            mode="retinex",
            exponent=LOW_LIGHT.default("exponent"),
            noise_sigma=LOW_LIGHT.default("noise_sigma"),
        ),
        # Reconstruction: CDD-11 adds rain masks from a streak dataset; we synthesise them.
        "rain": Params.of(**_RAIN_STREAKS, intensity=Uniform(0.6, 1.0)),
        # Reconstruction: synthetic flake masks, blended as m + x (1 - m) (CDD-11's blend).
        "snow": Params.of(
            density=SNOW.default("density"),
            flake_size=SNOW.default("flake_size"),
            brightness=1.0,
            veil=0.0,
        ),
        "haze": Params.of(
            beta=Uniform(1.0, 2.0), airlight=Uniform(0.6, 0.9), depth_blur=22, depth_cap=0.7
        ),
    }
)

#: CDD-11 class names -> operators in application order (low -> rain -> snow -> haze).
CDD11_CLASSES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "low": ("low_light",),
        "haze": ("haze",),
        "rain": ("rain",),
        "snow": ("snow",),
        "low_haze": ("low_light", "haze"),
        "low_rain": ("low_light", "rain"),
        "low_snow": ("low_light", "snow"),
        "haze_rain": ("rain", "haze"),
        "haze_snow": ("snow", "haze"),
        "low_haze_rain": ("low_light", "rain", "haze"),
        "low_haze_snow": ("low_light", "snow", "haze"),
    }
)


def _cdd11_recipes() -> tuple[Recipe, ...]:
    return tuple(
        Recipe(
            name,
            tuple(RecipeStep(op, CDD11_SAMPLERS[op]) for op in ops),
            group="single" if len(ops) == 1 else "composite",
        )
        for name, ops in CDD11_CLASSES.items()
    )


# --------------------------------------------------------------------------------------------
# 7D subset (reconstruction), unseen composites, demo


SEVEN_D_SAMPLERS: Mapping[str, Sampler] = MappingProxyType(
    {
        **{op: AGENTICIR_SAMPLERS[op] for op in ("noise", "jpeg", "haze", "motion_blur", "rain")},
        "low_light": DEFAULTS,  # all four modes: HSV shift / gamma / linear and Retinex
        "low_resolution": Params.of(factor=0.25, restore_size=True),
    }
)

SEVEN_D_COMBINATIONS: tuple[tuple[str, ...], ...] = (
    ("low_light",),
    ("haze",),
    ("rain",),
    ("motion_blur",),
    ("low_resolution",),
    ("noise",),
    ("jpeg",),
    ("low_light", "noise"),
    ("rain", "haze"),
    ("motion_blur", "noise"),
    ("motion_blur", "low_resolution"),
    ("noise", "jpeg"),
    ("haze", "low_resolution"),
    ("motion_blur", "low_resolution", "noise", "jpeg"),
    ("low_light", "haze", "rain", "jpeg"),
)

UNSEEN_SAMPLERS: Mapping[str, Sampler] = MappingProxyType(
    {
        "low_resolution": Params.of(factor=Choice((0.5, 0.25)), restore_size=True),
        "jpeg": Params.of(quality=IntRange(15, 40)),
    }
)

UNSEEN_COMBINATIONS: tuple[tuple[str, ...], ...] = (
    ("rain", "watermark"),
    ("low_light", "flare"),
    ("flare", "rain", "jpeg"),
    ("flare", "snow"),
    ("low_resolution", "haze", "motion_blur", "jpeg"),
    ("low_resolution", "lost_color", "noise"),
)

DEMO_SAMPLERS: Mapping[str, Sampler] = MappingProxyType(
    {"low_resolution": Params.of(factor=Choice((0.5, 0.25)), restore_size=True)}
)

DEMO_COMBINATIONS: tuple[tuple[str, ...], ...] = (
    *((op,) for op in OPERATORS),
    # the seen composites the paper names
    ("low_light", "motion_blur"),
    ("haze", "snow"),
    ("raindrop", "motion_blur"),
    ("rain", "raindrop"),
    ("low_light", "noise"),
    ("low_light", "haze", "rain", "jpeg"),
)


def _simple_recipes(
    combinations: Iterable[tuple[str, ...]], samplers: Mapping[str, Sampler]
) -> tuple[Recipe, ...]:
    recipes = []
    for ops in combinations:
        steps = tuple(RecipeStep(op, samplers.get(op, DEFAULTS)) for op in ops)
        label = composite_name([OPERATORS[op].degradation for op in ops])
        recipes.append(Recipe(label, steps, group="single" if len(ops) == 1 else "composite"))
    return tuple(recipes)


RECIPE_SETS: Mapping[str, tuple[Recipe, ...]] = MappingProxyType(
    {
        "agenticir": _agenticir_recipes(),
        "cdd11": _cdd11_recipes(),
        "7d": _simple_recipes(SEVEN_D_COMBINATIONS, SEVEN_D_SAMPLERS),
        "unseen": _simple_recipes(UNSEEN_COMBINATIONS, UNSEEN_SAMPLERS),
        "demo": _simple_recipes(DEMO_COMBINATIONS, DEMO_SAMPLERS),
    }
)


def get_recipe_set(name: str) -> list[Recipe]:
    """The recipes of set ``name`` in their fixed order; KeyError lists the known sets."""
    try:
        return list(RECIPE_SETS[name])
    except KeyError:
        known = ", ".join(RECIPE_SETS)
        raise KeyError(f"unknown recipe set {name!r} (known: {known})") from None


def get_recipe(set_name: str, recipe_name: str) -> Recipe:
    """One recipe of a set by its name; KeyError lists the set's names."""
    for recipe in get_recipe_set(set_name):
        if recipe.name == recipe_name:
            return recipe
    names = ", ".join(recipe.name for recipe in RECIPE_SETS[set_name])
    raise KeyError(f"recipe set {set_name!r} has no recipe {recipe_name!r} (has: {names})")


__all__ = [
    "AGENTICIR_EXPLORATION",
    "AGENTICIR_GROUPS",
    "AGENTICIR_PER_COMBINATION",
    "CDD11_CLASSES",
    "RECIPE_SETS",
    "AppliedStep",
    "PlannedSample",
    "Recipe",
    "RecipeStep",
    "agenticir_plan",
    "apply_recipe",
    "derive_seed",
    "get_recipe",
    "get_recipe_set",
    "replay",
    "step_rng",
]
