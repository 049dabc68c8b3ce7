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

import torch


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

    from models.backbones import (
        CoTIRTransformer,
        grid_to_tokens,
        image_ids,
        load_transformer,
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
    from models.prior import PriorConfig, draw_batch, load_prior_photos
    from models.restore import bundled_base_folder
    from models.text_encoders import MiniLMTextEncoder
    from models.variants import get_variant

    variant = get_variant("demo")
    base = bundled_base_folder(variant) / "transformer"
    encoder = MiniLMTextEncoder.from_folder().eval()
    config = PriorConfig(batch_size=args.batch, crop=args.patch)
    generator = torch.Generator().manual_seed(0)
    references, targets, _ = draw_batch(load_prior_photos(config), config, generator)
    stride = variant.token_stride
    clean = grid_to_tokens(torch.nn.functional.pixel_unshuffle(targets, stride))
    reference = grid_to_tokens(torch.nn.functional.pixel_unshuffle(references, stride))
    length = variant.max_text_tokens
    prompt = encoder.encode(["Please remove the haze."] * args.batch, length).embeds
    parts = ("a hazy street scene", "dense haze lowers the contrast", "remove the haze")
    cot = {
        name: encoder.encode([text] * args.batch, length).embeds
        for name, text in zip(("scene", "degradation", "plan"), parts, strict=True)
    }
    grid = args.patch // stride
    ids = torch.cat(
        [
            image_ids(variant.backbone, grid, grid, reference=False),
            image_ids(variant.backbone, grid, grid, reference=True),
        ]
    )
    txt_ids = text_ids(variant.backbone, length)

    def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = sample_timesteps(args.batch, generator=generator)
        noise = torch.randn(clean.shape, generator=generator)
        return t, noise, torch.cat([interpolate(clean, noise, t), reference], dim=1)

    # Baseline: LoRA only, no adapter.
    plain = load_transformer(variant.backbone, base, dtype=torch.float32)
    plain.requires_grad_(False)
    plain.add_adapter(lora_config(variant.backbone, variant.lora_rank))
    plain.train()
    plain_params = [p for p in plain.parameters() if p.requires_grad]
    plain_optimizer = torch.optim.AdamW(plain_params, lr=1e-4)

    def plain_step() -> None:
        t, noise, hidden = inputs()
        out = plain(
            hidden_states=hidden,
            encoder_hidden_states=prompt,
            timestep=t,
            img_ids=ids,
            txt_ids=txt_ids,
            guidance=None,
            return_dict=False,
        )[0]
        loss = flow_matching_loss(out[:, : clean.shape[1]], velocity_target(clean, noise))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain_params, 1.0)
        plain_optimizer.step()
        plain_optimizer.zero_grad(set_to_none=True)

    lora_ms = _time_steps(plain_step, args.warmup, args.steps)
    lora_rss = _peak_rss_mib()

    # CoTIR: adapter + constraints + dual step.
    model = CoTIRTransformer.from_pretrained_base(
        variant.backbone,
        base,
        text_dim=variant.text_dim,
        adapter_depth=variant.adapter_depth,
        dtype=torch.float32,
    )
    apply_lora(model, variant.lora_rank)
    model.train()
    cotir_params = [p for p in model.parameters() if p.requires_grad]
    cotir_optimizer = torch.optim.AdamW(cotir_params, lr=1e-4)
    mode = ConstraintMode.LAGRANGIAN
    dual = DualOptimizer(constraint_names(mode))

    def cotir_step() -> None:
        t, noise, hidden = inputs()
        output = model(hidden, prompt, t, ids, txt_ids)
        loss_fm = flow_matching_loss(
            output.sample[:, : clean.shape[1]], velocity_target(clean, noise)
        )
        predictions = {
            "scene": output.scene,
            "degradation": output.degradation,
            "plan": output.plan,
        }
        heads = cot_head_losses(predictions, cot)
        objective = build_objective(loss_fm, heads, mode, dual.coefficients(), delta=1e-4)
        objective.total.backward()
        torch.nn.utils.clip_grad_norm_(cotir_params, 1.0)
        cotir_optimizer.step()
        cotir_optimizer.zero_grad(set_to_none=True)
        dual.step(objective.violations.detach())

    cotir_ms = _time_steps(cotir_step, args.warmup, args.steps)
    cotir_rss = _peak_rss_mib()

    print(
        f"demo training step, batch {args.batch} x {args.patch} px, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    )
    print(
        f"trainable: lora {sum(p.numel() for p in plain_params):,d}, "
        f"cotir {sum(p.numel() for p in cotir_params):,d}"
    )
    print(f"| arm | ms/step (median of {args.steps}) | peak RSS after arm (MiB) |")
    print("|---|---:|---:|")
    print(f"| LoRA only (baseline) | {lora_ms:.1f} | {lora_rss:.0f} |")
    print(f"| CoTIR: adapter + constraints + dual | {cotir_ms:.1f} | {cotir_rss:.0f} |")
    print(f"ratio cotir / lora: {cotir_ms / lora_ms:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
