"""The embedded-default demo: distil a Fashion-MNIST student with ce, fixed-weight KD and MoKD.

Trains (or loads from the cache) a teacher CNN on the 60k Fashion-MNIST training images, then
trains the same tiny student CNN under the same budget with

- ``ce``: cross-entropy alone,
- ``kd``: the classic fixed-weight sum ``(1 - a) CE + a KD``, one run per ``--kd-weight``
  (default a = 0.1 and 0.5: how much the outcome depends on the weight),
- ``mokd``: MoKD's gradient-level balancing with the library's defaults, no weight to choose,
  and, for comparison, the 0.1 default (``step="anchor"``, the paper's weights ``equalize=0``),

and prints a comparison table (test accuracy, wall time, how often the task and KD gradients
conflict, and their dominance ratio). Written to ``--out``:

- ``summary.json``: settings, teacher accuracy, per-run results;
- ``<run>/log.csv`` (+ TensorBoard events with ``--tensorboard``): one
  :class:`~mokd_optim.diagnostics.StatsLogger` log per run, a row every 25 steps with the
  losses, the weights, the gradient cosine and the dominance ratio (fixed-weight runs are
  probed for the same statistics);
- ``<run>/eval_log.csv``: the test accuracy after every epoch;
- ``<run>/curves.png``: :func:`~mokd_optim.diagnostics.plot_log` of both logs (losses, test
  accuracy, weight shares, cosine, dominance), for every run;
- ``comparison.png``: test accuracy per epoch (collapsed runs listed apart, the axis zoomed on
  the others), the KD share of the weights, the gradient cosine and the dominance of all runs.

``summary.json`` is strict JSON: statistics a run does not have (the cosine of ``ce``) are
``null``.

    python examples/demo.py                  # ~400 s of CPU time on a fresh machine (teacher training included), ~125 s with the cached teacher
    python examples/demo.py --quick          # a one-minute smoke run on a subset

Progress bars for the teacher and each student run go to stderr (``--no-progress``: none).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

# Like the trainers, the demo imports its neighbours (fashion_mnist.py, trainer_utils.py) from
# its own folder and mokd_optim from the environment (`make demo` installs the clone into .venv).
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from fashion_mnist import (  # noqa: E402
    TEACHER_BATCH_SIZE,
    distil,
    load_data,
    predict_logits,
    train_teacher,
)
from trainer_utils import strict_json  # noqa: E402

from mokd_optim.diagnostics import StatsLogger, plot_log, read_log  # noqa: E402

STUDENT_BATCH_SIZE = 64  # every student run (distil's default)


class StepBar:
    """A tqdm progress bar (on stderr) opened at the first step, so a teacher loaded from the
    cache shows none; every call is a no-op when progress bars are off (``enabled=False``)."""

    def __init__(self, enabled: bool, total: int, description: str) -> None:
        self.enabled, self.total, self.description = enabled, total, description
        self.bar: Any = None

    def step(self) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm  # the examples extra

            self.bar = tqdm(total=self.total, desc=self.description, unit="step")
        self.bar.update(1)

    def write(self, message: str) -> None:
        """Print ``message`` above the bar (plain ``print`` would break the bar's line)."""
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def plot_comparison(
    logs: dict[str, Path], results: dict[str, dict[str, Any]], png_path: Path
) -> None:
    """One figure comparing the runs: test accuracy per epoch (the final values in the legend;
    collapsed or diverged runs listed there but not drawn, so the axis zooms on the others,
    epochs as integer ticks), the KD share
    of the weights ``w_kd / (w_task + w_kd)``, ``cos(g_task, g_kd)`` and the dominance ratio
    over training (smoothed; raw faint). Legends sit outside the panels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from mokd_optim.diagnostics import smooth

    figure = Figure(figsize=(13, 8), layout="constrained")
    FigureCanvasAgg(figure)
    (accuracy_axis, share_axis), (cosine_axis, dominance_axis) = figure.subplots(2, 2)
    colours = {name: f"C{index}" for index, name in enumerate(results)}  # one per run
    shown, last_epoch = [], 1
    for name, summary in results.items():
        accuracy = [100 * a for a in summary["accuracy_per_epoch"]]
        if summary.get("collapsed") or summary.get("diverged"):
            # listed in the legend, not drawn: at 10 % it would stretch the axis over 80 points
            state = "diverged" if summary.get("diverged") else "collapsed"
            accuracy_axis.plot(
                [],
                [],
                marker="x",
                linestyle="none",
                color=colours[name],
                label=f"{name}: {accuracy[-1]:.2f} % ({state}, not drawn)",
            )
            continue
        epochs = list(range(1, len(accuracy) + 1))
        accuracy_axis.plot(
            epochs,
            accuracy,
            marker="o",
            label=f"{name}: {accuracy[-1]:.2f} %",  # the final numbers, in the legend
            color=colours[name],
        )
        last_epoch = max(last_epoch, len(accuracy))
        shown.extend(accuracy)
    if shown:
        low, high = min(shown), max(shown)
        margin = max(0.5, 0.08 * (high - low))
        accuracy_axis.set_ylim(low - margin, high + margin)
    accuracy_axis.set_xlim(0.5, last_epoch + 0.5)
    accuracy_axis.set_xticks(range(1, last_epoch + 1, max(1, last_epoch // 10)))  # whole epochs
    title = "student test accuracy (final value in the legend)"
    accuracy_axis.set(title=title, xlabel="epoch", ylabel="accuracy %")

    def curve(axis: Any, name: str, steps: list[float], values: list[float]) -> None:
        points = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        window = max(1, len(ys) // 25)
        if window > 1:
            axis.plot(xs, ys, color=colours[name], alpha=0.2, linewidth=0.7)
        axis.plot(xs, smooth(ys, window), color=colours[name], linewidth=1.4, label=name)

    for name, path in logs.items():
        columns = read_log(path)
        steps = columns["step"]
        if "weight/kd" in columns:
            share = [
                k / (t + k) if (t + k) > 0 else math.nan
                for t, k in zip(columns["weight/task"], columns["weight/kd"])
            ]
            curve(share_axis, name, steps, share)
        if "cosine/task|kd" in columns:
            curve(cosine_axis, name, steps, columns["cosine/task|kd"])
        if "dominance" in columns:
            dominance = [
                d if math.isfinite(d) and d > 0 else math.nan for d in columns["dominance"]
            ]
            curve(dominance_axis, name, steps, dominance)
    share_axis.set(
        title="KD share of the weights  w_kd / (w_task + w_kd)", xlabel="step", ylim=(-0.05, 1.05)
    )
    cosine_axis.axhline(0.0, color="gray", linewidth=0.8, linestyle="--")
    cosine_axis.set(title="cos(g_task, g_kd)  (< 0: conflict)", xlabel="step", ylim=(-1.05, 1.05))
    dominance_axis.set_yscale("log")
    dominance_axis.set(title="dominance  max ||g|| / min ||g||", xlabel="step")
    for axis in (accuracy_axis, share_axis, cosine_axis, dominance_axis):
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    png_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png_path, dpi=100)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--lr",
        type=float,
        default=0.05,
        help="SGD learning rate (momentum 0.9), the same for every run",
    )
    parser.add_argument(
        "--kd-weight",
        type=float,
        nargs="+",
        default=[0.1, 0.5],
        help="a in (1 - a) CE + a KD for the fixed-weight baselines (one run each)",
    )
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument(
        "--train-images", type=int, default=None, help="student training images (default: all 60k)"
    )
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None, help="directory with the Fashion-MNIST .gz files")
    parser.add_argument(
        "--download",
        action="store_true",
        help="download Fashion-MNIST with torchvision if not found",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument(
        "--probe-every",
        type=int,
        default=25,
        help="steps between gradient statistics (and log rows)",
    )
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard events to <out>/<run>/tensorboard",
    )
    parser.add_argument(
        "--no-plots", action="store_true", help="skip the PNG figures (no matplotlib needed)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 epoch on 5k images, teacher 1 epoch on 10k"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bars (they go to stderr)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher_images = None
    if args.quick:
        args.epochs, args.train_images, args.teacher_epochs, teacher_images = 1, 5000, 1, 10000

    start = time.perf_counter()
    full = load_data(train_limit=teacher_images, root=args.data, download=args.download)
    print(f"Fashion-MNIST: {len(full.y_train)} training / {len(full.y_test)} test images")
    teacher_start = time.perf_counter()
    teacher_bar = StepBar(
        not args.no_progress,
        args.teacher_epochs * math.ceil(len(full.y_train) / TEACHER_BATCH_SIZE),
        "teacher",
    )
    teacher, teacher_accuracy = train_teacher(
        full, epochs=args.teacher_epochs, progress=teacher_bar.write, on_step=teacher_bar.step
    )
    teacher_bar.close()
    teacher_seconds = time.perf_counter() - teacher_start
    print(
        f"teacher test accuracy: {100 * teacher_accuracy:.2f} % ({teacher_seconds:.0f} s, cached for the next run)"
    )
    data = load_data(train_limit=args.train_images, root=args.data) if args.train_images else full
    teacher_logits = predict_logits(teacher, data.x_train)

    runs: dict[str, tuple[str, dict]] = {"ce": ("ce", dict(method="ce"))}
    for a in args.kd_weight:
        runs[f"kd (a={a:g})"] = (
            f"kd_a{a:g}",
            dict(method="weighted", method_options={"weights": {"task": 1 - a, "kd": a}}),
        )
    runs["mokd"] = ("mokd", dict(method="mokd"))
    # the 0.1 default, which the condition suite replaced (docs/mokd.md, docs/results_round1.md)
    runs["mokd 0.1 default"] = (
        "mokd_v01",
        dict(
            method="mokd",
            method_options={
                "step": "anchor",
                "equalize": 0.0,
                "anchor_vs_rest": False,
                "conflict": "pareto",
            },
        ),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    results, logs = {}, {}
    for name, (slug, config) in runs.items():
        print(f"training student: {name} ...", flush=True)
        log_path = args.out / slug / "log.csv"
        tensorboard = args.out / slug / "tensorboard" if args.tensorboard else None
        steps = args.epochs * math.ceil(len(data.y_train) / STUDENT_BATCH_SIZE)
        bar = StepBar(not args.no_progress, steps, name)
        with StatsLogger(log_path, tensorboard=tensorboard) as logger:
            result = distil(
                data,
                teacher_logits,
                seed=args.seed,
                epochs=args.epochs,
                lr=args.lr,
                temperature=args.temperature,
                batch_size=STUDENT_BATCH_SIZE,
                probe_every=args.probe_every,
                logger=logger,
                progress=bar.step,
                **config,
            )
        bar.close()
        # test accuracy per epoch, at the step each epoch ended, for the run's curves.png
        eval_path = args.out / slug / "eval_log.csv"
        steps_per_epoch = math.ceil(len(data.y_train) / STUDENT_BATCH_SIZE)
        with StatsLogger(eval_path) as eval_logger:
            for epoch, accuracy in enumerate(result.accuracy, start=1):
                eval_logger.log(epoch * steps_per_epoch, **{"val/accuracy %": 100 * accuracy})
        results[name] = {**result.summary(), "log": str(log_path), "eval_log": str(eval_path)}
        logs[name] = log_path

    header = f"{'run':<16} {'test acc %':>10} {'wall s':>8} {'conflict %':>11} {'cos(task,kd)':>13} {'log10 dominance':>16}  note"
    lines = [header, "-" * len(header)]
    for name, summary in results.items():
        # a run whose loss became non-finite, or that ended at chance level (10 classes): say so
        summary["collapsed"] = summary["final_accuracy"] < 0.15
        note = (
            "diverged (non-finite loss)"
            if summary["diverged"]
            else ("collapsed to chance level" if summary["collapsed"] else "")
        )
        lines.append(
            f"{name:<16} {100 * summary['final_accuracy']:>10.2f} {summary['seconds']:>8.1f} "
            f"{100 * summary['conflict_fraction']:>11.1f} {summary['mean_cosine']:>13.3f} {summary['mean_log10_dominance']:>16.2f}  {note}".rstrip()
        )
    print()
    print("\n".join(lines))
    figures = []
    if not args.no_plots:
        for path in logs.values():
            plot_log(path, path.with_name("curves.png"), eval_path=path.with_name("eval_log.csv"))
            figures.append(str(path.with_name("curves.png")))
        plot_comparison(
            {name: path for name, path in logs.items() if name != "ce"},
            results,
            args.out / "comparison.png",
        )
        figures.append(str(args.out / "comparison.png"))
    report = {
        "teacher_accuracy": teacher_accuracy,
        "teacher_seconds": teacher_seconds,
        "settings": {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(args).items()
        },
        "runs": results,
        "table": lines,
        "figures": figures,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "wall_seconds": time.perf_counter() - start,
    }
    (args.out / "summary.json").write_text(
        json.dumps(strict_json(report), indent=2, allow_nan=False)
    )
    print(
        f"\nwrote {args.out / 'summary.json'}, logs and figures in {args.out} ({report['wall_seconds']:.0f} s in total)"
    )
    return report


if __name__ == "__main__":
    main()
