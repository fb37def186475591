"""``TeacherTrust``: how far a teacher can be trusted where it and the student disagree.

The agreement share of ``mokd`` (round 7 of the condition suite) gives the distillation side a
share of the update equal to its cosine with the task's gradient. The cosine cannot tell a
strong teacher from one the student has outgrown (their cosines overlap: 0.39 with a weak digits
teacher, 0.56 with a strong Fashion-MNIST one). The labels can: count, on each batch, the
samples the teacher classifies right and the student wrong, and the reverse. Where the teacher
wins most of those disagreements its gradient carries what the student does not know yet; where
the student wins them, following the teacher costs accuracy. ``value`` is that record, to pass to
:meth:`mokd_optim.methods.MoKD.set_trust`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["TRUST_DECAY", "TeacherTrust"]

#: Decay of the moving sums of disagreements (about the last 100 batches count).
TRUST_DECAY = 0.99


def _checked_decay(decay: float) -> float:
    decay = float(decay)
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"TeacherTrust: decay must be in [0, 1), got {decay!r}")
    return decay


class TeacherTrust:
    """The teacher's record against the student on the labels, as a probability.

    Each :meth:`update` counts, over the batch, ``teacher_only`` (teacher right, student wrong)
    and ``student_only`` (the reverse) and adds them to moving sums (``decay`` per batch).
    :attr:`value` is ``(teacher_only + 1) / (teacher_only + student_only + 2)``: Laplace's rule
    of succession, ``1/2`` before any disagreement, towards 1 while the teacher knows more,
    towards 0 once the student has outgrown it. It depends on the predicted classes only, so it
    is unchanged by any scaling of the losses.

    Under an initialised ``torch.distributed`` process group the batch counts are summed over
    the ranks (one ``all_reduce`` of two numbers), so every rank sees the same value and steps
    the same weights.

    Args:
        decay: in ``[0, 1)``; ``0`` keeps the last batch only.

    Raises:
        ValueError: ``decay`` outside ``[0, 1)``.
    """

    def __init__(self, decay: float = TRUST_DECAY) -> None:
        self.decay = _checked_decay(decay)
        self.teacher_only = 0.0
        self.student_only = 0.0
        self.updates = 0

    @property
    def value(self) -> float:
        """The probability that the teacher is right where the two disagree, in ``(0, 1)``."""
        return (self.teacher_only + 1.0) / (self.teacher_only + self.student_only + 2.0)

    @torch.no_grad()
    def update(self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor) -> float:
        """Count one batch's disagreements and return the new :attr:`value`.

        Args:
            student_logits, teacher_logits: ``(N, C)`` (or ``(N, C, *)``, e.g. per pixel).
            target: ``(N,)`` (or ``(N, *)``) class indices; negative entries (e.g. an
                ``ignore_index`` of -100) are left out.

        Raises:
            ValueError: the logits' shapes differ, or ``target``'s shape is not theirs without
                the class dimension.
        """
        if student_logits.shape != teacher_logits.shape:
            raise ValueError(
                "TeacherTrust: student and teacher logits differ in shape: "
                f"{tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}"
            )
        expected = student_logits.shape[:1] + student_logits.shape[2:]
        if student_logits.dim() < 2 or target.shape != expected:
            raise ValueError(
                f"TeacherTrust: target of shape {tuple(target.shape)} does not match logits of "
                f"shape {tuple(student_logits.shape)} (expected {tuple(expected)})"
            )
        valid = target >= 0
        student_right = (student_logits.argmax(1) == target) & valid
        teacher_right = (teacher_logits.argmax(1) == target) & valid
        counts = torch.stack(
            [(teacher_right & ~student_right).sum(), (student_right & ~teacher_right).sum()]
        ).to(torch.float64)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        teacher_only, student_only = counts.tolist()
        self.teacher_only = self.decay * self.teacher_only + teacher_only
        self.student_only = self.decay * self.student_only + student_only
        self.updates += 1
        return self.value

    def reset(self) -> None:
        """Forget every batch (the value is 1/2 again)."""
        self.teacher_only = self.student_only = 0.0
        self.updates = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "teacher_only": self.teacher_only,
            "student_only": self.student_only,
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output. Raises ``ValueError`` on missing or unknown
        keys."""
        keys = {"decay", "teacher_only", "student_only", "updates"}
        if set(state) != keys:
            raise ValueError(
                f"TeacherTrust: state keys {sorted(state)} are not the expected {sorted(keys)}"
            )
        self.decay = _checked_decay(state["decay"])
        self.teacher_only = float(state["teacher_only"])
        self.student_only = float(state["student_only"])
        self.updates = int(state["updates"])

    def __repr__(self) -> str:
        return (
            f"TeacherTrust(value={self.value:.3f}, teacher_only={self.teacher_only:.1f}, "
            f"student_only={self.student_only:.1f}, decay={self.decay})"
        )
