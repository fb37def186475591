"""Min-norm solvers: the point of the probability simplex minimising ``w^T G w``.

``min_norm(gram)`` is the only entry point most code needs. For a Gram matrix
``G = J J^T`` of K gradient vectors (rows of ``J``), ``w* = argmin_{w in simplex} w^T G w``
gives the minimum-norm element ``J^T w*`` of their convex hull (MGDA's common descent
direction). All backends accept a single ``(K, K)`` matrix or a batch ``(..., K, K)``.

Backends:

- ``"closed_form"`` -- exact, K = 2 only, no host synchronisation.
- ``"enumeration"`` -- exact, the KKT system of every support solved in one batch; any K but
  ``2^K - 1`` systems, so for small K; no host synchronisation.
- ``"projected_gradient"`` -- accelerated projected gradient + exact solve on the found
  support, any K, batched, no host synchronisation.
- ``"frank_wolfe"`` -- Frank-Wolfe with exact line search (MGDA's solver) + the same support
  solve, any K, batched, no host synchronisation.
- ``"cvxpy"`` -- a quadratic programme solved by Clarabel, any K; the reference (syncs).
- ``"auto"`` -- ``closed_form`` for K = 2, ``enumeration`` for 3 <= K <= ``ENUMERATION_MAX_K``
  (8), ``projected_gradient`` above (K = 1 gives 1).

``project_to_dual_cone(gram, u)`` solves the other small QP the methods need: the projection
of ``J^T u`` onto the cone of directions that conflict with no objective (UPGrad, DualProj).
"""

from __future__ import annotations

import torch

from mokd_optim._typing import PSDMatrix, Weights
from mokd_optim.solvers._closed_form import line_weights, min_norm_two, solve_two
from mokd_optim.solvers._cvxpy import SolverError, cvxpy_min_norm, psd_factor, solve_qp
from mokd_optim.solvers._dual_cone import DUAL_CONE_BACKENDS, project_to_dual_cone
from mokd_optim.solvers._enumeration import ENUMERATION_MAX_K, enumeration
from mokd_optim.solvers._projected_gradient import frank_wolfe, projected_gradient
from mokd_optim.solvers._simplex import (
    check_gram,
    normalize,
    project_to_simplex,
    quadratic,
    working_dtype,
)

BACKENDS = ("auto", "closed_form", "enumeration", "projected_gradient", "frank_wolfe", "cvxpy")

#: Iterations of the iterative backends before the exact support polish (see ``min_norm``).
DEFAULT_MAX_ITER = 20

__all__ = [
    "BACKENDS",
    "DEFAULT_MAX_ITER",
    "DUAL_CONE_BACKENDS",
    "ENUMERATION_MAX_K",
    "SolverError",
    "kkt_residual",
    "line_weights",
    "min_norm",
    "min_norm_two",
    "normalize",
    "project_to_dual_cone",
    "project_to_simplex",
    "psd_factor",
    "quadratic",
    "solve_qp",
]


def min_norm(
    gram: PSDMatrix, *, backend: str = "auto", max_iter: int = DEFAULT_MAX_ITER
) -> Weights:
    """Weights on the simplex minimising ``w^T G w`` for a PSD Gram matrix.

    Args:
        gram: symmetric PSD matrix, shape ``(K, K)`` or ``(..., K, K)``; any floating dtype.
            Work is done in float64 (float32 on MPS) on ``gram``'s device.
        backend: one of ``BACKENDS`` (see the module docstring).
        max_iter: iterations of the iterative backends before the exact support solve. The
            polish makes the answer exact once the support is right, and it finds the support
            from a rough start: on 3,000 (projected gradient) and 2,000 (Frank-Wolfe) random,
            rank-deficient, duplicated, opposite and 1e-8..1e8-scaled Gram matrices, 20
            iterations gave the same optimal values as 300 at a tenth of the cost
            (``benchmarks/solver_cost.py`` sweeps the budget).

    Returns:
        ``(..., K)`` non-negative weights summing to 1, in ``gram``'s dtype and device; NaN
        for a matrix with a non-finite entry (overflowed gradients), without raising.

    Raises:
        ValueError: bad shape, unknown backend, or ``"closed_form"`` with K != 2.
        SolverError: the cvxpy backend failed to solve.
    """
    check_gram(gram)
    if backend not in BACKENDS:
        raise ValueError(f"unknown min-norm backend {backend!r}; choose one of {BACKENDS}")
    k = gram.shape[-1]
    if k == 2 and backend in ("auto", "closed_form"):
        return solve_two(gram)
    batch_shape = gram.shape[:-2]
    work = normalize(gram.to(working_dtype(gram)))
    if k == 1:
        return torch.ones((*batch_shape, 1), dtype=gram.dtype, device=gram.device)
    # A non-finite matrix has no meaningful minimiser and would make the linear algebra raise:
    # solve the identity in its place and report NaN (no host synchronisation).
    finite = torch.isfinite(work).flatten(-2).all(dim=-1)
    work = torch.where(
        finite[..., None, None], work, torch.eye(k, dtype=work.dtype, device=work.device)
    )
    weights = _solve(work, backend, k, max_iter)
    return torch.where(finite[..., None], weights, torch.full_like(weights, float("nan"))).to(
        gram.dtype
    )


def _solve(work: PSDMatrix, backend: str, k: int, max_iter: int) -> Weights:
    """Dispatch a finite, unit-scale ``(..., K, K)`` batch to a backend (K >= 2; with
    ``"auto"`` or ``"closed_form"`` K = 2 never gets here: :func:`min_norm` answers it with
    ``solve_two`` first)."""
    batch_shape = work.shape[:-2]
    if backend == "auto":
        backend = "enumeration" if k <= ENUMERATION_MAX_K else "projected_gradient"
    if backend == "closed_form":
        raise ValueError(f"the closed_form backend solves K = 2 only, got K = {k}; use 'auto'")
    flat = work.reshape(-1, k, k)
    if backend == "enumeration":
        solution = enumeration(flat)
    elif backend == "projected_gradient":
        solution = projected_gradient(flat, max_iter=max_iter)
    elif backend == "frank_wolfe":
        solution = frank_wolfe(flat, max_iter=max_iter)
    else:
        solution = cvxpy_min_norm(flat)
    return solution.reshape(*batch_shape, k)


def kkt_residual(gram: PSDMatrix, w: Weights) -> torch.Tensor:
    """How far ``w`` is from satisfying the KKT conditions of the min-norm problem.

    At the optimum, with ``lambda = w^T G w``: ``(G w)_i >= lambda`` for all ``i`` and
    ``(G w)_i = lambda`` where ``w_i > 0``. Returns the largest violation, relative to the
    largest diagonal entry of ``G``; shape ``(...)``. Intended for tests and diagnostics.
    """
    work_dtype = working_dtype(gram)
    g = 0.5 * (gram + gram.transpose(-1, -2)).to(work_dtype)
    w = w.to(work_dtype)
    gw = torch.einsum("...ij,...j->...i", g, w)
    lam = (w * gw).sum(dim=-1, keepdim=True)
    below = (lam - gw).clamp_min(0.0).amax(dim=-1)
    complementary = (w * (gw - lam).abs()).amax(dim=-1)
    scale = torch.diagonal(g, dim1=-2, dim2=-1).amax(dim=-1).clamp_min(1e-300)
    return torch.maximum(below, complementary) / scale
