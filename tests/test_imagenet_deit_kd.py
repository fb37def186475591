"""examples/imagenet_deit_kd.py (DeiT's recipe from timm's parts) end to end on CPU.

Data: a tiny ImageFolder of real Fashion-MNIST images (10 classes, 4 training and 2 validation
images each), read as the trainer reads ImageNet. Models are random-init timm models at 32 px
(``deit_tiny_distilled_patch16_224`` with ``img_size=32``: 4 patches + class and distillation
tokens; a ``regnety_002`` teacher); nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("timm")

from mokd_optim.datasets import load_fashion_mnist
from mokd_optim.diagnostics import read_log

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "imagenet_deit_kd.py"
TINY = ["--input-size", "32", "--batch-size", "8", "--workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def trainer() -> Any:
    spec = importlib.util.spec_from_file_location("imagenet_deit_kd", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("deit_folder")
    images, labels = load_fashion_mnist("train", limit=300)
    counts: dict[int, int] = {}
    for image, label in zip(images, labels.tolist()):
        n = counts.get(label, 0)
        if n == 6:
            continue
        folder = root / ("train" if n < 4 else "val") / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.numpy()).save(folder / f"{n}.png")
        counts[label] = n + 1
    assert sorted(counts.values()) == [6] * 10
    return root


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init regnety_002 state dict with 10 classes (a 'published checkpoint')."""
    import timm

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("teacher") / "regnety_002.pth"
    torch.save({"model": timm.create_model("regnety_002", num_classes=10).state_dict()}, path)
    return path


