"""The amortised methods ("famo", "mokd-amortized") in the optimizer, on real data.

A student MLP learns ``sklearn.datasets.load_digits`` (1,797 real 8x8 digit images) from the
labels (cross-entropy) and from a teacher MLP trained in the test (Hinton KD, T = 4). Checked:
both ways of feeding the "after" losses work (a closure on the same batch, or the next batch's
losses), the amortised methods reach the accuracy of exact MoKD, and a run resumed from a
``state_dict`` taken mid-training is identical to an uninterrupted one.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mokd_optim import MultiObjectiveOptimizer

TEMPERATURE = 4.0


@dataclass
class Digits:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    teacher_train: Tensor  # teacher logits on the training images
    teacher_accuracy: float


def mlp(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


@pytest.fixture(scope="module")
def digits() -> Digits:
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images / 16.0, dtype=torch.float32)
    y = torch.tensor(labels)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:1300], order[1300:]
    torch.manual_seed(0)
    teacher = mlp(128)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(teacher(x[train]), y[train]).backward()
        optimizer.step()
    with torch.no_grad():
        teacher_train = teacher(x[train])
    return Digits(
        x[train], y[train], x[test], y[test], teacher_train, accuracy(teacher, x[test], y[test])
    )


def kd_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    log_p = F.log_softmax(student_logits / TEMPERATURE, dim=1)
    q = F.softmax(teacher_logits / TEMPERATURE, dim=1)
    return F.kl_div(log_p, q, reduction="batchmean") * TEMPERATURE**2


class Run:
    """One training run with a fixed batch order, steppable in pieces (for resume tests)."""

    def __init__(self, data: Digits, method: str, use_closure: bool, **options: Any) -> None:
        torch.manual_seed(1)
        self.data = data
        self.student = mlp(32)
        base = torch.optim.SGD(self.student.parameters(), lr=0.1, momentum=0.9)
        self.optimizer = MultiObjectiveOptimizer(base, method, **options)
        self.use_closure = use_closure
        generator = torch.Generator().manual_seed(2)
        n = len(data.x_train)
        self.batches = [
            batch for _ in range(8) for batch in torch.randperm(n, generator=generator).split(64)
        ]
        self.position = 0

    def losses(self, batch: Tensor) -> dict[str, Tensor]:
        logits = self.student(self.data.x_train[batch])
        return {
            "task": F.cross_entropy(logits, self.data.y_train[batch]),
            "distill": kd_loss(logits, self.data.teacher_train[batch]),
        }

    def train(self, steps: Optional[int] = None) -> None:
        end = len(self.batches) if steps is None else self.position + steps
        while self.position < end:
            batch = self.batches[self.position]
            self.optimizer.zero_grad()
            self.optimizer.backward(self.losses(batch))
            closure: Optional[Callable[[], dict[str, Tensor]]] = (
                (lambda b=batch: self.losses(b)) if self.use_closure else None
            )
            self.optimizer.step(closure)
            self.position += 1

    def test_accuracy(self) -> float:
        return accuracy(self.student, self.data.x_test, self.data.y_test)

    def checkpoint(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(
            {
                "model": self.student.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "position": self.position,
            },
            buffer,
        )
        return buffer.getvalue()

    def restore(self, blob: bytes) -> None:
        state = torch.load(io.BytesIO(blob), weights_only=False)
        self.student.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.position = state["position"]


VARIANTS = [
    ("mokd-amortized", {}, True),
    ("mokd-amortized", {"observe": "next_batch"}, False),
    ("famo", {}, True),
    ("famo", {"observe": "next_batch"}, False),
]


def test_amortized_methods_reach_exact_mokd_accuracy(digits: Digits) -> None:
    assert digits.teacher_accuracy >= 0.96
    # the paper's exact weights and the step length the amortised rules are compared with (the
    # round-1 choice, step="log-anchor", reached 0.915 here: its first steps are 1 / ln 10 of
    # these, and 168 steps at a constant lr do not make up for it -- docs/mokd.md)
    exact = Run(digits, "mokd", use_closure=False, step="anchor", equalize=0.0)
    exact.train()
    exact_accuracy = exact.test_accuracy()
    assert exact_accuracy >= 0.93
    for method, options, use_closure in VARIANTS:
        run = Run(digits, method, use_closure=use_closure, **options)
        run.train()
        reached = run.test_accuracy()
        assert reached >= 0.93, (method, options, reached)
        assert abs(reached - exact_accuracy) <= 0.03, (method, options, reached, exact_accuracy)
        stats = run.optimizer.last_stats
        assert stats is not None and stats.strategy == "amortized"
        pi = stats.info["simplex_weights"]
        # The logits did learn: the weights moved away from the initial (1/2, 1/2).
        assert float((pi - 0.5).abs().max()) > 0.02
        torch.testing.assert_close(pi.sum(), torch.tensor(1.0, dtype=pi.dtype))


@pytest.mark.parametrize(
    ("method", "options", "use_closure"),
    VARIANTS,
    ids=[f"{m}-{o.get('observe', 'same_batch')}" for m, o, _ in VARIANTS],
)
def test_resumed_run_equals_uninterrupted_run(
    digits: Digits, method: str, options: dict[str, Any], use_closure: bool
) -> None:
    uninterrupted = Run(digits, method, use_closure=use_closure, **options)
    uninterrupted.train(steps=60)

    first_half = Run(digits, method, use_closure=use_closure, **options)
    first_half.train(steps=30)
    blob = first_half.checkpoint()
    resumed = Run(
        digits, method, use_closure=use_closure, **options
    )  # fresh model, optimizer, method
    resumed.restore(blob)
    resumed.train(steps=30)

    for a, b in zip(uninterrupted.student.parameters(), resumed.student.parameters()):
        assert torch.equal(a, b)
    state_a = uninterrupted.optimizer.method.state_dict()
    state_b = resumed.optimizer.method.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        if isinstance(state_a[key], Tensor):
            assert torch.equal(state_a[key], state_b[key]), key
        else:
            assert state_a[key] == state_b[key], key


def _tiny_problem() -> tuple[nn.Module, Callable[[], dict[str, Tensor]]]:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.randn(16, 3)
    y = torch.randn(16, 1)

    def losses() -> dict[str, Tensor]:
        out = model(x)
        return {"a": F.mse_loss(out, y), "b": (out.abs() + 0.1).mean()}

    return model, losses


def test_closure_and_explicit_observe_are_the_same_update() -> None:
    results = []
    for use_closure in (True, False):
        model, losses = _tiny_problem()
        optimizer = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), "famo")
        for _ in range(5):
            optimizer.zero_grad()
            optimizer.backward(losses())
            if use_closure:
                optimizer.step(losses)
            else:
                optimizer.step()
                with torch.no_grad():
                    optimizer.observe(losses())
        results.append(optimizer.method.state_dict()["logits"])
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    assert float(results[0].abs().max()) > 0


def test_next_batch_mode_learns_from_the_next_losses() -> None:
    model, losses = _tiny_problem()
    optimizer = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05), "mokd-amortized", observe="next_batch"
    )
    reference = MultiObjectiveOptimizer(
        torch.optim.SGD(nn.Linear(3, 1).parameters(), lr=0.05), "mokd-amortized"
    )
    before = {name: value.detach() for name, value in losses().items()}
    optimizer.zero_grad()
    optimizer.backward(losses())
    optimizer.step()
    assert torch.equal(optimizer.method.state_dict()["logits"], torch.zeros(2, dtype=torch.float64))
    after = {name: value.detach() for name, value in losses().items()}
    optimizer.zero_grad()
    optimizer.backward(losses())  # these losses serve as "after" of the first step
    # The same logits as an explicit observe(before, after) on a same-batch instance.
    reference.method.weights(None, torch.stack(list(before.values())).double())
    reference.method.observe(
        torch.stack(list(before.values())).double(), torch.stack(list(after.values())).double()
    )
    torch.testing.assert_close(
        optimizer.method.state_dict()["logits"],
        reference.method.state_dict()["logits"],
        rtol=0,
        atol=0,
    )


def test_explicit_observe_overrides_the_pending_next_batch_update() -> None:
    model, losses = _tiny_problem()
    optimizer = MultiObjectiveOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05), "famo", observe="next_batch"
    )
    optimizer.zero_grad()
    optimizer.backward(losses())
    optimizer.step(losses)  # same-batch information given explicitly
    logits = optimizer.method.state_dict()["logits"].clone()
    assert optimizer.method.state_dict()["pending"] is None
    optimizer.zero_grad()
    optimizer.backward(losses())  # no second update from the cancelled pending losses
    assert torch.equal(optimizer.method.state_dict()["logits"], logits)


def test_same_batch_mode_warns_when_nothing_is_observed() -> None:
    model, losses = _tiny_problem()
    optimizer = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), "famo")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            optimizer.zero_grad()
            optimizer.backward(losses())
            optimizer.step()
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "observe" in messages[0]


def test_state_rejects_a_different_number_of_objectives() -> None:
    model, losses = _tiny_problem()
    optimizer = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), "famo")
    optimizer.zero_grad()
    optimizer.backward(losses())
    optimizer.step(losses)
    state = optimizer.state_dict()
    other = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), "famo")
    other.load_state_dict(state)
    three = dict(losses(), c=model(torch.ones(1, 3)).abs().sum() + 1.0)
    with pytest.raises(ValueError, match="2 logits but got 3 objectives"):
        other.backward(three)
