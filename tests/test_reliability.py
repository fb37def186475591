"""Holes found by an adversarial probe (issue 12): non-finite gradients on parameters reached
by one objective, expanded gradients written as ``.grad``, accumulation windows kept on errors,
one objective, float64 overflow in the Gram matrix, meta-device losses and sparse gradients."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mokd_optim import MultiObjectiveOptimizer, ObjectiveError
from tests.models import TwoHeadMLP


def _data(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.rand(16, 1, 8, 8, generator=generator),
        torch.randint(0, 10, (16,), generator=generator),
        torch.randn(16, 48, generator=generator),
    )


def _losses(model: TwoHeadMLP, data, *, poison: bool = False):
    """Task and KD losses; ``poison`` adds ``sqrt(b - b.detach())`` on the projector's bias
    (reached by the KD loss only): the value is an exact 0, its gradient is inf."""
    x, y, target = data
    logits, projected, features = model(x)
    kd = F.mse_loss(projected, target)
    if poison:
        bias = model.projector.bias[0]
        kd = kd + torch.sqrt(bias - bias.detach())
    return {"task": F.cross_entropy(logits, y), "kd": kd}, features


def _snapshot(model, opt):
    state = copy.deepcopy(opt.state_dict())
    return (
        [p.detach().clone() for p in model.parameters()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        state,
    )


def _assert_same(before, after) -> None:
    for a, b in zip(before[0], after[0]):
        assert torch.equal(a, b)
    for a, b in zip(before[1], after[1]):
        assert (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
    assert _flatten(before[2]) == _flatten(after[2])


def _flatten(state) -> list:
    """A comparable list of every value in a (nested) state dict."""
    if isinstance(state, dict):
        return [(k, _flatten(v)) for k, v in state.items()]
    if isinstance(state, (list, tuple)):
        return [_flatten(v) for v in state]
    if isinstance(state, torch.Tensor):
        return [state.dtype, tuple(state.shape), state.tolist()]
    return [state]


SETUPS = {
    "loop": ("mokd", {"strategy": "loop"}),
    "vmap": ("mokd", {"strategy": "vmap"}),
    "representation": ("mokd", {"strategy": "representation"}),
    "amortized-famo": ("famo", {"observe": "next_batch"}),
    "amortized-weighted": ("weighted", {"weights": [1.0, 0.5]}),
    "per-group": ("mgda", {"balance": "per_group"}),
}


def _make(setup: str, *, grads_present: bool = True):
    method, options = SETUPS[setup]
    torch.manual_seed(0)
    model = TwoHeadMLP()
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), method, **options
    )
    features_kw = setup == "representation"
    for step in range(2):  # momentum buffers and method state exist
        losses, features = _losses(model, _data(step))
        opt.zero_grad()
        opt.backward(losses, **({"features": features} if features_kw else {}))
        opt.step()
    if grads_present:
        losses, features = _losses(model, _data(5))
        opt.backward(losses, **({"features": features} if features_kw else {}))
    return model, opt


@pytest.mark.parametrize("grads_present", [True, False])
@pytest.mark.parametrize("setup", list(SETUPS))
def test_inf_gradient_on_a_private_parameter_is_refused(setup: str, grads_present: bool) -> None:
    model, opt = _make(setup, grads_present=grads_present)
    if not grads_present:
        opt.zero_grad()
    losses, features = _losses(model, _data(7), poison=True)
    assert all(torch.isfinite(loss) for loss in losses.values())
    before = _snapshot(model, opt)
    kwargs = {"features": features} if setup == "representation" else {}
    with pytest.raises(ObjectiveError, match="gradient is not finite") as info:
        opt.backward(losses, **kwargs)
    assert info.value.objective == "kd"
    _assert_same(before, _snapshot(model, opt))


@pytest.mark.parametrize("setup", ["loop", "vmap", "amortized-famo", "amortized-weighted"])
def test_bad_micro_batch_is_refused_and_the_window_kept(setup: str) -> None:
    """The bad micro-batch itself raises; the window is as it was, so closing it with a clean
    micro-batch gives exactly the update of the two clean micro-batches."""
    results = []
    for with_bad in (False, True):
        model, opt = _make(setup)
        opt.zero_grad()
        opt.backward(_losses(model, _data(10))[0], accumulate=True)
        if with_bad:
            before = _snapshot(model, opt)
            with pytest.raises(ObjectiveError, match="gradient is not finite") as info:
                opt.backward(_losses(model, _data(11), poison=True)[0], accumulate=True)
            assert info.value.objective == "kd"
            assert opt.accumulating
            _assert_same(before, _snapshot(model, opt))
        stats = opt.backward(_losses(model, _data(12))[0])
        results.append(([p.grad.clone() for p in model.parameters()], stats.weights.clone()))
    (grads_a, weights_a), (grads_b, weights_b) = results
    assert torch.equal(weights_a, weights_b)
    for a, b in zip(grads_a, grads_b):
        assert torch.equal(a, b)


def test_bad_closing_micro_batch_keeps_the_window() -> None:
    model, opt = _make("loop")
    opt.zero_grad()
    opt.backward(_losses(model, _data(10))[0], accumulate=True)
    window = opt._window
    with pytest.raises(ObjectiveError, match="gradient is not finite"):
        opt.backward(_losses(model, _data(11), poison=True)[0])
    assert opt.accumulating and opt._window is window
    assert all(p.grad is None for p in model.parameters())


# Expanded (stride-0) gradients ----------------------------------------------------------


class GainModel(nn.Module):
    """A shared trunk and a private ``gain`` used through ``.sum()``: autograd returns its
    gradient as an expanded (stride-0) view. ``dense=True`` computes the same values through
    ``(gain * 1).sum()``, whose gradient autograd returns dense (the reference)."""

    def __init__(self, dense: bool = False) -> None:
        super().__init__()
        self.trunk = nn.Linear(6, 4)
        self.head = nn.Linear(4, 3)
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 5))
        self.dense = dense

    def losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.tanh(self.trunk(x))
        task = self.head(features).pow(2).mean()
        gain = self.gain * torch.ones(5) if self.dense else self.gain
        aux = features.sin().mean() + gain.sum()
        return {"task": task, "aux": aux}


def _optimizer_configs() -> list:
    configs = []
    for name in sorted(dir(torch.optim)):
        cls = getattr(torch.optim, name)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            continue
        # Optimizer: abstract. LBFGS: closure-only. SparseAdam: sparse gradients only.
        # Muon: 2-D parameters only.
        if name in ("Optimizer", "LBFGS", "SparseAdam", "Muon"):
            continue
        parameters = inspect.signature(cls).parameters
        variants: list[dict] = [{}]
        if "foreach" in parameters:
            variants += [{"foreach": True}, {"foreach": False}]
        if "fused" in parameters and name in ("SGD", "Adam", "AdamW", "Adagrad"):
            variants.append({"fused": True})  # the fused CPU kernels torch ships
        for variant in variants:
            label = "-".join(f"{k}={v}" for k, v in variant.items()) or "default"
            configs.append(pytest.param(name, variant, id=f"{name}-{label}"))
    return configs


def _train_gain_model(dense: bool, make_base, steps: int = 3, **options) -> GainModel:
    torch.manual_seed(0)
    model = GainModel(dense=dense)
    opt = MultiObjectiveOptimizer(make_base(model.parameters()), "mgda", **options)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        opt.zero_grad()
        opt.backward(model.losses(x))
        assert model.gain.grad.stride() == model.gain.stride()
        opt.step()
    return model


@pytest.mark.parametrize(("name", "variant"), _optimizer_configs())
def test_every_torch_optimizer_sees_a_dense_gradient(name: str, variant: dict) -> None:
    """The update is that of a dense ``.grad`` with the same values (what ``loss.backward()``
    would leave), for every optimizer of ``torch.optim`` and its foreach / fused variants."""
    cls = getattr(torch.optim, name)
    models = [
        _train_gain_model(dense, lambda params: cls(params, lr=0.1, **variant))
        for dense in (False, True)
    ]
    for a, b in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_expanded_gradient_with_clipping_and_a_second_backward() -> None:
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    models = []
    for dense in (False, True):
        torch.manual_seed(0)
        model = GainModel(dense=dense)
        opt = MultiObjectiveOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), "mgda", max_norm=0.05
        )
        opt.backward(model.losses(x))
        opt.backward(model.losses(x))  # adds, as autograd does
        opt.step()
        models.append(model)
    for a, b in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_a_gradient_autograd_returns_for_two_parameters_is_not_shared() -> None:
    """``a + b`` gives both parameters the same gradient tensor; their ``.grad`` must not alias."""
    a = nn.Parameter(torch.ones(4))
    b = nn.Parameter(torch.ones(4))
    shared = nn.Parameter(torch.ones(4))
    opt = MultiObjectiveOptimizer(torch.optim.SGD([a, b, shared], lr=0.1), "mgda")
    opt.backward({"x": ((a + b) * shared).sum(), "y": shared.pow(2).sum()})
    assert a.grad.data_ptr() != b.grad.data_ptr()
    a.grad.add_(1.0)
    assert torch.equal(b.grad, torch.ones(4))


# Option values ---------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
BAD_OPTIONS = [
    ("weighted", {"weights": [NAN, 1.0]}, "weights"),
    ("weighted", {"weights": [INF, 1.0]}, "weights"),
    ("weighted", {"weights": {"task": NAN}}, "weights"),
    ("weighted", {"weights": [-1.0, 1.0]}, "weights"),
    ("weighted", {"weights": ["1", 1.0]}, "weights"),
    ("weighted", {"weights": 2.0}, "weights"),
    ("famo", {"lr": NAN}, "lr"),
    ("famo", {"lr": "0.1"}, "lr"),
    ("famo", {"weight_decay": INF}, "weight_decay"),
    ("famo", {"eps": -1.0}, "eps"),
    ("famo", {"min_losses": [NAN, 0.0]}, "min_losses"),
    ("famo", {"observe": "later"}, "observe"),
    ("mokd-amortized", {"lr": -0.1}, "lr"),
    ("mokd-amortized", {"floor": NAN}, "floor"),
    ("mokd-amortized", {"step": "long"}, "step"),
    ("cagrad", {"c": NAN}, "c"),
    ("cagrad", {"c": "0.4"}, "c"),
    ("cagrad", {"rescale": True}, "rescale"),
    ("nash-mtl", {"tol": INF}, "tol"),
    ("nash-mtl", {"max_iter": 2.5}, "max_iter"),
    ("nash-mtl", {"update_every": 0}, "update_every"),
    ("aligned-mtl", {"rtol": NAN}, "rtol"),
    ("imtl-g", {"fix_sign": "yes"}, "fix_sign"),
    ("mgda", {"backend": "fast"}, "backend"),
    ("mokd", {"backend": "fast"}, "backend"),
    ("mokd", {"simplex": "no"}, "simplex"),
    ("pcgrad", {"seed": 1.5}, "seed"),
    ("upgrad", {"backend": 3}, "backend"),
]


@pytest.mark.parametrize(("method", "options", "option"), BAD_OPTIONS)
def test_bad_method_options_raise_value_error_naming_the_option(
    method: str, options: dict, option: str
) -> None:
    base = torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match=rf"{method}: .*{option}"):
        MultiObjectiveOptimizer(base, method, **options)


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"max_norm": "1"}, "max_norm"),
        ({"max_norm": NAN}, "max_norm"),
        ({"max_norm": INF}, "max_norm"),
        ({"max_norm": -1.0}, "max_norm"),
        ({"bucket_bytes": 1.5}, "bucket_bytes"),
        ({"validate": "yes"}, "validate"),
    ],
)
def test_bad_optimizer_options_raise_value_error_naming_the_option(
    options: dict, option: str
) -> None:
    base = torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match=option):
        MultiObjectiveOptimizer(base, **options)


def test_numpy_and_tensor_numbers_are_accepted_as_options() -> None:
    import numpy as np

    base = torch.optim.SGD([nn.Parameter(torch.ones(2))], lr=0.1)
    opt = MultiObjectiveOptimizer(
        base, "weighted", weights=[np.float32(0.5), torch.tensor(2.0)], max_norm=np.float64(1.0)
    )
    assert opt.method.fixed == (0.5, 2.0)


# Clear errors and honest statistics ------------------------------------------------------


def test_loss_on_the_meta_device_is_named() -> None:
    model = TwoHeadMLP()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    meta = torch.zeros((), device="meta", requires_grad=True)
    with pytest.raises(ObjectiveError, match="'meta' device") as info:
        opt.backward({"task": meta * 2, "kd": meta * 3})
    assert info.value.objective == "task"


class EmbeddingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 6, sparse=True)
        self.task = nn.Linear(6, 3)
        self.aux = nn.Linear(6, 2)

    def losses(self) -> dict[str, torch.Tensor]:
        features = self.embedding(torch.tensor([1, 4, 7, 4]))
        return {"task": self.task(features).pow(2).mean(), "aux": self.aux(features).exp().mean()}


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_sparse_gradients_are_refused_clearly_before_anything_changes(strategy: str) -> None:
    torch.manual_seed(0)
    model = EmbeddingModel()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), strategy=strategy)
    with pytest.raises(ObjectiveError, match="is sparse.*sparse=False") as info:
        opt.backward(model.losses())
    assert info.value.objective == "task"
    assert all(p.grad is None for p in model.parameters())


def test_sparse_gradients_work_with_the_single_backward_strategies() -> None:
    torch.manual_seed(0)
    model = EmbeddingModel()
    reference = copy.deepcopy(model)
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), "weighted", weights=[1.0, 0.5]
    )
    opt.backward(model.losses())
    assert model.embedding.weight.grad.is_sparse
    opt.step()
    losses = reference.losses()
    (losses["task"] + 0.5 * losses["aux"]).backward()
    torch.optim.SGD(reference.parameters(), lr=0.1).step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("method", ["mokd", "mgda", "nash-mtl", "upgrad"])
def test_one_objective_statistics_describe_the_written_update(method: str) -> None:
    torch.manual_seed(0)
    model = TwoHeadMLP()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), method)
    x, y, _ = _data()
    stats = opt.backward({"task": F.cross_entropy(model(x)[0], y)})
    written = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    assert stats.weights.tolist() == [1.0]
    torch.testing.assert_close(stats.combined_norm.float(), written.norm(), rtol=1e-5, atol=0)
    torch.testing.assert_close(stats.gram[0, 0].float(), written.pow(2).sum(), rtol=1e-5, atol=0)


def test_finite_gradient_whose_squared_norm_overflows_is_not_called_non_finite() -> None:
    shared = nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = MultiObjectiveOptimizer(torch.optim.SGD([shared], lr=0.1), "mgda")
    losses = {"big": (shared * 1e200).sum(), "small": shared.pow(2).sum()}
    with pytest.raises(ObjectiveError, match="finite but its squared norm overflows") as info:
        opt.backward(losses)
    assert info.value.objective == "big"
    assert shared.grad is None
