"""Atomic checkpoints and exact resumption."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mokd_optim import MultiObjectiveOptimizer
from mokd_optim.checkpoint import (
    Progress,
    atomic_save,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from tests.models import TwoHeadMLP

ROOT = Path(__file__).resolve().parents[1]


def _worker(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tests.resume_worker", str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_killed_run_resumed_from_its_checkpoint_ends_bit_identical(tmp_path) -> None:
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    straight.mkdir()
    interrupted.mkdir()
    done = _worker(straight)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = _worker(interrupted, "--crash-after", "6")
    assert killed.returncode == -signal.SIGKILL
    assert not (interrupted / "final.pt").exists()
    assert torch.load(interrupted / "checkpoint.pt", weights_only=True)["progress"] == {
        "epoch": 1,
        "step": 6,
    }
    assert sorted(p.name for p in interrupted.iterdir()) == [
        "checkpoint.pt"
    ]  # no temporary file left

    resumed = _worker(interrupted, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = torch.load(straight / "final.pt", weights_only=True)
    actual = torch.load(interrupted / "final.pt", weights_only=True)
    for a, b in zip(expected["params"], actual["params"]):
        assert torch.equal(a, b)
    for key, value in expected["optimizer"]["optimizer"]["state"].items():
        for name, tensor in value.items():
            assert torch.equal(
                torch.as_tensor(tensor),
                torch.as_tensor(actual["optimizer"]["optimizer"]["state"][key][name]),
            )
    assert (
        expected["scale"] == actual["scale"]
        and expected["lr"] == actual["lr"]
        and expected["epoch"] == actual["epoch"]
    )


def test_rng_states_round_trip() -> None:
    state = capture_rng_state()
    first = (random.random(), float(np.random.rand()), torch.rand(2))
    restore_rng_state(state)
    second = (random.random(), float(np.random.rand()), torch.rand(2))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


def test_save_and_load_every_component(tmp_path) -> None:
    model, heads = TwoHeadMLP(), {"extra_head": nn.Linear(4, 2)}
    opt = MultiObjectiveOptimizer(
        torch.optim.AdamW([*model.parameters(), *heads["extra_head"].parameters()], lr=0.1), "mokd"
    )
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    for p in [*model.parameters(), *heads["extra_head"].parameters()]:
        p.grad = torch.ones_like(p)
    opt.step()
    scheduler.step()
    path = tmp_path / "sub" / "ckpt.pt"
    assert (
        save_checkpoint(
            path,
            model=model,
            modules=heads,
            optimizer=opt,
            scheduler=scheduler,
            scaler=scaler,
            epoch=3,
            step=42,
            extra={"best": 0.9},
        )
        == path
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o644

    torch.manual_seed(1)
    model2, heads2 = TwoHeadMLP(), {"extra_head": nn.Linear(4, 2)}
    opt2 = MultiObjectiveOptimizer(
        torch.optim.AdamW([*model2.parameters(), *heads2["extra_head"].parameters()], lr=0.1),
        "mokd",
    )
    scheduler2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    scaler2 = torch.amp.GradScaler("cpu")
    progress = load_checkpoint(
        path, model=model2, modules=heads2, optimizer=opt2, scheduler=scheduler2, scaler=scaler2
    )
    assert progress == Progress(epoch=3, step=42, extra={"best": 0.9})
    for a, b in zip(
        [*model.parameters(), *heads["extra_head"].parameters()],
        [*model2.parameters(), *heads2["extra_head"].parameters()],
    ):
        assert torch.equal(a, b)
    assert scheduler2.get_last_lr() == scheduler.get_last_lr() and scaler2.get_scale() == 8.0
    assert torch.equal(
        opt2.state[next(model2.parameters())]["exp_avg"],
        opt.state[next(model.parameters())]["exp_avg"],
    )


def test_compiled_or_wrapped_model_saves_plain_keys(tmp_path) -> None:
    model = TwoHeadMLP()
    compiled = torch.compile(model)  # wrapping only; nothing is compiled until it is called
    save_checkpoint(tmp_path / "c.pt", model=compiled)
    keys = list(torch.load(tmp_path / "c.pt", weights_only=True)["model"])
    assert keys and all(not k.startswith(("_orig_mod.", "module.")) for k in keys)
    plain = TwoHeadMLP()
    load_checkpoint(tmp_path / "c.pt", model=nn.DataParallel(plain))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters()))


def test_failed_write_keeps_the_previous_checkpoint_and_leaves_no_temporary(tmp_path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model=TwoHeadMLP(), step=1)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - pickling a lambda fails inside torch.save
        save_checkpoint(path, model=TwoHeadMLP(), step=2, extra={"bad": lambda: None})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


class _Custom:
    pass


def test_load_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    atomic_save(
        {"format": 1, "progress": {"epoch": 0, "step": 0}, "rng": [], "extra": {"obj": _Custom()}},
        tmp_path / "custom.pt",
    )
    with pytest.raises(RuntimeError, match="weights_only=False"):
        load_checkpoint(tmp_path / "custom.pt")
    assert load_checkpoint(tmp_path / "custom.pt", weights_only=False, restore_rng=False).step == 0
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a mokd_optim checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    save_checkpoint(tmp_path / "model_only.pt", model=TwoHeadMLP())
    scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(ValueError, match="scaler"):
        load_checkpoint(tmp_path / "model_only.pt", scaler=scaler)
    with pytest.raises(ValueError, match=">= 0"):
        save_checkpoint(tmp_path / "bad.pt", step=-1)
