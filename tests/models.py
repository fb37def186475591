"""Tiny models used by the tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TwoHeadMLP(nn.Module):
    """Shared trunk, a task head and an auxiliary (distillation) head reached by one loss."""

    def __init__(self, in_features: int = 64, hidden: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
        )
        self.classifier = nn.Linear(hidden, classes)
        self.projector = nn.Linear(hidden, 48)  # only the feature loss reaches it

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.trunk(x)
        return self.classifier(features), self.projector(features), features


class SmallCNN(nn.Module):
    """A small CNN for 8x8 digits."""

    def __init__(self, classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(8 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


def kd_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    """Hinton KD loss written out for the tests (KL at temperature T, times T^2)."""
    log_p = F.log_softmax(student_logits / temperature, dim=-1)
    q = F.softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(log_p, q, reduction="batchmean") * temperature**2


def two_head_batch(step: int, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    """``(x, y, feature target, teacher logits)`` for :class:`TwoHeadMLP`, 32 samples drawn on
    the CPU from a generator seeded with ``step`` (the same on every device), moved to
    ``device``."""
    generator = torch.Generator().manual_seed(step)
    x = torch.rand(32, 1, 8, 8, generator=generator)
    y = torch.randint(0, 10, (32,), generator=generator)
    target = torch.randn(32, 48, generator=generator)
    teacher = 3 * torch.randn(32, 10, generator=generator)
    return tuple(t.to(device) for t in (x, y, target, teacher))


def two_head_losses(
    model: nn.Module, step: int, dtype: torch.dtype | None = None, device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The task, KD and feature losses of :class:`TwoHeadMLP` on :func:`two_head_batch`, under
    ``torch.autocast(device, dtype)`` when ``dtype`` is given, and the features ``(logits,
    projected)`` for the ``representation`` strategy."""
    x, y, target, teacher = two_head_batch(step, device)
    with torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits, projected, _ = model(x)
        losses = {
            "task": F.cross_entropy(logits, y),
            "kd": kd_kl(logits.float(), teacher),
            "feat": F.smooth_l1_loss(projected.float(), target),
        }
    return losses, (logits, projected)
