"""CAGrad: conflict-averse gradient descent (Liu, Liu, Jin, Stone, Liu; NeurIPS 2021)."""

from __future__ import annotations

import functools
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from mokd_optim._typing import PSDMatrix, Weights
from mokd_optim._validation import check_choice, check_number
from mokd_optim.methods._base import Method, as_work
from mokd_optim.methods._registry import register
from mokd_optim.solvers import SolverError, normalize, project_to_dual_cone, psd_factor
from mokd_optim.solvers._simplex import _solve_on_support

REDUCTIONS = ("sum", "mean")
RESCALES = (0, 1, 2)
SOLVERS = ("auto", "closed_form", "enumerate", "cvxpy")

# The exact "enumerate" solver visits every support of the simplex: 2^K - 1 small solves,
# batched. Beyond this K the "auto" solver switches to the cvxpy second-order cone programme.
MAX_ENUMERATE = 12

# ||g_w*|| below this fraction of the largest gradient norm is the kink of the dual objective
# (g_w* = 0), where the dual formula does not give the primal solution (see cagrad_weights).
# A float64 Gram matrix resolves ||g_w|| to about sqrt(eps) of the gradient norms, so smaller
# values are indistinguishable from the kink.
_KINK_RTOL = 1e-7
_FEASIBILITY_TOL = 1e-9


def _dual_objective(gram: PSDMatrix, w: Weights, radius: Tensor) -> Tensor:
    """``F(w) = w^T G b + r sqrt(w^T G w)`` with ``b = 1/K``; ``(K, K)``, ``(..., K)`` -> ``(...)``."""
    gb = gram.mean(dim=-1)
    linear = (w * gb).sum(dim=-1)
    # Broadcast-and-sum rather than a matrix product: K is tiny, and BLAS calls on many
    # candidates cost more in thread wake-ups than in arithmetic.
    gw = (w.unsqueeze(-1) * gram).sum(dim=-2)
    quadratic = (gw * w).sum(dim=-1).clamp_min(0.0)
    return linear + radius * quadratic.sqrt()


def _closed_form_two(gram: PSDMatrix, radius: Tensor) -> Weights:
    """Exact minimiser of the dual for K = 2, no host synchronisation.

    With ``w = (t, 1 - t)``: ``F(t) = const + beta t + r sqrt(A t^2 + B t + C)``, convex in
    ``t``. Its stationary point solves ``(2 A t + B) / (2 sqrt(q(t))) = -beta / r = kappa``,
    which exists iff ``kappa^2 < A``; then ``t = t_0 + sign(kappa) sqrt(kappa^2 D / (4 A^2
    (A - kappa^2)))`` with ``t_0 = -B / (2A)`` and ``D = 4AC - B^2 >= 0``. Otherwise ``F`` is
    monotone and the minimiser is the vertex ``beta`` points away from. Clipped to ``[0, 1]``.
    """
    g11, g22, g12 = gram[..., 0, 0], gram[..., 1, 1], gram[..., 0, 1]
    beta = 0.5 * (g11 - g22)
    a = (g11 + g22 - 2.0 * g12).clamp_min(0.0)
    b = 2.0 * (g12 - g22)
    c = g22
    positive_radius = radius > 0
    safe_radius = torch.where(positive_radius, radius, torch.ones_like(radius))
    kappa = -beta / safe_radius
    interior = positive_radius & (a > kappa * kappa)
    safe_a = torch.where(a > 0, a, torch.ones_like(a))
    discriminant = (4.0 * a * c - b * b).clamp_min(0.0)
    gap = torch.where(interior, a - kappa * kappa, torch.ones_like(a))
    offset = torch.sign(kappa) * torch.sqrt(
        kappa * kappa * discriminant / (4.0 * safe_a * safe_a * gap)
    )
    t_interior = offset - b / (2.0 * safe_a)
    half = torch.full_like(beta, 0.5)
    t_edge = torch.where(
        beta > 0, torch.zeros_like(beta), torch.where(beta < 0, torch.ones_like(beta), half)
    )
    t = torch.where(interior, t_interior, t_edge)
    t = torch.where(positive_radius, t, half).clamp(0.0, 1.0)
    return torch.stack([t, 1.0 - t], dim=-1)


