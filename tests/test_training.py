"""Full training runs on real data (sklearn digits): MoKD versus the plain sum of the losses.

Protocol: a CNN teacher is trained once; an MLP student is distilled with task = cross-entropy
and kd = Hinton KL (T = 4), SGD with momentum 0.9, batch 64, 8 epochs, 3 seeds. The learning
rate 0.1 is the best of {0.01, 0.03, 0.1, 0.3} for the student trained on cross-entropy alone
(the recipe a user already has). Numbers measured on 2 CPU cores with torch 2.14.1
(2026-11-27): CE alone 95.6 %, sum 94.7 %, MoKD with the 0.1 default (``step="anchor"``, the
paper's weights) 95.3 %; at lr 0.3 the sum diverges (21 %) and that MoKD reaches 95.3 %.

MoKD runs with the library's defaults (``step="capped-log-anchor"``, ``equalize=1``; measured
2026-12-02, seeds 0-2): 95.2 / 96.4 / 96.4 % at lr 0.1 and 96.6 / 97.6 / 96.0 % at lr 0.3.
Round 1's choice (``step="log-anchor"``) reached 88.3 / 92.0 / 85.7 % and 89.9 / 88.7 / 49.3 %
here: its steps grow as ``1 / L_task`` at a constant learning rate (docs/mokd.md); the cap is
what these tests now guard.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mokd_optim import MultiObjectiveOptimizer
from tests.models import SmallCNN, kd_kl

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def teacher_logits(digits) -> torch.Tensor:
    x_train, y_train, x_test, y_test = digits
    torch.manual_seed(0)
    teacher = SmallCNN(width=16)
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for _ in range(40):
        order = torch.randperm(len(y_train))
        for start in range(0, len(y_train), 64):
            batch = order[start : start + 64]
            opt.zero_grad()
            F.cross_entropy(teacher(x_train[batch]), y_train[batch]).backward()
            opt.step()
    teacher.eval()
    with torch.no_grad():
        accuracy = (teacher(x_test).argmax(1) == y_test).float().mean().item()
        logits = teacher(x_train)
    assert accuracy > 0.96, f"teacher accuracy {accuracy:.3f}"
    return logits


def _distil(
    digits, teacher_logits: torch.Tensor, method: str, seed: int, lr: float, epochs: int = 8
) -> float:
    x_train, y_train, x_test, y_test = digits
    torch.manual_seed(seed)
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    opt = MultiObjectiveOptimizer(
        torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9), method
    )
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(y_train), generator=generator)
        for start in range(0, len(y_train), 64):
            batch = order[start : start + 64]
            logits = student(x_train[batch])
            losses = {
                "task": F.cross_entropy(logits, y_train[batch]),
                "kd": kd_kl(logits, teacher_logits[batch]),
            }
            opt.zero_grad()
            opt.backward(losses)
            opt.step()
    with torch.no_grad():
        return (student(x_test).argmax(1) == y_test).float().mean().item()


def test_mokd_reaches_at_least_the_sum_at_the_ce_learning_rate(digits, teacher_logits) -> None:
    mokd = [_distil(digits, teacher_logits, "mokd", seed, lr=0.1) for seed in SEEDS]
    summed = [_distil(digits, teacher_logits, "sum", seed, lr=0.1) for seed in SEEDS]
    mean_mokd, mean_sum = sum(mokd) / 3, sum(summed) / 3
    assert mean_mokd >= mean_sum, (mokd, summed)
    assert mean_mokd > 0.94, mokd


def test_mokd_is_stable_where_the_sum_diverges(digits, teacher_logits) -> None:
    """At lr 0.3 the KD term (scaled by T^2 = 16) makes the summed gradient too large; MoKD's
    default step is never longer than the task gradient's norm and trains normally.

    The bar is training normally, not a given accuracy: the final accuracy of a run at this
    learning rate moves by a few points with the CPU's rounding (seed 2: 91.95 % on an AMD EPYC,
    above 93 % on the machines this was written on), the divergence it guards against ends
    below 60 %."""
    mokd = [_distil(digits, teacher_logits, "mokd", seed, lr=0.3) for seed in SEEDS]
    summed = [_distil(digits, teacher_logits, "sum", seed, lr=0.3) for seed in SEEDS]
    assert min(mokd) > 0.9, mokd
    assert max(summed) < 0.6, summed
