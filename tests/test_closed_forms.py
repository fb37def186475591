"""The K = 2 closed forms agree with the general-K paths, and run without host synchronisation.

"Without host synchronisation" is checked on the CPU by compiling each closed form with
``torch.compile(fullgraph=True)``: a ``.item()``, a Python branch on a tensor value or a numpy
round trip breaks the graph and makes the compilation fail.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch

from mokd_optim import methods
from mokd_optim.methods._cagrad import cagrad_weights
from mokd_optim.solvers import project_to_dual_cone
from tests._jacobians import adversarial_cases, random_cases

TWO = [case for case in random_cases(seed=21, count=40) if case[1].shape[0] == 2]
TWO += [case for case in adversarial_cases() if case[1].shape[0] == 2]
IDS = [name for name, _ in TWO]


def gram_of(jacobian: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(jacobian @ jacobian.T, dtype=torch.float64)


def assert_same_update(
    jacobian: np.ndarray, w_closed: torch.Tensor, w_general: torch.Tensor, rtol: float = 1e-9
) -> None:
    d_closed = jacobian.T @ w_closed.numpy()
    d_general = jacobian.T @ w_general.numpy()
    # The floor: a general path that inverts a nearly singular K x K matrix (nearly opposite
    # gradients) resolves a cancelling update to ~1e-9 of the gradient norms.
    allowed = (
        rtol * max(np.linalg.norm(d_closed), np.linalg.norm(d_general))
        + 1e-9 * np.linalg.norm(jacobian, axis=1).max()
    )
    assert np.linalg.norm(d_closed - d_general) <= allowed, (d_closed, d_general)


def test_there_are_enough_two_objective_cases() -> None:
    assert len(TWO) >= 15


@pytest.mark.parametrize(("case", "jacobian"), TWO, ids=IDS)
def test_pcgrad(case: str, jacobian: np.ndarray) -> None:
    gram = gram_of(jacobian)
    closed = methods.pcgrad_weights(gram)
    for orders in ([[0, 1], [1, 0]], [[1, 0], [0, 1]], [[0, 1], [0, 1]]):
        assert_same_update(jacobian, closed, methods.pcgrad_weights(gram, orders))


@pytest.mark.parametrize(("case", "jacobian"), TWO, ids=IDS)
def test_cagrad(case: str, jacobian: np.ndarray) -> None:
    gram = gram_of(jacobian)
    for c in (0.0, 0.4, 0.9, 2.0):
        closed = cagrad_weights(gram, c, solver="closed_form")[0]
        general = cagrad_weights(gram, c, solver="enumerate")[0]
        assert_same_update(jacobian, closed, general, rtol=1e-7)


@pytest.mark.parametrize(("case", "jacobian"), TWO, ids=IDS)
def test_nash_mtl(case: str, jacobian: np.ndarray) -> None:
    gram = gram_of(jacobian)
    losses = torch.ones(2, dtype=torch.float64)
    closed_method = methods.get("nash-mtl", solver="closed_form")
    general_method = methods.get("nash-mtl", solver="cvxpy")
    closed = closed_method.weights(gram, losses)
    general = general_method.weights(gram, losses)
    assert bool(closed_method.info["solver_failed"]) == bool(general_method.info["solver_failed"])
    assert_same_update(jacobian, closed, general, rtol=1e-6)  # the cvxpy sequence stops at tol=1e-6


@pytest.mark.parametrize(("case", "jacobian"), TWO, ids=IDS)
def test_imtl_g_and_config(case: str, jacobian: np.ndarray) -> None:
    gram = gram_of(jacobian)
    if case == "parallel-K2":
        # Same-direction gradients: every multiple of u satisfies the equal-projection condition
        # and the published formula is undefined (singular D U^T); the two paths pick different
        # (documented) points on that line. Only the direction is compared.
        for function in (methods.imtl_g_weights, methods.config_weights):
            d1 = jacobian.T @ function(gram, closed_form=True).numpy()
            d2 = jacobian.T @ function(gram, closed_form=False).numpy()
            np.testing.assert_allclose(d1 / np.linalg.norm(d1), d2 / np.linalg.norm(d2), rtol=1e-9)
        return
    assert_same_update(
        jacobian,
        methods.imtl_g_weights(gram, closed_form=True),
        methods.imtl_g_weights(gram, closed_form=False),
    )
    assert_same_update(
        jacobian,
        methods.config_weights(gram, closed_form=True),
        methods.config_weights(gram, closed_form=False),
    )


@pytest.mark.parametrize("mode", methods.SCALE_MODES)
@pytest.mark.parametrize(("case", "jacobian"), TWO, ids=IDS)
def test_aligned_mtl(case: str, jacobian: np.ndarray, mode: str) -> None:
    gram = gram_of(jacobian)
    closed = methods.aligned_mtl_weights(gram, scale_mode=mode, closed_form=True)
    general = methods.aligned_mtl_weights(gram, scale_mode=mode, closed_form=False)
    assert_same_update(jacobian, closed, general, rtol=1e-7)


@pytest.mark.parametrize(("case", "jacobian"), TWO, ids=IDS)
def test_upgrad_and_dualproj(case: str, jacobian: np.ndarray) -> None:
    gram = gram_of(jacobian)
    for function in (methods.upgrad_weights, methods.dualproj_weights):
        closed = function(gram, backend="closed_form")
        general = function(gram, backend="projected_gradient")
        assert_same_update(jacobian, closed, general)
        assert_same_update(jacobian, closed, function(gram, backend="enumeration"))
    # For two objectives UPGrad is PCGrad's mean.
    assert_same_update(
        jacobian, methods.upgrad_weights(gram), methods.pcgrad_weights(gram, reduction="mean")
    )


def test_dual_cone_closed_form_handles_every_active_set() -> None:
    """Each of the four K = 2 active sets is the answer for some input."""
    g = np.array([1.0, 0.0])
    cases = {
        "none active": (np.stack([g, np.array([1.0, 1.0])]), [0.5, 0.5]),
        "second active": (np.stack([g, np.array([-1.0, 1.0])]), [0.5, 0.5]),
        "first active": (np.stack([np.array([-1.0, 1.0]), g]), [0.5, 0.5]),
        "both active": (np.stack([g, np.array([0.0, 1.0])]), [-0.5, -0.5]),
    }
    for name, (jacobian, u) in cases.items():
        target = torch.tensor(u, dtype=torch.float64)
        closed = project_to_dual_cone(gram_of(jacobian), target, backend="closed_form")
        general = project_to_dual_cone(gram_of(jacobian), target, backend="projected_gradient")
        assert_same_update(jacobian, closed, general)
        enumerated = project_to_dual_cone(gram_of(jacobian), target, backend="enumeration")
        assert_same_update(jacobian, closed, enumerated)
        x = jacobian.T @ closed.numpy()
        assert np.all(jacobian @ x >= -1e-12), name


CLOSED_FORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "pcgrad": lambda g: methods.pcgrad_weights(g),
    "cagrad": lambda g: cagrad_weights(g, 0.4, solver="closed_form")[0],
    "nash-mtl": lambda g: methods.nash_two(g)[0],
    "imtl-g": lambda g: methods.imtl_g_weights(g),
    "config": lambda g: methods.config_weights(g),
    "aligned-mtl": lambda g: methods.aligned_mtl_weights(g, scale_mode="rmse"),
    "upgrad": lambda g: methods.upgrad_weights(g, backend="closed_form"),
    "dualproj": lambda g: methods.dualproj_weights(g, backend="closed_form"),
}


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_closed_forms_compile_without_graph_breaks(name: str) -> None:
    function = CLOSED_FORMS[name]
    torch._dynamo.reset()
    compiled = torch.compile(function, fullgraph=True, backend="eager", dynamic=False)
    jacobian = np.random.default_rng(0).standard_normal((2, 5))
    gram = gram_of(jacobian)
    torch.testing.assert_close(compiled(gram), function(gram), rtol=1e-12, atol=1e-12)
