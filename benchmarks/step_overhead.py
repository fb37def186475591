"""What a balanced KD step costs against the fixed-weight KD step, and against the peers.

One process, one teacher -> student pair (torchvision ResNet-34 -> ResNet-18, randomly
initialised), one batch. Every case runs a whole training step (teacher forward, student
forward, K = 2 losses -- cross-entropy and KD at T = 4 -- backward, SGD step) and is timed
interleaved with the fixed-weight KD step (``loss.backward()`` of the weighted sum, plain SGD):

- ``MultiObjectiveOptimizer`` for ``mokd``, ``mgda``, ``pcgrad``, ``upgrad`` with the
  ``loop``, ``vmap`` and ``representation`` (``features=`` student logits) strategies, MoKD also
  with ``validate=False``; ``famo`` and ``mokd-amortized`` with the ``amortized`` strategy
  (``observe="next_batch"`` and the faithful same-batch closure);
- the floor of an exact strategy: the fixed step plus one extra student backward, measured;
- torchjd (autojac and autogram), pytorch_optimizer's PCGrad and LibMTL on the same model,
  batch and method, after checking that each computes the same ``.grad`` as ours.

Peak memory per step is measured separately (``benchmarks/_common.peak_memory``), as are the
two costs of ``validate=True`` (the loss check's host synchronisation and the autograd-graph
walk ``gradients.reach_matrix``) and, on the CPU, 1 versus 2 torch threads.

Writes ``benchmarks/results/step_overhead.json`` and regenerates ``docs/benchmarks.md``. With
``--device cuda`` it writes ``benchmarks/results/step_overhead_cuda.json`` instead and replaces
only the page's section "On a GPU" (``report.write_gpu_section``): the CPU results stay.

    python benchmarks/step_overhead.py                 # CPU: 32 px, batch 16, ~10 minutes
    python benchmarks/step_overhead.py --quick         # under a minute: checks that it works
    python benchmarks/step_overhead.py --device cuda   # GPU: 224 px, batch 64, bf16 autocast, CUDA events
    bash benchmarks/gpu_check.sh                       # the GPU run above plus tests/test_cuda.py
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

import torch  # noqa: E402

from benchmarks import peers as peer_lib  # noqa: E402
from benchmarks import report as page  # noqa: E402
from benchmarks._common import (  # noqa: E402
    command_line,
    configure,
    interleaved,
    load_average,
    paired_ratio,
    peak_memory,
    quantiles,
    time_repeated,
    write_json,
)
from benchmarks._kd import (  # noqa: E402
    KDSetup,
    Step,
    build,
    clone_student,
    fixed_step,
    flat_grad,
    floor_step,
    ours_step,
    same_state,
)
from benchmarks.environment import as_text, describe  # noqa: E402
from mokd_optim import MultiObjectiveOptimizer, gradients  # noqa: E402
from mokd_optim._validation import check_losses  # noqa: E402

BASELINE = "fixed-weight KD"
FLOOR = "floor: fixed + 1 extra backward"
EXACT_METHODS = ("mokd", "mgda", "pcgrad", "upgrad")
STRATEGIES = ("loop", "vmap", "representation")


def ours_label(method: str, strategy: str, validate: bool = True, extra: str = "") -> str:
    return f"ours {method} {strategy}" + ("" if validate else " validate=False") + extra


def build_cases(
    setup: KDSetup, args: argparse.Namespace, peer_cases: list[peer_lib.PeerCase]
) -> tuple[dict[str, Step], dict[str, dict[str, Any]]]:
    """The timed closures and, per label, what each one is."""
    cases: dict[str, Step] = {BASELINE: fixed_step(setup), FLOOR: floor_step(setup)}
    meta: dict[str, dict[str, Any]] = {
        BASELINE: {"kind": "baseline"},
        FLOOR: {"kind": "floor"},
    }
    for method in args.methods:
        for strategy in STRATEGIES:
            label = ours_label(method, strategy)
            cases[label] = ours_step(setup, method, strategy)
            meta[label] = {"kind": "ours", "method": method, "strategy": strategy, "validate": True}
    for strategy in STRATEGIES:
        label = ours_label("mokd", strategy, validate=False)
        cases[label] = ours_step(setup, "mokd", strategy, validate=False)
        meta[label] = {"kind": "ours", "method": "mokd", "strategy": strategy, "validate": False}
    for method in ("famo", "mokd-amortized"):
        for same_batch in (False, True):
            label = ours_label(
                method, "amortized", extra=" same-batch closure" if same_batch else " next-batch"
            )
            cases[label] = ours_step(setup, method, "amortized", same_batch=same_batch)
            meta[label] = {
                "kind": "ours",
                "method": method,
                "strategy": "amortized",
                "validate": True,
                "same_batch": same_batch,
            }
    for case in peer_cases:
        cases[case.label] = case.step(setup)
        meta[case.label] = {
            "kind": "peer",
            "library": case.library,
            "method": case.ours,
            "note": case.note,
        }
    return cases, meta


def float64_update(setup: KDSetup, method: str, options: dict[str, Any]) -> torch.Tensor:
    """The method's update from a float64 Gram matrix of the exact per-objective gradients.

    Our weighting applied to ``J J^T`` computed in float64 from the gradients of the current
    batch: the reference both our optimizer and the peers are compared with, so that a
    difference can be attributed (e.g. to a float32 Gram of the concatenated Jacobian).
    """
    from mokd_optim.methods import get

    params = setup.params()
    with same_state([setup.student]):
        losses = setup.losses(*setup.forward())
        values = torch.stack([loss.detach() for loss in losses.values()]).double()
        jacobian = torch.stack(
            [
                torch.cat(
                    [
                        g.reshape(-1).double()
                        for g in torch.autograd.grad(loss, params, retain_graph=True)
                    ]
                )
                for loss in losses.values()
            ]
        )
    balancer = get(method, **options)
    balancer.bind(tuple(losses))
    weights = balancer.weights(jacobian @ jacobian.T, values)
    return weights.double() @ jacobian


def check_peers(setup: KDSetup, peer_cases: list[peer_lib.PeerCase]) -> list[dict[str, Any]]:
    """Does each peer write the same ``.grad`` as our method with the same definition?

    Both are also compared with :func:`float64_update`.
    """
    rows = []
    params = setup.params()
    references: dict[str, torch.Tensor] = {}
    for case in peer_cases:
        if case.ours not in references:
            references[case.ours] = float64_update(setup, case.ours, case.ours_options)
        reference = references[case.ours]
        with same_state([setup.student]):
            optimizer = MultiObjectiveOptimizer(
                torch.optim.SGD(params, lr=0.0), case.ours, strategy="loop", **case.ours_options
            )
            optimizer.zero_grad(set_to_none=True)
            stats = optimizer.backward(setup.losses(*setup.forward()))
            ours = flat_grad(params)
            optimizer.zero_grad(set_to_none=True)
        model = clone_student(setup) if case.own_model else setup.student
        with same_state([model]):
            model.zero_grad(set_to_none=True)
            case.backward(setup, model)
            theirs = flat_grad(setup.params(model))
            model.zero_grad(set_to_none=True)

        def distance(a: torch.Tensor, b: torch.Tensor) -> float:
            return float((a - b).norm() / b.norm().clamp_min(1e-30))

        relative = distance(ours, theirs)
        cosine = float(ours @ theirs / (ours.norm() * theirs.norm()).clamp_min(1e-30))
        rows.append(
            {
                "peer": case.label,
                "library": case.library,
                "ours": case.ours,
                "ours_options": case.ours_options,
                "relative_difference": relative,
                "ours_vs_float64": distance(ours, reference),
                "peer_vs_float64": distance(theirs, reference),
                "cosine": cosine,
                "our_weights": stats.weights.tolist(),
                "same_update": relative < 1e-3,
            }
        )
        print(
            f"  check {case.label:<34} vs ours {case.ours:<7} ||diff||/||peer|| = {relative:.1e}; "
            f"vs float64 reference: ours {rows[-1]['ours_vs_float64']:.1e}, peer {rows[-1]['peer_vs_float64']:.1e}",
            flush=True,
        )
    return rows


def validation_costs(setup: KDSetup, args: argparse.Namespace) -> dict[str, Any]:
    """Per-call cost of the two checks ``validate=True`` adds, on this model's graph."""
    device = setup.device
    params = setup.params()
    losses = setup.losses(*setup.forward())
    names, tensors = tuple(losses), list(losses.values())
    result = {
        "reach_matrix": quantiles(
            [
                time_repeated(
                    lambda: gradients.reach_matrix(tensors, params),
                    device,
                    min_seconds=args.min_seconds,
                )
                for _ in range(args.repeats)
            ]
        ),
        "check_losses": quantiles(
            [
                time_repeated(
                    lambda: check_losses(names, tensors, positive=True, check_values=True),
                    device,
                    min_seconds=args.min_seconds,
                )
                for _ in range(args.repeats)
            ]
        ),
        "graph_nodes": _count_nodes(tensors),
    }
    return result


