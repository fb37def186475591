"""Test helpers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class HostSyncError(AssertionError):
    """A tensor value was read on the host where no synchronisation is allowed."""


@contextlib.contextmanager
def forbid_host_sync() -> Iterator[None]:
    """Make every Python-level read of a tensor's value raise.

    Patches ``Tensor.__bool__``, ``item``, ``tolist``, ``__float__``, ``__int__`` and
    ``numpy``: a data-dependent Python branch or an ``.item()`` in the code under test fails
    the test, on CPU as it would stall a GPU stream. Shapes (``torch.Size``) are not affected.
    """
    names = ["__bool__", "item", "tolist", "__float__", "__int__", "numpy"]
    saved = {name: getattr(torch.Tensor, name) for name in names}

    def make(name: str):
        def refuse(self, *args, **kwargs):
            raise HostSyncError(f"host synchronisation: Tensor.{name} called")

        return refuse

    try:
        for name in names:
            setattr(torch.Tensor, name, make(name))
        yield
    finally:
        for name, value in saved.items():
            setattr(torch.Tensor, name, value)


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """Run with ``count`` intra-op threads, restoring the previous setting afterwards.

    The stack tests train tiny models, for which one thread is faster than two and immune to
    OpenMP oversubscription when the machine is busy.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
