"""Train CoTIR: flow matching under Lagrangian CoT constraints (REFERENCE.md sections 3-4).

One GPU::

    python -m models.train --variant cotir-4b --shards /data/training_shards --out runs/cotir-4b

Eight GPUs on one node (DDP; per-process batch as in the paper's stages)::

    accelerate launch --multi_gpu --num_processes 8 -m models.train \\
        --variant cotir-4b --shards /data/training_shards --out runs/cotir-4b \\
        --store-url s3://bucket/checkpoints/cotir-4b --resume auto

CoTIR-12B with FSDP (the backbone does not fit DDP's full replicas)::

    accelerate launch --config_file configs/accelerate/fsdp_12b.yaml -m models.train \\
        --variant cotir-12b --shards /data/training_shards --out runs/cotir-12b \\
        --gradient-checkpointing

A tiny CPU run (the demo variant, 48 steps, about half a minute)::

    python -m models.train --variant tiny --shards .cotir/store/training_shards \\
        --out runs/tiny --steps 48

and on two CPU processes (gloo)::

    accelerate launch --multi_gpu --num_processes 2 -m models.train --variant tiny ...

Each step: clean and LQ images are encoded by the variant's codec, the prompt chosen
by the curriculum and the three CoT parts of the answer by its text encoder (targets);
t = sigmoid(N(0, 1)), z_t = (1 - t) g + t eps; the model predicts eps - g from
``[z_t ; LQ reference tokens]`` and the prompt, plus the three per-token CoT predictions.
The primal step is AdamW on L_FM + sum sg(lambda_i) psi_i (clipped, cosine schedule);
the dual step ascends the multipliers on the violations averaged over all processes,
so every rank holds the same multipliers. See docs/TRAINING.md.

Outputs under ``--out``: ``metrics.jsonl`` (one record per step) and ``metrics.csv``,
``plots/restoration_loss.png`` and ``plots/multipliers.png`` (the paper's Fig. 10),
``checkpoints/step-NNNNNNN/`` (written atomically: ``model/`` is an inference checkpoint
``CoTIRRestorer.from_pretrained`` loads; ``trainable.safetensors``,
``training_state.pt`` and ``rank-*.pt`` resume training exactly), ``ranks/rank-*.json``.
Launched by Dagster Pipes, metrics stream back as log lines and custom messages and the
last process reports the asset materialization; otherwise they are printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cotir_pipeline.checkpoint_layout import (
    CHECKPOINT_MARKER,
    CHECKPOINTS_DIR,
    LATEST_FILE,
    MODEL_DIR,
    MODEL_HASH_FIELD,
)
from cotir_pipeline.digests import file_sha256, folder_sha256
from cotir_pipeline.settings import SettingsError, load_settings
from models.consumption import ConsumptionLog
from models.data import DataPosition, derive_seed, discover_shards, make_loader
from models.dual import DualOptimizer
from models.launch import die_with_parent
from models.losses import (
    HEADS,
    ConstraintMode,
    build_objective,
    constraint_names,
    cot_head_losses,
    flow_matching_loss,
    has_learnable_multipliers,
    interpolate,
    sample_timesteps,
    velocity_target,
)
from models.metrics_plots import plot_training_curves, read_jsonl, write_csv
from models.rng_state import restore_rng, rng_state
from models.run_checkpoints import (
    export_inference_checkpoint,
    fetch_latest_from_store,
    finished_checkpoints,
    latest_checkpoint,
    upload_checkpoint,
    write_text_atomically,
)
from models.text_feature_cache import TextFeatureCache
from models.train_config import TrainConfig
from models.train_options import TrainOptions, build_config, parse_options
from models.train_reporting import Reporter, peak_memory_mib
from models.variants import Variant, get_variant

TRAINABLE_FILE = "trainable.safetensors"
STATE_FILE = "training_state.pt"
METRICS_FILE = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
PLOTS_DIR = "plots"


class ResumeError(RuntimeError):
    """``--resume required`` found no finished checkpoint, or one that does not fit."""


# -- the run ------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a run produced (returned on every process; paths are the main process's)."""

    start_step: int
    final_step: int
    checkpoint: Path | None
    checkpoint_sha256: str | None
    checkpoint_uri: str | None
    metrics_path: Path
    plots: dict[str, Path] = field(default_factory=dict)
    last_record: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    samples_per_degradation: dict[str, int] = field(default_factory=dict)


