"""Nash-MTL: multi-task learning as a bargaining game (Navon et al., ICML 2022)."""

from __future__ import annotations

import functools
import warnings
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from mokd_optim._typing import PSDMatrix, Weights
from mokd_optim._validation import check_choice, check_number
from mokd_optim.methods._base import Method, as_work, cosine_gram, inverse_norms
from mokd_optim.methods._registry import register
from mokd_optim.solvers import min_norm

SOLVERS = ("auto", "closed_form", "cvxpy")

# Two unit gradients with 1 + cos below this are treated as opposite: no direction improves
# both, so the bargaining problem has no solution (the failure policy applies).
OPPOSITE_TOL = 1e-10


def nash_two(gram: PSDMatrix) -> tuple[Weights, Tensor]:
    """Closed-form Nash bargaining weights for K = 2, and whether the problem had no solution.

    ``alpha_i (G alpha)_i = 1`` has the solution ``alpha_i = 1 / (||g_i|| sqrt(1 + cos))``, so
    ``d = (u_1 + u_2) / sqrt(1 + cos)`` (``u_i`` the unit gradients; ``||d||^2 = 2``). A zero
    gradient is left out (the other objective alone gives ``d = u_i``); two zero gradients
    give 0. Opposite unit gradients (``1 + cos <= OPPOSITE_TOL``) have no solution: the
    returned flag is True and the weights are 0 (the caller applies its fallback).
    Shapes: ``(2, 2)`` -> ``(2,)`` and a 0-dim bool. No host synchronisation.
    """
    work = as_work(gram)
    _, inverse = inverse_norms(work)
    present = inverse > 0
    cos = 0.5 * (work[0, 1] + work[1, 0]) * inverse[0] * inverse[1]
    both = present.all()
    separable = 1.0 + cos > OPPOSITE_TOL
    beta = torch.rsqrt(torch.where(separable, 1.0 + cos, torch.ones_like(cos)))
    pair = inverse * beta
    w = torch.where(both, torch.where(separable, pair, torch.zeros_like(pair)), inverse)
    return w, both & ~separable


class _CCPProblem:
    """The convex subproblem of Nash-MTL's sequence, built once per size and re-solved.

    In the variables ``beta >= 0`` of the unit-gradient Gram matrix ``C``: minimise
    ``sum_i (C beta)_i + grad_phi . beta`` subject to ``log beta_i + log (C beta)_i >= 0``, where
    ``grad_phi`` is the gradient of ``phi(beta) = sum_i log beta_i + log (C beta)_i`` at the
    previous iterate (the concave part linearised, as in the reference implementation). All
    data enter as parameters, so cvxpy compiles the problem once (DPP).
    """

    def __init__(self, k: int) -> None:
        import cvxpy as cp

        self.beta = cp.Variable(k, nonneg=True)
        self.cosine = cp.Parameter((k, k))
        self.grad_phi = cp.Parameter(k)
        utilities = self.cosine @ self.beta
        constraints = [-cp.log(self.beta) - cp.log(utilities) <= 0]
        self.problem = cp.Problem(
            cp.Minimize(cp.sum(utilities) + self.grad_phi @ self.beta), constraints
        )

    def solve(self, cosine: np.ndarray, start: np.ndarray) -> np.ndarray:
        """One subproblem linearised at ``start``; raises ``cvxpy.error.SolverError``."""
        import cvxpy as cp

        self.cosine.value = cosine
        self.grad_phi.value = 1.0 / start + cosine.T @ (1.0 / (cosine @ start))
        self.beta.value = start  # warm start where the solver supports it
        with warnings.catch_warnings():
            # "Solution may be inaccurate": the caller checks every iterate itself.
            warnings.filterwarnings(
                "ignore", message="Solution may be inaccurate", category=UserWarning
            )
            self.problem.solve(
                solver="CLARABEL",
                warm_start=True,
                tol_gap_abs=1e-10,
                tol_gap_rel=1e-10,
                tol_feas=1e-10,
            )
        if self.beta.value is None or self.problem.status not in (
            cp.OPTIMAL,
            cp.OPTIMAL_INACCURATE,
        ):
            raise cp.error.SolverError(f"Nash-MTL subproblem status {self.problem.status!r}")
        return np.asarray(self.beta.value, dtype=np.float64)


@functools.lru_cache(maxsize=16)
def _ccp_problem(k: int) -> _CCPProblem:
    """One compiled subproblem per size, shared by all instances (solved one at a time)."""
    return _CCPProblem(k)


