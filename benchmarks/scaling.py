"""How the overhead of a balanced KD step grows with the number of objectives K and the model size.

Same step as ``step_overhead.py`` (teacher forward, student forward, K losses, backward, SGD
step), timed interleaved against the fixed-weight step in one process:

- **K** from 2 to 8 (cross-entropy plus KD terms at K - 1 temperatures) with the ResNet-18
  student: the floor (fixed step + K - 1 extra backward passes), MoKD with ``loop``, ``vmap``
  and ``representation``, UPGrad with ``loop``, and torchjd's UPGrad (autojac) when
  installed;
- **model size** at K = 2: students from torchvision (MobileNet-V3-small, ResNet-18, ResNet-34,
  ResNet-50) under the same ResNet-34 teacher.

Writes ``benchmarks/results/scaling.json`` and regenerates ``docs/benchmarks.md``.

    python benchmarks/scaling.py                  # CPU, ~10 minutes on 2 busy cores
    python benchmarks/scaling.py --quick          # checks that it works
    python benchmarks/scaling.py --device cuda    # GPU: 224 px, batch 64, bf16 autocast
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


from benchmarks import report as page  # noqa: E402
from benchmarks._common import (  # noqa: E402
    command_line,
    configure,
    interleaved,
    load_average,
    paired_ratio,
    peak_memory,
    write_json,
)
from benchmarks._kd import (  # noqa: E402
    KDSetup,
    Step,
    build,
    fixed_step,
    floor_step,
    ours_step,
)
from benchmarks.environment import as_text, describe  # noqa: E402

BASELINE = "fixed-weight KD"
FLOOR = "floor"


def cases_for(setup: KDSetup, with_torchjd: bool) -> dict[str, Step]:
    cases: dict[str, Step] = {
        BASELINE: fixed_step(setup),
        FLOOR: floor_step(setup),
        "mokd loop": ours_step(setup, "mokd", "loop"),
        "mokd vmap": ours_step(setup, "mokd", "vmap"),
        "mokd representation": ours_step(setup, "mokd", "representation"),
        "upgrad loop": ours_step(setup, "upgrad", "loop"),
    }
    if with_torchjd:
        from benchmarks.peers import torchjd_cases

        for case in torchjd_cases():
            if case.label == "torchjd autojac UPGrad":
                cases[case.label] = case.step(setup)
    return cases


def measure(setup: KDSetup, args: argparse.Namespace, with_torchjd: bool) -> dict[str, Any]:
    cases = cases_for(setup, with_torchjd)
    timing = interleaved(cases, BASELINE, setup.device, rounds=args.rounds, warmup=1)

    def release() -> None:
        setup.student.zero_grad(set_to_none=True)

    row: dict[str, Any] = {
        "k": setup.k,
        "parameters": sum(p.numel() for p in setup.params()),
        "cases": {},
    }
    for label, entry in timing.items():
        row["cases"][label] = {
            "time": entry["time"],
            "ratio": entry["ratio"],
            "over_floor": paired_ratio(timing, label, FLOOR) if label != BASELINE else None,
            "peak_memory_bytes": peak_memory(cases[label], setup.device, release)
            if args.memory
            else None,
        }
    return row


def _print(row: dict[str, Any], what: str) -> None:
    parts = [
        f"{label} {entry['ratio']['median']:.2f}x"
        for label, entry in row["cases"].items()
        if label != BASELINE
    ]
    print(
        f"  {what}: fixed {1e3 * row['cases'][BASELINE]['time']['median']:.0f} ms; "
        + ", ".join(parts),
        flush=True,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="K in {2, 3}, one small student, 1 round"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 3, 4, 6, 8])
    parser.add_argument(
        "--students", nargs="+", default=["mobilenet_v3_small", "resnet18", "resnet34", "resnet50"]
    )
    parser.add_argument("--teacher", default="resnet34")
    parser.add_argument("--batch", type=int, default=None, help="default 16 on the CPU, 64 on CUDA")
    parser.add_argument(
        "--resolution", type=int, default=None, help="default 32 on the CPU, 224 on CUDA"
    )
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--no-torchjd", action="store_true")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "scaling.json"
    )
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--plots", type=Path, default=None)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.batch = args.batch or (64 if cuda else 16)
    args.resolution = args.resolution or (224 if cuda else 32)
    args.num_classes = args.num_classes or (1000 if cuda else 100)
    args.amp = cuda and not args.no_amp
    if args.quick:
        args.ks, args.students, args.teacher, args.batch, args.resolution, args.rounds = (
            [2, 3],
            ["resnet18"],
            "resnet18",
            4,
            16,
            1,
        )
        args.memory = False
    device = configure(args.threads, args.device)
    with_torchjd = not args.no_torchjd
    if with_torchjd:
        try:
            import torchjd  # noqa: F401
        except ImportError:
            with_torchjd = False
    environment = describe()
    print("environment:", as_text(environment), flush=True)
    start = time.perf_counter()
    load_before = load_average()
    report: dict[str, Any] = {
        "benchmark": "scaling",
        "command": command_line("benchmarks/scaling.py", sys.argv[1:] if argv is None else argv),
        "environment": environment,
        "settings": {
            key: value for key, value in vars(args).items() if key not in ("out", "page", "plots")
        },
        "by_k": [],
        "by_size": [],
    }
    common = {
        "teacher": args.teacher,
        "batch": args.batch,
        "resolution": args.resolution,
        "num_classes": args.num_classes,
        "device": device,
        "amp": args.amp,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for k in args.ks:
            setup = build(student="resnet18", k=k, **common)
            row = measure(setup, args, with_torchjd)
            report["by_k"].append(row)
            _print(row, f"K={k}")
            del setup
        for student in args.students:
            setup = build(student=student, k=2, **common)
            row = measure(setup, args, with_torchjd)
            row["student"] = student
            report["by_size"].append(row)
            _print(row, f"{student} ({row['parameters']:,} parameters)")
            del setup
    report["wall_seconds"] = time.perf_counter() - start
    report["load_average"] = {"before": load_before, "after": load_average()}
    write_json(args.out, report)
    page.write_page(args.out.parent, args.page, args.plots)
    print(f"wrote {args.out} and {args.page} in {report['wall_seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
