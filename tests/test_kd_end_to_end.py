"""ResNet-34 -> ResNet-18 distillation on real Fashion-MNIST images, balanced by MoKD."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.models import resnet18, resnet34

from mokd_optim import MultiObjectiveOptimizer
from mokd_optim.kd import Distiller, build_heads
from tests._kd_support import fashion_mnist

STEPS = 10


# The teacher is randomly initialised: far weaker than what the student can learn from the
# labels, so its KD gradient comes to point against the task's, and the feature log-gradient is
# ~50x smaller than the others. Round 3's rule (the min-norm point of the distillation losses'
# unit gradients, Pareto steps) lowers every loss. The default sums the distillation losses'
# log-gradients (the feature loss keeps its small share: it must not rise) and gives the task
# priority (the KD loss may rise rather than slow the task).
@pytest.mark.parametrize(
    ("options", "falling", "not_rising"),
    [
        ({"rest": "min-norm", "conflict": "pareto"}, ("task", "kd", "feat"), ()),
        ({}, ("task",), ("feat",)),
    ],
    ids=["round-3-pareto", "default"],
)
def test_resnet34_to_resnet18_losses_decrease_with_mokd_balancing(
    options: dict, falling: tuple[str, ...], not_rising: tuple[str, ...]
) -> None:
    torch.manual_seed(0)
    images, labels = fashion_mnist(16, size=32)  # real images, grey replicated to 3 channels
    mean, std = (0.286,) * 3, (0.353,) * 3  # Fashion-MNIST pixel statistics
    x = (images - mean[0]) / std[0]
    student, teacher = resnet18(num_classes=10), resnet34(num_classes=10)
    heads = build_heads(
        student,
        teacher,
        [("layer2", "layer2"), ("layer3", "layer3")],
        x[:4],
        expansion=2.0,
        teacher_projector="fixed",
    )
    assert [(h.student_channels, h.teacher_channels, h.width) for h in heads.values()] == [
        (128, 128, 256),
        (256, 256, 512),
    ]
    distiller = Distiller(
        student,
        teacher,
        heads,
        logit_options={"T": 4.0},
        student_normalization=(mean, std),
        teacher_normalization=(mean, std),
    )
    teacher_before = copy.deepcopy(teacher.state_dict())
    # Clipping the combined gradient is part of the paper's recipe. Without it the "anchor"
    # step follows the feature gradient (the smallest log-gradient here, by ~50x, so the
    # min-norm weights sit on it) at the task gradient's norm, and the task loss only wanders.
    base = torch.optim.SGD(distiller.param_groups(weight_decay=0.0), lr=0.05, momentum=0.9)
    opt = MultiObjectiveOptimizer(base, "mokd", max_norm=1.0, **options)
    distiller.train()
    history = []
    for _ in range(STEPS):
        _, losses = distiller(x, labels)
        opt.zero_grad()
        stats = opt.backward(losses)
        opt.step()
        history.append({name: value.item() for name, value in losses.items()})
        assert torch.isfinite(stats.weights).all() and (stats.weights >= 0).all()
        assert all(
            torch.isfinite(p.grad).all() for p in distiller.parameters() if p.grad is not None
        )
    with torch.no_grad():
        _, final = distiller(x, labels)
    first = history[0]
    assert set(first) == {"task", "kd", "feat"}
    for name in ("task", "kd", "feat"):
        values = [step[name] for step in history] + [final[name].item()]
        assert all(torch.isfinite(torch.tensor(values))), name
        if name in falling:
            assert values[-1] < 0.95 * values[0], (name, values)
        if name in not_rising:
            assert values[-1] <= values[0], (name, values)
    # The teacher was never updated; the exported student is the trained one.
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    exported = distiller.student_for_export()
    exported.eval()
    student.eval()
    with torch.no_grad():
        assert torch.equal(exported(x), student(x))
