"""Exact min-norm weights for two objectives, with no host synchronisation."""

from __future__ import annotations

import torch

from mokd_optim._typing import PSDMatrix, Weights

# Below this relative size of ||h_1 - h_2||^2 the two vectors are treated as equal: every convex
# combination is then optimal and the symmetric point (1/2, 1/2) is returned.
_EQUAL_RTOL = 1e-12


def _first_weight(g11: torch.Tensor, g12: torch.Tensor, g22: torch.Tensor) -> torch.Tensor:
    """``pi_1`` of the paper's two-objective formula from the (symmetric) Gram entries, ``1/2``
    where ``h_1 = h_2`` (``||h_1 - h_2||^2`` below ``_EQUAL_RTOL`` of the larger diagonal)."""
    denominator = g11 + g22 - 2.0 * g12  # = ||h_1 - h_2||^2 >= 0
    equal = denominator <= _EQUAL_RTOL * torch.maximum(g11, g22)
    safe = torch.where(equal, torch.ones_like(denominator), denominator)
    return torch.where(equal, torch.full_like(g11, 0.5), (g22 - g12) / safe)


def line_weights(gram: PSDMatrix) -> Weights:
    """Unclipped minimiser of ``||pi_1 h_1 + pi_2 h_2||`` over the line ``pi_1 + pi_2 = 1``.

    This is the formula printed in the MoKD paper. It may return a negative weight (the
    minimiser lies outside the segment), and the zero vector when ``h_1`` and ``h_2`` are
    parallel with different norms. Shape ``(..., 2, 2)`` -> ``(..., 2)``.
    """
    g11 = gram[..., 0, 0]
    g22 = gram[..., 1, 1]
    g12 = 0.5 * (gram[..., 0, 1] + gram[..., 1, 0])
    pi_1 = _first_weight(g11, g12, g22)
    return torch.stack([pi_1, 1.0 - pi_1], dim=-1)


def min_norm_two(gram: PSDMatrix) -> Weights:
    """Exact minimiser of ``w^T G w`` on the 2-simplex (the formula clipped to ``[0, 1]``).

    Shape ``(..., 2, 2)`` -> ``(..., 2)``. Where ``h_1 = h_2`` (including both zero) the
    answer is ``(1/2, 1/2)``.
    """
    pi = line_weights(gram)
    pi_1 = pi[..., 0].clamp(0.0, 1.0)
    return torch.stack([pi_1, 1.0 - pi_1], dim=-1)


def solve_two(gram: PSDMatrix) -> Weights:
    """``min_norm(gram)`` for K = 2 in one pass of about 25 small ops (the general entry point
    spends about twice as many on the same arithmetic): symmetrise, scale by the largest
    diagonal entry, the clipped formula, and NaN for a matrix with a non-finite entry.

    Any floating dtype; work in float64 (float32 on MPS); shape ``(..., 2, 2)`` -> ``(..., 2)``
    in ``gram``'s dtype. The same operations in the same order as the general path
    (``normalize``, :func:`line_weights`, :func:`min_norm_two`), so the same weights.
    """
    work_dtype = torch.float32 if gram.device.type == "mps" else torch.float64
    g11, g12, g21, g22 = gram.to(work_dtype).flatten(-2).unbind(-1)
    scale = torch.maximum(g11, g22)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    g11, g12, g22 = (
        torch.stack([g11, 0.5 * (g12 + g21), g22], dim=-1).div(scale[..., None]).unbind(-1)
    )
    finite = torch.isfinite(g11) & torch.isfinite(g12) & torch.isfinite(g22)
    pi_1 = _first_weight(g11, g12, g22).clamp(0.0, 1.0)
    weights = torch.stack([pi_1, 1.0 - pi_1], dim=-1)
    return torch.where(finite[..., None], weights, torch.full_like(weights, float("nan"))).to(
        gram.dtype
    )
