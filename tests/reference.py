"""Independent float64 numpy references used by the tests (written apart from the library)."""

from __future__ import annotations

import itertools

import numpy as np


def min_norm_by_enumeration(gram: np.ndarray) -> tuple[float, np.ndarray]:
    """Exact min of ``w^T G w`` on the simplex by trying every support (K <= 10).

    For each support S the equality-constrained problem is solved from its KKT system by
    least squares; feasible solutions are compared by objective value.
    """
    k = gram.shape[0]
    best_value, best_w = np.inf, np.full(k, 1.0 / k)
    for size in range(1, k + 1):
        for support in itertools.combinations(range(k), size):
            idx = list(support)
            system = np.zeros((size + 1, size + 1))
            system[:size, :size] = gram[np.ix_(idx, idx)]
            system[:size, size] = 1.0
            system[size, :size] = 1.0
            rhs = np.zeros(size + 1)
            rhs[size] = 1.0
            x = np.linalg.lstsq(system, rhs, rcond=None)[0][:size]
            if np.all(x >= -1e-12):
                w = np.zeros(k)
                w[idx] = np.clip(x, 0.0, None)
                w /= w.sum()
                value = float(w @ gram @ w)
                if value < best_value:
                    best_value, best_w = value, w
    return best_value, best_w


def mokd_two_objectives(
    g_task: np.ndarray, g_kd: np.ndarray, l_task: float, l_kd: float, step: str, clip: bool = True
) -> np.ndarray:
    """MoKD update from METHOD.md, on explicit gradient vectors (float64).

    h_i = g_i / L_i; pi_1 = (g22 - g12) / (g11 + g22 - 2 g12) (clipped to [0, 1] when ``clip``);
    direction sum_i pi_i h_i; length by ``step``: 'log' as is, 'convex' the convex combination
    of raw gradients with weights ∝ pi_i / L_i, 'anchor' rescaled to ||g_task||.
    """
    h1, h2 = g_task / l_task, g_kd / l_kd
    g11, g22, g12 = h1 @ h1, h2 @ h2, h1 @ h2
    denominator = g11 + g22 - 2 * g12
    pi1 = 0.5 if denominator <= 1e-300 else (g22 - g12) / denominator
    if clip:
        pi1 = min(max(pi1, 0.0), 1.0)
    pi2 = 1.0 - pi1
    direction = pi1 * h1 + pi2 * h2
    if step == "log":
        return direction
    if step == "convex":
        q = np.array([pi1 / l_task, pi2 / l_kd])
        return (q[0] * g_task + q[1] * g_kd) / q.sum()
    if step == "anchor":
        norm = np.linalg.norm(direction)
        return np.zeros_like(direction) if norm == 0 else direction * np.linalg.norm(g_task) / norm
    raise ValueError(step)
