"""Reference min-norm solver: a cvxpy quadratic programme, built once per K and re-solved."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from mokd_optim._typing import PSDMatrix, Weights


class SolverError(RuntimeError):
    """Raised when the reference QP solver does not return an optimal solution."""


@functools.lru_cache(maxsize=32)
def _problem(k: int) -> tuple[Any, Any, Any]:
    import cvxpy as cp

    weights = cp.Variable(k, nonneg=True)
    factor = cp.Parameter((k, k))
    # ||F w||^2 with F^T F = G keeps the problem DPP, so re-solving with a new G is cheap.
    problem = cp.Problem(cp.Minimize(cp.sum_squares(factor @ weights)), [cp.sum(weights) == 1])
    return problem, weights, factor


def psd_factor(gram: np.ndarray) -> np.ndarray:
    """A matrix ``F`` with ``F^T F = G`` for symmetric PSD ``G`` (negative eigenvalues clipped)."""
    eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (gram + gram.T))
    return np.sqrt(np.clip(eigenvalues, 0.0, None))[:, None] * eigenvectors.T


def solve_qp(gram: np.ndarray, solver: str = "CLARABEL") -> np.ndarray:
    """Minimise ``w^T G w`` on the simplex for one ``K x K`` float64 array; returns ``(K,)``.

    ``G`` is divided by its largest diagonal entry first (the minimiser does not change):
    unscaled, Clarabel fails outright on Gram matrices of large gradients (entries ~1e10).
    An all-zero ``G`` (every point optimal) gives the uniform weights.

    Raises:
        SolverError: ``G`` is not finite, or the solver fails or ends without a solution.
    """
    k = gram.shape[0]
    if k == 1:
        return np.ones(1)
    if not np.all(np.isfinite(gram)):
        raise SolverError(f"cvxpy: the {k}x{k} Gram matrix has non-finite entries")
    scale = float(np.max(np.diag(gram)))
    if scale <= 0.0:
        return np.full(k, 1.0 / k)
    problem, weights, factor = _problem(k)
    factor.value = psd_factor(gram / scale)
    options: dict[str, Any] = {}
    if solver == "CLARABEL":
        options = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}
    import cvxpy as cp

    try:
        problem.solve(solver=solver, **options)
    except cp.error.SolverError as error:
        raise SolverError(f"cvxpy ({solver}) failed on a {k}x{k} Gram matrix: {error}") from error
    if weights.value is None or problem.status not in ("optimal", "optimal_inaccurate"):
        raise SolverError(
            f"cvxpy ({solver}) returned status {problem.status!r} for a {k}x{k} Gram matrix"
        )
    w = np.clip(np.asarray(weights.value, dtype=np.float64), 0.0, None)
    return w / w.sum()


def cvxpy_min_norm(gram: PSDMatrix) -> Weights:
    """Batched wrapper: ``(B, K, K)`` tensor -> ``(B, K)`` tensor on the same device and dtype.

    Synchronises with the host and loops over the batch: a reference, not a training path.
    """
    array = gram.detach().to("cpu", torch.float64).numpy()
    solutions = np.stack([solve_qp(matrix) for matrix in array])
    return torch.as_tensor(solutions, dtype=gram.dtype, device=gram.device)
