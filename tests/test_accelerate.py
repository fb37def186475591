"""Hugging Face Accelerate: ``balanced_backward`` in an ``Accelerator`` loop.

Compared with the plain ``MultiObjectiveOptimizer`` loop at the same seed
(tests/_framework_support.py): one process bit for bit (gradient accumulation through
``accelerator.accumulate`` included), two processes (``torchrun``, gloo on CPU) to float
tolerance on the concatenated batch; mixed precision, ``save_state`` / ``load_state``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

accelerate = pytest.importorskip("accelerate")

from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState, GradientState  # noqa: E402
from accelerate.utils import DistributedType  # noqa: E402

from mokd_optim.integrations.accelerate import (  # noqa: E402
    balanced_backward,
    check_accelerator,
    unwrap_optimizer,
)
from tests import accelerate_worker  # noqa: E402
from tests._accelerate_support import Run, prepare, train  # noqa: E402
from tests._framework_support import (  # noqa: E402
    dataset,
    distance_travelled,
    losses_of,
    max_difference,
    new_model,
    new_optimizer,
    plain_run,
)

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4
DDP_ATOL = 1e-6  # observed 3e-8 after 3 steps (float32 sums in another order)

SCENARIOS: dict[str, dict[str, Any]] = {
    "loop": {},
    "accumulate": {"accumulate": 2},
    "representation": {"representation": True},
    "famo-same-batch": {"method": "famo", "same_batch_observe": True},
}


@pytest.fixture(autouse=True)
def _fresh_accelerator_state() -> Any:
    """Accelerate keeps its state in process-wide singletons; each test starts anew."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _run(batch_size: int, steps: int, **scenario: Any) -> tuple[Accelerator, Run]:
    options = dict(scenario)
    accumulate = options.pop("accumulate", 1)
    train_options = {
        key: options.pop(key)
        for key in ("same_batch_observe", "representation", "autocast")
        if key in options
    }
    mixed_precision = options.pop("mixed_precision", "no")
    scaler = options.pop("scaler", None)
    accelerator = Accelerator(
        cpu=True, gradient_accumulation_steps=accumulate, mixed_precision=mixed_precision
    )
    if scaler is not None:
        # What Accelerator(mixed_precision="fp16") sets up on a GPU (no fp16 scaler on CPU).
        accelerator.scaler = scaler
    run = prepare(accelerator, **options)
    return accelerator, train(accelerator, run, batch_size, steps, **train_options)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_one_process_is_bit_identical_to_the_plain_loop(scenario: str) -> None:
    options = SCENARIOS[scenario]
    batch_size = 4 if "accumulate" in options else 8
    _, run = _run(batch_size, STEPS, **options)
    reference, weights, state = plain_run(batch_size, STEPS, **options)
    for a, b in zip(run.params(), reference):
        assert torch.equal(a, b)
    assert torch.equal(torch.stack(run.weights), torch.stack(weights))
    if options.get("method") == "famo":
        learnt = unwrap_optimizer(run.optimizer).state_dict()["methods"][0]["logits"]
        assert torch.equal(learnt, state["methods"][0]["logits"]) and learnt.abs().max() > 0


def test_accumulation_windows_follow_sync_gradients() -> None:
    accelerator, run = _run(4, 1, accumulate=3)
    opt = unwrap_optimizer(run.optimizer)
    assert not opt.accumulating and len(run.weights) == 1
    batch = next(iter(accelerator.prepare(torch.utils.data.DataLoader(dataset(), batch_size=4))))
    with accelerator.accumulate(run.model):
        assert balanced_backward(accelerator, run.optimizer, losses_of(run.model, batch)) is None
    assert opt.accumulating  # the micro-batch joined the window; .grad is untouched
    assert all(p.grad is None for p in run.model.parameters())


@pytest.fixture(scope="module")
def ddp_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("accelerate_ddp")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "tests.accelerate_worker",
        str(out),
    ]
    completed = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("scenario", list(accelerate_worker.SCENARIOS))
