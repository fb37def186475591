"""Pieces shared by the example trainers (``imagenet_kd.py``, ``coco_kd.py``), in the manner of
torchvision's ``references/*/utils.py``: process and AMP setup, a resumable sharded sampler,
loading a model state dict from any of the files the trainers write, and the logs a resumed run
continues."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from mokd_optim.diagnostics import StatsLogger, read_log
from mokd_optim.distributed import is_main_process

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, amp_dtype: Optional[torch.dtype]) -> torch.autocast:
    """``torch.autocast`` to ``amp_dtype`` on ``device``'s type (``AMP_DTYPES[args.amp]``);
    disabled, i.e. float32, when ``amp_dtype`` is ``None`` (``--amp none``)."""
    return torch.autocast(
        device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
    )


def setup_distributed(args: argparse.Namespace) -> tuple[torch.device, int, int]:
    """Initialise ``torch.distributed`` under ``torchrun`` (nccl on GPUs, gloo on CPU).

    Returns ``(device, rank, world_size)``: ``--device`` (default cuda if available, else cpu;
    a bare ``cuda`` becomes ``cuda:LOCAL_RANK``, made current), this process's global rank and
    ``WORLD_SIZE`` (1 without torchrun).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return device, rank, world_size


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON to ``path`` (its folder created) on the main process;
    the other ranks write nothing."""
    if is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2))


def parse_pairs(spec: str) -> list[tuple[str, str]]:
    """``"layer3:layer3,layer4"`` -> ``[("layer3", "layer3"), ("layer4", "layer4")]``: comma-
    separated ``student:teacher`` module paths (or FPN levels); a lone name pairs with itself."""
    pairs = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        student, _, teacher = item.partition(":")
        pairs.append((student, teacher or student))
    return pairs


def add_run_control_arguments(
    parser: argparse.ArgumentParser, *, output_dir: Path, log_every: int, brief_help: bool = False
) -> argparse._ArgumentGroup:
    """Add the "run control" options both trainers share and return their group (for the
    trainer's own options): ``--output-dir`` (default ``output_dir``), ``--resume``,
    ``--checkpoint-every``, ``--stop-after``, ``--limit-steps``, ``--limit-val-steps``,
    ``--log-every`` (default ``log_every``), ``--tensorboard`` and ``--no-progress``.

    ``brief_help=True`` leaves ``--checkpoint-every``, ``--log-every``, ``--tensorboard`` and
    ``--no-progress`` without a help text (coco_kd's ``--help`` as it has always been).
    """

    def described(text: str) -> Optional[str]:
        return None if brief_help else text

    run = parser.add_argument_group("run control")
    run.add_argument("--output-dir", type=Path, default=output_dir)
    run.add_argument(
        "--resume",
        default=None,
        help="checkpoint to resume from ('auto': OUTPUT_DIR/checkpoint.pt if it exists)",
    )
    run.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help=described("also checkpoint every N steps (0: at epoch ends only)"),
    )
    run.add_argument(
        "--stop-after",
        type=int,
        default=0,
        help="stop (with a checkpoint) after N optimizer steps in total",
    )
    run.add_argument(
        "--limit-steps", type=int, default=0, help="smoke runs: at most N training steps per epoch"
    )
    run.add_argument(
        "--limit-val-steps",
        type=int,
        default=0,
        help="smoke runs: at most N validation batches per rank",
    )
    run.add_argument(
        "--log-every",
        type=int,
        default=log_every,
        help=described("steps between log rows (losses, weights, cosine, dominance)"),
    )
    run.add_argument(
        "--tensorboard",
        action="store_true",
        help=described("also write TensorBoard events to OUTPUT_DIR/tensorboard"),
    )
    run.add_argument("--no-progress", action="store_true", help=described("no tqdm progress bars"))
    return run


class EpochSampler(Sampler):
    """Shuffled, sharded, resumable order of the training set.

    Epoch ``e`` is a permutation drawn from ``seed + e`` (padded by wrapping around so that
    every rank gets the same number of samples, as ``DistributedSampler`` does); rank ``r``
    takes positions ``r, r + W, ...``. Each item is ``(dataset index, sample seed)``: the
    seed drives that sample's random augmentation, so an image is augmented the same way
    whichever worker loads it and whether or not the run was resumed. ``set_epoch(e, start)``
    skips the first ``start`` samples of this rank's shard (a resumed epoch).
    """

    def __init__(self, size: int, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.per_rank = math.ceil(size / world_size)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        seeds = torch.randint(0, 2**62, (self.size,), generator=generator)
        total = self.per_rank * self.world_size
        positions = torch.arange(total) % self.size  # pad by wrapping around
        mine = positions[self.rank :: self.world_size][self.start :]
        return iter(zip(order[mine].tolist(), seeds[mine].tolist()))

    def __len__(self) -> int:
        return self.per_rank - self.start


def state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    """A model state dict from a file: a plain state dict, a mokd_optim checkpoint (its
    ``model``), or ``{"state_dict": ...}`` / ``{"model": ...}``; DDP/compile prefixes removed."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(payload, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in payload and isinstance(payload[key], dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not all(
        isinstance(v, torch.Tensor) for v in payload.values()
    ):
        raise ValueError(
            f"{path} holds no state dict (expected a dict of tensors, a mokd_optim checkpoint or {{'state_dict': ...}})"
        )
    cleaned = {}
    for key, value in payload.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    return cleaned


def truncate_log(path: Path, *, keep: Callable[[dict[str, float]], bool]) -> None:
    """Drop rows of a StatsLogger CSV that a resumed run will write again."""
    if not path.is_file() or path.stat().st_size == 0:
        return

    with open(path, newline="") as stream:
        rows = list(csv.reader(stream))
    header, body = rows[0], rows[1:]
    kept = [
        row
        for row in body
        if keep({k: float(v) if v != "" else math.nan for k, v in zip(header, row)})
    ]
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(kept)
    os.replace(temporary, path)


def open_logs(
    args: argparse.Namespace, *, main_process: bool, resume: bool, step: int, epoch: int
) -> tuple[StatsLogger, StatsLogger, Optional[Any]]:
    """The training and evaluation :class:`StatsLogger` of a run (``<output_dir>/train_log.csv``
    and ``eval_log.csv``, TensorBoard events with ``--tensorboard``), and the TensorBoard writer.

    On a resumed run the rows it will write again (training steps from ``step``, evaluations
    after ``epoch``) are dropped first, so the logs of an interrupted and resumed run equal those
    of an uninterrupted one.
    """
    train_log, eval_log = args.output_dir / "train_log.csv", args.output_dir / "eval_log.csv"
    if main_process and resume:
        truncate_log(train_log, keep=lambda row: row["step"] < step)
        truncate_log(eval_log, keep=lambda row: row["epoch"] <= epoch)
    writer = None
    if args.tensorboard and main_process:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(args.output_dir / "tensorboard"))
    logger = StatsLogger(train_log, tensorboard=writer, log_every=args.log_every, append=resume)
    eval_logger = StatsLogger(eval_log, tensorboard=writer, append=resume)
    return logger, eval_logger, writer


