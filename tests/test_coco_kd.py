"""examples/coco_kd.py end to end on a tiny COCO-format detection set made of real images.

Each 96 x 128 canvas holds one to three Fashion-MNIST items on a 3 x 4 grid; an item's box is
the tight box of its pixels, its category its class (ids 1-10). 16 training and 8 validation
canvases; torchvision Faster R-CNNs at min size 96 / max size 128; the ResNet-50-FPN teacher
is explicitly untrained (``--teacher-weights random``): the point is the pipeline (objectives,
balancing, COCOeval, logs, exact resume), not the accuracy.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mokd_optim.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist
from mokd_optim.diagnostics import read_log

ROOT = Path(__file__).resolve().parents[1]
COCO_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


@pytest.fixture(scope="module")
def trainer() -> Any:
    spec = importlib.util.spec_from_file_location("coco_kd", ROOT / "examples" / "coco_kd.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    from PIL import Image

    root = tmp_path_factory.mktemp("coco")
    items, labels = load_fashion_mnist("train", limit=100)
    rng = np.random.default_rng(0)
    cursor = 0
    for split, count in (("train", 16), ("val", 8)):
        images, annotations = [], []
        (root / split).mkdir()
        for index in range(count):
            canvas = np.full((96, 128, 3), 20, dtype=np.uint8)
            for cell in rng.choice(12, size=int(rng.integers(1, 4)), replace=False):
                top = int(cell) // 4 * 32 + int(rng.integers(0, 4))
                left = int(cell) % 4 * 32 + int(rng.integers(0, 4))
                item = items[cursor].numpy()
                canvas[top : top + 28, left : left + 28] = np.maximum(
                    canvas[top : top + 28, left : left + 28], item[:, :, None]
                )
                rows, cols = np.nonzero(item.max(1) > 30)[0], np.nonzero(item.max(0) > 30)[0]
                box = [
                    float(left + cols[0]),
                    float(top + rows[0]),
                    float(cols[-1] - cols[0] + 1),
                    float(rows[-1] - rows[0] + 1),
                ]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": index + 1,
                        "category_id": int(labels[cursor]) + 1,
                        "bbox": box,
                        "area": box[2] * box[3],
                        "iscrowd": 0,
                    }
                )
                cursor += 1
            Image.fromarray(canvas).save(root / split / f"{index:04d}.png")
            images.append(
                {"id": index + 1, "file_name": f"{index:04d}.png", "height": 96, "width": 128}
            )
        categories = [{"id": k + 1, "name": name} for k, name in enumerate(FASHION_MNIST_CLASSES)]
        (root / f"{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )
    return [
        "--train-images",
        str(root / "train"),
        "--train-annotations",
        str(root / "train.json"),
        "--val-images",
        str(root / "val"),
        "--val-annotations",
        str(root / "val.json"),
        "--min-size",
        "96",
        "--max-size",
        "128",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--no-progress",
        "--log-every",
        "1",
    ]


def test_dataset_boxes_and_seeded_flip(trainer: Any, coco_set: list[str]) -> None:
    data = trainer.CocoDetection(Path(coco_set[1]), Path(coco_set[3]), train=True, flip=1.0)
    image, target = data[0]
    assert image.shape == (3, 96, 128) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    boxes = target["boxes"]
    assert (
        boxes.shape[1] == 4
        and bool((boxes[:, 2:] > boxes[:, :2]).all())
        and 1 <= int(target["labels"].min()) <= 10
    )
    flipped, flipped_target = data[(0, 123)]  # flip probability 1: mirrored image and boxes
    assert torch.equal(flipped, image.flip(-1))
    assert torch.allclose(flipped_target["boxes"][:, [0, 2]], 128 - boxes[:, [2, 0]])


def test_mokd_detection_distillation_reports_cocoeval_and_resumes_exactly(
    trainer: Any, coco_set: list[str], tmp_path: Path
) -> None:
    common = [
        *coco_set,
        "--teacher-weights",
        "random",
        "--student",
        "resnet18_fpn",
        "--roi-kd-weight",
        "0.5",
        "--epochs",
        "1",
        "--limit-steps",
        "2",
    ]
    straight = trainer.main([*common, "--output-dir", str(tmp_path / "straight")])
    assert straight == json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert (
        straight["objectives"] == ["detection", "distill"]
        and straight["steps"] == 2
        and straight["completed"]
    )
    assert (
        straight["feature_pairs"] == [["0", "0"], ["1", "1"], ["2", "2"], ["3", "3"]]
        and straight["num_classes"] == 11
    )
    final = straight["final"]
    assert list(final) == COCO_KEYS and all(-1.0 <= value <= 1.0 for value in final.values())
    assert straight["history"][0]["val/images"] == 8.0
    log = read_log(tmp_path / "straight" / "train_log.csv")
    assert log["step"] == [0.0, 1.0]
    for column in (
        "loss/detection",
        "loss/distill",
        "weight/detection",
        "weight/distill",
        "cosine/detection|distill",
        "dominance",
        "det/loss_classifier",
        "det/loss_box_reg",
        "det/loss_objectness",
        "det/loss_rpn_box_reg",
        "feat/p0_to_p0",
        "feat/p3_to_p3",
        "roi_kd",
    ):
        assert column in log and all(v == v for v in log[column]), column
    # the distill objective is the mean feature loss over the 4 levels plus 0.5 x RoI KD
    for row in range(2):
        features = sum(log[f"feat/p{k}_to_p{k}"][row] for k in range(4)) / 4
        assert log["loss/distill"][row] == pytest.approx(
            features + 0.5 * log["roi_kd"][row], rel=1e-5
        )
        # the detection objective is the sum of torchvision's four losses
        parts = sum(
            log[f"det/{name}"][row]
            for name in ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
        )
        assert log["loss/detection"][row] == pytest.approx(parts, rel=1e-5)
    assert all(-1.0 <= c <= 1.0 for c in log["cosine/detection|distill"])
    assert set(read_log(tmp_path / "straight" / "eval_log.csv")) >= {
        "epoch",
        "val/AP",
        "val/AP50",
        "val/AP75",
        "val/APs",
        "val/APm",
        "val/APl",
    }

    stopped = trainer.main(
        [*common, "--output-dir", str(tmp_path / "resumed"), "--stop-after", "1"]
    )
    assert stopped["steps"] == 1 and not stopped["completed"]
    resumed = trainer.main([*common, "--output-dir", str(tmp_path / "resumed"), "--resume", "auto"])
    a = torch.load(tmp_path / "straight" / "student.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "student.pt", weights_only=True)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert (tmp_path / "straight" / "train_log.csv").read_text() == (
        tmp_path / "resumed" / "train_log.csv"
    ).read_text()
    assert resumed["final"] == final


def test_fixed_weights_mobilenet_student_bf16(
    trainer: Any, coco_set: list[str], tmp_path: Path
) -> None:
    summary = trainer.main(
        [
            *coco_set,
            "--teacher-weights",
            "random",
            "--student",
            "mobilenet_v3_large_fpn",
            "--method",
            "kd",
            "--distill-weight",
            "2.0",
            "--amp",
            "bf16",
            "--epochs",
            "1",
            "--limit-steps",
            "1",
            "--limit-val-steps",
            "1",
            "--output-dir",
            str(tmp_path),
        ]
    )
    # MobileNetV3-FPN levels have strides 16 and 32: matched to the teacher's levels 2 and 3
    assert summary["feature_pairs"] == [["0", "2"], ["1", "3"]]
    assert summary["history"][0]["val/images"] == 2.0 and all(
        -1.0 <= v <= 1.0 for v in summary["final"].values()
    )
    log = read_log(tmp_path / "train_log.csv")
    assert log["weight/detection"] == [1.0] and log["weight/distill"] == [2.0]
