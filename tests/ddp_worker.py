"""Training scenarios run under DDP by tests/test_distributed.py (not a test module itself).

Launched like a user's script: ``python -m torch.distributed.run --nproc-per-node 2
-m tests.ddp_worker OUT_DIR``. Every rank writes ``OUT_DIR/rank<r>.pt`` with the final
parameters and per-step weights of each scenario; rank 0 also runs each scenario in a single
process (no DDP) on the concatenated batch, as the reference.
"""

from __future__ import annotations

import datetime
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
    weights, communication, grams = [], [], []
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
        if stats.gram is not None:
            grams.append(stats.gram.detach().clone())
        communication.append((opt.last_communication.collectives, opt.last_communication.bytes))
        opt.step()
    return {
        "params": [p.detach().clone() for p in params],
        "weights": torch.stack(weights),
        "grams": torch.stack(grams) if grams else None,
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
    # nash-mtl's update does not scale with the gradients, so its weights see the absolute scale
    # of the Gram matrix (a wrong power of the world size in the summed Gram changes the steps).
    "exact_representation_nash": {
        "method": "nash-mtl",
        "strategy": "representation",
        "sync": "exact",
    },
    "exact_loop_nash": {"method": "nash-mtl", "strategy": "loop", "sync": "exact"},
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


def bad_input(rank: int, world: int) -> dict[str, str]:
    """One rank's bad input must make every rank raise promptly, naming the objective and the
    rank (no rank left waiting in a collective), and ranks passing the objectives in another
    order must be refused. Each case returns the message this rank raised ("" if none)."""
    results = {}
    cases = ("nan_loss", "inf_head_gradient_weights", "inf_head_gradient_exact", "swapped_names")
    for case in cases:
        torch.manual_seed(0)
        model = TwoHeadMLP()
        sync = "weights" if case.endswith("weights") else "exact"
        opt = MultiObjectiveOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), sync=sync)
        losses, _ = losses_of(model, shard(batch(0), rank, world))
        if rank == 1 and case == "nan_loss":
            losses["task"] = losses["task"] * float("nan")
        if rank == 1 and case.startswith("inf_head_gradient"):
            bias = model.projector.bias[0]
            losses["feat"] = losses["feat"] + torch.sqrt(bias - bias.detach())
        if rank == 1 and case == "swapped_names":
            losses = {name: losses[name] for name in ("kd", "task", "feat")}
        try:
            opt.backward(losses)
            results[case] = ""
        except (ValueError, RuntimeError) as error:
            results[case] = f"{type(error).__name__}: {error}"
        results[case + "/untouched"] = str(all(p.grad is None for p in model.parameters()))
    # The process group still works afterwards.
    total = torch.ones(1)
    dist.all_reduce(total)
    results["group_usable"] = str(float(total) == world)
    return results


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
    # A short timeout: a rank left waiting in a collective fails the run in seconds, not 30 min.
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=90))
    rank, world = dist.get_rank(), dist.get_world_size()
    results: dict[str, Any] = {}
    for name, scenario in SCENARIOS.items():
        results[name] = run(scenario, rank, world, distributed=True)
        if rank == 0:
            results[name + "/reference"] = run(scenario, rank, world, distributed=False)
        dist.barrier()
    results["layout_mismatch"] = layout_mismatch(rank, world)
    results["checkpoint"] = checkpoint_round_trip(rank, out_dir)
    results["bad_input"] = bad_input(rank, world)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
