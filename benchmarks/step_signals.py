"""Signals in the default ``mokd``'s steps that a rule could act on, measured on the condition
suite's runs: does a step overshoot (the same-batch ratio), and does the distillation gradient
agree with the task's on other batches (the cross-batch agreement)?

**The same-batch ratio.** The default step rule (``step="capped-log-anchor"``) shortens every
step by ``1 / L_task`` while the task loss is above 1: a built-in warm-up that keeps the default
alive at 3x the cross-entropy-best learning rate and costs it at 0.3x (docs/mokd.md, the
learning-rate done-point). Rounds 10 and 19 found no signal that tells a too-low rate from a
too-high one in the first hundred steps, where that warm-up acts. This one is a candidate:

    ratio = (L(theta_t; B_t) - L(theta_t+1; B_t)) / -<g(theta_t; B_t), theta_t+1 - theta_t>

the loss drop of a step on the batch it was computed on, over the drop its first-order model
predicts (the Armijo ratio of line searches; Vaswani et al., "Painless stochastic gradient",
NeurIPS 2019). Near 1 the step is in the loss's linear regime (it could be longer); 1/2 is the
best step along a quadratic; below 1/2 the step overshoots. It is scale-free (a ratio of loss
changes) and needs one forward pass after the step on the same batch. Two forms are measured:
on the task loss (its own gradient, one extra backward pass) and on the weighted surrogate
``sum_i w_i L_i`` the step descends (``-<grad, delta>`` with the combined gradient the optimizer
wrote: what a library could compute without keeping the task gradient). ``--gates`` runs the
conditions as declared with the warm-up cap released by the surrogate ratio
(:class:`RatioGate`) and prints the final accuracy against the default on the same seeds.

**The cross-batch agreement.** The default's share for the distillation side is its cosine with
the task gradient on the same batch. Both gradients are computed on the same samples, so part
of that agreement may be the batch's own; ``cos(g_task(t+1), g_rest(t))`` -- the next batch's
task gradient against this batch's distillation gradient -- is free of it, and
``cos(g_task(t+1), g_task(t))`` is the same for the task's own gradient. ``--agreement`` prints
both per condition next to the best fixed weight of the suite's stored runs, and how well each
ranks the conditions by that weight (Spearman).

**The descent signal.** ``s = -cos(d_t, x_t - x_{t-1})``, this step's update direction against
the previous parameter change, is logged by quarter on every gate run; ``--gates hyper`` acts
on it by hypergradient descent on the log of a length factor (:class:`HyperLength`), the probe
behind round 20's ``MoKD(lengthen="hypergradient")`` -- the same runs to the last digit
(tested).

Every run is the suite's own (:class:`benchmarks.kd_suite.Training`, one thread per process):
with the gate ``"off"`` a run ends where ``kd_suite.train_run`` does (tested). Against the
stored default's runs of round 19's 60 selection conditions the counts were the same (37 / 60
and 56 / 60 tied or ahead of the best fixed weight / cross-entropy, one collapse) and the means
0.06 points lower: some stored runs were made with another order of the arithmetic (C131's
seeds end 1.0-1.6 points apart on 8x8 digits), so a probe is compared with ``"off"`` on its own
runs. Only a round's selection conditions can be named.

    python benchmarks/step_signals.py --measure --conditions C84,C122,C130,C90,C60,C10
    python benchmarks/step_signals.py --gates off,open,latch      # 14 conditions, 3 seeds
    python benchmarks/step_signals.py --gates off,lifted,lowered --conditions all  # the share
    python benchmarks/step_signals.py --gates off,hyper           # round 20's probe
    python benchmarks/step_signals.py --round 21 --gates off,grown-odds,layerwise --conditions all
    python benchmarks/step_signals.py --round 21 --gates off,weight-share,weight-length \
        --conditions C13,C38,C64,C94,C112,C153,S9,C142 --seeds 0-9   # a = 0.1's lead, located
    python benchmarks/step_signals.py --round 24 --after --gates off,squared,sharpened-below \
        --conditions C178,C184,C133,C38,C64,C112,C135,C146,C90,S9,C13,C142,C185,C125  # round 25
    python benchmarks/step_signals.py --round 26 --after \
        --gates off,weight-share,start-weight-share,trust-lowers,predictive-share \
        --conditions C193,C149,C194,C178,C184,C122,C90,C137,C171,C123   # (30 in docs/mokd.md)
    python benchmarks/step_signals.py --agreement --seeds 0       # every selection condition
    python benchmarks/step_signals.py --quick                     # tiny runs, for the tests
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import kd_suite  # noqa: E402
from mokd_optim.kd import TeacherTrust  # noqa: E402
from mokd_optim.methods._mokd import (  # noqa: E402
    DEFAULT_AGREEMENT_SMOOTHING,
    SHARE_GROWTH_SMOOTHING,
    SHARE_GROWTH_START,
    _moving_average,
)

#: The selection conditions of the probe after round 19 (the 0.3x and 3x ones and the recipes'
#: 1x counterparts); never a confirmation condition of a round to come.
MEASURE_CONDITIONS = ("C84", "C122", "C130", "C90", "C60", "C10")
GATE_CONDITIONS = (
    "C10", "C60", "C84", "C124",  # 0.3x the cross-entropy-best learning rate
    "S2", "C35", "C91", "C123",  # 3x
    "C122", "C90", "C130", "S9", "C47", "C106",  # 1x
)  # fmt: skip
QUICK_CONDITIONS = ("S9",)
SCALES = (0.3, 1.0, 3.0)
#: ``"off"``: the default as it is; ``"open"`` / ``"latch"``: the warm-up cap released by
#: :class:`RatioGate`; ``"lengthen"``: round 10's longer step (``1 + max(c, 0)`` times the
#: default's) after the warm-up, and inside it only as far as the open gate allows;
#: ``"uncapped"``: no warm-up cap at all (``step="anchor"``'s length: the ceiling of a release);
#: ``"lifted"`` / ``"lowered"``: not a length but a share -- the distillation side's share with
#: its odds doubled (``a' = 2a / (1 + a)``) or halved (``a' = a / (2 - a)``) by
#: :meth:`MoKD.set_trust` with a constant (:data:`SHARE_TRUST`): the probes of the strong
#: teachers whose best fixed weight gives them more of the update and the weak ones whose best
#: weight gives them less.
#: ``"grown"``: the update times ``max(1, (1 - a) + a rho / rho_0)`` after the first
#: :data:`START_STEPS` steps (:func:`grown_factor`) -- the length of the direction's mix had the
#: distillation loss kept the size relative to the task's it had at the start: longer where the
#: teacher's gradient stays large while the task's shrinks; scale-free (a ratio of ratios).
#: ``"hyper"``: the update times a multiplier that hypergradient descent on the log of the
#: step length sets (:class:`HyperLength`): it grows while each step's direction still points
#: along the previous parameter change (the step was too short to finish that descent) and
#: shrinks back towards 1 when it turns against it; it grows only while the schedule holds its
#: learning rate near its peak, so an annealing schedule is not undone.
#: ``"hyper-after"``: the same, the factor also held while the default's own warm-up cap acts
#: (the task loss above 1), as a schedule's warm-up holds it.
#: ``"grown-odds"``: a share, not a length -- the distillation side's share with its odds
#: times ``rho / rho_0`` (:func:`growth_trust`), ``rho`` a moving average of the norm ratio and
#: ``rho_0`` its mean over the first steps: the odds a fixed weight's share moves by over a run
#: (``a rho / (1 - a)``), kept scale-free by measuring the ratio against its own start.
#: ``"grown-odds-capped"`` (after round 26): the same odds, the share never above the highest
#: agreement share the default's moving average has reached in the run so far
#: (:func:`capped_growth_trust`) -- a weak teacher's early say restored late in a run, never
#: the whole step (round 26's ``share_growth`` gave C171's teacher all of it at 3x and 6 of 10
#: seeds collapsed).
#: ``"layerwise"``: the default's rule applied to each parameter tensor on its own -- each
#: tensor's distillation share the moving average of its own cosine ``max(c_p, 0)`` (no share on
#: a step where ``c_p <= 0``), its part of the update as long as its task gradient times the
#: default's length factor ``min(1, 1 / L_task)`` (:class:`LayerwiseShare`): where the layers
#: disagree, the teacher keeps its say in those that agree.
#: ``"weight-share"`` / ``"weight-length"``: diagnostics, not rules (they read the losses'
#: units): the update with the distillation share a fixed weight ``a`` (:data:`DIAGNOSTIC_WEIGHT`)
#: gives on this step, ``a rho / ((1 - a) + a rho)``, on every step (conflicting ones too) at the
#: default's length; or the default's direction at that weight's length ``|(1 - a) g_task + a
#: g_rest|`` (:func:`weight_update`). Which of the two a fixed weight's lead comes from.
#: ``"start-weight-share"`` (after round 26): ``"weight-share"`` made scale-free -- the share a
#: fixed weight ``a`` gives with the norm ratio measured against the run's start, ``a (rho /
#: rho_0) / ((1 - a) + a rho / rho_0)``, ``rho_0`` the mean ratio of the first
#: :data:`START_STEPS` steps (of those seen so far before then), at the default's length on
#: every step: the course of a = 0.1's share, in units the losses' scale does not change.
#: ``"trust-lowers"`` (after round 26): round 8's teacher record on the labels
#: (:class:`mokd_optim.kd.TeacherTrust`, updated with the student's predictions after each step)
#: allowed only to lower the share: trust ``min(t, 1/2)`` -- the default's share until the student
#: wins more disagreements than the teacher, less after; never round 8's early lift or a
#: share of 1.
#: ``"predictive-share"`` (after round 26): the share of :class:`PredictiveShare` -- the mix of
#: the task's and the distillation side's unit gradients that best predicts the next batch's
#: task gradient, from the run's average cross-batch cosines -- at the default's length; the
#: default's own step on the first step, before any cross-batch cosine.
#: ``"predictive-share-10"`` / ``"predictive-share-50"``: the same prediction of the task
#: gradient 10 or 50 steps later (:data:`PREDICTION_HORIZONS`) instead of the next step's: a
#: longer horizon for what a share does to the run; the default's own step until then.
#: ``"predictive-share-first-epoch"`` (after round 26): ``"predictive-share"`` with its cosines
#: averaged over the first epoch only (:data:`FIRST_EPOCH_GATES`) -- from the second epoch on the
#: next batch has been trained on, so its task gradient no longer tells how the update
#: generalises; the share is held at its first-epoch value from then on.
#: ``"held-out-share"`` (after round 26): the same share from batches never trained on -- the
#: last :data:`HELD_OUT_FRACTION` of the training images are held out (the student trains on
#: the rest, the baselines on all) and each step's task and distillation gradients are scored
#: against one held-out batch's task gradient at the same parameters (:func:`held_out_split`,
#: :func:`held_out_gradient`): the signal for the whole run, at the cost of the images.
#: ``"held-out-default"``: its control -- the default as it is on the same kept images (what
#: holding the images out costs by itself).
#: ``"relative-start"`` (stop 41): ``"start-weight-share"`` given only to a run whose ratio of
#: relative gradients at the start, ``r_0 = (|g_rest| / L_rest) / (|g_task| / L_task)`` averaged
#: over the first :data:`START_STEPS` steps (:func:`relative_ratio`; scale-free), is at least
#: :data:`RELATIVE_PIVOT` -- the distillation side's gradient as large for its loss as the
#: task's; the default's step before that decision and in every other run. Guarded: once the
#: task or the distillation loss exceeds :data:`GUARD_RISE` times its own mean over the first
#: steps (a run diverging, as low shares did at 3x), the run goes back to the default's step.
#: On the stored selection runs ``r_0`` tells the suite's weak teachers (trained on few images
#: for few epochs) from the strong ones (Spearman +0.81 over 93 conditions at 1x;
#: ``--relative-table``). Round 27's candidate ``relative_start=True`` is this rule in the library.
#: ``"relative-start-unguarded"``: the same without the guard.
#: ``"unit"``: the update handed to the base optimizer at unit norm every step (its direction
#: unchanged): for Adam-type optimizers, whose step is invariant to a constant gradient scale but
#: not to one that drifts over the run, the default's length rule without its drift.
#: ``"jitter"``: a control, not a rule (an A/A test of the suite's adoption rule): the update
#: times ``e^{+0.01}`` and ``e^{-0.01}`` on alternate steps (:func:`jitter_factor`) -- no
#: systematic change of the length (the factors' logs cancel in pairs), but enough that the
#: runs part from the default's as a real candidate's do, so its gaps to the default on the
#: selection conditions are what a rule with no effect at all scores.
GATES = (
    "off", "open", "latch", "lengthen", "uncapped", "lifted", "lowered", "grown", "hyper",
    "hyper-after", "unit", "lifted4", "lifted9", "grown-odds", "layerwise", "weight-share",
    "weight-length", "memory", "memory-open", "jitter", "squared", "sharpened-below",
    "share-growth", "grown-odds-capped", "start-weight-share", "trust-lowers", "predictive-share",
    "predictive-share-10", "predictive-share-50", "predictive-share-first-epoch", "held-out-share",
    "held-out-default", "relative-start", "relative-start-unguarded",
)  # fmt: skip
#: The library options of the gates that are plain ``MoKD`` options: a longer memory of the
#: agreement (``"memory"``: a moving average with decay 0.999, about the run's mean on the
#: suite's 250-300-step runs, the conflict gate kept; ``"memory-open"``: the same average on
#: every step, conflicting ones too); the default's share squared (``"squared"``, ``a^2``) or
#: its odds squared below 1/2 (``"sharpened-below"``), the probes before round 25; the
#: library's ``share_growth=True`` (``"share-growth"``, round 26's candidate: ``"grown-odds"``
#: computed by the library from its Gram matrix instead of by the probe).
OPTION_GATES: dict[str, dict[str, Any]] = {
    "memory": {"agreement_smoothing": 0.999, "agreement_gate": "mean"},
    "memory-open": {"agreement_smoothing": 0.999, "agreement_gate": "off"},
    "squared": {"conflict": "squared"},
    "sharpened-below": {"conflict": "sharpened-below"},
    "share-growth": {"share_growth": True},
}
#: Steps ahead whose task gradient the ``"predictive-share*"`` gates predict.
PREDICTION_HORIZONS = {
    "predictive-share": 1,
    "predictive-share-10": 10,
    "predictive-share-50": 50,
    "predictive-share-first-epoch": 1,
}
#: The ``"predictive-share*"`` gates whose cosines are averaged over the first epoch only, while
#: the batch predicted has not been trained on yet; the share is held from then on.
FIRST_EPOCH_GATES = frozenset({"predictive-share-first-epoch"})
#: The part of a run's training images that ``"held-out-share"`` keeps out of training (the last
#: ones), as the batches whose task gradient the share predicts.
HELD_OUT_FRACTION = 0.1
#: The fixed weight whose share or length the diagnostic gates ``"weight-share"`` /
#: ``"weight-length"`` hand the default (0.1: the weight most often best in the suite).
DIAGNOSTIC_WEIGHT = 0.1
#: The log of the ``"jitter"`` control's factor: the update times ``e^{+JITTER}`` and
#: ``e^{-JITTER}`` on alternate steps.
JITTER = 0.01
#: Decay of the moving average of the norm ratio that ``"grown-odds"`` compares with the start.
GROWTH_SMOOTHING = SHARE_GROWTH_SMOOTHING  # the library's round-26 option took the probe's
#: Steps whose mean norm ratio is a run's starting ratio (:func:`norm_ratio_course`, ``"grown"``).
START_STEPS = SHARE_GROWTH_START
#: ``"relative-start"``: the ratio of relative gradients at the start from which a run takes
#: the fixed weight's course (1: the distillation loss's gradient as large, for its value, as the
#: task's), and the rise of a loss over its start that sends the run back to the default's step.
RELATIVE_PIVOT = 1.0
GUARD_RISE = 2.0
#: The ``"relative-start*"`` gates.
RELATIVE_GATES = ("relative-start", "relative-start-unguarded")
#: The constant trust of the share probes: odds ``2 : 1`` (or ``1 : 2``) combined with the
#: cosine's double (halve) them; ``4 : 1`` and ``9 : 1`` (``"lifted4"``, ``"lifted9"``, probed
#: with AdamW, where the best fixed weights give the teacher 0.84-0.99 of the update).
SHARE_TRUST = {"lifted": 2 / 3, "lowered": 1 / 3, "lifted4": 0.8, "lifted9": 0.9}
#: Steps of a run whose ratio is summarised: ``(label, first, end)``; None is a quarter bound.
WINDOWS = (("0-25", 0, 25), ("25-100", 25, 100), ("q2", "q1", "q2"), ("q4", "q3", "q4"))


def armijo_ratio(actual: float, predicted: float) -> float:
    """``actual / predicted`` loss drop; NaN when the first-order model predicts no drop."""
    return actual / predicted if predicted > 0 else float("nan")


def predicted_drop(
    grads: Sequence[Optional[torch.Tensor]], params: Sequence[torch.Tensor],
    before: Sequence[torch.Tensor],
) -> float:  # fmt: skip
    """``-<g, theta_after - theta_before>`` summed over the parameters (``None`` grads skipped):
    the drop the first-order model of the loss predicts for the step just taken."""
    with torch.no_grad():
        return -sum(
            float((g * (p - b)).sum()) for g, p, b in zip(grads, params, before) if g is not None
        )


def _flat(grads: Sequence[Optional[torch.Tensor]], params: Sequence[torch.Tensor]) -> torch.Tensor:
    """One vector of ``grads`` (zeros where a parameter got none), detached."""
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).detach().reshape(-1)
            for g, p in zip(grads, params)
        ]
    )


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """``cos(a, b)``; 0 when either is zero."""
    norms = float(a.norm() * b.norm())
    return float(a @ b) / norms if norms > 0 else 0.0


def agreement_with_task(stats: Any) -> float:
    """``max(c, 0)``, ``c`` the cosine between the task's gradient and the others' part of the
    update, from a step's Gram matrix and weights (what ``MoKD(lengthen=True)`` lengthens by;
    0 without a Gram matrix or with a zero part)."""
    if stats.gram is None:
        return 0.0
    gram, others = stats.gram.double(), stats.weights.double().clone()
    others[0] = 0.0
    norms = float(gram[0, 0].clamp_min(0).sqrt() * (others @ gram @ others).clamp_min(0).sqrt())
    return max(float(others @ gram[:, 0]) / norms, 0.0) if norms > 0 else 0.0


def distillation_share(stats: Any) -> float:
    """The distillation side's share of a step's update, ``1 -`` the task's
    :func:`kd_suite.update_shares` (the suite's diagnostics' shares; the task first): for two
    objectives the
    weight of the teacher's unit gradient in the direction, the share the agreement rule sets
    (``max(c, 0)`` with the trust's odds) and the one a fixed weight ``a`` gives as ``a rho /
    ((1 - a) + a rho)``. From the weights alone (no Gram matrix) their own share."""
    if stats.gram is None:
        weights = stats.weights.double()
        total = float(weights.sum())
        return 1.0 - float(weights[0]) / total if total > 0 else 0.0
    shares = kd_suite.update_shares(stats.weights.double(), stats.gram.double())
    return 1.0 - float(shares[0]) if float(shares.sum()) > 0 else 0.0


def grown_factor(share: float, rho: float, rho_start: float, steps_seen: int) -> float:
    """``max(1, (1 - share) + share * rho / rho_start)`` once more than :data:`START_STEPS`
    norm ratios were seen (1 before, and where ``rho_start`` is not positive): the default's
    update, ``share`` of it along the distillation gradient, lengthened as that gradient grew
    against the task's since the start. ``rho = ||g_rest|| / ||g_task||`` this step,
    ``rho_start`` its mean over the first steps."""
    if steps_seen <= START_STEPS or not rho_start > 0:
        return 1.0
    return max(1.0, (1.0 - share) + share * rho / rho_start)


def growth_trust(rho_average: float, rho_start: float, steps_seen: int) -> Optional[float]:
    """The trust for :meth:`MoKD.set_trust` that multiplies the share's odds by ``g = rho_average
    / rho_start`` (``t = g / (1 + g)``), once more than :data:`START_STEPS` norm ratios were
    seen; None (no evidence) before, or where either ratio is not positive and finite."""
    if steps_seen <= START_STEPS or not (rho_start > 0 and rho_average > 0):
        return None
    growth = rho_average / rho_start
    if not math.isfinite(growth):
        return None
    return growth / (1.0 + growth)


def capped_growth_trust(
    trust: Optional[float], agreement: Optional[float], peak: float
) -> Optional[float]:
    """``"grown-odds-capped"``: the trust of :func:`growth_trust` lowered, where needed, so that
    the share it gives the agreement ``agreement`` (the default's moving average, in ``[0, 1]``)
    is at most ``peak`` (the highest that average has been): odds ``min(g, odds(peak) /
    odds(agreement))``. ``trust`` None (no evidence yet) or an agreement of 0 or 1 (which no
    finite odds move): ``trust`` unchanged. A trust that lowers the share is never changed."""
    if trust is None or agreement is None or not 0.0 < agreement < 1.0:
        return trust
    if peak >= 1.0:
        return trust
    growth = trust / (1.0 - trust) if trust < 1.0 else math.inf
    ceiling = (peak / (1.0 - peak)) / (agreement / (1.0 - agreement))
    capped = min(growth, max(ceiling, 1.0)) if growth > 1.0 else growth
    return capped / (1.0 + capped)


def lowering_trust(record: float) -> float:
    """``"trust-lowers"``: the teacher's record ``t`` as a trust that can only lower the share,
    ``min(t, 1/2)`` (1/2 leaves the agreement share unchanged)."""
    return min(record, 0.5)


def smoothed_agreement(method: Any) -> Optional[float]:
    """The agreement share the default's moving average holds after the last step (its
    bias-corrected average of ``max(c, 0)``), or None before the first; reads the method's
    state (a probe's view, not an API)."""
    average = getattr(method, "_agreement_average", None)
    count = getattr(method, "_agreement_count", 0)
    if average is None or count == 0:
        return None
    return float(average) / (1.0 - method.agreement_smoothing**count)


class LayerwiseShare:
    """The agreement share per parameter tensor (``"layerwise"``): for each tensor ``p`` the
    moving average (decay ``smoothing``, bias-corrected) of ``max(cos(t_p, r_p), 0)``, ``t_p``
    and ``r_p`` its task and distillation gradients, 0 on a step whose own cosine is ``<= 0``;
    the tensor's update ``|t_p| f ((1 - a_p) t_p / |t_p| + a_p r_p / |r_p|)``, ``f`` the
    default's length over the task gradient's."""

    def __init__(self, count: int, smoothing: float = 0.99) -> None:
        self.smoothing = smoothing
        self.count = count  # parameter tensors
        self._average: Optional[torch.Tensor] = None
        self.steps = 0
        self.shares: list[float] = []

    def update(
        self,
        task: Sequence[Optional[torch.Tensor]],
        rest: Sequence[Optional[torch.Tensor]],
        factor: float,
    ) -> list[Optional[torch.Tensor]]:
        """The per-tensor update for one step (None where the task gradient is zero or None:
        that tensor keeps the default's update, e.g. a ``SubspaceHead`` only the features
        reach). The averages are the library's (``_moving_average``), one per tensor.
        ``ValueError`` unless both lists hold one entry per tensor."""
        if len(task) != self.count or len(rest) != self.count:
            raise ValueError(
                f"one gradient per parameter tensor expected ({self.count}), got "
                f"{len(task)} task and {len(rest)} distillation gradients"
            )
        norms = [
            (float(t.norm()) if t is not None else 0.0, float(r.norm()) if r is not None else 0.0)
            for t, r in zip(task, rest)
        ]
        agreements = [
            max(float((t * r).sum()) / (t_norm * r_norm), 0.0)
            if t is not None and r is not None and t_norm > 0 and r_norm > 0
            else 0.0
            for (t, r), (t_norm, r_norm) in zip(zip(task, rest), norms)
        ]
        self._average, self.steps, corrected = _moving_average(
            self._average,
            self.steps,
            torch.tensor(agreements, dtype=torch.float64),
            self.smoothing,
        )
        shares = [s if a > 0 else 0.0 for s, a in zip(corrected.tolist(), agreements)]
        out: list[Optional[torch.Tensor]] = []
        for t, r, (t_norm, r_norm), share in zip(task, rest, norms, shares):
            if t is None or t_norm == 0:  # a head the task does not reach: the default's update
                out.append(None)
                continue
            direction = (1.0 - share) * t / t_norm
            if r is not None and r_norm > 0:
                direction = direction + share * r / r_norm
            d_norm = float(direction.norm())
            out.append(direction * (t_norm * factor / d_norm) if d_norm > 0 else direction)
        self.shares.append(statistics.mean(shares) if shares else 0.0)
        return out


def weight_update(
    task: torch.Tensor,
    rest: torch.Tensor,
    task_loss: float,
    weight: float,
    rho_start: float = 1.0,
) -> torch.Tensor:
    """``"weight-share"``'s update (flat): the unit directions of the task and distillation
    gradients mixed by the share a fixed ``weight`` gives the distillation side this step,
    ``a rho / ((1 - a) + a rho)`` with ``rho = |rest| / |task| / rho_start`` (``rho_start`` 1:
    the losses' own units; the run's starting ratio: ``"start-weight-share"``), as long as the
    default's update ``|task| min(1, 1 / L_task)`` (:func:`share_update`). Raises
    ``ValueError`` for a ``rho_start`` that is not positive."""
    if not rho_start > 0:
        raise ValueError(f"rho_start must be positive, got {rho_start}")
    task_norm, rest_norm = float(task.norm()), float(rest.norm())
    ratio = rest_norm / task_norm if task_norm > 0 else 0.0
    return share_update(task, rest, task_loss, fixed_weight_share(weight, ratio / rho_start))


def relative_ratio(task_norm: float, rest_norm: float, task_loss: float, rest_loss: float) -> float:
    """``(|g_rest| / L_rest) / (|g_task| / L_task)``: how large the distillation side's gradient
    is for its loss against the task's for its own -- unchanged when either loss is rescaled.
    ``nan`` where a norm or a loss is not positive."""
    if not (task_norm > 0 and rest_norm > 0 and task_loss > 0 and rest_loss > 0):
        return float("nan")
    return (rest_norm / rest_loss) / (task_norm / task_loss)


class RelativeSwitch:
    """The ``"relative-start*"`` decision: after :data:`START_STEPS` steps, whether the run takes
    the fixed weight's course (the mean :func:`relative_ratio` of those steps at least
    :data:`RELATIVE_PIVOT`), and -- ``guarded`` -- whether it has gone back to the default's step
    for good (a loss above :data:`GUARD_RISE` times its mean over those steps)."""

    def __init__(self, guarded: bool = True) -> None:
        self.guarded = guarded
        self.ratios: list[float] = []
        self.starts: Optional[list[float]] = None
        self.chosen: Optional[bool] = None
        self.reverted_at: Optional[int] = None
        self.steps = 0

    def observe(self, ratio: float, losses: Sequence[float]) -> bool:
        """One step's ratio and loss values (the task first, then the rest's sum); True when
        this step takes the fixed weight's course."""
        self.steps += 1
        if self.chosen is None:
            self.ratios.append(ratio)
            self.starts = (
                list(losses)
                if self.starts is None
                else [a + b for a, b in zip(self.starts, losses)]
            )
            if len(self.ratios) == START_STEPS:
                finite = [r for r in self.ratios if math.isfinite(r)]
                self.chosen = bool(finite) and statistics.mean(finite) >= RELATIVE_PIVOT
                self.starts = [total / START_STEPS for total in self.starts]
            return False
        if not self.chosen or self.reverted_at is not None:
            return False
        assert self.starts is not None
        if self.guarded and any(v > GUARD_RISE * s for v, s in zip(losses, self.starts)):
            self.reverted_at = self.steps
            return False
        return True

    @property
    def start_ratio(self) -> float:
        """The mean ratio of the first steps (``nan`` before any finite one)."""
        finite = [r for r in self.ratios if math.isfinite(r)]
        return statistics.mean(finite) if finite else float("nan")


def share_update(
    task: torch.Tensor, rest: torch.Tensor, task_loss: float, share: float
) -> torch.Tensor:
    """The update (flat) ``(1 - share) u_task + share u_rest`` of the two unit gradients, as long
    as the default's update ``|task| min(1, 1 / L_task)``. A zero task or rest gradient: the
    task's own (scaled)."""
    task_norm, rest_norm = float(task.norm()), float(rest.norm())
    length = task_norm / max(task_loss, 1.0)
    if task_norm == 0 or rest_norm == 0:
        return task / max(task_loss, 1.0)
    direction = (1 - share) * task / task_norm + share * rest / rest_norm
    return direction * (length / float(direction.norm()))


def held_out_split(
    data: kd_suite.Tensors, fraction: float = HELD_OUT_FRACTION
) -> tuple[kd_suite.Tensors, torch.Tensor, torch.Tensor]:
    """``data`` without its last ``fraction`` of training images, and those images and labels
    (at least one). The kept images keep their indices, so the teacher's outputs, indexed by
    them, still line up. Raises ``ValueError`` unless ``0 < fraction < 1``."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n = len(data.y_train)
    keep = n - max(1, round(n * fraction))
    kept = replace(data, x_train=data.x_train[:keep], y_train=data.y_train[:keep])
    return kept, data.x_train[keep:], data.y_train[keep:]


def held_out_gradient(
    student: torch.nn.Module, params: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """The flat gradient of the student's cross-entropy on a held-out batch ``(x, y)``, as the
    training step would see it (train mode) but leaving every BatchNorm running statistic as
    it was (momentum 0 for the pass)."""
    norms = [m for m in student.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        logits = student(x, features=True)[0]
        grads = torch.autograd.grad(F.cross_entropy(logits, y), params, allow_unused=True)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return _flat(grads, params)


class PredictiveShare:
    """``"predictive-share"``: the share that makes the update the best predictor of the next
    batch's task gradient. The task gradient ``u_t`` and the distillation gradient ``u_r`` of a
    batch are two estimates of the task's expected gradient: with ``a`` and ``b`` their cosines
    with the *next* batch's task gradient and ``c`` their own cosine (moving averages over the
    run, decay ``smoothing``, bias-corrected), the direction in their span closest to that
    gradient is ``x u_t + y u_r`` with ``x = a - c b`` and ``y = b - c a`` (the projection; the
    common factor ``1 / (1 - c^2)`` drops out), so the share is ``y / (x + y)``: 0 where the
    distillation gradient adds nothing the task's own does not predict better (``y <= 0``), 1
    where it predicts the task better than the task itself (``x <= 0 < y``). Cosines only:
    scale-free."""

    def __init__(self, smoothing: float = DEFAULT_AGREEMENT_SMOOTHING) -> None:
        self.smoothing = smoothing
        self.count = 0
        self._average: Optional[torch.Tensor] = None
        self._corrected = torch.zeros(3, dtype=torch.float64)

    def observe(self, task_next: float, rest_next: float, same_batch: float) -> None:
        """One step's ``a`` (``cos(g_task(t), g_task(t - 1))``), ``b`` (``cos(g_task(t),
        g_rest(t - 1))``) and ``c`` (``cos(g_task(t), g_rest(t))``), into the library's moving
        average (``mokd_optim.methods._mokd._moving_average``)."""
        value = torch.tensor([task_next, rest_next, same_batch], dtype=torch.float64)
        self._average, self.count, self._corrected = _moving_average(
            self._average, self.count, value, self.smoothing
        )

    def means(self) -> tuple[float, float, float]:
        """The bias-corrected averages ``(a, b, c)``; zeros before any step."""
        a, b, c = self._corrected.tolist()
        return a, b, c

    def share(self) -> float:
        """``y / (x + y)`` in ``[0, 1]`` (see the class); 0 with no evidence that the
        distillation gradient predicts anything (``y <= 0``, also before any step)."""
        a, b, c = self.means()
        x, y = a - c * b, b - c * a
        if y <= 0:
            return 0.0
        if x <= 0:
            return 1.0
        return y / (x + y)


def jitter_factor(step: int) -> float:
    """The ``"jitter"`` control's factor on step ``step`` (0-based): ``e^{+JITTER}`` on even
    steps, ``e^{-JITTER}`` on odd ones, so any two consecutive factors multiply to 1."""
    return math.exp(JITTER if step % 2 == 0 else -JITTER)


def _write_flat(update: torch.Tensor, params: Sequence[torch.Tensor]) -> None:
    """Write a flat update into the parameters' ``.grad`` (the layout of :func:`_flat`)."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = update[offset : offset + n].view_as(p).clone()
        offset += n


