"""Conflict and dominance statistics of per-objective gradients, and the per-step record.

Everything here is computed from the ``K x K`` Gram matrix, on the device, without host
synchronisation; :meth:`StepStats.to_dict` is the one place that moves numbers to the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from mokd_optim._typing import PSDMatrix


def grad_norms(gram: PSDMatrix) -> Tensor:
    """Per-objective gradient norms ``sqrt(G_ii)``, shape ``(..., K)``."""
    return torch.diagonal(gram, dim1=-2, dim2=-1).clamp_min(0.0).sqrt()


def cosine_matrix(gram: PSDMatrix) -> Tensor:
    """Pairwise cosine similarities ``G_ij / (||g_i|| ||g_j||)``, shape ``(..., K, K)``.

    Entries involving a zero gradient are 0 (and 1 on the diagonal).
    """
    norms = grad_norms(gram)
    outer = norms[..., :, None] * norms[..., None, :]
    cosine = torch.where(outer > 0, gram / torch.where(outer > 0, outer, torch.ones_like(outer)), torch.zeros_like(gram))
    eye = torch.eye(gram.shape[-1], dtype=torch.bool, device=gram.device)
    return torch.where(eye, torch.ones_like(cosine), cosine.clamp(-1.0, 1.0))


def has_conflict(gram: PSDMatrix) -> Tensor:
    """Whether any pair of gradients has a negative inner product; bool tensor of shape ``(...)``."""
    k = gram.shape[-1]
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=gram.device)
    return ((gram < 0) & off_diagonal).flatten(-2).any(dim=-1)


def dominance_ratio(gram: PSDMatrix) -> Tensor:
    """Largest over smallest gradient norm, shape ``(...)`` (``inf`` when one gradient is zero)."""
    norms = grad_norms(gram)
    largest = norms.amax(dim=-1)
    smallest = norms.amin(dim=-1)
    ratio = largest / torch.where(smallest > 0, smallest, torch.ones_like(smallest))
    return torch.where(smallest > 0, ratio, torch.where(largest > 0, torch.full_like(largest, math.inf), torch.ones_like(largest)))


def combined_norm(gram: PSDMatrix, weights: Tensor) -> Tensor:
    """Norm of ``sum_i w_i g_i`` over the balanced parameters, ``sqrt(w^T G w)``; shape ``(...)``."""
    w = weights.to(gram.dtype)
    return torch.einsum("...i,...ij,...j->...", w, gram, w).clamp_min(0.0).sqrt()


@dataclass(frozen=True)
class StepStats:
    """What one :meth:`MultiObjectiveOptimizer.backward` call did.

    All tensors stay on the device (no host sync); ``to_dict()`` converts them. With
    ``balance="per_group"`` the per-objective fields gain a leading group dimension.

    Attributes:
        names: objective names, in order (``"0"``, ``"1"``, ... for a sequence of losses).
        losses: ``(K,)`` detached loss values.
        weights: ``(K,)`` weights on the raw gradients; the update is ``sum_i w_i g_i``.
        strategy: the gradient strategy that ran (``"loop"``, ``"vmap"``, ...).
        gram: ``(K, K)`` Gram matrix of the gradients over the balanced parameters (of the
            gradients at ``features`` for the representation strategy); ``None`` when no
            per-objective gradients were computed.
        info: method-specific tensors, e.g. ``simplex_weights`` (MoKD's ``pi``).
    """

    names: tuple[str, ...]
    losses: Tensor
    weights: Tensor
    strategy: str
    gram: Optional[Tensor] = None
    info: dict[str, Tensor] = field(default_factory=dict)

    @property
    def grad_norms(self) -> Optional[Tensor]:
        """``(K,)`` per-objective gradient norms, or ``None`` without a Gram matrix."""
        return None if self.gram is None else grad_norms(self.gram)

    @property
    def cosine(self) -> Optional[Tensor]:
        """``(K, K)`` cosine similarities between the objectives' gradients."""
        return None if self.gram is None else cosine_matrix(self.gram)

    @property
    def conflict(self) -> Optional[Tensor]:
        """0-dim bool tensor: some pair of gradients has a negative inner product."""
        return None if self.gram is None else has_conflict(self.gram)

    @property
    def dominance(self) -> Optional[Tensor]:
        """0-dim tensor: largest over smallest gradient norm (1 = balanced)."""
        return None if self.gram is None else dominance_ratio(self.gram)

    @property
    def combined_norm(self) -> Optional[Tensor]:
        """Norm of the balanced part of the update, before any ``max_norm`` clipping."""
        return None if self.gram is None else combined_norm(self.gram, self.weights)

    def to_dict(self) -> dict[str, float]:
        """Flat ``name -> float`` record for logging (synchronises with the host).

        Keys: ``loss/<name>``, ``weight/<name>``, ``grad_norm/<name>``, ``cosine/<a>|<b>``,
        ``conflict``, ``dominance``, ``combined_norm`` and ``<info key>/<name>`` (``<info key>``
        alone for a per-step scalar such as ``solver_failed``); per-group statistics get a
        ``group<g>/`` prefix. Missing statistics are NaN.
        """
        record: dict[str, float] = {}
        losses = self.losses.detach().double().cpu().tolist()
        for name, value in zip(self.names, losses):
            record[f"loss/{name}"] = value
        grouped = self.weights.dim() == 2
        weights = self.weights.detach().double().cpu()
        grams = None if self.gram is None else self.gram.detach().double().cpu()
        infos = {key: value.detach().double().cpu() for key, value in self.info.items()}
        num_groups = weights.shape[0] if grouped else 1
        for g in range(num_groups):
            prefix = f"group{g}/" if grouped else ""
            w = weights[g] if grouped else weights
            for name, value in zip(self.names, w.tolist()):
                record[f"{prefix}weight/{name}"] = value
            for key, tensor in infos.items():
                if tensor.dim() == (1 if grouped else 0):
                    # One number per step (e.g. Nash-MTL's solver_failed), not one per objective.
                    record[f"{prefix}{key}"] = float(tensor[g] if grouped else tensor)
                    continue
                row = tensor[g] if grouped and tensor.dim() == 2 else tensor
                for name, value in zip(self.names, row.reshape(-1).tolist()):
                    record[f"{prefix}{key}/{name}"] = value
            gram = None if grams is None else (grams[g] if grouped else grams)
            nan = float("nan")
            norms = grad_norms(gram).tolist() if gram is not None else [nan] * len(self.names)
            for name, value in zip(self.names, norms):
                record[f"{prefix}grad_norm/{name}"] = value
            if gram is not None:
                cosine = cosine_matrix(gram)
                for a in range(len(self.names)):
                    for b in range(a + 1, len(self.names)):
                        record[f"{prefix}cosine/{self.names[a]}|{self.names[b]}"] = float(cosine[a, b])
            record[f"{prefix}conflict"] = nan if gram is None else float(has_conflict(gram))
            record[f"{prefix}dominance"] = nan if gram is None else float(dominance_ratio(gram))
            record[f"{prefix}combined_norm"] = nan if gram is None else float(combined_norm(gram, w))
        return record
