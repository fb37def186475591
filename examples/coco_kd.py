"""COCO detection distillation: Faster R-CNN teacher -> smaller Faster R-CNN student.

One file, in the manner of torchvision's ``references/detection``. The student is a
torchvision Faster R-CNN with a ResNet-FPN (``resnet18_fpn``, ``resnet34_fpn``, ...) or
MobileNetV3-Large-FPN backbone; the teacher a Faster R-CNN ResNet-50-FPN, frozen and never
wrapped in DDP. Two objectives are balanced by :class:`mokd_optim.MultiObjectiveOptimizer`:

- ``detection``: the sum of torchvision's four detection losses (RPN objectness and box
  regression, RoI classification and box regression);
- ``distill``: feature distillation of the FPN levels through one
  :class:`~mokd_optim.kd.SubspaceHead` per level (student level -> teacher level of the same
  stride; the teacher side LayerNorm-ed, smooth-L1), plus, with ``--roi-kd-weight``, Hinton KD
  between the student's and the teacher's RoI-head class logits on the student's sampled
  proposals.

Each model normalises its own input (``GeneralizedRCNNTransform``), so teachers and students
trained with different statistics are handled; both resize with the same ``--min-size`` /
``--max-size``, so their FPN levels have the same shapes.

Data: COCO-format JSON (``--train-images DIR --train-annotations FILE``, same for val;
``--data-path`` with the standard ``train2017/``, ``val2017/``, ``annotations/`` layout fills
them in). Category ids are used as class indices (91 for COCO, as torchvision's models do).
COCOeval (AP, AP50, AP75, APs/m/l and the ARs) runs after every epoch.

Recipe defaults (torchvision's Faster R-CNN): 26 epochs, SGD lr 0.02 per 16 images (scaled
linearly), momentum 0.9, weight decay 1e-4, warm-up over 1000 iterations, lr x0.1 at epochs 16
and 22, min size 800, max size 1333, horizontal flips.

Examples (GPU machines; docs/examples.md has the full commands)::

    torchrun --standalone --nproc-per-node 8 examples/coco_kd.py --data-path /data/coco \\
        --teacher-weights FasterRCNN_ResNet50_FPN_Weights.COCO_V1 --student resnet18_fpn \\
        --student-backbone-weights ResNet18_Weights.IMAGENET1K_V1 --method mokd --amp bf16 --output-dir runs/coco_r50_r18

    python examples/coco_kd.py --data-path /data/coco --evaluate-teacher \\
        --teacher-weights FasterRCNN_ResNet50_FPN_Weights.COCO_V1

``--method none`` (alias ``ce``) trains the student on the detection losses alone; ``kd`` adds
``--kd-weight`` x distill (alias ``--distill-weight``). Options follow torchvision's
``references/detection/train.py`` where they overlap and are shared with
``examples/imagenet_kd.py``. Run it from a clone of the repository (it imports
``trainer_utils.py`` from its own folder) against the installed ``mokd_optim``.

Weights are torchvision weights names (downloaded by torchvision only because you named them),
files (state dicts or mokd_optim checkpoints; a ResNet student's backbone can start from an
``examples/imagenet_kd.py`` ``student.pt``), or ``random``. Nothing is downloaded otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

# Run from a clone of the repository, as torchvision's references/ are, against whatever
# mokd_optim is installed: only this folder (for trainer_utils.py) goes on the import path, never
# the repository root, so a checkout's mokd_optim cannot shadow the installed one.
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch._functorch.config  # noqa: E402  (--compile sets donated_buffer)
import torch.distributed as dist  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

try:
    from trainer_utils import (
        AMP_DTYPES,
        BASELINE_METHODS,
        EpochSampler,
        TrainingRun,
        add_method_arguments,
        add_optimization_arguments,
        add_run_control_arguments,
        add_system_arguments,
        add_workers_argument,
        autocast,
        check_arguments,
        count_steps_per_epoch,
        finish_run,
        finite_mean,
        make_parser,
        optimizer_step,
        parse_pairs,
        print_outputs,
        run_main,
        run_statistics,
        setup_distributed,
        state_dict_from_file,
        write_json,
    )
except ModuleNotFoundError as error:  # the script was copied without its neighbour
    if error.name != "trainer_utils":
        raise
    raise SystemExit(
        f"coco_kd.py needs trainer_utils.py from the same folder ({HERE}): run it from a clone "
        "of the mokd_optim repository (examples/), or copy trainer_utils.py beside it"
    ) from error
from mokd_optim import MultiObjectiveOptimizer  # noqa: E402
from mokd_optim.distributed import is_main_process  # noqa: E402
from mokd_optim.kd import FeatureLoss, FeatureRecorder, SubspaceHead, kd_loss  # noqa: E402

COCO_EVAL_KEYS = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
# Student FPN level -> teacher FPN level of the same stride. ResNet-FPN levels "0".."3" have
# strides 4..32; MobileNetV3-FPN levels "0", "1" have strides 16 and 32.
DEFAULT_PAIRS = {"resnet": "0:0,1:1,2:2,3:3", "mobilenet_v3_large_fpn": "0:2,1:3"}


# Data --------------------------------------------------------------------------------------


class CocoDetection(Dataset):
    """Images and boxes of a COCO-format annotation file.

    Items are ``(image, target)``: a float ``(3, H, W)`` tensor in ``[0, 1]`` and
    ``{"boxes": (N, 4) xyxy, "labels": (N,) category ids, "image_id": int}``. Crowd
    annotations and boxes without area are dropped; ``train=True`` also drops images without a
    box (as torchvision's reference does). Keys are indices, or ``(index, seed)`` pairs from
    :class:`EpochSampler`, whose seed decides the horizontal flip (probability ``flip``).
    """

    def __init__(
        self, image_dir: Path, annotation_file: Path, *, train: bool, flip: float = 0.5
    ) -> None:
        from pycocotools.coco import COCO

        if not Path(annotation_file).is_file():
            raise FileNotFoundError(f"no annotation file {annotation_file}")
        if not Path(image_dir).is_dir():
            raise FileNotFoundError(f"no image directory {image_dir}")
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(str(annotation_file))
        self.image_dir, self.flip = Path(image_dir), flip
        ids = sorted(self.coco.imgs)
        if train:
            ids = [i for i in ids if any(self._valid(a) for a in self.coco.imgToAnns[i])]
        self.ids = ids

    @staticmethod
    def _valid(annotation: dict[str, Any]) -> bool:
        return (
            not annotation.get("iscrowd", 0)
            and annotation["bbox"][2] > 0
            and annotation["bbox"][3] > 0
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: Union[int, tuple[int, int]]) -> tuple[Tensor, dict[str, Any]]:
        import numpy as np
        from PIL import Image

        index, seed = key if isinstance(key, tuple) else (key, None)
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        with Image.open(self.image_dir / info["file_name"]) as picture:
            pixels = np.asarray(picture.convert("RGB"), dtype=np.uint8)
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255.0)
        height, width = image.shape[-2:]
        boxes = torch.tensor(
            [a["bbox"] for a in self.coco.imgToAnns[image_id] if self._valid(a)],
            dtype=torch.float32,
        ).reshape(-1, 4)
        labels = torch.tensor(
            [a["category_id"] for a in self.coco.imgToAnns[image_id] if self._valid(a)],
            dtype=torch.int64,
        )
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        if seed is not None and self.flip > 0:
            if float(torch.rand((), generator=torch.Generator().manual_seed(seed))) < self.flip:
                image = image.flip(-1)
                boxes = torch.stack(
                    [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1
                )
        return image, {"boxes": boxes, "labels": labels, "image_id": image_id}


def collate(
    batch: list[tuple[Tensor, dict[str, Any]]],
) -> tuple[list[Tensor], list[dict[str, Any]]]:
    images, targets = zip(*batch)
    return list(images), list(targets)


# Models ------------------------------------------------------------------------------------


def _is_file(value: Optional[str]) -> bool:
    return value not in (None, "random") and Path(str(value)).is_file()


def build_detector(
    name: str,
    weights: Optional[str],
    backbone_weights: Optional[str],
    args: argparse.Namespace,
    num_classes: int,
) -> nn.Module:
    """A torchvision Faster R-CNN: ``resnet50_fpn`` (torchvision's builder), ``resnet<N>_fpn``
    (``resnet_fpn_backbone``) or ``mobilenet_v3_large_fpn``.

    Args:
        weights: whole-detector weights: a torchvision weights name, a file, or ``None`` /
            ``"random"``.
        backbone_weights: ImageNet weights of the backbone (a torchvision weights name, or a
            file for ResNet backbones, e.g. a ``student.pt`` of examples/imagenet_kd.py); with
            them the backbone uses frozen batch norm and trains its last
            ``--trainable-backbone-layers`` stages, as torchvision does.

    Raises:
        ValueError: unknown name or weights, or weights for another number of classes.
    """
    from torchvision.models import get_weight
    from torchvision.models.detection import (
        FasterRCNN,
        fasterrcnn_mobilenet_v3_large_fpn,
        fasterrcnn_resnet50_fpn,
    )
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d

    options = dict(
        min_size=args.min_size,
        max_size=args.max_size,
        box_score_thresh=args.score_thresh,
        box_detections_per_img=args.detections_per_img,
    )
    whole = (
        get_weight(weights) if weights not in (None, "random") and not _is_file(weights) else None
    )
    backbone = (
        get_weight(backbone_weights)
        if backbone_weights not in (None, "random") and not _is_file(backbone_weights)
        else None
    )
    if whole is not None and len(whole.meta["categories"]) != num_classes:
        raise ValueError(
            f"{weights} predicts {len(whole.meta['categories'])} classes, the data needs {num_classes} (category ids + 1)"
        )
    trained = whole is not None or backbone_weights not in (None, "random")
    layers = args.trainable_backbone_layers if trained else None
    if name == "resnet50_fpn" and not _is_file(backbone_weights):
        model = fasterrcnn_resnet50_fpn(
            weights=whole,
            weights_backbone=backbone,
            num_classes=None if whole else num_classes,
            trainable_backbone_layers=layers,
            **options,
        )
    elif name == "mobilenet_v3_large_fpn":
        if _is_file(backbone_weights):
            raise ValueError(
                "a backbone weights file is supported for ResNet backbones; name torchvision weights for MobileNetV3"
            )
        model = fasterrcnn_mobilenet_v3_large_fpn(
            weights=whole,
            weights_backbone=backbone,
            num_classes=None if whole else num_classes,
            trainable_backbone_layers=layers,
            **options,
        )
    elif name.startswith("resnet") and name.endswith("_fpn"):
        body = resnet_fpn_backbone(
            backbone_name=name[: -len("_fpn")],
            weights=backbone,
            norm_layer=FrozenBatchNorm2d if trained else nn.BatchNorm2d,
            trainable_layers=layers if layers is not None else 5,
        )
        if _is_file(backbone_weights):
            state = {
                k: v
                for k, v in state_dict_from_file(Path(str(backbone_weights))).items()
                if not k.startswith("fc.")
            }
            missing, unexpected = body.body.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"{backbone_weights} does not fit a {name[:-4]} backbone: missing {missing[:5]}, unexpected {unexpected[:5]}"
                )
        model = FasterRCNN(body, num_classes=num_classes, **options)
        if whole is not None:
            raise ValueError(
                f"torchvision has no whole-detector weights for {name}; use --*-backbone-weights"
            )
    else:
        raise ValueError(
            f"unknown detector {name!r}: resnet50_fpn, resnet<N>_fpn or mobilenet_v3_large_fpn"
        )
    if _is_file(weights):
        result = model.load_state_dict(state_dict_from_file(Path(str(weights))), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{weights} does not fit {name}: missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
    return model


class DetectionDistiller(nn.Module):
    """The student detector, its FPN heads and the frozen teacher, returning the objectives.

    The teacher is kept out of module registration (not in ``parameters()``, ``state_dict()``
    or a DDP wrapper of this module) and runs under ``no_grad`` in eval mode: only its
    transform and backbone (and, for RoI KD, its box head on the student's proposals).
    ``forward(images, targets)`` returns ``(objectives, parts)``: ``{"detection", "distill"}``
    scalars and detached components for logging.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: Optional[nn.Module],
        pairs: Sequence[tuple[str, str]],
        *,
        head_options: dict[str, Any],
        feature_loss: str = "smooth_l1",
        roi_kd_weight: float = 0.0,
        roi_temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.student = student
        self._teacher = (teacher.eval().requires_grad_(False),) if teacher is not None else None
        self.pairs = list(pairs)
        self.heads = nn.ModuleDict()
        self.recorder: Optional[FeatureRecorder] = None
        self.roi_kd_weight, self.roi_temperature = roi_kd_weight, roi_temperature
        self._roi: dict[str, Any] = {}
        if teacher is None:
            return
        s_channels, t_channels = student.backbone.out_channels, teacher.backbone.out_channels
        for s_level, t_level in self.pairs:
            self.heads[f"p{s_level}_to_p{t_level}"] = SubspaceHead(
                s_channels, t_channels, student_path=s_level, teacher_path=t_level, **head_options
            )
        self.feature_loss = FeatureLoss(feature_loss, teacher_norm="layernorm")
        self.recorder = FeatureRecorder(student, {"fpn": "backbone"})
        if roi_kd_weight > 0:
            if (
                student.roi_heads.box_predictor.cls_score.out_features
                != teacher.roi_heads.box_predictor.cls_score.out_features
            ):
                raise ValueError("RoI KD needs the same classes in student and teacher")
            student.roi_heads.box_roi_pool.register_forward_hook(self._keep_proposals)
            student.roi_heads.box_predictor.register_forward_hook(self._keep_logits)

    def _keep_proposals(self, _module: nn.Module, args: tuple[Any, ...], _output: Any) -> None:
        self._roi["proposals"], self._roi["image_shapes"] = args[1], args[2]

    def _keep_logits(self, _module: nn.Module, _args: Any, output: tuple[Tensor, Tensor]) -> None:
        self._roi["logits"] = output[0]

    @property
    def teacher(self) -> Optional[nn.Module]:
        return self._teacher[0] if self._teacher is not None else None

    def train(self, mode: bool = True) -> DetectionDistiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> DetectionDistiller:
        super()._apply(fn, recurse)
        if self.teacher is not None:
            self.teacher._apply(fn)
        return self

    def forward(
        self, images: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        detection = self.student(images, targets)
        objectives = {"detection": torch.stack([v.float() for v in detection.values()]).sum()}
        parts = {f"det/{name}": value.detach() for name, value in detection.items()}
        teacher = self.teacher
        if teacher is None or self.recorder is None:
            return objectives, parts
        student_features = self.recorder.pop()["fpn"]
        with torch.no_grad():
            teacher_images, _ = teacher.transform(images)
            teacher_features = teacher.backbone(teacher_images.tensors)
        losses = []
        for name, head in self.heads.items():
            projected, target = head(
                student_features[head.student_path], teacher_features[head.teacher_path]
            )
            losses.append(self.feature_loss(projected, target))
            parts[f"feat/{name}"] = losses[-1].detach()
        distill = torch.stack(losses).mean()
        if self.roi_kd_weight > 0:
            with torch.no_grad():
                pooled = teacher.roi_heads.box_roi_pool(
                    teacher_features, self._roi["proposals"], self._roi["image_shapes"]
                )
                teacher_logits, _ = teacher.roi_heads.box_predictor(
                    teacher.roi_heads.box_head(pooled)
                )
            roi = kd_loss(
                self._roi.pop("logits").float(), teacher_logits.float(), T=self.roi_temperature
            )
            self._roi.clear()
            parts["roi_kd"] = roi.detach()
            distill = distill + self.roi_kd_weight * roi
        objectives["distill"] = distill
        return objectives, parts

    @contextlib.contextmanager
    def hooks_paused(self) -> Iterator[None]:
        """Stop recording student features (evaluation)."""
        if self.recorder is not None:
            self.recorder.remove()
        try:
            yield
        finally:
            if self.recorder is not None:
                self.recorder.attach()
            self._roi.clear()


# Evaluation --------------------------------------------------------------------------------


def coco_summary(
    coco_gt: Any, results: list[dict[str, Any]], image_ids: Sequence[int]
) -> dict[str, float]:
    """COCOeval bbox statistics (``COCO_EVAL_KEYS``) of ``results`` on ``image_ids``; -1 where
    COCO defines none (no ground truth in an area range)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            detections = coco_gt.loadRes(results)
        else:  # loadRes cannot take an empty list; an empty result set scores 0 (or -1)
            detections = COCO()
            detections.dataset = {
                "images": coco_gt.dataset["images"],
                "categories": coco_gt.dataset["categories"],
                "annotations": [],
            }
            detections.createIndex()
        evaluator = COCOeval(coco_gt, detections, "bbox")
        evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {key: float(value) for key, value in zip(COCO_EVAL_KEYS, evaluator.stats)}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    coco_gt: Any,
    device: torch.device,
    *,
    amp_dtype: Optional[torch.dtype],
    limit: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Detections of ``model`` on the loader's images (all ranks), scored by COCOeval on rank 0
    and shared with every rank."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    image_ids: list[int] = []
    batches = len(loader) if not limit else min(limit, len(loader))
    for index, (images, targets) in enumerate(
        tqdm(loader, total=batches, desc="coco eval", disable=not progress, leave=False)
    ):
        if limit and index >= limit:
            break
        with autocast(device, amp_dtype):
            outputs = model([image.to(device, non_blocking=True) for image in images])
        for target, output in zip(targets, outputs):
            image_ids.append(int(target["image_id"]))
            boxes = output["boxes"].float().cpu()
            boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh
            for box, score, label in zip(
                boxes.tolist(),
                output["scores"].float().cpu().tolist(),
                output["labels"].cpu().tolist(),
            ):
                results.append(
                    {
                        "image_id": int(target["image_id"]),
                        "category_id": int(label),
                        "bbox": [round(v, 3) for v in box],
                        "score": float(score),
                    }
                )
    model.train(was_training)
    if dist.is_available() and dist.is_initialized():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (results, image_ids))
        results = [r for part, _ in gathered for r in part]
        image_ids = sorted({i for _, part in gathered for i in part})
    stats = [coco_summary(coco_gt, results, image_ids) if is_main_process() else None]
    stats[0] = (
        {**stats[0], "images": float(len(image_ids)), "detections": float(len(results))}
        if stats[0] is not None
        else None
    )
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(stats, src=0)
    assert stats[0] is not None
    return stats[0]


# Training helpers --------------------------------------------------------------------------


def lr_factor(step: int, *, steps_per_epoch: int, args: argparse.Namespace) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps: ``--lr-gamma`` for
    every milestone epoch of ``--lr-steps`` passed (``--lr-scheduler step``) or a cosine from 1
    to 0 over ``--epochs`` (``cosine``), times a linear warm-up from ``--warmup-factor`` over
    ``--warmup-iters`` steps (at most one epoch)."""
    warmup = min(args.warmup_iters, steps_per_epoch - 1)
    if args.lr_scheduler == "step":
        factor = args.lr_gamma ** sum(
            step // steps_per_epoch >= milestone for milestone in args.lr_steps
        )
    else:
        total = max(args.epochs * steps_per_epoch, 1)
        factor = 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    if step < warmup:
        factor *= args.warmup_factor + (1.0 - args.warmup_factor) * step / warmup
    return factor


def objective_means(columns: dict[str, list[float]]) -> dict[str, Any]:
    """Per-objective part of the summary's statistics (see ``run_statistics``): the mean weight
    of each logged objective and the mean cosine of the detection and distill gradients."""
    return {
        "mean_weights": {
            k.split("/", 1)[1]: finite_mean(v)
            for k, v in columns.items()
            if k.startswith("weight/")
        },
        "mean_cosine": finite_mean(columns.get("cosine/detection|distill", [])),
    }


# Command line ------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-path",
        type=Path,
        default=None,
        help="COCO root with train2017/, val2017/ and annotations/",
    )
    data.add_argument("--train-images", type=Path, default=None)
    data.add_argument("--train-annotations", type=Path, default=None)
    data.add_argument("--val-images", type=Path, default=None)
    data.add_argument("--val-annotations", type=Path, default=None)
    data.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="default: largest category id + 1 (91 for COCO)",
    )
    data.add_argument("--min-size", type=int, default=800)
    data.add_argument("--max-size", type=int, default=1333)
    data.add_argument(
        "--flip", type=float, default=0.5, help="horizontal flip probability in training"
    )
    add_workers_argument(data, default=4)
    models = parser.add_argument_group("models")
    models.add_argument("--teacher", default="resnet50_fpn")
    models.add_argument(
        "--teacher-weights",
        default=None,
        help="required unless --method none: e.g. FasterRCNN_ResNet50_FPN_Weights.COCO_V1, a "
        "file, or 'random'",
    )
    models.add_argument(
        "--student", default="resnet18_fpn", help="resnet<N>_fpn or mobilenet_v3_large_fpn"
    )
    models.add_argument(
        "--student-weights",
        default=None,
        help="whole-detector weights of the student (default: none)",
    )
    models.add_argument(
        "--student-backbone-weights",
        default=None,
        help="e.g. ResNet18_Weights.IMAGENET1K_V1 or an imagenet_kd.py student.pt",
    )
    models.add_argument("--trainable-backbone-layers", type=int, default=3)
    models.add_argument("--score-thresh", type=float, default=0.05)
    models.add_argument("--detections-per-img", type=int, default=100)
    method = add_method_arguments(
        parser,
        kd_weight=1.0,
        kd_weight_help="weight of 'distill' for --method kd ('detection' has weight 1)",
        baseline_help="the detection losses alone, no teacher",
    )
    method.add_argument(
        "--feature-pairs", default=None, help="student:teacher FPN levels (default: same strides)"
    )
    method.add_argument(
        "--head-kind", default="conv1x1", choices=["linear", "conv1x1", "mlp", "conv_bn_relu"]
    )
    method.add_argument("--head-expansion", type=float, default=1.0)
    method.add_argument(
        "--head-teacher-projector",
        default=None,
        choices=["fixed", "linear"],
        help="default: none at expansion 1, else 'fixed'",
    )
    method.add_argument(
        "--feature-loss", default="smooth_l1", choices=["smooth_l1", "mse", "cosine"]
    )
    method.add_argument(
        "--roi-kd-weight",
        type=float,
        default=0.0,
        help="add this x KD of the RoI class logits to 'distill' (0: off)",
    )
    method.add_argument("--roi-temperature", type=float, default=1.0)
    optim = add_optimization_arguments(
        parser,
        title="optimisation (torchvision's Faster R-CNN recipe)",
        epochs=26,
        batch_size=2,
        lr_help="unset: 0.02 x global batch / 16",
        weight_decay=1e-4,
        lr_scheduler="step",
        lr_steps=[16, 22],
    )
    optim.add_argument("--warmup-iters", type=int, default=1000)
    optim.add_argument("--warmup-factor", type=float, default=1e-3)
    add_system_arguments(parser, compile_help="torch.compile the student's backbone (in place)")
    run = add_run_control_arguments(parser, output_dir=Path("runs/coco_kd"), log_every=20)
    run.add_argument(
        "--evaluate-teacher",
        action="store_true",
        help="only evaluate the teacher (COCOeval on the val set)",
    )
    args = parser.parse_args(argv)
    check_arguments(
        parser, args, teacher_needed=args.evaluate_teacher or args.method not in BASELINE_METHODS
    )
    if args.data_path is not None:
        args.train_images = args.train_images or args.data_path / "train2017"
        args.train_annotations = (
            args.train_annotations or args.data_path / "annotations" / "instances_train2017.json"
        )
        args.val_images = args.val_images or args.data_path / "val2017"
        args.val_annotations = (
            args.val_annotations or args.data_path / "annotations" / "instances_val2017.json"
        )
    if args.val_images is None or args.val_annotations is None:
        parser.error(
            "give --data-path, or --val-images and --val-annotations (and the train ones to train)"
        )
    return args


# Main --------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Train (or evaluate) as the arguments say; returns the summary (OUTPUT_DIR/summary.json)."""
    args = parse_args(argv)
    device, rank, world_size = setup_distributed(args)
    main_process, progress = rank == 0, rank == 0 and not args.no_progress
    torch.manual_seed(args.seed)
    amp_dtype = AMP_DTYPES[args.amp]
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    started = time.perf_counter()

    val_set = CocoDetection(args.val_images, args.val_annotations, train=False)
    num_classes = args.num_classes or max(val_set.coco.cats) + 1
    val_loader = DataLoader(
        val_set,
        batch_size=args.batch_size,
        sampler=list(range(rank, len(val_set), world_size)),
        num_workers=args.workers,
        collate_fn=collate,
    )

    def validate(model: nn.Module) -> dict[str, float]:
        """``evaluate`` ``model`` on the validation set (COCOeval metrics, every rank)."""
        return evaluate(
            model,
            val_loader,
            val_set.coco,
            device,
            amp_dtype=amp_dtype,
            limit=args.limit_val_steps,
            progress=progress,
        )

    teacher: Optional[nn.Module] = None
    if args.method != "none" or args.evaluate_teacher:
        teacher = build_detector(args.teacher, args.teacher_weights, None, args, num_classes).to(
            device, memory_format=memory_format
        )
        teacher.eval().requires_grad_(False)
    if args.evaluate_teacher:
        assert teacher is not None
        result = validate(teacher)
        if main_process:
            print(
                f"teacher {args.teacher}: AP {result['AP']:.3f}  AP50 {result['AP50']:.3f}  AP75 {result['AP75']:.3f}"
            )
        summary = {
            "mode": "evaluate-teacher",
            "teacher": args.teacher,
            "teacher_weights": args.teacher_weights,
            "val": result,
        }
        write_json(args.output_dir / "summary.json", summary)
        print_outputs(args.output_dir)
        return summary

    # Student and distiller ---------------------------------------------------------------
    if args.train_images is None or args.train_annotations is None:
        raise SystemExit("training needs --data-path or --train-images and --train-annotations")
    train_set = CocoDetection(args.train_images, args.train_annotations, train=True, flip=args.flip)
    student = build_detector(
        args.student, args.student_weights, args.student_backbone_weights, args, num_classes
    ).to(device, memory_format=memory_format)
    if args.compile:
        if args.method != "none":
            # several backward passes with retain_graph=True (per-objective gradients): compiled
            # graphs must not donate their buffers (torch 2.14 refuses it otherwise)
            torch._functorch.config.donated_buffer = False
        student.backbone.compile()  # in place: the FPN recorder path "backbone" is unchanged
    family = "mobilenet_v3_large_fpn" if args.student == "mobilenet_v3_large_fpn" else "resnet"
    pairs = parse_pairs(args.feature_pairs or DEFAULT_PAIRS[family]) if teacher is not None else []
    projector = args.head_teacher_projector or (None if args.head_expansion == 1.0 else "fixed")
    distiller = DetectionDistiller(
        student,
        teacher,
        pairs,
        head_options={
            "kind": args.head_kind,
            "expansion": args.head_expansion,
            "teacher_projector": projector,
        },
        feature_loss=args.feature_loss,
        roi_kd_weight=args.roi_kd_weight,
        roi_temperature=args.roi_temperature,
    ).to(device)
    model: nn.Module = distiller
    if world_size > 1:
        model = DistributedDataParallel(
            distiller, device_ids=[device.index] if device.type == "cuda" else None
        )
    objectives = ["detection"] + (["distill"] if teacher is not None else [])

    global_batch = args.batch_size * world_size
    lr = args.lr if args.lr is not None else 0.02 * global_batch / 16
    params = [p for p in distiller.parameters() if p.requires_grad]
    base = torch.optim.SGD(params, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    if args.method == "none":
        method: Any = "sum"  # one objective: its plain gradient
        options: dict[str, Any] = {}
    elif args.method == "kd":
        method, options = (
            "weighted",
            {"weights": {"detection": 1.0, "distill": args.kd_weight}},
        )
    else:
        method, options = args.method, args.method_options
    optimizer = MultiObjectiveOptimizer(
        base,
        method,
        strategy=args.strategy,
        max_norm=args.max_norm,
        sync=args.sync,
        scaler=scaler,
        **options,
    )

    sampler = EpochSampler(len(train_set), seed=args.seed, rank=rank, world_size=world_size)
    train_loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=args.workers,
        collate_fn=collate,
        persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(args.seed),
    )
    steps_per_epoch = count_steps_per_epoch(train_loader, args)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch=steps_per_epoch, args=args)
    )

    run = TrainingRun(
        args,
        steps_per_epoch=steps_per_epoch,
        sampler=sampler,
        model=student,
        modules={"heads": distiller.heads} if len(distiller.heads) else None,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        main_process=main_process,
    )
    run.resume(map_location=device)

    train_log = args.output_dir / "train_log.csv"
    logger = run.open_logs()
    if main_process:
        print(
            f"{args.method}: {args.student} ({sum(p.numel() for p in student.parameters()) / 1e6:.1f}M) <- "
            f"{args.teacher if teacher is not None else 'no teacher'}; FPN pairs {pairs}; objectives {objectives}; "
            f"{world_size} x {args.batch_size} images, lr {lr:g}, {steps_per_epoch} steps/epoch"
        )

    while run.running:
        model.train()
        for images, targets in run.epoch_batches(train_loader):
            images = [image.to(device, non_blocking=True) for image in images]
            targets = [
                {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in t.items()}
                for t in targets
            ]
            with autocast(device, amp_dtype):
                losses, parts = model(images, targets)
            optimizer.zero_grad(set_to_none=True)
            stats = optimizer.backward(losses)
            optimizer_step(optimizer, scaler)
            if optimizer.method.needs_losses_after:
                with torch.no_grad(), autocast(device, amp_dtype):
                    optimizer.observe(model(images, targets)[0])
            if logger.should_log(run.step):
                logger.log(
                    run.step,
                    stats,
                    lr=optimizer.param_groups[0]["lr"],
                    epoch=run.epoch_fraction,
                    **parts,
                )
                run.show_losses(losses)
        if run.interrupted:
            break
        with distiller.hooks_paused():
            result = validate(student)
        run.end_epoch(result)
        if main_process:
            print(
                f"epoch {run.epoch}: AP {result['AP']:.4f}  AP50 {result['AP50']:.4f}  AP75 {result['AP75']:.4f}  ({int(result['detections'])} detections)"
            )
        run.save()

    run.close(curves=True)
    epoch, step, history = run.epoch, run.step, run.history
    summary = {
        "mode": "train",
        "completed": epoch >= args.epochs,
        "method": args.method,
        "objectives": objectives,
        "student": args.student,
        "teacher": args.teacher if teacher is not None else None,
        "feature_pairs": [list(p) for p in pairs],
        "roi_kd_weight": args.roi_kd_weight,
        "student_params": sum(p.numel() for p in student.parameters()),
        "head_params": sum(p.numel() for p in distiller.heads.parameters()),
        "history": history,
        "final": {key: history[-1][f"val/{key}"] for key in COCO_EVAL_KEYS} if history else None,
        "best_AP": max(row["val/AP"] for row in history) if history else None,
        "epochs": epoch,
        "steps": step,
        "steps_per_epoch": steps_per_epoch,
        "global_batch": global_batch,
        "lr": lr,
        "num_classes": num_classes,
        "world_size": world_size,
        "device": str(device),
        "amp": args.amp,
        "resumed_from": run.resumed_from,
        "train_seconds_this_process": run.train_seconds,
        "statistics": run_statistics(train_log, objective_means) if main_process else {},
        "seconds": time.perf_counter() - started,
        "versions": {"torch": torch.__version__},
    }
    return finish_run(args.output_dir, summary)


if __name__ == "__main__":
    run_main(main)
