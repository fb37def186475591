"""Pieces shared by the example trainers (``imagenet_kd.py``, ``coco_kd.py``), in the manner of
torchvision's ``references/*/utils.py``: process and AMP setup, the run-control options, a
resumable sharded sampler, the bookkeeping of a resumable run (:class:`TrainingRun`: checkpoint,
resume, epochs, logs), loading a model state dict from any of the files the trainers write, the
statistics the summaries report, the parts of a training step the classification trainers share
(the multi-objective optimizer, the training loader, the backward with its Gram probe, the
observed losses after a step, the step's log line), the summary fields they share, and the end of
a run (summary.json, the list of outputs, the final barrier, the process group's teardown).

Each trainer keeps what is its own: data, models, objectives, the forward of a step, evaluation
and the rest of the summary's fields."""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from mokd_optim import MultiObjectiveOptimizer
from mokd_optim.checkpoint import Progress, load_checkpoint, save_checkpoint
from mokd_optim.diagnostics import CollapseWatch, StatsLogger, StepStats, plot_log, read_log
from mokd_optim.distributed import is_main_process, unwrap_model
from mokd_optim.kd import build_heads

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
    """Write ``payload`` as indented, strict JSON (non-finite numbers as ``null``, see
    :func:`strict_json`) to ``path`` (its folder created) on the main process; the other ranks
    write nothing."""
    if is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(strict_json(payload), indent=2, allow_nan=False))


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by ``None``, recursively, so
    that the JSON written is standard (``null``; strict parsers reject a bare ``NaN``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def parse_pairs(spec: str) -> list[tuple[str, str]]:
    """``"layer3:layer3,layer4"`` -> ``[("layer3", "layer3"), ("layer4", "layer4")]``: comma-
    separated ``student:teacher`` module paths (or FPN levels); a lone name pairs with itself."""
    pairs = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        student, _, teacher = item.partition(":")
        pairs.append((student, teacher or student))
    return pairs


# Command line ------------------------------------------------------------------------------
#
# The trainers' options follow torchvision's references/classification/train.py and
# references/detection/train.py where they overlap (-b/--batch-size, -j/--workers, --wd,
# --lr-scheduler, --lr-step-size/--lr-steps, --clip-grad-norm, --print-freq, --amp, ...); the
# names this project documented first stay as aliases (--weight-decay, --max-norm, --log-every,
# --distill-weight, --method ce). Every trainer builds its parser from the functions below, so
# the trainers agree with each other.

#: Names of the no-teacher baseline (``--method``), the first one canonical.
BASELINE_METHODS = ("none", "ce")
#: ``--lr-scheduler`` names: ours first, then torchvision's spellings of the same schedules.
LR_SCHEDULERS = {
    "step": "step",
    "cosine": "cosine",
    "steplr": "step",
    "multisteplr": "step",
    "cosineannealinglr": "cosine",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` keeps the module docstring's layout and shows every option's default, also
    for options without a help text (which ``ArgumentDefaultsHelpFormatter`` leaves out)."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        # an option whose help already says what an unset value means keeps just that
        if action.default is None and action.help and "default" in action.help:
            return action.help
        return super()._get_help_string(action)

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.option_strings and action.default is not argparse.SUPPRESS:
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


def make_parser(description: Optional[str]) -> argparse.ArgumentParser:
    """The trainers' parser: ``description`` (the module docstring) as written, defaults shown."""
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)


def add_workers_argument(group: Any, *, default: int) -> None:
    """``-j/--workers``: data-loading processes per rank (torchvision's spelling)."""
    group.add_argument(
        "-j", "--workers", type=int, default=default, help="data loading processes per rank"
    )


def add_method_arguments(
    parser: argparse.ArgumentParser,
    *,
    kd_weight: float,
    kd_weight_help: str,
    baseline_help: str,
) -> argparse._ArgumentGroup:
    """Add the "objectives and balancing" options every trainer shares and return the group:
    ``--method`` (``none``/``ce``: no teacher, ``kd``: fixed weights, or a method name),
    ``--method-options`` (JSON), ``--strategy``, ``--sync``, ``--clip-grad-norm`` (alias
    ``--max-norm``) and ``--kd-weight`` (alias ``--distill-weight``; default ``kd_weight``).
    :func:`check_arguments` validates them after parsing."""
    method = parser.add_argument_group("objectives and balancing")
    method.add_argument(
        "--method",
        default="mokd",
        help=f"'none' (alias 'ce': {baseline_help}), 'kd' (fixed weights) or a mokd_optim "
        "method name (mokd_optim.methods.available())",
    )
    method.add_argument(
        "--method-options",
        default="{}",
        help='JSON options of the method, e.g. \'{"step": "anchor"}\'',
    )
    method.add_argument(
        "--strategy",
        default="auto",
        choices=["auto", "loop", "vmap", "representation", "amortized"],
        help="how the per-objective gradients are obtained (docs/strategies.md)",
    )
    method.add_argument(
        "--sync",
        default="auto",
        choices=["auto", "exact", "weights", "none"],
        help="cross-rank synchronisation of the balancing (docs/distributed.md)",
    )
    method.add_argument(
        "--clip-grad-norm",
        "--max-norm",
        dest="max_norm",
        type=float,
        default=None,
        help="clip the norm of the combined gradient (MoKD's safeguard)",
    )
    method.add_argument(
        "--kd-weight",
        "--distill-weight",
        dest="kd_weight",
        type=float,
        default=kd_weight,
        help=kd_weight_help,
    )
    return method


def add_optimization_arguments(
    parser: argparse.ArgumentParser,
    *,
    title: str,
    epochs: int,
    batch_size: int,
    lr_help: str,
    weight_decay: float,
    lr_scheduler: str,
    lr_steps: Sequence[int],
) -> argparse._ArgumentGroup:
    """Add the optimisation options every trainer shares and return the group (for the
    trainer's own: ``--opt``, warm-up, ...): ``--epochs``, ``-b/--batch-size`` (per rank),
    ``--lr`` (default ``None``: the trainer's linear-scaling rule, ``lr_help``), ``--momentum``,
    ``--wd/--weight-decay``, ``--lr-scheduler`` (:data:`LR_SCHEDULERS`), ``--lr-steps``
    (milestone epochs), ``--lr-step-size`` (decay every N epochs; replaces ``--lr-steps``),
    ``--lr-gamma`` and ``--seed``."""
    optim = parser.add_argument_group(title)
    optim.add_argument("--epochs", type=int, default=epochs)
    optim.add_argument(
        "-b", "--batch-size", type=int, default=batch_size, help="images per rank and step"
    )
    optim.add_argument("--lr", type=float, default=None, help=lr_help)
    optim.add_argument("--momentum", type=float, default=0.9)
    optim.add_argument(
        "--wd", "--weight-decay", dest="weight_decay", type=float, default=weight_decay
    )
    optim.add_argument(
        "--lr-scheduler",
        default=lr_scheduler,
        choices=list(LR_SCHEDULERS),
        help="step decay at --lr-steps, or a cosine to 0 at the last epoch (torchvision's names "
        "steplr / multisteplr / cosineannealinglr are accepted)",
    )
    optim.add_argument(
        "--lr-steps",
        type=int,
        nargs="+",
        default=list(lr_steps),
        help="epochs at which the lr is multiplied by --lr-gamma",
    )
    optim.add_argument(
        "--lr-step-size",
        type=int,
        default=None,
        help="multiply the lr by --lr-gamma every N epochs (replaces --lr-steps)",
    )
    optim.add_argument("--lr-gamma", type=float, default=0.1)
    optim.add_argument("--seed", type=int, default=0)
    return optim


def add_system_arguments(
    parser: argparse.ArgumentParser, *, compile_help: str
) -> argparse._ArgumentGroup:
    """Add ``--device``, ``--amp`` (``none``, ``bf16``, ``fp16``; a bare ``--amp`` is fp16 with
    a ``GradScaler``, torchvision's meaning), ``--channels-last`` and ``--compile`` and return
    the group."""
    system = parser.add_argument_group("system")
    system.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    system.add_argument(
        "--amp",
        nargs="?",
        const="fp16",
        default="none",
        choices=list(AMP_DTYPES),
        help="autocast dtype; fp16 adds a GradScaler; a bare --amp means fp16 (as in torchvision)",
    )
    system.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    system.add_argument("--compile", action="store_true", help=compile_help)
    return system


def check_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace, *, teacher_needed: bool
) -> argparse.Namespace:
    """Validate and normalise what :func:`add_method_arguments` and
    :func:`add_optimization_arguments` parsed, in place, and return ``args``: ``--method ce``
    becomes ``none``; an unknown method, ``--method-options`` that are not a JSON object and a
    missing ``--teacher-weights`` where ``teacher_needed`` are ``parser.error`` s (exit code 2,
    the usage and the fix); ``--lr-scheduler`` is reduced to ``step`` / ``cosine``;
    ``--lr-step-size N`` becomes ``--lr-steps N 2N ...`` below ``--epochs``."""
    from mokd_optim.methods import available

    if args.method in BASELINE_METHODS:
        args.method = BASELINE_METHODS[0]
    elif args.method != "kd" and args.method not in available():
        parser.error(
            f"unknown --method {args.method!r}; choose 'none' (alias 'ce'), 'kd' or one of "
            f"{available()}"
        )
    try:
        args.method_options = json.loads(args.method_options)
    except json.JSONDecodeError as error:
        parser.error(f"--method-options is not JSON: {error}")
    if not isinstance(args.method_options, dict):
        parser.error('--method-options must be a JSON object, e.g. \'{"step": "anchor"}\'')
    args.lr_scheduler = LR_SCHEDULERS[args.lr_scheduler]
    if args.lr_step_size is not None:
        if args.lr_step_size < 1:
            parser.error(
                f"--lr-step-size must be a positive number of epochs, not {args.lr_step_size}"
            )
        args.lr_steps = list(range(args.lr_step_size, max(args.epochs, 1), args.lr_step_size))
    if teacher_needed and getattr(args, "teacher_weights", None) is None:
        parser.error(
            f"--teacher-weights is required with --method {args.method} (a torchvision weights "
            "name, a file, 'pretrained' for EfficientNet-Lite, or 'random' to distil from an "
            "untrained teacher on purpose); --method none trains the student alone"
        )
    return args


#: What a trainer may write in ``--output-dir`` (see :func:`print_outputs`).
RUN_OUTPUTS = (
    "summary.json",
    "train_log.csv",
    "eval_log.csv",
    "curves.png",
    "checkpoint.pt",
    "student.pt",
    "tensorboard",
)


def print_outputs(output_dir: Path, names: Iterable[str] = RUN_OUTPUTS) -> None:
    """Print, on the main process, where the run's outputs are: the absolute ``output_dir``
    and those of ``names`` that exist in it."""
    if not is_main_process():
        return
    written = [name for name in names if (output_dir / name).exists()]
    print(f"outputs in {output_dir.resolve()}: {', '.join(written)}")


def add_run_control_arguments(
    parser: argparse.ArgumentParser, *, output_dir: Path, log_every: int, brief_help: bool = False
) -> argparse._ArgumentGroup:
    """Add the "run control" options both trainers share and return their group (for the
    trainer's own options): ``--output-dir`` (default ``output_dir``), ``--resume``,
    ``--checkpoint-every``, ``--stop-after``, ``--limit-steps``, ``--limit-val-steps``,
    ``--print-freq`` (alias ``--log-every``; default ``log_every``), ``--tensorboard`` and
    ``--no-progress``.

    ``brief_help`` is accepted for compatibility and ignored: every option has a help text.
    """
    del brief_help
    run = parser.add_argument_group("run control")
    run.add_argument(
        "--output-dir", type=Path, default=output_dir, help="logs, checkpoint and student.pt"
    )
    run.add_argument(
        "--resume",
        default=None,
        help="checkpoint to resume from ('auto': OUTPUT_DIR/checkpoint.pt if it exists)",
    )
    run.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="also checkpoint every N steps (0: at epoch ends only)",
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
        "--print-freq",
        "--log-every",
        dest="log_every",
        type=int,
        default=log_every,
        help="steps between rows of train_log.csv (losses, weights, cosine, dominance)",
    )
    run.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard events to OUTPUT_DIR/tensorboard",
    )
    run.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
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


def count_steps_per_epoch(loader: Any, args: argparse.Namespace) -> int:
    """Optimizer steps in one epoch: the batches of ``loader`` (a ``DataLoader`` with
    ``drop_last=True``), at most ``--limit-steps``.

    Raises:
        SystemExit: not one full batch of ``--batch-size`` per rank in the training set.
    """
    steps = len(loader) if not args.limit_steps else min(args.limit_steps, len(loader))
    if steps == 0:
        raise SystemExit(
            f"no full batch of {args.batch_size} per rank in {len(loader.dataset)} training images"
        )
    return steps


def optimizer_step(
    optimizer: torch.optim.Optimizer, scaler: Optional[torch.amp.GradScaler]
) -> None:
    """``optimizer.step()``; under fp16 AMP (a ``scaler``) ``scaler.step(optimizer)`` and
    ``scaler.update()`` instead."""
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def build_feature_heads(
    student: nn.Module,
    teacher: nn.Module,
    pairs: Sequence[tuple[str, str]],
    sample: torch.Tensor,
    args: argparse.Namespace,
) -> nn.ModuleDict:
    """:func:`~mokd_optim.kd.build_heads` for the ``(student path, teacher path)`` ``pairs``
    (:func:`parse_pairs`), widths inferred from one pass of ``sample`` (a batch of inputs on the
    models' device), with the ``--head-kind``, ``--head-expansion``, ``--head-align`` and
    ``--head-teacher-projector`` options; the projector defaults to ``None`` at expansion 1, else
    ``"fixed"``. Errors are ``build_heads``'s (e.g. a path that names no module)."""
    projector = args.head_teacher_projector or (None if args.head_expansion == 1.0 else "fixed")
    return build_heads(
        student,
        teacher,
        pairs,
        sample,
        kind=args.head_kind,
        expansion=args.head_expansion,
        teacher_projector=projector,
        align=args.head_align,
    )


def trainable_param_groups(
    student: nn.Module, distiller: Optional[Any], weight_decay: float
) -> list[dict[str, Any]]:
    """The base optimizer's parameter groups, all at ``weight_decay``: the distiller's (student
    and heads, ``distiller.param_groups``) when there is one, else one group of the student's
    trainable parameters."""
    if distiller is not None:
        return distiller.param_groups(weight_decay=weight_decay, head_weight_decay=weight_decay)
    return [
        {
            "params": [p for p in student.parameters() if p.requires_grad],
            "weight_decay": weight_decay,
        }
    ]


def make_multi_optimizer(
    base: torch.optim.Optimizer,
    args: argparse.Namespace,
    *,
    max_norm: Optional[float],
    scaler: Optional[torch.amp.GradScaler],
    weights: Optional[dict[str, float]] = None,
) -> MultiObjectiveOptimizer:
    """The trainers' :class:`~mokd_optim.MultiObjectiveOptimizer` over ``base``: method
    ``"weighted"`` with the fixed ``weights`` (``--method kd``) when given, else ``args.method``
    with ``args.method_options``; ``args.strategy`` and ``args.sync`` in both, clipping at
    ``max_norm`` (``None``: none)."""
    if weights is not None:
        return MultiObjectiveOptimizer(
            base,
            "weighted",
            weights=weights,
            strategy=args.strategy,
            max_norm=max_norm,
            sync=args.sync,
            scaler=scaler,
        )
    return MultiObjectiveOptimizer(
        base,
        args.method,
        strategy=args.strategy,
        max_norm=max_norm,
        sync=args.sync,
        scaler=scaler,
        **args.method_options,
    )


def make_train_loader(
    dataset: Any, sampler: Sampler, args: argparse.Namespace, device: torch.device
) -> DataLoader:
    """The training ``DataLoader``: ``args.batch_size`` from ``sampler``, last partial batch
    dropped, ``args.workers`` persistent workers, memory pinned on CUDA; its generator is seeded
    with ``args.seed``, so worker seeds never touch the global RNG."""
    return DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(args.seed),
    )


def probe_gram(losses: dict[str, torch.Tensor], params: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(K, K)`` Gram matrix of the objectives' gradients over ``params`` (a diagnostic for
    methods that compute no per-objective gradients, e.g. fixed weights; local to this rank)."""
    flat = []
    for loss in losses.values():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        flat.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                    for g, p in zip(grads, params)
                ]
            )
        )
    matrix = torch.stack(flat)
    return matrix @ matrix.T


def multi_backward(
    multi: MultiObjectiveOptimizer,
    losses: dict[str, torch.Tensor],
    params: Sequence[torch.Tensor],
    *,
    log_now: bool,
    features: Optional[torch.Tensor] = None,
) -> StepStats:
    """``multi.backward(losses)`` (with ``features=`` when given, for ``--strategy
    representation``) and its step statistics; on a logged step (``log_now``) of a method that
    computes no per-objective gradients, the statistics carry :func:`probe_gram` over
    ``params``, taken before the backward."""
    gram = probe_gram(losses, params) if log_now and not multi.method.needs_gradients else None
    if features is not None:
        stats = multi.backward(losses, features=features)
    else:
        stats = multi.backward(losses)
    if gram is not None:
        stats = dataclasses.replace(stats, gram=gram.to(stats.losses))
    return stats


def observe_after_step(
    multi: Optional[MultiObjectiveOptimizer],
    model: nn.Module,
    inputs: torch.Tensor,
    targets: Any,
    device: torch.device,
    amp_dtype: Optional[torch.dtype],
) -> None:
    """For a method that reads the losses after its step (``needs_losses_after``): the
    distilling ``model``'s losses on the same batch, without gradients, passed to
    ``multi.observe`` in float32. Nothing without ``multi`` or for other methods."""
    if multi is not None and multi.method.needs_losses_after:
        with torch.no_grad(), autocast(device, amp_dtype):
            _, after = model(inputs, targets)
        multi.observe({name: value.float() for name, value in after.items()})


def log_train_step(
    run: TrainingRun,
    logger: StatsLogger,
    optimizer: torch.optim.Optimizer,
    stats: Optional[StepStats],
    losses: dict[str, torch.Tensor],
    top1: torch.Tensor,
) -> None:
    """Log a training step: ``lr``, fractional ``epoch`` and ``train/top1`` (``top1``, the
    batch's top-1 accuracy in %), with ``stats``, or the ``loss/<name>`` of ``losses`` when there
    are none (the baseline); then show the losses on the progress line. ``stats`` also go to
    the run's :class:`CollapseWatch` (``run.watch``, main process), which warns once if the
    logged steps show a dead network."""
    extra = {
        "lr": optimizer.param_groups[0]["lr"],
        "epoch": run.epoch_fraction,
        "train/top1": top1,
    }
    if stats is None:
        extra.update({f"loss/{name}": value for name, value in losses.items()})
    logger.log(run.step, stats, **extra)
    if stats is not None and run.main_process:
        run.watch.update(stats)
    run.show_losses(losses)


class TrainingRun:
    """Where a resumable training run stands, its checkpoint and its epoch bookkeeping.

    Holds what a checkpoint restores (the student ``model``, other trained ``modules`` such as
    projection heads, ``optimizer``, ``scheduler``, ``scaler``) and the progress: ``epoch``
    (epochs done), ``step`` (optimizer steps done) and ``history`` (one record per evaluated
    epoch). The trainer keeps its own forward, backward and evaluation::

        run = TrainingRun(args, steps_per_epoch=..., sampler=..., model=student, ...)
        run.resume(map_location=device)
        logger = run.open_logs()
        while run.running:
            model.train()
            for batch in run.epoch_batches(train_loader):
                ...  # forward, backward, optimizer_step, log at run.step
            if run.interrupted:
                break
            run.end_epoch(evaluate(...))
            run.save()
        run.close(curves=True)

    The checkpoint is ``OUTPUT_DIR/checkpoint.pt``; its ``extra`` holds ``steps_per_epoch``,
    ``history`` and the trainer's ``self.extra`` (e.g. the teacher's evaluation).
    """

    def __init__(
        self,
        args: argparse.Namespace,
        *,
        steps_per_epoch: int,
        sampler: EpochSampler,
        model: nn.Module,
        modules: Optional[Mapping[str, nn.Module]],
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: Optional[torch.amp.GradScaler],
        main_process: bool,
    ) -> None:
        self.args, self.steps_per_epoch, self.sampler = args, steps_per_epoch, sampler
        self.model, self.modules = model, modules
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.main_process = main_process
        self.path: Path = args.output_dir / "checkpoint.pt"
        self.epoch, self.step = 0, 0
        self.history: list[dict[str, float]] = []
        self.extra: dict[str, Any] = {}
        self.resumed_from: Optional[str] = None
        self.stopped = False  # --stop-after reached
        self.train_seconds = 0.0  # in epoch_batches, this process
        self.steps_run = 0  # optimizer steps this process ran (not those restored)
        self.epoch_start = 0.0
        self.bar: Any = None
        self.logs: Optional[tuple[StatsLogger, StatsLogger, Optional[Any]]] = None
        # fed the logged steps' statistics by log_train_step: warns on a silent collapse
        self.watch = CollapseWatch()

    def resume(self, *, map_location: Any, mismatch_hint: str = "") -> Optional[Progress]:
        """Restore the run from ``--resume`` (a checkpoint path, or ``auto``: ``self.path`` if
        it exists) and set ``resumed_from``; print where it resumed. Returns the loaded
        :class:`~mokd_optim.checkpoint.Progress` (its ``extra`` for trainer-specific values),
        ``None`` when there is nothing to resume.

        Raises:
            SystemExit: the checkpoint was written with another number of steps per epoch
                (``mismatch_hint`` is appended to the message).
        """
        resume = self.args.resume
        if resume == "auto":
            resume = str(self.path) if self.path.is_file() else None
        self.resumed_from = resume
        if not resume:
            return None
        state = load_checkpoint(
            resume,
            model=self.model,
            modules=self.modules,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            map_location=map_location,
        )
        saved_steps = state.extra.get("steps_per_epoch")
        if saved_steps != self.steps_per_epoch:
            raise SystemExit(
                f"{resume} was written with {saved_steps} steps per epoch, this run has "
                f"{self.steps_per_epoch}{mismatch_hint}"
            )
        self.epoch, self.step = state.epoch, state.step
        self.history = list(state.extra.get("history", []))
        if self.main_process:
            print(f"resumed from {resume}: epoch {self.epoch}, step {self.step}")
        return state

    def open_logs(self) -> StatsLogger:
        """Open the logs of :func:`open_logs`, continued from where the run resumed, and return
        the training logger (:meth:`end_epoch` writes the evaluation log; :meth:`close` closes
        both)."""
        self.logs = open_logs(
            self.args,
            main_process=self.main_process,
            resume=bool(self.resumed_from),
            step=self.step,
            epoch=self.epoch,
        )
        return self.logs[0]

    def close(self, *, curves: bool) -> None:
        """Close the logs (and the TensorBoard writer); on the main process write
        ``OUTPUT_DIR/student.pt`` (the state dict of ``model``, wrappers removed) and, with
        ``curves`` and a training log, ``curves.png`` (skipped with a warning when matplotlib
        is missing)."""
        if self.logs is not None:
            logger, eval_logger, writer = self.logs
            logger.close()
            eval_logger.close()
            if writer is not None:
                writer.close()
        if self.main_process:
            output_dir = self.args.output_dir
            torch.save(unwrap_model(self.model).state_dict(), output_dir / "student.pt")
            train_log = output_dir / "train_log.csv"
            eval_log = output_dir / "eval_log.csv"
            if curves and train_log.is_file():
                try:
                    plot_log(
                        train_log,
                        output_dir / "curves.png",
                        # an interrupted first epoch leaves an empty evaluation log
                        eval_path=eval_log
                        if eval_log.is_file() and eval_log.stat().st_size
                        else None,
                    )
                except ImportError as error:
                    warnings.warn(f"no curves.png: {error}", stacklevel=1)

    def save(self) -> None:
        """Write ``self.path`` at the current epoch and step (on every rank, see
        :func:`~mokd_optim.checkpoint.save_checkpoint`)."""
        save_checkpoint(
            self.path,
            model=self.model,
            modules=self.modules,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            epoch=self.epoch,
            step=self.step,
            extra={
                "steps_per_epoch": self.steps_per_epoch,
                "history": self.history,
                **self.extra,
            },
        )

    @property
    def running(self) -> bool:
        """Epochs remain and ``--stop-after`` was not reached."""
        return self.epoch < self.args.epochs and not self.stopped

    @property
    def interrupted(self) -> bool:
        """``--stop-after`` stopped the run inside the current epoch (checkpoint written)."""
        return self.stopped and self.step < (self.epoch + 1) * self.steps_per_epoch

    @property
    def epoch_fraction(self) -> float:
        """Where the current step stands in epochs (``epoch + steps into it / steps_per_epoch``)."""
        return self.epoch + (self.step - self.epoch * self.steps_per_epoch) / self.steps_per_epoch

    def epoch_batches(self, loader: Iterable[Any]) -> Iterator[Any]:
        """The batches of the current epoch that remain (a resumed epoch skips those done).

        After each batch the trainer has stepped the optimizer on, this steps the scheduler,
        counts the step, advances the progress bar, checkpoints every ``--checkpoint-every``
        steps and stops at ``--stop-after``; when that stops the run inside the epoch it saves
        and says how to resume (see :attr:`interrupted`). Time spent is added to
        ``train_seconds``.
        """
        from tqdm import tqdm

        args = self.args
        skip = self.step - self.epoch * self.steps_per_epoch
        self.sampler.set_epoch(self.epoch, start=skip * args.batch_size)
        self.epoch_start = time.perf_counter()
        self.bar = tqdm(
            total=self.steps_per_epoch,
            initial=skip,
            desc=f"epoch {self.epoch + 1}/{args.epochs}",
            disable=not (self.main_process and not args.no_progress),
        )
        batches = iter(loader)
        for _ in range(skip, self.steps_per_epoch):
            yield next(batches)
            self.scheduler.step()
            self.step += 1
            self.steps_run += 1
            self.bar.update(1)
            if args.checkpoint_every and self.step % args.checkpoint_every == 0:
                self.save()
            if args.stop_after and self.step >= args.stop_after:
                self.stopped = True
                break
        self.bar.close()
        self.train_seconds += time.perf_counter() - self.epoch_start
        if self.interrupted:
            self.save()
            if self.main_process:
                print(
                    f"stopped after step {self.step} (--stop-after); resume with --resume {self.path}"
                )

    def show_losses(self, losses: dict[str, torch.Tensor]) -> None:
        """Show the losses (scalars) on the progress bar of the current epoch."""
        self.bar.set_postfix(
            {name: f"{float(value.detach()):.3f}" for name, value in losses.items()}
        )

    def end_epoch(self, result: dict[str, float]) -> None:
        """Count the epoch done and record its evaluation ``result`` (``val/<key>`` in
        ``history`` and the evaluation log, with the lr and the epoch's seconds).

        Raises:
            RuntimeError: before :meth:`open_logs`.
        """
        if self.logs is None:
            raise RuntimeError("TrainingRun.end_epoch() needs open_logs() first")
        self.epoch += 1
        record = {
            "epoch": float(self.epoch),
            "step": float(self.step),
            **{f"val/{k}": v for k, v in result.items()},
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - self.epoch_start,
        }
        self.history.append(record)
        self.logs[1].log(self.step, **{k: v for k, v in record.items() if k != "step"})


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


def count_parameters(module: nn.Module) -> int:
    """Number of scalars in ``module``'s parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def parameter_counts(
    student: nn.Module, teacher: Optional[nn.Module], distiller: Optional[Any]
) -> dict[str, int]:
    """The summary's ``student_params``, ``teacher_params`` (0 without a teacher) and
    ``head_params`` (those of ``distiller.head_parameters()``; 0 without a distiller)."""
    return {
        "student_params": count_parameters(student),
        "teacher_params": count_parameters(teacher) if teacher is not None else 0,
        "head_params": sum(p.numel() for p in distiller.head_parameters())
        if distiller is not None
        else 0,
    }


#: The files a classification summary lists under ``outputs`` (see :func:`summary_closing`).
SUMMARY_OUTPUTS = ("train_log.csv", "eval_log.csv", "checkpoint.pt", "student.pt")


def summary_closing(
    run: TrainingRun,
    args: argparse.Namespace,
    global_batch: int,
    objective_means: Callable[[dict[str, list[float]]], dict[str, Any]],
    main_process: bool,
    started: float,
    versions: dict[str, str],
) -> dict[str, Any]:
    """The last fields of a classification trainer's summary, in order: ``images_per_second``
    (this process's training steps times ``global_batch`` over its training seconds; ``None``
    before any), ``statistics`` (:func:`run_statistics` of ``args.output_dir/train_log.csv``
    with ``objective_means``, on the ``main_process``; else ``{}``), ``outputs`` (paths in
    ``args.output_dir`` of :data:`SUMMARY_OUTPUTS`), ``seconds`` (since ``started``, a
    ``time.perf_counter()``) and ``versions``."""
    output_dir = args.output_dir
    return {
        "images_per_second": run.steps_run * global_batch / run.train_seconds
        if run.train_seconds > 0
        else None,
        "statistics": run_statistics(output_dir / "train_log.csv", objective_means)
        if main_process
        else {},
        "outputs": {name: str(output_dir / name) for name in SUMMARY_OUTPUTS},
        "seconds": time.perf_counter() - started,
        "versions": versions,
    }


def finish_run(output_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """End a run: write ``summary`` to ``output_dir/summary.json`` (:func:`write_json`), print
    where the outputs are (:func:`print_outputs`) and wait at a barrier for the other processes
    when distributed. Returns ``summary``."""
    write_json(output_dir / "summary.json", summary)
    print_outputs(output_dir)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return summary


def run_main(main: Callable[[], Any]) -> None:
    """Run a trainer's ``main()`` as a script; destroy the process group afterwards, also when
    ``main`` raises (the exception propagates)."""
    try:
        main()
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
