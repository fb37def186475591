"""``relative_gradient_ratio`` / ``StepStats.relative_ratio``: the others' gradient for their
loss against the first objective's -- the signal ``mokd``'s ``relative_start=True`` reads over
a run's first ten steps (docs/mokd.md, "When the default does not win")."""

from __future__ import annotations

import math

import pytest
import torch

from mokd_optim import MultiObjectiveOptimizer
from mokd_optim.diagnostics import StepStats, relative_gradient_ratio, rest_norm_ratio
from tests.models import TwoHeadMLP, kd_kl, two_head_batch


def _stats(gradients: list[list[float]], losses: list[float]) -> StepStats:
    g = torch.tensor(gradients, dtype=torch.float64)
    k = len(losses)
    return StepStats(
        names=tuple(f"l{i}" for i in range(k)),
        losses=torch.tensor(losses, dtype=torch.float64),
        weights=torch.full((k,), 1.0 / k, dtype=torch.float64),
        strategy="loop",
        gram=g @ g.T,
    )


def test_the_ratio_of_relative_gradients_by_hand() -> None:
    # task (3, 0) with loss 2: relative 1.5; kd (0, 1.5) with loss 0.5: relative 3 -> r = 2
    stats = _stats([[3.0, 0.0], [0.0, 1.5]], [2.0, 0.5])
    assert float(stats.relative_ratio) == pytest.approx(2.0, rel=1e-12)
    # three objectives: the others' gradients summed ((1, 2) + (2, 2) = (3, 4), norm 5) over
    # their losses summed (0.5 + 2.0): 2.0, against the task's 1.5
    three = _stats([[3.0, 0.0], [1.0, 2.0], [2.0, 2.0]], [2.0, 0.5, 2.0])
    assert float(three.relative_ratio) == pytest.approx(2.0 / 1.5, rel=1e-12)
    assert float(rest_norm_ratio(three.gram)) == pytest.approx(5.0 / 3.0, rel=1e-12)
    # another anchor: the kd objective's own relative gradient against the rest's
    gram, losses = three.gram, three.losses
    by_hand = (math.hypot(5.0, 2.0) / 4.0) / (math.hypot(1.0, 2.0) / 0.5)
    assert float(relative_gradient_ratio(gram, losses, anchor=1)) == pytest.approx(by_hand)


def test_the_ratio_is_unchanged_when_any_loss_is_rescaled() -> None:
    base = _stats([[3.0, 1.0], [0.5, 1.5]], [2.0, 0.5])
    for scale in (1e-3, 1e3):
        kd_scaled = _stats([[3.0, 1.0], [0.5 * scale, 1.5 * scale]], [2.0, 0.5 * scale])
        task_scaled = _stats([[3.0 * scale, 1.0 * scale], [0.5, 1.5]], [2.0 * scale, 0.5])
        for stats in (kd_scaled, task_scaled):
            assert float(stats.relative_ratio) == pytest.approx(
                float(base.relative_ratio), rel=1e-12
            )


def test_nan_where_the_ratio_is_undefined_and_none_without_a_gram() -> None:
    assert math.isnan(float(_stats([[0.0, 0.0], [1.0, 0.0]], [2.0, 0.5]).relative_ratio))
    assert math.isnan(float(_stats([[1.0, 0.0], [1.0, 0.0]], [2.0, 0.0]).relative_ratio))
    stats = _stats([[3.0, 0.0], [0.0, 1.5]], [2.0, 0.5])
    no_gram = StepStats(stats.names, stats.losses, stats.weights, "representation", gram=None)
    assert no_gram.relative_ratio is None
    assert math.isnan(no_gram.to_dict()["relative_ratio"])
    assert stats.to_dict()["relative_ratio"] == pytest.approx(2.0, rel=1e-12)
    # per-group Gram matrices: one ratio per group
    grouped = StepStats(
        stats.names,
        stats.losses,
        torch.stack([stats.weights, stats.weights]),
        "loop",
        gram=torch.stack([stats.gram, 4.0 * stats.gram]),
    )
    torch.testing.assert_close(
        grouped.relative_ratio, torch.tensor([2.0, 2.0], dtype=torch.float64)
    )
    record = grouped.to_dict()
    assert record["group0/relative_ratio"] == record["group1/relative_ratio"] == pytest.approx(2.0)


def _model_steps(relative_start: bool, kd_scale: float, steps: int = 12, soft: float = 1.0):
    """Train :class:`TwoHeadMLP` on task + KD through the optimizer (the teacher's logits times
    ``soft``: below 1, outputs near the student's first ones, as an under-trained teacher's);
    yields each step's stats with the gradients computed apart by autograd (the balanced
    parameters: trunk and classifier, the ones both losses reach)."""
    torch.manual_seed(0)
    model = TwoHeadMLP()
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05), "mokd", relative_start=relative_start
    )
    shared = [*model.trunk.parameters(), *model.classifier.parameters()]
    for step in range(steps):
        x, y, _, teacher_logits = two_head_batch(step)
        logits, _, _ = model(x)
        task = torch.nn.functional.cross_entropy(logits, y)
        kd = kd_scale * kd_kl(logits, soft * teacher_logits)
        g_task = torch.cat(
            [g.flatten() for g in torch.autograd.grad(task, shared, retain_graph=True)]
        )
        g_kd = torch.cat([g.flatten() for g in torch.autograd.grad(kd, shared, retain_graph=True)])
        by_hand = (g_kd.norm() / kd.detach()) / (g_task.norm() / task.detach())
        opt.zero_grad()
        stats = opt.backward({"task": task, "kd": kd})
        opt.step()
        yield opt, stats, float(by_hand)


def test_the_optimizers_stats_give_the_ratio_of_the_real_gradients() -> None:
    for _, stats, by_hand in _model_steps(relative_start=False, kd_scale=1.0, steps=4):
        assert float(stats.relative_ratio) == pytest.approx(by_hand, rel=1e-4)


def test_relative_start_decides_on_the_mean_of_the_first_ten_ratios() -> None:
    # what a user logs (the stats' ratio over the first ten steps) is what the option reads: its
    # recorded decision is "switch" exactly when that mean is at least 1 (the KD loss x1e-3 or
    # x1e3 moves neither the ratios nor the decision)
    from mokd_optim.methods._mokd import RELATIVE_START_PIVOT, SHARE_GROWTH_START

    for soft, expected in ((1.0, False), (0.05, True)):
        decisions = []
        for kd_scale in (1e-3, 1.0, 1e3):
            steps = list(_model_steps(True, kd_scale, soft=soft))
            ratios = [float(stats.relative_ratio) for _, stats, _ in steps]
            mean = sum(ratios[:SHARE_GROWTH_START]) / SHARE_GROWTH_START
            method = steps[-1][0].method  # the same optimizer on every step
            switched = bool(method.state_dict()["relative_average"][6])
            assert switched == (mean >= RELATIVE_START_PIVOT) == expected
            decisions.append(round(mean, 3))
        assert len(set(decisions)) == 1
