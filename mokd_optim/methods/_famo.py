"""FAMO: fast adaptive multitask optimisation (Liu et al., NeurIPS 2023, arXiv 2306.03792)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor

from mokd_optim._typing import Weights
from mokd_optim._validation import check_number, check_per_objective
from mokd_optim.methods._amortized import AmortizedLogits
from mokd_optim.methods._registry import register


@register
class FAMO(AmortizedLogits):
    """FAMO: amortised weights that equalise the rates at which the log-losses decrease.

    Formula (Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023), with
    ``D_i = L_i - m_i + eps`` (``m_i`` a known minimum of loss ``i``, default 0):

    - backward of ``sum_i pi_i log D_i / c``, ``c = sum_i pi_i / D_i`` (detached), i.e. weights
      ``w_i = (pi_i / D_i) / sum_j (pi_j / D_j)`` on the raw gradients (a convex combination);
    - after the step, ``delta_i = log D_i(before) - log D_i(after)`` and an Adam step (lr 0.025,
      L2 weight decay 0.01) on the logits along ``(d softmax / d xi)^T delta``.

    Options:
        lr, weight_decay: of the logits' Adam (defaults are the paper's 0.025 and 0.01).
        min_losses: known minima ``m_i`` (mapping name -> value or a sequence; default 0).
        eps: added inside the logarithm (default 1e-8, the reference code's).
        observe: ``"same_batch"`` (default, the paper: pass a closure that recomputes the
            losses on the same batch to ``step``, or call ``observe``) or ``"next_batch"``
            (zero overhead: the next batch's losses serve as "after"). See
            :mod:`mokd_optim.methods._amortized`.

    Cost: one backward of the weighted sum per step (no per-objective gradients), plus one
    no-grad forward with ``"same_batch"``. The reference code also clips the gradient norm
    (``max_norm=1.0`` on the optimizer). A loss below its minimum counts as at the minimum
    (``D_i = eps``).
    """

    name = "famo"

    def __init__(
        self,
        lr: float = 0.025,
        weight_decay: float = 0.01,
        min_losses: Optional[Union[Mapping[str, float], Sequence[float]]] = None,
        eps: float = 1e-8,
        observe: str = "same_batch",
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, observe=observe)
        check_number("famo", "eps", eps, low=0.0)
        if min_losses is not None:
            check_per_objective("famo", "min_losses", min_losses)
        self.min_losses = min_losses
        self.log_eps = float(eps)
        self._minima: Optional[tuple[float, ...]] = None

    def bind(self, names: Any) -> None:
        super().bind(names)
        names = self.objective_names
        if self.min_losses is None:
            self._minima = tuple(0.0 for _ in names)
        elif isinstance(self.min_losses, Mapping):
            unknown = sorted(set(self.min_losses) - set(names))
            if unknown:
                raise ValueError(
                    f"famo: min_losses given for {unknown}, which are not objectives {list(names)}"
                )
            self._minima = tuple(float(self.min_losses.get(name, 0.0)) for name in names)
        else:
            if len(self.min_losses) != len(names):
                raise ValueError(
                    f"famo: {len(self.min_losses)} min_losses for {len(names)} objectives {list(names)}"
                )
            self._minima = tuple(float(value) for value in self.min_losses)

    def _shifted(self, losses: Tensor) -> Tensor:
        """``D = max(L - m, 0) + eps``: a loss below its stated minimum counts as at the minimum."""
        if self._minima is None or len(self._minima) != losses.shape[0]:
            return losses.clamp_min(0.0) + self.log_eps
        minima = torch.tensor(self._minima, dtype=losses.dtype, device=losses.device)
        return (losses - minima).clamp_min(0.0) + self.log_eps

    def log_values(self, losses: Tensor) -> Tensor:
        return self._shifted(losses).log()

    def combine(self, pi: Tensor, losses: Tensor) -> Weights:
        q = pi / self._shifted(losses)
        return q / q.sum()

    def options(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "min_losses": self.min_losses,
            "eps": self.log_eps,
            "observe": self.observe_mode,
        }
