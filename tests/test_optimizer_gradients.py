"""The .grad written by backward() equals the combination computed by hand.

Per-objective gradients are computed separately with torch.autograd.grad, the weights with the
independent numpy reference of METHOD.md, and compared with what the optimizer wrote, for every
exact strategy, on small real models (digits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mokd_optim import MultiObjectiveOptimizer, ObjectiveError
from mokd_optim.solvers import solve_qp
from tests.helpers import forbid_host_sync
from tests.models import SmallCNN, TwoHeadMLP, kd_kl
from tests.reference import mokd_two_objectives

EXACT = ["loop", "vmap"]


def _mlp_losses(
    model: TwoHeadMLP, x: torch.Tensor, y: torch.Tensor, target_features: torch.Tensor
) -> dict[str, torch.Tensor]:
    logits, projected, _ = model(x)
    return {
        "task": F.cross_entropy(logits, y),
        "feat": F.smooth_l1_loss(projected, target_features),
    }


def _per_objective(
    losses: dict[str, torch.Tensor], params: list[torch.Tensor]
) -> list[list[torch.Tensor | None]]:
    return [
        list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))
        for loss in losses.values()
    ]


def _flat(
    grads: list[torch.Tensor | None], params: list[torch.Tensor], mask: list[bool]
) -> np.ndarray:
    parts = [
        (g if g is not None else torch.zeros_like(p)).reshape(-1)
        for g, p, m in zip(grads, params, mask)
        if m
    ]
    return torch.cat(parts).double().numpy()


@pytest.mark.parametrize("strategy", EXACT)
@pytest.mark.parametrize("step", ["anchor", "convex", "log"])
def test_mokd_grad_equals_hand_combination_mlp(digits, strategy: str, step: str) -> None:
    x, y = digits[0][:64], digits[1][:64]
    model = TwoHeadMLP()
    target = torch.randn(64, 48)
    params = list(model.parameters())
    # the paper's min-norm combination (the hand reference): equalize=0, no task priority
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(params, lr=0.1),
        "mokd",
        strategy=strategy,
        step=step,
        equalize=0.0,
        conflict="pareto",
    )

    losses = _mlp_losses(model, x, y, target)
    grads = _per_objective(losses, params)
    shared = [g_task is not None and g_feat is not None for g_task, g_feat in zip(*grads)]
    only_task = [g_task is not None and g_feat is None for g_task, g_feat in zip(*grads)]
    only_feat = [g_task is None and g_feat is not None for g_task, g_feat in zip(*grads)]
    assert any(shared) and any(only_task) and any(only_feat)
    values = [float(v.detach()) for v in losses.values()]
    expected_shared = mokd_two_objectives(
        _flat(grads[0], params, shared), _flat(grads[1], params, shared), *values, step=step
    )

    stats = opt.backward(losses)
    assert stats.strategy == strategy
    written = _flat([p.grad for p in params], params, shared)
    np.testing.assert_allclose(written, expected_shared, rtol=1e-5, atol=1e-7)
    # Parameters reached by one objective get that objective's plain gradient.
    for p, g_task, g_feat, a, b in zip(params, grads[0], grads[1], only_task, only_feat):
        if a:
            torch.testing.assert_close(p.grad, g_task)
        if b:
            torch.testing.assert_close(p.grad, g_feat)


@pytest.mark.parametrize("strategy", EXACT)
def test_mgda_three_objectives_small_cnn(digits, strategy: str) -> None:
    """K = 3 through the general solver: the update is J^T w* with w* from cvxpy on the same Gram."""
    x, y = digits[0][:48], digits[1][:48]
    student, teacher = SmallCNN(), SmallCNN(width=12)
    params = list(student.parameters())
    opt = MultiObjectiveOptimizer(torch.optim.SGD(params, lr=0.1), "mgda", strategy=strategy)
    logits = student(x)
    with torch.no_grad():
        teacher_logits = teacher(x)
    losses = [F.cross_entropy(logits, y), kd_kl(logits, teacher_logits), 0.1 * logits.pow(2).mean()]
    grads = _per_objective(dict(enumerate(losses)), params)  # type: ignore[arg-type]
    j = np.stack([_flat(g, params, [True] * len(params)) for g in grads])
    w = solve_qp(j @ j.T)
    stats = opt.backward(losses)
    np.testing.assert_allclose(stats.weights.numpy(), w, atol=1e-6)
    written = _flat([p.grad for p in params], params, [True] * len(params))
    np.testing.assert_allclose(written, w @ j, rtol=1e-4, atol=1e-7)
    # The Gram matrix in the stats is that of the gradients.
    np.testing.assert_allclose(stats.gram.numpy(), j @ j.T, rtol=1e-5, atol=1e-9)


def test_loop_and_vmap_agree_and_accumulate_into_existing_grad(digits) -> None:
    x, y = digits[0][:32], digits[1][:32]
    results = []
    for strategy in EXACT:
        torch.manual_seed(1)
        model = TwoHeadMLP()
        target = torch.randn(32, 48)
        opt = MultiObjectiveOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), "mokd", strategy=strategy, equalize=0.0
        )
        for p in model.parameters():
            p.grad = torch.ones_like(p)  # existing gradient: backward adds, as autograd does
        stats = opt.backward(_mlp_losses(model, x, y, target))
        results.append(([p.grad.clone() for p in model.parameters()], stats.weights))
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(results[0][1], results[1][1])
    # Subtracting the pre-existing ones recovers a fresh backward.
    torch.manual_seed(1)
    model = TwoHeadMLP()
    target = torch.randn(32, 48)
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), "mokd", strategy="loop", equalize=0.0
    )
    opt.backward(_mlp_losses(model, x, y, target))
    for fresh, accumulated in zip([p.grad for p in model.parameters()], results[0][0]):
        torch.testing.assert_close(fresh + 1.0, accumulated)


def test_per_group_balancing_uses_each_groups_gram(digits) -> None:
    x, y = digits[0][:32], digits[1][:32]
    model = TwoHeadMLP()
    target = torch.randn(32, 48)
    first, second = list(model.trunk[1].parameters()), list(model.trunk[3].parameters())
    rest = list(model.classifier.parameters()) + list(model.projector.parameters())
    base = torch.optim.SGD([{"params": first}, {"params": second + rest}], lr=0.1)
    opt = MultiObjectiveOptimizer(
        base,
        "mokd",
        strategy="loop",
        balance="per_group",
        step="log",
        equalize=0.0,
        conflict="pareto",  # the reference is the min-norm point
    )
    losses = _mlp_losses(model, x, y, target)
    grads_1 = _per_objective(losses, first)
    grads_2 = _per_objective(losses, second)
    values = [float(v.detach()) for v in losses.values()]
    expect_1 = mokd_two_objectives(
        _flat(grads_1[0], first, [True] * 2),
        _flat(grads_1[1], first, [True] * 2),
        *values,
        step="log",
    )
    expect_2 = mokd_two_objectives(
        _flat(grads_2[0], second, [True] * 2),
        _flat(grads_2[1], second, [True] * 2),
        *values,
        step="log",
    )
    stats = opt.backward(losses)
    assert stats.weights.shape == (2, 2) and stats.gram.shape == (2, 2, 2)
    np.testing.assert_allclose(
        _flat([p.grad for p in first], first, [True] * 2), expect_1, rtol=1e-5, atol=1e-8
    )
    np.testing.assert_allclose(
        _flat([p.grad for p in second], second, [True] * 2), expect_2, rtol=1e-5, atol=1e-8
    )
    assert not torch.allclose(stats.weights[0], stats.weights[1])
    record = stats.to_dict()
    assert "group0/weight/task" in record and "group1/cosine/task|feat" in record


def test_representation_strategy_balances_at_the_shared_tensor(digits) -> None:
    """Weights come from the gradients at the features; upstream parameters get J^T(sum w_i dL_i/dz),
    the heads downstream of z their plain gradients; exactly one backward of the graph."""
    x, y = digits[0][:32], digits[1][:32]
    model = TwoHeadMLP()
    target = torch.randn(32, 48)
    params = list(model.parameters())
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(params, lr=0.1), "mokd", step="anchor", equalize=0.0, conflict="pareto"
    )
    logits, projected, features = model(x)
    losses = {"task": F.cross_entropy(logits, y), "feat": F.smooth_l1_loss(projected, target)}
    gz = [torch.autograd.grad(loss, features, retain_graph=True)[0] for loss in losses.values()]
    values = [float(v.detach()) for v in losses.values()]
    dz = mokd_two_objectives(
        gz[0].reshape(-1).double().numpy(),
        gz[1].reshape(-1).double().numpy(),
        *values,
        step="anchor",
    )
    trunk_params = list(model.trunk.parameters())
    expected_trunk = torch.autograd.grad(
        features,
        trunk_params,
        grad_outputs=torch.tensor(dz, dtype=torch.float32).view_as(features),
        retain_graph=True,
    )
    expected_heads = {
        "classifier": torch.autograd.grad(
            losses["task"], list(model.classifier.parameters()), retain_graph=True
        ),
        "projector": torch.autograd.grad(
            losses["feat"], list(model.projector.parameters()), retain_graph=True
        ),
    }
    stats = opt.backward(losses, features=features)
    assert stats.strategy == "representation"
    for p, g in zip(trunk_params, expected_trunk):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7)
    for name, expected in expected_heads.items():
        for p, g in zip(getattr(model, name).parameters(), expected):
            torch.testing.assert_close(p.grad, g)
    np.testing.assert_allclose(float(stats.combined_norm), float(gz[0].norm()), rtol=1e-5)


@pytest.mark.parametrize(
    "method,options,weights",
    [("sum", {}, [1.0, 1.0]), ("weighted", {"weights": {"feat": 0.25}}, [1.0, 0.25])],
)
def test_fixed_weight_methods_single_backward_and_loop_agree(
    digits, method: str, options: dict, weights: list[float]
) -> None:
    x, y = digits[0][:32], digits[1][:32]
    grads_by_strategy = {}
    for strategy in ["auto", "loop"]:
        torch.manual_seed(3)
        model = TwoHeadMLP()
        target = torch.randn(32, 48)
        opt = MultiObjectiveOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), method, strategy=strategy, **options
        )
        losses = _mlp_losses(model, x, y, target)
        expected = torch.autograd.grad(
            weights[0] * losses["task"] + weights[1] * losses["feat"],
            list(model.parameters()),
            retain_graph=True,
        )
        stats = opt.backward(losses)
        assert stats.strategy == ("amortized" if strategy == "auto" else "loop")
        for p, g in zip(model.parameters(), expected):
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)
        assert (stats.gram is None) == (strategy == "auto")
        grads_by_strategy[strategy] = stats.weights
    torch.testing.assert_close(grads_by_strategy["auto"], grads_by_strategy["loop"])


def test_loop_backward_has_no_host_sync(digits) -> None:
    """With validate=False the per-step path of the default method reads no tensor on the host."""
    x, y = digits[0][:32], digits[1][:32]
    model = TwoHeadMLP()
    target = torch.randn(32, 48)
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        "mokd",
        validate=False,
        max_norm=1.0,
    )
    losses = _mlp_losses(model, x, y, target)
    with forbid_host_sync():
        stats = opt.backward(losses)
        _ = (stats.cosine, stats.conflict, stats.dominance, stats.combined_norm)
        opt.step()
        opt.zero_grad()
    assert stats.weights.shape == (2,)


def test_stats_values(digits) -> None:
    x, y = digits[0][:32], digits[1][:32]
    model = TwoHeadMLP()
    target = torch.randn(32, 48)
    params = list(model.parameters())
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(params, lr=0.1), "mokd", step="anchor", equalize=0.0
    )
    losses = _mlp_losses(model, x, y, target)
    grads = _per_objective(losses, params)
    shared = [a is not None and b is not None for a, b in zip(*grads)]
    g1, g2 = _flat(grads[0], params, shared), _flat(grads[1], params, shared)
    stats = opt.backward(losses)
    n1, n2 = np.linalg.norm(g1), np.linalg.norm(g2)
    np.testing.assert_allclose(stats.grad_norms.numpy(), [n1, n2], rtol=1e-5)
    np.testing.assert_allclose(float(stats.cosine[0, 1]), g1 @ g2 / (n1 * n2), rtol=1e-4, atol=1e-6)
    assert bool(stats.conflict) == bool(g1 @ g2 < 0)
    np.testing.assert_allclose(float(stats.dominance), max(n1, n2) / min(n1, n2), rtol=1e-5)
    np.testing.assert_allclose(
        float(stats.combined_norm), n1, rtol=1e-5
    )  # anchor rule: ||d|| = ||g_task||
    record = stats.to_dict()
    assert record["weight/task"] == pytest.approx(float(stats.weights[0]))
    assert 0.0 <= record["simplex_weights/task"] <= 1.0
    assert record["simplex_weights/task"] + record["simplex_weights/feat"] == pytest.approx(1.0)
    assert opt.last_stats is stats


class _AliasingModel(torch.nn.Module):
    """Parameters whose gradients autograd returns as one shared tensor (``a + b``) or as an
    expanded view (a scalar bias broadcast over the output)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(4, 3))
        self.b = torch.nn.Parameter(torch.randn(4, 3))
        self.scalar = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.a + self.b) + self.scalar


