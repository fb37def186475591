"""The teacher's record on the labels (``TeacherTrust``) and the agreement share it weighs
(``mokd`` ``set_trust``, round 8 of the condition suite)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mokd_optim import MultiObjectiveOptimizer, methods
from mokd_optim.kd import TRUST_DECAY, TeacherTrust, kd_loss
from mokd_optim.methods._mokd import (
    mokd_weights,
    share_by_agreement,
    weigh_by_trust,
)
from tests.models import TwoHeadMLP


def _weights(method, jacobian: np.ndarray, losses: np.ndarray) -> np.ndarray:
    gram = torch.tensor(jacobian @ jacobian.T, dtype=torch.float64)
    return method.weights(gram, torch.tensor(losses, dtype=torch.float64)).numpy()


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


# --- weigh_by_trust ------------------------------------------------------------------------


def test_trust_adds_its_log_odds_to_the_agreement_share() -> None:
    for a in (0.05, 0.3, 0.5, 0.77, 0.99):
        for t in (0.01, 0.2, 0.5, 0.8, 0.999):
            got = float(
                weigh_by_trust(
                    torch.tensor(a, dtype=torch.float64), torch.tensor(t, dtype=torch.float64)
                )
            )
            assert _logit(got) == pytest.approx(_logit(a) + _logit(t), rel=1e-9, abs=1e-9)
    a = torch.linspace(0, 1, 11, dtype=torch.float64)
    # no evidence changes nothing; a share of 0 or 1 stays whatever the evidence
    torch.testing.assert_close(weigh_by_trust(a, torch.tensor(0.5)), a)
    torch.testing.assert_close(weigh_by_trust(a, None), a)
    for t in (0.0, 0.3, 1.0):
        out = weigh_by_trust(a, torch.tensor(t))
        assert float(out[0]) == 0.0 and float(out[-1]) == 1.0
        assert torch.all((out >= 0) & (out <= 1))
    # certain evidence decides every share strictly between 0 and 1
    assert torch.all(weigh_by_trust(a[1:-1], torch.tensor(1.0)) == 1.0)
    assert torch.all(weigh_by_trust(a[1:-1], torch.tensor(0.0)) == 0.0)
    # monotone in the evidence
    shares = [float(weigh_by_trust(torch.tensor(0.4), torch.tensor(t))) for t in (0.1, 0.5, 0.9)]
    assert shares[0] < 0.4 < shares[2]
    assert shares[1] == pytest.approx(0.4)


# --- the agreement share with trust -------------------------------------------------------


# (the reference check with trust, for K = 2, 3, 4, both anchors and both rules, is
# test_mokd_options.test_agreement_rules_match_the_reference, parametrized over trust)


def test_trust_moves_the_teachers_share_of_the_update() -> None:
    # task along (1, 0), KD at 60 degrees: the agreement share is 1/2; trust 0.8 makes it 0.8,
    # trust 0.2 makes it 0.2 (odds 1 x 4 and 1 / 4); orthogonal KD gets nothing at any trust
    def kd_share(trust, theta=math.pi / 3) -> float:
        method = methods.get("mokd", step="anchor")
        method.bind(["task", "kd"])
        method.set_trust(trust)
        jacobian = np.array([[2.0, 0.0], [7 * np.cos(theta), 7 * np.sin(theta)]])
        parts = np.abs(_weights(method, jacobian, np.array([0.5, 3.0]))) * [2.0, 7.0]
        return float(parts[1] / parts.sum())

    assert kd_share(None) == pytest.approx(0.5, rel=1e-9)
    assert kd_share(0.5) == pytest.approx(0.5, rel=1e-9)
    assert kd_share(0.8) == pytest.approx(0.8, rel=1e-9)
    assert kd_share(0.2) == pytest.approx(0.2, rel=1e-9)
    assert kd_share(0.99, theta=math.pi / 2) == pytest.approx(0.0, abs=1e-12)


# (the closed form with trust against the general path is
# test_mokd_options.test_two_objective_closed_forms_equal_the_general_path)


def test_set_trust_checks_its_value_and_the_rule() -> None:
    method = methods.get("mokd")
    method.bind(["task", "kd"])
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            method.set_trust(bad)
    method.set_trust(0.7)
    assert method.trust == 0.7
    method.set_trust(None)
    assert method.trust is None
    pareto = methods.get("mokd", conflict="pareto")
    with pytest.raises(ValueError, match="conflict"):
        pareto.set_trust(0.7)
    with pytest.raises(ValueError, match="trust"):
        mokd_weights(
            torch.eye(2, dtype=torch.float64),
            torch.ones(2, dtype=torch.float64),
            conflict="project",
            trust=torch.tensor(0.5),
        )
    with pytest.raises(ValueError, match="agreement rule"):
        share_by_agreement(torch.ones(2) / 2, torch.eye(2), 0, "cosine", torch.tensor(0.5))


def test_trust_reaches_the_step_through_the_optimizer() -> None:
    # the same model, batch and losses: trust 0.9 gives the KD loss more of the update than
    # no trust, and trust 0.1 less (its weight relative to the task's)
    def kd_over_task(trust) -> float:
        torch.manual_seed(0)
        model = TwoHeadMLP()
        opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1))
        opt.method.set_trust(trust)
        x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
        teacher = 3 * torch.nn.functional.one_hot(y, 10) + torch.randn(32, 10)
        logits = model(x)[0]
        losses = {"task": F.cross_entropy(logits, y), "kd": kd_loss(logits, teacher)}
        stats = opt.backward(losses)
        assert stats.cosine is not None
        assert 0.05 < float(stats.cosine[0, 1]) < 0.95  # a partial agreement for trust to act on
        return float(stats.weights[1] / stats.weights[0])

    assert kd_over_task(0.1) < kd_over_task(None) < kd_over_task(0.9)
    assert kd_over_task(0.5) == pytest.approx(kd_over_task(None), rel=1e-9)


# --- TeacherTrust ------------------------------------------------------------------------------


def _logits_for(classes: list[int], num_classes: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(classes), num_classes).float() * 5


def test_teacher_trust_counts_the_disagreements_it_wins() -> None:
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    student = _logits_for([0, 0, 2, 1, 1, 0])  # right on 0, 2, 4
    teacher = _logits_for([0, 1, 1, 0, 2, 2])  # right on 0, 1, 3, 5
    trust = TeacherTrust(decay=0.5)
    assert trust.value == 0.5  # no evidence yet
    # teacher only: 1, 3, 5 (3); student only: 2, 4 (2); both right: 0 (not counted)
    assert trust.update(student, teacher, target) == pytest.approx((3 + 1) / (5 + 2))
    assert (trust.teacher_only, trust.student_only) == (3.0, 2.0)
    # a second batch: the sums decay by 1/2 before adding
    trust.update(teacher, student, target)  # roles swapped: teacher 2, student 3
    assert (trust.teacher_only, trust.student_only) == (3.5, 4.0)
    assert trust.value == pytest.approx(4.5 / 9.5)
    # ignored targets (negative) count for neither side
    ignored = torch.tensor([-100, -100, -100, -100, -100, -100])
    before = trust.state_dict()
    trust.update(student, teacher, ignored)
    assert trust.teacher_only == 0.5 * before["teacher_only"]
    assert trust.updates == 3
    # per-pixel logits (N, C, H, W) with targets (N, H, W)
    pixels = TeacherTrust()
    s = torch.zeros(2, 3, 4, 4)
    s[:, 0] = 1  # student says class 0 everywhere
    t = torch.zeros(2, 3, 4, 4)
    t[:, 1] = 1  # teacher says class 1 everywhere
    pixels.update(s, t, torch.ones(2, 4, 4, dtype=torch.long))  # truth: 1
    assert (pixels.teacher_only, pixels.student_only) == (32.0, 0.0)
    assert pixels.value == pytest.approx(33 / 34)


def test_teacher_trust_is_scale_free_and_restores() -> None:
    gen = torch.Generator().manual_seed(3)
    s, t = torch.randn(64, 10, generator=gen), torch.randn(64, 10, generator=gen)
    y = torch.randint(0, 10, (64,), generator=gen)
    a, b = TeacherTrust(), TeacherTrust()
    # scaling or shifting the logits (temperature) does not change the predicted classes
    assert a.update(s, t, y) == b.update(s * 1e-3, t * 7 + 2, y)
    assert a.decay == TRUST_DECAY == 0.99
    restored = TeacherTrust(decay=0.3)
    restored.load_state_dict(a.state_dict())
    assert restored.state_dict() == a.state_dict() and restored.decay == a.decay
    with pytest.raises(ValueError, match="state keys"):
        restored.load_state_dict({"decay": 0.9})
    a.reset()
    assert a.value == 0.5 and a.updates == 0
    assert "TeacherTrust(value=0.500" in repr(a)


def test_teacher_trust_rejects_bad_input() -> None:
    for decay in (-0.1, 1.0, 2.0):
        with pytest.raises(ValueError, match="decay"):
            TeacherTrust(decay=decay)
    trust = TeacherTrust()
    with pytest.raises(ValueError, match="differ in shape"):
        trust.update(torch.zeros(4, 3), torch.zeros(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="does not match"):
        trust.update(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
    assert trust.updates == 0  # nothing counted on an error
