"""The CIFAR-100 knowledge-distillation benchmark's architectures, for ``cifar100_kd.py``.

These are the networks of the benchmark that CRD (Tian et al., ICLR 2020) introduced and
DKD/mdistiller, DIST and DTO-KD report on: CIFAR ResNets (``resnet8`` .. ``resnet110``, and
the 4x wider ``resnet8x4`` / ``resnet32x4``), wide ResNets (``wrn_16_2``, ``wrn_40_1``,
``wrn_40_2``, ...), VGG with BatchNorm (``vgg8``, ``vgg11``, ``vgg13``, ``vgg16``, ``vgg19``)
and the half-width MobileNetV2 (``MobileNetV2``). All take 32 x 32 images.

Written for this project; the module names and tensor shapes follow the benchmark's reference
definitions (CRD's ``RepDistiller/models``, reused unchanged by mdistiller), so the published
``state_dict``\\ s of its teachers (``ckpt_epoch_240.pth``, ``{"model": state_dict, ...}``) load
with ``load_state_dict`` key for key. Taps for feature heads are plain module paths, e.g.
``layer3`` (ResNet), ``block3`` (WRN), ``block4`` (VGG), ``blocks.6`` (MobileNetV2).

``build(name, num_classes)`` builds any of them; ``MODELS`` lists the names.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LIGHT_STUDENTS", "MODELS", "build"]


def _init_like_benchmark(model: nn.Module, linear: str) -> None:
    """The reference definitions' initialisation: He-normal convolutions (fan-out, zero bias),
    BatchNorm 1/0, and the classifier ``linear``: ``"default"`` (PyTorch's, ResNet),
    ``"zero_bias"`` (PyTorch's weight, zero bias: WRN) or ``"normal"`` (N(0, 0.01), zero bias:
    VGG, MobileNetV2)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and linear != "default":
            if linear == "normal":
                nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)


# CIFAR ResNet (He et al. 2016, section 4.2): 3 stages of 6n+2 layers --------------------------


