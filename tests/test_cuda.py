"""The optimizer on a CUDA device, against the same run on the CPU in float32.

Skipped where CUDA is absent (CI has none), except the last test (how the GPU results are
rendered); ``benchmarks/gpu_check.sh`` runs this file on a GPU.
The model and data are those of ``tests/test_amp.py`` (three objectives, SGD with momentum, 5
steps from the same initial weights and batches), so the tolerances are the CPU ones:

- float32 on CUDA: parameters within 1e-4 of the distance travelled (only the summation order
  of the kernels differs);
- ``autocast(bfloat16)`` on CUDA: within 2% (8 significand bits; CPU autocast: about 0.5%);
- ``autocast(float16)`` + ``GradScaler("cuda")``: within 0.5% (11 bits; CPU: about 0.06%), and
  no step skipped.

Every step's Gram matrix and weights must be finite, and the K weights of every step must agree
with the CPU run within the same relative tolerance. A last test counts the host
synchronisations of one ``backward`` (``validate=False``) with
``torch.cuda.set_sync_debug_mode("warn")``: docs/optimizer.md promises none. The first run on
an H200 found three (blocking copies of Python values into device tensors in MoKD's weighting),
fixed in ``methods/_mokd.py``; the run after the fix counted none.

Measured on an NVIDIA H200 (torch 2.11, 2026-12-04): float32 within 1.7e-6, bf16 within 0.71%,
fp16 + GradScaler within 0.077%, no step skipped, no synchronising call in ``backward``.

With ``MOKD_CUDA_CHECKS=<file>`` set, every measurement is appended to that file as one JSON
line; ``benchmarks/report.py`` renders them in the GPU section of docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Optional

import pytest
import torch

from mokd_optim import MultiObjectiveOptimizer
from tests.models import TwoHeadMLP, two_head_losses

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

STRATEGIES = ["loop", "vmap", "representation"]
STEPS = 5
#: Largest ``||x_cuda - x_cpu|| / ||x_cpu - x_start||`` allowed, per precision on the GPU.
TOLERANCE = {"fp32": 1e-4, "bf16": 0.02, "fp16+GradScaler": 0.005}
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16+GradScaler": torch.float16}
ROOT = Path(__file__).resolve().parents[1]


def _record(**values: Any) -> None:
    """Append one measurement to ``$MOKD_CUDA_CHECKS`` (a JSON-lines file), when it is set."""
    path = os.environ.get("MOKD_CUDA_CHECKS")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps(values) + "\n")


def _make(
    device: str, strategy: str, precision: str, **options: Any
) -> tuple[torch.nn.Module, MultiObjectiveOptimizer]:
    torch.manual_seed(0)
    model = TwoHeadMLP().to(device)  # same initial weights on every device
    scaler = torch.amp.GradScaler(device) if precision == "fp16+GradScaler" else None
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, MultiObjectiveOptimizer(base, "mokd", strategy=strategy, scaler=scaler, **options)


def _train(
    device: str, strategy: str, precision: str
) -> tuple[list[list[torch.Tensor]], list[torch.Tensor], Optional[float]]:
    """Parameters before and after every step (on the CPU, float64) and every step's weights."""
    model, opt = _make(device, strategy, precision)
    snapshots = [[p.detach().double().cpu() for p in model.parameters()]]
    weights = []
    for step in range(STEPS):
        losses, features = two_head_losses(model, step, DTYPES[precision], device)
        opt.zero_grad()
        stats = opt.backward(losses, features=features if strategy == "representation" else None)
        assert torch.isfinite(stats.gram).all(), f"step {step}: Gram matrix {stats.gram}"
        assert torch.isfinite(stats.weights).all(), f"step {step}: weights {stats.weights}"
        weights.append(stats.weights.detach().double().cpu())
        if opt.scaler is not None:
            opt.scaler.step(opt)
            opt.scaler.update()
        else:
            opt.step()
        snapshots.append([p.detach().double().cpu() for p in model.parameters()])
    scale = opt.scaler.get_scale() if opt.scaler is not None else None
    return snapshots, weights, scale


