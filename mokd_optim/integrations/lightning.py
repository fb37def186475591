"""PyTorch Lightning: one call per training step for a ``LightningModule`` (docs/frameworks.md).

A ``LightningModule`` trains with :class:`~mokd_optim.MultiObjectiveOptimizer` in manual
optimization (``self.automatic_optimization = False``): its ``training_step`` computes the
named losses and calls :func:`balanced_step`, which

1. zeroes the gradients at the start of an optimizer step,
2. calls :meth:`MultiObjectiveOptimizer.backward` on the optimizer itself (never through
   Lightning's ``LightningOptimizer`` proxy, which would keep the accumulation window and the
   amortised "before" losses on the proxy), with the precision plugin's ``GradScaler``
   attached under ``"16-mixed"``, and
3. steps through the ``LightningOptimizer``, so that the precision plugin (unscaling,
   skipped steps after an overflow), the ``on_before_optimizer_step`` hooks and the step
   counters (``trainer.global_step``) run as for any optimizer.

Works with ``lightning.pytorch`` and ``pytorch_lightning`` (>= 2.2); neither is imported by
the core library, nor by this module until a trainer is inspected.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from mokd_optim._typing import Losses
from mokd_optim._validation import normalize_losses
from mokd_optim.diagnostics import StepStats
from mokd_optim.optimizer import MultiObjectiveOptimizer

__all__ = ["balanced_step", "check_trainer"]

_SUPPORTED_PRECISION = ("Precision", "MixedPrecision", "HalfPrecision", "DoublePrecision")


def _lightning_package(trainer: Any) -> Any:
    """``lightning.pytorch`` or ``pytorch_lightning``: whichever package ``trainer`` is from."""
    root = type(trainer).__module__.split(".")[0]
    name = "lightning.pytorch" if root == "lightning" else root
    try:
        return importlib.import_module(name)
    except ImportError as error:  # pragma: no cover - the trainer came from somewhere
        raise TypeError(
            f"expected a Lightning Trainer, got {type(trainer).__name__} from {root!r}"
        ) from error


def check_trainer(trainer: Any) -> None:
    """Raise unless ``trainer``'s strategy and precision keep the balanced update exact.

    Supported: single-device strategies and DDP (``"ddp"``, ``"ddp_spawn"``,
    ``"ddp_notebook"``); precision ``"32-true"``, ``"64-true"``, ``"16-true"``,
    ``"bf16-true"``, ``"bf16-mixed"`` and ``"16-mixed"`` (its ``GradScaler`` is attached to the
    optimizer by :func:`balanced_step`).

    Raises:
        NotImplementedError: sharded or model-parallel strategies (FSDP, DeepSpeed, model
            parallel, XLA): each rank holds a shard of the parameters, so per-objective
            gradients and their Gram matrix would be per shard, not of the model; and
            precision plugins that take over the backward (DeepSpeed, FSDP, Transformer
            Engine, bitsandbytes, XLA).
    """
    pl = _lightning_package(trainer)
    strategies = pl.strategies
    strategy = trainer.strategy
    deepspeed = getattr(strategies, "DeepSpeedStrategy", None)
    supported = isinstance(strategy, strategies.SingleDeviceStrategy) or (
        isinstance(strategy, strategies.DDPStrategy)
        and not (deepspeed is not None and isinstance(strategy, deepspeed))
    )
    if not supported:
        raise NotImplementedError(
            f"strategy {type(strategy).__name__} is not supported with MultiObjectiveOptimizer: it shards "
            "the parameters or drives the backward itself, so the per-objective gradients would not be "
            "those of the model; use a single device or strategy='ddp'"
        )
    plugin = trainer.precision_plugin
    if type(plugin).__name__ not in _SUPPORTED_PRECISION:
        raise NotImplementedError(
            f"precision plugin {type(plugin).__name__} is not supported with MultiObjectiveOptimizer; "
            "use precision '32-true', '16-mixed', 'bf16-mixed', '16-true', 'bf16-true' or '64-true'"
        )


def _attach_scaler(optimizer: MultiObjectiveOptimizer, plugin: Any) -> None:
    """Give ``optimizer`` the precision plugin's ``GradScaler`` (``"16-mixed"``), once."""
    scaler = getattr(plugin, "scaler", None)
    if scaler is None:
        if optimizer.scaler is not None and optimizer.scaler.is_enabled():
            raise ValueError(
                "the MultiObjectiveOptimizer has its own GradScaler but the trainer's precision plugin "
                f"({type(plugin).__name__}) does not scale losses, so nothing would unscale .grad; "
                "do not pass scaler= to MultiObjectiveOptimizer under Lightning"
            )
        return
    if optimizer.scaler is None:
        optimizer.scaler = scaler
    elif optimizer.scaler is not scaler:
        raise ValueError(
            "the MultiObjectiveOptimizer has a GradScaler other than the trainer's; Lightning unscales "
            "with its own (trainer.precision_plugin.scaler): do not pass scaler= under Lightning"
        )


def _ends_with_backward(
    optimizer: MultiObjectiveOptimizer, features: Any, accumulate: bool
) -> bool:
    """Whether this ``backward`` call runs an ordinary ``.backward()`` that DDP's reducer sees."""
    strategy = optimizer.strategy
    if strategy == "auto":
        if features is not None:
            strategy = "representation"
        elif not optimizer.method.needs_gradients:
            strategy = "amortized"
    if strategy == "representation":
        return True
    return strategy == "amortized" and not accumulate and not optimizer.accumulating