def update_factor(gate: str, task_loss: float, opening: Optional[float], agreement: float) -> float:
    """The factor a gate puts on the default's update. ``opening`` is the gate's (None on a step
    outside the warm-up, where the task loss is at or below 1), ``agreement`` ``max(c, 0)``.

    ``"off"``, ``"lifted"`` and ``"lowered"`` (a share, not a length): 1. ``"open"`` /
    ``"latch"``: ``(cap + opening (1 - cap)) / cap`` inside the warm-up, ``cap = 1 / L_task``;
    1 outside. ``"lengthen"``: ``1 + opening * agreement``
    inside, ``1 + agreement`` outside. ``"uncapped"``: ``max(L_task, 1)`` (the cap undone)."""
    if gate not in GATES:
        raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
    if gate == "uncapped":
        return max(task_loss, 1.0)
    if gate == "lengthen":
        return 1.0 + (1.0 if opening is None else opening) * agreement
    if gate in ("off", *SHARE_TRUST) or opening is None:
        return 1.0
    cap = min(1.0, 1.0 / task_loss)
    return (cap + opening * (1 - cap)) / cap


class RatioGate:
    """Releases ``step="capped-log-anchor"``'s warm-up cap as far as the steps stay linear.

    The ratio is ``EMA(actual drop) / EMA(predicted drop)`` of the weighted surrogate over the
    capped steps (decay ``decay``, the two averages share their weights, so no bias correction
    is needed); the opening is ``clip((ratio - low) / (high - low), 0, 1)``, 0 before the first
    observation. ``latch=True`` closes the gate for good once the ratio falls below ``low`` (a
    rate that overshot once gets no longer step again). The update length is
    ``cap + opening * (1 - cap)`` plain steps, ``cap = min(1, 1 / L_task)``: between the
    default's and ``step="anchor"``'s, never longer than the latter."""

    def __init__(
        self, latch: bool = False, low: float = 0.5, high: float = 0.9, decay: float = 0.9
    ) -> None:
        if not 0 <= low < high:
            raise ValueError(f"need 0 <= low < high, got low={low}, high={high}")
        if not 0 <= decay < 1:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        self.latch, self.low, self.high, self.decay = latch, low, high, decay
        self.actual = self.predicted = 0.0
        self.closed = False

    @property
    def ratio(self) -> float:
        return armijo_ratio(self.actual, self.predicted)

    def opening(self) -> float:
        ratio = self.ratio
        if self.closed or not math.isfinite(ratio):
            return 0.0
        return min(1.0, max(0.0, (ratio - self.low) / (self.high - self.low)))

    def observe(self, actual: float, predicted: float) -> None:
        """One step's drops; non-finite ones are ignored."""
        if not (math.isfinite(actual) and math.isfinite(predicted)):
            return
        self.actual = self.decay * self.actual + (1 - self.decay) * actual
        self.predicted = self.decay * self.predicted + (1 - self.decay) * predicted
        if self.latch and self.ratio < self.low:
            self.closed = True

    def length_factor(self, task_loss: float) -> float:
        """The factor on the default's update (:func:`update_factor` with this gate's
        opening): ``(cap + opening (1 - cap)) / cap``; 1 once the task loss is at or below 1."""
        opening = self.opening() if task_loss > 1 else None
        return update_factor("open", task_loss, opening, 0.0)


