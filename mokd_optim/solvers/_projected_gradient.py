"""Iterative min-norm solvers in torch for any K, batched over leading dimensions."""

from __future__ import annotations

import torch

from mokd_optim._typing import PSDMatrix, Weights
from mokd_optim.solvers._simplex import polish_on_support, project_to_simplex, quadratic


def projected_gradient(gram: PSDMatrix, *, max_iter: int = 20, polish: bool = True) -> Weights:
    """Accelerated projected gradient (FISTA with adaptive restart) on the simplex.

    ``gram`` has shape ``(B, K, K)`` and unit scale (see ``normalize``). A fixed number of
    iterations keeps the loop free of host synchronisation; the result is then solved exactly
    on its support (``polish_on_support``), which makes it exact once the support is right.
    Returns ``(B, K)``.
    """
    batch, k, _ = gram.shape
    # Step 1/L with L = 2 * lambda_max(G) <= 2 * ||G||_F.
    lipschitz = 2.0 * torch.linalg.matrix_norm(gram).clamp_min(1e-30)
    step = (1.0 / lipschitz)[:, None]
    w = gram.new_full((batch, k), 1.0 / k)
    y = w.clone()
    t = gram.new_ones(batch, 1)
    for _ in range(max_iter):
        grad = 2.0 * (gram @ y[..., None])[..., 0]
        w_next = project_to_simplex(y - step * grad)
        t_next = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
        # Gradient-based restart (O'Donoghue & Candes 2015): drop momentum when it points uphill.
        restart = (grad * (w_next - w)).sum(dim=-1, keepdim=True) > 0
        momentum = torch.where(restart, torch.zeros_like(t), (t - 1.0) / t_next)
        y = w_next + momentum * (w_next - w)
        t = torch.where(restart, torch.ones_like(t), t_next)
        w = w_next
    return polish_on_support(gram, w) if polish else w


def frank_wolfe(gram: PSDMatrix, *, max_iter: int = 20, polish: bool = True) -> Weights:
    """Frank-Wolfe with exact line search, as in MGDA (Sener & Koltun 2018), batched.

    Each iteration moves towards the vertex ``e_t`` with the smallest ``(G w)_t`` by the exact
    minimising step. Convergence is O(1/t); the support polish makes the final answer exact.
    ``gram`` ``(B, K, K)`` -> ``(B, K)``.
    """
    batch, k, _ = gram.shape
    w = gram.new_full((batch, k), 1.0 / k)
    diagonal = torch.diagonal(gram, dim1=-2, dim2=-1)
    rows = torch.arange(batch, device=gram.device)
    for _ in range(max_iter):
        gw = (gram @ w[..., None])[..., 0]
        target = gw.argmin(dim=-1)
        vv = (w * gw).sum(dim=-1)  # ||v||^2 with v = sum_i w_i g_i
        vt = gw[rows, target]  # <v, g_t>
        tt = diagonal[rows, target]  # ||g_t||^2
        denominator = vv + tt - 2.0 * vt
        safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
        gamma = torch.where(
            denominator > 0, ((vv - vt) / safe).clamp(0.0, 1.0), torch.zeros_like(vv)
        )
        w = (1.0 - gamma)[:, None] * w
        w[rows, target] += gamma
    return polish_on_support(gram, w) if polish else w


def objective(gram: PSDMatrix, w: Weights) -> torch.Tensor:
    """``w^T G w`` (re-exported for callers that compare solvers)."""
    return quadratic(gram, w)
