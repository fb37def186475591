"""The Accelerate training loop used by tests/test_accelerate.py and tests/accelerate_worker.py
(not a test module itself)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from mokd_optim.integrations.accelerate import balanced_backward, unwrap_optimizer
from tests._framework_support import loader, losses_and_features, new_model, new_optimizer


@dataclass
class Run:
    """What an Accelerate run leaves: the prepared objects, weights and optimizer steps."""

    model: Any
    optimizer: Any
    scheduler: Any
    weights: list[torch.Tensor] = field(default_factory=list)
    steps: int = 0
    skipped: int = 0

    def params(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.model.parameters()]


def prepare(
    accelerator: Any,
    *,
    method: str = "mokd",
    scheduler_step_size: Optional[int] = None,
    **options: Any,
) -> Run:
    model = new_model()
    opt = new_optimizer(model, method, **options)
    scheduler = (
        torch.optim.lr_scheduler.StepLR(opt, scheduler_step_size, gamma=0.5)
        if scheduler_step_size
        else None
    )
    if scheduler is None:
        model, opt = accelerator.prepare(model, opt)
    else:
        model, opt, scheduler = accelerator.prepare(model, opt, scheduler)
    return Run(model, opt, scheduler)


def train(
    accelerator: Any,
    run: Run,
    batch_size: int,
    steps: int,
    *,
    same_batch_observe: bool = False,
    representation: bool = False,
    autocast: Optional[Callable[[], Any]] = None,
) -> Run:
    """``steps`` optimizer steps of the loop in docs/frameworks.md (micro-batches of
    ``batch_size`` per process; ``accelerator.gradient_accumulation_steps`` per step)."""
    data = accelerator.prepare(loader(batch_size))
    while run.steps < steps:
        for batch in data:
            with accelerator.accumulate(run.model):
                with autocast() if autocast is not None else contextlib.nullcontext():
                    losses, shared = losses_and_features(run.model, batch)
                stats = balanced_backward(
                    accelerator,
                    run.optimizer,
                    losses,
                    features=shared if representation else None,
                )
                if same_batch_observe:
                    _step_and_observe(run, batch)
                else:
                    run.optimizer.step()
                if run.scheduler is not None:
                    run.scheduler.step()
                run.optimizer.zero_grad()
            if stats is not None:
                run.weights.append(stats.weights.detach().clone())
                run.steps += 1
                run.skipped += int(run.optimizer.step_was_skipped)
                if run.steps == steps:
                    return run
    return run


def _step_and_observe(run: Run, batch: Any) -> None:
    """Amortised methods, ``observe="same_batch"``: the losses after a step that was taken."""
    run.optimizer.step()
    if run.optimizer.gradient_state.sync_gradients and not run.optimizer.step_was_skipped:
        with torch.no_grad():
            unwrap_optimizer(run.optimizer).observe(losses_and_features(run.model, batch)[0])
