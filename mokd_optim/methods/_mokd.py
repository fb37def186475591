"""MoKD / DTO-KD exact weighting (Hayder et al., arXiv 2505.08170; ICLR 2026)."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from mokd_optim._typing import PSDMatrix, Weights
from mokd_optim._validation import OptionError, check_choice, check_flag, check_number
from mokd_optim.diagnostics import _relative_ratio_of, rest_norm_ratio
from mokd_optim.methods._base import Method, as_work
from mokd_optim.methods._registry import register
from mokd_optim.solvers import BACKENDS, line_weights, min_norm

STEP_RULES = ("anchor", "bounded", "capped-log-anchor", "convex", "log", "log-anchor")
#: The step rules whose length is not set from the anchor's gradient (no ``lengthen=``).
UNANCHORED_STEP_RULES = ("convex", "log")
#: ``lengthen=`` values besides ``True`` / ``False``: ``"after-warmup"`` lengthens only where
#: ``step="capped-log-anchor"`` has left its warm-up (a probe after round 18; see
#: :func:`mokd_weights`); ``"while-short"`` lengthens while the optimizer's steps fall short
#: (round 19; see :class:`MoKD`); ``"hypergradient"`` multiplies the length by a factor that
#: hypergradient descent sets from the same signal (round 20; see :class:`MoKD`).
LENGTHEN_RULES = ("after-warmup", "while-short", "hypergradient")
#: The ``lengthen=`` rules that read the optimizer's previous parameter change.
PREVIOUS_STEP_RULES = ("while-short", "hypergradient")
#: How ``anchor_vs_rest`` combines the objectives other than the anchor (see :func:`trade_off`).
REST_RULES = ("min-norm", "sum")
#: What happens when the others' part of the direction conflicts with the anchor (see
#: :func:`project_out_conflict`).
CONFLICT_RULES = (
    "agreement",
    "drop",
    "pareto",
    "project",
    "scaled",
    "sharpened",
    "sharpened-above",
    "sharpened-below",
    "squared",
)
#: The rules of ``conflict=`` that weigh the others by their cosine with the anchor (see
#: :func:`share_by_agreement`); they change the step where the two agree as well.
AGREEMENT_RULES = (
    "agreement",
    "scaled",
    "sharpened",
    "sharpened-above",
    "sharpened-below",
    "squared",
)
#: How :class:`MoKD`'s ``agreement_smoothing`` meets a conflict (round 13 of the suite; see
#: :meth:`MoKD._smooth_agreement`): ``"off"`` gives every step the moving average, ``"mean"``
#: none to a step whose own cosine is <= 0 and the average over every step to the others,
#: ``"agreeing-mean"`` the same gate with the average over the agreeing steps only,
#: ``"blend"`` (round 17) the average and the step's own agreement mixed by the running
#: fraction of conflicting steps.
AGREEMENT_GATES = ("off", "mean", "agreeing-mean", "blend")

# A combined direction shorter than this fraction of its triangle-inequality bound
# sum_i q_i ||g_i|| is treated as Pareto-stationary by the "anchor" rule (weights 0): rescaling
# such a vector to the anchor's norm would amplify rounding noise in the Gram matrix.
STATIONARY_RTOL = 1e-3

#: Decay of the moving average of the anchor gradient's norm behind ``step_bound`` (about the
#: last 100 steps).
STEP_BOUND_DECAY = 0.99

#: The decay of the library's other running statistics (about the last 100 steps): round 18's
#: ``agreement_smoothing`` (the default of rounds 18-21) and the average behind
#: ``lengthen="while-short"``.
AGREEMENT_SMOOTHING = 0.99

#: :class:`MoKD`'s default ``agreement_smoothing`` under an agreement rule (round 22 of the
#: suite): the share is about the run's mean agreement (1000 steps of memory; the suite's runs
#: are 250-300 steps long), given on every step (``agreement_gate="off"``) -- a weak teacher
#: keeps the share it earned early instead of losing it as its cosine falls once the labels
#: are fit.
DEFAULT_AGREEMENT_SMOOTHING = 0.999

#: ``lengthen="hypergradient"`` (round 20 of the suite): the log of the length factor moves by
#: this times ``-cos(d, delta)`` per step (about 33 steps of a fully aligned signal per e-fold),
#: within ``[1, HYPERGRADIENT_CEILING]``, and may grow only while the learning rate is at least
#: ``HYPERGRADIENT_PEAK`` of the largest seen and not rising. Cosines and ratios: no constant
#: of a model's gradient scale.
HYPERGRADIENT_RATE = 0.03
HYPERGRADIENT_CEILING = 4.0
HYPERGRADIENT_PEAK = 0.9

#: ``share_growth=True`` (round 26 of the suite): the distillation side's share has its odds
#: multiplied by ``rho_avg / rho_0``, the growth of the norm ratio ``rho = ||sum_j g_j|| /
#: ||g_anchor||`` (``j`` the objectives other than the anchor) since the start -- ``rho_avg`` a
#: moving average with this decay (about the last 20 steps), ``rho_0`` the mean over the first
#: ``SHARE_GROWTH_START`` steps, on which nothing changes. Both fixed in probes after rounds 19
#: and 21 (``benchmarks/step_signals.py``'s ``"grown"`` and ``"grown-odds"``) before their runs;
#: ratios of ratios, so no constant of a model's gradient scale or of a loss's units.
SHARE_GROWTH_SMOOTHING = 0.95
SHARE_GROWTH_START = 10

#: ``relative_start=True`` (round 27 of the suite, not adopted): a run whose others' gradient
#: is, for their loss, at least as large as the anchor's for its own at the start -- the mean
#: over the first ``SHARE_GROWTH_START`` steps of ``(||sum_j g_j|| / sum_j L_j) / (||g_anchor||
#: / L_anchor)`` at least ``RELATIVE_START_PIVOT`` -- gives the others the share a fixed weight
#: ``RELATIVE_START_WEIGHT`` gives them, with the norm ratio measured against its start (``a
#: (rho / rho_0) / ((1 - a) + a rho / rho_0)``); once the anchor's or the others' loss exceeds
#: ``RELATIVE_START_GUARD`` times its mean over those first steps (a run diverging), the
#: agreement share for good. In the suite the ratio told the weak teachers (trained on few
#: images: soft targets close to the student's first outputs) from the strong ones. Ratios of
#: norms and of losses: no constant of a model's gradient scale or of a loss's units.
RELATIVE_START_PIVOT = 1.0
RELATIVE_START_WEIGHT = 0.1
RELATIVE_START_GUARD = 2.0


def weigh_by_trust(agreement: Tensor, trust: Optional[Tensor]) -> Tensor:
    """The agreement share ``a`` in ``[0, 1]`` with evidence ``t`` in ``[0, 1]`` that the others
    are right where they disagree with the anchor (round 8 of the suite; in KD the teacher's
    record against the student on the labels, :class:`mokd_optim.kd.TeacherTrust`), combined as
    independent odds: ``logit(a') = logit(a) + logit(t)``, i.e.
    ``a' = a t / (a t + (1 - a)(1 - t))``. ``t = 1/2`` (no evidence) or ``None`` leaves ``a``
    unchanged; ``a`` of 0 or 1 stays (also in the undecided ``a = 1, t = 0`` and ``a = 0, t =
    1``); ``t`` of 0 or 1 makes any ``0 < a < 1`` 0 or 1. Same shape as ``agreement``."""
    if trust is None:
        return agreement
    trust = trust.to(agreement)
    for_others = agreement * trust
    total = for_others + (1.0 - agreement) * (1.0 - trust)
    return torch.where(total > 0, for_others / torch.where(total > 0, total, 1.0), agreement)


def agreement_share(
    agreement: Tensor,
    rule: str,
    trust: Optional[Tensor] = None,
    average: Optional[Callable[[Tensor], Tensor]] = None,
) -> tuple[Tensor, Tensor]:
    """The others' and the anchor's parts ``(a', b)`` of the direction ``b u_anchor + a' u_r``
    for the agreement ``a = max(c, 0)`` in ``[0, 1]`` under an agreement rule (first weighed by
    ``trust``, :func:`weigh_by_trust`):

    - ``"agreement"``: ``(a, 1 - a)``, the others' share is their cosine;
    - ``"scaled"``: ``(a, 1)``, a share of ``a / (1 + a)``;
    - ``"sharpened"`` (round 11): ``(a', 1 - a')`` with the odds of ``a`` squared,
      ``a' = a^2 / (a^2 + (1 - a)^2)`` -- more than the cosine where ``a > 1/2`` (0.69 at 0.6,
      0.84 at 0.7), less below (0.31 at 0.4, 0.06 at 0.2); 0, 1/2 and 1 stay;
    - ``"sharpened-above"`` (round 11): the same where ``a > 1/2``, ``a`` itself below;
    - ``"sharpened-below"`` (round 25): the same where ``a < 1/2``, ``a`` itself above -- less
      for a side that agrees little, a strongly agreeing side's share unchanged;
    - ``"squared"`` (round 25): ``(a^2, 1 - a^2)``, the share is the fraction of the others'
      unit direction's squared length that lies along the anchor's (0.09 at 0.3, 0.49 at 0.7).

    ``average`` (round 12; :class:`MoKD`'s ``agreement_smoothing``) maps this step's agreement
    to the value used, a moving average over the steps, before ``trust`` and the rule act.
    Same shape as ``agreement``."""
    if average is not None:
        agreement = average(agreement)
    share = weigh_by_trust(agreement, trust)
    if rule in ("sharpened", "sharpened-above", "sharpened-below"):
        odds_squared = weigh_by_trust(share, share)
        if rule == "sharpened":
            share = odds_squared
        elif rule == "sharpened-above":
            share = torch.where(share > 0.5, odds_squared, share)
        else:
            share = torch.where(share < 0.5, odds_squared, share)
    elif rule == "squared":
        share = share * share
    anchor_part = torch.ones_like(share) if rule == "scaled" else 1.0 - share
    return share, anchor_part


def normalized_log_gram(gram: PSDMatrix, losses: Tensor) -> PSDMatrix:
    """The Gram matrix of the log-loss gradients ``h_i = g_i / L_i``, divided by its mean
    diagonal (``1`` when all gradients are 0).

    Dividing by the mean squared norm makes the matrix invariant to rescaling every gradient
    at once (a learning-rate-like scale), on top of the log's invariance to rescaling one
    loss; only the cosines and the *ratios* of the ``||h_i||`` remain. Shapes ``(K, K)``,
    ``(K,)`` -> ``(K, K)``.
    """
    log_gram = gram / (losses[:, None] * losses[None, :])
    scale = torch.diagonal(log_gram).clamp_min(0.0).mean()
    return log_gram / torch.where(scale > 0, scale, torch.ones_like(scale))


def trade_off(
    log_gram: PSDMatrix,
    *,
    regularization: float = 0.0,
    equalize: float = 0.0,
    backend: str = "auto",
    anchor_vs_rest: bool = False,
    anchor: int = 0,
    rest: str = "min-norm",
) -> Weights:
    """``pi`` on the log-gradients ``h_i`` from their Gram matrix (any positive global scale).

    Solves the min-norm problem over ``v_i = h_i / ||h_i||^equalize`` with ``regularization * I``
    added to the (mean-diagonal normalised) Gram matrix of the ``v_i``, then maps the weights
    back onto the ``h_i`` (``pi_i ∝ alpha_i / ||h_i||^equalize``, summing to 1).

    - ``equalize = 0``: MoKD's min-norm point of the ``h_i`` -- equal relative progress; an
      objective whose relative gradient ``||g_i|| / L_i`` is much smaller takes the weight.
    - ``equalize = 1``: the min-norm point of the unit gradients -- for two objectives their
      bisector, each unit gradient counting the same (the direction Nash-MTL and IMTL-G give
      for two objectives). Values in between interpolate.

    Both keep the min-norm promises: no conflict with any objective, 0 at a Pareto-stationary
    point. ``regularization > 0`` trades them for weights nearer the centre of the simplex.

    ``anchor_vs_rest=True`` (K > 2; changes nothing for K = 2): the anchor counts as
    much as all the other objectives together -- the min-norm point ``u`` of the others' ``v_j``
    is found first, then the min-norm point of the two unit vectors ``v_anchor / ||v_anchor||``
    and ``u / ||u||``. No conflict with the anchor or with ``u``; an individual other objective
    may be conflicted. ``rest`` says how the others are combined into ``u``: ``"min-norm"`` as
    above, or ``"sum"``: ``u = sum_j h_j`` (the gradient of ``sum_j log L_j``; each other
    objective in proportion to its relative gradient, none stretched to the size of another).
    Shapes ``(K, K)`` -> ``(K,)``.
    """
    norms = torch.diagonal(log_gram).clamp_min(0.0).sqrt()
    nonzero = norms > 0
    if equalize > 0:
        scale = torch.where(nonzero, norms.clamp_min(1e-300) ** -equalize, torch.zeros_like(norms))
    else:
        scale = torch.ones_like(norms)
    work = log_gram * scale[:, None] * scale[None, :]
    mean_diagonal = torch.diagonal(work).clamp_min(0.0).mean()
    work = work / torch.where(mean_diagonal > 0, mean_diagonal, torch.ones_like(mean_diagonal))
    if regularization > 0:
        work = work + regularization * torch.eye(
            work.shape[-1], dtype=work.dtype, device=work.device
        )
    if anchor_vs_rest and work.shape[-1] > 2:
        # "sum": the others' h_j = v_j * ||h_j||^equalize, each with the same weight
        summed = None if rest == "min-norm" else norms**equalize * nonzero
        alpha = _anchor_against_the_rest(work, anchor, backend, summed)
    else:
        alpha = min_norm(work, backend=backend)
    if equalize == 0:
        return alpha
    pi = alpha * scale
    total = pi.sum()
    # all the weight on zero gradients: keep alpha (the point is Pareto-stationary)
    return torch.where(total > 0, pi / torch.where(total > 0, total, torch.ones_like(total)), alpha)


def _anchor_against_the_rest(
    work: PSDMatrix, anchor: int, backend: str, rest_weights: Optional[Tensor] = None
) -> Weights:
    """Simplex weights on the vectors behind ``work`` (their Gram matrix): the min-norm point
    of the anchor's unit vector and the unit vector of the others' combination -- their
    min-norm point, or, given ``rest_weights`` ``(K,)`` (>= 0; the anchor's entry ignored),
    their combination with those weights. ``(K, K)`` -> ``(K,)``."""
    k = work.shape[-1]
    # The other objectives' indices, built on the device: a tensor from a Python list would be a
    # blocking host-to-device copy on every step (a host synchronisation on CUDA).
    positions = torch.arange(k - 1, device=work.device)
    others = positions + (positions >= anchor).long()
    among_rest = work[others][:, others]
    if rest_weights is None:
        rest = min_norm(among_rest, backend=backend)
    else:
        rest = rest_weights[others].to(work.dtype)
        total = rest.sum()
        rest = torch.where(
            total > 0, rest / torch.where(total > 0, total, 1.0), torch.full_like(rest, 1 / (k - 1))
        )
    rest_sq = (rest @ among_rest @ rest).clamp_min(0.0)
    anchor_sq = work[anchor, anchor].clamp_min(0.0)
    cross = work[anchor, others] @ rest
    rest_norm = rest_sq.sqrt()
    anchor_norm = anchor_sq.sqrt()
    both = (rest_norm > 0) & (anchor_norm > 0)
    safe_rest = torch.where(both, rest_norm, torch.ones_like(rest_norm))
    safe_anchor = torch.where(both, anchor_norm, torch.ones_like(anchor_norm))
    cosine = (cross / (safe_rest * safe_anchor)).clamp(-1.0, 1.0)
    pair = torch.stack(
        [
            torch.stack([torch.ones_like(cosine), cosine]),
            torch.stack([cosine, torch.ones_like(cosine)]),
        ]
    )
    beta = min_norm(pair, backend=backend)
    weights = torch.zeros(k, dtype=work.dtype, device=work.device)
    weights[anchor] = beta[0] / safe_anchor
    weights[others] = beta[1] * rest / safe_rest
    weights = weights / weights.sum()
    # A zero vector on either side is a Pareto-stationary point, as in min_norm: all the weight
    # on a zero anchor, or the others' own min-norm point when it is 0.
    at_anchor = torch.zeros_like(weights)
    at_anchor[anchor].fill_(1.0)  # not `= 1.0`: item assignment of a Python number copies it
    at_rest = torch.zeros_like(weights)
    at_rest[others] = rest
    fallback = torch.where(anchor_norm > 0, at_rest, at_anchor)
    return torch.where(both, weights, fallback)


def _bisector_weights(
    gram: PSDMatrix, losses: Tensor, anchor: int = 0, project: bool = False
) -> Weights:
    """:func:`trade_off` with ``equalize=1`` for two objectives, in a handful of ops (the
    default's per-step cost on small models): the min-norm point of two unit vectors is their
    midpoint, so ``pi_i ∝ 1 / ||h_i||``, i.e. ``pi = (n_2, n_1) / (n_1 + n_2)`` with
    ``n_i = ||g_i|| / L_i``. A zero log-gradient takes all the weight (``(1/2, 1/2)`` when both
    are zero), as in the general path.

    ``project=True`` folds in :func:`project_out_conflict` with ``anchor``: at cosine ``c < 0``
    the anchor's entry is multiplied by ``1 - c`` before normalising (the direction becomes
    ``(1 - c) u_anchor + u_other``). ``(2, 2)``, ``(2,)`` -> ``(2,)``."""
    raw = torch.diagonal(gram).clamp_min(0.0).sqrt()
    swapped = (raw / losses).flip(0)  # pi_i ∝ n_other
    if project:
        product = raw[0] * raw[1]
        cosine = gram[0, 1] / torch.where(product > 0, product, 1.0)
        boost = torch.zeros_like(swapped)
        boost[anchor] = (-cosine).clamp_min(0.0)
        swapped = swapped + swapped * boost
    total = swapped.sum()
    half = torch.full_like(swapped, 0.5)
    return torch.where(total > 0, swapped / torch.where(total > 0, total, 1.0), half)


def _agreement_weights(
    gram: PSDMatrix,
    losses: Tensor,
    anchor: int = 0,
    rule: str = "agreement",
    trust: Optional[Tensor] = None,
    average: Optional[Callable[[Tensor], Tensor]] = None,
) -> Weights:
    """:func:`share_by_agreement` applied to the two-objective bisector, in closed form (the
    default's per-step cost on small models): with ``n_i = ||g_i|| / L_i`` and ``a = max(c, 0)``
    for the cosine ``c`` of the two gradients and ``(a', b)`` the rule's parts
    (:func:`agreement_share`: ``(a, 1 - a)`` for ``"agreement"``), ``pi_anchor ∝ b / n_anchor``
    and ``pi_other ∝ a' / n_other``. Where either gradient is zero, the bisector's weights.
    ``(2, 2)``, ``(2,)`` -> ``(2,)``."""
    raw = torch.diagonal(gram).clamp_min(0.0).sqrt()
    relative = raw / losses
    product = raw[0] * raw[1]
    both = product > 0
    agreement = (gram[0, 1] / torch.where(both, product, 1.0)).clamp(0.0, 1.0)
    share, anchor_part = agreement_share(agreement, rule, trust, average)
    parts = share.expand(2).clone()
    parts[anchor] = anchor_part
    # where a gradient is zero: the bisector's weights, pi_i ∝ n_other (see _bisector_weights)
    parts = torch.where(both, parts / relative, relative.flip(0))
    total = parts.sum()
    return torch.where(total > 0, parts / torch.where(total > 0, total, 1.0), 0.5)


def drop_on_conflict(pi: Weights, log_gram: PSDMatrix, anchor: int) -> Weights:
    """Task priority by a gate (Du et al. 2018, auxiliary losses used only while their gradient
    agrees with the main one): all the weight on the anchor where the others' part ``r`` of the
    direction points against it (``r . h_anchor < 0``); ``pi`` unchanged otherwise.
    ``(K,)``, ``(K, K)`` -> ``(K,)``."""
    others_against = pi @ log_gram[:, anchor] - pi[anchor] * log_gram[anchor, anchor]
    only_anchor = torch.zeros_like(pi)
    only_anchor[anchor].fill_(1.0)  # not `= 1.0`: item assignment of a Python number copies it
    return torch.where(others_against < 0, only_anchor, pi)


def project_out_conflict(pi: Weights, log_gram: PSDMatrix, anchor: int) -> Weights:
    """Task priority: where the others' part ``r = sum_{j != anchor} pi_j h_j`` of the direction
    points against the anchor's log-gradient (``r . h_anchor < 0``), add to the anchor's weight
    what removes that component, ``-(r . h_anchor) / ||h_anchor||^2``, and renormalise. The
    anchor then never loses ground to the others' part (one-sided gradient surgery: the others
    keep their component orthogonal to the anchor); ``pi`` is unchanged where they agree.
    For two unit gradients with cosine ``c < 0`` the direction becomes ``(1 - c) u_anchor +
    u_other`` instead of their bisector. Any positive scale of ``log_gram`` gives the same.
    ``(K,)``, ``(K, K)`` -> ``(K,)``."""
    anchor_sq = log_gram[anchor, anchor]
    others_against = pi @ log_gram[:, anchor] - pi[anchor] * anchor_sq
    extra = torch.where(
        (others_against < 0) & (anchor_sq > 0),
        -others_against / torch.where(anchor_sq > 0, anchor_sq, torch.ones_like(anchor_sq)),
        torch.zeros_like(anchor_sq),
    )
    projected = pi.clone()
    projected[anchor] = projected[anchor] + extra
    return projected / projected.sum()


def _agreement_with_anchor(
    weights: Weights, gram: PSDMatrix, anchor: int
) -> tuple[Weights, Tensor, Tensor, Tensor]:
    """The others' part ``r = sum_{j != anchor} weights_j v_j`` of a combination of the vectors
    behind ``gram`` against the anchor's: ``(weights with the anchor's entry 0, max(c, 0) for
    their cosine c (0 where either is zero), ||v_anchor||, ||r||)``. ``(K,)``, ``(K, K)`` ->
    ``(K,)`` and three 0-d tensors."""
    others = weights.clone()
    others[anchor].fill_(0.0)  # not `= 0.0`: item assignment of a Python number copies it
    anchor_norm = gram[anchor, anchor].clamp_min(0.0).sqrt()
    rest_norm = (others @ gram @ others).clamp_min(0.0).sqrt()
    product = anchor_norm * rest_norm
    cosine = (others @ gram[:, anchor]) / torch.where(product > 0, product, 1.0)
    agreement = torch.where(product > 0, cosine.clamp(0.0, 1.0), torch.zeros_like(cosine))
    return others, agreement, anchor_norm, rest_norm


def share_by_agreement(
    pi: Weights,
    log_gram: PSDMatrix,
    anchor: int,
    rule: str = "agreement",
    trust: Optional[Tensor] = None,
    average: Optional[Callable[[Tensor], Tensor]] = None,
) -> Weights:
    """The others' say in proportion to how much they agree with the anchor (round 7 of the
    suite). With ``r = sum_{j != anchor} pi_j h_j`` the others' part of the direction and ``c``
    the cosine of ``r`` with the anchor's log-gradient, ``a = max(c, 0)``, the direction becomes

    - ``rule="agreement"``: ``(1 - a) u_anchor + a u_r`` (unit vectors): the others' share of
      the update is their cosine -- nothing where they are orthogonal to or against the anchor,
      everything where they point the same way;
    - ``rule="scaled"``: ``u_anchor + a u_r``: the auxiliary gradient scaled by its cosine (the
      weighted variant of Du et al. 2018), a share of ``a / (1 + a)``;
    - ``rule="sharpened"`` / ``"sharpened-above"`` (round 11) / ``"sharpened-below"`` (round
      25): ``(1 - a') u_anchor + a' u_r`` with the odds of ``a`` squared (everywhere / only
      where ``a > 1/2`` / only where ``a < 1/2``), :func:`agreement_share`;
    - ``rule="squared"`` (round 25): ``(1 - a^2) u_anchor + a^2 u_r``.

    With ``trust`` (a 0-d tensor in ``[0, 1]``: evidence that the others are right where they
    disagree with the anchor) ``a`` is weighed by it first (:func:`weigh_by_trust`; round 8).
    The others keep their proportions among themselves. Where ``r`` or the anchor's gradient is
    zero ``pi`` is returned unchanged. Any positive scale of ``log_gram`` (and of any loss)
    gives the same. ``(K,)``, ``(K, K)`` -> ``(K,)``."""
    if rule not in AGREEMENT_RULES:
        raise ValueError(f"mokd: unknown agreement rule {rule!r}; choose one of {AGREEMENT_RULES}")
    others, agreement, anchor_norm, rest_norm = _agreement_with_anchor(pi, log_gram, anchor)
    both = (anchor_norm > 0) & (rest_norm > 0)
    safe_anchor = torch.where(both, anchor_norm, torch.ones_like(anchor_norm))
    safe_rest = torch.where(both, rest_norm, torch.ones_like(rest_norm))
    share, anchor_part = agreement_share(agreement, rule, trust, average)
    shared = others * (share / safe_rest)
    shared[anchor] = anchor_part / safe_anchor
    return torch.where(both, shared / shared.sum(), pi)


def mokd_simplex_weights(
    gram: PSDMatrix,
    losses: Tensor,
    *,
    simplex: bool = True,
    backend: str = "auto",
    regularization: float = 0.0,
    equalize: float = 0.0,
    anchor_vs_rest: bool = False,
    anchor: int = 0,
    rest: str = "min-norm",
) -> Weights:
    """MoKD's trade-off weights ``pi`` for the log-loss gradients ``h_i = g_i / L_i``.

    ``gram`` ``(K, K)`` is the Gram matrix of the raw gradients; that of the ``h_i`` is
    ``G / (L L^T)``. With ``simplex=True`` ``pi`` is the min-norm point of the convex hull of
    the ``h_i``; with ``simplex=False`` (K = 2 only) the paper's unclipped formula, the
    min-norm point of the whole line through ``h_1, h_2`` (may be negative).

    ``equalize``, ``regularization``, ``anchor_vs_rest``, ``rest`` and ``anchor``: see
    :func:`trade_off`. On the simplex ``||pi||^2 = ||pi - 1/K||^2 + 1/K``, so ``regularization = r`` is the min-norm problem with
    a penalty ``r`` on the distance from the uniform weights. Returns ``(K,)``.
    """
    if simplex and equalize == 1 and regularization == 0 and gram.shape[-1] == 2:
        return _bisector_weights(gram, losses)
    log_gram = gram / (losses[:, None] * losses[None, :])
    if regularization > 0 or equalize > 0 or anchor_vs_rest:
        if not simplex:
            raise ValueError("mokd: regularization, equalize and anchor_vs_rest need simplex=True")
        return trade_off(
            log_gram,
            regularization=regularization,
            equalize=equalize,
            backend=backend,
            anchor_vs_rest=anchor_vs_rest,
            anchor=anchor,
            rest=rest,
        )
    if simplex:
        return min_norm(log_gram, backend=backend)
    if gram.shape[-1] != 2:
        raise ValueError(
            "mokd: simplex=False (the paper's unclipped formula) is defined for two objectives only"
        )
    from mokd_optim.solvers._simplex import normalize

    return line_weights(normalize(log_gram))


def mokd_weights(
    gram: PSDMatrix,
    losses: Tensor,
    *,
    step: str = "capped-log-anchor",
    anchor: int = 0,
    simplex: bool = True,
    backend: str = "auto",
    regularization: float = 0.0,
    equalize: float = 0.0,
    pi: Optional[Weights] = None,
    anchor_vs_rest: bool = False,
    rest: str = "min-norm",
    conflict: str = "pareto",
    trust: Optional[Tensor] = None,
    lengthen: Union[bool, str] = False,
    agreement_average: Optional[Callable[[Tensor], Tensor]] = None,
    lengthen_gate: Optional[Tensor] = None,
) -> tuple[Weights, Weights]:
    """Weights on the raw gradients for MoKD under a step-length rule, and ``pi``.

    The direction is ``d = sum_i pi_i h_i = sum_i q_i g_i`` with ``q_i = pi_i / L_i``. Its
    length depends on ``step``:

    - ``"log"``: ``w = q`` (the log-gradient combination itself);
    - ``"convex"``: ``w = q / sum(q)`` (a convex combination of the raw gradients);
    - ``"anchor"``: ``w = q * ||g_anchor|| / ||d||``, so ``||d|| = ||g_anchor||``;
    - ``"bounded"``: ``w = q * ||g_anchor|| / sum_i q_i ||g_i||``: the update is
      ``||g_anchor|| * sum_i c_i g_i / ||g_i||`` with convex ``c_i = pi_i ||h_i|| / sum_j
      pi_j ||h_j||`` -- a convex combination of the *unit* gradient directions, times the
      anchor's norm. Its length is ``||g_anchor||`` when the gradients agree and shrinks as
      they conflict (as a plain sum of gradients does); it never exceeds ``||g_anchor||``,
      whereas ``"anchor"`` stretches a short min-norm point back to full length.
    - ``"log-anchor"``: ``||d|| = ||g_anchor|| / L_anchor``, the norm of the anchor's
      log-gradient: the step a plain ``log L_anchor`` training would take (short while the
      anchor loss is high, longer as it falls), whichever objective ``pi`` favours.
    - ``"capped-log-anchor"``: the shorter of ``"anchor"`` and ``"log-anchor"``,
      ``||d|| = ||g_anchor|| * min(1, 1 / L_anchor)``: short while the anchor loss is above 1,
      never longer than the plain step on the anchor (``"log-anchor"`` grows as ``1 / L_anchor``
      once the loss falls below 1, which at a constant learning rate destabilised training).

    For every rule but ``"log"`` and ``"convex"`` a Pareto-stationary point (``||d||`` below
    ``STATIONARY_RTOL`` of its bound, or a zero gradient) gives 0.

    Args: gram ``(K, K)``, losses ``(K,)`` positive, both float64; ``pi`` ``(K,)`` precomputed
    trade-off weights (e.g. from a smoothed Gram matrix) instead of solving for them here;
    ``regularization``, ``equalize``, ``anchor_vs_rest``, ``rest``: see :func:`trade_off`;
    ``conflict="project"``: :func:`project_out_conflict` applied to ``pi``; ``"drop"``:
    :func:`drop_on_conflict`; ``AGREEMENT_RULES`` (``"agreement"``, ``"scaled"``,
    ``"sharpened"``, ``"sharpened-above"``, ``"sharpened-below"``, ``"squared"``):
    :func:`share_by_agreement`, with ``trust`` (0-d, in
    ``[0, 1]``) and ``agreement_average`` (a map from this step's agreement to the one used, see
    :func:`agreement_share`); only these rules use either.

    ``lengthen=True`` (round 10; not with ``"log"`` or ``"convex"``): the length above times
    ``1 + max(c, 0)``, ``c`` the cosine of the others' part ``sum_{j != anchor} w_j g_j`` with
    the anchor's gradient -- others that point the anchor's way add up to one more of the
    rule's steps, as an added gradient would; in a conflict, or with no other part, nothing
    changes. Scale-free like the rule itself (a cosine). ``lengthen="after-warmup"`` (round 19;
    ``"capped-log-anchor"`` only) raises that rule's cap instead of multiplying its length:
    ``||d|| = ||g_anchor|| * min(1 + max(c, 0), 1 / L_anchor)`` -- the warm-up while the anchor
    loss is above 1 is the plain rule's (``||g_anchor|| / L_anchor``; round 10's lengthening of
    it is what killed runs at a high learning rate), and the step grows as ``1 / L_anchor`` up
    to ``1 + max(c, 0)`` plain steps once the loss is below 1. ``lengthen_gate`` (0-d, 0 or 1;
    with ``lengthen=True`` or ``"while-short"``): the length is times ``1 + gate * max(c, 0)``
    -- :class:`MoKD`'s ``"while-short"`` passes whether the steps fall short. Returns
    ``(w, pi)``.
    """
    if step not in STEP_RULES:
        raise ValueError(f"mokd: unknown step rule {step!r}; choose one of {STEP_RULES}")
    _check_lengthen(step, lengthen)
    if lengthen == "hypergradient":
        raise ValueError(
            "mokd: lengthen='hypergradient' keeps a factor across steps: use MoKD, whose "
            "weights() applies it"
        )
    for given, what in ((trust, "trust"), (agreement_average, "agreement_average")):
        if given is not None and conflict not in AGREEMENT_RULES:
            raise ValueError(
                f"mokd: {what} is used by conflict={AGREEMENT_RULES} only, "
                f"not conflict={conflict!r}"
            )
    # two objectives with the bisector: the conflict rule folded into one closed form
    bisector = pi is None and simplex and equalize == 1 and regularization == 0
    if bisector and gram.shape[-1] == 2 and conflict == "project":
        pi = _bisector_weights(gram, losses, anchor, project=True)
    elif bisector and gram.shape[-1] == 2 and conflict in AGREEMENT_RULES:  # the default
        pi = _agreement_weights(gram, losses, anchor, conflict, trust, agreement_average)
    else:
        if pi is None:
            pi = mokd_simplex_weights(
                gram,
                losses,
                simplex=simplex,
                backend=backend,
                regularization=regularization,
                equalize=equalize,
                anchor_vs_rest=anchor_vs_rest,
                anchor=anchor,
                rest=rest,
            )
        log_gram = gram / (losses[:, None] * losses[None, :])
        if conflict in AGREEMENT_RULES:
            pi = share_by_agreement(pi, log_gram, anchor, conflict, trust, agreement_average)
        elif conflict != "pareto":
            resolve = project_out_conflict if conflict == "project" else drop_on_conflict
            pi = resolve(pi, log_gram, anchor)
    q = pi / losses
    if step == "log":
        return q, pi
    if step == "convex":
        total = q.sum()
        return q / torch.where(total != 0, total, torch.ones_like(total)), pi
    combined_sq = (q @ gram @ q).clamp_min(0.0)
    norms = torch.diagonal(gram).clamp_min(0.0).sqrt()
    bound = (q.abs() * norms).sum()
    # A zero gradient puts 0 in the convex hull: the point is Pareto-stationary, and the
    # min-norm weights on the other gradients are solver noise that the rescaling would amplify.
    # (exactly zero: a relative threshold would call the smaller of two gradients 1e12 apart
    # zero and return no update at all)
    has_zero_gradient = (torch.diagonal(gram) <= 0).any()
    stationary = (combined_sq <= (STATIONARY_RTOL * bound) ** 2) | has_zero_gradient
    length = bound if step == "bounded" else combined_sq.sqrt()
    if step == "log-anchor":
        target = norms[anchor] / losses[anchor]
    elif step == "capped-log-anchor":
        target = norms[anchor] / losses[anchor].clamp_min(1.0)
    else:
        target = norms[anchor]
    if lengthen:
        extra = _agreement_with_anchor(q, gram, anchor)[1]
        if lengthen == "after-warmup":  # the cap raised, not the length multiplied
            target = norms[anchor] * torch.minimum(1.0 + extra, 1.0 / losses[anchor])
        else:
            target = target * (1.0 + (extra if lengthen_gate is None else lengthen_gate * extra))
    safe = torch.where(stationary, torch.ones_like(length), length)
    scale = torch.where(stationary, torch.zeros_like(length), target / safe)
    return q * scale, pi


def _check_lengthen(step: str, lengthen: Union[bool, str]) -> None:
    """``lengthen`` scales a target length: refuse it with a rule that sets none, and
    ``"after-warmup"`` with a rule that has no warm-up cap."""
    if not isinstance(lengthen, bool) and lengthen not in LENGTHEN_RULES:
        raise OptionError(
            f"mokd: lengthen must be True, False or one of {LENGTHEN_RULES}, got {lengthen!r}"
        )
    if lengthen == "after-warmup" and step != "capped-log-anchor":
        raise ValueError(
            f"mokd: lengthen='after-warmup' raises the cap of step='capped-log-anchor', "
            f"not step={step!r}"
        )
    if lengthen and step in UNANCHORED_STEP_RULES:
        raise ValueError(
            f"mokd: lengthen needs a step rule with a target length, not step={step!r}"
        )


def _moving_average(
    average: Optional[Tensor], count: int, value: Tensor, decay: float
) -> tuple[Tensor, int, Tensor]:
    """One step of an exponential moving average started at 0: ``(average, count,
    bias-corrected average)``, the correction as Adam's (``average / (1 - decay^count)``)."""
    previous = torch.zeros_like(value) if average is None else average.to(value)
    average = decay * previous + (1 - decay) * value
    count += 1
    return average, count, average / (1 - decay**count)


def _descent_cosine(product: Tensor, direction_sq_norm: Tensor, change_sq_norm: Tensor) -> Tensor:
    """``s = -cos(d, delta) = -<d, delta> / (||d|| ||delta||)`` from ``product = <d, delta>`` and
    the two squared norms (0-d each): positive while ``d`` still descends along the last
    parameter change ``delta``; 0 where either vector is zero. What ``lengthen="while-short"``
    (``d`` the anchor's gradient) and ``"hypergradient"`` (``d`` the update) read."""
    norms = (direction_sq_norm.clamp_min(0.0) * change_sq_norm.clamp_min(0.0)).sqrt()
    cosine = -product / torch.where(norms > 0, norms, 1.0)
    return torch.where(norms > 0, cosine, torch.zeros_like(cosine))


@register
class MoKD(Method):
    """Exact MoKD weighting: min-norm trade-off of the log-loss gradients.

    Options:
        step: the step-length rule, one of ``STEP_RULES`` (see :func:`mokd_weights`); default
            ``"capped-log-anchor"`` (chosen in round 2 of the condition suite; ``"anchor"`` is the
            0.1 default, ``"log-anchor"`` round 1's choice, never released).
            docs/mokd.md, docs/results.md and docs/results_round2.md have the measurements
            behind the default and where each rule fails.
        equalize: ``0`` is MoKD's min-norm point of the log-gradients, ``1`` (the default with
            ``simplex=True``) that of their unit vectors (see :func:`trade_off`).
        anchor_vs_rest: ``True`` (default, chosen in round 3 of the suite): the anchor counts
            as much as all the other objectives together; ``False``: every objective's unit
            gradient counts the same. The same for two objectives; see :func:`trade_off`.
        rest: with ``anchor_vs_rest``, how the other objectives are combined before they meet
            the anchor: ``"sum"`` (default, chosen in round 4): their log-gradients summed, each
            in proportion to its relative gradient; ``"min-norm"`` (round 3): the min-norm point
            of their unit gradients, which stretches a small feature-loss gradient to the size
            of the KD gradient. Nothing changes for two objectives.
        conflict: how the others' part of the direction meets the anchor's.
            ``"agreement"`` (default, chosen in round 7): the others' share of the update is
            their cosine ``c`` with the anchor, ``max(c, 0)`` -- nothing where they are
            orthogonal to it or against it, so a teacher whose gradient does not help the task
            gets little of the step (see :func:`share_by_agreement`); by default (round 22) the
            run's mean of ``max(c, 0)`` (a moving average with a 1000-step memory) on every
            step (``agreement_smoothing``, ``agreement_gate``); ``"scaled"``: the anchor
            plus ``max(c, 0)`` times the others (Du et al. 2018); ``"sharpened"`` /
            ``"sharpened-above"`` (round 11) / ``"sharpened-below"`` (round 25): the cosine's
            odds squared, everywhere / only above 1/2 / only below; ``"squared"`` (round 25):
            the share ``max(c, 0)^2`` (:func:`agreement_share`). The rest change the step only
            in a conflict (``c < 0``): ``"project"`` (round 6) removes the others' component
            against the anchor (see :func:`project_out_conflict`); ``"drop"`` steps along the
            anchor alone; ``"pareto"`` (rounds 1-5) keeps the min-norm bisector, no objective
            losing ground.
        lengthen: ``True`` multiplies the step rule's length by ``1 + max(c, 0)``, ``c`` the
            cosine of the others' part of the update with the anchor's gradient (round 10 of
            the suite; see :func:`mokd_weights`); not with ``step="log"`` or ``"convex"``.
            ``"after-warmup"`` (a probe after round 18, ``step="capped-log-anchor"`` only): the
            rule's cap on the step rises from 1 to ``1 + max(c, 0)`` plain steps, its warm-up
            unchanged. ``"while-short"`` (round 19): ``True``'s lengthening only while the
            moving average of ``-cos(g_anchor, delta)`` is positive, ``delta`` the optimizer's
            previous parameter change -- while the task loss still falls along the last step,
            i.e. the steps are too short for it (a low learning rate); the optimizer keeps one
            copy of the parameters for it (exact strategies only: with ``"representation"``
            nothing is reported and nothing lengthened). ``"hypergradient"`` (round 20): the
            rule's length times a factor ``m`` in ``[1, HYPERGRADIENT_CEILING]`` that
            hypergradient descent on ``log m`` sets (Baydin et al. 2018, on a cosine):
            ``log m += HYPERGRADIENT_RATE * s``, ``s = -cos(d, delta)``, ``d`` this step's
            update direction -- growing while each step still descends along the last one (a
            step too short for the loss), shrinking back when the steps overshoot. It grows
            only while the optimizer's learning rate is at least ``HYPERGRADIENT_PEAK`` of the
            largest seen and not rising, so a warm-up or an annealing tail is not undone; the
            same copy of the parameters; with Adam-type optimizers, which normalise the
            gradient's scale, it does nearly nothing (as the step rule's length).
        agreement_smoothing: ``beta`` in ``[0, 1)``; with ``beta > 0`` an agreement rule uses
            the moving average (decay ``beta``, bias-corrected) of the agreement ``max(c, 0)``
            over the steps instead of this step's value -- a share that follows how much the
            others agree with the anchor over a run, not the batch at hand (round 12 of the
            suite); needs ``conflict`` in ``AGREEMENT_RULES``. ``0``: this step's (the default
            of rounds 7-17). Default ``None``: ``DEFAULT_AGREEMENT_SMOOTHING`` (0.999; round 22
            of the suite) under an agreement rule without ``agreement_lag``, else ``0``; rounds
            18-21's default was ``0.99`` with ``agreement_gate="mean"``.
        agreement_gate: with ``agreement_smoothing``, what a step whose own cosine is ``<= 0``
            gets (round 13 of the suite), one of ``AGREEMENT_GATES``: ``"off"`` (the default
            since round 22) the moving average like every step; ``"mean"`` no share (the
            per-step rule's answer in a conflict), the others the moving average of
            ``max(c, 0)`` over every step (the default of rounds 18-21);
            ``"agreeing-mean"`` no share, the others the moving average of ``c`` over the
            agreeing steps only; ``"blend"`` (round 17) ``(1 - f) m + f a``, the moving average
            ``m`` of ``max(c, 0)`` and this step's ``a`` mixed by the moving average ``f`` of
            the fraction of conflicting steps (``c <= 0``) -- nearly the average for a side
            that rarely conflicts with the anchor (a strong teacher), more of the per-step
            share the more often it does. Needs ``agreement_smoothing > 0`` unless ``"off"``.
        agreement_lag: ``True`` (round 14 of the suite; with an agreement rule): the rule uses
            the *previous* step's agreement ``max(c, 0)`` (the first step its own) -- a share
            with the per-step rule's distribution and jumps that does not depend on the batch it
            weighs. It gives up a promise of the per-step rule: after an agreeing step, a step
            whose others point against the anchor still gets a share, so the update can
            conflict with the anchor. Not with ``agreement_smoothing``.
        share_growth: ``True`` (round 26 of the suite; with an agreement rule): the others'
            share has its odds multiplied by how much their gradient has grown against the
            anchor's since the start, ``rho_avg / rho_0`` with ``rho = ||sum_j g_j|| /
            ||g_anchor||`` (:func:`rest_norm_ratio`), ``rho_avg`` its moving average (decay
            ``SHARE_GROWTH_SMOOTHING``) and ``rho_0`` its mean over the first
            ``SHARE_GROWTH_START`` steps (nothing changes on those): the course a fixed weight's
            share follows over a run (its odds are ``a rho / (1 - a)``), started from the
            agreement share instead of a weight. A teacher whose gradient stays large while
            the labels are fit keeps its say late in the run instead of losing it with the
            cosine. Scale-free: a ratio of ratios. Combined with :meth:`set_trust` as
            independent odds. Default ``False``.
        relative_start: ``True`` (round 27 of the suite, not adopted; with an agreement rule, not
            with ``share_growth``): after the first ``SHARE_GROWTH_START`` steps (nothing changes
            on those), a run whose ratio of relative gradients there -- ``(||sum_j g_j|| / sum_j
            L_j) / (||g_anchor|| / L_anchor)`` -- averaged at least ``RELATIVE_START_PIVOT`` gives
            the others, instead of the agreement share, a fixed weight's share ``a (rho / rho_0) /
            ((1 - a) + a rho / rho_0)`` (``a = RELATIVE_START_WEIGHT``, ``rho``
            :func:`rest_norm_ratio`, ``rho_0`` its mean over those steps), until the anchor's or
            the others' loss passes ``RELATIVE_START_GUARD`` times its mean there; from then on the
            agreement share. In KD: a teacher whose softened outputs are close to the student's
            first ones (in the suite, the weak teachers) gets about a tenth of the update, growing
            as a = 0.1's does. Scale-free. Default ``False``.
        regularization, smoothing, step_bound: measured and off by default, see docs/mokd.md
            ("Other options measured").
        anchor: the objective (name or index) whose raw gradient norm the ``"anchor"`` rule
            keeps; default the first objective (put the task loss first).
        simplex: clip ``pi`` to the simplex (default). ``False`` is the paper's literal
            formula, kept for ablations; it trailed the clipped weights in our measurements.
        backend: min-norm solver backend (``mokd_optim.solvers.min_norm``).

    Evidence from outside the gradients: :meth:`set_trust` (in KD, the teacher's record
    against the student on the labels, :class:`mokd_optim.kd.TeacherTrust`) weighs the
    agreement share by how often the others are right where they disagree with the anchor;
    measured in round 8 and not used unless called.

    Invariance: multiplying any loss by ``c > 0`` leaves the direction unchanged under every
    rule; the whole update is unchanged under ``"log"`` (for any loss) and under ``"anchor"``
    (for a loss that is not the anchor). Under ``"log"`` the update is never longer than the
    shortest log-gradient ``||g_i|| / L_i`` (it is the min-norm point of their hull). Needs
    strictly positive losses.
    """

    name = "mokd"
    log_losses = True

    def __init__(
        self,
        step: str = "capped-log-anchor",
        anchor: Union[int, str] = 0,
        simplex: bool = True,
        backend: str = "auto",
        regularization: float = 0.0,
        smoothing: float = 0.0,
        equalize: Optional[float] = None,
        step_bound: Optional[float] = None,
        anchor_vs_rest: Optional[bool] = None,
        rest: str = "sum",
        conflict: Optional[str] = None,
        lengthen: Union[bool, str] = False,
        agreement_smoothing: Optional[float] = None,
        agreement_gate: Optional[str] = None,
        agreement_lag: bool = False,
        share_growth: bool = False,
        relative_start: bool = False,
    ) -> None:
        super().__init__()
        if equalize is None:  # 1 (the default) with simplex weights; the paper's formula has none
            equalize = 1.0 if simplex else 0.0
        if anchor_vs_rest is None:  # on (the default) with simplex weights, as equalize
            anchor_vs_rest = bool(simplex)
        if conflict is None:  # the agreement share (the default) with simplex weights
            conflict = "agreement" if simplex else "pareto"
        if agreement_smoothing is None:  # the run's mean agreement (round 22) with that share
            agreement_smoothing = (
                DEFAULT_AGREEMENT_SMOOTHING
                if conflict in AGREEMENT_RULES and not agreement_lag
                else 0.0
            )
        if agreement_gate is None:  # the average on every step, conflicting ones too (round 22)
            agreement_gate = "off"
        if step not in STEP_RULES:
            raise ValueError(f"mokd: unknown step rule {step!r}; choose one of {STEP_RULES}")
        if not isinstance(anchor, (int, str)) or isinstance(anchor, bool):
            raise OptionError(f"mokd: anchor must be an objective name or index, got {anchor!r}")
        check_flag("mokd", "simplex", simplex)
        check_choice("mokd", "backend", backend, BACKENDS)
        check_number("mokd", "regularization", regularization, low=0.0)
        check_number("mokd", "smoothing", smoothing, low=0.0, high=1.0, high_open=True)
        check_number("mokd", "equalize", equalize, low=0.0, high=1.0)
        check_flag("mokd", "anchor_vs_rest", anchor_vs_rest)
        check_choice("mokd", "rest", rest, REST_RULES)
        check_choice("mokd", "conflict", conflict, CONFLICT_RULES)
        _check_lengthen(step, lengthen)
        check_number(
            "mokd", "agreement_smoothing", agreement_smoothing, low=0.0, high=1.0, high_open=True
        )
        check_choice("mokd", "agreement_gate", agreement_gate, AGREEMENT_GATES)
        check_flag("mokd", "agreement_lag", agreement_lag)
        check_flag("mokd", "share_growth", share_growth)
        check_flag("mokd", "relative_start", relative_start)
        for name, used in (
            ("agreement_smoothing", agreement_smoothing > 0),
            ("agreement_lag", agreement_lag),
            ("share_growth", share_growth),
            ("relative_start", relative_start),
        ):
            if used and conflict not in AGREEMENT_RULES:
                raise OptionError(
                    f"mokd: {name} needs conflict in {AGREEMENT_RULES}, not {conflict!r}"
                )
        if agreement_lag and agreement_smoothing > 0:
            raise OptionError("mokd: agreement_lag and agreement_smoothing exclude each other")
        if relative_start and share_growth:
            raise OptionError("mokd: relative_start and share_growth exclude each other")
        if agreement_gate != "off" and not agreement_smoothing > 0:
            raise OptionError(
                f"mokd: agreement_gate={agreement_gate!r} needs agreement_smoothing > 0"
            )
        if step_bound is not None:
            check_number("mokd", "step_bound", step_bound, low=1.0)
        if not simplex and (
            regularization > 0
            or smoothing > 0
            or equalize > 0
            or anchor_vs_rest
            or conflict != "pareto"
        ):
            raise ValueError(
                "mokd: regularization, smoothing, equalize, anchor_vs_rest and conflict need "
                "simplex=True"
            )
        self.step = step
        self.anchor = anchor
        self.simplex = simplex
        self.backend = backend
        self.regularization = float(regularization)
        self.smoothing = float(smoothing)
        self.equalize = float(equalize)
        self.step_bound = None if step_bound is None else float(step_bound)
        self.anchor_vs_rest = bool(anchor_vs_rest)
        self.rest = rest
        self.conflict = conflict
        self.lengthen = lengthen
        self.agreement_smoothing = float(agreement_smoothing)
        self.agreement_gate = agreement_gate
        self.agreement_lag = bool(agreement_lag)
        self.share_growth = bool(share_growth)
        self.relative_start = bool(relative_start)
        self._anchor_index = 0
        # Moving average of the anchor gradient's norm (step_bound) and its step count.
        self._anchor_average: Optional[Tensor] = None
        self._anchor_count = 0
        # Moving average of the normalised log-Gram matrix (smoothing > 0) and its step count.
        self._average: Optional[Tensor] = None
        self._count = 0
        # Moving average of the agreement max(c, 0) (agreement_smoothing > 0; stacked with the
        # fraction of agreeing steps for agreement_gate="agreeing-mean"; the last step's value
        # for agreement_lag) and its count.
        self._agreement_average: Optional[Tensor] = None
        self._agreement_count = 0
        # lengthen="while-short": the moving average of -cos(g_anchor, last parameter change),
        # its count, and the optimizer's report for the coming weighting (observe_previous_step).
        self._short_average: Optional[Tensor] = None
        self._short_count = 0
        self._previous_step: Optional[tuple[Tensor, Tensor]] = None
        # lengthen="hypergradient": [log m, largest learning rate seen, last learning rate]
        # (float64; nan before the first) and its step count; the coming step's learning rate.
        self._hyper_average: Optional[Tensor] = None
        self._hyper_count = 0
        self._learning_rate: Optional[float] = None
        # share_growth: [sum and count of the usable norm ratios of the first SHARE_GROWTH_START
        # steps, moving average of the norm ratio (nan before the first usable one)] and the
        # step count.
        self._growth_average: Optional[Tensor] = None
        self._growth_count = 0
        # relative_start: [sum and count of the usable relative ratios, sum and count of the
        # usable norm ratios, sums of the anchor's and the others' losses over the first
        # SHARE_GROWTH_START steps, chosen (1 / 0; nan before the decision), reverted (1 / 0)]
        # and the step count.
        self._relative_average: Optional[Tensor] = None
        self._relative_count = 0
        # Evidence that the others are right where they disagree with the anchor (set_trust).
        self._trust: Optional[float] = None

    def set_trust(self, trust: Optional[float]) -> None:
        """Weigh the agreement share by ``trust``, the probability (in ``[0, 1]``) that the
        objectives other than the anchor are right where they and the anchor disagree -- in KD,
        :attr:`mokd_optim.kd.TeacherTrust.value` -- combined with the cosine as independent
        odds (:func:`weigh_by_trust`): ``1/2`` changes nothing, more gives the others a larger
        share, less a smaller one. Kept for the following steps until set again; ``None``
        drops it. Not part of :meth:`state_dict` (the caller's tracker holds it).

        Raises:
            ValueError: ``trust`` outside ``[0, 1]`` or not finite, or ``conflict`` is not
                ``"agreement"`` / ``"scaled"`` (the other rules have no share to weigh).
        """
        if trust is None:
            self._trust = None
            return
        if self.conflict not in AGREEMENT_RULES:
            raise ValueError(
                f"mokd: set_trust needs conflict in {AGREEMENT_RULES}, not {self.conflict!r}"
            )
        value = float(trust)
        if not 0.0 <= value <= 1.0:  # also rejects nan
            raise ValueError(f"mokd: trust must be in [0, 1], got {trust!r}")
        self._trust = value

    @property
    def trust(self) -> Optional[float]:
        """The evidence given to :meth:`set_trust` (``None``: none)."""
        return self._trust

    @property
    def scale_invariance(self) -> str:  # type: ignore[override]
        # "log" and "log-anchor" depend on the losses only through log L_i: rescaling any loss
        # changes nothing. The other rules keep the direction; "anchor", "bounded" and
        # "capped-log-anchor" keep the update unless the anchor itself is rescaled.
        return "update" if self.step in ("log", "log-anchor") else "direction"

    @property
    def conflict_free(self) -> bool:  # type: ignore[override]
        # The unclipped formula can give an objective a negative weight; the regularised or
        # smoothed weights are not the min-norm point of this step's gradients; anchor_vs_rest
        # with more than two objectives promises no conflict with the anchor and the others'
        # min-norm point only (for two it is the plain min-norm point).
        return self._pareto

    @property
    def pareto_stationary(self) -> bool:  # type: ignore[override]
        # anchor_vs_rest (K > 2) can step where the anchor and one other objective cancel;
        # every conflict rule but "pareto" steps along the anchor where the
        # others cancel it
        return self._pareto

    @property
    def _pareto(self) -> bool:
        """Whether the step is a min-norm (Pareto) point of this step's gradients."""
        return (
            self.simplex
            and self.regularization == 0
            and self.smoothing == 0
            and not self._grouped
            and self.conflict == "pareto"
        )

    @property
    def _grouped(self) -> bool:
        """``anchor_vs_rest`` changes the trade-off: more than two objectives, or not yet bound."""
        return self.anchor_vs_rest and len(self.objective_names) != 2

    @property
    def permutation_equivariant(self) -> bool:  # type: ignore[override]
        # anchor_vs_rest singles out the anchor among more than two objectives
        return not self._grouped

    def bind(self, names: Any) -> None:
        super().bind(names)
        if not self.simplex and len(self.objective_names) != 2:
            raise ValueError(
                "mokd: simplex=False (the paper's unclipped formula) is defined for two objectives only"
            )
        self._anchor_index = self.resolve_objective(self.anchor, "anchor")

    def _trade_off(self, gram: PSDMatrix, losses: Tensor) -> Optional[Weights]:
        """``pi`` from the moving average of the normalised log-Gram matrix (``smoothing > 0``),
        else ``None`` (solved from this step's matrix). Bias-corrected like Adam's moments."""
        if self.smoothing == 0:
            return None
        current = normalized_log_gram(gram, losses)
        if self._average is not None and self._average.shape != current.shape:
            self._average, self._count = None, 0  # the objectives changed: start afresh
        self._average, self._count, average = _moving_average(
            self._average, self._count, current, self.smoothing
        )
        return trade_off(
            average,
            regularization=self.regularization,
            equalize=self.equalize,
            backend=self.backend,
            anchor_vs_rest=self.anchor_vs_rest,
            anchor=self._anchor_index,
            rest=self.rest,
        )

    def _bound_step(self, w: Weights, gram: PSDMatrix) -> Weights:
        """Shrink ``w`` so that the update is at most ``step_bound`` times the moving average
        (decay ``STEP_BOUND_DECAY``, bias-corrected) of the anchor gradient's norm."""
        if self.step_bound is None:
            return w
        anchor_norm = gram[self._anchor_index, self._anchor_index].clamp_min(0.0).sqrt()
        self._anchor_average, self._anchor_count, average = _moving_average(
            self._anchor_average, self._anchor_count, anchor_norm, STEP_BOUND_DECAY
        )
        limit = self.step_bound * average
        norm = (w @ gram @ w).clamp_min(0.0).sqrt()
        factor = torch.where(norm > limit, limit / norm.clamp_min(1e-300), torch.ones_like(norm))
        return w * factor

    def _smooth_agreement(self, agreement: Tensor) -> Tensor:
        """The agreement the rule uses instead of this step's ``a = max(c, 0)``: the moving
        average (decay ``agreement_smoothing``, bias-corrected) of ``a`` up to this step
        (round 12), or under ``agreement_gate`` (round 13) 0 where ``a = 0`` and otherwise
        that average (``"mean"``) or the average over the agreeing steps only
        (``"agreeing-mean"``: the ratio of the moving averages of ``a`` and of ``[a > 0]``,
        whose bias corrections cancel), or (``"blend"``, round 17) ``(1 - f) m + f a`` with ``m``
        that average and ``f`` the moving average of ``[a = 0]``, the fraction of conflicting
        steps. On the device: no host read."""
        agrees = agreement > 0
        value = agreement
        if self.agreement_gate == "agreeing-mean":
            value = torch.stack((agreement, agrees.to(agreement)))
        elif self.agreement_gate == "blend":
            value = torch.stack((agreement, (~agrees).to(agreement)))
        self._agreement_average, self._agreement_count, average = _moving_average(
            self._agreement_average, self._agreement_count, value, self.agreement_smoothing
        )
        if self.agreement_gate == "agreeing-mean":
            fraction = average[1]
            average = average[0] / torch.where(fraction > 0, fraction, 1.0)
        if self.agreement_gate == "blend":
            conflicts = average[1]
            return (1.0 - conflicts) * average[0] + conflicts * agreement
        if self.agreement_gate == "off":
            return average
        return torch.where(agrees, average, torch.zeros_like(average))

    @property
    def needs_previous_step(self) -> bool:
        """``lengthen="while-short"`` and ``"hypergradient"`` read the optimizer's last
        parameter change."""
        return self.lengthen in PREVIOUS_STEP_RULES

    def observe_previous_step(self, products: Tensor, change_sq_norm: Tensor) -> None:
        """Keep ``<g_i, delta>`` and ``||delta||^2`` for this step's weighting (see
        :meth:`Method.observe_previous_step`); only the ``lengthen`` rules in
        ``PREVIOUS_STEP_RULES`` read them."""
        self._previous_step = (products, change_sq_norm)

    def observe_learning_rate(self, lr: Optional[float]) -> None:
        """Keep the coming step's learning rate for ``lengthen="hypergradient"``."""
        self._learning_rate = lr

    def _hypergradient_factor(self, w: Weights, gram: Tensor) -> Tensor:
        """``lengthen="hypergradient"`` (round 20): the factor ``m`` on this step's weights
        ``w`` (0-d). ``s = -cos(d, delta)``, ``d = sum_i w_i g_i`` this step's direction and
        ``delta`` the optimizer's previous parameter change, moves ``log m`` by
        ``HYPERGRADIENT_RATE * s`` within ``[0, log HYPERGRADIENT_CEILING]``; a positive move
        only while the learning rate is at least ``HYPERGRADIENT_PEAK`` of the largest seen
        and not above the last step's (always, when the optimizer has none). No move before
        the first parameter change, for a zero direction or change, or for a non-finite ``s``
        (an AMP overflow). On the device; the learning rate (a host float) is written there by a
        fill, not copied."""
        observed, self._previous_step = self._previous_step, None
        lr, self._learning_rate = self._learning_rate, None
        state = self._hyper_average
        if state is None:
            state = torch.tensor([0.0, 0.0, float("nan")], dtype=gram.dtype, device=gram.device)
        log_m, largest, last = state.to(gram).unbind()
        grows = torch.ones((), dtype=torch.bool, device=gram.device)
        if lr is not None:
            # torch.full, not torch.tensor: a fill on the device, not a blocking copy from the host
            rate = torch.full((), lr, dtype=gram.dtype, device=gram.device)
            rising = torch.isfinite(last) & (rate > last)
            largest = torch.maximum(largest, rate)
            grows = ~rising & (rate >= HYPERGRADIENT_PEAK * largest)
            last = rate
        if observed is not None:
            products, change_sq_norm = (t.to(gram) for t in observed)
            move = HYPERGRADIENT_RATE * _descent_cosine(w @ products, w @ gram @ w, change_sq_norm)
            move = torch.where(torch.isfinite(move) & ((move < 0) | grows), move, 0.0)
            log_m = (log_m + move).clamp(0.0, math.log(HYPERGRADIENT_CEILING))
        self._hyper_average = torch.stack((log_m, largest, last))
        self._hyper_count += 1
        return log_m.exp()

    def _short_gate(self, gram: Tensor) -> Tensor:
        """``lengthen="while-short"`` (round 19): 1 while the moving average (decay
        ``AGREEMENT_SMOOTHING``, bias-corrected) of ``s = -cos(g_anchor, delta)`` -- this step's
        anchor gradient against the optimizer's previous parameter change ``delta`` -- is
        positive, else 0. ``s > 0``: the anchor's loss still falls along the last step, which
        was too short for it; ``s < 0``: the step overshot. Each step adds this step's ``s``
        (none before the first parameter change, or when the optimizer did not report one; a
        non-finite ``s`` -- an AMP overflow -- leaves the average as it was). 0-d, on the
        device: no host read."""
        observed, self._previous_step = self._previous_step, None
        if observed is not None:
            products, change_sq_norm = (t.to(gram) for t in observed)
            anchor = self._anchor_index
            short = _descent_cosine(products[anchor], gram[anchor, anchor], change_sq_norm)
            previous = self._short_average
            average, count, _ = _moving_average(
                previous, self._short_count, short, AGREEMENT_SMOOTHING
            )
            finite = torch.isfinite(short)
            kept = torch.zeros_like(short) if previous is None else previous.to(short)
            self._short_average = torch.where(finite, average, kept)
            self._short_count = count
        if self._short_average is None:
            return torch.zeros((), dtype=gram.dtype, device=gram.device)
        corrected = self._short_average / (1 - AGREEMENT_SMOOTHING**self._short_count)
        return (corrected > 0).to(gram)

    def _lag_agreement(self, agreement: Tensor) -> Tensor:
        """The previous step's agreement ``max(c, 0)`` (this step's on the first), which the
        agreement rule then uses (round 14); this step's is kept for the next. Stored like the
        moving averages (an average with decay 0 is the last value). On the device."""
        previous = self._agreement_average
        self._agreement_average, self._agreement_count, _ = _moving_average(
            previous, self._agreement_count, agreement, 0.0
        )
        return agreement if previous is None else previous.to(agreement)

    def _growth_trust(self, gram: Tensor) -> Optional[Tensor]:
        """``share_growth`` (round 26): the evidence (0-d, in ``(0, 1)``) whose odds are ``g =
        rho_avg / rho_0``, for :func:`weigh_by_trust`: this step's norm ratio ``rho``
        (:func:`rest_norm_ratio`) enters the moving average (decay ``SHARE_GROWTH_SMOOTHING``,
        started at the first usable ratio) and, on the first ``SHARE_GROWTH_START`` steps, the
        start's mean ``rho_0``. ``None`` (no evidence) on those first steps; ``1/2`` (odds 1)
        while no usable start is known. A ratio that is not finite and positive (a zero
        gradient, an AMP overflow) leaves both as they were. On the device: no host read."""
        rho = rest_norm_ratio(gram, self._anchor_index)
        usable = torch.isfinite(rho) & (rho > 0)
        state = self._growth_average
        if state is None:
            state = torch.tensor([0.0, 0.0, float("nan")], dtype=gram.dtype, device=gram.device)
        start_sum, start_count, average = state.to(gram).unbind()
        self._growth_count += 1
        if self._growth_count <= SHARE_GROWTH_START:
            start_sum = torch.where(usable, start_sum + rho, start_sum)
            start_count = torch.where(usable, start_count + 1, start_count)
        moved = torch.where(
            torch.isfinite(average),
            SHARE_GROWTH_SMOOTHING * average + (1 - SHARE_GROWTH_SMOOTHING) * rho,
            rho,
        )
        average = torch.where(usable, moved, average)
        self._growth_average = torch.stack((start_sum, start_count, average))
        if self._growth_count <= SHARE_GROWTH_START:
            return None
        start = start_sum / torch.where(start_count > 0, start_count, 1.0)
        known = (start > 0) & torch.isfinite(average)
        growth = torch.where(known, average / torch.where(known, start, 1.0), 1.0)
        return growth / (1.0 + growth)

    def _relative_course(self, gram: Tensor, losses: Tensor) -> Optional[tuple[Tensor, Tensor]]:
        """``relative_start``: ``(active, share)`` for this step (0-d each; ``active`` 1 where
        the run takes the fixed weight's course, ``share`` that course's share), or ``None``
        on the first ``SHARE_GROWTH_START`` steps, which it measures: the mean ratio of
        relative gradients, the mean norm ratio ``rho_0`` and each side's mean loss. A ratio
        that is not finite and positive (a zero gradient, an AMP overflow) is left out. The
        decision is taken once, after those steps; the guard reverts for good. On the device:
        no host read."""
        anchor = self._anchor_index
        rho = rest_norm_ratio(gram, anchor)
        anchor_loss = losses[anchor]
        rest_loss = losses.sum() - anchor_loss
        relative = _relative_ratio_of(rho, anchor_loss, rest_loss)
        usable_rho = torch.isfinite(rho) & (rho > 0)
        usable = usable_rho & torch.isfinite(relative) & (rest_loss > 0)
        state = self._relative_average
        if state is None:
            state = torch.zeros(8, dtype=gram.dtype, device=gram.device)
            state[6] = float("nan")
        state = state.to(gram).clone()
        self._relative_count += 1
        if self._relative_count <= SHARE_GROWTH_START:
            state[0] = torch.where(usable, state[0] + relative, state[0])
            state[1] = torch.where(usable, state[1] + 1, state[1])
            state[2] = torch.where(usable_rho, state[2] + rho, state[2])
            state[3] = torch.where(usable_rho, state[3] + 1, state[3])
            state[4] = state[4] + anchor_loss
            state[5] = state[5] + rest_loss
            if self._relative_count == SHARE_GROWTH_START:
                mean = state[0] / torch.where(state[1] > 0, state[1], 1.0)
                state[6] = ((state[1] > 0) & (mean >= RELATIVE_START_PIVOT)).to(gram)
            self._relative_average = state
            return None
        starts = state[4:6] / SHARE_GROWTH_START
        risen = (anchor_loss > RELATIVE_START_GUARD * starts[0]) | (
            rest_loss > RELATIVE_START_GUARD * starts[1]
        )
        state[7] = torch.where(state[6] > 0, torch.maximum(state[7], risen.to(gram)), state[7])
        self._relative_average = state
        rho_start = state[2] / torch.where(state[3] > 0, state[3], 1.0)
        known = usable_rho & (rho_start > 0)
        grown = torch.where(known, rho / torch.where(known, rho_start, 1.0), 1.0)
        weight = RELATIVE_START_WEIGHT
        share = weight * grown / ((1.0 - weight) + weight * grown)
        active = (state[6] > 0) & (state[7] == 0)
        return active, share

    def _combined_trust(self, gram: Tensor) -> Optional[Tensor]:
        """The evidence the agreement rule weighs its share by: :meth:`set_trust`'s and
        ``share_growth``'s combined as independent odds, either alone, or ``None``."""
        given = (
            None
            if self._trust is None
            else torch.full((), self._trust, dtype=gram.dtype, device=gram.device)
        )
        grown = self._growth_trust(gram) if self.share_growth else None
        if given is None or grown is None:
            return grown if given is None else given
        return weigh_by_trust(given, grown)

    def _agreement_map(self) -> Optional[Callable[[Tensor], Tensor]]:
        """What the agreement rule applies to this step's agreement: the moving average
        (``agreement_smoothing``), the previous step's (``agreement_lag``), or nothing."""
        if self.agreement_smoothing > 0:
            return self._smooth_agreement
        return self._lag_agreement if self.agreement_lag else None

    def _share_map(self, gram: Tensor, losses: Tensor) -> Optional[Callable[[Tensor], Tensor]]:
        """:meth:`_agreement_map`, or with ``relative_start`` a map that gives the fixed weight's
        share where the run takes its course (:meth:`_relative_course`) and the agreement map's
        value elsewhere -- which still sees every step, so a reverted run resumes the average
        it would have had."""
        base = self._agreement_map()
        if not self.relative_start:
            return base
        course = self._relative_course(gram, losses)
        if course is None:
            return base
        active, share = course

        def relative(agreement: Tensor) -> Tensor:
            value = agreement if base is None else base(agreement)
            return torch.where(active, share.to(value), value)

        return relative

    def weights(self, gram: Optional[PSDMatrix], losses: Tensor) -> Weights:
        if gram is None:
            raise ValueError("mokd needs the Gram matrix of the per-objective gradients")
        gram, losses = as_work(gram), as_work(losses)
        w, pi = mokd_weights(
            gram,
            losses,
            step=self.step,
            anchor=self._anchor_index,
            simplex=self.simplex,
            backend=self.backend,
            regularization=self.regularization,
            equalize=self.equalize,
            pi=self._trade_off(gram, losses),
            anchor_vs_rest=self.anchor_vs_rest,
            rest=self.rest,
            conflict=self.conflict,
            trust=self._combined_trust(gram),
            lengthen=False if self.lengthen == "hypergradient" else self.lengthen,
            agreement_average=self._share_map(gram, losses),
            lengthen_gate=self._short_gate(gram) if self.lengthen == "while-short" else None,
        )
        self.info = {"simplex_weights": pi}
        if self.lengthen == "hypergradient":
            factor = self._hypergradient_factor(w, gram)
            w = w * factor
            self.info["length_factor"] = factor
        return self._bound_step(w, gram)

    #: The method's moving averages: the prefix of their ``state_dict`` keys
    #: (``<prefix>average``, ``<prefix>count``) and the attribute holding each part.
    _MOVING_AVERAGES = (
        ("", "_average", "_count"),
        ("anchor_", "_anchor_average", "_anchor_count"),
        ("agreement_", "_agreement_average", "_agreement_count"),
        ("short_", "_short_average", "_short_count"),
        ("hyper_", "_hyper_average", "_hyper_count"),
        ("growth_", "_growth_average", "_growth_count"),
        ("relative_", "_relative_average", "_relative_count"),
    )

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for prefix, average, count in self._MOVING_AVERAGES:
            if getattr(self, average) is not None:
                state[f"{prefix}average"] = getattr(self, average).clone()
                state[f"{prefix}count"] = getattr(self, count)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        known = {
            f"{prefix}{part}"
            for prefix, _, _ in self._MOVING_AVERAGES
            for part in ("average", "count")
        }
        if set(state) - known:
            raise ValueError(
                f"mokd: unexpected method state keys {sorted(set(state) - known)}; expected {sorted(known)}"
            )
        if any(
            (f"{prefix}average" in state) != (f"{prefix}count" in state)
            for prefix, _, _ in self._MOVING_AVERAGES
        ):
            raise ValueError(f"mokd: incomplete method state {sorted(state)}")
        for prefix, average, count in self._MOVING_AVERAGES:
            saved = state.get(f"{prefix}average")
            setattr(self, average, None if saved is None else saved.clone())
            setattr(self, count, int(state.get(f"{prefix}count", 0)))

    def options(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "anchor": self.anchor,
            "simplex": self.simplex,
            "backend": self.backend,
            "regularization": self.regularization,
            "smoothing": self.smoothing,
            "equalize": self.equalize,
            "step_bound": self.step_bound,
            "anchor_vs_rest": self.anchor_vs_rest,
            "rest": self.rest,
            "conflict": self.conflict,
            "lengthen": self.lengthen,
            "agreement_smoothing": self.agreement_smoothing,
            "agreement_gate": self.agreement_gate,
            "agreement_lag": self.agreement_lag,
            "share_growth": self.share_growth,
            "relative_start": self.relative_start,
        }