def _common_descent_start(cosine: np.ndarray) -> Optional[np.ndarray]:
    """A point with ``beta > 0`` and ``C beta > 0``, or None when none exists.

    The min-norm point ``m`` of the unit gradients' convex hull has ``(C m)_i >= ||m||^2`` for
    every ``i`` (its optimality conditions); adding ``||m||^2 / (2K)`` to every weight keeps the
    utilities positive (``|C_ij| <= 1``) and makes every weight positive. ``||m|| = 0`` means
    the objectives are Pareto-stationary and the bargaining problem has no solution.
    """
    k = cosine.shape[0]
    m = min_norm(torch.as_tensor(cosine)).numpy()
    squared_norm = float(m @ cosine @ m)
    if squared_norm <= 1e-20:
        return None
    start = m + squared_norm / (2.0 * k)
    return start if _valid_start(cosine, start) else None


def _valid_start(cosine: np.ndarray, beta: Optional[np.ndarray]) -> bool:
    """The linearisation needs ``beta > 0`` and positive utilities ``C beta > 0``."""
    return beta is not None and bool(np.all(beta > 0) and np.all(cosine @ beta > 0))


@register
class NashMTL(Method):
    """Nash-MTL: the Nash bargaining solution between the objectives.

    Formula (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022): the update
    ``d = sum_i alpha_i g_i`` maximises ``sum_i log <g_i, d>`` in a ball; its weights solve
    ``alpha_i (G alpha)_i = 1``, i.e. ``<g_i, d> = 1 / alpha_i`` for every objective. We solve the
    equivalent system ``beta_i (C beta)_i = 1`` on the unit-gradient Gram matrix ``C``
    (``alpha_i = beta_i / ||g_i||``), so norm ratios do not affect the conditioning and the
    update is exactly invariant to rescaling any loss (``d`` has ``||d||^2 = K``).

    K = 2 has a closed form, ``d = (u_1 + u_2) / sqrt(1 + cos)``, with no host synchronisation.
    K > 2 follows the paper: a sequence of convex problems (concave part linearised at the
    previous iterate) solved with cvxpy/Clarabel, built once per size with parameters and
    warm-started from the previous step's solution, until ``max_i |beta_i (C beta)_i - 1| <= tol``
    or ``max_iter`` subproblems (the last iterate is used then). This path syncs with the host.

    Options:
        update_every: recompute the weights every this many calls and reuse the last weights
            in between (the paper's amortisation). It saves the solver time only: the optimizer
            still computes the per-objective gradients on every step.
        max_iter: subproblems per solve (default 20, the paper's value).
        tol: stopping tolerance on the bargaining equations (default 1e-6).
        solver: ``"auto"`` (closed form for K = 2, cvxpy otherwise), ``"closed_form"`` or
            ``"cvxpy"``.

    Degenerate inputs and failures (recorded in ``info``):
        - a zero gradient (norm below ``ZERO_NORM_RTOL`` of the largest) is left out, weight 0;
        - when the problem has no solution (no direction improves every objective, e.g.
          opposite gradients) or cvxpy raises ``cvxpy.error.SolverError`` or ends with a
          non-optimal status, the previous weights are reused (all ones, the plain sum, before
          the first success), ``info["solver_failed"]`` is 1 and ``failures`` counts it.

    Where a solution exists the update conflicts with no objective (``<g_i, d> = 1/alpha_i``).
    The paper also clips the update norm to 1: pass ``max_norm=1.0`` to the optimizer.
    """

    name = "nash-mtl"
    scale_invariance = "update"
    homogeneity = 0

    def __init__(
        self, update_every: int = 1, max_iter: int = 20, tol: float = 1e-6, solver: str = "auto"
    ) -> None:
        super().__init__()
        check_number("nash-mtl", "update_every", update_every, low=1, integer=True)
        check_number("nash-mtl", "max_iter", max_iter, low=1, integer=True)
        check_number("nash-mtl", "tol", tol, low=0.0, low_open=True)
        check_choice("nash-mtl", "solver", solver, SOLVERS)
        self.update_every = update_every
        self.max_iter = max_iter
        self.tol = float(tol)
        self.solver = solver
        self._calls = 0
        self._previous: Optional[Tensor] = None  # last weights (K,)
        self._beta: Optional[Tensor] = None  # last bargaining solution on C, for warm starts
        self._failures: Optional[Tensor] = None  # 0-dim count, on the weights' device
        self.last_iterations = 0

    @property
    def failures(self) -> int:
        """How many solves fell back to the previous weights (synchronises with the host)."""
        return 0 if self._failures is None else int(self._failures.item())

    def bind(self, names: Any) -> None:
        super().bind(names)
        if self._previous is not None and self._previous.shape[0] != len(self.objective_names):
            self._previous = None
            self._beta = None

    def weights(self, gram: Optional[PSDMatrix], losses: Tensor) -> Weights:
        if gram is None:
            raise ValueError("nash-mtl needs the Gram matrix of the per-objective gradients")
        work = as_work(gram)
        k = work.shape[-1]
        if self._failures is None:
            self._failures = torch.zeros((), dtype=work.dtype, device=work.device)
        reuse = self._previous is not None and self._calls % self.update_every != 0
        self._calls += 1
        zero = torch.zeros((), dtype=work.dtype, device=work.device)
        if reuse:
            assert self._previous is not None
            self.info = {"solver_failed": zero, "weights_reused": torch.ones_like(zero)}
            return self._previous
        fallback = (
            self._previous
            if self._previous is not None
            else torch.ones(k, dtype=work.dtype, device=work.device)
        )
        use_closed_form = self.solver == "closed_form" or (self.solver == "auto" and k == 2)
        if use_closed_form:
            if k != 2:
                raise ValueError(
                    f"nash-mtl: the closed_form solver handles K = 2 only, got K = {k}"
                )
            w, failed = nash_two(work)
            w = torch.where(failed, fallback, w)
            failed = failed.to(work.dtype)
        else:
            solution = self._solve(work)
            failed = zero if solution is not None else torch.ones_like(zero)
            w = solution if solution is not None else fallback
        self._failures = self._failures + failed
        self._previous = w
        self.info = {"solver_failed": failed, "weights_reused": zero}
        return w

    def _solve(self, gram: PSDMatrix) -> Optional[Tensor]:
        """Weights from the cvxpy sequence, or None on failure (host synchronisation)."""
        import cvxpy as cp

        cosine, inverse = cosine_gram(gram)
        inverse_np = inverse.detach().cpu().numpy()
        active = np.flatnonzero(inverse_np > 0)
        k = gram.shape[-1]
        result = np.zeros(k)
        self.last_iterations = 0
        if active.size == 0:
            return torch.zeros(k, dtype=gram.dtype, device=gram.device)
        sub = cosine.detach().cpu().numpy()[np.ix_(active, active)]
        if active.size == 1:
            beta = np.ones(1)
        elif active.size == 2 and 1.0 + sub[0, 1] <= OPPOSITE_TOL:
            return None  # opposite unit gradients, the same test as the K = 2 closed form
        else:
            previous = None if self._beta is None else self._beta.cpu().numpy()[active]
            start = next(
                (c for c in (previous, np.ones(active.size)) if _valid_start(sub, c)), None
            )
            if start is None:
                start = _common_descent_start(sub)
            if start is None:
                return None  # Pareto-stationary: no direction improves every objective
            problem = _ccp_problem(int(active.size))
            beta = start
            for _ in range(self.max_iter):
                try:
                    beta = problem.solve(sub, beta)
                except cp.error.SolverError:
                    return None
                self.last_iterations += 1
                if not _valid_start(sub, beta):
                    return None
                if np.max(np.abs(beta * (sub @ beta) - 1.0)) <= self.tol:
                    break
        full_beta = np.zeros(k)
        full_beta[active] = beta
        self._beta = torch.as_tensor(full_beta, dtype=gram.dtype)
        result[active] = beta * inverse_np[active]
        return torch.as_tensor(result, dtype=gram.dtype, device=gram.device)

    def state_dict(self) -> dict[str, Any]:
        clone = lambda t: None if t is None else t.detach().clone()  # noqa: E731
        return {
            "calls": self._calls,
            "previous": clone(self._previous),
            "beta": clone(self._beta),
            "failures": clone(self._failures),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {"calls", "previous", "beta", "failures"}
        if set(state) != expected:
            raise ValueError(
                f"nash-mtl: expected state keys {sorted(expected)}, got {sorted(state)}"
            )
        self._calls = int(state["calls"])
        self._previous = None if state["previous"] is None else state["previous"].clone()
        self._beta = None if state["beta"] is None else state["beta"].clone()
        self._failures = None if state["failures"] is None else state["failures"].clone()

    def options(self) -> dict[str, Any]:
        return {
            "update_every": self.update_every,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "solver": self.solver,
        }
