"""The ``python -m models.train`` command line: its flags, the options they make, and the
training config those options select (the variant's, scaled and overridden)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.kinds import LORA_SCOPES
from models.losses import ConstraintMode
from models.train_config import Stage, TrainConfig, config_for_variant

#: ``--resume``: never, from the newest finished checkpoint if any, or it must exist.
RESUME_CHOICES = ("no", "auto", "required")


@dataclass(frozen=True)
class TrainOptions:
    """Command-line options of one run (see :func:`build_parser` for their meaning)."""

    variant: str
    shards: str
    out: Path
    steps: int | None = None
    stop_at: int | None = None
    constraint_mode: str | None = None
    seed: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    patch: int | None = None
    num_workers: int | None = None
    log_every: int | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int | None = None
    mixed_precision: str | None = None
    gradient_checkpointing: bool = False
    lora_init_b: str | None = None
    lora_scope: str | None = None
    trainable_dtype: str | None = None
    flow_start: str | None = None
    flow_times: str | None = None
    velocity: str | None = None
    fm_weighting: str | None = None
    fm_relative_floor: float | None = None
    base: Path | None = None
    no_adapter: bool = False
    resume: str = "no"
    store_url: str | None = None
    cache_dir: Path | None = None
    cpu: bool = False
    plots: bool = True


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m models.train`` command line, its flags in four groups."""
    parser = argparse.ArgumentParser(
        prog="python -m models.train",
        description="Train CoTIR (flow matching under CoT constraints) on training shards.",
    )
    _add_run_arguments(parser.add_argument_group("run"))
    _add_recipe_arguments(parser.add_argument_group("recipe"))
    _add_machine_arguments(parser.add_argument_group("machine"))
    _add_reporting_arguments(parser.add_argument_group("reporting"))
    return parser


def _add_run_arguments(group: argparse._ArgumentGroup) -> None:
    """What to train, on what, and where: the run folder and its schedule."""
    group.add_argument("--variant", required=True, help="Model variant: tiny, cotir-4b, ...")
    group.add_argument(
        "--shards",
        required=True,
        help="Training shards: a local folder of <degradation>/*.tar, or a store URL "
        "(s3://bucket/prefix/training_shards) downloaded to --cache-dir first.",
    )
    group.add_argument("--out", required=True, type=Path, help="Run folder (created).")
    group.add_argument(
        "--steps",
        type=int,
        help="Schedule length; every step count of the variant's config (stages, warm-up, "
        "curriculum) is scaled to it. Default: the variant's (120000; 48 for tiny).",
    )
    group.add_argument(
        "--stop-at",
        type=int,
        help="Stop after this many steps (checkpointed), without changing the schedule; "
        "continue later with --resume.",
    )
    group.add_argument("--seed", type=int, help="Seed of LoRA init, noise and data order.")
    group.add_argument(
        "--base",
        type=Path,
        help="Base model folder (diffusers layout, transformer/ inside): default the "
        "variant's (COTIR_WEIGHTS_DIR/<FLUX folder>, or the demo's shipped prior).",
    )
    group.add_argument(
        "--resume",
        nargs="?",
        const="required",
        default="no",
        choices=RESUME_CHOICES,
        help="Continue from the latest finished checkpoint in --out (or --store-url): "
        "'--resume' alone fails if there is none, '--resume auto' starts fresh then.",
    )
    group.add_argument(
        "--store-url",
        help="Also upload every checkpoint to this object-store folder "
        "(s3://bucket/prefix or file:///abs/path); resume reads it when --out has none.",
    )
    group.add_argument(
        "--cache-dir", type=Path, help="Where store shards are downloaded (default <out>/cache)."
    )


def _add_recipe_arguments(group: argparse._ArgumentGroup) -> None:
    """The recipe: constraints, optimiser, patches, LoRA, and the flow."""
    group.add_argument(
        "--constraint-mode",
        choices=[mode.value for mode in ConstraintMode],
        help="How the CoT losses enter: none, union, fixed, lagrangian (default).",
    )
    group.add_argument(
        "--lr",
        type=float,
        help="Peak learning rate (default: the variant's: 5e-4, or 2e-3 for the demo variants).",
    )
    group.add_argument(
        "--batch-size", type=int, help="Per-process batch for every stage (default: per stage)."
    )
    group.add_argument(
        "--patch",
        type=int,
        help="One training patch side for every stage (a multiple of 16; default: per stage).",
    )
    group.add_argument(
        "--lora-init-b",
        choices=["zero", "random"],
        help="LoRA B initialisation: zero (standard, default) or random (the release).",
    )
    group.add_argument(
        "--lora-scope",
        choices=list(LORA_SCOPES),
        help="Which Linears carry LoRA: paper (single-stream blocks and final layer, default) "
        "or text_path (also the prompt's projection and the double-stream text stream).",
    )
    group.add_argument(
        "--trainable-dtype",
        choices=["fp32", "bf16"],
        help="dtype of the trained adapter and LoRA weights: fp32 master weights (default) "
        "or bf16 as the release trains them (needs --mixed-precision bf16 or a GPU).",
    )
    group.add_argument(
        "--flow-start",
        choices=["noise", "reference"],
        help="Where the flow starts: noise (the paper, default) or the LQ reference tokens "
        "(the demo's main recipe).",
    )
    group.add_argument(
        "--flow-times",
        choices=["logit_normal", "start"],
        help="logit_normal: t = sigmoid(N(0, 1)) (the paper, default); start: every sample "
        "at t = 1, the LQ itself, sampled in one step (needs --flow-start reference).",
    )
    group.add_argument(
        "--velocity",
        choices=["model", "delta"],
        help="model: the output is the velocity (the paper, default); delta: the change "
        "to the frozen base's output (zero before training; the demo's LQ-start recipe).",
    )
    group.add_argument(
        "--fm-weighting",
        choices=["mean", "relative", "log"],
        help="mean: the paper's flow-matching MSE (default); relative: each sample's error "
        "relative to its target's energy; log: the log of that ratio (the demo's LQ-start "
        "recipe).",
    )
    group.add_argument(
        "--fm-relative-floor",
        type=float,
        help="Floor added to each target's mean square under --fm-weighting relative or "
        "log (default 1e-3, on the [-1, 1] pixel scale).",
    )
    group.add_argument(
        "--no-adapter",
        action="store_true",
        help="Table VII arm (a): keep the adapter's injection gates at zero (base + LoRA "
        "only); use with --constraint-mode none.",
    )


