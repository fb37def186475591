"""Collectives for training under ``torch.distributed`` (DDP launched by ``torchrun``).

:class:`~mokd_optim.MultiObjectiveOptimizer` calls these helpers; users rarely need them
directly, except :func:`unwrap_model`, :func:`is_main_process` and
:func:`communication_bytes`. See docs/distributed.md for the two synchronisation modes:

- ``sync="exact"``: the per-objective gradients are averaged across ranks (bucketed: several
  gradient tensors are flattened into one buffer and reduced with one collective per bucket),
  then every rank solves the same weights from the same Gram matrix. Result: the single-process
  update on the concatenated batch. Cost: ``K x |shared params|`` gradient values per step.
- ``sync="weights"``: weights from the local gradients, averaged across ranks (``K`` numbers,
  one collective), then the combined gradient is averaged as DDP does. Cost: ``K`` floats plus
  the usual ``|params|`` gradient all-reduce.

Every collective here is issued with ``async_op=True`` and waited on before its result is
used; none reads a tensor value on the host, so the per-step path stays free of host
synchronisation on GPUs (gloo on CPU is synchronous by nature).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

SYNC_MODES = ("auto", "none", "exact", "weights")
DEFAULT_BUCKET_BYTES = 25 * 1024 * 1024
"""Default bucket capacity (the same 25 MiB DDP uses for its gradient buckets)."""


@dataclass(frozen=True)
class Communication:
    """What one :meth:`MultiObjectiveOptimizer.backward` sent across ranks.

    Attributes:
        collectives: number of ``all_reduce`` calls issued by the optimizer.
        bytes: payload bytes of those calls, per rank (not counting DDP's own reducer, which
            moves ``|params|`` gradient values when the representation or amortized strategy
            runs its single backward through a DDP model).
    """

    collectives: int = 0
    bytes: int = 0

    def __add__(self, other: Communication) -> Communication:
        return Communication(self.collectives + other.collectives, self.bytes + other.bytes)


def is_distributed(group: Optional[Any] = None) -> bool:
    """Whether a process group is initialised and has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def world_size(group: Optional[Any] = None) -> int:
    """Number of ranks of ``group`` (1 when ``torch.distributed`` is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


def rank(group: Optional[Any] = None) -> int:
    """Rank of this process in ``group`` (0 when ``torch.distributed`` is not initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group)
    return 0


def is_main_process() -> bool:
    """True on global rank 0 (and in a single process): the rank that logs and writes files."""
    return rank() == 0


def barrier(group: Optional[Any] = None) -> None:
    """``dist.barrier`` when distributed, else nothing."""
    if is_distributed(group):
        dist.barrier(group=group)


def resolve_sync(sync: str, group: Optional[Any] = None) -> str:
    """The synchronisation mode in effect now: ``"none"`` outside a multi-rank process group,
    ``"exact"`` for ``"auto"`` inside one, else ``sync`` itself.

    Raises:
        ValueError: ``sync`` is not one of :data:`SYNC_MODES`.
    """
    if sync not in SYNC_MODES:
        raise ValueError(f"unknown sync mode {sync!r}; choose one of {SYNC_MODES}")
    if sync == "none" or not is_distributed(group):
        return "none"
    return "exact" if sync == "auto" else sync


