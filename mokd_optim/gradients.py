"""Gradient strategies: how the per-objective gradients are obtained and combined.

Every exact strategy produces a :class:`ObjectiveGradients`: for each parameter reached by
two or more objectives ("balanced" parameters) a block of shape ``(K, *param.shape)`` holding
the K gradients, and for each parameter reached by exactly one objective its plain gradient.
The Gram matrix is computed block by block (one ``(K, n) @ (n, K)`` product per tensor) and the
combined gradient ``sum_i w_i g_i`` is written block by block, so no vector of all parameters
is ever concatenated.

Strategies (see docs/strategies.md for costs and measurements):

- ``loop``: ``torch.autograd.grad`` once per objective, graph retained in between (K backwards).
- ``vmap``: one batched vector-Jacobian product (``is_grads_batched=True``); ``None`` is
  returned when the model does not support it and the caller falls back to ``loop``.
- ``representation``: gradients w.r.t. a shared tensor (``features=``), weights from their
  Gram matrix, then one backward of the sum with the gradient at the shared tensor replaced by
  ``sum_i w_i dL_i/dZ`` (:func:`representation_backward`).
- ``amortized``: weights known before the backward; one backward of ``sum_i w_i L_i``
  (:func:`weighted_backward`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

STRATEGIES = ("auto", "loop", "vmap", "representation", "amortized")


@dataclass
class ObjectiveGradients:
    """Per-objective gradients from one backward call.

    Attributes:
        params: balanced parameters (reached by >= 2 objectives), in optimizer order.
        blocks: for each balanced parameter, ``(K, *param.shape)``; row ``i`` is ``dL_i/dp``
            (zeros where objective ``i`` does not reach ``p``).
        groups: optimizer parameter-group index of each balanced parameter.
        exclusive: ``(param, grad, objective)`` for parameters reached by exactly one objective.
        reached: per objective, whether it reached any parameter.
    """

    params: list[Tensor] = field(default_factory=list)
    blocks: list[Tensor] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    exclusive: list[tuple[Tensor, Tensor, int]] = field(default_factory=list)
    reached: list[bool] = field(default_factory=list)


def _assemble(
    per_param: Sequence[list[Optional[Tensor]]],
    params: Sequence[Tensor],
    group_of: Sequence[int],
    num_objectives: int,
) -> ObjectiveGradients:
    """Sort per-parameter gradient lists (one entry per objective) into blocks and exclusives."""
    result = ObjectiveGradients(reached=[False] * num_objectives)
    for param, group, grads in zip(params, group_of, per_param):
        present = [k for k, g in enumerate(grads) if g is not None]
        for k in present:
            result.reached[k] = True
        if not present:
            continue
        if len(present) == 1:
            k = present[0]
            result.exclusive.append((param, grads[k], k))  # type: ignore[arg-type]
            continue
        first = grads[present[0]]
        assert first is not None
        block = first.new_empty((num_objectives, *param.shape))
        for k in range(num_objectives):
            g = grads[k]
            if g is None:
                block[k].zero_()
            else:
                block[k].copy_(g)
        result.params.append(param)
        result.blocks.append(block)
        result.groups.append(group)
    return result


def loop_gradients(
    losses: Sequence[Tensor], params: Sequence[Tensor], group_of: Sequence[int], *, retain_graph: bool = False
) -> ObjectiveGradients:
    """Per-objective gradients with one ``torch.autograd.grad`` call per objective.

    The graph is retained between calls and freed after the last one unless ``retain_graph``.
    Parameters an objective does not reach get ``None`` (that is how exclusivity is detected).
    """
    k_total = len(losses)
    per_param: list[list[Optional[Tensor]]] = [[None] * k_total for _ in params]
    for k, loss in enumerate(losses):
        keep = retain_graph or k < k_total - 1
        grads = torch.autograd.grad(loss, list(params), retain_graph=keep, allow_unused=True)
        for index, g in enumerate(grads):
            per_param[index][k] = g
        del grads
    return _assemble(per_param, params, group_of, k_total)


def reached_leaves(root: Tensor) -> set[int]:
    """Ids of the leaf tensors that ``root``'s autograd graph accumulates gradients into."""
    leaves: set[int] = set()
    if root.grad_fn is None:
        if root.requires_grad:
            leaves.add(id(root))
        return leaves
    stack = [root.grad_fn]
    seen: set[object] = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves.add(id(variable))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


def reach_matrix(losses: Sequence[Tensor], params: Sequence[Tensor]) -> list[list[bool]]:
    """``reach[k][j]``: whether objective ``k``'s graph reaches parameter ``j`` (graph walk, no backward)."""
    ids = [id(p) for p in params]
    matrix = []
    for loss in losses:
        leaves = reached_leaves(loss)
        matrix.append([pid in leaves for pid in ids])
    return matrix


def vmap_gradients(
    losses: Sequence[Tensor], params: Sequence[Tensor], group_of: Sequence[int], *, retain_graph: bool = False
) -> Optional[ObjectiveGradients]:
    """Per-objective gradients from one batched vector-Jacobian product.

    Uses ``torch.autograd.grad(stack(losses), params, grad_outputs=eye(K),
    is_grads_batched=True)``. Which objective reaches which parameter comes from a walk of the
    autograd graph. Returns ``None`` when the batched backward is not supported by an operator
    of the model (the caller then falls back to :func:`loop_gradients`). The attempt always
    retains the graph so that the fallback can still run; it is freed with the losses.
    """
    k_total = len(losses)
    reach = reach_matrix(losses, params)
    stacked = torch.stack([loss.reshape(()) for loss in losses])
    eye = torch.eye(k_total, dtype=stacked.dtype, device=stacked.device)
    try:
        grads = torch.autograd.grad(
            stacked, list(params), grad_outputs=eye, retain_graph=True, allow_unused=True, is_grads_batched=True
        )
    except RuntimeError:
        return None
    result = ObjectiveGradients(reached=[any(row) for row in reach])
    for j, (param, group, block) in enumerate(zip(params, group_of, grads)):
        present = [k for k in range(k_total) if reach[k][j]]
        if block is None or not present:
            continue
        if len(present) == 1:
            result.exclusive.append((param, block[present[0]], present[0]))
        else:
            result.params.append(param)
            result.blocks.append(block)
            result.groups.append(group)
    return result