@functools.lru_cache(maxsize=16)
def _supports(k: int) -> Tensor:
    """All non-empty subsets of ``range(k)`` as a ``(2^k - 1, k)`` bool tensor (on the CPU)."""
    codes = torch.arange(1, 2**k)
    return ((codes[:, None] >> torch.arange(k)) & 1).bool()


def _enumerate(gram: PSDMatrix, radius: Tensor) -> Weights:
    """Exact minimiser of the dual for any (small) K, no host synchronisation.

    On a support ``S`` where ``g_w != 0`` the stationarity conditions ``(G b)_S + r (G w)_S /
    ||g_w|| = mu 1_S`` together with ``sum(w) = 1`` have one solution with ``||g_w|| > 0``:
    with ``p = G_SS^+ 1``, ``q = G_SS^+ (G b)_S``, ``a = 1.p``, ``b' = 1.q``, ``c' = (G b)_S.q``,
    ``delta = sqrt(b'^2 - a (c' - r^2))``, ``mu = (b' + delta) / a`` and
    ``w_S = (mu p - q) / delta`` (then ``||g_w|| = r / delta``). A minimiser with the smallest support has linearly independent gradients on it, so it is one
    of these candidates; the kink ``g_w = 0`` is covered by adding, per support, the
    minimum-norm point of the affine hull. Every feasible candidate is scored with the true
    objective and the best one is returned. ``(K, K)`` -> ``(K,)``.
    """
    k = gram.shape[-1]
    supports = _supports(k).to(gram.device)
    count = supports.shape[0]
    grams = gram.expand(count, k, k)
    mask = supports.to(gram.dtype)
    gb = gram.mean(dim=-1).expand(count, k)
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device).expand(count, k, k)
    both = supports[:, :, None] & supports[:, None, :]
    system = torch.where(both, grams, torch.zeros_like(grams))
    system = torch.where(supports[:, :, None], system, eye)
    inverse = torch.linalg.pinv(system, hermitian=True)
    gb_s = gb * mask
    p = (inverse @ mask[..., None])[..., 0] * mask
    q = (inverse @ gb_s[..., None])[..., 0] * mask
    a = (mask * p).sum(dim=-1)
    bq = (mask * q).sum(dim=-1)
    cq = (gb_s * q).sum(dim=-1)
    r2 = radius * radius
    discriminant = bq * bq - a * (cq - r2)
    delta = discriminant.clamp_min(0.0).sqrt()
    valid = (a > 0) & (delta > 0)
    safe_a = torch.where(valid, a, torch.ones_like(a))
    safe_delta = torch.where(valid, delta, torch.ones_like(delta))
    mu = (bq + delta) / safe_a
    stationary = (mu[:, None] * p - q) / safe_delta[:, None]
    affine = _solve_on_support(grams, supports)
    vertices = torch.eye(k, dtype=gram.dtype, device=gram.device)
    candidates = torch.cat([stationary, affine, vertices], dim=0)
    feasible = torch.cat([valid, torch.ones(count + k, dtype=torch.bool, device=gram.device)])
    feasible = (
        feasible
        & (candidates >= -_FEASIBILITY_TOL).all(dim=-1)
        & torch.isfinite(candidates).all(dim=-1)
    )
    candidates = candidates.clamp_min(0.0)
    total = candidates.sum(dim=-1, keepdim=True)
    feasible = feasible & (total[:, 0] > 0)
    candidates = candidates / torch.where(total > 0, total, torch.ones_like(total))
    scores = _dual_objective(gram, candidates, radius)
    scores = torch.where(feasible, scores, torch.full_like(scores, float("inf")))
    return candidates[scores.argmin()]


@functools.lru_cache(maxsize=8)
def _cvxpy_problem(k: int) -> tuple[Any, Any, Any, Any]:
    import cvxpy as cp

    w = cp.Variable(k, nonneg=True)
    scaled_factor = cp.Parameter((k, k))  # r F with F^T F = G: keeps the problem DPP
    gb = cp.Parameter(k)
    problem = cp.Problem(cp.Minimize(gb @ w + cp.norm(scaled_factor @ w, 2)), [cp.sum(w) == 1])
    return problem, w, scaled_factor, gb


