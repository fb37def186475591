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

    An instance whose :attr:`needs_previous_step` is true is also told, before each exact
    weighting, how the per-objective gradients point against the optimizer's previous
    parameter change (:meth:`observe_previous_step`) and the wrapped optimizer's learning rate
    for the coming step (:meth:`observe_learning_rate`).
    """

    name: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = True
    log_losses: ClassVar[bool] = False
    needs_losses_after: ClassVar[bool] = False

    # Documented promises about the update ``d = sum_i w_i g_i``. They are part of each
    # method's contract: tests/test_method_properties.py checks them for every registered
    # method on random and adversarial Gram matrices, and docs/methods.md tabulates them.
    #: ``<g_i, d> >= 0`` for every objective, whatever the gradients.
    conflict_free: ClassVar[bool] = False
    #: ``d = 0`` whenever a strictly positive combination of the gradients is 0.
    pareto_stationary: ClassVar[bool] = False
    #: Permuting the objectives permutes the weights the same way.
    permutation_equivariant: ClassVar[bool] = True
    #: What stays unchanged when one loss (hence its gradient) is multiplied by ``c > 0``:
    #: ``"update"`` (all of ``d``), ``"direction"`` (``d / ||d||``) or ``"none"``.
    scale_invariance: ClassVar[str] = "none"
    #: ``p`` such that scaling every gradient by ``s > 0`` (losses unchanged) scales ``d`` by
    #: ``s ** p``: 1 for a linear rule, 0 for a rule that ignores gradient magnitudes.
    homogeneity: ClassVar[int] = 1

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

    @property
    def needs_previous_step(self) -> bool:
        """Whether the optimizer should keep the last parameter change (one copy of the
        parameters) and call :meth:`observe_previous_step` before each exact weighting."""
        return False

    def observe_previous_step(self, products: Tensor, change_sq_norm: Tensor) -> None:  # noqa: B027
        """``products`` ``(K,)``: ``<g_i, delta>`` for this step's gradients and the previous
        optimizer step's parameter change ``delta`` over the balanced parameters (the Gram
        matrix's); ``change_sq_norm``: ``||delta||^2`` over the same. Both float64, on the
        device. Called only when :attr:`needs_previous_step`; default: nothing."""

    def observe_learning_rate(self, lr: Optional[float]) -> None:  # noqa: B027
        """The wrapped optimizer's learning rate for the coming step (its first parameter
        group's; ``None`` when it has none), before each exact weighting. Called only when
        :attr:`needs_previous_step`; default: nothing."""

    def observe(self, losses_before: Tensor, losses_after: Tensor) -> None:  # noqa: B027
        """Learn from the loss values after the step (amortised methods). Default: nothing."""

    def discard_pending(self) -> None:  # noqa: B027
        """Forget the losses of the last weighting, which the optimizer step did not follow
        (a ``GradScaler`` skipped it): there is no "after" to learn from. Default: nothing."""

    def state_dict(self) -> dict[str, Any]:
        """Internal state to checkpoint (tensors cloned). Stateless methods return ``{}``."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned. Raises ``ValueError`` on a mismatch."""
        if state:
            raise ValueError(
                f"{type(self).__name__} is stateless but got state keys {sorted(state)}"
            )

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


# A gradient whose norm is below this fraction of the largest norm is treated as zero by the
# methods that normalise gradients to unit length (IMTL-G, ConFIG, Nash-MTL): its direction is
# rounding noise, and normalising it would give that noise the weight of a real objective.
ZERO_NORM_RTOL = 1e-12


def inverse_norms(gram: PSDMatrix) -> tuple[Tensor, Tensor]:
    """Gradient norms ``n_i = sqrt(G_ii)`` and ``1 / n_i`` (0 for a zero gradient).

    A gradient is zero when ``n_i <= ZERO_NORM_RTOL * max_j n_j`` (all of them when the
    matrix is 0). Shapes: ``(..., K, K)`` -> ``(..., K)`` twice. No host synchronisation.
    """
    norms = torch.diagonal(gram, dim1=-2, dim2=-1).clamp_min(0.0).sqrt()
    largest = norms.amax(dim=-1, keepdim=True)
    nonzero = (norms > ZERO_NORM_RTOL * largest) & (norms > 0)
    safe = torch.where(nonzero, norms, torch.ones_like(norms))
    return norms, torch.where(nonzero, 1.0 / safe, torch.zeros_like(norms))


def cosine_gram(gram: PSDMatrix) -> tuple[PSDMatrix, Tensor]:
    """Gram matrix of the unit gradients ``u_i = g_i / ||g_i||`` and the ``1 / n_i``.

    Rows and columns of zero gradients (see :func:`inverse_norms`) are 0. Working with this
    matrix makes the norm ratio of the gradients irrelevant to the conditioning.
    Shapes: ``(..., K, K)`` -> ``(..., K, K)``, ``(..., K)``.
    """
    _, inverse = inverse_norms(gram)
    sym = 0.5 * (gram + gram.transpose(-1, -2))
    return sym * inverse[..., :, None] * inverse[..., None, :], inverse
