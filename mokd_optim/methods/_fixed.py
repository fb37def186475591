"""Fixed weights: the plain sum and the classic hand-weighted KD baseline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch
from torch import Tensor

from mokd_optim._typing import PSDMatrix, Weights
from mokd_optim._validation import check_per_objective
from mokd_optim.methods._base import Method
from mokd_optim.methods._registry import register


@register
class Sum(Method):
    """``w_i = 1``: the gradient of the plain sum of the losses."""

    name = "sum"
    needs_gradients = False

    def weights(self, gram: Optional[PSDMatrix], losses: Tensor) -> Weights:
        return torch.ones_like(losses)


@register
class Weighted(Method):
    """Fixed weights ``w_i`` (the classic KD baseline ``a_task L_task + a_kd L_kd``).

    Options: ``weights`` -- a mapping objective name -> weight (names not listed get 1), or a
    sequence with one weight per objective in order. Raises ``ValueError`` when a name is not an
    objective or the length does not match.
    """

    name = "weighted"
    needs_gradients = False

    def __init__(self, weights: Union[Mapping[str, float], Sequence[float]]) -> None:
        super().__init__()
        # Finite and >= 0: a NaN or inf weight would turn every parameter into NaN at the
        # first step, and a negative one would train against that objective.
        self.fixed: Union[dict[str, float], tuple[float, ...]] = check_per_objective(
            "weighted", "weights", weights, low=0.0
        )
        self._resolved: tuple[float, ...] = ()

    def bind(self, names: Any) -> None:
        super().bind(names)
        names = self.objective_names
        if isinstance(self.fixed, dict):
            unknown = sorted(set(self.fixed) - set(names))
            if unknown:
                raise ValueError(
                    f"weighted: weights given for {unknown}, which are not objectives {list(names)}"
                )
            self._resolved = tuple(self.fixed.get(name, 1.0) for name in names)
        else:
            if len(self.fixed) != len(names):
                raise ValueError(
                    f"weighted: {len(self.fixed)} weights for {len(names)} objectives {list(names)}"
                )
            self._resolved = self.fixed

    def weights(self, gram: Optional[PSDMatrix], losses: Tensor) -> Weights:
        return torch.tensor(self._resolved, dtype=losses.dtype, device=losses.device)

    def options(self) -> dict[str, Any]:
        return {"weights": self.fixed}