def _count_nodes(tensors: list[torch.Tensor]) -> int:
    seen: set[Any] = set()
    stack = [t.grad_fn for t in tensors]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return len(seen)


def thread_comparison(setup: KDSetup, args: argparse.Namespace) -> dict[str, Any]:
    """The fixed-weight step with 1 and with 2 torch threads, interleaved (CPU only)."""
    step = fixed_step(setup)

    def with_threads(count: int) -> Step:
        def run() -> None:
            torch.set_num_threads(count)
            step()

        return run

    timing = interleaved(
        {"1 thread": with_threads(1), "2 threads": with_threads(2)},
        "1 thread",
        setup.device,
        rounds=args.thread_rounds,
        seed=1,
    )
    torch.set_num_threads(args.threads)
    return {
        name: {"time": entry["time"], "ratio": entry["ratio"]} for name, entry in timing.items()
    }


def targets(
    timing: dict[str, dict[str, Any]], memory: dict[str, int], meta: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The performance targets of DESIGN.md section 5, from this run."""
    result: dict[str, Any] = {
        "loop_vs_floor": paired_ratio(timing, ours_label("mokd", "loop"), FLOOR),
        "loop_vs_floor_no_validate": paired_ratio(
            timing, ours_label("mokd", "loop", validate=False), FLOOR
        ),
        "vmap_vs_floor": paired_ratio(timing, ours_label("mokd", "vmap"), FLOOR),
        "representation_vs_fixed": timing[ours_label("mokd", "representation")]["ratio"],
        "representation_vs_fixed_no_validate": timing[
            ours_label("mokd", "representation", validate=False)
        ]["ratio"],
        "peers": [],
    }
    for label, info in meta.items():
        if info["kind"] != "peer":
            continue
        method = info["method"]
        best = min(
            (ours_label(method, s) for s in ("loop", "vmap")),
            key=lambda name: timing[name]["ratio"]["median"],
        )
        result["peers"].append(
            {
                "peer": label,
                "method": method,
                "ours": best,
                "time_ours_over_peer": paired_ratio(timing, best, label),
                "memory_ours_over_peer": memory[best] / max(memory[label], 1),
                "loop_time_over_peer": paired_ratio(timing, ours_label(method, "loop"), label),
                "loop_memory_over_peer": memory[ours_label(method, "loop")] / max(memory[label], 1),
            }
        )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="16 px, batch 4, 2 rounds: checks that it works"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (CPU; the run also compares 1 and 2)",
    )
    parser.add_argument("--student", default="resnet18")
    parser.add_argument("--teacher", default="resnet34")
    parser.add_argument("--batch", type=int, default=None, help="default 16 on the CPU, 64 on CUDA")
    parser.add_argument(
        "--resolution", type=int, default=None, help="default 32 on the CPU, 224 on CUDA"
    )
    parser.add_argument(
        "--num-classes", type=int, default=None, help="default 100 on the CPU, 1000 on CUDA"
    )
    parser.add_argument("--no-amp", action="store_true", help="CUDA: no bf16 autocast")
    parser.add_argument("--methods", nargs="+", default=list(EXACT_METHODS))
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--thread-rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=0.05)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default benchmarks/results/step_overhead.json (CPU), step_overhead_cuda.json (CUDA)",
    )
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--plots", type=Path, default=None)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.batch = args.batch or (64 if cuda else 16)
    args.resolution = args.resolution or (224 if cuda else 32)
    args.num_classes = args.num_classes or (1000 if cuda else 100)
    args.amp = cuda and not args.no_amp
    if args.out is None:
        name = f"{page.GPU_SECTION}.json" if cuda else "step_overhead.json"
        args.out = ROOT / "benchmarks" / "results" / name
    if args.quick:
        (
            args.batch,
            args.resolution,
            args.rounds,
            args.thread_rounds,
            args.repeats,
            args.min_seconds,
        ) = 4, 16, 1, 1, 1, 0.005
        args.teacher, args.methods = "resnet18", ["mokd", "pcgrad"]
    device = configure(args.threads, args.device)
    environment = describe()
    environment["peers"] = peer_lib.versions()
    print("environment:", as_text(environment), flush=True)
    start = time.perf_counter()
    load_before = load_average()
    setup = build(
        student=args.student,
        teacher=args.teacher,
        batch=args.batch,
        resolution=args.resolution,
        num_classes=args.num_classes,
        device=device,
        amp=args.amp,
    )
    peer_cases, missing = ([], {}) if args.no_peers else peer_lib.all_cases()
    peer_cases = [case for case in peer_cases if case.ours in args.methods]
    for library, reason in missing.items():
        print(f"  peer {library} not run: {reason}", flush=True)
    report: dict[str, Any] = {
        "benchmark": "step_overhead",
        "command": command_line(
            "benchmarks/step_overhead.py", sys.argv[1:] if argv is None else argv
        ),
        "environment": environment,
        "settings": {
            key: value for key, value in vars(args).items() if key not in ("out", "page", "plots")
        },
        "student_parameters": sum(p.numel() for p in setup.params()),
        "peers_not_run": missing,
    }
    if cuda:
        properties = torch.cuda.get_device_properties(device)
        report["cuda_device"] = {
            "name": properties.name,
            "capability": f"{properties.major}.{properties.minor}",
            "multiprocessors": properties.multi_processor_count,
            "memory_bytes": properties.total_memory,
            "cudnn": torch.backends.cudnn.version(),
        }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        report["equivalence"] = check_peers(setup, peer_cases)
        report["validation"] = validation_costs(setup, args)
        if device.type == "cpu" and not args.quick:
            report["threads"] = thread_comparison(setup, args)
            t = report["threads"]["2 threads"]["ratio"]
            print(
                f"  threads: 2 threads / 1 thread = {t['median']:.2f} [{t['q1']:.2f}, {t['q3']:.2f}]",
                flush=True,
            )
        cases, meta = build_cases(setup, args, peer_cases)
        timing = interleaved(
            cases,
            BASELINE,
            device,
            rounds=args.rounds,
            warmup=1 if args.quick else 2,
            progress=lambda m: print("  " + m, flush=True),
        )
        models = [
            setup.student,
            *[getattr(step, "model", setup.student) for step in cases.values()],
        ]

        def release_gradients() -> None:
            for model in models:
                model.zero_grad(set_to_none=True)

        memory = {
            label: peak_memory(step, device, release_gradients) for label, step in cases.items()
        }
    report["cases"] = {
        label: {
            **meta[label],
            "time": timing[label]["time"],
            "ratio": timing[label]["ratio"],
            "ratios": timing[label]["ratios"],
            "peak_memory_bytes": memory[label],
        }
        for label in cases
    }
    report["targets"] = targets(timing, memory, meta)
    report["wall_seconds"] = time.perf_counter() - start
    report["load_average"] = {"before": load_before, "after": load_average()}
    for label, entry in report["cases"].items():
        r = entry["ratio"]
        print(
            f"  {label:<48} {1e3 * entry['time']['median']:8.1f} ms  {r['median']:5.2f}x [{r['q1']:.2f}, {r['q3']:.2f}]  peak {entry['peak_memory_bytes'] / 2**20:7.1f} MiB",
            flush=True,
        )
    write_json(args.out, report)
    if cuda:  # its own file and section: the CPU results and their sections stay as they are
        page.write_gpu_section(args.out, args.page)
    else:
        page.write_page(args.out.parent, args.page, args.plots)
    print(f"wrote {args.out} and {args.page} in {report['wall_seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
