"""examples/digits_stack.py runs with the stack's flags (the commands of docs/*.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from mokd_optim.diagnostics import read_log

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits_stack.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("digits_stack", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bf16_accumulation_checkpoint_and_resume(example, tmp_path) -> None:
    checkpoint, output = tmp_path / "ckpt.pt", tmp_path / "run"
    common = [
        "--amp",
        "bf16",
        "--accumulate",
        "2",
        "--checkpoint",
        str(checkpoint),
        "--save-every",
        "3",
        "--output",
        str(output),
        "--log-every",
        "1",
    ]
    accuracy = example.main([*common, "--max-steps", "6"])
    assert 0.0 <= accuracy <= 1.0
    assert torch.load(checkpoint, weights_only=True)["progress"]["step"] == 6
    example.main([*common, "--max-steps", "9"])  # resumes at step 6
    assert read_log(output / "log.csv")["step"] == [float(s) for s in range(9)]
    assert (output / "curves.png").stat().st_size > 10_000


def test_fp16_scaler_and_compile_flags(example) -> None:
    accuracy = example.main(["--amp", "fp16", "--compile", "--max-steps", "3"])
    assert 0.0 <= accuracy <= 1.0
