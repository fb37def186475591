"""CIFAR-100 knowledge distillation: the benchmark of CRD / DKD (mdistiller) / DIST / DTO-KD.

One file, in the manner of ``imagenet_kd.py``: the benchmark's architectures
(``examples/cifar_models.py``), its recipe, a frozen teacher that is never wrapped in DDP, a
student trained with :class:`mokd_optim.MultiObjectiveOptimizer`, top-1/top-5 on the 10,000 test
images after every epoch, CSV/TensorBoard logs, atomic checkpoints that resume the exact
trajectory, ``curves.png`` and a JSON summary (the same outputs as the ImageNet trainer).

The benchmark's recipe is the default (CRD, Tian et al. ICLR 2020, kept by DKD and DIST):
240 epochs, SGD momentum 0.9, batch 64, lr 0.05 (0.01 for MobileNetV2 students), lr x0.1 at
epochs 150, 180 and 210, weight decay 5e-4, 4-pixel-padded random 32 x 32 crops and horizontal
flips, KD temperature 4, ResNet32x4 -> ResNet8x4.

Objectives (``--method``):

- ``ce``: cross-entropy only (the student alone; also how a teacher is trained, see
  ``--train-teacher``);
- ``kd``: fixed weights, the benchmark's baselines: ``--ce-weight`` x CE + ``--kd-weight`` x
  the logit loss (defaults per ``--logit-loss``: KD 0.1 / 0.9 as CRD and mdistiller; DKD 1 / 1
  with its 20-epoch linear warm-up of the DKD term; DIST 1 / 1) and ``--feat-weight`` x ``feat``;
- any registered method (``mokd`` by default, ``mgda``, ``pcgrad``, ...): ``task``, ``kd``
  (``--logit-loss kd|dkd|dist``) and, with ``--heads``, ``feat``, balanced at the gradient level.

Data: torchvision's CIFAR-100 layout, ``DATA/cifar-100-python/{train,test,meta}`` (the
extracted ``cifar-100-python.tar.gz``); ``--download`` fetches it with torchvision (nothing is
downloaded otherwise). Teacher weights: a file (a state dict, ``{"model": ...}`` as the CRD /
mdistiller teacher checkpoints ``ckpt_epoch_240.pth``, or this trainer's ``student.pt``), or
``random`` (explicitly untrained).

Examples (docs/examples.md has the full commands and the papers' numbers)::

    # the teacher (or use a published ckpt_epoch_240.pth)
    python examples/cifar100_kd.py --data-path /data/cifar --train-teacher --teacher resnet32x4 \\
        --output-dir runs/cifar_r32x4
    python examples/cifar100_kd.py --data-path /data/cifar --teacher resnet32x4 \\
        --teacher-weights runs/cifar_r32x4/student.pt --student resnet8x4 --method mokd \\
        --output-dir runs/cifar_r32x4_r8x4_mokd
"""

from __future__ import annotations

import argparse
import importlib
import json
import pickle
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from examples import cifar_models  # noqa: E402
from examples.imagenet_kd import (  # noqa: E402
    SeededDataset,
    ShardSampler,
    count_parameters,
    evaluate,
    objective_means,
    versions,
)
from examples.trainer_utils import (  # noqa: E402
    AMP_DTYPES,
    EpochSampler,
    TrainingRun,
    add_run_control_arguments,
    autocast,
    build_feature_heads,
    count_steps_per_epoch,
    finish_run,
    log_train_step,
    make_multi_optimizer,
    make_train_loader,
    multi_backward,
    observe_after_step,
    optimizer_step,
    parameter_counts,
    parse_pairs,
    run_main,
    setup_distributed,
    state_dict_from_file,
    summary_closing,
    trainable_param_groups,
)
from mokd_optim import MultiObjectiveOptimizer  # noqa: E402
from mokd_optim.kd import Distiller, FeatureRecorder  # noqa: E402
from mokd_optim.methods import available as available_methods  # noqa: E402

# Per-channel statistics of the CIFAR-100 training images (the benchmark's normalisation).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# Fixed weights (CE, logit loss) and loss options of the benchmark's baselines, per logit loss:
# KD (Hinton, T = 4) 0.1 / 0.9 as CRD and mdistiller; DKD alpha 1, beta 8, T 4, weights 1 / 1
# and a linear warm-up over 20 epochs (DKD paper); DIST beta = gamma = 2, tau 4 (DIST paper).
BASELINES: dict[str, dict[str, Any]] = {
    "kd": {"ce_weight": 0.1, "kd_weight": 0.9, "warmup": 0},
    "dkd": {
        "ce_weight": 1.0,
        "kd_weight": 1.0,
        "warmup": 20,
        "options": {"alpha": 1.0, "beta": 8.0},
    },
    "dist": {
        "ce_weight": 1.0,
        "kd_weight": 1.0,
        "warmup": 0,
        "options": {"beta": 2.0, "gamma": 2.0},
    },
}


