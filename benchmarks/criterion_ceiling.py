"""How often can *anything* meet the suite's fixed-weight count? The two-thirds criterion of issue
13 asks the default to be ahead of, or within one paired standard error of, the best of five
fixed weights picked on the test set, over three seeds. The best of five noisy means is biased
upwards (it is picked for its luck on those very seeds), so even a configuration exactly as
good as the best weight is "behind" on some conditions. This script measures that ceiling on
stored runs with many seeds.

For every condition with at least ``2 * size`` stored seeds of cross-entropy, every fixed weight
and the default, and for every way of drawing two disjoint sets of ``size`` seeds (a *pick*
set and an *evaluation* set), it applies the suite's rule (:func:`kd_suite.against_baselines`)
on the evaluation seeds to:

- **the weight picked on the pick seeds** -- a tuned fixed weight, as a user who tunes on one
  set of runs and deploys on another gets it;
- **the weight best over all stored seeds** -- the best-in-expectation configuration (its seeds
  overlap the evaluation set: a slightly flattering estimate);
- **one constant weight** (``--constant``, default 0.1: the weight most often best in the suite)
  used on every condition untuned -- the bar a single rule without per-condition tuning meets;
- **the default** (``mokd`` with no options).

It prints each one's probability of counting as "ahead or tied" per condition, the expected
number of conditions won, and the chance of winning on at least two thirds of them when each
condition's evaluation seeds are drawn independently.

    python benchmarks/criterion_ceiling.py --round 20 --split confirmation      # seeds 0-9
    python benchmarks/criterion_ceiling.py --round 21 --constant 0.3
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import kd_suite  # noqa: E402

#: Draws of one evaluation set per condition for the two-thirds chance.
DRAWS = 20_000


def wins(mine: Sequence[float], others: dict[str, Sequence[float]], seeds: Sequence[int]) -> bool:
    """Whether ``mine`` is ahead of, or within one paired standard error of, the best of
    ``others`` on ``seeds`` (indices into the value lists; the best picked on those seeds), by
    the suite's rule. Raises ``ValueError`` for fewer than two seeds."""
    if len(seeds) < 2:
        raise ValueError("the paired standard error needs at least two seeds")
    best = max(others.values(), key=lambda v: statistics.mean(v[s] for s in seeds))
    diffs = [100 * (mine[s] - best[s]) for s in seeds]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    return statistics.mean(diffs) >= -se


def split_probabilities(
    fixed: dict[str, Sequence[float]],
    default: Sequence[float],
    size: int,
    constant: Optional[str] = None,
) -> dict[str, list[bool]]:
    """For every (pick, evaluation) pair of disjoint ``size``-seed subsets of the stored seeds:
    whether the weight picked on the pick seeds, the weight best over all seeds, the weight
    labelled ``constant`` (a key of ``fixed``; left out when None) and ``default`` win
    (:func:`wins`) against the best fixed weight on the evaluation seeds. Keyed ``"picked"``,
    ``"best overall"``, ``"constant"``, ``"default"``; one boolean per pair (all but the first
    repeat per evaluation set, which keeps them equally weighted). Raises ``ValueError`` for too
    few seeds or an unknown ``constant``."""
    n = len(default)
    if any(len(v) != n for v in fixed.values()) or n < 2 * size:
        raise ValueError(f"need {2 * size} seeds of every configuration, got {n}")
    if constant is not None and constant not in fixed:
        raise ValueError(f"no fixed weight labelled {constant!r}; have {sorted(fixed)}")
    overall = max(fixed, key=lambda label: statistics.mean(fixed[label]))
    unpicked = {
        "best overall": fixed[overall],
        **({} if constant is None else {"constant": fixed[constant]}),
        "default": default,
    }
    out: dict[str, list[bool]] = {"picked": [], **{key: [] for key in unpicked}}
    for evaluation in itertools.combinations(range(n), size):
        rest = [s for s in range(n) if s not in evaluation]
        verdicts = {key: wins(values, fixed, evaluation) for key, values in unpicked.items()}
        for pick in itertools.combinations(rest, size):
            picked = max(fixed, key=lambda label: statistics.mean(fixed[label][s] for s in pick))
            out["picked"].append(wins(fixed[picked], fixed, evaluation))
            for key, verdict in verdicts.items():
                out[key].append(verdict)
    return out


