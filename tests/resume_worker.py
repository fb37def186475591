"""A small training script for the kill-and-resume test (not a test module itself).

``python -m tests.resume_worker OUT_DIR [--crash-after N] [--resume]`` trains for ``STEPS``
optimizer steps and writes ``OUT_DIR/final.pt``. Every source of randomness a real trainer
has is used: dropout (torch), the epoch's shuffling order (torch), input noise (NumPy) and a
noise amplitude (Python ``random``). A checkpoint is written every ``SAVE_EVERY`` steps; with
``--crash-after N`` the process kills itself with SIGKILL right after the checkpoint of step N.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mokd_optim import MultiObjectiveOptimizer
from mokd_optim.checkpoint import load_checkpoint, save_checkpoint
from tests.models import kd_kl

STEPS = 10
SAVE_EVERY = 3
BATCH = 24
SAMPLES = 96


class Student(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(32, 32),
            nn.Tanh(),
        )
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.trunk(x)
        return self.classifier(features), features


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--crash-after", type=int, default=-1)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    out = Path(args.out_dir)
    checkpoint = out / "checkpoint.pt"
    torch.set_num_threads(1)
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)

    data = torch.Generator().manual_seed(123)
    inputs = torch.rand(SAMPLES, 1, 8, 8, generator=data)
    labels = torch.randint(0, 10, (SAMPLES,), generator=data)
    teacher_logits = 3 * torch.randn(SAMPLES, 10, generator=data)
    feature_targets = torch.randn(SAMPLES, 48, generator=data)

    student, projector = Student(), nn.Linear(32, 48)
    base = torch.optim.AdamW(
        [*student.parameters(), *projector.parameters()], lr=1e-2, weight_decay=0.01
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=2)
    opt = MultiObjectiveOptimizer(base, "mokd", max_norm=5.0, scaler=scaler)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-2, total_steps=STEPS)

    epoch, step, order, start = 0, 0, None, 0
    if args.resume and checkpoint.exists():
        progress = load_checkpoint(
            checkpoint,
            model=student,
            modules={"projector": projector},
            optimizer=opt,
            scheduler=scheduler,
            scaler=scaler,
        )
        epoch, step = progress.epoch, progress.step
        order, start = progress.extra["order"], int(progress.extra["batch"])

    while step < STEPS:
        if order is None:
            order = torch.randperm(SAMPLES)
        for index in range(start, SAMPLES // BATCH):
            rows = order[index * BATCH : (index + 1) * BATCH]
            noise = torch.from_numpy(np.random.randn(BATCH, 1, 8, 8).astype(np.float32))
            x = inputs[rows] + 0.05 * random.random() * noise
            logits, features = student(x)
            losses = {
                "task": F.cross_entropy(logits, labels[rows]),
                "kd": kd_kl(logits, teacher_logits[rows]),
                "feat": F.smooth_l1_loss(projector(features), feature_targets[rows]),
            }
            opt.zero_grad()
            opt.backward(losses)
            scaler.step(opt)
            scaler.update()
            scheduler.step()
            step += 1
            if step % SAVE_EVERY == 0:
                save_checkpoint(
                    checkpoint,
                    model=student,
                    modules={"projector": projector},
                    optimizer=opt,
                    scheduler=scheduler,
                    scaler=scaler,
                    epoch=epoch,
                    step=step,
                    extra={"order": order, "batch": index + 1},
                )
                if step == args.crash_after:
                    os.kill(os.getpid(), signal.SIGKILL)
            if step == STEPS:
                break
        epoch, order, start = epoch + 1, None, 0

    torch.save(
        {
            "params": [p.detach() for p in [*student.parameters(), *projector.parameters()]],
            "optimizer": opt.state_dict(),
            "scale": scaler.get_scale(),
            "lr": scheduler.get_last_lr(),
            "epoch": epoch,
        },
        out / "final.pt",
    )


if __name__ == "__main__":
    main()
