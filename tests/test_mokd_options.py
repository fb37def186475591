"""MoKD's options beyond the paper: the "bounded" step rule, regularisation, smoothing.

Each is checked against an independent float64 numpy computation on explicit gradient vectors
(tests/reference.py's enumeration solver), plus the promises the docs make about it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mokd_optim import MultiObjectiveOptimizer, methods
from mokd_optim._validation import OptionError
from tests.models import TwoHeadMLP
from tests.reference import min_norm_by_enumeration


def _weights(method, jacobian: np.ndarray, losses: np.ndarray) -> np.ndarray:
    gram = torch.tensor(jacobian @ jacobian.T, dtype=torch.float64)
    return method.weights(gram, torch.tensor(losses, dtype=torch.float64)).numpy()


def _step_at_angle(theta: float, task_norm: float = 2.0, rest_norm: float = 7.0):
    """Two objectives, the task along ``(1, 0)`` and KD at angle ``theta`` to it, with the
    given gradient norms and losses ``(0.5, 3.0)``: ``(jacobian (2, 2), losses (2,))``."""
    jacobian = np.array([[task_norm, 0.0], [rest_norm * np.cos(theta), rest_norm * np.sin(theta)]])
    return jacobian, np.array([0.5, 3.0])


def _kd_update_share(w: np.ndarray, jacobian: np.ndarray) -> float:
    """The second objective's share of the update ``sum_i w_i g_i``, ``|w_2| ||g_2|| /
    sum_i |w_i| ||g_i||``."""
    parts = np.abs(w) * np.linalg.norm(jacobian, axis=1)
    return float(parts[1] / parts.sum())


def _bound(names: int, **options):
    """mokd bound to ``names`` objectives; ``anchor_vs_rest`` off and ``conflict="pareto"``
    unless asked for (most tests here check the plain min-norm trade-off)."""
    method = methods.get("mokd", **{"anchor_vs_rest": False, "conflict": "pareto", **options})
    method.bind([f"l{i}" for i in range(names)])
    return method


def _reference_update(
    jacobian: np.ndarray, losses: np.ndarray, regularization: float, step: str, equalize: float
) -> np.ndarray:
    """The documented update from first principles: h_i = g_i / L_i, v_i = h_i / ||h_i||^e,
    V = v v^T / mean diag, alpha = argmin_simplex alpha^T (V + r I) alpha, pi ∝ alpha_i /
    ||h_i||^e, then the step-length rule."""
    h = jacobian / losses[:, None]
    scale = np.linalg.norm(h, axis=1) ** -equalize
    v = h * scale[:, None]
    gram = v @ v.T
    _, alpha = min_norm_by_enumeration(
        gram / np.mean(np.diag(gram)) + regularization * np.eye(len(losses))
    )
    pi = alpha * scale / np.sum(alpha * scale)
    direction = pi @ h
    anchor = np.linalg.norm(jacobian[0])
    if step == "anchor":
        return direction * anchor / np.linalg.norm(direction)
    if step == "log-anchor":
        return direction * anchor / losses[0] / np.linalg.norm(direction)
    if step == "capped-log-anchor":
        return direction * anchor * min(1.0, 1.0 / losses[0]) / np.linalg.norm(direction)
    if step == "bounded":
        return direction * anchor / float(pi @ np.linalg.norm(h, axis=1))
    return direction


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("regularization", [0.0, 0.3, 10.0])
@pytest.mark.parametrize("equalize", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("step", ["anchor", "bounded", "log", "log-anchor", "capped-log-anchor"])
def test_update_matches_the_reference(
    k: int, regularization: float, equalize: float, step: str
) -> None:
    rng = np.random.default_rng(10 * k + int(regularization * 10) + int(equalize * 4))
    for _ in range(4):
        jacobian = rng.standard_normal((k, 30)) * rng.uniform(0.01, 100, size=(k, 1))
        losses = rng.uniform(0.05, 5.0, size=k)
        method = _bound(k, step=step, regularization=regularization, equalize=equalize)
        update = _weights(method, jacobian, losses) @ jacobian
        expected = _reference_update(jacobian, losses, regularization, step, equalize)
        np.testing.assert_allclose(update, expected, rtol=1e-6, atol=1e-9 * np.abs(expected).max())


def test_regularization_moves_the_weights_from_min_norm_to_uniform() -> None:
    # a slow objective (tiny relative gradient) takes all the weight at r = 0
    rng = np.random.default_rng(0)
    jacobian = rng.standard_normal((3, 40)) * np.array([[1.0], [1.0], [0.01]])
    losses = np.ones(3)
    pis = []
    for r in (0.0, 0.1, 1.0, 100.0, 1e6):
        method = _bound(3, step="log", regularization=r, equalize=0.0)
        method.weights(
            torch.tensor(jacobian @ jacobian.T, dtype=torch.float64),
            torch.tensor(losses, dtype=torch.float64),
        )
        pis.append(method.info["simplex_weights"].numpy())
    assert pis[0][2] > 0.99
    slow = [pi[2] for pi in pis]
    assert all(a >= b - 1e-12 for a, b in zip(slow, slow[1:])), slow  # monotone towards 1/3
    np.testing.assert_allclose(pis[-1], np.full(3, 1 / 3), atol=1e-5)


def test_bounded_length_never_exceeds_the_anchor_and_equals_it_for_parallel_gradients() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        jacobian = rng.standard_normal((2, 25)) * rng.uniform(1e-3, 1e3, size=(2, 1))
        losses = rng.uniform(0.01, 10, size=2)
        update = _weights(_bound(2, step="bounded"), jacobian, losses) @ jacobian
        assert np.linalg.norm(update) <= np.linalg.norm(jacobian[0]) * (1 + 1e-9)
    g = rng.standard_normal(25)
    parallel = np.stack([g, 7.0 * g])
    update = _weights(_bound(2, step="bounded"), parallel, np.array([0.3, 2.0])) @ parallel
    np.testing.assert_allclose(np.linalg.norm(update), np.linalg.norm(g), rtol=1e-9)


@pytest.mark.parametrize(
    "options",
    [
        {"step": "bounded"},
        {"step": "capped-log-anchor"},
        {"regularization": 1.0},
        {"smoothing": 0.9},
    ],
)
def test_rescaling_a_non_anchor_loss_changes_nothing(digits, options) -> None:
    # both losses reach every parameter (no private head), so whole trajectories can be compared
    x, y = digits[0][:64], digits[1][:64]
    target = torch.randn(64, 10)
    trajectories = []
    for scale in (1.0, 1e3, 1e-2):
        torch.manual_seed(0)
        model = TwoHeadMLP()
        opt = MultiObjectiveOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.5), "mokd", **options
        )
        for _ in range(3):  # several steps, so the moving average has history
            opt.zero_grad()
            logits = model(x)[0]
            opt.backward(
                {"task": F.cross_entropy(logits, y), "kd": scale * F.mse_loss(logits, target)}
            )
            opt.step()
        trajectories.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    for other in trajectories[1:]:
        torch.testing.assert_close(other, trajectories[0], rtol=1e-4, atol=1e-6)


def test_capped_log_anchor_is_the_shorter_of_anchor_and_log_anchor() -> None:
    rng = np.random.default_rng(7)
    jacobian = rng.standard_normal((2, 20))
    for task_loss in (0.05, 0.5, 1.0, 2.0, 30.0):
        losses = np.array([task_loss, 0.7])
        lengths = {
            step: np.linalg.norm(_weights(_bound(2, step=step), jacobian, losses) @ jacobian)
            for step in ("anchor", "log-anchor", "capped-log-anchor")
        }
        assert lengths["capped-log-anchor"] == pytest.approx(
            min(lengths["anchor"], lengths["log-anchor"]), rel=1e-9
        )
        assert lengths["capped-log-anchor"] <= np.linalg.norm(jacobian[0]) * (1 + 1e-9)


def test_smoothing_averages_the_normalised_log_gram_with_bias_correction() -> None:
    rng = np.random.default_rng(2)
    beta = 0.8
    method = _bound(2, step="log", smoothing=beta, equalize=0.0)
    average = np.zeros((2, 2))
    for t in range(1, 6):
        jacobian = rng.standard_normal((2, 10)) * np.array([[1.0], [0.2 * t]])
        losses = rng.uniform(0.5, 2.0, size=2)
        w = _weights(method, jacobian, losses)
        h = jacobian / losses[:, None]
        log_gram = h @ h.T
        average = beta * average + (1 - beta) * log_gram / np.mean(np.diag(log_gram))
        _, pi = min_norm_by_enumeration(average / (1 - beta**t))
        np.testing.assert_allclose(w, pi / losses, rtol=1e-8)
        if t == 1:  # bias correction: the first step is the unsmoothed MoKD step
            _, exact = min_norm_by_enumeration(log_gram)
            np.testing.assert_allclose(pi, exact, rtol=1e-8, atol=1e-12)


def test_smoothing_state_round_trips_through_the_optimizer(digits) -> None:
    x, y = digits[0][:32], digits[1][:32]
    target = torch.randn(32, 48)

    def run(steps: int, resume_from=None):
        torch.manual_seed(0)
        model = TwoHeadMLP()
        opt = MultiObjectiveOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), "mokd", smoothing=0.9
        )
        if resume_from is not None:
            model.load_state_dict(resume_from[0])
            opt.load_state_dict(resume_from[1])
        for _ in range(steps):
            opt.zero_grad()
            logits, projected, _ = model(x)
            opt.backward({"task": F.cross_entropy(logits, y), "kd": F.mse_loss(projected, target)})
            opt.step()
        return model, opt

    straight, _ = run(4)
    half_model, half_opt = run(2)
    state = half_opt.state_dict()
    assert state["methods"][0]["count"] == 2
    resumed, _ = run(2, (half_model.state_dict(), state))
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("regularization", -1.0),
        ("regularization", math.nan),
        ("regularization", math.inf),
        ("regularization", "1"),
        ("smoothing", 1.0),
        ("smoothing", -0.1),
        ("smoothing", math.nan),
        ("smoothing", True),
    ],
)
def test_bad_option_values_raise_naming_the_option(option: str, value) -> None:
    with pytest.raises(ValueError, match=option):
        methods.get("mokd", **{option: value})


@pytest.mark.parametrize(("equalize", "decades"), [(0.5, 3), (1.0, 6)])
def test_equalize_keeps_the_min_norm_promises(equalize: float, decades: int) -> None:
    # no conflict with any objective, and 0 at a Pareto-stationary point. With equalize=1 the
    # solver sees unit vectors, so any norm ratio is fine; 0.5 keeps half of the ratio's decades
    # in its Gram matrix, checked here up to 1e6 between norms.
    rng = np.random.default_rng(5)
    for _ in range(100):
        k = int(rng.integers(2, 5))
        jacobian = rng.standard_normal((k, 12)) * 10.0 ** rng.uniform(
            -decades, decades, size=(k, 1)
        )
        losses = 10.0 ** rng.uniform(-3, 2, size=k)
        update = _weights(_bound(k, equalize=equalize), jacobian, losses) @ jacobian
        inner = jacobian @ update
        norms = np.linalg.norm(jacobian, axis=1)
        assert np.all(inner >= -1e-7 * norms * np.linalg.norm(update)), inner
    g = rng.standard_normal(12)
    opposite = np.stack([g, -3.0 * g])
    update = _weights(_bound(2, equalize=equalize), opposite, np.array([1.0, 2.0])) @ opposite
    np.testing.assert_allclose(update, 0.0, atol=1e-12)


def test_two_objectives_equalized_is_the_bisector_of_the_unit_gradients() -> None:
    rng = np.random.default_rng(6)
    for _ in range(20):
        jacobian = rng.standard_normal((2, 9)) * np.array([[1e-3], [1e3]])
        losses = rng.uniform(0.1, 10, size=2)
        update = _weights(_bound(2, step="log", equalize=1.0), jacobian, losses) @ jacobian
        units = jacobian / np.linalg.norm(jacobian, axis=1, keepdims=True)
        bisector = units.sum(0)
        cosine = update @ bisector / (np.linalg.norm(update) * np.linalg.norm(bisector))
        assert cosine == pytest.approx(1.0, abs=1e-9)


def test_promises_follow_the_options() -> None:
    assert _bound(2).conflict_free and _bound(2, step="bounded").conflict_free
    # the default step rule, "capped-log-anchor", is tied to the anchor loss's value
    assert _bound(2).scale_invariance == "direction"
    assert _bound(2, step="log-anchor").scale_invariance == "update"
    assert _bound(2, step="anchor").scale_invariance == "direction"
    assert not _bound(2, regularization=1.0).conflict_free
    assert not _bound(2, smoothing=0.5).pareto_stationary
    # the paper's unclipped formula has no equalisation; asking for both is an error
    assert methods.get("mokd", simplex=False).equalize == 0.0
    assert not methods.get("mokd", simplex=False).anchor_vs_rest
    assert methods.get("mokd").anchor_vs_rest  # the default
    assert methods.get("mokd", simplex=False).conflict == "pareto"
    assert methods.get("mokd").conflict == "agreement"  # the default
    with pytest.raises(ValueError, match="simplex=True"):
        methods.get("mokd", simplex=False, equalize=1.0)
    with pytest.raises(ValueError, match="simplex=True"):
        methods.get("mokd", simplex=False, conflict="project")


@pytest.mark.parametrize("equalize", [0.0, 1.0])
@pytest.mark.parametrize("step", ["anchor", "log-anchor", "capped-log-anchor", "bounded"])
def test_orthogonal_gradients_twelve_decades_apart_still_give_the_min_norm_step(
    equalize: float, step: str
) -> None:
    # issue 12: norms 1e-6 and 1e6 gave weights [0, 0] (the small gradient was taken for zero)
    jacobian = np.array([[1e-6, 0.0], [0.0, 1e6]])
    losses = np.array([1.0, 1.0])
    method = _bound(2, step=step, equalize=equalize)
    update = _weights(method, jacobian, losses) @ jacobian
    assert np.linalg.norm(update) > 0
    assert np.all(jacobian @ update >= 0)


def _reference_anchor_vs_rest(jacobian: np.ndarray, losses: np.ndarray, anchor: int) -> np.ndarray:
    """anchor_vs_rest from first principles (equalize=1): unit log-gradients v_i; the others'
    min-norm point u; the min-norm point of v_anchor and u / ||u||; the direction, unit length."""
    h = jacobian / losses[:, None]
    v = h / np.linalg.norm(h, axis=1, keepdims=True)
    others = [i for i in range(len(losses)) if i != anchor]
    _, alpha = min_norm_by_enumeration(v[others] @ v[others].T)
    u = alpha @ v[others]
    pair = np.stack([v[anchor], u / np.linalg.norm(u)])
    _, beta = min_norm_by_enumeration(pair @ pair.T)
    direction = beta @ pair
    return direction / np.linalg.norm(direction)


def _anchored_updates(k: int, anchor: int, seed: int, **options):
    """Five random problems (gradient norms 0.01-100, losses 0.05-5) with the update of mokd
    under ``step="anchor"``, ``anchor_vs_rest=True``, ``conflict="pareto"`` and ``options``;
    yields ``(jacobian, losses, method, update)``."""
    rng = np.random.default_rng(seed)
    method = methods.get(
        "mokd", step="anchor", anchor_vs_rest=True, anchor=anchor, conflict="pareto", **options
    )
    method.bind([f"l{i}" for i in range(k)])
    for _ in range(5):
        jacobian = rng.standard_normal((k, 30)) * rng.uniform(0.01, 100, size=(k, 1))
        losses = rng.uniform(0.05, 5.0, size=k)
        yield jacobian, losses, method, _weights(method, jacobian, losses) @ jacobian


def _assert_direction_and_anchor_length(update, expected, jacobian, anchor) -> None:
    np.testing.assert_allclose(update / np.linalg.norm(update), expected, rtol=1e-6, atol=1e-9)
    # "anchor" length: the anchor's raw gradient norm
    assert np.linalg.norm(update) == pytest.approx(np.linalg.norm(jacobian[anchor]), rel=1e-9)


@pytest.mark.parametrize("k", [3, 4, 5])
@pytest.mark.parametrize("anchor", [0, 2])
def test_anchor_vs_rest_matches_the_reference(k: int, anchor: int) -> None:
    for jacobian, losses, _, update in _anchored_updates(
        k, anchor, 100 + k + anchor, rest="min-norm"
    ):
        expected = _reference_anchor_vs_rest(jacobian, losses, anchor)
        _assert_direction_and_anchor_length(update, expected, jacobian, anchor)


def test_anchor_vs_rest_gives_the_anchor_half_of_the_say_and_nothing_for_two() -> None:
    # four orthogonal objectives: "objectives" gives each a quarter of the update; "anchor"
    # makes the anchor's part of the update as long as the other three parts together
    jacobian = np.diag([3.0, 0.5, 7.0, 2.0])
    losses = np.array([1.5, 0.2, 4.0, 0.9])

    def parts(anchor_vs_rest: bool) -> np.ndarray:
        w = _weights(_bound(4, anchor_vs_rest=anchor_vs_rest), jacobian, losses)
        return w[:, None] * jacobian  # each objective's part of the update

    even = np.linalg.norm(parts(False), axis=1)
    np.testing.assert_allclose(even / even.sum(), [0.25] * 4, rtol=1e-9)
    anchored = parts(True)
    assert np.linalg.norm(anchored[0]) == pytest.approx(
        np.linalg.norm(anchored[1:].sum(0)), rel=1e-9
    )
    rng = np.random.default_rng(3)
    pair = rng.standard_normal((2, 12))
    two = np.array([0.7, 2.0])
    np.testing.assert_allclose(
        _weights(_bound(2, anchor_vs_rest=True), pair, two),
        _weights(_bound(2), pair, two),
        rtol=1e-12,
    )
    assert not _bound(3, anchor_vs_rest=True).conflict_free
    assert not _bound(3, anchor_vs_rest=True).pareto_stationary
    with pytest.raises(OptionError, match="anchor_vs_rest"):
        methods.get("mokd", anchor_vs_rest="yes")


def test_anchor_vs_rest_trains_through_the_optimizer(digits) -> None:
    # the option reaches the method through MultiObjectiveOptimizer's **method_options (an
    # earlier name, "balance", collided with the optimizer's own argument)
    x, y = digits[0][:64], digits[1][:64]
    torch.manual_seed(0)
    model = TwoHeadMLP()
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), "mokd", anchor_vs_rest=True
    )
    targets = torch.randn(64, 10), torch.randn(64, 10)
    first = None
    for _ in range(5):
        opt.zero_grad()
        logits = model(x)[0]
        losses = {
            "task": F.cross_entropy(logits, y),
            "a": F.mse_loss(logits, targets[0]),
            "b": F.mse_loss(logits, targets[1]),
        }
        stats = opt.backward(losses)
        opt.step()
        first = first if first is not None else float(losses["task"])
    assert opt.method.anchor_vs_rest and stats.weights.shape == (3,)
    assert float(losses["task"]) < first


def _reference_rest_sum(jacobian: np.ndarray, losses: np.ndarray, anchor: int) -> np.ndarray:
    """anchor_vs_rest with rest="sum" from first principles: the others' log-gradients summed,
    u = sum_j h_j; the min-norm point of two unit vectors is their midpoint, so the direction is
    h_anchor / ||h_anchor|| + u / ||u||, returned at unit length."""
    h = jacobian / losses[:, None]
    u = np.delete(h, anchor, axis=0).sum(0)
    direction = h[anchor] / np.linalg.norm(h[anchor]) + u / np.linalg.norm(u)
    return direction / np.linalg.norm(direction)


@pytest.mark.parametrize("k", [3, 4, 5])
@pytest.mark.parametrize("anchor", [0, 2])
@pytest.mark.parametrize("equalize", [0.0, 0.5, 1.0])
def test_rest_sum_matches_the_reference(k: int, anchor: int, equalize: float) -> None:
    # the sum of the others' log-gradients does not depend on equalize (each h_j counts once)
    cases = _anchored_updates(k, anchor, 200 + k + anchor, rest="sum", equalize=equalize)
    for jacobian, losses, method, update in cases:
        expected = _reference_rest_sum(jacobian, losses, anchor)
        _assert_direction_and_anchor_length(update, expected, jacobian, anchor)
        # scale-free: any loss times c (its gradient too) leaves the update unchanged
        c = np.ones(k)
        c[(anchor + 1) % k] = 1e3
        c[(anchor + 2) % k] = 1e-2
        rescaled = _weights(method, jacobian * c[:, None], losses * c) @ (jacobian * c[:, None])
        np.testing.assert_allclose(rescaled, update, rtol=1e-6, atol=1e-9 * np.abs(update).max())


def test_rest_sum_does_not_stretch_a_small_gradient() -> None:
    # a feature-like objective whose relative gradient is 100x smaller than the others': the
    # min-norm of the others' unit vectors gives it as large a part of the update as the KD
    # objective; the sum gives it a part in proportion to its relative gradient
    jacobian = np.diag([1.0, 1.0, 0.01])
    losses = np.ones(3)

    def parts(rest: str) -> np.ndarray:
        method = methods.get(
            "mokd", step="anchor", anchor_vs_rest=True, rest=rest, conflict="pareto"
        )
        method.bind(["task", "kd", "feat"])
        return np.linalg.norm(_weights(method, jacobian, losses)[:, None] * jacobian, axis=1)

    min_norm_parts, summed_parts = parts("min-norm"), parts("sum")
    assert min_norm_parts[2] == pytest.approx(min_norm_parts[1], rel=1e-6)
    assert summed_parts[2] / summed_parts[1] == pytest.approx(0.01, rel=1e-6)
    # the task keeps half of the say either way (orthogonal objectives)
    for p in (min_norm_parts, summed_parts):
        assert p[0] == pytest.approx(np.linalg.norm(p[1:]), rel=1e-6)
    # two objectives: rest changes nothing
    rng = np.random.default_rng(5)
    pair, two = rng.standard_normal((2, 9)), np.array([0.4, 3.0])
    np.testing.assert_allclose(
        _weights(_bound(2, anchor_vs_rest=True, rest="sum"), pair, two),
        _weights(_bound(2, anchor_vs_rest=True), pair, two),
        rtol=1e-12,
    )
    # a zero gradient among the others: the sum is the remaining ones'
    zero = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    w = _weights(_bound(3, anchor_vs_rest=True, rest="sum"), zero, np.ones(3))
    assert np.all(np.isfinite(w))
    with pytest.raises(OptionError, match="rest"):
        methods.get("mokd", rest="mean")


def _reference_conflict(
    jacobian: np.ndarray, losses: np.ndarray, anchor: int, conflict: str
) -> np.ndarray:
    """conflict= from first principles (anchor_vs_rest, rest="sum", equalize=1): the others'
    log-gradients summed into u; the direction a + r with a = h_anchor / ||h_anchor||,
    r = u / ||u||; where r . a < 0, "project" removes r's component along a and "drop" removes
    r. Returned at unit length."""
    h = jacobian / losses[:, None]
    a = h[anchor] / np.linalg.norm(h[anchor])
    u = np.delete(h, anchor, axis=0).sum(0)
    r = u / np.linalg.norm(u)
    if r @ a < 0:
        r = r - (r @ a) * a if conflict == "project" else 0 * r
    direction = a + r
    return direction / np.linalg.norm(direction)


@pytest.mark.parametrize("conflict", ["project", "drop"])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_conflict_rules_match_the_reference(conflict: str, k: int) -> None:
    rng = np.random.default_rng(300 + k)
    seen_conflict = seen_agreement = 0
    for _ in range(20):
        jacobian = rng.standard_normal((k, 6)) * rng.uniform(0.01, 100, size=(k, 1))
        losses = rng.uniform(0.05, 5.0, size=k)
        method = methods.get("mokd", step="anchor", conflict=conflict)
        method.bind([f"l{i}" for i in range(k)])
        update = _weights(method, jacobian, losses) @ jacobian
        expected = _reference_conflict(jacobian, losses, 0, conflict)
        np.testing.assert_allclose(update / np.linalg.norm(update), expected, rtol=1e-6, atol=1e-9)
        assert np.linalg.norm(update) == pytest.approx(np.linalg.norm(jacobian[0]), rel=1e-9)
        pareto = methods.get("mokd", step="anchor", conflict="pareto")
        pareto.bind([f"l{i}" for i in range(k)])
        plain = _weights(pareto, jacobian, losses) @ jacobian
        # the anchor never does worse than under the Pareto bisector, and the rule changes
        # nothing where the others' part agrees with the anchor
        unit = jacobian[0] / np.linalg.norm(jacobian[0])
        assert update @ unit >= plain @ unit - 1e-9 * np.linalg.norm(update)
        if np.allclose(update, plain, rtol=1e-9, atol=1e-12 * np.abs(plain).max()):
            seen_agreement += 1
        else:
            seen_conflict += 1
    assert seen_conflict and seen_agreement  # both branches were exercised


def test_conflict_project_keeps_the_others_orthogonal_part_and_drop_does_not() -> None:
    # task along (1, 0) and KD at 120 degrees, r = (-1/2, sqrt(3)/2): the bisector gives the
    # task cos 60 deg = 0.5 of its progress; "project" keeps KD's part orthogonal to the task,
    # direction (1, 0) + (0, sqrt(3)/2); "drop" steps along the task alone; all at the anchor's
    # length (step="anchor")
    angle = np.deg2rad(120)
    jacobian = np.array([[2.0, 0.0], [5 * np.cos(angle), 5 * np.sin(angle)]])
    losses = np.array([0.5, 3.0])

    def update(conflict: str) -> np.ndarray:
        return _weights(_bound(2, step="anchor", conflict=conflict), jacobian, losses) @ jacobian

    bisector = update("pareto")
    assert bisector @ np.array([1.0, 0.0]) == pytest.approx(2.0 * 0.5, rel=1e-9)
    projected = update("project")
    direction = np.array([1.0, np.sqrt(3) / 2])
    np.testing.assert_allclose(projected, 2.0 * direction / np.linalg.norm(direction), rtol=1e-9)
    np.testing.assert_allclose(update("drop"), [2.0, 0.0], atol=1e-12)
    # scale-free: the KD loss times 1e3 or 1e-2 leaves every update unchanged
    for c in (1e3, 1e-2):
        scaled = _weights(
            _bound(2, step="anchor", conflict="project"), jacobian * [[1], [c]], losses * [1, c]
        )
        np.testing.assert_allclose(scaled @ (jacobian * [[1], [c]]), projected, rtol=1e-9)
    # the promises given up, and a clear error for an unknown rule
    for conflict in ("project", "drop"):
        method = _bound(2, conflict=conflict)
        assert not method.conflict_free and not method.pareto_stationary
    assert _bound(2).conflict_free
    with pytest.raises(OptionError, match="conflict"):
        methods.get("mokd", conflict="ignore")


def _reference_agreement(
    jacobian: np.ndarray, losses: np.ndarray, anchor: int, rule: str, trust=None
) -> np.ndarray:
    """The agreement rules of conflict= from first principles (anchor_vs_rest, rest="sum",
    equalize=1): a and r as in _reference_conflict, s = max(a . r, 0), with ``trust`` t made
    s' by logit(s') = logit(s) + logit(t) (set_trust, round 8); "sharpened" then doubles the
    log-odds of s ("sharpened-above" only where s > 1/2); the direction is (1 - s) a + s r
    ("agreement", "sharpened*") or a + s r ("scaled"); "sharpened-below" squares the odds only
    where s < 1/2 and "squared" makes s its square. Returned at unit length."""
    h = jacobian / losses[:, None]
    a = h[anchor] / np.linalg.norm(h[anchor])
    u = np.delete(h, anchor, axis=0).sum(0)
    r = u / np.linalg.norm(u)
    s = max(float(a @ r), 0.0)
    if trust is not None and 0 < s < 1:
        odds = s / (1 - s) * trust / (1 - trust)
        s = odds / (1 + odds)
    if (
        rule == "sharpened"
        or (rule == "sharpened-above" and s > 0.5)
        or (rule == "sharpened-below" and s < 0.5)
    ):
        s = s**2 / (s**2 + (1 - s) ** 2)
    if rule == "squared":
        s = s**2
    direction = (1.0 if rule == "scaled" else (1 - s)) * a + s * r
    return direction / np.linalg.norm(direction)


@pytest.mark.parametrize(
    "rule", ["agreement", "scaled", "sharpened", "sharpened-above", "sharpened-below", "squared"]
)
@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("anchor", [0, 1])
@pytest.mark.parametrize("trust", [None, 0.1, 0.93])
def test_agreement_rules_match_the_reference(rule: str, k: int, anchor: int, trust) -> None:
    rng = np.random.default_rng(500 + k + 10 * anchor)
    signs = set()
    for _ in range(20):
        jacobian = rng.standard_normal((k, 6)) * rng.uniform(0.01, 100, size=(k, 1))
        losses = rng.uniform(0.05, 5.0, size=k)
        method = methods.get("mokd", step="anchor", conflict=rule, anchor=anchor)
        method.bind([f"l{i}" for i in range(k)])
        method.set_trust(trust)
        update = _weights(method, jacobian, losses) @ jacobian
        expected = _reference_agreement(jacobian, losses, anchor, rule, trust)
        np.testing.assert_allclose(update / np.linalg.norm(update), expected, rtol=1e-6, atol=1e-9)
        assert np.linalg.norm(update) == pytest.approx(np.linalg.norm(jacobian[anchor]), rel=1e-9)
        # scale-free: every loss times its own factor leaves the update's direction unchanged
        c = np.exp(rng.uniform(-7, 7, size=k))
        c[anchor] = 1.0
        rescaled = _weights(method, jacobian * c[:, None], losses * c) @ (jacobian * c[:, None])
        np.testing.assert_allclose(rescaled, update, rtol=1e-6, atol=1e-9 * np.abs(update).max())
        h = jacobian / losses[:, None]
        signs.add(bool(h[anchor] @ np.delete(h, anchor, axis=0).sum(0) > 0))
    assert signs == {True, False}  # agreeing and conflicting draws were both exercised


def test_agreement_rules_give_the_others_their_cosine() -> None:
    # task along (1, 0), KD at angle theta: "agreement" gives KD a share cos(theta) of the
    # update ((1 - c) u_task + c u_kd), "scaled" a share c / (1 + c); both step along the task
    # alone when KD is orthogonal to it or against it
    def parts(rule: str, theta: float) -> np.ndarray:
        jacobian, losses = _step_at_angle(theta)
        w = _weights(_bound(2, step="anchor", conflict=rule), jacobian, losses)
        return np.abs(w) * np.linalg.norm(jacobian, axis=1)

    for theta in np.deg2rad([10, 45, 60, 80]):
        c = np.cos(theta)
        agreement, scaled = parts("agreement", theta), parts("scaled", theta)
        assert agreement[1] / agreement.sum() == pytest.approx(c, rel=1e-9)
        assert scaled[1] / scaled.sum() == pytest.approx(c / (1 + c), rel=1e-9)
    for theta in np.deg2rad([90, 120, 180]):
        for rule in ("agreement", "scaled"):
            assert parts(rule, theta)[1] == pytest.approx(0.0, abs=1e-12)
    # at 60 degrees "agreement" is the bisector (equal shares)
    np.testing.assert_allclose(
        parts("agreement", np.deg2rad(60)), parts("pareto", np.deg2rad(60)), rtol=1e-9
    )
    # a zero gradient on either side: the weights stay finite and the rule changes nothing
    for jacobian in (np.array([[1.0, 2.0], [0.0, 0.0]]), np.array([[0.0, 0.0], [1.0, 2.0]])):
        for rule in ("agreement", "scaled"):
            w = _weights(_bound(2, step="anchor", conflict=rule), jacobian, np.ones(2))
            assert np.all(np.isfinite(w))
    for rule in ("agreement", "scaled"):
        method = _bound(2, conflict=rule)
        assert not method.conflict_free and not method.pareto_stationary
    from mokd_optim.methods._mokd import share_by_agreement

    with pytest.raises(ValueError, match="agreement rule"):
        share_by_agreement(torch.ones(2) / 2, torch.eye(2, dtype=torch.float64), 0, "cosine")


def test_sharpened_rules_square_the_odds_of_the_cosine() -> None:
    # task along (1, 0), KD at angle theta (KD 3.5x longer, losses far apart): "sharpened"
    # gives KD the share c^2 / (c^2 + (1 - c)^2) -- more than "agreement" above c = 1/2, less
    # below, the same at 0, 1/2 and 1; "sharpened-above" is "agreement" up to c = 1/2
    def kd_share(rule: str, theta: float) -> float:
        jacobian, losses = _step_at_angle(theta)
        return _kd_update_share(
            _weights(_bound(2, step="anchor", conflict=rule), jacobian, losses), jacobian
        )

    for c, sharp in (
        (0.6, 0.36 / 0.52),
        (0.7, 0.49 / 0.58),
        (0.9, 0.81 / 0.82),
        (0.4, 0.16 / 0.52),
    ):
        theta = np.arccos(c)
        assert kd_share("sharpened", theta) == pytest.approx(sharp, rel=1e-9)
        above = sharp if c > 0.5 else c
        assert kd_share("sharpened-above", theta) == pytest.approx(above, rel=1e-9)
    for c in (0.0, 0.5):
        for rule in ("sharpened", "sharpened-above"):
            assert kd_share(rule, np.arccos(c)) == pytest.approx(c, abs=1e-12)
    for rule in ("sharpened", "sharpened-above"):  # nothing for the teacher in a conflict
        assert kd_share(rule, np.deg2rad(120)) == pytest.approx(0.0, abs=1e-12)
        assert kd_share(rule, 0.0) == pytest.approx(1.0, rel=1e-12)  # parallel: all of it
    from mokd_optim.methods._mokd import agreement_share

    a = torch.tensor([0.0, 0.2, 0.5, 0.8, 1.0], dtype=torch.float64)
    share, anchor_part = agreement_share(a, "sharpened")
    torch.testing.assert_close(share, a**2 / (a**2 + (1 - a) ** 2))
    torch.testing.assert_close(share + anchor_part, torch.ones_like(a))
    share, anchor_part = agreement_share(a, "scaled")
    torch.testing.assert_close(share, a)
    torch.testing.assert_close(anchor_part, torch.ones_like(a))


def test_round_25_rules_shrink_a_little_agreement_most() -> None:
    # "squared": the share is c^2 (0.09 at c = 0.3, 0.49 at 0.7); "sharpened-below": the odds
    # squared below 1/2 (0.3 -> 0.09 / (0.09 + 0.49) = 0.16), the cosine itself from 1/2 up
    def kd_share(rule: str, c: float) -> float:
        jacobian, losses = _step_at_angle(np.arccos(c))
        return _kd_update_share(
            _weights(_bound(2, step="anchor", conflict=rule), jacobian, losses), jacobian
        )

    for c in (0.1, 0.3, 0.45, 0.5, 0.7, 0.95):
        assert kd_share("squared", c) == pytest.approx(c**2, rel=1e-9)
        below = c**2 / (c**2 + (1 - c) ** 2) if c < 0.5 else c
        assert kd_share("sharpened-below", c) == pytest.approx(below, rel=1e-9)
        assert kd_share("squared", c) < kd_share("agreement", c)
    assert kd_share("sharpened-below", 0.3) < kd_share("agreement", 0.3)
    for rule in ("squared", "sharpened-below"):  # nothing in a conflict, everything if parallel
        assert kd_share(rule, -0.5) == pytest.approx(0.0, abs=1e-12)
        assert kd_share(rule, 1.0) == pytest.approx(1.0, rel=1e-12)
    from mokd_optim.methods._mokd import agreement_share

    a = torch.tensor([0.0, 0.2, 0.5, 0.8, 1.0], dtype=torch.float64)
    share, anchor_part = agreement_share(a, "squared")
    torch.testing.assert_close(share, a**2)
    torch.testing.assert_close(share + anchor_part, torch.ones_like(a))


@pytest.mark.parametrize("k", [3, 4, 5])
def test_the_default_never_conflicts_with_the_anchor(k: int) -> None:
    # anchor_vs_rest (the default) keeps no conflict with the anchor, and the promises it gives
    # up for K > 2 are declared as given up
    rng = np.random.default_rng(40 + k)
    method = methods.get("mokd")
    method.bind([f"l{i}" for i in range(k)])
    assert not method.conflict_free and not method.permutation_equivariant
    for _ in range(20):
        jacobian = rng.standard_normal((k, 6)) * np.exp(rng.uniform(-3, 3, size=(k, 1)))
        losses = rng.uniform(0.05, 5.0, size=k)
        update = _weights(method, jacobian, losses) @ jacobian
        assert jacobian[0] @ update >= -1e-9 * np.linalg.norm(jacobian[0]) * np.linalg.norm(update)


@pytest.mark.parametrize("k", [2, 3])
def test_a_lagged_share_can_step_against_the_anchor_after_an_agreeing_step(k: int) -> None:
    # agreement_lag gives a step the previous step's agreement: after a step on which the
    # others agree with the anchor, a step on which they point straight against it still gets
    # a share, and the update then has a negative component along the anchor -- the promise
    # the default (this step's share: none in a conflict) keeps and agreement_lag gives up.
    # The first step is the per-step rule's.
    anchor = np.array([1.0, 0.0, 0.0, 0.0])
    agreeing = np.stack([anchor, *[anchor + 0.1 * np.eye(4)[i + 1] for i in range(k - 1)]])
    against = np.stack([anchor, *[-anchor + 0.1 * np.eye(4)[i + 1] for i in range(k - 1)]])
    losses = np.full(k, 0.7)
    lagged, per_step = methods.get("mokd", agreement_lag=True), methods.get("mokd")
    for method in (lagged, per_step):
        method.bind([f"l{i}" for i in range(k)])
    first = _weights(lagged, against, losses) @ against
    assert anchor @ first >= -1e-9  # the first step: its own (zero) share
    _weights(lagged, agreeing, losses)
    _weights(per_step, agreeing, losses)
    lagged_update = _weights(lagged, against, losses) @ against
    per_step_update = _weights(per_step, against, losses) @ against
    assert anchor @ lagged_update < -0.1 * np.linalg.norm(lagged_update)
    assert anchor @ per_step_update >= -1e-9 * np.linalg.norm(per_step_update)


def test_the_two_objective_bisector_shortcut_equals_the_general_trade_off() -> None:
    # the default's K = 2 path (_bisector_weights) against trade_off(equalize=1), edge cases too
    from mokd_optim.methods._mokd import _bisector_weights, trade_off

    rng = np.random.default_rng(11)
    cases = [rng.standard_normal((2, 7)) * rng.uniform(1e-4, 1e4, size=(2, 1)) for _ in range(30)]
    g = rng.standard_normal(7)
    cases += [np.stack([g, 3 * g]), np.stack([g, -g]), np.stack([g, 0 * g]), np.zeros((2, 7))]
    for jacobian in cases:
        gram = torch.tensor(jacobian @ jacobian.T, dtype=torch.float64)
        losses = torch.tensor(rng.uniform(0.05, 5.0, size=2), dtype=torch.float64)
        log_gram = gram / (losses[:, None] * losses[None, :])
        torch.testing.assert_close(
            _bisector_weights(gram, losses),
            trade_off(log_gram, equalize=1.0),
            rtol=1e-9,
            atol=1e-12,
        )


@pytest.mark.parametrize("conflict", ["project", "agreement", "scaled"])
@pytest.mark.parametrize("anchor", [0, 1])
def test_two_objective_closed_forms_equal_the_general_path(conflict: str, anchor: int) -> None:
    # for K = 2 the conflict rule is folded into the bisector's closed form (_bisector_weights
    # with project=True, _agreement_weights); the general path (pi given, then
    # project_out_conflict or share_by_agreement) must give the same weights, edge cases included
    from mokd_optim.methods._mokd import mokd_simplex_weights, mokd_weights

    rng = np.random.default_rng(17 + anchor)
    cases = [rng.standard_normal((2, 5)) * rng.uniform(1e-3, 1e3, (2, 1)) for _ in range(30)]
    cases += [
        np.array([[1.0, 0.0], [-1.0, 0.0]]),  # opposite
        np.array([[1.0, 0.0], [-3.0, 1e-9]]),  # nearly opposite, unequal
        np.array([[1.0, 0.0], [0.0, 3.0]]),  # orthogonal
        np.array([[2.0, 1.0], [4.0, 2.0]]),  # parallel
        np.array([[1.0, 2.0], [0.0, 0.0]]),  # a zero gradient
        np.array([[0.0, 0.0], [1.0, 2.0]]),
        np.zeros((2, 2)),  # both zero
    ]
    # the agreement rules also with set_trust's evidence (round 8), strictly inside (0, 1) as
    # TeacherTrust's values are: at 0 or 1 a parallel pair, cosine 1 or 1 - 1e-16 by rounding,
    # is the undecided 0/0 of weigh_by_trust; with trust the parallel pair's anchor share
    # differs by about 1e-13 between the paths, where odds of 1e3 magnify the rounding
    trusts = (None,) if conflict == "project" else (None, 1e-3, 0.3, 0.9, 1 - 1e-3)
    for jacobian in cases:
        gram = torch.tensor(jacobian @ jacobian.T, dtype=torch.float64)
        losses = torch.tensor(rng.uniform(0.1, 3.0, 2), dtype=torch.float64)
        for trust in trusts:
            options = dict(step="capped-log-anchor", anchor=anchor, equalize=1.0, conflict=conflict)
            if trust is not None:
                options["trust"] = torch.tensor(trust, dtype=torch.float64)
            rtol, atol = (1e-12, 1e-15) if trust is None else (1e-9, 1e-11)
            fast_w, fast_pi = mokd_weights(gram, losses, **options)
            pi = mokd_simplex_weights(gram, losses, equalize=1.0)
            slow_w, slow_pi = mokd_weights(gram, losses, pi=pi, **options)
            np.testing.assert_allclose(fast_pi.numpy(), slow_pi.numpy(), rtol=rtol, atol=atol)
            np.testing.assert_allclose(fast_w.numpy(), slow_w.numpy(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("step", ["anchor", "bounded", "log-anchor", "capped-log-anchor"])
@pytest.mark.parametrize("conflict", ["agreement", "pareto", "project"])
def test_lengthen_multiplies_the_length_by_one_plus_the_others_agreement(
    k: int, step: str, conflict: str
) -> None:
    # lengthen=True (round 10): the same direction, the rule's length times 1 + max(c, 0), c
    # the cosine of the others' part of the update (sum_{j != anchor} w_j g_j) with the
    # anchor's raw gradient, computed here from the update itself
    rng = np.random.default_rng(100 + k)
    options = dict(step=step, conflict=conflict, anchor_vs_rest=True, rest="sum", equalize=1.0)
    plain, longer = _bound(k, **options), _bound(k, lengthen=True, **options)
    agreeing = 0
    for _ in range(25):
        jacobian = rng.standard_normal((k, 6)) * np.exp(rng.uniform(-4, 4, size=(k, 1)))
        jacobian[1:] += rng.uniform(0, 3) * jacobian[0] * np.exp(rng.uniform(-4, 4))
        losses = rng.uniform(0.05, 5.0, size=k)
        w = _weights(plain, jacobian, losses)
        rest = w[1:] @ jacobian[1:]
        product = np.linalg.norm(rest) * np.linalg.norm(jacobian[0])
        c = rest @ jacobian[0] / product if product > 0 else 0.0  # no others' part: no change
        agreeing += c > 0
        expected = (1 + max(c, 0.0)) * (w @ jacobian)
        np.testing.assert_allclose(
            _weights(longer, jacobian, losses) @ jacobian, expected, rtol=1e-9, atol=1e-12
        )
    assert 0 < agreeing < 25  # both agreeing and conflicting draws were exercised


def test_lengthen_on_constructed_angles_is_scale_free() -> None:
    # task along (1, 0) with loss 0.5 (capped-log-anchor: the task's step, ||g_task||), KD at
    # angle theta: the default's update is ||g_task|| long; lengthen makes it 1 + cos(theta)
    # (2 when parallel, 1.5 at 60 degrees, 1 from 90 degrees on), and multiplying the KD loss
    # by e^+-7 changes nothing
    method = methods.get("mokd", lengthen=True)
    method.bind(["task", "kd"])
    for degrees, factor in (
        (0, 2.0),
        (30, 1 + np.cos(np.pi / 6)),
        (60, 1.5),
        (90, 1.0),
        (150, 1.0),
    ):
        theta = np.deg2rad(degrees)
        jacobian = np.array([[2.0, 0.0], [7 * np.cos(theta), 7 * np.sin(theta)]])
        for s in (1.0, np.exp(7), np.exp(-7)):
            scaled = jacobian * np.array([[1.0], [s]])
            update = _weights(method, scaled, np.array([0.5, 3.0 * s])) @ scaled
            assert np.linalg.norm(update) == pytest.approx(2.0 * factor, rel=1e-9)
    # a zero gradient on the distillation side: nothing to lengthen by
    update = _weights(method, np.array([[2.0, 0.0], [0.0, 0.0]]), np.array([0.5, 3.0]))
    assert np.all(np.isfinite(update))


def test_lengthen_needs_an_anchored_step_rule_and_a_flag() -> None:
    for step in ("log", "convex"):
        with pytest.raises(ValueError, match="lengthen needs a step rule"):
            methods.get("mokd", step=step, lengthen=True)
    with pytest.raises(OptionError, match="lengthen"):
        methods.get("mokd", lengthen=1)
    from mokd_optim.methods._mokd import mokd_weights

    with pytest.raises(ValueError, match="lengthen needs a step rule"):
        mokd_weights(
            torch.eye(2, dtype=torch.float64),
            torch.ones(2, dtype=torch.float64),
            step="log",
            lengthen=True,
        )
    assert methods.get("mokd").options()["lengthen"] is False
    assert methods.get("mokd", lengthen=True).options()["lengthen"] is True


def test_lengthen_reaches_the_step_through_the_optimizer(digits) -> None:
    # plain SGD (no momentum): one step with lengthen moves every parameter by (1 + a) times
    # the default's step from the same point, a = max(cos(g_task, g_kd), 0) from the stats
    x, y = digits[0][:64], digits[1][:64]
    targets = torch.softmax(torch.randn(64, 10), dim=1)

    def one_step(lengthen: bool):
        torch.manual_seed(0)
        model = TwoHeadMLP()
        before = [p.detach().clone() for p in model.parameters()]
        opt = MultiObjectiveOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1), "mokd", lengthen=lengthen
        )
        logits = model(x)[0]
        losses = {
            "task": F.cross_entropy(logits, y),
            "kd": F.kl_div(F.log_softmax(logits, 1), targets, reduction="batchmean"),
        }
        opt.zero_grad()
        stats = opt.backward(losses)
        opt.step()
        moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
        return moved, stats

    plain, stats = one_step(False)
    longer, _ = one_step(True)
    gram = stats.gram.double()
    c = float(gram[0, 1] / (gram[0, 0] * gram[1, 1]).sqrt())
    assert c > 0.05  # the case is one where the lengthening shows
    torch.testing.assert_close(longer, (1 + c) * plain, rtol=1e-4, atol=1e-7)


def _random_agreement_step(rng, k: int):
    """A random step of K objectives (gradients and losses up to e^3 apart) and the agreement
    max(c, 0) of the anchor's log-gradient with the sum of the others'."""
    jacobian = rng.standard_normal((k, 5)) * np.exp(rng.uniform(-3, 3, size=(k, 1)))
    losses = rng.uniform(0.05, 5.0, size=k)
    h = jacobian / losses[:, None]
    rest = h[1:].sum(0)
    agreement = max(float(h[0] @ rest / np.linalg.norm(h[0]) / np.linalg.norm(rest)), 0.0)
    return jacobian, losses, agreement


def _check_share_used(rng, method, rescaled, jacobian, losses, used: float) -> None:
    """``method``'s update points along ``(1 - used) u_anchor + used u_rest`` (unit
    log-gradients), and ``rescaled`` gives the same update with every loss times its own
    factor (the anchor's 1)."""
    k = len(losses)
    h = jacobian / losses[:, None]
    rest = h[1:].sum(0)
    update = _weights(method, jacobian, losses) @ jacobian
    a = h[0] / np.linalg.norm(h[0])
    r = rest / np.linalg.norm(rest)
    expected = (1 - used) * a + used * r
    np.testing.assert_allclose(
        update / np.linalg.norm(update), expected / np.linalg.norm(expected), rtol=1e-7
    )
    c = np.exp(rng.uniform(-7, 7, size=k))
    c[0] = 1.0
    other = _weights(rescaled, jacobian * c[:, None], losses * c) @ (jacobian * c[:, None])
    np.testing.assert_allclose(other, update, rtol=1e-6, atol=1e-9 * np.abs(update).max())


@pytest.mark.parametrize("gate", ["off", "mean", "agreeing-mean", "blend"])
@pytest.mark.parametrize("k", [2, 3])
def test_agreement_smoothing_uses_the_running_mean_of_the_agreement(k: int, gate: str) -> None:
    # a sequence of steps with known agreements (about half of them conflicts): with
    # agreement_smoothing = beta the rule acts on the bias-corrected moving average of
    # max(c, 0) up to each step, not the step's own; agreement_gate="mean" gives a conflicting
    # step no share and the others that average, "agreeing-mean" no share and the average of
    # c over the agreeing steps only, "blend" (1 - f) times the average plus f times the
    # step's own agreement, f the average of the conflict indicator; every loss times its own
    # factor changes nothing; the
    # state survives a state_dict round trip; the first step is the per-step rule
    rng = np.random.default_rng(70 + k)
    beta = 0.8
    options = {"step": "anchor", "agreement_smoothing": beta, "agreement_gate": gate}
    smoothed = methods.get("mokd", **options)
    rescaled = methods.get("mokd", **options)
    for method in (smoothed, rescaled):
        method.bind([f"l{i}" for i in range(k)])
    average, agreeing, count = 0.0, 0.0, 0
    steps, conflicts = [], 0
    for _ in range(12):
        jacobian, losses, agreement = _random_agreement_step(rng, k)
        count += 1
        average = beta * average + (1 - beta) * agreement
        agreeing = beta * agreeing + (1 - beta) * (agreement > 0)
        used = average / (1 - beta**count)
        if gate == "agreeing-mean" and agreeing > 0:
            used = average / agreeing
        if gate == "blend":
            conflict_fraction = 1 - agreeing / (1 - beta**count)
            used = (1 - conflict_fraction) * used + conflict_fraction * agreement
            conflicts += agreement == 0
        elif gate != "off" and agreement == 0:
            used, conflicts = 0.0, conflicts + 1
        _check_share_used(rng, smoothed, rescaled, jacobian, losses, used)
        steps.append((jacobian, losses))
    assert gate == "off" or 2 <= conflicts <= 10  # both kinds of step were checked
    # a state_dict round trip continues the same average
    state = smoothed.state_dict()
    assert state["agreement_count"] == 12
    restored = methods.get("mokd", **options)
    restored.bind([f"l{i}" for i in range(k)])
    restored.load_state_dict(state)
    jacobian, losses = steps[0]
    np.testing.assert_allclose(
        _weights(restored, jacobian, losses), _weights(smoothed, jacobian, losses), rtol=1e-12
    )
    with pytest.raises(ValueError, match="incomplete"):
        restored.load_state_dict({"agreement_average": state["agreement_average"]})
    # the first step is the per-step rule (the corrected average of one value is that value)
    fresh = methods.get("mokd", **options)
    plain = methods.get("mokd", step="anchor")
    for method in (fresh, plain):
        method.bind([f"l{i}" for i in range(k)])
    np.testing.assert_allclose(
        _weights(fresh, *steps[3]), _weights(plain, *steps[3]), rtol=1e-9, atol=1e-15
    )


def test_the_default_share_is_the_runs_mean_agreement_on_every_step() -> None:
    # round 22 adopted agreement_smoothing=0.999 with agreement_gate="off" for the agreement
    # rules (rounds 18-21: 0.99 with "mean", still reachable by options); any rule that cannot
    # use it (or agreement_lag) keeps the per-step share, and agreement_smoothing=0 gives round
    # 7's per-step rule back; the gate is "off" unless asked for
    default = methods.get("mokd").options()
    assert default["agreement_smoothing"] == pytest.approx(0.999)
    assert default["agreement_gate"] == "off"
    for options in ({"conflict": "project"}, {"agreement_lag": True}, {"simplex": False}):
        chosen = methods.get("mokd", **options).options()
        assert (chosen["agreement_smoothing"], chosen["agreement_gate"]) == (0.0, "off")
    per_step = methods.get("mokd", agreement_smoothing=0.0).options()
    assert (per_step["agreement_smoothing"], per_step["agreement_gate"]) == (0.0, "off")
    assert methods.get("mokd", agreement_smoothing=0.9).options()["agreement_gate"] == "off"
    # the default steps exactly as the explicit configuration does, and differs from rounds
    # 18-21's and from round 7's
    rng = np.random.default_rng(22)
    implicit, explicit, round_18, round_7 = (
        methods.get("mokd", **options)
        for options in (
            {},
            {"agreement_smoothing": 0.999, "agreement_gate": "off"},
            {"agreement_smoothing": 0.99, "agreement_gate": "mean"},
            {"agreement_smoothing": 0.0},
        )
    )
    for method in (implicit, explicit, round_18, round_7):
        method.bind(["task", "kd"])
    differs_18 = differs_7 = False
    for _ in range(8):
        jacobian, losses, _ = _random_agreement_step(rng, 2)
        w = _weights(implicit, jacobian, losses)
        np.testing.assert_array_equal(w, _weights(explicit, jacobian, losses))
        differs_18 |= not np.allclose(w, _weights(round_18, jacobian, losses))
        differs_7 |= not np.allclose(w, _weights(round_7, jacobian, losses))
    assert differs_18 and differs_7


def test_agreement_smoothing_checks_its_value_and_rule() -> None:
    assert methods.get("mokd", agreement_smoothing=0.0).options()["agreement_smoothing"] == 0.0
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(OptionError, match="agreement_smoothing"):
            methods.get("mokd", agreement_smoothing=bad)
    for conflict in ("pareto", "project", "drop"):
        with pytest.raises(OptionError, match="agreement_smoothing"):
            methods.get("mokd", conflict=conflict, agreement_smoothing=0.9)
    for conflict in ("agreement", "scaled", "sharpened"):
        assert methods.get("mokd", conflict=conflict, agreement_smoothing=0.9).options()[
            "agreement_smoothing"
        ] == pytest.approx(0.9)
    assert methods.get("mokd", agreement_smoothing=0.0).options()["agreement_gate"] == "off"
    with pytest.raises(OptionError, match="agreement_gate"):
        methods.get("mokd", agreement_smoothing=0.9, agreement_gate="conflict")
    for gate in ("mean", "agreeing-mean", "blend"):
        with pytest.raises(OptionError, match="needs agreement_smoothing"):
            methods.get("mokd", agreement_smoothing=0.0, agreement_gate=gate)
        with pytest.raises(OptionError, match="needs agreement_smoothing"):
            methods.get("mokd", conflict="project", agreement_gate=gate)
        assert (
            methods.get("mokd", agreement_smoothing=0.9, agreement_gate=gate).options()[
                "agreement_gate"
            ]
            == gate
        )
    from mokd_optim.methods._mokd import mokd_weights

    gram = torch.eye(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="agreement_average"):
        mokd_weights(gram, torch.ones(2, dtype=torch.float64), agreement_average=lambda a: a)


@pytest.mark.parametrize("k", [2, 3])
def test_agreement_lag_uses_the_previous_steps_agreement(k: int) -> None:
    # a sequence of steps with known agreements (some of them conflicts): with agreement_lag the
    # rule acts on the previous step's max(c, 0), the first step on its own; every loss times
    # its own factor changes nothing; a state_dict round trip carries the last agreement over
    rng = np.random.default_rng(90 + k)
    lagged = methods.get("mokd", step="anchor", agreement_lag=True)
    rescaled = methods.get("mokd", step="anchor", agreement_lag=True)
    for method in (lagged, rescaled):
        method.bind([f"l{i}" for i in range(k)])
    previous = None
    steps, zero_used, positive_used = [], 0, 0
    for _ in range(12):
        jacobian, losses, agreement = _random_agreement_step(rng, k)
        used = agreement if previous is None else previous
        zero_used += used == 0 and agreement > 0
        positive_used += used > 0 and agreement == 0
        previous = agreement
        _check_share_used(rng, lagged, rescaled, jacobian, losses, used)
        steps.append((jacobian, losses))
    # the lag was visible: a share on a conflicting step, none on an agreeing one
    assert zero_used >= 1 and positive_used >= 1
    state = lagged.state_dict()
    restored = methods.get("mokd", step="anchor", agreement_lag=True)
    restored.bind([f"l{i}" for i in range(k)])
    restored.load_state_dict(state)
    np.testing.assert_allclose(
        _weights(restored, *steps[0]), _weights(lagged, *steps[0]), rtol=1e-12
    )


def test_agreement_lag_checks_its_options() -> None:
    assert methods.get("mokd").options()["agreement_lag"] is False
    with pytest.raises(OptionError, match="agreement_lag"):
        methods.get("mokd", agreement_lag=1)
    for conflict in ("pareto", "project", "drop"):
        with pytest.raises(OptionError, match="agreement_lag needs conflict"):
            methods.get("mokd", conflict=conflict, agreement_lag=True)
    with pytest.raises(OptionError, match="exclude each other"):
        methods.get("mokd", agreement_lag=True, agreement_smoothing=0.9)
    assert methods.get("mokd", conflict="scaled", agreement_lag=True).options()["agreement_lag"]


def test_share_growth_multiplies_the_odds_by_the_norm_ratios_growth() -> None:
    # round 26's candidate: after SHARE_GROWTH_START steps the distillation share's odds are the
    # default's times rho_avg / rho_0 -- rho_0 the mean norm ratio of the first ten steps,
    # rho_avg its moving average (decay 0.95, started at the first ratio). Reference written
    # from the definition, step by step, on ratios that grow, shrink and jump
    from mokd_optim.methods._mokd import SHARE_GROWTH_SMOOTHING, SHARE_GROWTH_START

    assert (SHARE_GROWTH_SMOOTHING, SHARE_GROWTH_START) == (0.95, 10)
    rng = np.random.default_rng(26)
    grown, default = methods.get("mokd", share_growth=True), methods.get("mokd")
    for method in (grown, default):
        method.bind(["task", "kd"])
    ratios = [*rng.uniform(0.5, 1.5, 10), *np.linspace(1.0, 8.0, 25), *rng.uniform(0.1, 0.3, 20)]
    average, growths = None, []
    for step, rho in enumerate(ratios, start=1):
        c = float(rng.uniform(0.05, 0.9))
        task_norm = float(np.exp(rng.uniform(-2, 2)))
        jacobian, losses = _step_at_angle(np.arccos(c), task_norm, rho * task_norm)
        a = _kd_update_share(_weights(default, jacobian, losses), jacobian)
        got = _kd_update_share(_weights(grown, jacobian, losses), jacobian)
        average = rho if average is None else 0.95 * average + 0.05 * rho
        if step <= SHARE_GROWTH_START:
            assert got == pytest.approx(a, rel=1e-12)  # the start: the default's share
            continue
        growths.append(average / np.mean(ratios[:SHARE_GROWTH_START]))
        assert got / (1 - got) == pytest.approx(growths[-1] * a / (1 - a), rel=1e-9)
    # both directions exercised: the odds rose above 3x the default's, then fell back
    assert max(growths) > 3 and growths[-1] < max(growths) / 2


def test_share_growth_is_scale_free_and_round_trips() -> None:
    # the KD loss times 1e3 (its gradient, loss and norm ratio too): the same direction and the
    # same length on every step; a state_dict round trip continues the same course
    rng = np.random.default_rng(260)
    plain, scaled, halfway = (methods.get("mokd", share_growth=True) for _ in range(3))
    for method in (plain, scaled, halfway):
        method.bind(["task", "kd"])
    steps = [
        _step_at_angle(np.arccos(rng.uniform(0.1, 0.9)), 1.0, float(np.exp(0.1 * i)))
        for i in range(24)
    ]
    for i, (jacobian, losses) in enumerate(steps):
        w = _weights(plain, jacobian, losses)
        big = jacobian * np.array([[1.0], [1e3]])
        w_big = _weights(scaled, big, losses * np.array([1.0, 1e3]))
        np.testing.assert_allclose(w_big @ big, w @ jacobian, rtol=1e-9)
        if i == 12:
            state = plain.state_dict()
            assert set(state) >= {"growth_average", "growth_count"}
            halfway.load_state_dict(state)
        if i > 12:
            np.testing.assert_array_equal(_weights(halfway, jacobian, losses), w)
    assert plain.options()["share_growth"] is True
    assert methods.get("mokd").options()["share_growth"] is False


def test_share_growth_combines_with_trust_and_needs_an_agreement_rule() -> None:
    # set_trust's odds and the growth's multiply; without an agreement rule there is no share
    for conflict in ("pareto", "project", "drop"):
        with pytest.raises(OptionError, match="share_growth"):
            methods.get("mokd", conflict=conflict, share_growth=True)
    with pytest.raises(OptionError, match="share_growth"):
        methods.get("mokd", share_growth="yes")
    both, growth_only = (
        methods.get("mokd", share_growth=True),
        methods.get("mokd", share_growth=True),
    )
    for method in (both, growth_only):
        method.bind(["task", "kd"])
    both.set_trust(0.8)  # odds 4
    for step in range(14):
        jacobian, losses = _step_at_angle(np.arccos(0.4), 1.0, 1.0 if step < 10 else 3.0)
        with_trust = _kd_update_share(_weights(both, jacobian, losses), jacobian)
        alone = _kd_update_share(_weights(growth_only, jacobian, losses), jacobian)
        ratio = (with_trust / (1 - with_trust)) / (alone / (1 - alone))
        assert ratio == pytest.approx(4.0, rel=1e-9)
    assert alone > 0.4  # the grown ratio raised the share above the cosine's 0.4


def _relative_step(cosine: float, rest_norm: float, task_loss: float, rest_loss: float):
    """Two objectives, the task's gradient ``(1, 0)``, the others' of norm ``rest_norm`` at
    ``cosine`` to it, and the losses: ``(jacobian (2, 2), losses (2,))``. The ratio of relative
    gradients is ``(rest_norm / rest_loss) / (1 / task_loss)``."""
    theta = np.arccos(cosine)
    jacobian = np.array([[1.0, 0.0], [rest_norm * np.cos(theta), rest_norm * np.sin(theta)]])
    return jacobian, np.array([task_loss, rest_loss])


def test_relative_start_takes_a_fixed_weights_course_past_the_pivot() -> None:
    # the first ten steps: the default's share, and the ratio of relative gradients measured
    # (rho * L_task / L_rest, here 2.3 on average: past the pivot); then a = 0.1's share with
    # rho against its start, a ratio of 1.0 -> 4.0 giving 0.1 -> 0.31 of the update. A run whose
    # ratio stays below the pivot (0.46) is the default on every step
    from mokd_optim.methods._mokd import (
        RELATIVE_START_GUARD,
        RELATIVE_START_PIVOT,
        RELATIVE_START_WEIGHT,
        SHARE_GROWTH_START,
    )

    assert (RELATIVE_START_PIVOT, RELATIVE_START_WEIGHT, RELATIVE_START_GUARD) == (1.0, 0.1, 2.0)
    rng = np.random.default_rng(41)
    switching, staying = (methods.get("mokd", relative_start=True) for _ in range(2))
    default_a, default_b = methods.get("mokd"), methods.get("mokd")
    for method in (switching, staying, default_a, default_b):
        method.bind(["task", "kd"])
    rhos = [*rng.uniform(0.8, 1.2, SHARE_GROWTH_START), *np.linspace(1.0, 4.0, 20)]
    for step, rho in enumerate(rhos, start=1):
        c = float(rng.uniform(0.1, 0.9))
        near, _ = _relative_step(c, rho, 2.3, 1.0)  # relative ratio 2.3 rho
        far, far_losses = _relative_step(c, rho, 2.3, 5.0)  # 0.46 rho
        losses = np.array([2.3, 1.0])
        got = _kd_update_share(_weights(switching, near, losses), near)
        reference = _kd_update_share(_weights(default_a, near, losses), near)
        stayed = _kd_update_share(_weights(staying, far, far_losses), far)
        assert stayed == pytest.approx(
            _kd_update_share(_weights(default_b, far, far_losses), far), rel=1e-12
        )
        if step <= SHARE_GROWTH_START:
            assert got == pytest.approx(reference, rel=1e-12)
            continue
        grown = rho / np.mean(rhos[:SHARE_GROWTH_START])
        assert got == pytest.approx(0.1 * grown / (0.9 + 0.1 * grown), rel=1e-9)
    assert got > 0.25 and reference > 0.05  # the course grew; the default's share was its own


def test_relative_start_goes_back_to_the_agreement_share_for_good_when_a_loss_rises() -> None:
    # after the switch the task loss jumps past twice its start (2.3 -> 5.0): from that step on
    # the share is the default's -- whose moving average saw every step, so it is the default
    # run's share exactly -- also once the loss is back down
    guarded, default = methods.get("mokd", relative_start=True), methods.get("mokd")
    for method in (guarded, default):
        method.bind(["task", "kd"])
    task_losses = [2.3] * 12 + [5.0] + [1.0] * 5
    for step, task_loss in enumerate(task_losses, start=1):
        jacobian, losses = _relative_step(0.6, 1.0, task_loss, 1.0)
        got = _kd_update_share(_weights(guarded, jacobian, losses), jacobian)
        reference = _kd_update_share(_weights(default, jacobian, losses), jacobian)
        if step in (11, 12):
            assert got == pytest.approx(0.1, rel=1e-9)  # the course (rho at its start)
        else:
            assert got == pytest.approx(reference, rel=1e-12)


def test_relative_start_is_scale_free_and_round_trips() -> None:
    # the KD loss times 1e3 (its gradient and value): the same update on every step, before and
    # after the decision; a state_dict taken before the decision and one after continue alike
    rng = np.random.default_rng(410)
    plain, scaled, early, late = (methods.get("mokd", relative_start=True) for _ in range(4))
    for method in (plain, scaled, early, late):
        method.bind(["task", "kd"])
    steps = [
        _relative_step(float(rng.uniform(0.1, 0.9)), float(np.exp(0.05 * i)), 2.3, 1.0)
        for i in range(24)
    ]
    for i, (jacobian, losses) in enumerate(steps):
        w = _weights(plain, jacobian, losses)
        big = jacobian * np.array([[1.0], [1e3]])
        w_big = _weights(scaled, big, losses * np.array([1.0, 1e3]))
        np.testing.assert_allclose(w_big @ big, w @ jacobian, rtol=1e-9)
        for at, copy in ((5, early), (15, late)):
            if i == at:
                state = plain.state_dict()
                assert set(state) >= {"relative_average", "relative_count"}
                copy.load_state_dict(state)
            if i > at:
                np.testing.assert_array_equal(_weights(copy, jacobian, losses), w)


def test_relative_start_checks_its_options() -> None:
    assert methods.get("mokd").options()["relative_start"] is False
    assert methods.get("mokd", relative_start=True).options()["relative_start"] is True
    with pytest.raises(OptionError, match="relative_start"):
        methods.get("mokd", relative_start="yes")
    for conflict in ("pareto", "project", "drop"):
        with pytest.raises(OptionError, match="relative_start needs conflict"):
            methods.get("mokd", conflict=conflict, relative_start=True)
    with pytest.raises(OptionError, match="exclude each other"):
        methods.get("mokd", relative_start=True, share_growth=True)
