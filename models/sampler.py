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

from collections.abc import Callable

import torch

from models.sampling_math import (
    SIZE_MULTIPLE,
    flux1_mu,
    flux2_mu,
    round_size,
    schedule_mu,
    time_shift,
)

__all__ = [
    "SIZE_MULTIPLE",
    "euler_sample",
    "flux1_mu",
    "flux2_mu",
    "round_size",
    "schedule_for",
    "shifted_sigmas",
]


VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]
StepCallback = Callable[[int, int], None]


def shifted_sigmas(steps: int, mu: float) -> torch.Tensor:
    """The N + 1 times 1 = t_0 > ... > t_N = 0, shifted by ``mu`` (float64)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    base = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64)
    shifted = time_shift(mu, base)
    return torch.cat([shifted, torch.zeros(1, dtype=torch.float64)])


def schedule_for(
    kind: str,
    image_seq_len: int,
    steps: int,
    *,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> torch.Tensor:
    """Sigmas for ``kind`` ``"flux1"`` or ``"flux2"`` at this many image tokens
    (:func:`models.sampling_math.schedule_mu`; the shifts apply to FLUX.1 only)."""
    mu = schedule_mu(kind, image_seq_len, steps, base_shift=base_shift, max_shift=max_shift)
    return shifted_sigmas(steps, mu)


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
