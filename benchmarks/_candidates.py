"""Candidate kernels measured beside the library's, to back proposed changes with numbers.

These are not used by ``mokd_optim``; the benchmarks time them next to the code paths of
``mokd_optim.gradients`` so that a proposed change to that module comes with its measured
effect. Each function computes exactly what its library counterpart computes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def combine_addcmul(params: Sequence[Tensor], blocks: Sequence[Tensor], weights: Tensor) -> None:
    """``p.grad = sum_k w_k block[k]`` with one ``mul`` and K - 1 in-place ``addcmul_`` per tensor.

    Same result as ``mokd_optim.gradients.write_combined`` (``matmul(w, block.reshape(K, -1))``)
    for one parameter group and ``.grad`` initially ``None``; ``weights`` is ``(K,)``. No host
    synchronisation: the weights stay 0-dim tensors.
    """
    cast: dict[tuple[torch.dtype, torch.device], Tensor] = {}
    for param, block in zip(params, blocks):
        key = (block.dtype, block.device)
        if key not in cast:
            cast[key] = weights.to(dtype=block.dtype, device=block.device)
        w = cast[key]
        out = torch.mul(block[0], w[0])
        for k in range(1, block.shape[0]):
            out.addcmul_(block[k], w[k])
        param.grad = out


def gram_from_lists(per_objective: Sequence[Sequence[Tensor]]) -> Tensor:
    """Gram matrix ``(K, K)`` float64 of K gradients given as per-objective lists of tensors.

    No ``(K, *shape)`` block is built: each parameter contributes ``K (K + 1) / 2`` dot products
    of the tensors autograd returned. ``per_objective[k][j]`` is objective ``k``'s gradient of
    parameter ``j``.
    """
    k_total = len(per_objective)
    pairs = [(i, j) for i in range(k_total) for j in range(i, k_total)]
    columns = []
    for tensors in zip(*per_objective):
        flats = [t.reshape(-1) for t in tensors]
        columns.append(torch.stack([torch.dot(flats[i], flats[j]) for i, j in pairs]))
    upper = torch.stack(columns).sum(dim=0, dtype=torch.float64)
    gram = upper.new_zeros(k_total, k_total)
    rows = torch.tensor([i for i, _ in pairs])
    cols = torch.tensor([j for _, j in pairs])
    gram[rows, cols] = upper
    gram[cols, rows] = upper
    return gram


def combine_in_place(params: Sequence[Tensor], per_objective: Sequence[list[Tensor]], weights: Tensor) -> None:
    """``p.grad = sum_k w_k g_k`` written into objective 0's gradient tensors (no new memory).

    ``per_objective[k][j]`` is objective ``k``'s gradient of parameter ``j``; objective 0's
    tensors are overwritten. ``weights`` is ``(K,)``.
    """
    w = weights.to(dtype=per_objective[0][0].dtype, device=per_objective[0][0].device)
    for j, param in enumerate(params):
        out = per_objective[0][j].mul_(w[0])
        for k in range(1, len(per_objective)):
            out.addcmul_(per_objective[k][j], w[k])
        param.grad = out
