"""The torch.optim contract: param_groups/state/defaults, schedulers, state_dict round trips."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

from mokd_optim import MultiObjectiveOptimizer
from tests.models import TwoHeadMLP


def _batch(step: int):
    generator = torch.Generator().manual_seed(step)
    return (
        torch.rand(16, 1, 8, 8, generator=generator),
        torch.randint(0, 10, (16,), generator=generator),
        torch.randn(16, 48, generator=generator),
    )


def _train(model, opt, scheduler, steps: range) -> list[torch.Tensor]:
    weights = []
    for step in steps:
        x, y, target = _batch(step)
        logits, projected, _ = model(x)
        opt.zero_grad()
        stats = opt.backward(
            {"task": F.cross_entropy(logits, y), "kd": F.mse_loss(projected, target)}
        )
        opt.step()
        scheduler.step()
        weights.append(stats.weights)
    return weights


def _make(method: str = "mokd", **options):
    torch.manual_seed(0)
    model = TwoHeadMLP()
    base = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    opt = MultiObjectiveOptimizer(base, method, max_norm=5.0, **options)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-2, total_steps=20)
    return model, opt, scheduler


def test_shares_groups_state_and_defaults_with_the_base() -> None:
    _model, opt, _ = _make()
    assert opt.param_groups is opt.optimizer.param_groups
    assert opt.state is opt.optimizer.state
    assert opt.defaults is opt.optimizer.defaults
    extra = torch.nn.Parameter(torch.zeros(3))
    opt.add_param_group({"params": [extra], "lr": 0.5})
    assert opt.optimizer.param_groups[-1]["params"] == [extra]
    assert "MoKD(step='capped-log-anchor'" in repr(opt) and "AdamW" in repr(opt)


@pytest.mark.parametrize(
    "scheduler_factory",
    [
        lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
        lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4),
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 / (epoch + 1)),
    ],
)
def test_schedulers_drive_the_wrapped_learning_rate(scheduler_factory) -> None:
    model = TwoHeadMLP()
    base = torch.optim.SGD(model.parameters(), lr=1.0)
    opt = MultiObjectiveOptimizer(base, "mokd")
    scheduler = scheduler_factory(opt)
    reference_base = torch.optim.SGD(TwoHeadMLP().parameters(), lr=1.0)
    reference = scheduler_factory(reference_base)
    for _ in range(4):
        x, y, target = _batch(0)
        logits, projected, _ = model(x)
        opt.zero_grad()
        opt.backward({"task": F.cross_entropy(logits, y), "kd": F.mse_loss(projected, target)})
        opt.step()
        scheduler.step()
        reference_base.step()
        reference.step()
        assert base.param_groups[0]["lr"] == pytest.approx(reference_base.param_groups[0]["lr"])
    assert scheduler.get_last_lr() == pytest.approx(reference.get_last_lr())


def test_reduce_on_plateau_and_step_hooks() -> None:
    model = TwoHeadMLP()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=1.0), "sum")
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.1)
    calls = []
    opt.register_step_post_hook(lambda optimizer, args, kwargs: calls.append(optimizer))
    x, y, target = _batch(0)
    logits, projected, _ = model(x)
    opt.backward({"task": F.cross_entropy(logits, y), "kd": F.mse_loss(projected, target)})
    opt.step()
    plateau.step(1.0)
    plateau.step(2.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert calls == [opt]


def test_state_dict_round_trip_resumes_identically(tmp_path) -> None:
    model, opt, scheduler = _make()
    uninterrupted = _train(model, opt, scheduler, range(12))
    final = [p.detach().clone() for p in model.parameters()]

    model, opt, scheduler = _make()
    _train(model, opt, scheduler, range(6))
    path = tmp_path / "checkpoint.pt"
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": scheduler.state_dict()},
        path,
    )

    resumed_model, resumed_opt, resumed_scheduler = _make()
    checkpoint = torch.load(path, weights_only=True)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["opt"])
    resumed_scheduler.load_state_dict(checkpoint["sched"])
    resumed = _train(resumed_model, resumed_opt, resumed_scheduler, range(6, 12))
    for a, b in zip(final, resumed_model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(uninterrupted[6:], resumed):
        assert torch.equal(a, b)


def test_state_dict_contents_and_errors() -> None:
    model, opt, scheduler = _make()
    _train(model, opt, scheduler, range(2))
    state = opt.state_dict()
    assert state["format"] == 1 and state["balance"] == "global"
    # the default mokd's one piece of state: the moving average of its agreement share
    assert set(state["methods"][0]) == {"agreement_average", "agreement_count"}
    assert state["methods"][0]["agreement_count"] == 2
    assert len(state["optimizer"]["state"]) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="not a MultiObjectiveOptimizer state dict"):
        opt.load_state_dict(opt.optimizer.state_dict())
    bad = copy.deepcopy(state)
    bad["balance"] = "per_group"
    with pytest.raises(ValueError, match="saved with balance='per_group'"):
        opt.load_state_dict(bad)


def test_max_norm_clips_the_total_gradient() -> None:
    model = TwoHeadMLP()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), "sum", max_norm=1e-3)
    x, y, target = _batch(0)
    logits, projected, _ = model(x)
    opt.backward({"task": F.cross_entropy(logits, y), "kd": F.mse_loss(projected, target)})
    assert torch.norm(torch.stack([p.grad.norm() for p in model.parameters()])) > 1e-2
    opt.step()
    total = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert float(total) == pytest.approx(1e-3, rel=1e-4)


def test_zero_grad_and_pickle() -> None:
    model = TwoHeadMLP()
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), "mokd")
    x, y, target = _batch(0)
    logits, projected, _ = model(x)
    opt.backward({"task": F.cross_entropy(logits, y), "kd": F.mse_loss(projected, target)})
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    clone = pickle.loads(pickle.dumps(opt))
    assert isinstance(clone, MultiObjectiveOptimizer) and clone.method.name == "mokd"
    assert len(clone.param_groups[0]["params"]) == len(list(model.parameters()))
