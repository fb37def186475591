"""The two code blocks of docs/frameworks.md run as written, on a tiny student and loader."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")
pytest.importorskip("accelerate")

from accelerate.state import AcceleratorState, GradientState  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "frameworks.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)


def _data() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 8, 8, generator=generator)
    y = torch.randint(0, 10, (64,), generator=generator)
    teacher = 3 * torch.randn(64, 10, generator=generator)
    return DataLoader(TensorDataset(x, y, teacher), batch_size=8)


def _student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))


def test_the_docs_have_one_block_per_framework() -> None:
    blocks = _blocks()
    assert len(blocks) == 2
    assert "balanced_step" in blocks[0] and "balanced_backward" in blocks[1]


def test_lightning_block_trains() -> None:
    namespace: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(_blocks()[0], str(DOC), "exec"), namespace)
        assert isinstance(namespace["trainer"], pl.Trainer)  # the DDP/bf16 trainer is built
        student = _student()
        before = [p.detach().clone() for p in student.parameters()]
        module = namespace["Distill"](student, accumulate=2)
        fit = pl.Trainer(
            accelerator="cpu",
            max_steps=3,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        fit.fit(module, _data())
    assert fit.global_step == 3
    assert all(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_accelerate_block_trains() -> None:
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    student = _student()
    before = [p.detach().clone() for p in student.parameters()]
    namespace: dict[str, Any] = {"student": student, "loader": _data()}
    try:
        exec(compile(_blocks()[1], str(DOC), "exec"), namespace)
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    stats = namespace["stats"]  # the closing micro-batch of the last window
    assert stats is not None and stats.names == ("task", "kd")
    assert all(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
