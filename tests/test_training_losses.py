"""Flow-matching and CoT losses with known values, the ablation modes, and dual ascent."""

from __future__ import annotations

import math
import time

import pytest
import torch

from models.dual import DualOptimizer
from models.losses import (
    HEADS,
    ConstraintMode,
    build_objective,
    constraint_names,
    constraint_violations,
    cot_head_loss,
    flow_matching_loss,
    interpolate,
    sample_timesteps,
    velocity_target,
)


def test_timesteps_are_logit_normal_and_seeded() -> None:
    first = sample_timesteps(20000, generator=torch.Generator().manual_seed(3))
    again = sample_timesteps(20000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    assert ((first > 0) & (first < 1)).all()
    logits = torch.logit(first.double())
    assert abs(float(logits.mean())) < 0.03
    assert abs(float(logits.std()) - 1.0) < 0.03
    # sigmoid(N(0,1)) is symmetric around 1/2 and concentrated in the middle.
    assert abs(float(first.mean()) - 0.5) < 0.01
    assert float(((first > 0.27) & (first < 0.73)).float().mean()) == pytest.approx(0.68, abs=0.02)


def test_interpolation_and_velocity_target() -> None:
    clean = torch.full((2, 3, 4), 2.0)
    noise = torch.full((2, 3, 4), -1.0)
    t = torch.tensor([0.0, 0.25])
    z = interpolate(clean, noise, t)
    assert torch.allclose(z[0], clean[0])
    assert torch.allclose(z[1], torch.full((3, 4), 0.75 * 2.0 + 0.25 * -1.0))
    assert torch.allclose(velocity_target(clean, noise), torch.full((2, 3, 4), -3.0))
    # z_t moves along the target: z_t + (t' - t) v = z_t'.
    assert torch.allclose(
        interpolate(clean, noise, t) + 0.5 * velocity_target(clean, noise),
        interpolate(clean, noise, t + 0.5),
    )
    with pytest.raises(ValueError, match="t must have shape"):
        interpolate(clean, noise, torch.tensor([0.5]))


def test_flow_matching_loss_is_mse() -> None:
    prediction = torch.zeros(2, 4, 8)
    target = torch.full((2, 4, 8), 3.0)
    assert float(flow_matching_loss(prediction, target)) == pytest.approx(9.0)
    with pytest.raises(ValueError, match="differ"):
        flow_matching_loss(prediction, target[:, :2])


def test_relative_weighting_counts_a_nearly_clean_pair_as_much_as_a_degraded_one() -> None:
    # Two samples, each predicted with half its target's amplitude missing: the plain
    # mean is ruled by the large target, the relative one weighs both alike.
    target = torch.stack([torch.full((4, 8), 2.0), torch.full((4, 8), 0.02)])
    prediction = target * 0.5
    plain = float(flow_matching_loss(prediction, target))
    assert plain == pytest.approx((1.0 + 0.0001) / 2)
    relative = float(flow_matching_loss(prediction, target, relative_floor=1e-12))
    assert relative == pytest.approx(0.25, rel=1e-5)
    # The floor caps the weight of a target at (or near) zero: a zero target predicted
    # as zero costs nothing, a small error on it costs error / floor.
    zero = torch.zeros(1, 4, 8)
    assert float(flow_matching_loss(zero, zero, relative_floor=1e-3)) == 0.0
    small_error = torch.full((1, 4, 8), 0.01)
    assert float(flow_matching_loss(small_error, zero, relative_floor=1e-3)) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="floor must be positive"):
        flow_matching_loss(prediction, target, relative_floor=0.0)