# Data ---------------------------------------------------------------------------------------


class Cifar100(Dataset):
    """One split of CIFAR-100 read from torchvision's layout (``root/cifar-100-python/train``
    or ``test``: pickled dicts with ``data`` ``(N, 3072)`` uint8 in CHW order and
    ``fine_labels``). Items are ``(PIL image, fine label)``; ``classes`` from ``meta`` when
    present.

    Raises:
        FileNotFoundError: the split file is missing (the message says how to get it).
    """

    def __init__(self, root: Path, split: str) -> None:
        folder = root / "cifar-100-python"
        path = folder / split
        if not path.is_file():
            raise FileNotFoundError(
                f"no {path}: --data-path must contain cifar-100-python/ (the extracted cifar-100-python.tar.gz, "
                "torchvision's CIFAR100 layout); pass --download to fetch it with torchvision"
            )
        with open(path, "rb") as stream:
            entry = pickle.load(stream, encoding="latin1")
        self.images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        self.images = self.images.transpose(0, 2, 3, 1).copy()
        self.targets = [int(label) for label in entry["fine_labels"]]
        self.classes: list[str] = []
        if (folder / "meta").is_file():
            with open(folder / "meta", "rb") as stream:
                self.classes = list(pickle.load(stream, encoding="latin1")["fine_label_names"])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        return Image.fromarray(self.images[index]), self.targets[index]


def build_transforms(mean: Sequence[float], std: Sequence[float]) -> tuple[Any, Any]:
    """Training (pad-4 random crop + flip) and test (none) transforms, both normalised."""
    from torchvision import transforms as T

    normalize = [T.ToTensor(), T.Normalize(mean, std)]
    train = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), *normalize])
    return train, T.Compose(normalize)


# Models -------------------------------------------------------------------------------------


