"""Mixed precision: torch.autocast (fp16, bf16) and torch.amp.GradScaler on CPU."""

from __future__ import annotations

import copy

import pytest
import torch

from mokd_optim import MultiObjectiveOptimizer, ObjectiveError
from tests.helpers import forbid_host_sync
from tests.models import TwoHeadMLP, two_head_losses

STRATEGIES = ["loop", "vmap", "representation"]


def _train(model, opt, scaler, steps, *, strategy="loop", dtype=None, start=0):
    stats = None
    for step in range(start, start + steps):
        losses, features = two_head_losses(model, step, dtype)
        opt.zero_grad()
        stats = opt.backward(losses, features=features if strategy == "representation" else None)
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
    return stats


def _make(strategy="loop", scaler=None, method="mokd", optimizer="sgd", **options):
    torch.manual_seed(0)
    model = TwoHeadMLP()
    if optimizer == "sgd":
        base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        base = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, MultiObjectiveOptimizer(base, method, strategy=strategy, scaler=scaler, **options)


def _relative_distance(a, b, start) -> float:
    """||a - b|| / ||b - start|| over all parameters: the difference relative to the update."""
    num = torch.sqrt(sum(((p.detach() - q.detach()) ** 2).sum() for p, q in zip(a, b)))
    den = torch.sqrt(sum(((q.detach() - s) ** 2).sum() for q, s in zip(b, start)))
    return float(num / den)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_scaler_without_autocast_is_bit_identical_to_no_scaler(strategy: str) -> None:
    """The loss scale is a power of two: scaling the losses, unscaling the per-objective
    gradients and re-applying the scale to the written update are exact in floating point."""
    model, opt = _make(strategy)
    _train(model, opt, None, 3, strategy=strategy)
    scaled_model, scaled_opt = _make(strategy, scaler=torch.amp.GradScaler("cpu"))
    _train(scaled_model, scaled_opt, scaled_opt.scaler, 3, strategy=strategy)
    for a, b in zip(model.parameters(), scaled_model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_forced_overflow_skips_the_step_and_changes_nothing(strategy: str) -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    model, opt = _make(strategy, scaler=scaler, optimizer="adamw")
    _train(model, opt, scaler, 1, strategy=strategy, dtype=torch.float16)
    assert scaler.get_scale() == 2.0**10 and len(opt.state) == len(list(model.parameters()))
    params = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    scaler.update(new_scale=2.0**40)  # fp16 activation gradients overflow at this scale
    losses, features = two_head_losses(model, 1, torch.float16)
    opt.zero_grad()
    stats = opt.backward(losses, features=features if strategy == "representation" else None)
    assert not torch.isfinite(stats.gram).all()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**39
    for a, b in zip(params, model.parameters()):
        assert torch.equal(a, b)
    after = opt.state_dict()
    for key, value in state["optimizer"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(
                torch.as_tensor(tensor), torch.as_tensor(after["optimizer"]["state"][key][name])
            )
    # Training goes on at a workable scale.
    scaler.update(new_scale=2.0**10)
    _train(model, opt, scaler, 1, strategy=strategy, dtype=torch.float16, start=2)
    assert any(not torch.equal(a, b) for a, b in zip(params, model.parameters()))


@pytest.mark.parametrize(
    ("method", "bad"), [("mokd", "nan"), ("mokd", "-inf"), ("mgda", "nan"), ("mgda", "inf")]
)
def test_non_finite_loss_under_amp_skips_instead_of_raising(method: str, bad: str) -> None:
    scaler = torch.amp.GradScaler("cpu")
    model, opt = _make(scaler=scaler, method=method)
    params = [p.detach().clone() for p in model.parameters()]
    losses, _ = two_head_losses(model, 0, torch.float16)
    # Adding a non-finite constant leaves every gradient finite: only the loss value is bad.
    losses["kd"] = losses["kd"] + torch.tensor(float(bad))
    opt.zero_grad()
    opt.backward(losses)
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**15
    for a, b in zip(params, model.parameters()):
        assert torch.equal(a, b)
    # Without a scaler the same loss is refused up front.
    plain_model, plain_opt = _make(method=method)
    losses, _ = two_head_losses(plain_model, 0)
    losses["kd"] = losses["kd"] + torch.tensor(float("nan"))
    with pytest.raises(ObjectiveError, match="not finite"):
        plain_opt.backward(losses)


def test_bf16_autocast_matches_fp32() -> None:
    """bfloat16 keeps 8 significand bits (relative rounding 2^-9 = 0.2%); after 5 SGD steps
    the parameters differ from the fp32 run by under 2% of the distance travelled (observed
    0.4%)."""
    model, opt = _make()
    start = [p.detach().clone() for p in model.parameters()]
    _train(model, opt, None, 5)
    bf16_model, bf16_opt = _make()
    stats = _train(bf16_model, bf16_opt, None, 5, dtype=torch.bfloat16)
    assert torch.isfinite(stats.weights).all() and torch.isfinite(stats.gram).all()
    assert all(torch.isfinite(p).all() for p in bf16_model.parameters())
    assert _relative_distance(list(bf16_model.parameters()), list(model.parameters()), start) < 0.02


@pytest.mark.parametrize("strategy", ["loop", "representation"])
def test_fp16_with_grad_scaler_matches_fp32(strategy: str) -> None:
    """float16 keeps 11 significand bits (relative rounding 2^-12); after 5 steps the
    parameters differ from fp32 by under 0.5% of the distance travelled (observed 0.05%)."""
    model, opt = _make(strategy)
    start = [p.detach().clone() for p in model.parameters()]
    _train(model, opt, None, 5, strategy=strategy)
    scaler = torch.amp.GradScaler("cpu")
    fp16_model, fp16_opt = _make(strategy, scaler=scaler)
    _train(fp16_model, fp16_opt, scaler, 5, strategy=strategy, dtype=torch.float16)
    assert scaler.get_scale() == 2.0**16  # no step was skipped
    assert (
        _relative_distance(list(fp16_model.parameters()), list(model.parameters()), start) < 0.005
    )


def test_max_norm_clips_the_unscaled_gradient() -> None:
    scaler = torch.amp.GradScaler("cpu")
    model = TwoHeadMLP()
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.0), "mokd", max_norm=1e-3, scaler=scaler
    )
    losses, _ = two_head_losses(model, 0, torch.float16)
    opt.backward(losses)
    scaler.step(opt)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert float(total) == pytest.approx(1e-3, rel=1e-4)


