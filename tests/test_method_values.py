"""Fixed-value tests: every method against an independent float64 reference of its published formula.

The references below are written from the papers, separately from the library: they work on
the explicit gradient vectors (rows of ``J``) where the paper does, with numpy, scipy and cvxpy,
and never call library code. Each method is checked on random gradient matrices and on the
adversarial ones (opposite gradients, a zero gradient, norm ratio 1e6, rank deficiency).
Degenerate-input policies that the papers leave open are the documented library choices and
are implemented here independently.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import cvxpy as cp
import numpy as np
import pytest
import torch
from scipy.optimize import minimize, nnls

from tests._jacobians import (
    adversarial_cases,
    losses_for,
    make_method,
    random_cases,
    update_of,
)

RANDOM = random_cases(seed=5, count=10)
FULL_RANK = random_cases(seed=6, count=8, full_rank=True)
ADVERSARIAL = adversarial_cases()
CASES = RANDOM + ADVERSARIAL
IDS = [name for name, _ in CASES]
ZERO_RTOL = 1e-12  # documented: gradients below 1e-12 of the largest norm count as zero


def assert_same_update(
    d: np.ndarray, reference: np.ndarray, jacobian: np.ndarray, rtol: float
) -> None:
    """``d`` equals ``reference`` up to ``rtol`` of their norms, plus 1e-10 of the largest gradient norm.

    The floor is the resolution of a Gram matrix: an update that nearly cancels (``||d||`` far
    below the gradient norms, e.g. nearly opposite gradients) is known to ``eps ||g||^2 / ||d||``.
    """
    allowed = (
        rtol * max(np.linalg.norm(reference), np.linalg.norm(d))
        + 1e-10 * np.linalg.norm(jacobian, axis=1).max()
    )
    error = np.linalg.norm(d - reference)
    assert error <= allowed, (
        f"|d - ref| = {error:.3e} > {allowed:.3e} (|ref| = {np.linalg.norm(reference):.3e})"
    )


def nonzero_rows(jacobian: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(jacobian, axis=1)
    return norms > ZERO_RTOL * norms.max() if norms.max() > 0 else np.zeros(len(norms), dtype=bool)


def min_norm_reference(vectors: np.ndarray) -> np.ndarray:
    """Weights of the min-norm point of the convex hull of the rows, exactly.

    Every subset ``S`` of the rows is tried: on it, ``w = e/|S| + N z`` (``N`` a basis of
    ``{sum = 0}``) and ``z`` solves the least-squares problem ``min ||V_S^T (e/|S| + N z)||`` on
    the vectors themselves; the best feasible (non-negative) candidate wins.
    """
    k = vectors.shape[0]
    scaled = vectors / max(np.abs(vectors).max(), 1e-300)
    best, best_norm = np.eye(k)[0], np.inf
    for code in range(1, 2**k):
        subset = [i for i in range(k) if code >> i & 1]
        size = len(subset)
        start = np.full(size, 1.0 / size)
        if size == 1:
            w_s = start
        else:
            basis = np.linalg.svd(np.ones((1, size)))[2][1:].T  # orthonormal basis of sum = 0
            z = np.linalg.lstsq(scaled[subset].T @ basis, -scaled[subset].T @ start, rcond=None)[0]
            w_s = start + basis @ z
        if w_s.min() < -1e-12:
            continue
        w = np.zeros(k)
        w[subset] = np.clip(w_s, 0, None) / np.clip(w_s, 0, None).sum()
        norm = np.linalg.norm(scaled.T @ w)
        if norm < best_norm - 1e-15:
            best, best_norm = w, norm
    return best


# Fixed weights ---------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "jacobian"), CASES, ids=IDS)
def test_sum_and_weighted(case: str, jacobian: np.ndarray) -> None:
    k = jacobian.shape[0]
    d, _ = update_of(make_method("sum", k), jacobian, losses_for(k))
    np.testing.assert_allclose(d, jacobian.sum(axis=0), rtol=1e-12, atol=1e-300)
    fixed = np.arange(1, k + 1) * 0.7
    d, _ = update_of(make_method("weighted", k, weights=list(fixed)), jacobian, losses_for(k))
    np.testing.assert_allclose(d, fixed @ jacobian, rtol=1e-12, atol=1e-300)


# MGDA and MoKD -----------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "jacobian"), CASES, ids=IDS)
def test_mgda_is_the_min_norm_point(case: str, jacobian: np.ndarray) -> None:
    k = jacobian.shape[0]
    d, _ = update_of(make_method("mgda", k), jacobian, losses_for(k))
    reference = jacobian.T @ min_norm_reference(jacobian)
    assert np.linalg.norm(d - reference) <= 1e-9 * np.linalg.norm(jacobian, axis=1).max()


@pytest.mark.parametrize(("case", "jacobian"), CASES, ids=IDS)
def test_mokd_anchor_rule(case: str, jacobian: np.ndarray) -> None:
    """MoKD: min-norm point of the log-gradients ``h_i = g_i / L_i``, rescaled to the anchor's norm."""
    k = jacobian.shape[0]
    losses = losses_for(k, np.random.default_rng(k + 17))
    d, _ = update_of(
        make_method(
            "mokd", k, step="anchor", equalize=0.0, anchor_vs_rest=False, conflict="pareto"
        ),
        jacobian,
        losses,
    )
    h = jacobian / losses[:, None]
    pi = min_norm_reference(h)
    direction = h.T @ pi
    anchor_norm = np.linalg.norm(jacobian[0])
    # Documented: stationary when ||d|| <= 1e-3 sum_i pi_i ||h_i|| (or a gradient is zero).
    bound = np.sum(pi * np.linalg.norm(h, axis=1))
    stationary = (~nonzero_rows(jacobian)).any() or np.linalg.norm(direction) <= 1e-3 * bound
    if stationary:  # documented: Pareto-stationary inputs give 0
        assert np.linalg.norm(d) <= 1e-6 * max(anchor_norm, 1e-300) or np.linalg.norm(d) == 0
        return
    reference = direction / np.linalg.norm(direction) * anchor_norm
    assert_same_update(d, reference, jacobian, rtol=1e-5)


