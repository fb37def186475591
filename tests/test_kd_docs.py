"""Every ``python`` code block of docs/kd.md runs, in order, and does what the text says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

DOC = Path(__file__).resolve().parents[1] / "docs" / "kd.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_kd_doc_code_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) == 4
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)
    losses = namespace["losses"]
    assert list(losses) == ["task", "kd", "feat"]
    assert all(torch.isfinite(value) for value in losses.values())
    stats = namespace["stats"]
    assert stats.names == ("task", "kd", "feat") and torch.isfinite(stats.weights).all()
    # The exported weights load into a fresh resnet18 and reproduce the student's outputs.
    fresh = resnet18(num_classes=10)
    fresh.load_state_dict(torch.load(tmp_path / "student.pt"))
    student, x = namespace["student"], namespace["x"]
    fresh.eval()
    student.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), student(x))
    # the BatchNorm example: running statistics spoilt on purpose are recomputed from the
    # loader's images with the final weights (each BatchNorm's mean over one pass, as a fresh
    # model with cumulative statistics computes it), and the student is left in eval mode
    import copy

    student.bn1.running_mean.fill_(100.0)
    reference = copy.deepcopy(student)
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    reference.train()
    with torch.no_grad():
        reference(x)
    exec(compile(blocks[1], str(DOC), "exec"), namespace)
    assert not student.training
    torch.testing.assert_close(student.bn1.running_mean, reference.bn1.running_mean)
    torch.testing.assert_close(
        student.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var
    )
    # the TeacherTrust example: three updates, the record handed to the method each step
    trust_example: dict[str, object] = {}
    exec(compile(blocks[2], str(DOC), "exec"), trust_example)
    trust = trust_example["trust"]
    assert trust.updates == 3 and 0.0 < trust.value < 1.0
    assert trust.teacher_only + trust.student_only > 0  # two random linear models disagree
    assert trust_example["trusted_opt"].method.trust == trust.value
    exec(compile(blocks[3], str(DOC), "exec"), namespace)  # the recorder example
    features = namespace["features"]
    assert features["layer2"].shape == (8, 128, 4, 4) and features["layer3"].shape == (8, 256, 2, 2)
    assert all(
        len(m._forward_hooks) == 1 for m in (student.layer2, student.layer3)
    )  # the distiller's own