class HyperLength:
    """A multiplier on the update length set by hypergradient descent on its log (Baydin et al.
    2018, "Online learning rate adaptation with hypergradient descent", here on a cosine so that
    it is scale-free): ``log m += rate * s`` with ``s = -cos(d_t, x_t - x_{t-1})``, ``d_t`` this
    step's update direction and ``x_t - x_{t-1}`` the previous parameter change (momentum and
    preconditioning included). ``s > 0``: the new gradient still descends along the last change,
    so a longer step would have gone further; ``s < 0``: the step overshot. ``m`` is clipped to
    ``[1, ceiling]`` (never shorter than the default's step) and may grow only while the
    learning rate is at least ``peak`` of the largest seen and not rising (a warm-up and an
    annealing tail only let it shrink).

    Raises ``ValueError`` for ``rate <= 0``, ``ceiling < 1`` or ``peak`` outside ``(0, 1]``."""

    def __init__(self, rate: float = 0.03, ceiling: float = 4.0, peak: float = 0.9) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if not ceiling >= 1:
            raise ValueError(f"ceiling must be at least 1, got {ceiling}")
        if not 0 < peak <= 1:
            raise ValueError(f"peak must lie in (0, 1], got {peak}")
        self.rate, self.log_ceiling, self.peak = rate, math.log(ceiling), peak
        self.log_multiplier = 0.0
        self.largest_lr = 0.0
        self.last_lr: Optional[float] = None

    @property
    def multiplier(self) -> float:
        return math.exp(self.log_multiplier)

    def observe(self, signal: float, lr: float, held: bool = False) -> float:
        """One step's ``signal`` (``-cos``, in [-1, 1]) at learning rate ``lr``; returns the
        multiplier for this step's update. A non-finite signal leaves it unchanged; ``held``
        (e.g. the default's warm-up cap acting) lets it shrink only, as a rising rate does."""
        rising = held or (self.last_lr is not None and lr > self.last_lr)
        self.largest_lr = max(self.largest_lr, lr)
        self.last_lr = lr
        if math.isfinite(signal):
            change = self.rate * signal
            at_peak = not rising and lr >= self.peak * self.largest_lr
            if change < 0 or at_peak:
                self.log_multiplier = min(self.log_ceiling, max(0.0, self.log_multiplier + change))
        return self.multiplier


