"""Training losses: flow matching plus the chain-of-thought constraints (REFERENCE.md 3-4).

- Flow matching: t = sigmoid(n), n ~ N(0, 1) (logit-normal); z_t = (1 - t) g + t eps for the
  clean latents g and noise eps; the model predicts the velocity eps - g; MSE (or, for the
  demo's LQ-start flow, each sample's MSE relative to its target's energy).
- CoT heads: MSE between the per-token L2-normalised prediction and target (scene,
  degradation, plan), averaged over batch x tokens x dim with padding positions included,
  which equals 2 (1 - cos) / D per token on average.
- Constraints: psi_i = loss_i - delta_i (delta = 1e-4). How they enter the objective is the
  paper's ablation (Table VII) and :class:`ConstraintMode`:

  ==============  ==========================================================================
  ``none``        L_FM only (the heads get no gradient; their losses are still measured)
  ``union``       one constraint on the summed head loss, one learnable multiplier
  ``fixed``       three constraints with fixed coefficients (no dual ascent)
  ``lagrangian``  three constraints with learnable multipliers (the paper's method, default)
  ==============  ==========================================================================

The primal objective always uses the multipliers detached: L_FM + sum sg(lambda_i) psi_i;
the multipliers are updated by :class:`models.dual.DualOptimizer` from the detached psi.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import torch
import torch.nn.functional as F  # noqa: N812 - the torch convention

#: Names of the three CoT heads, in the order of their multipliers.
HEADS: tuple[str, ...] = ("scene", "degradation", "plan")
#: Slack of every constraint (REFERENCE.md section 3).
DEFAULT_DELTA = 1e-4


class ConstraintMode(StrEnum):
    """How the CoT head losses enter the training objective (paper Table VII)."""

    NONE = "none"
    UNION = "union"
    FIXED = "fixed"
    LAGRANGIAN = "lagrangian"


def constraint_names(mode: ConstraintMode | str) -> tuple[str, ...]:
    """Names of the constraints of ``mode`` (one multiplier or coefficient each)."""
    mode = ConstraintMode(mode)
    if mode is ConstraintMode.NONE:
        return ()
    if mode is ConstraintMode.UNION:
        return ("union",)
    return HEADS


def has_learnable_multipliers(mode: ConstraintMode | str) -> bool:
    """Whether ``mode`` runs dual ascent (union and lagrangian)."""
    return ConstraintMode(mode) in (ConstraintMode.UNION, ConstraintMode.LAGRANGIAN)


# -- flow matching ----------------------------------------------------------------------------


def sample_timesteps(
    batch: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Logit-normal flow times t = sigmoid(N(0, 1)), shape (batch,), float32.

    Drawn on the generator's device (the CPU by default) and moved, so a seed gives the
    same times on any accelerator.
    """
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    normal = torch.randn(batch, generator=generator, dtype=torch.float32)
    return torch.sigmoid(normal).to(device)


