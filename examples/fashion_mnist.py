"""Fashion-MNIST distillation pieces shared by the demo and the measurement scripts.

A teacher CNN (~0.4M parameters) trained once and cached, a tiny student CNN (~8k
parameters), and a distillation loop that trains the student with any balancing method of
:mod:`mokd_optim` (or cross-entropy alone, ``"ce"``) and records accuracy, wall time and the
conflict/dominance statistics of the task and KD gradients.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from mokd_optim import MultiObjectiveOptimizer
from mokd_optim.datasets import load_fashion_mnist, to_float_images
from mokd_optim.diagnostics import StatsLogger, cosine_matrix, dominance_ratio

# Where trained teachers are cached; override with $MOKD_OPTIM_CACHE.
DEFAULT_CACHE = Path(os.environ.get("MOKD_OPTIM_CACHE", "~/.cache/mokd_optim")).expanduser()
TEACHER_BATCH_SIZE = 128  # train_teacher's batch: Adam steps per epoch = ceil(N / 128)


class TeacherCNN(nn.Module):
    """conv32-conv32-pool-conv64-conv64-pool-fc256-fc10 with batch norm (~0.4M parameters)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        self.features = nn.Sequential(
            *block(1, 32),
            *block(32, 32),
            nn.MaxPool2d(2),
            *block(32, 64),
            *block(64, 64),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(0.3),
            nn.Linear(256, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class StudentCNN(nn.Module):
    """conv8-pool-conv16-pool-fc10 (~8k parameters): far smaller than the teacher."""

    def __init__(self, classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 7 * 7, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def hinton_kd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(teacher || student) at temperature T, times T^2 (Hinton et al. 2015), batch mean."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    log_q = F.log_softmax(teacher_logits / temperature, dim=1)
    return (log_q.exp() * (log_q - log_p)).sum(dim=1).mean() * temperature**2


@dataclass
class Data:
    """Standardised Fashion-MNIST tensors."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_data(
    train_limit: Optional[int] = None,
    test_limit: Optional[int] = None,
    root: Optional[str] = None,
    download: bool = False,
) -> Data:
    """Fashion-MNIST as float tensors ``(N, 1, 28, 28)``; the first ``train_limit`` training items."""
    xs, ys = load_fashion_mnist("train", root, download=download, limit=train_limit)
    xt, yt = load_fashion_mnist("test", root, download=download, limit=test_limit)
    return Data(to_float_images(xs), ys, to_float_images(xt), yt)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(y), batch_size):
        correct += int(
            (model(x[start : start + batch_size]).argmax(1) == y[start : start + batch_size]).sum()
        )
    model.train(was_training)
    return correct / len(y)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    model.eval()
    return torch.cat(
        [model(x[start : start + batch_size]) for start in range(0, len(x), batch_size)]
    )


def train_teacher(
    data: Data,
    *,
    epochs: int = 3,
    seed: int = 0,
    cache_dir: Path = DEFAULT_CACHE,
    progress: Optional[Callable[[str], None]] = None,
    tag: str = "fashion",
    flip: bool = True,
    on_step: Optional[Callable[[], None]] = None,
) -> tuple[TeacherCNN, float]:
    """Train the teacher on the full training set (Adam, lr 1e-3 with cosine decay, batch 128)
    or load it from ``cache_dir``; returns the model and its test accuracy.

    Training is deterministic for a given ``seed`` (initial weights, order and flips all come
    from it; the global RNG state before the call does not matter). The cache key covers the
    data size, epochs and seed, so changing any retrains. ``tag`` names the data set in the
    cache file (use another tag for other data), ``flip`` turns the horizontal-flip
    augmentation on (right for clothes, wrong for digits); both enter the key unless they have
    their defaults. ``on_step`` is called after every training step (not when loaded from the
    cache), e.g. to advance a progress bar. Key version ``v2``: ``v1`` teachers were initialised before seeding, so
    each fresh cache held a different teacher.
    """
    extra = "" if (tag == "fashion" and flip) else f"-{tag}-flip{int(flip)}"
    key = hashlib.sha1(
        f"teacher-v2-{len(data.y_train)}-{epochs}-{seed}{extra}".encode()
    ).hexdigest()[:10]
    path = Path(cache_dir) / f"{tag}_teacher_{key}.pt"
    torch.manual_seed(seed)  # before the model: its initial weights come from the global RNG
    teacher = TeacherCNN()
    if path.is_file():
        teacher.load_state_dict(torch.load(path, weights_only=True))
        teacher.eval()
        return teacher, evaluate(teacher, data.x_test, data.y_test)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(data.y_train) / TEACHER_BATCH_SIZE)
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    teacher.train()
    for epoch in range(epochs):
        order = torch.randperm(len(data.y_train), generator=generator)
        for start in range(0, len(order), TEACHER_BATCH_SIZE):
            batch = order[start : start + TEACHER_BATCH_SIZE]
            x = data.x_train[batch]
            if flip:
                x = torch.where(
                    torch.rand(len(batch), 1, 1, 1, generator=generator) < 0.5, x.flip(3), x
                )  # horizontal flips
            opt.zero_grad()
            F.cross_entropy(teacher(x), data.y_train[batch]).backward()
            opt.step()
            schedule.step()
            if on_step is not None:
                on_step()
        if progress:
            progress(
                f"teacher epoch {epoch + 1}/{epochs}: test accuracy {evaluate(teacher, data.x_test, data.y_test):.4f}"
            )
    teacher.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(teacher.state_dict(), tmp)
    tmp.replace(path)
    return teacher, evaluate(teacher, data.x_test, data.y_test)


@dataclass
class RunResult:
    """Outcome of one student run."""

    method: str
    seed: int
    accuracy: list[float] = field(default_factory=list)  # test accuracy after each epoch
    seconds: float = 0.0
    cosine: list[float] = field(default_factory=list)  # cos(g_task, g_kd) at probed steps
    dominance: list[float] = field(default_factory=list)  # max/min gradient norm at probed steps
    weights: list[list[float]] = field(
        default_factory=list
    )  # weights on (task, kd) at probed steps
    grad_norms: list[list[float]] = field(
        default_factory=list
    )  # (||g_task||, ||g_kd||) at probed steps
    diverged: bool = False

    @property
    def final(self) -> float:
        return self.accuracy[-1] if self.accuracy else float("nan")

    @property
    def best(self) -> float:
        return max(self.accuracy) if self.accuracy else float("nan")

    def summary(self) -> dict[str, Any]:
        def mean(values: list[float]) -> float:
            finite = [v for v in values if math.isfinite(v)]
            return sum(finite) / len(finite) if finite else float("nan")

        return {
            "method": self.method,
            "seed": self.seed,
            "final_accuracy": self.final,
            "best_accuracy": self.best,
            "accuracy_per_epoch": self.accuracy,
            "seconds": self.seconds,
            "mean_cosine": mean(self.cosine),
            "conflict_fraction": mean([float(c < 0) for c in self.cosine]),
            "mean_log10_dominance": mean(
                [math.log10(d) for d in self.dominance if d > 0 and math.isfinite(d)]
            ),
            # log10 ||g_kd|| / ||g_task|| (signed: > 0 when the KD gradient is the larger one)
            "mean_log10_kd_task_ratio": mean(
                [math.log10(kd / task) for task, kd in self.grad_norms if task > 0 and kd > 0]
            ),
            "diverged": self.diverged,
        }


def _losses_on(
    student: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    kd_scale: float,
) -> dict[str, torch.Tensor]:
    """The task and KD losses of ``student`` on one batch (the closure of amortised methods)."""
    logits = student(x)
    return {
        "task": F.cross_entropy(logits, y),
        "kd": kd_scale * hinton_kd(logits, teacher_logits, temperature),
    }


def _probe_gram(losses: dict[str, torch.Tensor], params: list[torch.Tensor]) -> torch.Tensor:
    """Gram matrix of the task and KD gradients (for the statistics of fixed-weight runs)."""
    flat = []
    for loss in losses.values():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        flat.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(grads, params)
                ]
            )
        )
    j = torch.stack(flat).double()
    return j @ j.T


def distil(
    data: Data,
    teacher_logits: Optional[torch.Tensor],
    method: str,
    *,
    seed: int = 0,
    epochs: int = 5,
    lr: float = 0.05,
    batch_size: int = 64,
    temperature: float = 4.0,
    kd_scale: float = 1.0,
    max_norm: Optional[float] = None,
    probe_every: int = 25,
    method_options: Optional[dict[str, Any]] = None,
    on_step: Optional[Callable[[int, dict[str, float]], None]] = None,
    progress: Optional[Callable[[], None]] = None,
    lr_schedule: str = "constant",
    logger: Optional[StatsLogger] = None,
) -> RunResult:
    """Train a fresh :class:`StudentCNN` on ``data`` and return its :class:`RunResult`.

    ``method`` is ``"ce"`` (cross-entropy only) or any :mod:`mokd_optim.methods` name; the
    objectives are ``task`` (cross-entropy) and ``kd`` (Hinton KD at ``temperature``, times
    ``kd_scale``). SGD with momentum 0.9. Every ``probe_every`` steps the cosine and
    dominance of the two gradients are recorded (from the optimizer's statistics, or by an
    extra probe for methods that do not compute them). A run whose loss becomes non-finite is
    marked ``diverged`` and stopped; its accuracy is that of the diverged model.

    ``lr_schedule``: ``"constant"`` or ``"cosine"`` (per-step cosine decay to 0 over the run).
    Methods that learn from the losses after the step (``mokd-amortized``, ``famo``) get a
    closure recomputing both losses on the same batch, so their weights do learn.

    ``logger`` (a :class:`~mokd_optim.diagnostics.StatsLogger`, called on every probed step)
    receives the step's :class:`~mokd_optim.diagnostics.StepStats` with the probed Gram
    matrix (so fixed-weight runs get cosine and dominance columns too) and the learning rate;
    ``ce`` runs log their loss only.
    """
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    student = StudentCNN()
    params = list(student.parameters())
    base = torch.optim.SGD(params, lr=lr, momentum=0.9)
    opt = (
        None
        if method == "ce"
        else MultiObjectiveOptimizer(base, method, max_norm=max_norm, **(method_options or {}))
    )
    schedule = None
    if lr_schedule == "cosine":
        total_steps = epochs * math.ceil(len(data.y_train) / batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(base, T_max=total_steps)
    result = RunResult(method=method, seed=seed)
    step = 0
    start_time = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(data.y_train), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            logits = student(data.x_train[batch])
            task = F.cross_entropy(logits, data.y_train[batch])
            if opt is None:
                if not torch.isfinite(task):
                    result.diverged = True
                    break
                if logger is not None and step % probe_every == 0:
                    logger.log(
                        step, **{"loss/task": task.detach(), "lr": base.param_groups[0]["lr"]}
                    )
                base.zero_grad()
                task.backward()
                if max_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, max_norm)
                base.step()
            else:
                assert teacher_logits is not None
                kd = kd_scale * hinton_kd(logits, teacher_logits[batch], temperature)
                losses = {"task": task, "kd": kd}
                if not (torch.isfinite(task) and torch.isfinite(kd)):
                    result.diverged = True
                    break
                probe = step % probe_every == 0
                gram = None
                if probe and not opt.method.needs_gradients:
                    gram = _probe_gram(losses, params)
                opt.zero_grad()
                stats = opt.backward(losses)
                if opt.method.needs_losses_after:
                    opt.step(
                        partial(
                            _losses_on,
                            student,
                            data.x_train[batch],
                            data.y_train[batch],
                            teacher_logits[batch],
                            temperature,
                            kd_scale,
                        )
                    )
                else:
                    opt.step()
                if probe:
                    gram = stats.gram if stats.gram is not None else gram
                    assert gram is not None
                    result.cosine.append(float(cosine_matrix(gram)[0, 1]))
                    result.dominance.append(float(dominance_ratio(gram)))
                    result.weights.append([float(w) for w in stats.weights])
                    result.grad_norms.append(
                        [float(v) for v in torch.diagonal(gram).clamp_min(0.0).sqrt()]
                    )
                    if on_step is not None:
                        on_step(step, stats.to_dict())
                    if logger is not None:
                        logger.log(
                            step,
                            dataclasses.replace(stats, gram=gram),
                            lr=base.param_groups[0]["lr"],
                        )
            step += 1
            if schedule is not None:
                schedule.step()
            if progress is not None:
                progress()
        result.accuracy.append(evaluate(student, data.x_test, data.y_test))
        if result.diverged:
            break
    result.seconds = time.perf_counter() - start_time
    return result
