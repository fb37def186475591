"""ConFIG: conflict-free updates with equal unit projections (Liu, Chu, Thuerey; ICLR 2025)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from mokd_optim._typing import PSDMatrix, Weights
from mokd_optim.methods._base import Method, as_work, cosine_gram, inverse_norms
from mokd_optim.methods._registry import register
from mokd_optim.solvers import normalize

_NULL_TOL = 1e-12


def config_weights(gram: PSDMatrix, *, closed_form: bool = True) -> Weights:
    """ConFIG's weights on the raw gradients.

    Direction: ``y = U^+ 1`` (``U`` the matrix of unit gradients as rows; the minimum-norm
    ``y`` with ``<y, u_i> = 1`` for all ``i``), ``g_u = y / ||y||``. Length: the sum of the
    projections, ``d = (sum_i <g_i, g_u>) g_u``. In Gram form ``y = J^T N C^+ 1`` (``C`` the
    unit-gradient Gram matrix, ``N = diag(1 / ||g_i||)``).

    For K = 2 (``closed_form``) ``d = (||g_1|| + ||g_2||) / 2 (u_1 + u_2)``, i.e.
    ``w_i = (||g_1|| + ||g_2||) / (2 ||g_i||)``, with no host synchronisation. A zero gradient
    (see ``ZERO_NORM_RTOL``) has no direction and is left out (then ``d`` is the other gradient
    for K = 2). Returns ``(K,)`` float64 weights.
    """
    work = normalize(as_work(gram))  # the weights do not depend on the scale of G
    k = work.shape[-1]
    if k == 2 and closed_form:
        norms, inverse = inverse_norms(work)
        both = (inverse > 0).all()
        return torch.where(both, 0.5 * norms.sum() * inverse, (inverse > 0).to(work.dtype))
    cosine, inverse = cosine_gram(work)
    ones = torch.ones(k, dtype=work.dtype, device=work.device)
    unit_weights = torch.linalg.pinv(cosine, hermitian=True) @ ones  # y = U^T unit_weights
    y = inverse * unit_weights  # the weights of y on the raw g_i
    gy = (work * y).sum(dim=-1)  # <g_i, y>
    # ||y||^2 = 1^T C^+ 1 is >= 1 when the unit projections can all equal 1; below _NULL_TOL the
    # vector 1 is (numerically) orthogonal to the range of C -- e.g. unit gradients summing to
    # zero -- and the direction is rounding noise: the update is 0.
    squared_norm = (unit_weights * ones).sum()
    valid = squared_norm > _NULL_TOL
    length_ratio = gy.sum() / torch.where(valid, squared_norm, torch.ones_like(squared_norm))
    return torch.where(valid, length_ratio * y, torch.zeros_like(y))


@register
class ConFIG(Method):
    """ConFIG: the direction with equal projections on all unit gradients, scaled by their sum.

    Formula (Liu, Chu, Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed
    Neural Networks", ICLR 2025): ``g_u = U^+ 1 / ||U^+ 1||`` and
    ``d = (sum_i <g_i, g_u>) g_u``; see :func:`config_weights`. For linearly independent
    gradients ``<d, u_i>`` is the same positive number for every objective (no conflict, no
    dominance) and the direction does not change when a loss is rescaled; it is IMTL-G's
    direction with a different length.

    Options: none (the paper's equal weighting of the unit vectors and its default length).
    Cost: one ``K x K`` pseudo-inverse; closed form for K = 2 (no host synchronisation).
    """

    name = "config"
    scale_invariance = "direction"

    def weights(self, gram: Optional[PSDMatrix], losses: Tensor) -> Weights:
        if gram is None:
            raise ValueError("config needs the Gram matrix of the per-objective gradients")
        return config_weights(gram)

    def options(self) -> dict[str, Any]:
        return {}