@pytest.mark.parametrize("step", ["anchor", "log"])
def test_in_place_combination_never_corrupts_shared_or_expanded_gradients(step: str) -> None:
    """The loop strategy writes the combination into autograd's own gradient tensors only when
    no other tensor shares them; aliasing and expanded gradients are combined out of place."""
    model = _AliasingModel()
    x = torch.randn(16, 4)
    out = model(x)
    losses = {"fit": (out - 1.0).pow(2).mean(), "small": out.abs().mean() + 0.1}
    params = list(model.parameters())
    grads = _per_objective(losses, params)
    values = [float(v.detach()) for v in losses.values()]
    expected = mokd_two_objectives(
        _flat(grads[0], params, [True] * 3), _flat(grads[1], params, [True] * 3), *values, step=step
    )
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(params, lr=0.1), "mokd", step=step, equalize=0.0, conflict="pareto"
    )
    opt.backward(losses)
    np.testing.assert_allclose(
        _flat([p.grad for p in params], params, [True] * 3), expected, rtol=1e-5, atol=1e-7
    )
    # a and b receive the same gradient from every loss, so their combined gradients agree.
    torch.testing.assert_close(model.a.grad, model.b.grad)
    assert model.a.grad.data_ptr() != model.b.grad.data_ptr()


def test_non_finite_gradient_raises_and_changes_nothing(digits) -> None:
    """Finite losses whose gradient overflows: with validate=True the objective is named and
    nothing is written."""
    x, y = digits[0][:16], digits[1][:16]
    model = TwoHeadMLP()
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), "mokd", strategy="loop", equalize=0.0
    )
    logits, _, features = model(x)
    # d/dz of sqrt(|z|) is infinite at z = 0: a finite loss with a non-finite gradient.
    feat = (features - features.detach()).abs().sqrt().mean() + 1.0
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ObjectiveError, match="gradient is not finite") as info:
        opt.backward({"task": F.cross_entropy(logits, y), "feat": feat})
    assert info.value.objective == "feat"
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
