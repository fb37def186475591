"""MoKD's ``lengthen="while-short"`` (round 19) and ``"after-warmup"`` (a probe after round 18),
and the optimizer's report of the last parameter change that ``"while-short"`` reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mokd_optim import MultiObjectiveOptimizer, methods
from mokd_optim._validation import OptionError
from mokd_optim.gradients import ObjectiveGradients, change_products
from mokd_optim.methods._mokd import AGREEMENT_SMOOTHING, mokd_weights
from tests.models import TwoHeadMLP

GRAM = torch.tensor([[4.0, 3.0], [3.0, 9.0]], dtype=torch.float64)  # cos(g_task, g_kd) = 0.5
LOSSES = torch.tensor([0.5, 2.0], dtype=torch.float64)


def _method(lengthen):
    method = methods.get("mokd", lengthen=lengthen)
    method.bind(["task", "kd"])
    return method


def _length(method, gram=GRAM, losses=LOSSES) -> float:
    w = method.weights(gram, losses)
    return float((w @ gram @ w).sqrt())


def _report(method, short: float, change_norm: float = 3.0) -> None:
    """Tell ``method`` that -cos(g_task, delta) is ``short`` for GRAM's task gradient."""
    anchor_norm = float(GRAM[0, 0].sqrt())
    product = -short * anchor_norm * change_norm
    method.observe_previous_step(
        torch.tensor([product, 0.0], dtype=torch.float64),
        torch.tensor(change_norm**2, dtype=torch.float64),
    )


