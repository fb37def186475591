"""Type aliases that name what a tensor is.

They are plain aliases of :class:`torch.Tensor`; their names document shapes and contracts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Union

from torch import Tensor

PSDMatrix = Tensor
"""A symmetric positive semi-definite matrix, shape ``(..., K, K)`` (e.g. a Gram matrix)."""

Weights = Tensor
"""Per-objective weights, shape ``(..., K)``."""

Losses = Union[Mapping[str, Tensor], Sequence[Tensor]]
"""Per-objective scalar losses: a mapping name -> scalar tensor, or a sequence of scalars."""
