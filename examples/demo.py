"""The embedded-default demo: distil a Fashion-MNIST student with ce, fixed-weight KD and MoKD.

Trains (or loads from the cache) a teacher CNN on the 60k Fashion-MNIST training images, then
trains the same tiny student CNN under the same budget with

- ``ce``: cross-entropy alone,
- ``kd``: the classic fixed-weight sum ``(1 - a) CE + a KD`` (``--kd-weight``),
- ``mokd``: MoKD's gradient-level balancing, no weight to choose,

and prints a comparison table (test accuracy, wall time, how often the task and KD gradients
conflict, and their dominance ratio), writing ``summary.json`` to ``--out``.

    python examples/demo.py                  # about 6 minutes on 2 cores (teacher cached after the first run)
    python examples/demo.py --quick          # a one-minute smoke run on a subset
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from examples.fashion_mnist import distil, load_data, predict_logits, train_teacher  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (momentum 0.9), the same for every run")
    parser.add_argument("--kd-weight", type=float, default=0.5, help="a in (1 - a) CE + a KD for the fixed-weight baseline")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--train-images", type=int, default=None, help="student training images (default: all 60k)")
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None, help="directory with the Fashion-MNIST .gz files")
    parser.add_argument("--download", action="store_true", help="download Fashion-MNIST with torchvision if not found")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--quick", action="store_true", help="1 epoch on 5k images, teacher 1 epoch on 10k")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher_images = None
    if args.quick:
        args.epochs, args.train_images, args.teacher_epochs, teacher_images = 1, 5000, 1, 10000

    start = time.perf_counter()
    full = load_data(train_limit=teacher_images, root=args.data, download=args.download)
    print(f"Fashion-MNIST: {len(full.y_train)} training / {len(full.y_test)} test images")
    teacher, teacher_accuracy = train_teacher(full, epochs=args.teacher_epochs, progress=print)
    print(f"teacher test accuracy: {100 * teacher_accuracy:.2f} %")
    data = load_data(train_limit=args.train_images, root=args.data) if args.train_images else full
    teacher_logits = predict_logits(teacher, data.x_train)

    runs = {
        "ce": dict(method="ce"),
        f"kd (a={args.kd_weight:g})": dict(method="weighted", method_options={"weights": {"task": 1 - args.kd_weight, "kd": args.kd_weight}}),
        "mokd": dict(method="mokd"),
    }
    results = {}
    for name, config in runs.items():
        print(f"training student: {name} ...", flush=True)
        result = distil(data, teacher_logits, seed=args.seed, epochs=args.epochs, lr=args.lr, temperature=args.temperature, **config)
        results[name] = result.summary()

    header = f"{'run':<14} {'test acc %':>10} {'wall s':>8} {'conflict %':>11} {'cos(task,kd)':>13} {'log10 dominance':>16}"
    print()
    print(header)
    print("-" * len(header))
    for name, summary in results.items():
        print(
            f"{name:<14} {100 * summary['final_accuracy']:>10.2f} {summary['seconds']:>8.1f} "
            f"{100 * summary['conflict_fraction']:>11.1f} {summary['mean_cosine']:>13.3f} {summary['mean_log10_dominance']:>16.2f}"
        )
    report = {
        "teacher_accuracy": teacher_accuracy,
        "settings": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        "runs": results,
        "wall_seconds": time.perf_counter() - start,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out / 'summary.json'} ({report['wall_seconds']:.0f} s in total)")
    return report


if __name__ == "__main__":
    main()
