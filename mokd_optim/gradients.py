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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import Tensor

STRATEGIES = ("auto", "loop", "vmap", "representation", "amortized")

Block = Union[Tensor, list[Optional[Tensor]]]
"""The K gradients of one balanced parameter: a stacked ``(K, *param.shape)`` tensor (``vmap``,
accumulation, DDP) or a list of K tensors of ``param.shape`` exactly as autograd returned them,
``None`` where an objective does not reach the parameter (``loop``: no copy is made)."""


def stacked_block(block: Block, param: Tensor) -> Tensor:
    """A block as one ``(K, *param.shape)`` tensor (zeros for missing rows); copies a list."""
    if isinstance(block, Tensor):
        return block
    first = next(row for row in block if row is not None)
    stacked = first.new_empty((len(block), *param.shape))
    for k, row in enumerate(block):
        if row is None:
            stacked[k].zero_()
        else:
            stacked[k].copy_(row)
    return stacked


def _sole_owners(tensors: Sequence[Tensor]) -> set[int]:
    """Ids of the tensors that can be overwritten in place: contiguous, covering their whole
    storage, and not sharing it with any other tensor in ``tensors``. Autograd may return the
    same tensor (or views of one) for several inputs, and expanded tensors for others."""

    storages = [t.untyped_storage() for t in tensors]
    counts: dict[int, int] = {}
    for storage in storages:
        pointer = storage.data_ptr()
        counts[pointer] = counts.get(pointer, 0) + 1
    return {
        id(t)
        for t, storage in zip(tensors, storages)
        if counts[storage.data_ptr()] == 1
        and t.storage_offset() == 0
        and t.numel() * t.element_size() == storage.nbytes()
        and t.is_contiguous()
    }


@dataclass
class ObjectiveGradients:
    """Per-objective gradients from one backward call.

    Attributes:
        params: balanced parameters (reached by >= 2 objectives), in optimizer order.
        blocks: for each balanced parameter, its :data:`Block`; row ``i`` is ``dL_i/dp``
            (zeros or ``None`` where objective ``i`` does not reach ``p``).
        groups: optimizer parameter-group index of each balanced parameter.
        exclusive: ``(param, grad, objective)`` for parameters reached by exactly one objective.
        reached: per objective, whether it reached any parameter.
        combined: ``(param, grad)`` pairs that already hold a weighted gradient (the amortized
            strategy under gradient accumulation); written as they are.
        owned: ids of row tensors that :func:`combine` may overwrite in place (it then writes
            the combination into the first row instead of allocating).
    """

    params: list[Tensor] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    exclusive: list[tuple[Tensor, Tensor, int]] = field(default_factory=list)
    reached: list[bool] = field(default_factory=list)
    combined: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    owned: set[int] = field(default_factory=set)

    def _block_tensors(self) -> list[Tensor]:
        flat: list[Tensor] = []
        for block in self.blocks:
            if isinstance(block, Tensor):
                flat.append(block)
            else:
                flat.extend(row for row in block if row is not None)
        return flat

    def tensors(self) -> list[Tensor]:
        """Every gradient tensor, in a fixed order: blocks (stacked, or their present rows),
        exclusive grads, combined grads.

        The order depends only on the structure, so it is the same on every rank for the same
        model and objectives (what bucketed collectives need).
        """
        return [
            *self._block_tensors(),
            *(g for _, g, _ in self.exclusive),
            *(g for _, g in self.combined),
        ]

    def with_tensors(self, tensors: Sequence[Tensor]) -> ObjectiveGradients:
        """A copy with the gradient tensors replaced, in the order of :meth:`tensors`.

        New tensors (not among the current ones) are considered owned: they come from an
        out-of-place scaling or a collective's buffer.
        """
        n_blocks, n_exclusive = len(self._block_tensors()), len(self.exclusive)
        if len(tensors) != n_blocks + n_exclusive + len(self.combined):
            raise ValueError(
                f"expected {n_blocks + n_exclusive + len(self.combined)} tensors, got {len(tensors)}"
            )
        replacements = iter(tensors[:n_blocks])
        blocks: list[Block] = []
        for block in self.blocks:
            if isinstance(block, Tensor):
                blocks.append(next(replacements))
            else:
                blocks.append([None if row is None else next(replacements) for row in block])
        exclusive_grads = tensors[n_blocks : n_blocks + n_exclusive]
        combined_grads = tensors[n_blocks + n_exclusive :]
        current = {id(t) for t in self.tensors()}
        owned = {id(t) for t in tensors if id(t) not in current or id(t) in self.owned}
        return ObjectiveGradients(
            params=list(self.params),
            blocks=blocks,
            groups=list(self.groups),
            exclusive=[(p, g, k) for (p, _, k), g in zip(self.exclusive, exclusive_grads)],
            reached=list(self.reached),
            combined=[(p, g) for (p, _), g in zip(self.combined, combined_grads)],
            owned=owned,
        )

    def layout(self) -> list[int]:
        """A few integers that differ when two results do not have the same structure."""
        sizes = [t.numel() for t in self.tensors()]
        return [
            len(self.blocks),
            len(self.exclusive),
            len(self.combined),
            sum(sizes),
            sum(k * (i + 1) for i, (_, _, k) in enumerate(self.exclusive)),
        ]