def test_distillation_token_objective_and_mixed_targets(trainer: Any, teacher_file: Path) -> None:
    """Mixup gives the task loss soft targets; the KD loss reads the distillation-token head
    against the teacher run on the same mixed images."""
    import numpy as np
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    from mokd_optim.kd import Distiller

    torch.manual_seed(0)
    np.random.seed(0)
    student, _, _ = trainer.build_model(
        "deit_tiny_distilled_patch16_224", None, 10, 32, drop_path=0.0
    )
    teacher, t_mean, t_std = trainer.build_model("regnety_002", str(teacher_file), 10, 32)
    assert (t_mean, t_std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    wrapped = trainer.DistilledTokens(student)
    criterion = SoftTargetCrossEntropy()
    distiller = Distiller(
        wrapped,
        teacher,
        task_loss=lambda out, y: criterion(trainer.class_logits(out), y),
        logit_loss=lambda out, t, y=None: trainer.hard_distillation(
            trainer.distillation_logits(out), t
        ),
    )
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=10)
    images = torch.randn(4, 3, 32, 32)
    targets = torch.tensor([0, 1, 2, 3])
    clean = images.clone()  # timm's Mixup mixes in place
    output, losses, mixed, soft = trainer.distiller_losses(distiller, mixup, images, targets)
    assert output.shape == (4, 2, 10) and set(losses) == {"task", "kd"}
    assert soft.shape == (4, 10) and torch.allclose(soft.sum(1), torch.ones(4))
    assert int((soft > 0.05).sum(1).min()) >= 2  # every row mixes two labels
    # smoothed one-hot: 0.91 on the label, 0.01 elsewhere; row 0 mixes labels 0 and 3
    lam = (float(soft[0, 0]) - 0.01) / 0.9
    assert 0.0 < lam < 1.0 and soft[0, 3] == pytest.approx(lam * 0.01 + (1 - lam) * 0.91)
    assert torch.allclose(mixed, lam * clean + (1 - lam) * clean.flip(0), atol=1e-5)
    images = clean
    with torch.no_grad():
        distiller.eval()
        teacher_on_mixed = teacher(mixed).argmax(1)
        teacher_on_clean = teacher(images).argmax(1)
    cls, dist_head = output[:, 0], output[:, 1]
    assert float(losses["task"].detach()) == pytest.approx(
        float(criterion(cls, soft).detach()), rel=1e-5
    )
    expected = torch.nn.functional.cross_entropy(dist_head, teacher_on_mixed)
    assert float(losses["kd"].detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    if not torch.equal(teacher_on_mixed, teacher_on_clean):  # the clean-image target differs
        other = torch.nn.functional.cross_entropy(dist_head, teacher_on_clean)
        assert float(other.detach()) != pytest.approx(float(losses["kd"].detach()))
    # evaluation averages the two heads (DeiT's rule)
    student.eval()
    with torch.no_grad():
        tokens = student.forward_features(images)
        average = (student.head(tokens[:, 0]) + student.head_dist(tokens[:, 1])) / 2
        assert torch.allclose(wrapped(images), average, atol=1e-6)


def test_model_files_load_through_timm(trainer: Any, teacher_file: Path, tmp_path: Path) -> None:
    """A ``{"model": ...}`` checkpoint loads exactly; a 224 px DeiT file fits a 32 px student
    (timm resamples the position embedding); a torchvision-only name goes to torchvision."""
    import timm

    teacher, _, _ = trainer.build_model("regnety_002", str(teacher_file), 10, 32)
    saved = torch.load(teacher_file, weights_only=True)["model"]
    assert all(torch.equal(saved[k], v) for k, v in teacher.state_dict().items())
    with pytest.raises(ValueError, match="does not fit regnety_002"):
        trainer.build_model("regnety_002", str(teacher_file), 100, 32)
    full = timm.create_model("deit_tiny_distilled_patch16_224", num_classes=10)
    torch.save(full.state_dict(), tmp_path / "deit.pth")
    small, _, _ = trainer.build_model(
        "deit_tiny_distilled_patch16_224", str(tmp_path / "deit.pth"), 10, 32
    )
    assert small.pos_embed.shape == (1, 2 + 4, 192)
    assert torch.equal(small.blocks[3].mlp.fc1.weight, full.blocks[3].mlp.fc1.weight)
    torchvision_only, _, _ = trainer.build_model("mobilenet_v2", None, 10, 32)
    assert type(torchvision_only).__module__.startswith("torchvision.")


def test_repeated_augmentation_sampler(trainer: Any) -> None:
    """timm's RepeatAugSampler order, a different seed for each copy, resumable."""
    whole = trainer.RepeatedAugmentationSampler(40, seed=3)
    whole.set_epoch(1)
    items = list(whole)
    assert len(items) == len(whole) == 40  # one epoch keeps len(dataset) samples
    indices = [i for i, _ in items]
    assert all(indices[k] == indices[k + 1] == indices[k + 2] for k in range(0, 39, 3))
    assert len({seed for _, seed in items}) == 40  # the copies are augmented differently
    whole.set_epoch(1, start=7)
    assert list(whole) == items[7:] and len(whole) == 33
    ranks = [trainer.RepeatedAugmentationSampler(40, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(1)
    first, second = (list(sampler) for sampler in ranks)
    assert first[0][0] == second[0][0] and first[0][1] != second[0][1]  # copies across ranks


def test_token_head_selects_tokens_and_maps(trainer: Any) -> None:
    tokens = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)  # 2 prefix + 2x2 patches
    head = trainer.TokenHead(3, 3, token=1, prefix_tokens=2)
    assert torch.equal(head.select(tokens), tokens[:, 1])
    as_map = trainer.TokenHead(3, 3, token="map", prefix_tokens=2).select(tokens)
    assert as_map.shape == (2, 3, 2, 2) and torch.equal(as_map[:, :, 1, 0], tokens[:, 4])
    mean = trainer.TokenHead(3, 3, token="mean", prefix_tokens=2).select(tokens)
    assert torch.equal(mean, tokens[:, 2:].mean(1))
    # a token against a teacher map: the map is pooled
    s, t = head(tokens, torch.ones(2, 3, 7, 7))
    assert s.shape == t.shape == (2, 3) and torch.equal(t, torch.ones(2, 3))


def test_deit_recipe_mokd_resumes_exactly(
    trainer: Any, image_folder: Path, teacher_file: Path, tmp_path: Path
) -> None:
    common = [
        "--data-path",
        str(image_folder),
        "--teacher",
        "regnety_002",
        "--teacher-weights",
        str(teacher_file),
        "--method",
        "mokd",
        "--heads",
        "norm:head.global_pool",
        "--head-orthogonal",
        "--epochs",
        "2",
        "--limit-steps",
        "2",
        "--limit-val-steps",
        "1",
        "--lr-warmup-epochs",
        "1",
        "--log-every",
        "1",
        *TINY,
    ]
    straight = trainer.main([*common, "--output-dir", str(tmp_path / "straight")])
    stopped = trainer.main(
        [*common, "--output-dir", str(tmp_path / "resumed"), "--stop-after", "3"]
    )
    assert not stopped["completed"] and stopped["steps"] == 3
    resumed = trainer.main([*common, "--output-dir", str(tmp_path / "resumed"), "--resume", "auto"])
    assert straight["completed"] and resumed["completed"]
    assert straight["objectives"] == ["task", "kd", "feat"] and straight["distillation_token"]
    assert straight["steps_per_epoch"] == 2 and straight["steps"] == 4
    assert straight["lr"] == pytest.approx(5e-4 * 8 / 512)
    assert (
        straight["head_params"] == 192 * 368 + 368
    )  # dist token (192) -> pooled regnety_002 (368)
    a = torch.load(tmp_path / "straight" / "student.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "student.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ckpt_a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["modules"]
    ckpt_b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["modules"]
    for name in ("heads", "ema"):
        assert all(torch.equal(ckpt_a[name][k], ckpt_b[name][k]) for k in ckpt_a[name])
    assert (tmp_path / "straight" / "train_log.csv").read_text() == (
        tmp_path / "resumed" / "train_log.csv"
    ).read_text()
    log = read_log(tmp_path / "straight" / "train_log.csv")
    assert log["step"] == [0.0, 1.0, 2.0, 3.0]
    for column in ("loss/task", "loss/kd", "loss/feat", "weight/kd", "cosine/task|kd"):
        assert column in log and all(v == v for v in log[column]), column
    # a warm-up epoch at 1e-6, then timm's cosine (t_initial 2 epochs, floor 1e-5) at epoch 1:
    # min + (lr - min) (1 + cos(pi / 2)) / 2, per epoch as DeiT steps it
    expected = 1e-5 + 0.5 * (straight["lr"] - 1e-5)
    assert log["lr"] == pytest.approx([1e-6, 1e-6, expected, expected], rel=1e-6)
    history = straight["history"][-1]
    assert {"val/top1", "val/ema_top1"} <= set(history)


def test_fixed_weight_kd_without_mixup_and_torchvision_recipe(
    trainer: Any, image_folder: Path, teacher_file: Path, tmp_path: Path, capsys: Any
) -> None:
    summary = trainer.main(
        [
            "--data-path",
            str(image_folder),
            "--student",
            "deit_tiny_patch16_224",
            "--teacher",
            "regnety_002",
            "--teacher-weights",
            str(teacher_file),
            "--method",
            "kd",
            "--logit-loss",
            "kd",
            "--mixup",
            "0",
            "--cutmix",
            "0",
            "--no-repeated-aug",
            "--no-model-ema",
            "--epochs",
            "1",
            "--limit-steps",
            "2",
            "--limit-val-steps",
            "1",
            "--skip-teacher-eval",
            "--log-every",
            "1",
            *TINY,
            "--output-dir",
            str(tmp_path / "kd"),
        ]
    )
    assert not summary["distillation_token"] and summary["objectives"] == ["task", "kd"]
    log = read_log(tmp_path / "kd" / "train_log.csv")
    assert log["weight/task"] == [0.5, 0.5] and log["weight/kd"] == [0.5, 0.5]
    # the representation strategy at the final tokens, channels-last (bf16 autocast of the
    # shared step is covered by test_imagenet_kd; on CPU it costs seconds here)
    fast = trainer.main(
        [
            "--data-path",
            str(image_folder),
            "--teacher",
            "regnety_002",
            "--teacher-weights",
            str(teacher_file),
            "--strategy",
            "representation",
            "--channels-last",
            "--epochs",
            "1",
            "--limit-steps",
            "1",
            "--limit-val-steps",
            "1",
            "--skip-teacher-eval",
            "--log-every",
            "1",
            *TINY,
            "--output-dir",
            str(tmp_path / "representation"),
        ]
    )
    log = read_log(tmp_path / "representation" / "train_log.csv")
    assert fast["objectives"] == ["task", "kd"]
    assert all(0.0 <= log[f"weight/{n}"][0] < float("inf") for n in ("task", "kd"))
    evaluated = trainer.main(
        [
            "--data-path",
            str(image_folder),
            "--teacher",
            "regnety_002",
            "--teacher-weights",
            str(teacher_file),
            "--evaluate-teacher",
            "--limit-val-steps",
            "1",
            *TINY,
            "--output-dir",
            str(tmp_path / "teacher"),
        ]
    )
    assert evaluated["mode"] == "evaluate-teacher" and evaluated["val"]["images"] == 8
    assert evaluated["teacher_mean_std"][0] == pytest.approx([0.485, 0.456, 0.406])
    # --recipe torchvision hands the other arguments to imagenet_kd.py
    # (imagenet_kd.py's parser refuses a missing --teacher-weights: exit code 2, the message on
    # stderr)
    with pytest.raises(SystemExit) as refused:
        trainer.main(["--recipe", "torchvision", "--data-path", str(image_folder), *TINY[2:]])
    assert refused.value.code == 2
    assert "--teacher-weights is required" in capsys.readouterr().err