def test_log_weighting_is_the_velocity_psnr_gain_and_bounds_a_wrong_clean_pair() -> None:
    target = torch.stack([torch.full((4, 8), 0.5), torch.full((4, 8), 0.01)])
    # Zero prediction (the untrained delta velocity): no gain on either sample.
    zero = torch.zeros_like(target)
    assert float(flow_matching_loss(zero, target, relative_floor=1e-12, log_ratio=True)) == (
        pytest.approx(0.0, abs=1e-6)
    )
    # Each sample 10 dB better than zero: error a tenth of its target's energy.
    better = target * (1 - 0.1**0.5)
    expected = math.log(0.1)
    assert float(flow_matching_loss(better, target, relative_floor=1e-12, log_ratio=True)) == (
        pytest.approx(expected, rel=1e-4)
    )
    # The clean sample predicted badly: under the relative weighting its gradient is
    # 1 / energy times its error's, hundreds of times the degraded sample's; under the log
    # weighting both are scaled by their own current error, so neither swamps the batch.
    wrong = torch.stack([target[0] * 0.5, torch.full((4, 8), 0.2)]).requires_grad_(True)
    flow_matching_loss(wrong, target, relative_floor=1e-3).backward()
    relative_ratio = float(wrong.grad[1].norm() / wrong.grad[0].norm())
    wrong.grad = None
    flow_matching_loss(wrong, target, relative_floor=1e-3, log_ratio=True).backward()
    log_ratio = float(wrong.grad[1].norm() / wrong.grad[0].norm())
    assert relative_ratio > 100
    assert log_ratio < 10


def test_cot_head_loss_known_values() -> None:
    d = 4
    a = torch.zeros(1, 2, d)
    a[..., 0] = 5.0  # both tokens along e0, length 5: normalisation removes the length
    same = torch.zeros(1, 2, d)
    same[..., 0] = 0.1
    assert float(cot_head_loss(a, same)) == pytest.approx(0.0, abs=1e-7)
    opposite = -same
    # |u - (-u)|^2 = 4 per token, over D elements: 4 / D.
    assert float(cot_head_loss(a, opposite)) == pytest.approx(4 / d)
    orthogonal = torch.zeros(1, 2, d)
    orthogonal[..., 1] = 7.0
    # = 2 (1 - cos) / D with cos = 0.
    assert float(cot_head_loss(a, orthogonal)) == pytest.approx(2 / d)
    # Padding tokens count: a zero (padding-like) target row gives |u|^2 / D = 1 / D.
    padded = same.clone()
    padded[:, 1] = 0.0
    assert float(cot_head_loss(a, padded)) == pytest.approx((0 + 1 / d) / 2)


def test_cot_head_loss_matches_cosine_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    prediction = torch.randn(3, 5, 16, generator=generator)
    target = torch.randn(3, 5, 16, generator=generator)
    cos = torch.nn.functional.cosine_similarity(prediction, target, dim=-1)
    expected = (2 * (1 - cos) / 16).mean()
    assert float(cot_head_loss(prediction, target)) == pytest.approx(float(expected), rel=1e-5)


def _heads(values: tuple[float, float, float]) -> dict[str, torch.Tensor]:
    return {
        name: torch.tensor(v, requires_grad=True) for name, v in zip(HEADS, values, strict=True)
    }


def test_modes_build_the_right_objective() -> None:
    fm = torch.tensor(1.0, requires_grad=True)
    heads = _heads((0.01, 0.02, 0.03))
    delta = 1e-4
    none = build_objective(fm, heads, "none", None, delta=delta)
    assert float(none.total.detach()) == pytest.approx(1.0)
    assert none.violations.numel() == 0
    assert none.names == ()

    union = build_objective(fm, heads, "union", torch.tensor([2.0]), delta=delta)
    assert union.names == ("union",)
    assert float(union.violations[0]) == pytest.approx(0.06 - 3 * delta)
    assert float(union.total.detach()) == pytest.approx(1.0 + 2.0 * (0.06 - 3 * delta))

    fixed = build_objective(fm, heads, "fixed", [1.0, 1.0, 1.0], delta=delta)
    assert torch.allclose(fixed.violations, torch.tensor([0.01, 0.02, 0.03]) - delta)
    assert float(fixed.total.detach()) == pytest.approx(1.0 + 0.06 - 3 * delta)

    lam = torch.tensor([0.5, 0.0, 3.0], requires_grad=True)
    lagrangian = build_objective(fm, heads, ConstraintMode.LAGRANGIAN, lam, delta=delta)
    expected = 1.0 + 0.5 * (0.01 - delta) + 3.0 * (0.03 - delta)
    assert float(lagrangian.total.detach()) == pytest.approx(expected)
    lagrangian.total.backward()
    # The multipliers are detached in the primal objective; the heads get lambda_i.
    assert lam.grad is None
    assert [float(heads[h].grad) for h in HEADS] == pytest.approx([0.5, 0.0, 3.0])
    assert not lagrangian.violations.requires_grad


