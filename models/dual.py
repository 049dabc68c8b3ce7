"""Dual ascent on the Lagrange multipliers of the CoT constraints (REFERENCE.md section 3).

The Lagrangian is L = L_FM + sum_i lambda_i psi_i with lambda_i >= 0, starting at 0. Each
training step is a primal step (AdamW on L_FM + sum sg(lambda_i) psi_i, done by the
training loop with :meth:`DualOptimizer.coefficients`) followed by one dual step here:
Adam (lr 1e-4, betas 0.9/0.999) minimising -sum lambda_i sg(psi_i), i.e. ascending on
lambda along the detached violations, then clamping lambda at 0. So a violated constraint
(psi > 0) raises its multiplier, and a satisfied one (psi < 0) lowers it back to 0.

The multipliers and their Adam state are checkpointed with :meth:`state_dict`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch

#: Dual Adam settings of the paper (REFERENCE.md section 3).
DUAL_LR = 1e-4
DUAL_BETAS = (0.9, 0.999)


class DualOptimizer:
    """Non-negative multipliers, one per constraint, updated by projected Adam ascent."""

    def __init__(
        self,
        names: Sequence[str],
        *,
        lr: float = DUAL_LR,
        betas: tuple[float, float] = DUAL_BETAS,
        eps: float = 1e-8,
        device: torch.device | str = "cpu",
    ) -> None:
        if lr <= 0:
            raise ValueError(f"the dual learning rate must be positive, got {lr}")
        if len(set(names)) != len(names):
            raise ValueError(f"constraint names must be unique, got {list(names)}")
        self.names = tuple(names)
        self.multipliers = torch.zeros(len(self.names), device=device, requires_grad=True)
        self._optimizer: torch.optim.Adam | None = None
        if self.names:
            self._optimizer = torch.optim.Adam([self.multipliers], lr=lr, betas=betas, eps=eps)

    def __len__(self) -> int:
        return len(self.names)

    def coefficients(self) -> torch.Tensor:
        """The current multipliers, detached (what the primal objective uses)."""
        return self.multipliers.detach().clone()

    def as_dict(self) -> dict[str, float]:
        """Multipliers by constraint name, as floats (for logging)."""
        values = self.coefficients().tolist()
        return {name: float(value) for name, value in zip(self.names, values, strict=True)}

    def step(self, violations: torch.Tensor) -> None:
        """One ascent step on lambda along ``violations`` (psi, detached here), then clamp at 0."""
        if self._optimizer is None:
            if violations.numel():
                raise ValueError("this dual optimizer has no multipliers but got violations")
            return
        psi = violations.detach().to(self.multipliers.device, torch.float32).reshape(-1)
        if psi.numel() != len(self.names):
            raise ValueError(f"expected {len(self.names)} violations, got {psi.numel()}")
        if not torch.isfinite(psi).all():
            raise FloatingPointError(f"non-finite constraint violations: {psi.tolist()}")
        self._optimizer.zero_grad(set_to_none=True)
        dual_loss = -(self.multipliers * psi).sum()
        dual_loss.backward()
        self._optimizer.step()
        with torch.no_grad():
            self.multipliers.clamp_(min=0.0)

    def state_dict(self) -> dict[str, Any]:
        """Names, multipliers and the Adam state (all on the CPU)."""
        return {
            "names": list(self.names),
            "multipliers": self.multipliers.detach().cpu().clone(),
            # A deep copy: Adam's state_dict shares its moment tensors, and a loaded copy
            # must never step the original's buffers.
            "optimizer": None
            if self._optimizer is None
            else copy.deepcopy(self._optimizer.state_dict()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; the constraint names must match."""
        names = tuple(state.get("names", ()))
        if names != self.names:
            raise ValueError(f"checkpoint constraints {list(names)} != {list(self.names)}")
        values = torch.as_tensor(state["multipliers"], dtype=torch.float32)
        with torch.no_grad():
            self.multipliers.copy_(values.to(self.multipliers.device))
        if self._optimizer is not None and state.get("optimizer") is not None:
            self._optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