def _assemble(
    per_param: Sequence[list[Optional[Tensor]]],
    params: Sequence[Tensor],
    group_of: Sequence[int],
    num_objectives: int,
) -> ObjectiveGradients:
    """Sort per-parameter gradient lists (one entry per objective) into blocks and exclusives.

    Blocks are the lists themselves (no copy); rows that no other tensor shares are marked
    owned so that :func:`combine` can write the combination into them.
    """
    result = ObjectiveGradients(reached=[False] * num_objectives)
    returned: list[Tensor] = []
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
        result.params.append(param)
        result.blocks.append(list(grads))
        result.groups.append(group)
        returned.extend(g for g in grads if g is not None)
    returned.extend(g for _, g, _ in result.exclusive)
    result.owned = _sole_owners(returned)
    return result


DONATED_BUFFERS_MESSAGE = (
    "a torch.compile'd module was compiled with 'donated buffers' (its backward frees saved tensors "
    "as it runs), but per-objective gradients need the graph for one backward pass per objective; "
    "nothing was changed. Run `import torch._functorch.config` and set "
    "torch._functorch.config.donated_buffer = False before the first call "
    "of the compiled module, or use an exact strategy without retained graphs: "
    "strategy='representation' (features=...) or an amortised method (docs/compile.md)"
)


class SparseGradientError(ValueError):
    """Objective ``objective`` produced a sparse gradient for parameter ``index`` (of the list
    passed to :func:`loop_gradients`), which the per-objective strategies cannot combine."""

    def __init__(self, objective: int, index: int, shape: tuple[int, ...]) -> None:
        super().__init__(f"its gradient for parameter #{index} (shape {list(shape)}) is sparse")
        self.objective = objective
        self.index = index


def loop_gradients(
    losses: Sequence[Tensor],
    params: Sequence[Tensor],
    group_of: Sequence[int],
    *,
    retain_graph: bool = False,
) -> ObjectiveGradients:
    """Per-objective gradients with one ``torch.autograd.grad`` call per objective.

    The graph is retained between calls and freed after the last one unless ``retain_graph``.
    Parameters an objective does not reach get ``None`` (that is how exclusivity is detected).
    """
    k_total = len(losses)
    per_param: list[list[Optional[Tensor]]] = [[None] * k_total for _ in params]
    for k, loss in enumerate(losses):
        keep = retain_graph or k < k_total - 1
        try:
            grads = torch.autograd.grad(loss, list(params), retain_graph=keep, allow_unused=True)
        except RuntimeError as error:
            if "donated buffer" in str(error):
                raise RuntimeError(DONATED_BUFFERS_MESSAGE) from error
            raise
        for index, g in enumerate(grads):
            if g is not None and g.is_sparse:
                raise SparseGradientError(k, index, tuple(params[index].shape))
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
    stack: list[Optional[torch.autograd.graph.Node]] = [root.grad_fn]
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
    losses: Sequence[Tensor],
    params: Sequence[Tensor],
    group_of: Sequence[int],
    *,
    retain_graph: bool = False,
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
            stacked,
            list(params),
            grad_outputs=eye,
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=True,
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


