"""Parameter tensors laid out like a real model, for the Gram/combination micro-benchmark.

The cost of the Gram matrix and of the combination depends on how the ``n`` parameters are
split into tensors (one ``(K, m)`` block per tensor, with a per-tensor launch overhead), not only
on ``n``. These shapes reproduce torchvision's ResNet-18 exactly at width 64 (11,689,512
parameters with 1000 classes) and scale its widths for other sizes.
"""

from __future__ import annotations


def resnet18_like_shapes(width: int = 64, num_classes: int = 1000) -> list[tuple[int, ...]]:
    """Parameter shapes of torchvision's ``resnet18`` with stage widths ``width * (1, 2, 4, 8)``.

    Same order as ``resnet18().parameters()``: stem conv and batch norm, two BasicBlocks per
    stage (conv, bn, conv, bn, and a 1x1 downsample conv + bn in the first block of stages
    2-4), then the classifier weight and bias.
    """
    shapes: list[tuple[int, ...]] = [(width, 3, 7, 7), (width,), (width,)]
    inplanes = width
    for stage, multiplier in enumerate((1, 2, 4, 8)):
        planes = width * multiplier
        for block in range(2):
            shapes += [
                (planes, inplanes, 3, 3),
                (planes,),
                (planes,),
                (planes, planes, 3, 3),
                (planes,),
                (planes,),
            ]
            if block == 0 and stage > 0:
                shapes += [(planes, inplanes, 1, 1), (planes,), (planes,)]
            inplanes = planes
    shapes += [(num_classes, 8 * width), (num_classes,)]
    return shapes


def count(shapes: list[tuple[int, ...]]) -> int:
    """Total number of elements."""
    total = 0
    for shape in shapes:
        size = 1
        for dim in shape:
            size *= dim
        total += size
    return total


def shapes_for(target: int, num_classes: int = 1000) -> tuple[int, list[tuple[int, ...]]]:
    """The ResNet-18-like width whose parameter count is closest to ``target``, and its shapes."""
    best = min(
        range(1, 257),
        key=lambda width: abs(count(resnet18_like_shapes(width, num_classes)) - target),
    )
    return best, resnet18_like_shapes(best, num_classes)
