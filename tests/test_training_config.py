"""Training configuration: paper values, LR schedule, stages, curriculum and prompt mix."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from cotir_pipeline.annotation.prompts import gen_prompts, spe_prompts
from models.data import choose_prompt, jpeg_type_templates
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


def _release_lr(step: int) -> float:
    """The release's lr at optimizer step ``step``, written out from its definition.

    diffusers' cosine schedule (warm-up step / 2000, then 0.5 (1 + cos(pi p)) over
    num_training_steps = 120,001) times the peak, raised to min_learning_rate after every
    scheduler step; step 0 comes before the first scheduler step.
    """
    peak, floor, warmup, horizon = 5e-4, 5e-5, 2000, 120_001
    if step < warmup:
        value = peak * step / warmup
    else:
        value = peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (horizon - warmup)))
    return value if step == 0 else max(floor, value)


@pytest.mark.parametrize("variant", ["cotir-12b", "cotir-4b", "cotir-9b"])
def test_full_variants_follow_the_release_lr_curve(variant: str) -> None:
    config = config_for_variant(variant)
    assert config.schedule.curve == "release"
    peak, floor = 5e-4, 5e-5
    assert config.lr_at(0) == 0.0  # the first step does not move the weights
    assert config.lr_at(1) == pytest.approx(floor)  # 2.5e-7 raised to the floor
    assert config.lr_at(200) == pytest.approx(floor)
    assert config.lr_at(400) == pytest.approx(peak / 5)
    assert config.lr_at(2000) == pytest.approx(peak)
    middle = peak * 0.5 * (1 + math.cos(math.pi * 58_000 / 118_001))
    assert config.lr_at(60_000) == pytest.approx(middle, rel=1e-12)
    assert config.lr_at(60_000) == pytest.approx(2.56658e-4, rel=1e-5)
    assert config.lr_at(95_831) == pytest.approx(floor)
    assert config.lr_at(120_000) == pytest.approx(floor)
    for step in (0, 1, 2, 199, 201, 1999, 2000, 2001, 30_000, 60_000, 95_830, 95_831, 119_999):
        assert config.lr_at(step) == pytest.approx(_release_lr(step), rel=1e-12, abs=0), step
    # The cosine crosses the floor where 0.5 (1 + cos(pi p)) = 0.1.
    crossing = 2000 + 118_001 * math.acos(-0.8) / math.pi
    assert math.ceil(crossing) == 95_831
    first = next(k for k in range(90_000, 100_000) if config.lr_at(k) <= floor)
    assert first == 95_831
    assert config.lr_at(95_830) > floor
    assert config.schedule.floor_step(peak) == 95_831
    assert all(config.lr_at(k) == pytest.approx(floor) for k in range(95_831, 120_000, 1009))


@pytest.mark.parametrize("processes", [1, 2])
def test_release_curve_matches_diffusers_scheduler_with_the_floor(processes: int) -> None:
    """Step the release's scheduler the way its trainer does, on a short schedule."""
    from diffusers.optimization import get_scheduler

    schedule = ScheduleConfig(total_steps=1200, warmup_steps=20, cosine_steps=1201, min_lr=0.1)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1.0)
    # accelerate's prepared scheduler steps once per process, hence the scaled lengths.
    scheduler = get_scheduler(
        "cosine",
        optimizer=optimizer,
        num_warmup_steps=20 * processes,
        num_training_steps=1201 * processes,
    )
    for step in range(1200):
        assert schedule.lr_at(step, 1.0) == pytest.approx(optimizer.param_groups[0]["lr"]), step
        optimizer.step()
        for _ in range(processes):
            scheduler.step()
        for group in optimizer.param_groups:
            group["lr"] = max(group["lr"], 0.1)


def test_cosine_to_floor_curve_values() -> None:
    """The demo's curve: warm-up (k + 1) / warmup, then a cosine ending at the floor."""
    config = config_for_variant("cotir-4b")
    config = config.with_overrides(
        schedule=config.schedule.model_copy(update={"curve": "cosine_to_floor"})
    )
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
    assert config.schedule.floor_step(peak) is None  # the floor comes at total_steps
    demo = config_for_variant("demo")
    assert demo.schedule.curve == "cosine_to_floor"
    assert demo.lr_at(0) > 0


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
    # The toy mirrors the paper's recipe, so it runs the release's curve too.
    assert config.schedule.curve == "release"
    assert config.lr_at(0) == 0.0
    assert config.lr_at(1) == pytest.approx(5e-4)
    paper = config_for_variant("cotir-12b").scaled(480)
    assert (paper.schedule.warmup_steps, paper.schedule.cosine_steps) == (8, 480)
    assert paper.schedule.curve == "release"


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