def test_amp_backward_reads_nothing_on_the_host() -> None:
    scaler = torch.amp.GradScaler("cpu")
    model, opt = _make(scaler=scaler, validate=False)
    losses, _ = two_head_losses(model, 0, torch.float16)
    with forbid_host_sync():
        opt.backward(losses)
    scaler.step(opt)
    scaler.update()


def test_scaler_type_is_checked() -> None:
    model = TwoHeadMLP()
    with pytest.raises(TypeError, match="GradScaler"):
        MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), scaler=object())


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("famo", {"observe": "next_batch"}),
        ("sum", {}),
        ("mokd-amortized", {"observe": "next_batch"}),
    ],
)
def test_amortized_strategy_applies_the_loss_scale_once(method: str, options: dict) -> None:
    """Regression: the amortized strategy multiplied the already scaled losses by the scale
    again, so the update after ``unscale_`` was ``scale`` (65536) times too large in float32
    and every float16 step overflowed and was skipped."""
    model, opt = _make("amortized", method=method, **options)
    _train(model, opt, None, 3)
    scaled_model, scaled_opt = _make(
        "amortized", scaler=torch.amp.GradScaler("cpu"), method=method, **options
    )
    _train(scaled_model, scaled_opt, scaled_opt.scaler, 3)
    for a, b in zip(model.parameters(), scaled_model.parameters()):
        assert torch.equal(a, b)
