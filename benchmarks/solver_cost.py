"""What the weighting costs: min-norm solvers, every method's K x K weighting, Gram + combination.

Three measurements, each in one process:

1. **Solvers** -- ``mokd_optim.solvers.min_norm`` backends (closed form, enumeration,
   projected gradient, Frank-Wolfe, cvxpy) per call for K in {2, 3, 5, 10}, with their accuracy (largest KKT
   residual over random and adversarial Gram matrices), and the projected-gradient iteration
   budget swept to show how many iterations the exact support polish needs.
2. **Methods** -- every registered method's ``weights(gram, losses)`` (and ``observe`` for the
   amortised ones) per call, for the same K.
3. **Gram + combination** -- what the optimizer does with the K gradients once they exist:
   ``gradients.gram_matrix`` + MoKD's weights + ``gradients.write_combined`` (which calls
   ``gradients.combine``), for 1e5 to 2.5e7 parameters laid out as ResNet-18-like tensors, in
   both layouts the library uses: the ``loop`` layout (per parameter, the K tensors as autograd
   returns them, assembled by ``gradients._assemble``: per-tensor dot products for the Gram, the
   combination written in place into the first row) and the stacked ``(K, *shape)`` layout of
   ``vmap`` (one ``(K, m) @ (m, K)`` product per tensor, the combination by ``matmul`` into a
   fresh tensor). Timed interleaved against the memory-bound floor: one ``sum`` over a
   pre-concatenated ``(K, n)`` buffer (a single fused pass reading the K gradient vectors).
   Every timed call starts from a cold cache (a scratch buffer larger than the last-level cache
   is read first, untimed), and the ``loop`` rows overwritten by the in-place combination are
   restored before each call, untimed.

Writes ``benchmarks/results/solver_cost.json`` and regenerates ``docs/benchmarks.md``.

    python benchmarks/solver_cost.py                  # full run, a few minutes on 2 CPU cores
    python benchmarks/solver_cost.py --quick          # seconds: checks that it works
    python benchmarks/solver_cost.py --device cuda    # on a GPU (CUDA events)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import report as page  # noqa: E402
from benchmarks._common import (  # noqa: E402
    command_line,
    configure,
    interleaved,
    load_average,
    quantiles,
    time_repeated,
    write_json,
)
from benchmarks._shapes import shapes_for  # noqa: E402
from benchmarks.environment import as_text, describe  # noqa: E402
from mokd_optim import gradients, methods, solvers  # noqa: E402
from mokd_optim.solvers import kkt_residual  # noqa: E402

RESNET18 = 11_689_512


def test_grams(k: int, count: int, seed: int, device: torch.device) -> torch.Tensor:
    """``(count, K, K)`` float64 Gram matrices: random, with norm ratios up to 1e4, and adversarial
    ones (two opposite gradients, a collinear pair, rank-deficient)."""
    generator = torch.Generator().manual_seed(seed)
    jac = torch.randn(count, k, 16, generator=generator, dtype=torch.float64)
    scales = torch.exp(torch.randn(count, k, 1, generator=generator, dtype=torch.float64) * 2.0)
    jac = jac * scales
    if count >= 4:
        jac[1, 1] = -jac[1, 0]  # opposite
        jac[2, 1] = 3.0 * jac[2, 0]  # collinear, different norms
        jac[3, -1] = jac[3, :-1].sum(dim=0)  # rank-deficient
    return (jac @ jac.transpose(1, 2)).to(device)


def solver_section(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    for k in args.ks:
        grams = test_grams(k, args.matrices, seed=k, device=device)
        one = grams[:1]
        backends: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = []
        if k == 2:
            backends.append(("closed_form", lambda g: solvers.min_norm(g, backend="closed_form")))
        backends.append(("enumeration", lambda g: solvers.min_norm(g, backend="enumeration")))
        for iterations in args.iterations:
            backends.append(
                (
                    f"projected_gradient ({iterations} it.)",
                    lambda g, it=iterations: solvers.min_norm(
                        g, backend="projected_gradient", max_iter=it
                    ),
                )
            )
        backends.append(
            (
                f"frank_wolfe ({args.iterations[0]} it.)",
                lambda g: solvers.min_norm(g, backend="frank_wolfe", max_iter=args.iterations[0]),
            )
        )
        backends.append(("auto (default)", lambda g: solvers.min_norm(g)))
        backends.append(("cvxpy", lambda g: solvers.min_norm(g, backend="cvxpy")))
        for name, solve in backends:
            per_call = [
                time_repeated(lambda s=solve, g=one: s(g), device, min_seconds=args.min_seconds)
                for _ in range(args.repeats)
            ]
            residual = float(kkt_residual(grams, solve(grams)).max())
            rows.append(
                {"k": k, "backend": name, "time": quantiles(per_call), "max_kkt_residual": residual}
            )
            print(
                f"  solver K={k:<2} {name:<32} {1e6 * rows[-1]['time']['median']:9.1f} us   kkt {residual:.1e}",
                flush=True,
            )
    return rows


def build_method(name: str, k: int) -> methods.Method:
    """A registered method with the options it needs for K objectives."""
    if name == "weighted":
        return methods.get(name, weights=[1.0 / k] * k)
    if name == "pcgrad":
        return methods.get(name, seed=0)
    return methods.get(name)


def method_call(
    method: methods.Method, gram: torch.Tensor, losses: torch.Tensor, after: torch.Tensor
) -> Callable[[], None]:
    """One weighting call (and the ``observe`` update of an amortised method)."""
    g = gram if method.needs_gradients else None
    if method.needs_losses_after:

        def call() -> None:
            method.weights(g, losses)
            method.observe(losses, after)

    else:

        def call() -> None:
            method.weights(g, losses)

    return call


def method_section(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    for k in args.ks:
        gram = test_grams(k, 1, seed=100 + k, device=device)[0]
        losses = torch.linspace(0.5, 2.0, k, dtype=torch.float64, device=device)
        for name in methods.available():
            method = build_method(name, k)
            method.bind([f"loss{i}" for i in range(k)])
            call = method_call(method, gram, losses, 0.9 * losses)
            per_call = [
                time_repeated(call, device, min_seconds=args.min_seconds)
                for _ in range(args.repeats)
            ]
            rows.append(
                {
                    "k": k,
                    "method": name,
                    "time": quantiles(per_call),
                    "includes_observe": method.needs_losses_after,
                }
            )
            print(
                f"  method K={k:<2} {name:<16} {1e6 * rows[-1]['time']['median']:9.1f} us",
                flush=True,
            )
    return rows


LAYOUTS = ("loop", "stacked")
PARTS = ("gram", "combine", "total")
SCRATCH_BYTES = 128 * 2**20  # larger than the last-level cache of the CPUs and GPUs used here


def combine_cases(
    shapes: list[tuple[int, ...]], k: int, device: torch.device
) -> tuple[dict[str, Callable[[], Any]], dict[str, Callable[[], Any]], float, int]:
    """Timed closures for K gradients laid out as ``shapes``, the untimed ``prepare`` of each,
    the largest relative difference between the two layouts' ``.grad``, and ``n``.

    Case names: ``floor`` and ``{layout} {part}`` for layout in :data:`LAYOUTS` and part in
    :data:`PARTS` (``gram``: the Gram matrix; ``combine``: the combination with fixed weights;
    ``total``: Gram, MoKD's weights and the combination, what one optimizer step does).
    """
    generator = torch.Generator().manual_seed(k)
    params = [torch.zeros(shape, device=device, requires_grad=True) for shape in shapes]
    n = sum(p.numel() for p in params)
    groups = [0] * len(params)
    # The loop layout: K separately allocated tensors per parameter, as autograd returns them.
    rows = [
        [torch.randn(shape, generator=generator).to(device) for _ in range(k)] for shape in shapes
    ]
    loop_result = gradients._assemble(rows, params, groups, k)
    assert all(isinstance(block, list) for block in loop_result.blocks)
    assert len(loop_result.owned) == k * len(params), "every row should be combined in place"
    saved_first = [block[0].clone() for block in rows]
    # The stacked layout (vmap): one (K, *shape) tensor per parameter, same values.
    stacked = [torch.stack(block) for block in rows]
    stacked_result = gradients.ObjectiveGradients(
        params=params, blocks=list(stacked), groups=groups, reached=[True] * k
    )
    buffer = torch.randn((k, n), generator=generator).to(device)
    scratch = torch.ones(SCRATCH_BYTES // 4, device=device)
    method = methods.get("mokd")
    method.bind([f"loss{i}" for i in range(k)])
    losses = torch.linspace(0.5, 2.0, k, dtype=torch.float64, device=device)
    results = {"loop": loop_result, "stacked": stacked_result}

    def clear() -> None:
        for param in params:
            param.grad = None

    def cold() -> None:
        clear()
        scratch.sum()

    def restore() -> None:
        clear()
        for block, first in zip(rows, saved_first):
            block[0].copy_(first)
        scratch.sum()

    def gram(layout: str) -> torch.Tensor:
        return gradients.gram_matrix(results[layout].blocks, groups, 1, k, device)[0]

    fixed_weights = method.weights(gram("stacked"), losses)[None]

    def total(layout: str) -> None:
        gradients.write_combined(results[layout], method.weights(gram(layout), losses)[None])

    def combine(layout: str) -> None:
        gradients.write_combined(results[layout], fixed_weights)

    # Both layouts must write the same gradient before they are timed.
    grads = {}
    for layout in LAYOUTS:
        restore()
        total(layout)
        grads[layout] = [p.grad.clone() for p in params]  # type: ignore[union-attr]
    restore()
    error = max(
        float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
        for a, b in zip(grads["loop"], grads["stacked"])
    )
    cases: dict[str, Callable[[], Any]] = {"floor": buffer.sum}
    prepare: dict[str, Callable[[], Any]] = {"floor": cold}
    for layout in LAYOUTS:
        cases[f"{layout} gram"] = lambda layout=layout: gram(layout)
        cases[f"{layout} combine"] = lambda layout=layout: combine(layout)
        cases[f"{layout} total"] = lambda layout=layout: total(layout)
        prepare[f"{layout} gram"] = cold
        # The loop layout's combination overwrites the first rows: restore them first.
        prepare[f"{layout} combine"] = restore if layout == "loop" else cold
        prepare[f"{layout} total"] = restore if layout == "loop" else cold
    return cases, prepare, error, n


def combine_section(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    for target in args.sizes:
        width, shapes = shapes_for(target)
        for k in args.combine_ks:
            cases, prepare, error, n = combine_cases(shapes, k, device)
            timing = interleaved(
                cases, "floor", device, rounds=args.rounds, warmup=1, seed=k, prepare=prepare
            )
            row = {
                "target": target,
                "width": width,
                "n": n,
                "tensors": len(shapes),
                "k": k,
                "layouts_max_rel_diff": error,
                "cases": {
                    name: {"time": entry["time"], "ratio": entry["ratio"]}
                    for name, entry in timing.items()
                },
            }
            rows.append(row)
            c = row["cases"]
            print(
                f"  combine n={n:>10,} K={k:<2} floor {1e3 * c['floor']['time']['median']:7.2f} ms;  x floor: "
                + "  ".join(
                    f"{name} {c[name]['ratio']['median']:5.2f}" for name in c if name != "floor"
                ),
                flush=True,
            )
            del cases, prepare
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, few repeats: checks that it works"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (see docs/benchmarks.md)"
    )
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 3, 5, 10])
    parser.add_argument("--combine-ks", type=int, nargs="+", default=[2, 3, 5, 10])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[100_000, 1_000_000, RESNET18, 25_000_000]
    )
    parser.add_argument(
        "--iterations",
        type=int,
        nargs="+",
        default=[300, 100, 30, 10],
        help="projected-gradient budgets (the first one is also used for Frank-Wolfe)",
    )
    parser.add_argument(
        "--matrices", type=int, default=64, help="Gram matrices for the accuracy check"
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--min-seconds", type=float, default=0.05)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "solver_cost.json"
    )
    parser.add_argument("--page", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument(
        "--plots",
        type=Path,
        default=None,
        help="folder for the PNG plots (default: docs/img next to --page)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.ks, args.combine_ks, args.sizes = [2, 3], [2], [100_000, 1_000_000]
        args.iterations, args.matrices, args.repeats, args.rounds, args.min_seconds = (
            [300, 30],
            8,
            2,
            2,
            0.005,
        )
    device = configure(args.threads, args.device)
    environment = describe()
    print("environment:", as_text(environment), flush=True)
    start = time.perf_counter()
    load_before = load_average()
    report: dict[str, Any] = {
        "benchmark": "solver_cost",
        "command": command_line(
            "benchmarks/solver_cost.py", sys.argv[1:] if argv is None else argv
        ),
        "environment": environment,
        "settings": {
            key: value for key, value in vars(args).items() if key not in ("out", "page", "plots")
        },
    }
    report["solvers"] = solver_section(args, device)
    report["methods"] = method_section(args, device)
    report["combine"] = combine_section(args, device)
    report["wall_seconds"] = time.perf_counter() - start
    report["load_average"] = {"before": load_before, "after": load_average()}
    write_json(args.out, report)
    page.write_page(args.out.parent, args.page, args.plots)
    print(f"wrote {args.out} and {args.page} in {report['wall_seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