@dataclass
class _Parts:
    """Everything the loop holds."""

    accelerator: Any
    variant: Variant
    config: TrainConfig
    model: Any
    codec: Any
    text_encoder: Any
    texts: TextFeatureCache
    optimizer: Any
    scheduler: Any
    dual: DualOptimizer | None
    fixed: torch.Tensor | None
    noise: torch.Generator
    base: dict[str, str] | None = None
    #: Parameters that would train but are held fixed (the gates of --no-adapter).
    held: dict[str, torch.Tensor] = field(default_factory=dict)


def _make_accelerator(options: TrainOptions, config: TrainConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    # Without an accelerator, accelerate only sets up gloo (multi-CPU DDP) when told cpu=True.
    has_accelerator = torch.cuda.is_available() or (
        hasattr(torch, "xpu") and torch.xpu.is_available()
    )
    use_cpu = options.cpu or not has_accelerator
    precision = config.mixed_precision
    if precision == "auto":
        precision = "no" if use_cpu else "bf16"
    return Accelerator(
        cpu=use_cpu,
        mixed_precision=precision,
        kwargs_handlers=[
            # Mode none leaves the CoT prediction layers out of the loss graph.
            DistributedDataParallelKwargs(
                find_unused_parameters=config.constraints.mode is ConstraintMode.NONE
            )
        ],
    )


#: The adapter's zero-initialised injection gates (REFERENCE.md section 2).
ADAPTER_GATES = ("scale_sharpness", "scale_degradation", "scale_planning")


def _build(
    accelerator: Any,
    config: TrainConfig,
    reporter: Reporter,
    base: Path | None = None,
    *,
    no_adapter: bool = False,
) -> _Parts:
    from models.lora import apply_lora, freeze
    from models.restore import CoTIRRestorer, base_fingerprint, bundled_base_path

    variant = get_variant(config.variant)
    precision = str(accelerator.mixed_precision)
    mode = config.constraints.mode
    frozen_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    trainable_dtype = torch.float32
    if config.trainable_dtype == "bf16":
        if precision != "bf16":
            raise ValueError(
                f"trainable_dtype bf16 needs bf16 mixed precision, not {precision!r} "
                "(pass --mixed-precision bf16)"
            )
        trainable_dtype = torch.bfloat16
    # The same seed on every rank: identical LoRA (and, for full variants, adapter) init.
    torch.manual_seed(config.seed)
    restorer = CoTIRRestorer.from_variant(
        config.variant, device="cpu", dtype=frozen_dtype, base=base
    )
    base_info = None
    if base is not None:
        base_info = base_fingerprint(base)
    elif variant.bundled_base is not None:
        base_info = base_fingerprint(bundled_base_path(variant))  # checked by from_variant
    model = restorer.model
    apply_lora(model, variant.lora_rank, init_b=config.lora_init_b, scope=config.lora_scope)
    model.velocity_delta = config.velocity == "delta"
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.to(trainable_dtype)
    held: dict[str, torch.Tensor] = {}
    if no_adapter:
        if config.constraints.mode is not ConstraintMode.NONE:
            raise ValueError("--no-adapter trains without CoT supervision: use mode none")
        for gate in ADAPTER_GATES:
            parameter = getattr(model.cot_adapter, gate)
            parameter.requires_grad_(False)
            held[f"cot_adapter.{gate}"] = parameter.detach().clone()
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    codec = restorer.codec.to(accelerator.device)
    text_encoder = restorer.text_encoder.to(accelerator.device)
    freeze(codec, text_encoder)
    trainable = [p for p in model.parameters() if p.requires_grad]
    model, optimizer, scheduler = _optimization(accelerator, config, model, trainable)
    dual, fixed = _multipliers(config, accelerator.device)
    noise = torch.Generator().manual_seed(
        derive_seed(config.seed, accelerator.process_index, "noise")
    )
    reporter.info(
        f"{variant.name}: {sum(p.numel() for p in trainable):,d} trainable parameters, "
        f"{accelerator.num_processes} process(es) on {accelerator.device}, precision {precision}, "
        f"constraints {mode.value}"
    )
    return _Parts(
        accelerator,
        variant,
        config,
        model,
        codec,
        text_encoder,
        TextFeatureCache(text_encoder, variant.max_text_tokens, config.text_cache_size),
        optimizer,
        scheduler,
        dual,
        fixed,
        noise,
        base_info,
        held,
    )


def _optimization(
    accelerator: Any, config: TrainConfig, model: nn.Module, trainable: list[nn.Parameter]
) -> tuple[Any, Any, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable weights, both prepared by accelerate, and the lr schedule."""
    optim = config.optimizer
    optimizer = torch.optim.AdamW(
        trainable, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay, eps=optim.eps
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    # Not prepared: accelerate would step it once per process and step.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
        lambda step: config.lr_at(step) / optim.lr,
    )
    return model, optimizer, scheduler


def _multipliers(
    config: TrainConfig, device: torch.device
) -> tuple[DualOptimizer | None, torch.Tensor | None]:
    """The constraint mode's multipliers: learnable (dual ascent), fixed, or none."""
    mode = config.constraints.mode
    if has_learnable_multipliers(mode):
        dual = DualOptimizer(
            constraint_names(mode),
            lr=config.constraints.dual_lr,
            betas=config.constraints.dual_betas,
            device=device,
        )
        return dual, None
    if mode is ConstraintMode.FIXED:
        return None, torch.full((len(HEADS),), config.constraints.fixed_coefficient)
    return None, None


def _model_inputs(parts: _Parts, batch: Any) -> dict[str, Any]:
    from models.backbones import BackboneKind, grid_to_tokens, noisy_and_reference_ids, text_ids
    from models.text_targets import split_cot_answer

    device = parts.accelerator.device
    variant = parts.variant
    with torch.no_grad():
        # The VAE codecs cast to their own dtype; the pixel codec keeps float32.
        hq = batch.hq.to(device, torch.float32)
        lq = batch.lq.to(device, torch.float32)
        clean = grid_to_tokens(parts.codec.encode(hq)).float()
        reference = grid_to_tokens(parts.codec.encode(lq)).float()
        answers = [split_cot_answer(answer) for answer in batch.answers]
        parts.texts.prefetch(
            [*batch.prompts, *(text for a in answers for text in (a.scene, a.degradation, a.plan))]
        )
        prompt = parts.texts.encode(batch.prompts).to(device, torch.float32)
        targets = {
            "scene": parts.texts.encode([a.scene for a in answers]),
            "degradation": parts.texts.encode([a.degradation for a in answers]),
            "plan": parts.texts.encode([a.plan for a in answers]),
        }
    grid = batch.hq.shape[-1] // parts.codec.stride
    kind = variant.backbone
    ids = noisy_and_reference_ids(kind, grid, grid, device=device)
    guidance = None
    pooled = None
    if kind is BackboneKind.FLUX1_KONTEXT:
        pooled = prompt.pooled
        if variant.guidance is not None:
            guidance = torch.full((len(batch),), variant.guidance, device=device)
    return {
        "clean": clean,
        "reference": reference,
        "prompt": prompt.embeds,
        "ids": ids,
        "txt_ids": text_ids(kind, prompt.embeds.shape[1], device=device),
        "pooled": pooled,
        "guidance": guidance,
        "targets": {name: item.embeds.to(device, torch.float32) for name, item in targets.items()},
    }


def _train_step(parts: _Parts, batch: Any) -> dict[str, torch.Tensor]:
    accelerator = parts.accelerator
    device = accelerator.device
    config = parts.config
    mode = config.constraints.mode
    inputs = _model_inputs(parts, batch)
    clean = inputs["clean"]
    t = sample_timesteps(clean.shape[0], generator=parts.noise, device=device)
    if config.flow_times == "start":
        t = torch.ones_like(t)
    noise = torch.randn(clean.shape, generator=parts.noise).to(device)
    if config.flow_start == "reference":
        # The demo's main recipe: the flow runs from the LQ tokens to the HQ tokens.
        noise = inputs["reference"]
    noisy = interpolate(clean, noise, t)
    hidden = torch.cat([noisy, inputs["reference"]], dim=1)
    with accelerator.autocast():
        output = parts.model(
            hidden,
            inputs["prompt"],
            t,
            inputs["ids"],
            inputs["txt_ids"],
            pooled_projections=inputs["pooled"],
            guidance=inputs["guidance"],
        )
    n_tokens = clean.shape[1]
    loss_fm = flow_matching_loss(
        output.sample[:, :n_tokens],
        velocity_target(clean, noise),
        relative_floor=config.fm_relative_floor if config.fm_weighting != "mean" else None,
        log_ratio=config.fm_weighting == "log",
    )
    predictions = {"scene": output.scene, "degradation": output.degradation, "plan": output.plan}
    if mode is ConstraintMode.NONE:
        predictions = {name: value.detach() for name, value in predictions.items()}
    heads = cot_head_losses(predictions, inputs["targets"])
    coefficients = parts.dual.coefficients() if parts.dual is not None else parts.fixed
    objective = build_objective(loss_fm, heads, mode, coefficients, delta=config.constraints.delta)
    accelerator.backward(objective.total)
    grad_norm = accelerator.clip_grad_norm_(parts.model.parameters(), config.optimizer.grad_clip)
    parts.optimizer.step()
    parts.scheduler.step()
    parts.optimizer.zero_grad(set_to_none=True)
    stats = torch.cat(
        [
            torch.stack(
                [objective.total.detach().float(), loss_fm.detach().float()]
                + [heads[name].detach().float() for name in HEADS]
            ),
            objective.violations.float(),
        ]
    ).to(device)
    stats = accelerator.reduce(stats, reduction="mean")
    violations = stats[2 + len(HEADS) :]
    if parts.dual is not None:
        parts.dual.step(violations)
    result = {"loss": stats[0], "loss_fm": stats[1]}
    result.update({f"loss_{name}": stats[2 + i] for i, name in enumerate(HEADS)})
    result.update({f"violation_{n}": violations[i] for i, n in enumerate(objective.names)})
    result["grad_norm"] = torch.as_tensor(grad_norm).detach().float()
    return result


class _Checkpointer:
    """Atomic checkpoint folders, the ``latest`` pointer, pruning and store upload."""

    def __init__(
        self, out: Path, accelerator: Any, reporter: Reporter, keep: int, store_url: str | None
    ) -> None:
        self.root = out / CHECKPOINTS_DIR
        self.accelerator = accelerator
        self.reporter = reporter
        self.keep = keep
        self.store_url = store_url
        self.last: Path | None = None
        self.last_sha256: str | None = None
        self.last_uri: str | None = None

    def save(self, parts: _Parts, step: int, rank_state: Mapping[str, Any]) -> None:
        from safetensors.torch import save_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        accelerator = self.accelerator
        name = f"step-{step:07d}"
        partial = self.root / f".partial-{name}"
        trainable, optimizer_state = get_state_dict(
            parts.model,
            parts.optimizer,
            options=StateDictOptions(
                full_state_dict=True, cpu_offload=True, ignore_frozen_params=True
            ),
        )
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        accelerator.wait_for_everyone()
        torch.save(dict(rank_state), partial / f"rank-{accelerator.process_index:05d}.pt")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            tensors = {k: v.detach().contiguous().cpu() for k, v in trainable.items()}
            tensors.update({k: v.contiguous().cpu() for k, v in parts.held.items()})
            save_file(tensors, str(partial / TRAINABLE_FILE))
            torch.save(
                {
                    "step": step,
                    "optimizer": optimizer_state,
                    "scheduler": parts.scheduler.state_dict(),
                    "dual": parts.dual.state_dict() if parts.dual is not None else None,
                    "world_size": accelerator.num_processes,
                    "config": parts.config.model_dump_json(),
                },
                partial / STATE_FILE,
            )
            export_inference_checkpoint(
                tensors,
                parts.variant,
                partial / MODEL_DIR,
                lora_scope=parts.config.lora_scope,
                extra_meta={
                    "flow_start": parts.config.flow_start,
                    "velocity": parts.config.velocity,
                    **({"sample_steps": 1} if parts.config.flow_times == "start" else {}),
                    "base": parts.base,
                },
            )
            model_sha = folder_sha256(partial / MODEL_DIR)
            marker = {
                "step": step,
                "total_steps": parts.config.total_steps,
                "final": step >= parts.config.total_steps,
                "run": self.root.parent.name,
                "variant": parts.variant.name,
                "flow_start": parts.config.flow_start,
                "velocity": parts.config.velocity,
                "constraint_mode": parts.config.constraints.mode.value,
                MODEL_HASH_FIELD: model_sha,
                "files": {
                    p.relative_to(partial).as_posix(): file_sha256(p)
                    for p in sorted(partial.rglob("*"))
                    if p.is_file()
                },
            }
            (partial / CHECKPOINT_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
            final = self.root / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(partial, final)
            write_text_atomically(self.root / LATEST_FILE, name + "\n")
            for old in finished_checkpoints(self.root)[: -self.keep]:
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
            self.last, self.last_sha256 = final, model_sha
            if self.store_url:
                self.last_uri = upload_checkpoint(self.store_url, final)
            self.reporter.info(f"checkpoint {final} (model sha256 {model_sha[:12]})")
        accelerator.wait_for_everyone()

    def find(self, resume: str) -> Path | None:
        """The checkpoint to resume from (downloaded from the store when only it has one)."""
        if resume == "no":
            return None
        accelerator = self.accelerator
        if accelerator.is_main_process:
            found = latest_checkpoint(self.root)
            if found is None and self.store_url:
                found = fetch_latest_from_store(self.store_url, self.root)
        accelerator.wait_for_everyone()
        found = latest_checkpoint(self.root)
        if found is None and resume == "required":
            where = f"{self.root}" + (f" or {self.store_url}" if self.store_url else "")
            raise ResumeError(f"--resume: no finished checkpoint in {where}")
        return found


def _load(parts: _Parts, folder: Path, reporter: Reporter) -> tuple[int, dict[str, Any] | None]:
    """Restore weights, optimizers, scheduler; returns the step and this rank's state."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    accelerator = parts.accelerator
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    trainable = load_file(str(folder / TRAINABLE_FILE))
    set_state_dict(
        parts.model,
        parts.optimizer,
        model_state_dict=trainable,
        optim_state_dict=state["optimizer"],
        options=StateDictOptions(full_state_dict=True, strict=False),
    )
    parts.scheduler.load_state_dict(state["scheduler"])
    if parts.dual is not None:
        if state["dual"] is None:
            raise ResumeError(f"{folder} was trained without multipliers; the mode differs")
        parts.dual.load_state_dict(state["dual"])
    rank_file = folder / f"rank-{accelerator.process_index:05d}.pt"
    rank_state = None
    if rank_file.is_file() and int(state["world_size"]) == accelerator.num_processes:
        rank_state = torch.load(rank_file, map_location="cpu", weights_only=True)
    else:
        reporter.warning(
            f"{folder} was written by {state['world_size']} processes, this run has "
            f"{accelerator.num_processes}: data order and noise restart from fresh seeds"
        )
    return int(state["step"]), rank_state


def _trim_metrics(path: Path, completed: int) -> None:
    """Keep the records of the ``completed`` steps a resumed run starts after."""
    records = [r for r in read_jsonl(path) if int(r["step"]) <= completed]
    write_text_atomically(path, "".join(json.dumps(r) + "\n" for r in records))


def _local_weights_sha256(model: Any) -> str:
    """Digest of this process's trainable tensors (its shards, under FSDP)."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        if parameter.requires_grad:
            tensor = parameter.detach()
            if hasattr(tensor, "to_local"):  # a DTensor: hash the local shard
                tensor = tensor.to_local()
            digest.update(name.encode())
            digest.update(tensor.float().cpu().numpy().tobytes())
    return digest.hexdigest()


def train(options: TrainOptions) -> TrainResult:
    """Run (or continue) one training run; see the module docstring."""
    config = build_config(options)
    out = Path(options.out)
    # Open Pipes before anything heavy, so a failure while building is reported too.
    # torchrun and accelerate launch set RANK; a plain python process is rank 0.
    reporter = Reporter(main=int(os.environ.get("RANK", "0")) == 0)
    error: BaseException | None = None
    try:
        accelerator = _make_accelerator(options, config)
        parts = _build(accelerator, config, reporter, options.base, no_adapter=options.no_adapter)
        if accelerator.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        result = _run(options, parts, out, reporter)
        accelerator.wait_for_everyone()
        return result
    except BaseException as exc:
        error = exc
        raise
    finally:
        reporter.close(error)
        _end_distributed()


def _end_distributed() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _training_shards(
    options: TrainOptions, accelerator: Any, out: Path, reporter: Reporter
) -> dict[str, list[str]]:
    """The shards by degradation folder, fetched first when they are remote (once per machine)."""
    with accelerator.local_main_process_first():
        from models.data import resolve_shard_source

        root = resolve_shard_source(options.shards, options.cache_dir or out / "cache")
    shards = discover_shards(root, log=reporter.info)
    reporter.info(
        f"training shards: {sum(len(v) for v in shards.values())} shards in {len(shards)} "
        f"degradation folders under {root}"
    )
    return shards


def _checkpoint(
    options: TrainOptions,
    parts: _Parts,
    out: Path,
    checkpointer: _Checkpointer,
    consumed: ConsumptionLog,
    position: DataPosition,
    step: int,
) -> None:
    """Save step ``step``: this rank's noise and data position, what it consumed, the
    model; then redraw the plots."""
    rank_state = {"step": step, "rng": rng_state(parts.noise), "data": position.state_dict()}
    consumed.flush(step)
    checkpointer.save(parts, step, rank_state)
    if parts.accelerator.is_main_process and options.plots:
        _plots(out, parts)


def _run(options: TrainOptions, parts: _Parts, out: Path, reporter: Reporter) -> TrainResult:
    accelerator = parts.accelerator
    config = parts.config
    rank = accelerator.process_index
    total = config.total_steps
    stop = min(options.stop_at or total, total)
    checkpointer = _Checkpointer(
        out, accelerator, reporter, config.keep_checkpoints, options.store_url
    )
    shards = _training_shards(options, accelerator, out, reporter)

    position = DataPosition(max(1, config.num_workers))
    start_step, data_seed, resume_from = _resume(options, parts, checkpointer, position, reporter)
    metrics_path = out / METRICS_FILE
    if accelerator.is_main_process:
        _trim_metrics(metrics_path, start_step)
        run_info = {"options": {k: str(v) for k, v in vars(options).items()}}
        run_info["config"] = json.loads(config.model_dump_json())
        write_text_atomically(out / "run.json", json.dumps(run_info, indent=1) + "\n")

    loader = make_loader(
        shards,
        config,
        seed=data_seed,
        rank=rank,
        world_size=accelerator.num_processes,
        start_step=start_step,
        stop_step=stop,
        position=position,
        pin_memory=accelerator.device.type == "cuda",
    )
    consumed = ConsumptionLog(out, rank, start_step)
    dropped = consumed.forget_after(start_step)
    if dropped:
        reporter.info(f"rank {rank}: {dropped} consumption files after step {start_step} removed")
    last_record: dict[str, Any] = {}
    started = time.perf_counter()
    tick = started
    step = start_step
    rate_sum, rate_count = 0.0, 0
    for batch in loader:
        if batch.step != step:
            raise RuntimeError(f"the loader gave the batch of step {batch.step} at step {step}")
        lr = parts.scheduler.get_last_lr()[0]
        values = _train_step(parts, batch)
        position.update(batch)
        step += 1
        consumed.add(step, batch.keys)
        now = time.perf_counter()
        rate = len(batch) * accelerator.num_processes / max(now - tick, 1e-9)
        tick = now
        rate_sum, rate_count = rate_sum + rate, rate_count + 1
        record = _step_record(parts, batch, values, step=step, lr=lr, rate=rate, position=position)
        last_record = record
        if accelerator.is_main_process:
            with open(metrics_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            if step % config.log_every == 0 or step == stop:
                reporter.metrics(record)
        if step % config.checkpoint_every == 0 or step == stop:
            _checkpoint(options, parts, out, checkpointer, consumed, position, step)
        if step >= stop:
            break

    if step < stop:
        raise RuntimeError(f"the data loader ended at step {step}, before {stop}")
    mean_rate = rate_sum / rate_count if rate_count else 0.0
    return _finish(
        options,
        parts,
        out,
        reporter,
        checkpointer,
        position,
        resume_from=resume_from,
        start_step=start_step,
        step=step,
        last_record=last_record,
        mean_rate=mean_rate,
    )


def _resume(
    options: TrainOptions,
    parts: _Parts,
    checkpointer: _Checkpointer,
    position: DataPosition,
    reporter: Reporter,
) -> tuple[int, int, Path | None]:
    """Where the run continues: (start step, data seed, the checkpoint it resumes from).

    A checkpoint brings back this rank's noise generator and data position; without
    them (an older layout) or with another worker count, the data order restarts from a
    seed derived from the step.
    """
    config = parts.config
    resume_from = checkpointer.find(options.resume)
    if resume_from is None:
        return 0, config.seed, None
    data_seed = config.seed
    start_step, rank_state = _load(parts, resume_from, reporter)
    if rank_state is not None:
        restore_rng(rank_state["rng"], parts.noise)
        if not position.load_state_dict(rank_state["data"]):
            reporter.warning("the number of loader workers changed: data order restarts")
            data_seed = derive_seed(config.seed, "restart", start_step)
    else:
        data_seed = derive_seed(config.seed, "restart", start_step)
        rank = parts.accelerator.process_index
        parts.noise.manual_seed(derive_seed(config.seed, rank, "noise", start_step))
    reporter.info(f"resumed from {resume_from} at step {start_step}")
    return start_step, data_seed, resume_from


def _step_record(
    parts: _Parts,
    batch: Any,
    values: dict[str, torch.Tensor],
    *,
    step: int,
    lr: float,
    rate: float,
    position: DataPosition,
) -> dict[str, Any]:
    """One step's metrics line: losses, multipliers, stage, throughput, memory, skips."""
    config = parts.config
    global_batch = len(batch) * parts.accelerator.num_processes
    stage_index = config.stage_index(step - 1)
    record: dict[str, Any] = {"step": step, "total_steps": config.total_steps, "lr": lr}
    record.update({name: float(value) for name, value in values.items()})
    if parts.dual is not None:
        record.update({f"lambda_{k}": v for k, v in parts.dual.as_dict().items()})
    elif parts.fixed is not None:
        fixed = parts.fixed.tolist()
        record.update({f"lambda_{h}": v for h, v in zip(HEADS, fixed, strict=True)})
    record.update(
        {
            "stage": stage_index + 1,
            "patch": config.stages[stage_index].patch,
            "batch_size": len(batch),
            "global_batch": global_batch,
            "vague_fraction": batch.arms.count("vague") / len(batch),
            "samples_per_s": rate,
            "step_time_s": global_batch / rate,
            "peak_memory_mib": peak_memory_mib(parts.accelerator.device),
            "skipped_samples": sum(position.skip_counts().values()),
        }
    )
    return record


def _finish(
    options: TrainOptions,
    parts: _Parts,
    out: Path,
    reporter: Reporter,
    checkpointer: _Checkpointer,
    position: DataPosition,
    *,
    resume_from: Path | None,
    start_step: int,
    step: int,
    last_record: dict[str, Any],
    mean_rate: float,
) -> TrainResult:
    """After the last step: the metrics CSV and plots, the rank report, the result and
    its Dagster materialization."""
    accelerator = parts.accelerator
    metrics_path = out / METRICS_FILE
    plots: dict[str, Path] = {}
    if accelerator.is_main_process:
        records = read_jsonl(metrics_path)
        if records:
            write_csv(records, out / METRICS_CSV)
        if options.plots and records:
            plots = _plots(out, parts)
    if checkpointer.last is None and resume_from is not None and accelerator.is_main_process:
        checkpointer.last = resume_from
        checkpointer.last_sha256 = json.loads((resume_from / CHECKPOINT_MARKER).read_text())[
            MODEL_HASH_FIELD
        ]
    _write_rank_report(out, parts, position)
    result = TrainResult(
        start_step=start_step,
        final_step=step,
        checkpoint=checkpointer.last,
        checkpoint_sha256=checkpointer.last_sha256,
        checkpoint_uri=checkpointer.last_uri,
        metrics_path=metrics_path,
        plots=plots,
        last_record=last_record,
        skipped=position.skip_counts(),
        samples_per_degradation=position.samples_per_degradation(),
    )
    if accelerator.is_main_process:
        reporter.materialization(_materialization_metadata(result, parts, out, mean_rate))
        reporter.info(f"done: step {step}, checkpoint {result.checkpoint}")
    return result


def _plots(out: Path, parts: _Parts) -> dict[str, Path]:
    records = read_jsonl(out / METRICS_FILE)
    if not records:
        return {}
    title = f"({parts.variant.name}, {parts.config.constraints.mode.value})"
    return plot_training_curves(records, out / PLOTS_DIR, title=title)


def _write_rank_report(out: Path, parts: _Parts, position: DataPosition) -> None:
    rank = parts.accelerator.process_index
    folder = out / "ranks"
    folder.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "rank": rank,
        "world_size": parts.accelerator.num_processes,
        "weights_sha256": _local_weights_sha256(parts.accelerator.unwrap_model(parts.model)),
        "multipliers": parts.dual.as_dict() if parts.dual is not None else {},
        "skipped": position.skip_counts(),
        "samples_per_degradation": position.samples_per_degradation(),
    }
    write_text_atomically(folder / f"rank-{rank:05d}.json", json.dumps(report, indent=1) + "\n")


def _materialization_metadata(
    result: TrainResult, parts: _Parts, out: Path, mean_rate: float
) -> dict[str, Any]:
    def path_value(path: Path) -> dict[str, Any]:
        return {"raw_value": str(path), "type": "path"}

    def json_value(value: Any) -> dict[str, Any]:
        return {"raw_value": value, "type": "json"}

    metadata: dict[str, Any] = {
        "variant": parts.variant.name,
        "constraint_mode": parts.config.constraints.mode.value,
        "steps": result.final_step,
        "resumed_from_step": result.start_step,
        "processes": parts.accelerator.num_processes,
        "metrics_jsonl": path_value(result.metrics_path),
        "samples_per_s_mean": mean_rate,
        "skipped_samples": json_value(result.skipped),
        "samples_per_degradation": json_value(result.samples_per_degradation),
    }
    if result.checkpoint is not None:
        metadata["checkpoint"] = path_value(result.checkpoint / MODEL_DIR)
        metadata["checkpoint_sha256"] = result.checkpoint_sha256 or ""
    if result.checkpoint_uri:
        metadata["checkpoint_uri"] = {"raw_value": result.checkpoint_uri, "type": "url"}
    for key, value in result.last_record.items():
        if key.startswith(("loss", "lambda_", "violation_")) or key in (
            "lr",
            "peak_memory_mib",
            "grad_norm",
        ):
            metadata[f"final_{key}"] = float(value)
    if (out / METRICS_CSV).is_file():
        metadata["metrics_csv"] = path_value(out / METRICS_CSV)
    for name, path in result.plots.items():
        metadata[f"plot_{name}"] = path_value(path)
    return metadata


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: the settings are validated first, as every command does
    (a bad COTIR_* value stops it with one line naming the variable, exit code 2)."""

    options = parse_options(argv)
    try:
        load_settings()
    except SettingsError as error:
        print(f"models.train: bad setting: {error}", file=sys.stderr)
        return 2
    die_with_parent()
    train(options)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
