"""``loss.backward(); opt.step()`` on the wrapper (forgetting ``opt.backward``) trains plainly and
balances nothing: ``step()`` warns once, with the fix, and stays silent on correct loops."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from mokd_optim import MultiObjectiveOptimizer


def _setup() -> tuple[torch.nn.Module, MultiObjectiveOptimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), "mokd")
    return model, opt, torch.randn(16, 6), torch.randint(0, 3, (16,))


def _losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    logits = model(x)
    return {"task": F.cross_entropy(logits, y), "aux": logits.pow(2).mean() + 0.1}


def test_plain_backward_then_step_warns_once_with_the_fix() -> None:
    model, opt, x, y = _setup()
    with pytest.warns(UserWarning, match=r"no backward\(losses\) since the last step") as record:
        for _ in range(3):
            opt.zero_grad()
            sum(_losses(model, x, y).values()).backward()
            opt.step()
    bypass = [w for w in record if "nothing is balanced" in str(w.message)]
    assert len(bypass) == 1
    assert "opt.backward(" in str(bypass[0].message) and "'mokd'" in str(bypass[0].message)
    assert bypass[0].filename == __file__  # points at the user's opt.step() line


def test_correct_loops_do_not_warn() -> None:
    model, opt, x, y = _setup()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            opt.zero_grad()
            opt.backward(_losses(model, x, y))
            opt.step()
        opt.zero_grad()
        opt.step()  # nothing to apply: no gradient, no warning
        # gradient accumulation: two micro-batches, one step
        opt.zero_grad()
        opt.backward(_losses(model, x[:8], y[:8]), accumulate=True)
        opt.backward(_losses(model, x[8:], y[8:]))
        opt.step()
        # GradScaler (disabled on CPU here, the same call sequence as fp16 training)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        opt.zero_grad()
        opt.backward(_losses(model, x, y))
        scaler.step(opt)
        scaler.update()


def test_warns_after_a_correct_step_too() -> None:
    """The check is per step: a correct step does not excuse a later plain one."""
    model, opt, x, y = _setup()
    opt.zero_grad()
    opt.backward(_losses(model, x, y))
    opt.step()
    opt.zero_grad()
    _losses(model, x, y)["task"].backward()
    with pytest.warns(UserWarning, match="nothing is balanced"):
        opt.step()
