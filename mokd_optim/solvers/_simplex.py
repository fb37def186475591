"""Small helpers shared by the min-norm solvers: scaling, simplex projection, support polish."""

from __future__ import annotations

import torch
from torch import Tensor

from mokd_optim._typing import PSDMatrix, Weights


def check_gram(gram: Tensor) -> None:
    """Raise ``ValueError`` unless ``gram`` has shape ``(..., K, K)`` with ``K >= 1``."""
    if not isinstance(gram, Tensor):
        raise TypeError(f"gram must be a torch.Tensor, got {type(gram).__name__}")
    if gram.dim() < 2 or gram.shape[-1] != gram.shape[-2] or gram.shape[-1] < 1:
        raise ValueError(f"gram must have shape (..., K, K) with K >= 1, got {tuple(gram.shape)}")
    if not gram.is_floating_point():
        raise TypeError(f"gram must be a floating point tensor, got {gram.dtype}")


def working_dtype(gram: Tensor) -> torch.dtype:
    """float64 where the device supports it (all K x K arithmetic is done in it), else float32."""
    return torch.float32 if gram.device.type == "mps" else torch.float64


def normalize(gram: PSDMatrix) -> PSDMatrix:
    """Symmetrise and divide by the largest diagonal entry (1 where the matrix is all zero).

    The minimiser of ``w^T G w`` on the simplex does not change when ``G`` is scaled, and a
    unit scale makes the solvers' tolerances meaningful for norm ratios from 1e-8 to 1e8.
    """
    sym = 0.5 * (gram + gram.transpose(-1, -2))
    scale = torch.diagonal(sym, dim1=-2, dim2=-1).amax(dim=-1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return sym / scale[..., None, None]


def quadratic(gram: PSDMatrix, w: Weights) -> Tensor:
    """``w^T G w`` batched over leading dimensions: gram ``(..., K, K)``, w ``(..., K)`` -> ``(...)``."""
    return torch.einsum("...i,...ij,...j->...", w, gram, w)


def project_to_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of each row of ``v`` (shape ``(..., K)``) onto the probability simplex.

    Sort-based algorithm (Held et al. 1974; Duchi et al. 2008), fully vectorised, no host sync.
    """
    k = v.shape[-1]
    u, _ = torch.sort(v, dim=-1, descending=True)
    cumulative = u.cumsum(dim=-1) - 1.0
    ranks = torch.arange(1, k + 1, device=v.device, dtype=v.dtype)
    active = (u - cumulative / ranks) > 0
    # ``active`` is a prefix of True values; its length is the support size (always >= 1).
    count = active.sum(dim=-1, keepdim=True).clamp_min(1)
    theta = cumulative.gather(-1, count - 1) / count.to(v.dtype)
    return (v - theta).clamp_min(0.0)


def _solve_on_support(gram: PSDMatrix, support: Tensor) -> Tensor:
    """Minimiser of ``w^T G w`` subject to ``sum(w) = 1`` and ``w_i = 0`` off ``support``.

    Solves the KKT system ``[[G_SS, 1], [1^T, 0]] [w_S; -lambda] = [0; 1]`` in the least-squares
    sense: it is always consistent (the problem is bounded below) but singular when ``G_SS`` is
    rank-deficient, where the pseudo-inverse picks one of the minimisers.
    Shapes: gram ``(B, K, K)``, support ``(B, K)`` bool -> ``(B, K)`` (may have negative entries).
    """
    batch, k = support.shape
    mask = support.to(gram.dtype)
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device).expand(batch, k, k)
    both = support[:, :, None] & support[:, None, :]
    top_left = torch.where(both, gram, torch.zeros_like(gram))
    top_left = torch.where(support[:, :, None], top_left, eye)  # rows off S pin w_i = 0
    top = torch.cat([top_left, mask[:, :, None]], dim=2)
    bottom = torch.cat([mask[:, None, :], gram.new_zeros(batch, 1, 1)], dim=2)
    system = torch.cat([top, bottom], dim=1)  # symmetric (B, K+1, K+1)
    rhs = torch.cat([gram.new_zeros(batch, k), gram.new_ones(batch, 1)], dim=1)[..., None]
    solution = torch.linalg.pinv(system, hermitian=True) @ rhs
    return torch.where(support, solution[:, :k, 0], torch.zeros_like(mask))


def ratio_test_step(current: Tensor, target: Tensor, negative: Tensor) -> tuple[Tensor, Tensor]:
    """One primal active-set move: from ``current`` (feasible, >= 0) towards ``target`` until the
    first coordinate marked ``negative`` (where ``target < 0``) reaches zero.

    Returns the moved point (that coordinate exactly 0, all >= 0) and a one-hot mask of the
    blocking coordinate, to be dropped from the free set. Shapes ``(B, K)``; no host sync.
    """
    gap = (current - target).clamp_min(1e-300)
    ratios = torch.where(negative, current / gap, torch.full_like(current, float("inf")))
    # amin + argmin rather than min(dim): the fused values-and-indices reduction wakes the CPU
    # thread pool, which costs milliseconds on these tiny tensors.
    alpha = ratios.amin(dim=-1, keepdim=True).clamp(0.0, 1.0)
    blocking = ratios.argmin(dim=-1, keepdim=True)
    moved = (current + alpha * (target - current)).clamp_min(0.0)
    drop = torch.zeros_like(negative).scatter_(-1, blocking, True)
    return torch.where(drop, torch.zeros_like(moved), moved), drop


def polish_on_support(
    gram: PSDMatrix, w: Weights, *, rounds: int | None = None, threshold: float = 1e-9
) -> Weights:
    """Finish an approximate minimiser exactly with a vectorised primal active-set method.

    Iterative solvers identify the optimal support long before they converge in value. Starting
    from the support of ``w`` each round either (a) moves towards the exact minimiser on the
    current support, dropping the first weight that hits zero when that minimiser is infeasible
    (ratio test), or (b) adds the index that most violates the KKT condition
    ``(G w)_i >= w^T G w``. A fixed number of rounds keeps it free of host synchronisation; at
    the fixed point ``w`` satisfies the KKT conditions exactly (up to rounding). The result is
    kept only where it is not worse than the input.
    Shapes: gram ``(B, K, K)`` with unit scale, w ``(B, K)`` on the simplex -> ``(B, K)``.
    """
    _, k = w.shape
    rounds = 2 * k + 2 if rounds is None else rounds
    tol = 1e-13
    support = w > threshold
    start = torch.where(support, w, torch.zeros_like(w))
    start = start / start.sum(dim=-1, keepdim=True).clamp_min(1e-300)
    current = start
    for _ in range(rounds):
        target = _solve_on_support(gram, support)
        negative = support & (target < -tol)
        infeasible = negative.any(dim=-1, keepdim=True)
        # (a) ratio test along current -> target
        moved, drop = ratio_test_step(current, target, negative)
        moved = moved / moved.sum(dim=-1, keepdim=True).clamp_min(1e-300)
        support_a = support & ~drop
        # (b) accept the support solution, add the most violating index
        accepted = target.clamp_min(0.0)
        accepted = accepted / accepted.sum(dim=-1, keepdim=True).clamp_min(1e-300)
        gw = (gram @ accepted[..., None])[..., 0]
        lam = (accepted * gw).sum(dim=-1, keepdim=True)
        violation = torch.where(support, torch.full_like(gw, -float("inf")), lam - gw)
        worst = violation.amax(dim=-1, keepdim=True)
        worst_index = violation.argmax(dim=-1, keepdim=True)
        add = torch.zeros_like(support).scatter_(-1, worst_index, True) & (worst > 1e-12)
        support_b = support | add
        current = torch.where(infeasible, moved, accepted)
        support = torch.where(infeasible, support_a, support_b)
    finite = torch.isfinite(current).all(dim=-1)
    better = quadratic(gram, current) <= quadratic(gram, w) + 1e-15
    return torch.where((finite & better)[:, None], current, w)
