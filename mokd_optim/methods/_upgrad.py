"""UPGrad: unconflicting projection of gradients (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from mokd_optim._typing import PSDMatrix, Weights
from mokd_optim._validation import check_choice
from mokd_optim.methods._base import Method, as_work
from mokd_optim.methods._registry import register
from mokd_optim.solvers import DUAL_CONE_BACKENDS, project_to_dual_cone


def upgrad_weights(gram: PSDMatrix, *, backend: str = "auto") -> Weights:
    """UPGrad's weights: ``d = (1/K) sum_i proj(g_i)``, ``proj`` onto ``{x : J x >= 0}``.

    Each projection is ``J^T v^(i)`` with ``v^(i) = e_i / K + mu^(i)``, ``mu^(i) >= 0`` the
    solution of a K-variable QP on the Gram matrix (:func:`~mokd_optim.solvers.project_to_dual_cone`,
    the K problems batched); ``w = sum_i v^(i)``. Backends: ``"closed_form"`` for K = 2 (where
    UPGrad coincides with PCGrad's mean), ``"enumeration"`` (exact, small K),
    ``"projected_gradient"`` for any K, ``"auto"``.
    ``(K, K)`` -> ``(K,)`` float64, no host synchronisation.
    """
    work = as_work(gram)
    k = work.shape[-1]
    targets = torch.eye(k, dtype=work.dtype, device=work.device) / k
    return project_to_dual_cone(work.expand(k, k, k), targets, backend=backend).sum(dim=0)


class DualConeMethod(Method):
    """Shared shell of the methods whose weights come from dual-cone QPs (UPGrad, DualProj):
    the ``backend`` option and its validation; subclasses give ``solve(gram, backend=)``."""

    conflict_free = True
    pareto_stationary = True

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        check_choice(self.name, "backend", backend, DUAL_CONE_BACKENDS)
        self.backend = backend

    @staticmethod
    def solve(gram: PSDMatrix, *, backend: str) -> Weights:
        raise NotImplementedError

    def weights(self, gram: Optional[PSDMatrix], losses: Tensor) -> Weights:
        if gram is None:
            raise ValueError(f"{self.name} needs the Gram matrix of the per-objective gradients")
        return self.solve(gram, backend=self.backend)

    def options(self) -> dict[str, Any]:
        return {"backend": self.backend}


@register
class UPGrad(DualConeMethod):
    """UPGrad: average of each gradient projected onto the cone of non-conflicting directions.

    Formula (Quinton & Rey, 2024, torchjd): ``d = (1/K) sum_i argmin_{x : J x >= 0} ||x - g_i||``.
    Every projection, hence ``d``, conflicts with no objective; ``d = 0`` when a strictly
    positive combination of the gradients vanishes; scaling one gradient scales its projection
    (``d`` is linear in such scalings, "linear under scaling" in the paper).

    Options:
        backend: the dual-cone QP solver (``"auto"``: closed form for K = 2, else an
            exact enumeration of the active sets up to K = 6, above an accelerated projected
            gradient with an exact active-set finish).

    Cost: K batched QPs with K variables each, on the Gram matrix only; no host
    synchronisation. No regularisation of ``G`` is applied (torchjd adds ``1e-4 I`` by default);
    the projections are exact.
    """

    name = "upgrad"
    solve = staticmethod(upgrad_weights)
