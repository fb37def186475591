"""MoKD's promises: scale invariance, no conflict, the clipped formula where the paper's fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mokd_optim import MultiObjectiveOptimizer, methods
from mokd_optim.methods import mokd_weights
from tests.models import TwoHeadMLP
from tests.reference import mokd_two_objectives

RULES = ["anchor", "convex", "log"]


def _update(model: TwoHeadMLP, x, y, target, scale: float, **options) -> torch.Tensor:
    options.setdefault("equalize", 0.0)  # the paper's weights (tests/reference.py)
    options.setdefault("conflict", "pareto")  # ... without the default's agreement share
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), "mokd", **options)
    opt.zero_grad()
    logits, projected, _ = model(x)
    opt.backward({"task": F.cross_entropy(logits, y), "kd": scale * F.mse_loss(projected, target)})
    shared = list(model.trunk.parameters())
    return torch.cat([p.grad.reshape(-1) for p in shared]).double()


@pytest.mark.parametrize("step", RULES)
def test_rescaling_a_loss_keeps_the_direction(digits, step: str) -> None:
    x, y = digits[0][:64], digits[1][:64]
    model = TwoHeadMLP()
    target = torch.randn(64, 48)
    base = _update(model, x, y, target, 1.0, step=step)
    for scale in (1e-3, 1e3):
        scaled = _update(model, x, y, target, scale, step=step)
        cosine = float(base @ scaled / (base.norm() * scaled.norm()))
        assert cosine > 1 - 1e-6, (step, scale, cosine)
        if step in ("anchor", "log"):
            # anchor: the whole update is unchanged when a non-anchor loss is rescaled;
            # log: the log-gradient combination does not depend on scale at all.
            torch.testing.assert_close(scaled, base, rtol=1e-4, atol=1e-8)
    if step == "convex":
        # the length of the convex rule grows with the scaled loss (why it is not the default)
        assert _update(model, x, y, target, 1e3, step=step).norm() > 2 * base.norm()


def test_anchor_by_name_and_rescaling_the_anchor_scales_the_update(digits) -> None:
    x, y = digits[0][:64], digits[1][:64]
    model = TwoHeadMLP()
    target = torch.randn(64, 48)
    by_index = _update(model, x, y, target, 1.0, step="anchor", anchor=1)
    by_name = _update(model, x, y, target, 1.0, step="anchor", anchor="kd")
    torch.testing.assert_close(by_index, by_name)
    scaled = _update(model, x, y, target, 10.0, step="anchor", anchor="kd")
    torch.testing.assert_close(scaled, 10.0 * by_name, rtol=1e-4, atol=1e-8)


def _random_pair(rng: np.random.Generator, kind: str, n: int = 50) -> tuple[np.ndarray, np.ndarray]:
    a = rng.standard_normal(n)
    if kind == "opposite_ish":
        b = -a * 3.0 + 0.1 * rng.standard_normal(n)
    elif kind == "parallel":
        b = 7.0 * a
    elif kind == "dominated":
        b = 1e-6 * rng.standard_normal(n)
    else:
        b = rng.standard_normal(n)
    return a, b


@pytest.mark.parametrize("kind", ["random", "opposite_ish", "parallel", "dominated"])
@pytest.mark.parametrize("step", RULES)
def test_weights_match_reference_and_never_conflict(kind: str, step: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        g1, g2 = _random_pair(rng, kind)
        l1, l2 = float(rng.uniform(0.01, 5)), float(rng.uniform(1e-4, 50))
        j = np.stack([g1, g2])
        gram = torch.tensor(j @ j.T)
        w, pi = mokd_weights(gram, torch.tensor([l1, l2], dtype=torch.float64), step=step)
        d = w.numpy() @ j
        expected = mokd_two_objectives(g1, g2, l1, l2, step=step)
        np.testing.assert_allclose(d, expected, rtol=1e-6, atol=1e-9 * np.abs(expected).max())
        # No conflict: <g_i, d> >= -tol for both objectives.
        tol = 1e-9 * np.linalg.norm(d) * max(np.linalg.norm(g1), np.linalg.norm(g2))
        assert g1 @ d >= -tol and g2 @ d >= -tol
        assert 0 <= float(pi[0]) <= 1 and float(pi.sum()) == pytest.approx(1.0)


def test_equal_progress_on_log_gradients_when_interior() -> None:
    """<d, h_1> = <d, h_2> when pi is strictly inside the simplex (no dominance)."""
    rng = np.random.default_rng(1)
    g1, g2 = rng.standard_normal(30), rng.standard_normal(30) * 100.0
    l1, l2 = 2.0, 300.0
    d = mokd_two_objectives(g1, g2, l1, l2, step="log")
    assert d @ (g1 / l1) == pytest.approx(d @ (g2 / l2), rel=1e-9)


def test_unclipped_formula_failure_case_gives_descent_step() -> None:
    """Parallel log-gradients with different norms: the paper's formula returns the zero vector
    (min-norm point of the whole line); the simplex-clipped weights give the smaller gradient,
    a non-zero step that decreases both losses."""
    rng = np.random.default_rng(2)
    h = rng.standard_normal(40)
    g1, g2 = 2.0 * h, 5.0 * h  # losses 1 and 1 -> log-gradients 2h and 5h
    j = np.stack([g1, g2])
    gram = torch.tensor(j @ j.T)
    losses = torch.tensor([1.0, 1.0], dtype=torch.float64)
    unclipped, pi_line = mokd_weights(gram, losses, step="log", simplex=False)
    assert float(pi_line[0]) > 1.0  # outside the simplex
    np.testing.assert_allclose(unclipped.numpy() @ j, 0.0, atol=1e-9)
    for step in RULES:
        w, pi = mokd_weights(gram, losses, step=step)
        d = w.numpy() @ j
        np.testing.assert_allclose(pi.numpy(), [1.0, 0.0])
        assert np.linalg.norm(d) > 0.1 and g1 @ d > 0 and g2 @ d > 0


def test_opposite_gradients_are_pareto_stationary() -> None:
    g = np.array([1.0, -2.0, 0.5])
    j = np.stack([g, -4.0 * g])
    gram = torch.tensor(j @ j.T)
    for step in RULES:
        w, _ = mokd_weights(gram, torch.tensor([1.0, 2.0], dtype=torch.float64), step=step)
        np.testing.assert_allclose(w.numpy() @ j, 0.0, atol=1e-12)


def test_three_objectives_general_path_matches_cvxpy() -> None:
    rng = np.random.default_rng(3)
    j = rng.standard_normal((3, 20)) * np.array([[1.0], [1e3], [1e-2]])
    losses = torch.tensor([0.5, 20.0, 0.01], dtype=torch.float64)
    gram = torch.tensor(j @ j.T)
    method = methods.get("mokd", step="log", equalize=0.0, anchor_vs_rest=False, conflict="pareto")
    method.bind(["a", "b", "c"])
    w = method.weights(gram, losses)
    reference = methods.get(
        "mokd",
        step="log",
        equalize=0.0,
        anchor_vs_rest=False,
        conflict="pareto",
        backend="cvxpy",
    )
    reference.bind(["a", "b", "c"])
    np.testing.assert_allclose(w.numpy(), reference.weights(gram, losses).numpy(), rtol=1e-5)
    d = w.numpy() @ j
    assert all(row @ d >= -1e-9 * np.linalg.norm(row) * np.linalg.norm(d) for row in j)


def test_options_and_repr() -> None:
    method = methods.get("mokd", step="log", anchor="task")
    assert repr(method) == (
        "MoKD(step='log', anchor='task', simplex=True, backend='auto', regularization=0.0, "
        "smoothing=0.0, equalize=1.0, step_bound=None, anchor_vs_rest=True, rest='sum', conflict='agreement', "
        "lengthen=False, agreement_smoothing=0.999, agreement_gate='off', "
        "agreement_lag=False, share_growth=False, relative_start=False)"
    )
    with pytest.raises(ValueError, match="unknown step rule"):
        methods.get("mokd", step="adam")
    with pytest.raises(ValueError, match="not one of the objectives"):
        method.bind(["ce", "kd"])
    with pytest.raises(ValueError, match="two objectives only"):
        methods.get("mokd", simplex=False).bind(["a", "b", "c"])
    assert {"mokd", "mgda", "sum", "weighted"} <= set(methods.available())
