"""Benchmark a demo training step: plain LoRA vs CoTIR (adapter + CoT losses + dual step).

Both arms run in this process on the same batch, starting from the shipped demo prior
(``models/demo_prior``): real photos cut into ``--patch`` px pairs, a prompt and a CoT
answer encoded once by MiniLM (text encoding is cached in training, so it is left out).

- baseline ``lora``: the diffusers transformer with LoRA on the single-stream blocks and
  final layer (no adapter), flow-matching loss, AdamW step;
- ``cotir``: the same plus the CoT adapter, its three head losses under Lagrangian
  multipliers (primal objective) and the dual step.

It prints milliseconds per step (median of ``--steps`` after warm-up), the ratio
cotir / lora, and the peak RSS after each arm (the process's high-water mark, so the
baseline runs first).

    .venv/bin/python scripts/bench_training_step.py                 # batch 8, 64 px
    .venv/bin/python scripts/bench_training_step.py --patch 128 --batch 4
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from models.backbones import (
    CoTIRTransformer,
    grid_to_tokens,
    load_transformer,
    noisy_and_reference_ids,
    text_ids,
)
from models.dual import DualOptimizer
from models.lora import apply_lora, lora_config
from models.losses import (
    ConstraintMode,
    build_objective,
    constraint_names,
    cot_head_losses,
    flow_matching_loss,
    interpolate,
    sample_timesteps,
    velocity_target,
)
from models.prior import PriorConfig, codec_for, draw_batch, load_prior_photos
from models.restore import bundled_base_folder
from models.text_encoders import MiniLMTextEncoder
from models.variants import Variant, get_variant


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time_steps(step: Callable[[], None], warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


@dataclass
class Batch:
    """One fixed training batch of the demo variant, shared by both arms."""

    variant: Variant
    base: Path
    clean: torch.Tensor
    reference: torch.Tensor
    prompt: torch.Tensor
    cot: dict[str, torch.Tensor]
    ids: torch.Tensor
    txt_ids: torch.Tensor
    generator: torch.Generator

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Times, noise and the transformer's input (noisy tokens, then the reference)."""
        t = sample_timesteps(self.clean.shape[0], generator=self.generator)
        noise = torch.randn(self.clean.shape, generator=self.generator)
        return t, noise, torch.cat([interpolate(self.clean, noise, t), self.reference], dim=1)


def _batch(size: int, patch: int) -> Batch:
    """Real photo pairs from the prior's photos, a prompt and a CoT answer, encoded once."""
    variant = get_variant("demo")
    encoder = MiniLMTextEncoder.from_folder().eval()
    config = PriorConfig(batch_size=size, crop=patch)
    generator = torch.Generator().manual_seed(0)
    references, targets, _ = draw_batch(load_prior_photos(config), config, generator)
    stride = variant.token_stride
    codec = codec_for(variant.name)
    length = variant.max_text_tokens
    parts = ("a hazy street scene", "dense haze lowers the contrast", "remove the haze")
    grid = patch // stride
    return Batch(
        variant=variant,
        base=bundled_base_folder(variant) / "transformer",
        clean=grid_to_tokens(codec.encode(targets)),
        reference=grid_to_tokens(codec.encode(references)),
        prompt=encoder.encode(["Please remove the haze."] * size, length).embeds,
        cot={
            name: encoder.encode([text] * size, length).embeds
            for name, text in zip(("scene", "degradation", "plan"), parts, strict=True)
        },
        ids=noisy_and_reference_ids(variant.backbone, grid, grid),
        txt_ids=text_ids(variant.backbone, length),
        generator=generator,
    )


def _lora_step(batch: Batch) -> tuple[Callable[[], None], int]:
    """The baseline arm's step: the diffusers transformer with LoRA only, no adapter."""
    variant = batch.variant
    plain = load_transformer(variant.backbone, batch.base, dtype=torch.float32)
    plain.requires_grad_(False)
    plain.add_adapter(lora_config(variant.backbone, variant.lora_rank))
    plain.train()
    params = [p for p in plain.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        t, noise, hidden = batch.inputs()
        out = plain(
            hidden_states=hidden,
            encoder_hidden_states=batch.prompt,
            timestep=t,
            img_ids=batch.ids,
            txt_ids=batch.txt_ids,
            guidance=None,
            return_dict=False,
        )[0]
        target = velocity_target(batch.clean, noise)
        loss = flow_matching_loss(out[:, : batch.clean.shape[1]], target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, sum(p.numel() for p in params)


def _cotir_step(batch: Batch) -> tuple[Callable[[], None], int]:
    """The CoTIR arm's step: adapter, LoRA, the CoT head losses under Lagrangian
    multipliers, and the dual step."""
    variant = batch.variant
    model = CoTIRTransformer.from_pretrained_base(
        variant.backbone,
        batch.base,
        text_dim=variant.text_dim,
        adapter_depth=variant.adapter_depth,
        dtype=torch.float32,
    )
    apply_lora(model, variant.lora_rank)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    mode = ConstraintMode.LAGRANGIAN
    dual = DualOptimizer(constraint_names(mode))

    def step() -> None:
        t, noise, hidden = batch.inputs()
        output = model(hidden, batch.prompt, t, batch.ids, batch.txt_ids)
        target = velocity_target(batch.clean, noise)
        loss_fm = flow_matching_loss(output.sample[:, : batch.clean.shape[1]], target)
        predictions = {
            "scene": output.scene,
            "degradation": output.degradation,
            "plan": output.plan,
        }
        heads = cot_head_losses(predictions, batch.cot)
        objective = build_objective(loss_fm, heads, mode, dual.coefficients(), delta=1e-4)
        objective.total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dual.step(objective.violations.detach())

    return step, sum(p.numel() for p in params)


def main(argv: list[str] | None = None) -> int:
    """Run both arms and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batch = _batch(args.batch, args.patch)
    # The baseline runs first: peak RSS is the process's high-water mark.
    lora_step, lora_params = _lora_step(batch)
    lora_ms = _time_steps(lora_step, args.warmup, args.steps)
    lora_rss = _peak_rss_mib()
    cotir_step, cotir_params = _cotir_step(batch)
    cotir_ms = _time_steps(cotir_step, args.warmup, args.steps)
    cotir_rss = _peak_rss_mib()

    print(
        f"demo training step, batch {args.batch} x {args.patch} px, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    )
    print(f"trainable: lora {lora_params:,d}, cotir {cotir_params:,d}")
    print(f"| arm | ms/step (median of {args.steps}) | peak RSS after arm (MiB) |")
    print("|---|---:|---:|")
    print(f"| LoRA only (baseline) | {lora_ms:.1f} | {lora_rss:.0f} |")
    print(f"| CoTIR: adapter + constraints + dual | {cotir_ms:.1f} | {cotir_rss:.0f} |")
    print(f"ratio cotir / lora: {cotir_ms / lora_ms:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
