"""Gradient matrices for the method tests: seeded random ones and adversarial ones.

Every case is an explicit ``(K, n)`` float64 matrix ``J`` whose rows are the per-objective
gradients; methods see ``G = J J^T``, the references in the tests work on ``J`` itself.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from mokd_optim import methods

Case = tuple[str, np.ndarray]


def random_jacobian(rng: np.random.Generator, k: int, n: int, spread: float = 3.0) -> np.ndarray:
    """Gaussian rows with log-uniform norms in ``[e^-spread, e^spread]``."""
    rows = rng.standard_normal((k, n))
    return rows * np.exp(rng.uniform(-spread, spread, size=(k, 1)))


def random_cases(seed: int = 0, count: int = 24, full_rank: bool = False) -> list[Case]:
    """Random ``J`` with K in 2..5; ``full_rank`` keeps K <= n (independent rows)."""
    rng = np.random.default_rng(seed)
    cases = []
    for index in range(count):
        k = int(rng.integers(2, 6))
        n = int(rng.integers(k, k + 6)) if full_rank else int(rng.integers(1, 9))
        cases.append((f"random{index}-K{k}-n{n}", random_jacobian(rng, k, n)))
    return cases


def adversarial_cases() -> list[Case]:
    """Opposite gradients, a zero gradient, norm ratios 1e6, rank deficiency, duplicates."""
    rng = np.random.default_rng(1234)
    g = rng.standard_normal(6)
    h = rng.standard_normal(6)
    f = rng.standard_normal(6)
    return [
        ("opposite-equal", np.stack([g, -g])),
        ("opposite-unequal", np.stack([g, -3.0 * g])),
        ("nearly-opposite", np.stack([g, -g + 1e-6 * h])),
        ("one-zero-K2", np.stack([g, np.zeros(6)])),
        ("one-zero-K3", np.stack([g, np.zeros(6), h])),
        ("ratio-1e6-K2", np.stack([g, 1e-6 * h])),
        ("ratio-1e6-conflict-K2", np.stack([g, -1e-6 * g + 1e-6 * h])),
        ("ratio-1e6-K3", np.stack([1e3 * g, 1e-3 * h, f])),
        ("parallel-K2", np.stack([g, 2.5 * g])),
        ("rank-deficient-K3", np.stack([g, h, 0.5 * g - 2.0 * h])),
        ("rank-deficient-conflict-K3", np.stack([g, h, -(g + h)])),
        ("duplicate-K3", np.stack([g, g, h])),
        ("more-objectives-than-dims", rng.standard_normal((5, 2))),
        ("all-zero-K2", np.zeros((2, 6))),
    ]


def stationary_case(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """``J`` with ``sum_i a_i g_i = 0`` for some ``a > 0`` and rank ``K - 1`` (strict Pareto-stationarity)."""
    base = rng.standard_normal((k - 1, n))
    a = rng.uniform(0.2, 2.0, size=k)
    last = -(a[:-1, None] * base).sum(axis=0) / a[-1]
    return np.vstack([base, last])


def losses_for(k: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Positive loss values (log-based methods need them)."""
    rng = rng or np.random.default_rng(k)
    return rng.uniform(0.2, 3.0, size=k)


def make_method(
    name: str, k: int, names: Optional[list[str]] = None, **options: Any
) -> methods.Method:
    """A fresh method with its defaults, bound to objectives named ``names`` (default "0".."K-1").

    Options a method requires are filled in, and options that designate objectives refer to
    them by name, so that they follow the objectives when these are permuted.
    """
    names = names if names is not None else [str(i) for i in range(k)]
    if name == "weighted" and "weights" not in options:
        options["weights"] = {str(i): 1.0 + 0.5 * i for i in range(k)}
    if name == "pcgrad" and "seed" not in options:
        options["seed"] = 0
    if name == "mokd" and "anchor" not in options:
        options["anchor"] = "0"
    method = methods.get(name, **options)
    method.bind(names)
    return method


def solver_failed(method: methods.Method) -> bool:
    """Whether the last call fell back to other weights (Nash-MTL's documented failure policy)."""
    flag = method.info.get("solver_failed")
    return flag is not None and bool(flag)


def weights_of(method: methods.Method, jacobian: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """Call the method the way the optimizer does (float64 Gram, or None) and return numpy weights."""
    gram = (
        torch.as_tensor(jacobian @ jacobian.T, dtype=torch.float64)
        if method.needs_gradients
        else None
    )
    w = method.weights(gram, torch.as_tensor(losses, dtype=torch.float64))
    assert isinstance(w, torch.Tensor)
    return w.detach().cpu().numpy()


def update_of(
    method: methods.Method, jacobian: np.ndarray, losses: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(d, w)``: the update ``J^T w`` and the weights."""
    w = weights_of(method, jacobian, losses)
    return jacobian.T @ w, w


def update_scale(jacobian: np.ndarray, w: np.ndarray) -> float:
    """``sum_i |w_i| ||g_i||``: the triangle-inequality bound on ``||d||``, the scale of rounding errors."""
    return float(np.sum(np.abs(w) * np.linalg.norm(jacobian, axis=1))) + 1e-300
