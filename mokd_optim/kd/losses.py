"""Distillation losses: pure tensor-in / tensor-out functions and thin ``nn.Module`` wrappers.

Logit losses compare a student's and a teacher's class scores:

- :func:`kd_loss` -- Hinton et al. (2015): KL divergence at temperature ``T``, times ``T^2``.
- :func:`dkd_loss` / :func:`dkd_terms` -- Decoupled KD (Zhao et al., CVPR 2022): the KL split
  into a target-class part (TCKD) and a non-target part (NCKD), weighted ``alpha``, ``beta``.
- :func:`dist_loss` -- DIST (Huang et al., NeurIPS 2022): Pearson correlation between the
  softened predictions, across classes (inter-class) and across the batch (intra-class).

Feature losses compare two feature tensors of the same shape (after a projection head):
:func:`mse_feature_loss`, :func:`smooth_l1_feature_loss`, :func:`cosine_feature_loss`, or
:func:`feature_loss` with ``kind=``; each can LayerNorm the teacher side first
(``teacher_norm="layernorm"``, no affine parameters).

Numerics. Half-precision inputs (``float16`` / ``bfloat16``) are computed in ``float32``;
``float32`` and ``float64`` inputs keep their dtype, and so does the returned loss. Logit losses
never exponentiate raw logits (log-softmax / max-shifted forms), so logits of 1e4 give finite
values and gradients. The KL divergence is evaluated in a centred form that stays accurate
when the two distributions are close (high temperatures): the naive ``sum p_t (log p_t - log
p_s)`` loses most of its relative accuracy at ``T = 1e3`` in ``float32`` because the rounding
of the log-normalisers (about ``1e-7``) is as large as the KL itself.

Feature layouts: ``(N, C)`` vectors, ``(N, L, C)`` tokens (channels last) and
``(N, C, H, W)`` maps (channels at dim 1). "Channel dimension" below means dim -1 for 2-D and
3-D tensors and dim 1 for 4-D (or higher) tensors.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FEATURE_LOSSES",
    "TEACHER_NORMS",
    "DISTLoss",
    "DKDLoss",
    "FeatureLoss",
    "KDLoss",
    "channel_dim",
    "cosine_feature_loss",
    "dist_loss",
    "dkd_loss",
    "dkd_terms",
    "feature_loss",
    "kd_loss",
    "kl_divergence_rows",
    "layer_norm_features",
    "mse_feature_loss",
    "smooth_l1_feature_loss",
]

FEATURE_LOSSES = ("mse", "smooth_l1", "cosine")
"""Names accepted by :func:`feature_loss` and :class:`FeatureLoss`."""

TEACHER_NORMS = (None, "layernorm")
"""Teacher-side normalisations of the feature losses."""

# The centred KL form exponentiates differences of scaled logits; beyond this magnitude the
# direct (log-softmax) form is used instead. Clamped to +-10, the centred form cannot overflow
# and its log1p argument stays >= exp(-10) - 1 > -1 even in float32, so it is finite (with
# finite gradients) everywhere, also where it is not selected.
_CENTRED_LIMIT = 10.0


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """``float64`` if any input is ``float64``, else ``float32`` (half inputs are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_temperature(value: float, name: str, loss: str) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{loss}: {name} must be a finite number > 0, got {value!r}")


def _logit_pair(student: Tensor, teacher: Tensor, loss: str) -> tuple[Tensor, Tensor]:
    """Validate a pair of logit tensors and return them as ``(M, C)`` rows in the compute dtype.

    ``(N, C)`` stays as is; ``(N, C, d1, ...)`` (dense predictions) becomes one row per
    position, ``M = N * d1 * ...``.
    """
    for role, tensor in (("student_logits", student), ("teacher_logits", teacher)):
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            kind = type(tensor).__name__ if not isinstance(tensor, Tensor) else str(tensor.dtype)
            raise TypeError(f"{loss}: {role} must be a floating point tensor, got {kind}")
        if tensor.ndim < 2:
            raise ValueError(
                f"{loss}: {role} must have shape (N, C) or (N, C, ...), got {tuple(tensor.shape)}"
            )
    if student.shape != teacher.shape:
        raise ValueError(
            f"{loss}: student_logits {tuple(student.shape)} and teacher_logits {tuple(teacher.shape)} "
            "differ in shape; both models must predict the same classes"
        )
    dtype = _compute_dtype(student, teacher)
    student, teacher = student.to(dtype), teacher.to(dtype)
    if student.ndim > 2:
        classes = student.shape[1]
        student = student.movedim(1, -1).reshape(-1, classes)
        teacher = teacher.movedim(1, -1).reshape(-1, classes)
    return student, teacher


def kl_divergence_rows(teacher_scaled: Tensor, student_scaled: Tensor) -> Tensor:
    """``KL(softmax(a_m) || softmax(b_m))`` for every row ``m`` of two ``(M, C)`` score tensors.

    Inputs are already divided by the temperature. Two algebraically equal forms are used:

    - centred: with ``d = a - b`` shifted so that ``E_{p_t}[d] = 0``,
      ``KL = -log(E_{p_s}[exp(d)]) = -log1p(sum_i p_s,i expm1(d_i))``; accurate to float
      rounding of ``d`` itself, so tiny divergences (close distributions) keep their digits;
    - direct: ``sum_i p_t,i (log p_t,i - log p_s,i)`` from log-softmax; stable for any scores.

    The centred form is used for rows where ``max |d| <= 10`` (no overflow possible), the
    direct form elsewhere. Both are finite everywhere, so gradients are finite too.

    Returns:
        ``(M,)`` non-negative divergences, in the inputs' dtype.
    """
    p_teacher = torch.softmax(teacher_scaled, dim=-1)
    p_student = torch.softmax(student_scaled, dim=-1)
    log_ratio = torch.log_softmax(teacher_scaled, dim=-1) - torch.log_softmax(
        student_scaled, dim=-1
    )
    direct = (p_teacher * log_ratio).sum(dim=-1)
    diff = teacher_scaled - student_scaled
    diff = diff - (p_teacher * diff).sum(dim=-1, keepdim=True)
    use_centred = diff.abs().amax(dim=-1) <= _CENTRED_LIMIT
    bounded = diff.clamp(-_CENTRED_LIMIT, _CENTRED_LIMIT)
    centred = -torch.log1p((p_student * torch.expm1(bounded)).sum(dim=-1))
    return torch.where(use_centred, centred, direct).clamp_min(0.0)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, T: float = 4.0) -> Tensor:
    """Hinton's distillation loss ``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``.

    Args:
        student_logits: ``(N, C)`` (or ``(N, C, ...)`` for dense predictions) scores.
        teacher_logits: same shape; treated as a constant only if it does not require grad.
        T: temperature > 0. The ``T^2`` factor keeps gradient magnitudes comparable across
            temperatures.

    Returns:
        Scalar: the KL averaged over samples ("batchmean"; over samples and positions for
        dense inputs), times ``T^2``; ``float32`` for half inputs.

    Raises:
        TypeError / ValueError: non-floating inputs, mismatched shapes, ``T <= 0``.
    """
    _check_temperature(T, "T", "kd_loss")
    student, teacher = _logit_pair(student_logits, teacher_logits, "kd_loss")
    return kl_divergence_rows(teacher / T, student / T).mean() * (T * T)