def _max_abs(tensors: Sequence[Tensor]) -> list[Tensor]:
    """``max |t|`` of each tensor (NaN when it holds a NaN), in one fused call per dtype where
    torch has one. Sparse tensors are measured on their stored values."""
    dense = [t.coalesce().values() if t.is_sparse else t for t in tensors]
    if not dense:
        return []
    return list(torch._foreach_norm(dense, float("inf")))


def all_finite(tensors: Sequence[Tensor], gram: Optional[Tensor] = None) -> Tensor:
    """0-dim bool, no host synchronisation: True when every tensor's entries are finite (and
    the Gram matrix's diagonal is), as far as one fused euclidean norm can tell.

    A sufficient test, not an exact one: an inf or NaN entry always makes the norm (and a
    squared norm on the Gram diagonal) non-finite, but a finite tensor whose norm overflows
    its dtype reads as non-finite too. Callers run the exact :func:`nonfinite_objectives` /
    :func:`nonfinite_tensors` only when this is False, so the common case costs one
    vectorised norm (much cheaper than the exact max-abs test on the CPU) and no pass at all
    over gradients whose squared norms are already on the Gram diagonal.
    """
    parts: list[Tensor] = []
    if gram is not None:
        parts.append(torch.diagonal(gram, dim1=-2, dim2=-1).reshape(-1))
    dense = [t.coalesce().values() if t.is_sparse else t for t in tensors]
    if dense:
        norms = torch._foreach_norm(dense)
        device = parts[0].device if parts else norms[0].device
        parts.append(_stack_norms(norms, device))
    if not parts:
        return torch.ones((), dtype=torch.bool)
    if len(parts) == 2 and parts[0].dtype != parts[1].dtype:
        parts[1] = parts[1].to(parts[0].dtype)
    return torch.isfinite(torch.cat(parts) if len(parts) > 1 else parts[0]).all()


def nonfinite_objectives(gradients: ObjectiveGradients, num_objectives: int) -> Tensor:
    """``(K,)`` bool on the gradients' device: objective ``k`` has a non-finite (inf or NaN)
    entry in a gradient it produced, on a balanced or an exclusive parameter.

    Combined gradients (a weighted sum of all objectives, amortized accumulation) count for
    every objective that reached the parameters. One fused max-norm over the gradients, no
    host synchronisation; an exact test (a sum of squares could overflow where the gradient
    is finite).
    """
    tensors: list[Tensor] = []
    owners: list[int] = []
    for block in gradients.blocks:
        if isinstance(block, Tensor):
            for k in range(num_objectives):
                tensors.append(block[k])
                owners.append(k)
        else:
            for k, row in enumerate(block):
                if row is not None:
                    tensors.append(row)
                    owners.append(k)
    for _, grad, k in gradients.exclusive:
        tensors.append(grad)
        owners.append(k)
    everyone = [k for k, reached in enumerate(gradients.reached) if reached] or list(
        range(num_objectives)
    )
    for _, grad in gradients.combined:
        tensors.append(grad)
        owners.append(-1)
    if not tensors:
        return torch.zeros(num_objectives, dtype=torch.bool)
    device = tensors[0].device
    bad = ~torch.isfinite(_stack_norms(_max_abs(tensors), device))
    rows = []
    index = []
    for position, owner in enumerate(owners):
        for k in everyone if owner < 0 else [owner]:
            rows.append(position)
            index.append(k)
    flags = torch.zeros(num_objectives, dtype=torch.int32, device=device)
    flags.index_add_(
        0,
        torch.tensor(index, device=device),
        bad[torch.tensor(rows, device=device)].to(torch.int32),
    )
    return flags > 0


def nonfinite_tensors(grads: Sequence[Optional[Tensor]]) -> Tensor:
    """``(n,)`` bool: whether each tensor holds a non-finite entry (False for ``None``), e.g.
    ``[p.grad for p in params]``. One fused max-norm, no host synchronisation."""
    present = [j for j, g in enumerate(grads) if g is not None]
    flags = torch.zeros(len(grads), dtype=torch.bool)
    if not present:
        return flags
    norms = _max_abs([grads[j] for j in present])  # type: ignore[misc]
    device = norms[0].device
    flags = flags.to(device)
    flags[torch.tensor(present, device=device)] = ~torch.isfinite(_stack_norms(norms, device))
    return flags


