"""Input checks for the per-objective losses. Every check runs before anything is changed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mokd_optim._typing import Losses


class ObjectiveError(ValueError):
    """A loss (objective) cannot be used; ``objective`` names it."""

    def __init__(self, objective: str, message: str) -> None:
        super().__init__(f"objective {objective!r}: {message}")
        self.objective = objective


def normalize_losses(losses: Losses) -> tuple[tuple[str, ...], list[Tensor]]:
    """Names and tensors of a mapping or sequence of losses, in order.

    Sequence entries are named ``"0"``, ``"1"``, ... Raises ``TypeError`` for other
    containers and ``ValueError`` for an empty collection.
    """
    if isinstance(losses, Tensor):
        raise TypeError(
            "losses must be a mapping name -> scalar tensor or a sequence of scalar tensors, "
            "not a single tensor; for one objective use plain loss.backward()"
        )
    if isinstance(losses, Mapping):
        names = tuple(str(name) for name in losses)
        tensors = list(losses.values())
    elif isinstance(losses, Sequence) and not isinstance(losses, (str, bytes)):
        names = tuple(str(index) for index in range(len(losses)))
        tensors = list(losses)
    else:
        raise TypeError(
            f"losses must be a mapping or a sequence of scalar tensors, got {type(losses).__name__}"
        )
    if not tensors:
        raise ValueError("losses is empty: give at least one objective")
    if len(set(names)) != len(names):
        raise ValueError(f"objective names must be unique, got {list(names)}")
    return names, tensors


def check_losses(
    names: Sequence[str],
    tensors: Sequence[Tensor],
    *,
    positive: bool,
    check_values: bool,
    allow_nonfinite: bool = False,
) -> None:
    """Raise :class:`ObjectiveError` for a loss that is not a finite scalar requiring grad.

    ``positive``: the method takes logarithms, so every loss must be > 0. ``check_values``
    enables the finiteness/positivity checks, which cost one device-to-host synchronisation.
    ``allow_nonfinite``: inf/NaN losses pass (under AMP they are the ``GradScaler``'s business:
    the optimizer turns the update into NaN so that the scaler skips the step); a finite loss
    that is not positive is still refused for log-based methods.
    Also raises ``ValueError`` when the losses live on different devices.
    """
    for name, loss in zip(names, tensors):
        if not isinstance(loss, Tensor):
            raise ObjectiveError(name, f"expected a scalar torch.Tensor, got {type(loss).__name__}")
        if loss.numel() != 1:
            raise ObjectiveError(
                name,
                f"expected a scalar loss, got shape {tuple(loss.shape)}; reduce it (e.g. .mean()) first",
            )
        if not loss.is_floating_point():
            raise ObjectiveError(name, f"expected a floating point loss, got {loss.dtype}")
        if not loss.requires_grad:
            raise ObjectiveError(
                name,
                "the loss does not require grad: it was computed without autograd (torch.no_grad, .detach(), or from frozen parameters only)",
            )
    devices = {loss.device for loss in tensors}
    if len(devices) > 1:
        placement = ", ".join(f"{name}: {loss.device}" for name, loss in zip(names, tensors))
        raise ValueError(f"losses live on different devices ({placement}); move them to one device")
    if not check_values:
        return
    values = torch.stack([loss.detach().reshape(()).float() for loss in tensors])
    finite = torch.isfinite(values)
    bad_value = ~finite if not allow_nonfinite else torch.zeros_like(finite)
    bad_sign = (values <= 0) & finite if positive else torch.zeros_like(bad_value)
    flags = torch.stack([bad_value, bad_sign]).cpu().tolist()
    for index, name in enumerate(names):
        if flags[0][index]:
            raise ObjectiveError(
                name, f"the loss is not finite ({float(values[index])}); nothing was changed"
            )
        if flags[1][index]:
            raise ObjectiveError(
                name,
                f"the method works with log-losses and needs a loss > 0, got {float(values[index])}; "
                "add a small constant or use a method without logarithms (e.g. 'mgda')",
            )
