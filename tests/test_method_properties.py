"""Properties shared by every registered method, checked on random and adversarial gradients.

Parametrised over ``methods.available()``, so a newly registered method is covered without
editing this file. What is checked for each method follows the promises it declares
(``conflict_free``, ``pareto_stationary``, ``permutation_equivariant``, ``scale_invariance``,
``homogeneity``; see ``Method``); every method must return finite weights of the right shape.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mokd_optim import methods
from tests._jacobians import (
    adversarial_cases,
    losses_for,
    make_method,
    random_cases,
    solver_failed,
    stationary_case,
    update_of,
    update_scale,
)

NAMES = methods.available()
RANDOM = random_cases(seed=0, count=16)
FULL_RANK = random_cases(seed=1, count=12, full_rank=True)
ADVERSARIAL = adversarial_cases()
CONFLICT_RTOL = 1e-8


def promising(predicate: Callable[[methods.Method], bool]) -> list[str]:
    """The registered methods whose default instance declares a promise."""
    return [name for name in NAMES if predicate(make_method(name, 2))]


def tolerance(
    jacobian: np.ndarray, *weights: np.ndarray, rtol: float = 1e-7, floor: float = 1e-12
) -> float:
    """Rounding scale of an update: ``rtol`` times the triangle bound, plus ``floor`` times the largest gradient norm.

    The floor covers updates that are 0 in exact arithmetic (Pareto-stationary inputs), where
    what remains is the rounding of a Gram matrix whose entries span ``(norm ratio)^2``.
    """
    bound = max(update_scale(jacobian, w) for w in weights)
    return rtol * bound + floor * float(np.linalg.norm(jacobian, axis=1).max())


# The promises each method is documented to keep (docs/methods.md). A method missing here is
# still checked against what it declares; this table guards the declarations themselves.
DECLARED = {
    # name: (conflict_free, pareto_stationary, permutation_equivariant, scale_invariance, homogeneity)
    "aligned-mtl": (False, False, True, "none", 1),
    "cagrad": (False, False, True, "none", 1),
    "config": (False, False, True, "direction", 1),
    "dualproj": (True, True, True, "none", 1),
    "famo": (False, False, True, "direction", 1),
    "imtl-g": (False, False, True, "direction", 1),
    "mgda": (True, True, True, "none", 1),
    # defaults: step="capped-log-anchor", equalize=1, conflict="agreement" (the others' share
    # follows their cosine with the task: an objective other than the task may lose ground, and
    # a point where the others cancel the task is not a stopping point)
    "mokd": (False, False, True, "direction", 1),
    "mokd-amortized": (False, False, True, "direction", 1),
    "nash-mtl": (False, False, True, "update", 0),
    "pcgrad": (False, False, False, "none", 1),
    "sum": (False, False, True, "none", 1),
    "upgrad": (True, True, True, "none", 1),
    "weighted": (False, False, True, "none", 1),
}


# Property tests call weights() without observing the losses after a step.
_quiet = pytest.mark.filterwarnings("ignore:.*weights were requested before:RuntimeWarning")


@pytest.mark.parametrize("name", NAMES)
def test_declared_promises_match_documentation(name: str) -> None:
    method = make_method(name, 2)
    declared = (
        bool(method.conflict_free),
        bool(method.pareto_stationary),
        bool(method.permutation_equivariant),
        method.scale_invariance,
        int(method.homogeneity),
    )
    assert method.scale_invariance in ("update", "direction", "none")
    if name in DECLARED:
        assert declared == DECLARED[name]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("case", "jacobian"), RANDOM + ADVERSARIAL, ids=[c for c, _ in RANDOM + ADVERSARIAL]
)
@_quiet
def test_finite_weights_of_the_right_shape(name: str, case: str, jacobian: np.ndarray) -> None:
    k = jacobian.shape[0]
    method = make_method(name, k)
    w = update_of(method, jacobian, losses_for(k))[1]
    assert w.shape == (k,)
    assert np.all(np.isfinite(w)), f"{name} on {case}: {w}"
    # The update is bounded: no weight blows up relative to the gradient it multiplies.
    d = jacobian.T @ w
    assert np.all(np.isfinite(d))


@pytest.mark.parametrize("name", promising(lambda m: m.conflict_free))
@pytest.mark.parametrize(
    ("case", "jacobian"), RANDOM + ADVERSARIAL, ids=[c for c, _ in RANDOM + ADVERSARIAL]
)
def test_conflict_free_methods_never_conflict(name: str, case: str, jacobian: np.ndarray) -> None:
    k = jacobian.shape[0]
    method = make_method(name, k)
    if not method.conflict_free:  # a promise may depend on K (mokd's anchor_vs_rest, K > 2)
        pytest.skip(f"{name} makes no conflict-free promise for K = {k}")
    d, w = update_of(method, jacobian, losses_for(k))
    norms = np.linalg.norm(jacobian, axis=1)
    inner = jacobian @ d
    assert np.all(inner >= -norms * tolerance(jacobian, w, rtol=CONFLICT_RTOL, floor=1e-10)), (
        f"{name} on {case}: {inner}"
    )


@settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    data=st.data(),
    k=st.integers(min_value=2, max_value=4),
    n=st.integers(min_value=1, max_value=6),
)
def test_conflict_free_on_generated_matrices(data: st.DataObject, k: int, n: int) -> None:
    # Entries are 0 or of magnitude 1e-2..10 and rows are scaled by 10^[-2, 2]: norm ratios up to
    # 1e7. Far beyond that (1e8 ratio = 1e16 in G) a float64 Gram matrix no longer resolves the
    # small gradient at all, and no Gram-based method can be held to exact properties.
    magnitude = st.floats(1e-2, 10.0)
    element = st.one_of(st.just(0.0), magnitude, magnitude.map(lambda x: -x))
    entries = data.draw(arrays(np.float64, (k, n), elements=element))
    exponents = data.draw(arrays(np.float64, (k, 1), elements=st.floats(-2, 2)))
    jacobian = entries * np.power(10.0, exponents)
    norms = np.linalg.norm(jacobian, axis=1)
    for name in NAMES:
        method = make_method(name, k)
        if not method.conflict_free:
            continue
        d, w = update_of(method, jacobian, losses_for(k))
        assert np.all(np.isfinite(w))
        assert np.all(
            jacobian @ d >= -norms * tolerance(jacobian, w, rtol=CONFLICT_RTOL, floor=1e-10)
        ), name


@pytest.mark.parametrize("name", promising(lambda m: m.permutation_equivariant))
@_quiet
def test_permuting_objectives_permutes_weights(name: str) -> None:
    rng = np.random.default_rng(7)
    for case, jacobian in RANDOM[:10] + ADVERSARIAL:
        k = jacobian.shape[0]
        losses = losses_for(k, rng)
        permutation = rng.permutation(k)
        method = make_method(name, k)
        if not method.permutation_equivariant:  # the promise may depend on K
            continue
        permuted_method = make_method(name, k, names=[str(i) for i in permutation])
        d, w = update_of(method, jacobian, losses)
        d_p, w_p = update_of(permuted_method, jacobian[permutation], losses[permutation])
        assert np.linalg.norm(d_p - d) <= tolerance(jacobian, w, w_p), f"{name} on {case}"
        if method.needs_losses_after:  # the learnt state must follow the permutation too
            for _ in range(3):
                after = losses * rng.uniform(0.5, 1.0, size=k)
                method.observe(torch.as_tensor(losses), torch.as_tensor(after))
                permuted_method.observe(
                    torch.as_tensor(losses[permutation]), torch.as_tensor(after[permutation])
                )
                d, w = update_of(method, jacobian, after)
                d_p, w_p = update_of(permuted_method, jacobian[permutation], after[permutation])
                assert np.linalg.norm(d_p - d) <= tolerance(jacobian, w, w_p, rtol=1e-12)
                losses = after


@pytest.mark.parametrize("name", NAMES)
@_quiet
def test_global_gradient_scale(name: str) -> None:
    """Scaling every gradient by s (losses unchanged) scales the update by s ** homogeneity."""
    power = make_method(name, 2).homogeneity
    for case, jacobian in RANDOM[:8] + FULL_RANK[:4]:
        k = jacobian.shape[0]
        losses = losses_for(k)
        method = make_method(name, k)
        d, w = update_of(method, jacobian, losses)
        if solver_failed(method):
            continue  # the documented fallback (previous or uniform weights) makes no such promise
        for s in (1e-3, 37.0):
            d_s, w_s = update_of(make_method(name, k), s * jacobian, losses)
            expected = s**power * d
            assert np.linalg.norm(d_s - expected) <= s**power * tolerance(
                jacobian, w, w_s * s ** (1 - power)
            ), f"{name} on {case}, s={s}"


@pytest.mark.parametrize("name", promising(lambda m: m.scale_invariance != "none"))
@_quiet
def test_rescaling_one_loss(name: str) -> None:
    """Multiplying one loss (hence its gradient) by c leaves the declared part of the update unchanged.

    (FAMO adds ``eps = 1e-8`` to the losses, so its invariance holds to ``eps / L``: the
    factors keep ``c L`` above 1e-2.)
    """
    invariance = make_method(name, 2).scale_invariance
    rng = np.random.default_rng(11)
    for case, jacobian in FULL_RANK:
        k = jacobian.shape[0]
        losses = losses_for(k, rng)
        d, _ = update_of(make_method(name, k), jacobian, losses)
        for c in (0.05, 50.0):
            index = int(rng.integers(k))
            factor = np.ones(k)
            factor[index] = c
            d_c, _ = update_of(make_method(name, k), factor[:, None] * jacobian, factor * losses)
            if invariance == "update":
                assert np.linalg.norm(d_c - d) <= 1e-6 * np.linalg.norm(d), (
                    f"{name} on {case}, c={c}"
                )
            else:
                unit, unit_c = d / np.linalg.norm(d), d_c / np.linalg.norm(d_c)
                assert np.linalg.norm(unit_c - unit) <= 1e-6, f"{name} on {case}, c={c}"


@pytest.mark.parametrize("name", promising(lambda m: m.pareto_stationary))
def test_zero_update_at_pareto_stationary_points(name: str) -> None:
    rng = np.random.default_rng(3)
    for k in (2, 3, 4):
        for n in (k - 1, k + 2):
            jacobian = stationary_case(rng, k, n) * np.exp(rng.uniform(-2, 2, size=(k, 1)))
            method = make_method(name, k)
            if not method.pareto_stationary:  # the promise may depend on K
                continue
            d, _ = update_of(method, jacobian, losses_for(k, rng))
            largest = np.linalg.norm(jacobian, axis=1).max()
            assert np.linalg.norm(d) <= 1e-6 * largest, (
                f"{name}, K={k}, n={n}: |d| = {np.linalg.norm(d)}"
            )


@pytest.mark.parametrize("name", NAMES)
def test_repr_shows_options(name: str) -> None:
    method = make_method(name, 2)
    text = repr(method)
    assert text.startswith(type(method).__name__ + "(")
    for key, value in method.options().items():
        assert f"{key}={value!r}" in text


def test_no_method_option_is_shadowed_by_an_optimizer_argument() -> None:
    # MultiObjectiveOptimizer(base, method, **method_options): an option named like one of the
    # optimizer's own arguments never reaches the method (mokd's "balance" once did not)
    import inspect

    from mokd_optim import MultiObjectiveOptimizer
    from mokd_optim.methods._registry import _REGISTRY

    taken = set(inspect.signature(MultiObjectiveOptimizer.__init__).parameters)
    for name, cls in _REGISTRY.items():
        options = set(inspect.signature(cls.__init__).parameters) - {"self"}
        assert not options & taken, (name, sorted(options & taken))
