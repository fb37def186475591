"""Lightning ``strategy="ddp"`` runs for tests/test_lightning.py (not a test module itself).

Launched like a user's script, ``python -m tests.lightning_worker OUT_DIR``: Lightning starts
the second process itself (2 CPU processes, gloo). Each scenario trains ``STEPS`` optimizer
steps on shards of ``PER_RANK`` samples (Lightning's ``DistributedSampler`` interleaves the
unshuffled data, so each step's two shards make up one batch of ``2 * PER_RANK``); every rank
writes ``OUT_DIR/rank<r>.pt`` with the final parameters, weights and ``global_step``.

Each rank leaves through ``save_and_leave`` (tests/_framework_support.py), which skips the
interpreter's shutdown: it aborted once in CI after the work was done.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from tests._framework_support import loader, save_and_leave
from tests._lightning_support import KDModule, trainer

PER_RANK = 4
STEPS = 3
SCENARIOS: dict[str, dict[str, Any]] = {
    "loop": {},
    "accumulate": {"accumulate": 2},
    "representation": {"representation": True},
    "famo": {"method": "famo", "same_batch_observe": True},
}


def main(out: Path) -> None:
    warnings.filterwarnings("ignore")
    results: dict[str, Any] = {}
    rank = 0
    for name, options in SCENARIOS.items():
        module = KDModule(**options)
        fit = trainer(strategy="ddp", devices=2, max_steps=STEPS)
        fit.fit(module, loader(PER_RANK))
        rank = fit.global_rank
        results[name] = {
            "params": [p.detach().clone() for p in module.model.parameters()],
            "weights": torch.stack(module.weights),
            "global_step": fit.global_step,
            "world_size": fit.world_size,
        }
    save_and_leave(results, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
