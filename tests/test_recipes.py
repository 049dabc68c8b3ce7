"""Recipe sets, seeded application, replay and the AgenticIR plan.

The expected combinations below are written out from the CoTIR paper and its release
independently of the module, so a change to the module's tables shows up here.
"""

from __future__ import annotations

import json
import math
import pickle
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from skimage import data

from cotir_pipeline.degradations import (
    OPERATORS,
    RECIPE_SETS,
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
from cotir_pipeline.degradations.samplers import Choice, IntRange, OneOf, Params, Uniform
from cotir_pipeline.tasks import Degradation, composite_name, parse_degradation_label

EXPECTED_AGENTICIR = {
    "A": [
        "rain+haze",
        "motion_blur+low_resolution",
        "low_light+noise",
        "defocus_blur+jpeg",
        "noise+jpeg",
        "rain+low_resolution",
        "motion_blur+low_light",
        "defocus_blur+haze",
    ],
    "B": [
        "motion_blur+jpeg",
        "haze+noise",
        "defocus_blur+low_resolution",
        "rain+low_light",
    ],
    "C": [
        "haze+motion_blur+low_resolution",
        "rain+noise+low_resolution",
        "low_light+defocus_blur+jpeg",
        "motion_blur+defocus_blur+noise",
    ],
}

EXPECTED_CDD11 = {
    "low": "low_light",
    "haze": "haze",
    "rain": "rain",
    "snow": "snow",
    "low_haze": "low_light+haze",
    "low_rain": "low_light+rain",
    "low_snow": "low_light+snow",
    "haze_rain": "rain+haze",
    "haze_snow": "snow+haze",
    "low_haze_rain": "low_light+rain+haze",
    "low_haze_snow": "low_light+snow+haze",
}

EXPECTED_UNSEEN = {
    "rain+watermark",
    "low_light+flare",
    "flare+rain+jpeg",
    "flare+snow",
    "low_resolution+haze+motion_blur+jpeg",
    "low_resolution+lost_color+noise",
}

SEVEN_D_TYPES = {
    Degradation.LOW_LIGHT,
    Degradation.HAZE,
    Degradation.RAIN,
    Degradation.MOTION_BLUR,
    Degradation.LOW_RESOLUTION,
    Degradation.NOISE,
    Degradation.JPEG,
}


def small_photo(height: int = 48, width: int = 64) -> np.ndarray:
    pixels = Image.fromarray(data.chelsea()).resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(pixels, dtype=np.float32) / 255.0


def all_recipes() -> list[tuple[str, Recipe]]:
    return [(set_name, recipe) for set_name, recipes in RECIPE_SETS.items() for recipe in recipes]


# ------------------------------------------------------------------ set contents


def test_agenticir_has_16_combinations_split_8_4_4_in_order() -> None:
    recipes = get_recipe_set("agenticir")
    assert len(recipes) == 16
    by_group: dict[str, list[str]] = {}
    for recipe in recipes:
        by_group.setdefault(recipe.group, []).append(recipe.label)
    assert by_group == EXPECTED_AGENTICIR
    assert all(recipe.quantize for recipe in recipes)
    assert all(recipe.name == recipe.label for recipe in recipes)


def test_cdd11_has_the_11_classes_in_application_order() -> None:
    recipes = get_recipe_set("cdd11")
    assert {recipe.name: recipe.label for recipe in recipes} == EXPECTED_CDD11
    precedence = ["low_light", "rain", "snow", "haze"]
    for recipe in recipes:
        ranks = [precedence.index(op) for op in recipe.ops]
        assert ranks == sorted(ranks), recipe.name
        assert not recipe.quantize


def test_7d_unseen_and_demo_sets() -> None:
    seven_d = get_recipe_set("7d")
    singles = {recipe.degradations[0] for recipe in seven_d if len(recipe.steps) == 1}
    assert singles == SEVEN_D_TYPES
    assert all(set(recipe.degradations) <= SEVEN_D_TYPES for recipe in seven_d)
    assert any(len(recipe.steps) >= 3 for recipe in seven_d)
    assert {recipe.label for recipe in get_recipe_set("unseen")} == EXPECTED_UNSEEN
    demo = get_recipe_set("demo")
    assert len({d for recipe in demo for d in recipe.degradations}) >= 8
    assert sum(len(recipe.steps) > 1 for recipe in demo) >= 3


@pytest.mark.parametrize(("set_name", "recipe"), all_recipes(), ids=lambda x: getattr(x, "name", x))
def test_labels_use_the_shared_vocabulary(set_name: str, recipe: Recipe) -> None:
    assert recipe.label == composite_name(recipe.degradations)
    assert parse_degradation_label(recipe.label) == recipe.degradations
    names = [other.name for other in RECIPE_SETS[set_name]]
    assert names.count(recipe.name) == 1


def test_lookup_errors() -> None:
    with pytest.raises(KeyError, match="known"):
        get_recipe_set("reside")
    with pytest.raises(KeyError, match="has no recipe"):
        get_recipe("cdd11", "fog")
    assert get_recipe("cdd11", "low_haze").label == "low_light+haze"
    with pytest.raises(KeyError, match="unknown degradation operator"):
        RecipeStep("smear")
    with pytest.raises(ValueError, match="no steps"):
        Recipe("empty", ())


# ------------------------------------------------------------------ parameter ranges


def applied_params(set_name: str, seeds: range) -> dict[str, list[dict]]:
    """Applied params per operator over many seeds, on a tiny image (cheap)."""
    image = small_photo(16, 16)
    found: dict[str, list[dict]] = {}
    for recipe in RECIPE_SETS[set_name]:
        for seed in seeds:
            _, applied = apply_recipe(image, recipe, seed)
            for step in applied:
                found.setdefault(step["op"], []).append(step["params"])
    return found


def test_agenticir_parameters_stay_in_the_reference_ranges() -> None:
    found = applied_params("agenticir", range(40))

    noise = found["noise"]
    kinds = Counter(p["kind"] for p in noise)
    assert set(kinds) == {"gaussian", "poisson"}
    assert 0.35 < kinds["gaussian"] / len(noise) < 0.65
    assert all(20 <= p["sigma"] <= 50 for p in noise if p["kind"] == "gaussian")
    assert all(1 <= p["scale"] <= 3 for p in noise if p["kind"] == "poisson")
    assert all(p["color"] is True for p in noise)

    qualities = [p["quality"] for p in found["jpeg"]]
    assert min(qualities) == 10
    assert max(qualities) == 29
    assert all(isinstance(q, int) for q in qualities)

    dark = found["low_light"]
    assert {p["mode"] for p in dark} == {"shift", "gamma", "linear"}
    assert {p["shift"] for p in dark if p["mode"] == "shift"} <= set(range(30, 50))
    assert all(0.5 <= p["gamma"] < 0.7 for p in dark if p["mode"] == "gamma")
    assert {p["max_value"] for p in dark if p["mode"] == "linear"} <= set(range(100, 150))

    assert all(0.7 <= p["airlight"] < 1.0 and 0.6 <= p["beta"] < 1.8 for p in found["haze"])
    assert {p["depth_source"] for p in found["haze"]} == {"proxy"}

    motion = found["motion_blur"]
    assert {(p["radius"], p["sigma"]) for p in motion} == {(10, 3.0), (15, 5.0), (15, 8.0)}
    assert all(-90 <= p["angle"] < 90 for p in motion)
    defocus = found["defocus_blur"]
    assert {(p["radius"], p["alias_sigma"]) for p in defocus} == {(3, 0.1), (4, 0.5), (6, 0.5)}

    rain = found["rain"]
    assert all(0.5 <= p["threshold"] <= 0.99 for p in rain)
    assert all(abs(p["threshold"] * 100 - round(p["threshold"] * 100)) < 1e-9 for p in rain)
    assert {p["length"] for p in rain} <= set(range(20, 40))
    assert {p["angle"] for p in rain} <= set(range(-30, 30))
    assert {p["width"] for p in rain} == {3}
    assert {p["intensity"] for p in rain} == {1.0}

    assert {(p["factor"], p["restore_size"]) for p in found["low_resolution"]} == {(0.25, False)}


def test_cdd11_parameters_follow_onerestore() -> None:
    found = applied_params("cdd11", range(25))
    low = found["low_light"]
    assert {p["mode"] for p in low} == {"retinex"}
    assert all(2 <= p["exponent"] < 3 and 0.03 <= p["noise_sigma"] < 0.08 for p in low)
    for p in found["haze"]:
        assert 1 <= p["beta"] < 2
        assert 0.6 <= p["airlight"] < 0.9
        assert p["depth_cap"] == 0.7
        assert p["depth_blur"] == 22
    assert {(p["brightness"], p["veil"]) for p in found["snow"]} == {(1.0, 0.0)}


def test_samplers_draw_within_their_bounds() -> None:
    rng = np.random.Generator(np.random.PCG64(0))
    assert {IntRange(3, 5).draw(rng) for _ in range(200)} == {3, 4, 5}
    assert all(1.0 <= Uniform(1.0, 2.0).draw(rng) < 2.0 for _ in range(200))
    weighted = Counter(Choice(("a", "b"), (0.9, 0.1)).draw(rng) for _ in range(2000))
    assert 0.85 < weighted["a"] / 2000 < 0.95
    branches = Counter(OneOf((Params.of(k=1), Params.of(k=2)))(rng)["k"] for _ in range(2000))
    assert 0.45 < branches[1] / 2000 < 0.55
    with pytest.raises(ValueError, match="low <= high"):
        Uniform(2.0, 1.0)
    with pytest.raises(ValueError, match="one per option"):
        Choice(("a",), (0.5, 0.5))


# ------------------------------------------------------------------ application, replay


@pytest.mark.parametrize(("set_name", "recipe"), all_recipes(), ids=lambda x: getattr(x, "name", x))
def test_apply_is_deterministic_and_replays_from_json(set_name: str, recipe: Recipe) -> None:
    image = small_photo()
    out, applied = apply_recipe(image, recipe, seed=1234)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min() >= 0.0
    assert out.max() <= 1.0
    assert [step["op"] for step in applied] == list(recipe.ops)
    if "low_resolution" in recipe.ops and not any(
        step["params"].get("restore_size") for step in applied
    ):
        factor = next(s["params"]["factor"] for s in applied if s["op"] == "low_resolution")
        assert out.shape == (math.ceil(48 * factor), math.ceil(64 * factor), 3)
    else:
        assert out.shape == image.shape
    if recipe.quantize:
        assert np.array_equal(np.round(out * 255) / 255, out)

    record = json.loads(json.dumps(applied))  # the per-sample record, as stored
    assert replay(image, record).tobytes() == out.tobytes()
    again, applied_again = apply_recipe(image, recipe, seed=1234)
    assert again.tobytes() == out.tobytes()
    assert applied_again == applied
    # a recipe that draws anything gives another image for another seed (a lone
    # low_resolution step may have nothing left to draw: its factor can be fixed)
    if any(OPERATORS[op].random for op in recipe.ops if op != "low_resolution"):
        others = [apply_recipe(image, recipe, seed=seed)[0] for seed in (1235, 1236)]
        assert any(other.tobytes() != out.tobytes() for other in others)


def test_steps_draw_from_their_own_generators() -> None:
    """A step's draws depend on (seed, index) only: not on the other steps or recipes."""
    image = small_photo()
    noise_then_jpeg = Recipe("a", (("noise",), ("jpeg",)))
    noise_then_blur = Recipe("b", (("noise",), ("motion_blur",)))
    _, first = apply_recipe(image, noise_then_jpeg, seed=77)
    apply_recipe(image, get_recipe("cdd11", "low_haze_snow"), seed=77)  # unrelated work between
    _, second = apply_recipe(image, noise_then_blur, seed=77)
    assert first[0] == second[0]
    assert first[1]["params"] != {}
    # the same operator as a second step draws from another generator than as a first step
    blur_first = Recipe("c", (("motion_blur",),))
    _, alone = apply_recipe(image, blur_first, seed=77)
    assert alone[0]["params"] != second[1]["params"]
    a = step_rng(77, 1).random()
    assert a == step_rng(77, 1).random()
    assert a != step_rng(77, 0).random()
    assert a != step_rng(78, 1).random()


def test_given_depth_is_used_and_required_on_replay() -> None:
    image = small_photo()
    depth = np.tile(np.linspace(1.0, 20.0, 64), (48, 1))
    recipe = get_recipe("agenticir", "rain+haze")
    out, applied = apply_recipe(image, recipe, seed=3, depth=depth)
    assert applied[1]["params"]["depth_source"] == "given"
    proxy_out, _ = apply_recipe(image, recipe, seed=3)
    assert proxy_out.tobytes() != out.tobytes()
    assert replay(image, applied, depth=depth).tobytes() == out.tobytes()
    with pytest.raises(ValueError, match="depth"):
        replay(image, applied)


def test_recipes_pickle_for_worker_processes() -> None:
    for _, recipe in all_recipes():
        clone = pickle.loads(pickle.dumps(recipe))
        assert clone == recipe


def test_bad_calls_raise() -> None:
    image = small_photo()
    recipe = get_recipe("cdd11", "low")
    with pytest.raises(ValueError, match="non-negative"):
        apply_recipe(image, recipe, seed=-1)
    with pytest.raises(TypeError, match="seed"):
        apply_recipe(image, recipe, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float"):
        apply_recipe((image * 255).astype(np.uint8), recipe, seed=1)
    with pytest.raises(ValueError, match="record"):
        replay(image, [{"operator": "noise"}])
    with pytest.raises(TypeError):
        replay(image, "noise")  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        replay(image, [{"op": "smear", "params": {}}])
    bad_sampler = Recipe("x", (RecipeStep("haze", Params.of(depth_source="given")),))
    with pytest.raises(ValueError, match="depth"):
        apply_recipe(image, bad_sampler, seed=1)


# ------------------------------------------------------------------ AgenticIR plan


def test_agenticir_plan_counts() -> None:
    plan = agenticir_plan(100, seed=0)
    test = [s for s in plan if s.split == "test"]
    explore = [s for s in plan if s.split == "exploration"]
    assert len(test) == 1440
    assert Counter(s.group for s in test) == {"A": 640, "B": 400, "C": 400}
    assert Counter(s.label for s in test if s.group == "A") == dict.fromkeys(
        EXPECTED_AGENTICIR["A"], 80
    )
    for group in ("B", "C"):
        counts = Counter(s.label for s in test if s.group == group)
        assert counts == dict.fromkeys(EXPECTED_AGENTICIR[group], 100)
    assert len(explore) == 160
    assert Counter(s.label for s in explore) == dict.fromkeys(EXPECTED_AGENTICIR["A"], 20)


def test_agenticir_plan_never_reuses_a_clean_image_within_a_combination() -> None:
    plan = agenticir_plan(100, seed=0)
    per_recipe: dict[str, list[int]] = {}
    for sample in plan:
        per_recipe.setdefault(sample.recipe, []).append(sample.clean_index)
    assert len(per_recipe) == 16
    for indices in per_recipe.values():
        assert len(indices) == len(set(indices)) == 100
        assert set(indices) == set(range(100))
    assert len({sample.seed for sample in plan}) == len(plan)


def test_agenticir_plan_is_seeded_and_order_independent() -> None:
    plan = agenticir_plan(100, seed=0)
    assert plan == agenticir_plan(100, seed=0)
    other = agenticir_plan(100, seed=1)
    explore = {(s.recipe, s.clean_index) for s in plan if s.split == "exploration"}
    assert explore != {(s.recipe, s.clean_index) for s in other if s.split == "exploration"}
    for sample in plan[:50]:
        assert sample.seed == derive_seed(0, "agenticir", sample.recipe, sample.clean_index)
    json.dumps([sample.to_dict() for sample in plan])
    bigger = agenticir_plan(150, seed=0)
    assert len([s for s in bigger if s.split == "test"]) == 1440
    assert max(s.clean_index for s in bigger) >= 100
    with pytest.raises(ValueError, match="at least 100"):
        agenticir_plan(99, seed=0)


def test_planned_sample_runs_end_to_end() -> None:
    sample = next(s for s in agenticir_plan(100, seed=0) if s.group == "C")
    recipe = get_recipe("agenticir", sample.recipe)
    out, applied = apply_recipe(small_photo(64, 64), recipe, sample.seed)
    assert len(applied) == 3
    assert out.shape[0] in (16, 64)


def test_derive_seed_is_stable() -> None:
    parts = (0, "agenticir", "rain+haze", 5)
    assert derive_seed(*parts) == derive_seed(*parts)
    assert derive_seed(1, "x") != derive_seed("1", "x")
    assert 0 <= derive_seed("a") < 2**53
    with pytest.raises(TypeError):
        derive_seed(1.5)  # type: ignore[arg-type]