def _check_target(target: Tensor, rows: int, classes: int, loss: str) -> None:
    if not isinstance(target, Tensor) or target.dtype not in (
        torch.int64,
        torch.int32,
        torch.int16,
        torch.uint8,
        torch.int8,
    ):
        kind = type(target).__name__ if not isinstance(target, Tensor) else str(target.dtype)
        raise TypeError(f"{loss}: target must be an integer tensor of class indices, got {kind}")
    if target.shape != (rows,):
        raise ValueError(
            f"{loss}: target must have shape ({rows},) (one class index per sample), got {tuple(target.shape)}"
        )
    if classes < 2:
        raise ValueError(f"{loss}: needs at least 2 classes, got {classes}")


def dkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, T: float = 4.0
) -> tuple[Tensor, Tensor]:
    """The two parts of Decoupled KD, each already multiplied by ``T^2``.

    - TCKD: KL between the binary distributions ``(p_target, 1 - p_target)`` of teacher and
      student at temperature ``T``.
    - NCKD: KL between the distributions over the non-target classes only (the softmax of the
      ``C - 1`` other logits), at temperature ``T``.

    The binary probabilities are formed from the logits ``(z_target, logsumexp(z_others))``, and
    the non-target logits are gathered out rather than masked with a large negative constant,
    so both parts stay exact and finite at any logit scale.

    Args:
        student_logits, teacher_logits: ``(N, C)`` with ``C >= 2``.
        target: ``(N,)`` integer class indices in ``[0, C)`` (not checked on the device).
        T: temperature > 0.

    Returns:
        ``(tckd, nckd)`` scalars, each averaged over the batch.
    """
    _check_temperature(T, "T", "dkd_loss")
    if student_logits.ndim != 2:
        raise ValueError(
            f"dkd_loss: logits must have shape (N, C), got {tuple(student_logits.shape)}"
        )
    student, teacher = _logit_pair(student_logits, teacher_logits, "dkd_loss")
    rows, classes = student.shape
    _check_target(target, rows, classes, "dkd_loss")
    index = target.long().to(student.device)
    is_target = F.one_hot(index, classes).bool()
    student, teacher = student / T, teacher / T
    student_others = student[~is_target].view(rows, classes - 1)
    teacher_others = teacher[~is_target].view(rows, classes - 1)
    student_binary = torch.cat(
        [student.gather(1, index[:, None]), torch.logsumexp(student_others, dim=1, keepdim=True)],
        dim=1,
    )
    teacher_binary = torch.cat(
        [teacher.gather(1, index[:, None]), torch.logsumexp(teacher_others, dim=1, keepdim=True)],
        dim=1,
    )
    tckd = kl_divergence_rows(teacher_binary, student_binary).mean() * (T * T)
    nckd = kl_divergence_rows(teacher_others, student_others).mean() * (T * T)
    return tckd, nckd


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    T: float = 4.0,
) -> Tensor:
    """Decoupled KD: ``alpha * TCKD + beta * NCKD`` (see :func:`dkd_terms`).

    Defaults are the paper's CIFAR-100 setting (``alpha=1, beta=8, T=4``); its ImageNet
    setting is ``alpha=0.5, beta=0.5, T=1``. The paper's linear warm-up of the loss over the
    first epochs is a schedule, left to the caller (or to the balancing optimizer).

    Returns:
        Scalar loss (``float32`` for half inputs).

    Raises:
        TypeError / ValueError: bad shapes or dtypes, ``target`` not ``(N,)`` integers,
        fewer than 2 classes, ``T <= 0``.
    """
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, T=T)
    return alpha * tckd + beta * nckd