def _add_machine_arguments(group: argparse._ArgumentGroup) -> None:
    """How it runs here: precision, memory, workers, device."""
    group.add_argument("--num-workers", type=int, help="Data loader worker processes.")
    group.add_argument(
        "--mixed-precision",
        choices=["auto", "no", "bf16"],
        help="auto (default): bf16 on CUDA, fp32 on the CPU.",
    )
    group.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="Recompute the backbone's blocks in backward (less memory, ~30%% slower).",
    )
    group.add_argument("--cpu", action="store_true", help="Train on the CPU even with a GPU.")


def _add_reporting_arguments(group: argparse._ArgumentGroup) -> None:
    """What it reports and keeps: metric lines, checkpoints, plots."""
    group.add_argument("--log-every", type=int, help="Steps between streamed metric lines.")
    group.add_argument("--checkpoint-every", type=int, help="Steps between checkpoints.")
    group.add_argument("--keep-checkpoints", type=int, help="Local checkpoints kept.")
    group.add_argument("--no-plots", action="store_true", help="Do not draw the PNG plots.")


def parse_options(argv: Sequence[str] | None = None) -> TrainOptions:
    """Parse and check the command line."""
    args = build_parser().parse_args(argv)
    for name in ("steps", "stop_at", "batch_size", "patch", "log_every", "checkpoint_every"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive, got {value}")
    return TrainOptions(
        variant=args.variant,
        shards=args.shards,
        out=args.out,
        steps=args.steps,
        stop_at=args.stop_at,
        constraint_mode=args.constraint_mode,
        seed=args.seed,
        lr=args.lr,
        batch_size=args.batch_size,
        patch=args.patch,
        num_workers=args.num_workers,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        lora_init_b=args.lora_init_b,
        lora_scope=args.lora_scope,
        trainable_dtype=args.trainable_dtype,
        flow_start=args.flow_start,
        flow_times=args.flow_times,
        velocity=args.velocity,
        fm_weighting=args.fm_weighting,
        fm_relative_floor=args.fm_relative_floor,
        base=args.base,
        no_adapter=args.no_adapter,
        resume=args.resume,
        store_url=args.store_url,
        cache_dir=args.cache_dir,
        cpu=args.cpu,
        plots=not args.no_plots,
    )


def build_config(options: TrainOptions) -> TrainConfig:
    """The variant's config, scaled to ``--steps`` and with the command line's overrides."""
    config = config_for_variant(options.variant)
    if options.steps is not None:
        config = config.scaled(options.steps)
    changes: dict[str, Any] = {}
    for name in (
        "seed",
        "num_workers",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "mixed_precision",
        "lora_init_b",
        "lora_scope",
        "trainable_dtype",
        "flow_start",
        "flow_times",
        "velocity",
        "fm_weighting",
        "fm_relative_floor",
    ):
        value = getattr(options, name)
        if value is not None:
            changes[name] = value
    if options.gradient_checkpointing:
        changes["gradient_checkpointing"] = True
    if options.lr is not None:
        changes["optimizer"] = config.optimizer.model_copy(update={"lr": options.lr})
    if options.constraint_mode is not None:
        changes["constraints"] = config.constraints.model_copy(
            update={"mode": ConstraintMode(options.constraint_mode)}
        )
    stage_changes: dict[str, Any] = {}
    if options.batch_size is not None:
        stage_changes["batch_size"] = options.batch_size
    if options.patch is not None:
        stage_changes["patch"] = options.patch
    if stage_changes:
        changes["stages"] = tuple(
            Stage.model_validate({**stage.model_dump(), **stage_changes}) for stage in config.stages
        )
    return config.with_overrides(**changes) if changes else config
