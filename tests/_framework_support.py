"""Data, losses and the plain-loop reference shared by the Lightning and Accelerate tests.

Every framework run is compared with :func:`plain_run`: the same model, seed, batches and
``MultiObjectiveOptimizer`` driven by the loop of docs/optimizer.md, in one process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mokd_optim import MultiObjectiveOptimizer
from tests.models import TwoHeadMLP, kd_kl

SAMPLES = 48
LR = 0.1


def dataset() -> TensorDataset:
    """Inputs ``(N, 1, 8, 8)``, labels, teacher logits and feature targets (fixed seed)."""
    generator = torch.Generator().manual_seed(1234)
    x = torch.rand(SAMPLES, 1, 8, 8, generator=generator)
    y = torch.randint(0, 10, (SAMPLES,), generator=generator)
    teacher = 3 * torch.randn(SAMPLES, 10, generator=generator)
    target = torch.randn(SAMPLES, 48, generator=generator)
    return TensorDataset(x, y, teacher, target)


def distributed_order(seed: int = 0, epoch: int = 0) -> torch.Tensor:
    """The sample order of ``DistributedSampler(shuffle=True, seed=seed)`` in ``epoch``: the
    sampler Lightning and Accelerate put under a training loader. Rank ``r`` of ``W`` takes
    ``order[r::W]``, so each step's shards make up ``order[i*W*B:(i+1)*W*B]``."""
    return torch.randperm(SAMPLES, generator=torch.Generator().manual_seed(seed + epoch))


def loader(batch_size: int, order: Optional[torch.Tensor] = None) -> DataLoader:
    data = dataset()
    if order is not None:
        data = TensorDataset(*(t[order] for t in data.tensors))
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def new_model() -> nn.Module:
    torch.manual_seed(0)
    return TwoHeadMLP()


def losses_and_features(
    model: nn.Module, batch: Any
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Task, logit-KD and feature losses (the feature loss alone reaches the projector), and
    the trunk's output that all three are computed from (``features=`` of the
    representation strategy)."""
    x, y, teacher, target = batch
    logits, projected, shared = model(x)
    losses = {
        "task": F.cross_entropy(logits, y),
        "kd": kd_kl(logits.float(), teacher),
        "feat": F.smooth_l1_loss(projected.float(), target),
    }
    return losses, shared


def losses_of(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
    return losses_and_features(model, batch)[0]


def batches(batch_size: int, order: Optional[torch.Tensor] = None) -> Iterator[Any]:
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader(batch_size, order)


def new_optimizer(
    model: nn.Module, method: str = "mokd", **options: Any
) -> MultiObjectiveOptimizer:
    base = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    return MultiObjectiveOptimizer(base, method, **options)


def plain_run(
    batch_size: int,
    steps: int,
    *,
    method: str = "mokd",
    accumulate: int = 1,
    same_batch_observe: bool = False,
    representation: bool = False,
    scheduler_step_size: Optional[int] = None,
    order: Optional[torch.Tensor] = None,
    **options: Any,
) -> tuple[list[torch.Tensor], list[torch.Tensor], dict[str, Any]]:
    """The reference: ``steps`` optimizer steps of micro-batches of ``batch_size``.

    Returns the final parameters, the weights of every step and the optimizer state dict.
    """
    model = new_model()
    opt = new_optimizer(model, method, **options)
    scheduler = (
        torch.optim.lr_scheduler.StepLR(opt, scheduler_step_size, gamma=0.5)
        if scheduler_step_size
        else None
    )
    weights: list[torch.Tensor] = []
    stream = batches(batch_size, order)
    for _ in range(steps):
        opt.zero_grad()
        for micro in range(accumulate):
            batch = next(stream)
            losses, shared = losses_and_features(model, batch)
            stats = opt.backward(
                losses,
                features=shared if representation else None,
                accumulate=micro < accumulate - 1,
            )
        assert stats is not None
        weights.append(stats.weights.detach().clone())
        if same_batch_observe:
            opt.step(lambda batch=batch: losses_of(model, batch))
        else:
            opt.step()
        if scheduler is not None:
            scheduler.step()
    return [p.detach().clone() for p in model.parameters()], weights, opt.state_dict()


def max_difference(first: list[torch.Tensor], second: list[torch.Tensor]) -> float:
    return max(float((a.double() - b.double()).abs().max()) for a, b in zip(first, second))


def distance_travelled(params: list[torch.Tensor]) -> float:
    """Largest parameter change from the initial model (to size tolerances)."""
    return max_difference(params, [p.detach() for p in new_model().parameters()])


def save_and_leave(results: dict[str, Any], path: Path) -> None:
    """A two-process worker's last act: wait for the other rank, write ``results`` to ``path``
    and end the process with exit status 0 without the interpreter's shutdown.

    Twice in CI a worker aborted *after* its work, in shutdown ("terminate called without an
    active exception", SIGABRT): the Lightning worker with the gloo group left alive (Lightning
    destroys it at exit only for nccl), the Accelerate one after ``end_training()`` had
    destroyed it -- c10d's threads and store do not always come down cleanly on CPU. Neither
    ever reproduced alone (14 runs here). What the tests check is written by then, so the
    worker leaves with ``os._exit`` and skips that teardown, whose failures are torch's, not
    the library's. The examples, which users copy, tear the group down the documented way."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # both ranks have finished every collective before either leaves
    torch.save(results, path)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
