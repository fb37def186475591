"""Exact min-norm weights for two objectives, with no host synchronisation."""

from __future__ import annotations

import torch

from mokd_optim._typing import PSDMatrix, Weights

# Below this relative size of ||h_1 - h_2||^2 the two vectors are treated as equal: every convex
# combination is then optimal and the symmetric point (1/2, 1/2) is returned.
_EQUAL_RTOL = 1e-12


def line_weights(gram: PSDMatrix) -> Weights:
    """Unclipped minimiser of ``||pi_1 h_1 + pi_2 h_2||`` over the line ``pi_1 + pi_2 = 1``.

    This is the formula printed in the MoKD paper. It may return a negative weight (the
    minimiser lies outside the segment), and the zero vector when ``h_1`` and ``h_2`` are
    parallel with different norms. Shape ``(..., 2, 2)`` -> ``(..., 2)``.
    """
    g11 = gram[..., 0, 0]
    g22 = gram[..., 1, 1]
    g12 = 0.5 * (gram[..., 0, 1] + gram[..., 1, 0])
    denominator = g11 + g22 - 2.0 * g12  # = ||h_1 - h_2||^2 >= 0
    scale = torch.maximum(g11, g22)
    equal = denominator <= _EQUAL_RTOL * scale
    safe = torch.where(equal, torch.ones_like(denominator), denominator)
    pi_1 = torch.where(equal, torch.full_like(g11, 0.5), (g22 - g12) / safe)
    return torch.stack([pi_1, 1.0 - pi_1], dim=-1)


def min_norm_two(gram: PSDMatrix) -> Weights:
    """Exact minimiser of ``w^T G w`` on the 2-simplex (the formula clipped to ``[0, 1]``).

    Shape ``(..., 2, 2)`` -> ``(..., 2)``. Where ``h_1 = h_2`` (including both zero) the
    answer is ``(1/2, 1/2)``.
    """
    pi = line_weights(gram)
    pi_1 = pi[..., 0].clamp(0.0, 1.0)
    return torch.stack([pi_1, 1.0 - pi_1], dim=-1)