def _cvxpy(gram: PSDMatrix, radius: Tensor) -> Weights:
    """The dual as a second-order cone programme (Clarabel); synchronises with the host."""
    import cvxpy as cp

    k = gram.shape[-1]
    array = gram.detach().to("cpu", torch.float64).numpy()
    problem, w, scaled_factor, gb = _cvxpy_problem(k)
    scaled_factor.value = float(radius) * psd_factor(array)
    gb.value = array.mean(axis=1)
    try:
        problem.solve(solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    except cp.error.SolverError as error:
        raise SolverError(f"cagrad: cvxpy failed on a {k}x{k} Gram matrix: {error}") from error
    if w.value is None or problem.status not in ("optimal", "optimal_inaccurate"):
        raise SolverError(
            f"cagrad: cvxpy returned status {problem.status!r} for a {k}x{k} Gram matrix"
        )
    solution = np.clip(np.asarray(w.value, dtype=np.float64), 0.0, None)
    return torch.as_tensor(solution / solution.sum(), dtype=gram.dtype, device=gram.device)


def cagrad_dual_weights(gram: PSDMatrix, c: float, *, solver: str = "auto") -> Weights:
    """``w*`` minimising ``F(w) = <g_w, g_0> + c ||g_0|| ||g_w||`` on the simplex.

    ``g_w = sum_i w_i g_i`` and ``g_0`` is the mean gradient. Solvers: ``"closed_form"``
    (K = 2), ``"enumerate"`` (exact, every support, K <= 12 recommended), ``"cvxpy"`` (a cone
    programme) and ``"auto"`` (closed form, then enumerate up to ``MAX_ENUMERATE``, then
    cvxpy). Only ``"cvxpy"`` synchronises with the host. ``(K, K)`` -> ``(K,)`` float64.

    Raises:
        ValueError: unknown solver, or ``"closed_form"`` with K != 2.
        SolverError: the cvxpy solver failed.
    """
    if solver not in SOLVERS:
        raise ValueError(f"cagrad: unknown solver {solver!r}; choose one of {SOLVERS}")
    work = normalize(as_work(gram))  # w* does not depend on the scale of G
    k = work.shape[-1]
    radius = c * work.mean().clamp_min(0.0).sqrt()  # c ||g_0||: ||g_0||^2 = b^T G b = mean(G)
    if solver == "auto":
        solver = "closed_form" if k == 2 else ("enumerate" if k <= MAX_ENUMERATE else "cvxpy")
    if k == 1:
        return torch.ones(1, dtype=work.dtype, device=work.device)
    if solver == "closed_form":
        if k != 2:
            raise ValueError(f"cagrad: the closed_form solver handles K = 2 only, got K = {k}")
        return _closed_form_two(work, radius)
    if solver == "enumerate":
        return _enumerate(work, radius)
    return _cvxpy(work, radius)


def cagrad_weights(
    gram: PSDMatrix,
    c: float = 0.4,
    *,
    rescale: int = 1,
    reduction: str = "sum",
    solver: str = "auto",
) -> tuple[Weights, Weights]:
    """CAGrad's weights on the raw gradients and the dual weights ``w*``.

    ``d = g_0 + (c ||g_0|| / ||g_w*||) g_w*``, divided by ``1 + c^2`` (``rescale=1``), ``1 + c``
    (``rescale=2``) or 1 (``rescale=0``), and multiplied by K for ``reduction="sum"``.

    At the kink of the dual (``g_w* = 0``, optimal value 0) that formula is undefined (the
    authors' code returns ``g_0`` there, which is not optimal when ``c >= 1``: e.g. two opposite
    gradients). Any ``d`` in the ball with ``<g_i, d> >= 0`` for all ``i`` is then optimal, and
    the projection of ``g_0`` onto that cone is one (it is the cone's closest point to ``g_0``,
    hence in the ball whenever the ball meets the cone): we use it (DualProj's update).
    Shapes: ``(K, K)`` -> ``(K,)``, ``(K,)``. No host synchronisation except with cvxpy.
    """
    if rescale not in RESCALES:
        raise ValueError(f"cagrad: rescale must be one of {RESCALES}, got {rescale!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"cagrad: unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    if c < 0:
        raise ValueError(f"cagrad: c must be >= 0, got {c}")
    work = normalize(as_work(gram))
    k = work.shape[-1]
    dual = cagrad_dual_weights(work, c, solver=solver)
    radius = c * work.mean().clamp_min(0.0).sqrt()
    norm_w = torch.einsum("i,ij,j->", dual, work, dual).clamp_min(0.0).sqrt()
    kink = norm_w <= _KINK_RTOL  # the largest norm of the normalised G is 1
    lam = radius / torch.where(kink, torch.ones_like(norm_w), norm_w)
    mean = torch.full_like(dual, 1.0 / k)
    projected = project_to_dual_cone(work, mean)
    w = torch.where(kink, projected, mean + lam * dual)
    w = w / {0: 1.0, 1: 1.0 + c * c, 2: 1.0 + c}[rescale]
    if reduction == "sum":
        w = w * k
    return w, dual


@register
class CAGrad(Method):
    """CAGrad: the best worst-case improvement within a ball around the average gradient.

    Formula (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS
    2021): ``max_d min_i <g_i, d>`` subject to ``||d - g_0|| <= c ||g_0||`` (``g_0`` the mean
    gradient). Its dual is ``min_{w in simplex} <g_w, g_0> + c ||g_0|| ||g_w||`` and the
    update is ``d = g_0 + c ||g_0|| / ||g_w|| g_w``. As in the authors' code the update is
    divided by ``1 + c^2`` (``rescale=1``) and multiplied by K to match the scale of the summed
    loss (``reduction="sum"``). ``c = 0`` gives the plain sum; ``c >= 1`` converges to
    Pareto-stationary points rather than to a minimum of the average loss. Where the dual
    optimum has ``g_w = 0`` the formula is undefined and the update is the mean gradient
    projected onto the cone of non-conflicting directions (see :func:`cagrad_weights`).

    Options:
        c: radius of the ball, relative to ``||g_0||`` (default 0.4, the paper's setting for
            NYUv2 and Cityscapes; 0.5 in some of its other experiments).
        rescale: 0, 1 (default) or 2, see above.
        reduction: ``"sum"`` (default, the authors' code) or ``"mean"`` (the paper's formula).
        solver: how the dual is solved, see :func:`cagrad_dual_weights`. K = 2 uses a closed
            form with no host synchronisation.

    Cost: the ``K x K`` Gram matrix only; the exact general-K solver does ``2^K`` small solves.
    ``info["simplex_weights"]`` holds the dual weights ``w*``.
    """

    name = "cagrad"

    def __init__(
        self, c: float = 0.4, rescale: int = 1, reduction: str = "sum", solver: str = "auto"
    ) -> None:
        super().__init__()
        check_number("cagrad", "c", c, low=0.0)
        check_number("cagrad", "rescale", rescale, integer=True)
        check_choice("cagrad", "rescale", rescale, RESCALES)
        check_choice("cagrad", "reduction", reduction, REDUCTIONS)
        check_choice("cagrad", "solver", solver, SOLVERS)
        self.c = float(c)
        self.rescale = rescale
        self.reduction = reduction
        self.solver = solver

    def weights(self, gram: Optional[PSDMatrix], losses: Tensor) -> Weights:
        if gram is None:
            raise ValueError("cagrad needs the Gram matrix of the per-objective gradients")
        w, dual = cagrad_weights(
            gram, self.c, rescale=self.rescale, reduction=self.reduction, solver=self.solver
        )
        self.info = {"simplex_weights": dual}
        return w

    def options(self) -> dict[str, Any]:
        return {
            "c": self.c,
            "rescale": self.rescale,
            "reduction": self.reduction,
            "solver": self.solver,
        }
