"""Training scenarios run under DDP by tests/test_distributed.py (not a test module itself).

Launched like a user's script: ``python -m torch.distributed.run --nproc-per-node 2
-m tests.ddp_worker OUT_DIR``. Every rank writes ``OUT_DIR/rank<r>.pt`` with the final
parameters and per-step weights of each scenario; rank 0 also runs each scenario in a single
process (no DDP) on the concatenated batch, as the reference.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from mokd_optim import MultiObjectiveOptimizer
from mokd_optim.checkpoint import load_checkpoint, save_checkpoint
from mokd_optim.diagnostics import StatsLogger
from mokd_optim.distributed import bucket_plan
from tests.models import TwoHeadMLP, kd_kl

GLOBAL_BATCH = 16
STEPS = 4


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The global batch of ``step``: inputs, labels, feature targets, teacher logits."""
    generator = torch.Generator().manual_seed(1000 + step)
    x = torch.rand(GLOBAL_BATCH, 1, 8, 8, generator=generator)
    y = torch.randint(0, 10, (GLOBAL_BATCH,), generator=generator)
    target = torch.randn(GLOBAL_BATCH, 48, generator=generator)
    teacher = 3 * torch.randn(GLOBAL_BATCH, 10, generator=generator)
    return x, y, target, teacher


def shard(tensors: tuple[torch.Tensor, ...], rank: int, world: int) -> tuple[torch.Tensor, ...]:
    size = GLOBAL_BATCH // world
    return tuple(t[rank * size : (rank + 1) * size] for t in tensors)


def losses_of(
    model: nn.Module, data: tuple[torch.Tensor, ...]
) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    x, y, target, teacher = data
    logits, projected, _ = model(x)
    losses = {
        "task": F.cross_entropy(logits, y),
        "kd": kd_kl(logits, teacher),
        "feat": F.smooth_l1_loss(projected, target),
    }
    return losses, (logits, projected)


def run(scenario: dict[str, Any], rank: int, world: int, distributed: bool) -> dict[str, Any]:
    """Train ``STEPS`` steps; ``distributed=False`` runs the reference on the whole batch."""
    torch.manual_seed(0)
    model: nn.Module = TwoHeadMLP()
    params = list(model.parameters())
    wrapped = DDP(model) if distributed else model
    base = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    options = {"weights": [1.0, 0.5, 2.0]} if scenario["method"] == "weighted" else {}
    opt = MultiObjectiveOptimizer(
        base,
        scenario["method"],
        strategy=scenario["strategy"],
        sync=scenario["sync"] if distributed else "none",
        bucket_bytes=scenario.get("bucket_bytes", 25 * 2**20),
        max_norm=5.0,
        **options,
    )
    micro = scenario.get("micro", 1)
    weights, communication = [], []
    for step in range(STEPS):
        data = batch(step)
        if distributed:
            data = shard(data, rank, world)
        opt.zero_grad()
        chunks = (
            [tuple(t.chunk(micro)[i] for t in data) for i in range(micro)] if micro > 1 else [data]
        )
        for index, chunk in enumerate(chunks):
            losses, outputs = losses_of(wrapped, chunk)
            if scenario["strategy"] == "representation":
                stats = opt.backward(losses, features=outputs)
            else:
                stats = opt.backward(losses, accumulate=index < len(chunks) - 1)
        weights.append(stats.weights.detach().clone())
        communication.append((opt.last_communication.collectives, opt.last_communication.bytes))
        opt.step()
    return {
        "params": [p.detach().clone() for p in params],
        "weights": torch.stack(weights),
        "communication": communication,
        "buckets": len(
            bucket_plan([p.grad for p in params], scenario.get("bucket_bytes", 25 * 2**20))
        ),
    }


SCENARIOS: dict[str, dict[str, Any]] = {
    "exact_loop": {"method": "mokd", "strategy": "loop", "sync": "exact", "bucket_bytes": 16384},
    "exact_vmap_accumulate": {"method": "mokd", "strategy": "vmap", "sync": "exact", "micro": 2},
    "weights_loop": {"method": "mokd", "strategy": "loop", "sync": "weights"},
    "exact_representation": {"method": "mokd", "strategy": "representation", "sync": "exact"},
    "weights_representation": {"method": "mokd", "strategy": "representation", "sync": "weights"},
    "sum_amortized": {"method": "sum", "strategy": "amortized", "sync": "exact"},
    "weighted_amortized_accumulate": {
        "method": "weighted",
        "strategy": "amortized",
        "sync": "exact",
        "micro": 2,
    },
}


def layout_mismatch(rank: int, world: int) -> str:
    """Rank 1 computes the KD loss from the projector instead of the classifier: the ranks
    disagree on which parameters are shared, which validate=True must report on every rank."""
    torch.manual_seed(0)
    model = TwoHeadMLP()
    wrapped = DDP(model)
    opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), "mokd", sync="exact")
    x, y, target, teacher = shard(batch(0), rank, world)
    logits, projected, _ = wrapped(x)
    kd_input = projected[:, :10] if rank == 1 else logits
    losses = {
        "task": F.cross_entropy(logits, y),
        "kd": kd_kl(kd_input, teacher),
        "feat": F.smooth_l1_loss(projected, target),
    }
    try:
        opt.backward(losses)
    except RuntimeError as error:
        return str(error)
    return ""


def checkpoint_round_trip(rank: int, out_dir: str) -> dict[str, Any]:
    """Every rank saves; rank 0 writes; every rank gets its own RNG stream back. Only rank 0
    writes a StatsLogger file."""
    torch.manual_seed(100 + rank)
    model = DDP(TwoHeadMLP())
    path = os.path.join(out_dir, "ddp_checkpoint.pt")
    written = save_checkpoint(path, model=model, epoch=1, step=5)
    before = torch.rand(3)
    torch.manual_seed(12345)
    progress = load_checkpoint(path, model=model)
    after = torch.rand(3)
    keys = list(torch.load(path, weights_only=True)["model"])
    with StatsLogger(os.path.join(out_dir, f"log_rank{rank}.csv")) as logger:
        logged = logger.log(0, loss=1.0) is not None
    return {
        "written": written is not None,
        "before": before,
        "after": after,
        "step": progress.step,
        "keys": keys,
        "logged": logged,
    }


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results: dict[str, Any] = {}
    for name, scenario in SCENARIOS.items():
        results[name] = run(scenario, rank, world, distributed=True)
        if rank == 0:
            results[name + "/reference"] = run(scenario, rank, world, distributed=False)
        dist.barrier()
    results["layout_mismatch"] = layout_mismatch(rank, world)
    results["checkpoint"] = checkpoint_round_trip(rank, out_dir)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