def interpolate(clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z_t = (1 - t) g + t eps, with ``t`` of shape (B,) broadcast over the other axes."""
    if clean.shape != noise.shape:
        raise ValueError(f"clean {tuple(clean.shape)} and noise {tuple(noise.shape)} differ")
    if t.ndim != 1 or t.shape[0] != clean.shape[0]:
        raise ValueError(f"t must have shape ({clean.shape[0]},), got {tuple(t.shape)}")
    view = t.reshape(-1, *([1] * (clean.ndim - 1))).to(clean.dtype)
    return (1.0 - view) * clean + view * noise


def velocity_target(clean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching regression target eps - g (dz_t / dt)."""
    return noise - clean


#: Default floor of the relative weighting, on the [-1, 1] pixel scale: a pair whose
#: target velocity is weaker than this (about 36 dB PSNR apart) weighs no more than one at it.
DEFAULT_RELATIVE_FLOOR = 1e-3


def flow_matching_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    *,
    relative_floor: float | None = None,
    log_ratio: bool = False,
) -> torch.Tensor:
    """Mean squared error in float32 between predicted and target velocity.

    ``relative_floor=None`` is the paper's plain mean. With a floor, each sample's squared
    error is divided by its own target's mean square plus the floor, then averaged over
    the batch: a nearly clean pair (target close to zero) counts as much as a heavily
    degraded one, as in the benchmark's per-image PSNR average. Only the LQ-start flow
    has targets that small; from noise every target is about as large as the noise.

    With ``log_ratio`` the per-sample term is log((error + floor) / (energy + floor)):
    the velocity's PSNR gain over predicting zero, in nepers (0 for the untrained delta
    velocity, negative once it helps; -0.23 per dB). Its gradient scales with
    1 / (error + floor) rather than 1 / (energy + floor), so a nearly clean pair that the
    model gets wrong does not swamp the batch, while every pair still counts in the
    same units as the bench's per-image PSNR.
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ"
        )
    if relative_floor is None:
        return F.mse_loss(prediction.float(), target.float())
    if relative_floor <= 0:
        raise ValueError(f"the relative floor must be positive, got {relative_floor}")
    axes = tuple(range(1, target.ndim))
    error = (prediction.float() - target.float()).pow(2).mean(dim=axes)
    energy = target.float().pow(2).mean(dim=axes)
    if log_ratio:
        return (torch.log(error + relative_floor) - torch.log(energy + relative_floor)).mean()
    return (error / (energy + relative_floor)).mean()


# -- CoT heads --------------------------------------------------------------------------------


def cot_head_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE of per-token L2-normalised prediction and target, mean over B x L x D.

    Both are (B, L, D); padding tokens are included (REFERENCE.md section 3). A zero
    vector normalises to zero (F.normalize's epsilon), so it contributes |other|^2 = 1.
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ"
        )
    if prediction.ndim != 3:
        raise ValueError(f"expected (B, L, D) tensors, got shape {tuple(prediction.shape)}")
    predicted = F.normalize(prediction.float(), dim=-1)
    wanted = F.normalize(target.float(), dim=-1)
    return F.mse_loss(predicted, wanted)


def cot_head_losses(
    predictions: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """:func:`cot_head_loss` for each of :data:`HEADS` (both mappings need all three)."""
    missing = [name for name in HEADS if name not in predictions or name not in targets]
    if missing:
        raise KeyError(f"missing CoT heads: {missing}")
    return {name: cot_head_loss(predictions[name], targets[name]) for name in HEADS}


# -- the objective ----------------------------------------------------------------------------


@dataclass
class Objective:
    """One step's primal objective and the pieces that are logged and fed to the dual step.

    ``total`` carries gradients (L_FM + sum c_i psi_i with c the detached multipliers or
    fixed coefficients); ``violations`` are psi_i, one per constraint (empty for ``none``).
    """

    total: torch.Tensor
    flow_matching: torch.Tensor
    heads: dict[str, torch.Tensor]
    violations: torch.Tensor
    names: tuple[str, ...]


def constraint_violations(
    head_losses: Mapping[str, torch.Tensor],
    mode: ConstraintMode | str,
    delta: float = DEFAULT_DELTA,
) -> torch.Tensor:
    """psi for ``mode``: loss_i - delta per head, or sum(loss_i) - 3 delta for ``union``.

    The union constraint's slack is the sum of the three slacks (a reconstruction: the
    paper gives none for the union ablation), so both forms admit the same losses at zero.
    """
    mode = ConstraintMode(mode)
    if delta < 0:
        raise ValueError(f"delta must be >= 0, got {delta}")
    if mode is ConstraintMode.NONE:
        reference = next(iter(head_losses.values()), torch.zeros(()))
        return reference.new_zeros(0)
    losses = torch.stack([head_losses[name].float() for name in HEADS])
    if mode is ConstraintMode.UNION:
        return (losses.sum() - delta * len(HEADS)).reshape(1)
    return losses - delta


def build_objective(
    flow_matching: torch.Tensor,
    head_losses: Mapping[str, torch.Tensor],
    mode: ConstraintMode | str,
    coefficients: torch.Tensor | Sequence[float] | None,
    *,
    delta: float = DEFAULT_DELTA,
) -> Objective:
    """Primal objective L_FM + sum sg(c_i) psi_i for ``mode``.

    ``coefficients`` are the current multipliers (union, lagrangian) or the fixed weights
    (fixed), one per :func:`constraint_names`; ignored for ``none``. They are detached
    here, so no gradient ever reaches a multiplier through the primal objective.
    """
    mode = ConstraintMode(mode)
    violations = constraint_violations(head_losses, mode, delta)
    heads = {name: head_losses[name] for name in HEADS if name in head_losses}
    names = constraint_names(mode)
    if mode is ConstraintMode.NONE:
        return Objective(flow_matching, flow_matching, heads, violations.detach(), names)
    if coefficients is None:
        raise ValueError(f"mode {mode.value!r} needs {len(names)} coefficients")
    weights = torch.as_tensor(coefficients, dtype=torch.float32, device=violations.device)
    weights = weights.detach().reshape(-1)
    if weights.numel() != len(names):
        raise ValueError(
            f"mode {mode.value!r} has {len(names)} constraints, got {weights.numel()} coefficients"
        )
    total = flow_matching.float() + (weights * violations).sum()
    return Objective(total, flow_matching, heads, violations.detach(), names)