def finite_mean(values: Iterable[float]) -> Optional[float]:
    """Mean of the finite ``values`` (NaN cells of a log, from steps that did not write that
    column, are skipped); ``None`` when there are none."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def run_statistics(
    train_log: Path, objective_means: Callable[[dict[str, list[float]]], dict[str, Any]]
) -> dict[str, Any]:
    """What the summary reports of a training log (``train_log.csv`` of :func:`open_logs`).

    Returns ``{}`` without the file, else ``logged_steps`` (rows), the trainer's
    ``objective_means(columns)`` (its means of the weights, losses and cosines, from the log's
    columns as :func:`~mokd_optim.diagnostics.read_log` returns them; use :func:`finite_mean`),
    ``conflict_fraction`` (mean of the ``conflict`` column) and ``mean_log10_dominance`` (mean
    log10 of the positive finite ``dominance`` values), each ``None`` where nothing was logged.
    """
    if not train_log.is_file():
        return {}
    columns = read_log(train_log)
    dominance = [math.log10(d) for d in columns.get("dominance", []) if math.isfinite(d) and d > 0]
    return {
        "logged_steps": len(columns["step"]),
        **objective_means(columns),
        "conflict_fraction": finite_mean(columns.get("conflict", [])),
        "mean_log10_dominance": finite_mean(dominance),
    }
