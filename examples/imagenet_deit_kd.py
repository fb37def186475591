"""ImageNet-1k distillation with DeiT's training recipe (timm), balanced by mokd_optim.

The sibling of ``imagenet_kd.py`` for the setting of the MoKD / DTO-KD paper's ImageNet table:
DeiT students (``deit_tiny_distilled_patch16_224``, ``deit_small_distilled_patch16_224``) and
a RegNetY-160 teacher, trained with DeiT's recipe (Touvron et al., ICML 2021, and its
repository's ``main.py`` defaults), built from timm's own parts:

=====================================  =================================================  ==========================
what                                   value (flag)                                       timm part
=====================================  =================================================  ==========================
epochs                                 300 (``--epochs``)
optimizer                              AdamW, lr 5e-4 x global batch / 512 (1e-3 at       ``create_optimizer_v2``,
                                       1024), weight decay 0.05 (``--wd``), none on        ``param_groups_weight_decay``
                                       biases, norms, position embedding and tokens
schedule                               cosine to 1e-5 (``--min-lr``), 5 warm-up epochs     ``create_scheduler_v2``
                                       from 1e-6 (``--lr-warmup-epochs``,
                                       ``--warmup-lr``), stepped per epoch
augmentation                           RandomResizedCrop 224 bicubic, flip, colour jitter  ``create_transform``
                                       0.3, RandAugment ``rand-m9-mstd0.5-inc1``, random
                                       erasing p 0.25 (pixel mode, 1 box)
mixup / cutmix                         mixup alpha 0.8, cutmix alpha 1.0, prob 1, switch   ``Mixup``,
                                       prob 0.5, per batch, label smoothing 0.1            ``SoftTargetCrossEntropy``
repeated augmentation                  3 augmented copies of each image per epoch          ``RepeatAugSampler``
stochastic depth                       0.1 (``--drop-path``)                              ``create_model``
model EMA                              decay 0.99996 (``--model-ema``)                    ``ModelEmaV3``
evaluation                             Resize 256 (224 / 0.875) bicubic, CenterCrop 224    ``create_transform``
distillation                           DeiT's distillation token: class-token head ->
                                       ``task``, distillation-token head -> ``kd``
                                       against the teacher (hard labels by default, as
                                       DeiT's best runs); the two heads averaged at test
teacher input                          the teacher's pretrained config (mean, std)         ``resolve_model_data_config``
=====================================  =================================================  ==========================

The KD target is computed on the mixed image: the teacher sees exactly the batch the student
sees. Objectives: ``task`` (soft-target CE of the class-token head against the mixed,
smoothed labels), ``kd`` (the distillation-token head against the teacher: ``--logit-loss
hard`` (DeiT), ``kd`` (Hinton, ``--temperature``) or ``dist``) and, with ``--heads``, ``feat``:
the VkD-style feature loss (Miles et al., CVPR 2024, which the paper follows): a linear
projector (``--head-orthogonal`` for VkD's orthogonal one) from a student token to the
teacher's pooled feature, the teacher side LayerNorm-ed, smooth-L1 (see docs/examples.md).
``--method ce|kd|<any mokd_optim method>`` as in ``imagenet_kd.py``.

Models: any ``timm.list_models()`` name, built by timm (``--student-weights`` /
``--teacher-weights``: ``pretrained`` lets timm fetch its weights (the only download, because
you asked), a file (a published checkpoint such as DeiT's ``regnety_160-a5fe301d.pth``, a state
dict or this trainer's ``student.pt``, loaded through timm's checkpoint filters) or
``random``); torchvision names, ``efficientnet_lite<N>`` and ``package.module:function`` go
through ``imagenet_kd.build_model`` as before (a name both libraries know goes to timm unless
its weights are a torchvision weights name). ``--recipe torchvision`` runs ``imagenet_kd.py``
with the remaining arguments.

Example (one node of 8 GPUs, 128 images each = DeiT's 1024)::

    torchrun --standalone --nproc-per-node 8 examples/imagenet_deit_kd.py --data-path /data/imagenet \\
        --teacher regnety_160 --teacher-weights /weights/regnety_160-a5fe301d.pth \\
        --student deit_tiny_distilled_patch16_224 --method mokd --heads norm:head.global_pool \\
        --head-orthogonal --amp bf16 --output-dir runs/deit_ti_mokd
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import random
import sys
import time
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Union

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader, Sampler  # noqa: E402

from examples import imagenet_kd, trainer_utils  # noqa: E402
from examples.imagenet_kd import (  # noqa: E402
    SeededDataset,
    ShardSampler,
    count_parameters,
    evaluate,
    image_folder,
    objective_means,
)
from examples.trainer_utils import (  # noqa: E402
    AMP_DTYPES,
    TrainingRun,
    add_run_control_arguments,
    autocast,
    count_steps_per_epoch,
    finish_run,
    make_multi_optimizer,
    make_train_loader,
    optimizer_step,
    parameter_counts,
    parse_pairs,
    run_main,
    setup_distributed,
    summary_closing,
    write_json,
)
from mokd_optim import MultiObjectiveOptimizer  # noqa: E402
from mokd_optim.kd import (  # noqa: E402
    Distiller,
    DISTLoss,
    FeatureRecorder,
    KDLoss,
    SubspaceHead,
    build_heads,
)
from mokd_optim.kd.heads import align_features  # noqa: E402
from mokd_optim.methods import available as available_methods  # noqa: E402

# Models --------------------------------------------------------------------------------------


def is_timm_model(name: str, weights: Optional[str]) -> bool:
    """Whether ``name`` is built by timm: a ``timm.list_models()`` name, unless it is an entry
    point or EfficientNet-Lite, or its weights name torchvision weights (``*_Weights.*``)."""
    import timm

    if ":" in name or name.startswith("efficientnet_lite"):
        return False
    if weights is not None and "_Weights." in weights:
        return False
    return bool(timm.is_model(name))


def build_model(
    name: str,
    weights: Optional[str],
    num_classes: int,
    image_size: int,
    *,
    drop_path: float = 0.0,
) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...]]:
    """Build a classifier and return it with the input ``(mean, std)`` it expects.

    timm models (see :func:`is_timm_model`) take their statistics from their pretrained config
    (``timm.data.resolve_model_data_config``); a ViT built for another ``image_size`` than its
    default gets ``img_size=image_size`` (position embeddings resampled from a checkpoint by
    timm). Other names go to ``imagenet_kd.build_model``.

    Args:
        weights: ``None`` / ``"random"``, ``"pretrained"`` (timm fetches them: the one download,
            on request), or a file.
        drop_path: stochastic depth rate (timm models that have it).

    Raises:
        ValueError: a weights value that is neither, a file that does not fit the model.
    """
    if not is_timm_model(name, weights):
        return imagenet_kd.build_model(name, weights, num_classes, image_size)
    import timm
    from timm.data import resolve_model_data_config

    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if drop_path > 0:
        kwargs["drop_path_rate"] = drop_path
    if weights == "pretrained":
        kwargs["pretrained"] = True
    elif weights not in (None, "random"):
        path = Path(weights)
        if not path.is_file():
            raise ValueError(
                f"{name}: weights must be 'pretrained', 'random' or a file path, got {weights!r}"
            )
        kwargs["pretrained"] = True
        kwargs["pretrained_cfg_overlay"] = {"file": str(path), "num_classes": num_classes}
    default_size = timm.models.get_pretrained_cfg_value(name, "input_size") or (3, 224, 224)
    try:
        if image_size != default_size[-1]:
            try:
                model = timm.create_model(name, img_size=image_size, **kwargs)
            except TypeError:  # not a transformer: convolutions take any size
                model = timm.create_model(name, **kwargs)
        else:
            model = timm.create_model(name, **kwargs)
    except RuntimeError as error:  # timm's strict load of a file that does not fit
        raise ValueError(f"{weights} does not fit {name}: {error}") from error
    config = resolve_model_data_config(model)
    return model, tuple(config["mean"]), tuple(config["std"])


class DistilledTokens(nn.Module):
    """A student with DeiT's distillation token, for training.

    In training mode timm's distilled models return the two heads' logits separately; this
    stacks them, ``(N, 2, classes)`` (``[:, 0]`` the class token's head, ``[:, 1]`` the
    distillation token's), so that one :class:`~mokd_optim.kd.Distiller` output feeds the task
    loss (:func:`class_logits`) and the KD loss (:func:`distillation_logits`). In eval mode the
    model averages the two heads itself (DeiT's inference rule) and this returns ``(N, classes)``.
    The wrapped model is ``self.model`` (feature paths are prefixed with ``model.``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        model.set_distilled_training(True)  # type: ignore[operator]
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        output = self.model(x)
        return torch.stack(output, dim=1) if isinstance(output, tuple) else output


def class_logits(output: Tensor) -> Tensor:
    """The class-token head's logits ``(N, classes)`` of a student output (all of a plain one)."""
    return output[:, 0] if output.ndim == 3 else output


def distillation_logits(output: Tensor) -> Tensor:
    """The distillation-token head's logits of a :class:`DistilledTokens` output (all of a plain
    student's output)."""
    return output[:, 1] if output.ndim == 3 else output


def hard_distillation(student: Tensor, teacher: Tensor, target: Any = None) -> Tensor:
    """DeiT's hard distillation: cross-entropy against the teacher's top-1 class."""
    return nn.functional.cross_entropy(student, teacher.argmax(dim=1))


class TokenHead(SubspaceHead):
    """A :class:`SubspaceHead` whose student side is a transformer's tokens ``(N, L, C)``.

    ``token`` picks what meets the teacher's feature: an index (``0`` the class token, ``1``
    DeiT's distillation token) or ``"mean"`` (the mean patch token), both ``(N, C)``;
    ``"map"``: the patch tokens as a ``(N, C, h, w)`` map (for a CNN teacher's feature map,
    then aligned by ``align``); ``"all"``: the tokens unchanged (a transformer teacher with the
    same token count). A vector student meets a teacher map by pooling the map. Other student
    layouts pass through. ``prefix_tokens``: class/distillation/register tokens before the
    patches (``model.num_prefix_tokens``).
    """

    def __init__(
        self, *args: Any, token: Union[int, str], prefix_tokens: int, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(token, int) and token not in ("mean", "map", "all"):
            raise ValueError(f"{self._label}: token must be an index, 'mean', 'map' or 'all'")
        self.token, self.prefix_tokens = token, prefix_tokens

    def select(self, tokens: Tensor) -> Tensor:
        """The student feature this head projects (see the class docstring)."""
        if tokens.ndim != 3 or self.token == "all":
            return tokens
        if isinstance(self.token, int):
            return tokens[:, self.token]
        patches = tokens[:, self.prefix_tokens :]
        if self.token == "mean":
            return patches.mean(dim=1)
        side = math.isqrt(patches.shape[1])
        if side * side != patches.shape[1]:
            raise ValueError(
                f"{self._label}: {patches.shape[1]} patch tokens do not form a square map"
            )
        return patches.transpose(1, 2).reshape(patches.shape[0], -1, side, side)

    def forward(self, student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
        projected = self.project(self.select(student))
        mode = "global" if projected.ndim == 2 else self.align
        return align_features(projected, self.project_teacher(teacher), mode, name=self._label)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, token={self.token!r}"


def token_heads(
    student: nn.Module,
    teacher: nn.Module,
    pairs: list[tuple[str, str]],
    sample: Tensor,
    teacher_sample: Tensor,
    *,
    token: Union[int, str],
    prefix_tokens: int,
    **options: Any,
) -> nn.ModuleDict:
    """:class:`TokenHead`\\ s for ``pairs``, their widths from one dry run (``build_heads``)."""
    probes = build_heads(student, teacher, pairs, sample, teacher_input=teacher_sample, **options)
    heads = nn.ModuleDict()
    for name, probe in probes.items():
        head = TokenHead(
            probe.student_channels,
            probe.teacher_channels,
            token=token,
            prefix_tokens=prefix_tokens,
            student_path=probe.student_path,
            teacher_path=probe.teacher_path,
            **options,
        )
        heads[name] = head.to(sample.device)
    return heads


# Data ----------------------------------------------------------------------------------------


class SeededAugmentation(SeededDataset):
    """:class:`~examples.imagenet_kd.SeededDataset` for timm's transforms: the sample's seed
    also seeds Python's ``random`` and NumPy's global generator (timm's RandomResizedCrop,
    RandAugment and RandomErasing draw from them), so an image is augmented the same way in
    any worker and after a resume. All three generators are restored afterwards."""

    def __getitem__(self, key: Union[int, tuple[int, int]]) -> tuple[torch.Tensor, int]:
        if not isinstance(key, tuple):
            return super().__getitem__(key)
        index, seed = key
        image, target = self.base[index]
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % 2**32)
                return self.transform(image), target
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class RepeatedAugmentationSampler(Sampler):
    """DeiT's repeated augmentation, resumable: timm's ``RepeatAugSampler`` order (each image
    ``repeats`` times, consecutive copies on different ranks, ``len(dataset) / world_size``
    samples per rank and epoch) paired with a seed per sample and position, so the copies of an
    image are augmented differently. ``set_epoch(e, start)`` skips the first ``start`` samples
    (a resumed epoch), as :class:`~examples.trainer_utils.EpochSampler` does."""

    def __init__(
        self, size: int, *, seed: int, rank: int = 0, world_size: int = 1, repeats: int = 3
    ) -> None:
        from timm.data.distributed_sampler import RepeatAugSampler

        self.inner = RepeatAugSampler(
            range(size), num_replicas=world_size, rank=rank, shuffle=True, num_repeats=repeats
        )
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start
        self.inner.set_epoch(self.seed + epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(self.inner)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        seeds = torch.randint(0, 2**62, (self.inner.total_size,), generator=generator)
        mine = seeds[self.rank :: self.world_size][: len(indices)].tolist()
        return iter(list(zip(indices, mine))[self.start :])

    def __len__(self) -> int:
        return len(self.inner) - self.start


def deit_transforms(
    args: argparse.Namespace, mean: Sequence[float], std: Sequence[float]
) -> tuple[Callable, Callable]:
    """DeiT's training and evaluation transforms from ``timm.data.create_transform``."""
    from timm.data import create_transform

    train = create_transform(
        args.input_size,
        is_training=True,
        color_jitter=args.color_jitter,
        auto_augment=args.aa or None,
        interpolation=args.train_interpolation,
        re_prob=args.reprob,
        re_mode=args.remode,
        re_count=args.recount,
        mean=tuple(mean),
        std=tuple(std),
    )
    val = create_transform(
        args.input_size,
        is_training=False,
        interpolation="bicubic",
        crop_pct=args.eval_crop_ratio,
        mean=tuple(mean),
        std=tuple(std),
    )
    return train, val


# Schedule ------------------------------------------------------------------------------------


class StepwiseSchedule:
    """A timm scheduler driven by :class:`~examples.trainer_utils.TrainingRun`, which calls
    ``step()`` after every optimizer step: the rate is set from the update count, per epoch
    (DeiT) or, with ``on_updates``, per update. The state is the update count."""

    def __init__(self, scheduler: Any, steps_per_epoch: int, on_updates: bool) -> None:
        self.scheduler, self.steps_per_epoch, self.on_updates = (
            scheduler,
            steps_per_epoch,
            on_updates,
        )
        self.updates = 0
        self._apply()

    def _apply(self) -> None:
        if self.on_updates:
            self.scheduler.step_update(self.updates)
        else:
            self.scheduler.step(self.updates // self.steps_per_epoch)

    def step(self) -> None:
        self.updates += 1
        self._apply()

    def state_dict(self) -> dict[str, int]:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.updates = int(state["updates"])
        self._apply()


# Losses --------------------------------------------------------------------------------------


def distiller_losses(
    distiller: nn.Module,
    mixup: Optional[Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]],
    images: Tensor,
    targets: Tensor,
) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor]:
    """One training forward: mix the batch (``timm.data.Mixup``: mixed images and soft,
    smoothed targets), then run the distiller on the mixed images (the teacher sees them too).

    Returns ``(output, losses, mixed images, targets used by the task loss)``.
    """
    if mixup is not None:
        images, targets = mixup(images, targets)
    output, losses = distiller(images, targets)
    return output, losses, images, targets


# Command line --------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="ImageNet distillation with DeiT's recipe (timm), balanced by mokd_optim; "
        "the module docstring and docs/examples.md say where each default comes from",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--recipe",
        default="deit",
        choices=["deit", "torchvision"],
        help="'torchvision' runs imagenet_kd.py with the other arguments",
    )
    data = parser.add_argument_group("data and augmentation (DeiT)")
    data.add_argument("--data-path", type=Path, required=True, help="folder with train/ and val/")
    data.add_argument("--train-dir", default="train")
    data.add_argument("--val-dir", default="val")
    data.add_argument("--allow-empty-classes", action="store_true")
    data.add_argument("--input-size", type=int, default=224)
    data.add_argument(
        "--eval-crop-ratio", type=float, default=0.875, help="evaluation: Resize(size / ratio)"
    )
    data.add_argument("--color-jitter", type=float, default=0.3)
    data.add_argument("--aa", default="rand-m9-mstd0.5-inc1", help="timm auto-augment ('' none)")
    data.add_argument("--train-interpolation", default="bicubic")
    data.add_argument("--reprob", type=float, default=0.25, help="random erasing probability")
    data.add_argument("--remode", default="pixel")
    data.add_argument("--recount", type=int, default=1)
    data.add_argument(
        "--repeated-aug",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="repeated augmentation",
    )
    data.add_argument("--ra-reps", type=int, default=3, help="copies per image")
    data.add_argument("--mixup", type=float, default=0.8, help="mixup alpha (0: off)")
    data.add_argument("--cutmix", type=float, default=1.0, help="cutmix alpha (0: off)")
    data.add_argument("--mixup-prob", type=float, default=1.0)
    data.add_argument("--mixup-switch-prob", type=float, default=0.5)
    data.add_argument("--mixup-mode", default="batch", choices=["batch", "pair", "elem"])
    data.add_argument("--label-smoothing", "--smoothing", type=float, default=0.1)
    data.add_argument("-j", "--workers", type=int, default=10, help="loading processes per rank")
    models = parser.add_argument_group("models")
    models.add_argument("--student", default="deit_tiny_distilled_patch16_224")
    models.add_argument("--student-weights", default=None, help="default: random")
    models.add_argument("--teacher", default="regnety_160")
    models.add_argument(
        "--teacher-weights", default=None, help="'pretrained' (timm fetches), a file, or 'random'"
    )
    models.add_argument("--drop-path", type=float, default=0.1, help="student stochastic depth")
    models.add_argument("--num-classes", type=int, default=None, help="default: class folders")
    method = parser.add_argument_group("objectives and balancing")
    method.add_argument("--method", default="mokd", help="'ce', 'kd' or a mokd_optim method")
    method.add_argument("--method-options", default="{}", help="JSON options of the method")
    method.add_argument("--strategy", default="auto")
    method.add_argument(
        "--representation",
        default="auto",
        help="--strategy representation: the student module whose output is the shared tensor the "
        "weights are computed at (auto: the final norm of a transformer, else the logits)",
    )
    method.add_argument("--sync", default="auto", choices=["auto", "exact", "weights", "none"])
    method.add_argument(
        "--clip-grad-norm", "--max-norm", dest="clip_grad_norm", type=float, default=None
    )
    method.add_argument(
        "--logit-loss",
        default="hard",
        choices=["hard", "kd", "dist", "none"],
        help="distillation-token loss: DeiT's hard labels, Hinton KD, DIST",
    )
    method.add_argument("--temperature", type=float, default=1.0, help="kd T, dist tau")
    method.add_argument("--kd-weight", type=float, default=0.5, help="--method kd: a (DeiT alpha)")
    method.add_argument("--feat-weight", type=float, default=1.0, help="--method kd: feat weight")
    method.add_argument(
        "--heads", default="", help="student:teacher paths, e.g. norm:head.global_pool"
    )
    method.add_argument(
        "--head-token",
        default="auto",
        help="student tokens that meet the teacher: auto (dist token if any, else cls), cls, "
        "dist, mean, map, all, or an index",
    )
    method.add_argument("--head-kind", default="linear", choices=["linear", "mlp"])
    method.add_argument("--head-orthogonal", action="store_true", help="VkD's orthogonal projector")
    method.add_argument("--head-expansion", type=float, default=1.0)
    method.add_argument("--head-teacher-projector", default=None, choices=["fixed", "linear"])
    method.add_argument(
        "--head-align", default="interpolate", choices=["interpolate", "pool", "global"]
    )
    method.add_argument(
        "--feature-loss", default="smooth_l1", choices=["smooth_l1", "mse", "cosine"]
    )
    method.add_argument("--feature-reduction", default="mean", choices=["mean", "sum", "separate"])
    optim = parser.add_argument_group("optimisation (DeiT)")
    optim.add_argument("--epochs", type=int, default=300)
    optim.add_argument("-b", "--batch-size", type=int, default=128, help="images per rank")
    optim.add_argument("--opt", default="adamw", help="timm optimizer name")
    optim.add_argument("--lr", type=float, default=None, help="default 5e-4 x global batch / 512")
    optim.add_argument("--momentum", type=float, default=0.9, help="sgd-type optimizers")
    optim.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=0.05)
    optim.add_argument("--lr-scheduler", default="cosine", help="timm scheduler name")
    optim.add_argument("--lr-warmup-epochs", type=int, default=5)
    optim.add_argument("--warmup-lr", type=float, default=1e-6)
    optim.add_argument("--min-lr", type=float, default=1e-5)
    optim.add_argument(
        "--sched-on-updates", action="store_true", help="change the lr every step, not per epoch"
    )
    optim.add_argument("--model-ema", action=argparse.BooleanOptionalAction, default=True)
    optim.add_argument("--model-ema-decay", type=float, default=0.99996)
    optim.add_argument("--seed", type=int, default=0)
    system = parser.add_argument_group("system")
    system.add_argument("--device", default=None)
    system.add_argument("--amp", default="none", choices=list(AMP_DTYPES))
    system.add_argument("--channels-last", action="store_true")
    system.add_argument("--compile", action="store_true", help="torch.compile the student")
    run = add_run_control_arguments(parser, output_dir=Path("runs/imagenet_deit_kd"), log_every=50)
    run.add_argument("--skip-teacher-eval", action="store_true")
    run.add_argument(
        "--evaluate-teacher",
        action="store_true",
        help="only evaluate the teacher (with its own input statistics) on the validation set",
    )
    args = parser.parse_args(argv)
    if args.method not in ("ce", "kd") and args.method not in available_methods():
        parser.error(
            f"unknown --method {args.method!r}; choose 'ce', 'kd' or one of {available_methods()}"
        )
    try:
        args.method_options = json.loads(args.method_options)
    except json.JSONDecodeError as error:
        parser.error(f"--method-options is not JSON: {error}")
    if (args.mixup > 0 or args.cutmix > 0) and args.batch_size % 2:
        parser.error(
            f"mixup/cutmix mix a batch with its reverse: --batch-size must be even, got {args.batch_size}"
        )
    return args


def versions() -> dict[str, str]:
    import timm
    import torchvision

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "python": sys.version.split()[0],
    }


def head_token(spec: str, distilled: bool) -> Union[int, str]:
    if spec == "auto":
        return 1 if distilled else 0
    named = {"cls": 0, "dist": 1}
    if spec in named:
        if spec == "dist" and not distilled:
            raise SystemExit("--head-token dist: the student has no distillation token")
        return named[spec]
    return int(spec) if spec.lstrip("-").isdigit() else spec


# Main ----------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Train as the arguments ask; return the summary (also OUTPUT_DIR/summary.json)."""
    recipe, rest = (
        argparse.ArgumentParser(add_help=False),
        list(argv if argv is not None else sys.argv[1:]),
    )
    recipe.add_argument("--recipe", default="deit")
    known, remaining = recipe.parse_known_args(rest)
    if known.recipe == "torchvision":
        return imagenet_kd.main(remaining)
    args = parse_args(rest)
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2, param_groups_weight_decay
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    device, rank, world_size = setup_distributed(args)
    main_process = rank == 0
    progress = main_process and not args.no_progress
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    amp_dtype = AMP_DTYPES[args.amp]
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    started = time.perf_counter()

    val_base = image_folder(args.data_path / args.val_dir, args.allow_empty_classes)
    train_base = image_folder(args.data_path / args.train_dir, args.allow_empty_classes)
    if train_base.classes != val_base.classes:
        raise SystemExit("train and val class folders differ")
    num_classes = args.num_classes or len(val_base.classes)

    if args.evaluate_teacher:
        if args.teacher_weights is None:
            raise SystemExit("--evaluate-teacher needs --teacher-weights ('pretrained' or a file)")
        teacher, t_mean, t_std = build_model(
            args.teacher, args.teacher_weights, num_classes, args.input_size
        )
        teacher = teacher.to(device, memory_format=memory_format).eval()
        loader = DataLoader(
            SeededDataset(val_base, deit_transforms(args, t_mean, t_std)[1]),
            batch_size=args.batch_size,
            sampler=ShardSampler(len(val_base), rank, world_size),
            num_workers=args.workers,
        )
        result = evaluate(
            teacher,
            loader,
            device,
            amp_dtype=amp_dtype,
            channels_last=args.channels_last,
            limit=args.limit_val_steps,
            progress=progress,
            description="teacher",
        )
        summary = {
            "mode": "evaluate-teacher",
            "teacher": args.teacher,
            "teacher_weights": args.teacher_weights,
            "teacher_mean_std": [list(t_mean), list(t_std)],
            "val": result,
            "versions": versions(),
        }
        if main_process:
            print(
                f"teacher {args.teacher}: top-1 {result['top1']:.2f} %  top-5 {result['top5']:.2f} %"
            )
        write_json(args.output_dir / "summary.json", summary)
        return summary

    # Student, teacher, heads ---------------------------------------------------------------
    student, mean, std = build_model(
        args.student, args.student_weights, num_classes, args.input_size, drop_path=args.drop_path
    )
    distilled = hasattr(student, "set_distilled_training")
    student = student.to(device, memory_format=memory_format)
    ema = ModelEmaV3(student, decay=args.model_ema_decay) if args.model_ema else None
    train_transform, val_transform = deit_transforms(args, mean, std)
    val_loader = DataLoader(
        SeededDataset(val_base, val_transform),
        batch_size=args.batch_size,
        sampler=ShardSampler(len(val_base), rank, world_size),
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
    )

    def validate(
        net: nn.Module, description: str, transform: Optional[Callable] = None
    ) -> dict[str, float]:
        return evaluate(
            net,
            val_loader,
            device,
            amp_dtype=amp_dtype,
            channels_last=args.channels_last,
            input_transform=transform,
            limit=args.limit_val_steps,
            progress=progress,
            description=description,
        )

    mixup_active = args.mixup > 0 or args.cutmix > 0
    mixup = (
        Mixup(
            mixup_alpha=args.mixup,
            cutmix_alpha=args.cutmix,
            prob=args.mixup_prob,
            switch_prob=args.mixup_switch_prob,
            mode=args.mixup_mode,
            label_smoothing=args.label_smoothing,
            num_classes=num_classes,
        )
        if mixup_active
        else None
    )
    criterion: Callable[[Tensor, Tensor], Tensor] = (
        SoftTargetCrossEntropy()
        if mixup_active
        else LabelSmoothingCrossEntropy(args.label_smoothing)
        if args.label_smoothing > 0
        else nn.CrossEntropyLoss()
    )

    def task_loss(output: Tensor, target: Tensor) -> Tensor:
        return criterion(class_logits(output).float(), target)

    trained_student: nn.Module = DistilledTokens(student) if distilled else student
    distiller: Optional[Distiller] = None
    teacher: Optional[nn.Module] = None
    t_mean: tuple[float, ...] = mean
    t_std: tuple[float, ...] = std
    objectives = ["task"]
    if args.method != "ce":
        if args.teacher_weights is None:
            raise SystemExit(
                "--teacher-weights is required with a teacher: 'pretrained' (timm fetches them), a file "
                "(e.g. DeiT's regnety_160-a5fe301d.pth), or 'random' to distil from an untrained teacher on purpose"
            )
        teacher, t_mean, t_std = build_model(
            args.teacher, args.teacher_weights, num_classes, args.input_size
        )
        teacher = teacher.to(device, memory_format=memory_format).eval().requires_grad_(False)
        size = args.input_size
        with torch.no_grad():
            classes = teacher(torch.zeros(2, 3, size, size, device=device)).shape[-1]
        if classes != num_classes:
            raise SystemExit(f"the teacher predicts {classes} classes, the data has {num_classes}")
        heads = None
        pairs = parse_pairs(args.heads)
        if pairs:
            prefix = "model." if distilled else ""
            sample = torch.zeros(2, 3, size, size, device=device)
            heads = token_heads(
                trained_student,
                teacher,
                [(prefix + s, t) for s, t in pairs],
                sample,
                sample,
                token=head_token(args.head_token, distilled),
                prefix_tokens=int(getattr(student, "num_prefix_tokens", 0)),
                kind=args.head_kind,
                orthogonal=args.head_orthogonal,
                expansion=args.head_expansion,
                teacher_projector=args.head_teacher_projector
                or (None if args.head_expansion == 1.0 else "fixed"),
                align=args.head_align,
            )
        logit_loss: Optional[Callable[..., Tensor]] = None
        if args.logit_loss != "none":
            base = {
                "hard": hard_distillation,
                "kd": KDLoss(T=args.temperature),
                "dist": DISTLoss(tau=args.temperature),
            }[args.logit_loss]

            def logit_loss(output: Tensor, teacher_logits: Tensor, target: Any = None) -> Tensor:
                return base(distillation_logits(output).float(), teacher_logits.float())

        distiller = Distiller(
            trained_student,
            teacher,
            heads,
            task_loss=task_loss,
            logit_loss=logit_loss,
            feature_loss=args.feature_loss,
            feature_reduction=args.feature_reduction,
            student_normalization=(mean, std),
            teacher_normalization=(t_mean, t_std),
        ).to(device)
        objectives += [] if logit_loss is None else ["kd"]
        if heads is not None:
            objectives += (
                [f"feat.{n}" for n in heads] if args.feature_reduction == "separate" else ["feat"]
            )
    if args.compile:
        if args.method != "ce":
            importlib.import_module("torch._functorch.config").donated_buffer = False
        student.compile()

    trained: nn.Module = distiller if distiller is not None else trained_student
    model: nn.Module = trained
    if world_size > 1:
        model = DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None
        )

    # Optimiser and schedule from timm --------------------------------------------------------
    global_batch = args.batch_size * world_size
    lr = args.lr if args.lr is not None else 5e-4 * global_batch / 512
    skip = set(getattr(student, "no_weight_decay", lambda: set())())
    groups = param_groups_weight_decay(student, args.weight_decay, no_weight_decay_list=skip)
    if distiller is not None and len(distiller.heads):
        groups += param_groups_weight_decay(distiller.heads, args.weight_decay)
    base_optimizer = create_optimizer_v2(
        groups, opt=args.opt, lr=lr, weight_decay=args.weight_decay, momentum=args.momentum
    )
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    optimizer: torch.optim.Optimizer = base_optimizer
    multi: Optional[MultiObjectiveOptimizer] = None
    if args.method == "kd":
        fixed = {"task": 1.0 - args.kd_weight, "kd": args.kd_weight}
        fixed.update({n: args.feat_weight for n in objectives if n.startswith("feat")})
        multi = make_multi_optimizer(
            base_optimizer,
            args,
            max_norm=args.clip_grad_norm,
            scaler=scaler,
            weights={n: fixed[n] for n in objectives},
        )
    elif args.method != "ce":
        multi = make_multi_optimizer(
            base_optimizer, args, max_norm=args.clip_grad_norm, scaler=scaler
        )
    if multi is not None:
        optimizer = multi

    sampler: Any
    if args.repeated_aug:
        sampler = RepeatedAugmentationSampler(
            len(train_base), seed=args.seed, rank=rank, world_size=world_size, repeats=args.ra_reps
        )
    else:
        from examples.trainer_utils import EpochSampler

        sampler = EpochSampler(len(train_base), seed=args.seed, rank=rank, world_size=world_size)
    train_loader = make_train_loader(
        SeededAugmentation(train_base, train_transform), sampler, args, device
    )
    steps_per_epoch = count_steps_per_epoch(train_loader, args)
    timm_scheduler, _ = create_scheduler_v2(
        base_optimizer,
        sched=args.lr_scheduler,
        num_epochs=args.epochs,
        warmup_epochs=args.lr_warmup_epochs,
        warmup_lr=args.warmup_lr,
        min_lr=args.min_lr,
        step_on_epochs=not args.sched_on_updates,
        updates_per_epoch=steps_per_epoch,
    )
    scheduler = StepwiseSchedule(timm_scheduler, steps_per_epoch, args.sched_on_updates)

    # --strategy representation: weights from the gradients at one shared student tensor
    shared: Optional[FeatureRecorder] = None
    if multi is not None and args.strategy == "representation":
        path = args.representation
        if path == "auto":
            path = "norm" if isinstance(getattr(student, "norm", None), nn.Module) else ""
        if path:
            shared = FeatureRecorder(trained_student, ("model." if distilled else "") + path)

    # Resume, teacher evaluation, logs --------------------------------------------------------
    modules: dict[str, nn.Module] = {}
    if distiller is not None and len(distiller.heads):
        modules["heads"] = distiller.heads
    if ema is not None:
        modules["ema"] = ema
    run = TrainingRun(
        args,
        steps_per_epoch=steps_per_epoch,
        sampler=sampler,
        model=student,
        modules=modules or None,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        main_process=main_process,
    )
    resumed = run.resume(
        map_location=device, mismatch_hint=": resume with the same data, --batch-size and processes"
    )
    teacher_eval = (resumed.extra.get("teacher_eval") or None) if resumed is not None else None
    if (
        teacher is not None
        and distiller is not None
        and teacher_eval is None
        and not args.skip_teacher_eval
    ):
        teacher_eval = validate(teacher, "teacher", distiller.teacher_input)
        if main_process:
            print(f"teacher {args.teacher}: top-1 {teacher_eval['top1']:.2f} %")
    run.extra["teacher_eval"] = teacher_eval or {}
    logger = run.open_logs()
    if main_process:
        print(
            f"{args.method} (DeiT recipe): {args.student} ({count_parameters(student) / 1e6:.2f}M"
            f"{', distillation token' if distilled else ''}) <- {args.teacher if teacher is not None else 'no teacher'}; "
            f"objectives {objectives}; {world_size} x {args.batch_size} images, lr {lr:g}, {steps_per_epoch} steps/epoch"
        )

    # Train ------------------------------------------------------------------------------------
    student_params = [p for p in student.parameters() if p.requires_grad]
    while run.running:
        model.train()
        for images, targets in run.epoch_batches(train_loader):
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            targets = targets.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                if distiller is not None:
                    output, losses, images, soft = distiller_losses(model, mixup, images, targets)
                else:
                    if mixup is not None:
                        images, soft = mixup(images, targets)
                    else:
                        soft = targets
                    output = model(images)
                    losses = {"task": task_loss(output, soft)}
            losses = {name: value.float() for name, value in losses.items()}
            optimizer.zero_grad(set_to_none=True)
            log_now = logger.should_log(run.step)
            stats = None
            if multi is not None:
                features = None
                if args.strategy == "representation":
                    features = next(iter(shared.pop().values())) if shared else output
                stats = trainer_utils.multi_backward(
                    multi, losses, student_params, log_now=log_now, features=features
                )
            else:
                loss = losses["task"]
                (scaler.scale(loss) if scaler is not None else loss).backward()
            optimizer_step(optimizer, scaler)
            if ema is not None:
                ema.update(student, step=run.step)
            trainer_utils.observe_after_step(multi, model, images, soft, device, amp_dtype)
            if log_now:
                top1 = 100.0 * (class_logits(output).argmax(1) == targets).float().mean()
                trainer_utils.log_train_step(run, logger, optimizer, stats, losses, top1)
        if run.interrupted:
            break
        result = validate(student, "val")
        if ema is not None:
            result.update(
                {
                    f"ema_{k}": v
                    for k, v in validate(ema.module, "val (EMA)").items()
                    if k != "images"
                }
            )
        run.end_epoch(result)
        if main_process:
            print(
                f"epoch {run.epoch}: val top-1 {result['top1']:.2f} %  top-5 {result['top5']:.2f} %"
            )
        run.save()

    # Summary ----------------------------------------------------------------------------------
    run.close(curves=multi is not None)
    history = run.history
    top1 = [row["val/top1"] for row in history]
    means = partial(objective_means, names=objectives)
    summary = {
        "mode": "train",
        "recipe": "deit",
        "completed": run.epoch >= args.epochs,
        "method": args.method,
        "objectives": objectives,
        "student": args.student,
        "distillation_token": distilled,
        "teacher": args.teacher if teacher is not None else None,
        "teacher_weights": args.teacher_weights if teacher is not None else None,
        "teacher_mean_std": [list(t_mean), list(t_std)] if teacher is not None else None,
        "logit_loss": args.logit_loss if teacher is not None else None,
        "heads": [list(pair) for pair in parse_pairs(args.heads)] if teacher is not None else [],
        **parameter_counts(student, teacher, distiller),
        "teacher_val": teacher_eval,
        "history": history,
        "final_top1": top1[-1] if top1 else None,
        "final_ema_top1": history[-1].get("val/ema_top1") if history else None,
        "best_top1": max(top1) if top1 else None,
        "epochs": run.epoch,
        "steps": run.step,
        "steps_per_epoch": steps_per_epoch,
        "global_batch": global_batch,
        "lr": lr,
        "world_size": world_size,
        "device": str(device),
        "amp": args.amp,
        "resumed_from": run.resumed_from,
        **summary_closing(run, args, global_batch, means, main_process, started, versions()),
    }
    return finish_run(args.output_dir, summary)


if __name__ == "__main__":
    run_main(main)
