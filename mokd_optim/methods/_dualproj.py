"""DualProj: the mean gradient projected onto the dual cone (Quinton & Rey 2024; after GEM, Lopez-Paz & Ranzato 2017)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from mokd_optim._typing import PSDMatrix, Weights
from mokd_optim.methods._base import Method, as_work
from mokd_optim.methods._registry import register
from mokd_optim.solvers import DUAL_CONE_BACKENDS, project_to_dual_cone


def dualproj_weights(gram: PSDMatrix, *, backend: str = "auto") -> Weights:
    """DualProj's weights: ``d = argmin_{x : J x >= 0} ||x - g_0||`` with ``g_0`` the mean.

    ``w = 1/K + mu``, ``mu >= 0`` from one K-variable QP on the Gram matrix
    (:func:`~mokd_optim.solvers.project_to_dual_cone`). ``(K, K)`` -> ``(K,)`` float64, no host
    synchronisation; closed form for K = 2.
    """
    work = as_work(gram)
    k = work.shape[-1]
    mean = torch.full((k,), 1.0 / k, dtype=work.dtype, device=work.device)
    return project_to_dual_cone(work, mean, backend=backend)


@register
class DualProj(Method):
    """DualProj: the mean gradient, projected onto the cone of non-conflicting directions.

    Formula (Quinton & Rey, 2024, torchjd; the projection of GEM, Lopez-Paz & Ranzato 2017):
    ``d = argmin_{x : <g_i, x> >= 0 for all i} ||x - (1/K) sum_i g_i||``. It changes the mean
    gradient as little as possible to remove every conflict; ``d = 0`` when a strictly positive
    combination of the gradients vanishes.

    Options:
        backend: the dual-cone QP solver (see :class:`UPGrad`).

    Cost: one K-variable QP on the Gram matrix; no host synchronisation.
    """

    name = "dualproj"
    conflict_free = True
    pareto_stationary = True

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        if backend not in DUAL_CONE_BACKENDS:
            raise ValueError(
                f"dualproj: unknown backend {backend!r}; choose one of {DUAL_CONE_BACKENDS}"
            )
        self.backend = backend

    def weights(self, gram: Optional[PSDMatrix], losses: Tensor) -> Weights:
        if gram is None:
            raise ValueError("dualproj needs the Gram matrix of the per-objective gradients")
        return dualproj_weights(gram, backend=self.backend)

    def options(self) -> dict[str, Any]:
        return {"backend": self.backend}
