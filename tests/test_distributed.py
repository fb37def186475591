"""DDP with 2 gloo processes on CPU, launched by torchrun (``torch.distributed.run``).

One launch runs every scenario of tests/ddp_worker.py; the tests below assert on its output:
ranks end bit-identical, ``sync="exact"`` equals the single-process run on the concatenated
batch, the communication is bucketed, a layout mismatch is reported on every rank, and
checkpoints are written by rank 0 only with per-rank RNG states.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mokd_optim import MultiObjectiveOptimizer
from mokd_optim.distributed import (
    Communication,
    all_reduce_mean,
    bucket_plan,
    communication_bytes,
    resolve_sync,
    unwrap_model,
)
from tests.models import TwoHeadMLP

ROOT = Path(__file__).resolve().parents[1]
EXACT_SCENARIOS = [
    "exact_loop",
    "exact_vmap_accumulate",
    "exact_representation",
    "sum_amortized",
    "weighted_amortized_accumulate",
    "exact_representation_nash",
    "exact_loop_nash",
]
ALL_SCENARIOS = [*EXACT_SCENARIOS, "weights_loop", "weights_representation"]
# float32 training for 4 steps: DDP averages two half-batch means where the reference takes one
# mean over the whole batch, so sums are rounded in a different order (observed: <= 3e-8).
PARAM_ATOL = 1e-6


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "tests.ddp_worker",
        str(out),
    ]
    completed = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("scenario", ALL_SCENARIOS)
def test_ranks_hold_bit_identical_parameters_and_weights(ranks, scenario: str) -> None:
    first, second = ranks[0][scenario], ranks[1][scenario]
    for a, b in zip(first["params"], second["params"]):
        assert torch.equal(a, b)
    assert torch.equal(first["weights"], second["weights"])
    assert all(torch.isfinite(p).all() for p in first["params"])


@pytest.mark.parametrize("scenario", EXACT_SCENARIOS)
def test_exact_sync_matches_single_process_on_the_concatenated_batch(ranks, scenario: str) -> None:
    ddp, reference = ranks[0][scenario], ranks[0][scenario + "/reference"]
    for a, b in zip(ddp["params"], reference["params"]):
        torch.testing.assert_close(a, b, atol=PARAM_ATOL, rtol=0)
    torch.testing.assert_close(ddp["weights"], reference["weights"], atol=1e-5, rtol=1e-5)
    # The run really trained: parameters moved well beyond the tolerance.
    torch.manual_seed(0)
    initial = [p.detach() for p in TwoHeadMLP().parameters()]
    assert (
        max(float((p - q).abs().max()) for p, q in zip(ddp["params"], initial)) > 1000 * PARAM_ATOL
    )


@pytest.mark.parametrize(
    "scenario",
    ["exact_loop", "exact_representation", "exact_representation_nash", "exact_loop_nash"],
)
def test_exact_sync_reports_the_gram_matrix_of_the_concatenated_batch(ranks, scenario) -> None:
    """``stats.gram`` under ``sync="exact"`` is the single-process Gram matrix of the whole
    batch, at its absolute scale (a scale-insensitive method would hide a wrong power of the
    world size; nash-mtl's steps would have the wrong length)."""
    ddp, reference = ranks[0][scenario], ranks[0][scenario + "/reference"]
    torch.testing.assert_close(ddp["grams"], reference["grams"], rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(ranks[1][scenario]["grams"], ddp["grams"], rtol=0, atol=0)


def test_one_ranks_bad_input_raises_on_every_rank_promptly(ranks) -> None:
    for result in ranks:
        bad = result["bad_input"]
        assert "objective 'task'" in bad["nan_loss"] and "on rank 1" in bad["nan_loss"]
        for case in ("inf_head_gradient_weights", "inf_head_gradient_exact"):
            assert "objective 'feat'" in bad[case], bad[case]
            assert "gradient is not finite on rank 1" in bad[case]
        assert "another order" in bad["swapped_names"]
        assert "rank 1: ['kd', 'task', 'feat']" in bad["swapped_names"]
        for case in ("nan_loss", "inf_head_gradient_weights", "inf_head_gradient_exact"):
            assert bad[case + "/untouched"] == "True"
        assert bad["group_usable"] == "True"


def test_weights_sync_uses_averaged_local_weights(ranks) -> None:
    weights_mode, exact = ranks[0]["weights_loop"], ranks[0]["exact_loop"]
    # Weights from local gradients are a different estimator than the global ones ...
    assert not torch.allclose(weights_mode["weights"], exact["weights"], atol=1e-3)
    # ... sent as K float64 numbers, plus one all-reduce of the combined gradient.
    model = TwoHeadMLP()
    gradient_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert weights_mode["communication"][-1] == (2, 3 * 8 + gradient_bytes)


def test_exact_communication_is_bucketed(ranks) -> None:
    model = TwoHeadMLP()
    shared = [p for name, p in model.named_parameters() if not name.startswith("projector")]
    exclusive = list(model.projector.parameters())
    # Layout sent by sync="exact" with the loop strategy: for each shared parameter the
    # gradients of the objectives that reach it (the trunk: task, kd, feat; the classifier:
    # task, kd), the projector's plain gradients, then the K loss values (float64, a bucket
    # of their own).
    reached_by = {
        name: (3 if name.startswith("trunk") else 2) for name, _ in model.named_parameters()
    }
    layout = [
        torch.empty(p.shape)
        for name, p in model.named_parameters()
        if not name.startswith("projector")
        for _ in range(reached_by[name])
    ]
    layout += [torch.empty(p.shape) for p in exclusive]
    expected_collectives = len(bucket_plan(layout, 16384)) + 1
    assert expected_collectives <= len(layout) // 2  # several tensors per collective
    collectives, sent = ranks[0]["exact_loop"]["communication"][-1]
    assert collectives == expected_collectives
    assert sent == sum(t.numel() * 4 for t in layout) + 3 * 8
    # The formula of the docs is the bound (every shared parameter reached by every objective).
    assert sent < communication_bytes(shared, 3, "exact", exclusive=exclusive)
    # With the default 25 MiB buckets: one collective for the gradients, one for the losses.
    assert ranks[0]["exact_vmap_accumulate"]["communication"][-1][0] == 2
    # Representation: the K x K Gram matrix and K losses, summed in one collective.
    assert ranks[0]["exact_representation"]["communication"][-1] == (1, (9 + 3) * 8)


def test_layout_mismatch_is_reported_on_every_rank(ranks) -> None:
    for result in ranks:
        assert (
            "ranks disagree on which objectives reach which parameters" in result["layout_mismatch"]
        )


def test_rank_zero_writes_checkpoints_and_logs_and_each_rank_gets_its_rng_back(ranks) -> None:
    first, second = ranks[0]["checkpoint"], ranks[1]["checkpoint"]
    assert first["written"] and not second["written"]
    assert first["logged"] and not second["logged"]
    for result in (first, second):
        assert torch.equal(result["before"], result["after"]) and result["step"] == 5
        assert all(not key.startswith("module.") for key in result["keys"])
    assert not torch.equal(first["before"], second["before"])


# Helpers that need no process group -------------------------------------------------------


def test_bucket_plan_groups_consecutive_tensors_by_dtype_and_capacity() -> None:
    tensors = [
        torch.empty(10),
        torch.empty(10),
        torch.empty(30),
        torch.empty(5, dtype=torch.float64),
        torch.empty(2),
    ]
    assert bucket_plan(tensors, 80) == [[0, 1], [2], [3], [4]]
    assert bucket_plan(tensors, 10**6) == [[0, 1, 2], [3], [4]]
    with pytest.raises(ValueError, match="bucket_bytes must be positive"):
        bucket_plan(tensors, 0)


def test_single_process_fallbacks() -> None:
    assert resolve_sync("auto") == "none" and resolve_sync("exact") == "none"
    with pytest.raises(ValueError, match="unknown sync mode"):
        resolve_sync("ring")
    tensors = [torch.ones(3)]
    same, sent = all_reduce_mean(tensors)
    assert same[0] is tensors[0] and sent == Communication()
    model = TwoHeadMLP()
    assert unwrap_model(torch.nn.DataParallel(model)) is model
    with pytest.raises(ValueError, match="unknown sync mode"):
        MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), sync="ring")
    with pytest.raises(ValueError, match="bucket_bytes"):
        MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), bucket_bytes=0)


def test_communication_bytes_formula() -> None:
    shared, exclusive = [torch.empty(100)], [torch.empty(10)]
    assert communication_bytes(shared, 2, "exact", exclusive=exclusive) == 2 * 400 + 40 + 16
    assert communication_bytes(shared, 2, "weights", exclusive=exclusive) == 440 + 16
    assert communication_bytes(shared, 2, "none") == 0
    with pytest.raises(ValueError):
        communication_bytes(shared, 2, "auto")
