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
