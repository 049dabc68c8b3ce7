"""The template backend: deterministic, varied, rule-valid answers from labels and recipes."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from cotir_pipeline.annotation.base import AnnotationBackend, AnnotationRequest
from cotir_pipeline.annotation.rules import check_answer
from cotir_pipeline.annotation.template_backend import (
    TEMPLATE_MODEL,
    TemplateBackend,
    describe_scene,
    scene_statistics,
)
from cotir_pipeline.degradations import RECIPE_SETS, apply_recipe, get_recipe_set
from cotir_pipeline.shards import encode_png
from cotir_pipeline.tasks import Degradation


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    """A small real photograph in [0, 1]."""
    return data.astronaut()[::8, ::8].astype(np.float32) / 255.0


def _png(image: np.ndarray) -> bytes:
    return encode_png(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8))


def _requests(clean: np.ndarray, seeds: range = range(3)) -> list[AnnotationRequest]:
    hq = _png(clean)
    requests = []
    for set_name in RECIPE_SETS:
        for recipe in get_recipe_set(set_name):
            for seed in seeds:
                degraded, applied = apply_recipe(clean, recipe, seed)
                lq = _png(degraded) if degraded.shape == clean.shape else hq
                sample_id = f"{set_name}-{recipe.name}-{seed}"
                requests.append(AnnotationRequest(sample_id, lq, hq, recipe.label, tuple(applied)))
    for degradation in Degradation:  # real captured pairs: no recipe
        requests.append(AnnotationRequest(f"real-{degradation.value}", hq, hq, degradation.value))
    return requests


def test_is_an_annotation_backend() -> None:
    backend = TemplateBackend()
    assert isinstance(backend, AnnotationBackend)
    assert backend.model == TEMPLATE_MODEL
    assert backend.template_version.startswith("template-backend-1+prompts-")


def test_same_input_gives_the_same_output(clean: np.ndarray) -> None:
    requests = _requests(clean, range(1))
    first = TemplateBackend().annotate(requests)
    second = TemplateBackend().annotate(list(reversed(requests)))[::-1]
    assert [r.answer for r in first] == [r.answer for r in second]
    assert [r.response_sha256 for r in first] == [r.response_sha256 for r in second]


def test_every_answer_passes_the_rules(clean: np.ndarray) -> None:
    requests = _requests(clean)
    results = TemplateBackend().annotate(requests)
    assert [r.sample_id for r in results] == [r.sample_id for r in requests]
    for request, result in zip(requests, results, strict=True):
        assert result.status == "ok", result.reason
        assert result.attempts == 1
        assert check_answer(result.answer, request.degradation_label) == [], request.sample_id


def test_phrasing_varies_with_the_sample_id(clean: np.ndarray) -> None:
    hq = _png(clean)
    recipe = get_recipe_set("demo")[0]
    _, applied = apply_recipe(clean, recipe, 1)
    requests = [
        AnnotationRequest(f"id-{number}", hq, hq, recipe.label, tuple(applied))
        for number in range(40)
    ]
    answers = [r.answer for r in TemplateBackend().annotate(requests)]
    assert all(answer is not None for answer in answers)
    assert len({a.vague_question for a in answers if a}) >= 20
    assert len({a.precise_question for a in answers if a}) >= 6
    assert len({a.plan for a in answers if a}) >= 4
    assert len({a.to_flat() for a in answers if a}) >= 30


def test_recipe_parameters_shape_the_description(clean: np.ndarray) -> None:
    hq = _png(clean)

    def degradation_text(label: str, params: dict) -> str:
        step = {"op": label, "params": params, "quantize": False}
        request = AnnotationRequest("same-id", hq, hq, label, (step,))
        result = TemplateBackend().annotate([request])[0]
        assert result.answer is not None
        return result.answer.degradation

    assert "quality about 12" in degradation_text("jpeg", {"quality": 12})
    assert "about 45 of 255" in degradation_text(
        "noise", {"kind": "gaussian", "sigma": 45.0, "color": True}
    ) or "grainy" in degradation_text("noise", {"kind": "gaussian", "sigma": 45.0})
    light = degradation_text("haze", {"beta": 0.65})
    dense = degradation_text("haze", {"beta": 1.75})
    assert any(word in light for word in ("light", "slight", "mild"))
    assert any(word in dense for word in ("heavy", "strong", "severe"))
    assert "repeated" in degradation_text("watermark", {"opacity": 0.5, "tiled": True})


def test_composite_plan_undoes_the_last_step_first(clean: np.ndarray) -> None:
    hq = _png(clean)
    steps = (
        {"op": "low_light", "params": {"mode": "gamma", "gamma": 0.55}},
        {"op": "jpeg", "params": {"quality": 20}},
    )
    request = AnnotationRequest("composite", hq, hq, "low_light+jpeg", steps)
    answer = TemplateBackend().annotate([request])[0].answer
    assert answer is not None
    plan = answer.plan.lower()
    assert plan.startswith("first")
    jpeg_at = min(plan.find(word) for word in ("jpeg", "compression") if word in plan)
    light_at = min(plan.find(w) for w in ("dark", "expos", "bright", "light") if w in plan)
    assert jpeg_at < light_at


def test_unreadable_image_is_a_failed_result() -> None:
    request = AnnotationRequest("broken", b"not a png", b"not a png either", "noise")
    result = TemplateBackend().annotate([request])[0]
    assert result.status == "failed"
    assert result.reason is not None
    assert result.reason.startswith("template: cannot read image")


def test_duplicate_ids_are_refused(clean: np.ndarray) -> None:
    hq = _png(clean)
    with pytest.raises(ValueError, match="twice"):
        TemplateBackend().annotate([AnnotationRequest("x", hq, hq, "noise")] * 2)


def test_scene_statistics_follow_the_image() -> None:
    dark = encode_png(np.full((32, 32, 3), 20, np.uint8))
    blue = np.zeros((32, 32, 3), np.uint8)
    blue[..., 2] = 220
    stats_dark = scene_statistics(dark)
    stats_blue = scene_statistics(encode_png(blue))
    assert stats_dark["brightness"] < 0.1
    assert stats_dark["hue"] == "neutral"
    assert stats_blue["hue"] == "blue"
    import random

    assert "dim" in describe_scene(stats_dark, random.Random(0))
