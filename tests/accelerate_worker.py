"""Two-process Accelerate runs for tests/test_accelerate.py (not a test module itself).

Launched like a user's script: ``accelerate launch --num_processes 2 --cpu -m
tests.accelerate_worker OUT_DIR`` (gloo on CPU). Accelerate's prepared loader gives each
process whole consecutive batches of ``PER_RANK`` (process ``r`` takes batch ``2i + r``), so
each step's two batches make up the reference's batch of ``2 * PER_RANK``. Every process
writes ``OUT_DIR/rank<r>.pt`` with its final parameters and weights, then leaves through
``save_and_leave`` (tests/_framework_support.py), which skips the interpreter's shutdown.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from tests._accelerate_support import prepare, train
from tests._framework_support import save_and_leave

PER_RANK = 4
STEPS = 3
SCENARIOS: dict[str, dict[str, Any]] = {
    "loop": {},
    "accumulate": {"accumulate": 2},
    "famo": {"method": "famo", "same_batch_observe": True},
}


def main(out: Path) -> None:
    warnings.filterwarnings("ignore")
    results: dict[str, Any] = {}
    rank = 0
    for name, scenario in SCENARIOS.items():
        options = dict(scenario)
        accelerator = Accelerator(
            cpu=True, gradient_accumulation_steps=options.pop("accumulate", 1)
        )
        same_batch = options.pop("same_batch_observe", False)
        run = prepare(accelerator, **options)
        train(accelerator, run, PER_RANK, STEPS, same_batch_observe=same_batch)
        rank = accelerator.process_index
        results[name] = {
            "params": run.params(),
            "weights": torch.stack(run.weights),
            "num_processes": accelerator.num_processes,
            "distributed_type": str(accelerator.distributed_type),
        }
    save_and_leave(results, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
