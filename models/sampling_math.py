"""The sampler's arithmetic that needs no torch: working sizes and the shifted time grid.

Both restore engines use it: :mod:`models.sampler` (torch tensors) and
:mod:`models.onnx_restore` (numpy arrays, in a process that never imports torch). The
two shift formulas are diffusers' (``calculate_shift`` of the FLUX.1 pipelines,
``compute_empirical_mu`` of the FLUX.2 pipelines), written out here so that neither
engine imports diffusers to sample; ``tests/test_model_sampler.py`` pins both to the
library's functions, bit for bit.
"""

from __future__ import annotations

import math
from typing import TypeVar

#: Sizes are rounded to multiples of this (8x VAE, 2x2 patches).
SIZE_MULTIPLE = 16

#: Anything that supports ``1.0 / times`` and float arithmetic (a float, a numpy array, a
#: torch tensor).
Times = TypeVar("Times")

# FLUX.2's empirical mu: two lines in the image token count, interpolated in the step count.
_FLUX2_A1, _FLUX2_B1 = 8.73809524e-05, 1.89833333
_FLUX2_A2, _FLUX2_B2 = 0.00016927, 0.45666666
_FLUX2_LONG_SEQUENCE = 4300


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
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    intercept = base_shift - slope * base_seq_len
    return float(image_seq_len * slope + intercept)


def flux2_mu(image_seq_len: int, steps: int) -> float:
    """FLUX.2's empirical shift (diffusers' ``compute_empirical_mu``)."""
    if image_seq_len > _FLUX2_LONG_SEQUENCE:
        return float(_FLUX2_A2 * image_seq_len + _FLUX2_B2)
    mu_200_steps = _FLUX2_A2 * image_seq_len + _FLUX2_B2
    mu_10_steps = _FLUX2_A1 * image_seq_len + _FLUX2_B1
    slope = (mu_200_steps - mu_10_steps) / 190.0
    intercept = mu_200_steps - 200.0 * slope
    return float(slope * steps + intercept)


def schedule_mu(
    schedule: str,
    image_seq_len: int,
    steps: int,
    *,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """The time shift of ``schedule`` ``"flux1"`` (its base and max shift) or ``"flux2"``
    (empirical; the FLUX.1 shifts do not apply) at this many image tokens."""
    if schedule == "flux1":
        return flux1_mu(image_seq_len, base_shift=base_shift, max_shift=max_shift)
    if schedule == "flux2":
        return flux2_mu(image_seq_len, steps)
    raise ValueError(f"unknown schedule {schedule!r}; expected 'flux1' or 'flux2'")


def time_shift(mu: float, times: Times) -> Times:
    """The exponential time shift ``t' = e^mu / (e^mu + 1/t - 1)`` of the FLUX schedules."""
    return math.exp(mu) / (math.exp(mu) + (1.0 / times - 1.0))  # type: ignore[operator]
