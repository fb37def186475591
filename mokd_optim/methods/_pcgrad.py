"""PCGrad: projecting conflicting gradients (Yu, Kumar, Gupta, Levine, Hausman, Finn; NeurIPS 2020)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import Tensor

from mokd_optim._typing import PSDMatrix, Weights
from mokd_optim._validation import check_choice, check_number
from mokd_optim.methods._base import Method, as_work
from mokd_optim.methods._registry import register
from mokd_optim.solvers import normalize

REDUCTIONS = ("sum", "mean")


def pcgrad_weights(
    gram: PSDMatrix, orders: Optional[Sequence[Sequence[int]]] = None, *, reduction: str = "sum"
) -> Weights:
    """PCGrad's weights on the raw gradients, computed from the Gram matrix alone.

    Each gradient ``g_i`` is projected in turn onto the normal plane of every gradient ``g_j``
    it conflicts with, in the order ``orders[i]`` (a permutation of ``0..K-1``; the original,
    unprojected ``g_j`` are used, and ``j = i`` is part of the order as in the reference code):
    ``g_i <- g_i - min(<g_i, g_j>, 0) / ||g_j||^2 g_j``. The update is the sum (or mean) of the
    projected gradients. Tracking ``g_i`` as a combination of the raw gradients keeps the whole
    computation ``K x K``.

    For K = 2 the result does not depend on the order and ``orders`` may be ``None``: the
    closed form ``w_i = 1 - min(G_12, 0) / G_jj`` (``j != i``) is used, with no host
    synchronisation. For K > 2 ``orders`` is required.

    Args:
        gram: ``(K, K)`` Gram matrix of the gradients.
        orders: K permutations of ``range(K)``, one per projected gradient.
        reduction: ``"sum"`` (the paper's update) or ``"mean"``.

    Returns:
        ``(K,)`` weights in the working dtype (float64).

    Raises:
        ValueError: unknown reduction, missing or malformed ``orders``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"pcgrad: unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    work = normalize(as_work(gram))  # the projection coefficients do not depend on the scale
    k = work.shape[-1]
    divisor = float(k) if reduction == "mean" else 1.0
    diagonal = torch.diagonal(work)
    safe_diagonal = torch.where(diagonal > 0, diagonal, torch.ones_like(diagonal))
    if orders is None:
        if k != 2:
            raise ValueError(f"pcgrad: projection orders are required for K = {k} > 2")
        conflict = work[0, 1].clamp_max(0.0)  # a zero gradient has G_12 = 0: no projection
        # g_1 loses its component along g_2 (adding -G_12 / G_22 to w_2) and vice versa.
        w = torch.stack([1.0 - conflict / safe_diagonal[0], 1.0 - conflict / safe_diagonal[1]])
        return w / divisor
    index = torch.as_tensor([list(order) for order in orders], dtype=torch.long)
    if index.shape != (k, k) or not bool((index.sort(dim=1).values == torch.arange(k)).all()):
        raise ValueError(f"pcgrad: orders must be {k} permutations of range({k}), got {orders}")
    index = index.to(work.device)
    rows = torch.arange(k, device=work.device)
    # coefficients[i] expresses the projected g_i in the basis of the raw gradients.
    coefficients = torch.eye(k, dtype=work.dtype, device=work.device)
    for step in range(k):
        targets = index[:, step]
        dots = (coefficients * work[targets]).sum(dim=-1)  # <g_i^PC, g_j>, j = targets[i]
        projection = torch.where(dots < 0, dots / safe_diagonal[targets], torch.zeros_like(dots))
        coefficients = coefficients.index_put((rows, targets), -projection, accumulate=True)
    return coefficients.sum(dim=0) / divisor


@register
class PCGrad(Method):
    """PCGrad: remove from each gradient its component along the gradients it conflicts with.

    Formula (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020): for each
    ``i``, in a random order over ``j``, ``g_i <- g_i - min(<g_i, g_j>, 0) / ||g_j||^2 g_j``
    (``g_j`` unprojected); the update is ``sum_i g_i`` (``reduction="sum"``, the paper) or the
    mean. Computed on the Gram matrix: ``K^2`` scalar operations, no gradient copies.

    Options:
        seed: seed of the method's own generator for the projection orders. ``None`` (default)
            draws the seed once from torch's global generator at construction, so
            ``torch.manual_seed`` makes runs reproducible; the generator state is part of
            :meth:`state_dict`. The global generator is not touched afterwards.
        reduction: ``"sum"`` (default) or ``"mean"``.

    For K = 2 the order does not matter; a closed form is used and no random number is drawn.
    With K = 2 the update never conflicts with either objective; for K > 2 it can. The orders
    used by the last call are in ``last_orders``.
    """

    name = "pcgrad"
    # With K > 2 the random projection order breaks both (the K = 2 case has both properties).
    permutation_equivariant = False

    def __init__(self, seed: Optional[int] = None, reduction: str = "sum") -> None:
        super().__init__()
        check_choice("pcgrad", "reduction", reduction, REDUCTIONS)
        if seed is not None:
            check_number("pcgrad", "seed", seed, integer=True)
        self.seed = seed
        self.reduction = reduction
        generator = torch.Generator()
        if seed is None:
            generator.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        else:
            generator.manual_seed(seed)
        # Kept as a state tensor (not a Generator) so that the method deep-copies and pickles.
        self._rng_state: Tensor = generator.get_state()
        self.last_orders: Optional[list[list[int]]] = None

    def draw_orders(self, k: int) -> list[list[int]]:
        """K random permutations of ``range(k)`` from the method's generator (advances it)."""
        generator = torch.Generator()
        generator.set_state(self._rng_state)
        orders = [torch.randperm(k, generator=generator).tolist() for _ in range(k)]
        self._rng_state = generator.get_state()
        return orders

    def weights(self, gram: Optional[PSDMatrix], losses: Tensor) -> Weights:
        if gram is None:
            raise ValueError("pcgrad needs the Gram matrix of the per-objective gradients")
        k = gram.shape[-1]
        orders = None if k <= 2 else self.draw_orders(k)
        self.last_orders = orders
        if k == 1:
            return torch.ones(1, dtype=as_work(gram).dtype, device=gram.device)
        return pcgrad_weights(gram, orders, reduction=self.reduction)

    def state_dict(self) -> dict[str, Any]:
        return {"rng_state": self._rng_state.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"rng_state"}:
            raise ValueError(f"pcgrad: expected state keys ['rng_state'], got {sorted(state)}")
        self._rng_state = state["rng_state"].clone()

    def options(self) -> dict[str, Any]:
        return {"seed": self.seed, "reduction": self.reduction}