def probe_run(
    condition: kd_suite.Condition, seed: int, lr: float, gate: str, quick: bool
) -> dict[str, Any]:
    """Train the default ``mokd`` on ``condition`` and record every step's drops.

    ``gate``: one of :data:`GATES` (``"off"`` the default as it is; ``"open"`` / ``"latch"``:
    :class:`RatioGate` scales the update while the cap acts; ``"lengthen"``: the update times
    ``1 + max(c, 0)`` (:func:`agreement_with_task`), inside the warm-up times the gate's
    opening; ``"uncapped"``: the update times ``max(L_task, 1)``, no cap; see
    :func:`update_factor`; ``"lifted"`` / ``"lowered"``: the default's length, the distillation
    share's odds doubled / halved). Returns the final accuracy (BatchNorm statistics
    recomputed for a ResNet), ``collapsed`` (the suite's rule), ``steps`` (one ``[task loss,
    task drop, task predicted drop, surrogate drop, surrogate predicted drop, opening]`` per
    step; the opening is None on uncapped or ungated steps), ``agreement`` (one ``[cos(g_task,
    g_rest), cos(g_task, previous g_rest), cos(g_task, previous g_task)]`` per step after the
    first, ``g_rest`` the gradient of the distillation losses' sum, every gradient on its
    step's batch), ``shares`` (each step's :func:`distillation_share` of the update),
    ``labels`` (one ``[teacher's accuracy, student's accuracy after the step]`` on the step's
    batch per step), ``losses`` (every loss's value per step, the task first), ``rhos`` (each
    step's norm ratio ``||g_rest|| / ||g_task||``), ``trusts`` (``"trust-lowers"``: the trust set
    after each step for the next), ``predictions`` (the ``"predictive-share*"`` and
    ``"held-out-share"`` gates: each observed ``(a, b, c)``) and ``total_steps`` (the
    ``"held-out-*"`` gates: of the kept images); ``"grown"``: the update times
    :func:`grown_factor`. Raises ``ValueError`` for an unknown gate."""
    from mokd_optim import MultiObjectiveOptimizer

    if gate not in GATES:
        raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
    # "lengthen" uses the open gate; "off", "uncapped" and the share probes none
    ratio_gate = RatioGate(latch=gate == "latch") if gate in ("open", "latch", "lengthen") else None
    hyper = HyperLength() if gate in ("hyper", "hyper-after") else None
    last_change: Optional[torch.Tensor] = None
    factors: list[float] = []
    signals: list[float] = []
    feeds: list[float] = []
    run = kd_suite.Training.start(condition, seed, lr, quick)
    opt = MultiObjectiveOptimizer(run.base, "mokd", **OPTION_GATES.get(gate, {}))
    if gate in SHARE_TRUST:
        opt.method.set_trust(SHARE_TRUST[gate])  # kept until set again
    params = run.params
    shares: list[float] = []
    rhos: list[float] = []
    odds: list[float] = []
    rho_average: Optional[float] = None
    # "grown-odds-capped": the highest agreement share so far, and after each step's weighting
    peak, peaks = 0.0, []
    layerwise = LayerwiseShare(len(run.params)) if gate == "layerwise" else None
    switch = RelativeSwitch(gate == "relative-start") if gate in RELATIVE_GATES else None
    steps: list[list[Optional[float]]] = []
    agreement: list[list[float]] = []
    labels: list[list[float]] = []
    # the teacher's logits are fixed: which training images it gets right is known up front
    teacher_right = run.teacher["logits"].argmax(1) == run.data.y_train
    previous: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    record = TeacherTrust() if gate == "trust-lowers" else None
    trusts: list[float] = []  # "trust-lowers": the trust set after each step, for the next
    predictive = (
        PredictiveShare() if gate in PREDICTION_HORIZONS or gate == "held-out-share" else None
    )
    held_out: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    if gate in ("held-out-share", "held-out-default"):  # after `teacher_right` (the full set)
        run.data, held_x, held_y = held_out_split(run.data)
        held_out = (held_x, held_y) if gate == "held-out-share" else None
    horizon = PREDICTION_HORIZONS.get(gate, 1)
    # the last `horizon` steps' gradients, the oldest first
    earlier: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=horizon)
    predictions: list[tuple[float, float, float]] = []  # what PredictiveShare observed, per step
    collapsed = False
    loss_values: list[list[float]] = []
    # "predictive-share-first-epoch": the steps whose batch no earlier step has seen
    unseen_steps = run.total_steps // condition.recipe.epochs if gate in FIRST_EPOCH_GATES else None
    for step, batch in run.batches():
        losses = run.losses(batch)
        if not all(torch.isfinite(v) for v in losses.values()):
            collapsed = True
            break
        loss_values.append([float(v.detach()) for v in losses.values()])
        task_grads = torch.autograd.grad(
            losses["task"], params, retain_graph=True, allow_unused=True
        )
        rest = torch.stack([v for name, v in losses.items() if name != "task"]).sum()
        rest_grads = torch.autograd.grad(rest, params, retain_graph=True, allow_unused=True)
        task_flat, rest_flat = _flat(task_grads, params), _flat(rest_grads, params)
        task_norm = float(task_flat.norm())
        rhos.append(float(rest_flat.norm()) / task_norm if task_norm > 0 else 0.0)
        rho_start = statistics.mean(rhos[:START_STEPS])  # the run's starting ratio (so far)
        switched = False
        if switch is not None:
            task_value, rest_value = float(losses["task"].detach()), float(rest.detach())
            ratio = relative_ratio(task_norm, float(rest_flat.norm()), task_value, rest_value)
            switched = switch.observe(ratio, [task_value, rest_value])
        same_batch = cosine(task_flat, rest_flat)  # the agreement record's and the predictions'
        if previous is not None:
            agreement.append(
                [
                    same_batch,
                    cosine(task_flat, previous[1]),
                    cosine(task_flat, previous[0]),
                    rhos[-1],
                ]
            )
        unseen = unseen_steps is None or step < unseen_steps
        # what PredictiveShare observes this step: (a, b, c), or None
        observed: Optional[tuple[float, float, float]] = None
        if held_out is not None:  # the next held-out batch, cycling through them
            held_x, held_y = held_out
            offset = (len(predictions) * kd_suite.BATCH_SIZE) % len(held_y)
            chunk = slice(offset, offset + kd_suite.BATCH_SIZE)
            held = held_out_gradient(run.student, params, held_x[chunk], held_y[chunk])
            observed = (cosine(held, task_flat), cosine(held, rest_flat), same_batch)
        elif predictive is not None and len(earlier) == horizon and unseen:
            then_task, then_rest = earlier[0]  # `horizon` steps back
            observed = (cosine(task_flat, then_task), cosine(task_flat, then_rest), same_batch)
        if predictive is not None and observed is not None:
            predictions.append(observed)
            predictive.observe(*observed)
        previous = (task_flat, rest_flat)
        if predictive is not None:
            earlier.append(previous)
        if gate in ("grown-odds", "grown-odds-capped"):
            rho_average = (
                rhos[-1]
                if rho_average is None
                else (GROWTH_SMOOTHING * rho_average + (1 - GROWTH_SMOOTHING) * rhos[-1])
            )
            trust = growth_trust(rho_average, rho_start, len(rhos))
            if gate == "grown-odds-capped":
                trust = capped_growth_trust(trust, smoothed_agreement(opt.method), peak)
            opt.method.set_trust(trust)
            odds.append(1.0 if trust is None else trust / (1.0 - trust))
        opt.zero_grad(set_to_none=True)
        stats = opt.backward(losses)
        shares.append(distillation_share(stats))
        if gate == "grown-odds-capped":  # the average with this step's agreement in it
            peak = max(peak, smoothed_agreement(opt.method) or 0.0)
            peaks.append(peak)
        task_loss = float(losses["task"].detach())
        factor, opening = 1.0, None
        if ratio_gate is not None and task_loss > 1:
            opening = ratio_gate.opening()
        # the update the optimizer wrote, flattened once: the descent signal and the norms below
        update = _flat([p.grad for p in params], params)
        update_norm = float(update.norm())
        if last_change is not None:
            signals.append(-cosine(update, last_change))
        if hyper is not None:
            signal = signals[-1] if last_change is not None else float("nan")
            held = gate == "hyper-after" and task_loss > 1
            factor = hyper.observe(signal, float(run.base.param_groups[0]["lr"]), held)
        elif gate == "grown":
            factor = grown_factor(shares[-1], rhos[-1], rho_start, len(rhos))
        elif gate == "unit":
            factor = 1.0 / update_norm if update_norm > 0 else 1.0
        elif gate == "jitter":
            factor = jitter_factor(len(factors))
        elif predictive is not None and predictive.count > 0:
            shares[-1] = predictive.share()
            update = share_update(task_flat, rest_flat, task_loss, shares[-1])
            with torch.no_grad():
                _write_flat(update, params)
            update_norm = float(update.norm())
        elif gate in ("weight-share", "start-weight-share") or switched:
            # a = 0.1's share at the default's length; "relative-start*" once switched take the
            # run's start as "start-weight-share" does (a switched run has rho_start > 0)
            start = 1.0
            if gate != "weight-share" and rho_start > 0:  # else no distillation gradient yet
                start = rho_start
            update = weight_update(task_flat, rest_flat, task_loss, DIAGNOSTIC_WEIGHT, start)
            with torch.no_grad():
                _write_flat(update, params)
            update_norm = float(update.norm())
            shares[-1] = fixed_weight_share(DIAGNOSTIC_WEIGHT, rhos[-1] / start)
        elif switch is not None:
            pass  # "relative-start*" not switched: the default's own step
        elif gate == "weight-length":
            fixed = (1 - DIAGNOSTIC_WEIGHT) * task_flat + DIAGNOSTIC_WEIGHT * rest_flat
            factor = float(fixed.norm()) / update_norm if update_norm > 0 else 1.0
        elif layerwise is not None:
            length = 1.0 / max(task_loss, 1.0)  # the default's length over the task gradient's
            with torch.no_grad():
                for p, u in zip(params, layerwise.update(task_grads, rest_grads, length)):
                    if u is not None:
                        p.grad = u.detach().clone()
            shares[-1] = layerwise.shares[-1]
            update = _flat([p.grad for p in params], params)
            update_norm = float(update.norm())
        elif gate != "off":
            task_agreement = agreement_with_task(stats) if gate == "lengthen" else 0.0
            factor = update_factor(gate, task_loss, opening, task_agreement)
        if factor != 1.0:
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.grad.mul_(factor)
        factors.append(factor)
        feeds.append(update_norm * factor)  # every gate's factor is positive
        before = [p.detach().clone() for p in params]
        opt.step()
        with torch.no_grad():
            last_change = torch.cat([(p - b).reshape(-1) for p, b in zip(params, before)])
            after = run.losses(batch)
            x, y = run.data.x_train[batch], run.data.y_train[batch]
            logits_after = run.student(x)
            task_after = float(F.cross_entropy(logits_after, y))
            labels.append(
                [
                    float(teacher_right[batch].float().mean()),
                    float((logits_after.argmax(1) == y).float().mean()),
                ]
            )
            if record is not None:  # the next step's share: lowered, never raised
                record.update(logits_after, run.teacher["logits"][batch], y)
                trusts.append(lowering_trust(record.value))
                opt.method.set_trust(trusts[-1])
        weights = stats.weights.double() * factor
        drops = (
            torch.stack([v.detach() for v in losses.values()]).double()
            - torch.stack([v.detach() for v in after.values()]).double()
        )
        surrogate = float((weights * drops).sum())
        surrogate_predicted = predicted_drop([p.grad for p in params], params, before)
        if ratio_gate is not None and opening is not None:
            ratio_gate.observe(surrogate, surrogate_predicted)
        steps.append(
            [
                task_loss,
                task_loss - task_after,
                predicted_drop(task_grads, params, before),
                surrogate,
                surrogate_predicted,
                opening,
            ]
        )
    accuracy, recomputed = run.final_accuracy()
    final = recomputed if recomputed is not None else accuracy
    return {
        "final": final,
        "collapsed": collapsed or final < kd_suite.COLLAPSE_ACCURACY,
        "steps": steps,
        "agreement": agreement,
        "shares": shares,
        "factors": factors,
        "signals": signals,
        "feeds": feeds,
        "odds": odds,
        "peaks": peaks,
        "labels": labels,
        "losses": loss_values,
        "rhos": rhos,
        "trusts": trusts,
        "predictions": predictions,
        "total_steps": run.total_steps,
        "relative_start": None if switch is None else switch.start_ratio,
        "switched": None if switch is None else switch.chosen,
        "reverted_at": None if switch is None else switch.reverted_at,
    }