def test_change_products_match_dot_products_by_group_and_skip_unchanged_parameters() -> None:
    torch.manual_seed(0)
    params = [torch.randn(3, 2), torch.randn(4), torch.randn(5)]
    rows = [[torch.randn_like(p) for _ in range(2)] for p in params]
    gradients = ObjectiveGradients(
        params=params,
        blocks=[torch.stack(rows[0]), [rows[1][0], None], rows[2]],  # stacked, list with a gap
        groups=[0, 1, 0],
    )
    changes = {id(params[0]): torch.randn(3, 2), id(params[1]): torch.randn(4)}  # none for p2
    products, sq_norms = change_products(gradients, changes, 2, 2, torch.device("cpu"))
    assert products.dtype == sq_norms.dtype == torch.float64
    d0, d1 = changes[id(params[0])].flatten(), changes[id(params[1])]
    expected = torch.tensor(
        [
            [float(rows[0][0].flatten() @ d0), float(rows[0][1].flatten() @ d0)],
            [float(rows[1][0] @ d1), 0.0],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(products, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        sq_norms, torch.tensor([float(d0 @ d0), float(d1 @ d1)], dtype=torch.float64)
    )


def test_while_short_lengthens_only_while_the_average_short_cosine_is_positive() -> None:
    plain = _length(_method(False))
    longer = _length(_method(True))
    assert longer == pytest.approx(1.5 * plain, rel=1e-9)  # agreement 0.5 (GRAM's cosine)
    method = _method("while-short")
    assert method.needs_previous_step
    assert _length(method) == pytest.approx(plain, rel=1e-12)  # nothing reported yet: plain
    _report(method, 0.2)
    assert _length(method) == pytest.approx(longer, rel=1e-9)  # average +0.2: lengthened
    assert _length(method) == pytest.approx(longer, rel=1e-9)  # no report: the average stays
    # -0.3 after +0.2: the bias-corrected average is (0.01 * 0.99 * 0.2 - 0.01 * 0.3) / (1 -
    # 0.99^2) < 0 -> plain
    _report(method, -0.3)
    assert _length(method) == pytest.approx(plain, rel=1e-12)
    expected = (1 - AGREEMENT_SMOOTHING) * (AGREEMENT_SMOOTHING * 0.2 - 0.3)
    assert float(method.state_dict()["short_average"]) == pytest.approx(expected, rel=1e-12)
    assert method.state_dict()["short_count"] == 2
    # the average follows the reports, not the loss scale or the change's length
    _report(method, 0.5, change_norm=1e-6)
    assert _length(method) == pytest.approx(longer, rel=1e-9)


def test_while_short_ignores_a_non_finite_report_and_a_zero_change() -> None:
    method = _method("while-short")
    _report(method, 0.4)
    method.weights(GRAM, LOSSES)
    kept = method.state_dict()["short_average"].clone()
    method.observe_previous_step(
        torch.tensor([float("nan"), 0.0], dtype=torch.float64),
        torch.tensor(1.0, dtype=torch.float64),
    )
    w = method.weights(GRAM, LOSSES)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(method.state_dict()["short_average"], kept)
    # a zero change (the first step of a frozen run) counts as s = 0
    method.observe_previous_step(
        torch.zeros(2, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    )
    method.weights(GRAM, LOSSES)
    assert float(method.state_dict()["short_average"]) == pytest.approx(
        AGREEMENT_SMOOTHING * float(kept), rel=1e-12
    )


def test_while_short_state_round_trips_and_other_options_keep_no_previous_step() -> None:
    method = _method("while-short")
    _report(method, 0.3)
    method.weights(GRAM, LOSSES)
    copy = _method("while-short")
    copy.load_state_dict(method.state_dict())
    assert _length(copy) == pytest.approx(_length(method), rel=1e-12)
    for lengthen in (False, True, "after-warmup"):
        assert not _method(lengthen).needs_previous_step
        assert "short_average" not in _method(lengthen).state_dict()


def test_lengthen_options_are_checked() -> None:
    for step in ("log", "convex"):
        with pytest.raises(ValueError, match="lengthen needs a step rule"):
            methods.get("mokd", step=step, lengthen="while-short")
    for step in ("anchor", "bounded", "log-anchor"):
        assert methods.get("mokd", step=step, lengthen="while-short").needs_previous_step
        with pytest.raises(ValueError, match="after-warmup"):
            methods.get("mokd", step=step, lengthen="after-warmup")
    with pytest.raises(OptionError, match="lengthen must be"):
        methods.get("mokd", lengthen="always")
    assert methods.get("mokd", lengthen="while-short").options()["lengthen"] == "while-short"


@pytest.mark.parametrize("task_loss", [3.0, 1.0, 0.8, 0.5])
def test_after_warmup_raises_the_cap_and_keeps_the_warmup(task_loss: float) -> None:
    # capped-log-anchor's length ||g_task|| min(1, 1 / L); after-warmup: ||g_task|| min(1 + a,
    # 1 / L) with a = 0.5 here -- the same while L >= 1, 1 / L between, 1.5 below 2/3
    losses = torch.tensor([task_loss, 2.0], dtype=torch.float64)
    plain = _length(_method(False), losses=losses)
    raised = _length(_method("after-warmup"), losses=losses)
    assert plain == pytest.approx(2.0 * min(1.0, 1.0 / task_loss), rel=1e-9)
    assert raised == pytest.approx(2.0 * min(1.5, 1.0 / task_loss), rel=1e-9)


def test_lengthen_gate_scales_the_lengthening() -> None:
    zero, one = (torch.tensor(v, dtype=torch.float64) for v in (0.0, 1.0))
    options = dict(step="capped-log-anchor", equalize=1.0, anchor_vs_rest=True, rest="sum")
    plain, _ = mokd_weights(GRAM, LOSSES, **options)
    gated_off, _ = mokd_weights(GRAM, LOSSES, lengthen=True, lengthen_gate=zero, **options)
    gated_on, _ = mokd_weights(GRAM, LOSSES, lengthen=True, lengthen_gate=one, **options)
    longer, _ = mokd_weights(GRAM, LOSSES, lengthen=True, **options)
    torch.testing.assert_close(gated_off, plain)
    torch.testing.assert_close(gated_on, longer)


def _kd_losses(model, x, y, targets):
    logits = model(x)[0]
    return {
        "task": F.cross_entropy(logits, y),
        "kd": F.kl_div(F.log_softmax(logits, 1), targets, reduction="batchmean"),
    }


def test_the_optimizer_reports_the_last_parameter_change(digits) -> None:
    # plain SGD: the change of step 1 is -lr * (step 1's combined gradient); step 2's method
    # gets <g_i, change> for its own per-objective gradients
    x, y = digits[0][:64], digits[1][:64]
    targets = torch.softmax(torch.randn(64, 10, generator=torch.Generator().manual_seed(1)), 1)
    torch.manual_seed(0)
    model = TwoHeadMLP()
    params = list(model.parameters())
    opt = MultiObjectiveOptimizer(torch.optim.SGD(params, lr=0.05), "mokd", lengthen="while-short")
    reports = []
    observe = opt.method.observe_previous_step
    opt.method.observe_previous_step = lambda p, n: (reports.append((p, n)), observe(p, n))
    before = [p.detach().clone() for p in params]
    opt.zero_grad()
    opt.backward(_kd_losses(model, x, y, targets))
    combined = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
    opt.step()
    assert reports == []  # no change before the first step
    change = [p.detach() - b for p, b in zip(params, before)]
    for delta, grad in zip(change, combined):
        torch.testing.assert_close(delta, -0.05 * grad)
    losses = _kd_losses(model, x, y, targets)
    expected = [
        sum(
            0.0 if g is None else float((g * d).sum())
            for g, d in zip(
                torch.autograd.grad(v, params, retain_graph=True, allow_unused=True), change
            )
        )
        for v in losses.values()
    ]
    opt.zero_grad()
    opt.backward(losses)
    products, sq_norm = reports[-1]
    np.testing.assert_allclose(products.numpy(), expected, rtol=1e-4)
    assert float(sq_norm) == pytest.approx(sum(float((d * d).sum()) for d in change), rel=1e-5)


def _quadratic_run(lr: float, steps: int = 30):
    """Two quadratic objectives (minima 1 apart, +1 so both stay positive) under plain SGD."""
    theta = torch.nn.Parameter(torch.tensor([4.0, -3.0]))
    opt = MultiObjectiveOptimizer(torch.optim.SGD([theta], lr=lr), "mokd", lengthen="while-short")
    for _ in range(steps):
        losses = {
            "task": ((theta - torch.tensor([0.0, 0.0])) ** 2).sum() + 1.0,
            "aux": ((theta - torch.tensor([1.0, 0.0])) ** 2).sum() + 1.0,
        }
        opt.zero_grad()
        opt.backward(losses)
        opt.step()
    state = opt.method.state_dict()
    return float(state["short_average"]) / (1 - AGREEMENT_SMOOTHING ** state["short_count"])


def test_while_short_tells_a_short_step_from_an_overshooting_one() -> None:
    # a step far shorter than the curvature allows keeps descending along itself (s > 0); one
    # past the curvature's limit (the task's curvature is 2: plain GD overshoots from lr 0.5,
    # the default's step is ||g_task|| / L_task while L_task > 1) jumps across the valley
    assert _quadratic_run(lr=0.01) > 0.5
    assert _quadratic_run(lr=1.2) < -0.5


def _recording_run(digits, seed: int):
    """A TwoHeadMLP under MoKD(lengthen="while-short") on 64 digits against random soft
    targets, with the method's reports recorded: ``(model, opt, reports, batch)``."""
    x, y = digits[0][:64], digits[1][:64]
    targets = torch.softmax(torch.randn(64, 10, generator=torch.Generator().manual_seed(seed)), 1)
    torch.manual_seed(0)
    model = TwoHeadMLP()
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05), "mokd", lengthen="while-short"
    )
    reports: list = []
    opt.method.observe_previous_step = lambda p, n: reports.append((p, n))
    return model, opt, reports, (x, y, targets)


def test_the_representation_strategy_reports_no_previous_step(digits) -> None:
    # the weights come from gradients at the logits there: no parameter gradients to report
    model, opt, reports, (x, y, targets) = _recording_run(digits, seed=2)
    for _ in range(3):
        logits = model(x)[0]
        losses = {
            "task": F.cross_entropy(logits, y),
            "kd": F.kl_div(F.log_softmax(logits, 1), targets, reduction="batchmean"),
        }
        opt.zero_grad()
        opt.backward(losses, features=logits)
        opt.step()
    assert reports == []
    assert "short_average" not in opt.method.state_dict()


def test_each_parameter_change_is_reported_once(digits) -> None:
    # a backward that no step followed (a GradScaler skipping an overflow) must not make the
    # next backward read the same change again
    model, opt, reports, (x, y, targets) = _recording_run(digits, seed=3)
    for steps in (True, True, False, True):
        opt.zero_grad()
        opt.backward(_kd_losses(model, x, y, targets))
        if steps:
            opt.step()
    opt.zero_grad()
    opt.backward(_kd_losses(model, x, y, targets))
    # backwards 2 and 3 follow a step; 4 follows a backward without one; 5 follows step 4
    assert len(reports) == 3
