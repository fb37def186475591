"""IMTL-G: impartial multi-task learning, gradient part (Liu et al., ICLR 2021)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from mokd_optim._typing import PSDMatrix, Weights
from mokd_optim._validation import check_flag
from mokd_optim.methods._base import Method, as_work, cosine_gram, inverse_norms
from mokd_optim.methods._registry import register
from mokd_optim.solvers import normalize

# Degenerate cases where the update is 0: 1^T C^+ 1 (the squared norm of the direction with unit
# projections, >= 1/K unless 1 is nearly orthogonal to the range of C) below _NULL_TOL means no
# direction has equal positive projections (e.g. unit gradients summing to zero), and
# |sum_i v_i| below _DEGENERATE_RTOL * sum_i |v_i| leaves the published normalisation undefined.
_NULL_TOL = 1e-12
_DEGENERATE_RTOL = 1e-12


def imtl_g_weights(gram: PSDMatrix, *, fix_sign: bool = True, closed_form: bool = True) -> Weights:
    """IMTL-G's weights on the raw gradients.

    The update ``d = sum_i alpha_i g_i`` has equal projections on the unit gradients,
    ``<d, u_i> = <d, u_j>``, and ``sum_i alpha_i = 1``. The paper writes
    ``alpha_{2:K} = g_1 U^T (D U^T)^{-1}`` with rows ``D_i = g_1 - g_i``, ``U_i = u_1 - u_i``;
    in Gram form ``alpha = v / sum(v)`` with ``v = N C^+ 1`` (``C`` the unit-gradient Gram
    matrix, ``N = diag(1 / ||g_i||)``), identical for linearly independent gradients and defined
    (minimum norm) otherwise.

    Args:
        gram: ``(K, K)`` Gram matrix.
        fix_sign: divide by ``|sum(v)|`` instead of ``sum(v)``. With the published
            normalisation the common projection ``<d, u_i>`` is ``1 / sum(v)``, which is negative
            for some inputs (about 6% of random 3-5 objective problems): ``d`` then increases
            every loss to first order. ``True`` (default) flips that sign; ``False`` is the
            published formula.
        closed_form: use the K = 2 closed form ``alpha = (||g_2||, ||g_1||) / (||g_1|| + ||g_2||)``
            (no host synchronisation; ``d`` bisects the two gradients).

    A zero gradient (see ``ZERO_NORM_RTOL``) has no direction and is left out (weight 0).
    Returns ``(K,)`` float64 weights.
    """
    work = normalize(as_work(gram))  # alpha does not depend on the scale of G
    k = work.shape[-1]
    if k == 2 and closed_form:
        norms, inverse = inverse_norms(work)
        present = (inverse > 0).to(work.dtype)
        both = (inverse > 0).all()
        total = norms.sum()
        pair = norms.flip(0) / torch.where(total > 0, total, torch.ones_like(total))
        return torch.where(both, pair, present)
    cosine, inverse = cosine_gram(work)
    ones = torch.ones(k, dtype=work.dtype, device=work.device)
    unit_weights = torch.linalg.pinv(cosine, hermitian=True) @ ones
    v = inverse * unit_weights
    total = v.sum()
    scale = total.abs() if fix_sign else total
    degenerate = (unit_weights.sum() <= _NULL_TOL) | (
        total.abs() <= _DEGENERATE_RTOL * v.abs().sum()
    )
    return torch.where(
        degenerate, torch.zeros_like(v), v / torch.where(degenerate, torch.ones_like(scale), scale)
    )


@register
class IMTLG(Method):
    """IMTL-G: the update whose projections on every unit gradient are equal.

    Formula (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021): ``d = sum_i alpha_i
    g_i`` with ``<d, u_1> = ... = <d, u_K>`` (``u_i = g_i / ||g_i||``) and ``sum_i alpha_i = 1``;
    see :func:`imtl_g_weights`. No objective dominates through its gradient norm: the
    direction of ``d`` does not change when a loss is rescaled.

    Options:
        fix_sign: ``True`` (default) makes the common projection positive where the published
            normalisation would make ``d`` increase every loss; ``False`` is the paper verbatim.

    Cost: one ``K x K`` pseudo-inverse (a closed form for K = 2, no host synchronisation).
    For linearly independent gradients and ``fix_sign=True`` the update conflicts with no
    objective; the direction is the same as ConFIG's, the length differs.
    """

    name = "imtl-g"

    def __init__(self, fix_sign: bool = True) -> None:
        super().__init__()
        self.fix_sign = check_flag("imtl-g", "fix_sign", fix_sign)

    @property
    def scale_invariance(self) -> str:  # type: ignore[override]
        # Rescaling a loss can flip the sign of sum(v), hence of the published update.
        return "direction" if self.fix_sign else "none"

    def weights(self, gram: Optional[PSDMatrix], losses: Tensor) -> Weights:
        if gram is None:
            raise ValueError("imtl-g needs the Gram matrix of the per-objective gradients")
        return imtl_g_weights(gram, fix_sign=self.fix_sign)

    def options(self) -> dict[str, Any]:
        return {"fix_sign": self.fix_sign}
