"""MoKD / DTO-KD exact weighting (Hayder et al., arXiv 2505.08170; ICLR 2026)."""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor

from mokd_optim._typing import PSDMatrix, Weights
from mokd_optim._validation import OptionError, check_choice, check_flag
from mokd_optim.methods._base import Method, as_work, inverse_norms
from mokd_optim.methods._registry import register
from mokd_optim.solvers import BACKENDS, line_weights, min_norm

STEP_RULES = ("anchor", "convex", "log")

# A combined direction shorter than this fraction of its triangle-inequality bound
# sum_i q_i ||g_i|| is treated as Pareto-stationary by the "anchor" rule (weights 0): rescaling
# such a vector to the anchor's norm would amplify rounding noise in the Gram matrix.
STATIONARY_RTOL = 1e-3


def mokd_simplex_weights(
    gram: PSDMatrix, losses: Tensor, *, simplex: bool = True, backend: str = "auto"
) -> Weights:
    """MoKD's trade-off weights ``pi`` for the log-loss gradients ``h_i = g_i / L_i``.

    ``gram`` ``(K, K)`` is the Gram matrix of the raw gradients; that of the ``h_i`` is
    ``G / (L L^T)``. With ``simplex=True`` ``pi`` is the min-norm point of the convex hull of
    the ``h_i``; with ``simplex=False`` (K = 2 only) the paper's unclipped formula, the
    min-norm point of the whole line through ``h_1, h_2`` (may be negative). Returns ``(K,)``.
    """
    log_gram = gram / (losses[:, None] * losses[None, :])
    if simplex:
        return min_norm(log_gram, backend=backend)
    if gram.shape[-1] != 2:
        raise ValueError(
            "mokd: simplex=False (the paper's unclipped formula) is defined for two objectives only"
        )
    from mokd_optim.solvers._simplex import normalize

    return line_weights(normalize(log_gram))


def mokd_weights(
    gram: PSDMatrix,
    losses: Tensor,
    *,
    step: str = "anchor",
    anchor: int = 0,
    simplex: bool = True,
    backend: str = "auto",
) -> tuple[Weights, Weights]:
    """Weights on the raw gradients for MoKD under a step-length rule, and ``pi``.

    The direction is ``d = sum_i pi_i h_i = sum_i q_i g_i`` with ``q_i = pi_i / L_i``. Its
    length depends on ``step``:

    - ``"log"``: ``w = q`` (the log-gradient combination itself);
    - ``"convex"``: ``w = q / sum(q)`` (a convex combination of the raw gradients);
    - ``"anchor"``: ``w = q * ||g_anchor|| / ||d||``, so ``||d|| = ||g_anchor||``; a
      Pareto-stationary point (``||d||`` below ``STATIONARY_RTOL`` of its bound, or a zero
      gradient) gives 0.

    Args: gram ``(K, K)``, losses ``(K,)`` positive, both float64. Returns ``(w, pi)``.
    """
    if step not in STEP_RULES:
        raise ValueError(f"mokd: unknown step rule {step!r}; choose one of {STEP_RULES}")
    pi = mokd_simplex_weights(gram, losses, simplex=simplex, backend=backend)
    q = pi / losses
    if step == "log":
        return q, pi
    if step == "convex":
        total = q.sum()
        return q / torch.where(total != 0, total, torch.ones_like(total)), pi
    combined_sq = (q @ gram @ q).clamp_min(0.0)
    norms = torch.diagonal(gram).clamp_min(0.0).sqrt()
    bound = (q.abs() * norms).sum()
    # A zero gradient puts 0 in the convex hull: the point is Pareto-stationary, and the
    # min-norm weights on the other gradients are solver noise that the rescaling would amplify.
    has_zero_gradient = (inverse_norms(gram)[1] == 0).any()
    stationary = (combined_sq <= (STATIONARY_RTOL * bound) ** 2) | has_zero_gradient
    safe = torch.where(stationary, torch.ones_like(combined_sq), combined_sq)
    scale = torch.where(stationary, torch.zeros_like(combined_sq), norms[anchor] / safe.sqrt())
    return q * scale, pi


@register
class MoKD(Method):
    """Exact MoKD weighting: min-norm trade-off of the log-loss gradients.

    Options:
        step: ``"anchor"`` (default), ``"log"`` or ``"convex"`` -- how long the step is
            (METHOD.md "Step size"; docs/mokd.md has the measurements behind the default:
            ``"anchor"`` keeps the step at the scale of the user's plain-training recipe;
            ``"log"`` was more accurate on Fashion-MNIST and MNIST but takes steps a
            data-dependent fraction as long, which failed at small learning rates on digits).
        anchor: the objective (name or index) whose raw gradient norm the ``"anchor"`` rule
            keeps; default the first objective (put the task loss first).
        simplex: clip ``pi`` to the simplex (default). ``False`` is the paper's literal
            formula, kept for ablations; it trailed the clipped weights in our measurements.
        backend: min-norm solver backend (``mokd_optim.solvers.min_norm``).

    Invariance: multiplying any loss by ``c > 0`` leaves the direction unchanged under every
    rule; the whole update is unchanged under ``"log"`` (for any loss) and under ``"anchor"``
    (for a loss that is not the anchor). Under ``"log"`` the update is never longer than the
    shortest log-gradient ``||g_i|| / L_i`` (it is the min-norm point of their hull). Needs
    strictly positive losses.
    """

    name = "mokd"
    log_losses = True

    def __init__(
        self,
        step: str = "anchor",
        anchor: Union[int, str] = 0,
        simplex: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if step not in STEP_RULES:
            raise ValueError(f"mokd: unknown step rule {step!r}; choose one of {STEP_RULES}")
        if not isinstance(anchor, (int, str)) or isinstance(anchor, bool):
            raise OptionError(f"mokd: anchor must be an objective name or index, got {anchor!r}")
        check_flag("mokd", "simplex", simplex)
        check_choice("mokd", "backend", backend, BACKENDS)
        self.step = step
        self.anchor = anchor
        self.simplex = simplex
        self.backend = backend
        self._anchor_index = 0

    @property
    def scale_invariance(self) -> str:  # type: ignore[override]
        # "log" divides each gradient by its loss: rescaling a loss changes nothing. The other
        # rules keep the direction; "anchor" keeps the update unless the anchor is rescaled.
        return "update" if self.step == "log" else "direction"

    @property
    def conflict_free(self) -> bool:  # type: ignore[override]
        # The unclipped formula can give an objective a negative weight.
        return self.simplex

    @property
    def pareto_stationary(self) -> bool:  # type: ignore[override]
        return self.simplex

    def bind(self, names: Any) -> None:
        super().bind(names)
        if not self.simplex and len(self.objective_names) != 2:
            raise ValueError(
                "mokd: simplex=False (the paper's unclipped formula) is defined for two objectives only"
            )
        self._anchor_index = self.resolve_objective(self.anchor, "anchor")

    def weights(self, gram: Optional[PSDMatrix], losses: Tensor) -> Weights:
        if gram is None:
            raise ValueError("mokd needs the Gram matrix of the per-objective gradients")
        w, pi = mokd_weights(
            as_work(gram),
            as_work(losses),
            step=self.step,
            anchor=self._anchor_index,
            simplex=self.simplex,
            backend=self.backend,
        )
        self.info = {"simplex_weights": pi}
        return w

    def options(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "anchor": self.anchor,
            "simplex": self.simplex,
            "backend": self.backend,
        }