def _correlation_ready(logits: Tensor, tau: float, dim: int) -> Tensor:
    """``softmax(logits / tau)`` up to a constant shift along ``dim``, with all its digits.

    Pearson correlation along ``dim`` ignores a constant shift, so for each slice along
    ``dim`` (a row for ``dim=1``, a column for ``dim=0``) one of two representations is used:

    - ``p = exp(b) / S`` (``b = logits / tau - max``, ``S = sum exp(b)``): each probability to
      full relative precision, best when the slice holds tiny probabilities (small ``tau``,
      large logits);
    - ``q = p - 1 / C = (u - mean(u)) / S`` with ``u = expm1(b)``: the deviation from the
      uniform distribution without cancellation, best when every probability is close to
      ``1 / C`` (large ``tau``), where subtracting means from rounded ``p`` keeps few digits.

    The slice takes whichever has the smaller rounding bound (``max p`` against
    ``max |u| / S``). Both are finite everywhere, so gradients are finite.
    """
    scaled = logits / tau
    scaled = scaled - scaled.amax(dim=-1, keepdim=True).detach()
    total = torch.exp(scaled).sum(dim=-1, keepdim=True)
    probabilities = torch.exp(scaled) / total
    excess = torch.expm1(scaled)
    centred = (excess - excess.mean(dim=-1, keepdim=True)) / total
    with torch.no_grad():
        use_probabilities = probabilities.amax(dim=dim, keepdim=True) < (excess.abs() / total).amax(
            dim=dim, keepdim=True
        )
    return torch.where(use_probabilities, probabilities, centred)