def test_two_processes_match_the_plain_loop_on_the_concatenated_batch(
    ddp_ranks: list[dict[str, Any]], scenario: str
) -> None:
    first, second = ddp_ranks[0][scenario], ddp_ranks[1][scenario]
    assert first["num_processes"] == 2 and first["distributed_type"].endswith("MULTI_CPU")
    for a, b in zip(first["params"], second["params"]):
        assert torch.equal(a, b)
    reference, weights, _ = plain_run(
        2 * accelerate_worker.PER_RANK,
        accelerate_worker.STEPS,
        **accelerate_worker.SCENARIOS[scenario],
    )
    assert max_difference(first["params"], reference) < DDP_ATOL
    assert distance_travelled(reference) > 1000 * DDP_ATOL
    torch.testing.assert_close(first["weights"], torch.stack(weights), atol=1e-5, rtol=1e-5)


def test_bf16_follows_the_float32_run() -> None:
    accelerator, run = _run(8, STEPS, mixed_precision="bf16")
    assert accelerator.native_amp and accelerator.scaler is None
    reference, _, _ = plain_run(8, STEPS)
    # bfloat16 keeps 8 significand bits: observed 0.22% of the distance travelled.
    assert max_difference(run.params(), reference) < 0.02 * distance_travelled(reference)


def _fp16() -> Any:
    return torch.autocast("cpu", dtype=torch.float16)


@pytest.mark.parametrize("scenario", ["loop", "famo-same-batch"])
def test_fp16_uses_the_accelerators_grad_scaler(scenario: str) -> None:
    options = SCENARIOS[scenario]
    scaler = torch.amp.GradScaler("cpu")
    _, run = _run(8, STEPS, scaler=scaler, autocast=_fp16, **options)
    assert unwrap_optimizer(run.optimizer).scaler is scaler and run.skipped == 0
    reference, _, _ = plain_run(8, STEPS, **options)
    # observed: 0.03% (loop) and 0.06% (famo) of the distance travelled
    assert max_difference(run.params(), reference) < 0.005 * distance_travelled(reference)


def test_fp16_overflow_skips_the_step() -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    _, run = _run(8, 1, scaler=scaler, autocast=_fp16, method="famo", same_batch_observe=True)
    assert run.skipped == 1 and scaler.get_scale() == 2.0**39
    for a, b in zip(run.params(), new_model().parameters()):
        assert torch.equal(a, b)
    assert unwrap_optimizer(run.optimizer).state_dict()["methods"][0]["steps"] == 0


def test_save_state_and_load_state_restore_method_and_scheduler_state(tmp_path: Path) -> None:
    options: dict[str, Any] = {"method": "famo", "scheduler_step_size": 2}
    accelerator, run = _run(16, 3, same_batch_observe=True, **options)
    accelerator.save_state(tmp_path / "state")
    saved_logits = unwrap_optimizer(run.optimizer).state_dict()["methods"][0]["logits"]
    assert saved_logits.abs().max() > 0

    AcceleratorState._reset_state(True)  # a new process, as after a restart
    GradientState._reset_state()
    resumed_accelerator = Accelerator(cpu=True)
    resumed = prepare(resumed_accelerator, **options)
    resumed_accelerator.load_state(tmp_path / "state")
    opt = unwrap_optimizer(resumed.optimizer)
    assert torch.equal(opt.state_dict()["methods"][0]["logits"], saved_logits)
    train(resumed_accelerator, resumed, 16, 3, same_batch_observe=True)

    reference, _, state = plain_run(16, 6, same_batch_observe=True, **options)
    for a, b in zip(resumed.params(), reference):
        assert torch.equal(a, b)
    assert torch.equal(opt.state_dict()["methods"][0]["logits"], state["methods"][0]["logits"])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


def test_unsupported_setups_raise_before_anything_changes() -> None:
    for kind in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.XLA):
        with pytest.raises(NotImplementedError, match=kind.value):
            check_accelerator(types.SimpleNamespace(distributed_type=kind, mixed_precision="no"))
    fp8 = types.SimpleNamespace(distributed_type=DistributedType.NO, mixed_precision="fp8")
    with pytest.raises(NotImplementedError, match="fp8"):
        check_accelerator(fp8)

    accelerator = Accelerator(cpu=True)
    model = new_model()
    plain = accelerator.prepare(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="does not wrap a MultiObjectiveOptimizer"):
        balanced_backward(accelerator, plain, losses_of(model, dataset().tensors))
    own = accelerator.prepare(new_optimizer(model, scaler=torch.amp.GradScaler("cpu")))
    with pytest.raises(ValueError, match="GradScaler other than the accelerator's"):
        balanced_backward(accelerator, own, losses_of(model, dataset().tensors))
    assert all(p.grad is None for p in model.parameters())
