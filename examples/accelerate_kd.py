"""MoKD distillation on Fashion-MNIST with Hugging Face Accelerate (docs/frameworks.md).

The usual ``Accelerator`` loop with ``balanced_backward`` in place of
``accelerator.backward(loss)``; ``prepare``, ``accumulate``, mixed precision, multi-process
and ``save_state`` / ``load_state`` work as for any optimizer.

    python examples/accelerate_kd.py
    python examples/accelerate_kd.py --mixed-precision bf16 --accumulate 2
    torchrun --standalone --nproc-per-node 2 examples/accelerate_kd.py     # 2 CPU processes
    accelerate launch --multi_gpu --num_processes 2 examples/accelerate_kd.py --mixed-precision fp16
    python examples/accelerate_kd.py --state runs/accelerate/state --epochs 4   # resumes

The teacher (examples/fashion_mnist.py, cached after its first training) is frozen and its
logits are computed once, so it is never prepared or wrapped in DDP.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.fashion_mnist import (
    DEFAULT_CACHE,
    StudentCNN,
    evaluate,
    hinton_kd,
    load_data,
    predict_logits,
    train_teacher,
)
from mokd_optim import MultiObjectiveOptimizer
from mokd_optim.integrations.accelerate import balanced_backward


def parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="micro-batch per process")
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per step")
    parser.add_argument("--method", default="mokd")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument(
        "--max-norm",
        type=float,
        default=None,
        help="clip the balanced step to this norm (default: none, as the library's default)",
    )
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--train-limit", type=int, default=10000)
    parser.add_argument("--test-limit", type=int, default=2000)
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the trained teacher is cached"
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=None,
        help="save_state here after every epoch; load_state from it first if it exists",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1024 training images, a 2-epoch teacher: a smoke test"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.train_limit, args.test_limit, args.teacher_epochs = 1024, 512, 2
    return args


def main(argv: Optional[Sequence[str]] = None) -> float:
    """Train and return the student's test accuracy (on every process)."""
    args = parse(argv)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.accumulate
    )
    data = load_data(args.train_limit, args.test_limit)
    teacher, teacher_accuracy = train_teacher(
        data, epochs=args.teacher_epochs, cache_dir=args.cache_dir
    )
    teacher_logits = predict_logits(teacher, data.x_train)
    loader = DataLoader(
        TensorDataset(data.x_train, data.y_train, teacher_logits),
        batch_size=args.batch,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    set_seed(0)
    student = StudentCNN()
    base = torch.optim.SGD(student.parameters(), lr=args.lr, momentum=0.9)
    opt = MultiObjectiveOptimizer(base, args.method, max_norm=args.max_norm)
    steps = args.epochs * len(loader) // (args.accumulate * accelerator.num_processes)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    student, opt, loader, scheduler = accelerator.prepare(student, opt, loader, scheduler)

    first_epoch = 0
    if args.state is not None and (args.state / "epoch.txt").is_file():
        accelerator.load_state(args.state)  # model, optimizer (method state), scheduler, RNG
        first_epoch = int((args.state / "epoch.txt").read_text())
    for epoch in range(first_epoch, args.epochs):
        for x, y, t_logits in loader:
            with accelerator.accumulate(student):
                logits = student(x)
                losses = {
                    "task": F.cross_entropy(logits, y),
                    "kd": hinton_kd(logits.float(), t_logits, args.temperature),
                }
                stats = balanced_backward(accelerator, opt, losses)  # None inside a window
                opt.step()
                scheduler.step()
                opt.zero_grad()
        if stats is not None:
            weights = ", ".join(f"{n} {w:.3f}" for n, w in zip(stats.names, stats.weights.tolist()))
            accelerator.print(f"epoch {epoch + 1}: weights {weights}")
        if args.state is not None:
            accelerator.save_state(args.state)
            if accelerator.is_main_process:
                (args.state / "epoch.txt").write_text(str(epoch + 1))
    accuracy = evaluate(accelerator.unwrap_model(student).cpu(), data.x_test, data.y_test)
    accelerator.print(f"teacher {teacher_accuracy:.4f}  student ({args.method}) {accuracy:.4f}")
    accelerator.end_training()  # destroys the process group under multi-process launches
    return accuracy


if __name__ == "__main__":
    main()