def _relative(a: list[torch.Tensor], b: list[torch.Tensor], start: list[torch.Tensor]) -> float:
    """``||a - b|| / ||b - start||`` over all parameters: the difference relative to the update."""
    num = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(a, b)))
    den = torch.sqrt(sum(((q - s) ** 2).sum() for q, s in zip(b, start)))
    return float(num / den)


@needs_cuda
@pytest.mark.parametrize("precision", list(TOLERANCE))
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cuda_step_matches_cpu_float32(strategy: str, precision: str) -> None:
    reference, reference_weights, _ = _train("cpu", strategy, "fp32")
    snapshots, weights, scale = _train("cuda", strategy, precision)
    start = reference[0]
    first = _relative(snapshots[1], reference[1], start)
    last = _relative(snapshots[-1], reference[-1], start)
    weights_difference = max(
        float((w - r).norm() / r.norm().clamp_min(1e-12))
        for w, r in zip(weights, reference_weights)
    )
    tolerance = TOLERANCE[precision]
    _record(
        check="same update as CPU float32",
        strategy=strategy,
        precision=precision,
        first_update=first,
        after_steps=last,
        steps=STEPS,
        weights=weights_difference,
        tolerance=tolerance,
        finite=True,  # asserted at every step in _train
        loss_scale=scale,
        passed=max(first, last, weights_difference) < tolerance and scale in (None, 2.0**16),
    )
    assert first < tolerance and last < tolerance, (first, last)
    assert weights_difference < tolerance, weights_difference
    if precision == "fp16+GradScaler":
        assert scale == 2.0**16  # the initial scale: no step was skipped


@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16+GradScaler"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cuda_backward_does_not_synchronise(strategy: str, precision: str) -> None:
    """``backward`` with ``validate=False`` under autocast: count the synchronising CUDA calls
    (host reads, blocking copies) that ``torch.cuda.set_sync_debug_mode("warn")`` reports, after
    two warm-up steps (lazy state creation is allowed to synchronise once)."""
    model, opt = _make("cuda", strategy, precision, validate=False)
    dtype = DTYPES[precision]

    def take_step() -> None:
        if opt.scaler is not None:
            opt.scaler.step(opt)
            opt.scaler.update()
        else:
            opt.step()

    for index in range(2):
        losses, features = two_head_losses(model, index, dtype, "cuda")
        opt.zero_grad()
        opt.backward(losses, features=features if strategy == "representation" else None)
        take_step()
    losses, features = two_head_losses(model, 2, dtype, "cuda")
    opt.zero_grad()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            opt.backward(losses, features=features if strategy == "representation" else None)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    # "called a synchronizing CUDA operation"; not the notice, printed once per process when the
    # mode is first set, that the debug mode is a prototype feature
    syncs = [w for w in caught if "called a synchronizing" in str(w.message)]
    sites = sorted({_site(w.filename, w.lineno) for w in syncs})
    _record(
        check="host synchronisations in one backward (validate=False)",
        strategy=strategy,
        precision=precision,
        syncs=len(syncs),
        sites=sites,
        passed=not syncs,
    )
    assert not syncs, sites


def _site(filename: str, lineno: int) -> str:
    """``path:line`` of a warning, relative to the repository where it is inside it."""
    path = Path(filename).resolve()
    try:
        return f"{path.relative_to(ROOT)}:{lineno}"
    except ValueError:
        return f"{filename}:{lineno}"


@needs_cuda
def test_the_cuda_runs_ran_on_the_gpu() -> None:
    """A guard against a silent CPU fallback: parameters, Gram matrix and weights on CUDA."""
    model, opt = _make("cuda", "loop", "bf16")
    losses, _ = two_head_losses(model, 0, torch.bfloat16, "cuda")
    stats = opt.backward(losses)
    assert all(p.is_cuda for p in model.parameters())
    assert stats.gram is not None and stats.gram.is_cuda and stats.weights.is_cuda


