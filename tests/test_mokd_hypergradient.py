"""MoKD's ``lengthen="hypergradient"`` (round 20): the length factor that hypergradient descent
on its log sets from ``-cos(d, delta)``, held while a schedule warms up or anneals, and the
learning rate the optimizer reports for it."""

from __future__ import annotations

import math

import pytest
import torch

from mokd_optim import MultiObjectiveOptimizer, methods
from mokd_optim.methods._mokd import (
    HYPERGRADIENT_CEILING,
    HYPERGRADIENT_PEAK,
    HYPERGRADIENT_RATE,
    mokd_weights,
)

GRAM = torch.tensor([[4.0, 3.0], [3.0, 9.0]], dtype=torch.float64)  # cos(g_task, g_kd) = 0.5
LOSSES = torch.tensor([0.5, 2.0], dtype=torch.float64)


def _method(lengthen="hypergradient"):
    method = methods.get("mokd", lengthen=lengthen)
    method.bind(["task", "kd"])
    return method


def _length(method) -> float:
    w = method.weights(GRAM, LOSSES)
    return float((w @ GRAM @ w).sqrt())


def _step(method, signal: float, lr, change_norm: float = 2.0) -> float:
    """One weighting after a parameter change ``delta`` with ``-cos(d, delta) = signal``, ``d``
    the default's direction on GRAM (constant: the agreement average of a constant cosine is
    that cosine); returns the update's length over the default's."""
    w = _default_weights()
    direction_norm = float((w @ GRAM @ w).sqrt())
    # delta = change_norm * (-signal * d / ||d|| + sqrt(1 - signal^2) * (a unit vector
    # orthogonal to every gradient)): <g_i, delta> = -signal * change_norm * (G w)_i / ||d||
    products = -signal * change_norm * (GRAM @ w) / direction_norm
    method.observe_learning_rate(lr)
    method.observe_previous_step(products, torch.tensor(change_norm**2, dtype=torch.float64))
    return _length(method) / direction_norm


def _default_weights() -> torch.Tensor:
    return _method(False).weights(GRAM, LOSSES)


def test_the_factor_follows_the_descent_signal_at_a_constant_rate() -> None:
    method = _method()
    method.observe_learning_rate(0.1)
    first = _length(method)  # no parameter change yet: the default's step
    assert first == pytest.approx(float((_default_weights() @ GRAM @ _default_weights()).sqrt()))
    assert _step(method, 0.5, 0.1) == pytest.approx(math.exp(HYPERGRADIENT_RATE * 0.5))
    assert _step(method, 0.5, 0.1) == pytest.approx(math.exp(HYPERGRADIENT_RATE * 1.0))
    assert _step(method, -0.25, 0.1) == pytest.approx(math.exp(HYPERGRADIENT_RATE * 0.75))
    assert _step(method, -1.0, 0.1) == pytest.approx(1.0)  # never shorter than the default
    for _ in range(200):
        factor = _step(method, 1.0, 0.1)
    assert factor == pytest.approx(HYPERGRADIENT_CEILING)
    assert float(method.info["length_factor"]) == pytest.approx(HYPERGRADIENT_CEILING)


def test_the_factor_grows_only_at_the_schedules_peak() -> None:
    method = _method()
    rate = HYPERGRADIENT_RATE
    assert _step(method, 1.0, 0.01) == pytest.approx(math.exp(rate))  # first rate: a peak
    assert _step(method, 1.0, 0.05) == pytest.approx(math.exp(rate))  # warming up: held
    assert _step(method, 1.0, 0.1) == pytest.approx(math.exp(rate))
    assert _step(method, 1.0, 0.1) == pytest.approx(math.exp(2 * rate))  # at the peak
    inside = 0.1 * (HYPERGRADIENT_PEAK + 0.01)
    assert _step(method, 1.0, inside) == pytest.approx(math.exp(3 * rate))  # near it
    below = 0.1 * (HYPERGRADIENT_PEAK - 0.01)
    assert _step(method, 1.0, below) == pytest.approx(math.exp(3 * rate))  # annealed: held
    assert _step(method, -1.0, below) == pytest.approx(math.exp(2 * rate))  # shrinks anyway
    # an optimizer without a learning rate: nothing to hold it
    unscheduled = _method()
    assert _step(unscheduled, 1.0, None) == pytest.approx(math.exp(rate))


