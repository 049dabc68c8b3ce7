"""How much smaller AdamW's net update is when the weights themselves are bf16.

The release trains its adapter and LoRA as bf16 weights; this project keeps fp32 master
weights (docs/TRAINING.md, "Precision"). For weights drawn from N(0, s^2) it runs the
same 100 AdamW steps (lr 5e-5, the release's LR floor; noisy gradients with a constant
sign per weight) on an fp32 and on a bf16 copy, and prints, per scale s, how much less
the bf16 weights moved (1 - |bf16 update| / |fp32 update|).

    .venv/bin/python scripts/measure_bf16_update.py
"""

from __future__ import annotations

import argparse

import torch


def shortfall(scale: float, *, size: int, steps: int, lr: float, seed: int) -> float:
    """1 - |net bf16 update| / |net fp32 update| for weights of standard deviation ``scale``."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(size, generator=generator) * scale
    sign = torch.sign(torch.randn(size, generator=generator))
    weights = {
        dtype: torch.nn.Parameter(start.clone().to(dtype))
        for dtype in (torch.float32, torch.bfloat16)
    }
    optimizers = {
        dtype: torch.optim.AdamW([w], lr=lr, weight_decay=0.0) for dtype, w in weights.items()
    }
    for _ in range(steps):
        gradient = sign + 0.5 * torch.randn(size, generator=generator)
        for dtype, weight in weights.items():
            weight.grad = gradient.to(dtype)
            optimizers[dtype].step()
    moved = {
        dtype: (w.detach().float() - start.to(dtype).float()).norm() for dtype, w in weights.items()
    }
    return float(1 - moved[torch.bfloat16] / moved[torch.float32])


def main() -> None:
    """Print the shortfall for a few weight scales."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{args.steps} AdamW steps at lr {args.lr:g} on {args.size:,} weights, seed {args.seed}")
    print("| weight scale s | bf16 weights move less than fp32 by |")
    print("|---:|---:|")
    for scale in (0.01, 0.02, 0.05):
        value = shortfall(scale, size=args.size, steps=args.steps, lr=args.lr, seed=args.seed)
        print(f"| {scale:g} | {value:.0%} |")


if __name__ == "__main__":
    main()
