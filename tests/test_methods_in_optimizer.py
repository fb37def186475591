"""Every registered method inside MultiObjectiveOptimizer: the written gradient, logging, checkpoints.

Parametrised over ``methods.available()``: a new method gets these checks without edits.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mokd_optim import MultiObjectiveOptimizer, methods

NAMES = methods.available()
OPTIONS = {"weighted": {"weights": {"task": 1.0, "aux": 0.3, "reg": 0.1}}, "pcgrad": {"seed": 5}}


def problem() -> tuple[nn.Module, Callable[[int], dict[str, Tensor]]]:
    """A shared trunk with a task head and an auxiliary head (three objectives), fixed batches."""
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {"trunk": nn.Linear(6, 8), "task": nn.Linear(8, 3), "aux": nn.Linear(8, 1)}
    )
    generator = torch.Generator().manual_seed(1)
    xs = torch.randn(10, 12, 6, generator=generator)
    ys = torch.randint(0, 3, (10, 12), generator=generator)
    targets = torch.randn(10, 12, 1, generator=generator)

    def losses(step: int) -> dict[str, Tensor]:
        features = torch.relu(model["trunk"](xs[step]))
        return {
            "task": F.cross_entropy(model["task"](features), ys[step]),
            "aux": F.mse_loss(model["aux"](features), targets[step]) + 0.05,
            "reg": features.pow(2).mean() + 0.05,
        }

    return model, losses


def make_optimizer(model: nn.Module, name: str) -> MultiObjectiveOptimizer:
    options = dict(OPTIONS.get(name, {}))
    return MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), name, **options
    )


def train(
    optimizer: MultiObjectiveOptimizer, losses: Callable[[int], dict[str, Tensor]], steps: range
) -> None:
    for step in steps:
        optimizer.zero_grad()
        optimizer.backward(losses(step))
        closure = (lambda s=step: losses(s)) if optimizer.method.needs_losses_after else None
        optimizer.step(closure)


@pytest.mark.parametrize("name", NAMES)
def test_written_gradient_is_the_weighted_combination(name: str) -> None:
    model, losses = problem()
    optimizer = make_optimizer(model, name)
    current = losses(0)
    trunk = list(model["trunk"].parameters())
    per_objective = [
        torch.autograd.grad(loss, trunk, retain_graph=True) for loss in current.values()
    ]
    stats = optimizer.backward(current)
    weights = stats.weights.to(torch.float32)
    for index, parameter in enumerate(trunk):
        expected = sum(w * grads[index] for w, grads in zip(weights, per_objective))
        torch.testing.assert_close(parameter.grad, expected, rtol=1e-5, atol=1e-7)
    record = stats.to_dict()
    assert all(isinstance(value, float) for value in record.values())
    assert all(math.isfinite(record[f"weight/{objective}"]) for objective in current)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_resume_equals_uninterrupted_run(name: str) -> None:
    model, losses = problem()
    optimizer = make_optimizer(model, name)
    train(optimizer, losses, range(6))
    uninterrupted = [p.detach().clone() for p in model.parameters()]

    model, losses = problem()
    optimizer = make_optimizer(model, name)
    train(optimizer, losses, range(3))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    model, losses = problem()  # fresh objects, as after a restart
    optimizer = make_optimizer(model, name)
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    train(optimizer, losses, range(3, 6))
    for a, b in zip(uninterrupted, model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "name", [n for n in NAMES if methods.get(n, **OPTIONS.get(n, {})).needs_gradients]
)
def test_per_group_balancing_copies_the_method(name: str) -> None:
    model, losses = problem()
    groups = [
        {"params": model["trunk"].parameters()},
        {"params": list(model["task"].parameters()) + list(model["aux"].parameters())},
    ]
    options = dict(OPTIONS.get(name, {}))
    optimizer = MultiObjectiveOptimizer(
        torch.optim.SGD(groups, lr=0.05), name, balance="per_group", **options
    )
    stats = optimizer.backward(losses(0))
    assert stats.weights.shape == (2, 3)
    assert torch.isfinite(stats.weights).all()
    copied = copy.deepcopy(optimizer.method)
    assert repr(copied) == repr(optimizer.method)
