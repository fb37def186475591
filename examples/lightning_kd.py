"""MoKD distillation on Fashion-MNIST inside PyTorch Lightning (docs/frameworks.md).

A ``LightningModule`` in manual optimization calls ``balanced_step`` with the named losses;
Lightning keeps its precision plugin, DDP, hooks, schedulers, loggers and checkpoints.

    python examples/lightning_kd.py                              # 1 CPU/GPU process
    python examples/lightning_kd.py --precision bf16-mixed --accumulate 2
    python examples/lightning_kd.py --devices 2                  # DDP, Lightning starts rank 1
    python examples/lightning_kd.py --resume runs/lightning/last.ckpt --epochs 4

The teacher (examples/fashion_mnist.py, cached after its first training) is frozen and its
logits are computed once, so it is never wrapped in DDP. Checkpoints (``--out``/last.ckpt)
hold the optimizer's method state; ``--resume`` continues from one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
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
from mokd_optim.integrations.lightning import balanced_step


class DistilledStudent(pl.LightningModule):
    """Student trained on cross-entropy and Hinton KD, balanced by ``MultiObjectiveOptimizer``."""

    def __init__(
        self,
        method: str = "mokd",
        lr: float = 0.05,
        accumulate: int = 1,
        temperature: float = 4.0,
        max_norm: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False  # the optimizer writes the balanced .grad itself
        self.student = StudentCNN()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y, teacher_logits = batch
        logits = self.student(x)
        losses = {
            "task": F.cross_entropy(logits, y),
            "kd": hinton_kd(logits.float(), teacher_logits, self.hparams.temperature),
        }
        stats = balanced_step(
            self, losses, accumulate_grad_batches=self.hparams.accumulate, batch_idx=batch_idx
        )
        if stats is None:  # a micro-batch inside an accumulation window
            return
        self.lr_schedulers().step()  # type: ignore[union-attr]
        self.log_dict(
            {
                "loss/task": stats.losses[0],
                "loss/kd": stats.losses[1],
                "weight/task": stats.weights[0],
                "weight/kd": stats.weights[1],
            },
            prog_bar=True,
        )

    def configure_optimizers(self) -> Any:
        base = torch.optim.SGD(self.student.parameters(), lr=self.hparams.lr, momentum=0.9)
        opt = MultiObjectiveOptimizer(base, self.hparams.method, max_norm=self.hparams.max_norm)
        steps = self.trainer.estimated_stepping_batches
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, int(steps)))
        return {"optimizer": opt, "lr_scheduler": scheduler}


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
        "--precision", default="32-true", help="32-true, bf16-mixed or 16-mixed (fp16 on GPUs)"
    )
    parser.add_argument(
        "--max-norm",
        type=float,
        default=None,
        help="clip the balanced step to this norm (default: none, as the library's default)",
    )
    parser.add_argument("--devices", type=int, default=1, help="more than 1: strategy='ddp'")
    parser.add_argument("--train-limit", type=int, default=10000)
    parser.add_argument("--test-limit", type=int, default=2000)
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the trained teacher is cached"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/lightning"))
    parser.add_argument("--resume", type=Path, default=None, help="a checkpoint to resume from")
    parser.add_argument(
        "--quick", action="store_true", help="1024 training images, a 2-epoch teacher: a smoke test"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.train_limit, args.test_limit, args.teacher_epochs = 1024, 512, 2
    return args


def main(argv: Optional[Sequence[str]] = None) -> float:
    """Train and return the student's test accuracy."""
    args = parse(argv)
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
    pl.seed_everything(0, verbose=False)
    module = DistilledStudent(args.method, args.lr, args.accumulate, max_norm=args.max_norm)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        precision=args.precision,
        default_root_dir=args.out,
        callbacks=[pl.callbacks.ModelCheckpoint(dirpath=args.out, save_last=True)],
        log_every_n_steps=10,
        enable_progress_bar=not args.quick,
    )
    trainer.fit(module, loader, ckpt_path=args.resume)
    if torch.distributed.is_initialized():  # Lightning leaves a gloo group alive at exit
        torch.distributed.destroy_process_group()
    accuracy = evaluate(module.student.cpu(), data.x_test, data.y_test)
    if trainer.is_global_zero:
        print(
            f"teacher {teacher_accuracy:.4f}  student ({args.method}) {accuracy:.4f}  "
            f"steps {trainer.global_step}"
        )
    return accuracy


if __name__ == "__main__":
    main()