def _unit(x: Tensor, dim: int) -> Tensor:
    """``x / ||x||`` along ``dim``, safe for any magnitude (0 where ``x`` is 0).

    ``x`` is first divided by its largest magnitude (a detached factor; the result does not
    depend on it), so the squared norm neither underflows nor overflows and every non-zero
    slice has norm >= 1: clamping the norm at 1 changes nothing there and keeps zero slices
    (and their gradients) finite.
    """
    largest = x.detach().abs().amax(dim=dim, keepdim=True)
    x = x / torch.where(largest > 0, largest, torch.ones_like(largest))
    return x / torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp_min(1.0)


def _pearson(x: Tensor, y: Tensor, dim: int) -> Tensor:
    """Pearson correlation of ``x`` and ``y`` along ``dim`` (0 where either is constant)."""
    x = _unit(x - x.mean(dim=dim, keepdim=True), dim)
    y = _unit(y - y.mean(dim=dim, keepdim=True), dim)
    return (x * y).sum(dim=dim)


def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
    tau: float = 1.0,
) -> Tensor:
    """DIST: ``tau^2 * (beta * (1 - inter) + gamma * (1 - intra))``.

    With ``P = softmax(z / tau)`` for student and teacher (``N x C``), ``inter`` is the Pearson
    correlation of each sample's row (across classes), averaged over samples, and ``intra`` is
    the correlation of each class's column (across the batch), averaged over classes. A
    constant row or column correlates 0 with anything.

    Args:
        student_logits, teacher_logits: ``(N, C)``; ``N >= 2`` when ``gamma != 0``.
        beta, gamma: weights of the inter- and intra-class terms (paper: 1, 1; 2, 2 on
            CIFAR-100).
        tau: temperature > 0.

    Returns:
        Scalar loss (``float32`` for half inputs).

    Raises:
        TypeError / ValueError: bad shapes or dtypes, ``tau <= 0``, a batch of one sample with
        ``gamma != 0`` (the intra-class correlation needs two samples).
    """
    _check_temperature(tau, "tau", "dist_loss")
    if student_logits.ndim != 2:
        raise ValueError(
            f"dist_loss: logits must have shape (N, C), got {tuple(student_logits.shape)}"
        )
    student, teacher = _logit_pair(student_logits, teacher_logits, "dist_loss")
    if gamma != 0 and student.shape[0] < 2:
        raise ValueError(
            "dist_loss: the intra-class term correlates over the batch and needs N >= 2; use gamma=0 for single samples"
        )
    inter = _pearson(
        _correlation_ready(student, tau, 1), _correlation_ready(teacher, tau, 1), dim=1
    ).mean()
    intra = _pearson(
        _correlation_ready(student, tau, 0), _correlation_ready(teacher, tau, 0), dim=0
    ).mean()
    return (tau * tau) * (beta * (1.0 - inter) + gamma * (1.0 - intra))


