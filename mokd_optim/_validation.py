"""Input checks for the per-objective losses. Every check runs before anything is changed."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Optional, Union

import numpy as np
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


def check_loss_structure(names: Sequence[str], tensors: Sequence[Tensor]) -> None:
    """Raise for a loss that is not a floating-point scalar tensor requiring grad with data.

    Raises:
        ObjectiveError: naming the loss (not a tensor, not a scalar, not floating point, on
            the ``meta`` device, or not requiring grad).
        ValueError: the losses live on different devices.
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
    for name, loss in zip(names, tensors):
        if loss.device.type == "meta":
            raise ObjectiveError(
                name,
                "the loss is on the 'meta' device, which holds shapes but no values, so there is no "
                "gradient to compute; materialise the model and its inputs (e.g. model.to_empty(device=...) "
                "followed by loading weights) before training",
            )


NOT_FINITE = 1
NOT_POSITIVE = 2


def loss_problems(
    tensors: Sequence[Tensor],
    *,
    positive: bool,
    allow_nonfinite: bool = False,
    values: Optional[Tensor] = None,
) -> tuple[list[int], list[float]]:
    """Per loss, a problem code (0 fine, :data:`NOT_FINITE`, :data:`NOT_POSITIVE`) and its value.

    One device-to-host synchronisation: the K values are read once and classified on the host.
    ``positive``: the method takes logarithms, so every loss must be > 0. ``allow_nonfinite``:
    inf/NaN losses pass (under AMP they are the ``GradScaler``'s business). ``values``: the
    ``(K,)`` loss values when the caller has already stacked them (saves the stacking ops).
    """
    if values is None:
        values = stacked_losses(tensors)
    read = values.double().cpu().tolist()
    codes = []
    for value in read:
        finite = math.isfinite(value)
        if not finite and not allow_nonfinite:
            codes.append(NOT_FINITE)
        elif positive and finite and value <= 0:
            codes.append(NOT_POSITIVE)
        else:
            codes.append(0)
    return codes, read


def stacked_losses(tensors: Sequence[Tensor]) -> Tensor:
    """The ``(K,)`` detached values of scalar losses, in their dtype (one ``stack``; scalars
    that are not 0-dim are reshaped first)."""
    with torch.no_grad():
        return torch.stack([t if t.dim() == 0 else t.reshape(()) for t in tensors])


def raise_loss_problem(name: str, code: int, value: float, *, where: str = "") -> None:
    """Raise the :class:`ObjectiveError` for a problem code of :func:`loss_problems` (``where``:
    e.g. ``" on rank 1"``); nothing for code 0."""
    if code == NOT_FINITE:
        raise ObjectiveError(name, f"the loss is not finite ({value}){where}; nothing was changed")
    if code == NOT_POSITIVE:
        raise ObjectiveError(
            name,
            f"the method works with log-losses and needs a loss > 0, got {value}{where}; "
            "add a small constant or use a method without logarithms (e.g. 'mgda')",
        )


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
    check_loss_structure(names, tensors)
    if not check_values:
        return
    codes, values = loss_problems(tensors, positive=positive, allow_nonfinite=allow_nonfinite)
    for name, code, value in zip(names, codes, values):
        raise_loss_problem(name, code, value)


# Option values -----------------------------------------------------------------------------


class OptionError(ValueError, TypeError):
    """A constructor option has a bad value or type; the message names the option.

    A ``ValueError`` (what the docs promise) that is also a ``TypeError``, so that code that
    caught the bare ``TypeError`` of a wrong type keeps working.
    """


def _is_real(value: object) -> bool:
    """A real number (Python, NumPy or a one-element tensor), not a bool."""
    if isinstance(value, Tensor):
        return value.numel() == 1 and value.dtype != torch.bool and not value.is_complex()
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_number(
    owner: str,
    option: str,
    value: object,
    *,
    low: Optional[float] = None,
    high: Optional[float] = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> float:
    """``value`` as a float after checking it is a finite real number (an ``int`` when
    ``integer``) within ``[low, high]`` (``low_open`` / ``high_open`` exclude the bounds).

    Raises:
        OptionError: naming ``owner`` (e.g. the method) and ``option``.
    """
    kind = "an integer" if integer else "a real number"
    if integer and not _is_integer(value):
        raise OptionError(f"{owner}: {option} must be {kind}, got {value!r}")
    if not _is_real(value):
        raise OptionError(f"{owner}: {option} must be {kind}, got {value!r}")
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise OptionError(f"{owner}: {option} must be finite, got {value!r}")
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        if high is None and low == 0 and low_open:
            wanted = "positive"
        elif high is None:
            wanted = f"{'>' if low_open else '>='} {low}"
        else:
            left = "(" if low_open else "["
            right = ")" if high_open else "]"
            wanted = f"in {left}{'-inf' if low is None else low}, {high}{right}"
        raise OptionError(f"{owner}: {option} must be {wanted}, got {value!r}")
    return number


def check_choice(owner: str, option: str, value: object, choices: Sequence[object]) -> None:
    """Raise :class:`OptionError` unless ``value`` is one of ``choices``."""
    if isinstance(value, (list, dict, set)) or value not in choices:
        raise OptionError(f"{owner}: unknown {option} {value!r}; choose one of {tuple(choices)}")


def check_flag(owner: str, option: str, value: object) -> bool:
    """``value`` if it is a ``bool``; raise :class:`OptionError` otherwise."""
    if not isinstance(value, bool):
        raise OptionError(f"{owner}: {option} must be True or False, got {value!r}")
    return value


def check_per_objective(
    owner: str,
    option: str,
    values: object,
    *,
    low: Optional[float] = None,
    low_open: bool = False,
) -> Union[dict[str, float], tuple[float, ...]]:
    """Per-objective numbers given as a mapping name -> number or a sequence: each a finite
    real number ``>= low`` (``> low`` with ``low_open``). Returns a dict or a tuple of floats.

    Raises:
        OptionError: naming ``option`` and the offending entry.
    """
    if isinstance(values, Mapping):
        return {
            str(key): check_number(owner, f"{option}[{key!r}]", value, low=low, low_open=low_open)
            for key, value in values.items()
        }
    if isinstance(values, Sequence) and not isinstance(values, (str, bytes)):
        return tuple(
            check_number(owner, f"{option}[{index}]", value, low=low, low_open=low_open)
            for index, value in enumerate(values)
        )
    raise OptionError(
        f"{owner}: {option} must be a mapping name -> number or a sequence of numbers, "
        f"got {type(values).__name__}"
    )
