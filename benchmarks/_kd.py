"""The knowledge-distillation step every step benchmark times, and its variants.

A frozen torchvision teacher (ResNet-34 by default) and a student (ResNet-18), one fixed random
batch (timing does not depend on the pixel values), K losses computed from the student logits:
cross-entropy, Hinton KD at T = 4, and for K > 2 further KD terms at other temperatures. Every
case is a closure that runs one whole training step -- teacher forward (no grad), student
forward, losses, backward (the part that differs), optimizer step -- so that the ratios are
ratios of real step times.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mokd_optim import MultiObjectiveOptimizer

#: Temperatures of the KD terms: the first is the classic T = 4; K > 2 adds the next ones.
TEMPERATURES = (4.0, 1.0, 2.0, 8.0, 16.0, 0.5, 32.0)
LR = 1e-4
MOMENTUM = 0.9


def kd_term(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton's KD loss: ``T^2 KL(softmax(t / T) || softmax(s / T))``, batch mean."""
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    q = F.softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * temperature**2


@dataclass
class KDSetup:
    """Models, batch and settings shared by the cases of one benchmark run."""

    student: nn.Module
    teacher: nn.Module
    x: Tensor
    y: Tensor
    device: torch.device
    k: int = 2
    amp: bool = False
    names: tuple[str, ...] = field(default_factory=tuple)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on CUDA when ``amp``; a no-op otherwise."""
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def params(self, model: Optional[nn.Module] = None) -> list[Tensor]:
        return [p for p in (model or self.student).parameters() if p.requires_grad]

    def forward(self, model: Optional[nn.Module] = None) -> tuple[Tensor, Tensor]:
        """Student logits (with grad) and teacher logits (no grad)."""
        with self.autocast():
            with torch.no_grad():
                teacher_logits = self.teacher(self.x)
            student_logits = (model or self.student)(self.x)
        return student_logits, teacher_logits

    def losses(self, student_logits: Tensor, teacher_logits: Tensor) -> dict[str, Tensor]:
        """The K named losses (float32)."""
        result = {"task": F.cross_entropy(student_logits.float(), self.y)}
        for index in range(self.k - 1):
            temperature = TEMPERATURES[index]
            result[f"kd_T{temperature:g}"] = kd_term(student_logits, teacher_logits, temperature)
        return result

    def fixed_weights(self) -> list[float]:
        """The fixed-weight baseline: ``1 / K`` each."""
        return [1.0 / self.k] * self.k

    def sgd(self, model: Optional[nn.Module] = None) -> torch.optim.SGD:
        return torch.optim.SGD(self.params(model), lr=LR, momentum=MOMENTUM)


def build(
    *,
    student: str,
    teacher: str,
    batch: int,
    resolution: int,
    num_classes: int,
    device: torch.device,
    k: int = 2,
    amp: bool = False,
    seed: int = 0,
) -> KDSetup:
    """Randomly initialised torchvision models (no download) and one random batch."""
    import torchvision

    torch.manual_seed(seed)
    student_model = getattr(torchvision.models, student)(num_classes=num_classes).to(device).train()
    teacher_model = getattr(torchvision.models, teacher)(num_classes=num_classes).to(device).eval()
    for param in teacher_model.parameters():
        param.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, resolution, resolution, generator=generator).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=generator).to(device)
    setup = KDSetup(
        student=student_model, teacher=teacher_model, x=x, y=y, device=device, k=k, amp=amp
    )
    setup.names = tuple(setup.losses(*setup.forward()).keys())
    return setup


# ---------------------------------------------------------------------------------------------
# Steps

Step = Callable[[], Any]


def fixed_step(setup: KDSetup) -> Step:
    """The fixed-weight KD step: ``loss.backward()`` of the weighted sum, SGD step."""
    optimizer = setup.sgd()
    weights = setup.fixed_weights()

    def step() -> None:
        losses = setup.losses(*setup.forward())
        total = sum(w * loss for w, loss in zip(weights, losses.values()))
        optimizer.zero_grad(set_to_none=True)
        total.backward()  # type: ignore[union-attr]
        optimizer.step()

    return step


def floor_step(setup: KDSetup) -> Step:
    """The theoretical floor of an exact strategy: the fixed step plus K - 1 extra backward
    passes through the student (``torch.autograd.grad`` of K - 1 losses, results discarded)."""
    optimizer = setup.sgd()
    weights = setup.fixed_weights()
    params = setup.params()

    def step() -> None:
        losses = list(setup.losses(*setup.forward()).values())
        for loss in losses[:-1]:
            torch.autograd.grad(loss, params, retain_graph=True)
        total = sum(w * loss for w, loss in zip(weights, losses))
        optimizer.zero_grad(set_to_none=True)
        total.backward()  # type: ignore[union-attr]
        optimizer.step()

    return step


def ours_step(
    setup: KDSetup,
    method: str,
    strategy: str,
    *,
    validate: bool = True,
    same_batch: bool = False,
    **options: Any,
) -> Step:
    """One step of ``MultiObjectiveOptimizer`` with the given method and strategy.

    ``strategy="representation"`` passes the student logits as ``features=``. ``same_batch``
    (amortised methods): ``step(closure)`` recomputes the losses on the same batch without
    gradients, the faithful FAMO update; otherwise ``observe="next_batch"`` is used.
    """
    if method in ("famo", "mokd-amortized") and not same_batch:
        options.setdefault("observe", "next_batch")
    optimizer = MultiObjectiveOptimizer(
        setup.sgd(), method, strategy=strategy, validate=validate, **options
    )

    def step() -> None:
        student_logits, teacher_logits = setup.forward()
        losses = setup.losses(student_logits, teacher_logits)
        optimizer.zero_grad(set_to_none=True)
        features = student_logits if strategy == "representation" else None
        optimizer.backward(losses, features=features)
        if same_batch:

            def closure() -> dict[str, Tensor]:
                with setup.autocast():
                    logits = setup.student(setup.x)
                return setup.losses(logits, teacher_logits)

            optimizer.step(closure)
        else:
            optimizer.step()

    return step


def clone_student(setup: KDSetup) -> nn.Module:
    """A separate copy of the student (for peers that install hooks on the model)."""
    return copy.deepcopy(setup.student)


@contextlib.contextmanager
def same_state(models: Sequence[nn.Module]) -> Iterator[None]:
    """Restore the models' parameters and buffers after the block (for the equivalence checks)."""
    saved = [copy.deepcopy(model.state_dict()) for model in models]
    try:
        yield
    finally:
        for model, state in zip(models, saved):
            model.load_state_dict(state)


def flat_grad(params: Sequence[Tensor]) -> Tensor:
    """All ``.grad`` concatenated in float64 (zeros where ``None``)."""
    return torch.cat(
        [
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double()
            for p in params
        ]
    )