def _stack_norms(norms: Sequence[Tensor], device: torch.device) -> Tensor:
    """Stack 0-dim norms on ``device``; mixed dtypes meet in float64 (which holds every value)."""
    dtype = norms[0].dtype
    if all(n.dtype == dtype and n.device == device for n in norms):
        return torch.stack(list(norms))
    if any(n.dtype != dtype for n in norms):
        dtype = torch.float64
    return torch.stack([n.to(device=device, dtype=dtype) for n in norms])


def sparse_parameters(gradients: ObjectiveGradients) -> list[Tensor]:
    """The parameters whose per-objective gradients are sparse (``nn.Embedding(sparse=True)``)."""
    found: list[Tensor] = []
    for param, block in zip(gradients.params, gradients.blocks):
        rows = [block] if isinstance(block, Tensor) else [r for r in block if r is not None]
        if any(r.is_sparse for r in rows):
            found.append(param)
    found.extend(p for p, g, _ in gradients.exclusive if g.is_sparse)
    return found


def _uniform_rows(blocks: Sequence[Block], num_objectives: int) -> Optional[list[list[Tensor]]]:
    """The rows of list blocks, objective by objective (``rows[k][j]``: block ``j``'s row
    ``k``), when every block is a list with all K rows present, all of one floating dtype
    (float32 or float64) on one device, and dense; else ``None``. This is what the ``loop``
    strategy returns for parameters that every objective reaches, and what the fused paths of
    :func:`gram_matrix` and :func:`combine` need."""
    if not blocks:
        return None
    rows: list[list[Tensor]] = [[] for _ in range(num_objectives)]
    first = None
    for block in blocks:
        if isinstance(block, Tensor) or len(block) != num_objectives:
            return None
        for k, row in enumerate(block):
            if row is None:
                return None
            rows[k].append(row)
        if first is None:
            first = block[0]
    assert first is not None
    dtype, device = first.dtype, first.device
    if dtype not in (torch.float32, torch.float64):
        return None
    for per_objective in rows:
        for row in per_objective:
            if row.dtype != dtype or row.device != device or row.layout != torch.strided:
                return None
    return rows


#: Gradient tensors of at most this many elements (biases, normalisation layers, small
#: layers) enter the fused Gram matrix through one float64 buffer per objective, so that they
#: cost no dot products of their own (chosen on the CPU, where copying a larger tensor costs
#: more than its dot products' dispatch; on a GPU a launch is the larger cost) ...
PACK_MAX_NUMEL = 4096
#: ... up to this many elements in all (the buffers hold ``K`` float64 copies of them) ...
PACK_BUDGET = 1 << 21


def _packing_pays(small: int, k_total: int) -> bool:
    """... and only when it saves ops: packing costs ``2 K + P + 2`` ops (a ``cat`` and a cast
    per objective, ``P = K (K + 1) / 2`` dots, a ``stack`` and an ``add``) and saves ``P``
    dots per small tensor."""
    pairs = k_total * (k_total + 1) // 2
    return small * pairs > 2 * k_total + pairs + 2


def _flat(row: Tensor) -> Tensor:
    return row if row.dim() == 1 else row.reshape(-1)


def _fused_gram(rows: list[list[Tensor]], dtype: torch.dtype, device: torch.device) -> Tensor:
    """The ``(K, K)`` Gram matrix of :func:`_uniform_rows`' rows in a fixed number of ops plus
    ``K (K + 1) / 2`` dot products per large tensor.

    Large tensors: one ``dot`` per tensor and pair ``i <= j`` in the gradients' dtype (as
    BLAS computes it), stacked, cast and summed over tensors in float64. Small tensors
    (:data:`PACK_MAX_NUMEL`, :data:`PACK_BUDGET`, when :func:`_packing_pays`): concatenated
    into one float64 buffer per objective and multiplied there, so their products are float64
    too. The ``K (K + 1) / 2``
    entries are then placed by a few ops, with no per-entry Python bookkeeping."""
    k_total = len(rows)
    pairs = [(i, j) for i in range(k_total) for j in range(i, k_total)]
    small: list[int] = []
    large: list[int] = []
    packed_numel = 0
    for index, row in enumerate(rows[0]):
        size = row.numel()
        if size <= PACK_MAX_NUMEL and packed_numel + size <= PACK_BUDGET:
            small.append(index)
            packed_numel += size
        else:
            large.append(index)
    if not _packing_pays(len(small), k_total):
        large, small = list(range(len(rows[0]))), []
    parts: list[Tensor] = []
    if large:
        flat = [[_flat(per_objective[j]) for j in large] for per_objective in rows]
        dots = [torch.dot(a, b) for i, j in pairs for a, b in zip(flat[i], flat[j])]
        parts.append(torch.stack(dots).to(dtype).view(len(pairs), -1).sum(dim=1))
    if small:
        packed = [
            torch.cat([_flat(per_objective[j]) for j in small]).to(dtype) for per_objective in rows
        ]
        parts.append(torch.stack([torch.dot(packed[i], packed[j]) for i, j in pairs]))
    entries = parts[0] if len(parts) == 1 else parts[0] + parts[1]
    if k_total == 1:
        return entries.view(1, 1).to(device)
    if k_total == 2:
        # [g00, g01, g11] -> [[g00, g01], [g01, g11]] (no index tensor: no host-to-device copy)
        return torch.cat([entries[:2], entries[1:]]).view(2, 2).to(device)
    upper = torch.triu_indices(k_total, k_total, device=entries.device)
    gram = torch.zeros(k_total, k_total, dtype=dtype, device=entries.device)
    gram[upper[0], upper[1]] = entries
    return (gram + gram.T - torch.diag(torch.diagonal(gram))).to(device)


