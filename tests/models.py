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
