"""examples/cifar100_kd.py and examples/cifar_models.py on the 20 real CIFAR-100 images that
ship with foolbox, written in torchvision's ``cifar-100-python`` layout (the same 20 images
serve as training and test split; the trainer reads them as it reads the real data set)."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mokd_optim.diagnostics import read_log

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "cifar100_kd.py"
TINY = ["-b", "4", "-j", "0", "--limit-val-steps", "2", "--no-progress", "--log-every", "1"]


@pytest.fixture(scope="module")
def trainer() -> Any:
    spec = importlib.util.spec_from_file_location("cifar100_kd", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import foolbox  # the imagenet-test extra (installed by `make test`)
    from PIL import Image

    files = sorted((Path(foolbox.__file__).parent / "data").glob("cifar100_*.png"))
    assert len(files) == 20
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    labels = [int(f.stem.split("_")[-1]) for f in files]
    folder = tmp_path_factory.mktemp("cifar") / "cifar-100-python"
    folder.mkdir()
    entry = {"data": images.transpose(0, 3, 1, 2).reshape(20, -1), "fine_labels": labels}
    for split in ("train", "test"):
        (folder / split).write_bytes(pickle.dumps(entry))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    return folder.parent


def test_architectures_match_the_benchmark_definitions() -> None:
    """Parameter counts usually reported for the benchmark and the reference definitions' state-dict keys."""
    from examples import cifar_models

    counts = {
        "resnet8x4": 1.23,
        "resnet32x4": 7.43,
        "resnet56": 0.86,
        "resnet20": 0.28,
        "wrn_40_2": 2.26,
        "wrn_16_2": 0.70,
        "wrn_40_1": 0.57,
        "vgg13": 9.46,
        "vgg8": 3.97,
        "MobileNetV2": 0.81,
    }
    shapes = {
        "resnet8x4": {"layer1.0.downsample.0.weight": (64, 32, 1, 1), "fc.weight": (100, 256)},
        "wrn_40_2": {"block1.layer.0.convShortcut.weight": (32, 16, 1, 1), "bn1.weight": (128,)},
        "vgg13": {"block0.3.weight": (64, 64, 3, 3), "block0.4.running_var": (64,)},
        "vgg8": {"block4.1.weight": (512,), "classifier.weight": (100, 512)},
        "MobileNetV2": {
            "blocks.0.0.conv.0.weight": (16, 16, 1, 1),
            "blocks.6.0.conv.7.weight": (160,),
            "conv2.0.weight": (1280, 160, 1, 1),
            "classifier.0.weight": (100, 1280),
        },
    }
    x = torch.randn(2, 3, 32, 32)
    for name, millions in counts.items():
        model = cifar_models.build(name, 100)
        assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == millions, name
        state = model.state_dict()
        for key, shape in shapes.get(name, {}).items():
            assert tuple(state[key].shape) == shape, (name, key)
        if name in ("resnet8x4", "MobileNetV2", "vgg8"):
            assert model.eval()(x).shape == (2, 100)
    with pytest.raises(ValueError, match="unknown CIFAR model 'resnet9'.*resnet8x4"):
        cifar_models.build("resnet9")