def gram_matrix(
    blocks: Sequence[Block],
    groups: Sequence[int],
    num_groups: int,
    num_objectives: int,
    device: torch.device,
) -> Tensor:
    """Per-group Gram matrices ``(num_groups, K, K)`` in float64, block by block.

    A stacked block contributes ``B B^T`` with ``B = block.reshape(K, -1)`` (one pass over it); a
    list of rows contributes the ``K (K + 1) / 2`` dot products of its present rows. Products are
    computed in float32 (float64 for float64 gradients) and accumulated in float64.

    When every block is a complete list of rows of one dtype (the ``loop`` strategy's common
    case) and there is one group, the products are summed by a fixed number of ops: a small
    constant plus the ``K (K + 1) / 2`` dot products per large tensor; small tensors are
    packed into one float64 buffer per objective (when there are enough of them to save ops)
    and cost no dot of their own
    (:func:`_fused_gram`).
    """
    dtype = torch.float32 if device.type == "mps" else torch.float64
    if num_groups == 1:
        rows = _uniform_rows(blocks, num_objectives)
        if rows is not None:
            return _fused_gram(rows, dtype, device)[None]
    gram = torch.zeros(num_groups, num_objectives, num_objectives, dtype=dtype, device=device)
    pair_terms: dict[tuple[int, int, int], list[Tensor]] = {}
    for block, group in zip(blocks, groups):
        if isinstance(block, Tensor):
            flat = block.reshape(num_objectives, -1)
            if flat.dtype not in (torch.float32, torch.float64):
                flat = flat.float()
            gram[group] += (flat @ flat.T).to(device=device, dtype=dtype)
            continue
        flats = [
            None
            if row is None
            else (
                row.reshape(-1)
                if row.dtype in (torch.float32, torch.float64)
                else row.reshape(-1).float()
            )
            for row in block
        ]
        for i in range(num_objectives):
            if flats[i] is None:
                continue
            for j in range(i, num_objectives):
                if flats[j] is not None:
                    pair_terms.setdefault((group, i, j), []).append(torch.dot(flats[i], flats[j]))  # type: ignore[arg-type]
    for (group, i, j), terms in pair_terms.items():
        value = torch.stack([t.to(device=device, dtype=dtype) for t in terms]).sum()
        gram[group, i, j] += value
        if i != j:
            gram[group, j, i] += value
    return gram