def gram_matrix(blocks: Sequence[Tensor], groups: Sequence[int], num_groups: int, num_objectives: int, device: torch.device) -> Tensor:
    """Per-group Gram matrices ``(num_groups, K, K)`` in float64 from ``(K, ...)`` blocks.

    Each block contributes ``B B^T`` with ``B = block.reshape(K, -1)`` computed in float32 (or
    float64 for float64 blocks), accumulated in float64.
    """
    dtype = torch.float32 if device.type == "mps" else torch.float64
    gram = torch.zeros(num_groups, num_objectives, num_objectives, dtype=dtype, device=device)
    for block, group in zip(blocks, groups):
        flat = block.reshape(num_objectives, -1)
        if flat.dtype not in (torch.float32, torch.float64):
            flat = flat.float()
        gram[group] += (flat @ flat.T).to(device=device, dtype=dtype)
    return gram


def _accumulate(param: Tensor, grad: Tensor) -> None:
    """Add ``grad`` into ``param.grad`` (or set it), like autograd's gradient accumulation."""
    if param.grad is None:
        param.grad = grad.to(param.dtype) if grad.dtype != param.dtype else grad
    else:
        param.grad.add_(grad)


def write_combined(gradients: ObjectiveGradients, weights: Tensor, *, exclusive_weights: Optional[Tensor] = None) -> None:
    """Write ``sum_i w_i g_i`` into ``.grad`` of every balanced parameter, and the plain gradient
    of every exclusive parameter (times ``exclusive_weights[k]`` when given).

    ``weights`` is ``(num_groups, K)``; row ``g`` is used for the parameters of group ``g``.
    Existing ``.grad`` values are added to, as autograd does.
    """
    cast: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}
    for param, block, group in zip(gradients.params, gradients.blocks, gradients.groups):
        key = (group, block.dtype, block.device)
        if key not in cast:
            cast[key] = weights[group].to(dtype=block.dtype, device=block.device)
        k_total = block.shape[0]
        combined = torch.matmul(cast[key], block.reshape(k_total, -1)).view(param.shape)
        _accumulate(param, combined)
    for param, grad, k in gradients.exclusive:
        if exclusive_weights is not None:
            grad = grad * exclusive_weights[k].to(dtype=grad.dtype, device=grad.device)
        _accumulate(param, grad)


def representation_gradients(losses: Sequence[Tensor], features: Sequence[Tensor]) -> list[Optional[list[Tensor]]]:
    """Gradients of each loss w.r.t. the shared tensors, as ``(K, *f.shape)`` blocks.

    Returns one entry per objective in ``losses`` order: ``None`` when that loss does not
    depend on any of the ``features`` (the caller raises), else its list of gradients.
    The graph is retained.
    """
    per_objective: list[Optional[list[Tensor]]] = []
    for loss in losses:
        grads = torch.autograd.grad(loss, list(features), retain_graph=True, allow_unused=True)
        if all(g is None for g in grads):
            per_objective.append(None)
        else:
            per_objective.append([torch.zeros_like(f) if g is None else g for f, g in zip(features, grads)])
    return per_objective


def stack_feature_blocks(per_objective: Sequence[list[Tensor]]) -> list[Tensor]:
    """Turn per-objective lists of feature gradients into one ``(K, *f.shape)`` block per feature."""
    return [torch.stack([grads[j] for grads in per_objective]) for j in range(len(per_objective[0]))]


def representation_backward(
    losses: Sequence[Tensor],
    features: Sequence[Tensor],
    blocks: Sequence[Tensor],
    weights: Tensor,
    params: Sequence[Tensor],
    *,
    retain_graph: bool = False,
) -> None:
    """One backward of ``sum_i L_i`` with the gradient at each shared tensor replaced by
    ``sum_i w_i dL_i/dZ``.

    Parameters upstream of the shared tensors receive the balanced gradient; parameters
    downstream of them (e.g. a head used by one loss) receive their plain gradients.
    Gradients reaching upstream parameters by a path that avoids every shared tensor are not
    balanced (they pass with weight 1). ``weights`` is ``(K,)``.
    """
    handles = []
    for feature, block in zip(features, blocks):
        w = weights.to(dtype=block.dtype, device=block.device)
        replacement = torch.tensordot(w, block, dims=1)
        handles.append(feature.register_hook(lambda _grad, value=replacement: value))
    try:
        total = torch.stack([loss.reshape(()) for loss in losses]).sum()
        torch.autograd.backward(total, inputs=list(params), retain_graph=retain_graph)
    finally:
        for handle in handles:
            handle.remove()


def weighted_backward(
    losses: Sequence[Tensor], weights: Tensor, params: Sequence[Tensor], *, retain_graph: bool = False
) -> None:
    """One backward of ``sum_i w_i L_i`` (weights detached) into the given parameters."""
    stacked = torch.stack([loss.reshape(()) for loss in losses])
    total = (weights.to(dtype=stacked.dtype, device=stacked.device).detach() * stacked).sum()
    torch.autograd.backward(total, inputs=list(params), retain_graph=retain_graph)