@pytest.mark.parametrize(("case", "jacobian"), CASES, ids=IDS)
def test_mokd_log_rule(case: str, jacobian: np.ndarray) -> None:
    """MoKD's "log" rule: the min-norm point of the log-gradients ``h_i = g_i / L_i`` itself,
    fully invariant to the loss scales."""
    k = jacobian.shape[0]
    losses = losses_for(k, np.random.default_rng(k + 17))
    method = make_method(
        "mokd", k, step="log", equalize=0.0, anchor_vs_rest=False, conflict="pareto"
    )
    assert method.scale_invariance == "update"
    d, _ = update_of(method, jacobian, losses)
    h = jacobian / losses[:, None]
    reference = h.T @ min_norm_reference(h)
    assert_same_update(d, reference, jacobian, rtol=1e-5)
    # never longer than the shortest log-gradient (up to the Gram matrix's resolution)
    norms = np.linalg.norm(h, axis=1)
    assert np.linalg.norm(d) <= norms.min() * (1 + 1e-9) + 1e-10 * norms.max()


# PCGrad ----------------------------------------------------------------------------------


def pcgrad_reference(jacobian: np.ndarray, orders: list[list[int]], reduction: str) -> np.ndarray:
    projected = []
    for i, order in enumerate(orders):
        g = jacobian[i].copy()
        for j in order:
            dot = g @ jacobian[j]
            if dot < 0:
                g = g - dot / (jacobian[j] @ jacobian[j]) * jacobian[j]
        projected.append(g)
    total = np.sum(projected, axis=0)
    return total / len(orders) if reduction == "mean" else total


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize(("case", "jacobian"), CASES, ids=IDS)
def test_pcgrad(case: str, jacobian: np.ndarray, reduction: str) -> None:
    k = jacobian.shape[0]
    method = make_method("pcgrad", k, seed=3, reduction=reduction)
    d, _ = update_of(method, jacobian, losses_for(k))
    orders = method.last_orders if k > 2 else [[0, 1], [1, 0]]
    assert orders is not None
    assert_same_update(d, pcgrad_reference(jacobian, orders, reduction), jacobian, rtol=1e-9)
    if k == 2:  # for two objectives the order does not matter
        assert_same_update(
            d, pcgrad_reference(jacobian, [[1, 0], [0, 1]], reduction), jacobian, rtol=1e-9
        )


