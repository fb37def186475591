"""Exact min-norm weights for small K: the KKT system on every support, solved in one batch.

The minimiser of ``w^T G w`` on the simplex is the solution of the equality-constrained
problem on its support ``S`` (``G_SS w_S = lambda 1``, ``sum(w_S) = 1``). Solving that system
for all ``2^K - 1`` supports at once -- one batched pseudo-inverse -- and keeping the best
feasible solution gives the exact answer with a fixed, small number of tensor operations and no
host synchronisation: about twenty operations whatever K, against a few hundred for the
iterative solvers and their polish. The batch grows like ``2^K``, so this is for small K
(``min_norm``'s ``"auto"`` uses it for 3 <= K <= ``ENUMERATION_MAX_K``).

Several supports can be optimal at once (duplicated or rank-deficient gradients); the
solutions within rounding of the optimum are averaged. The set of minimisers is convex, so the
average is a minimiser, and it is permutation-equivariant (relabelling the objectives permutes
the candidate set), which choosing one of them would not be.
"""

from __future__ import annotations

import functools

import torch

from mokd_optim._typing import PSDMatrix, Weights
from mokd_optim.solvers._simplex import _solve_on_support, quadratic

#: Largest K solved by enumeration under ``backend="auto"`` (2^K - 1 supports).
ENUMERATION_MAX_K = 8

# A support solution with an entry below -_FEASIBILITY_TOL is infeasible (unit-scale Gram).
_FEASIBILITY_TOL = 1e-12
# Candidates whose value is within this of the best one count as optimal and are averaged.
_VALUE_TOL = 1e-14


@functools.lru_cache(maxsize=64)
def all_subsets(k: int, device: torch.device, include_empty: bool = False) -> torch.Tensor:
    """Every subset of ``range(k)`` (non-empty unless ``include_empty``) as a bool tensor
    ``(count, k)``, ordered by size. Cached per ``(k, device)``."""
    codes = sorted(
        range(0 if include_empty else 1, 2**k), key=lambda code: (bin(code).count("1"), code)
    )
    bits = torch.tensor([[(code >> i) & 1 for i in range(k)] for code in codes], dtype=torch.bool)
    return bits.to(device)


def enumeration(gram: PSDMatrix) -> Weights:
    """Exact minimiser of ``w^T G w`` on the simplex by solving every support's KKT system.

    ``gram`` ``(B, K, K)`` symmetric PSD with unit scale (see ``normalize``); returns ``(B, K)``.
    Memory and time grow like ``B * 2^K * K^2``: meant for K up to about 10.
    """
    batch, k, _ = gram.shape
    supports = all_subsets(k, gram.device)
    count = supports.shape[0]
    grams = gram[:, None].expand(batch, count, k, k).reshape(batch * count, k, k)
    masks = supports[None].expand(batch, count, k).reshape(batch * count, k)
    solution = _solve_on_support(grams, masks).reshape(batch, count, k)
    feasible = (solution >= -_FEASIBILITY_TOL).all(dim=-1) & torch.isfinite(solution).all(dim=-1)
    clipped = solution.clamp_min(0.0)
    clipped = clipped / clipped.sum(dim=-1, keepdim=True).clamp_min(1e-300)
    values = quadratic(gram[:, None], clipped)
    values = torch.where(feasible, values, torch.full_like(values, float("inf")))
    best = values.amin(dim=-1, keepdim=True)
    optimal = feasible & (values <= best + _VALUE_TOL)
    total = torch.where(optimal[..., None], clipped, torch.zeros_like(clipped)).sum(dim=1)
    # The single-vertex supports are always feasible, so at least one candidate is optimal.
    return total / optimal.sum(dim=-1, keepdim=True).clamp_min(1).to(total.dtype)
