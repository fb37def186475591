"""Hugging Face Accelerate: the balanced backward in an ``Accelerator`` loop (docs/frameworks.md).

Build the :class:`~mokd_optim.MultiObjectiveOptimizer` around the base optimizer, pass it to
``accelerator.prepare`` like any optimizer, and replace ``accelerator.backward(loss)`` by
:func:`balanced_backward`::

    opt = MultiObjectiveOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), "mokd")
    model, opt, loader, scheduler = accelerator.prepare(model, opt, loader, scheduler)
    for x, y in loader:
        with accelerator.accumulate(model):
            losses = ...                                  # name -> scalar loss
            stats = balanced_backward(accelerator, opt, losses)
            opt.step()
            scheduler.step()
            opt.zero_grad()

Inside ``accelerator.accumulate`` the micro-batches that Accelerate does not synchronise join
the optimizer's accumulation window (``backward(..., accumulate=True)``: the weights are
solved once per optimizer step, from the averaged per-objective gradients), and the
``GradScaler`` of ``mixed_precision="fp16"`` is attached to the optimizer so that Accelerate's
``scaler.step`` unscales, checks and skips as usual. ``accelerate`` itself is never imported
here: the helper reads the ``Accelerator`` it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

from torch import Tensor

from mokd_optim._typing import Losses
from mokd_optim.diagnostics import StepStats
from mokd_optim.optimizer import MultiObjectiveOptimizer

__all__ = ["balanced_backward", "check_accelerator", "unwrap_optimizer"]

# Accelerate's DistributedType values that replicate the whole model on every process (DDP or
# a single process); the others shard it (FSDP, DeepSpeed, Megatron-LM) or drive their own
# backward (XLA's gradient all-reduce in the optimizer step).
_REPLICATED = ("NO",)


def check_accelerator(accelerator: Any) -> None:
    """Raise unless ``accelerator``'s setup keeps the balanced update exact.

    Supported: one process and DDP-style multi-process training (``MULTI_CPU``,
    ``MULTI_GPU`` and the other ``MULTI_*`` device types), ``mixed_precision`` ``"no"``,
    ``"bf16"`` and ``"fp16"``.

    Raises:
        NotImplementedError: DeepSpeed, FSDP, Megatron-LM (each process holds a shard of the
            parameters or runs its own backward, so per-objective gradients would be per
            shard) and XLA; ``mixed_precision="fp8"`` (Transformer Engine / MS-AMP take over
            the backward).
    """
    kind = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
    if kind not in _REPLICATED and not kind.startswith("MULTI_"):
        raise NotImplementedError(
            f"Accelerate's distributed type {kind!r} is not supported with MultiObjectiveOptimizer: it "
            "shards the parameters or runs its own backward, so the per-objective gradients would not be "
            "those of the model; use one process or DDP (accelerate launch --multi_gpu / --cpu)"
        )
    precision = str(accelerator.mixed_precision)
    if precision not in ("no", "bf16", "fp16"):
        raise NotImplementedError(
            f"mixed_precision={precision!r} is not supported with MultiObjectiveOptimizer; use 'no', "
            "'bf16' or 'fp16'"
        )


def unwrap_optimizer(optimizer: Any) -> MultiObjectiveOptimizer:
    """The :class:`MultiObjectiveOptimizer` inside Accelerate's ``AcceleratedOptimizer``.

    Raises ``TypeError`` when ``optimizer`` does not wrap one.
    """
    inner = optimizer
    while not isinstance(inner, MultiObjectiveOptimizer) and hasattr(inner, "optimizer"):
        inner = inner.optimizer
    if not isinstance(inner, MultiObjectiveOptimizer):
        raise TypeError(
            f"{type(optimizer).__name__} does not wrap a MultiObjectiveOptimizer; pass "
            "MultiObjectiveOptimizer(torch.optim...(...), method) to accelerator.prepare"
        )
    return inner


def balanced_backward(
    accelerator: Any,
    optimizer: Any,
    losses: Losses,
    *,
    features: Optional[Union[Tensor, Sequence[Tensor]]] = None,
    retain_graph: bool = False,
) -> Optional[StepStats]:
    """What ``accelerator.backward(loss)`` does, for several losses balanced by the optimizer.

    Args:
        accelerator: the ``accelerate.Accelerator``.
        optimizer: the prepared optimizer (``AcceleratedOptimizer``) or the
            :class:`MultiObjectiveOptimizer` itself.
        losses: mapping name -> scalar loss (or a sequence). Pass each micro-batch's losses as
            they are: unlike ``accelerator.backward``, do not divide by the number of
            accumulation steps (the window averages).
        features: shared tensor(s) for the ``"representation"`` strategy (not with
            gradient accumulation).
        retain_graph: keep the autograd graph.

    Returns:
        the :class:`StepStats` of the optimizer step, or ``None`` for a micro-batch that
        Accelerate does not synchronise (``accelerator.sync_gradients`` is False): it joined
        the accumulation window and nothing was written to ``.grad``.

    Raises:
        NotImplementedError: an unsupported setup (:func:`check_accelerator`).
        TypeError: the optimizer does not wrap a :class:`MultiObjectiveOptimizer`.
        ValueError: a ``GradScaler`` on the optimizer that is not the accelerator's, or any
            error of :meth:`MultiObjectiveOptimizer.backward` (raised before anything changed).
    """
    check_accelerator(accelerator)
    opt = unwrap_optimizer(optimizer)
    scaler = accelerator.scaler
    if scaler is not None and opt.scaler is None:
        opt.scaler = scaler
    elif opt.scaler is not scaler and (opt.scaler is not None and opt.scaler.is_enabled()):
        raise ValueError(
            "the MultiObjectiveOptimizer has a GradScaler other than the accelerator's "
            f"({scaler!r}); Accelerate steps with its own: do not pass scaler= under Accelerate"
        )
    return opt.backward(
        losses,
        features=features,
        retain_graph=retain_graph,
        accumulate=not accelerator.sync_gradients,
    )
