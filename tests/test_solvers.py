"""min_norm: simplex feasibility, KKT optimality and agreement between backends and with cvxpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mokd_optim.solvers import BACKENDS, kkt_residual, min_norm, normalize, quadratic
from tests.helpers import HostSyncError, forbid_host_sync
from tests.reference import min_norm_by_enumeration

ITERATIVE = ("projected_gradient", "frank_wolfe")
# Exact backends for any K (besides the K = 2 closed form and the cvxpy reference).
EXACT = ("enumeration",)


@st.composite
def gram_matrices(draw: st.DrawFn, min_k: int = 2, max_k: int = 10) -> np.ndarray:
    """PSD matrices G = J J^T: random, rank-deficient, with duplicated / opposite rows, and
    row norms spread over 10^-8 .. 10^8."""
    k = draw(st.integers(min_k, max_k))
    rank = draw(st.integers(1, k + 2))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    j = rng.standard_normal((k, rank))
    kind = draw(
        st.sampled_from(["random", "identical", "opposite", "scaled", "zero_row", "parallel"])
    )
    if kind == "identical":
        j[1] = j[0]
    elif kind == "opposite":
        j[1] = -draw(st.floats(1e-3, 1e3)) * j[0]
    elif kind == "parallel":
        j[1] = draw(st.floats(1e-3, 1e3)) * j[0]
    elif kind == "zero_row":
        j[k - 1] = 0.0
    exponents = draw(st.lists(st.floats(-8, 8), min_size=k, max_size=k))
    if kind == "scaled" or draw(st.booleans()):
        j = j * (10.0 ** np.array(exponents))[:, None]
    return j @ j.T


def _objective_gap(gram: np.ndarray, w: torch.Tensor, value: float) -> float:
    unit = normalize(torch.tensor(gram))
    scale = max(np.diag(gram).max(), 1e-300)
    return float(quadratic(unit, w)) - value / scale


def _check_simplex(w: torch.Tensor) -> None:
    assert torch.isfinite(w).all()
    assert (w >= -1e-12).all()
    assert abs(float(w.sum()) - 1.0) < 1e-9


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gram=gram_matrices())
def test_backends_are_optimal_and_agree(gram: np.ndarray) -> None:
    exact_value, _ = min_norm_by_enumeration(gram / max(np.diag(gram).max(), 1e-300))
    g = torch.tensor(gram)
    backends = [*ITERATIVE, *EXACT] + (["closed_form"] if gram.shape[0] == 2 else [])
    for backend in backends:
        w = min_norm(g, backend=backend)
        _check_simplex(w)
        # Objective within 1e-6 of the exact optimum, relative to the largest squared norm.
        assert _objective_gap(gram, w, exact_value * max(np.diag(gram).max(), 1e-300)) < 1e-6, (
            backend
        )
        assert float(kkt_residual(g, w)) < 1e-6, backend


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gram=gram_matrices(max_k=6))
def test_torch_backends_match_cvxpy(gram: np.ndarray) -> None:
    g = torch.tensor(gram)
    reference = min_norm(g, backend="cvxpy")
    _check_simplex(reference)
    unit = normalize(g)
    for backend in (*ITERATIVE, *EXACT):
        gap = float(quadratic(unit, min_norm(g, backend=backend)) - quadratic(unit, reference))
        # ours may be better than the interior-point reference, never worse by more than 1e-6
        assert gap < 1e-6, backend


def test_closed_form_known_values() -> None:
    # Orthogonal gradients of norms 1 and 2: w ∝ (1/1, 1/4) -> (0.8, 0.2).
    g = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(
        min_norm(g, backend="closed_form"), torch.tensor([0.8, 0.2], dtype=torch.float64)
    )
    # Parallel gradients of different norms: the smaller one alone (a simplex vertex).
    parallel = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(
        min_norm(parallel, backend="closed_form"), torch.tensor([1.0, 0.0], dtype=torch.float64)
    )
    # Identical gradients (and the all-zero matrix): the symmetric point.
    for same in (torch.ones(2, 2, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)):
        torch.testing.assert_close(
            min_norm(same, backend="closed_form"), torch.tensor([0.5, 0.5], dtype=torch.float64)
        )
    # Opposite gradients of norms 1 and 3: the zero vector at w = (3/4, 1/4).
    opposite = torch.tensor([[1.0, -3.0], [-3.0, 9.0]], dtype=torch.float64)
    torch.testing.assert_close(
        min_norm(opposite, backend="closed_form"), torch.tensor([0.75, 0.25], dtype=torch.float64)
    )


@pytest.mark.parametrize("backend", ["closed_form", *ITERATIVE, *EXACT, "cvxpy"])
def test_batched_matches_one_by_one(backend: str) -> None:
    k = 2 if backend == "closed_form" else 4
    j = torch.randn(3, 5, k, 7, dtype=torch.float64)
    grams = j @ j.transpose(-1, -2)
    batched = min_norm(grams, backend=backend)
    assert batched.shape == (3, 5, k)
    for a in range(3):
        for b in range(5):
            torch.testing.assert_close(
                batched[a, b], min_norm(grams[a, b], backend=backend), atol=1e-7, rtol=0
            )


def test_dtype_and_device_preserved_and_k_one() -> None:
    g = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float32)
    w = min_norm(g)
    assert w.dtype == torch.float32 and w.device == g.device
    torch.testing.assert_close(min_norm(torch.tensor([[3.0]])), torch.tensor([1.0]))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="closed_form backend solves K = 2"):
        min_norm(torch.eye(3), backend="closed_form")
    with pytest.raises(ValueError, match="unknown min-norm backend"):
        min_norm(torch.eye(2), backend="simplex")
    with pytest.raises(ValueError, match=r"\(\.\.\., K, K\)"):
        min_norm(torch.ones(2, 3))
    with pytest.raises(TypeError, match="floating point"):
        min_norm(torch.eye(2, dtype=torch.long))
    assert set(BACKENDS) >= {"auto", "closed_form", "frank_wolfe", "cvxpy"}


def test_closed_form_has_no_host_sync() -> None:
    """The K = 2 path reads no tensor value on the host (so it never stalls a GPU stream)."""
    grams = [
        torch.tensor([[1.0, 0.0], [0.0, 4.0]]),
        torch.tensor([[1.0, 2.0], [2.0, 4.0]]),
        torch.zeros(2, 2),
    ]
    expected = [torch.tensor([0.8, 0.2]), torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5])]
    results = []
    with forbid_host_sync():
        for gram in grams:
            results.append(min_norm(gram.double(), backend="closed_form"))
        batched = min_norm(torch.stack(grams).double(), backend="auto")
    for result, want in zip(results, expected):
        torch.testing.assert_close(result, want.double())
    torch.testing.assert_close(batched, torch.stack(expected).double())


def test_iterative_backends_have_no_host_sync() -> None:
    j = torch.randn(4, 6, dtype=torch.float64)
    gram = j @ j.T
    with forbid_host_sync():
        pg = min_norm(gram, backend="projected_gradient")
        fw = min_norm(gram, backend="frank_wolfe")
        exact = min_norm(gram, backend="enumeration")
    torch.testing.assert_close(pg, fw, atol=1e-8, rtol=0)
    torch.testing.assert_close(exact, pg, atol=1e-8, rtol=0)


def test_enumeration_averages_tied_supports() -> None:
    """Duplicated gradients make several supports optimal; the average keeps the weights
    permutation-equivariant (here: the two copies share their weight equally)."""
    j = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    w = min_norm(j @ j.T, backend="enumeration")
    torch.testing.assert_close(w, torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64))


def test_sync_detector_detects() -> None:
    with pytest.raises(HostSyncError), forbid_host_sync():
        if torch.ones(()) > 0:
            pass


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gram=gram_matrices(min_k=3, max_k=6), seed=st.integers(0, 2**31 - 1))
def test_dual_cone_enumeration_matches_projected_gradient(gram: np.ndarray, seed: int) -> None:
    """Both dual-cone backends solve min (u + mu)^T G (u + mu) over mu >= 0 to the same value,
    and the projection conflicts with no gradient."""
    from mokd_optim.solvers import project_to_dual_cone
    from mokd_optim.solvers._dual_cone import dual_objective

    k = gram.shape[0]
    g = torch.tensor(gram).expand(k, k, k)
    u = torch.tensor(np.random.default_rng(seed).standard_normal((k, k)))
    exact = project_to_dual_cone(g, u, backend="enumeration")
    iterative = project_to_dual_cone(g, u, backend="projected_gradient")
    scale = float(np.diag(gram).max()) * float(u.abs().max()) ** 2 + 1e-300
    gap = (dual_objective(g, u, exact - u) - dual_objective(g, u, iterative - u)) / scale
    assert float(gap.max()) < 1e-9
    assert float((exact - u).min()) >= -1e-12 * float(u.abs().max())
    conflict = (g @ exact[..., None])[..., 0] / (
        float(np.diag(gram).max()) * float(u.abs().max()) + 1e-300
    )
    assert float(conflict.min()) > -1e-9


@pytest.mark.parametrize(
    "backend", ["auto", "closed_form", "enumeration", "projected_gradient", "frank_wolfe"]
)
def test_non_finite_matrix_gives_nan_weights_without_raising(backend: str) -> None:
    """An overflowed Gram matrix (AMP) has no minimiser: NaN weights for that batch element,
    the others solved as usual, and no exception from the linear algebra."""
    k = 2 if backend == "closed_form" else 3
    j = torch.randn(k, 5, dtype=torch.float64)
    good = j @ j.T
    bad = good.clone()
    bad[0, 0] = float("inf")
    bad[0, 1] = bad[1, 0] = float("nan")
    weights = min_norm(torch.stack([good, bad]), backend=backend)
    assert torch.isnan(weights[1]).all()
    torch.testing.assert_close(weights[0], min_norm(good, backend=backend))


@pytest.mark.parametrize("scale", [1e-12, 1.0, 1e12])
def test_solve_qp_handles_gram_matrices_of_any_scale(scale: float) -> None:
    # Found by hypothesis: Clarabel failed outright ("Solver 'CLARABEL' failed") on this Gram
    # matrix of two large, nearly parallel gradients before solve_qp rescaled it (min_norm
    # rescales before every backend; solve_qp is public and used on raw Gram matrices).
    from mokd_optim.solvers import solve_qp

    found = np.array([[4.24831707e09, 1.13879185e10], [1.13879185e10, 3.05261322e10]])
    _, expected = min_norm_by_enumeration(found)
    np.testing.assert_allclose(solve_qp(found * scale), expected, atol=1e-6)


def test_solve_qp_zero_and_non_finite_gram() -> None:
    from mokd_optim.solvers import SolverError, solve_qp

    np.testing.assert_allclose(solve_qp(np.zeros((3, 3))), np.full(3, 1 / 3))
    with pytest.raises(SolverError, match="non-finite"):
        solve_qp(np.array([[1.0, np.nan], [np.nan, 1.0]]))


@pytest.mark.parametrize("scale", [1.0, 1e14])
def test_dual_cone_zero_gradient_beside_tiny_ones(scale: float) -> None:
    # Found by hypothesis in a CI run: two tiny, nearly opposite gradients and a zero one. The
    # zero gradient's O(1) target entry swamped the O(1e-7) ones of the tiny gradients, and
    # the enumeration backend missed the optimum by 1.3 % of the scale.
    from mokd_optim.solvers import project_to_dual_cone
    from mokd_optim.solvers._dual_cone import dual_objective

    gram = scale * np.array(
        [
            [1.58080885e-14, -1.66095737e-14, 0.0],
            [-1.66095737e-14, 1.74516949e-14, 0.0],
            [0.0, 0.0, 0.0],
        ]
    )
    g = torch.tensor(gram).expand(3, 3, 3)
    u = torch.tensor(np.random.default_rng(0).standard_normal((3, 3)))
    exact = project_to_dual_cone(g, u, backend="enumeration")
    iterative = project_to_dual_cone(g, u, backend="projected_gradient")
    unit = float(np.diag(gram).max()) * float(u.abs().max()) ** 2
    gap = (dual_objective(g, u, exact - u) - dual_objective(g, u, iterative - u)).abs() / unit
    assert float(gap.max()) < 1e-9
    # the zero gradient constrains nothing: its weight is left as it was
    torch.testing.assert_close(exact[:, 2], u[:, 2])
    torch.testing.assert_close(iterative[:, 2], u[:, 2])