def test_objective_rejects_bad_coefficients() -> None:
    heads = _heads((0.1, 0.1, 0.1))
    with pytest.raises(ValueError, match="needs 3 coefficients"):
        build_objective(torch.tensor(1.0), heads, "lagrangian", None)
    with pytest.raises(ValueError, match="3 constraints, got 2"):
        build_objective(torch.tensor(1.0), heads, "fixed", [1.0, 1.0])
    with pytest.raises(ValueError, match="sometimes"):
        build_objective(torch.tensor(1.0), heads, "sometimes", [1.0])
    assert constraint_names("lagrangian") == HEADS
    assert constraint_violations(heads, "none").numel() == 0


def test_violated_constraint_raises_its_multiplier_satisfied_one_stays_zero() -> None:
    dual = DualOptimizer(["violated", "satisfied"], lr=1e-4)
    assert dual.as_dict() == {"violated": 0.0, "satisfied": 0.0}
    for _ in range(10):
        dual.step(torch.tensor([0.5, -0.5]))
    values = dual.as_dict()
    # Adam's first steps move by about lr each, whatever the violation's size.
    assert values["violated"] == pytest.approx(10 * 1e-4, rel=0.05)
    assert values["satisfied"] == 0.0
    # Once satisfied, the multiplier is driven back down to exactly 0 (clamped, never < 0);
    # Adam's momentum first carries it up for a few more steps.
    trace = []
    for _ in range(200):
        dual.step(torch.tensor([-0.1, -0.1]))
        trace.append(dual.as_dict()["violated"])
    assert min(trace) >= 0.0
    assert trace[-1] == 0.0
    assert dual.as_dict()["satisfied"] == 0.0


def test_dual_ascent_solves_a_constrained_toy_problem() -> None:
    """min (x - 3)^2 s.t. x - 1 <= 0: KKT gives x = 1 and lambda = 2 (3 - 1) = 4."""
    started = time.perf_counter()
    x = torch.zeros(1, requires_grad=True)
    primal = torch.optim.SGD([x], lr=0.1)
    dual = DualOptimizer(["x_at_most_1"], lr=0.1)
    for _ in range(600):
        psi = (x - 1.0).reshape(1)
        loss = (x - 3.0).pow(2).sum() + (dual.coefficients() * psi).sum()
        primal.zero_grad()
        loss.backward()
        primal.step()
        dual.step(psi)
    assert float(x.detach()) == pytest.approx(1.0, abs=1e-3)  # on the constraint boundary
    assert dual.as_dict()["x_at_most_1"] == pytest.approx(4.0, abs=1e-2)
    assert time.perf_counter() - started < 2.0


def test_inactive_constraint_leaves_the_unconstrained_optimum() -> None:
    """min (x - 3)^2 s.t. x - 5 <= 0: the constraint never binds, lambda stays 0."""
    x = torch.zeros(1, requires_grad=True)
    primal = torch.optim.SGD([x], lr=0.1)
    dual = DualOptimizer(["x_at_most_5"], lr=0.1)
    for _ in range(300):
        psi = (x - 5.0).reshape(1)
        loss = (x - 3.0).pow(2).sum() + (dual.coefficients() * psi).sum()
        primal.zero_grad()
        loss.backward()
        primal.step()
        dual.step(psi)
    assert float(x.detach()) == pytest.approx(3.0, abs=1e-3)
    assert dual.as_dict()["x_at_most_5"] == 0.0


def test_dual_state_round_trip_and_checks() -> None:
    dual = DualOptimizer(HEADS)
    for _ in range(3):
        dual.step(torch.tensor([1.0, -1.0, 2.0]))
    state = dual.state_dict()
    other = DualOptimizer(HEADS)
    other.load_state_dict(state)
    assert other.as_dict() == dual.as_dict()
    dual.step(torch.tensor([1.0, 1.0, 1.0]))
    other.step(torch.tensor([1.0, 1.0, 1.0]))
    assert other.as_dict() == dual.as_dict()  # Adam moments were restored too
    with pytest.raises(ValueError, match="constraints"):
        DualOptimizer(["union"]).load_state_dict(state)
    with pytest.raises(ValueError, match="expected 3 violations"):
        dual.step(torch.tensor([1.0]))
    with pytest.raises(FloatingPointError):
        dual.step(torch.tensor([math.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match="positive"):
        DualOptimizer(HEADS, lr=0.0)