def test_jpeg_type_lists_replace_the_jpeg_templates(tmp_path: Path) -> None:
    """A JPEG sample's jpeg_type names its own template list (the release's rule)."""
    (tmp_path / "q20.txt").write_text("Undo the q20 blocking.\n\nUndo the q20 ringing.\n")
    curriculum = CurriculumConfig(jpeg_type_prompt_dir=str(tmp_path))
    assert jpeg_type_templates("q20", str(tmp_path)) == (
        "Undo the q20 blocking.",
        "Undo the q20 ringing.",
    )
    draws = 20_000

    def mix(degradation: str, jpeg_type: str | None) -> Counter[str]:
        rng = random.Random(7)
        counts: Counter[str] = Counter()
        for _ in range(draws):
            choice = choose_prompt(
                rng, degradation, ["vague q", "precise q"], 0, curriculum, jpeg_type
            )
            counts[choice.source] += 1
            if choice.source == "jpeg_type":
                assert choice.text in jpeg_type_templates("q20", str(tmp_path))
                assert choice.arm == "precise"
            elif choice.source == "template":
                assert choice.text in spe_prompts(degradation)
        return counts

    jpeg = mix("jpeg", "q20")
    assert "template" not in jpeg  # the type's list takes the whole template share
    assert jpeg["jpeg_type"] / draws == pytest.approx(0.8 * 0.7, abs=0.015)
    assert jpeg["question"] / draws == pytest.approx(0.8 * 0.3 + 0.2 * 0.2, abs=0.015)
    # A composite with JPEG uses it too (it has no list of its own).
    composite = mix("low_light+jpeg", "q20")
    assert composite["jpeg_type"] / draws == pytest.approx(0.8 * 0.7, abs=0.015)
    assert "fallback" not in composite
    # Only JPEG samples: a jpeg_type on another degradation is ignored.
    assert "jpeg_type" not in mix("noise", "q20")
    # A type without a list keeps the degradation's templates.
    unknown = mix("jpeg", "q99")
    assert "jpeg_type" not in unknown
    assert unknown["template"] / draws == pytest.approx(0.8 * 0.7, abs=0.015)
    assert jpeg_type_templates("../q20", str(tmp_path)) == ()  # not a plain file name


def test_shipped_prompts_have_no_list_for_our_jpeg_types() -> None:
    """Our shards' jpeg_type is q<quality>; no such list ships, so jpeg.txt stays in use."""
    assert jpeg_type_templates("q20") == ()
    assert jpeg_type_templates("jpeg") == spe_prompts("jpeg")  # the folder is the shipped one
    rng = random.Random(0)
    sources = {
        choose_prompt(rng, "jpeg", ["", "p"], 0, CurriculumConfig(), "q20").source
        for _ in range(200)
    }
    assert "jpeg_type" not in sources
    assert "template" in sources


def test_the_lq_start_flags_set_the_whole_recipe_and_the_paper_is_the_default() -> None:
    from models.train_config import LQ_START_FLAGS
    from models.train_options import build_config, parse_options

    base = ["--variant", "demo", "--shards", "s", "--out", "o"]
    paper = build_config(parse_options(base))
    assert (paper.flow_start, paper.flow_times, paper.velocity, paper.fm_weighting) == (
        "noise",
        "logit_normal",
        "model",
        "mean",
    )
    lq_start = build_config(parse_options([*base, *LQ_START_FLAGS]))
    assert (lq_start.flow_start, lq_start.flow_times, lq_start.velocity) == (
        "reference",
        "start",
        "delta",
    )
    assert lq_start.fm_weighting == "relative"
    assert lq_start.fm_relative_floor == pytest.approx(1e-2)
    assert (paper.lora_scope, lq_start.lora_scope) == ("paper", "text_path")
    floor = build_config(parse_options([*base, *LQ_START_FLAGS, "--fm-relative-floor", "2e-4"]))
    assert floor.fm_relative_floor == pytest.approx(2e-4)
    with pytest.raises(ValidationError, match="greater than 0"):
        build_config(parse_options([*base, "--fm-relative-floor", "0"]))