def channel_dim(x: Tensor) -> int:
    """Channel dimension of a feature tensor: -1 for ``(N, C)`` / ``(N, L, C)``, 1 for maps."""
    return 1 if x.ndim >= 4 else -1


def layer_norm_features(x: Tensor, eps: float = 1e-5) -> Tensor:
    """LayerNorm over the channel dimension, without affine parameters.

    Each vector / token / map position is shifted to mean 0 and scaled to unit variance over
    its channels. Half inputs are computed (and returned) in ``float32``.
    """
    x = x.to(_compute_dtype(x))
    dim = channel_dim(x)
    if dim == -1:
        return F.layer_norm(x, x.shape[-1:], eps=eps)
    moved = x.movedim(1, -1)
    return F.layer_norm(moved, moved.shape[-1:], eps=eps).movedim(-1, 1)


def _feature_pair(
    student: Tensor, teacher: Tensor, teacher_norm: Optional[str], loss: str
) -> tuple[Tensor, Tensor]:
    for role, tensor in (("student", student), ("teacher", teacher)):
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            kind = type(tensor).__name__ if not isinstance(tensor, Tensor) else str(tensor.dtype)
            raise TypeError(
                f"{loss}: the {role} features must be a floating point tensor, got {kind}"
            )
    if student.shape != teacher.shape:
        raise ValueError(
            f"{loss}: student features {tuple(student.shape)} and teacher features {tuple(teacher.shape)} "
            "differ in shape; project the student into the teacher's space first (mokd_optim.kd.SubspaceHead)"
        )
    if teacher_norm not in TEACHER_NORMS:
        raise ValueError(
            f"{loss}: unknown teacher_norm {teacher_norm!r}; choose one of {TEACHER_NORMS}"
        )
    dtype = _compute_dtype(student, teacher)
    student, teacher = student.to(dtype), teacher.to(dtype)
    if teacher_norm == "layernorm":
        teacher = layer_norm_features(teacher)
    return student, teacher


def mse_feature_loss(
    student: Tensor, teacher: Tensor, *, teacher_norm: Optional[str] = None
) -> Tensor:
    """Mean squared error over all elements.

    Args:
        student, teacher: feature tensors of the same shape.
        teacher_norm: ``None`` or ``"layernorm"`` (teacher LayerNorm-ed over channels first).

    Returns:
        Scalar (``float32`` for half inputs). Raises ``ValueError`` for mismatched shapes.
    """
    student, teacher = _feature_pair(student, teacher, teacher_norm, "mse_feature_loss")
    return F.mse_loss(student, teacher)


def smooth_l1_feature_loss(
    student: Tensor, teacher: Tensor, *, teacher_norm: Optional[str] = None, beta: float = 1.0
) -> Tensor:
    """Smooth-L1 (Huber with threshold ``beta``) averaged over all elements.

    Quadratic ``0.5 * e^2 / beta`` for ``|e| < beta``, linear ``|e| - 0.5 * beta`` beyond;
    ``beta = 0`` is plain L1. Other arguments as :func:`mse_feature_loss`.
    """
    if not beta >= 0:
        raise ValueError(f"smooth_l1_feature_loss: beta must be >= 0, got {beta!r}")
    student, teacher = _feature_pair(student, teacher, teacher_norm, "smooth_l1_feature_loss")
    return F.smooth_l1_loss(student, teacher, beta=beta)


def cosine_feature_loss(
    student: Tensor, teacher: Tensor, *, teacher_norm: Optional[str] = None
) -> Tensor:
    """``1 - cos(student, teacher)`` over the channel dimension, averaged over the other dims.

    Zero-norm vectors are treated as orthogonal to everything (cosine 0). Other arguments as
    :func:`mse_feature_loss`.
    """
    student, teacher = _feature_pair(student, teacher, teacher_norm, "cosine_feature_loss")
    dim = channel_dim(student)
    student, teacher = _unit(student, dim), _unit(teacher, dim)
    return (1.0 - (student * teacher).sum(dim=dim)).mean()


