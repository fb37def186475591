"""The optimizer's fixed per-step cost on small models, where two backward passes are cheap.

On ResNet-18 (``step_overhead.py``) the work of the backward passes hides the optimizer's own
cost: the Python and the small tensor ops of the Gram matrix, the weights, the combination and
the checks. On a small model -- the CIFAR KD benchmark's ResNet8x4, an MLP, a few transformer
blocks, anything a GPU runs in a few milliseconds -- that fixed cost shows. Three models, each
with a frozen teacher of the same kind, K = 2 losses (cross-entropy and KD at T = 4) on the
student logits, SGD with momentum:

- ``mlp``: 784-64-10 MLP (teacher 784-256-10), batch 128;
- ``resnet8x4``: the CIFAR ResNet8x4 of ``examples/cifar_models.py`` (1.2M parameters, teacher
  ResNet8x4) at 32 px, batch 64;
- ``transformer``: 2 pre-norm encoder blocks (d = 64, 4 heads, MLP 128) over 16 tokens of 64
  features, mean-pooled into a 10-class head (teacher: the same), batch 32.

Cases, timed interleaved against the fixed-weight KD step (``benchmarks/_common.interleaved``;
one timed call runs ``--steps`` training steps): the floor of an exact strategy (one extra
backward), ``mokd`` with the ``loop`` strategy (``validate`` on and off), with the
``representation`` strategy (features = student logits), ``mokd-amortized`` (``amortized``,
``observe="next_batch"``) and the fixed weights through the wrapper (``weighted``). Each case's
tensor operations and host synchronisations per step come from
``mokd_optim.diagnostics.step_cost`` (torch profiler events; on CUDA also kernel launches).

Writes ``benchmarks/results/small_models.json`` and its section of ``docs/benchmarks.md``.

    python benchmarks/small_models.py                 # CPU, 1 thread, about 5 minutes
    python benchmarks/small_models.py --quick         # seconds: checks that it works
    python benchmarks/small_models.py --device cuda   # CUDA events, kernel launches per step
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks import report as page  # noqa: E402
from benchmarks._common import (  # noqa: E402
    command_line,
    configure,
    interleaved,
    load_average,
    paired_ratio,
    write_json,
)
from benchmarks._kd import KDSetup, Step, fixed_step, floor_step, ours_step  # noqa: E402
from benchmarks.environment import as_text, describe  # noqa: E402
from mokd_optim.diagnostics import step_cost  # noqa: E402

BASELINE = "fixed-weight KD"
FLOOR = "floor: fixed + 1 extra backward"
LOOP = "ours mokd loop"
LOOP_NO_VALIDATE = "ours mokd loop validate=False"
REPRESENTATION = "ours mokd representation"
REPRESENTATION_NO_VALIDATE = "ours mokd representation validate=False"
AMORTIZED = "ours mokd-amortized amortized next-batch"
WRAPPED_FIXED = "ours weighted (fixed weights through the wrapper)"
MODELS = ("mlp", "resnet8x4", "transformer")
#: Training steps per timed call on the CPU (about 0.1 to 2 s each); ``--steps`` overrides.
STEPS = {"mlp": 50, "resnet8x4": 1, "transformer": 10}


class TransformerClassifier(nn.Module):
    """``depth`` pre-norm encoder blocks over ``(N, tokens, width)`` inputs, mean-pooled into
    a linear head. Output ``(N, num_classes)``."""

    def __init__(self, width: int, depth: int, heads: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, heads, hidden, dropout=0.0, batch_first=True, norm_first=True
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


def mlp(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def build_setup(name: str, device: torch.device, quick: bool, seed: int = 0) -> KDSetup:
    """Student, frozen teacher and one random batch for model ``name`` (no download)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    if name == "mlp":
        student, teacher, classes = mlp(64), mlp(256), 10
        x = torch.randn(32 if quick else 128, 1, 28, 28, generator=generator)
    elif name == "resnet8x4":
        from examples import cifar_models

        classes = 100
        student = cifar_models.build("resnet8x4", classes)
        teacher = cifar_models.build("resnet8x4", classes)
        x = torch.randn(4 if quick else 64, 3, 32, 32, generator=generator)
    elif name == "transformer":
        classes = 10
        student = TransformerClassifier(64, 2, 4, 128, classes)
        teacher = TransformerClassifier(64, 2, 4, 128, classes)
        x = torch.randn(8 if quick else 32, 16, 64, generator=generator)
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
    y = torch.randint(0, classes, (x.shape[0],), generator=generator)
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    setup = KDSetup(
        student=student.to(device).train(),
        teacher=teacher.to(device),
        x=x.to(device),
        y=y.to(device),
        device=device,
    )
    setup.names = tuple(setup.losses(*setup.forward()).keys())
    return setup