def change_products(
    gradients: ObjectiveGradients,
    changes: dict[int, Tensor],
    num_groups: int,
    num_objectives: int,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """Each objective's gradient against a parameter change, over the balanced parameters
    (those of the Gram matrix): ``products`` ``(num_groups, K)`` with ``<g_i, delta>`` and
    ``sq_norms`` ``(num_groups,)`` with ``||delta||^2``, per parameter group, float64 on
    ``device``. ``changes`` maps ``id(param)`` to that parameter's change; a balanced parameter
    without one contributes nothing. Products in float32 (float64 for float64 tensors), summed
    in float64, like :func:`gram_matrix`."""
    products = torch.zeros(num_groups, num_objectives, dtype=torch.float64, device=device)
    sq_norms = torch.zeros(num_groups, dtype=torch.float64, device=device)
    for param, block, group in zip(gradients.params, gradients.blocks, gradients.groups):
        change = changes.get(id(param))
        if change is None:
            continue
        flat = change.reshape(-1)
        flat = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
        sq_norms[group] += torch.dot(flat, flat).to(device=device, dtype=torch.float64)
        rows = block if isinstance(block, list) else list(block)
        for k, row in enumerate(rows):
            if row is not None:
                product = torch.dot(row.reshape(-1).to(flat.dtype), flat)
                products[group, k] += product.to(device=device, dtype=torch.float64)
    return products, sq_norms


def _obeys_layout(param: Tensor, grad: Tensor) -> bool:
    """Whether ``grad`` can become ``param.grad`` as it is: same dtype, shape and strides as
    the (dense) parameter, so it is dense and has no overlapping elements. Autograd returns
    expanded (stride-0) views for some inputs (the gradient of ``p.sum()``); fused optimizers
    and in-place additions go wrong on them."""
    return (
        grad.layout == torch.strided
        and grad.dtype == param.dtype
        and grad.shape == param.shape
        and grad.stride() == param.stride()
    )


def _accumulate(param: Tensor, grad: Tensor, *, fresh: bool = True) -> None:
    """Add ``grad`` into ``param.grad`` (or set it), like autograd's gradient accumulation.

    A new ``.grad`` is always a dense tensor with the parameter's layout and dtype, as
    ``loss.backward()`` leaves it: ``grad`` is used as it is only when it obeys that layout and
    ``fresh`` says no other ``.grad`` shares its memory; otherwise it is copied.
    """
    if param.grad is None:
        if grad.is_sparse:
            param.grad = grad if fresh else grad.clone()
        elif fresh and _obeys_layout(param, grad):
            param.grad = grad
        else:
            dense = torch.empty_like(param, memory_format=torch.preserve_format)
            param.grad = dense.copy_(grad)
    else:
        param.grad.add_(grad)


def scale_gradients(
    gradients: ObjectiveGradients, factor: Union[Tensor, float]
) -> ObjectiveGradients:
    """``gradients`` with every tensor multiplied by ``factor`` (a 0-dim tensor or a number).

    Out of place: gradients returned by autograd may be expanded views that cannot be written.
    Used to unscale AMP gradients (``factor = 1 / scale``) and to average accumulated ones.
    """
    if isinstance(factor, Tensor):
        return gradients.with_tensors(
            [t * factor.to(dtype=t.dtype, device=t.device) for t in gradients.tensors()]
        )
    return gradients.with_tensors([t * factor for t in gradients.tensors()])


def merge_gradients(
    total: ObjectiveGradients,
    new: ObjectiveGradients,
    placement: Mapping[int, tuple[int, int]],
    num_objectives: int,
) -> ObjectiveGradients:
    """Sum of two results (gradient accumulation over micro-batches), parameter by parameter.

    A parameter that is balanced in one result and exclusive in the other, or exclusive to two
    different objectives, becomes balanced (missing rows are zeros). ``placement`` maps
    ``id(param)`` to ``(position among the optimizer's parameters, balancing group)``; the
    result keeps the optimizer's order.
    """
    blocks: dict[int, tuple[Tensor, Tensor, int]] = {}
    exclusive: dict[int, tuple[Tensor, Tensor, int]] = {}
    combined: dict[int, tuple[Tensor, Tensor]] = {}

    def add_block(param: Tensor, block: Tensor) -> None:
        key = id(param)
        if key in exclusive:
            _, grad, k = exclusive.pop(key)
            block = block.clone()
            block[k] += grad
        if key in blocks:
            block = blocks[key][1] + block
        blocks[key] = (param, block, placement[key][1])

    for part in (total, new):
        for param, block in zip(part.params, part.blocks):
            add_block(param, stacked_block(block, param))
        for param, grad, k in part.exclusive:
            key = id(param)
            if key in blocks:
                block = blocks[key][1].clone()
                block[k] += grad
                blocks[key] = (blocks[key][0], block, blocks[key][2])
            elif key in exclusive and exclusive[key][2] == k:
                exclusive[key] = (param, exclusive[key][1] + grad, k)
            elif key in exclusive:
                _, previous, j = exclusive.pop(key)
                block = previous.new_zeros((num_objectives, *param.shape))
                block[j] = previous
                block[k] = grad
                blocks[key] = (param, block, placement[key][1])
            else:
                exclusive[key] = (param, grad, k)
        for param, grad in part.combined:
            key = id(param)
            combined[key] = (param, combined[key][1] + grad) if key in combined else (param, grad)
    ordered_blocks = sorted(blocks.values(), key=lambda item: placement[id(item[0])][0])
    return ObjectiveGradients(
        params=[p for p, _, _ in ordered_blocks],
        blocks=[b for _, b, _ in ordered_blocks],
        groups=[g for _, _, g in ordered_blocks],
        exclusive=sorted(exclusive.values(), key=lambda item: placement[id(item[0])][0]),
        reached=[a or b for a, b in zip(total.reached, new.reached)]
        if total.reached
        else list(new.reached),
        combined=sorted(combined.values(), key=lambda item: placement[id(item[0])][0]),
    )


def combine(
    gradients: ObjectiveGradients,
    weights: Tensor,
    *,
    exclusive_weights: Optional[Tensor] = None,
    factor: Optional[Tensor] = None,
) -> list[tuple[Tensor, Tensor]]:
    """``(param, gradient)`` pairs of the combined update, without touching ``.grad``.

    Balanced parameters get ``sum_i w_i g_i`` with ``weights`` of shape ``(num_groups, K)``
    (row ``g`` for the parameters of group ``g``); exclusive parameters their plain gradient
    (times ``exclusive_weights[k]`` when given); already combined gradients pass through.
    ``factor`` (0-dim) multiplies everything: AMP uses it to re-apply the loss scale and to
    turn the whole update into NaN when a per-objective gradient was not finite.
    """
    if factor is not None:
        weights = weights * factor.to(weights.dtype)
    pairs: list[tuple[Tensor, Tensor]] = []
    groups = set(gradients.groups)
    rows = _uniform_rows(gradients.blocks, weights.shape[-1]) if len(groups) == 1 else None
    if rows is not None:
        combined = _fused_combination(rows, weights[groups.pop()], gradients.owned)
        pairs.extend(zip(gradients.params, combined))
        blocks: list[tuple[Tensor, Block, int]] = []
    else:
        blocks = list(zip(gradients.params, gradients.blocks, gradients.groups))
    cast: dict[tuple[int, torch.dtype, torch.device], Tensor] = {}
    for param, block, group in blocks:
        present = (
            []
            if isinstance(block, Tensor)
            else [(k, row) for k, row in enumerate(block) if row is not None]
        )
        reference = block if isinstance(block, Tensor) else present[0][1]
        key = (group, reference.dtype, reference.device)
        if key not in cast:
            cast[key] = weights[group].to(dtype=reference.dtype, device=reference.device)
        w = cast[key]
        if isinstance(block, Tensor):
            k_total = block.shape[0]
            pairs.append((param, torch.matmul(w, block.reshape(k_total, -1)).view(param.shape)))
            continue
        # Rows as autograd returned them: sum_k w_k g_k with one multiply and K - 1
        # multiply-adds, written into the first row when nothing else shares it.
        first_k, first = present[0]
        out = first.mul_(w[first_k]) if id(first) in gradients.owned else first * w[first_k]
        for k, row in present[1:]:
            out.addcmul_(row, w[k])
        pairs.append((param, out))
    for param, grad, k in gradients.exclusive:
        scale = None if exclusive_weights is None else exclusive_weights[k]
        if factor is not None:
            scale = factor if scale is None else scale * factor.to(scale.dtype)
        if scale is not None:
            grad = grad * scale.to(dtype=grad.dtype, device=grad.device)
        pairs.append((param, grad))
    for param, grad in gradients.combined:
        pairs.append(
            (
                param,
                grad if factor is None else grad * factor.to(dtype=grad.dtype, device=grad.device),
            )
        )
    return pairs


def _fused_combination(rows: list[list[Tensor]], weights: Tensor, owned: set[int]) -> list[Tensor]:
    """``sum_k w_k rows[k][j]`` for every tensor ``j`` in K fused calls: a ``_foreach_mul`` of
    the first rows (in place where :func:`combine` may overwrite them) and a
    ``_foreach_addcmul_`` per further objective -- the same arithmetic as the per-tensor path."""
    first = rows[0]
    w = weights.to(dtype=first[0].dtype, device=first[0].device)
    mine = [id(t) in owned for t in first]
    if all(mine):
        torch._foreach_mul_(first, w[0])
        out = list(first)
    elif not any(mine):
        out = list(torch._foreach_mul(first, w[0]))
    else:
        out = [t.mul_(w[0]) if own else t * w[0] for t, own in zip(first, mine)]
    for k in range(1, len(rows)):
        torch._foreach_addcmul_(out, rows[k], [w[k]] * len(out))
    return out


def accumulate_grads(pairs: Sequence[tuple[Tensor, Tensor]]) -> None:
    """Add each gradient into its parameter's ``.grad`` (or set it), as autograd does.

    Every new ``.grad`` is dense, in the parameter's layout, and shares its memory with no
    other ``.grad`` written here (autograd may hand the same tensor to several inputs).
    """
    used: set[tuple[int, int]] = set()
    for param, grad in pairs:
        # The address of the first element: the same for tensors that share memory from the
        # same place on (what autograd hands to several inputs), different otherwise.
        key = (grad.data_ptr(), 0) if grad.layout == torch.strided else (id(grad), 1)
        _accumulate(param, grad, fresh=key not in used)
        used.add(key)


def write_combined(
    gradients: ObjectiveGradients, weights: Tensor, *, exclusive_weights: Optional[Tensor] = None
) -> None:
    """Write ``sum_i w_i g_i`` into ``.grad`` of every balanced parameter, and the plain gradient
    of every exclusive parameter (times ``exclusive_weights[k]`` when given).

    ``weights`` is ``(num_groups, K)``; row ``g`` is used for the parameters of group ``g``.
    Existing ``.grad`` values are added to, as autograd does.
    """
    accumulate_grads(combine(gradients, weights, exclusive_weights=exclusive_weights))


def weighted_gradients(
    losses: Sequence[Tensor],
    weights: Tensor,
    params: Sequence[Tensor],
    *,
    retain_graph: bool = False,
) -> ObjectiveGradients:
    """Gradient of ``sum_i w_i L_i`` (weights detached) with ``torch.autograd.grad``, as
    ``combined`` pairs; ``.grad`` and DDP's reducer are not touched (amortized accumulation)."""
    stacked = torch.stack([loss.reshape(()) for loss in losses])
    total = (weights.to(dtype=stacked.dtype, device=stacked.device).detach() * stacked).sum()
    grads = torch.autograd.grad(total, list(params), retain_graph=retain_graph, allow_unused=True)
    return ObjectiveGradients(
        reached=[True] * len(losses),
        combined=[(p, g) for p, g in zip(params, grads) if g is not None],
    )


def representation_gradients(
    losses: Sequence[Tensor], features: Sequence[Tensor]
) -> list[Optional[list[Tensor]]]:
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
            per_objective.append(
                [torch.zeros_like(f) if g is None else g for f, g in zip(features, grads)]
            )
    return per_objective


def stack_feature_blocks(per_objective: Sequence[list[Tensor]]) -> list[Tensor]:
    """Turn per-objective lists of feature gradients into one ``(K, *f.shape)`` block per feature."""
    return [
        torch.stack([grads[j] for grads in per_objective]) for j in range(len(per_objective[0]))
    ]


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
        replacement = torch.tensordot(w, block, dims=1).to(feature.dtype)
        handles.append(feature.register_hook(lambda _grad, value=replacement: value))
    try:
        total = torch.stack([loss.reshape(()) for loss in losses]).sum()
        torch.autograd.backward(total, inputs=list(params), retain_graph=retain_graph)
    finally:
        for handle in handles:
            handle.remove()


def weighted_backward(
    losses: Sequence[Tensor],
    weights: Tensor,
    params: Sequence[Tensor],
    *,
    retain_graph: bool = False,
) -> None:
    """One backward of ``sum_i w_i L_i`` (weights detached) into the given parameters."""
    stacked = torch.stack([loss.reshape(()) for loss in losses])
    total = (weights.to(dtype=stacked.dtype, device=stacked.device).detach() * stacked).sum()
    torch.autograd.backward(total, inputs=list(params), retain_graph=retain_graph)
