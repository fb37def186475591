"""The interface every balancing method implements.

A method is a *weighting*: from the ``K x K`` Gram matrix of the per-objective gradients (over
the balanced parameters) and the ``K`` loss values it returns ``K`` weights ``w``; the update
written to ``.grad`` is ``sum_i w_i g_i``. Combining weights with gradients is done once, in
the optimizer, so most methods never touch the huge gradient vectors. Methods that need no
per-objective gradients (fixed weights, FAMO-style amortised weights) set
``needs_gradients = False`` and receive ``gram=None``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

from mokd_optim._typing import PSDMatrix, Weights


class Method(abc.ABC):
    """Base class of the balancing methods in :mod:`mokd_optim.methods`.

    Subclasses set ``name`` (the registry key) and implement :meth:`weights`. Class flags tell
    the optimizer what the method needs:

    - ``needs_gradients``: per-objective gradients (a Gram matrix) are required.
    - ``log_losses``: the method works with ``log L_i`` and needs strictly positive losses.
    - ``needs_losses_after``: the method learns from the losses measured after the step
      (see :meth:`observe`).
    """

    name: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = True
    log_losses: ClassVar[bool] = False
    needs_losses_after: ClassVar[bool] = False

    def __init__(self) -> None:
        self.objective_names: tuple[str, ...] = ()
        #: Method-specific tensors from the last call (e.g. MoKD's simplex weights), for stats.
        self.info: dict[str, Tensor] = {}

    def bind(self, names: Sequence[str]) -> None:
        """Called by the optimizer with the objective names before each weighting.

        Methods whose options refer to objectives by name (an anchor, fixed weights) resolve
        them here. Raises ``ValueError`` when an option names an objective that is not there.
        """
        self.objective_names = tuple(names)

    @abc.abstractmethod
    def weights(self, gram: Optional[PSDMatrix], losses: Tensor) -> Weights:
        """Weights on the raw per-objective gradients.

        Args:
            gram: ``(K, K)`` float64 Gram matrix ``G_ij = <g_i, g_j>`` over the balanced
                parameters, or ``None`` when ``needs_gradients`` is False.
            losses: ``(K,)`` detached loss values (float64 where supported).

        Returns:
            ``(K,)`` weights, on the device and in the dtype of ``losses``.
        """

    def observe(self, losses_before: Tensor, losses_after: Tensor) -> None:  # noqa: B027
        """Learn from the loss values after the step (amortised methods). Default: nothing."""

    def state_dict(self) -> dict[str, Any]:
        """Internal state to checkpoint (tensors cloned). Stateless methods return ``{}``."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned. Raises ``ValueError`` on a mismatch."""
        if state:
            raise ValueError(f"{type(self).__name__} is stateless but got state keys {sorted(state)}")

    def options(self) -> dict[str, Any]:
        """The constructor options, shown by ``repr``."""
        return {}

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.options().items())
        return f"{type(self).__name__}({options})"

    # Helpers for subclasses -------------------------------------------------------------

    def resolve_objective(self, objective: int | str, option: str) -> int:
        """Index of ``objective`` (a name or an index) among the bound objective names."""
        names = self.objective_names
        if isinstance(objective, str):
            if objective not in names:
                raise ValueError(
                    f"{self.name}: {option}={objective!r} is not one of the objectives {list(names)}"
                )
            return names.index(objective)
        if not -len(names) <= objective < len(names):
            raise ValueError(
                f"{self.name}: {option}={objective} is out of range for {len(names)} objectives {list(names)}"
            )
        return objective % len(names)


def as_work(x: Tensor) -> Tensor:
    """``x`` in float64 (float32 on MPS), the precision of all ``K x K`` arithmetic."""
    return x.to(torch.float32 if x.device.type == "mps" else torch.float64)
