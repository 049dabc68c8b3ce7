"""Euler ODE sampler for flow matching, with each backbone's shifted schedule.

the CoTIR paper and its release: integrate the velocity from t = 1 (noise) to t = 0 (image)
with N Euler steps, one transformer forward per step, no classifier-free guidance.
The time grid is ``linspace(1, 1/N, N)`` followed by 0 (as the diffusers FLUX
pipelines build it), warped by the exponential time shift
``t' = e^mu / (e^mu + 1/t - 1)`` with

- FLUX.1: mu linear in the image token count, 0.5 at 256 tokens to 1.15 at 4096
  (diffusers' ``calculate_shift``);
- FLUX.2: the empirical mu of diffusers' ``compute_empirical_mu(seq_len, steps)``.

Only the noisy target tokens count towards the sequence length, as in the pipelines.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

#: Sizes are rounded to multiples of this (8x VAE, 2x2 patches).
SIZE_MULTIPLE = 16

VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]
StepCallback = Callable[[int, int], None]


def round_size(
    width: int,
    height: int,
    multiple: int = SIZE_MULTIPLE,
    *,
    down: bool = False,
) -> tuple[int, int]:
    """Multiples of ``multiple`` (at least one) for an image size: nearest, or ``down``.

    ``down`` floors, as the public release's inference does; nearest moves the image
    less (at most half a multiple) and is ours.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if multiple < 1:
        raise ValueError(f"multiple must be positive, got {multiple}")

    def rounded(value: int) -> int:
        if down:
            return max(multiple, (value // multiple) * multiple)
        return max(multiple, math.floor(value / multiple + 0.5) * multiple)

    return rounded(width), rounded(height)


def flux1_mu(
    image_seq_len: int,
    *,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
) -> float:
    """FLUX.1's shift: linear in the image token count (diffusers' ``calculate_shift``)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return float(calculate_shift(image_seq_len, base_seq_len, max_seq_len, base_shift, max_shift))


def flux2_mu(image_seq_len: int, steps: int) -> float:
    """FLUX.2's empirical shift (diffusers' ``compute_empirical_mu``)."""
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    return float(compute_empirical_mu(image_seq_len=image_seq_len, num_steps=steps))


def shifted_sigmas(steps: int, mu: float) -> torch.Tensor:
    """The N + 1 times 1 = t_0 > ... > t_N = 0, shifted by ``mu`` (float64)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    base = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64)
    shifted = math.exp(mu) / (math.exp(mu) + (1.0 / base - 1.0))
    return torch.cat([shifted, torch.zeros(1, dtype=torch.float64)])


def schedule_for(kind: str, image_seq_len: int, steps: int, **flux1_shift: float) -> torch.Tensor:
    """Sigmas for ``kind`` ``"flux1"`` or ``"flux2"`` at this many image tokens."""
    if kind == "flux1":
        return shifted_sigmas(steps, flux1_mu(image_seq_len, **flux1_shift))
    if kind == "flux2":
        return shifted_sigmas(steps, flux2_mu(image_seq_len, steps))
    raise ValueError(f"unknown schedule {kind!r}; expected 'flux1' or 'flux2'")


def euler_sample(
    velocity: VelocityFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    on_step: StepCallback | None = None,
    state_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from ``sigmas[0]`` to ``sigmas[-1]``; one call per step.

    ``x`` is kept in ``state_dtype`` between steps: float32 by default (as diffusers'
    Euler scheduler does); the release keeps its latents' dtype (bf16 on GPU).
    ``velocity`` receives ``x`` and the current time and casts as it needs.
    """
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError("sigmas must be a 1-D tensor of at least two times")
    x = noise.to(state_dtype)
    steps = sigmas.numel() - 1
    for index in range(steps):
        t, t_next = float(sigmas[index]), float(sigmas[index + 1])
        v = velocity(x, t).to(state_dtype)
        x = x + (t_next - t) * v
        if on_step is not None:
            on_step(index + 1, steps)
    return x
