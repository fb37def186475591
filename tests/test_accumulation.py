"""Gradient accumulation: weights solved once per optimizer step from the averaged
per-objective gradients, equal to one step on the concatenated batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mokd_optim import MultiObjectiveOptimizer
from tests.helpers import forbid_host_sync
from tests.models import TwoHeadMLP, kd_kl

MICRO = 4
# float64 models: the only difference between the two runs is the order in which per-sample
# gradients are summed (4 means of 8 vs one mean of 32), a few ulps of float64.
TOLERANCE = 1e-10


def _data(step: int):
    generator = torch.Generator().manual_seed(step)
    x = torch.rand(32, 1, 8, 8, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 10, (32,), generator=generator)
    target = torch.randn(32, 48, generator=generator, dtype=torch.float64)
    teacher = 3 * torch.randn(32, 10, generator=generator, dtype=torch.float64)
    return x, y, target, teacher


def _losses(model, data):
    x, y, target, teacher = data
    logits, projected, _ = model(x)
    return {
        "task": F.cross_entropy(logits, y),
        "kd": kd_kl(logits, teacher),
        "feat": F.smooth_l1_loss(projected, target),
    }


def _make(method="mokd", strategy="loop", **options):
    torch.manual_seed(0)
    model = TwoHeadMLP().double()
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        method,
        strategy=strategy,
        **options,
    )
    return model, opt


def _run(model, opt, steps: int, micro: int, *, accumulate: bool = True) -> list[torch.Tensor]:
    weights = []
    for step in range(steps):
        data = _data(step)
        opt.zero_grad()
        chunks = [tuple(t.chunk(micro)[i] for t in data) for i in range(micro)]
        for index, chunk in enumerate(chunks):
            stats = opt.backward(_losses(model, chunk), accumulate=accumulate and index < micro - 1)
            if accumulate and index < micro - 1:
                assert stats is None and opt.accumulating
        weights.append(stats.weights.detach().clone())
        opt.step()
    return weights


@pytest.mark.parametrize(
    ("strategy", "step_rule"),
    [("loop", "anchor"), ("loop", "convex"), ("loop", "log"), ("vmap", "anchor")],
)
def test_four_micro_batches_equal_one_concatenated_batch(strategy: str, step_rule: str) -> None:
    full_model, full_opt = _make(strategy=strategy, step=step_rule)
    full_weights = _run(full_model, full_opt, 2, 1)
    model, opt = _make(strategy=strategy, step=step_rule)
    weights = _run(model, opt, 2, MICRO)
    for a, b in zip(weights, full_weights):
        torch.testing.assert_close(a, b, atol=TOLERANCE, rtol=TOLERANCE)
    for a, b in zip(model.parameters(), full_model.parameters()):
        torch.testing.assert_close(a, b, atol=TOLERANCE, rtol=TOLERANCE)
    stats = opt.last_stats
    torch.testing.assert_close(stats.losses, full_opt.last_stats.losses, atol=TOLERANCE, rtol=0)


def test_balancing_each_micro_batch_is_a_different_estimator() -> None:
    """Without accumulate=True each micro-batch is balanced on its own and .grad sums them:
    the weights (and the update) differ from the full-batch ones."""
    full_model, full_opt = _make()
    _run(full_model, full_opt, 1, 1)
    model, opt = _make()
    _run(model, opt, 1, MICRO, accumulate=False)
    difference = max(
        float((a.detach() - b.detach()).abs().max())
        for a, b in zip(model.parameters(), full_model.parameters())
    )
    assert difference > 1e-3


def test_amortized_strategy_accumulates_the_weighted_gradient() -> None:
    options = {"weights": {"task": 1.0, "kd": 0.3, "feat": 2.0}}
    full_model, full_opt = _make("weighted", "amortized", **options)
    _run(full_model, full_opt, 2, 1)
    model, opt = _make("weighted", "amortized", **options)
    _run(model, opt, 2, MICRO)
    for a, b in zip(model.parameters(), full_model.parameters()):
        torch.testing.assert_close(a, b, atol=TOLERANCE, rtol=TOLERANCE)


def test_scaler_with_accumulation_is_exact() -> None:
    torch.manual_seed(0)
    model = TwoHeadMLP()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), "mokd")
    torch.manual_seed(0)
    scaled_model = TwoHeadMLP()
    scaler = torch.amp.GradScaler("cpu")
    scaled_opt = MultiObjectiveOptimizer(
        torch.optim.SGD(scaled_model.parameters(), lr=0.1), "mokd", scaler=scaler
    )
    for step in range(2):
        data = tuple(t.float() if t.is_floating_point() else t for t in _data(step))
        for m, o in ((model, opt), (scaled_model, scaled_opt)):
            o.zero_grad()
            for index in range(MICRO):
                o.backward(
                    _losses(m, tuple(t.chunk(MICRO)[index] for t in data)),
                    accumulate=index < MICRO - 1,
                )
        opt.step()
        scaler.step(scaled_opt)
        scaler.update()
    for a, b in zip(model.parameters(), scaled_model.parameters()):
        assert torch.equal(a, b)


def test_zero_grad_drops_the_window_and_step_refuses_an_open_one() -> None:
    model, opt = _make()
    data = _data(0)
    opt.backward(_losses(model, data), accumulate=True)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="accumulation window is open"):
        opt.step()
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    opt.zero_grad()
    assert not opt.accumulating
    # A fresh window after zero_grad equals a plain single-batch backward.
    stats = opt.backward(_losses(model, data))
    reference_model, reference_opt = _make()  # same initial parameters, never stepped
    reference = reference_opt.backward(_losses(reference_model, data))
    torch.testing.assert_close(stats.weights, reference.weights, atol=0, rtol=0)
    for a, b in zip(model.parameters(), reference_model.parameters()):
        assert torch.equal(a.grad, b.grad)


def test_window_rejects_other_objectives_and_the_representation_strategy() -> None:
    model, opt = _make()
    data = _data(0)
    opt.backward(_losses(model, data), accumulate=True)
    losses = _losses(model, data)
    del losses["feat"]
    with pytest.raises(ValueError, match="differ from"):
        opt.backward(losses)
    assert opt.accumulating and opt._window.count == 1
    representation_model, representation_opt = _make(strategy="representation")
    x, y, _, teacher = data
    logits, _, _ = representation_model(x)
    with pytest.raises(ValueError, match="representation"):
        representation_opt.backward(
            {"task": F.cross_entropy(logits, y), "kd": kd_kl(logits, teacher)},
            features=logits,
            accumulate=True,
        )


def test_accumulation_reads_nothing_on_the_host() -> None:
    model, opt = _make(validate=False)
    data = _data(0)
    with forbid_host_sync():
        for index in range(MICRO):
            opt.backward(
                _losses(model, tuple(t.chunk(MICRO)[index] for t in data)),
                accumulate=index < MICRO - 1,
            )
    assert all(p.grad is not None for p in model.parameters())
