"""Shared helpers of the ``test_kd_*`` tests: real images from Fashion-MNIST, tiny models."""

from __future__ import annotations

import socket

import torch
from torch import nn

from mokd_optim.datasets import load_fashion_mnist, to_float_images


def fashion_mnist(
    count: int, *, split: str = "test", size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` Fashion-MNIST images as ``(count, 3, size, size)`` float32 in [0, 1]
    (grey replicated to 3 channels, zero-padded from 28 px when ``size > 28``) and their labels.

    Reads the local files of the Debian package ``dataset-fashion-mnist`` (``make data``); a
    missing file fails the test with that hint rather than skipping it.
    """
    pixels, labels = load_fashion_mnist(split, limit=count)
    images = to_float_images(pixels, normalize=False).repeat(1, 3, 1, 1)
    rows = images.shape[-1]
    if size > rows:
        pad = size - rows
        images = nn.functional.pad(images, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    return images, labels


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TinyNet(nn.Module):
    """A small CNN with named stages: ``stem``, ``layer1``, ``layer2`` (a Sequential), ``fc``."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))
