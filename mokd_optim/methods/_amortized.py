"""Shared machinery of the amortised (FAMO-style) methods: softmax logits learnt with Adam.

Such a method needs no per-objective gradients. It keeps logits ``xi`` (one per objective),
``pi = softmax(xi)``, and turns ``pi`` and the loss values into weights for ONE backward of
``sum_i w_i L_i``. After the step it learns from how much each log-loss went down,
``delta_i = log L_i(before) - log L_i(after)``: the logits take an Adam step along
``(d softmax / d xi)^T delta``, which moves weight away from the objectives that improved fast.

Where "after" comes from (option ``observe``):

- ``"same_batch"`` (faithful): the losses on the same batch, recomputed without gradients after
  the step -- pass a closure to ``MultiObjectiveOptimizer.step(closure)`` or call
  ``MultiObjectiveOptimizer.observe(losses_after)``. Costs one extra no-grad forward per step.
- ``"next_batch"`` (zero overhead): the losses that the NEXT ``backward`` call brings are used
  as the "after" of the previous step (measured after the step, on a different batch, so the
  signal is noisier). Nothing else to call. An explicit ``observe`` still takes precedence.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from torch import Tensor

from mokd_optim._typing import PSDMatrix, Weights
from mokd_optim._validation import OptionError, check_choice, check_number
from mokd_optim.methods._base import Method, as_work

OBSERVE_MODES = ("same_batch", "next_batch")


class AmortizedLogits(Method):
    """Base class of ``"famo"`` and ``"mokd-amortized"`` (not registered itself).

    Subclasses implement :meth:`log_values` (the log-losses used for ``delta``) and
    :meth:`combine` (weights on the raw gradients from ``pi`` and the losses).

    Adam is written out (coupled L2 weight decay, like ``torch.optim.Adam(weight_decay=...)``
    used by the reference FAMO code) so that its state is three small tensors and a step count,
    all in :meth:`state_dict`.
    """

    needs_gradients = False
    needs_losses_after = True
    log_losses = True
    scale_invariance = "direction"

    def __init__(
        self,
        lr: float,
        weight_decay: float,
        observe: str,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        check_number(self.name, "lr", lr, low=0.0, low_open=True)
        check_number(self.name, "weight_decay", weight_decay, low=0.0)
        check_choice(self.name, "observe mode", observe, OBSERVE_MODES)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise OptionError(f"{self.name}: betas must be a pair of numbers, got {betas!r}")
        for index, beta in enumerate(betas):
            check_number(self.name, f"betas[{index}]", beta, low=0.0, high=1.0, high_open=True)
        check_number(self.name, "eps", eps, low=0.0)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.observe_mode = observe
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self._logits: Optional[Tensor] = None
        self._exp_avg: Optional[Tensor] = None
        self._exp_avg_sq: Optional[Tensor] = None
        self._steps = 0
        self._pending: Optional[Tensor] = None  # next_batch: losses of the last weights() call
        self._awaiting_observe = False  # same_batch: weights() ran, observe() has not yet
        self._warned = False

    # Subclass hooks ---------------------------------------------------------------------

    def log_values(self, losses: Tensor) -> Tensor:
        """``log`` of the losses as the method sees them (shifted, floored); ``(K,)`` -> ``(K,)``."""
        raise NotImplementedError

    def combine(self, pi: Tensor, losses: Tensor) -> Weights:
        """Weights on the raw gradients from ``pi = softmax(xi)`` and the losses; ``(K,)``."""
        raise NotImplementedError

    # Logits and their Adam state ---------------------------------------------------------

    @property
    def logits(self) -> Optional[Tensor]:
        """The current logits ``xi`` (``None`` before the first call)."""
        return self._logits

    def _ensure_state(self, like: Tensor) -> None:
        k = like.shape[0]
        if self._logits is None:
            self._logits = torch.zeros(k, dtype=like.dtype, device=like.device)
            self._exp_avg = torch.zeros_like(self._logits)
            self._exp_avg_sq = torch.zeros_like(self._logits)
        elif self._logits.shape[0] != k:
            raise ValueError(
                f"{self.name}: the method state has {self._logits.shape[0]} logits but got {k} objectives"
            )
        elif self._logits.device != like.device:
            self._move_state(like.device)

    def _move_state(self, device: torch.device) -> None:
        for attribute in ("_logits", "_exp_avg", "_exp_avg_sq", "_pending"):
            value = getattr(self, attribute)
            if value is not None:
                setattr(self, attribute, value.to(device))

    def bind(self, names: Any) -> None:
        super().bind(names)
        if self._logits is not None and self._logits.shape[0] != len(self.objective_names):
            raise ValueError(
                f"{self.name}: the method state has {self._logits.shape[0]} logits but got "
                f"{len(self.objective_names)} objectives {list(self.objective_names)}"
            )

    def logit_gradient(self, losses_before: Tensor, losses_after: Tensor) -> Tensor:
        """``(d softmax / d xi)^T delta`` with ``delta = log L(before) - log L(after)``.

        Non-finite entries of ``delta`` (a loss that became 0 or inf) carry no usable
        information and count as 0. ``(K,)`` twice -> ``(K,)``.
        """
        assert self._logits is not None
        delta = self.log_values(losses_before) - self.log_values(losses_after)
        delta = torch.where(torch.isfinite(delta), delta, torch.zeros_like(delta))
        pi = torch.softmax(self._logits, dim=0)
        return pi * (delta - (pi * delta).sum())

    def _update(self, losses_before: Tensor, losses_after: Tensor) -> None:
        assert (
            self._logits is not None and self._exp_avg is not None and self._exp_avg_sq is not None
        )
        grad = self.logit_gradient(losses_before, losses_after)
        if self.weight_decay:
            grad = grad + self.weight_decay * self._logits
        beta1, beta2 = self.betas
        self._steps += 1
        self._exp_avg = beta1 * self._exp_avg + (1.0 - beta1) * grad
        self._exp_avg_sq = beta2 * self._exp_avg_sq + (1.0 - beta2) * grad * grad
        correction1 = 1.0 - beta1**self._steps
        correction2 = 1.0 - beta2**self._steps
        denominator = self._exp_avg_sq.sqrt() / correction2**0.5 + self.eps
        self._logits = self._logits - (self.lr / correction1) * self._exp_avg / denominator

    # Method interface -------------------------------------------------------------------

    def weights(self, gram: Optional[PSDMatrix], losses: Tensor) -> Weights:
        losses = as_work(losses.detach())
        self._ensure_state(losses)
        if self.observe_mode == "next_batch" and self._pending is not None:
            self._update(self._pending.to(losses), losses)
        elif self.observe_mode == "same_batch" and self._awaiting_observe and not self._warned:
            warnings.warn(
                f"{self.name}: new weights were requested before the losses after the previous step "
                "were observed, so the weights are not learning; pass a closure to "
                "MultiObjectiveOptimizer.step(closure), call .observe(losses_after), or use "
                "observe='next_batch'",
                RuntimeWarning,
                stacklevel=3,
            )
            self._warned = True
        assert self._logits is not None
        pi = torch.softmax(self._logits, dim=0)
        w = self.combine(pi, losses)
        self._pending = losses.clone() if self.observe_mode == "next_batch" else None
        self._awaiting_observe = self.observe_mode == "same_batch"
        self.info = {"simplex_weights": pi}
        return w

    def observe(self, losses_before: Tensor, losses_after: Tensor) -> None:
        """Adam step of the logits from the losses before and after the optimizer step."""
        before = as_work(losses_before.detach())
        self._ensure_state(before)
        self._update(before, as_work(losses_after.detach()).to(before))
        self._pending = None
        self._awaiting_observe = False

    def discard_pending(self) -> None:
        self._pending = None
        self._awaiting_observe = False

    def extra_state(self) -> dict[str, Any]:
        """Subclass state to checkpoint besides the logits and Adam moments."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    def state_dict(self) -> dict[str, Any]:
        clone = lambda t: None if t is None else t.detach().clone()  # noqa: E731
        return {
            "logits": clone(self._logits),
            "exp_avg": clone(self._exp_avg),
            "exp_avg_sq": clone(self._exp_avg_sq),
            "steps": self._steps,
            "pending": clone(self._pending),
            "awaiting_observe": self._awaiting_observe,
            **self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {
            "logits",
            "exp_avg",
            "exp_avg_sq",
            "steps",
            "pending",
            "awaiting_observe",
            *self.extra_state(),
        }
        if set(state) != expected:
            raise ValueError(
                f"{self.name}: expected state keys {sorted(expected)}, got {sorted(state)}"
            )
        clone = lambda t: None if t is None else t.detach().clone()  # noqa: E731
        self._logits = clone(state["logits"])
        self._exp_avg = clone(state["exp_avg"])
        self._exp_avg_sq = clone(state["exp_avg_sq"])
        self._steps = int(state["steps"])
        self._pending = clone(state["pending"])
        self._awaiting_observe = bool(state["awaiting_observe"])
        self.load_extra_state({key: state[key] for key in self.extra_state()})