def _lightning_optimizer(module: Any, optimizer: Union[int, Any]) -> Any:
    optimizers = module.optimizers()
    if isinstance(optimizer, int):
        if isinstance(optimizers, Sequence):
            if not 0 <= optimizer < len(optimizers):
                raise IndexError(
                    f"optimizer={optimizer} but configure_optimizers returned {len(optimizers)} optimizers"
                )
            return optimizers[optimizer]
        if optimizer != 0:
            raise IndexError(
                f"optimizer={optimizer} but configure_optimizers returned one optimizer"
            )
        return optimizers
    return optimizer


def balanced_step(
    module: Any,
    losses: Losses,
    *,
    features: Optional[Union[Tensor, Sequence[Tensor]]] = None,
    optimizer: Union[int, Any] = 0,
    accumulate_grad_batches: int = 1,
    batch_idx: Optional[int] = None,
    losses_after: Optional[Callable[[], Losses]] = None,
) -> Optional[StepStats]:
    """Balanced backward and optimizer step, from inside ``LightningModule.training_step``.

    Args:
        module: the ``LightningModule`` (``self``); it must have
            ``automatic_optimization = False``.
        losses: mapping name -> scalar loss (or a sequence), as for
            :meth:`MultiObjectiveOptimizer.backward`.
        features: shared tensor(s) for the ``"representation"`` strategy.
        optimizer: index into ``self.optimizers()`` (or the ``LightningOptimizer`` itself);
            it must wrap a :class:`MultiObjectiveOptimizer`.
        accumulate_grad_batches: micro-batches per optimizer step (Lightning refuses its own
            ``Trainer(accumulate_grad_batches=...)`` in manual optimization). The
            per-objective gradients are averaged over the window and the weights solved once
            (docs/accumulation.md); the window closes when ``(batch_idx + 1)`` is a multiple
            of it or at the last batch of the epoch, as Lightning's own accumulation does.
        batch_idx: the ``batch_idx`` of ``training_step``; required when
            ``accumulate_grad_batches > 1``.
        losses_after: for amortised methods with ``observe="same_batch"``: a callable that
            recomputes the losses on the same batch; it is called under ``torch.no_grad()``
            after a step that was taken (not after one skipped by the ``GradScaler``) and the
            result is passed to :meth:`MultiObjectiveOptimizer.observe`.

    Returns:
        the :class:`StepStats` of the step, or ``None`` for a micro-batch that only joined
        the accumulation window (no step was taken).

    Raises:
        RuntimeError: the module uses automatic optimization (Lightning would call
            ``backward`` on the returned loss and train on an unbalanced sum).
        TypeError: the optimizer does not wrap a :class:`MultiObjectiveOptimizer`.
        NotImplementedError: an unsupported strategy or precision plugin (:func:`check_trainer`).
        ValueError: bad ``accumulate_grad_batches`` / ``batch_idx``, a ``GradScaler`` that is
            not the trainer's, or any error of :meth:`MultiObjectiveOptimizer.backward`
            (parameters and optimizer state unchanged; at the start of a step ``.grad`` has
            been zeroed).
    """
    if module.automatic_optimization:
        raise RuntimeError(
            f"{type(module).__name__} uses automatic optimization: Lightning would call backward() on the "
            "loss returned by training_step and train on an unbalanced sum. Set "
            "self.automatic_optimization = False in __init__ and return nothing from training_step"
        )
    if not isinstance(accumulate_grad_batches, int) or accumulate_grad_batches < 1:
        raise ValueError(
            f"accumulate_grad_batches must be a positive integer, got {accumulate_grad_batches!r}"
        )
    if accumulate_grad_batches > 1 and batch_idx is None:
        raise ValueError(
            "accumulate_grad_batches > 1 needs batch_idx= (the batch_idx of training_step)"
        )
    trainer = module.trainer
    check_trainer(trainer)
    lightning_optimizer = _lightning_optimizer(module, optimizer)
    opt = getattr(lightning_optimizer, "optimizer", lightning_optimizer)
    if not isinstance(opt, MultiObjectiveOptimizer):
        raise TypeError(
            f"the optimizer is a {type(opt).__name__}, not a MultiObjectiveOptimizer; return "
            "MultiObjectiveOptimizer(torch.optim...(...), method) from configure_optimizers"
        )
    _attach_scaler(opt, trainer.precision_plugin)
    closing = accumulate_grad_batches == 1 or (
        batch_idx is not None
        and ((batch_idx + 1) % accumulate_grad_batches == 0 or bool(trainer.is_last_batch))
    )
    if not opt.accumulating:
        opt.zero_grad()
    if _ends_with_backward(opt, features, not closing):
        # What Lightning's manual_backward does first: under DDP, tell the reducer that a
        # backward follows, so that it averages the gradients of this one .backward().
        _, tensors = normalize_losses(losses)
        trainer.strategy.pre_backward(tensors)
    stats = opt.backward(losses, features=features, accumulate=not closing)
    if not closing:
        return None
    _step(lightning_optimizer, opt, losses_after)
    return stats


def _step(
    lightning_optimizer: Any,
    opt: MultiObjectiveOptimizer,
    losses_after: Optional[Callable[[], Losses]],
) -> None:
    """Step through Lightning; feed an amortised method the losses after a step that was taken."""
    if not opt.method.needs_losses_after:
        lightning_optimizer.step()
        return
    stepped: list[bool] = []
    observed: list[bool] = []
    handle = opt.optimizer.register_step_post_hook(lambda *_: stepped.append(True))

    def closure() -> Optional[Losses]:
        # Lightning's precision plugin calls this before the step when it holds a GradScaler;
        # otherwise MultiObjectiveOptimizer.step calls it after the step (under no_grad).
        if not stepped or losses_after is None:
            return None
        observed.append(True)
        return losses_after()

    try:
        lightning_optimizer.step(closure=closure)
    finally:
        handle.remove()
    if stepped and losses_after is not None and not observed:
        with torch.no_grad():
            opt.observe(losses_after())
