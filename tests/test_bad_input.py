"""Bad input raises a clear error naming the objective, and changes nothing."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mokd_optim import MultiObjectiveOptimizer, ObjectiveError
from tests.models import TwoHeadMLP


def _setup(method: str = "mokd", **options):
    torch.manual_seed(0)
    model = TwoHeadMLP()
    x, y, target = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,)), torch.randn(16, 48)
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), method, **options
    )
    # One real step so that momentum buffers exist, then leave gradients in place.
    logits, projected, _ = model(x)
    opt.backward({"task": F.cross_entropy(logits, y), "kd": F.mse_loss(projected, target)})
    opt.step()
    logits, projected, features = model(x)
    opt.backward({"task": F.cross_entropy(logits, y), "kd": F.mse_loss(projected, target)})
    logits, projected, features = model(x)
    return model, opt, logits, projected, features, y, target


def _snapshot(model, opt):
    return (
        [p.detach().clone() for p in model.parameters()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        copy.deepcopy(opt.state_dict()),
    )


def _assert_unchanged(before, after) -> None:
    for a, b in zip(before[0], after[0]):
        assert torch.equal(a, b)
    for a, b in zip(before[1], after[1]):
        assert (a is None and b is None) or torch.equal(a, b)
    state_a, state_b = before[2]["optimizer"]["state"], after[2]["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key]["momentum_buffer"], state_b[key]["momentum_buffer"])


def _bad_losses(case: str, logits, projected, features, y, target):
    task = F.cross_entropy(logits, y)
    kd = F.mse_loss(projected, target)
    if case == "non_scalar":
        return (
            {"task": task, "kd": F.mse_loss(projected, target, reduction="none").mean(1)},
            "kd",
            "scalar",
        )
    if case == "nan":
        return {"task": task * float("nan"), "kd": kd}, "task", "not finite"
    if case == "inf":
        return {"task": task, "kd": kd + float("inf")}, "kd", "not finite"
    if case == "no_grad":
        return {"task": task, "kd": kd.detach()}, "kd", "does not require grad"
    if case == "foreign":
        other = torch.nn.Linear(48, 1)
        return {"task": task, "kd": other(target).pow(2).mean()}, "kd", "reaches no parameter"
    if case == "zero":
        return {"task": task, "kd": kd * 0.0}, "kd", "needs a loss > 0"
    if case == "negative":
        return {"task": task, "kd": -kd}, "kd", "needs a loss > 0"
    if case == "integer":
        return {"task": task, "kd": torch.tensor(3)}, "kd", "floating point"
    raise AssertionError(case)


CASES = ["non_scalar", "nan", "inf", "no_grad", "foreign", "zero", "negative", "integer"]


@pytest.mark.parametrize("strategy", ["loop", "vmap", "representation"])
@pytest.mark.parametrize("case", CASES)
def test_bad_loss_raises_and_changes_nothing(case: str, strategy: str) -> None:
    model, opt, logits, projected, features, y, target = _setup(
        strategy=strategy if strategy != "representation" else "auto"
    )
    losses, culprit, message = _bad_losses(case, logits, projected, features, y, target)
    before = _snapshot(model, opt)
    kwargs = {"features": features} if strategy == "representation" else {}
    with pytest.raises(ObjectiveError, match=message) as info:
        opt.backward(losses, **kwargs)
    assert info.value.objective == culprit
    assert repr(culprit) in str(info.value)
    _assert_unchanged(before, _snapshot(model, opt))


@pytest.mark.parametrize("case", ["nan", "no_grad", "foreign", "non_scalar"])
def test_bad_loss_single_backward_methods(case: str) -> None:
    model, opt, logits, projected, features, y, target = _setup("weighted", weights=[1.0, 0.5])
    losses, _culprit, message = _bad_losses(case, logits, projected, features, y, target)
    before = _snapshot(model, opt)
    with pytest.raises(ObjectiveError, match=message):
        opt.backward(losses)
    _assert_unchanged(before, _snapshot(model, opt))


def test_negative_losses_are_fine_for_methods_without_logs() -> None:
    _model, opt, logits, projected, _features, y, target = _setup("mgda")
    stats = opt.backward({"task": F.cross_entropy(logits, y), "kd": -F.mse_loss(projected, target)})
    assert torch.isfinite(stats.weights).all()


def test_loss_not_depending_on_features_is_named() -> None:
    model, opt, logits, _projected, features, y, _target = _setup()
    before = _snapshot(model, opt)
    unrelated = torch.nn.Parameter(torch.ones(3))
    opt.add_param_group({"params": [unrelated]})
    before = _snapshot(model, opt)
    with pytest.raises(
        ObjectiveError, match="does not depend on the tensors passed as features"
    ) as info:
        opt.backward(
            {"task": F.cross_entropy(logits, y), "aux": unrelated.pow(2).sum()}, features=features
        )
    assert info.value.objective == "aux"
    _assert_unchanged(before, _snapshot(model, opt))


def test_mixed_devices_and_empty_and_container_errors() -> None:
    model, opt, logits, projected, _features, y, target = _setup()
    before = _snapshot(model, opt)
    meta_loss = torch.zeros((), device="meta", requires_grad=True)
    with pytest.raises(ValueError, match="different devices"):
        opt.backward({"task": F.cross_entropy(logits, y), "kd": meta_loss})
    with pytest.raises(ValueError, match="empty"):
        opt.backward({})
    with pytest.raises(TypeError, match="not a single tensor"):
        opt.backward(F.cross_entropy(logits, y))
    with pytest.raises(ValueError, match="representation' strategy needs"):
        MultiObjectiveOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), strategy="representation"
        ).backward({"task": F.cross_entropy(logits, y), "kd": F.mse_loss(projected, target)})
    with pytest.raises(ValueError, match=r"weights given for \['distill'\]"):
        MultiObjectiveOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), "weighted", weights={"distill": 2.0}
        ).backward({"task": F.cross_entropy(logits, y), "kd": F.mse_loss(projected, target)})
    _assert_unchanged(before, _snapshot(model, opt))


def test_constructor_errors() -> None:
    model = TwoHeadMLP()
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="unknown method 'mokdd'; available: .*mokd"):
        MultiObjectiveOptimizer(base, "mokdd")
    with pytest.raises(ValueError, match="unknown strategy"):
        MultiObjectiveOptimizer(base, strategy="fast")
    with pytest.raises(ValueError, match="unknown balance mode"):
        MultiObjectiveOptimizer(base, balance="layer")
    with pytest.raises(ValueError, match="max_norm must be positive"):
        MultiObjectiveOptimizer(base, max_norm=0.0)
    with pytest.raises(ValueError, match="cannot run with the 'amortized' strategy"):
        MultiObjectiveOptimizer(base, "mokd", strategy="amortized")
    with pytest.raises(TypeError, match="must be a torch.optim.Optimizer"):
        MultiObjectiveOptimizer(model, "mokd")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="already a MultiObjectiveOptimizer"):
        MultiObjectiveOptimizer(MultiObjectiveOptimizer(base))
    with pytest.raises(TypeError, match="method 'mokd'"):
        MultiObjectiveOptimizer(base, "mokd", stepsize="anchor")
