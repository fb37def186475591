"""The optimizer's fixed per-step cost (issue 17).

What ``diagnostics.step_cost`` reports, the host synchronisations and the tensor-op budget of
the default K = 2 step (a constant plus a few ops per balanced parameter tensor, as
docs/benchmarks.md states), and the fused Gram / combination / check paths giving the same
numbers as the per-tensor ones. Op counts are deterministic; no timing is asserted.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mokd_optim import MultiObjectiveOptimizer, ObjectiveError, gradients
from mokd_optim.diagnostics import HOST_READS, StepCost, step_cost

#: Ops the default K = 2 ``loop`` step may add over the floor (two backward passes), per
#: balanced parameter tensor above ``gradients.PACK_MAX_NUMEL`` elements (its 3 dot products;
#: smaller tensors share one buffer per objective when there are at least 4), ...
OPS_PER_LARGE_TENSOR = 3
#: ... and independent of the model (docs/benchmarks.md, "Small models"; 115-120 today).
OPS_CONSTANT = 150


def _mlp(depth: int, width: int = 16) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(20, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 5))


def _losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    logits = model(x)
    kd = F.kl_div(
        F.log_softmax(logits / 4, dim=1), torch.full_like(logits, 0.2), reduction="batchmean"
    )
    return logits, {"task": F.cross_entropy(logits, y), "kd": 16 * kd}


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(8, 20, generator=generator), torch.randint(0, 5, (8,), generator=generator)


def _ours(model: nn.Module, strategy: str = "loop", **options):
    x, y = _data()
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9),
        "mokd",
        strategy=strategy,
        **options,
    )

    def step() -> None:
        logits, losses = _losses(model, x, y)
        opt.zero_grad()
        opt.backward(losses, features=logits if strategy == "representation" else None)
        opt.step()

    return step


def _floor(model: nn.Module):
    """Two backward passes and the plain step: what an exact strategy cannot avoid."""
    x, y = _data()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    params = list(model.parameters())

    def step() -> None:
        _, losses = _losses(model, x, y)
        torch.autograd.grad(losses["task"], params, retain_graph=True)
        opt.zero_grad()
        (0.5 * losses["task"] + 0.5 * losses["kd"]).backward()
        opt.step()

    return step


def _cost(step) -> StepCost:
    step()
    step()  # lazy state (momentum buffers) is not part of the per-step cost
    return step_cost(step)


def test_step_cost_counts_ops_and_host_reads() -> None:
    a = torch.arange(3.0)
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def step() -> None:
        b = a + 1
        b.sum().item()
        bool(b.sum() > 0)
        b.tolist()

    cost = step_cost(step)
    assert cost.host_syncs == 3
    assert cost.ops["aten::add"] == 1 and cost.ops["aten::sum"] == 2
    assert cost.tensor_ops == sum(cost.ops.values())
    assert cost.kernel_launches is None  # no CUDA activity on the CPU
    assert cost.seconds > 0
    assert "tensor ops" in str(cost) and "3 host syncs" in str(cost)
    # The reading methods are restored afterwards, also when the step raises.
    assert all(getattr(torch.Tensor, name) is saved[name] for name in HOST_READS)
    with pytest.raises(RuntimeError, match="boom"):
        step_cost(lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert all(getattr(torch.Tensor, name) is saved[name] for name in HOST_READS)


@pytest.mark.parametrize(
    ("strategy", "validate", "syncs"),
    [
        ("loop", False, 0),
        ("loop", True, 2),
        ("representation", False, 0),
        ("representation", True, 3),
    ],
)
def test_host_syncs_per_step(strategy: str, validate: bool, syncs: int) -> None:
    """validate=False: no host synchronisation; validate=True: one for the losses, one for the
    gradients (read off the Gram diagonal; the representation strategy checks the gradients at
    the features and the written ``.grad`` separately)."""
    torch.manual_seed(0)
    cost = _cost(_ours(_mlp(2), strategy, validate=validate))
    assert cost.host_syncs == syncs


@pytest.mark.parametrize("width", [16, 300])
def test_extra_ops_are_a_constant_plus_three_per_large_tensor(width: int) -> None:
    """K = 2, default mokd, loop strategy: the ops beyond the floor's two backward passes are at
    most OPS_CONSTANT plus OPS_PER_LARGE_TENSOR per tensor above PACK_MAX_NUMEL elements (width
    300: every 300 x 300 weight between hidden layers); small tensors (width 16: all of them)
    add none."""
    extra, large = {}, {}
    for depth in (2, 6):
        torch.manual_seed(0)
        model = _mlp(depth, width)
        large[depth] = sum(p.numel() > gradients.PACK_MAX_NUMEL for p in model.parameters())
        extra[depth] = (
            _cost(_ours(model, validate=False)).tensor_ops - _cost(_floor(model)).tensor_ops
        )
    assert extra[2] - OPS_PER_LARGE_TENSOR * large[2] <= OPS_CONSTANT, extra
    assert extra[6] - extra[2] <= OPS_PER_LARGE_TENSOR * (large[6] - large[2]), (extra, large)
    if width == 300:
        assert large[6] - large[2] == 4


def _loop_result(model: nn.Module, scale: float = 1.0) -> gradients.ObjectiveGradients:
    x, y = _data()
    _, losses = _losses(model, x, y)
    params = list(model.parameters())
    return gradients.loop_gradients(
        [scale * losses["task"], losses["kd"]], params, [0] * len(params)
    )


def test_fused_gram_and_combination_equal_the_per_tensor_paths() -> None:
    torch.manual_seed(0)
    model = _mlp(3)
    device = torch.device("cpu")
    result = _loop_result(model, scale=1e6)
    assert gradients._uniform_rows(result.blocks, 2) is not None  # the fused path applies
    fused = gradients.gram_matrix(result.blocks, result.groups, 1, 2, device)
    # Two groups take the per-tensor path; everything is in group 0.
    unfused = gradients.gram_matrix(result.blocks, result.groups, 2, 2, device)[:1]
    assert fused.dtype == torch.float64
    reference = torch.stack(
        [torch.cat([row.reshape(-1).double() for row in rows]) for rows in zip(*result.blocks)]
    )
    # Every tensor is small here: packed into float64 buffers, float64 products.
    torch.testing.assert_close(fused[0], reference @ reference.T, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(unfused[0], reference @ reference.T, rtol=1e-6, atol=0.0)
    weights = torch.tensor([[0.3, 1.7]], dtype=torch.float64)
    expected = [
        (w[0] * b[0].double() + w[1] * b[1].double()) for w in weights for b in result.blocks
    ]
    stacked = result.with_tensors([t.clone() for t in result.tensors()])
    stacked.blocks = [gradients.stacked_block(b, p) for b, p in zip(stacked.blocks, stacked.params)]
    per_tensor = [g for _, g in gradients.combine(stacked, weights)]
    combined = [g for _, g in gradients.combine(result, weights)]
    for got, other, want in zip(combined, per_tensor, expected):
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(got, other, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_fused_gram_with_large_and_small_tensors(k: int) -> None:
    """Tensors above PACK_MAX_NUMEL get their own dot products (float32 products, float64
    sums, as before); the small ones share one float64 buffer per objective."""
    torch.manual_seed(0)
    big = gradients.PACK_MAX_NUMEL + 1
    shapes = [(big,), (4, 3), (5,), (2, big // 2 + 1), (7, 1, 1), (3,), (2, 2), (6,)]
    assert gradients._packing_pays(6, k)  # the six small ones are packed
    rows = [[torch.randn(shape) * 10.0 ** (3 * i - 4) for shape in shapes] for i in range(k)]
    blocks = [list(per_tensor) for per_tensor in zip(*rows)]
    cpu = torch.device("cpu")
    fused = gradients.gram_matrix(blocks, [0] * len(shapes), 1, k, cpu)[0]
    unfused = gradients.gram_matrix(blocks, [0] * len(shapes), 2, k, cpu)[0]
    flat = torch.stack([torch.cat([t.reshape(-1).double() for t in per]) for per in rows])
    reference = flat @ flat.T
    assert torch.equal(fused, fused.T)
    scale = reference.diagonal().sqrt()
    for gram in (fused, unfused):
        error = (gram - reference).abs() / (scale[:, None] * scale[None, :])
        assert float(error.max()) < 1e-6


def test_folded_check_still_names_the_objective_with_a_non_finite_gradient() -> None:
    torch.manual_seed(0)
    model = _mlp(2)
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=1e-3), "mokd")
    x, y = _data()
    _, losses = _losses(model, x, y)
    poisoned = losses["kd"] + 0.0 * torch.sqrt(model[0].weight.abs() - model[0].weight.abs()).sum()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ObjectiveError, match="'kd'.*not finite"):
        opt.backward({"task": losses["task"], "kd": poisoned})
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_folded_check_lets_a_finite_gradient_with_an_overflowing_norm_through() -> None:
    """A private gradient whose euclidean norm overflows float32 but whose entries are finite
    reads non-finite in the fused norm; the exact search then finds nothing, as before."""
    torch.manual_seed(0)
    trunk = nn.Linear(4, 4)
    head = nn.Linear(4, 1)
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD([*trunk.parameters(), *head.parameters()], lr=0.0), "mokd"
    )
    x = torch.randn(3, 4)
    z = trunk(x)
    private = (head(z.detach()) * 1e30).sum() ** 0 * (head.weight * 1e25).sum().abs() + 1.0
    stats = opt.backward({"task": z.square().mean() + 1.0, "head": private})
    assert torch.isfinite(head.weight.grad).all()
    assert not torch.isfinite(torch.linalg.vector_norm(head.weight.grad))
    assert torch.isfinite(stats.weights).all()