def test_a_zero_or_non_finite_report_leaves_the_factor() -> None:
    method = _method()
    _step(method, 1.0, 0.1)
    grown = _step(method, 1.0, 0.1)
    method.observe_learning_rate(0.1)
    method.observe_previous_step(
        torch.tensor([float("nan"), 1.0], dtype=torch.float64), torch.tensor(1.0)
    )
    assert _length(method) / _length(_method(False)) == pytest.approx(grown)
    method.observe_learning_rate(0.1)
    method.observe_previous_step(torch.zeros(2, dtype=torch.float64), torch.tensor(0.0))
    assert _length(method) / _length(_method(False)) == pytest.approx(grown)


def test_the_factor_survives_a_checkpoint() -> None:
    method = _method()
    for signal in (1.0, 0.5, 1.0):
        _step(method, signal, 0.1)
    copy = _method()
    copy.load_state_dict(method.state_dict())
    assert set(method.state_dict()) >= {"hyper_average", "hyper_count"}
    # the same next factor, and the peak remembered (a lower rate does not let it grow)
    assert _step(copy, 1.0, 0.1) == pytest.approx(_step(method, 1.0, 0.1))
    assert _step(copy, 1.0, 0.05) == pytest.approx(_step(method, 1.0, 0.05))


def test_the_option_is_checked_and_reported() -> None:
    assert _method().needs_previous_step and not _method(False).needs_previous_step
    assert methods.get("mokd", lengthen="hypergradient").options()["lengthen"] == "hypergradient"
    for step in ("log", "convex"):
        with pytest.raises(ValueError, match="target length"):
            methods.get("mokd", step=step, lengthen="hypergradient")
    with pytest.raises(ValueError, match="keeps a factor across steps"):
        mokd_weights(GRAM, LOSSES, lengthen="hypergradient")


def _quadratic_run(lr: float, schedule=None, steps: int = 60) -> list[float]:
    """Two quadratic objectives (minima 1 apart, +1 so both stay positive) under plain SGD;
    the length factor of every step."""
    theta = torch.nn.Parameter(torch.tensor([4.0, -3.0]))
    base = torch.optim.SGD([theta], lr=lr)
    scheduler = None if schedule is None else torch.optim.lr_scheduler.LambdaLR(base, schedule)
    opt = MultiObjectiveOptimizer(base, "mokd", lengthen="hypergradient")
    factors = []
    for _ in range(steps):
        losses = {
            "task": (theta**2).sum() + 1.0,
            "aux": ((theta - torch.tensor([1.0, 0.0])) ** 2).sum() + 1.0,
        }
        opt.zero_grad()
        stats = opt.backward(losses)
        factors.append(float(stats.info["length_factor"]))
        opt.step()
        if scheduler is not None:
            scheduler.step()
    return factors


def test_a_short_step_is_lengthened_and_an_overshooting_one_is_not() -> None:
    # far below the curvature's limit each step keeps descending along the last: the factor
    # grows to its ceiling; past it (the task's curvature is 2) the steps jump across the
    # valley once the loss has fallen (the default's step is short while it is high): what the
    # first steps added is taken back, and the factor stays at 1
    short = _quadratic_run(lr=0.01)
    assert (
        short[0] == 1.0
        and short == sorted(short)
        and short[-1] == pytest.approx(HYPERGRADIENT_CEILING)
    )
    high = _quadratic_run(lr=1.2)
    assert max(high) < 1.25 and high[20:] == [1.0] * 40


def test_the_optimizer_reports_its_learning_rate_and_a_warm_up_holds_the_factor() -> None:
    # a linear warm-up over the whole run: the rate rises every step, so the factor never grows
    # although every step is short
    assert _quadratic_run(lr=0.01, schedule=lambda step: (step + 1) / 60) == [1.0] * 60