def test_teacher_training_then_kd_runs_resume_exactly(
    trainer: Any, cifar_root: Path, tmp_path: Path
) -> None:
    teacher_run = trainer.main(
        [
            "--data-path",
            str(cifar_root),
            "--train-teacher",
            "--teacher",
            "resnet8",
            "--epochs",
            "1",
            "--limit-steps",
            "2",
            *TINY,
            "--output-dir",
            str(tmp_path / "teacher"),
        ]
    )
    assert teacher_run["mode"] == "train-teacher" and teacher_run["student"] == "resnet8"
    assert teacher_run["objectives"] == ["task"] and teacher_run["history"][0]["val/images"] == 8
    assert teacher_run["lr"] == 0.05
    # a published-style checkpoint: {"model": state_dict, "epoch": ..., "accuracy": ...}
    checkpoint = tmp_path / "ckpt_epoch_240.pth"
    state = torch.load(tmp_path / "teacher" / "student.pt", weights_only=True)
    torch.save({"model": state, "epoch": 240, "accuracy": 0.0}, checkpoint)

    common = [
        "--data-path",
        str(cifar_root),
        "--teacher",
        "resnet8",
        "--teacher-weights",
        str(checkpoint),
        "--student",
        "resnet8",
        "--method",
        "mokd",
        "--heads",
        "layer3:layer3",
        "--epochs",
        "2",
        "--limit-steps",
        "2",
        "--lr-steps",
        "1",
        *TINY,
    ]
    straight = trainer.main([*common, "--output-dir", str(tmp_path / "straight")])
    # the teacher loaded from the checkpoint scores what its own run reported
    assert straight["teacher_val"]["top1"] == pytest.approx(teacher_run["final_top1"])
    trainer.main([*common, "--output-dir", str(tmp_path / "resumed"), "--stop-after", "3"])
    resumed = trainer.main([*common, "--output-dir", str(tmp_path / "resumed"), "--resume", "auto"])
    assert straight["completed"] and resumed["completed"] and straight["steps"] == 4
    assert straight["objectives"] == ["task", "kd", "feat"]
    a = torch.load(tmp_path / "straight" / "student.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "student.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "straight" / "train_log.csv").read_text() == (
        tmp_path / "resumed" / "train_log.csv"
    ).read_text()
    log = read_log(tmp_path / "straight" / "train_log.csv")
    assert log["lr"] == pytest.approx([0.05, 0.05, 0.005, 0.005])  # x0.1 at epoch 1
    assert all(v == v for v in log["weight/kd"])


def test_fixed_weight_dkd_baseline_with_warmup(
    trainer: Any, cifar_root: Path, tmp_path: Path
) -> None:
    def run(*extra: str) -> tuple[dict, dict]:
        out = tmp_path / f"dkd{len(extra)}"
        args = ["--data-path", str(cifar_root), "--teacher", "resnet8", "--teacher-weights"]
        args += ["random", "--student", "MobileNetV2", "--method", "kd", "--logit-loss", "dkd"]
        args += ["--epochs", "1", "--limit-steps", "1", "--skip-teacher-eval", *TINY, *extra]
        summary = trainer.main([*args, "--output-dir", str(out)])
        return summary, read_log(out / "train_log.csv")

    summary, log = run()
    assert summary["lr"] == 0.01  # the benchmark's rate for MobileNetV2 students
    assert summary["fixed_weights"] == {"task": 1.0, "kd": 1.0, "feat": 1.0}
    assert log["weight/task"] == [1.0] and log["weight/kd"] == [1.0]
    # DKD's linear warm-up: epoch 1 of 20 scales the DKD term by 1/20
    _, unscaled = run("--kd-warmup-epochs", "0")
    assert log["loss/kd"][0] == pytest.approx(unscaled["loss/kd"][0] / 20, rel=1e-5)
    assert log["loss/task"] == pytest.approx(unscaled["loss/task"], rel=1e-6)


def test_clear_errors(trainer: Any, cifar_root: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--teacher-weights is required"):
        trainer.main(["--data-path", str(cifar_root), *TINY, "--output-dir", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="cifar-100-python.*--download"):
        trainer.main(["--data-path", str(tmp_path), "--method", "ce", *TINY])
    with pytest.raises(ValueError, match="does not fit resnet8x4"):
        trainer.build_model("resnet8x4", str(_save(tmp_path, "resnet8")), 100)


def _save(folder: Path, name: str) -> Path:
    from examples import cifar_models

    path = folder / f"{name}.pth"
    torch.save(cifar_models.build(name).state_dict(), path)
    return path


def test_representation_strategy_at_the_tapped_stage(
    trainer: Any, cifar_root: Path, tmp_path: Path
) -> None:
    common = ["--data-path", str(cifar_root), "--teacher", "resnet8", "--teacher-weights"]
    common += ["random", "--student", "resnet8", "--method", "mokd", "--heads", "layer3:layer3"]
    common += ["--strategy", "representation", "--epochs", "1", "--limit-steps", "1"]
    common += ["--skip-teacher-eval", *TINY]
    summary = trainer.main([*common, "--representation", "layer3", "--output-dir", str(tmp_path)])
    log = read_log(tmp_path / "train_log.csv")
    weights = [log[f"weight/{name}"][0] for name in summary["objectives"]]
    assert summary["objectives"] == ["task", "kd", "feat"] and all(w == w for w in weights)
    # at the logits (the default) the feature objective has no gradient: a clear error
    with pytest.raises(Exception, match="feat.*does not depend on the tensors passed as features"):
        trainer.main([*common, "--output-dir", str(tmp_path / "logits")])