def build_cases(setup: KDSetup) -> dict[str, Step]:
    """One training step per case (see the module docstring)."""
    return {
        BASELINE: fixed_step(setup),
        FLOOR: floor_step(setup),
        LOOP: ours_step(setup, "mokd", "loop"),
        LOOP_NO_VALIDATE: ours_step(setup, "mokd", "loop", validate=False),
        REPRESENTATION: ours_step(setup, "mokd", "representation"),
        REPRESENTATION_NO_VALIDATE: ours_step(setup, "mokd", "representation", validate=False),
        AMORTIZED: ours_step(setup, "mokd-amortized", "amortized"),
        WRAPPED_FIXED: ours_step(
            setup, "weighted", "amortized", weights=dict(zip(setup.names, setup.fixed_weights()))
        ),
    }


def repeated(step: Step, steps: int) -> Step:
    """``steps`` calls of ``step`` as one timed call (a step of a small model is near the
    clock's resolution and noise)."""

    def run() -> None:
        for _ in range(steps):
            step()

    return run


def measure_model(
    name: str, device: torch.device, args: argparse.Namespace, log: Callable[[str], None]
) -> dict[str, Any]:
    setup = build_setup(name, device, args.quick)
    steps = args.steps or STEPS[name]
    params = setup.params()
    cases = build_cases(setup)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for step in cases.values():  # lazy state (momentum buffers), before counting ops
            step()
            step()
        costs = {label: step_cost(step) for label, step in cases.items()}
        timing = interleaved(
            {label: repeated(step, steps) for label, step in cases.items()},
            BASELINE,
            device,
            rounds=args.rounds,
            warmup=1,
            progress=lambda message: log(f"  {name}: {message}"),
        )
    plain_ops = costs[BASELINE].tensor_ops
    result: dict[str, Any] = {
        "model": name,
        "parameters": sum(p.numel() for p in params),
        "parameter_tensors": len(params),
        "batch": int(setup.x.shape[0]),
        "input_shape": list(setup.x.shape[1:]),
        "steps_per_call": steps,
        "cases": {},
    }
    for label in cases:
        entry = timing[label]
        cost = costs[label]
        result["cases"][label] = {
            "time_per_step": {k: v / steps if k != "n" else v for k, v in entry["time"].items()},
            "ratio": entry["ratio"],
            "ratios": entry["ratios"],
            "tensor_ops": cost.tensor_ops,
            "extra_tensor_ops": cost.tensor_ops - plain_ops,
            "host_syncs": cost.host_syncs,
            "kernel_launches": cost.kernel_launches,
            "ops": cost.ops,
        }
    result["targets"] = {
        "loop_vs_floor": paired_ratio(timing, LOOP, FLOOR),
        "loop_vs_floor_no_validate": paired_ratio(timing, LOOP_NO_VALIDATE, FLOOR),
        "representation_vs_fixed": timing[REPRESENTATION]["ratio"],
        "representation_vs_fixed_no_validate": timing[REPRESENTATION_NO_VALIDATE]["ratio"],
    }
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny batches, 2 rounds of 2 steps: checks that it works",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"training steps per timed call (default per model: {STEPS})",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "small_models.json"
    )
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 2, 1
    device = configure(args.threads, args.device)
    environment = describe()
    print("environment:", as_text(environment), f"device {device.type}", flush=True)
    start = time.perf_counter()
    load_before = load_average()
    report: dict[str, Any] = {
        "benchmark": "small_models",
        "command": command_line(
            "benchmarks/small_models.py", sys.argv[1:] if argv is None else argv
        ),
        "environment": environment,
        "settings": {key: value for key, value in vars(args).items() if key not in ("out", "page")},
        "models": [],
    }
    for name in args.models:
        row = measure_model(name, device, args, lambda message: print(message, flush=True))
        report["models"].append(row)
        print(
            f"{name}: {row['parameters']:,} parameters in {row['parameter_tensors']} tensors, batch {row['batch']}",
            flush=True,
        )
        for label, entry in row["cases"].items():
            r, t = entry["ratio"], entry["time_per_step"]
            print(
                f"  {label:<52} {1e3 * t['median']:7.3f} ms  {r['median']:5.2f}x [{r['q1']:.2f}, {r['q3']:.2f}]"
                f"  {entry['tensor_ops']:4d} ops ({entry['extra_tensor_ops']:+d})  {entry['host_syncs']} syncs",
                flush=True,
            )
        for key, q in row["targets"].items():
            print(f"  {key:<40} {q['median']:.2f} [{q['q1']:.2f}, {q['q3']:.2f}]", flush=True)
    report["wall_seconds"] = time.perf_counter() - start
    report["load_average"] = {"before": load_before, "after": load_average()}
    write_json(args.out, report)
    page.update_section(args.page, "small_models", page.small_model_lines(report))
    print(f"wrote {args.out} and its section of {args.page} in {report['wall_seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