def two_thirds_chance(probabilities: Sequence[float], draws: int = DRAWS, seed: int = 0) -> float:
    """The chance that independent conditions, each won with its probability, are won on at least
    two thirds of them (Monte Carlo with ``draws`` draws)."""
    need = math.ceil(2 * len(probabilities) / 3)
    rng = random.Random(seed)
    hits = sum(sum(rng.random() < p for p in probabilities) >= need for _ in range(draws))
    return hits / draws


def ceiling_table(
    conditions: Sequence[kd_suite.Condition],
    store: kd_suite.Store,
    seeds: Sequence[int],
    size: int = 3,
    constant: float = 0.1,
) -> list[str]:
    """The per-condition probabilities and the summary as markdown lines; conditions without
    every configuration on every one of ``seeds`` are left out (and named). ``constant``: the
    fixed weight (one of :data:`kd_suite.FIXED_WEIGHTS`) judged as one untuned constant.
    Raises ``ValueError`` for a ``constant`` outside the grid."""
    fixed_configs = [c for c in kd_suite.baseline_configs({None}) if c.kind == "fixed"]
    constant_label = next((c.label for c in fixed_configs if c.weight == constant), None)
    if constant_label is None:
        raise ValueError(f"constant {constant} is not in the grid {kd_suite.FIXED_WEIGHTS}")
    default = kd_suite._library_default()
    lines = [
        f"Seeds {seeds[0]}-{seeds[-1]}; pick and evaluation sets of {size} seeds, disjoint, every "
        "pair of them. Each cell: how often the configuration counts as ahead of or tied with the "
        "best fixed weight on the evaluation seeds (the suite's rule).",
        "",
        "| condition | best over all seeds | weight picked on other seeds | best weight over all "
        f"seeds | a = {constant:g} on every condition | the default |",
        "|---|---|---|---|---|---|",
    ]
    columns: dict[str, list[float]] = {
        "picked": [], "best overall": [], "constant": [], "default": []
    }  # fmt: skip
    skipped = []
    for condition in conditions:
        rows = kd_suite.gather(condition, [*fixed_configs, default], store, False, seeds=seeds)
        if default.label not in rows or any(c.label not in rows for c in fixed_configs):
            skipped.append(condition.name)
            continue
        fixed = {c.label: rows[c.label].finals for c in fixed_configs}
        result = split_probabilities(fixed, rows[default.label].finals, size, constant_label)
        chances = {key: sum(v) / len(v) for key, v in result.items()}
        for key, value in chances.items():
            columns[key].append(value)
        overall = max(fixed, key=lambda label: statistics.mean(fixed[label]))
        lines.append(
            f"| {condition.name} | {overall} | "
            + " | ".join(f"{chances[key]:.2f}" for key in columns)
            + " |"
        )
    if not columns["default"]:
        return [*lines, "", "No condition has every configuration on those seeds."]
    n = len(columns["default"])
    lines.append(
        "| expected conditions won | | "
        + " | ".join(f"{sum(columns[k]):.2f} of {n}" for k in columns)
        + " |"
    )
    lines.append(
        f"| chance of at least {math.ceil(2 * n / 3)} of {n} | | "
        + " | ".join(f"{two_thirds_chance(columns[k]):.2f}" for k in columns)
        + " |"
    )
    if skipped:
        lines += ["", f"Left out (runs missing): {', '.join(skipped)}."]
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--round", type=int, default=20)
    parser.add_argument("--split", default="confirmation", choices=("selection", "confirmation"))
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--size", type=int, default=3, help="seeds in a pick / evaluation set")
    parser.add_argument("--exclude", default="", help="comma list of short condition names")
    parser.add_argument(
        "--constant", type=float, default=0.1, help="the fixed weight judged as one constant"
    )
    parser.add_argument("--store", type=Path, default=kd_suite.DEFAULT_STORE)
    args = parser.parse_args(argv)
    excluded = {name for name in args.exclude.split(",") if name}
    conditions = [
        c
        for c in kd_suite.conditions_of_round(args.round, args.split)
        if c.name.split()[0] not in excluded
    ]
    seeds = kd_suite.parse_seeds(args.seeds)
    if args.constant not in kd_suite.FIXED_WEIGHTS:
        parser.error(f"--constant must be one of {kd_suite.FIXED_WEIGHTS}")
    table = ceiling_table(conditions, kd_suite.Store(args.store), seeds, args.size, args.constant)
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