def test_gpu_results_render_into_their_own_section(tmp_path: Path) -> None:
    """No GPU needed: ``step_overhead.py --device cuda``'s results and these checks' records go
    into the page's GPU section only; rendering twice still leaves one such section, and the
    rest of the page (the CPU results) as it was."""
    from benchmarks import report

    q = {"median": 1.2, "q1": 1.1, "q3": 1.3, "min": 1.0, "max": 1.4, "n": 3}
    case = {"time": {**q, "median": 0.02}, "ratio": q, "peak_memory_bytes": 2**30}
    result = {
        "command": "python benchmarks/step_overhead.py --device cuda",
        "wall_seconds": 31.0,
        "environment": {
            "date": "2026-12-04",
            "cpu": "some CPU",
            "cpu_cores": 16,
            "torch_threads": 1,
            "python": "3.12.3",
            "torch": "2.11.0+cu130",
            "numpy": "2.5.2",
            "gpu": "NVIDIA H200",
            "cuda": "13.0",
        },
        "cuda_device": {
            "capability": "9.0",
            "multiprocessors": 132,
            "memory_bytes": 150e9,
            "cudnn": 91900,
        },
        "settings": {
            "teacher": "resnet34",
            "student": "resnet18",
            "num_classes": 1000,
            "batch": 64,
            "resolution": 224,
            "amp": True,
            "rounds": 20,
        },
        "student_parameters": 11_689_512,
        "peers_not_run": {"torchjd": "ModuleNotFoundError"},
        "cases": {
            "fixed-weight KD": case,
            "ours mokd loop": case,
            "ours mokd loop validate=False": case,
        },
        "targets": {
            "loop_vs_floor": q,
            "loop_vs_floor_no_validate": q,
            "vmap_vs_floor": q,
            "representation_vs_fixed": q,
            "representation_vs_fixed_no_validate": q,
            "peers": [],
        },
        "validation": {"check_losses": q, "reach_matrix": q, "graph_nodes": 165},
    }
    (tmp_path / f"{report.GPU_SECTION}.json").write_text(json.dumps(result))
    records = [
        {
            "check": "same update as CPU float32",
            "strategy": "loop",
            "precision": "bf16",
            "first_update": 4.8e-3,
            "after_steps": 6.6e-3,
            "steps": STEPS,
            "weights": 3.8e-3,
            "tolerance": 0.02,
            "finite": True,
            "loss_scale": None,
            "passed": True,
        },
        {
            "check": "host synchronisations in one backward (validate=False)",
            "strategy": "loop",
            "precision": "bf16",
            "syncs": 1,
            "sites": ["mokd_optim/methods/_mokd.py:205"],
            "passed": False,
        },
    ]
    # An earlier record of the same check is replaced by the later one.
    lines = [json.dumps({**records[0], "first_update": 0.5}), *map(json.dumps, records)]
    (tmp_path / report.CUDA_CHECKS).write_text("\n".join(lines) + "\n")
    page = tmp_path / "benchmarks.md"
    head = "# Benchmarks\n\nThe CPU sections stay as they are.\n"
    page.write_text(head)
    for _ in range(2):
        report.write_gpu_section(tmp_path / f"{report.GPU_SECTION}.json", page)
    text = page.read_text()
    assert text.startswith(head)
    assert text.count("## On a GPU (NVIDIA H200)") == 1
    assert text.count(f"<!-- section {report.GPU_SECTION} -->") == 1
    assert "| `loop` | bf16 | 4.8e-03 | 6.6e-03 | 3.8e-03 | 0.02 | — | yes |" in text
    assert "5.0e-01" not in text
    assert "| `loop` | bf16 | 1 | `mokd_optim/methods/_mokd.py:205` |" in text
    assert "torch 2.11.0+cu130" in text and "compute capability 9.0" in text