def window_ratios(steps: Sequence[Sequence[Optional[float]]], total: int) -> dict[str, list[float]]:
    """``{window: [task ratio, surrogate ratio]}`` over the windows of :data:`WINDOWS`: the
    ratio of the summed drops (a window with no predicted drop gives NaN)."""
    quarter = {f"q{i}": i * total // 4 for i in range(5)}
    out = {}
    for label, first, end in WINDOWS:
        lo = quarter[first] if isinstance(first, str) else first
        hi = quarter[end] if isinstance(end, str) else end
        rows = steps[lo:hi]
        out[label] = [
            armijo_ratio(
                sum(float(r[1] or 0.0) for r in rows), sum(float(r[2] or 0.0) for r in rows)
            ),
            armijo_ratio(
                sum(float(r[3] or 0.0) for r in rows), sum(float(r[4] or 0.0) for r in rows)
            ),
        ]
    return out


#: One run: (condition, round, lr scale -- 0 for the condition's own --, gate, seed, quick,
#: the suite store with the learning-rate grid, after -- the condition may be one of the round's
#: confirmation conditions, probed after the round: ``--after``).
Job = tuple[str, int, float, str, int, bool, str, bool]


def _job(args: Job) -> dict[str, Any]:
    name, round_number, scale, gate, seed, quick, store_path, after = args
    condition = _conditions(round_number, after)[name]
    store = kd_suite.Store(Path(store_path))
    measured = replace(condition, lr_scale=scale) if scale else condition
    lr = kd_suite.lr_of(measured, store, quick)
    result = probe_run(measured, seed, lr, gate, quick)
    openings = [r[5] for r in result["steps"] if r[5] is not None]
    return {
        "condition": name,
        "lr_scale": measured.lr_scale,
        "gate": gate,
        "seed": seed,
        "final": result["final"],
        "collapsed": result["collapsed"],
        "windows": window_ratios(result["steps"], result["total_steps"]),
        "capped_steps": len(openings),
        "mean_opening": sum(openings) / len(openings) if openings else 0.0,
        "mean_share": statistics.mean(result["shares"]) if result["shares"] else 0.0,
        "share_quarters": quarter_means(result["shares"]),
        "factor_quarters": quarter_means(result["factors"]),
        "factor_peak": max(result["factors"], default=1.0),
        "signal_quarters": quarter_means(result["signals"]),
        "feed_quarters": feed_course(result["feeds"]),
        "odds_quarters": quarter_means(result["odds"]) if result["odds"] else [1.0] * 4,
        "norm_ratio_course": norm_ratio_course(result["agreement"]),
        "agreement": _mean_columns(result["agreement"]),
        "teacher_accuracy_quarters": quarter_means([row[0] for row in result["labels"]]),
        "student_accuracy_quarters": quarter_means([row[1] for row in result["labels"]]),
        "student_reaches_teacher": reach_fraction(result["labels"]),
        "loss_courses": loss_courses(result["losses"]),
        "relative_start": result["relative_start"],
        "switched": result["switched"],
        "reverted_at": result["reverted_at"],
    }


def loss_courses(rows: Sequence[Sequence[float]]) -> list[list[float]]:
    """Per loss (the task first): ``[mean over the first START_STEPS steps, quarter means...]``
    of each step's value -- how far each objective has come from its own start."""
    if not rows:
        return []
    columns = list(zip(*rows))
    return [[statistics.mean(c[:START_STEPS]), *quarter_means(list(c))] for c in columns]


def quarter_means(values: Sequence[float]) -> list[float]:
    """The mean of each quarter of ``values`` (NaN for an empty quarter)."""
    n = len(values)
    parts = [values[i * n // 4 : (i + 1) * n // 4] for i in range(4)]
    return [statistics.mean(part) if part else float("nan") for part in parts]


#: Steps over which :func:`reach_fraction` averages the batch accuracies.
REACH_WINDOW = 25


def reach_fraction(
    labels: Sequence[Sequence[float]], window: int = REACH_WINDOW
) -> Optional[float]:
    """How far into a run the student's accuracy on the labels of its training batches first
    reaches the teacher's, both averaged over the last ``window`` steps: the step (counted from
    1) over the run's length, or None when it never does. ``labels`` holds one ``[teacher's
    batch accuracy, student's batch accuracy]`` per step (``probe_run``'s ``labels``). A
    teacher the student reaches early has little left to teach on the labels."""
    teacher = [row[0] for row in labels]
    student = [row[1] for row in labels]
    for end in range(window, len(labels) + 1):
        if statistics.mean(student[end - window : end]) >= statistics.mean(
            teacher[end - window : end]
        ):
            return end / len(labels)
    return None


def norm_ratio_course(agreement: Sequence[Sequence[float]]) -> tuple[float, list[float]]:
    """``(rho_0, [mean rho / rho_0 per quarter])`` of a run's norm ratios ``rho = ||g_rest|| /
    ||g_task||`` (the 4th column of ``agreement``), ``rho_0`` the mean over the first
    :data:`START_STEPS` steps: how far the distillation gradient's size relative to the task's
    moves away from where the losses' units put it at the start. NaNs for an empty run."""
    rho = [row[3] for row in agreement]
    if not rho:
        return float("nan"), [float("nan")] * 4
    start = statistics.mean(rho[:START_STEPS])
    if start <= 0:
        return start, [float("nan")] * 4
    return start, [q / start for q in quarter_means(rho)]


def feed_course(feeds: Sequence[float]) -> list[float]:
    """The mean norm of the update handed to the base optimizer by quarter of the run, over its
    mean over the first :data:`START_STEPS` steps (NaNs for an empty run or a zero start)."""
    if not feeds:
        return [float("nan")] * 4
    start = statistics.mean(feeds[:START_STEPS])
    return [q / start if start > 0 else float("nan") for q in quarter_means(feeds)]


def _mean_columns(rows: Sequence[Sequence[float]]) -> dict[str, float]:
    """The run's mean same-batch, cross-batch distillation and cross-batch task cosines, and
    the mean norm ratio ``rho = ||g_rest|| / ||g_task||``."""
    names = ("same_batch", "cross_batch_rest", "cross_batch_task", "norm_ratio")
    if not rows:
        return {name: float("nan") for name in names}
    return {name: statistics.mean(row[i] for row in rows) for i, name in enumerate(names)}


def cross_batch_share(agreement: dict[str, float]) -> float:
    """The distillation side's share if it were weighed by how well each gradient agrees with
    the next batch's task gradient: ``max(rest, 0) / (max(rest, 0) + max(task, 0))`` of the
    cross-batch cosines (0 when both are <= 0)."""
    rest = max(agreement["cross_batch_rest"], 0.0)
    task = max(agreement["cross_batch_task"], 0.0)
    return rest / (rest + task) if rest + task > 0 else 0.0


def best_fixed_weight(
    condition: kd_suite.Condition, store: kd_suite.Store, quick: bool
) -> Optional[float]:
    """The weight of the suite's fixed-weight grid with the best mean stored accuracy on
    ``condition`` (its seeds, its evaluation); None when a weight's runs are missing."""
    grid = [c for c in kd_suite.baseline_configs({None}) if c.kind == "fixed"]
    rows = kd_suite.gather(condition, grid, store, quick)
    if len(rows) < len(grid):
        return None
    return max(grid, key=lambda c: (rows[c.label].mean, -c.weight)).weight


def recorded_relative_start(record: dict[str, Any]) -> float:
    """A probe record's ratio of relative gradients at the start, from what every record since
    stop 39 holds: ``rho_0 L_task / L_rest`` with ``rho_0`` the first steps' mean norm ratio
    (``norm_ratio_course``) and the losses' means over the first steps (``loss_courses``; the
    rest's the sum of the non-task losses). ``nan`` where a record lacks them or a loss is 0."""
    courses = record.get("loss_courses")
    if not courses or len(courses) < 2:
        return float("nan")
    rest = sum(course[0] for course in courses[1:])
    rho = record["norm_ratio_course"][0]
    return rho * courses[0][0] / rest if rest > 0 else float("nan")


def relative_start_table(
    results: Sequence[dict[str, Any]],
    store: kd_suite.Store,
    round_number: int,
    quick: bool,
    after: bool = False,
) -> str:
    """Whether the start's ratio of relative gradients (:func:`recorded_relative_start`, the mean
    over a condition's records) tells weak teachers from strong ones and goes with the best
    fixed weight, over the conditions at 1x with stored baselines: the Spearman correlations
    of ``r`` and of the raw norm ratio ``rho_0`` with "weak" and with the best weight, then per
    band of ``r``: conditions (weak ones), where a = 0.1 is best, and where the default trails
    the best weight (the suite's rule)."""
    conditions = _conditions(round_number, after)
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        if r.get("mode", "gates") == "gates" and r["lr_scale"] == 1:
            by.setdefault(r["condition"], []).append(r)
    rows = []
    default = kd_suite.CANDIDATES["default"]
    for name, records in sorted(by.items()):
        condition = conditions[name]
        ratios = [x for x in map(recorded_relative_start, records) if math.isfinite(x)]
        weight = best_fixed_weight(condition, store, quick)
        verdict = kd_suite.verdicts(condition, default, store, quick)
        if not ratios or weight is None or "fixed" not in verdict:
            continue
        rho = statistics.mean(x["norm_ratio_course"][0] for x in records)
        weak = float(condition.teacher == "weak")
        rows.append((statistics.mean(ratios), rho, weak, weight, verdict["fixed"]["won"]))
    if len(rows) < 3:
        return "(fewer than three conditions at 1x with records and stored baselines)"
    r0, rho0, weak, weight, _ = (list(column) for column in zip(*rows))
    lines = [
        f"the start's ratio of relative gradients r over {len(rows)} conditions at 1x: "
        f"Spearman with weak {spearman(r0, weak):+.2f}, with the best fixed weight "
        f"{spearman(r0, weight):+.2f}; the norm ratio rho_0: {spearman(rho0, weak):+.2f}, "
        f"{spearman(rho0, weight):+.2f}",
        f"{'r':>12} {'conditions':>10} {'weak':>5} {'a=0.1 best':>10} {'default behind':>14}",
    ]
    for low, high in ((0.0, 0.45), (0.45, 0.85), (0.85, math.inf)):
        band = [row for row in rows if low <= row[0] < high]
        lines.append(
            f"{low:>5.2f}-{high:<6.2f} {len(band):>10} {sum(row[2] for row in band):>5.0f} "
            f"{sum(row[3] == 0.1 for row in band):>10} {sum(not row[4] for row in band):>14}"
        )
    return "\n".join(lines)


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN for fewer than 3 pairs."""
    if len(xs) < 3:
        return float("nan")

    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    return statistics.correlation(ranks(xs), ranks(ys))


def fixed_weight_share(weight: float, norm_ratio: float) -> float:
    """The distillation side's share of a fixed weight's update, ``a rho / ((1 - a) + a rho)``
    for the loss ``(1 - a) L_task + a L_rest`` and ``rho = ||g_rest|| / ||g_task||``."""
    return weight * norm_ratio / ((1 - weight) + weight * norm_ratio)


def agreement_table(
    results: Sequence[dict[str, Any]],
    store: kd_suite.Store,
    round_number: int,
    quick: bool,
    after: bool = False,
) -> str:
    """Per condition (mean over the runs' seeds): same-batch and cross-batch cosines, the share
    :func:`cross_batch_share` would give, the best fixed weight of the stored grid, the
    default's gap to it, and the distillation side's share of the update under the default
    (its stored runs' diagnostics) and under that weight (:func:`fixed_weight_share` with the
    probe's ``rho``); then the Spearman correlation of the best weight with the same-batch
    cosine and with the cross-batch share, and on how many conditions the default trails the
    best weight by more than 0.3 points with a share below / above the weight's."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault(r["condition"], []).append(r)
    conditions = _conditions(round_number, after)
    grid = [c for c in kd_suite.baseline_configs({None}) if c.kind == "fixed"]
    default = kd_suite.CANDIDATES["default"]
    lines = [
        "condition  teacher  same-batch  cross-batch rest / task  cross-batch share  best a  "
        "default - best  share: default / best a"
    ]
    pairs: list[tuple[float, float, float]] = []
    trailing = {"below": 0, "above": 0}
    for name, rows in by.items():
        mean = {
            key: statistics.mean(r["agreement"][key] for r in rows) for key in rows[0]["agreement"]
        }
        share = cross_batch_share(mean)
        condition = conditions[name]
        best = best_fixed_weight(condition, store, quick)
        stored = kd_suite.gather(condition, [*grid, default], store, quick)
        gap = default_share = best_share = float("nan")
        if best is not None and default.label in stored:
            gap = 100 * (stored[default.label].mean - stored[f"fixed a={best:g}"].mean)
            shares = [
                1 - d["task_share"]
                for d in stored[default.label].diagnostics
                if d.get("task_share") is not None
            ]
            default_share = statistics.mean(shares) if shares else float("nan")
            best_share = fixed_weight_share(best, mean["norm_ratio"])
            if gap < -0.3 and default_share != best_share:
                trailing["below" if default_share < best_share else "above"] += 1
        if best is not None and math.isfinite(mean["same_batch"]):
            pairs.append((best, mean["same_batch"], share))
        lines.append(
            f"{name:10} {condition.teacher:7} {mean['same_batch']:10.3f}  "
            f"{mean['cross_batch_rest']:11.3f} / {mean['cross_batch_task']:.3f}  {share:17.2f}  "
            f"{'-' if best is None else f'{best:g}':>6}  {_fmt(gap):>14}  "
            f"{_fmt(default_share):>7} / {_fmt(best_share)}"
        )
    weights = [p[0] for p in pairs]
    lines.append(
        f"Spearman with the best fixed weight over {len(pairs)} conditions: same-batch cosine "
        f"{_fmt(spearman(weights, [p[1] for p in pairs]))}, cross-batch share "
        f"{_fmt(spearman(weights, [p[2] for p in pairs]))}"
    )
    lines.append(
        f"behind the best fixed weight by more than 0.3 points: {sum(trailing.values())}, the "
        f"default's share below the weight's on {trailing['below']}, above on {trailing['above']}"
    )
    return "\n".join(lines)


def _conditions(round_number: int, after: bool = False) -> dict[str, kd_suite.Condition]:
    """The round's selection conditions by short name: a probe never runs a round's
    confirmation conditions -- unless ``after`` the round, when they have been run once and
    looked at and are what the next round may select on (its selection and confirmation
    conditions, ``--after``)."""
    split = "all" if after else "selection"
    return {c.name.split()[0]: c for c in kd_suite.conditions_of_round(round_number, split)}


def run_all(jobs: list[Job], workers: int, progress: bool = True) -> list[dict[str, Any]]:
    """Every job's summary, in order (``workers`` processes of one thread each); with
    ``progress`` one line per finished run on stderr (the run, its final accuracy, an ETA)."""
    started, results = time.perf_counter(), []

    def report(result: dict[str, Any]) -> None:
        results.append(result)
        if progress:
            elapsed = time.perf_counter() - started
            eta = elapsed / len(results) * (len(jobs) - len(results))
            print(
                f"[{len(results)}/{len(jobs)}] {result['condition']} x{result['lr_scale']:g} "
                f"{result['gate']} seed {result['seed']}: {100 * result['final']:.2f} % "
                f"(eta {eta / 60:.1f} min)",
                file=sys.stderr,
                flush=True,
            )

    if workers <= 1:  # in this process, one thread as in a worker, the count restored after
        threads = torch.get_num_threads()
        kd_suite._worker_init()
        try:
            for job in jobs:
                report(_job(job))
        finally:
            torch.set_num_threads(threads)
        return results
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=kd_suite._worker_init) as pool:
        for result in pool.imap(_job, jobs):
            report(result)
    return results


def gate_table(results: Sequence[dict[str, Any]]) -> str:
    """Per condition and gate: the mean final accuracy over the seeds (%), collapses, the mean
    opening over the capped steps, the mean distillation share, and the paired difference from
    the gate ``"off"``; below it, by quarter of the run, the share and the norm ratio's course
    (:func:`norm_ratio_course`)."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault((r["condition"], r["gate"]), []).append(r)
    lines = [
        "final accuracy (mean over seeds, %), collapses, mean opening over capped steps, mean "
        "distillation share of the update; by quarter of the run its share and the norm ratio "
        "rho = ||g_rest|| / ||g_task|| over its first steps' rho_0"
    ]
    for (name, gate), rows in by.items():
        mean = 100 * statistics.mean(r["final"] for r in rows)
        off = by.get((name, "off"))
        delta = ""
        if off is not None and gate != "off":
            delta = f"  {mean - 100 * statistics.mean(r['final'] for r in off):+.2f} vs off"
        lines.append(
            f"{name:6} {rows[0]['lr_scale']:>4g}x {gate:6} {mean:6.2f} "
            f"collapsed {sum(r['collapsed'] for r in rows)}/{len(rows)} "
            f"opening {statistics.mean(r['mean_opening'] for r in rows):.2f} "
            f"share {statistics.mean(r['mean_share'] for r in rows):.2f}{delta}"
        )
        start = statistics.mean(r["norm_ratio_course"][0] for r in rows)
        course = [statistics.mean(r["norm_ratio_course"][1][q] for r in rows) for q in range(4)]
        shares = [statistics.mean(r["share_quarters"][q] for r in rows) for q in range(4)]
        unlogged = [float("nan")] * 4  # runs stored before the factor and signal were logged
        factors = [
            statistics.mean(r.get("factor_quarters", [1.0] * 4)[q] for r in rows) for q in range(4)
        ]
        signals = [
            statistics.mean(r.get("signal_quarters", unlogged)[q] for r in rows) for q in range(4)
        ]
        lines.append(
            f"{'':20} by quarter: share {' '.join(_fmt(x) for x in shares)}; rho_0 "
            f"{_fmt(start)}, rho / rho_0 {' '.join(_fmt(x) for x in course)}"
            + (
                f"; descent signal {' '.join(_fmt(x) for x in signals)}"
                if "signal_quarters" in rows[0]
                else ""
            )
            + (
                "; update norm / first steps' "
                + " ".join(
                    _fmt(statistics.mean(r["feed_quarters"][q] for r in rows)) for q in range(4)
                )
                if "feed_quarters" in rows[0]
                else ""
            )
            + (
                "; share odds x "
                + " ".join(
                    _fmt(statistics.mean(r["odds_quarters"][q] for r in rows)) for q in range(4)
                )
                if rows[0]["gate"] in ("grown-odds", "grown-odds-capped")
                else ""
            )
            + (
                f"; factor {' '.join(_fmt(x) for x in factors)}, largest "
                f"{_fmt(statistics.mean(r.get('factor_peak', 1.0) for r in rows))}"
                if max(factors) != 1
                else ""
            )
        )
        if "teacher_accuracy_quarters" in rows[0]:
            lines.append(label_line(rows))
    return "\n".join(lines)


def label_line(rows: Sequence[dict[str, Any]]) -> str:
    """The runs' record on the labels of their training batches: the teacher's and the
    student's accuracy by quarter (means over the runs) and where the student first reaches
    the teacher (:func:`reach_fraction`; each run's, "never" for a run where it does not)."""
    quarters = {
        who: [statistics.mean(r[f"{who}_accuracy_quarters"][q] for r in rows) for q in range(4)]
        for who in ("teacher", "student")
    }
    reached = [r["student_reaches_teacher"] for r in rows]
    return (
        f"{'':20} on the labels: teacher {' '.join(_fmt(x) for x in quarters['teacher'])}, "
        f"student {' '.join(_fmt(x) for x in quarters['student'])}; the student reaches the "
        "teacher at "
        + ", ".join("never" if x is None else f"{x:.2f}" for x in reached)
        + " of the run"
    )


def gate_summary(
    results: Sequence[dict[str, Any]],
    store: kd_suite.Store,
    round_number: int,
    quick: bool,
    after: bool = False,
) -> str:
    """Per gate, over the conditions whose baselines are stored: the mean paired difference
    from the gate ``"off"`` (points) and its mean with each condition's difference clipped at
    ``kd_suite.CLIP_POINTS`` (round 23's criterion (1)), then the suite's counts against the
    stored baselines on the same seeds -- tied with or ahead of the best fixed weight and of
    cross-entropy (a loss within one paired standard error is a tie:
    :func:`kd_suite.against_baselines`), both mean gaps and the collapsed runs -- and the mean
    difference from ``"off"`` by group (the learning-rate scale, and at x1 the teacher)."""
    conditions = _conditions(round_number, after)
    baselines = kd_suite.baseline_configs({None})
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault((r["gate"], r["condition"]), []).append(r)
    lines = ["against the stored baselines (ties within one paired standard error):"]
    for gate in dict.fromkeys(r["gate"] for r in results):
        diffs: list[float] = []
        groups: dict[str, list[float]] = {}
        gaps: dict[str, list[float]] = {"fixed": [], "ce": []}
        won = {"fixed": 0, "ce": 0}
        collapsed = 0
        for (g, name), rows in by.items():
            if g != gate:
                continue
            rows = sorted(rows, key=lambda r: r["seed"])
            seeds = [r["seed"] for r in rows]
            stored = kd_suite.gather(conditions[name], baselines, store, quick, seeds=seeds)
            mine = kd_suite.Row(
                gate, [r["final"] for r in rows], sum(r["collapsed"] for r in rows), 0.0
            )
            verdict = kd_suite.against_baselines(mine, stored, {None})
            if "ce" not in verdict or "fixed" not in verdict:
                continue
            for key in gaps:
                gaps[key].append(verdict[key]["diff"])
                won[key] += verdict[key]["won"]
            collapsed += mine.collapsed
            off = sorted(by.get(("off", name), []), key=lambda r: r["seed"])
            if [r["seed"] for r in off] == seeds:
                diff = 100 * statistics.mean(a["final"] - b["final"] for a, b in zip(rows, off))
                diffs.append(diff)
                condition = conditions[name]
                group = (
                    f"x{condition.lr_scale:g}"
                    if condition.lr_scale != 1
                    else f"x1 {condition.teacher}"
                )
                groups.setdefault(group, []).append(diff)
        if not gaps["ce"]:
            continue
        n = len(gaps["ce"])
        by_group = ", ".join(
            f"{group} {statistics.mean(values):+.2f} ({len(values)})"
            for group, values in sorted(groups.items())
        )
        lines.append(
            f"{gate:8} vs off {statistics.mean(diffs) if diffs else 0.0:+.2f} (clipped at "
            f"+-{kd_suite.CLIP_POINTS:g}: {kd_suite.clipped_mean(diffs):+.2f}); "
            "best fixed weight "
            f"{won['fixed']}/{n} ({statistics.mean(gaps['fixed']):+.2f}), cross-entropy "
            f"{won['ce']}/{n} ({statistics.mean(gaps['ce']):+.2f}), collapsed {collapsed}"
            + (f"; vs off by group: {by_group}" if gate != "off" and by_group else "")
        )
    return "\n".join(lines)


def _fmt(x: float) -> str:
    return f"{x:.2f}" if math.isfinite(x) else "nan"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--measure", action="store_true", help="ratio windows at --scales")
    mode.add_argument("--gates", default=None, help=f"comma list of {GATES}")
    mode.add_argument(
        "--agreement", action="store_true", help="cross-batch agreement, every selection condition"
    )
    mode.add_argument(
        "--relative-table",
        type=lambda text: [Path(p) for p in text.split(",")],
        default=None,
        help="comma list of probe JSON files (--json): the start's ratio of relative gradients "
        "against the teacher's strength and the best fixed weight; runs nothing",
    )
    parser.add_argument(
        "--conditions",
        default=None,
        help="comma list of short names, or 'all': every selection condition of --round",
    )
    parser.add_argument("--round", type=int, default=19, help="whose selection conditions")
    parser.add_argument(
        "--after",
        action="store_true",
        help="probe after --round: its confirmation conditions (run once and looked at, the "
        "next round's selection data) beside its selection conditions",
    )
    parser.add_argument("--scales", default=",".join(map(str, SCALES)))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny data, one seed, both modes")
    parser.add_argument("--json", type=Path, default=None, help="write every run's summary here")
    parser.add_argument("--no-progress", action="store_true", help="no line per finished run")
    parser.add_argument(
        "--store", type=Path, default=kd_suite.DEFAULT_STORE,
        help="the suite's store: the learning-rate grid (run there first when missing)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.relative_table is not None:
        records: list[dict[str, Any]] = []
        for path in args.relative_table:
            records += json.loads(path.read_text())
        seen: dict[tuple[str, int], dict[str, Any]] = {}
        for record in records:  # one record per condition and seed: the first given
            seen.setdefault((record["condition"], record["seed"]), record)
        store = kd_suite.Store(args.store)
        print(relative_start_table(list(seen.values()), store, args.round, False, args.after))
        return 0
    seeds = kd_suite.parse_seeds("0" if args.quick else args.seeds)
    known = _conditions(args.round, args.after)
    if args.conditions == "all":
        args.conditions = ",".join(known)
    store = str(args.store)
    names = QUICK_CONDITIONS if args.quick else None
    measure_jobs: list[Job] = []
    gate_jobs: list[Job] = []
    agreement_jobs: list[Job] = []
    if args.agreement or args.quick:
        chosen = names or tuple((args.conditions or ",".join(known)).split(","))
        agreement_jobs = [
            (n, args.round, 0.0, "off", seed, args.quick, store, args.after)
            for n in chosen
            for seed in seeds
        ]
    if args.measure or args.quick or (args.gates is None and not args.agreement):
        chosen = names or tuple((args.conditions or ",".join(MEASURE_CONDITIONS)).split(","))
        scales = (0.3, 3.0) if args.quick else tuple(float(s) for s in args.scales.split(","))
        measure_jobs = [
            (n, args.round, scale, "off", seed, args.quick, store, args.after)
            for n in chosen for scale in scales for seed in seeds
        ]  # fmt: skip
    if args.gates is not None or args.quick:
        gates = ("off", "latch") if args.quick else tuple(args.gates.split(","))
        chosen = names or tuple((args.conditions or ",".join(GATE_CONDITIONS)).split(","))
        gate_jobs = [
            (n, args.round, 0.0, gate, seed, args.quick, store, args.after)
            for n in chosen for gate in gates for seed in seeds
        ]  # fmt: skip
    for name, _, _, gate, *_ in measure_jobs + gate_jobs + agreement_jobs:
        if name not in known:
            what = "a condition" if args.after else "a selection condition"
            parser.error(f"{name} is not {what} of round {args.round}")
        if gate not in GATES:
            parser.error(f"unknown gate {gate!r}; gates are {GATES}")
    from benchmarks.environment import as_text, describe

    print(as_text(describe()))
    used = sorted({job[0] for job in measure_jobs + gate_jobs + agreement_jobs})
    grid = kd_suite.lr_grid_jobs([known[name] for name in used], args.quick)
    kd_suite.run_jobs(grid, kd_suite.Store(args.store), args.workers, False)
    results = run_all(measure_jobs + gate_jobs + agreement_jobs, args.workers, not args.no_progress)
    measured = results[: len(measure_jobs)]
    gated = results[len(measure_jobs) : len(measure_jobs) + len(gate_jobs)]
    agreed = results[len(measure_jobs) + len(gate_jobs) :]
    for label, runs in (("measure", measured), ("gates", gated), ("agreement", agreed)):
        for r in runs:
            r["mode"] = label
    if measured:
        print("same-batch ratio (task / surrogate) of the default's steps, gate off")
        header = "  ".join(f"{window[0]:>11}" for window in WINDOWS)
        print(f"{'condition':10} {'lr':>5} {'seed':>4}  {header}")
        for r in measured:
            cells = "  ".join(f"{_fmt(t):>5}/{_fmt(s):<5}" for t, s in r["windows"].values())
            print(f"{r['condition']:10} {r['lr_scale']:>4g}x {r['seed']:>4}  {cells}")
    if gated:
        print(gate_table(gated))
        print(gate_summary(gated, kd_suite.Store(args.store), args.round, args.quick, args.after))
    if agreed:
        print(
            agreement_table(agreed, kd_suite.Store(args.store), args.round, args.quick, args.after)
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
