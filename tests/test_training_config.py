"""Training configuration: paper values, LR schedule, stages, curriculum and prompt mix."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import pytest
from pydantic import ValidationError

from cotir_pipeline.annotation.prompts import gen_prompts, spe_prompts
from models.data import choose_prompt
from models.losses import ConstraintMode
from models.train_config import (
    CurriculumConfig,
    ScheduleConfig,
    Stage,
    TrainConfig,
    config_for_variant,
)


@pytest.mark.parametrize(
    ("variant", "batches"),
    [("cotir-12b", (6, 5, 3, 2)), ("cotir-4b", (12, 10, 6, 4)), ("cotir-9b", (6, 4, 2, 1))],
)
def test_paper_configs(variant: str, batches: tuple[int, ...]) -> None:
    config = config_for_variant(variant)
    assert [s.end_step for s in config.stages] == [20_000, 40_000, 60_000, 120_000]
    assert [s.patch for s in config.stages] == [128, 256, 384, 512]
    assert tuple(s.batch_size for s in config.stages) == batches
    assert config.total_steps == 120_000
    optimizer = config.optimizer
    assert (optimizer.lr, optimizer.betas, optimizer.weight_decay) == (5e-4, (0.9, 0.999), 0.01)
    assert (optimizer.eps, optimizer.grad_clip) == (1e-8, 1.0)
    assert (config.schedule.warmup_steps, config.schedule.min_lr) == (2000, 5e-5)
    constraints = config.constraints
    assert constraints.mode is ConstraintMode.LAGRANGIAN
    assert (constraints.delta, constraints.dual_lr, constraints.dual_betas) == (
        1e-4,
        1e-4,
        (0.9, 0.999),
    )
    assert config.mixed_precision == "auto"


def test_stage_lookup_at_boundaries() -> None:
    config = config_for_variant("cotir-4b")
    expected = {0: 128, 19_999: 128, 20_000: 256, 39_999: 256, 40_000: 384, 60_000: 512}
    for step, patch in expected.items():
        assert config.stage_at(step).patch == patch
    assert config.stage_at(119_999).batch_size == 4
    assert config.stage_at(500_000).patch == 512  # past the end: the last stage


def test_learning_rate_schedule_values() -> None:
    config = config_for_variant("cotir-4b")
    peak, floor = 5e-4, 5e-5
    assert config.lr_at(0) == pytest.approx(peak / 2000)
    assert config.lr_at(999) == pytest.approx(peak / 2)
    assert config.lr_at(1999) == pytest.approx(peak)
    assert config.lr_at(2000) == pytest.approx(peak)
    middle = 2000 + (120_000 - 2000) // 2
    assert config.lr_at(middle) == pytest.approx((peak + floor) / 2)
    quarter = 2000 + (120_000 - 2000) // 4
    cosine = floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi / 4))
    assert config.lr_at(quarter) == pytest.approx(cosine)
    assert config.lr_at(120_000) == pytest.approx(floor)
    assert config.lr_at(200_000) == pytest.approx(floor)
    values = [config.lr_at(step) for step in range(2000, 120_001, 997)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert min(values) >= floor


def test_schedule_without_warmup_and_bad_values() -> None:
    schedule = ScheduleConfig(total_steps=10, warmup_steps=0, min_lr=0.0)
    assert schedule.lr_at(0, 1.0) == pytest.approx(1.0)
    assert schedule.lr_at(10, 1.0) == pytest.approx(0.0)
    with pytest.raises(ValidationError, match="exceeds"):
        ScheduleConfig(total_steps=10, warmup_steps=11)
    with pytest.raises(ValueError, match="below the floor"):
        schedule.lr_at(0, -1.0)


def test_curriculum_probabilities_at_step_boundaries() -> None:
    curriculum = CurriculumConfig()
    expected = {
        0: 0.2,
        9_999: 0.2,
        10_000: 0.3,
        19_999: 0.3,
        20_000: 0.4,
        30_000: 0.5,
        39_999: 0.5,
        40_000: 0.6,
        119_999: 0.6,
    }
    assert {step: curriculum.vague_probability(step) for step in expected} == expected
    assert curriculum.template_probability_for("haze") == 0.7
    assert curriculum.template_probability_for("lost_color") == 0.2
    assert curriculum.fallback.format(deg="haze") == "Please correct haze issues."


def test_tiny_config_scales_everything() -> None:
    config = config_for_variant("tiny")
    assert config.total_steps == 48
    assert [(s.end_step, s.patch) for s in config.stages] == [(8, 16), (16, 32), (24, 48), (48, 64)]
    assert config.schedule.warmup_steps == 1
    assert [start for start, _ in config.curriculum.vague_schedule] == [0, 4, 8, 12, 16]
    scaled = config.scaled(12)
    assert [s.end_step for s in scaled.stages] == [2, 4, 6, 12]
    assert scaled.curriculum.vague_probability(4) == 0.6
    assert scaled.lr_at(12) == pytest.approx(5e-5)


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="multiple of 16"):
        Stage(end_step=10, patch=30, batch_size=1)
    with pytest.raises(ValidationError, match="last stage ends"):
        TrainConfig(variant="tiny", stages=(Stage(end_step=5, patch=16, batch_size=1),))
    with pytest.raises(ValidationError, match="unknown variant"):
        config_for_variant("tiny").with_overrides(variant="cotir-1t")
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        config_for_variant("tiny").with_overrides(learning_rate=1.0)
    with pytest.raises(ValidationError, match="start at step 0"):
        CurriculumConfig(vague_schedule=((5, 0.2),))
    with pytest.raises(ValidationError, match="placeholder"):
        CurriculumConfig(fallback="Fix {what}.")


def _mix(degradation: str, step: int, draws: int = 20_000) -> Counter[tuple[str, str]]:
    rng = random.Random(1234)
    curriculum = CurriculumConfig()
    counts: Counter[tuple[str, str]] = Counter()
    for _ in range(draws):
        choice = choose_prompt(rng, degradation, ["my vague q", "my precise q"], step, curriculum)
        counts[(choice.arm, choice.source)] += 1
    return counts


@pytest.mark.parametrize(("step", "vague"), [(0, 0.2), (25_000, 0.4), (50_000, 0.6)])
def test_prompt_mix_proportions(step: int, vague: float) -> None:
    draws = 20_000
    counts = _mix("haze", step, draws)
    share = {key: value / draws for key, value in counts.items()}
    assert share[("vague", "list")] == pytest.approx(vague * 0.8, abs=0.015)
    assert share[("vague", "question")] == pytest.approx(vague * 0.2, abs=0.015)
    assert share[("precise", "template")] == pytest.approx((1 - vague) * 0.7, abs=0.015)
    assert share[("precise", "question")] == pytest.approx((1 - vague) * 0.3, abs=0.015)


def test_prompt_mix_for_lost_color_and_composites() -> None:
    draws = 20_000
    lost = _mix("lost_color", 0, draws)
    assert lost[("precise", "template")] / draws == pytest.approx(0.8 * 0.2, abs=0.015)
    assert lost[("precise", "question")] / draws == pytest.approx(0.8 * 0.8, abs=0.015)
    # A composite has no template list: the template arm falls back.
    composite = _mix("low_light+noise", 0, draws)
    assert ("precise", "template") not in composite
    assert composite[("precise", "fallback")] / draws == pytest.approx(0.8 * 0.7, abs=0.015)


def test_prompt_texts_come_from_their_sources() -> None:
    rng = random.Random(0)
    curriculum = CurriculumConfig()
    seen = Counter()
    for _ in range(2000):
        choice = choose_prompt(rng, "haze", ["", "the precise one"], 50_000, curriculum)
        seen[choice.source] += 1
        if choice.source == "list":
            assert choice.text in gen_prompts()
        elif choice.source == "template":
            assert choice.text in spe_prompts("haze")
        elif choice.source == "question":
            assert choice.text == "the precise one"
        else:  # the empty vague question falls back
            assert choice.text == "Please correct haze issues."
            assert choice.arm == "vague"
    assert set(seen) == {"list", "template", "question", "fallback"}
    rng = random.Random(0)
    composite = choose_prompt(rng, "low_light+noise", ["", ""], 0, curriculum)
    assert composite.text in (*gen_prompts(), "Please correct low light and noise issues.")
