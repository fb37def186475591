"""How well does ``CollapseWatch`` tell a dead run from a live one? Measured on the condition
suite's runs.

Every collapse of the suite (docs/mokd.md) was silent: finite losses, a network dead at chance.
This script reruns conditions of ``benchmarks/kd_suite.py`` where such collapses happen (too
high learning rates, large distillation weights, DKD) and where they do not, for cross-entropy,
the fixed-weight grid and the default ``mokd``, records each run's per-step task loss and
gradient norms, and replays those traces through :class:`mokd_optim.diagnostics.CollapseWatch`
for a grid of thresholds. The truth is the suite's: a run has collapsed when its final test
accuracy is below ``kd_suite.COLLAPSE_ACCURACY`` or a loss went non-finite. Printed: for each
threshold setting, collapsed runs flagged / missed, live runs flagged (false alarms), and how
far into the run the flag came. The traces are kept in ``benchmarks/results/collapse_traces.json``
(the suite's store format: resumable; gitignored).

    python benchmarks/collapse_watch.py --workers 2       # about 20 minutes on 2 cores
    python benchmarks/collapse_watch.py --report-only     # replay the stored traces
    python benchmarks/collapse_watch.py --quick           # 2 conditions, 1 seed, tiny data
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import kd_suite  # noqa: E402
from mokd_optim.diagnostics import (  # noqa: E402
    COLLAPSE_GRADIENT_DROP,
    COLLAPSE_LOSS_FRACTION,
    COLLAPSE_PATIENCE,
    CollapseWatch,
)

DEFAULT_TRACES = ROOT / "benchmarks" / "results" / "collapse_traces.json"
#: Conditions with collapses (too high a learning rate, large weights, DKD, T = 8) and without.
CONDITIONS = (
    "S2", "S10", "S11", "C11", "C35", "C59", "C67",  # 3x the cross-entropy-best lr
    "S1", "S7", "C14", "C15", "C31", "C52", "C63", "C66", "C71",  # collapses of fixed weights
    "S3", "S4", "C9", "C10", "C33", "C37", "C47", "C60", "C68", "C70",  # healthy
)  # fmt: skip
QUICK_CONDITIONS = ("S10", "S8")
LOSS_FRACTIONS = (0.8, 0.9, 0.95)
GRADIENT_DROPS = (0.02, 0.05, 0.1, 0.2)
PATIENCES = (5, 20, 50)


def configs() -> list[kd_suite.Config]:
    """Cross-entropy, the fixed-weight grid and the library's default ``mokd``."""
    return [*kd_suite.baseline_configs({None}), kd_suite.CANDIDATES["default"]]


def collect(names: tuple[str, ...], seeds: tuple[int, ...], quick: bool, workers: int,
            path: Path, suite_path: Path = kd_suite.DEFAULT_STORE) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Run (or load) every condition x configuration x seed through the suite's own job runner
    (a run that raises counts as collapsed and keeps no trace); returns the stored runs by key.
    The learning rates come from the suite's store at ``suite_path`` (its grid runs there first
    when missing); the traced runs go to their own store at ``path``."""
    suite_store, store = kd_suite.Store(suite_path), kd_suite.Store(path)
    by_name = {c.name.split()[0]: c for c in kd_suite.CONDITIONS}
    conditions = [by_name[name] for name in names]
    kd_suite.run_jobs(kd_suite.lr_grid_jobs(conditions, quick), suite_store, workers, False)
    jobs = []
    for condition in conditions:
        lr = kd_suite.ce_best_lr(condition.recipe, suite_store, quick) * condition.lr_scale
        for config in configs():
            for seed in seeds:
                job = kd_suite._job("trace", condition, config, seed, lr, 1.0, quick)
                jobs.append({**job, "trace": True})
    kd_suite.run_jobs(jobs, store, workers)
    return store.runs


def replay(record: dict[str, Any], **thresholds: Any) -> Optional[int]:
    """The step (1-based) at which a watch with ``thresholds`` flags the run, or ``None``."""
    watch = CollapseWatch(warn=False, **thresholds)
    for loss, norms in record["trace"]:
        if watch.observe(loss, norms):
            return watch.step
    return None


def score(records: list[dict[str, Any]], **thresholds: Any) -> dict[str, Any]:
    """Flagged / missed collapsed runs, false alarms on live ones, and how far into a flagged
    collapsed run the flag came (fraction of its steps)."""
    hits, misses, alarms, lateness = 0, 0, 0, []
    for record in records:
        step = replay(record, **thresholds)
        if record["collapsed"]:
            if step is None:
                misses += 1
            else:
                hits += 1
                lateness.append(step / max(1, len(record["trace"])))
        elif step is not None:
            alarms += 1
    return {
        "hits": hits,
        "misses": misses,
        "alarms": alarms,
        "live": sum(not r["collapsed"] for r in records),
        "median_lateness": statistics.median(lateness) if lateness else None,
    }


def report(stored: dict[str, dict[str, Any]]) -> str:
    records = [r for r in stored.values() if r.get("trace")]
    collapsed = sum(r["collapsed"] for r in records)
    lines = [
        f"{len(records)} runs ({collapsed} collapsed: final accuracy < "
        f"{kd_suite.COLLAPSE_ACCURACY:.0%} or a non-finite loss)",
        "",
        "| loss_fraction | gradient_drop | patience | collapsed runs flagged | missed "
        "| live runs flagged (false alarms) | median step of the flag / run length |",
        "|---|---|---|---|---|---|---|",
    ]
    for fraction in LOSS_FRACTIONS:
        for drop in GRADIENT_DROPS:
            for patience in PATIENCES:
                s = score(records, loss_fraction=fraction, gradient_drop=drop, patience=patience)
                default = (fraction, drop, patience) == (
                    COLLAPSE_LOSS_FRACTION,
                    COLLAPSE_GRADIENT_DROP,
                    COLLAPSE_PATIENCE,
                )
                late = "-" if s["median_lateness"] is None else f"{s['median_lateness']:.2f}"
                mark = " (default)" if default else ""
                lines.append(
                    f"| {fraction:g} | {drop:g} | {patience}{mark} | {s['hits']}/{collapsed} "
                    f"| {s['misses']} | {s['alarms']}/{s['live']} | {late} |"
                )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", default="0-2", help="e.g. 0-2 or 0,3 (default 0-2)")
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES)
    parser.add_argument(
        "--store", type=Path, default=kd_suite.DEFAULT_STORE, help="the suite's store (lr grid)"
    )
    parser.add_argument("--report-only", action="store_true", help="replay the stored traces")
    parser.add_argument("--quick", action="store_true", help="2 conditions, seed 0, tiny data")
    args = parser.parse_args(argv)
    names = QUICK_CONDITIONS if args.quick else CONDITIONS
    seeds = (0,) if args.quick else kd_suite.parse_seeds(args.seeds)
    if args.report_only:
        stored = kd_suite.Store(args.traces).runs
    else:
        stored = collect(names, seeds, args.quick, args.workers, args.traces, args.store)
    print(report(stored))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
