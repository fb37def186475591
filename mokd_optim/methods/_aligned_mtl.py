"""Aligned-MTL: independent component alignment (Senushkin, Patakin, Kuznetsov, Konushin; CVPR 2023)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from mokd_optim._typing import PSDMatrix, Weights
from mokd_optim._validation import check_choice, check_number
from mokd_optim.methods._base import Method, as_work
from mokd_optim.methods._registry import register
from mokd_optim.solvers import normalize

SCALE_MODES = ("min", "median", "rmse")
# The reference implementation truncates eigenvalues below K * eps * lambda_max with eps the
# float32 machine epsilon (it runs in float32); gradients computed in float32 carry that noise.
_FLOAT32_EPS = float(torch.finfo(torch.float32).eps)


def _scale(kept: Tensor, eigenvalues: Tensor, mode: str) -> Tensor:
    """``sigma`` of the scale mode from the kept eigenvalues (sorted descending), no host sync."""
    values = torch.where(kept, eigenvalues, torch.zeros_like(eigenvalues))
    rank = kept.sum(dim=-1)
    if mode == "min":
        smallest = torch.where(kept, eigenvalues, torch.full_like(eigenvalues, float("inf"))).amin(
            dim=-1
        )
        return torch.where(rank > 0, smallest, torch.zeros_like(smallest)).clamp_min(0.0).sqrt()
    if mode == "median":
        # torch.median's lower median of r values: index r // 2 in descending order.
        index = (rank // 2).clamp_max(eigenvalues.shape[-1] - 1)
        return values.gather(-1, index[..., None])[..., 0].clamp_min(0.0).sqrt()
    mean = values.sum(dim=-1) / rank.clamp_min(1).to(values.dtype)
    return mean.clamp_min(0.0).sqrt()


def _closed_form_two(gram: PSDMatrix, mode: str, rtol: float) -> Weights:
    """K = 2 without an eigen-solver: ``B 1`` with ``B = sigma G^{-1/2}`` or the top projector.

    Eigenvalues ``l1 >= l2`` from the trace and determinant (``l2 = det / l1``, no
    cancellation). Full rank: ``G^{-1/2} 1 = (g22 + s - g12, g11 + s - g12) / (s (sqrt l1 +
    sqrt l2))`` with ``s = sqrt(det)``. Rank one (``l2`` truncated): ``B = v1 v1^T =
    (G - l2 I) / (l1 - l2)``.
    """
    g11, g22 = gram[0, 0], gram[1, 1]
    g12 = 0.5 * (gram[0, 1] + gram[1, 0])
    trace = g11 + g22
    determinant = (g11 * g22 - g12 * g12).clamp_min(0.0)
    spread = torch.sqrt((g11 - g22) ** 2 + 4.0 * g12 * g12)
    l1 = 0.5 * (trace + spread)
    has_one = l1 > 0
    safe_l1 = torch.where(has_one, l1, torch.ones_like(l1))
    l2 = torch.where(has_one, determinant / safe_l1, torch.zeros_like(l1))
    full = has_one & (l2 > rtol * l1)
    s = torch.sqrt(determinant)
    root1, root2 = torch.sqrt(l1), torch.sqrt(l2)
    inverse_sqrt_ones = torch.stack([g22 + s - g12, g11 + s - g12])
    if mode in ("min", "median"):  # the lower median of two values is the smaller one
        # sigma = sqrt(l2) and sqrt(l2) / s = 1 / sqrt(l1)
        denominator = torch.where(full, root1 * (root1 + root2), torch.ones_like(l1))
    else:
        sigma = torch.sqrt(0.5 * (l1 + l2))
        denominator = torch.where(full, s * (root1 + root2) / sigma, torch.ones_like(l1))
    w_full = inverse_sqrt_ones / denominator
    gap = torch.where(full | ~has_one, torch.ones_like(l1), l1 - l2)
    w_one = torch.stack([g11 - l2 + g12, g12 + g22 - l2]) / gap
    return torch.where(full, w_full, torch.where(has_one, w_one, torch.zeros_like(w_one)))


def aligned_mtl_weights(
    gram: PSDMatrix,
    *,
    scale_mode: str = "min",
    rtol: Optional[float] = None,
    closed_form: bool = True,
) -> Weights:
    """Aligned-MTL's weights on the raw gradients, ``w = B 1``.

    With ``G = V diag(lambda) V^T`` (eigenvalues below ``rtol * lambda_max`` dropped, rank
    ``r``), ``B = sigma V_r diag(lambda_r)^{-1/2} V_r^T``: the rows of ``B J`` are orthogonal with
    equal norms ``sigma`` (the aligned gradients) and the update is their sum. ``sigma`` is the
    smallest kept singular value (``"min"``), the lower median (``"median"``) or the root mean
    square (``"rmse"``). ``rtol`` defaults to ``K * eps_float32`` as in the reference code.
    K = 2 uses a closed form (no host synchronisation); general K calls
    ``torch.linalg.eigh``. ``(K, K)`` -> ``(K,)`` float64.
    """
    if scale_mode not in SCALE_MODES:
        raise ValueError(
            f"aligned-mtl: unknown scale_mode {scale_mode!r}; choose one of {SCALE_MODES}"
        )
    work = normalize(as_work(gram))  # B is invariant to the scale of G
    k = work.shape[-1]
    tolerance = k * _FLOAT32_EPS if rtol is None else float(rtol)
    if k == 2 and closed_form:
        return _closed_form_two(work, scale_mode, tolerance)
    eigenvalues, vectors = torch.linalg.eigh(work)
    eigenvalues, vectors = eigenvalues.flip(-1), vectors.flip(-1)  # descending
    largest = eigenvalues[..., :1]
    kept = (eigenvalues > tolerance * largest) & (largest > 0)
    sigma = _scale(kept, eigenvalues, scale_mode)
    inverse_root = torch.where(
        kept,
        torch.rsqrt(torch.where(kept, eigenvalues, torch.ones_like(eigenvalues))),
        torch.zeros_like(eigenvalues),
    )
    # w = sigma V diag(1 / sqrt(lambda)) V^T 1
    return sigma * (vectors * inverse_root).matmul(vectors.sum(dim=0))


@register
class AlignedMTL(Method):
    """Aligned-MTL: make the gradient system orthogonal and equally scaled, then sum.

    Formula (Senushkin et al., "Independent Component Alignment for Multi-Task Learning", CVPR
    2023): ``J_aligned = sigma V Lambda^{-1/2} V^T J`` from the eigendecomposition of
    ``G = J J^T`` (its condition number becomes 1), and ``d = sum of the rows of J_aligned``;
    see :func:`aligned_mtl_weights`.

    Options:
        scale_mode: ``"min"`` (default, the paper), ``"median"`` or ``"rmse"`` -- which singular
            value sets the common norm ``sigma`` of the aligned gradients.
        rtol: relative eigenvalue threshold of the rank truncation (default ``K * eps_float32``).

    Cost: one ``K x K`` eigendecomposition (synchronises on CUDA); a closed form for K = 2.
    The update does not conflict with any objective for orthogonal-ish gradients but can in
    general; with ``"min"`` its length follows the smallest singular value.
    """

    name = "aligned-mtl"

    def __init__(self, scale_mode: str = "min", rtol: Optional[float] = None) -> None:
        super().__init__()
        check_choice("aligned-mtl", "scale_mode", scale_mode, SCALE_MODES)
        if rtol is not None:
            check_number("aligned-mtl", "rtol", rtol, low=0.0, high=1.0, high_open=True)
        self.scale_mode = scale_mode
        self.rtol = rtol

    def weights(self, gram: Optional[PSDMatrix], losses: Tensor) -> Weights:
        if gram is None:
            raise ValueError("aligned-mtl needs the Gram matrix of the per-objective gradients")
        return aligned_mtl_weights(gram, scale_mode=self.scale_mode, rtol=self.rtol)

    def options(self) -> dict[str, Any]:
        return {"scale_mode": self.scale_mode, "rtol": self.rtol}
