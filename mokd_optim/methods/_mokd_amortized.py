"""Amortised MoKD: the trade-off weights learnt from loss changes (METHOD.md "Amortized weights")."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from mokd_optim._typing import Weights
from mokd_optim._validation import check_choice, check_number
from mokd_optim.methods._amortized import AmortizedLogits
from mokd_optim.methods._registry import register

STEP_RULES = ("convex", "log")


@register
class MoKDAmortized(AmortizedLogits):
    """MoKD's practical algorithm: trade-off weights ``pi = softmax(xi)`` without per-objective gradients.

    Algorithm (Hayder et al., arXiv 2505.08170 / DTO-KD, ICLR 2026; details inferred from FAMO,
    which the paper follows -- see shared METHOD.md): one backward of
    ``sum_i pi_i log L_i / c`` with ``c = sum_i pi_i / L_i`` detached, the optimizer step, then
    ``delta_i = log L_i(before) - log L_i(after)`` and an Adam step (lr 0.025, weight decay 0.01)
    on ``xi`` along ``(d softmax / d xi)^T delta``.

    How it differs from ``"famo"`` (the update rule is the same family; these are our choices):

    - **Relative loss floor.** Each loss is replaced by ``max(L_i, floor * L_i^0)``, ``L_i^0`` its
      first value seen (kept in the state). A KL distillation loss that approaches 0 would
      otherwise take almost all the weight (``w_i ~ pi_i / L_i``) and its log-change would
      dominate ``delta``. Being relative, the floor keeps the invariance to rescaling a loss.
      FAMO instead shifts by known minima and adds ``1e-8``.
    - **Step rule.** ``"convex"`` (default) is FAMO's normalised combination
      ``w_i = (pi_i / L_i) / sum_j (pi_j / L_j)``; ``"log"`` keeps ``w_i = pi_i / L_i``, the
      gradient of ``sum_i pi_i log L_i`` (MoKD's log rule; its length grows like ``1 / L``).
      The exact method's ``"anchor"`` rule needs gradient norms and has no amortised version.
    - Same defaults otherwise (the paper reports FAMO's lr and weight decay).

    Options:
        lr, weight_decay: of the logits' Adam.
        floor: relative loss floor (default 1e-3; 0 disables it).
        step: ``"convex"`` (default) or ``"log"``.
        observe: ``"same_batch"`` (default) or ``"next_batch"``, see
            :mod:`mokd_optim.methods._amortized`.

    Cost: one backward of the weighted sum per step, plus one no-grad forward with
    ``"same_batch"``. Needs strictly positive losses.
    """

    name = "mokd-amortized"

    def __init__(
        self,
        lr: float = 0.025,
        weight_decay: float = 0.01,
        floor: float = 1e-3,
        step: str = "convex",
        observe: str = "same_batch",
    ) -> None:
        super().__init__(lr=lr, weight_decay=weight_decay, observe=observe)
        check_number("mokd-amortized", "floor", floor, low=0.0, high=1.0, high_open=True)
        check_choice("mokd-amortized", "step rule", step, STEP_RULES)
        self.floor = float(floor)
        self.step = step
        self._reference: Optional[Tensor] = None

    def _floored(self, losses: Tensor) -> Tensor:
        if self._reference is None:
            self._reference = losses.detach().clone()
        return torch.maximum(losses, self.floor * self._reference.to(losses))

    def log_values(self, losses: Tensor) -> Tensor:
        return self._floored(losses).log()

    def combine(self, pi: Tensor, losses: Tensor) -> Weights:
        q = pi / self._floored(losses)
        return q / q.sum() if self.step == "convex" else q

    def extra_state(self) -> dict[str, Any]:
        return {"reference": None if self._reference is None else self._reference.clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        reference = state["reference"]
        self._reference = None if reference is None else reference.clone()

    def options(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "floor": self.floor,
            "step": self.step,
            "observe": self.observe_mode,
        }