def test_pcgrad_orders_follow_the_seed_and_the_state() -> None:
    jacobian = np.random.default_rng(0).standard_normal((4, 5))
    first, second = make_method("pcgrad", 4, seed=11), make_method("pcgrad", 4, seed=11)
    update_of(first, jacobian, losses_for(4))
    state = first.state_dict()
    update_of(second, jacobian, losses_for(4))
    assert first.last_orders == second.last_orders
    update_of(first, jacobian, losses_for(4))
    restored = make_method("pcgrad", 4, seed=999)
    restored.load_state_dict(state)
    update_of(restored, jacobian, losses_for(4))
    assert restored.last_orders == first.last_orders
    assert all(sorted(order) == [0, 1, 2, 3] for order in first.last_orders or [])


# CAGrad ----------------------------------------------------------------------------------


def cagrad_dual_reference(jacobian: np.ndarray, c: float) -> np.ndarray:
    """The dual ``min_w <g_w, g_0> + c ||g_0|| ||g_w||`` as a cone programme on the vectors."""
    k = jacobian.shape[0]
    scale = np.abs(jacobian).max()
    if scale == 0:
        return np.full(k, 1.0 / k)  # every weight is optimal
    vectors = jacobian / scale
    g0 = vectors.mean(axis=0)
    w = cp.Variable(k, nonneg=True)
    objective = (vectors @ g0) @ w + c * np.linalg.norm(g0) * cp.norm(vectors.T @ w, 2)
    problem = cp.Problem(cp.Minimize(objective), [cp.sum(w) == 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problem.solve(solver="CLARABEL", tol_gap_abs=1e-13, tol_gap_rel=1e-13, tol_feas=1e-13)
    w_value = np.clip(np.asarray(w.value), 0, None)
    return w_value / w_value.sum()


def cagrad_update(jacobian: np.ndarray, dual: np.ndarray, c: float) -> np.ndarray:
    """``K (g_0 + c ||g_0|| g_w / ||g_w||) / (1 + c^2)`` (the authors' rescale=1, sum).

    At the kink ``g_w = 0`` (documented): the projection of ``g_0`` onto ``{x : J x >= 0}``.
    """
    k = jacobian.shape[0]
    g0 = jacobian.mean(axis=0)
    gw = jacobian.T @ dual
    norm = np.linalg.norm(gw)
    if norm <= 1e-7 * np.linalg.norm(jacobian, axis=1).max():
        return k * project_onto_dual_cone_reference(jacobian, g0) / (1 + c * c)
    return k * (g0 + c * np.linalg.norm(g0) * gw / norm) / (1 + c * c)


def test_cagrad_kink_is_the_primal_optimum() -> None:
    """Opposite scalar gradients with c = 2: the ball contains 0, the only optimum is d = 0
    (the authors' code would return the mean gradient)."""
    jacobian = np.array([[0.36], [-4.68]])
    d, _ = update_of(make_method("cagrad", 2, c=2.0), jacobian, losses_for(2))
    assert abs(d[0]) <= 1e-12
    d, _ = update_of(make_method("cagrad", 2, c=2.0, solver="enumerate"), jacobian, losses_for(2))
    assert abs(d[0]) <= 1e-12


def cagrad_dual_value(jacobian: np.ndarray, w: np.ndarray, c: float) -> float:
    g0 = jacobian.mean(axis=0)
    return float((jacobian @ g0) @ w + c * np.linalg.norm(g0) * np.linalg.norm(jacobian.T @ w))


@pytest.mark.parametrize(("case", "jacobian"), CASES, ids=IDS)
def test_cagrad(case: str, jacobian: np.ndarray) -> None:
    k = jacobian.shape[0]
    method = make_method("cagrad", k)
    d, _ = update_of(method, jacobian, losses_for(k))
    ours = method.info["simplex_weights"].numpy()
    reference_dual = cagrad_dual_reference(jacobian, 0.4)
    # Optimality: our dual weights are at least as good as the cone solver's (which is accurate
    # to ~1e-6 in the weights because the objective is a norm) ...
    scale = np.linalg.norm(jacobian, axis=1).max() ** 2
    assert (
        cagrad_dual_value(jacobian, ours, 0.4)
        <= cagrad_dual_value(jacobian, reference_dual, 0.4) + 1e-10 * scale
    )
    # ... and the update follows the published formula from them, close to the reference's.
    assert_same_update(d, cagrad_update(jacobian, ours, 0.4), jacobian, rtol=1e-9)
    assert_same_update(d, cagrad_update(jacobian, reference_dual, 0.4), jacobian, rtol=1e-3)


@pytest.mark.parametrize(("case", "jacobian"), FULL_RANK, ids=[n for n, _ in FULL_RANK])
def test_cagrad_kkt_conditions(case: str, jacobian: np.ndarray) -> None:
    """First-order optimality of the dual weights, from the vectors: ``grad_i >= w . grad``."""
    k = jacobian.shape[0]
    method = make_method("cagrad", k, c=0.5)
    update_of(method, jacobian, losses_for(k))
    w = method.info["simplex_weights"].numpy()
    g0 = jacobian.mean(axis=0)
    gw = jacobian.T @ w
    gradient = jacobian @ g0 + 0.5 * np.linalg.norm(g0) * jacobian @ gw / np.linalg.norm(gw)
    assert np.all(gradient >= w @ gradient - 1e-9 * np.abs(gradient).max())


# Nash-MTL --------------------------------------------------------------------------------


def nash_reference(jacobian: np.ndarray) -> np.ndarray:
    """``alpha`` with ``alpha_i <g_i, J^T alpha> = 1``: the minimiser of ``||J^T a||^2 / 2 - sum log a``.

    Zero gradients are left out (documented policy).
    """
    keep = nonzero_rows(jacobian)
    alpha = np.zeros(jacobian.shape[0])
    rows = jacobian[keep]
    if rows.shape[0] == 0:
        return alpha
    start = 1.0 / np.linalg.norm(rows, axis=1)

    def objective(a: np.ndarray) -> float:
        return 0.5 * np.sum((rows.T @ a) ** 2) - np.sum(np.log(a))

    def gradient(a: np.ndarray) -> np.ndarray:
        return rows @ (rows.T @ a) - 1.0 / a

    # Optimise over log(a) so that positivity is automatic.
    result = minimize(
        lambda z: objective(np.exp(z)),
        np.log(start),
        jac=lambda z: gradient(np.exp(z)) * np.exp(z),
        method="BFGS",
        options={"gtol": 1e-12, "maxiter": 10000},
    )
    alpha[keep] = np.exp(result.x)
    return alpha


@pytest.mark.parametrize(("case", "jacobian"), CASES, ids=IDS)
def test_nash_mtl(case: str, jacobian: np.ndarray) -> None:
    k = jacobian.shape[0]
    method = make_method("nash-mtl", k)
    d, w = update_of(method, jacobian, losses_for(k))
    keep = nonzero_rows(jacobian)
    units = jacobian[keep] / np.linalg.norm(jacobian[keep], axis=1, keepdims=True)
    stationary = units.shape[0] > 1 and np.linalg.norm(units.T @ min_norm_reference(units)) <= 1e-6
    # Documented fallback exactly when there is no bargaining solution (no direction improves
    # every objective): the previous weights, here all ones (the plain sum).
    assert bool(method.info["solver_failed"]) == stationary
    if stationary:
        np.testing.assert_array_equal(w, np.ones(k))
        assert method.failures == 1
        return
    alpha = nash_reference(jacobian)
    reference = jacobian.T @ alpha
    assert_same_update(d, reference, jacobian, rtol=1e-5)
    # The bargaining equations themselves, on the vectors.
    np.testing.assert_allclose((w * (jacobian @ d))[keep], 1.0, rtol=1e-5)


def test_nash_mtl_fails_over_to_the_previous_weights() -> None:
    rng = np.random.default_rng(2)
    good = rng.standard_normal((3, 5))
    opposite = np.stack([good[0], -good[0], good[1]])  # Pareto-stationary: no solution
    method = make_method("nash-mtl", 3)
    _, first = update_of(method, good, losses_for(3))
    assert not bool(method.info["solver_failed"])
    _, second = update_of(method, opposite, losses_for(3))
    assert bool(method.info["solver_failed"]) and method.failures == 1
    np.testing.assert_array_equal(second, first)


def test_nash_mtl_update_every_reuses_weights() -> None:
    rng = np.random.default_rng(3)
    method = make_method("nash-mtl", 3, update_every=3)
    jacobians = [rng.standard_normal((3, 6)) for _ in range(4)]
    weights = [update_of(method, j, losses_for(3))[1] for j in jacobians]
    np.testing.assert_array_equal(weights[1], weights[0])
    np.testing.assert_array_equal(weights[2], weights[0])
    assert not np.allclose(weights[3], weights[0])
    assert bool(method.info["weights_reused"]) is False
    state = method.state_dict()
    clone = make_method("nash-mtl", 3, update_every=3)
    clone.load_state_dict(state)
    extra = rng.standard_normal((3, 6))
    np.testing.assert_array_equal(
        update_of(clone, extra, losses_for(3))[1], update_of(method, extra, losses_for(3))[1]
    )


# IMTL-G and ConFIG -------------------------------------------------------------------------


def imtl_g_reference(jacobian: np.ndarray) -> np.ndarray:
    """The published formula: ``alpha_{2:} = g_1 U^T (D U^T)^{-1}``, ``alpha_1 = 1 - sum``."""
    keep = nonzero_rows(jacobian)
    alpha = np.zeros(jacobian.shape[0])
    rows = jacobian[keep]
    if rows.shape[0] == 1:
        alpha[keep] = 1.0
        return alpha
    if rows.shape[0] == 0:
        return alpha
    units = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    differences = rows[0] - rows[1:]
    unit_differences = units[0] - units[1:]
    rest = rows[0] @ unit_differences.T @ np.linalg.inv(differences @ unit_differences.T)
    alpha[keep] = np.concatenate([[1.0 - rest.sum()], rest])
    return alpha


# The published formula needs linearly independent gradients (it inverts D U^T).
IMTL_CASES = FULL_RANK + [
    c
    for c in ADVERSARIAL
    if c[0]
    in (
        "opposite-unequal",
        "one-zero-K2",
        "one-zero-K3",
        "ratio-1e6-K2",
        "ratio-1e6-K3",
        "ratio-1e6-conflict-K2",
    )
]


@pytest.mark.parametrize(("case", "jacobian"), IMTL_CASES, ids=[n for n, _ in IMTL_CASES])
@pytest.mark.parametrize("fix_sign", [False, True])
def test_imtl_g(case: str, jacobian: np.ndarray, fix_sign: bool) -> None:
    k = jacobian.shape[0]
    d, _ = update_of(make_method("imtl-g", k, fix_sign=fix_sign), jacobian, losses_for(k))
    reference = jacobian.T @ imtl_g_reference(jacobian)
    keep = nonzero_rows(jacobian)
    units = jacobian[keep] / np.linalg.norm(jacobian[keep], axis=1, keepdims=True)
    projections = units @ reference
    if fix_sign and projections.size and projections[0] < 0:
        reference = -reference  # documented: the sign that makes the common projection positive
    assert_same_update(d, reference, jacobian, rtol=1e-7)
    # The defining property: equal projections on the unit gradients.
    if np.linalg.norm(d) > 1e-9 * np.linalg.norm(jacobian, axis=1).max():
        np.testing.assert_allclose(
            units @ d, (units @ d)[0], rtol=1e-6, atol=1e-9 * np.linalg.norm(d)
        )


def test_imtl_g_published_sign_can_increase_every_loss() -> None:
    """Why ``fix_sign`` exists: with the published normalisation the update can conflict with all objectives."""
    rng = np.random.default_rng(0)
    found = 0
    for _ in range(300):
        jacobian = rng.standard_normal((4, 6)) * np.exp(rng.uniform(-3, 3, size=(4, 1)))
        d_published, _ = update_of(
            make_method("imtl-g", 4, fix_sign=False), jacobian, losses_for(4)
        )
        d_fixed, _ = update_of(make_method("imtl-g", 4), jacobian, losses_for(4))
        assert np.all(
            jacobian @ d_fixed >= -1e-9 * np.linalg.norm(jacobian, axis=1) * np.linalg.norm(d_fixed)
        )
        if np.all(jacobian @ d_published < 0):
            found += 1
            np.testing.assert_allclose(d_fixed, -d_published, rtol=1e-9)
    assert found > 0


def config_reference(jacobian: np.ndarray) -> np.ndarray:
    """``g_u = unit(U^+ 1)`` by least squares on the unit vectors; ``d = (sum_i g_i . g_u) g_u``."""
    keep = nonzero_rows(jacobian)
    rows = jacobian[keep]
    if rows.shape[0] == 0:
        return np.zeros(jacobian.shape[1])
    units = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    direction = np.linalg.lstsq(units, np.ones(rows.shape[0]), rcond=None)[0]
    if np.linalg.norm(direction) ** 2 <= 1e-12:
        return np.zeros(jacobian.shape[1])
    unit = direction / np.linalg.norm(direction)
    return (rows @ unit).sum() * unit


@pytest.mark.parametrize(("case", "jacobian"), CASES, ids=IDS)
def test_config(case: str, jacobian: np.ndarray) -> None:
    k = jacobian.shape[0]
    d, _ = update_of(make_method("config", k), jacobian, losses_for(k))
    assert_same_update(d, config_reference(jacobian), jacobian, rtol=1e-7)


@pytest.mark.parametrize(("case", "jacobian"), FULL_RANK, ids=[n for n, _ in FULL_RANK])
@pytest.mark.parametrize("name", ["config", "imtl-g"])
def test_equal_projection_methods_do_not_conflict_on_independent_gradients(
    case: str, jacobian: np.ndarray, name: str
) -> None:
    k = jacobian.shape[0]
    d, _ = update_of(make_method(name, k), jacobian, losses_for(k))
    units = jacobian / np.linalg.norm(jacobian, axis=1, keepdims=True)
    projections = units @ d
    assert np.all(projections > 0)
    np.testing.assert_allclose(projections, projections[0], rtol=1e-7)


# Aligned-MTL -----------------------------------------------------------------------------


def aligned_mtl_reference(jacobian: np.ndarray, mode: str) -> np.ndarray:
    """From the SVD of ``J``: aligned gradients ``sigma U_r V_r^T``, summed."""
    k = jacobian.shape[0]
    u, s, vt = np.linalg.svd(jacobian, full_matrices=False)
    eigenvalues = s**2
    if eigenvalues.max() == 0:
        return np.zeros(jacobian.shape[1])
    kept = eigenvalues > k * np.finfo(np.float32).eps * eigenvalues.max()
    values = np.sort(eigenvalues[kept])
    sigma = {
        "min": np.sqrt(values[0]),
        "median": np.sqrt(values[(len(values) - 1) // 2]),  # torch.median: the lower median
        "rmse": np.sqrt(values.mean()),
    }[mode]
    aligned = sigma * u[:, kept] @ vt[kept]
    return aligned.sum(axis=0)


@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
@pytest.mark.parametrize(("case", "jacobian"), CASES, ids=IDS)
def test_aligned_mtl(case: str, jacobian: np.ndarray, mode: str) -> None:
    k = jacobian.shape[0]
    d, _ = update_of(make_method("aligned-mtl", k, scale_mode=mode), jacobian, losses_for(k))
    assert_same_update(d, aligned_mtl_reference(jacobian, mode), jacobian, rtol=1e-6)


# UPGrad and DualProj -----------------------------------------------------------------------


def project_onto_dual_cone_reference(jacobian: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``argmin_{x : J x >= 0} ||x - v||`` via the non-negative least squares dual ``min ||J^T l + v||``."""
    scale = np.abs(jacobian).max()
    if scale == 0:
        return vector
    multipliers, _ = nnls(jacobian.T / scale, -vector / scale, maxiter=10000)
    return vector + jacobian.T @ multipliers  # (J^T / s) l = -v / s  <=>  J^T l = -v


@pytest.mark.parametrize(("case", "jacobian"), CASES, ids=IDS)
def test_upgrad(case: str, jacobian: np.ndarray) -> None:
    k = jacobian.shape[0]
    d, _ = update_of(make_method("upgrad", k), jacobian, losses_for(k))
    reference = sum(project_onto_dual_cone_reference(jacobian, g) for g in jacobian) / k
    assert_same_update(d, reference, jacobian, rtol=1e-7)


@pytest.mark.parametrize(("case", "jacobian"), CASES, ids=IDS)
def test_dualproj(case: str, jacobian: np.ndarray) -> None:
    k = jacobian.shape[0]
    d, _ = update_of(make_method("dualproj", k), jacobian, losses_for(k))
    reference = project_onto_dual_cone_reference(jacobian, jacobian.mean(axis=0))
    assert_same_update(d, reference, jacobian, rtol=1e-7)


# FAMO and amortised MoKD -----------------------------------------------------------------


def famo_reference(
    losses_before: list[np.ndarray],
    losses_after: list[np.ndarray],
    shift: Callable[[np.ndarray], np.ndarray],
    lr: float = 0.025,
    decay: float = 0.01,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """FAMO's weights over a run, with Adam written out (torch.optim.Adam semantics)."""
    k = losses_before[0].shape[0]
    xi, m, v = np.zeros(k), np.zeros(k), np.zeros(k)
    history = []
    for step, (before, after) in enumerate(zip(losses_before, losses_after), start=1):
        z = np.exp(xi - xi.max())
        z /= z.sum()
        q = z / shift(before)
        history.append((z.copy(), q / q.sum()))
        delta = np.log(shift(before)) - np.log(shift(after))
        grad = z * delta - z * (z @ delta)  # J_softmax^T delta
        grad = grad + decay * xi
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad**2
        xi = xi - lr / (1 - 0.9**step) * m / (np.sqrt(v) / np.sqrt(1 - 0.999**step) + 1e-8)
    return history


def loss_run(k: int, steps: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    current = rng.uniform(0.5, 2.0, size=k)
    before, after = [], []
    for _ in range(steps):
        before.append(current.copy())
        current = current * rng.uniform(0.8, 1.02, size=k)
        after.append(current.copy())
    return before, after


@pytest.mark.parametrize("k", [2, 4])
def test_famo_matches_the_reference_run(k: int) -> None:
    before, after = loss_run(k, 30, seed=k)
    expected = famo_reference(before, after, shift=lambda x: x + 1e-8)
    method = make_method("famo", k)
    for (z, w), b, a in zip(expected, before, after):
        weights = method.weights(None, torch.as_tensor(b)).numpy()
        np.testing.assert_allclose(method.info["simplex_weights"].numpy(), z, rtol=1e-10)
        np.testing.assert_allclose(weights, w, rtol=1e-10)
        method.observe(torch.as_tensor(b), torch.as_tensor(a))


def test_famo_min_losses_shift_the_losses() -> None:
    before, after = loss_run(3, 10, seed=1)
    minima = np.array([0.1, 0.0, 0.3])
    expected = famo_reference(before, after, shift=lambda x: x - minima + 1e-8)
    method = make_method("famo", 3, min_losses={"0": 0.1, "2": 0.3})
    for (_, w), b, a in zip(expected, before, after):
        np.testing.assert_allclose(method.weights(None, torch.as_tensor(b)).numpy(), w, rtol=1e-10)
        method.observe(torch.as_tensor(b), torch.as_tensor(a))


@pytest.mark.parametrize("step", ["convex", "log"])
def test_mokd_amortized_matches_the_reference_run(step: str) -> None:
    before, after = loss_run(3, 25, seed=4)
    after[10] = after[10] * np.array([1.0, 1e-6, 1.0])  # a loss collapsing towards 0 hits the floor
    before[11] = after[10].copy()
    reference = before[0] * 1e-3

    def floored(x: np.ndarray) -> np.ndarray:
        return np.maximum(x, reference)

    expected = famo_reference(before, after, shift=floored)
    method = make_method("mokd-amortized", 3, step=step)
    for (z, w), b, a in zip(expected, before, after):
        weights = method.weights(None, torch.as_tensor(b)).numpy()
        q = z / floored(b)
        np.testing.assert_allclose(weights, q / q.sum() if step == "convex" else q, rtol=1e-10)
        np.testing.assert_allclose(w, q / q.sum(), rtol=1e-10)
        method.observe(torch.as_tensor(b), torch.as_tensor(a))


def test_logit_adam_matches_torch_adam() -> None:
    """The hand-written Adam of the amortised methods is torch.optim.Adam with L2 weight decay."""
    before, after = loss_run(3, 20, seed=8)
    method = make_method("famo", 3)
    logits = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([logits], lr=0.025, weight_decay=0.01)
    for b, a in zip(before, after):
        method.weights(None, torch.as_tensor(b))
        delta = torch.log(torch.as_tensor(b) + 1e-8) - torch.log(torch.as_tensor(a) + 1e-8)
        (grad,) = torch.autograd.grad(torch.softmax(logits, 0), logits, grad_outputs=delta)
        adam.zero_grad()
        logits.grad = grad
        adam.step()
        method.observe(torch.as_tensor(b), torch.as_tensor(a))
        assert method.logits is not None
        torch.testing.assert_close(method.logits, logits.detach(), rtol=1e-12, atol=1e-14)


def test_nash_mtl_failure_flag_is_logged_as_one_number() -> None:
    """StepStats.to_dict records per-step scalars of ``info`` under their key alone."""
    from mokd_optim import MultiObjectiveOptimizer

    torch.manual_seed(0)
    shared = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = MultiObjectiveOptimizer(torch.optim.SGD([shared], lr=0.1), "nash-mtl")
    # Opposite gradients: no bargaining solution, so the failure policy applies.
    stats = optimizer.backward({"a": (shared * 3.0).sum(), "b": (shared * -1.0).sum() + 10.0})
    record = stats.to_dict()
    assert record["solver_failed"] == 1.0
    assert record["weights_reused"] == 0.0
    assert record["weight/a"] == 1.0 and record["weight/b"] == 1.0  # uniform: no previous weights
    torch.testing.assert_close(shared.grad, torch.tensor([2.0, 2.0]))


def test_famo_loss_below_its_minimum_counts_as_at_the_minimum() -> None:
    method = make_method("famo", 2, min_losses=[0.5, 0.0])
    w = method.weights(None, torch.tensor([0.4, 1.0], dtype=torch.float64)).numpy()
    assert np.all(np.isfinite(w))
    np.testing.assert_allclose(w, [1.0 / (1.0 + 1e-8), 1e-8 / (1.0 + 1e-8)], rtol=1e-6)
