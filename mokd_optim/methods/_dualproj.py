"""DualProj: the mean gradient projected onto the dual cone (Quinton & Rey 2024; after GEM, Lopez-Paz & Ranzato 2017)."""

from __future__ import annotations

import torch

from mokd_optim._typing import PSDMatrix, Weights
from mokd_optim.methods._base import as_work
from mokd_optim.methods._registry import register
from mokd_optim.methods._upgrad import DualConeMethod
from mokd_optim.solvers import project_to_dual_cone


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
class DualProj(DualConeMethod):
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
    solve = staticmethod(dualproj_weights)
