"""MoKD distillation on sklearn's 8x8 digits with DDP, AMP, accumulation, compile,
checkpoints and logging behind flags. Small enough to run on a laptop CPU.

Single process::

    python examples/digits_stack.py --output runs/digits
    python examples/digits_stack.py --amp bf16 --accumulate 4 --compile

Two processes on one machine (gloo on CPU, nccl on GPUs)::

    torchrun --standalone --nproc-per-node 2 examples/digits_stack.py --sync exact
    torchrun --standalone --nproc-per-node 2 examples/digits_stack.py --sync weights --amp fp16

Resumable (kill it at any time and run the same command again)::

    python examples/digits_stack.py --checkpoint runs/digits/ckpt.pt --output runs/digits

The teacher is trained first in every process with the same seed (identical on all ranks) and
is never wrapped in DDP. The student and its projection head live in one module so that DDP
covers both; only the student's forward is compiled (docs/compile.md).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from mokd_optim import MultiObjectiveOptimizer
from mokd_optim.checkpoint import load_checkpoint, save_checkpoint
from mokd_optim.diagnostics import StatsLogger, plot_log
from mokd_optim.distributed import is_main_process


def load_digits_split(device: torch.device) -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order].to(device), y[order].to(device)
    return x[:1300], y[:1300], x[1300:], y[1300:]


def mlp(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
    )


class Teacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = mlp(128), nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


class Student(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = mlp(32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


class Trainee(nn.Module):
    """Student plus the projection head to the teacher's feature width (reached by one loss)."""

    def __init__(self, compile_student: bool) -> None:
        super().__init__()
        self.student = Student()
        self.projector = nn.Linear(32, 128)
        if compile_student:
            self.student.compile()  # in place: parameter names and state_dict keys unchanged

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.student(x)
        return logits, self.projector(features)


def train_teacher(x: torch.Tensor, y: torch.Tensor, epochs: int = 30) -> Teacher:
    torch.manual_seed(1)
    teacher = Teacher().to(x.device)
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for _ in range(epochs):
        for rows in torch.randperm(len(y), device=x.device).split(128):
            opt.zero_grad()
            F.cross_entropy(teacher(x[rows])[0], y[rows]).backward()
            opt.step()
    return teacher.eval().requires_grad_(False)


def kd_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    log_p = F.log_softmax(student_logits.float() / temperature, dim=-1)
    q = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_p, q, reduction="batchmean") * temperature**2


def parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--max-steps",
        type=int,
        default=0,
        help="stop after this many optimizer steps (0: no limit)",
    )
    parser.add_argument(
        "--batch", type=int, default=64, help="batch per process and optimizer step"
    )
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--method", default="mokd")
    parser.add_argument("--strategy", default="loop")
    parser.add_argument("--sync", default="auto", choices=["auto", "exact", "weights", "none"])
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument(
        "--accumulate", type=int, default=1, help="micro-batches per optimizer step"
    )
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="save here every --save-every steps; resume if it exists",
    )
    parser.add_argument("--save-every", type=int, default=20)
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="directory for log.csv, curves.png and TensorBoard events",
    )
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--tensorboard", action="store_true")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> float:
    """Train and return the student's test accuracy (on every rank)."""
    args = parse(argv)
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    if distributed:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    x_train, y_train, x_test, y_test = load_digits_split(device)
    teacher = train_teacher(x_train, y_train)

    torch.manual_seed(0)
    trainee = Trainee(args.compile).to(device)
    model: nn.Module = DDP(trainee) if distributed else trainee
    base = torch.optim.SGD(trainee.parameters(), lr=args.lr, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    opt = MultiObjectiveOptimizer(
        base, args.method, strategy=args.strategy, sync=args.sync, scaler=scaler, max_norm=1.0
    )
    sampler = (
        DistributedSampler(TensorDataset(x_train, y_train), shuffle=True, seed=0)
        if distributed
        else None
    )
    loader = DataLoader(
        TensorDataset(x_train, y_train),
        batch_size=args.batch,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=True,
    )
    total_steps = args.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)

    epoch, step = 0, 0
    if args.checkpoint is not None and args.checkpoint.exists():
        progress = load_checkpoint(
            args.checkpoint,
            model=model,
            optimizer=opt,
            scheduler=scheduler,
            scaler=scaler,
            map_location=device,
        )
        epoch, step = progress.epoch, progress.step
    logger = None
    if args.output is not None:
        tensorboard = args.output / "tensorboard" if args.tensorboard else None
        logger = StatsLogger(
            args.output / "log.csv",
            tensorboard=tensorboard,
            log_every=args.log_every,
            append=step > 0,
        )

    while epoch < args.epochs and not (args.max_steps and step >= args.max_steps):
        if sampler is not None:
            sampler.set_epoch(epoch)
        torch.manual_seed(1000 + epoch)  # the shuffling order of a resumed epoch is the same
        for index, (x, y) in enumerate(loader):
            if index < step - epoch * len(loader):
                continue  # resumed mid-epoch: skip the batches already trained on
            opt.zero_grad()
            chunks = list(zip(x.chunk(args.accumulate), y.chunk(args.accumulate)))
            for j, (xs, ys) in enumerate(chunks):
                with torch.no_grad():
                    teacher_logits, teacher_features = teacher(xs)
                with torch.autocast(
                    device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                ):
                    logits, projected = model(xs)
                losses = {
                    "task": F.cross_entropy(logits.float(), ys),
                    "kd": kd_kl(logits, teacher_logits),
                    "feat": F.smooth_l1_loss(
                        projected.float(),
                        F.layer_norm(teacher_features, teacher_features.shape[-1:]),
                    ),
                }
                stats = opt.backward(losses, accumulate=j < len(chunks) - 1)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            if logger is not None:
                logger.log(step, stats, lr=scheduler.get_last_lr()[0])
            scheduler.step()
            step += 1
            if args.checkpoint is not None and step % args.save_every == 0:
                save_checkpoint(
                    args.checkpoint,
                    model=model,
                    optimizer=opt,
                    scheduler=scheduler,
                    scaler=scaler,
                    epoch=epoch,
                    step=step,
                )
            if args.max_steps and step >= args.max_steps:
                break
        else:
            epoch += 1

    trainee.eval()
    with torch.no_grad():
        accuracy = float((trainee(x_test)[0].argmax(-1) == y_test).float().mean())
    if logger is not None:
        logger.close()
        if is_main_process():
            plot_log(args.output / "log.csv", args.output / "curves.png")
    if is_main_process():
        print(f"steps {step}  test accuracy {accuracy:.4f}  last weights {stats.weights.tolist()}")
    if distributed:
        dist.destroy_process_group()
    return accuracy


if __name__ == "__main__":
    main()