def build_model(name: str, weights: Optional[str], num_classes: int) -> nn.Module:
    """A benchmark model (``cifar_models.MODELS``) with ``weights``: ``None`` / ``"random"``
    (random initialisation) or a file (state dict, ``{"model": ...}``, a mokd_optim checkpoint).

    Raises:
        ValueError: unknown model, a weights value that is not a file, weights that do not fit.
    """
    model = cifar_models.build(name, num_classes)
    if weights in (None, "random"):
        return model
    path = Path(weights)
    if not path.is_file():
        raise ValueError(f"{name}: weights must be a file or 'random', got {weights!r}")
    try:
        result = model.load_state_dict(state_dict_from_file(path), strict=False)
    except RuntimeError as error:  # tensors of other shapes: another architecture
        raise ValueError(f"{path} does not fit {name}: {str(error)[:500]}") from error
    missing = [key for key in result.missing_keys if not key.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{path} does not fit {name}: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return model


def logit_loss_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options of the ``--logit-loss`` (temperature ``--temperature``; DIST calls it tau)."""
    if args.logit_loss == "dist":
        return {"tau": args.temperature, **BASELINES["dist"]["options"]}
    if args.logit_loss == "dkd":
        return {"T": args.temperature, **BASELINES["dkd"]["options"]}
    return {"T": args.temperature}


# Command line -------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="docs/examples.md has the commands that reproduce the papers' rows",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-path", type=Path, required=True, help="folder that holds cifar-100-python/"
    )
    data.add_argument(
        "--download", action="store_true", help="fetch CIFAR-100 with torchvision if missing"
    )
    data.add_argument(
        "-j", "--workers", type=int, default=4, help="data loading processes per rank"
    )
    models = parser.add_argument_group("models")
    models.add_argument("--teacher", default="resnet32x4", choices=sorted(cifar_models.MODELS))
    models.add_argument(
        "--teacher-weights", default=None, help="teacher file (required with a teacher) or 'random'"
    )
    models.add_argument("--student", default="resnet8x4", choices=sorted(cifar_models.MODELS))
    models.add_argument("--student-weights", default=None, help="initial student weights file")
    models.add_argument(
        "--train-teacher",
        action="store_true",
        help="train --teacher alone with cross-entropy (sets --method ce and --student TEACHER); "
        "its student.pt is the --teacher-weights of the distillation runs",
    )
    method = parser.add_argument_group("objectives and balancing")
    method.add_argument(
        "--method", default="mokd", help="'ce', 'kd' (fixed weights) or a mokd_optim method name"
    )
    method.add_argument("--method-options", default="{}", help="JSON options of the method")
    method.add_argument("--strategy", default="auto", help="gradient strategy")
    method.add_argument(
        "--representation",
        default="",
        help="--strategy representation: the student module whose output is the shared tensor "
        "(default: the logits; with --heads, the tapped stage, e.g. layer3)",
    )
    method.add_argument("--sync", default="auto", choices=["auto", "exact", "weights", "none"])
    method.add_argument(
        "--clip-grad-norm",
        "--max-norm",
        dest="clip_grad_norm",
        type=float,
        default=None,
        help="clip the norm of the combined gradient",
    )
    method.add_argument("--logit-loss", default="kd", choices=["kd", "dkd", "dist", "none"])
    method.add_argument("--temperature", type=float, default=4.0, help="KD / DKD T, DIST tau")
    method.add_argument(
        "--ce-weight",
        type=float,
        default=None,
        help="--method kd: CE weight (default per logit loss)",
    )
    method.add_argument(
        "--kd-weight",
        type=float,
        default=None,
        help="--method kd: logit-loss weight (default per logit loss)",
    )
    method.add_argument("--feat-weight", type=float, default=1.0, help="--method kd: feat weight")
    method.add_argument(
        "--kd-warmup-epochs",
        type=int,
        default=None,
        help="--method kd: linear warm-up of the logit loss (default 20 for dkd, else 0)",
    )
    method.add_argument(
        "--heads", default="", help="subspace heads, student:teacher paths, e.g. layer3:layer3"
    )
    method.add_argument(
        "--head-kind", default="conv1x1", choices=["linear", "conv1x1", "mlp", "conv_bn_relu"]
    )
    method.add_argument("--head-expansion", type=float, default=1.0)
    method.add_argument("--head-teacher-projector", default=None, choices=["fixed", "linear"])
    method.add_argument(
        "--head-align", default="interpolate", choices=["interpolate", "pool", "global"]
    )
    method.add_argument(
        "--feature-loss", default="smooth_l1", choices=["smooth_l1", "mse", "cosine"]
    )
    method.add_argument("--feature-reduction", default="mean", choices=["mean", "sum", "separate"])
    optim = parser.add_argument_group("optimisation (the benchmark's recipe)")
    optim.add_argument("--epochs", type=int, default=240)
    optim.add_argument("-b", "--batch-size", type=int, default=64, help="images per rank and step")
    optim.add_argument(
        "--lr", type=float, default=None, help="default 0.05 (0.01 for MobileNetV2 students)"
    )
    optim.add_argument("--momentum", type=float, default=0.9)
    optim.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=5e-4)
    optim.add_argument("--lr-scheduler", default="multistep", choices=["multistep", "cosine"])
    optim.add_argument("--lr-steps", type=int, nargs="+", default=[150, 180, 210])
    optim.add_argument("--lr-gamma", type=float, default=0.1)
    optim.add_argument("--seed", type=int, default=0)
    system = parser.add_argument_group("system")
    system.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    system.add_argument("--amp", default="none", choices=list(AMP_DTYPES))
    system.add_argument("--channels-last", action="store_true")
    system.add_argument("--compile", action="store_true", help="torch.compile the student")
    run = add_run_control_arguments(parser, output_dir=Path("runs/cifar100_kd"), log_every=50)
    run.add_argument("--skip-teacher-eval", action="store_true")
    args = parser.parse_args(argv)
    if args.train_teacher:
        args.method, args.student = "ce", args.teacher
    if args.method not in ("ce", "kd") and args.method not in available_methods():
        parser.error(
            f"unknown --method {args.method!r}; choose 'ce', 'kd' or one of {available_methods()}"
        )
    try:
        args.method_options = json.loads(args.method_options)
    except json.JSONDecodeError as error:
        parser.error(f"--method-options is not JSON: {error}")
    if not isinstance(args.method_options, dict):
        parser.error("--method-options must be a JSON object")
    baseline = BASELINES.get(args.logit_loss, {"ce_weight": 1.0, "kd_weight": 0.0, "warmup": 0})
    for name, key in (("ce_weight", "ce_weight"), ("kd_weight", "kd_weight")):
        if getattr(args, name) is None:
            setattr(args, name, baseline[key])
    if args.kd_warmup_epochs is None:
        args.kd_warmup_epochs = baseline["warmup"] if args.method == "kd" else 0
    if args.lr is None:
        args.lr = 0.01 if args.student in cifar_models.LIGHT_STUDENTS else 0.05
    return args


def lr_factor(epoch: int, args: argparse.Namespace) -> float:
    """Multiplier of ``--lr`` in ``epoch`` (0-based): x ``--lr-gamma`` at each of
    ``--lr-steps``, or cosine over ``--epochs``."""
    if args.lr_scheduler == "multistep":
        return args.lr_gamma ** sum(epoch >= milestone for milestone in args.lr_steps)
    import math

    return 0.5 * (1.0 + math.cos(math.pi * epoch / max(args.epochs, 1)))


# Main ---------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Train as the arguments ask; return the summary (also OUTPUT_DIR/summary.json)."""
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

    if args.download and main_process:
        from torchvision.datasets import CIFAR100

        CIFAR100(str(args.data_path), train=True, download=True)
        CIFAR100(str(args.data_path), train=False, download=True)
    if args.download and world_size > 1:
        dist.barrier()
    train_base, test_base = Cifar100(args.data_path, "train"), Cifar100(args.data_path, "test")
    num_classes = 100
    train_transform, test_transform = build_transforms(CIFAR100_MEAN, CIFAR100_STD)
    test_loader = DataLoader(
        SeededDataset(test_base, test_transform),
        batch_size=args.batch_size,
        sampler=ShardSampler(len(test_base), rank, world_size),
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
    )

    def validate(net: nn.Module, description: str) -> dict[str, float]:
        return evaluate(
            net,
            test_loader,
            device,
            amp_dtype=amp_dtype,
            channels_last=args.channels_last,
            limit=args.limit_val_steps,
            progress=progress,
            description=description,
        )

    # Student, teacher, heads --------------------------------------------------------------
    student = build_model(args.student, args.student_weights, num_classes)
    student = student.to(device, memory_format=memory_format)
    distiller: Optional[Distiller] = None
    teacher: Optional[nn.Module] = None
    objectives = ["task"]
    if args.method != "ce":
        if args.teacher_weights is None:
            raise SystemExit(
                "--teacher-weights is required with a teacher: a file (e.g. the CRD/mdistiller "
                "ckpt_epoch_240.pth, or student.pt of a --train-teacher run) or 'random'"
            )
        teacher = build_model(args.teacher, args.teacher_weights, num_classes)
        teacher = teacher.to(device, memory_format=memory_format).eval().requires_grad_(False)
        heads = None
        pairs = parse_pairs(args.heads)
        if pairs:
            sample = torch.zeros(2, 3, 32, 32, device=device)
            heads = build_feature_heads(student, teacher, pairs, sample, args)
        use_logits = args.logit_loss != "none"
        distiller = Distiller(
            student,
            teacher,
            heads,
            task_loss=F.cross_entropy,
            logit_loss=args.logit_loss if use_logits else None,
            logit_options=logit_loss_options(args) if use_logits else None,
            feature_loss=args.feature_loss,
            feature_reduction=args.feature_reduction,
        ).to(device)
        objectives += ["kd"] if use_logits else []
        if heads is not None:
            objectives += (
                [f"feat.{name}" for name in heads]
                if args.feature_reduction == "separate"
                else ["feat"]
            )
    if args.compile:
        if args.method != "ce":  # several backward passes through the graph (see imagenet_kd.py)
            importlib.import_module("torch._functorch.config").donated_buffer = False
        student.compile()

    trained: nn.Module = distiller if distiller is not None else student
    model: nn.Module = trained
    if world_size > 1:
        model = DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None
        )

    # Optimiser, schedule -----------------------------------------------------------------
    groups = trainable_param_groups(student, distiller, args.weight_decay)
    base = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    optimizer: torch.optim.Optimizer = base
    multi: Optional[MultiObjectiveOptimizer] = None
    if args.method == "kd":
        fixed = {"task": args.ce_weight, "kd": args.kd_weight}
        fixed.update({name: args.feat_weight for name in objectives if name.startswith("feat")})
        multi = make_multi_optimizer(
            base,
            args,
            max_norm=args.clip_grad_norm,
            scaler=scaler,
            weights={name: fixed[name] for name in objectives},
        )
    elif args.method != "ce":
        multi = make_multi_optimizer(base, args, max_norm=args.clip_grad_norm, scaler=scaler)
    if multi is not None:
        optimizer = multi

    # --strategy representation: weights from the gradients at one shared student tensor
    shared: Optional[FeatureRecorder] = None
    if multi is not None and args.strategy == "representation" and args.representation:
        shared = FeatureRecorder(student, args.representation)

    sampler = EpochSampler(len(train_base), seed=args.seed, rank=rank, world_size=world_size)
    train_loader = make_train_loader(
        SeededDataset(train_base, train_transform), sampler, args, device
    )
    steps_per_epoch = count_steps_per_epoch(train_loader, args)
    # The benchmark decays per epoch; one scheduler step per optimizer step (TrainingRun's
    # contract), so the factor is read from the epoch the step falls in.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step // steps_per_epoch, args)
    )

    # Resume, teacher evaluation, logs --------------------------------------------------------
    run = TrainingRun(
        args,
        steps_per_epoch=steps_per_epoch,
        sampler=sampler,
        model=student,
        modules={"heads": distiller.heads}
        if distiller is not None and len(distiller.heads)
        else None,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        main_process=main_process,
    )
    resumed = run.resume(
        map_location=device, mismatch_hint=": resume with the same --batch-size and processes"
    )
    teacher_eval = resumed.extra.get("teacher_eval") or None if resumed is not None else None
    if teacher is not None and teacher_eval is None and not args.skip_teacher_eval:
        teacher_eval = validate(teacher, "teacher")
        if main_process:
            print(f"teacher {args.teacher}: top-1 {teacher_eval['top1']:.2f} %")
    run.extra["teacher_eval"] = teacher_eval or {}
    logger = run.open_logs()
    if main_process:
        print(
            f"{args.method}: {args.student} ({count_parameters(student) / 1e6:.2f}M) <- "
            f"{args.teacher if teacher is not None else 'no teacher'}; objectives {objectives}; "
            f"{world_size} x {args.batch_size} images, lr {args.lr:g}, {steps_per_epoch} steps/epoch"
        )

    # Train ----------------------------------------------------------------------------------
    student_params = [p for p in student.parameters() if p.requires_grad]
    while run.running:
        model.train()
        warmup = min((run.epoch + 1) / args.kd_warmup_epochs, 1.0) if args.kd_warmup_epochs else 1.0
        for images, targets in run.epoch_batches(train_loader):
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            targets = targets.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                if distiller is not None:
                    output, losses = model(images, targets)
                else:
                    output = model(images)
                    losses = {"task": F.cross_entropy(output.float(), targets)}
            losses = {name: value.float() for name, value in losses.items()}
            if warmup < 1.0 and "kd" in losses:
                losses["kd"] = warmup * losses["kd"]
            optimizer.zero_grad(set_to_none=True)
            log_now = logger.should_log(run.step)
            stats = None
            if multi is not None:
                features = None
                if args.strategy == "representation":
                    features = next(iter(shared.pop().values())) if shared else output
                stats = multi_backward(
                    multi, losses, student_params, log_now=log_now, features=features
                )
            else:
                loss = losses["task"]
                (scaler.scale(loss) if scaler is not None else loss).backward()
            optimizer_step(optimizer, scaler)
            observe_after_step(multi, model, images, targets, device, amp_dtype)
            if log_now:
                top1 = 100.0 * (output.argmax(1) == targets).float().mean()
                log_train_step(run, logger, optimizer, stats, losses, top1)
        if run.interrupted:
            break
        result = validate(student, "test")
        run.end_epoch(result)
        if main_process:
            print(
                f"epoch {run.epoch}: test top-1 {result['top1']:.2f} %  top-5 {result['top5']:.2f} %"
            )
        run.save()

    # Summary ----------------------------------------------------------------------------------
    run.close(curves=True)
    history = run.history
    top1 = [row["val/top1"] for row in history]
    means = partial(objective_means, names=objectives)
    global_batch = args.batch_size * world_size
    summary = {
        "mode": "train-teacher" if args.train_teacher else "train",
        "completed": run.epoch >= args.epochs,
        "method": args.method,
        "objectives": objectives,
        "student": args.student,
        "teacher": args.teacher if teacher is not None else None,
        "teacher_weights": args.teacher_weights if teacher is not None else None,
        "logit_loss": args.logit_loss if teacher is not None else None,
        "fixed_weights": {"task": args.ce_weight, "kd": args.kd_weight, "feat": args.feat_weight}
        if args.method == "kd"
        else None,
        **parameter_counts(student, teacher, distiller),
        "teacher_val": teacher_eval,
        "history": history,
        "final_top1": top1[-1] if top1 else None,
        "best_top1": max(top1) if top1 else None,
        "epochs": run.epoch,
        "steps": run.step,
        "steps_per_epoch": steps_per_epoch,
        "global_batch": global_batch,
        "lr": args.lr,
        "world_size": world_size,
        "device": str(device),
        "resumed_from": run.resumed_from,
        **summary_closing(run, args, global_batch, means, main_process, started, versions()),
    }
    return finish_run(args.output_dir, summary)


if __name__ == "__main__":
    run_main(main)