def feature_loss(
    student: Tensor,
    teacher: Tensor,
    kind: str = "mse",
    *,
    teacher_norm: Optional[str] = None,
    beta: float = 1.0,
) -> Tensor:
    """Dispatch to the feature loss named ``kind`` (one of :data:`FEATURE_LOSSES`).

    ``beta`` is only used by ``"smooth_l1"``. Raises ``ValueError`` for an unknown ``kind``.
    """
    if kind == "mse":
        return mse_feature_loss(student, teacher, teacher_norm=teacher_norm)
    if kind == "smooth_l1":
        return smooth_l1_feature_loss(student, teacher, teacher_norm=teacher_norm, beta=beta)
    if kind == "cosine":
        return cosine_feature_loss(student, teacher, teacher_norm=teacher_norm)
    raise ValueError(f"unknown feature loss {kind!r}; choose one of {FEATURE_LOSSES}")


class KDLoss(nn.Module):
    """Module form of :func:`kd_loss`; ``forward(student_logits, teacher_logits, target=None)``
    (``target`` is accepted and ignored, so all logit losses share one call signature)."""

    def __init__(self, T: float = 4.0) -> None:
        super().__init__()
        _check_temperature(T, "T", "KDLoss")
        self.T = T

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, target: Optional[Tensor] = None
    ) -> Tensor:
        return kd_loss(student_logits, teacher_logits, T=self.T)

    def extra_repr(self) -> str:
        return f"T={self.T}"


class DKDLoss(nn.Module):
    """Module form of :func:`dkd_loss`; ``forward(student_logits, teacher_logits, target)``."""

    needs_target = True

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, T: float = 4.0) -> None:
        super().__init__()
        _check_temperature(T, "T", "DKDLoss")
        self.alpha, self.beta, self.T = alpha, beta, T

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, target: Optional[Tensor] = None
    ) -> Tensor:
        if target is None:
            raise ValueError(
                "DKDLoss needs the class targets: call it with (student_logits, teacher_logits, target)"
            )
        return dkd_loss(
            student_logits, teacher_logits, target, alpha=self.alpha, beta=self.beta, T=self.T
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, T={self.T}"


class DISTLoss(nn.Module):
    """Module form of :func:`dist_loss`; ``forward(student_logits, teacher_logits, target=None)``."""

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0) -> None:
        super().__init__()
        _check_temperature(tau, "tau", "DISTLoss")
        self.beta, self.gamma, self.tau = beta, gamma, tau

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, target: Optional[Tensor] = None
    ) -> Tensor:
        return dist_loss(
            student_logits, teacher_logits, beta=self.beta, gamma=self.gamma, tau=self.tau
        )

    def extra_repr(self) -> str:
        return f"beta={self.beta}, gamma={self.gamma}, tau={self.tau}"


class FeatureLoss(nn.Module):
    """Module form of :func:`feature_loss`; ``forward(student, teacher)``."""

    def __init__(
        self, kind: str = "smooth_l1", *, teacher_norm: Optional[str] = None, beta: float = 1.0
    ) -> None:
        super().__init__()
        if kind not in FEATURE_LOSSES:
            raise ValueError(f"unknown feature loss {kind!r}; choose one of {FEATURE_LOSSES}")
        if teacher_norm not in TEACHER_NORMS:
            raise ValueError(
                f"unknown teacher_norm {teacher_norm!r}; choose one of {TEACHER_NORMS}"
            )
        self.kind, self.teacher_norm, self.beta = kind, teacher_norm, beta

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        return feature_loss(
            student, teacher, self.kind, teacher_norm=self.teacher_norm, beta=self.beta
        )

    def extra_repr(self) -> str:
        text = f"kind={self.kind!r}, teacher_norm={self.teacher_norm!r}"
        return text + (f", beta={self.beta}" if self.kind == "smooth_l1" else "")