def bucket_plan(
    tensors: Sequence[Tensor], bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> list[list[int]]:
    """Split ``tensors`` (by index, in order) into buckets for one collective each.

    A bucket holds consecutive tensors of one dtype and device whose total size stays within
    ``bucket_bytes``; a tensor larger than that gets a bucket of its own. The plan depends only
    on shapes and dtypes, so every rank computes the same one from the same layout.

    Raises:
        ValueError: ``bucket_bytes`` is not positive.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    buckets: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    current_key: Optional[tuple[torch.dtype, torch.device]] = None
    for index, tensor in enumerate(tensors):
        size = tensor.numel() * tensor.element_size()
        key = (tensor.dtype, tensor.device)
        if current and (key != current_key or current_bytes + size > bucket_bytes):
            buckets.append(current)
            current, current_bytes = [], 0
        current.append(index)
        current_bytes += size
        current_key = key
    if current:
        buckets.append(current)
    return buckets


def all_reduce_mean(
    tensors: Sequence[Tensor],
    *,
    group: Optional[Any] = None,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> tuple[list[Tensor], Communication]:
    """Average ``tensors`` across the ranks of ``group``, one collective per bucket.

    Each bucket (:func:`bucket_plan`) is flattened into one contiguous buffer, summed with
    ``all_reduce`` and divided by the world size (gloo has no ``AVG``). All collectives are
    issued before the first is waited on, so they overlap on backends that can.

    Args:
        tensors: dense tensors with the same shapes, dtypes and order on every rank.

    Returns:
        ``(averaged, communication)``: new tensors (views into the reduced buffers; the inputs
        are not modified, so they may be expanded or otherwise non-writable), and the number
        of collectives and bytes sent. With one rank the inputs are returned unchanged.
    """
    size = world_size(group)
    if size == 1 or not tensors:
        return list(tensors), Communication()
    plan = bucket_plan(tensors, bucket_bytes)
    pending = []
    sent = 0
    for bucket in plan:
        members = [tensors[i] for i in bucket]
        flat = _flatten_dense_tensors(members)
        sent += flat.numel() * flat.element_size()
        pending.append((bucket, members, flat, dist.all_reduce(flat, group=group, async_op=True)))
    averaged: list[Optional[Tensor]] = [None] * len(tensors)
    for bucket, members, flat, work in pending:
        assert work is not None
        work.wait()
        flat.div_(size)
        for index, view in zip(bucket, _unflatten_dense_tensors(flat, members)):
            averaged[index] = view
    return [t for t in averaged if t is not None], Communication(len(plan), sent)


def all_reduce_sum(tensor: Tensor, *, group: Optional[Any] = None) -> tuple[Tensor, Communication]:
    """Sum one (small) tensor across ranks; returns a new tensor and the communication."""
    if world_size(group) == 1:
        return tensor, Communication()
    total = tensor.detach().clone().contiguous()
    work = dist.all_reduce(total, group=group, async_op=True)
    assert work is not None
    work.wait()
    return total, Communication(1, total.numel() * total.element_size())


def check_same_layout(signature: Sequence[int], what: str, *, group: Optional[Any] = None) -> None:
    """Raise on every rank when the ranks disagree on ``signature`` (a few integers).

    Used before bucketed collectives, whose buffers must have the same layout on every rank.
    Costs one small collective and one host synchronisation (it runs only with
    ``validate=True``).

    Raises:
        RuntimeError: naming ``what`` differs between ranks.
    """
    if world_size(group) == 1:
        return
    values = torch.tensor(list(signature), dtype=torch.int64)
    backend = dist.get_backend(group)
    if backend == "nccl":
        values = values.cuda()
    both = torch.cat([values, -values])
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    maximum, minimum = both[: len(signature)], -both[len(signature) :]
    if not torch.equal(maximum, minimum):
        raise RuntimeError(
            f"ranks disagree on {what} (min {minimum.tolist()} vs max {maximum.tolist()}): every rank must "
            "compute the same objectives from the same parameters (data-dependent control flow that "
            "skips a head or a loss on some ranks is not supported)"
        )


def gather_rows(values: Sequence[float], *, group: Optional[Any] = None) -> Tensor:
    """Every rank's ``values`` as a ``(world_size, n)`` float64 CPU tensor (row ``r`` from rank
    ``r``), with one small ``all_reduce``; ``(1, n)`` in a single process.

    The optimizer's checks under ``validate=True`` use it so that all ranks see the same
    verdict and raise together, instead of one rank raising while the others wait in the next
    collective until the process group times out. Integers up to 2**53 are exact.
    """
    row = torch.tensor([float(v) for v in values], dtype=torch.float64)
    size = world_size(group)
    if size == 1:
        return row[None]
    table = torch.zeros(size, len(row), dtype=torch.float64)
    table[rank(group)] = row
    if dist.get_backend(group) == "nccl":
        table = table.cuda()
    dist.all_reduce(table, group=group)
    return table.cpu()


def all_gather_objects(obj: Any, *, group: Optional[Any] = None) -> list[Any]:
    """``[obj from rank 0, obj from rank 1, ...]`` (``[obj]`` in a single process)."""
    if world_size(group) == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size(group)
    dist.all_gather_object(gathered, obj, group=group)
    return gathered


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP / ``DataParallel`` / ``torch.compile`` wrappers.

    Its ``state_dict()`` has no ``module.`` or ``_orig_mod.`` prefixes, so checkpoints load into
    a model wrapped differently (or not at all).
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def communication_bytes(
    shared: Sequence[Tensor], num_objectives: int, sync: str, *, exclusive: Sequence[Tensor] = ()
) -> int:
    """Payload bytes each rank sends per optimizer step with the loop/vmap strategies.

    Args:
        shared: parameters reached by two or more objectives (the balanced ones).
        num_objectives: ``K``.
        sync: ``"exact"``, ``"weights"`` or ``"none"``.
        exclusive: parameters reached by one objective only (heads).

    Returns:
        ``"exact"``: ``K x |shared| + |exclusive|`` gradient values plus ``K`` float64 loss
        values -- an upper bound for the ``loop`` strategy, which sends only the gradients an
        objective actually has (a parameter reached by 2 of 3 objectives sends 2 rows);
        ``"weights"``: ``K`` float64 weights plus ``|shared| + |exclusive|`` gradient values
        (the all-reduce DDP does anyway); ``"none"``: 0.

    Raises:
        ValueError: unknown ``sync``.
    """
    shared_bytes = sum(p.numel() * p.element_size() for p in shared)
    exclusive_bytes = sum(p.numel() * p.element_size() for p in exclusive)
    if sync == "exact":
        return num_objectives * shared_bytes + exclusive_bytes + num_objectives * 8
    if sync == "weights":
        return shared_bytes + exclusive_bytes + num_objectives * 8
    if sync == "none":
        return 0
    raise ValueError(f"unknown sync mode {sync!r}; choose 'exact', 'weights' or 'none'")
