"""MGDA: the min-norm element of the convex hull of the gradients (Desideri 2012; Sener & Koltun 2018)."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from mokd_optim._typing import PSDMatrix, Weights
from mokd_optim._validation import check_choice
from mokd_optim.methods._base import Method, as_work
from mokd_optim.methods._registry import register
from mokd_optim.solvers import BACKENDS, min_norm

NORMALIZERS = ("none", "l2", "loss", "loss+")


def gradient_normalizers(gram: PSDMatrix, losses: Tensor, normalizer: str) -> Tensor:
    """Per-objective divisors ``n_i`` of Sener & Koltun's MGDA code, shape ``(K,)``.

    ``none``: 1; ``l2``: ``||g_i||``; ``loss``: ``L_i``; ``loss+``: ``L_i ||g_i||``. A zero
    norm is replaced by 1 (the gradient is zero whatever it is divided by).
    """
    if normalizer == "none":
        return torch.ones_like(losses)
    norms = torch.diagonal(gram).clamp_min(0.0).sqrt()
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))
    if normalizer == "l2":
        return norms
    if normalizer == "loss":
        return losses
    if normalizer == "loss+":
        return losses * norms
    raise ValueError(f"mgda: unknown normalizer {normalizer!r}; choose one of {NORMALIZERS}")


def mgda_weights(
    gram: PSDMatrix, losses: Tensor, *, normalizer: str = "none", backend: str = "auto"
) -> tuple[Weights, Weights]:
    """MGDA weights on the raw gradients and the simplex weights ``alpha``.

    ``alpha`` minimises ``||sum_i alpha_i g_i / n_i||`` on the simplex; the raw-gradient
    weights are ``alpha_i / n_i``. Shapes: gram ``(K, K)``, losses ``(K,)`` -> ``(K,)`` twice.
    """
    n = gradient_normalizers(gram, losses, normalizer)
    alpha = min_norm(gram / (n[:, None] * n[None, :]), backend=backend)
    return alpha / n, alpha


@register
class MGDA(Method):
    """Multiple-gradient descent: the min-norm convex combination of the gradients.

    Options: ``normalizer`` (``"none"`` default, ``"l2"``, ``"loss"``, ``"loss+"``) divides each
    gradient before the min-norm problem; ``backend`` picks the solver. With ``"none"`` the
    direction is zero exactly at Pareto-stationary points and never conflicts with any
    objective. ``"loss"``/``"loss+"`` need positive losses.
    """

    name = "mgda"
    conflict_free = True
    pareto_stationary = True

    def __init__(self, normalizer: str = "none", backend: str = "auto") -> None:
        super().__init__()
        check_choice("mgda", "normalizer", normalizer, NORMALIZERS)
        check_choice("mgda", "backend", backend, BACKENDS)
        self.normalizer = normalizer
        self.backend = backend

    @property
    def log_losses(self) -> bool:  # type: ignore[override]
        return self.normalizer in ("loss", "loss+")

    @property
    def scale_invariance(self) -> str:  # type: ignore[override]
        # Every normalizer but "none" divides each gradient by a quantity proportional to it.
        return "none" if self.normalizer == "none" else "update"

    @property
    def homogeneity(self) -> int:  # type: ignore[override]
        # "l2" and "loss+" divide by the gradient norm, so the update ignores magnitudes.
        return 0 if self.normalizer in ("l2", "loss+") else 1

    def weights(self, gram: Optional[PSDMatrix], losses: Tensor) -> Weights:
        if gram is None:
            raise ValueError("mgda needs the Gram matrix of the per-objective gradients")
        w, alpha = mgda_weights(
            as_work(gram), as_work(losses), normalizer=self.normalizer, backend=self.backend
        )
        self.info = {"simplex_weights": alpha}
        return w

    def options(self) -> dict[str, Any]:
        return {"normalizer": self.normalizer, "backend": self.backend}