class _Basic(nn.Module):
    """Two 3x3 convolutions with a residual; a 1x1 projection when the shape changes."""

    def __init__(self, inputs: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample: Optional[nn.Sequential] = None
        if stride != 1 or inputs != width:
            self.downsample = nn.Sequential(
                nn.Conv2d(inputs, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
            )

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


class CifarResNet(nn.Module):
    """ResNet-``depth`` for 32 px: a 3x3 stem of ``widths[0]`` channels, three stages of
    ``(depth - 2) / 6`` basic blocks with ``widths[1:]`` channels (strides 1, 2, 2), global
    average pooling and ``fc``. Output ``(N, num_classes)``."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int], num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (8, 20, 32, 56, 110), got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        channels = widths[0]
        for stage, (width, stride) in enumerate(zip(widths[1:], (1, 2, 2)), start=1):
            layer = []
            for index in range(blocks):
                layer.append(_Basic(channels, width, stride if index == 0 else 1))
                channels = width
            self.add_module(f"layer{stage}", nn.Sequential(*layer))
        self.fc = nn.Linear(channels, num_classes)
        _init_like_benchmark(self, "default")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# Wide ResNet (Zagoruyko & Komodakis 2016): pre-activation blocks, WRN-depth-k -----------------


class _WideBlock(nn.Module):
    """BN-ReLU-conv3x3 twice (pre-activation); a 1x1 shortcut convolution when the shape
    changes, in which case the first BN-ReLU is shared by both paths."""

    def __init__(self, inputs: int, width: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inputs)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(inputs, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.dropout = dropout
        self.same_shape = inputs == width
        self.convShortcut: Optional[nn.Conv2d] = (
            None if self.same_shape else nn.Conv2d(inputs, width, 1, stride=stride, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        y = self.relu2(self.bn2(self.conv1(activated)))
        if self.dropout > 0:
            y = F.dropout(y, p=self.dropout, training=self.training)
        y = self.conv2(y)
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return y + shortcut


class _WideStage(nn.Module):
    def __init__(self, blocks: int, inputs: int, width: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                _WideBlock(inputs if i == 0 else width, width, stride if i == 0 else 1, dropout)
                for i in range(blocks)
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``k``: a 3x3 stem of 16 channels, three stages of ``(depth - 4) / 6``
    pre-activation blocks with 16k, 32k, 64k channels, a final BN-ReLU, pooling and ``fc``."""

    def __init__(self, depth: int, k: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4 (16, 22, 28, 40), got {depth}")
        blocks = (depth - 4) // 6
        widths = (16, 16 * k, 32 * k, 64 * k)
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.block1 = _WideStage(blocks, widths[0], widths[1], 1, dropout)
        self.block2 = _WideStage(blocks, widths[1], widths[2], 2, dropout)
        self.block3 = _WideStage(blocks, widths[2], widths[3], 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        _init_like_benchmark(self, "zero_bias")

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# VGG with BatchNorm, five blocks, one linear classifier ---------------------------------------

VGG_BLOCKS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": (
        (64, 64),
        (128, 128),
        (256, 256, 256, 256),
        (512, 512, 512, 512),
        (512, 512, 512, 512),
    ),
}


class VGG(nn.Module):
    """VGG-BN for 32 px: five blocks of conv3x3-BN(-ReLU) (``block0`` .. ``block4``; each
    block's last ReLU is applied in ``forward``, so a block's output is pre-activation), max
    pooling after blocks 0-2 (and 3 at 64 px), global average pooling, one ``classifier``."""

    def __init__(self, blocks: tuple[tuple[int, ...], ...], num_classes: int) -> None:
        super().__init__()
        channels = 3
        for index, widths in enumerate(blocks):
            layers: list[nn.Module] = []
            for width in widths:
                layers += [
                    nn.Conv2d(channels, width, 3, padding=1),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
            self.add_module(f"block{index}", nn.Sequential(*layers[:-1]))
        for index in range(4):
            self.add_module(f"pool{index}", nn.MaxPool2d(2, 2))
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        _init_like_benchmark(self, "normal")

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[2]
        x = self.pool0(F.relu(self.block0(x)))
        x = self.pool1(F.relu(self.block1(x)))
        x = self.pool2(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        if size == 64:
            x = self.pool3(x)
        x = F.relu(self.block4(x))
        return self.classifier(torch.flatten(self.pool4(x), 1))


# MobileNetV2 at half width (the benchmark's "MobileNetV2") ------------------------------------


def _conv_bn_relu(inputs: int, outputs: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(inplace=True),
    )


class _InvertedResidual(nn.Module):
    """1x1 expansion (always present, also at ratio 1), 3x3 depthwise, 1x1 linear projection;
    a residual when stride is 1 and the widths agree."""

    def __init__(self, inputs: int, outputs: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = inputs * expansion
        self.residual = stride == 1 and inputs == outputs
        self.conv = nn.Sequential(
            nn.Conv2d(inputs, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, outputs, 1, bias=False),
            nn.BatchNorm2d(outputs),
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) for 32 px with width multiplier ``width`` and expansion
    ``expansion``: a stride-2 stem, seven stages ``blocks.0`` .. ``blocks.6`` (total stride 16),
    a 1x1 convolution to 1280 channels (``conv2``), pooling and ``classifier``."""

    STAGES = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2))
    STAGES += ((None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))

    def __init__(self, num_classes: int, *, expansion: int = 6, width: float = 0.5) -> None:
        super().__init__()
        channels = int(32 * width)
        self.conv1 = _conv_bn_relu(3, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for ratio, base, count, stride in self.STAGES:
            outputs = int(base * width)
            stage = []
            for index in range(count):
                stage.append(
                    _InvertedResidual(
                        channels, outputs, stride if index == 0 else 1, ratio or expansion
                    )
                )
                channels = outputs
            self.blocks.append(nn.Sequential(*stage))
        last = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, last, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        _init_like_benchmark(self, "normal")

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        x = self.conv2(x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# Registry -------------------------------------------------------------------------------------


def _resnet(depth: int, widths: tuple[int, int, int, int]) -> Callable[[int], nn.Module]:
    return lambda num_classes: CifarResNet(depth, widths, num_classes)


def _wrn(depth: int, k: int) -> Callable[[int], nn.Module]:
    return lambda num_classes: WideResNet(depth, k, num_classes)


def _vgg(name: str) -> Callable[[int], nn.Module]:
    return lambda num_classes: VGG(VGG_BLOCKS[name], num_classes)


MODELS: dict[str, Callable[[int], nn.Module]] = {
    **{f"resnet{d}": _resnet(d, (16, 16, 32, 64)) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _resnet(8, (32, 64, 128, 256)),
    "resnet32x4": _resnet(32, (32, 64, 128, 256)),
    "wrn_16_1": _wrn(16, 1),
    "wrn_16_2": _wrn(16, 2),
    "wrn_40_1": _wrn(40, 1),
    "wrn_40_2": _wrn(40, 2),
    **{name: _vgg(name) for name in VGG_BLOCKS},
    "MobileNetV2": lambda num_classes: MobileNetV2(num_classes),
}
"""Name -> ``f(num_classes) -> nn.Module``; the names the benchmark's papers and code use."""

LIGHT_STUDENTS = ("MobileNetV2",)
"""Students the benchmark trains at lr 0.01 instead of 0.05."""


def build(name: str, num_classes: int = 100) -> nn.Module:
    """The benchmark model ``name`` (see :data:`MODELS`) with ``num_classes`` outputs.

    Raises:
        ValueError: an unknown name (the known ones are listed).
    """
    if name not in MODELS:
        raise ValueError(f"unknown CIFAR model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":  # parameter counts, e.g. resnet32x4 7.43M, resnet8x4 1.23M
    for key in MODELS:
        print(f"{key:12s} {count_parameters(build(key)) / 1e6:6.2f}M")
