"""Projection onto the dual cone of the gradients: the small QP behind UPGrad and DualProj.

For gradients ``g_1 .. g_K`` (rows of ``J``) the dual cone is ``{x : J x >= 0}``, the directions
that conflict with no objective. The projection of ``a = J^T u`` onto it is ``J^T v`` with

    v = u + mu,   mu = argmin_{mu >= 0} (u + mu)^T G (u + mu),

the dual of the projection problem (KKT: ``mu >= 0``, ``G v >= 0``, ``mu_i (G v)_i = 0``). Only
the ``K x K`` Gram matrix ``G = J J^T`` is needed. ``mu`` may be non-unique when ``G`` is
singular; ``J^T v`` never is.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mokd_optim._typing import PSDMatrix, Weights
from mokd_optim.solvers._enumeration import all_subsets
from mokd_optim.solvers._simplex import check_gram, normalize, ratio_test_step, working_dtype

DUAL_CONE_BACKENDS = ("auto", "closed_form", "enumeration", "projected_gradient")

#: Largest K projected by enumeration under ``backend="auto"``. UPGrad solves K problems of
#: 2^K free sets each; measured on the CPU (benchmarks/solver_cost.py), enumeration is faster
#: than the projected gradient + polish up to K = 6 and even at K = 7.
DUAL_CONE_ENUMERATION_MAX_K = 6

# Relative tolerances (in units of max |u| on a Gram matrix scaled to unit diagonal maximum).
_FEASIBILITY_RTOL = 1e-12
_KKT_RTOL = 1e-12


def project_to_dual_cone(
    gram: PSDMatrix, u: Tensor, *, backend: str = "auto", max_iter: int = 20
) -> Weights:
    """Weights ``v >= u`` such that ``J^T v`` is the projection of ``J^T u`` onto ``{x: J x >= 0}``.

    Args:
        gram: PSD Gram matrix ``(..., K, K)``.
        u: weights of the vector to project, ``(..., K)`` (broadcast against ``gram``).
        backend: ``"closed_form"`` (K = 2, exact, no host synchronisation),
            ``"enumeration"`` (exact: the stationarity system of every free set, ``2^K`` of
            them, solved in one batch; for small K; no host synchronisation),
            ``"projected_gradient"`` (any K, batched: accelerated projected gradient on
            ``mu >= 0`` followed by an exact active-set polish, no host synchronisation) or
            ``"auto"`` (closed form for K = 2, enumeration up to
            ``DUAL_CONE_ENUMERATION_MAX_K``, projected gradient above).
        max_iter: iterations of the projected gradient before the polish (20: on 2,000
            random and adversarial Gram matrices with K = 3..10, any budget from 0 to 300 gave
            the same projections; the polish does the exact work).

    Returns:
        ``(..., K)`` weights ``v = u + mu`` with ``mu >= 0``, in the working dtype (float64).

    Raises:
        ValueError: bad shapes, unknown backend, or ``"closed_form"`` with K != 2.
    """
    check_gram(gram)
    if backend not in DUAL_CONE_BACKENDS:
        raise ValueError(
            f"unknown dual-cone backend {backend!r}; choose one of {DUAL_CONE_BACKENDS}"
        )
    k = gram.shape[-1]
    if u.shape[-1] != k:
        raise ValueError(f"u has {u.shape[-1]} entries for a {k}x{k} Gram matrix")
    dtype = working_dtype(gram)
    batch_shape = torch.broadcast_shapes(gram.shape[:-2], u.shape[:-1])
    work = gram.to(dtype).expand(*batch_shape, k, k).reshape(-1, k, k)
    target = u.to(dtype=dtype, device=gram.device).expand(*batch_shape, k).reshape(-1, k)
    # The cone {x : J x >= 0} does not depend on the gradient norms. Solving in the variables
    # nu = N^-1 mu with N = diag(1 / ||g_i||) turns G into the unit-diagonal cosine matrix, so a
    # norm ratio of 1e8 (1e16 in G) does not reach the solver; zero gradients keep a scale of 1.
    norms = torch.diagonal(work, dim1=-2, dim2=-1).clamp_min(0.0).sqrt()
    present = norms > 0
    scales = torch.where(present, norms, torch.ones_like(norms)).reciprocal()
    cosine = normalize(work * scales[:, :, None] * scales[:, None, :])
    # A zero gradient puts no constraint on the cone and no term in the objective: its
    # multiplier stays 0 (v_i = u_i) and its target entry is left out of the solve, where an
    # O(1) entry beside the O(||g||) ones of tiny gradients would swamp the solvers' tolerances.
    scaled_target = torch.where(present, target / scales, torch.zeros_like(target))
    if backend == "auto":
        backend = (
            "closed_form"
            if k == 2
            else "enumeration"
            if k <= DUAL_CONE_ENUMERATION_MAX_K
            else "projected_gradient"
        )
    if backend == "closed_form":
        if k != 2:
            raise ValueError(f"the closed_form dual-cone backend solves K = 2 only, got K = {k}")
        nu = _closed_form_two(cosine, scaled_target)
    elif backend == "enumeration":
        nu = _enumerate(cosine, scaled_target)
    else:
        nu = _projected_gradient(cosine, scaled_target, max_iter=max_iter)
        nu = _polish(cosine, scaled_target, nu)
    nu = torch.where(present, nu, torch.zeros_like(nu))
    return (target + nu * scales).reshape(*batch_shape, k)


def dual_objective(gram: PSDMatrix, u: Tensor, mu: Tensor) -> Tensor:
    """``(u + mu)^T G (u + mu)``, batched: gram ``(B, K, K)``, u and mu ``(B, K)`` -> ``(B,)``."""
    v = u + mu
    return torch.einsum("bi,bij,bj->b", v, gram, v)


def _closed_form_two(gram: PSDMatrix, u: Tensor) -> Tensor:
    """Exact ``mu`` for K = 2 by checking the KKT conditions of the four active sets.

    Candidates: no constraint active (``mu = 0``), only the first or only the second active
    (``mu_i = -(G u)_i / G_ii``), both active (``mu = -u``, which makes ``v = 0``). The candidate
    with the smallest KKT violation is kept (the first one on ties). ``(B, 2, 2)``, ``(B, 2)``
    -> ``(B, 2)``, no host synchronisation.
    """
    g11, g22, g12 = gram[:, 0, 0], gram[:, 1, 1], gram[:, 0, 1]
    r1 = g11 * u[:, 0] + g12 * u[:, 1]  # (G u)_1
    r2 = g12 * u[:, 0] + g22 * u[:, 1]  # (G u)_2
    zero = torch.zeros_like(r1)
    inf = torch.full_like(r1, float("inf"))
    # Only the first multiplier free: mu_1 makes (G v)_1 = 0.
    mu1 = torch.where(g11 > 0, -r1 / torch.where(g11 > 0, g11, torch.ones_like(g11)), zero)
    # Only the second free.
    mu2 = torch.where(g22 > 0, -r2 / torch.where(g22 > 0, g22, torch.ones_like(g22)), zero)
    violations = torch.stack(
        [
            torch.maximum(torch.maximum(-r1, -r2), zero),
            torch.where(g11 > 0, torch.maximum(torch.maximum(-mu1, -(r2 + g12 * mu1)), zero), inf),
            torch.where(g22 > 0, torch.maximum(torch.maximum(-mu2, -(r1 + g12 * mu2)), zero), inf),
            torch.maximum(torch.maximum(u[:, 0], u[:, 1]), zero),
        ],
        dim=-1,
    )
    candidates = torch.stack(
        [
            torch.stack([zero, zero], dim=-1),
            torch.stack([mu1, zero], dim=-1),
            torch.stack([zero, mu2], dim=-1),
            -u,
        ],
        dim=1,
    )  # (B, 4, 2)
    choice = violations.argmin(dim=-1)
    return candidates[torch.arange(u.shape[0], device=u.device), choice]


def _enumerate(gram: PSDMatrix, u: Tensor) -> Tensor:
    """Exact ``mu`` by solving the stationarity system on every free set at once.

    Every ``mu >= 0`` is feasible, so the best candidate with ``mu_F >= 0`` is optimal; an
    optimal free set with linearly independent gradients always exists, and its system is
    regular. Candidates within rounding of the best value are averaged (the minimisers form a
    convex set; averaging keeps the result permutation-equivariant). ``(B, K, K)``, ``(B, K)``
    -> ``(B, K)``, no host synchronisation.
    """
    batch, k = u.shape
    free_sets = all_subsets(k, gram.device, include_empty=True)
    count = free_sets.shape[0]
    grams = gram[:, None].expand(batch, count, k, k).reshape(batch * count, k, k)
    targets = u[:, None].expand(batch, count, k).reshape(batch * count, k)
    masks = free_sets[None].expand(batch, count, k).reshape(batch * count, k)
    mu = _solve_free(grams, targets, masks).reshape(batch, count, k)
    scale = u.abs().amax(dim=-1, keepdim=True).clamp_min(1e-300)  # (B, 1)
    feasible = (mu >= -_FEASIBILITY_RTOL * scale[:, :, None]).all(dim=-1) & torch.isfinite(mu).all(
        dim=-1
    )
    mu = mu.clamp_min(0.0)
    v = u[:, None] + mu
    values = torch.einsum("bsi,bij,bsj->bs", v, gram, v)
    values = torch.where(feasible, values, torch.full_like(values, float("inf")))
    best = values.amin(dim=-1, keepdim=True)
    optimal = feasible & (values <= best + 1e-14 * scale**2)
    total = torch.where(optimal[..., None], mu, torch.zeros_like(mu)).sum(dim=1)
    # The empty free set (mu = 0) is always feasible, so at least one candidate is optimal.
    return total / optimal.sum(dim=-1, keepdim=True).clamp_min(1).to(total.dtype)


def _projected_gradient(gram: PSDMatrix, u: Tensor, *, max_iter: int) -> Tensor:
    """FISTA with gradient restart on ``mu >= 0``; ``(B, K, K)``, ``(B, K)`` -> ``(B, K)``."""
    lipschitz = 2.0 * torch.linalg.matrix_norm(gram).clamp_min(1e-30)
    step = (1.0 / lipschitz)[:, None]
    mu = torch.zeros_like(u)
    y = mu
    t = u.new_ones(u.shape[0], 1)
    for _ in range(max_iter):
        grad = 2.0 * (gram @ (u + y)[..., None])[..., 0]
        mu_next = (y - step * grad).clamp_min(0.0)
        t_next = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
        restart = (grad * (mu_next - mu)).sum(dim=-1, keepdim=True) > 0
        momentum = torch.where(restart, torch.zeros_like(t), (t - 1.0) / t_next)
        y = mu_next + momentum * (mu_next - mu)
        t = torch.where(restart, torch.ones_like(t), t_next)
        mu = mu_next
    return mu


def _solve_free(gram: PSDMatrix, u: Tensor, free: Tensor) -> Tensor:
    """``mu`` with ``(G (u + mu))_F = 0`` on the free set ``F`` and ``mu = 0`` off it.

    Solves ``G_FF mu_F = -(G u)_F`` with a pseudo-inverse (minimum-norm solution when ``G_FF``
    is singular). ``(B, K, K)``, ``(B, K)``, ``(B, K)`` bool -> ``(B, K)``.
    """
    k = u.shape[-1]
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device).expand_as(gram)
    both = free[:, :, None] & free[:, None, :]
    system = torch.where(both, gram, torch.zeros_like(gram))
    system = torch.where(free[:, :, None], system, eye)
    rhs = torch.where(free, -(gram @ u[..., None])[..., 0], torch.zeros_like(u))
    solution = (torch.linalg.pinv(system, hermitian=True) @ rhs[..., None])[..., 0]
    return torch.where(free, solution, torch.zeros_like(solution))


def _polish(gram: PSDMatrix, u: Tensor, mu: Tensor, *, rounds: int | None = None) -> Tensor:
    """Finish an approximate ``mu`` exactly with a vectorised primal active-set method.

    Each round either solves the stationarity equations on the current free set and, when that
    point is feasible, frees the multiplier whose gradient ``(G v)_j`` is most negative, or (when
    it is infeasible) moves towards it until the first multiplier reaches 0 and fixes that one.
    A fixed number of rounds keeps it free of host synchronisation; the result is kept only
    where it is no worse than the input. ``(B, K, K)``, ``(B, K)`` twice -> ``(B, K)``.
    """
    k = u.shape[-1]
    rounds = 2 * k + 2 if rounds is None else rounds
    scale = u.abs().amax(dim=-1, keepdim=True).clamp_min(1e-300)
    feasibility_tol = _FEASIBILITY_RTOL * scale
    kkt_tol = _KKT_RTOL * scale
    free = mu > feasibility_tol
    current = torch.where(free, mu, torch.zeros_like(mu))
    for _ in range(rounds):
        target = _solve_free(gram, u, free)
        negative = free & (target < -feasibility_tol)
        infeasible = negative.any(dim=-1, keepdim=True)
        # Ratio test along current -> target; current >= 0 and target < 0 where negative.
        moved, drop = ratio_test_step(current, target, negative)
        accepted = target.clamp_min(0.0)
        gradient = (gram @ (u + accepted)[..., None])[..., 0]
        violation = torch.where(free, torch.full_like(gradient, -float("inf")), -gradient)
        worst = violation.amax(dim=-1, keepdim=True)
        worst_index = violation.argmax(dim=-1, keepdim=True)
        add = torch.zeros_like(free).scatter_(-1, worst_index, True) & (worst > kkt_tol)
        current = torch.where(infeasible, moved, accepted)
        free = torch.where(infeasible, free & ~drop, free | add)
    finite = torch.isfinite(current).all(dim=-1)
    better = (
        dual_objective(gram, u, current) <= dual_objective(gram, u, mu) + 1e-15 * scale[:, 0] ** 2
    )
    return torch.where((finite & better)[:, None], current, mu)
